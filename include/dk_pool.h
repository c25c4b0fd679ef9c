/* dk_pool.h - the kernels' thread pool (csrc/pool.c): threads that sleep, never spin.
 *
 * dk_pool_run(nthreads, nitems, fn, arg) calls fn(arg, item, slot) once for every item in
 * [0, nitems) and returns when all calls have returned. The calling thread takes part;
 * up to nthreads - 1 pool workers help. Items are claimed one at a time from a shared
 * counter (dynamic schedule), so a thread slowed by another process on its core simply
 * takes fewer. `slot` is in [0, nthreads): the caller is slot 0, each helping worker has
 * its own slot for the duration of the call, so fn may index per-thread scratch by it.
 *
 * A call whose threads gained too little over its wall time (a busy process beside us, or a
 * call too small to repay waking a worker) makes the next calls of its kind run on the
 * caller for a while (the contention guard below).
 *
 * Waiting: idle workers block on a condition variable; the caller, once no item is left
 * to claim, blocks until the workers that are still inside an item have left it. A
 * worker that wakes up after the last item was claimed does not join, so a descheduled
 * worker never holds the caller up beyond the item it is running.
 *
 * The results of a kernel never depend on which thread ran which item, nor on how many
 * threads there are: the drivers cut the work into fixed items and every item writes its
 * own outputs (sums of integer counters, e.g. exception flags, are order-independent).
 *
 * Several calls at once (Python threads with the GIL released, or an fn that itself calls
 * dk_pool_run): the pool runs one call at a time; a call that finds it busy runs all its
 * items on the calling thread. fork(): the child starts with an empty pool (pthread_atfork).
 *
 * Every Cython extension links its own copy of the C base library; the extensions other
 * than _cpu call dk_pool_forward_to(dk_pool_entry() of _cpu) at import, so the process
 * has one pool. */
#ifndef DK_POOL_H
#define DK_POOL_H

#include <stdint.h>

typedef void (*dk_pool_fn)(void *arg, int64_t item, int slot);

/* Run fn on items [0, nitems) with up to nthreads threads (the caller included). Returns
 * the number of threads that took part (>= 1), or 0 when nitems <= 0. */
int dk_pool_run(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg);

/* The same, for a call whose size the caller measures as `work` (e.g. multiply-adds): the
 * contention guard keeps its state per kind of call, the item function and the binade of
 * `work` (dk_pool_run uses nitems). */
int dk_pool_run_as(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg, double work);

/* The thread count the contention guard allows now for a call of kind (fn, work):
 * nthreads, or 1 while the guard runs that kind on the calling thread (then the call is
 * counted as guarded). A driver that cuts its work by the thread count asks first, so that
 * a call the guard keeps on one thread is also cut for one thread. */
int dk_pool_advise(int nthreads, dk_pool_fn fn, double work);

/* The process-wide pool: this copy's entry points (an opaque table), and forwarding to
 * another copy's. */
const void *dk_pool_entry(void);
void dk_pool_forward_to(const void *entry);

/* Stop and join the workers (interpreter exit). Later calls run on the caller only. */
void dk_pool_shutdown(void);

/* Statistics of this copy's pool (tests): calls that used more than one thread, and the
 * number of worker threads alive. */
int64_t dk_pool_parallel_calls(void);
int dk_pool_workers(void);

/* The contention guard (docs/threads.md): every parallel call estimates what the caller
 * alone would have taken (the smaller of: the caller's time inside items + the workers'
 * CPU time inside items; the caller's time per item times the items) against its wall
 * time; when that gains less than 1.15x, the next calls of the same
 * kind (item function, binade of the item count) run on the calling thread for a back-off
 * period (4 ms, doubling to 256 ms while the probe at its end stays bad; reset by a good
 * one). dk_pool_guarded_calls counts the calls the guard ran serially. dk_pool_guard(on)
 * turns it on (1) or off (0) and clears its state; -1 only queries. Returns the previous
 * setting. On by default; DOJO_KERNELS_THREAD_GUARD=0 turns it off at import. */
int64_t dk_pool_guarded_calls(void);
int dk_pool_guard(int on);

/* Spreading (pool.c): the caller keeps the workers off its CPU for the call (steering: it
 * takes its CPU out of their affinity masks, and puts the masks back after), and a worker
 * that finds another thread of the call on its CPU before an item moves to an allowed CPU
 * the call does not use, keeping its affinity mask (settling). dk_pool_spread_moves
 * counts the moves; dk_pool_spread(on) turns both on (1) or off (0), -1 only queries;
 * returns the previous setting. On by default (Linux only). */
int64_t dk_pool_spread_moves(void);
int dk_pool_spread(int on);
/* Tests: move the calling thread as a worker that met another thread of its call on its
 * CPU. Sets the CPU before and after; returns 0 where spreading is not available. */
int dk_pool_test_spread(int *before, int *after);
/* Tests: a parallel call of nitems items, each noting in cpu[i] the CPU it starts on,
 * working `us` microseconds of CPU time and noting in slot[i] its thread's slot (0 the
 * caller); caller_cpu: the CPU steering kept the workers off (-1: none, e.g. a serial
 * call). Returns the threads used. */
int dk_pool_test_where(int nthreads, int64_t nitems, int64_t us, int *cpu, int *slot,
                       int *caller_cpu);
/* Tests: the calling thread settles as worker 1 of a call whose caller is on its own CPU
 * (no call may be in flight). Sets the CPU before and after; 0 where not available. */
int dk_pool_test_settle(int *before, int *after);

/* Tests: run nitems items; item i works caller_us[i] microseconds of CPU time on the
 * caller; on a worker it sleeps sleep_us[i] microseconds when that is nonzero, else works
 * worker_us[i]. Returns the threads used. */
int dk_pool_test_items(int nthreads, int64_t nitems, const int64_t *caller_us,
                       const int64_t *worker_us, const int64_t *sleep_us);

#endif
