// A small fork-join thread pool: persistent workers that spin briefly (yielding now and then), then sleep on a
// condition variable.
//
// A job is published as one 64-bit word, `claim` = tag (32 bits) | count (16) | next index (16), after its
// fields (fn, ctx, base). Threads claim an index with a compare-and-swap on that word, so a claim can only
// succeed for the job currently published; the fields are read after a successful claim and stay valid until
// every claimed index is done, which is what the caller waits for (`done == count`). A worker that wakes late
// simply finds nothing to claim: the caller never waits for idle or descheduled workers, only for work that
// was actually claimed. Counts above 65535 run as consecutive batches. Callers are serialized by `call_mu`.
#define _GNU_SOURCE
#include "CCausalKernels.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax(void) { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax(void) { __asm__ __volatile__("yield"); }
#else
static inline void cpu_relax(void) {}
#endif

// Wait loops: SPIN iterations of a pause (or, every YIELD_EVERY-th, a sched_yield so that a co-scheduled
// thread on the same core can run), then sleep. ~40000 x 25 ns ~ 1 ms: long enough to stay awake across the
// gaps between the parallel calls of one forward pass.
#define CK_SPINS 40000
#define CK_YIELD_EVERY 128
#define CK_BATCH 65535

struct ck_pool {
    int nthreads, nworkers;
    pthread_t *threads;

    pthread_mutex_t call_mu;          // serializes ck_pool_run callers
    pthread_mutex_t mu;               // guards sleeping
    pthread_cond_t work_cv, done_cv;  // workers sleep on work_cv; a sleeping caller on done_cv

    ck_task_fn fn;                    // the current job, valid while it has unfinished claimed indices
    void *ctx;
    int64_t base;
    uint32_t tag;                     // caller-private

    _Alignas(64) atomic_uint_fast64_t gen;  // bumped for every job: the wake-up signal
    atomic_int sleepers;
    atomic_int caller_sleeping;
    atomic_int stop;
    _Alignas(64) atomic_uint_fast64_t claim;
    _Alignas(64) atomic_uint_fast32_t done;
};

static _Thread_local int tl_in_task;

static void pause_or_yield(int i) {
    if (i % CK_YIELD_EVERY == CK_YIELD_EVERY - 1) sched_yield();
    else cpu_relax();
}

// Claims and runs indices of whatever job is published until none is left.
static void work(ck_pool *p) {
    uint_fast64_t w = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        const uint32_t idx = (uint32_t)(w & 0xFFFFu), cnt = (uint32_t)((w >> 16) & 0xFFFFu);
        if (idx >= cnt) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &w, w + 1, memory_order_acq_rel, memory_order_acquire))
            continue;  // w reloaded
        p->fn(p->ctx, p->base + idx);
        // seq_cst increment, then seq_cst load: pairs with the caller's store of caller_sleeping and its load of done.
        if (atomic_fetch_add(&p->done, 1) + 1 == cnt && atomic_load(&p->caller_sleeping)) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_broadcast(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
        w = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

static void *worker_main(void *arg) {
    ck_pool *p = (ck_pool *)arg;
    tl_in_task = 1;
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t g = atomic_load_explicit(&p->gen, memory_order_acquire);
        for (int i = 0; g == seen && i < CK_SPINS; i++) {
            pause_or_yield(i);
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while ((g = atomic_load(&p->gen)) == seen) pthread_cond_wait(&p->work_cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        work(p);
    }
    return NULL;
}

ck_pool *ck_pool_create(int threads) {
    if (threads < 1) threads = 1;
    ck_pool *p = (ck_pool *)calloc(1, sizeof(ck_pool));
    if (!p) return NULL;
    p->nthreads = threads;
    p->nworkers = 0;
    pthread_mutex_init(&p->call_mu, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->sleepers, 0);
    atomic_init(&p->caller_sleeping, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->claim, 0);
    atomic_init(&p->done, 0);
    if (threads > 1) {
        p->threads = (pthread_t *)calloc((size_t)threads - 1, sizeof(pthread_t));
        if (!p->threads) { ck_pool_destroy(p); return NULL; }
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 8u << 20);
        for (int i = 0; i < threads - 1; i++) {
            if (pthread_create(&p->threads[i], &attr, worker_main, p) != 0) {
                pthread_attr_destroy(&attr);
                ck_pool_destroy(p);
                return NULL;
            }
            p->nworkers++;
        }
        pthread_attr_destroy(&attr);
    }
    return p;
}

void ck_pool_destroy(ck_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->call_mu);
    atomic_store(&p->stop, 1);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nworkers; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_unlock(&p->call_mu);
    free(p->threads);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->call_mu);
    free(p);
}

int ck_pool_threads(const ck_pool *p) { return p ? p->nthreads : 1; }

// One batch of at most CK_BATCH indices; call_mu held.
static void run_batch(ck_pool *p, int64_t base, uint32_t count, ck_task_fn fn, void *ctx) {
    p->fn = fn;
    p->ctx = ctx;
    p->base = base;
    p->tag++;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->claim, ((uint_fast64_t)p->tag << 32) | ((uint_fast64_t)count << 16), memory_order_release);
    atomic_fetch_add(&p->gen, 1);  // seq_cst: pairs with a worker's sleepers increment
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->work_cv);
        pthread_mutex_unlock(&p->mu);
    }

    tl_in_task = 1;
    work(p);
    tl_in_task = 0;

    for (int i = 0; atomic_load_explicit(&p->done, memory_order_acquire) != count; i++) {
        if (i < CK_SPINS) { pause_or_yield(i); continue; }
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->caller_sleeping, 1);
        while (atomic_load(&p->done) != count) pthread_cond_wait(&p->done_cv, &p->mu);
        atomic_store(&p->caller_sleeping, 0);
        pthread_mutex_unlock(&p->mu);
        break;
    }
}

void ck_pool_run(ck_pool *p, int64_t count, ck_task_fn fn, void *ctx) {
    if (count <= 0) return;
    if (!p || p->nworkers == 0 || count == 1 || tl_in_task) {
        for (int64_t i = 0; i < count; i++) fn(ctx, i);
        return;
    }
    pthread_mutex_lock(&p->call_mu);
    for (int64_t base = 0; base < count; base += CK_BATCH) {
        const int64_t left = count - base;
        run_batch(p, base, (uint32_t)(left < CK_BATCH ? left : CK_BATCH), fn, ctx);
    }
    pthread_mutex_unlock(&p->call_mu);
}
