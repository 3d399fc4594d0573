// SPDX-License-Identifier: MIT
// cmd_tokenize.c -- `layerpipe tokenize`: shows the token ids (and pieces)
// the model's tokenizer gives for a text or a file, so users can check what
// the model will see.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "layerpipe/tokenizer.h"

static const char tokenize_usage[] =
    "usage: layerpipe tokenize -m MODEL_DIR [--ids] [--split-special] (TEXT | --file FILE)\n"
    "\n"
    "Encodes TEXT (or the bytes of FILE) with MODEL_DIR/tokenizer.json.\n"
    "  -m, --model DIR     model folder holding tokenizer.json\n"
    "  --ids               print only the ids, space-separated, on one line\n"
    "  --file FILE         read the text from FILE ('-' for stdin) instead of the argument\n"
    "  --split-special     treat special tokens such as <|im_start|> as plain text\n"
    "  -h, --help          show this help\n"
    "Without --ids, prints one line per token: the id, a tab, and the token as\n"
    "tokenizer.json spells it (byte-level form: 'Ġ' is a space, 'Ċ' a newline).\n";


int lp_cli_tokenize(int argc, char **argv) {
    const char *model = NULL, *file = NULL, *text = NULL;
    bool ids_only = false;
    unsigned flags = LP_ENCODE_DEFAULT;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(tokenize_usage, stdout);
            return 0;
        } else if ((strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) && i + 1 < argc) {
            model = argv[++i];
        } else if (strcmp(a, "--file") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strcmp(a, "--ids") == 0) {
            ids_only = true;
        } else if (strcmp(a, "--split-special") == 0) {
            flags |= LP_ENCODE_SPLIT_SPECIAL;
        } else if (strcmp(a, "--") == 0 && i + 1 < argc && !text) {
            text = argv[++i];
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "layerpipe tokenize: unknown or incomplete option '%s'\n\n%s", a,
                    tokenize_usage);
            return 2;
        } else if (!text) {
            text = a;
        } else {
            fprintf(stderr, "layerpipe tokenize: more than one TEXT argument\n\n%s",
                    tokenize_usage);
            return 2;
        }
    }
    if (!model || (!text == !file)) {
        fprintf(stderr, "layerpipe tokenize: %s\n\n%s",
                !model ? "-m MODEL_DIR is required" : "give either TEXT or --file FILE",
                tokenize_usage);
        return 2;
    }
    struct lp_error err = {0};
    struct lp_tokenizer *tok = NULL;
    struct lp_token_list ids;
    lp_token_list_init(&ids);
    char *data = NULL;
    size_t n_data = 0;
    int rc = 1;
    if (file) {
        if (!(data = lp_cli_read_file("tokenize", file, &n_data))) goto done;
    } else {
        n_data = strlen(text);
    }
    if (lp_tokenizer_load(&tok, model, &err)) {
        fprintf(stderr, "layerpipe tokenize: %s\n", err.msg);
        goto done;
    }
    if (lp_tokenizer_encode(tok, file ? data : text, n_data, flags, &ids, &err)) {
        fprintf(stderr, "layerpipe tokenize: %s%s\n", file ? file : "TEXT: ", err.msg);
        goto done;
    }
    for (size_t i = 0; i < ids.n_ids; i++) {
        if (ids_only) {
            printf(i ? " %d" : "%d", ids.ids[i]);
        } else {
            const char *piece = lp_tokenizer_token_piece(tok, ids.ids[i], NULL);
            printf("%d\t%s\n", ids.ids[i], piece ? piece : "");
        }
    }
    if (ids_only) putchar('\n');
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    free(data);
    lp_token_list_deinit(&ids);
    lp_tokenizer_destroy(tok);
    return rc;
}
