/*
 * wakeboard.h -- the creator's side of the join wake board in C: a named
 * channel's creator publishes it to the joiners parked on its name and
 * wakes them, in one call (docs/channels.md, "The join wake board").
 *
 * The board (its layout, who writes what, and what a death at any point
 * costs) is described in src/ember/globalservices/wakeboard.py, which
 * holds GS's side; wakeboard.c is the creator's side of the same protocol,
 * byte for byte, and its opening comment says what its own steps cost when
 * the creator dies between them.
 */
#ifndef EMBER_WAKEBOARD_H
#define EMBER_WAKEBOARD_H

#include <stdint.h>
#include <stddef.h>
#include "channel.h"

/* The board's geometry (wakeboard.py's constants; checked against them by
 * the binding at import). */
#define EMBER_WB_HDR          64u
#define EMBER_WB_N_ENTRIES    64u
#define EMBER_WB_ENTRY        1024u
#define EMBER_WB_MAX_NAME     96u
#define EMBER_WB_MAX_WAITERS  5u
#define EMBER_WB_R_MAX        160u
#define EMBER_WB_SIZE         (EMBER_WB_HDR + EMBER_WB_N_ENTRIES * EMBER_WB_ENTRY)

/* Entry states. */
#define EMBER_WB_FREE     0u
#define EMBER_WB_WAITING  1u
#define EMBER_WB_CLAIMED  2u
#define EMBER_WB_WOKEN    3u

/* How long a creator waits for the board's lock before it takes the path
 * through GS (its holder may be stopped). */
#define EMBER_WB_LOCK_WAIT_NS  10000000ll

/* The reply a joiner gets from the board (instead of GS's msgpack Reply,
 * whose first byte is a msgpack array's): a little-endian record.
 *   0  u8  EMBER_WB_REPLY_MARK (0xc1: never the first byte of msgpack)
 *   4  u32 name length
 *   8  u64 tag of the joiner's request
 *  16  i64 m_uid (-1: none)      24  i64 node
 *  32  u64 c_uid                 40  u32 capacity   44  u32 block_size
 *  48  u32 ref_count             52  u32 sdesc length
 *  56  the channel's descriptor (EMBER_CH_SDESC_SIZE bytes)
 * 208  the channel's name (UTF-8, as the board holds it) */
#define EMBER_WB_REPLY_MARK   0xc1u
#define EMBER_WB_REPLY_HEAD   56u
#define EMBER_WB_REPLY_NAME   (EMBER_WB_REPLY_HEAD + EMBER_CH_SDESC_SIZE)
#define EMBER_WB_REPLY_MAX    (EMBER_WB_REPLY_NAME + EMBER_WB_MAX_NAME)

/* messages.ChannelRegisterPublished.code (checked by the tests): the code
 * a posted register is queued with (ember_wb_pub_t.posted). */
#define EMBER_WB_REGISTER_PUBLISHED  130u
/* The longest register a posted publish takes (its code is one byte longer
 * in msgpack: 0xcc 0x82; GS's input channel's payload is less). */
#define EMBER_WB_POSTED_MAX          2048u

/* The joiners' reply channels a creator attached, kept from one publish to
 * the next (process-private: a joiner that parks again on its thread's
 * reply channel is not attached again, which takes the infrastructure
 * pool's lock; wakeboard.c says why a kept handle is safe to use).  Zero
 * it to start; ember_wb_cache_clear() detaches what it holds. */
#define EMBER_WB_CACHE  EMBER_WB_MAX_WAITERS
typedef struct {
    ember_ch_t *ch[EMBER_WB_CACHE];             /* NULL: a free entry */
    uint32_t len[EMBER_WB_CACHE];
    uint8_t desc[EMBER_WB_CACHE][EMBER_WB_R_MAX];
    uint32_t next;                              /* the next entry to replace */
} ember_wb_cache_t;

void ember_wb_cache_clear(ember_wb_cache_t *c);

/* What the creator publishes. */
typedef struct {
    void *table;                /* the board (EMBER_WB_SIZE bytes, mapped) */
    void *lock;                 /* its ember Lock (sync.h) */
    ember_pool_t *reply_pool;   /* the pool of the joiners' reply channels */
    ember_ch_t *gs;             /* GS's input channel */
    const uint8_t *name;        /* the channel's name, UTF-8 */
    size_t name_len;
    uint64_t p_uid, c_uid;      /* the creator, the channel */
    int64_t m_uid, node;        /* the channel's pool and node, as GS reports them */
    uint32_t capacity, block_size, ref_count;
    const uint8_t *sdesc;       /* the channel's descriptor (EMBER_CH_SDESC_SIZE) */
    const uint8_t *reg;         /* the creator's ChannelRegister, packed (its code a
                                 * positive fixint at reg[1]) */
    size_t reg_len;
    int posted;                 /* nonzero: a register GS answers nothing to (the c_uid is
                                 * one of the creator's post_c_uids): queued with the code
                                 * EMBER_WB_REGISTER_PUBLISHED instead (reg itself is left
                                 * as it is: the waited register, for the caller to send if
                                 * nothing was claimed), and GS is not woken */
    ember_wb_cache_t *cache;    /* the reply channels kept attached (NULL: attach each time) */
    int test_stop;              /* tests: SIGSTOP self at stage 4 created (before the lock),
                                 * 1 claimed, 2 queued, 3 answered (not woken yet), 5 woken
                                 * (the lock released) */
} ember_wb_pub_t;

/* Claim the name's entry (it must be WAITING for this name), queue the
 * register on GS's input channel without waking GS, queue every listed
 * joiner's answer on its reply channel, release the board, wake the
 * joiners answered (a FUTEX_WAKE on the channel each sleeps on), then GS
 * (not for a posted register: GS finds it at its next input or slice).
 * Returns the number of joiners answered (>= 0: the register was queued),
 * or -1 if nothing was claimed (no board entry for the name, the lock
 * stayed busy, GS's input channel full): the caller sends the register
 * itself. */
int ember_wb_publish(const ember_wb_pub_t *p);

/* The board entry's index of a name: crc32 (zlib's, as Python's
 * binascii.crc32) modulo EMBER_WB_N_ENTRIES. */
uint32_t ember_wb_index(const uint8_t *name, size_t len);

#endif /* EMBER_WAKEBOARD_H */
