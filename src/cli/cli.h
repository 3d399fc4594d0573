// SPDX-License-Identifier: MIT
// cli.h -- the subcommands of the `layerpipe` executable. Each takes the
// arguments after its name (argv[0] is the subcommand name) and returns the
// process exit status: 0 success, 1 runtime failure, 2 usage error.
// Only src/cli/ may print to the terminal or exit().
#ifndef LP_CLI_H
#define LP_CLI_H

int lp_cli_run(int argc, char **argv);
int lp_cli_serve(int argc, char **argv);
int lp_cli_logits(int argc, char **argv);
int lp_cli_bench(int argc, char **argv);
int lp_cli_tokenize(int argc, char **argv);
int lp_cli_template(int argc, char **argv);
int lp_cli_worker(int argc, char **argv);
int lp_cli_cluster(int argc, char **argv);
int lp_cli_quantize(int argc, char **argv);
int lp_cli_perplexity(int argc, char **argv);
int lp_cli_certs(int argc, char **argv);

#endif
