/*
 * slots.c -- the process-slots table: one cache line per process saying
 * what it is blocked on (channel, operation, since when), so that another
 * process (`ember ps`) can tell "blocked on recv("jobs")" or "blocked on
 * acquire(Lock "db")" without asking the blocked process anything.
 *
 * BUILD
 *   Compiled once, into ember.pools_c._pools (with pool.c); channel.c and
 *   _sync.pyx reach it through the pool API table (pool_api.h), so a
 *   process has one binding whichever extension waits.
 *
 * LAYOUT
 *   A file `<runtime dir>/<runtime id>.slots` of EMBER_SLOTS_BYTES, mapped
 *   MAP_SHARED by every process of the runtime: line 0 is the header (magic,
 *   version, count; published by the first binder with one CAS of the magic),
 *   lines 1..COUNT the slots.  A process writes only the
 *   slot p_uid % COUNT (its own).  The file is sparse: a slot never written
 *   costs no page.
 *
 * ALGORITHM (a single-writer seqlock per slot, the "sequence" being the
 * start time)
 *   Writer (the sleep path of a blocking channel call, ch_wait() and
 *   ember_ch_wait_any() in channel.c, just before the first futex sleep;
 *   the slow path of a blocking sync_c call, _sync.pyx, once the try and
 *   the spin have failed, for the whole sliced wait):
 *   store xsince = 0 (relaxed), store the fields (relaxed), store-release
 *   xsince = now (CLOCK_REALTIME ns, never 0).  Clear: store-release
 *   xsince = 0, only by the thread whose tid the slot names.  The main
 *   thread always takes the record; another thread takes it only when no
 *   other thread's wait is in progress (so a helper thread's short wait
 *   cannot erase the main thread's long one).
 *   Reader: load-acquire xsince (s1); 0 means "not blocked"; load the
 *   fields (relaxed); acquire fence; load xsince again (s2); the record is
 *   consistent iff s1 == s2 (a start time is never reused by a writer).
 *
 * INVARIANTS
 *   - xsince != 0 exactly while a wait the slot describes is in progress,
 *     and the fields read between two equal loads of it belong to it.
 *   - Nothing read from the table is used for a memory access.
 *
 * PROGRESS
 *   Wait-free for the writer (a few stores); the reader retries a record
 *   that changed under it at most 4 times, then skips it (shown next time).
 *
 * COST
 *   Nothing on the fast path: the calls are on the path that is about to
 *   sleep in futex_wait(), after the spin; one clock_gettime (vDSO, no
 *   system call) and a few stores per blocking call; one more clock read
 *   when it ends.  A wait resumed by the same thread within a second (the
 *   Python layer waits in slices) keeps its start time.
 *
 * PROCESS DEATH (kill -9 at any instruction)
 *   A dead process's slot may keep saying "blocked" (xsince != 0): readers
 *   check the pid in the record against the process list they have (GS's),
 *   so a dead process is shown as exited, never as blocked.  A writer
 *   killed between the xsince = 0 store and the release store leaves the
 *   slot "not blocked".  Nothing else is shared, nothing can wedge.
 *   Caveats: two live processes whose p_uids are equal modulo COUNT share a
 *   slot (the record carries the p_uid: a reader shows it only for that
 *   process, the other shows "no record"); threads of one process share its
 *   slot (the main thread's wait is shown if it waits; otherwise the first
 *   other thread's; two non-main threads starting a wait at the same instant
 *   may mix their fields in the display, never in anything else).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "slots.h"
#include "ember_base.h"      /* clock, the cached pid */

#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    _Atomic int64_t xsince;     /* 0: not blocked; else CLOCK_REALTIME ns */
    _Atomic uint64_t xp_uid;
    _Atomic uint64_t xc_uid;
    _Atomic uint32_t xop;
    _Atomic uint32_t xtid;
    _Atomic uint32_t xcount;
    _Atomic uint32_t xpid;
    _Atomic int64_t xended;     /* when the last wait ended (CLOCK_REALTIME ns) */
    _Atomic int64_t xended_since;   /* and when that wait had begun */
    _Atomic uint64_t xobj;      /* sync waits: the object's offset in pool xc_uid */
} slot_t;
_Static_assert(sizeof(slot_t) == EMBER_CACHE_LINE, "a slot is one cache line");

typedef struct {
    _Atomic uint64_t xmagic;    /* 0 until the first binder initialised the header */
    _Atomic uint32_t xversion;
    _Atomic uint32_t xcount;
    uint64_t pad_[6];
} slots_header_t;
_Static_assert(sizeof(slots_header_t) == EMBER_CACHE_LINE, "the header is one cache line");

static _Atomic(slot_t *) g_slot;           /* this process's slot, or NULL */
static _Atomic uint64_t g_p_uid;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static _Thread_local uint32_t t_tid;
/* 1 if this thread is the process's first (its tid is the pid). */
static _Thread_local int t_main;

static void slots_after_fork(void)
{
    /* The child is not the parent's p_uid: it must not write its slot; and
     * its only thread has a tid of its own. */
    ember_atomic_store_relaxed(&g_slot, NULL);
    t_tid = 0;
    t_main = 0;
}

void ember_slots_after_clone(void)
{
    slots_after_fork();
    ember_pid_after_clone_();
}

static void slots_once(void)
{
    pthread_atfork(NULL, NULL, slots_after_fork);
}

ember_rc_t ember_slots_bind(void *base, size_t len, uint64_t p_uid)
{
    pthread_once(&g_once, slots_once);
    if (!base) {
        ember_atomic_store_relaxed(&g_slot, NULL);
        return EMBER_OK;
    }
    if (len < EMBER_SLOTS_BYTES)
        return EMBER_ERR_INVALID_ARG;
    slots_header_t *h = base;
    /* acquire: pairs with the release CAS below (by whichever process
     * initialised the header): version and count are visible. */
    uint64_t magic = ember_atomic_load_acquire(&h->xmagic);
    if (magic == 0) {
        /* A fresh file: binders that race here all store the same values,
         * then one CAS publishes them (release: pairs with the acquire
         * loads of xmagic here and in ember_slots_read()). */
        ember_atomic_store_relaxed(&h->xversion, EMBER_SLOTS_VERSION);
        ember_atomic_store_relaxed(&h->xcount, EMBER_SLOTS_COUNT);
        uint64_t expected = 0;
        if (!atomic_compare_exchange_strong_explicit(&h->xmagic, &expected, EMBER_SLOTS_MAGIC,
                                                     memory_order_release, memory_order_acquire))
            magic = expected;
        else
            magic = EMBER_SLOTS_MAGIC;
    }
    if (magic != EMBER_SLOTS_MAGIC)
        return EMBER_ERR_BAD_MAGIC;
    if (ember_atomic_load_relaxed(&h->xversion) != EMBER_SLOTS_VERSION ||
        ember_atomic_load_relaxed(&h->xcount) != EMBER_SLOTS_COUNT)
        return EMBER_ERR_VERSION;
    slot_t *s = (slot_t *)((unsigned char *)base + EMBER_CACHE_LINE) + p_uid % EMBER_SLOTS_COUNT;
    /* release: our slot is "not blocked" before anyone sees it as ours;
     * pairs with the reader's acquire loads of xsince. */
    ember_atomic_store_release(&s->xsince, 0);
    ember_atomic_store_relaxed(&g_p_uid, p_uid);
    ember_atomic_store_relaxed(&g_slot, s);
    return EMBER_OK;
}

void _ember_slot_wait_begin(uint32_t op, uint64_t c_uid, uint32_t count, uint64_t obj)
{
    slot_t *s = ember_atomic_load_relaxed(&g_slot);
    if (!s)
        return;
    if (t_tid == 0) {                               /* once per thread, on a sleep path */
        t_tid = (uint32_t)syscall(SYS_gettid);
        t_main = t_tid == (uint32_t)getpid();
    }
    /* One record per process: a thread other than the main one does not take
     * it over from another thread whose wait is in progress.  ember's own
     * helper threads (the handle releaser, join watchers) wait briefly, and
     * their end would otherwise erase the main thread's long wait for good
     * (`ember ps` would show it sleeping on nothing).  The main thread always
     * takes the record.  Only this process writes these words: relaxed. */
    if (!t_main && ember_atomic_load_relaxed(&s->xsince) != 0
        && ember_atomic_load_relaxed(&s->xtid) != t_tid)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    if (now <= 0)
        now = 1;
    /* A caller that waits in slices (the Python layer, so that Ctrl-C
     * works) ends and begins the same wait again: keep its start time when
     * the same thread resumes the same wait within a second.  Only this
     * process writes these words: relaxed loads of our own stores. */
    int64_t old = ember_atomic_load_relaxed(&s->xsince);
    if (old == 0 && ember_atomic_load_relaxed(&s->xtid) == t_tid
        && ember_atomic_load_relaxed(&s->xop) == op
        && ember_atomic_load_relaxed(&s->xc_uid) == c_uid
        && ember_atomic_load_relaxed(&s->xobj) == obj
        && now - ember_atomic_load_relaxed(&s->xended) < 1000000000) {
        int64_t prev = ember_atomic_load_relaxed(&s->xended_since);
        if (prev > 0)
            now = prev;
    }
    /* relaxed: invalidates the old record first; a reader that loaded the
     * old start time sees the change at its second load (its fence orders
     * the field loads before that load). */
    ember_atomic_store_relaxed(&s->xsince, 0);
    /* release fence: the invalidation above is ordered before the field
     * stores below (seqlock writer), so a reader on a weakly ordered CPU
     * never pairs new fields with the old start time; pairs with the
     * reader's fence in ember_slots_read(). */
    ember_atomic_fence_release();
    ember_atomic_store_relaxed(&s->xp_uid, ember_atomic_load_relaxed(&g_p_uid));
    ember_atomic_store_relaxed(&s->xc_uid, c_uid);
    ember_atomic_store_relaxed(&s->xobj, obj);
    ember_atomic_store_relaxed(&s->xop, op);
    ember_atomic_store_relaxed(&s->xcount, count);
    ember_atomic_store_relaxed(&s->xtid, t_tid);
    ember_atomic_store_relaxed(&s->xpid, ember_self_pid());   /* cached: no syscall */
    /* release: publishes the fields stored above; pairs with the acquire
     * load of xsince in ember_slots_read(). */
    ember_atomic_store_release(&s->xsince, now);
}

void _ember_slot_wait_end(void)
{
    slot_t *s = ember_atomic_load_relaxed(&g_slot);
    if (!s)
        return;
    /* Only the thread that owns the record clears it (another thread of
     * this process may have started a wait since). */
    if (ember_atomic_load_relaxed(&s->xtid) != t_tid)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ember_atomic_store_relaxed(&s->xended_since, ember_atomic_load_relaxed(&s->xsince));
    ember_atomic_store_relaxed(&s->xended, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
    /* release: the wait is over; pairs with the reader's acquire load. */
    ember_atomic_store_release(&s->xsince, 0);
}

ember_rc_t ember_slots_read(const void *base, size_t len, ember_slot_rec_t *out, size_t cap,
                            size_t *n)
{
    if (!base || !n || (cap && !out))
        return EMBER_ERR_INVALID_ARG;
    *n = 0;
    if (len < EMBER_SLOTS_BYTES)
        return EMBER_ERR_OUT_OF_RANGE;
    slots_header_t *h = (slots_header_t *)base;   /* read only: atomics need non-const */
    /* acquire: pairs with the release CAS of xmagic in ember_slots_bind(). */
    if (ember_atomic_load_acquire(&h->xmagic) != EMBER_SLOTS_MAGIC)
        return EMBER_ERR_BAD_MAGIC;
    if (ember_atomic_load_relaxed(&h->xversion) != EMBER_SLOTS_VERSION ||
        ember_atomic_load_relaxed(&h->xcount) != EMBER_SLOTS_COUNT)
        return EMBER_ERR_VERSION;
    slot_t *slots = (slot_t *)((unsigned char *)base + EMBER_CACHE_LINE);
    size_t k = 0;
    for (size_t i = 0; i < EMBER_SLOTS_COUNT && k < cap; i++) {
        slot_t *s = &slots[i];
        for (int tries = 0; tries < 4; tries++) {
            /* acquire: pairs with the release store of xsince in
             * _ember_slot_wait_begin(): the fields are those it published. */
            int64_t s1 = ember_atomic_load_acquire(&s->xsince);
            if (s1 == 0)
                break;
            ember_slot_rec_t r;
            r.p_uid = ember_atomic_load_relaxed(&s->xp_uid);
            r.c_uid = ember_atomic_load_relaxed(&s->xc_uid);
            r.op = ember_atomic_load_relaxed(&s->xop);
            r.count = ember_atomic_load_relaxed(&s->xcount);
            r.tid = ember_atomic_load_relaxed(&s->xtid);
            r.pid = ember_atomic_load_relaxed(&s->xpid);
            r.obj = ember_atomic_load_relaxed(&s->xobj);
            r.since_ns = s1;
            /* acquire fence: orders the field loads above before the second
             * load of xsince (seqlock reader); pairs with the writer's
             * release store. */
            atomic_thread_fence(memory_order_acquire);
            if (ember_atomic_load_relaxed(&s->xsince) == s1) {
                out[k++] = r;
                break;
            }
        }
    }
    *n = k;
    return EMBER_OK;
}
