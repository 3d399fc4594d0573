// SPDX-License-Identifier: MIT
// test_plan.c -- how a model's layers are split over stages: lp_plan_parse
// ("10,9,9": coordinator first, a leading 0 allowed, workers >= 1, counts
// adding up to the model's layers, one count per stage) and lp_plan_auto
// (largest-remainder split proportional to the weights, within the caps,
// every worker at least one layer, an error when the caps cannot hold the
// model).
#include <string.h>

#include "layerpipe/cluster.h"
#include "lp_test.h"

static int plan_sum(const struct lp_plan *p) {
    int s = 0;
    for (int i = 0; i < p->n_stages; i++) s += p->layers[i];
    return s;
}

static void check_parse_ok(const char *text, int n_workers, int n_layers, const int *want) {
    struct lp_plan p;
    struct lp_error err = {0};
    CHECK_OK(lp_plan_parse(&p, text, n_workers, n_layers, &err), &err);
    CHECK_MSG(p.n_stages == n_workers + 1, "'%s': %d stages", text, p.n_stages);
    for (int i = 0; i <= n_workers && i < p.n_stages; i++)
        CHECK_MSG(p.layers[i] == want[i], "'%s' stage %d: %d layers, want %d", text, i,
                  p.layers[i], want[i]);
}

// Expects LP_ERR_INVALID_ARG and a message containing every non-NULL needle.
static void check_parse_bad(const char *text, int n_workers, int n_layers, const char *needle1,
                            const char *needle2) {
    struct lp_plan p;
    struct lp_error err = {0};
    enum lp_status st = lp_plan_parse(&p, text, n_workers, n_layers, &err);
    CHECK_MSG(st == LP_ERR_INVALID_ARG, "'%s' (%d workers, %d layers) -> %s", text, n_workers,
              n_layers, lp_status_str(st));
    CHECK_MSG(err.msg[0] != '\0', "'%s': no message", text);
    if (needle1)
        CHECK_MSG(strstr(err.msg, needle1), "'%s': message '%s' lacks '%s'", text, err.msg,
                  needle1);
    if (needle2)
        CHECK_MSG(strstr(err.msg, needle2), "'%s': message '%s' lacks '%s'", text, err.msg,
                  needle2);
}

static void test_parse(void) {
    check_parse_ok("28", 0, 28, (int[]){28});
    check_parse_ok("10,9,9", 2, 28, (int[]){10, 9, 9});
    check_parse_ok("0,14,14", 2, 28, (int[]){0, 14, 14});
    check_parse_ok("14,14", 1, 28, (int[]){14, 14});
    check_parse_ok("7,7,7,7", 3, 28, (int[]){7, 7, 7, 7});
    check_parse_ok("0,28", 1, 28, (int[]){0, 28});
    check_parse_ok("1,1,26", 2, 28, (int[]){1, 1, 26});
    // 64 stages: the most there may be
    {
        char text[512];
        size_t off = 0;
        int want[LP_MAX_STAGES];
        for (int i = 0; i < LP_MAX_STAGES; i++) {
            off += (size_t)snprintf(text + off, sizeof text - off, i ? ",%d" : "%d", 1);
            want[i] = 1;
        }
        check_parse_ok(text, LP_MAX_STAGES - 1, LP_MAX_STAGES, want);
    }

    // does not add up: both numbers named
    check_parse_bad("10,9,8", 2, 28, "27", "28");
    check_parse_bad("10,9,10", 2, 28, "29", "28");
    check_parse_bad("27", 0, 28, "27", "28");
    // wrong number of stages
    check_parse_bad("14,14", 2, 28, "stages", NULL);
    check_parse_bad("10,9,9", 1, 28, "stages", NULL);
    check_parse_bad("7,7,7,7", 2, 28, "stages", NULL);
    // a worker with no layers
    check_parse_bad("14,0,14", 2, 28, "no layers", NULL);
    check_parse_bad("28,0", 1, 28, "no layers", NULL);
    // malformed text
    check_parse_bad("", 0, 28, NULL, NULL);
    check_parse_bad("10,,18", 2, 28, NULL, NULL);
    check_parse_bad("10,9,9,", 2, 28, NULL, NULL);
    check_parse_bad(",10,9,9", 2, 28, NULL, NULL);
    check_parse_bad("10;9;9", 2, 28, NULL, NULL);
    check_parse_bad("10,9,x", 2, 28, NULL, NULL);
    check_parse_bad("10,9,9x", 2, 28, NULL, NULL);
    check_parse_bad("-1,15,14", 2, 28, NULL, NULL);
    check_parse_bad("auto", 2, 28, NULL, NULL);
    check_parse_bad("99999999999999999999,1", 1, 28, NULL, NULL);
    // too many stages / workers
    {
        char text[512];
        size_t off = 0;
        for (int i = 0; i < LP_MAX_STAGES + 1; i++)
            off += (size_t)snprintf(text + off, sizeof text - off, i ? ",%d" : "%d", 1);
        check_parse_bad(text, LP_MAX_STAGES, LP_MAX_STAGES + 1, NULL, NULL);
        check_parse_bad(text, LP_MAX_STAGES - 1, LP_MAX_STAGES + 1, NULL, NULL);
    }
    check_parse_bad("1", -1, 1, NULL, NULL);
}

static void check_auto(int n_stages, int n_layers, const double *w, const int *cap,
                       const int *want /* NULL: only the invariants */, int tol) {
    struct lp_plan p;
    struct lp_error err = {0};
    CHECK_OK(lp_plan_auto(&p, n_stages, n_layers, w, cap, &err), &err);
    CHECK_MSG(p.n_stages == n_stages, "auto: %d stages, want %d", p.n_stages, n_stages);
    CHECK_MSG(plan_sum(&p) == n_layers, "auto: sum %d, want %d", plan_sum(&p), n_layers);
    for (int i = 0; i < p.n_stages; i++) {
        CHECK_MSG(p.layers[i] >= (i > 0 ? 1 : 0), "auto: stage %d gets %d layers", i,
                  p.layers[i]);
        if (cap && cap[i] >= 0)
            CHECK_MSG(p.layers[i] <= cap[i], "auto: stage %d gets %d layers over its cap %d", i,
                      p.layers[i], cap[i]);
        if (want)
            CHECK_MSG(p.layers[i] >= want[i] - tol && p.layers[i] <= want[i] + tol,
                      "auto: stage %d gets %d layers, want %d +- %d", i, p.layers[i], want[i],
                      tol);
    }
}

static void check_auto_bad(int n_stages, int n_layers, const double *w, const int *cap) {
    struct lp_plan p;
    struct lp_error err = {0};
    enum lp_status st = lp_plan_auto(&p, n_stages, n_layers, w, cap, &err);
    CHECK_MSG(st == LP_ERR_INVALID_ARG, "auto (%d stages, %d layers) -> %s, want an error",
              n_stages, n_layers, lp_status_str(st));
    CHECK_MSG(err.msg[0] != '\0', "auto: no message");
}

static void test_auto(void) {
    // equal weights: 10,9,9 in some order
    {
        struct lp_plan p;
        struct lp_error err = {0};
        CHECK_OK(lp_plan_auto(&p, 3, 28, (double[]){1, 1, 1}, NULL, &err), &err);
        int sorted[3] = {p.layers[0], p.layers[1], p.layers[2]};
        int tens = 0, nines = 0;
        for (int i = 0; i < 3; i++) tens += sorted[i] == 10, nines += sorted[i] == 9;
        CHECK_MSG(p.n_stages == 3 && tens == 1 && nines == 2, "1,1,1 over 28: %d,%d,%d",
                  p.layers[0], p.layers[1], p.layers[2]);
    }
    check_auto(3, 28, (double[]){1, 1, 1}, NULL, (int[]){10, 9, 9}, 1);
    check_auto(3, 28, (double[]){2, 1, 1}, NULL, (int[]){14, 7, 7}, 0);
    check_auto(4, 28, (double[]){1, 1, 1, 1}, NULL, (int[]){7, 7, 7, 7}, 0);
    check_auto(2, 28, (double[]){3, 1}, NULL, (int[]){21, 7}, 0);
    check_auto(3, 28, (double[]){1, 2, 4}, NULL, (int[]){4, 8, 16}, 0);
    check_auto(1, 28, (double[]){5}, NULL, (int[]){28}, 0);
    check_auto(1, 28, (double[]){0}, NULL, (int[]){28}, 0);
    // unscaled weights (GB/s) behave like their ratios
    check_auto(3, 28, (double[]){20.0, 10.0, 10.0}, NULL, (int[]){14, 7, 7}, 0);
    check_auto(3, 28, (double[]){0.002, 0.001, 0.001}, NULL, (int[]){14, 7, 7}, 0);
    // no weights known (all 0 or negative): an even split
    check_auto(3, 28, (double[]){0, 0, 0}, NULL, (int[]){10, 9, 9}, 1);
    check_auto(3, 28, (double[]){-1, -1, -1}, NULL, (int[]){10, 9, 9}, 1);
    // a worker with weight 0 still gets a layer; the coordinator may get none
    check_auto(3, 28, (double[]){1, 0, 1}, NULL, NULL, 0);
    check_auto(3, 28, (double[]){0, 1, 1}, NULL, (int[]){0, 14, 14}, 0);
    check_auto(3, 28, (double[]){1000, 1, 1}, NULL, (int[]){26, 1, 1}, 0);
    // as many workers as layers: one each
    check_auto(5, 4, (double[]){1, 1, 1, 1, 1}, NULL, (int[]){0, 1, 1, 1, 1}, 0);
    check_auto(29, 28, (double[29]){0}, NULL, NULL, 0);

    // caps: respected, the rest goes to those with room
    check_auto(3, 28, (double[]){1, 1, 1}, (int[]){4, -1, -1}, (int[]){4, 12, 12}, 0);
    check_auto(3, 28, (double[]){2, 1, 1}, (int[]){-1, 5, -1}, (int[]){15, 5, 8}, 1);
    check_auto(3, 28, (double[]){1, 1, 1}, (int[]){0, 14, 14}, (int[]){0, 14, 14}, 0);
    check_auto(3, 28, (double[]){1, 1, 1}, (int[]){10, 9, 9}, (int[]){10, 9, 9}, 0);
    check_auto(3, 28, (double[]){1, 1, 1}, (int[]){100, 100, 100}, (int[]){10, 9, 9}, 1);
    check_auto(3, 28, (double[]){100, 1, 1}, (int[]){2, -1, -1}, (int[]){2, 13, 13}, 0);
    check_auto(4, 28, (double[]){1, 1, 1, 1}, (int[]){0, 1, 1, -1}, (int[]){0, 1, 1, 26}, 0);
    // impossible caps
    check_auto_bad(3, 28, (double[]){1, 1, 1}, (int[]){9, 9, 9});
    check_auto_bad(3, 28, (double[]){1, 1, 1}, (int[]){0, 0, 0});
    check_auto_bad(3, 28, (double[]){1, 1, 1}, (int[]){28, 0, 28}); // a worker that holds nothing
    check_auto_bad(2, 28, (double[]){1, 1}, (int[]){-1, 0});
    // more workers than layers, no stages
    check_auto_bad(30, 28, (double[30]){0}, NULL);
    check_auto_bad(0, 28, (double[1]){0}, NULL);
    check_auto_bad(LP_MAX_STAGES + 1, 1000, (double[LP_MAX_STAGES + 1]){0}, NULL);
}

int main(void) {
    test_parse();
    test_auto();
    return lp_test_finish("cluster/test_plan");
}
