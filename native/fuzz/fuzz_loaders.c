/* fuzz_loaders.c: libFuzzer target for the model loader, the tokenizer loader, the
 * prompt encoder and the numbers in a model. The first input byte picks the target; the
 * rest is the file, the prompt, or (numbers) two bytes of sampling settings and then the
 * floats of a tiny model's weights, repeated to fill it, run for a few tokens and scored.
 * Valid files (a tiny model and a tokenizer) are written once, for the parts not fuzzed.
 *
 *     make -C native fuzz && native/build/fuzz/fuzz_loaders -max_total_time=60 CORPUS
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "storybot.h"
#include "../tests/tiny_tokenizer.h"

enum { DIM = 8, HIDDEN = 16, LAYERS = 1, HEADS = 2, KV_HEADS = 1, VOCAB = 300, SEQ = 16 };

static char model_path[64], tok_path[64];
static const int32_t header[7] = {DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ};

static long weight_count(void) {
    int head = DIM / HEADS, kv = KV_HEADS * head;
    return (long)VOCAB * DIM + 2L * LAYERS * DIM + 2L * LAYERS * DIM * DIM
           + 2L * LAYERS * DIM * kv + 3L * LAYERS * DIM * HIDDEN + DIM + (long)SEQ * head;
}

static void write_valid_files(void) {
    // a tokenizer of VOCAB tokens: the 3 specials, 256 byte tokens, then a few merges
    FILE *f = fopen("/tmp/storybot-fuzz-tok.bin", "wb");
    write_tiny_tokenizer(f, VOCAB);
    fclose(f);
    snprintf(tok_path, sizeof tok_path, "/tmp/storybot-fuzz-tok.bin");
    // a model whose weights are all 0.01
    long n = weight_count();
    f = fopen("/tmp/storybot-fuzz-model.bin", "wb");
    fwrite(header, 4, 7, f);
    float w = 0.01f;
    for (long i = 0; i < n; i++) fwrite(&w, 4, 1, f);
    fclose(f);
    snprintf(model_path, sizeof model_path, "/tmp/storybot-fuzz-model.bin");
}

/* The fuzzed bytes as a file the library can open and map. */
static int as_file(const uint8_t *data, size_t size, char *path, size_t cap) {
    int fd = memfd_create("fuzz", 0);
    if (fd < 0) return -1;
    if (size && write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return -1;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

static void tell(sb_context *ctx, const char *prompt) {
    if (sb_start(ctx, 1, prompt) != SB_OK) return;
    sb_token t;
    for (int i = 0; i < 8 && sb_next(ctx, &t) == SB_OK; i++) {}
}

/* The tiny model's header, then the fuzzed floats over and over (zeros if fewer than 4
 * bytes): NaN, Inf, huge and subnormal weights, run for a few tokens and scored. */
static void numbers(const uint8_t *data, size_t size) {
    static const float temperatures[] = {0.0f, 1.0f, 0.7f, 1e-45f, 1e30f};
    static const float topps[] = {0.0f, 0.9f, 1e-6f, 0.5f, 1.0f};
    if (size < 2) return;
    sb_params p = sb_default_params();
    p.temperature = temperatures[data[0] % 5];
    p.topp = topps[data[1] % 5];
    p.kernels = data[0] & 0x80 ? SB_KERNELS_GENERIC : SB_KERNELS_AUTO;
    data += 2;
    size -= 2;
    size_t floats = size / 4, bytes = 28 + 4 * (size_t)weight_count();
    uint8_t *file = calloc(1, bytes);
    memcpy(file, header, 28);
    for (size_t i = 0; floats && i < (size_t)weight_count(); i++) {
        memcpy(file + 28 + 4 * i, data + 4 * (i % floats), 4);
    }
    char path[64], err[256];
    int fd = as_file(file, bytes, path, sizeof path);
    free(file);
    if (fd < 0) return;
    sb_context *ctx = NULL;
    if (sb_open(path, tok_path, &p, &ctx, err, sizeof err) == SB_OK) {
        tell(ctx, "ab ba");
        int tokens[3] = {1, 100, 200};
        float logprobs[2];
        sb_score(ctx, tokens, 3, logprobs);
    }
    sb_free(ctx);
    close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model_path[0]) write_valid_files();
    if (size < 1) return 0;
    int target = data[0] % 4;
    data++;
    size--;
    if (target == 3) {
        numbers(data, size);
        return 0;
    }
    sb_params p = sb_default_params();
    char err[256], path[64];
    sb_context *ctx = NULL;
    if (target == 2) { // the prompt encoder
        char *prompt = malloc(size + 1);
        memcpy(prompt, data, size);
        prompt[size] = '\0';
        if (sb_open(model_path, tok_path, &p, &ctx, err, sizeof err) == SB_OK) tell(ctx, prompt);
        free(prompt);
        sb_free(ctx);
        return 0;
    }
    int fd = as_file(data, size, path, sizeof path);
    if (fd < 0) return 0;
    const char *model = target == 0 ? path : model_path;
    const char *tok = target == 1 ? path : tok_path;
    if (sb_open(model, tok, &p, &ctx, err, sizeof err) == SB_OK) tell(ctx, "ab ba");
    sb_free(ctx);
    close(fd);
    return 0;
}
