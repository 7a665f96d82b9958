/* internal.h: structures shared by the library's source files (not installed). */
#ifndef STORYBOT_INTERNAL_H
#define STORYBOT_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "storybot.h"
#include "kernels.h"
#include "kernels_q.h"

#define SB_BOS 1

/* Profile builds (-DSB_PROFILE, `storybot bench --riscv-profile`) bracket the parts of a
 * token with the no-op hint `addi x0, x0, K`, which the qemu insncount plugin reports
 * as a mark with the cycles so far: K = 20/21 the classifier, 22/23 every product (the
 * classifier's too), 24/25 attention, 26/27 sampling. Other builds have none. */
#if defined(SB_PROFILE) && defined(__riscv)
#define SB_REGION(k) __asm__ volatile("addi x0, x0, %0" ::"i"(k))
#else
#define SB_REGION(k) ((void)0)
#endif

#define SB_ERR_LEN 256

/* Fills ctx's error message (printf-style) and returns status. */
sb_status sb_fail(char *err, sb_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// ----------------------------------------------------------------------------
// model (model.c)

/* Scratch of quantized matrix-vector products: x as Q8_0 (forward.c owns the memory). */
typedef struct {
    int8_t *q;     // (max(dim, hidden_dim),) quantized activations
    float *s;      // (max / SB_QK,) their scales
    int32_t *sum;  // (max / SB_QK,) sum of q per group (for the 4-bit offset)
} sb_state_q;

typedef struct {
    int dim;        // transformer width
    int hidden_dim; // ffn width
    int n_layers;
    int n_heads;    // query heads
    int n_kv_heads; // key/value heads (fewer than n_heads with multiquery)
    int vocab_size;
    int seq_len;    // context length
    int head_size;  // dim / n_heads
    int kv_dim;     // n_kv_heads * head_size
    int shared;     // classifier shares the token embedding
} sb_config;

typedef enum {
    SB_F32 = 0,  // fp32, rows interleaved in blocks of kernels->f32_rows (1 = row-major)
    SB_Q8_0 = 1, // int8, blocks of 32 rows x 32 columns stored column by column (quant.c)
    SB_Q4_0 = 2, // 4-bit, the same blocks with two columns per byte (quant.c)
    SB_Q8_ROWS = 3, // int8 row-major, one scale per group_size values (llama2.c ak42)
    SB_F32_ROWS = 4, // fp32 row-major in a quantized file (inner dimension not whole groups)
    SB_Q5 = 5,   // 5-bit, the same blocks: nibbles, then a plane of high bits (quant.c)
    SB_Q6 = 6,   // 6-bit, the same with two high bits per weight
    SB_Q4_ROW = 7, // 4-bit, SB_Q4_0's blocks with one fp16 scale per row; its input is
                   // quantized with one scale for the whole vector (a draft's layout)
    SB_Q8_ROW = 8, // int8, SB_Q8_0's blocks with one fp16 scale per row, its input as
                   // SB_Q4_ROW's (a classifier's layout; not SB_Q8_ROWS, ak42's)
} sb_type;

/* The row-scaled types, whose input is quantized with one scale for the whole vector. */
static inline int sb_row_scaled(sb_type t) {
    return t == SB_Q4_ROW || t == SB_Q8_ROW;
}

/* A weight matrix W (rows, cols) as the kernels want it. */
typedef struct {
    sb_type type;
    int rows, cols;
    const void *data;
    const void *scales;  // quantized types: one per group of group_size weights, fp16
                         // (the blocks) or fp32 (SB_Q8_ROWS); sb_row_scaled one per row
    int group_size;      // quantized types: a multiple of SB_QK
} sb_matrix;

typedef struct {
    sb_config cfg;
    const float *token_embedding; // (vocab_size, dim) row-major, in the mapped file
    const float *rms_att;         // (layer, dim)
    const float *rms_ffn;         // (layer, dim)
    const float *rms_final;       // (dim,)
    sb_matrix *wq, *wk, *wv, *wo; // per layer: (dim, dim) (kv_dim, dim) (kv_dim, dim) (dim, dim)
    sb_matrix *w1, *w2, *w3;      // per layer: (hidden, dim) (dim, hidden) (hidden, dim)
    sb_matrix wcls;               // (vocab_size, dim)
    sb_matrix embedding;          // quantized models: the token embedding (vocab_size, dim)
    /* Quantized models may carry a draft: a cheaper copy of wcls (e.g. 4 bits for an
     * 8-bit classifier) scored over every row, after which the rows that could matter
     * are scored again from wcls (forward.c). draft.data is NULL when the file has none.
     * wcls is then read a row block at a time from fd (sb_read_block), never through
     * the map: the blocks a story asks for vary, and mapped they would stay resident. */
    sb_matrix draft;
    int fd;                       // with a draft: the open file, else -1
    const sb_kernel_set *kernels;
    const sb_qkernel_set *qkernels; // quantized models: the int8 kernels in use, else NULL
    const char *format;           // "llama2c-fp32", "storybot-q8_0", ...
    // storage behind the pointers above
    void *map;                    // the mmapped file, held until sb_model_free
    size_t map_len;
    float *packed;                // interleaved copies of the matrices, or NULL
    size_t packed_bytes;
    sb_matrix *matrices;          // the per-layer sb_matrix arrays, one allocation
    size_t weight_bytes;          // weights read per token
} sb_model;

/* Whether a run must give run.c's numbers bit for bit: an fp32 model with an fp32 KV
 * cache does (tests/test_golden.py), so its softmax, sampling and SwiGLU keep the
 * reference's scalar steps (glibc's expf, its order of sums, its divisions). Quantized
 * weights or a half KV cache promise no exactness (kernels_q.h); those runs take the
 * fast kernels of kernels.h instead. forward.c and the sampler ask this one rule. */
static inline int sb_exact(const sb_model *m, int kv_half) {
    return m->qkernels == NULL && !kv_half;
}

/* Memory for data read once per token (weights, caches): 64-byte aligned, on huge pages
 * where the system offers them. free() releases it. */
void *sb_alloc_streamed(size_t bytes);
/* Refuses a model whose copies of the weights would take more than limit bytes. */
sb_status sb_model_load(sb_model *m, const char *path, const sb_kernel_set *kernels,
                        size_t limit, char *err);
/* Checks the 7 llama2.c config ints (vocab_size < 0: separate classifier) into c. */
sb_status sb_check_config(const int32_t h[7], sb_config *c, char *err);
void sb_model_free(sb_model *m);
/* The per-layer matrix arrays (wq ... w3), one allocation; loaders fill them in. */
sb_status sb_model_alloc_matrices(sb_model *m, char *err);
/* Bits per weight of a matrix type (quant.c). */
int sb_type_bits(sb_type type);
/* Copies token's embedding row into out (dim,) (not for a classifier read by blocks). */
void sb_model_embed(const sb_model *m, int token, float *out);
/* Bytes of one row block of a matrix (data, then scales) as sb_read_block reads it. */
size_t sb_block_bytes(const sb_matrix *w);
/* Reads row block b (rows [b * SB_QK, ...)) of m->wcls from m->fd into buf
 * (sb_block_bytes) and points *blk at it, a matrix of its rows; 0, or an errno value. */
int sb_read_block(const sb_model *m, int b, unsigned char *buf, sb_matrix *blk);

// ----------------------------------------------------------------------------
// quantized models (model_quant.c, quant.c)

/* Loads a storybot q8_0/q4_0 file or a llama2.c ak42 v2 file already opened as fd
 * (size bytes, first word magic); maps it and points every matrix into the map. */
sb_status sb_model_load_quant(sb_model *m, int fd, uint64_t size, uint32_t magic,
                              const char *path, char *err);
int sb_is_quant_magic(uint32_t magic);
/* out (dim,) = row token of a quantized embedding, dequantized. */
void sb_dequantize_row(const sb_matrix *w, int row, float *out);
/* Quantizes x (w->cols,) into s as w's products below take it: Q8_0, or for the
 * sb_row_scaled types int8 with one scale for the whole vector (every group's xs the
 * same). */
void sb_quantize_input(const sb_model *m, sb_state_q *s, const float *x, const sb_matrix *w);
/* Rows [r0, r1) of out = W @ x for a quantized W, x already in s; r0 % SB_QK == 0. */
void sb_matvec_quant_rows(const sb_model *m, const sb_state_q *s, float *out,
                          const sb_matrix *w, int r0, int r1);
/* The same for SB_F32_ROWS, from x itself. */
void sb_matvec_f32_rows(float *out, const float *x, const sb_matrix *w, int r0, int r1);

// ----------------------------------------------------------------------------
// tokenizer (tokenizer.c)

/* Kept small for the board (~0.6 MiB for llama2.c's 32000 tokens, where pointers,
 * lengths, a hash table and a byte table took ~1 MiB): token i is strings + offsets[i],
 * offsets[i + 1] - offsets[i] - 1 bytes long, and lookups by string binary-search
 * `sorted`. */
typedef struct {
    int vocab_size;
    int max_token_length;
    char *strings;        // all token strings, NUL-separated
    uint32_t *offsets;    // (vocab_size + 1,) where each token starts in strings
    float *scores;        // (vocab_size,) merge scores
    int32_t *sorted;      // (vocab_size,) token ids by string, then by id
    char *concat;         // scratch for merge candidates
} sb_tokenizer;

sb_status sb_tokenizer_load(sb_tokenizer *t, const char *path, int vocab_size, char *err);
void sb_tokenizer_free(sb_tokenizer *t);
/* Bytes that encoding len bytes of text allocates, the tokens included (at most). */
size_t sb_tokenizer_scratch(size_t len);
/* BOS, then the prompt as the reference encodes it; tokens must hold strlen(text) + 2. */
sb_status sb_tokenizer_encode(const sb_tokenizer *t, const char *text, int *tokens,
                              int *n_tokens, char *err);
/* The bytes printed for token after prev; *flags gets SB_PIECE_UNPRINTABLE. */
const char *sb_tokenizer_decode(const sb_tokenizer *t, int prev, int token, char byte_buf[2],
                                size_t *len, int *flags);

// ----------------------------------------------------------------------------
// sampler (sampler.c)

typedef struct {
    float prob;
    int index;
} sb_prob_index;

typedef struct {
    int vocab_size;
    const sb_kernel_set *kernels; // for expf, or the fast kernels
    int exact;                    // sb_exact: the reference's softmax and sampling, step for step
    float temperature;
    float topp;
    uint64_t rng;
    sb_prob_index *candidates; // (vocab_size,) scratch for top-p
} sb_sampler;

/* Bytes the sampler allocates; init refuses more than budget. */
size_t sb_sampler_bytes(int vocab_size);
sb_status sb_sampler_init(sb_sampler *s, int vocab_size, const sb_kernel_set *kernels,
                          int exact, size_t budget, char *err);
void sb_sampler_free(sb_sampler *s);
void sb_sampler_set(sb_sampler *s, float temperature, float topp, uint64_t seed);
/* Samples a token from finite logits, or returns -1 if scaling them by the temperature
 * overflowed; logits are modified (scaled and exponentiated). */
int sb_sample(sb_sampler *s, float *logits);
/* x (n,) -> exp(x - max) / sum, in the reference's order (expf through k). */
void sb_softmax(const sb_kernel_set *k, float *x, int n);

// ----------------------------------------------------------------------------
// forward pass (forward.c)

#define SB_KV_TILE 64 /* positions per tile of the key cache */
/* A draft classifier's second pass (forward.c): rows whose draft logit is within
 * SB_RESCORE_DELTA of the largest are scored again from wcls, a whole row block (SB_QK
 * rows) at a time, at most SB_RESCORE_BLOCKS blocks (the delta halves until they fit).
 * Measured in native/bench/twopass.c and README "The board's classifier". */
#define SB_RESCORE_DELTA 6.0f
#define SB_RESCORE_ROWS 256
#define SB_RESCORE_BLOCKS 16

typedef struct {
    float *x;          // (dim,) activation at the current position
    float *xb, *xb2;   // (dim,) residual-branch buffers
    float *hb, *hb2;   // (hidden_dim,) ffn buffers
    float *ex;         // (hidden_dim,) the ffn gate's exponentials
    float *q, *k, *v;  // (dim,) (kv_dim,) (kv_dim,)
    float *att;        // (n_heads, seq_len) attention scores
    float *logits;     // (vocab_size,)
    int *rescore;      // (SB_RESCORE_ROWS,) rows the draft's second pass looks at
    unsigned char *cls_block; // one row block of a classifier read by blocks (sb_block_bytes)
    int read_error;    // errno of a failed sb_read_block since the last check, else 0
    /* Each head's keys and values are contiguous, so attention reads them as streams:
     * keys (layer, kv_head, tile, head_size, SB_KV_TILE), SB_KV_TILE positions per tile
     * along its rows (scores vectorize over t, one tile a contiguous block); values
     * (layer, kv_head, seq_len, head_size). Both are sized for seq_len rounded up to
     * whole tiles. */
    float *key_cache;
    float *value_cache;
    uint16_t *key_cache_h, *value_cache_h; // kv_fp16: the same caches in IEEE half, else NULL
    const sb_qkernel_set *f16; // kv_fp16: the kernels that read the half caches
    sb_state_q qx;     // quantized activations, for quantized models
    float *rope_freq;  // (head_size / 2,) rotation frequency per pair
    float *rope_cos, *rope_sin; // (head_size / 2,) for the current position
    void *block;       // the one allocation behind all of the above
    size_t block_bytes;
    struct sb_pool *pool; // threads sharing the matvecs, or NULL
} sb_state;

/* n_threads: threads sharing each matvec. kv_fp16 not NULL: keep the KV cache in IEEE
 * half precision (half the memory, not exact), read with these kernels. Refuses (before
 * allocating) buffers of more than budget bytes. */
sb_status sb_state_init(sb_state *s, const sb_config *c, int n_threads,
                        const sb_qkernel_set *kv_fp16, size_t budget, char *err);
void sb_state_free(sb_state *s);
/* out (W.rows,) = W @ x (W.cols,), whatever W's type. */
void sb_matvec(const sb_model *m, sb_state *s, float *out, const float *x, const sb_matrix *w);
/* Runs token at pos; fills s->logits when want_logits (prompt positions skip it). */
void sb_forward(const sb_model *m, sb_state *s, int token, int pos, int want_logits);

#endif
