// SPDX-License-Identifier: MIT
// test_sched_greedy.c -- greedy micro-batches (the head's argmax where the
// head runs, only ids coming back) against the full path (every row back,
// sampled on the host: LP_NO_DEVICE_ARGMAX=1), on the bundled model on the
// CPU backend, in one process (and the crowd also on a ring of two
// in-process workers, the head running after the Sink):
//  - a crowd of greedy requests (temperature 0, and top_k 1 at a
//    temperature) with prefill chunks of 5 mixed into decode steps gives
//    the same ids either way, and with the device argmax every step with
//    rows went greedy (the scheduler's greedy_steps counter), without it none;
//  - a request with a repetition penalty, one with logprobs and one with
//    prompt logits take the full path (no greedy step while one runs alone;
//    logprobs and prompt rows are reported) and give the same ids either way;
//  - all of them at once: the same ids either way.
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/sched_fixture.h"
#include "layerpipe/cluster.h"
#include "lp_test.h"

#define N_CROWD 8
#define N_GEN 16
#define VOCAB 8195

static char model_dir[1024];
static int32_t prompts[N_CROWD][40];
static int n_prompt[N_CROWD];

// A request's events beyond struct got: logprobs seen, prompt rows seen.
struct seen {
    struct got got;
    int n_logprobs;     // TOKEN events with a finite, negative logprob and n_top alternatives
    int n_prompt_rows;  // rows of PROMPT_LOGITS events
};

static bool seen_on_event(void *user, const struct lp_sched_event *ev) {
    struct seen *w = user;
    if (ev->kind == LP_SCHED_EV_TOKEN && isfinite(ev->logprob) && ev->logprob < 0 &&
        ev->n_top == 3 && ev->top_ids)
        w->n_logprobs++;
    if (ev->kind == LP_SCHED_EV_PROMPT_LOGITS) w->n_prompt_rows += ev->n_rows;
    return got_on_event(&w->got, ev);
}

enum kind { K_GREEDY, K_TOP1, K_PENALTY, K_LOGPROBS, K_PROMPT_LOGITS };

static struct lp_sched_request request(int i, enum kind k, struct seen *w) {
    memset(w, 0, sizeof *w);
    got_init(&w->got);
    struct lp_sched_request rq = {.prompt = prompts[i], .n_prompt = n_prompt[i],
                                  .max_new_tokens = N_GEN, .ignore_eos = true,
                                  .sampling = lp_sampler_params_default(),
                                  .on_event = seen_on_event, .user = w};
    if (k == K_TOP1) {
        rq.sampling.temperature = 0.8f;
        rq.sampling.top_k = 1;
    }
    if (k == K_PENALTY) { // (negative: a bonus, so that history tokens win and the ids change)
        rq.sampling.repetition_penalty = 1.5f;
        rq.sampling.presence_penalty = -50.0f;
    }
    if (k == K_LOGPROBS) {
        rq.logprobs = true;
        rq.n_top_logprobs = 3;
    }
    if (k == K_PROMPT_LOGITS) rq.prompt_logits = true;
    return rq;
}

// One process (n_workers 0) or a ring of n_workers (split 4,3,3), prefill
// chunks of `batch` tokens; device_argmax false sets LP_NO_DEVICE_ARGMAX=1
// while the scheduler starts.
static bool rig_open(struct sched_rig *r, int n_workers, int batch, bool device_argmax) {
    struct lp_error err = {0};
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = model_dir;
    pp.n_threads = 2;
    pp.max_batch_tokens = batch;
    pp.max_sessions = N_CROWD;
    pp.max_context = 256;
    bool up = sched_rig_pipeline(r, n_workers, pp, &err);
    CHECK_OK(up ? LP_OK : err.status, &err);
    if (!up) return false;
    struct lp_sched_params sp = lp_sched_params_default();
    if (!device_argmax) setenv("LP_NO_DEVICE_ARGMAX", "1", 1);
    CHECK_OK(lp_sched_create(&r->s, r->p, &sp, &err), &err);
    unsetenv("LP_NO_DEVICE_ARGMAX");
    return r->s != NULL;
}

// Submits n requests at once (kinds[i] for prompt i), waits for them all.
static void run_all(struct sched_rig *r, const enum kind *kinds, int n, struct seen *w) {
    struct lp_error err = {0};
    for (int i = 0; i < n; i++) {
        struct lp_sched_request rq = request(i, kinds[i], &w[i]);
        uint64_t id;
        CHECK_OK(lp_sched_submit(r->s, &rq, &id, &err), &err);
    }
    for (int i = 0; i < n; i++) {
        got_wait(&w[i].got);
        CHECK_MSG(w[i].got.status == LP_OK && w[i].got.n == N_GEN, "request %d: %s, %d tokens: %s",
                  i, lp_status_str(w[i].got.status), w[i].got.n, w[i].got.error);
    }
}

static int n_same(const struct seen *a, const struct seen *b, int n) {
    int same = 0;
    for (int i = 0; i < n; i++)
        same += a[i].got.n == b[i].got.n &&
                memcmp(a[i].got.ids, b[i].got.ids, sizeof(int32_t) * (size_t)a[i].got.n) == 0;
    return same;
}

static struct seen on[N_CROWD], off[N_CROWD];

static void test_crowd(int n_workers) {
    enum kind kinds[N_CROWD];
    for (int i = 0; i < N_CROWD; i++) kinds[i] = i % 3 == 2 ? K_TOP1 : K_GREEDY;
    struct lp_sched_stats st[2];
    for (int mode = 0; mode < 2; mode++) {
        struct sched_rig r;
        if (!rig_open(&r, n_workers, 5, mode == 0)) return;
        run_all(&r, kinds, N_CROWD, mode == 0 ? on : off);
        lp_sched_stats(r.s, &st[mode]);
        sched_rig_close(&r);
    }
    int same = n_same(on, off, N_CROWD);
    CHECK_MSG(same == N_CROWD, "greedy crowd (%d workers): %d of %d requests give the same ids "
              "with the device argmax as without", n_workers, same, N_CROWD);
    // every step with rows went greedy; the steps without (prefill chunks
    // before a prompt's last) do not count; without the device argmax none
    CHECK_MSG(st[0].greedy_steps > N_GEN && st[0].greedy_steps <= st[0].steps,
              "greedy steps %llu of %llu", (unsigned long long)st[0].greedy_steps,
              (unsigned long long)st[0].steps);
    CHECK(st[1].greedy_steps == 0 && st[1].steps > N_GEN); // (step counts follow admission timing)
    printf("greedy crowd, %d workers: %d/%d identical; %llu of %llu steps greedy (off: %llu of "
           "%llu)\n", n_workers, same,
           N_CROWD, (unsigned long long)st[0].greedy_steps, (unsigned long long)st[0].steps,
           (unsigned long long)st[1].greedy_steps, (unsigned long long)st[1].steps);
}

// Each kind alone: greedy ones take greedy steps only, the others none.
static void test_alone(void) {
    struct sched_rig r;
    if (!rig_open(&r, 0, 64, true)) return;
    const enum kind kinds[] = {K_GREEDY, K_TOP1, K_PENALTY, K_LOGPROBS, K_PROMPT_LOGITS};
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        struct lp_sched_stats a, b;
        lp_sched_stats(r.s, &a);
        struct seen w;
        run_all(&r, &kinds[k], 1, &w);
        lp_sched_stats(r.s, &b);
        uint64_t steps = b.steps - a.steps, greedy = b.greedy_steps - a.greedy_steps;
        // the prompt in one step, then N_GEN - 1 decode steps
        CHECK(steps == N_GEN);
        if (kinds[k] == K_GREEDY || kinds[k] == K_TOP1)
            CHECK_MSG(greedy == steps, "kind %zu: %llu of %llu steps greedy", k,
                      (unsigned long long)greedy, (unsigned long long)steps);
        else if (kinds[k] == K_PROMPT_LOGITS) // its decode rows are greedy, not the prompt's
            CHECK_MSG(greedy == steps - 1 && w.n_prompt_rows == n_prompt[0],
                      "prompt logits: %llu of %llu steps greedy, %d prompt rows",
                      (unsigned long long)greedy, (unsigned long long)steps, w.n_prompt_rows);
        else
            CHECK_MSG(greedy == 0, "kind %zu: %llu greedy steps", k, (unsigned long long)greedy);
        if (kinds[k] == K_LOGPROBS)
            CHECK_MSG(w.n_logprobs == N_GEN, "logprobs on %d of %d tokens", w.n_logprobs, N_GEN);
        if (kinds[k] == K_PENALTY) // the penalty was applied: other ids than plain greedy
            CHECK(memcmp(w.got.ids, on[0].got.ids, sizeof(int32_t) * N_GEN) != 0);
    }
    sched_rig_close(&r);
}

// Every kind at once (chunks of 5): the same ids with and without the device argmax.
static void test_mix(void) {
    const enum kind kinds[N_CROWD] = {K_PENALTY, K_GREEDY,  K_LOGPROBS, K_TOP1,
                                      K_GREEDY,  K_PROMPT_LOGITS, K_GREEDY, K_GREEDY};
    for (int mode = 0; mode < 2; mode++) {
        struct sched_rig r;
        if (!rig_open(&r, 0, 5, mode == 0)) return;
        run_all(&r, kinds, N_CROWD, mode == 0 ? on : off);
        sched_rig_close(&r);
    }
    int same = n_same(on, off, N_CROWD);
    CHECK_MSG(same == N_CROWD, "mix: %d of %d requests give the same ids with the device argmax "
              "as without", same, N_CROWD);
    CHECK(on[2].n_logprobs == N_GEN && off[2].n_logprobs == N_GEN);
    CHECK(on[5].n_prompt_rows == n_prompt[5] && off[5].n_prompt_rows == n_prompt[5]);
    printf("mix of penalty, logprobs, prompt logits and greedy: %d/%d identical\n", same, N_CROWD);
}

int main(void) {
    const char *src = getenv("LP_SOURCE_DIR");
    snprintf(model_dir, sizeof model_dir, "%s/models/layerpipe-tiny-8bit", src ? src : ".");
    for (int i = 0; i < N_CROWD; i++) {
        n_prompt[i] = 6 + 4 * i; // 6..34 tokens: several chunks of 5
        for (int t = 0; t < n_prompt[i]; t++)
            prompts[i][t] = (int32_t)((i * 131 + t * 17 + 5) % VOCAB);
    }
    test_crowd(2);
    test_crowd(0); // (last: test_alone compares with its first request's ids)
    test_alone();
    test_mix();
    return lp_test_finish("cluster/test_sched_greedy");
}
