// SPDX-License-Identifier: MIT
// gguf_write.c -- the GGUF writer (layout in include/layerpipe/gguf.h).
// Metadata pairs are encoded as they are added into one growing byte
// buffer (so the header is a copy of it); tensor infos keep name, type,
// shape and size, and their offsets are assigned in insertion order, each
// padded to the alignment, exactly as the reader expects them.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layerpipe/gguf.h"

struct w_tensor {
    char name[LP_GGUF_MAX_NAME];
    uint32_t type;
    int n_dims;
    int64_t ne[LP_GGUF_MAX_DIMS];
    uint64_t n_bytes;
    uint64_t offset;
};

struct lp_gguf_writer {
    uint8_t *kv;      // encoded metadata pairs
    size_t kv_bytes, kv_cap;
    uint64_t n_kv;
    char **keys;      // [n_kv] owned copies, to refuse a key set twice
    struct w_tensor *tensors;
    int64_t n_tensors, cap_tensors;
    uint64_t data_bytes;   // unpadded sum
    uint64_t next_offset;  // padded
    uint32_t alignment;
    FILE *fp;              // open between begin and finish
    char *path;            // owned while fp is open
    int64_t i_next;        // next tensor to put
};

enum lp_status lp_gguf_writer_create(struct lp_gguf_writer **out, struct lp_error *err) {
    *out = calloc(1, sizeof **out);
    if (!*out) return lp_error_set(err, LP_ERR_NOMEM, "gguf writer: out of memory");
    (*out)->alignment = LP_GGUF_DEFAULT_ALIGNMENT;
    return LP_OK;
}

void lp_gguf_writer_destroy(struct lp_gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    free(w->kv);
    free(w->tensors);
    if (w->fp) fclose(w->fp);
    free(w->path);
    free(w);
}

static bool kv_reserve(struct lp_gguf_writer *w, size_t more) {
    if (w->kv_cap - w->kv_bytes >= more) return true;
    size_t cap = w->kv_cap ? w->kv_cap : 4096;
    while (cap - w->kv_bytes < more) {
        if (cap > SIZE_MAX / 2) return false;
        cap *= 2;
    }
    uint8_t *p = realloc(w->kv, cap);
    if (!p) return false;
    w->kv = p;
    w->kv_cap = cap;
    return true;
}

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void kv_put(struct lp_gguf_writer *w, const void *p, size_t n) {
    memcpy(w->kv + w->kv_bytes, p, n);
    w->kv_bytes += n;
}

static void kv_put_int(struct lp_gguf_writer *w, uint64_t v, int n) {
    put_le(w->kv + w->kv_bytes, v, n);
    w->kv_bytes += (size_t)n;
}

static void kv_put_str(struct lp_gguf_writer *w, const char *s, size_t n) {
    kv_put_int(w, n, 8);
    kv_put(w, s, n);
}

// Checks the key, reserves room for key + type + `more` bytes, writes the
// key and remembers it.
static enum lp_status kv_begin(struct lp_gguf_writer *w, const char *key, size_t more,
                               struct lp_error *err) {
    if (w->fp) return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: metadata after begin");
    if (!key || !key[0]) return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: empty key");
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: key '%s' set twice", key);
    size_t n = strlen(key);
    char **keys = realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *keys);
    if (!keys) return lp_error_set(err, LP_ERR_NOMEM, "gguf writer: out of memory");
    w->keys = keys;
    if (more > SIZE_MAX - n - 64 || !kv_reserve(w, 8 + n + 4 + more) ||
        !(w->keys[w->n_kv] = strdup(key)))
        return lp_error_set(err, LP_ERR_NOMEM, "gguf writer: out of memory for '%s'", key);
    w->n_kv++;
    kv_put_str(w, key, n);
    return LP_OK;
}

enum lp_status lp_gguf_writer_add_scalar(struct lp_gguf_writer *w, const char *key,
                                         enum lp_gguf_type type, const void *value,
                                         struct lp_error *err) {
    size_t size = lp_gguf_value_size(type);
    if (size == 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: '%s': type %d is not a scalar",
                            key, (int)type);
    enum lp_status st = kv_begin(w, key, size, err);
    if (st != LP_OK) return st;
    kv_put_int(w, (uint64_t)type, 4);
    kv_put(w, value, size); // host order == file order on little-endian hosts
    if (strcmp(key, "general.alignment") == 0 && type == LP_GGUF_TYPE_UINT32) {
        uint32_t a;
        memcpy(&a, value, 4);
        if (a && (a & (a - 1)) == 0) w->alignment = a;
    }
    return LP_OK;
}

enum lp_status lp_gguf_writer_add_str(struct lp_gguf_writer *w, const char *key, const char *value,
                                      struct lp_error *err) {
    size_t n = strlen(value);
    enum lp_status st = kv_begin(w, key, 8 + n, err);
    if (st != LP_OK) return st;
    kv_put_int(w, LP_GGUF_TYPE_STRING, 4);
    kv_put_str(w, value, n);
    return LP_OK;
}

enum lp_status lp_gguf_writer_add_array(struct lp_gguf_writer *w, const char *key,
                                        enum lp_gguf_type elem_type, uint64_t n,
                                        const void *values, struct lp_error *err) {
    size_t size = lp_gguf_value_size(elem_type);
    if (size == 0 || n > (SIZE_MAX / 2) / size)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "gguf writer: '%s': bad array element type or count", key);
    enum lp_status st = kv_begin(w, key, 12 + (size_t)n * size, err);
    if (st != LP_OK) return st;
    kv_put_int(w, LP_GGUF_TYPE_ARRAY, 4);
    kv_put_int(w, (uint64_t)elem_type, 4);
    kv_put_int(w, n, 8);
    kv_put(w, values, (size_t)n * size);
    return LP_OK;
}

enum lp_status lp_gguf_writer_add_str_array(struct lp_gguf_writer *w, const char *key, uint64_t n,
                                            const char *const *strs, const size_t *lens,
                                            struct lp_error *err) {
    size_t total = 12;
    for (uint64_t i = 0; i < n; i++) {
        size_t len = lens ? lens[i] : strlen(strs[i]);
        if (len > SIZE_MAX / 4 - total)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: '%s': too large", key);
        total += 8 + len;
    }
    enum lp_status st = kv_begin(w, key, total, err);
    if (st != LP_OK) return st;
    kv_put_int(w, LP_GGUF_TYPE_ARRAY, 4);
    kv_put_int(w, LP_GGUF_TYPE_STRING, 4);
    kv_put_int(w, n, 8);
    for (uint64_t i = 0; i < n; i++) kv_put_str(w, strs[i], lens ? lens[i] : strlen(strs[i]));
    return LP_OK;
}

enum lp_status lp_gguf_writer_add_tensor(struct lp_gguf_writer *w, const char *name,
                                         uint32_t ggml_type, int n_dims, const int64_t *ne,
                                         struct lp_error *err) {
    if (w->fp) return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: tensor after begin");
    size_t n_name = name ? strlen(name) : 0;
    if (n_name == 0 || n_name >= LP_GGUF_MAX_NAME)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: tensor name '%s': 1..%d bytes",
                            name ? name : "", LP_GGUF_MAX_NAME - 1);
    int blk = lp_gguf_type_block_elems(ggml_type), blk_bytes = lp_gguf_type_block_bytes(ggml_type);
    if (blk == 0 || n_dims < 1 || n_dims > LP_GGUF_MAX_DIMS || ne[0] % blk != 0)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "gguf writer: tensor '%s': type %u, %d dims, ne[0] %lld", name,
                            ggml_type, n_dims, (long long)ne[0]);
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: tensor '%s' added twice",
                                name);
    uint64_t n_elem = 1;
    for (int d = 0; d < n_dims; d++) {
        if (ne[d] < 0 || (ne[d] && n_elem > ((uint64_t)1 << 60) / (uint64_t)ne[d]))
            return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: tensor '%s': bad shape",
                                name);
        n_elem *= (uint64_t)ne[d];
    }
    if (w->n_tensors == w->cap_tensors) {
        int64_t cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
        struct w_tensor *p = realloc(w->tensors, (size_t)cap * sizeof *p);
        if (!p) return lp_error_set(err, LP_ERR_NOMEM, "gguf writer: out of memory");
        w->tensors = p;
        w->cap_tensors = cap;
    }
    struct w_tensor *t = &w->tensors[w->n_tensors++];
    memset(t, 0, sizeof *t);
    memcpy(t->name, name, n_name + 1);
    t->type = ggml_type;
    t->n_dims = n_dims;
    for (int d = 0; d < n_dims; d++) t->ne[d] = ne[d];
    t->n_bytes = n_elem / (uint64_t)blk * (uint64_t)blk_bytes;
    w->data_bytes += t->n_bytes;
    return LP_OK;
}

uint64_t lp_gguf_writer_data_bytes(const struct lp_gguf_writer *w) { return w->data_bytes; }

static uint64_t pad_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

static enum lp_status write_zeros(struct lp_gguf_writer *w, uint64_t n, struct lp_error *err) {
    static const uint8_t zeros[256];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (fwrite(zeros, 1, k, w->fp) != k)
            return lp_error_set(err, LP_ERR_IO, "%s: write: %s", w->path, strerror(errno));
        n -= k;
    }
    return LP_OK;
}

static void writer_abort(struct lp_gguf_writer *w) {
    if (w->fp) fclose(w->fp);
    w->fp = NULL;
    if (w->path) unlink(w->path);
    free(w->path);
    w->path = NULL;
}

enum lp_status lp_gguf_writer_begin(struct lp_gguf_writer *w, const char *path,
                                    struct lp_error *err) {
    if (w->fp) return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: begun twice");
    w->path = strdup(path);
    if (!w->path) return lp_error_set(err, LP_ERR_NOMEM, "gguf writer: out of memory");
    w->fp = fopen(path, "wb");
    if (!w->fp) {
        enum lp_status st = lp_error_set(err, LP_ERR_IO, "%s: create: %s", path, strerror(errno));
        free(w->path);
        w->path = NULL;
        return st;
    }
    uint8_t head[24];
    memcpy(head, "GGUF", 4);
    put_le(head + 4, 3, 4);
    put_le(head + 8, (uint64_t)w->n_tensors, 8);
    put_le(head + 16, w->n_kv, 8);
    bool ok = fwrite(head, 1, 24, w->fp) == 24 &&
              (w->kv_bytes == 0 || fwrite(w->kv, 1, w->kv_bytes, w->fp) == w->kv_bytes);
    uint64_t pos = 24 + w->kv_bytes, offset = 0;
    for (int64_t i = 0; ok && i < w->n_tensors; i++) {
        struct w_tensor *t = &w->tensors[i];
        uint8_t buf[8 + LP_GGUF_MAX_NAME + 4 + 8 * LP_GGUF_MAX_DIMS + 4 + 8];
        size_t n = 0, n_name = strlen(t->name);
        put_le(buf, n_name, 8);
        memcpy(buf + 8, t->name, n_name);
        n = 8 + n_name;
        put_le(buf + n, (uint64_t)t->n_dims, 4);
        n += 4;
        for (int d = 0; d < t->n_dims; d++, n += 8) put_le(buf + n, (uint64_t)t->ne[d], 8);
        put_le(buf + n, t->type, 4);
        n += 4;
        t->offset = offset;
        put_le(buf + n, offset, 8);
        n += 8;
        ok = fwrite(buf, 1, n, w->fp) == n;
        pos += n;
        offset = pad_up(offset + t->n_bytes, w->alignment);
    }
    if (!ok) {
        enum lp_status st = lp_error_set(err, LP_ERR_IO, "%s: write: %s", path, strerror(errno));
        writer_abort(w);
        return st;
    }
    enum lp_status st = w->n_tensors ? write_zeros(w, pad_up(pos, w->alignment) - pos, err) : LP_OK;
    if (st != LP_OK) writer_abort(w);
    w->i_next = 0;
    return st;
}

enum lp_status lp_gguf_writer_put(struct lp_gguf_writer *w, const char *name, const void *data,
                                  size_t n_bytes, struct lp_error *err) {
    if (!w->fp) return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: put before begin");
    if (w->i_next >= w->n_tensors)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: '%s': every tensor was put",
                            name);
    struct w_tensor *t = &w->tensors[w->i_next];
    if (strcmp(t->name, name) != 0 || n_bytes != t->n_bytes)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "gguf writer: put '%s' (%zu bytes), expected '%s' (%llu bytes)", name,
                            n_bytes, t->name, (unsigned long long)t->n_bytes);
    if (n_bytes && fwrite(data, 1, n_bytes, w->fp) != n_bytes) {
        enum lp_status st = lp_error_set(err, LP_ERR_IO, "%s: write: %s", w->path, strerror(errno));
        writer_abort(w);
        return st;
    }
    w->i_next++;
    // padding after every tensor but the last
    uint64_t end = t->offset + t->n_bytes;
    if (w->i_next < w->n_tensors) {
        enum lp_status st = write_zeros(w, pad_up(end, w->alignment) - end, err);
        if (st != LP_OK) writer_abort(w);
        return st;
    }
    return LP_OK;
}

enum lp_status lp_gguf_writer_finish(struct lp_gguf_writer *w, struct lp_error *err) {
    if (!w->fp) return lp_error_set(err, LP_ERR_INVALID_ARG, "gguf writer: finish before begin");
    if (w->i_next != w->n_tensors) {
        enum lp_status st = lp_error_set(err, LP_ERR_INVALID_ARG,
                                         "gguf writer: %s: %lld of %lld tensors were put", w->path,
                                         (long long)w->i_next, (long long)w->n_tensors);
        writer_abort(w);
        return st;
    }
    bool ok = fflush(w->fp) == 0;
    ok = fclose(w->fp) == 0 && ok;
    w->fp = NULL;
    if (!ok) {
        enum lp_status st = lp_error_set(err, LP_ERR_IO, "%s: close: %s", w->path, strerror(errno));
        unlink(w->path);
        free(w->path);
        w->path = NULL;
        return st;
    }
    free(w->path);
    w->path = NULL;
    return LP_OK;
}
