// SPDX-License-Identifier: MIT
// test_gguf_vocab.c -- tokenizers from GGUF metadata against the same
// tokenizer from tokenizer.json: the bundled model's and the real Qwen3's,
// written as llama.cpp's converter writes them (lp_genmodel --vocab-only),
// must have every token's text, bytes and special flag (save the
// converter's own changes: Qwen3's six FIM/repo tokens look special to it),
// the same special ids, and encode the same texts to the same ids.
// lp_tokenizer_load finds the GGUF tokenizer for a .gguf file and for a
// folder without tokenizer.json. Then GGUF files with one thing wrong in
// the tokenizer metadata: each a clear error.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "layerpipe/gguf.h"
#include "layerpipe/tokenizer.h"
#include "lp_test.h"
#include "model_fixture.h"
#include "qwen3_fixture.h"

static const char *TEXTS[] = {
    "Hello world", "And it came to pass, when the king of Israel heard",
    "<|im_start|>user\nWhat is 3.14159 * 2?<|im_end|>\n<|im_start|>assistant\n",
    "<think>\n\n</think>\n\ncaf\xc3\xa9 na\xc3\xafve \xe4\xbd\xa0\xe5\xa5\xbd \xf0\x9f\x98\x80",
    "   leading spaces\t\ttabs\r\n\r\nCRLF", "I'll've they're WE'RE",
    "e\xcc\x81 (e + combining acute, NFC makes one char)", "<|fim_prefix|>def f():<|fim_suffix|>",
    ""};

static void same_encoding(const struct lp_tokenizer *a, const struct lp_tokenizer *b) {
    for (size_t k = 0; k < sizeof TEXTS / sizeof TEXTS[0]; k++) {
        for (unsigned flags = 0; flags < 2; flags++) {
            struct lp_token_list x, y;
            lp_token_list_init(&x);
            lp_token_list_init(&y);
            struct lp_error err = {0};
            CHECK_OK(lp_tokenizer_encode(a, TEXTS[k], strlen(TEXTS[k]), flags, &x, &err), &err);
            CHECK_OK(lp_tokenizer_encode(b, TEXTS[k], strlen(TEXTS[k]), flags, &y, &err), &err);
            // with SPLIT_SPECIAL the tokens that only GGUF calls special differ
            bool fim = flags && strstr(TEXTS[k], "<|fim");
            if (!fim)
                CHECK_MSG(x.n_ids == y.n_ids &&
                              (x.n_ids == 0 || memcmp(x.ids, y.ids, x.n_ids * sizeof *x.ids) == 0),
                          "text %zu (flags %u): %zu vs %zu ids", k, flags, x.n_ids, y.n_ids);
            lp_token_list_deinit(&x);
            lp_token_list_deinit(&y);
        }
    }
}

// Every token the same; returns how many special flags differ (listing them).
static int same_vocab(const struct lp_tokenizer *a, const struct lp_tokenizer *b) {
    CHECK(lp_tokenizer_n_vocab(a) == lp_tokenizer_n_vocab(b));
    CHECK(lp_tokenizer_eos_id(a) == lp_tokenizer_eos_id(b));
    CHECK(lp_tokenizer_pad_id(a) == lp_tokenizer_pad_id(b));
    CHECK(lp_tokenizer_bos_id(a) == lp_tokenizer_bos_id(b));
    int n_special = 0, bad = 0;
    for (int32_t id = 0; id < lp_tokenizer_n_vocab(a); id++) {
        size_t na, nb;
        const char *pa = lp_tokenizer_token_piece(a, id, &na), *pb = lp_tokenizer_token_piece(b, id, &nb);
        const uint8_t *ba = lp_tokenizer_token_bytes(a, id, &na), *bb = lp_tokenizer_token_bytes(b, id, &nb);
        if (strcmp(pa, pb) != 0 || na != nb || memcmp(ba, bb, na) != 0) {
            if (bad++ < 5) fprintf(stderr, "token %d: '%s' vs '%s'\n", id, pa, pb);
        }
        if (lp_tokenizer_is_special(a, id) != lp_tokenizer_is_special(b, id)) {
            n_special++;
            printf("special flag differs: %d '%s' (json %d, gguf %d)\n", id, pa,
                   lp_tokenizer_is_special(a, id), lp_tokenizer_is_special(b, id));
        }
    }
    CHECK_MSG(bad == 0, "%d tokens differ", bad);
    return n_special;
}

static struct lp_tokenizer *load(const char *path) {
    struct lp_tokenizer *t = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_load(&t, path, &err), &err);
    return t;
}

static void test_tiny(void) {
    const char *src = lp_fixture_env("LP_SOURCE_DIR", ".");
    char tiny[1024], gen[1200], dir[1100], file[1200];
    snprintf(tiny, sizeof tiny, "%s/models/layerpipe-tiny-8bit", src);
    snprintf(gen, sizeof gen, "--vocab-only '%s'", tiny);
    CHECK(lp_fixture_model("tiny_vocab_gguf", gen, dir, sizeof dir) == 0);
    snprintf(file, sizeof file, "%s/model.gguf", dir);
    struct lp_tokenizer *a = load(tiny), *b = load(dir), *c = load(file);
    if (a && b && c) {
        CHECK(same_vocab(a, b) == 0);
        same_encoding(a, b);
        same_encoding(a, c);
    }
    lp_tokenizer_destroy(a);
    lp_tokenizer_destroy(b);
    lp_tokenizer_destroy(c);
}

static void test_qwen3(void) {
    char *q3 = qwen3_tokenizer_dir();
    CHECK_MSG(q3 != NULL, "Qwen3 tokenizer not available");
    if (!q3) return;
    char gen[4096], dir[1100];
    snprintf(gen, sizeof gen, "--vocab-only '%s' --vocab 151936", q3);
    CHECK(lp_fixture_model("qwen3_vocab_gguf", gen, dir, sizeof dir) == 0);
    struct lp_tokenizer *a = load(q3), *b = load(dir);
    if (a && b) {
        // <|fim_prefix|> ... <|file_sep|> (151659..151664) are not special in
        // tokenizer.json, but look special to the converter: control tokens
        CHECK(same_vocab(a, b) == 6);
        for (int32_t id = 151659; id <= 151664; id++) CHECK(lp_tokenizer_is_special(b, id));
        same_encoding(a, b);
    }
    lp_tokenizer_destroy(a);
    lp_tokenizer_destroy(b);
    free(q3);
}

// ---- malformed metadata ---------------------------------------------------------

struct vocab {
    const char *model, *pre;
    int n;
    const char *tokens[8];
    int32_t types[8];
    int n_types;
    const char *merges[4];
    int n_merges;
    uint32_t eos;
    bool bad_merges_type;
};

static struct vocab good(void) {
    return (struct vocab){.model = "gpt2", .pre = "qwen2", .n = 6,
                          .tokens = {"a", "b", "ab", "\xc4\xa0", "<|end|>", "[PAD5]"},
                          .types = {1, 1, 1, 1, 3, 5}, .n_types = 6,
                          .merges = {"a b"}, .n_merges = 1, .eos = 4};
}

static enum lp_status try_vocab(const struct vocab *v, const char *path, struct lp_error *err) {
    struct lp_gguf_writer *w = NULL;
    CHECK_OK(lp_gguf_writer_create(&w, err), err);
    if (v->model) CHECK_OK(lp_gguf_writer_add_str(w, "tokenizer.ggml.model", v->model, err), err);
    if (v->pre) CHECK_OK(lp_gguf_writer_add_str(w, "tokenizer.ggml.pre", v->pre, err), err);
    if (v->n >= 0)
        CHECK_OK(lp_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", (uint64_t)v->n, v->tokens,
                                              NULL, err),
                 err);
    if (v->n_types >= 0)
        CHECK_OK(lp_gguf_writer_add_array(w, "tokenizer.ggml.token_type", LP_GGUF_TYPE_INT32,
                                          (uint64_t)v->n_types, v->types, err),
                 err);
    if (v->bad_merges_type)
        CHECK_OK(lp_gguf_writer_add_array(w, "tokenizer.ggml.merges", LP_GGUF_TYPE_INT32, 1,
                                          v->types, err),
                 err);
    else
        CHECK_OK(lp_gguf_writer_add_str_array(w, "tokenizer.ggml.merges", (uint64_t)v->n_merges,
                                              v->merges, NULL, err),
                 err);
    CHECK_OK(lp_gguf_writer_add_scalar(w, "tokenizer.ggml.eos_token_id", LP_GGUF_TYPE_UINT32,
                                       &v->eos, err),
             err);
    CHECK_OK(lp_gguf_writer_begin(w, path, err), err);
    CHECK_OK(lp_gguf_writer_finish(w, err), err);
    lp_gguf_writer_destroy(w);
    struct lp_tokenizer *t = NULL;
    lp_error_clear(err);
    enum lp_status st = lp_tokenizer_load(&t, path, err);
    CHECK((st == LP_OK) == (t != NULL));
    if (t) { // the good one: a merge, a control token, no [PAD5]
        CHECK(lp_tokenizer_n_vocab(t) == 5 && lp_tokenizer_eos_id(t) == 4);
        CHECK(lp_tokenizer_is_special(t, 4) && lp_tokenizer_token_id(t, "ab") == 2);
        struct lp_token_list ids;
        lp_token_list_init(&ids);
        CHECK_OK(lp_tokenizer_encode(t, "ab<|end|>", 9, 0, &ids, err), err);
        CHECK(ids.n_ids == 2 && ids.ids[0] == 2 && ids.ids[1] == 4);
        lp_token_list_deinit(&ids);
    }
    lp_tokenizer_destroy(t);
    return st;
}

static void bad_vocab(const struct vocab *v, enum lp_status want, const char *needle,
                      const char *what) {
    char path[1200];
    snprintf(path, sizeof path, "%s/vocab_%d.gguf", lp_fixture_env("LP_WORK_DIR", "."), (int)getpid());
    struct lp_error err = {0};
    enum lp_status st = try_vocab(v, path, &err);
    CHECK_MSG(st == want && strstr(err.msg, needle), "%s: got %s '%s', want %s '%s'", what,
              lp_status_str(st), err.msg, lp_status_str(want), needle);
    unlink(path);
}

static void test_bad(void) {
    struct vocab v = good();
    bad_vocab(&v, LP_OK, "", "good");
    v = good(), v.model = "llama";
    bad_vocab(&v, LP_ERR_UNSUPPORTED, "tokenizer.ggml.model 'llama' is not supported", "model");
    v = good(), v.model = NULL;
    bad_vocab(&v, LP_ERR_FORMAT, "missing metadata key 'tokenizer.ggml.model'", "no model");
    v = good(), v.pre = "llama-bpe";
    bad_vocab(&v, LP_ERR_UNSUPPORTED, "tokenizer.ggml.pre 'llama-bpe'", "pre");
    v = good(), v.n = -1;
    bad_vocab(&v, LP_ERR_FORMAT, "'tokenizer.ggml.tokens'", "no tokens");
    v = good(), v.n = 0, v.n_types = 0;
    bad_vocab(&v, LP_ERR_FORMAT, "holds 0 tokens", "empty list");
    v = good(), v.n_types = 5;
    bad_vocab(&v, LP_ERR_FORMAT, "5 token types for 6 tokens", "types count");
    v = good(), v.types[1] = 6;
    bad_vocab(&v, LP_ERR_UNSUPPORTED, "token 1: token type 6", "byte token");
    v = good(), v.types[1] = 9;
    bad_vocab(&v, LP_ERR_UNSUPPORTED, "token type 9", "type 9");
    v = good(), v.tokens[1] = "a";
    bad_vocab(&v, LP_ERR_FORMAT, "tokenizer.ggml.tokens[1] 'a' appears twice", "duplicate");
    v = good(), v.tokens[1] = "";
    bad_vocab(&v, LP_ERR_FORMAT, "tokens[1] is empty or not valid UTF-8", "empty token");
    v = good(), v.tokens[1] = "\xff";
    bad_vocab(&v, LP_ERR_FORMAT, "tokens[1] is empty or not valid UTF-8", "bad UTF-8");
    v = good(), v.merges[0] = "a c";
    bad_vocab(&v, LP_ERR_FORMAT, "merges[0]: 'c' not in vocab", "merge of unknown token");
    v = good(), v.merges[0] = "ab";
    bad_vocab(&v, LP_ERR_FORMAT, "is not \"left right\"", "merge without space");
    v = good(), v.bad_merges_type = true;
    bad_vocab(&v, LP_ERR_FORMAT, "expected an array of str", "merges type");
    v = good(), v.eos = 6;
    bad_vocab(&v, LP_ERR_FORMAT, "eos_token_id' is 6, expected 0..5", "eos");
    // not a GGUF file at all
    char path[1200];
    snprintf(path, sizeof path, "%s/vocab_%d.gguf", lp_fixture_env("LP_WORK_DIR", "."), (int)getpid());
    FILE *f = fopen(path, "wb");
    fputs("{\"model\": {\"type\": \"BPE\", \"vocab\": {}}}", f);
    fclose(f);
    struct lp_tokenizer *t = NULL;
    struct lp_error err = {0};
    CHECK(lp_tokenizer_load(&t, path, &err) == LP_ERR_FORMAT && t == NULL &&
          strstr(err.msg, "not a GGUF file"));
    unlink(path);
}

int main(void) {
    test_tiny();
    test_qwen3();
    test_bad();
    return lp_test_finish("tokenizer/gguf_vocab");
}
