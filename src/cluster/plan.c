// SPDX-License-Identifier: MIT
// plan.c -- how a model's layers are split over the stages: fixed counts
// ("10,9,9": the coordinator first, then each worker in order; a leading 0
// keeps no layers on the coordinator), or proportional to each stage's
// measured speed within what its memory holds.
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layerpipe/cluster.h"

enum lp_status lp_plan_parse(struct lp_plan *plan, const char *text, int n_workers, int n_layers,
                             struct lp_error *err) {
    memset(plan, 0, sizeof *plan);
    if (n_workers < 0 || n_workers + 1 > LP_MAX_STAGES)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "plan: %d workers, at most %d", n_workers,
                            LP_MAX_STAGES - 1);
    const char *p = text;
    int n = 0, sum = 0;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > 100000 || (*end && *end != ',')) {
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "plan '%s': expected comma-separated layer counts like 10,9,9",
                                text);
        }
        if (n == LP_MAX_STAGES)
            return lp_error_set(err, LP_ERR_INVALID_ARG, "plan '%s': more than %d stages", text,
                                LP_MAX_STAGES);
        plan->layers[n++] = (int)v;
        sum += (int)v;
        p = *end ? end + 1 : end;
    }
    if (n != n_workers + 1)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "plan '%s' has %d stages, but there are %d (the coordinator and %d "
                            "worker%s)",
                            text, n, n_workers + 1, n_workers, n_workers == 1 ? "" : "s");
    if (sum != n_layers)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "plan '%s' adds up to %d layers, the model has %d", text, sum,
                            n_layers);
    for (int i = 1; i < n; i++)
        if (plan->layers[i] == 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "plan '%s': worker %d gets no layers (only the coordinator may "
                                "have 0)",
                                text, i);
    plan->n_stages = n;
    return LP_OK;
}

enum lp_status lp_plan_auto(struct lp_plan *plan, int n_stages, int n_layers, const double *weight,
                            const int *cap_layers, struct lp_error *err) {
    memset(plan, 0, sizeof *plan);
    if (n_stages < 1 || n_stages > LP_MAX_STAGES || n_layers < n_stages - 1)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "plan auto: %d stages for %d layers",
                            n_stages, n_layers);
    double total = 0;
    for (int i = 0; i < n_stages; i++) total += weight[i] > 0 ? weight[i] : 0;
    if (total <= 0) total = n_stages;
    // largest-remainder apportionment, every worker at least one layer
    int assigned = 0;
    double rem[LP_MAX_STAGES];
    for (int i = 0; i < n_stages; i++) {
        double w = total == n_stages && weight[i] <= 0 ? 1.0 : (weight[i] > 0 ? weight[i] : 0);
        double share = (double)n_layers * w / total;
        plan->layers[i] = (int)floor(share);
        rem[i] = share - plan->layers[i];
        if (i > 0 && plan->layers[i] < 1) {
            plan->layers[i] = 1;
            rem[i] = 0;
        }
        if (cap_layers && cap_layers[i] >= 0 && plan->layers[i] > cap_layers[i])
            plan->layers[i] = cap_layers[i];
        assigned += plan->layers[i];
    }
    while (assigned != n_layers) {
        int best = -1;
        for (int i = 0; i < n_stages; i++) {
            bool room = !cap_layers || cap_layers[i] < 0 || plan->layers[i] < cap_layers[i];
            if (assigned < n_layers ? room : plan->layers[i] > (i > 0 ? 1 : 0))
                if (best < 0 || (assigned < n_layers ? rem[i] > rem[best] : rem[i] < rem[best]))
                    best = i;
        }
        if (best < 0)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "plan auto: the stages' memory holds fewer than the model's %d "
                                "layers",
                                n_layers);
        plan->layers[best] += assigned < n_layers ? 1 : -1;
        assigned += assigned < n_layers ? 1 : -1;
        rem[best] = assigned < n_layers ? -1.0 : 2.0;
    }
    for (int i = 1; i < n_stages; i++)
        if (plan->layers[i] < 1)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "plan auto: worker %d's memory holds no layer", i);
    plan->n_stages = n_stages;
    return LP_OK;
}
