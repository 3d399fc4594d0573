// SPDX-License-Identifier: MIT
// main.c -- the `layerpipe` executable: dispatches to a subcommand.
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

struct lp_command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
};

static const struct lp_command commands[] = {
    {"run", lp_cli_run, "generate from a prompt"},
    {"serve", lp_cli_serve, "serve an OpenAI-compatible HTTP API"},
    {"logits", lp_cli_logits, "write the logits of every position of a token list"},
    {"bench", lp_cli_bench, "measure prefill and decode speed"},
    {"tokenize", lp_cli_tokenize, "turn text into token ids (and pieces)"},
    {"template", lp_cli_template, "print the chat prompt a messages array renders to"},
    {"worker", lp_cli_worker, "serve one stage (a layer range) of a pipeline"},
    {"cluster", lp_cli_cluster, "run a command through a local pipeline of N stages"},
    {"quantize", lp_cli_quantize, "convert an HF folder to MLX 8-bit or 4-bit"},
    {"perplexity", lp_cli_perplexity, "perplexity of the model over a text file"},
    {"certs", lp_cli_certs, "make a cluster CA, host certificates and a token (openssl)"},
};

static void usage(FILE *fp) {
    fprintf(fp, "usage: layerpipe COMMAND [options]\n\n"
                "layerpipe runs Qwen3 models split into layer stages.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(fp, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(fp, "\n'layerpipe COMMAND --help' describes a command's options.\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("layerpipe 0.1.0\n");
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "layerpipe: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
