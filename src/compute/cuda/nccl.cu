/*
 * cuda/nccl.cu -- NCCL between CUDA backends (gq/backend_cuda.h's gq_cuda_nccl_*), the transport
 * of gq/dp.h across the GPUs of one process: one communicator per backend, made together by
 * ncclCommInitAll; the collectives run on each backend's stream, ordered with its other work.
 * Built with GQ_USE_NCCL (the Makefile defines it where nccl.h and libnccl are found); without
 * it the entry points say that this build has no NCCL.
 */
#include "common.cuh"

#ifdef GQ_USE_NCCL
#include <nccl.h>

static int nccl_status(ncclResult_t r, const char *call) {
    if (r == ncclSuccess) return GQ_OK;
    return gq_err(GQ_ERR_DEVICE, "NCCL %s failed: %s (%s)", call, ncclGetErrorString(r), ncclGetLastError(NULL));
}

int gq_cuda_nccl_built(void) {
    return 1;
}

int gq_cuda_nccl_init(void **comms, gq_backend *const *be, int n) {
    int dev[64];
    if (n < 1 || n > 64) return gq_err(GQ_ERR_ARG, "NCCL: %d ranks (1 .. 64)", n);
    for (int i = 0; i < n; i++) {
        dev[i] = gq_cuda_ctx_of(be[i])->device;
        for (int j = 0; j < i; j++)
            if (dev[j] == dev[i])
                return gq_err(GQ_ERR_ARG, "NCCL: device cuda:%d named twice (ranks %d and %d)", dev[i], j, i);
    }
    ncclComm_t c[64];
    int rc = nccl_status(ncclCommInitAll(c, n, dev), "ncclCommInitAll");
    for (int i = 0; i < n && !rc; i++) comms[i] = c[i];
    return rc;
}

void gq_cuda_nccl_free(void **comms, int n) {
    for (int i = 0; i < n; i++)
        if (comms[i]) ncclCommDestroy((ncclComm_t)comms[i]), comms[i] = NULL;
}

int gq_cuda_nccl_allreduce_f32(void *comm, gq_backend *be, float *const *bufs, int nbuf, size_t n) {
    int rc = nccl_status(ncclGroupStart(), "ncclGroupStart");
    for (int i = 0; i < nbuf && !rc; i++)
        rc = nccl_status(ncclAllReduce(bufs[i], bufs[i], n, ncclFloat32, ncclSum, (ncclComm_t)comm,
                                       gq_cuda_ctx_of(be)->stream),
                         "ncclAllReduce");
    const int rc_end = nccl_status(ncclGroupEnd(), "ncclGroupEnd"); /* a started group is always ended */
    return rc ? rc : rc_end;
}

int gq_cuda_nccl_broadcast(void *comm, gq_backend *be, void *buf, size_t bytes, int root) {
    return nccl_status(ncclBroadcast(buf, buf, bytes, ncclUint8, root, (ncclComm_t)comm, gq_cuda_ctx_of(be)->stream),
                       "ncclBroadcast");
}

#else

static int no_nccl(void) {
    return gq_err(GQ_ERR_UNSUPPORTED, "this gq build has no NCCL (make found no nccl.h / libnccl beside CUDA)");
}
int gq_cuda_nccl_built(void) {
    return 0;
}
int gq_cuda_nccl_init(void **comms, gq_backend *const *be, int n) {
    return no_nccl();
}
void gq_cuda_nccl_free(void **comms, int n) {}
int gq_cuda_nccl_allreduce_f32(void *comm, gq_backend *be, float *const *bufs, int nbuf, size_t n) {
    return no_nccl();
}
int gq_cuda_nccl_broadcast(void *comm, gq_backend *be, void *buf, size_t bytes, int root) {
    return no_nccl();
}

#endif
