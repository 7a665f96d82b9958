/* storybot.c: the public API: a context that tells one story at a time, token by token. */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "testhooks.h"

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
    size_t spare;        // what the memory limit leaves after the buffers, for prompts
    int started, finished, stopped;
    uint64_t story;      // the number sb_start gave this story
    /* Stories numbered below this are stopped: sb_stop(N) raises it to N + 1, from any
     * thread, and it never falls, so a stop is kept for a story not started yet. */
    _Atomic uint64_t stop_below;
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
        .mem_limit = 0,
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

/* Reads the first number after `key` in a small text file; 0 if there is none. */
static uint64_t number_in(const char *path, const char *key) {
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    char line[256];
    uint64_t v = 0;
    size_t k = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, k) == 0) {
            v = strtoull(line + k, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* What the machine can give this process now: the least of physical RAM, the kernel's
 * MemAvailable (free memory plus what it can reclaim without swapping) and what the
 * process's cgroup (v2) still allows. A memset of more than that is the OOM killer. */
static size_t machine_memory(void) {
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    uint64_t best = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : UINT64_MAX;
    uint64_t avail = number_in("/proc/meminfo", "MemAvailable:") * 1024;
    if (avail && avail < best) best = avail;
    char group[200] = "", path[300];
    FILE *f = fopen("/proc/self/cgroup", "re");
    if (f) {
        if (!fgets(group, sizeof group, f) || strncmp(group, "0::", 3) != 0) group[0] = '\0';
        fclose(f);
    }
    group[strcspn(group, "\n")] = '\0';
    if (group[0]) {
        snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max", group + 3);
        uint64_t max = number_in(path, ""); // "max" (no limit) reads as 0
        snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.current", group + 3);
        uint64_t used = number_in(path, "");
        if (max) {
            uint64_t left = max > used ? max - used : 0;
            if (left < best) best = left;
        }
    }
    return best > SIZE_MAX ? SIZE_MAX : (size_t)best;
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
        size_t limit = params->mem_limit ? params->mem_limit : machine_memory();
        sb_model *m = &ctx->model;
        if ((s = sb_model_load(m, model_path, k, limit, msg)) == SB_OK
            && (s = sb_tokenizer_load(&ctx->tokenizer, tokenizer_path, m->cfg.vocab_size,
                                      msg)) == SB_OK
            && (s = sb_sampler_init(&ctx->sampler, m->cfg.vocab_size, k,
                                    sb_exact(m, kv_half(params, m, qk)),
                                    limit - m->packed_bytes, msg)) == SB_OK
            && (s = sb_state_init(&ctx->state, &m->cfg, params->n_threads,
                                  kv_half(params, m, qk) ? qk : NULL,
                                  limit - m->packed_bytes - sb_sampler_bytes(m->cfg.vocab_size),
                                  msg)) == SB_OK) {
            sb_sampler_set(&ctx->sampler, params->temperature, params->topp, params->seed);
            ctx->spare = limit - m->packed_bytes - sb_sampler_bytes(m->cfg.vocab_size)
                         - ctx->state.block_bytes;
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

/* Encodes text into *tokens (allocated here, BOS first) within the memory limit. */
static sb_status encode(sb_context *ctx, const char *text, int **tokens, int *n) {
    size_t len = strlen(text);
    if (len > (size_t)INT_MAX - 2 || sb_tokenizer_scratch(len) > ctx->spare) {
        return sb_fail(ctx->err, SB_ERR_NOMEM, "a text of %zu bytes needs %zu MiB to encode, "
                       "more than the %zu MiB the memory limit leaves", len,
                       sb_tokenizer_scratch(len) >> 20, ctx->spare >> 20);
    }
    if (!(*tokens = malloc(sizeof(int) * (len + 2)))) {
        return sb_fail(ctx->err, SB_ERR_NOMEM, "out of memory for %zu tokens", len + 2);
    }
    sb_status s = sb_tokenizer_encode(&ctx->tokenizer, text, *tokens, n, ctx->err);
    if (s != SB_OK) {
        free(*tokens);
        *tokens = NULL;
    }
    return s;
}

sb_status sb_start(sb_context *ctx, uint64_t story, const char *prompt) {
    if (!ctx) return SB_ERR_ARG;
    if (story == UINT64_MAX) {
        return sb_fail(ctx->err, SB_ERR_ARG, "story number 2^64 - 1 is sb_stop's \"all\"");
    }
    if (!prompt) prompt = "";
    const sb_config *c = &ctx->model.cfg;
    /* A prompt of more tokens than the context is run as far as the steps go (as
     * run.c): it is encoded whole, since a merge may join tokens across any cut. */
    int *tokens = NULL, n = 0;
    sb_status s = encode(ctx, prompt, &tokens, &n);
    if (s != SB_OK) return s;
    free(ctx->prompt);
    ctx->prompt = tokens;
    ctx->n_prompt = n;
    int steps = ctx->params.steps;
    ctx->steps = (steps == 0 || steps > c->seq_len) ? c->seq_len : steps;
    ctx->pos = 0;
    ctx->token = tokens[0];
    ctx->story = story;
    ctx->started = 1;
    ctx->finished = 0;
    ctx->stopped = 0;
    ctx->err[0] = '\0';
    return SB_OK;
}

/* NaN or Inf anywhere in the logits: a model with non-finite weights, or one whose
 * activations overflow. Sampling them would pick garbage (or nothing, in top-p). */
static sb_status check_logits(sb_context *ctx, int pos) {
    const float *logits = ctx->state.logits;
    if (ctx->state.read_error) { // a row block of the classifier (read by blocks) failed
        int e = ctx->state.read_error;
        ctx->state.read_error = 0;
        return sb_fail(ctx->err, SB_ERR_IO, "cannot read the classifier's rows from the model "
                       "file at position %d: %s", pos, strerror(e));
    }
    // in vectors first: this scan alone costs the C906 ~9 cycles a logit
    if (ctx->model.kernels->finite_n(logits, ctx->model.cfg.vocab_size)) return SB_OK;
    for (int i = 0; i < ctx->model.cfg.vocab_size; i++) {
        if (!isfinite(logits[i])) {
            return sb_fail(ctx->err, SB_ERR_NUMERIC, "logit %d at position %d is %g: the "
                           "model's weights are not finite or its activations overflow", i,
                           pos, (double)logits[i]);
        }
    }
    return SB_OK;
}

sb_status sb_next(sb_context *ctx, sb_token *out) {
    if (!ctx || !out) return SB_ERR_ARG;
    if (!ctx->started) return sb_fail(ctx->err, SB_ERR_STATE, "sb_next before sb_start");
    *out = (sb_token){.id = -1, .pos = ctx->pos, .piece = ""};
    if (!ctx->finished && ctx->story < atomic_load(&ctx->stop_below)) {
        ctx->finished = ctx->stopped = 1;
    }
    if (ctx->finished || ctx->pos >= ctx->steps) {
        ctx->finished = 1;
        if (ctx->stopped) out->flags = SB_END_STOPPED;
        return SB_END;
    }
    int pos = ctx->pos;
    int forced = pos < ctx->n_prompt - 1;
    sb_forward(&ctx->model, &ctx->state, ctx->token, pos, !forced);
    int next;
    if (forced) {
        next = ctx->prompt[pos + 1];
    } else {
        sb_status s = check_logits(ctx, pos);
        if (s != SB_OK) return s;
        SB_REGION(26);
        next = sb_sample(&ctx->sampler, ctx->state.logits);
        SB_REGION(27);
        if (next < 0) {
            return sb_fail(ctx->err, SB_ERR_NUMERIC, "temperature %g leaves no finite "
                           "distribution at position %d (the logits overflow)",
                           (double)ctx->sampler.temperature, pos);
        }
    }
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

void sb_stop(sb_context *ctx, uint64_t story) {
    if (!ctx) return;
    uint64_t below = story == UINT64_MAX ? UINT64_MAX : story + 1;
    uint64_t now = atomic_load(&ctx->stop_below);
    while (now < below && !atomic_compare_exchange_weak(&ctx->stop_below, &now, below)) {}
}

sb_status sb_reset(sb_context *ctx, const sb_params *params) {
    if (!ctx) return SB_ERR_ARG;
    sb_status s = check_params(params, ctx->err);
    if (s != SB_OK) return s;
    if (params->kernels != ctx->params.kernels || params->n_threads != ctx->params.n_threads
        || params->kv_fp16 != ctx->params.kv_fp16 || params->mem_limit != ctx->params.mem_limit) {
        return sb_fail(ctx->err, SB_ERR_ARG, "kernels, threads, the KV cache type and the "
                       "memory limit are chosen when the model is opened");
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
    int *tmp = NULL, count = 0;
    sb_status s = encode(ctx, text, &tmp, &count);
    if (s != SB_OK) return s;
    if (count > cap) {
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
        sb_status s = check_logits(ctx, i);
        if (s != SB_OK) {
            ctx->started = 0;
            return s;
        }
        // log-softmax in double: a perplexity should not depend on float rounding
        double max = logits[0], sum = 0.0;
        for (int j = 1; j < c->vocab_size; j++) if (logits[j] > max) max = logits[j];
        for (int j = 0; j < c->vocab_size; j++) sum += exp((double)logits[j] - max);
        logprobs[i] = (float)((double)logits[tokens[i + 1]] - max - log(sum));
    }
    ctx->started = 0; // the cache now holds this sequence, not a story
    return SB_OK;
}

int sb_test_logits(sb_context *ctx, const int *tokens, int n, float *logits, float *draft) {
    const sb_config *c = ctx ? &ctx->model.cfg : NULL;
    if (!ctx || !tokens || !logits || n < 1 || n > c->seq_len) return -1;
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) return -1;
    }
    if (draft && !ctx->model.draft.data) return -2;
    for (int i = 0; i < n; i++) sb_forward(&ctx->model, &ctx->state, tokens[i], i, i == n - 1);
    memcpy(logits, ctx->state.logits, sizeof(float) * (size_t)c->vocab_size);
    if (draft) sb_matvec(&ctx->model, &ctx->state, draft, ctx->state.x, &ctx->model.draft);
    ctx->started = 0;
    return 0;
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
    case SB_ERR_NUMERIC: return "not a finite number";
    }
    return "unknown status";
}
