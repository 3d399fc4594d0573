// SPDX-License-Identifier: MIT
// safetensors.c -- the safetensors reader. Layout: 8-byte little-endian
// header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
// [begin, end)}, "__metadata__": {...}}, then the data section, offsets
// relative to its start. The file is memory-mapped read-only; every header
// value is checked (known dtype, sane shape, 64-bit size arithmetic without
// overflow, offsets inside the data section, size == dtype x shape,
// alignment to the element size) before any tensor is handed out.
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "model/internal.h"

static int st_dtype_from_name(const char *s, enum lp_dtype *out) {
    static const struct {
        const char *name;
        enum lp_dtype dtype;
    } table[] = {{"F32", LP_DTYPE_F32}, {"F16", LP_DTYPE_F16}, {"BF16", LP_DTYPE_BF16},
                 {"U32", LP_DTYPE_U32}, {"I32", LP_DTYPE_I32}, {"U8", LP_DTYPE_U8},
                 {"I8", LP_DTYPE_I8},   {"I64", LP_DTYPE_I64}};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (strcmp(s, table[i].name) == 0) {
            *out = table[i].dtype;
            return 1;
        }
    }
    return 0;
}

static int st_tensor_cmp(const void *a, const void *b) {
    const struct lp_st_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

// Reads a JSON integer in [0, max] into *out.
static int st_json_u64(const json_t *j, uint64_t max, uint64_t *out) {
    if (!json_is_integer(j)) return 0;
    json_int_t v = json_integer_value(j);
    if (v < 0 || (uint64_t)v > max) return 0;
    *out = (uint64_t)v;
    return 1;
}

static enum lp_status st_parse_entry(struct lp_st_tensor *t, const char *name, const json_t *info,
                                     const uint8_t *data_start, uint64_t data_bytes,
                                     const char *path, struct lp_error *err) {
    if (!json_is_object(info))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': header entry is not an object",
                            path, name);
    const char *dtype_s = json_string_value(json_object_get(info, "dtype"));
    if (!dtype_s)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': missing string field 'dtype'",
                            path, name);
    if (!st_dtype_from_name(dtype_s, &t->dtype))
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "%s: tensor '%s': dtype '%s' is not supported (F32, F16, BF16, U32, "
                            "I32, U8, I8, I64)",
                            path, name, dtype_s);
    const json_t *shape = json_object_get(info, "shape");
    if (!json_is_array(shape))
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': missing array field 'shape'",
                            path, name);
    size_t n_dims = json_array_size(shape);
    if (n_dims > LP_ST_MAX_DIMS)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': %zu dims, max %d", path, name,
                            n_dims, LP_ST_MAX_DIMS);
    t->n_dims = (int)n_dims;
    // element count with overflow checks: every factor and the product stay
    // below 2^62 so the byte size below cannot wrap either.
    uint64_t n_elem = 1;
    for (size_t d = 0; d < n_dims; d++) {
        uint64_t dim;
        if (!st_json_u64(json_array_get(shape, d), (uint64_t)1 << 62, &dim))
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                                name, d);
        if (dim != 0 && n_elem > ((uint64_t)1 << 59) / dim)
            return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': shape too large", path,
                                name);
        n_elem *= dim;
        t->shape[d] = (int64_t)dim;
    }
    uint64_t expect_bytes = n_elem * lp_dtype_size(t->dtype);
    const json_t *offs = json_object_get(info, "data_offsets");
    uint64_t begin, end;
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !st_json_u64(json_array_get(offs, 0), UINT64_MAX >> 1, &begin) ||
        !st_json_u64(json_array_get(offs, 1), UINT64_MAX >> 1, &end))
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor '%s': 'data_offsets' must be [begin, end] of two "
                            "non-negative integers",
                            path, name);
    if (begin > end)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: tensor '%s': data_offsets begin %llu > end %llu",
                            path, name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_bytes)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets end %llu is past the end of the data "
                            "section (%llu bytes): truncated file?",
                            path, name, (unsigned long long)end, (unsigned long long)data_bytes);
    if (end - begin != expect_bytes)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor '%s': %llu bytes in the file, but dtype %s x shape needs "
                            "%llu",
                            path, name, (unsigned long long)(end - begin), dtype_s,
                            (unsigned long long)expect_bytes);
    t->data = data_start + begin;
    t->nbytes = (size_t)expect_bytes;
    if (((uintptr_t)t->data) % lp_dtype_size(t->dtype) != 0)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor '%s': data at offset %llu is not aligned to its %zu-byte "
                            "elements",
                            path, name, (unsigned long long)begin, lp_dtype_size(t->dtype));
    return LP_OK;
}

enum lp_status lp_st_parse(struct lp_st_file *f, const void *data, size_t n_bytes,
                           struct lp_error *err) {
    const char *path = f->path ? f->path : "safetensors";
    if (n_bytes < 8)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: file is %zu bytes, shorter than the 8-byte header length", path,
                            n_bytes);
    const uint8_t *bytes = data;
    uint64_t header_bytes = 0;
    for (int i = 7; i >= 0; i--) header_bytes = (header_bytes << 8) | bytes[i];
    if (header_bytes > LP_ST_MAX_HEADER_BYTES)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: header length %llu exceeds the %llu limit",
                            path, (unsigned long long)header_bytes,
                            (unsigned long long)LP_ST_MAX_HEADER_BYTES);
    if (header_bytes > n_bytes - 8)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: header length %llu but only %zu bytes follow: truncated file?",
                            path, (unsigned long long)header_bytes, n_bytes - 8);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)header_bytes, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: header is not valid JSON: %s (offset %d)",
                            path, jerr.text, jerr.position);
    enum lp_status st = LP_OK;
    if (!json_is_object(root)) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }
    size_t n = json_object_size(root);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    if (!f->tensors) {
        st = lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory for %zu tensors", path, n);
        goto done;
    }
    const uint8_t *data_start = bytes + 8 + header_bytes;
    uint64_t data_bytes = n_bytes - 8 - header_bytes;
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0) continue;
        struct lp_st_tensor *t = &f->tensors[f->n_tensors];
        t->name = strdup(key);
        if (!t->name) {
            st = lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        f->n_tensors++;
        st = st_parse_entry(t, key, value, data_start, data_bytes, path, err);
        if (st != LP_OK) goto done;
    }
    qsort(f->tensors, (size_t)f->n_tensors, sizeof *f->tensors, st_tensor_cmp);
done:
    json_decref(root);
    return st;
}

enum lp_status lp_st_open(struct lp_st_file **out, const char *path, struct lp_error *err) {
    *out = NULL;
    enum lp_status st;
    struct lp_st_file *f = calloc(1, sizeof *f);
    if (!f) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", path);
    f->path = strdup(path);
    if (!f->path) {
        st = lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    st = lp_map_file(path, 8, "the 8-byte header length", &f->map, &f->map_bytes, err);
    if (st != LP_OK) goto fail;
    st = lp_st_parse(f, f->map, f->map_bytes, err);
    if (st != LP_OK) goto fail;
    *out = f;
    return LP_OK;
fail:
    lp_st_close(f);
    return st;
}

void lp_st_close(struct lp_st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->gguf) lp_gguf_close(f->gguf);
    else if (f->map) munmap(f->map, f->map_bytes);
    free(f->path);
    free(f);
}

const struct lp_st_tensor *lp_st_find(const struct lp_st_file *f, const char *name) {
    size_t lo = 0, hi = (size_t)f->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->tensors[mid].name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}
