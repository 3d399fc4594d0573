// SPDX-License-Identifier: MIT
// safetensors_write.c -- the safetensors writer and float32 -> bf16/f16
// rounding (see include/layerpipe/convert.h for the file layout).
// A writer is a growing list of tensor entries in insertion order; the JSON
// header is built with jansson (keys kept in insertion order) and padded with
// spaces so the data section starts 8-byte aligned. Data offsets are uint64
// and computed from checked products, never in int.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "layerpipe/convert.h"
#include "util/fp16.h"

// ---------------------------------------------------------------------------
// Float rounding.

void lp_f32_to_bf16_array(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = lp_f32_to_bf16(src[i]);
}

void lp_f32_to_f16_array(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = lp_f32_to_f16(src[i]);
}

// ---------------------------------------------------------------------------
// The writer.

struct st_entry {
    char *name;          // owned
    enum lp_dtype dtype;
    int n_dims;
    int64_t shape[LP_SAFETENSORS_MAX_DIMS];
    const void *data;    // borrowed, or owned when owned != NULL; NULL when streaming
    void *owned;         // the same block when the writer owns it
    uint64_t n_bytes;    // product(shape) * dtype size
    uint64_t begin;      // offset in the data section
};

struct lp_safetensors_writer {
    struct st_entry *entries; // [n_entries], insertion order
    int n_entries;
    int cap_entries;
    uint64_t data_bytes;      // sum of n_bytes
    json_t *metadata;         // object of strings, or NULL
    // streaming state
    FILE *fp;                 // open between begin and finish
    char *path;               // owned while fp is open
    int i_next;               // next entry to put
};

enum lp_status lp_safetensors_writer_create(struct lp_safetensors_writer **out,
                                            struct lp_error *err) {
    *out = calloc(1, sizeof(**out));
    if (!*out) return lp_error_set(err, LP_ERR_NOMEM, "safetensors writer: out of memory");
    return LP_OK;
}

void lp_safetensors_writer_destroy(struct lp_safetensors_writer *w) {
    if (!w) return;
    for (int i = 0; i < w->n_entries; i++) {
        free(w->entries[i].name);
        free(w->entries[i].owned);
    }
    free(w->entries);
    if (w->metadata) json_decref(w->metadata);
    if (w->fp) fclose(w->fp);
    free(w->path);
    free(w);
}

enum lp_status lp_safetensors_writer_set_metadata(struct lp_safetensors_writer *w,
                                                  const char *key, const char *value,
                                                  struct lp_error *err) {
    if (!key || !value)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "safetensors writer: NULL metadata key/value");
    if (!w->metadata) {
        w->metadata = json_object();
        if (!w->metadata) return lp_error_set(err, LP_ERR_NOMEM, "safetensors writer: out of memory");
    }
    json_t *s = json_string(value);
    if (!s || json_object_set_new(w->metadata, key, s) != 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "safetensors writer: metadata '%s': not valid UTF-8 or out of memory",
                            key);
    return LP_OK;
}

static bool dtype_writable(enum lp_dtype dtype) {
    switch (dtype) {
    case LP_DTYPE_F32:
    case LP_DTYPE_F16:
    case LP_DTYPE_BF16:
    case LP_DTYPE_U32:
    case LP_DTYPE_I32:
    case LP_DTYPE_U8:
    case LP_DTYPE_I8:
    case LP_DTYPE_I64: return true;
    }
    return false;
}

static enum lp_status add_entry(struct lp_safetensors_writer *w, const char *name,
                                enum lp_dtype dtype, int n_dims, const int64_t *shape,
                                const void *data, void *owned, struct lp_error *err) {
    enum lp_status st;
    if (w->fp || w->i_next) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "safetensors writer: tensor '%s' added after the file was begun",
                          name ? name : "(null)");
        goto fail;
    }
    if (!name || !*name || strcmp(name, "__metadata__") == 0) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "safetensors writer: invalid tensor name '%s'",
                          name ? name : "(null)");
        goto fail;
    }
    if (!dtype_writable(dtype)) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "safetensors writer: tensor '%s': dtype %d",
                          name, (int)dtype);
        goto fail;
    }
    if (n_dims < 0 || n_dims > LP_SAFETENSORS_MAX_DIMS || (n_dims > 0 && !shape)) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "safetensors writer: tensor '%s': %d dims, expected 0..%d", name, n_dims,
                          LP_SAFETENSORS_MAX_DIMS);
        goto fail;
    }
    uint64_t n_bytes = lp_dtype_size(dtype);
    for (int d = 0; d < n_dims; d++) {
        if (shape[d] < 0) {
            st = lp_error_set(err, LP_ERR_INVALID_ARG,
                              "safetensors writer: tensor '%s': dim %d is %lld", name, d,
                              (long long)shape[d]);
            goto fail;
        }
        if (shape[d] != 0 && n_bytes > UINT64_MAX / 2 / (uint64_t)shape[d]) {
            st = lp_error_set(err, LP_ERR_INVALID_ARG,
                              "safetensors writer: tensor '%s': size overflows", name);
            goto fail;
        }
        n_bytes *= (uint64_t)shape[d];
    }
    if (w->data_bytes > UINT64_MAX / 2 - n_bytes) {
        st = lp_error_set(err, LP_ERR_INVALID_ARG, "safetensors writer: total size overflows");
        goto fail;
    }
    for (int i = 0; i < w->n_entries; i++) {
        if (strcmp(w->entries[i].name, name) == 0) {
            st = lp_error_set(err, LP_ERR_INVALID_ARG,
                              "safetensors writer: tensor '%s' added twice", name);
            goto fail;
        }
    }
    if (w->n_entries == w->cap_entries) {
        int cap = w->cap_entries ? 2 * w->cap_entries : 64;
        struct st_entry *e = realloc(w->entries, (size_t)cap * sizeof(*e));
        if (!e) {
            st = lp_error_set(err, LP_ERR_NOMEM, "safetensors writer: out of memory");
            goto fail;
        }
        w->entries = e;
        w->cap_entries = cap;
    }
    struct st_entry *e = &w->entries[w->n_entries];
    memset(e, 0, sizeof(*e));
    e->name = strdup(name);
    if (!e->name) {
        st = lp_error_set(err, LP_ERR_NOMEM, "safetensors writer: out of memory");
        goto fail;
    }
    e->dtype = dtype;
    e->n_dims = n_dims;
    for (int d = 0; d < n_dims; d++) e->shape[d] = shape[d];
    e->data = data;
    e->owned = owned;
    e->n_bytes = n_bytes;
    e->begin = w->data_bytes;
    w->data_bytes += n_bytes;
    w->n_entries++;
    return LP_OK;
fail:
    free(owned);
    return st;
}

enum lp_status lp_safetensors_writer_add(struct lp_safetensors_writer *w, const char *name,
                                         enum lp_dtype dtype, int n_dims, const int64_t *shape,
                                         const void *data, struct lp_error *err) {
    return add_entry(w, name, dtype, n_dims, shape, data, NULL, err);
}

enum lp_status lp_safetensors_writer_add_take(struct lp_safetensors_writer *w, const char *name,
                                              enum lp_dtype dtype, int n_dims,
                                              const int64_t *shape, void *data,
                                              struct lp_error *err) {
    return add_entry(w, name, dtype, n_dims, shape, data, data, err);
}

int lp_safetensors_writer_count(const struct lp_safetensors_writer *w) { return w->n_entries; }

uint64_t lp_safetensors_writer_data_bytes(const struct lp_safetensors_writer *w) {
    return w->data_bytes;
}

// Builds the padded header text: *out (malloc'd) holds *out_bytes bytes, a
// multiple of 8, with no NUL terminator counted.
static enum lp_status build_header(const struct lp_safetensors_writer *w, char **out,
                                   size_t *out_bytes, struct lp_error *err) {
    enum lp_status st = LP_ERR_NOMEM;
    char *text = NULL;
    json_t *root = json_object();
    if (!root) goto nomem;
    if (w->metadata && json_object_set(root, "__metadata__", w->metadata) != 0) goto nomem;
    for (int i = 0; i < w->n_entries; i++) {
        const struct st_entry *e = &w->entries[i];
        json_t *shape = json_array();
        if (!shape) goto nomem;
        json_t *t = json_pack("{s:s, s:o, s:[I,I]}", "dtype", lp_dtype_name(e->dtype), "shape",
                              shape, "data_offsets", (json_int_t)e->begin,
                              (json_int_t)(e->begin + e->n_bytes));
        if (!t) goto nomem;
        for (int d = 0; d < e->n_dims; d++) {
            if (json_array_append_new(shape, json_integer((json_int_t)e->shape[d])) != 0) {
                json_decref(t);
                goto nomem;
            }
        }
        if (json_object_set_new(root, e->name, t) != 0) goto nomem;
    }
    text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) goto nomem;
    size_t n = strlen(text);
    size_t padded = (n + 7) & ~(size_t)7;
    char *buf = malloc(padded + 1);
    if (!buf) goto nomem;
    memcpy(buf, text, n);
    memset(buf + n, ' ', padded - n);
    buf[padded] = '\0';
    *out = buf;
    *out_bytes = padded;
    st = LP_OK;
    goto done;
nomem:
    lp_error_set(err, st, "safetensors writer: building the header: out of memory");
done:
    free(text);
    if (root) json_decref(root);
    return st;
}

static enum lp_status write_all(FILE *fp, const void *data, uint64_t n_bytes, const char *path,
                                const char *what, struct lp_error *err) {
    const char *p = data;
    while (n_bytes > 0) {
        size_t chunk = n_bytes > ((uint64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n_bytes;
        if (fwrite(p, 1, chunk, fp) != chunk)
            return lp_error_set(err, LP_ERR_IO, "%s: writing %s: %s", path, what, strerror(errno));
        p += chunk;
        n_bytes -= chunk;
    }
    return LP_OK;
}

enum lp_status lp_safetensors_writer_begin(struct lp_safetensors_writer *w, const char *path,
                                           struct lp_error *err) {
    enum lp_status st;
    char *header = NULL;
    size_t header_bytes = 0;
    if (w->fp || w->i_next)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: safetensors writer already begun", path);
    st = build_header(w, &header, &header_bytes, err);
    if (st != LP_OK) return st;
    w->path = strdup(path);
    if (!w->path) {
        st = lp_error_set(err, LP_ERR_NOMEM, "safetensors writer: out of memory");
        goto fail;
    }
    w->fp = fopen(path, "wb");
    if (!w->fp) {
        st = lp_error_set(err, LP_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        goto fail;
    }
    uint8_t len_le[8];
    for (int i = 0; i < 8; i++) len_le[i] = (uint8_t)((uint64_t)header_bytes >> (8 * i));
    st = write_all(w->fp, len_le, 8, path, "header length", err);
    if (st == LP_OK) st = write_all(w->fp, header, header_bytes, path, "header", err);
    if (st != LP_OK) goto fail;
    free(header);
    return LP_OK;
fail:
    free(header);
    if (w->fp) {
        fclose(w->fp);
        w->fp = NULL;
        remove(path);
    }
    free(w->path);
    w->path = NULL;
    return st;
}

// Closes and removes a half-written file after a failure.
static void abandon(struct lp_safetensors_writer *w) {
    if (w->fp) {
        fclose(w->fp);
        w->fp = NULL;
        if (w->path) remove(w->path);
    }
    free(w->path);
    w->path = NULL;
}

enum lp_status lp_safetensors_writer_put(struct lp_safetensors_writer *w, const char *name,
                                         const void *data, size_t n_bytes,
                                         struct lp_error *err) {
    if (!w->fp)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "safetensors writer: put '%s' without a begun file", name);
    if (w->i_next >= w->n_entries)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "%s: put '%s': all %d tensors were already written", w->path, name,
                            w->n_entries);
    const struct st_entry *e = &w->entries[w->i_next];
    if (strcmp(e->name, name) != 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: put '%s': expected tensor '%s' next",
                            w->path, name, e->name);
    if ((uint64_t)n_bytes != e->n_bytes)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: put '%s': %zu bytes, expected %llu",
                            w->path, name, n_bytes, (unsigned long long)e->n_bytes);
    enum lp_status st = write_all(w->fp, data, n_bytes, w->path, name, err);
    if (st != LP_OK) {
        abandon(w);
        return st;
    }
    w->i_next++;
    return LP_OK;
}

enum lp_status lp_safetensors_writer_finish(struct lp_safetensors_writer *w,
                                            struct lp_error *err) {
    if (!w->fp)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "safetensors writer: finish without begin");
    if (w->i_next != w->n_entries) {
        enum lp_status st = lp_error_set(err, LP_ERR_INVALID_ARG,
                                         "%s: finished after %d of %d tensors (next '%s')",
                                         w->path, w->i_next, w->n_entries,
                                         w->entries[w->i_next].name);
        abandon(w);
        return st;
    }
    FILE *fp = w->fp;
    w->fp = NULL;
    int bad = fflush(fp) != 0 || ferror(fp);
    int saved = errno;
    if (fclose(fp) != 0 && !bad) {
        bad = 1;
        saved = errno;
    }
    enum lp_status st = LP_OK;
    if (bad) {
        st = lp_error_set(err, LP_ERR_IO, "%s: closing: %s", w->path, strerror(saved));
        remove(w->path);
    }
    free(w->path);
    w->path = NULL;
    return st;
}

enum lp_status lp_safetensors_writer_write(struct lp_safetensors_writer *w, const char *path,
                                           struct lp_error *err) {
    for (int i = 0; i < w->n_entries; i++) {
        if (!w->entries[i].data && w->entries[i].n_bytes > 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "%s: tensor '%s' has no data", path,
                                w->entries[i].name);
    }
    enum lp_status st = lp_safetensors_writer_begin(w, path, err);
    for (int i = 0; st == LP_OK && i < w->n_entries; i++) {
        const struct st_entry *e = &w->entries[i];
        st = lp_safetensors_writer_put(w, e->name, e->data, (size_t)e->n_bytes, err);
    }
    if (st == LP_OK) st = lp_safetensors_writer_finish(w, err);
    return st;
}
