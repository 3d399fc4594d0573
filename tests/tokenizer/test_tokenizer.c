// SPDX-License-Identifier: MIT
// test_tokenizer.c -- the tokenizer on small hand-built tokenizer.json files:
// byte-level table, UTF-8 repair as Rust's from_utf8_lossy, BPE merge order
// in both merge encodings, added tokens (longest match, special/non-special,
// lstrip/rstrip), NFC, the streaming decoder, and malformed files (every
// truncation and many byte flips of a valid file must fail cleanly).
#include <jansson.h>
#include <string.h>

#include "layerpipe/tokenizer.h"
#include "lp_test.h"
#include "tokenizer/internal.h"

static const char qwen_regex[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
                                 "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                                 "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// Byte-level spelling of a byte string.
static void bl(const char *s, char *out) {
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        o += tok_utf8_encode(tok_byte_to_cp[*p], (uint8_t *)out + o);
    out[o] = '\0';
}

// A tokenizer.json: the 256 byte symbols (id = byte), then `extra` merged
// tokens made by `merges` (pairs of byte strings, merged in this order, new
// ids from 256), as "a b" strings or [a, b] arrays; added tokens at 1000+.
static char *make_json(const char *const (*merges)[2], int n_merges, bool array_merges,
                       const char *added_json, bool nfc) {
    json_t *vocab = json_object(), *mlist = json_array();
    char a[64], b[64], ab[128];
    for (int i = 0; i < 256; i++) {
        size_t n = tok_utf8_encode(tok_byte_to_cp[i], (uint8_t *)a);
        a[n] = '\0';
        json_object_set_new(vocab, a, json_integer(i));
    }
    for (int i = 0; i < n_merges; i++) {
        bl(merges[i][0], a);
        bl(merges[i][1], b);
        snprintf(ab, sizeof ab, "%s%s", a, b);
        if (!json_object_get(vocab, ab)) json_object_set_new(vocab, ab, json_integer(256 + i));
        if (array_merges) {
            json_array_append_new(mlist, json_pack("[ss]", a, b));
        } else {
            char m[160];
            snprintf(m, sizeof m, "%s %s", a, b);
            json_array_append_new(mlist, json_string(m));
        }
    }
    json_error_t jerr;
    json_t *added = json_loads(added_json ? added_json : "[]", 0, &jerr);
    json_t *root = json_pack(
        "{s:s, s:o, s:o, s:{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b}]}, s:{s:s}, s:n,"
        " s:{s:s, s:o, s:o}}",
        "version", "1.0", "added_tokens", added, "normalizer",
        nfc ? json_pack("{s:s}", "type", "NFC") : json_null(), "pre_tokenizer", "type", "Sequence",
        "pretokenizers", "type", "Split", "pattern", "Regex", qwen_regex, "behavior", "Isolated",
        "invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "use_regex", 0, "decoder", "type",
        "ByteLevel", "post_processor", "model", "type", "BPE", "vocab", vocab, "merges", mlist);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}

static struct lp_tokenizer *load_json(const char *json) {
    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_create(&tok, "test.json", json, strlen(json), NULL, 0, &err), &err);
    return tok;
}

// Encodes text and compares with want[] (terminated by -1).
static void check_encode(const struct lp_tokenizer *tok, const char *text, unsigned flags,
                         const int32_t *want) {
    struct lp_token_list ids;
    lp_token_list_init(&ids);
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_encode(tok, text, strlen(text), flags, &ids, &err), &err);
    size_t n = 0;
    while (want[n] >= 0)
        n++;
    bool same = ids.n_ids == n && (n == 0 || memcmp(ids.ids, want, n * sizeof *want) == 0);
    CHECK_MSG(same, "encode(\"%s\"): got %zu ids", text, ids.n_ids);
    if (!same) {
        for (size_t i = 0; i < ids.n_ids; i++)
            fprintf(stderr, " %d", ids.ids[i]);
        fprintf(stderr, "\n");
    }
    lp_token_list_deinit(&ids);
}

static void test_byte_table(void) {
    bool seen[0x200] = {0};
    for (int b = 0; b < 256; b++) {
        CHECK(tok_cp_to_byte(tok_byte_to_cp[b]) == b);
        CHECK(!seen[tok_byte_to_cp[b]]);
        seen[tok_byte_to_cp[b]] = true;
    }
    CHECK(tok_byte_to_cp[' '] == 0x120);  // 'Ġ'
    CHECK(tok_byte_to_cp['\n'] == 0x10A); // 'Ċ'
    CHECK(tok_cp_to_byte(0x144) == -1 && tok_cp_to_byte(0x20) == -1);
}

static void check_lossy(const char *in, size_t n, const char *want) {
    uint8_t out[64];
    size_t o = tok_utf8_lossy((const uint8_t *)in, n, out);
    CHECK_MSG(o == strlen(want) && memcmp(out, want, o) == 0, "lossy of %zu bytes", n);
}

static void test_utf8(void) {
    // Expected values are what Rust's String::from_utf8_lossy returns.
#define FFFD "\xEF\xBF\xBD"
    check_lossy("a\x80"
                "b",
                3, "a" FFFD "b");
    check_lossy("\xF0\x9F\x98", 3, FFFD);
    check_lossy("\xE0\x80", 2, FFFD FFFD);
    check_lossy("\xED\xA0\x80", 3, FFFD FFFD FFFD);
    check_lossy("\xC0\xAF", 2, FFFD FFFD);
    check_lossy("\xF4\x90\x80\x80", 4, FFFD FFFD FFFD FFFD);
    check_lossy("\xE2\x82"
                "A",
                3, FFFD "A");
    check_lossy("\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80");
    check_lossy("\xFF\xFE", 2, FFFD FFFD);
    CHECK(tok_utf8_valid_prefix((const uint8_t *)"ab\xC3\xA9\xC3", 5) == 4);
}

static void test_bpe(void) {
    // "b c" outranks "a b": "abc" -> a, bc; then "a bc" has no merge.
    static const char *const m1[][2] = {
        {"b", "c"}, {"a", "b"}, {"ab", "c"}, {"x", "x"}, {"xx", "xx"}};
    for (int arr = 0; arr < 2; arr++) {
        char *json = make_json(m1, 5, arr, NULL, false);
        struct lp_tokenizer *tok = load_json(json);
        free(json);
        if (!tok) continue;
        check_encode(tok, "abc", 0, (const int32_t[]){'a', 256, -1});
        check_encode(tok, "ab", 0, (const int32_t[]){257, -1});
        check_encode(tok, "abab", 0, (const int32_t[]){257, 257, -1});
        // xxxxx: (x x) merges leftmost first -> xx xx x -> xxxx x
        check_encode(tok, "xxxxx", 0, (const int32_t[]){260, 'x', -1});
        // Pre-tokenizer: " abc" splits as " abc" (one word with its space).
        check_encode(tok, " ab", 0, (const int32_t[]){' ', 257, -1});
        check_encode(tok, "", 0, (const int32_t[]){-1});
        CHECK(lp_tokenizer_token_id(tok, "a") == 'a');
        CHECK(lp_tokenizer_token_id(tok, "bc") == 256);
        CHECK(lp_tokenizer_token_id(tok, "nope") == -1);
        size_t n;
        CHECK(strcmp(lp_tokenizer_token_piece(tok, ' ', &n), "\xC4\xA0") == 0 && n == 2);
        CHECK(lp_tokenizer_token_piece(tok, 100000, NULL) == NULL);
        lp_tokenizer_destroy(tok);
    }
    // A long word: no quadratic blow-up (100k symbols, all merging).
    static const char *const m2[][2] = {{"a", "a"}, {"aa", "aa"}, {"aaaa", "aaaa"}};
    char *json = make_json(m2, 3, false, NULL, false);
    struct lp_tokenizer *tok = load_json(json);
    free(json);
    if (tok) {
        size_t n = 100003;
        char *text = malloc(n + 1);
        memset(text, 'a', n);
        text[n] = '\0';
        struct lp_token_list ids;
        lp_token_list_init(&ids);
        struct lp_error err = {0};
        CHECK_OK(lp_tokenizer_encode(tok, text, n, 0, &ids, &err), &err);
        // 12500 x "aaaaaaaa" then "aa" and "a".
        CHECK(ids.n_ids == 12502 && ids.ids[0] == 258 && ids.ids[12500] == 256 &&
              ids.ids[12501] == 'a');
        lp_token_list_deinit(&ids);
        free(text);
        lp_tokenizer_destroy(tok);
    }
}

static void test_added_tokens(void) {
    static const char *const m[][2] = {{"a", "b"}};
    const char *added =
        "[{\"id\": 1000, \"content\": \"<a>\", \"special\": true, \"normalized\": false},"
        " {\"id\": 1001, \"content\": \"<a><b>\", \"special\": false, \"normalized\": false},"
        " {\"id\": 1002, \"content\": \"<r>\", \"special\": true, \"lstrip\": true, \"rstrip\": "
        "true,"
        "  \"normalized\": false}]";
    char *json = make_json(m, 1, false, added, true);
    struct lp_tokenizer *tok = load_json(json);
    free(json);
    if (!tok) return;
    check_encode(tok, "ab<a>ab", 0, (const int32_t[]){256, 1000, 256, -1});
    check_encode(tok, "<a><b>", 0, (const int32_t[]){1001, -1}); // longest wins
    check_encode(tok, "<a><a><b>", 0, (const int32_t[]){1000, 1001, -1});
    check_encode(tok, "<a", 0, (const int32_t[]){'<', 'a', -1});
    // Split special: <a> is text, the non-special <a><b> is still a token.
    check_encode(tok, "<a>", LP_ENCODE_SPLIT_SPECIAL, (const int32_t[]){'<', 'a', '>', -1});
    check_encode(tok, "<a><b>", LP_ENCODE_SPLIT_SPECIAL, (const int32_t[]){1001, -1});
    // lstrip / rstrip absorb the whitespace around <r>.
    check_encode(tok, "ab  <r> \n ab", 0, (const int32_t[]){256, 1002, 256, -1});
    // NFC: e + U+0301 is encoded as U+00E9 (bytes C3 A9).
    check_encode(tok, "e\xCC\x81", 0, (const int32_t[]){0xC3, 0xA9, -1});
    CHECK(lp_tokenizer_token_id(tok, "<a>") == 1000);
    CHECK(lp_tokenizer_is_special(tok, 1000) && !lp_tokenizer_is_special(tok, 1001));
    CHECK(!lp_tokenizer_is_special(tok, 'a') && !lp_tokenizer_is_special(tok, -1));
    CHECK(lp_tokenizer_n_vocab(tok) == 1003);

    // Decoding: special tokens kept or skipped; ids past the vocab decode to nothing.
    int32_t ids[] = {256, 1000, 'c', 5000};
    char out[64];
    size_t n;
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_decode(tok, ids, 4, 0, out, sizeof out, &n, &err), &err);
    CHECK(n == 6 && strcmp(out, "ab<a>c") == 0);
    CHECK_OK(lp_tokenizer_decode(tok, ids, 4, LP_DECODE_SKIP_SPECIAL, out, sizeof out, &n, &err),
             &err);
    CHECK(n == 3 && strcmp(out, "abc") == 0);
    CHECK_OK(lp_tokenizer_decode(tok, ids, 4, 0, out, 3, &n, &err), &err); // too small
    CHECK(n == 6 && memcmp(out, "ab<", 3) == 0);
    int32_t neg[] = {-5};
    CHECK(lp_tokenizer_decode(tok, neg, 1, 0, out, sizeof out, &n, &err) == LP_ERR_INVALID_ARG);

    // Invalid UTF-8 input: an error naming the offset; the list is unchanged.
    struct lp_token_list list;
    lp_token_list_init(&list);
    CHECK_OK(lp_token_list_push(&list, 7, &err), &err);
    CHECK(lp_tokenizer_encode(tok, "ok\xC3(", 4, 0, &list, &err) == LP_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "byte 2") != NULL);
    CHECK(list.n_ids == 1 && list.ids[0] == 7);
    CHECK(lp_tokenizer_encode(tok, "\xED\xA0\x80", 3, 0, &list, &err) == LP_ERR_INVALID_ARG);
    lp_token_list_deinit(&list);
    lp_tokenizer_destroy(tok);
}

static void test_stream(void) {
    char *json = make_json(NULL, 0, false, NULL, false);
    struct lp_tokenizer *tok = load_json(json);
    free(json);
    if (!tok) return;
    struct lp_token_stream *s = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_token_stream_create(&s, tok, 0, &err), &err);
    // "é😀" as single-byte tokens: text appears only when a character is whole.
    const uint8_t bytes[] = {0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80, 'x'};
    const size_t want_len[] = {0, 2, 0, 0, 0, 4, 1};
    for (int i = 0; i < 7; i++) {
        const char *t;
        size_t n;
        CHECK_OK(lp_token_stream_push(s, bytes[i], &t, &n, &err), &err);
        CHECK_MSG(n == want_len[i] && strlen(t) == n, "push %d: %zu bytes", i, n);
    }
    // A broken sequence: E2 82 then 'A' -> U+FFFD A; a dangling F0 9F at the end -> U+FFFD.
    const char *t;
    size_t n;
    CHECK_OK(lp_token_stream_push(s, 0xE2, &t, &n, &err), &err);
    CHECK(n == 0);
    CHECK_OK(lp_token_stream_push(s, 0x82, &t, &n, &err), &err);
    CHECK(n == 0);
    CHECK_OK(lp_token_stream_push(s, 'A', &t, &n, &err), &err);
    CHECK(n == 4 && memcmp(t,
                           "\xEF\xBF\xBD"
                           "A",
                           4) == 0);
    CHECK_OK(lp_token_stream_push(s, 0xFF, &t, &n, &err), &err); // never valid: out at once
    CHECK(n == 3 && memcmp(t, "\xEF\xBF\xBD", 3) == 0);
    CHECK_OK(lp_token_stream_push(s, 0xF0, &t, &n, &err), &err);
    CHECK_OK(lp_token_stream_push(s, 0x9F, &t, &n, &err), &err);
    CHECK(n == 0);
    lp_token_stream_flush(s, &t, &n);
    CHECK(n == 3 && strcmp(t, "\xEF\xBF\xBD") == 0);
    lp_token_stream_flush(s, &t, &n);
    CHECK(n == 0);
    CHECK(lp_token_stream_push(s, -1, &t, &n, &err) == LP_ERR_INVALID_ARG);
    lp_token_stream_destroy(s);
    lp_token_stream_destroy(NULL);
    lp_tokenizer_destroy(tok);
    lp_tokenizer_destroy(NULL);
}

// A file must fail with `want` and a message containing `needle`.
static void check_bad(const char *json, enum lp_status want, const char *needle) {
    struct lp_tokenizer *tok = (struct lp_tokenizer *)1;
    struct lp_error err = {0};
    enum lp_status st = lp_tokenizer_create(&tok, "bad.json", json, strlen(json), NULL, 0, &err);
    CHECK_MSG(st == want && tok == NULL && strstr(err.msg, needle),
              "status %s, message '%s' (want %s, '%s')", lp_status_str(st), err.msg,
              lp_status_str(want), needle);
}

static void test_malformed(void) {
    const char *pre =
        "{\"added_tokens\": [], \"normalizer\": null, \"pre_tokenizer\": "
        "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}, "
        "\"decoder\": {\"type\": \"ByteLevel\"}, \"model\": ";
    char buf[1024];
#define BAD(model, st, needle)                                                                     \
    do {                                                                                           \
        snprintf(buf, sizeof buf, "%s%s}", pre, model);                                            \
        check_bad(buf, st, needle);                                                                \
    } while (0)
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}", LP_ERR_FORMAT,
        "out of range");
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": 99999999999}, \"merges\": []}", LP_ERR_FORMAT,
        "out of range");
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": \"1\"}, \"merges\": []}", LP_ERR_FORMAT,
        "not an integer");
    BAD("{\"type\": \"BPE\", \"vocab\": [], \"merges\": []}", LP_ERR_FORMAT, "model.vocab");
    BAD("{\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}", LP_ERR_FORMAT, "empty");
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}", LP_ERR_FORMAT,
        "used by both");
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a c\"]}",
        LP_ERR_FORMAT, "merges[0]");
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}",
        LP_ERR_FORMAT, "merged token");
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [\"ab\"]}",
        LP_ERR_FORMAT, "left right");
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2}, \"merges\": [[\"a\"]]}",
        LP_ERR_FORMAT, "merges[0]");
    BAD("{\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": 5}", LP_ERR_FORMAT, "model.merges");
    BAD("{\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}", LP_ERR_UNSUPPORTED, "WordPiece");
    BAD("{\"type\": \"BPE\", \"byte_fallback\": true, \"vocab\": {\"a\": 0}, \"merges\": []}",
        LP_ERR_UNSUPPORTED, "byte_fallback");
    BAD("{\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"vocab\": {\"a\": 0}, \"merges\": []}",
        LP_ERR_FORMAT, "unk_token");
    BAD("7", LP_ERR_FORMAT, "'model'");
    check_bad("not json", LP_ERR_FORMAT, "line 1");
    check_bad("[]", LP_ERR_FORMAT, "expected a JSON object");
    check_bad("{\"added_tokens\": [], \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
              "{\"Regex\": \"(unclosed\"}, \"behavior\": \"Isolated\"}, \"decoder\": {\"type\": "
              "\"ByteLevel\"}, \"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}",
              LP_ERR_FORMAT, "regex");
    check_bad("{\"added_tokens\": [], \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": "
              "{\"Regex\": \"x\"}, \"behavior\": \"Removed\"}, \"decoder\": {\"type\": "
              "\"ByteLevel\"}, \"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}",
              LP_ERR_UNSUPPORTED, "Removed");
    check_bad("{\"added_tokens\": [], \"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
              "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}",
              LP_ERR_UNSUPPORTED, "decoder");
    check_bad("{\"added_tokens\": [], \"normalizer\": {\"type\": \"NFKC\"}, \"pre_tokenizer\": "
              "{\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"}, "
              "\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}",
              LP_ERR_UNSUPPORTED, "NFKC");
    check_bad("{\"added_tokens\": [{\"id\": 3}], \"pre_tokenizer\": {\"type\": \"ByteLevel\"}, "
              "\"decoder\": {\"type\": \"ByteLevel\"}, \"model\": {\"vocab\": {\"a\": 0}, "
              "\"merges\": []}}",
              LP_ERR_FORMAT, "added_tokens[0]");
    check_bad("{\"added_tokens\": [{\"id\": 0, \"content\": \"zz\"}], \"pre_tokenizer\": "
              "{\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"}, \"model\": "
              "{\"vocab\": {\"a\": 0}, \"merges\": []}}",
              LP_ERR_UNSUPPORTED, "id 0");

    // Every truncation and many single-byte corruptions of a valid file
    // load or fail cleanly (ASan/UBSan runs catch the rest).
    static const char *const m[][2] = {{"a", "b"}, {"ab", "c"}};
    char *json =
        make_json(m, 2, true, "[{\"id\": 900, \"content\": \"<x>\", \"special\": true}]", true);
    size_t n = strlen(json);
    char *copy = malloc(n + 1);
    int n_fail = 0;
    for (size_t cut = 0; cut < n; cut += (cut < 200 || n - cut < 400) ? 1 : 97) {
        struct lp_tokenizer *tok = NULL;
        struct lp_error err = {0};
        if (lp_tokenizer_create(&tok, "cut.json", json, cut, NULL, 0, &err) != LP_OK) n_fail++;
        CHECK(tok == NULL);
        lp_tokenizer_destroy(tok);
    }
    CHECK(n_fail > 0);
    unsigned seed = 12345;
    for (int trial = 0; trial < 3000; trial++) {
        memcpy(copy, json, n + 1);
        seed = seed * 1103515245u + 12345u;
        size_t pos = (seed >> 8) % n;
        seed = seed * 1103515245u + 12345u;
        copy[pos] = (char)(" \"{}[],:0123456789-abc\\"[(seed >> 8) % 24]);
        struct lp_tokenizer *tok = NULL;
        struct lp_error err = {0};
        if (lp_tokenizer_create(&tok, "flip.json", copy, n, NULL, 0, &err) == LP_OK) {
            struct lp_token_list ids;
            lp_token_list_init(&ids);
            lp_tokenizer_encode(tok, "abc <x> abcd", 12, 0, &ids, &err);
            lp_token_list_deinit(&ids);
        } else {
            CHECK(tok == NULL && err.msg[0] != '\0');
        }
        lp_tokenizer_destroy(tok);
    }
    free(copy);
    free(json);

    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    CHECK(lp_tokenizer_load(&tok, "/nonexistent/model", &err) == LP_ERR_IO && tok == NULL);
    CHECK(strstr(err.msg, "/nonexistent/model/tokenizer.json") != NULL);
}

int main(void) {
    test_byte_table();
    test_utf8();
    test_bpe();
    test_added_tokens();
    test_stream();
    test_malformed();
    return lp_test_finish("tokenizer/test_tokenizer");
}
