// SPDX-License-Identifier: MIT
// status.c -- lp_status strings and the lp_error helpers.
#include "layerpipe/status.h"

#include <stdio.h>
#include <string.h>

const char *lp_status_str(enum lp_status status) {
    switch (status) {
#define LP_STATUS_CASE(name, text)                                                                 \
    case name:                                                                                     \
        return text;
        LP_STATUS_LIST(LP_STATUS_CASE)
#undef LP_STATUS_CASE
    }
    return "unknown status";
}

enum lp_status lp_error_set(struct lp_error *err, enum lp_status status, const char *fmt, ...) {
    if (!err) return status;
    err->status = status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
    return status;
}

enum lp_status lp_error_prefix(struct lp_error *err, const char *fmt, ...) {
    if (!err) return LP_ERR_INTERNAL;
    char prefix[LP_ERROR_MSG_BYTES];
    char old[LP_ERROR_MSG_BYTES];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    size_t n_prefix = strlen(prefix), n_old = strnlen(old, sizeof old - 1);
    if (n_prefix + n_old > sizeof err->msg - 1) n_old = sizeof err->msg - 1 - n_prefix;
    memcpy(err->msg, prefix, n_prefix);
    memcpy(err->msg + n_prefix, old, n_old);
    err->msg[n_prefix + n_old] = '\0';
    return err->status;
}

void lp_error_clear(struct lp_error *err) {
    if (!err) return;
    err->status = LP_OK;
    err->msg[0] = '\0';
}
