/* export.c -- per-layer packed files and the final AutoGPTQ checkpoint. */
#include "gq/export.h"
#include "base/json_util.h"
#include "gq/knobs.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static const char *const copied_files[] = {
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
};

char *gq_export_layer_path(const char *partial_dir, int layer) {
    char name[64];
    snprintf(name, sizeof name, "layer-%05d.safetensors", layer);
    return gq_path_join(partial_dir, name);
}

/* ---- layer files ------------------------------------------------------------ */

int gq_export_layer_file(const char *path, const gq_model *m, int layer, const gq_module *mods, int n_mods,
                         const gq_qresult *res, int bits, int v2) {
    (void)m;
    gq_packed *pk = gq_calloc((size_t)n_mods, sizeof *pk);
    gq_st_item *items = gq_calloc((size_t)n_mods * 4, sizeof *items);
    char(*names)[224] = gq_calloc((size_t)n_mods * 4, sizeof *names);
    int n = 0, rc = GQ_OK, npk = 0;
    for (int k = 0; k < n_mods && !rc; k++) {
        const gq_qresult *r = &res[k];
        rc = gq_pack(r, bits, v2, &pk[k]); /* copies r->qweight where the CUDA solve packed it */
        if (rc) {
            gq_err_prefix("layer %d %s", layer, mods[k].name);
            break;
        }
        npk++;
        const char *suf[4] = {"qweight", "qzeros", "scales", "g_idx"};
        const void *data[4] = {pk[k].qweight, pk[k].qzeros, pk[k].scales, pk[k].g_idx};
        gq_dtype dt[4] = {GQ_DT_I32, GQ_DT_I32, GQ_DT_F16, GQ_DT_I32};
        int64_t shp[4][2] = {{gq_pack_qw_rows(r->cols, bits), r->rows},
                             {r->ngroups, gq_pack_qz_cols(r->rows, bits)},
                             {r->ngroups, r->rows},
                             {r->cols, 0}};
        for (int j = 0; j < 4; j++) {
            snprintf(names[n], sizeof names[n], "model.layers.%d.%s.%s", layer, mods[k].name, suf[j]);
            items[n].name = names[n];
            items[n].dtype = dt[j];
            items[n].ndim = j == 3 ? 1 : 2;
            items[n].shape[0] = shp[j][0];
            items[n].shape[1] = shp[j][1];
            items[n].data = data[j];
            n++;
        }
    }
    if (!rc) {
        const char *meta[] = {"gq_layer", "1"};
        rc = gq_st_write_file(path, items, n, meta, 1);
    }
    for (int k = 0; k < npk; k++) gq_packed_free(&pk[k]);
    free(pk);
    free(items);
    free(names);
    return rc;
}

/* ---- final directory ---------------------------------------------------------- */

static json_t *quant_config(const gq_quant_opts *o) {
    const gq_gptq_params *p = &o->gptq;
    int desc_act = p->act_order && !p->static_groups;
    char who[64];
    snprintf(who, sizeof who, "gq:%s", gq_version());
    json_t *meta = json_pack("{s:[s], s:s, s:b, s:b, s:s, s:i, s:i, s:i}", "quantizer", who, "method",
                             p->method == GQ_METHOD_RTN ? "rtn" : "gptq", "act_order", p->act_order, "static_groups",
                             p->static_groups, "zero_policy",
                             o->v2    ? "true zeros (gptq_v2)"
                             : p->sym ? "symmetric"
                                      : "v1: zero 0 shifted to 1",
                             "nsamples", o->nsamples, "seqlen", o->seqlen, "block_size", p->block_size);
    json_object_set_new(meta, "clip", json_string(gq_clip_name(p->clip)));
    return json_pack("{s:i, s:i, s:f, s:b, s:b, s:b, s:b, s:s, s:s, s:s, s:b, s:o}", "bits", p->bits, "group_size",
                     p->group_size, "damp_percent", p->damp, "desc_act", desc_act, "static_groups", p->static_groups,
                     "sym", p->sym, "true_sequential", 1, "model_file_base_name", "model", "quant_method", "gptq",
                     "checkpoint_format", o->v2 ? "gptq_v2" : "gptq", "lm_head", 0, "meta", meta);
}

char *gq_export_quant_config_json(const gq_quant_opts *o, int indent) {
    json_t *q = quant_config(o);
    char *s = json_dumps(q, JSON_INDENT(indent) | JSON_PRESERVE_ORDER);
    json_decref(q);
    return s;
}

static int write_json(const char *dir, const char *name, json_t *j) {
    char *path = gq_path_join(dir, name);
    int rc = gq_json_write_file(path, j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    free(path);
    return rc;
}

static int write_configs(const gq_model *m, const gq_quant_opts *o, const char *dir) {
    char *src = gq_path_join(m->dir, "config.json");
    json_error_t je;
    json_t *cfg = json_load_file(src, JSON_PRESERVE_ORDER, &je);
    if (!cfg) {
        int rc = gq_err(GQ_ERR_FORMAT, "%s: %s", src, je.text);
        free(src);
        return rc;
    }
    free(src);
    json_object_set_new(cfg, "quantization_config", quant_config(o));
    int rc = write_json(dir, "config.json", cfg);
    json_decref(cfg);
    if (rc) return rc;
    json_t *q = quant_config(o);
    rc = write_json(dir, "quantize_config.json", q);
    json_decref(q);
    return rc;
}

static json_t *report_json(const gq_quant_opts *o, const gq_quant_report *r) {
    const gq_gptq_params *p = &o->gptq;
    char who[64];
    snprintf(who, sizeof who, "gq %s", gq_version());
    json_t *mods = json_array();
    double loss = 0;
    for (int i = 0; i < r->n_modules; i++) {
        const gq_module_report *m = &r->modules[i];
        char name[160];
        snprintf(name, sizeof name, "model.layers.%d.%s", m->layer, m->name);
        json_array_append_new(mods, json_pack("{s:s, s:i, s:i, s:f, s:f, s:i, s:b, s:i, s:f}", "module", name, "rows",
                                              m->rows, "cols", m->cols, "loss", m->loss, "damp", m->damp, "retries",
                                              m->retries, "fallback_rtn", m->fallback, "dead_columns", m->n_dead,
                                              "solve_seconds", m->seconds));
        loss += m->loss;
    }
    json_t *settings =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:b, s:b, s:b, s:f, s:i, s:i, s:i, s:s}", "model",
                  o->model_dir, "calib", o->calib_path, "device", o->device ? o->device : "auto", "precision",
                  r->precision[0] ? r->precision : "fp32", "method",
                  p->method == GQ_METHOD_RTN ? "rtn" : "gptq", "bits", p->bits, "group_size", p->group_size, "sym",
                  p->sym, "act_order", p->act_order, "static_groups", p->static_groups, "damp", p->damp, "block_size",
                  p->block_size, "nsamples", o->nsamples, "seqlen", o->seqlen, "format", o->v2 ? "gptq_v2" : "gptq");
    char knobs[256];
    gq_knobs_str(knobs, sizeof knobs, 0);
    json_object_set_new(settings, "environment", json_string(knobs));
    json_object_set_new(settings, "clip", json_string(gq_clip_name(p->clip)));
    json_object_set_new(settings, "arithmetic", json_string(r->arith));
    json_t *t = json_pack("{s:f, s:f, s:f, s:f, s:f, s:f}", "load", r->t_load, "forward", r->t_forward, "hessian",
                          r->t_hessian, "solve", r->t_solve, "export", r->t_export, "total", r->t_total);
    return json_pack("{s:s, s:o, s:I, s:i, s:f, s:i, s:o, s:I, s:I, s:i, s:o}", "quantizer", who, "settings",
                     settings, "calibration_tokens", (json_int_t)r->n_calib_tokens, "modules_quantized", r->n_modules,
                     "total_loss", loss, "rtn_fallbacks", r->n_fallback, "seconds", t, "peak_host_bytes",
                     (json_int_t)r->peak_rss, "peak_device_bytes", (json_int_t)r->peak_device, "layers_resumed", r->layers_resumed, "modules", mods);
}

/* A linear's input weight (a module's ".weight", or a fused expert tensor): replaced by the
 * quantized tensors in the output. */
static int is_quantized_weight(const gq_model *m, const char *name) {
    int l, k = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &k) != 1 || k == 0 || l < 0 || l >= m->cfg.n_layers) return 0;
    const char *rest = name + k;
    int cap = gq_layer_module_cap(&m->cfg), hit = 0;
    gq_module *mods = gq_malloc((size_t)cap * sizeof *mods);
    int n = gq_layer_modules(&m->cfg, m->fused, l, mods, cap);
    for (int i = 0; i < n && !hit; i++) {
        size_t len = strlen(mods[i].src);
        hit = !strncmp(rest, mods[i].src, len) && (!strcmp(mods[i].src, mods[i].name) ? !strcmp(rest + len, ".weight")
                                                                                      : rest[len] == 0);
    }
    free(mods);
    return hit;
}

static void set_writer_meta(gq_st_writer *w, const gq_quant_opts *o) {
    char buf[64];
    const gq_gptq_params *p = &o->gptq;
    snprintf(buf, sizeof buf, "gq %s", gq_version());
    gq_st_writer_set_meta(w, "quantizer", buf);
    snprintf(buf, sizeof buf, "%d", p->bits);
    gq_st_writer_set_meta(w, "gptq_bits", buf);
    snprintf(buf, sizeof buf, "%d", p->group_size);
    gq_st_writer_set_meta(w, "gptq_group_size", buf);
    gq_st_writer_set_meta(w, "gptq_desc_act", p->act_order && !p->static_groups ? "True" : "False");
    snprintf(buf, sizeof buf, "%g", p->damp);
    gq_st_writer_set_meta(w, "gptq_damp_percent", buf);
    gq_st_writer_set_meta(w, "gptq_checkpoint_format", o->v2 ? "gptq_v2" : "gptq");
    gq_st_writer_set_meta(w, "gptq_quant_method", "gptq");
}

/* Add the unquantized tensors of the source (copied byte for byte). */
static int add_unquantized(gq_st_writer *w, const gq_model *m) {
    int rc = GQ_OK, n = gq_st_count(m->st);
    for (int i = 0; i < n && !rc; i++) {
        const gq_st_tensor *t = gq_st_at(m->st, i);
        if (is_quantized_weight(m, t->name)) continue;
        char out[256];
        gq_output_name(&m->cfg, m->fused, t->name, out, sizeof out);
        rc = gq_st_writer_add(w, out, t->dtype, t->ndim, t->shape, t->data);
        gq_st_release(m->st, t);
    }
    return rc;
}

/* One file: everything copied through the writer (TensorRT-LLM's legacy
 * loader wants a single file). */
static int finish_single(const gq_model *m, const gq_quant_opts *o, const char *partial_dir, const char *dir,
                         int *nshards) {
    gq_st_writer *w = NULL;
    int rc = gq_st_writer_init(&w, dir, "model", 0);
    if (rc) return rc;
    set_writer_meta(w, o);
    rc = add_unquantized(w, m);
    for (int l = 0; l < m->cfg.n_layers && !rc; l++) {
        char *path = gq_export_layer_path(partial_dir, l);
        gq_st *ls = NULL;
        rc = gq_st_open(&ls, path);
        for (int i = 0; !rc && i < gq_st_count(ls); i++) {
            const gq_st_tensor *t = gq_st_at(ls, i);
            rc = gq_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
        }
        gq_st_close(ls);
        free(path);
    }
    if (!rc) rc = gq_st_writer_finish(w, nshards);
    gq_st_writer_free(w);
    return rc;
}

/* Link (or, across file systems, copy) src to dst. */
static int link_or_copy(const char *src, const char *dst) {
    if (link(src, dst) == 0) return GQ_OK;
    return gq_copy_file(src, dst);
}

/* Sharded: the unquantized tensors in the first shard(s), then one shard per
 * layer: the layer files of the run, hard-linked, not copied (a 70B model's
 * 35 GB of packed weights are written once). */
static int finish_sharded(const gq_model *m, const gq_quant_opts *o, const char *partial_dir, const char *dir,
                          int *nshards) {
    gq_st_writer *w = NULL;
    size_t shard = (size_t)(o->max_shard_mb * 1024 * 1024);
    int rc = gq_st_writer_init(&w, dir, "gq-unquantized", shard), nu = 0;
    if (rc) return rc;
    set_writer_meta(w, o);
    rc = add_unquantized(w, m);
    if (!rc) rc = gq_st_writer_finish(w, &nu);
    gq_st_writer_free(w);
    if (rc) return rc;
    const int L = m->cfg.n_layers, total = nu + L;
    json_t *wm = json_object();
    json_int_t bytes = 0;
    char src[64], dst[64];
    for (int s = 0; s < total && !rc; s++) {
        char *from, *to;
        snprintf(dst, sizeof dst, "model-%05d-of-%05d.safetensors", s + 1, total);
        to = gq_path_join(dir, dst);
        if (s < nu) {
            if (nu == 1)
                snprintf(src, sizeof src, "gq-unquantized.safetensors");
            else
                snprintf(src, sizeof src, "gq-unquantized-%05d-of-%05d.safetensors", s + 1, nu);
            from = gq_path_join(dir, src);
            if (rename(from, to) != 0) rc = gq_err(GQ_ERR_IO, "%s: cannot rename to %s: %s", from, to, strerror(errno));
        } else {
            from = gq_export_layer_path(partial_dir, s - nu);
            rc = link_or_copy(from, to);
        }
        gq_st *st = NULL;
        if (!rc) rc = gq_st_open(&st, to);
        for (int i = 0; !rc && i < gq_st_count(st); i++) {
            const gq_st_tensor *t = gq_st_at(st, i);
            json_object_set_new(wm, t->name, json_string(dst));
            bytes += (json_int_t)t->nbytes;
        }
        gq_st_close(st);
        free(from);
        free(to);
    }
    if (!rc && nu > 1) { /* the writer's own index of the unquantized shards */
        char *ix = gq_path_join(dir, "gq-unquantized.safetensors.index.json");
        unlink(ix);
        free(ix);
    }
    if (!rc) {
        json_t *idx = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", bytes, "weight_map", wm);
        rc = write_json(dir, "model.safetensors.index.json", idx);
        json_decref(idx);
    } else {
        json_decref(wm);
    }
    *nshards = total;
    return rc;
}

int gq_export_finish(const gq_model *m, const gq_quant_opts *o, const char *partial_dir, const char *dir,
                     const gq_quant_report *rep) {
    double bytes = 0;
    for (int i = 0; i < gq_st_count(m->st); i++) {
        const gq_st_tensor *t = gq_st_at(m->st, i);
        if (!is_quantized_weight(m, t->name)) bytes += (double)t->nbytes;
    }
    for (int l = 0; l < m->cfg.n_layers; l++) {
        char *path = gq_export_layer_path(partial_dir, l);
        struct stat sb;
        if (stat(path, &sb) == 0) bytes += (double)sb.st_size;
        free(path);
    }
    /* up to 1 GiB (and one shard's size) everything goes into one file; bigger outputs get one shard per
     * layer, hard-linked from the run instead of copied (a 70B model's 35 GB of packed weights are
     * written once) */
    const double one_file = o->max_shard_mb * 1024 * 1024 < 1073741824.0 ? o->max_shard_mb * 1024 * 1024 : 1073741824.0;
    int nshards = 0, single = o->max_shard_mb <= 0 || bytes <= one_file;
    int rc =
        single ? finish_single(m, o, partial_dir, dir, &nshards) : finish_sharded(m, o, partial_dir, dir, &nshards);
    if (rc) return rc;
    if ((rc = write_configs(m, o, dir))) return rc;
    for (size_t i = 0; i < sizeof copied_files / sizeof *copied_files && !rc; i++) {
        char *src = gq_path_join(m->dir, copied_files[i]);
        if (gq_path_exists(src)) {
            char *dst = gq_path_join(dir, copied_files[i]);
            rc = gq_copy_file(src, dst);
            free(dst);
        }
        free(src);
    }
    if (rc) return rc;
    json_t *rj = report_json(o, rep);
    rc = write_json(dir, "gq_report.json", rj);
    json_decref(rj);
    if (!rc)
        gq_info("wrote %s: %d safetensors shard%s, config.json + quantize_config.json, report gq_report.json", dir,
                nshards, nshards == 1 ? "" : "s");
    return rc;
}
