/*
 * channel.c -- ember's shared-memory MPMC channels.
 *
 * ALGORITHM
 * ---------
 * A bounded multi-producer multi-consumer queue after Dmitry Vyukov's
 * "bounded MPMC queue" (1024cores.net), extended so that a process killed
 * at any instruction cannot wedge it.
 *
 * The channel is one pool allocation: a header (identity line, then `head`,
 * `tail` and the two futex lines each on their own cache line) followed by
 * `capacity` (a power of two) slots of `block_size` bytes.  Each slot starts
 * with two 64-bit atomic words:
 *
 *   xstate = [position: 40 bits][kind: 2 bits][pid: 22 bits]
 *   xmeta  = [is_alloc: 1 bit][skip: 1 bit][length: 62 bits]
 *
 * then the payload (block_size - 16 bytes): the message itself, or for a
 * large message the (offset, id) of a pool allocation holding it.
 * Positions are counted modulo 2^40 and compared by their signed 40-bit
 * difference (|difference| <= capacity << 2^39).  Linux pids are < 2^22
 * (PID_MAX_LIMIT), so a pid always fits.  The position is STORED
 * slot-relative (XOR the slot's index, see ST_KEY), so (lap 0, FREE) is 0
 * in every slot: a zeroed block is an empty ring, and create initialises
 * the slot headers only of a block that was ever written (the pool says
 * which are pristine, init_slots): a channel made in fresh sparse pool
 * memory costs no page fault and no system call for its slots.
 *
 * Slot life cycle for position p (index p & mask), each arrow one atomic
 * step on xstate:
 *
 *   (p, FREE) --producer CAS--> (p, WRITING, pid) --producer store-release-->
 *   (p, FULL) --consumer CAS--> (p, READING, pid) --consumer store-release-->
 *   (p + capacity, FREE)
 *
 * The SLOT is claimed first (CAS on xstate); the shared counter (head for
 * producers, tail for consumers) is advanced afterwards by a CAS p -> p+1
 * that the claimant does and that anyone who finds the counter stale helps
 * with.  A counter value is only a hint: all mutual exclusion comes from the
 * CAS on xstate, whose expected value carries the position, so there is no
 * ABA (a position is never reused within 2^40 operations on one slot).
 *
 * Producer at pos = head (acquire), st = slot.xstate (acquire):
 *   (pos, FREE)            claim: CAS -> (pos, WRITING, me); help head; copy
 *                          the payload; store-release (pos, FULL); notify.
 *   (pos, other) or ahead  head is stale: CAS head pos -> pos+1, retry.
 *                          ("ahead" happens when a consumer skipped a slot
 *                          whose producer died before advancing head.)
 *   (pos - cap, *)         previous lap not consumed yet: FULL.  If it is
 *                          (pos - cap, READING, pid) and pid is dead, the
 *                          producer takes the claim over (CAS -> READING by
 *                          itself), frees the message's pool allocation if
 *                          it had one, and releases the slot as a consumer
 *                          would: (pos, FREE).
 * Consumer at pos = tail (acquire), st = slot.xstate (acquire):
 *   (pos, FULL)            claim: CAS -> (pos, READING, me); help tail; read;
 *                          store-release (pos + cap, FREE); notify.
 *   (pos, FREE), or (pos - cap, READING)   EMPTY.
 *   (pos, WRITING, pid)    in flight: EMPTY.  If pid is dead: CAS ->
 *                          (pos, READING, me), help tail, store-release
 *                          (pos + cap, FREE).  The dead producer's own
 *                          message is skipped, nothing else.
 *   (pos, READING) / ahead tail is stale: help, retry.
 *
 * CLOSE: one fetch_or of HEAD_CLOSED (bit 63) into head (preceded by a
 * hint in the read-mostly xflags, so that an empty receive reads head's
 * line only after a close began; see empty_or_closed()).  Head's value
 * then is the end E: every head CAS expects a value without the bit, so
 * head never moves again and no producer claims a position after E.  A
 * producer that claimed E itself learns it from its own failed head CAS
 * (it reads E | CLOSED) and gives the slot back, (E, FREE), returning
 * EMBER_ERR_CLOSED.  A consumer that finds nothing at tail position p
 * returns EMBER_ERR_CLOSED iff closed and p >= E.  So close is exact: a
 * send that returned OK is received, one that returned CLOSED is not.
 *
 * DESTROY: the handle's allocation must be live with its id (pool check),
 * and the destroy is claimed by a CAS of the header's xalloc_id from that
 * id to 0 (ids are unique per allocation: a stale handle whose block holds
 * another channel now fails the CAS and changes nothing), then xmagic is
 * set DEAD, sleepers are woken, queued large blocks and the channel freed.
 *
 * HAND-OVER: a process that has just handed a slot over (a producer's
 * store of FULL, a consumer's store of FREE) still writes the header
 * afterwards: the notify's sleepers flag and futex word.  The other side
 * may see the slot at once, finish, and destroy the channel (the common
 * "receive the last message, then destroy" of a one-shot channel), and
 * the block may hold something else before those writes land.  A producer
 * also writes its slot (the payload, xmeta, FULL) after its claim, and a
 * consumer reads its slot and writes FREE after its claim, while another
 * process may destroy the channel (say, a consumer that got the message it
 * waited for from another producer).  So each side counts itself busy in
 * the header (xsend_busy on the producers' line, xrecv_busy on the
 * consumers'), from before its claim (an acq_rel increment, then the
 * channel's liveness checked again: see busy_begin()) to after the notify
 * that follows its hand-over store (a large message received with
 * ember_ch_recv_begin keeps the consumer's count up until its
 * ember_ch_recv_end or _take); and the block is freed only once both
 * counts are 0 --
 * by whoever is last, without waiting: destroy sets xfree_refs to 3 (one
 * reference for itself, one per side), then sets BUSY_DESTROYING (bit 31)
 * in each count; a side is done when its count is seen at 0 with that bit
 * (by destroy's fetch_or, or by the fetch_sub of the last hand-over to
 * end), and whoever sees it so marks it BUSY_SIDE_DONE (a CAS from
 * DESTROYING alone: exactly once per side, however many hand-overs come
 * late) and drops that side's reference; the one that drops the last
 * reference frees the block.  So destroy never waits (it used to wait up
 * to 2 s, in GS's and the shepherd's loops too, for a process killed
 * inside its window).  The spin hints (xsend_cpu, xsend_sid) are written
 * before the hand-over.  A producer killed between its claim and its
 * publish leaves its slot (p, WRITING, dead pid), a consumer killed
 * between its claim and its release (p, READING, dead pid): whoever takes
 * that slot over, exactly once by the CAS that does (a consumer's skip of
 * a dead producer, a producer's recovery of a dead consumer's slot, or
 * destroy's scan of the slots), ends the dead one's count for it, so it
 * costs nothing.  A process that dies between its increment and its claim
 * CAS (including any dead-peer recovery it does on the way: liveness
 * reads of /proc, a pool free, futex wakes), or between its hand-over
 * store and the end of its notify, leaves its count up: the block stays allocated (a leak of
 * one block, never a write into reused memory), unless the channel's last
 * user, knowing every other one dead, destroys it with
 * ember_ch_destroy_last(), which ends both counts first.  A stopped one (SIGSTOP)
 * holds the block until it resumes and ends its count (destroy never
 * waits for it).
 *
 * INVARIANTS
 *   - A position's slot goes through the life cycle above exactly once;
 *     every transition out of FREE, FULL, and out of WRITING/READING by a
 *     dead pid is a CAS, so exactly one process wins each of them.
 *   - head and tail only grow; head - tail <= capacity (tail read after
 *     head); tail - head <= the slots skipped for producers that died
 *     before advancing head (<= capacity).  Claim loops that see head and
 *     tail, read as a consistent pair, further apart report
 *     EMBER_ERR_CORRUPT (CORRUPTION below).
 *   - A slot in state (p, FULL) holds a complete message: the payload and
 *     xmeta are written before the store-release of FULL.
 *
 * MEMORY ORDER
 *   - Producer: the payload/xmeta writes are ordered before the release
 *     store of (p, FULL); a consumer's acquire CAS FULL -> READING reads
 *     from that store, so it sees the whole payload.
 *   - Consumer: its payload reads are ordered before the release store of
 *     (p + cap, FREE); the next producer's acquire CAS from FREE reads from
 *     it, so it never overwrites bytes still being read.
 *   - head/tail: loaded with acquire and advanced by acq_rel CAS, so that a
 *     process that sees head == p also sees the claim of slot p - cap
 *     (transitively through the chain of head CASes).
 *   - Sleeping (Dekker): each side has a futex word (xsent: receivers sleep
 *     on it; xrecvd: senders sleep on it) and a "sleepers" flag.  A waiter
 *     does v = seq_cst load(word), seq_cst store(sleepers, 1), a seq_cst
 *     fence, re-tries the operation, then futex_wait(word, v).  A notifier
 *     does its publish (release store of the slot), a seq_cst fence, loads
 *     the flag and, if set, seq_cst exchange(sleepers, 0); if that returned
 *     1 it does seq_cst fetch_add(word) and FUTEX_WAKE (all).  The fences
 *     make it impossible that the waiter misses the publish AND the notifier
 *     misses the flag.  Whoever clears the flag bumps the word afterwards,
 *     and the waiter read v before it set the flag, so in the single total
 *     order v precedes the bump: futex_wait returns at once or is woken.
 *     Only the first notifier after a sleeper arrived pays for a system
 *     call (not one per message while the sleeper is being scheduled), and
 *     a waiter that dies or times out leaves at most one needless wake.
 *     The fast path costs one fence and two relaxed loads (the flag, and
 *     the pool event word's flag for ember_ch_wait_any, which uses the pool's
 *     event "waiters" word as a sleepers flag with the same handshake).
 *
 * PROGRESS
 *   Lock-free on the fast path while the processes involved are alive (a
 *   failed CAS means another process made progress); a process that stops
 *   in WRITING blocks consumers of that one position until it either
 *   finishes or is found dead.  Blocking uses an adaptive spin then a futex
 *   (FUTEX_WAIT/WAKE on the shared mapping, not FUTEX_PRIVATE) in slices of
 *   at most 50 ms, after which the claimant pid of a blocking slot is
 *   checked for liveness (kill(pid, 0) == ESRCH, or a zombie in /proc).
 *   Try-once calls check liveness when they find the same blocking state
 *   word twice in a row.
 *
 * PROCESS DEATH (kill -9 at any instruction)
 *   - Producer dies before its claim CAS: nothing happened.
 *   - after the claim, before head was advanced: other producers see
 *     (pos, WRITING) at head and help.  Consumers skip the slot once the pid
 *     is dead (and end its busy count: HAND-OVER); so does destroy.  Its own
 *     message is lost (it never completed the send).  A
 *     large send allocates its pool block only after the claim and records
 *     it in the slot (payload ref, then xmeta with release) before copying;
 *     the consumer that skips the slot frees a recorded block.  A stale
 *     record (previous lap) names a block that was freed already, whose id
 *     check fails harmlessly, because ember_ch_recv_take clears the record
 *     of a block it hands to a receiver.  A send that cannot get its block
 *     in time publishes a SKIP marker that consumers pass over.
 *   - after publishing FULL: the message is complete and is delivered.
 *   - Consumer dies after its claim CAS and before releasing the slot: the
 *     message it was receiving (its own in-flight receive) is lost; tail is
 *     helped by others; the slot is recovered by the next producer that
 *     needs it, which frees the message's pool allocation if any (a large
 *     message keeps its slot READING until the receiver has copied it out
 *     and freed it, or taken it over with ember_ch_recv_take).
 *   - A process dies while sleeping (in a blocking call, in
 *     ember_ch_wait_any or ember_ch_wait_below): the sleepers flag it raised costs the next
 *     notifier one needless FUTEX_WAKE, then it is clear again.
 *   Hence: a completed send (state FULL stored) is never lost unless a
 *   consumer dies while holding it; nothing is delivered twice (the
 *   FULL -> READING CAS is the unique claim).
 *   - A process dies while blocked: its process slot (slots.c) may keep
 *     saying what it waited on; readers check it against the live processes.
 *   - A process dies holding a reservation (ember_ch_reserve: a block made
 *     ahead, its magic still 0, so nothing attaches it) or inside
 *     ember_ch_create_reserved / ember_ch_create_ex before anyone has the
 *     descriptor: the block is only its own.  Made with EMBER_ALLOC_OWNED
 *     (as the runtime makes both), it goes with the pool's reclaim of the
 *     dead pid's blocks; without, it leaks that one block.
 *   Caveats: (1) pid reuse: if a dead claimant's pid is reused by a new
 *   process before anyone notices, the slot stays blocked until that process
 *   exits (never a wrong delivery, only a delay).  (2) A producer killed
 *   between the pool's allocation and the record in the slot (a few
 *   instructions), a producer killed in ember_ch_send_alloc (the block is
 *   its own until published), or a receiver killed between
 *   ember_ch_recv_take and handing the block on, leaks that one allocation
 *   (ember_pool_next_alloc can reclaim it); a receiver that takes the
 *   block over with ember_pool_take_owner before ember_ch_recv_take (as
 *   the Python layer's receives do) leaves it to the reclaim of its pid.  (3) All processes must share one pid namespace.
 *   (4) Destroy must happen when nobody uses the channel any more: every
 *   operation through any handle checks the header (magic + allocation id)
 *   first and returns EMBER_ERR_DESTROYED once it is destroyed, even after
 *   the memory was reused; an operation past that check counts itself
 *   busy and keeps the block until it is done (HAND-OVER); only one inside
 *   the few instructions between the check and its count (a race the
 *   caller allowed) may touch freed memory.
 *   - Closer dies in ember_ch_close: the close is one fetch_or of head, so
 *     the channel is open or closed, never half (killed after the xflags
 *     hint and before head: open, and receivers read head on each empty
 *     receive -- slower, never wrong); if it dies before its wakes,
 *     sleepers see the close at the end of their slice (<= 50 ms).
 *   - Producer dies while giving the end slot back after a close: the slot
 *     stays (E, WRITING, dead); consumers skip it as any dead producer's,
 *     then get EMBER_ERR_CLOSED.
 *   - Destroyer dies: before its xalloc_id CAS nothing happened; after it
 *     the channel is destroyed for everyone, and at worst the channel's
 *     block and its queued large blocks leak (ember_pool_next_alloc).
 *   - Producer dies between ember_ch_send_quiet and its ember_ch_notify:
 *     the message is published (as any send's); a receiver asleep misses
 *     only the wake-up and finds it at the end of its slice (<= 50 ms), or
 *     at the next send's wake-up.
 *
 * CORRUPTION (memory scribbled by a stray write, not by a death)
 *   Nothing read from shared memory is trusted for a memory access: the
 *   handle keeps its own capacity / block size / slot offset (checked
 *   against the descriptor at attach); an inline length beyond the slot (or,
 *   after the claim, the caller's buffer) and a large message's block that
 *   ember_pool_check refuses are EMBER_ERR_CORRUPT (the message is dropped,
 *   its slot released); every recorded block freed is checked by the pool;
 *   every claim loop is bounded (retries_exhausted): DESTROYED, CORRUPT
 *   (head and tail more than a ring apart) or, after 64 rounds, FULL/EMPTY.
 *   A garbage pid costs a kill(pid, 0) probe.  Never a crash or a hang
 *   (tests/test_channel_fuzz.py).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE         /* syscall(): self-contained */
#endif
#include "channel.h"
#include "ember_base.h"      /* clock, futex, pid, checksums: one copy for all of ember */
/* The process-slots writer (slots.c) is compiled into ember.pools_c._pools
 * and reached through the pool API table (pool_api.h), as pool.c is; the
 * C tests and benchmarks link slots.c beside pool.c. */
#include "slots.h"

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CH_MAGIC       0x314e4e4148434d45ull   /* "EMCHANN1" */
#define CH_DEAD        0x444145444843454dull   /* destroyed */
#define CH_VERSION     2u                      /* 2: slot-relative state words, CLOSED */
#define SD_MAGIC       0x44434d45u             /* "EMCD" */
#define SD_VERSION     1u
#define SLICE_NS       50000000ll              /* longest single futex sleep */
#define MULTI_SLICE_NS 1000000ll               /* wait_any over several pools */

/* ---- slot state word ------------------------------------------------ */
enum { K_FREE = 0, K_WRITING = 1, K_FULL = 2, K_READING = 3 };
#define ST_PID_MASK    ((1ull << 22) - 1)
#define ST_POS_MASK    ((1ull << 40) - 1)
#define ST_POS(st)     ((st) >> 24)
#define ST_KIND(st)    ((int)(((st) >> 22) & 3u))
#define ST_PID(st)     ((uint32_t)((st) & ST_PID_MASK))
#define MK(pos, kind, pid) \
    ((((uint64_t)(pos) & ST_POS_MASK) << 24) | ((uint64_t)(kind) << 22) | ((uint64_t)(pid) & ST_PID_MASK))
#define META_ALLOC     (1ull << 63)      /* payload holds (offset, id) of a pool block */
#define META_SKIP      (1ull << 62)      /* an aborted send: no message, consumers skip it */
#define META_LEN(m)    ((m) & (META_SKIP - 1))
#define HEAD_CLOSED    (1ull << 63)      /* in xhead: closed; the rest is the end position */
#define FLAG_CLOSED    1u                /* in xflags (line 0): close() began */

/* Slot-relative encoding of the position in a stored state word: the stored
 * position is the real one XOR the slot's index (pos & mask), i.e. the
 * position with its index bits cleared.  So the state (lap 0, FREE) of every
 * slot is stored as 0, and a zeroed block is a ready ring: a channel made in
 * never-touched pool memory needs no initialisation pass (no page faults).
 * Kind and pid are stored as they are. */
#define ST_KEY(ch, pos) ((((uint64_t)(pos)) & (ch)->mask) << 24)

/* Signed difference a - b of two positions modulo 2^40. */
static inline int64_t posdiff(uint64_t a, uint64_t b)
{
    return ((int64_t)((a - b) << 24)) >> 24;
}

_Static_assert(sizeof(_Atomic uint64_t) == 8, "64-bit atomics must be plain words");

/* ---- shared layout ---------------------------------------------------- */
typedef struct {
    /* line 0: identity, written at create before the descriptor exists */
    _Atomic uint64_t xmagic;
    uint32_t version;
    uint32_t capacity;
    uint32_t block_size;
    _Atomic uint32_t xflags;      /* FLAG_CLOSED: a hint on the read-mostly line */
    uint64_t c_uid;
    _Atomic uint64_t xalloc_id;   /* id of this allocation; 0 once destroyed */
    uint64_t slots_offset;        /* from the header start */
    _Atomic uint32_t xfree_refs;  /* set by destroy: who must still let go before the free (HAND-OVER) */
    /* line 1..4: hot counters, each alone on its line */
    _Alignas(EMBER_CACHE_LINE) _Atomic uint64_t xhead;       /* next enqueue position */
    _Atomic uint32_t xsend_cpu;   /* hint: 1 + the CPU of the last publisher (0: none yet) */
    _Atomic uint32_t xsend_sid;   /* hint: the session id of the last publisher */
    _Atomic uint32_t xsend_busy;  /* producers between a hand-over and their notify (HAND-OVER) */
    _Alignas(EMBER_CACHE_LINE) _Atomic uint64_t xtail;       /* next dequeue position */
    _Atomic uint32_t xrecv_busy;  /* consumers between a release and their notify (HAND-OVER) */
    _Alignas(EMBER_CACHE_LINE) _Atomic uint32_t xsent;       /* bumped after publish; receivers sleep */
    _Atomic uint32_t xrecv_sleepers;                         /* flag: a receiver may sleep */
    _Alignas(EMBER_CACHE_LINE) _Atomic uint32_t xrecvd;      /* bumped after consume; senders sleep */
    _Atomic uint32_t xsend_sleepers;                         /* flag: a sender may sleep */
    _Alignas(EMBER_CACHE_LINE) unsigned char end_[];
} ch_hdr_t;

typedef struct {
    _Atomic uint64_t xstate;
    _Atomic uint64_t xmeta;
    unsigned char payload[];
} ch_slot_t;

_Static_assert(sizeof(ch_slot_t) == EMBER_CH_SLOT_HEADER, "slot header size");
_Static_assert(sizeof(ch_hdr_t) == 5 * EMBER_CACHE_LINE, "channel header is 5 cache lines");

/* Large-message payload: where the allocation is. */
typedef struct {
    uint64_t offset;
    uint64_t id;
} ch_alloc_ref_t;

struct ember_ch {
    ch_hdr_t *h;
    unsigned char *slots;
    uint64_t mask;
    uint32_t capacity;
    uint32_t block_size;
    uint32_t payload;
    uint64_t c_uid;
    ember_pool_t *pool;
    ember_alloc_t alloc;
    _Atomic uint32_t *pool_ev;
    _Atomic uint32_t *pool_ev_waiters;
    _Atomic int64_t spin_max;
    _Atomic int64_t spin_min;         /* floor of the adaptive shrink */
    _Atomic int64_t spin_cur;
    _Atomic uint64_t stuck_send;      /* blocking state word seen by the last try-once */
    _Atomic uint64_t stuck_recv;
};

static inline ch_slot_t *slot_at(const ember_ch_t *ch, uint64_t pos)
{
    return (ch_slot_t *)(ch->slots + (size_t)(pos & ch->mask) * ch->block_size);
}

/* State word access in real terms (see ST_KEY); `pos` is any position of
 * the slot (only its index bits matter).  The orders are the callers'. */
static inline uint64_t st_load_acquire(const ember_ch_t *ch, ch_slot_t *s, uint64_t pos)
{
    return ember_atomic_load_acquire(&s->xstate) ^ ST_KEY(ch, pos);
}

static inline int st_cas_acq_rel(const ember_ch_t *ch, ch_slot_t *s, uint64_t pos,
                                 uint64_t *expect, uint64_t v)
{
    uint64_t key = ST_KEY(ch, pos);
    uint64_t e = *expect ^ key;
    if (ember_atomic_cas_acq_rel(&s->xstate, &e, v ^ key))
        return 1;
    *expect = e ^ key;
    return 0;
}

static inline void st_store_release(const ember_ch_t *ch, ch_slot_t *s, uint64_t pos, uint64_t v)
{
    ember_atomic_store_release(&s->xstate, v ^ ST_KEY(ch, pos));
}

/* ---- process, clock and futex helpers ----------------------------------
 * One copy for all of ember: common_c/ember_base.h.  The short names keep
 * the algorithm text below readable.  pid_dead: level 1 kill(pid, 0) only;
 * level 2 a zombie (killed, not yet reaped) counts as dead too.
 * futex_wait: 0 (woken or value changed), ETIMEDOUT or EINTR. */
static inline uint32_t my_pid(void) { return ember_self_pid(); }
static inline int pid_dead(uint32_t pid, int level) { return ember_pid_dead(pid, level); }
static inline int64_t now_ns(void) { return ember_now_ns(); }
static inline int futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t ns)
{
    return ember_futex_wait(addr, val, ns);
}
static inline void futex_wake_all(_Atomic uint32_t *addr) { ember_futex_wake_all(addr); }

/* Notify the other side after a publish (word = xsent) or a consume
 * (word = xrecvd).  Dekker with ch_wait / ember_ch_wait_any. */
static inline void notify(ember_ch_t *ch, _Atomic uint32_t *word, _Atomic uint32_t *sleepers)
{
    /* seq_cst fence: orders the slot store-release just done before the
     * loads of the sleepers flag / pool waiter count below; pairs with the
     * seq_cst fence after the flag store in ch_wait() and after the waiter
     * count increment in ember_ch_wait_any(). */
    ember_atomic_fence_seq_cst();
    if (__builtin_expect(ember_atomic_load_relaxed(sleepers) != 0, 0)
        && ember_atomic_exchange_seq_cst(sleepers, 0) != 0) {
        /* seq_cst: the bump follows the exchange in the total order, so it
         * follows every sleeper's load of the word (see MEMORY ORDER). */
        ember_atomic_add_seq_cst(word, 1);
        futex_wake_all(word);
    }
    /* The pool's event "waiters" word is used as a sleepers flag too. */
    if (__builtin_expect(ember_atomic_load_relaxed(ch->pool_ev_waiters) != 0, 0)
        && ember_atomic_exchange_seq_cst(ch->pool_ev_waiters, 0) != 0) {
        ember_atomic_add_seq_cst(ch->pool_ev, 1);
        futex_wake_all(ch->pool_ev);
    }
}

static inline void notify_sent(ember_ch_t *ch)
{
    notify(ch, &ch->h->xsent, &ch->h->xrecv_sleepers);
}

static inline void notify_recvd(ember_ch_t *ch)
{
    notify(ch, &ch->h->xrecvd, &ch->h->xsend_sleepers);
}

/* A busy count's flags, set by destroy (HAND-OVER): BUSY_DESTROYING, the
 * channel was destroyed; BUSY_SIDE_DONE, this side has let go of the
 * block.  The count itself stays far below bit 30 (one per thread between
 * its claim and its notify). */
#define BUSY_DESTROYING 0x80000000u
#define BUSY_SIDE_DONE  0x40000000u

/* ---- busy counts (HAND-OVER above) --------------------------------------
 * busy_begin() before a claim, handover_end() after the last write to the
 * header that follows the hand-over store (the notify). */

/* A side's busy count (`busy`), from before its claim (HAND-OVER): 0 if
 * the channel was destroyed meanwhile (the count is ended again). */
static int ch_alive(const ember_ch_t *ch);
static inline void handover_end(ember_ch_t *ch, _Atomic uint32_t *busy);

static inline int busy_begin(ember_ch_t *ch, _Atomic uint32_t *busy)
{
    /* acq_rel: if destroy's fetch_or of BUSY_DESTROYING came before this
     * increment (in the count's modification order), our acquire reads
     * from it, so the liveness check below sees destroy's CAS of xalloc_id
     * and we back out; if it came after, destroy's acquire reads our
     * increment and leaves the block to the last one out.  Pairs with the
     * acq_rel fetch_or in ember_ch_destroy(). */
    ember_atomic_add_acq_rel(busy, 1u);
    if (__builtin_expect(ch_alive(ch), 1))
        return 1;
    handover_end(ch, busy);
    return 0;
}

/* One side of a destroyed channel has no hand-over left: mark it done
 * (once: the CAS from BUSY_DESTROYING alone) and drop its reference; the
 * last reference frees the block.  Returns the free's rc, or EMBER_OK. */
static ember_rc_t side_done(ember_pool_t *pool, const ember_alloc_t *alloc, ch_hdr_t *h,
                            _Atomic uint32_t *busy)
{
    uint32_t expect = BUSY_DESTROYING;
    /* acq_rel: pairs with the fetch_or/fetch_sub that left the count at
     * DESTROYING alone (our view of the side's writes is complete). */
    if (!ember_atomic_cas_acq_rel(busy, &expect, BUSY_DESTROYING | BUSY_SIDE_DONE))
        return EMBER_OK;
    /* acq_rel: every side's header writes happen before the last drop,
     * and the one that drops it frees after all of them (a release
     * sequence of decrements, read by the last one's acquire). */
    if (ember_atomic_sub_acq_rel(&h->xfree_refs, 1u) == 1u)
        return ember_pool_free(pool, alloc);
    return EMBER_OK;
}

static inline void handover_end(ember_ch_t *ch, _Atomic uint32_t *busy)
{
    /* acq_rel: release, our header writes (the notify) happen before
     * whoever frees the block reads the count back at 0; acquire, if the
     * channel was destroyed meanwhile, we see destroy's xfree_refs.  Pairs
     * with the fetch_or in ember_ch_destroy() and the CAS in side_done(). */
    uint32_t old = ember_atomic_sub_acq_rel(busy, 1u);
    if (__builtin_expect(old == (BUSY_DESTROYING | 1u), 0))
        (void)side_done(ch->pool, &ch->alloc, ch->h, busy);   /* we were the last of our side */
}

/* A producer died between its claim and its publish (a consumer between
 * its claim and its release), and our CAS took its slot (p, WRITING or
 * READING, dead) over, exactly once: end its busy count (`busy`: that
 * side's) for it (HAND-OVER).  Never below 0: a state word scribbled to
 * WRITING/READING, with no count behind it, costs nothing (CORRUPTION).
 * Returns 1 if the channel was destroyed meanwhile. */
static int end_dead(ember_ch_t *ch, _Atomic uint32_t *busy)
{
    /* relaxed: only the first guess of the CAS below. */
    uint32_t v = ember_atomic_load_relaxed(busy);
    do {
        if ((v & ~(BUSY_DESTROYING | BUSY_SIDE_DONE)) == 0)
            return (v & BUSY_DESTROYING) != 0;
        /* acq_rel: as the fetch_sub in handover_end(), which this is. */
    } while (!ember_atomic_cas_acq_rel(busy, &v, v - 1u));
    if (__builtin_expect(v == (BUSY_DESTROYING | 1u), 0))
        (void)side_done(ch->pool, &ch->alloc, ch->h, busy);
    return (v & BUSY_DESTROYING) != 0;
}

/* Tests only (ember_ch_debug_handover_pause): one thread pauses inside the
 * hand-over window, so that a test can destroy the channel and reuse its
 * block exactly there.  Relaxed: read on every hand-over, set by tests. */
static _Atomic int64_t dbg_pause_ns;
static _Atomic uint32_t dbg_pause_tid;

void ember_ch_after_clone(void)
{
    ember_pid_after_clone_();
}

void ember_ch_debug_handover_pause(int64_t ns)
{
    ember_atomic_store_relaxed(&dbg_pause_tid, ns > 0 ? (uint32_t)syscall(SYS_gettid) : 0u);
    ember_atomic_store_relaxed(&dbg_pause_ns, ns > 0 ? ns : 0);
}

static void handover_pause_slow(void)
{
    int64_t ns = ember_atomic_load_relaxed(&dbg_pause_ns);
    if (ns <= 0 || ember_atomic_load_relaxed(&dbg_pause_tid) != (uint32_t)syscall(SYS_gettid))
        return;
    struct timespec ts = { (time_t)(ns / 1000000000), (long)(ns % 1000000000) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static inline void handover_pause(void)
{
    if (__builtin_expect(ember_atomic_load_relaxed(&dbg_pause_ns) != 0, 0))
        handover_pause_slow();
}

/* Tests only (ember_ch_debug_claim_pause): one thread pauses in every send
 * after its claim, before it writes its slot (in every receive after its
 * claim, before it reads the slot), until `ns` have passed or
 * DBG_CLAIM_AFTER after it saw the channel destroyed (so that a test can
 * destroy the channel and reuse its block exactly there).  Relaxed: read
 * on every send, set by tests. */
#define DBG_CLAIM_AFTER 200000000ll
static _Atomic int64_t dbg_claim_ns;
static _Atomic uint32_t dbg_claim_tid;

void ember_ch_debug_claim_pause(int64_t ns)
{
    ember_atomic_store_relaxed(&dbg_claim_tid, ns > 0 ? (uint32_t)syscall(SYS_gettid) : 0u);
    ember_atomic_store_relaxed(&dbg_claim_ns, ns > 0 ? ns : 0);
}

static void claim_pause_slow(const ember_ch_t *ch)
{
    int64_t ns = ember_atomic_load_relaxed(&dbg_claim_ns);
    if (ns <= 0 || ember_atomic_load_relaxed(&dbg_claim_tid) != (uint32_t)syscall(SYS_gettid))
        return;
    int64_t end = now_ns() + ns;
    while (now_ns() < end) {
        if (!ch_alive(ch)) {           /* (the block is still ours: HAND-OVER) */
            struct timespec ts = { 0, DBG_CLAIM_AFTER };
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
            return;
        }
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}

static inline void claim_pause(const ember_ch_t *ch)
{
    if (__builtin_expect(ember_atomic_load_relaxed(&dbg_claim_ns) != 0, 0))
        claim_pause_slow(ch);
}

static inline void help_advance(_Atomic uint64_t *ctr, uint64_t pos)
{
    uint64_t expect = pos;
    /* acq_rel: a helper publishes that slot `pos` was claimed (see MEMORY
     * ORDER); failure means someone else advanced it (or, for head, that
     * the channel was closed: the CLOSED bit makes every later CAS fail). */
    ember_atomic_cas_acq_rel(ctr, &expect, pos + 1);
}

static int ch_alive(const ember_ch_t *ch)
{
    /* acquire: pairs with the release store of xmagic in ember_ch_create();
     * the id is unique per allocation, so a stale handle whose block holds
     * another channel (or anything else) by now sees a different id. */
    return ember_atomic_load_acquire(&ch->h->xmagic) == CH_MAGIC
        && ember_atomic_load_relaxed(&ch->h->xalloc_id) == ch->alloc.id;
}

/* The end of a closed channel: EMBER_OK while open; EMBER_ERR_CLOSED with
 * *end = the first position no message will ever have. */
static inline ember_rc_t closed_end(uint64_t head, uint64_t *end)
{
    if (__builtin_expect(!(head & HEAD_CLOSED), 1))
        return EMBER_OK;
    *end = head & ~HEAD_CLOSED;
    return EMBER_ERR_CLOSED;
}

/* Called on every retry of a claim loop.  After more retries than slots
 * only garbage can keep a loop going: the memory was reused after a racing
 * destroy (EMBER_ERR_DESTROYED), or state words or counters were scribbled
 * on (EMBER_ERR_CORRUPT: head and tail, read as a consistent pair, more
 * than a ring apart -- see INVARIANTS).  Garbage that passes both checks
 * (or, in theory, a loop starved by other processes' progress for 64
 * rounds) ends the loop with `busy` (FULL / EMPTY: a blocking caller
 * waits and tries again until its deadline).  EMBER_OK: go on. */
static ember_rc_t retries_exhausted(const ember_ch_t *ch, uint64_t *spins, unsigned *rounds,
                                    ember_rc_t busy)
{
    if (__builtin_expect(*spins <= (uint64_t)ch->capacity + 64u, 1))
        return EMBER_OK;
    *spins = 0;
    if (!ch_alive(ch))
        return EMBER_ERR_DESTROYED;
    if (++*rounds >= 64u)
        return busy;
    /* acquire loads, head / tail / head: if head did not move, the tail read
     * between lies within what the invariants allow for that head. */
    uint64_t h1 = ember_atomic_load_acquire(&ch->h->xhead) & ~HEAD_CLOSED;
    uint64_t t = ember_atomic_load_acquire(&ch->h->xtail);
    uint64_t h2 = ember_atomic_load_acquire(&ch->h->xhead) & ~HEAD_CLOSED;
    if (h1 == h2 && (posdiff(h1, t) > (int64_t)ch->capacity || posdiff(t, h1) > (int64_t)ch->capacity))
        return EMBER_ERR_CORRUPT;
    return EMBER_OK;
}

/* ---- producer side -------------------------------------------------------- */

/* A producer at `pos` found (pos - cap, READING, dead pid): take the claim
 * over, free what the dead consumer never got, release the slot for
 * position `pos`.  (The state's own position is used as it was read, the
 * slot's key from `pos`: so a garbage state cannot make the CAS fail
 * forever.) */
static void recover_reading(ember_ch_t *ch, ch_slot_t *s, uint64_t pos, uint64_t st)
{
    uint64_t p = ST_POS(st);
    uint64_t take = MK(p, K_READING, my_pid());
    if (!st_cas_acq_rel(ch, s, pos, &st, take))
        return;
    uint64_t meta = ember_atomic_load_relaxed(&s->xmeta);
    if (meta & META_ALLOC) {
        ch_alloc_ref_t ref;
        memcpy(&ref, s->payload, sizeof ref);
        ember_alloc_t a = { ref.offset, META_LEN(meta), ref.id };
        (void)ember_pool_free(ch->pool, &a);   /* checked by the pool: stale/double/garbage is harmless */
    }
    /* release: orders our reads of the slot before it becomes FREE; pairs
     * with the acquire CAS of the next producer in try_claim_send().  (Our
     * own writes are covered by our producer's busy count.) */
    st_store_release(ch, s, pos, MK(p + ch->capacity, K_FREE, 0));
    notify_recvd(ch);
    (void)end_dead(ch, &ch->h->xrecv_busy);    /* the dead consumer's, up since its claim */
}

static ember_rc_t claim_slot(ember_ch_t *ch, int dead_level, uint64_t *pos_out,
                             ch_slot_t **slot_out, uint64_t *stuck);

/* Claim the slot at head for writing.  dead_level > 0: check the liveness
 * of a consumer that blocks us.  EMBER_OK (slot in WRITING by us, our
 * busy count up until publish_ex() ends it), EMBER_ERR_FULL with *stuck =
 * the blocking state word, EMBER_ERR_CLOSED. */
static ember_rc_t try_claim_send(ember_ch_t *ch, int dead_level, uint64_t *pos_out,
                                 ch_slot_t **slot_out, uint64_t *stuck)
{
    ch_hdr_t *h = ch->h;
    /* A handle whose channel was destroyed through another handle (or in
     * another process) must not touch the slots, which may belong to
     * someone else by now: check the header's magic and allocation id
     * first (loads of the header line, which the operation reads anyway).
     * A destroy racing with this very operation is still the caller's
     * error (see "destroy" above). */
    if (__builtin_expect(!ch_alive(ch), 0))
        return EMBER_ERR_DESTROYED;
    /* Busy from here (HAND-OVER): every return but EMBER_OK ends it; an
     * EMBER_OK's publish ends it.  (The first check above keeps a stale
     * handle from writing the count of a block that may be reused.) */
    if (__builtin_expect(!busy_begin(ch, &h->xsend_busy), 0))
        return EMBER_ERR_DESTROYED;
    ember_rc_t rc = claim_slot(ch, dead_level, pos_out, slot_out, stuck);
    if (rc != EMBER_OK)
        handover_end(ch, &h->xsend_busy);
    return rc;
}

/* try_claim_send()'s loop, the producer's busy count up. */
static ember_rc_t claim_slot(ember_ch_t *ch, int dead_level, uint64_t *pos_out,
                             ch_slot_t **slot_out, uint64_t *stuck)
{
    ch_hdr_t *h = ch->h;
    unsigned rounds = 0;
    for (uint64_t spins = 0;; spins++) {
        ember_rc_t bad = retries_exhausted(ch, &spins, &rounds, EMBER_ERR_FULL);
        if (__builtin_expect(bad != EMBER_OK, 0)) {
            *stuck = 0;
            return bad;
        }
        /* acquire: pairs with the acq_rel CAS that advanced head (MEMORY ORDER). */
        uint64_t pos = ember_atomic_load_acquire(&h->xhead), end;
        if (__builtin_expect(closed_end(pos, &end) != EMBER_OK, 0))
            return EMBER_ERR_CLOSED;
        ch_slot_t *s = slot_at(ch, pos);
        /* acquire: pairs with the release store of FREE by the last consumer
         * (or the initialisation), so our writes follow its reads. */
        uint64_t st = st_load_acquire(ch, s, pos);
        int64_t d = posdiff(ST_POS(st), pos);
        if (d == 0) {
            if (ST_KIND(st) == K_FREE) {
                if (st_cas_acq_rel(ch, s, pos, &st, MK(pos, K_WRITING, my_pid()))) {
                    uint64_t seen = pos;
                    /* acq_rel: as help_advance(); on failure `seen` is head
                     * now, which tells whether a close set the end at or
                     * before our position (CLOSE). */
                    if (!ember_atomic_cas_acq_rel(&h->xhead, &seen, pos + 1)
                        && closed_end(seen, &end) != EMBER_OK && posdiff(pos, end) >= 0) {
                        /* Beyond the end: give the slot back (our busy
                         * count, up since before the claim, is ended by
                         * try_claim_send()).  release: pairs with the
                         * acquire CAS of a later claimant (or the
                         * consumer's load, which then sees FREE and the
                         * end). */
                        st_store_release(ch, s, pos, MK(pos, K_FREE, 0));
                        notify_sent(ch);
                        return EMBER_ERR_CLOSED;
                    }
                    *pos_out = pos;
                    *slot_out = s;
                    return EMBER_OK;
                }
                continue;
            }
            help_advance(&h->xhead, pos);
            continue;
        }
        if (d > 0) {
            help_advance(&h->xhead, pos);
            continue;
        }
        /* d < 0: the slot still holds the previous lap. */
        if (ST_KIND(st) == K_READING && dead_level > 0 && pid_dead(ST_PID(st), dead_level)) {
            recover_reading(ch, s, pos, st);
            continue;
        }
        *stuck = st;
        return EMBER_ERR_FULL;
    }
}

/* Returns 1 if a large message (META_ALLOC) was published into a channel
 * destroyed meanwhile (HAND-OVER) and no receiver had claimed it (we took
 * the slot back): its block is nobody's (destroy's scan may or may not
 * have met it), the caller frees it (the pool's id check makes a second
 * free harmless).  The slot must not be read after this. */
static inline int publish_ex(ember_ch_t *ch, ch_slot_t *s, uint64_t pos, uint64_t meta,
                             int wake)
{
    ch_hdr_t *h = ch->h;
    /* A hint for a receiver about to spin (ch_wait): where the sender last
     * ran.  Relaxed: a stale or torn-by-race value only costs a spin that
     * yields too early or too late; it orders nothing.  The word shares the
     * line of xhead, which this sender just advanced (no extra line).
     * Written BEFORE the hand-over: once FULL is stored, the receiver may
     * destroy the channel and its block be reused (HAND-OVER). */
    uint32_t cpu = ember_cpu_hint();
    if (ember_atomic_load_relaxed(&h->xsend_cpu) != cpu)
        ember_atomic_store_relaxed(&h->xsend_cpu, cpu);
    uint32_t sid = ember_self_sid();
    if (ember_atomic_load_relaxed(&h->xsend_sid) != sid)
        ember_atomic_store_relaxed(&h->xsend_sid, sid);
    /* (our busy count is up since before the claim: try_claim_send()) */
    /* release: publishes xmeta for the too-small check; pairs with the
     * acquire load of xmeta in try_recv(). */
    ember_atomic_store_release(&s->xmeta, meta);
    /* release: publishes the payload and xmeta written above; pairs with the
     * acquire CAS FULL -> READING in try_recv(). */
    st_store_release(ch, s, pos, MK(pos, K_FULL, 0));
    handover_pause();
    if (wake)
        notify_sent(ch);
    int gone = 0;
    if (meta & META_ALLOC) {
        /* seq_cst fence (Dekker, with the one in ember_ch_destroy() between
         * its CAS of xalloc_id and its scan of the slots): either destroy's
         * scan sees our FULL and frees the block, or we see the destroy
         * here and free it (both may: the pool's id check makes the second
         * free harmless); never neither. */
        ember_atomic_fence_seq_cst();
        if (!ch_alive(ch)) {
            /* Destroyed: the block is ours to free only if no receiver has
             * claimed the message (one may have taken the block, released
             * the slot and destroyed the channel itself).  acq_rel CAS on
             * the slot's state word: against the receivers' claim CAS
             * FULL -> READING in try_recv(), exactly one of them wins. */
            uint64_t e = MK(pos, K_FULL, 0);
            gone = st_cas_acq_rel(ch, s, pos, &e, MK(pos, K_READING, my_pid()));
        }
    }
    handover_end(ch, &h->xsend_busy);
    return gone;
}

static inline int publish(ember_ch_t *ch, ch_slot_t *s, uint64_t pos, uint64_t meta)
{
    return publish_ex(ch, s, pos, meta, 1);
}

/* ---- consumer side --------------------------------------------------------- */

/* Release a slot we claimed (READING by us), our busy count up since
 * before the claim (try_recv()); it stays up: try_recv() or release_slot()
 * ends it. */
static inline void release_slot_held(ember_ch_t *ch, ch_slot_t *s, uint64_t pos)
{
    /* release: orders our reads of the payload before the slot is reused;
     * pairs with the acquire CAS from FREE in try_claim_send(). */
    st_store_release(ch, s, pos, MK(pos + ch->capacity, K_FREE, 0));
    handover_pause();
    notify_recvd(ch);
}

/* Release the slot of a message try_recv() returned claimed, and end the
 * busy count it left up (HAND-OVER). */
static inline void release_slot(ember_ch_t *ch, ch_slot_t *s, uint64_t pos)
{
    release_slot_held(ch, s, pos);
    handover_end(ch, &ch->h->xrecv_busy);
}

/* Nothing to receive at tail position `pos`: EMBER_ERR_EMPTY, or
 * EMBER_ERR_CLOSED if the channel is closed and `pos` is at or past its end
 * (every position before the end was claimed by a producer before the close
 * and is, or will be, FULL or skipped; none at or after it ever will). */
static inline ember_rc_t empty_or_closed(ember_ch_t *ch, uint64_t pos)
{
    /* First the hint on line 0, which every operation reads anyway (ch_alive)
     * and nobody writes but create, close and destroy: so an empty receive
     * does not pull head's line, which producers write, away from them.
     * acquire: pairs with the seq_cst fetch_or of FLAG_CLOSED in
     * ember_ch_close(), which comes before its fetch_or of head; a receiver
     * that sees the flag but not yet head's bit waits, and is woken by the
     * close's bumps that follow. */
    if (__builtin_expect(!(ember_atomic_load_acquire(&ch->h->xflags) & FLAG_CLOSED), 1))
        return EMBER_ERR_EMPTY;
    uint64_t end;
    /* acquire: pairs with the seq_cst fetch_or of HEAD_CLOSED in ember_ch_close(). */
    if (closed_end(ember_atomic_load_acquire(&ch->h->xhead), &end) != EMBER_OK
        && posdiff(pos, end) >= 0)
        return EMBER_ERR_CLOSED;
    return EMBER_ERR_EMPTY;
}

enum { RECV_PEEK = 0, RECV_CLAIM = 1 };

/* An inline message longer than the slot, or longer than the caller said it
 * may be after the claim (the length was changed under us): corrupt. */
static inline int bad_inline_len(const ember_ch_t *ch, uint64_t meta)
{
    return !(meta & (META_ALLOC | META_SKIP)) && META_LEN(meta) > ch->payload;
}

/* Look at the slot at tail.  mode RECV_PEEK: EMBER_OK if a message is there
 * (not claimed).  RECV_CLAIM: claim it into msg (READING by us).  Skips
 * slots of dead producers when dead_level > 0.  EMBER_ERR_CLOSED when the
 * channel is closed and drained; EMBER_ERR_CORRUPT (the slot released, the
 * message dropped, msg->len = the length read) when the message's length
 * does not fit its slot. */
static ember_rc_t recv_loop(ember_ch_t *ch, int mode, int dead_level, int64_t max_len,
                            ember_ch_msg_t *msg, uint64_t *stuck);

static ember_rc_t try_recv(ember_ch_t *ch, int mode, int dead_level, int64_t max_len,
                           ember_ch_msg_t *msg, uint64_t *stuck)
{
    if (__builtin_expect(!ch_alive(ch), 0))      /* as in try_claim_send() */
        return EMBER_ERR_DESTROYED;
    /* Busy from before any claim (HAND-OVER, as a producer's): a message
     * returned claimed (RECV_CLAIM, EMBER_OK) keeps it up until
     * release_slot(); every other return ends it here. */
    if (__builtin_expect(!busy_begin(ch, &ch->h->xrecv_busy), 0))
        return EMBER_ERR_DESTROYED;
    ember_rc_t rc = recv_loop(ch, mode, dead_level, max_len, msg, stuck);
    if (rc != EMBER_OK || mode != RECV_CLAIM)
        handover_end(ch, &ch->h->xrecv_busy);
    else
        claim_pause(ch);
    return rc;
}

/* try_recv()'s loop, the consumer's busy count up. */
static ember_rc_t recv_loop(ember_ch_t *ch, int mode, int dead_level, int64_t max_len,
                            ember_ch_msg_t *msg, uint64_t *stuck)
{
    ch_hdr_t *h = ch->h;
    unsigned rounds = 0;
    for (uint64_t spins = 0;; spins++) {
        ember_rc_t bad = retries_exhausted(ch, &spins, &rounds, EMBER_ERR_EMPTY);
        if (__builtin_expect(bad != EMBER_OK, 0)) {
            *stuck = 0;
            return bad;
        }
        /* acquire: pairs with the acq_rel CAS that advanced tail. */
        uint64_t pos = ember_atomic_load_acquire(&h->xtail);
        ch_slot_t *s = slot_at(ch, pos);
        /* acquire: pairs with the producer's release store of FULL. */
        uint64_t st = st_load_acquire(ch, s, pos);
        int64_t d = posdiff(ST_POS(st), pos);
        if (d == 0) {
            int k = ST_KIND(st);
            if (k == K_FULL) {
                if (mode == RECV_PEEK) {
                    /* acquire: pairs with the release store of xmeta. */
                    if (!(ember_atomic_load_acquire(&s->xmeta) & META_SKIP))
                        return EMBER_OK;
                    if (st_cas_acq_rel(ch, s, pos, &st, MK(pos, K_READING, my_pid()))) {
                        help_advance(&h->xtail, pos);
                        release_slot_held(ch, s, pos);
                    }
                    continue;
                }
                if (max_len >= 0) {
                    /* acquire: pairs with the release store of xmeta in
                     * publish(); if it is from a later lap, the state
                     * re-check below sees that lap too. */
                    uint64_t meta = ember_atomic_load_acquire(&s->xmeta);
                    if (META_LEN(meta) > (uint64_t)max_len && !bad_inline_len(ch, meta)) {
                        if (st_load_acquire(ch, s, pos) != st)
                            continue;
                        msg->len = META_LEN(meta);
                        return EMBER_ERR_BUFFER_TOO_SMALL;
                    }
                }
                if (!st_cas_acq_rel(ch, s, pos, &st, MK(pos, K_READING, my_pid())))
                    continue;
                help_advance(&h->xtail, pos);
                uint64_t meta = ember_atomic_load_relaxed(&s->xmeta);
                if (meta & META_SKIP) {            /* an aborted send: no message */
                    release_slot_held(ch, s, pos);
                    continue;
                }
                msg->len = META_LEN(meta);
                if (__builtin_expect(bad_inline_len(ch, meta)
                                     || (max_len >= 0 && META_LEN(meta) > (uint64_t)max_len), 0)) {
                    /* Never hand out bytes past the slot (or the caller's
                     * buffer): drop the message, keep the channel going. */
                    msg->is_alloc = 0;
                    msg->data = NULL;
                    msg->slot_ = NULL;
                    release_slot_held(ch, s, pos);
                    return EMBER_ERR_CORRUPT;
                }
                msg->pos_ = pos;
                msg->slot_ = s;
                if (meta & META_ALLOC) {
                    ch_alloc_ref_t ref;
                    memcpy(&ref, s->payload, sizeof ref);
                    msg->is_alloc = 1;
                    msg->alloc.offset = ref.offset;
                    msg->alloc.size = msg->len;
                    msg->alloc.id = ref.id;
                    msg->data = NULL;
                } else {
                    msg->is_alloc = 0;
                    msg->data = s->payload;
                }
                return EMBER_OK;
            }
            if (k == K_FREE) {
                *stuck = 0;
                return empty_or_closed(ch, pos);
            }
            if (k == K_WRITING) {
                if (dead_level > 0 && pid_dead(ST_PID(st), dead_level)) {
                    /* Skip the dead producer's slot: claim it as a reader,
                     * advance tail, release it.  Its message is lost. */
                    if (st_cas_acq_rel(ch, s, pos, &st, MK(pos, K_READING, my_pid()))) {
                        help_advance(&h->xtail, pos);
                        /* A large send records its block in the slot before
                         * copying into it (ember_ch_send): free it.  A stale
                         * record names a block already freed (its id check
                         * fails harmlessly): recv_take clears the record of
                         * a block it hands on. */
                        uint64_t meta = ember_atomic_load_acquire(&s->xmeta);
                        if (meta & META_ALLOC) {
                            ch_alloc_ref_t ref;
                            memcpy(&ref, s->payload, sizeof ref);
                            ember_alloc_t a = { ref.offset, META_LEN(meta), ref.id };
                            (void)ember_pool_free(ch->pool, &a);
                        }
                        release_slot_held(ch, s, pos);
                        /* The dead producer's busy count, up since before
                         * its claim: ours to end.  If the channel was
                         * destroyed meanwhile, the block may be gone. */
                        if (end_dead(ch, &h->xsend_busy))
                            return EMBER_ERR_DESTROYED;
                    }
                    continue;
                }
                *stuck = st;
                return EMBER_ERR_EMPTY;
            }
            help_advance(&h->xtail, pos);    /* (pos, READING): tail is stale */
            continue;
        }
        if (d > 0) {
            help_advance(&h->xtail, pos);
            continue;
        }
        *stuck = 0;                           /* previous lap still being read */
        return empty_or_closed(ch, pos);
    }
}

/* ---- blocking --------------------------------------------------------------- */

#define EMBER_CH_SPIN_PURE_NS 3000   /* spin this long before yielding in the spin */

typedef ember_rc_t (*try_fn_t)(ember_ch_t *ch, void *ctx, int dead_level, uint64_t *stuck);
static ember_rc_t ch_sleep(ember_ch_t *ch, int for_send, int64_t deadline, try_fn_t fn, void *ctx,
                           uint64_t *stuck);

/* Run `fn` until it stops returning `busy` or the timeout runs out: once,
 * then spin (adaptive), then futex sleeps of at most SLICE_NS. */
static ember_rc_t ch_wait(ember_ch_t *ch, int for_send, int64_t timeout_ns, try_fn_t fn, void *ctx)
{
    ember_rc_t busy = for_send ? EMBER_ERR_FULL : EMBER_ERR_EMPTY;
    uint64_t stuck = 0;
    ember_rc_t rc = fn(ch, ctx, 0, &stuck);
    if (__builtin_expect(rc != busy, 1))
        return rc;
    if (timeout_ns == 0) {
        /* Try-once: check liveness only when the same blocking state word
         * was seen by the previous try-once too. */
        _Atomic uint64_t *last = for_send ? &ch->stuck_send : &ch->stuck_recv;
        if (stuck != 0 && ember_atomic_load_relaxed(last) == stuck) {
            rc = fn(ch, ctx, 2, &stuck);
            if (rc != busy)
                return rc;
        }
        ember_atomic_store_relaxed(last, stuck);
        if (!ch_alive(ch))
            return EMBER_ERR_DESTROYED;
        return busy;
    }
    int64_t now = now_ns();
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : now + timeout_ns;
    int64_t spin = ember_atomic_load_relaxed(&ch->spin_cur);
    int64_t spin_end = now + spin < deadline ? now + spin : deadline;
    int64_t yield_after = now + EMBER_CH_SPIN_PURE_NS;
    /* "Peer here": a receiver whose sender last published from this very
     * CPU would spin in vain (the sender cannot run while we do, on a
     * loaded machine where the scheduler put both on one CPU).  If the
     * sender is in our session, yield from the first round: the round trip
     * costs two context switches and not two pure spins on top.  If it is
     * in another session, yielding does not reach it (with autogroup
     * scheduling each session is its own group, and sched_yield only
     * yields within ours): sleep at once, the sender's wake-up gets it the
     * CPU (docs/channels.md, "Blocking"). */
    if (!for_send) {
        uint32_t me = ember_cpu_hint();
        if (me != 0 && ember_atomic_load_relaxed(&ch->h->xsend_cpu) == me) {
            yield_after = now;
            if (ember_atomic_load_relaxed(&ch->h->xsend_sid) != ember_self_sid()) {
                spin_end = now;
                spin = 0;          /* not a wasted spin: keep the adaptive length */
            }
        }
    }
    while (now < spin_end) {
        for (int i = 0; i < 16; i++)
            ember_cpu_relax();
        /* Past a short pure spin, give the CPU to anything runnable on it
         * (on a 2-core machine the peer we wait for may be queued behind
         * us); with nothing else to run, sched_yield returns at once. */
        if (now > yield_after)
            sched_yield();
        rc = fn(ch, ctx, 0, &stuck);
        if (rc != busy) {
            /* the spin paid off: grow it back toward the maximum */
            int64_t mx = ember_atomic_load_relaxed(&ch->spin_max);
            if (spin < mx)
                ember_atomic_store_relaxed(&ch->spin_cur, spin * 2 < mx ? (spin * 2 > 1000 ? spin * 2 : 1000) : mx);
            return rc;
        }
        now = now_ns();
    }
    if (spin > 0) {
        /* the spin was wasted: shorten it (not below the floor, by default
         * 1/8 of the maximum; equal to it for a fixed spin) */
        int64_t mn = ember_atomic_load_relaxed(&ch->spin_min);
        ember_atomic_store_relaxed(&ch->spin_cur, spin / 2 > mn ? spin / 2 : mn);
    }
    /* The sleep path: say what we wait on in our process slot (slots.c;
     * no system call), cleared on the way out. */
    _ember_slot_wait_begin(for_send ? EMBER_WAIT_SEND : EMBER_WAIT_RECV, ch->c_uid, 1, 0);
    rc = ch_sleep(ch, for_send, deadline, fn, ctx, &stuck);
    _ember_slot_wait_end();
    return rc;
}

/* ch_wait()'s futex loop, until `fn` stops returning busy or the deadline. */
static ember_rc_t ch_sleep(ember_ch_t *ch, int for_send, int64_t deadline, try_fn_t fn, void *ctx,
                           uint64_t *stuck)
{
    ember_rc_t busy = for_send ? EMBER_ERR_FULL : EMBER_ERR_EMPTY;
    ember_rc_t rc;
    int64_t now;
    _Atomic uint32_t *word = for_send ? &ch->h->xrecvd : &ch->h->xsent;
    _Atomic uint32_t *sleepers = for_send ? &ch->h->xsend_sleepers : &ch->h->xrecv_sleepers;
    int level = 1;
    for (;;) {
        if (!ch_alive(ch))
            return EMBER_ERR_DESTROYED;
        /* seq_cst: v is read before the flag is raised (see MEMORY ORDER). */
        uint32_t v = ember_atomic_load_seq_cst(word);
        ember_atomic_store_seq_cst(sleepers, 1);
        /* seq_cst fence: orders the flag store before the re-try's loads of
         * the slot state; pairs with the fence in notify(). */
        ember_atomic_fence_seq_cst();
        rc = fn(ch, ctx, level, stuck);
        if (rc != busy)
            return rc;
        now = now_ns();
        if (now >= deadline)
            return busy;
        int64_t sl = deadline - now < SLICE_NS ? deadline - now : SLICE_NS;
        int e = futex_wait(word, v, sl);
        if (e == EINTR)
            return EMBER_ERR_INTERRUPTED;
        level = e == ETIMEDOUT ? 2 : 1;
    }
}

typedef struct {
    uint64_t pos;
    ch_slot_t *slot;
} send_ctx_t;

static ember_rc_t send_try(ember_ch_t *ch, void *ctx, int dead_level, uint64_t *stuck)
{
    send_ctx_t *c = ctx;
    return try_claim_send(ch, dead_level, &c->pos, &c->slot, stuck);
}

typedef struct {
    int64_t max_len;
    ember_ch_msg_t *msg;
} recv_ctx_t;

static ember_rc_t recv_try(ember_ch_t *ch, void *ctx, int dead_level, uint64_t *stuck)
{
    recv_ctx_t *c = ctx;
    return try_recv(ch, RECV_CLAIM, dead_level, c->max_len, c->msg, stuck);
}

static ember_rc_t peek_readable(ember_ch_t *ch, void *ctx, int dead_level, uint64_t *stuck)
{
    (void)ctx;
    return try_recv(ch, RECV_PEEK, dead_level, -1, NULL, stuck);
}

/* Writable: the slot at head is FREE for head's position (not claimed).
 * EMBER_ERR_CLOSED once closed (a send would fail at once). */
static ember_rc_t peek_writable(ember_ch_t *ch, void *ctx, int dead_level, uint64_t *stuck)
{
    (void)ctx;
    ch_hdr_t *h = ch->h;
    if (__builtin_expect(!ch_alive(ch), 0))      /* as in try_claim_send() */
        return EMBER_ERR_DESTROYED;
    unsigned rounds = 0;
    for (uint64_t spins = 0;; spins++) {
        ember_rc_t bad = retries_exhausted(ch, &spins, &rounds, EMBER_ERR_FULL);
        if (__builtin_expect(bad != EMBER_OK, 0)) {
            if (stuck)
                *stuck = 0;
            return bad;
        }
        /* acquire loads: as in try_claim_send(). */
        uint64_t pos = ember_atomic_load_acquire(&h->xhead), end;
        if (closed_end(pos, &end) != EMBER_OK)
            return EMBER_ERR_CLOSED;
        ch_slot_t *s = slot_at(ch, pos);
        uint64_t st = st_load_acquire(ch, s, pos);
        int64_t d = posdiff(ST_POS(st), pos);
        if (d == 0 && ST_KIND(st) == K_FREE)
            return EMBER_OK;
        if (d >= 0) {
            help_advance(&h->xhead, pos);
            continue;
        }
        if (ST_KIND(st) == K_READING && dead_level > 0 && pid_dead(ST_PID(st), dead_level)) {
            /* recover_reading() writes the slot and the header, and may end
             * the last busy count of a destroy under way: do it under a
             * producer's count of our own, as claim_slot() does. */
            if (!busy_begin(ch, &h->xsend_busy))
                return EMBER_ERR_DESTROYED;
            recover_reading(ch, s, pos, st);
            handover_end(ch, &h->xsend_busy);
            continue;
        }
        *stuck = st;
        return EMBER_ERR_FULL;
    }
}

/* ---- public API ------------------------------------------------------------- */

static int too_big(ember_pool_t *pool, uint64_t len);

static int is_pow2(uint32_t x)
{
    return x != 0 && (x & (x - 1)) == 0;
}

static ember_rc_t ch_open(ember_pool_t *pool, const ember_alloc_t *a, ember_ch_t **out)
{
    ember_ch_t *ch = calloc(1, sizeof *ch);
    if (!ch)
        return EMBER_ERR_NOMEM;
    ch->h = ember_pool_ptr(pool, a->offset);
    ch->pool = pool;
    ch->alloc = *a;
    ch->capacity = ch->h->capacity;
    ch->block_size = ch->h->block_size;
    ch->payload = ch->block_size - EMBER_CH_SLOT_HEADER;
    ch->mask = (uint64_t)ch->capacity - 1;
    ch->c_uid = ch->h->c_uid;
    ch->slots = (unsigned char *)ch->h + ch->h->slots_offset;
    ch->pool_ev = ember_pool_event_word(pool);
    ch->pool_ev_waiters = ember_pool_event_waiters(pool);
    ember_atomic_store_relaxed(&ch->spin_max, EMBER_CH_DEFAULT_SPIN_NS);
    ember_atomic_store_relaxed(&ch->spin_min, EMBER_CH_DEFAULT_SPIN_NS / 8);
    ember_atomic_store_relaxed(&ch->spin_cur, EMBER_CH_DEFAULT_SPIN_NS);
    (void)my_pid();
    *out = ch;
    return EMBER_OK;
}

/* Make every slot (lap 0, FREE) with xmeta 0, i.e. zero its 16-byte header
 * (see ST_KEY).  Not called for a block the pool reports pristine (never
 * written since the pool was made: it reads as zeros, so its slots are
 * ready as they are): a channel made in fresh (sparse) pool memory touches
 * no slot page and makes no system call -- the first send or receive of
 * each slot page pays its fault, in whichever process uses it.  Slot
 * headers are 16 bytes at 64-aligned offsets: never across a page. */
static void init_slots(unsigned char *slots, uint32_t capacity, uint32_t block_size)
{
    for (uint64_t i = 0; i < capacity; i++) {
        ch_slot_t *s = (ch_slot_t *)(slots + (size_t)i * block_size);
        ember_atomic_store_relaxed(&s->xstate, 0);
        ember_atomic_store_relaxed(&s->xmeta, 0);
    }
}

ember_rc_t ember_ch_create(ember_pool_t *pool, uint64_t c_uid, uint32_t capacity,
                           uint32_t block_size, ember_ch_t **out)
{
    return ember_ch_create_ex(pool, c_uid, capacity, block_size, 0u, out);
}

static ember_rc_t check_sizes(uint32_t capacity, uint32_t block_size)
{
    if (!is_pow2(capacity) || capacity > EMBER_CH_MAX_CAPACITY)
        return EMBER_ERR_INVALID_ARG;
    if (block_size < EMBER_CH_MIN_BLOCK || block_size > EMBER_CH_MAX_BLOCK || block_size % 64 != 0)
        return EMBER_ERR_INVALID_ARG;
    return EMBER_OK;
}

/* The block of a new channel: allocated (flags as ember_pool_alloc_ex's),
 * its slots ready (zero: a pristine block is, any other is made so). */
static ember_rc_t alloc_block(ember_pool_t *pool, uint32_t capacity, uint32_t block_size,
                              unsigned flags, ember_alloc_t *a)
{
    uint64_t total = sizeof(ch_hdr_t) + (uint64_t)capacity * block_size;
    int pristine = 0;
    ember_rc_t rc = ember_pool_alloc_pristine(pool, total, -1, flags | EMBER_ALLOC_NO_FREE_WAIT,
                                              a, &pristine);
    if (rc == EMBER_ERR_EXHAUSTED && too_big(pool, total))
        return EMBER_ERR_TOO_BIG;
    if (rc != EMBER_OK)
        return rc;
    if (!pristine)
        init_slots((unsigned char *)ember_pool_ptr(pool, a->offset) + sizeof(ch_hdr_t), capacity,
                   block_size);
    return EMBER_OK;
}

/* Make the channel in block `a` (from alloc_block): its header, then a
 * handle.  On failure the block is freed. */
static ember_rc_t create_in(ember_pool_t *pool, const ember_alloc_t *a, uint64_t c_uid,
                            uint32_t capacity, uint32_t block_size, ember_ch_t **out)
{
    ch_hdr_t *h = ember_pool_ptr(pool, a->offset);
    h->version = CH_VERSION;
    h->capacity = capacity;
    h->block_size = block_size;
    ember_atomic_store_relaxed(&h->xflags, 0);
    h->c_uid = c_uid;
    ember_atomic_store_relaxed(&h->xalloc_id, a->id);
    h->slots_offset = sizeof(ch_hdr_t);
    ember_atomic_store_relaxed(&h->xhead, 0);
    ember_atomic_store_relaxed(&h->xsend_busy, 0);
    ember_atomic_store_relaxed(&h->xtail, 0);
    ember_atomic_store_relaxed(&h->xrecv_busy, 0);
    ember_atomic_store_relaxed(&h->xsent, 0);
    ember_atomic_store_relaxed(&h->xrecv_sleepers, 0);
    ember_atomic_store_relaxed(&h->xrecvd, 0);
    ember_atomic_store_relaxed(&h->xsend_sleepers, 0);
    /* release: publishes the initialised header and slots; pairs with the
     * acquire load of xmagic in ember_ch_attach() (another process learns
     * the descriptor only later, through a channel or GS, which orders it
     * anyway). */
    ember_atomic_store_release(&h->xmagic, CH_MAGIC);
    ember_rc_t rc = ch_open(pool, a, out);
    if (rc != EMBER_OK) {
        ember_atomic_store_relaxed(&h->xmagic, CH_DEAD);
        ember_pool_free(pool, a);
    }
    return rc;
}

ember_rc_t ember_ch_create_ex(ember_pool_t *pool, uint64_t c_uid, uint32_t capacity,
                              uint32_t block_size, unsigned flags, ember_ch_t **out)
{
    if (!pool || !out)
        return EMBER_ERR_INVALID_ARG;
    *out = NULL;
    ember_rc_t rc = check_sizes(capacity, block_size);
    if (rc != EMBER_OK)
        return rc;
    ember_alloc_t a;
    rc = alloc_block(pool, capacity, block_size, flags, &a);
    if (rc != EMBER_OK)
        return rc;
    return create_in(pool, &a, c_uid, capacity, block_size, out);
}

ember_rc_t ember_ch_reserve(ember_pool_t *pool, uint32_t capacity, uint32_t block_size,
                            unsigned flags, ember_ch_reserved_t *out)
{
    if (!pool || !out)
        return EMBER_ERR_INVALID_ARG;
    memset(out, 0, sizeof *out);
    ember_rc_t rc = check_sizes(capacity, block_size);
    if (rc != EMBER_OK)
        return rc;
    rc = alloc_block(pool, capacity, block_size, flags, &out->alloc);
    if (rc != EMBER_OK)
        return rc;
    /* Fault the header's page(s) in now, with zeros (create_in writes every
     * header field; xmagic stays 0 until then, so nothing attaches it). */
    memset(ember_pool_ptr(pool, out->alloc.offset), 0, sizeof(ch_hdr_t));
    out->capacity = capacity;
    out->block_size = block_size;
    return EMBER_OK;
}

ember_rc_t ember_ch_create_reserved(ember_pool_t *pool, const ember_ch_reserved_t *r,
                                    uint64_t c_uid, ember_ch_t **out)
{
    if (!pool || !r || !out || r->capacity == 0)
        return EMBER_ERR_INVALID_ARG;
    *out = NULL;
    return create_in(pool, &r->alloc, c_uid, r->capacity, r->block_size, out);
}

ember_rc_t ember_ch_unreserve(ember_pool_t *pool, const ember_ch_reserved_t *r)
{
    if (!pool || !r || r->capacity == 0)
        return EMBER_ERR_INVALID_ARG;
    return ember_pool_free(pool, &r->alloc);
}

/* ---- descriptor ---- */
#define SD_OFF_MAGIC     0
#define SD_OFF_VERSION   4
#define SD_OFF_PLEN      6
#define SD_OFF_POOL      8
#define SD_OFF_OFFSET    (SD_OFF_POOL + EMBER_POOL_SDESC_SIZE)
#define SD_OFF_ID        (SD_OFF_OFFSET + 8)
#define SD_OFF_CUID      (SD_OFF_ID + 8)
#define SD_OFF_CAP       (SD_OFF_CUID + 8)
#define SD_OFF_BLOCK     (SD_OFF_CAP + 4)
#define SD_OFF_SIZE      (SD_OFF_BLOCK + 4)
#define SD_OFF_SUM       (SD_OFF_SIZE + 8)
_Static_assert(SD_OFF_SUM + 8 == EMBER_CH_SDESC_SIZE, "descriptor layout");

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static void wr64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static void wr32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

ember_rc_t ember_ch_serialize(const ember_ch_t *ch, void *buf, size_t cap, size_t *len)
{
    if (!ch || !buf)
        return EMBER_ERR_INVALID_ARG;
    if (cap < EMBER_CH_SDESC_SIZE)
        return EMBER_ERR_BUFFER_TOO_SMALL;
    uint8_t *b = buf;
    memset(b, 0, EMBER_CH_SDESC_SIZE);
    size_t plen = 0;
    ember_rc_t rc = ember_pool_serialize(ch->pool, b + SD_OFF_POOL, EMBER_POOL_SDESC_SIZE, &plen);
    if (rc != EMBER_OK)
        return rc;
    wr32(b + SD_OFF_MAGIC, SD_MAGIC);
    wr16(b + SD_OFF_VERSION, SD_VERSION);
    wr16(b + SD_OFF_PLEN, (uint16_t)plen);
    wr64(b + SD_OFF_OFFSET, ch->alloc.offset);
    wr64(b + SD_OFF_ID, ch->alloc.id);
    wr64(b + SD_OFF_CUID, ch->c_uid);
    wr32(b + SD_OFF_CAP, ch->capacity);
    wr32(b + SD_OFF_BLOCK, ch->block_size);
    wr64(b + SD_OFF_SIZE, ch->alloc.size);
    wr64(b + SD_OFF_SUM, ember_fnv1a64(b, SD_OFF_SUM));
    if (len)
        *len = EMBER_CH_SDESC_SIZE;
    return EMBER_OK;
}

ember_rc_t ember_ch_sdesc_pool(const void *sdesc, size_t len,
                               const uint8_t **pool_sdesc, size_t *pool_sdesc_len)
{
    if (!sdesc)
        return EMBER_ERR_INVALID_ARG;
    const uint8_t *b = sdesc;
    if (len != EMBER_CH_SDESC_SIZE || rd32(b + SD_OFF_MAGIC) != SD_MAGIC)
        return EMBER_ERR_BAD_DESCRIPTOR;
    if (rd16(b + SD_OFF_VERSION) != SD_VERSION)
        return EMBER_ERR_VERSION;
    if (rd64(b + SD_OFF_SUM) != ember_fnv1a64(b, SD_OFF_SUM))
        return EMBER_ERR_BAD_DESCRIPTOR;
    uint16_t plen = rd16(b + SD_OFF_PLEN);
    uint32_t cap = rd32(b + SD_OFF_CAP), blk = rd32(b + SD_OFF_BLOCK);
    if (plen == 0 || plen > EMBER_POOL_SDESC_SIZE || !is_pow2(cap) || cap > EMBER_CH_MAX_CAPACITY
        || blk < EMBER_CH_MIN_BLOCK || blk > EMBER_CH_MAX_BLOCK || blk % 64 != 0
        || rd64(b + SD_OFF_SIZE) < sizeof(ch_hdr_t) + (uint64_t)cap * blk)
        return EMBER_ERR_BAD_DESCRIPTOR;
    if (pool_sdesc)
        *pool_sdesc = b + SD_OFF_POOL;
    if (pool_sdesc_len)
        *pool_sdesc_len = plen;
    return EMBER_OK;
}

ember_rc_t ember_ch_sdesc_info(const void *sdesc, size_t len, ember_ch_sdesc_info_t *out)
{
    if (!out)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = ember_ch_sdesc_pool(sdesc, len, NULL, NULL);
    if (rc != EMBER_OK)
        return rc;
    const uint8_t *b = sdesc;
    out->offset = rd64(b + SD_OFF_OFFSET);
    out->id = rd64(b + SD_OFF_ID);
    out->size = rd64(b + SD_OFF_SIZE);
    out->c_uid = rd64(b + SD_OFF_CUID);
    out->capacity = rd32(b + SD_OFF_CAP);
    out->block_size = rd32(b + SD_OFF_BLOCK);
    return EMBER_OK;
}

ember_rc_t ember_ch_attach(ember_pool_t *pool, const void *sdesc, size_t len, ember_ch_t **out)
{
    if (!pool || !sdesc || !out)
        return EMBER_ERR_INVALID_ARG;
    *out = NULL;
    const uint8_t *psd;
    size_t plen;
    ember_rc_t rc = ember_ch_sdesc_pool(sdesc, len, &psd, &plen);
    if (rc != EMBER_OK)
        return rc;
    char name[EMBER_POOL_NAME_MAX];
    if (ember_pool_sdesc_name(psd, plen, name, sizeof name) != EMBER_OK)
        return EMBER_ERR_BAD_DESCRIPTOR;
    const char *mine = ember_pool_shm_name(pool);
    if (!mine || strcmp(name, mine) != 0)
        return EMBER_ERR_BAD_DESCRIPTOR;          /* a channel of another pool */
    const uint8_t *b = sdesc;
    ember_alloc_t a = { rd64(b + SD_OFF_OFFSET), rd64(b + SD_OFF_SIZE), rd64(b + SD_OFF_ID) };
    rc = ember_pool_check(pool, &a);
    if (rc == EMBER_ERR_STALE || rc == EMBER_ERR_DOUBLE_FREE)
        return EMBER_ERR_DESTROYED;
    if (rc != EMBER_OK)
        return rc == EMBER_ERR_OUT_OF_RANGE ? EMBER_ERR_BAD_DESCRIPTOR : rc;
    const ch_hdr_t *h = ember_pool_ptr(pool, a.offset);
    /* acquire: pairs with the release store of xmagic in ember_ch_create(). */
    uint64_t magic = ember_atomic_load_acquire(&h->xmagic);
    if (magic == CH_DEAD)
        return EMBER_ERR_DESTROYED;
    if (magic != CH_MAGIC)
        return EMBER_ERR_BAD_MAGIC;
    if (h->version != CH_VERSION)
        return EMBER_ERR_VERSION;
    uint64_t id = ember_atomic_load_relaxed(&h->xalloc_id);
    if (id == 0)
        return EMBER_ERR_DESTROYED;               /* a destroy is under way */
    if (h->capacity != rd32(b + SD_OFF_CAP) || h->block_size != rd32(b + SD_OFF_BLOCK)
        || h->c_uid != rd64(b + SD_OFF_CUID) || id != a.id
        || h->slots_offset != sizeof(ch_hdr_t))
        return EMBER_ERR_CORRUPT;
    return ch_open(pool, &a, out);
}

ember_rc_t ember_ch_detach(ember_ch_t *ch)
{
    if (!ch)
        return EMBER_ERR_INVALID_ARG;
    free(ch);
    return EMBER_OK;
}

ember_rc_t ember_ch_destroy_last(ember_ch_t *ch)
{
    if (!ch)
        return EMBER_ERR_INVALID_ARG;
    if (ch_alive(ch)) {
        /* relaxed: nobody else is left to write or read the counts (the
         * caller's promise); ember_ch_destroy's acq_rel fetch_or of
         * BUSY_DESTROYING, in this thread, comes after them. */
        ember_atomic_store_relaxed(&ch->h->xsend_busy, 0u);
        ember_atomic_store_relaxed(&ch->h->xrecv_busy, 0u);
    }
    return ember_ch_destroy(ch);
}

ember_rc_t ember_ch_destroy(ember_ch_t *ch)
{
    if (!ch)
        return EMBER_ERR_INVALID_ARG;
    ch_hdr_t *h = ch->h;
    /* A stale handle (its channel destroyed through another handle) must
     * not destroy whatever occupies the block now: the allocation must
     * still be ours (pool check: live, same id), and the destroy itself is
     * the CAS of the header's allocation id from OUR id to 0 -- the check
     * and the claim in one atomic step, since ids are unique per
     * allocation (a channel made later in the same block has another id).
     * acq_rel: only one destroyer wins; pairs with the acquire loads in
     * ch_alive() of every later operation, which then fail. */
    uint64_t id = ch->alloc.id;
    if (ember_pool_check(ch->pool, &ch->alloc) != EMBER_OK
        || !ember_atomic_cas_acq_rel(&h->xalloc_id, &id, 0)) {
        free(ch);
        return EMBER_ERR_DESTROYED;
    }
    /* release: attaches that read DEAD see a destroyed channel. */
    ember_atomic_store_release(&h->xmagic, CH_DEAD);
    /* Wake every sleeper so it sees DEAD and returns EMBER_ERR_DESTROYED. */
    ember_atomic_add_seq_cst(&h->xsent, 1);
    ember_atomic_add_seq_cst(&h->xrecvd, 1);
    futex_wake_all(&h->xsent);
    futex_wake_all(&h->xrecvd);
    ember_atomic_add_seq_cst(ch->pool_ev, 1);
    futex_wake_all(ch->pool_ev);
    /* seq_cst fence: orders the CAS of xalloc_id above before the scan's
     * loads of the slots; pairs with the fence in publish_ex() (a large
     * message published meanwhile is freed here or by its sender). */
    ember_atomic_fence_seq_cst();
    /* Free the allocations of queued large messages; take over the slots
     * of producers killed between their claim and their publish, and end
     * their busy counts (HAND-OVER), or the block would never be freed. */
    for (uint32_t i = 0; i < ch->capacity; i++) {
        ch_slot_t *s = (ch_slot_t *)(ch->slots + (size_t)i * ch->block_size);
        /* (the slot's real state: the key depends on the index bits only) */
        uint64_t st = st_load_acquire(ch, s, i);
        int k = ST_KIND(st);
        if (k == K_WRITING) {
            if (!pid_dead(ST_PID(st), 2))
                continue;              /* a live producer ends its own count */
            /* The CAS makes it ours exactly once (a consumer's skip may
             * race with us: one wins, one ends the count). */
            if (!st_cas_acq_rel(ch, s, i, &st, MK(ST_POS(st), K_READING, my_pid())))
                continue;
            (void)end_dead(ch, &h->xsend_busy);   /* (before BUSY_DESTROYING: a decrement) */
        } else if (k == K_READING) {
            if (!pid_dead(ST_PID(st), 2))
                continue;              /* a live receiver owns it, and ends its count */
            /* A consumer killed between its claim and its release: take
             * the slot (once, as a producer's recovery would) and end its
             * count; its message's block is freed below. */
            if (!st_cas_acq_rel(ch, s, i, &st, MK(ST_POS(st), K_READING, my_pid())))
                continue;
            (void)end_dead(ch, &h->xrecv_busy);
        } else if (k != K_FULL) {
            continue;
        }
        /* acquire: pairs with the release store of xmeta (a large send's
         * record, or publish_ex()). */
        uint64_t meta = ember_atomic_load_acquire(&s->xmeta);
        if (meta & META_ALLOC) {
            ch_alloc_ref_t ref;
            memcpy(&ref, s->payload, sizeof ref);
            ember_alloc_t a = { ref.offset, META_LEN(meta), ref.id };
            (void)ember_pool_free(ch->pool, &a);
        }
    }
    /* A producer or consumer may still be writing the header after its
     * hand-over (HAND-OVER): the block is freed by whoever is last out --
     * here if no side is busy, else by the last hand-over to end; one that
     * never ends (dead) costs the block, not a stray write.  Never waits. */
    ember_atomic_store_relaxed(&h->xfree_refs, 3u);  /* published by the fetch_ors below */
    ember_rc_t rc = EMBER_OK;
    _Atomic uint32_t *sides[2] = { &h->xsend_busy, &h->xrecv_busy };
    for (int i = 0; i < 2; i++) {
        /* acq_rel: release publishes xfree_refs to a hand-over that ends
         * after this (its acq_rel fetch_sub reads our bit); acquire: a
         * count read at 0 means that side's header writes are done.  Pairs
         * with handover_end(). */
        uint32_t old = ember_atomic_or_acq_rel(sides[i], BUSY_DESTROYING);
        if (old == 0) {
            ember_rc_t r = side_done(ch->pool, &ch->alloc, h, sides[i]);
            if (r != EMBER_OK)
                rc = r;
        }
    }
    /* acq_rel: as in side_done(). */
    if (ember_atomic_sub_acq_rel(&h->xfree_refs, 1u) == 1u)
        rc = ember_pool_free(ch->pool, &ch->alloc);
    free(ch);
    return rc;
}

/* Could the pool never hold a message of `len` bytes (heap minus one
 * block header)? */
/* Larger than the pool's whole heap: no block can ever hold it.  A field
 * read (the heap is the segment less its header), not ember_pool_stats():
 * this runs on every large send. */
static int too_big(ember_pool_t *pool, uint64_t len)
{
    return len + EMBER_POOL_ALIGN > ember_pool_size(pool) - EMBER_POOL_HDR_SIZE;
}

/* Claim a slot (blocking), for every send path.  EMBER_OK: the slot is
 * ours and our busy count up; the caller publishes (publish_ex ends it). */
static inline ember_rc_t claim(ember_ch_t *ch, int64_t timeout_ns, send_ctx_t *c)
{
    uint64_t stuck;
    ember_rc_t rc = try_claim_send(ch, 0, &c->pos, &c->slot, &stuck);
    if (__builtin_expect(rc != EMBER_OK, 0))
        rc = ch_wait(ch, 1, timeout_ns, send_try, c);
    if (rc == EMBER_OK)
        claim_pause(ch);
    return rc;
}

/* An inline message (len <= payload): claim, copy, publish; `wake` as in
 * publish_ex() (0: ember_ch_send_quiet, the caller notifies later). */
static inline ember_rc_t send_inline(ember_ch_t *ch, const void *data, uint64_t len,
                                     int64_t timeout_ns, int wake)
{
    send_ctx_t c;
    ember_rc_t rc = claim(ch, timeout_ns, &c);
    if (rc != EMBER_OK)
        return rc;
    memcpy(c.slot->payload, data, len);
    (void)publish_ex(ch, c.slot, c.pos, len, wake);
    return EMBER_OK;
}

ember_rc_t ember_ch_send_alloc(ember_ch_t *ch, const ember_alloc_t *a, int64_t timeout_ns)
{
    if (!ch || !a)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = ember_pool_check(ch->pool, a);
    if (rc != EMBER_OK)
        return rc;
    send_ctx_t c;
    rc = claim(ch, timeout_ns, &c);
    if (rc != EMBER_OK)
        return rc;
    ch_alloc_ref_t ref = { a->offset, a->id };
    memcpy(c.slot->payload, &ref, sizeof ref);
    if (publish(ch, c.slot, c.pos, META_ALLOC | a->size))
        (void)ember_pool_free(ch->pool, a);      /* destroyed meanwhile: nobody's (publish_ex) */
    return EMBER_OK;
}

ember_rc_t ember_ch_send(ember_ch_t *ch, const void *data, uint64_t len, int64_t timeout_ns)
{
    if (__builtin_expect(!ch || (!data && len), 0))
        return EMBER_ERR_INVALID_ARG;
    if (__builtin_expect(len <= ch->payload, 1))
        return send_inline(ch, data, len, timeout_ns, 1);
    if (len >= META_SKIP)
        return EMBER_ERR_TOO_BIG;
    if (too_big(ch->pool, len))
        return EMBER_ERR_TOO_BIG;
    /* Large message: claim the slot first, then allocate and RECORD the
     * block in the slot before copying into it, so that a death anywhere
     * after the record lets the consumer that skips our slot free it. */
    int64_t t0 = timeout_ns > 0 ? now_ns() : 0;
    send_ctx_t c;
    ember_rc_t rc = claim(ch, timeout_ns, &c);
    if (rc != EMBER_OK)
        return rc;
    if (timeout_ns > 0) {
        timeout_ns -= now_ns() - t0;
        if (timeout_ns <= 0)
            timeout_ns = 1;
    }
    ember_alloc_t a;
    rc = ember_pool_alloc_wait(ch->pool, len, timeout_ns, &a);
    if (rc != EMBER_OK) {
        /* Abort: publish a skip marker (the slot cannot be given back
         * because tail may already wait on it). */
        (void)publish(ch, c.slot, c.pos, META_SKIP);
        return rc == EMBER_ERR_TIMEOUT ? EMBER_ERR_EXHAUSTED : rc;
    }
    ch_alloc_ref_t ref = { a.offset, a.id };
    memcpy(c.slot->payload, &ref, sizeof ref);
    /* release: the record (payload ref) before the meta that names it;
     * pairs with the acquire load of xmeta in the dead-producer skip. */
    ember_atomic_store_release(&c.slot->xmeta, META_ALLOC | len);
    memcpy(ember_pool_ptr(ch->pool, a.offset), data, len);
    if (publish(ch, c.slot, c.pos, META_ALLOC | len))
        (void)ember_pool_free(ch->pool, &a);     /* destroyed meanwhile: nobody's (publish_ex) */
    return EMBER_OK;
}

ember_rc_t ember_ch_send_quiet(ember_ch_t *ch, const void *data, uint64_t len)
{
    if (__builtin_expect(!ch || (!data && len), 0))
        return EMBER_ERR_INVALID_ARG;
    if (len > ch->payload)
        return EMBER_ERR_TOO_BIG;
    return send_inline(ch, data, len, 0, 0);
}

ember_rc_t ember_ch_notify(ember_ch_t *ch)
{
    if (!ch)
        return EMBER_ERR_INVALID_ARG;
    if (!ch_alive(ch))
        return EMBER_ERR_DESTROYED;
    /* The same fence and sleepers handshake as after any publish. */
    notify_sent(ch);
    return EMBER_OK;
}

ember_rc_t ember_ch_recv_begin(ember_ch_t *ch, int64_t timeout_ns, int64_t max_len,
                               ember_ch_msg_t *msg)
{
    if (__builtin_expect(!ch || !msg, 0))
        return EMBER_ERR_INVALID_ARG;
    uint64_t stuck;
    ember_rc_t rc = try_recv(ch, RECV_CLAIM, 0, max_len, msg, &stuck);
    if (rc == EMBER_ERR_EMPTY) {
        recv_ctx_t c = { max_len, msg };
        rc = ch_wait(ch, 0, timeout_ns, recv_try, &c);
    }
    if (rc != EMBER_OK || !msg->is_alloc)
        return rc;
    /* Large message: the slot stays READING (so that if we die, the producer
     * that recovers the slot frees the allocation) until recv_end/take. */
    if (ember_pool_check(ch->pool, &msg->alloc) != EMBER_OK) {
        release_slot(ch, msg->slot_, msg->pos_);
        msg->slot_ = NULL;
        return EMBER_ERR_CORRUPT;
    }
    msg->data = ember_pool_ptr(ch->pool, msg->alloc.offset);
    return EMBER_OK;
}

ember_rc_t ember_ch_recv_take(ember_ch_t *ch, ember_ch_msg_t *msg)
{
    if (!ch || !msg)
        return EMBER_ERR_INVALID_ARG;
    if (!msg->is_alloc || !msg->slot_)
        return EMBER_ERR_INVALID_ARG;
    /* The block is the caller's now: clear the slot's record of it so that
     * no recovery ever frees it (see the dead-producer skip in try_recv). */
    ember_atomic_store_relaxed(&((ch_slot_t *)msg->slot_)->xmeta, 0);
    release_slot(ch, msg->slot_, msg->pos_);
    msg->slot_ = NULL;
    return EMBER_OK;
}

ember_rc_t ember_ch_recv_end(ember_ch_t *ch, ember_ch_msg_t *msg)
{
    if (!ch || !msg)
        return EMBER_ERR_INVALID_ARG;
    if (msg->slot_) {
        /* Free first, then release: a death in between leaves the slot
         * READING and the recovering producer's second free fails its id
         * check harmlessly. */
        if (msg->is_alloc)
            (void)ember_pool_free(ch->pool, &msg->alloc);
        release_slot(ch, msg->slot_, msg->pos_);
        msg->slot_ = NULL;
    }
    return EMBER_OK;
}

ember_rc_t ember_ch_recv(ember_ch_t *ch, void *buf, uint64_t cap, uint64_t *len, int64_t timeout_ns)
{
    if (!ch || (!buf && cap) || cap > INT64_MAX)
        return EMBER_ERR_INVALID_ARG;
    ember_ch_msg_t m;
    ember_rc_t rc = ember_ch_recv_begin(ch, timeout_ns, (int64_t)cap, &m);
    if (rc == EMBER_ERR_BUFFER_TOO_SMALL && len)
        *len = m.len;
    if (rc != EMBER_OK)
        return rc;
    if (m.len)
        memcpy(buf, m.data, m.len);
    if (len)
        *len = m.len;
    ember_ch_recv_end(ch, &m);
    return EMBER_OK;
}

ember_rc_t ember_ch_poll(ember_ch_t *ch, int writable, int64_t timeout_ns)
{
    if (!ch)
        return EMBER_ERR_INVALID_ARG;
    return ch_wait(ch, writable != 0, timeout_ns, writable ? peek_writable : peek_readable, NULL);
}

static size_t scan_ready(ember_ch_t *const *chs, size_t n, int writable, int level, uint8_t *ready)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t stuck;
        ember_rc_t rc = writable ? peek_writable(chs[i], NULL, level, &stuck)
                                 : peek_readable(chs[i], NULL, level, &stuck);
        /* closed (and drained, for reading) or corrupt: the call that
         * follows does not block either, it fails at once */
        ready[i] = rc == EMBER_OK || rc == EMBER_ERR_CLOSED || rc == EMBER_ERR_CORRUPT;
        k += ready[i];
    }
    return k;
}

static ember_rc_t wait_any_sleep(ember_ch_t *const *chs, size_t n, int writable,
                                 int64_t deadline, int same_pool, uint8_t *ready, size_t *nready);

ember_rc_t ember_ch_wait_any(ember_ch_t *const *chs, size_t n, int writable,
                             int64_t timeout_ns, uint8_t *ready, size_t *nready)
{
    if (!chs || n == 0 || !ready)
        return EMBER_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++)
        if (!chs[i])
            return EMBER_ERR_INVALID_ARG;
    size_t k = scan_ready(chs, n, writable, 0, ready);
    if (nready)
        *nready = k;
    if (k)
        return EMBER_OK;
    if (timeout_ns == 0) {
        k = scan_ready(chs, n, writable, 1, ready);
        if (nready)
            *nready = k;
        return k ? EMBER_OK : EMBER_ERR_TIMEOUT;
    }
    int same_pool = 1;
    for (size_t i = 1; i < n; i++)
        if (chs[i]->pool_ev != chs[0]->pool_ev)
            same_pool = 0;
    int64_t now = now_ns();
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : now + timeout_ns;
    int64_t spin_end = now + ember_atomic_load_relaxed(&chs[0]->spin_cur);
    if (spin_end > deadline)
        spin_end = deadline;
    while (now < spin_end) {
        for (int i = 0; i < 16; i++)
            ember_cpu_relax();
        if ((k = scan_ready(chs, n, writable, 0, ready)) != 0) {
            if (nready)
                *nready = k;
            return EMBER_OK;
        }
        now = now_ns();
    }
    /* The sleep path: say what we wait on in our process slot (slots.c). */
    _ember_slot_wait_begin(writable ? EMBER_WAIT_ANY_SEND : EMBER_WAIT_ANY_RECV, chs[0]->c_uid,
                           (uint32_t)n, 0);
    ember_rc_t rc = wait_any_sleep(chs, n, writable, deadline, same_pool, ready, nready);
    _ember_slot_wait_end();
    return rc;
}

/* ember_ch_wait_any()'s futex loop. */
static ember_rc_t wait_any_sleep(ember_ch_t *const *chs, size_t n, int writable,
                                 int64_t deadline, int same_pool, uint8_t *ready, size_t *nready)
{
    size_t k;
    int64_t now;
    _Atomic uint32_t *word = chs[0]->pool_ev;
    int level = 1;
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            if (!ch_alive(chs[i])) {
                if (nready)
                    *nready = 0;
                return EMBER_ERR_DESTROYED;
            }
        }
        /* seq_cst: v is read before the flags are raised (same handshake as
         * ch_wait(); the pool's event-waiters word is a sleepers flag). */
        uint32_t v = ember_atomic_load_seq_cst(word);
        for (size_t i = 0; i < n; i++)
            ember_atomic_store_seq_cst(chs[i]->pool_ev_waiters, 1);
        /* seq_cst fence: orders the flag stores before the re-scan's loads
         * of slot states; pairs with the fence in notify(). */
        ember_atomic_fence_seq_cst();
        k = scan_ready(chs, n, writable, level, ready);
        int e = 0;
        if (!k) {
            now = now_ns();
            if (now < deadline) {
                int64_t cap = same_pool ? SLICE_NS : MULTI_SLICE_NS;
                int64_t sl = deadline - now < cap ? deadline - now : cap;
                e = futex_wait(word, v, sl);
            }
        }
        if (nready)
            *nready = k;
        if (k)
            return EMBER_OK;
        if (e == EINTR)
            return EMBER_ERR_INTERRUPTED;
        if (now_ns() >= deadline) {
            k = scan_ready(chs, n, writable, level, ready);
            if (nready)
                *nready = k;
            return k ? EMBER_OK : EMBER_ERR_TIMEOUT;
        }
        level = e == ETIMEDOUT ? 2 : 1;
    }
}

uint64_t ember_ch_count(const ember_ch_t *ch)
{
    if (!ch)
        return 0;
    uint64_t t = ember_atomic_load_acquire(&ch->h->xtail);
    uint64_t hd = ember_atomic_load_acquire(&ch->h->xhead) & ~HEAD_CLOSED;
    if (hd <= t)
        return 0;
    return hd - t > ch->capacity ? ch->capacity : hd - t;
}

/* ember_ch_wait_below()'s try: busy (FULL) while n or more are queued. */
static ember_rc_t below_try(ember_ch_t *ch, void *ctx, int dead_level, uint64_t *stuck)
{
    (void)dead_level;
    (void)stuck;
    if (!ch_alive(ch))
        return EMBER_ERR_DESTROYED;
    return ember_ch_count(ch) >= *(const uint64_t *)ctx ? EMBER_ERR_FULL : EMBER_OK;
}

ember_rc_t ember_ch_wait_below(ember_ch_t *ch, uint64_t n, int64_t timeout_ns)
{
    if (!ch)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = below_try(ch, &n, 0, NULL);
    if (rc != EMBER_ERR_FULL || timeout_ns == 0)
        return rc;
    /* A sender's sleep on xrecvd, without its spin: each receive's release
     * bumps it and wakes us (notify_recvd; the sleepers flag handshake of
     * ch_sleep, whose seq_cst fence pairs with notify()'s). */
    _ember_slot_wait_begin(EMBER_WAIT_SEND, ch->c_uid, 1, 0);
    rc = ch_sleep(ch, 1, timeout_ns < 0 ? INT64_MAX : now_ns() + timeout_ns, below_try, &n,
                  &(uint64_t){0});
    _ember_slot_wait_end();
    return rc;
}

ember_rc_t ember_ch_close(ember_ch_t *ch)
{
    if (!ch)
        return EMBER_ERR_INVALID_ARG;
    if (!ch_alive(ch))
        return EMBER_ERR_DESTROYED;
    ch_hdr_t *h = ch->h;
    /* seq_cst: the hint first (receivers that find the ring empty look at
     * head only once they see it; see empty_or_closed()).  A closer killed
     * right after it leaves an open channel whose receivers read head on
     * every empty receive: slower, never wrong. */
    ember_atomic_or_seq_cst(&h->xflags, FLAG_CLOSED);
    /* seq_cst: the one step of a close.  head's value at this instant is
     * the end: every CAS that would advance head past it fails from now on
     * (help_advance() expects a value without the bit), so no producer
     * claims a position after the end, and one that claimed the end itself
     * learns it from its own failed head CAS and gives the slot back
     * (try_claim_send()).  Pairs with the acquire loads of head in
     * try_claim_send(), empty_or_closed() and peek_writable(). */
    ember_atomic_or_seq_cst(&h->xhead, HEAD_CLOSED);
    /* Wake every sleeper (receivers on xsent, senders on xrecvd, wait_any on
     * the pool's event word) so that it re-tries and sees the close.
     * seq_cst: each bump follows the fetch_or above in the single total
     * order, and a sleeper read its word before its re-try (the Dekker
     * handshake of MEMORY ORDER): it either saw CLOSED in that re-try or
     * finds its word changed / is woken.  Not conditional on the sleepers
     * flags: a close is rare. */
    ember_atomic_add_seq_cst(&h->xsent, 1);
    futex_wake_all(&h->xsent);
    ember_atomic_add_seq_cst(&h->xrecvd, 1);
    futex_wake_all(&h->xrecvd);
    ember_atomic_add_seq_cst(ch->pool_ev, 1);
    futex_wake_all(ch->pool_ev);
    return EMBER_OK;
}

int ember_ch_is_closed(const ember_ch_t *ch)
{
    /* acquire: pairs with the fetch_or in ember_ch_close(). */
    return ch && (ember_atomic_load_acquire(&ch->h->xhead) & HEAD_CLOSED) != 0;
}

uint32_t ember_ch_capacity(const ember_ch_t *ch) { return ch ? ch->capacity : 0; }
uint32_t ember_ch_block_size(const ember_ch_t *ch) { return ch ? ch->block_size : 0; }
uint32_t ember_ch_payload_size(const ember_ch_t *ch) { return ch ? ch->payload : 0; }
uint64_t ember_ch_c_uid(const ember_ch_t *ch) { return ch ? ch->c_uid : 0; }
ember_pool_t *ember_ch_pool(const ember_ch_t *ch) { return ch ? ch->pool : NULL; }
const ember_alloc_t *ember_ch_alloc(const ember_ch_t *ch) { return ch ? &ch->alloc : NULL; }

void ember_ch_set_spin(ember_ch_t *ch, int64_t spin_ns)
{
    ember_ch_set_spin_range(ch, spin_ns / 8, spin_ns);
}

void ember_ch_set_spin_range(ember_ch_t *ch, int64_t min_ns, int64_t max_ns)
{
    if (!ch)
        return;
    if (max_ns < 0)
        max_ns = 0;
    if (min_ns < 0)
        min_ns = 0;
    if (min_ns > max_ns)
        min_ns = max_ns;
    ember_atomic_store_relaxed(&ch->spin_max, max_ns);
    ember_atomic_store_relaxed(&ch->spin_min, min_ns);
    ember_atomic_store_relaxed(&ch->spin_cur, max_ns);
}
