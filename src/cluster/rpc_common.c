// SPDX-License-Identifier: MIT
// rpc_common.c -- pieces shared by the rpc server and client: the process-wide
// gRPC reference, the one lp_status <-> gRPC status table of the cluster
// module, channel arguments (message limits, keepalive, reuseport), the
// completion-queue loop and the byte-buffer glue.
#include <grpc/byte_buffer_reader.h>
#include <grpc/support/time.h>
#include <pthread.h>
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
    // A dead peer (power loss, partition) is noticed within ~15 s; a killed
    // process is noticed at once through the connection reset.
    rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
    rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    rpc_arg_int(&st->args[n++], GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    rpc_arg_int(&st->args[n++], GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    // Throughput of prefill chunks (MBs per message): big HTTP/2 windows and
    // frames and big socket reads, so a chunk is not cut into 16 KiB pieces
    // that wait for window updates.
    rpc_arg_int(&st->args[n++], GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
    rpc_arg_int(&st->args[n++], GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
    rpc_arg_int(&st->args[n++], GRPC_ARG_TCP_READ_CHUNK_SIZE, 1 << 20);
    rpc_arg_int(&st->args[n++], GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 16 << 20);
    if (is_server) {
        // Accept the clients' 10 s keepalive pings (the default policy allows
        // one per 5 min and answers more with GOAWAY "too_many_pings").
        rpc_arg_int(&st->args[n++], GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
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
