// SPDX-License-Identifier: MIT
// rpc_common.c -- pieces shared by the rpc server and client: the process-wide
// gRPC reference, the one lp_status <-> gRPC status table of the cluster
// module, channel arguments (message limits, keepalive, reuseport), the
// transport security settings (PEM files, the cluster token), the
// completion-queue loop and the byte-buffer glue.
#include <errno.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/rpc_internal.h"

void lp_rpc_init(void) { grpc_init(); }

// gRPC counts its own initializations; the blocking form makes the last one
// join gRPC's threads before returning (clean exits under LeakSanitizer).
void lp_rpc_shutdown(void) { grpc_shutdown_blocking(); }

// ---------------------------------------------------------- status table ---

static const struct {
    enum lp_status lp;
    grpc_status_code grpc;
} rpc_status_table[] = {
    // lp -> grpc: first row with the lp code wins; grpc -> lp: first row with the grpc code.
    {LP_OK, GRPC_STATUS_OK},
    {LP_ERR_INVALID_ARG, GRPC_STATUS_INVALID_ARGUMENT},
    {LP_ERR_PROTOCOL, GRPC_STATUS_INVALID_ARGUMENT},
    {LP_ERR_FORMAT, GRPC_STATUS_INVALID_ARGUMENT},
    {LP_ERR_BUSY, GRPC_STATUS_RESOURCE_EXHAUSTED}, // a remote shortage: retry later
    {LP_ERR_NOMEM, GRPC_STATUS_RESOURCE_EXHAUSTED},
    {LP_ERR_UNSUPPORTED, GRPC_STATUS_UNIMPLEMENTED},
    {LP_ERR_TIMEOUT, GRPC_STATUS_DEADLINE_EXCEEDED},
    {LP_ERR_NETWORK, GRPC_STATUS_UNAVAILABLE},
    {LP_ERR_CANCELLED, GRPC_STATUS_CANCELLED},
    {LP_ERR_INTERNAL, GRPC_STATUS_INTERNAL},
    // grpc -> lp only (never produced by lp_rpc_status_to_grpc)
    {LP_ERR_NETWORK, GRPC_STATUS_UNKNOWN}, // e.g. a stream reset by a dying peer
    {LP_ERR_INVALID_ARG, GRPC_STATUS_FAILED_PRECONDITION},
    {LP_ERR_INVALID_ARG, GRPC_STATUS_OUT_OF_RANGE},
    {LP_ERR_INVALID_ARG, GRPC_STATUS_NOT_FOUND},
    {LP_ERR_INVALID_ARG, GRPC_STATUS_ALREADY_EXISTS},
    {LP_ERR_INVALID_ARG, GRPC_STATUS_PERMISSION_DENIED},
    {LP_ERR_INVALID_ARG, GRPC_STATUS_UNAUTHENTICATED},
    {LP_ERR_CANCELLED, GRPC_STATUS_ABORTED},
    {LP_ERR_INTERNAL, GRPC_STATUS_DATA_LOSS},
};
#define RPC_N_STATUS (sizeof rpc_status_table / sizeof rpc_status_table[0])

grpc_status_code lp_rpc_status_to_grpc(enum lp_status st) {
    for (size_t i = 0; i < RPC_N_STATUS; i++)
        if (rpc_status_table[i].lp == st) return rpc_status_table[i].grpc;
    return GRPC_STATUS_INTERNAL; // LP_ERR_IO, LP_ERR_DEVICE, ...
}

enum lp_status lp_rpc_status_from_grpc(grpc_status_code code) {
    for (size_t i = 0; i < RPC_N_STATUS; i++)
        if (rpc_status_table[i].grpc == code) return rpc_status_table[i].lp;
    return LP_ERR_INTERNAL;
}

const char *lp_rpc_grpc_code_name(grpc_status_code code) {
    static const char *const names[] = {
        "OK",        "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED", "NOT_FOUND",  "ALREADY_EXISTS",    "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
        "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",       "DATA_LOSS",
        "UNAUTHENTICATED"};
    if ((int)code >= 0 && (size_t)code < sizeof names / sizeof names[0]) return names[code];
    return "UNKNOWN_CODE";
}

// ------------------------------------------------------------------ args ---

static void rpc_arg_int(grpc_arg *a, const char *key, int value) {
    a->type = GRPC_ARG_INTEGER;
    a->key = (char *)key; // gRPC copies args; the key is never written
    a->value.integer = value;
}

const grpc_channel_args *lp_rpc_args_fill(struct lp_rpc_args *st, int is_server,
                                          size_t max_message_bytes) {
    if (max_message_bytes == 0) max_message_bytes = LP_RPC_DEFAULT_MAX_MESSAGE_BYTES;
    int max_msg = max_message_bytes > (size_t)INT32_MAX ? INT32_MAX : (int)max_message_bytes;
    size_t n = 0;
    rpc_arg_int(&st->args[n++], GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, max_msg);
    rpc_arg_int(&st->args[n++], GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, max_msg);
    if (is_server) {
        // Our servers ping their clients (clients never police pings): a dead
        // client (power loss, partition) is noticed within ~15 s, a killed one
        // at once through the connection reset.
        rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
        rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
        rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
        rpc_arg_int(&st->args[n++], GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
        // ...and tolerate clients that ping every 5 s or more (older
        // layerpipe versions pinged every 10 s), idle or not.
        rpc_arg_int(&st->args[n++], GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
    } else {
        // Client pings must suit a stock gRPC server (a Sink or stage written
        // in another language), which allows one ping per 5 min while no
        // data flows (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)
        // and none at all without an open call; past two strikes it sends
        // GOAWAY "too_many_pings". Pinging every 10 s broke an idle ring after
        // ~50 s that way. So: every 6 min (a margin over 5 min for jitter),
        // only while a call is open. A dead server is then found by the
        // step deadline and the reconnect (a fresh channel), not by pings.
        rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_TIME_MS, 6 * 60 * 1000);
        rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
        rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    }
    // Throughput of prefill chunks (MBs per message): big HTTP/2 windows and
    // frames and big socket reads, so a chunk is not cut into 16 KiB pieces
    // that wait for window updates.
    rpc_arg_int(&st->args[n++], GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
    rpc_arg_int(&st->args[n++], GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
    rpc_arg_int(&st->args[n++], GRPC_ARG_TCP_READ_CHUNK_SIZE, 1 << 20);
    rpc_arg_int(&st->args[n++], GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 16 << 20);
    if (is_server) {
        // On by default: a second server would silently share the port.
        rpc_arg_int(&st->args[n++], GRPC_ARG_ALLOW_REUSEPORT, 0);
    } else {
        // A restarted stage is found again within ~2 s, not gRPC's 120 s.
        rpc_arg_int(&st->args[n++], GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
        rpc_arg_int(&st->args[n++], GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
        rpc_arg_int(&st->args[n++], GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    }
    st->list.num_args = n;
    st->list.args = st->args;
    return &st->list;
}

// -------------------------------------------------------------- security ---

// Reads a whole file (at most max_bytes) as a NUL-terminated string.
static enum lp_status rpc_read_text(const char *flag, const char *path, size_t max_bytes,
                                    char **out, struct lp_error *err) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return lp_error_set(err, LP_ERR_IO, "%s %s: %s", flag, path, strerror(errno));
    char *buf = malloc(max_bytes + 1);
    if (!buf) {
        fclose(fp);
        return lp_error_set(err, LP_ERR_NOMEM, "%s %s: out of memory", flag, path);
    }
    size_t n = fread(buf, 1, max_bytes + 1, fp);
    int bad = ferror(fp);
    fclose(fp);
    enum lp_status st = LP_OK;
    if (bad) st = lp_error_set(err, LP_ERR_IO, "%s %s: read error", flag, path);
    else if (n > max_bytes)
        st = lp_error_set(err, LP_ERR_FORMAT, "%s %s: larger than %zu bytes", flag, path,
                          max_bytes);
    else if (n == 0) st = lp_error_set(err, LP_ERR_FORMAT, "%s %s: the file is empty", flag, path);
    else if (memchr(buf, '\0', n))
        st = lp_error_set(err, LP_ERR_FORMAT, "%s %s: holds a NUL byte (not PEM text)", flag, path);
    if (st != LP_OK) {
        free(buf);
        return st;
    }
    buf[n] = '\0';
    *out = buf;
    return LP_OK;
}

// The token is the file's first line without surrounding blanks; it travels
// as an HTTP/2 header value, so only printable ASCII is accepted.
static enum lp_status rpc_read_token(const char *path, char **out, struct lp_error *err) {
    char *t;
    enum lp_status st = rpc_read_text("--cluster-token-file", path, 4096, &t, err);
    if (st != LP_OK) return st;
    size_t b = 0, e = strcspn(t, "\r\n");
    while (b < e && (t[b] == ' ' || t[b] == '\t')) b++;
    while (e > b && (t[e - 1] == ' ' || t[e - 1] == '\t')) e--;
    for (size_t i = b; i < e; i++)
        if (t[i] < 0x21 || t[i] > 0x7e) {
            unsigned byte = (unsigned char)t[i];
            free(t);
            return lp_error_set(err, LP_ERR_FORMAT,
                                "--cluster-token-file %s: byte %zu (0x%02x) is not printable "
                                "ASCII (use e.g. `openssl rand -hex 32`)",
                                path, i, byte);
        }
    if (e - b < 16) {
        free(t);
        return lp_error_set(err, LP_ERR_FORMAT,
                            "--cluster-token-file %s: the token has %zu characters, at least 16 "
                            "expected (use e.g. `openssl rand -hex 32`)",
                            path, e - b);
    }
    memmove(t, t + b, e - b);
    t[e - b] = '\0';
    *out = t;
    return LP_OK;
}

enum lp_status lp_rpc_security_create(struct lp_rpc_security **out,
                                      const struct lp_security_params *p, struct lp_error *err) {
    if (!out) return lp_error_set(err, LP_ERR_INVALID_ARG, "lp_rpc_security_create: NULL out");
    *out = NULL;
    struct lp_rpc_security *sec = calloc(1, sizeof *sec);
    if (!sec) return lp_error_set(err, LP_ERR_NOMEM, "transport security: out of memory");
    if (!p) {
        *out = sec;
        return LP_OK;
    }
    enum lp_status st = LP_OK;
    if (!p->tls_cert != !p->tls_key) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "%s given without %s: TLS needs both",
                          p->tls_cert ? "--tls-cert" : "--tls-key",
                          p->tls_cert ? "--tls-key" : "--tls-cert");
        goto fail;
    }
    if (p->tls_ca && !p->tls_cert) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "--tls-ca given without --tls-cert and --tls-key: mutual TLS needs this "
                          "process's own certificate too");
        goto fail;
    }
    if (p->tls_cert &&
        ((st = rpc_read_text("--tls-cert", p->tls_cert, 1 << 20, &sec->cert_pem, err)) != LP_OK ||
         (st = rpc_read_text("--tls-key", p->tls_key, 1 << 20, &sec->key_pem, err)) != LP_OK))
        goto fail;
    if (p->tls_ca && (st = rpc_read_text("--tls-ca", p->tls_ca, 1 << 20, &sec->ca_pem, err)) != LP_OK)
        goto fail;
    if (p->tls_cert && !strstr(sec->cert_pem, "-----BEGIN CERTIFICATE-----")) {
        st = lp_error_set(err, LP_ERR_FORMAT, "--tls-cert %s: no PEM certificate in it",
                          p->tls_cert);
        goto fail;
    }
    if (p->tls_key && !strstr(sec->key_pem, "PRIVATE KEY-----")) {
        st = lp_error_set(err, LP_ERR_FORMAT, "--tls-key %s: no PEM private key in it", p->tls_key);
        goto fail;
    }
    if (p->tls_ca && !strstr(sec->ca_pem, "-----BEGIN CERTIFICATE-----")) {
        st = lp_error_set(err, LP_ERR_FORMAT, "--tls-ca %s: no PEM certificate in it", p->tls_ca);
        goto fail;
    }
    if (p->token_file && (st = rpc_read_token(p->token_file, &sec->token, err)) != LP_OK) goto fail;
    sec->health_open = p->health_open;
    sec->log = p->log;
    sec->log_user = p->log_user;
    *out = sec;
    return LP_OK;
fail:
    lp_rpc_security_destroy(sec);
    return st;
}

void lp_rpc_security_destroy(struct lp_rpc_security *sec) {
    if (!sec) return;
    free(sec->cert_pem);
    if (sec->key_pem) { // private key material: do not leave it in freed memory
        volatile char *k = sec->key_pem;
        for (size_t i = 0; k[i]; i++) k[i] = 0;
    }
    free(sec->key_pem);
    free(sec->ca_pem);
    free(sec->token);
    free(sec);
}

int lp_rpc_security_tls(const struct lp_rpc_security *sec) { return sec && sec->cert_pem; }

int lp_rpc_token_equal(const char *want, const uint8_t *got, size_t n_got) {
    // Constant time in the received bytes: every byte of the longer of the
    // two is compared, the length difference folds into the result.
    size_t n_want = strlen(want);
    size_t n = n_want > n_got ? n_want : n_got;
    unsigned diff = (unsigned)(n_want != n_got);
    for (size_t i = 0; i < n; i++) {
        unsigned a = i < n_want ? (unsigned char)want[i] : 0u;
        unsigned b = i < n_got ? got[i] : 0u;
        diff |= a ^ b;
    }
    return diff == 0;
}

// ---------------------------------------------------------------- cq loop ---

void lp_rpc_cq_run(grpc_completion_queue *cq) {
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) return;
        if (ev.type != GRPC_OP_COMPLETE) continue; // GRPC_QUEUE_TIMEOUT cannot happen here
        struct lp_rpc_tag *tag = ev.tag;
        tag->done(tag, ev.success);
    }
}

// ---------------------------------------------------------- byte buffers ---

grpc_byte_buffer *lp_rpc_bb_from_bytes(const uint8_t *p, size_t n) {
    grpc_slice slice = grpc_slice_malloc(n);
    if (n) memcpy(GRPC_SLICE_START_PTR(slice), p, n);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice); // the buffer holds its own reference
    return bb;
}

struct lp_rpc_msg *lp_rpc_msg_create(const uint8_t *p, size_t n) {
    struct lp_rpc_msg *m = malloc(sizeof *m);
    if (!m) return NULL;
    m->next = NULL;
    m->bytes = n;
    m->bb = lp_rpc_bb_from_bytes(p, n);
    return m;
}

void lp_rpc_msg_free_all(struct lp_rpc_msg *head) {
    while (head) {
        struct lp_rpc_msg *m = head;
        head = m->next;
        grpc_byte_buffer_destroy(m->bb);
        free(m);
    }
}

grpc_byte_buffer *lp_rpc_bb_take(uint8_t *p, size_t n) {
    grpc_slice slice = n ? grpc_slice_new(p, n, free) : grpc_empty_slice();
    if (!n) free(p);
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

enum lp_status lp_rpc_view_init(struct lp_rpc_view *v, grpc_byte_buffer *bb,
                                struct lp_error *err) {
    v->data = (const uint8_t *)"";
    v->bytes = 0;
    v->owned = NULL;
    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1) {
        // by pointer: an inlined slice keeps its bytes inside the struct
        const grpc_slice *s = &bb->data.raw.slice_buffer.slices[0];
        v->data = GRPC_SLICE_START_PTR(*s);
        v->bytes = GRPC_SLICE_LENGTH(*s);
        return LP_OK;
    }
    // Several slices (large messages arrive in HTTP/2 frames): one copy, no
    // intermediate slice as grpc_byte_buffer_reader_readall would make.
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return lp_error_set(err, LP_ERR_PROTOCOL, "rpc: cannot read a received message");
    size_t n = grpc_byte_buffer_length(reader.buffer_out);
    v->owned = malloc(n ? n : 1);
    if (!v->owned) {
        grpc_byte_buffer_reader_destroy(&reader);
        return lp_error_set(err, LP_ERR_NOMEM, "rpc: %zu bytes for a received message", n);
    }
    size_t off = 0;
    grpc_slice s;
    while (grpc_byte_buffer_reader_next(&reader, &s)) {
        size_t len = GRPC_SLICE_LENGTH(s);
        if (len > n - off) len = n - off; // cannot happen: length is the sum of slices
        memcpy(v->owned + off, GRPC_SLICE_START_PTR(s), len);
        off += len;
        grpc_slice_unref(s);
    }
    grpc_byte_buffer_reader_destroy(&reader);
    v->data = v->owned;
    v->bytes = off;
    return LP_OK;
}

void lp_rpc_view_deinit(struct lp_rpc_view *v) {
    free(v->owned);
    v->owned = NULL;
}

char *lp_rpc_slice_strdup(grpc_slice s) {
    size_t n = GRPC_SLICE_LENGTH(s);
    char *p = malloc(n + 1);
    if (!p) return NULL;
    if (n) memcpy(p, GRPC_SLICE_START_PTR(s), n);
    p[n] = '\0';
    return p;
}

gpr_timespec lp_rpc_deadline(int timeout_ms) {
    if (timeout_ms < 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                        gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}
