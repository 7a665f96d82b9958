/* expf.h: glibc's expf (2.28 and later), the numbers its algorithm is made of, shared by
 * the scalar copy (expf.c) and the x86 vector one (expf_x86.c).
 *
 * With N = 32, exp(x) = 2^(k/N) * 2^(r/N), k = round(x * N / ln 2), r = x * N / ln 2 - k:
 * 2^(k/N) from a table of 2^(i/N) (i = k mod N) with k / N added to its exponent, and
 * 2^(r/N) from a degree-3 polynomial, all in double precision, rounded to float once at
 * the end. glibc's riscv64 builds and its x86-64 build for CPUs with FMA fuse the same
 * five multiply-adds (read from the libm.so of Debian's glibc 2.36 for both, and 2.41
 * for riscv64), which the copies fuse too.
 */
#ifndef STORYBOT_EXPF_H
#define STORYBOT_EXPF_H

#define SB_EXPF_N 32
#define SB_EXPF_INV_LN2_N 0x1.71547652b82fep+5 // N / ln 2
#define SB_EXPF_SHIFT 0x1.8p+52                // rounds to an integer when added
// the polynomial for 2^(r/N): coefficients of r^3, r^2, r
#define SB_EXPF_C0 0x1.c6af84b912394p-20
#define SB_EXPF_C1 0x1.ebfce50fac4f3p-13
#define SB_EXPF_C2 0x1.62e42ff0c52d6p-6

extern const double sb_exp2_table[SB_EXPF_N]; // 2^(i/N), correctly rounded

#endif
