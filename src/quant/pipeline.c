/* pipeline.c -- the layer-by-layer quantization driver (gq/quantize.h). */
#include <errno.h>
#include <pthread.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gq/backend.h"
#include "gq/dp.h"
#include "gq/export.h"
#include "gq/knobs.h"
#include "gq/model.h"
#include "gq/outdir.h"
#include "gq/qlayer.h"
#include "gq/quantize.h"
#include "gq/tokenizer.h"

void gq_quant_opts_default(gq_quant_opts *o) {
    memset(o, 0, sizeof *o);
    gq_gptq_params_default(&o->gptq);
    /* gq's default profile (docs/accuracy.md, "Fidelity"): act-order with static groups, so g_idx stays
     * trivial and the output plain v1, and the group scale search; the GPTQ paper's setting is
     * act_order = static_groups = 0, clip = GQ_CLIP_MINMAX */
    o->gptq.act_order = 1;
    o->gptq.static_groups = 1;
    o->gptq.clip = GQ_CLIP_MSE;
    o->device = "auto";
    o->precision = "auto";
    o->nsamples = 128;
    o->seqlen = 2048;
    o->windowing = GQ_WIN_AUTO;
    o->min_tokens = 32;
    o->moe_min_tokens = 16;
    o->max_shard_mb = 4096;
}

void gq_quant_report_free(gq_quant_report *r) {
    if (!r) return;
    free(r->modules);
    memset(r, 0, sizeof *r);
}

/* ---- run state -------------------------------------------------------------- */

/* The export of a quantized layer on its own thread while the next layer computes: the layer
 * file, then the state file that marks the layer done (its text made on the calling thread, so
 * the thread reads nothing the run changes). One at a time: the next export (and the end of the
 * run) waits for it first, so the state files stay in layer order. The thread owns its inputs. */
typedef struct {
    pthread_t th;
    int active, threaded;
    const gq_model *m;
    char *lpath, *spath, *state;
    int layer, n, bits, v2;
    gq_module *mods; /* [n] */
    gq_qresult *res; /* [n] */
    int rc;          /* outputs */
    char msg[1024];
    double secs;
} export_job;

/* The next layer's weights loaded onto the device while a layer computes (one device, GPTQ;
 * GQ_LOAD_AHEAD): a fork of the backend on its own thread loads them and synchronises, the layer
 * then runs on them, and they are released through the fork. */
typedef struct {
    pthread_t th;
    int active;     /* a thread is loading `layer` */
    gq_backend *be; /* the fork; NULL: each layer loaded when it starts */
    const gq_model *m;
    int layer, rc;
    gq_blayer bl;
    char msg[1024];
} loader_t;

typedef struct {
    const gq_quant_opts *o;
    gq_quant_report *rep;
    gq_model m;
    /* one device: be[0], q[0]; several (--device cuda:0,1,..., gq/dp.h): rank k's backend and
     * qlayer over its share of the sequences (sequences first[k] .. first[k + 1] - 1) */
    int ranks;
    gq_backend *be[GQ_DP_MAX_RANKS];
    gq_qlayer q[GQ_DP_MAX_RANKS];
    int first[GQ_DP_MAX_RANKS + 1];
    gq_dp *dp;
    gq_calib_set cs;
    gq_outdir od;
    char *model_real, *calib_real; /* resolved paths (the --resume fingerprint) */
    const char *partial;           /* od.partial */
    int last_layer_modules;        /* modules of the layer just quantized */
    export_job ex;                 /* the layer file being written while the next layer computes */
    double t_export_work;          /* seconds the export threads worked (ex.secs summed) */
    int resume_chunk;              /* --resume: the interrupted run's chunk tokens (state.json), 0: none */
    int stop;                      /* layers to run (--max-layers) */
    loader_t ld;                   /* the next layer's weights */
} run_t;

static void loader_free(run_t *r);

/* Report a module. */
static void add_module(run_t *r, int layer, const char *name, const gq_qresult *res) {
    gq_quant_report *rep = r->rep;
    rep->modules = gq_realloc(rep->modules, (size_t)(rep->n_modules + 1) * sizeof *rep->modules);
    gq_module_report *mr = &rep->modules[rep->n_modules++];
    memset(mr, 0, sizeof *mr);
    mr->layer = layer;
    snprintf(mr->name, sizeof mr->name, "%s", name);
    mr->rows = res->rows;
    mr->cols = res->cols;
    mr->loss = res->loss;
    mr->damp = res->damp_used;
    mr->retries = res->retries;
    mr->fallback = res->fallback;
    mr->n_dead = res->n_dead;
    mr->seconds = res->seconds;
    if (res->fallback) rep->n_fallback++;
}

/* ---- fingerprint for --resume ------------------------------------------------- */

/* Everything that changes the numbers: inputs (resolved paths, the calibration file's size and
 * time), settings, the arithmetic (backend and its kernel set, precision) and the knobs. */
static char *fingerprint(const run_t *r) {
    const gq_quant_opts *o = r->o;
    const gq_gptq_params *p = &o->gptq;
    struct stat st;
    long long csize = 0, cmtime = 0;
    if (stat(o->calib_path, &st) == 0) {
        csize = (long long)st.st_size;
        cmtime = (long long)st.st_mtime;
    }
    char knobs[256];
    gq_knobs_str(knobs, sizeof knobs, 1);
    json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:i, s:i, s:i, s:i, s:I}",
                          "model", r->model_real, "calib", r->calib_real, "calib_size", csize, "calib_mtime", cmtime,
                          "nsamples", o->nsamples, "seqlen", o->seqlen, "windowing", (int)r->cs.windowing, "method",
                          (int)p->method, "bits", p->bits, "group_size", p->group_size, "sym", p->sym, "act_order",
                          p->act_order, "damp", p->damp, "static_groups", p->static_groups, "zero_policy",
                          (int)p->zero_policy, "v2", o->v2, "block_size", p->block_size, "calib_tokens",
                          (json_int_t)r->cs.n_tokens);
    json_object_set_new(j, "arithmetic", json_string(r->rep->arith));
    json_object_set_new(j, "moe_min_tokens", json_integer(o->moe_min_tokens));
    json_object_set_new(j, "calib_seed", json_integer((json_int_t)o->calib_seed));
    json_object_set_new(j, "hessian_skip", json_integer(o->hessian_skip));
    json_object_set_new(j, "clip", json_pack("{s:s, s:i, s:f, s:f}", "mode", gq_clip_name(p->clip), "grid",
                                             p->clip_grid, "maxshrink", p->clip_maxshrink, "norm",
                                             (double)p->clip_norm));
    /* the CPU's sums depend on how OpenBLAS splits them: 2 threads and 1 differ in the last bits (11.5586 vs
     * 11.5480 on pycoder-5m GPTQ sym, docs/testing.md) */
    if (!gq_backend_is_gpu(r->be[0])) json_object_set_new(j, "cpu_threads", json_integer(gq_get_threads()));
    /* several devices sum the Hessians in another order (only then: the key is new) */
    if (r->ranks > 1) json_object_set_new(j, "devices", json_integer(r->ranks));
    json_object_set_new(j, "precision", json_string(r->rep->precision));
    json_object_set_new(j, "knobs", json_string(knobs));
    char *s = json_dumps(j, JSON_SORT_KEYS | JSON_COMPACT);
    json_decref(j);
    return s;
}

/* "bits: 4 now, 3 then; ..." for the keys whose values differ. */
static void fingerprint_diff(const char *now, const char *then, char *buf, size_t cap) {
    json_t *a = json_loads(now, 0, NULL), *b = json_loads(then, 0, NULL);
    size_t len = 0;
    buf[0] = 0;
    const char *key;
    json_t *va;
    json_object_foreach(a, key, va) {
        json_t *vb = b ? json_object_get(b, key) : NULL;
        if (vb && json_equal(va, vb)) continue;
        char *sa = json_dumps(va, JSON_ENCODE_ANY), *sb = vb ? json_dumps(vb, JSON_ENCODE_ANY) : NULL;
        if (len < cap)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s: %s now, %s then", len ? "; " : "", key, sa,
                                    sb ? sb : "(absent)");
        free(sa);
        free(sb);
    }
    json_t *vb;
    json_object_foreach(b, key, vb) { /* keys only the interrupted run has */
        if (a && json_object_get(a, key)) continue;
        char *sb = json_dumps(vb, JSON_ENCODE_ANY);
        if (len < cap)
            len += (size_t)snprintf(buf + len, cap - len, "%s%s: (absent) now, %s then", len ? "; " : "", key, sb);
        free(sb);
    }
    json_decref(a);
    json_decref(b);
}

static json_t *modules_json(const gq_quant_report *rep) {
    json_t *arr = json_array();
    for (int i = 0; i < rep->n_modules; i++) {
        const gq_module_report *m = &rep->modules[i];
        json_array_append_new(arr, json_pack("{s:i, s:s, s:i, s:i, s:f, s:f, s:i, s:i, s:i, s:f}", "layer", m->layer,
                                             "name", m->name, "rows", m->rows, "cols", m->cols, "loss", m->loss,
                                             "damp", m->damp, "retries", m->retries, "fallback", m->fallback,
                                             "n_dead", m->n_dead, "seconds", m->seconds));
    }
    return arr;
}

/* The module records of the layers an interrupted run finished, back into the report. */
static int restore_modules(run_t *r, json_t *arr, int done, const char *path) {
    size_t i;
    json_t *m;
    json_array_foreach(arr, i, m) {
        gq_qresult res;
        memset(&res, 0, sizeof res);
        json_t *name = json_object_get(m, "name");
        int layer = (int)json_integer_value(json_object_get(m, "layer"));
        if (!json_is_string(name) || layer < 0 || layer >= done)
            return gq_err(GQ_ERR_FORMAT, "%s: modules[%zu]: expected a module of layers 0..%d", path, i, done - 1);
        res.rows = (int)json_integer_value(json_object_get(m, "rows"));
        res.cols = (int)json_integer_value(json_object_get(m, "cols"));
        res.loss = json_number_value(json_object_get(m, "loss"));
        res.damp_used = json_number_value(json_object_get(m, "damp"));
        res.retries = (int)json_integer_value(json_object_get(m, "retries"));
        res.fallback = (int)json_integer_value(json_object_get(m, "fallback"));
        res.n_dead = (int)json_integer_value(json_object_get(m, "n_dead"));
        res.seconds = json_number_value(json_object_get(m, "seconds"));
        add_module(r, layer, json_string_value(name), &res);
    }
    return GQ_OK;
}

static int read_state(run_t *r, const char *fp, int *done) {
    char *path = gq_path_join(r->partial, "state.json");
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    int rc = GQ_OK;
    *done = 0;
    if (!j) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: cannot read resume state: %s", path, je.text);
        goto out;
    }
    json_t *f = json_object_get(j, "fingerprint");
    json_t *d = json_object_get(j, "layers_done");
    json_t *mods = json_object_get(j, "modules");
    if (!json_is_string(f) || !json_is_integer(d) || json_integer_value(d) < 0 ||
        json_integer_value(d) > r->m.cfg.n_layers || (mods && !json_is_array(mods))) {
        rc = gq_err(GQ_ERR_FORMAT, "%s: expected \"fingerprint\", \"layers_done\" (0..%d) and \"modules\"", path,
                    r->m.cfg.n_layers);
        goto out;
    }
    if (strcmp(json_string_value(f), fp) != 0) {
        char diff[2048];
        fingerprint_diff(fp, json_string_value(f), diff, sizeof diff);
        rc = gq_err(GQ_ERR_ARG,
                    "%s: the interrupted run used other settings, inputs or arithmetic (%s); resuming would not give "
                    "the output of one uninterrupted run. Rerun with its settings, or discard it with --force",
                    path, diff);
        goto out;
    }
    *done = (int)json_integer_value(d);
    /* the chunks fix the Hessians' summation order: a resumed run cuts the interrupted run's */
    json_t *ck = json_object_get(j, "chunk_tokens");
    r->resume_chunk = json_is_integer(ck) && json_integer_value(ck) > 0 ? (int)json_integer_value(ck) : 0;
    if (mods) rc = restore_modules(r, mods, *done, path);
out:
    json_decref(j);
    free(path);
    return rc;
}

/* state.json's text: the fingerprint, the layers done and the modules reported so far. */
static char *state_text(const run_t *r, const char *fp, int done) {
    json_t *j = json_pack("{s:s, s:i, s:o}", "fingerprint", fp, "layers_done", done, "modules", modules_json(r->rep));
    if (r->q[0].chunk_tokens > 0) json_object_set_new(j, "chunk_tokens", json_integer(r->q[0].chunk_tokens));
    char *s = json_dumps(j, JSON_INDENT(2));
    json_decref(j);
    return s;
}

static int write_state(run_t *r, const char *fp, int done) {
    char *path = gq_path_join(r->partial, "state.json"), *s = state_text(r, fp, done);
    int rc = gq_write_file_atomic(path, s, strlen(s));
    free(s);
    free(path);
    return rc;
}

static void *export_main(void *arg) {
    export_job *x = arg;
    double t0 = gq_now();
    x->rc = gq_export_layer_file(x->lpath, x->m, x->layer, x->mods, x->n, x->res, x->bits, x->v2);
    if (!x->rc) x->rc = gq_write_file_atomic(x->spath, x->state, strlen(x->state));
    if (x->rc) snprintf(x->msg, sizeof x->msg, "%s", gq_errmsg());
    x->secs = gq_now() - t0;
    return NULL;
}

/* Wait for the export in flight (none: GQ_OK) and free its layer; its status, with its message. */
static int export_wait(run_t *r) {
    export_job *x = &r->ex;
    if (!x->active) return GQ_OK;
    double t0 = gq_now();
    if (x->threaded) pthread_join(x->th, NULL);
    /* the wait (the rest ran beside the computation); in line: all of it */
    r->rep->t_export += x->threaded ? gq_now() - t0 : x->secs;
    r->t_export_work += x->secs;
    for (int k = 0; k < x->n; k++) gq_qresult_free(&x->res[k]);
    free(x->res), free(x->mods), free(x->lpath), free(x->spath), free(x->state);
    int rc = x->rc;
    char msg[sizeof x->msg];
    memcpy(msg, x->msg, sizeof msg);
    memset(x, 0, sizeof *x);
    return rc ? gq_err(rc, "%s", msg) : GQ_OK;
}

/* Export layer l (its n modules' results, owned from here on) beside the next layer's work, once
 * the previous export is done. */
static int export_start(run_t *r, int l, const char *lpath, const char *fp, gq_module *mods, int n,
                        gq_qresult *res) {
    int rc = export_wait(r);
    export_job *x = &r->ex;
    x->m = &r->m, x->layer = l, x->n = n, x->mods = mods, x->res = res;
    x->bits = r->o->gptq.bits, x->v2 = r->o->v2;
    x->active = 1;
    if (rc) return rc; /* freed by the next export_wait */
    x->lpath = gq_strdup(lpath);
    x->spath = gq_path_join(r->partial, "state.json");
    x->state = state_text(r, fp, l + 1);
    x->threaded = pthread_create(&x->th, NULL, export_main, x) == 0;
    if (!x->threaded) export_main(x); /* no thread: in line */
    return GQ_OK;
}

/* ---- setup ------------------------------------------------------------------------ */

static int embed_calibration(run_t *r) {
    int rc = GQ_OK;
    int T_max = 0;
    for (int k = 0; k < r->ranks; k++) T_max = r->q[k].T_max > T_max ? r->q[k].T_max : T_max;
    float *e = gq_malloc((size_t)T_max * r->m.cfg.hidden * sizeof(float));
    for (int i = 0, k = 0; i < r->cs.n && !rc; i++) {
        int T = r->cs.len[i];
        rc = gq_model_embed(&r->m, r->cs.seq[i], T, e);
        if (rc) {
            gq_err_prefix("calibration sample %d", i);
            break;
        }
        while (i >= r->first[k + 1]) k++; /* the rank whose share holds sequence i */
        rc = gq_qlayer_set_x(&r->q[k], i - r->first[k], e);
    }
    free(e);
    return rc;
}

static void print_settings(const gq_quant_opts *o) {
    const gq_gptq_params *p = &o->gptq;
    gq_info("gq quantize: effective settings");
    gq_info("  %-16s %s", "model", o->model_dir ? o->model_dir : "(none)");
    gq_info("  %-16s %s", "out", o->out_dir ? o->out_dir : "(none)");
    gq_info("  %-16s %s", "calib", o->calib_path ? o->calib_path : "(none)");
    gq_info("  %-16s %s", "method", p->method == GQ_METHOD_RTN ? "rtn" : "gptq");
    gq_info("  %-16s %d", "bits", p->bits);
    gq_info("  %-16s %d", "group-size", p->group_size);
    gq_info("  %-16s %s", "scheme", p->sym ? "sym (zero = 2^(bits-1))" : "asym (zero points)");
    gq_info("  %-16s %s", "act-order", p->act_order ? "yes" : "no");
    gq_info("  %-16s %s", "static-groups", p->static_groups ? "yes" : "no");
    gq_info("  %-16s %s", "clip", p->clip == GQ_CLIP_MSE     ? "mse (scale search, |err|^2.4)"
                                  : p->clip == GQ_CLIP_MSE_H ? "mse-h (scale search, diag(H)-weighted |err|^2.4)"
                                                             : "minmax");
    gq_info("  %-16s %g", "damp", p->damp);
    gq_info("  %-16s %d", "block-size", p->block_size);
    gq_info("  %-16s %d x %d (%s)", "calibration", o->nsamples, o->seqlen,
            o->windowing == GQ_WIN_CONCAT   ? "concat"
            : o->windowing == GQ_WIN_SAMPLE ? "sample"
                                            : "auto");
    if (o->calib_seed)
        gq_info("  %-16s %llu (records shuffled)", "calib-seed", (unsigned long long)o->calib_seed);
    else
        gq_info("  %-16s %s", "calib-seed", "0 (records in file order)");
    gq_info("  %-16s %d", "hessian-skip", o->hessian_skip);
    gq_info("  %-16s %s", "format", o->v2 ? "gptq_v2 (true zeros)" : "gptq (AutoGPTQ v1)");
    gq_info("  %-16s %s", "order", "true-sequential [q,k,v] -> [o] -> [gate,up] -> [down]");
    gq_info("  %-16s %d (MoE: an expert with fewer routed tokens is rounded to nearest)", "moe-min-tokens",
            o->moe_min_tokens);
    gq_info("  %-16s %s", "device", o->device ? o->device : "auto");
    gq_info("  %-16s %s", "precision", o->precision ? o->precision : "auto");
    gq_info("  %-16s %d", "threads", gq_get_threads());
    gq_info("  %-16s %s", "resume", o->resume ? "yes" : "no");
    char knobs[256];
    gq_knobs_str(knobs, sizeof knobs, 0);
    gq_info("  %-16s %s", "environment", knobs[0] ? knobs : "(no GQ_* knobs set)");
}

/* Before any loading: --out against the inputs, the lock, an existing OUT, leftovers of dead runs. */
static int claim_output(run_t *r) {
    const gq_quant_opts *o = r->o;
    gq_outdir_init(&r->od, o->out_dir);
    r->partial = r->od.partial;
    const char *inputs[2] = {o->model_dir, o->gptq.method == GQ_METHOD_RTN ? NULL : o->calib_path};
    int rc = gq_outdir_check_inputs(&r->od, inputs, 2);
    if (!rc) rc = gq_outdir_lock(&r->od, o->force || o->resume);
    if (!rc) rc = gq_outdir_check_existing(&r->od, o->force);
    if (!rc) rc = gq_outdir_clean(&r->od);
    return rc;
}

/* layers_done of an unfinished run's state.json, -1 if it has none (for messages). */
static int partial_layers(const char *partial) {
    char *path = gq_path_join(partial, "state.json");
    json_t *j = json_load_file(path, 0, NULL);
    free(path);
    int done = j && json_is_integer(json_object_get(j, "layers_done"))
                   ? (int)json_integer_value(json_object_get(j, "layers_done"))
                   : -1;
    json_decref(j);
    return done;
}

/* An unfinished run in OUT.partial: continued with --resume, discarded with --force, else kept. */
static int prepare_partial(run_t *r, int *layers_done, char **fp) {
    const gq_quant_opts *o = r->o;
    *layers_done = 0;
    *fp = fingerprint(r);
    if (gq_is_dir(r->partial)) {
        int done = partial_layers(r->partial);
        char *state = gq_path_join(r->partial, "state.json");
        int ours = done >= 0 || !gq_path_exists(state);
        free(state);
        if (o->resume) {
            int rc = read_state(r, *fp, layers_done);
            if (rc) return rc;
            gq_info("resuming: %d of %d layers already quantized in %s", *layers_done, r->m.cfg.n_layers, r->partial);
            return GQ_OK;
        }
        if (!o->force)
            return gq_err(GQ_ERR_EXISTS,
                          "%s: an unfinished run (%d of %d layers done) is kept there; continue it with --resume, "
                          "or discard it with --force",
                          r->partial, done < 0 ? 0 : done, r->m.cfg.n_layers);
        if (!ours) return gq_err(GQ_ERR_EXISTS, "%s: not an unfinished gq run; move it away", r->partial);
        gq_info("discarding the unfinished run in %s (%d layers done; --force)", r->partial, done < 0 ? 0 : done);
        int rc = gq_rmtree(r->partial);
        if (rc) return rc;
    } else if (o->resume) {
        gq_info("--resume: nothing to resume in %s, starting from layer 0", r->partial);
    }
    int rc = gq_mkdirs(r->partial);
    if (!rc) rc = write_state(r, *fp, 0);
    return rc;
}

static int finish_output(run_t *r) {
    const char *tmp = r->od.tmp;
    int rc = gq_mkdirs(tmp);
    if (!rc) rc = gq_export_finish(&r->m, r->o, r->partial, tmp, r->rep);
    if (rc) {
        gq_rmtree(tmp);
        return rc;
    }
    if ((rc = gq_outdir_install(&r->od))) return rc;
    return gq_rmtree(r->partial);
}

/* Rank k's qlayer over its share (the whole set with one device). */
static int alloc_rank(run_t *r, int k) {
    gq_qlayer *q = &r->q[k];
    const int n = r->first[k + 1] - r->first[k];
    int rc = gq_qlayer_init(q, r->be[k], &r->m.cfg, n, r->cs.len + r->first[k]);
    if (rc) return r->ranks > 1 ? gq_err_prefix("device %d of %d", k, r->ranks) : rc;
    q->dp = r->dp, q->rank = k, q->seq0 = r->first[k], q->n_seq_all = r->cs.n;
    q->moe_min_tokens = r->o->moe_min_tokens;
    q->hessian_skip = r->o->hessian_skip;
    /* the chunks fix the summation order: --resume takes the interrupted run's, several devices rank 0's */
    const int want = r->resume_chunk ? r->resume_chunk : k > 0 ? r->q[0].chunk_tokens : 0;
    if (want && want != q->chunk_tokens) {
        if (r->resume_chunk && k == 0)
            gq_info("resuming with the interrupted run's chunks of %d tokens (this run would cut %d)", want,
                    q->chunk_tokens);
        if ((rc = gq_qlayer_set_chunk(q, want)))
            return gq_err_prefix("chunks of %d tokens (%s)", want, r->resume_chunk ? "--resume: as the interrupted run"
                                                                                   : "as on the first device");
    }
    char b[32];
    gq_info("calibration activations: %d sequences, %lld tokens, %s on %s", n, (long long)q->n_tokens,
            gq_fmt_bytes(b, sizeof b, (double)gq_qlayer_bytes(q)), gq_backend_name(r->be[k]));
    return GQ_OK;
}

static int alloc_buffers(run_t *r) {
    int rc = gq_qlayer_shares(r->cs.n, r->cs.len, r->ranks, r->first);
    for (int k = 0; k < r->ranks && !rc; k++) rc = alloc_rank(r, k);
    return rc;
}

static void free_run(run_t *r) {
    loader_free(r);
    for (int k = 0; k < r->ranks; k++) gq_qlayer_free(&r->q[k]);
    gq_dp_free(r->dp);
    for (int k = 0; k < r->ranks; k++) gq_backend_free(r->be[k]);
    gq_calib_free(&r->cs);
    gq_model_close(&r->m);
    gq_outdir_free(&r->od);
    free(r->model_real);
    free(r->calib_real);
}

/* The options alone, before anything is opened. */
static int check_settings(const gq_quant_opts *o) {
    const gq_gptq_params *p = &o->gptq;
    if (!o->model_dir || !o->out_dir || !o->calib_path)
        return gq_err(GQ_ERR_ARG, "quantize: the model, output and calibration paths must all be given (got %s, %s, %s)",
                      o->model_dir ? "a model" : "no model", o->out_dir ? "an output" : "no output",
                      o->calib_path ? "a calibration file" : "no calibration file (the CLI's default is the bundled "
                                                              "calib/python-sitepackages.jsonl; RTN does not read it)");
    if (p->bits != 2 && p->bits != 3 && p->bits != 4 && p->bits != 8)
        return gq_err(GQ_ERR_ARG, "--bits: expected 2, 3, 4 or 8, got %d", p->bits);
    if (p->group_size != -1 && p->group_size <= 0)
        return gq_err(GQ_ERR_ARG, "--group-size: expected -1 (one group per row) or a positive size, got %d",
                      p->group_size);
    if (o->nsamples <= 0 || o->seqlen <= 1)
        return gq_err(GQ_ERR_ARG, "--nsamples %d / --seqlen %d: expected positive values (seqlen >= 2)", o->nsamples,
                      o->seqlen);
    if (!(p->damp > 0) || p->damp > 10) return gq_err(GQ_ERR_ARG, "--damp: expected a value in (0, 10], got %g", p->damp);
    if (p->block_size <= 0) return gq_err(GQ_ERR_ARG, "--block-size: expected a positive size, got %d", p->block_size);
    if (p->static_groups && p->group_size == -1)
        return gq_err(GQ_ERR_ARG, "--static-groups needs a group size (got --group-size -1)");
    if (!(o->max_shard_mb >= 0))
        return gq_err(GQ_ERR_ARG, "--max-shard-mb: expected >= 0 (0: one file), got %g", o->max_shard_mb);
    if (o->min_tokens < 0) return gq_err(GQ_ERR_ARG, "--min-tokens: expected >= 0, got %d", o->min_tokens);
    if (o->moe_min_tokens < 0)
        return gq_err(GQ_ERR_ARG, "--moe-min-tokens: expected >= 0, got %d", o->moe_min_tokens);
    if (o->force && o->resume) return gq_err(GQ_ERR_ARG, "--force and --resume are exclusive");
    return GQ_OK;
}

/* The options against the model's shapes, before any weight is read. */
static int check_model_options(const gq_quant_opts *o, const gq_config *c) {
    const gq_gptq_params *p = &o->gptq;
    int cap = gq_layer_module_cap(c), rc = GQ_OK;
    gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
    /* every linear of every layer (dense and MoE layers differ): its input width divisible by the group
     * size, its widths packable at the bit width */
    for (int l = 0; l < c->n_layers && !rc; l++) {
        int n = gq_layer_modules(c, 0, l, mods, cap);
        for (int k = 0; k < n && !rc; k++) {
            const gq_module *m = &mods[k];
            if (p->group_size > 0 && m->cols % p->group_size)
                rc = gq_err(GQ_ERR_ARG,
                            "--group-size %d: expected -1 or a size that divides every linear's input width; "
                            "%s: layer %d %s has %d inputs (e.g. 32, 64 or 128 divide hidden %d)",
                            p->group_size, o->model_dir, l, m->name, m->cols, c->hidden);
            else if (gq_pack_check(m->rows, m->cols, p->bits))
                rc = gq_err_prefix("model %s: layer %d %s", o->model_dir, l, m->name);
        }
    }
    free(mods);
    if (rc) return rc;
    if (c->max_pos > 0 && o->seqlen > c->max_pos)
        gq_warn("--seqlen %d is past the model's context (max_position_embeddings %d): the calibration sees positions "
                "the model was not trained on",
                o->seqlen, c->max_pos);
    return GQ_OK;
}

typedef struct {
    const gq_model *m;
    int layer;
} prefetch_t;

static void *prefetch_main(void *arg) {
    const prefetch_t *p = arg;
    gq_model_prefetch_layer(p->m, p->layer);
    return NULL;
}

static int load_calibration(run_t *r) {
    const gq_quant_opts *o = r->o;
    gq_tokenizer *tok = NULL;
    int rc = gq_tok_load(&tok, o->model_dir);
    if (rc) return rc;
    gq_calib_opts co;
    gq_calib_opts_default(&co);
    co.path = o->calib_path;
    co.nsamples = o->nsamples;
    co.seqlen = o->seqlen;
    co.windowing = o->windowing;
    co.min_tokens = o->min_tokens;
    co.skip_bad = o->skip_bad;
    co.seed = o->calib_seed;
    rc = gq_calib_load(&r->cs, tok, &co);
    gq_tok_free(tok);
    if (rc) return rc;
    if (r->cs.n_bad) gq_warn("%s: skipped %ld bad lines (--skip-bad)", o->calib_path, r->cs.n_bad);
    gq_info("calibration: %d sequences, %lld tokens (%s windowing) from %s", r->cs.n, (long long)r->cs.n_tokens,
            r->cs.windowing == GQ_WIN_CONCAT ? "concat" : "sample", o->calib_path);
    r->rep->n_calib_tokens = r->cs.n_tokens;
    return GQ_OK;
}

/* A layer on every device: restored (lpath: the interrupted run's layer file, its quantized
 * weights) or quantized (res: the modules' results, filled by the devices that solve them). */
typedef struct {
    run_t *r;
    int l;
    const char *lpath;
    const gq_gptq_params *gp;
    gq_qresult *res;
    gq_blayer *pre; /* one device: the layer's weights, loaded ahead (the caller releases them) */
} layer_job;

/* Rank k's part: the layer's weights on its device, then its qlayer over its share. */
static int layer_rank(void *user, int k) {
    layer_job *j = user;
    run_t *r = j->r;
    gq_blayer bl;
    memset(&bl, 0, sizeof bl);
    double t0 = gq_now();
    int rc = GQ_OK;
    if (j->pre) {
        bl = *j->pre;
    } else if (j->lpath) {
        gq_st *ls = NULL;
        rc = gq_st_open(&ls, j->lpath);
        if (!rc)
            rc = gq_blayer_load_q(r->be[k], &r->m, j->l, ls, j->lpath, r->o->gptq.bits, r->o->gptq.group_size,
                                  r->o->v2, &bl);
        gq_st_close(ls);
    } else {
        rc = gq_blayer_load(r->be[k], &r->m, j->l, &bl);
    }
    if (k == 0) r->rep->t_load += gq_now() - t0;
    if (r->dp) rc = gq_dp_agree(r->dp, k, rc); /* every device has the layer, or none goes on */
    if (!rc) rc = gq_qlayer_run(&r->q[k], j->l, &bl, j->gp, j->res);
    if (!j->pre) gq_blayer_free(r->be[k], &bl);
    return rc;
}

/* ---- the next layer's weights ahead (loader_t) ------------------------------------------------ */

static void *loader_main(void *arg) {
    loader_t *L = arg;
    memset(&L->bl, 0, sizeof L->bl);
    L->rc = gq_backend_bind_thread(L->be);
    if (!L->rc) L->rc = gq_blayer_load(L->be, L->m, L->layer, &L->bl);
    if (!L->rc) L->rc = gq_be_sync(L->be); /* complete before another stream reads them */
    snprintf(L->msg, sizeof L->msg, "%s", L->rc ? gq_errmsg() : "");
    return NULL;
}

/* Device bytes of the largest layer's weights (in the activation dtype). */
static size_t layer_bytes(const run_t *r) {
    const gq_config *c = &r->m.cfg;
    int cap = gq_layer_module_cap(c);
    gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
    size_t most = 0;
    for (int l = 0; l < c->n_layers; l++) {
        size_t b = 0;
        int n = gq_layer_modules(c, 0, l, mods, cap);
        for (int k = 0; k < n; k++) b += (size_t)mods[k].rows * mods[k].cols;
        most = b > most ? b : most;
    }
    free(mods);
    return gq_be_act_bytes(r->be[0], most);
}

/* Whether to load ahead (GQ_LOAD_AHEAD: auto on one GPU with room for a second layer's weights
 * besides 1 GiB: the default; 1 on one device of any kind; 0 never), and its fork. */
static void loader_setup(run_t *r) {
    const int mode = gq_knobs_get()->load_ahead; /* 0 never, 1 auto, 2 always */
    gq_backend *be = r->be[0];
    if (r->ranks > 1 || mode == 0 || (mode == 1 && !gq_backend_is_gpu(be))) return;
    const size_t need = 2 * layer_bytes(r) + ((size_t)1 << 30), free_b = gq_be_free_bytes(be);
    char b1[32], b2[32];
    if (mode == 1 && free_b < need) {
        gq_info("each layer's weights are loaded when it starts: %s free on the device, %s wanted to load the next "
                "one ahead",
                gq_fmt_bytes(b1, sizeof b1, (double)free_b), gq_fmt_bytes(b2, sizeof b2, (double)need));
        return;
    }
    if (gq_backend_fork(be, &r->ld.be) != GQ_OK) {
        gq_warn("each layer's weights are loaded when it starts: a second stream to load the next one ahead "
                "failed (%s)",
                gq_errmsg());
        gq_err_clear();
        r->ld.be = NULL;
        return;
    }
    gq_info("each next layer's weights load onto the device while a layer computes (GQ_LOAD_AHEAD=%s)",
            mode == 1 ? "auto" : "1");
}

static void loader_start(run_t *r, int l) {
    loader_t *L = &r->ld;
    if (!L->be || L->active || l >= r->stop) return;
    L->m = &r->m;
    L->layer = l;
    L->active = pthread_create(&L->th, NULL, loader_main, L) == 0;
}

/* Wait for the loader: 1 and its weights in bl (the fork's) if it loaded layer l, the error if
 * that failed; 0 if it was loading none or another layer (those weights released). */
static int loader_join(run_t *r, int l, gq_blayer *bl) {
    loader_t *L = &r->ld;
    if (!L->active) return 0;
    pthread_join(L->th, NULL);
    L->active = 0;
    if (L->layer != l || L->rc) {
        if (!L->rc) gq_blayer_free(L->be, &L->bl);
        return L->layer == l ? gq_err(L->rc, "%s", L->msg) : 0;
    }
    *bl = L->bl;
    return 1;
}

/* One device: layer l's weights if the loader has them (1; 0: the layer loads them itself, < 0:
 * the loader's error), the wait counted as load; then the loader starts on layer l + 1. */
static int loader_take(run_t *r, int l, gq_blayer *bl) {
    double t0 = gq_now();
    int got = loader_join(r, l, bl);
    r->rep->t_load += gq_now() - t0;
    if (got >= 0) loader_start(r, l + 1);
    return got;
}

static void loader_free(run_t *r) {
    gq_blayer bl;
    loader_join(r, -1, &bl); /* (releases what it loaded; sets no error) */
    gq_backend_free(r->ld.be);
    r->ld.be = NULL;
}

/* The layer on the one device, or on every device at once. */
static int layer_run(run_t *r, layer_job *j) {
    return r->dp ? gq_dp_run(r->dp, layer_rank, j) : layer_rank(j, 0);
}

/* A layer finished by the interrupted run: its quantized weights, then its
 * forward over the calibration activations. */
static int restore_layer(run_t *r, int l, const char *lpath) {
    layer_job j = {.r = r, .l = l, .lpath = lpath, .gp = &r->o->gptq, .res = NULL};
    return layer_run(r, &j);
}

/* RTN: each linear rounded on the host, no calibration. */
static int rtn_layer(run_t *r, int l, const gq_module *mods, int n, gq_qresult *res) {
    int rc = GQ_OK;
    for (int k = 0; k < n && !rc; k++) {
        float *w = NULL;
        double t0 = gq_now();
        rc = gq_model_load_module(&r->m, l, &mods[k], &w);
        r->rep->t_load += gq_now() - t0;
        t0 = gq_now();
        if (!rc) rc = gq_gptq_quantize(&r->o->gptq, w, mods[k].rows, mods[k].cols, NULL, &res[k]);
        if (rc) gq_err_prefix("layer %d %s", l, mods[k].name);
        r->rep->t_solve += gq_now() - t0;
        gq_free_aligned(w);
    }
    return rc;
}

static int quantize_layer(run_t *r, int l, const char *lpath, const char *fp, int rtn) {
    int cap = gq_layer_module_cap(&r->m.cfg);
    gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
    int n = gq_layer_modules(&r->m.cfg, r->m.fused, l, mods, cap);
    gq_qresult *res = gq_calloc((size_t)n, sizeof *res);
    int rc = GQ_OK;
    if (rtn) {
        rc = rtn_layer(r, l, mods, n, res);
    } else {
        gq_gptq_params gp = r->o->gptq;
        gp.skip_codes = 1; /* the export packs from qweight where the solve packed it */
        layer_job j = {.r = r, .l = l, .gp = &gp, .res = res};
        gq_blayer bl;
        const int got = r->ranks == 1 ? loader_take(r, l, &bl) : 0; /* one device: perhaps loaded ahead */
        if (got < 0) rc = got;
        if (got > 0) j.pre = &bl, r->rep->layers_loaded_ahead++;
        if (!rc) rc = layer_run(r, &j);
        if (got > 0) {
            (void)gq_be_sync(r->be[0]); /* (an error path may leave work that reads them) */
            gq_blayer_free(r->ld.be, &bl);
        }
    }
    for (int k = 0; k < n && !rc; k++) add_module(r, l, mods[k].name, &res[k]);
    r->last_layer_modules = n;
    if (!rc) return export_start(r, l, lpath, fp, mods, n, res);
    for (int k = 0; k < n; k++) gq_qresult_free(&res[k]);
    free(res);
    free(mods);
    return rc;
}

/* "layer 3/8 | loss q_proj 12.3 ... | 10.2 s elapsed, ETA 17.0 s" */
static void progress(run_t *r, int l, int stop, int layers_done, double t_layers) {
    const gq_quant_report *rep = r->rep;
    char eta[96], line[512] = "";
    int len = 0;
    int n = r->last_layer_modules > 8 ? 0 : r->last_layer_modules; /* a MoE layer: the summary line only */
    for (int k = rep->n_modules - n; k < rep->n_modules && len < (int)sizeof line; k++) {
        const gq_module_report *mr = &rep->modules[k];
        const char *nm = strchr(mr->name, '.') ? strchr(mr->name, '.') + 1 : mr->name;
        len +=
            snprintf(line + len, sizeof line - len, " %s %.3g%s", nm, mr->loss, mr->fallback ? " (RTN fallback)" : "");
    }
    gq_eta_str(eta, sizeof eta, l + 1 - layers_done, stop - layers_done, t_layers);
    gq_info("layer %d/%d | loss%s | %s", l + 1, r->m.cfg.n_layers, line, eta);
}

/* The device(s) and the precision, before anything is loaded: one backend, or one per device of
 * a list (cuda:0,1,... / cuda:all; the tests' dp_cpu_ranks) and the ranks over them. RTN: the CPU. */
static int open_devices(run_t *r, int rtn) {
    const gq_quant_opts *o = r->o;
    int dev[GQ_DP_MAX_RANKS], n = 0, rc = GQ_OK;
    if (!rtn && o->dp_cpu_ranks > 1) n = o->dp_cpu_ranks < GQ_DP_MAX_RANKS ? o->dp_cpu_ranks : GQ_DP_MAX_RANKS;
    else if (!rtn && (n = gq_dp_parse_devices(o->device, gq_backend_cuda_devices(), dev, GQ_DP_MAX_RANKS)) < 0)
        return gq_errcode();
    r->ranks = n > 1 ? n : 1;
    for (int k = 0; k < r->ranks && !rc; k++) {
        char spec[32];
        if (o->dp_cpu_ranks > 1) snprintf(spec, sizeof spec, "cpu");
        else if (n >= 1) snprintf(spec, sizeof spec, "cuda:%d", dev[k]);
        else snprintf(spec, sizeof spec, "%s", rtn ? "cpu" : o->device ? o->device : "auto");
        rc = gq_backend_init(&r->be[k], spec);
        if (!rc && !rtn) rc = gq_backend_set_precision(r->be[k], o->precision);
    }
    if (!rc && r->ranks > 1 && !(rc = gq_dp_init(&r->dp, r->be, r->ranks, GQ_DP_AUTO)))
        gq_info("several devices: %d, the calibration split between them, the Hessians summed through %s", r->ranks,
                gq_dp_transport_name(r->dp));
    return rc;
}

/* GQ_LOG=debug: where the run's time outside the layers goes ("time: model open at 1.23 s"). */
static void mark(const char *what, double t_start) {
    gq_debug("time: %s at %.2f s", what, gq_now() - t_start);
}

int gq_quantize_run(const gq_quant_opts *o, gq_quant_report *rep) {
    run_t r;
    memset(&r, 0, sizeof r);
    memset(rep, 0, sizeof *rep);
    r.o = o;
    r.rep = rep;
    double t_start = gq_now();
    char *fp = NULL;
    int layers_done = 0, rc, rc_ex;

    print_settings(o);
    const int rtn = o->gptq.method == GQ_METHOD_RTN;
    if ((rc = check_settings(o))) goto out;
    if ((rc = open_devices(&r, rtn))) goto out;
    mark("devices open", t_start);
    snprintf(rep->precision, sizeof rep->precision, "%s", gq_backend_act_dtype(r.be[0]) == GQ_DT_F16 ? "fp16" : "fp32");
    gq_backend_arith_id(r.be[0], rep->arith, sizeof rep->arith);
    gq_info("precision: %s activations and weights on %s%s", rep->precision, gq_backend_name(r.be[0]),
            r.ranks > 1 ? " (and the other devices)" : "");
    if ((rc = claim_output(&r))) goto out;
    if ((rc = gq_model_open(&r.m, o->model_dir))) goto out;
    char summary[512];
    gq_config_summary(&r.m.cfg, summary, sizeof summary);
    gq_info("model: %s", summary);
    if (r.m.quantized) {
        rc = gq_err(GQ_ERR_ARG, "%s: this checkpoint is already quantized (quantization_config in config.json)",
                    o->model_dir);
        goto out;
    }
    if ((rc = check_model_options(o, &r.m.cfg))) goto out;
    mark("model open", t_start);
    r.model_real = gq_path_resolve(o->model_dir);
    r.calib_real = gq_path_resolve(o->calib_path);
    if (rtn) {
        gq_info("method rtn: rounding to nearest needs no calibration data; %s is not read", o->calib_path);
    } else {
        if ((rc = load_calibration(&r))) goto out;
    }
    if ((rc = prepare_partial(&r, &layers_done, &fp))) goto out;
    mark("calibration read", t_start);
    int n_layers = r.m.cfg.n_layers;
    int stop = o->max_layers > 0 && o->max_layers < n_layers ? o->max_layers : n_layers;
    r.stop = stop;
    if (!rtn && layers_done < stop) { /* activations only where a layer is left to quantize */
        if ((rc = alloc_buffers(&r))) goto out;
        loader_setup(&r);
        double t0 = gq_now();
        if ((rc = embed_calibration(&r))) goto out;
        rep->t_load += gq_now() - t0;
        mark("activations allocated and embedded", t_start);
    }
    rep->layers_resumed = layers_done;
    double t_layers = gq_now();
    for (int l = 0; l < stop && !rc; l++) {
        /* the next layer comes from the disk while this one computes */
        const int next = r.ld.be && l >= layers_done ? l + 2 : l + 1; /* (l + 1: the loader's) */
        prefetch_t pf = {&r.m, next};
        pthread_t th;
        int have_th = next < stop && pthread_create(&th, NULL, prefetch_main, &pf) == 0;
        char *lpath = gq_export_layer_path(r.partial, l);
        if (l < layers_done) {
            rc = rtn || layers_done >= stop ? GQ_OK : restore_layer(&r, l, lpath);
            if (!rc) gq_info("layer %d/%d: restored from %s", l + 1, n_layers, lpath);
        } else {
            rc = quantize_layer(&r, l, lpath, fp, rtn);
            if (!rc) progress(&r, l, stop, layers_done, t_layers);
        }
        if (have_th) pthread_join(th, NULL);
        free(lpath);
    }
    mark("layers done", t_start);
    rc_ex = export_wait(&r);
    if (!rc) rc = rc_ex;
    mark("layer files written", t_start);
    if (r.t_export_work > 0)
        gq_debug("export: %.1f s of layer files written beside the computation, %.1f s waited for", r.t_export_work,
                 rep->t_export);
    if (rc) goto out;
    if (stop < n_layers) {
        gq_info("stopping after %d layers (--max-layers); the unfinished run stays in %s", stop, r.partial);
        goto out;
    }
    rep->t_hessian = r.q[0].t_hessian; /* (several devices: the first's; they wait for each other) */
    rep->t_solve += r.q[0].t_solve;
    rep->t_forward = r.q[0].t_stages - r.q[0].t_hessian;
    rep->peak_rss = gq_peak_rss();
    for (int k = 0; k < r.ranks; k++) { /* the most on one device */
        const size_t b = gq_be_peak_bytes(r.be[k]) + gq_qlayer_solver_bytes(&r.q[k]);
        rep->peak_device = b > rep->peak_device ? b : rep->peak_device;
    }
    rep->t_total = gq_now() - t_start;
    /* free the activations before assembling the output */
    for (int k = 0; k < r.ranks; k++) gq_qlayer_free(&r.q[k]);
    mark("activations freed", t_start);
    double t0 = gq_now();
    rc = finish_output(&r);
    rep->t_export += gq_now() - t0;
    rep->t_total = gq_now() - t_start;
out:
    rc_ex = export_wait(&r); /* (an error path: the export in flight finishes first) */
    if (!rc) rc = rc_ex;
    free(fp);
    free_run(&r);
    return rc;
}
