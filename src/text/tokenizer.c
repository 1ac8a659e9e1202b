/* tokenizer.c -- gq_ids, accessors and gq_tok_free. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"

void gq_ids_push(gq_ids *a, int32_t id) {
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = gq_realloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = id;
}

void gq_ids_append(gq_ids *a, const int32_t *ids, size_t n) {
    if (!n) return;
    if (a->n + n > a->cap) {
        size_t cap = a->cap ? a->cap : 64;
        while (cap < a->n + n) cap *= 2;
        a->v = gq_realloc(a->v, cap * sizeof *a->v);
        a->cap = cap;
    }
    memcpy(a->v + a->n, ids, n * sizeof *ids);
    a->n += n;
}

void gq_ids_free(gq_ids *a) {
    if (!a) return;
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

void gq_tok_free(gq_tokenizer *t) {
    if (!t) return;
    if (t->piece)
        for (int32_t i = 0; i < t->n_vocab; i++) free(t->piece[i]);
    free(t->piece);
    if (t->dec_piece)
        for (int32_t i = 0; i < t->n_vocab; i++) free(t->dec_piece[i]);
    free(t->dec_piece);
    free(t->dec_piece_len);
    free(t->piece_len);
    free(t->special);
    gq_tok_strmap_free(&t->pieces);
    gq_tok_strmap_free(&t->model);
    gq_tok_pairmap_free(&t->merges);
    for (int i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    gq_tok_trie_free(&t->trie_raw);
    gq_tok_trie_free(&t->trie_norm);
    pcre2_code_free(t->word_re);
    for (int i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
        pcre2_code_free(t->norm[i].re);
    }
    for (int i = 0; i < t->n_pre; i++) {
        pcre2_code_free(t->pre[i].re);
        free(t->pre[i].lit);
    }
    for (int i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    free(t->post_pre);
    free(t->post_post);
    free(t->chat_template);
    free(t->path);
    free(t);
}

int gq_tok_vocab_size(const gq_tokenizer *t) { return t->n_vocab; }
int gq_tok_bos(const gq_tokenizer *t) { return t->bos; }
int gq_tok_eos(const gq_tokenizer *t) { return t->eos; }
int gq_tok_unk(const gq_tokenizer *t) { return t->unk; }
int gq_tok_adds_bos(const gq_tokenizer *t) { return t->n_post_pre > 0 && t->bos >= 0 && t->post_pre[0] == t->bos; }

const char *gq_tok_piece(const gq_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab ? t->piece[id] : NULL;
}

int32_t gq_tok_find(const gq_tokenizer *t, const char *piece) {
    return gq_tok_strmap_get(&t->pieces, piece, strlen(piece));
}

int gq_tok_is_special(const gq_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->special[id];
}

const char *gq_tok_chat_template(const gq_tokenizer *t) { return t->chat_template; }
