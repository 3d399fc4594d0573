// SPDX-License-Identifier: MIT
// test_quantize.c -- `layerpipe quantize` against the generator: an HF bf16
// folder quantized by layerpipe must hold exactly the tensors (names,
// dtypes, shapes, bytes) that lp_genmodel writes for the same seed in MLX
// form (lp_genmodel's MLX output is what mlx_lm.convert makes of its bf16
// output). Also: 4-bit, side files copied, config keys, bad arguments, and
// refusing an already-quantized or occupied target.
#include <jansson.h>
#include <string.h>
#include <sys/wait.h>

#include "lp_test.h"
#include "model/internal.h"
#include "model_fixture.h"

#define SHAPE "--layers 2 --hidden 64 --heads 4 --kv-heads 2 --head-dim 16 --intermediate 192 --vocab 300 "

static void compare_folders(const char *a_dir, const char *b_dir) {
    char a_path[1200], b_path[1200];
    snprintf(a_path, sizeof a_path, "%s/model.safetensors", a_dir);
    snprintf(b_path, sizeof b_path, "%s/model.safetensors", b_dir);
    struct lp_st_file *a = NULL, *b = NULL;
    struct lp_error err = {0};
    CHECK_OK(lp_st_open(&a, a_path, &err), &err);
    CHECK_OK(lp_st_open(&b, b_path, &err), &err);
    if (!a || !b) goto done;
    CHECK_MSG(a->n_tensors == b->n_tensors, "%d vs %d tensors", a->n_tensors, b->n_tensors);
    for (int i = 0; i < a->n_tensors; i++) {
        const struct lp_st_tensor *x = &a->tensors[i], *y = lp_st_find(b, x->name);
        CHECK_MSG(y != NULL, "tensor %s missing from the generator's folder", x->name);
        if (!y) continue;
        CHECK_MSG(x->dtype == y->dtype && x->n_dims == y->n_dims &&
                      memcmp(x->shape, y->shape, sizeof(int64_t) * (size_t)x->n_dims) == 0,
                  "tensor %s: dtype/shape differ", x->name);
        CHECK_MSG(x->nbytes == y->nbytes && memcmp(x->data, y->data, x->nbytes) == 0,
                  "tensor %s: bytes differ", x->name);
    }
done:
    lp_st_close(a);
    lp_st_close(b);
}

static int sh(const char *cmd) {
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

int main(void) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    const char *work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    char hf[1024], hf_untied[1024], g8[1024], g4[1024], g8u[1024];
    CHECK(lp_fixture_model("quant_hf", "--seed 31 --format hf-bf16 --tied 1 " SHAPE, hf,
                           sizeof hf) == 0);
    CHECK(lp_fixture_model("quant_gen8", "--seed 31 --format mlx8 --group 64 --tied 1 " SHAPE, g8,
                           sizeof g8) == 0);
    CHECK(lp_fixture_model("quant_gen4", "--seed 31 --format mlx4 --group 32 --tied 1 " SHAPE, g4,
                           sizeof g4) == 0);
    CHECK(lp_fixture_model("quant_hf_untied", "--seed 32 --format hf-bf16 --tied 0 " SHAPE,
                           hf_untied, sizeof hf_untied) == 0);
    CHECK(lp_fixture_model("quant_gen8_untied", "--seed 32 --format mlx8 --group 64 --tied 0 " SHAPE,
                           g8u, sizeof g8u) == 0);
    char out[1200], cmd[4096];
    // 8-bit group 64 (intermediate 192 is a multiple of 64), tied
    snprintf(out, sizeof out, "%s/quant_out8_%d", work, (int)getpid());
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s' quantize -m '%s' -o '%s' --bits 8 --group 64 2>/dev/null",
             out, bin, hf, out);
    CHECK(sh(cmd) == 0);
    compare_folders(out, g8);
    // config keys and copied side files
    snprintf(cmd, sizeof cmd, "%s/config.json", out);
    json_t *cfg = json_load_file(cmd, 0, NULL);
    json_t *q = cfg ? json_object_get(cfg, "quantization") : NULL;
    CHECK(q && json_integer_value(json_object_get(q, "bits")) == 8 &&
          json_integer_value(json_object_get(q, "group_size")) == 64);
    json_decref(cfg);
    snprintf(cmd, sizeof cmd, "cmp -s '%s/generation_config.json' '%s/generation_config.json'", hf,
             out);
    CHECK(sh(cmd) == 0);
    // the quantized folder runs: its logits equal the generator's MLX folder's
    char la[1300], lb[1300];
    snprintf(la, sizeof la, "%s/a.f32", out);
    snprintf(lb, sizeof lb, "%s/b.f32", out);
    snprintf(cmd, sizeof cmd, "'%s' logits -m '%s' --tokens '1 2 3 4' -o '%s' && '%s' logits -m "
                              "'%s' --tokens '1 2 3 4' -o '%s' && cmp -s '%s' '%s'",
             bin, out, la, bin, g8, lb, la, lb);
    CHECK(sh(cmd) == 0);
    // refuses an occupied target and an already-quantized source
    snprintf(cmd, sizeof cmd, "'%s' quantize -m '%s' -o '%s' 2>&1 | grep -q 'already exists'", bin,
             hf, out);
    CHECK(sh(cmd) == 0);
    snprintf(cmd, sizeof cmd, "'%s' quantize -m '%s' -o '%s/x' 2>&1 | grep -q 'already quantized'",
             bin, g8, out);
    CHECK(sh(cmd) == 0);
    // 4-bit group 32
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s' quantize -m '%s' -o '%s' --bits 4 --group 32 2>/dev/null",
             out, bin, hf, out);
    CHECK(sh(cmd) == 0);
    compare_folders(out, g4);
    // untied: lm_head is quantized too
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && '%s' quantize -m '%s' -o '%s' 2>/dev/null", out, bin,
             hf_untied, out);
    CHECK(sh(cmd) == 0);
    compare_folders(out, g8u);
    // the output folder may not be the input folder (it would truncate the
    // files it copies)
    snprintf(cmd, sizeof cmd, "'%s' quantize -m '%s' -o '%s/.' 2>&1 | grep -q 'is the input folder'",
             bin, hf, hf);
    CHECK(sh(cmd) == 0);
    snprintf(cmd, sizeof cmd, "test -s '%s/generation_config.json'", hf);
    CHECK(sh(cmd) == 0);
    // bad arguments
    snprintf(cmd, sizeof cmd, "'%s' quantize -m '%s' -o '%s/y' --bits 5 2>/dev/null", bin, hf, out);
    CHECK(sh(cmd) == 2);
    snprintf(cmd, sizeof cmd, "'%s' quantize -m '%s' -o '%s/y' --group 48 2>/dev/null", bin, hf,
             out);
    CHECK(sh(cmd) == 2);
    snprintf(cmd, sizeof cmd, "'%s' quantize -m /nonexistent -o '%s/y' 2>&1 | grep -q "
                              "'/nonexistent/config.json'", bin, out);
    CHECK(sh(cmd) == 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", out);
    CHECK(sh(cmd) == 0);
    return lp_test_finish("quantize");
}
