// SPDX-License-Identifier: MIT
// rpc_server.c -- the gRPC server: one completion queue and one thread per
// server, routing each incoming call by its method path to a unary handler,
// a stream handler, or UNIMPLEMENTED.
//
// Every call object counts its batches in flight (n_pending) and is released
// only when RECV_CLOSE_ON_SERVER has completed and nothing is in flight; the
// server counts live calls (n_live) and shuts its queue down only after its
// shutdown notification arrived and n_live reached 0. A stream sends one
// message at a time (gRPC allows one SEND_MESSAGE batch in flight per call):
// lp_rpc_stream_send appends to a queue that the send completions drain.
#include <grpc/support/alloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/rpc_internal.h"

struct rpc_method {
    char *name;                          // "/pkg.Service/Method", owned
    lp_rpc_unary_fn unary;               // NULL for a stream method
    int slow;                            // unary: run on a thread of its own (lp_rpc_server_add_unary_slow)
    struct lp_rpc_stream_handler stream; // used when unary is NULL
    void *user;                          // borrowed
};

// The one outstanding grpc_server_request_call (server thread).
struct rpc_request {
    struct lp_rpc_tag tag;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
};

struct lp_rpc_server {
    grpc_server *server;
    grpc_completion_queue *cq;
    pthread_t thread;
    int started;
    int port;
    char *addr;               // listen address, owned
    size_t max_message_bytes; // effective limit (never 0)
    const struct lp_rpc_security *sec; // borrowed; NULL: plaintext, no token
    struct rpc_method *methods;
    size_t n_methods; // fixed once started
    // Below: server thread only (or the destroying thread when never started).
    struct rpc_request request;
    int request_pending;
    struct lp_rpc_tag shutdown_tag;
    int shutdown_notified;
    int cq_shut;
    size_t n_live; // calls not yet released
};

// A unary or UNIMPLEMENTED call; server thread only.
struct rpc_unary_call {
    struct lp_rpc_tag recv_tag, final_tag;
    struct lp_rpc_server *server;
    const struct rpc_method *method; // NULL: unknown method (or refused)
    grpc_status_code refuse_code;    // != OK: end the call with it at once
    char refuse_msg[LP_ERROR_MSG_BYTES];
    grpc_call *call;
    grpc_byte_buffer *recv_bb;
    grpc_byte_buffer *send_bb;
    grpc_slice details; // status details, alive until the final batch is done
    int cancelled;
};

struct lp_rpc_stream {
    struct lp_rpc_tag recv_tag, send_tag, status_tag, close_tag;
    struct lp_rpc_server *server; // borrowed; not touched after release
    const struct rpc_method *method;
    grpc_call *call;
    size_t max_message_bytes;
    // Server thread only.
    void *stream_user;
    int opened;                 // on_open succeeded: on_close is owed
    grpc_byte_buffer *recv_bb;  // RECV_MESSAGE target
    int cancelled;              // RECV_CLOSE_ON_SERVER result
    grpc_slice status_details;  // alive until the status batch is done
    pthread_mutex_t mu; // guards everything below (any thread)
    struct lp_rpc_msg *head, *tail;
    size_t queued_bytes;
    grpc_byte_buffer *send_bb; // the SEND_MESSAGE in flight, or NULL
    int finishing;             // final status decided: no more sends
    int holds;                 // lp_rpc_stream_hold: work on received messages still owed
    int half_closed;           // the client half-closed while holds > 0: finish at the last unhold
    int status_started;
    int closed;   // RECV_CLOSE_ON_SERVER done: no more batches
    int released; // on_close done (or owed and running)
    int n_pending;
    enum lp_status final_st;
    char final_msg[LP_ERROR_MSG_BYTES];
    int refs; // 1 for the server until release, + user refs
};

static void server_maybe_finish(struct lp_rpc_server *s) {
    if (s->shutdown_notified && s->n_live == 0 && !s->request_pending && !s->cq_shut) {
        s->cq_shut = 1;
        grpc_completion_queue_shutdown(s->cq);
    }
}

static void server_call_released(struct lp_rpc_server *s) {
    s->n_live--;
    server_maybe_finish(s);
}

static void op_init(grpc_op *op, grpc_op_type type) {
    memset(op, 0, sizeof *op);
    op->op = type;
}

// ------------------------------------------------------------------ unary ---

static void unary_final_done(struct lp_rpc_tag *tag, int ok) {
    struct rpc_unary_call *c = LP_RPC_CONTAINER(tag, struct rpc_unary_call, final_tag);
    struct lp_rpc_server *s = c->server;
    if (c->send_bb) grpc_byte_buffer_destroy(c->send_bb);
    grpc_slice_unref(c->details);
    grpc_call_unref(c->call);
    free(c);
    server_call_released(s);
}

// Ends the call: [response,] status, close. One batch.
static void unary_finish(struct rpc_unary_call *c, int send_md, grpc_status_code code,
                         const char *details) {
    grpc_op ops[4];
    size_t n = 0;
    c->details = grpc_slice_from_copied_string(details ? details : "");
    if (send_md) op_init(&ops[n++], GRPC_OP_SEND_INITIAL_METADATA);
    if (c->send_bb) {
        op_init(&ops[n], GRPC_OP_SEND_MESSAGE);
        ops[n++].data.send_message.send_message = c->send_bb;
    }
    op_init(&ops[n], GRPC_OP_SEND_STATUS_FROM_SERVER);
    ops[n].data.send_status_from_server.status = code;
    ops[n++].data.send_status_from_server.status_details = &c->details;
    op_init(&ops[n], GRPC_OP_RECV_CLOSE_ON_SERVER);
    ops[n++].data.recv_close_on_server.cancelled = &c->cancelled;
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, &c->final_tag, NULL);
    if (e != GRPC_CALL_OK) unary_final_done(&c->final_tag, 0); // cannot happen: ops are valid
}

static void unary_handle(struct rpc_unary_call *c);

static void *unary_slow_main(void *arg) {
    unary_handle(arg);
    return NULL;
}

static void unary_recv_done(struct lp_rpc_tag *tag, int ok) {
    struct rpc_unary_call *c = LP_RPC_CONTAINER(tag, struct rpc_unary_call, recv_tag);
    if (!ok || !c->recv_bb) {
        if (c->recv_bb) grpc_byte_buffer_destroy(c->recv_bb);
        c->recv_bb = NULL;
        unary_finish(c, 0, GRPC_STATUS_INVALID_ARGUMENT, "unary call without a request message");
        return;
    }
    if (c->method->slow) { // off the server thread: Health and the streams go on meanwhile
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, unary_slow_main, c);
        pthread_attr_destroy(&attr);
        if (rc == 0) return;
    }
    unary_handle(c);
}

// Runs the handler and ends the call (server thread, or a slow call's own).
static void unary_handle(struct rpc_unary_call *c) {
    struct lp_error err = {LP_OK, ""};
    struct lp_rpc_view view;
    uint8_t *resp = NULL;
    size_t resp_bytes = 0;
    enum lp_status st = lp_rpc_view_init(&view, c->recv_bb, &err);
    if (st == LP_OK) {
        st = c->method->unary(c->method->user, view.data, view.bytes, &resp, &resp_bytes, &err);
        lp_rpc_view_deinit(&view);
    }
    grpc_byte_buffer_destroy(c->recv_bb);
    c->recv_bb = NULL;
    if (st != LP_OK) {
        if (!err.msg[0]) lp_error_set(&err, st, "%s", lp_status_str(st));
        unary_finish(c, 0, lp_rpc_status_to_grpc(st), err.msg);
        return;
    }
    if (resp_bytes > c->server->max_message_bytes) {
        free(resp);
        unary_finish(c, 0, GRPC_STATUS_RESOURCE_EXHAUSTED, "response larger than the limit");
        return;
    }
    c->send_bb = lp_rpc_bb_take(resp, resp_bytes);
    unary_finish(c, 0, GRPC_STATUS_OK, "");
}

static void unary_start(struct lp_rpc_server *s, grpc_call *call, const struct rpc_method *m,
                        grpc_status_code refuse_code, const char *refuse_msg) {
    struct rpc_unary_call *c = calloc(1, sizeof *c);
    if (!c) { // out of memory: drop the call; gRPC cancels it when unreffed
        grpc_call_cancel(call, NULL);
        grpc_call_unref(call);
        server_call_released(s);
        return;
    }
    c->recv_tag.done = unary_recv_done;
    c->final_tag.done = unary_final_done;
    c->server = s;
    c->method = m;
    c->call = call;
    if (refuse_code != GRPC_STATUS_OK) {
        unary_finish(c, 1, refuse_code, refuse_msg);
        return;
    }
    if (!m) {
        unary_finish(c, 1, GRPC_STATUS_UNIMPLEMENTED, "unknown method");
        return;
    }
    grpc_op ops[2];
    op_init(&ops[0], GRPC_OP_SEND_INITIAL_METADATA);
    op_init(&ops[1], GRPC_OP_RECV_MESSAGE);
    ops[1].data.recv_message.recv_message = &c->recv_bb;
    if (grpc_call_start_batch(call, ops, 2, &c->recv_tag, NULL) != GRPC_CALL_OK)
        unary_finish(c, 0, GRPC_STATUS_INTERNAL, "start_batch failed");
}

// ----------------------------------------------------------------- stream ---

static void stream_free(struct lp_rpc_stream *st) {
    lp_rpc_msg_free_all(st->head);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

void lp_rpc_stream_ref(struct lp_rpc_stream *st) {
    pthread_mutex_lock(&st->mu);
    st->refs++;
    pthread_mutex_unlock(&st->mu);
}

static void stream_finish_locked(struct lp_rpc_stream *st, enum lp_status code, const char *msg);

void lp_rpc_stream_hold(struct lp_rpc_stream *st) {
    pthread_mutex_lock(&st->mu);
    st->holds++;
    pthread_mutex_unlock(&st->mu);
}

void lp_rpc_stream_unhold(struct lp_rpc_stream *st) {
    pthread_mutex_lock(&st->mu);
    if (--st->holds == 0 && st->half_closed) stream_finish_locked(st, LP_OK, "");
    pthread_mutex_unlock(&st->mu);
}

void lp_rpc_stream_unref(struct lp_rpc_stream *st) {
    if (!st) return;
    pthread_mutex_lock(&st->mu);
    int last = --st->refs == 0;
    pthread_mutex_unlock(&st->mu);
    if (last) stream_free(st);
}

// Starts the next batch of the send pipeline, if any: a queued message, or
// the final status once the queue is empty. Requires mu.
static void stream_pump_locked(struct lp_rpc_stream *st) {
    if (st->send_bb || st->closed || st->status_started) return;
    if (st->head) {
        struct lp_rpc_msg *m = st->head;
        st->head = m->next;
        if (!st->head) st->tail = NULL;
        st->queued_bytes -= m->bytes;
        st->send_bb = m->bb;
        free(m);
        grpc_op op;
        op_init(&op, GRPC_OP_SEND_MESSAGE);
        op.data.send_message.send_message = st->send_bb;
        st->n_pending++;
        if (grpc_call_start_batch(st->call, &op, 1, &st->send_tag, NULL) != GRPC_CALL_OK) {
            st->n_pending--; // cannot happen: one SEND_MESSAGE at a time
            grpc_byte_buffer_destroy(st->send_bb);
            st->send_bb = NULL;
        }
        return;
    }
    if (st->finishing) {
        st->status_started = 1;
        st->status_details = grpc_slice_from_copied_string(st->final_msg);
        grpc_op ops[2];
        size_t n_ops = 0;
        if (!st->opened) { // refused at open: a trailers-only response needs metadata too
            op_init(&ops[n_ops++], GRPC_OP_SEND_INITIAL_METADATA);
        }
        op_init(&ops[n_ops], GRPC_OP_SEND_STATUS_FROM_SERVER);
        ops[n_ops].data.send_status_from_server.status = lp_rpc_status_to_grpc(st->final_st);
        ops[n_ops].data.send_status_from_server.status_details = &st->status_details;
        n_ops++;
        st->n_pending++;
        if (grpc_call_start_batch(st->call, ops, n_ops, &st->status_tag, NULL) != GRPC_CALL_OK)
            st->n_pending--; // cannot happen; the close (cancel) still ends the call
    }
}

// Decides the final status (first decision wins) and pumps. Requires mu.
static void stream_finish_locked(struct lp_rpc_stream *st, enum lp_status code, const char *msg) {
    if (st->finishing) return;
    st->finishing = 1;
    st->final_st = code;
    snprintf(st->final_msg, sizeof st->final_msg, "%s", msg ? msg : "");
    stream_pump_locked(st);
}

// Server thread, after every stream event: releases the stream once the call
// is closed and no batch is in flight; runs on_close then.
static void stream_maybe_release(struct lp_rpc_stream *st) {
    pthread_mutex_lock(&st->mu);
    if (!st->closed || st->n_pending || st->released) {
        pthread_mutex_unlock(&st->mu);
        return;
    }
    st->released = 1;
    enum lp_status code = st->final_st;
    char msg[LP_ERROR_MSG_BYTES];
    if (st->cancelled && code == LP_OK) {
        code = LP_ERR_CANCELLED;
        snprintf(msg, sizeof msg, "%s: stream cancelled (peer gone or server shutting down)",
                 st->method->name);
    } else if (code == LP_OK && !st->finishing) { // cannot happen: closed without a status
        code = LP_ERR_CANCELLED;
        snprintf(msg, sizeof msg, "%s: stream ended without a status", st->method->name);
    } else {
        snprintf(msg, sizeof msg, "%s", st->final_msg);
    }
    lp_rpc_msg_free_all(st->head); // never sent
    st->head = st->tail = NULL;
    st->queued_bytes = 0;
    pthread_mutex_unlock(&st->mu);

    struct lp_rpc_server *s = st->server;
    if (st->opened) st->method->stream.on_close(st->method->user, st->stream_user, code, msg);
    if (st->status_started) grpc_slice_unref(st->status_details);
    grpc_call_unref(st->call);
    st->call = NULL;
    lp_rpc_stream_unref(st);
    server_call_released(s);
}

static void stream_post_recv(struct lp_rpc_stream *st, int with_md) {
    grpc_op ops[2];
    size_t n = 0;
    if (with_md) op_init(&ops[n++], GRPC_OP_SEND_INITIAL_METADATA);
    op_init(&ops[n], GRPC_OP_RECV_MESSAGE);
    ops[n++].data.recv_message.recv_message = &st->recv_bb;
    pthread_mutex_lock(&st->mu);
    if (!st->closed && !st->finishing) {
        st->n_pending++;
        if (grpc_call_start_batch(st->call, ops, n, &st->recv_tag, NULL) != GRPC_CALL_OK) {
            st->n_pending--;
            stream_finish_locked(st, LP_ERR_INTERNAL, "start_batch(RECV_MESSAGE) failed");
        }
    }
    pthread_mutex_unlock(&st->mu);
}

static void stream_recv_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_stream *st = LP_RPC_CONTAINER(tag, struct lp_rpc_stream, recv_tag);
    grpc_byte_buffer *bb = st->recv_bb;
    st->recv_bb = NULL;
    if (ok && bb) {
        struct lp_error err = {LP_OK, ""};
        struct lp_rpc_view view;
        enum lp_status code = lp_rpc_view_init(&view, bb, &err);
        if (code == LP_OK) {
            code = st->method->stream.on_message(st->method->user, st->stream_user, st, view.data,
                                                 view.bytes, &err);
            lp_rpc_view_deinit(&view);
        }
        grpc_byte_buffer_destroy(bb);
        if (code != LP_OK) {
            if (!err.msg[0]) lp_error_set(&err, code, "%s", lp_status_str(code));
            pthread_mutex_lock(&st->mu);
            stream_finish_locked(st, code, err.msg);
            pthread_mutex_unlock(&st->mu);
        } else {
            stream_post_recv(st, 0);
        }
    } else {
        if (bb) grpc_byte_buffer_destroy(bb);
        pthread_mutex_lock(&st->mu);
        if (ok && st->holds > 0) st->half_closed = 1; // finish after the owed replies
        else if (ok) stream_finish_locked(st, LP_OK, ""); // client half-closed
        pthread_mutex_unlock(&st->mu);
        // !ok: the call failed; RECV_CLOSE_ON_SERVER reports it
    }
    pthread_mutex_lock(&st->mu);
    st->n_pending--;
    pthread_mutex_unlock(&st->mu);
    stream_maybe_release(st);
}

static void stream_send_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_stream *st = LP_RPC_CONTAINER(tag, struct lp_rpc_stream, send_tag);
    pthread_mutex_lock(&st->mu);
    grpc_byte_buffer_destroy(st->send_bb);
    st->send_bb = NULL;
    st->n_pending--;
    if (ok) stream_pump_locked(st);
    else stream_finish_locked(st, LP_ERR_NETWORK, "send failed");
    pthread_mutex_unlock(&st->mu);
    stream_maybe_release(st);
}

static void stream_status_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_stream *st = LP_RPC_CONTAINER(tag, struct lp_rpc_stream, status_tag);
    pthread_mutex_lock(&st->mu);
    st->n_pending--;
    pthread_mutex_unlock(&st->mu);
    stream_maybe_release(st);
}

static void stream_close_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_stream *st = LP_RPC_CONTAINER(tag, struct lp_rpc_stream, close_tag);
    pthread_mutex_lock(&st->mu);
    st->closed = 1;
    st->n_pending--;
    pthread_mutex_unlock(&st->mu);
    stream_maybe_release(st);
}

static void stream_start(struct lp_rpc_server *s, grpc_call *call, const struct rpc_method *m) {
    struct lp_rpc_stream *st = calloc(1, sizeof *st);
    if (!st) {
        grpc_call_cancel(call, NULL);
        grpc_call_unref(call);
        server_call_released(s);
        return;
    }
    st->recv_tag.done = stream_recv_done;
    st->send_tag.done = stream_send_done;
    st->status_tag.done = stream_status_done;
    st->close_tag.done = stream_close_done;
    st->server = s;
    st->method = m;
    st->call = call;
    st->max_message_bytes = s->max_message_bytes;
    st->refs = 1;
    pthread_mutex_init(&st->mu, NULL);

    grpc_op op;
    op_init(&op, GRPC_OP_RECV_CLOSE_ON_SERVER);
    op.data.recv_close_on_server.cancelled = &st->cancelled;
    st->n_pending = 1;
    if (grpc_call_start_batch(call, &op, 1, &st->close_tag, NULL) != GRPC_CALL_OK) {
        grpc_call_cancel(call, NULL); // cannot happen; nothing will complete
        grpc_call_unref(call);
        pthread_mutex_destroy(&st->mu);
        free(st);
        server_call_released(s);
        return;
    }
    struct lp_error err = {LP_OK, ""};
    enum lp_status code = m->stream.on_open(m->user, st, &st->stream_user, &err);
    if (code != LP_OK) {
        if (!err.msg[0]) lp_error_set(&err, code, "%s", lp_status_str(code));
        pthread_mutex_lock(&st->mu); // a trailers-only response
        stream_finish_locked(st, code, err.msg);
        pthread_mutex_unlock(&st->mu);
        return;
    }
    st->opened = 1;
    stream_post_recv(st, 1);
}

enum lp_status lp_rpc_stream_send(struct lp_rpc_stream *st, const uint8_t *msg, size_t bytes,
                                  struct lp_error *err) {
    if (!st || (!msg && bytes))
        return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_stream_send: NULL argument");
    if (bytes > st->max_message_bytes)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "lp_rpc_stream_send: %zu bytes, max message %zu", bytes,
                            st->max_message_bytes);
    struct lp_rpc_msg *m = lp_rpc_msg_create(msg, bytes);
    if (!m) return lp_error_set(err, LP_ERR_NOMEM, "lp_rpc_stream_send: queue entry");
    pthread_mutex_lock(&st->mu);
    if (st->closed || st->finishing) {
        int closed = st->closed;
        pthread_mutex_unlock(&st->mu);
        lp_rpc_msg_free_all(m);
        // not st->method: a user reference may outlive the server
        return lp_error_set(err, LP_ERR_CANCELLED, "lp_rpc_stream_send: the stream is %s",
                            closed ? "closed" : "finishing");
    }
    if (st->tail) st->tail->next = m;
    else st->head = m;
    st->tail = m;
    st->queued_bytes += bytes;
    stream_pump_locked(st);
    pthread_mutex_unlock(&st->mu);
    return LP_OK;
}

size_t lp_rpc_stream_queued_bytes(struct lp_rpc_stream *st) {
    pthread_mutex_lock(&st->mu);
    size_t n = st->queued_bytes;
    pthread_mutex_unlock(&st->mu);
    return n;
}

// ----------------------------------------------------------------- server ---

static void server_post_request(struct lp_rpc_server *s);

// The cluster token check, before any handler: "" when the call may go on,
// else why not (for the caller's status details and the server's log).
static const char *server_check_token(const struct lp_rpc_server *s, const grpc_metadata_array *md,
                                      const char *method) {
    if (!s->sec || !s->sec->token) return "";
    if (s->sec->health_open && strncmp(method, "/grpc.health.v1.Health/", 23) == 0) return "";
    const grpc_metadata *found = NULL;
    for (size_t i = 0; i < md->count; i++)
        if (grpc_slice_str_cmp(md->metadata[i].key, LP_RPC_TOKEN_KEY) == 0)
            found = &md->metadata[i];
    if (!found)
        return "no cluster token (metadata " LP_RPC_TOKEN_KEY "): this server requires "
               "--cluster-token-file";
    if (!lp_rpc_token_equal(s->sec->token, GRPC_SLICE_START_PTR(found->value),
                            GRPC_SLICE_LENGTH(found->value)))
        return "wrong cluster token: give every process the same --cluster-token-file";
    return "";
}

// Logs a refused call through sec->log, naming the method and the peer.
static void server_log_refusal(const struct lp_rpc_server *s, grpc_call *call, const char *method,
                               const char *why) {
    if (!s->sec || !s->sec->log) return;
    char *peer = grpc_call_get_peer(call);
    char line[LP_ERROR_MSG_BYTES + 256];
    snprintf(line, sizeof line, "rpc server %s: refused %s from %s: %s", s->addr, method,
             peer ? peer : "?", why);
    gpr_free(peer);
    s->sec->log(s->sec->log_user, line);
}

static void server_request_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_server *s = LP_RPC_CONTAINER(tag, struct lp_rpc_server, request.tag);
    s->request_pending = 0;
    grpc_call *call = s->request.call;
    const struct rpc_method *m = NULL;
    char refused[LP_ERROR_MSG_BYTES] = "";
    if (ok && call) {
        for (size_t i = 0; i < s->n_methods && !m; i++)
            if (grpc_slice_str_cmp(s->request.details.method, s->methods[i].name) == 0)
                m = &s->methods[i];
        char *method = lp_rpc_slice_strdup(s->request.details.method);
        const char *why = server_check_token(s, &s->request.md, method ? method : "");
        if (why[0]) {
            snprintf(refused, sizeof refused, "%s", why);
            server_log_refusal(s, call, method ? method : "?", why);
        }
        free(method);
    }
    grpc_call_details_destroy(&s->request.details);
    grpc_metadata_array_destroy(&s->request.md);
    s->request.call = NULL;
    if (!ok) { // shutting down
        if (call) grpc_call_unref(call);
        server_maybe_finish(s);
        return;
    }
    server_post_request(s); // accept the next call while this one runs
    s->n_live++;
    if (refused[0]) unary_start(s, call, NULL, GRPC_STATUS_UNAUTHENTICATED, refused);
    else if (m && !m->unary) stream_start(s, call, m);
    else unary_start(s, call, m, GRPC_STATUS_OK, NULL); // m == NULL: UNIMPLEMENTED
}

static void server_post_request(struct lp_rpc_server *s) {
    grpc_call_details_init(&s->request.details);
    grpc_metadata_array_init(&s->request.md);
    s->request.call = NULL;
    s->request_pending = 1;
    if (grpc_server_request_call(s->server, &s->request.call, &s->request.details,
                                 &s->request.md, s->cq, s->cq,
                                 &s->request.tag) != GRPC_CALL_OK) {
        s->request_pending = 0; // cannot happen with a registered queue
        grpc_call_details_destroy(&s->request.details);
        grpc_metadata_array_destroy(&s->request.md);
    }
}

static void server_shutdown_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_server *s = LP_RPC_CONTAINER(tag, struct lp_rpc_server, shutdown_tag);
    s->shutdown_notified = 1;
    server_maybe_finish(s);
}

static void *server_thread_main(void *arg) {
    struct lp_rpc_server *s = arg;
    lp_rpc_cq_run(s->cq);
    return NULL;
}

// The port's credentials: TLS from sec's PEM texts (requiring a client
// certificate signed by its CA when it has one), else plaintext.
static grpc_server_credentials *server_creds(const struct lp_rpc_security *sec) {
    if (!lp_rpc_security_tls(sec)) return grpc_insecure_server_credentials_create();
    grpc_ssl_pem_key_cert_pair pair = {sec->key_pem, sec->cert_pem};
    return grpc_ssl_server_credentials_create_ex(
        sec->ca_pem, &pair, 1,
        sec->ca_pem ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                    : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
}

enum lp_status lp_rpc_server_create(struct lp_rpc_server **out, const char *listen_addr,
                                    size_t max_message_bytes, const struct lp_rpc_security *sec,
                                    struct lp_error *err) {
    if (!out || !listen_addr)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_server_create: NULL argument");
    *out = NULL;
    lp_rpc_init();
    enum lp_status st = LP_OK;
    struct lp_rpc_server *s = calloc(1, sizeof *s);
    if (!s || !(s->addr = strdup(listen_addr))) {
        st = lp_error_set(err, LP_ERR_NOMEM, "rpc server %s: out of memory", listen_addr);
        goto fail;
    }
    s->max_message_bytes = max_message_bytes ? max_message_bytes : LP_RPC_DEFAULT_MAX_MESSAGE_BYTES;
    s->sec = sec;
    s->request.tag.done = server_request_done;
    s->shutdown_tag.done = server_shutdown_done;
    struct lp_rpc_args args;
    s->cq = grpc_completion_queue_create_for_next(NULL);
    s->server = grpc_server_create(lp_rpc_args_fill(&args, 1, max_message_bytes), NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    grpc_server_credentials *creds = server_creds(sec);
    if (!creds) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "rpc server %s: gRPC refused the TLS certificate, key or CA",
                          listen_addr);
        goto fail;
    }
    s->port = grpc_server_add_http2_port(s->server, listen_addr, creds);
    grpc_server_credentials_release(creds);
    if (s->port <= 0) {
        st = lp_error_set(err, LP_ERR_NETWORK,
                          "rpc server: cannot listen on %s (address in use, not host:port%s)",
                          listen_addr,
                          lp_rpc_security_tls(sec) ? ", or a TLS certificate/key gRPC cannot load"
                                                   : "");
        goto fail;
    }
    const char *colon = strrchr(listen_addr, ':');
    if (colon && strcmp(colon, ":0") == 0) { // name the real port (in refusal logs)
        char real[300];
        snprintf(real, sizeof real, "%.*s:%d", (int)(colon - listen_addr), listen_addr, s->port);
        char *r = strdup(real);
        if (r) {
            free(s->addr);
            s->addr = r;
        }
    }
    *out = s;
    return LP_OK;
fail:
    if (s) {
        if (s->server) grpc_server_destroy(s->server); // no listener: no shutdown needed
        if (s->cq) {
            grpc_completion_queue_shutdown(s->cq);
            grpc_completion_queue_destroy(s->cq);
        }
        free(s->addr);
        free(s);
    }
    lp_rpc_shutdown();
    return st;
}

int lp_rpc_server_port(const struct lp_rpc_server *s) { return s ? s->port : 0; }

static enum lp_status server_add(struct lp_rpc_server *s, const char *method, lp_rpc_unary_fn fn,
                                 const struct lp_rpc_stream_handler *h, void *user,
                                 struct lp_error *err) {
    if (!s || !method || (!fn && (!h || !h->on_open || !h->on_message || !h->on_close)))
        return lp_error_set(err, LP_ERR_INVALID_ARG, "rpc server: add method: NULL argument");
    if (s->started)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "rpc server %s: add %s after start",
                            s->addr, method);
    if (method[0] != '/')
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "rpc server: method '%s' must look like /pkg.Service/Method", method);
    for (size_t i = 0; i < s->n_methods; i++)
        if (strcmp(s->methods[i].name, method) == 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "rpc server: method %s added twice",
                                method);
    struct rpc_method *grown = realloc(s->methods, (s->n_methods + 1) * sizeof *grown);
    if (!grown) return lp_error_set(err, LP_ERR_NOMEM, "rpc server: method table");
    s->methods = grown;
    struct rpc_method *m = &s->methods[s->n_methods];
    memset(m, 0, sizeof *m);
    if (!(m->name = strdup(method))) return lp_error_set(err, LP_ERR_NOMEM, "rpc server: method");
    m->unary = fn;
    if (h) m->stream = *h;
    m->user = user;
    s->n_methods++;
    return LP_OK;
}

enum lp_status lp_rpc_server_add_unary(struct lp_rpc_server *s, const char *method,
                                       lp_rpc_unary_fn fn, void *user, struct lp_error *err) {
    if (!fn) return lp_error_set(err, LP_ERR_INVALID_ARG, "rpc server: NULL unary handler");
    return server_add(s, method, fn, NULL, user, err);
}

enum lp_status lp_rpc_server_add_unary_slow(struct lp_rpc_server *s, const char *method,
                                            lp_rpc_unary_fn fn, void *user, struct lp_error *err) {
    enum lp_status st = lp_rpc_server_add_unary(s, method, fn, user, err);
    if (st == LP_OK) s->methods[s->n_methods - 1].slow = 1;
    return st;
}

enum lp_status lp_rpc_server_add_stream(struct lp_rpc_server *s, const char *method,
                                        const struct lp_rpc_stream_handler *h, void *user,
                                        struct lp_error *err) {
    if (!h) return lp_error_set(err, LP_ERR_INVALID_ARG, "rpc server: NULL stream handler");
    return server_add(s, method, NULL, h, user, err);
}

enum lp_status lp_rpc_server_start(struct lp_rpc_server *s, struct lp_error *err) {
    if (!s) return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_server_start: NULL server");
    if (s->started)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "rpc server %s: started twice", s->addr);
    grpc_server_start(s->server);
    server_post_request(s);
    if (pthread_create(&s->thread, NULL, server_thread_main, s) != 0) {
        // The queue is served inline by destroy instead.
        return lp_error_set(err, LP_ERR_INTERNAL, "rpc server %s: cannot start its thread",
                            s->addr);
    }
    s->started = 1;
    return LP_OK;
}

void lp_rpc_server_destroy(struct lp_rpc_server *s) {
    if (!s) return;
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
    grpc_server_cancel_all_calls(s->server);
    if (s->started) pthread_join(s->thread, NULL);
    else lp_rpc_cq_run(s->cq); // never started (or no thread): drain here
    grpc_server_destroy(s->server);
    grpc_completion_queue_destroy(s->cq);
    for (size_t i = 0; i < s->n_methods; i++) free(s->methods[i].name);
    free(s->methods);
    free(s->addr);
    free(s);
    lp_rpc_shutdown();
}
