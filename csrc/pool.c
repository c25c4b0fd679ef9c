/* pool.c - the kernels' thread pool (see dk_pool.h). Baseline code, POSIX threads.
 *
 * Why not OpenMP: libgomp's idle threads spin (GOMP_SPINCOUNT, up to ~0.3 s by default)
 * before they sleep, and its barriers spin too, so one busy process beside us stalled every
 * parallel region by one or two orders of magnitude (issue 11). Here nothing spins:
 *   - idle workers sleep on `work_cv`;
 *   - the caller runs items itself, then sleeps on `done_cv` until the workers still
 *     inside an item have left it;
 *   - a worker that wakes after the caller has run out of items does not join the call.
 * Items are claimed from one atomic counter, one at a time.
 *
 * Locking: `busy` (trylock) admits one parallel call at a time; `m` guards everything
 * below except `next_item` (atomic) and `parallel_calls` (atomic). Happens-before between
 * the items' writes and the caller's return: every worker takes `m` after its last item,
 * and the caller takes `m` before it returns. */
#define _GNU_SOURCE
#include "dk_pool.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static pthread_t *workers;       /* started workers, [0, nworkers) */
static int nworkers, cap_workers;
static int stopping;             /* shutdown in progress: workers exit */

/* the current call */
static uint64_t gen;             /* incremented for every call handed to the workers */
static dk_pool_fn job_fn;
static void *job_arg;
static int64_t job_n;
static int job_open;             /* workers may still join */
static int job_want;             /* workers wanted */
static int job_joined;           /* workers that joined (their slots are 1..job_joined) */
static int job_running;          /* workers inside the call */
static atomic_llong next_item;

static atomic_llong parallel_calls;
static dk_pool_run_fn forward;

static void run_items(dk_pool_fn fn, void *arg, int64_t n, int slot)
{
    for (;;) {
        int64_t i = (int64_t)atomic_fetch_add_explicit(&next_item, 1, memory_order_relaxed);
        if (i >= n) return;
        fn(arg, i, slot);
    }
}

static void *worker_main(void *p)
{
    uint64_t seen = (uint64_t)(uintptr_t)p; /* the generation before this worker existed */
    pthread_mutex_lock(&m);
    for (;;) {
        while (!stopping && gen == seen) pthread_cond_wait(&work_cv, &m);
        if (stopping) break;
        seen = gen;
        if (!job_open || job_joined >= job_want) continue;
        int slot = ++job_joined;
        job_running++;
        dk_pool_fn fn = job_fn;
        void *arg = job_arg;
        int64_t n = job_n;
        pthread_mutex_unlock(&m);
        run_items(fn, arg, n, slot);
        pthread_mutex_lock(&m);
        if (--job_running == 0 && !job_open) pthread_cond_signal(&done_cv);
    }
    pthread_mutex_unlock(&m);
    return NULL;
}

/* fork(): the child has only the forking thread. prepare takes both locks (so no call is
 * in flight and the pool's state is consistent), the child forgets the workers (they do
 * not exist there) and re-initializes the primitives. */
static void atfork_prepare(void)
{
    pthread_mutex_lock(&busy);
    pthread_mutex_lock(&m);
}
static void atfork_parent(void)
{
    pthread_mutex_unlock(&m);
    pthread_mutex_unlock(&busy);
}
static void atfork_child(void)
{
    nworkers = 0;
    stopping = 0;
    job_open = 0;
    job_running = 0;
    pthread_cond_init(&work_cv, NULL);
    pthread_cond_init(&done_cv, NULL);
    pthread_mutex_unlock(&m);
    pthread_mutex_unlock(&busy);
}
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* Start workers until there are `want` (called with m held). Returns how many exist. */
static int grow(int want)
{
    if (want <= nworkers) return nworkers;
    if (want > cap_workers) {
        pthread_t *w = realloc(workers, (size_t)want * sizeof(pthread_t));
        if (!w) return nworkers;
        workers = w;
        cap_workers = want;
    }
    /* workers take no signals: the interpreter's handlers run on its own threads */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (nworkers < want) {
        if (pthread_create(&workers[nworkers], NULL, worker_main, (void *)(uintptr_t)gen)) break;
        nworkers++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return nworkers;
}

static int run_serial(int64_t nitems, dk_pool_fn fn, void *arg)
{
    for (int64_t i = 0; i < nitems; i++) fn(arg, i, 0);
    return 1;
}

static int pool_run(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg)
{
    if (nitems <= 0) return 0;
    if (nthreads <= 1 || nitems == 1) return run_serial(nitems, fn, arg);
    pthread_once(&atfork_once, register_atfork);
    if (pthread_mutex_trylock(&busy) != 0) return run_serial(nitems, fn, arg);

    pthread_mutex_lock(&m);
    int64_t want64 = nitems - 1 < (int64_t)nthreads - 1 ? nitems - 1 : (int64_t)nthreads - 1;
    int have = grow((int)want64);
    if (have == 0) {
        pthread_mutex_unlock(&m);
        pthread_mutex_unlock(&busy);
        return run_serial(nitems, fn, arg);
    }
    job_fn = fn;
    job_arg = arg;
    job_n = nitems;
    job_want = have < want64 ? have : (int)want64;
    job_joined = 0;
    job_running = 0;
    job_open = 1;
    atomic_store_explicit(&next_item, 0, memory_order_relaxed);
    gen++;
    pthread_cond_broadcast(&work_cv);
    pthread_mutex_unlock(&m);
    atomic_fetch_add_explicit(&parallel_calls, 1, memory_order_relaxed);

    run_items(fn, arg, nitems, 0);

    pthread_mutex_lock(&m);
    job_open = 0; /* late wakers stay out */
    while (job_running > 0) pthread_cond_wait(&done_cv, &m);
    int used = 1 + job_joined;
    pthread_mutex_unlock(&m);
    pthread_mutex_unlock(&busy);
    return used;
}

int dk_pool_run(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg)
{
    if (forward) return forward(nthreads, nitems, fn, arg);
    return pool_run(nthreads, nitems, fn, arg);
}

dk_pool_run_fn dk_pool_entry(void) { return pool_run; }

void dk_pool_forward_to(dk_pool_run_fn f) { forward = f == pool_run ? NULL : f; }

void dk_pool_shutdown(void)
{
    pthread_mutex_lock(&busy);
    pthread_mutex_lock(&m);
    stopping = 1;
    pthread_cond_broadcast(&work_cv);
    int n = nworkers;
    pthread_mutex_unlock(&m);
    for (int i = 0; i < n; i++) pthread_join(workers[i], NULL);
    pthread_mutex_lock(&m);
    nworkers = 0;
    stopping = 0;
    free(workers);
    workers = NULL;
    cap_workers = 0;
    pthread_mutex_unlock(&m);
    pthread_mutex_unlock(&busy);
}

int64_t dk_pool_parallel_calls(void) { return (int64_t)atomic_load(&parallel_calls); }

int dk_pool_workers(void)
{
    pthread_mutex_lock(&m);
    int n = nworkers;
    pthread_mutex_unlock(&m);
    return n;
}
