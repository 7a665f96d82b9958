/* kernels.c: the portable kernels, weight packing and the choice of kernel set. */
#include <math.h>
#include <string.h>

#include "fastmath.h"
#include "kernels.h"

static void matvec_f32_generic(float *out, const float *x, const float *w, int n, int d) {
    for (int i = 0; i < d; i++) {
        const float *row = w + (size_t)i * n;
        float val = 0.0f;
        for (int j = 0; j < n; j++) {
            val += row[j] * x[j];
        }
        out[i] = val;
    }
}

static void attn_scores_f32_generic(float *att, const float *q, const float *kt,
                                    int head_size, int seq_len, int n) {
    memset(att, 0, sizeof(float) * (size_t)n);
    for (int i = 0; i < head_size; i++) {
        const float *krow = kt + (size_t)i * seq_len;
        for (int t = 0; t < n; t++) att[t] += q[i] * krow[t];
    }
}

static void attn_mix_f32_generic(float *out, const float *att, const float *v, int head_size,
                                 int stride, int n) {
    memset(out, 0, sizeof(float) * (size_t)head_size);
    for (int t = 0; t < n; t++) {
        const float *vt = v + (size_t)t * stride;
        for (int i = 0; i < head_size; i++) out[i] += att[t] * vt[i];
    }
}

void sb_expf_libm(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] = expf(x[i]);
}

static float max_n_generic(const float *x, int n) {
    float m = x[0];
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

static float exp_sum_generic(float *y, const float *x, int n, float max, float scale) {
    float s[SB_FAST_LANES] = {0};
    for (int i = 0; i < n; i++) {
        y[i] = sb_fexp(fmaxf((x[i] - max) * scale, SB_FEXP_MIN));
        s[i % SB_FAST_LANES] += y[i];
    }
    return sb_fast_sum_tree(s);
}

static int select_ge_generic(int *idx, const float *x, int n, float threshold, int cap) {
    int k = 0;
    for (int i = 0; i < n && k < cap; i++) {
        if (x[i] >= threshold) idx[k++] = i;
    }
    return k;
}

static int finite_n_generic(const float *x, int n) {
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i])) return 0;
    }
    return 1;
}

static void swiglu_generic(float *h, const float *g, int n) {
    for (int i = 0; i < n; i++) h[i] = sb_fswiglu(h[i], g[i]);
}

const sb_kernel_set sb_kernels_generic = {
    .name = "generic",
    .f32_rows = 1,
    .matvec_f32 = matvec_f32_generic,
    .attn_scores_f32 = attn_scores_f32_generic,
    .attn_mix_f32 = attn_mix_f32_generic,
#if defined(__riscv)
    .expf_n = sb_expf_glibc, // the numbers of run.c on glibc, also on a musl board
#else
    .expf_n = sb_expf_libm,
#endif
    .max_n = max_n_generic,
    .exp_sum = exp_sum_generic,
    .select_ge = select_ge_generic,
    .swiglu = swiglu_generic,
    .finite_n = finite_n_generic,
};

void sb_pack_rows_f32(float *dst, const float *src, int rows, int cols, int block) {
    int padded = (rows + block - 1) / block * block;
    for (int b = 0; b < padded; b += block) {
        float *blk = dst + (size_t)b * cols;
        for (int r = 0; r < block; r++) {
            if (b + r >= rows) {
                for (int j = 0; j < cols; j++) blk[(size_t)j * block + r] = 0.0f;
                continue;
            }
            const float *row = src + (size_t)(b + r) * cols;
            for (int j = 0; j < cols; j++) blk[(size_t)j * block + r] = row[j];
        }
    }
}

int sb_kernels_all(const sb_kernel_set **sets, int cap) {
    int n = 0;
    if (n < cap) sets[n++] = &sb_kernels_generic;
#if defined(__x86_64__)
    if (n < cap && sb_cpu_has_avx2()) sets[n++] = &sb_kernels_avx2;
    if (n < cap && sb_cpu_has_avx512()) sets[n++] = &sb_kernels_avx512;
#endif
#if defined(__riscv_vector) || defined(__riscv_xtheadvector)
    if (n < cap && sb_rvv_usable()) sets[n++] = &sb_kernels_rvv;
#endif
    return n;
}

const sb_kernel_set *sb_kernels_pick(int generic_only) {
    const sb_kernel_set *sets[4];
    int n = sb_kernels_all(sets, 4);
    return generic_only ? sets[0] : sets[n - 1]; // ascending speed
}
