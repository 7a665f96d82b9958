/* engine_test.c: the public API against hostile files and racing stops: every case ends
 * in a status code and a message, never a crash, a read of an unwritten buffer (ASan
 * and UBSan builds check that) or an allocation a header asked for beyond the limit.
 *
 *     make -C native ktest                      (also runs the kernels' tests)
 *
 * Prints one line per failure and ends with "N passed, M failed" (exit status 1 on a
 * failure).
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storybot.h"
#include "tiny_tokenizer.h"

enum { VOCAB = 300 };

static int passed, failed;
static char tok_path[64], model_path[64];

static void check(int ok, const char *what, const char *detail) {
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s: %s\n", what, detail);
    }
}

/* The tiny tokenizer (tiny_tokenizer.h), in a file of this process's own. */
static void write_tokenizer(void) {
    snprintf(tok_path, sizeof tok_path, "/tmp/storybot-engine-test-%d.tok", (int)getpid());
    FILE *f = fopen(tok_path, "wb");
    write_tiny_tokenizer(f, VOCAB);
    fclose(f);
}

typedef struct {
    int32_t dim, hidden, layers, heads, kv_heads, vocab, seq;
} header;

static const header SMALL = {8, 16, 1, 2, 1, VOCAB, 16};

static long float_count(header h) {
    long head = h.dim / h.heads, kv = (long)h.kv_heads * head, v = labs((long)h.vocab);
    return v * h.dim + 2L * h.layers * h.dim + 2L * h.layers * h.dim * h.dim
           + 2L * h.layers * h.dim * kv + 3L * h.layers * h.dim * h.hidden + h.dim
           + (long)h.seq * head;
}

/* A model of header h whose i-th weight is fill(i) (random in (-0.5, 0.5) if NULL, with
 * weight `odd` set to `odd_value`). */
static void write_model(header h, long odd, float odd_value) {
    snprintf(model_path, sizeof model_path, "/tmp/storybot-engine-test-%d.bin", (int)getpid());
    FILE *f = fopen(model_path, "wb");
    fwrite(&h, 4, 7, f);
    unsigned long long r = 88172645463325252ull;
    long n = float_count(h);
    for (long i = 0; i < n; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        float w = (float)(r >> 40) / (float)(1ull << 24) - 0.5f;
        if (odd < 0 ? i >= -odd - 1 : i == odd) w = odd_value; // odd < 0: from -odd - 1 on
        fwrite(&w, 4, 1, f);
    }
    fclose(f);
}

static sb_context *open_model(const sb_params *p, sb_status *status, char *err) {
    sb_context *ctx = NULL;
    *status = sb_open(model_path, tok_path, p, &ctx, err, 256);
    return ctx;
}

/* Runs a story to its end; returns the last status and the number of tokens. */
static sb_status run_story(sb_context *ctx, uint64_t story, const char *prompt, int *tokens) {
    sb_status s = sb_start(ctx, story, prompt);
    sb_token t;
    *tokens = 0;
    while (s == SB_OK && (s = sb_next(ctx, &t)) == SB_OK) ++*tokens;
    return s;
}

// ----------------------------------------------------------------------------
// hostile numbers

static void numeric_case(const char *what, long odd, float value, float temperature,
                         float topp) {
    write_model(SMALL, odd, value);
    sb_params p = sb_default_params();
    p.temperature = temperature;
    p.topp = topp;
    char err[256];
    sb_status s;
    sb_context *ctx = open_model(&p, &s, err);
    check(s == SB_OK, what, err);
    if (!ctx) return;
    int n;
    s = run_story(ctx, 1, "ab", &n);
    check(s == SB_ERR_NUMERIC, what, sb_status_name(s));
    check(strstr(sb_last_error(ctx), "not finite") != NULL
          || strstr(sb_last_error(ctx), "no finite") != NULL, what, sb_last_error(ctx));
    int tokens[16];
    float lp[15];
    int nt = 0;
    if (sb_tokenize(ctx, "ab ba", tokens, 16, &nt) == SB_OK && nt >= 2) {
        s = sb_score(ctx, tokens, nt, lp);
        int overflow = temperature > 0.0f && temperature < 1e-30f; // the logits are finite
        check(s == (overflow ? SB_OK : SB_ERR_NUMERIC), what, "sb_score");
    }
    sb_free(ctx);
}

static void test_numbers(void) {
    long emb = (long)VOCAB * SMALL.dim;
    float nan = nanf(""), inf = INFINITY;
    numeric_case("NaN embedding (greedy)", -1, nan, 0.0f, 0.9f);
    numeric_case("NaN weights (top-p)", -1, nan, 1.0f, 0.9f);
    numeric_case("NaN weights (full distribution)", -1, nan, 1.0f, 1.0f);
    numeric_case("one NaN in rms_att", emb, nan, 1.0f, 0.9f);
    numeric_case("Inf weights", -1, inf, 1.0f, 0.9f);
    numeric_case("one -Inf in the classifier", emb + 100, -inf, 1.0f, 0.9f);
    numeric_case("overflowing weights", -(emb + 1), 3e38f, 1.0f, 0.9f);
    numeric_case("tiny temperature overflows the logits", -(1L << 40), 0.0f, 1e-45f, 0.9f);
}

/* A flat distribution with top-p below 1 / vocab: no token reaches the cutoff, where
 * the reference reads before its candidates. The nucleus is then the likeliest token. */
static void test_flat_distribution(void) {
    write_model(SMALL, -1, 0.0f);
    sb_params p = sb_default_params();
    p.topp = 1e-4f;
    char err[256];
    sb_status s;
    sb_context *ctx = open_model(&p, &s, err);
    check(s == SB_OK, "flat distribution: open", err);
    if (!ctx) return;
    int n;
    s = sb_start(ctx, 1, "");
    sb_token t;
    int all_first = 1;
    for (n = 0; s == SB_OK && (s = sb_next(ctx, &t)) == SB_OK; n++) all_first &= t.id == 0;
    check(s == SB_END && n == SMALL.seq, "flat distribution: a whole story", sb_status_name(s));
    check(all_first, "flat distribution: the lowest of tied ids", "");
    sb_free(ctx);
}

// ----------------------------------------------------------------------------
// hostile headers

static void test_vocab_too_small(void) {
    for (int v = -2; v <= 2; v++) {
        if (v == 0) continue;
        header h = SMALL;
        h.vocab = v;
        write_model(h, 0, 0.0f);
        sb_params p = sb_default_params();
        char err[256];
        sb_status s;
        sb_context *ctx = open_model(&p, &s, err);
        check(s == SB_ERR_FORMAT && strstr(err, "vocab_size") != NULL, "vocab below 3", err);
        sb_free(ctx);
    }
}

/* A file of 10 MB whose header asks for a KV cache of 32 GiB (16 MB and 128 GiB on a
 * machine with more RAM than that). */
static void test_memory_limit(void) {
    double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    int32_t seq = phys < 32.0 * (1 << 30) ? 1 << 18 : 1 << 20;
    header h = {16, 8, 1024, 8, 8, VOCAB, seq};
    check(phys < 1024.0 * seq * 16 * 2 * 4, "the premise: more than the RAM", "");
    write_model(h, 0, 0.0f);
    char err[256];
    sb_status s;
    sb_params p = sb_default_params();
    sb_context *ctx = open_model(&p, &s, err);
    check(ctx == NULL && s == SB_ERR_NOMEM && strstr(err, "memory limit"), "KV cache > RAM", err);
    p.mem_limit = (size_t)1 << 40; // a limit above the RAM is the caller's to choose
    p.kernels = SB_KERNELS_GENERIC; // no packed copy: the KV cache is the first to ask
    h.seq = 64;
    write_model(h, 0, 0.0f);
    ctx = open_model(&p, &s, err);
    check(s == SB_OK, "a small cache under the limit", err);
    sb_free(ctx);
    p.mem_limit = 1 << 20; // the same model, whose KV cache alone is 8 MiB
    ctx = open_model(&p, &s, err);
    check(ctx == NULL && s == SB_ERR_NOMEM && strstr(err, "KV cache"), "an explicit limit", err);
    p.mem_limit = 100; // below the sampler's candidates
    ctx = open_model(&p, &s, err);
    check(ctx == NULL && s == SB_ERR_NOMEM, "a limit below the sampler", err);
}

// ----------------------------------------------------------------------------
// stops

static void test_stop_before_during_after(void) {
    write_model(SMALL, 0, 0.0f);
    sb_params p = sb_default_params();
    char err[256];
    sb_status s;
    sb_context *ctx = open_model(&p, &s, err);
    check(s == SB_OK, "stops: open", err);
    if (!ctx) return;
    sb_token t;
    int n;
    sb_stop(ctx, 1); // before story 1 starts
    s = sb_start(ctx, 1, "ab");
    check(s == SB_OK && sb_next(ctx, &t) == SB_END && t.pos == 0 && (t.flags & SB_END_STOPPED),
          "a stop before the start", "the story ran");
    s = run_story(ctx, 1, "ab", &n); // the same story in another context: still stopped
    check(s == SB_END && n == 0, "a stopped story's second context", "it ran");
    s = run_story(ctx, 2, "ab", &n); // a stop for story 1 leaves story 2 alone
    check(s == SB_END && n > 0, "the next story", "was stopped too");
    check(sb_start(ctx, 3, "ab") == SB_OK, "start story 3", sb_last_error(ctx));
    sb_stop(ctx, 3); // right after the start
    check(sb_next(ctx, &t) == SB_END && (t.flags & SB_END_STOPPED), "a stop right after start", "");
    check(sb_start(ctx, 4, "ab") == SB_OK && sb_next(ctx, &t) == SB_OK, "start story 4", "");
    sb_stop(ctx, 4); // during
    check(sb_next(ctx, &t) == SB_END && t.pos == 1 && (t.flags & SB_END_STOPPED),
          "a stop during a story", "");
    check(sb_start(ctx, UINT64_MAX, "") == SB_ERR_ARG, "story 2^64 - 1 is refused", "");
    sb_stop(ctx, UINT64_MAX); // every story
    s = run_story(ctx, 5, "ab", &n);
    check(s == SB_END && n == 0, "sb_stop(UINT64_MAX) stops every story", "");
    sb_free(ctx);
}

typedef struct {
    sb_context *ctx;
    atomic_int tokens, done;
} racer;

static void *tell(void *arg) {
    racer *r = arg;
    sb_token t;
    while (sb_next(r->ctx, &t) == SB_OK) atomic_fetch_add(&r->tokens, 1);
    atomic_store(&r->done, 1);
    return NULL;
}

/* A stop while another thread is inside sb_next: the story ends at most one token
 * after the stop returns (no timing: the main thread waits on the teller's count). */
static void test_stop_from_another_thread(void) {
    header h = SMALL;
    h.seq = 4096;
    write_model(h, -1, 0.0f); // flat, with a tiny top-p: token 0 forever, never BOS
    sb_params p = sb_default_params();
    p.topp = 1e-4f;
    char err[256];
    sb_status s;
    sb_context *ctx = open_model(&p, &s, err);
    check(s == SB_OK, "racing stop: open", err);
    if (!ctx) return;
    racer r = {ctx, 0, 0};
    sb_start(ctx, 1, "ab");
    pthread_t th;
    pthread_create(&th, NULL, tell, &r);
    while (atomic_load(&r.tokens) < 3 && !atomic_load(&r.done)) sched_yield();
    sb_stop(ctx, 1);
    int at_stop = atomic_load(&r.tokens);
    pthread_join(th, NULL);
    check(at_stop < h.seq - 1 && atomic_load(&r.tokens) <= at_stop + 1,
          "a stop from another thread ends the story within a token", "");
    sb_free(ctx);
}

int main(void) {
    write_tokenizer();
    test_numbers();
    test_flat_distribution();
    test_vocab_too_small();
    test_memory_limit();
    test_stop_before_during_after();
    test_stop_from_another_thread();
    remove(tok_path);
    remove(model_path);
    printf("engine_test: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
