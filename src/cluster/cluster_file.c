// SPDX-License-Identifier: MIT
// cluster_file.c -- the stages of a pipeline as the user describes them:
// a --workers list or a cluster file (JSON, read with jansson). Every
// address is checked here, so gRPC never sees "x:99999" (it would wrap the
// port, read "x" as 0 and default a missing port to 443).
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "layerpipe/cluster.h"

#define MAX_WORKERS (LP_MAX_STAGES - 1)

// "HOST:PORT" with a non-empty host and a decimal port 1..65535.
static bool valid_address(const char *a, size_t len) {
    size_t colon = len;
    while (colon > 0 && a[colon - 1] != ':') colon--;
    if (colon < 2 || colon == len || len - colon > 5) return false;
    long port = 0;
    for (size_t i = colon; i < len; i++) {
        if (a[i] < '0' || a[i] > '9') return false;
        port = port * 10 + (a[i] - '0');
    }
    return port >= 1 && port <= 65535;
}

static enum lp_status add_worker(struct lp_cluster_spec *spec, const char *a, size_t len,
                                 struct lp_error *err) {
    if (spec->n_workers == MAX_WORKERS)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "more than %d workers", MAX_WORKERS);
    if (len == 0 || len >= sizeof spec->workers[0] || !valid_address(a, len))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "address '%.*s' is not HOST:PORT (port 1..65535)",
                            (int)(len > 120 ? 120 : len), a);
    memcpy(spec->workers[spec->n_workers], a, len);
    spec->workers[spec->n_workers++][len] = '\0';
    return LP_OK;
}

enum lp_status lp_cluster_spec_add_standby(struct lp_cluster_spec *spec, const char *addr,
                                           struct lp_error *err) {
    size_t len = strlen(addr);
    if (spec->n_standby == MAX_WORKERS)
        return lp_error_set(err, LP_ERR_INVALID_ARG, "more than %d standby workers", MAX_WORKERS);
    if (len == 0 || len >= sizeof spec->standby[0] || !valid_address(addr, len))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "standby '%.120s' is not HOST:PORT (port 1..65535)", addr);
    memcpy(spec->standby[spec->n_standby++], addr, len + 1);
    return LP_OK;
}

enum lp_status lp_cluster_spec_parse_workers(struct lp_cluster_spec *spec, const char *text,
                                             struct lp_error *err) {
    size_t n_text = strlen(text);
    if (n_text == 0 || text[n_text - 1] == ',')
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "--workers '%.100s': expected HOST:PORT,HOST:PORT,... (at most %d)",
                            text, MAX_WORKERS);
    for (const char *p = text; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        enum lp_status st = add_worker(spec, p, len, err);
        if (st != LP_OK) return lp_error_prefix(err, "--workers: ");
        p += len + (comma ? 1 : 0);
    }
    return LP_OK;
}

// One entry of "stages": the coordinator (i == 0) or a worker.
static enum lp_status read_stage(struct lp_cluster_spec *spec, json_t *st, size_t i,
                                 size_t *plan_off, bool *has_layers, struct lp_error *err) {
    const char *addr = json_string_value(json_object_get(st, "address"));
    json_t *layers = json_object_get(st, "layers");
    if (!json_is_object(st) || (i > 0 && !addr) ||
        (layers && (!json_is_integer(layers) || json_integer_value(layers) < 0)))
        return lp_error_set(err, LP_ERR_INVALID_ARG,
                            "stage %zu needs %s and an optional non-negative integer 'layers'", i,
                            i == 0 ? "no address (it is this coordinator)"
                                   : "an 'address' (\"host:port\")");
    if (i == 0) {
        const char *sink = json_string_value(json_object_get(st, "sink"));
        if (sink) snprintf(spec->sink, sizeof spec->sink, "%s", sink);
    } else if (add_worker(spec, addr, strlen(addr), err) != LP_OK) {
        return lp_error_prefix(err, "stage %zu: ", i);
    }
    *has_layers = layers != NULL;
    if (layers) {
        size_t cap = sizeof spec->plan;
        *plan_off += (size_t)snprintf(spec->plan + *plan_off, cap - *plan_off, "%s%lld",
                                      i ? "," : "", (long long)json_integer_value(layers));
        if (*plan_off >= cap) *plan_off = cap - 1;
    }
    return LP_OK;
}

// One path of the "security" object into dst: relative to the cluster
// file's folder (so the file and its certificates travel together).
static enum lp_status read_security_path(const char *path, json_t *sec, const char *key,
                                         char *dst, size_t cap, struct lp_error *err) {
    json_t *v = json_object_get(sec, key);
    if (!v) return LP_OK;
    const char *t = json_string_value(v);
    if (!t || !t[0])
        return lp_error_set(err, LP_ERR_FORMAT, "security.%s must be a non-empty path", key);
    const char *slash = strrchr(path, '/');
    int dir = t[0] == '/' || !slash ? 0 : (int)(slash - path + 1);
    if ((size_t)snprintf(dst, cap, "%.*s%s", dir, path, t) >= cap)
        return lp_error_set(err, LP_ERR_FORMAT, "security.%s: path longer than %zu bytes", key,
                            cap - 1);
    return LP_OK;
}

static enum lp_status read_security(struct lp_cluster_spec *spec, const char *path, json_t *sec,
                                    struct lp_error *err) {
    if (!sec) return LP_OK;
    if (!json_is_object(sec))
        return lp_error_set(err, LP_ERR_FORMAT, "'security' must be an object");
    const char *k;
    json_t *v;
    json_object_foreach(sec, k, v) {
        if (strcmp(k, "tls_cert") && strcmp(k, "tls_key") && strcmp(k, "tls_ca") &&
            strcmp(k, "cluster_token_file") && strcmp(k, "health_open"))
            return lp_error_set(err, LP_ERR_FORMAT,
                                "security.%s: unknown key (tls_cert, tls_key, tls_ca, "
                                "cluster_token_file, health_open)",
                                k);
    }
    enum lp_status st;
    if ((st = read_security_path(path, sec, "tls_cert", spec->tls_cert, sizeof spec->tls_cert,
                                 err)) != LP_OK ||
        (st = read_security_path(path, sec, "tls_key", spec->tls_key, sizeof spec->tls_key,
                                 err)) != LP_OK ||
        (st = read_security_path(path, sec, "tls_ca", spec->tls_ca, sizeof spec->tls_ca, err)) !=
            LP_OK ||
        (st = read_security_path(path, sec, "cluster_token_file", spec->token_file,
                                 sizeof spec->token_file, err)) != LP_OK)
        return st;
    json_t *open = json_object_get(sec, "health_open");
    if (open && !json_is_boolean(open))
        return lp_error_set(err, LP_ERR_FORMAT, "security.health_open must be true or false");
    spec->health_open = open && json_is_true(open);
    return LP_OK;
}

enum lp_status lp_cluster_spec_read_file(struct lp_cluster_spec *spec, const char *path,
                                         struct lp_error *err) {
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return lp_error_set(err, LP_ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    enum lp_status st = LP_OK;
    json_t *stages = json_object_get(root, "stages");
    size_t n = json_array_size(stages);
    if (!json_is_array(stages) || n < 1 || n > MAX_WORKERS + 1) {
        st = lp_error_set(err, LP_ERR_FORMAT,
                          "%s: 'stages' must be an array of 1..%d stages, the coordinator first",
                          path, MAX_WORKERS + 1);
        goto done;
    }
    size_t with_layers = 0, off = 0;
    spec->plan[0] = '\0';
    for (size_t i = 0; i < n && st == LP_OK; i++) {
        bool has = false;
        st = read_stage(spec, json_array_get(stages, i), i, &off, &has, err);
        with_layers += has;
    }
    if (st != LP_OK) {
        lp_error_prefix(err, "%s: ", path);
        goto done;
    }
    if (with_layers != 0 && with_layers != n) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: give 'layers' for every stage or for none",
                          path);
        goto done;
    }
    if (!with_layers) {
        const char *plan = json_string_value(json_object_get(root, "plan"));
        if (plan) snprintf(spec->plan, sizeof spec->plan, "%s", plan);
    }
    json_t *standby = json_object_get(root, "standby");
    if (standby && !json_is_array(standby)) {
        st = lp_error_set(err, LP_ERR_FORMAT, "%s: 'standby' must be an array of \"host:port\"",
                          path);
        goto done;
    }
    for (size_t i = 0; i < json_array_size(standby) && st == LP_OK; i++) {
        const char *a = json_string_value(json_array_get(standby, i));
        st = a ? lp_cluster_spec_add_standby(spec, a, err)
               : lp_error_set(err, LP_ERR_FORMAT, "standby %zu is not a string", i);
    }
    if (st == LP_OK) st = read_security(spec, path, json_object_get(root, "security"), err);
    if (st != LP_OK) lp_error_prefix(err, "%s: ", path);
done:
    json_decref(root);
    return st;
}
