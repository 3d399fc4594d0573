// SPDX-License-Identifier: MIT
// bench_tokenizer.c -- tokenizer speed: load time of tokenizer.json, encode
// MB/s (English prose and the whole mixed corpus), decode and streaming
// decode MB/s, one thread. Results go in bench/RESULTS.md ("Tokenizer").
// Usage: bench_tokenizer MODEL_DIR [CORPUS.jsonl | TEXT_FILE]
//   (default corpus: tests/golden/tokenizer/corpus.jsonl from the cwd)
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "layerpipe/tokenizer.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

struct text {
    char *p;
    size_t n, cap;
};

static void append(struct text *t, const char *s, size_t n) {
    if (t->n + n + 1 > t->cap) {
        t->cap = (t->n + n + 1) * 2;
        t->p = realloc(t->p, t->cap);
        if (!t->p) {
            fprintf(stderr, "out of memory\n");
            exit(1);
        }
    }
    memcpy(t->p + t->n, s, n);
    t->n += n;
    t->p[t->n] = '\0';
}

// English texts and all texts of a corpus.jsonl, or a plain file as both.
static int read_input(const char *path, struct text *en, struct text *all) {
    size_t len = strlen(path);
    if (len > 6 && strcmp(path + len - 6, ".jsonl") == 0) {
        FILE *f = fopen(path, "r");
        if (!f) return -1;
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, f)) > 0) {
            json_t *rec = json_loadb(line, (size_t)n, 0, NULL);
            const json_t *txt = json_object_get(rec, "text"), *kind = json_object_get(rec, "kind");
            if (json_is_string(txt)) {
                append(all, json_string_value(txt), json_string_length(txt));
                append(all, "\n", 1);
                if (json_is_string(kind) && strcmp(json_string_value(kind), "english") == 0) {
                    append(en, json_string_value(txt), json_string_length(txt));
                    append(en, "\n", 1);
                }
            }
            json_decref(rec);
        }
        free(line);
        fclose(f);
        return 0;
    }
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        append(en, buf, n);
        append(all, buf, n);
    }
    fclose(f);
    return 0;
}

// Repeats t until it holds at least min_bytes.
static void grow(struct text *t, size_t min_bytes) {
    size_t n0 = t->n;
    char *copy = malloc(n0);
    if (!copy) exit(1);
    memcpy(copy, t->p, n0);
    while (t->n < min_bytes)
        append(t, copy, n0);
    free(copy);
}

static double bench_encode(const struct lp_tokenizer *tok, const struct text *t, size_t *n_ids) {
    double best = 1e30;
    struct lp_error err = {0};
    for (int rep = 0; rep < 3; rep++) {
        struct lp_token_list ids;
        lp_token_list_init(&ids);
        double t0 = now_s();
        if (lp_tokenizer_encode(tok, t->p, t->n, 0, &ids, &err)) {
            fprintf(stderr, "encode: %s\n", err.msg);
            exit(1);
        }
        double dt = now_s() - t0;
        if (dt < best) best = dt;
        *n_ids = ids.n_ids;
        lp_token_list_deinit(&ids);
    }
    return best;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_tokenizer MODEL_DIR [CORPUS.jsonl | TEXT_FILE]\n");
        return 2;
    }
    const char *input = argc > 2 ? argv[2] : "tests/golden/tokenizer/corpus.jsonl";
    struct lp_error err = {0};
    struct lp_tokenizer *tok = NULL;
    double load_best = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        lp_tokenizer_destroy(tok);
        double t0 = now_s();
        if (lp_tokenizer_load(&tok, argv[1], &err)) {
            fprintf(stderr, "load: %s\n", err.msg);
            return 1;
        }
        double dt = now_s() - t0;
        if (dt < load_best) load_best = dt;
    }
    printf("load tokenizer.json: %.3f s (best of 3)\n", load_best);

    struct text en = {0}, all = {0};
    if (read_input(input, &en, &all) || en.n == 0) {
        fprintf(stderr, "%s: cannot read text\n", input);
        return 1;
    }
    grow(&en, 4 << 20);
    grow(&all, 4 << 20);
    size_t n_en, n_all;
    double t_en = bench_encode(tok, &en, &n_en);
    double t_all = bench_encode(tok, &all, &n_all);
    printf("encode English: %.1f MB/s (%.2f MB, %zu ids, %.2f bytes/token)\n", en.n / t_en / 1e6,
           en.n / 1e6, n_en, (double)en.n / (double)n_en);
    printf("encode mixed corpus: %.1f MB/s (%.2f MB, %zu ids)\n", all.n / t_all / 1e6, all.n / 1e6,
           n_all);

    // Decode and stream-decode the English ids.
    struct lp_token_list ids;
    lp_token_list_init(&ids);
    if (lp_tokenizer_encode(tok, en.p, en.n, 0, &ids, &err)) return 1;
    char *out = malloc(en.n * 3 + 1);
    size_t n_out = 0;
    double t0 = now_s();
    if (!out || lp_tokenizer_decode(tok, ids.ids, ids.n_ids, 0, out, en.n * 3 + 1, &n_out, &err))
        return 1;
    double t_dec = now_s() - t0;
    printf("decode: %.1f MB/s (round trip %s)\n", n_out / t_dec / 1e6,
           n_out == en.n && memcmp(out, en.p, en.n) == 0 ? "exact" : "DIFFERS");
    struct lp_token_stream *stream;
    if (lp_token_stream_create(&stream, tok, 0, &err)) return 1;
    size_t n_stream = 0;
    t0 = now_s();
    for (size_t i = 0; i < ids.n_ids; i++) {
        const char *piece;
        size_t n;
        lp_token_stream_push(stream, ids.ids[i], &piece, &n, &err);
        n_stream += n;
    }
    double t_stream = now_s() - t0;
    printf("stream decode: %.1f M tokens/s (%zu bytes)\n", ids.n_ids / t_stream / 1e6, n_stream);
    lp_token_stream_destroy(stream);
    free(out);
    lp_token_list_deinit(&ids);
    free(en.p);
    free(all.p);
    lp_tokenizer_destroy(tok);
    return 0;
}
