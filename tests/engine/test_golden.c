// SPDX-License-Identifier: MIT
// test_golden.c -- layerpipe against HF transformers. Each case of
// tests/golden/engine/cases.json names a model made by lp_genmodel (whose
// bytes must hash as recorded: the references were computed on them), a
// prompt, and reference logits and greedy ids from tools/hf_reference.py
// (Qwen3ForCausalLM in float32). Through the real `layerpipe` binary:
//   logits: relative L2 error per row <= 1e-3 (float activations; also
//           with one thread and odd chunk sizes), <= 1e-2 with a bf16 KV cache;
//   run --print-ids --temp 0: the 32 greedy ids equal the reference's,
//           except from a step whose reference top-2 margin is < 1e-3.
// Models with the same weights in other containers (f32, sharded, GGUF
// f32/bf16/f16) must match the bf16 reference too. With a GPU, the logits
// and greedy checks run again with --device cuda (same tolerances), GGUF
// block models (Q8_0 ... Q6_K, Q4_K_M) included.
#include <jansson.h>
#include <stdint.h>
#include <string.h>

#include "layerpipe/backend.h"
#include "lp_test.h"
#include "model_fixture.h"

static const char *bin;
static const char *golden;
static const char *work;

static uint64_t fnv1a64_file(const char *path) {
    FILE *fp = fopen(path, "rb");
    uint64_t h = 0xcbf29ce484222325ull;
    if (!fp) return 0;
    int c;
    while ((c = getc(fp)) != EOF) h = (h ^ (uint8_t)c) * 0x100000001b3ull;
    fclose(fp);
    return h;
}

static float *read_f32(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long bytes = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    float *v = malloc((size_t)bytes + 4);
    *n = fread(v, 4, (size_t)bytes / 4, fp);
    fclose(fp);
    return v;
}

static char *ids_text(const json_t *tokens) {
    size_t n = json_array_size(tokens);
    char *s = malloc(n * 12 + 1);
    size_t off = 0;
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(s + off, 12, i ? " %lld" : "%lld",
                                (long long)json_integer_value(json_array_get(tokens, i)));
    s[off] = '\0';
    return s;
}

// Runs `layerpipe logits` and compares with the reference file.
static void check_logits(const char *case_name, const char *dir, const char *ids,
                         const char *ref_path, const char *extra, double tol, int vocab) {
    char out[1200], cmd[16384];
    snprintf(out, sizeof out, "%s/golden_%s_%d.f32", work, case_name, (int)getpid());
    snprintf(cmd, sizeof cmd, "'%s' logits -m '%s' --tokens '%s' -o '%s' %s", bin, dir, ids, out,
             extra);
    CHECK_MSG(system(cmd) == 0, "%s", cmd);
    size_t n_ref = 0, n_got = 0;
    float *ref = read_f32(ref_path, &n_ref), *got = read_f32(out, &n_got);
    CHECK_MSG(ref && got && n_ref == n_got && n_ref % (size_t)vocab == 0, "%s: sizes %zu vs %zu",
              case_name, n_got, n_ref);
    if (ref && got && n_ref == n_got) {
        double worst = 0;
        size_t rows = n_ref / (size_t)vocab;
        for (size_t r = 0; r < rows; r++) {
            double e = lp_rel_l2(got + r * (size_t)vocab, ref + r * (size_t)vocab, (size_t)vocab);
            if (e > worst) worst = e;
        }
        CHECK_MSG(worst <= tol, "%s %s: worst row relative L2 error %g > %g", case_name, extra,
                  worst, tol);
        printf("%-28s %-22s rows %4zu  worst rel L2 %.3g\n", case_name, extra, rows, worst);
    }
    free(ref);
    free(got);
    remove(out);
}

// Runs `layerpipe run --print-ids` greedily and compares with the reference.
static void check_greedy(const char *case_name, const char *dir, const char *ids,
                         const char *ref_path, int n_gen, const char *extra) {
    char cmd[16384];
    snprintf(cmd, sizeof cmd,
             "'%s' run -m '%s' --prompt-ids '%s' -n %d --temp 0 --ignore-eos --print-ids %s "
             "2>/dev/null",
             bin, dir, ids, n_gen, extra);
    FILE *p = popen(cmd, "r");
    int got[256], n_got = 0;
    while (p && n_got < 256 && fscanf(p, "%d", &got[n_got]) == 1) n_got++;
    CHECK_MSG(p && pclose(p) == 0, "%s", cmd);
    FILE *fp = fopen(ref_path, "r");
    int ref[256], n_ref = 0;
    double margin[256];
    char line[16384];
    if (fp && fgets(line, sizeof line, fp)) {
        char *s = line, *end;
        for (long v; n_ref < 256 && (v = strtol(s, &end, 10), end != s); s = end) ref[n_ref++] = (int)v;
        if (fgets(line, sizeof line, fp)) {
            s = line;
            for (int i = 0; i < n_ref; i++, s = end) margin[i] = strtod(s, &end);
        }
    }
    if (fp) fclose(fp);
    CHECK_MSG(n_ref == n_gen && n_got == n_gen, "%s: %d ids, reference %d", case_name, n_got,
              n_ref);
    for (int i = 0; i < n_ref && i < n_got; i++) {
        if (got[i] == ref[i]) continue;
        CHECK_MSG(margin[i] < 1e-3, "%s: greedy step %d: %d, reference %d (margin %g)",
                  case_name, i, got[i], ref[i], margin[i]);
        printf("%s: greedy diverges at step %d on a near-tie (margin %g)\n", case_name, i,
               margin[i]);
        break;
    }
}

int main(void) {
    bin = lp_fixture_env("LP_BIN", "build/layerpipe");
    golden = lp_fixture_env("LP_GOLDEN_DIR", "tests/golden");
    work = lp_fixture_env("LP_WORK_DIR", "build/testdata");
    char path[1200];
    snprintf(path, sizeof path, "%s/engine/cases.json", golden);
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    CHECK_MSG(doc != NULL, "%s: %s", path, jerr.text);
    if (!doc) return lp_test_finish("golden");
    json_t *models = json_object_get(doc, "models"), *cases = json_object_get(doc, "cases");
    // With a GPU (and a build with CUDA) every case runs on cuda:0 as well.
    struct lp_backend *probe = NULL;
    struct lp_error perr = {0};
    bool cuda = lp_backend_cuda_create(&probe, &(struct lp_backend_cuda_params){.device = 0},
                                       &perr) == LP_OK;
    lp_backend_destroy(probe);
    printf(cuda ? "cuda:0 present: every case also runs with --device cuda\n"
                : "no CUDA device (%s): CPU cases only\n",
           perr.msg);
    const char *name;
    json_t *m;
    // every model: generate, and check it is the one the references saw
    // LP_GOLDEN_ONLY=PREFIX: only the models and cases whose names start so
    const char *only = lp_fixture_env("LP_GOLDEN_ONLY", "");
    json_object_foreach(models, name, m) {
        if (strncmp(name, only, strlen(only)) != 0) continue;
        char dir[1100], fixture[200];
        snprintf(fixture, sizeof fixture, "golden_%s", name);
        CHECK(lp_fixture_model(fixture, json_string_value(json_object_get(m, "gen")), dir,
                               sizeof dir) == 0);
        // the file the references saw: model.safetensors, model.gguf or a first split
        static const char *files[] = {"model.safetensors", "model.gguf",
                                      "model-00001-of-00002.gguf"};
        for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
            snprintf(path, sizeof path, "%s/%s", dir, files[f]);
            if (access(path, F_OK) == 0) break;
        }
        char hash[32];
        snprintf(hash, sizeof hash, "%016llx", (unsigned long long)fnv1a64_file(path));
        const char *want = json_string_value(json_object_get(m, "fnv1a64"));
        CHECK_MSG(want && strcmp(hash, want) == 0,
                  "%s: lp_genmodel wrote different bytes (%s, references made on %s): "
                  "regenerate the references with tools/golden_cases.py",
                  name, hash, want ? want : "?");
    }
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *case_name = json_string_value(json_object_get(c, "case"));
        const char *model = json_string_value(json_object_get(c, "model"));
        if (strncmp(model, only, strlen(only)) != 0) continue;
        int vocab = strncmp(model, "narrow", 6) == 0 ? 256 : 512;
        char dir[1100], ref[1200], ref_ids[1200];
        snprintf(dir, sizeof dir, "%s/golden_%s", work, model);
        snprintf(ref, sizeof ref, "%s/engine/%s.logits.f32", golden, case_name);
        snprintf(ref_ids, sizeof ref_ids, "%s/engine/%s.greedy.txt", golden, case_name);
        char *ids = ids_text(json_object_get(c, "tokens"));
        int n_greedy = (int)json_integer_value(json_object_get(c, "greedy"));
        { // every backend takes every model, GGUF blocks included
            check_logits(case_name, dir, ids, ref, "", 1e-3, vocab);
            check_logits(case_name, dir, ids, ref, "--threads 1 --batch 7", 1e-3, vocab);
            if (strstr(case_name, "_long"))
                check_logits(case_name, dir, ids, ref, "--kv-dtype bf16", 1e-2, vocab);
            check_greedy(case_name, dir, ids, ref_ids, n_greedy, "");
        }
        if (cuda) { // on the GPU
            check_logits(case_name, dir, ids, ref, "--device cuda", 1e-3, vocab);
            check_logits(case_name, dir, ids, ref, "--device cuda --batch 7", 1e-3, vocab);
            if (strstr(case_name, "_long"))
                check_logits(case_name, dir, ids, ref, "--device cuda --kv-dtype bf16", 1e-2,
                             vocab);
            check_greedy(case_name, dir, ids, ref_ids, n_greedy, "--device cuda");
        }
        // the same weights in other containers
        json_t *aliases = json_object_get(doc, "aliases"), *a;
        const char *alias;
        json_object_foreach(aliases, alias, a) {
            if (strcmp(json_string_value(json_object_get(a, "same_weights_as")), model) != 0)
                continue;
            char adir[1100], fixture[200];
            snprintf(fixture, sizeof fixture, "golden_%s", alias);
            CHECK(lp_fixture_model(fixture, json_string_value(json_object_get(a, "gen")), adir,
                                   sizeof adir) == 0);
            char label[300];
            snprintf(label, sizeof label, "%s@%s", case_name, alias);
            check_logits(label, adir, ids, ref, "", 1e-3, vocab);
        }
        free(ids);
    }
    json_decref(doc);
    return lp_test_finish("golden");
}
