/* sampler.c: the reference's sampling, step for step: xorshift coin, greedy argmax at
 * temperature 0, temperature division, softmax, and top-p with its cutoff and ordering.
 * Every sum runs in the reference's order, since the coin is compared against it.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

sb_status sb_sampler_init(sb_sampler *s, int vocab_size, char *err) {
    memset(s, 0, sizeof(*s));
    s->vocab_size = vocab_size;
    s->candidates = malloc(sizeof(sb_prob_index) * (size_t)vocab_size);
    s->sort_tmp = malloc(sizeof(sb_prob_index) * (size_t)vocab_size);
    if (!s->candidates || !s->sort_tmp) {
        sb_sampler_free(s);
        return sb_fail(err, SB_ERR_NOMEM, "out of memory for the sampler");
    }
    return SB_OK;
}

void sb_sampler_free(sb_sampler *s) {
    free(s->candidates);
    free(s->sort_tmp);
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

void sb_softmax(float *x, int n) {
    float max_val = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] > max_val) max_val = x[i];
    }
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

static int argmax(const float *p, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) {
        if (p[i] > p[best]) best = i;
    }
    return best;
}

static int sample_mult(const float *p, int n, float coin) {
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += p[i];
        if (coin < cdf) return i;
    }
    return n - 1; // rounding left the coin above the total
}

/* Stable merge sort by descending probability. The reference sorts with glibc's
 * qsort, which is a stable merge sort for arrays of this size, so equal
 * probabilities keep their index order here too. */
static void sort_desc(sb_prob_index *a, sb_prob_index *tmp, int n) {
    for (int width = 1; width < n; width *= 2) {
        for (int lo = 0; lo < n; lo += 2 * width) {
            int mid = lo + width < n ? lo + width : n;
            int hi = lo + 2 * width < n ? lo + 2 * width : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = a[j].prob > a[i].prob ? a[j++] : a[i++];
            while (i < mid) tmp[k++] = a[i++];
            while (j < hi) tmp[k++] = a[j++];
        }
        memcpy(a, tmp, sizeof(*a) * (size_t)n);
    }
}

static int sample_topp(sb_sampler *s, const float *p, int n, float coin) {
    // tokens below this cannot be in the nucleus, so they are not sorted
    const float cutoff = (1.0f - s->topp) / (float)(n - 1);
    sb_prob_index *c = s->candidates;
    int n0 = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] >= cutoff) {
            c[n0].index = i;
            c[n0].prob = p[i];
            n0++;
        }
    }
    sort_desc(c, s->sort_tmp, n0);
    float cumulative = 0.0f;
    int last = n0 - 1;
    for (int i = 0; i < n0; i++) {
        cumulative += c[i].prob;
        if (cumulative > s->topp) {
            last = i;
            break;
        }
    }
    float r = coin * cumulative;
    float cdf = 0.0f;
    for (int i = 0; i <= last; i++) {
        cdf += c[i].prob;
        if (r < cdf) return c[i].index;
    }
    return c[last].index;
}

int sb_sample(sb_sampler *s, float *logits) {
    int n = s->vocab_size;
    if (s->temperature == 0.0f) return argmax(logits, n);
    for (int i = 0; i < n; i++) logits[i] /= s->temperature;
    sb_softmax(logits, n);
    float coin = random_f32(&s->rng);
    if (s->topp <= 0.0f || s->topp >= 1.0f) return sample_mult(logits, n, coin);
    return sample_topp(s, logits, n, coin);
}
