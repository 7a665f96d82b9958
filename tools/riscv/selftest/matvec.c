/* storybot riscv self-test: fp32 matvec y = 0.5 * W x (ROWS x COLS) and an int8 dot
 * product (the Q8 inner loop), scalar or RVV.
 * Build with -DUSE_RVV to use the RVV intrinsics from <riscv_vector.h> (standard
 * __riscv_ names, v0.11/v0.12 API: clang-16 for RVV 1.0, GCC 14 for XTheadVector).
 * insncount markers: "addi x0,x0,1" / "addi x0,x0,2" around the fp32 matvec,
 * "addi x0,x0,3" / "addi x0,x0,4" around the int8 dots.
 * Results are compared with scalar references; exit status 1 on a mismatch. */
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <stdint.h>
#ifdef USE_RVV
#include <riscv_vector.h>
#endif

#define ROWS 64
#define COLS 96

#define QN 200   /* int8 dot length: not a multiple of VLMAX, exercises the tail */

static float W[ROWS * COLS], X[COLS], Y[ROWS];
static int8_t QA[QN], QB[QN];

/* XTheadVector pitfall: th.vmv.x.s (0.7.1 vext.x.v) ZERO-extends the element to
 * XLEN, but GCC 14 assumes the RVV 1.0 sign extension, so a negative int32 from
 * __riscv_vmv_x_s_i32m1_i32 ends up as 0x00000000ffffff9c in a 64-bit register and
 * later 64-bit compares/subtractions go wrong.  Re-sign-extend explicitly. */
static inline int32_t sext32(int32_t v) {
#if defined(__riscv_xtheadvector) && !defined(NO_SEXT_FIX)
    int64_t r;
    __asm__("sext.w %0, %1" : "=r"(r) : "r"(v));
    return (int32_t)r;
#else
    return v;
#endif
}

#ifdef USE_RVV
static void matvec(float *y, const float *w, const float *x, int rows, int cols) {
    size_t vlmax = __riscv_vsetvlmax_e32m4();
    for (int r = 0; r < rows; r++) {
        const float *wr = w + (size_t)r * cols;
        vfloat32m4_t acc = __riscv_vfmv_v_f_f32m4(0.0f, vlmax);
        size_t n = (size_t)cols;
        for (size_t i = 0; i < n;) {
            size_t vl = __riscv_vsetvl_e32m4(n - i);
            vfloat32m4_t a = __riscv_vle32_v_f32m4(wr + i, vl);
            vfloat32m4_t b = __riscv_vle32_v_f32m4(x + i, vl);
            acc = __riscv_vfmacc_vv_f32m4_tu(acc, a, b, vl);
            i += vl;
        }
        vfloat32m1_t zero = __riscv_vfmv_s_f_f32m1(0.0f, 1);
        vfloat32m1_t s = __riscv_vfredusum_vs_f32m4_f32m1(acc, zero, vlmax);
        y[r] = __riscv_vfmv_f_s_f32m1_f32(s);
    }
}
/* scale a vector by a scalar: exercises the _vf form */
static void scale(float *v, float k, int n) {
    for (size_t i = 0; i < (size_t)n;) {
        size_t vl = __riscv_vsetvl_e32m4((size_t)n - i);
        vfloat32m4_t a = __riscv_vle32_v_f32m4(v + i, vl);
        vfloat32m4_t z = __riscv_vfmv_v_f_f32m4(0.0f, vl);
        z = __riscv_vfmacc_vf_f32m4(z, k, a, vl);
        __riscv_vse32_v_f32m4(v + i, z, vl);
        i += vl;
    }
}
static int32_t dot_i8(const int8_t *a, const int8_t *b, int n) {
    vint32m1_t acc = __riscv_vmv_s_x_i32m1(0, 1);
    for (size_t i = 0; i < (size_t)n;) {
        size_t vl = __riscv_vsetvl_e8m1((size_t)n - i);
        vint16m2_t p = __riscv_vwmul_vv_i16m2(__riscv_vle8_v_i8m1(a + i, vl),
                                              __riscv_vle8_v_i8m1(b + i, vl), vl);
        acc = __riscv_vwredsum_vs_i16m2_i32m1(p, acc, vl);
        i += vl;
    }
    return sext32(__riscv_vmv_x_s_i32m1_i32(acc));
}
#define KIND "rvv"
#else
static void matvec(float *y, const float *w, const float *x, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        const float *wr = w + (size_t)r * cols;
        float s = 0.0f;
        for (int i = 0; i < cols; i++) s += wr[i] * x[i];
        y[r] = s;
    }
}
static void scale(float *v, float k, int n) {
    for (int i = 0; i < n; i++) v[i] *= k;
}
static int32_t dot_i8(const int8_t *a, const int8_t *b, int n) {
    int32_t s = 0;
    for (int i = 0; i < n; i++) s += (int32_t)a[i] * b[i];
    return s;
}
#define KIND "scalar"
#endif

int main(void) {
    unsigned s = 12345u;
    for (int i = 0; i < ROWS * COLS; i++) {
        s = s * 1103515245u + 12345u;
        W[i] = (float)((int)((s >> 16) & 0xff) - 128) / 64.0f;
    }
    for (int i = 0; i < COLS; i++) X[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < QN; i++) {
        s = s * 1103515245u + 12345u;
        QA[i] = (int8_t)(s >> 16);
        QB[i] = (int8_t)((i * 37) % 255 - 127);
    }

    __asm__ volatile("addi x0, x0, 1");
    matvec(Y, W, X, ROWS, COLS);
    scale(Y, 0.5f, ROWS);
    __asm__ volatile("addi x0, x0, 2");

    int32_t d_full, d_tail;
    __asm__ volatile("addi x0, x0, 3");
    d_full = dot_i8(QA, QB, QN);
    d_tail = dot_i8(QA + 1, QB, QN - 9);
    __asm__ volatile("addi x0, x0, 4");
    int64_t r_full = 0, r_tail = 0;
    for (int i = 0; i < QN; i++) r_full += (int32_t)QA[i] * QB[i];
    for (int i = 0; i < QN - 9; i++) r_tail += (int32_t)QA[i + 1] * QB[i];

    double sum = 0.0, ref = 0.0, maxerr = 0.0;
    for (int r = 0; r < ROWS; r++) {
        double e = 0.0;
        for (int i = 0; i < COLS; i++) e += (double)W[r * COLS + i] * X[i];
        e *= 0.5;
        sum += Y[r];
        ref += e;
        if (fabs(Y[r] - e) > maxerr) maxerr = fabs(Y[r] - e);
    }
    int ok = maxerr < 1e-3;
    printf("%s f32 matvec %dx%d: sum %.4f ref %.4f maxerr %.2g %s\n", KIND, ROWS, COLS, sum,
           ref, maxerr, ok ? "OK" : "FAIL");
    /* 64-bit compare on purpose: catches a result that is not sign-extended */
    int64_t g_full = d_full, g_tail = d_tail;
    int qok = g_full == r_full && g_tail == r_tail;
    printf("%s i8 dot n=%d: %lld %lld ref %lld %lld %s\n", KIND, QN, (long long)g_full,
           (long long)g_tail, (long long)r_full, (long long)r_tail, qok ? "OK" : "FAIL");
    return ok && qok ? 0 : 1;
}
