/*
 * outboard.c -- the shepherd's output board: whether everything a process
 * wrote to its stdout and stderr had been forwarded when it exited, so that
 * a join answered by the kernel (ember.Process.join() through the pidfd,
 * docs/python-processes.md) returns only after the process's output is at
 * the launcher, at no cost for a process whose output was all out already.
 *
 * LAYOUT
 *   A segment `/dev/shm/ember.<runtime id>.output` of EMBER_OB_BYTES,
 *   created by the node's shepherd, mapped MAP_SHARED by the shepherd (the
 *   .py head forked from it inherits the mapping), the warm template (its
 *   children inherit it) and, on their first join, the processes that join
 *   (ember.objects.process); a process that joins in a later runtime
 *   (ember.init() after ember.shutdown()), and a shepherd forked from such a
 *   process (ember.init()'s host), map their runtime's board over the one
 *   they had, at the same address (ember_ob_replace: one mremap, so that a
 *   thread in a call meanwhile reads one board or the other, never an
 *   unmapped page; what it reads there can at worst answer a join of the
 *   earlier runtime's process, whose output was all out when that runtime
 *   ended, with the entry of an equal p_uid).  Line 0 is the header (magic,
 *   version, count; published by the creator with one CAS of the magic);
 *   then one entry per p_uid % COUNT: three 64-bit words and a 32-bit
 *   futex word.  Every word holds a p_uid + 1 (0: none; the futex word its
 *   low 32 bits, checked with xowner), so a value left by another process of the
 *   same entry never passes for this one's.  The segment is sparse: an entry
 *   never written costs no page.
 *
 * ALGORITHM
 *   xowner: the p_uid the entry is for; written by the shepherd (release)
 *   before it starts the process.
 *   xbusy: p_uid while the shepherd is taking that process's output from
 *   its pipes or holds some of it not yet written (a partial line); stored
 *   (seq_cst, then a seq_cst fence) before each read() of its pipes, reset
 *   to 0 once what it read is written.  Written by the shepherd: its loop
 *   thread, and its request thread's reset at a spawn (ember_ob_spawned).
 *   A reset that races with the loop's busy store for the entry's earlier
 *   process (p_uid - COUNT, still forwarding) can leave the entry busy
 *   for the new one: its check then fails, its joiner waits for xdrained.
 *   xclean: p_uid once the process, after its last write and just before
 *   it exits (exit code 0), found its fd 1 and fd 2 to be pipes with no
 *   byte in them (FIONREAD), then (seq_cst fence) xbusy == 0 and xowner ==
 *   itself.  Every byte it wrote was then either still in a pipe (seen by
 *   FIONREAD), or read by the shepherd, which stored xbusy before that read
 *   (the read and the FIONREAD are ordered by the pipe's lock; the fences
 *   order the stores and loads around them) and resets it only after the
 *   write: so nothing was left.  Written by that process only (and by the
 *   shepherd at the start of a process whose stdio it does not forward).
 *   xdrained (32 bits, a futex word): (uint32_t)(p_uid + 1) once the
 *   shepherd, having reaped the process, drained its pipes and wrote what
 *   they held (store-release, then a futex wake unless xclean says nobody
 *   waits).  Written by the shepherd only.
 *   The joiner: once the pidfd says the process exited with code 0, it
 *   loads xclean (acquire; pairs with the child's release store, which the
 *   exit orders before the pidfd turns readable); xclean == p_uid: all is
 *   out, return.  Else it sleeps on xdrained until it says p_uid (bounded:
 *   past the bound, or if a later process took the entry, it asks GS,
 *   whose answer also comes after the shepherd wrote the pipes' contents:
 *   ShExited is sent after that).
 *
 * INVARIANTS
 *   - xclean == p_uid + 1 only if every byte process p_uid wrote to its
 *     stdout and stderr before its check had been written out by the
 *     shepherd (or its stdio is not forwarded).
 *   - Nothing read from the board is used for a memory access.
 *
 * PROGRESS
 *   Wait-free: a few loads and stores, two ioctls at a process's exit;
 *   the joiner of a process that was not clean waits for the shepherd
 *   (bounded; then GS).
 *
 * COST
 *   The shepherd: two stores a read of a child's pipe that holds data (one
 *   when it goes on holding a partial line).  A process: two ioctls and a
 *   few loads at its exit.  The joiner: one load (its first join in a
 *   process that did not inherit the board: an open and a mmap).
 *
 * PROCESS DEATH (kill -9 at any instruction)
 *   The shepherd dying leaves xbusy set at worst: the process's check then
 *   fails and its joiner asks GS (which says the runtime is failing).  A
 *   process dying before or in its check leaves xclean unset: its joiner
 *   waits for xdrained (a death is never answered by the kernel anyway, so
 *   only an exit with code 0 after the check failed).  The shepherd dying
 *   before xdrained: the joiner's bounded wait ends, GS answers.  A joiner's
 *   death costs nothing (one in ember_ob_replace: its own mapping only).
 *   The shepherd dying in ember_ob_open before its CAS of the magic leaves
 *   a board every later open refuses (EMBER_ERR_BAD_MAGIC): joins ask GS.
 *   Two live processes whose p_uids are equal modulo COUNT: the later
 *   spawn takes the entry (xowner), the earlier one's check then fails and
 *   its join goes through GS.  Nothing can wedge.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "outboard.h"
#include "ember_base.h"      /* futex */

#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");

typedef struct {
    _Atomic uint64_t xowner;
    _Atomic uint64_t xbusy;
    _Atomic uint64_t xclean;
    _Atomic uint32_t xdrained;  /* the futex word: (uint32_t)(p_uid + 1) once drained */
    uint32_t pad_;
} ob_entry_t;
_Static_assert(sizeof(ob_entry_t) == EMBER_OB_ENTRY, "an entry is EMBER_OB_ENTRY bytes");

typedef struct {
    _Atomic uint64_t xmagic;    /* 0 until the creator initialised the header */
    _Atomic uint32_t xversion;
    _Atomic uint32_t xcount;
    uint64_t pad_[2];
} ob_header_t;
_Static_assert(sizeof(ob_header_t) == EMBER_OB_ENTRY, "the header is one entry");

static _Atomic(ob_entry_t *) g_entries;    /* this process's mapping, past the header */

/* Map the board at `path` (created and given its header with `create`) at
 * a place of the kernel's choosing: *out is its base.  Checks its header. */
static ember_rc_t ob_map(const char *path, int create, void **out)
{
    if (!path)
        return EMBER_ERR_INVALID_ARG;
    int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
    if (fd < 0)
        return errno == ENOENT ? EMBER_ERR_NOT_FOUND : EMBER_ERR_OS;
    struct stat st;
    if (fstat(fd, &st) != 0 ||
        ((size_t)st.st_size < EMBER_OB_BYTES && (!create || ftruncate(fd, EMBER_OB_BYTES) != 0))) {
        int e = errno;
        close(fd);
        errno = e;
        return create ? EMBER_ERR_OS : EMBER_ERR_BAD_MAGIC;
    }
    void *base = mmap(NULL, EMBER_OB_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int e = errno;
    close(fd);
    if (base == MAP_FAILED) {
        errno = e;
        return EMBER_ERR_OS;
    }
    ob_header_t *h = base;
    ember_rc_t rc = EMBER_OK;
    if (create) {
        ember_atomic_store_relaxed(&h->xversion, EMBER_OB_VERSION);
        ember_atomic_store_relaxed(&h->xcount, EMBER_OB_COUNT);
        uint64_t zero = 0;
        /* release: publishes version and count; pairs with the acquire
         * load of xmagic below (in another process). */
        ember_atomic_cas_acq_rel(&h->xmagic, &zero, EMBER_OB_MAGIC);
    }
    /* acquire: pairs with the creator's CAS above. */
    if (ember_atomic_load_acquire(&h->xmagic) != EMBER_OB_MAGIC)
        rc = EMBER_ERR_BAD_MAGIC;
    else if (ember_atomic_load_relaxed(&h->xversion) != EMBER_OB_VERSION ||
             ember_atomic_load_relaxed(&h->xcount) != EMBER_OB_COUNT)
        rc = EMBER_ERR_VERSION;
    if (rc != EMBER_OK)
        munmap(base, EMBER_OB_BYTES);
    else
        *out = base;
    return rc;
}

ember_rc_t ember_ob_open(const char *path, int create)
{
    if (ember_atomic_load_acquire(&g_entries))
        return EMBER_OK;
    void *base = NULL;
    ember_rc_t rc = ob_map(path, create, &base);
    if (rc != EMBER_OK)
        return rc;
    ob_entry_t *want = NULL;
    /* acq_rel: publishes the mapping to this process's other threads;
     * pairs with the acquire loads of g_entries. */
    if (!ember_atomic_cas_acq_rel(&g_entries, &want, (ob_entry_t *)base + 1))
        munmap(base, EMBER_OB_BYTES);          /* another thread mapped it */
    return EMBER_OK;
}

ember_rc_t ember_ob_replace(const char *path, int create)
{
    /* acquire: pairs with the CAS that published the mapping. */
    ob_entry_t *cur = ember_atomic_load_acquire(&g_entries);
    if (!cur)
        return ember_ob_open(path, create);
    void *base = NULL;
    ember_rc_t rc = ob_map(path, create, &base);
    if (rc != EMBER_OK)
        return rc;
    /* One mremap moves the new board onto the old one's address (the old
     * mapping goes in the same step, under the mmap lock): a thread in a
     * call meanwhile reads one board or the other, never an unmapped page;
     * g_entries is unchanged. */
    if (mremap(base, EMBER_OB_BYTES, EMBER_OB_BYTES, MREMAP_MAYMOVE | MREMAP_FIXED,
               (void *)((ob_header_t *)(void *)cur - 1)) == MAP_FAILED) {
        int e = errno;
        munmap(base, EMBER_OB_BYTES);
        errno = e;
        return EMBER_ERR_OS;
    }
    return EMBER_OK;
}

int ember_ob_mapped(void)
{
    return ember_atomic_load_acquire(&g_entries) != NULL;
}

static ob_entry_t *entry(uint64_t p_uid)
{
    /* acquire: pairs with the CAS that published the mapping. */
    ob_entry_t *e = ember_atomic_load_acquire(&g_entries);
    return e ? e + p_uid % EMBER_OB_COUNT : NULL;
}

void ember_ob_spawned(uint64_t p_uid, int clean)
{
    ob_entry_t *e = entry(p_uid);
    if (!e)
        return;
    ember_atomic_store_relaxed(&e->xbusy, 0);
    ember_atomic_store_relaxed(&e->xdrained, 0);
    if (clean)
        ember_atomic_store_relaxed(&e->xclean, p_uid + 1);
    /* release: the entry's reset above is visible to whoever reads xowner ==
     * p_uid + 1 (the process, whose start follows anyway: ember_ob_exiting). */
    ember_atomic_store_release(&e->xowner, p_uid + 1);
}

void ember_ob_busy(uint64_t p_uid, int busy)
{
    ob_entry_t *e = entry(p_uid);
    /* relaxed: a filter, the shepherd's own store (its request thread's, at
     * the spawn, before the pipes are in the loop's set); pairs with nothing. */
    if (!e || ember_atomic_load_relaxed(&e->xowner) != p_uid + 1)
        return;                 /* the entry went to a later process: its check fails */
    if (busy) {
        /* seq_cst store and fence: ordered before the read() that follows
         * (which takes bytes out of the pipe); pairs with the fence in
         * ember_ob_exiting() after its FIONREAD saw the pipe empty. */
        ember_atomic_store_seq_cst(&e->xbusy, p_uid + 1);
        ember_atomic_fence_seq_cst();
    } else {
        /* release: the write() of what was read comes before; pairs with
         * the load in ember_ob_exiting() (a 0 there means it was written). */
        ember_atomic_store_release(&e->xbusy, 0);
    }
}

static int pipe_empty(int fd)
{
    struct stat st;
    int n = 0;
    return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode) && ioctl(fd, FIONREAD, &n) == 0 && n == 0;
}

int ember_ob_exiting(uint64_t p_uid)
{
    ob_entry_t *e = entry(p_uid);
    /* acquire: pairs with the shepherd's release store of xowner. */
    if (!e || ember_atomic_load_acquire(&e->xowner) != p_uid + 1)
        return 0;
    if (!pipe_empty(1) || !pipe_empty(2))
        return 0;
    /* seq_cst fence: the FIONREADs above before the load of xbusy; pairs
     * with the fence in ember_ob_busy(1) before the shepherd's read(). */
    ember_atomic_fence_seq_cst();
    /* relaxed (xowner): a later process taking the entry during the check;
     * ordered after the fence, pairs with nothing. */
    if (ember_atomic_load_seq_cst(&e->xbusy) != 0 ||
        ember_atomic_load_relaxed(&e->xowner) != p_uid + 1)
        return 0;
    /* release: pairs with the joiner's acquire load in ember_ob_clean(). */
    ember_atomic_store_release(&e->xclean, p_uid + 1);
    return 1;
}

int ember_ob_clean(uint64_t p_uid)
{
    ob_entry_t *e = entry(p_uid);
    /* acquire: pairs with the release store in ember_ob_exiting() (or
     * ember_ob_spawned()). */
    return e && ember_atomic_load_acquire(&e->xclean) == p_uid + 1;
}

void ember_ob_drained(uint64_t p_uid)
{
    ob_entry_t *e = entry(p_uid);
    /* relaxed: a filter, the shepherd's own store; pairs with nothing. */
    if (!e || ember_atomic_load_relaxed(&e->xowner) != p_uid + 1)
        return;
    /* release: the write()s of the process's last output come before;
     * pairs with the acquire load in ember_ob_wait_drained(). */
    ember_atomic_store_release(&e->xdrained, (uint32_t)(p_uid + 1));
    /* acquire: pairs with the child's release store of xclean (made before
     * its exit, which came before this): a clean process has no joiner
     * waiting here, no wake-up to make. */
    if (ember_atomic_load_acquire(&e->xclean) != p_uid + 1)
        ember_futex_wake_all(&e->xdrained);
}

int ember_ob_wait_drained(uint64_t p_uid, int64_t ns)
{
    ob_entry_t *e = entry(p_uid);
    if (!e)
        return 0;
    int64_t now = ember_now_ns();
    if (ns < 0)
        ns = 0;
    int64_t deadline = ns > INT64_MAX - now ? INT64_MAX : now + ns;
    for (;;) {
        /* acquire: pairs with the release store in ember_ob_drained(). */
        uint32_t v = ember_atomic_load_acquire(&e->xdrained);
        if (v == (uint32_t)(p_uid + 1))
            return 1;
        /* relaxed: only whether a later process took the entry (then GS
         * answers); pairs with nothing. */
        if (ember_atomic_load_relaxed(&e->xowner) != p_uid + 1)
            return 0;           /* a later process took the entry */
        int64_t left = deadline - ember_now_ns();
        if (left <= 0)
            return 0;
        if (ember_futex_wait(&e->xdrained, v, left) == EINTR)
            return -1;
    }
}
