/* tokenizer_maps.c -- the tokenizer's containers: string -> id map, merge
 * pair map, added-token trie, chunked arena. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"

/* ---- hash --------------------------------------------------------------- */

uint64_t gq_tok_hash(const char *s, size_t n) {
    uint64_t h = 0x243F6A8885A308D3ull ^ ((uint64_t)n * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = (h ^ w) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 29;
    }
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return h;
}

/* ---- string -> int32 ------------------------------------------------------ */

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

void gq_tok_strmap_init(gq_tok_strmap *m, size_t expect) {
    memset(m, 0, sizeof *m);
    size_t cap = pow2_at_least(expect * 2 + 1);
    m->slots = gq_calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    m->keys_cap = 1024;
    m->keys = gq_malloc(m->keys_cap);
}

void gq_tok_strmap_free(gq_tok_strmap *m) {
    if (!m) return;
    free(m->slots);
    free(m->koff);
    free(m->klen);
    free(m->val);
    free(m->keys);
    memset(m, 0, sizeof *m);
}

int32_t gq_tok_strmap_get(const gq_tok_strmap *m, const char *k, size_t n) {
    uint64_t h64 = gq_tok_hash(k, n);
    uint32_t h = (uint32_t)h64;
    size_t i = (size_t)(h64 >> 32) & m->mask;
    for (;;) {
        const gq_tok_slot *s = &m->slots[i];
        if (!s->ent) return -1;
        size_t e = s->ent - 1;
        if (s->h == h && m->klen[e] == n && memcmp(m->keys + m->koff[e], k, n) == 0) return m->val[e];
        i = (i + 1) & m->mask;
    }
}

static void strmap_grow(gq_tok_strmap *m) {
    size_t cap = (m->mask + 1) * 2;
    gq_tok_slot *ns = gq_calloc(cap, sizeof *ns);
    for (size_t e = 0; e < m->n; e++) {
        uint64_t h64 = gq_tok_hash(m->keys + m->koff[e], m->klen[e]);
        size_t i = (size_t)(h64 >> 32) & (cap - 1);
        while (ns[i].ent) i = (i + 1) & (cap - 1);
        ns[i].h = (uint32_t)h64;
        ns[i].ent = (uint32_t)(e + 1);
    }
    free(m->slots);
    m->slots = ns;
    m->mask = cap - 1;
}

size_t gq_tok_strmap_put(gq_tok_strmap *m, const char *k, size_t n, int32_t val) {
    uint64_t h64 = gq_tok_hash(k, n);
    uint32_t h = (uint32_t)h64;
    size_t i = (size_t)(h64 >> 32) & m->mask;
    for (;;) {
        gq_tok_slot *s = &m->slots[i];
        if (!s->ent) break;
        size_t e = s->ent - 1;
        if (s->h == h && m->klen[e] == n && memcmp(m->keys + m->koff[e], k, n) == 0) {
            m->val[e] = val;
            return e;
        }
        i = (i + 1) & m->mask;
    }
    GQ_ASSERT(n < UINT32_MAX && m->keys_n + n < UINT32_MAX);
    if (m->n == m->ecap) {
        m->ecap = m->ecap ? m->ecap * 2 : 64;
        m->koff = gq_realloc(m->koff, m->ecap * sizeof *m->koff);
        m->klen = gq_realloc(m->klen, m->ecap * sizeof *m->klen);
        m->val = gq_realloc(m->val, m->ecap * sizeof *m->val);
    }
    if (m->keys_n + n > m->keys_cap) {
        m->keys_cap = m->keys_cap ? m->keys_cap * 2 : 1024;
        while (m->keys_cap < m->keys_n + n) m->keys_cap *= 2;
        m->keys = gq_realloc(m->keys, m->keys_cap);
    }
    size_t e = m->n++;
    memcpy(m->keys + m->keys_n, k, n);
    m->koff[e] = (uint32_t)m->keys_n;
    m->klen[e] = (uint32_t)n;
    m->val[e] = val;
    m->keys_n += n;
    m->slots[i].h = h;
    m->slots[i].ent = (uint32_t)(e + 1);
    if (m->n * 2 > m->mask + 1) strmap_grow(m);
    return e;
}

/* ---- (id, id) -> merge ---------------------------------------------------- */

void gq_tok_pairmap_init(gq_tok_pairmap *m, size_t expect) {
    size_t cap = pow2_at_least(expect * 2 + 1);
    m->slots = gq_malloc(cap * sizeof *m->slots);
    for (size_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->n = 0;
}

void gq_tok_pairmap_free(gq_tok_pairmap *m) {
    if (!m) return;
    free(m->slots);
    memset(m, 0, sizeof *m);
}

static void pairmap_insert(gq_tok_pair *slots, size_t mask, gq_tok_pair p, size_t *n) {
    size_t i = (size_t)((p.key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
    while (slots[i].key != UINT64_MAX && slots[i].key != p.key) i = (i + 1) & mask;
    if (slots[i].key == UINT64_MAX) (*n)++;
    slots[i] = p;
}

void gq_tok_pairmap_put(gq_tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    if ((m->n + 1) * 2 > m->mask + 1) {
        size_t cap = (m->mask + 1) * 2, n = 0;
        gq_tok_pair *ns = gq_malloc(cap * sizeof *ns);
        for (size_t i = 0; i < cap; i++) ns[i].key = UINT64_MAX;
        for (size_t i = 0; i <= m->mask; i++)
            if (m->slots[i].key != UINT64_MAX) pairmap_insert(ns, cap - 1, m->slots[i], &n);
        free(m->slots);
        m->slots = ns;
        m->mask = cap - 1;
        m->n = n;
    }
    gq_tok_pair p = {(uint64_t)(uint32_t)a << 32 | (uint32_t)b, rank, new_id};
    pairmap_insert(m->slots, m->mask, p, &m->n);
}

/* ---- trie ----------------------------------------------------------------- */

void gq_tok_trie_init(gq_tok_trie *tr) {
    memset(tr, 0, sizeof *tr);
    for (int i = 0; i < 256; i++) tr->root[i] = -1;
}

void gq_tok_trie_free(gq_tok_trie *tr) {
    if (!tr) return;
    free(tr->nodes);
    tr->nodes = NULL;
    tr->n = tr->cap = 0;
}

static int32_t trie_new_node(gq_tok_trie *tr, uint8_t byte) {
    if (tr->n == tr->cap) {
        tr->cap = tr->cap ? tr->cap * 2 : 64;
        tr->nodes = gq_realloc(tr->nodes, (size_t)tr->cap * sizeof *tr->nodes);
    }
    gq_tok_trie_node *nd = &tr->nodes[tr->n];
    nd->child = nd->sibling = nd->tok = -1;
    nd->byte = byte;
    return tr->n++;
}

void gq_tok_trie_add(gq_tok_trie *tr, const char *s, size_t n, int32_t tok) {
    if (n == 0) return; /* an empty token never matches */
    uint8_t b0 = (uint8_t)s[0];
    if (tr->root[b0] < 0) tr->root[b0] = trie_new_node(tr, b0);
    int32_t cur = tr->root[b0];
    for (size_t i = 1; i < n; i++) {
        uint8_t b = (uint8_t)s[i];
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != b) c = tr->nodes[c].sibling;
        if (c < 0) {
            c = trie_new_node(tr, b); /* may move nodes: index, not pointer */
            tr->nodes[c].sibling = tr->nodes[cur].child;
            tr->nodes[cur].child = c;
        }
        cur = c;
    }
    /* a second token with the same content: keep the first (same text) */
    if (tr->nodes[cur].tok < 0) tr->nodes[cur].tok = tok;
    tr->n_tokens++;
}

int32_t gq_tok_trie_longest(const gq_tok_trie *tr, const char *s, size_t n, size_t *len) {
    int32_t cur = tr->root[(uint8_t)s[0]];
    int32_t best = -1;
    size_t i = 1;
    while (cur >= 0) {
        if (tr->nodes[cur].tok >= 0) {
            best = tr->nodes[cur].tok;
            *len = i;
        }
        if (i >= n) break;
        uint8_t b = (uint8_t)s[i++];
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != b) c = tr->nodes[c].sibling;
        cur = c;
    }
    return best;
}

/* ---- arena ------------------------------------------------------------------ */

struct gq_tok_block {
    gq_tok_block *prev;
    size_t used, cap;
    char data[];
};

char *gq_tok_arena_alloc(gq_tok_arena *a, size_t n) {
    gq_tok_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > (1u << 16) ? n : (1u << 16);
        gq_tok_block *nb = gq_malloc(sizeof *nb + cap);
        nb->prev = b;
        nb->used = 0;
        nb->cap = cap;
        a->head = b = nb;
    }
    char *p = b->data + b->used;
    b->used += n;
    return p;
}

void gq_tok_arena_reset(gq_tok_arena *a) {
    gq_tok_block *b = a->head;
    if (!b) return;
    gq_tok_block *p = b->prev;
    while (p) {
        gq_tok_block *q = p->prev;
        free(p);
        p = q;
    }
    b->prev = NULL;
    b->used = 0;
}

void gq_tok_arena_free(gq_tok_arena *a) {
    if (!a) return;
    gq_tok_block *b = a->head;
    while (b) {
        gq_tok_block *q = b->prev;
        free(b);
        b = q;
    }
    a->head = NULL;
}
