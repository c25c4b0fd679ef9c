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
 * Spreading (Linux; dk_pool_spread turns both parts off): the caller takes its own CPU out
 * of the affinity masks of the workers that may join before it wakes them, so that they
 * wake elsewhere; a worker puts its mask back as it joins, and the caller puts back those
 * of the workers that did not join when the call ends, in both cases unless someone else
 * has changed the mask meanwhile (steering); and a worker that finds another thread of the call on its CPU before an item
 * (the caller, or a worker that joined before it) moves itself to one of its allowed CPUs
 * that the call does not use yet, then restores its own mask (settle). Slots from
 * DK_POOL_TRACKED on are neither tracked nor steered. Two threads of one call on one CPU
 * only take turns. The Linux scheduler normally wakes a
 * worker on an idle CPU, but not always: a KVM guest can see an idle vCPU as preempted
 * and pass it over, and some guest kernels pack threads onto few vCPUs on purpose (these
 * machines boot with sched_vcpu_pack); there a large 2-thread gemm ran at about 1.2x one
 * thread, its worker sharing the caller's vCPU, in every other call (docs/threads.md).
 *
 * Locking: `busy` (trylock) admits one parallel call at a time; `m` guards everything
 * below except the atomics (`next_item`, the counters, `slot_cpu`, the switches) and the
 * steering state (`steer_*`, the caller's alone, under `busy`). Happens-before between
 * the items' writes and the caller's return: every worker takes `m` after its last item,
 * and the caller takes `m` before it returns. */
#define _GNU_SOURCE
#include "dk_pool.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

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
static atomic_llong spread_moves; /* workers moved off a CPU the call already used */
static int slot_n = 1;            /* slots of the current call (1 + workers wanted; under m) */
static atomic_int spread_on = 1;

#if defined(__linux__) && defined(CPU_SETSIZE)
#define DK_POOL_SPREAD 1
#define DK_POOL_TRACKED 64
/* The CPU each thread of the current call (slot 0 the caller, 1.. the workers) was on when
 * it last claimed an item, -1 for none; reset at the start of every parallel call. */
static atomic_int slot_cpu[DK_POOL_TRACKED];

/* slot_cpu is read and written with locked instructions (exchange, fetch-add of 0): the
 * same relaxed atomics, but valgrind's helgrind, which does not model C11 atomics, sees
 * locked accesses as atomic and does not report them as races. */
static inline void cpu_put(int t, int c)
{
    (void)atomic_exchange_explicit(&slot_cpu[t], c, memory_order_relaxed);
}
static inline int cpu_get(int t) { return atomic_fetch_add_explicit(&slot_cpu[t], 0, memory_order_relaxed); }

static int this_cpu(void)
{
    int c = sched_getcpu();
    return c >= 0 && c < CPU_SETSIZE ? c : -1;
}

/* Move the calling thread to an allowed CPU outside `used`, keeping its affinity mask:
 * setting a mask without the current CPU migrates the thread at once, and restoring the
 * old mask does not move it back. Returns the CPU it runs on now (-1 if unknown). */
static int spread_from(const cpu_set_t *used)
{
    cpu_set_t mine, both, want;
    if (sched_getaffinity(0, sizeof mine, &mine) != 0) return this_cpu();
    CPU_AND(&both, &mine, used);
    CPU_XOR(&want, &mine, &both);
    if (CPU_COUNT(&want) == 0) return this_cpu(); /* nowhere else to go */
    if (sched_setaffinity(0, sizeof want, &want) == 0) {
        sched_setaffinity(0, sizeof mine, &mine);
        atomic_fetch_add_explicit(&spread_moves, 1, memory_order_relaxed);
    }
    return this_cpu();
}

/* Before each item: note this thread's CPU; a worker that finds another thread of the call
 * on it moves (the kernel may put it back later: the next item checks again). */
static void settle(int slot, int nslots)
{
    if (slot >= DK_POOL_TRACKED || !atomic_load_explicit(&spread_on, memory_order_relaxed))
        return;
    int c = this_cpu();
    if (c < 0) return;
    cpu_put(slot, c);
    if (slot == 0) return; /* the caller stays where it is */
    cpu_set_t used;
    CPU_ZERO(&used);
    int clash = 0;
    if (nslots > DK_POOL_TRACKED) nslots = DK_POOL_TRACKED;
    for (int t = 0; t < nslots; t++) {
        int o = t == slot ? -1 : cpu_get(t);
        if (o < 0) continue;
        CPU_SET(o, &used);
        clash |= o == c;
    }
    if (clash) cpu_put(slot, spread_from(&used));
}

static void leave_slot(int slot)
{
    if (slot < DK_POOL_TRACKED) cpu_put(slot, -1);
}

/* Steering (see the top of the file). Under `busy`: workers[] does not change meanwhile. */
static cpu_set_t steer_set[DK_POOL_TRACKED]; /* the mask steering gave worker w */
static cpu_set_t steer_old[DK_POOL_TRACKED]; /* its mask before */
static unsigned char steer_did[DK_POOL_TRACKED];
static int steer_n, steer_cpu = -1;

static void steer_begin(int n)
{
    steer_n = 0;
    steer_cpu = -1;
    if (!atomic_load_explicit(&spread_on, memory_order_relaxed)) return;
    int c = this_cpu();
    if (c < 0) return;
    steer_cpu = c;
    if (n > DK_POOL_TRACKED) n = DK_POOL_TRACKED;
    for (int w = 0; w < n; w++) {
        steer_did[w] = 0;
        steer_n = w + 1;
        if (pthread_getaffinity_np(workers[w], sizeof steer_old[w], &steer_old[w]) != 0) continue;
        if (!CPU_ISSET(c, &steer_old[w]) || CPU_COUNT(&steer_old[w]) < 2) continue;
        steer_set[w] = steer_old[w];
        CPU_CLR(c, &steer_set[w]);
        steer_did[w] = pthread_setaffinity_np(workers[w], sizeof steer_set[w], &steer_set[w]) == 0;
    }
}

/* A worker that joins (under m) takes back its own mask at once: steering is only meant to
 * choose where it wakes; afterwards the scheduler may place it anywhere it is allowed (with
 * the caller's CPU barred for the whole call, a caller moved by the scheduler onto the
 * worker's CPU could not be escaped). */
typedef struct { cpu_set_t set, old; } steered;

static int steer_take(steered *st)
{
    pthread_t me = pthread_self();
    for (int w = 0; w < steer_n; w++)
        if (steer_did[w] && pthread_equal(workers[w], me)) {
            st->set = steer_set[w];
            st->old = steer_old[w];
            steer_did[w] = 0;
            return 1;
        }
    return 0;
}

static void steer_undo_self(const steered *st)
{
    cpu_set_t now;
    if (sched_getaffinity(0, sizeof now, &now) == 0 && CPU_EQUAL(&now, &st->set))
        sched_setaffinity(0, sizeof st->old, &st->old);
}

static void steer_end(void)
{
    for (int w = 0; w < steer_n; w++) {
        cpu_set_t now;
        if (!steer_did[w]) continue;
        /* put the old mask back only if the mask is still the one steering set */
        if (pthread_getaffinity_np(workers[w], sizeof now, &now) == 0 && CPU_EQUAL(&now, &steer_set[w]))
            pthread_setaffinity_np(workers[w], sizeof steer_old[w], &steer_old[w]);
        steer_did[w] = 0;
    }
    steer_n = 0;
}

static int cur_cpu(void) { return this_cpu(); }
#else
typedef struct { int unused; } steered;
static int steer_take(steered *st) { (void)st; return 0; }
static void steer_undo_self(const steered *st) { (void)st; }
static int steer_cpu = -1;
static void settle(int slot, int nslots) { (void)slot; (void)nslots; }
static void leave_slot(int slot) { (void)slot; }
static void steer_begin(int n) { (void)n; }
static void steer_end(void) {}
static int cur_cpu(void) { return -1; }
#endif
typedef int (*run_fn)(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg, double work);
typedef int (*advise_fn)(int nthreads, dk_pool_fn fn, double work);
typedef struct { run_fn run; advise_fn advise; } pool_api;
static const pool_api *forward;

/* ---- the contention guard ------------------------------------------------------------
 * A parallel call is worth it only when the work its threads did, added up (about what
 * the caller alone would have taken), exceeds the call's wall time by a margin: on an idle
 * machine a large call gives about nthreads, but with a busy process beside us, or a call
 * too small to repay waking a worker (on a VM an idle vCPU can take a hundred microseconds
 * to wake), the worker joins late or not at all, or is descheduled inside an item while
 * the caller waits for it. So every parallel call estimates the serial time twice, as the
 * caller's time inside items + the workers' CPU time inside items (a worker's time
 * descheduled is not work; the caller's counts: it would delay a serial call too), and as
 * the caller's time per item times the items (the items of a call are alike; this one also
 * sees a worker that is slow while it runs, e.g. a vCPU just woken), and takes
 * S = (the smaller estimate) / (the call's wall time); when
 * S < DK_GUARD_MIN_GAIN the next calls of the same kind (same item function, same binade
 * of the call's work: dk_pool_run_as) run on the calling thread for a back-off period that
 * doubles while the probes at its end stay bad (DK_GUARD_START_NS .. DK_GUARD_MAX_NS) and
 * resets after a good one. Results never change: only how many threads run the items. */
#define DK_GUARD_MIN_GAIN 1.15
#define DK_GUARD_START_NS ((int64_t)4000000)      /* 4 ms */
#define DK_GUARD_MAX_NS ((int64_t)256000000)      /* 256 ms */
#define DK_GUARD_SLOTS 64

typedef struct {
    dk_pool_fn fn;        /* the kind: item function and binade of the work (under guard_m) */
    int lg;
    atomic_llong until;   /* monotonic ns: calls before this run serially */
    atomic_llong backoff; /* the last back-off period, 0 after a good call */
} guard_t;
static guard_t guards[DK_GUARD_SLOTS];
static pthread_mutex_t guard_m = PTHREAD_MUTEX_INITIALIZER;
static atomic_int guard_on = 1;
static atomic_llong guarded_calls;
static int64_t job_busy_ns;     /* the workers' CPU time inside items, this call (under m) */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* This thread's CPU time (a worker's work: time it spent descheduled does not count). */
static int64_t cpu_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The state of a kind: an exact (fn, binade of work) entry, found by linear probing from a
 * hash; a new kind takes a free entry (with all 64 taken, kinds share the home entry). */
static guard_t *guard_for(dk_pool_fn fn, double work)
{
    unsigned long long w = work >= 1.0 ? (work < 9.2e18 ? (unsigned long long)work : 1ull << 63) : 1;
    int lg = 63 - __builtin_clzll(w);
    uint64_t h = ((uint64_t)(uintptr_t)fn >> 4) * 0x9E3779B97F4A7C15ull;
    h ^= (uint64_t)(lg + 1) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 31;
    unsigned home = (unsigned)(h % DK_GUARD_SLOTS);
    guard_t *found = &guards[home];
    pthread_mutex_lock(&guard_m);
    for (unsigned i = 0; i < DK_GUARD_SLOTS; i++) {
        guard_t *g = &guards[(home + i) % DK_GUARD_SLOTS];
        if (g->fn == fn && g->lg == lg) { found = g; break; }
        if (!g->fn) {
            g->fn = fn;
            g->lg = lg;
            found = g;
            break;
        }
    }
    pthread_mutex_unlock(&guard_m);
    return found;
}

static void guard_reset(void)
{
    pthread_mutex_lock(&guard_m);
    for (int i = 0; i < DK_GUARD_SLOTS; i++) {
        guards[i].fn = NULL;
        guards[i].lg = 0;
        atomic_store_explicit(&guards[i].until, 0, memory_order_relaxed);
        atomic_store_explicit(&guards[i].backoff, 0, memory_order_relaxed);
    }
    pthread_mutex_unlock(&guard_m);
}

/* After a parallel call: S = busy / wall. Bad -> back off (doubling); good -> reset. */
static void guard_update(guard_t *g, int64_t busy, int64_t wall, int64_t now)
{
    if (wall <= 0) return;
    if ((double)busy >= DK_GUARD_MIN_GAIN * (double)wall) {
        atomic_store_explicit(&g->backoff, 0, memory_order_relaxed);
        return;
    }
    int64_t b = atomic_load_explicit(&g->backoff, memory_order_relaxed);
    b = b ? (2 * b < DK_GUARD_MAX_NS ? 2 * b : DK_GUARD_MAX_NS) : DK_GUARD_START_NS;
    atomic_store_explicit(&g->backoff, b, memory_order_relaxed);
    atomic_store_explicit(&g->until, now + b, memory_order_relaxed);
}

/* Runs items until none is left; returns how many this thread ran. */
static int64_t run_items(dk_pool_fn fn, void *arg, int64_t n, int slot, int nslots)
{
    for (int64_t done = 0;; done++) {
        int64_t i = (int64_t)atomic_fetch_add_explicit(&next_item, 1, memory_order_relaxed);
        if (i >= n) {
            leave_slot(slot);
            return done;
        }
        settle(slot, nslots);
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
        int nslots = slot_n;
        steered st;
        int unsteer = steer_take(&st);
        pthread_mutex_unlock(&m);
        if (unsteer) steer_undo_self(&st);
        int64_t w0 = cpu_ns();
        run_items(fn, arg, n, slot, nslots);
        int64_t w1 = cpu_ns();
        pthread_mutex_lock(&m);
        job_busy_ns += w0 >= 0 && w1 >= w0 ? w1 - w0 : 0;
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
    pthread_mutex_lock(&guard_m);
}
static void atfork_parent(void)
{
    pthread_mutex_unlock(&guard_m);
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
    pthread_mutex_unlock(&guard_m);
    guard_reset();      /* another process: the parent's load is not the child's */
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

static int pool_advise(int nthreads, dk_pool_fn fn, double work)
{
    if (nthreads <= 1 || !atomic_load_explicit(&guard_on, memory_order_relaxed)) return nthreads;
    guard_t *g = guard_for(fn, work);
    if (mono_ns() < atomic_load_explicit(&g->until, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&guarded_calls, 1, memory_order_relaxed);
        return 1;
    }
    return nthreads;
}

static int pool_run(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg, double work)
{
    if (nitems <= 0) return 0;
    if (nthreads <= 1 || nitems == 1) return run_serial(nitems, fn, arg);
    pthread_once(&atfork_once, register_atfork);
    guard_t *g = NULL;
    int64_t t0 = 0;
    if (atomic_load_explicit(&guard_on, memory_order_relaxed)) {
        g = guard_for(fn, work);
        t0 = mono_ns();
        if (t0 < atomic_load_explicit(&g->until, memory_order_relaxed)) {
            atomic_fetch_add_explicit(&guarded_calls, 1, memory_order_relaxed);
            return run_serial(nitems, fn, arg);
        }
    }
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
    job_busy_ns = 0;
    slot_n = 1 + job_want;
#ifdef DK_POOL_SPREAD
    /* the caller's CPU is known from the start: a worker may claim an item first */
    for (int t = 1; t < 1 + job_want && t < DK_POOL_TRACKED; t++) cpu_put(t, -1);
    cpu_put(0, this_cpu());
#endif
    job_open = 1;
    atomic_store_explicit(&next_item, 0, memory_order_relaxed);
    steer_begin(job_want); /* the first job_want workers (others that join settle) */
    gen++;
    pthread_cond_broadcast(&work_cv);
    pthread_mutex_unlock(&m);
    atomic_fetch_add_explicit(&parallel_calls, 1, memory_order_relaxed);

    int64_t c0 = g ? mono_ns() : 0;
    int64_t mine = run_items(fn, arg, nitems, 0, slot_n);
    int64_t c1 = g ? mono_ns() : 0;

    pthread_mutex_lock(&m);
    job_open = 0; /* late wakers stay out */
    while (job_running > 0) pthread_cond_wait(&done_cv, &m);
    int used = 1 + job_joined;
    int64_t wbusy = job_busy_ns;
    pthread_mutex_unlock(&m);
    steer_end();
    pthread_mutex_unlock(&busy);
    if (g) {
        int64_t t1 = mono_ns();
        /* two estimates of the serial time: the work done (the caller's time + the workers'
         * CPU time) and the caller's own rate over all the items (items of one call are
         * alike); the call gained only if both say so */
        int64_t work = (c1 - c0) + wbusy;
        int64_t by_rate = mine > 0 ? (int64_t)((double)(c1 - c0) * (double)nitems / (double)mine) : 0;
        guard_update(g, work < by_rate ? work : by_rate, t1 - t0, t1);
    }
    return used;
}

static const pool_api this_pool = {pool_run, pool_advise};

int dk_pool_run_as(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg, double work)
{
    if (forward) return forward->run(nthreads, nitems, fn, arg, work);
    return pool_run(nthreads, nitems, fn, arg, work);
}

int dk_pool_run(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg)
{
    return dk_pool_run_as(nthreads, nitems, fn, arg, (double)nitems);
}

int dk_pool_advise(int nthreads, dk_pool_fn fn, double work)
{
    if (forward) return forward->advise(nthreads, fn, work);
    return pool_advise(nthreads, fn, work);
}

const void *dk_pool_entry(void) { return &this_pool; }

void dk_pool_forward_to(const void *entry)
{
    forward = entry == (const void *)&this_pool ? NULL : (const pool_api *)entry;
}

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

/* Tests of the guard: item i, run by the caller, works (spins on this thread's CPU clock)
 * caller_us[i] microseconds of CPU time; run by a worker, it sleeps sleep_us[i]
 * microseconds when that is nonzero (a worker descheduled inside its item), else works
 * worker_us[i]. Whichever thread claims which item, each thread's pace is known. */
typedef struct { const int64_t *caller_us, *worker_us, *sleep_us; } test_args;
static void test_item(void *arg, int64_t i, int slot)
{
    const test_args *A = arg;
    int64_t us = slot > 0 ? A->sleep_us[i] : 0;
    if (us > 0) {
        struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) != 0) {}
        return;
    }
    int64_t c0 = cpu_ns(), want = (slot > 0 ? A->worker_us[i] : A->caller_us[i]) * 1000;
    volatile uint64_t x = 0;
    while (want > 0 && c0 >= 0 && cpu_ns() - c0 < want)
        for (int j = 0; j < 1000; j++) x += (uint64_t)j;
}

int dk_pool_test_items(int nthreads, int64_t nitems, const int64_t *caller_us,
                       const int64_t *worker_us, const int64_t *sleep_us)
{
    test_args a = {caller_us, worker_us, sleep_us};
    return dk_pool_run(nthreads, nitems, test_item, &a);
}

/* Tests of spreading: item i notes the CPU it starts on, works `us` microseconds of CPU
 * time, and notes the slot of the thread that ran it. */
typedef struct { int64_t us; int *cpu, *slot; } where_args;
static void where_item(void *arg, int64_t i, int slot)
{
    const where_args *A = arg;
    A->cpu[i] = cur_cpu();
    int64_t c0 = cpu_ns();
    volatile uint64_t x = 0;
    while (c0 >= 0 && cpu_ns() - c0 < A->us * 1000)
        for (int j = 0; j < 1000; j++) x += (uint64_t)j;
    A->slot[i] = slot;
}

int dk_pool_test_where(int nthreads, int64_t nitems, int64_t us, int *cpu, int *slot,
                       int *caller_cpu)
{
    where_args a = {us, cpu, slot};
    steer_cpu = -1;
    int used = dk_pool_run(nthreads, nitems, where_item, &a);
    *caller_cpu = steer_cpu; /* the CPU steering kept the workers off (-1: none) */
    return used;
}

int dk_pool_test_settle(int *before, int *after)
{
#ifdef DK_POOL_SPREAD
    pthread_mutex_lock(&busy); /* no call in flight: slot_cpu is ours for a moment */
    *before = this_cpu();
    cpu_put(0, *before); /* "the caller" on this thread's CPU */
    cpu_put(1, -1);
    settle(1, 2);        /* and this thread as worker 1 */
    *after = this_cpu();
    cpu_put(0, -1);
    cpu_put(1, -1);
    pthread_mutex_unlock(&busy);
    return *before >= 0;
#else
    *before = *after = -1;
    return 0;
#endif
}

int64_t dk_pool_guarded_calls(void) { return (int64_t)atomic_load(&guarded_calls); }

int dk_pool_test_spread(int *before, int *after)
{
#ifdef DK_POOL_SPREAD
    cpu_set_t used;
    CPU_ZERO(&used);
    *before = this_cpu();
    if (*before < 0) {
        *after = -1;
        return 0;
    }
    CPU_SET(*before, &used);
    *after = spread_from(&used);
    return 1;
#else
    *before = *after = -1;
    return 0;
#endif
}

int64_t dk_pool_spread_moves(void) { return (int64_t)atomic_load(&spread_moves); }

int dk_pool_spread(int on)
{
    int was = atomic_load(&spread_on);
    if (on >= 0) atomic_store(&spread_on, on ? 1 : 0);
    return was;
}

int dk_pool_guard(int on)
{
    int was = atomic_load(&guard_on);
    if (on >= 0) {
        atomic_store(&guard_on, on ? 1 : 0);
        guard_reset();   /* a fresh start either way */
    }
    return was;
}

int dk_pool_workers(void)
{
    pthread_mutex_lock(&m);
    int n = nworkers;
    pthread_mutex_unlock(&m);
    return n;
}
