/* storybot.c: the public API: a context that tells one story at a time, token by token. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct sb_context {
    sb_model model;
    sb_tokenizer tokenizer;
    sb_sampler sampler;
    sb_state state;
    sb_params params;
    int *prompt;         // BOS + prompt tokens
    int n_prompt;
    int steps;           // positions this story may use
    int pos;             // next position to run
    int token;           // token to feed at pos
    int started, finished;
    atomic_int stop;     // set by sb_stop, possibly from another thread
    char byte_buf[2];
    char err[SB_ERR_LEN];
};

sb_status sb_fail(char *err, sb_status status, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, SB_ERR_LEN, fmt, ap);
        va_end(ap);
    }
    return status;
}

sb_params sb_default_params(void) {
    sb_params p = {
        .temperature = 1.0f,
        .topp = 0.9f,
        .seed = 1,
        .steps = 256,
        .n_threads = 1,
        .kernels = SB_KERNELS_AUTO,
        .kv_fp16 = -1,
    };
    return p;
}

static sb_status check_params(const sb_params *p, char *err) {
    if (!p) return sb_fail(err, SB_ERR_ARG, "params is NULL");
    if (!(p->temperature >= 0.0f) || isinf(p->temperature)) {
        return sb_fail(err, SB_ERR_ARG, "temperature %g must be a finite number >= 0",
                       (double)p->temperature);
    }
    if (!(p->topp >= 0.0f && p->topp <= 1.0f)) {
        return sb_fail(err, SB_ERR_ARG, "top-p %g must be in [0, 1]", (double)p->topp);
    }
    if (p->steps < 0) return sb_fail(err, SB_ERR_ARG, "steps %d must be >= 0", p->steps);
    if (p->n_threads < 0 || p->n_threads > 256) {
        return sb_fail(err, SB_ERR_ARG, "n_threads %d must be in [0, 256]", p->n_threads);
    }
    if (p->seed == 0) {
        return sb_fail(err, SB_ERR_ARG, "seed must not be 0 (xorshift would stay at 0)");
    }
    if (p->kernels != SB_KERNELS_AUTO && p->kernels != SB_KERNELS_GENERIC) {
        return sb_fail(err, SB_ERR_ARG, "unknown kernel choice %d", (int)p->kernels);
    }
    if (p->kv_fp16 < -1 || p->kv_fp16 > 1) {
        return sb_fail(err, SB_ERR_ARG, "kv_fp16 %d must be -1, 0 or 1", p->kv_fp16);
    }
    return SB_OK;
}

// ----------------------------------------------------------------------------
// open / free

/* A quantized model is not exact anyway: its KV cache defaults to half precision
 * (half the memory, perplexity unchanged, see the README) where the kernels convert
 * halves in vector instructions. Elsewhere (RISC-V, the portable kernels) each half
 * costs a conversion in scalar code, which at the end of a story would cost the C906
 * more than the whole rest of a token, so the cache stays fp32 there. */
static int kv_half(const sb_params *p, const sb_model *m, const sb_qkernel_set *qk) {
    return p->kv_fp16 < 0 ? m->wcls.type != SB_F32 && qk->f16_vector : p->kv_fp16;
}

sb_status sb_open(const char *model_path, const char *tokenizer_path, const sb_params *params,
                  sb_context **out, char *err, size_t err_len) {
    char msg[SB_ERR_LEN] = "";
    sb_status s = SB_OK;
    sb_context *ctx = NULL;
    if (out) *out = NULL;
    if (!model_path || !tokenizer_path || !out) {
        s = sb_fail(msg, SB_ERR_ARG, "model path, tokenizer path and out must not be NULL");
    } else if ((s = check_params(params, msg)) == SB_OK) {
        ctx = calloc(1, sizeof(*ctx));
        if (!ctx) s = sb_fail(msg, SB_ERR_NOMEM, "out of memory for the context");
    }
    if (s == SB_OK) {
        ctx->params = *params;
        int generic = params->kernels == SB_KERNELS_GENERIC;
        const sb_kernel_set *k = sb_kernels_pick(generic);
        const sb_qkernel_set *qk = sb_qkernels_pick(generic);
        if ((s = sb_model_load(&ctx->model, model_path, k, msg)) == SB_OK
            && (s = sb_tokenizer_load(&ctx->tokenizer, tokenizer_path, ctx->model.cfg.vocab_size,
                                      msg)) == SB_OK
            && (s = sb_sampler_init(&ctx->sampler, ctx->model.cfg.vocab_size, k, msg)) == SB_OK
            && (s = sb_state_init(&ctx->state, &ctx->model.cfg, params->n_threads,
                                  kv_half(params, &ctx->model, qk) ? qk : NULL,
                                  msg)) == SB_OK) {
            sb_sampler_set(&ctx->sampler, params->temperature, params->topp, params->seed);
            *out = ctx;
        } else {
            sb_free(ctx);
        }
    }
    if (err && err_len) snprintf(err, err_len, "%s", s == SB_OK ? "" : msg);
    return s;
}

void sb_free(sb_context *ctx) {
    if (!ctx) return;
    sb_model_free(&ctx->model);
    sb_tokenizer_free(&ctx->tokenizer);
    sb_sampler_free(&ctx->sampler);
    sb_state_free(&ctx->state);
    free(ctx->prompt);
    free(ctx);
}

// ----------------------------------------------------------------------------
// a story

sb_status sb_start(sb_context *ctx, const char *prompt) {
    if (!ctx) return SB_ERR_ARG;
    if (!prompt) prompt = "";
    const sb_config *c = &ctx->model.cfg;
    size_t len = strlen(prompt);
    /* Every token covers at most max_token_length bytes, so a longer prompt cannot fit
     * the context; refusing it here also bounds the quadratic merge loop. */
    if (len / (size_t)ctx->tokenizer.max_token_length >= (size_t)c->seq_len) {
        return sb_fail(ctx->err, SB_ERR_ARG, "prompt of %zu bytes cannot fit the model's "
                       "context of %d tokens", len, c->seq_len);
    }
    int *tokens = malloc(sizeof(int) * (len + 2));
    if (!tokens) return sb_fail(ctx->err, SB_ERR_NOMEM, "out of memory for the prompt");
    int n = 0;
    sb_status s = sb_tokenizer_encode(&ctx->tokenizer, prompt, tokens, &n, ctx->err);
    if (s == SB_OK && n > c->seq_len) {
        s = sb_fail(ctx->err, SB_ERR_ARG, "prompt is %d tokens with BOS; the model's context "
                    "holds %d", n, c->seq_len);
    }
    if (s != SB_OK) {
        free(tokens);
        return s;
    }
    free(ctx->prompt);
    ctx->prompt = tokens;
    ctx->n_prompt = n;
    int steps = ctx->params.steps;
    ctx->steps = (steps == 0 || steps > c->seq_len) ? c->seq_len : steps;
    ctx->pos = 0;
    ctx->token = tokens[0];
    ctx->started = 1;
    ctx->finished = 0;
    atomic_store(&ctx->stop, 0);
    ctx->err[0] = '\0';
    return SB_OK;
}

sb_status sb_next(sb_context *ctx, sb_token *out) {
    if (!ctx || !out) return SB_ERR_ARG;
    if (!ctx->started) return sb_fail(ctx->err, SB_ERR_STATE, "sb_next before sb_start");
    *out = (sb_token){.id = -1, .pos = ctx->pos, .piece = ""};
    if (ctx->finished || atomic_load(&ctx->stop) || ctx->pos >= ctx->steps) {
        ctx->finished = 1;
        return SB_END;
    }
    int pos = ctx->pos;
    int forced = pos < ctx->n_prompt - 1;
    sb_forward(&ctx->model, &ctx->state, ctx->token, pos, !forced);
    int next = forced ? ctx->prompt[pos + 1] : sb_sample(&ctx->sampler, ctx->state.logits);
    ctx->pos = pos + 1;
    if (next == SB_BOS) { // BOS starts the next story: this one is over
        ctx->finished = 1;
        out->pos = ctx->pos;
        return SB_END;
    }
    out->id = next;
    out->pos = ctx->pos;
    out->piece = sb_tokenizer_decode(&ctx->tokenizer, ctx->token, next, ctx->byte_buf,
                                     &out->piece_len, &out->flags);
    if (forced) out->flags |= SB_PIECE_PROMPT;
    ctx->token = next;
    return SB_OK;
}

void sb_stop(sb_context *ctx) {
    if (ctx) atomic_store(&ctx->stop, 1);
}

sb_status sb_reset(sb_context *ctx, const sb_params *params) {
    if (!ctx) return SB_ERR_ARG;
    sb_status s = check_params(params, ctx->err);
    if (s != SB_OK) return s;
    if (params->kernels != ctx->params.kernels || params->n_threads != ctx->params.n_threads
        || params->kv_fp16 != ctx->params.kv_fp16) {
        return sb_fail(ctx->err, SB_ERR_ARG, "kernels, threads and the KV cache type are "
                       "chosen when the model is opened");
    }
    ctx->params = *params;
    sb_sampler_set(&ctx->sampler, params->temperature, params->topp, params->seed);
    ctx->started = 0;
    ctx->finished = 0;
    return SB_OK;
}

// ----------------------------------------------------------------------------
// scoring and information

sb_status sb_tokenize(sb_context *ctx, const char *text, int *tokens, int cap, int *n) {
    if (!ctx || !text || !tokens || !n || cap < 0) return SB_ERR_ARG;
    size_t len = strlen(text);
    int *tmp = malloc(sizeof(int) * (len + 2));
    if (!tmp) return sb_fail(ctx->err, SB_ERR_NOMEM, "out of memory for %zu tokens", len + 2);
    int count = 0;
    sb_status s = sb_tokenizer_encode(&ctx->tokenizer, text, tmp, &count, ctx->err);
    if (s == SB_OK && count > cap) {
        s = sb_fail(ctx->err, SB_ERR_ARG, "text is %d tokens; the buffer holds %d", count, cap);
    }
    if (s == SB_OK) {
        memcpy(tokens, tmp, sizeof(int) * (size_t)count);
        *n = count;
    }
    free(tmp);
    return s;
}

sb_status sb_score(sb_context *ctx, const int *tokens, int n, float *logprobs) {
    if (!ctx || !tokens || !logprobs || n < 1) return SB_ERR_ARG;
    const sb_config *c = &ctx->model.cfg;
    if (n > c->seq_len) {
        return sb_fail(ctx->err, SB_ERR_ARG, "%d tokens exceed the context of %d", n, c->seq_len);
    }
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) {
            return sb_fail(ctx->err, SB_ERR_ARG, "token %d at %d is outside the vocabulary",
                           tokens[i], i);
        }
    }
    float *logits = ctx->state.logits;
    for (int i = 0; i + 1 < n; i++) {
        sb_forward(&ctx->model, &ctx->state, tokens[i], i, 1);
        // log-softmax in double: a perplexity should not depend on float rounding
        double max = logits[0], sum = 0.0;
        for (int j = 1; j < c->vocab_size; j++) if (logits[j] > max) max = logits[j];
        for (int j = 0; j < c->vocab_size; j++) sum += exp((double)logits[j] - max);
        logprobs[i] = (float)((double)logits[tokens[i + 1]] - max - log(sum));
    }
    ctx->started = 0; // the cache now holds this sequence, not a story
    return SB_OK;
}

sb_status sb_model_info_get(const sb_context *ctx, sb_model_info *out) {
    if (!ctx || !out) return SB_ERR_ARG;
    const sb_config *c = &ctx->model.cfg;
    *out = (sb_model_info){
        .dim = c->dim, .hidden_dim = c->hidden_dim, .n_layers = c->n_layers,
        .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads, .vocab_size = c->vocab_size,
        .seq_len = c->seq_len, .shared_classifier = c->shared,
        .format = ctx->model.format ? ctx->model.format : "llama2c-fp32",
        .kernels = ctx->model.qkernels ? ctx->model.qkernels->name : ctx->model.kernels->name,
        .weight_bytes = ctx->model.weight_bytes, .kv_fp16 = ctx->state.key_cache_h != NULL,
    };
    return SB_OK;
}

const char *sb_last_error(const sb_context *ctx) {
    return ctx ? ctx->err : "no context";
}

const char *sb_status_name(sb_status status) {
    switch (status) {
    case SB_OK: return "ok";
    case SB_END: return "end";
    case SB_ERR_ARG: return "bad argument";
    case SB_ERR_IO: return "i/o error";
    case SB_ERR_FORMAT: return "bad file format";
    case SB_ERR_NOMEM: return "out of memory";
    case SB_ERR_STATE: return "call out of order";
    }
    return "unknown status";
}
