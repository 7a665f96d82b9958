/* storybot.h: a small inference library for llama2.c-format story models.
 *
 * Usage:
 *
 *     char err[256];
 *     sb_params p = sb_default_params();
 *     p.temperature = 1.0f; p.topp = 0.9f; p.seed = 123; p.steps = 256;
 *     sb_context *ctx = NULL;
 *     if (sb_open("stories15M.bin", "tokenizer.bin", &p, &ctx, err, sizeof err) != SB_OK) {
 *         fprintf(stderr, "%s\n", err);   // the context was not created
 *     }
 *     sb_start(ctx, 1, "Once upon a time");
 *     sb_token tok;
 *     while (sb_next(ctx, &tok) == SB_OK) {
 *         if (!(tok.flags & SB_PIECE_UNPRINTABLE)) fwrite(tok.piece, 1, tok.piece_len, stdout);
 *     }
 *     sb_free(ctx);
 *
 * Status codes: SB_OK (0) is success; SB_END (1) says the story is over (recoverable:
 * start another); negative values are errors, with a message from sb_last_error().
 *
 * The library never prints, never calls exit() or abort(), and keeps no global state:
 * each context owns its model, tokenizer, sampler and buffers. One context must be used
 * by one thread at a time; distinct contexts may run in parallel. sb_stop() is the one
 * call that may come from another thread, at any time, sb_next() running or not.
 */
#ifndef STORYBOT_H
#define STORYBOT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SB_VERSION "0.1.0"

typedef enum {
    SB_OK = 0,
    SB_END = 1,              /* story finished: BOS sampled, steps used up, or stopped */
    SB_ERR_ARG = -1,         /* a bad argument: NULL, out-of-range parameter, bad prompt */
    SB_ERR_IO = -2,          /* a file could not be opened, read or mapped */
    SB_ERR_FORMAT = -3,      /* a file is not a valid model or tokenizer */
    SB_ERR_NOMEM = -4,       /* an allocation failed */
    SB_ERR_STATE = -5,       /* a call out of order, e.g. sb_next() before sb_start() */
    SB_ERR_NUMERIC = -6      /* the model computed NaN or Inf (non-finite weights, or an
                                overflow such as logits / a tiny temperature) */
} sb_status;

typedef enum {
    SB_KERNELS_AUTO = 0,     /* the fastest faithful kernels this CPU runs */
    SB_KERNELS_GENERIC = 1   /* the portable C kernels only (for testing the others) */
} sb_kernels;

typedef struct {
    float temperature;       /* 0 = greedy argmax; must be >= 0 */
    float topp;              /* nucleus sampling in [0, 1]; 0 or 1 samples the full distribution */
    uint64_t seed;           /* xorshift seed; must not be 0 (the CLI maps 0 to the time) */
    int steps;               /* positions to run, prompt included; 0 or > seq_len means seq_len */
    int n_threads;           /* threads sharing each matvec (the caller's included); 0 or 1 = one */
    sb_kernels kernels;
    int kv_fp16;             /* KV cache: 1 IEEE half (half the memory, not bit-exact), 0 fp32,
                                -1 (default) half for quantized models where the CPU converts
                                halves in vector instructions (x86 F16C), else fp32 (the
                                fp32 model stays exact). Chosen when the model is opened. */
    size_t mem_limit;        /* bytes the context may allocate (weight copies, KV cache,
                                activations, logits, sampler), checked before allocating;
                                0 (default) = what the machine can give when it is opened:
                                the least of physical RAM, MemAvailable and the cgroup's
                                memory.max headroom. Chosen when the model is opened. */
} sb_params;

typedef enum {
    /* A raw byte token that the reference run.c does not print (a lone control or
     * non-ASCII byte). Its byte is still in piece, for callers that rebuild UTF-8. */
    SB_PIECE_UNPRINTABLE = 1,
    SB_PIECE_PROMPT = 2,     /* the token was forced from the prompt, not sampled */
    SB_END_STOPPED = 4       /* with SB_END: sb_stop() ended the story */
} sb_piece_flags;

typedef struct {
    int id;                  /* token id in the vocabulary */
    int pos;                 /* position of this token in the sequence (1 = first after BOS) */
    int flags;               /* sb_piece_flags */
    const char *piece;       /* decoded bytes, NUL-terminated; valid until the next call */
    size_t piece_len;
} sb_token;

typedef struct {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    int shared_classifier;   /* 1 if the classifier reuses the token embedding */
    const char *format;      /* "llama2c-fp32", "llama2c-q8-ak42", "storybot-q8_0",
                                "storybot-q4_0" */
    const char *kernels;     /* name of the kernel set in use, e.g. "avx2" (for quantized
                                models, the int8 set, e.g. "avx512vnni") */
    size_t weight_bytes;     /* bytes of weights read per generated token */
    int kv_fp16;             /* 1 if the KV cache is in half precision */
} sb_model_info;

typedef struct sb_context sb_context;

sb_params sb_default_params(void);

/* Loads a model and tokenizer and checks every header field before touching weights.
 * On failure *out stays NULL and err (if not NULL) receives a message. */
sb_status sb_open(const char *model_path, const char *tokenizer_path, const sb_params *params,
                  sb_context **out, char *err, size_t err_len);
void sb_free(sb_context *ctx);

/* Encodes the prompt (UTF-8; may be empty or NULL) and resets the sequence for story
 * number `story`, a number the caller picks, growing from story to story (several
 * starts may share one, e.g. a story told in several contexts). The first sb_next() then returns the
 * first prompt token after BOS. A prompt longer than the context is run as far as the
 * steps go (as run.c does); one whose encoding needs more memory than the limit leaves
 * is refused (SB_ERR_NOMEM). */
sb_status sb_start(sb_context *ctx, uint64_t story, const char *prompt);
/* Runs one position and returns its token: SB_OK with *out filled, or SB_END with
 * out->id = -1, out->pos = the number of positions run in this story and
 * SB_END_STOPPED in out->flags if sb_stop() ended it. */
sb_status sb_next(sb_context *ctx, sb_token *out);
/* Ends story `story` and every story numbered below it: one running ends at its next
 * sb_next(), one that has not started yet ends at its first, so a stop cannot be lost
 * to a start that comes after it. Safe from any thread at any time. */
void sb_stop(sb_context *ctx, uint64_t story);
/* Replaces the sampling parameters (and reseeds) for the next sb_start(). */
sb_status sb_reset(sb_context *ctx, const sb_params *params);

/* Runs the model over a whole token sequence and writes log p(tokens[i+1] | tokens[..i])
 * for i in [0, n-1) into logprobs (n-1 values). For scoring, not for stories. */
sb_status sb_score(sb_context *ctx, const int *tokens, int n, float *logprobs);
/* Encodes text as the CLI would (BOS first); writes at most cap ids, returns the count
 * in *n. */
sb_status sb_tokenize(sb_context *ctx, const char *text, int *tokens, int cap, int *n);

sb_status sb_model_info_get(const sb_context *ctx, sb_model_info *out);
/* Message of the last error on this context ("" if none). */
const char *sb_last_error(const sb_context *ctx);
const char *sb_status_name(sb_status status);

#ifdef __cplusplus
}
#endif
#endif
