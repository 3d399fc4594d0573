// SPDX-License-Identifier: MIT
// test_perplexity_slow.c -- `layerpipe perplexity` on the bundled model
// over the held-out text agrees with PyTorch's perplexity of the same
// weights (tools/perplexity_reference.py on the GPU machine: the MLX 8-bit
// folder dequantized, float32, same windows) within 1%, and is far below
// the unigram baseline recorded with it.
#include <jansson.h>
#include <string.h>

#include "lp_test.h"
#include "model_fixture.h"

int main(void) {
    const char *bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    const char *src = lp_fixture_env("LP_SOURCE_DIR", ".");
    char path[1200], cmd[4096];
    snprintf(path, sizeof path, "%s/tests/golden/perplexity/layerpipe-tiny-8bit.valid.json", src);
    json_t *ref = json_load_file(path, 0, NULL);
    CHECK_MSG(ref != NULL, "cannot read %s", path);
    if (!ref) return lp_test_finish("perplexity");
    double want = json_number_value(json_object_get(ref, "perplexity"));
    double unigram = json_number_value(json_object_get(ref, "unigram_perplexity"));
    CHECK(json_is_true(json_object_get(ref, "layerpipe_ids_equal")));
    snprintf(cmd, sizeof cmd,
             "'%s' perplexity -m '%s/models/layerpipe-tiny-8bit' -f "
             "'%s/tests/golden/perplexity/valid.txt' --ctx 512 --json 2>/dev/null | tail -1",
             bin, src, src);
    FILE *p = popen(cmd, "r");
    char line[1024] = "";
    if (p && !fgets(line, sizeof line, p)) line[0] = '\0';
    CHECK(p && pclose(p) == 0);
    json_t *got = json_loads(line, 0, NULL);
    double ppl = got ? json_number_value(json_object_get(got, "perplexity")) : 0;
    printf("layerpipe %.6f, PyTorch %.6f (relative difference %.2e), unigram %.1f\n", ppl, want,
           fabs(ppl - want) / want, unigram);
    CHECK_MSG(fabs(ppl - want) <= 0.01 * want, "perplexity %g vs PyTorch %g", ppl, want);
    CHECK_MSG(ppl < unigram / 10, "perplexity %g is not far below the unigram %g", ppl, unigram);
    CHECK(json_integer_value(json_object_get(got, "tokens_scored")) ==
          json_integer_value(json_object_get(ref, "tokens_scored")));
    json_decref(got);
    json_decref(ref);
    return lp_test_finish("perplexity");
}
