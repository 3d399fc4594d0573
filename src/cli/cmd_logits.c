// SPDX-License-Identifier: MIT
// cmd_logits.c -- `layerpipe logits`: the logits of every position of a
// token list, written as float32 little-endian [n_tokens][vocab] (for
// comparison against reference implementations).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "cli/session.h"

struct logits_out {
    const char *path;
    FILE *fp;
    bool failed; // a write failed (reported)
};

// Prompt rows arrive in order, chunk by chunk: append them to the file.
static bool on_event(void *user, const struct lp_sched_event *ev) {
    struct logits_out *o = user;
    if (ev->kind != LP_SCHED_EV_PROMPT_LOGITS) return false;
    size_t n = (size_t)ev->n_rows;
    if (fwrite(ev->logits, sizeof(float) * (size_t)ev->vocab, n, o->fp) != n) {
        fprintf(stderr, "layerpipe logits: %s: write failed\n", o->path);
        o->failed = true;
        return true;
    }
    return false;
}

int lp_cli_logits(int argc, char **argv) {
    struct lp_cli_session_opts so = {.kv_dtype = "f32", .batch = 64};
    char *tokens = NULL, *out_path = NULL;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &so.model_dir, "DIR", "model folder", true},
        {"tokens", 0, LP_ARG_STR, &tokens, "\"ID ID ...\"", "token ids", true},
        {"output", 'o', LP_ARG_STR, &out_path, "FILE",
         "output file: float32 little-endian [n_tokens][vocab]", true},
        LP_CLI_COMMON_ARGS(so),
    };
    enum lp_args_result ar = lp_args_parse(
        "logits", "Write the logits of every position of a token sequence to a file.", args,
        (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    int32_t *ids = NULL;
    int n = 0;
    if (!lp_args_parse_ids(tokens, "--tokens", &ids, &n)) return 2;
    so.max_seqs = 1;
    struct lp_cli_session s;
    if (!lp_cli_session_open(&s, &so, "logits")) {
        free(ids);
        return 1;
    }
    int rc = 0;
    struct logits_out out = {.path = out_path};
    struct lp_error err = {0};
    if (n > lp_pipeline_max_context(s.pipeline)) {
        fprintf(stderr, "layerpipe logits: %d tokens exceed the context limit of %d\n", n,
                lp_pipeline_max_context(s.pipeline));
        rc = 2;
        goto done;
    }
    out.fp = fopen(out_path, "wb");
    if (!out.fp) {
        perror(out_path);
        rc = 1;
        goto done;
    }
    struct lp_sched_request rq = {.prompt = ids, .n_prompt = n, .max_new_tokens = 0,
                                  .sampling = lp_sampler_params_default(), .prompt_logits = true,
                                  .on_event = on_event, .user = &out};
    if (lp_sched_run(s.sched, &rq, NULL, &err) != LP_OK) {
        fprintf(stderr, "layerpipe logits: %s\n", err.msg);
        rc = 1;
    } else if (out.failed) {
        rc = 1;
    }
done:
    if (out.fp && fclose(out.fp) != 0 && rc == 0) {
        fprintf(stderr, "layerpipe logits: %s: close failed\n", out_path);
        rc = 1;
    }
    free(ids);
    lp_cli_session_close(&s);
    return rc;
}
