/* kernels_q.h: the quantized kernels (quant.c, kernels_q_x86.c, kernels_q_rvv.c).
 *
 * Quantized models need no exactness: activations are quantized to Q8_0 (int8, one
 * fp32 scale per SB_QK values) before each product, and the integer dot products are
 * exact, but the sets add the float partial sums in different orders, so their results
 * agree to rounding, not to the bit. quantize_q8 gives identical results in every set.
 * A separate set from sb_kernel_set (kernels.h): it is chosen on its own, so the fp32
 * kernels and these can change apart.
 */
#ifndef STORYBOT_KERNELS_Q_H
#define STORYBOT_KERNELS_Q_H

#include <stdint.h>

#define SB_QK 32 /* values per quantization group; also rows per weight block */

/* out (d,) = W (d, n) @ x, x given as Q8_0: xq (n,), xs (n / SB_QK,) and xsum, the sum
 * of xq per group. w and ws are the weights and their scales in the layout of the
 * matrix type (quant.c): fp16 scales for the blocks, fp32 for SB_Q8_ROWS; gs is the
 * weights' group size (SB_Q8_ROWS only). */
typedef void (*sb_qmatvec_fn)(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *ws, int n,
                              int d, int gs);

typedef struct {
    const char *name;
    int f16_vector; /* the f16 kernels below convert halves in vector instructions */
    /* x (n,) -> Q8_0: per group xs = max|x| / 127, xq = x * (127 / max|x|) rounded to
     * nearest even, xsum = sum of xq. n is a multiple of SB_QK. */
    void (*quantize_q8)(int8_t *xq, float *xs, int32_t *xsum, const float *x, int n);
    sb_qmatvec_fn matvec_q8_0;    // SB_Q8_0 blocks
    sb_qmatvec_fn matvec_q4_0;    // SB_Q4_0 blocks
    sb_qmatvec_fn matvec_q8_rows; // SB_Q8_ROWS (llama2.c ak42)
    sb_qmatvec_fn matvec_q5;      // SB_Q5 blocks (NULL: the portable kernel)
    sb_qmatvec_fn matvec_q6;      // SB_Q6 blocks (NULL: the portable kernel)
    /* SB_Q4_ROW: x quantized with one scale (every xs[g] equal); each row's integer sum
     * over all n columns, times its fp16 scale, times xs[0], in that order, so every set
     * gives the same bits (NULL: the portable kernel) */
    sb_qmatvec_fn matvec_q4_row;
    sb_qmatvec_fn matvec_q8_row; // SB_Q8_ROW, as SB_Q4_ROW (NULL: the portable kernel)
    /* fp16 KV cache: dst (n,) = src rounded to IEEE half */
    void (*f16_store)(uint16_t *dst, const float *src, int n);
    /* att[t] = sum_i q[i] * kt[i * seq_len + t] for t < n (keys transposed); here and in
     * f16_mix each product is fused into the sum from i (t) = 0 upwards, as fmaf does, so
     * every set gives the same bits */
    void (*f16_scores)(float *att, const float *q, const uint16_t *kt, int head_size,
                       int seq_len, int n);
    /* out[i] = sum_t att[t] * v[t * stride + i] for i < head_size, t < n */
    void (*f16_mix)(float *out, const float *att, const uint16_t *v, int head_size,
                    int stride, int n);
} sb_qkernel_set;

/* The fastest quantized set this CPU runs (generic_only = 1 forces the portable set). */
const sb_qkernel_set *sb_qkernels_pick(int generic_only);
/* Every set this CPU runs, slowest (the portable one) first; returns how many. */
int sb_qkernels_all(const sb_qkernel_set **sets, int cap);

/* IEEE half <-> float, rounding to nearest even (portable; for the fp16 KV cache). */
uint16_t sb_f32_to_f16(float f);
float sb_f16_to_f32(uint16_t h);
/* The portable SB_Q4_ROW and SB_Q8_ROW products, for sets without their own (and large n on the C906). */
void sb_matvec_q4_row_generic(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *ws, int n,
                              int d, int gs);
void sb_matvec_q8_row_generic(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *ws, int n,
                              int d, int gs);
/* The portable fp16 KV kernels, for sets without their own. */
void sb_f16_store_generic(uint16_t *dst, const float *src, int n);
void sb_f16_scores_generic(float *att, const float *q, const uint16_t *kt, int head_size,
                           int seq_len, int n);
void sb_f16_mix_generic(float *out, const float *att, const uint16_t *v, int head_size,
                        int stride, int n);

extern const sb_qkernel_set sb_qkernels_generic;
#if defined(__x86_64__)
/* NULL-terminated, in ascending speed; each entry with the CPU check it needs. */
typedef struct {
    const sb_qkernel_set *set;
    int (*supported)(void);
} sb_qkernel_choice;
extern const sb_qkernel_choice sb_qkernels_x86[];
#endif
#if defined(__riscv_vector) || defined(__riscv_xtheadvector)
extern const sb_qkernel_set sb_qkernels_rvv;
int sb_qrvv_usable(void); // 32 int8 lanes in LMUL 2 (VLEN >= 128)
#if defined(__riscv_xtheadvector)
/* The block products in assembly (kernels_q_xt.c). */
void sb_matvec_q8_0_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                       const void *w, const void *ws, int n, int d, int gs);
void sb_matvec_q4_0_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                       const void *w, const void *ws, int n, int d, int gs);
void sb_matvec_q5_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                     const void *w, const void *ws, int n, int d, int gs);
void sb_matvec_q6_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                     const void *w, const void *ws, int n, int d, int gs);
void sb_matvec_q4_row_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                         const void *w, const void *ws, int n, int d, int gs);
void sb_matvec_q8_row_xt(float *out, const int8_t *xq, const float *xs, const int32_t *xsum,
                         const void *w, const void *ws, int n, int d, int gs);
/* The fp16 KV kernels in XTheadVector's half conversions (kernels_rvv.c). */
void sb_f16_store_xt(uint16_t *dst, const float *src, int n);
void sb_f16_scores_xt(float *att, const float *q, const uint16_t *kt, int head_size,
                      int seq_len, int n);
void sb_f16_mix_xt(float *out, const float *att, const uint16_t *v, int head_size, int stride,
                   int n);
#endif
#endif

#endif
