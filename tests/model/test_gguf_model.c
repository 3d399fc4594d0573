// SPDX-License-Identifier: MIT
// test_gguf_model.c -- lp_model_open on GGUF models made by lp_genmodel:
// the same seed in gguf-f32 / gguf-bf16 (one file and gguf-split's three)
// gives the config and the very weights of the hf-bf16 folder; a Q4_K_M
// file keeps its blocks with llama.cpp's mix of types; partial loads; the
// fingerprint (split == whole, type or bytes changed -> different). Then
// files rewritten here with one thing wrong each (architecture, keys,
// tensors, shapes, types, splits, folders): a clear error naming it, and a
// model file cut at many lengths: an error, never a crash.
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "layerpipe/gguf.h"
#include "layerpipe/model.h"
#include "lp_test.h"
#include "model/internal.h"
#include "model_fixture.h"
#include "util/fp16.h"

#define TINY "--layers 2 --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 128 --vocab 512"
#define QSHAPE "--layers 3 --hidden 256 --heads 4 --kv-heads 2 --head-dim 64 --intermediate 512 --vocab 300"

static const char *work;

static struct lp_model *open_ok(const char *path, const struct lp_model_load_params *p) {
    struct lp_model *m = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_model_open(&m, path, p, &err), &err);
    return m;
}

// The status of opening path; the message in err.
static enum lp_status open_st(const char *path, struct lp_error *err) {
    struct lp_model *m = NULL;
    lp_error_clear(err);
    enum lp_status st = lp_model_open(&m, path, NULL, err);
    CHECK((st == LP_OK) == (m != NULL));
    if (st != LP_OK) CHECK_MSG(err->msg[0] != '\0', "%s: no message", path);
    lp_model_close(m);
    return st;
}

// a[i] as float, for the float formats.
static float at(const struct lp_weight *w, int64_t i) {
    switch (w->format) {
    case LP_WEIGHT_F32: return ((const float *)w->data)[i];
    case LP_WEIGHT_BF16: return lp_bf16_to_f32(((const uint16_t *)w->data)[i]);
    case LP_WEIGHT_F16: return lp_f16_to_f32(((const uint16_t *)w->data)[i]);
    default: return NAN;
    }
}

static void same_weight(const struct lp_weight *a, const struct lp_weight *b, const char *what) {
    CHECK_MSG(a->rows == b->rows && a->cols == b->cols, "%s: shape", what);
    int64_t n = a->rows * a->cols, bad = 0;
    for (int64_t i = 0; i < n; i++) bad += at(a, i) != at(b, i);
    CHECK_MSG(bad == 0, "%s: %lld of %lld values differ", what, (long long)bad, (long long)n);
}

static void same_vec(const float *a, const float *b, int n, const char *what) {
    CHECK_MSG(a && b && memcmp(a, b, (size_t)n * 4) == 0, "%s differs", what);
}

// gguf-f32 / gguf-bf16 of seed 101 against hf-bf16 of seed 101.
static void test_same_model(void) {
    char hf[1100], g32[1100], g16[1100], gsplit[1100], path[1200];
    CHECK(lp_fixture_model("gm_hf", "--seed 101 --format hf-bf16 --tied 0 " TINY, hf, sizeof hf) == 0);
    CHECK(lp_fixture_model("gm_f32", "--seed 101 --format gguf-f32 --tied 0 " TINY, g32, sizeof g32) == 0);
    CHECK(lp_fixture_model("gm_bf16", "--seed 101 --format gguf-bf16 --tied 0 " TINY, g16, sizeof g16) == 0);
    CHECK(lp_fixture_model("gm_split", "--seed 101 --format gguf-f32 --tied 0 --sharded 3 " TINY,
                           gsplit, sizeof gsplit) == 0);
    struct lp_model *ref = open_ok(hf, NULL);
    snprintf(path, sizeof path, "%s/model-00002-of-00003.gguf", gsplit); // any split names the model
    const char *paths[4] = {g32, g16, path, gsplit};
    uint64_t fp[4] = {0};
    for (int k = 0; k < 4 && ref; k++) {
        struct lp_model *m = open_ok(paths[k], NULL);
        if (!m) continue;
        const struct lp_model_config *a = lp_model_config(ref), *b = lp_model_config(m);
        CHECK(a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
              a->intermediate_size == b->intermediate_size && a->n_layers == b->n_layers &&
              a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads &&
              a->head_dim == b->head_dim && a->max_position_embeddings == b->max_position_embeddings &&
              a->rms_norm_eps == b->rms_norm_eps && a->rope_theta == b->rope_theta &&
              a->tie_word_embeddings == b->tie_word_embeddings && !b->tie_word_embeddings &&
              a->bos_token_id == b->bos_token_id && b->quant_bits == 0);
        CHECK_MSG(a->n_eos_ids == b->n_eos_ids && b->n_eos_ids == 2 &&
                      a->eos_ids[0] == b->eos_ids[0] && a->eos_ids[1] == b->eos_ids[1],
                  "eos ids: %d (%d %d) vs %d", b->n_eos_ids, b->eos_ids[0], b->eos_ids[1], a->n_eos_ids);
        CHECK(lp_model_embedding(m)->format == (k == 1 ? LP_WEIGHT_BF16 : LP_WEIGHT_F32));
        same_weight(lp_model_embedding(ref), lp_model_embedding(m), "embedding");
        same_weight(lp_model_head(ref), lp_model_head(m), "head");
        same_vec(lp_model_final_norm(ref), lp_model_final_norm(m), b->hidden_size, "final norm");
        for (int i = 0; i < b->n_layers; i++) {
            const struct lp_layer_weights *x = lp_model_layer(ref, i), *y = lp_model_layer(m, i);
            same_weight(&x->wq, &y->wq, "wq");
            same_weight(&x->wk, &y->wk, "wk");
            same_weight(&x->wv, &y->wv, "wv");
            same_weight(&x->wo, &y->wo, "wo");
            same_weight(&x->w_gate, &y->w_gate, "w_gate");
            same_weight(&x->w_up, &y->w_up, "w_up");
            same_weight(&x->w_down, &y->w_down, "w_down");
            same_vec(x->attn_norm, y->attn_norm, b->hidden_size, "attn_norm");
            same_vec(x->ffn_norm, y->ffn_norm, b->hidden_size, "ffn_norm");
            same_vec(x->q_norm, y->q_norm, b->head_dim, "q_norm");
            same_vec(x->k_norm, y->k_norm, b->head_dim, "k_norm");
        }
        if (k == 1) // bf16: the very bytes of the safetensors file
            CHECK(memcmp(lp_model_layer(ref, 1)->w_down.data, lp_model_layer(m, 1)->w_down.data,
                         64 * 128 * 2) == 0);
        fp[k] = lp_model_fingerprint(m);
        lp_model_close(m);
    }
    // one model whole or split: one fingerprint; another type: another
    CHECK(fp[0] == fp[2] && fp[2] == fp[3]);
    CHECK(fp[0] != fp[1] && fp[0] != lp_model_fingerprint(ref));
    // a stage's share: layer 1 only, no embedding or head; same fingerprint
    struct lp_model_load_params p = {1, 2, false, false};
    struct lp_model *part = open_ok(gsplit, &p);
    if (part) {
        CHECK(lp_model_layer(part, 0) == NULL && lp_model_layer(part, 1) != NULL);
        CHECK(lp_model_embedding(part) == NULL && lp_model_head(part) == NULL);
        CHECK(lp_model_fingerprint(part) == fp[0]);
    }
    lp_model_close(part);
    lp_model_close(ref);
}

// Q4_K_M: blocks kept as stored, llama.cpp's choice of types.
static void test_q4_k_m(void) {
    char dir[1100];
    CHECK(lp_fixture_model("gm_q4km", "--seed 7 --format gguf-q4_k_m --tied 1 " QSHAPE, dir,
                           sizeof dir) == 0);
    struct lp_model *m = open_ok(dir, NULL);
    if (!m) return;
    const struct lp_model_config *c = lp_model_config(m);
    CHECK(c->tie_word_embeddings && c->vocab_size == 300 && c->n_layers == 3);
    const struct lp_weight *e = lp_model_embedding(m);
    CHECK(e->format == LP_WEIGHT_GGML && e->ggml_type == LP_GGML_Q6_K && e->rows == 300 &&
          e->cols == 256 && lp_model_head(m)->data == e->data);
    for (int i = 0; i < 3; i++) {
        const struct lp_layer_weights *L = lp_model_layer(m, i);
        enum lp_ggml_type more = i == 2 ? LP_GGML_Q6_K : LP_GGML_Q4_K; // use_more_bits(i, 3)
        CHECK(L->wq.format == LP_WEIGHT_GGML && L->wq.ggml_type == LP_GGML_Q4_K);
        CHECK(L->wv.ggml_type == more && L->w_down.ggml_type == more);
        CHECK(L->w_gate.ggml_type == LP_GGML_Q4_K && L->w_down.rows == 256 && L->w_down.cols == 512);
        CHECK(lp_weight_bytes(&L->wq) == 256 * 144);
    }
    // the bytes are the file's, at ggml's offsets
    struct lp_gguf *g = NULL;
    struct lp_error err = {0};
    char path[1200];
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    CHECK_OK(lp_gguf_open(&g, path, &err), &err);
    const struct lp_gguf_tensor *t = g ? lp_gguf_find_tensor(g, "blk.2.ffn_down.weight") : NULL;
    CHECK(t && t->type == LP_GGML_Q6_K &&
          memcmp(t->data, lp_model_layer(m, 2)->w_down.data, t->n_bytes) == 0);
    lp_gguf_close(g);
    lp_model_close(m);
}

// ---- rewriting a file with one thing wrong -------------------------------------------

struct edit {
    const char *drop_key;      // leave this key out
    const char *str_key;       // set this string key ...
    const char *str_value;     // ... to this
    const char *u32_key;       // set this u32 key ...
    uint32_t u32_value;        // ... to this
    const char *drop_tensor;   // leave this tensor out
    const char *rename_from;   // rename a tensor
    const char *rename_to;
    const char *retype;        // write this tensor as Q8_0 (ne[0] must allow it)
    const char *reshape;       // swap this 2-D tensor's dims
};

static void copy_kv(struct lp_gguf_writer *w, const struct lp_gguf_kv *kv, struct lp_error *err) {
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)kv->key.n_bytes, kv->key.ptr);
    if (kv->type == LP_GGUF_TYPE_STRING) {
        char *v = strndup((const char *)kv->value + 8, kv->value_bytes - 8);
        CHECK_OK(lp_gguf_writer_add_str(w, key, v, err), err);
        free(v);
    } else if (kv->type != LP_GGUF_TYPE_ARRAY) {
        CHECK_OK(lp_gguf_writer_add_scalar(w, key, kv->type, kv->value, err), err);
    } else if (kv->elem_type == LP_GGUF_TYPE_STRING) {
        struct lp_gguf_str *s = malloc((size_t)(kv->n_elems + 1) * sizeof *s);
        const char **p = malloc((size_t)(kv->n_elems + 1) * sizeof *p);
        size_t *lens = malloc((size_t)(kv->n_elems + 1) * sizeof *lens);
        lp_gguf_array_strs(kv, s);
        for (uint64_t i = 0; i < kv->n_elems; i++) p[i] = s[i].ptr, lens[i] = s[i].n_bytes;
        CHECK_OK(lp_gguf_writer_add_str_array(w, key, kv->n_elems, p, lens, err), err);
        free(s);
        free(p);
        free(lens);
    } else {
        CHECK_OK(lp_gguf_writer_add_array(w, key, kv->elem_type, kv->n_elems, kv->value, err), err);
    }
}

// Writes src (a one-file model) to dst with the edit applied.
static void rewrite(const char *src, const char *dst, const struct edit *e) {
    struct lp_error err = {0};
    struct lp_gguf *g = NULL;
    struct lp_gguf_writer *w = NULL;
    CHECK_OK(lp_gguf_open(&g, src, &err), &err);
    CHECK_OK(lp_gguf_writer_create(&w, &err), &err);
    if (!g || !w) goto done;
    for (int64_t i = 0; i < lp_gguf_n_kv(g); i++) {
        const struct lp_gguf_kv *kv = lp_gguf_kv_at(g, i);
        if ((e->drop_key && lp_gguf_str_eq(kv->key, e->drop_key)) ||
            (e->str_key && lp_gguf_str_eq(kv->key, e->str_key)) ||
            (e->u32_key && lp_gguf_str_eq(kv->key, e->u32_key)))
            continue;
        copy_kv(w, kv, &err);
    }
    if (e->str_key) CHECK_OK(lp_gguf_writer_add_str(w, e->str_key, e->str_value, &err), &err);
    if (e->u32_key)
        CHECK_OK(lp_gguf_writer_add_scalar(w, e->u32_key, LP_GGUF_TYPE_UINT32, &e->u32_value, &err),
                 &err);
    uint8_t *q8 = NULL;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) CHECK_OK(lp_gguf_writer_begin(w, dst, &err), &err);
        for (int64_t i = 0; i < lp_gguf_n_tensors(g); i++) {
            const struct lp_gguf_tensor *t = lp_gguf_tensor_at(g, i);
            if (e->drop_tensor && strcmp(t->name, e->drop_tensor) == 0) continue;
            const char *name = e->rename_from && strcmp(t->name, e->rename_from) == 0 ? e->rename_to
                                                                                        : t->name;
            bool retype = e->retype && strcmp(t->name, e->retype) == 0;
            int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
            if (e->reshape && strcmp(t->name, e->reshape) == 0) ne[0] = t->ne[1], ne[1] = t->ne[0];
            size_t n = retype ? t->n_bytes / 4 / 32 * 34 : t->n_bytes;
            if (pass == 0) {
                CHECK_OK(lp_gguf_writer_add_tensor(w, name, retype ? LP_GGML_Q8_0 : t->type,
                                                   t->n_dims, ne, &err),
                         &err);
            } else {
                const void *data = t->data;
                if (retype) data = q8 = calloc(1, n);
                CHECK_OK(lp_gguf_writer_put(w, name, data, n, &err), &err);
                free(q8);
                q8 = NULL;
            }
        }
    }
    CHECK_OK(lp_gguf_writer_finish(w, &err), &err);
done:
    lp_gguf_writer_destroy(w);
    lp_gguf_close(g);
}

// Rewrites src into a fresh folder work/gm_bad/NAME/model.gguf, opens it and
// checks the status and that the message holds `needle`.
static void bad(const char *src, const char *name, const struct edit *e, enum lp_status want,
                const char *needle) {
    char dir[1200], path[1300], cmd[1400];
    snprintf(dir, sizeof dir, "%s/gm_bad_%d", work, (int)getpid());
    mkdir(dir, 0755);
    snprintf(dir + strlen(dir), sizeof dir - strlen(dir), "/%s", name);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model.gguf", dir);
    rewrite(src, path, e);
    struct lp_error err;
    enum lp_status st = open_st(dir, &err);
    CHECK_MSG(st == want && strstr(err.msg, needle), "%s: got %s '%s', want %s '%s'", name,
              lp_status_str(st), err.msg, lp_status_str(want), needle);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static void test_bad_files(void) {
    char dir[1100], src[1200];
    CHECK(lp_fixture_model("gm_f32", "--seed 101 --format gguf-f32 --tied 0 " TINY, dir, sizeof dir) == 0);
    snprintf(src, sizeof src, "%s/model.gguf", dir);
    // the rewrite itself changes nothing
    bad(src, "same", &(struct edit){0}, LP_OK, "");
    bad(src, "arch", &(struct edit){.str_key = "general.architecture", .str_value = "llama"},
        LP_ERR_UNSUPPORTED, "general.architecture 'llama' is not supported");
    bad(src, "no_arch", &(struct edit){.drop_key = "general.architecture"}, LP_ERR_FORMAT,
        "missing metadata key 'general.architecture'");
    bad(src, "no_blocks", &(struct edit){.drop_key = "qwen3.block_count"}, LP_ERR_FORMAT,
        "missing metadata key 'qwen3.block_count'");
    bad(src, "no_eps", &(struct edit){.drop_key = "qwen3.attention.layer_norm_rms_epsilon"},
        LP_ERR_FORMAT, "layer_norm_rms_epsilon");
    bad(src, "eps_type", &(struct edit){.str_key = "qwen3.attention.layer_norm_rms_epsilon",
                                        .str_value = "1e-6"},
        LP_ERR_FORMAT, "expected a float");
    bad(src, "kv_heads", &(struct edit){.u32_key = "qwen3.attention.head_count_kv", .u32_value = 3},
        LP_ERR_FORMAT, "not a multiple of num_key_value_heads 3");
    bad(src, "value_len", &(struct edit){.u32_key = "qwen3.attention.value_length", .u32_value = 8},
        LP_ERR_UNSUPPORTED, "value_length 8");
    bad(src, "yarn", &(struct edit){.str_key = "qwen3.rope.scaling.type", .str_value = "yarn"},
        LP_ERR_UNSUPPORTED, "qwen3.rope.scaling.type 'yarn'");
    bad(src, "eos", &(struct edit){.u32_key = "tokenizer.ggml.eos_token_id", .u32_value = 512},
        LP_ERR_FORMAT, "tokenizer.ggml.eos_token_id' is 512, expected 0..511");
    bad(src, "layers", &(struct edit){.u32_key = "qwen3.block_count", .u32_value = 1},
        LP_ERR_FORMAT, "is for layer 1, but config.json has num_hidden_layers 1");
    bad(src, "more_layers", &(struct edit){.u32_key = "qwen3.block_count", .u32_value = 3},
        LP_ERR_FORMAT, "missing tensor 'model.layers.2.input_layernorm.weight'");
    bad(src, "no_up", &(struct edit){.drop_tensor = "blk.1.ffn_up.weight"}, LP_ERR_FORMAT,
        "missing tensor 'model.layers.1.mlp.up_proj.weight'");
    bad(src, "no_embd", &(struct edit){.drop_tensor = "token_embd.weight"}, LP_ERR_FORMAT,
        "no 2-D tensor 'token_embd.weight'");
    bad(src, "no_output", &(struct edit){.drop_tensor = "output.weight"}, LP_OK, "");
    bad(src, "shape", &(struct edit){.reshape = "blk.0.ffn_down.weight"}, LP_ERR_FORMAT,
        "tensor 'model.layers.0.mlp.down_proj.weight': shape [64, 128] expected");
    bad(src, "q8_norm", &(struct edit){.retype = "blk.0.ffn_norm.weight"}, LP_ERR_FORMAT,
        "Q8_0 blocks, expected a float");
    bad(src, "twice", &(struct edit){.rename_from = "output.weight", .rename_to = "lm_head.weight"},
        LP_OK, "");
    bad(src, "dup", &(struct edit){.rename_from = "blk.0.attn_q.weight",
                                   .rename_to = "model.layers.0.self_attn.k_proj.weight"},
        LP_ERR_FORMAT, "two tensors stand for 'model.layers.0.self_attn.k_proj.weight'");
    bad(src, "bias", &(struct edit){.rename_from = "blk.0.ffn_norm.weight",
                                    .rename_to = "blk.0.attn_q.bias"},
        LP_ERR_UNSUPPORTED, "attention_bias true is not supported");
    bad(src, "split_count", &(struct edit){.u32_key = "split.count", .u32_value = 2}, LP_ERR_FORMAT,
        "one split of a model");
    char rmdir_cmd[1200];
    snprintf(rmdir_cmd, sizeof rmdir_cmd, "rmdir '%s/gm_bad_%d'", work, (int)getpid());
    if (system(rmdir_cmd) != 0) fprintf(stderr, "could not remove the bad-file folder\n");
}

static void test_folders(void) {
    char g32[1100], gsplit[1100], d[1200], cmd[4096];
    struct lp_error err;
    CHECK(lp_fixture_model("gm_f32", "--seed 101 --format gguf-f32 --tied 0 " TINY, g32, sizeof g32) == 0);
    CHECK(lp_fixture_model("gm_split", "--seed 101 --format gguf-f32 --tied 0 --sharded 3 " TINY,
                           gsplit, sizeof gsplit) == 0);
    snprintf(d, sizeof d, "%s/gm_folders_%d", work, (int)getpid());
    // two models in one folder: ambiguous; a projector beside one: ignored
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && mkdir -p '%s/two' '%s/mm' '%s/gap' '%s/none' && cp '%s/model.gguf' "
             "'%s/two/a.gguf' && cp '%s/model.gguf' '%s/two/b.gguf' && cp '%s/model.gguf' "
             "'%s/mm/qwen.gguf' && cp '%s/model.gguf' '%s/mm/mmproj-qwen-f16.gguf' && cp "
             "'%s/model-00001-of-00003.gguf' '%s/model-00003-of-00003.gguf' '%s/gap/'",
             d, d, d, d, d, g32, d, g32, d, g32, d, g32, d, gsplit, gsplit, d);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s/two", d);
    CHECK(open_st(cmd, &err) == LP_ERR_INVALID_ARG && strstr(err.msg, "more than one GGUF model"));
    snprintf(cmd, sizeof cmd, "%s/mm", d);
    CHECK(open_st(cmd, &err) == LP_OK);
    snprintf(cmd, sizeof cmd, "%s/gap", d);
    CHECK_MSG(open_st(cmd, &err) == LP_ERR_IO && strstr(err.msg, "split 2 of 3 of this model is missing"),
              "%s", err.msg);
    snprintf(cmd, sizeof cmd, "%s/none", d); // neither config.json nor .gguf: the HF message
    CHECK(open_st(cmd, &err) == LP_ERR_IO && strstr(err.msg, "config.json"));
    snprintf(cmd, sizeof cmd, "%s/nothing.gguf", d);
    CHECK(open_st(cmd, &err) == LP_ERR_IO);
    // a split renamed so that it claims to be whole
    snprintf(cmd, sizeof cmd, "cp '%s/model-00002-of-00003.gguf' '%s/none/x.gguf'", gsplit, d);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s/none/x.gguf", d);
    CHECK_MSG(open_st(cmd, &err) == LP_ERR_FORMAT && strstr(err.msg, "one split of a model"), "%s",
              err.msg);
    // splits in the wrong order (split 1's file holds split 2)
    snprintf(cmd, sizeof cmd,
             "mkdir -p '%s/swap' && cp '%s/model-00002-of-00003.gguf' "
             "'%s/swap/m-00001-of-00003.gguf' && cp '%s/model-00001-of-00003.gguf' "
             "'%s/swap/m-00002-of-00003.gguf' && cp '%s/model-00003-of-00003.gguf' '%s/swap/m-00003-of-00003.gguf'",
             d, gsplit, d, gsplit, d, gsplit, d);
    CHECK(system(cmd) == 0);
    snprintf(cmd, sizeof cmd, "%s/swap", d);
    CHECK_MSG(open_st(cmd, &err) == LP_ERR_FORMAT && strstr(err.msg, "split.no 1, expected 0"), "%s",
              err.msg);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    CHECK(system(cmd) == 0);
}

// The model file cut short at many lengths: an error every time.
static void test_truncated(void) {
    char dir[1100], src[1200], dst[1300];
    CHECK(lp_fixture_model("gm_bf16", "--seed 101 --format gguf-bf16 --tied 0 " TINY, dir, sizeof dir) == 0);
    snprintf(src, sizeof src, "%s/model.gguf", dir);
    snprintf(dst, sizeof dst, "%s/gm_cut_%d.gguf", work, (int)getpid());
    FILE *f = fopen(src, "rb");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *img = malloc((size_t)n);
    CHECK(fread(img, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    int bad = 0, tries = 0;
    for (long len = 0; len < n; len += len < 4096 ? 7 : 997, tries++) {
        FILE *o = fopen(dst, "wb");
        fwrite(img, 1, (size_t)len, o);
        fclose(o);
        struct lp_error err;
        enum lp_status st = open_st(dst, &err);
        bad += st != LP_ERR_FORMAT;
        if (st != LP_ERR_FORMAT && bad < 4) fprintf(stderr, "cut at %ld: %s\n", len, err.msg);
    }
    CHECK_MSG(bad == 0, "%d of %d cut files did not fail with LP_ERR_FORMAT", bad, tries);
    unlink(dst);
    free(img);
}

int main(void) {
    work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    test_same_model();
    test_q4_k_m();
    test_bad_files();
    test_folders();
    test_truncated();
    return lp_test_finish("gguf_model");
}
