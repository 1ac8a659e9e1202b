/* test_outdir.c -- owning an output directory (gq/outdir.h): path relations,
 * the lock (live, stale, foreign, reused pid), leftovers of dead runs, and the
 * final rename that never replaces what the run did not check. Each case is one
 * of the ways `gq quantize` lost data before this module existed. */
#include <sys/stat.h>
#include <sys/wait.h>

#include "gq/outdir.h"
#include "test.h"

static char root[1024];

static char *at(const char *name) { return gq_path_join(root, name); }

static void touch(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_resolve(void) {
    TEST_BEGIN("resolve");
    char *m = at("model");
    gq_mkdirs(m);
    char *link = at("link");
    (void)symlink(m, link);
    char *r1 = gq_path_resolve(m);
    char *p2 = at("link/../model/new/x/..");
    char *r2 = gq_path_resolve(p2);
    char *want2 = gq_path_join(r1, "new");
    TEST_CHECK(!strcmp(r2, want2), "a link, '..' and a missing tail resolve to %s, got %s", want2, r2);
    TEST_CHECK(gq_path_within(r2, r1) && !gq_path_within(r1, r2), "model/new lies inside model, not the reverse");
    TEST_CHECK(!gq_path_within("/a/bc", "/a/b"), "/a/bc is not inside /a/b (component boundary)");
    TEST_CHECK(gq_path_within("/a/b", "/") && gq_path_within("/a/b", "/a/b"), "everything is inside /; a path is itself");
    char *rel = gq_path_resolve("tests/../tests/data");
    TEST_CHECK(rel[0] == '/' && strstr(rel, "/tests/data") && !strstr(rel, ".."), "relative paths become absolute: %s",
               rel);
    free(rel), free(r1), free(r2), free(p2), free(want2), free(link), free(m);
}

static void test_inputs(void) {
    TEST_BEGIN("inputs");
    char *m = at("model");
    char *calib = at("calib.jsonl");
    touch(calib, "{}\n");
    const char *inputs[2] = {m, calib};
    struct {
        const char *out, *what;
    } bad[] = {
        {"model", "is the input"},      {"model/", "is the input"},      {"model/sub", "lies inside the input"},
        {".", "contains the input"},    {"link", "is the input"},        {"link/../model/q", "lies inside the input"},
        {"calib.jsonl", "is the input"}, {"/", "contains the input"},
    };
    char cwd[1024];
    (void)!getcwd(cwd, sizeof cwd);
    (void)!chdir(root);
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        gq_outdir d;
        gq_outdir_init(&d, bad[i].out);
        TEST_FAILS(gq_outdir_check_inputs(&d, inputs, 2), GQ_ERR_ARG, bad[i].what);
        gq_outdir_free(&d);
    }
    /* OUT.partial or OUT.lock being the model: "model" = "m.partial" */
    gq_outdir d;
    char *mp = at("m.partial");
    gq_mkdirs(mp);
    const char *in2[1] = {mp};
    gq_outdir_init(&d, "m");
    TEST_FAILS(gq_outdir_check_inputs(&d, in2, 1), GQ_ERR_ARG, "m.partial");
    gq_outdir_free(&d);
    gq_outdir_init(&d, "q");
    TEST_OK(gq_outdir_check_inputs(&d, inputs, 2), "an --out beside the model is fine");
    gq_outdir_free(&d);
    (void)!chdir(cwd);
    free(mp), free(m), free(calib);
}

static void test_existing(void) {
    TEST_BEGIN("existing");
    char *q = at("q"), *f = at("q/user-file.txt");
    gq_mkdirs(q);
    touch(f, "mine");
    gq_outdir d;
    gq_outdir_init(&d, q);
    TEST_FAILS(gq_outdir_check_existing(&d, 0), GQ_ERR_EXISTS, "use --force");
    TEST_FAILS(gq_outdir_check_existing(&d, 1), GQ_ERR_EXISTS, "neither empty nor a quantized checkpoint");
    TEST_CHECK(gq_path_exists(f), "the user's file is still there");
    char *rep = at("q/gq_report.json");
    touch(rep, "{}");
    TEST_OK(gq_outdir_check_existing(&d, 1), "--force replaces a checkpoint gq wrote");
    TEST_CHECK(d.out_existed, "its identity is kept for the install");
    gq_outdir_free(&d);
    gq_rmtree(q);
    free(q), free(f), free(rep);
}

static void write_lock(const char *path, long pid, long long start, const char *host) {
    char text[512];
    snprintf(text, sizeof text, "gq quantize output lock\npid %ld\nstart %lld\nhost %s\nsince 2026-01-01T00:00:00Z\n",
             pid, start, host);
    touch(path, text);
}

static long dead_pid(void) {
    pid_t p = fork();
    if (p == 0) _exit(0);
    waitpid(p, NULL, 0);
    return (long)p; /* reaped: no such process (until the pid is reused, which the start time catches) */
}

static void test_lock(void) {
    TEST_BEGIN("lock");
    char *q = at("lq");
    gq_outdir a, b;
    gq_outdir_init(&a, q);
    gq_outdir_init(&b, q);
    TEST_OK(gq_outdir_lock(&a, 0), "the first run takes the lock");
    TEST_FAILS(gq_outdir_lock(&b, 1), GQ_ERR_EXISTS, "in use by another gq run");
    gq_outdir_free(&a);
    TEST_CHECK(!gq_path_exists(b.lock), "the lock is gone when its run ends");
    TEST_OK(gq_outdir_lock(&b, 0), "then the next run takes it");
    gq_outdir_free(&b);

    char host[256];
    gethostname(host, sizeof host);
    char *lock = gq_path_join(root, "lq.lock");
    long dead = dead_pid();
    write_lock(lock, dead, 0, host);
    gq_outdir_init(&a, q);
    TEST_FAILS(gq_outdir_lock(&a, 0), GQ_ERR_EXISTS, "no longer running; --resume continues its work");
    TEST_CHECK(gq_path_exists(lock), "a stale lock is not broken without --resume or --force");
    TEST_OK(gq_outdir_lock(&a, 1), "--resume/--force take a stale lock over (with a warning)");
    gq_outdir_free(&a);
    /* this process's pid with another start time: the pid was reused, the lock is stale */
    write_lock(lock, (long)getpid(), 1, host);
    gq_outdir_init(&a, q);
    TEST_FAILS(gq_outdir_lock(&a, 0), GQ_ERR_EXISTS, "no longer running");
    gq_outdir_free(&a);
    unlink(lock);
    write_lock(lock, 1, 0, "another-host.example");
    gq_outdir_init(&a, q);
    TEST_FAILS(gq_outdir_lock(&a, 1), GQ_ERR_EXISTS, "cannot be checked from");
    gq_outdir_free(&a);
    touch(lock, "garbage");
    gq_outdir_init(&a, q);
    TEST_FAILS(gq_outdir_lock(&a, 1), GQ_ERR_EXISTS, "cannot read");
    TEST_CHECK(gq_path_exists(lock), "an unreadable lock is left for a person to judge");
    gq_outdir_free(&a);
    unlink(lock);
    free(lock), free(q);
}

static void test_clean(void) {
    TEST_BEGIN("clean");
    char *q = at("cq"), *tmp = at("cq.tmp.99999"), *tmpf = at("cq.tmp.99999/model.safetensors"), *old = at("cq.old.4242"),
         *oldf = at("cq.old.4242/gq_report.json"), *part = at("cq.partial"),
         *ptmp = at("cq.partial/layer-00001.safetensors.tmp.777"), *pkeep = at("cq.partial/layer-00000.safetensors"),
         *other = at("cq.tmp.notapid"), *dtmp = at("cq.partial/.model-00001.777.3.data.tmp");
    gq_mkdirs(tmp);
    touch(tmpf, "x");
    gq_mkdirs(old);
    touch(oldf, "{}");
    gq_mkdirs(part);
    touch(ptmp, "x");
    touch(dtmp, "x");
    touch(pkeep, "layer 0");
    gq_mkdirs(other);
    gq_outdir d;
    gq_outdir_init(&d, q);
    TEST_OK(gq_outdir_lock(&d, 0), "lock");
    TEST_OK(gq_outdir_clean(&d), "clean");
    TEST_CHECK(!gq_path_exists(tmp), "a dead run's OUT.tmp.<pid> is removed");
    TEST_CHECK(gq_path_exists(oldf) == 0 && gq_is_dir(q), "an OUT.old.<pid> is put back where OUT was missing");
    char *back = at("cq/gq_report.json");
    TEST_CHECK(gq_path_exists(back), "with its files");
    TEST_CHECK(!gq_path_exists(ptmp) && !gq_path_exists(dtmp), "temporary files inside OUT.partial are removed");
    TEST_CHECK(gq_path_exists(pkeep), "finished layers inside OUT.partial stay");
    TEST_CHECK(gq_path_exists(other), "names that are not ours (no pid) stay");
    gq_outdir_free(&d);
    gq_rmtree(q), gq_rmtree(part), gq_rmtree(other);
    free(q), free(tmp), free(tmpf), free(old), free(oldf), free(part), free(ptmp), free(pkeep), free(other), free(back),
        free(dtmp);
}

static void test_install(void) {
    TEST_BEGIN("install");
    char *q = at("iq"), *user = at("iq/user.txt"), *rep = at("iq/gq_report.json");
    gq_outdir d;
    /* OUT absent at the start, created by someone else before the rename */
    gq_outdir_init(&d, q);
    TEST_OK(gq_outdir_check_existing(&d, 0), "OUT absent");
    gq_mkdirs(d.tmp);
    gq_mkdirs(q);
    touch(user, "theirs");
    TEST_FAILS(gq_outdir_install(&d), GQ_ERR_EXISTS, "appeared while this run worked");
    TEST_CHECK(gq_path_exists(user), "what appeared is left alone");
    TEST_CHECK(!gq_path_exists(d.tmp), "the run's assembly directory is removed (its work stays in OUT.partial)");
    gq_outdir_free(&d);
    gq_rmtree(q);

    /* OUT a gq checkpoint at the start (--force), replaced by another directory before the rename */
    gq_mkdirs(q);
    touch(rep, "{}");
    gq_outdir_init(&d, q);
    TEST_OK(gq_outdir_check_existing(&d, 1), "OUT is a gq checkpoint");
    char *aside = at("iq-moved");
    (void)!rename(q, aside);
    gq_mkdirs(q);
    touch(user, "theirs");
    gq_mkdirs(d.tmp);
    TEST_FAILS(gq_outdir_install(&d), GQ_ERR_EXISTS, "replaced by something else");
    TEST_CHECK(gq_path_exists(user), "the replacement is left alone");
    gq_outdir_free(&d);
    gq_rmtree(q);
    gq_rmtree(aside);

    /* the normal cases: OUT absent; OUT the checkpoint checked at the start */
    gq_outdir_init(&d, q);
    TEST_OK(gq_outdir_check_existing(&d, 0), "OUT absent");
    gq_mkdirs(d.tmp);
    char *mark = gq_path_join(d.tmp, "gq_report.json");
    touch(mark, "{\"new\": 1}");
    TEST_OK(gq_outdir_install(&d), "rename to a missing OUT");
    TEST_CHECK(gq_path_exists(rep) && !gq_path_exists(d.tmp), "OUT holds the new output");
    gq_outdir_free(&d);
    gq_outdir_init(&d, q);
    TEST_OK(gq_outdir_check_existing(&d, 1), "OUT is the previous output");
    gq_mkdirs(d.tmp);
    free(mark);
    mark = gq_path_join(d.tmp, "model.safetensors");
    touch(mark, "new");
    TEST_OK(gq_outdir_install(&d), "exchange with the checked OUT");
    char *nm = at("iq/model.safetensors");
    TEST_CHECK(gq_path_exists(nm) && !gq_path_exists(rep) && !gq_path_exists(d.tmp),
               "OUT is the new output, the old one is gone");
    gq_outdir_free(&d);
    gq_rmtree(q);
    free(q), free(user), free(rep), free(aside), free(mark), free(nm);
}

int main(void) {
    snprintf(root, sizeof root, "%s", gq_test_tmpdir("outdir"));
    gq_rmtree(root);
    gq_mkdirs(root);
    char *r = gq_path_resolve(root);
    snprintf(root, sizeof root, "%s", r);
    free(r);
    test_resolve();
    test_inputs();
    test_existing();
    test_lock();
    test_clean();
    test_install();
    gq_rmtree(root);
    return TEST_REPORT();
}
