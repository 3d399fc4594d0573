// SPDX-License-Identifier: MIT
// gguf.c -- the GGUF reader (layout in include/layerpipe/gguf.h). One pass
// over the header with a bounds-checked cursor: every count is checked
// against the bytes left before anything is allocated for it, every string
// and array lies inside the image, keys and tensor names are unique, every
// tensor's type, shape, byte size (64-bit, overflow-checked) and offset is
// what ggml would accept, and its data lies inside the file. The metadata
// and tensor views point into the image; nothing is copied but the names.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "layerpipe/gguf.h"
#include "model/internal.h"

#define GGUF_MAGIC "GGUF"

struct lp_gguf {
    char *name;            // owned: path or label for messages
    void *map;             // owned mapping (lp_gguf_open), or NULL for a borrowed image
    size_t map_bytes;
    const uint8_t *image;  // the whole file
    size_t n_bytes;
    uint32_t version;
    size_t alignment;
    int64_t n_kv;
    struct lp_gguf_kv *kv;          // [n_kv], file order
    int64_t *kv_sorted;             // [n_kv] indices sorted by key
    int64_t n_tensors;
    struct lp_gguf_tensor *tensors; // [n_tensors], file order
    int64_t *tensor_sorted;         // [n_tensors] indices sorted by name
    size_t data_offset;             // first byte of the data section
};

// ---- types -------------------------------------------------------------------

int lp_gguf_type_block_elems(uint32_t t) {
    if (t == LP_GGML_TYPE_F32 || t == LP_GGML_TYPE_F16 || t == LP_GGML_TYPE_BF16) return 1;
    return t < 1000 ? lp_ggml_block_elems((enum lp_ggml_type)t) : 0;
}

int lp_gguf_type_block_bytes(uint32_t t) {
    if (t == LP_GGML_TYPE_F32) return 4;
    if (t == LP_GGML_TYPE_F16 || t == LP_GGML_TYPE_BF16) return 2;
    return t < 1000 ? lp_ggml_block_bytes((enum lp_ggml_type)t) : 0;
}

const char *lp_gguf_type_name(uint32_t t) {
    if (t == LP_GGML_TYPE_F32) return "F32";
    if (t == LP_GGML_TYPE_F16) return "F16";
    if (t == LP_GGML_TYPE_BF16) return "BF16";
    return t < 1000 ? lp_ggml_type_name((enum lp_ggml_type)t) : "?";
}

// ggml's names of the types layerpipe does not read, for the refusal.
static const char *unread_type_name(uint32_t t) {
    static const char *const names[] = {
        [3] = "Q4_1",     [6] = "Q5_0",    [7] = "Q5_1",    [9] = "Q8_1",     [10] = "Q2_K",
        [11] = "Q3_K",    [15] = "Q8_K",   [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS",
        [19] = "IQ1_S",   [20] = "IQ4_NL", [21] = "IQ3_S",  [22] = "IQ2_S",   [23] = "IQ4_XS",
        [24] = "I8",      [25] = "I16",    [26] = "I32",    [27] = "I64",     [28] = "F64",
        [29] = "IQ1_M"};
    return t < sizeof names / sizeof names[0] && names[t] ? names[t] : NULL;
}

size_t lp_gguf_value_size(enum lp_gguf_type t) {
    switch (t) {
    case LP_GGUF_TYPE_UINT8:
    case LP_GGUF_TYPE_INT8:
    case LP_GGUF_TYPE_BOOL: return 1;
    case LP_GGUF_TYPE_UINT16:
    case LP_GGUF_TYPE_INT16: return 2;
    case LP_GGUF_TYPE_UINT32:
    case LP_GGUF_TYPE_INT32:
    case LP_GGUF_TYPE_FLOAT32: return 4;
    case LP_GGUF_TYPE_UINT64:
    case LP_GGUF_TYPE_INT64:
    case LP_GGUF_TYPE_FLOAT64: return 8;
    case LP_GGUF_TYPE_STRING:
    case LP_GGUF_TYPE_ARRAY: break;
    }
    return 0;
}

static bool kv_type_is_int(uint32_t t) {
    return t == LP_GGUF_TYPE_UINT8 || t == LP_GGUF_TYPE_INT8 || t == LP_GGUF_TYPE_UINT16 ||
           t == LP_GGUF_TYPE_INT16 || t == LP_GGUF_TYPE_UINT32 || t == LP_GGUF_TYPE_INT32 ||
           t == LP_GGUF_TYPE_UINT64 || t == LP_GGUF_TYPE_INT64;
}

static const char *kv_type_name(uint32_t t) {
    static const char *names[] = {"u8",  "i8",   "u16", "i16", "u32", "i32", "f32",
                                  "bool", "str", "arr", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}

static uint64_t rd_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

// A fixed-size integer element at p, widened (UINT64 above INT64_MAX saturates).
static int64_t rd_int(const uint8_t *p, uint32_t t) {
    switch (t) {
    case LP_GGUF_TYPE_UINT8:
    case LP_GGUF_TYPE_BOOL: return p[0];
    case LP_GGUF_TYPE_INT8: return (int8_t)p[0];
    case LP_GGUF_TYPE_UINT16: return (uint16_t)(p[0] | p[1] << 8);
    case LP_GGUF_TYPE_INT16: return (int16_t)(uint16_t)(p[0] | p[1] << 8);
    case LP_GGUF_TYPE_UINT32: return rd_u32(p);
    case LP_GGUF_TYPE_INT32: return (int32_t)rd_u32(p);
    case LP_GGUF_TYPE_UINT64: {
        uint64_t v = rd_u64(p);
        return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
    }
    case LP_GGUF_TYPE_INT64: return (int64_t)rd_u64(p);
    }
    return 0;
}

// ---- the cursor ----------------------------------------------------------------

struct cursor {
    const uint8_t *p;
    size_t pos, end;
    const char *name; // for messages
    struct lp_error *err;
};

static enum lp_status cur_short(struct cursor *c, const char *what, size_t need) {
    return lp_error_set(c->err, LP_ERR_FORMAT,
                        "%s: %s needs %zu bytes at offset %zu, but the file ends at %zu: "
                        "truncated file?",
                        c->name, what, need, c->pos, c->end);
}

static enum lp_status cur_u32(struct cursor *c, const char *what, uint32_t *out) {
    if (c->end - c->pos < 4) return cur_short(c, what, 4);
    *out = rd_u32(c->p + c->pos);
    c->pos += 4;
    return LP_OK;
}

static enum lp_status cur_u64(struct cursor *c, const char *what, uint64_t *out) {
    if (c->end - c->pos < 8) return cur_short(c, what, 8);
    *out = rd_u64(c->p + c->pos);
    c->pos += 8;
    return LP_OK;
}

static enum lp_status cur_str(struct cursor *c, const char *what, struct lp_gguf_str *out) {
    uint64_t n = 0;
    enum lp_status st = cur_u64(c, what, &n);
    if (st != LP_OK) return st;
    if (n > c->end - c->pos)
        return lp_error_set(c->err, LP_ERR_FORMAT,
                            "%s: %s: string of %llu bytes at offset %zu runs past the end of the "
                            "file (%zu): truncated file?",
                            c->name, what, (unsigned long long)n, c->pos - 8, c->end);
    out->ptr = (const char *)c->p + c->pos;
    out->n_bytes = (size_t)n;
    c->pos += (size_t)n;
    return LP_OK;
}

// ---- metadata --------------------------------------------------------------------

// Reads one value of type t (not ARRAY) or, when is_array, n elements of t.
static enum lp_status parse_value(struct cursor *c, struct lp_gguf_kv *kv, int64_t i_kv) {
    char what[96];
    snprintf(what, sizeof what, "metadata '%.*s'", (int)(kv->key.n_bytes > 48 ? 48 : kv->key.n_bytes),
             kv->key.ptr);
    size_t begin = c->pos;
    uint32_t t = kv->elem_type;
    if (t == LP_GGUF_TYPE_STRING) {
        // each element is at least its 8-byte length
        if (kv->n_elems > (c->end - c->pos) / 8)
            return lp_error_set(c->err, LP_ERR_FORMAT,
                                "%s: %s: %llu strings cannot fit in the %zu bytes left", c->name,
                                what, (unsigned long long)kv->n_elems, c->end - c->pos);
        for (uint64_t k = 0; k < kv->n_elems; k++) {
            struct lp_gguf_str s = {0};
            enum lp_status st = cur_str(c, what, &s);
            if (st != LP_OK) return st;
        }
    } else {
        size_t size = lp_gguf_value_size((enum lp_gguf_type)t);
        if (size == 0)
            return lp_error_set(c->err, LP_ERR_FORMAT,
                                "%s: metadata pair %lld ('%.*s'): value type %u is not a GGUF "
                                "type%s",
                                c->name, (long long)i_kv, (int)(kv->key.n_bytes > 48 ? 48 : kv->key.n_bytes),
                                kv->key.ptr, t,
                                t == LP_GGUF_TYPE_ARRAY ? " (arrays of arrays are not allowed)" : "");
        if (kv->n_elems > (c->end - c->pos) / size)
            return lp_error_set(c->err, LP_ERR_FORMAT,
                                "%s: %s: %llu elements of %zu bytes run past the end of the file "
                                "(%zu bytes left): truncated file?",
                                c->name, what, (unsigned long long)kv->n_elems, size,
                                c->end - c->pos);
        c->pos += (size_t)kv->n_elems * size;
    }
    kv->value = c->p + begin;
    kv->value_bytes = c->pos - begin;
    return LP_OK;
}

static int kv_cmp_key(struct lp_gguf_str a, struct lp_gguf_str b) {
    size_t n = a.n_bytes < b.n_bytes ? a.n_bytes : b.n_bytes;
    int c = memcmp(a.ptr, b.ptr, n);
    if (c) return c;
    return a.n_bytes < b.n_bytes ? -1 : a.n_bytes > b.n_bytes;
}

// qsort has no context argument: sort (key, index) pairs instead.
struct sort_item {
    struct lp_gguf_str key;
    int64_t i;
};

static int sort_item_cmp(const void *a, const void *b) {
    const struct sort_item *x = a, *y = b;
    return kv_cmp_key(x->key, y->key);
}

// Sorts indices by key into *out and reports the first duplicate (its
// index pair) in dup[2]; returns false on allocation failure.
static bool sort_keys(const struct lp_gguf_str *keys, size_t stride, int64_t n, int64_t **out,
                      int64_t dup[2]) {
    struct sort_item *items = malloc((size_t)(n ? n : 1) * sizeof *items);
    *out = malloc((size_t)(n ? n : 1) * sizeof **out);
    if (!items || !*out) {
        free(items);
        return false;
    }
    for (int64_t i = 0; i < n; i++) {
        items[i].key = *(const struct lp_gguf_str *)((const char *)keys + (size_t)i * stride);
        items[i].i = i;
    }
    qsort(items, (size_t)n, sizeof *items, sort_item_cmp);
    dup[0] = dup[1] = -1;
    for (int64_t i = 0; i < n; i++) {
        (*out)[i] = items[i].i;
        if (i > 0 && dup[0] < 0 && kv_cmp_key(items[i - 1].key, items[i].key) == 0) {
            dup[0] = items[i - 1].i < items[i].i ? items[i - 1].i : items[i].i;
            dup[1] = items[i - 1].i < items[i].i ? items[i].i : items[i - 1].i;
        }
    }
    free(items);
    return true;
}

static enum lp_status parse_kvs(struct lp_gguf *g, struct cursor *c, uint64_t n_kv) {
    // every pair takes at least 8 (key length) + 1 (key) + 4 (type) + 1 bytes
    if (n_kv > (c->end - c->pos) / 14)
        return lp_error_set(c->err, LP_ERR_FORMAT,
                            "%s: header says %llu metadata pairs, more than the %zu bytes left can "
                            "hold",
                            g->name, (unsigned long long)n_kv, c->end - c->pos);
    g->kv = calloc((size_t)(n_kv ? n_kv : 1), sizeof *g->kv);
    if (!g->kv) return lp_error_set(c->err, LP_ERR_NOMEM, "%s: out of memory", g->name);
    for (uint64_t i = 0; i < n_kv; i++) {
        struct lp_gguf_kv *kv = &g->kv[i];
        char what[64];
        snprintf(what, sizeof what, "metadata pair %llu: key", (unsigned long long)i);
        enum lp_status st = cur_str(c, what, &kv->key);
        if (st != LP_OK) return st;
        if (kv->key.n_bytes == 0)
            return lp_error_set(c->err, LP_ERR_FORMAT, "%s: metadata pair %llu has an empty key",
                                g->name, (unsigned long long)i);
        if (memchr(kv->key.ptr, '\0', kv->key.n_bytes))
            return lp_error_set(c->err, LP_ERR_FORMAT,
                                "%s: metadata pair %llu: key holds a NUL byte", g->name,
                                (unsigned long long)i);
        uint32_t type = 0;
        snprintf(what, sizeof what, "metadata pair %llu: type", (unsigned long long)i);
        if ((st = cur_u32(c, what, &type)) != LP_OK) return st;
        kv->type = (enum lp_gguf_type)type;
        kv->elem_type = (enum lp_gguf_type)type;
        kv->n_elems = 1;
        if (type == LP_GGUF_TYPE_ARRAY) {
            snprintf(what, sizeof what, "metadata pair %llu: array header", (unsigned long long)i);
            if ((st = cur_u32(c, what, &type)) != LP_OK) return st;
            kv->elem_type = (enum lp_gguf_type)type;
            if ((st = cur_u64(c, what, &kv->n_elems)) != LP_OK) return st;
        }
        g->n_kv = (int64_t)i + 1;
        if ((st = parse_value(c, kv, (int64_t)i)) != LP_OK) return st;
    }
    int64_t dup[2];
    if (!sort_keys(&g->kv[0].key, sizeof *g->kv, g->n_kv, &g->kv_sorted, dup))
        return lp_error_set(c->err, LP_ERR_NOMEM, "%s: out of memory", g->name);
    if (dup[0] >= 0)
        return lp_error_set(c->err, LP_ERR_FORMAT,
                            "%s: metadata key '%.*s' appears twice (pairs %lld and %lld)", g->name,
                            (int)(g->kv[dup[0]].key.n_bytes > 64 ? 64 : g->kv[dup[0]].key.n_bytes),
                            g->kv[dup[0]].key.ptr, (long long)dup[0], (long long)dup[1]);
    return LP_OK;
}

// ---- tensors ---------------------------------------------------------------------

static enum lp_status parse_tensor_info(struct lp_gguf *g, struct cursor *c, int64_t i) {
    struct lp_gguf_tensor *t = &g->tensors[i];
    char what[96];
    snprintf(what, sizeof what, "tensor info %lld: name", (long long)i);
    struct lp_gguf_str name = {0};
    enum lp_status st = cur_str(c, what, &name);
    if (st != LP_OK) return st;
    if (name.n_bytes == 0 || name.n_bytes >= LP_GGUF_MAX_NAME ||
        memchr(name.ptr, '\0', name.n_bytes))
        return lp_error_set(c->err, LP_ERR_FORMAT,
                            "%s: tensor info %lld: name of %zu bytes%s (expected 1..%d bytes "
                            "without NUL)",
                            g->name, (long long)i, name.n_bytes,
                            name.n_bytes && memchr(name.ptr, '\0', name.n_bytes) ? " holds a NUL"
                                                                                 : "",
                            LP_GGUF_MAX_NAME - 1);
    memcpy(t->name, name.ptr, name.n_bytes);
    t->name[name.n_bytes] = '\0';
    uint32_t n_dims = 0;
    snprintf(what, sizeof what, "tensor '%s': n_dims", t->name);
    if ((st = cur_u32(c, what, &n_dims)) != LP_OK) return st;
    if (n_dims < 1 || n_dims > LP_GGUF_MAX_DIMS)
        return lp_error_set(c->err, LP_ERR_FORMAT, "%s: tensor '%s': %u dims, expected 1..%d",
                            g->name, t->name, n_dims, LP_GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    // element count: every dim and the product stay below 2^60, so the byte
    // size (at most 4 bytes an element) cannot wrap
    uint64_t n_elem = 1;
    for (int d = 0; d < LP_GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        snprintf(what, sizeof what, "tensor '%s': ne[%d]", t->name, d);
        if (d < t->n_dims && (st = cur_u64(c, what, &ne)) != LP_OK) return st;
        if (ne > ((uint64_t)1 << 60) || (ne != 0 && n_elem > ((uint64_t)1 << 60) / ne))
            return lp_error_set(c->err, LP_ERR_FORMAT,
                                "%s: tensor '%s': ne[%d] = %llu makes the tensor too large",
                                g->name, t->name, d, (unsigned long long)ne);
        t->ne[d] = (int64_t)ne;
        n_elem *= ne;
    }
    snprintf(what, sizeof what, "tensor '%s': type", t->name);
    if ((st = cur_u32(c, what, &t->type)) != LP_OK) return st;
    int blk = lp_gguf_type_block_elems(t->type), blk_bytes = lp_gguf_type_block_bytes(t->type);
    if (blk == 0) {
        const char *tn = unread_type_name(t->type);
        return lp_error_set(c->err, LP_ERR_UNSUPPORTED,
                            "%s: tensor '%s': ggml type %u%s%s%s is not supported: layerpipe "
                            "reads F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K and Q6_K (llama.cpp's "
                            "Q8_0, Q4_0, Q4_K_M/S, Q5_K_M/S and Q6_K files); requantize with "
                            "llama-quantize to one of those",
                            g->name, t->name, t->type, tn ? " (" : "", tn ? tn : "", tn ? ")" : "");
    }
    if (t->ne[0] % blk != 0)
        return lp_error_set(c->err, LP_ERR_FORMAT,
                            "%s: tensor '%s': %lld elements per row, not a multiple of the %s "
                            "block size %d",
                            g->name, t->name, (long long)t->ne[0], lp_gguf_type_name(t->type), blk);
    t->n_bytes = (size_t)(n_elem / (uint64_t)blk * (uint64_t)blk_bytes); // < 2^62
    snprintf(what, sizeof what, "tensor '%s': offset", t->name);
    return cur_u64(c, what, &t->offset);
}

static size_t pad_to(size_t x, size_t align) { return (x + align - 1) & ~(align - 1); }

// Offsets in info order, each padded: exactly where ggml puts them; data
// inside the file and aligned to the element type.
static enum lp_status place_tensors(struct lp_gguf *g, struct lp_error *err) {
    uint64_t expect = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        struct lp_gguf_tensor *t = &g->tensors[i];
        if (t->offset != expect)
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: tensor '%s': offset %llu, expected %llu (tensors follow each "
                                "other, each padded to %zu bytes)",
                                g->name, t->name, (unsigned long long)t->offset,
                                (unsigned long long)expect, g->alignment);
        size_t room = g->n_bytes - g->data_offset;
        if (t->offset > room || t->n_bytes > room - t->offset)
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: tensor '%s': %zu bytes at data offset %llu run past the end "
                                "of the file (%zu bytes of data): truncated file?",
                                g->name, t->name, t->n_bytes, (unsigned long long)t->offset, room);
        t->data = g->image + g->data_offset + t->offset;
        size_t elem_align = t->type == LP_GGML_TYPE_F32 ? 4 : 2;
        if ((uintptr_t)t->data % elem_align != 0)
            return lp_error_set(err, LP_ERR_FORMAT,
                                "%s: tensor '%s': data at file offset %zu is not aligned to %zu "
                                "bytes (general.alignment %zu)",
                                g->name, t->name, g->data_offset + (size_t)t->offset, elem_align,
                                g->alignment);
        expect = pad_to((size_t)t->offset + t->n_bytes, g->alignment); // <= n_bytes + alignment
    }
    return LP_OK;
}

static enum lp_status parse_alignment(struct lp_gguf *g, struct lp_error *err) {
    g->alignment = LP_GGUF_DEFAULT_ALIGNMENT;
    const struct lp_gguf_kv *kv = lp_gguf_find_kv(g, "general.alignment");
    if (!kv) return LP_OK;
    if (kv->type != LP_GGUF_TYPE_UINT32)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: general.alignment is of type %s, expected u32",
                            g->name, kv_type_name(kv->type));
    uint32_t a = rd_u32(kv->value);
    if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 30))
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: general.alignment %u is not a power of two up to 2^30", g->name,
                            a);
    g->alignment = a;
    return LP_OK;
}

static enum lp_status parse_header(struct lp_gguf *g, struct lp_error *err) {
    struct cursor c = {.p = g->image, .pos = 0, .end = g->n_bytes, .name = g->name, .err = err};
    if (g->n_bytes < 4 || memcmp(g->image, GGUF_MAGIC, 4) != 0)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: not a GGUF file (no 'GGUF' magic); a model is a folder "
                            "(config.json and *.safetensors) or a .gguf file",
                            g->name);
    c.pos = 4;
    enum lp_status st = cur_u32(&c, "version", &g->version);
    if (st != LP_OK) return st;
    if (g->version != 0 && (g->version & 0xFFFF) == 0)
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "%s: version field 0x%08x: a big-endian GGUF file? Only little-endian "
                            "files are supported",
                            g->name, g->version);
    if (g->version < 2 || g->version > 3)
        return lp_error_set(err, LP_ERR_UNSUPPORTED,
                            "%s: GGUF version %u is not supported (2 and 3 are)", g->name,
                            g->version);
    uint64_t n_tensors = 0, n_kv = 0;
    if ((st = cur_u64(&c, "tensor count", &n_tensors)) != LP_OK) return st;
    if ((st = cur_u64(&c, "metadata count", &n_kv)) != LP_OK) return st;
    if ((st = parse_kvs(g, &c, n_kv)) != LP_OK) return st;
    if ((st = parse_alignment(g, err)) != LP_OK) return st;
    // every tensor info takes at least 8 + 1 + 4 + 8 + 4 + 8 bytes
    if (n_tensors > (c.end - c.pos) / 33)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: header says %llu tensors, more than the %zu bytes left can hold",
                            g->name, (unsigned long long)n_tensors, c.end - c.pos);
    g->tensors = calloc((size_t)(n_tensors ? n_tensors : 1), sizeof *g->tensors);
    if (!g->tensors) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", g->name);
    for (uint64_t i = 0; i < n_tensors; i++) {
        g->n_tensors = (int64_t)i + 1;
        if ((st = parse_tensor_info(g, &c, (int64_t)i)) != LP_OK) return st;
    }
    struct lp_gguf_str *names = malloc((size_t)(n_tensors ? n_tensors : 1) * sizeof *names);
    if (!names) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", g->name);
    for (int64_t i = 0; i < g->n_tensors; i++)
        names[i] = (struct lp_gguf_str){g->tensors[i].name, strlen(g->tensors[i].name)};
    int64_t dup[2];
    bool ok = sort_keys(names, sizeof *names, g->n_tensors, &g->tensor_sorted, dup);
    free(names);
    if (!ok) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", g->name);
    if (dup[0] >= 0)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: tensor name '%s' appears twice (tensors %lld and %lld)", g->name,
                            g->tensors[dup[0]].name, (long long)dup[0], (long long)dup[1]);
    g->data_offset = pad_to(c.pos, g->alignment);
    if (g->n_tensors > 0 && g->data_offset > g->n_bytes)
        return lp_error_set(err, LP_ERR_FORMAT,
                            "%s: the data section would start at %zu, past the end of the file "
                            "(%zu): truncated file?",
                            g->name, g->data_offset, g->n_bytes);
    return place_tensors(g, err);
}

// ---- open / close ----------------------------------------------------------------

static enum lp_status gguf_new(struct lp_gguf **out, const char *name, struct lp_error *err) {
    *out = calloc(1, sizeof **out);
    if (!*out) return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    (*out)->name = strdup(name);
    if (!(*out)->name) {
        free(*out);
        *out = NULL;
        return lp_error_set(err, LP_ERR_NOMEM, "%s: out of memory", name);
    }
    return LP_OK;
}

enum lp_status lp_gguf_parse(struct lp_gguf **out, const void *image, size_t n_bytes,
                             const char *name, struct lp_error *err) {
    *out = NULL;
    struct lp_gguf *g;
    enum lp_status st = gguf_new(&g, name ? name : "gguf", err);
    if (st != LP_OK) return st;
    g->image = image;
    g->n_bytes = n_bytes;
    if ((st = parse_header(g, err)) != LP_OK) {
        lp_gguf_close(g);
        return st;
    }
    *out = g;
    return LP_OK;
}

enum lp_status lp_gguf_open(struct lp_gguf **out, const char *path, struct lp_error *err) {
    *out = NULL;
    struct lp_gguf *g;
    enum lp_status st = gguf_new(&g, path, err);
    if (st != LP_OK) return st;
    st = lp_map_file(path, 24, "a GGUF header (24 bytes): truncated file?", &g->map, &g->map_bytes,
                     err);
    if (st == LP_OK) {
        g->image = g->map;
        g->n_bytes = g->map_bytes;
        st = parse_header(g, err);
    }
    if (st != LP_OK) {
        lp_gguf_close(g);
        return st;
    }
    *out = g;
    return LP_OK;
}

void lp_gguf_close(struct lp_gguf *g) {
    if (!g) return;
    free(g->kv);
    free(g->kv_sorted);
    free(g->tensors);
    free(g->tensor_sorted);
    if (g->map) munmap(g->map, g->map_bytes);
    free(g->name);
    free(g);
}

// ---- lookups ---------------------------------------------------------------------

const char *lp_gguf_name(const struct lp_gguf *g) { return g->name; }
const void *lp_gguf_image(const struct lp_gguf *g, size_t *n_bytes) {
    *n_bytes = g->n_bytes;
    return g->image;
}
uint32_t lp_gguf_version(const struct lp_gguf *g) { return g->version; }
size_t lp_gguf_alignment(const struct lp_gguf *g) { return g->alignment; }
int64_t lp_gguf_n_kv(const struct lp_gguf *g) { return g->n_kv; }
int64_t lp_gguf_n_tensors(const struct lp_gguf *g) { return g->n_tensors; }

const struct lp_gguf_kv *lp_gguf_kv_at(const struct lp_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_kv ? &g->kv[i] : NULL;
}

const struct lp_gguf_tensor *lp_gguf_tensor_at(const struct lp_gguf *g, int64_t i) {
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct lp_gguf_kv *lp_gguf_find_kv(const struct lp_gguf *g, const char *key) {
    struct lp_gguf_str k = {key, strlen(key)};
    int64_t lo = 0, hi = g->n_kv;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const struct lp_gguf_kv *kv = &g->kv[g->kv_sorted[mid]];
        int c = kv_cmp_key(k, kv->key);
        if (c == 0) return kv;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

const struct lp_gguf_tensor *lp_gguf_find_tensor(const struct lp_gguf *g, const char *name) {
    int64_t lo = 0, hi = g->n_tensors;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const struct lp_gguf_tensor *t = &g->tensors[g->tensor_sorted[mid]];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

static enum lp_status get_kv(const struct lp_gguf *g, const char *key, const struct lp_gguf_kv **out,
                             struct lp_error *err) {
    *out = lp_gguf_find_kv(g, key);
    if (!*out) return lp_error_set(err, LP_ERR_FORMAT, "%s: missing metadata key '%s'", g->name, key);
    return LP_OK;
}

static enum lp_status wrong_type(const struct lp_gguf *g, const char *key,
                                 const struct lp_gguf_kv *kv, const char *want,
                                 struct lp_error *err) {
    return lp_error_set(err, LP_ERR_FORMAT, "%s: metadata '%s' is %s%s%s, expected %s", g->name,
                        key, kv->type == LP_GGUF_TYPE_ARRAY ? "an array of " : "a ",
                        kv_type_name(kv->elem_type), kv->type == LP_GGUF_TYPE_ARRAY ? "" : " value",
                        want);
}

enum lp_status lp_gguf_get_int(const struct lp_gguf *g, const char *key, int64_t lo, int64_t hi,
                               int64_t *out, struct lp_error *err) {
    const struct lp_gguf_kv *kv;
    enum lp_status st = get_kv(g, key, &kv, err);
    if (st != LP_OK) return st;
    if (kv->type == LP_GGUF_TYPE_ARRAY || (!kv_type_is_int(kv->type) && kv->type != LP_GGUF_TYPE_BOOL))
        return wrong_type(g, key, kv, "an integer", err);
    int64_t v = rd_int(kv->value, kv->type);
    if (v < lo || v > hi)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: metadata '%s' is %lld, expected %lld..%lld",
                            g->name, key, (long long)v, (long long)lo, (long long)hi);
    *out = v;
    return LP_OK;
}

enum lp_status lp_gguf_get_float(const struct lp_gguf *g, const char *key, double lo, double hi,
                                 double *out, struct lp_error *err) {
    const struct lp_gguf_kv *kv;
    enum lp_status st = get_kv(g, key, &kv, err);
    if (st != LP_OK) return st;
    double v;
    if (kv->type == LP_GGUF_TYPE_FLOAT32) {
        uint32_t u = rd_u32(kv->value);
        float f;
        memcpy(&f, &u, 4);
        v = f;
    } else if (kv->type == LP_GGUF_TYPE_FLOAT64) {
        uint64_t u = rd_u64(kv->value);
        memcpy(&v, &u, 8);
    } else {
        return wrong_type(g, key, kv, "a float", err);
    }
    if (!(v >= lo && v <= hi)) // also refuses NaN
        return lp_error_set(err, LP_ERR_FORMAT, "%s: metadata '%s' is %g, expected %g..%g",
                            g->name, key, v, lo, hi);
    *out = v;
    return LP_OK;
}

enum lp_status lp_gguf_get_bool(const struct lp_gguf *g, const char *key, bool *out,
                                struct lp_error *err) {
    const struct lp_gguf_kv *kv;
    enum lp_status st = get_kv(g, key, &kv, err);
    if (st != LP_OK) return st;
    if (kv->type != LP_GGUF_TYPE_BOOL) return wrong_type(g, key, kv, "a bool", err);
    *out = kv->value[0] != 0;
    return LP_OK;
}

enum lp_status lp_gguf_get_str(const struct lp_gguf *g, const char *key, struct lp_gguf_str *out,
                               struct lp_error *err) {
    const struct lp_gguf_kv *kv;
    enum lp_status st = get_kv(g, key, &kv, err);
    if (st != LP_OK) return st;
    if (kv->type != LP_GGUF_TYPE_STRING) return wrong_type(g, key, kv, "a string", err);
    out->n_bytes = (size_t)rd_u64(kv->value);
    out->ptr = (const char *)kv->value + 8;
    return LP_OK;
}

enum lp_status lp_gguf_get_array(const struct lp_gguf *g, const char *key,
                                 enum lp_gguf_type elem_type, const struct lp_gguf_kv **out,
                                 struct lp_error *err) {
    const struct lp_gguf_kv *kv;
    enum lp_status st = get_kv(g, key, &kv, err);
    if (st != LP_OK) return st;
    bool ok = kv->type == LP_GGUF_TYPE_ARRAY &&
              (kv->elem_type == elem_type ||
               (elem_type == LP_GGUF_TYPE_INT64 && kv_type_is_int(kv->elem_type)));
    if (!ok) {
        char want[48];
        snprintf(want, sizeof want, "an array of %s",
                 elem_type == LP_GGUF_TYPE_INT64 ? "integers" : kv_type_name(elem_type));
        return wrong_type(g, key, kv, want, err);
    }
    *out = kv;
    return LP_OK;
}

int64_t lp_gguf_array_int(const struct lp_gguf_kv *kv, uint64_t i) {
    return rd_int(kv->value + i * lp_gguf_value_size((enum lp_gguf_type)kv->elem_type), kv->elem_type);
}

void lp_gguf_array_strs(const struct lp_gguf_kv *kv, struct lp_gguf_str *out) {
    const uint8_t *p = kv->value;
    for (uint64_t i = 0; i < kv->n_elems; i++) { // bounds checked by parse_value
        out[i].n_bytes = (size_t)rd_u64(p);
        out[i].ptr = (const char *)p + 8;
        p += 8 + out[i].n_bytes;
    }
}

bool lp_gguf_str_eq(struct lp_gguf_str a, const char *s) {
    size_t n = strlen(s);
    return a.n_bytes == n && memcmp(a.ptr, s, n) == 0;
}
