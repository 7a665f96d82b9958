/* pool.h: a few worker threads for splitting work between cores (see pool.c). */
#ifndef STORYBOT_POOL_H
#define STORYBOT_POOL_H

typedef struct sb_pool sb_pool;
/* fn(arg, index, count) does part index of count. */
typedef void (*sb_pool_fn)(void *arg, int index, int count);

/* NULL (run everything on the caller) for fewer than 2 threads or if none could start. */
sb_pool *sb_pool_new(int n_threads);
void sb_pool_free(sb_pool *pool);
/* Runs fn on every thread of the pool, the caller's included, and waits for all. */
void sb_pool_run(sb_pool *pool, sb_pool_fn fn, void *arg);

#endif
