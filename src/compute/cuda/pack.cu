/*
 * cuda/pack.cu -- the AutoGPTQ qweight on the GPU, word for word what
 * gq_pack (src/io/pack.c) writes:
 *
 *   codes   uint8 [N][K]  (rows = N out features, cols = K in features,
 *                          original column order)
 *   qweight int32 [K * bits / 32][N]: column n is the little-endian bit
 *                          stream of codes[n][0..K) cut into 32-bit words
 *
 * 32 consecutive codes of a column are exactly `bits` words of its stream
 * for every width (3 bits: AutoGPTQ's 32-values-in-3-words pattern), so a
 * thread packs one 32-code chunk of one column into `bits` words.
 *
 * A CTA takes a tile of PACK_TN = 32 columns n x PACK_TK = 256 codes k:
 *   load: the tile's 32 code rows [n][k0 .. k0 + 256) go to shared memory
 *     with 4-byte loads, a warp per 128 contiguous bytes of one row
 *     (coalesced; K is a multiple of 4 for every packable shape);
 *   pack: warp w packs chunk w (codes k0 + 32 w ..) of the tile, lane l for
 *     column n0 + l, reading its 8 words of the row from shared memory (rows
 *     PACK_TK / 4 + 1 words apart, so the 32 lanes hit 32 different banks);
 *     its `bits` stores go to word rows (k0 + 32 w) * bits / 32 + j, each a
 *     contiguous 128-byte line of 32 columns.
 * The last chunk of a column may be short (K a multiple of 32 / bits only):
 * its missing codes read as 0 and only its (K - kc) * bits / 32 whole words
 * are stored.
 */
#include <stdint.h>

#include "common.cuh"
#include "gq/pack.h"

#define PACK_TN 32                  /* columns n per CTA (one per lane) */
#define PACK_TK 256                 /* codes k per CTA: one 32-code chunk per warp */
#define PACK_THREADS (PACK_TK)      /* PACK_TK / 32 warps of 32 lanes */
#define PACK_LDS (PACK_TK / 4 + 1)  /* uint32 per shared tile row (+1: no bank conflicts) */

/* qw [K * BITS / 32][N] from codes [N][K]; grid (ceil(N / 32), ceil(K / 256)). */
template <int BITS>
static __global__ void __launch_bounds__(PACK_THREADS)
    pack_qweight_kernel(uint32_t *qw, const uint8_t *codes, int N, int K) {
    __shared__ uint32_t tile[PACK_TN * PACK_LDS]; /* [32 columns n][PACK_TK / 4 words of 4 codes] */
    const int n0 = blockIdx.x * PACK_TN, k0 = blockIdx.y * PACK_TK;
    const int kw = (K - k0 < PACK_TK ? K - k0 : PACK_TK) / 4; /* valid words per tile row */
    for (int i = threadIdx.x; i < PACK_TN * (PACK_TK / 4); i += PACK_THREADS) {
        const int r = i / (PACK_TK / 4), w = i - r * (PACK_TK / 4);
        uint32_t v = 0;
        if (n0 + r < N && w < kw) v = *(const uint32_t *)(codes + (size_t)(n0 + r) * K + k0 + 4 * w);
        tile[r * PACK_LDS + w] = v;
    }
    __syncthreads();

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n = n0 + lane, kc = k0 + 32 * warp; /* this thread: column n, codes kc .. kc + 31 */
    if (n >= N || kc >= K) return;
    const uint32_t *src = tile + lane * PACK_LDS + 8 * warp; /* the chunk's 32 codes, 4 per word */
    uint32_t out[BITS];
#pragma unroll
    for (int j = 0; j < BITS; j++) out[j] = 0;
#pragma unroll
    for (int i = 0; i < 32; i++) { /* put_bits of pack.c, every index a constant after unrolling */
        const uint32_t v = (src[i >> 2] >> (8 * (i & 3))) & ((1u << BITS) - 1u);
        const int bit = i * BITS, w = bit >> 5, off = bit & 31;
        out[w] |= v << off;
        if (off + BITS > 32 && w + 1 < BITS) /* across two words (never past the chunk's last word) */
            out[w + 1] |= v >> (32 - off);
    }
    const int nw = K - kc >= 32 ? BITS : (K - kc) * BITS / 32; /* whole words of a short last chunk */
    uint32_t *dst = qw + (size_t)(kc / 32) * BITS * N + n;     /* word row kc * BITS / 32 */
#pragma unroll
    for (int j = 0; j < BITS; j++)
        if (j < nw) dst[(size_t)j * N] = out[j];
}

int gq_cuda_pack_qweight(gq_backend *be, int32_t *qw, const uint8_t *codes, int rows, int cols, int bits) {
    int rc = gq_pack_check(rows, cols, bits);
    if (rc != GQ_OK) return rc;
    if (!qw || !codes || (uintptr_t)codes % 4 != 0)
        return gq_err(GQ_ERR_ARG, "pack (cuda): expected device buffers with the codes 4-byte aligned, got %p, %p",
                      (void *)qw, (const void *)codes);
    const int ktiles = CEIL_DIV(cols, PACK_TK);
    if (ktiles > 65535)
        return gq_err(GQ_ERR_UNSUPPORTED, "pack (cuda): in_features %d exceeds the limit of %d", cols,
                      65535 * PACK_TK);
    const dim3 grid((unsigned)CEIL_DIV(rows, PACK_TN), (unsigned)ktiles);
    const cudaStream_t s = gq_cuda_ctx_of(be)->stream;
    uint32_t *w = (uint32_t *)qw;
    switch (bits) {
    case 2: pack_qweight_kernel<2><<<grid, PACK_THREADS, 0, s>>>(w, codes, rows, cols); break;
    case 3: pack_qweight_kernel<3><<<grid, PACK_THREADS, 0, s>>>(w, codes, rows, cols); break;
    case 4: pack_qweight_kernel<4><<<grid, PACK_THREADS, 0, s>>>(w, codes, rows, cols); break;
    default: pack_qweight_kernel<8><<<grid, PACK_THREADS, 0, s>>>(w, codes, rows, cols); break;
    }
    CUDA_CHECK_LAUNCH();
    return GQ_OK;
}
