// SPDX-License-Identifier: MIT
// test_recover.c -- a stage dies mid-request and the request goes on. The
// coordinator (pipeline + scheduler) runs in this process; the workers are
// real `layerpipe worker` processes on loopback, killed with SIGKILL at
// random moments (a seeded draw of the token count to kill at, and of the
// worker), on the bundled model. Every recovered request must give exactly
// the ids of an undisturbed run (greedy, and seeded sampling):
//  - restarted: the worker comes back on its port (as `layerpipe cluster`
//    restarts it), one request and 8 at once;
//  - stalled: SIGSTOP past the step deadline, then SIGCONT;
//  - standby: a spare worker takes the dead stage's layers;
//  - replan: the surviving stages take them (the plan shrinks);
//  - past the deadline the request ends with an error naming the stage, and
//    the coordinator serves the next request once the worker is back;
//  - a worker back with another model is refused.
// bench/faults.sh runs the longer loop (LP_FAULT_ROUNDS=20 kills per way)
// and records the pause a client sees: from the kill to the next token.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/fault_fixture.h"
#include "layerpipe/cluster.h"
#include "cluster/sched_fixture.h"
#include "layerpipe/tokenizer.h"
#include "lp_test.h"

#define N_GEN 120
#define N_CROWD 8

static char model_dir[1024], other_dir[1200];
static struct lp_token_list prompts[N_CROWD];
static const char *texts[N_CROWD] = {"And it came to pass", "In the beginning", "Blessed are",
                                     "A fool and his money", "The LORD is my shepherd",
                                     "Then said Jesus", "Early to bed", "Thou shalt not"};
static uint64_t rng = 12345;

static int draw(int n) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rng >> 33) % (uint64_t)n);
}

// ---- a request's events ----

static struct lp_sched_request request(int i, struct got *g, bool sampled) {
    struct lp_sched_request rq = {.prompt = prompts[i].ids, .n_prompt = (int)prompts[i].n_ids,
                                  .max_new_tokens = N_GEN, .ignore_eos = true,
                                  .sampling = lp_sampler_params_default(), .on_event = got_on_event,
                                  .user = g};
    if (sampled) {
        rq.sampling.temperature = 0.8f;
        rq.sampling.top_k = 40;
        rq.sampling.seed = 1000 + (uint64_t)i;
    }
    return rq;
}

// ---- the rig: 2 worker processes, the coordinator here ----

struct rig {
    struct ff_worker w[3]; // w[2]: the standby
    struct lp_pipeline *p;
    struct lp_sched *s;
};

static bool rig_open(struct rig *r, int n_workers, bool standby, bool replan, int recover_ms) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < n_workers + standby; i++) {
        char tag[32];
        snprintf(tag, sizeof tag, "w%d", i);
        if (ff_worker_start(&r->w[i], model_dir, tag) != 0) return false;
    }
    const char *addrs[2] = {r->w[0].addr, r->w[1].addr}, *spare[1] = {r->w[2].addr};
    if (standby) spare[0] = r->w[n_workers].addr;
    struct lp_pipeline_params pp = lp_pipeline_params_default();
    pp.model_dir = model_dir;
    pp.workers = addrs;
    pp.n_workers = n_workers;
    pp.plan = n_workers == 2 ? "4,3,3" : "5,5";
    pp.n_threads = 1;
    pp.max_sessions = N_CROWD;
    pp.max_context = 256;
    pp.timeout_ms = 1500;
    pp.standby = spare;
    pp.n_standby = standby;
    pp.replan = replan;
    pp.recover_timeout_ms = recover_ms;
    struct lp_error err = {0};
    CHECK_OK(lp_pipeline_create(&r->p, &pp, &err), &err);
    if (!r->p) return false;
    struct lp_sched_params sp = lp_sched_params_default();
    CHECK_OK(lp_sched_create(&r->s, r->p, &sp, &err), &err);
    return r->s != NULL;
}

static void rig_close(struct rig *r) {
    lp_sched_destroy(r->s);
    lp_pipeline_destroy(r->p);
    for (int i = 0; i < 3; i++)
        if (r->w[i].pid > 0) ff_stop(r->w[i].pid);
}

static struct got ref[N_CROWD], ref_sampled[N_CROWD];

// The undisturbed ids: one request at a time through the same ring.
static void make_reference(struct rig *r) {
    struct lp_error err = {0};
    for (int i = 0; i < N_CROWD; i++) {
        got_init(&ref[i]);
        got_init(&ref_sampled[i]);
        struct lp_sched_request a = request(i, &ref[i], false), b = request(i, &ref_sampled[i], true);
        CHECK_OK(lp_sched_run(r->s, &a, NULL, &err), &err);
        CHECK_OK(lp_sched_run(r->s, &b, NULL, &err), &err);
    }
}

static bool same(const struct got *a, const struct got *b) {
    return a->status == LP_OK && a->n == b->n && memcmp(a->ids, b->ids, sizeof a->ids) == 0;
}

// Pauses per way, for bench/faults.sh's table.
struct pauses {
    char what[48];
    double ms[64];
    int n;
};
static struct pauses pauses[16];
static int n_pauses;

static void pauses_add(const char *what, double s) {
    int i = 0;
    while (i < n_pauses && strcmp(pauses[i].what, what) != 0) i++;
    if (i == n_pauses && n_pauses < 16) snprintf(pauses[n_pauses++].what, 48, "%s", what);
    if (i < 16 && pauses[i].n < 64) pauses[i].ms[pauses[i].n++] = s * 1e3;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void pauses_print(void) {
    printf("\n%-44s %6s %10s %10s\n", "pause from kill to the next token", "kills", "p50 ms",
           "max ms");
    for (int i = 0; i < n_pauses; i++) {
        struct pauses *p = &pauses[i];
        qsort(p->ms, (size_t)p->n, sizeof p->ms[0], cmp_d);
        printf("%-44s %6d %10.0f %10.0f\n", p->what, p->n, p->ms[p->n / 2], p->ms[p->n - 1]);
    }
}

// Starts n requests (sampled or not), kills worker `victim` once the first
// has `at` tokens; `after` runs then (restart, SIGCONT, nothing). Checks
// every request against the reference.
static void kill_during(struct rig *r, int n, bool sampled, int victim, int at, int sig,
                        void (*after)(struct rig *, int), const char *what) {
    static struct got g[N_CROWD];
    struct lp_error err = {0};
    for (int i = 0; i < n; i++) {
        got_init(&g[i]);
        struct lp_sched_request rq = request(i, &g[i], sampled);
        uint64_t id;
        CHECK_OK(lp_sched_submit(r->s, &rq, &id, &err), &err);
    }
    got_wait_tokens(&g[0], at);
    double t0 = ff_now();
    kill(r->w[victim].pid, sig);
    if (sig == SIGKILL) ff_wait(r->w[victim].pid, 5);
    if (after) after(r, victim);
    int ok = 0;
    for (int i = 0; i < n; i++) {
        got_wait(&g[i]);
        ok += same(&g[i], sampled ? &ref_sampled[i] : &ref[i]);
        CHECK_MSG(same(&g[i], sampled ? &ref_sampled[i] : &ref[i]),
                  "%s: request %d %s: %s, %d tokens: %s", what, i,
                  g[i].status == LP_OK ? "differs from the undisturbed run" : "failed",
                  lp_status_str(g[i].status), g[i].n, g[i].error);
    }
    // the pause a client sees: the longest wait for a token after the kill
    // (tokens already in flight at the kill may still come just after it)
    double pause = 0;
    for (int i = 0; i < n; i++)
        for (int k = 1; k < g[i].n; k++) {
            double from = g[i].at[k - 1] > t0 ? g[i].at[k - 1] : t0;
            if (g[i].at[k] > t0 && g[i].at[k] - from > pause) pause = g[i].at[k] - from;
        }
    pauses_add(what, pause);
    printf("%-44s worker %d at token %3d: %d/%d identical, pause %.3f s\n", what, victim + 1, at,
           ok, n, pause);
}

static int rounds = 1; // kills per way (LP_FAULT_ROUNDS)

static void restart(struct rig *r, int victim) {
    char tag[32];
    snprintf(tag, sizeof tag, "w%d", victim);
    CHECK(ff_worker_start_on(&r->w[victim], model_dir, tag, true) == 0);
}

static void resume(struct rig *r, int victim) {
    usleep(2500000); // past the 1.5 s step deadline
    kill(r->w[victim].pid, SIGCONT);
}

static void test_restart(void) {
    struct rig r;
    if (!rig_open(&r, 2, false, false, 30000)) return;
    make_reference(&r);
    for (int k = 0; k < 4 * rounds; k++)
        kill_during(&r, 1, k % 2 == 1, draw(2), 1 + draw(N_GEN - 10), SIGKILL, restart,
                    k % 2 ? "restarted, seeded sampling" : "restarted, greedy");
    for (int k = 0; k < rounds; k++)
        kill_during(&r, N_CROWD, false, draw(2), 1 + draw(N_GEN - 20), SIGKILL, restart,
                    "restarted, 8 at once");
    kill_during(&r, 2, false, draw(2), 1 + draw(N_GEN - 20), SIGSTOP, resume,
                "stalled past the deadline (SIGSTOP)");
    struct lp_sched_stats st;
    lp_sched_stats(r.s, &st);
    CHECK_MSG(st.recoveries >= 6 && st.recovery_failures == 0 && st.reprefill_tokens > 0,
              "%llu recoveries, %llu failed, %llu tokens re-prefilled",
              (unsigned long long)st.recoveries, (unsigned long long)st.recovery_failures,
              (unsigned long long)st.reprefill_tokens);
    CHECK(strncmp(st.last_recovery, "restarted", 9) == 0 ||
          strcmp(st.last_recovery, "reconnected") == 0);
    rig_close(&r);
}

static void test_standby(void) {
    struct rig r;
    if (!rig_open(&r, 2, true, false, 30000)) return;
    int victim = draw(2);
    kill_during(&r, 2, false, victim, 1 + draw(N_GEN - 10), SIGKILL, NULL, "standby");
    struct lp_sched_stats st;
    lp_sched_stats(r.s, &st);
    CHECK_MSG(strstr(st.last_recovery, "standby") && strstr(st.last_recovery, r.w[2].addr),
              "last recovery: '%s'", st.last_recovery);
    r.w[victim].pid = 0;
    rig_close(&r);
}

static void test_replan(void) {
    struct rig r;
    if (!rig_open(&r, 2, false, true, 30000)) return;
    int victim = draw(2);
    kill_during(&r, 2, true, victim, 1 + draw(N_GEN - 10), SIGKILL, NULL, "replan");
    const struct lp_plan *plan = lp_pipeline_plan(r.p);
    CHECK_MSG(plan->n_stages == 2 && plan->layers[0] + plan->layers[1] == 10,
              "plan after replan: %d stages", plan->n_stages);
    r.w[victim].pid = 0;
    // and once more, with no worker left: the coordinator takes every layer
    kill_during(&r, 1, false, 1 - victim, 1 + draw(N_GEN - 10), SIGKILL, NULL,
                "replan onto the coordinator");
    CHECK(lp_pipeline_plan(r.p)->n_stages == 1);
    r.w[1 - victim].pid = 0;
    rig_close(&r);
}

// No way back within the deadline: a clear error; then service again.
static void test_deadline_and_other_model(void) {
    struct rig r;
    if (!rig_open(&r, 1, false, false, 1500)) return;
    struct lp_error err = {0};
    struct got g;
    got_init(&g);
    struct lp_sched_request rq = request(0, &g, false);
    uint64_t id;
    CHECK_OK(lp_sched_submit(r.s, &rq, &id, &err), &err);
    got_wait_tokens(&g, 5);
    double t0 = ff_now();
    kill(r.w[0].pid, SIGKILL);
    ff_wait(r.w[0].pid, 5);
    got_wait(&g);
    double dt = ff_now() - t0;
    printf("no way back: %s after %.2f s: %s\n", lp_status_str(g.status), dt, g.error);
    CHECK_MSG(g.status == LP_ERR_NETWORK && strstr(g.error, "did not come back") &&
                  strstr(g.error, r.w[0].addr),
              "past the deadline: %s: %s", lp_status_str(g.status), g.error);
    CHECK_MSG(dt < 6.0, "the error took %.1f s (step deadline 1.5 s + recovery 1.5 s)", dt);
    // a worker back with another model is refused, not used
    CHECK(ff_worker_start_on(&r.w[0], other_dir, "w0-other", true) == 0);
    got_init(&g);
    CHECK_OK(lp_sched_submit(r.s, &rq, &id, &err), &err);
    got_wait(&g);
    CHECK_MSG(g.status != LP_OK && strstr(g.error, "different model"),
              "a worker with another model: %s: %s", lp_status_str(g.status), g.error);
    ff_stop(r.w[0].pid);
    // the right worker back: the coordinator serves again
    CHECK(ff_worker_start_on(&r.w[0], model_dir, "w0-again", true) == 0);
    got_init(&g);
    CHECK_OK(lp_sched_submit(r.s, &rq, &id, &err), &err);
    got_wait(&g);
    CHECK_MSG(same(&g, &ref[0]), "after the worker came back: %s: %s", lp_status_str(g.status),
              g.error);
    rig_close(&r);
}

int main(void) {
    if (ff_setup("recover") != 0) return 1;
    const char *src = getenv("LP_SOURCE_DIR");
    snprintf(model_dir, sizeof model_dir, "%s/models/layerpipe-tiny-8bit", src ? src : ".");
    // the same weights with another config: another fingerprint
    snprintf(other_dir, sizeof other_dir, "%s/other-model", ff_scratch);
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s' && cp '%s'/* '%s'/ && sed -i 's/\"rms_norm_eps\"/\"layerpipe_test\": 1, "
             "\"rms_norm_eps\"/' '%s/config.json'",
             other_dir, model_dir, other_dir, other_dir);
    CHECK(system(cmd) == 0);
    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_load(&tok, model_dir, &err), &err);
    if (!tok) return lp_test_finish("cluster/test_recover");
    for (int i = 0; i < N_CROWD; i++) {
        lp_token_list_init(&prompts[i]);
        CHECK_OK(lp_tokenizer_encode(tok, texts[i], strlen(texts[i]), 0, &prompts[i], &err), &err);
    }
    const char *env = getenv("LP_FAULT_ROUNDS");
    if (env && atoi(env) > 0) rounds = atoi(env) > 64 ? 64 : atoi(env);
    test_restart();
    for (int k = 0; k < rounds; k++) {
        test_standby();
        test_replan();
    }
    test_deadline_and_other_model();
    pauses_print();
    for (int i = 0; i < N_CROWD; i++) lp_token_list_deinit(&prompts[i]);
    lp_tokenizer_destroy(tok);
    return lp_test_finish("cluster/test_recover");
}
