// SPDX-License-Identifier: MIT
// test_gguf.c -- the GGUF reader and writer: a file with metadata of every
// type and tensors of every accepted type written and read back (values,
// views, lookups, getters and their refusals); the same image truncated at
// every length; hand-built headers with each kind of bad count, string,
// type, alignment, name, shape and offset (each a clear error, never a
// crash); then a few thousand byte-level mutations. Every image lives in a
// heap buffer of exactly its size so ASan sees any read past it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layerpipe/gguf.h"
#include "lp_test.h"
#include "model_fixture.h"

struct img {
    uint8_t *p;
    size_t n, cap;
};

static void put(struct img *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void put_u32(struct img *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(struct img *b, uint64_t v) { put(b, &v, 8); }
static void put_str(struct img *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_zeros(struct img *b, size_t n) {
    uint8_t z[64] = {0};
    while (n) {
        size_t k = n < 64 ? n : 64;
        put(b, z, k);
        n -= k;
    }
}

// Parses n bytes copied into an exact-size heap buffer; returns the status
// and checks that a failure says something.
static enum lp_status parse_exact(const uint8_t *p, size_t n, struct lp_error *err) {
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy) abort();
    memcpy(copy, p, n);
    struct lp_gguf *g = NULL;
    lp_error_clear(err);
    enum lp_status st = lp_gguf_parse(&g, copy, n, "t.gguf", err);
    if (st == LP_OK) {
        // every view inside the image
        for (int64_t i = 0; i < lp_gguf_n_tensors(g); i++) {
            const struct lp_gguf_tensor *t = lp_gguf_tensor_at(g, i);
            const uint8_t *d = t->data;
            if (d < copy || t->n_bytes > (size_t)(copy + n - d)) abort();
            if (lp_gguf_find_tensor(g, t->name) != t) abort();
        }
        for (int64_t i = 0; i < lp_gguf_n_kv(g); i++) {
            const struct lp_gguf_kv *kv = lp_gguf_kv_at(g, i);
            if (kv->value < copy || kv->value_bytes > (size_t)(copy + n - kv->value)) abort();
        }
    } else if (!err->msg[0] || !strstr(err->msg, "t.gguf")) {
        fprintf(stderr, "failure without a message naming the file: '%s'\n", err->msg);
        abort();
    }
    if ((st == LP_OK) != (g != NULL)) abort();
    lp_gguf_close(g);
    free(copy);
    return st;
}

// ---- a full file through the writer ---------------------------------------------

#define N_TYPES 8
static const uint32_t TYPES[N_TYPES] = {LP_GGML_TYPE_F32, LP_GGML_TYPE_F16, LP_GGML_TYPE_BF16,
                                        LP_GGML_Q8_0,     LP_GGML_Q4_0,     LP_GGML_Q4_K,
                                        LP_GGML_Q5_K,     LP_GGML_Q6_K};

static void fill(uint8_t *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 131 + seed * 17 + (i >> 7));
}

static const char *STRS[3] = {"alpha", "", "\xc4\xa0world"};

// Writes the reference file to path with the given alignment (0: default).
static int write_reference(const char *path, uint32_t alignment, uint8_t **bufs) {
    struct lp_error err = {0};
    struct lp_gguf_writer *w = NULL;
    CHECK_OK(lp_gguf_writer_create(&w, &err), &err);
    if (!w) return -1;
    uint8_t u8 = 200;
    int8_t i8 = -7;
    uint16_t u16 = 65000;
    int16_t i16 = -30000;
    uint32_t u32 = 4000000000u;
    int32_t i32 = -2000000000;
    float f32 = 1.5e-6f;
    bool bo = true;
    uint64_t u64 = 1ull << 40;
    int64_t i64 = -(1ll << 50);
    double f64 = 1e6;
    CHECK_OK(lp_gguf_writer_add_str(w, "general.architecture", "qwen3", &err), &err);
    if (alignment)
        CHECK_OK(lp_gguf_writer_add_scalar(w, "general.alignment", LP_GGUF_TYPE_UINT32,
                                           &alignment, &err),
                 &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.u8", LP_GGUF_TYPE_UINT8, &u8, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.i8", LP_GGUF_TYPE_INT8, &i8, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.u16", LP_GGUF_TYPE_UINT16, &u16, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.i16", LP_GGUF_TYPE_INT16, &i16, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.u32", LP_GGUF_TYPE_UINT32, &u32, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.i32", LP_GGUF_TYPE_INT32, &i32, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.f32", LP_GGUF_TYPE_FLOAT32, &f32, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.bool", LP_GGUF_TYPE_BOOL, &bo, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.u64", LP_GGUF_TYPE_UINT64, &u64, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.i64", LP_GGUF_TYPE_INT64, &i64, &err), &err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "t.f64", LP_GGUF_TYPE_FLOAT64, &f64, &err), &err);
    int32_t arr[5] = {3, -1, 4, 1, -5};
    CHECK_OK(lp_gguf_writer_add_array(w, "t.arr_i32", LP_GGUF_TYPE_INT32, 5, arr, &err), &err);
    CHECK_OK(lp_gguf_writer_add_array(w, "t.arr_empty", LP_GGUF_TYPE_UINT8, 0, arr, &err), &err);
    CHECK_OK(lp_gguf_writer_add_str_array(w, "t.arr_str", 3, STRS, NULL, &err), &err);
    // refusals of the writer itself
    CHECK(lp_gguf_writer_add_str(w, "t.u8", "again", &err) == LP_ERR_INVALID_ARG);
    CHECK(lp_gguf_writer_add_scalar(w, "t.x", LP_GGUF_TYPE_STRING, &u8, &err) ==
          LP_ERR_INVALID_ARG);
    int64_t bad_ne[1] = {33};
    CHECK(lp_gguf_writer_add_tensor(w, "bad", LP_GGML_Q8_0, 1, bad_ne, &err) ==
          LP_ERR_INVALID_ARG);
    for (int k = 0; k < N_TYPES; k++) {
        int blk = lp_gguf_type_block_elems(TYPES[k]);
        // k-th tensor: k % 4 + 1 dims, rows of 2 blocks
        int64_t ne[4] = {2 * blk, 3, 2, 1};
        char name[32];
        snprintf(name, sizeof name, "blk.%d.w", k);
        CHECK_OK(lp_gguf_writer_add_tensor(w, name, TYPES[k], k % 4 + 1, ne, &err), &err);
    }
    int64_t ne0[2] = {0, 5}; // an empty tensor
    CHECK_OK(lp_gguf_writer_add_tensor(w, "empty", LP_GGML_TYPE_F32, 2, ne0, &err), &err);
    CHECK_OK(lp_gguf_writer_begin(w, path, &err), &err);
    CHECK(lp_gguf_writer_put(w, "blk.1.w", bufs[0], 1, &err) == LP_ERR_INVALID_ARG);
    for (int k = 0; k < N_TYPES; k++) {
        size_t rows = (size_t)(k % 4 >= 1 ? 3 : 1) * (k % 4 >= 2 ? 2 : 1);
        size_t n = rows * 2 * (size_t)lp_gguf_type_block_bytes(TYPES[k]);
        char name[32];
        snprintf(name, sizeof name, "blk.%d.w", k);
        fill(bufs[k], n, (unsigned)k);
        CHECK_OK(lp_gguf_writer_put(w, name, bufs[k], n, &err), &err);
    }
    CHECK_OK(lp_gguf_writer_put(w, "empty", NULL, 0, &err), &err);
    CHECK_OK(lp_gguf_writer_finish(w, &err), &err);
    lp_gguf_writer_destroy(w);
    return 0;
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)len);
    if (p && fread(p, 1, (size_t)len, f) != (size_t)len) {
        free(p);
        p = NULL;
    }
    fclose(f);
    *n = (size_t)len;
    return p;
}

static void check_reference(const char *path, uint32_t alignment, uint8_t **bufs) {
    struct lp_error err = {0};
    struct lp_gguf *g = NULL;
    CHECK_OK(lp_gguf_open(&g, path, &err), &err);
    if (!g) return;
    CHECK(lp_gguf_version(g) == 3);
    CHECK(lp_gguf_alignment(g) == (alignment ? alignment : 32));
    CHECK(lp_gguf_n_kv(g) == 15 + (alignment ? 1 : 0));
    CHECK(lp_gguf_n_tensors(g) == N_TYPES + 1);
    int64_t v;
    double d;
    bool b;
    struct lp_gguf_str s;
    CHECK_OK(lp_gguf_get_int(g, "t.u8", 0, 255, &v, &err), &err);
    CHECK(v == 200);
    CHECK_OK(lp_gguf_get_int(g, "t.i8", -128, 127, &v, &err), &err);
    CHECK(v == -7);
    CHECK_OK(lp_gguf_get_int(g, "t.u16", 0, 65535, &v, &err), &err);
    CHECK(v == 65000);
    CHECK_OK(lp_gguf_get_int(g, "t.i16", INT16_MIN, 0, &v, &err), &err);
    CHECK(v == -30000);
    CHECK_OK(lp_gguf_get_int(g, "t.u32", 0, INT64_MAX, &v, &err), &err);
    CHECK(v == 4000000000ll);
    CHECK_OK(lp_gguf_get_int(g, "t.i32", INT32_MIN, 0, &v, &err), &err);
    CHECK(v == -2000000000ll);
    CHECK_OK(lp_gguf_get_int(g, "t.u64", 0, INT64_MAX, &v, &err), &err);
    CHECK(v == (1ll << 40));
    CHECK_OK(lp_gguf_get_int(g, "t.i64", INT64_MIN, 0, &v, &err), &err);
    CHECK(v == -(1ll << 50));
    CHECK_OK(lp_gguf_get_float(g, "t.f32", 0, 1, &d, &err), &err);
    CHECK(d == (double)1.5e-6f);
    CHECK_OK(lp_gguf_get_float(g, "t.f64", 0, 1e7, &d, &err), &err);
    CHECK(d == 1e6);
    CHECK_OK(lp_gguf_get_bool(g, "t.bool", &b, &err), &err);
    CHECK(b);
    CHECK_OK(lp_gguf_get_str(g, "general.architecture", &s, &err), &err);
    CHECK(lp_gguf_str_eq(s, "qwen3") && !lp_gguf_str_eq(s, "qwen"));
    const struct lp_gguf_kv *kv = NULL;
    CHECK_OK(lp_gguf_get_array(g, "t.arr_i32", LP_GGUF_TYPE_INT64, &kv, &err), &err);
    CHECK(kv && kv->n_elems == 5 && lp_gguf_array_int(kv, 0) == 3 && lp_gguf_array_int(kv, 4) == -5);
    CHECK_OK(lp_gguf_get_array(g, "t.arr_str", LP_GGUF_TYPE_STRING, &kv, &err), &err);
    if (kv && kv->n_elems == 3) {
        struct lp_gguf_str strs[3];
        lp_gguf_array_strs(kv, strs);
        for (int i = 0; i < 3; i++) CHECK(lp_gguf_str_eq(strs[i], STRS[i]));
    }
    CHECK_OK(lp_gguf_get_array(g, "t.arr_empty", LP_GGUF_TYPE_UINT8, &kv, &err), &err);
    CHECK(kv && kv->n_elems == 0);
    // the getters' refusals name the key
    CHECK(lp_gguf_get_int(g, "t.none", 0, 1, &v, &err) == LP_ERR_FORMAT &&
          strstr(err.msg, "missing metadata key 't.none'"));
    CHECK(lp_gguf_get_int(g, "t.u8", 0, 100, &v, &err) == LP_ERR_FORMAT &&
          strstr(err.msg, "'t.u8' is 200, expected 0..100"));
    CHECK(lp_gguf_get_int(g, "t.f32", 0, 1, &v, &err) == LP_ERR_FORMAT &&
          strstr(err.msg, "expected an integer"));
    CHECK(lp_gguf_get_float(g, "t.u32", 0, 1, &d, &err) == LP_ERR_FORMAT);
    CHECK(lp_gguf_get_float(g, "t.f64", 0, 10, &d, &err) == LP_ERR_FORMAT);
    CHECK(lp_gguf_get_str(g, "t.arr_str", &s, &err) == LP_ERR_FORMAT &&
          strstr(err.msg, "an array of str"));
    CHECK(lp_gguf_get_bool(g, "t.u8", &b, &err) == LP_ERR_FORMAT);
    CHECK(lp_gguf_get_array(g, "t.arr_i32", LP_GGUF_TYPE_STRING, &kv, &err) == LP_ERR_FORMAT);
    CHECK(lp_gguf_get_array(g, "t.u32", LP_GGUF_TYPE_INT64, &kv, &err) == LP_ERR_FORMAT);
    // tensors: shapes, sizes, bytes, alignment
    for (int k = 0; k < N_TYPES; k++) {
        char name[32];
        snprintf(name, sizeof name, "blk.%d.w", k);
        const struct lp_gguf_tensor *t = lp_gguf_find_tensor(g, name);
        CHECK_MSG(t != NULL, "%s", name);
        if (!t) continue;
        int blk = lp_gguf_type_block_elems(TYPES[k]);
        size_t rows = (size_t)(k % 4 >= 1 ? 3 : 1) * (k % 4 >= 2 ? 2 : 1);
        size_t n = rows * 2 * (size_t)lp_gguf_type_block_bytes(TYPES[k]);
        CHECK(t->type == TYPES[k] && t->n_dims == k % 4 + 1 && t->ne[0] == 2 * blk);
        CHECK(t->n_bytes == n && memcmp(t->data, bufs[k], n) == 0);
        CHECK(t->offset % lp_gguf_alignment(g) == 0);
        for (int dd = t->n_dims; dd < 4; dd++) CHECK(t->ne[dd] == 1);
    }
    const struct lp_gguf_tensor *e = lp_gguf_find_tensor(g, "empty");
    CHECK(e && e->n_bytes == 0 && e->ne[1] == 5);
    CHECK(lp_gguf_find_tensor(g, "blk.9.w") == NULL && lp_gguf_find_kv(g, "t") == NULL);
    CHECK(lp_gguf_kv_at(g, -1) == NULL && lp_gguf_tensor_at(g, N_TYPES + 1) == NULL);
    lp_gguf_close(g);
}

static void test_truncations(const uint8_t *img, size_t n) {
    struct lp_error err = {0};
    CHECK_OK(parse_exact(img, n, &err), &err);
    int bad = 0;
    for (size_t len = 0; len < n; len++) {
        enum lp_status st = parse_exact(img, len, &err);
        if (st != LP_ERR_FORMAT) {
            bad++;
            if (bad < 5) fprintf(stderr, "truncated to %zu: %s (%s)\n", len, lp_status_str(st), err.msg);
        }
    }
    CHECK_MSG(bad == 0, "%d of %zu truncations were not LP_ERR_FORMAT", bad, n);
}

// ---- hand-built headers ------------------------------------------------------------

// A header with one kv (general.alignment, when align != 0) and one tensor
// "w" (F32, ne {8, 2}) at `offset`, data section of `data_bytes`.
static struct img one_tensor(uint32_t align, uint32_t type, uint32_t n_dims, const uint64_t *ne,
                             uint64_t offset, size_t data_bytes) {
    struct img b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 1);
    put_u64(&b, align ? 1 : 0);
    if (align) {
        put_str(&b, "general.alignment");
        put_u32(&b, LP_GGUF_TYPE_UINT32);
        put_u32(&b, align);
    }
    put_str(&b, "w");
    put_u32(&b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) put_u64(&b, ne[d]);
    put_u32(&b, type);
    put_u64(&b, offset);
    size_t a = align ? align : 32;
    put_zeros(&b, (a - b.n % a) % a);
    put_zeros(&b, data_bytes);
    return b;
}

static void expect(struct img b, enum lp_status want, const char *needle, const char *what) {
    struct lp_error err = {0};
    enum lp_status st = parse_exact(b.p, b.n, &err);
    CHECK_MSG(st == want && (!needle || strstr(err.msg, needle)), "%s: got %s '%s', want %s '%s'",
              what, lp_status_str(st), err.msg, lp_status_str(want), needle ? needle : "");
    free(b.p);
}

// A header: n_tensors 0, then kv pairs written by the caller.
static struct img kv_header(uint64_t n_kv) {
    struct img b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 0);
    put_u64(&b, n_kv);
    return b;
}

static void test_bad_headers(void) {
    uint64_t ne[2] = {8, 2};
    // the good one first
    expect(one_tensor(0, LP_GGML_TYPE_F32, 2, ne, 0, 64), LP_OK, NULL, "good");
    expect(one_tensor(64, LP_GGML_TYPE_F32, 2, ne, 0, 64), LP_OK, NULL, "good, align 64");
    struct img b = one_tensor(0, 0, 2, ne, 0, 64);
    memcpy(b.p, "GGUV", 4);
    expect(b, LP_ERR_FORMAT, "not a GGUF file", "magic");
    for (uint32_t v = 0; v < 6; v++) {
        if (v == 2 || v == 3) continue;
        b = one_tensor(0, 0, 2, ne, 0, 64);
        memcpy(b.p + 4, &v, 4);
        expect(b, LP_ERR_UNSUPPORTED, "version", "version");
    }
    b = one_tensor(0, 0, 2, ne, 0, 64);
    b.p[4] = 0, b.p[7] = 3; // 0x03000000: byte-swapped 3
    expect(b, LP_ERR_UNSUPPORTED, "big-endian", "big-endian");
    // counts larger than the file can hold
    b = one_tensor(0, 0, 2, ne, 0, 64);
    uint64_t huge = 1ull << 60;
    memcpy(b.p + 8, &huge, 8);
    expect(b, LP_ERR_FORMAT, "tensors, more than", "n_tensors");
    b = one_tensor(0, 0, 2, ne, 0, 64);
    memcpy(b.p + 16, &huge, 8);
    expect(b, LP_ERR_FORMAT, "metadata pairs, more than", "n_kv");
    // metadata
    b = kv_header(1);
    put_str(&b, "");
    put_u32(&b, LP_GGUF_TYPE_UINT8);
    put_zeros(&b, 9);
    expect(b, LP_ERR_FORMAT, "empty key", "empty key");
    b = kv_header(1);
    put_u64(&b, 3);
    put(&b, "a\0b", 3);
    put_u32(&b, LP_GGUF_TYPE_UINT8);
    put_zeros(&b, 1);
    expect(b, LP_ERR_FORMAT, "NUL", "key with NUL");
    b = kv_header(1);
    put_str(&b, "k");
    put_u32(&b, 13);
    put_zeros(&b, 16);
    expect(b, LP_ERR_FORMAT, "not a GGUF type", "value type 13");
    b = kv_header(1);
    put_str(&b, "k");
    put_u32(&b, LP_GGUF_TYPE_ARRAY);
    put_u32(&b, LP_GGUF_TYPE_ARRAY);
    put_u64(&b, 1);
    put_zeros(&b, 16);
    expect(b, LP_ERR_FORMAT, "arrays of arrays", "nested array");
    b = kv_header(1);
    put_str(&b, "k");
    put_u32(&b, LP_GGUF_TYPE_ARRAY);
    put_u32(&b, LP_GGUF_TYPE_UINT32);
    put_u64(&b, 1ull << 62);
    put_zeros(&b, 16);
    expect(b, LP_ERR_FORMAT, "run past the end", "array count");
    b = kv_header(1);
    put_str(&b, "k");
    put_u32(&b, LP_GGUF_TYPE_ARRAY);
    put_u32(&b, LP_GGUF_TYPE_STRING);
    put_u64(&b, 1ull << 61);
    put_zeros(&b, 16);
    expect(b, LP_ERR_FORMAT, "strings cannot fit", "string array count");
    b = kv_header(1);
    put_str(&b, "k");
    put_u32(&b, LP_GGUF_TYPE_STRING);
    put_u64(&b, UINT64_MAX);
    put_zeros(&b, 16);
    expect(b, LP_ERR_FORMAT, "runs past the end", "string length");
    b = kv_header(1);
    put_u64(&b, UINT64_MAX - 3);
    put_zeros(&b, 16);
    expect(b, LP_ERR_FORMAT, "runs past the end", "key length");
    b = kv_header(2);
    for (int i = 0; i < 2; i++) {
        put_str(&b, "dup.key");
        put_u32(&b, LP_GGUF_TYPE_UINT8);
        put_zeros(&b, 1);
    }
    expect(b, LP_ERR_FORMAT, "appears twice", "duplicate key");
    // alignment
    b = kv_header(1);
    put_str(&b, "general.alignment");
    put_u32(&b, LP_GGUF_TYPE_UINT64);
    put_u64(&b, 32);
    expect(b, LP_ERR_FORMAT, "expected u32", "alignment type");
    uint32_t aligns[4] = {0, 3, 48, 1u << 31};
    for (int i = 0; i < 4; i++) {
        b = kv_header(1);
        put_str(&b, "general.alignment");
        put_u32(&b, LP_GGUF_TYPE_UINT32);
        put_u32(&b, aligns[i]);
        expect(b, LP_ERR_FORMAT, "power of two", "alignment value");
    }
    // alignment 1: the data section starts right after the 98-byte header,
    // so an F32 tensor there is misaligned
    b = one_tensor(1, LP_GGML_TYPE_F32, 2, ne, 0, 64);
    CHECK(b.n == 98 + 64);
    expect(b, LP_ERR_FORMAT, "not aligned to 4", "alignment 1, F32");
    b = one_tensor(2, LP_GGML_TYPE_BF16, 2, ne, 0, 32);
    expect(b, LP_OK, NULL, "alignment 2, BF16");
    // tensor infos
    uint64_t ne5[5] = {8, 1, 1, 1, 1};
    expect(one_tensor(0, 0, 5, ne5, 0, 64), LP_ERR_FORMAT, "5 dims", "5 dims");
    expect(one_tensor(0, 0, 0, ne5, 0, 64), LP_ERR_FORMAT, "0 dims", "0 dims");
    uint64_t ne_big[2] = {1ull << 61, 1};
    expect(one_tensor(0, 0, 2, ne_big, 0, 64), LP_ERR_FORMAT, "too large", "ne huge");
    uint64_t ne_prod[3] = {1ull << 30, 1ull << 30, 1ull << 30};
    expect(one_tensor(0, 0, 3, ne_prod, 0, 64), LP_ERR_FORMAT, "too large", "ne product");
    uint64_t ne_neg[2] = {(uint64_t)-8, 1};
    expect(one_tensor(0, 0, 2, ne_neg, 0, 64), LP_ERR_FORMAT, "too large", "ne negative");
    expect(one_tensor(0, 3, 2, ne, 0, 64), LP_ERR_UNSUPPORTED, "ggml type 3 (Q4_1) is not supported", "Q4_1");
    expect(one_tensor(0, 99, 2, ne, 0, 64), LP_ERR_UNSUPPORTED, "ggml type 99", "type 99");
    uint64_t ne33[2] = {33, 2};
    expect(one_tensor(0, LP_GGML_Q8_0, 2, ne33, 0, 64), LP_ERR_FORMAT, "not a multiple",
           "row not whole blocks");
    expect(one_tensor(0, 0, 2, ne, 32, 96), LP_ERR_FORMAT, "expected 0", "offset not first");
    expect(one_tensor(0, 0, 2, ne, 0, 63), LP_ERR_FORMAT, "run past the end", "data short");
    uint64_t ne_q[2] = {256, 4};
    expect(one_tensor(0, LP_GGML_Q6_K, 2, ne_q, 0, 4 * 210), LP_OK, NULL, "Q6_K");
    expect(one_tensor(0, LP_GGML_Q6_K, 2, ne_q, 0, 4 * 210 - 1), LP_ERR_FORMAT,
           "run past the end", "Q6_K short");
    // names
    b = kv_header(0);
    b.p[8] = 2; // two tensors, both "w"
    for (int i = 0; i < 2; i++) {
        put_str(&b, "w");
        put_u32(&b, 1);
        put_u64(&b, 8);
        put_u32(&b, 0);
        put_u64(&b, (uint64_t)i * 32);
    }
    put_zeros(&b, (32 - b.n % 32) % 32 + 64);
    expect(b, LP_ERR_FORMAT, "appears twice", "duplicate tensor");
    char long_name[80];
    memset(long_name, 'x', 64);
    long_name[64] = '\0';
    b = kv_header(0);
    b.p[8] = 1;
    put_str(&b, long_name);
    put_u32(&b, 1);
    put_u64(&b, 8);
    put_u32(&b, 0);
    put_u64(&b, 0);
    put_zeros(&b, 128);
    expect(b, LP_ERR_FORMAT, "name of 64 bytes", "name too long");
    // metadata only, no tensors: a vocabulary file
    b = kv_header(1);
    put_str(&b, "tokenizer.ggml.model");
    put_u32(&b, LP_GGUF_TYPE_STRING);
    put_str(&b, "gpt2");
    expect(b, LP_OK, NULL, "vocab only");
}

// ---- mutations ---------------------------------------------------------------------

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_mutations(const uint8_t *img, size_t n) {
    static const uint64_t extremes[] = {0, 1, 2, 3, 4, 5, 31, 32, 33, 64, 255, 256, 0x7fffffff,
                                        0x80000000u, 0xffffffffu, 1ull << 32, 1ull << 62,
                                        (uint64_t)INT64_MAX, UINT64_MAX};
    int n_ok = 0;
    struct lp_error err;
    for (int iter = 0; iter < 4000; iter++) {
        uint8_t *p = malloc(n);
        memcpy(p, img, n);
        size_t len = n;
        int kind = (int)(rnd() % 4);
        size_t at = (size_t)(rnd() % (n < 600 ? n : 600)); // mostly the header
        if (kind == 0) {
            p[at] ^= (uint8_t)(1u << (rnd() % 8));
        } else if (kind == 1) {
            for (int k = 0; k < 4; k++) p[(at + (size_t)k * 7) % n] = (uint8_t)rnd();
        } else if (kind == 2 && at + 8 <= n) {
            uint64_t v = extremes[rnd() % (sizeof extremes / sizeof extremes[0])];
            memcpy(p + at, &v, (rnd() & 1) ? 8 : 4);
        } else {
            len = (size_t)(rnd() % n);
        }
        if (parse_exact(p, len, &err) == LP_OK) n_ok++;
        free(p);
    }
    printf("mutations: 4000 parsed, %d still valid\n", n_ok);
}

int main(void) {
    const char *work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    char path[1024];
    uint8_t *bufs[N_TYPES];
    for (int k = 0; k < N_TYPES; k++) bufs[k] = malloc(6 * 2 * 210);
    uint32_t aligns[3] = {0, 64, 8};
    for (int a = 0; a < 3; a++) {
        snprintf(path, sizeof path, "%s/test_gguf_%d_%u.gguf", work, (int)getpid(), aligns[a]);
        if (write_reference(path, aligns[a], bufs) == 0) check_reference(path, aligns[a], bufs);
        if (a == 0) {
            size_t n = 0;
            uint8_t *img = read_all(path, &n);
            CHECK(img != NULL);
            if (img) {
                test_truncations(img, n);
                test_mutations(img, n);
            }
            free(img);
        }
        unlink(path);
    }
    for (int k = 0; k < N_TYPES; k++) free(bufs[k]);
    struct lp_error err = {0};
    struct lp_gguf *g = NULL;
    CHECK(lp_gguf_open(&g, "/nonexistent.gguf", &err) == LP_ERR_IO && g == NULL &&
          strstr(err.msg, "/nonexistent.gguf"));
    test_bad_headers();
    return lp_test_finish("gguf");
}
