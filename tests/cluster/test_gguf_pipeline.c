// SPDX-License-Identifier: MIT
// test_gguf_pipeline.c -- a GGUF model in a pipeline of real `layerpipe
// worker` processes on loopback. The 28-layer model of test_pipeline.c
// (seed 201) as gguf-bf16 in two gguf-split files holds the same weights,
// so one process computes bit-identical logits from either container; over
// 3 stages (10-9-9, `layerpipe cluster`) the GGUF model's logits equal one
// process's, bit for bit, and greedy ids too; workers named by the folder,
// by a split file or by the other split agree; a worker holding the HF
// folder is refused by a GGUF coordinator (the fingerprint covers the file).
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "cluster_fixture.h"
#include "lp_test.h"
#include "model_fixture.h"

#define N_PROMPT 80
#define VOCAB 256
#define CMD_LIMIT_S 60

static const char *SHAPE = "--tied 1 --layers 28 --hidden 64 --heads 4 --kv-heads 2 "
                           "--head-dim 32 --intermediate 128 --vocab 256";
static const char *bin, *work;
static char prompt[N_PROMPT * 8];
static int seq;

static struct lpc_result lp(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static struct lpc_result lp(const char *fmt, ...) {
    char args[8192], cmd[9000], s[1100];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "'%s' %s", bin, args);
    snprintf(s, sizeof s, "%s/gguf_pipeline_%d_%d", work, (int)getpid(), seq++);
    return lpc_sh(cmd, s, CMD_LIMIT_S);
}

// `CMD logits` (CMD: "-m MODEL [flags]" for one process, or "cluster -m
// MODEL ... --" before the subcommand, which then gets no -m); NULL on
// failure, *n floats.
static float *logits(const char *cmd, size_t *n) {
    char out[1100];
    snprintf(out, sizeof out, "%s/gguf_pipeline_%d_%d.f32", work, (int)getpid(), seq++);
    bool cluster = strncmp(cmd, "cluster", 7) == 0;
    struct lpc_result r = cluster ? lp("%s logits --tokens '%s' -o '%s'", cmd, prompt, out)
                                  : lp("logits %s --tokens '%s' -o '%s'", cmd, prompt, out);
    CHECK_MSG(r.rc == 0, "%s logits -> rc %d: %s", cmd, r.rc, r.err);
    char *v = r.rc == 0 ? lpc_read_file(out, n) : NULL;
    *n /= 4;
    remove(out);
    lpc_result_free(&r);
    return (float *)v;
}

static void same(const float *a, size_t na, const float *b, size_t nb, const char *what) {
    CHECK_MSG(a && b && na == nb && na == (size_t)N_PROMPT * VOCAB &&
                  memcmp(a, b, na * 4) == 0,
              "%s: logits differ from one process (%zu vs %zu floats)", what, na, nb);
}

// Greedy ids (the --print-ids line) into ids; cmd as for logits.
static void greedy(const char *cmd, char *ids, size_t n) {
    bool cluster = strncmp(cmd, "cluster", 7) == 0;
    struct lpc_result r =
        lp("%s run %s --prompt-ids '%s' -n 16 --temp 0 --ignore-eos --print-ids",
           cluster ? cmd : "", cluster ? "" : cmd, prompt);
    CHECK_MSG(r.rc == 0, "%s run -> rc %d: %s", cmd, r.rc, r.err);
    char *last = NULL;
    for (char *line = strtok(r.out, "\n"); line; line = strtok(NULL, "\n"))
        if (*line) last = line;
    snprintf(ids, n, "%s", last ? last : "");
    lpc_result_free(&r);
}

int main(void) {
    bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    uint32_t x = 777;
    size_t off = 0;
    for (int i = 0; i < N_PROMPT; i++) {
        x = x * 1103515245u + 12345u;
        off += (size_t)snprintf(prompt + off, sizeof prompt - off, i ? " %u" : "%u",
                                (x >> 16) % VOCAB);
    }
    char hf[1100], gguf[1100], gen[512], split1[1200], split2[1200];
    snprintf(gen, sizeof gen, "--seed 201 --format hf-bf16 %s", SHAPE);
    CHECK(lp_fixture_model("golden_narrow28_bf16", gen, hf, sizeof hf) == 0);
    snprintf(gen, sizeof gen, "--seed 201 --format gguf-bf16 --sharded 2 %s", SHAPE);
    CHECK(lp_fixture_model("cluster_narrow28_gguf", gen, gguf, sizeof gguf) == 0);
    snprintf(split1, sizeof split1, "%s/model-00001-of-00002.gguf", gguf);
    snprintf(split2, sizeof split2, "%s/model-00002-of-00002.gguf", gguf);
    size_t n_ref, n;
    char cmd[1400];
    snprintf(cmd, sizeof cmd, "-m '%s'", hf);
    float *ref = logits(cmd, &n_ref);
    char want[512], ids[512];
    greedy(cmd, want, sizeof want);
    snprintf(cmd, sizeof cmd, "-m '%s'", gguf);
    float *got = logits(cmd, &n);
    same(ref, n_ref, got, n, "one process, GGUF");
    free(got);
    snprintf(cmd, sizeof cmd, "cluster -m '%s' --stages 1 --", split1); // the coordinator alone
    got = logits(cmd, &n);
    same(ref, n_ref, got, n, "cluster --stages 1, GGUF split file");
    free(got);
    snprintf(cmd, sizeof cmd, "cluster -m '%s' --stages 3 --plan 10,9,9 --worker-threads 1 --",
             gguf);
    got = logits(cmd, &n);
    same(ref, n_ref, got, n, "cluster --stages 3 --plan 10,9,9, GGUF");
    free(got);
    greedy(cmd, ids, sizeof ids);
    CHECK_MSG(want[0] && strcmp(want, ids) == 0, "greedy ids: GGUF pipeline '%s', one process '%s'",
              ids, want);
    // workers named three ways hold one model; an HF worker is another model
    struct lpc_worker w[3], other;
    const char *names[3] = {gguf, split1, split2};
    bool ok = true;
    for (int i = 0; i < 3; i++) {
        char log[1100];
        snprintf(log, sizeof log, "%s/gguf_pipeline_%d_w%d.log", work, (int)getpid(), i);
        ok = ok && lpc_worker_start(&w[i], bin, names[i], log, 1, 30) == 0;
    }
    char log[1100];
    snprintf(log, sizeof log, "%s/gguf_pipeline_%d_other.log", work, (int)getpid());
    ok = ok && lpc_worker_start(&other, bin, hf, log, 1, 30) == 0;
    CHECK_MSG(ok, "cannot start the workers");
    if (ok) {
        snprintf(cmd, sizeof cmd, "-m '%s' --plan 4,8,8,8 --workers %s,%s,%s", split2, w[0].addr,
                 w[1].addr, w[2].addr);
        got = logits(cmd, &n);
        same(ref, n_ref, got, n, "plan 4,8,8,8 over workers named by folder and split files");
        free(got);
        struct lpc_result r = lp("logits -m '%s' --tokens '1 2 3' -o /dev/null --plan 14,14 "
                                 "--workers %s",
                                 gguf, other.addr);
        CHECK_MSG(r.rc != 0 && strstr(r.err, "fingerprint"),
                  "an HF worker behind a GGUF coordinator: rc %d: %s", r.rc, r.err);
        lpc_result_free(&r);
    }
    for (int i = 0; i < 3; i++) {
        int st = lpc_worker_stop(&w[i], 5);
        CHECK_MSG(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "worker %d: status %d (%s)", i,
                  st, w[i].log);
        if (st != -1) remove(w[i].log);
    }
    lpc_worker_stop(&other, 5);
    remove(other.log);
    free(ref);
    return lp_test_finish("cluster/test_gguf_pipeline");
}
