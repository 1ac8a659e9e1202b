/*
 * tokenizer_bpe.c -- BPE on one pre-token, and the per-call word cache.
 *
 * The merge order is the one of the `tokenizers` BPE word merge: repeatedly
 * merge the adjacent pair with the lowest merge rank, the leftmost one on
 * ties. Two loops compute it:
 *   scan: arrays of symbols and pair ranks, O(n) per merge; fastest for the
 *         short words that byte-level pre-tokenizers produce;
 *   heap: a doubly linked list of symbols and a binary min-heap of
 *         (rank, position) candidates checked when popped, O(n log n);
 *         used for long words (a whole SentencePiece-style text is one word).
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

#define SCAN_MAX 48 /* words with more symbols use the heap */

struct gq_tok_heap_ent {
    int32_t rank, pos, new_id;
};

static void scratch_reserve(gq_tok_bpe_scratch *s, size_t n) {
    if (n <= s->cap) return;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n) cap *= 2;
    s->id = gq_realloc(s->id, cap * sizeof *s->id);
    s->prev = gq_realloc(s->prev, cap * sizeof *s->prev);
    s->next = gq_realloc(s->next, cap * sizeof *s->next);
    s->rank = gq_realloc(s->rank, cap * sizeof *s->rank);
    s->cap = cap;
}

void gq_tok_bpe_scratch_free(gq_tok_bpe_scratch *s) {
    if (!s) return;
    free(s->id);
    free(s->prev);
    free(s->next);
    free(s->rank);
    free(s->heap);
    memset(s, 0, sizeof *s);
}

/* Initial symbols of w: one per byte (byte-level) or per UTF-8 character;
 * characters missing from the vocab become <0xNN> byte tokens (byte
 * fallback) or the unk token (consecutive unknowns fused when fuse_unk), or
 * are dropped when there is neither. Returns the symbol count. */
static size_t initial_symbols(const gq_tokenizer *t, gq_tok_bpe_scratch *s, const char *w, size_t n) {
    scratch_reserve(s, n + 1);
    size_t k = 0;
    int last_unk = 0; /* the previous symbol is an unk that may be extended */
    for (size_t i = 0; i < n;) {
        size_t cl;
        int32_t id;
        if (t->byte_level) {
            cl = 1;
            id = t->sym1[(uint8_t)w[i]];
        } else {
            cl = (size_t)gq_uni_len((uint8_t)w[i]);
            if (cl > n - i) cl = n - i;
            id = cl == 1 ? t->sym1[(uint8_t)w[i]] : gq_tok_strmap_get(&t->model, w + i, cl);
        }
        if (id >= 0) {
            s->id[k++] = id;
            last_unk = 0;
            i += cl;
            continue;
        }
        if (t->byte_fallback) {
            /* the bytes of the character as the model sees it: for a
             * byte-level model, the UTF-8 of the mapped character */
            char buf[4];
            const char *cb = w + i;
            size_t nb = cl;
            if (t->byte_level) {
                nb = (size_t)gq_uni_encode(gq_uni_bytelevel_char((uint8_t)w[i]), buf);
                cb = buf;
            }
            int ok = 1;
            for (size_t j = 0; j < nb; j++) ok &= t->fallback[(uint8_t)cb[j]] >= 0;
            if (ok) {
                scratch_reserve(s, k + nb + (n - i) + 1);
                for (size_t j = 0; j < nb; j++) s->id[k++] = t->fallback[(uint8_t)cb[j]];
                last_unk = 0;
                i += cl;
                continue;
            }
        }
        if (t->unk >= 0) {
            if (!(last_unk && t->fuse_unk)) s->id[k++] = t->unk;
            last_unk = 1;
        }
        i += cl;
    }
    return k;
}

/* ---- scan loop ---- */

static size_t merge_scan(const gq_tokenizer *t, gq_tok_bpe_scratch *s, size_t n) {
    int32_t *id = s->id, *rank = s->rank, *nid = s->next; /* next[] holds new ids here */
    if (n < 2) return n;
    for (size_t i = 0; i + 1 < n; i++) {
        const gq_tok_pair *p = gq_tok_pairmap_get(&t->merges, id[i], id[i + 1]);
        rank[i] = p ? p->rank : INT32_MAX;
        nid[i] = p ? p->new_id : -1;
    }
    while (n > 1) {
        size_t best = 0;
        int32_t br = INT32_MAX;
        for (size_t i = 0; i + 1 < n; i++)
            if (rank[i] < br) br = rank[i], best = i;
        if (br == INT32_MAX) break;
        id[best] = nid[best];
        /* drop symbol best+1 and pair best+1 */
        memmove(id + best + 1, id + best + 2, (n - best - 2) * sizeof *id);
        if (best + 2 < n) {
            memmove(rank + best + 1, rank + best + 2, (n - best - 3) * sizeof *rank);
            memmove(nid + best + 1, nid + best + 2, (n - best - 3) * sizeof *nid);
        }
        n--;
        if (best > 0) {
            const gq_tok_pair *p = gq_tok_pairmap_get(&t->merges, id[best - 1], id[best]);
            rank[best - 1] = p ? p->rank : INT32_MAX;
            nid[best - 1] = p ? p->new_id : -1;
        }
        if (best + 1 < n) {
            const gq_tok_pair *p = gq_tok_pairmap_get(&t->merges, id[best], id[best + 1]);
            rank[best] = p ? p->rank : INT32_MAX;
            nid[best] = p ? p->new_id : -1;
        }
    }
    return n;
}

/* ---- heap loop ---- */

static int ent_less(const struct gq_tok_heap_ent *a, const struct gq_tok_heap_ent *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(gq_tok_bpe_scratch *s, struct gq_tok_heap_ent e) {
    if (s->heap_n == s->heap_cap) {
        s->heap_cap = s->heap_cap ? s->heap_cap * 2 : 256;
        s->heap = gq_realloc(s->heap, s->heap_cap * sizeof *s->heap);
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ent_less(&e, &s->heap[p])) break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = e;
}

static struct gq_tok_heap_ent heap_pop(gq_tok_bpe_scratch *s) {
    struct gq_tok_heap_ent top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && ent_less(&s->heap[c + 1], &s->heap[c])) c++;
        if (!ent_less(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n) s->heap[i] = last;
    return top;
}

static void push_pair(const gq_tokenizer *t, gq_tok_bpe_scratch *s, int32_t pos) {
    int32_t nx = s->next[pos];
    if (nx < 0) return;
    const gq_tok_pair *p = gq_tok_pairmap_get(&t->merges, s->id[pos], s->id[nx]);
    if (p) heap_push(s, (struct gq_tok_heap_ent){p->rank, pos, p->new_id});
}

static size_t merge_heap(const gq_tokenizer *t, gq_tok_bpe_scratch *s, size_t n) {
    int32_t *id = s->id, *prev = s->prev, *next = s->next, *alive = s->rank;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
        alive[i] = 1;
    }
    s->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(t, s, (int32_t)i);
    while (s->heap_n) {
        struct gq_tok_heap_ent e = heap_pop(s);
        if (!alive[e.pos]) continue;
        int32_t nx = next[e.pos];
        if (nx < 0) continue;
        /* stale entry: the pair at pos changed since it was pushed */
        const gq_tok_pair *p = gq_tok_pairmap_get(&t->merges, id[e.pos], id[nx]);
        if (!p || p->new_id != e.new_id) continue;
        id[e.pos] = e.new_id;
        alive[nx] = 0;
        next[e.pos] = next[nx];
        if (next[nx] >= 0) prev[next[nx]] = e.pos;
        if (prev[e.pos] >= 0) push_pair(t, s, prev[e.pos]);
        push_pair(t, s, e.pos);
    }
    size_t k = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) id[k++] = id[i];
    return k;
}

void gq_tok_bpe_word(const gq_tokenizer *t, gq_tok_bpe_scratch *s, const char *w, size_t n, int mode,
                     gq_ids *out) {
    if (n == 0) return;
    size_t k = initial_symbols(t, s, w, n);
    if (k == 0) return;
    scratch_reserve(s, k);
    if (mode == GQ_BPE_AUTO) mode = k <= SCAN_MAX ? GQ_BPE_SCAN : GQ_BPE_HEAP;
    k = mode == GQ_BPE_SCAN ? merge_scan(t, s, k) : merge_heap(t, s, k);
    gq_ids_append(out, s->id, k);
}

/* ---- word cache ---- */

void gq_tok_cache_init(gq_tok_cache *c) {
    memset(c, 0, sizeof *c);
    gq_tok_strmap_init(&c->map, 1024);
}

void gq_tok_cache_free(gq_tok_cache *c) {
    if (!c) return;
    gq_tok_strmap_free(&c->map);
    free(c->off);
    free(c->len);
    free(c->ids);
    memset(c, 0, sizeof *c);
}

const int32_t *gq_tok_cache_get(const gq_tok_cache *c, const char *w, size_t wn, size_t *n) {
    int32_t e = gq_tok_strmap_get(&c->map, w, wn);
    if (e < 0) return NULL;
    *n = c->len[e];
    return c->ids + c->off[e];
}

void gq_tok_cache_put(gq_tok_cache *c, const char *w, size_t wn, const int32_t *ids, size_t n) {
    if (c->ids_n + n >= UINT32_MAX || c->n >= INT32_MAX) return; /* full: stop caching */
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->off = gq_realloc(c->off, c->cap * sizeof *c->off);
        c->len = gq_realloc(c->len, c->cap * sizeof *c->len);
    }
    if (c->ids_n + n > c->ids_cap) {
        c->ids_cap = c->ids_cap ? c->ids_cap * 2 : 4096;
        while (c->ids_cap < c->ids_n + n) c->ids_cap *= 2;
        c->ids = gq_realloc(c->ids, c->ids_cap * sizeof *c->ids);
    }
    memcpy(c->ids + c->ids_n, ids, n * sizeof *ids);
    c->off[c->n] = (uint32_t)c->ids_n;
    c->len[c->n] = (uint32_t)n;
    c->ids_n += n;
    gq_tok_strmap_put(&c->map, w, wn, (int32_t)c->n);
    c->n++;
}
