// SPDX-License-Identifier: MIT
// fuzz_gguf.c -- libFuzzer harness for the GGUF reader and the tokenizer
// built from GGUF metadata: the input is a whole file image given to
// lp_gguf_parse in a heap buffer of exactly its size. On success every
// tensor and metadata value must lie inside the image, lookups find what
// iteration saw, every getter either answers or says why, and the
// tokenizer (tokenizer.ggml.*) either builds or fails with a message.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layerpipe/gguf.h"
#include "layerpipe/tokenizer.h"

static void inside(const void *p, size_t n, const uint8_t *img, size_t size) {
    const uint8_t *q = p;
    if (n && (q < img || n > (size_t)(img + size - q))) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *img = malloc(size ? size : 1);
    if (!img) return 0;
    memcpy(img, data, size);
    struct lp_gguf *g = NULL;
    struct lp_error err = {0};
    if (lp_gguf_parse(&g, img, size, "fuzz.gguf", &err) != LP_OK) {
        if (!err.msg[0] || g) abort(); // every failure says why, and leaves nothing
        free(img);
        return 0;
    }
    for (int64_t i = 0; i < lp_gguf_n_tensors(g); i++) {
        const struct lp_gguf_tensor *t = lp_gguf_tensor_at(g, i);
        inside(t->data, t->n_bytes, img, size);
        int blk = lp_gguf_type_block_elems(t->type);
        if (blk == 0 || t->ne[0] % blk != 0 || lp_gguf_find_tensor(g, t->name) != t) abort();
    }
    for (int64_t i = 0; i < lp_gguf_n_kv(g); i++) {
        const struct lp_gguf_kv *kv = lp_gguf_kv_at(g, i);
        inside(kv->key.ptr, kv->key.n_bytes, img, size);
        inside(kv->value, kv->value_bytes, img, size);
        char key[128];
        if (kv->key.n_bytes >= sizeof key) continue;
        memcpy(key, kv->key.ptr, kv->key.n_bytes);
        key[kv->key.n_bytes] = '\0';
        if (lp_gguf_find_kv(g, key) != kv) abort();
        int64_t v;
        double d;
        bool b;
        struct lp_gguf_str s;
        const struct lp_gguf_kv *arr;
        enum lp_status st[5] = {lp_gguf_get_int(g, key, INT64_MIN, INT64_MAX, &v, &err),
                                lp_gguf_get_float(g, key, -1e300, 1e300, &d, &err),
                                lp_gguf_get_bool(g, key, &b, &err),
                                lp_gguf_get_str(g, key, &s, &err),
                                lp_gguf_get_array(g, key, LP_GGUF_TYPE_INT64, &arr, &err)};
        if (st[3] == LP_OK) inside(s.ptr, s.n_bytes, img, size);
        if (st[4] == LP_OK && arr->n_elems) (void)lp_gguf_array_int(arr, arr->n_elems - 1);
        if (lp_gguf_get_array(g, key, LP_GGUF_TYPE_STRING, &arr, &err) == LP_OK &&
            arr->n_elems < (1u << 22)) {
            struct lp_gguf_str *strs = malloc((size_t)(arr->n_elems + 1) * sizeof *strs);
            if (strs) {
                lp_gguf_array_strs(arr, strs);
                for (uint64_t k = 0; k < arr->n_elems; k++)
                    inside(strs[k].ptr, strs[k].n_bytes, img, size);
                free(strs);
            }
        }
        (void)st;
    }
    struct lp_tokenizer *tok = NULL;
    lp_error_clear(&err);
    if (lp_gguf_find_kv(g, "tokenizer.ggml.model")) {
        if (lp_tokenizer_create_gguf(&tok, g, &err) == LP_OK) {
            struct lp_token_list ids;
            lp_token_list_init(&ids);
            if (lp_tokenizer_encode(tok, "Hello <|im_end|> world", 22, 0, &ids, &err) == LP_OK) {
                char out[256];
                size_t n;
                for (size_t k = 0; k < ids.n_ids; k++)
                    if (ids.ids[k] < 0 || ids.ids[k] >= lp_tokenizer_n_vocab(tok)) abort();
                lp_tokenizer_decode(tok, ids.ids, ids.n_ids, 0, out, sizeof out, &n, &err);
            }
            lp_token_list_deinit(&ids);
        } else if (!err.msg[0] || tok) {
            abort();
        }
    }
    lp_tokenizer_destroy(tok);
    lp_gguf_close(g);
    free(img);
    return 0;
}
