// SPDX-License-Identifier: MIT
// test_sampler.c -- the sampler: greedy picks the argmax, filters keep the
// right candidates, penalties follow HF/OpenAI formulas, the same seed
// gives the same draws, and draws follow the distribution; greedy's rule on
// NaNs and infinities (what the device argmax must match), and which
// samplers say they are greedy (lp_sampler_is_greedy).
#include <math.h>
#include <string.h>

#include "layerpipe/engine.h"
#include "lp_test.h"

static int32_t sample_once(struct lp_sampler_params p, const float *logits, int V,
                           const int32_t *hist, int n_hist) {
    struct lp_sampler *s = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_sampler_create(&s, &p, V, &err), &err);
    float buf[64];
    memcpy(buf, logits, (size_t)V * sizeof(float));
    int32_t id = s ? lp_sampler_sample(s, buf, hist, n_hist) : -1;
    lp_sampler_destroy(s);
    return id;
}

int main(void) {
    const float logits[8] = {0.5f, 3.0f, -1.0f, 2.9f, 0.0f, 1.0f, -2.0f, 2.0f};
    struct lp_sampler_params p = lp_sampler_params_default();
    // greedy
    CHECK(sample_once(p, logits, 8, NULL, 0) == 1);
    // repetition penalty 2 on token 1: 3.0 / 2 = 1.5 < 2.9 -> token 3
    int32_t hist[2] = {1, 1};
    p.repetition_penalty = 2.0f;
    CHECK(sample_once(p, logits, 8, hist, 2) == 3);
    // negative logits are multiplied: token 2 (-1) -> -2 (still not chosen)
    p.repetition_penalty = 1.0f;
    // frequency penalty: token 1 seen twice, 0.1 each -> 2.8 < 2.9 -> token 3
    p.frequency_penalty = 0.1f;
    CHECK(sample_once(p, logits, 8, hist, 2) == 3);
    // presence penalty 0.05 once: 2.95 > 2.9 -> still token 1
    p.frequency_penalty = 0.0f;
    p.presence_penalty = 0.05f;
    CHECK(sample_once(p, logits, 8, hist, 2) == 1);
    // penalty window: with last_n = 0 the history is ignored
    p.presence_penalty = 1.0f;
    p.penalty_last_n = 0;
    CHECK(sample_once(p, logits, 8, hist, 2) == 1);

    // top-k 2: only tokens 1 and 3 can come out
    p = lp_sampler_params_default();
    p.temperature = 1.0f;
    p.top_k = 2;
    int counts[8] = {0};
    struct lp_sampler *s = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_sampler_create(&s, &p, 8, &err), &err);
    for (int i = 0; i < 2000; i++) {
        float buf[8];
        memcpy(buf, logits, sizeof buf);
        counts[lp_sampler_sample(s, buf, NULL, 0)]++;
    }
    lp_sampler_destroy(s);
    CHECK(counts[1] + counts[3] == 2000);
    // p(1)/p(3) = e^0.1 = 1.105: expect ~1050 vs ~950
    CHECK_MSG(counts[1] > 950 && counts[1] < 1150, "counts[1]=%d", counts[1]);

    // top-p 0.5: probability of token 1 under temperature 1 is ~0.37, 1+3 ~0.70 -> {1,3}
    p = lp_sampler_params_default();
    p.temperature = 1.0f;
    p.top_p = 0.5f;
    memset(counts, 0, sizeof counts);
    CHECK_OK(lp_sampler_create(&s, &p, 8, &err), &err);
    for (int i = 0; i < 1000; i++) {
        float buf[8];
        memcpy(buf, logits, sizeof buf);
        counts[lp_sampler_sample(s, buf, NULL, 0)]++;
    }
    lp_sampler_destroy(s);
    CHECK(counts[1] + counts[3] == 1000 && counts[1] > 0 && counts[3] > 0);

    // min-p 0.5: keeps tokens with p >= 0.5 p_max: logits >= 3 - ln 2 = 2.31 -> {1, 3}
    p = lp_sampler_params_default();
    p.temperature = 1.0f;
    p.min_p = 0.5f;
    memset(counts, 0, sizeof counts);
    CHECK_OK(lp_sampler_create(&s, &p, 8, &err), &err);
    for (int i = 0; i < 1000; i++) {
        float buf[8];
        memcpy(buf, logits, sizeof buf);
        counts[lp_sampler_sample(s, buf, NULL, 0)]++;
    }
    lp_sampler_destroy(s);
    CHECK(counts[1] + counts[3] == 1000);

    // plain temperature sampling reaches every token, and follows softmax
    p = lp_sampler_params_default();
    p.temperature = 1.0f;
    p.seed = 7;
    memset(counts, 0, sizeof counts);
    CHECK_OK(lp_sampler_create(&s, &p, 8, &err), &err);
    int n_draw = 20000;
    for (int i = 0; i < n_draw; i++) {
        float buf[8];
        memcpy(buf, logits, sizeof buf);
        counts[lp_sampler_sample(s, buf, NULL, 0)]++;
    }
    lp_sampler_destroy(s);
    double z = 0;
    for (int i = 0; i < 8; i++) z += exp(logits[i]);
    for (int i = 0; i < 8; i++) {
        double expect = exp(logits[i]) / z * n_draw;
        CHECK_MSG(fabs(counts[i] - expect) < 5 * sqrt(expect) + 5, "token %d: %d vs %.0f", i,
                  counts[i], expect);
    }

    // same seed, same sequence; another seed, another sequence
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        p = lp_sampler_params_default();
        p.temperature = 1.5f;
        p.seed = run == 2 ? 99 : 42;
        CHECK_OK(lp_sampler_create(&s, &p, 8, &err), &err);
        for (int i = 0; i < 64; i++) {
            float buf[8];
            memcpy(buf, logits, sizeof buf);
            int32_t id = lp_sampler_sample(s, buf, NULL, 0);
            (run == 0 ? a : run == 1 ? b : c)[i] = id;
        }
        lp_sampler_destroy(s);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);

    // invalid parameters are errors, not crashes
    p = lp_sampler_params_default();
    p.top_p = 0.0f;
    CHECK(lp_sampler_create(&s, &p, 8, &err) == LP_ERR_INVALID_ARG && s == NULL);
    p = lp_sampler_params_default();
    p.temperature = -1.0f;
    CHECK(lp_sampler_create(&s, &p, 8, &err) == LP_ERR_INVALID_ARG);
    // greedy on NaNs and infinities: a NaN never wins, except at index 0
    {
        struct lp_sampler_params g = lp_sampler_params_default();
        const float N = NAN, I = INFINITY;
        CHECK(sample_once(g, (const float[]){N, 5}, 2, NULL, 0) == 0);
        CHECK(sample_once(g, (const float[]){1, N, 2}, 3, NULL, 0) == 2);
        CHECK(sample_once(g, (const float[]){N, I, 3}, 3, NULL, 0) == 0);
        CHECK(sample_once(g, (const float[]){-I, -I, N}, 3, NULL, 0) == 0);
        CHECK(sample_once(g, (const float[]){1, I, 2, I}, 4, NULL, 0) == 1);
        CHECK(sample_once(g, (const float[]){-0.0f, 0.0f}, 2, NULL, 0) == 0);
        CHECK(sample_once(g, (const float[]){2, 2, 3, 3}, 4, NULL, 0) == 2);
    }
    // which samplers are the plain greedy choice (no penalties, no state)
    {
        struct lp_sampler_params q[6];
        for (int i = 0; i < 6; i++) q[i] = lp_sampler_params_default();
        q[1].temperature = 0.7f;
        q[1].top_k = 1;              // greedy by top_k
        q[2].temperature = 0.7f;     // sampling
        q[3].repetition_penalty = 1.1f;
        q[4].presence_penalty = 0.5f;
        q[5].frequency_penalty = 0.5f;
        const bool want[6] = {true, true, false, false, false, false};
        for (int i = 0; i < 6; i++) {
            struct lp_sampler *g = NULL;
            CHECK_OK(lp_sampler_create(&g, &q[i], 8, &err), &err);
            CHECK_MSG(g && lp_sampler_is_greedy(g) == want[i], "lp_sampler_is_greedy case %d", i);
            lp_sampler_destroy(g);
        }
    }
    return lp_test_finish("sampler");
}
