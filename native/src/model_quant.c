/* model_quant.c: checks and maps quantized models; every matrix, the token embedding
 * included, is read straight from the mapped file (no copy), so a 15M model in int8
 * costs its 17 MB of file pages, which the kernel may drop and re-read under pressure.
 *
 * storybot (version 2; robot/dev/quantize.py writes it and documents it):
 *   256-byte header: "SBQM", u32 version, "llama2\0\0", u32 format (1 q8_0, 2 q4_0,
 *   3 mixed), u32 group size (32), u32 rows per block (32), u32 alignment (64), 7 x i32
 *   config (vocab_size > 0), u32 shared classifier, 32 bytes sha256 of the source
 *   checkpoint, u64 file size, u32 draft (1: a draft classifier is the last matrix),
 *   zeros. Then a type byte per matrix in file order (8 q8, 6 q6, 5 q5, 4 q4, 40 q4 with
 *   a scale per row: a draft's only, 32 fp32 row-major), zeros to a 64-byte boundary.
 *   Then 64-byte-aligned tensors: rms_att, rms_ffn, rms_final, embedding, per layer wq wk
 *   wv wo w1 w2 w3, classifier unless shared, draft classifier if any; each quantized
 *   matrix is its blocks (quant.c) then its fp16 scales.
 * llama2.c ak42 version 2 (export.py --version 2, read by runq.c):
 *   256-byte header: u32 0x616b3432, i32 version 2, 7 x i32 config (vocab_size > 0),
 *   u8 shared classifier, i32 group size (unaligned, byte 37), zeros. Then fp32 rms_att,
 *   rms_ffn, rms_final and int8 tensors, each followed by its fp32 scales: embedding,
 *   all wq, all wk, all wv, all wo, all w1, all w2, all w3, classifier unless shared.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define SBQ_MAGIC 0x4d514253u  /* "SBQM" */
#define AK42_MAGIC 0x616b3432u /* "ak42" as export.py writes it */
#define HEADER_BYTES 256
#define SBQ_VERSION 2
#define SBQ_MAX_MATRICES (1 + 7 * 64 + 2) /* type table bytes read (n_layers <= 64) */
#define SBQ_ALIGN 64

int sb_is_quant_magic(uint32_t magic) {
    return magic == SBQ_MAGIC || magic == AK42_MAGIC;
}

static uint32_t u32_at(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v); // little-endian hosts only (x86-64, riscv64)
    return v;
}

static uint64_t align_up(uint64_t n) {
    return (n + SBQ_ALIGN - 1) / SBQ_ALIGN * SBQ_ALIGN;
}

// ----------------------------------------------------------------------------
// tensor walks: the same code sizes the file and points the matrices into it

typedef struct {
    const unsigned char *base; // the mapped file, or NULL while only sizing
    uint64_t at;               // offset of the next tensor
    int storybot;              // 64-byte alignment and row blocks, else ak42
    sb_type type;              // ak42: every matrix's type
    const unsigned char *types; // storybot: the type table (8, 6, 5, 4, 40, 80, 32), file order
    int next;                  // storybot: the next matrix's index in the table
    int group_size;
    int draft;                 // storybot: a draft classifier follows the classifier
} walker;

static sb_type storybot_type(unsigned char code) {
    return code == 8 ? SB_Q8_0 : code == 6 ? SB_Q6 : code == 5 ? SB_Q5
         : code == 4 ? SB_Q4_0 : code == 40 ? SB_Q4_ROW : code == 80 ? SB_Q8_ROW : SB_F32_ROWS;
}

static const float *take_floats(walker *w, uint64_t n) {
    const float *p = w->base ? (const float *)(w->base + w->at) : NULL;
    w->at += n * sizeof(float);
    if (w->storybot) w->at = align_up(w->at);
    return p;
}

/* Bytes of a matrix's weights and of its scales. */
static void matrix_sizes(sb_type type, int rows, int cols, int group_size, uint64_t *data,
                         uint64_t *scales) {
    if (type == SB_F32_ROWS) {
        *data = (uint64_t)rows * (uint64_t)cols * sizeof(float);
        *scales = 0;
    } else if (type != SB_Q8_ROWS) {
        uint64_t padded = (uint64_t)(rows + SB_QK - 1) / SB_QK * SB_QK;
        *data = padded * (uint64_t)cols * (uint64_t)sb_type_bits(type) / 8;
        *scales = padded * (uint64_t)(sb_row_scaled(type) ? 1 : cols / SB_QK) * sizeof(uint16_t);
    } else {
        *data = (uint64_t)rows * (uint64_t)cols;
        *scales = *data / (uint64_t)group_size * sizeof(float);
    }
}

static sb_matrix take_matrix(walker *w, int rows, int cols) {
    uint64_t data, scales;
    sb_type type = w->storybot ? storybot_type(w->types[w->next++]) : w->type;
    matrix_sizes(type, rows, cols, w->group_size, &data, &scales);
    sb_matrix m = {type, rows, cols, NULL, NULL, w->group_size};
    if (w->base) m.data = w->base + w->at;
    w->at += data;
    if (w->storybot) w->at = align_up(w->at);
    if (w->base) m.scales = w->base + w->at;
    w->at += scales;
    if (w->storybot) w->at = align_up(w->at);
    return m;
}

static uint64_t bytes_of(const sb_matrix *m) {
    uint64_t data, scales;
    matrix_sizes(m->type, m->rows, m->cols, m->group_size, &data, &scales);
    return data + scales;
}

/* Walks every tensor in file order; with w->base set, points m's fields into it. */
static void walk(walker *w, sb_model *m) {
    const sb_config *c = &m->cfg;
    int L = c->n_layers, dim = c->dim, hid = c->hidden_dim, kvd = c->kv_dim;
    w->next = 0;
    m->rms_att = take_floats(w, (uint64_t)L * dim);
    m->rms_ffn = take_floats(w, (uint64_t)L * dim);
    m->rms_final = take_floats(w, (uint64_t)dim);
    m->embedding = take_matrix(w, c->vocab_size, dim);
    const int shapes[7][2] = {{dim, dim}, {kvd, dim}, {kvd, dim}, {dim, dim},
                              {hid, dim}, {dim, hid}, {hid, dim}};
    sb_matrix *mats[7] = {m->wq, m->wk, m->wv, m->wo, m->w1, m->w2, m->w3};
    if (w->storybot) { // layer by layer
        for (int l = 0; l < L; l++) {
            for (int k = 0; k < 7; k++) mats[k][l] = take_matrix(w, shapes[k][0], shapes[k][1]);
        }
    } else { // tensor by tensor, as export.py writes them
        for (int k = 0; k < 7; k++) {
            for (int l = 0; l < L; l++) mats[k][l] = take_matrix(w, shapes[k][0], shapes[k][1]);
        }
    }
    m->wcls = c->shared ? m->embedding : take_matrix(w, c->vocab_size, dim);
    if (w->draft) m->draft = take_matrix(w, c->vocab_size, dim);
}

// ----------------------------------------------------------------------------
// headers

static sb_status parse_storybot(const unsigned char *h, sb_model *m, walker *w,
                                uint64_t *declared, char *err) {
    uint32_t version = u32_at(h + 4), fmt = u32_at(h + 16), gs = u32_at(h + 20);
    uint32_t rows = u32_at(h + 24), align = u32_at(h + 28), shared = u32_at(h + 60);
    uint32_t draft = u32_at(h + 104);
    if (version != SBQ_VERSION) {
        return sb_fail(err, SB_ERR_FORMAT, "storybot model version %u; this library reads "
                       "version %d", version, SBQ_VERSION);
    }
    if (memcmp(h + 8, "llama2\0\0", 8) != 0) {
        return sb_fail(err, SB_ERR_FORMAT, "architecture '%.8s' is not supported (llama2)",
                       (const char *)(h + 8));
    }
    if (fmt < 1 || fmt > 3) {
        return sb_fail(err, SB_ERR_FORMAT, "unknown weight format %u (1 = q8_0, 2 = q4_0, "
                       "3 = mixed)", fmt);
    }
    if (gs != SB_QK || rows != SB_QK || align != SBQ_ALIGN) {
        return sb_fail(err, SB_ERR_FORMAT, "group size %u, row block %u, alignment %u: this "
                       "library reads %d, %d, %d", gs, rows, align, SB_QK, SB_QK, SBQ_ALIGN);
    }
    if (shared > 1) return sb_fail(err, SB_ERR_FORMAT, "shared classifier flag is %u", shared);
    if (draft > 1) return sb_fail(err, SB_ERR_FORMAT, "draft classifier flag is %u", draft);
    for (int i = 108; i < HEADER_BYTES; i++) {
        if (h[i]) return sb_fail(err, SB_ERR_FORMAT, "reserved header byte %d is not zero "
                                 "(a newer format?)", i);
    }
    int32_t cfg[7];
    memcpy(cfg, h + 32, sizeof cfg);
    if (cfg[5] <= 0) return sb_fail(err, SB_ERR_FORMAT, "vocab_size %d must be > 0", (int)cfg[5]);
    if (!shared) cfg[5] = -cfg[5];
    sb_status s = sb_check_config(cfg, &m->cfg, err);
    if (s != SB_OK) return s;
    memcpy(declared, h + 96, sizeof *declared);
    w->storybot = 1;
    w->group_size = SB_QK;
    w->draft = (int)draft;
    m->format = fmt == 1 ? "storybot-q8_0" : fmt == 2 ? "storybot-q4_0" : "storybot-mixed";
    return SB_OK;
}

/* Reads and checks the type table (after the header) into types. */
static sb_status read_types(int fd, uint64_t size, const sb_config *c, int draft,
                            unsigned char *types, uint64_t *table_bytes, const char *path,
                            char *err) {
    if (c->n_layers > 64) {
        return sb_fail(err, SB_ERR_FORMAT, "n_layers %d: storybot files hold at most 64",
                       c->n_layers);
    }
    int n = 1 + 7 * c->n_layers + !c->shared + draft;
    *table_bytes = align_up((uint64_t)n);
    if (size < HEADER_BYTES + *table_bytes) {
        return sb_fail(err, SB_ERR_FORMAT, "model %s is %llu bytes: truncated inside its "
                       "type table", path, (unsigned long long)size);
    }
    if (pread(fd, types, (size_t)n, HEADER_BYTES) != (ssize_t)n) {
        return sb_fail(err, SB_ERR_IO, "cannot read model %s: %s", path, strerror(errno));
    }
    /* The inner dimension of each matrix in file order (embedding, 7 per layer,
     * classifier). Row-scaled types only where an input is quantized for one matrix
     * alone: q, k and v (w1 and w3) share theirs. */
    int cls = c->shared ? 0 : n - 1 - draft;
    for (int i = 0; i < n; i++) {
        int cols = i >= 1 && i <= 7 * c->n_layers && (i - 1) % 7 == 5 ? c->hidden_dim : c->dim;
        int is_draft = draft && i == n - 1;
        if (types[i] != 4 && types[i] != 5 && types[i] != 6 && types[i] != 8 && types[i] != 32
            && !(types[i] == 40 && is_draft) && !(types[i] == 80 && (i == 0 || i == cls))) {
            return sb_fail(err, SB_ERR_FORMAT, "matrix %d has type %u (4, 5, 6, 8 or 32; 40 "
                           "for a draft only, 80 for the embedding or classifier)", i, types[i]);
        }
        if (types[i] != 32 && cols % SB_QK) {
            return sb_fail(err, SB_ERR_FORMAT, "matrix %d is quantized but its inner "
                           "dimension %d is not a multiple of %d", i, cols, SB_QK);
        }
    }
    // the second pass re-reads the draft's quantized input: both must be quantized
    if (draft && (types[n - 1] == 32 || types[cls] == 32)) {
        return sb_fail(err, SB_ERR_FORMAT, "a draft classifier needs it and the classifier "
                       "quantized (types %u and %u)", types[n - 1], types[cls]);
    }
    return SB_OK;
}

static sb_status parse_ak42(const unsigned char *h, sb_model *m, walker *w, char *err) {
    int32_t version, cfg[7], gs;
    memcpy(&version, h + 4, sizeof version);
    memcpy(cfg, h + 8, sizeof cfg);
    memcpy(&gs, h + 37, sizeof gs); // export.py packs it right after the flag byte
    if (version != 2) {
        return sb_fail(err, SB_ERR_FORMAT, "llama2.c ak42 version %d is not supported (this "
                       "library reads version 2, int8; use the v0 file for fp32)", (int)version);
    }
    if (h[36] > 1) return sb_fail(err, SB_ERR_FORMAT, "shared classifier flag is %d", h[36]);
    if (cfg[5] <= 0) return sb_fail(err, SB_ERR_FORMAT, "vocab_size %d must be > 0", (int)cfg[5]);
    if (!h[36]) cfg[5] = -cfg[5];
    sb_status s = sb_check_config(cfg, &m->cfg, err);
    if (s != SB_OK) return s;
    w->storybot = 0;
    w->type = SB_Q8_ROWS;
    w->group_size = gs;
    m->format = "llama2c-q8-ak42";
    return SB_OK;
}

/* Every matrix's columns must be whole groups, for the weights and the activations. */
static sb_status check_groups(const sb_config *c, int gs, char *err) {
    if (gs <= 0) return sb_fail(err, SB_ERR_FORMAT, "group size %d must be > 0", gs);
    if (c->dim % gs) {
        return sb_fail(err, SB_ERR_FORMAT, "group size %d does not divide dim %d", gs, c->dim);
    }
    if (c->hidden_dim % gs) {
        return sb_fail(err, SB_ERR_FORMAT, "group size %d does not divide hidden_dim %d", gs,
                       c->hidden_dim);
    }
    if (gs % SB_QK) {
        return sb_fail(err, SB_ERR_FORMAT, "group size %d is not a multiple of %d, which the "
                       "int8 kernels need", gs, SB_QK);
    }
    return SB_OK;
}

// ----------------------------------------------------------------------------
// a classifier read by blocks (models with a draft)

static size_t block_data_bytes(const sb_matrix *w) {
    return (size_t)SB_QK * (size_t)w->cols * (size_t)sb_type_bits(w->type) / 8;
}

size_t sb_block_bytes(const sb_matrix *w) {
    size_t scales = sb_row_scaled(w->type) ? 1 : (size_t)(w->cols / SB_QK);
    return block_data_bytes(w) + (size_t)SB_QK * scales * sizeof(uint16_t);
}

static int read_at(int fd, unsigned char *buf, size_t n, uint64_t at) {
    while (n > 0) {
        ssize_t got = pread(fd, buf, n, (off_t)at);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return got < 0 ? errno : EIO; // 0: the file shrank under us
        buf += got;
        n -= (size_t)got;
        at += (uint64_t)got;
    }
    return 0;
}

int sb_read_block(const sb_model *m, int b, unsigned char *buf, sb_matrix *blk) {
    const sb_matrix *w = &m->wcls;
    size_t data = block_data_bytes(w), scales = sb_block_bytes(w) - data;
    const unsigned char *base = m->map;
    uint64_t at = (uint64_t)((const unsigned char *)w->data - base) + (uint64_t)b * data;
    uint64_t sat = (uint64_t)((const unsigned char *)w->scales - base) + (uint64_t)b * scales;
    int e = read_at(m->fd, buf, data, at);
    if (!e) e = read_at(m->fd, buf + data, scales, sat);
    int rows = w->rows - b * SB_QK;
    *blk = (sb_matrix){w->type, rows < SB_QK ? rows : SB_QK, w->cols, buf, buf + data,
                       w->group_size};
    return e;
}

// ----------------------------------------------------------------------------
// load

sb_status sb_model_load_quant(sb_model *m, int fd, uint64_t size, uint32_t magic,
                              const char *path, char *err) {
    unsigned char h[HEADER_BYTES];
    if (size < HEADER_BYTES) {
        return sb_fail(err, SB_ERR_FORMAT, "model %s is %llu bytes: truncated inside its "
                       "%d-byte header", path, (unsigned long long)size, HEADER_BYTES);
    }
    if (pread(fd, h, sizeof h, 0) != (ssize_t)sizeof h) {
        return sb_fail(err, SB_ERR_IO, "cannot read model %s: %s", path, strerror(errno));
    }
    walker w = {0};
    uint64_t declared = 0, table = 0;
    unsigned char types[SBQ_MAX_MATRICES];
    sb_status s;
    if (magic == SBQ_MAGIC) {
        s = parse_storybot(h, m, &w, &declared, err);
        if (s == SB_OK) s = read_types(fd, size, &m->cfg, w.draft, types, &table, path, err);
        w.types = types;
    } else {
        s = parse_ak42(h, m, &w, err);
        if (s == SB_OK) s = check_groups(&m->cfg, w.group_size, err);
    }
    if (s != SB_OK) return s;

    int L = m->cfg.n_layers;
    if ((s = sb_model_alloc_matrices(m, err)) != SB_OK) return s;

    w.at = HEADER_BYTES + table;
    walk(&w, m); // sizes only
    uint64_t expected = w.at;
    if (magic == SBQ_MAGIC && declared != expected) {
        return sb_fail(err, SB_ERR_FORMAT, "model %s: header says %llu bytes but its config "
                       "implies %llu (corrupt header)", path, (unsigned long long)declared,
                       (unsigned long long)expected);
    }
    if (size != expected) {
        return sb_fail(err, SB_ERR_FORMAT, "model %s is %llu bytes but its header implies %llu "
                       "(%s)", path, (unsigned long long)size, (unsigned long long)expected,
                       size < expected ? "truncated" : "unexpected trailing data");
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        return sb_fail(err, SB_ERR_IO, "cannot map model %s: %s", path, strerror(errno));
    }
    m->map = map;
    m->map_len = size;
    w.base = map;
    w.at = HEADER_BYTES + table;
    walk(&w, m);

    // read per token: every matrix, the norms, and one embedding row (not the whole table);
    // with a draft, the draft and at most SB_RESCORE_BLOCKS row blocks of the classifier
    uint64_t bytes = sizeof(float) * (uint64_t)m->cfg.dim * (2 * (uint64_t)L + 1);
    for (int i = 0; i < 7 * L; i++) bytes += bytes_of(&m->matrices[i]);
    if (m->draft.data) {
        uint64_t blocks = ((uint64_t)m->cfg.vocab_size + SB_QK - 1) / SB_QK;
        uint64_t most = blocks < SB_RESCORE_BLOCKS ? blocks : SB_RESCORE_BLOCKS;
        bytes += bytes_of(&m->draft) + sb_block_bytes(&m->wcls) * most;
    } else {
        bytes += bytes_of(&m->wcls);
    }
    bytes += bytes_of(&m->embedding) / (uint64_t)m->cfg.vocab_size;
    m->weight_bytes = (size_t)bytes;
    m->qkernels = sb_qkernels_pick(m->kernels == &sb_kernels_generic);
    if (m->draft.data) { // read by blocks from now on (model.c keeps fd open for it)
        uint64_t at = (uint64_t)((const unsigned char *)m->wcls.data - (unsigned char *)map);
        posix_fadvise(fd, (off_t)at, (off_t)bytes_of(&m->wcls), POSIX_FADV_RANDOM); // advice
    }
    return SB_OK;
}
