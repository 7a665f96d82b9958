/* kernels_x86.c: AVX2 kernels, chosen at run time so one build runs on any x86-64.
 *
 * Only "avx2" is enabled for the exact kernels, not "fma": a fused multiply-add rounds
 * once where the reference rounds twice, and would change the logits' last bits. The fast
 * kernels (fastmath.h) fuse where the portable ones call fmaf, so they need FMA.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "fastmath.h"
#include "kernels.h"

#define ROWS 32 /* 4 ymm or 2 zmm registers of rows */

/* Both matvec kernels take one block of 32 rows at a time, so that the weights are read
 * as a single sequential stream: with two or four blocks in flight (more independent
 * sums), the reads alternate between pages 36 kB apart and DRAM delivers 10-15% less
 * (`storybot bench` on an EPYC). The add latency this leaves exposed is hidden behind
 * memory anyway. */

/* Copies a finished block to out; the last block may hold padding rows that have no
 * place there. */
static void store_block(float *out, const float *acc, int rows_left) {
    memcpy(out, acc, sizeof(float) * (size_t)(rows_left < ROWS ? rows_left : ROWS));
}

int sb_cpu_has_avx2(void) { // every AVX2 CPU made has FMA, which the fast kernels use
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

__attribute__((target("avx2")))
static void matvec_f32_avx2(float *out, const float *x, const float *w, int n, int d) {
    for (int b = 0; b < d; b += ROWS) {
        const float *p = w + (size_t)b * n;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int j = 0; j < n; j++, p += ROWS) {
            __m256 xj = _mm256_broadcast_ss(x + j);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_load_ps(p), xj));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_load_ps(p + 8), xj));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_load_ps(p + 16), xj));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_load_ps(p + 24), xj));
        }
        float acc[ROWS];
        _mm256_storeu_ps(acc, a0);
        _mm256_storeu_ps(acc + 8, a1);
        _mm256_storeu_ps(acc + 16, a2);
        _mm256_storeu_ps(acc + 24, a3);
        store_block(out + b, acc, d - b);
    }
}

/* Lanes i < n of a vector of 8: a mask for maskload. */
__attribute__((target("avx2")))
static __m256i lanes8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* 32 positions at a time (4 independent sums), then 8, then one. */
__attribute__((target("avx2")))
static void attn_scores_f32_avx2(float *att, const float *q, const float *kt, int head_size,
                                 int seq_len, int n) {
    int t = 0;
    for (; t + 32 <= n; t += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < head_size; i++) {
            const float *k = kt + (size_t)i * seq_len + t;
            __m256 qi = _mm256_set1_ps(q[i]);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(qi, _mm256_loadu_ps(k)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(qi, _mm256_loadu_ps(k + 8)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(qi, _mm256_loadu_ps(k + 16)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(qi, _mm256_loadu_ps(k + 24)));
        }
        _mm256_storeu_ps(att + t, a0);
        _mm256_storeu_ps(att + t + 8, a1);
        _mm256_storeu_ps(att + t + 16, a2);
        _mm256_storeu_ps(att + t + 24, a3);
    }
    for (; t < n; t += 8) {
        __m256i m = lanes8(n - t);
        __m256 a = _mm256_setzero_ps();
        for (int i = 0; i < head_size; i++) {
            __m256 k = _mm256_maskload_ps(kt + (size_t)i * seq_len + t, m);
            a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_set1_ps(q[i]), k));
        }
        _mm256_maskstore_ps(att + t, m, a);
    }
}

/* 32 columns of out at a time, in registers across all positions. */
__attribute__((target("avx2")))
static void attn_mix_f32_avx2(float *out, const float *att, const float *v, int head_size,
                              int stride, int n) {
    for (int i = 0; i < head_size; i += 32) {
        int left = head_size - i;
        __m256i m0 = lanes8(left), m1 = lanes8(left - 8), m2 = lanes8(left - 16);
        __m256i m3 = lanes8(left - 24);
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int t = 0; t < n; t++) {
            const float *vt = v + (size_t)t * stride + i;
            __m256 at = _mm256_set1_ps(att[t]);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(at, _mm256_maskload_ps(vt, m0)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(at, _mm256_maskload_ps(vt + 8, m1)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(at, _mm256_maskload_ps(vt + 16, m2)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(at, _mm256_maskload_ps(vt + 24, m3)));
        }
        _mm256_maskstore_ps(out + i, m0, a0);
        _mm256_maskstore_ps(out + i + 8, m1, a1);
        _mm256_maskstore_ps(out + i + 16, m2, a2);
        _mm256_maskstore_ps(out + i + 24, m3, a3);
    }
}

int sb_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

__attribute__((target("avx512f")))
static void matvec_f32_avx512(float *out, const float *x, const float *w, int n, int d) {
    for (int b = 0; b < d; b += ROWS) {
        const float *p = w + (size_t)b * n;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        for (int j = 0; j < n; j++, p += ROWS) {
            __m512 xj = _mm512_set1_ps(x[j]);
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_load_ps(p), xj));
            a1 = _mm512_add_ps(a1, _mm512_mul_ps(_mm512_load_ps(p + 16), xj));
        }
        float acc[ROWS];
        _mm512_storeu_ps(acc, a0);
        _mm512_storeu_ps(acc + 16, a1);
        store_block(out + b, acc, d - b);
    }
}

/* Lanes i < n of a vector of 16. */
static __mmask16 lanes16(int n) {
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

__attribute__((target("avx512f")))
static void attn_scores_f32_avx512(float *att, const float *q, const float *kt, int head_size,
                                   int seq_len, int n) {
    int t = 0;
    for (; t + 64 <= n; t += 64) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < head_size; i++) {
            const float *k = kt + (size_t)i * seq_len + t;
            __m512 qi = _mm512_set1_ps(q[i]);
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(qi, _mm512_loadu_ps(k)));
            a1 = _mm512_add_ps(a1, _mm512_mul_ps(qi, _mm512_loadu_ps(k + 16)));
            a2 = _mm512_add_ps(a2, _mm512_mul_ps(qi, _mm512_loadu_ps(k + 32)));
            a3 = _mm512_add_ps(a3, _mm512_mul_ps(qi, _mm512_loadu_ps(k + 48)));
        }
        _mm512_storeu_ps(att + t, a0);
        _mm512_storeu_ps(att + t + 16, a1);
        _mm512_storeu_ps(att + t + 32, a2);
        _mm512_storeu_ps(att + t + 48, a3);
    }
    for (; t < n; t += 16) {
        __mmask16 m = lanes16(n - t);
        __m512 a = _mm512_setzero_ps();
        for (int i = 0; i < head_size; i++) {
            __m512 k = _mm512_maskz_loadu_ps(m, kt + (size_t)i * seq_len + t);
            a = _mm512_add_ps(a, _mm512_mul_ps(_mm512_set1_ps(q[i]), k));
        }
        _mm512_mask_storeu_ps(att + t, m, a);
    }
}

__attribute__((target("avx512f")))
static void attn_mix_f32_avx512(float *out, const float *att, const float *v, int head_size,
                                int stride, int n) {
    for (int i = 0; i < head_size; i += 64) {
        int left = head_size - i;
        __mmask16 m0 = lanes16(left), m1 = lanes16(left - 16), m2 = lanes16(left - 32);
        __mmask16 m3 = lanes16(left - 48);
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int t = 0; t < n; t++) {
            const float *vt = v + (size_t)t * stride + i;
            __m512 at = _mm512_set1_ps(att[t]);
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(at, _mm512_maskz_loadu_ps(m0, vt)));
            a1 = _mm512_add_ps(a1, _mm512_mul_ps(at, _mm512_maskz_loadu_ps(m1, vt + 16)));
            a2 = _mm512_add_ps(a2, _mm512_mul_ps(at, _mm512_maskz_loadu_ps(m2, vt + 32)));
            a3 = _mm512_add_ps(a3, _mm512_mul_ps(at, _mm512_maskz_loadu_ps(m3, vt + 48)));
        }
        _mm512_mask_storeu_ps(out + i, m0, a0);
        _mm512_mask_storeu_ps(out + i + 16, m1, a1);
        _mm512_mask_storeu_ps(out + i + 32, m2, a2);
        _mm512_mask_storeu_ps(out + i + 48, m3, a3);
    }
}

// ----------------------------------------------------------------------------
// fast kernels (kernels.h): fastmath.h's operations, 16 lanes (two ymm or one zmm)

/* sb_fexp in 8 lanes, operation for operation */
__attribute__((target("avx2,fma")))
static __m256 fexp8(__m256 y) {
    const __m256 shift = _mm256_set1_ps(SB_FEXP_SHIFT);
    __m256 z = _mm256_add_ps(_mm256_mul_ps(y, _mm256_set1_ps(SB_FEXP_LOG2E)), shift);
    __m256 n = _mm256_sub_ps(z, shift);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(SB_FEXP_LN2_HI), y);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(SB_FEXP_LN2_LO), r);
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 lo = _mm256_fmadd_ps(_mm256_set1_ps(SB_FEXP_C3), r, _mm256_set1_ps(SB_FEXP_C2));
    __m256 hi = _mm256_fmadd_ps(_mm256_set1_ps(SB_FEXP_C5), r, _mm256_set1_ps(SB_FEXP_C4));
    __m256 poly = _mm256_fmadd_ps(_mm256_fmadd_ps(hi, r2, lo), r2, r);
    __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(z), 23));
    return _mm256_fmadd_ps(poly, scale, scale);
}

/* exp((x - max) * scale) for 8 floats; max_ps(y, c) returns c where y is NaN, as fmaxf */
__attribute__((target("avx2,fma")))
static __m256 exp_shifted8(__m256 x, float max, float scale) {
    __m256 y = _mm256_mul_ps(_mm256_sub_ps(x, _mm256_set1_ps(max)), _mm256_set1_ps(scale));
    return fexp8(_mm256_max_ps(y, _mm256_set1_ps(SB_FEXP_MIN)));
}

__attribute__((target("avx2,fma")))
static float max_n_avx2(const float *x, int n) {
    __m256 m = _mm256_set1_ps(x[0]);
    int i = 0;
    for (; i + 8 <= n; i += 8) m = _mm256_max_ps(_mm256_loadu_ps(x + i), m);
    float lanes[8], best = x[0];
    _mm256_storeu_ps(lanes, m);
    for (int j = 0; j < 8; j++) best = lanes[j] > best ? lanes[j] : best;
    for (; i < n; i++) best = x[i] > best ? x[i] : best;
    return best;
}

/* Lanes 0-7 of the 16 partial sums in a0, 8-15 in a1. */
__attribute__((target("avx2,fma")))
static float exp_sum_avx2(float *y, const float *x, int n, float max, float scale) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int i = 0;
    for (; i + SB_FAST_LANES <= n; i += SB_FAST_LANES) {
        __m256 e0 = exp_shifted8(_mm256_loadu_ps(x + i), max, scale);
        __m256 e1 = exp_shifted8(_mm256_loadu_ps(x + i + 8), max, scale);
        _mm256_storeu_ps(y + i, e0);
        _mm256_storeu_ps(y + i + 8, e1);
        a0 = _mm256_add_ps(a0, e0);
        a1 = _mm256_add_ps(a1, e1);
    }
    float s[SB_FAST_LANES];
    _mm256_storeu_ps(s, a0);
    _mm256_storeu_ps(s + 8, a1);
    for (int j = 0; i + j < n; j += 8) { // the tail, 8 at a time through a buffer
        float in[8] = {0}, out[8];
        int k = n - i - j < 8 ? n - i - j : 8;
        memcpy(in, x + i + j, sizeof(float) * (size_t)k);
        _mm256_storeu_ps(out, exp_shifted8(_mm256_loadu_ps(in), max, scale));
        memcpy(y + i + j, out, sizeof(float) * (size_t)k);
        for (int l = 0; l < k; l++) s[j + l] += out[l];
    }
    return sb_fast_sum_tree(s);
}

__attribute__((target("avx2,fma")))
static int select_ge_avx2(int *idx, const float *x, int n, float threshold, int cap) {
    __m256 t = _mm256_set1_ps(threshold);
    int k = 0, i = 0;
    for (; i + 8 <= n && k < cap; i += 8) {
        unsigned bits = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), t,
                                                                   _CMP_GE_OQ));
        for (; bits && k < cap; bits &= bits - 1) idx[k++] = i + __builtin_ctz(bits);
    }
    for (; i < n && k < cap; i++) {
        if (x[i] >= threshold) idx[k++] = i;
    }
    return k;
}

/* 0 * x is 0 for a finite x and NaN for Inf or NaN: summed up, NaN stays. */
__attribute__((target("avx2,fma")))
static int finite_n_avx2(const float *x, int n) {
    __m256 acc = _mm256_setzero_ps(), zero = acc;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(x + i), zero));
    }
    float s[8];
    _mm256_storeu_ps(s, acc);
    for (int j = 0; j < 8; j++) {
        if (s[j] != 0.0f) return 0;
    }
    for (; i < n; i++) {
        if (!isfinite(x[i])) return 0;
    }
    return 1;
}

/* sb_fswiglu in 8 lanes */
__attribute__((target("avx2,fma")))
static __m256 swiglu8(__m256 h, __m256 g) {
    __m256 y = _mm256_xor_ps(h, _mm256_set1_ps(-0.0f));
    y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(SB_FEXP_MIN)), _mm256_set1_ps(SB_SILU_MAX));
    __m256 d = _mm256_add_ps(fexp8(y), _mm256_set1_ps(1.0f));
    __m256 r = _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_set1_epi32((int)SB_FRCP_MAGIC),
                                                    _mm256_castps_si256(d)));
    for (int k = 0; k < 3; k++) {
        r = _mm256_fmadd_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(1.0f)), r);
    }
    return _mm256_mul_ps(_mm256_mul_ps(h, r), g);
}

__attribute__((target("avx2,fma")))
static void swiglu_avx2(float *h, const float *g, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(h + i, swiglu8(_mm256_loadu_ps(h + i), _mm256_loadu_ps(g + i)));
    }
    if (i < n) {
        float hb[8] = {0}, gb[8] = {0};
        memcpy(hb, h + i, sizeof(float) * (size_t)(n - i));
        memcpy(gb, g + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(hb, swiglu8(_mm256_loadu_ps(hb), _mm256_loadu_ps(gb)));
        memcpy(h + i, hb, sizeof(float) * (size_t)(n - i));
    }
}

const sb_kernel_set sb_kernels_avx512 = {
    .name = "avx512",
    .f32_rows = ROWS,
    .matvec_f32 = matvec_f32_avx512,
    .attn_scores_f32 = attn_scores_f32_avx512,
    .attn_mix_f32 = attn_mix_f32_avx512,
    .expf_n = sb_expf_x86,
    // 16 lanes in two ymm registers are the same order as one zmm: AVX2's serve both
    .max_n = max_n_avx2,
    .exp_sum = exp_sum_avx2,
    .select_ge = select_ge_avx2,
    .swiglu = swiglu_avx2,
    .finite_n = finite_n_avx2,
};

const sb_kernel_set sb_kernels_avx2 = {
    .name = "avx2",
    .f32_rows = ROWS,
    .matvec_f32 = matvec_f32_avx2,
    .attn_scores_f32 = attn_scores_f32_avx2,
    .attn_mix_f32 = attn_mix_f32_avx2,
    .expf_n = sb_expf_x86,
    .max_n = max_n_avx2,
    .exp_sum = exp_sum_avx2,
    .select_ge = select_ge_avx2,
    .swiglu = swiglu_avx2,
    .finite_n = finite_n_avx2,
};
#endif
