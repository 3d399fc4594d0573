// SPDX-License-Identifier: MIT
// test_bundled_model.c -- the model that ships in models/: it loads, its
// tokenizer encodes the held-out text to exactly the ids HF tokenizers
// gives (tests/golden/perplexity/valid.ids, checked on the GPU machine),
// and the demo's 3-stage pipeline generates readable English (mostly
// letters and spaces, real words) with every stage doing its share.
#include <ctype.h>
#include <sched.h>
#include <string.h>
#include <sys/wait.h>

#include "lp_test.h"
#include "model_fixture.h"

static char *slurp(const char *cmd, size_t *n) {
    FILE *p = popen(cmd, "r");
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap);
    while (p && buf) {
        if (len + 65536 > cap) {
            char *b = realloc(buf, cap *= 2);
            if (!b) break;
            buf = b;
        }
        size_t k = fread(buf + len, 1, 65536, p);
        if (k == 0) break;
        len += k;
    }
    if (p) pclose(p);
    if (buf) buf[len] = '\0';
    *n = len;
    return buf;
}

int main(void) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    const char *src = lp_fixture_env("LP_SOURCE_DIR", ".");
    char model[1024], cmd[4096];
    snprintf(model, sizeof model, "%s/models/layerpipe-tiny-8bit", src);
    // the tokenizer: exactly HF's ids on the held-out text
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' --ids --file '%s/tests/golden/perplexity/valid.txt'",
             bin, model, src);
    size_t n_got = 0, n_want = 0;
    char *got = slurp(cmd, &n_got);
    snprintf(cmd, sizeof cmd, "cat '%s/tests/golden/perplexity/valid.ids'", src);
    char *want = slurp(cmd, &n_want);
    while (n_got && isspace((unsigned char)got[n_got - 1])) got[--n_got] = '\0';
    while (n_want && isspace((unsigned char)want[n_want - 1])) want[--n_want] = '\0';
    CHECK_MSG(n_got > 100000 && n_got == n_want && strcmp(got, want) == 0,
              "tokenize of valid.txt differs from HF's ids (%zu vs %zu bytes)", n_got, n_want);
    free(got);
    free(want);
    // the demo pipeline: 3 stages, readable text, every stage busy
    const char *work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    char errfile[1200];
    snprintf(errfile, sizeof errfile, "%s/bundled_stderr_%d.txt", work, (int)getpid());
    snprintf(cmd, sizeof cmd,
             "'%s' cluster -m '%s' --stages 3 -- run -p 'And it came to pass, when the king of "
             "Israel' -n 120 --seed 1 --ignore-eos --stats 2>'%s'",
             bin, model, errfile);
    size_t n = 0, n_err = 0;
    char *out = slurp(cmd, &n); // the generated text
    snprintf(cmd, sizeof cmd, "cat '%s'", errfile);
    char *err = slurp(cmd, &n_err); // timing and the --stats table
    remove(errfile);
    CHECK(out != NULL && err != NULL);
    if (!out || !err) return lp_test_finish("bundled_model");
    printf("%s\n%s\n", out, err);
    char *table = strstr(err, "\n#   role");
    CHECK_MSG(table != NULL, "no --stats table");
    size_t n_text = n, letters = 0, spaces = 0;
    for (size_t i = 0; i < n_text; i++) {
        letters += isalpha((unsigned char)out[i]) != 0;
        spaces += out[i] == ' ' || out[i] == '\n';
    }
    CHECK_MSG(n_text > 300 && letters > n_text * 7 / 10 && spaces > n_text / 10,
              "generated text does not look like English: %zu bytes, %zu letters", n_text,
              letters);
    const char *words[] = {" the ", " and ", " of "};
    for (int i = 0; i < 3; i++) CHECK_MSG(strstr(out, words[i]), "no '%s' in the text", words[i]);
    if (table) {
        CHECK(strstr(table, "coordinator") && strstr(table, "0-3"));
        CHECK(strstr(table, "4-6") && strstr(table, "7-9"));
        int rows = 0;
        for (char *line = strchr(table + 1, '\n'); line; line = strchr(line + 1, '\n')) {
            unsigned long long tokens = 0;
            char role[32];
            int idx;
            if (sscanf(line + 1, "%d %31s %*s %*s %*s %llu", &idx, role, &tokens) == 3) {
                rows++;
                CHECK_MSG(tokens > 100, "stage %d (%s) computed %llu tokens", idx, role, tokens);
            }
        }
        CHECK_MSG(rows == 3, "%d stage rows", rows);
        // the machine's cores are shared out over the 3 stages (at least
        // one thread each), not given whole to each of them
        cpu_set_t cpus;
        int n_cpus = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
        char threads_col[48];
        snprintf(threads_col, sizeof threads_col, "cpu (%d threads)", n_cpus / 3 > 1 ? n_cpus / 3 : 1);
        int with = 0;
        for (const char *at = strstr(table, threads_col); at; at = strstr(at + 1, threads_col)) with++;
        CHECK_MSG(with == 3, "%d of 3 stages run '%s'", with, threads_col);
    }
    free(out);
    free(err);
    // perplexity through the 3-stage pipeline equals one process's, digit
    // for digit (the f32 wire is exact), on a prefix of the held-out text
    char ppl[2][256] = {"", ""};
    for (int k = 0; k < 2; k++) { // one process, then 3 stages
        snprintf(cmd, sizeof cmd,
                 "'%s' %s -m '%s' %s -f '%s/tests/golden/perplexity/valid.txt' --ctx 96 "
                 "--max-tokens 400 2>/dev/null | grep '^perplexity:'",
                 bin, k ? "cluster" : "perplexity", model, k ? "--stages 3 -- perplexity" : "",
                 src);
        size_t m = 0;
        char *line = slurp(cmd, &m);
        if (line) snprintf(ppl[k], sizeof ppl[k], "%s", line);
        free(line);
    }
    printf("one process: %s3 stages:    %s", ppl[0], ppl[1]);
    CHECK_MSG(strstr(ppl[0], "perplexity: ") && strstr(ppl[0], "over 399 tokens; window 96"),
              "perplexity output: %s", ppl[0]);
    CHECK_MSG(strcmp(ppl[0], ppl[1]) == 0, "pipeline perplexity differs: %s vs %s", ppl[0],
              ppl[1]);
    return lp_test_finish("bundled_model");
}
