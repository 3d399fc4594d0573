// SPDX-License-Identifier: MIT
// recover.c -- bringing a lost stage's layers back (lp_pipeline_recover).
// The scheduler calls it when a step failed because a stage died or stalled,
// with nothing in flight. Every session is dropped everywhere first (the
// scheduler re-prefills its sequences from their tokens, so nothing cached
// matters), then the ways are tried in order, as long as the deadline allows:
//   1. restarted: every worker answers Hello again (same model) -- probed
//      with backoff for up to 2 s (the whole deadline when nothing else is set);
//   2. standby: a spare worker (--standby) that answers takes a dead stage's
//      place and layers;
//   3. replanned (--replan): the surviving workers share the dead stages'
//      layers (each loads the extra layers from its own copy), or, with no
//      worker left, the coordinator takes them all.
// Then every stage is configured anew from the last to the first and the
// stream to stage 1 reopened. Scheduler thread.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/pipeline_i.h"

static void sleep_s(double s) {
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

// Probes every worker; down[i] is set for those that do not answer (or
// answer with another model: refused). Returns the number down; *why gets
// the first failure.
static int probe(struct lp_pipeline *p, bool *down, struct lp_error *why) {
    int n_down = 0;
    for (int i = 0; i < p->n_workers; i++) {
        struct lp_error e = {0};
        down[i] = lp_pl_hello(p, i, &e) != LP_OK;
        if (down[i] && n_down++ == 0) *why = e;
    }
    return n_down;
}

// Configures every worker (last to first: each checks its successor) and
// reopens the stream. On failure *failed is the worker that refused.
static enum lp_status configure_all(struct lp_pipeline *p, int *failed, struct lp_error *err) {
    for (int i = p->n_workers - 1; i >= 0; i--) {
        enum lp_status st = lp_pl_configure(p, i, err);
        if (st != LP_OK) {
            *failed = i;
            return st;
        }
    }
    *failed = -1;
    lp_pl_kv_capacity(p);
    return p->n_workers > 0 ? lp_pl_open_stream(p, err) : LP_OK;
}

// Puts a standby worker in each dead stage's place. Returns true when every
// dead stage got one.
static bool take_standbys(struct lp_pipeline *p, bool *down, char *how, size_t how_bytes) {
    int n_down = 0;
    for (int i = 0; i < p->n_workers; i++) {
        if (!down[i]) continue;
        char old[128];
        snprintf(old, sizeof old, "%s", p->stages[i].addr);
        while (down[i] && p->n_standby_used < p->n_standby) {
            const char *spare = p->standby[p->n_standby_used++];
            snprintf(p->stages[i].addr, sizeof p->stages[i].addr, "%s", spare);
            struct lp_error e = {0};
            if (lp_pl_hello(p, i, &e) == LP_OK) {
                down[i] = false;
                fprintf(stderr, "layerpipe: stage %d (%s) is taken over by standby %s\n", i + 1,
                        old, spare);
                snprintf(how, how_bytes, "standby %s", spare);
            } else {
                fprintf(stderr, "layerpipe: standby %s refused: %s\n", spare, e.msg);
            }
        }
        if (down[i]) {
            snprintf(p->stages[i].addr, sizeof p->stages[i].addr, "%s", old);
            n_down++;
        }
    }
    return n_down == 0;
}

// Drops the dead workers and shares the layers anew: the survivors in
// order, in proportion to the layers they had (within their memory), or
// the coordinator alone. Returns false (message in err) when it cannot.
static bool replan(struct lp_pipeline *p, const bool *down, char *how, size_t how_bytes,
                   struct lp_error *err) {
    int L = p->cfg.n_layers, a = p->plan.layers[0], n_keep = 0, kept_layers = 0;
    struct pl_stage keep[LP_MAX_STAGES];
    int had[LP_MAX_STAGES];
    for (int i = 0; i < p->n_workers; i++) {
        if (down[i]) {
            lp_rpc_channel_destroy(p->stages[i].ch);
            continue;
        }
        had[n_keep] = p->stages[i].layer_end - p->stages[i].layer_begin;
        kept_layers += had[n_keep];
        keep[n_keep++] = p->stages[i];
    }
    int W = L - a; // the workers' layers
    if (n_keep == 0) {
        enum lp_status st = lp_pl_load_share(p, L, err); // the coordinator takes every layer
        if (st != LP_OK) return false;
        a = L;
        W = 0;
    }
    size_t layer_bytes = p->weight_bytes / (size_t)L;
    int at = a;
    for (int k = 0; k < n_keep; k++) {
        // in proportion to what each had; the last takes the rest
        int n = k == n_keep - 1 ? L - at : (int)((long long)W * had[k] / kept_layers);
        if (n < 1) n = 1;
        uint64_t room = layer_bytes ? keep[k].free_bytes / 10 * 9 / layer_bytes : (uint64_t)n;
        if ((uint64_t)(n - had[k]) > room && n > had[k]) {
            lp_error_set(err, LP_ERR_NOMEM,
                         "replan: worker %s would need %d more layers, its memory holds %llu",
                         keep[k].addr, n - had[k], (unsigned long long)room);
            return false;
        }
        keep[k].layer_begin = at;
        keep[k].layer_end = at + n;
        at += n;
    }
    p->n_workers = n_keep;
    for (int k = 0; k < n_keep; k++) p->stages[k] = keep[k];
    p->plan.n_stages = n_keep + 1;
    p->plan.layers[0] = a;
    for (int k = 0; k < n_keep; k++) p->plan.layers[k + 1] = keep[k].layer_end - keep[k].layer_begin;
    size_t off = (size_t)snprintf(how, how_bytes, "replanned");
    for (int k = 0; k <= n_keep && off < how_bytes; k++)
        off += (size_t)snprintf(how + off, how_bytes - off, "%s%d", k ? "," : " ",
                                p->plan.layers[k]);
    fprintf(stderr, "layerpipe: %s (coordinator first)\n", how);
    return true;
}

// Releases sessions on every worker that answers within a second.
static void release_everywhere(struct lp_pipeline *p, uint64_t *ids, int n_ids) {
    if (n_ids == 0) return;
    Layerpipe__V1__ReleaseRequest r = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
    r.n_sessions = (size_t)n_ids;
    r.sessions = ids;
    for (int i = 0; i < p->n_workers; i++) {
        uint8_t *resp = NULL;
        size_t n = 0;
        if (p->stages[i].ch) lp_pl_unary(p, i, LP_M_RELEASE, &r.base, &resp, &n, 1000, NULL);
        free(resp);
    }
}

enum lp_status lp_pipeline_recover(struct lp_pipeline *p, char *how, size_t how_bytes,
                                   struct lp_error *err) {
    if (p->n_in_flight > 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "recover: %d micro-batches in flight",
                            p->n_in_flight);
    double t0 = lp_now_seconds(), deadline = t0 + p->params.recover_timeout_ms / 1e3;
    bool alternatives = p->n_standby_used < p->n_standby || p->params.replan;
    // wait for a restart for a while, then turn to the standbys and the replan
    double reconnect_until = alternatives ? t0 + (deadline - t0) / 3 : deadline;
    if (reconnect_until > t0 + 2 && alternatives) reconnect_until = t0 + 2; // a launcher restarts in ~0.3 s
    snprintf(how, how_bytes, "restarted");
    // drop everything: the stream, the coordinator's sessions, and the
    // sessions on every stage that still answers (Configure drops them again
    // when the layers come back; this matters when they do not)
    if (p->to_first) lp_rpc_client_stream_close(p->to_first, 0);
    p->to_first = NULL;
    uint64_t ids[LP_MAX_STAGES * 64];
    int n_ids = 0;
    for (int i = 0; i < p->max_sessions; i++)
        if (p->sessions[i].id) {
            if (n_ids < (int)(sizeof ids / sizeof ids[0])) ids[n_ids++] = p->sessions[i].id;
            lp_engine_seq_close(p->front, p->sessions[i].seq);
            p->sessions[i].id = 0;
        }
    release_everywhere(p, ids, n_ids);
    p->hello_timeout_ms = 2000;
    bool down[LP_MAX_STAGES] = {0};
    struct lp_error why = {0};
    double backoff = 0.1;
    enum lp_status st = LP_ERR_NETWORK;
    bool tried_alternatives = false;
    bool ever_down[LP_MAX_STAGES] = {0};
    while (lp_now_seconds() < deadline) {
        int n_down = probe(p, down, &why);
        for (int i = 0; i < p->n_workers; i++) ever_down[i] |= down[i];
        if (n_down > 0 && lp_now_seconds() >= reconnect_until && !tried_alternatives) {
            tried_alternatives = true;
            if (take_standbys(p, down, how, how_bytes)) n_down = 0;
            else if (p->params.replan) {
                struct lp_error e = {0};
                if (replan(p, down, how, how_bytes, &e)) n_down = 0;
                else why = e;
            }
        }
        if (n_down == 0) {
            int failed;
            if ((st = configure_all(p, &failed, &why)) == LP_OK) break;
            if (failed >= 0) down[failed] = true;
        }
        sleep_s(backoff);
        backoff = backoff * 2 > 1.0 ? 1.0 : backoff * 2;
    }
    p->hello_timeout_ms = 10000;
    if (st != LP_OK) {
        int first = -1;
        for (int i = 0; i < p->n_workers && first < 0; i++)
            if (down[i]) first = i;
        return lp_error_set(err, LP_ERR_NETWORK,
                            "stage %d (%s) did not come back within %.1f s: %s", first + 1,
                            first >= 0 ? p->stages[first].addr : "?",
                            p->params.recover_timeout_ms / 1e3, why.msg);
    }
    if (strcmp(how, "restarted") == 0) {
        int first = -1;
        for (int i = 0; i < p->n_workers && first < 0; i++)
            if (ever_down[i]) first = i;
        if (first >= 0) snprintf(how, how_bytes, "restarted %s", p->stages[first].addr);
        else snprintf(how, how_bytes, "reconnected");
    }
    return LP_OK;
}
