/*
 * gq/cli.h -- option tables for the subcommands. One table per subcommand
 * (name, type, destination, default text, help) drives parsing, --help and
 * the "effective settings" table printed at start.
 *
 *   static int bits = 4;
 *   gq_opt opts[] = {
 *       {"bits", GQ_OPT_INT, &bits, "bit width", "2|3|4|8"},
 *       {"asym", GQ_OPT_FLAG, &sym, "asymmetric (zero points)", NULL, 0},
 *   };
 * Options are `--name value` or `--name=value`; flags take no value and store
 * `flag_value` (default 1). Defaults are the values the destinations hold
 * before parsing. Every parse error is GQ_ERR_ARG with a message naming the
 * option, what was expected and what was given; messages do not start with
 * "gq <cmd>: ", which main() prints before them.
 */
#ifndef GQ_CLI_H
#define GQ_CLI_H

#include <stdio.h>

#include "gq/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { GQ_OPT_STR, GQ_OPT_INT, GQ_OPT_DOUBLE, GQ_OPT_FLAG } gq_opt_type;

typedef struct {
    const char *name;    /* long name without "--" */
    gq_opt_type type;
    void *dst;           /* const char ** | int * | double * | int * (flag) */
    const char *help;
    const char *choices; /* "a|b|c" allowed values (STR or INT), or NULL */
    int flag_value;      /* FLAG: value stored when present (0 means 1) */
    int hidden_default;  /* 1: do not print a default in --help */
} gq_opt;

/* Parse argv[0..argc) (argv[0] is the first argument after the command).
 * Positional arguments go to pos[0..max_pos), count in *npos.
 * Returns GQ_OK, GQ_ERR_ARG, or 1 when --help was given (usage printed). */
int gq_opts_parse(const char *cmd, const char *synopsis, const gq_opt *opts, int n, int argc, char **argv,
                  const char **pos, int max_pos, int *npos);
void gq_opts_usage(FILE *f, const char *cmd, const char *synopsis, const gq_opt *opts, int n);
/* Aligned "name  value" table of the effective settings to stderr. */
void gq_opts_print(const char *title, const gq_opt *opts, int n);

#ifdef __cplusplus
}
#endif
#endif /* GQ_CLI_H */
