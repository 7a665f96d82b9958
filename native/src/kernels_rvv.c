/* kernels_rvv.c: RISC-V vector kernels (placeholder until the RVV build lands). */
