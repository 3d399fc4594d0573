// SPDX-License-Identifier: MIT
// status.h -- the one error type of layerpipe.
// Every fallible function returns an enum lp_status and takes a last
// parameter `struct lp_error *err` (may be NULL) that receives a message
// naming what failed, where, the value seen and what was expected.
// New codes are added only at the end of LP_STATUS_LIST; never renumber.
#ifndef LAYERPIPE_STATUS_H
#define LAYERPIPE_STATUS_H

#include <stdarg.h>

#if defined(__GNUC__)
#define LP_API __attribute__((visibility("default")))
#define LP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define LP_API
#define LP_PRINTF(a, b)
#endif

#define LP_STATUS_LIST(X)                                                                          \
    X(LP_OK, "ok")                                                                                 \
    X(LP_ERR_NOMEM, "out of memory")                                                               \
    X(LP_ERR_IO, "i/o error")                                                                      \
    X(LP_ERR_FORMAT, "malformed data")                                                             \
    X(LP_ERR_INVALID_ARG, "invalid argument")                                                      \
    X(LP_ERR_UNSUPPORTED, "unsupported")                                                           \
    X(LP_ERR_DEVICE, "device error")                                                               \
    X(LP_ERR_NETWORK, "network error")                                                             \
    X(LP_ERR_TIMEOUT, "timeout")                                                                   \
    X(LP_ERR_CANCELLED, "cancelled")                                                               \
    X(LP_ERR_BUSY, "busy")                                                                         \
    X(LP_ERR_PROTOCOL, "protocol error")                                                           \
    X(LP_ERR_INTERNAL, "internal error")

enum lp_status {
#define LP_STATUS_ENUM(name, text) name,
    LP_STATUS_LIST(LP_STATUS_ENUM)
#undef LP_STATUS_ENUM
};

#define LP_ERROR_MSG_BYTES 256

// An error value: the status and a human-readable message.
struct lp_error {
    enum lp_status status;
    char msg[LP_ERROR_MSG_BYTES];
};

// Short fixed description of a status code ("malformed data"); never NULL.
LP_API const char *lp_status_str(enum lp_status status);

// Records status and a printf-style message in err (if err is not NULL) and
// returns status, so callers write `return lp_error_set(err, LP_ERR_IO, ...)`.
LP_API enum lp_status lp_error_set(struct lp_error *err, enum lp_status status, const char *fmt,
                                   ...) LP_PRINTF(3, 4);

// Prefixes an existing message with more context ("config.json: " + msg).
// Returns err->status (or LP_ERR_INTERNAL if err is NULL).
LP_API enum lp_status lp_error_prefix(struct lp_error *err, const char *fmt, ...) LP_PRINTF(2, 3);

// Resets err to LP_OK with an empty message. Accepts NULL.
LP_API void lp_error_clear(struct lp_error *err);

#endif
