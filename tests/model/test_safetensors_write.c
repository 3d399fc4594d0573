// SPDX-License-Identifier: MIT
// test_safetensors_write.c -- the safetensors writer, checked by reading the
// file back by hand (8-byte length, JSON header parsed with jansson, data
// offsets and bytes), its streaming mode and misuse errors; then, when
// LP_TOOLS_DIR is set, lp_genmodel: a tiny model in hf-bf16 and sharded mlx4
// from one seed, whose dequantized MLX weights must match the bf16 ones.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "layerpipe/convert.h"
#include "util/fp16.h"
#include "lp_test.h"

// A whole file in memory.
struct blob {
    uint8_t *data;
    size_t n;
};

static struct blob read_all(const char *path) {
    struct blob b = {0};
    FILE *f = fopen(path, "rb");
    if (!f) return b;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    b.data = malloc(n > 0 ? (size_t)n : 1);
    if (b.data && fread(b.data, 1, (size_t)n, f) == (size_t)n) b.n = (size_t)n;
    fclose(f);
    return b;
}

// Parses the header of a safetensors image; returns the JSON (caller frees)
// and the start of the data section, or NULL.
static json_t *parse_header(const struct blob *b, const uint8_t **data_start) {
    if (b->n < 8) return NULL;
    uint64_t len = 0;
    for (int i = 0; i < 8; i++) len |= (uint64_t)b->data[i] << (8 * i);
    if (len > b->n - 8) return NULL;
    json_error_t jerr;
    json_t *j = json_loadb((const char *)b->data + 8, (size_t)len, 0, &jerr);
    *data_start = b->data + 8 + len;
    return j;
}

static void test_write_read(const char *dir) {
    struct lp_error err_buf = {0}, *err = &err_buf;
    char path[4096];
    snprintf(path, sizeof(path), "%s/st_write_test.safetensors", dir);

    float a[6] = {1, 2, 3, 4, 5, 6};                  // F32 [2, 3]
    uint16_t b[3] = {0x3f80, 0x4000, 0xc040};          // BF16 [3]
    uint32_t *c = malloc(5 * sizeof(uint32_t));        // U32 [5], owned by the writer
    for (int i = 0; i < 5; i++) c[i] = 0xdeadbe00u + (uint32_t)i;
    float scalar = 42.0f;                              // F32 [] (0 dims)

    struct lp_safetensors_writer *w = NULL;
    CHECK_OK(lp_safetensors_writer_create(&w, err), err);
    if (!w) return;
    CHECK_OK(lp_safetensors_writer_set_metadata(w, "format", "pt", err), err);
    CHECK_OK(lp_safetensors_writer_add(w, "zeta.a", LP_DTYPE_F32, 2, (int64_t[]){2, 3}, a, err),
             err);
    CHECK_OK(lp_safetensors_writer_add(w, "alpha.b", LP_DTYPE_BF16, 1, (int64_t[]){3}, b, err),
             err);
    CHECK_OK(lp_safetensors_writer_add_take(w, "m.c", LP_DTYPE_U32, 1, (int64_t[]){5}, c, err),
             err);
    CHECK_OK(lp_safetensors_writer_add(w, "s", LP_DTYPE_F32, 0, NULL, &scalar, err), err);
    CHECK_OK(lp_safetensors_writer_add(w, "empty", LP_DTYPE_BF16, 2, (int64_t[]){0, 4}, NULL, err),
             err);
    // Misuse: duplicate name, bad dims, reserved name.
    CHECK(lp_safetensors_writer_add(w, "m.c", LP_DTYPE_F32, 1, (int64_t[]){1}, a, err) ==
          LP_ERR_INVALID_ARG);
    CHECK(strstr(err->msg, "added twice") != NULL);
    CHECK(lp_safetensors_writer_add(w, "neg", LP_DTYPE_F32, 1, (int64_t[]){-1}, a, err) ==
          LP_ERR_INVALID_ARG);
    CHECK(lp_safetensors_writer_add(w, "__metadata__", LP_DTYPE_F32, 1, (int64_t[]){1}, a, err) ==
          LP_ERR_INVALID_ARG);
    CHECK(lp_safetensors_writer_count(w) == 5);
    CHECK(lp_safetensors_writer_data_bytes(w) == 24 + 6 + 20 + 4);
    CHECK_OK(lp_safetensors_writer_write(w, path, err), err);
    lp_safetensors_writer_destroy(w);

    struct blob f = read_all(path);
    const uint8_t *data = NULL;
    json_t *h = parse_header(&f, &data);
    CHECK(h != NULL);
    if (!h) {
        free(f.data);
        return;
    }
    uint64_t header_len = (uint64_t)(data - f.data) - 8;
    CHECK(header_len % 8 == 0);
    CHECK(f.data[8] == '{');
    CHECK(f.data[8 + header_len - 1] == '}' || f.data[8 + header_len - 1] == ' ');
    CHECK((size_t)(data - f.data) + 54 == f.n);

    json_t *meta = json_object_get(h, "__metadata__");
    CHECK(meta && strcmp(json_string_value(json_object_get(meta, "format")), "pt") == 0);

    // Keys in insertion order after __metadata__.
    const char *order[] = {"__metadata__", "zeta.a", "alpha.b", "m.c", "s", "empty"};
    int k = 0;
    const char *key;
    json_t *val;
    json_object_foreach(h, key, val) {
        CHECK_MSG(k < 6 && strcmp(key, order[k]) == 0, "key %d is '%s'", k, key);
        k++;
    }
    CHECK(k == 6);

    struct {
        const char *name, *dtype;
        int n_dims;
        int64_t shape[2];
        int64_t begin, end;
        const void *bytes;
    } want[] = {
        {"zeta.a", "F32", 2, {2, 3}, 0, 24, a},
        {"alpha.b", "BF16", 1, {3}, 24, 30, b},
        {"m.c", "U32", 1, {5}, 30, 50, NULL},
        {"s", "F32", 0, {0}, 50, 54, &scalar},
        {"empty", "BF16", 2, {0, 4}, 54, 54, NULL},
    };
    for (int i = 0; i < 5; i++) {
        json_t *t = json_object_get(h, want[i].name);
        CHECK_MSG(t != NULL, "%s missing", want[i].name);
        if (!t) continue;
        CHECK(strcmp(json_string_value(json_object_get(t, "dtype")), want[i].dtype) == 0);
        json_t *shape = json_object_get(t, "shape");
        CHECK((int)json_array_size(shape) == want[i].n_dims);
        for (int d = 0; d < want[i].n_dims; d++)
            CHECK(json_integer_value(json_array_get(shape, (size_t)d)) == want[i].shape[d]);
        json_t *off = json_object_get(t, "data_offsets");
        CHECK(json_array_size(off) == 2);
        int64_t b0 = json_integer_value(json_array_get(off, 0));
        int64_t b1 = json_integer_value(json_array_get(off, 1));
        CHECK_MSG(b0 == want[i].begin && b1 == want[i].end, "%s: [%lld, %lld]", want[i].name,
                  (long long)b0, (long long)b1);
        if (want[i].bytes)
            CHECK(memcmp(data + b0, want[i].bytes, (size_t)(b1 - b0)) == 0);
    }
    // The owned U32 block, little-endian.
    CHECK(data[30] == 0x00 && data[31] == 0xbe && data[32] == 0xad && data[33] == 0xde);
    CHECK(data[34] == 0x01);
    json_decref(h);
    free(f.data);
    remove(path);
}

static void test_streaming(const char *dir) {
    struct lp_error err_buf = {0}, *err = &err_buf;
    char path[4096];
    snprintf(path, sizeof(path), "%s/st_stream_test.safetensors", dir);
    float x[4] = {1, 2, 3, 4};
    uint16_t y[2] = {1, 2};

    struct lp_safetensors_writer *w = NULL;
    CHECK_OK(lp_safetensors_writer_create(&w, err), err);
    if (!w) return;
    CHECK_OK(lp_safetensors_writer_add(w, "x", LP_DTYPE_F32, 1, (int64_t[]){4}, NULL, err), err);
    CHECK_OK(lp_safetensors_writer_add(w, "y", LP_DTYPE_F16, 1, (int64_t[]){2}, NULL, err), err);
    // write() needs data for every tensor.
    CHECK(lp_safetensors_writer_write(w, path, err) == LP_ERR_INVALID_ARG);
    CHECK_OK(lp_safetensors_writer_begin(w, path, err), err);
    CHECK(lp_safetensors_writer_add(w, "z", LP_DTYPE_F32, 1, (int64_t[]){1}, x, err) ==
          LP_ERR_INVALID_ARG);
    CHECK(lp_safetensors_writer_put(w, "y", y, 4, err) == LP_ERR_INVALID_ARG); // out of order
    CHECK(strstr(err->msg, "expected tensor 'x'") != NULL);
    CHECK(lp_safetensors_writer_put(w, "x", x, 12, err) == LP_ERR_INVALID_ARG); // wrong size
    CHECK_OK(lp_safetensors_writer_put(w, "x", x, 16, err), err);
    CHECK_OK(lp_safetensors_writer_put(w, "y", y, 4, err), err);
    CHECK_OK(lp_safetensors_writer_finish(w, err), err);
    lp_safetensors_writer_destroy(w);

    struct blob f = read_all(path);
    const uint8_t *data = NULL;
    json_t *h = parse_header(&f, &data);
    CHECK(h != NULL && json_object_get(h, "__metadata__") == NULL);
    CHECK(f.n == (size_t)(data - f.data) + 20);
    if (h && f.n == (size_t)(data - f.data) + 20) {
        CHECK(memcmp(data, x, 16) == 0 && memcmp(data + 16, y, 4) == 0);
    }
    if (h) json_decref(h);
    free(f.data);

    // Finishing early is an error and removes the partial file.
    CHECK_OK(lp_safetensors_writer_create(&w, err), err);
    if (!w) return;
    CHECK_OK(lp_safetensors_writer_add(w, "x", LP_DTYPE_F32, 1, (int64_t[]){4}, NULL, err), err);
    CHECK_OK(lp_safetensors_writer_add(w, "y", LP_DTYPE_F16, 1, (int64_t[]){2}, NULL, err), err);
    CHECK_OK(lp_safetensors_writer_begin(w, path, err), err);
    CHECK_OK(lp_safetensors_writer_put(w, "x", x, 16, err), err);
    CHECK(lp_safetensors_writer_finish(w, err) == LP_ERR_INVALID_ARG);
    CHECK(access(path, F_OK) != 0);
    lp_safetensors_writer_destroy(w);

    // An unwritable path is an I/O error naming the path.
    CHECK_OK(lp_safetensors_writer_create(&w, err), err);
    if (!w) return;
    CHECK(lp_safetensors_writer_write(w, "/nonexistent-dir/x.safetensors", err) == LP_ERR_IO);
    CHECK(strstr(err->msg, "/nonexistent-dir/x.safetensors") != NULL);
    lp_safetensors_writer_destroy(w);
    lp_safetensors_writer_destroy(NULL);
}

// ---------------------------------------------------------------------------
// lp_genmodel end to end.

struct st_view { // one parsed file
    struct blob b;
    json_t *h;
    const uint8_t *data;
};

static const uint8_t *find_tensor(struct st_view *v, int n_files, const char *name,
                                  const char *dtype, int64_t rows, int64_t cols) {
    for (int i = 0; i < n_files; i++) {
        json_t *t = v[i].h ? json_object_get(v[i].h, name) : NULL;
        if (!t) continue;
        json_t *shape = json_object_get(t, "shape");
        if (strcmp(json_string_value(json_object_get(t, "dtype")), dtype) != 0) return NULL;
        if (json_array_size(shape) != (cols ? 2u : 1u)) return NULL;
        if (json_integer_value(json_array_get(shape, 0)) != rows) return NULL;
        if (cols && json_integer_value(json_array_get(shape, 1)) != cols) return NULL;
        return v[i].data + json_integer_value(json_array_get(json_object_get(t, "data_offsets"), 0));
    }
    return NULL;
}

static int run(const char *cmd) {
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

static void test_genmodel(const char *tools, const char *work) {
    char cmd[8192], path[4096];
    const char *shape = "--layers 2 --hidden 64 --heads 4 --kv-heads 2 --head-dim 32 "
                        "--intermediate 96 --vocab 320 --tied 0";
    snprintf(cmd, sizeof(cmd), "%s/lp_genmodel --out %s/gen_bf16 --seed 5 --format hf-bf16 %s",
             tools, work, shape);
    CHECK(run(cmd) == 0);
    snprintf(cmd, sizeof(cmd),
             "%s/lp_genmodel --out %s/gen_mlx4 --seed 5 --format mlx4 --group 32 --sharded 3 %s",
             tools, work, shape);
    CHECK(run(cmd) == 0);
    // Same arguments, same bytes.
    snprintf(cmd, sizeof(cmd),
             "%s/lp_genmodel --out %s/gen_bf16b --seed 5 --format hf-bf16 --threads 1 %s && "
             "cmp %s/gen_bf16/model.safetensors %s/gen_bf16b/model.safetensors",
             tools, work, shape, work, work);
    CHECK(run(cmd) == 0);

    struct st_view v[4];
    memset(v, 0, sizeof(v));
    snprintf(path, sizeof(path), "%s/gen_bf16/model.safetensors", work);
    v[0].b = read_all(path);
    v[0].h = parse_header(&v[0].b, &v[0].data);
    for (int s = 0; s < 3; s++) {
        snprintf(path, sizeof(path), "%s/gen_mlx4/model-%05d-of-00003.safetensors", work, s + 1);
        v[1 + s].b = read_all(path);
        v[1 + s].h = parse_header(&v[1 + s].b, &v[1 + s].data);
        CHECK_MSG(v[1 + s].h != NULL, "%s", path);
    }
    CHECK(v[0].h != NULL);
    CHECK(json_object_size(v[0].h) == 1 + 1 + 2 * 11 + 1 + 1); // metadata, emb, layers, norm, head

    // The index names every tensor of the shards, and only those.
    snprintf(path, sizeof(path), "%s/gen_mlx4/model.safetensors.index.json", work);
    json_error_t jerr;
    json_t *index = json_load_file(path, 0, &jerr);
    CHECK(index != NULL);
    json_t *map = index ? json_object_get(index, "weight_map") : NULL;
    size_t n_shard_tensors = 0;
    for (int s = 0; s < 3; s++)
        if (v[1 + s].h) n_shard_tensors += json_object_size(v[1 + s].h) - 1;
    CHECK(map && json_object_size(map) == n_shard_tensors);
    CHECK(n_shard_tensors == 3 + 2 * (4 + 7 * 3) + 1 + 3);

    // config.json carries the quantization and the HF keys.
    snprintf(path, sizeof(path), "%s/gen_mlx4/config.json", work);
    json_t *cfg = json_load_file(path, 0, &jerr);
    CHECK(cfg != NULL);
    if (cfg) {
        json_t *qz = json_object_get(cfg, "quantization");
        CHECK(json_integer_value(json_object_get(qz, "bits")) == 4);
        CHECK(json_integer_value(json_object_get(qz, "group_size")) == 32);
        CHECK(json_object_get(cfg, "quantization_config") != NULL);
        CHECK(strcmp(json_string_value(json_object_get(cfg, "model_type")), "qwen3") == 0);
        CHECK(json_integer_value(json_object_get(cfg, "head_dim")) == 32);
        CHECK(json_is_false(json_object_get(cfg, "tie_word_embeddings")));
        json_decref(cfg);
    }

    // Dequantized MLX weights are the bf16 weights within the 4-bit step.
    const char *mats[] = {"model.embed_tokens", "model.layers.1.mlp.down_proj", "lm_head"};
    const int64_t rows[] = {320, 64, 320}, cols[] = {64, 96, 64};
    for (int m = 0; m < 3; m++) {
        char name[256];
        snprintf(name, sizeof(name), "%s.weight", mats[m]);
        const uint16_t *ref = (const uint16_t *)find_tensor(v, 1, name, "BF16", rows[m], cols[m]);
        const uint32_t *q = (const uint32_t *)find_tensor(v + 1, 3, name, "U32", rows[m],
                                                          cols[m] / 8);
        snprintf(name, sizeof(name), "%s.scales", mats[m]);
        const uint16_t *sc = (const uint16_t *)find_tensor(v + 1, 3, name, "BF16", rows[m],
                                                           cols[m] / 32);
        snprintf(name, sizeof(name), "%s.biases", mats[m]);
        const uint16_t *bi = (const uint16_t *)find_tensor(v + 1, 3, name, "BF16", rows[m],
                                                           cols[m] / 32);
        CHECK_MSG(ref && q && sc && bi, "%s: missing or misshapen", mats[m]);
        if (!(ref && q && sc && bi)) continue;
        float *deq = malloc((size_t)(rows[m] * cols[m]) * sizeof(float));
        struct lp_error err_buf = {0}, *err = &err_buf;
        CHECK_OK(lp_mlx_dequantize(q, sc, bi, rows[m], cols[m], 4, 32, LP_DTYPE_BF16, deq, err),
                 err);
        int bad = 0;
        double sum2 = 0;
        for (int64_t i = 0; i < rows[m] * cols[m]; i++) {
            float r = lp_bf16_to_f32(ref[i]);
            float s = lp_bf16_to_f32(sc[i / 32]);
            sum2 += (double)r * r;
            if (fabsf(r - deq[i]) > 1.1f * fabsf(s) + 1e-3f) bad++;
        }
        CHECK_MSG(bad == 0, "%s: %d elements off", mats[m], bad);
        double rms = sqrt(sum2 / (double)(rows[m] * cols[m]));
        // The generator's scales: embedding/head 3/sqrt(hidden), Linear 1/sqrt(in).
        double want = m == 1 ? 1.0 / sqrt(96.0) : 3.0 / 8.0;
        CHECK_MSG(fabs(rms - want) < 0.1 * want, "%s: rms %g, expected about %g", mats[m], rms,
                  want);
        free(deq);
    }
    for (int i = 0; i < 4; i++) {
        if (v[i].h) json_decref(v[i].h);
        free(v[i].b.data);
    }
    if (index) json_decref(index);
}

int main(void) {
    const char *work = getenv("LP_WORK_DIR");
    if (!work) work = "/tmp";
    test_write_read(work);
    test_streaming(work);
    const char *tools = getenv("LP_TOOLS_DIR");
    if (tools)
        test_genmodel(tools, work);
    else
        printf("LP_TOOLS_DIR not set: skipping the lp_genmodel checks\n");
    return lp_test_finish("test_safetensors_write");
}
