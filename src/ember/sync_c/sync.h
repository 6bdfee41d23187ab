/*
 * sync.h -- public API of ember's synchronization objects in shared memory:
 * Lock, RLock, Semaphore/BoundedSemaphore, Event, Barrier.
 *
 * Each object lives in caller-provided memory (a pool allocation, 64-byte
 * aligned, at least ember_sync_size(kind) bytes) that every process using it
 * has mapped.  The memory holds no pointers, so processes may map it at
 * different addresses.  The algorithms, invariants, memory orders and what a
 * SIGKILL at any instruction costs are in sync.c's opening comment; the user
 * view is docs/sync.md.
 *
 * Return codes: ember_rc_t (EMBER_OK == 0) plus the EMBER_SYNC_* codes
 * below.  "Busy" and "timed out" are EMBER_ERR_TIMEOUT.  A timeout_ns < 0
 * waits forever, 0 tries once, > 0 waits at most that long.  A blocking call
 * wakes at least every EMBER_SYNC_CHECK_NS to check whether the process it
 * waits for is still alive; a signal ends a wait early with
 * EMBER_ERR_INTERRUPTED (a caller that must handle signals, e.g. Python,
 * passes bounded slices and calls again).
 */
#ifndef EMBER_SYNC_H
#define EMBER_SYNC_H

#include <stdint.h>
#include <stddef.h>
#include "../common_c/ember_common.h"

/* Return codes beyond ember_rc_t. */
#define EMBER_SYNC_OWNER_DIED  64   /* acquired; a holder died while holding it */
#define EMBER_SYNC_NOT_OWNER   65   /* release of a lock the caller does not hold */
#define EMBER_SYNC_OVER        66   /* release beyond the bound / of an unlocked lock */
#define EMBER_SYNC_BROKEN      67   /* the barrier is broken (or was reset) */
#define EMBER_SYNC_LAST        68   /* barrier: the caller is the last party */

enum {
    EMBER_SYNC_LOCK = 1,
    EMBER_SYNC_RLOCK = 2,
    EMBER_SYNC_SEMAPHORE = 3,
    EMBER_SYNC_EVENT = 4,
    EMBER_SYNC_BARRIER = 5,
    EMBER_SYNC_CONDITION = 6,
};

#define EMBER_SYNC_SEM_SLOTS      64u   /* processes holding permits, tracked */
#define EMBER_SYNC_BARRIER_MAX    64u   /* most parties of a Barrier */
#define EMBER_SYNC_BARRIER_SLOTS 128u   /* waiter slots (2 x parties) */
#define EMBER_SYNC_COND_SLOTS    128u   /* threads waiting on a Condition at once */
#define EMBER_SYNC_CHECK_NS  20000000ll /* liveness check period while waiting */
#define EMBER_SYNC_SEM_MAX   0x7fffffffll

/* Flags (ember_sync_init). */
#define EMBER_SYNC_F_BOUNDED   1u   /* BoundedSemaphore: release beyond the initial value fails */
#define EMBER_SYNC_F_NORECLAIM 2u   /* Semaphore: do not track holders (no count-back on death) */

/* Bytes an object of `kind` needs (0 for an unknown kind). */
size_t ember_sync_size(int kind);

/* Initialize an object in `mem` (`size` bytes, 8-byte aligned at least).
 * param: Semaphore initial value (0..EMBER_SYNC_SEM_MAX), Barrier parties
 * (1..EMBER_SYNC_BARRIER_MAX), otherwise 0.  The header magic is stored
 * last (release), so an attacher never sees a half-built object. */
ember_rc_t ember_sync_init(void *mem, size_t size, int kind, int64_t param, uint32_t flags);

/* Check that `mem` holds a live object of `kind` (magic, version, kind,
 * size).  EMBER_ERR_BAD_MAGIC, EMBER_ERR_VERSION, EMBER_ERR_DESTROYED. */
ember_rc_t ember_sync_check(const void *mem, size_t size, int kind);
/* The object's init parameters. */
ember_rc_t ember_sync_params(const void *mem, int64_t *param, uint32_t *flags);
/* Mark the object destroyed (every later ember_sync_check fails). */
ember_rc_t ember_sync_destroy(void *mem);

/* This process's identity as stored in objects: (start-time << 32) | pid. */
uint64_t ember_sync_self(void);

/* In a child made by a raw clone() (no pthread_atfork handler ran; the
 * extension calls it from an os.register_at_fork hook, so after an ordinary
 * fork() too, where it is a no-op): forget the cached identity (it is
 * recomputed on first use). */
void ember_sync_after_clone(void);
/* 1 if the process with that identity is gone (or a zombie), else 0. */
int ember_sync_id_dead(uint64_t id);

/* ---- Lock / RLock -----------------------------------------------------
 * acquire: EMBER_OK, EMBER_SYNC_OWNER_DIED (acquired, but the object is
 * marked inconsistent: a holder died while holding it; *died_pid says who),
 * EMBER_ERR_TIMEOUT, EMBER_ERR_INTERRUPTED.  `check_dead` on a try-once
 * (timeout 0) asks for a liveness check of the holder when busy (a blocking
 * acquire always checks, after each EMBER_SYNC_CHECK_NS asleep).
 * The mark stays until ember_lock_consistent() by a holder, so a holder
 * that releases without repairing passes the report on to the next one.
 * release: Lock -- any process may release (multiprocessing semantics);
 * EMBER_SYNC_OVER if unlocked.  RLock -- EMBER_SYNC_NOT_OWNER unless the
 * calling thread holds it. */
ember_rc_t ember_lock_acquire(void *mem, int64_t timeout_ns, int check_dead, uint32_t *died_pid);
/* Try-once that first spins about `spins` pause instructions while the
 * lock is busy, polling it with exponential backoff (no system call, no
 * liveness check): for a caller that wants to avoid the cost of a blocking
 * call (e.g. releasing the GIL) on a lock held for a few hundred
 * nanoseconds.  Returns as ember_lock_acquire. */
ember_rc_t ember_lock_spin_acquire(void *mem, uint32_t spins, uint32_t *died_pid);
ember_rc_t ember_lock_release(void *mem);
ember_rc_t ember_lock_consistent(void *mem);
int ember_lock_locked(const void *mem);
/* Holder identity (0 = free), recursion count (RLock), inconsistent mark
 * (pid of the dead holder, 0 = consistent), and deaths reported so far. */
void ember_lock_state(const void *mem, uint64_t *holder, uint32_t *count, uint32_t *died_pid,
                      uint32_t *deaths);
/* RLock: 1 if the calling thread holds it. */
int ember_rlock_is_mine(const void *mem);

/* ---- Semaphore ---------------------------------------------------------
 * acquire: EMBER_OK, EMBER_ERR_TIMEOUT, EMBER_ERR_INTERRUPTED.  Permits held
 * by a process that died are counted back before a waiter gives up on a
 * slice (and on a try-once that finds no permit).  release(n):
 * EMBER_SYNC_OVER if bounded and the value would exceed the initial value,
 * EMBER_ERR_INVALID_ARG for n < 1. */
ember_rc_t ember_sem_acquire(void *mem, int64_t timeout_ns);
ember_rc_t ember_sem_release(void *mem, uint32_t n);
int64_t ember_sem_value(void *mem);
/* Count back the permits of dead holders now; *reclaimed says how many. */
ember_rc_t ember_sem_reclaim(void *mem, uint64_t *reclaimed);

/* ---- Event -------------------------------------------------------------
 * wait: EMBER_OK once set (or set at any moment after *token was taken:
 * a set followed by a clear still wakes the waiter), EMBER_ERR_TIMEOUT.
 * Take the token with ember_event_token() before the first slice and pass
 * the same token to every slice of one wait. */
ember_rc_t ember_event_set(void *mem);
ember_rc_t ember_event_clear(void *mem);
int ember_event_is_set(const void *mem);
uint32_t ember_event_token(const void *mem);
ember_rc_t ember_event_wait(void *mem, uint32_t token, int64_t timeout_ns);

/* ---- Barrier -----------------------------------------------------------
 * arrive: EMBER_OK (waiting: call ember_barrier_wait with *slot) or
 * EMBER_SYNC_LAST (the caller completes the generation: run the action,
 * then ember_barrier_trip(ok)), EMBER_SYNC_BROKEN, EMBER_ERR_FULL (no
 * waiter slot), EMBER_ERR_TIMEOUT/INTERRUPTED (waiting for the previous
 * generation's action to finish).  *index is the arrival index
 * 0..parties-1.
 * wait: EMBER_OK (tripped), EMBER_SYNC_BROKEN, EMBER_ERR_TIMEOUT (slice over,
 * still waiting: call again, or ember_barrier_abandon to give up, which
 * breaks the barrier as threading.Barrier does on a timeout).
 * A waiting party found dead breaks the barrier for the others. */
ember_rc_t ember_barrier_arrive(void *mem, int64_t timeout_ns, uint32_t *index, uint32_t *slot);
ember_rc_t ember_barrier_wait(void *mem, uint32_t slot, int64_t timeout_ns);
ember_rc_t ember_barrier_trip(void *mem, uint32_t slot, int ok);
ember_rc_t ember_barrier_abandon(void *mem, uint32_t slot);
ember_rc_t ember_barrier_abort(void *mem);
ember_rc_t ember_barrier_reset(void *mem);
void ember_barrier_state(void *mem, uint32_t *parties, uint32_t *n_waiting, int *broken);

/* ---- Condition (the waiting part; the lock is a separate Lock/RLock) ----
 * enter: take a waiter slot BEFORE releasing the lock (so a notify after
 * the release sees it); EMBER_ERR_FULL if all slots are taken.
 * wait: EMBER_OK once notified (the slot is freed), EMBER_ERR_TIMEOUT (slice
 * over: call again, or ember_cond_leave to give up), EMBER_ERR_INTERRUPTED.
 * leave: give the slot up: EMBER_OK if it was notified meanwhile, else
 * EMBER_ERR_TIMEOUT.  notify: mark up to n waiting slots notified, oldest
 * first, skipping (and freeing) slots of dead waiters; *woken says how many. */
ember_rc_t ember_cond_enter(void *mem, uint32_t *slot);
ember_rc_t ember_cond_wait(void *mem, uint32_t slot, int64_t timeout_ns);
ember_rc_t ember_cond_leave(void *mem, uint32_t slot);
ember_rc_t ember_cond_notify(void *mem, uint32_t n, uint32_t *woken);
uint32_t ember_cond_waiting(void *mem);
/* counts: the waits begun ever (64-bit), and of those not ended, the ones
 * WAITING and the ones NOTIFIED but not yet returned (slots of dead waiters
 * left out: their waits have ended), all at one moment (under the meta lock). */
void ember_cond_counts(void *mem, uint64_t *begun, uint32_t *waiting, uint32_t *notified);

#endif /* EMBER_SYNC_H */
