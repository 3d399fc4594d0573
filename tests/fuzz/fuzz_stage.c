// SPDX-License-Identifier: MIT
// fuzz_stage.c -- libFuzzer harness for a stage's stateful checks: any
// sequence of Configure, Forward and Release messages, in any order and
// with any values, through the stage's core (src/cluster/stage_core.c: the
// validation layer the worker runs under its gRPC handlers, and the engine
// behind it) over a tiny model written at start. Beyond "no crash", each
// message is checked against what the stage promises:
//  - a refused message changes no session (ids, positions) and leaves a
//    refused Configure's previous configuration in place;
//  - an accepted step leaves each of its sessions at pos0 + n_tokens and
//    every other session as it was;
//  - a Release frees exactly the open sessions it names;
//  - a Configure that loads drops every session;
//  - every refusal has a message.
// Input: records of [op][len lo][len hi][len bytes]; op & 7 picks:
//   0  Configure, wire bytes as sent
//   1  Configure, wire bytes with the fingerprint and protocol made right
//   2  Configure from 8 compact bytes (layers, sessions, context, blocks,
//      batch, dtypes) with the right fingerprint
//   3  Forward, wire bytes, on stream (op >> 3) & 3
//   4, 7  Forward from compact bytes (step delta, dtype and width faults,
//      then 3 bytes a segment: session 0..7 and flags, pos0, n_tokens),
//      packed and then unpacked as the stage does, on stream (op >> 3) & 3
//   5  Release, wire bytes
//   6  Release of the ids given as bytes (0..255)
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster/stage_core.h"
#include "layerpipe/cluster.h"
#include "layerpipe/convert.h"

#define HIDDEN 16
#define N_LAYERS 4
#define INTER 32
#define HEADS 2
#define KV_HEADS 1
#define HEAD_DIM 8
#define VOCAB 32
#define N_STREAMS 4
#define MEM_CAP ((uint64_t)64 << 20) // what a Configure may take here

static char g_dir[64];
static struct lp_backend *g_backend;
static struct lp_stage_core g_core;
static struct lp_pb_arena g_arena;  // a queue slot's, sized at each Configure
static uint64_t g_last[N_STREAMS];  // each stream's last step

// ---- the tiny model (written once) ----

static uint32_t g_rng = 12345;
static float rnd(void) {
    g_rng = g_rng * 1664525u + 1013904223u;
    return ((float)(g_rng >> 8) / 16777216.0f - 0.5f) * 0.2f;
}

static void add(struct lp_safetensors_writer *w, const char *name, int64_t rows, int64_t cols,
                bool ones) {
    int64_t shape[2] = {rows, cols};
    size_t n = (size_t)(rows * (cols ? cols : 1));
    float *v = malloc(n * sizeof *v);
    if (!v) abort();
    for (size_t i = 0; i < n; i++) v[i] = ones ? 1.0f : rnd();
    if (lp_safetensors_writer_add_take(w, name, LP_DTYPE_F32, cols ? 2 : 1, shape, v, NULL) !=
        LP_OK)
        abort();
}

static void write_model(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/lp-fuzz-stage-XXXXXX");
    if (!mkdtemp(g_dir)) abort();
    char path[128];
    snprintf(path, sizeof path, "%s/config.json", g_dir);
    FILE *fp = fopen(path, "w");
    if (!fp) abort();
    fprintf(fp,
            "{\"architectures\": [\"Qwen3ForCausalLM\"], \"model_type\": \"qwen3\", "
            "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
            "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, "
            "\"vocab_size\": %d, \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-6, "
            "\"rope_theta\": 1000000.0, \"tie_word_embeddings\": true, \"eos_token_id\": 1, "
            "\"bos_token_id\": 0, \"attention_bias\": false}\n",
            HIDDEN, INTER, N_LAYERS, HEADS, KV_HEADS, HEAD_DIM, VOCAB);
    fclose(fp);
    struct lp_safetensors_writer *w = NULL;
    if (lp_safetensors_writer_create(&w, NULL) != LP_OK) abort();
    add(w, "model.embed_tokens.weight", VOCAB, HIDDEN, false);
    add(w, "model.norm.weight", HIDDEN, 0, true);
    char n[128];
    for (int l = 0; l < N_LAYERS; l++) {
#define T(suffix, r, c, ones)                                                                      \
    snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix);                                        \
    add(w, n, r, c, ones)
        T("input_layernorm.weight", HIDDEN, 0, true);
        T("post_attention_layernorm.weight", HIDDEN, 0, true);
        T("self_attn.q_norm.weight", HEAD_DIM, 0, true);
        T("self_attn.k_norm.weight", HEAD_DIM, 0, true);
        T("self_attn.q_proj.weight", HEADS * HEAD_DIM, HIDDEN, false);
        T("self_attn.k_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN, false);
        T("self_attn.v_proj.weight", KV_HEADS * HEAD_DIM, HIDDEN, false);
        T("self_attn.o_proj.weight", HIDDEN, HEADS * HEAD_DIM, false);
        T("mlp.gate_proj.weight", INTER, HIDDEN, false);
        T("mlp.up_proj.weight", INTER, HIDDEN, false);
        T("mlp.down_proj.weight", HIDDEN, INTER, false);
#undef T
    }
    snprintf(path, sizeof path, "%s/model.safetensors", g_dir);
    if (lp_safetensors_writer_write(w, path, NULL) != LP_OK) abort();
    lp_safetensors_writer_destroy(w);
}

static void cleanup(void) {
    lp_stage_core_deinit(&g_core);
    lp_pb_arena_deinit(&g_arena);
    lp_backend_destroy(g_backend);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "fuzz_stage: cannot remove %s\n", g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    write_model();
    if (lp_backend_create(&g_backend, "cpu", 1, false, NULL) != LP_OK) abort();
    struct lp_error err = {0};
    if (lp_stage_core_init(&g_core, g_dir, "127.0.0.1:5001", g_backend, 0, &err) != LP_OK) {
        fprintf(stderr, "fuzz_stage: %s\n", err.msg);
        abort();
    }
    g_core.mem_cap = MEM_CAP;
    atexit(cleanup);
    return 0;
}

// ---- what the stage promises ----

// The session table as it was before a message.
struct snap {
    bool configured;
    int n;
    struct lp_stage_session *s; // [n]
    int *len;                   // [n]
};

static void snap_take(struct snap *p) {
    const struct lp_stage_core *c = &g_core;
    p->configured = c->configured;
    p->n = c->configured ? c->max_sessions : 0;
    p->s = malloc((size_t)(p->n ? p->n : 1) * sizeof *p->s);
    p->len = malloc((size_t)(p->n ? p->n : 1) * sizeof *p->len);
    if (!p->s || !p->len) abort();
    for (int i = 0; i < p->n; i++) {
        p->s[i] = c->sessions[i];
        p->len[i] = c->sessions[i].seq >= 0 ? lp_engine_seq_len(c->engine, c->sessions[i].seq) : -1;
    }
}

static void snap_free(struct snap *p) {
    free(p->s);
    free(p->len);
}

// Nothing changed since p (a refused message).
static void expect_unchanged(const struct snap *p) {
    const struct lp_stage_core *c = &g_core;
    if (c->configured != p->configured) abort();
    if (!c->configured) return;
    if (c->max_sessions != p->n) abort();
    for (int i = 0; i < p->n; i++) {
        if (c->sessions[i].seq != p->s[i].seq) abort();
        if (p->s[i].seq < 0) continue;
        if (c->sessions[i].id != p->s[i].id) abort();
        if (lp_engine_seq_len(c->engine, c->sessions[i].seq) != p->len[i]) abort();
    }
}

static bool refused_with_message(enum lp_status st, const struct lp_error *err) {
    if (st != LP_OK && !err->msg[0]) abort();
    return st != LP_OK;
}

// ---- Configure ----

static void configure(Layerpipe__V1__ConfigureRequest *r) {
    struct snap before;
    snap_take(&before);
    struct lp_error err = {0};
    enum lp_status st = lp_stage_core_check(&g_core, r, &err);
    if (refused_with_message(st, &err)) {
        expect_unchanged(&before);
        snap_free(&before);
        return;
    }
    snap_free(&before);
    st = lp_stage_core_load(&g_core, r, &err);
    if (refused_with_message(st, &err)) {
        if (g_core.configured) abort(); // a failed load leaves the stage unconfigured
        lp_pb_arena_deinit(&g_arena);
        return;
    }
    int n_open = -1, used = -1;
    lp_stage_core_usage(&g_core, &n_open, &used);
    if (n_open != 0 || used != 0 || g_core.n_hashes != 11 * (int)(r->layer_end - r->layer_begin))
        abort();
    // the worker's queue slots: an arena each, sized for the configuration
    size_t row_bytes = (size_t)g_core.max_rows * HIDDEN * sizeof(float);
    lp_pb_arena_deinit(&g_arena);
    if (lp_pb_arena_init(&g_arena, lp_pb_arena_bytes_for(row_bytes, (size_t)g_core.max_sessions),
                         NULL) != LP_OK)
        abort();
}

static void configure_bytes(const uint8_t *b, size_t n, bool fix) {
    if (n > 64 * 1024) return; // the handler's cap
    Layerpipe__V1__ConfigureRequest *r = layerpipe__v1__configure_request__unpack(NULL, n, b);
    if (!r) return;
    if (fix) {
        r->model_fingerprint = g_core.fingerprint;
        r->protocol_version = LP_PROTOCOL_VERSION;
    }
    configure(r);
    layerpipe__v1__configure_request__free_unpacked(r, NULL);
}

static void configure_compact(const uint8_t *b, size_t n) {
    uint8_t v[8] = {0};
    memcpy(v, b, n < 8 ? n : 8);
    Layerpipe__V1__ConfigureRequest r = LAYERPIPE__V1__CONFIGURE_REQUEST__INIT;
    r.model_fingerprint = g_core.fingerprint;
    r.protocol_version = LP_PROTOCOL_VERSION;
    r.layer_begin = v[0] % (N_LAYERS + 1);
    r.layer_end = v[1] % (N_LAYERS + 2);
    r.max_sessions = v[2] % 9;
    r.max_context = (uint32_t)v[3] * 3;
    r.kv_blocks = v[4] % 48;
    r.max_batch_tokens = v[5] % 40;
    r.wire_dtype = (Layerpipe__V1__DType)(v[6] & 3);
    r.kv_dtype = (Layerpipe__V1__DType)((v[6] >> 2) & 3);
    r.successor_is_sink = v[6] & 16;
    r.successor = (v[6] & 32) ? "" : "127.0.0.1:5002";
    r.stage_index = v[7];
    // the same bytes a coordinator would send, unpacked as the stage does
    uint8_t buf[256];
    size_t len = 0;
    if (lp_pb_pack_into(&r.base, buf, sizeof buf, &len, NULL) != LP_OK) abort();
    configure_bytes(buf, len, false);
}

// ---- Forward ----

static void forward_bytes(const uint8_t *b, size_t n, int stream) {
    struct snap before;
    snap_take(&before);
    struct lp_error err = {0};
    enum lp_status st;
    if (g_arena.cap == 0) { // the worker answers "not configured" for any readable step
        Layerpipe__V1__Activations *a = layerpipe__v1__activations__unpack(NULL, n, b);
        if (a) {
            st = lp_stage_core_compute(&g_core, a, &err);
            if (!refused_with_message(st, &err)) abort();
        }
        layerpipe__v1__activations__free_unpacked(a, NULL);
        expect_unchanged(&before);
        snap_free(&before);
        return;
    }
    Layerpipe__V1__Activations *a = NULL;
    uint64_t last = g_last[stream];
    st = lp_stage_core_unpack_step(&g_core, &g_arena, &g_last[stream], b, n, &a, &err);
    if (refused_with_message(st, &err)) {
        if (g_last[stream] != last || (a && a->step > last)) abort();
        expect_unchanged(&before);
        snap_free(&before);
        return;
    }
    if (a->step <= last || g_last[stream] != a->step) abort();
    st = lp_stage_core_compute(&g_core, a, &err);
    if (refused_with_message(st, &err)) {
        expect_unchanged(&before);
        snap_free(&before);
        return;
    }
    // each of its sessions at pos0 + n_tokens; every other one as it was
    const struct lp_stage_core *c = &g_core;
    for (size_t i = 0; i < a->n_segments; i++) {
        const Layerpipe__V1__Segment *g = a->segments[i];
        if (lp_stage_core_session_len(c, g->session) != (int)(g->pos0 + g->n_tokens)) abort();
    }
    for (int i = 0; i < c->max_sessions; i++) {
        bool in_step = false;
        for (size_t k = 0; k < a->n_segments; k++)
            in_step |= c->sessions[i].seq >= 0 && a->segments[k]->session == c->sessions[i].id;
        if (in_step) continue;
        if (c->sessions[i].seq != before.s[i].seq) abort();
        if (before.s[i].seq >= 0 &&
            (c->sessions[i].id != before.s[i].id ||
             lp_engine_seq_len(c->engine, c->sessions[i].seq) != before.len[i]))
            abort();
    }
    snap_free(&before);
}

static void forward_compact(const uint8_t *b, size_t n, int stream) {
    if (n < 2) return;
    int8_t delta = (int8_t)b[0];
    uint8_t flags = b[1];
    Layerpipe__V1__Segment seg[8], *segp[8];
    size_t n_seg = 0;
    uint32_t rows = 0;
    for (size_t i = 2; i + 2 < n && n_seg < 8; i += 3) {
        layerpipe__v1__segment__init(&seg[n_seg]);
        seg[n_seg].session = b[i] & 7;
        seg[n_seg].all_logits = b[i] & 8;
        seg[n_seg].no_logits = b[i] & 16;
        seg[n_seg].pos0 = b[i + 1];
        seg[n_seg].n_tokens = b[i + 2] % 17;
        rows += seg[n_seg].n_tokens;
        segp[n_seg] = &seg[n_seg];
        n_seg++;
    }
    static const Layerpipe__V1__DType dtypes[4] = {
        LAYERPIPE__V1__DTYPE__DTYPE_F32, LAYERPIPE__V1__DTYPE__DTYPE_BF16,
        LAYERPIPE__V1__DTYPE__DTYPE_F16, (Layerpipe__V1__DType)7};
    Layerpipe__V1__Activations a = LAYERPIPE__V1__ACTIVATIONS__INIT;
    int64_t step = (int64_t)g_last[stream] + delta;
    a.step = step < 0 ? 0 : (uint64_t)step;
    a.segments = segp;
    a.n_segments = n_seg;
    a.dtype = dtypes[flags & 3];
    a.hidden = HIDDEN + ((flags & 4) ? 1 : 0);
    a.n_rows = rows + ((flags & 8) ? 1 : 0);
    size_t elem = (flags & 3) == 0 ? 4 : 2;
    size_t bytes = (size_t)a.n_rows * HIDDEN * elem + ((flags & 16) ? 2 : 0);
    uint8_t *data = malloc(bytes ? bytes : 1), *buf = NULL;
    if (!data) abort();
    for (size_t i = 0; i < bytes; i++) data[i] = (uint8_t)(i * 37 + flags); // any values
    if (elem == 4) // mostly finite f32
        for (size_t i = 0; i + 4 <= bytes; i += 4) {
            float f = (float)((int)(i % 13) - 6) * 0.125f;
            memcpy(data + i, &f, 4);
        }
    a.data.data = data;
    a.data.len = bytes;
    size_t len = 0;
    if (lp_pb_pack(&a.base, &buf, &len, NULL) != LP_OK) abort();
    forward_bytes(buf, len, stream);
    free(buf);
    free(data);
}

// ---- Release ----

static void release_bytes(const uint8_t *b, size_t n) {
    struct snap before;
    snap_take(&before);
    struct lp_error err = {0};
    uint32_t released = 0;
    enum lp_status st = lp_stage_core_release(&g_core, b, n, &released, &err);
    if (refused_with_message(st, &err)) {
        if (released != 0) abort();
        expect_unchanged(&before);
        snap_free(&before);
        return;
    }
    Layerpipe__V1__ReleaseRequest *r = layerpipe__v1__release_request__unpack(NULL, n, b);
    if (!r) abort(); // the stage accepted what protobuf-c refuses
    const struct lp_stage_core *c = &g_core;
    uint32_t want = 0;
    for (int i = 0; i < before.n; i++) {
        bool named = false;
        for (size_t k = 0; k < r->n_sessions; k++) named |= r->sessions[k] == before.s[i].id;
        if (before.s[i].seq >= 0 && named) {
            want++;
            if (c->sessions[i].seq >= 0) abort(); // still open
        } else if (c->sessions[i].seq != before.s[i].seq ||
                   (before.s[i].seq >= 0 &&
                    lp_engine_seq_len(c->engine, c->sessions[i].seq) != before.len[i])) {
            abort(); // a session it did not name changed
        }
    }
    if (released != want) abort();
    layerpipe__v1__release_request__free_unpacked(r, NULL);
    snap_free(&before);
}

static void release_compact(const uint8_t *b, size_t n) {
    uint64_t ids[64];
    size_t k = n < 64 ? n : 64;
    for (size_t i = 0; i < k; i++) ids[i] = b[i];
    Layerpipe__V1__ReleaseRequest r = LAYERPIPE__V1__RELEASE_REQUEST__INIT;
    r.sessions = ids;
    r.n_sessions = k;
    uint8_t buf[1024];
    size_t len = 0;
    if (lp_pb_pack_into(&r.base, buf, sizeof buf, &len, NULL) != LP_OK) abort();
    release_bytes(buf, len);
}

// ---- one input: a fresh stage, then the records in order ----

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lp_stage_core_unload(&g_core); // as a worker that just started
    lp_pb_arena_deinit(&g_arena);
    memset(g_last, 0, sizeof g_last);
    size_t at = 0;
    for (int n_msgs = 0; at + 3 <= size && n_msgs < 64; n_msgs++) {
        uint8_t op = data[at];
        size_t len = (size_t)data[at + 1] | (size_t)data[at + 2] << 8;
        at += 3;
        if (len > size - at) len = size - at;
        // a copy of exactly the message's size (ASan sees reads past it)
        uint8_t *msg = malloc(len ? len : 1);
        if (!msg) abort();
        memcpy(msg, data + at, len);
        at += len;
        int stream = (op >> 3) & (N_STREAMS - 1);
        switch (op & 7) {
        case 0: configure_bytes(msg, len, false); break;
        case 1: configure_bytes(msg, len, true); break;
        case 2: configure_compact(msg, len); break;
        case 3: forward_bytes(msg, len, stream); break;
        case 4:
        case 7: forward_compact(msg, len, stream); break;
        case 5: release_bytes(msg, len); break;
        case 6: release_compact(msg, len); break;
        }
        free(msg);
    }
    return 0;
}
