/* dp.c -- several devices in one process: ranks, threads and collectives (gq/dp.h). */
#include "gq/dp.h"

#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef GQ_USE_CUDA
#include "gq/backend_cuda.h"
#endif

struct gq_dp {
    int n;
    gq_dp_transport t;
    gq_backend *be[GQ_DP_MAX_RANKS];
    void *comm[GQ_DP_MAX_RANKS]; /* nccl: one communicator per rank */
    pthread_barrier_t bar;
    /* agreement: each rank's status as it entered; foreign: the rank got another rank's failure */
    int rc[GQ_DP_MAX_RANKS], foreign[GQ_DP_MAX_RANKS];
    /* host transport: each rank's staging [hcap] floats, the shared sum [scap] */
    float *hb[GQ_DP_MAX_RANKS];
    size_t hcap[GQ_DP_MAX_RANKS];
    float *sum;
    size_t scap;
    int64_t *iv[GQ_DP_MAX_RANKS]; /* gq_dp_sum_i64: each rank's values */
    void *ptr[GQ_DP_MAX_RANKS];   /* gq_dp_exchange */
};

/* ---- setup ------------------------------------------------------------------------------------ */

static int all_cuda(gq_backend *const *be, int n) {
    for (int i = 0; i < n; i++)
        if (!gq_backend_is_gpu(be[i])) return 0;
    return 1;
}

static int nccl_built(void) {
#ifdef GQ_USE_CUDA
    return gq_cuda_nccl_built();
#else
    return 0;
#endif
}

int gq_dp_init(gq_dp **out, gq_backend *const *be, int n, gq_dp_transport t) {
    *out = NULL;
    if (n < 1 || n > GQ_DP_MAX_RANKS)
        return gq_err(GQ_ERR_ARG, "several devices: %d ranks (1 .. %d)", n, GQ_DP_MAX_RANKS);
    const int cuda = all_cuda(be, n);
    if (t == GQ_DP_AUTO) t = cuda && nccl_built() ? GQ_DP_NCCL : GQ_DP_HOST;
    if (t == GQ_DP_NCCL && !cuda) return gq_err(GQ_ERR_ARG, "several devices: NCCL needs every rank on a CUDA device");
    if (t == GQ_DP_NCCL && !nccl_built())
        return gq_err(GQ_ERR_UNSUPPORTED,
                      "several devices: this gq build has no NCCL (make found no nccl.h / libnccl)");
    gq_dp *dp = gq_calloc(1, sizeof *dp);
    dp->n = n;
    dp->t = t;
    memcpy(dp->be, be, (size_t)n * sizeof *be);
    if (pthread_barrier_init(&dp->bar, NULL, (unsigned)n)) {
        free(dp);
        return gq_err(GQ_ERR_NOMEM, "several devices: a barrier of %d threads", n);
    }
#ifdef GQ_USE_CUDA
    if (t == GQ_DP_NCCL) {
        int rc = gq_cuda_nccl_init(dp->comm, be, n);
        if (rc) {
            gq_dp_free(dp);
            return gq_err_prefix("several devices: %d ranks", n);
        }
    }
#endif
    *out = dp;
    return GQ_OK;
}

void gq_dp_free(gq_dp *dp) {
    if (!dp) return;
#ifdef GQ_USE_CUDA
    if (dp->t == GQ_DP_NCCL) gq_cuda_nccl_free(dp->comm, dp->n);
#endif
    for (int i = 0; i < dp->n; i++) free(dp->hb[i]), free(dp->iv[i]);
    free(dp->sum);
    pthread_barrier_destroy(&dp->bar);
    free(dp);
}

int gq_dp_size(const gq_dp *dp) {
    return dp->n;
}

const char *gq_dp_transport_name(const gq_dp *dp) {
    return dp->t == GQ_DP_NCCL ? "nccl" : "host";
}

/* ---- threads ---------------------------------------------------------------------------------- */

typedef struct {
    gq_dp *dp;
    int rank;
    int (*fn)(void *, int);
    void *user;
    int rc;
    char msg[1024];
    /* the start: no rank runs before every thread exists (a rank alone would wait at its first
     * barrier for ever); abort when one could not be made */
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int *go, *abort;
} rank_job;

static void *rank_main(void *arg) {
    rank_job *j = arg;
    pthread_mutex_lock(j->mu);
    while (!*j->go) pthread_cond_wait(j->cv, j->mu);
    const int abort = *j->abort;
    pthread_mutex_unlock(j->mu);
    if (abort) {
        j->rc = GQ_ERR_NOMEM;
        snprintf(j->msg, sizeof j->msg, "several devices: a thread per rank could not be started");
        return NULL;
    }
    /* the ranks share the host's cores: each thread's OpenMP loops (and OpenBLAS, which follows
     * them) get its part of gq's thread count (a new thread starts from the process default) */
    const int t = gq_get_threads() / j->dp->n;
    omp_set_num_threads(t > 1 ? t : 1);
    j->rc = gq_backend_bind_thread(j->dp->be[j->rank]);
    if (!j->rc) j->rc = j->fn(j->user, j->rank);
    snprintf(j->msg, sizeof j->msg, "%s", j->rc ? gq_errmsg() : "");
    return NULL;
}

int gq_dp_run(gq_dp *dp, int (*fn)(void *user, int rank), void *user) {
    rank_job job[GQ_DP_MAX_RANKS];
    pthread_t th[GQ_DP_MAX_RANKS];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int go = 0, abort = 0, started = 1;
    memset(dp->foreign, 0, sizeof dp->foreign);
    for (int r = 0; r < dp->n; r++)
        job[r] =
            (rank_job){.dp = dp, .rank = r, .fn = fn, .user = user, .mu = &mu, .cv = &cv, .go = &go, .abort = &abort};
    for (; started < dp->n; started++)
        if (pthread_create(&th[started], NULL, rank_main, &job[started])) break;
    pthread_mutex_lock(&mu);
    go = 1;
    abort = started < dp->n;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    const int keep = omp_get_max_threads(); /* rank 0 runs here: this thread's setting afterwards */
    rank_main(&job[0]);
    omp_set_num_threads(keep);
    for (int r = 1; r < started; r++) pthread_join(th[r], NULL);
    if (abort) return gq_err(GQ_ERR_NOMEM, "several devices: %d of %d rank threads could be started", started, dp->n);
    int first = -1;
    for (int r = 0; r < dp->n && first < 0; r++)
        if (job[r].rc && !dp->foreign[r]) first = r;
    for (int r = 0; r < dp->n && first < 0; r++)
        if (job[r].rc) first = r;
    if (first < 0) return GQ_OK;
    return dp->n > 1 ? gq_err(job[first].rc, "rank %d (%s): %s", first, gq_backend_name(dp->be[first]), job[first].msg)
                     : gq_err(job[first].rc, "%s", job[first].msg);
}

/* ---- collectives ------------------------------------------------------------------------------ */

static void barrier(gq_dp *dp) {
    if (dp->n > 1) pthread_barrier_wait(&dp->bar);
}

int gq_dp_agree(gq_dp *dp, int rank, int rc) {
    dp->rc[rank] = rc;
    barrier(dp);
    int first = -1;
    for (int r = 0; r < dp->n && first < 0; r++)
        if (dp->rc[r]) first = r;
    const int res = first < 0 ? GQ_OK : dp->rc[first];
    barrier(dp);        /* every rank has read rc[] before any enters the next agreement */
    if (rc) return res; /* the same status on every rank; this rank keeps its message (and whose failure it is) */
    if (res) {
        dp->foreign[rank] = 1;
        return gq_err(res, "rank %d (%s) failed", first, gq_backend_name(dp->be[first]));
    }
    return GQ_OK;
}

void gq_dp_claim(gq_dp *dp, int rank) {
    dp->foreign[rank] = 0;
}

/* The rank's staging buffer of at least bytes (host transport). */
static void *staging(gq_dp *dp, int rank, size_t bytes) {
    if (dp->hcap[rank] < bytes) {
        free(dp->hb[rank]);
        dp->hb[rank] = gq_malloc(bytes);
        dp->hcap[rank] = bytes;
    }
    return dp->hb[rank];
}

/* One buffer through host memory. */
static int host_allreduce(gq_dp *dp, int rank, float *buf, size_t n) {
    gq_backend *be = dp->be[rank];
    float *h = staging(dp, rank, n * sizeof(float));
    int rc = gq_dp_agree(dp, rank, gq_be_download(be, h, buf, n * sizeof(float)));
    if (rc) return rc;
    if (rank == 0 && dp->scap < n) { /* the shared sum: rank 0 grows it, the others wait at the barrier */
        free(dp->sum);
        dp->sum = gq_malloc(n * sizeof(float));
        dp->scap = n;
    }
    barrier(dp);
    /* slice [i0, i1) of the sum, in rank order: every element the same sum on every rank */
    const size_t i0 = n * (size_t)rank / (size_t)dp->n, i1 = n * (size_t)(rank + 1) / (size_t)dp->n;
    for (size_t i = i0; i < i1; i++) {
        float s = dp->hb[0][i];
        for (int r = 1; r < dp->n; r++) s += dp->hb[r][i];
        dp->sum[i] = s;
    }
    barrier(dp);
    rc = gq_be_upload(be, buf, dp->sum, n * sizeof(float));
    if (!rc) rc = gq_be_sync(be); /* the sum's memory is rewritten by the next call */
    return gq_dp_agree(dp, rank, rc);
}

int gq_dp_allreduce_f32(gq_dp *dp, int rank, float *const *bufs, int nbuf, size_t n) {
#ifdef GQ_USE_CUDA
    if (dp->t == GQ_DP_NCCL) return gq_cuda_nccl_allreduce_f32(dp->comm[rank], dp->be[rank], bufs, nbuf, n);
#endif
    int rc = GQ_OK;
    for (int i = 0; i < nbuf && !rc; i++) rc = host_allreduce(dp, rank, bufs[i], n);
    return rc;
}

int gq_dp_broadcast(gq_dp *dp, int rank, void *buf, size_t bytes, int root) {
    gq_backend *be = dp->be[rank];
    if (root < 0 || root >= dp->n) return gq_err(GQ_ERR_ARG, "broadcast from rank %d of %d", root, dp->n);
    if (dp->t == GQ_DP_NCCL) {
#ifdef GQ_USE_CUDA
        return gq_cuda_nccl_broadcast(dp->comm[rank], be, buf, bytes, root);
#endif
    }
    int rc = rank == root ? gq_be_download(be, staging(dp, rank, bytes), buf, bytes) : GQ_OK;
    if ((rc = gq_dp_agree(dp, rank, rc))) return rc;
    if (rank != root) rc = gq_be_upload(be, buf, dp->hb[root], bytes);
    if (!rc) rc = gq_be_sync(be);
    return gq_dp_agree(dp, rank, rc); /* the root's staging is reused by the next call */
}

void gq_dp_exchange(gq_dp *dp, int rank, void *mine, void **all) {
    dp->ptr[rank] = mine;
    barrier(dp);
    memcpy(all, dp->ptr, (size_t)dp->n * sizeof *all);
    barrier(dp); /* every rank has read ptr[] before any exchanges again */
}

int gq_dp_sum_i64(gq_dp *dp, int rank, int64_t *v, int n) {
    free(dp->iv[rank]);
    dp->iv[rank] = gq_malloc((size_t)(n > 0 ? n : 1) * sizeof(int64_t));
    memcpy(dp->iv[rank], v, (size_t)n * sizeof(int64_t));
    barrier(dp);
    for (int i = 0; i < n; i++) {
        int64_t s = 0;
        for (int r = 0; r < dp->n; r++) s += dp->iv[r][i];
        v[i] = s;
    }
    barrier(dp);
    return GQ_OK;
}

/* ---- device lists ----------------------------------------------------------------------------- */

int gq_dp_parse_devices(const char *spec, int ndev, int *dev, int max) {
    if (!spec || strncmp(spec, "cuda:", 5) != 0) return 0;
    const char *p = spec + 5;
    if (!strcmp(p, "all")) {
        if (ndev < 1) return gq_err(GQ_ERR_DEVICE, "device '%s': no CUDA device found", spec), -1;
        int n = ndev < max ? ndev : max;
        for (int i = 0; i < n; i++) dev[i] = i;
        return n;
    }
    if (!strchr(p, ',')) return 0; /* one device: gq_backend_init's */
    int n = 0;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v > 1000 || (*end && *end != ','))
            return gq_err(GQ_ERR_ARG, "device '%s': expected cuda:N,M,... (device numbers) or cuda:all", spec), -1;
        if (n >= max) return gq_err(GQ_ERR_ARG, "device '%s': more than %d devices", spec, max), -1;
        for (int i = 0; i < n; i++)
            if (dev[i] == (int)v) return gq_err(GQ_ERR_ARG, "device '%s': cuda:%ld named twice", spec, v), -1;
        dev[n++] = (int)v;
        p = *end ? end + 1 : end;
        if (*end && !*p) return gq_err(GQ_ERR_ARG, "device '%s': a list ends with a device number", spec), -1;
    }
    return n;
}
