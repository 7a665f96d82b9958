/* kernels_q_x86.c: int8 kernels for x86-64, chosen at run time (one build runs on any
 * x86-64): AVX2, AVX-VNNI, and AVX-512 VNNI + VBMI.
 *
 * The 256-bit kernel body below is compiled once per instruction set: this file
 * includes itself with SFX (name suffix), ATTR (target attribute) and DOT4 defined. The
 * two sets differ only in DOT4, the step that adds four u8 x s8 products into each int32
 * lane: maddubs + madd on AVX2, one vpdpbusd with AVX-VNNI. The AVX-512 kernels are
 * written out apart, as a byte permute replaces the unpacks there.
 *
 * Blocks (quant.c) store a column of 32 rows contiguously; x86 wants four columns of one
 * row together for its 4-byte dot products, so each step loads 4 columns and transposes
 * them with unpacks into 4 vectors of 8 rows x 4 bytes (rows in the order noted at
 * unpack4). Signed q8 weights go through the usual sign trick (|x| is the unsigned
 * operand, w * sign(x) the signed one); q4 nibbles are unsigned already (q + 8).
 */
#if defined(__x86_64__)
#ifndef SB_QX86_BODY
#include <cpuid.h>
#include <math.h>
#include <immintrin.h>
#include <string.h>

#include "kernels_q.h"

#define SB_QX86_BODY

#define SFX(f) f##_avx2
#define ATTR __attribute__((target("avx2,fma,f16c")))
#define DOT4(acc, u, s) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), \
                                                                _mm256_set1_epi16(1)))
#include "kernels_q_x86.c"
#undef SFX
#undef ATTR
#undef DOT4

#define SFX(f) f##_avxvnni
#define ATTR __attribute__((target("avx2,fma,f16c,avxvnni")))
#define DOT4(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#include "kernels_q_x86.c"
#undef SFX
#undef ATTR
#undef DOT4

// ----------------------------------------------------------------------------
// AVX-512 (VNNI + VBMI): one vpermt2b gathers 16 rows x 4 columns from 4 columns of
// 32 rows, so no unpack cascade is needed; a masked subtract moves the sign of x onto w.

#define ATTR512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni," \
                                          "avx512vbmi")))

/* Byte 4r + k of the result is column k of row r (+16 for the high half), from
 * a = columns 0 | 1 and b = columns 2 | 3 (or, for q4, a = cols 0 | 2, b = cols 1 | 3). */
ATTR512 static __m512i quad_index(int half, int q4) {
    int8_t idx[64];
    for (int r = 0; r < 16; r++) {
        for (int k = 0; k < 4; k++) {
            int col_at = q4 ? (k & 1) * 64 + (k >> 1) * 32 : (k >> 1) * 64 + (k & 1) * 32;
            idx[4 * r + k] = (int8_t)(col_at + 16 * half + r);
        }
    }
    return _mm512_loadu_si512(idx);
}

/* acc_lo, acc_hi (rows 0-15, 16-31) += float(i) * scale[row] * xs. */
ATTR512 static inline void scale_add512(__m512 *lo, __m512 *hi, __m512i ilo, __m512i ihi,
                                        const uint16_t *ws, float xs) {
    __m512 vx = _mm512_set1_ps(xs);
    __m512 slo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)ws));
    __m512 shi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(ws + 16)));
    *lo = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ilo), slo), vx, *lo);
    *hi = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(ihi), shi), vx, *hi);
}

ATTR512 static void store_rows512(float *out, __m512 lo, __m512 hi, int rows) {
    if (rows >= SB_QK) {
        _mm512_storeu_ps(out, lo);
        _mm512_storeu_ps(out + 16, hi);
        return;
    }
    float tmp[SB_QK]; // the last block's padding rows have no place in out
    _mm512_storeu_ps(tmp, lo);
    _mm512_storeu_ps(tmp + 16, hi);
    memcpy(out, tmp, sizeof(float) * (size_t)rows);
}

ATTR512 static void matvec_q8_0_avx512vnni(float *out, const int8_t *xq, const float *xs,
                                           const int32_t *xsum, const void *w, const void *wsv,
                                           int n, int d, int gs) {
    const uint16_t *ws = wsv;
    (void)xsum, (void)gs;
    const int8_t *wq = w;
    int ng = n / SB_QK;
    const __m512i ilo = quad_index(0, 0), ihi = quad_index(1, 0), zero = _mm512_setzero_si512();
    for (int b = 0; b < d; b += SB_QK) {
        __m512 flo = _mm512_setzero_ps(), fhi = _mm512_setzero_ps();
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK, ws += SB_QK) {
            __m512i lo = zero, hi = zero;
            for (int j = 0; j < SB_QK; j += 4) {
                int32_t x4;
                memcpy(&x4, xq + g * SB_QK + j, sizeof x4);
                __m512i vx = _mm512_set1_epi32(x4), ax = _mm512_abs_epi8(vx);
                __mmask64 neg = _mm512_movepi8_mask(vx);
                __m512i c01 = _mm512_loadu_si512(wq + j * SB_QK);
                __m512i c23 = _mm512_loadu_si512(wq + (j + 2) * SB_QK);
                __m512i qlo = _mm512_permutex2var_epi8(c01, ilo, c23);
                __m512i qhi = _mm512_permutex2var_epi8(c01, ihi, c23);
                lo = _mm512_dpbusd_epi32(lo, ax, _mm512_mask_sub_epi8(qlo, neg, zero, qlo));
                hi = _mm512_dpbusd_epi32(hi, ax, _mm512_mask_sub_epi8(qhi, neg, zero, qhi));
            }
            scale_add512(&flo, &fhi, lo, hi, ws, xs[g]);
        }
        store_rows512(out + b, flo, fhi, d - b);
    }
}

ATTR512 static void matvec_q4_0_avx512vnni(float *out, const int8_t *xq, const float *xs,
                                           const int32_t *xsum, const void *w, const void *wsv,
                                           int n, int d, int gs) {
    const uint16_t *ws = wsv;
    (void)gs;
    const uint8_t *wq = w;
    int ng = n / SB_QK;
    const __m512i ilo = quad_index(0, 1), ihi = quad_index(1, 1), low = _mm512_set1_epi8(15);
    for (int b = 0; b < d; b += SB_QK) {
        __m512 flo = _mm512_setzero_ps(), fhi = _mm512_setzero_ps();
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK / 2, ws += SB_QK) {
            // the nibbles hold q + 8: start from -8 * sum(x) instead of zero
            __m512i lo = _mm512_set1_epi32(-8 * xsum[g]), hi = lo;
            for (int j = 0; j < SB_QK; j += 4) {
                int32_t x4;
                memcpy(&x4, xq + g * SB_QK + j, sizeof x4);
                __m512i vx = _mm512_set1_epi32(x4);
                __m512i p = _mm512_loadu_si512(wq + j / 2 * SB_QK); // pairs (j, j+1) | (j+2, j+3)
                __m512i c02 = _mm512_and_si512(p, low);
                __m512i c13 = _mm512_and_si512(_mm512_srli_epi16(p, 4), low);
                lo = _mm512_dpbusd_epi32(lo, _mm512_permutex2var_epi8(c02, ilo, c13), vx);
                hi = _mm512_dpbusd_epi32(hi, _mm512_permutex2var_epi8(c02, ihi, c13), vx);
            }
            scale_add512(&flo, &fhi, lo, hi, ws, xs[g]);
        }
        store_rows512(out + b, flo, fhi, d - b);
    }
}

// ----------------------------------------------------------------------------
// run-time choice

static int has_avx2(void) {
    unsigned a, b, c, d;
    __builtin_cpu_init();
    // F16C: CPUID.1:ECX[29] (clang's __builtin_cpu_supports does not know "f16c")
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
}

static int has_avxvnni(void) {
    unsigned a, b, c, d; // AVX-VNNI: CPUID.(7, 1):EAX[4]
    return has_avx2() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1);
}

static int has_avx512vnni(void) {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")
        && __builtin_cpu_supports("avx512vbmi");
}

#define QSET(s, rows) { .name = #s, .f16_vector = 1, .quantize_q8 = quantize_q8_avx2,       \
                        .matvec_q8_0 = matvec_q8_0_##s, .matvec_q4_0 = matvec_q4_0_##s,     \
                        .matvec_q8_rows = matvec_q8_rows_##rows, .f16_store = f16_store_avx2, \
                        .matvec_q5 = matvec_q5_##rows, .matvec_q6 = matvec_q6_##rows,       \
                        .matvec_q4_row = matvec_q4_row_##rows,                              \
                        .matvec_q8_row = matvec_q8_row_##rows,                              \
                        .f16_scores = f16_scores_avx2, .f16_mix = f16_mix_avx2 }

static const sb_qkernel_set set_avx2 = QSET(avx2, avx2);
static const sb_qkernel_set set_avxvnni = QSET(avxvnni, avxvnni);
// row-major (ak42), q5/q6 and row-scaled products stay 256-bit: the first needs a
// horizontal sum per row, the others gain little from wider vectors
static const sb_qkernel_set set_avx512vnni = QSET(avx512vnni, avx2);

const sb_qkernel_choice sb_qkernels_x86[] = { // ascending speed
    {&set_avx2, has_avx2},
    {&set_avxvnni, has_avxvnni},
    {&set_avx512vnni, has_avx512vnni},
    {NULL, NULL},
};

#else /* SB_QX86_BODY: the kernels, once per instruction set */

// ----------------------------------------------------------------------------
// blocks: 4 columns of 32 rows -> 4 vectors of (8 rows x 4 bytes)

/* c0..c3: columns j..j+3 of 32 rows. Out: q[0] rows 0-3 | 16-19, q[1] rows 4-7 | 20-23,
 * q[2] rows 8-11 | 24-27, q[3] rows 12-15 | 28-31 (low | high 128-bit lane). */
ATTR static inline void SFX(unpack4)(__m256i c0, __m256i c1, __m256i c2, __m256i c3,
                                     __m256i q[4]) {
    __m256i a = _mm256_unpacklo_epi8(c0, c1), b = _mm256_unpackhi_epi8(c0, c1);
    __m256i c = _mm256_unpacklo_epi8(c2, c3), d = _mm256_unpackhi_epi8(c2, c3);
    q[0] = _mm256_unpacklo_epi16(a, c);
    q[1] = _mm256_unpackhi_epi16(a, c);
    q[2] = _mm256_unpacklo_epi16(b, d);
    q[3] = _mm256_unpackhi_epi16(b, d);
}

/* acc[k] (rows 8k..8k+7) += float(i) * scale[row] * xs, i in unpack4's row order. */
ATTR static inline void SFX(scale_add)(__m256 acc[4], const __m256i i[4], const uint16_t *ws,
                                       float xs) {
    __m256i r[4] = {_mm256_permute2x128_si256(i[0], i[1], 0x20),
                    _mm256_permute2x128_si256(i[2], i[3], 0x20),
                    _mm256_permute2x128_si256(i[0], i[1], 0x31),
                    _mm256_permute2x128_si256(i[2], i[3], 0x31)};
    __m256 vx = _mm256_set1_ps(xs);
    for (int k = 0; k < 4; k++) {
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(r[k]), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ws + 8 * k))));
        acc[k] = _mm256_fmadd_ps(f, vx, acc[k]);
    }
}

ATTR static inline void SFX(store_rows)(float *out, const __m256 acc[4], int rows) {
    if (rows >= SB_QK) {
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(out + 8 * k, acc[k]);
        return;
    }
    float tmp[SB_QK]; // the last block's padding rows have no place in out
    for (int k = 0; k < 4; k++) _mm256_storeu_ps(tmp + 8 * k, acc[k]);
    memcpy(out, tmp, sizeof(float) * (size_t)rows);
}

ATTR static inline __m256i SFX(bcast4)(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* i (unpack4's row order) += a group's 32 columns of q8 times x, its activations. */
ATTR static inline void SFX(q8_group)(__m256i i[4], const int8_t *wq, const int8_t *x) {
    for (int j = 0; j < SB_QK; j += 4) {
        const __m256i *col = (const __m256i *)(wq + j * SB_QK);
        __m256i x4 = SFX(bcast4)(x + j), ax = _mm256_abs_epi8(x4);
        __m256i q[4];
        SFX(unpack4)(_mm256_loadu_si256(col), _mm256_loadu_si256(col + 1),
                     _mm256_loadu_si256(col + 2), _mm256_loadu_si256(col + 3), q);
        for (int k = 0; k < 4; k++) i[k] = DOT4(i[k], ax, _mm256_sign_epi8(q[k], x4));
    }
}

ATTR static void SFX(matvec_q8_0)(float *out, const int8_t *xq, const float *xs,
                                  const int32_t *xsum, const void *w, const void *wsv, int n,
                                  int d, int gs) {
    const uint16_t *ws = wsv;
    (void)xsum, (void)gs;
    const int8_t *wq = w;
    int ng = n / SB_QK;
    for (int b = 0; b < d; b += SB_QK) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK, ws += SB_QK) {
            __m256i i[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),
                            _mm256_setzero_si256(), _mm256_setzero_si256()};
            SFX(q8_group)(i, wq, xq + g * SB_QK);
            SFX(scale_add)(acc, i, ws, xs[g]);
        }
        SFX(store_rows)(out + b, acc, d - b);
    }
}

ATTR static void SFX(matvec_q4_0)(float *out, const int8_t *xq, const float *xs,
                                  const int32_t *xsum, const void *w, const void *wsv, int n,
                                  int d, int gs) {
    const uint16_t *ws = wsv;
    (void)gs;
    const uint8_t *wq = w;
    int ng = n / SB_QK;
    const __m256i low = _mm256_set1_epi8(15);
    for (int b = 0; b < d; b += SB_QK) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK / 2, ws += SB_QK) {
            __m256i i[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),
                            _mm256_setzero_si256(), _mm256_setzero_si256()};
            for (int j = 0; j < SB_QK; j += 4) { // two bytes of pairs: columns j..j+3
                const __m256i *pair = (const __m256i *)(wq + j / 2 * SB_QK);
                __m256i p0 = _mm256_loadu_si256(pair), p1 = _mm256_loadu_si256(pair + 1);
                __m256i q[4];
                SFX(unpack4)(_mm256_and_si256(p0, low),
                             _mm256_and_si256(_mm256_srli_epi16(p0, 4), low),
                             _mm256_and_si256(p1, low),
                             _mm256_and_si256(_mm256_srli_epi16(p1, 4), low), q);
                __m256i x4 = SFX(bcast4)(xq + g * SB_QK + j);
                for (int k = 0; k < 4; k++) i[k] = DOT4(i[k], q[k], x4);
            }
            // the nibbles hold q + 8: take 8 * sum(x) back once per group
            __m256i off = _mm256_set1_epi32(8 * xsum[g]);
            for (int k = 0; k < 4; k++) i[k] = _mm256_sub_epi32(i[k], off);
            SFX(scale_add)(acc, i, ws, xs[g]);
        }
        SFX(store_rows)(out + b, acc, d - b);
    }
}

/* The row-scaled types' end: out (rows) = float(i - off) * scale[row] * xs, two
 * multiplications, the portable bits; i in unpack4's row order. */
ATTR static inline void SFX(store_row_scaled)(float *out, const __m256i i[4], int32_t off,
                                              const uint16_t *ws, float xs, int rows) {
    __m256i r[4] = {_mm256_permute2x128_si256(i[0], i[1], 0x20),
                    _mm256_permute2x128_si256(i[2], i[3], 0x20),
                    _mm256_permute2x128_si256(i[0], i[1], 0x31),
                    _mm256_permute2x128_si256(i[2], i[3], 0x31)};
    const __m256i voff = _mm256_set1_epi32(off);
    const __m256 vx = _mm256_set1_ps(xs);
    __m256 acc[4];
    for (int k = 0; k < 4; k++) {
        __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(ws + 8 * k)));
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(r[k], voff)), sc);
        acc[k] = _mm256_mul_ps(f, vx);
    }
    SFX(store_rows)(out, acc, rows);
}

/* SB_Q4_ROW: q4_0's loop with the int32 sums kept over every group (x has one scale). */
ATTR static void SFX(matvec_q4_row)(float *out, const int8_t *xq, const float *xs,
                                    const int32_t *xsum, const void *w, const void *wsv,
                                    int n, int d, int gs) {
    const uint16_t *ws = wsv;
    (void)gs;
    const uint8_t *wq = w;
    int ng = n / SB_QK;
    int32_t total = 0;
    for (int g = 0; g < ng; g++) total += xsum[g];
    const __m256i low = _mm256_set1_epi8(15);
    for (int b = 0; b < d; b += SB_QK, ws += SB_QK) {
        __m256i i[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK / 2) {
            for (int j = 0; j < SB_QK; j += 4) {
                const __m256i *pair = (const __m256i *)(wq + j / 2 * SB_QK);
                __m256i p0 = _mm256_loadu_si256(pair), p1 = _mm256_loadu_si256(pair + 1);
                __m256i q[4];
                SFX(unpack4)(_mm256_and_si256(p0, low),
                             _mm256_and_si256(_mm256_srli_epi16(p0, 4), low),
                             _mm256_and_si256(p1, low),
                             _mm256_and_si256(_mm256_srli_epi16(p1, 4), low), q);
                __m256i x4 = SFX(bcast4)(xq + g * SB_QK + j);
                for (int k = 0; k < 4; k++) i[k] = DOT4(i[k], q[k], x4);
            }
        }
        SFX(store_row_scaled)(out + b, i, 8 * total, ws, xs[0], d - b); // nibbles: q + 8
    }
}

/* SB_Q8_ROW: q8_0's loop, its int32 sums kept over every group as SB_Q4_ROW's. */
ATTR static void SFX(matvec_q8_row)(float *out, const int8_t *xq, const float *xs,
                                    const int32_t *xsum, const void *w, const void *wsv,
                                    int n, int d, int gs) {
    const uint16_t *ws = wsv;
    (void)xsum, (void)gs;
    const int8_t *wq = w;
    int ng = n / SB_QK;
    for (int b = 0; b < d; b += SB_QK, ws += SB_QK) {
        __m256i i[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK) {
            SFX(q8_group)(i, wq, xq + g * SB_QK);
        }
        SFX(store_row_scaled)(out + b, i, 0, ws, xs[0], d - b);
    }
}

/* Bytes of v shifted by sh (> 0 left, < 0 right) and masked (8-bit lanes by way of 16). */
ATTR static inline __m256i SFX(shift_mask)(__m256i v, int sh, int mask) {
    if (sh > 0) v = _mm256_slli_epi16(v, sh);
    if (sh < 0) v = _mm256_srli_epi16(v, -sh);
    return _mm256_and_si256(v, _mm256_set1_epi8((char)mask));
}

/* q5 / q6 (quant.c): each column rebuilt from its nibble and its high bits, then as q4. */
ATTR static void SFX(matvec_qhi)(float *out, const int8_t *xq, const float *xs,
                                 const int32_t *xsum, const uint8_t *wq, const uint16_t *ws,
                                 int n, int d, int bits) {
    int ng = n / SB_QK, k = bits - 4;
    for (int b = 0; b < d; b += SB_QK) {
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK * bits / 8, ws += SB_QK) {
            __m256i i[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(),
                            _mm256_setzero_si256(), _mm256_setzero_si256()};
            const __m256i *rows = (const __m256i *)wq;
            for (int j = 0; j < SB_QK; j += 4) {
                __m256i c[4];
                for (int t = 0; t < 4; t++) {
                    int col = j + t, c_hi = col / (4 * k);
                    __m256i nib = _mm256_loadu_si256(rows + col % 16);
                    __m256i hi = _mm256_loadu_si256(rows + 16 + col % (4 * k));
                    c[t] = _mm256_or_si256(SFX(shift_mask)(nib, col < 16 ? 0 : -4, 15),
                                           SFX(shift_mask)(hi, 4 - k * c_hi,
                                                           ((1 << k) - 1) << 4));
                }
                __m256i q[4];
                SFX(unpack4)(c[0], c[1], c[2], c[3], q);
                __m256i x4 = SFX(bcast4)(xq + g * SB_QK + j);
                for (int r = 0; r < 4; r++) i[r] = DOT4(i[r], q[r], x4);
            }
            __m256i off = _mm256_set1_epi32((1 << (bits - 1)) * xsum[g]);
            for (int r = 0; r < 4; r++) i[r] = _mm256_sub_epi32(i[r], off);
            SFX(scale_add)(acc, i, ws, xs[g]);
        }
        SFX(store_rows)(out + b, acc, d - b);
    }
}

ATTR static void SFX(matvec_q5)(float *out, const int8_t *xq, const float *xs,
                                const int32_t *xsum, const void *w, const void *ws, int n,
                                int d, int gs) {
    (void)gs;
    SFX(matvec_qhi)(out, xq, xs, xsum, w, ws, n, d, 5);
}

ATTR static void SFX(matvec_q6)(float *out, const int8_t *xq, const float *xs,
                                const int32_t *xsum, const void *w, const void *ws, int n,
                                int d, int gs) {
    (void)gs;
    SFX(matvec_qhi)(out, xq, xs, xsum, w, ws, n, d, 6);
}

// ----------------------------------------------------------------------------
// row-major int8 (llama2.c ak42): four rows at a time share each activation group

ATTR static inline float SFX(hsum)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

ATTR static void SFX(matvec_q8_rows)(float *out, const int8_t *xq, const float *xs,
                                     const int32_t *xsum, const void *w, const void *wsv,
                                     int n, int d, int gs) {
    const float *ws = wsv;
    (void)xsum;
    int spr = n / gs; // scales per row
    int i = 0;
    for (; i + 4 <= d; i += 4) {
        const int8_t *row = (const int8_t *)w + (size_t)i * n;
        const float *rs = ws + (size_t)i * spr;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                         _mm256_setzero_ps()};
        for (int j = 0; j < n; j += SB_QK) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + j)), ax = _mm256_abs_epi8(x);
            for (int r = 0; r < 4; r++) {
                __m256i wv = _mm256_loadu_si256((const __m256i *)(row + (size_t)r * n + j));
                __m256i dot = DOT4(_mm256_setzero_si256(), ax, _mm256_sign_epi8(wv, x));
                __m256 s = _mm256_set1_ps(rs[r * spr + j / gs] * xs[j / SB_QK]);
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc[r]);
            }
        }
        for (int r = 0; r < 4; r++) out[i + r] = SFX(hsum)(acc[r]);
    }
    for (; i < d; i++) {
        const int8_t *row = (const int8_t *)w + (size_t)i * n;
        __m256 acc = _mm256_setzero_ps();
        for (int j = 0; j < n; j += SB_QK) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + j)), ax = _mm256_abs_epi8(x);
            __m256i wv = _mm256_loadu_si256((const __m256i *)(row + j));
            __m256i dot = DOT4(_mm256_setzero_si256(), ax, _mm256_sign_epi8(wv, x));
            __m256 s = _mm256_set1_ps(ws[(size_t)i * spr + j / gs] * xs[j / SB_QK]);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc);
        }
        out[i] = SFX(hsum)(acc);
    }
}

#ifndef SB_QX86_COMMON_DONE
#define SB_QX86_COMMON_DONE
// ----------------------------------------------------------------------------
// shared by every set (AVX2 + F16C only)

/* The same arithmetic as quantize_q8_generic, so the results are identical. */
ATTR static void quantize_q8_avx2(int8_t *xq, float *xs, int32_t *xsum, const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); // undo the packs' lanes
    for (int g = 0; g < n / SB_QK; g++) {
        const float *v = x + g * SB_QK;
        __m256 f[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            f[k] = _mm256_loadu_ps(v + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, f[k]));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        float amax = _mm_cvtss_f32(h);
        __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m256i q[4]; // cvtps2dq rounds to nearest even, as round_even() does
        for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(f[k], id));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                       _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(xq + g * SB_QK), _mm256_permutevar8x32_epi32(b, order));
        xs[g] = amax / 127.0f;
        xsum[g] = _mm_cvtsi128_si32(s4);
    }
}

ATTR static void f16_store_avx2(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
        _mm_storeu_si128((__m128i *)(dst + i), h);
    }
    for (; i < n; i++) dst[i] = sb_f32_to_f16(src[i]);
}

ATTR static inline __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* Eight positions at a time, the sum over i kept in a register. Each product fused into
 * its sum (one rounding), as the portable kernels (fmaf) and the C906's compute it, so
 * every set gives the same attention from the same fp16 cache. */
ATTR static void f16_scores_avx2(float *att, const float *q, const uint16_t *kt, int head_size,
                                 int seq_len, int n) {
    int t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int i = 0; i < head_size; i++) {
            acc = _mm256_fmadd_ps(_mm256_set1_ps(q[i]), load_f16(kt + (size_t)i * seq_len + t),
                                  acc);
        }
        _mm256_storeu_ps(att + t, acc);
    }
    for (; t < n; t++) {
        float a = 0.0f;
        for (int i = 0; i < head_size; i++) a = fmaf(q[i], sb_f16_to_f32(kt[(size_t)i * seq_len + t]), a);
        att[t] = a;
    }
}

ATTR static void f16_mix_avx2(float *out, const float *att, const uint16_t *v, int head_size,
                              int stride, int n) {
    int i = 0;
    for (; i + 16 <= head_size; i += 16) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int t = 0; t < n; t++) {
            const uint16_t *vt = v + (size_t)t * stride + i;
            __m256 at = _mm256_set1_ps(att[t]);
            a0 = _mm256_fmadd_ps(at, load_f16(vt), a0);
            a1 = _mm256_fmadd_ps(at, load_f16(vt + 8), a1);
        }
        _mm256_storeu_ps(out + i, a0);
        _mm256_storeu_ps(out + i + 8, a1);
    }
    for (; i < head_size; i++) {
        float a = 0.0f;
        for (int t = 0; t < n; t++) a = fmaf(att[t], sb_f16_to_f32(v[(size_t)t * stride + i]), a);
        out[i] = a;
    }
}
#endif /* SB_QX86_COMMON_DONE */

#endif /* SB_QX86_BODY */
#endif /* __x86_64__ */
