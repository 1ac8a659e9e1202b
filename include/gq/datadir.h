/*
 * gq/datadir.h -- where gq finds the data it ships (the calibration sets in calib/).
 *
 * A data file is named by its path relative to the data directory, as in the
 * source tree: gq_data_path("calib/python-sitepackages.jsonl"). The data
 * directory is, in this order:
 *   1. $GQ_DATA_DIR, when set and not empty (used as given: no fallback);
 *   2. <directory of the gq binary>/../share/gq  (`make install` puts it there);
 *   3. <directory of the gq binary>/..           (build/gq in a source tree);
 *   4. the working directory                      (gq's behaviour before 0.3).
 * Candidates 2-4 count only where the file exists. The binary's directory
 * comes from /proc/self/exe, so an installed tree can be moved (DESTDIR).
 */
#ifndef GQ_DATADIR_H
#define GQ_DATADIR_H

#ifdef __cplusplus
extern "C" {
#endif

/* Newly allocated path of the data file `rel`, or NULL when no candidate
 * holds it (then gq_data_not_found() makes the error message). */
char *gq_data_path(const char *rel);
/* Record GQ_ERR_IO "<rel>: not found in <the candidates>" and return it. */
int gq_data_not_found(const char *rel);

#ifdef __cplusplus
}
#endif
#endif /* GQ_DATADIR_H */
