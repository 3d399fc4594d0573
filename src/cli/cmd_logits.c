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
    so.logit_rows = so.batch;
    struct lp_cli_session s;
    if (!lp_cli_session_open(&s, &so, "logits")) {
        free(ids);
        return 1;
    }
    int rc = 0;
    FILE *fp = NULL;
    int vocab = lp_model_config(s.model)->vocab_size;
    float *logits = malloc((size_t)so.batch * (size_t)vocab * sizeof(float));
    struct lp_error err = {0};
    int seq = -1;
    if (!logits) {
        fprintf(stderr, "layerpipe logits: out of memory\n");
        rc = 1;
        goto done;
    }
    const struct lp_runner *r = &s.runner;
    if (n > r->iface.max_context(r->ctx)) {
        fprintf(stderr, "layerpipe logits: %d tokens exceed the context limit of %d\n", n,
                r->iface.max_context(r->ctx));
        rc = 2;
        goto done;
    }
    fp = fopen(out_path, "wb");
    if (!fp) {
        perror(out_path);
        rc = 1;
        goto done;
    }
    if (r->iface.seq_open(r->ctx, &seq, &err) != LP_OK) goto fail;
    for (int i = 0; i < n; i += so.batch) {
        int m = n - i < so.batch ? n - i : so.batch;
        if (r->iface.step(r->ctx, seq, i, ids + i, m, true, logits, &err) != LP_OK) goto fail;
        if (fwrite(logits, sizeof(float) * (size_t)vocab, (size_t)m, fp) != (size_t)m) {
            fprintf(stderr, "layerpipe logits: %s: write failed\n", out_path);
            rc = 1;
            goto done;
        }
    }
    goto done;
fail:
    fprintf(stderr, "layerpipe logits: %s\n", err.msg);
    rc = 1;
done:
    if (fp && fclose(fp) != 0 && rc == 0) {
        fprintf(stderr, "layerpipe logits: %s: close failed\n", out_path);
        rc = 1;
    }
    if (seq >= 0) r->iface.seq_close(r->ctx, seq);
    free(logits);
    free(ids);
    lp_cli_session_close(&s);
    return rc;
}
