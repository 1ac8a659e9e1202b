/*
 * gq/outdir.h -- owning an output directory for the length of a run.
 *
 * `gq quantize --out OUT` works in three places beside OUT, all named after it:
 *   OUT.lock         the owner's pid, host and start time; created atomically
 *                    (link(2) of a complete file), removed at the end
 *   OUT.partial/     the unfinished run (one file per finished layer + state.json)
 *   OUT.tmp.<pid>/   the finished checkpoint being assembled
 * and the finished directory replaces OUT by one atomic rename that never
 * replaces anything the run did not check at its start:
 *
 *   gq_outdir d;
 *   gq_outdir_init(&d, out);
 *   gq_outdir_check_inputs(&d, inputs, n);        // --out vs --model/--calib
 *   gq_outdir_lock(&d, force || resume);          // one run per OUT; stale locks reported
 *   gq_outdir_check_existing(&d, force);          // an existing OUT
 *   gq_outdir_clean(&d);                          // leftovers of dead runs on OUT
 *   ... write d.partial, then d.tmp ...
 *   gq_outdir_install(&d);                        // d.tmp -> OUT
 *   gq_outdir_free(&d);                           // unlock
 *
 * Every refusal is an error naming the path and saying what to do; nothing a
 * run did not create (or was not told to replace with --force) is removed.
 */
#ifndef GQ_OUTDIR_H
#define GQ_OUTDIR_H

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char *out;      /* --out, trailing slashes removed */
    char *lock;     /* OUT.lock */
    char *partial;  /* OUT.partial */
    char *tmp;      /* OUT.tmp.<pid> */
    int locked;     /* this process holds OUT.lock */
    int out_existed;    /* OUT existed when checked (and may be replaced: --force) */
    dev_t out_dev;  /* its identity then */
    ino_t out_ino;
} gq_outdir;

void gq_outdir_init(gq_outdir *d, const char *out);
void gq_outdir_free(gq_outdir *d); /* releases the lock if held */

/* Refuse an OUT (or OUT.partial, OUT.lock) that is, contains or lies inside
 * one of the inputs, after resolving links; inputs may be files or directories. */
int gq_outdir_check_inputs(const gq_outdir *d, const char *const *inputs, int n_inputs);
/* With the lock held: refuse an existing OUT without `force` and, even with
 * it, one that is not a checkpoint gq wrote (no gq_report.json /
 * quantize_config.json) and not empty; remember its identity for the install. */
int gq_outdir_check_existing(gq_outdir *d, int force);

/* Take OUT.lock. A lock held by a live process (or by another host, which
 * cannot be checked) is refused; one left by a dead process on this host is
 * refused too unless `take_stale`, and then taken over with a warning. */
int gq_outdir_lock(gq_outdir *d, int take_stale);

/* With the lock held: remove OUT.tmp.<n> directories and temporary files
 * inside OUT.partial left by runs that died; an OUT.old.<n> left between the
 * two renames of a replacement is put back as OUT if OUT is missing. */
int gq_outdir_clean(gq_outdir *d);

/* Rename d->tmp to OUT: with RENAME_NOREPLACE where OUT did not exist, by an
 * atomic exchange where it did (and is still the directory checked at the
 * start). Anything else at OUT is left alone and reported; d->tmp is then
 * removed and OUT.partial kept, so --resume writes the output again. */
int gq_outdir_install(gq_outdir *d);

/* Canonical absolute path of `path`, resolving links in its longest existing
 * prefix and "." / ".." lexically after it (the rest does not exist yet). */
char *gq_path_resolve(const char *path);
/* 1 when `a` is `b` or lies inside it (canonical paths). */
int gq_path_within(const char *a, const char *b);

#ifdef __cplusplus
}
#endif
#endif /* GQ_OUTDIR_H */
