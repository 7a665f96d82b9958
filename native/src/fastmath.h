/* fastmath.h: the arithmetic of the fast kernels (kernels.h), one element at a time.
 *
 * Models that promise no exactness (sb_exact in internal.h) take exp and reciprocals
 * from here instead of glibc's expf (double precision: no vectors of it on the C906) and
 * a division (20 cycles a float there). Every kernel set computes these same IEEE
 * operations in the same order, fused multiply-adds included, so the portable kernels
 * and the vector ones return the same bits and a story does not depend on the set.
 */
#ifndef STORYBOT_FASTMATH_H
#define STORYBOT_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(y) = 2^n * e^r, n = round(y / ln 2), r = y - n ln 2 in [-ln2/2, ln2/2] (ln 2 in two
 * parts, Cody and Waite), e^r = 1 + r + r^2 (C2 + C3 r + C4 r^2 + C5 r^3), fitted for
 * the least largest relative error with 1 + r kept exact (one multiplication fewer than
 * a free coefficient of r). Within 2.3 ulp of exp for y in [-87, 88] (kernels_test);
 * below -87 the kernels clamp (exp(-87) is 1.6e-38, 2^n stays normal). */
#define SB_FEXP_MIN -87.0f
#define SB_FEXP_LOG2E 0x1.715476p+0f
/* y / ln 2 + SHIFT rounds to an integer, 1.5 * 2^23 + 127 + n for n = round(y / ln 2):
 * its low 9 bits, shifted into a float's exponent field, are 2^n (n in [-126, 127]) */
#define SB_FEXP_SHIFT 0x1.8000fep23f
#define SB_FEXP_LN2_HI 0x1.62e4p-1f
#define SB_FEXP_LN2_LO 0x1.7f7d1cp-20f
#define SB_FEXP_C2 0x1.fffdfcp-2f
#define SB_FEXP_C3 0x1.5557aep-3f
#define SB_FEXP_C4 0x1.5729f0p-5f
#define SB_FEXP_C5 0x1.106284p-7f
/* 1/d for normal d: a first guess from the bits (12% off at most), then three Newton
 * steps r += r (1 - d r), each squaring the error: within 2 ulp of 1/d. */
#define SB_FRCP_MAGIC 0x7ef311c3u

static inline uint32_t sb_fbits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float sb_ffrom(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* exp(y) for y in [SB_FEXP_MIN, 88] */
static inline float sb_fexp(float y) {
    float z = y * SB_FEXP_LOG2E + SB_FEXP_SHIFT; // two roundings, as every set does it
    float n = z - SB_FEXP_SHIFT;                 // exact
    float r = fmaf(-n, SB_FEXP_LN2_HI, y);
    r = fmaf(-n, SB_FEXP_LN2_LO, r);
    float r2 = r * r;
    float lo = fmaf(SB_FEXP_C3, r, SB_FEXP_C2), hi = fmaf(SB_FEXP_C5, r, SB_FEXP_C4);
    float poly = fmaf(fmaf(hi, r2, lo), r2, r); // e^r - 1
    float scale = sb_ffrom(sb_fbits(z) << 23);
    return fmaf(poly, scale, scale);
}

static inline float sb_frcp(float d) {
    float r = sb_ffrom(SB_FRCP_MAGIC - sb_fbits(d));
    for (int i = 0; i < 3; i++) r = fmaf(r, fmaf(-d, r, 1.0f), r);
    return r;
}

/* SiLU's exp(-h) takes -h clamped to [SB_FEXP_MIN, SB_SILU_MAX]: beyond it h * sigmoid(h)
 * is below 1e-33 in size, and 1 + exp(80) keeps its reciprocal normal. */
#define SB_SILU_MAX 80.0f

/* h * sigmoid(h) * g */
static inline float sb_fswiglu(float h, float g) {
    float y = fminf(fmaxf(-h, SB_FEXP_MIN), SB_SILU_MAX);
    return h * sb_frcp(1.0f + sb_fexp(y)) * g;
}

#endif
