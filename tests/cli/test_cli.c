// SPDX-License-Identifier: MIT
// test_cli.c -- the layerpipe command line as users and checks drive it:
// --help on every command, clear errors (exit 2) for unknown flags, bad
// values and missing options, exit 1 with a message naming the problem for
// a bad model folder, and the documented output of run, logits and bench.
#include <string.h>
#include <sys/wait.h>

#include "layerpipe/backend.h"
#include "lp_test.h"
#include "model_fixture.h"

static const char *bin;

// Runs `layerpipe ARGS`, capturing stdout and stderr; returns the exit code.
static int run(const char *args, char *out, size_t out_bytes, char *errout, size_t err_bytes) {
    const char *work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    char cmd[8192], errfile[1200];
    snprintf(errfile, sizeof errfile, "%s/cli_stderr_%d.txt", work, (int)getpid());
    snprintf(cmd, sizeof cmd, "'%s' %s 2>'%s'", bin, args, errfile);
    FILE *p = popen(cmd, "r");
    size_t n = p ? fread(out, 1, out_bytes - 1, p) : 0;
    out[n] = '\0';
    int status = p ? pclose(p) : -1;
    FILE *fp = fopen(errfile, "r");
    n = fp ? fread(errout, 1, err_bytes - 1, fp) : 0;
    errout[n] = '\0';
    if (fp) fclose(fp);
    remove(errfile);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#define RUN(args) run(args, out, sizeof out, err, sizeof err)

int main(void) {
    bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    static char out[1 << 20], err[1 << 16], args[4096];
    char dir[1024];
    CHECK(lp_fixture_model("cli_tiny", "--seed 5 --format mlx8 --group 32 --layers 2 --hidden 64 "
                           "--heads 4 --kv-heads 2 --head-dim 16 --intermediate 128 --vocab 200",
                           dir, sizeof dir) == 0);
    // help
    CHECK(RUN("--help") == 0 && strstr(out, "run") && strstr(out, "logits") && strstr(out, "bench"));
    const char *cmds[] = {"run", "logits", "bench"};
    for (int i = 0; i < 3; i++) {
        snprintf(args, sizeof args, "%s --help", cmds[i]);
        CHECK_MSG(RUN(args) == 0 && strstr(out, "usage: layerpipe") && strstr(out, "--model"),
                  "%s --help", cmds[i]);
    }
    CHECK(RUN("frobnicate") == 2 && strstr(err, "unknown command 'frobnicate'"));
    CHECK(RUN("") == 2);
    // option errors: exit 2 and say what is wrong
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2' --bogus", dir);
    CHECK(RUN(args) == 2 && strstr(err, "unknown option '--bogus'"));
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2' --temp hot", dir);
    CHECK(RUN(args) == 2 && strstr(err, "--temp") && strstr(err, "hot"));
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2' --top-p 1.5", dir);
    CHECK(RUN(args) == 2 && strstr(err, "--top-p"));
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 x 2'", dir);
    CHECK(RUN(args) == 2 && strstr(err, "not a token id"));
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2 999'", dir);
    CHECK(RUN(args) == 2 && strstr(err, "outside the vocabulary"));
    CHECK(RUN("run --prompt-ids '1 2'") == 2 && strstr(err, "missing required option --model"));
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1' -n", dir);
    CHECK(RUN(args) == 2 && strstr(err, "needs a value"));
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1' --kv-dtype f8", dir);
    CHECK(RUN(args) == 1 && strstr(err, "kv-dtype"));
    // device specs: an unknown one is named; cuda in a build without it says so
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1' --device tpu", dir);
    CHECK(RUN(args) == 1 && strstr(err, "device 'tpu'") && strstr(err, "cpu, cuda or cuda:N"));
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1' --device cuda:x", dir);
    CHECK(RUN(args) == 1 && strstr(err, "cuda:N"));
    if (!lp_backend_cuda_built()) {
        snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1' --device cuda", dir);
        CHECK(RUN(args) == 1 && strstr(err, "built without CUDA"));
    }
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2' -n 2 --device cpu", dir);
    CHECK(RUN(args) == 0);
    // a folder that is not a model: exit 1 naming the file
    CHECK(RUN("run -m /nonexistent --prompt-ids '1 2'") == 1 &&
          strstr(err, "/nonexistent/config.json"));
    // run: greedy ids on one line, timing on stderr, same output twice
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2 3' -n 8 --temp 0 --print-ids "
                                "--ignore-eos", dir);
    CHECK(RUN(args) == 0);
    char first[4096];
    snprintf(first, sizeof first, "%s", out);
    int n_ids = 0;
    for (char *s = first, *end; strtol(s, &end, 10), end != s; s = end) n_ids++;
    CHECK_MSG(n_ids == 8, "expected 8 ids, got '%s'", first);
    CHECK(strchr(first, '\n') == first + strlen(first) - 1);
    CHECK(strstr(err, "prefill:") && strstr(err, "tok/s") && strstr(err, "stop: length"));
    CHECK(RUN(args) == 0 && strcmp(out, first) == 0);
    // sampling with a seed is reproducible, and another seed changes it
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2 3' -n 24 --temp 1.5 --top-k 0 "
                                "--seed 3 --print-ids --ignore-eos", dir);
    CHECK(RUN(args) == 0);
    snprintf(first, sizeof first, "%s", out);
    CHECK(RUN(args) == 0 && strcmp(out, first) == 0);
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2 3' -n 24 --temp 1.5 --top-k 0 "
                                "--seed 4 --print-ids --ignore-eos", dir);
    CHECK(RUN(args) == 0 && strcmp(out, first) != 0);
    // the context limit ends generation with a clear message
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2 3' -n 50 --ctx 10 --temp 0 "
                                "--ignore-eos --print-ids", dir);
    CHECK(RUN(args) == 0 && strstr(err, "stop: context") && strstr(err, "context limit of 10"));
    snprintf(args, sizeof args, "run -m '%s' --prompt-ids '1 2 3 4 5' --ctx 4", dir);
    CHECK(RUN(args) == 1 && strstr(err, "context limit"));
    // logits: [n_tokens][vocab] float32
    const char *work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    char lpath[1200];
    snprintf(lpath, sizeof lpath, "%s/cli_logits_%d.f32", work, (int)getpid());
    snprintf(args, sizeof args, "logits -m '%s' --tokens '5 6 7' -o '%s'", dir, lpath);
    CHECK(RUN(args) == 0);
    FILE *fp = fopen(lpath, "rb");
    long size = -1;
    if (fp) {
        fseek(fp, 0, SEEK_END);
        size = ftell(fp);
        fclose(fp);
    }
    CHECK_MSG(size == 3 * 200 * 4, "logits file is %ld bytes", size);
    remove(lpath);
    snprintf(args, sizeof args, "logits -m '%s' --tokens '5 6 7' -o /nonexistent/dir/x.f32", dir);
    CHECK(RUN(args) == 1 && strstr(err, "/nonexistent/dir/x.f32"));
    // bench --json: the last line is one JSON object with the documented keys
    snprintf(args, sizeof args, "bench -m '%s' -p 8 -n 4 --reps 1 --json", dir);
    CHECK(RUN(args) == 0);
    char *last = out + strlen(out);
    while (last > out && last[-1] == '\n') *--last = '\0';
    while (last > out && last[-1] != '\n') last--;
    CHECK_MSG(last[0] == '{' && strstr(last, "\"prefill_tok_s\"") &&
                  strstr(last, "\"decode_tok_s\"") && strstr(last, "\"decode_gb_s\""),
              "bench last line: %s", last);
    return lp_test_finish("cli");
}
