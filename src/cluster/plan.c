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
        if (*end == ',' && end[1] == '\0')
            return lp_error_set(err, LP_ERR_INVALID_ARG, "plan '%s': ends with a comma", text);
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
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "plan auto: %d stages for %d layers (every worker needs a layer)",
                            n_stages, n_layers);
    double w[LP_MAX_STAGES], share[LP_MAX_STAGES];
    bool fixed[LP_MAX_STAGES] = {false};
    bool any = false;
    int capacity = 0;
    for (int i = 0; i < n_stages; i++) {
        // a weight from the network may be anything: finite, positive, bounded
        w[i] = isfinite(weight[i]) && weight[i] > 0 ? fmin(weight[i], 1e6) : 0;
        any |= w[i] > 0;
        int cap = cap_layers && cap_layers[i] >= 0 ? cap_layers[i] : n_layers;
        if (i > 0 && cap < 1)
            return lp_error_set(err, LP_ERR_INVALID_ARG,
                                "plan auto: worker %d's memory holds no layer", i);
        capacity += cap < n_layers ? cap : n_layers;
    }
    if (capacity < n_layers)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "plan auto: the stages' memory holds %d of the model's %d layers",
                            capacity, n_layers);
    if (!any)
        for (int i = 0; i < n_stages; i++) w[i] = 1.0; // nothing measured: even split
    // Water-filling: shares proportional to the weights; a stage whose share
    // passes its cap is fixed at the cap, a worker whose share is below one
    // layer is fixed at one; repeat with the rest.
    for (;;) {
        double rest = n_layers, wsum = 0;
        int n_free = 0;
        for (int i = 0; i < n_stages; i++) {
            if (fixed[i]) rest -= plan->layers[i];
            else wsum += w[i], n_free++;
        }
        if (n_free == 0) break;
        bool changed = false;
        for (int i = 0; i < n_stages && !changed; i++) {
            if (fixed[i]) continue;
            share[i] = wsum > 0 ? rest * w[i] / wsum : rest / n_free;
            int cap = cap_layers && cap_layers[i] >= 0 ? cap_layers[i] : n_layers;
            if (share[i] > cap) {
                plan->layers[i] = cap;
                fixed[i] = changed = true;
            } else if (i > 0 && share[i] < 1.0) {
                plan->layers[i] = 1;
                fixed[i] = changed = true;
            }
        }
        if (!changed) break;
    }
    // integer layers: floors, then the largest remainders
    int assigned = 0;
    double rem[LP_MAX_STAGES];
    for (int i = 0; i < n_stages; i++) {
        if (!fixed[i]) {
            plan->layers[i] = (int)floor(share[i]);
            rem[i] = share[i] - plan->layers[i];
        } else {
            rem[i] = -1.0;
        }
        assigned += plan->layers[i];
    }
    while (assigned < n_layers) {
        int best = -1;
        for (int i = 0; i < n_stages; i++) {
            int cap = cap_layers && cap_layers[i] >= 0 ? cap_layers[i] : n_layers;
            if (!fixed[i] && plan->layers[i] < cap && (best < 0 || rem[i] > rem[best])) best = i;
        }
        if (best < 0) break;
        plan->layers[best]++;
        rem[best] = -1.0;
        assigned++;
    }
    if (assigned != n_layers)
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "plan auto: cannot place %d layers on %d stages within their memory "
                            "(placed %d)",
                            n_layers, n_stages, assigned);
    plan->n_stages = n_stages;
    return LP_OK;
}
