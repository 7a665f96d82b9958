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
// token lookup by string (FNV-1a, open addressing)

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int lookup(const sb_tokenizer *t, const char *s, size_t n) {
    for (uint32_t i = hash_bytes(s, n) & t->hash_mask;; i = (i + 1) & t->hash_mask) {
        int id = t->hash[i];
        if (id < 0) return -1;
        if ((size_t)t->lengths[id] == n && memcmp(t->vocab[id], s, n) == 0) return id;
    }
}

static void insert(sb_tokenizer *t, int id) {
    uint32_t i = hash_bytes(t->vocab[id], (size_t)t->lengths[id]) & t->hash_mask;
    while (t->hash[i] >= 0) {
        // the first of duplicate strings wins, as the reference's sorted search finds it
        if (t->lengths[t->hash[i]] == t->lengths[id]
            && memcmp(t->vocab[t->hash[i]], t->vocab[id], (size_t)t->lengths[id]) == 0) return;
        i = (i + 1) & t->hash_mask;
    }
    t->hash[i] = id;
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

    uint32_t cap = 1;
    while (cap < 2u * (uint32_t)n) cap <<= 1;
    t->hash_mask = cap - 1;
    t->strings = malloc(text);
    t->vocab = malloc(sizeof(char *) * (size_t)n);
    t->lengths = malloc(sizeof(int) * (size_t)n);
    t->scores = malloc(sizeof(float) * (size_t)n);
    t->raw_byte = malloc(sizeof(int16_t) * (size_t)n);
    t->hash = malloc(sizeof(int) * cap);
    t->concat = malloc(2 * (size_t)max_len + 1);
    if (!t->strings || !t->vocab || !t->lengths || !t->scores || !t->raw_byte || !t->hash
        || !t->concat) {
        return sb_fail(err, SB_ERR_NOMEM, "out of memory for the tokenizer");
    }
    memset(t->hash, 0xff, sizeof(int) * cap);
    off = 4;
    char *s = t->strings;
    for (int i = 0; i < n; i++) {
        int32_t l;
        memcpy(&t->scores[i], d + off, 4);
        memcpy(&l, d + off + 4, 4);
        memcpy(s, d + off + 8, (size_t)l);
        s[l] = '\0';
        t->vocab[i] = s;
        t->lengths[i] = l;
        t->raw_byte[i] = raw_byte_of(s, l);
        insert(t, i);
        s += l + 1;
        off += 8 + (size_t)l;
    }
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
    free(t->vocab);
    free(t->lengths);
    free(t->scores);
    free(t->raw_byte);
    free(t->hash);
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

    // merge the best-scoring adjacent pair (the leftmost on ties) until none is in the vocab
    for (;;) {
        float best_score = -1e10f;
        int best_id = -1, best_idx = -1;
        for (int i = 0; i + 1 < n; i++) {
            size_t la = (size_t)t->lengths[tokens[i]], lb = (size_t)t->lengths[tokens[i + 1]];
            memcpy(t->concat, t->vocab[tokens[i]], la);
            memcpy(t->concat + la, t->vocab[tokens[i + 1]], lb);
            int id = lookup(t, t->concat, la + lb);
            if (id >= 0 && t->scores[id] > best_score) {
                best_score = t->scores[id];
                best_id = id;
                best_idx = i;
            }
        }
        if (best_idx < 0) break;
        tokens[best_idx] = best_id;
        memmove(tokens + best_idx + 1, tokens + best_idx + 2, sizeof(int) * (size_t)(n - best_idx - 2));
        n--;
    }
    *n_tokens = n;
    return SB_OK;
}

// ----------------------------------------------------------------------------
// decode

const char *sb_tokenizer_decode(const sb_tokenizer *t, int prev, int token, char byte_buf[2],
                                size_t *len, int *flags) {
    const char *piece = t->vocab[token];
    size_t n = (size_t)t->lengths[token];
    // after BOS, sentencepiece drops the leading space of the first piece
    if (prev == SB_BOS && piece[0] == ' ') {
        piece++;
        n--;
    }
    if (t->raw_byte[token] >= 0) {
        byte_buf[0] = (char)t->raw_byte[token];
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
