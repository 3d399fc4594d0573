// SPDX-License-Identifier: MIT
// wire.c -- what travels between stages: activation rows as f32 or bf16
// payloads in layerpipe.v1.Activations, checked field by field on receipt
// (nothing from the network is trusted: widths, row counts, payload length
// for the dtype, segments covering exactly the rows). Also small shared
// helpers: packing, a monotonic clock, latency percentiles, memory probes.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/fp16.h"
#include "layerpipe/cluster.h"
#include "cluster/internal.h"

double lp_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum lp_status lp_pb_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *n,
                          struct lp_error *err) {
    size_t size = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return lp_error_set(err, LP_ERR_NOMEM, "out of memory packing a %zu-byte message",
                                  size);
    protobuf_c_message_pack(msg, buf);
    *out = buf;
    *n = size;
    return LP_OK;
}

enum lp_status lp_pb_pack_into(const ProtobufCMessage *msg, uint8_t *buf, size_t cap, size_t *n,
                               struct lp_error *err) {
    size_t size = protobuf_c_message_get_packed_size(msg);
    if (size > cap)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "a %zu-byte message does not fit %zu bytes",
                            size, cap);
    *n = protobuf_c_message_pack(msg, buf);
    return LP_OK;
}

// ---- the unpacking arena ----

static void *arena_alloc(void *data, size_t size) {
    struct lp_pb_arena *a = data;
    size_t at = (a->used + 15) & ~(size_t)15;
    if (at > a->cap || size > a->cap - at) return NULL;
    a->used = at + size;
    return a->buf + at;
}

static void arena_free(void *data, void *ptr) {
    (void)data;
    (void)ptr;
}

enum lp_status lp_pb_arena_init(struct lp_pb_arena *a, size_t cap, struct lp_error *err) {
    a->buf = malloc(cap);
    a->cap = a->buf ? cap : 0;
    a->used = 0;
    a->alloc = (ProtobufCAllocator){arena_alloc, arena_free, a};
    if (!a->buf) return lp_error_set(err, LP_ERR_NOMEM, "out of memory for a %zu-byte arena", cap);
    return LP_OK;
}

void lp_pb_arena_deinit(struct lp_pb_arena *a) {
    free(a->buf);
    a->buf = NULL;
    a->cap = a->used = 0;
}

size_t lp_pb_arena_bytes_for(size_t msg_bytes, size_t n_segments) {
    // the message struct, its bytes field (a copy of the payload), the
    // segment pointer array and the segments, each aligned to 16
    return msg_bytes + 16 + sizeof(Layerpipe__V1__Activations) + 16 +
           n_segments * (sizeof(void *) + sizeof(Layerpipe__V1__Segment) + 32) + 256;
}

Layerpipe__V1__Activations *lp_pb_arena_unpack_activations(struct lp_pb_arena *a,
                                                           const uint8_t *bytes, size_t n) {
    lp_pb_arena_reset(a);
    return n <= a->cap ? layerpipe__v1__activations__unpack(&a->alloc, n, bytes) : NULL;
}

uint32_t lp_wire_logit_rows(const Layerpipe__V1__Segment *s) {
    return s->all_logits ? s->n_tokens : s->no_logits ? 0 : 1;
}

const char *lp_wire_dtype_name(Layerpipe__V1__DType dtype) {
    switch (dtype) {
    case LAYERPIPE__V1__DTYPE__DTYPE_BF16: return "bf16";
    case LAYERPIPE__V1__DTYPE__DTYPE_F16: return "f16";
    default: return "f32";
    }
}

Layerpipe__V1__DType lp_wire_encode_rows(const float *rows, size_t n_elems,
                                         Layerpipe__V1__DType want, uint8_t *buf,
                                         size_t *n_bytes) {
    if (want == LAYERPIPE__V1__DTYPE__DTYPE_F16) {
        float big = 0.0f;
        for (size_t i = 0; i < n_elems; i++) {
            float a = fabsf(rows[i]);
            if (!(a <= big)) big = a; // NaN too
        }
        if (!(big < 65000.0f)) want = LAYERPIPE__V1__DTYPE__DTYPE_F32; // would overflow
    }
    if (want == LAYERPIPE__V1__DTYPE__DTYPE_BF16 || want == LAYERPIPE__V1__DTYPE__DTYPE_F16) {
        bool bf = want == LAYERPIPE__V1__DTYPE__DTYPE_BF16;
        for (size_t i = 0; i < n_elems; i++) {
            uint16_t h = bf ? lp_f32_to_bf16(rows[i]) : lp_f32_to_f16(rows[i]);
            memcpy(buf + 2 * i, &h, 2);
        }
        *n_bytes = n_elems * 2;
        return want;
    }
    memcpy(buf, rows, n_elems * 4);
    *n_bytes = n_elems * 4;
    return LAYERPIPE__V1__DTYPE__DTYPE_F32;
}

enum lp_status lp_wire_decode_rows(const Layerpipe__V1__Activations *a, int hidden, int max_rows,
                                   int max_segments, bool rows_are_tokens, float *rows,
                                   struct lp_error *err) {
    if (a->hidden != (uint32_t)hidden)
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "activations step %llu: hidden %u, this model's is %d",
                            (unsigned long long)a->step, a->hidden, hidden);
    // a stage gets every token's row; the Sink may get none (no segment wants logits)
    if ((rows_are_tokens && a->n_rows == 0) || a->n_rows > (uint32_t)max_rows)
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "activations step %llu: %u rows, expected %d..%d",
                            (unsigned long long)a->step, a->n_rows, rows_are_tokens ? 1 : 0,
                            max_rows);
    if (a->n_segments == 0 || a->n_segments > (size_t)max_segments)
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "activations step %llu: %zu segments, expected 1..%d",
                            (unsigned long long)a->step, a->n_segments, max_segments);
    size_t elem = a->dtype == LAYERPIPE__V1__DTYPE__DTYPE_BF16  ? 2
                  : a->dtype == LAYERPIPE__V1__DTYPE__DTYPE_F16 ? 2
                  : a->dtype == LAYERPIPE__V1__DTYPE__DTYPE_F32 ? 4
                                                                 : 0;
    if (elem == 0)
        return lp_error_set(err, LP_ERR_PROTOCOL, "activations step %llu: unknown dtype %d",
                            (unsigned long long)a->step, (int)a->dtype);
    size_t n_elems = (size_t)a->n_rows * (size_t)hidden;
    if (a->data.len != n_elems * elem)
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "activations step %llu: %zu payload bytes, %u rows x %d x %zu bytes "
                            "needs %zu",
                            (unsigned long long)a->step, a->data.len, a->n_rows, hidden, elem,
                            n_elems * elem);
    uint64_t covered = 0;
    for (size_t i = 0; i < a->n_segments; i++) {
        const Layerpipe__V1__Segment *s = a->segments[i];
        if (s->n_tokens == 0 || s->n_tokens > (uint32_t)max_rows)
            return lp_error_set(err, LP_ERR_PROTOCOL,
                                "activations step %llu: segment %zu has %u tokens",
                                (unsigned long long)a->step, i, s->n_tokens);
        covered += rows_are_tokens ? s->n_tokens : lp_wire_logit_rows(s);
    }
    if (covered != a->n_rows)
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "activations step %llu: segments cover %llu rows, the message has %u",
                            (unsigned long long)a->step, (unsigned long long)covered, a->n_rows);
    if (elem == 2) {
        bool bf = a->dtype == LAYERPIPE__V1__DTYPE__DTYPE_BF16;
        for (size_t i = 0; i < n_elems; i++) {
            uint16_t h;
            memcpy(&h, a->data.data + 2 * i, 2);
            rows[i] = bf ? lp_bf16_to_f32(h) : lp_f16_to_f32(h);
        }
    } else if (n_elems > 0) { // (no rows for the Sink: data is NULL)
        memcpy(rows, a->data.data, n_elems * 4);
    }
    return LP_OK;
}

enum lp_status lp_wire_check_configure(const Layerpipe__V1__ConfigureRequest *r,
                                       uint64_t fingerprint, int n_layers, size_t successor_cap,
                                       const char *listen, const char *model_dir,
                                       struct lp_error *err) {
    if (r->model_fingerprint != fingerprint)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: model fingerprint %016llx differs from this worker's "
                            "%016llx (%s): the coordinator and the worker have different models",
                            listen, (unsigned long long)r->model_fingerprint,
                            (unsigned long long)fingerprint, model_dir);
    if (r->layer_begin >= r->layer_end || r->layer_end > (uint32_t)n_layers)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: layers [%u, %u) are not a non-empty range of the model's %d",
                            listen, r->layer_begin, r->layer_end, n_layers);
    if (r->max_sessions == 0 || r->max_sessions > 4096 || r->max_batch_tokens == 0 ||
        r->max_batch_tokens > 65536 || r->max_context > (1u << 24))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: sessions %u, batch %u, context %u out of range", listen,
                            r->max_sessions, r->max_batch_tokens, r->max_context);
    uint64_t max_blocks = (uint64_t)r->max_sessions * ((r->max_context + 31) / 32 + 1);
    if (r->kv_blocks > max_blocks)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %s: %u KV blocks, more than %llu sessions x context need",
                            listen, r->kv_blocks, (unsigned long long)max_blocks);
    if (!r->successor || !r->successor[0] || strlen(r->successor) >= successor_cap)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stage %s: no successor address", listen);
    if (r->wire_dtype != LAYERPIPE__V1__DTYPE__DTYPE_F32 &&
        r->wire_dtype != LAYERPIPE__V1__DTYPE__DTYPE_BF16 &&
        r->wire_dtype != LAYERPIPE__V1__DTYPE__DTYPE_F16)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stage %s: unknown wire dtype %d", listen,
                            (int)r->wire_dtype);
    if (r->kv_dtype != LAYERPIPE__V1__DTYPE__DTYPE_F32 &&
        r->kv_dtype != LAYERPIPE__V1__DTYPE__DTYPE_BF16)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "stage %s: KV dtype %d, expected F32 or BF16",
                            listen, (int)r->kv_dtype);
    if (r->protocol_version != LP_PROTOCOL_VERSION)
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "stage %s: Configure for protocol %u, this stage speaks %d", listen,
                            r->protocol_version, LP_PROTOCOL_VERSION);
    return LP_OK;
}

void lp_latency_add(struct lp_latency *l, double ms) {
    l->ms[l->n % LP_LAT_SAMPLES] = ms;
    l->n++;
}

static int dbl_cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double lp_latency_quantile(const struct lp_latency *l, double q) {
    size_t n = l->n < LP_LAT_SAMPLES ? (size_t)l->n : LP_LAT_SAMPLES;
    if (n == 0) return 0.0;
    double *v = malloc(n * sizeof *v);
    if (!v) return 0.0;
    memcpy(v, l->ms, n * sizeof *v);
    qsort(v, n, sizeof *v, dbl_cmp);
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    double r = v[i < n ? i : n - 1];
    free(v);
    return r;
}

static uint64_t meminfo_kb(const char *path, const char *key) {
    FILE *fp = fopen(path, "r");
    if (!fp) return 0;
    char line[256];
    uint64_t v = 0;
    size_t k = strlen(key);
    while (fgets(line, sizeof line, fp))
        if (strncmp(line, key, k) == 0) {
            v = strtoull(line + k, NULL, 10);
            break;
        }
    fclose(fp);
    return v;
}

uint64_t lp_rss_bytes(void) { return meminfo_kb("/proc/self/status", "VmRSS:") * 1024; }
