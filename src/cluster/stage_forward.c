// SPDX-License-Identifier: MIT
// stage_forward.c -- a worker's Forward path: each message is unpacked on
// the server thread into a free slot of the bounded step queue (its arena);
// the compute thread takes the steps in order, has the stage's core
// (stage_core.c) check each against the sessions and run it through the
// engine, passes it on (every row to a stage, the rows needing logits to the
// Sink) and acknowledges it on the stream that sent it, or answers a failure
// Ack for that step alone.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/stage_i.h"

// ---- the step queue ----

// Drops every queued step (a new configuration, shutdown). Under mu.
void lp_stage_queue_clear(struct lp_worker *w) {
    while (w->q_count > 0) {
        struct stage_item *it = &w->queue[w->q_head];
        lp_rpc_stream_unhold(it->from);
        lp_rpc_stream_unref(it->from);
        it->from = NULL;
        it->a = NULL;
        w->q_head = (w->q_head + 1) % STAGE_QUEUE;
        w->q_count--;
    }
}

void lp_stage_queue_free(struct lp_worker *w) {
    for (int i = 0; i < STAGE_QUEUE; i++) lp_pb_arena_deinit(&w->queue[i].arena);
    w->arena_cap = 0;
}

// Passes the computed step on: every row to a stage, the rows needing
// logits to the Sink. The step is remembered so the successor's Ack (or
// failure) finds the stream that sent it. engine_mu held.
static enum lp_status stage_pass_on(struct lp_worker *w, const Layerpipe__V1__Activations *a,
                                    struct lp_rpc_stream *from, struct lp_error *err) {
    const float *send = w->core.rows_out;
    uint32_t n_send = a->n_rows;
    size_t H = (size_t)w->core.hidden;
    if (w->to_sink) {
        n_send = 0;
        size_t row = 0;
        for (size_t i = 0; i < a->n_segments; i++) {
            const Layerpipe__V1__Segment *g = a->segments[i];
            uint32_t k = lp_wire_logit_rows(g);
            for (size_t t = g->n_tokens - k; t < g->n_tokens; t++)
                memcpy(w->rows_sel + (size_t)n_send++ * H, w->core.rows_out + (row + t) * H,
                       H * sizeof(float));
            row += g->n_tokens;
        }
        send = w->rows_sel;
    }
    Layerpipe__V1__Activations out = LAYERPIPE__V1__ACTIVATIONS__INIT;
    out.step = a->step;
    out.n_segments = a->n_segments;
    out.segments = a->segments;
    out.n_rows = n_send;
    out.hidden = (uint32_t)H;
    out.dtype = lp_wire_encode_rows(send, (size_t)n_send * H, w->wire, w->payload, &out.data.len);
    out.data.data = w->payload;
    out.sent_at = lp_now_seconds();
    if (w->to_sink) out.sink_key = w->sink_key;
    size_t n = 0;
    enum lp_status st = lp_pb_pack_into(&out.base, w->packed, w->pack_cap, &n, err);
    if (st != LP_OK) return st;
    pthread_mutex_lock(&w->mu);
    bool failed = w->succ_failed;
    pthread_mutex_unlock(&w->mu);
    if (failed && (st = lp_stage_connect(w, err)) != LP_OK) return st; // reconnect once
    pthread_mutex_lock(&w->mu);
    struct stage_sent *s = &w->sent[a->step % STAGE_INFLIGHT];
    lp_rpc_stream_unref(s->from); // an old step never acknowledged
    lp_rpc_stream_ref(from);
    *s = (struct stage_sent){a->step, out.sent_at, from};
    w->bytes_out += out.data.len;
    pthread_mutex_unlock(&w->mu);
    st = lp_rpc_client_stream_write(w->succ, w->packed, n, err);
    if (st != LP_OK)
        return lp_error_prefix(err, "stage %d (%s): successor %s: ", w->core.stage_index, w->listen,
                               w->successor);
    return LP_OK;
}

// One step on the compute thread: compute, pass on, acknowledge; or a
// failure Ack for this step alone.
static void stage_step(struct lp_worker *w, struct stage_item *it) {
    struct lp_error err = {0};
    enum lp_status st;
    pthread_mutex_lock(&w->engine_mu);
    pthread_mutex_lock(&w->mu);
    bool dropped = it->a == NULL; // a Configure cleared the queue meanwhile
    pthread_mutex_unlock(&w->mu);
    if (dropped) {
        pthread_mutex_unlock(&w->engine_mu);
        return;
    }
    const Layerpipe__V1__Activations *a = it->a;
    double t0 = lp_now_seconds();
    // (not configured: a stream opened before a later Configure failed)
    if ((st = lp_stage_core_compute(&w->core, a, &err)) == LP_OK)
        st = stage_pass_on(w, a, it->from, &err);
    double t1 = lp_now_seconds();
    if (w->core.configured) lp_stage_note_kv(w);
    pthread_mutex_unlock(&w->engine_mu);
    pthread_mutex_lock(&w->mu);
    if (t0 > w->last_done) w->idle_s += t0 - w->last_done;
    w->last_done = t1;
    if (st == LP_OK) {
        w->busy_s += t1 - t0;
        w->tokens += a->n_rows;
        w->steps++;
        w->bytes_in += a->data.len;
    }
    pthread_mutex_unlock(&w->mu);
    if (st != LP_OK) {
        if (!strstr(err.msg, "stage ")) lp_error_prefix(&err, "stage %d: ", w->core.stage_index);
        fprintf(stderr, "layerpipe worker %s: step %llu: %s\n", w->listen,
                (unsigned long long)a->step, err.msg);
        lp_stage_ack_failure(it->from, a->step, st, w->core.stage_index, err.msg);
        return;
    }
    Layerpipe__V1__Ack ack = LAYERPIPE__V1__ACK__INIT;
    ack.step = a->step;
    ack.ok = true;
    ack.compute_seconds = t1 - t0;
    uint8_t buf[64];
    size_t n;
    if (lp_pb_pack_into(&ack.base, buf, sizeof buf, &n, NULL) == LP_OK)
        lp_rpc_stream_send(it->from, buf, n, NULL);
}

void *lp_stage_compute_main(void *arg) {
    struct lp_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->stopping && w->q_count == 0) pthread_cond_wait(&w->cv, &w->mu);
        if (w->stopping) break;
        int k = w->q_head;
        pthread_mutex_unlock(&w->mu);
        stage_step(w, &w->queue[k]);
        pthread_mutex_lock(&w->mu);
        // a Configure may have cleared the queue meanwhile
        if (w->q_count > 0 && w->q_head == k && w->queue[k].a) {
            lp_rpc_stream_unhold(w->queue[k].from);
            lp_rpc_stream_unref(w->queue[k].from);
            w->queue[k].from = NULL;
            w->queue[k].a = NULL;
            w->q_head = (w->q_head + 1) % STAGE_QUEUE;
            w->q_count--;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

// ---- the Forward stream (server thread: unpack and queue, never compute) ----

static enum lp_status fwd_open(void *user, struct lp_rpc_stream *s, void **stream_user,
                               struct lp_error *err) {
    struct lp_worker *w = user;
    (void)s;
    pthread_mutex_lock(&w->mu);
    bool configured = w->arena_cap > 0;
    pthread_mutex_unlock(&w->mu);
    if (!configured) // UNAVAILABLE: a restarted stage serves no pipeline until configured
        return lp_error_set(err, LP_ERR_NETWORK,
                            "stage %s: Forward before Configure (restarted? its coordinator "
                            "configures it again)",
                            w->listen);
    uint64_t *last_step = calloc(1, sizeof *last_step); // the stream's last step
    if (!last_step) return lp_error_set(err, LP_ERR_NOMEM, "stage %s: out of memory", w->listen);
    *stream_user = last_step;
    return LP_OK;
}

static void fwd_close(void *user, void *stream_user, enum lp_status st, const char *msg) {
    (void)user;
    (void)st;
    (void)msg;
    free(stream_user);
}

static enum lp_status fwd_message(void *user, void *stream_user, struct lp_rpc_stream *s,
                                  const uint8_t *msg, size_t bytes, struct lp_error *err) {
    struct lp_worker *w = user;
    pthread_mutex_lock(&w->mu);
    if (w->arena_cap == 0 || w->q_count == STAGE_QUEUE) {
        bool full = w->arena_cap > 0;
        pthread_mutex_unlock(&w->mu);
        // refuse this step alone (its number, if it is readable at all)
        Layerpipe__V1__Activations *a = layerpipe__v1__activations__unpack(NULL, bytes, msg);
        if (!a)
            return lp_error_set(err, LP_ERR_PROTOCOL,
                                "stage %d: Forward: a %zu-byte message that is not Activations",
                                w->core.stage_index, bytes);
        char m[LP_ERROR_MSG_BYTES];
        snprintf(m, sizeof m,
                 full ? "stage %d (%s): %d steps already queued" : "stage %d (%s): not configured",
                 w->core.stage_index, w->listen, STAGE_QUEUE);
        lp_stage_ack_failure(s, a->step, full ? LP_ERR_BUSY : LP_ERR_INVALID_ARG,
                             w->core.stage_index, m);
        layerpipe__v1__activations__free_unpacked(a, NULL);
        return LP_OK;
    }
    // the tail slot, under mu: a Configure (on its own thread) may free the arenas
    struct stage_item *it = &w->queue[(w->q_head + w->q_count) % STAGE_QUEUE];
    Layerpipe__V1__Activations *a = NULL;
    struct lp_error e = {0};
    enum lp_status st = lp_stage_core_unpack_step(&w->core, &it->arena, stream_user, msg, bytes,
                                                  &a, &e);
    if (st != LP_OK) {
        pthread_mutex_unlock(&w->mu);
        if (!a) return lp_error_set(err, st, "%s", e.msg); // not Activations: the stream ends
        lp_stage_ack_failure(s, a->step, st, w->core.stage_index, e.msg);
        return LP_OK; // out of order: this step alone is refused
    }
    lp_rpc_stream_ref(s);
    lp_rpc_stream_hold(s);
    it->a = a;
    it->from = s;
    w->q_count++;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return LP_OK;
}


const struct lp_rpc_stream_handler lp_stage_forward_handler = {fwd_open, fwd_message, fwd_close};
