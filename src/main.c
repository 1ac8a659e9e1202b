/* main.c -- the gq command line: dispatch to a subcommand, map its status to
 * an exit code. Subcommands live in cmd_*.c. */
#include <stdio.h>
#include <string.h>

#include "gq/common.h"

static void usage(FILE *f) {
    fprintf(f,
            "gq -- offline GPTQ quantization for Llama-family checkpoints\n"
            "\n"
            "usage: gq <command> [options]   (gq <command> --help for its options)\n"
            "\n"
            "commands:\n"
            "  inspect PATH    summarize a checkpoint directory or safetensors file\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    fprintf(stderr, "gq: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
