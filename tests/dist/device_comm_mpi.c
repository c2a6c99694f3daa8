/* The device-collective path of dist/ (device_comm.c, the bucketed sync's device mode, ZeRO-1's
 * reduce and broadcasts) under mpirun, with tga_active_coll pointed at dist/mpi_coll.c (MPI on host
 * memory, which is the CPU backend's "device" memory): the calls the trainer makes on a GPU (unique
 * id from rank 0 broadcast, init, all-reduces enqueued bucket by bucket from the backward pass,
 * wait) run and their results are checked against a plain MPI all-reduce; a failing wait is
 * injected. The ordering on streams is NCCL's and is not exercised here (tests/gpu/gpu_check_nccl
 * does that on a GPU).
 *   device_comm_mpi N */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dist/bucket_sync.h"
#include "dist/comm.h"
#include "dist/device_comm.h"
#include "dist/grad_sync.h"
#include "dist/mpi_coll.h"
#include "kernels/collectives.h"
#include "runtime/backend.h"
#include "runtime/rng.h"
#include "trainer/optim_state.h"

static int failures = 0;
#define EXPECT(cond, ...)                                                                                    \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "FAIL rank %d %s:%d: ", tga_dist_rank(), __FILE__, __LINE__);                    \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
            failures++;                                                                                      \
        }                                                                                                    \
    } while (0)

/* ---- dist/mpi_coll.c, watched: the unique id each rank joined with, the collectives issued, and
 * a wait that can be made to fail ---- */
static unsigned char joined_id[TGA_COLL_ID_BYTES];
static int enqueued = 0, fail_next_wait = 0;
static tga_coll_ops host_coll;

static int watched_make_id(void *id, char *err, size_t cap) {
    int rc = tga_dist_mpi_collectives()->make_id(id, err, cap);
    tga_rng_stream s = tga_rng_stream_make(20261128, TGA_RNG_TEST, 1); /* an id no rank could guess */
    for (int i = 0; i < TGA_COLL_ID_BYTES; i++) ((unsigned char *)id)[i] = (unsigned char)(tga_rng_uniform(&s, i) * 256);
    return rc;
}

static int watched_init(const void *id, int rank, int world, char *err, size_t cap) {
    memcpy(joined_id, id, TGA_COLL_ID_BYTES);
    return tga_dist_mpi_collectives()->init(id, rank, world, err, cap);
}

static int watched_allreduce(float *buf, size_t n, char *err, size_t cap) {
    enqueued++;
    return tga_dist_mpi_collectives()->allreduce_sum(buf, n, err, cap);
}

static int watched_reduce(float *buf, size_t n, int root, char *err, size_t cap) {
    enqueued++;
    return tga_dist_mpi_collectives()->reduce_sum(buf, n, root, err, cap);
}

static int watched_wait(double timeout_s, const char *what, char *err, size_t cap) {
    if (!fail_next_wait) return tga_dist_mpi_collectives()->wait(timeout_s, what, err, cap);
    fail_next_wait = 0;
    snprintf(err, cap, "%s: injected asynchronous failure", what);
    return -1;
}

static void use_watched_collectives(void) {
    host_coll = *tga_dist_mpi_collectives();
    host_coll.make_id = watched_make_id;
    host_coll.init = watched_init;
    host_coll.allreduce_sum = watched_allreduce;
    host_coll.reduce_sum = watched_reduce;
    host_coll.wait = watched_wait;
    tga_active_coll = &host_coll;
}

/* ---- checks ---- */

static void fill(float *x, size_t n, int rank) {
    tga_rng_stream s = tga_rng_stream_make(7, TGA_RNG_TEST, (uint64_t)rank);
    for (size_t i = 0; i < n; i++) x[i] = tga_rng_normal(&s, i);
}

/* The groups a backward pass reports, last layer first, as contiguous ranges of [0, n): `layers`
 * equal ranges below a head range, then the embeddings at the bottom and a projector at the top. */
static void report_backward(tga_bucket_sync *s, size_t n, int layers) {
    size_t emb = n / 10, proj = n / 10, body = n - emb - proj, head = body / (layers + 1), per = head;
    size_t top = emb + body; /* the head group ends where the projector starts */
    tga_bucket_sync_ready(s, top - head, top);
    for (int l = layers - 1; l >= 0; l--) {
        size_t lo = emb + (size_t)l * per, hi = l == layers - 1 ? top - head : lo + per;
        tga_bucket_sync_ready(s, lo, hi);
    }
    tga_bucket_sync_ready(s, 0, emb);
    tga_bucket_sync_ready(s, top, n);
}

/* ZeRO-1 on the device collectives (trainer/optim_state.c) with a small stage-2 model sharded over
 * the ranks: after the reduce, this rank's shard of the gradient is the sum over ranks; after the
 * broadcast, every parameter equals what its shard's owner holds. */
static void check_zero(void) {
    const int world = tga_dist_world(), rank = tga_dist_rank();
    tga_model_dims d = {.dim = 16, .n_layers = 2, .n_heads = 2, .n_kv_heads = 1, .ffn_dim = 24, .vocab_size = 32,
                        .max_seq_len = 8, .rope_theta = 10000, .norm_eps = 1e-5f, .vision_dim = 4};
    tga_run_shape shape = {.trainable = TGA_TRAIN_STAGE2, .micro_batch = 1, .max_len = 8, .max_images = 1,
                           .image_tokens = 2, .ce_chunk = 4, .zero_world = world, .zero_rank = rank};
    tga_model *m;
    EXPECT(tga_model_create(&m, &d, &shape) == TGA_OK, "model: %s", tga_error_message());
    size_t n, lo, hi;
    float *grads = tga_model_grad_buffer(m, &n);
    tga_zero_shard(n, world, rank, &lo, &hi);
    fill(grads, n, rank);
    float *sum = malloc(n * sizeof(float));
    MPI_Allreduce(grads, sum, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    EXPECT(tga_optim_device_reduce_grads(m) == TGA_OK, "reduce: %s", tga_error_message());
    /* MPI_Reduce and MPI_Allreduce may add in different orders: rounding apart, the same sums */
    double worst = 0, scale = 1e-30;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(sum[i]));
    for (size_t i = lo; i < hi; i++) worst = fmax(worst, fabs((double)grads[i] - sum[i]) / scale);
    EXPECT(worst <= 1e-6, "shard [%zu, %zu) differs from the sum by %.3g of its largest value", lo, hi, worst);

    /* each rank marks the parameters of its own shard; everyone must end with the owners' marks */
    int marked = 0;
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        size_t off = tga_model_grad_offset(m, p);
        for (size_t j = 0; p->trainable && j < p->numel; j++) {
            int mine = off + j >= lo && off + j < hi;
            p->data[j] = mine ? (float)(1000 * rank) + (float)j : -1.0f;
            marked += mine;
        }
    }
    EXPECT(world == 1 || marked > 0, "rank %d owns no parameters: the test shape is too small", rank);
    EXPECT(tga_optim_device_broadcast_params(m) == TGA_OK, "broadcast: %s", tga_error_message());
    int wrong = 0;
    for (int i = 0; i < tga_model_param_count(m); i++) {
        tga_param *p = tga_model_param(m, i);
        size_t off = tga_model_grad_offset(m, p);
        for (size_t j = 0; p->trainable && j < p->numel; j++) {
            int owner = 0;
            for (int q = 0; q < world; q++) {
                size_t qlo, qhi;
                tga_zero_shard(n, world, q, &qlo, &qhi);
                if (off + j >= qlo && off + j < qhi) owner = q;
            }
            wrong += p->data[j] != (float)(1000 * owner) + (float)j;
        }
    }
    EXPECT(wrong == 0, "%d parameter values differ from their owner's after the broadcast", wrong);
    free(sum);
    tga_model_free(m);
}

int main(int argc, char **argv) {
    if (tga_dist_init(&argc, &argv) != TGA_OK || argc < 2) return 2;
    size_t n = (size_t)atol(argv[1]);
    int rank = tga_dist_rank();
    use_watched_collectives();
    EXPECT(tga_dist_device_start(60) == TGA_OK && tga_dist_device_active(), "start: %s", tga_error_message());
    unsigned char all_ids[64 * TGA_COLL_ID_BYTES];
    tga_dist_allgather(joined_id, all_ids, TGA_COLL_ID_BYTES, "id check");
    for (int r = 1; r < tga_dist_world(); r++)
        EXPECT(memcmp(all_ids, all_ids + (size_t)r * TGA_COLL_ID_BYTES, TGA_COLL_ID_BYTES) == 0,
               "rank %d joined with another unique id than rank 0", r);

    float *grads = malloc(n * sizeof(float)), *expected = malloc(n * sizeof(float));
    fill(grads, n, rank);
    memcpy(expected, grads, n * sizeof(float));
    MPI_Allreduce(MPI_IN_PLACE, expected, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    tga_bucket_sync *s;
    EXPECT(tga_bucket_sync_create(&s, grads, n, n / 7, 1, 0) == TGA_OK, "create: %s", tga_error_message());
    report_backward(s, n, 6);
    int before_finish = enqueued;
    EXPECT(tga_bucket_sync_finish(s) == TGA_OK, "finish: %s", tga_error_message());
    EXPECT(before_finish >= 3, "only %d bucket(s) went out during the backward pass", before_finish);
    EXPECT(memcmp(grads, expected, n * sizeof(float)) == 0, "the bucketed sums differ from one all-reduce");
    EXPECT(tga_bucket_sync_last_buckets(s) == enqueued, "%d buckets reported, %d enqueued",
           tga_bucket_sync_last_buckets(s), enqueued);

    /* an asynchronous failure seen by wait comes back from finish, naming the operation */
    fail_next_wait = 1;
    report_backward(s, n, 6);
    tga_status st = tga_bucket_sync_finish(s);
    EXPECT(st == TGA_ERR_DIST && strstr(tga_error_message(), "gradient buckets") &&
               strstr(tga_error_message(), "injected asynchronous failure"),
           "a failed wait: status %d, %s", st, tga_error_message());
    tga_error_clear();
    tga_bucket_sync_free(s);

    /* ZeRO-1 buckets: each bucket's part in a shard goes to that shard's owner alone */
    fill(grads, n, rank);
    EXPECT(tga_bucket_sync_create(&s, grads, n, n / 7, 1, 1) == TGA_OK, "create sharded: %s", tga_error_message());
    report_backward(s, n, 6);
    EXPECT(tga_bucket_sync_finish(s) == TGA_OK, "finish sharded: %s", tga_error_message());
    size_t lo, hi;
    tga_zero_shard(n, tga_dist_world(), rank, &lo, &hi);
    double worst = 0, scale = 1e-30;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(expected[i]));
    for (size_t i = lo; i < hi; i++) worst = fmax(worst, fabs((double)grads[i] - expected[i]) / scale);
    EXPECT(worst <= 1e-6, "sharded buckets: shard [%zu, %zu) off the sum by %.3g", lo, hi, worst);
    tga_bucket_sync_free(s);
    EXPECT(tga_backend_select("cpu", 1) == TGA_OK, "cpu backend: %s", tga_error_message());
    tga_active_coll = &host_coll; /* selecting the CPU backend leaves it without collectives */
    check_zero();
    tga_dist_device_stop();
    EXPECT(!tga_dist_device_active(), "stop left the collectives running");

    int all_failures = 0;
    MPI_Allreduce(&failures, &all_failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0)
        printf("%s device_comm_mpi (%d ranks, %zu floats, %d buckets): %d failure(s)\n", all_failures ? "FAIL" : "PASS",
               tga_dist_world(), n, before_finish, all_failures);
    free(grads);
    free(expected);
    tga_dist_finalize();
    return all_failures ? 1 : 0;
}
