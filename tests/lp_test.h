// SPDX-License-Identifier: MIT
// lp_test.h -- the tiny test harness: CHECK, CHECK_OK, CHECK_NEAR, and a
// summary line. Each tests/<module>/test_<thing>.c is its own executable
// whose exit status is non-zero when any check failed.
#ifndef LP_TEST_H
#define LP_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "layerpipe/status.h"

static int lp_test_failures;
static int lp_test_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        lp_test_checks++;                                                                          \
        if (!(cond)) {                                                                             \
            lp_test_failures++;                                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        lp_test_checks++;                                                                          \
        if (!(cond)) {                                                                             \
            lp_test_failures++;                                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

// Checks that an lp_status expression is LP_OK; prints err.msg otherwise.
#define CHECK_OK(expr, errp)                                                                       \
    do {                                                                                           \
        lp_test_checks++;                                                                          \
        enum lp_status lp_test_st_ = (expr);                                                       \
        const struct lp_error *lp_test_err_ = (errp);                                              \
        if (lp_test_st_ != LP_OK) {                                                                \
            lp_test_failures++;                                                                    \
            fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #expr,                    \
                    lp_status_str(lp_test_st_), lp_test_err_ ? lp_test_err_->msg : "");            \
        }                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        lp_test_checks++;                                                                          \
        double lp_test_a_ = (double)(a), lp_test_b_ = (double)(b);                                 \
        if (!(fabs(lp_test_a_ - lp_test_b_) <= (tol))) {                                           \
            lp_test_failures++;                                                                    \
            fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s=%g %s=%g tol=%g\n", __FILE__, __LINE__, \
                    #a, lp_test_a_, #b, lp_test_b_, (double)(tol));                                \
        }                                                                                          \
    } while (0)

// Relative L2 error ||a - b|| / ||b|| of n floats (0 when both are zero,
// infinity when only a is off zero or a NaN appears on one side only).
static inline double lp_rel_l2(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(b[i])) return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
    return sqrt(num / den);
}

// Prints the closing line and returns the process exit status.
static inline int lp_test_finish(const char *name) {
    printf("%s: %d passed, %d failed\n", name, lp_test_checks - lp_test_failures,
           lp_test_failures);
    return lp_test_failures ? 1 : 0;
}

#endif
