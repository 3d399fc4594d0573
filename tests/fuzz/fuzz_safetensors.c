// SPDX-License-Identifier: MIT
// fuzz_safetensors.c -- libFuzzer harness for the safetensors reader: the
// input is a whole file image (8-byte little-endian header length, JSON
// header, data) given to lp_st_parse in a heap buffer of exactly its size.
// On success every tensor must lie inside the image and match dtype x shape.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *img = malloc(size ? size : 1);
    if (!img) return 0;
    memcpy(img, data, size);
    struct lp_st_file f = {0};
    struct lp_error err = {0};
    if (lp_st_parse(&f, img, size, &err) == LP_OK) {
        const uint8_t *end = img + size;
        for (int i = 0; i < f.n_tensors; i++) {
            const struct lp_st_tensor *t = &f.tensors[i];
            size_t n = lp_dtype_size(t->dtype);
            for (int d = 0; d < t->n_dims; d++) n *= (size_t)t->shape[d];
            if (n != t->nbytes || (const uint8_t *)t->data < img ||
                t->nbytes > (size_t)(end - (const uint8_t *)t->data))
                abort();
            if (lp_st_find(&f, t->name) == NULL) abort();
        }
    } else if (!err.msg[0]) {
        abort(); // every failure says why
    }
    for (int i = 0; i < f.n_tensors; i++) free(f.tensors[i].name);
    free(f.tensors);
    free(img);
    return 0;
}
