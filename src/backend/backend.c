// SPDX-License-Identifier: MIT
// backend.c -- the front door of every backend: the handle and its accessors.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend_i.h"

enum lp_status lp_backend_wrap(struct lp_backend **out, const struct lp_backend_i *iface,
                               void *ctx, struct lp_error *err) {
    *out = NULL;
    struct lp_backend *b = calloc(1, sizeof *b);
    if (!b) return lp_error_set(err, LP_ERR_NOMEM, "backend: out of memory");
    b->iface = *iface;
    b->ctx = ctx;
    *out = b;
    return LP_OK;
}

void lp_backend_destroy(struct lp_backend *backend) {
    if (!backend) return;
    backend->iface.destroy(backend->ctx);
    free(backend);
}

const char *lp_backend_name(const struct lp_backend *backend) {
    return backend->iface.name(backend->ctx);
}

int lp_backend_n_threads(const struct lp_backend *backend) {
    return backend->iface.n_threads(backend->ctx);
}

enum lp_status lp_backend_device_info(struct lp_backend *backend, struct lp_device_info *out,
                                      struct lp_error *err) {
    memset(out, 0, sizeof *out);
    if (backend->iface.device_info) return backend->iface.device_info(backend->ctx, out, err);
    snprintf(out->name, sizeof out->name, "%s", lp_backend_name(backend));
    return LP_OK;
}

enum lp_status lp_backend_create(struct lp_backend **out, const char *spec, int n_threads,
                                 bool quantize_activations, struct lp_error *err) {
    *out = NULL;
    if (!spec || strcmp(spec, "cpu") == 0) {
        struct lp_backend_cpu_params p = lp_backend_cpu_params_default();
        p.n_threads = n_threads;
        p.quantize_activations = quantize_activations;
        return lp_backend_cpu_create(out, &p, err);
    }
    if (strncmp(spec, "cuda", 4) == 0 && (spec[4] == '\0' || spec[4] == ':')) {
        struct lp_backend_cuda_params p = {.device = 0};
        if (spec[4] == ':') {
            char *end = NULL;
            long d = strtol(spec + 5, &end, 10);
            if (end == spec + 5 || *end || d < 0 || d > 255)
                return lp_error_set(err, LP_ERR_INVALID_ARG,
                                    "device '%s': expected cuda:N with N a GPU number", spec);
            p.device = (int)d;
        }
        if (quantize_activations)
            return lp_error_set(err, LP_ERR_UNSUPPORTED,
                                "device '%s': int8 activations (--fast) are a CPU mode", spec);
        return lp_backend_cuda_create(out, &p, err);
    }
    return lp_error_set(err, LP_ERR_INVALID_ARG, "device '%s': expected cpu, cuda or cuda:N",
                        spec);
}

#ifndef LP_HAVE_CUDA
bool lp_backend_cuda_built(void) { return false; }

enum lp_status lp_backend_cuda_create(struct lp_backend **out,
                                      const struct lp_backend_cuda_params *params,
                                      struct lp_error *err) {
    *out = NULL;
    return lp_error_set(err, LP_ERR_UNSUPPORTED,
                        "cuda:%d: this layerpipe was built without CUDA (nvcc was not found at "
                        "build time; rebuild with -DLAYERPIPE_CUDA=ON)",
                        params->device);
}
#endif
