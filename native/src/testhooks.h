/* testhooks.h: internal entry points for the tests (tests/test_quant.py reaches them
 * through a separate cffi cdef; native/tests/qkernels_test.c links them directly).
 * Not part of the public API: names and arguments may change with the kernels. */
#ifndef STORYBOT_TESTHOOKS_H
#define STORYBOT_TESTHOOKS_H

#include <stddef.h>
#include <stdint.h>

#include "storybot.h"

/* Writes the names of this CPU's quantized kernel sets, comma-separated, into buf;
 * returns how many there are. */
int sb_test_qkernels(char *buf, size_t len);
/* x (n,) -> Q8_0 with the named set; returns 0, or -1 for an unknown set or a bad n. */
int sb_test_quantize_q8(const char *kernels, int8_t *xq, float *xs, int32_t *xsum,
                        const float *x, int n);
/* out (d,) = W @ x with the named set; type 1 = q8_0 blocks, 2 = q4_0 blocks, 5 = q5
 * blocks, 6 = q6 blocks (fp16 scales), 8 = q8_0 blocks with one fp16 scale per row (x
 * quantized with one scale), 3 = row-major int8 with group size gs (llama2.c ak42, fp32
 * scales). Returns 0, -1, or -2 when the set has no kernel of its own for
 * q5/q6 (the forward pass then uses the portable one). */
int sb_test_qmatvec(const char *kernels, int type, float *out, const int8_t *xq,
                    const float *xs, const int32_t *xsum, const void *w, const void *ws,
                    int n, int d, int gs);
/* fp16 KV helpers of the named set: op 0 stores a (n,) as halves into out, op 1 is
 * f16_scores(out, a, b, head_size, stride = seq_len, n), op 2 is
 * f16_mix(out, a, b, head_size, stride, n). Returns 0 or -1. */
int sb_test_f16(const char *kernels, int op, float *out, const float *a, const void *b,
                int head_size, int stride, int n);
/* Runs tokens (n, from position 0) and writes the last position's logits (vocab_size,)
 * into logits and, if the model has a draft classifier, the draft's logits for the same
 * hidden state into draft (when not NULL). Returns 0, -1 for bad arguments, or -2 when
 * draft was asked for and the model has none. */
int sb_test_logits(sb_context *ctx, const int *tokens, int n, float *logits, float *draft);

#endif
