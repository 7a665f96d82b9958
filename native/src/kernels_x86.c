/* kernels_x86.c: AVX2 kernels, chosen at run time so one build runs on any x86-64.
 *
 * Only "avx2" is enabled for these functions, not "fma": a fused multiply-add rounds
 * once where the reference rounds twice, and would change the logits' last bits.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define ROWS 32 /* 4 ymm registers of 8 rows each */

int sb_cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}

/* Two blocks of 32 rows at a time: 8 independent sums hide the 4-cycle add latency. */
__attribute__((target("avx2")))
static void matvec_f32_avx2(float *out, const float *x, const float *w, int n, int d) {
    int b = 0;
    for (; b + 2 * ROWS <= d; b += 2 * ROWS) {
        const float *w0 = w + (size_t)b * n;
        const float *w1 = w0 + (size_t)ROWS * n;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();
        __m256 c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
        for (int j = 0; j < n; j++) {
            __m256 xj = _mm256_broadcast_ss(x + j);
            const float *p = w0 + (size_t)j * ROWS;
            const float *q = w1 + (size_t)j * ROWS;
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_load_ps(p), xj));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_load_ps(p + 8), xj));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_load_ps(p + 16), xj));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_load_ps(p + 24), xj));
            c0 = _mm256_add_ps(c0, _mm256_mul_ps(_mm256_load_ps(q), xj));
            c1 = _mm256_add_ps(c1, _mm256_mul_ps(_mm256_load_ps(q + 8), xj));
            c2 = _mm256_add_ps(c2, _mm256_mul_ps(_mm256_load_ps(q + 16), xj));
            c3 = _mm256_add_ps(c3, _mm256_mul_ps(_mm256_load_ps(q + 24), xj));
        }
        _mm256_storeu_ps(out + b, a0);
        _mm256_storeu_ps(out + b + 8, a1);
        _mm256_storeu_ps(out + b + 16, a2);
        _mm256_storeu_ps(out + b + 24, a3);
        _mm256_storeu_ps(out + b + 32, c0);
        _mm256_storeu_ps(out + b + 40, c1);
        _mm256_storeu_ps(out + b + 48, c2);
        _mm256_storeu_ps(out + b + 56, c3);
    }
    for (; b < d; b += ROWS) {
        const float *w0 = w + (size_t)b * n;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int j = 0; j < n; j++) {
            __m256 xj = _mm256_broadcast_ss(x + j);
            const float *p = w0 + (size_t)j * ROWS;
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_load_ps(p), xj));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_load_ps(p + 8), xj));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_load_ps(p + 16), xj));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_load_ps(p + 24), xj));
        }
        // the last block may hold padding rows that have no place in out
        float tmp[ROWS];
        _mm256_storeu_ps(tmp, a0);
        _mm256_storeu_ps(tmp + 8, a1);
        _mm256_storeu_ps(tmp + 16, a2);
        _mm256_storeu_ps(tmp + 24, a3);
        memcpy(out + b, tmp, sizeof(float) * (size_t)(d - b < ROWS ? d - b : ROWS));
    }
}

__attribute__((target("avx2")))
static void axpy_f32_avx2(float *y, float a, const float *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 p = _mm256_mul_ps(av, _mm256_loadu_ps(x + i));
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), p));
    }
    for (; i < n; i++) y[i] += a * x[i];
}

int sb_cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* Four blocks of 32 rows at a time, two zmm registers each: 8 independent sums. */
__attribute__((target("avx512f")))
static void matvec_f32_avx512(float *out, const float *x, const float *w, int n, int d) {
    size_t stride = (size_t)ROWS * n; // floats from one block to the next
    int b = 0;
    for (; b + 4 * ROWS <= d; b += 4 * ROWS) {
        const float *p = w + (size_t)b * n;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        __m512 a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int j = 0; j < n; j++, p += ROWS) {
            __m512 xj = _mm512_set1_ps(x[j]);
            a0 = _mm512_add_ps(a0, _mm512_mul_ps(_mm512_load_ps(p), xj));
            a1 = _mm512_add_ps(a1, _mm512_mul_ps(_mm512_load_ps(p + 16), xj));
            a2 = _mm512_add_ps(a2, _mm512_mul_ps(_mm512_load_ps(p + stride), xj));
            a3 = _mm512_add_ps(a3, _mm512_mul_ps(_mm512_load_ps(p + stride + 16), xj));
            a4 = _mm512_add_ps(a4, _mm512_mul_ps(_mm512_load_ps(p + 2 * stride), xj));
            a5 = _mm512_add_ps(a5, _mm512_mul_ps(_mm512_load_ps(p + 2 * stride + 16), xj));
            a6 = _mm512_add_ps(a6, _mm512_mul_ps(_mm512_load_ps(p + 3 * stride), xj));
            a7 = _mm512_add_ps(a7, _mm512_mul_ps(_mm512_load_ps(p + 3 * stride + 16), xj));
        }
        _mm512_storeu_ps(out + b, a0);
        _mm512_storeu_ps(out + b + 16, a1);
        _mm512_storeu_ps(out + b + 32, a2);
        _mm512_storeu_ps(out + b + 48, a3);
        _mm512_storeu_ps(out + b + 64, a4);
        _mm512_storeu_ps(out + b + 80, a5);
        _mm512_storeu_ps(out + b + 96, a6);
        _mm512_storeu_ps(out + b + 112, a7);
    }
    if (b < d) matvec_f32_avx2(out + b, x, w + (size_t)b * n, n, d - b);
}

const sb_kernel_set sb_kernels_avx512 = {
    .name = "avx512",
    .f32_rows = ROWS,
    .matvec_f32 = matvec_f32_avx512,
    .axpy_f32 = axpy_f32_avx2,
};

const sb_kernel_set sb_kernels_avx2 = {
    .name = "avx2",
    .f32_rows = ROWS,
    .matvec_f32 = matvec_f32_avx2,
    .axpy_f32 = axpy_f32_avx2,
};
#endif
