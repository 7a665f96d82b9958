/* kernels.h: the hot loops, one portable set and tuned sets per instruction set.
 *
 * Every fp32 kernel keeps the reference's arithmetic exactly: each output row is summed
 * from j = 0 upwards, one rounded product and one rounded sum per term, as run.c compiled
 * without fused multiply-add does. Tuned kernels gain their speed by working on many rows
 * at once (one row per vector lane), never by reordering a row's sum, so their results
 * are bit-identical to the portable ones.
 */
#ifndef STORYBOT_KERNELS_H
#define STORYBOT_KERNELS_H

typedef struct {
    const char *name;
    /* Rows interleaved per block in packed fp32 matrices: element (r, j) of a matrix
     * with n columns is at block (r / f32_rows), offset j * f32_rows + r % f32_rows.
     * 1 means plain row-major, used in place from the mapped file. */
    int f32_rows;
    /* out (d,) = W (d, n) @ x (n,), W packed as above (any d). */
    void (*matvec_f32)(float *out, const float *x, const float *w, int n, int d);
    /* Attention of one head, in the reference's order: att[t] (n,) = sum over i of
     * q[i] * kt[i * seq_len + t] (the keys stored transposed), from i = 0 upwards;
     * out[i] (head_size,) = sum over t of att[t] * v[t * stride + i], from t = 0 upwards.
     * Vector lanes run across t (scores) or i (mix), never along a sum. */
    void (*attn_scores_f32)(float *att, const float *q, const float *kt, int head_size,
                            int seq_len, int n);
    void (*attn_mix_f32)(float *out, const float *att, const float *v, int head_size,
                         int stride, int n);
    /* y[i] = expf(x[i]) (n,), bit for bit glibc's: the C library's on x86, the copy of
     * glibc's algorithm on RISC-V, whatever its C library (y may be x). */
    void (*expf_n)(float *y, const float *x, int n);

    /* The fast kernels, for models that promise no exactness (sb_exact, internal.h):
     * vectors where the exact path is scalar, fastmath.h's exp and reciprocal instead of
     * glibc's expf and a division. Every set returns the same bits: per element the same
     * operations, and sums in one order, element i into partial sum i % SB_FAST_LANES,
     * the partial sums then added as a fixed tree (sb_fast_sum_tree). */
    float (*max_n)(const float *x, int n); // the largest of x (n >= 1), NaN aside
    /* y[i] = exp((x[i] - max) * scale) (n,) for max >= every x[i], scale > 0; returns
     * their sum (y may be x). */
    float (*exp_sum)(float *y, const float *x, int n, float max, float scale);
    /* idx gets, in ascending order, each i with x[i] >= threshold, the first cap of them
     * (cap >= 1); returns how many. */
    int (*select_ge)(int *idx, const float *x, int n, float threshold, int cap);
    /* h[i] = h[i] * sigmoid(h[i]) * g[i] (n,): the SwiGLU gate, sb_fswiglu. */
    void (*swiglu)(float *h, const float *g, int n);
    /* 1 if every x[i] (n,) is finite, else 0: exact in every set, so every model uses it. */
    int (*finite_n)(const float *x, int n);
} sb_kernel_set;

#define SB_FAST_LANES 16

/* Adds the partial sums s (SB_FAST_LANES,) in the fast kernels' order (s is clobbered). */
static inline float sb_fast_sum_tree(float *s) {
    for (int w = SB_FAST_LANES / 2; w > 0; w /= 2) {
        for (int j = 0; j < w; j++) s[j] += s[j + w];
    }
    return s[0];
}

/* The fastest set this CPU runs (generic_only = 1 forces the portable set). */
const sb_kernel_set *sb_kernels_pick(int generic_only);
/* Every set this CPU runs, the portable one first, in ascending speed; returns how many
 * (at most cap). */
int sb_kernels_all(const sb_kernel_set **sets, int cap);

/* Copies src (rows, cols) row-major into dst in the interleaved layout; dst holds
 * round_up(rows, block) * cols floats and padding rows are zero. */
void sb_pack_rows_f32(float *dst, const float *src, int rows, int cols, int block);

extern const sb_kernel_set sb_kernels_generic;
#if defined(__x86_64__)
extern const sb_kernel_set sb_kernels_avx2, sb_kernels_avx512;
int sb_cpu_has_avx2(void);
int sb_cpu_has_avx512(void);
/* expf_n with AVX2 and FMA where this CPU and C library allow it (expf_x86.c). */
void sb_expf_x86(float *y, const float *x, int n);
int sb_expf_vector_usable(void);
#endif
void sb_expf_libm(float *y, const float *x, int n); // one call at a time
/* glibc's expf without calling a C library (expf.c): where glibc fuses its multiply-adds
 * (riscv64, x86-64 with FMA) the same results on every float. */
void sb_expf_glibc(float *y, const float *x, int n);
#if defined(__riscv_vector) || defined(__riscv_xtheadvector)
extern const sb_kernel_set sb_kernels_rvv;
int sb_rvv_usable(void); // the vector unit has the 32 fp32 lanes the kernels assume
#endif

#endif
