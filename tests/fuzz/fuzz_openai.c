// SPDX-License-Identifier: MIT
// fuzz_openai.c -- libFuzzer harness for the HTTP API's request bodies: the
// parse step of POST /v1/chat/completions and /v1/completions
// (lp_api_parse_generate: fields, messages through the chat template, the
// prompt through the tokenizer, stop strings), against the bundled model
// and its tokenizer, without a server. The first input byte picks the
// endpoint ('P': completions, else chat); the rest is the body.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/internal.h"
#include "layerpipe/tokenizer.h"

static struct lp_server g_srv;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("LP_FUZZ_MODEL_DIR");
    if (!dir) dir = LP_FUZZ_MODEL_DIR;
    struct lp_error err = {0};
    struct lp_tokenizer *tok = NULL;
    struct lp_model *model = NULL;
    struct lp_model_load_params lp = lp_model_load_params_default();
    if (lp_tokenizer_load(&tok, dir, &err) != LP_OK || lp_model_open(&model, dir, &lp, &err)) {
        fprintf(stderr, "fuzz_openai: %s\n", err.msg);
        abort();
    }
    g_srv.tok = tok;
    g_srv.model = model;
    g_srv.model_name = "layerpipe-tiny-8bit";
    g_srv.max_context = 2048;
    g_srv.vocab = lp_model_config(model)->vocab_size;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    bool chat = data[0] != 'P';
    size_t n = size - 1;
    char *body = malloc(n ? n : 1); // exactly the body's size, as MHD hands it over
    if (!body) return 0;
    memcpy(body, data + 1, n);
    struct lp_api_err e;
    memset(&e, 0, sizeof e);
    int n_prompt = -1;
    if (lp_api_parse_generate(&g_srv, body, n, chat, &n_prompt, &e)) {
        if (n_prompt < 0 || n_prompt >= g_srv.max_context) abort();
    } else if (e.http < 400 || e.http > 599 || !e.msg[0] || !e.type) {
        abort(); // every refusal is an HTTP error that says why
    }
    free(body);
    return 0;
}
