/* kernels_rvv.c: RISC-V vector kernels, one source for RVV 1.0 (clang, gcc) and for the
 * C906's XTheadVector (RVV 0.7.1, GCC 14 -march=rv64gc_xtheadvector), which both take
 * the standard __riscv_ intrinsics.
 *
 * fp32 matvec: 32 rows per block, one row per lane of an e32m8 register group (VLEN 128
 * gives 32 lanes), so each lane sums its row from left to right with a rounded product
 * and a rounded sum, as the reference does; vfmacc would round once and change the bits.
 */
#if defined(__riscv_vector) || defined(__riscv_xtheadvector)
#include <riscv_vector.h>
#include <stddef.h>

#include "fastmath.h"
#include "kernels.h"
#include "kernels_q.h"

#define ROWS 32

int sb_rvv_usable(void) {
    return __riscv_vsetvlmax_e32m8() >= ROWS;
}

static void matvec_f32_rvv(float *out, const float *x, const float *w, int n, int d) {
    for (int b = 0; b < d; b += ROWS) {
        size_t vl = __riscv_vsetvl_e32m8(ROWS);
        const float *blk = w + (size_t)b * n;
        vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
        int j = 0;
        // unrolled by 4 (same order of terms): less loop overhead per vector op
        for (; j + 4 <= n; j += 4) {
            const float *c = blk + (size_t)j * ROWS;
            acc = __riscv_vfadd_vv_f32m8(acc, __riscv_vfmul_vf_f32m8(__riscv_vle32_v_f32m8(c, vl), x[j], vl), vl);
            acc = __riscv_vfadd_vv_f32m8(acc, __riscv_vfmul_vf_f32m8(__riscv_vle32_v_f32m8(c + ROWS, vl), x[j + 1], vl), vl);
            acc = __riscv_vfadd_vv_f32m8(acc, __riscv_vfmul_vf_f32m8(__riscv_vle32_v_f32m8(c + 2 * ROWS, vl), x[j + 2], vl), vl);
            acc = __riscv_vfadd_vv_f32m8(acc, __riscv_vfmul_vf_f32m8(__riscv_vle32_v_f32m8(c + 3 * ROWS, vl), x[j + 3], vl), vl);
        }
        for (; j < n; j++) {
            vfloat32m8_t col = __riscv_vle32_v_f32m8(blk + (size_t)j * ROWS, vl);
            acc = __riscv_vfadd_vv_f32m8(acc, __riscv_vfmul_vf_f32m8(col, x[j], vl), vl);
        }
        // the last block may hold padding rows that have no place in out
        __riscv_vse32_v_f32m8(out + b, acc, __riscv_vsetvl_e32m8(d - b < ROWS ? d - b : ROWS));
    }
}

static void attn_scores_f32_rvv(float *att, const float *q, const float *kt, int head_size,
                                int seq_len, int n) {
    for (size_t vl; n > 0; n -= (int)vl, att += vl, kt += vl) {
        vl = __riscv_vsetvl_e32m8((size_t)n);
        vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
        for (int i = 0; i < head_size; i++) {
            vfloat32m8_t k = __riscv_vle32_v_f32m8(kt + (size_t)i * seq_len, vl);
            acc = __riscv_vfadd_vv_f32m8(acc, __riscv_vfmul_vf_f32m8(k, q[i], vl), vl);
        }
        __riscv_vse32_v_f32m8(att, acc, vl);
    }
}

static void attn_mix_f32_rvv(float *out, const float *att, const float *v, int head_size,
                             int stride, int n) {
    for (size_t vl; head_size > 0; head_size -= (int)vl, out += vl, v += vl) {
        vl = __riscv_vsetvl_e32m8((size_t)head_size);
        vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
        for (int t = 0; t < n; t++) {
            vfloat32m8_t vt = __riscv_vle32_v_f32m8(v + (size_t)t * stride, vl);
            acc = __riscv_vfadd_vv_f32m8(acc, __riscv_vfmul_vf_f32m8(vt, att[t], vl), vl);
        }
        __riscv_vse32_v_f32m8(out, acc, vl);
    }
}

#if defined(__riscv_xtheadvector)
// ----------------------------------------------------------------------------
// fp16 KV cache (kernels_q.h's f16_* for the C906). XTheadVector converts halves in
// one instruction (vfwcvt.f.f.v / vfncvt.f.f.v at SEW 16, rounding to nearest even),
// where the portable C takes ~20 scalar instructions a value; GCC 14 has no
// XTheadVector intrinsics for half floats, so in assembly. Sums in the portable
// kernels' order (each product rounded, then added), one position (scores) or one
// element (mix) per lane. Registers: v0-v3 the halves (e16m4), v8-v15 them widened
// (e32m8), v24-v31 the sums; VLEN 128 gives 32 lanes.

#define F16_CLOBBER "memory", "v0", "v1", "v2", "v3", "v8", "v9", "v10", "v11", "v12", \
    "v13", "v14", "v15", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31"

void sb_f16_store_xt(uint16_t *dst, const float *src, int n) {
    for (size_t vl; n > 0; n -= (int)vl, src += vl, dst += vl) {
        __asm__ volatile("th.vsetvli %[vl], %[n], e32, m8\n\t"
                         "th.vle.v v8, (%[src])\n\t"
                         "th.vsetvli zero, %[vl], e16, m4\n\t"
                         "th.vfncvt.f.f.v v0, v8\n\t"
                         "th.vse.v v0, (%[dst])\n\t"
                         : [vl] "=&r"(vl)
                         : [n] "r"((size_t)n), [src] "r"(src), [dst] "r"(dst)
                         : F16_CLOBBER);
    }
}

/* out[lane] = sum over `count` steps of f[j] * half(h[lane + j * step]), j = 0.., each
 * product fused into the sum (vfmacc: one rounding, as every set's fmaf does); at
 * most 32 lanes (e32m8), or 16 at half the cost (e32m4: the C906 takes as long for a
 * vector whatever vl, so a short tail, as a head of 48 leaves, goes to the smaller one). */
#define F16_DOT_LANES(name, lmul16, lmul32)                                                  \
    static size_t name(float *out, const float *f, const uint16_t *h, size_t step,          \
                       size_t count, size_t lanes) {                                        \
        size_t vl;                                                                           \
        float fj;                                                                            \
        __asm__ volatile("th.vsetvli %[vl], %[lanes], e32, " lmul32 "\n\t"                   \
                         "th.vmv.v.i v24, 0\n\t"                                             \
                         "beqz %[count], 2f\n"                                               \
                         "1:\n\t"                                                            \
                         "flw %[fj], 0(%[f])\n\t"                                            \
                         "th.vsetvli zero, %[vl], e16, " lmul16 "\n\t"                       \
                         "th.vle.v v0, (%[h])\n\t"                                           \
                         "th.vfwcvt.f.f.v v8, v0\n\t"                                        \
                         "th.vsetvli zero, %[vl], e32, " lmul32 "\n\t"                       \
                         "th.vfmacc.vf v24, %[fj], v8\n\t"                                   \
                         "addi %[f], %[f], 4\n\t"                                            \
                         "add %[h], %[h], %[step]\n\t"                                       \
                         "addi %[count], %[count], -1\n\t"                                   \
                         "bnez %[count], 1b\n"                                               \
                         "2:\n\t"                                                            \
                         "th.vse.v v24, (%[out])\n\t"                                        \
                         : [vl] "=&r"(vl), [fj] "=&f"(fj), [f] "+r"(f), [h] "+r"(h),        \
                           [count] "+r"(count)                                               \
                         : [lanes] "r"(lanes), [step] "r"(step * sizeof(uint16_t)),         \
                           [out] "r"(out)                                                    \
                         : F16_CLOBBER);                                                     \
        return vl;                                                                           \
    }
F16_DOT_LANES(f16_dot_m8, "m4", "m8")
F16_DOT_LANES(f16_dot_m4, "m2", "m4")

static size_t f16_dot_lanes(float *out, const float *f, const uint16_t *h, size_t step,
                            size_t count, size_t lanes) {
    if (lanes <= __riscv_vsetvlmax_e32m4()) return f16_dot_m4(out, f, h, step, count, lanes);
    return f16_dot_m8(out, f, h, step, count, lanes);
}

void sb_f16_scores_xt(float *att, const float *q, const uint16_t *kt, int head_size,
                      int seq_len, int n) {
    for (size_t vl; n > 0; n -= (int)vl, att += vl, kt += vl)
        vl = f16_dot_lanes(att, q, kt, (size_t)seq_len, (size_t)head_size, (size_t)n);
}

void sb_f16_mix_xt(float *out, const float *att, const uint16_t *v, int head_size, int stride,
                   int n) {
    for (size_t vl; head_size > 0; head_size -= (int)vl, out += vl, v += vl)
        vl = f16_dot_lanes(out, att, v, (size_t)stride, (size_t)n, (size_t)head_size);
}
#endif

// ----------------------------------------------------------------------------
// fast kernels (kernels.h): fastmath.h's operations, SB_FAST_LANES (16) lanes of e32m4

#define L SB_FAST_LANES

static float max_n_rvv(const float *x, int n) {
    size_t vl = __riscv_vsetvl_e32m8((size_t)n);
    vfloat32m8_t m = __riscv_vle32_v_f32m8(x, vl);
    int i = (int)vl;
    for (; n - i >= (int)vl; i += (int)vl) { // whole vectors: elementwise, reduced once
        m = __riscv_vfmax_vv_f32m8(m, __riscv_vle32_v_f32m8(x + i, vl), vl);
    }
    vfloat32m1_t r = __riscv_vfmv_s_f_f32m1(x[0], 1);
    r = __riscv_vfredmax_vs_f32m8_f32m1(m, r, vl);
    if (i < n) {
        size_t tail = __riscv_vsetvl_e32m8((size_t)(n - i));
        r = __riscv_vfredmax_vs_f32m8_f32m1(__riscv_vle32_v_f32m8(x + i, tail), r, tail);
    }
    return __riscv_vfmv_f_s_f32m1_f32(r);
}

/* A constant the compiler cannot hoist out of a loop. Hoisted, a splat of it that an
 * accumulating instruction overwrites gets copied each time with a whole-register move,
 * which GCC 14 emits as th.vmv4r.v, an instruction XTheadVector does not have; splatted
 * in the loop, it costs the same as that copy. */
static inline float fresh(float c) {
    __asm__ volatile("" : "+f"(c));
    return c;
}

/* sb_fexp on a vector, operation for operation */
static inline vfloat32m4_t fexp_v(vfloat32m4_t y, size_t vl) {
    vfloat32m4_t z = __riscv_vfadd_vf_f32m4(__riscv_vfmul_vf_f32m4(y, SB_FEXP_LOG2E, vl),
                                            SB_FEXP_SHIFT, vl);
    vfloat32m4_t n = __riscv_vfsub_vf_f32m4(z, SB_FEXP_SHIFT, vl);
    vfloat32m4_t r = __riscv_vfnmsac_vf_f32m4(y, SB_FEXP_LN2_HI, n, vl);
    r = __riscv_vfnmsac_vf_f32m4(r, SB_FEXP_LN2_LO, n, vl);
    vfloat32m4_t scale = __riscv_vreinterpret_v_u32m4_f32m4(
        __riscv_vsll_vx_u32m4(__riscv_vreinterpret_v_f32m4_u32m4(z), 23, vl));
    vfloat32m4_t r2 = __riscv_vfmul_vv_f32m4(r, r, vl);
    vfloat32m4_t lo = __riscv_vfmacc_vf_f32m4(__riscv_vfmv_v_f_f32m4(fresh(SB_FEXP_C2), vl),
                                              SB_FEXP_C3, r, vl);
    vfloat32m4_t hi = __riscv_vfmacc_vf_f32m4(__riscv_vfmv_v_f_f32m4(fresh(SB_FEXP_C4), vl),
                                              SB_FEXP_C5, r, vl);
    vfloat32m4_t poly = __riscv_vfmacc_vv_f32m4(r, __riscv_vfmacc_vv_f32m4(lo, hi, r2, vl), r2, vl);
    return __riscv_vfmacc_vv_f32m4(scale, poly, scale, vl);
}

static inline vfloat32m4_t exp_shifted(const float *x, float max, float scale, size_t vl) {
    vfloat32m4_t y = __riscv_vfsub_vf_f32m4(__riscv_vle32_v_f32m4(x, vl), max, vl);
    if (scale != 1.0f) y = __riscv_vfmul_vf_f32m4(y, scale, vl); // y * 1 is y
    return fexp_v(__riscv_vfmax_vf_f32m4(y, SB_FEXP_MIN, vl), vl);
}

static float exp_sum_rvv(float *y, const float *x, int n, float max, float scale) {
    size_t vl = __riscv_vsetvl_e32m4(L);
    vfloat32m4_t acc = __riscv_vfmv_v_f_f32m4(0.0f, vl);
    int i = 0;
    for (; i + L <= n; i += L) {
        vfloat32m4_t e = exp_shifted(x + i, max, scale, vl);
        __riscv_vse32_v_f32m4(y + i, e, vl);
        acc = __riscv_vfadd_vv_f32m4(acc, e, vl);
    }
    float s[L];
    __riscv_vse32_v_f32m4(s, acc, vl);
    if (i < n) { // the tail: exps in a shorter vector, added to lanes 0.. in order
        size_t tail = __riscv_vsetvl_e32m4((size_t)(n - i));
        __riscv_vse32_v_f32m4(y + i, exp_shifted(x + i, max, scale, tail), tail);
        for (int j = 0; i + j < n; j++) s[j] += y[i + j];
    }
    return sb_fast_sum_tree(s);
}

static int select_ge_rvv(int *idx, const float *x, int n, float threshold, int cap) {
    int k = 0;
    for (int i = 0; i < n;) {
        size_t vl = __riscv_vsetvl_e32m8((size_t)(n - i));
        vbool4_t ge = __riscv_vmfge_vf_f32m8_b4(__riscv_vle32_v_f32m8(x + i, vl), threshold, vl);
        // few vectors hold any, and few each: one vfirst per index, then it is cleared
        for (long f; (f = __riscv_vfirst_m_b4(ge, vl)) >= 0;) {
            idx[k++] = i + (int)f;
            if (k == cap) return k;
            ge = __riscv_vmxor_mm_b4(ge, __riscv_vmsof_m_b4(ge, vl), vl);
        }
        i += (int)vl;
    }
    return k;
}

/* 0 * x is 0 for a finite x and NaN for Inf or NaN: summed up, NaN stays. Whole vectors
 * and the tail apart (XTheadVector zeroes the lanes past vl of what it writes). */
static int finite_n_rvv(const float *x, int n) {
    size_t vl = __riscv_vsetvlmax_e32m8();
    vfloat32m8_t acc = __riscv_vfmv_v_f_f32m8(0.0f, vl);
    int i = 0;
    for (; n - i >= (int)vl; i += (int)vl) {
        acc = __riscv_vfmacc_vf_f32m8(acc, 0.0f, __riscv_vle32_v_f32m8(x + i, vl), vl);
    }
    vfloat32m1_t s = __riscv_vfmv_s_f_f32m1(0.0f, 1);
    s = __riscv_vfredusum_vs_f32m8_f32m1(acc, s, vl);
    if (i < n) {
        size_t tail = __riscv_vsetvl_e32m8((size_t)(n - i));
        vfloat32m8_t zeros = __riscv_vfmul_vf_f32m8(__riscv_vle32_v_f32m8(x + i, tail), 0.0f, tail);
        s = __riscv_vfredusum_vs_f32m8_f32m1(zeros, s, tail);
    }
    return __riscv_vfmv_f_s_f32m1_f32(s) == 0.0f;
}

static void swiglu_rvv(float *h, const float *g, int n) {
    for (size_t vl; n > 0; n -= (int)vl, h += vl, g += vl) {
        vl = __riscv_vsetvl_e32m4((size_t)n);
        vfloat32m4_t hv = __riscv_vle32_v_f32m4(h, vl);
        vfloat32m4_t y = __riscv_vfneg_v_f32m4(hv, vl);
        y = __riscv_vfmin_vf_f32m4(__riscv_vfmax_vf_f32m4(y, SB_FEXP_MIN, vl), SB_SILU_MAX, vl);
        __asm__ volatile("" : "+vr"(y)); // else GCC 14 copies y with th.vmv4r.v (see fresh)
        vfloat32m4_t d = __riscv_vfadd_vf_f32m4(fexp_v(y, vl), 1.0f, vl);
        vfloat32m4_t r = __riscv_vreinterpret_v_u32m4_f32m4(__riscv_vrsub_vx_u32m4(
            __riscv_vreinterpret_v_f32m4_u32m4(d), SB_FRCP_MAGIC, vl));
        for (int k = 0; k < 3; k++) { // Newton: r += r (1 - d r)
            vfloat32m4_t one = __riscv_vfmv_v_f_f32m4(fresh(1.0f), vl);
            r = __riscv_vfmacc_vv_f32m4(r, r, __riscv_vfnmsac_vv_f32m4(one, d, r, vl), vl);
        }
        hv = __riscv_vfmul_vv_f32m4(__riscv_vfmul_vv_f32m4(hv, r, vl),
                                    __riscv_vle32_v_f32m4(g, vl), vl);
        __riscv_vse32_v_f32m4(h, hv, vl);
    }
}

const sb_kernel_set sb_kernels_rvv = {
    .name = "rvv",
    .f32_rows = ROWS,
    .matvec_f32 = matvec_f32_rvv,
    .attn_scores_f32 = attn_scores_f32_rvv,
    .attn_mix_f32 = attn_mix_f32_rvv,
    .expf_n = sb_expf_glibc,
    .max_n = max_n_rvv,
    .exp_sum = exp_sum_rvv,
    .select_ge = select_ge_rvv,
    .swiglu = swiglu_rvv,
    .finite_n = finite_n_rvv,
};
#endif
