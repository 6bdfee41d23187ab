/*
 * sync.c -- ember's synchronization objects in shared memory (Lock, RLock,
 * Semaphore/BoundedSemaphore, Event, Barrier, Condition) that stay honest
 * when a process dies at any instruction.
 *
 * ALGORITHM
 * ---------
 * Every object is a block of caller-provided shared memory (a pool
 * allocation) starting with a 64-byte header (magic, layout version, kind,
 * parameter, flags, size).  Nothing in it is a pointer.
 *
 * Identity.  A process is named by a 64-bit id = (start time << 32) | pid,
 * where the start time is field 22 of /proc/<pid>/stat (clock ticks since
 * boot, low 32 bits).  A process is DEAD when kill(pid, 0) fails with ESRCH,
 * when /proc/<pid> is gone or shows a zombie (Z/X), or when the process now
 * using that pid started at another time (pid reuse).  The id is computed
 * once per process and recomputed in a fork child (pthread_atfork).  This
 * is the "robust futex" idea (Linux robust_list, pthread robust mutexes,
 * Drepper "Futexes Are Tricky"), but the owner is checked by polling, not
 * by the kernel's exit hook, so it works across any processes that share
 * one pid namespace and needs no registration per thread.
 *
 * Lock / RLock.  One 64-bit word xstate: 0 = free, else the holder's id.
 * acquire = CAS 0 -> me; release = exchange -> 0 (one read-modify-write
 * each).  A busy lock is polled (test-and-test-and-set) with exponential
 * backoff, 1, 2, 4 .. LOCK_BACKOFF_MAX pauses between polls, for a bounded
 * number of pauses (the Python layer spins 100 with the GIL held, the
 * blocking call LOCK_SPIN more without it: ~3 + ~6 us where a pause takes
 * ~30 ns, as on the AMD EPYC development machine), then the waiter sleeps.  Barging,
 * not hand-off: a releaser that re-acquires at once usually gets the lock
 * again, and a waiter that polls rarely lets it run several pairs on its
 * own cache line (the trade glibc's adaptive mutex, WebKit's ParkingLot
 * and Rust's parking_lot make: throughput over FIFO fairness).  A waiter
 * sleeps on a separate futex word xseq with the sleepers-flag handshake of
 * channel.c (see MEMORY ORDER), in slices of at most EMBER_SYNC_CHECK_NS
 * (20 ms).  When a slice runs out (or a try-once finds the lock busy and
 * the caller asks for it) the holder's id is checked; if the holder is
 * dead, CAS holder -> me takes the lock over, records the dead pid in
 * xdied (the "inconsistent" mark, like EOWNERDEAD) and counts the death in
 * xdeaths.  Whoever acquires while xdied != 0 gets EMBER_SYNC_OWNER_DIED;
 * ember_lock_consistent() by a holder clears it.  A holder that releases
 * without calling it passes the report on (we do not make the lock
 * unrecoverable as pthreads' ENOTRECOVERABLE does).  The id CAS is unique
 * per death: a dead id never acquires again, so exactly one process takes
 * over from each dead holder.  RLock adds the holder thread (pthread_self,
 * relaxed, written only by the holder) and a recursion count (holder only).
 *
 * Semaphore.  An internal "meta lock" word xmeta (same id CAS, spin then
 * sched_yield; a dead holder is taken over after a liveness check) guards
 * a signed base counter xbase and a table of EMBER_SYNC_SEM_SLOTS (64)
 * slots (holder id, permits held).  The value is DERIVED:
 *     value = base - sum(held).
 * acquire (value > 0): held += 1 in the caller's slot (claiming a free slot
 * first: id store, then held store); with no free slot, or with
 * EMBER_SYNC_F_NORECLAIM, base -= 1 (an untracked permit).  release: takes
 * one permit back from the caller's slot if it holds any, else from any
 * holder's slot (a release on behalf of another process), else base += 1;
 * a slot whose held reaches 0 is freed (id = 0).  Reclaim: a slot whose id
 * is dead gets held = 0 (the permits are counted back), then id = 0.  Every
 * change of the value is ONE store, so the state is consistent after every
 * instruction and a meta-lock holder's death needs no repair.
 * Waiters sleep on xseq like Lock waiters; the reclaim runs when a waiter's
 * slice runs out and when a try-once finds no permit.
 *
 * Event.  One 32-bit futex word: (generation << 1) | flag.  set: CAS to
 * ((gen + 1) << 1) | 1 if not set; clear: CAS flag -> 0.  A waiter keeps the
 * word it first saw (the token); it is done when the flag is set or the
 * generation moved (a set followed by a clear still wakes it, as
 * threading.Event's waiters are woken by set() even if clear() follows).
 *
 * Barrier.  The classic generation barrier (count, generation word xgen as
 * futex) plus a table of EMBER_SYNC_BARRIER_SLOTS (128) waiter slots (id,
 * status FREE/WAITING/LAST/TRIPPED/BROKEN), all changed under the meta lock
 * except a waiter freeing its own slot.  arrive: claim a slot, index =
 * count++; the last party (count == parties) marks itself LAST and runs the
 * action outside the lock, then trip: every WAITING slot -> TRIPPED,
 * count = 0, xgen += 1, wake all.  break (abort, timeout, failed action, a
 * dead party): broken = 1, WAITING/LAST slots -> BROKEN, count = 0, xgen += 1.
 * reset: as break but broken = 0.  Arrivals while the action runs wait for
 * xgen to move.  Waiters check the ids of WAITING/LAST slots when a slice
 * runs out; a dead one breaks the barrier.  A meta lock taken over from a
 * dead holder also breaks the barrier (its state may be half-updated; a
 * broken barrier is the honest answer and reset() repairs it).
 *
 * Condition.  The waiting half of a condition variable (the lock is a
 * separate Lock/RLock): a table of EMBER_SYNC_COND_SLOTS (128) waiter slots
 * (id, status FREE/WAITING/NOTIFIED, arrival ticket) under the meta lock,
 * and a futex word xseq.  A waiter takes a slot BEFORE releasing the lock
 * (so a notify issued after the release sees it), sleeps until its slot is
 * NOTIFIED, and frees it; on a timeout it frees the slot under the meta
 * lock and learns whether a notify got there first (then the wait counts
 * as notified, so no notification is lost).  notify(n) marks the n oldest
 * WAITING slots NOTIFIED, skipping and freeing slots of dead waiters, then
 * bumps xseq (release) and wakes all sleepers.  xbegun counts the waits
 * ever begun (enter, under the meta lock, before the slot shows WAITING:
 * a waiter that dies between the two has begun and ended a wait); the
 * waits ended are xbegun less the occupied slots of live waiters
 * (ember_cond_counts, for inspection only).
 *
 * INVARIANTS
 *   - xstate (Lock/RLock) is 0 or the id of a process that acquired it and
 *     has not released it; only that process, or one that has seen it dead,
 *     changes it from that value (CAS with the id as expected value).
 *   - Semaphore: value = base - sum(held) is the number of permits
 *     available; held[i] > 0 only with id[i] != 0; BoundedSemaphore keeps
 *     base <= initial value, so a reclaim never raises the value above it.
 *   - Barrier: count = number of WAITING + LAST slots of the current
 *     generation; at most one LAST slot; xgen only grows.
 *
 * MEMORY ORDER
 *   - Lock: the acquire CAS (acq_rel) pairs with the releasing exchange
 *     -> 0 (seq_cst) of the previous holder, so the critical
 *     section's writes (and xdied, xthread, count) are visible to the next
 *     holder.  A takeover CAS dead -> me reads from the dead holder's
 *     acquire CAS; what the dead holder wrote after it may or may not be
 *     visible: that is exactly what OWNER_DIED reports.
 *   - Lock release is a seq_cst exchange followed by a seq_cst load of the
 *     sleepers flag, and a Lock waiter re-reads xstate with a seq_cst load
 *     after raising the flag: the store-buffering pattern with all four
 *     accesses seq_cst, so no fence is needed on the release fast path (on
 *     x86 the exchange is the only barrier).  The backoff polls are
 *     relaxed loads: a hint only, the CAS that follows decides.  Otherwise
 *     as below.
 *   - Sleeping (Dekker, as channel.c): waiter: v = seq_cst load(xseq);
 *     seq_cst store(sleepers, 1); seq_cst fence; retry; futex_wait(xseq, v).
 *     Releaser: release (CAS/store); seq_cst fence; relaxed load of
 *     sleepers; if set, seq_cst exchange(sleepers, 0) and if that was 1,
 *     seq_cst add(xseq, 1) and FUTEX_WAKE all.  The two fences forbid "the
 *     waiter misses the release AND the releaser misses the flag"; the bump
 *     follows the waiter's load of v in the total order, so futex_wait
 *     returns at once or is woken.  Event uses its state word as the futex
 *     word and the same handshake without the bump: set() changes the word
 *     itself, so futex_wait on the word the waiter saw returns at once.
 *   - Semaphore release unlocks the meta lock with a seq_cst exchange and
 *     then loads the sleepers flag seq_cst (munlock_notify): a waiter
 *     stores the flag seq_cst and fences before it takes the meta lock, so
 *     either its meta-lock CAS reads this unlock (and so sees the new
 *     state), or this load sees its flag.
 *   - Meta lock: acquire CAS / release store; the guarded fields are relaxed
 *     atomics (so that a reader outside the lock, get_value or a barrier
 *     waiter polling its slot, is race-free).  Barrier: the slot status is
 *     stored before the release add on xgen; a waiter loads xgen (acquire)
 *     then its status, so a status change is either seen or the futex_wait
 *     on the old xgen returns at once.  A waiter frees its slot with id = 0
 *     then status = FREE (release), paired with the acquire load of status
 *     by the arrive that claims it.
 *
 * PROGRESS
 *   Lock acquire/release and Event set/clear/is_set are lock-free
 *   (one CAS or exchange; a failed CAS means another process made
 *   progress).  The
 *   Semaphore and Barrier bookkeeping runs under the meta lock, whose
 *   critical sections are a few dozen instructions without system calls
 *   (blocking: a preempted holder delays the others; a dead holder is taken
 *   over after at most ~256 yields plus a liveness check).  Blocking waits
 *   are futex sleeps (FUTEX_WAIT on the shared mapping) of at most 20 ms, so
 *   a dead holder is noticed within about 20 ms plus scheduling delay.
 *   Wake-ups wake all sleepers (no hand-off), so under heavy contention
 *   sleepers race for the lock (no FIFO fairness, like threading.Lock).
 *
 * PROCESS DEATH (kill -9 at any instruction)
 *   - Lock/RLock holder dies: before its acquire CAS nothing happened; after
 *     it, the lock is held by a dead id: the next acquirer (within one
 *     20 ms slice of waiting, or on a try-once with check_dead, which
 *     caches an "alive" verdict for at most 1 ms per thread)
 *     takes it over and gets OWNER_DIED naming the pid.  Dies in release
 *     before the exchange to 0: still the holder, reported as above.
 *     After it: the lock is free and consistent; at worst the sleepers were
 *     not woken, and they wake at the end of their slice (at most 20 ms
 *     late).  A waiter that dies while spinning (polling, then a CAS that
 *     either took the lock -- it is then a dead holder, as above -- or
 *     changed nothing) costs nothing.  A
 *     process that dies right after taking over, before storing xdied, is
 *     itself dead holding the lock: the next acquirer reports that death
 *     (the first death's report died with its reader).  RLock: the count and
 *     thread belong to the holder and are rewritten by the next acquirer.
 *   - A waiter dies (any object): it leaves the sleepers flag set, which
 *     costs the next release/set one needless FUTEX_WAKE, then it is clear.
 *   - Semaphore: a process that dies holding permits has them counted back
 *     by the next waiter whose slice runs out, or by a try-once that finds
 *     none (once the slot's id is dead).  Dies inside the meta lock: the
 *     state is consistent after every store; the lock is taken over.  Dies
 *     holding an untracked permit (more than 64 processes held permits at
 *     once, or NORECLAIM): that permit is lost, as with multiprocessing.
 *   - Event: set/clear are one CAS; a death costs nothing.
 *   - Condition: a waiter that dies leaves its slot WAITING; notify skips
 *     and frees it (it absorbs no notification), and enter reuses slots of
 *     dead processes when none is free.  A waiter that dies after being
 *     notified absorbs that one notification (as a thread killed right
 *     after waking would).  Reacquiring the lock after the wait reports a
 *     dead lock holder like any acquire (OWNER_DIED).  Dies inside the meta
 *     lock: consistent at every store; taken over.
 *   - Barrier: a party that dies while waiting (or running the action as
 *     the last party) breaks the barrier for the others within one slice:
 *     they get EMBER_SYNC_BROKEN.  The last party to arrive checks the
 *     waiting parties first and breaks instead of tripping if one is dead.
 *     A party that dies before arriving is not detected (the others wait
 *     until their timeout).  A death inside the
 *     meta lock breaks the barrier (reset() makes it usable again).  A dead
 *     waiter whose slot was already TRIPPED/BROKEN leaves the slot in use
 *     until an arrive that finds no free slot reclaims it.
 *   Caveats: (1) all processes must share one pid namespace; (2) a pid
 *   reused by a process that started in the same clock tick (modulo 2^32
 *   ticks, about 497 days at 100 Hz) as the dead holder is taken for the
 *   holder: the lock stays held until that process exits (a delay, never a
 *   double grant); (3) a thread of a live process that dies holding a lock
 *   is not detected (as with threading); (4) destroy only when nobody uses
 *   the object: operations do not re-check the header (the Python layer
 *   checks it at attach), so a process still using a destroyed object works
 *   on freed, maybe reused, pool memory: no crash (the pool stays mapped),
 *   but no meaning either.
 */
#include "sync.h"
#include "ember_base.h"      /* clock, futex, /proc stat: one copy for all of ember */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SYNC_MAGIC    0x3130434e59534d45ull   /* "EMSYNC01" */
#define SYNC_DEAD     0x44414544594d5345ull   /* destroyed */
#define SYNC_VERSION  1u
#define LOCK_SPIN     200   /* pause instructions a blocking acquire spins before sleeping */
#define LOCK_BACKOFF_MAX 32 /* most pauses between two polls of a busy lock */
#define EVENT_SPIN    100

_Static_assert(sizeof(_Atomic uint64_t) == 8, "64-bit atomics must be plain words");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "32-bit atomics must be plain words");

/* ---- shared layouts ---------------------------------------------------- */
typedef struct {
    _Atomic uint64_t xmagic;         /* SYNC_MAGIC, stored last at init (release) */
    uint32_t version;
    uint32_t kind;
    int64_t param;                   /* semaphore initial value / barrier parties */
    uint32_t flags;
    uint32_t size;                   /* bytes of the object */
    uint8_t pad_[32];
} sync_hdr_t;
_Static_assert(sizeof(sync_hdr_t) == 64, "header is one cache line");

typedef struct {
    sync_hdr_t h;
    _Atomic uint64_t xstate;         /* 0 free, else holder id */
    _Atomic uint32_t xseq;           /* futex word for sleepers */
    _Atomic uint32_t xsleepers;      /* sleepers flag (see MEMORY ORDER) */
    _Atomic uint32_t xdied;          /* pid of a dead holder until consistent() */
    _Atomic uint32_t xdeaths;        /* deaths taken over (statistics) */
    _Atomic uint64_t xthread;        /* RLock: pthread_self() of the holder */
    _Atomic uint32_t xcount;         /* RLock: recursion count (holder only) */
    uint8_t pad_[28];
} lock_obj_t;
_Static_assert(sizeof(lock_obj_t) == 128, "lock is two lines");

typedef struct {
    _Atomic uint64_t xid;
    _Atomic uint32_t xheld;
    uint32_t pad_;
} sem_slot_t;

typedef struct {
    sync_hdr_t h;
    _Atomic uint64_t xmeta;          /* meta lock: 0 or holder id */
    _Atomic int64_t xbase;           /* value = base - sum(held) */
    _Atomic uint32_t xseq;
    _Atomic uint32_t xsleepers;
    _Atomic uint32_t xhw;            /* slots [0, hw) were ever used */
    uint32_t pad0_;
    _Atomic uint64_t xreclaimed;     /* permits counted back (statistics) */
    uint8_t pad_[24];
    sem_slot_t slots[EMBER_SYNC_SEM_SLOTS];
} sem_obj_t;

typedef struct {
    sync_hdr_t h;
    _Atomic uint32_t xword;          /* (generation << 1) | flag; futex word */
    _Atomic uint32_t xsleepers;
    uint8_t pad_[56];
} event_obj_t;

enum { B_FREE = 0, B_WAITING = 1, B_LAST = 2, B_TRIPPED = 3, B_BROKEN = 4 };

typedef struct {
    _Atomic uint64_t xid;
    _Atomic uint32_t xstatus;
    uint32_t pad_;
} bar_slot_t;

typedef struct {
    sync_hdr_t h;
    _Atomic uint64_t xmeta;
    _Atomic uint32_t xgen;           /* futex word; bumped on trip/break/reset */
    _Atomic uint32_t xcount;         /* arrived in this generation */
    _Atomic uint32_t xbroken;
    uint8_t pad_[44];
    bar_slot_t slots[EMBER_SYNC_BARRIER_SLOTS];
} bar_obj_t;

enum { C_FREE = 0, C_WAITING = 1, C_NOTIFIED = 2 };

typedef struct {
    _Atomic uint64_t xid;
    _Atomic uint32_t xstatus;
    _Atomic uint32_t xticket;        /* arrival order (wraps; compared by difference) */
} cond_slot_t;

typedef struct {
    sync_hdr_t h;
    _Atomic uint64_t xmeta;
    _Atomic uint32_t xseq;           /* futex word; bumped by notify */
    _Atomic uint32_t xticket;        /* next arrival ticket */
    _Atomic uint64_t xbegun;         /* waits begun (enter), ever; under the meta lock */
    uint8_t pad_[40];
    cond_slot_t slots[EMBER_SYNC_COND_SLOTS];
} cond_obj_t;

size_t ember_sync_size(int kind)
{
    switch (kind) {
    case EMBER_SYNC_LOCK:
    case EMBER_SYNC_RLOCK: return sizeof(lock_obj_t);
    case EMBER_SYNC_SEMAPHORE: return sizeof(sem_obj_t);
    case EMBER_SYNC_EVENT: return sizeof(event_obj_t);
    case EMBER_SYNC_BARRIER: return sizeof(bar_obj_t);
    case EMBER_SYNC_CONDITION: return sizeof(cond_obj_t);
    default: return 0;
    }
}

/* ---- process identity and liveness -------------------------------------- */
static _Atomic uint64_t g_self;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void self_after_fork(void)
{
    ember_atomic_store_relaxed(&g_self, 0);
}

/* (sync.c never calls ember_self_pid(): its identity is g_self, so there is
 * no pid cache of ember_base.h's to refresh here.) */
void ember_sync_after_clone(void)
{
    self_after_fork();
}

static void self_once(void)
{
    pthread_atfork(NULL, NULL, self_after_fork);
}

uint64_t ember_sync_self(void)
{
    uint64_t v = ember_atomic_load_relaxed(&g_self);
    if (__builtin_expect(v != 0, 1))
        return v;
    pthread_once(&g_once, self_once);
    uint32_t start = 0;
    int zombie = 0;
    if (ember_proc_stat(0, &start, &zombie) != 0)
        start = 0;
    v = ((uint64_t)start << 32) | (uint32_t)getpid();
    /* relaxed: a per-process cache; every thread computes the same value. */
    ember_atomic_store_relaxed(&g_self, v);
    return v;
}

int ember_sync_id_dead(uint64_t id)
{
    if (id == 0)
        return 0;
    uint64_t me = ember_sync_self();
    if (id == me)
        return 0;
    uint32_t pid = (uint32_t)id, gen = (uint32_t)(id >> 32);
    if (pid == 0 || pid > (uint32_t)INT_MAX)
        return 1;
    if (pid == (uint32_t)me)
        return 1;                    /* a previous process with our pid */
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 1;
    uint32_t start = 0;
    int zombie = 0;
    int r = ember_proc_stat(pid, &start, &zombie);
    if (r == -1)
        return 1;
    if (r != 0)
        return 0;                    /* cannot tell: assume alive */
    if (zombie)
        return 1;
    return gen != 0 && start != gen;
}

/* ---- time and futex: common_c/ember_base.h ------------------------------ */
static inline int64_t now_ns(void) { return ember_now_ns(); }

/* Liveness verdicts cost a kill() and a /proc read (~10 us).  A caller
 * polling a busy object with try-once calls would pay that every time, so
 * each thread remembers its last "alive" verdict for TRY_CACHE_NS: a death
 * is still noticed within that long.  "Dead" is never cached (it leads to a
 * takeover at once).  Blocking waits check every EMBER_SYNC_CHECK_NS, far
 * apart, so the cache never hides a death from them for long. */
#define TRY_CACHE_NS 1000000ll
static _Thread_local uint64_t tl_alive_id;
static _Thread_local int64_t tl_alive_ns;

static int id_dead_cached(uint64_t id)
{
    int64_t t = now_ns();
    if (id == tl_alive_id && t - tl_alive_ns < TRY_CACHE_NS)
        return 0;
    if (ember_sync_id_dead(id))
        return 1;
    tl_alive_id = id;
    tl_alive_ns = t;
    return 0;
}

static _Thread_local const void *tl_reclaim_obj;
static _Thread_local int64_t tl_reclaim_ns;

/* 1 if this thread scanned `obj` for dead holders less than TRY_CACHE_NS ago. */
static int recently_scanned(const void *obj)
{
    int64_t t = now_ns();
    if (obj == tl_reclaim_obj && t - tl_reclaim_ns < TRY_CACHE_NS)
        return 1;
    tl_reclaim_obj = obj;
    tl_reclaim_ns = t;
    return 0;
}

static inline int64_t deadline_of(int64_t timeout_ns)
{
    return timeout_ns < 0 ? -1 : now_ns() + timeout_ns;
}

/* Next sleep: at most EMBER_SYNC_CHECK_NS, 0 when the deadline passed. */
static inline int64_t slice_of(int64_t deadline)
{
    if (deadline < 0)
        return EMBER_SYNC_CHECK_NS;
    int64_t left = deadline - now_ns();
    if (left <= 0)
        return 0;
    return left < EMBER_SYNC_CHECK_NS ? left : EMBER_SYNC_CHECK_NS;
}

/* 0 (woken or value changed), ETIMEDOUT, EINTR. */
static inline int futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t ns)
{
    return ember_futex_wait(addr, val, ns);
}

static inline void futex_wake_all(_Atomic uint32_t *addr) { ember_futex_wake_all(addr); }

/* Releaser side of the sleepers handshake (see MEMORY ORDER). */
static inline void notify(_Atomic uint32_t *word, _Atomic uint32_t *sleepers)
{
    /* seq_cst fence: orders the release just done before the load of the
     * flag; pairs with the fence after the flag store in prepare_sleep(). */
    ember_atomic_fence_seq_cst();
    if (__builtin_expect(ember_atomic_load_relaxed(sleepers) != 0, 0)
        && ember_atomic_exchange_seq_cst(sleepers, 0) != 0) {
        /* seq_cst: the bump follows every sleeper's seq_cst load of the word. */
        ember_atomic_add_seq_cst(word, 1);
        futex_wake_all(word);
    }
}

/* Waiter side: returns the futex value to sleep on; the caller retries its
 * operation before sleeping. */
static inline uint32_t prepare_sleep(_Atomic uint32_t *word, _Atomic uint32_t *sleepers)
{
    /* seq_cst load: precedes the flag store; the notifier's bump follows its
     * exchange of the flag, so futex_wait(word, v) cannot miss it. */
    uint32_t v = ember_atomic_load_seq_cst(word);
    ember_atomic_store_seq_cst(sleepers, 1);
    /* pairs with the fence in notify(). */
    ember_atomic_fence_seq_cst();
    return v;
}

/* ---- meta lock (Semaphore, Barrier) -------------------------------------
 * Returns 1 if it was taken over from a dead holder, else 0. */
static int mlock(_Atomic uint64_t *w, uint64_t me)
{
    unsigned n = 0;
    for (;;) {
        uint64_t cur = 0;
        /* acquire (CAS): pairs with the release store in munlock() of the
         * previous holder: its guarded stores are visible. */
        if (ember_atomic_cas_acq_rel(w, &cur, me))
            return 0;
        n++;
        if (n < 64) {
            ember_cpu_relax();
            continue;
        }
        sched_yield();
        if ((n & 255) == 0 && cur != me && ember_sync_id_dead(cur)
            && ember_atomic_cas_acq_rel(w, &cur, me))
            return 1;
    }
}

static inline void munlock(_Atomic uint64_t *w)
{
    /* release: publishes the guarded stores; pairs with mlock()'s CAS. */
    ember_atomic_store_release(w, 0);
}

/* Unlock and notify sleepers without a fence: the seq_cst exchange (which
 * also releases the guarded stores, pairing with mlock()'s CAS) precedes
 * the seq_cst load of the flag in the total order; a waiter stores the flag
 * (seq_cst) and fences before it takes the meta lock, so either it sees
 * this unlock and the state under it, or this load sees its flag. */
static inline void munlock_notify(_Atomic uint64_t *w, _Atomic uint32_t *word,
                                  _Atomic uint32_t *sleepers)
{
    ember_atomic_exchange_seq_cst(w, 0);
    if (__builtin_expect(ember_atomic_load_seq_cst(sleepers) != 0, 0)
        && ember_atomic_exchange_seq_cst(sleepers, 0) != 0) {
        ember_atomic_add_seq_cst(word, 1);
        futex_wake_all(word);
    }
}

/* ---- header ------------------------------------------------------------- */
ember_rc_t ember_sync_init(void *mem, size_t size, int kind, int64_t param, uint32_t flags)
{
    size_t need = ember_sync_size(kind);
    if (!mem || need == 0 || size < need || ((uintptr_t)mem & 7u))
        return EMBER_ERR_INVALID_ARG;
    if (kind == EMBER_SYNC_SEMAPHORE && (param < 0 || param > EMBER_SYNC_SEM_MAX))
        return EMBER_ERR_INVALID_ARG;
    if (kind == EMBER_SYNC_BARRIER && (param < 1 || param > (int64_t)EMBER_SYNC_BARRIER_MAX))
        return EMBER_ERR_INVALID_ARG;
    memset(mem, 0, need);
    sync_hdr_t *h = mem;
    h->version = SYNC_VERSION;
    h->kind = (uint32_t)kind;
    h->param = param;
    h->flags = flags;
    h->size = (uint32_t)need;
    if (kind == EMBER_SYNC_SEMAPHORE)
        ember_atomic_store_relaxed(&((sem_obj_t *)mem)->xbase, param);
    /* release: the object is complete before anyone can see the magic;
     * pairs with the acquire load in ember_sync_check(). */
    ember_atomic_store_release(&h->xmagic, SYNC_MAGIC);
    return EMBER_OK;
}

ember_rc_t ember_sync_check(const void *mem, size_t size, int kind)
{
    if (!mem || size < sizeof(sync_hdr_t))
        return EMBER_ERR_INVALID_ARG;
    const sync_hdr_t *h = mem;
    /* acquire: pairs with the release store of the magic at init. */
    uint64_t m = ember_atomic_load_acquire((_Atomic uint64_t *)&h->xmagic);
    if (m == SYNC_DEAD)
        return EMBER_ERR_DESTROYED;
    if (m != SYNC_MAGIC)
        return EMBER_ERR_BAD_MAGIC;
    if (h->version != SYNC_VERSION)
        return EMBER_ERR_VERSION;
    if ((int)h->kind != kind || h->size != ember_sync_size(kind) || size < h->size)
        return EMBER_ERR_BAD_MAGIC;
    return EMBER_OK;
}

ember_rc_t ember_sync_params(const void *mem, int64_t *param, uint32_t *flags)
{
    if (!mem)
        return EMBER_ERR_INVALID_ARG;
    const sync_hdr_t *h = mem;
    if (param)
        *param = h->param;
    if (flags)
        *flags = h->flags;
    return EMBER_OK;
}

ember_rc_t ember_sync_destroy(void *mem)
{
    if (!mem)
        return EMBER_ERR_INVALID_ARG;
    /* release: orders nothing in particular; later checks see DEAD. */
    ember_atomic_store_release(&((sync_hdr_t *)mem)->xmagic, SYNC_DEAD);
    return EMBER_OK;
}

/* ---- Lock / RLock ------------------------------------------------------- */
static inline uint64_t thread_self(void)
{
    return (uint64_t)pthread_self();
}

/* The caller now holds l: set up the RLock fields and report the mark. */
static inline ember_rc_t lock_took(lock_obj_t *l, uint32_t *died_pid)
{
    if (l->h.kind == EMBER_SYNC_RLOCK) {
        ember_atomic_store_relaxed(&l->xthread, thread_self());
        ember_atomic_store_relaxed(&l->xcount, 1);
    }
    /* relaxed: written by a holder; ordered by the xstate CAS pair. */
    uint32_t d = ember_atomic_load_relaxed(&l->xdied);
    if (__builtin_expect(d != 0, 0)) {
        if (died_pid)
            *died_pid = d;
        return (ember_rc_t)EMBER_SYNC_OWNER_DIED;
    }
    return EMBER_OK;
}

static ember_rc_t lock_try(lock_obj_t *l, uint64_t me, int check_dead, uint32_t *died_pid)
{
    uint64_t s = 0;
    /* acquire (CAS): pairs with the releasing CAS in ember_lock_release(). */
    if (ember_atomic_cas_acq_rel(&l->xstate, &s, me))
        return lock_took(l, died_pid);
    if (check_dead && s != me && id_dead_cached(s)) {
        /* acq_rel CAS dead -> me: unique per dead id (it never acquires
         * again), so exactly one process takes over from this death. */
        if (ember_atomic_cas_acq_rel(&l->xstate, &s, me)) {
            ember_atomic_store_relaxed(&l->xdied, (uint32_t)s);
            ember_atomic_add_relaxed(&l->xdeaths, 1);
            return lock_took(l, died_pid);
        }
    }
    return EMBER_ERR_TIMEOUT;
}

/* Spin on a busy lock for about `budget` pause instructions, polling
 * xstate with exponential backoff (1, 2, 4 .. LOCK_BACKOFF_MAX pauses
 * between polls), and try whenever it reads free.  A poll pulls the lock's
 * line from the holder's cache and makes the holder's next CAS a miss:
 * backing off lets a holder that re-acquires at once (a Python loop) run
 * several acquire/release pairs on its own line before the waiter looks
 * again (barging, as glibc's adaptive mutex and parking_lot do).
 * EMBER_ERR_TIMEOUT when the budget ran out. */
static ember_rc_t lock_spin(lock_obj_t *l, uint64_t me, uint32_t budget, uint32_t *died_pid)
{
    uint32_t step = 1, spent = 0;
    while (spent < budget) {
        for (uint32_t k = 0; k < step; k++)
            ember_cpu_relax();
        spent += step;
        if (step < LOCK_BACKOFF_MAX)
            step <<= 1;
        if (ember_atomic_load_relaxed(&l->xstate) == 0) {
            ember_rc_t rc = lock_try(l, me, 0, died_pid);
            if (rc != EMBER_ERR_TIMEOUT)
                return rc;
        }
    }
    return EMBER_ERR_TIMEOUT;
}

ember_rc_t ember_lock_acquire(void *mem, int64_t timeout_ns, int check_dead, uint32_t *died_pid)
{
    lock_obj_t *l = mem;
    if (!l)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self();
    if (l->h.kind == EMBER_SYNC_RLOCK && ember_atomic_load_relaxed(&l->xstate) == me
        && ember_atomic_load_relaxed(&l->xthread) == thread_self()) {
        /* relaxed: only the holding thread reads or writes the count. */
        uint32_t c = ember_atomic_load_relaxed(&l->xcount);
        if (c == UINT32_MAX)
            return EMBER_ERR_INVALID_ARG;
        ember_atomic_store_relaxed(&l->xcount, c + 1);
        return EMBER_OK;
    }
    ember_rc_t rc = lock_try(l, me, 0, died_pid);
    if (rc != EMBER_ERR_TIMEOUT)
        return rc;
    if (timeout_ns == 0)
        return check_dead ? lock_try(l, me, 1, died_pid) : rc;
    int64_t deadline = deadline_of(timeout_ns);
    rc = lock_spin(l, me, LOCK_SPIN, died_pid);
    if (rc != EMBER_ERR_TIMEOUT)
        return rc;
    for (;;) {
        uint32_t v = prepare_sleep(&l->xseq, &l->xsleepers);
        /* seq_cst load after the seq_cst flag store: with the releaser's
         * seq_cst exchange + flag load this is the store-buffering pattern with
         * every access seq_cst, so one of the two sees the other. */
        if (ember_atomic_load_seq_cst(&l->xstate) == 0) {
            rc = lock_try(l, me, 0, died_pid);
            if (rc != EMBER_ERR_TIMEOUT)
                return rc;
        }
        int64_t sl = slice_of(deadline);
        if (sl == 0)
            return lock_try(l, me, 1, died_pid);
        int e = futex_wait(&l->xseq, v, sl);
        if (e == ETIMEDOUT) {
            rc = lock_try(l, me, 1, died_pid);
            if (rc != EMBER_ERR_TIMEOUT)
                return rc;
        } else if (e == EINTR) {
            return EMBER_ERR_INTERRUPTED;
        }
    }
}

ember_rc_t ember_lock_spin_acquire(void *mem, uint32_t spins, uint32_t *died_pid)
{
    lock_obj_t *l = mem;
    if (!l)
        return EMBER_ERR_INVALID_ARG;
    return lock_spin(l, ember_sync_self(), spins, died_pid);
}

ember_rc_t ember_lock_release(void *mem)
{
    lock_obj_t *l = mem;
    if (!l)
        return EMBER_ERR_INVALID_ARG;
    if (l->h.kind == EMBER_SYNC_RLOCK) {
        uint64_t me = ember_sync_self();
        if (ember_atomic_load_relaxed(&l->xstate) != me
            || ember_atomic_load_relaxed(&l->xthread) != thread_self())
            return (ember_rc_t)EMBER_SYNC_NOT_OWNER;
        uint32_t c = ember_atomic_load_relaxed(&l->xcount);
        if (c > 1) {
            ember_atomic_store_relaxed(&l->xcount, c - 1);
            return EMBER_OK;
        }
        ember_atomic_store_relaxed(&l->xcount, 0);
        ember_atomic_store_relaxed(&l->xthread, 0);
    }
    /* seq_cst exchange -> 0: its release half publishes the critical
     * section (pairs with the acquire CAS in lock_try() of the next
     * holder); being seq_cst, it is ordered before the seq_cst load of the
     * sleepers flag below without a fence (pairs with the seq_cst flag
     * store + load of xstate in ember_lock_acquire()).  One read-modify-
     * write and no load before it (a load first would fetch the line
     * shared and the write would need it again: two transfers under
     * contention).  It frees whatever holder it finds, as the load + CAS
     * loop it replaces did (any process may release a Lock); finding 0 it
     * wrote 0 over 0, which changes nothing: EMBER_SYNC_OVER.  Two racing
     * releases: one finds the holder, the other 0. */
    if (ember_atomic_exchange_seq_cst(&l->xstate, 0) == 0)
        return (ember_rc_t)EMBER_SYNC_OVER;
    if (__builtin_expect(ember_atomic_load_seq_cst(&l->xsleepers) != 0, 0)
        && ember_atomic_exchange_seq_cst(&l->xsleepers, 0) != 0) {
        /* seq_cst: the bump follows every sleeper's seq_cst load of xseq. */
        ember_atomic_add_seq_cst(&l->xseq, 1);
        futex_wake_all(&l->xseq);
    }
    return EMBER_OK;
}

ember_rc_t ember_lock_consistent(void *mem)
{
    lock_obj_t *l = mem;
    if (!l)
        return EMBER_ERR_INVALID_ARG;
    if (ember_atomic_load_relaxed(&l->xstate) != ember_sync_self()
        || (l->h.kind == EMBER_SYNC_RLOCK
            && ember_atomic_load_relaxed(&l->xthread) != thread_self()))
        return (ember_rc_t)EMBER_SYNC_NOT_OWNER;
    /* relaxed: published to the next holder by our release. */
    ember_atomic_store_relaxed(&l->xdied, 0);
    return EMBER_OK;
}

int ember_lock_locked(const void *mem)
{
    const lock_obj_t *l = mem;
    return ember_atomic_load_relaxed((_Atomic uint64_t *)&l->xstate) != 0;
}

int ember_rlock_is_mine(const void *mem)
{
    lock_obj_t *l = (lock_obj_t *)mem;
    return ember_atomic_load_relaxed(&l->xstate) == ember_sync_self()
        && ember_atomic_load_relaxed(&l->xthread) == thread_self();
}

void ember_lock_state(const void *mem, uint64_t *holder, uint32_t *count, uint32_t *died_pid,
                      uint32_t *deaths)
{
    lock_obj_t *l = (lock_obj_t *)mem;
    if (holder)
        *holder = ember_atomic_load_relaxed(&l->xstate);
    if (count)
        *count = ember_atomic_load_relaxed(&l->xcount);
    if (died_pid)
        *died_pid = ember_atomic_load_relaxed(&l->xdied);
    if (deaths)
        *deaths = ember_atomic_load_relaxed(&l->xdeaths);
}

/* ---- Semaphore ---------------------------------------------------------- */
static int64_t sem_value_locked(sem_obj_t *s)
{
    int64_t v = ember_atomic_load_relaxed(&s->xbase);
    uint32_t hw = ember_atomic_load_relaxed(&s->xhw);
    for (uint32_t i = 0; i < hw; i++)
        v -= ember_atomic_load_relaxed(&s->slots[i].xheld);
    return v;
}

static ember_rc_t sem_try_locked(sem_obj_t *s, uint64_t me)
{
    if (sem_value_locked(s) <= 0)
        return EMBER_ERR_TIMEOUT;
    if (!(s->h.flags & EMBER_SYNC_F_NORECLAIM)) {
        uint32_t hw = ember_atomic_load_relaxed(&s->xhw);
        int free_i = -1;
        for (uint32_t i = 0; i < hw; i++) {
            uint64_t id = ember_atomic_load_relaxed(&s->slots[i].xid);
            if (id == me) {
                uint32_t h = ember_atomic_load_relaxed(&s->slots[i].xheld);
                ember_atomic_store_relaxed(&s->slots[i].xheld, h + 1);
                return EMBER_OK;
            }
            if (id == 0 && free_i < 0)
                free_i = (int)i;
        }
        if (free_i < 0 && hw < EMBER_SYNC_SEM_SLOTS) {
            free_i = (int)hw;
            ember_atomic_store_relaxed(&s->xhw, hw + 1);
        }
        if (free_i >= 0) {
            /* id first, then held: a death in between leaves a slot that
             * holds nothing, which the reclaim frees. */
            ember_atomic_store_relaxed(&s->slots[free_i].xid, me);
            ember_atomic_store_relaxed(&s->slots[free_i].xheld, 1);
            return EMBER_OK;
        }
    }
    ember_atomic_store_relaxed(&s->xbase, ember_atomic_load_relaxed(&s->xbase) - 1);
    return EMBER_OK;
}

ember_rc_t ember_sem_reclaim(void *mem, uint64_t *reclaimed)
{
    sem_obj_t *s = mem;
    if (!s)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self(), total = 0;
    uint64_t dead[EMBER_SYNC_SEM_SLOTS];
    uint32_t hw = ember_atomic_load_relaxed(&s->xhw), nd = 0;
    /* Liveness checks (system calls) outside the meta lock. */
    for (uint32_t i = 0; i < hw; i++) {
        uint64_t id = ember_atomic_load_relaxed(&s->slots[i].xid);
        dead[i] = (id != 0 && id != me && ember_sync_id_dead(id)) ? id : 0;
        nd += dead[i] != 0;
    }
    if (nd) {
        mlock(&s->xmeta, me);
        for (uint32_t i = 0; i < hw; i++) {
            if (dead[i] == 0 || ember_atomic_load_relaxed(&s->slots[i].xid) != dead[i])
                continue;
            total += ember_atomic_load_relaxed(&s->slots[i].xheld);
            /* held first (one store counts the permits back), then id. */
            ember_atomic_store_relaxed(&s->slots[i].xheld, 0);
            ember_atomic_store_relaxed(&s->slots[i].xid, 0);
        }
        if (total)
            ember_atomic_add_relaxed(&s->xreclaimed, total);
        munlock(&s->xmeta);
        if (total)
            notify(&s->xseq, &s->xsleepers);
    }
    if (reclaimed)
        *reclaimed = total;
    return EMBER_OK;
}

static ember_rc_t sem_try(sem_obj_t *s, uint64_t me)
{
    mlock(&s->xmeta, me);
    ember_rc_t rc = sem_try_locked(s, me);
    munlock(&s->xmeta);
    return rc;
}

ember_rc_t ember_sem_acquire(void *mem, int64_t timeout_ns)
{
    sem_obj_t *s = mem;
    if (!s)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self(), got = 0;
    ember_rc_t rc = sem_try(s, me);
    if (rc != EMBER_ERR_TIMEOUT)
        return rc;
    if (timeout_ns == 0) {
        if (recently_scanned(s))
            return rc;
        ember_sem_reclaim(s, &got);
        return got ? sem_try(s, me) : rc;
    }
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        uint32_t v = prepare_sleep(&s->xseq, &s->xsleepers);
        rc = sem_try(s, me);
        if (rc != EMBER_ERR_TIMEOUT)
            return rc;
        int64_t sl = slice_of(deadline);
        if (sl == 0) {
            ember_sem_reclaim(s, &got);
            return got ? sem_try(s, me) : rc;
        }
        int e = futex_wait(&s->xseq, v, sl);
        if (e == ETIMEDOUT)
            ember_sem_reclaim(s, &got);
        else if (e == EINTR)
            return EMBER_ERR_INTERRUPTED;
    }
}

ember_rc_t ember_sem_release(void *mem, uint32_t n)
{
    sem_obj_t *s = mem;
    if (!s || n < 1)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self();
    mlock(&s->xmeta, me);
    int64_t v = sem_value_locked(s);
    if (((s->h.flags & EMBER_SYNC_F_BOUNDED) && v + (int64_t)n > s->h.param)
        || v + (int64_t)n > EMBER_SYNC_SEM_MAX) {
        munlock(&s->xmeta);
        return (ember_rc_t)EMBER_SYNC_OVER;
    }
    uint32_t hw = ember_atomic_load_relaxed(&s->xhw);
    for (uint32_t k = 0; k < n; k++) {
        int at = -1;
        for (uint32_t i = 0; i < hw; i++) {
            if (ember_atomic_load_relaxed(&s->slots[i].xheld) == 0)
                continue;
            if (ember_atomic_load_relaxed(&s->slots[i].xid) == me) {
                at = (int)i;
                break;
            }
            if (at < 0)
                at = (int)i;
        }
        if (at < 0) {
            ember_atomic_store_relaxed(&s->xbase, ember_atomic_load_relaxed(&s->xbase) + 1);
            continue;
        }
        uint32_t h = ember_atomic_load_relaxed(&s->slots[at].xheld) - 1;
        ember_atomic_store_relaxed(&s->slots[at].xheld, h);
        if (h == 0)
            ember_atomic_store_relaxed(&s->slots[at].xid, 0);
    }
    munlock_notify(&s->xmeta, &s->xseq, &s->xsleepers);
    return EMBER_OK;
}

int64_t ember_sem_value(void *mem)
{
    sem_obj_t *s = mem;
    mlock(&s->xmeta, ember_sync_self());
    int64_t v = sem_value_locked(s);
    munlock(&s->xmeta);
    return v < 0 ? 0 : v;
}

/* ---- Event -------------------------------------------------------------- */
ember_rc_t ember_event_set(void *mem)
{
    event_obj_t *e = mem;
    if (!e)
        return EMBER_ERR_INVALID_ARG;
    uint32_t w = ember_atomic_load_relaxed(&e->xword);
    do {
        if (w & 1u)
            return EMBER_OK;
        /* acq_rel CAS: the setter's earlier writes are visible to a waiter
         * that sees the flag (acquire load in ember_event_wait). */
    } while (!ember_atomic_cas_acq_rel(&e->xword, &w, ((w + 2u) & ~1u) | 1u));
    /* seq_cst fence: orders the CAS before the load of the flag; pairs with
     * the fence in prepare_sleep().  No bump: the CAS changed the futex word
     * itself, so a waiter's futex_wait on the old word returns at once. */
    ember_atomic_fence_seq_cst();
    if (__builtin_expect(ember_atomic_load_relaxed(&e->xsleepers) != 0, 0)
        && ember_atomic_exchange_seq_cst(&e->xsleepers, 0) != 0)
        futex_wake_all(&e->xword);
    return EMBER_OK;
}

ember_rc_t ember_event_clear(void *mem)
{
    event_obj_t *e = mem;
    if (!e)
        return EMBER_ERR_INVALID_ARG;
    uint32_t w = ember_atomic_load_relaxed(&e->xword);
    while ((w & 1u) && !ember_atomic_cas_acq_rel(&e->xword, &w, w & ~1u))
        ;
    return EMBER_OK;
}

int ember_event_is_set(const void *mem)
{
    event_obj_t *e = (event_obj_t *)mem;
    /* acquire: pairs with the CAS in ember_event_set(). */
    return (ember_atomic_load_acquire(&e->xword) & 1u) != 0;
}

uint32_t ember_event_token(const void *mem)
{
    event_obj_t *e = (event_obj_t *)mem;
    return ember_atomic_load_acquire(&e->xword);
}

static inline int event_done(uint32_t w, uint32_t token)
{
    return (w & 1u) || (w >> 1) != (token >> 1);
}

ember_rc_t ember_event_wait(void *mem, uint32_t token, int64_t timeout_ns)
{
    event_obj_t *e = mem;
    if (!e)
        return EMBER_ERR_INVALID_ARG;
    /* acquire: pairs with the CAS in ember_event_set(). */
    if (event_done(ember_atomic_load_acquire(&e->xword), token))
        return EMBER_OK;
    if (timeout_ns == 0)
        return EMBER_ERR_TIMEOUT;
    int64_t deadline = deadline_of(timeout_ns);
    for (int i = 0; i < EVENT_SPIN; i++) {
        ember_cpu_relax();
        if (event_done(ember_atomic_load_acquire(&e->xword), token))
            return EMBER_OK;
    }
    for (;;) {
        uint32_t w = prepare_sleep(&e->xword, &e->xsleepers);
        if (event_done(w, token))
            return EMBER_OK;
        int64_t sl = slice_of(deadline);
        if (sl == 0)
            return EMBER_ERR_TIMEOUT;
        int r = futex_wait(&e->xword, w, sl);
        if (r == EINTR)
            return EMBER_ERR_INTERRUPTED;
    }
}

/* ---- Barrier ------------------------------------------------------------ */
static void bar_wake(bar_obj_t *b)
{
    futex_wake_all(&b->xgen);
}

/* Under the meta lock.  reset: 0 = break (broken stays set), 1 = reset. */
static void bar_break_locked(bar_obj_t *b, int reset)
{
    ember_atomic_store_relaxed(&b->xbroken, reset ? 0u : 1u);
    for (uint32_t i = 0; i < EMBER_SYNC_BARRIER_SLOTS; i++) {
        uint32_t st = ember_atomic_load_relaxed(&b->slots[i].xstatus);
        if (st == B_WAITING || st == B_LAST)
            ember_atomic_store_relaxed(&b->slots[i].xstatus, B_BROKEN);
    }
    ember_atomic_store_relaxed(&b->xcount, 0);
    /* release: the status stores above are visible to a waiter that loads
     * the new generation (acquire) in ember_barrier_wait(). */
    atomic_fetch_add_explicit(&b->xgen, 1, memory_order_release);
}

static inline int bar_lock(bar_obj_t *b, uint64_t me)
{
    if (mlock(&b->xmeta, me)) {
        bar_break_locked(b, 0);      /* half-updated state: break it */
        return 1;
    }
    return 0;
}

static inline void bar_free_slot(bar_obj_t *b, uint32_t slot)
{
    ember_atomic_store_relaxed(&b->slots[slot].xid, 0);
    /* release: pairs with the acquire load of the status in arrive. */
    ember_atomic_store_release(&b->slots[slot].xstatus, B_FREE);
}

/* 1 if a WAITING/LAST slot belongs to a dead process (no lock held). */
static int bar_dead_party(bar_obj_t *b, uint64_t me)
{
    for (uint32_t i = 0; i < EMBER_SYNC_BARRIER_SLOTS; i++) {
        uint32_t st = ember_atomic_load_acquire(&b->slots[i].xstatus);
        if (st != B_WAITING && st != B_LAST)
            continue;
        uint64_t id = ember_atomic_load_relaxed(&b->slots[i].xid);
        if (id != 0 && id != me && ember_sync_id_dead(id))
            return 1;
    }
    return 0;
}

ember_rc_t ember_barrier_arrive(void *mem, int64_t timeout_ns, uint32_t *index, uint32_t *slot)
{
    bar_obj_t *b = mem;
    if (!b || !index || !slot)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self();
    uint32_t parties = (uint32_t)b->h.param;
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        /* acquire: pairs with the release add on xgen. */
        uint32_t g = ember_atomic_load_acquire(&b->xgen);
        int took = bar_lock(b, me);
        if (ember_atomic_load_relaxed(&b->xbroken)) {
            munlock(&b->xmeta);
            if (took)
                bar_wake(b);
            return (ember_rc_t)EMBER_SYNC_BROKEN;
        }
        uint32_t count = ember_atomic_load_relaxed(&b->xcount);
        if (count < parties) {
            int at = -1;
            for (int pass = 0; pass < 2 && at < 0; pass++) {
                for (uint32_t i = 0; i < EMBER_SYNC_BARRIER_SLOTS; i++) {
                    uint32_t st = ember_atomic_load_acquire(&b->slots[i].xstatus);
                    if (st == B_FREE) {
                        at = (int)i;
                        break;
                    }
                    /* second pass: slots left behind by dead processes */
                    if (pass == 1 && (st == B_TRIPPED || st == B_BROKEN)
                        && ember_sync_id_dead(ember_atomic_load_relaxed(&b->slots[i].xid))) {
                        bar_free_slot(b, i);
                        at = (int)i;
                        break;
                    }
                }
            }
            if (at < 0) {
                munlock(&b->xmeta);
                return EMBER_ERR_FULL;
            }
            ember_atomic_store_relaxed(&b->slots[at].xid, me);
            *index = count;
            *slot = (uint32_t)at;
            count++;
            ember_atomic_store_relaxed(&b->xcount, count);
            ember_atomic_store_relaxed(&b->slots[at].xstatus,
                                       count == parties ? (uint32_t)B_LAST : (uint32_t)B_WAITING);
            munlock(&b->xmeta);
            if (took)
                bar_wake(b);
            if (count < parties)
                return EMBER_OK;
            /* The last party: a party that arrived and died since would be
             * missing from the next step, so break instead of tripping. */
            if (bar_dead_party(b, me)) {
                bar_lock(b, me);
                if (ember_atomic_load_relaxed(&b->slots[at].xstatus) == B_LAST)
                    bar_break_locked(b, 0);
                bar_free_slot(b, (uint32_t)at);
                munlock(&b->xmeta);
                bar_wake(b);
                return (ember_rc_t)EMBER_SYNC_BROKEN;
            }
            return (ember_rc_t)EMBER_SYNC_LAST;
        }
        /* The last party is running the action: wait for the trip. */
        munlock(&b->xmeta);
        if (took)
            bar_wake(b);
        int64_t sl = slice_of(deadline);
        if (sl == 0)
            return EMBER_ERR_TIMEOUT;
        int e = futex_wait(&b->xgen, g, sl);
        if (e == ETIMEDOUT && bar_dead_party(b, me)) {
            bar_lock(b, me);
            bar_break_locked(b, 0);
            munlock(&b->xmeta);
            bar_wake(b);
        } else if (e == EINTR) {
            return EMBER_ERR_INTERRUPTED;
        }
    }
}

ember_rc_t ember_barrier_wait(void *mem, uint32_t slot, int64_t timeout_ns)
{
    bar_obj_t *b = mem;
    if (!b || slot >= EMBER_SYNC_BARRIER_SLOTS)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self();
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        /* acquire: pairs with the release add on xgen after the status
         * stores (trip / break). */
        uint32_t g = ember_atomic_load_acquire(&b->xgen);
        uint32_t st = ember_atomic_load_acquire(&b->slots[slot].xstatus);
        if (st == B_TRIPPED) {
            bar_free_slot(b, slot);
            return EMBER_OK;
        }
        if (st == B_BROKEN) {
            bar_free_slot(b, slot);
            return (ember_rc_t)EMBER_SYNC_BROKEN;
        }
        if (st != B_WAITING)
            return EMBER_ERR_INVALID_ARG;
        int64_t sl = slice_of(deadline);
        if (sl == 0)
            return EMBER_ERR_TIMEOUT;
        int e = futex_wait(&b->xgen, g, sl);
        if (e == ETIMEDOUT && bar_dead_party(b, me)) {
            int took = bar_lock(b, me);
            if (!took)
                bar_break_locked(b, 0);
            munlock(&b->xmeta);
            bar_wake(b);
        } else if (e == EINTR) {
            return EMBER_ERR_INTERRUPTED;
        }
    }
}

ember_rc_t ember_barrier_trip(void *mem, uint32_t slot, int ok)
{
    bar_obj_t *b = mem;
    if (!b || slot >= EMBER_SYNC_BARRIER_SLOTS)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self();
    bar_lock(b, me);
    ember_rc_t rc = EMBER_OK;
    uint32_t st = ember_atomic_load_relaxed(&b->slots[slot].xstatus);
    if (st != B_LAST || ember_atomic_load_relaxed(&b->xbroken)) {
        rc = (ember_rc_t)EMBER_SYNC_BROKEN;
    } else if (!ok) {
        bar_break_locked(b, 0);
        rc = (ember_rc_t)EMBER_SYNC_BROKEN;
    } else {
        for (uint32_t i = 0; i < EMBER_SYNC_BARRIER_SLOTS; i++) {
            if (ember_atomic_load_relaxed(&b->slots[i].xstatus) == B_WAITING)
                ember_atomic_store_relaxed(&b->slots[i].xstatus, B_TRIPPED);
        }
        ember_atomic_store_relaxed(&b->xcount, 0);
        /* release: pairs with the acquire load of xgen in the waiters. */
        atomic_fetch_add_explicit(&b->xgen, 1, memory_order_release);
    }
    bar_free_slot(b, slot);
    munlock(&b->xmeta);
    bar_wake(b);
    return rc;
}

ember_rc_t ember_barrier_abandon(void *mem, uint32_t slot)
{
    bar_obj_t *b = mem;
    if (!b || slot >= EMBER_SYNC_BARRIER_SLOTS)
        return EMBER_ERR_INVALID_ARG;
    bar_lock(b, ember_sync_self());
    uint32_t st = ember_atomic_load_relaxed(&b->slots[slot].xstatus);
    ember_rc_t rc = (ember_rc_t)EMBER_SYNC_BROKEN;
    if (st == B_TRIPPED)
        rc = EMBER_OK;
    else if (st == B_WAITING || st == B_LAST)
        bar_break_locked(b, 0);
    if (st != B_FREE)
        bar_free_slot(b, slot);
    munlock(&b->xmeta);
    bar_wake(b);
    return rc;
}

ember_rc_t ember_barrier_abort(void *mem)
{
    bar_obj_t *b = mem;
    if (!b)
        return EMBER_ERR_INVALID_ARG;
    if (!bar_lock(b, ember_sync_self()))
        bar_break_locked(b, 0);
    munlock(&b->xmeta);
    bar_wake(b);
    return EMBER_OK;
}

ember_rc_t ember_barrier_reset(void *mem)
{
    bar_obj_t *b = mem;
    if (!b)
        return EMBER_ERR_INVALID_ARG;
    bar_lock(b, ember_sync_self());
    bar_break_locked(b, 1);
    munlock(&b->xmeta);
    bar_wake(b);
    return EMBER_OK;
}

void ember_barrier_state(void *mem, uint32_t *parties, uint32_t *n_waiting, int *broken)
{
    bar_obj_t *b = mem;
    int br = ember_atomic_load_relaxed(&b->xbroken) != 0;
    uint32_t c = ember_atomic_load_relaxed(&b->xcount);
    uint32_t p = (uint32_t)b->h.param;
    if (parties)
        *parties = p;
    if (broken)
        *broken = br;
    /* The last party running the action is not "waiting" (threading). */
    if (n_waiting)
        *n_waiting = br ? 0 : (c >= p ? p - 1 : c);
}

/* ---- Condition ---------------------------------------------------------- */
static inline void cond_free_slot(cond_obj_t *c, uint32_t slot)
{
    ember_atomic_store_relaxed(&c->slots[slot].xid, 0);
    /* release: pairs with the acquire load of the status in enter. */
    ember_atomic_store_release(&c->slots[slot].xstatus, C_FREE);
}

ember_rc_t ember_cond_enter(void *mem, uint32_t *slot)
{
    cond_obj_t *c = mem;
    if (!c || !slot)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self();
    mlock(&c->xmeta, me);            /* state is consistent at every store */
    int at = -1;
    for (int pass = 0; pass < 2 && at < 0; pass++) {
        for (uint32_t i = 0; i < EMBER_SYNC_COND_SLOTS; i++) {
            uint32_t st = ember_atomic_load_acquire(&c->slots[i].xstatus);
            if (st == C_FREE
                || (pass == 1 && ember_sync_id_dead(ember_atomic_load_relaxed(&c->slots[i].xid)))) {
                at = (int)i;
                break;
            }
        }
    }
    if (at < 0) {
        munlock(&c->xmeta);
        return EMBER_ERR_FULL;
    }
    uint32_t t = ember_atomic_load_relaxed(&c->xticket);
    ember_atomic_store_relaxed(&c->xticket, t + 1);
    /* counted before the slot shows WAITING: a death between the two
     * leaves a begun wait with no slot, which counts as ended (it did) */
    ember_atomic_store_relaxed(&c->xbegun, ember_atomic_load_relaxed(&c->xbegun) + 1);
    ember_atomic_store_relaxed(&c->slots[at].xid, me);
    ember_atomic_store_relaxed(&c->slots[at].xticket, t);
    ember_atomic_store_relaxed(&c->slots[at].xstatus, C_WAITING);
    munlock(&c->xmeta);
    *slot = (uint32_t)at;
    return EMBER_OK;
}

ember_rc_t ember_cond_wait(void *mem, uint32_t slot, int64_t timeout_ns)
{
    cond_obj_t *c = mem;
    if (!c || slot >= EMBER_SYNC_COND_SLOTS)
        return EMBER_ERR_INVALID_ARG;
    int64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        /* acquire: pairs with the release add on xseq in notify, after the
         * status stores. */
        uint32_t v = ember_atomic_load_acquire(&c->xseq);
        uint32_t st = ember_atomic_load_acquire(&c->slots[slot].xstatus);
        if (st == C_NOTIFIED) {
            cond_free_slot(c, slot);
            return EMBER_OK;
        }
        if (st != C_WAITING)
            return EMBER_ERR_INVALID_ARG;
        int64_t sl = slice_of(deadline);
        if (sl == 0)
            return EMBER_ERR_TIMEOUT;
        int e = futex_wait(&c->xseq, v, sl);
        if (e == EINTR)
            return EMBER_ERR_INTERRUPTED;
    }
}

ember_rc_t ember_cond_leave(void *mem, uint32_t slot)
{
    cond_obj_t *c = mem;
    if (!c || slot >= EMBER_SYNC_COND_SLOTS)
        return EMBER_ERR_INVALID_ARG;
    mlock(&c->xmeta, ember_sync_self());
    uint32_t st = ember_atomic_load_relaxed(&c->slots[slot].xstatus);
    if (st != C_FREE)
        cond_free_slot(c, slot);
    munlock(&c->xmeta);
    return st == C_NOTIFIED ? EMBER_OK : EMBER_ERR_TIMEOUT;
}

ember_rc_t ember_cond_notify(void *mem, uint32_t n, uint32_t *woken)
{
    cond_obj_t *c = mem;
    if (!c)
        return EMBER_ERR_INVALID_ARG;
    uint64_t me = ember_sync_self();
    uint32_t done = 0;
    mlock(&c->xmeta, me);
    uint32_t now = ember_atomic_load_relaxed(&c->xticket);
    while (done < n) {
        int best = -1;
        uint32_t best_age = 0;
        for (uint32_t i = 0; i < EMBER_SYNC_COND_SLOTS; i++) {
            if (ember_atomic_load_relaxed(&c->slots[i].xstatus) != C_WAITING)
                continue;
            uint32_t age = now - ember_atomic_load_relaxed(&c->slots[i].xticket);
            if (best < 0 || age > best_age) {
                best = (int)i;
                best_age = age;
            }
        }
        if (best < 0)
            break;
        uint64_t id = ember_atomic_load_relaxed(&c->slots[best].xid);
        if (id != me && ember_sync_id_dead(id)) {
            cond_free_slot(c, (uint32_t)best);   /* a dead waiter absorbs nothing */
            continue;
        }
        ember_atomic_store_relaxed(&c->slots[best].xstatus, C_NOTIFIED);
        done++;
    }
    if (done)
        /* release: the NOTIFIED stores are visible to a waiter that loads
         * the new value (acquire) in ember_cond_wait(). */
        atomic_fetch_add_explicit(&c->xseq, 1, memory_order_release);
    munlock(&c->xmeta);
    if (done)
        futex_wake_all(&c->xseq);
    if (woken)
        *woken = done;
    return EMBER_OK;
}

void ember_cond_counts(void *mem, uint64_t *begun, uint32_t *waiting, uint32_t *notified)
{
    cond_obj_t *c = mem;
    uint64_t id[EMBER_SYNC_COND_SLOTS];
    uint32_t st[EMBER_SYNC_COND_SLOTS], k = 0, w = 0, n = 0;
    /* one moment's counts: enter and notify change them under the meta lock
     * (a waiter frees its own slot without it: then its wait has ended) */
    mlock(&c->xmeta, ember_sync_self());
    uint64_t b = ember_atomic_load_relaxed(&c->xbegun);
    for (uint32_t i = 0; i < EMBER_SYNC_COND_SLOTS; i++) {
        st[k] = ember_atomic_load_relaxed(&c->slots[i].xstatus);
        id[k] = ember_atomic_load_relaxed(&c->slots[i].xid);
        k += st[k] != C_FREE;
    }
    munlock(&c->xmeta);
    for (uint32_t i = 0; i < k; i++) {
        if (ember_sync_id_dead(id[i]))
            continue;                        /* a dead waiter's wait has ended */
        w += st[i] == C_WAITING;
        n += st[i] == C_NOTIFIED;
    }
    *begun = b;
    *waiting = w;
    *notified = n;
}

uint32_t ember_cond_waiting(void *mem)
{
    cond_obj_t *c = mem;
    uint32_t n = 0;
    for (uint32_t i = 0; i < EMBER_SYNC_COND_SLOTS; i++)
        n += ember_atomic_load_relaxed(&c->slots[i].xstatus) == C_WAITING;
    return n;
}
