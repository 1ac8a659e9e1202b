/*
 * gq/pack.h -- AutoGPTQ packing of integer codes (gptq-reference.md §2).
 *
 * For a Linear with K = in_features (cols), N = out_features (rows), G groups:
 *   qweight int32 [K * bits / 32][N]: for 2/4/8 bits, word r of column n
 *     holds the codes of input rows 32/bits * r + j at bits j*bits.., lowest
 *     first; 3 bits uses AutoGPTQ's 32-values-in-3-words pattern.
 *   qzeros  int32 [G][N * bits / 32]: the same packing along the output
 *     dimension, of (zero - 1) for checkpoint_format "gptq" (v1) or of zero
 *     for "gptq_v2".
 *   scales  fp16  [G][N]
 *   g_idx   int32 [K]
 * Words are packed as uint32 and stored as int32 (little-endian).
 * K must be a multiple of 32 / bits (of 32 for 3 bits), N likewise.
 *
 * A result may arrive with its qweight already packed (gq_qresult.qweight,
 * e.g. by the CUDA solve, src/compute/cuda/pack.cu); gq_pack then copies it instead
 * of packing the codes, when it was packed at the requested width.
 */
#ifndef GQ_PACK_H
#define GQ_PACK_H

#include "gq/common.h"
#include "gq/gptq.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int bits, rows, cols, ngroups; /* rows = N (out), cols = K (in) */
    int v2;                        /* zeros stored without the -1 offset */
    int32_t *qweight;              /* [qw_rows][rows], qw_rows = cols * bits / 32 */
    int32_t *qzeros;               /* [ngroups][qz_cols], qz_cols = rows * bits / 32 */
    uint16_t *scales;              /* [ngroups][rows] fp16 */
    int32_t *g_idx;                /* [cols] */
} gq_packed;

/* Exact for every shape gq_pack_check accepts (K a multiple of 32 / bits). */
static inline int gq_pack_qw_rows(int cols, int bits) { return (int)((int64_t)cols * bits / 32); }
static inline int gq_pack_qz_cols(int rows, int bits) { return (int)((int64_t)rows * bits / 32); }

/* The multiple that K and N must be of at this width: 32 / bits, 32 for
 * 3 bits, 0 for an unsupported width. */
static inline int gq_pack_multiple(int bits) {
    return bits == 3 ? 32 : (bits == 2 || bits == 4 || bits == 8) ? 32 / bits : 0;
}
/* gq_pack_check as a predicate that records no error: 1 when a rows x cols
 * weight packs at this width, 0 otherwise. */
static inline int gq_pack_shape_ok(int rows, int cols, int bits) {
    const int m = gq_pack_multiple(bits);
    return m > 0 && rows > 0 && cols > 0 && rows % m == 0 && cols % m == 0;
}
/* Check that rows/cols can be packed at this width; GQ_ERR_UNSUPPORTED
 * naming the shape otherwise. */
int gq_pack_check(int rows, int cols, int bits);
/* Pack a quantizer result. v2 = 0 needs every zero >= 1 (GQ_ERR_ARG else).
 * The codes, zeros, scales and g_idx are always validated; qweight is then
 * copied from r->qweight when it is non-NULL and r->qweight_bits == bits
 * (trusted to be the packing of r->codes: not compared with them), and
 * packed from r->codes otherwise. */
int gq_pack(const gq_qresult *r, int bits, int v2, gq_packed *out);
/* Inverse of gq_pack: codes [rows][cols], zeros [ngroups][rows], scales f32. */
int gq_unpack(const gq_packed *p, uint8_t *codes, int32_t *zeros, float *scales);
/* Dequantize W [rows][cols] = scale[g_idx[k]][n] * (q - zero). */
int gq_packed_dequant(const gq_packed *p, float *W);
void gq_packed_free(gq_packed *p);

#ifdef __cplusplus
}
#endif
#endif /* GQ_PACK_H */
