/* cmd_inspect.c -- `gq inspect PATH`: what a checkpoint or safetensors file holds, and (for a
 * directory with config.json) every problem gq_model_check finds: then the exit status is non-zero. */
#include <stdlib.h>
#include <string.h>

#include "cmds.h"
#include "gq/cli.h"
#include "gq/config.h"
#include "gq/model.h"
#include "gq/st.h"

static void print_bytes(const char *label, double b) {
    char s[32];
    printf("%-14s %s (%.0f bytes)\n", label, gq_fmt_bytes(s, sizeof s, b), b);
}

/* --tensors: name, dtype, shape and file of every tensor. */
static void print_tensors(const gq_st *st) {
    for (int i = 0; i < gq_st_count(st); i++) {
        const gq_st_tensor *t = gq_st_at(st, i);
        char shp[128];
        int len = snprintf(shp, sizeof shp, "[");
        for (int d = 0; d < t->ndim; d++)
            len += snprintf(shp + len, sizeof shp - len, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        snprintf(shp + len, sizeof shp - len, "]");
        printf("  %-60s %-5s %-20s %s\n", t->name, gq_dtype_name(t->dtype), shp, gq_st_file_path(st, t->file));
    }
}

/* The checkpoint against its config.json (gq_model_check_st): problems and unused tensors printed,
 * GQ_ERR_FORMAT when there are problems. */
static int print_check(const gq_config *cfg, const gq_st *st, const char *path) {
    gq_check_report *r = gq_malloc(sizeof *r);
    int rc = gq_model_check_st(cfg, st, path, r);
    if (r->n_unused) {
        printf("%-14s %d (gq does not read them):", "unused tensors", r->n_unused);
        for (int i = 0; i < r->n_unused && i < GQ_CHECK_KEEP_UNUSED; i++) printf("%s %s", i ? "," : "", r->unused[i]);
        printf("%s\n", r->n_unused > GQ_CHECK_KEEP_UNUSED ? ", ..." : "");
    }
    if (rc != GQ_OK) {
        printf("%-14s %d (config.json against the safetensors headers)\n", "problems", r->n_problems);
        for (int i = 0; i < r->n_problems && i < GQ_CHECK_KEEP; i++) printf("  %s\n", r->problems[i]);
        if (r->n_problems > GQ_CHECK_KEEP) printf("  ... and %d more\n", r->n_problems - GQ_CHECK_KEEP);
        rc = gq_err(GQ_ERR_FORMAT, "%s: %d problem%s with the checkpoint (listed under 'problems' above)%s%s", path,
                    r->n_problems, r->n_problems == 1 ? "" : "s", r->n_problems == 1 ? ": " : "",
                    r->n_problems == 1 ? r->problems[0] : "");
    }
    free(r);
    return rc;
}

int gq_cmd_inspect(int argc, char **argv) {
    int show_tensors = 0;
    gq_opt opts[] = {
        {"tensors", GQ_OPT_FLAG, &show_tensors, "list every tensor (name, dtype, shape, file)", NULL, 0, 0},
    };
    const char *pos[1];
    int npos = 0;
    const char *syn = "PATH  (a checkpoint directory, a .safetensors file or an index .json)";
    int rc = gq_opts_parse("inspect", syn, opts, 1, argc - 1, argv + 1, pos, 1, &npos);
    if (rc) return rc;
    if (npos != 1) {
        gq_opts_usage(stderr, "inspect", syn, opts, 1);
        return gq_err(GQ_ERR_ARG, "expected one PATH");
    }
    const char *path = pos[0];
    if (!gq_path_exists(path)) return gq_err(GQ_ERR_IO, "%s: no such file or directory", path);

    printf("%-14s %s\n", "path", path);
    /* config.json (directory only) */
    gq_config cfg;
    int have_cfg = 0;
    if (gq_is_dir(path)) {
        char *cp = gq_path_join(path, "config.json");
        if (gq_path_exists(cp)) {
            rc = gq_config_load(&cfg, cp);
            if (rc) {
                free(cp);
                return rc;
            }
            have_cfg = 1;
            char s[512];
            gq_config_summary(&cfg, s, sizeof s);
            printf("%-14s %s\n", "architecture", s);
            printf("%-14s %lld (from config.json)\n", "expected params", (long long)gq_config_param_count(&cfg));
        } else {
            printf("%-14s none (no config.json)\n", "architecture");
        }
        free(cp);
    }

    gq_st *st = NULL;
    if ((rc = gq_st_open(&st, path))) return rc;
    int n = gq_st_count(st);
    int64_t count_by[GQ_DT_COUNT] = {0}, elems_by[GQ_DT_COUNT] = {0};
    int64_t params = 0, qparams = 0, quant_linears = 0;
    double bytes = 0;
    const int bits = have_cfg && cfg.has_quant ? cfg.quant.bits : 0;
    for (int i = 0; i < n; i++) {
        const gq_st_tensor *t = gq_st_at(st, i);
        count_by[t->dtype]++;
        elems_by[t->dtype] += t->numel;
        bytes += (double)t->nbytes;
        size_t ln = strlen(t->name);
        int is_qw = ln > 8 && !strcmp(t->name + ln - 8, ".qweight");
        int is_scales = ln > 7 && !strcmp(t->name + ln - 7, ".scales");
        if (is_qw) {
            quant_linears++;
            if (bits && t->ndim == 2) qparams += t->shape[0] * 32 / bits * t->shape[1]; /* K x N weights */
        }
        if (!is_scales &&
            (t->dtype == GQ_DT_F16 || t->dtype == GQ_DT_BF16 || t->dtype == GQ_DT_F32 || t->dtype == GQ_DT_F64))
            params += t->numel;
    }
    printf("%-14s %d\n", "tensors", n);
    for (int d = 0; d < GQ_DT_COUNT; d++)
        if (count_by[d])
            printf("  %-12s %lld tensors, %lld elements\n", gq_dtype_name((gq_dtype)d), (long long)count_by[d],
                   (long long)elems_by[d]);
    if (qparams)
        printf("%-14s %lld (%lld unquantized + %lld in %d-bit linears)\n", "parameters", (long long)(params + qparams),
               (long long)params, (long long)qparams, bits);
    else
        printf("%-14s %lld\n", "parameters", (long long)params);
    print_bytes("tensor bytes", bytes);
    printf("%-14s %d\n", "files", gq_st_nfiles(st));
    for (int f = 0; f < gq_st_nfiles(st); f++) {
        char s[32];
        printf("  %s (%s)\n", gq_st_file_path(st, f), gq_fmt_bytes(s, sizeof s, (double)gq_st_file_size(st, f)));
    }
    for (int i = 0; i < gq_st_meta_count(st); i++) {
        const char *k = gq_st_meta_key(st, i);
        printf("%-14s %s = %s\n", i ? "" : "metadata", k, gq_st_meta(st, k));
    }
    if (have_cfg && cfg.has_quant) {
        const gq_qconfig *q = &cfg.quant;
        printf("%-14s GPTQ %d-bit, group size %d, %s, desc_act %s, static_groups %s, damp %g, format %s; "
               "%lld quantized linears\n",
               "quantization", q->bits, q->group_size, q->sym ? "symmetric" : "asymmetric",
               q->desc_act ? "true" : "false", q->static_groups ? "true" : "false", q->damp_percent, q->format,
               (long long)quant_linears);
    } else if (quant_linears) {
        printf("%-14s %lld tensors named *.qweight but no quantization_config in config.json\n", "quantization",
               (long long)quant_linears);
    } else {
        printf("%-14s none\n", "quantization");
    }
    if (show_tensors) print_tensors(st);
    rc = have_cfg ? print_check(&cfg, st, path) : GQ_OK;
    gq_st_close(st);
    return rc;
}
