/* qkernels_test.c: checks every quantized kernel set this CPU runs against a plain
 * integer reference, on deterministic random data; for cross builds run under qemu.
 *
 *     make -C native qtest                      (host)
 *     make -C native qtest BUILD=DIR CC=...     (e.g. riscv64, then run DIR/qkernels_test
 *                                                under qemu)
 *
 * Prints one line per failure and ends with "N passed, M failed" (exit status 1 on a
 * failure). Around one 768 x 288 product per set it executes the hint instructions
 * "addi x0, x0, 10 + k" / "11 + k" on riscv (no-ops on hardware), so the qemu insncount
 * plugin can count a kernel's instructions (marks 10/11: q8_0, 12/13: q4_0, 14/15:
 * ak42 rows, 16/17: q5, 18/19: q6, 30/31 and 32/33: q4 and q8 with row scales, for the
 * last set listed).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int passed, failed;

static void check(int ok, const char *what, const char *set, int n, int d) {
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL %s [%s] n=%d d=%d\n", what, set, n, d);
    }
}

static uint32_t rng = 12345u;
static int rand_int(int lo, int hi) { // inclusive
    rng = rng * 1664525u + 1013904223u;
    return lo + (int)((rng >> 8) % (uint32_t)(hi - lo + 1));
}

#if defined(__riscv)
#define MARK(k) __asm__ volatile("addi x0, x0, %0" ::"i"(k))
#else
#define MARK(k) ((void)0)
#endif

// ----------------------------------------------------------------------------
// weights: one int8 matrix q (d, n) in [lo, hi], per-group scales, in every layout

typedef struct {
    int n, d;
    int8_t *q;          // (d, n) row-major: the truth
    float *s;           // (d, n / 32) scales
    int8_t *blocks8;    // SB_Q8_0 layout
    uint8_t *blocks4;   // SB_Q4_0 layout (q must be in [-8, 7])
    uint16_t *bscales;  // block scales [block][group][32], fp16
    float *rscales;     // ak42 scales with group size gs
    int gs;
} weights;

static weights make_weights(int n, int d, int lo, int hi, int gs) {
    weights w = {n, d, NULL, NULL, NULL, NULL, NULL, NULL, gs};
    int ng = n / SB_QK, nb = (d + SB_QK - 1) / SB_QK;
    w.q = malloc((size_t)n * d);
    w.s = malloc(sizeof(float) * (size_t)d * ng);
    w.blocks8 = calloc((size_t)nb * SB_QK * n, 1);
    w.blocks4 = calloc((size_t)nb * SB_QK * n / 2, 1);
    w.bscales = calloc((size_t)nb * SB_QK * ng, sizeof(uint16_t));
    w.rscales = malloc(sizeof(float) * (size_t)d * (n / gs));
    for (int i = 0; i < d * n; i++) w.q[i] = (int8_t)rand_int(lo, hi);
    for (int i = 0; i < d * ng; i++) { // values fp16 holds, as the blocks store them
        w.s[i] = sb_f16_to_f32(sb_f32_to_f16((float)rand_int(1, 1000) * 1e-4f));
    }
    for (int i = 0; i < d * (n / gs); i++) w.rscales[i] = (float)rand_int(1, 1000) * 1e-4f;
    for (int r = 0; r < d; r++) {
        int b = r / SB_QK, lane = r % SB_QK;
        for (int g = 0; g < ng; g++) {
            size_t bg = (size_t)b * ng + g;
            w.bscales[bg * SB_QK + lane] = sb_f32_to_f16(w.s[(size_t)r * ng + g]);
            for (int j = 0; j < SB_QK; j++) {
                int8_t v = w.q[(size_t)r * n + g * SB_QK + j];
                w.blocks8[(bg * SB_QK + j) * SB_QK + lane] = v;
                uint8_t nib = (uint8_t)((v + 8) & 15);
                w.blocks4[(bg * SB_QK / 2 + j / 2) * SB_QK + lane] |= (uint8_t)(j % 2 ? nib << 4 : nib);
            }
        }
    }
    return w;
}

/* The SB_Q5 / SB_Q6 blocks of w (q in [-2^(bits-1), 2^(bits-1))), as quant.c lays them. */
static uint8_t *pack_hi(const weights *w, int bits) {
    int n = w->n, d = w->d, ng = n / SB_QK, nb = (d + SB_QK - 1) / SB_QK, k = bits - 4;
    size_t bg_bytes = (size_t)SB_QK * SB_QK * bits / 8;
    uint8_t *out = calloc((size_t)nb * ng, bg_bytes);
    for (int r = 0; r < d; r++) {
        for (int g = 0; g < ng; g++) {
            uint8_t *blk = out + ((size_t)(r / SB_QK) * ng + g) * bg_bytes;
            int lane = r % SB_QK;
            for (int j = 0; j < SB_QK; j++) {
                int u = w->q[(size_t)r * n + g * SB_QK + j] + (1 << (bits - 1));
                blk[(j % 16) * SB_QK + lane] |= (uint8_t)((u & 15) << (j < 16 ? 0 : 4));
                blk[(16 + j % (4 * k)) * SB_QK + lane] |= (uint8_t)((u >> 4) << (k * (j / (4 * k))));
            }
        }
    }
    return out;
}

static void free_weights(weights *w) {
    free(w->q), free(w->s), free(w->blocks8), free(w->blocks4), free(w->bscales), free(w->rscales);
}

/* out[i] = sum over groups of (integer dot) * scale * xs, in double. */
static void reference(double *out, const weights *w, const int8_t *xq, const float *xs, int rows_layout) {
    int ng = w->n / SB_QK;
    for (int i = 0; i < w->d; i++) {
        double acc = 0.0;
        for (int g = 0; g < ng; g++) {
            long dot = 0;
            for (int j = 0; j < SB_QK; j++) dot += (long)w->q[(size_t)i * w->n + g * SB_QK + j] * xq[g * SB_QK + j];
            double sc = rows_layout ? w->rscales[(size_t)i * (w->n / w->gs) + g * SB_QK / w->gs]
                                    : w->s[(size_t)i * ng + g];
            acc += (double)dot * sc * xs[g];
        }
        out[i] = acc;
    }
}

static int close_enough(const float *got, const double *want, int d) {
    double scale = 1e-30;
    for (int i = 0; i < d; i++) scale = fmax(scale, fabs(want[i]));
    for (int i = 0; i < d; i++) {
        if (!(fabs(got[i] - want[i]) <= 1e-5 * scale)) return 0;
    }
    return 1;
}

// ----------------------------------------------------------------------------
// tests

/* extreme: every activation at +-127 once quantized, the largest products a layout
 * holds, so that a set summing in int16 must widen as often as it can. */
static void test_products(const sb_qkernel_set *k, int n, int d, int gs, int mark, int extreme) {
    float *x = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * (d + 1));
    int8_t *xq = malloc(n), *gq = malloc(n);
    float *xs = malloc(sizeof(float) * n / SB_QK), *gxs = malloc(sizeof(float) * n / SB_QK);
    int32_t *xsum = malloc(sizeof(int32_t) * n / SB_QK), *gsum = malloc(sizeof(int32_t) * n / SB_QK);
    double *want = malloc(sizeof(double) * d);
    for (int i = 0; i < n; i++) x[i] = (float)rand_int(-100000, 100000) * 1e-5f;
    for (int i = 0; i < n && extreme; i++) x[i] = rand_int(0, 1) ? 1.0f : -1.0f;
    for (int i = 0; i < 4 && i < n && !extreme; i++) x[i] = 0.0f; // an all-zero start of a group
    k->quantize_q8(xq, xs, xsum, x, n);
    sb_qkernels_generic.quantize_q8(gq, gxs, gsum, x, n);
    check(!memcmp(xq, gq, n) && !memcmp(xs, gxs, sizeof(float) * n / SB_QK)
          && !memcmp(xsum, gsum, sizeof(int32_t) * n / SB_QK), "quantize_q8 = generic", k->name, n, d);

    weights w8 = make_weights(n, d, -127, 127, gs), w4 = make_weights(n, d, -8, 7, gs);
    out[d] = 12345.0f; // a guard: padding rows must not be written
    reference(want, &w8, xq, xs, 0);
    if (mark) MARK(10);
    k->matvec_q8_0(out, xq, xs, xsum, w8.blocks8, w8.bscales, n, d, SB_QK);
    if (mark) MARK(11);
    check(close_enough(out, want, d) && out[d] == 12345.0f, "matvec_q8_0", k->name, n, d);

    reference(want, &w4, xq, xs, 0);
    if (mark) MARK(12);
    k->matvec_q4_0(out, xq, xs, xsum, w4.blocks4, w4.bscales, n, d, SB_QK);
    if (mark) MARK(13);
    check(close_enough(out, want, d) && out[d] == 12345.0f, "matvec_q4_0", k->name, n, d);

    for (int bits = 5; bits <= 6; bits++) {
        weights wh = make_weights(n, d, -(1 << (bits - 1)), (1 << (bits - 1)) - 1, gs);
        uint8_t *blocks = pack_hi(&wh, bits);
        sb_qmatvec_fn f = bits == 5 ? k->matvec_q5 : k->matvec_q6;
        if (!f) f = bits == 5 ? sb_qkernels_generic.matvec_q5 : sb_qkernels_generic.matvec_q6;
        reference(want, &wh, xq, xs, 0);
        if (mark && bits == 5) MARK(16);
        if (mark && bits == 6) MARK(18);
        f(out, xq, xs, xsum, blocks, wh.bscales, n, d, SB_QK);
        if (mark && bits == 5) MARK(17);
        if (mark && bits == 6) MARK(19);
        check(close_enough(out, want, d) && out[d] == 12345.0f, bits == 5 ? "matvec_q5" : "matvec_q6",
              k->name, n, d);
        free(blocks);
        free_weights(&wh);
    }

    reference(want, &w8, xq, xs, 1);
    if (mark) MARK(14);
    k->matvec_q8_rows(out, xq, xs, xsum, w8.q, w8.rscales, n, d, gs);
    if (mark) MARK(15);
    check(close_enough(out, want, d) && out[d] == 12345.0f, "matvec_q8_rows", k->name, n, d);

    free_weights(&w8), free_weights(&w4);
    free(x), free(out), free(xq), free(gq), free(xs), free(gxs), free(xsum), free(gsum), free(want);
}

/* SB_Q4_ROW, SB_Q8_ROW (bits 4 or 8): q4_0's or q8_0's blocks with one fp16 scale per
 * row, x quantized with one scale. Every set must give the portable kernel's bits (the
 * sums are exact, the float steps the same two multiplications). extreme: for q8 every
 * weight and activation at 127, so one int16 run holds two columns at most. */
static void test_row_scaled(const sb_qkernel_set *k, int bits, int n, int d, int mark,
                            int extreme) {
    int ng = n / SB_QK, nb = (d + SB_QK - 1) / SB_QK;
    float *x = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * (d + 1));
    float *gout = malloc(sizeof(float) * d), *xs = malloc(sizeof(float) * ng);
    int8_t *xq = malloc(n);
    int32_t *xsum = calloc(ng, sizeof(int32_t));
    uint16_t *rs = calloc((size_t)nb * SB_QK, sizeof(uint16_t));
    double *want = malloc(sizeof(double) * d);
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = !extreme ? (float)rand_int(-100000, 100000) * 1e-5f
             : bits == 8 ? 1.0f : (rand_int(0, 1) ? 1.0f : -1.0f);
        amax = fmaxf(amax, fabsf(x[i]));
    }
    for (int i = 0; i < n; i++) {
        xq[i] = (int8_t)lrintf(x[i] * (127.0f / amax));
        xsum[i / SB_QK] += xq[i];
    }
    for (int g = 0; g < ng; g++) xs[g] = amax / 127.0f;
    int top = bits == 8 ? 127 : 7;
    weights w = make_weights(n, d, extreme && bits == 8 ? top : -top - (bits == 4), top, SB_QK);
    for (int i = 0; i < d; i++) {
        rs[i] = sb_f32_to_f16((float)rand_int(1, 1000) * 1e-4f);
        long dot = 0;
        for (int j = 0; j < n; j++) dot += (long)w.q[(size_t)i * n + j] * xq[j];
        want[i] = (double)dot * sb_f16_to_f32(rs[i]) * xs[0];
    }
    sb_qmatvec_fn generic = bits == 8 ? sb_matvec_q8_row_generic : sb_matvec_q4_row_generic;
    sb_qmatvec_fn f = bits == 8 ? k->matvec_q8_row : k->matvec_q4_row;
    const void *blocks = bits == 8 ? (const void *)w.blocks8 : (const void *)w.blocks4;
    const char *name = bits == 8 ? "matvec_q8_row" : "matvec_q4_row";
    out[d] = 12345.0f;
    if (mark && bits == 4) MARK(30);
    if (mark && bits == 8) MARK(32);
    (f ? f : generic)(out, xq, xs, xsum, blocks, rs, n, d, SB_QK);
    if (mark && bits == 4) MARK(31);
    if (mark && bits == 8) MARK(33);
    generic(gout, xq, xs, xsum, blocks, rs, n, d, SB_QK);
    check(close_enough(out, want, d) && out[d] == 12345.0f, name, k->name, n, d);
    check(!memcmp(out, gout, sizeof(float) * d), bits == 8 ? "matvec_q8_row = generic"
                                                           : "matvec_q4_row = generic", k->name, n, d);
    free_weights(&w);
    free(x), free(out), free(gout), free(xs), free(xq), free(xsum), free(rs), free(want);
}

static void test_f16(const sb_qkernel_set *k) {
    // conversions: exact values, rounding to even, subnormals, overflow, specials
    const float in[] = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 65520.0f, 1e-8f, 5.9604645e-8f,
                        6.1035156e-5f, 1.0009765625f, 1.00048828125f, 1.00146484375f, INFINITY};
    const uint16_t want[] = {0x0000, 0x8000, 0x3c00, 0xc100, 0x7bff, 0x7c00, 0x0000, 0x0001,
                             0x0400, 0x3c01, 0x3c00, 0x3c02, 0x7c00};
    int n = (int)(sizeof(in) / sizeof(in[0])), ok = 1;
    uint16_t got[16];
    k->f16_store(got, in, n);
    for (int i = 0; i < n; i++) ok &= got[i] == want[i];
    check(ok, "f16 conversions", k->name, n, 0);

    enum { HS = 48, SEQ = 40, KV = 96 };
    static uint16_t kt[HS * SEQ], v[SEQ * KV];
    float q[HS], att[SEQ], out[HS];
    for (int i = 0; i < HS * SEQ; i++) kt[i] = sb_f32_to_f16((float)rand_int(-1000, 1000) * 1e-3f);
    for (int i = 0; i < SEQ * KV; i++) v[i] = sb_f32_to_f16((float)rand_int(-1000, 1000) * 1e-3f);
    for (int i = 0; i < HS; i++) q[i] = (float)rand_int(-1000, 1000) * 1e-3f;
    int npos = 37;
    float gatt[SEQ], gout[HS];
    k->f16_scores(att, q, kt, HS, SEQ, npos);
    sb_f16_scores_generic(gatt, q, kt, HS, SEQ, npos);
    ok = memcmp(att, gatt, sizeof(float) * npos) == 0; // every set rounds as the portable one
    check(ok, "f16_scores equals generic", k->name, HS, npos);
    ok = 1;
    for (int t = 0; t < npos; t++) {
        double e = 0.0;
        for (int i = 0; i < HS; i++) e += (double)q[i] * sb_f16_to_f32(kt[i * SEQ + t]);
        ok &= fabs(att[t] - e) < 1e-4;
    }
    check(ok, "f16_scores", k->name, HS, npos);
    for (int t = 0; t < npos; t++) att[t] = (float)rand_int(0, 1000) * 1e-3f;
    k->f16_mix(out, att, v + 8, HS, KV, npos);
    sb_f16_mix_generic(gout, att, v + 8, HS, KV, npos);
    ok = memcmp(out, gout, sizeof(float) * HS) == 0;
    check(ok, "f16_mix equals generic", k->name, HS, npos);
    ok = 1;
    for (int i = 0; i < HS; i++) {
        double e = 0.0;
        for (int t = 0; t < npos; t++) e += (double)att[t] * sb_f16_to_f32(v[8 + t * KV + i]);
        ok &= fabs(out[i] - e) < 1e-4;
    }
    check(ok, "f16_mix", k->name, HS, npos);
}

int main(void) {
    const sb_qkernel_set *sets[8];
    int nsets = sb_qkernels_all(sets, 8);
    static const int shapes[][3] = {{288, 288, 32}, {288, 768, 32}, {768, 288, 64},
                                    {64, 33, 64}, {96, 100, 32}, {32, 1, 32}};
    printf("kernel sets:");
    for (int s = 0; s < nsets; s++) printf(" %s", sets[s]->name);
    printf("\n");
    for (int s = 0; s < nsets; s++) {
        for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
            int mark = s == nsets - 1 && shapes[i][0] == 768;
            test_products(sets[s], shapes[i][0], shapes[i][1], shapes[i][2], mark, 0);
            test_products(sets[s], shapes[i][0], shapes[i][1], shapes[i][2], 0, 1);
        }
        // 2080 columns: more groups than the C906 kernel plans at once
        static const int rows_shapes[][2] = {{288, 288}, {768, 288}, {288, 100}, {32, 1},
                                             {2080, 40}};
        for (size_t i = 0; i < sizeof(rows_shapes) / sizeof(rows_shapes[0]); i++) {
            int mark = s == nsets - 1 && rows_shapes[i][0] == 768;
            for (int bits = 4; bits <= 8; bits += 4) {
                test_row_scaled(sets[s], bits, rows_shapes[i][0], rows_shapes[i][1], mark, 0);
                test_row_scaled(sets[s], bits, rows_shapes[i][0], rows_shapes[i][1], 0, 1);
            }
        }
        test_f16(sets[s]);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
