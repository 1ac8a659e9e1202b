/*
 * cmd_tokenize.c -- `gq tokenize`: a debugging aid for the tokenizer.
 *
 *   gq tokenize --model DIR [--text FILE | STRING] [--ids] [--no-special]
 *   gq tokenize --model DIR --decode 1,2,3 [--no-special]
 *
 * Encodes STRING (or the contents of FILE, or stdin when neither is given)
 * and prints one "id<TAB>piece" line per token, or with --ids only the ids
 * on one line, space separated. --no-special leaves out the post-processor
 * tokens (BOS). --decode prints the text of a comma-separated id list
 * (--no-special then skips special tokens).
 * argv[0] is the command name. Returns a gq_status (1: --help was printed).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "gq/cli.h"
#include "gq/tokenizer.h"

static int read_stream(FILE *f, char **data, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *b = gq_malloc(cap);
    for (;;) {
        if (n == cap) b = gq_realloc(b, cap *= 2);
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) {
        free(b);
        return gq_err(GQ_ERR_IO, "stdin: read error");
    }
    *data = b;
    *len = n;
    return GQ_OK;
}

static int parse_id_list(const char *s, gq_ids *ids) {
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ','))
            return gq_err(GQ_ERR_ARG, "--decode: expected comma-separated ids like 1,2,3, got '%s'", s);
        gq_ids_push(ids, (int32_t)v);
        p = *end ? end + 1 : end;
    }
    return GQ_OK;
}

static int run(const char *model, const char *file, const char *str, const char *decode, int ids_only,
               int special) {
    gq_tokenizer *tok = NULL;
    gq_ids ids = {0};
    char *text = NULL;
    size_t len = 0;
    int rc = gq_tok_load(&tok, model);
    if (rc) return rc;
    if (decode) {
        if (!(rc = parse_id_list(decode, &ids))) rc = gq_tok_decode(tok, ids.v, ids.n, !special, &text, &len);
        if (!rc) {
            fwrite(text, 1, len, stdout);
            fputc('\n', stdout);
        }
        goto out;
    }
    if (file) rc = gq_read_file(file, &text, &len);
    else if (str) text = gq_strdup(str), len = strlen(str);
    else rc = read_stream(stdin, &text, &len);
    if (rc) goto out;
    if ((rc = gq_tok_encode(tok, text, len, special, &ids))) goto out;
    if (ids_only) {
        for (size_t i = 0; i < ids.n; i++) printf(i ? " %d" : "%d", ids.v[i]);
        fputc('\n', stdout);
    } else {
        for (size_t i = 0; i < ids.n; i++) printf("%d\t%s\n", ids.v[i], gq_tok_piece(tok, ids.v[i]));
    }
out:
    free(text);
    gq_ids_free(&ids);
    gq_tok_free(tok);
    return rc;
}

int gq_cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *file = NULL, *decode = NULL, *pos[1] = {NULL};
    int ids_only = 0, no_special = 0, npos = 0;
    gq_opt opts[] = {
        {"model", GQ_OPT_STR, &model, "model directory with tokenizer.json (or the tokenizer.json file)", NULL, 0, 0},
        {"text", GQ_OPT_STR, &file, "encode the contents of FILE (default: STRING, else stdin)", NULL, 0, 0},
        {"ids", GQ_OPT_FLAG, &ids_only, "print only the ids, on one line", NULL, 0, 0},
        {"no-special", GQ_OPT_FLAG, &no_special, "no BOS/EOS when encoding; skip special tokens when decoding", NULL, 0, 0},
        {"decode", GQ_OPT_STR, &decode, "decode comma-separated ids (1,2,3) and print the text", NULL, 0, 0},
    };
    const int n = (int)(sizeof opts / sizeof *opts);
    const char *syn = "--model DIR [--text FILE | STRING] [--ids] [--no-special]\n"
                      "       gq tokenize --model DIR --decode ID,ID,... [--no-special]";
    int rc = gq_opts_parse("tokenize", syn, opts, n, argc - 1, argv + 1, pos, 1, &npos);
    if (rc) return rc;
    if (!model) return gq_err(GQ_ERR_ARG, "--model is required (see gq tokenize --help)");
    if (file && npos) return gq_err(GQ_ERR_ARG, "give --text FILE or STRING, not both");
    return run(model, file, pos[0], decode, ids_only, !no_special);
}
