/* expf_x86.c: expf of many floats at once, bit-identical to the C library's expf.
 *
 * Softmax over the 32000 logits and the SiLU of the feed-forward layers call expf some
 * 40000 times per token; one call at a time that is 6-8% of a token on x86. The reference
 * computes each one with the C library, so a faster exp must return exactly its results.
 *
 * glibc (2.28 and later) computes expf in double precision: with N = 32,
 *     exp(x) = 2^(k/N) * 2^(r/N),   k = round(x * N / ln 2),  r = x * N / ln 2 - k,
 * 2^(k/N) from a table of 2^(i/N) (i = k mod N) with k / N added to its exponent, and
 * 2^(r/N) from a degree-3 polynomial, rounded to float once at the end. On a CPU with FMA
 * it runs a build of that code in which the compiler fused four of the multiply-adds;
 * the code below performs the same operations in the same order, fused the same way, 4
 * lanes at a time. native/tests/kernels_test.c compares it with the C library over
 * every float; because another C library (or glibc without FMA) may round differently
 * in rare cases, a self-check on inputs where such versions are known to differ runs
 * first, and the vector path is used only when it passes.
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

#include "kernels.h"

#define N 32

// 2^(i/32), correctly rounded
static const double exp2_table[N] = {
    0x1.0000000000000p+0, 0x1.059b0d3158574p+0, 0x1.0b5586cf9890fp+0,
    0x1.11301d0125b51p+0, 0x1.172b83c7d517bp+0, 0x1.1d4873168b9aap+0,
    0x1.2387a6e756238p+0, 0x1.29e9df51fdee1p+0, 0x1.306fe0a31b715p+0,
    0x1.371a7373aa9cbp+0, 0x1.3dea64c123422p+0, 0x1.44e086061892dp+0,
    0x1.4bfdad5362a27p+0, 0x1.5342b569d4f82p+0, 0x1.5ab07dd485429p+0,
    0x1.6247eb03a5585p+0, 0x1.6a09e667f3bcdp+0, 0x1.71f75e8ec5f74p+0,
    0x1.7a11473eb0187p+0, 0x1.82589994cce13p+0, 0x1.8ace5422aa0dbp+0,
    0x1.93737b0cdc5e5p+0, 0x1.9c49182a3f090p+0, 0x1.a5503b23e255dp+0,
    0x1.ae89f995ad3adp+0, 0x1.b7f76f2fb5e47p+0, 0x1.c199bdd85529cp+0,
    0x1.cb720dcef9069p+0, 0x1.d5818dcfba487p+0, 0x1.dfc97337b9b5fp+0,
    0x1.ea4afa2a490dap+0, 0x1.f50765b6e4540p+0,
};
/* The table as the exponent trick wants it: bits of 2^(i/N) minus i << (52 - 5), so that
 * adding k << 47 puts k / N (integer part) into the exponent. */
static int64_t table_bits[N];

static const double INV_LN2_N = 0x1.71547652b82fep+5; // N / ln 2
static const double SHIFT = 0x1.8p+52;                // rounds to an integer when added
// the polynomial for 2^(r/N), coefficients of r^3, r^2, r
static const double C0 = 0x1.c6af84b912394p-20, C1 = 0x1.ebfce50fac4f3p-13;
static const double C2 = 0x1.62e42ff0c52d6p-6;

/* Four lanes; x must have |x| < 88. */
__attribute__((target("avx2,fma")))
static __m128 exp4(__m128 x) {
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(_mm256_set1_pd(INV_LN2_N), xd, _mm256_set1_pd(SHIFT));
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, _mm256_set1_pd(SHIFT));
    __m256d r = _mm256_fmsub_pd(_mm256_set1_pd(INV_LN2_N), xd, kd);
    __m256i t = _mm256_i64gather_epi64((const long long *)table_bits,
                                       _mm256_and_si256(ki, _mm256_set1_epi64x(N - 1)), 8);
    __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64(ki, 47)));
    __m256d z = _mm256_fmadd_pd(_mm256_set1_pd(C0), r, _mm256_set1_pd(C1));
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(_mm256_set1_pd(C2), r, _mm256_set1_pd(1.0));
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
        memcpy(&bits, &exp2_table[i], sizeof bits);
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
