/* model.c: checks and maps a llama2.c checkpoint, and lays its matrices out for the
 * kernels.
 *
 * llama2.c "v0" format: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads,
 * n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier is stored
 * apart from the token embedding), then fp32 tensors in a fixed order. Everything in the
 * header is checked, and the file length must be exactly what the header implies, before
 * any weight is read.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define HEADER_INTS 7

// ----------------------------------------------------------------------------
// header checks

sb_status sb_check_config(const int32_t h[HEADER_INTS], sb_config *c, char *err) {
    static const char *names[HEADER_INTS] = {"dim", "hidden_dim", "n_layers", "n_heads",
                                             "n_kv_heads", "vocab_size", "seq_len"};
    /* Upper limits far above any model this library is for; they keep every size
     * computation below well inside 64 bits. */
    static const int32_t limits[HEADER_INTS] = {1 << 16, 1 << 18, 1 << 10, 1 << 10,
                                                1 << 10, 1 << 22, 1 << 20};
    for (int i = 0; i < HEADER_INTS; i++) {
        int32_t v = (i == 5 && h[i] < 0 && h[i] != INT32_MIN) ? -h[i] : h[i];
        int32_t least = i == 5 ? 3 : 1; // the vocabulary holds <unk>, BOS and EOS at least
        if (v < least || v > limits[i]) {
            return sb_fail(err, SB_ERR_FORMAT,
                           "model header: %s = %d is out of range (%d..%d); not a llama2.c "
                           "checkpoint?", names[i], (int)h[i], (int)least, (int)limits[i]);
        }
    }
    c->dim = h[0];
    c->hidden_dim = h[1];
    c->n_layers = h[2];
    c->n_heads = h[3];
    c->n_kv_heads = h[4];
    c->shared = h[5] > 0;
    c->vocab_size = h[5] > 0 ? h[5] : -h[5];
    c->seq_len = h[6];
    if (c->dim % c->n_heads != 0) {
        return sb_fail(err, SB_ERR_FORMAT, "model header: dim %d is not divisible by n_heads %d",
                       c->dim, c->n_heads);
    }
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads != 0) {
        return sb_fail(err, SB_ERR_FORMAT,
                       "model header: n_kv_heads %d does not divide n_heads %d",
                       c->n_kv_heads, c->n_heads);
    }
    c->head_size = c->dim / c->n_heads;
    if (c->head_size % 2 != 0) {
        return sb_fail(err, SB_ERR_FORMAT,
                       "model header: head size %d is odd; rotary embeddings need pairs",
                       c->head_size);
    }
    c->kv_dim = c->n_kv_heads * c->head_size;
    return SB_OK;
}

/* Number of floats after the header, in file order. */
static uint64_t v0_float_count(const sb_config *c) {
    uint64_t L = (uint64_t)c->n_layers, dim = (uint64_t)c->dim;
    uint64_t n = (uint64_t)c->vocab_size * dim;          // token embedding
    n += L * dim * 2;                                     // rms_att, rms_ffn
    n += L * dim * dim * 2;                               // wq, wo
    n += L * dim * (uint64_t)c->kv_dim * 2;               // wk, wv
    n += L * dim * (uint64_t)c->hidden_dim * 3;           // w1, w2, w3
    n += dim;                                             // rms_final
    n += (uint64_t)c->seq_len * (uint64_t)c->head_size;   // legacy RoPE tables, unused
    if (!c->shared) n += (uint64_t)c->vocab_size * dim;   // classifier
    return n;
}

// ----------------------------------------------------------------------------
// matrices

static size_t padded_floats(int rows, int cols, int block) {
    return (size_t)((rows + block - 1) / block * block) * (size_t)cols;
}

/* Drops the resident pages of a mapped range that has been copied, so that the file
 * and its copy are never both in memory (the peak RSS stays at one copy). */
static void release(const void *p, size_t len) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)p + len) & ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

/* Points (or, for interleaving kernels, copies) one matrix; *cursor walks the packed
 * buffer. */
static sb_matrix place(const sb_model *m, const float *src, int rows, int cols,
                       float **cursor) {
    sb_matrix mat = {SB_F32, rows, cols, src, NULL, 0};
    int block = m->kernels->f32_rows;
    if (block > 1) {
        // a few hundred blocks at a time, so that little of the source is resident at once
        int chunk = block * 32;
        for (int r = 0; r < rows; r += chunk) {
            int n = rows - r < chunk ? rows - r : chunk;
            sb_pack_rows_f32(*cursor + (size_t)r * cols, src + (size_t)r * cols, n, cols, block);
            release(src + (size_t)r * cols, (size_t)n * cols * sizeof(float));
        }
        mat.data = *cursor;
        *cursor += padded_floats(rows, cols, block);
    }
    return mat;
}

sb_status sb_model_alloc_matrices(sb_model *m, char *err) {
    int L = m->cfg.n_layers;
    m->matrices = calloc((size_t)L * 7, sizeof(sb_matrix));
    if (!m->matrices) return sb_fail(err, SB_ERR_NOMEM, "out of memory for the matrix table");
    m->wq = m->matrices;
    m->wk = m->wq + L;
    m->wv = m->wk + L;
    m->wo = m->wv + L;
    m->w1 = m->wo + L;
    m->w2 = m->w1 + L;
    m->w3 = m->w2 + L;
    return SB_OK;
}

/* Weights are streamed from memory once per token, so they sit on huge pages where the
 * kernel offers them (transparent huge pages in "madvise" mode): with 4 kB pages, and
 * above all under a hypervisor's nested paging, page walks cut the read bandwidth of a
 * stream by a quarter (`storybot bench` reports both). Elsewhere the advice is ignored. */
void *sb_alloc_streamed(size_t bytes) {
    size_t huge = (size_t)2 << 20;
    void *p = NULL;
    if (posix_memalign(&p, bytes >= huge ? huge : 64, bytes) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    if (bytes >= huge) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

static sb_status map_weights(sb_model *m, const float *p, size_t limit, char *err) {
    const sb_config *c = &m->cfg;
    int L = c->n_layers, dim = c->dim, hid = c->hidden_dim, kvd = c->kv_dim;
    int block = m->kernels->f32_rows;
    sb_status st = sb_model_alloc_matrices(m, err);
    if (st != SB_OK) return st;

    float *cursor = NULL;
    if (block > 1) {
        size_t total = padded_floats(c->vocab_size, dim, block);
        total += (size_t)L * (2 * padded_floats(dim, dim, block) + 2 * padded_floats(kvd, dim, block)
                              + 2 * padded_floats(hid, dim, block) + padded_floats(dim, hid, block));
        if (total > limit / sizeof(float)) {
            return sb_fail(err, SB_ERR_NOMEM, "the packed weights need %zu MiB, more than the "
                           "memory limit of %zu MiB", total * sizeof(float) >> 20, limit >> 20);
        }
        m->packed_bytes = total * sizeof(float);
        m->packed = sb_alloc_streamed(m->packed_bytes);
        if (!m->packed) {
            return sb_fail(err, SB_ERR_NOMEM, "out of memory for %zu MB of packed weights",
                           total * sizeof(float) >> 20);
        }
        cursor = m->packed;
    }

    const float *emb = p;
    p += (size_t)c->vocab_size * dim;
    m->rms_att = p;
    p += (size_t)L * dim;
    for (int l = 0; l < L; l++, p += (size_t)dim * dim) m->wq[l] = place(m, p, dim, dim, &cursor);
    for (int l = 0; l < L; l++, p += (size_t)kvd * dim) m->wk[l] = place(m, p, kvd, dim, &cursor);
    for (int l = 0; l < L; l++, p += (size_t)kvd * dim) m->wv[l] = place(m, p, kvd, dim, &cursor);
    for (int l = 0; l < L; l++, p += (size_t)dim * dim) m->wo[l] = place(m, p, dim, dim, &cursor);
    m->rms_ffn = p;
    p += (size_t)L * dim;
    for (int l = 0; l < L; l++, p += (size_t)hid * dim) m->w1[l] = place(m, p, hid, dim, &cursor);
    for (int l = 0; l < L; l++, p += (size_t)hid * dim) m->w2[l] = place(m, p, dim, hid, &cursor);
    for (int l = 0; l < L; l++, p += (size_t)hid * dim) m->w3[l] = place(m, p, hid, dim, &cursor);
    m->rms_final = p;
    p += dim;
    p += (size_t)c->seq_len * c->head_size; // legacy RoPE tables
    m->token_embedding = emb;
    m->wcls = place(m, c->shared ? emb : p, c->vocab_size, dim, &cursor);

    m->weight_bytes = sizeof(float) * (v0_float_count(c) - (uint64_t)c->seq_len * c->head_size
                                       - (c->shared ? 0 : (uint64_t)c->vocab_size * dim));
    return SB_OK;
}

// ----------------------------------------------------------------------------
// load / free

sb_status sb_model_load(sb_model *m, const char *path, const sb_kernel_set *kernels,
                        size_t limit, char *err) {
    memset(m, 0, sizeof(*m));
    m->kernels = kernels;
    m->fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sb_fail(err, SB_ERR_IO, "cannot open model %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sb_fail(err, SB_ERR_IO, "model %s is not a regular file", path);
    }
    uint64_t size = (uint64_t)st.st_size;
    int32_t header[HEADER_INTS];
    if (size < sizeof(header)) {
        close(fd);
        return sb_fail(err, SB_ERR_FORMAT, "model %s is %llu bytes, shorter than its header",
                       path, (unsigned long long)size);
    }
    if (pread(fd, header, sizeof(header), 0) != (ssize_t)sizeof(header)) {
        int e = errno;
        close(fd);
        return sb_fail(err, SB_ERR_IO, "cannot read model %s: %s", path, strerror(e));
    }
    uint32_t magic;
    memcpy(&magic, header, sizeof magic);
    if (sb_is_quant_magic(magic)) { // storybot q8_0/q4_0 or llama2.c ak42 (model_quant.c)
        sb_status sq = sb_model_load_quant(m, fd, size, magic, path, err);
        if (sq == SB_OK && m->draft.data) {
            m->fd = fd; // its classifier is read by blocks
        } else {
            close(fd); // a mapping keeps the file
        }
        if (sq != SB_OK) sb_model_free(m);
        return sq;
    }
    sb_status st_cfg = sb_check_config(header, &m->cfg, err);
    if (st_cfg != SB_OK) {
        close(fd);
        return st_cfg;
    }
    uint64_t expected = sizeof(header) + v0_float_count(&m->cfg) * sizeof(float);
    if (size != expected) {
        close(fd);
        return sb_fail(err, SB_ERR_FORMAT,
                       "model %s is %llu bytes but its header implies %llu (%s)", path,
                       (unsigned long long)size, (unsigned long long)expected,
                       size < expected ? "truncated" : "unexpected trailing data");
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); // the mapping keeps the file
    if (map == MAP_FAILED) return sb_fail(err, SB_ERR_IO, "cannot map model %s: %s", path, strerror(e));
    m->map = map;
    m->map_len = size;
    sb_status s = map_weights(m, (const float *)((const char *)map + sizeof(header)), limit, err);
    if (s != SB_OK) {
        sb_model_free(m);
        return s;
    }
    return SB_OK;
}

void sb_model_free(sb_model *m) {
    if (m->map) munmap(m->map, m->map_len);
    if (m->draft.data && m->fd >= 0) close(m->fd); // a model never loaded has no draft
    free(m->packed);
    free(m->matrices);
    memset(m, 0, sizeof(*m));
    m->fd = -1;
}

void sb_model_embed(const sb_model *m, int token, float *out) {
    if (m->embedding.data) { // quantized: one row dequantized, never the whole table
        sb_dequantize_row(&m->embedding, token, out);
        return;
    }
    int dim = m->cfg.dim, block = m->kernels->f32_rows;
    if (m->cfg.shared && block > 1) {
        /* The packed classifier holds the embedding too: gathering one row from it costs
         * dim loads, where touching the mapped file would page in (and keep) 64 kB. */
        const float *blk = (const float *)m->wcls.data + (size_t)(token / block) * block * dim;
        for (int j = 0; j < dim; j++) out[j] = blk[(size_t)j * block + token % block];
        return;
    }
    memcpy(out, m->token_embedding + (size_t)token * dim, sizeof(float) * dim);
}
