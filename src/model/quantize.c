// SPDX-License-Identifier: MIT
// quantize.c -- `layerpipe quantize`: an HF folder to an MLX affine folder,
// tensor by tensor (streamed through the safetensors writer, so memory
// holds one tensor's codes plus a block of float rows, not the model).
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "layerpipe/convert.h"
#include "util/fp16.h"
#include "model/internal.h"

#define QUANT_BLOCK_ROWS 256

struct q_item {
    const struct lp_st_tensor *t;
    bool quantize;
};

static int item_cmp(const void *a, const void *b) {
    const struct q_item *x = a, *y = b;
    return strcmp(x->t->name, y->t->name);
}

static float elem_f32(const struct lp_st_tensor *t, size_t i) {
    switch (t->dtype) {
    case LP_DTYPE_F32: return ((const float *)t->data)[i];
    case LP_DTYPE_F16: return lp_f16_to_f32(((const uint16_t *)t->data)[i]);
    case LP_DTYPE_BF16: return lp_bf16_to_f32(((const uint16_t *)t->data)[i]);
    default: return 0.0f;
    }
}

static enum lp_status copy_file(const char *src, const char *dst, struct lp_error *err) {
    FILE *in = fopen(src, "rb"), *out = NULL;
    if (!in) return lp_error_set(err, LP_ERR_IO, "%s: %s", src, strerror(errno));
    out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return lp_error_set(err, LP_ERR_IO, "%s: %s", dst, strerror(errno));
    }
    char buf[65536];
    size_t n;
    enum lp_status st = LP_OK;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) {
            st = lp_error_set(err, LP_ERR_IO, "%s: write failed", dst);
            break;
        }
    fclose(in);
    if (fclose(out) != 0 && st == LP_OK) st = lp_error_set(err, LP_ERR_IO, "%s: write failed", dst);
    return st;
}

// config.json plus the quantization keys.
static enum lp_status write_config(const char *src_dir, const char *dst_dir, int bits, int group,
                                   struct lp_error *err) {
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "%s/config.json", src_dir);
    snprintf(dst, sizeof dst, "%s/config.json", dst_dir);
    json_error_t jerr;
    json_t *root = json_load_file(src, 0, &jerr);
    if (!root) return lp_error_set(err, LP_ERR_FORMAT, "%s: %s", src, jerr.text);
    enum lp_status st = LP_OK;
    json_t *q = json_pack("{s:i, s:i, s:s}", "group_size", group, "bits", bits, "mode", "affine");
    if (!q || json_object_set(root, "quantization", q) != 0 ||
        json_object_set(root, "quantization_config", q) != 0 ||
        json_dump_file(root, dst, JSON_INDENT(2)) != 0)
        st = lp_error_set(err, LP_ERR_IO, "%s: cannot write", dst);
    json_decref(q);
    json_decref(root);
    return st;
}

// Copies the small files: everything but weights, the index and config.json.
static enum lp_status copy_side_files(const char *src_dir, const char *dst_dir,
                                      struct lp_error *err) {
    DIR *d = opendir(src_dir);
    if (!d) return lp_error_set(err, LP_ERR_IO, "%s: %s", src_dir, strerror(errno));
    enum lp_status st = LP_OK;
    struct dirent *e;
    while (st == LP_OK && (e = readdir(d))) {
        const char *n = e->d_name;
        size_t len = strlen(n);
        if (n[0] == '.' || strcmp(n, "config.json") == 0 ||
            strcmp(n, "model.safetensors.index.json") == 0 ||
            (len > 12 && strcmp(n + len - 12, ".safetensors") == 0))
            continue;
        char src[4096], dst[4096];
        snprintf(src, sizeof src, "%s/%s", src_dir, n);
        snprintf(dst, sizeof dst, "%s/%s", dst_dir, n);
        struct stat sb;
        if (stat(src, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        st = copy_file(src, dst, err);
    }
    closedir(d);
    return st;
}

enum lp_status lp_model_quantize(const char *src_dir, const char *dst_dir, int bits,
                                 int group_size, lp_progress_fn on_progress, void *user,
                                 struct lp_error *err) {
    if ((bits != 4 && bits != 8) || (group_size != 32 && group_size != 64 && group_size != 128))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "quantize: bits %d, group %d: supported bits 4/8, groups 32/64/128",
                            bits, group_size);
    struct lp_model *m = NULL;
    struct lp_model_load_params none = {0, 0, false, false};
    enum lp_status st = lp_model_open(&m, src_dir, &none, err);
    if (st != LP_OK) return st;
    struct lp_safetensors_writer *w = NULL;
    struct q_item *items = NULL;
    uint32_t *codes = NULL;
    uint8_t *scales = NULL, *biases = NULL;
    float *block = NULL;
    char path[4096];
    bool begun = false;
    if (lp_model_config(m)->quant_bits) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "quantize: %s is already quantized (%d-bit)",
                          src_dir, lp_model_config(m)->quant_bits);
        goto done;
    }
    int n_src;
    struct lp_st_file *const *src = lp_model_files(m, &n_src);
    if (n_src > 0 && src[0]->gguf) {
        st = lp_error_set(err, LP_ERR_UNSUPPORTED,
                          "quantize: %s is a GGUF model; quantize converts HF safetensors folders",
                          src_dir);
        goto done;
    }
    struct stat src_sb, dst_sb;
    if (stat(src_dir, &src_sb) == 0 && stat(dst_dir, &dst_sb) == 0 &&
        src_sb.st_dev == dst_sb.st_dev && src_sb.st_ino == dst_sb.st_ino) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "quantize: the output folder is the input folder (%s): choose another",
                          dst_dir);
        goto done;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dst_dir);
    struct stat sb;
    if (stat(path, &sb) == 0) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "quantize: %s already exists: choose an empty output folder", path);
        goto done;
    }
    if (mkdir(dst_dir, 0755) != 0 && errno != EEXIST) {
        st = lp_error_set(err, LP_ERR_IO, "quantize: %s: %s", dst_dir, strerror(errno));
        goto done;
    }
    int n_files;
    struct lp_st_file *const *files = lp_model_files(m, &n_files);
    size_t n = 0;
    for (int i = 0; i < n_files; i++) n += (size_t)files[i]->n_tensors;
    items = calloc(n ? n : 1, sizeof *items);
    if (!items) {
        st = lp_error_set(err, LP_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    size_t k = 0;
    uint64_t total = 0, done_bytes = 0;
    for (int i = 0; i < n_files; i++)
        for (int j = 0; j < files[i]->n_tensors; j++) {
            const struct lp_st_tensor *t = &files[i]->tensors[j];
            size_t len = strlen(t->name);
            bool is_float =
                t->dtype == LP_DTYPE_F32 || t->dtype == LP_DTYPE_F16 || t->dtype == LP_DTYPE_BF16;
            items[k].t = t;
            items[k].quantize = is_float && t->n_dims == 2 && len > 7 &&
                                strcmp(t->name + len - 7, ".weight") == 0 &&
                                t->shape[1] % group_size == 0 && t->shape[0] > 0;
            total += t->nbytes;
            k++;
        }
    qsort(items, n, sizeof *items, item_cmp);
    if ((st = lp_safetensors_writer_create(&w, err)) != LP_OK ||
        (st = lp_safetensors_writer_set_metadata(w, "format", "mlx", err)) != LP_OK)
        goto done;
    size_t max_codes = 0, max_scales = 0;
    int64_t max_cols = 0;
    for (size_t i = 0; i < n; i++) {
        const struct lp_st_tensor *t = items[i].t;
        if (!items[i].quantize) {
            if ((st = lp_safetensors_writer_add(w, t->name, t->dtype, t->n_dims, t->shape, NULL,
                                                err)) != LP_OK)
                goto done;
            continue;
        }
        enum lp_dtype sd = t->dtype == LP_DTYPE_F16 ? LP_DTYPE_F16 : LP_DTYPE_BF16;
        size_t qb, sbytes;
        if ((st = lp_mlx_quantized_bytes(t->shape[0], t->shape[1], bits, group_size, sd, &qb,
                                         &sbytes, err)) != LP_OK)
            goto done;
        if (qb > max_codes) max_codes = qb;
        if (sbytes > max_scales) max_scales = sbytes;
        if (t->shape[1] > max_cols) max_cols = t->shape[1];
        size_t len = strlen(t->name) - 7; // without ".weight"
        char name[600];
        int64_t qshape[2] = {t->shape[0], t->shape[1] * bits / 32};
        int64_t sshape[2] = {t->shape[0], t->shape[1] / group_size};
        snprintf(name, sizeof name, "%.*s.weight", (int)len, t->name);
        if ((st = lp_safetensors_writer_add(w, name, LP_DTYPE_U32, 2, qshape, NULL, err)) != LP_OK)
            goto done;
        snprintf(name, sizeof name, "%.*s.scales", (int)len, t->name);
        if ((st = lp_safetensors_writer_add(w, name, sd, 2, sshape, NULL, err)) != LP_OK) goto done;
        snprintf(name, sizeof name, "%.*s.biases", (int)len, t->name);
        if ((st = lp_safetensors_writer_add(w, name, sd, 2, sshape, NULL, err)) != LP_OK) goto done;
    }
    codes = malloc(max_codes ? max_codes : 1);
    scales = malloc(max_scales ? max_scales : 1);
    biases = malloc(max_scales ? max_scales : 1);
    block = malloc((size_t)QUANT_BLOCK_ROWS * (size_t)(max_cols ? max_cols : 1) * sizeof(float));
    if (!codes || !scales || !biases || !block) {
        st = lp_error_set(err, LP_ERR_NOMEM, "quantize: out of memory for a %zu-byte tensor",
                          max_codes);
        goto done;
    }
    if ((st = lp_safetensors_writer_begin(w, path, err)) != LP_OK) goto done;
    begun = true;
    for (size_t i = 0; i < n; i++) {
        const struct lp_st_tensor *t = items[i].t;
        if (!items[i].quantize) {
            if ((st = lp_safetensors_writer_put(w, t->name, t->data, t->nbytes, err)) != LP_OK)
                goto done;
        } else {
            enum lp_dtype sd = t->dtype == LP_DTYPE_F16 ? LP_DTYPE_F16 : LP_DTYPE_BF16;
            int64_t rows = t->shape[0], cols = t->shape[1];
            size_t qb, sbytes;
            lp_mlx_quantized_bytes(rows, cols, bits, group_size, sd, &qb, &sbytes, NULL);
            size_t q_row = (size_t)cols * (size_t)bits / 32, s_row = sbytes / (size_t)rows;
            for (int64_t r0 = 0; r0 < rows; r0 += QUANT_BLOCK_ROWS) {
                int64_t nr = rows - r0 < QUANT_BLOCK_ROWS ? rows - r0 : QUANT_BLOCK_ROWS;
                for (size_t e = 0; e < (size_t)(nr * cols); e++)
                    block[e] = elem_f32(t, (size_t)r0 * (size_t)cols + e);
                st = lp_mlx_quantize(block, nr, cols, bits, group_size, sd,
                                     codes + (size_t)r0 * q_row, scales + (size_t)r0 * s_row,
                                     biases + (size_t)r0 * s_row, err);
                if (st != LP_OK) goto done;
            }
            size_t len = strlen(t->name) - 7;
            char name[600];
            snprintf(name, sizeof name, "%.*s.weight", (int)len, t->name);
            if ((st = lp_safetensors_writer_put(w, name, codes, qb, err)) != LP_OK) goto done;
            snprintf(name, sizeof name, "%.*s.scales", (int)len, t->name);
            if ((st = lp_safetensors_writer_put(w, name, scales, sbytes, err)) != LP_OK) goto done;
            snprintf(name, sizeof name, "%.*s.biases", (int)len, t->name);
            if ((st = lp_safetensors_writer_put(w, name, biases, sbytes, err)) != LP_OK) goto done;
        }
        done_bytes += t->nbytes;
        if (on_progress) on_progress(user, done_bytes, total);
    }
    if ((st = lp_safetensors_writer_finish(w, err)) != LP_OK) goto done;
    if ((st = write_config(src_dir, dst_dir, bits, group_size, err)) != LP_OK) goto done;
    st = copy_side_files(src_dir, dst_dir, err);
done:
    free(block);
    free(codes);
    free(scales);
    free(biases);
    free(items);
    lp_safetensors_writer_destroy(w);
    lp_model_close(m);
    if (st != LP_OK && begun) remove(path); // never leave half a model behind
    return st;
}
