/*
 * ember_common.h -- return codes and named atomic wrappers shared by every
 * C file in ember (pools_c, channels_c, sync_c, shepherd spawn helper).
 * The rest of the one C base: ember_base.h (clock, futex, pid, liveness,
 * checksums) and pool_api.h (pool.c compiled once, into _pools; the other
 * extensions call it through a capsule).  ember._rc maps the codes below
 * to exceptions, one table for every extension.
 *
 * Conventions (see shared/STYLE.md):
 *   - every fallible function returns ember_rc_t, EMBER_OK == 0, results go
 *     through out-parameters; "full", "empty", "timeout" are return codes;
 *   - atomics are used only through the wrappers below, whose names carry the
 *     memory order; each call site says what it pairs with;
 *   - shared memory holds offsets, never pointers.
 */
#ifndef EMBER_COMMON_H
#define EMBER_COMMON_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    EMBER_OK = 0,
    EMBER_ERR_INVALID_ARG = 1,      /* NULL pointer, zero size, bad option   */
    EMBER_ERR_NOMEM = 2,            /* local malloc failed                   */
    EMBER_ERR_OS = 3,               /* a system call failed; see errno       */
    EMBER_ERR_NOT_FOUND = 4,        /* the segment does not exist (any more) */
    EMBER_ERR_BAD_DESCRIPTOR = 5,   /* truncated / corrupt / foreign sdesc   */
    EMBER_ERR_BAD_MAGIC = 6,        /* segment/object header magic mismatch  */
    EMBER_ERR_VERSION = 7,          /* layout version mismatch               */
    EMBER_ERR_OUT_OF_RANGE = 8,     /* offset/size outside the segment       */
    EMBER_ERR_EXHAUSTED = 9,        /* pool has no block large enough        */
    EMBER_ERR_DOUBLE_FREE = 10,     /* block is not (or no longer) allocated */
    EMBER_ERR_STALE = 11,           /* allocation id does not match: freed   */
    EMBER_ERR_CORRUPT = 12,         /* shared structure failed validation    */
    EMBER_ERR_FULL = 13,            /* channel full (try-once / timeout)     */
    EMBER_ERR_EMPTY = 14,           /* channel empty (try-once / timeout)    */
    EMBER_ERR_TIMEOUT = 15,         /* blocking call ran out of time         */
    EMBER_ERR_TOO_BIG = 16,         /* message larger than the pool can hold */
    EMBER_ERR_DESTROYED = 17,       /* object was destroyed                  */
    EMBER_ERR_INTERRUPTED = 18,     /* a wait was interrupted (EINTR)        */
    EMBER_ERR_BUFFER_TOO_SMALL = 19,/* caller's buffer cannot hold the data  */
    EMBER_ERR_CLOSED = 20,          /* channel closed (and drained, for recv) */
    EMBER_ERR_LOCK_STUCK = 21,      /* a live holder kept a lock past the bound */
    EMBER_RC_MAX_ = 22
} ember_rc_t;

static inline const char *ember_rc_str(int rc)
{
    static const char *const names[EMBER_RC_MAX_] = {
        "EMBER_OK", "EMBER_ERR_INVALID_ARG", "EMBER_ERR_NOMEM", "EMBER_ERR_OS",
        "EMBER_ERR_NOT_FOUND", "EMBER_ERR_BAD_DESCRIPTOR", "EMBER_ERR_BAD_MAGIC",
        "EMBER_ERR_VERSION", "EMBER_ERR_OUT_OF_RANGE", "EMBER_ERR_EXHAUSTED",
        "EMBER_ERR_DOUBLE_FREE", "EMBER_ERR_STALE", "EMBER_ERR_CORRUPT",
        "EMBER_ERR_FULL", "EMBER_ERR_EMPTY", "EMBER_ERR_TIMEOUT",
        "EMBER_ERR_TOO_BIG", "EMBER_ERR_DESTROYED", "EMBER_ERR_INTERRUPTED",
        "EMBER_ERR_BUFFER_TOO_SMALL", "EMBER_ERR_CLOSED", "EMBER_ERR_LOCK_STUCK",
    };
    if (rc < 0 || rc >= EMBER_RC_MAX_)
        return "EMBER_ERR_UNKNOWN";
    return names[rc];
}

#define EMBER_CACHE_LINE 64

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "ember needs lock-free 64-bit atomics");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "ember needs lock-free 32-bit atomics");

/* Named-order atomic wrappers (mimalloc style). Never pass an order as a
 * parameter; pick the wrapper whose name states the order. */
#define ember_atomic_load_relaxed(p)        atomic_load_explicit((p), memory_order_relaxed)
#define ember_atomic_load_acquire(p)        atomic_load_explicit((p), memory_order_acquire)
#define ember_atomic_load_seq_cst(p)        atomic_load_explicit((p), memory_order_seq_cst)
#define ember_atomic_store_relaxed(p, v)    atomic_store_explicit((p), (v), memory_order_relaxed)
#define ember_atomic_store_release(p, v)    atomic_store_explicit((p), (v), memory_order_release)
#define ember_atomic_store_seq_cst(p, v)    atomic_store_explicit((p), (v), memory_order_seq_cst)
#define ember_atomic_add_relaxed(p, v)      atomic_fetch_add_explicit((p), (v), memory_order_relaxed)
#define ember_atomic_add_acq_rel(p, v)      atomic_fetch_add_explicit((p), (v), memory_order_acq_rel)
#define ember_atomic_add_seq_cst(p, v)      atomic_fetch_add_explicit((p), (v), memory_order_seq_cst)
#define ember_atomic_sub_relaxed(p, v)      atomic_fetch_sub_explicit((p), (v), memory_order_relaxed)
#define ember_atomic_sub_release(p, v)      atomic_fetch_sub_explicit((p), (v), memory_order_release)
#define ember_atomic_sub_acq_rel(p, v)      atomic_fetch_sub_explicit((p), (v), memory_order_acq_rel)
#define ember_atomic_sub_seq_cst(p, v)      atomic_fetch_sub_explicit((p), (v), memory_order_seq_cst)
#define ember_atomic_cas_acq_rel(p, expp, v) \
    atomic_compare_exchange_strong_explicit((p), (expp), (v), memory_order_acq_rel, memory_order_acquire)
#define ember_atomic_cas_weak_acq_rel(p, expp, v) \
    atomic_compare_exchange_weak_explicit((p), (expp), (v), memory_order_acq_rel, memory_order_acquire)
#define ember_atomic_cas_relaxed(p, expp, v) \
    atomic_compare_exchange_strong_explicit((p), (expp), (v), memory_order_relaxed, memory_order_relaxed)
#define ember_atomic_or_seq_cst(p, v)       atomic_fetch_or_explicit((p), (v), memory_order_seq_cst)
#define ember_atomic_or_acq_rel(p, v)       atomic_fetch_or_explicit((p), (v), memory_order_acq_rel)
#define ember_atomic_exchange_seq_cst(p, v) atomic_exchange_explicit((p), (v), memory_order_seq_cst)
#define ember_atomic_fence_seq_cst()        atomic_thread_fence(memory_order_seq_cst)
#define ember_atomic_fence_release()        atomic_thread_fence(memory_order_release)

/* CPU relax hint for spin loops. */
static inline void ember_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif /* EMBER_COMMON_H */
