/* twopass.c: a study for the board's classifier (issue 16), not part of the library.
 *
 *     twopass FULL.bin DRAFT.bin TOKENS.bin
 *
 * FULL is a model without a draft (its classifier scores every row); DRAFT the same
 * format with a cheaper embedding. The library's second pass (forward.c rescore) came
 * out of this study, whose numbers are for the board format of its time. For every
 * position of the token stories in TOKENS (each an int32 count, then that many int32
 * ids, as robot/dev/evaluate.py tokenizes the eval text) it runs FULL's forward pass, takes
 * FULL's logits and DRAFT's classifier on the same final hidden state, and scores the
 * next token three ways: FULL's classifier, DRAFT's, and two passes (DRAFT's logits
 * with those within delta of DRAFT's largest replaced by FULL's), with how many rows the
 * second pass re-scores. Prints perplexities; compare them with `storybot eval`'s fp32.
 * tests/test_quant.py runs it on a small model. Issue 16's numbers:
 *
 *     make -C native build/twopass
 *     storybot quantize -f board --bits embedding=5,wo=6,w1=6,draft=0 stories15M.bin board.bin
 *     storybot quantize -f board --bits embedding=4,wo=6,w1=6,draft=0 stories15M.bin board4.bin
 *     .venv/bin/python -c "import struct; from robot.engine import Engine; \
 *       from robot.dev.evaluate import read_stories as r; \
 *       e = Engine('stories15M.bin', 'tokenizer.bin'); f = open('tokens.bin', 'wb'); \
 *       [f.write(struct.pack(f'{len(t) + 1}i', len(t), *t)) for t in \
 *        (e.tokenize(s)[:256] for s in r('../shared/eval/stories15M_samples.txt'))]"
 *     native/build/twopass board.bin board4.bin tokens.bin
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const float DELTAS[] = {2, 4, 6, 8, 12};
#define ND (int)(sizeof(DELTAS) / sizeof(DELTAS[0]))

static double log_sum_exp(const float *l, int n) {
    float m = l[0];
    for (int i = 1; i < n; i++) m = l[i] > m ? l[i] : m;
    double s = 0.0;
    for (int i = 0; i < n; i++) s += exp((double)l[i] - m);
    return m + log(s);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: twopass FULL.bin DRAFT.bin TOKENS.bin\n");
        return 2;
    }
    char err[SB_ERR_LEN];
    sb_model full, draft;
    sb_state s;
    const sb_kernel_set *k = sb_kernels_pick(0);
    size_t limit = (size_t)1 << 34;
    if (sb_model_load(&full, argv[1], k, limit, err) || sb_model_load(&draft, argv[2], k, limit, err)
        || sb_state_init(&s, &full.cfg, 1, NULL, limit, err)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    FILE *f = fopen(argv[3], "rb");
    int v = full.cfg.vocab_size, n, cap = full.cfg.seq_len;
    float *lf = malloc(sizeof(float) * v), *ld = malloc(sizeof(float) * v);
    float *two = malloc(sizeof(float) * v);
    int *tok = malloc(sizeof(int) * cap);
    if (!f || !lf || !ld || !two || !tok) {
        fprintf(stderr, "cannot open %s or out of memory\n", argv[3]);
        return 1;
    }
    double nll_full = 0, nll_draft = 0, nll_two[ND] = {0}, rows[ND] = {0};
    int most[ND] = {0};
    long positions = 0;
    while (fread(&n, sizeof(int), 1, f) == 1) {
        if (n < 0 || n > cap || fread(tok, sizeof(int), (size_t)n, f) != (size_t)n) {
            fprintf(stderr, "%s: bad story of %d tokens\n", argv[3], n);
            return 1;
        }
        for (int p = 0; p + 1 < n; p++, positions++) {
            sb_forward(&full, &s, tok[p], p, 1);
            memcpy(lf, s.logits, sizeof(float) * v);
            sb_matvec(&draft, &s, ld, s.x, &draft.wcls); // s.x: the final hidden state
            int y = tok[p + 1];
            nll_full += log_sum_exp(lf, v) - lf[y];
            nll_draft += log_sum_exp(ld, v) - ld[y];
            float top = ld[0];
            for (int i = 1; i < v; i++) top = ld[i] > top ? ld[i] : top;
            for (int d = 0; d < ND; d++) {
                int c = 0;
                for (int i = 0; i < v; i++) {
                    int rescored = ld[i] >= top - DELTAS[d];
                    two[i] = rescored ? lf[i] : ld[i];
                    c += rescored;
                }
                nll_two[d] += log_sum_exp(two, v) - two[y];
                rows[d] += c;
                most[d] = c > most[d] ? c : most[d];
            }
        }
    }
    printf("positions %ld\nfull classifier: ppl %.4f\ndraft classifier: ppl %.4f\n", positions,
           exp(nll_full / positions), exp(nll_draft / positions));
    for (int d = 0; d < ND; d++) {
        printf("two passes, delta %g: ppl %.4f, rows re-scored %.1f on average, %d at most\n",
               (double)DELTAS[d], exp(nll_two[d] / positions), rows[d] / positions, most[d]);
    }
    return 0;
}
