/* quant.c: quantized weights: the portable kernels, row dequantization for the token
 * embedding, IEEE half conversions for the fp16 KV cache, and the choice of kernel set.
 *
 * Weight layouts (the matrix W is (d, n), groups of SB_QK = 32 columns):
 *   SB_Q8_0   blocks of 32 rows; block b, group g is 32 x 32 int8 stored column by
 *             column: w[((b * ng + g) * 32 + j) * 32 + r] is W[32b + r][32g + j].
 *             fp16 scales ws[(b * ng + g) * 32 + r]. The last block is padded with zero
 *             rows.
 *   SB_Q4_0   the same blocks, two columns per byte: byte [(b * ng + g) * 16 + p][r] holds
 *             columns 2p (low nibble) and 2p + 1 (high nibble) as q + 8, q in [-8, 7].
 *   SB_Q5, SB_Q6 the same blocks with k = 1 or 2 high bits: u = q + 2^(k + 3) in
 *             [0, 2^(k + 4)); a block-group's 32 * 32 * (4 + k) / 8 bytes are nibbles,
 *             byte [p][r] (p < 16) holding u's low bits of columns p (low nibble) and
 *             p + 16, then high bits, byte [16 + i][r] (i < 4k) holding in bits
 *             [k(c + 1) - 1 : kc] the high bits of column i + 4k * c. So one vector of
 *             nibble bytes gives 8 or 16 columns' low bits at once, and a shift of the
 *             high-bit bytes lines up the same columns' high bits.
 *   SB_Q4_ROW SB_Q4_0's blocks with one fp16 scale per row, ws[32b + r] (padding rows
 *             too): a draft classifier's layout. Its input has one scale for the whole
 *             vector, so a row's integer sum runs over every group and is scaled once:
 *             no float work per group, and a 16th of the scales' bytes.
 *   SB_Q8_ROW SB_Q8_0's blocks with one fp16 scale per row, as SB_Q4_ROW: a classifier's
 *             layout. On the C906 a group's float work is 100 of its ~700 cycles, and
 *             with one scale for x its products run longer in int16 (kernels_q_xt.c).
 *   SB_Q8_ROWS llama2.c ak42: row-major int8, fp32 scale of W[i][j] at ws[(i * n + j) / gs].
 *   SB_F32_ROWS fp32 row-major (a matrix whose inner dimension is not whole groups).
 * Column-major blocks let a vector unit multiply one column of 32 rows by one activation
 * and keep 32 row sums in lanes, with no horizontal sum per group (see kernels_q_rvv.c).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "testhooks.h"

// ----------------------------------------------------------------------------
// activations

/* Round to nearest, ties to even, for |v| < 2^22: what cvtps2dq and vfcvt do by default. */
static inline float round_even(float v) {
    return (v + 12582912.0f) - 12582912.0f;
}

static void quantize_q8_generic(int8_t *xq, float *xs, int32_t *xsum, const float *x, int n) {
    for (int g = 0; g < n / SB_QK; g++) {
        const float *v = x + g * SB_QK;
        float amax = 0.0f;
        for (int j = 0; j < SB_QK; j++) amax = fmaxf(amax, fabsf(v[j]));
        float id = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < SB_QK; j++) {
            int q = (int)round_even(v[j] * id);
            xq[g * SB_QK + j] = (int8_t)q;
            sum += q;
        }
        xs[g] = amax / 127.0f;
        xsum[g] = sum;
    }
}

/* One scale for all of x (the sb_row_scaled types' input): quantize_q8's rounding, with
 * the largest |x| of the whole vector; every group gets that scale and its own sum.
 * Portable for every set: it is one pass over dim values a token. */
static void quantize_q8_row(int8_t *xq, float *xs, int32_t *xsum, const float *x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int g = 0; g < n / SB_QK; g++) {
        int32_t sum = 0;
        for (int j = 0; j < SB_QK; j++) {
            int q = (int)round_even(x[g * SB_QK + j] * id);
            xq[g * SB_QK + j] = (int8_t)q;
            sum += q;
        }
        xs[g] = amax / 127.0f;
        xsum[g] = sum;
    }
}

// ----------------------------------------------------------------------------
// portable products (also the reference the tuned sets are tested against)

/* isum (32 rows) += a q8 block-group (32 columns of 32 rows) times x, its activations. */
static void q8_group_sums(int32_t *isum, const int8_t *wq, const int8_t *x) {
    for (int j = 0; j < SB_QK; j++) {
        for (int r = 0; r < SB_QK; r++) isum[r] += wq[j * SB_QK + r] * (int32_t)x[j];
    }
}

static void matvec_q8_0_generic(float *out, const int8_t *xq, const float *xs,
                                const int32_t *xsum, const void *w, const void *wsv, int n,
                                int d, int gs) {
    (void)xsum, (void)gs;
    const int8_t *wq = w;
    const uint16_t *ws = wsv;
    int ng = n / SB_QK;
    for (int b = 0; b < d; b += SB_QK) {
        float acc[SB_QK] = {0};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK, ws += SB_QK) {
            int32_t isum[SB_QK] = {0};
            q8_group_sums(isum, wq, xq + g * SB_QK);
            for (int r = 0; r < SB_QK; r++) acc[r] += (float)isum[r] * sb_f16_to_f32(ws[r]) * xs[g];
        }
        memcpy(out + b, acc, sizeof(float) * (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

static void matvec_q4_0_generic(float *out, const int8_t *xq, const float *xs,
                                const int32_t *xsum, const void *w, const void *wsv, int n,
                                int d, int gs) {
    (void)gs;
    const uint8_t *wq = w;
    const uint16_t *ws = wsv;
    int ng = n / SB_QK;
    for (int b = 0; b < d; b += SB_QK) {
        float acc[SB_QK] = {0};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK / 2, ws += SB_QK) {
            int32_t isum[SB_QK] = {0};
            for (int p = 0; p < SB_QK / 2; p++) {
                int32_t x0 = xq[g * SB_QK + 2 * p], x1 = xq[g * SB_QK + 2 * p + 1];
                for (int r = 0; r < SB_QK; r++) {
                    uint8_t byte = wq[p * SB_QK + r];
                    isum[r] += (byte & 15) * x0 + (byte >> 4) * x1;
                }
            }
            // the nibbles hold q + 8: take 8 * sum(x) back once per group
            for (int r = 0; r < SB_QK; r++) {
                acc[r] += (float)(isum[r] - 8 * xsum[g]) * sb_f16_to_f32(ws[r]) * xs[g];
            }
        }
        memcpy(out + b, acc, sizeof(float) * (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

void sb_matvec_q4_row_generic(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *wsv, int n,
                              int d, int gs) {
    (void)gs;
    const uint8_t *wq = w;
    const uint16_t *ws = wsv;
    int ng = n / SB_QK;
    int32_t total = 0;
    for (int g = 0; g < ng; g++) total += xsum[g];
    for (int b = 0; b < d; b += SB_QK, ws += SB_QK) {
        int32_t isum[SB_QK];
        for (int r = 0; r < SB_QK; r++) isum[r] = -8 * total; // the nibbles hold q + 8
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK / 2) {
            for (int p = 0; p < SB_QK / 2; p++) {
                int32_t x0 = xq[g * SB_QK + 2 * p], x1 = xq[g * SB_QK + 2 * p + 1];
                for (int r = 0; r < SB_QK; r++) {
                    uint8_t byte = wq[p * SB_QK + r];
                    isum[r] += (byte & 15) * x0 + (byte >> 4) * x1;
                }
            }
        }
        for (int r = 0; r < SB_QK && b + r < d; r++) {
            out[b + r] = (float)isum[r] * sb_f16_to_f32(ws[r]) * xs[0];
        }
    }
}

void sb_matvec_q8_row_generic(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *wsv, int n,
                              int d, int gs) {
    (void)xsum, (void)gs;
    const int8_t *wq = w;
    const uint16_t *ws = wsv;
    int ng = n / SB_QK;
    for (int b = 0; b < d; b += SB_QK, ws += SB_QK) {
        int32_t isum[SB_QK] = {0};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK) {
            q8_group_sums(isum, wq, xq + g * SB_QK);
        }
        for (int r = 0; r < SB_QK && b + r < d; r++) {
            out[b + r] = (float)isum[r] * sb_f16_to_f32(ws[r]) * xs[0];
        }
    }
}

/* SB_Q5 / SB_Q6: u = low nibble | high bits << 4, less 2^(bits - 1) per group. */
static void matvec_qhi_generic(float *out, const int8_t *xq, const float *xs,
                               const int32_t *xsum, const uint8_t *wq, const uint16_t *ws,
                               int n, int d, int bits) {
    int ng = n / SB_QK, k = bits - 4, mask = (1 << k) - 1;
    for (int b = 0; b < d; b += SB_QK) {
        float acc[SB_QK] = {0};
        for (int g = 0; g < ng; g++, wq += SB_QK * SB_QK * bits / 8, ws += SB_QK) {
            const uint8_t *hi = wq + SB_QK * SB_QK / 2;
            int32_t isum[SB_QK] = {0};
            for (int j = 0; j < SB_QK; j++) {
                const uint8_t *nib = wq + (j % 16) * SB_QK, *top = hi + (j % (4 * k)) * SB_QK;
                int shift = j < 16 ? 0 : 4, hshift = k * (j / (4 * k));
                int32_t xj = xq[g * SB_QK + j];
                for (int r = 0; r < SB_QK; r++) {
                    int u = ((nib[r] >> shift) & 15) | (((top[r] >> hshift) & mask) << 4);
                    isum[r] += u * xj;
                }
            }
            for (int r = 0; r < SB_QK; r++) {
                acc[r] += (float)(isum[r] - (1 << (bits - 1)) * xsum[g]) *
                          sb_f16_to_f32(ws[r]) * xs[g];
            }
        }
        memcpy(out + b, acc, sizeof(float) * (size_t)(d - b < SB_QK ? d - b : SB_QK));
    }
}

static void matvec_q5_generic(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *ws, int n,
                              int d, int gs) {
    (void)gs;
    matvec_qhi_generic(out, xq, xs, xsum, w, ws, n, d, 5);
}

static void matvec_q6_generic(float *out, const int8_t *xq, const float *xs,
                              const int32_t *xsum, const void *w, const void *ws, int n,
                              int d, int gs) {
    (void)gs;
    matvec_qhi_generic(out, xq, xs, xsum, w, ws, n, d, 6);
}

static void matvec_q8_rows_generic(float *out, const int8_t *xq, const float *xs,
                                   const int32_t *xsum, const void *w, const void *wsv, int n,
                                   int d, int gs) {
    (void)xsum;
    const float *ws = wsv;
    for (int i = 0; i < d; i++) {
        const int8_t *row = (const int8_t *)w + (size_t)i * n;
        const float *rs = ws + (size_t)i * (n / gs); // gs divides n
        float val = 0.0f;
        for (int j = 0; j < n; j += SB_QK) {
            int32_t isum = 0;
            for (int k = 0; k < SB_QK; k++) isum += row[j + k] * xq[j + k];
            val += (float)isum * rs[j / gs] * xs[j / SB_QK];
        }
        out[i] = val;
    }
}

// ----------------------------------------------------------------------------
// IEEE half precision (fp16 KV cache)

uint16_t sb_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); // rounds past 65504: inf
    if (ax < 0x38800000u) {
        // below 2^-14 the half is subnormal: adding 0.5 puts its 2^-24 steps in the low
        // mantissa bits, rounded to even by the addition itself
        float v;
        memcpy(&v, &ax, sizeof v);
        v += 0.5f;
        uint32_t b;
        memcpy(&b, &v, sizeof b);
        return (uint16_t)(sign | (b - 0x3f000000u));
    }
    ax += 0xc8000fffu + ((ax >> 13) & 1); // rebias 127 -> 15 and round to nearest even
    return (uint16_t)(sign | (ax >> 13));
}

float sb_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, em = h & 0x7fff, bits;
    if (em >= 0x7c00) {
        bits = sign | 0x7f800000u | ((em & 0x3ff) << 13);
    } else if (em >= 0x0400) {
        bits = sign | ((em << 13) + 0x38000000u);
    } else {
        float v = (float)em * 5.9604644775390625e-8f; // subnormal: em * 2^-24, exact
        memcpy(&bits, &v, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void sb_f16_store_generic(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = sb_f32_to_f16(src[i]);
}

void sb_f16_scores_generic(float *att, const float *q, const uint16_t *kt, int head_size,
                               int seq_len, int n) {
    memset(att, 0, sizeof(float) * (size_t)n);
    for (int i = 0; i < head_size; i++) {
        const uint16_t *krow = kt + (size_t)i * seq_len;
        for (int t = 0; t < n; t++) att[t] = fmaf(q[i], sb_f16_to_f32(krow[t]), att[t]);
    }
}

void sb_f16_mix_generic(float *out, const float *att, const uint16_t *v, int head_size,
                            int stride, int n) {
    memset(out, 0, sizeof(float) * (size_t)head_size);
    for (int t = 0; t < n; t++) {
        const uint16_t *vt = v + (size_t)t * stride;
        for (int i = 0; i < head_size; i++) out[i] = fmaf(att[t], sb_f16_to_f32(vt[i]), out[i]);
    }
}

const sb_qkernel_set sb_qkernels_generic = {
    .name = "generic",
    .quantize_q8 = quantize_q8_generic,
    .matvec_q8_0 = matvec_q8_0_generic,
    .matvec_q4_0 = matvec_q4_0_generic,
    .matvec_q8_rows = matvec_q8_rows_generic,
    .matvec_q5 = matvec_q5_generic,
    .matvec_q6 = matvec_q6_generic,
    .matvec_q4_row = sb_matvec_q4_row_generic,
    .matvec_q8_row = sb_matvec_q8_row_generic,
    .f16_store = sb_f16_store_generic,
    .f16_scores = sb_f16_scores_generic,
    .f16_mix = sb_f16_mix_generic,
};

// ----------------------------------------------------------------------------
// choice of kernels

int sb_qkernels_all(const sb_qkernel_set **sets, int cap) {
    int n = 0;
    if (n < cap) sets[n++] = &sb_qkernels_generic;
#if defined(__x86_64__)
    for (const sb_qkernel_choice *c = sb_qkernels_x86; c->set; c++) {
        if (n < cap && c->supported()) sets[n++] = c->set;
    }
#endif
#if defined(__riscv_vector) || defined(__riscv_xtheadvector)
    if (n < cap && sb_qrvv_usable()) sets[n++] = &sb_qkernels_rvv;
#endif
    return n;
}

const sb_qkernel_set *sb_qkernels_pick(int generic_only) {
    const sb_qkernel_set *sets[8];
    int n = sb_qkernels_all(sets, 8);
    return generic_only ? sets[0] : sets[n - 1]; // ascending speed
}

// ----------------------------------------------------------------------------
// used by the forward pass

int sb_type_bits(sb_type type) {
    switch (type) {
    case SB_Q4_0:
    case SB_Q4_ROW: return 4;
    case SB_Q5: return 5;
    case SB_Q6: return 6;
    case SB_F32:
    case SB_F32_ROWS: return 32;
    default: return 8;
    }
}

void sb_quantize_input(const sb_model *m, sb_state_q *s, const float *x, const sb_matrix *w) {
    if (sb_row_scaled(w->type)) {
        quantize_q8_row(s->q, s->s, s->sum, x, w->cols);
    } else {
        m->qkernels->quantize_q8(s->q, s->s, s->sum, x, w->cols);
    }
}

void sb_matvec_quant_rows(const sb_model *m, const sb_state_q *s, float *out,
                          const sb_matrix *w, int r0, int r1) {
    const sb_qkernel_set *k = m->qkernels;
    int n = w->cols;
    size_t data, scales; // offsets of row r0 (a block boundary) in bytes
    sb_qmatvec_fn f;
    switch (w->type) {
    case SB_Q8_ROWS:
        f = k->matvec_q8_rows;
        data = (size_t)r0 * n;
        scales = (size_t)r0 * (n / w->group_size) * sizeof(float);
        break;
    case SB_Q8_0:
    case SB_Q4_0:
    case SB_Q5:
    case SB_Q6:
        f = w->type == SB_Q8_0 ? k->matvec_q8_0 : w->type == SB_Q4_0 ? k->matvec_q4_0
          : w->type == SB_Q5 ? k->matvec_q5 : k->matvec_q6;
        if (!f) f = w->type == SB_Q5 ? matvec_q5_generic : matvec_q6_generic;
        data = (size_t)r0 * n * sb_type_bits(w->type) / 8;
        scales = (size_t)r0 * (n / SB_QK) * sizeof(uint16_t);
        break;
    case SB_Q4_ROW:
    case SB_Q8_ROW:
        if (w->type == SB_Q4_ROW) {
            f = k->matvec_q4_row ? k->matvec_q4_row : sb_matvec_q4_row_generic;
        } else {
            f = k->matvec_q8_row ? k->matvec_q8_row : sb_matvec_q8_row_generic;
        }
        data = (size_t)r0 * n * sb_type_bits(w->type) / 8;
        scales = (size_t)r0 * sizeof(uint16_t);
        break;
    default:
        return;
    }
    f(out + r0, s->q, s->s, s->sum, (const char *)w->data + data,
      (const char *)w->scales + scales, n, r1 - r0, w->group_size);
}

/* Rows [r0, r1) of out = W @ x for SB_F32_ROWS: only small models have such matrices
 * (an inner dimension that is not whole groups), so a plain loop does. */
void sb_matvec_f32_rows(float *out, const float *x, const sb_matrix *w, int r0, int r1) {
    const float *p = (const float *)w->data + (size_t)r0 * w->cols;
    for (int i = r0; i < r1; i++, p += w->cols) {
        float val = 0.0f;
        for (int j = 0; j < w->cols; j++) val += p[j] * x[j];
        out[i] = val;
    }
}

void sb_dequantize_row(const sb_matrix *w, int row, float *out) {
    int n = w->cols, ng = n / SB_QK, lane = row % SB_QK;
    size_t blk = (size_t)(row / SB_QK) * ng; // first (block, group) of this row
    if (w->type == SB_F32_ROWS) {
        memcpy(out, (const float *)w->data + (size_t)row * n, sizeof(float) * (size_t)n);
        return;
    }
    if (w->type == SB_Q8_ROWS) {
        const int8_t *q = (const int8_t *)w->data + (size_t)row * n;
        const float *s = (const float *)w->scales + (size_t)row * (n / w->group_size);
        for (int j = 0; j < n; j++) out[j] = (float)q[j] * s[j / w->group_size];
        return;
    }
    const uint16_t *scales = w->scales;
    int bits = sb_type_bits(w->type), k = bits - 4;
    for (int g = 0; g < ng; g++) {
        // the row-scaled types: one scale per row, at [32 * block + lane]
        size_t at = sb_row_scaled(w->type) ? (size_t)row : (blk + g) * SB_QK + lane;
        float s = sb_f16_to_f32(scales[at]);
        if (w->type == SB_Q5 || w->type == SB_Q6) {
            const uint8_t *q = (const uint8_t *)w->data + (blk + g) * SB_QK * SB_QK * bits / 8;
            for (int j = 0; j < SB_QK; j++) {
                int lo = (q[(j % 16) * SB_QK + lane] >> (j < 16 ? 0 : 4)) & 15;
                int hi = q[(16 + j % (4 * k)) * SB_QK + lane] >> (k * (j / (4 * k)));
                int u = lo | ((hi & ((1 << k) - 1)) << 4);
                out[g * SB_QK + j] = (float)(u - (1 << (bits - 1))) * s;
            }
        } else if (w->type == SB_Q8_0 || w->type == SB_Q8_ROW) {
            const int8_t *q = (const int8_t *)w->data + (blk + g) * SB_QK * SB_QK + lane;
            for (int j = 0; j < SB_QK; j++) out[g * SB_QK + j] = (float)q[j * SB_QK] * s;
        } else {
            const uint8_t *q = (const uint8_t *)w->data + (blk + g) * SB_QK * SB_QK / 2 + lane;
            for (int p = 0; p < SB_QK / 2; p++) {
                uint8_t byte = q[p * SB_QK];
                out[g * SB_QK + 2 * p] = (float)((byte & 15) - 8) * s;
                out[g * SB_QK + 2 * p + 1] = (float)((byte >> 4) - 8) * s;
            }
        }
    }
}

// ----------------------------------------------------------------------------
// test hooks (testhooks.h): every kernel set of this CPU, by name, on caller's data

static const sb_qkernel_set *find_set(const char *name) {
    const sb_qkernel_set *sets[8];
    int n = sb_qkernels_all(sets, 8);
    for (int i = 0; i < n; i++) {
        if (strcmp(sets[i]->name, name) == 0) return sets[i];
    }
    return NULL;
}

int sb_test_qkernels(char *buf, size_t len) {
    const sb_qkernel_set *sets[8];
    int n = sb_qkernels_all(sets, 8);
    size_t at = 0;
    if (len) buf[0] = '\0';
    for (int i = 0; i < n && at < len; i++) {
        int k = snprintf(buf + at, len - at, "%s%s", i ? "," : "", sets[i]->name);
        if (k < 0) break;
        at += (size_t)k;
    }
    return n;
}

int sb_test_quantize_q8(const char *kernels, int8_t *xq, float *xs, int32_t *xsum,
                        const float *x, int n) {
    const sb_qkernel_set *k = find_set(kernels);
    if (!k || n <= 0 || n % SB_QK) return -1;
    k->quantize_q8(xq, xs, xsum, x, n);
    return 0;
}

int sb_test_qmatvec(const char *kernels, int type, float *out, const int8_t *xq,
                    const float *xs, const int32_t *xsum, const void *w, const void *ws,
                    int n, int d, int gs) {
    const sb_qkernel_set *k = find_set(kernels);
    if (!k || n <= 0 || d <= 0 || n % SB_QK || gs <= 0 || gs % SB_QK || n % gs) return -1;
    sb_qmatvec_fn f = type == SB_Q8_0 ? k->matvec_q8_0 : type == SB_Q4_0 ? k->matvec_q4_0
                    : type == SB_Q8_ROWS ? k->matvec_q8_rows : type == SB_Q5 ? k->matvec_q5
                    : type == SB_Q6 ? k->matvec_q6 : type == SB_Q8_ROW ? k->matvec_q8_row
                    : NULL;
    if (!f && (type == SB_Q5 || type == SB_Q6)) return -2; // this set has no such kernel
    if (!f) return -1;
    f(out, xq, xs, xsum, w, ws, n, d, gs);
    return 0;
}

int sb_test_f16(const char *kernels, int op, float *out, const float *a, const void *b,
                int head_size, int stride, int n) {
    const sb_qkernel_set *k = find_set(kernels);
    if (!k) return -1;
    switch (op) {
    case 0: k->f16_store((uint16_t *)out, a, n); return 0;
    case 1: k->f16_scores(out, a, b, head_size, stride, n); return 0;
    case 2: k->f16_mix(out, a, b, head_size, stride, n); return 0;
    }
    return -1;
}
