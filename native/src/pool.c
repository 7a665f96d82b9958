/* pool.c: worker threads that split one matvec's rows between cores.
 *
 * A token runs about 50 matvecs, each a fraction of a millisecond, so waking a sleeping
 * thread per matvec (tens of microseconds) would cost more than it gains. Workers spin
 * on a job counter while jobs keep coming and sleep on a condition variable only after
 * a pause (between stories). Rows are split on block boundaries and each row is still
 * summed by one thread in the reference's order, so results do not depend on threads.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pool.h"

#define SPIN_NS 2000000 // spin this long without a job before sleeping

struct sb_pool {
    int n;                    // threads, the caller included
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_uint job;          // bumped for every job; workers run each number once
    atomic_int pending;       // workers still on the current job
    atomic_int quit;
    sb_pool_fn fn;
    void *arg;
};

typedef struct {
    sb_pool *pool;
    int index;
} worker_arg;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *worker(void *p) {
    worker_arg a = *(worker_arg *)p;
    free(p);
    sb_pool *pool = a.pool;
    unsigned seen = 0;
    for (;;) {
        long long idle_since = now_ns();
        unsigned job;
        while ((job = atomic_load(&pool->job)) == seen && !atomic_load(&pool->quit)) {
            if (now_ns() - idle_since < SPIN_NS) {
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&pool->lock);
            while (atomic_load(&pool->job) == seen && !atomic_load(&pool->quit)) {
                pthread_cond_wait(&pool->wake, &pool->lock);
            }
            pthread_mutex_unlock(&pool->lock);
        }
        if (atomic_load(&pool->quit)) return NULL;
        seen = job;
        pool->fn(pool->arg, a.index, pool->n);
        atomic_fetch_sub(&pool->pending, 1);
    }
}

sb_pool *sb_pool_new(int n_threads) {
    if (n_threads < 2) return NULL;
    sb_pool *pool = calloc(1, sizeof(*pool));
    if (!pool) return NULL;
    pool->threads = calloc((size_t)n_threads - 1, sizeof(pthread_t));
    if (!pool->threads || pthread_mutex_init(&pool->lock, NULL) != 0) {
        free(pool->threads);
        free(pool);
        return NULL;
    }
    pthread_cond_init(&pool->wake, NULL);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *a = malloc(sizeof(*a));
        if (!a) break;
        *a = (worker_arg){pool, i};
        if (pthread_create(&pool->threads[i - 1], NULL, worker, a) != 0) {
            free(a);
            break;
        }
        pool->n = i; // workers started so far
    }
    pool->n += 1; // and the caller
    if (pool->n < 2) {
        sb_pool_free(pool);
        return NULL;
    }
    return pool;
}

void sb_pool_free(sb_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->quit, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n - 1; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    free(pool->threads);
    free(pool);
}

void sb_pool_run(sb_pool *pool, sb_pool_fn fn, void *arg) {
    if (!pool) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store(&pool->pending, pool->n - 1);
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add(&pool->job, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    fn(arg, 0, pool->n);
    while (atomic_load(&pool->pending) > 0) sched_yield();
}
