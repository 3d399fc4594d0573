// SPDX-License-Identifier: MIT
// cmd_certs.c -- `layerpipe certs --out DIR --hosts a,b,c`: a cluster CA,
// one certificate per host and a cluster token, for --tls-cert, --tls-key,
// --tls-ca and --cluster-token-file. The work is tools/make-certs.sh (the
// openssl command line, documented there); this command finds that script
// next to the build or the source tree and runs it.
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/args.h"
#include "cli/cli.h"

// Where the script may be: $LP_SOURCE_DIR/tools, then beside the
// executable (build/layerpipe -> tools/, or an install's share/layerpipe).
static bool find_script(char *out, size_t n) {
    const char *src = getenv("LP_SOURCE_DIR");
    if (src && *src) {
        snprintf(out, n, "%s/tools/make-certs.sh", src);
        if (access(out, R_OK) == 0) return true;
    }
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) return false;
    exe[len] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return false;
    *slash = '\0';
    static const char *const rel[] = {"/../tools/make-certs.sh", "/tools/make-certs.sh",
                                      "/../share/layerpipe/make-certs.sh"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        snprintf(out, n, "%s%s", exe, rel[i]);
        if (access(out, R_OK) == 0) return true;
    }
    return false;
}

int lp_cli_certs(int argc, char **argv) {
    char *out = NULL, *hosts = NULL;
    int days = 825;
    struct lp_arg args[] = {
        {"out", 'o', LP_ARG_STR, &out, "DIR",
         "folder for ca.pem/ca.key, HOST.pem/HOST.key and cluster-token (an existing CA there "
         "is reused)",
         true},
        {"hosts", 0, LP_ARG_STR, &hosts, "a,b,c",
         "the machines' names or IP addresses (each certificate also names localhost and "
         "127.0.0.1)",
         true},
        {"days", 0, LP_ARG_INT, &days, "N", "validity of the host certificates (default 825)",
         false, 1, 36500},
    };
    enum lp_args_result ar = lp_args_parse(
        "certs",
        "Make a cluster CA, a certificate per host and a cluster token (with openssl) for "
        "--tls-cert, --tls-key, --tls-ca and --cluster-token-file.",
        args, (int)(sizeof args / sizeof args[0]), argc, argv, NULL, 0, NULL);
    if (ar != LP_ARGS_OK) return ar == LP_ARGS_HELP ? 0 : 2;
    char script[PATH_MAX + 64];
    if (!find_script(script, sizeof script)) {
        fprintf(stderr, "layerpipe certs: tools/make-certs.sh not found beside this executable "
                        "(set LP_SOURCE_DIR to the source tree)\n");
        return 1;
    }
    char days_s[16];
    snprintf(days_s, sizeof days_s, "%d", days);
    char *const sh_argv[] = {"sh", script, "--out", out, "--hosts", hosts, "--days", days_s, NULL};
    fflush(NULL);
    execv("/bin/sh", sh_argv);
    perror("layerpipe certs: /bin/sh");
    return 1;
}
