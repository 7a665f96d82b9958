/* bench.c: storybot-bench, the numbers behind `storybot bench` for one build.
 *
 *     storybot-bench MODEL TOKENIZER [-n steps] [-r runs] [-t temp] [-i prompt] [-k kernels]
 *
 * Prints one JSON object: the time of every position of every run (prompt positions
 * apart from generated ones), and the read bandwidth of this machine over a buffer as
 * large as the weights read per token, which bounds fp32 speed (the roofline): once on
 * plain memory, and once on memory advised onto 2 MB pages as the library holds its
 * weights (faster where transparent huge pages are offered, the same elsewhere). The
 * bandwidth is the mean of back-to-back passes, as a run's tokens/s is the mean of
 * back-to-back passes over the weights: the same statistic on both sides of the ratio.
 * On RISC-V each generated position is bracketed by the no-op hints `addi x0, x0, 1`
 * and `addi x0, x0, 2`, which the qemu-insncount plugin reports as marks, so
 * instructions per token can be counted under emulation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "storybot.h"

#if defined(__riscv)
#define MARK_START() __asm__ volatile("addi x0, x0, 1")
#define MARK_END() __asm__ volatile("addi x0, x0, 2")
#else
#define MARK_START()
#define MARK_END()
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define READ_PASSES 10

/* Mean over READ_PASSES back-to-back passes (after one to warm up) summing a buffer of
 * `bytes` with independent accumulators. */
static double read_bandwidth(size_t bytes, int huge_pages) {
    size_t n = bytes / sizeof(unsigned long long);
    unsigned long long *buf = NULL;
    if (n < 8 || posix_memalign((void **)&buf, (size_t)2 << 20, n * sizeof(*buf)) != 0) {
        return 0.0;
    }
#ifdef MADV_HUGEPAGE
    if (huge_pages) madvise(buf, n * sizeof(*buf), MADV_HUGEPAGE);
#else
    (void)huge_pages;
#endif
    for (size_t i = 0; i < n; i++) buf[i] = i;
    double t = 0.0;
    volatile unsigned long long sink = 0;
    for (int pass = 0; pass <= READ_PASSES; pass++) {
        if (pass == 1) t = now();
        unsigned long long a[8] = {0};
        for (size_t i = 0; i + 8 <= n; i += 8) {
            for (int k = 0; k < 8; k++) a[k] += buf[i + k];
        }
        sink += a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
    }
    t = now() - t;
    free(buf);
    return (double)(n * sizeof(*buf)) * READ_PASSES / t / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: storybot-bench MODEL TOKENIZER [-n steps] [-r runs] [-t temp] "
                        "[-p topp] [-s seed] [-i prompt] [-k auto|generic] [-j threads] [-b 0|1 (bandwidth)]\n");
        return 1;
    }
    sb_params p = sb_default_params();
    p.temperature = 0.0f;
    p.steps = 256;
    int runs = 3, bandwidth = 1;
    const char *prompt = "";
    for (int i = 3; i + 1 < argc; i += 2) {
        const char *v = argv[i + 1];
        switch (argv[i][1]) {
        case 'n': p.steps = atoi(v); break;
        case 'r': runs = atoi(v); break;
        case 't': p.temperature = (float)atof(v); break;
        case 'p': p.topp = (float)atof(v); break;
        case 's': p.seed = strtoull(v, NULL, 10); break;
        case 'i': prompt = v; break;
        case 'k': p.kernels = strcmp(v, "generic") == 0 ? SB_KERNELS_GENERIC : SB_KERNELS_AUTO; break;
        case 'b': bandwidth = atoi(v); break;
        case 'j': p.n_threads = atoi(v); break;
        default: fprintf(stderr, "unknown flag %s\n", argv[i]); return 1;
        }
    }
    char err[256];
    sb_context *ctx = NULL;
    if (sb_open(argv[1], argv[2], &p, &ctx, err, sizeof err) != SB_OK) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    sb_model_info info;
    sb_model_info_get(ctx, &info);
    printf("{\"format\": \"%s\", \"kernels\": \"%s\", \"weight_bytes\": %zu, \"seq_len\": %d,\n",
           info.format, info.kernels, info.weight_bytes, info.seq_len);
    printf(" \"runs\": [");
    for (int r = 0; r < runs; r++) {
        sb_reset(ctx, &p);
        if (sb_start(ctx, 1, prompt) != SB_OK) {
            fprintf(stderr, "error: %s\n", sb_last_error(ctx));
            return 1;
        }
        printf("%s\n  {\"ms\": [", r ? "," : "");
        sb_token tok;
        int n = 0, prompt_tokens = 0;
        for (;;) {
            double t = now();
            MARK_START();
            sb_status s = sb_next(ctx, &tok);
            MARK_END();
            t = now() - t;
            if (s != SB_OK) break;
            if (tok.flags & SB_PIECE_PROMPT) prompt_tokens++;
            printf("%s%.4f", n++ ? ", " : "", t * 1e3);
        }
        printf("], \"prompt_tokens\": %d}", prompt_tokens);
    }
    printf("],\n \"read_gbps\": %.3f, \"read_gbps_huge\": %.3f}\n",
           bandwidth ? read_bandwidth(info.weight_bytes, 0) : 0.0,
           bandwidth ? read_bandwidth(info.weight_bytes, 1) : 0.0);
    sb_free(ctx);
    return 0;
}
