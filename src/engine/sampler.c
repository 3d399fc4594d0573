// SPDX-License-Identifier: MIT
// sampler.c -- next-token selection. Order of operations (as HF's logits
// processors and llama.cpp's default chain): repetition / presence /
// frequency penalties over the last penalty_last_n tokens, then greedy if
// temperature is 0; else temperature, top-k, softmax, top-p, min-p, and a
// draw from the renormalized distribution with a seeded xoshiro256** RNG.
// Scratch is allocated at creation: sampling allocates nothing.
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layerpipe/engine.h"
#include "util/argmax.h"

struct lp_cand {
    float logit;
    float p;
    int32_t id;
};

struct lp_sampler {
    struct lp_sampler_params params;
    int vocab_size;
    uint64_t rng[4];         // xoshiro256** state
    struct lp_cand *cands;   // [vocab_size] candidates
    uint16_t *counts;        // [vocab_size] occurrences in the penalty window
};

struct lp_sampler_params lp_sampler_params_default(void) {
    struct lp_sampler_params p = {.temperature = 0.0f,
                                  .top_k = 0,
                                  .top_p = 1.0f,
                                  .min_p = 0.0f,
                                  .repetition_penalty = 1.0f,
                                  .presence_penalty = 0.0f,
                                  .frequency_penalty = 0.0f,
                                  .penalty_last_n = 64,
                                  .seed = 0};
    return p;
}

struct lp_sampler_params lp_sampler_params_from_model(const struct lp_model *model) {
    const struct lp_generation_config *g = lp_model_generation_config(model);
    struct lp_sampler_params p = lp_sampler_params_default();
    if (g->do_sample) {
        p.temperature = g->temperature;
        p.top_k = g->top_k;
        p.top_p = g->top_p > 0.0f ? g->top_p : 1.0f; // HF treats 0 as "no filter" too
        p.min_p = g->min_p;
    }
    if (g->repetition_penalty > 0.0f) p.repetition_penalty = g->repetition_penalty;
    return p;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

// Uniform in [0, 1).
static double rng_uniform(uint64_t s[4]) { return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53; }

enum lp_status lp_sampler_create(struct lp_sampler **out, const struct lp_sampler_params *params,
                                 int vocab_size, struct lp_error *err) {
    *out = NULL;
    const struct lp_sampler_params *p = params;
    if (vocab_size <= 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "sampler: vocab size %d", vocab_size);
    if (!(p->temperature >= 0.0f) || p->top_k < 0 || !(p->top_p > 0.0f && p->top_p <= 1.0f) ||
        !(p->min_p >= 0.0f && p->min_p <= 1.0f) || !(p->repetition_penalty > 0.0f) ||
        !isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "sampler: temperature %g must be >= 0, top_k %d >= 0, top_p %g in "
                            "(0, 1], min_p %g in [0, 1], repetition penalty %g > 0",
                            (double)p->temperature, p->top_k, (double)p->top_p,
                            (double)p->min_p, (double)p->repetition_penalty);
    struct lp_sampler *s = calloc(1, sizeof *s);
    if (!s) return lp_error_set(err, LP_ERR_NOMEM, "sampler: out of memory");
    s->params = *p;
    s->vocab_size = vocab_size;
    s->cands = malloc((size_t)vocab_size * sizeof *s->cands);
    s->counts = calloc((size_t)vocab_size, sizeof *s->counts);
    if (!s->cands || !s->counts) {
        lp_sampler_destroy(s);
        return lp_error_set(err, LP_ERR_NOMEM, "sampler: out of memory");
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    *out = s;
    return LP_OK;
}

void lp_sampler_destroy(struct lp_sampler *s) {
    if (!s) return;
    free(s->cands);
    free(s->counts);
    free(s);
}

static bool no_penalties(const struct lp_sampler_params *p) {
    return p->repetition_penalty == 1.0f && p->presence_penalty == 0.0f &&
           p->frequency_penalty == 0.0f;
}

static bool greedy(const struct lp_sampler_params *p) {
    return p->temperature == 0.0f || p->top_k == 1;
}

bool lp_sampler_is_greedy(const struct lp_sampler *s) {
    return greedy(&s->params) && no_penalties(&s->params);
}

static void apply_penalties(struct lp_sampler *s, float *logits, const int32_t *history,
                            int n_history) {
    const struct lp_sampler_params *p = &s->params;
    if (no_penalties(p)) return;
    int start = 0;
    if (p->penalty_last_n >= 0 && n_history > p->penalty_last_n)
        start = n_history - p->penalty_last_n;
    for (int i = start; i < n_history; i++) {
        int32_t id = history[i];
        if (id >= 0 && id < s->vocab_size && s->counts[id] < UINT16_MAX) s->counts[id]++;
    }
    for (int i = start; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= s->vocab_size || s->counts[id] == 0) continue;
        float l = logits[id];
        // HF RepetitionPenaltyLogitsProcessor
        l = l > 0 ? l / p->repetition_penalty : l * p->repetition_penalty;
        // OpenAI presence / frequency penalties
        l -= (float)s->counts[id] * p->frequency_penalty + p->presence_penalty;
        logits[id] = l;
        s->counts[id] = 0; // each distinct token once; also resets the counts
    }
}

static int cand_desc(const void *a, const void *b) {
    const struct lp_cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

// Keeps the k largest candidates in cands[0..k), sorted descending, by a
// bounded min-heap pass over all n (O(n log k)).
static int select_top_k(struct lp_cand *c, int n, int k) {
    if (k >= n) {
        qsort(c, (size_t)n, sizeof *c, cand_desc);
        return n;
    }
    // heap in c[0..k): min-heap by (logit, then larger id is "smaller")
    for (int i = 0; i < n; i++) {
        if (i < k) {
            int j = i;
            while (j > 0 && cand_desc(&c[(j - 1) / 2], &c[j]) < 0) {
                struct lp_cand t = c[j];
                c[j] = c[(j - 1) / 2];
                c[(j - 1) / 2] = t;
                j = (j - 1) / 2;
            }
        } else if (cand_desc(&c[i], &c[0]) < 0) {
            c[0] = c[i];
            int j = 0;
            for (;;) {
                int l = 2 * j + 1, r = l + 1, m = j;
                if (l < k && cand_desc(&c[l], &c[m]) > 0) m = l;
                if (r < k && cand_desc(&c[r], &c[m]) > 0) m = r;
                if (m == j) break;
                struct lp_cand t = c[j];
                c[j] = c[m];
                c[m] = t;
                j = m;
            }
        }
    }
    qsort(c, (size_t)k, sizeof *c, cand_desc);
    return k;
}

int32_t lp_sampler_sample(struct lp_sampler *s, float *logits, const int32_t *history,
                          int n_history) {
    const struct lp_sampler_params *p = &s->params;
    int V = s->vocab_size;
    apply_penalties(s, logits, history, n_history);
    if (greedy(p)) return lp_argmax_f32(logits, V);
    for (int i = 0; i < V; i++) s->cands[i] = (struct lp_cand){logits[i] / p->temperature, 0, i};
    int n = V;
    if (p->top_k > 0 || p->top_p < 1.0f || p->min_p > 0.0f)
        n = select_top_k(s->cands, V, p->top_k > 0 ? p->top_k : V);
    else {
        // plain temperature sampling: no order needed; max first for the softmax
        int best = 0;
        for (int i = 1; i < V; i++)
            if (s->cands[i].logit > s->cands[best].logit) best = i;
        struct lp_cand t = s->cands[0];
        s->cands[0] = s->cands[best];
        s->cands[best] = t;
    }
    double sum = 0.0;
    float max = s->cands[0].logit;
    for (int i = 0; i < n; i++) {
        s->cands[i].p = expf(s->cands[i].logit - max);
        sum += s->cands[i].p;
    }
    // top-p: the smallest prefix whose mass reaches top_p (HF keeps at least one)
    if (p->top_p < 1.0f) {
        double acc = 0.0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            acc += s->cands[i].p / sum;
            if (acc >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    // min-p: drop tokens below min_p times the top probability
    if (p->min_p > 0.0f) {
        float thresh = p->min_p * s->cands[0].p;
        int keep = 1;
        while (keep < n && s->cands[keep].p >= thresh) keep++;
        n = keep;
    }
    sum = 0.0;
    for (int i = 0; i < n; i++) sum += s->cands[i].p;
    double r = rng_uniform(s->rng) * sum, acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += s->cands[i].p;
        if (r < acc) return s->cands[i].id;
    }
    return s->cands[n - 1].id;
}
