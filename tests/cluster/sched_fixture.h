// SPDX-License-Identifier: MIT
// sched_fixture.h -- what the scheduler tests share: a request's events
// collected under a lock (its tokens, their times, how it ended), and
// waiting for them. Header-only; include it after layerpipe/cluster.h.
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
    while (!g->done) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

// Blocks until the request has n tokens or has ended.
static inline void got_wait_tokens(struct got *g, int n) {
    pthread_mutex_lock(&g->mu);
    while (g->n < n && !g->done) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

#endif
