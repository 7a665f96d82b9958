/* expf_x86.c: expf of many floats at once, bit-identical to the C library's expf.
 *
 * Softmax over the 32000 logits and the SiLU of the feed-forward layers call expf some
 * 40000 times per token; one call at a time that is 6-8% of a token on x86. The reference
 * computes each one with the C library, so a faster exp must return exactly its results.
 *
 * It follows glibc's algorithm (expf.h) 4 lanes at a time. native/tests/kernels_test.c
 * compares it with the C library over every float; because another C library (or glibc
 * without FMA) may round differently in rare cases, a self-check on inputs where such
 * versions are known to differ runs first, and the vector path is used only when it
 * passes.
 *
 * Inputs with |x| >= 88 (overflow, underflow to zero, infinities and NaN) go to the C
 * library one by one, as do the last n % 8 elements.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "expf.h"
#include "kernels.h"

#define N SB_EXPF_N

/* The table as the exponent trick wants it: bits of 2^(i/N) minus i << (52 - 5), so that
 * adding k << 47 puts k / N (integer part) into the exponent. */
static int64_t table_bits[N];

/* Four lanes; x must have |x| < 88. */
__attribute__((target("avx2,fma")))
static __m128 exp4(__m128 x) {
    const __m256d inv_ln2_n = _mm256_set1_pd(SB_EXPF_INV_LN2_N);
    const __m256d shift = _mm256_set1_pd(SB_EXPF_SHIFT);
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(inv_ln2_n, xd, shift);
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    __m256d r = _mm256_fmsub_pd(inv_ln2_n, xd, kd);
    __m256i t = _mm256_i64gather_epi64((const long long *)table_bits,
                                       _mm256_and_si256(ki, _mm256_set1_epi64x(N - 1)), 8);
    __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64(ki, 47)));
    __m256d z = _mm256_fmadd_pd(_mm256_set1_pd(SB_EXPF_C0), r, _mm256_set1_pd(SB_EXPF_C1));
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(_mm256_set1_pd(SB_EXPF_C2), r, _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(z, r2, y);
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, s));
}

__attribute__((target("avx2,fma")))
static void expf_vector(float *y, const float *x, int n) {
    const __m256i limit = _mm256_set1_epi32(0x42b00000); // |x| >= 88.0 (or NaN) by its bits
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256i big = _mm256_cmpgt_epi32(_mm256_and_si256(_mm256_castps_si256(v), abs_mask),
                                         _mm256_sub_epi32(limit, _mm256_set1_epi32(1)));
        if (!_mm256_testz_si256(big, big)) {
            sb_expf_libm(y + i, x + i, 8);
            continue;
        }
        __m128 lo = exp4(_mm256_castps256_ps128(v)), hi = exp4(_mm256_extractf128_ps(v, 1));
        _mm256_storeu_ps(y + i, _mm256_set_m128(hi, lo));
    }
    sb_expf_libm(y + i, x + i, n - i);
}

/* Inputs where implementations of expf are known to disagree: where glibc's fused and
 * unfused builds differ, where glibc is not correctly rounded, and plain values. */
static const float probes[] = {
    0x1.04845ep+5f, -0x1.f8cbb2p+5f, 0x1.fefe02p-16f, 0x1.5b3c52p-14f, 0x1.cd3982p-14f,
    0x1.625856p-13f, -0x1.4f5b06p+2f, -0x1.e20d9ap+2f, 0.0f, -0.0f, 1.0f, -1.0f, 0.5f,
    -87.9f, 87.9f, -10.25f, 3.75f, -0x1.fffffep-1f, 0x1p-149f,
};

static int usable;
static pthread_once_t checked = PTHREAD_ONCE_INIT;

static void self_check(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
    for (int i = 0; i < N; i++) {
        int64_t bits;
        memcpy(&bits, &sb_exp2_table[i], sizeof bits);
        table_bits[i] = bits - ((int64_t)i << 47);
    }
    enum { COUNT = sizeof(probes) / sizeof(probes[0]), SWEEP = 4096 };
    float in[COUNT + SWEEP], got[COUNT + SWEEP];
    memcpy(in, probes, sizeof(probes));
    for (int i = 0; i < SWEEP; i++) in[COUNT + i] = -87.5f + 175.0f * (float)i / SWEEP;
    expf_vector(got, in, COUNT + SWEEP);
    for (int i = 0; i < COUNT + SWEEP; i++) {
        float want = expf(in[i]);
        if (memcmp(&want, &got[i], sizeof want) != 0) return;
    }
    usable = 1;
}

int sb_expf_vector_usable(void) {
    pthread_once(&checked, self_check);
    return usable;
}

void sb_expf_x86(float *y, const float *x, int n) {
    if (sb_expf_vector_usable()) {
        expf_vector(y, x, n);
    } else {
        sb_expf_libm(y, x, n);
    }
}
#endif
