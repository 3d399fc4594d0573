// SPDX-License-Identifier: MIT
// test_model_open.c -- lp_model_open on tiny model folders written here
// (config.json + model.safetensors, or shards + index): tied and untied
// heads, missing / misshapen / mistyped tensors, MLX affine quantized
// weights, sharded folders, partial loads of a layer range, and folder-level
// errors. Every error must name the file or tensor at fault.
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layerpipe/model.h"
#include "lp_test.h"
#include "model/internal.h"

// ---- a tiny model description ---------------------------------------------

struct tens {
    char name[96];
    char dtype[8];
    int n_dims;
    int64_t shape[2];
    int shard; // 0 or 1
};

struct spec {
    int hidden, layers, heads, kv, head_dim, ff, vocab;
    bool tied;
    int bits, group; // quantization for matrices; 0 = BF16
    int n;
    struct tens t[128];
};

static struct spec tiny(bool tied) {
    struct spec s = {.hidden = 8, .layers = 2, .heads = 2, .kv = 1, .head_dim = 4, .ff = 16,
                     .vocab = 16, .tied = tied};
    return s;
}

static struct tens *add(struct spec *s, const char *name, const char *dtype, int n_dims,
                        int64_t d0, int64_t d1) {
    if (s->n >= (int)(sizeof s->t / sizeof s->t[0])) abort();
    struct tens *t = &s->t[s->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->dtype, sizeof t->dtype, "%s", dtype);
    t->n_dims = n_dims;
    t->shape[0] = d0;
    t->shape[1] = d1;
    return t;
}

static struct tens *find(struct spec *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->t[i].name, name) == 0) return &s->t[i];
    return NULL;
}

static void drop(struct spec *s, const char *name) {
    struct tens *t = find(s, name);
    if (!t) abort();
    *t = s->t[--s->n];
}

// prefix.weight, float or MLX-quantized (prefix.scales / .biases).
static void add_matrix(struct spec *s, const char *prefix, int64_t rows, int64_t cols, int bits,
                       int group) {
    char n[128];
    snprintf(n, sizeof n, "%s.weight", prefix);
    if (!bits) {
        add(s, n, "BF16", 2, rows, cols);
        return;
    }
    add(s, n, "U32", 2, rows, cols * bits / 32);
    snprintf(n, sizeof n, "%s.scales", prefix);
    add(s, n, "BF16", 2, rows, cols / group);
    snprintf(n, sizeof n, "%s.biases", prefix);
    add(s, n, "BF16", 2, rows, cols / group);
}

static void build(struct spec *s) {
    char p[128];
    int64_t d = s->hidden, q = (int64_t)s->heads * s->head_dim, kv = (int64_t)s->kv * s->head_dim;
    add_matrix(s, "model.embed_tokens", s->vocab, d, s->bits, s->group);
    for (int i = 0; i < s->layers; i++) {
#define VEC(suffix, len)                                                                           \
    snprintf(p, sizeof p, "model.layers.%d.%s.weight", i, suffix);                                 \
    add(s, p, "BF16", 1, len, 0);
#define MAT(suffix, r, c)                                                                          \
    snprintf(p, sizeof p, "model.layers.%d.%s", i, suffix);                                        \
    add_matrix(s, p, r, c, s->bits, s->group);
        VEC("input_layernorm", d);
        VEC("post_attention_layernorm", d);
        VEC("self_attn.q_norm", s->head_dim);
        VEC("self_attn.k_norm", s->head_dim);
        MAT("self_attn.q_proj", q, d);
        MAT("self_attn.k_proj", kv, d);
        MAT("self_attn.v_proj", kv, d);
        MAT("self_attn.o_proj", d, q);
        MAT("mlp.gate_proj", s->ff, d);
        MAT("mlp.up_proj", s->ff, d);
        MAT("mlp.down_proj", d, s->ff);
#undef VEC
#undef MAT
    }
    add(s, "model.norm.weight", "BF16", 1, d, 0);
    if (!s->tied) add_matrix(s, "lm_head", s->vocab, d, s->bits, s->group);
}

static size_t dtype_bytes(const char *dt) {
    if (!strcmp(dt, "F32") || !strcmp(dt, "U32") || !strcmp(dt, "I32")) return 4;
    if (!strcmp(dt, "BF16") || !strcmp(dt, "F16")) return 2;
    if (!strcmp(dt, "I64")) return 8;
    return 1;
}

static size_t tens_bytes(const struct tens *t) {
    size_t n = dtype_bytes(t->dtype);
    for (int k = 0; k < t->n_dims; k++) n *= (size_t)t->shape[k];
    return n;
}

static size_t spec_bytes(const struct spec *s) {
    size_t n = 0;
    for (int i = 0; i < s->n; i++) n += tens_bytes(&s->t[i]);
    return n;
}

// ---- writing folders ------------------------------------------------------

static char g_root[1024];

static void mkdirs(const char *path) {
    char tmp[1200];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *c = tmp + 1; *c; c++)
        if (*c == '/') {
            *c = 0;
            mkdir(tmp, 0755);
            *c = '/';
        }
    mkdir(tmp, 0755);
}

static const char *SHARD_NAMES[2] = {"model-00001-of-00002.safetensors",
                                     "model-00002-of-00002.safetensors"};

// A fresh folder g_root/name with nothing of ours left in it.
static const char *case_dir(const char *name) {
    static char dir[1200];
    snprintf(dir, sizeof dir, "%s/%s", g_root, name);
    mkdirs(dir);
    const char *files[] = {"config.json", "generation_config.json", "model.safetensors",
                           "model.safetensors.index.json", SHARD_NAMES[0], SHARD_NAMES[1]};
    char p[1400];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    return dir;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[1400];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", p);
        abort();
    }
}

// Writes the tensors of shard `shard` (all when shard < 0) as safetensors.
static void write_st(const char *path, const struct spec *s, int shard) {
    size_t cap = 65536, o = 0, off = 0;
    char *h = malloc(cap);
    if (!h) abort();
    o += (size_t)snprintf(h + o, cap - o, "{\"__metadata__\": {\"format\": \"pt\"}");
    for (int i = 0; i < s->n; i++) {
        const struct tens *t = &s->t[i];
        if (shard >= 0 && t->shard != shard) continue;
        size_t nb = tens_bytes(t);
        o += (size_t)snprintf(h + o, cap - o, ", \"%s\": {\"dtype\": \"%s\", \"shape\": [", t->name,
                              t->dtype);
        for (int k = 0; k < t->n_dims; k++)
            o += (size_t)snprintf(h + o, cap - o, "%s%lld", k ? ", " : "", (long long)t->shape[k]);
        o += (size_t)snprintf(h + o, cap - o, "], \"data_offsets\": [%zu, %zu]}", off, off + nb);
        off = (off + nb + 7) / 8 * 8;
    }
    o += (size_t)snprintf(h + o, cap - o, "}");
    if (o >= cap) abort();
    while (o % 8) h[o++] = ' ';
    uint8_t *data = calloc(off ? off : 1, 1);
    if (!data) abort();
    size_t pos = 0;
    for (int i = 0; i < s->n; i++) {
        const struct tens *t = &s->t[i];
        if (shard >= 0 && t->shard != shard) continue;
        size_t nb = tens_bytes(t);
        for (size_t b = 0; b < nb; b++) {
            // BF16/F16: 0x3F80 (bf16 1.0) / other: a byte pattern
            if (!strcmp(t->dtype, "BF16")) data[pos + b] = (b & 1) ? 0x3F : 0x80;
            else if (!strcmp(t->dtype, "F32")) data[pos + b] = (uint8_t[]){0, 0, 0x80, 0x3F}[b & 3];
            else data[pos + b] = (uint8_t)(b * 13 + (size_t)i);
        }
        pos = (pos + nb + 7) / 8 * 8;
    }
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    uint8_t len[8];
    for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)o >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(h, 1, o, f);
    fwrite(data, 1, off, f);
    fclose(f);
    free(h);
    free(data);
}

static void write_config(const char *dir, const struct spec *s, const char *extra) {
    char text[2048];
    char quant[128] = "";
    if (s->bits)
        snprintf(quant, sizeof quant, ", \"quantization\": {\"bits\": %d, \"group_size\": %d}",
                 s->bits, s->group);
    snprintf(text, sizeof text,
             "{\"model_type\": \"qwen3\", \"vocab_size\": %d, \"hidden_size\": %d,"
             " \"intermediate_size\": %d, \"num_hidden_layers\": %d,"
             " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d,"
             " \"rope_theta\": 1000000, \"rms_norm_eps\": 1e-06, \"eos_token_id\": 7,"
             " \"tie_word_embeddings\": %s%s%s}",
             s->vocab, s->hidden, s->ff, s->layers, s->heads, s->kv, s->head_dim,
             s->tied ? "true" : "false", quant, extra ? extra : "");
    write_text(dir, "config.json", text);
}

// config.json + model.safetensors
static const char *write_model(const char *name, const struct spec *s) {
    const char *dir = case_dir(name);
    write_config(dir, s, NULL);
    char p[1400];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    write_st(p, s, -1);
    return dir;
}

// config.json + two shards + index (weight_map from t->shard; `bad_shard`
// replaces the file named for the first tensor when not NULL).
static const char *write_sharded(const char *name, const struct spec *s, const char *bad_shard) {
    const char *dir = case_dir(name);
    write_config(dir, s, NULL);
    char p[1400];
    for (int k = 0; k < 2; k++) {
        snprintf(p, sizeof p, "%s/%s", dir, SHARD_NAMES[k]);
        write_st(p, s, k);
    }
    size_t cap = 65536, o = 0;
    char *idx = malloc(cap);
    if (!idx) abort();
    o += (size_t)snprintf(idx + o, cap - o,
                          "{\"metadata\": {\"total_size\": %zu}, \"weight_map\": {",
                          spec_bytes(s));
    for (int i = 0; i < s->n; i++)
        o += (size_t)snprintf(idx + o, cap - o, "%s\"%s\": \"%s\"", i ? ", " : "", s->t[i].name,
                              (i == 0 && bad_shard) ? bad_shard : SHARD_NAMES[s->t[i].shard]);
    o += (size_t)snprintf(idx + o, cap - o, "}}");
    if (o >= cap) abort();
    write_text(dir, "model.safetensors.index.json", idx);
    free(idx);
    return dir;
}

// ---- checks ---------------------------------------------------------------

static struct lp_model_load_params params(int begin, int end, bool embed, bool head) {
    struct lp_model_load_params p = {begin, end, embed, head};
    return p;
}

// Opens dir expecting failure with status and message needles.
static void expect_fail(const char *dir, const struct lp_model_load_params *p, enum lp_status want,
                        const char *n1, const char *n2, int line) {
    struct lp_model *m = (struct lp_model *)1;
    struct lp_error err;
    lp_error_clear(&err);
    enum lp_status st = lp_model_open(&m, dir, p, &err);
    CHECK_MSG(st == want, "line %d: got %s (%s), want %s", line, lp_status_str(st), err.msg,
              lp_status_str(want));
    CHECK_MSG(m == NULL, "line %d: out not NULL on failure", line);
    if (st == LP_OK && m != (struct lp_model *)1) lp_model_close(m);
    if (n1) CHECK_MSG(strstr(err.msg, n1) != NULL, "line %d: msg lacks '%s': %s", line, n1, err.msg);
    if (n2) CHECK_MSG(strstr(err.msg, n2) != NULL, "line %d: msg lacks '%s': %s", line, n2, err.msg);
}
#define EXPECT_FAIL(dir, p, want, n1, n2) expect_fail(dir, p, want, n1, n2, __LINE__)

static struct lp_model *open_ok(const char *dir, const struct lp_model_load_params *p, int line) {
    struct lp_model *m = NULL;
    struct lp_error err;
    lp_error_clear(&err);
    enum lp_status st = lp_model_open(&m, dir, p, &err);
    CHECK_MSG(st == LP_OK && m != NULL, "line %d: %s: %s", line, lp_status_str(st), err.msg);
    return st == LP_OK ? m : NULL;
}
#define OPEN_OK(dir, p) open_ok(dir, p, __LINE__)

static void check_float_weight(const struct lp_weight *w, int64_t rows, int64_t cols,
                               enum lp_weight_format fmt, int line) {
    CHECK_MSG(w && w->format == fmt && w->rows == rows && w->cols == cols && w->data,
              "line %d: weight [%lld, %lld] fmt %d", line, (long long)(w ? w->rows : -1),
              (long long)(w ? w->cols : -1), w ? (int)w->format : -1);
}

static void test_tied_untied(void) {
    // tied: no lm_head tensor, the head is the embedding
    struct spec s = tiny(true);
    build(&s);
    const char *dir = write_model("tied", &s);
    write_text(dir, "generation_config.json",
               "{\"eos_token_id\": [7, 9], \"temperature\": 0.6, \"top_k\": 20}");
    struct lp_model *m = OPEN_OK(dir, NULL);
    if (m) {
        const struct lp_model_config *c = lp_model_config(m);
        CHECK(c->hidden_size == 8 && c->n_layers == 2 && c->n_heads == 2 && c->n_kv_heads == 1 &&
              c->head_dim == 4 && c->intermediate_size == 16 && c->vocab_size == 16 &&
              c->tie_word_embeddings);
        CHECK(c->n_eos_ids == 2 && c->eos_ids[0] == 7 && c->eos_ids[1] == 9);
        const struct lp_generation_config *g = lp_model_generation_config(m);
        CHECK(g->top_k == 20);
        CHECK_NEAR(g->temperature, 0.6, 1e-6);
        const struct lp_model_load_params *lp = lp_model_loaded(m);
        CHECK(lp->layer_begin == 0 && lp->layer_end == 2 && lp->load_embed && lp->load_head);
        for (int i = 0; i < 2; i++) {
            const struct lp_layer_weights *L = lp_model_layer(m, i);
            CHECK(L != NULL);
            if (!L) continue;
            check_float_weight(&L->wq, 8, 8, LP_WEIGHT_BF16, __LINE__);
            check_float_weight(&L->wk, 4, 8, LP_WEIGHT_BF16, __LINE__);
            check_float_weight(&L->wv, 4, 8, LP_WEIGHT_BF16, __LINE__);
            check_float_weight(&L->wo, 8, 8, LP_WEIGHT_BF16, __LINE__);
            check_float_weight(&L->w_gate, 16, 8, LP_WEIGHT_BF16, __LINE__);
            check_float_weight(&L->w_up, 16, 8, LP_WEIGHT_BF16, __LINE__);
            check_float_weight(&L->w_down, 8, 16, LP_WEIGHT_BF16, __LINE__);
            CHECK(L->attn_norm && L->ffn_norm && L->q_norm && L->k_norm);
            if (L->attn_norm) CHECK(L->attn_norm[0] == 1.0f && L->attn_norm[7] == 1.0f);
            if (L->k_norm) CHECK(L->k_norm[3] == 1.0f);
            CHECK(((const uint16_t *)L->wq.data)[0] == 0x3F80);
            CHECK(lp_weight_bytes(&L->wq) == 8 * 8 * 2);
        }
        CHECK(lp_model_layer(m, 2) == NULL);
        CHECK(lp_model_layer(m, -1) == NULL);
        const struct lp_weight *e = lp_model_embedding(m), *h = lp_model_head(m);
        check_float_weight(e, 16, 8, LP_WEIGHT_BF16, __LINE__);
        check_float_weight(h, 16, 8, LP_WEIGHT_BF16, __LINE__);
        CHECK(e && h && e->data == h->data);
        const float *fn = lp_model_final_norm(m);
        CHECK(fn && fn[0] == 1.0f);
        CHECK_MSG(lp_model_weight_bytes(m) == spec_bytes(&s), "%zu vs %zu",
                  lp_model_weight_bytes(m), spec_bytes(&s));
        lp_model_close(m);
    }
    // tied, head without embedding: head present, embedding NULL
    struct lp_model_load_params p = params(0, 0, false, true);
    m = OPEN_OK(dir, &p);
    if (m) {
        CHECK(lp_model_embedding(m) == NULL);
        CHECK(lp_model_head(m) != NULL);
        CHECK(lp_model_final_norm(m) != NULL);
        CHECK(lp_model_layer(m, 0) == NULL && lp_model_layer(m, 1) == NULL);
        lp_model_close(m);
    }
    lp_model_close(NULL);

    // untied: lm_head present and distinct
    s = tiny(false);
    build(&s);
    dir = write_model("untied", &s);
    m = OPEN_OK(dir, NULL);
    if (m) {
        const struct lp_weight *e = lp_model_embedding(m), *h = lp_model_head(m);
        check_float_weight(h, 16, 8, LP_WEIGHT_BF16, __LINE__);
        CHECK(e && h && e->data != h->data);
        CHECK(lp_model_weight_bytes(m) == spec_bytes(&s));
        CHECK(lp_model_config(m)->n_eos_ids == 1);
        lp_model_close(m);
    }
    // untied without lm_head
    drop(&s, "lm_head.weight");
    dir = write_model("untied_no_head", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "lm_head", dir);
    // ... but fine when the head is not loaded
    p = params(0, -1, true, false);
    m = OPEN_OK(dir, &p);
    if (m) {
        CHECK(lp_model_head(m) == NULL && lp_model_final_norm(m) == NULL);
        CHECK(lp_model_embedding(m) != NULL);
        lp_model_close(m);
    }
}

static void test_bad_tensors(void) {
    struct spec s;
    const char *dir;
    // missing tensors: a matrix, a norm, the final norm, the embedding
    const char *missing[] = {"model.layers.1.mlp.up_proj.weight",
                             "model.layers.0.self_attn.k_norm.weight",
                             "model.norm.weight", "model.embed_tokens.weight"};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        s = tiny(false);
        build(&s);
        drop(&s, missing[i]);
        dir = write_model("missing", &s);
        EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, missing[i], dir);
    }
    // weight files with a layer past num_hidden_layers: another model, refused
    s = tiny(true);
    s.layers = 3;
    build(&s);
    s.layers = 2; // config.json says 2
    dir = write_model("extra_layer", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.2.", "num_hidden_layers 2");
    // shape disagreeing with config: names tensor and expected shape
    s = tiny(true);
    build(&s);
    find(&s, "model.layers.0.self_attn.k_proj.weight")->shape[0] = 8;
    dir = write_model("bad_shape", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.self_attn.k_proj.weight", "[4, 8]");
    s = tiny(true);
    build(&s);
    find(&s, "model.layers.1.mlp.down_proj.weight")->shape[1] = 8; // transposed-ish
    dir = write_model("bad_shape", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.1.mlp.down_proj.weight", "[8, 16]");
    s = tiny(true);
    build(&s);
    struct tens *t = find(&s, "model.layers.0.mlp.gate_proj.weight");
    t->n_dims = 1;
    t->shape[0] = 128;
    dir = write_model("bad_shape", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.mlp.gate_proj.weight", "[16, 8]");
    s = tiny(true);
    build(&s);
    find(&s, "model.embed_tokens.weight")->shape[0] = 15;
    dir = write_model("bad_shape", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.embed_tokens.weight", "[16, 8]");
    s = tiny(true);
    build(&s);
    find(&s, "model.layers.1.input_layernorm.weight")->shape[0] = 4;
    dir = write_model("bad_shape", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.1.input_layernorm.weight", "[8]");
    s = tiny(true);
    build(&s);
    t = find(&s, "model.layers.0.self_attn.q_norm.weight");
    t->n_dims = 2;
    t->shape[0] = 1;
    t->shape[1] = 4;
    dir = write_model("bad_shape", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.self_attn.q_norm.weight", "[4]");
    // wrong dtype for a matrix and for a norm
    const char *bad_dtypes[] = {"I32", "U8", "I64", "U32"};
    for (size_t i = 0; i < sizeof bad_dtypes / sizeof bad_dtypes[0]; i++) {
        s = tiny(true);
        build(&s);
        snprintf(find(&s, "model.layers.1.self_attn.o_proj.weight")->dtype, 8, "%s",
                 bad_dtypes[i]);
        dir = write_model("bad_dtype", &s);
        EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.1.self_attn.o_proj.weight",
                    bad_dtypes[i]);
    }
    s = tiny(true);
    build(&s);
    snprintf(find(&s, "model.layers.0.post_attention_layernorm.weight")->dtype, 8, "I32");
    dir = write_model("bad_dtype", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.post_attention_layernorm.weight", "I32");
    // F32 and F16 matrices and norms are fine
    s = tiny(true);
    build(&s);
    snprintf(find(&s, "model.layers.0.self_attn.q_proj.weight")->dtype, 8, "F32");
    snprintf(find(&s, "model.layers.0.self_attn.k_proj.weight")->dtype, 8, "F16");
    snprintf(find(&s, "model.layers.0.input_layernorm.weight")->dtype, 8, "F32");
    dir = write_model("float_mix", &s);
    struct lp_model *m = OPEN_OK(dir, NULL);
    if (m) {
        const struct lp_layer_weights *L = lp_model_layer(m, 0);
        CHECK(L && L->wq.format == LP_WEIGHT_F32 && L->wk.format == LP_WEIGHT_F16 &&
              L->wv.format == LP_WEIGHT_BF16);
        CHECK(L && L->attn_norm && L->attn_norm[0] == 1.0f);
        CHECK(lp_model_weight_bytes(m) == spec_bytes(&s));
        lp_model_close(m);
    }
    // a corrupt safetensors file: error names model.safetensors
    dir = case_dir("corrupt_st");
    s = tiny(true);
    write_config(dir, &s, NULL);
    write_text(dir, "model.safetensors", "\x10\0\0\0\0\0\0\0{\"a\": 1}       ");
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.safetensors", NULL);
}

static struct spec mlx_spec(int bits, int group) {
    struct spec s = {.hidden = 64, .layers = 2, .heads = 2, .kv = 1, .head_dim = 32, .ff = 64,
                     .vocab = 16, .tied = true, .bits = bits, .group = group};
    build(&s);
    return s;
}

static void test_mlx(void) {
    int cases[][2] = {{4, 32}, {8, 32}, {4, 64}, {8, 64}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int bits = cases[k][0], group = cases[k][1];
        struct spec s = mlx_spec(bits, group);
        const char *dir = write_model("mlx", &s);
        struct lp_model *m = OPEN_OK(dir, NULL);
        if (!m) continue;
        CHECK(lp_model_config(m)->quant_bits == bits);
        CHECK(lp_model_config(m)->quant_group_size == group);
        const struct lp_layer_weights *L = lp_model_layer(m, 1);
        const struct lp_weight *ws[] = {L ? &L->wq : NULL,     L ? &L->wk : NULL,
                                        L ? &L->wo : NULL,     L ? &L->w_down : NULL,
                                        lp_model_embedding(m), lp_model_head(m)};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) {
            const struct lp_weight *w = ws[i];
            CHECK_MSG(w && w->format == LP_WEIGHT_MLX_AFFINE && w->bits == bits &&
                          w->group_size == group && w->cols == 64 && w->data && w->scales &&
                          w->biases && w->scale_dtype == LP_DTYPE_BF16,
                      "bits %d group %d weight %zu", bits, group, i);
            if (w)
                CHECK(lp_weight_bytes(w) == (size_t)w->rows * (64 * bits / 8) +
                                                2 * (size_t)w->rows * (64 / group) * 2);
        }
        if (L) CHECK(L->wk.rows == 32 && L->wq.rows == 64);
        CHECK(lp_model_weight_bytes(m) == spec_bytes(&s));
        lp_model_close(m);
    }
    // scales present, biases missing
    struct spec s = mlx_spec(4, 32);
    drop(&s, "model.layers.0.mlp.gate_proj.biases");
    const char *dir = write_model("mlx_no_biases", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.mlp.gate_proj.biases", dir);
    // codes not U32
    s = mlx_spec(4, 32);
    snprintf(find(&s, "model.layers.0.mlp.up_proj.weight")->dtype, 8, "I32");
    dir = write_model("mlx_bad", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.mlp.up_proj.weight", "U32");
    // scales of the wrong dtype
    s = mlx_spec(4, 32);
    snprintf(find(&s, "model.layers.0.mlp.up_proj.scales")->dtype, 8, "F32");
    snprintf(find(&s, "model.layers.0.mlp.up_proj.biases")->dtype, 8, "F32");
    dir = write_model("mlx_bad", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.mlp.up_proj.scales", "F32");
    // biases disagreeing with scales
    s = mlx_spec(4, 32);
    find(&s, "model.layers.1.self_attn.v_proj.biases")->shape[1] = 1;
    dir = write_model("mlx_bad", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.1.self_attn.v_proj.biases", NULL);
    // unsupported bit width (2-bit codes: [rows, 4])
    s = mlx_spec(4, 32);
    find(&s, "model.layers.0.self_attn.q_proj.weight")->shape[1] = 4;
    dir = write_model("mlx_bad", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_UNSUPPORTED, "model.layers.0.self_attn.q_proj.weight", NULL);
    // codes with a width that is no bit count at all ([rows, 9] for 64 columns)
    s = mlx_spec(4, 32);
    find(&s, "model.layers.0.self_attn.q_proj.weight")->shape[1] = 9;
    dir = write_model("mlx_bad", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.self_attn.q_proj.weight", NULL);
    // unsupported group size (16: scales [rows, 4])
    s = mlx_spec(4, 32);
    find(&s, "model.layers.0.self_attn.q_proj.scales")->shape[1] = 4;
    find(&s, "model.layers.0.self_attn.q_proj.biases")->shape[1] = 4;
    dir = write_model("mlx_bad", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_UNSUPPORTED, "model.layers.0.self_attn.q_proj.scales", NULL);
    // wrong rows
    s = mlx_spec(8, 32);
    find(&s, "model.layers.0.self_attn.k_proj.weight")->shape[0] = 64;
    dir = write_model("mlx_bad", &s);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.self_attn.k_proj.weight", NULL);

    // Mixed: only down_proj quantized, with 448 input columns (4-bit codes
    // [8, 56], group 32 -> scales [8, 14]).
    struct spec mix = tiny(true);
    mix.ff = 448;
    build(&mix);
    drop(&mix, "model.layers.0.mlp.down_proj.weight");
    add_matrix(&mix, "model.layers.0.mlp.down_proj", 8, 448, 4, 32);
    dir = write_model("mlx_mixed", &mix);
    struct lp_model *m = OPEN_OK(dir, NULL);
    if (m) {
        const struct lp_layer_weights *L = lp_model_layer(m, 0);
        CHECK(L && L->w_down.format == LP_WEIGHT_MLX_AFFINE && L->w_down.bits == 4 &&
              L->w_down.group_size == 32 && L->w_down.cols == 448);
        CHECK(L && L->w_up.format == LP_WEIGHT_BF16);
        lp_model_close(m);
    }
    // ... and codes [8, 64] are the wrong width for 448 columns (4 bits needs
    // 56, 8 bits 112): the file must be rejected, not read as 4-bit with a
    // 64-word row stride.
    find(&mix, "model.layers.0.mlp.down_proj.weight")->shape[1] = 64;
    dir = write_model("mlx_mixed_bad", &mix);
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.0.mlp.down_proj.weight", NULL);
}

static void test_sharded(void) {
    struct spec s = tiny(false);
    build(&s);
    // layer 1, the norm and lm_head in shard 2
    for (int i = 0; i < s.n; i++)
        s.t[i].shard = strstr(s.t[i].name, "layers.1.") || strstr(s.t[i].name, "lm_head") ||
                       !strcmp(s.t[i].name, "model.norm.weight");
    const char *dir = write_sharded("sharded", &s, NULL);
    struct lp_model *m = OPEN_OK(dir, NULL);
    if (m) {
        CHECK(lp_model_layer(m, 0) && lp_model_layer(m, 1));
        CHECK(lp_model_head(m) && lp_model_embedding(m) && lp_model_final_norm(m));
        CHECK(lp_model_weight_bytes(m) == spec_bytes(&s));
        const struct lp_layer_weights *L1 = lp_model_layer(m, 1);
        CHECK(L1 && L1->w_down.rows == 8 && L1->w_down.cols == 16);
        lp_model_close(m);
    }
    // a stage with layer 1 and the head touches shard 2 only for tensors
    struct lp_model_load_params p = params(1, 2, false, true);
    m = OPEN_OK(dir, &p);
    if (m) {
        CHECK(lp_model_layer(m, 0) == NULL && lp_model_layer(m, 1) != NULL);
        CHECK(lp_model_embedding(m) == NULL && lp_model_head(m) != NULL);
        lp_model_close(m);
    }
    // index naming a missing shard
    dir = write_sharded("sharded_missing", &s, "model-00003-of-00002.safetensors");
    EXPECT_FAIL(dir, NULL, LP_ERR_IO, "model-00003-of-00002.safetensors", NULL);
    // index with a path escaping the folder
    const char *evil[] = {"../x", "../sharded/model-00001-of-00002.safetensors", "/etc/passwd",
                          "sub/x.safetensors", ".."};
    for (size_t i = 0; i < sizeof evil / sizeof evil[0]; i++) {
        dir = write_sharded("sharded_evil", &s, evil[i]);
        EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, evil[i], "index");
    }
    // a tensor in no shard
    struct spec s2 = s;
    dir = write_sharded("sharded_lost", &s2, NULL);
    {
        // rewrite shard 2 without layer 1's up_proj
        drop(&s2, "model.layers.1.mlp.up_proj.weight");
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, SHARD_NAMES[1]);
        write_st(path, &s2, 1);
    }
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.layers.1.mlp.up_proj.weight", NULL);
    // malformed index
    dir = write_sharded("sharded_badindex", &s, NULL);
    write_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.safetensors.index.json", "weight_map");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": ");
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.safetensors.index.json", NULL);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 5}}");
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "model.safetensors.index.json", "'a'");
}

static void test_partial_and_folder(void) {
    struct spec s = tiny(false);
    build(&s);
    const char *dir = write_model("partial", &s);
    struct lp_model_load_params p = params(1, 2, false, false);
    struct lp_model *m = OPEN_OK(dir, &p);
    if (m) {
        CHECK(lp_model_layer(m, 0) == NULL);
        CHECK(lp_model_layer(m, 1) != NULL);
        CHECK(lp_model_embedding(m) == NULL);
        CHECK(lp_model_head(m) == NULL);
        CHECK(lp_model_final_norm(m) == NULL);
        CHECK(lp_model_loaded(m)->layer_begin == 1 && lp_model_loaded(m)->layer_end == 2);
        lp_model_close(m);
    }
    // tensors outside the range are never looked at: a folder lacking layer 0,
    // the embedding and the head still serves layer 1
    struct spec s1 = tiny(false);
    build(&s1);
    for (int i = s1.n - 1; i >= 0; i--)
        if (strstr(s1.t[i].name, "layers.0.") || strstr(s1.t[i].name, "embed") ||
            strstr(s1.t[i].name, "lm_head") || strstr(s1.t[i].name, "model.norm"))
            drop(&s1, s1.t[i].name);
    dir = write_model("partial_only1", &s1);
    m = OPEN_OK(dir, &p);
    if (m) {
        CHECK(lp_model_layer(m, 1) != NULL && lp_model_layer(m, 0) == NULL);
        CHECK(lp_model_weight_bytes(m) == spec_bytes(&s1));
        lp_model_close(m);
    }
    p = params(0, 2, false, false);
    EXPECT_FAIL(dir, &p, LP_ERR_FORMAT, "model.layers.0.", NULL);
    // empty range with nothing loaded
    p = params(1, 1, false, false);
    m = OPEN_OK(dir, &p);
    if (m) {
        CHECK(lp_model_layer(m, 0) == NULL && lp_model_layer(m, 1) == NULL);
        CHECK(lp_model_weight_bytes(m) == 0);
        lp_model_close(m);
    }
    // layer ranges outside the model
    dir = write_model("partial", &s);
    int bad[][2] = {{0, 3}, {-1, 1}, {2, 1}, {3, 3}, {5, -1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = params(bad[i][0], bad[i][1], true, true);
        EXPECT_FAIL(dir, &p, LP_ERR_INVALID_ARG, dir, NULL);
    }
    // no config.json
    dir = case_dir("no_config");
    char path[1400];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    write_st(path, &s, -1);
    EXPECT_FAIL(dir, NULL, LP_ERR_IO, "config.json", dir);
    // bad config.json: error names it and the field
    write_text(dir, "config.json", "{\"model_type\": \"llama\"}");
    EXPECT_FAIL(dir, NULL, LP_ERR_UNSUPPORTED, "config.json", "llama");
    write_config(dir, &s, ", \"hidden_size\": 8");
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "config.json", NULL);
    // bad generation_config.json
    write_config(dir, &s, NULL);
    write_text(dir, "generation_config.json", "{\"top_p\": 7}");
    EXPECT_FAIL(dir, NULL, LP_ERR_FORMAT, "generation_config.json", "top_p");
    // no weights at all
    dir = case_dir("no_weights");
    write_config(dir, &s, NULL);
    EXPECT_FAIL(dir, NULL, LP_ERR_IO, "model.safetensors", NULL);
    // a folder that does not exist
    snprintf(path, sizeof path, "%s/does/not/exist", g_root);
    EXPECT_FAIL(path, NULL, LP_ERR_IO, "config.json", NULL);
}

int main(void) {
    const char *base = getenv("LP_WORK_DIR");
    if (!base || !*base) base = "/tmp";
    snprintf(g_root, sizeof g_root, "%s/test_model_open", base);
    mkdirs(g_root);
    test_tied_untied();
    test_bad_tensors();
    test_mlx();
    test_sharded();
    test_partial_and_folder();
    return lp_test_finish("test_model_open");
}
