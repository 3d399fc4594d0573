// SPDX-License-Identifier: MIT
// rpc_client.c -- the gRPC client: a channel with one completion queue and one
// thread that runs every stream callback; blocking unary calls on their own
// short-lived queue; bidi streams with a send queue (one SEND_MESSAGE batch
// in flight per call, as gRPC requires).
//
// A stream counts its batches in flight (n_pending). on_end runs once the
// status has arrived and nothing is in flight, so it always follows the last
// on_reply; close waits for that moment and then frees the stream.
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster/rpc_internal.h"

struct lp_rpc_channel {
    grpc_channel *channel;
    grpc_completion_queue *cq; // streams' events; served by thread
    pthread_t thread;
    char *target; // "host:port", owned
    size_t max_message_bytes;
    const struct lp_rpc_security *sec; // borrowed; NULL: plaintext, no token
    grpc_metadata token_md;            // the token as call metadata (n_md 0 or 1)
    size_t n_md;
};

struct lp_rpc_client_stream {
    struct lp_rpc_tag recv_tag, send_tag, status_tag;
    struct lp_rpc_channel *chan; // borrowed
    grpc_call *call;
    char *method; // owned; the call's method slice points into it
    lp_rpc_reply_fn on_reply;
    lp_rpc_end_fn on_end;
    void *user;
    // Channel thread only (written by gRPC before the matching event).
    grpc_byte_buffer *recv_bb;
    grpc_metadata_array recv_md, trailing_md;
    grpc_status_code status;
    grpc_slice status_details;
    pthread_mutex_t mu; // guards everything below
    pthread_cond_t cv;  // signalled when finished
    struct lp_rpc_msg *head, *tail;
    size_t queued_bytes;
    grpc_byte_buffer *send_bb; // SEND_MESSAGE in flight, or NULL
    int send_busy;             // a send-side batch (message or half-close) in flight
    int half_close_wanted, half_close_sent;
    int ended;    // final status known (or the open failed)
    int end_called;
    int finished; // on_end returned and nothing is in flight
    int n_pending;
    enum lp_status end_st;
    char end_msg[LP_ERROR_MSG_BYTES];
};

static void op_init(grpc_op *op, grpc_op_type type) {
    memset(op, 0, sizeof *op);
    op->op = type;
}

static void *channel_thread_main(void *arg) {
    struct lp_rpc_channel *c = arg;
    lp_rpc_cq_run(c->cq);
    return NULL;
}

// TLS from sec (its CA as the roots, its certificate presented to the
// server), else plaintext.
static grpc_channel_credentials *channel_creds(const struct lp_rpc_security *sec) {
    if (!lp_rpc_security_tls(sec)) return grpc_insecure_credentials_create();
    grpc_ssl_pem_key_cert_pair pair = {sec->key_pem, sec->cert_pem};
    return grpc_ssl_credentials_create(sec->ca_pem, &pair, NULL, NULL);
}

// The initial metadata of every call: the token, when there is one.
static void op_send_md(grpc_op *op, const struct lp_rpc_channel *c) {
    op->data.send_initial_metadata.count = c->n_md;
    op->data.send_initial_metadata.metadata = c->n_md ? (grpc_metadata *)&c->token_md : NULL;
}

enum lp_status lp_rpc_channel_create(struct lp_rpc_channel **out, const char *target,
                                     size_t max_message_bytes, const struct lp_rpc_security *sec,
                                     struct lp_error *err) {
    if (!out || !target)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_channel_create: NULL argument");
    *out = NULL;
    lp_rpc_init();
    enum lp_status st = LP_OK;
    struct lp_rpc_channel *c = calloc(1, sizeof *c);
    if (!c || !(c->target = strdup(target))) {
        st = lp_error_set(err, LP_ERR_NOMEM, "rpc channel %s: out of memory", target);
        goto fail;
    }
    c->max_message_bytes =
        max_message_bytes ? max_message_bytes : LP_RPC_DEFAULT_MAX_MESSAGE_BYTES;
    c->sec = sec;
    if (sec && sec->token) { // static slices: the token outlives the channel
        c->token_md.key = grpc_slice_from_static_string(LP_RPC_TOKEN_KEY);
        c->token_md.value = grpc_slice_from_static_string(sec->token);
        c->n_md = 1;
    }
    struct lp_rpc_args args;
    grpc_channel_credentials *creds = channel_creds(sec);
    if (!creds) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "rpc channel %s: gRPC refused the TLS certificate, key or CA", target);
        goto fail;
    }
    c->channel = grpc_channel_create(target, creds, lp_rpc_args_fill(&args, 0, max_message_bytes));
    grpc_channel_credentials_release(creds);
    if (!c->channel) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "rpc channel: bad target '%s'", target);
        goto fail;
    }
    c->cq = grpc_completion_queue_create_for_next(NULL);
    if (pthread_create(&c->thread, NULL, channel_thread_main, c) != 0) {
        st = lp_error_set(err, LP_ERR_INTERNAL, "rpc channel %s: cannot start its thread", target);
        goto fail;
    }
    *out = c;
    return LP_OK;
fail:
    if (c) {
        if (c->channel) grpc_channel_destroy(c->channel);
        if (c->cq) {
            grpc_completion_queue_shutdown(c->cq);
            grpc_completion_queue_destroy(c->cq);
        }
        free(c->target);
        free(c);
    }
    lp_rpc_shutdown();
    return st;
}

void lp_rpc_channel_destroy(struct lp_rpc_channel *c) {
    if (!c) return;
    grpc_channel_destroy(c->channel);
    grpc_completion_queue_shutdown(c->cq);
    pthread_join(c->thread, NULL);
    grpc_completion_queue_destroy(c->cq);
    free(c->target);
    free(c);
    lp_rpc_shutdown();
}

// "target method: CODE: details", the message of every failed call.
// A connection that could not be set up although something answered on
// the port (no "Connection refused"): a TLS handshake that failed, or a
// plaintext client that a TLS server dropped. The hint goes before gRPC's
// long details so that the 256-byte message keeps it.
static const char *call_hint(const struct lp_rpc_channel *c, grpc_status_code code,
                             const char *d) {
    if (code != GRPC_STATUS_UNAVAILABLE || !d || !strstr(d, "failed to connect") ||
        strstr(d, "onnection refused"))
        return "";
    if (lp_rpc_security_tls(c->sec))
        return " TLS handshake failed (both certificates must chain to --tls-ca, be valid now "
               "and name their host):";
    return " the peer closed the connection (serving TLS? give --tls-cert, --tls-key, "
           "--tls-ca):";
}

// "target method: CODE: details", the message of every failed call.
static enum lp_status call_error(struct lp_error *err, const struct lp_rpc_channel *c,
                                 const char *method, grpc_status_code code, grpc_slice details) {
    char *d = lp_rpc_slice_strdup(details);
    enum lp_status st = lp_error_set(err, lp_rpc_status_from_grpc(code), "%s %s: %s:%s %s",
                                     c->target, method, lp_rpc_grpc_code_name(code),
                                     call_hint(c, code, d), d ? d : "");
    free(d);
    return st;
}

// ------------------------------------------------------------------ unary ---

enum lp_status lp_rpc_call_unary(struct lp_rpc_channel *c, const char *method,
                                 const uint8_t *req, size_t req_bytes, uint8_t **resp,
                                 size_t *resp_bytes, int timeout_ms, struct lp_error *err) {
    if (!c || !method || (!req && req_bytes) || !resp || !resp_bytes)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_call_unary: NULL argument");
    *resp = NULL;
    *resp_bytes = 0;
    if (req_bytes > c->max_message_bytes)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s %s: request of %zu bytes, max %zu",
                            c->target, method, req_bytes, c->max_message_bytes);
    // Its own queue: the caller's thread waits on it, the channel thread never
    // sees this call.
    grpc_completion_queue *cq = grpc_completion_queue_create_for_pluck(NULL);
    grpc_call *call =
        grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                 grpc_slice_from_static_string(method), NULL,
                                 lp_rpc_deadline(timeout_ms), NULL);
    grpc_byte_buffer *send_bb = lp_rpc_bb_from_bytes(req, req_bytes);
    grpc_byte_buffer *recv_bb = NULL;
    grpc_metadata_array recv_md, trailing_md;
    grpc_metadata_array_init(&recv_md);
    grpc_metadata_array_init(&trailing_md);
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[6];
    op_init(&ops[0], GRPC_OP_SEND_INITIAL_METADATA);
    op_send_md(&ops[0], c);
    op_init(&ops[1], GRPC_OP_SEND_MESSAGE);
    ops[1].data.send_message.send_message = send_bb;
    op_init(&ops[2], GRPC_OP_SEND_CLOSE_FROM_CLIENT);
    op_init(&ops[3], GRPC_OP_RECV_INITIAL_METADATA);
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &recv_md;
    op_init(&ops[4], GRPC_OP_RECV_MESSAGE);
    ops[4].data.recv_message.recv_message = &recv_bb;
    op_init(&ops[5], GRPC_OP_RECV_STATUS_ON_CLIENT);
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &details;
    enum lp_status st = LP_OK;
    int tag_storage;
    grpc_call_error e = grpc_call_start_batch(call, ops, 6, &tag_storage, NULL);
    if (e != GRPC_CALL_OK) {
        st = lp_error_set(err, LP_ERR_INTERNAL, "%s %s: start_batch failed (%d)", c->target,
                          method, (int)e);
    } else {
        // The call's deadline bounds this wait.
        grpc_completion_queue_pluck(cq, &tag_storage, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (code != GRPC_STATUS_OK) {
            st = call_error(err, c, method, code, details);
        } else if (!recv_bb) {
            st = lp_error_set(err, LP_ERR_PROTOCOL, "%s %s: OK status without a response",
                              c->target, method);
        } else {
            struct lp_rpc_view view;
            st = lp_rpc_view_init(&view, recv_bb, err);
            if (st == LP_OK && view.bytes) {
                if (view.owned) { // already our own copy: hand it over
                    *resp = view.owned;
                    view.owned = NULL;
                } else if ((*resp = malloc(view.bytes))) {
                    memcpy(*resp, view.data, view.bytes);
                } else {
                    st = lp_error_set(err, LP_ERR_NOMEM, "%s %s: %zu-byte response", c->target,
                                      method, view.bytes);
                }
                if (st == LP_OK) *resp_bytes = view.bytes;
            }
            if (st == LP_OK || view.owned) lp_rpc_view_deinit(&view);
        }
    }
    grpc_byte_buffer_destroy(send_bb);
    if (recv_bb) grpc_byte_buffer_destroy(recv_bb);
    grpc_metadata_array_destroy(&recv_md);
    grpc_metadata_array_destroy(&trailing_md);
    grpc_slice_unref(details);
    grpc_call_unref(call);
    grpc_completion_queue_shutdown(cq);
    grpc_completion_queue_destroy(cq); // nothing left on it: the one event was plucked
    return st;
}

// ----------------------------------------------------------------- stream ---

// Starts the next send-side batch: a queued message, or the half-close once
// the queue is empty and close was asked. Requires mu.
static void cstream_pump_locked(struct lp_rpc_client_stream *s) {
    if (s->send_busy || s->ended) return;
    grpc_op op;
    if (s->head) {
        struct lp_rpc_msg *m = s->head;
        s->head = m->next;
        if (!s->head) s->tail = NULL;
        s->queued_bytes -= m->bytes;
        s->send_bb = m->bb;
        free(m);
        op_init(&op, GRPC_OP_SEND_MESSAGE);
        op.data.send_message.send_message = s->send_bb;
    } else if (s->half_close_wanted && !s->half_close_sent) {
        s->half_close_sent = 1;
        op_init(&op, GRPC_OP_SEND_CLOSE_FROM_CLIENT);
    } else {
        return;
    }
    s->send_busy = 1;
    s->n_pending++;
    if (grpc_call_start_batch(s->call, &op, 1, &s->send_tag, NULL) != GRPC_CALL_OK) {
        s->send_busy = 0; // cannot happen: one send-side batch at a time
        s->n_pending--;
        if (s->send_bb) grpc_byte_buffer_destroy(s->send_bb);
        s->send_bb = NULL;
        grpc_call_cancel(s->call, NULL);
    }
}

// Channel thread, after every event: on_end once the status is known and
// nothing is in flight; then wakes close.
static void cstream_maybe_end(struct lp_rpc_client_stream *s) {
    pthread_mutex_lock(&s->mu);
    if (!s->ended || s->n_pending || s->end_called) {
        pthread_mutex_unlock(&s->mu);
        return;
    }
    s->end_called = 1;
    pthread_mutex_unlock(&s->mu);
    s->on_end(s->user, s->end_st, s->end_msg);
    pthread_mutex_lock(&s->mu);
    s->finished = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu); // close may free s from here on
}

static void cstream_post_recv(struct lp_rpc_client_stream *s, int with_md) {
    grpc_op ops[2];
    size_t n = 0;
    if (with_md) {
        op_init(&ops[n], GRPC_OP_RECV_INITIAL_METADATA);
        ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->recv_md;
    }
    op_init(&ops[n], GRPC_OP_RECV_MESSAGE);
    ops[n++].data.recv_message.recv_message = &s->recv_bb;
    s->n_pending++;
    if (grpc_call_start_batch(s->call, ops, n, &s->recv_tag, NULL) != GRPC_CALL_OK) {
        s->n_pending--; // cannot happen; the status still ends the stream
        grpc_call_cancel(s->call, NULL);
    }
}

static void cstream_recv_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_client_stream *s = LP_RPC_CONTAINER(tag, struct lp_rpc_client_stream, recv_tag);
    grpc_byte_buffer *bb = s->recv_bb;
    s->recv_bb = NULL;
    int more = 0;
    if (ok && bb) {
        struct lp_error err = {LP_OK, ""};
        struct lp_rpc_view view;
        if (lp_rpc_view_init(&view, bb, &err) == LP_OK) {
            s->on_reply(s->user, view.data, view.bytes);
            lp_rpc_view_deinit(&view);
            more = 1;
        } else {
            grpc_call_cancel_with_status(s->call, GRPC_STATUS_RESOURCE_EXHAUSTED, err.msg, NULL);
        }
    }
    if (bb) grpc_byte_buffer_destroy(bb);
    pthread_mutex_lock(&s->mu);
    s->n_pending--;
    if (more) cstream_post_recv(s, 0); // until the server's end (NULL) or a failure
    pthread_mutex_unlock(&s->mu);
    cstream_maybe_end(s);
}

static void cstream_send_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_client_stream *s = LP_RPC_CONTAINER(tag, struct lp_rpc_client_stream, send_tag);
    pthread_mutex_lock(&s->mu);
    if (s->send_bb) grpc_byte_buffer_destroy(s->send_bb);
    s->send_bb = NULL;
    s->send_busy = 0;
    s->n_pending--;
    if (ok) cstream_pump_locked(s); // !ok: the call is failing; the status follows
    pthread_mutex_unlock(&s->mu);
    cstream_maybe_end(s);
}

static void cstream_status_done(struct lp_rpc_tag *tag, int ok) {
    struct lp_rpc_client_stream *s =
        LP_RPC_CONTAINER(tag, struct lp_rpc_client_stream, status_tag);
    struct lp_error err = {LP_OK, ""};
    enum lp_status st = LP_OK;
    if (s->status != GRPC_STATUS_OK)
        st = call_error(&err, s->chan, s->method, s->status, s->status_details);
    pthread_mutex_lock(&s->mu);
    s->ended = 1;
    s->end_st = st;
    memcpy(s->end_msg, err.msg, sizeof s->end_msg);
    s->n_pending--;
    lp_rpc_msg_free_all(s->head); // never to be sent
    s->head = s->tail = NULL;
    s->queued_bytes = 0;
    pthread_mutex_unlock(&s->mu);
    cstream_maybe_end(s);
}

static void cstream_free(struct lp_rpc_client_stream *s) {
    if (s->call) grpc_call_unref(s->call);
    lp_rpc_msg_free_all(s->head);
    grpc_metadata_array_destroy(&s->recv_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    grpc_slice_unref(s->status_details);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s->method);
    free(s);
}

enum lp_status lp_rpc_stream_open(struct lp_rpc_channel *c, const char *method,
                                  lp_rpc_reply_fn on_reply, lp_rpc_end_fn on_end, void *user,
                                  struct lp_rpc_client_stream **out, struct lp_error *err) {
    if (!out) return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_stream_open: NULL out");
    *out = NULL;
    if (!c || !method || !on_reply || !on_end)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_stream_open: NULL argument");
    struct lp_rpc_client_stream *s = calloc(1, sizeof *s);
    if (!s || !(s->method = strdup(method))) {
        free(s);
        return lp_error_set(err, LP_ERR_NOMEM, "%s %s: out of memory", c->target, method);
    }
    s->recv_tag.done = cstream_recv_done;
    s->send_tag.done = cstream_send_done;
    s->status_tag.done = cstream_status_done;
    s->chan = c;
    s->on_reply = on_reply;
    s->on_end = on_end;
    s->user = user;
    grpc_metadata_array_init(&s->recv_md);
    grpc_metadata_array_init(&s->trailing_md);
    s->status_details = grpc_empty_slice();
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    s->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq,
                                       grpc_slice_from_static_string(s->method), NULL,
                                       gpr_inf_future(GPR_CLOCK_REALTIME), NULL);

    // Held while the first batches start so that their events (on the
    // channel thread) see a consistent n_pending.
    pthread_mutex_lock(&s->mu);
    grpc_op op;
    op_init(&op, GRPC_OP_RECV_STATUS_ON_CLIENT);
    op.data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    op.data.recv_status_on_client.status = &s->status;
    op.data.recv_status_on_client.status_details = &s->status_details;
    s->n_pending++;
    grpc_call_error e = grpc_call_start_batch(s->call, &op, 1, &s->status_tag, NULL);
    if (e != GRPC_CALL_OK) {
        pthread_mutex_unlock(&s->mu);
        cstream_free(s);
        return lp_error_set(err, LP_ERR_INTERNAL, "%s %s: start_batch failed (%d)", c->target,
                            method, (int)e);
    }
    // Initial metadata now, so the server's on_open runs before any message.
    op_init(&op, GRPC_OP_SEND_INITIAL_METADATA);
    op_send_md(&op, c);
    s->send_busy = 1;
    s->n_pending++;
    if (grpc_call_start_batch(s->call, &op, 1, &s->send_tag, NULL) != GRPC_CALL_OK) {
        s->send_busy = 0; // cannot happen
        s->n_pending--;
        grpc_call_cancel(s->call, NULL);
    }
    cstream_post_recv(s, 1);
    pthread_mutex_unlock(&s->mu);
    *out = s;
    return LP_OK;
}

// Queues an entry already made (copied or taken); frees it on failure.
static enum lp_status cstream_write_msg(struct lp_rpc_client_stream *s, struct lp_rpc_msg *m,
                                        size_t bytes, struct lp_error *err) {
    pthread_mutex_lock(&s->mu);
    if (s->ended || s->half_close_wanted) {
        enum lp_status st;
        if (s->ended && s->end_st != LP_OK)
            st = lp_error_set(err, s->end_st, "%s", s->end_msg);
        else
            st = lp_error_set(err, LP_ERR_CANCELLED, "%s %s: stream already %s", s->chan->target,
                              s->method, s->ended ? "ended" : "half-closed");
        pthread_mutex_unlock(&s->mu);
        lp_rpc_msg_free_all(m);
        return st;
    }
    if (s->tail) s->tail->next = m;
    else s->head = m;
    s->tail = m;
    s->queued_bytes += bytes;
    cstream_pump_locked(s);
    pthread_mutex_unlock(&s->mu);
    return LP_OK;
}

enum lp_status lp_rpc_client_stream_write(struct lp_rpc_client_stream *s, const uint8_t *msg,
                                          size_t bytes, struct lp_error *err) {
    if (!s || (!msg && bytes))
        return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_client_stream_write: NULL argument");
    if (bytes > s->chan->max_message_bytes)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s %s: message of %zu bytes, max %zu",
                            s->chan->target, s->method, bytes, s->chan->max_message_bytes);
    struct lp_rpc_msg *m = lp_rpc_msg_create(msg, bytes);
    if (!m) return lp_error_set(err, LP_ERR_NOMEM, "%s %s: queue entry", s->chan->target, s->method);
    return cstream_write_msg(s, m, bytes, err);
}

enum lp_status lp_rpc_client_stream_write_take(struct lp_rpc_client_stream *s, uint8_t *msg,
                                               size_t bytes, struct lp_error *err) {
    if (!s || (!msg && bytes)) {
        free(msg);
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "lp_rpc_client_stream_write_take: NULL argument");
    }
    if (bytes > s->chan->max_message_bytes) {
        free(msg);
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s %s: message of %zu bytes, max %zu",
                            s->chan->target, s->method, bytes, s->chan->max_message_bytes);
    }
    struct lp_rpc_msg *m = malloc(sizeof *m);
    grpc_byte_buffer *bb = m ? lp_rpc_bb_take(msg, bytes) : NULL; // owns msg from here
    if (!m || !bb) {
        if (!m) free(msg);
        free(m);
        return lp_error_set(err, LP_ERR_NOMEM, "%s %s: queue entry", s->chan->target, s->method);
    }
    m->next = NULL;
    m->bytes = bytes;
    m->bb = bb;
    return cstream_write_msg(s, m, bytes, err);
}

size_t lp_rpc_client_stream_queued_bytes(struct lp_rpc_client_stream *s) {
    pthread_mutex_lock(&s->mu);
    size_t n = s->queued_bytes;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void lp_rpc_client_stream_cancel(struct lp_rpc_client_stream *s) {
    if (s) grpc_call_cancel(s->call, NULL);
}

void lp_rpc_client_stream_close(struct lp_rpc_client_stream *s, int timeout_ms) {
    if (!s) return;
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms > 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&s->mu);
    s->half_close_wanted = 1;
    cstream_pump_locked(s);
    while (!s->finished) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&s->cv, &s->mu);
        } else if (pthread_cond_timedwait(&s->cv, &s->mu, &deadline) == ETIMEDOUT) {
            break;
        }
    }
    if (!s->finished) { // the server did not finish in time
        pthread_mutex_unlock(&s->mu);
        grpc_call_cancel(s->call, NULL);
        pthread_mutex_lock(&s->mu);
        while (!s->finished) pthread_cond_wait(&s->cv, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    cstream_free(s);
}
