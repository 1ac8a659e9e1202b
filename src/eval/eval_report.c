/* eval_report.c -- what `gq eval` reports (gq/eval.h): the report printed (a line per source, then
 * with --base the difference and the table of the problems that differ), and its release. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gq/eval.h"

void gq_eval_report_free(gq_eval_report *r) {
    for (int i = 0; i < 2; i++) {
        free(r->s[i].pass_count);
        free(r->s[i].count);
    }
    if (r->task_ids)
        for (int i = 0; i < r->n_problems; i++) free(r->task_ids[i]);
    free(r->task_ids);
    memset(r, 0, sizeof *r);
}

void gq_eval_print(const gq_eval_report *r, FILE *f) {
    for (int si = 0; si < r->n_sources; si++) {
        const gq_eval_source_report *s = &r->s[si];
        fprintf(f, "eval: %-9s", s->tag);
        for (int i = 0; i < s->nk; i++) fprintf(f, " pass@%d = %.4f", s->k[i], s->pass_at[i]);
        if (!s->nk) fprintf(f, " (no pass@k: no samples)");
        fprintf(f, " (%ld/%ld samples passed, %d problems x %d%s) %s\n", s->passed, s->total, s->n_problems, s->min_n,
                s->max_n != s->min_n ? "+" : "", s->source);
    }
    if (r->n_sources == 2) {
        const gq_eval_source_report *b = &r->s[0], *m = &r->s[1];
        int lost = 0, gained = 0;
        for (int pi = 0; pi < r->n_problems; pi++) {
            if (!b->count[pi] || !m->count[pi]) continue;
            double fb = (double)b->pass_count[pi] / b->count[pi], fm = (double)m->pass_count[pi] / m->count[pi];
            lost += fm < fb;
            gained += fm > fb;
        }
        fprintf(f, "eval: model - base:");
        for (int i = 0; i < m->nk && i < b->nk; i++)
            fprintf(f, " pass@%d %+.4f", m->k[i], m->pass_at[i] - b->pass_at[i]);
        fprintf(f, "; problems lost %d, gained %d\n", lost, gained);
        if (lost + gained) {
            fprintf(f, "\n| problem | base | model | |\n|---|---|---|---|\n");
            for (int pi = 0; pi < r->n_problems; pi++) {
                if (!b->count[pi] || !m->count[pi]) continue;
                double fb = (double)b->pass_count[pi] / b->count[pi], fm = (double)m->pass_count[pi] / m->count[pi];
                if (fb == fm) continue;
                fprintf(f, "| %s | %d/%d | %d/%d | %s |\n", r->task_ids[pi], b->pass_count[pi], b->count[pi],
                        m->pass_count[pi], m->count[pi], fm < fb ? "lost" : "gained");
            }
        }
    }
}
