/* kernels.c: the portable kernels, weight packing and the choice of kernel set. */
#include <string.h>

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

static void axpy_f32_generic(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

const sb_kernel_set sb_kernels_generic = {
    .name = "generic",
    .f32_rows = 1,
    .matvec_f32 = matvec_f32_generic,
    .axpy_f32 = axpy_f32_generic,
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

const sb_kernel_set *sb_kernels_pick(int generic_only) {
    if (generic_only) return &sb_kernels_generic;
#if defined(__x86_64__)
    if (sb_cpu_has_avx512()) return &sb_kernels_avx512;
    if (sb_cpu_has_avx2()) return &sb_kernels_avx2;
#endif
#if defined(__riscv_vector) || defined(__riscv_xtheadvector)
    if (sb_rvv_usable()) return &sb_kernels_rvv;
#endif
    return &sb_kernels_generic;
}
