/*
 * wakeboard.c -- the creator's side of the join wake board (wakeboard.h).
 *
 * WHY IN C
 * --------
 * A joiner parked on a name is woken by the channel's creator itself, GS
 * off the path (src/ember/globalservices/wakeboard.py).  Done in Python,
 * the creator's walk from its create call to the joiner's futex wake cost
 * ~5-8 bare wake-ups on the project's VM: every Python line right after a
 * sleep runs on a cold CPU.  Here the whole publish is one call: claim the
 * entry, queue the register for GS, write each joiner a fixed binary reply
 * (no msgpack on either side) on its reply channel, release, wake the
 * joiners (the FUTEX_WAKE of each joiner asleep in its receive), wake GS.
 *
 * THE STEPS (all under the board's robust lock, except the last)
 * ---------------------------------------------------------------
 *   1. the entry must be WAITING, with joiners listed, for this very name;
 *   2. p_uid, c_uid, answered = 0; then state CLAIMED (store-release);
 *   3. the register is queued on GS's input channel, not waking GS
 *      (ember_ch_send_quiet; FULL: state back to WAITING, return -1);
 *   4. state WOKEN (store-release); then for each listed joiner k: attach
 *      its reply channel (or take the handle kept attached since an earlier
 *      publish, ember_wb_cache_t), queue the reply without waking the joiner
 *      (ember_ch_send_quiet, try-once), answered = k + 1 (store-release);
 *   5. release the lock; wake each answered joiner (ember_ch_notify on its
 *      reply channel), then GS, unless the register is a posted one
 *      (ChannelRegisterPublished: the creator waits for no answer; GS finds
 *      it at its next input, anyone's, or its 50 ms slice).  The joiners
 *      are woken after the release because the kernel often runs a woken
 *      joiner on the creator's own CPU at once: woken under the lock, it
 *      kept the board held while it ran, and GS, finding it busy at the
 *      joiner's next join, left that join off the board.
 *
 * MEMORY ORDERS
 * -------------
 * Between processes every entry word is read and written under the board's
 * lock (sync.c: its acquire/release order them).  The stores below are
 * atomic only so that a death at any instruction leaves them in program
 * order: each release store of a state word or count is the last store of
 * its step and pairs with nothing across processes but the lock; it keeps
 * the compiler (and the CPU) from moving the step's earlier stores after
 * it, so the next holder (told OWNER_DIED) sees a step either whole or not
 * at all through the word that says which step was reached.  The reply
 * itself is published by the channel's send (its store-release of the slot
 * FULL, paired with the receiver's acquire load: channel.c).
 *
 * DEATH OF THE CREATOR MID-OPERATION (SIGKILL at any instruction)
 * ---------------------------------------------------------------
 * The lock is robust: the next acquirer (GS or another creator) is told,
 * marks it consistent and goes on.  What the death costs, by step:
 *   - after the channel is made (in a block the creator made ahead,
 *     ember_ch_reserve, or a new one), before 2's store of CLAIMED: nothing
 *     on the board changed (stray p_uid/c_uid in a WAITING entry are never
 *     read: only CLAIMED/WOKEN entries' are); the channel's block, owned by
 *     the creator (EMBER_ALLOC_OWNED), goes with the node's reclaim of a
 *     dead process's blocks (as does a block it made ahead and had not
 *     used yet); the joiners stay parked;
 *   - CLAIMED, register not queued (inside 3 before the slot is FULL): GS,
 *     at the creator's exit, puts the entry back to WAITING; its joiners
 *     stay parked, answered by the next create of the name.  The channel's
 *     block, still owned by the dead creator, goes with its reclaim;
 *   - register queued (CLAIMED or WOKEN): GS handles the register,
 *     registers the channel and answers every listed joiner beyond the
 *     `answered` count (a joiner answered just before a death that came
 *     before its count was stored gets a second, identical reply: the
 *     joiner's call drops a reply whose tag it does not wait for);
 *   - between 4 and 5, or inside 5 (lock released, some answered joiners
 *     or GS not woken): each of them finds its message at the end of its
 *     wait's 50 ms slice (GS also at the exit notice): a delay, nothing
 *     lost (a posted register is never followed by a wake: the same).
 * A posted register (ChannelRegisterPublished) changes none of this: it is
 * the same register with another code, and the creator, which waits for no
 * answer, hands its channel's block over right after this call; killed
 * before that, the block is still its own, and the node's reclaim of a dead
 * process's blocks may free it before GS has it adopted (joiners answered
 * then hold a channel that is gone, as with a waited register whose
 * creator dies waiting for GS's answer).
 * A joiner killed while listed is unlisted by GS (at its exit) before GS
 * frees its reply channel, and the unlist needs the lock this call holds,
 * so a reply channel attached here is never one being freed while it is
 * held.  The same rule makes a kept handle (ember_wb_cache_t) safe: it is
 * used only for a waiter whose listed descriptor is byte for byte the one
 * it was attached from (the block's offset and allocation id included, and
 * ids are unique per allocation), read under the lock, so the channel it
 * names is live; the send checks the header's magic and allocation id as
 * on any handle (a destroyed channel: not answered, and the handle
 * dropped).  The cache is this process's memory: a death mid-publish costs
 * nothing more than above.  Its wake-up comes after the release: a joiner killed right after
 * its answer may have its reply channel freed by GS first; the notify then
 * finds the handle stale (ember_ch_notify checks the block's allocation id)
 * and wakes nobody, or at worst, racing that free, one stray FUTEX_WAKE on
 * memory still mapped in the infrastructure pool, which every futex waiter
 * re-checks.
 */
#include "wakeboard.h"
#include "../sync_c/sync.h"

#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

/* Entry layout (wakeboard.py: _E_HEAD "<IIQQII", _NAME_OFF, _W_OFF,
 * _W_SIZE with _W_HEAD "<QI"). */
#define E_STATE     0u
#define E_NAME_LEN  4u
#define E_P_UID     8u
#define E_C_UID     16u
#define E_LISTED    24u
#define E_ANSWERED  28u
#define E_NAME      32u
#define E_WAITERS   (E_NAME + EMBER_WB_MAX_NAME)
#define W_TAG       0u
#define W_LEN       8u
#define W_DESC      16u
#define W_SIZE      (W_DESC + EMBER_WB_R_MAX)
_Static_assert(E_WAITERS + EMBER_WB_MAX_WAITERS * W_SIZE <= EMBER_WB_ENTRY, "entry layout");
_Static_assert(EMBER_WB_REPLY_MAX <= 1024u - EMBER_CH_SLOT_HEADER, "a reply fits a reply slot");
_Static_assert(EMBER_WB_REGISTER_PUBLISHED > 0x7fu && EMBER_WB_REGISTER_PUBLISHED <= 0xffu,
               "the posted code is a msgpack uint8 (0xcc, code)");

static inline _Atomic uint32_t *w32(uint8_t *e, size_t off)
{
    return (_Atomic uint32_t *)(void *)(e + off);
}

static inline _Atomic uint64_t *w64(uint8_t *e, size_t off)
{
    return (_Atomic uint64_t *)(void *)(e + off);
}

uint32_t ember_wb_index(const uint8_t *name, size_t len)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < len; i++) {
        c ^= name[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return (c ^ 0xffffffffu) % EMBER_WB_N_ENTRIES;
}

static void test_stop(const ember_wb_pub_t *p, int stage)
{
    if (p->test_stop == stage)
        kill(getpid(), SIGSTOP);
}

static void put64(uint8_t *b, uint64_t v) { memcpy(b, &v, 8); }

void ember_wb_cache_clear(ember_wb_cache_t *c)
{
    if (!c)
        return;
    for (uint32_t i = 0; i < EMBER_WB_CACHE; i++) {
        if (c->ch[i])
            ember_ch_detach(c->ch[i]);
        c->ch[i] = NULL;
        c->len[i] = 0;
    }
    c->next = 0;
}

/* The kept handle attached from this very descriptor, or NULL. */
static ember_ch_t *cache_find(ember_wb_cache_t *c, const uint8_t *desc, uint32_t len)
{
    for (uint32_t i = 0; i < EMBER_WB_CACHE; i++)
        if (c->ch[i] && c->len[i] == len && memcmp(c->desc[i], desc, len) == 0)
            return c->ch[i];
    return NULL;
}

/* Forget (and detach) a kept handle. */
static void cache_drop(ember_wb_cache_t *c, ember_ch_t *ch)
{
    for (uint32_t i = 0; i < EMBER_WB_CACHE; i++)
        if (c->ch[i] == ch) {
            c->ch[i] = NULL;
            c->len[i] = 0;
        }
    ember_ch_detach(ch);
}

/* Keep a handle, replacing the oldest kept one (detached). */
static void cache_put(ember_wb_cache_t *c, const uint8_t *desc, uint32_t len, ember_ch_t *ch)
{
    uint32_t i = c->next % EMBER_WB_CACHE;
    c->next = i + 1;
    if (c->ch[i])
        ember_ch_detach(c->ch[i]);
    c->ch[i] = ch;
    c->len[i] = len;
    memcpy(c->desc[i], desc, len);
}
static void put32(uint8_t *b, uint32_t v) { memcpy(b, &v, 4); }

int ember_wb_publish(const ember_wb_pub_t *p)
{
    if (!p->table || !p->lock || !p->gs || !p->reply_pool || !p->sdesc || !p->reg ||
        p->reg_len < 2 || p->reg[1] > 0x7f || p->name_len == 0 ||
        p->name_len > EMBER_WB_MAX_NAME || (p->posted && p->reg_len >= EMBER_WB_POSTED_MAX))
        return -1;
    /* A posted register: the same message with its code (a positive fixint
     * in reg[1]) replaced by EMBER_WB_REGISTER_PUBLISHED, a uint8 (0xcc,
     * code) in msgpack, beyond the fixints. */
    const uint8_t *reg = p->reg;
    size_t reg_len = p->reg_len;
    uint8_t posted_reg[EMBER_WB_POSTED_MAX];
    if (p->posted) {
        posted_reg[0] = p->reg[0];
        posted_reg[1] = 0xcc;
        posted_reg[2] = (uint8_t)EMBER_WB_REGISTER_PUBLISHED;
        memcpy(posted_reg + 3, p->reg + 2, p->reg_len - 2);
        reg = posted_reg;
        reg_len = p->reg_len + 1;
    }
    uint8_t *e = (uint8_t *)p->table + EMBER_WB_HDR +
                 (size_t)ember_wb_index(p->name, p->name_len) * EMBER_WB_ENTRY;
    test_stop(p, 4);            /* the channel made, nothing on the board yet */
    uint32_t died = 0;
    ember_rc_t rc = ember_lock_acquire(p->lock, EMBER_WB_LOCK_WAIT_NS, 1, &died);
    if (rc == EMBER_SYNC_OWNER_DIED) {
        /* the entries are consistent at every instruction (see above):
         * nothing to repair */
        ember_lock_consistent(p->lock);
    } else if (rc != EMBER_OK) {
        return -1;              /* busy (a holder stopped) or a signal: through GS */
    }
    int answered = -1;
    ember_ch_t *woken[EMBER_WB_MAX_WAITERS] = { NULL };   /* the answered joiners' channels */
    int kept[EMBER_WB_MAX_WAITERS] = { 0 };      /* woken[k] is a kept handle */
    /* the descriptors of those attached here, to keep after the release */
    uint8_t desc[EMBER_WB_MAX_WAITERS][EMBER_WB_R_MAX];
    uint32_t dlen[EMBER_WB_MAX_WAITERS] = { 0 };
    /* relaxed: under the lock (its acquire orders these loads) */
    uint32_t state = ember_atomic_load_relaxed(w32(e, E_STATE));
    uint32_t n = ember_atomic_load_relaxed(w32(e, E_LISTED));
    if (state != EMBER_WB_WAITING || n == 0 || n > EMBER_WB_MAX_WAITERS ||
        ember_atomic_load_relaxed(w32(e, E_NAME_LEN)) != p->name_len ||
        memcmp(e + E_NAME, p->name, p->name_len) != 0)
        goto out;

    /* 2. claim */
    ember_atomic_store_relaxed(w64(e, E_P_UID), p->p_uid);
    ember_atomic_store_relaxed(w64(e, E_C_UID), p->c_uid);
    ember_atomic_store_relaxed(w32(e, E_ANSWERED), 0u);
    /* release: the claimant's ids before CLAIMED (a death in between is
     * seen through the state word; see the header) */
    ember_atomic_store_release(w32(e, E_STATE), EMBER_WB_CLAIMED);
    test_stop(p, 1);

    /* 3. the register, queued without waking GS (a posted one with its
     * own code: GS answers it nothing) */
    if (ember_ch_send_quiet(p->gs, reg, reg_len) != EMBER_OK) {
        /* release: back to WAITING as the last store of the step */
        ember_atomic_store_release(w32(e, E_STATE), EMBER_WB_WAITING);
        goto out;
    }
    test_stop(p, 2);

    /* 4. answer the joiners */
    /* release: ordered after the register's send (its slot store-release)
     * for a death between them (GS finds WOKEN only with a register queued) */
    ember_atomic_store_release(w32(e, E_STATE), EMBER_WB_WOKEN);
    uint8_t reply[EMBER_WB_REPLY_MAX];
    memset(reply, 0, EMBER_WB_REPLY_HEAD);
    reply[0] = (uint8_t)EMBER_WB_REPLY_MARK;
    put32(reply + 4, (uint32_t)p->name_len);
    put64(reply + 16, (uint64_t)p->m_uid);
    put64(reply + 24, (uint64_t)p->node);
    put64(reply + 32, p->c_uid);
    put32(reply + 40, p->capacity);
    put32(reply + 44, p->block_size);
    put32(reply + 48, p->ref_count);
    put32(reply + 52, EMBER_CH_SDESC_SIZE);
    memcpy(reply + EMBER_WB_REPLY_HEAD, p->sdesc, EMBER_CH_SDESC_SIZE);
    memcpy(reply + EMBER_WB_REPLY_NAME, p->name, p->name_len);
    answered = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint8_t *w = e + E_WAITERS + (size_t)k * W_SIZE;
        uint64_t tag;
        uint32_t rl;
        memcpy(&tag, w + W_TAG, 8);
        memcpy(&rl, w + W_LEN, 4);
        if (rl > EMBER_WB_R_MAX)
            break;              /* (not expected) GS answers this one and those after it */
        woken[k] = p->cache ? cache_find(p->cache, w + W_DESC, rl) : NULL;
        if (woken[k]) {
            kept[k] = 1;
        } else {
            if (ember_ch_attach(p->reply_pool, w + W_DESC, rl, &woken[k]) != EMBER_OK)
                break;          /* (not expected) as above */
            memcpy(desc[k], w + W_DESC, rl);
            dlen[k] = rl;
        }
        put64(reply + 8, tag);
        rc = ember_ch_send_quiet(woken[k], reply, EMBER_WB_REPLY_NAME + p->name_len);
        if (rc != EMBER_OK) {
            if (kept[k])
                cache_drop(p->cache, woken[k]);
            else
                ember_ch_detach(woken[k]);
            woken[k] = NULL;
            break;              /* (not expected: a reply channel holds one answer) */
        }
        answered = (int)k + 1;
        /* release: after the reply's send, for a death between them (a
         * joiner answered twice, never one not answered) */
        ember_atomic_store_release(w32(e, E_ANSWERED), (uint32_t)answered);
        test_stop(p, 3);
    }
out:
    ember_lock_release(p->lock);
    /* 5. the joiners' wake-ups, the board free: a joiner that takes this
     * CPU at its wake-up (the kernel often puts it here) no longer leaves
     * the lock held while it runs, where GS would find it busy at the
     * joiner's next join and leave that join off the board */
    for (int k = 0; k < answered; k++) {
        ember_ch_notify(woken[k]);      /* (a channel freed meanwhile: no wake) */
        test_stop(p, 5);
    }
    /* the handles attached here kept for the next publish (after every
     * wake-up: keeping one may detach another) */
    for (int k = 0; k < answered; k++) {
        if (kept[k])
            continue;
        if (p->cache)
            cache_put(p->cache, desc[k], dlen[k], woken[k]);
        else
            ember_ch_detach(woken[k]);
    }
    /* GS last: it does not take the joiner's core.  Not at all for a
     * posted register: nobody waits for GS's handling of it, and every
     * later request wakes GS behind it */
    if (answered >= 0 && !p->posted)
        ember_ch_notify(p->gs);
    return answered;
}
