// SPDX-License-Identifier: MIT
// fuzz_hashcache.c -- libFuzzer harness for the tensor-hash cache file
// (src/model/tensor_hash.c), which sits in the model folder beside each
// weight file and so is outside data: any bytes are parsed as a cache for
// the weight file its first line names (or for a fixed one); a text that
// parses must write back to a text that parses to the same entries, and
// writing that again must give the same bytes.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // a copy of exactly the input's size (the parser must not read past it)
    char *text = malloc(size ? size : 1);
    char *z = malloc(size + 1);
    if (!text || !z) abort();
    memcpy(text, data, size);
    memcpy(z, data, size);
    z[size] = '\0';
    unsigned long long bytes = 1000000, mtime_s = 1764600000, mtime_ns = 5;
    if (sscanf(z, "layerpipe-tensor-hashes 1 %llu %llu %llu", &bytes, &mtime_s, &mtime_ns) != 3) {
        bytes = 1000000;
        mtime_s = 1764600000;
        mtime_ns = 5;
    }
    char *out = NULL, *again = NULL;
    size_t n_out = 0, n_again = 0;
    int n = lp_tensor_hash_cache_check(text, size, bytes, mtime_s, mtime_ns, &out, &n_out);
    if (n >= 0) {
        if (!out) abort();
        int m = lp_tensor_hash_cache_check(out, n_out, bytes, mtime_s, mtime_ns, &again, &n_again);
        if (m != n || !again || n_again != n_out || memcmp(out, again, n_out) != 0) abort();
    } else if (out) {
        abort(); // nothing written for a text that does not parse
    }
    free(out);
    free(again);
    free(text);
    free(z);
    return 0;
}
