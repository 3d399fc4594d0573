// SPDX-License-Identifier: MIT
// fuzz_chat.c -- libFuzzer harness for the chat messages JSON
// (lp_chat_render_json): an array of messages or an object with "messages"
// and "tools". The options come from the input's length, so every input
// runs one fixed way. On success the text is NUL-terminated at n_bytes.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "layerpipe/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = malloc(size ? size : 1);
    if (!json) return 0;
    memcpy(json, data, size);
    struct lp_chat_options opt = lp_chat_options_default();
    opt.add_generation_prompt = size & 1;
    opt.enable_thinking = (size & 2) == 0;
    char *out = NULL;
    size_t n_out = 0;
    struct lp_error err = {0};
    if (lp_chat_render_json(json, size, &opt, &out, &n_out, &err) == LP_OK) {
        if (!out || out[n_out] != '\0') abort();
    } else if (out || !err.msg[0]) {
        abort();
    }
    free(out);
    free(json);
    return 0;
}
