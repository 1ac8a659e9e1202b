/* generate.c -- the generation engine of gq/generate.h: the whole model on a
 * backend, per-slot KV caches, chunked prefill, batched decode steps and the
 * continuous scheduler of gq_gen_run. Sampling is in sample.c. */
#include <stdlib.h>
#include <string.h>

#include "gq/generate.h"
#include "gq/graph.h"
#include "gq/knobs.h"

struct gq_gen {
    gq_backend *be;
    const gq_model *m;
    gq_config cfg;
    int nl, d, nq, kvd, ldqkv, inter, vocab;
    gq_blayer *layers;                    /* [nl] */
    gq_bhead head;                        /* final norm, lm [vocab][d] */
    int max_batch, max_len, chunk, R;     /* R: scratch rows = max(chunk, max_batch) */
    void *kc, *vc;                        /* caches [slot][layer][max_len][kvd] */
    int *slot_len;                        /* [max_batch] */
    int *pos;                             /* [max_batch] decode positions of a step */
    void *x;                              /* [R][d] */
    gq_fwd_scratch s;                     /* R rows */
    float *inv_freq;                      /* [rot_dim / 2] */
    float *host_x;                        /* [R][d] embeddings on the host */
    int32_t *no_targets;                  /* [R] of -1: gq_be_nll only returns logits */
    int32_t eos[16];
    int n_eos;
    gq_gen_stats stats;
    /* recorded decode steps (GQ_CUDA_GRAPH=1, a GPU): 1 record one step per batch size B <=
     * GEN_GRAPH_MAX_B and replay it; 2 the same ops op by op (a recording failed, or B larger).
     * pin: pinned [2][max_batch] slot | pos of the step, copied at its start into idx_dev (device,
     * the same shape) that the decode kernels read; pin_busy: the last step's copy may not have
     * run yet (no synchronising head after it) */
    int graphs, pin_busy, graph_fails;
    int32_t *pin, *idx_dev;
    gq_bgraph **graph; /* [GEN_GRAPH_MAX_B + 1] by B */
};

/* Batch sizes whose decode step is recorded: the int4 kernel's rows (larger batches dequantize
 * into a scratch buffer that may grow) */
#define GEN_GRAPH_MAX_B 16

#define TRY(x)                                                                                                         \
    do {                                                                                                               \
        int rc_ = (x);                                                                                                 \
        if (rc_ != GQ_OK) return rc_;                                                                                  \
    } while (0)

void gq_gen_opts_default(gq_gen_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_batch = 16;
    o->max_len = 0;
    o->prefill_chunk = 512;
}

const char *gq_gen_finish_name(gq_gen_finish f) {
    return f == GQ_GEN_FINISH_EOS      ? "eos"
           : f == GQ_GEN_FINISH_LENGTH ? "length"
           : f == GQ_GEN_FINISH_STOP   ? "stop"
                                       : "none";
}

/* activation element offset -> pointer */
static void *at(const gq_gen *g, void *base, size_t elems) {
    return (char *)base + gq_be_act_bytes(g->be, elems);
}

static void *kv_at(const gq_gen *g, void *cache, int slot, int layer, int pos) {
    size_t row = ((size_t)slot * g->nl + (size_t)layer) * (size_t)g->max_len + (size_t)pos;
    return at(g, cache, row * (size_t)g->kvd);
}

int gq_gen_max_len(const gq_gen *g) {
    return g->max_len;
}
int gq_gen_max_batch(const gq_gen *g) {
    return g->max_batch;
}
int gq_gen_vocab(const gq_gen *g) {
    return g->vocab;
}
const gq_gen_stats *gq_gen_get_stats(const gq_gen *g) {
    return &g->stats;
}
void gq_gen_reset_stats(gq_gen *g) {
    memset(&g->stats, 0, sizeof g->stats);
}

int gq_gen_is_eos(const gq_gen *g, int32_t id) {
    for (int i = 0; i < g->n_eos; i++)
        if (g->eos[i] == id) return 1;
    return 0;
}

void gq_gen_free(gq_gen *g) {
    if (!g) return;
    for (int l = 0; l < g->nl && g->layers; l++) gq_blayer_free(g->be, &g->layers[l]);
    free(g->layers);
    gq_bhead_free(g->be, &g->head);
    gq_fwd_scratch_free(g->be, &g->s);
    void *bufs[] = {g->kc, g->vc, g->x};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) gq_be_release(g->be, bufs[i]);
    free(g->slot_len);
    free(g->pos);
    free(g->inv_freq);
    free(g->host_x);
    free(g->no_targets);
    for (int b = 0; g->graph && b <= GEN_GRAPH_MAX_B; b++) gq_be_graph_free(g->be, g->graph[b]);
    free(g->graph);
    gq_be_host_free(g->be, g->pin);
    gq_be_release(g->be, g->idx_dev);
    free(g);
}

static void *alloc_act(gq_gen *g, size_t a, size_t b, size_t c, const char *what, int *rc) {
    size_t n;
    if (*rc) return NULL;
    if (!gq_mul_size(a, b, &n) || !gq_mul_size(n, c, &n) || n > ((size_t)1 << 40)) {
        *rc = gq_err(GQ_ERR_ARG, "generation: %s of %zu x %zu x %zu elements is too large", what, a, b, c);
        return NULL;
    }
    void *p = gq_be_alloc(g->be, gq_be_act_bytes(g->be, n));
    if (!p) *rc = gq_err_prefix("generation: %s", what);
    return p;
}

int gq_gen_init(gq_gen **out, const gq_model *m, gq_backend *be, const gq_gen_opts *o) {
    *out = NULL;
    const gq_config *c = &m->cfg;
    if (o->max_batch < 1 || o->prefill_chunk < 1 || o->max_len < 0 || o->n_eos < 0 || o->n_eos > 8)
        return gq_err(GQ_ERR_ARG,
                      "generation: expected max_batch >= 1, prefill_chunk >= 1, max_len >= 0, n_eos <= 8, "
                      "got %d, %d, %d, %d",
                      o->max_batch, o->prefill_chunk, o->max_len, o->n_eos);
    gq_gen *g = gq_calloc(1, sizeof *g);
    g->be = be;
    g->m = m;
    g->cfg = *c;
    g->nl = c->n_layers;
    g->d = c->hidden;
    g->nq = c->n_heads * c->head_dim;
    g->kvd = c->n_kv_heads * c->head_dim;
    g->ldqkv = g->nq + 2 * g->kvd;
    g->inter = c->intermediate;
    g->vocab = c->vocab;
    g->max_batch = o->max_batch;
    g->max_len = o->max_len > 0 && o->max_len < c->max_pos ? o->max_len : c->max_pos;
    g->chunk = o->prefill_chunk < g->max_len ? o->prefill_chunk : g->max_len;
    g->R = g->chunk > g->max_batch ? g->chunk : g->max_batch;
    for (int i = 0; i < c->n_eos && g->n_eos < 16; i++) g->eos[g->n_eos++] = c->eos_ids[i];
    for (int i = 0; i < o->n_eos && g->n_eos < 16; i++)
        if (o->eos_ids[i] >= 0 && !gq_gen_is_eos(g, o->eos_ids[i])) g->eos[g->n_eos++] = o->eos_ids[i];

    int rc = GQ_OK;
    double t0 = gq_now();
    g->layers = gq_calloc((size_t)g->nl, sizeof *g->layers);
    for (int l = 0; l < g->nl && rc == GQ_OK; l++) {
        rc = gq_blayer_load(be, m, l, &g->layers[l]); /* raw F16/BF16 onto the backend, or dequantized */
        if (rc) gq_err_prefix("generation: layer %d", l);
    }
    if (rc == GQ_OK) rc = gq_bhead_load(be, m, &g->head);
    size_t R = (size_t)g->R;
    g->kc = alloc_act(g, (size_t)g->max_batch * (size_t)g->nl, (size_t)g->max_len, (size_t)g->kvd, "K cache", &rc);
    g->vc = alloc_act(g, (size_t)g->max_batch * (size_t)g->nl, (size_t)g->max_len, (size_t)g->kvd, "V cache", &rc);
    g->x = alloc_act(g, R, (size_t)g->d, 1, "activations", &rc);
    if (!rc) rc = gq_fwd_scratch_init(be, c, g->R, &g->s);
    if (rc) {
        gq_gen_free(g);
        return rc;
    }
    g->slot_len = gq_calloc((size_t)g->max_batch, sizeof *g->slot_len);
    g->pos = gq_calloc((size_t)g->max_batch, sizeof *g->pos);
    g->inv_freq = gq_malloc((size_t)(c->rot_dim / 2 + 1) * sizeof *g->inv_freq);
    /* max_len <= max_position_embeddings, so dynamic NTK scaling never applies */
    gq_rope_inv_freq(c, g->max_len, g->inv_freq);
    g->host_x = gq_malloc(R * (size_t)g->d * sizeof *g->host_x);
    g->no_targets = gq_malloc(R * sizeof *g->no_targets);
    for (size_t i = 0; i < R; i++) g->no_targets[i] = -1;
    if (gq_knobs_get()->cuda_graph && gq_backend_is_gpu(be)) {
        const size_t ib = 2 * (size_t)g->max_batch * sizeof(int32_t);
        g->pin = gq_be_host_alloc(be, ib);
        g->idx_dev = g->pin ? gq_be_alloc(be, ib) : NULL;
        g->graph = gq_calloc(GEN_GRAPH_MAX_B + 1, sizeof *g->graph);
        g->graphs = g->idx_dev ? gq_knobs_get()->cuda_graph : 0;
        if (!g->graphs) gq_warn("generation: no pinned host memory (%s): decode steps not recorded", gq_errmsg());
        if (g->graphs == 1 && c->n_experts > 0) { /* the routing's top-k runs on the host, mid-step */
            gq_debug("generation: MoE routing waits for the device within a step: decode steps not recorded");
            g->graphs = 2;
        }
    }
    char b1[32], b2[32];
    gq_info("generation: %d layers on %s in %.1f s; KV cache %s for %d sequences x %d tokens, device peak %s", g->nl,
            gq_backend_name(be), gq_now() - t0,
            gq_fmt_bytes(b1, sizeof b1,
                         2.0 * (double)gq_be_act_bytes(be, (size_t)g->max_batch * g->nl * g->max_len * g->kvd)),
            g->max_batch, g->max_len, gq_fmt_bytes(b2, sizeof b2, (double)gq_be_peak_bytes(be)));
    *out = g;
    return GQ_OK;
}

void gq_gen_slot_reset(gq_gen *g, int slot) {
    GQ_ASSERT(slot >= 0 && slot < g->max_batch);
    g->slot_len[slot] = 0;
}

int gq_gen_slot_len(const gq_gen *g, int slot) {
    GQ_ASSERT(slot >= 0 && slot < g->max_batch);
    return g->slot_len[slot];
}

/* ---- layer forward -------------------------------------------------------------------------- */

/* T tokens of one slot at positions pos0 .. pos0+T-1: k and v are projected
 * straight into the cache rows. */
static int layer_prefill(gq_gen *g, int l, int slot, int pos0, int T) {
    gq_kv kv = {.mode = GQ_KV_PREFILL, .K = kv_at(g, g->kc, slot, l, 0), .V = kv_at(g, g->vc, slot, l, 0),
                .ldkv = g->kvd};
    gq_layer_args a = {.be = g->be, .cfg = &g->cfg, .layer = l, .bl = &g->layers[l], .x = g->x, .T = T,
                       .first = GQ_STEP_ATTN_IN, .last = GQ_STEP_MLP_RES, .inv_freq = g->inv_freq, .pos0 = pos0,
                       .kv = &kv, .s = &g->s};
    return gq_layer_run(&a);
}

/* One token for each of B slots, row r at position pos[r] of slot slots[r] (with recorded steps
 * the kernels read the step's device copies, idx_dev, and the launches follow max_len). */
static int layer_decode(gq_gen *g, int l, const int *slots, const int *pos, int B) {
    gq_kv kv = {.mode = GQ_KV_DECODE, .K = kv_at(g, g->kc, 0, l, 0), .V = kv_at(g, g->vc, 0, l, 0), .ldkv = g->kvd,
                .slot_stride = (size_t)g->nl * g->max_len * g->kvd, .slot = slots, .pos = pos,
                .cache_len = g->graphs ? g->max_len : 0, .dslot = g->graphs ? g->idx_dev : NULL,
                .dpos = g->graphs ? g->idx_dev + g->max_batch : NULL};
    gq_layer_args a = {.be = g->be, .cfg = &g->cfg, .layer = l, .bl = &g->layers[l], .x = g->x, .T = B,
                       .first = GQ_STEP_ATTN_IN, .last = GQ_STEP_MLP_RES, .inv_freq = g->inv_freq, .kv = &kv,
                       .s = &g->s};
    return gq_layer_run(&a);
}

/* logits[T][vocab] (host) of x rows row0 .. row0+T-1 */
static int head(gq_gen *g, int row0, int T, float *logits) {
    double nll = 0;
    int64_t cnt = 0;
    void *x = at(g, g->x, (size_t)row0 * g->d);
    return gq_bhead_nll(g->be, &g->cfg, &g->head, g->s.xn, x, g->d, T, g->no_targets, &nll, &cnt, logits);
}

static int embed(gq_gen *g, const int32_t *ids, int n) {
    TRY(gq_model_embed(g->m, ids, n, g->host_x));
    return gq_be_upload_f32(g->be, g->x, g->host_x, (size_t)n * g->d);
}

int gq_gen_prefill(gq_gen *g, int slot, const int32_t *ids, int n, float *logits) {
    if (slot < 0 || slot >= g->max_batch) return gq_err(GQ_ERR_ARG, "generation: slot %d of %d", slot, g->max_batch);
    int len = g->slot_len[slot];
    if (n < 1 || len + n > g->max_len)
        return gq_err(GQ_ERR_ARG, "generation: %d + %d tokens do not fit a sequence of at most %d", len, n, g->max_len);
    for (int i0 = 0; i0 < n; i0 += g->chunk) {
        int T = n - i0 < g->chunk ? n - i0 : g->chunk;
        TRY(embed(g, ids + i0, T));
        for (int l = 0; l < g->nl; l++) TRY(layer_prefill(g, l, slot, len + i0, T));
        g->slot_len[slot] = len + i0 + T;
        if (logits && i0 + T == n) TRY(head(g, T - 1, 1, logits));
    }
    g->stats.prefill_tokens += n;
    return GQ_OK;
}

/* The step's slot | pos (pin) into idx_dev, in stream order (recordable) */
static int upload_idx(gq_gen *g) {
    return gq_be_upload_pinned(g->be, g->idx_dev, g->pin, 2 * (size_t)g->max_batch * sizeof(int32_t));
}

/* Record the layers of a decode step of B rows (each op recorded, nothing run); NULL when an op
 * cannot be recorded: this step then runs op by op, and after a second failure every step (said
 * once). A first failure can be a one-off: the rotary frequencies uploaded by a model's first step
 * when its prompts went in by decode steps. */
static gq_bgraph *record_step(gq_gen *g, int B) {
    gq_bgraph *gr = NULL;
    int rc = gq_be_graph_begin(g->be);
    if (!rc) {
        rc = upload_idx(g);
        for (int l = 0; l < g->nl && !rc; l++) rc = layer_decode(g, l, g->pin, g->pin + g->max_batch, B);
        int rc2 = gq_be_graph_end(g->be, &gr);
        if (!rc) rc = rc2;
    }
    if (rc) {
        gq_be_graph_free(g->be, gr);
        if (++g->graph_fails >= 2) {
            gq_warn("generation: a decode step of %d rows could not be recorded (%s); decode steps run op by op", B,
                    gq_errmsg());
            g->graphs = 2;
        } else {
            gq_debug("generation: a decode step of %d rows could not be recorded (%s); trying again", B, gq_errmsg());
        }
        gq_err_clear();
        return NULL;
    }
    gq_debug("generation: decode step of %d rows recorded (%d layers)", B, g->nl);
    return gr;
}

/* The layers of a decode step with slot[] and pos[] in pinned memory, copied to the device at the
 * step's start: replayed from the recording of this batch size (made at its first step), or op by
 * op. */
static int decode_pinned(gq_gen *g, const int *slots, const int *pos, int B) {
    if (g->pin_busy) TRY(gq_be_sync(g->be)); /* the last step's copy may not have run */
    memcpy(g->pin, slots, (size_t)B * sizeof(int32_t));
    memcpy(g->pin + g->max_batch, pos, (size_t)B * sizeof(int32_t));
    g->pin_busy = 1;
    if (g->graphs == 1 && B <= GEN_GRAPH_MAX_B) {
        if (!g->graph[B]) g->graph[B] = record_step(g, B);
        if (g->graph[B]) {
            g->stats.decode_replays++;
            return gq_be_graph_launch(g->be, g->graph[B]);
        }
    }
    TRY(upload_idx(g));
    for (int l = 0; l < g->nl; l++) TRY(layer_decode(g, l, g->pin, g->pin + g->max_batch, B));
    return GQ_OK;
}

int gq_gen_decode(gq_gen *g, const int *slots, const int32_t *tok, int B, float *logits) {
    if (B < 1 || B > g->max_batch) return gq_err(GQ_ERR_ARG, "generation: batch of %d, at most %d", B, g->max_batch);
    int *pos = g->pos;
    for (int r = 0; r < B; r++) {
        if (slots[r] < 0 || slots[r] >= g->max_batch)
            return gq_err(GQ_ERR_ARG, "generation: slot %d of %d", slots[r], g->max_batch);
        for (int k = 0; k < r; k++)
            if (slots[k] == slots[r]) return gq_err(GQ_ERR_ARG, "generation: slot %d twice in one step", slots[r]);
        pos[r] = g->slot_len[slots[r]];
        if (pos[r] >= g->max_len)
            return gq_err(GQ_ERR_ARG, "generation: slot %d is full (%d tokens)", slots[r], g->max_len);
    }
    TRY(embed(g, tok, B));
    if (g->graphs) TRY(decode_pinned(g, slots, pos, B));
    else
        for (int l = 0; l < g->nl; l++) TRY(layer_decode(g, l, slots, pos, B));
    for (int r = 0; r < B; r++) g->slot_len[slots[r]]++;
    if (logits) {
        TRY(head(g, 0, B, logits)); /* its download waits for the step: the pinned arrays are free */
        g->pin_busy = 0;
    }
    g->stats.decode_tokens += B;
    g->stats.decode_steps++;
    return GQ_OK;
}

/* ---- the scheduler ------------------------------------------------------------------------------ */

void gq_gen_seq_free(gq_gen_seq *s) {
    if (!s) return;
    gq_ids_free(&s->out);
    s->finish = GQ_GEN_FINISH_NONE;
}

typedef struct {
    int seq; /* index into seqs, -1 = free */
    gq_gen_rng rng;
    int32_t last;
} slot_state;

/* Take token t for sequence s (index i); returns 1 when it finished. */
static int accept(const gq_gen *g, gq_gen_seq *s, int i, int32_t t, const gq_gen_sampling *sp, gq_gen_stop_fn stop,
                  void *user) {
    if (gq_gen_is_eos(g, t)) {
        s->finish = GQ_GEN_FINISH_EOS;
        return 1;
    }
    gq_ids_push(&s->out, t);
    if (stop && stop(s, i, user)) {
        s->finish = GQ_GEN_FINISH_STOP;
        return 1;
    }
    if ((int)s->out.n >= sp->max_new_tokens || s->n_prompt + (int)s->out.n >= g->max_len) {
        s->finish = GQ_GEN_FINISH_LENGTH;
        return 1;
    }
    return 0;
}

int gq_gen_run(gq_gen *g, gq_gen_seq *seqs, int n, const gq_gen_sampling *sp, gq_gen_done_fn done, void *user) {
    return gq_gen_run_stop(g, seqs, n, sp, NULL, done, user);
}

int gq_gen_run_stop(gq_gen *g, gq_gen_seq *seqs, int n, const gq_gen_sampling *sp, gq_gen_stop_fn stop,
                    gq_gen_done_fn done, void *user) {
    TRY(gq_gen_sampling_check(sp));
    for (int i = 0; i < n; i++) {
        if (seqs[i].n_prompt < 1 || seqs[i].n_prompt >= g->max_len)
            return gq_err(GQ_ERR_ARG, "generation: prompt %d has %d tokens, expected 1 .. %d (max_len %d minus one)", i,
                          seqs[i].n_prompt, g->max_len - 1, g->max_len);
        seqs[i].out.n = 0;
        seqs[i].finish = GQ_GEN_FINISH_NONE;
    }
    int S = g->max_batch, vocab = g->vocab, next = 0, rc = GQ_OK;
    slot_state *st = gq_malloc((size_t)S * sizeof *st);
    for (int k = 0; k < S; k++) st[k].seq = -1;
    float *logits = gq_malloc((size_t)S * vocab * sizeof *logits); /* [S][vocab] */
    int *slots = gq_malloc((size_t)S * sizeof *slots);
    int32_t *tok = gq_malloc((size_t)S * sizeof *tok);
    for (;;) {
        /* admit waiting prompts into free slots: prefill, first token */
        double t0 = gq_now();
        for (int k = 0; k < S && next < n && rc == GQ_OK; k++) {
            while (st[k].seq < 0 && next < n && rc == GQ_OK) {
                int i = next++;
                gq_gen_seq *s = &seqs[i];
                gq_gen_slot_reset(g, k);
                rc = gq_gen_prefill(g, k, s->prompt, s->n_prompt, logits);
                if (rc) break;
                gq_gen_rng_seed(&st[k].rng, sp->seed, s->stream);
                int32_t t = gq_gen_sample(logits, vocab, sp, &st[k].rng);
                if (accept(g, s, i, t, sp, stop, user)) {
                    if (done) rc = done(s, i, user);
                } else {
                    st[k].seq = i;
                    st[k].last = t;
                }
            }
        }
        g->stats.prefill_s += gq_now() - t0;
        if (rc) break;
        int B = 0;
        for (int k = 0; k < S; k++)
            if (st[k].seq >= 0) {
                slots[B] = k;
                tok[B++] = st[k].last;
            }
        if (!B) break;
        /* one decode step for every active sequence */
        t0 = gq_now();
        rc = gq_gen_decode(g, slots, tok, B, logits);
        for (int r = 0; r < B && rc == GQ_OK; r++) {
            slot_state *ss = &st[slots[r]];
            gq_gen_seq *s = &seqs[ss->seq];
            int32_t t = gq_gen_sample(logits + (size_t)r * vocab, vocab, sp, &ss->rng);
            if (accept(g, s, ss->seq, t, sp, stop, user)) {
                if (done) rc = done(s, ss->seq, user);
                ss->seq = -1;
            } else {
                ss->last = t;
            }
        }
        g->stats.decode_s += gq_now() - t0;
        if (rc) break;
    }
    free(st);
    free(logits);
    free(slots);
    free(tok);
    return rc;
}
