// SPDX-License-Identifier: MIT
// test_run_text.c -- text in, text out through `layerpipe run` on a
// random-weight model with Qwen3's vocabulary and the real Qwen3
// tokenizer: -p and --chat encode as the library does (checked through
// --print-ids and `layerpipe tokenize`), the streamed text equals the
// decoded ids, and --stop ends the text right before the stop string.
#include <string.h>
#include <sys/wait.h>

#include "layerpipe/tokenizer.h"
#include "lp_test.h"
#include "model_fixture.h"
#include "qwen3_fixture.h"

static const char *bin;

static int sh(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, cap - 1, p) : 0;
    out[n] = '\0';
    int st = p ? pclose(p) : -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(void) {
    bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    char *tokdir = qwen3_tokenizer_dir();
    char dir[1024];
    CHECK(tokdir != NULL);
    CHECK(lp_fixture_model("run_text_q3vocab",
                           "--seed 21 --format mlx8 --group 64 --layers 2 --hidden 64 --heads 4 "
                           "--kv-heads 2 --head-dim 16 --intermediate 128 --vocab 151936",
                           dir, sizeof dir) == 0);
    if (!tokdir) return lp_test_finish("run_text");
    static char cmd[8192], text[65536], ids[65536], more[65536];
    snprintf(cmd, sizeof cmd, "cp '%s/tokenizer.json' '%s/tokenizer_config.json' '%s/'", tokdir,
             tokdir, dir);
    CHECK(system(cmd) == 0);
    struct lp_tokenizer *tok = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_tokenizer_load(&tok, dir, &err), &err);
    if (!tok) return lp_test_finish("run_text");

    // -p: text out equals the decoded ids out (special tokens skipped)
    const char *common = "-n 40 --temp 0 --ignore-eos";
    snprintf(cmd, sizeof cmd, "'%s' run -m '%s' -p 'The capital of France is' %s 2>/dev/null",
             bin, dir, common);
    CHECK(sh(cmd, text, sizeof text) == 0);
    snprintf(cmd, sizeof cmd,
             "'%s' run -m '%s' -p 'The capital of France is' %s --print-ids 2>/dev/null", bin, dir,
             common);
    CHECK(sh(cmd, ids, sizeof ids) == 0);
    int32_t gen[64];
    int n_gen = 0;
    for (char *s = ids, *end; n_gen < 64 && (gen[n_gen] = (int32_t)strtol(s, &end, 10), end != s);
         s = end)
        n_gen++;
    CHECK_MSG(n_gen == 40, "%d ids", n_gen);
    size_t n_dec = 0;
    CHECK_OK(lp_tokenizer_decode(tok, gen, (size_t)n_gen, LP_DECODE_SKIP_SPECIAL, more,
                                 sizeof more, &n_dec, &err),
             &err);
    size_t n_text = strlen(text);
    CHECK(n_text > 0 && text[n_text - 1] == '\n');
    if (n_text) text[--n_text] = '\0';
    CHECK_MSG(strcmp(text, more) == 0, "streamed text differs from decoded ids:\n[%s]\n[%s]",
              text, more);

    // --stop: a piece of the greedy text ends the output right before it
    if (n_text > 12) {
        char stop[8];
        memcpy(stop, text + 8, 4);
        stop[4] = '\0';
        char *first = strstr(text, stop);
        size_t want = (size_t)(first - text);
        if (!strchr(stop, '\'')) {
            snprintf(cmd, sizeof cmd,
                     "'%s' run -m '%s' -p 'The capital of France is' %s --stop '%s' 2>&1 "
                     ">/dev/null | grep -c 'stop: stop string'",
                     bin, dir, common, stop);
            CHECK(sh(cmd, more, sizeof more) == 0 && atoi(more) == 1);
            snprintf(cmd, sizeof cmd,
                     "'%s' run -m '%s' -p 'The capital of France is' %s --stop '%s' 2>/dev/null",
                     bin, dir, common, stop);
            CHECK(sh(cmd, more, sizeof more) == 0);
            CHECK_MSG(strlen(more) == want + 1 && strncmp(more, text, want) == 0,
                      "with --stop '%s': [%s], expected the first %zu bytes of [%s]", stop, more,
                      want, text);
        }
    }

    // --chat renders the template: the prompt the binary uses equals the
    // library's template + encoding (seen through `template --ids`)
    snprintf(cmd, sizeof cmd,
             "cd '%s/..' && printf '%%s' '[{\"role\":\"system\",\"content\":\"Be brief.\"},"
             "{\"role\":\"user\",\"content\":\"Hi there\"}]' > run_text_msgs.json && '%s' template "
             "-m '%s' --messages run_text_msgs.json --no-think --ids",
             dir, bin, dir);
    CHECK(sh(cmd, ids, sizeof ids) == 0);
    int n_prompt = 0;
    for (char *s = ids, *end; (void)strtol(s, &end, 10), end != s; s = end) n_prompt++;
    snprintf(cmd, sizeof cmd,
             "'%s' run -m '%s' --chat 'Hi there' --system 'Be brief.' --no-think -n 4 --temp 0 "
             "2>&1 >/dev/null | grep -o 'prefill: [0-9]* tokens'",
             bin, dir);
    CHECK(sh(cmd, more, sizeof more) == 0);
    char want[64];
    snprintf(want, sizeof want, "prefill: %d tokens", n_prompt);
    CHECK_MSG(strncmp(more, want, strlen(want)) == 0, "'%s' vs '%s'", more, want);

    // usage errors
    snprintf(cmd, sizeof cmd, "'%s' run -m '%s' -p x --chat y 2>&1", bin, dir);
    CHECK(sh(cmd, more, sizeof more) == 2 && strstr(more, "exactly one"));
    snprintf(cmd, sizeof cmd, "'%s' run -m '%s' -p x --system y 2>&1", bin, dir);
    CHECK(sh(cmd, more, sizeof more) == 2 && strstr(more, "--chat"));
    lp_tokenizer_destroy(tok);
    free(tokdir);
    return lp_test_finish("run_text");
}
