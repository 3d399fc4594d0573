// SPDX-License-Identifier: MIT
// server.c -- the HTTP side of `layerpipe serve`: a libmicrohttpd daemon
// with one thread per connection (so a streaming reply may wait for the
// scheduler's next token), the API key check, the request body with its
// size limit, routing, the one lp_status -> HTTP table, errors in OpenAI's
// shape, and the small endpoints (/v1/models, /health, /metrics). The
// generating endpoints live in openai.c.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "api/internal.h"

// ---- status -> HTTP, the one table ----

static const struct {
    enum lp_status st;
    int http;
    const char *type;
} status_table[] = {
    {LP_OK, 200, ""},
    {LP_ERR_NOMEM, 500, "server_error"},
    {LP_ERR_IO, 500, "server_error"},
    {LP_ERR_FORMAT, 400, "invalid_request_error"},
    {LP_ERR_INVALID_ARG, 400, "invalid_request_error"},
    {LP_ERR_UNSUPPORTED, 400, "invalid_request_error"},
    {LP_ERR_DEVICE, 503, "service_unavailable"},
    {LP_ERR_NETWORK, 503, "service_unavailable"},
    {LP_ERR_TIMEOUT, 503, "service_unavailable"},
    {LP_ERR_CANCELLED, 499, "cancelled"},
    {LP_ERR_BUSY, 429, "rate_limit_error"},
    {LP_ERR_PROTOCOL, 502, "server_error"},
    {LP_ERR_INTERNAL, 500, "server_error"},
};

static int table_index(enum lp_status st) {
    for (size_t i = 0; i < sizeof status_table / sizeof status_table[0]; i++)
        if (status_table[i].st == st) return (int)i;
    return (int)(sizeof status_table / sizeof status_table[0]) - 1; // unknown: internal
}

int lp_api_http_status(enum lp_status st) {
    return status_table[table_index(st)].http;
}

bool lp_api_err_from_status(struct lp_api_err *e, enum lp_status st, const char *param,
                            const char *msg) {
    int i = table_index(st);
    *e = (struct lp_api_err){.http = status_table[i].http, .type = status_table[i].type};
    if (st == LP_ERR_BUSY) e->code = "rate_limit_exceeded";
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->msg, sizeof e->msg, "%s", msg && msg[0] ? msg : lp_status_str(st));
    return false;
}

bool lp_api_bad(struct lp_api_err *e, const char *param, const char *fmt, ...) {
    *e = (struct lp_api_err){.http = 400, .type = "invalid_request_error"};
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return false;
}

// ---- replies ----

static enum MHD_Result reply(struct lp_api_conn *c, int http, const char *type, char *body,
                             size_t n, const char *retry_after) {
    struct MHD_Response *r = MHD_create_response_from_buffer(n, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, retry_after);
    enum MHD_Result ret = MHD_queue_response(c->mhd, (unsigned)http, r);
    MHD_destroy_response(r);
    c->answered = true;
    c->http_status = http;
    return ret;
}

enum MHD_Result lp_api_reply_json(struct lp_api_conn *c, int http, const json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s) return MHD_NO;
    size_t n = strlen(s);
    return reply(c, http, "application/json", s, n, NULL);
}

enum MHD_Result lp_api_reply_err(struct lp_api_conn *c, const struct lp_api_err *e) {
    json_t *j = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", e->msg, "type", e->type,
                          "param", e->param[0] ? json_string(e->param) : json_null(), "code",
                          e->code ? json_string(e->code) : json_null());
    if (!j) return MHD_NO;
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s) return MHD_NO;
    return reply(c, e->http, "application/json", s, strlen(s), e->http == 429 ? "1" : NULL);
}

// ---- small endpoints ----

// GET /v1/models (name NULL) or /v1/models/NAME.
static enum MHD_Result handle_models(struct lp_api_conn *c, const char *name) {
    struct lp_server *s = c->srv;
    if (name && strcmp(name, s->model_name) != 0) {
        struct lp_api_err e = {
            .http = 404, .type = "invalid_request_error", .code = "model_not_found"};
        snprintf(e.param, sizeof e.param, "model");
        snprintf(e.msg, sizeof e.msg, "the model '%s' does not exist; this server serves '%s'",
                 name, s->model_name);
        return lp_api_reply_err(c, &e);
    }
    json_t *m =
        json_pack("{s:s,s:s,s:I,s:s,s:i}", "id", s->model_name, "object", "model", "created",
                  (json_int_t)s->created, "owned_by", "layerpipe", "max_model_len", s->max_context);
    json_t *j = name ? m : json_pack("{s:s,s:[o]}", "object", "list", "data", m);
    enum MHD_Result r = lp_api_reply_json(c, 200, j);
    json_decref(j);
    return r;
}

static enum MHD_Result handle_health(struct lp_api_conn *c) {
    struct lp_stage_stats st[LP_MAX_STAGES];
    int n = lp_pipeline_stats(lp_sched_pipeline(c->srv->sched), st, LP_MAX_STAGES);
    json_t *stages = json_array();
    bool ok = true;
    for (int i = 0; i < n; i++) {
        ok = ok && st[i].ok;
        json_array_append_new(stages,
                              json_pack("{s:i,s:s,s:s,s:s,s:[i,i],s:s}", "stage", i, "role",
                                        st[i].role, "address", st[i].address, "device",
                                        st[i].device, "layers", st[i].layer_begin, st[i].layer_end,
                                        "status", st[i].ok ? "ok" : "down"));
    }
    struct lp_sched_stats ss;
    lp_sched_stats(c->srv->sched, &ss);
    json_t *j = json_pack("{s:s,s:s,s:i,s:i,s:o}", "status", ok ? "ok" : "degraded", "model",
                          c->srv->model_name, "running", ss.running, "waiting", ss.waiting,
                          "stages", stages);
    enum MHD_Result r = lp_api_reply_json(c, ok ? 200 : 503, j);
    json_decref(j);
    return r;
}

static enum MHD_Result handle_metrics(struct lp_api_conn *c) {
    size_t n = 0;
    char *text = lp_api_metrics_render(c->srv, &n);
    if (!text) return MHD_NO;
    return reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, n, NULL);
}

// ---- the access handler ----

// Constant-time comparison, so the key cannot be guessed byte by byte.
static bool same_key(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    unsigned char d = na != nb;
    for (size_t i = 0; i < na; i++)
        d |= (unsigned char)(a[i] ^ b[i % (nb ? nb : 1)]);
    return d == 0;
}

static bool authorized(struct lp_api_conn *c) {
    const char *key = c->srv->api_key;
    if (!key) return true;
    const char *h =
        MHD_lookup_connection_value(c->mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ')
        h++;
    return same_key(h, key);
}

static enum MHD_Result route(struct lp_api_conn *c) {
    struct lp_api_err e;
    bool get = strcmp(c->method, "GET") == 0, post = strcmp(c->method, "POST") == 0;
    const char *p = c->path;
    if (strcmp(p, "/health") == 0 && get) return handle_health(c);
    if (strcmp(p, "/metrics") == 0 && get) return handle_metrics(c);
    bool v1 = strncmp(p, "/v1/", 4) == 0;
    if (v1 && !authorized(c)) {
        e = (struct lp_api_err){
            .http = 401, .type = "invalid_request_error", .code = "invalid_api_key"};
        snprintf(e.msg, sizeof e.msg,
                 "missing or wrong API key: send the header 'Authorization: Bearer KEY'");
        return lp_api_reply_err(c, &e);
    }
    if (strcmp(p, "/v1/models") == 0 && get) return handle_models(c, NULL);
    if (strncmp(p, "/v1/models/", 11) == 0 && p[11] && get) return handle_models(c, p + 11);
    if (strcmp(p, "/v1/chat/completions") == 0 && post) return lp_api_handle_generate(c, true);
    if (strcmp(p, "/v1/completions") == 0 && post) return lp_api_handle_generate(c, false);
    bool known = strcmp(p, "/health") == 0 || strcmp(p, "/metrics") == 0 ||
                 strcmp(p, "/v1/models") == 0 || strcmp(p, "/v1/chat/completions") == 0 ||
                 strcmp(p, "/v1/completions") == 0;
    e = (struct lp_api_err){.http = known ? 405 : 404,
                            .type = "invalid_request_error",
                            .code = known ? "method_not_allowed" : "not_found"};
    snprintf(e.msg, sizeof e.msg, known ? "%s is not allowed on %s" : "no such endpoint: %s %s",
             c->method, p);
    return lp_api_reply_err(c, &e);
}

static enum MHD_Result too_big(struct lp_api_conn *c) {
    struct lp_api_err e = {
        .http = 413, .type = "invalid_request_error", .code = "request_too_large"};
    snprintf(e.msg, sizeof e.msg, "request body over the limit of %zu bytes",
             c->srv->max_body_bytes);
    return lp_api_reply_err(c, &e);
}

// Appends an upload chunk; false past the limit (the rest is then discarded).
static bool take_body(struct lp_api_conn *c, const char *data, size_t n) {
    if (c->too_big || c->body.n + n > c->srv->max_body_bytes) {
        c->too_big = true;
        return false;
    }
    return lp_api_buf_put(&c->body, data, n);
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *mhd, const char *url,
                                 const char *method, const char *version, const char *upload,
                                 size_t *upload_size, void **con_cls) {
    struct lp_server *s = cls;
    struct lp_api_conn *c = *con_cls;
    if (!c) { // headers only: set up, check the declared length early
        c = calloc(1, sizeof *c);
        if (!c) return MHD_NO;
        c->srv = s;
        c->mhd = mhd;
        c->started = lp_sched_now();
        snprintf(c->method, sizeof c->method, "%s", method);
        snprintf(c->path, sizeof c->path, "%s", url);
        *con_cls = c;
        const char *len =
            MHD_lookup_connection_value(mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        const unsigned long long declared = len ? strtoull(len, NULL, 10) : 0;
        if (declared > s->max_body_bytes) {
            // A client waiting for "100 Continue", or declaring far more than
            // the limit, is answered now; one already sending a body a little
            // over it has the body read and dropped and the 413 at its end:
            // answering mid-upload and closing made its socket reset, and the
            // client saw no answer at all (curl, now and then).
            if (MHD_lookup_connection_value(mhd, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT) ||
                declared / 16 > s->max_body_bytes)
                return too_big(c);
            c->too_big = true;
        }
        return MHD_YES;
    }
    if (*upload_size > 0) {
        take_body(c, upload, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (c->answered) return MHD_YES;
    if (c->too_big) return too_big(c);
    return route(c);
}

static void on_completed(void *cls, struct MHD_Connection *mhd, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    struct lp_server *s = cls;
    struct lp_api_conn *c = *con_cls;
    if (!c) return;
    *con_cls = NULL;
    int cls_i = c->http_status / 100;
    if (cls_i >= 1 && cls_i <= 5) atomic_fetch_add(&s->metrics.http[cls_i], 1);
    if (s->log) {
        char line[320];
        snprintf(line, sizeof line, "%s %s %d prompt=%d generated=%d %.3fs%s", c->method, c->path,
                 c->http_status, c->n_prompt, c->n_generated, lp_sched_now() - c->started,
                 toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection closed early)");
        s->log(s->log_user, line);
    }
    free(c->body.data);
    free(c);
}

// ---- lifecycle ----

struct lp_server_params lp_server_params_default(void) {
    return (struct lp_server_params){.listen = "127.0.0.1:8080",
                                     .model_name = "layerpipe",
                                     .max_body_bytes = 4u << 20,
                                     .max_connections = 256};
}

static enum lp_status parse_listen(const char *listen, struct sockaddr_in *sa,
                                   struct lp_error *err) {
    char host[64];
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "listen: '%s': expected HOST:PORT", listen);
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "listen: '%s': bad port", listen);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0) snprintf(host, sizeof host, "127.0.0.1");
    if (host[0] == '\0' || strcmp(host, "*") == 0) snprintf(host, sizeof host, "0.0.0.0");
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "listen: '%s': '%s' is not an IPv4 address",
                            listen, host);
    return LP_OK;
}

enum lp_status lp_server_create(struct lp_server **out, struct lp_sched *sched,
                                const struct lp_tokenizer *tok, const struct lp_model *model,
                                const struct lp_server_params *p, struct lp_error *err) {
    *out = NULL;
    struct sockaddr_in sa;
    enum lp_status st = parse_listen(p->listen ? p->listen : "127.0.0.1:8080", &sa, err);
    if (st != LP_OK) return st;
    struct lp_server *s = calloc(1, sizeof *s);
    if (!s) return lp_error_set(err, LP_ERR_NOMEM, "server: out of memory");
    s->sched = sched;
    s->tok = tok;
    s->model = model;
    s->api_key = p->api_key && p->api_key[0] ? strdup(p->api_key) : NULL;
    s->model_name = strdup(p->model_name ? p->model_name : "layerpipe");
    s->max_body_bytes = p->max_body_bytes ? p->max_body_bytes : 4u << 20;
    s->log = p->log;
    s->log_user = p->log_user;
    s->created = time(NULL);
    s->max_context = lp_pipeline_max_context(lp_sched_pipeline(sched));
    s->vocab = lp_model_config(model)->vocab_size;
    lp_api_metrics_init(&s->metrics);
    if (!s->model_name || (p->api_key && p->api_key[0] && !s->api_key)) {
        st = lp_error_set(err, LP_ERR_NOMEM, "server: out of memory");
        goto fail;
    }
    s->mhd =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
                         NULL, on_access, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)(p->max_connections > 0 ? p->max_connections : 256),
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!s->mhd) {
        st = lp_error_set(err, LP_ERR_IO, "server: cannot listen on %s (in use, or not allowed)",
                          p->listen ? p->listen : "127.0.0.1:8080");
        goto fail;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : ntohs(sa.sin_port);
    *out = s;
    return LP_OK;
fail:
    lp_server_destroy(s);
    return st;
}

int lp_server_port(const struct lp_server *s) {
    return s->port;
}

void lp_server_destroy(struct lp_server *s) {
    if (!s) return;
    atomic_store(&s->stopping, true);
    if (s->mhd) MHD_stop_daemon(s->mhd); // every connection let go: their requests are cancelled
    // The scheduler's callbacks use s until each request's DONE has returned.
    while (atomic_load(&s->n_active) > 0)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    free(s->api_key);
    free(s->model_name);
    free(s);
}
