/* main.c -- the gq command line: dispatch to a subcommand (cmd_*.c), `gq --version`, and map the
 * subcommand's gq_status to the exit code (one code per kind of error, see exit_codes[]). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cmds.h"
#include "gq/common.h"

/* The Makefile passes these (VERSION, `git describe`); defaults for other builds. */

char *openblas_get_corename(void); /* OpenBLAS: the kernel set chosen for this CPU */

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
    {"eval", gq_cmd_eval, "HumanEval / MBPP pass@k of a model (and its fp16 base), sandboxed"},
};
#define N_COMMANDS (int)(sizeof commands / sizeof *commands)

/* Exit status per gq_status; 1 is any other failure. README.md (Usage) has the same table. */
static const struct {
    int status, code;
    const char *what;
} exit_codes[] = {
    {GQ_ERR_ARG, 2, "usage: unknown option, bad value, missing argument"},
    {GQ_ERR_IO, 3, "I/O: a file or directory cannot be found, read, written or renamed"},
    {GQ_ERR_FORMAT, 4, "format: malformed file contents (JSON, safetensors, tokenizer)"},
    {GQ_ERR_NOMEM, 5, "out of memory"},
    {GQ_ERR_UNSUPPORTED, 6, "unsupported: valid input or setting gq does not handle"},
    {GQ_ERR_NUMERIC, 7, "numeric: NaN or Inf in weights or results"},
    {GQ_ERR_NOT_PD, 8, "Hessian not positive definite, even after damping retries"},
    {GQ_ERR_DEVICE, 9, "device: GPU missing or failing"},
    {GQ_ERR_EXISTS, 10, "output exists (--force replaces it)"},
    {GQ_ERR_DATA, 11, "data: not enough or bad calibration or evaluation data"},
};
#define N_EXIT_CODES (int)(sizeof exit_codes / sizeof *exit_codes)

static int exit_code(int status) {
    for (int i = 0; i < N_EXIT_CODES; i++)
        if (exit_codes[i].status == status) return exit_codes[i].code;
    return 1;
}

static void usage(FILE *f) {
    fprintf(f, "gq -- offline GPTQ quantization for Llama-family checkpoints\n\n"
               "usage: gq <command> [options]     (gq <command> --help for its options)\n"
               "       gq --version\n\ncommands:\n");
    for (int i = 0; i < N_COMMANDS; i++) fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\nexit status:\n  %-3d success\n  %-3d unexpected error\n", 0, 1);
    for (int i = 0; i < N_EXIT_CODES; i++) fprintf(f, "  %-3d %s\n", exit_codes[i].code, exit_codes[i].what);
    fprintf(f, "\nenvironment: GQ_DATA_DIR (bundled data: calib/...), GQ_LOG (error|warn|info|debug)\n");
}

static void version(void) {
#ifdef GQ_USE_CUDA
    const char *cuda = "on";
#else
    const char *cuda = "off";
#endif
    printf("gq %s (git %s, CUDA %s, OpenBLAS %s)\n", gq_version(), gq_version_git(), cuda, openblas_get_corename());
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        version();
        return 0;
    }
    /* past a file-size limit (ulimit -f) a write fails with EFBIG and the error path removes the
     * temporary files, instead of SIGXFSZ killing the process with them left behind */
    signal(SIGXFSZ, SIG_IGN);
    for (int i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], commands[i].name)) continue;
        int rc = commands[i].run(argc - 1, argv + 1);
        if (rc == GQ_OK || rc == 1) return 0;
        fflush(stdout);
        fprintf(stderr, "gq %s: error: %s\n", commands[i].name, gq_errmsg()[0] ? gq_errmsg() : gq_status_name(rc));
        return exit_code(rc);
    }
    fprintf(stderr, "gq: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
