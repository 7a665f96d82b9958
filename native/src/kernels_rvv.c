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

/* out[lane] = sum over `count` steps of f[j] * half(h[lane + j * step]), j = 0.. */
static size_t f16_dot_lanes(float *out, const float *f, const uint16_t *h, size_t step,
                            size_t count, size_t lanes) {
    size_t vl;
    float fj;
    __asm__ volatile("th.vsetvli %[vl], %[lanes], e32, m8\n\t"
                     "th.vmv.v.i v24, 0\n\t"
                     "beqz %[count], 2f\n"
                     "1:\n\t"
                     "flw %[fj], 0(%[f])\n\t"
                     "th.vsetvli zero, %[vl], e16, m4\n\t"
                     "th.vle.v v0, (%[h])\n\t"
                     "th.vfwcvt.f.f.v v8, v0\n\t"
                     "th.vsetvli zero, %[vl], e32, m8\n\t"
                     "th.vfmul.vf v8, v8, %[fj]\n\t"
                     "th.vfadd.vv v24, v24, v8\n\t"
                     "addi %[f], %[f], 4\n\t"
                     "add %[h], %[h], %[step]\n\t"
                     "addi %[count], %[count], -1\n\t"
                     "bnez %[count], 1b\n"
                     "2:\n\t"
                     "th.vse.v v24, (%[out])\n\t"
                     : [vl] "=&r"(vl), [fj] "=&f"(fj), [f] "+r"(f), [h] "+r"(h),
                       [count] "+r"(count)
                     : [lanes] "r"(lanes), [step] "r"(step * sizeof(uint16_t)), [out] "r"(out)
                     : F16_CLOBBER);
    return vl;
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

const sb_kernel_set sb_kernels_rvv = {
    .name = "rvv",
    .f32_rows = ROWS,
    .matvec_f32 = matvec_f32_rvv,
    .attn_scores_f32 = attn_scores_f32_rvv,
    .attn_mix_f32 = attn_mix_f32_rvv,
    .expf_n = sb_expf_glibc,
};
#endif
