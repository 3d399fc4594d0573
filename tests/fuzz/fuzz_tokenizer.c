// SPDX-License-Identifier: MIT
// fuzz_tokenizer.c -- libFuzzer harness for tokenizer.json and
// tokenizer_config.json (lp_tokenizer_create). The input is split at its
// first NUL byte: tokenizer.json before it, tokenizer_config.json after it
// (none without a NUL). A tokenizer that loads must then encode and decode
// a short text without failing.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layerpipe/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t n_json = nul ? (size_t)(nul - data) : size;
    // copies of exactly their size, so ASan sees any read past the end
    char *json = malloc(n_json ? n_json : 1);
    size_t n_cfg = nul ? size - n_json - 1 : 0;
    char *cfg = nul ? malloc(n_cfg ? n_cfg : 1) : NULL;
    if (!json || (nul && !cfg)) goto done;
    memcpy(json, data, n_json);
    if (cfg) memcpy(cfg, nul + 1, n_cfg);
    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    if (lp_tokenizer_create(&tok, "tokenizer.json", json, n_json, cfg, n_cfg, &err) != LP_OK) {
        if (!err.msg[0] || tok) abort();
        goto done;
    }
    static const char text[] = "Hello, world! <|im_start|>user 123 \xc3\xa9t\xc3\xa9\n\n  x";
    struct lp_token_list ids;
    lp_token_list_init(&ids);
    if (lp_tokenizer_encode(tok, text, sizeof text - 1, LP_ENCODE_DEFAULT, &ids, &err) == LP_OK) {
        for (size_t i = 0; i < ids.n_ids; i++)
            if (ids.ids[i] < 0 || ids.ids[i] >= lp_tokenizer_n_vocab(tok)) abort();
        char out[512];
        size_t n_out = 0;
        lp_tokenizer_decode(tok, ids.ids, ids.n_ids, LP_DECODE_DEFAULT, out, sizeof out, &n_out,
                            &err);
    }
    lp_token_list_deinit(&ids);
    for (int32_t id = -1; id <= 2; id++) {
        size_t nb;
        lp_tokenizer_token_piece(tok, id, &nb);
        lp_tokenizer_token_bytes(tok, id, &nb);
    }
    lp_tokenizer_destroy(tok);
done:
    free(json);
    free(cfg);
    return 0;
}
