/*
 * pool.h -- public API of ember's shared-memory pools.
 *
 * A pool is a POSIX shared-memory segment ("/ember.<owner>.<m_uid hex>",
 * mode 0600, sparse) with a header and a heap managed by a death-robust
 * allocator that many processes use at once.  The implementation and its
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
#define EMBER_POOL_NAME_MAX       64u      /* shm name incl. leading '/' and NUL */
#define EMBER_POOL_LABEL_MAX      48u      /* user label incl. NUL (truncated)  */
#define EMBER_POOL_SDESC_SIZE     96u      /* serialized pool descriptor, bytes */
#define EMBER_ALLOC_SDESC_SIZE    128u     /* serialized allocation descriptor  */

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
    uint64_t free;           /* bytes in free blocks (incl. their headers) */
    uint64_t largest_free;   /* largest payload one alloc can get right now */
    uint64_t live_allocs;    /* number of allocated blocks */
} ember_pool_stats_t;

/* Create a new pool of `size` bytes (rounded up to a page).  The shm name is
 * "/ember.<owner_tag>.<m_uid as 16 hex digits>"; owner_tag must be
 * [A-Za-z0-9_-]{1,24} and should carry a pid ("p1234" for a standalone pool,
 * "r<launcher pid>-<runtime id>" inside a runtime) so `ember cleanup` can tell
 * whether the owner is alive.  label may be NULL.  Touches no heap memory up
 * front.  EMBER_ERR_OS with errno EEXIST if the name is taken. */
ember_rc_t ember_pool_create(uint64_t size, uint64_t m_uid, const char *owner_tag,
                             const char *label, ember_pool_t **out);

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

/* Allocate at least `size` bytes (size >= 1), 64-byte aligned.
 * EMBER_ERR_EXHAUSTED if no free block is large enough. */
ember_rc_t ember_pool_alloc(ember_pool_t *pool, uint64_t size, ember_alloc_t *out);

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

/* Check that `a` names a live allocation of this pool (same checks as free,
 * without freeing). */
ember_rc_t ember_pool_check(ember_pool_t *pool, const ember_alloc_t *a);

/* Local address of an allocation's payload (after ember_pool_check). */
void *ember_pool_ptr(const ember_pool_t *pool, uint64_t offset);

ember_rc_t ember_pool_stats(ember_pool_t *pool, ember_pool_stats_t *out);

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
ember_rc_t ember_pool_next_alloc(ember_pool_t *pool, uint64_t *cursor, ember_alloc_t *out);
uint64_t ember_pool_repair_count(ember_pool_t *pool);

#endif /* EMBER_POOL_H */
