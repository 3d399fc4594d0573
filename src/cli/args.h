// SPDX-License-Identifier: MIT
// args.h -- a small table-driven option parser shared by the subcommands:
// long (--name VALUE or --name=VALUE) and short (-m VALUE) options, typed
// and range-checked values, --help generated from the table.
#ifndef LP_CLI_ARGS_H
#define LP_CLI_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum lp_arg_type { LP_ARG_STR, LP_ARG_INT, LP_ARG_FLOAT, LP_ARG_U64, LP_ARG_FLAG, LP_ARG_LIST };

#define LP_ARG_LIST_MAX 16

// A repeatable string option (--stop A --stop B).
struct lp_arg_list {
    const char *items[LP_ARG_LIST_MAX];
    int n;
};

struct lp_arg {
    const char *name;    // long name without dashes ("prompt-ids")
    char short_name;     // 'm', or 0
    enum lp_arg_type type;
    void *dst;           // char **, int *, float *, uint64_t *, bool *, struct lp_arg_list *
    const char *metavar; // "DIR"
    const char *help;
    bool required;
    double min, max;     // range for INT / FLOAT when min < max
    bool seen;           // set by the parser
};

enum lp_args_result { LP_ARGS_OK, LP_ARGS_HELP, LP_ARGS_ERROR };

// Parses argv[1..argc) against args[0..n). Prints --help text to stdout
// (LP_ARGS_HELP) or an error with a hint to stderr (LP_ARGS_ERROR).
// Positional arguments are collected into positional[0..*n_positional)
// (at most max_positional; more is an error).
enum lp_args_result lp_args_parse(const char *cmd, const char *summary, struct lp_arg *args, int n,
                                  int argc, char **argv, char **positional, int max_positional,
                                  int *n_positional);

// Parses "1 2 3" / "1,2,3" into a new int32 array; returns false (with a
// message on stderr naming `what`) on a bad id.
bool lp_args_parse_ids(const char *text, const char *what, int32_t **ids, int *n);

// Reads a whole file (stdin for "-") into a malloc'ed, NUL-terminated
// buffer; on failure prints "layerpipe CMD: PATH: why" and returns NULL.
char *lp_cli_read_file(const char *cmd, const char *path, size_t *n_bytes);

#endif
