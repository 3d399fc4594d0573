// SPDX-License-Identifier: MIT
// cmd_quantize.c -- `layerpipe quantize`: convert an HF folder (bf16, f16
// or f32) into an MLX affine-quantized folder that layerpipe and mlx-lm load.
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "layerpipe/convert.h"

struct progress {
    int last_pct, last_logged;
    bool tty; // stderr is a terminal: redraw one line
};

static void on_progress(void *user, uint64_t done, uint64_t total) {
    struct progress *p = user;
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    if (pct / 5 == p->last_pct / 5 && pct != 100) return;
    p->last_pct = pct;
    if (p->tty)
        fprintf(stderr, "\rquantize: %3d%% (%.0f of %.0f MB)%s", pct, (double)done / 1e6,
                (double)total / 1e6, pct == 100 ? "\n" : "");
    else if (pct / 25 != p->last_logged / 25 || pct == 100) { // a few lines in a log
        p->last_logged = pct;
        fprintf(stderr, "quantize: %3d%% (%.0f of %.0f MB)\n", pct, (double)done / 1e6,
                (double)total / 1e6);
    }
}

int lp_cli_quantize(int argc, char **argv) {
    char *src = NULL, *dst = NULL;
    int bits = 8, group = 64;
    struct lp_arg args[] = {
        {"model", 'm', LP_ARG_STR, &src, "HF_DIR", "the HF model folder (bf16, f16 or f32)", true},
        {"output", 'o', LP_ARG_STR, &dst, "OUT_DIR", "the folder to write (created)", true},
        {"bits", 0, LP_ARG_INT, &bits, "8|4", "bits per weight (default 8)", false, 4, 8},
        {"group", 0, LP_ARG_INT, &group, "N", "weights per scale and bias: 32, 64, 128 (default 64)",
         false, 32, 128},
    };
    enum lp_args_result ar = lp_args_parse(
        "quantize",
        "Convert an HF folder into MLX affine-quantized form (as mlx_lm.convert does).", args,
        (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    if ((bits != 4 && bits != 8) || (group != 32 && group != 64 && group != 128)) {
        fprintf(stderr, "layerpipe quantize: --bits must be 4 or 8 and --group 32, 64 or 128\n");
        return 2;
    }
    struct progress p = {-100, -100, isatty(2)};
    struct lp_error err = {0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (lp_model_quantize(src, dst, bits, group, on_progress, &p, &err) != LP_OK) {
        fprintf(stderr, "\nlayerpipe quantize: %s\n", err.msg);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fprintf(stderr, "quantize: wrote %s (%d-bit, group %d) in %.1f s\n", dst, bits, group,
            (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    return 0;
}
