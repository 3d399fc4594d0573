// SPDX-License-Identifier: MIT
// backend.c -- the front door of every backend: the handle and its accessors.
#include <stdlib.h>

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
