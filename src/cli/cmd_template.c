// SPDX-License-Identifier: MIT
// cmd_template.c -- `layerpipe template`: prints exactly the prompt text the
// Qwen3 chat template renders for an OpenAI-style messages file, so users
// can see what the model is given.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/args.h"
#include "cli/cli.h"
#include "layerpipe/tokenizer.h"

static const char template_usage[] =
    "usage: layerpipe template [-m MODEL_DIR] --messages FILE.json [--no-think]\n"
    "                          [--no-generation-prompt] [--ids]\n"
    "\n"
    "Prints the prompt the Qwen3 chat template makes of FILE.json ('-' for stdin):\n"
    "an array of messages {role, content, reasoning_content?, tool_calls?}, or an\n"
    "object {\"messages\": [...], \"tools\": [...]}. The prompt ends with the\n"
    "generation prompt '<|im_start|>assistant\\n' unless --no-generation-prompt.\n"
    "  -m, --model DIR          model folder; needed only for --ids\n"
    "  --no-think               disable thinking (adds the empty <think></think> block)\n"
    "  --ids                    print the prompt's token ids instead of its text\n"
    "  -h, --help               show this help\n";


int lp_cli_template(int argc, char **argv) {
    const char *model = NULL, *messages = NULL;
    bool ids = false;
    struct lp_chat_options opt = lp_chat_options_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(template_usage, stdout);
            return 0;
        } else if ((strcmp(a, "-m") == 0 || strcmp(a, "--model") == 0) && i + 1 < argc) {
            model = argv[++i];
        } else if (strcmp(a, "--messages") == 0 && i + 1 < argc) {
            messages = argv[++i];
        } else if (strcmp(a, "--no-think") == 0) {
            opt.enable_thinking = false;
        } else if (strcmp(a, "--no-generation-prompt") == 0) {
            opt.add_generation_prompt = false;
        } else if (strcmp(a, "--ids") == 0) {
            ids = true;
        } else {
            fprintf(stderr, "layerpipe template: unknown or incomplete option '%s'\n\n%s", a,
                    template_usage);
            return 2;
        }
    }
    if (!messages || (ids && !model)) {
        fprintf(stderr, "layerpipe template: %s\n\n%s",
                !messages ? "--messages FILE.json is required" : "--ids needs -m MODEL_DIR",
                template_usage);
        return 2;
    }
    struct lp_error err = {0};
    struct lp_tokenizer *tok = NULL;
    struct lp_token_list list;
    lp_token_list_init(&list);
    char *prompt = NULL;
    size_t n_json = 0, n_prompt = 0;
    int rc = 1;
    char *json = lp_cli_read_file("template", messages, &n_json);
    if (!json) goto done;
    if (model && lp_tokenizer_load(&tok, model, &err)) {
        fprintf(stderr, "layerpipe template: %s\n", err.msg);
        goto done;
    }
    if (lp_chat_render_json(json, n_json, &opt, &prompt, &n_prompt, &err)) {
        fprintf(stderr, "layerpipe template: %s: %s\n", messages, err.msg);
        goto done;
    }
    if (ids) {
        if (lp_tokenizer_encode(tok, prompt, n_prompt, LP_ENCODE_DEFAULT, &list, &err)) {
            fprintf(stderr, "layerpipe template: %s\n", err.msg);
            goto done;
        }
        for (size_t i = 0; i < list.n_ids; i++)
            printf(i ? " %d" : "%d", list.ids[i]);
        putchar('\n');
    } else {
        fwrite(prompt, 1, n_prompt, stdout);
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    free(json);
    free(prompt);
    lp_token_list_deinit(&list);
    lp_tokenizer_destroy(tok);
    return rc;
}
