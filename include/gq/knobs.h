/*
 * gq/knobs.h -- the environment knobs, read once into one settings struct.
 *
 * Benchmarks and comparisons steer a few internals through the environment.
 * Every such variable is read here, once, validated (a bad value is ignored
 * with a warning naming the variable and what it accepts), printed with the
 * effective settings, recorded in gq_report.json and, where it changes the
 * numbers, part of the --resume fingerprint. No other file calls getenv for
 * these.
 *
 *   GQ_CPU_ATTN=tasks|blas     CPU attention schedule                 (numbers)
 *   GQ_CPU_ATTN_TILE=0..4096   CPU attention query rows per tile      (numbers)
 *   GQ_CUDA_ATTN=0..3          CUDA attention kernel version          (numbers)
 *   GQ_CUDA_HINV=f64|potri|f32|f64h CUDA inverse-factor mode (default f64h)  (numbers)
 *   GQ_CUDA_GPTQ_TF32=0|1      1: the GPTQ solve's lazy-block updates (W -= Err Hinv, fp32) on the
 *                              tensor cores in TF32 (10-bit mantissa products, fp32 sums); 0
 *                              (default): fp32 as the GPTQ paper's implementation    (numbers)
 *   GQ_STREAM_ACTIVATIONS=0|1  stream calibration activations from the host
 *                              (bitwise equal to the resident run)
 *   GQ_PPL_PARALLEL=windows|ops  perplexity schedule on the CPU         (timing)
 *   GQ_CPU_Q4=0|1              the CPU keeps 4-bit linears packed (gq_be_q4_supported), dequantizing
 *                              them per call: less memory, same numbers (bitwise), slower decode
 *   GQ_SOLVE_THREADS=1..16     MoE expert solves run at once on a GPU, each on its own stream
 *                              (default 4; 1: one after another; the same bits)        (timing)
 *   GQ_CUDA_GRAPH=0|1|2        1 (default): generation's decode steps recorded once per batch
 *                              size (<= 16) and replayed as one CUDA graph, the step's indices
 *                              copied from pinned memory by its first node; 0: op by op, the
 *                              indices uploaded per layer; 2: 1's ops without recording (the
 *                              same arithmetic: tests)                               (timing)
 *   GQ_CUDA_PDL=0|1            1 (default): the int4 decode GEMV is launched as a programmatic
 *                              dependent launch (sm_90): its weight loads start while the kernel
 *                              before it runs, X is read after that kernel completed; 0: an
 *                              ordinary launch (the same bits; 3% slower 7B decode)    (timing)
 *   GQ_CUDA_W4_U=8|4|2         16-byte weight loads in flight per lane of the int4 decode GEMV: 8
 *                              (default; 118 registers a thread), 4 (64) or 2: fewer registers, more
 *                              warps an SM (an A/B, not yet run on a GPU; the warps per CTA may
 *                              differ, and with them the sums' order)                  (timing)
 *   GQ_LOAD_AHEAD=0|auto|1     gq quantize loads the next layer's weights onto the device on its
 *                              own thread (a fork of the backend) while a layer computes: auto
 *                              (default) on one GPU with room, 1 also on the CPU (tests), 0
 *                              never (the same bits; the 7B 35.2 -> 30.7 s on an H100)  (timing)
 *   GQ_CUDA_POOL=1|0           device buffers from CUDA's stream-ordered pool (default), or
 *                              cudaMalloc / cudaFree each (0: the comparison)         (timing)
 * and, recorded only, OPENBLAS_CORETYPE (OpenBLAS's own: its kernel set).
 */
#ifndef GQ_KNOBS_H
#define GQ_KNOBS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int cpu_attn_blas;      /* GQ_CPU_ATTN: 0 tasks (default), 1 blas */
    int cpu_attn_tile;      /* GQ_CPU_ATTN_TILE: 0 = head_dim rows */
    int cuda_attn;          /* GQ_CUDA_ATTN: 0 = the default kernel for the precision */
    int cuda_hinv;          /* GQ_CUDA_HINV: index into {f64, potri, f32, f64h}; default 3 (f64h) */
    int stream_activations; /* GQ_STREAM_ACTIVATIONS */
    int ppl_ops;            /* GQ_PPL_PARALLEL=ops */
    int cpu_q4;             /* GQ_CPU_Q4=1 */
    int solve_threads;      /* GQ_SOLVE_THREADS: MoE expert solves at once on a GPU (0 = 4) */
    int cuda_no_pool;       /* GQ_CUDA_POOL=0: cudaMalloc / cudaFree per buffer instead of the stream-ordered pool */
    int cuda_graph;         /* GQ_CUDA_GRAPH: 1 (default) decode steps recorded and replayed, 0 not, 2 1's ops unrecorded */
    int load_ahead;         /* GQ_LOAD_AHEAD: 0 never, 1 auto (default), 2 always */
    int cuda_pdl;           /* GQ_CUDA_PDL: 1 (default) the int4 GEMV launched as a programmatic dependent, 0 not */
    int cuda_gptq_tf32;     /* GQ_CUDA_GPTQ_TF32: 1 the GPTQ lazy-block GEMMs in TF32, 0 (default) fp32 */
    int cuda_w4_u;          /* GQ_CUDA_W4_U: 16-byte loads in flight per lane of the int4 GEMV, 8 (default), 4, 2 */
    char openblas_coretype[32];
} gq_knobs;

/* The knobs, read from the environment at the first call. */
const gq_knobs *gq_knobs_get(void);
/* "GQ_CUDA_HINV=f32 ..." for the knobs that differ from their defaults, "" if none;
 * numbers_only: only those that change the computed numbers (the --resume fingerprint). */
void gq_knobs_str(char *buf, unsigned cap, int numbers_only);
/* GQ_CUDA_HINV's effective value by name ("f64h", the default, ...). */
const char *gq_knobs_hinv_name(void);
/* Re-read the environment (tests). */
void gq_knobs_reload(void);

#ifdef __cplusplus
}
#endif
#endif /* GQ_KNOBS_H */
