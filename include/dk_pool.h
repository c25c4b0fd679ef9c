/* dk_pool.h - the kernels' thread pool (csrc/pool.c): threads that sleep, never spin.
 *
 * dk_pool_run(nthreads, nitems, fn, arg) calls fn(arg, item, slot) once for every item in
 * [0, nitems) and returns when all calls have returned. The calling thread takes part;
 * up to nthreads - 1 pool workers help. Items are claimed one at a time from a shared
 * counter (dynamic schedule), so a thread slowed by another process on its core simply
 * takes fewer. `slot` is in [0, nthreads): the caller is slot 0, each helping worker has
 * its own slot for the duration of the call, so fn may index per-thread scratch by it.
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
typedef int (*dk_pool_run_fn)(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg);

/* Run fn on items [0, nitems) with up to nthreads threads (the caller included). Returns
 * the number of threads that took part (>= 1), or 0 when nitems <= 0. */
int dk_pool_run(int nthreads, int64_t nitems, dk_pool_fn fn, void *arg);

/* The process-wide pool: this copy's dk_pool_run implementation, and forwarding to it. */
dk_pool_run_fn dk_pool_entry(void);
void dk_pool_forward_to(dk_pool_run_fn f);

/* Stop and join the workers (interpreter exit). Later calls run on the caller only. */
void dk_pool_shutdown(void);

/* Statistics of this copy's pool (tests): calls that used more than one thread, and the
 * number of worker threads alive. */
int64_t dk_pool_parallel_calls(void);
int dk_pool_workers(void);

#endif
