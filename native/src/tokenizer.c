/* tokenizer.c: llama2.c's tokenizer.bin and the reference's BPE encoding and decoding.
 *
 * tokenizer.bin: int32 max_token_length, then per token: float32 merge score, int32
 * length, that many bytes. The number of tokens is not stored; it must equal the
 * model's vocab_size, so the file must end exactly after that many tokens.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_TOKEN_LENGTH 4096

// ----------------------------------------------------------------------------
// token lookup by string: binary search of the ids sorted by string

static const char *token_str(const sb_tokenizer *t, int id) {
    return t->strings + t->offsets[id];
}

static size_t token_len(const sb_tokenizer *t, int id) {
    return t->offsets[id + 1] - t->offsets[id] - 1;
}

/* strcmp's order (tokens hold no NUL byte): <0, 0 or >0. */
static int compare(const char *a, size_t na, const char *b, size_t nb) {
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

/* Token a sorts before token b: by string, then by id, so that of duplicate strings the
 * first is found, as before. */
static int before(const sb_tokenizer *t, int a, int b) {
    int c = compare(token_str(t, a), token_len(t, a), token_str(t, b), token_len(t, b));
    return c < 0 || (c == 0 && a < b);
}

static int lookup(const sb_tokenizer *t, const char *s, size_t n) {
    int lo = 0, hi = t->vocab_size; // the first sorted token not before s
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2, id = t->sorted[mid];
        if (compare(token_str(t, id), token_len(t, id), s, n) < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo == t->vocab_size) return -1;
    int id = t->sorted[lo];
    return token_len(t, id) == n && memcmp(token_str(t, id), s, n) == 0 ? id : -1;
}

static void sift_down(const sb_tokenizer *t, int32_t *a, int i, int n) {
    for (int c; (c = 2 * i + 1) < n; i = c) {
        if (c + 1 < n && before(t, a[c], a[c + 1])) c++;
        if (!before(t, a[i], a[c])) return;
        int32_t tmp = a[i];
        a[i] = a[c];
        a[c] = tmp;
    }
}

/* Heapsort: in place (no second table while loading) and without qsort_r, which not
 * every libc the board may have offers. */
static void sort_ids(const sb_tokenizer *t) {
    int n = t->vocab_size;
    int32_t *a = t->sorted;
    for (int i = 0; i < n; i++) a[i] = i;
    for (int i = n / 2 - 1; i >= 0; i--) sift_down(t, a, i, n);
    for (int end = n - 1; end > 0; end--) {
        int32_t tmp = a[0];
        a[0] = a[end];
        a[end] = tmp;
        sift_down(t, a, 0, end);
    }
}

/* "<0xHH>" tokens stand for one raw byte. */
static int16_t raw_byte_of(const char *s, int len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return (int16_t)v;
}

// ----------------------------------------------------------------------------
// load / free

static sb_status read_file(const char *path, unsigned char **data, size_t *len, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return sb_fail(err, SB_ERR_IO, "cannot open tokenizer %s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0 || ftell(f) < 0) {
        fclose(f);
        return sb_fail(err, SB_ERR_IO, "tokenizer %s is not a regular file", path);
    }
    *len = (size_t)ftell(f);
    rewind(f);
    *data = malloc(*len ? *len : 1);
    if (!*data) {
        fclose(f);
        return sb_fail(err, SB_ERR_NOMEM, "out of memory reading tokenizer %s", path);
    }
    size_t got = fread(*data, 1, *len, f);
    int bad = ferror(f);
    fclose(f);
    if (got != *len || bad) {
        free(*data);
        return sb_fail(err, SB_ERR_IO, "cannot read tokenizer %s", path);
    }
    return SB_OK;
}

static sb_status parse(sb_tokenizer *t, const unsigned char *d, size_t len, const char *path,
                       char *err) {
    int n = t->vocab_size;
    int32_t max_len;
    if (len < 4) return sb_fail(err, SB_ERR_FORMAT, "tokenizer %s is truncated: %zu bytes", path, len);
    memcpy(&max_len, d, 4);
    if (max_len < 1 || max_len > MAX_TOKEN_LENGTH) {
        return sb_fail(err, SB_ERR_FORMAT, "tokenizer %s: max_token_length %d is out of range",
                       path, (int)max_len);
    }
    t->max_token_length = max_len;
    size_t off = 4, text = 0;
    // first pass: check every record and size the string arena
    for (int i = 0; i < n; i++) {
        int32_t l;
        if (len - off < 8) {
            return sb_fail(err, SB_ERR_FORMAT,
                           "tokenizer %s ends after %d tokens; the model's vocab_size is %d",
                           path, i, n);
        }
        memcpy(&l, d + off + 4, 4);
        if (l < 1 || l > max_len) {
            return sb_fail(err, SB_ERR_FORMAT, "tokenizer %s: token %d has length %d (max %d)",
                           path, i, (int)l, (int)max_len);
        }
        if (len - off - 8 < (size_t)l) {
            return sb_fail(err, SB_ERR_FORMAT, "tokenizer %s is truncated inside token %d", path, i);
        }
        if (memchr(d + off + 8, '\0', (size_t)l)) {
            return sb_fail(err, SB_ERR_FORMAT, "tokenizer %s: token %d holds a NUL byte", path, i);
        }
        off += 8 + (size_t)l;
        text += (size_t)l + 1;
    }
    if (off != len) {
        return sb_fail(err, SB_ERR_FORMAT,
                       "tokenizer %s has %zu bytes after %d tokens; it does not match the "
                       "model's vocab_size %d", path, len - off, n, n);
    }

    if (text > UINT32_MAX) {
        return sb_fail(err, SB_ERR_FORMAT, "tokenizer %s holds more than 4 GiB of text", path);
    }
    t->strings = malloc(text);
    t->offsets = malloc(sizeof(uint32_t) * ((size_t)n + 1));
    t->scores = malloc(sizeof(float) * (size_t)n);
    t->sorted = malloc(sizeof(int32_t) * (size_t)n);
    t->concat = malloc(2 * (size_t)max_len + 1);
    if (!t->strings || !t->offsets || !t->scores || !t->sorted || !t->concat) {
        return sb_fail(err, SB_ERR_NOMEM, "out of memory for the tokenizer");
    }
    off = 4;
    uint32_t at = 0;
    for (int i = 0; i < n; i++) {
        int32_t l;
        memcpy(&t->scores[i], d + off, 4);
        memcpy(&l, d + off + 4, 4);
        memcpy(t->strings + at, d + off + 8, (size_t)l);
        t->strings[at + (uint32_t)l] = '\0';
        t->offsets[i] = at;
        at += (uint32_t)l + 1;
        off += 8 + (size_t)l;
    }
    t->offsets[n] = at;
    sort_ids(t);
    return SB_OK;
}

sb_status sb_tokenizer_load(sb_tokenizer *t, const char *path, int vocab_size, char *err) {
    memset(t, 0, sizeof(*t));
    t->vocab_size = vocab_size;
    unsigned char *data = NULL;
    size_t len = 0;
    sb_status s = read_file(path, &data, &len, err);
    if (s != SB_OK) return s;
    s = parse(t, data, len, path, err);
    free(data);
    if (s != SB_OK) sb_tokenizer_free(t);
    return s;
}

void sb_tokenizer_free(sb_tokenizer *t) {
    free(t->strings);
    free(t->offsets);
    free(t->scores);
    free(t->sorted);
    free(t->concat);
    memset(t, 0, sizeof(*t));
}

// ----------------------------------------------------------------------------
// encode

/* Length of the UTF-8 sequence starting at s, or 0 if it is not valid UTF-8. */
static int utf8_len(const unsigned char *s) {
    unsigned char c = s[0];
    int n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || (n == 2 && c < 0xC2) || (n == 4 && c > 0xF4)) return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
    }
    if (n == 3) {
        uint32_t cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        if (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)) return 0; // overlong, surrogate
    }
    if (n == 4) {
        uint32_t cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12);
        if (cp < 0x10000 || cp > 0x10FFFF) return 0;
    }
    return n;
}

/* The reference merges, again and again, the best-scoring adjacent pair whose joined
 * string is a token (the leftmost on ties; only scores above -1e10), rescanning every
 * pair each time: quadratic in the prompt's length. The same merges, in the same order,
 * come from a heap of candidate pairs ordered by (score, then leftmost): tokens form a
 * linked list in which a merged pair keeps its left node, so a node's index orders it
 * left to right, and an entry is stale once its nodes no longer hold its ids side by side. */
typedef struct {
    float score;
    int left, right;   // node indices
    int id_left, id_right, id;
} pair;

static int pair_before(const pair *a, const pair *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

typedef struct {
    const sb_tokenizer *t;
    int *tok, *next, *prev;
    pair *heap;
    int size;
} merger;

static void push(merger *m, int left, int right) {
    const sb_tokenizer *t = m->t;
    int a = m->tok[left], b = m->tok[right];
    size_t la = token_len(t, a), lb = token_len(t, b);
    memcpy(t->concat, token_str(t, a), la);
    memcpy(t->concat + la, token_str(t, b), lb);
    int id = lookup(t, t->concat, la + lb);
    if (id < 0 || !(t->scores[id] > -1e10f)) return;
    pair p = {t->scores[id], left, right, a, b, id};
    int i = m->size++;
    for (; i > 0 && pair_before(&p, &m->heap[(i - 1) / 2]); i = (i - 1) / 2) {
        m->heap[i] = m->heap[(i - 1) / 2];
    }
    m->heap[i] = p;
}

static pair pop_best(merger *m) {
    pair best = m->heap[0], last = m->heap[--m->size];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= m->size) break;
        if (c + 1 < m->size && pair_before(&m->heap[c + 1], &m->heap[c])) c++;
        if (!pair_before(&m->heap[c], &last)) break;
        m->heap[i] = m->heap[c];
        i = c;
    }
    if (m->size) m->heap[i] = last;
    return best;
}

size_t sb_tokenizer_scratch(size_t len) {
    return (len + 2) * (3 * sizeof(int) + 3 * sizeof(pair));
}

static sb_status merge(const sb_tokenizer *t, int *tokens, int *n_tokens, char *err) {
    int n = *n_tokens;
    if (n < 2) return SB_OK;
    // every merge removes a node and pushes at most two pairs: n - 1 + 2 (n - 1) in all
    merger m = {t, tokens, malloc(sizeof(int) * 2 * (size_t)n), NULL,
                malloc(sizeof(pair) * 3 * (size_t)n), 0};
    if (!m.next || !m.heap) {
        free(m.next);
        free(m.heap);
        return sb_fail(err, SB_ERR_NOMEM, "out of memory encoding %d tokens", n);
    }
    m.prev = m.next + n;
    for (int i = 0; i < n; i++) {
        m.next[i] = i + 1 < n ? i + 1 : -1;
        m.prev[i] = i - 1;
    }
    for (int i = 0; i + 1 < n; i++) push(&m, i, i + 1);
    while (m.size) {
        pair p = pop_best(&m);
        if (m.next[p.left] != p.right || m.tok[p.left] != p.id_left
            || m.tok[p.right] != p.id_right) {
            continue; // a merge since its push changed or parted these nodes
        }
        m.tok[p.left] = p.id;
        m.tok[p.right] = -1;
        m.next[p.left] = m.next[p.right];
        if (m.next[p.right] >= 0) m.prev[m.next[p.right]] = p.left;
        m.next[p.right] = -1;
        if (m.prev[p.left] >= 0) push(&m, m.prev[p.left], p.left);
        if (m.next[p.left] >= 0) push(&m, p.left, m.next[p.left]);
    }
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (tokens[i] >= 0) tokens[k++] = tokens[i];
    }
    *n_tokens = k;
    free(m.next);
    free(m.heap);
    return SB_OK;
}

sb_status sb_tokenizer_encode(const sb_tokenizer *t, const char *text, int *tokens,
                              int *n_tokens, char *err) {
    int n = 0;
    tokens[n++] = SB_BOS;
    if (text[0] != '\0') {
        // sentencepiece's add_dummy_prefix: the text starts as if after a space
        int space = lookup(t, " ", 1);
        if (space < 0) return sb_fail(err, SB_ERR_FORMAT, "tokenizer has no \" \" token");
        tokens[n++] = space;
    }
    for (const unsigned char *c = (const unsigned char *)text; *c;) {
        int cl = utf8_len(c);
        if (cl == 0) {
            return sb_fail(err, SB_ERR_ARG, "prompt is not valid UTF-8 at byte %td",
                           (const char *)c - text);
        }
        int id = lookup(t, (const char *)c, (size_t)cl);
        if (id >= 0) {
            tokens[n++] = id;
        } else {
            // byte fallback: ids 3..258 are the raw bytes (after <unk>, <s>, </s>)
            for (int i = 0; i < cl; i++) {
                if (c[i] + 3 >= t->vocab_size) {
                    return sb_fail(err, SB_ERR_ARG, "prompt byte 0x%02x has no token in this "
                                   "vocabulary", c[i]);
                }
                tokens[n++] = c[i] + 3;
            }
        }
        c += cl;
    }

    sb_status s = merge(t, tokens, &n, err);
    *n_tokens = n;
    return s;
}

// ----------------------------------------------------------------------------
// decode

const char *sb_tokenizer_decode(const sb_tokenizer *t, int prev, int token, char byte_buf[2],
                                size_t *len, int *flags) {
    const char *piece = token_str(t, token);
    size_t n = token_len(t, token);
    int16_t raw = raw_byte_of(piece, (int)n);
    // after BOS, sentencepiece drops the leading space of the first piece
    if (prev == SB_BOS && piece[0] == ' ') {
        piece++;
        n--;
    }
    if (raw >= 0) {
        byte_buf[0] = (char)raw;
        byte_buf[1] = '\0';
        piece = byte_buf;
        n = 1;
    }
    *flags = 0;
    if (n == 1) {
        // the reference prints a lone byte only if it is printable ASCII or whitespace
        unsigned char b = (unsigned char)piece[0];
        int printable = (b >= 0x20 && b < 0x7f) || (b >= 0x09 && b <= 0x0d);
        if (!printable) *flags |= SB_PIECE_UNPRINTABLE;
    }
    *len = n;
    return piece;
}
