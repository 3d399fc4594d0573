// SPDX-License-Identifier: MIT
// test_safetensors.c -- the safetensors reader: lp_st_parse on hand-built
// memory images (8-byte LE header length + JSON + data) and lp_st_open on
// files. Every malformed header must give the right status and a message
// naming the file and the tensor / field; a valid file's directory must be
// found by lp_st_find; every truncation of a small valid file must fail
// cleanly (each image is copied into a buffer of exactly its size so ASan
// sees any read past the end).
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lp_test.h"
#include "model/internal.h"

#define IMG_NAME "img.safetensors"

// A safetensors image in a heap buffer of exactly n bytes.
struct img {
    uint8_t *p;
    size_t n;
};

static void put_u64le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

// Builds 8-byte length + header (space-padded to a multiple of 8 so the data
// section is 8-aligned) + data_n bytes of data (copied from data, or a
// pattern when data is NULL).
static struct img make_img(const char *header, const void *data, size_t data_n) {
    size_t h = strlen(header);
    size_t hp = (h + 7) / 8 * 8;
    struct img im = {0};
    im.n = 8 + hp + data_n;
    im.p = malloc(im.n);
    if (!im.p) abort();
    put_u64le(im.p, hp);
    memcpy(im.p + 8, header, h);
    memset(im.p + 8 + h, ' ', hp - h);
    for (size_t i = 0; i < data_n; i++)
        im.p[8 + hp + i] = data ? ((const uint8_t *)data)[i] : (uint8_t)(i * 7 + 1);
    return im;
}

// Raw bytes as given (no length prefix computed).
static struct img make_raw(const void *bytes, size_t n) {
    struct img im = {malloc(n ? n : 1), n};
    if (!im.p) abort();
    if (n) memcpy(im.p, bytes, n);
    return im;
}

static struct lp_st_file *new_file(void) {
    struct lp_st_file *f = calloc(1, sizeof *f);
    if (!f) abort();
    f->path = strdup(IMG_NAME);
    return f;
}

// Parses im; returns the status, leaves the message in err. The parsed file
// is returned in *out (caller closes) or closed when out is NULL.
static enum lp_status parse(const struct img *im, struct lp_error *err, struct lp_st_file **out) {
    struct lp_st_file *f = new_file();
    lp_error_clear(err);
    enum lp_status st = lp_st_parse(f, im->p, im->n, err);
    if (out && st == LP_OK) *out = f;
    else lp_st_close(f);
    return st;
}

// Parses a header with data_n pattern bytes; checks status and that the
// message contains every non-NULL needle.
#define EXPECT_HDR(header, data_n, status, n1, n2)                                                 \
    do {                                                                                           \
        struct img im_ = make_img((header), NULL, (data_n));                                       \
        struct lp_error e_;                                                                        \
        enum lp_status st_ = parse(&im_, &e_, NULL);                                               \
        CHECK_MSG(st_ == (status), "header %s: got %s (%s), want %s", (header),                    \
                  lp_status_str(st_), e_.msg, lp_status_str(status));                              \
        if ((status) != LP_OK) {                                                                   \
            CHECK_MSG(strstr(e_.msg, IMG_NAME) != NULL, "msg lacks file name: %s", e_.msg);        \
            if (n1) CHECK_MSG(strstr(e_.msg, (const char *)(n1)) != NULL, "msg lacks '%s': %s",   \
                              (const char *)(n1), e_.msg);                                         \
            if (n2) CHECK_MSG(strstr(e_.msg, (const char *)(n2)) != NULL, "msg lacks '%s': %s",   \
                              (const char *)(n2), e_.msg);                                         \
        }                                                                                          \
        free(im_.p);                                                                               \
    } while (0)

static const char *NONE = NULL;

static void test_short_and_length(void) {
    struct lp_error err;
    // Shorter than the length field, every size 0..7.
    for (size_t n = 0; n < 8; n++) {
        uint8_t zeros[8] = {0};
        struct img im = make_raw(zeros, n);
        enum lp_status st = parse(&im, &err, NULL);
        CHECK_MSG(st == LP_ERR_FORMAT, "n=%zu: %s", n, lp_status_str(st));
        CHECK_MSG(strstr(err.msg, IMG_NAME) && strstr(err.msg, "8-byte"), "%s", err.msg);
        free(im.p);
    }
    // Header length past the end: 100 announced, 20 follow.
    {
        uint8_t b[28];
        memset(b, ' ', sizeof b);
        put_u64le(b, 100);
        struct img im = make_raw(b, sizeof b);
        CHECK(parse(&im, &err, NULL) == LP_ERR_FORMAT);
        CHECK_MSG(strstr(err.msg, IMG_NAME) && strstr(err.msg, "100"), "%s", err.msg);
        CHECK_MSG(strstr(err.msg, "truncated"), "%s", err.msg);
        free(im.p);
    }
    // Header length exactly 8 bytes of length field and nothing more: 0-byte
    // header is not JSON.
    {
        uint8_t b[8] = {0};
        struct img im = make_raw(b, sizeof b);
        CHECK(parse(&im, &err, NULL) == LP_ERR_FORMAT);
        CHECK_MSG(strstr(err.msg, IMG_NAME) && strstr(err.msg, "JSON"), "%s", err.msg);
        free(im.p);
    }
    // Header length > 100 MiB (and the largest u64): refused before any read.
    uint64_t bigs[] = {LP_ST_MAX_HEADER_BYTES + 1, (uint64_t)1 << 40, UINT64_MAX,
                       UINT64_MAX - 7};
    for (size_t i = 0; i < sizeof bigs / sizeof bigs[0]; i++) {
        uint8_t b[16];
        memset(b, ' ', sizeof b);
        put_u64le(b, bigs[i]);
        struct img im = make_raw(b, sizeof b);
        CHECK(parse(&im, &err, NULL) == LP_ERR_FORMAT);
        CHECK_MSG(strstr(err.msg, IMG_NAME) && strstr(err.msg, "limit"), "%s", err.msg);
        free(im.p);
    }
}

static void test_bad_headers(void) {
    EXPECT_HDR("{not json", 0, LP_ERR_FORMAT, "JSON", NONE);
    EXPECT_HDR("", 0, LP_ERR_FORMAT, "JSON", NONE);
    EXPECT_HDR("[1, 2]", 0, LP_ERR_FORMAT, "object", NONE);
    EXPECT_HDR("\"str\"", 0, LP_ERR_FORMAT, NONE, NONE);
    EXPECT_HDR("{\"w\": 5}", 0, LP_ERR_FORMAT, "'w'", "not an object");
    EXPECT_HDR("{\"w\": [\"F32\", [1]]}", 0, LP_ERR_FORMAT, "'w'", "not an object");
    // dtype
    EXPECT_HDR("{\"w\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 8, LP_ERR_FORMAT, "'w'",
               "dtype");
    EXPECT_HDR("{\"w\": {\"dtype\": 4, \"shape\": [1], \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "dtype");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 8,
               LP_ERR_UNSUPPORTED, "'w'", "F64");
    EXPECT_HDR("{\"w\": {\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_UNSUPPORTED, "'w'", "f32");
    // shape
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 8, LP_ERR_FORMAT, "'w'",
               "shape");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "shape");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "shape[0]");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1, 1.5], \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "shape[1]");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "shape[0]");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [null], \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "shape[0]");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], "
               "\"data_offsets\": [0, 4]}}",
               8, LP_ERR_FORMAT, "'w'", "dims");
    // huge dims: product overflows 64 bits / each dim too big
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], "
               "\"data_offsets\": [0, 0]}}",
               8, LP_ERR_FORMAT, "'w'", "shape");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [9223372036854775807], "
               "\"data_offsets\": [0, 4]}}",
               8, LP_ERR_FORMAT, "'w'", "shape");
    EXPECT_HDR("{\"w\": {\"dtype\": \"I64\", \"shape\": [2305843009213693952, 2], "
               "\"data_offsets\": [0, 0]}}",
               8, LP_ERR_FORMAT, "'w'", "shape");
    EXPECT_HDR("{\"w\": {\"dtype\": \"I64\", \"shape\": [65536, 65536, 65536, 65536], "
               "\"data_offsets\": [0, 0]}}",
               8, LP_ERR_FORMAT, "'w'", "shape");
    // a zero dim makes the product 0 even next to huge dims
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [0, 4611686018427387904], "
               "\"data_offsets\": [0, 0]}}",
               8, LP_OK, NONE, NONE);
    // data_offsets
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1]}}", 8, LP_ERR_FORMAT, "'w'",
               "data_offsets");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": 4}}", 8,
               LP_ERR_FORMAT, "'w'", "data_offsets");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4]}}", 8,
               LP_ERR_FORMAT, "'w'", "data_offsets");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8,
               LP_ERR_FORMAT, "'w'", "data_offsets");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 8,
               LP_ERR_FORMAT, "'w'", "data_offsets");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, -4]}}", 8,
               LP_ERR_FORMAT, "'w'", "data_offsets");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, \"4\"]}}", 8,
               LP_ERR_FORMAT, "'w'", "data_offsets");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0.0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "data_offsets");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "begin 8 > end 4");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], "
               "\"data_offsets\": [18446744073709551615, 4]}}",
               8, LP_ERR_FORMAT, NONE, NONE);
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], "
               "\"data_offsets\": [9223372036854775804, 9223372036854775807]}}",
               8, LP_ERR_FORMAT, "'w'", NONE);
    // end past the data section (truncated data)
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 4,
               LP_ERR_FORMAT, "'w'", "past the end");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [8, 12]}}", 8,
               LP_ERR_FORMAT, "'w'", "past the end");
    // size mismatch dtype x shape
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "needs 8");
    EXPECT_HDR("{\"w\": {\"dtype\": \"BF16\", \"shape\": [2, 2], \"data_offsets\": [0, 16]}}", 16,
               LP_ERR_FORMAT, "'w'", "needs 8");
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 4]}}", 8,
               LP_ERR_FORMAT, "'w'", "needs 0");
    // misaligned data (data section itself is 8-aligned)
    EXPECT_HDR("{\"w\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [2, 6]}}", 8,
               LP_ERR_FORMAT, "'w'", "aligned");
    EXPECT_HDR("{\"w\": {\"dtype\": \"I64\", \"shape\": [1], \"data_offsets\": [4, 12]}}", 16,
               LP_ERR_FORMAT, "'w'", "aligned");
    EXPECT_HDR("{\"w\": {\"dtype\": \"BF16\", \"shape\": [1], \"data_offsets\": [1, 3]}}", 8,
               LP_ERR_FORMAT, "'w'", "aligned");
    EXPECT_HDR("{\"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [3, 4]}}", 8, LP_OK,
               NONE, NONE);
    // duplicate keys
    EXPECT_HDR("{\"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}, "
               "\"w\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
               8, LP_ERR_FORMAT, "duplicate", NONE);
    // The second entry is bad: the error names it, not the first.
    EXPECT_HDR("{\"a\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}, "
               "\"bad_one\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [1, 2]}}",
               8, LP_ERR_FORMAT, "'bad_one'", NONE);
}

// The valid 3-tensor image used below and by the truncation loop.
static const char *VALID_HDR =
    "{\"__metadata__\": {\"format\": \"pt\", \"note\": \"x\"}, "
    "\"b.bias\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
    "\"a.weight\": {\"dtype\": \"BF16\", \"shape\": [2, 3], \"data_offsets\": [8, 20]}, "
    "\"empty\": {\"dtype\": \"F32\", \"shape\": [0, 5], \"data_offsets\": [20, 20]}, "
    "\"c.codes\": {\"dtype\": \"U32\", \"shape\": [1, 2], \"data_offsets\": [20, 28]}, "
    "\"scalar\": {\"dtype\": \"I64\", \"shape\": [], \"data_offsets\": [32, 40]}}";
#define VALID_DATA 40

static void test_valid(void) {
    struct img im = make_img(VALID_HDR, NULL, VALID_DATA);
    struct lp_error err;
    struct lp_st_file *f = NULL;
    CHECK_OK(parse(&im, &err, &f), &err);
    if (!f) {
        free(im.p);
        return;
    }
    const uint8_t *data0 = im.p + im.n - VALID_DATA;
    CHECK(f->n_tensors == 5); // __metadata__ is not a tensor
    CHECK(lp_st_find(f, "__metadata__") == NULL);
    CHECK(lp_st_find(f, "nope") == NULL);
    CHECK(lp_st_find(f, "") == NULL);
    CHECK(lp_st_find(f, "a.weigh") == NULL);
    CHECK(lp_st_find(f, "a.weightt") == NULL);
    const struct lp_st_tensor *t = lp_st_find(f, "a.weight");
    CHECK(t && t->dtype == LP_DTYPE_BF16 && t->n_dims == 2 && t->shape[0] == 2 &&
          t->shape[1] == 3 && t->nbytes == 12 && t->data == data0 + 8);
    t = lp_st_find(f, "b.bias");
    CHECK(t && t->dtype == LP_DTYPE_F32 && t->n_dims == 1 && t->shape[0] == 2 && t->nbytes == 8 &&
          t->data == data0);
    if (t) CHECK(memcmp(t->data, data0, 8) == 0);
    t = lp_st_find(f, "c.codes");
    CHECK(t && t->dtype == LP_DTYPE_U32 && t->n_dims == 2 && t->nbytes == 8 &&
          t->data == data0 + 20);
    t = lp_st_find(f, "empty");
    CHECK(t && t->nbytes == 0 && t->n_dims == 2 && t->shape[0] == 0 && t->shape[1] == 5);
    t = lp_st_find(f, "scalar");
    CHECK(t && t->dtype == LP_DTYPE_I64 && t->n_dims == 0 && t->nbytes == 8 &&
          t->data == data0 + 32);
    // every name findable, names sorted
    for (int i = 0; i < f->n_tensors; i++) {
        CHECK(lp_st_find(f, f->tensors[i].name) == &f->tensors[i]);
        if (i) CHECK(strcmp(f->tensors[i - 1].name, f->tensors[i].name) < 0);
    }
    lp_st_close(f);
    free(im.p);

    // An empty header object and a metadata-only header are valid, empty files.
    EXPECT_HDR("{}", 0, LP_OK, NONE, NONE);
    EXPECT_HDR("{\"__metadata__\": {}}", 0, LP_OK, NONE, NONE);
    {
        struct img e = make_img("{}", NULL, 0);
        struct lp_st_file *g = NULL;
        CHECK_OK(parse(&e, &err, &g), &err);
        if (g) {
            CHECK(g->n_tensors == 0);
            CHECK(lp_st_find(g, "x") == NULL);
            lp_st_close(g);
        }
        free(e.p);
    }
    // Many tensors: lp_st_find over a bigger sorted table.
    {
        char hdr[16384];
        size_t o = 0;
        o += (size_t)snprintf(hdr + o, sizeof hdr - o, "{");
        for (int i = 0; i < 100; i++)
            o += (size_t)snprintf(hdr + o, sizeof hdr - o,
                                  "%s\"t%03d\": {\"dtype\": \"U8\", \"shape\": [1], "
                                  "\"data_offsets\": [%d, %d]}",
                                  i ? ", " : "", (i * 37) % 100, i, i + 1);
        snprintf(hdr + o, sizeof hdr - o, "}");
        struct img e = make_img(hdr, NULL, 100);
        struct lp_st_file *g = NULL;
        CHECK_OK(parse(&e, &err, &g), &err);
        if (g) {
            CHECK(g->n_tensors == 100);
            int found = 0;
            for (int i = 0; i < 100; i++) {
                char name[16];
                snprintf(name, sizeof name, "t%03d", i);
                const struct lp_st_tensor *x = lp_st_find(g, name);
                found += x != NULL && strcmp(x->name, name) == 0 && x->nbytes == 1;
            }
            CHECK(found == 100);
            CHECK(lp_st_find(g, "t100") == NULL);
            lp_st_close(g);
        }
        free(e.p);
    }
}

static const char *work_dir(void) {
    static char dir[1024];
    const char *base = getenv("LP_WORK_DIR");
    if (!base || !*base) base = "/tmp";
    snprintf(dir, sizeof dir, "%s/test_safetensors", base);
    mkdir(base, 0755);
    mkdir(dir, 0755);
    return dir;
}

static int write_file(const char *path, const void *p, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return 0;
    int ok = fwrite(p, 1, n, fp) == n;
    return fclose(fp) == 0 && ok;
}

static void test_truncation(const char *dir) {
    struct img full = make_img(VALID_HDR, NULL, VALID_DATA);
    char path[1200];
    snprintf(path, sizeof path, "%s/trunc.safetensors", dir);
    int mem_err = 0, file_err = 0, mem_ok_full = 0, file_ok_full = 0, bad_status = 0;
    for (size_t n = 0; n <= full.n; n++) {
        struct lp_error err;
        // memory: a buffer of exactly n bytes
        struct img im = make_raw(full.p, n);
        enum lp_status st = parse(&im, &err, NULL);
        if (n < full.n) {
            mem_err += st != LP_OK;
            bad_status += st != LP_OK && st != LP_ERR_FORMAT;
            if (st != LP_OK && !strstr(err.msg, IMG_NAME))
                CHECK_MSG(0, "n=%zu: msg lacks file: %s", n, err.msg);
        } else {
            mem_ok_full = st == LP_OK;
        }
        free(im.p);
        // file
        CHECK(write_file(path, full.p, n));
        struct lp_st_file *f = NULL;
        lp_error_clear(&err);
        st = lp_st_open(&f, path, &err);
        if (n < full.n) {
            file_err += st != LP_OK;
            CHECK_MSG(st == LP_OK || f == NULL, "n=%zu: out not NULL on failure", n);
            if (st != LP_OK && !strstr(err.msg, path))
                CHECK_MSG(0, "n=%zu: msg lacks path: %s", n, err.msg);
        } else {
            file_ok_full = st == LP_OK && f && f->n_tensors == 5;
        }
        lp_st_close(f);
    }
    CHECK_MSG(mem_err == (int)full.n, "memory: %d of %zu truncations failed", mem_err, full.n);
    CHECK_MSG(file_err == (int)full.n, "file: %d of %zu truncations failed", file_err, full.n);
    CHECK(bad_status == 0);
    CHECK(mem_ok_full);
    CHECK(file_ok_full);
    // Trailing bytes after the data section are tolerated.
    {
        struct img big = make_img(VALID_HDR, NULL, VALID_DATA + 16);
        struct lp_error err;
        CHECK_OK(parse(&big, &err, NULL), &err);
        free(big.p);
    }
    unlink(path);
    free(full.p);
}

static void test_open_files(const char *dir) {
    struct lp_error err;
    struct lp_st_file *f = (struct lp_st_file *)1;
    char path[1200];
    // missing file
    snprintf(path, sizeof path, "%s/does_not_exist.safetensors", dir);
    CHECK(lp_st_open(&f, path, &err) == LP_ERR_IO);
    CHECK(f == NULL);
    CHECK_MSG(strstr(err.msg, path) != NULL, "%s", err.msg);
    // a directory
    f = (struct lp_st_file *)1;
    CHECK(lp_st_open(&f, dir, &err) == LP_ERR_IO);
    CHECK(f == NULL);
    CHECK_MSG(strstr(err.msg, dir) != NULL, "%s", err.msg);
    // 3-byte file
    snprintf(path, sizeof path, "%s/short.safetensors", dir);
    CHECK(write_file(path, "abc", 3));
    CHECK(lp_st_open(&f, path, &err) == LP_ERR_FORMAT);
    CHECK(f == NULL);
    CHECK_MSG(strstr(err.msg, path) && strstr(err.msg, "8-byte"), "%s", err.msg);
    // a bad header in a file: the message names the file path and the tensor
    {
        struct img im = make_img(
            "{\"wq\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", NULL, 8);
        snprintf(path, sizeof path, "%s/bad.safetensors", dir);
        CHECK(write_file(path, im.p, im.n));
        CHECK(lp_st_open(&f, path, &err) == LP_ERR_FORMAT);
        CHECK(f == NULL);
        CHECK_MSG(strstr(err.msg, path) && strstr(err.msg, "'wq'"), "%s", err.msg);
        free(im.p);
        unlink(path);
    }
    // a valid file: tensors point into the mapping and hold the written bytes
    {
        float vals[2] = {1.5f, -2.25f};
        uint8_t data[VALID_DATA] = {0};
        memcpy(data, vals, sizeof vals);
        for (int i = 8; i < VALID_DATA; i++) data[i] = (uint8_t)i;
        struct img im = make_img(VALID_HDR, data, sizeof data);
        snprintf(path, sizeof path, "%s/good.safetensors", dir);
        CHECK(write_file(path, im.p, im.n));
        CHECK_OK(lp_st_open(&f, path, &err), &err);
        if (f) {
            CHECK(f->n_tensors == 5);
            CHECK(strcmp(f->path, path) == 0);
            CHECK(f->map_bytes == im.n);
            const struct lp_st_tensor *t = lp_st_find(f, "b.bias");
            CHECK(t && ((const float *)t->data)[0] == 1.5f && ((const float *)t->data)[1] == -2.25f);
            CHECK(t && (const uint8_t *)t->data >= (const uint8_t *)f->map &&
                  (const uint8_t *)t->data + t->nbytes <= (const uint8_t *)f->map + f->map_bytes);
            t = lp_st_find(f, "a.weight");
            CHECK(t && ((const uint8_t *)t->data)[0] == 8 && ((const uint8_t *)t->data)[11] == 19);
            CHECK(lp_st_find(f, "missing") == NULL);
            lp_st_close(f);
        }
        free(im.p);
        unlink(path);
    }
    lp_st_close(NULL);
}

int main(void) {
    const char *dir = work_dir();
    test_short_and_length();
    test_bad_headers();
    test_valid();
    test_truncation(dir);
    test_open_files(dir);
    return lp_test_finish("test_safetensors");
}
