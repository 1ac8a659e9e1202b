/* cli.c -- option-table parsing, usage and settings printing. */
#include "gq/cli.h"
#include "gq/knobs.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int in_choices(const char *choices, const char *v) {
    size_t n = strlen(v);
    const char *p = choices;
    while (p && *p) {
        const char *e = strchr(p, '|');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && !strncmp(p, v, n)) return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}

static void value_str(const gq_opt *o, char *buf, size_t cap) {
    switch (o->type) {
    case GQ_OPT_STR: {
        const char *s = *(const char **)o->dst;
        snprintf(buf, cap, "%s", s ? s : "(none)");
        break;
    }
    case GQ_OPT_INT:
        snprintf(buf, cap, "%d", *(int *)o->dst);
        break;
    case GQ_OPT_DOUBLE:
        snprintf(buf, cap, "%g", *(double *)o->dst);
        break;
    case GQ_OPT_FLAG:
        snprintf(buf, cap, "%s", *(int *)o->dst == (o->flag_value ? o->flag_value : 1) ? "yes" : "no");
        break;
    }
}

void gq_opts_usage(FILE *f, const char *cmd, const char *synopsis, const gq_opt *opts, int n) {
    fprintf(f, "usage: gq %s %s\n\noptions:\n", cmd, synopsis);
    for (int i = 0; i < n; i++) {
        const gq_opt *o = &opts[i];
        char lhs[96], def[128];
        const char *arg = o->type == GQ_OPT_FLAG ? "" : o->choices ? o->choices : o->type == GQ_OPT_STR ? "S" : "N";
        snprintf(lhs, sizeof lhs, "--%s%s%s", o->name, *arg ? " " : "", arg);
        def[0] = 0;
        if (o->type != GQ_OPT_FLAG && !o->hidden_default) {
            char v[96];
            value_str(o, v, sizeof v);
            if (!(o->type == GQ_OPT_STR && !*(const char **)o->dst)) snprintf(def, sizeof def, " (default %s)", v);
        }
        fprintf(f, "  %-28s %s%s\n", lhs, o->help, def);
    }
    fprintf(f, "  %-28s %s\n", "--help", "show this help");
}

static const gq_opt *find_opt(const gq_opt *opts, int n, const char *name, size_t len) {
    for (int i = 0; i < n; i++)
        if (strlen(opts[i].name) == len && !strncmp(opts[i].name, name, len)) return &opts[i];
    return NULL;
}

static int set_value(const gq_opt *o, const char *v) {
    if (o->choices && !in_choices(o->choices, v))
        return gq_err(GQ_ERR_ARG, "--%s: expected one of %s, got '%s'", o->name, o->choices, v);
    char *end;
    errno = 0;
    switch (o->type) {
    case GQ_OPT_STR:
        *(const char **)o->dst = v;
        break;
    case GQ_OPT_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < -2147483647L || x > 2147483647L)
            return gq_err(GQ_ERR_ARG, "--%s: expected an integer, got '%s'", o->name, v);
        *(int *)o->dst = (int)x;
        break;
    }
    case GQ_OPT_DOUBLE: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x))
            return gq_err(GQ_ERR_ARG, "--%s: expected a number, got '%s'", o->name, v);
        *(double *)o->dst = x;
        break;
    }
    case GQ_OPT_FLAG:
        break;
    }
    return GQ_OK;
}

int gq_opts_parse(const char *cmd, const char *synopsis, const gq_opt *opts, int n, int argc, char **argv,
                  const char **pos, int max_pos, int *npos) {
    int np = 0, only_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && !strcmp(a, "--")) {
            only_pos = 1;
            continue;
        }
        if (!only_pos && (!strcmp(a, "--help") || !strcmp(a, "-h"))) {
            gq_opts_usage(stdout, cmd, synopsis, opts, n);
            return 1;
        }
        if (only_pos || a[0] != '-' || a[1] != '-') {
            if (a[0] == '-' && a[1] && !only_pos)
                return gq_err(GQ_ERR_ARG, "unknown option '%s' (options are --long-names; see gq %s --help)", a, cmd);
            if (np >= max_pos) return gq_err(GQ_ERR_ARG, "unexpected argument '%s' (see gq %s --help)", a, cmd);
            pos[np++] = a;
            continue;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const gq_opt *o = find_opt(opts, n, name, len);
        if (!o) return gq_err(GQ_ERR_ARG, "unknown option '--%.*s' (see gq %s --help)", (int)len, name, cmd);
        if (o->type == GQ_OPT_FLAG) {
            if (eq) return gq_err(GQ_ERR_ARG, "--%s takes no value", o->name);
            *(int *)o->dst = o->flag_value ? o->flag_value : 1;
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) return gq_err(GQ_ERR_ARG, "--%s needs a value", o->name);
            v = argv[++i];
        }
        int rc = set_value(o, v);
        if (rc) return rc;
    }
    if (npos) *npos = np;
    return GQ_OK;
}

void gq_opts_print(const char *title, const gq_opt *opts, int n) {
    gq_info("%s", title);
    for (int i = 0; i < n; i++) {
        char v[512];
        /* flags that share a destination with another flag print once */
        int dup = 0;
        for (int j = 0; j < i; j++)
            if (opts[j].dst == opts[i].dst) dup = 1;
        if (dup) continue;
        value_str(&opts[i], v, sizeof v);
        gq_info("  %-18s %s", opts[i].name, v);
    }
    char knobs[256];
    gq_knobs_str(knobs, sizeof knobs, 0);
    gq_info("  %-18s %s", "environment", knobs[0] ? knobs : "(no GQ_* knobs set)");
}
