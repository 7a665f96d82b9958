/* kernels_test.c: checks every fp32 kernel set this CPU runs against the portable one,
 * bit for bit, on random data with full mantissas (any change in the order or rounding
 * of a sum shows), at shapes with padding rows and vector tails; and each set's expf
 * against the C library's, as is the copy of glibc's expf on one float in 4099. The fast
 * kernels of every set against the portable ones, bit for bit, and the portable ones
 * against double precision (fastmath.h promises 2.3 ulp for exp, 2 for the reciprocal).
 *
 *     make -C native ktest                      (host; also runs qkernels_test)
 *     make -C native BUILD=DIR CC=... DIR/kernels_test   (a cross build, run under qemu)
 *     kernels_test --all-floats                 (all 2^32 inputs: the copy of glibc's
 *                                                expf, and on x86 the vector expf)
 *
 * Prints one line per failure and ends with "N passed, M failed" (exit status 1 on a
 * failure).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fastmath.h"
#include "kernels.h"

static int passed, failed;

static void check(int ok, const char *what, const char *set, int a, int b) {
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s [%s] %d x %d\n", what, set, a, b);
    }
}

static unsigned long long rng = 88172645463325252ull;
static float rand_float(void) { // in (-1, 1), all 24 bits of mantissa random
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((long long)(rng >> 39) - (1ll << 24)) / (float)(1 << 24);
}

static float *random_floats(size_t n) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = rand_float();
    return p;
}

/* out = W @ x for W (d, n), packed for each set, against the portable kernel. */
static void test_matvec(const sb_kernel_set *k, int d, int n) {
    float *w = random_floats((size_t)d * n), *x = random_floats((size_t)n);
    float *want = malloc(sizeof(float) * d), *got = malloc(sizeof(float) * (d + 1));
    sb_kernels_generic.matvec_f32(want, x, w, n, d);
    int block = k->f32_rows, padded = (d + block - 1) / block * block;
    float *packed = aligned_alloc(64, ((sizeof(float) * padded * n) + 63) & ~(size_t)63);
    sb_pack_rows_f32(packed, w, d, n, block);
    got[d] = 12345.0f; // a sentinel: padding rows must not be stored
    k->matvec_f32(got, x, packed, n, d);
    check(memcmp(got, want, sizeof(float) * d) == 0 && got[d] == 12345.0f, "matvec_f32",
          k->name, d, n);
    free(w), free(x), free(want), free(got), free(packed);
}

/* One head's scores and mix over n positions, against the portable kernels. */
static void test_attention(const sb_kernel_set *k, int head_size, int n) {
    int seq_len = n + 3, stride = head_size + 5; // rows longer than used, as in the caches
    float *q = random_floats((size_t)head_size), *kt = random_floats((size_t)head_size * seq_len);
    float *v = random_floats((size_t)seq_len * stride), *att = random_floats((size_t)n);
    float *want = malloc(sizeof(float) * (n + head_size));
    float *got = malloc(sizeof(float) * (n + head_size + 1));
    sb_kernels_generic.attn_scores_f32(want, q, kt, head_size, seq_len, n);
    got[n] = 12345.0f;
    k->attn_scores_f32(got, q, kt, head_size, seq_len, n);
    check(memcmp(got, want, sizeof(float) * n) == 0 && got[n] == 12345.0f, "attn_scores_f32",
          k->name, head_size, n);
    sb_kernels_generic.attn_mix_f32(want, att, v, head_size, stride, n);
    got[head_size] = 12345.0f;
    k->attn_mix_f32(got, att, v, head_size, stride, n);
    check(memcmp(got, want, sizeof(float) * head_size) == 0 && got[head_size] == 12345.0f,
          "attn_mix_f32", k->name, head_size, n);
    free(q), free(kt), free(v), free(att), free(want), free(got);
}

/* expf_n against expf, in place and not, at every length up to 40 (vector tails), on
 * random arguments in the range softmax and SiLU use and on special values. */
static void test_expf(const sb_kernel_set *k) {
    static const float special[] = {0.0f, -0.0f, 88.0f, -88.0f, 87.99999f, -87.99999f, 88.8f,
                                    -103.9f, -104.0f, -150.0f, 1e-30f, -1e-45f, INFINITY,
                                    -INFINITY, NAN, 0x1.04845ep+5f, -0x1.f8cbb2p+5f};
    enum { NS = sizeof(special) / sizeof(special[0]), MAX = 40 + NS };
    float x[MAX], got[MAX], inplace[MAX];
    int ok = 1;
    for (int n = 0; n <= 40; n++) {
        for (int i = 0; i < n; i++) x[i] = 40.0f * rand_float() - 30.0f;
        memcpy(x + n, special, sizeof(special));
        memcpy(inplace, x, sizeof(x));
        k->expf_n(got, x, n + NS);
        k->expf_n(inplace, inplace, n + NS);
        for (int i = 0; i < n + NS; i++) {
            float want = expf(x[i]);
            ok &= memcmp(&want, &got[i], sizeof want) == 0;
            ok &= memcmp(&want, &inplace[i], sizeof want) == 0;
        }
    }
    check(ok, "expf_n", k->name, 40, NS);
}

/* Error of got in units in the last place of want rounded to float. */
static double ulps(float got, double want) {
    float w = (float)want;
    return fabs((double)got - want) / ((double)nextafterf(w, INFINITY) - (double)w);
}

/* The fast kernels of set k on n values against the portable ones, bit for bit: logits
 * with a few far below the rest (exp's clamp), gates with large ones (SiLU's clamps). */
static void test_fast(const sb_kernel_set *k, int n) {
    const sb_kernel_set *g = &sb_kernels_generic;
    float *x = random_floats((size_t)n), *h = random_floats((size_t)n);
    float *gate = random_floats((size_t)n), *want = malloc(sizeof(float) * n);
    float *got = malloc(sizeof(float) * (n + 1));
    int *iw = malloc(sizeof(int) * n), *ig = malloc(sizeof(int) * n);
    for (int i = 0; i < n; i++) {
        x[i] = i % 97 == 3 ? -1e3f : 20.0f * x[i];
        h[i] = i % 89 == 5 ? (i % 2 ? 1e4f : -1e4f) : 30.0f * h[i];
    }
    float mw = g->max_n(x, n), mg = k->max_n(x, n);
    check(memcmp(&mw, &mg, sizeof mw) == 0, "max_n", k->name, n, 0);
    // finite, then Inf or NaN anywhere (vector or tail)
    int finite = k->finite_n(x, n);
    for (int bad = 0; bad < 3; bad++) {
        float keep = x[(n - 1) * bad / 2];
        x[(n - 1) * bad / 2] = bad == 1 ? NAN : bad ? -INFINITY : INFINITY;
        finite += k->finite_n(x, n) ? 10 : 0;
        x[(n - 1) * bad / 2] = keep;
    }
    check(finite == 1, "finite_n", k->name, n, finite);
    // greedy decoding's argmax: the first of two equal largest values, as the reference's
    x[n - 1] = x[n / 3] = 100.0f;
    int first = -1;
    k->select_ge(&first, x, n, k->max_n(x, n), 1);
    check(first == n / 3, "argmax by max_n and select_ge", k->name, n, first);
    x[n - 1] = x[n / 3] = 0.0f;
    mw = g->max_n(x, n);
    static const float scales[] = {1.0f, 1.0f / 0.7f, 0.125f};
    for (int s = 0; s < 3; s++) {
        got[n] = 12345.0f;
        float sw = g->exp_sum(want, x, n, mw, scales[s]), sg = k->exp_sum(got, x, n, mw, scales[s]);
        check(memcmp(got, want, sizeof(float) * n) == 0 && memcmp(&sw, &sg, sizeof sw) == 0
              && got[n] == 12345.0f, "exp_sum", k->name, n, s);
        memcpy(got, x, sizeof(float) * n); // in place
        sg = k->exp_sum(got, got, n, mw, scales[s]);
        check(memcmp(got, want, sizeof(float) * n) == 0 && memcmp(&sw, &sg, sizeof sw) == 0,
              "exp_sum in place", k->name, n, s);
    }
    float threshold = want[n / 2]; // an exp of the last scale: some above, some below
    static const int caps[] = {1, 3, 1 << 30};
    for (int c = 0; c < 3; c++) {
        int cap = caps[c], cw = g->select_ge(iw, want, n, threshold, cap);
        int cg = k->select_ge(ig, want, n, threshold, cap);
        check(cw == cg && memcmp(iw, ig, sizeof(int) * cw) == 0 && cw > 0 && cw <= cap,
              "select_ge", k->name, n, cap);
    }
    memcpy(want, h, sizeof(float) * n);
    memcpy(got, h, sizeof(float) * n);
    g->swiglu(want, gate, n);
    k->swiglu(got, gate, n);
    check(memcmp(got, want, sizeof(float) * n) == 0 && got[n] == 12345.0f, "swiglu", k->name, n,
          0);
    free(x), free(h), free(gate), free(want), free(got), free(iw), free(ig);
}

/* The portable fast arithmetic against double precision. */
static void test_fast_accuracy(void) {
    double worst_exp = 0, worst_rcp = 0, worst_silu = 0;
    for (int i = 0; i <= 2000000; i++) {
        float y = -87.0f + 175.0f * (float)i / 2000000.0f;
        double e = ulps(sb_fexp(y), exp((double)y));
        worst_exp = e > worst_exp ? e : worst_exp;
        float d = 1.0f + (float)i * 1e-6f * (i % 2 ? 1.0f : 1e6f);
        double r = ulps(sb_frcp(d), 1.0 / (double)d);
        worst_rcp = r > worst_rcp ? r : worst_rcp;
        double h = y / 2, silu = h / (1.0 + exp(-h)) * 0.75;
        double s = ulps(sb_fswiglu((float)h, 0.75f), silu);
        if (fabs(silu) > 1e-30) worst_silu = s > worst_silu ? s : worst_silu;
    }
    check(worst_exp <= 2.3, "sb_fexp within 2.3 ulp", "", (int)(worst_exp * 100), 0);
    check(worst_rcp <= 2.0, "sb_frcp within 2 ulp", "", (int)(worst_rcp * 100), 0);
    // exp, reciprocal and two products: a few ulp
    check(worst_silu <= 6.0, "sb_fswiglu within 6 ulp", "", (int)(worst_silu * 100), 0);
    printf("fast math, worst ulp: exp %.2f, reciprocal %.2f, swiglu %.2f\n", worst_exp,
           worst_rcp, worst_silu);
    // the sum of the portable exp_sum against double precision
    int n = 32000;
    float *x = random_floats((size_t)n), *y = malloc(sizeof(float) * n);
    double want = 0;
    for (int i = 0; i < n; i++) x[i] *= 10.0f;
    float max = sb_kernels_generic.max_n(x, n);
    float sum = sb_kernels_generic.exp_sum(y, x, n, max, 1.0f);
    for (int i = 0; i < n; i++) want += exp((double)x[i] - (double)max);
    check(fabs(sum - want) < 1e-5 * want, "exp_sum's sum", "generic", n, 0);
    free(x), free(y);
}

/* The floats with bits 0, stride, 2 * stride, ... through expf_n, 64k at a time, against
 * the C library; returns how many differ. */
static uint64_t sweep(const char *name, void (*expf_n)(float *, const float *, int),
                      uint32_t stride) {
    enum { CHUNK = 1 << 16 };
    static float x[CHUNK], y[CHUNK];
    uint64_t mismatches = 0, count = 0;
    for (uint64_t bits = 0; bits < (1ull << 32);) {
        int n = 0;
        for (; n < CHUNK && bits < (1ull << 32); n++, bits += stride) {
            uint32_t b = (uint32_t)bits;
            memcpy(&x[n], &b, sizeof b);
        }
        expf_n(y, x, n);
        count += (uint64_t)n;
        for (int i = 0; i < n; i++) {
            float want = expf(x[i]);
            if (memcmp(&want, &y[i], sizeof want) != 0 && mismatches++ < 10) {
                printf("FAIL %s(%a) = %a, the C library says %a\n", name, x[i], y[i], want);
            }
        }
    }
    printf("%s: %llu of %llu floats differ from the C library\n", name,
           (unsigned long long)mismatches, (unsigned long long)count);
    return mismatches;
}

/* Every float through the vector expf (x86) and the copy of glibc's, against the C
 * library. */
static int all_floats(void) {
    uint64_t mismatches = 0;
#if defined(__x86_64__)
    printf("vector expf: %s\n", sb_expf_vector_usable() ? "in use" : "not usable here");
    mismatches += sweep("vector expf", sb_expf_x86, 1);
#endif
    mismatches += sweep("sb_expf_glibc", sb_expf_glibc, 1);
    return mismatches != 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--all-floats") == 0) return all_floats();
    const sb_kernel_set *sets[4];
    int nsets = sb_kernels_all(sets, 4);
    static const int shapes[][2] = {{288, 288}, {768, 288}, {288, 768}, {33, 7}, {100, 1},
                                    {1, 5}, {64, 64}, {129, 31}};
    static const int heads[][2] = {{48, 1}, {48, 256}, {48, 63}, {48, 65}, {5, 9}, {64, 40},
                                   {70, 100}, {8, 17}, {1, 1}, {33, 200}};
    printf("fp32 kernel sets:");
    for (int s = 0; s < nsets; s++) printf(" %s", sets[s]->name);
    printf("\n");
    for (int s = 0; s < nsets; s++) {
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
            test_matvec(sets[s], shapes[i][0], shapes[i][1]);
        }
        for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
            test_attention(sets[s], heads[i][0], heads[i][1]);
        }
        test_expf(sets[s]);
        static const int lengths[] = {1, 5, 15, 16, 17, 33, 100, 1000, 32000};
        for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
            test_fast(sets[s], lengths[i]);
        }
    }
    test_fast_accuracy();
    // the copy of glibc's expf is exact where the C library is glibc built with FMA
    // (riscv64 always, x86-64 on CPUs with FMA): one float in 4099, all ranges
    check(sweep("sb_expf_glibc", sb_expf_glibc, 4099) == 0, "expf_glibc sweep", "", 4099, 0);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
