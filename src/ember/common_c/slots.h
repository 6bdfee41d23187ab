/*
 * slots.h -- the process-slots table: what each process of a runtime is
 * blocked on, readable from any other process (`ember ps`).  See slots.c.
 *
 * slots.c is compiled once, into ember.pools_c._pools (so the process has
 * one binding, one slot); the channels and sync extensions call these
 * functions through the pool API table (pool_api.h, pool_api_import.c).
 */
#ifndef EMBER_SLOTS_H
#define EMBER_SLOTS_H

#include "ember_common.h"

#define EMBER_SLOTS_MAGIC    0x31544f4c534d45ull   /* "EMSLOT1" */
#define EMBER_SLOTS_VERSION  1u
#define EMBER_SLOTS_COUNT    16384u                /* slots; a process uses p_uid % COUNT */
#define EMBER_SLOTS_BYTES    ((size_t)(EMBER_SLOTS_COUNT + 1) * EMBER_CACHE_LINE)

/* What a waiter does (ember_slot_t.xop). */
enum {
    EMBER_WAIT_NONE = 0,
    EMBER_WAIT_RECV = 1,        /* a receive on xc_uid (or poll for readable) */
    EMBER_WAIT_SEND = 2,        /* a send on xc_uid (or poll for writable)    */
    EMBER_WAIT_ANY_RECV = 3,    /* wait_any(readable) over xcount channels, first xc_uid */
    EMBER_WAIT_ANY_SEND = 4,    /* wait_any(writable) over xcount channels, first xc_uid */
    /* A synchronization object (sync_c): xc_uid is the m_uid of its pool,
     * xobj the offset of its allocation there, xcount its kind
     * (EMBER_SYNC_LOCK ... of sync.h). */
    EMBER_WAIT_ACQUIRE = 5,     /* Lock/RLock/Semaphore acquire */
    EMBER_WAIT_SYNC = 6         /* Event/Condition wait, Barrier wait */
};

/* One record, as a reader copies it out. */
typedef struct {
    uint64_t p_uid;
    uint64_t c_uid;
    int64_t since_ns;           /* CLOCK_REALTIME when the wait began */
    uint32_t op;
    uint32_t tid;
    uint32_t count;
    uint32_t pid;
    uint64_t obj;               /* EMBER_WAIT_ACQUIRE/SYNC: the object's offset in its pool */
} ember_slot_rec_t;

/* Bind this process to slot p_uid % COUNT of the table at `base` (a shared
 * mapping of EMBER_SLOTS_BYTES; its header is written here if it is blank).
 * base NULL unbinds.  A forked child is unbound until it binds again. */
ember_rc_t ember_slots_bind(void *base, size_t len, uint64_t p_uid);

/* In a child made by a raw clone() (no pthread_atfork handler ran): what
 * the fork handler does (unbind; forget the thread id; refresh the pid). */
void ember_slots_after_clone(void);

/* The sleep path only: record / clear what the calling thread waits on.
 * No system call; a no-op when the process is unbound.  `obj` is 0 for a
 * channel wait. */
void _ember_slot_wait_begin(uint32_t op, uint64_t c_uid, uint32_t count, uint64_t obj);
void _ember_slot_wait_end(void);

/* Copy out the records of the table at `base` whose wait is in progress:
 * at most `cap` into `out`; *n gets how many.  EMBER_ERR_BAD_MAGIC /
 * EMBER_ERR_VERSION for a table that is not one. */
ember_rc_t ember_slots_read(const void *base, size_t len, ember_slot_rec_t *out, size_t cap,
                            size_t *n);

#endif
