/* expf.c: expf as glibc computes it, in portable C (expf.h has the algorithm).
 *
 * RISC-V uses it instead of calling the C library 32000 times per sampled token: with
 * glibc the results are the same (its riscv64 builds fuse these five multiply-adds, and
 * fma() compiles to fmadd.d), inlined in the loop it saves the calls, and with the musl
 * of a stock Duo image, whose expf takes twice the instructions, the board still gets
 * glibc's numbers, as run.c has them. x86 keeps calling its C library (or the vector
 * copy that checks itself against it), since a CPU without FMA runs an unfused glibc.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "expf.h"
#include "kernels.h"

const double sb_exp2_table[SB_EXPF_N] = {
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

static inline uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static inline float expf_glibc(float x) {
    uint32_t top = float_bits(x) >> 20 & 0x7ff;
    if (top >= float_bits(88.0f) >> 20) { // |x| >= 88, infinities and NaN
        if (float_bits(x) == float_bits(-INFINITY)) return 0.0f;
        if (top >= float_bits(INFINITY) >> 20) return x + x;
        if (x > 0x1.62e42ep6f) return INFINITY; // above log(2^128): overflows
        if (x < -0x1.9fe368p6f) return 0.0f;    // below log(2^-150): underflows
    }
    double xd = x;
    double kd = fma(SB_EXPF_INV_LN2_N, xd, SB_EXPF_SHIFT);
    uint64_t ki, t;
    memcpy(&ki, &kd, sizeof ki);
    kd -= SB_EXPF_SHIFT;
    double r = fma(SB_EXPF_INV_LN2_N, xd, -kd);
    // 2^(i/N) with the integer part of k / N added to its exponent
    memcpy(&t, &sb_exp2_table[ki % SB_EXPF_N], sizeof t);
    t += (ki - ki % SB_EXPF_N) << (52 - 5);
    double s;
    memcpy(&s, &t, sizeof s);
    double z = fma(SB_EXPF_C0, r, SB_EXPF_C1);
    double r2 = r * r;
    double y = fma(SB_EXPF_C2, r, 1.0);
    y = fma(z, r2, y);
    return (float)(y * s);
}

void sb_expf_glibc(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] = expf_glibc(x[i]);
}
