/*
 * unicode.h (private) -- the few UTF-8 and Unicode facts the tokenizer needs.
 *
 * Invalid UTF-8 is repaired the way Python's bytes.decode("utf-8",
 * errors="replace") and Rust's String::from_utf8_lossy do it: every maximal
 * subpart of an ill-formed sequence (a lone bad byte, or the valid prefix of
 * a truncated sequence) becomes one U+FFFD.
 *
 * The normalizers (gq_uni_normalize, gq_uni_lowercase, gq_uni_strip_marks)
 * give what the normalizers of Hugging Face `tokenizers` give: NFC/NFD/NFKC/
 * NFKD through libutf8proc, restricted to the characters that the Unicode 9.0
 * tables of `tokenizers` know; the tables of tokenizer_unitab.c are generated
 * from `tokenizers` by tests/ref/gen_unitab.py (which says why).
 */
#ifndef GQ_UNICODE_H
#define GQ_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Length of the longest valid UTF-8 prefix of s[0..n). n if all valid. */
size_t gq_uni_valid_prefix(const char *s, size_t n);

/* Copy s[0..n) with each maximal ill-formed subpart replaced by U+FFFD into
 * a newly allocated buffer (NUL-terminated); returns it, length in *out_n. */
char *gq_uni_repair(const char *s, size_t n, size_t *out_n);

/* Decode one code point from valid UTF-8 (caller guarantees validity and
 * n >= 1); returns its byte length and stores the code point in *cp. */
int gq_uni_decode(const char *s, size_t n, uint32_t *cp);

/* Decode the code point that ends at s[n-1] (valid UTF-8, n >= 1). */
int gq_uni_decode_last(const char *s, size_t n, uint32_t *cp);

/* Encode cp into out (at least 4 bytes); returns the byte length. */
int gq_uni_encode(uint32_t cp, char *out);

/* Byte length of the UTF-8 sequence starting with lead byte b (1 for
 * continuation / invalid bytes, so scanning always advances). */
static inline int gq_uni_len(unsigned char b) {
    return b < 0xC0 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
}

/* Unicode White_Space property (Rust char::is_whitespace). */
int gq_uni_is_whitespace(uint32_t cp);

/* The GPT-2 byte-level map: byte -> code point ("Ġ" = U+0120 for ' '), and
 * the inverse (code point -> byte, -1 if not in the map). */
uint32_t gq_uni_bytelevel_char(unsigned char b);
int gq_uni_bytelevel_byte(uint32_t cp);

/* ---- normalizers (input: valid UTF-8; output: a new NUL-terminated
 * buffer, its length in *out_n) ---- */

enum { GQ_UNI_NFC, GQ_UNI_NFD, GQ_UNI_NFKC, GQ_UNI_NFKD };

/* Unicode normalization form `form` of s[0..n), as `tokenizers` does it. */
char *gq_uni_normalize(int form, const char *s, size_t n, size_t *out_n);

/* Each character replaced by its full lowercase mapping (Rust
 * char::to_lowercase: "İ" -> "i̇", no final-sigma rule). */
char *gq_uni_lowercase(const char *s, size_t n, size_t *out_n);

/* s[0..n) without its combining marks (StripAccents). */
char *gq_uni_strip_marks(const char *s, size_t n, size_t *out_n);

/* ---- tables (tokenizer_unitab.c, generated) ---- */

typedef struct {
    uint32_t lo, hi; /* inclusive */
} gq_uni_range;
typedef struct {
    uint32_t cp;
    uint32_t lower[3]; /* unused slots 0 */
} gq_uni_case;

extern const gq_uni_range gq_uni_norm_known[]; /* sorted, disjoint */
extern const size_t gq_uni_norm_known_n;
extern const gq_uni_range gq_uni_marks[];
extern const size_t gq_uni_marks_n;
extern const gq_uni_case gq_uni_lower_ex[]; /* sorted by cp */
extern const size_t gq_uni_lower_ex_n;

#endif /* GQ_UNICODE_H */
