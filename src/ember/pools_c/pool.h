/*
 * pool.h -- public API of ember's shared-memory pools.
 *
 * A pool is a POSIX shared-memory segment
 * ("/ember.<owner>.<m_uid hex>.<random hex>", mode 0600) with a header and
 * a heap managed by a death-robust allocator that many processes use at
 * once.  The segment's pages are committed (fallocate) before they are
 * handed out, so a full /dev/shm is EMBER_ERR_EXHAUSTED for the allocating
 * process, never a SIGBUS for anyone.  The implementation and its
 * death-robustness argument are in pool.c; the layout is in docs/pools.md.
 *
 * Every function returns ember_rc_t (EMBER_OK == 0); results go through
 * out-parameters.  No function prints, exits or aborts.
 */
#ifndef EMBER_POOL_H
#define EMBER_POOL_H

#include <stdint.h>
#include <stddef.h>
#include "../common_c/ember_common.h"

#define EMBER_POOL_ALIGN          64u      /* every payload is 64-byte aligned */
#define EMBER_POOL_HDR_SIZE       4096u    /* the segment's header; the heap is the rest */
#define EMBER_POOL_NAME_MAX       64u      /* shm name incl. leading '/' and NUL */
#define EMBER_POOL_LABEL_MAX      48u      /* user label incl. NUL (truncated)  */
#define EMBER_POOL_SDESC_SIZE     96u      /* serialized pool descriptor, bytes */
#define EMBER_ALLOC_SDESC_SIZE    128u     /* serialized allocation descriptor  */

/* ember_pool_create_ex flags */
#define EMBER_POOL_COMMIT_FULL    1u       /* commit the whole segment at create */

/* ember_pool_alloc_ex flags */
#define EMBER_ALLOC_OWNED         1u       /* record the caller's pid as owner   */
#define EMBER_ALLOC_NO_FREE_WAIT  2u       /* timeout bounds only the mutex wait */

/* Default bound on how long one live holder may keep the pool mutex before
 * a waiter reports EMBER_ERR_LOCK_STUCK (see ember_pool_set_lock_bound). */
#define EMBER_POOL_LOCK_BOUND_NS  10000000000ll

/* Process-local handle of an attached pool (opaque). */
typedef struct ember_pool ember_pool_t;

/* An allocation: where its payload is in the pool, how large it is, and the
 * unique id the allocator gave it (detects stale descriptors after free). */
typedef struct {
    uint64_t offset;    /* payload offset from the segment base */
    uint64_t size;      /* bytes requested (the payload is at least this) */
    uint64_t id;        /* unique per allocation within the pool, never 0 */
} ember_alloc_t;

typedef struct {
    uint64_t total;          /* bytes in the heap (segment minus header) */
    uint64_t free;           /* bytes in free blocks (incl. their headers),
                              * counting pages not yet committed only as far
                              * as /dev/shm has room for them right now */
    uint64_t largest_free;   /* largest payload one alloc can get right now
                              * (same cap) */
    uint64_t live_allocs;    /* number of allocated blocks */
    uint64_t committed;      /* bytes of the segment backed by pages */
} ember_pool_stats_t;

/* Create a new pool of `size` bytes (rounded up to a page).  The shm name is
 * "/ember.<owner_tag>.<m_uid as 16 hex digits>.<12 random hex digits>"
 * (random from getrandom; a name already taken is retried with another
 * suffix); owner_tag must be [A-Za-z0-9_-]{1,24} and should carry a pid
 * ("p1234" for a standalone pool, "r<launcher pid>-<runtime id>" inside a
 * runtime) so `ember cleanup` can tell whether the owner is alive.  label
 * may be NULL.  A segment larger than the free space of the filesystem
 * backing it (statvfs of /dev/shm) is refused: EMBER_ERR_OS, errno ENOSPC.
 * Commits (fallocate) only the header page up front; the heap is committed
 * in steps as it is handed out, doubling from 64 KiB to 2 MiB
 * (ember_pool_create_ex: all of it at once). */
ember_rc_t ember_pool_create(uint64_t size, uint64_t m_uid, const char *owner_tag,
                             const char *label, ember_pool_t **out);

/* As ember_pool_create; flags EMBER_POOL_COMMIT_FULL commits the whole
 * segment at create (EMBER_ERR_OS, errno ENOSPC if /dev/shm cannot hold it):
 * such a pool never runs out of backing pages later. */
ember_rc_t ember_pool_create_ex(uint64_t size, uint64_t m_uid, const char *owner_tag,
                                const char *label, unsigned flags, ember_pool_t **out);

/* Attach to an existing pool from its serialized descriptor.  A truncated,
 * corrupt or foreign descriptor gives EMBER_ERR_BAD_DESCRIPTOR; a segment
 * that no longer exists EMBER_ERR_NOT_FOUND; a segment whose header does not
 * match the descriptor EMBER_ERR_BAD_MAGIC / EMBER_ERR_VERSION. */
ember_rc_t ember_pool_attach(const void *sdesc, size_t len, ember_pool_t **out);

/* Write the pool's descriptor (exactly EMBER_POOL_SDESC_SIZE bytes). */
ember_rc_t ember_pool_serialize(const ember_pool_t *pool, void *buf, size_t cap, size_t *len);

/* Unmap and free the handle (the segment stays).  NULL is EMBER_ERR_INVALID_ARG. */
ember_rc_t ember_pool_detach(ember_pool_t *pool);

/* Unlink the segment, then detach.  Other attached processes keep their
 * mapping until they detach; new attaches get EMBER_ERR_NOT_FOUND. */
ember_rc_t ember_pool_destroy(ember_pool_t *pool);

/* Unlink a segment by its shm name without attaching (used by cleanup). */
ember_rc_t ember_pool_unlink_name(const char *shm_name);

/* THE POOL MUTEX.  Every call below that reads or changes the allocator
 * takes the pool's robust mutex.  No call waits for it without a bound: a
 * live process that keeps it (stopped by SIGSTOP or a debugger) makes the
 * waiters return EMBER_ERR_LOCK_STUCK once ONE holder has been seen holding
 * it for the lock bound (process-wide, default EMBER_POOL_LOCK_BOUND_NS).
 * The `_ex` variants take a timeout for the mutex wait as well (0: try the
 * mutex once, EMBER_ERR_TIMEOUT if it is busy).  Calls that time out on the
 * same holder again and again from one thread (a caller waiting in slices)
 * count as one wait towards the bound.  Corrupt shared state (a header,
 * free-list link or block header that fails its bounds check, the mutex's
 * own words included) is EMBER_ERR_CORRUPT, never a crash or a hang. */
/* In a child made by a raw clone() (no pthread_atfork handler ran): refresh
 * the cached pid that owned allocations record (pool.c's copy). */
void ember_pool_after_clone(void);

void ember_pool_set_lock_bound(int64_t ns);         /* <= 0: back to the default */
int64_t ember_pool_lock_bound(void);
/* Thread id in the mutex's owner word (0: free): who to name in a report. */
uint32_t ember_pool_lock_owner(const ember_pool_t *pool);

/* Allocate at least `size` bytes (size >= 1), 64-byte aligned.
 * EMBER_ERR_EXHAUSTED if no free block is large enough, or if /dev/shm has
 * no room left for the pages the block needs. */
ember_rc_t ember_pool_alloc(ember_pool_t *pool, uint64_t size, ember_alloc_t *out);

/* The general alloc.  timeout_ns as in ember_pool_alloc_wait, bounding the
 * mutex wait too; flags: EMBER_ALLOC_OWNED records the caller's pid in the
 * block (ember_pool_reclaim frees it when that process has died; hand the
 * block over with ember_pool_set_owner(pool, a, 0) first);
 * EMBER_ALLOC_NO_FREE_WAIT: the timeout bounds only the mutex wait, an
 * exhausted pool returns EMBER_ERR_EXHAUSTED at once.  EMBER_ERR_TIMEOUT
 * when the time ran out (waiting for the mutex or for a free). */
ember_rc_t ember_pool_alloc_ex(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                               unsigned flags, ember_alloc_t *out);

/* ember_pool_alloc_ex, and *pristine (if not NULL) = 1 when the block's
 * payload was never written since the pool was created, so it reads as
 * zeros (fresh pages of the segment: touching them is the first touch);
 * 0 when it may hold anything.  A channel made in a pristine block needs
 * no slot initialised (channel.c). */
ember_rc_t ember_pool_alloc_pristine(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                                     unsigned flags, ember_alloc_t *out, int *pristine);

/* As ember_pool_alloc, but wait for a free (futex on the pool header) when
 * exhausted: timeout_ns < 0 waits forever, 0 tries once, > 0 waits at most
 * that long, then EMBER_ERR_TIMEOUT.  A signal ends the wait early with
 * EMBER_ERR_INTERRUPTED.  A caller that must react to signals (Python)
 * passes bounded slices (e.g. 50 ms), checks for signals and calls again
 * with the remaining time.  A request larger than the whole heap returns
 * EMBER_ERR_EXHAUSTED at once instead of waiting. */
ember_rc_t ember_pool_alloc_wait(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                                 ember_alloc_t *out);

/* Free an allocation.  EMBER_ERR_OUT_OF_RANGE for an offset outside the heap,
 * EMBER_ERR_DOUBLE_FREE if the block is not allocated, EMBER_ERR_STALE if the
 * block was freed and re-allocated since (id mismatch). */
ember_rc_t ember_pool_free(ember_pool_t *pool, const ember_alloc_t *a);
/* ... with a bound on the mutex wait (0: try once; EMBER_ERR_TIMEOUT). */
ember_rc_t ember_pool_free_ex(ember_pool_t *pool, const ember_alloc_t *a, int64_t lock_timeout_ns);

/* Check that `a` names a live allocation of this pool (same checks as free,
 * without freeing). */
ember_rc_t ember_pool_check(ember_pool_t *pool, const ember_alloc_t *a);
ember_rc_t ember_pool_check_ex(ember_pool_t *pool, const ember_alloc_t *a, int64_t lock_timeout_ns);

/* Owner of a live allocation: a pid (reclaimed when that process dies) or
 * 0 (nobody: never reclaimed).  Same validation as ember_pool_check. */
ember_rc_t ember_pool_set_owner(ember_pool_t *pool, const ember_alloc_t *a, uint32_t pid);

/* Hand a live allocation over: its owner becomes `to` only if it is `from`
 * (one step under the mutex, so a concurrent ember_pool_reclaim of `from`
 * either freed it first or finds it no longer `from`'s).  EMBER_ERR_STALE
 * if its owner is not `from`; otherwise the same validation as
 * ember_pool_check. */
ember_rc_t ember_pool_take_owner(ember_pool_t *pool, const ember_alloc_t *a, uint32_t from,
                                 uint32_t to);

/* Free every live allocation whose recorded owner is `pid` (the caller
 * makes sure that process is dead).  Gives how many blocks and how many
 * bytes (block headers included) went back; either may be NULL. */
ember_rc_t ember_pool_reclaim(ember_pool_t *pool, uint32_t pid, uint64_t *nblocks, uint64_t *nbytes);

/* Local address of an allocation's payload (after ember_pool_check). */
void *ember_pool_ptr(const ember_pool_t *pool, uint64_t offset);

ember_rc_t ember_pool_stats(ember_pool_t *pool, ember_pool_stats_t *out);
ember_rc_t ember_pool_stats_ex(ember_pool_t *pool, ember_pool_stats_t *out, int64_t lock_timeout_ns);

/* Identity accessors. */
uint64_t ember_pool_m_uid(const ember_pool_t *pool);
uint64_t ember_pool_size(const ember_pool_t *pool);       /* whole segment */
const char *ember_pool_shm_name(const ember_pool_t *pool);
const char *ember_pool_label(const ember_pool_t *pool);

/* Pool-wide event word for waiting on several channels of one pool at once:
 * channels bump it (and wake) after a send or recv when
 * *ember_pool_event_waiters(pool) > 0.  Both live on their own cache line
 * in the pool header. */
_Atomic uint32_t *ember_pool_event_word(const ember_pool_t *pool);
_Atomic uint32_t *ember_pool_event_waiters(const ember_pool_t *pool);

/* Allocation descriptors: pool identity (the pool's descriptor) + offset,
 * size and id.  Serialize writes exactly EMBER_ALLOC_SDESC_SIZE bytes.
 * Parse only checks the bytes (magic, version, length, checksum) and gives
 * the embedded pool descriptor so the caller can attach the pool; then
 * ember_pool_check validates the allocation against the pool. */
ember_rc_t ember_alloc_serialize(const ember_pool_t *pool, const ember_alloc_t *a,
                                 void *buf, size_t cap, size_t *len);
ember_rc_t ember_alloc_parse(const void *sdesc, size_t len,
                             const uint8_t **pool_sdesc, size_t *pool_sdesc_len,
                             ember_alloc_t *out);

/* Low-level helpers exported for tests/cleanup: the shm name inside a pool
 * descriptor (NUL-terminated copy into buf). */
ember_rc_t ember_pool_sdesc_name(const void *sdesc, size_t len, char *buf, size_t cap);

/* Diagnostics (tests, debugging, reclaiming blocks lost by dead processes).
 *
 * ember_pool_validate walks the whole heap under the lock and checks every
 * allocator invariant (see pool.c): EMBER_OK or EMBER_ERR_CORRUPT.
 * ember_pool_next_alloc iterates the live allocations in offset order: start
 * with *cursor = 0; each call gives the next one at or after *cursor and
 * advances *cursor; EMBER_ERR_EMPTY at the end.  O(heap blocks) per call.
 * ember_pool_repair_count: how many times a process found the lock's owner
 * dead and repaired the pool. */
ember_rc_t ember_pool_validate(ember_pool_t *pool);
/* Take / release the pool mutex as an operation does (tests: a holder that
 * is then stopped).  ember_pool_debug_lock waits up to the lock bound. */
ember_rc_t ember_pool_debug_lock(ember_pool_t *pool);
ember_rc_t ember_pool_debug_unlock(ember_pool_t *pool);
ember_rc_t ember_pool_next_alloc(ember_pool_t *pool, uint64_t *cursor, ember_alloc_t *out);
uint64_t ember_pool_repair_count(ember_pool_t *pool);

#endif /* EMBER_POOL_H */
