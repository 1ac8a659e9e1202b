/*
 * tokenizer_impl.h (private) -- the loaded tokenizer and the helpers shared
 * by tokenizer*.c:
 *   tokenizer_load.c    tokenizer.json / tokenizer_config.json -> gq_tokenizer
 *   tokenizer_maps.c    hash maps (string -> id, id pair -> merge), trie, arena
 *   tokenizer_bpe.c     BPE on one word (linked-list + heap merge), word cache
 *   tokenizer_encode.c  added tokens, normalizers, pre-tokenizers, encode
 *   tokenizer_decode.c  decoders, decode
 *   tokenizer.c         accessors, gq_ids, free
 *
 * Model keys: for a byte-level tokenizer every vocab piece is stored both as
 * written ("Ġthe") and, for the model, as the raw bytes it stands for
 * (" the"), so encoding never maps text through the byte-to-unicode table;
 * BPE symbols start as single bytes. Otherwise model keys are the pieces.
 */
#ifndef GQ_TOKENIZER_IMPL_H
#define GQ_TOKENIZER_IMPL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <string.h>

#include "gq/tokenizer.h"

/* ---- string -> int32 map (open addressing, keys copied into an arena) ---- */

typedef struct {
    uint32_t h;   /* hash (low 32 bits) */
    uint32_t ent; /* entry index + 1; 0 = empty slot */
} gq_tok_slot;

typedef struct {
    gq_tok_slot *slots; /* [mask + 1] */
    size_t mask;
    uint32_t *koff, *klen; /* [n] key offset / length in keys */
    int32_t *val;          /* [n] */
    size_t n, ecap;
    char *keys;
    size_t keys_n, keys_cap;
} gq_tok_strmap;

void gq_tok_strmap_init(gq_tok_strmap *m, size_t expect);
void gq_tok_strmap_free(gq_tok_strmap *m);
/* Value for key, or -1. */
int32_t gq_tok_strmap_get(const gq_tok_strmap *m, const char *k, size_t n);
/* Insert or overwrite; returns the entry index. */
size_t gq_tok_strmap_put(gq_tok_strmap *m, const char *k, size_t n, int32_t val);
uint64_t gq_tok_hash(const char *s, size_t n);

/* ---- (id, id) -> (rank, new id) map for merges ---- */

typedef struct {
    uint64_t key; /* (uint64)left << 32 | right; UINT64_MAX = empty */
    int32_t rank, new_id;
} gq_tok_pair;

typedef struct {
    gq_tok_pair *slots; /* [mask + 1] */
    size_t mask, n;
} gq_tok_pairmap;

void gq_tok_pairmap_init(gq_tok_pairmap *m, size_t expect);
void gq_tok_pairmap_free(gq_tok_pairmap *m);
void gq_tok_pairmap_put(gq_tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t new_id);
static inline const gq_tok_pair *gq_tok_pairmap_get(const gq_tok_pairmap *m, int32_t a, int32_t b) {
    uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & m->mask;
    for (;;) {
        const gq_tok_pair *p = &m->slots[i];
        if (p->key == key) return p;
        if (p->key == UINT64_MAX) return NULL;
        i = (i + 1) & m->mask;
    }
}

/* ---- byte trie of added tokens (leftmost-longest matching) ---- */

typedef struct {
    int32_t child, sibling; /* node indices, -1 = none */
    int32_t tok;            /* index into gq_tokenizer.added, -1 = not an end */
    uint8_t byte;
} gq_tok_trie_node;

typedef struct {
    gq_tok_trie_node *nodes; /* nodes[0] is the root */
    int n, cap;
    int32_t root[256]; /* first-level child per byte, -1 = none */
    int n_tokens;
} gq_tok_trie;

void gq_tok_trie_init(gq_tok_trie *tr);
void gq_tok_trie_free(gq_tok_trie *tr);
void gq_tok_trie_add(gq_tok_trie *tr, const char *s, size_t n, int32_t tok);
/* Longest token starting at s[0..n): its index (length in *len), or -1. */
int32_t gq_tok_trie_longest(const gq_tok_trie *tr, const char *s, size_t n, size_t *len);

/* First occurrence of needle (nn >= 1 bytes) in h[0..hn), or NULL. memchr
 * based: reads only up to the match (memmem may scan its whole haystack,
 * which is quadratic when called repeatedly on a long text). */
static inline const char *gq_tok_find_bytes(const char *h, size_t hn, const char *needle, size_t nn) {
    const char *end = h + hn;
    while ((size_t)(end - h) >= nn) {
        const char *p = memchr(h, (unsigned char)needle[0], (size_t)(end - h) - nn + 1);
        if (!p) return NULL;
        if (memcmp(p + 1, needle + 1, nn - 1) == 0) return p;
        h = p + 1;
    }
    return NULL;
}

/* ---- chunked arena: pointers stay valid until reset/free ---- */

typedef struct gq_tok_block gq_tok_block;
typedef struct {
    gq_tok_block *head;
} gq_tok_arena;
char *gq_tok_arena_alloc(gq_tok_arena *a, size_t n);
void gq_tok_arena_reset(gq_tok_arena *a); /* keeps the newest block */
void gq_tok_arena_free(gq_tok_arena *a);

/* ---- pipeline configuration ---- */

typedef struct {
    char *content; /* as in the file */
    size_t len;
    char *norm; /* content after the normalizer (normalized tokens) */
    size_t norm_len;
    int32_t id;
    uint8_t special, lstrip, rstrip, single_word, normalized;
} gq_tok_added;

enum {
    GQ_NORM_PREPEND,
    GQ_NORM_REPLACE,
    GQ_NORM_UNICODE, /* NFC, NFD, NFKC, NFKD: form = GQ_UNI_* */
    GQ_NORM_LOWERCASE,
    GQ_NORM_STRIP_ACCENTS,
    GQ_NORM_STRIP
};
typedef struct {
    int kind;
    char *a; /* PREPEND: text to prepend; REPLACE: literal pattern (if !re) */
    size_t a_len;
    char *b; /* REPLACE: replacement */
    size_t b_len;
    pcre2_code *re;  /* REPLACE with a Regex pattern */
    int form;        /* UNICODE */
    int left, right; /* STRIP: strip_left, strip_right */
} gq_tok_norm;

enum { GQ_PRE_SPLIT, GQ_PRE_BYTELEVEL, GQ_PRE_METASPACE, GQ_PRE_DIGITS };
enum {
    GQ_SPLIT_REMOVED,
    GQ_SPLIT_ISOLATED,
    GQ_SPLIT_MERGED_PREV,
    GQ_SPLIT_MERGED_NEXT,
    GQ_SPLIT_CONTIGUOUS
};
enum { GQ_PREPEND_ALWAYS, GQ_PREPEND_FIRST, GQ_PREPEND_NEVER };
typedef struct {
    int kind;
    pcre2_code *re; /* SPLIT regex, or BYTELEVEL's GPT-2 regex (use_regex) */
    char *lit;      /* SPLIT String pattern (when !re) */
    size_t lit_len;
    int behavior, invert;
    int add_prefix_space;  /* BYTELEVEL */
    char repl[8];          /* METASPACE replacement (UTF-8) */
    int repl_len;
    int prepend, split;    /* METASPACE prepend scheme, split flag */
    int individual_digits; /* DIGITS */
} gq_tok_pre;

enum {
    GQ_DEC_BYTELEVEL,
    GQ_DEC_METASPACE,
    GQ_DEC_REPLACE,
    GQ_DEC_BYTEFALLBACK,
    GQ_DEC_FUSE,
    GQ_DEC_STRIP
};
typedef struct {
    int kind;
    char *a, *b; /* REPLACE: pattern, content */
    size_t a_len, b_len;
    uint32_t cp;     /* STRIP content char, METASPACE replacement */
    int start, stop; /* STRIP */
    int prepend;     /* METASPACE prepend scheme */
} gq_tok_dec;

#define GQ_TOK_MAX_STEPS 8

struct gq_tokenizer {
    char *path; /* tokenizer.json, for messages */
    int32_t n_vocab; /* max id + 1 over the model vocab and added tokens */
    char **piece;    /* [n_vocab] id -> piece as written (NULL: no such id) */
    uint32_t *piece_len;
    uint8_t *special; /* [n_vocab] 1 for added tokens marked special */
    /* [n_vocab] or NULL: decoded text of added tokens with normalized=true
     * whose normalized content differs ("▁<s>"), as `tokenizers` decodes them */
    char **dec_piece;
    uint32_t *dec_piece_len;
    gq_tok_strmap pieces; /* piece as written -> id (model vocab, then added) */
    gq_tok_strmap model;  /* model key -> id (model vocab only) */
    gq_tok_pairmap merges;
    int byte_level;
    int byte_fallback, fuse_unk, ignore_merges;
    /* No vocab piece has "▁" right after another character, and "▁" is a
     * piece: no merge can cross a boundary "x|▁", so a long word may be cut
     * there and its parts merged (and cached) separately -- same result.
     * Makes SentencePiece-style files without a pre-tokenizer (Llama-2:
     * the whole text is one word) as fast as pre-tokenized ones. */
    int sp_split;
    int32_t unk;
    int32_t sym1[256];     /* id of the one-byte model key, -1 if none */
    int32_t fallback[256]; /* id of "<0xNN>", -1 if none */
    gq_tok_added *added;
    int n_added;
    gq_tok_trie trie_raw, trie_norm; /* non-normalized / normalized added tokens */
    pcre2_code *word_re;             /* word-character class, for single_word */
    gq_tok_norm norm[GQ_TOK_MAX_STEPS];
    int n_norm;
    gq_tok_pre pre[GQ_TOK_MAX_STEPS];
    int n_pre;
    gq_tok_dec dec[GQ_TOK_MAX_STEPS];
    int n_dec, has_decoder;
    int32_t *post_pre, *post_post; /* ids added before / after the sequence */
    int n_post_pre, n_post_post;
    int32_t bos, eos;
    char *chat_template;
};

/* ---- BPE (tokenizer_bpe.c) ---- */

/* Per-call scratch of the BPE: symbol arrays and the merge heap. */
typedef struct {
    int32_t *id, *prev, *next, *rank;
    size_t cap;
    struct gq_tok_heap_ent *heap;
    size_t heap_n, heap_cap;
} gq_tok_bpe_scratch;

/* Word cache: word bytes -> ids, owned by one encode call. */
typedef struct {
    gq_tok_strmap map; /* word -> entry */
    uint32_t *off, *len; /* [entries] slice of ids */
    size_t n, cap;
    int32_t *ids;
    size_t ids_n, ids_cap;
} gq_tok_cache;

enum { GQ_BPE_AUTO = 0, GQ_BPE_SCAN, GQ_BPE_HEAP };
/* Append the BPE ids of the word w[0..n) (a model key: raw bytes for a
 * byte-level tokenizer) to out. mode forces one of the two merge loops
 * (they give identical results; tests compare them). */
void gq_tok_bpe_word(const gq_tokenizer *t, gq_tok_bpe_scratch *s, const char *w, size_t n, int mode,
                     gq_ids *out);
void gq_tok_bpe_scratch_free(gq_tok_bpe_scratch *s);

void gq_tok_cache_init(gq_tok_cache *c);
void gq_tok_cache_free(gq_tok_cache *c);
/* Ids of a cached word or NULL; *n set. */
const int32_t *gq_tok_cache_get(const gq_tok_cache *c, const char *w, size_t wn, size_t *n);
void gq_tok_cache_put(gq_tok_cache *c, const char *w, size_t wn, const int32_t *ids, size_t n);

/* ---- loading helpers (tokenizer_load.c) ---- */

/* Normalize s[0..n) with the tokenizer's normalizer into a new buffer. */
char *gq_tok_normalize_alloc(const gq_tokenizer *t, const char *s, size_t n, size_t *out_n);

#endif /* GQ_TOKENIZER_IMPL_H */
