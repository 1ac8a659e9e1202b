/*
 * gq/dp.h -- several devices in one process (docs/multi-gpu.md): n ranks, one host thread each,
 * each with its own backend, and the few collectives the quantizer needs between them.
 *
 * Transports:
 *   nccl  every backend a CUDA device of its own and the build has NCCL: ncclAllReduce /
 *         ncclBroadcast on each backend's stream (gq/backend_cuda.h's gq_cuda_nccl_*);
 *   host  any backends: each rank downloads its buffer to host memory, the ranks sum them in
 *         rank order (each rank a slice), every rank uploads the sum. Every rank gets the same
 *         bits; with one rank, its own values. The tests' CPU ranks, and GPUs without NCCL.
 *
 * Every collective is called by every rank's thread, in the same order; gq_dp_agree first where
 * a rank may have failed since the last one, so that no rank waits for a failed one: a rank that
 * failed enters the agreement with its status, and every rank leaves it with the first failing
 * rank's status (its message stays on that rank's thread; gq_dp_run reports it).
 */
#ifndef GQ_DP_H
#define GQ_DP_H

#include <stddef.h>
#include <stdint.h>

#include "gq/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gq_dp gq_dp;

typedef enum { GQ_DP_AUTO = 0, GQ_DP_HOST, GQ_DP_NCCL } gq_dp_transport;

#define GQ_DP_MAX_RANKS 64

/* n ranks over be[n] (borrowed: the caller frees them after gq_dp_free). GQ_DP_AUTO: NCCL where
 * every backend is a CUDA device and the build has NCCL, else host; GQ_DP_NCCL where it is not
 * possible is an error saying why. */
int gq_dp_init(gq_dp **out, gq_backend *const *be, int n, gq_dp_transport t);
void gq_dp_free(gq_dp *dp);
int gq_dp_size(const gq_dp *dp);
const char *gq_dp_transport_name(const gq_dp *dp); /* "nccl" or "host" */

/* fn(user, rank) for every rank at once, rank 0 on the calling thread, the others on their own
 * threads. Returns GQ_OK, or the status of the first rank (by rank) that failed by itself (not
 * through an agreement with another), with its message on the calling thread. */
int gq_dp_run(gq_dp *dp, int (*fn)(void *user, int rank), void *user);

/* Every rank's status: the first failing rank's, the same on every rank (a rank that failed keeps
 * its own message, the others get "rank k (...) failed"), GQ_OK when every rank passed GQ_OK. A
 * barrier. */
int gq_dp_agree(gq_dp *dp, int rank, int rc);

/* The rank's failure since its last agreement is its own (a new error, not another rank's that it
 * got from gq_dp_agree): gq_dp_run reports it before those of ranks that only got another's. */
void gq_dp_claim(gq_dp *dp, int rank);

/* bufs[i][n] (fp32, on the rank's backend), i < nbuf, = its sum over the ranks, on every rank (NCCL:
 * the nbuf all-reduces as one group). */
int gq_dp_allreduce_f32(gq_dp *dp, int rank, float *const *bufs, int nbuf, size_t n);
/* buf[bytes] (on the rank's backend) = root's, on every rank. */
int gq_dp_broadcast(gq_dp *dp, int rank, void *buf, size_t bytes, int root);
/* all[rank] = each rank's pointer `mine` (host memory of this process), on every rank; what they
 * point to must stay until the ranks' next gq_dp_agree. */
void gq_dp_exchange(gq_dp *dp, int rank, void *mine, void **all);
/* v[n] (host) = its sum over the ranks, on every rank. */
int gq_dp_sum_i64(gq_dp *dp, int rank, int64_t *v, int n);

/* "cuda:0,1,3" / "cuda:all" -> the device numbers (at most max), their count (cuda:all on a machine
 * with one GPU: 1, device 0); 0 for a spec that is no list ("cuda", "cuda:1", "cpu", "auto"); -1
 * (error set) for a malformed list, one that names a device twice, or cuda:all without a device.
 * ndev: the devices present (for "all"). */
int gq_dp_parse_devices(const char *spec, int ndev, int *dev, int max);

#ifdef __cplusplus
}
#endif
#endif /* GQ_DP_H */
