// SPDX-License-Identifier: MIT
// sched_fixture.h -- what the scheduler tests share: a request's events
// collected under a lock (its tokens, their times, how it ended), waiting
// for them, and a rig of workers, pipeline and scheduler. Header-only.
#ifndef LP_TESTS_SCHED_FIXTURE_H
#define LP_TESTS_SCHED_FIXTURE_H

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "layerpipe/cluster.h"

#define GOT_MAX_TOKENS 512

// One request's events, filled by got_on_event on the scheduler thread.
struct got {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t ids[GOT_MAX_TOKENS];
    double at[GOT_MAX_TOKENS]; // event time of each token
    int n;
    bool done;
    enum lp_status status;
    enum lp_stop_reason stop;
    char error[512];
    int stop_after; // > 0: ask to stop after this many tokens
};

static inline void got_init(struct got *g) {
    memset(g, 0, sizeof *g);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
}

// The lp_sched_request on_event callback; user is a struct got.
static inline bool got_on_event(void *user, const struct lp_sched_event *ev) {
    struct got *g = user;
    bool stop = false;
    pthread_mutex_lock(&g->mu);
    if (ev->kind == LP_SCHED_EV_TOKEN && g->n < GOT_MAX_TOKENS) {
        g->at[g->n] = ev->time;
        g->ids[g->n++] = ev->token;
        stop = g->stop_after > 0 && g->n >= g->stop_after;
    } else if (ev->kind == LP_SCHED_EV_DONE) {
        g->done = true;
        g->status = ev->status;
        g->stop = ev->stop;
        snprintf(g->error, sizeof g->error, "%s", ev->error ? ev->error : "");
    }
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return stop;
}

// Blocks until the request has ended.
static inline void got_wait(struct got *g) {
    pthread_mutex_lock(&g->mu);
    while (!g->done)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

// Blocks until the request has n tokens or has ended.
static inline void got_wait_tokens(struct got *g, int n) {
    pthread_mutex_lock(&g->mu);
    while (g->n < n && !g->done)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

// ---- a pipeline (one process, or a ring of workers on loopback) and its scheduler ----

struct sched_rig {
    struct lp_worker *workers[2];
    struct lp_pipeline *p;
    struct lp_sched *s;
};

// n_workers (at most 2) workers of pp.model_dir with one thread each, then
// the pipeline of pp over them (the layers split 4,3,3 when there are
// workers); false, with err set, when one of them could not start.
static inline bool sched_rig_pipeline(struct sched_rig *r, int n_workers,
                                      struct lp_pipeline_params pp, struct lp_error *err) {
    memset(r, 0, sizeof *r);
    char addr[2][64];
    const char *addrs[2];
    for (int i = 0; i < n_workers && i < 2; i++) {
        struct lp_worker_params wp = lp_worker_params_default();
        wp.model_dir = pp.model_dir;
        wp.listen = "127.0.0.1:0";
        wp.n_threads = 1;
        if (lp_worker_create(&r->workers[i], &wp, err) != LP_OK) return false;
        snprintf(addr[i], sizeof addr[i], "127.0.0.1:%d", lp_worker_port(r->workers[i]));
        addrs[i] = addr[i];
    }
    pp.workers = addrs;
    pp.n_workers = n_workers;
    pp.plan = n_workers ? "4,3,3" : NULL;
    return lp_pipeline_create(&r->p, &pp, err) == LP_OK;
}

static inline void sched_rig_close(struct sched_rig *r) {
    lp_sched_destroy(r->s);
    lp_pipeline_destroy(r->p);
    for (int i = 0; i < 2; i++)
        lp_worker_destroy(r->workers[i]);
}

#endif
