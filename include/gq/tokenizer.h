/*
 * gq/tokenizer.h -- Hugging Face tokenizer.json (BPE) encode and decode.
 *
 * Two families of BPE tokenizers are supported, token for token equal to
 * the Hugging Face `tokenizers` library:
 *   - byte-level (GPT-2, Llama-3, Qwen2/2.5/3, StarCoder, pycoder): the
 *     ByteLevel pre-tokenizer (its built-in GPT-2 regex when use_regex is
 *     true, or the Split regex given in the file, run with PCRE2 and Unicode
 *     properties), the byte-to-unicode map, merges applied by rank,
 *     ignore_merges;
 *   - SentencePiece style (Llama-2, CodeLlama, Mistral): Prepend/Replace or
 *     Metaspace normalizer and pre-tokenizer, byte fallback <0xNN>, unk.
 * Normalizers, in any Sequence: Prepend, Replace, NFC, NFD, NFKC, NFKD (with
 * libutf8proc, limited to the Unicode 9.0 characters that `tokenizers`
 * knows), Lowercase, StripAccents, Strip.
 * Added/special tokens are matched in the text first (their lstrip/rstrip/
 * single_word/normalized flags honoured). The TemplateProcessing
 * post-processor (e.g. prepend <s>) is applied when add_special is set.
 *
 * The tokenizer is immutable after loading; encode/decode may be called
 * from several threads at once (each call uses its own scratch memory).
 */
#ifndef GQ_TOKENIZER_H
#define GQ_TOKENIZER_H

#include "gq/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gq_tokenizer gq_tokenizer;

/* Growable id vector. Zero-initialise; free with gq_ids_free. */
typedef struct {
    int32_t *v;
    size_t n, cap;
} gq_ids;
void gq_ids_push(gq_ids *a, int32_t id);
void gq_ids_append(gq_ids *a, const int32_t *ids, size_t n);
void gq_ids_free(gq_ids *a);

/* Load from a model directory (tokenizer.json, plus tokenizer_config.json
 * beside it when present, for add_bos/add_eos and the chat template) or from
 * a tokenizer.json path. */
int gq_tok_load(gq_tokenizer **out, const char *path);
void gq_tok_free(gq_tokenizer *t);

/* Encode len bytes of UTF-8 text, appending ids to out. add_special applies
 * the post-processor (the BOS of Llama tokenizers). Invalid UTF-8 is handled
 * the way `tokenizers` handles it after Python's decode with errors=replace
 * (each bad byte -- precisely, each maximal ill-formed subsequence, such as
 * a truncated multi-byte sequence -- becomes one U+FFFD). */
int gq_tok_encode(const gq_tokenizer *t, const char *text, size_t len, int add_special, gq_ids *out);

/* Decode ids to a newly allocated NUL-terminated string (byte-level and
 * byte-fallback decoding, "▁" to space, leading-space strip as the decoder
 * in the file says). skip_special drops special tokens. */
int gq_tok_decode(const gq_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **out,
                  size_t *out_len);

/* Decode ids as the continuation of prefix (e.g. generated ids after their
 * prompt): decode(prefix + ids) minus decode(prefix), so that
 * decode(prefix) + result == decode(prefix + ids). Use it for every
 * generated text: decoding the answer alone treats it as the start of a
 * text, and a Llama-2 style decoder (Strip of the leading space, Metaspace
 * prepend) then drops the answer's first space. Where the decoder joins
 * tokens across the boundary (a UTF-8 character whose bytes are split
 * between prefix and ids, a byte-fallback run that spans it), decode(prefix)
 * is not a prefix of decode(prefix + ids): the result is then
 * decode(prefix + ids) after the longest common prefix of the two texts
 * (cut back to a character boundary), so the straddling characters belong
 * to the continuation. n_prefix = 0 is plain gq_tok_decode. */
int gq_tok_decode_continuation(const gq_tokenizer *t, const int32_t *prefix, size_t n_prefix, const int32_t *ids,
                               size_t n, int skip_special, char **out, size_t *out_len);

int gq_tok_vocab_size(const gq_tokenizer *t);
/* BOS / EOS: tokenizer_config.json's bos_token / eos_token, else the first
 * id of the post-processor template (BOS), else a usual name ("<s>",
 * "<|begin_of_text|>", "</s>", "<|endoftext|>", ...); -1 if none, and
 * always -1 where tokenizer_config.json says "bos_token": null (Qwen2)
 * unless the template adds one. */
int gq_tok_bos(const gq_tokenizer *t);
int gq_tok_eos(const gq_tokenizer *t);
int gq_tok_unk(const gq_tokenizer *t); /* -1 if none */
/* Whether the post-processor (add_special) prepends BOS. */
int gq_tok_adds_bos(const gq_tokenizer *t);
/* Token string as stored in the vocab ("Ġthe", "▁the", "<0x0A>"), or NULL. */
const char *gq_tok_piece(const gq_tokenizer *t, int32_t id);
int32_t gq_tok_find(const gq_tokenizer *t, const char *piece); /* -1 if absent */
int gq_tok_is_special(const gq_tokenizer *t, int32_t id);
/* chat_template string of tokenizer_config.json or NULL. */
const char *gq_tok_chat_template(const gq_tokenizer *t);

#ifdef __cplusplus
}
#endif
#endif /* GQ_TOKENIZER_H */
