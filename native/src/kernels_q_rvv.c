/* kernels_q_rvv.c: int8 kernels for RISC-V vectors. One source for RVV 1.0 (clang 16,
 * -march=rv64gcv) and XTheadVector / RVV 0.7.1 (GCC 14, -march=rv64gc_xtheadvector, the
 * Milk-V Duo's C906), through the standard __riscv_* intrinsics. Needs VLEN >= 128.
 * On XTheadVector the block products are kernels_q_xt.c's assembly instead; the
 * activations' quantization and the row-major (ak42) product stay here for both.
 *
 * Blocks (quant.c) hold one column of 32 rows contiguously, so 32 rows advance together,
 * one lane per row (e8m2 columns, e16m4 products, e32m8 sums) and no row needs a
 * reduction: per pair of columns a widening multiply by the first activation and a
 * widening multiply-add by the second (two products of |q| <= 127 fit int16), then one
 * widening add into the int32 sums. Once per group of 32 columns the sums are converted
 * and scaled. For 4-bit weights (0..15 after the +8 offset) int16 holds 16 products, so
 * the widening add comes once per 16 columns. One e8m8 load brings several columns
 * (RVV loads take no offset, so fewer loads also means fewer address adds), and the
 * element width changes (a vsetvli each) only once per load or less.
 */
#if defined(__riscv_vector) || defined(__riscv_xtheadvector)
#include <riscv_vector.h>
#include <string.h>

#include "kernels_q.h"

/* XTheadVector's vmv.x.s zero-extends to 64 bits where GCC 14 assumes RVV 1.0's sign
 * extension: re-extend every int32 taken out of a vector (tools/riscv/README.md). */
static inline int32_t sext32(int32_t v) {
#if defined(__riscv_xtheadvector)
    int64_t r;
    __asm__("sext.w %0, %1" : "=r"(r) : "r"(v));
    return (int32_t)r;
#else
    return v;
#endif
}

int sb_qrvv_usable(void) {
    return __riscv_vsetvl_e8m2(SB_QK) == SB_QK;
}

// ----------------------------------------------------------------------------
// activations

/* Same arithmetic as quantize_q8_generic (vfcvt rounds to nearest even under the
 * default frm), so the results are identical. */
static void quantize_q8_rvv(int8_t *xq, float *xs, int32_t *xsum, const float *x, int n) {
    size_t vl = __riscv_vsetvl_e32m8(SB_QK);
    vfloat32m1_t zero = __riscv_vfmv_s_f_f32m1(0.0f, 1);
    vint32m1_t izero = __riscv_vmv_s_x_i32m1(0, 1);
    for (int g = 0; g < n / SB_QK; g++) {
        vfloat32m8_t v = __riscv_vle32_v_f32m8(x + g * SB_QK, vl);
        vfloat32m1_t m = __riscv_vfredmax_vs_f32m8_f32m1(__riscv_vfabs_v_f32m8(v, vl), zero, vl);
        float amax = __riscv_vfmv_f_s_f32m1_f32(m);
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        vint32m8_t q = __riscv_vfcvt_x_f_v_i32m8(__riscv_vfmul_vf_f32m8(v, id, vl), vl);
        vint32m1_t s = __riscv_vredsum_vs_i32m8_i32m1(q, izero, vl);
        vint8m2_t q8 = __riscv_vncvt_x_x_w_i8m2(__riscv_vncvt_x_x_w_i16m4(q, vl), vl);
        __riscv_vse8_v_i8m2(xq + g * SB_QK, q8, vl);
        xs[g] = amax / 127.0f;
        xsum[g] = sext32(__riscv_vmv_x_s_i32m1_i32(s));
    }
}

// ----------------------------------------------------------------------------
// blocks

#if !defined(__riscv_xtheadvector) /* XTheadVector: kernels_q_xt.c */

/* fp16 scales (finite) -> float without Zvfh: the magnitude's bits moved into a
 * float's places are its value times 2^-112 (subnormal halves included), the sign
 * moved to bit 31. */
static inline vfloat32m8_t load_scales(const uint16_t *ws, size_t vl) {
    vuint32m8_t h = __riscv_vzext_vf2_u32m8(__riscv_vle16_v_u16m4(ws, vl), vl);
    vuint32m8_t mag = __riscv_vsll_vx_u32m8(__riscv_vand_vx_u32m8(h, 0x7fff, vl), 13, vl);
    vuint32m8_t sign = __riscv_vsll_vx_u32m8(__riscv_vand_vx_u32m8(h, 0x8000, vl), 16, vl);
    vfloat32m8_t f = __riscv_vfmul_vf_f32m8(__riscv_vreinterpret_v_u32m8_f32m8(mag), 0x1p112f, vl);
    return __riscv_vreinterpret_v_u32m8_f32m8(
        __riscv_vor_vv_u32m8(__riscv_vreinterpret_v_f32m8_u32m8(f), sign, vl));
}

/* facc (32 rows) += float(isum) * scales * xs: once per block and group. */
static inline vfloat32m8_t scale_add(vfloat32m8_t facc, vint32m8_t isum, const uint16_t *ws,
                                     float xs, size_t vl) {
    vfloat32m8_t f = __riscv_vfcvt_f_x_v_f32m8(isum, vl);
    f = __riscv_vfmul_vv_f32m8(f, load_scales(ws, vl), vl);
    return __riscv_vfmacc_vf_f32m8(facc, xs, f, vl);
}

/* isum += a group's 32 columns of q8, x its activations; *wq moves past the group. One
 * e8m8 load brings 4 columns (RVV loads take no offset, so fewer loads also means fewer
 * address adds), split with vget. */
static inline vint32m8_t q8_group(vint32m8_t isum, const int8_t *x, const int8_t **wq,
                                  size_t vl) {
    for (int j = 0; j < SB_QK; j += 4, *wq += 4 * SB_QK) { // columns j..j+3
        vint8m8_t c = __riscv_vle8_v_i8m8(*wq, 4 * vl);
        vint8m2_t c0 = __riscv_vget_v_i8m8_i8m2(c, 0), c1 = __riscv_vget_v_i8m8_i8m2(c, 1);
        vint8m2_t c2 = __riscv_vget_v_i8m8_i8m2(c, 2), c3 = __riscv_vget_v_i8m8_i8m2(c, 3);
        vint16m4_t p = __riscv_vwmul_vx_i16m4(c0, x[j], vl);
        p = __riscv_vwmacc_vx_i16m4(p, x[j + 1], c1, vl);
        vint16m4_t r = __riscv_vwmul_vx_i16m4(c2, x[j + 2], vl);
        r = __riscv_vwmacc_vx_i16m4(r, x[j + 3], c3, vl);
        isum = __riscv_vwadd_wv_i32m8(isum, p, vl);
        isum = __riscv_vwadd_wv_i32m8(isum, r, vl);
    }
    return isum;
}

static void matvec_q8_0_rvv(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                            const void *w, const void *wsv, int n, int d, int gs) {
    const uint16_t *ws = wsv;
    (void)xsum, (void)gs;
    const int8_t *wq = w;
    int ng = n / SB_QK;
    size_t vl = __riscv_vsetvl_e8m2(SB_QK);
    for (int b = 0; b < d; b += SB_QK) {
        vfloat32m8_t facc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
        for (int g = 0; g < ng; g++, ws += SB_QK) {
            vint32m8_t isum = q8_group(__riscv_vmv_v_x_i32m8(0, vl), xq + g * SB_QK, &wq, vl);
            facc = scale_add(facc, isum, ws, xs[g], vl);
        }
        __riscv_vse32_v_f32m8(out + b, facc, (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

/* isum += a group's 32 columns of q4 (each byte two columns of a row: low nibble, high
 * nibble), x its activations; *wq moves past the group. */
static inline vint32m8_t q4_group(vint32m8_t isum, const int8_t *x, const uint8_t **wq,
                                  size_t vl) {
    for (int half = 0; half < SB_QK; half += 16) { // 16 products of <= 15 * 127 fit int16
        vint16m4_t p = __riscv_vmv_v_x_i16m4(0, vl);
        for (int j = half; j < half + 16; j += 8, *wq += 4 * SB_QK) { // columns j..j+7
            vuint8m8_t byte = __riscv_vle8_v_u8m8(*wq, 4 * vl);
            vint8m8_t lo = __riscv_vreinterpret_v_u8m8_i8m8(__riscv_vand_vx_u8m8(byte, 15, 4 * vl));
            vint8m8_t hi = __riscv_vreinterpret_v_u8m8_i8m8(__riscv_vsrl_vx_u8m8(byte, 4, 4 * vl));
#define COLUMN(k, part) __riscv_vget_v_i8m8_i8m2(part, k)
            p = __riscv_vwmacc_vx_i16m4(p, x[j], COLUMN(0, lo), vl);
            p = __riscv_vwmacc_vx_i16m4(p, x[j + 1], COLUMN(0, hi), vl);
            p = __riscv_vwmacc_vx_i16m4(p, x[j + 2], COLUMN(1, lo), vl);
            p = __riscv_vwmacc_vx_i16m4(p, x[j + 3], COLUMN(1, hi), vl);
            p = __riscv_vwmacc_vx_i16m4(p, x[j + 4], COLUMN(2, lo), vl);
            p = __riscv_vwmacc_vx_i16m4(p, x[j + 5], COLUMN(2, hi), vl);
            p = __riscv_vwmacc_vx_i16m4(p, x[j + 6], COLUMN(3, lo), vl);
            p = __riscv_vwmacc_vx_i16m4(p, x[j + 7], COLUMN(3, hi), vl);
#undef COLUMN
        }
        isum = __riscv_vwadd_wv_i32m8(isum, p, vl);
    }
    return isum;
}

static void matvec_q4_0_rvv(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                            const void *w, const void *wsv, int n, int d, int gs) {
    const uint16_t *ws = wsv;
    (void)gs;
    const uint8_t *wq = w;
    int ng = n / SB_QK;
    size_t vl = __riscv_vsetvl_e8m2(SB_QK);
    for (int b = 0; b < d; b += SB_QK) {
        vfloat32m8_t facc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
        for (int g = 0; g < ng; g++, ws += SB_QK) {
            // the nibbles hold q + 8: start from -8 * sum(x) instead of zero
            vint32m8_t isum = __riscv_vmv_v_x_i32m8(-8 * xsum[g], vl);
            isum = q4_group(isum, xq + g * SB_QK, &wq, vl);
            facc = scale_add(facc, isum, ws, xs[g], vl);
        }
        __riscv_vse32_v_f32m8(out + b, facc, (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

/* SB_Q4_ROW: the sums run over every group (x has one scale); then float(sum) * scale *
 * xs as two multiplications, the portable kernel's bits. */
static void matvec_q4_row_rvv(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *wsv, int n,
                              int d, int gs) {
    const uint16_t *ws = wsv;
    (void)gs;
    const uint8_t *wq = w;
    int ng = n / SB_QK;
    int32_t total = 0;
    for (int g = 0; g < ng; g++) total += xsum[g];
    size_t vl = __riscv_vsetvl_e8m2(SB_QK);
    for (int b = 0; b < d; b += SB_QK, ws += SB_QK) {
        vint32m8_t isum = __riscv_vmv_v_x_i32m8(-8 * total, vl);
        for (int g = 0; g < ng; g++) isum = q4_group(isum, xq + g * SB_QK, &wq, vl);
        vfloat32m8_t f = __riscv_vfmul_vv_f32m8(__riscv_vfcvt_f_x_v_f32m8(isum, vl),
                                                load_scales(ws, vl), vl);
        f = __riscv_vfmul_vf_f32m8(f, xs[0], vl);
        __riscv_vse32_v_f32m8(out + b, f, (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

/* SB_Q8_ROW: as SB_Q4_ROW, with q8_0's groups. */
static void matvec_q8_row_rvv(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *wsv, int n,
                              int d, int gs) {
    const uint16_t *ws = wsv;
    (void)xsum, (void)gs;
    const int8_t *wq = w;
    int ng = n / SB_QK;
    size_t vl = __riscv_vsetvl_e8m2(SB_QK);
    for (int b = 0; b < d; b += SB_QK, ws += SB_QK) {
        vint32m8_t isum = __riscv_vmv_v_x_i32m8(0, vl);
        for (int g = 0; g < ng; g++) isum = q8_group(isum, xq + g * SB_QK, &wq, vl);
        vfloat32m8_t f = __riscv_vfmul_vv_f32m8(__riscv_vfcvt_f_x_v_f32m8(isum, vl),
                                                load_scales(ws, vl), vl);
        f = __riscv_vfmul_vf_f32m8(f, xs[0], vl);
        __riscv_vse32_v_f32m8(out + b, f, (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

/* q5 / q6 (quant.c), as the XTheadVector assembly above does it: per step of four
 * columns, their nibbles (masked or shifted down) joined with their high bits (shifted
 * to bit 4 and masked), then four products into int16 and one widening add. */
typedef struct {
    short hoff, hshift, noff, high_nibble, x; // hshift > 0: left, < 0: right
} qhi_step;

static const qhi_step Q6_STEPS[8] = {
    {512, 4, 0, 0, 0}, {640, 4, 128, 0, 4}, {512, 2, 256, 0, 8}, {640, 2, 384, 0, 12},
    {512, 0, 0, 1, 16}, {640, 0, 128, 1, 20}, {512, -2, 256, 1, 24}, {640, -2, 384, 1, 28}};
static const qhi_step Q5_STEPS[8] = {
    {512, 4, 0, 0, 0}, {512, 3, 128, 0, 4}, {512, 2, 256, 0, 8}, {512, 1, 384, 0, 12},
    {512, 0, 0, 1, 16}, {512, -1, 128, 1, 20}, {512, -2, 256, 1, 24}, {512, -3, 384, 1, 28}};

static void matvec_qhi_rvv(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                           const uint8_t *wq, const uint16_t *ws, int n, int d, int bits) {
    const qhi_step *steps = bits == 5 ? Q5_STEPS : Q6_STEPS;
    uint8_t hmask = bits == 5 ? 0x10 : 0x30;
    int ng = n / SB_QK;
    size_t vl = __riscv_vsetvl_e8m2(SB_QK);
    for (int b = 0; b < d; b += SB_QK) {
        vfloat32m8_t facc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK * bits / 8, ws += SB_QK) {
            const int8_t *x = xq + g * SB_QK;
            vint32m8_t isum = __riscv_vmv_v_x_i32m8(-(1 << (bits - 1)) * xsum[g], vl);
            for (int k = 0; k < 8; k++) {
                const qhi_step *st = &steps[k];
                vuint8m8_t h = __riscv_vle8_v_u8m8(wq + st->hoff, 4 * vl);
                h = st->hshift > 0 ? __riscv_vsll_vx_u8m8(h, st->hshift, 4 * vl)
                  : st->hshift < 0 ? __riscv_vsrl_vx_u8m8(h, -st->hshift, 4 * vl) : h;
                h = __riscv_vand_vx_u8m8(h, hmask, 4 * vl);
                vuint8m8_t nib = __riscv_vle8_v_u8m8(wq + st->noff, 4 * vl);
                nib = st->high_nibble ? __riscv_vsrl_vx_u8m8(nib, 4, 4 * vl)
                                      : __riscv_vand_vx_u8m8(nib, 15, 4 * vl);
                vint8m8_t u = __riscv_vreinterpret_v_u8m8_i8m8(__riscv_vor_vv_u8m8(nib, h, 4 * vl));
                const int8_t *xj = x + st->x;
                vint16m4_t p = __riscv_vwmul_vx_i16m4(__riscv_vget_v_i8m8_i8m2(u, 0), xj[0], vl);
                p = __riscv_vwmacc_vx_i16m4(p, xj[1], __riscv_vget_v_i8m8_i8m2(u, 1), vl);
                p = __riscv_vwmacc_vx_i16m4(p, xj[2], __riscv_vget_v_i8m8_i8m2(u, 2), vl);
                p = __riscv_vwmacc_vx_i16m4(p, xj[3], __riscv_vget_v_i8m8_i8m2(u, 3), vl);
                isum = __riscv_vwadd_wv_i32m8(isum, p, vl);
            }
            facc = scale_add(facc, isum, ws, xs[g], vl);
        }
        __riscv_vse32_v_f32m8(out + b, facc, (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

static void matvec_q5_rvv(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                          const void *w, const void *ws, int n, int d, int gs) {
    (void)gs;
    matvec_qhi_rvv(out, xq, xs, xsum, w, ws, n, d, 5);
}

static void matvec_q6_rvv(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                          const void *w, const void *ws, int n, int d, int gs) {
    (void)gs;
    matvec_qhi_rvv(out, xq, xs, xsum, w, ws, n, d, 6);
}

#endif /* !__riscv_xtheadvector */

// ----------------------------------------------------------------------------
// row-major int8 (llama2.c ak42): one reduction per row and group

static void matvec_q8_rows_rvv(float *out, const int8_t *xq, const float *xs,
                               const int32_t *xsum, const void *w, const void *wsv, int n, int d,
                               int gs) {
    const float *ws = wsv;
    (void)xsum;
    size_t vl = __riscv_vsetvl_e8m2(SB_QK);
    vint32m1_t zero = __riscv_vmv_s_x_i32m1(0, 1);
    int spr = n / gs;
    for (int i = 0; i < d; i++) {
        const int8_t *row = (const int8_t *)w + (size_t)i * n;
        const float *rs = ws + (size_t)i * spr;
        float val = 0.0f;
        for (int j = 0; j < n; j += SB_QK) {
            vint16m4_t p = __riscv_vwmul_vv_i16m4(__riscv_vle8_v_i8m2(row + j, vl),
                                                  __riscv_vle8_v_i8m2(xq + j, vl), vl);
            vint32m1_t s = __riscv_vwredsum_vs_i16m4_i32m1(p, zero, vl);
            val += (float)sext32(__riscv_vmv_x_s_i32m1_i32(s)) * (rs[j / gs] * xs[j / SB_QK]);
        }
        out[i] = val;
    }
}

const sb_qkernel_set sb_qkernels_rvv = {
#if defined(__riscv_xtheadvector)
    .name = "xtheadvector",
#else
    .name = "rvv",
#endif
    .quantize_q8 = quantize_q8_rvv,
    .matvec_q8_rows = matvec_q8_rows_rvv,
#if defined(__riscv_xtheadvector)
    .matvec_q8_0 = sb_matvec_q8_0_xt,
    .matvec_q4_0 = sb_matvec_q4_0_xt,
    .matvec_q5 = sb_matvec_q5_xt,
    .matvec_q6 = sb_matvec_q6_xt,
    .matvec_q4_row = sb_matvec_q4_row_xt,
    .matvec_q8_row = sb_matvec_q8_row_xt,
    .f16_vector = 1,
    .f16_store = sb_f16_store_xt,
    .f16_scores = sb_f16_scores_xt,
    .f16_mix = sb_f16_mix_xt,
#else
    .matvec_q8_0 = matvec_q8_0_rvv,
    .matvec_q4_0 = matvec_q4_0_rvv,
    .matvec_q5 = matvec_q5_rvv,
    .matvec_q6 = matvec_q6_rvv,
    .matvec_q4_row = matvec_q4_row_rvv,
    .matvec_q8_row = matvec_q8_row_rvv,
    // the fp16 KV cache uses the portable conversions here (vector halves need Zvfh)
    .f16_store = sb_f16_store_generic,
    .f16_scores = sb_f16_scores_generic,
    .f16_mix = sb_f16_mix_generic,
#endif
};
#endif
