/* forward.c: one position through the transformer (Llama 2 architecture).
 *
 * The arithmetic is the reference's, operation for operation and in the same order, so
 * that fp32 logits match it to the last bit. Where this file differs in shape it is for
 * speed without changing a result: the key cache is stored transposed so attention scores
 * are computed for all positions at once, RoPE's sines and cosines are computed once per
 * position instead of once per layer, and the classifier is skipped for prompt positions.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "pool.h"

// ----------------------------------------------------------------------------
// state

sb_status sb_state_init(sb_state *s, const sb_config *c, int n_threads,
                        const sb_qkernel_set *kv_fp16, char *err) {
    memset(s, 0, sizeof(*s));
    size_t cache = (size_t)c->n_layers * (size_t)c->seq_len * (size_t)c->kv_dim;
    size_t wide = (size_t)(c->dim > c->hidden_dim ? c->dim : c->hidden_dim);
    size_t groups = (wide + SB_QK - 1) / SB_QK;
    size_t cache_floats = kv_fp16 ? (cache + 1) / 2 : cache; // halves pack two per float
    size_t sizes[] = {c->dim, c->dim, c->dim, c->hidden_dim, c->hidden_dim, c->dim, c->kv_dim,
                      c->kv_dim, (size_t)c->n_heads * c->seq_len, c->vocab_size, cache_floats,
                      cache_floats, c->head_size / 2, c->head_size / 2, c->head_size / 2,
                      (wide + 3) / 4, groups, groups};
    float *qx_q = NULL, *qx_s = NULL, *qx_sum = NULL;
    float **slots[] = {&s->x, &s->xb, &s->xb2, &s->hb, &s->hb2, &s->q, &s->k, &s->v, &s->att,
                       &s->logits, &s->key_cache, &s->value_cache, &s->rope_freq, &s->rope_cos,
                       &s->rope_sin, &qx_q, &qx_s, &qx_sum};
    size_t n = sizeof(sizes) / sizeof(sizes[0]), total = 0;
    for (size_t i = 0; i < n; i++) total += (sizes[i] + 15) & ~(size_t)15; // 64-byte aligned slots
    if (posix_memalign(&s->block, 64, total * sizeof(float)) != 0) {
        s->block = NULL;
        return sb_fail(err, SB_ERR_NOMEM, "out of memory for %zu MB of activations and KV cache",
                       total * sizeof(float) >> 20);
    }
    memset(s->block, 0, total * sizeof(float));
    float *p = s->block;
    for (size_t i = 0; i < n; i++) {
        *slots[i] = p;
        p += (sizes[i] + 15) & ~(size_t)15;
    }
    s->qx = (sb_state_q){(int8_t *)qx_q, qx_s, (int32_t *)qx_sum};
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

/* One head's attention at pos. kt: this head's keys (head_size, seq_len), transposed;
 * vals: the layer's values (seq_len, kv_dim) from this head's offset. */
static void attend(const sb_kernel_set *k, float *out, const float *q, float *att,
                   const float *kt, const float *vals, int head_size, int kv_dim, int seq_len,
                   int pos) {
    // scores: every t accumulates over i in the reference's order, all t at once
    memset(att, 0, sizeof(float) * (size_t)(pos + 1));
    for (int i = 0; i < head_size; i++) k->axpy_f32(att, q[i], kt + (size_t)i * seq_len, pos + 1);
    float scale = sqrtf((float)head_size);
    for (int t = 0; t <= pos; t++) att[t] /= scale;
    sb_softmax(att, pos + 1);
    memset(out, 0, sizeof(float) * (size_t)head_size);
    for (int t = 0; t <= pos; t++) k->axpy_f32(out, att[t], vals + (size_t)t * kv_dim, head_size);
}

/* With kv_fp16: stores k and v at pos in the half caches (same layout as the fp32 ones)
 * and runs every head's attention as attend() does, the kernels converting on the fly. */
static void attend_layer_f16(sb_state *s, const sb_config *c, size_t loff, int pos) {
    int hs = c->head_size, kvd = c->kv_dim, kv_mul = c->n_heads / c->n_kv_heads;
    uint16_t *kc = s->key_cache_h + loff, *vc = s->value_cache_h + loff;
    for (int i = 0; i < kvd; i++) kc[(size_t)i * c->seq_len + pos] = sb_f32_to_f16(s->k[i]);
    s->f16->f16_store(vc + (size_t)pos * kvd, s->v, kvd);
    float scale = sqrtf((float)hs);
    for (int h = 0; h < c->n_heads; h++) {
        float *att = s->att + (size_t)h * c->seq_len;
        int kvh = h / kv_mul;
        s->f16->f16_scores(att, s->q + (size_t)h * hs, kc + (size_t)kvh * hs * c->seq_len, hs,
                           c->seq_len, pos + 1);
        for (int t = 0; t <= pos; t++) att[t] /= scale;
        sb_softmax(att, pos + 1);
        s->f16->f16_mix(s->xb + (size_t)h * hs, att, vc + (size_t)kvh * hs, hs, kvd, pos + 1);
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
    case SB_Q8_ROWS:
        sb_matvec_quant_rows(m, qx, out, w, r0, r1);
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

void sb_matvec(const sb_model *m, sb_state *s, float *out, const float *x, const sb_matrix *w) {
    if (w->type != SB_F32) sb_quantize_input(m, &s->qx, x, w->cols);
    if (!s->pool) {
        matvec_rows(m, &s->qx, out, x, w, 0, w->rows);
        return;
    }
    matvec_job job = {m, &s->qx, out, x, w};
    sb_pool_run(s->pool, matvec_part, &job);
}

void sb_forward(const sb_model *m, sb_state *s, int token, int pos, int want_logits) {
    const sb_config *c = &m->cfg;
    int dim = c->dim, hid = c->hidden_dim, kvd = c->kv_dim, hs = c->head_size;
    int kv_mul = c->n_heads / c->n_kv_heads; // query heads per key/value head
    float *x = s->x;

    sb_model_embed(m, token, x);
    rope_angles(s, hs, pos);

    for (int l = 0; l < c->n_layers; l++) {
        size_t loff = (size_t)l * c->seq_len * kvd; // this layer's slice of each cache

        rmsnorm(s->xb, x, m->rms_att + (size_t)l * dim, dim);
        sb_matvec(m, s, s->q, s->xb, &m->wq[l]);
        sb_matvec(m, s, s->k, s->xb, &m->wk[l]);
        sb_matvec(m, s, s->v, s->xb, &m->wv[l]);
        rope(s->q, dim, hs, s->rope_cos, s->rope_sin);
        rope(s->k, kvd, hs, s->rope_cos, s->rope_sin);

        if (s->key_cache_h) {
            attend_layer_f16(s, c, loff, pos);
        } else {
            // store k transposed per head, v as is
            float *kc = s->key_cache + loff;
            for (int i = 0; i < kvd; i++) {
                kc[((size_t)(i / hs) * hs + i % hs) * c->seq_len + pos] = s->k[i];
            }
            memcpy(s->value_cache + loff + (size_t)pos * kvd, s->v, sizeof(float) * (size_t)kvd);

            for (int h = 0; h < c->n_heads; h++) {
                int kvh = h / kv_mul;
                attend(m->kernels, s->xb + (size_t)h * hs, s->q + (size_t)h * hs,
                       s->att + (size_t)h * c->seq_len, kc + (size_t)kvh * hs * c->seq_len,
                       s->value_cache + loff + (size_t)kvh * hs, hs, kvd, c->seq_len, pos);
            }
        }

        sb_matvec(m, s, s->xb2, s->xb, &m->wo[l]);
        for (int i = 0; i < dim; i++) x[i] += s->xb2[i];

        // ffn: w2(silu(w1(x)) * w3(x))
        rmsnorm(s->xb, x, m->rms_ffn + (size_t)l * dim, dim);
        sb_matvec(m, s, s->hb, s->xb, &m->w1[l]);
        sb_matvec(m, s, s->hb2, s->xb, &m->w3[l]);
        for (int i = 0; i < hid; i++) {
            float val = s->hb[i];
            val *= 1.0f / (1.0f + expf(-val));
            val *= s->hb2[i];
            s->hb[i] = val;
        }
        sb_matvec(m, s, s->xb, s->hb, &m->w2[l]);
        for (int i = 0; i < dim; i++) x[i] += s->xb[i];
    }

    if (!want_logits) return;
    rmsnorm(x, x, m->rms_final, dim);
    sb_matvec(m, s, s->logits, x, &m->wcls);
}
