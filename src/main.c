/* main.c -- the gq command line: dispatch to a subcommand (cmd_*.c) and map
 * its status to the exit code (0 ok, 1 error, 2 usage error). */
#include <stdio.h>
#include <string.h>

#include "cmds.h"
#include "gq/common.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"quantize", gq_cmd_quantize, "GPTQ-quantize a checkpoint to int4 (AutoGPTQ layout)"},
    {"ppl", gq_cmd_ppl, "perplexity of a checkpoint (fp16 or gq int4) on a text file"},
    {"inspect", gq_cmd_inspect, "summarize a checkpoint directory or safetensors file"},
    {"tokenize", gq_cmd_tokenize, "encode or decode text with a checkpoint's tokenizer"},
    {"calib", gq_cmd_calib, "self-generated calibration set: the model answers questions (JSONL)"},
};
#define N_COMMANDS (int)(sizeof commands / sizeof *commands)

static void usage(FILE *f) {
    fprintf(f, "gq -- offline GPTQ quantization for Llama-family checkpoints\n\n"
               "usage: gq <command> [options]     (gq <command> --help for its options)\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], commands[i].name)) continue;
        int rc = commands[i].run(argc - 1, argv + 1);
        if (rc == GQ_OK || rc == 1) return 0;
        fflush(stdout);
        fprintf(stderr, "gq %s: error: %s\n", commands[i].name, gq_errmsg()[0] ? gq_errmsg() : gq_status_name(rc));
        return rc == GQ_ERR_ARG ? 2 : 1;
    }
    fprintf(stderr, "gq: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
