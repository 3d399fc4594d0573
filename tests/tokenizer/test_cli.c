// SPDX-License-Identifier: MIT
// test_cli.c -- `layerpipe tokenize` and `layerpipe template` end to end
// through the built binary ($LP_BIN): output format, exit codes (0 ok,
// 1 failure, 2 usage) and error messages.
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "lp_test.h"
#include "qwen3_fixture.h"

// Runs a shell command; returns its exit status and stdout+stderr in out.
static int run(const char *cmd, char *out, size_t cap) {
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_file(const char *path, const char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    fwrite(data, 1, n, f);
    fclose(f);
}

int main(void) {
    const char *bin = getenv("LP_BIN"), *work = getenv("LP_WORK_DIR");
    CHECK_MSG(bin && work, "LP_BIN and LP_WORK_DIR must be set (run through ctest)");
    char *dir = qwen3_tokenizer_dir();
    CHECK_MSG(dir != NULL, "Qwen3 tokenizer not available");
    if (!bin || !work || !dir) return lp_test_finish("tokenizer/test_cli");
    char cmd[4096], out[65536], path[2048], path2[2048];

    // tokenize
    snprintf(cmd, sizeof cmd, "'%s' tokenize --help", bin);
    CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "usage: layerpipe tokenize"));
    snprintf(cmd, sizeof cmd, "'%s' tokenize 'Hello world'", bin);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "-m MODEL_DIR is required"));
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' --bogus x", bin, dir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "--bogus"));
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' --ids 'Hello world'", bin, dir);
    CHECK(run(cmd, out, sizeof out) == 0 && strcmp(out, "9707 1879\n") == 0);
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' 'Hello world'", bin, dir);
    CHECK(run(cmd, out, sizeof out) == 0 && strcmp(out, "9707\tHello\n1879\t\xC4\xA0world\n") == 0);
    snprintf(path, sizeof path, "%s/tokenize_in.txt", work);
    write_file(path, "<|im_start|>Hi\r\n", 16);
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' --ids --file '%s'", bin, dir, path);
    CHECK(run(cmd, out, sizeof out) == 0 && strcmp(out, "151644 13048 319\n") == 0);
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' --ids --split-special --file '%s'", bin, dir,
             path);
    CHECK(run(cmd, out, sizeof out) == 0 && strncmp(out, "151644", 6) != 0);
    write_file(path, "ok\xFF", 3);
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s' --ids --file '%s'", bin, dir, path);
    CHECK(run(cmd, out, sizeof out) == 1 && strstr(out, "invalid UTF-8 at byte 2"));
    snprintf(cmd, sizeof cmd, "'%s' tokenize -m '%s/nowhere' --ids x", bin, work);
    CHECK(run(cmd, out, sizeof out) == 1 && strstr(out, "nowhere/tokenizer.json"));

    // template
    snprintf(cmd, sizeof cmd, "'%s' template --help", bin);
    CHECK(run(cmd, out, sizeof out) == 0 && strstr(out, "usage: layerpipe template"));
    snprintf(cmd, sizeof cmd, "'%s' template -m '%s'", bin, dir);
    CHECK(run(cmd, out, sizeof out) == 2 && strstr(out, "--messages"));
    snprintf(path2, sizeof path2, "%s/template_in.json", work);
    const char *msgs = "[{\"role\": \"system\", \"content\": \"Be brief.\"},"
                       " {\"role\": \"user\", \"content\": \"Hi\"}]";
    write_file(path2, msgs, strlen(msgs));
    snprintf(cmd, sizeof cmd, "'%s' template -m '%s' --messages '%s'", bin, dir, path2);
    CHECK(run(cmd, out, sizeof out) == 0 &&
          strcmp(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                      "<|im_start|>assistant\n") == 0);
    snprintf(cmd, sizeof cmd, "'%s' template -m '%s' --messages '%s' --no-think", bin, dir, path2);
    CHECK(run(cmd, out, sizeof out) == 0 &&
          strstr(out, "<|im_start|>assistant\n<think>\n\n</think>\n\n") != NULL);
    snprintf(cmd, sizeof cmd, "'%s' template -m '%s' --messages '%s' --ids", bin, dir, path2);
    CHECK(run(cmd, out, sizeof out) == 0 && strncmp(out, "151644 8948 198", 15) == 0);
    write_file(path2, "[{\"role\": 1}]", 13);
    snprintf(cmd, sizeof cmd, "'%s' template -m '%s' --messages '%s'", bin, dir, path2);
    CHECK(run(cmd, out, sizeof out) == 1 && strstr(out, "messages[0].role"));
    free(dir);
    return lp_test_finish("tokenizer/test_cli");
}
