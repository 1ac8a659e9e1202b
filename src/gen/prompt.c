/* prompt.c -- prompt templates of gq/prompt.h: raw, a "{question}"
 * template string, or the tokenizer's chat_template through gq/jinja.h. */
#include <stdlib.h>
#include <string.h>

#include "gq/jinja.h"
#include "gq/prompt.h"

enum { P_RAW, P_CHAT, P_STRING };

struct gq_prompt {
    int kind;
    char *tpl;       /* P_STRING: escapes interpreted */
    gq_jinja *jt;    /* P_CHAT */
    char *bos, *eos; /* token strings ("" if none) */
};

static char *piece_or_empty(const gq_tokenizer *tok, int id) {
    const char *p = id >= 0 ? gq_tok_piece(tok, id) : NULL;
    return gq_strdup(p ? p : "");
}

int gq_prompt_init(gq_prompt **out, const char *spec, const gq_tokenizer *tok) {
    *out = NULL;
    if (!spec || !*spec)
        return gq_err(GQ_ERR_ARG, "--template: expected raw, chat or a string with {question}, got ''");
    gq_prompt *p = gq_calloc(1, sizeof *p);
    if (!strcmp(spec, "raw")) {
        p->kind = P_RAW;
    } else if (!strcmp(spec, "chat")) {
        p->kind = P_CHAT;
        const char *ct = tok ? gq_tok_chat_template(tok) : NULL;
        if (!ct) {
            free(p);
            return gq_err(GQ_ERR_ARG, "--template chat: the tokenizer has no chat_template in tokenizer_config.json; "
                                      "use --template raw or a template string with {question}");
        }
        int rc = gq_jinja_parse(&p->jt, ct, strlen(ct), "chat_template");
        if (rc) {
            free(p);
            return gq_err_prefix("--template chat: tokenizer_config.json");
        }
        p->bos = piece_or_empty(tok, gq_tok_bos(tok));
        p->eos = piece_or_empty(tok, gq_tok_eos(tok));
    } else {
        p->kind = P_STRING;
        size_t n = strlen(spec), k = 0;
        p->tpl = gq_malloc(n + 1);
        for (size_t i = 0; i < n; i++) {
            if (spec[i] == '\\' && i + 1 < n && strchr("ntr\\", spec[i + 1])) {
                char e = spec[++i];
                p->tpl[k++] = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : '\\';
            } else {
                p->tpl[k++] = spec[i];
            }
        }
        p->tpl[k] = 0;
        if (!strstr(p->tpl, "{question}")) {
            gq_prompt_free(p);
            return gq_err(GQ_ERR_ARG, "--template '%s': expected raw, chat or a template containing {question}", spec);
        }
    }
    *out = p;
    return GQ_OK;
}

void gq_prompt_free(gq_prompt *p) {
    if (!p) return;
    gq_jinja_free(p->jt);
    free(p->tpl);
    free(p->bos);
    free(p->eos);
    free(p);
}

const char *gq_prompt_kind(const gq_prompt *p) {
    return p->kind == P_RAW ? "raw" : p->kind == P_CHAT ? "chat" : "template";
}

int gq_prompt_render(const gq_prompt *p, const char *question, char **text, size_t *len, int *add_special) {
    *text = NULL;
    size_t qn = strlen(question);
    if (p->kind == P_RAW) {
        *text = gq_strdup(question);
        *len = qn;
        *add_special = 1;
        return GQ_OK;
    }
    if (p->kind == P_CHAT) {
        const char *role = "user";
        *add_special = 0;
        return gq_jinja_render_chat(p->jt, &role, &question, 1, p->bos, p->eos, 1, text, len);
    }
    /* "{question}" substitution */
    static const char key[] = "{question}";
    size_t kn = sizeof key - 1, count = 0;
    for (const char *s = strstr(p->tpl, key); s; s = strstr(s + kn, key)) count++;
    size_t n = strlen(p->tpl) - count * kn + count * qn, k = 0;
    char *o = gq_malloc(n + 1);
    for (const char *s = p->tpl; *s;) {
        if (!strncmp(s, key, kn)) {
            memcpy(o + k, question, qn);
            k += qn;
            s += kn;
        } else {
            o[k++] = *s++;
        }
    }
    o[k] = 0;
    *text = o;
    *len = k;
    *add_special = 1;
    return GQ_OK;
}

int gq_prompt_encode(const gq_prompt *p, const gq_tokenizer *tok, const char *question, gq_ids *ids, char **text) {
    char *t;
    size_t n;
    int special;
    int rc = gq_prompt_render(p, question, &t, &n, &special);
    if (rc) return rc;
    rc = gq_tok_encode(tok, t, n, special, ids);
    if (rc == GQ_OK && text) {
        size_t b = p->bos ? strlen(p->bos) : 0;
        if (b && n >= b && !memcmp(t, p->bos, b)) memmove(t, t + b, n - b + 1);
        *text = t;
    } else {
        free(t);
    }
    return rc;
}
