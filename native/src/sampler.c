/* sampler.c: the reference's sampling, step for step: xorshift coin, greedy argmax at
 * temperature 0, temperature division, softmax, and top-p with its cutoff and ordering.
 * Every sum runs in the reference's order, since the coin is compared against it.
 *
 * A model that promises no exactness (sb_exact false) samples the same way from the fast
 * kernels' numbers: the temperature as a multiplication, max, exp and sum in vectors
 * (fastmath.h's exp), and top-p's candidates found by a vector comparison. Scalar, the
 * reference's expf alone costs the C906 ~35 instructions per logit.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

size_t sb_sampler_bytes(int vocab_size) {
    return sizeof(sb_prob_index) * (size_t)vocab_size;
}

sb_status sb_sampler_init(sb_sampler *s, int vocab_size, const sb_kernel_set *kernels,
                          int exact, size_t budget, char *err) {
    memset(s, 0, sizeof(*s));
    if (sb_sampler_bytes(vocab_size) > budget) {
        return sb_fail(err, SB_ERR_NOMEM, "the sampler needs %zu bytes, more than the %zu "
                       "the memory limit leaves", sb_sampler_bytes(vocab_size), budget);
    }
    s->vocab_size = vocab_size;
    s->kernels = kernels;
    s->exact = exact;
    s->candidates = malloc(sb_sampler_bytes(vocab_size));
    if (!s->candidates) {
        sb_sampler_free(s);
        return sb_fail(err, SB_ERR_NOMEM, "out of memory for the sampler");
    }
    return SB_OK;
}

void sb_sampler_free(sb_sampler *s) {
    free(s->candidates);
    memset(s, 0, sizeof(*s));
}

void sb_sampler_set(sb_sampler *s, float temperature, float topp, uint64_t seed) {
    s->temperature = temperature;
    s->topp = topp;
    s->rng = seed;
}

// xorshift* (Marsaglia; Vigna's multiplier), as the reference seeds and steps it
static uint32_t random_u32(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(uint64_t *state) { // in [0, 1)
    return (float)(random_u32(state) >> 8) / 16777216.0f;
}

/* x (n,) -> exp(x - max); returns their sum: the softmax before its division. */
static float exps(const sb_kernel_set *k, float *x, int n) {
    float max_val = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] > max_val) max_val = x[i];
    }
    for (int i = 0; i < n; i++) x[i] -= max_val;
    k->expf_n(x, x, n);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) sum += x[i];
    return sum;
}

void sb_softmax(const sb_kernel_set *k, float *x, int n) {
    float sum = exps(k, x, n);
    for (int i = 0; i < n; i++) x[i] /= sum;
}

/* The first index of the largest logit, the one the reference's scan keeps: vectors find
 * the same one for every model (the logits are finite here), for a quarter of the scan's
 * C906 cycles (0.19M -> 0.05M per token). */
static int argmax(const sb_kernel_set *k, const float *p, int n) {
    int best = 0;
    k->select_ge(&best, p, n, k->max_n(p, n), 1);
    return best;
}

/* The samplers take e = exp(logit - max) and their sum: a probability e[i] / sum is
 * divided out only where it is read, as the reference's softmax rounds it. A float
 * division costs 20 cycles on the C906, and most of the vocabulary is never read. */

static int sample_mult(const float *e, float sum, int n, float coin, int exact) {
    float cdf = 0.0f;
    if (!exact) { // the coin scaled to the sum instead of a division per token
        for (int i = 0; i < n; i++) {
            cdf += e[i];
            if (coin * sum < cdf) return i;
        }
        return n - 1;
    }
    for (int i = 0; i < n; i++) {
        cdf += e[i] / sum;
        if (coin < cdf) return i;
    }
    return n - 1; // rounding left the coin above the total
}

/* Candidates leave in the order of a stable sort by descending probability: the
 * reference sorts them all with glibc's qsort (a stable merge sort at this size), but
 * only the nucleus, usually a small share of them, is ever read. A binary max-heap
 * ordered by (probability, then lower index first) hands them out in that same order,
 * for the price of one heapify and one pop per token read. */
static int before(const sb_prob_index *a, const sb_prob_index *b) {
    return a->prob > b->prob || (a->prob == b->prob && a->index < b->index);
}

static void sift_down(sb_prob_index *h, int n, int i) {
    for (;;) {
        int best = i, l = 2 * i + 1, r = l + 1;
        if (l < n && before(&h[l], &h[best])) best = l;
        if (r < n && before(&h[r], &h[best])) best = r;
        if (best == i) return;
        sb_prob_index t = h[i];
        h[i] = h[best];
        h[best] = t;
        i = best;
    }
}

/* Moves the first candidate in sorted order to h[n - 1]; h[0, n - 1) stays a heap. */
static void pop(sb_prob_index *h, int n) {
    sb_prob_index t = h[0];
    h[0] = h[n - 1];
    h[n - 1] = t;
    sift_down(h, n - 1, 0);
}

static void add_candidate(sb_prob_index *c, int *n0, int i, float e, float sum, float cutoff) {
    float p = e / sum;
    if (p >= cutoff) {
        c[*n0].index = i;
        c[*n0].prob = p;
        ++*n0;
    }
}

_Static_assert(sizeof(sb_prob_index) == 2 * sizeof(int), "collect packs indices in candidates");

/* Candidates whose e reaches `below`, then those of them whose probability reaches
 * cutoff, into s->candidates; returns how many. */
static int collect(sb_sampler *s, const float *e, float sum, int n, float cutoff, float below) {
    sb_prob_index *c = s->candidates;
    int n0 = 0;
    if (!s->exact) {
        /* The fast kernels find them by comparing vectors. Their indices go to the upper
         * half of the candidates' memory, read as ints: the candidate written for index j
         * (number j at most) covers ints up to 2j + 1, below every index still unread
         * (n + j + 1 and up), so no scratch of its own is needed. */
        int *idx = (int *)c + n;
        int m = s->kernels->select_ge(idx, e, n, below, n);
        for (int j = 0; j < m; j++) add_candidate(c, &n0, idx[j], e[idx[j]], sum, cutoff);
        return n0;
    }
    for (int i = 0; i < n; i++) {
        if (e[i] >= below) add_candidate(c, &n0, i, e[i], sum, cutoff);
    }
    return n0;
}

static int sample_topp(sb_sampler *s, const float *e, float sum, int n, float coin) {
    // tokens below this cannot be in the nucleus, so they are not sorted
    const float cutoff = (1.0f - s->topp) / (float)(n - 1);
    /* A probability e / sum rounds up by a relative 2^-24 at most, so reaching the
     * cutoff takes e >= cutoff * sum / (1 + 2^-24); `below` stays under that despite its
     * own two roundings, and only the e above it are divided and tested. Nothing here
     * is subnormal: cutoff >= 2^-24 / n, and 1 <= sum <= n. */
    int n0 = collect(s, e, sum, n, cutoff, cutoff * sum * 0.999f);
    /* With top-p below 1 / n, a flat distribution leaves no token at the cutoff (the
     * reference then reads before its array): the nucleus is still the most likely
     * tokens, so all of them are candidates. */
    if (n0 == 0) n0 = collect(s, e, sum, n, 0.0f, 0.0f);
    sb_prob_index *c = s->candidates;
    for (int i = n0 / 2 - 1; i >= 0; i--) sift_down(c, n0, i);
    // the k-th candidate in sorted order lands at c[n0 - 1 - k]
    float cumulative = 0.0f;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        pop(c, n0 - i);
        cumulative += c[n0 - 1 - i].prob;
        if (cumulative > s->topp) {
            last = i;
            break;
        }
    }
    float r = coin * cumulative;
    float cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += c[n0 - 1 - i].prob;
        if (r < cdf) return c[n0 - 1 - i].index;
    }
    return c[n0 - 1 - last].index;
}

int sb_sample(sb_sampler *s, float *logits) {
    int n = s->vocab_size;
    const sb_kernel_set *k = s->kernels;
    if (s->temperature == 0.0f) return argmax(k, logits, n);
    float sum;
    if (s->exact) {
        if (s->temperature != 1.0f) { // x / 1.0f is x
            for (int i = 0; i < n; i++) logits[i] /= s->temperature;
        }
        sum = exps(k, logits, n);
        if (!isfinite(sum)) return -1; // logits / temperature overflowed: Inf - Inf is NaN
    } else {
        /* (x - max) / temperature never overflows to NaN, the reference's order does;
         * only a temperature whose reciprocal overflows leaves no distribution. */
        float scale = 1.0f / s->temperature;
        if (!isfinite(scale)) return -1;
        sum = k->exp_sum(logits, logits, n, k->max_n(logits, n), scale);
    }
    float coin = random_f32(&s->rng);
    if (s->topp <= 0.0f || s->topp >= 1.0f) return sample_mult(logits, sum, n, coin, s->exact);
    return sample_topp(s, logits, sum, n, coin);
}
