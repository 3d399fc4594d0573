// SPDX-License-Identifier: MIT
// openai.c -- POST /v1/chat/completions and /v1/completions. A request is
// checked field by field (errors name the field), its prompt rendered and
// encoded, and submitted to the scheduler. The scheduler's callback runs
// on the scheduler thread and must not block: it turns each token into
// text (lp_text: stop strings, reasoning, tool calls) and appends the
// pieces to the request's queue under its mutex, then signals. The
// connection thread either waits for DONE and answers one JSON object, or
// streams server-sent events from MHD's content reader, taking whatever
// the queue holds each time. The request is freed by whichever side lets
// go of it last (refs); a connection that goes away first cancels it.
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "api/internal.h"

// ---- the request shared by the scheduler thread and the connection ----

struct tok_lp { // one generated token with its log-probabilities
    int32_t id;
    float logprob;
    int n_top;
    int32_t top_ids[LP_SCHED_MAX_TOP_LOGPROBS];
    float top_lp[LP_SCHED_MAX_TOP_LOGPROBS];
};

// What the callback has produced and the connection has not yet taken.
struct queue {
    struct lp_api_buf content, reasoning;
    json_t *calls;       // array of tool-call deltas, or NULL
    struct tok_lp *toks; // [n_toks] (with logprobs)
    int n_toks, cap_toks;
};

enum sse_phase { SSE_START, SSE_TOKENS, SSE_END };

struct api_req {
    struct lp_server *srv;
    pthread_mutex_t mu; // guards refs, q, done and the fields below it
    pthread_cond_t cv;  // signalled when q grows or done is set
    int refs;           // 1 for the connection, 1 for the scheduler while submitted
    struct queue q;
    bool done, http_gone;
    enum lp_stop_reason stop;
    enum lp_status status;
    char error[LP_ERROR_MSG_BYTES];
    int n_prompt, n_generated;
    int n_calls; // tool calls completed
    // set before submit, then read-only
    uint64_t id; // the scheduler's
    bool chat, stream, include_usage, logprobs;
    int n_top;
    char resp_id[48];
    time_t created;
    // scheduler thread only (until done)
    struct lp_text *text;
    double last_token_at;
    // connection thread only (streaming)
    struct lp_api_conn *conn; // for its log line; lives while the reply is sent
    struct queue taken;
    struct lp_api_buf out;
    size_t out_pos;
    enum sse_phase phase;
    size_t text_offset; // completions logprobs: bytes of text before the next token
};

static void queue_clear(struct queue *q) {
    q->content.n = q->reasoning.n = 0;
    if (q->content.data) q->content.data[0] = '\0';
    if (q->reasoning.data) q->reasoning.data[0] = '\0';
    json_decref(q->calls);
    q->calls = NULL;
    q->n_toks = 0;
}

static void queue_free(struct queue *q) {
    free(q->content.data);
    free(q->reasoning.data);
    json_decref(q->calls);
    free(q->toks);
}

static void req_free(struct api_req *r) {
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    queue_free(&r->q);
    queue_free(&r->taken);
    free(r->out.data);
    lp_text_destroy(r->text);
    free(r);
}

// The connection lets go: a request still running is cancelled.
static void req_release_http(struct api_req *r, bool submitted) {
    pthread_mutex_lock(&r->mu);
    bool cancel = submitted && !r->done;
    r->http_gone = true;
    uint64_t id = r->id;
    bool last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (cancel) lp_sched_cancel(r->srv->sched, id);
    if (last) req_free(r);
}

static void finish_metrics(struct api_req *r, const struct lp_sched_event *ev) {
    struct lp_api_metrics *m = &r->srv->metrics;
    if (ev->first_token_at > 0)
        lp_api_hist_observe(&m->ttft, ev->first_token_at - ev->submitted_at);
    if (ev->status != LP_OK) return;
    lp_api_hist_observe(&m->e2e, ev->time - ev->submitted_at);
    int reason = ev->stop == LP_STOP_LENGTH || ev->stop == LP_STOP_CONTEXT ? LP_API_FINISH_LENGTH
                 : r->chat && lp_text_n_tool_calls(r->text) > 0 ? LP_API_FINISH_TOOL_CALLS
                                                                : LP_API_FINISH_STOP;
    atomic_fetch_add(&m->success[reason], 1);
}

static bool enqueue(struct api_req *r, const struct lp_text_delta *d, const struct tok_lp *t) {
    bool ok = lp_api_buf_put(&r->q.content, d->content, d->n_content) &&
              lp_api_buf_put(&r->q.reasoning, d->reasoning, d->n_reasoning);
    for (int i = 0; i < d->n_tool_calls && ok; i++) {
        const struct lp_tool_call *c = lp_text_tool_call(r->text, d->first_tool_call + i);
        if (!r->q.calls) r->q.calls = json_array();
        ok = json_array_append_new(r->q.calls, json_pack("{s:i,s:s,s:s,s:{s:s,s:s}}", "index",
                                                         d->first_tool_call + i, "id", c->id,
                                                         "type", "function", "function", "name",
                                                         c->name, "arguments", c->arguments)) == 0;
    }
    r->n_calls += d->n_tool_calls;
    if (t && ok) {
        if (r->q.n_toks == r->q.cap_toks) {
            int cap = r->q.cap_toks ? 2 * r->q.cap_toks : 16;
            struct tok_lp *p = realloc(r->q.toks, (size_t)cap * sizeof *p);
            if (!p) return false;
            r->q.toks = p;
            r->q.cap_toks = cap;
        }
        r->q.toks[r->q.n_toks++] = *t;
    }
    return ok;
}

// The scheduler thread: never blocks beyond the request's own mutex.
static bool on_event(void *user, const struct lp_sched_event *ev) {
    struct api_req *r = user;
    struct lp_text_delta d;
    if (ev->kind == LP_SCHED_EV_TOKEN) {
        enum lp_status st = lp_text_push(r->text, ev->token, &d, NULL);
        if (r->last_token_at > 0)
            lp_api_hist_observe(&r->srv->metrics.itl, ev->time - r->last_token_at);
        r->last_token_at = ev->time;
        struct tok_lp t = {.id = ev->token, .logprob = ev->logprob, .n_top = ev->n_top};
        for (int i = 0; i < ev->n_top && i < LP_SCHED_MAX_TOP_LOGPROBS; i++) {
            t.top_ids[i] = ev->top_ids[i];
            t.top_lp[i] = ev->top_logprobs[i];
        }
        pthread_mutex_lock(&r->mu);
        bool ok = enqueue(r, &d, r->logprobs ? &t : NULL);
        bool gone = r->http_gone;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        return d.stopped || gone || !ok || st != LP_OK;
    }
    if (ev->kind != LP_SCHED_EV_DONE) return false;
    struct lp_server *srv = r->srv;
    lp_text_finish(r->text, &d, NULL);
    finish_metrics(r, ev);
    pthread_mutex_lock(&r->mu);
    enqueue(r, &d, NULL);
    r->done = true;
    r->stop = ev->stop;
    r->status = ev->status;
    snprintf(r->error, sizeof r->error, "%s", ev->error ? ev->error : "");
    r->n_prompt = ev->n_prompt;
    r->n_generated = ev->n_generated;
    bool last = --r->refs == 0;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    if (last) req_free(r);
    atomic_fetch_sub(&srv->n_active, 1); // the last use of the server (lp_server_destroy waits)
    return false;
}

// ---- replies ----

static json_t *usage_json(const struct api_req *r) {
    return json_pack("{s:i,s:i,s:i}", "prompt_tokens", r->n_prompt, "completion_tokens",
                     r->n_generated, "total_tokens", r->n_prompt + r->n_generated);
}

static const char *finish_reason(const struct api_req *r) {
    if (r->stop == LP_STOP_LENGTH || r->stop == LP_STOP_CONTEXT) return "length";
    return r->chat && r->n_calls > 0 ? "tool_calls" : "stop";
}

static json_t *bytes_json(const struct lp_tokenizer *tok, int32_t id) {
    size_t n = 0;
    const uint8_t *b = lp_tokenizer_token_bytes(tok, id, &n);
    json_t *a = json_array();
    for (size_t i = 0; b && i < n; i++)
        json_array_append_new(a, json_integer(b[i]));
    return a;
}

json_t *lp_api_token_string(const struct lp_tokenizer *tok, int32_t id) {
    size_t n = 0;
    const uint8_t *b = lp_tokenizer_token_bytes(tok, id, &n);
    if (!b) return json_string("");
    json_t *s = json_stringn((const char *)b, n);
    if (s) return s;
    // not valid UTF-8 on its own (part of a character): bytes >= 0x80 as U+FFFD
    struct lp_api_buf o = {0};
    lp_api_buf_put(&o, "", 0);
    for (size_t i = 0; i < n; i++)
        lp_api_buf_put(&o, b[i] < 0x80 ? (const char *)b + i : "\xef\xbf\xbd", b[i] < 0x80 ? 1 : 3);
    s = json_stringn(o.data ? o.data : "", o.n);
    free(o.data);
    return s;
}

static json_t *chat_logprobs(const struct lp_tokenizer *tok, const struct tok_lp *t, int n) {
    json_t *content = json_array();
    for (int i = 0; i < n; i++) {
        json_t *top = json_array();
        for (int k = 0; k < t[i].n_top; k++)
            json_array_append_new(top, json_pack("{s:o,s:f,s:o}", "token",
                                                 lp_api_token_string(tok, t[i].top_ids[k]),
                                                 "logprob", (double)t[i].top_lp[k], "bytes",
                                                 bytes_json(tok, t[i].top_ids[k])));
        json_array_append_new(content, json_pack("{s:o,s:f,s:o,s:o}", "token",
                                                 lp_api_token_string(tok, t[i].id), "logprob",
                                                 (double)t[i].logprob, "bytes",
                                                 bytes_json(tok, t[i].id), "top_logprobs", top));
    }
    return json_pack("{s:o}", "content", content);
}

static json_t *completion_logprobs(const struct lp_tokenizer *tok, const struct tok_lp *t, int n,
                                   size_t *offset) {
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    for (int i = 0; i < n; i++) {
        json_array_append_new(tokens, lp_api_token_string(tok, t[i].id));
        json_array_append_new(lps, json_real(t[i].logprob));
        json_t *top = json_object();
        for (int k = 0; k < t[i].n_top; k++) {
            json_t *s = lp_api_token_string(tok, t[i].top_ids[k]);
            json_object_set_new(top, json_string_value(s), json_real(t[i].top_lp[k]));
            json_decref(s);
        }
        json_array_append_new(tops, top);
        json_array_append_new(offs, json_integer((json_int_t)*offset));
        size_t nb = 0;
        lp_tokenizer_token_bytes(tok, t[i].id, &nb);
        *offset += nb;
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs",
                     tops, "text_offset", offs);
}

static json_t *envelope(const struct api_req *r, bool chunk, json_t *choice) {
    const char *object =
        r->chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    return json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", r->resp_id, "object", object, "created",
                     (json_int_t)r->created, "model", r->srv->model_name, "choices", choice);
}

static json_t *final_json(struct api_req *r) {
    const struct lp_tokenizer *tok = r->srv->tok;
    json_t *lp = !r->logprobs ? json_null()
                 : r->chat    ? chat_logprobs(tok, r->q.toks, r->q.n_toks)
                              : completion_logprobs(tok, r->q.toks, r->q.n_toks, &r->text_offset);
    size_t n_content = 0, n_reasoning = 0;
    const char *content = lp_text_content(r->text, &n_content);
    const char *reasoning = lp_text_reasoning(r->text, &n_reasoning);
    json_t *choice;
    if (r->chat) {
        json_t *msg = json_pack("{s:s}", "role", "assistant");
        json_object_set_new(msg, "content",
                            n_content || r->n_calls == 0 ? json_stringn(content, n_content)
                                                         : json_null());
        if (n_reasoning)
            json_object_set_new(msg, "reasoning_content", json_stringn(reasoning, n_reasoning));
        if (r->n_calls > 0) {
            json_t *calls = json_array();
            for (int i = 0; i < r->n_calls; i++) {
                const struct lp_tool_call *c = lp_text_tool_call(r->text, i);
                json_array_append_new(calls, json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", c->id, "type",
                                                       "function", "function", "name", c->name,
                                                       "arguments", c->arguments));
            }
            json_object_set_new(msg, "tool_calls", calls);
        }
        choice = json_pack("{s:i,s:o,s:o,s:s}", "index", 0, "message", msg, "logprobs", lp,
                           "finish_reason", finish_reason(r));
    } else {
        choice = json_pack("{s:i,s:s%,s:o,s:s}", "index", 0, "text", content, n_content, "logprobs",
                           lp, "finish_reason", finish_reason(r));
    }
    json_t *j = envelope(r, false, choice);
    json_object_set_new(j, "usage", usage_json(r));
    return j;
}

// ---- streaming ----

static bool sse_put(struct api_req *r, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) return false;
    bool ok =
        lp_api_buf_put(&r->out, "data: ", 6) && lp_api_buf_put(&r->out, s, strlen(s)) && lp_api_buf_put(&r->out, "\n\n", 2);
    free(s);
    return ok;
}

static json_t *chunk(struct api_req *r, json_t *delta_or_text, json_t *lp, const char *finish) {
    json_t *choice = json_pack("{s:i}", "index", 0);
    json_object_set_new(choice, r->chat ? "delta" : "text", delta_or_text);
    json_object_set_new(choice, "logprobs", lp ? lp : json_null());
    json_object_set_new(choice, "finish_reason", finish ? json_string(finish) : json_null());
    json_t *j = envelope(r, true, choice);
    if (r->include_usage) json_object_set_new(j, "usage", json_null());
    return j;
}

// Formats what was taken from the queue as one chunk (nothing if empty).
static bool sse_tokens(struct api_req *r) {
    struct queue *t = &r->taken;
    if (!t->content.n && !t->reasoning.n && !t->calls && !t->n_toks) return true;
    json_t *lp = !r->logprobs || !t->n_toks ? NULL
                 : r->chat                  ? chat_logprobs(r->srv->tok, t->toks, t->n_toks)
                           : completion_logprobs(r->srv->tok, t->toks, t->n_toks, &r->text_offset);
    json_t *body;
    if (r->chat) {
        body = json_object();
        if (t->reasoning.n)
            json_object_set_new(body, "reasoning_content",
                                json_stringn(t->reasoning.data, t->reasoning.n));
        if (t->content.n)
            json_object_set_new(body, "content", json_stringn(t->content.data, t->content.n));
        if (t->calls) json_object_set(body, "tool_calls", t->calls);
    } else {
        body = json_stringn(t->content.data ? t->content.data : "", t->content.n);
    }
    return sse_put(r, chunk(r, body, lp, NULL));
}

static bool sse_end(struct api_req *r) {
    bool ok = true;
    if (r->status != LP_OK) {
        struct lp_api_err e;
        lp_api_err_from_status(&e, r->status, NULL, r->error);
        ok = sse_put(r, json_pack("{s:{s:s,s:s,s:n,s:i}}", "error", "message", e.msg, "type",
                                  e.type, "param", "code", e.http));
    } else {
        ok =
            sse_put(r, chunk(r, r->chat ? json_object() : json_string(""), NULL, finish_reason(r)));
        if (ok && r->include_usage) {
            json_t *j = json_pack("{s:s,s:s,s:I,s:s,s:[]}", "id", r->resp_id, "object",
                                  r->chat ? "chat.completion.chunk" : "text_completion", "created",
                                  (json_int_t)r->created, "model", r->srv->model_name, "choices");
            json_object_set_new(j, "usage", usage_json(r));
            ok = sse_put(r, j);
        }
    }
    r->phase = SSE_END;
    if (r->conn) r->conn->n_generated = r->n_generated;
    return ok && lp_api_buf_put(&r->out, "data: [DONE]\n\n", 14);
}

// Waits for the next events and formats them into r->out. False: give up.
static bool sse_fill(struct api_req *r) {
    if (r->phase == SSE_START) {
        r->phase = SSE_TOKENS;
        if (r->chat)
            return sse_put(r, chunk(r, json_pack("{s:s,s:s}", "role", "assistant", "content", ""),
                                    NULL, NULL));
    }
    pthread_mutex_lock(&r->mu);
    double idle = 0;
    while (!r->done && !r->q.content.n && !r->q.reasoning.n && !r->q.calls && !r->q.n_toks) {
        if (atomic_load(&r->srv->stopping)) {
            pthread_mutex_unlock(&r->mu);
            return false;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT && (idle += 0.2) >= 10) {
            pthread_mutex_unlock(&r->mu); // a comment keeps proxies (and us) aware of the peer
            return lp_api_buf_put(&r->out, ": keep-alive\n\n", 14);
        }
    }
    struct queue tmp = r->taken; // swap: the callback keeps appending to an empty queue
    r->taken = r->q;
    r->q = tmp;
    queue_clear(&r->q);
    bool done = r->done;
    pthread_mutex_unlock(&r->mu);
    bool ok = sse_tokens(r);
    queue_clear(&r->taken);
    return ok && (!done || sse_end(r));
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    struct api_req *r = cls;
    while (r->out_pos == r->out.n) {
        r->out.n = r->out_pos = 0;
        if (r->phase == SSE_END) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!sse_fill(r)) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = r->out.n - r->out_pos < max ? r->out.n - r->out_pos : max;
    memcpy(buf, r->out.data + r->out_pos, n);
    r->out_pos += n;
    return (ssize_t)n;
}

static void sse_free(void *cls) {
    req_release_http(cls, true);
}

// ---- the handler ----

// True when the peer closed its side (non-streaming requests poll this).
static bool peer_gone(struct MHD_Connection *mhd) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mhd, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char b;
    ssize_t k = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// Waits until the request is done or (first_event) has produced something.
// False when the client left or the server stops: the request is released.
static bool wait_for(struct lp_api_conn *c, struct api_req *r, bool first_event) {
    pthread_mutex_lock(&r->mu);
    while (!r->done &&
           !(first_event && (r->q.content.n || r->q.reasoning.n || r->q.calls || r->q.n_toks))) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) != ETIMEDOUT) continue;
        pthread_mutex_unlock(&r->mu);
        if (atomic_load(&c->srv->stopping) || peer_gone(c->mhd)) {
            req_release_http(r, true);
            c->http_status = 499;
            return false;
        }
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return true;
}

static enum MHD_Result reply_failed(struct lp_api_conn *c, struct api_req *r) {
    struct lp_api_err e;
    lp_api_err_from_status(&e, r->status, NULL, r->error);
    enum MHD_Result ret = lp_api_reply_err(c, &e);
    req_release_http(r, true);
    return ret;
}

static enum MHD_Result wait_and_reply(struct lp_api_conn *c, struct api_req *r) {
    if (!wait_for(c, r, false)) return MHD_NO;
    c->n_prompt = r->n_prompt;
    c->n_generated = r->n_generated;
    if (r->status != LP_OK) return reply_failed(c, r);
    json_t *j = final_json(r);
    enum MHD_Result ret = j ? lp_api_reply_json(c, 200, j) : MHD_NO;
    json_decref(j);
    req_release_http(r, true);
    return ret;
}

// The headers wait for the first token, so a request that fails before it
// (a stage down, no KV room) still gets its HTTP status.
static enum MHD_Result stream_reply(struct lp_api_conn *c, struct api_req *r) {
    if (!wait_for(c, r, true)) return MHD_NO;
    pthread_mutex_lock(&r->mu);
    bool failed = r->done && r->status != LP_OK && r->status != LP_ERR_CANCELLED && !r->q.n_toks &&
                  !r->q.content.n && !r->q.reasoning.n;
    pthread_mutex_unlock(&r->mu);
    if (failed) return reply_failed(c, r);
    r->conn = c;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, r, sse_free);
    if (!resp) {
        req_release_http(r, true);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ret = MHD_queue_response(c->mhd, 200, resp);
    MHD_destroy_response(resp);
    c->answered = true;
    c->http_status = 200;
    return ret;
}

static struct api_req *req_create(struct lp_server *s, const struct lp_api_job *j, bool chat,
                                  struct lp_api_err *e) {
    struct api_req *r = calloc(1, sizeof *r);
    if (!r) {
        lp_api_err_from_status(e, LP_ERR_NOMEM, NULL, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->srv = s;
    r->refs = 1;
    r->chat = chat;
    r->stream = j->stream;
    r->include_usage = j->stream && j->include_usage;
    r->logprobs = j->logprobs;
    r->n_top = j->n_top;
    r->n_prompt = (int)j->prompt.n_ids;
    r->created = time(NULL);
    unsigned long long n = (unsigned long long)atomic_fetch_add(&s->next_id, 1);
    snprintf(r->resp_id, sizeof r->resp_id, "%s-%llx%04llx", chat ? "chatcmpl" : "cmpl",
             (unsigned long long)r->created, n);
    struct lp_text_params tp = j->tp;
    char prefix[48];
    snprintf(prefix, sizeof prefix, "call_%llx%04llx_", (unsigned long long)r->created, n);
    tp.call_id_prefix = prefix;
    struct lp_error err = {0};
    enum lp_status st = lp_text_create(&r->text, s->tok, &tp, &err);
    if (st != LP_OK) {
        lp_api_err_from_status(e, st, "stop", err.msg);
        req_free(r);
        return NULL;
    }
    return r;
}

enum MHD_Result lp_api_handle_generate(struct lp_api_conn *c, bool chat) {
    struct lp_server *s = c->srv;
    struct lp_api_err e;
    struct lp_api_job j = {0};
    lp_token_list_init(&j.prompt);
    enum MHD_Result ret;
    json_t *body = NULL;
    if (!lp_api_parse_job(s, c->body.data, c->body.n, chat, &j, &body, &e)) goto fail;
    struct api_req *r = req_create(s, &j, chat, &e);
    if (!r) goto fail;
    json_decref(body);
    body = NULL;
    j.sreq.on_event = on_event;
    j.sreq.user = r;
    r->refs = 2; // the scheduler's reference, dropped by its DONE event
    atomic_fetch_add(&s->n_active, 1);
    struct lp_error err = {0};
    enum lp_status st = lp_sched_submit(s->sched, &j.sreq, &r->id, &err);
    lp_token_list_deinit(&j.prompt);
    if (st != LP_OK) {
        atomic_fetch_sub(&s->n_active, 1);
        r->refs = 1;
        req_release_http(r, false);
        lp_api_err_from_status(
            &e, st, st == LP_ERR_INVALID_ARG ? (chat ? "messages" : "prompt") : NULL, err.msg);
        c->n_prompt = (int)j.sreq.n_prompt;
        return lp_api_reply_err(c, &e);
    }
    c->n_prompt = j.sreq.n_prompt;
    return r->stream ? stream_reply(c, r) : wait_and_reply(c, r);
fail:
    json_decref(body);
    lp_token_list_deinit(&j.prompt);
    ret = lp_api_reply_err(c, &e);
    return ret;
}
