// SPDX-License-Identifier: MIT
// args.c -- the subcommands' option parser (see args.h).
#include "cli/args.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_help(const char *cmd, const char *summary, const struct lp_arg *args, int n) {
    printf("usage: layerpipe %s [options]\n\n%s\n\noptions:\n", cmd, summary);
    for (int i = 0; i < n; i++) {
        char left[96];
        const char *mv = args[i].type == LP_ARG_FLAG ? "" : args[i].metavar ? args[i].metavar : "V";
        if (args[i].short_name)
            snprintf(left, sizeof left, "-%c, --%s %s", args[i].short_name, args[i].name, mv);
        else
            snprintf(left, sizeof left, "    --%s %s", args[i].name, mv);
        printf("  %-30s %s%s\n", left, args[i].help, args[i].required ? " (required)" : "");
    }
    printf("  %-30s %s\n", "-h, --help", "show this help");
}

static bool set_value(const char *cmd, struct lp_arg *a, const char *v) {
    char *end = NULL;
    errno = 0;
    switch (a->type) {
    case LP_ARG_STR: *(char **)a->dst = (char *)v; return true;
    case LP_ARG_INT: {
        long x = strtol(v, &end, 10);
        if (errno || end == v || *end || x < INT32_MIN || x > INT32_MAX ||
            (a->min < a->max && (x < a->min || x > a->max))) {
            if (a->min < a->max)
                fprintf(stderr, "layerpipe %s: --%s: '%s' is not an integer in %g..%g\n", cmd,
                        a->name, v, a->min, a->max);
            else
                fprintf(stderr, "layerpipe %s: --%s: '%s' is not an integer\n", cmd, a->name, v);
            return false;
        }
        *(int *)a->dst = (int)x;
        return true;
    }
    case LP_ARG_U64: {
        if (v[0] == '-') goto bad_u64;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v || *end) goto bad_u64;
        *(uint64_t *)a->dst = (uint64_t)x;
        return true;
    bad_u64:
        fprintf(stderr, "layerpipe %s: --%s: '%s' is not a non-negative integer\n", cmd, a->name,
                v);
        return false;
    }
    case LP_ARG_FLOAT: {
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x) ||
            (a->min < a->max && (x < a->min || x > a->max))) {
            if (a->min < a->max)
                fprintf(stderr, "layerpipe %s: --%s: '%s' is not a number in %g..%g\n", cmd,
                        a->name, v, a->min, a->max);
            else
                fprintf(stderr, "layerpipe %s: --%s: '%s' is not a number\n", cmd, a->name, v);
            return false;
        }
        *(float *)a->dst = (float)x;
        return true;
    }
    case LP_ARG_FLAG: *(bool *)a->dst = true; return true;
    case LP_ARG_LIST: {
        struct lp_arg_list *l = a->dst;
        if (l->n == LP_ARG_LIST_MAX) {
            fprintf(stderr, "layerpipe %s: --%s given more than %d times\n", cmd, a->name,
                    LP_ARG_LIST_MAX);
            return false;
        }
        l->items[l->n++] = v;
        return true;
    }
    }
    return false;
}

enum lp_args_result lp_args_parse(const char *cmd, const char *summary, struct lp_arg *args, int n,
                                  int argc, char **argv, char **positional, int max_positional,
                                  int *n_positional) {
    int n_pos = 0;
    bool only_positional = false;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!only_positional && strcmp(s, "--") == 0) {
            only_positional = true;
            continue;
        }
        if (!only_positional && (strcmp(s, "-h") == 0 || strcmp(s, "--help") == 0)) {
            print_help(cmd, summary, args, n);
            return LP_ARGS_HELP;
        }
        if (only_positional || s[0] != '-' || s[1] == '\0') {
            if (n_pos >= max_positional) {
                fprintf(stderr, "layerpipe %s: unexpected argument '%s' (see --help)\n", cmd, s);
                return LP_ARGS_ERROR;
            }
            positional[n_pos++] = argv[i];
            continue;
        }
        struct lp_arg *a = NULL;
        const char *inline_value = NULL;
        if (s[1] == '-') {
            const char *name = s + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            for (int k = 0; k < n; k++)
                if (strlen(args[k].name) == len && strncmp(args[k].name, name, len) == 0)
                    a = &args[k];
            if (eq) inline_value = eq + 1;
        } else if (s[2] == '\0') {
            for (int k = 0; k < n; k++)
                if (args[k].short_name == s[1]) a = &args[k];
        }
        if (!a) {
            fprintf(stderr, "layerpipe %s: unknown option '%s' (see 'layerpipe %s --help')\n", cmd,
                    s, cmd);
            return LP_ARGS_ERROR;
        }
        const char *value = inline_value;
        if (a->type == LP_ARG_FLAG) {
            if (inline_value) {
                fprintf(stderr, "layerpipe %s: --%s takes no value\n", cmd, a->name);
                return LP_ARGS_ERROR;
            }
        } else if (!value) {
            if (i + 1 >= argc) {
                fprintf(stderr, "layerpipe %s: %s needs a value (%s)\n", cmd, s,
                        a->metavar ? a->metavar : "VALUE");
                return LP_ARGS_ERROR;
            }
            value = argv[++i];
        }
        if (!set_value(cmd, a, value)) return LP_ARGS_ERROR;
        a->seen = true;
    }
    for (int k = 0; k < n; k++) {
        if (args[k].required && !args[k].seen) {
            fprintf(stderr, "layerpipe %s: missing required option --%s %s (see --help)\n", cmd,
                    args[k].name, args[k].metavar ? args[k].metavar : "");
            return LP_ARGS_ERROR;
        }
    }
    if (n_positional) *n_positional = n_pos;
    return LP_ARGS_OK;
}

bool lp_args_parse_ids(const char *text, const char *what, int32_t **ids, int *n) {
    size_t cap = strlen(text) / 2 + 1, count = 0;
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) {
        fprintf(stderr, "layerpipe: out of memory\n");
        return false;
    }
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX ||
            (*end && *end != ' ' && *end != ',' && *end != '\t' && *end != '\n')) {
            fprintf(stderr, "layerpipe: %s: '%.20s' is not a token id (a non-negative integer)\n",
                    what, p);
            free(v);
            return false;
        }
        v[count++] = (int32_t)x;
        p = end;
    }
    if (count == 0) {
        fprintf(stderr, "layerpipe: %s: no token ids given\n", what);
        free(v);
        return false;
    }
    *ids = v;
    *n = (int)count;
    return true;
}

char *lp_cli_read_file(const char *cmd, const char *path, size_t *n_bytes) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "layerpipe %s: %s: %s\n", cmd, path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap + 1);
    bool nomem = !buf;
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *p = realloc(buf, cap * 2 + 1);
            if (!p) {
                nomem = true;
                break;
            }
            buf = p;
            cap *= 2;
        }
    }
    bool bad = nomem || ferror(f);
    if (f != stdin) fclose(f);
    if (bad) {
        free(buf);
        fprintf(stderr, "layerpipe %s: %s: %s\n", cmd, path, nomem ? "out of memory" : "read error");
        return NULL;
    }
    buf[n] = '\0';
    *n_bytes = n;
    return buf;
}
