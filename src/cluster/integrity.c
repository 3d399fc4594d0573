// SPDX-License-Identifier: MIT
// integrity.c -- the coordinator's check that a stage serves the weights
// of the coordinator's own copy: the stage's ConfigureReply lists the
// XXH3-64 of every tensor it loaded for its layers; the coordinator hashes
// the same layers of its copy (model/tensor_hash.c, through the same cache
// files) and refuses the stage on a missing, extra or different tensor,
// naming it. The fingerprint (Hello) samples a few bytes of each tensor;
// this covers every byte.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/internal.h"
#include "layerpipe/model.h"

#define MAX_REPORTED (1 << 16) // tensors a stage may report (a 1.7B model has ~25 a layer)

static int reported_cmp(const void *a, const void *b) {
    const Layerpipe__V1__TensorHash *x = *(const Layerpipe__V1__TensorHash *const *)a,
                                    *y = *(const Layerpipe__V1__TensorHash *const *)b;
    return strcmp(x->name, y->name);
}

static int key_cmp(const void *key, const void *elem) {
    return strcmp((const char *)key, (*(const Layerpipe__V1__TensorHash *const *)elem)->name);
}

// Compares the stage's list with ours (ours[n_ours] sorted by name).
static enum lp_status compare(const struct lp_tensor_hash *ours, int n_ours,
                              const Layerpipe__V1__ConfigureReply *r, int stage, const char *addr,
                              int begin, int end, const char *model_dir, struct lp_error *err) {
    size_t n = r->n_tensor_hashes;
    Layerpipe__V1__TensorHash **sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) return lp_error_set(err, LP_ERR_NOMEM, "out of memory");
    memcpy(sorted, r->tensor_hashes, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, reported_cmp);
    enum lp_status st = LP_OK;
    for (size_t i = 1; i < n && st == LP_OK; i++)
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0)
            st = lp_error_set(err, LP_ERR_PROTOCOL, "worker %d (%s) reports tensor '%.80s' twice",
                              stage, addr, sorted[i]->name);
    for (int i = 0; i < n_ours && st == LP_OK; i++) {
        Layerpipe__V1__TensorHash **t = bsearch(ours[i].name, sorted, n, sizeof *sorted, key_cmp);
        if (!t)
            st = lp_error_set(err, LP_ERR_INVALID_ARG,
                              "worker %d (%s) serves layers [%d, %d) without tensor '%s' of this "
                              "coordinator's %s: a different model",
                              stage, addr, begin, end, ours[i].name, model_dir);
        else if ((*t)->xxh3 != ours[i].hash)
            st = lp_error_set(err, LP_ERR_INVALID_ARG,
                              "worker %d (%s): tensor '%s' differs from this coordinator's copy "
                              "(xxh3 %016llx there, %016llx in %s): its model file was changed "
                              "or damaged",
                              stage, addr, ours[i].name, (unsigned long long)(*t)->xxh3,
                              (unsigned long long)ours[i].hash, model_dir);
    }
    if (st == LP_OK && n != (size_t)n_ours) { // every one of ours is there: name an extra one
        const char *extra = "?";
        for (size_t i = 0; i < n && extra[0] == '?'; i++) {
            bool found = false;
            for (int k = 0; k < n_ours && !found; k++)
                found = strcmp(sorted[i]->name, ours[k].name) == 0;
            if (!found) extra = sorted[i]->name;
        }
        st = lp_error_set(err, LP_ERR_INVALID_ARG,
                          "worker %d (%s) loaded %zu tensors for layers [%d, %d), this "
                          "coordinator's %s has %d (the worker's '%.80s' is not in it): a "
                          "different model",
                          stage, addr, n, begin, end, model_dir, n_ours, extra);
    }
    free(sorted);
    return st;
}

enum lp_status lp_integrity_check_stage(const char *model_dir, int layer_begin, int layer_end,
                                        const Layerpipe__V1__ConfigureReply *r, int stage,
                                        const char *addr, struct lp_error *err) {
    if (r->n_tensor_hashes == 0 && layer_end > layer_begin)
        return lp_error_set(err, LP_ERR_PROTOCOL,
                            "worker %d (%s) reports no tensor hashes for its layers (a worker "
                            "older than this coordinator?)",
                            stage, addr);
    if (r->n_tensor_hashes > MAX_REPORTED)
        return lp_error_set(err, LP_ERR_PROTOCOL, "worker %d (%s) reports %zu tensor hashes, at "
                                                  "most %d",
                            stage, addr, r->n_tensor_hashes, MAX_REPORTED);
    struct lp_model *m = NULL;
    struct lp_model_load_params lp = {layer_begin, layer_end, false, false};
    enum lp_status st = lp_model_open(&m, model_dir, &lp, err);
    if (st != LP_OK) return lp_error_prefix(err, "checking worker %d's tensors: ", stage);
    struct lp_tensor_hash *ours = NULL;
    int n_ours = 0;
    st = lp_model_tensor_hashes(m, layer_begin, layer_end, &ours, &n_ours, NULL, err);
    if (st == LP_OK)
        st = compare(ours, n_ours, r, stage, addr, layer_begin, layer_end, model_dir, err);
    free(ours);
    lp_model_close(m);
    return st;
}
