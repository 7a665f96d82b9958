/* kernels_q_rvv.c: int8 kernels for RISC-V vectors. One source for RVV 1.0 (clang 16,
 * -march=rv64gcv) and XTheadVector / RVV 0.7.1 (GCC 14, -march=rv64gc_xtheadvector, the
 * Milk-V Duo's C906), through the standard __riscv_* intrinsics. Needs VLEN >= 128.
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

#if defined(__riscv_xtheadvector)
// ----------------------------------------------------------------------------
// XTheadVector (C906): one block group in assembly. GCC 14 keeps the sums of the C
// version below apart with register copies and extra vsetvli (0.7.1 forbids a widening
// add to write over its own wide source, so the sums must alternate between two
// register groups); written out, a group of 32 x 32 costs 132 instructions.
// Registers: v24-v31 and v16-v23 the alternating int32 sums (e32m8), v8-v15 the loaded
// columns, v0-v7 the int16 products; acc (32 floats, in memory) the block's sums.

#define XT_CLOBBER "memory", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", \
    "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19", "v20", "v21", \
    "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31"

/* acc += float(int sums in v24) * ws * xs, the fp16 scales widened by vfwcvt */
#define XT_SCALE_ADD                           \
    "th.vsetvli zero, %[n32], e16, m4\n\t"     \
    "th.vle.v v8, (%[ws])\n\t"                 \
    "th.vfwcvt.f.f.v v16, v8\n\t"              \
    "th.vsetvli zero, %[n32], e32, m8\n\t"     \
    "th.vfcvt.f.x.v v24, v24\n\t"              \
    "th.vfmul.vv v24, v24, v16\n\t"            \
    "th.vle.v v16, (%[acc])\n\t"               \
    "th.vfmacc.vf v16, %[xs], v24\n\t"         \
    "th.vse.v v16, (%[acc])\n\t"

/* Columns off..off+3 of 32 rows (128 bytes): two products of two columns each, added
 * into v24 by way of v16. */
#define XT_Q8_QUAD(off)                              \
    "th.vsetvli zero, %[n128], e8, m8\n\t"           \
    "th.vle.v v8, (%[w])\n\t"                        \
    "addi %[w], %[w], 128\n\t"                       \
    "lb %[t0], " #off "(%[x])\n\t"                   \
    "lb %[t1], " #off "+1(%[x])\n\t"                 \
    "lb %[t2], " #off "+2(%[x])\n\t"                 \
    "lb %[t3], " #off "+3(%[x])\n\t"                 \
    "th.vsetvli zero, %[n32], e8, m2\n\t"            \
    "th.vwmul.vx v0, v8, %[t0]\n\t"                  \
    "th.vwmacc.vx v0, %[t1], v10\n\t"                \
    "th.vwmul.vx v4, v12, %[t2]\n\t"                 \
    "th.vwmacc.vx v4, %[t3], v14\n\t"                \
    "th.vsetvli zero, %[n32], e16, m4\n\t"           \
    "th.vwadd.wv v16, v24, v0\n\t"                   \
    "th.vwadd.wv v24, v16, v4\n\t"

static void q8_group_xthead(float *acc, const int8_t *w, const int8_t *x, const uint16_t *ws,
                            float xs) {
    long t0, t1, t2, t3;
    __asm__ volatile(
        "th.vsetvli zero, %[n32], e32, m8\n\t"
        "th.vmv.v.i v24, 0\n\t"
        XT_Q8_QUAD(0) XT_Q8_QUAD(4) XT_Q8_QUAD(8) XT_Q8_QUAD(12)
        XT_Q8_QUAD(16) XT_Q8_QUAD(20) XT_Q8_QUAD(24) XT_Q8_QUAD(28)
        XT_SCALE_ADD
        : [w] "+r"(w), [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3)
        : [x] "r"(x), [ws] "r"(ws), [acc] "r"(acc), [xs] "f"(xs), [n32] "r"(32L),
          [n128] "r"(128L)
        : XT_CLOBBER);
}

/* Columns off..off+3 (two bytes of pairs per row, 64 bytes): low nibbles in v12 (pair 0)
 * and v14 (pair 1), high nibbles in v8 and v10; products added into v0 (int16). */
#define XT_Q4_QUAD(off)                              \
    "th.vsetvli zero, %[n64], e8, m4\n\t"            \
    "th.vle.v v8, (%[w])\n\t"                        \
    "addi %[w], %[w], 64\n\t"                        \
    "th.vand.vi v12, v8, 15\n\t"                     \
    "th.vsrl.vi v8, v8, 4\n\t"                       \
    "lb %[t0], " #off "(%[x])\n\t"                   \
    "lb %[t1], " #off "+1(%[x])\n\t"                 \
    "lb %[t2], " #off "+2(%[x])\n\t"                 \
    "lb %[t3], " #off "+3(%[x])\n\t"                 \
    "th.vsetvli zero, %[n32], e8, m2\n\t"            \
    "th.vwmacc.vx v0, %[t0], v12\n\t"                \
    "th.vwmacc.vx v0, %[t1], v8\n\t"                 \
    "th.vwmacc.vx v0, %[t2], v14\n\t"                \
    "th.vwmacc.vx v0, %[t3], v10\n\t"

/* 16 columns into int16 (16 products of <= 15 * 127 fit), then added into the sums. */
#define XT_Q4_HALF(off, from, to)                                           \
    "th.vsetvli zero, %[n32], e16, m4\n\t"                                  \
    "th.vmv.v.i v0, 0\n\t"                                                  \
    XT_Q4_QUAD(off) XT_Q4_QUAD(off + 4) XT_Q4_QUAD(off + 8) XT_Q4_QUAD(off + 12) \
    "th.vsetvli zero, %[n32], e16, m4\n\t"                                  \
    "th.vwadd.wv " to ", " from ", v0\n\t"

static void q4_group_xthead(float *acc, const uint8_t *w, const int8_t *x, const uint16_t *ws,
                            float xs, int32_t start) {
    long t0, t1, t2, t3;
    __asm__ volatile(
        "th.vsetvli zero, %[n32], e32, m8\n\t"
        "th.vmv.v.x v24, %[start]\n\t"
        XT_Q4_HALF(0, "v24", "v16") XT_Q4_HALF(16, "v16", "v24")
        XT_SCALE_ADD
        : [w] "+r"(w), [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3)
        : [x] "r"(x), [ws] "r"(ws), [acc] "r"(acc), [xs] "f"(xs), [n32] "r"(32L),
          [n64] "r"(64L), [n128] "r"(128L), [start] "r"((long)start)
        : XT_CLOBBER);
}

static void matvec_q8_0_rvv(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                            const void *w, const void *wsv, int n, int d, int gs) {
    const uint16_t *ws = wsv;
    (void)xsum, (void)gs;
    const int8_t *wq = w;
    int ng = n / SB_QK;
    for (int b = 0; b < d; b += SB_QK) {
        float acc[SB_QK] = {0};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK, ws += SB_QK) {
            q8_group_xthead(acc, wq, xq + g * SB_QK, ws, xs[g]);
        }
        memcpy(out + b, acc, sizeof(float) * (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

static void matvec_q4_0_rvv(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                            const void *w, const void *wsv, int n, int d, int gs) {
    const uint16_t *ws = wsv;
    (void)gs;
    const uint8_t *wq = w;
    int ng = n / SB_QK;
    for (int b = 0; b < d; b += SB_QK) {
        float acc[SB_QK] = {0};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK / 2, ws += SB_QK) {
            // the nibbles hold q + 8: start from -8 * sum(x) instead of zero
            q4_group_xthead(acc, wq, xq + g * SB_QK, ws, xs[g], -8 * xsum[g]);
        }
        memcpy(out + b, acc, sizeof(float) * (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

/* q5 / q6 (quant.c): four columns per step, their nibbles (one e8m8 load, masked or
 * shifted down) joined with their high bits (one e8m8 load, shifted to bits 4-5 and
 * masked), then four products into int16 (u <= 63: four products of <= 63 * 127 fit)
 * and one widening add. v0-v7 hold the high bits, then the products. */
#define XT_HI_UNIT(hoff, hshift, noff, nop, xoff, from, to) \
    "th.vsetvli zero, %[n128], e8, m8\n\t"                \
    "addi %[t0], %[w], " #hoff "\n\t"                     \
    "th.vle.v v0, (%[t0])\n\t"                            \
    hshift                                                \
    "th.vand.vx v0, v0, %[hmask]\n\t"                     \
    "addi %[t0], %[w], " #noff "\n\t"                     \
    "th.vle.v v8, (%[t0])\n\t"                            \
    nop                                                   \
    "th.vor.vv v8, v8, v0\n\t"                            \
    "lb %[t0], " #xoff "(%[x])\n\t"                       \
    "lb %[t1], " #xoff "+1(%[x])\n\t"                     \
    "lb %[t2], " #xoff "+2(%[x])\n\t"                     \
    "lb %[t3], " #xoff "+3(%[x])\n\t"                     \
    "th.vsetvli zero, %[n32], e8, m2\n\t"                 \
    "th.vwmul.vx v0, v8, %[t0]\n\t"                       \
    "th.vwmacc.vx v0, %[t1], v10\n\t"                     \
    "th.vwmacc.vx v0, %[t2], v12\n\t"                     \
    "th.vwmacc.vx v0, %[t3], v14\n\t"                     \
    "th.vsetvli zero, %[n32], e16, m4\n\t"                \
    "th.vwadd.wv " to ", " from ", v0\n\t"

#define XT_LO "th.vand.vi v8, v8, 15\n\t"
#define XT_HI "th.vsrl.vi v8, v8, 4\n\t"
#define XT_SLL(k) "th.vsll.vi v0, v0, " #k "\n\t"
#define XT_SRL(k) "th.vsrl.vi v0, v0, " #k "\n\t"
#define XT_HI_ARGS                                                                      \
    : [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3)                    \
    : [w] "r"(w), [x] "r"(x), [ws] "r"(ws), [acc] "r"(acc), [xs] "f"(xs), [n32] "r"(32L), \
      [n128] "r"(128L), [start] "r"((long)start), [hmask] "r"(hmask)                    \
    : XT_CLOBBER

/* q6: column 8s + 4h + t has its nibble in byte 4h + t (s even) or 8 + 4h + t (s odd),
 * low (s < 2) or high, and its high bits in bits 2s, 2s + 1 of byte 16 + 4h + t. */
static void q6_group_xthead(float *acc, const uint8_t *w, const int8_t *x, const uint16_t *ws,
                            float xs, int32_t start) {
    long t0, t1, t2, t3, hmask = 0x30;
    __asm__ volatile(
        "th.vsetvli zero, %[n32], e32, m8\n\t"
        "th.vmv.v.x v24, %[start]\n\t"
        XT_HI_UNIT(512, XT_SLL(4), 0, XT_LO, 0, "v24", "v16")
        XT_HI_UNIT(640, XT_SLL(4), 128, XT_LO, 4, "v16", "v24")
        XT_HI_UNIT(512, XT_SLL(2), 256, XT_LO, 8, "v24", "v16")
        XT_HI_UNIT(640, XT_SLL(2), 384, XT_LO, 12, "v16", "v24")
        XT_HI_UNIT(512, "", 0, XT_HI, 16, "v24", "v16")
        XT_HI_UNIT(640, "", 128, XT_HI, 20, "v16", "v24")
        XT_HI_UNIT(512, XT_SRL(2), 256, XT_HI, 24, "v24", "v16")
        XT_HI_UNIT(640, XT_SRL(2), 384, XT_HI, 28, "v16", "v24")
        XT_SCALE_ADD
        XT_HI_ARGS);
}

/* q5: column 4c + t has its nibble in byte (4c + t) mod 16, low (c < 4) or high, and
 * its high bit in bit c of byte 16 + t. */
static void q5_group_xthead(float *acc, const uint8_t *w, const int8_t *x, const uint16_t *ws,
                            float xs, int32_t start) {
    long t0, t1, t2, t3, hmask = 0x10;
    __asm__ volatile(
        "th.vsetvli zero, %[n32], e32, m8\n\t"
        "th.vmv.v.x v24, %[start]\n\t"
        XT_HI_UNIT(512, XT_SLL(4), 0, XT_LO, 0, "v24", "v16")
        XT_HI_UNIT(512, XT_SLL(3), 128, XT_LO, 4, "v16", "v24")
        XT_HI_UNIT(512, XT_SLL(2), 256, XT_LO, 8, "v24", "v16")
        XT_HI_UNIT(512, XT_SLL(1), 384, XT_LO, 12, "v16", "v24")
        XT_HI_UNIT(512, "", 0, XT_HI, 16, "v24", "v16")
        XT_HI_UNIT(512, XT_SRL(1), 128, XT_HI, 20, "v16", "v24")
        XT_HI_UNIT(512, XT_SRL(2), 256, XT_HI, 24, "v24", "v16")
        XT_HI_UNIT(512, XT_SRL(3), 384, XT_HI, 28, "v16", "v24")
        XT_SCALE_ADD
        XT_HI_ARGS);
}

#define XT_QHI_MATVEC(bits)                                                                 \
    static void matvec_q##bits##_rvv(float *out, const int8_t *xq, const float *xs,         \
                                     const int32_t *xsum, const void *w, const void *wsv,   \
                                     int n, int d, int gs) {                                \
        (void)gs;                                                                           \
        const uint8_t *wq = w;                                                              \
        const uint16_t *ws = wsv;                                                           \
        int ng = n / SB_QK;                                                                 \
        for (int b = 0; b < d; b += SB_QK) {                                                \
            float acc[SB_QK] = {0};                                                         \
            for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK * bits / 8, ws += SB_QK) {     \
                q##bits##_group_xthead(acc, wq, xq + g * SB_QK, ws, xs[g],                  \
                                       -(1 << (bits - 1)) * xsum[g]);                       \
            }                                                                               \
            memcpy(out + b, acc, sizeof(float) * (size_t)(d - b < SB_QK ? d - b : SB_QK)); \
        }                                                                                   \
    }
XT_QHI_MATVEC(5)
XT_QHI_MATVEC(6)

#else /* RVV 1.0: intrinsics */

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

/* One e8m8 load brings 4 columns (RVV loads take no offset, so fewer loads also means
 * fewer address adds), split with vget. */
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
            const int8_t *x = xq + g * SB_QK;
            vint32m8_t isum = __riscv_vmv_v_x_i32m8(0, vl);
            for (int j = 0; j < SB_QK; j += 4, wq += 4 * SB_QK) { // columns j..j+3
                vint8m8_t c = __riscv_vle8_v_i8m8(wq, 4 * vl);
                vint8m2_t c0 = __riscv_vget_v_i8m8_i8m2(c, 0), c1 = __riscv_vget_v_i8m8_i8m2(c, 1);
                vint8m2_t c2 = __riscv_vget_v_i8m8_i8m2(c, 2), c3 = __riscv_vget_v_i8m8_i8m2(c, 3);
                vint16m4_t p = __riscv_vwmul_vx_i16m4(c0, x[j], vl);
                p = __riscv_vwmacc_vx_i16m4(p, x[j + 1], c1, vl);
                vint16m4_t r = __riscv_vwmul_vx_i16m4(c2, x[j + 2], vl);
                r = __riscv_vwmacc_vx_i16m4(r, x[j + 3], c3, vl);
                isum = __riscv_vwadd_wv_i32m8(isum, p, vl);
                isum = __riscv_vwadd_wv_i32m8(isum, r, vl);
            }
            facc = scale_add(facc, isum, ws, xs[g], vl);
        }
        __riscv_vse32_v_f32m8(out + b, facc, (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

/* Each byte holds two columns of a row (low nibble, high nibble). */
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
            const int8_t *x = xq + g * SB_QK;
            // the nibbles hold q + 8: start from -8 * sum(x) instead of zero
            vint32m8_t isum = __riscv_vmv_v_x_i32m8(-8 * xsum[g], vl);
            for (int half = 0; half < SB_QK; half += 16) { // 16 products of <= 15 * 127 fit int16
                vint16m4_t p = __riscv_vmv_v_x_i16m4(0, vl);
                for (int j = half; j < half + 16; j += 8, wq += 4 * SB_QK) { // columns j..j+7
                    vuint8m8_t byte = __riscv_vle8_v_u8m8(wq, 4 * vl);
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
            facc = scale_add(facc, isum, ws, xs[g], vl);
        }
        __riscv_vse32_v_f32m8(out + b, facc, (size_t)(d - b < SB_QK ? d - b : SB_QK));
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

#endif /* __riscv_xtheadvector */

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
    .matvec_q8_0 = matvec_q8_0_rvv,
    .matvec_q4_0 = matvec_q4_0_rvv,
    .matvec_q8_rows = matvec_q8_rows_rvv,
    .matvec_q5 = matvec_q5_rvv,
    .matvec_q6 = matvec_q6_rvv,
#if defined(__riscv_xtheadvector)
    .f16_vector = 1,
    .f16_store = sb_f16_store_xt,
    .f16_scores = sb_f16_scores_xt,
    .f16_mix = sb_f16_mix_xt,
#else
    // the fp16 KV cache uses the portable conversions here (vector halves need Zvfh)
    .f16_store = sb_f16_store_generic,
    .f16_scores = sb_f16_scores_generic,
    .f16_mix = sb_f16_mix_generic,
#endif
};
#endif
