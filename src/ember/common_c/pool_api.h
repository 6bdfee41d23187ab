/*
 * pool_api.h -- pool.c is compiled once, into ember.pools_c._pools; the
 * other extensions (channels, sync) call it through a table of function
 * pointers that _pools exports in a PyCapsule (the standard CPython C-API
 * pattern).  So every extension works on the same allocator code and the
 * same process-wide state (the lock bound, the pid cache).
 *
 *   _pools:     ember_pool_api_table() (pool_api_export.c) -> the capsule
 *               EMBER_POOL_API_CAPSULE, module attribute _C_API;
 *   _channels,  pool_api_import.c defines each ember_pool_* function of the
 *   _sync:      table below as a one-line call through the table, so
 *               channel.c and the .pyx files keep calling ember_pool_*()
 *               by name; ember_pool_api_set() installs the table at module
 *               init, before any call.
 *
 * The C tests (tests/cffi_build.py, the sanitizer builds) link pool.c
 * itself and use none of this.
 *
 * EMBER_POOL_API(X) lists the functions: X(return type, name without the
 * ember_pool_ prefix, parameter list, argument list).  Add a function here
 * when another extension needs it.
 */
#ifndef EMBER_POOL_API_H
#define EMBER_POOL_API_H

#include "pool.h"
#include "slots.h"

#define EMBER_POOL_API_CAPSULE "ember.pools_c._pools._C_API"

#define EMBER_POOL_API(X)                                                                   \
    X(ember_rc_t, alloc, (ember_pool_t *pool, uint64_t size, ember_alloc_t *out),            \
      (pool, size, out))                                                                    \
    X(ember_rc_t, alloc_wait, (ember_pool_t *pool, uint64_t size, int64_t timeout_ns,        \
                               ember_alloc_t *out), (pool, size, timeout_ns, out))          \
    X(ember_rc_t, free, (ember_pool_t *pool, const ember_alloc_t *a), (pool, a))             \
    X(ember_rc_t, check, (ember_pool_t *pool, const ember_alloc_t *a), (pool, a))            \
    X(void *, ptr, (const ember_pool_t *pool, uint64_t offset), (pool, offset))              \
    X(ember_rc_t, stats, (ember_pool_t *pool, ember_pool_stats_t *out), (pool, out))         \
    X(ember_rc_t, serialize, (const ember_pool_t *pool, void *buf, size_t cap, size_t *len), \
      (pool, buf, cap, len))                                                                \
    X(ember_rc_t, sdesc_name, (const void *sdesc, size_t len, char *buf, size_t cap),        \
      (sdesc, len, buf, cap))                                                               \
    X(uint64_t, size, (const ember_pool_t *pool), (pool))                                    \
    X(const char *, shm_name, (const ember_pool_t *pool), (pool))                            \
    X(_Atomic uint32_t *, event_word, (const ember_pool_t *pool), (pool))                    \
    X(_Atomic uint32_t *, event_waiters, (const ember_pool_t *pool), (pool))                 \
    X(ember_rc_t, alloc_ex, (ember_pool_t *pool, uint64_t size, int64_t timeout_ns,          \
                             unsigned flags, ember_alloc_t *out),                           \
      (pool, size, timeout_ns, flags, out))                                                 \
    X(ember_rc_t, take_owner, (ember_pool_t *pool, const ember_alloc_t *a, uint32_t from,    \
                               uint32_t to), (pool, a, from, to))                           \
    X(ember_rc_t, alloc_pristine, (ember_pool_t *pool, uint64_t size, int64_t timeout_ns,    \
                                   unsigned flags, ember_alloc_t *out, int *pristine),      \
      (pool, size, timeout_ns, flags, out, pristine))

/* The process-slots writer and reader (slots.c, compiled into _pools too:
 * one binding per process whichever extension waits).  X(return type, full
 * name, parameter list, argument list); pool_api_import.c defines each one
 * by its own name. */
#define EMBER_SLOTS_API(X)                                                                  \
    X(ember_rc_t, ember_slots_bind, (void *base, size_t len, uint64_t p_uid),               \
      (base, len, p_uid))                                                                   \
    X(ember_rc_t, ember_slots_read, (const void *base, size_t len, ember_slot_rec_t *out,   \
                                     size_t cap, size_t *n), (base, len, out, cap, n))

#define EMBER_POOL_API_FIELD_(ret, name, params, args) ret (*name) params;
typedef struct {
    size_t table_size;           /* sizeof(ember_pool_api_t): a stale build is refused */
    EMBER_POOL_API(EMBER_POOL_API_FIELD_)
    EMBER_SLOTS_API(EMBER_POOL_API_FIELD_)
    /* (void functions: defined by hand in pool_api_import.c) */
    void (*_ember_slot_wait_begin)(uint32_t op, uint64_t c_uid, uint32_t count, uint64_t obj);
    void (*_ember_slot_wait_end)(void);
} ember_pool_api_t;
#undef EMBER_POOL_API_FIELD_

/* In _pools: the table to export. */
const void *ember_pool_api_table(void);
/* In _channels/_sync: install the imported table; EMBER_ERR_VERSION if it
 * was built from another pool_api.h. */
ember_rc_t ember_pool_api_set(const void *table);

#endif /* EMBER_POOL_API_H */
