// SPDX-License-Identifier: MIT
// bench_tensor_hash.c -- what the per-tensor integrity hashes cost
// (lp_model_tensor_hashes): for a model folder, the layers of each stage of
// a plan hashed without a cache (every byte read), then again from the
// cache files a first load leaves (a new model object, as the next start
// of a worker). The model's files should be in the page cache already (run
// it twice) unless disk speed is the question.
// Usage: bench_tensor_hash MODEL_DIR [PLAN, default 10,9,9]
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "layerpipe/model.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// Opens layers [b, e), hashes them; seconds spent hashing (open excluded).
static double hash_range(const char *dir, int b, int e, struct lp_tensor_hash_stats *s) {
    struct lp_model *m = NULL;
    struct lp_error err = {0};
    struct lp_model_load_params lp = {b, e, false, false};
    if (lp_model_open(&m, dir, &lp, &err) != LP_OK) {
        fprintf(stderr, "bench_tensor_hash: %s\n", err.msg);
        exit(1);
    }
    struct lp_tensor_hash *h = NULL;
    int n = 0;
    double t0 = now_s();
    if (lp_model_tensor_hashes(m, b, e, &h, &n, s, &err) != LP_OK) {
        fprintf(stderr, "bench_tensor_hash: %s\n", err.msg);
        exit(1);
    }
    double dt = now_s() - t0;
    free(h);
    lp_model_close(m);
    return dt;
}

static void remove_caches(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -f '%s'/*.layerpipe-hashes", dir);
    if (system(cmd) != 0) fprintf(stderr, "bench_tensor_hash: cannot remove the caches\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_tensor_hash MODEL_DIR [PLAN]\n");
        return 2;
    }
    const char *dir = argv[1], *plan = argc > 2 ? argv[2] : "10,9,9";
    int layers[16], n_stages = 0;
    for (const char *p = plan; *p && n_stages < 16;) {
        layers[n_stages++] = atoi(p);
        const char *c = strchr(p, ',');
        if (!c) break;
        p = c + 1;
    }
    remove_caches(dir);
    printf("%-8s %-9s %8s %10s %12s %9s %14s\n", "stage", "layers", "tensors", "MB", "no cache s",
           "GB/s", "from cache ms");
    int at = 0;
    double total_cold = 0, total_warm = 0;
    size_t total_bytes = 0;
    for (int i = 0; i < n_stages; i++) {
        struct lp_tensor_hash_stats cold, warm;
        double tc = hash_range(dir, at, at + layers[i], &cold);
        double tw = hash_range(dir, at, at + layers[i], &warm);
        char range[32];
        snprintf(range, sizeof range, "%d-%d", at, at + layers[i] - 1);
        printf("%-8d %-9s %8d %10.1f %12.3f %9.2f %14.2f%s\n", i, range, cold.n_hashed,
               (double)cold.bytes_hashed / 1e6, tc, (double)cold.bytes_hashed / 1e9 / tc,
               tw * 1e3, warm.n_hashed ? " (cache missed!)" : "");
        total_cold += tc;
        total_warm += tw;
        total_bytes += cold.bytes_hashed;
        at += layers[i];
    }
    printf("all      %-9s %8s %10.1f %12.3f %9.2f %14.2f\n", "", "", (double)total_bytes / 1e6,
           total_cold, (double)total_bytes / 1e9 / total_cold, total_warm * 1e3);
    return 0;
}
