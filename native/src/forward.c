/* forward.c: one position through the transformer (Llama 2 architecture).
 *
 * The arithmetic is the reference's, operation for operation and in the same order, so
 * that fp32 logits match it to the last bit. Where this file differs in shape it is for
 * speed without changing a result: each head's keys and values are stored contiguously
 * (read as streams), the keys transposed in tiles so that scores are computed for many
 * positions at once; RoPE's sines and cosines are computed once per position instead of
 * once per layer; and the classifier is skipped for prompt positions.
 *
 * A run that need not be exact (sb_exact: quantized weights or a half KV cache) takes
 * the fast kernels for the attention's softmax and the SwiGLU gate instead.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pool.h"

// ----------------------------------------------------------------------------
// state

/* Positions the caches hold: seq_len rounded up to whole key tiles. */
static size_t cache_positions(const sb_config *c) {
    return ((size_t)c->seq_len + SB_KV_TILE - 1) / SB_KV_TILE * SB_KV_TILE;
}

sb_status sb_state_init(sb_state *s, const sb_config *c, int n_threads,
                        const sb_qkernel_set *kv_fp16, size_t budget, char *err) {
    memset(s, 0, sizeof(*s));
    size_t cache = (size_t)c->n_layers * cache_positions(c) * (size_t)c->kv_dim;
    size_t wide = (size_t)(c->dim > c->hidden_dim ? c->dim : c->hidden_dim);
    size_t groups = (wide + SB_QK - 1) / SB_QK;
    size_t cache_floats = kv_fp16 ? (cache + 1) / 2 : cache; // halves pack two per float
    size_t sizes[] = {c->dim, c->dim, c->dim, c->hidden_dim, c->hidden_dim, c->hidden_dim,
                      c->dim, c->kv_dim, c->kv_dim, (size_t)c->n_heads * c->seq_len,
                      c->vocab_size, cache_floats, cache_floats, c->head_size / 2,
                      c->head_size / 2, c->head_size / 2, (wide + 3) / 4, groups, groups, SB_RESCORE_ROWS,
                      // a row block at up to 8 bits with fp16 scales (sb_block_bytes)
                      ((size_t)SB_QK * c->dim + 2 * (size_t)c->dim + 3) / 4};
    float *qx_q = NULL, *qx_s = NULL, *qx_sum = NULL, *rescore = NULL, *cls_block = NULL;
    float **slots[] = {&s->x, &s->xb, &s->xb2, &s->hb, &s->hb2, &s->ex, &s->q, &s->k, &s->v,
                       &s->att, &s->logits, &s->key_cache, &s->value_cache, &s->rope_freq,
                       &s->rope_cos, &s->rope_sin, &qx_q, &qx_s, &qx_sum, &rescore,
                       &cls_block};
    size_t n = sizeof(sizes) / sizeof(sizes[0]), total = 0;
    for (size_t i = 0; i < n; i++) total += (sizes[i] + 15) & ~(size_t)15; // 64-byte aligned slots
    if (total > budget / sizeof(float)) {
        return sb_fail(err, SB_ERR_NOMEM, "the KV cache and activations need %zu MiB (seq_len "
                       "%d), more than the %zu MiB the memory limit leaves",
                       total * sizeof(float) >> 20, c->seq_len, budget >> 20);
    }
    s->block = sb_alloc_streamed(total * sizeof(float));
    if (!s->block) {
        return sb_fail(err, SB_ERR_NOMEM, "out of memory for %zu MB of activations and KV cache",
                       total * sizeof(float) >> 20);
    }
    s->block_bytes = total * sizeof(float);
    memset(s->block, 0, s->block_bytes);
    float *p = s->block;
    for (size_t i = 0; i < n; i++) {
        *slots[i] = p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    s->qx = (sb_state_q){(int8_t *)qx_q, qx_s, (int32_t *)qx_sum};
    s->rescore = (int *)rescore;
    s->cls_block = (unsigned char *)cls_block;
    if (kv_fp16) {
        s->key_cache_h = (uint16_t *)s->key_cache;
        s->value_cache_h = (uint16_t *)s->value_cache;
        s->key_cache = s->value_cache = NULL;
        s->f16 = kv_fp16;
    }
    for (int i = 0; i < c->head_size; i += 2) {
        s->rope_freq[i / 2] = 1.0f / powf(10000.0f, (float)i / (float)c->head_size);
    }
    s->pool = sb_pool_new(n_threads); // NULL (one thread) is fine too
    return SB_OK;
}

void sb_state_free(sb_state *s) {
    sb_pool_free(s->pool);
    free(s->block);
    memset(s, 0, sizeof(*s));
}

// ----------------------------------------------------------------------------
// blocks

static void rmsnorm(float *o, const float *x, const float *weight, int size) {
    float ss = 0.0f;
    for (int j = 0; j < size; j++) ss += x[j] * x[j];
    ss /= (float)size;
    ss += 1e-5f;
    ss = 1.0f / sqrtf(ss);
    for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
}

static void rope_angles(sb_state *s, int head_size, int pos) {
    for (int i = 0; i < head_size / 2; i++) {
        float val = (float)pos * s->rope_freq[i];
        s->rope_cos[i] = cosf(val);
        s->rope_sin[i] = sinf(val);
    }
}

/* Rotates each (even, odd) pair of vec (n,) by the angle of its place in its head. */
static void rope(float *vec, int n, int head_size, const float *fcr, const float *fci) {
    for (int h = 0; h < n; h += head_size) {
        float *v = vec + h;
        for (int i = 0; i < head_size; i += 2) {
            float v0 = v[i], v1 = v[i + 1];
            v[i] = v0 * fcr[i / 2] - v1 * fci[i / 2];
            v[i + 1] = v0 * fci[i / 2] + v1 * fcr[i / 2];
        }
    }
}

/* att (n,) -> softmax(att / sqrt(head_size)); returns the factor the mix of the values
 * still needs: exact, the reference's steps and 1; fast, unnormalized exps and 1 / their
 * sum, applied to the head_size outputs rather than the n weights. */
static float softmax_scores(const sb_kernel_set *k, int exact, float *att, int head_size,
                            int n) {
    float scale = sqrtf((float)head_size);
    if (!exact) return 1.0f / k->exp_sum(att, att, n, k->max_n(att, n), 1.0f / scale);
    for (int t = 0; t < n; t++) att[t] /= scale;
    sb_softmax(k, att, n);
    return 1.0f;
}

static void normalize(float *out, int head_size, float factor) {
    if (factor == 1.0f) return;
    for (int i = 0; i < head_size; i++) out[i] *= factor;
}

/* One head's attention over positions [0, n): keys and values are this head's slices
 * of the caches (see sb_state); the scores are computed tile by tile. */
static void attend(const sb_kernel_set *k, int exact, float *out, const float *q, float *att,
                   const float *keys, const float *vals, int head_size, int n) {
    for (int t = 0; t < n; t += SB_KV_TILE) {
        k->attn_scores_f32(att + t, q, keys + (size_t)t * head_size, head_size, SB_KV_TILE,
                           n - t < SB_KV_TILE ? n - t : SB_KV_TILE);
    }
    float factor = softmax_scores(k, exact, att, head_size, n);
    k->attn_mix_f32(out, att, vals, head_size, head_size, n);
    normalize(out, head_size, factor);
}

/* The same with kv_fp16 (never exact): the kernels convert the half caches on the fly. */
static void attend_f16(const sb_kernel_set *fk, const sb_qkernel_set *k, float *out,
                       const float *q, float *att, const uint16_t *keys,
                       const uint16_t *vals, int head_size, int n) {
    for (int t = 0; t < n; t += SB_KV_TILE) {
        k->f16_scores(att + t, q, keys + (size_t)t * head_size, head_size, SB_KV_TILE,
                      n - t < SB_KV_TILE ? n - t : SB_KV_TILE);
    }
    float factor = softmax_scores(fk, 0, att, head_size, n);
    k->f16_mix(out, att, vals, head_size, head_size, n);
    normalize(out, head_size, factor);
}

/* Stores k and v at pos in layer l's caches and runs every head's attention into s->xb;
 * exact as sb_forward decided it. */
static void attend_layer(const sb_model *m, sb_state *s, int l, int pos, int exact) {
    const sb_config *c = &m->cfg;
    int hs = c->head_size, kv_mul = c->n_heads / c->n_kv_heads; // query heads per kv head
    size_t head_floats = cache_positions(c) * (size_t)hs; // one head's slice of a cache
    size_t loff = (size_t)l * c->n_kv_heads * head_floats;
    size_t kpos = (size_t)(pos / SB_KV_TILE) * SB_KV_TILE * hs + pos % SB_KV_TILE;
    for (int h = 0; h < c->n_kv_heads; h++) {
        size_t hoff = loff + (size_t)h * head_floats;
        const float *k = s->k + (size_t)h * hs, *v = s->v + (size_t)h * hs;
        if (s->key_cache_h) {
            // keys converted by the set's (vector) store a chunk at a time, then placed
            // along their tile: a scalar conversion costs the C906 ~20 instructions
            uint16_t kh[64];
            for (int i0 = 0; i0 < hs; i0 += 64) {
                int nk = hs - i0 < 64 ? hs - i0 : 64;
                s->f16->f16_store(kh, k + i0, nk);
                for (int i = 0; i < nk; i++) {
                    s->key_cache_h[hoff + kpos + (size_t)(i0 + i) * SB_KV_TILE] = kh[i];
                }
            }
            s->f16->f16_store(s->value_cache_h + hoff + (size_t)pos * hs, v, hs);
        } else {
            for (int i = 0; i < hs; i++) s->key_cache[hoff + kpos + (size_t)i * SB_KV_TILE] = k[i];
            memcpy(s->value_cache + hoff + (size_t)pos * hs, v, sizeof(float) * (size_t)hs);
        }
    }
    for (int h = 0; h < c->n_heads; h++) {
        size_t hoff = loff + (size_t)(h / kv_mul) * head_floats;
        float *out = s->xb + (size_t)h * hs, *att = s->att + (size_t)h * c->seq_len;
        const float *q = s->q + (size_t)h * hs;
        if (s->key_cache_h) {
            attend_f16(m->kernels, s->f16, out, q, att, s->key_cache_h + hoff,
                       s->value_cache_h + hoff, hs, pos + 1);
        } else {
            attend(m->kernels, exact, out, q, att, s->key_cache + hoff,
                   s->value_cache + hoff, hs, pos + 1);
        }
    }
}

// ----------------------------------------------------------------------------
// forward

/* Rows [r0, r1) of out = W @ x; r0 starts a block of W's layout. A quantized W takes
 * x from qx, quantized once for all threads. */
static void matvec_rows(const sb_model *m, const sb_state_q *qx, float *out, const float *x,
                        const sb_matrix *w, int r0, int r1) {
    switch (w->type) {
    case SB_F32:
        m->kernels->matvec_f32(out + r0, x, (const float *)w->data + (size_t)r0 * w->cols,
                               w->cols, r1 - r0);
        break;
    case SB_Q8_0:
    case SB_Q4_0:
    case SB_Q5:
    case SB_Q6:
    case SB_Q8_ROWS:
    case SB_Q4_ROW:
    case SB_Q8_ROW:
        sb_matvec_quant_rows(m, qx, out, w, r0, r1);
        break;
    case SB_F32_ROWS:
        sb_matvec_f32_rows(out, x, w, r0, r1);
        break;
    }
}

typedef struct {
    const sb_model *m;
    const sb_state_q *qx;
    float *out;
    const float *x;
    const sb_matrix *w;
} matvec_job;

/* Thread `index` of `count` takes an equal share of whole blocks. */
static void matvec_part(void *arg, int index, int count) {
    const matvec_job *j = arg;
    int block = j->w->type == SB_F32 ? j->m->kernels->f32_rows : SB_QK;
    int blocks = (j->w->rows + block - 1) / block;
    int r0 = blocks * index / count * block;
    int r1 = blocks * (index + 1) / count * block;
    if (r1 > j->w->rows) r1 = j->w->rows;
    if (r1 > r0) matvec_rows(j->m, j->qx, j->out, j->x, j->w, r0, r1);
}

/* sb_matvec; ready: s->qx already holds x quantized (an earlier product of the same x,
 * as q, k and v share one). Returns whether s->qx holds x now. */
static int matvec_q(const sb_model *m, sb_state *s, float *out, const float *x,
                    const sb_matrix *w, int ready) {
    SB_REGION(22);
    int quantized = w->type != SB_F32 && w->type != SB_F32_ROWS;
    if (quantized && !ready) sb_quantize_input(m, &s->qx, x, w);
    if (!s->pool) {
        matvec_rows(m, &s->qx, out, x, w, 0, w->rows);
    } else {
        matvec_job job = {m, &s->qx, out, x, w};
        sb_pool_run(s->pool, matvec_part, &job);
    }
    SB_REGION(23);
    return ready || quantized;
}

void sb_matvec(const sb_model *m, sb_state *s, float *out, const float *x, const sb_matrix *w) {
    matvec_q(m, s, out, x, w, 0);
}

/* The draft classifier's second pass: the row blocks holding a logit within delta of
 * the draft's largest are scored again from wcls, from x quantized as wcls takes it (an
 * SB_Q4_ROW draft took it with one scale, as an SB_Q8_ROW classifier does). The other rows keep their draft logits: at
 * delta 6 their probabilities are each under e^-6 of the top's, and on the eval text the
 * mix scores as the full classifier does (twopass.c). */
static void rescore(const sb_model *m, sb_state *s, const float *x) {
    const sb_kernel_set *k = m->kernels;
    int v = m->cfg.vocab_size, n = 0, blocks[SB_RESCORE_BLOCKS], nb = 0;
    float top = k->max_n(s->logits, v), delta = SB_RESCORE_DELTA;
    for (int tries = 0; tries < 12; tries++, delta *= 0.5f) { // ties aside, the top row fits
        n = k->select_ge(s->rescore, s->logits, v, top - delta, SB_RESCORE_ROWS);
        nb = 0;
        for (int i = 0; i < n && nb <= SB_RESCORE_BLOCKS; i++) {
            int b = s->rescore[i] / SB_QK;
            if (nb == 0 || blocks[nb - 1] != b) {
                if (nb < SB_RESCORE_BLOCKS) blocks[nb] = b;
                nb++;
            }
        }
        if (n < SB_RESCORE_ROWS && nb <= SB_RESCORE_BLOCKS) break;
    }
    if (nb > SB_RESCORE_BLOCKS) nb = SB_RESCORE_BLOCKS; // only ties get here: the first blocks
    if (sb_row_scaled(m->draft.type) != sb_row_scaled(m->wcls.type)) {
        sb_quantize_input(m, &s->qx, x, &m->wcls);
    }
    for (int i = 0; i < nb; i++) {
        sb_matrix blk;
        int e = sb_read_block(m, blocks[i], s->cls_block, &blk);
        if (e) {
            s->read_error = e; // the block keeps its draft logits; storybot.c reports it
            continue;
        }
        sb_matvec_quant_rows(m, &s->qx, s->logits + blocks[i] * SB_QK, &blk, 0, blk.rows);
    }
}

/* x = token's embedding; from its row block read from the file when the classifier (the
 * shared embedding) is read by blocks. */
static void embed(const sb_model *m, sb_state *s, int token, float *x) {
    if (!m->draft.data || !m->cfg.shared) {
        sb_model_embed(m, token, x);
        return;
    }
    sb_matrix blk;
    int e = sb_read_block(m, token / SB_QK, s->cls_block, &blk);
    if (e) {
        s->read_error = e;
        memset(x, 0, sizeof(float) * (size_t)m->cfg.dim); // reported before any logit is used
        return;
    }
    sb_dequantize_row(&blk, token % SB_QK, x);
}

void sb_forward(const sb_model *m, sb_state *s, int token, int pos, int want_logits) {
    const sb_config *c = &m->cfg;
    int dim = c->dim, hid = c->hidden_dim, kvd = c->kv_dim, hs = c->head_size;
    float *x = s->x;
    int exact = sb_exact(m, s->key_cache_h != NULL);

    embed(m, s, token, x);
    rope_angles(s, hs, pos);

    for (int l = 0; l < c->n_layers; l++) {
        rmsnorm(s->xb, x, m->rms_att + (size_t)l * dim, dim);
        int ready = matvec_q(m, s, s->q, s->xb, &m->wq[l], 0);
        ready = matvec_q(m, s, s->k, s->xb, &m->wk[l], ready);
        matvec_q(m, s, s->v, s->xb, &m->wv[l], ready);
        rope(s->q, dim, hs, s->rope_cos, s->rope_sin);
        rope(s->k, kvd, hs, s->rope_cos, s->rope_sin);
        SB_REGION(24);
        attend_layer(m, s, l, pos, exact);
        SB_REGION(25);

        sb_matvec(m, s, s->xb2, s->xb, &m->wo[l]);
        for (int i = 0; i < dim; i++) x[i] += s->xb2[i];

        // ffn: w2(silu(w1(x)) * w3(x))
        rmsnorm(s->xb, x, m->rms_ffn + (size_t)l * dim, dim);
        ready = matvec_q(m, s, s->hb, s->xb, &m->w1[l], 0);
        matvec_q(m, s, s->hb2, s->xb, &m->w3[l], ready);
        if (exact) {
            for (int i = 0; i < hid; i++) s->ex[i] = -s->hb[i];
            m->kernels->expf_n(s->ex, s->ex, hid);
            for (int i = 0; i < hid; i++) {
                float val = s->hb[i];
                val *= 1.0f / (1.0f + s->ex[i]);
                val *= s->hb2[i];
                s->hb[i] = val;
            }
        } else {
            m->kernels->swiglu(s->hb, s->hb2, hid);
        }
        sb_matvec(m, s, s->xb, s->hb, &m->w2[l]);
        for (int i = 0; i < dim; i++) x[i] += s->xb[i];
    }

    if (!want_logits) return;
    rmsnorm(x, x, m->rms_final, dim);
    SB_REGION(20);
    if (m->draft.data) {
        sb_matvec(m, s, s->logits, x, &m->draft);
        rescore(m, s, x);
    } else {
        sb_matvec(m, s, s->logits, x, &m->wcls);
    }
    SB_REGION(21);
}
