/*
 * channel.h -- public API of ember's shared-memory channels.
 *
 * A channel is a bounded multi-producer multi-consumer message queue that
 * lives in one allocation of a pool (pool.h).  Any process that can attach
 * the pool can attach the channel from its serialized descriptor.  The
 * algorithm, its memory-order argument and its death-robustness argument are
 * in channel.c; the layout is documented in docs/channels.md.
 *
 * Every fallible function returns ember_rc_t (EMBER_OK == 0) and passes
 * results through out-parameters.  "Full" and "empty" (try-once or the
 * timeout ran out) are the return codes EMBER_ERR_FULL / EMBER_ERR_EMPTY.
 *
 * Timeouts are in nanoseconds: < 0 waits forever, 0 tries once, > 0 waits at
 * most that long.  A blocking call returns EMBER_ERR_INTERRUPTED when its
 * futex wait was interrupted by a signal (EINTR), so a caller (the Python
 * binding) can run its signal handlers and call again with the time left.
 *
 * Thread safety: a channel handle may be used by any number of threads at
 * once, except ember_ch_detach / ember_ch_destroy, which must be the last
 * call on a handle.
 */
#ifndef EMBER_CHANNEL_H
#define EMBER_CHANNEL_H

#include <stdint.h>
#include <stddef.h>
#include "../common_c/ember_common.h"
#include "../pools_c/pool.h"

#define EMBER_CH_SDESC_SIZE        152u       /* serialized channel descriptor */
#define EMBER_CH_SLOT_HEADER       16u        /* bytes of each slot before its payload */
#define EMBER_CH_MIN_BLOCK         64u        /* smallest block_size */
#define EMBER_CH_MAX_BLOCK         (1u << 24) /* largest block_size (16 MiB) */
#define EMBER_CH_MAX_CAPACITY      (1u << 24) /* largest capacity (slots) */
#define EMBER_CH_DEFAULT_CAPACITY  128u
#define EMBER_CH_DEFAULT_BLOCK     1024u
#define EMBER_CH_DEFAULT_SPIN_NS   20000      /* adaptive spin before sleeping */

/* Process-local handle of an attached channel (opaque). */
typedef struct ember_ch ember_ch_t;

/* A message claimed by ember_ch_recv_begin: `data`/`len` are valid until
 * ember_ch_recv_end, which must follow soon (the slot is held until then).
 *   is_alloc == 0: `data` points into the channel slot.
 *   is_alloc == 1: the message is the pool allocation `alloc` (payload at
 *                  `data`).  ember_ch_recv_end frees it and releases the
 *                  slot; or ember_ch_recv_take releases the slot and hands
 *                  the allocation to the caller (zero-copy; the caller
 *                  frees it), after which ember_ch_recv_end is a no-op. */
typedef struct {
    const void *data;
    uint64_t len;
    int is_alloc;
    ember_alloc_t alloc;
    uint64_t pos_;          /* internal: the claimed position */
    void *slot_;            /* internal: the claimed slot (NULL if released) */
} ember_ch_msg_t;

/* Create a channel in `pool`: `capacity` slots (a power of two, 1 ..
 * EMBER_CH_MAX_CAPACITY) of `block_size` bytes (a multiple of 64, 64 ..
 * EMBER_CH_MAX_BLOCK; the inline payload is block_size - 16 bytes).
 * EMBER_ERR_INVALID_ARG for bad sizes, EMBER_ERR_EXHAUSTED if the pool has
 * no room, EMBER_ERR_TOO_BIG if it could never hold the channel. */
ember_rc_t ember_ch_create(ember_pool_t *pool, uint64_t c_uid, uint32_t capacity,
                           uint32_t block_size, ember_ch_t **out);
/* ... with pool allocation flags: EMBER_ALLOC_OWNED records the caller's pid
 * as the channel block's owner, so that ember_pool_reclaim frees it if the
 * caller dies before handing it over (ember_pool_take_owner). */
ember_rc_t ember_ch_create_ex(ember_pool_t *pool, uint64_t c_uid, uint32_t capacity,
                              uint32_t block_size, unsigned flags, ember_ch_t **out);

/* A channel's block made ahead of its create, off a latency-critical path:
 * ember_ch_reserve allocates it (flags as ember_ch_create_ex's: with
 * EMBER_ALLOC_OWNED the reclaim of a dead caller's blocks frees it), makes
 * its slots ready and faults its header in, so that
 * ember_ch_create_reserved -- the channel made in it, as ember_ch_create_ex
 * would make it, with its c_uid -- takes neither the pool's lock nor a page
 * fault.  Each reservation is used once: by ember_ch_create_reserved (the
 * block is the channel's then, or freed if that fails) or given back by
 * ember_ch_unreserve. */
typedef struct {
    ember_alloc_t alloc;
    uint32_t capacity, block_size;
} ember_ch_reserved_t;
ember_rc_t ember_ch_reserve(ember_pool_t *pool, uint32_t capacity, uint32_t block_size,
                            unsigned flags, ember_ch_reserved_t *out);
ember_rc_t ember_ch_create_reserved(ember_pool_t *pool, const ember_ch_reserved_t *r,
                                    uint64_t c_uid, ember_ch_t **out);
ember_rc_t ember_ch_unreserve(ember_pool_t *pool, const ember_ch_reserved_t *r);

/* Check a serialized channel descriptor (length, magic, version, checksum,
 * fields) and give the embedded pool descriptor, so the caller can attach
 * the pool before ember_ch_attach.  EMBER_ERR_BAD_DESCRIPTOR if invalid. */
ember_rc_t ember_ch_sdesc_pool(const void *sdesc, size_t len,
                               const uint8_t **pool_sdesc, size_t *pool_sdesc_len);

/* The fields of a descriptor that ember_ch_sdesc_pool accepts, read without
 * attaching anything (global services checks a channel a client made and
 * registers, without mapping its pool). */
typedef struct {
    uint64_t offset, id, size;      /* the channel's allocation in its pool */
    uint64_t c_uid;
    uint32_t capacity, block_size;
} ember_ch_sdesc_info_t;
ember_rc_t ember_ch_sdesc_info(const void *sdesc, size_t len, ember_ch_sdesc_info_t *out);

/* Attach a channel of `pool` from its descriptor.  EMBER_ERR_BAD_DESCRIPTOR
 * for a truncated / corrupt descriptor or one of another pool;
 * EMBER_ERR_DESTROYED if the channel's allocation is gone; EMBER_ERR_BAD_MAGIC
 * / EMBER_ERR_VERSION / EMBER_ERR_CORRUPT if the header does not match. */
ember_rc_t ember_ch_attach(ember_pool_t *pool, const void *sdesc, size_t len, ember_ch_t **out);

/* Write the descriptor (exactly EMBER_CH_SDESC_SIZE bytes). */
ember_rc_t ember_ch_serialize(const ember_ch_t *ch, void *buf, size_t cap, size_t *len);

/* Free the local handle; the channel stays. */
ember_rc_t ember_ch_detach(ember_ch_t *ch);

/* Mark the channel destroyed (blocked and later callers in other processes
 * get EMBER_ERR_DESTROYED), free the allocations of queued large messages,
 * free the channel's allocation and the handle.  No other process may still
 * be inside a call on the channel when its memory is reused: the owner
 * (global services) destroys only channels nobody uses any more.  A stale
 * handle (its channel already destroyed through another handle, the block
 * perhaps holding another channel by now) gets EMBER_ERR_DESTROYED and
 * changes nothing; the handle is freed either way. */
ember_rc_t ember_ch_destroy(ember_ch_t *ch);

/* ember_ch_destroy by the channel's last user: every other process that
 * ever used the channel is dead, and the caller has no call of its own on
 * it in flight (a Process's parent once its child has exited).  The busy
 * counts are ended first (HAND-OVER), so that a process killed inside its
 * hand-over window (between its FULL/FREE store and the end of its notify)
 * does not leave the channel's block allocated for ever: it is freed here.
 * Called with another user alive, a block may be freed under it. */
ember_rc_t ember_ch_destroy_last(ember_ch_t *ch);

/* In a child made by a raw clone() (no pthread_atfork handler ran): refresh
 * the cached pid that slot states record (channel.c's copy). */
void ember_ch_after_clone(void);

/* Tests only: the calling thread pauses `ns` nanoseconds inside every
 * hand-over window (after a send's FULL store or a receive's FREE store,
 * before the notify that follows); 0 ends it. */
void ember_ch_debug_handover_pause(int64_t ns);

/* Tests only: every send (receive) of the calling thread pauses after its
 * claim, before it writes (reads) its slot, for `ns` nanoseconds or until
 * 0.2 s after it sees its channel destroyed; 0 ends it. */
void ember_ch_debug_claim_pause(int64_t ns);

/* Close the channel: no more sends (EMBER_ERR_CLOSED for every send that
 * had not claimed its slot before the close), while receivers drain what
 * was sent before and then get EMBER_ERR_CLOSED instead of
 * EMBER_ERR_EMPTY.  Wakes every blocked sender, receiver and
 * ember_ch_wait_any of the channel.  Idempotent; one atomic step (a
 * closer killed at any instruction leaves the channel open or closed,
 * never half).  EMBER_ERR_DESTROYED for a destroyed channel. */
ember_rc_t ember_ch_close(ember_ch_t *ch);

/* 1 once the channel was closed (by any handle in any process), else 0. */
int ember_ch_is_closed(const ember_ch_t *ch);

/* Send `len` bytes (len may be 0).  Messages up to the inline payload are
 * copied into the slot; larger ones into a new allocation of the channel's
 * pool (EMBER_ERR_TOO_BIG if larger than the pool could ever hold,
 * EMBER_ERR_EXHAUSTED if the pool is full right now).  EMBER_ERR_FULL if no
 * slot became free within the timeout; EMBER_ERR_CLOSED once closed. */
ember_rc_t ember_ch_send(ember_ch_t *ch, const void *data, uint64_t len, int64_t timeout_ns);

/* A try-once inline send that wakes nobody: the message is queued (a
 * receiver that polls or spins gets it) but a sleeping receiver is not
 * woken until ember_ch_notify().  For a sender that must queue a message
 * before it wakes others, and wake its receiver last (the join wake board:
 * docs/channels.md).  EMBER_ERR_TOO_BIG above the inline payload,
 * EMBER_ERR_FULL, EMBER_ERR_CLOSED.  A sender that dies before its notify
 * leaves a sleeping receiver asleep until its next futex slice (50 ms) or
 * any other send: a delay, never a lost message. */
ember_rc_t ember_ch_send_quiet(ember_ch_t *ch, const void *data, uint64_t len);

/* Wake the channel's sleeping receivers (after ember_ch_send_quiet).  The
 * caller must know the channel is not destroyed meanwhile (checked, not
 * guarded: EMBER_ERR_DESTROYED). */
ember_rc_t ember_ch_notify(ember_ch_t *ch);

/* Send an existing allocation of the channel's pool as a message of
 * `a->size` bytes, without copying.  On EMBER_OK ownership moved to the
 * channel (the receiver frees it); on any error the caller still owns it. */
ember_rc_t ember_ch_send_alloc(ember_ch_t *ch, const ember_alloc_t *a, int64_t timeout_ns);

/* Two-phase receive: claim the oldest message.  If max_len >= 0 and the
 * message is longer, nothing is claimed: EMBER_ERR_BUFFER_TOO_SMALL with
 * msg->len set to the message length.  Inline messages must be released
 * with ember_ch_recv_end promptly (the slot is held until then).
 * EMBER_ERR_CLOSED: closed and every message sent before the close was
 * received.  EMBER_ERR_CORRUPT: the message's length or pool block read
 * from shared memory is impossible (an inline length beyond the slot, a
 * block outside the pool or not allocated); the message is dropped (its
 * slot released, msg->len = the length read, msg->is_alloc says which kind,
 * msg->alloc names the bad block) and the channel goes on. */
ember_rc_t ember_ch_recv_begin(ember_ch_t *ch, int64_t timeout_ns, int64_t max_len,
                               ember_ch_msg_t *msg);
ember_rc_t ember_ch_recv_end(ember_ch_t *ch, ember_ch_msg_t *msg);
/* Take over the allocation of a large message (is_alloc == 1); releases the
 * slot.  EMBER_ERR_INVALID_ARG for an inline message or a second take. */
ember_rc_t ember_ch_recv_take(ember_ch_t *ch, ember_ch_msg_t *msg);

/* Receive into a caller buffer (one copy; a large message's allocation is
 * freed).  EMBER_ERR_BUFFER_TOO_SMALL (message left queued, *len = its
 * length) if it does not fit. */
ember_rc_t ember_ch_recv(ember_ch_t *ch, void *buf, uint64_t cap, uint64_t *len,
                         int64_t timeout_ns);

/* Wait until the channel is readable (writable != 0: writable).  EMBER_OK
 * when it is, EMBER_ERR_EMPTY / EMBER_ERR_FULL when the timeout ran out,
 * EMBER_ERR_CLOSED when closed (and drained, for readable). */
ember_rc_t ember_ch_poll(ember_ch_t *ch, int writable, int64_t timeout_ns);

/* Wait until at least one of `n` channels is readable (writable != 0:
 * writable); a closed channel (drained, for readable) counts as ready, so
 * does a corrupt one (the receive or send that follows fails at once).
 * ready[i] is set to 1 for each ready channel, 0 otherwise,
 * *nready to their number.  EMBER_ERR_TIMEOUT when none became ready in
 * time.  Channels of one pool sleep on the pool's event word; channels of
 * several pools sleep on the first pool's word in slices of at most 1 ms. */
ember_rc_t ember_ch_wait_any(ember_ch_t *const *chs, size_t n, int writable,
                             int64_t timeout_ns, uint8_t *ready, size_t *nready);

/* Messages queued right now (a snapshot; in-flight sends and receives may
 * be counted either way). */
uint64_t ember_ch_count(const ember_ch_t *ch);

/* Wait until fewer than `n` messages are queued (a receiver took one: its
 * claim moved the tail; its release wakes this wait), at most
 * `timeout_ns` (< 0: no limit).  EMBER_OK; EMBER_ERR_FULL on timeout;
 * EMBER_ERR_INTERRUPTED on a signal; EMBER_ERR_DESTROYED.  What a death
 * costs: a receiver killed after its claim counts as having taken it; a
 * waiter killed leaves the senders' sleepers flag raised (one needless
 * FUTEX_WAKE). */
ember_rc_t ember_ch_wait_below(ember_ch_t *ch, uint64_t n, int64_t timeout_ns);

/* Accessors. */
uint32_t ember_ch_capacity(const ember_ch_t *ch);
uint32_t ember_ch_block_size(const ember_ch_t *ch);
uint32_t ember_ch_payload_size(const ember_ch_t *ch);      /* inline bytes per slot */
uint64_t ember_ch_c_uid(const ember_ch_t *ch);
ember_pool_t *ember_ch_pool(const ember_ch_t *ch);
const ember_alloc_t *ember_ch_alloc(const ember_ch_t *ch);   /* the channel's own allocation */

/* Tuning: the longest spin (ns) before a blocked call sleeps on its futex
 * (0 = sleep at once).  Per handle. */
void ember_ch_set_spin(ember_ch_t *ch, int64_t spin_ns);
/* As ember_ch_set_spin, with the floor of the adaptive shrink given
 * (ember_ch_set_spin uses spin_ns / 8).  min_ns == max_ns: a fixed spin, for
 * request/reply channels where a short spin would never pay off once the
 * peer sleeps (both sides would then stay in the slow, sleeping mode). */
void ember_ch_set_spin_range(ember_ch_t *ch, int64_t min_ns, int64_t max_ns);

#endif /* EMBER_CHANNEL_H */
