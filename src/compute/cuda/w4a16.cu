/*
 * cuda/w4a16.cu -- int4 GPTQ weights resident on the GPU (W4A16): the repack at upload, the
 * decode kernel (T <= 16 tokens: a tensor-core GEMV that dequantizes the packed weights on the
 * fly, fp32 accumulation) and the prefill path (T > 16: dequantize into the backend's fp16
 * scratch [N][K], then the cuBLAS linear of backend_cuda.cu's arithmetic).
 *
 * Names: K = in_features, N = out_features of a part (rows of W), G its groups; a weight stacks
 * its parts by output rows (a fused q|k|v or gate|up projection), each with its own scales,
 * zeros, g_idx and group size.
 *
 * Device layout (one gq_be_alloc per weight, 256-byte aligned pieces):
 *   parts  w4_part [nparts]                the kernels' part table (device pointers below)
 *   per part, with ntiles = ceil(N / 16) n-tiles of 16 output columns (zero weights past N),
 *   k-tiles of 16 input positions, kc chunks of 4 k-tiles (64 positions):
 *   qw   uint32 [ntiles][kc][32 lanes][4]  word j of lane l = 4 g + t (g = l / 4, t = l % 4) is
 *        the A fragment of mma.m16n8k16 (A = W tile: 16 output rows x 16 inputs) for k-tile
 *        4 c + j: 8 nibbles, positions 0, 4 = row g, inputs e = 0, 1; 1, 5 = row g + 8, e = 0, 1;
 *        2, 6 = row g, e = 2, 3; 3, 7 = row g + 8, e = 2, 3, where input e of lane t is position
 *        4 t + e of the k-tile. (mma k index 2t, 2t+1, 2t+8, 2t+9 <-> positions 4t .. 4t+3: a
 *        lane's B fragment is then 4 consecutive inputs, one 8-byte load of X.) A lane's
 *        16-byte load = 4 k-tiles; a warp's = 512 contiguous bytes.
 *   meta uint2 [ntiles][G'][8]             for row g of an n-tile: .x = half2(scale, 1024 + zero),
 *        .y = half2(scale, -(64 + zero)) of row g + 8: the constants of the dequantization below.
 *   trivial g_idx (g_idx[k] = k / gs with gs a power of two >= 16, or a single group): positions
 *        are the inputs in order (K padded to kc * 64), group of k-tile kt = kt >> gshift (G' >= G
 *        covers the padding k-tiles, with zero scales; G' = G otherwise).
 *   general g_idx (act-order, other group sizes): the inputs sorted by group (stable), each
 *        group's run padded to a multiple of 16 so that every k-tile has one group:
 *   kgrp int32 [kc * 4]                    group of each k-tile
 *   xidx int32 [kc * 64]                   input (X column) of each position, -1 for padding
 *
 * Dequantization of a word w (the Marlin trick): (w & 0x000f000f) | 0x64006400 is the half2
 * (1024 + q0, 1024 + q4) of nibbles 0 and 4, (w & 0x00f000f0) | 0x64006400 is (1024 + 16 q1,
 * 1024 + 16 q5); then q - zero = lo - (1024 + zero) and hi / 16 - (64 + zero), both exact in
 * fp16, and W = fp16(scale * (q - zero)): the value the prefill path's dequantization writes and
 * the only rounding besides the output's (products and sums are fp32 in the tensor cores).
 *
 * Decode kernel: one CTA per n-tile (of every part: a part table lookup), its warps splitting
 * the chunks of K (warp w takes chunks w, w + nw, ...; 8 16-byte loads in flight per lane),
 * one mma per k-tile and 8 tokens (two for T > 8), the warps' C fragments summed in shared
 * memory, then Y = sum (+ bias) (+ Y) rounded once to fp16. No workspace, no second kernel.
 * The n-tile's meta ([G'][8], contiguous) is copied to shared memory while the first weight
 * loads are in flight, so a group change costs a shared-memory load, not a dependent trip to
 * device memory (meta over W4_SMEM_META bytes: read from global memory instead).
 */
#include <stdlib.h>
#include <string.h>

#include "common.cuh"

#define W4_DECODE_MAX_T 16 /* T above: the prefill path */
#define W4_MAX_WARPS 16    /* warps per CTA of the decode kernel */
#define W4_U 8             /* 16-byte loads in flight per lane (the default; GQ_CUDA_W4_U=4 or 2: fewer) */
#define W4_SMEM_META (96 << 10) /* largest n-tile meta staged in shared memory (G' <= 1536) */

/* One part of a weight, as the kernels see it (host copy in w4_weight, device copy in its buffer). */
typedef struct {
    const uint4 *qw;     /* [ntiles][kc][32] 16 bytes per lane (4 words) */
    const uint2 *meta;   /* [ntiles][mgroups][8] */
    const int32_t *kgrp; /* general: [kc * 4]; NULL for trivial g_idx */
    const int32_t *xidx; /* general: [kc * 64]; NULL for trivial g_idx */
    int tile0;           /* first n-tile of the part among the weight's (the CTA index) */
    int ntiles;          /* ceil(n / 16) */
    int n;               /* output columns of the part */
    int ycol;            /* its first column of Y */
    int kc;              /* chunks of 64 positions */
    int gshift;          /* trivial: group of k-tile kt = kt >> gshift */
    int general;         /* 1: groups from kgrp, inputs through xidx */
    int mgroups;         /* groups of meta (G') */
} w4_part;

/* The backend's int4 weight (gq_bweight.q4). */
typedef struct {
    gq_q4_head head;      /* device bytes */
    void *dev;            /* the one device buffer: part table, then every part's arrays */
    const w4_part *dpart; /* the device part table (at dev) */
    w4_part *part;        /* host copy [nparts] */
    int nparts, K, rows;
    int tiles;   /* n-tiles of all parts: the decode grid */
    int kc_max;  /* chunks of the longest part */
    int mg_max;  /* most meta groups of a part */
    int occ[2][3][W4_MAX_WARPS + 1]; /* resident CTAs per SM of the decode kernel <TWO, U = 8 / 4 / 2> with nw
                                      * warps (0: not asked yet) */
} w4_weight;

/* ---- host: planning and repacking ------------------------------------------------------------------ */

/* How a part's inputs are laid out: order [kc * 64] input of each position (-1: padding), kgrp
 * [kc * 4] group of each k-tile. */
typedef struct {
    int general, gshift, kc, ntiles;
    int mgroups; /* groups of meta: ngroups, and for trivial g_idx those of the padding k-tiles past K
                    ((4 kc - 1) >> gshift can exceed ngroups - 1; their scales are 0) */
    int32_t *order, *kgrp;
} w4_plan;

static int w4_log2(int v) {
    int s = 0;
    while ((1 << s) < v) s++;
    return s;
}

/* Trivial g_idx (k / gs with a power-of-two gs >= 16, or every k in group 0): positions = inputs
 * in order. Anything else: inputs sorted by group, each group's run padded to 16. */
static void w4_plan_part(const gq_packed *p, w4_plan *pl) {
    const int K = p->cols, G = p->ngroups;
    const int32_t *gi = p->g_idx;
    int gs = K; /* the first input of group 1 is the group size of a trivial g_idx */
    for (int k = 0; k < K; k++)
        if (gi[k] != 0) {
            gs = k;
            break;
        }
    int trivial = gs > 0;
    for (int k = 0; k < K && trivial; k++) trivial = gi[k] == k / gs;
    pl->general = 1;
    if (trivial && gs >= K) pl->general = 0, pl->gshift = 30; /* one group */
    else if (trivial && gs >= 16 && (gs & (gs - 1)) == 0) pl->general = 0, pl->gshift = w4_log2(gs) - 4;
    pl->ntiles = CEIL_DIV(p->rows, 16);
    if (!pl->general) {
        pl->kc = CEIL_DIV(K, 64);
        pl->order = (int32_t *)gq_malloc(sizeof(int32_t) * (size_t)pl->kc * 64);
        pl->kgrp = (int32_t *)gq_malloc(sizeof(int32_t) * (size_t)pl->kc * 4);
        for (int i = 0; i < pl->kc * 64; i++) pl->order[i] = i < K ? i : -1;
        for (int kt = 0; kt < pl->kc * 4; kt++) pl->kgrp[kt] = kt >> pl->gshift;
        pl->mgroups = ((pl->kc * 4 - 1) >> pl->gshift) + 1;
        if (pl->mgroups < G) pl->mgroups = G;
        return;
    }
    int *cnt = (int *)gq_calloc((size_t)G, sizeof(int)), *pos = (int *)gq_malloc(sizeof(int) * (size_t)G);
    for (int k = 0; k < K; k++) cnt[gi[k]]++;
    int ktiles = 0;
    for (int g = 0; g < G; g++) pos[g] = ktiles * 16, ktiles += CEIL_DIV(cnt[g], 16);
    pl->kc = CEIL_DIV(ktiles, 4);
    pl->mgroups = G;
    pl->order = (int32_t *)gq_malloc(sizeof(int32_t) * (size_t)pl->kc * 64);
    pl->kgrp = (int32_t *)gq_calloc((size_t)pl->kc * 4, sizeof(int32_t)); /* padding tiles: group 0 */
    for (int i = 0; i < pl->kc * 64; i++) pl->order[i] = -1;
    for (int g = 0; g < G; g++)
        for (int kt = pos[g] / 16; kt < pos[g] / 16 + CEIL_DIV(cnt[g], 16); kt++) pl->kgrp[kt] = g;
    for (int k = 0; k < K; k++) pl->order[pos[gi[k]]++] = k; /* stable: ascending k within a group */
    free(cnt);
    free(pos);
}

/* Code of input k, output column n (qweight [K/8][N]: word k / 8 of column n, bits 4 (k % 8)). */
static inline uint32_t w4_code(const gq_packed *p, int k, int n) {
    return ((uint32_t)p->qweight[(size_t)(k >> 3) * p->rows + n] >> (4 * (k & 7))) & 15u;
}
/* Zero point of group g, column n (qzeros [G][N/8], stored zero - 1 for v1). */
static inline uint32_t w4_zero(const gq_packed *p, int g, int n) {
    const uint32_t w = (uint32_t)p->qzeros[(size_t)g * (p->rows / 8) + n / 8];
    return ((w >> (4 * (n % 8))) & 15u) + (p->v2 ? 0u : 1u);
}

/* The row (0..15 in the n-tile: g or g + 8) and input e (0..3) of nibble position pos of a lane's
 * word; see the layout at the top. */
static inline int w4_pos_row8(int pos) { return 8 * (pos & 1); }
static inline int w4_pos_e(int pos) { return ((pos >> 1) & 1) * 2 + (pos >> 2); }

/* qw [ntiles][kc][32][4] of part p under plan pl. */
static void w4_repack_qw(const gq_packed *p, const w4_plan *pl, uint32_t *qw) {
    const int kc = pl->kc, N = p->rows;
#pragma omp parallel for schedule(static)
    for (int nt = 0; nt < pl->ntiles; nt++)
        for (int c = 0; c < kc; c++)
            for (int lane = 0; lane < 32; lane++)
                for (int j = 0; j < 4; j++) {
                    const int g = lane >> 2, t = lane & 3, kt = 4 * c + j;
                    uint32_t w = 0;
                    for (int pos = 0; pos < 8; pos++) {
                        const int n = nt * 16 + g + w4_pos_row8(pos);
                        const int k = pl->order[kt * 16 + 4 * t + w4_pos_e(pos)];
                        if (n < N && k >= 0) w |= w4_code(p, k, n) << (4 * pos);
                    }
                    qw[(((size_t)nt * kc + c) * 32 + lane) * 4 + j] = w;
                }
}

/* meta [ntiles][mgroups][8] of part p: {scale, 1024 + zero} of row g, {scale, -(64 + zero)} of row
 * g + 8 (fp16 bits; rows past N and groups past ngroups: scale 0, zero 0). */
static void w4_repack_meta(const gq_packed *p, const w4_plan *pl, uint2 *meta) {
    for (int grp = 0; grp < pl->mgroups; grp++)
        for (int nt = 0; nt < pl->ntiles; nt++)
            for (int g = 0; g < 8; g++) {
                const int N = grp < p->ngroups ? p->rows : 0; /* 0: padding group */
                const int n0 = nt * 16 + g, n1 = n0 + 8;
                const uint32_t s0 = n0 < N ? p->scales[(size_t)grp * N + n0] : 0u;
                const uint32_t s1 = n1 < N ? p->scales[(size_t)grp * N + n1] : 0u;
                const uint32_t z0 = n0 < N ? w4_zero(p, grp, n0) : 0u, z1 = n1 < N ? w4_zero(p, grp, n1) : 0u;
                uint2 m;
                m.x = s0 | (uint32_t)gq_f32_to_f16(1024.0f + (float)z0) << 16;
                m.y = s1 | (uint32_t)gq_f32_to_f16(-(64.0f + (float)z1)) << 16;
                meta[((size_t)nt * pl->mgroups + grp) * 8 + g] = m;
            }
}

#define W4_ALIGN(x) (((x) + 255) & ~(size_t)255)

/* Byte sizes of a part's arrays. */
static void w4_part_sizes(const gq_packed *p, const w4_plan *pl, size_t sz[4]) {
    sz[0] = (size_t)pl->ntiles * pl->kc * 512;                      /* qw */
    sz[1] = (size_t)pl->mgroups * pl->ntiles * 8 * sizeof(uint2);    /* meta */
    sz[2] = pl->general ? (size_t)pl->kc * 4 * sizeof(int32_t) : 0;  /* kgrp */
    sz[3] = pl->general ? (size_t)pl->kc * 64 * sizeof(int32_t) : 0; /* xidx */
}

static void w4_weight_destroy(gq_backend *be, w4_weight *q) {
    if (!q) return;
    gq_be_release(be, q->dev);
    free(q->part);
    free(q);
}

/* Plan every part (pl[nparts]); returns the bytes of the weight's device buffer. */
static size_t w4_layout(const gq_packed *const *parts, int nparts, w4_plan *pl) {
    size_t total = W4_ALIGN(sizeof(w4_part) * (size_t)nparts), sz[4];
    for (int i = 0; i < nparts; i++) {
        w4_plan_part(parts[i], &pl[i]);
        w4_part_sizes(parts[i], &pl[i], sz);
        for (int a = 0; a < 4; a++) total += W4_ALIGN(sz[a]);
    }
    return total;
}

/* Fill host, the image of the device buffer at address dev (w4_layout's bytes, zeroed), and q's part
 * table and totals (device addresses). */
static void w4_fill(const gq_packed *const *parts, int nparts, const w4_plan *pl, char *host, char *dev,
                    w4_weight *q) {
    size_t off = W4_ALIGN(sizeof(w4_part) * (size_t)nparts), sz[4], o[4];
    q->nparts = nparts;
    q->K = parts[0]->cols;
    for (int i = 0; i < nparts; i++) {
        const gq_packed *p = parts[i];
        w4_part *P = &q->part[i];
        w4_part_sizes(p, &pl[i], sz);
        for (int a = 0; a < 4; a++) o[a] = off, off += W4_ALIGN(sz[a]);
        w4_repack_qw(p, &pl[i], (uint32_t *)(host + o[0]));
        w4_repack_meta(p, &pl[i], (uint2 *)(host + o[1]));
        if (pl[i].general) {
            memcpy(host + o[2], pl[i].kgrp, sz[2]);
            memcpy(host + o[3], pl[i].order, sz[3]);
        }
        P->qw = (const uint4 *)(dev + o[0]);
        P->meta = (const uint2 *)(dev + o[1]);
        P->kgrp = pl[i].general ? (const int32_t *)(dev + o[2]) : NULL;
        P->xidx = pl[i].general ? (const int32_t *)(dev + o[3]) : NULL;
        P->tile0 = q->tiles;
        P->ntiles = pl[i].ntiles;
        P->n = p->rows;
        P->ycol = q->rows;
        P->kc = pl[i].kc;
        P->gshift = pl[i].general ? 0 : pl[i].gshift;
        P->general = pl[i].general;
        P->mgroups = pl[i].mgroups;
        q->tiles += P->ntiles;
        q->rows += p->rows;
        if (P->kc > q->kc_max) q->kc_max = P->kc;
        if (P->mgroups > q->mg_max) q->mg_max = P->mgroups;
    }
    memcpy(host, q->part, sizeof(w4_part) * (size_t)nparts); /* the device part table */
    q->dpart = (const w4_part *)dev;
}

/* Plans of the parts, the host image of the device buffer, one upload. */
int gq_cuda_weight_upload_q4(gq_backend *be, gq_bweight *w, const gq_packed *const *parts, int nparts) {
    if (gq_cuda_f32(be)) return gq_err(GQ_ERR_UNSUPPORTED, "int4 weights need fp16 activations (--precision fp32)");
    w4_plan *pl = (w4_plan *)gq_calloc((size_t)nparts, sizeof(w4_plan));
    w4_weight *q = (w4_weight *)gq_calloc(1, sizeof(w4_weight));
    q->part = (w4_part *)gq_calloc((size_t)nparts, sizeof(w4_part));
    const size_t total = w4_layout(parts, nparts, pl);
    int rc = GQ_OK;
    char *host = NULL;
    q->dev = gq_cuda_scratch(be, total, "int4 weight");
    if (!q->dev) {
        rc = gq_errcode();
    } else {
        host = (char *)gq_calloc(1, total);
        w4_fill(parts, nparts, pl, host, (char *)q->dev, q);
        rc = gq_be_upload(be, q->dev, host, total); /* returns once host has been staged */
    }
    for (int i = 0; i < nparts; i++) free(pl[i].order), free(pl[i].kgrp);
    free(pl);
    free(host);
    if (rc != GQ_OK) {
        w4_weight_destroy(be, q);
        return rc;
    }
    q->head.device_bytes = total;
    w->q4 = q;
    w->data = NULL;
    w->rows = q->rows;
    w->cols = q->K;
    w->dtype = GQ_DT_F16;
    return GQ_OK;
}

void gq_cuda_weight_free_q4(gq_backend *be, gq_bweight *w) {
    w4_weight_destroy(be, (w4_weight *)w->q4);
    gq_be_release(be, w->data);
}

int gq_cuda_q4_supported(const gq_backend *be) { return !gq_cuda_f32(be); }

/* ---- device: dequantization and the mma ---------------------------------------------------------------- */

static __device__ __forceinline__ uint32_t w4_h2u(__half2 h) { return *reinterpret_cast<uint32_t *>(&h); }
static __device__ __forceinline__ __half2 w4_u2h(uint32_t u) { return *reinterpret_cast<__half2 *>(&u); }

/* The half2 constants of one group for a lane's rows g (lo) and g + 8 (hi): scale and zero term
 * of each, broadcast to both halves. */
typedef struct {
    uint32_t slo, zlo, shi, zhi;
} w4_consts;

/* mt: the n-tile's meta [mgroups][8], in shared or global memory. */
static __device__ __forceinline__ void w4_consts_load(const uint2 *mt, int grp, int g, w4_consts &k) {
    const uint2 m = mt[grp * 8 + g];
    k.slo = __byte_perm(m.x, 0, 0x1010);
    k.zlo = __byte_perm(m.x, 0, 0x3232);
    k.shi = __byte_perm(m.y, 0, 0x1010);
    k.zhi = __byte_perm(m.y, 0, 0x3232);
}

/* Word w -> the A fragment a[4] (half2 each): a[0] = row g inputs e0 e1, a[1] = row g+8 e0 e1,
 * a[2] = row g e2 e3, a[3] = row g+8 e2 e3; each fp16(scale * (q - zero)). */
static __device__ __forceinline__ void w4_dequant(uint32_t w, const w4_consts &k, uint32_t a[4]) {
    const __half2 sixteenth = w4_u2h(0x2c002c00u); /* 1/16 */
    const uint32_t lo0 = (w & 0x000f000fu) | 0x64006400u, hi0 = (w & 0x00f000f0u) | 0x64006400u;
    w >>= 8;
    const uint32_t lo1 = (w & 0x000f000fu) | 0x64006400u, hi1 = (w & 0x00f000f0u) | 0x64006400u;
    a[0] = w4_h2u(__hmul2(__hsub2(w4_u2h(lo0), w4_u2h(k.zlo)), w4_u2h(k.slo)));
    a[1] = w4_h2u(__hmul2(__hfma2(w4_u2h(hi0), sixteenth, w4_u2h(k.zhi)), w4_u2h(k.shi)));
    a[2] = w4_h2u(__hmul2(__hsub2(w4_u2h(lo1), w4_u2h(k.zlo)), w4_u2h(k.slo)));
    a[3] = w4_h2u(__hmul2(__hfma2(w4_u2h(hi1), sixteenth, w4_u2h(k.zhi)), w4_u2h(k.shi)));
}

/* c (16 rows x 8 tokens, fp32) += A (16 x 16 fp16) B (16 x 8 fp16). */
static __device__ __forceinline__ void w4_mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* The lane's B fragment: inputs at positions kp .. kp + 3 of its token's row xr (ok: the token
 * exists), as {x0 | x1 << 16, x2 | x3 << 16}. XM 0: in order, one 8-byte load (X 8-byte aligned,
 * ldx % 4 == 0); 1: in order, 2-byte loads; 2: through xidx (-1: 0). Positions >= K are 0 (K % 8
 * == 0 and kp % 4 == 0: all four or none). */
template <int XM>
static __device__ __forceinline__ uint2 w4_xfrag(const __half *xr, bool ok, int kp, int K, const int32_t *xidx) {
    if constexpr (XM == 0) {
        return ok && kp < K ? __ldg(reinterpret_cast<const uint2 *>(xr + kp)) : make_uint2(0u, 0u);
    } else {
        const unsigned short *x = reinterpret_cast<const unsigned short *>(xr);
        uint32_t h[4] = {0u, 0u, 0u, 0u};
        if constexpr (XM == 1) {
            if (ok && kp < K)
                for (int e = 0; e < 4; e++) h[e] = __ldg(x + kp + e);
        } else {
            const int4 ix = __ldg(reinterpret_cast<const int4 *>(xidx + kp));
            if (ok) {
                h[0] = ix.x >= 0 ? __ldg(x + ix.x) : 0u;
                h[1] = ix.y >= 0 ? __ldg(x + ix.y) : 0u;
                h[2] = ix.z >= 0 ? __ldg(x + ix.z) : 0u;
                h[3] = ix.w >= 0 ? __ldg(x + ix.w) : 0u;
            }
        }
        return make_uint2(h[0] | h[1] << 16, h[2] | h[3] << 16);
    }
}

/* The lane's token rows and accumulators: x0 row g (ok0), x1 row g + 8 (ok1, TWO only); acc0 /
 * acc1 the C fragments of tokens 0..7 / 8..15 (c0 c1 = row g, tokens 2t, 2t+1; c2 c3 = row g+8). */
typedef struct {
    const __half *x0, *x1;
    bool ok0, ok1;
    int K;
    float acc0[4], acc1[4];
} w4_lane;

/* One k-tile: the lane's word w (dequantized with the group constants k) times its B fragment at
 * positions kp .. kp + 3, into the accumulators. */
template <int XM, bool TWO>
static __device__ __forceinline__ void w4_ktile(const w4_part &P, uint32_t w, int kp, const w4_consts &k, w4_lane &L) {
    uint32_t a[4];
    w4_dequant(w, k, a);
    const uint2 b = w4_xfrag<XM>(L.x0, L.ok0, kp, L.K, P.xidx);
    w4_mma(L.acc0, a, b.x, b.y);
    if constexpr (TWO) {
        const uint2 b1 = w4_xfrag<XM>(L.x1, L.ok1, kp, L.K, P.xidx);
        w4_mma(L.acc1, a, b1.x, b1.y);
    }
}

/* Chunk c (4 k-tiles) of n-tile nt from the lane's 16 bytes q. cur / k: the group whose constants
 * are loaded. */
template <int XM, bool TWO>
static __device__ __forceinline__ void w4_chunk(const w4_part &P, const uint2 *mt, int c, uint4 q, int lane, int &cur,
                                                w4_consts &k, w4_lane &L) {
    const int g = lane >> 2, t = lane & 3;
    const uint32_t wd[4] = {q.x, q.y, q.z, q.w};
    int grp[4];
    if constexpr (XM == 2) {
        const int4 kg = __ldg(reinterpret_cast<const int4 *>(P.kgrp + 4 * c));
        grp[0] = kg.x, grp[1] = kg.y, grp[2] = kg.z, grp[3] = kg.w;
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) grp[j] = (4 * c + j) >> P.gshift;
    }
    /* groups never decrease along the positions: one group for the chunk when its ends agree (every
     * chunk with group sizes >= 64); the group check (warp-uniform) is then made once, not per k-tile */
    if (grp[0] == grp[3]) {
        if (grp[0] != cur) {
            cur = grp[0];
            w4_consts_load(mt, cur, g, k);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) w4_ktile<XM, TWO>(P, wd[j], (4 * c + j) * 16 + 4 * t, k, L);
    } else {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (grp[j] != cur) {
                cur = grp[j];
                w4_consts_load(mt, cur, g, k);
            }
            w4_ktile<XM, TWO>(P, wd[j], (4 * c + j) * 16 + 4 * t, k, L);
        }
    }
}

/* Loads of the batch of chunks c0, c0 + nw, .. c0 + (U - 1) nw (< kc) of the lane: q[u] = its 16 bytes of chunk
 * c0 + u nw of the n-tile's qw ([kc][32] uint4, qw points at the lane's column). */
template <int U>
static __device__ __forceinline__ void w4_load_batch(const uint4 *qw, int c0, int nw, int kc, uint4 (&q)[U]) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int c = c0 + u * nw;
        q[u] = c < kc ? __ldcs(qw + (size_t)c * 32) : make_uint4(0u, 0u, 0u, 0u);
    }
}

/* Warp `warp` of nw: chunks warp, warp + nw, ... of n-tile nt, U 16-byte loads issued before any is used.
 * With smeta (uniform in the CTA: every thread calls this), the n-tile's meta is first copied into smeta
 * by the whole CTA while the first loads are in flight. */
template <int XM, bool TWO, int U>
static __device__ __forceinline__ void w4_stream(const w4_part &P, int nt, int warp, int nw, int lane, uint2 *smeta,
                                                 w4_lane &L) {
    const uint4 *qw = P.qw + (size_t)nt * P.kc * 32 + lane; /* [kc][32] of this n-tile */
    const uint2 *mt = P.meta + (size_t)nt * P.mgroups * 8;  /* [mgroups][8] of this n-tile */
    uint4 q[U];
    w4_load_batch(qw, warp, nw, P.kc, q);
    if (smeta) {
        for (int i = threadIdx.x; i < P.mgroups * 8; i += blockDim.x) smeta[i] = __ldg(mt + i);
        __syncthreads();
        mt = smeta;
    }
    gq_pdl_wait(); /* X and Y: after the kernel before (launched as a programmatic dependent) */
    int cur = -1;
    w4_consts k = {0u, 0u, 0u, 0u};
    for (int c0 = warp; c0 < P.kc; c0 += U * nw) {
        if (c0 != warp) w4_load_batch(qw, c0, nw, P.kc, q);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + u * nw;
            if (c < P.kc) w4_chunk<XM, TWO>(P, mt, c, q[u], lane, cur, k, L);
        }
    }
}

/* Y[T][ldy] (+)= X[T][ldx] W^T (+ bias) for T <= 16 (TWO: T > 8). CTA b = n-tile b of the
 * weight (parts[nparts] maps it to a part and its Y columns), blockDim.x = 32 * nw warps.
 * xvec: X 8-byte aligned with ldx % 4 == 0. smeta: stage the n-tile's meta in shared memory.
 * Dynamic shared memory: max(mgroups * 64 if smeta, nw * 16 * 17 * 4) bytes (meta while streaming,
 * then the warps' sums). */
template <bool TWO, int U>
static __global__ void __launch_bounds__(W4_MAX_WARPS * 32)
    w4_gemv_kernel(__half *Y, int ldy, const __half *X, int ldx, int T, int K, const __half *bias, int accumulate,
                   const w4_part *parts, int nparts, int xvec, int smeta) {
    extern __shared__ uint4 w4_smem[]; /* uint4: 16-byte aligned */
    int pi = 0;
    while (pi + 1 < nparts && (int)blockIdx.x >= parts[pi + 1].tile0) pi++;
    const w4_part P = parts[pi];
    const int nt = (int)blockIdx.x - P.tile0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    w4_lane L;
    L.ok0 = g < T;
    L.ok1 = TWO && g + 8 < T;
    L.x0 = X + (size_t)(L.ok0 ? g : 0) * ldx;
    L.x1 = X + (size_t)(L.ok1 ? g + 8 : 0) * ldx;
    L.K = K;
#pragma unroll
    for (int i = 0; i < 4; i++) L.acc0[i] = 0.0f, L.acc1[i] = 0.0f;
    uint2 *sm = smeta ? reinterpret_cast<uint2 *>(w4_smem) : NULL; /* [mgroups][8] */
    if (P.general)
        w4_stream<2, TWO, U>(P, nt, warp, nw, lane, sm, L);
    else if (xvec)
        w4_stream<0, TWO, U>(P, nt, warp, nw, lane, sm, L);
    else
        w4_stream<1, TWO, U>(P, nt, warp, nw, lane, sm, L);
    __syncthreads(); /* the meta is no longer read: the buffer becomes red */
    float(*red)[16][17] = reinterpret_cast<float(*)[16][17]>(w4_smem); /* [nw][row][token] */
    red[warp][g][2 * t] = L.acc0[0];
    red[warp][g][2 * t + 1] = L.acc0[1];
    red[warp][g + 8][2 * t] = L.acc0[2];
    red[warp][g + 8][2 * t + 1] = L.acc0[3];
    if (TWO) {
        red[warp][g][8 + 2 * t] = L.acc1[0];
        red[warp][g][9 + 2 * t] = L.acc1[1];
        red[warp][g + 8][8 + 2 * t] = L.acc1[2];
        red[warp][g + 8][9 + 2 * t] = L.acc1[3];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 16 * T; i += blockDim.x) {
        const int tok = i >> 4, row = i & 15, n = nt * 16 + row;
        if (n >= P.n) continue;
        float s = 0.0f;
        for (int w = 0; w < nw; w++) s += red[w][row][tok];
        const int col = P.ycol + n;
        __half *y = Y + (size_t)tok * ldy + col;
        if (bias) s += __half2float(bias[col]);
        if (accumulate) s += __half2float(*y);
        *y = __float2half_rn(s);
    }
}

/* Wd[rows][K] (fp16, row-major) = the weight of part P at rows P.ycol .. P.ycol + P.n - 1: thread
 * per word of qw, the same dequantization as the decode kernel. */
static __global__ void w4_dequant_kernel(__half *Wd, int K, w4_part P) {
    const size_t nwords = (size_t)P.ntiles * P.kc * 128;
    const uint32_t *qw = reinterpret_cast<const uint32_t *>(P.qw);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < nwords; i += (size_t)gridDim.x * blockDim.x) {
        const int j = (int)(i & 3), lane = (int)((i >> 2) & 31);
        const size_t ci = i >> 7; /* nt * kc + c */
        const int c = (int)(ci % (size_t)P.kc), nt = (int)(ci / (size_t)P.kc);
        const int g = lane >> 2, t = lane & 3, kt = 4 * c + j, kp = kt * 16 + 4 * t;
        w4_consts k;
        w4_consts_load(P.meta + (size_t)nt * P.mgroups * 8, P.general ? P.kgrp[kt] : kt >> P.gshift, g, k);
        uint32_t a[4];
        w4_dequant(qw[i], k, a);
        for (int h = 0; h < 2; h++) { /* row g, then g + 8 */
            const int n = nt * 16 + g + 8 * h;
            if (n >= P.n) continue;
            __half *wr = Wd + (size_t)(P.ycol + n) * K; /* [K] */
            const uint32_t v01 = a[h], v23 = a[2 + h];  /* inputs e = 0, 1 and 2, 3 */
            if (!P.general) {
                if (kp < K) *reinterpret_cast<uint2 *>(wr + kp) = make_uint2(v01, v23);
            } else {
                const uint32_t v[4] = {v01 & 0xffffu, v01 >> 16, v23 & 0xffffu, v23 >> 16};
                for (int e = 0; e < 4; e++) {
                    const int kk = P.xidx[kp + e];
                    if (kk >= 0) wr[kk] = __ushort_as_half((unsigned short)v[e]);
                }
            }
        }
    }
}

/* ---- host: the linear ----------------------------------------------------------------------------------- */

/* Dynamic shared memory of the decode kernel with nw warps for weight q: its largest n-tile meta when staged
 * (smeta), and at least the warps' sums. */
static size_t w4_smem_bytes(const w4_weight *q, int nw, int smeta) {
    const size_t meta = smeta ? (size_t)q->mg_max * 8 * sizeof(uint2) : 0, red = (size_t)nw * 16 * 17 * sizeof(float);
    return meta > red ? meta : red;
}

typedef void (*w4_kernel_fn)(__half *, int, const __half *, int, int, int, const __half *, int, const w4_part *, int,
                             int, int);

/* The decode kernel for T > 8 tokens (two) with U = 8 (ui 0), 4 (1) or 2 (2) loads in flight per lane. */
static w4_kernel_fn w4_kernel(bool two, int ui) {
    if (ui == 2) return two ? w4_gemv_kernel<true, 2> : w4_gemv_kernel<false, 2>;
    if (ui == 1) return two ? w4_gemv_kernel<true, 4> : w4_gemv_kernel<false, 4>;
    return two ? w4_gemv_kernel<true, W4_U> : w4_gemv_kernel<false, W4_U>;
}

/* Allow the decode kernels W4_SMEM_META + 16 KiB of dynamic shared memory on this device (once per device:
 * function attributes are per device). */
static void w4_allow_smem(const gq_cuda_ctx *c) {
    static unsigned char done[64];
    if (c->device < 0 || c->device >= 64 || done[c->device]) return;
    const int most = W4_SMEM_META + (16 << 10);
    for (int k = 0; k < 6; k++)
        if (cudaFuncSetAttribute(w4_kernel(k & 1, k >> 1), cudaFuncAttributeMaxDynamicSharedMemorySize, most) !=
            cudaSuccess)
            (void)cudaGetLastError(); /* then staged meta over 48 KiB fails at launch, with the error */
    done[c->device] = 1;
}

/* Resident CTAs per SM of the decode kernel <two, ui> with nw warps for weight q (cached in q). */
static int w4_occupancy(w4_weight *q, bool two, int ui, int nw, int smeta) {
    int &v = q->occ[two ? 1 : 0][ui][nw];
    if (!v) {
        int n = 0;
        const size_t sm = w4_smem_bytes(q, nw, smeta);
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, w4_kernel(two, ui), nw * 32, sm) != cudaSuccess)
            (void)cudaGetLastError();
        v = n > 0 ? n : 1;
    }
    return v;
}

/* Warps per CTA: the most (up to 16, each with at least 2 chunks of K) with which every CTA of the
 * grid is resident at once, so that no CTA waits for another to finish and every warp streams its
 * chunks with U loads in flight (H100, 4096 x 4096: 256 CTAs of 8 warps, 2 per SM); 1 when no
 * count gives one wave (very wide weights). */
static int w4_warps(const gq_cuda_ctx *c, w4_weight *q, bool two, int ui, int smeta) {
    for (int nw = W4_MAX_WARPS; nw > 1; nw /= 2)
        if (2 * nw <= q->kc_max &&
            (long)q->tiles <= (long)w4_occupancy(q, two, ui, nw, smeta) * c->prop.multiProcessorCount)
            return nw;
    return 1;
}

static int w4_decode(gq_backend *be, w4_weight *q, __half *Y, int ldy, const __half *X, int ldx, int T,
                     const __half *bias, int accumulate) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    w4_allow_smem(c);
    const int smeta = (size_t)q->mg_max * 8 * sizeof(uint2) <= W4_SMEM_META;
    const int ui = c->w4_u == 2 ? 2 : c->w4_u == 4 ? 1 : 0;
    const int nw = w4_warps(c, q, T > 8, ui, smeta);
    const size_t sm = w4_smem_bytes(q, nw, smeta);
    const int xvec = (uintptr_t)X % 8 == 0 && ldx % 4 == 0;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)q->tiles);
    cfg.blockDim = dim3((unsigned)(nw * 32));
    cfg.dynamicSmemBytes = sm;
    cfg.stream = c->stream;
    cudaLaunchAttribute pdl[1];
    pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    pdl[0].val.programmaticStreamSerializationAllowed = 1;
    if (c->pdl) cfg.attrs = pdl, cfg.numAttrs = 1;
    const __half *bias_h = bias;
    const w4_part *parts = q->dpart;
    CUDA_CHECK(cudaLaunchKernelEx(&cfg, w4_kernel(T > 8, ui), Y, ldy, X, ldx, T, q->K, bias_h, accumulate, parts,
                                  q->nparts, xvec, smeta));
    return GQ_OK;
}

/* Dequantize into the backend's scratch ([rows][K] fp16, grown to the largest weight), then the cuBLAS
 * linear (fp32 accumulation) and the bias, as cuda_linear does for fp16 weights. */
static int w4_prefill(gq_backend *be, const w4_weight *q, void *Y, int ldy, const void *X, int ldx, int T,
                      const gq_bweight *bias, int accumulate) {
    gq_cuda_ctx *c = gq_cuda_ctx_of(be);
    const size_t need = (size_t)q->rows * q->K * sizeof(__half);
    if (need > be->q4_scratch_bytes) {
        if (gq_cuda_capturing(be))
            return gq_err(GQ_ERR_UNSUPPORTED, "cuda int4: a larger dequantization buffer inside a recorded step");
        /* stream-ordered release: nothing still reads the old buffer when its memory is reused */
        gq_be_release(be, be->q4_scratch);
        be->q4_scratch = NULL;
        be->q4_scratch_bytes = 0;
        if (!(be->q4_scratch = gq_cuda_scratch(be, need, "int4 dequantization buffer"))) return gq_errcode();
        be->q4_scratch_bytes = need;
    }
    __half *Wd = (__half *)be->q4_scratch;
    for (int i = 0; i < q->nparts; i++) {
        const size_t nwords = (size_t)q->part[i].ntiles * q->part[i].kc * 128;
        const size_t blocks = CEIL_DIV(nwords, (size_t)256);
        w4_dequant_kernel<<<(int)(blocks < 65536 ? blocks : 65536), 256, 0, c->stream>>>(Wd, q->K, q->part[i]);
        CUDA_CHECK_LAUNCH();
    }
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasGemmEx(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, q->rows, T, q->K, &alpha, Wd, CUDA_R_16F, q->K, X,
                              CUDA_R_16F, ldx, &beta, Y, CUDA_R_16F, ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (bias) return gq_cuda_add_bias(be, Y, ldy, T, q->rows, bias->data);
    return GQ_OK;
}

/* gq_be_linear of an int4 weight (backend_cuda.cu's cuda_linear hands W->q4 weights here). */
int gq_cuda_linear_q4(gq_backend *be, void *Y, int ldy, const void *X, int ldx, int T, const gq_bweight *W,
                      const gq_bweight *bias, int accumulate) {
    w4_weight *q = (w4_weight *)W->q4; /* non-const: caches its occupancy */
    if (gq_cuda_f32(be) || (bias && bias->dtype != GQ_DT_F16))
        return gq_err(GQ_ERR_ARG, "cuda int4 linear: needs fp16 activations and an fp16 bias (got %s, bias %s)",
                      gq_dtype_name(be->act_dtype), bias ? gq_dtype_name(bias->dtype) : "none");
    if (T <= W4_DECODE_MAX_T)
        return w4_decode(be, q, (__half *)Y, ldy, (const __half *)X, ldx, T,
                         bias ? (const __half *)bias->data : NULL, accumulate);
    return w4_prefill(be, q, Y, ldy, X, ldx, T, bias, accumulate);
}
