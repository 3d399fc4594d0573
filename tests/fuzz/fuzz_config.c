// SPDX-License-Identifier: MIT
// fuzz_config.c -- libFuzzer harness for config.json and
// generation_config.json (lp_config_parse, lp_generation_config_parse).
// The input is split at its first NUL byte: config.json before it, and
// generation_config.json after it (parsed against the config when that
// parsed, else against a default one). Without a NUL, both parsers read
// the whole input.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model/internal.h"

static char *dup_text(const uint8_t *p, size_t n) {
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t n_cfg = nul ? (size_t)(nul - data) : size;
    char *cfg_text = dup_text(data, n_cfg);
    char *gen_text = nul ? dup_text(nul + 1, size - n_cfg - 1) : dup_text(data, size);
    if (!cfg_text || !gen_text) goto done;
    struct lp_model_config cfg;
    struct lp_error err = {0};
    if (lp_config_parse(&cfg, cfg_text, "config.json", &err) != LP_OK) {
        if (!err.msg[0]) abort();
        memset(&cfg, 0, sizeof cfg);
        cfg.vocab_size = 1000;
    }
    struct lp_generation_config gen;
    err.msg[0] = '\0';
    if (lp_generation_config_parse(&gen, &cfg, gen_text, "generation_config.json", &err) != LP_OK &&
        !err.msg[0])
        abort();
done:
    free(cfg_text);
    free(gen_text);
    return 0;
}
