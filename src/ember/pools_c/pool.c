/*
 * pool.c -- ember's shared-memory pools: a POSIX shm segment with a
 * death-robust boundary-tag allocator inside it.
 *
 * SEGMENT LAYOUT (offsets from the segment base; details in docs/pools.md)
 *
 *   [0, EMBER_POOL_HDR_SIZE)  pool header (_ember_pool_hdr_t): identity
 *                             (magic, layout version, sizes, m_uid, label,
 *                             shm name), the robust process-shared mutex,
 *                             the allocator state it protects (alloc-id
 *                             counter, stats, bin bitmap, bin heads), the
 *                             free-event futex word + waiter count on their
 *                             own cache line, and the channel event word +
 *                             waiter count on another cache line.
 *   [heap_off, seg_size)      the heap: a sequence of blocks that tiles it
 *                             exactly.  Every block starts with a 64-byte
 *                             header (_ember_blk_t); its payload follows,
 *                             so every payload is 64-byte aligned.
 *
 *   The shm name is "/ember.<owner tag>.<m_uid hex>.<48 random bits hex>":
 *   nobody can take a pool's name first on purpose (EEXIST is retried).
 *
 * COMMITTED PAGES
 *
 *   tmpfs backs a page only when it is first touched; a touch when tmpfs is
 *   full is a SIGBUS.  So no byte of the segment is written (or read) before
 *   it is committed with fallocate(): [0, committed) is backed, committed is
 *   a high-water mark in the header (under the mutex) that grows as alloc
 *   hands out blocks beyond it (a block and the header of the tail split
 *   off it are committed before any store into them), to a multiple of a
 *   step that doubles with the mark from _EMBER_COMMIT_MIN up to
 *   _EMBER_COMMIT_STEP: a fresh pool's first blocks (a runtime's control
 *   channels) cost tens of pages, not 512 (fallocate allocates every page
 *   it commits: ~0.8 ms for 2 MiB on a VM), and a growing pool still
 *   commits in a few calls.  Only the last free block can reach past the mark.  When
 *   fallocate fails with ENOSPC, alloc looks for a fitting free block below
 *   the mark and else returns EMBER_ERR_EXHAUSTED: a full /dev/shm costs
 *   the allocating process an exhausted pool, and nobody a SIGBUS.  A pool
 *   larger than the free space of /dev/shm is refused at create;
 *   EMBER_POOL_COMMIT_FULL commits the whole segment at create.  stats()
 *   counts uncommitted pages only as far as statvfs says they can be backed.
 *   A death in fallocate before the mark is raised loses nothing: the next
 *   alloc commits the range again (fallocate is idempotent).
 *
 * ALLOCATOR
 *
 *   Boundary tags: a block header holds its own size and the size of the
 *   block before it, so both neighbours are found in O(1).  Free blocks sit
 *   in segregated doubly-linked free lists (links are segment OFFSETS, never
 *   pointers), one list per size class: exact classes for blocks below
 *   2 KiB (32 x 64 B units), then 8 sub-classes per power of two (TLSF-like
 *   mapping).  A bitmap of non-empty classes finds the class to take from
 *   with a few find-first-set instructions.  alloc takes the head of the
 *   first non-empty class whose blocks all fit (O(1)); only when no such
 *   class exists does it search the one partial class first-fit, so a
 *   request never fails while a fitting block exists.  The taken block is
 *   split when the rest can hold a minimum block (128 B); free coalesces
 *   with both neighbours, so no two free blocks are ever adjacent.
 *   Everything runs under one robust process-shared mutex: critical
 *   sections are a few dozen instructions and touch no syscall.
 *
 * INVARIANTS (hold whenever the mutex is free and consistent)
 *
 *   I1 walking the heap from heap_off by block sizes visits block headers
 *      only and ends exactly at seg_size ("the walk");
 *   I2 every block header has the block magic and a state FREE or ALLOC;
 *   I3 prev_size of each block is the size of the block before it (0 for
 *      the first);
 *   I4 no two adjacent blocks are both FREE;
 *   I5 every FREE block is in exactly the list of its size class, every
 *      list is consistent, the bitmap bit of a class is set iff its list is
 *      non-empty;
 *   I6 free_bytes and live_allocs equal the sums over the walk.
 *
 * DEATH ROBUSTNESS (what a SIGKILL in the middle of an operation costs)
 *
 *   The mutex is PTHREAD_MUTEX_ROBUST: when its owner dies the next locker
 *   gets EOWNERDEAD and runs _ember_repair() before pthread_mutex_consistent.
 *   The repair trusts only I1 and I2: it walks the heap, rewrites every
 *   prev_size (I3), merges adjacent FREE blocks (I4), and rebuilds all free
 *   lists, the bitmap and the stats from scratch (I5, I6).  So the only
 *   thing a mutation must keep true at EVERY instant (in program order; a
 *   killed process stops between two instructions, and its completed
 *   stores stay in the shared mapping) is I1 + I2:
 *
 *   - split (alloc): the tail block's header is written completely first
 *     (inside the payload of the block being split, where the walk does not
 *     look), then the original block's size is shrunk with ONE aligned
 *     8-byte store.  Before that store the walk sees the old big block,
 *     after it the two blocks: both tilings are valid.
 *   - merge (free): the absorbed neighbour is unlinked from its list, then
 *     the surviving block's size grows with ONE aligned 8-byte store.
 *     Before: two adjacent blocks (the repair merges them), after: one.
 *   - state changes are one 8-byte store of the tag word.
 *   Those stores are atomic release stores, so neither the compiler nor the
 *   CPU moves the header writes that must precede them past them.
 *
 *   The cost of a death mid-operation is therefore (ember_pool_reclaim is
 *   a sequence of frees under one lock: a death in it costs what a death
 *   in free costs, for the one block being freed):
 *   - in ember_pool_alloc: before the block's tag is stored ALLOC the block
 *     is still FREE in the walk and the repair puts it back -- nothing is
 *     lost; after that store the block is allocated but its offset never
 *     reached anyone: that ONE block is lost (it stays allocated until the
 *     pool is destroyed, or until someone reclaims it with
 *     ember_pool_next_alloc + ember_pool_free);
 *   - in ember_pool_free: before the tag is stored FREE the block is still
 *     allocated -- that ONE block is lost as above; after it, the block is
 *     FREE in the walk and the repair links/merges it -- nothing is lost;
 *   - a block allocated with EMBER_ALLOC_OWNED records the allocating pid
 *     (xowner) before its tag says ALLOC, so a block lost by a death in
 *     alloc, and every block the dead process still owned, is freed by
 *     ember_pool_reclaim(pool, pid) (GS calls it when a process dies);
 *     ember_pool_set_owner(pool, a, 0) makes a block nobody's before it is
 *     handed over, and reclaim never touches it;
 *   - the pristine mark (`touched`, see _ember_alloc_locked) is raised
 *     before the block's tag says ALLOC and never lowered: a death between
 *     the two leaves it too high, which only makes later blocks count as
 *     written; the repair leaves it alone;
 *   - in any case the pool stays usable by everyone else; allocations held
 *     by other processes are untouched (the repair never changes an ALLOC
 *     block), and the alloc-id counter only ever moves forward.
 *   A process that dies while waiting in ember_pool_alloc_wait leaves the
 *   free-waiter count one too high: later frees then issue one needless
 *   FUTEX_WAKE each -- a cost in speed, never in correctness.
 *   If the walk itself fails (a header with a bad magic, a size that is not
 *   a multiple of 64 or leaves the heap: memory corrupted by a stray write,
 *   not by a death) the repair gives up without marking the mutex
 *   consistent: the mutex becomes ENOTRECOVERABLE and every later operation
 *   returns EMBER_ERR_CORRUPT -- never a crash.  A repairer that dies in the
 *   repair leaves the mutex owner-dead again; the repair is idempotent and
 *   keeps I1 + I2 at every store, so the next locker just repeats it.
 *
 * A LIVE HOLDER THAT DOES NOT LET GO
 *
 *   A process stopped inside a critical section (SIGSTOP, a debugger) is
 *   not dead: the robust mutex cannot help.  So no wait for the mutex is
 *   unbounded: the fast path is one trylock (then a short spin of reads
 *   and trylocks while the owner word is set); a busy mutex is waited for
 *   with pthread_mutex_timedlock (in slices measured on CLOCK_MONOTONIC)
 *   up to the caller's timeout, and EMBER_ERR_LOCK_STUCK is returned once one holder (the
 *   owner thread id in the robust futex word, and xlock_seq, bumped at
 *   every acquisition, both unchanged) has been seen holding it for the
 *   process-wide lock bound (default 10 s).  A thread that waits in slices
 *   (Python, to see Ctrl-C) has its slices on one holder added up.
 *
 * CORRUPT SHARED STATE (stray writes, hostile processes of the same user)
 *
 *   Nothing read from the segment is used before it is checked against the
 *   pool's bounds, which come from process-local copies validated at
 *   attach: every free-list link and bin head must be a 64-aligned heap
 *   offset below the committed mark whose header says FREE with a sane size
 *   of the right class and whose neighbour links point back; every block a
 *   free or alloc touches (the neighbours, the block after a split) is
 *   checked before the first store; the committed mark is checked at every
 *   lock; every walk is bounded (by the heap size over the minimum block);
 *   the mutex's kind word is compared with a sound one before glibc sees it
 *   (a scribbled kind would make glibc assert), and an unrecoverable or
 *   self-owned mutex is refused.  A failed check returns EMBER_ERR_CORRUPT
 *   (stores made before the failed check may remain: the pool is corrupt
 *   already); a scribbled owner word that names a live thread is a stuck
 *   holder (above).  Never a crash, never an unbounded wait.
 *
 * VALIDATION OF CALLER INPUT
 *
 *   free/check take an ember_alloc_t that may come from a stale or forged
 *   descriptor: the offset must lie inside the heap and be 64-aligned, the
 *   header must carry the block magic and a sane size, the state must be
 *   ALLOC (else EMBER_ERR_DOUBLE_FREE) and the id must match (else
 *   EMBER_ERR_STALE).  Every read stays inside the mapping; nothing crashes.
 *
 * Descriptor formats are documented at _ember_pool_sdesc_write() and
 * ember_alloc_serialize() (and in docs/pools.md).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE         /* shm_open, robust mutexes, fallocate, syscall(): self-contained */
#endif
#include "pool.h"
#include "ember_base.h"      /* clock, futex, pid, checksums: one copy for all of ember */

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* constants                                                          */

#define EMBER_POOL_MAGIC          0x4C4F4F5052424D45ull  /* "EMBRPOOL" */
#define EMBER_POOL_LAYOUT_VERSION 3u
#define EMBER_POOL_MAX_SIZE       (1ull << 47)

#define _EMBER_BLK_HDR            64u
#define _EMBER_BLK_MIN            128u      /* header + one 64 B payload unit */
#define _EMBER_BLK_MAGIC          0xEB10C4A500000000ull
#define _EMBER_BLK_MAGIC_MASK     0xFFFFFFFF00000000ull
#define _EMBER_BLK_FREE           0x0000F4EEu
#define _EMBER_BLK_ALLOC          0x0000A110u
#define _EMBER_TAG_FREE           (_EMBER_BLK_MAGIC | _EMBER_BLK_FREE)
#define _EMBER_TAG_ALLOC          (_EMBER_BLK_MAGIC | _EMBER_BLK_ALLOC)

/* size classes, in 64-byte units u = block size / 64 */
#define _EMBER_EXACT_UNITS        32u       /* classes 0..31: exactly u units */
#define _EMBER_SL_BITS            3u        /* 8 sub-classes per power of two */
#define _EMBER_NBINS              328u      /* enough for u < 2^42 */
#define _EMBER_BITMAP_WORDS       ((_EMBER_NBINS + 63u) / 64u)

/* glibc's marks in pthread_mutex_t.__data.__owner: INT_MAX while the
 * locker that got EOWNERDEAD repairs (a normal, passing state), INT_MAX - 1
 * once the mutex can never be taken again */
#define _EMBER_MUTEX_NOTRECOVERABLE (0x7fffffff - 1)

/* trylocks of a busy mutex before the timed (sleeping) wait */
#define _EMBER_LOCK_SPINS         100

/* the heap is committed (fallocate) to a multiple of a step that doubles
 * with the committed mark, from the first to the second of these bytes */
#define _EMBER_COMMIT_MIN         (64ull << 10)
#define _EMBER_COMMIT_STEP        (2ull << 20)
/* a lock wait that timed out continues the previous one of the same thread
 * on the same holder if it starts within this long after it */
#define _EMBER_LW_GAP_NS          1000000000ll

#define _EMBER_POOL_SDESC_MAGIC   0x50424D45u  /* "EMBP" */
#define _EMBER_ALLOC_SDESC_MAGIC  0x41424D45u  /* "EMBA" */
#define _EMBER_SDESC_VERSION      1u

/* ------------------------------------------------------------------ */
/* shared structures                                                  */

typedef struct {
    _Atomic uint64_t xtag;        /* magic | state; one store changes state */
    _Atomic uint64_t xsize;       /* whole block incl. this header; one store */
    uint64_t prev_size;           /* size of the block before (0: first) */
    uint64_t id;                  /* allocation id (kept after free) */
    uint64_t req;                 /* bytes requested by alloc */
    uint64_t next_free;           /* free-list links: segment offsets, 0 = none */
    uint64_t prev_free;
    _Atomic uint64_t xowner;      /* pid that owns the allocation, 0 = nobody */
} _ember_blk_t;
_Static_assert(sizeof(_ember_blk_t) == _EMBER_BLK_HDR, "block header is 64 bytes");

typedef struct {
    /* identity: written once by the creator, xmagic last */
    _Atomic uint64_t xmagic;
    uint32_t version;
    uint32_t hdr_size;
    uint64_t seg_size;
    uint64_t m_uid;
    uint64_t heap_off;
    uint64_t heap_size;
    uint32_t flags;               /* EMBER_POOL_COMMIT_FULL */
    uint32_t reserved_;
    char shm_name[EMBER_POOL_NAME_MAX];
    char label[EMBER_POOL_LABEL_MAX];

    /* the lock (own cache line) and its acquisition count */
    alignas(EMBER_CACHE_LINE) pthread_mutex_t mutex;
    _Atomic uint64_t xlock_seq;   /* +1 at every acquisition (holder only) */

    /* allocator state: protected by mutex, rebuilt by the repair */
    alignas(EMBER_CACHE_LINE) uint64_t next_id;
    uint64_t free_bytes;
    uint64_t live_allocs;
    uint64_t repairs;
    uint64_t committed;           /* [0, committed) of the segment is fallocated */
    uint64_t touched;             /* no payload byte at or above it ever written */
    uint64_t bitmap[_EMBER_BITMAP_WORDS];
    uint64_t bins[_EMBER_NBINS];

    /* free event: waiters of ember_pool_alloc_wait (own cache line) */
    alignas(EMBER_CACHE_LINE) _Atomic uint32_t xfree_seq;
    _Atomic uint32_t xfree_waiters;

    /* channel event word (own cache line), see pool.h */
    alignas(EMBER_CACHE_LINE) _Atomic uint32_t xevent;
    _Atomic uint32_t xevent_waiters;
} _ember_pool_hdr_t;
_Static_assert(sizeof(_ember_pool_hdr_t) <= EMBER_POOL_HDR_SIZE, "pool header fits its page");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "8-byte atomics");

struct ember_pool {
    uint8_t *base;
    _ember_pool_hdr_t *h;
    uint64_t seg_size;      /* local copies, validated at attach: never  */
    uint64_t heap_off;      /* trust the shared header for bounds checks */
    uint64_t heap_end;
    uint64_t m_uid;
    uint64_t lim;           /* min(committed, heap_end), read under the mutex */
    uint64_t page;
    dev_t seg_dev;          /* the segment's identity: committing pages reopens */
    ino_t seg_ino;          /* it by name and checks it is still this file */
    int mutex_kind;         /* what a sound mutex's kind word holds */
    char shm_name[EMBER_POOL_NAME_MAX];
    char label[EMBER_POOL_LABEL_MAX];
};

/* ------------------------------------------------------------------ */
/* small helpers                                                      */

static inline _ember_blk_t *_ember_blk(const ember_pool_t *p, uint64_t off)
{
    return (_ember_blk_t *)(void *)(p->base + off);
}

static inline uint64_t _ember_round64(uint64_t n) { return (n + 63u) & ~(uint64_t)63u; }

static inline unsigned _ember_bin_of(uint64_t bsize)
{
    uint64_t u = bsize >> 6;
    if (u < _EMBER_EXACT_UNITS)
        return (unsigned)u;
    unsigned fl = 63u - (unsigned)__builtin_clzll(u);          /* >= 5 */
    unsigned sl = (unsigned)(u >> (fl - _EMBER_SL_BITS)) & 7u;
    return _EMBER_EXACT_UNITS + (fl - 5u) * 8u + sl;
}

/* Smallest block size that maps to class b (b >= _EMBER_EXACT_UNITS). */
static inline uint64_t _ember_bin_lo(unsigned b)
{
    unsigned fl = (b - _EMBER_EXACT_UNITS) / 8u + 5u;
    unsigned sl = (b - _EMBER_EXACT_UNITS) % 8u;
    return ((1ull << fl) + ((uint64_t)sl << (fl - _EMBER_SL_BITS))) << 6;
}

/* ------------------------------------------------------------------ */
/* bounds checks of what is read from shared memory (mutex held)      */

/* A block header offset read from shared memory (a free-list link, a bin
 * head): inside the committed heap, 64-aligned, room for a minimum block. */
static inline int _ember_off_ok(const ember_pool_t *p, uint64_t off)
{
    return off >= p->heap_off && off <= p->lim - _EMBER_BLK_HDR && !(off & 63u) &&
           off <= p->heap_end - _EMBER_BLK_MIN;
}

/* The size in a block header at a checked offset: a multiple of 64, at
 * least a minimum block, not past the heap end. */
static inline int _ember_size_ok(const ember_pool_t *p, uint64_t off, uint64_t sz)
{
    return sz >= _EMBER_BLK_MIN && !(sz & 63u) && sz <= p->heap_end - off;
}

/* A FREE block at a link read from shared memory; gives its size. */
static inline int _ember_free_ok(const ember_pool_t *p, uint64_t off, uint64_t *sz)
{
    if (!_ember_off_ok(p, off))
        return 0;
    _ember_blk_t *b = _ember_blk(p, off);
    *sz = ember_atomic_load_relaxed(&b->xsize);
    return ember_atomic_load_relaxed(&b->xtag) == _EMBER_TAG_FREE && _ember_size_ok(p, off, *sz);
}

/* ------------------------------------------------------------------ */
/* free lists (mutex held)                                            */

/* Link the FREE block at off (size already checked) at the head of its
 * class.  EMBER_ERR_CORRUPT (nothing changed) if the head is not sane. */
static ember_rc_t _ember_bin_push(ember_pool_t *p, uint64_t off)
{
    _ember_pool_hdr_t *h = p->h;
    _ember_blk_t *b = _ember_blk(p, off);
    unsigned bin = _ember_bin_of(ember_atomic_load_relaxed(&b->xsize));
    uint64_t head = h->bins[bin], hsz;
    if (head && (head == off || !_ember_free_ok(p, head, &hsz)))
        return EMBER_ERR_CORRUPT;
    b->prev_free = 0;
    b->next_free = head;
    if (head)
        _ember_blk(p, head)->prev_free = off;
    h->bins[bin] = off;
    h->bitmap[bin / 64u] |= 1ull << (bin % 64u);
    return EMBER_OK;
}

/* Check that the FREE block at off (size checked, of class bin) is linked
 * as its neighbours say: every link read is checked before anything is
 * written. */
static inline ember_rc_t _ember_links_ok(ember_pool_t *p, uint64_t off, unsigned bin)
{
    _ember_pool_hdr_t *h = p->h;
    _ember_blk_t *b = _ember_blk(p, off);
    uint64_t nx = b->next_free, pv = b->prev_free, sz;
    if (nx && (nx == off || !_ember_free_ok(p, nx, &sz) || _ember_blk(p, nx)->prev_free != off))
        return EMBER_ERR_CORRUPT;
    if (pv ? (pv == off || !_ember_free_ok(p, pv, &sz) || _ember_blk(p, pv)->next_free != off)
           : h->bins[bin] != off)
        return EMBER_ERR_CORRUPT;
    return EMBER_OK;
}

/* Unlink the FREE block at off of class bin whose links were checked. */
static inline void _ember_bin_unlink(ember_pool_t *p, uint64_t off, unsigned bin)
{
    _ember_pool_hdr_t *h = p->h;
    _ember_blk_t *b = _ember_blk(p, off);
    uint64_t nx = b->next_free, pv = b->prev_free;
    if (pv)
        _ember_blk(p, pv)->next_free = nx;
    else
        h->bins[bin] = nx;
    if (nx)
        _ember_blk(p, nx)->prev_free = pv;
    if (!h->bins[bin])
        h->bitmap[bin / 64u] &= ~(1ull << (bin % 64u));
    b->next_free = b->prev_free = 0;
}

/* Check the links of the FREE block at off (size checked), then unlink it
 * (tests/c/pool_stress.c stages deaths with it). */
static inline ember_rc_t _ember_bin_remove(ember_pool_t *p, uint64_t off)
{
    unsigned bin = _ember_bin_of(ember_atomic_load_relaxed(&_ember_blk(p, off)->xsize));
    ember_rc_t rc = _ember_links_ok(p, off, bin);
    if (rc == EMBER_OK)
        _ember_bin_unlink(p, off, bin);
    return rc;
}

/* First non-empty class >= from, or _EMBER_NBINS. */
static unsigned _ember_bin_find(const _ember_pool_hdr_t *h, unsigned from)
{
    if (from >= _EMBER_NBINS)
        return _EMBER_NBINS;
    unsigned w = from / 64u;
    uint64_t bits = h->bitmap[w] & (~0ull << (from % 64u));
    for (;;) {
        if (bits)
            return w * 64u + (unsigned)__builtin_ctzll(bits);
        if (++w >= _EMBER_BITMAP_WORDS)
            return _EMBER_NBINS;
        bits = h->bitmap[w];
    }
}

/* Most blocks a heap can hold: bounds every list walk. */
static inline uint64_t _ember_max_blocks(const ember_pool_t *p)
{
    return (p->heap_end - p->heap_off) / _EMBER_BLK_MIN + 1u;
}

/* A free block of at least `need` bytes: *out = its offset, or 0; *obin
 * its class. */
static inline ember_rc_t _ember_find_block(ember_pool_t *p, uint64_t need, uint64_t *out,
                                           unsigned *obin)
{
    _ember_pool_hdr_t *h = p->h;
    uint64_t sz;
    unsigned b = _ember_bin_of(need);
    int partial = b >= _EMBER_EXACT_UNITS && need != _ember_bin_lo(b);
    unsigned f = _ember_bin_find(h, partial ? b + 1u : b);
    *out = 0;
    if (f < _EMBER_NBINS) {                /* every block of class f fits */
        uint64_t off = h->bins[f];
        if (!_ember_free_ok(p, off, &sz) || _ember_bin_of(sz) != f || sz < need)
            return EMBER_ERR_CORRUPT;
        *out = off;
        *obin = f;
        return EMBER_OK;
    }
    if (partial) {                         /* last resort: first fit in b */
        uint64_t n = _ember_max_blocks(p);
        for (uint64_t off = h->bins[b]; off; off = _ember_blk(p, off)->next_free) {
            if (!n-- || !_ember_free_ok(p, off, &sz) || _ember_bin_of(sz) != b)
                return EMBER_ERR_CORRUPT;
            if (sz >= need) {
                *out = off;
                *obin = b;
                return EMBER_OK;
            }
        }
    }
    return EMBER_OK;
}

/* ------------------------------------------------------------------ */
/* committing pages                                                   */

/* Remember the segment's identity (fd: the segment, just opened). */
static void _ember_note_seg(ember_pool_t *p, int fd)
{
    struct stat st;
    if (fstat(fd, &st) == 0) {
        p->seg_dev = st.st_dev;
        p->seg_ino = st.st_ino;
    }
}

/* Open the segment again, for fallocate(): no fd is kept open between
 * commits (an attached pool costs no fd, and a process that closes every
 * fd after fork() cannot pull one from under us).  The name must still
 * name the same segment (ESTALE otherwise: someone replaced it).  -1 with
 * errno set on failure. */
static int _ember_open_seg(const ember_pool_t *p)
{
    int fd = shm_open(p->shm_name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_dev != p->seg_dev || st.st_ino != p->seg_ino) {
        close(fd);
        errno = ESTALE;
        return -1;
    }
    return fd;
}

/* Make [0, end) of the segment backed by pages (mutex held), so that no
 * store into a block handed out can fault on a full /dev/shm.  The
 * committed mark only grows, to a multiple of a step that doubles with it
 * (_EMBER_COMMIT_MIN .. _EMBER_COMMIT_STEP); if that does not fit, exactly
 * the pages needed are tried.  EMBER_ERR_EXHAUSTED (errno ENOSPC) if
 * /dev/shm has no room. */
static ember_rc_t _ember_commit(ember_pool_t *p, uint64_t end)
{
    _ember_pool_hdr_t *h = p->h;
    uint64_t c = h->committed;
    if (end <= c)
        return EMBER_OK;
    uint64_t step = _EMBER_COMMIT_MIN;
    while (step < c && step < _EMBER_COMMIT_STEP)
        step <<= 1;
    uint64_t want = (end + step - 1u) / step * step;
    uint64_t least = (end + p->page - 1u) / p->page * p->page;
    if (want > p->seg_size)
        want = p->seg_size;
    if (least > want)
        least = want;
    int fd = _ember_open_seg(p);
    if (fd < 0)
        return EMBER_ERR_OS;
    for (;;) {
        if (fallocate(fd, 0, (off_t)c, (off_t)(want - c)) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EOPNOTSUPP || errno == ENOSYS)
            break;                 /* not tmpfs: nothing to reserve with */
        if (want > least) {
            want = least;
            continue;
        }
        int e = errno;
        close(fd);
        return e == ENOSPC ? EMBER_ERR_EXHAUSTED : EMBER_ERR_OS;
    }
    close(fd);
    h->committed = want;
    p->lim = want < p->heap_end ? want : p->heap_end;
    return EMBER_OK;
}

/* Free bytes of the file system backing the segment (UINT64_MAX: no
 * limit, or unknown). */
static uint64_t _ember_fs_avail(int fd)
{
    struct statvfs sv;
    if (fstatvfs(fd, &sv) != 0 || sv.f_blocks == 0)
        return UINT64_MAX;
    return (uint64_t)sv.f_bavail * (uint64_t)sv.f_frsize;
}

/* ------------------------------------------------------------------ */
/* the lock, and the repair after an owner's death                    */

/* Rebuild I3..I6 from a heap that satisfies I1 + I2 (see the file header).
 * Mutex held (owner-dead state).  EMBER_ERR_CORRUPT if the walk fails. */
static ember_rc_t _ember_repair(ember_pool_t *p)
{
    _ember_pool_hdr_t *h = p->h;
    uint64_t off, prev_size = 0, last_free = 0;

    /* pass 1: check the walk, fix prev_size, merge adjacent free blocks.
     * Every step moves on by at least _EMBER_BLK_MIN: the walk is bounded. */
    for (off = p->heap_off; off < p->heap_end;) {
        _ember_blk_t *b = _ember_blk(p, off);
        if (off > p->lim - _EMBER_BLK_HDR)
            return EMBER_ERR_CORRUPT;     /* a header on a page never committed */
        uint64_t tag = ember_atomic_load_relaxed(&b->xtag);
        uint64_t sz = ember_atomic_load_relaxed(&b->xsize);
        if (tag != _EMBER_TAG_FREE && tag != _EMBER_TAG_ALLOC)
            return EMBER_ERR_CORRUPT;
        if (!_ember_size_ok(p, off, sz))
            return EMBER_ERR_CORRUPT;
        if (tag == _EMBER_TAG_FREE && last_free) {
            /* merge into the free block before: one store keeps I1 */
            _ember_blk_t *lb = _ember_blk(p, last_free);
            uint64_t nsz = ember_atomic_load_relaxed(&lb->xsize) + sz;
            ember_atomic_store_release(&lb->xsize, nsz);
            prev_size = nsz;
            off += sz;
            continue;
        }
        b->prev_size = prev_size;
        last_free = tag == _EMBER_TAG_FREE ? off : 0;
        prev_size = sz;
        off += sz;
    }
    if (off != p->heap_end)
        return EMBER_ERR_CORRUPT;

    /* pass 2: rebuild lists, bitmap and stats */
    memset(h->bitmap, 0, sizeof h->bitmap);
    memset(h->bins, 0, sizeof h->bins);
    h->free_bytes = 0;
    h->live_allocs = 0;
    for (off = p->heap_off; off < p->heap_end;) {
        _ember_blk_t *b = _ember_blk(p, off);
        uint64_t sz = ember_atomic_load_relaxed(&b->xsize);
        if (ember_atomic_load_relaxed(&b->xtag) == _EMBER_TAG_FREE) {
            h->free_bytes += sz;
            if (_ember_bin_push(p, off) != EMBER_OK)
                return EMBER_ERR_CORRUPT;
        } else {
            h->live_allocs++;
        }
        off += sz;
    }
    h->repairs++;
    return EMBER_OK;
}

static _Atomic int64_t _ember_lock_bound_ns = EMBER_POOL_LOCK_BOUND_NS;

void ember_pool_after_clone(void)
{
    ember_pid_after_clone_();
}

void ember_pool_set_lock_bound(int64_t ns)
{
    ember_atomic_store_relaxed(&_ember_lock_bound_ns, ns > 0 ? ns : EMBER_POOL_LOCK_BOUND_NS);
}

int64_t ember_pool_lock_bound(void)
{
    return ember_atomic_load_relaxed(&_ember_lock_bound_ns);
}

/* The mutex's futex word.  glibc keeps it first in pthread_mutex_t, and for
 * a robust mutex the kernel ABI fixes its meaning: the owner's thread id in
 * the low 30 bits (FUTEX_TID_MASK).  Read only to name the holder. */
static inline uint32_t _ember_owner_tid(_ember_pool_hdr_t *h)
{
    _Atomic uint32_t *w = (_Atomic uint32_t *)(void *)&h->mutex;
    /* relaxed: a snapshot for a report; nothing is ordered by it */
    return ember_atomic_load_relaxed(w) & FUTEX_TID_MASK;
}

uint32_t ember_pool_lock_owner(const ember_pool_t *pool)
{
    return pool ? _ember_owner_tid(pool->h) : 0;
}

/* The kind word a sound mutex made by ember_pool_create has (glibc): a
 * scribbled kind would send glibc down paths that assert. */
static int _ember_sound_mutex_kind(void)
{
#ifdef __GLIBC__
    static _Atomic int kind = -1;
    int k = ember_atomic_load_relaxed(&kind);
    if (k < 0) {
        pthread_mutex_t m;
        pthread_mutexattr_t ma;
        pthread_mutexattr_init(&ma);
        pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
        pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
        pthread_mutex_init(&m, &ma);
        pthread_mutexattr_destroy(&ma);
        k = m.__data.__kind;
        pthread_mutex_destroy(&m);
        /* relaxed: every thread computes the same value */
        ember_atomic_store_relaxed(&kind, k);
    }
    return k;
#else
    return 0;
#endif
}

/* After the mutex was taken (r from pthread_mutex_*lock): repair after an
 * owner's death, check the committed mark, count the acquisition. */
static ember_rc_t _ember_locked(ember_pool_t *p, int r)
{
    _ember_pool_hdr_t *h = p->h;
    if (r == 0 || r == EOWNERDEAD) {
        uint64_t c = h->committed;
        if (c < p->heap_off + _EMBER_BLK_HDR || c > p->seg_size || (c & (p->page - 1u))) {
            /* leave the mutex as it was found: never consistent again */
            pthread_mutex_unlock(&h->mutex);
            return EMBER_ERR_CORRUPT;
        }
        p->lim = c < p->heap_end ? c : p->heap_end;
        if (r == EOWNERDEAD) {
            if (_ember_repair(p) != EMBER_OK) {
                /* unlocking without pthread_mutex_consistent makes the mutex
                 * ENOTRECOVERABLE: every later op reports EMBER_ERR_CORRUPT */
                pthread_mutex_unlock(&h->mutex);
                return EMBER_ERR_CORRUPT;
            }
            pthread_mutex_consistent(&h->mutex);
        }
        /* relaxed: only the holder writes it; waiters read it to see
         * whether the mutex changed hands (a heuristic, no ordering) */
        ember_atomic_store_relaxed(&h->xlock_seq, ember_atomic_load_relaxed(&h->xlock_seq) + 1u);
        return EMBER_OK;
    }
    if (r == ETIMEDOUT || r == EBUSY)
        return EMBER_ERR_TIMEOUT;
    /* ENOTRECOVERABLE, or a mutex whose words were scribbled (EDEADLK,
     * EINVAL, EAGAIN, EPERM ...) */
    return EMBER_ERR_CORRUPT;
}

/* One wait of this thread that timed out on a busy mutex: the next one on
 * the same holder continues it (a caller that waits in slices). */
static _Thread_local struct {
    const void *h;
    uint32_t owner;
    uint64_t seq;
    int64_t since, last;
} _ember_lw;

static ember_rc_t _ember_lock_slow(ember_pool_t *p, int64_t timeout_ns)
{
    _ember_pool_hdr_t *h = p->h;
    int64_t bound = ember_atomic_load_relaxed(&_ember_lock_bound_ns);
    int64_t now = ember_now_ns();
    int64_t deadline = timeout_ns < 0 || timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
    uint32_t owner = _ember_owner_tid(h);
    /* relaxed: see _ember_locked() */
    uint64_t seq = ember_atomic_load_relaxed(&h->xlock_seq);
    int64_t since = now;
    if (_ember_lw.h == h && _ember_lw.owner == owner && _ember_lw.seq == seq &&
        now - _ember_lw.last < _EMBER_LW_GAP_NS)
        since = _ember_lw.since;
    _ember_lw.h = NULL;
    for (;;) {
        int64_t until = since + bound < deadline ? since + bound : deadline;
        /* pthread_mutex_timedlock takes a CLOCK_REALTIME deadline (and,
         * unlike pthread_mutex_clocklock, is known to the sanitizers): wait
         * in slices of at most 200 ms measured on CLOCK_MONOTONIC, so a
         * jump of the wall clock cannot stretch a wait by more than that. */
        int64_t step = until - now;
        if (step > 200000000ll)
            step = 200000000ll;
        if (step < 1)
            step = 1;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t abs_ns = (int64_t)ts.tv_nsec + step;
        ts.tv_sec += (time_t)(abs_ns / 1000000000ll);
        ts.tv_nsec = (long)(abs_ns % 1000000000ll);
        int r = pthread_mutex_timedlock(&h->mutex, &ts);
        if (r != ETIMEDOUT)
            return _ember_locked(p, r);
        now = ember_now_ns();
        if (now < until)
            continue;
        uint32_t o2 = _ember_owner_tid(h);
        uint64_t s2 = ember_atomic_load_relaxed(&h->xlock_seq);
        if (o2 != owner || s2 != seq) {    /* it changed hands: a new holder */
            owner = o2;
            seq = s2;
            since = now;
        } else if (now - since >= bound) {
            /* a word naming this very thread (which holds no pool lock
             * across calls) was scribbled */
            return owner == (uint32_t)gettid() ? EMBER_ERR_CORRUPT : EMBER_ERR_LOCK_STUCK;
        }
        if (now >= deadline) {
            _ember_lw.h = h;
            _ember_lw.owner = owner;
            _ember_lw.seq = seq;
            _ember_lw.since = since;
            _ember_lw.last = now;
            return EMBER_ERR_TIMEOUT;
        }
    }
}

/* Take the pool mutex, waiting at most timeout_ns (< 0: up to the lock
 * bound; 0: try once). */
static inline ember_rc_t _ember_lock_t(ember_pool_t *p, int64_t timeout_ns)
{
    _ember_pool_hdr_t *h = p->h;
#ifdef __GLIBC__
    /* a scribbled kind would send glibc down paths that assert; a mutex
     * made unrecoverable (by a failed repair) is left locked by glibc's
     * trylock, so it is refused here */
    if (__builtin_expect(h->mutex.__data.__kind != p->mutex_kind ||
                         h->mutex.__data.__owner == _EMBER_MUTEX_NOTRECOVERABLE, 0))
        return EMBER_ERR_CORRUPT;
#endif
    int r = pthread_mutex_trylock(&h->mutex);
    if (__builtin_expect(r == EBUSY, 0)) {
        if (timeout_ns == 0)
            return EMBER_ERR_TIMEOUT;
        /* critical sections are a few dozen instructions: spin briefly
         * (reading the owner word, not writing it) before the timed wait */
        for (int i = 0; i < _EMBER_LOCK_SPINS && r == EBUSY; i++) {
            ember_cpu_relax();
            if (_ember_owner_tid(h) == 0)
                r = pthread_mutex_trylock(&h->mutex);
        }
        if (r == EBUSY)
            return _ember_lock_slow(p, timeout_ns);
    }
    return _ember_locked(p, r);
}

static inline ember_rc_t _ember_lock(ember_pool_t *p)
{
    return _ember_lock_t(p, -1);
}

static inline void _ember_unlock(ember_pool_t *p)
{
    pthread_mutex_unlock(&p->h->mutex);
}

/* ------------------------------------------------------------------ */
/* create / attach / detach                                           */

static int _ember_tag_ok(const char *t)
{
    size_t n = 0;
    for (; t[n]; n++) {
        char c = t[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
        if (n >= 24)
            return 0;
    }
    return n >= 1;
}

/* 48 unpredictable bits for a segment name. */
static int _ember_random48(uint64_t *out)
{
    uint8_t b[6];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    *out = ember_get_le(b, 6);
    return 0;
}

static ember_rc_t _ember_fail(int fd, const char *name, void *map, uint64_t seg, ember_pool_t *p, int e)
{
    if (map)
        munmap(map, seg);
    if (fd >= 0)
        close(fd);
    if (name)
        shm_unlink(name);
    free(p);
    errno = e;
    return EMBER_ERR_OS;
}

ember_rc_t ember_pool_create(uint64_t size, uint64_t m_uid, const char *owner_tag,
                             const char *label, ember_pool_t **out)
{
    return ember_pool_create_ex(size, m_uid, owner_tag, label, 0u, out);
}

ember_rc_t ember_pool_create_ex(uint64_t size, uint64_t m_uid, const char *owner_tag,
                                const char *label, unsigned flags, ember_pool_t **out)
{
    if (!out || !owner_tag || !_ember_tag_ok(owner_tag) || size == 0 ||
        size > EMBER_POOL_MAX_SIZE || (flags & ~EMBER_POOL_COMMIT_FULL))
        return EMBER_ERR_INVALID_ARG;
    *out = NULL;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t seg = (size + page - 1) / page * page;
    if (seg < EMBER_POOL_HDR_SIZE + page)
        seg = EMBER_POOL_HDR_SIZE + page;

    ember_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return EMBER_ERR_NOMEM;
    p->page = page;
    p->mutex_kind = _ember_sound_mutex_kind();
    if (label)
        snprintf(p->label, sizeof p->label, "%s", label);

    /* An unpredictable name: nobody can take it first on purpose; a name
     * taken by chance (or by someone guessing) is retried. */
    int fd = -1;
    for (int tries = 0; fd < 0; tries++) {
        uint64_t rnd;
        if (_ember_random48(&rnd) != 0)
            return _ember_fail(-1, NULL, NULL, 0, p, errno);
        snprintf(p->shm_name, sizeof p->shm_name, "/ember.%s.%016llx.%012llx", owner_tag,
                 (unsigned long long)m_uid, (unsigned long long)rnd);
        fd = shm_open(p->shm_name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd < 0 && (errno != EEXIST || tries >= 16))
            return _ember_fail(-1, NULL, NULL, 0, p, errno);
    }
    /* Refuse a segment that the file system can never back. */
    if (seg > _ember_fs_avail(fd))
        return _ember_fail(fd, p->shm_name, NULL, 0, p, ENOSPC);
    if (ftruncate(fd, (off_t)seg) != 0)
        return _ember_fail(fd, p->shm_name, NULL, 0, p, errno);
    /* Commit the header page and the first heap block's page now (or all
     * of the segment): the header is written below. */
    uint64_t commit = (flags & EMBER_POOL_COMMIT_FULL) ? seg : EMBER_POOL_HDR_SIZE + page;
    for (;;) {
        if (fallocate(fd, 0, 0, (off_t)commit) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EOPNOTSUPP || errno == ENOSYS)
            break;
        return _ember_fail(fd, p->shm_name, NULL, 0, p, errno);
    }
    void *base = mmap(NULL, seg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED)
        return _ember_fail(fd, p->shm_name, NULL, 0, p, errno);
    _ember_note_seg(p, fd);
    close(fd);                       /* reopened by name to commit pages */
    p->base = base;
    p->h = base;
    p->seg_size = seg;
    p->heap_off = EMBER_POOL_HDR_SIZE;
    p->heap_end = seg;
    p->lim = commit < seg ? commit : seg;
    p->m_uid = m_uid;

    /* The new segment reads as zeros; only the header page and the first
     * heap page are written here. */
    _ember_pool_hdr_t *h = p->h;
    h->version = EMBER_POOL_LAYOUT_VERSION;
    h->hdr_size = EMBER_POOL_HDR_SIZE;
    h->seg_size = seg;
    h->m_uid = m_uid;
    h->heap_off = p->heap_off;
    h->heap_size = seg - p->heap_off;
    h->flags = flags;
    h->committed = commit;
    h->touched = p->heap_off;     /* the first block's header only */
    memcpy(h->shm_name, p->shm_name, sizeof h->shm_name);
    memcpy(h->label, p->label, sizeof h->label);

    pthread_mutexattr_t ma;
    int r = pthread_mutexattr_init(&ma);
    if (!r) r = pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    if (!r) r = pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    if (!r) r = pthread_mutex_init(&h->mutex, &ma);
    pthread_mutexattr_destroy(&ma);
    if (r)
        return _ember_fail(-1, p->shm_name, base, seg, p, r);   /* fd closed above */
    h->next_id = 0;
    _ember_blk_t *b = _ember_blk(p, p->heap_off);
    ember_atomic_store_relaxed(&b->xsize, h->heap_size);
    ember_atomic_store_relaxed(&b->xtag, _EMBER_TAG_FREE);
    b->prev_size = 0;
    h->free_bytes = h->heap_size;
    (void)_ember_bin_push(p, p->heap_off);        /* empty lists: cannot fail */

    /* release: publishes the header written above; pairs with the acquire
     * load of xmagic in ember_pool_attach() (the mapping is shared). */
    ember_atomic_store_release(&h->xmagic, EMBER_POOL_MAGIC);
    *out = p;
    return EMBER_OK;
}

/* Pool descriptor, EMBER_POOL_SDESC_SIZE (96) bytes, little-endian:
 *   0  u32 magic "EMBP"        4  u16 version     6  u16 length (96)
 *   8  u64 m_uid              16  u64 segment size
 *  24  char[64] shm name, NUL-padded (must contain a NUL)
 *  88  u64 FNV-1a-64 of bytes 0..87 */
static void _ember_pool_sdesc_write(const ember_pool_t *p, uint8_t *d)
{
    memset(d, 0, EMBER_POOL_SDESC_SIZE);
    ember_put_le(d + 0, _EMBER_POOL_SDESC_MAGIC, 4);
    ember_put_le(d + 4, _EMBER_SDESC_VERSION, 2);
    ember_put_le(d + 6, EMBER_POOL_SDESC_SIZE, 2);
    ember_put_le(d + 8, p->m_uid, 8);
    ember_put_le(d + 16, p->seg_size, 8);
    memcpy(d + 24, p->shm_name, strnlen(p->shm_name, EMBER_POOL_NAME_MAX - 1));
    ember_put_le(d + 88, ember_fnv1a64(d, 88), 8);
}

/* Check a pool descriptor's bytes; give its fields. */
static ember_rc_t _ember_pool_sdesc_read(const uint8_t *d, size_t len, uint64_t *m_uid,
                                         uint64_t *seg_size, const char **name)
{
    if (!d || len != EMBER_POOL_SDESC_SIZE)
        return EMBER_ERR_BAD_DESCRIPTOR;
    if (ember_get_le(d, 4) != _EMBER_POOL_SDESC_MAGIC ||
        ember_get_le(d + 4, 2) != _EMBER_SDESC_VERSION ||
        ember_get_le(d + 6, 2) != EMBER_POOL_SDESC_SIZE ||
        ember_get_le(d + 88, 8) != ember_fnv1a64(d, 88))
        return EMBER_ERR_BAD_DESCRIPTOR;
    const char *n = (const char *)(d + 24);
    if (memchr(n, 0, EMBER_POOL_NAME_MAX) == NULL || strncmp(n, "/ember.", 7) != 0 ||
        strchr(n + 1, '/') != NULL)
        return EMBER_ERR_BAD_DESCRIPTOR;
    if (m_uid) *m_uid = ember_get_le(d + 8, 8);
    if (seg_size) *seg_size = ember_get_le(d + 16, 8);
    if (name) *name = n;
    return EMBER_OK;
}

ember_rc_t ember_pool_attach(const void *sdesc, size_t len, ember_pool_t **out)
{
    if (!out)
        return EMBER_ERR_INVALID_ARG;
    *out = NULL;
    uint64_t m_uid, seg;
    const char *name;
    ember_rc_t rc = _ember_pool_sdesc_read(sdesc, len, &m_uid, &seg, &name);
    if (rc)
        return rc;
    if (seg < 2u * EMBER_POOL_HDR_SIZE || seg > EMBER_POOL_MAX_SIZE || (seg & 63u))
        return EMBER_ERR_BAD_DESCRIPTOR;

    int fd = shm_open(name, O_RDWR, 0);
    if (fd < 0)
        return errno == ENOENT ? EMBER_ERR_NOT_FOUND : EMBER_ERR_OS;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return EMBER_ERR_OS;
    }
    if ((uint64_t)st.st_size != seg) {
        close(fd);
        return EMBER_ERR_BAD_MAGIC;      /* a different segment under that name */
    }
    void *base = mmap(NULL, seg, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        close(fd);
        errno = e;
        return EMBER_ERR_OS;
    }
    _ember_pool_hdr_t *h = base;
    ember_rc_t bad = EMBER_OK;
    /* acquire: pairs with the release store of xmagic in ember_pool_create() */
    if (ember_atomic_load_acquire(&h->xmagic) != EMBER_POOL_MAGIC)
        bad = EMBER_ERR_BAD_MAGIC;
    else if (h->version != EMBER_POOL_LAYOUT_VERSION)
        bad = EMBER_ERR_VERSION;
    else if (h->m_uid != m_uid || h->seg_size != seg || h->hdr_size != EMBER_POOL_HDR_SIZE ||
             h->heap_off != EMBER_POOL_HDR_SIZE || h->heap_size != seg - EMBER_POOL_HDR_SIZE)
        bad = EMBER_ERR_BAD_MAGIC;
    ember_pool_t *p = bad ? NULL : calloc(1, sizeof *p);
    if (!p) {
        munmap(base, seg);
        close(fd);
        return bad ? bad : EMBER_ERR_NOMEM;
    }
    _ember_note_seg(p, fd);
    close(fd);                       /* reopened by name to commit pages */
    p->page = (uint64_t)sysconf(_SC_PAGESIZE);
    p->mutex_kind = _ember_sound_mutex_kind();
    p->lim = EMBER_POOL_HDR_SIZE;     /* read under the mutex at every lock */
    p->base = base;
    p->h = h;
    p->seg_size = seg;
    p->heap_off = EMBER_POOL_HDR_SIZE;
    p->heap_end = seg;
    p->m_uid = m_uid;
    memcpy(p->shm_name, name, strlen(name) + 1);
    memcpy(p->label, h->label, sizeof p->label);
    p->label[sizeof p->label - 1] = 0;
    *out = p;
    return EMBER_OK;
}

ember_rc_t ember_pool_serialize(const ember_pool_t *pool, void *buf, size_t cap, size_t *len)
{
    if (!pool || !buf)
        return EMBER_ERR_INVALID_ARG;
    if (cap < EMBER_POOL_SDESC_SIZE)
        return EMBER_ERR_BUFFER_TOO_SMALL;
    _ember_pool_sdesc_write(pool, buf);
    if (len)
        *len = EMBER_POOL_SDESC_SIZE;
    return EMBER_OK;
}

ember_rc_t ember_pool_detach(ember_pool_t *pool)
{
    if (!pool)
        return EMBER_ERR_INVALID_ARG;
    int r = munmap(pool->base, pool->seg_size);
    int e = errno;

    free(pool);
    if (r != 0) {
        errno = e;
        return EMBER_ERR_OS;
    }
    return EMBER_OK;
}

ember_rc_t ember_pool_destroy(ember_pool_t *pool)
{
    if (!pool)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = ember_pool_unlink_name(pool->shm_name);
    int e = errno;
    ember_rc_t rc2 = ember_pool_detach(pool);
    if (rc) {
        errno = e;
        return rc;
    }
    return rc2;
}

ember_rc_t ember_pool_unlink_name(const char *shm_name)
{
    if (!shm_name || strncmp(shm_name, "/ember.", 7) != 0 || strchr(shm_name + 1, '/'))
        return EMBER_ERR_INVALID_ARG;
    if (shm_unlink(shm_name) != 0)
        return errno == ENOENT ? EMBER_ERR_NOT_FOUND : EMBER_ERR_OS;
    return EMBER_OK;
}


/* ------------------------------------------------------------------ */
/* alloc / free                                                       */

/* Block size for a request; 0 if it can never fit this pool. */
static inline uint64_t _ember_need(const ember_pool_t *p, uint64_t size)
{
    if (size > p->heap_end - p->heap_off)
        return 0;
    uint64_t need = _ember_round64(size) + _EMBER_BLK_HDR;
    return need > p->heap_end - p->heap_off ? 0 : need;
}

/* Where the stores of an alloc of `need` bytes from a free block at off of
 * size bsz end (payload, and the split-off tail's header). */
static inline uint64_t _ember_alloc_end(uint64_t off, uint64_t bsz, uint64_t need)
{
    return off + need + (bsz - need >= _EMBER_BLK_MIN ? _EMBER_BLK_HDR : 0u);
}

/* First free block (heap walk) that fits `need` on committed pages only:
 * the last resort when /dev/shm cannot back more pages.  *out = 0: none. */
static ember_rc_t _ember_find_committed(ember_pool_t *p, uint64_t need, uint64_t *out)
{
    *out = 0;
    for (uint64_t off = p->heap_off; off < p->heap_end;) {
        if (off > p->lim - _EMBER_BLK_HDR)
            return EMBER_ERR_CORRUPT;
        _ember_blk_t *b = _ember_blk(p, off);
        uint64_t tag = ember_atomic_load_relaxed(&b->xtag);
        uint64_t sz = ember_atomic_load_relaxed(&b->xsize);
        if ((tag != _EMBER_TAG_FREE && tag != _EMBER_TAG_ALLOC) || !_ember_size_ok(p, off, sz))
            return EMBER_ERR_CORRUPT;
        if (tag == _EMBER_TAG_FREE && sz >= need && _ember_alloc_end(off, sz, need) <= p->lim) {
            *out = off;
            return EMBER_OK;
        }
        off += sz;
    }
    return EMBER_OK;
}

static ember_rc_t _ember_alloc_locked(ember_pool_t *p, uint64_t size, uint64_t need,
                                      unsigned flags, ember_alloc_t *out, int *pristine)
{
    _ember_pool_hdr_t *h = p->h;
    uint64_t off;
    unsigned bin = 0;
    ember_rc_t rc = _ember_find_block(p, need, &off, &bin);
    if (rc)
        return rc;
    if (!off)
        return EMBER_ERR_EXHAUSTED;
    _ember_blk_t *b = _ember_blk(p, off);
    uint64_t bsz = ember_atomic_load_relaxed(&b->xsize);
    if (_ember_alloc_end(off, bsz, need) > p->lim) {
        /* the block reaches past the committed pages: commit them first */
        rc = _ember_commit(p, _ember_alloc_end(off, bsz, need));
        if (rc == EMBER_ERR_EXHAUSTED) {
            int e = errno;
            rc = _ember_find_committed(p, need, &off);
            if (rc)
                return rc;
            if (!off) {
                errno = e;
                return EMBER_ERR_EXHAUSTED;
            }
            b = _ember_blk(p, off);
            bsz = ember_atomic_load_relaxed(&b->xsize);
            bin = _ember_bin_of(bsz);
        } else if (rc) {
            return rc;
        }
    }
    /* the block after b: checked before anything changes (I3, I4) */
    uint64_t noff = off + bsz;
    if (noff < p->heap_end) {
        _ember_blk_t *n = _ember_blk(p, noff);
        if (noff > p->lim - _EMBER_BLK_HDR ||
            ember_atomic_load_relaxed(&n->xtag) != _EMBER_TAG_ALLOC || n->prev_size != bsz)
            return EMBER_ERR_CORRUPT;
    }
    rc = _ember_links_ok(p, off, bin);
    if (rc)
        return rc;
    _ember_bin_unlink(p, off, bin);
    if (bsz - need >= _EMBER_BLK_MIN) {
        /* split: the tail header is complete before the one store that
         * shrinks b makes it reachable by the walk (file header, I1). */
        uint64_t toff = off + need, tsz = bsz - need;
        _ember_blk_t *t = _ember_blk(p, toff);
        ember_atomic_store_relaxed(&t->xsize, tsz);
        t->prev_size = need;
        t->id = 0;
        t->req = 0;
        ember_atomic_store_relaxed(&t->xowner, 0u);
        ember_atomic_store_relaxed(&t->xtag, _EMBER_TAG_FREE);
        /* release: orders the tail header writes above before the shrink;
         * pairs with the walk in _ember_repair() by a later locker (which
         * also synchronises through the mutex). */
        ember_atomic_store_release(&b->xsize, need);
        if (noff < p->heap_end)
            _ember_blk(p, noff)->prev_size = tsz;
        rc = _ember_bin_push(p, toff);
        if (rc)
            return rc;
        bsz = need;
    }
    /* PRISTINE PAYLOADS: `touched` is at or above the end of every block
     * ever allocated, so a block that starts at or above it has a payload
     * nobody ever wrote (block headers, free-list links included, live in
     * the 64-byte headers; the tail split off above starts exactly at the
     * block's end).  It is raised before the block can be written (before
     * its tag says ALLOC) and never lowered: a death between the two, or a
     * repair, leaves it too high, which only makes later blocks count as
     * written.  A scribbled mark is at worst a channel whose free slots are
     * not zero, which the channel reports as corrupt; a mark out of the
     * heap's bounds is set to its end. */
    uint64_t was = h->touched;
    int sane = was >= p->heap_off && was <= p->heap_end;
    if (pristine)
        *pristine = sane && off >= was;
    if (!sane)
        h->touched = p->heap_end;             /* scribbled: nothing counts as pristine */
    else if (off + bsz > was)
        h->touched = off + bsz;
    b->id = ++h->next_id;
    b->req = size;
    /* relaxed: read under the mutex (reclaim) or by the owner itself */
    ember_atomic_store_relaxed(&b->xowner, (flags & EMBER_ALLOC_OWNED) ? ember_self_pid() : 0u);
    /* release: the block becomes ALLOC for the walk only after its header
     * is final; from here a death loses this block (file header). */
    ember_atomic_store_release(&b->xtag, _EMBER_TAG_ALLOC);
    h->free_bytes -= bsz;
    h->live_allocs++;
    out->offset = off + _EMBER_BLK_HDR;
    out->size = size;
    out->id = b->id;
    return EMBER_OK;
}

ember_rc_t ember_pool_alloc(ember_pool_t *pool, uint64_t size, ember_alloc_t *out)
{
    return ember_pool_alloc_ex(pool, size, -1, EMBER_ALLOC_NO_FREE_WAIT, out);
}

ember_rc_t ember_pool_alloc_wait(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                                 ember_alloc_t *out)
{
    return ember_pool_alloc_ex(pool, size, timeout_ns, 0u, out);
}

ember_rc_t ember_pool_alloc_ex(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                               unsigned flags, ember_alloc_t *out)
{
    return ember_pool_alloc_pristine(pool, size, timeout_ns, flags, out, NULL);
}

ember_rc_t ember_pool_alloc_pristine(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                                     unsigned flags, ember_alloc_t *out, int *pristine)
{
    if (pristine)
        *pristine = 0;
    if (!pool || !out || size == 0 || (flags & ~(EMBER_ALLOC_OWNED | EMBER_ALLOC_NO_FREE_WAIT)))
        return EMBER_ERR_INVALID_ARG;
    uint64_t need = _ember_need(pool, size);
    if (!need)
        return EMBER_ERR_EXHAUSTED;
    int nowait = (flags & EMBER_ALLOC_NO_FREE_WAIT) != 0;
    int64_t deadline = timeout_ns > 0 ? ember_now_ns() + timeout_ns : 0;
    ember_rc_t rc = _ember_lock_t(pool, nowait || timeout_ns > 0 ? timeout_ns : -1);
    if (rc)
        return rc;
    rc = _ember_alloc_locked(pool, size, need, flags, out, pristine);
    _ember_unlock(pool);
    if (rc != EMBER_ERR_EXHAUSTED || timeout_ns == 0 || nowait)
        return rc;

    _ember_pool_hdr_t *h = pool->h;
    /* seq_cst: the waiter count is raised before the free sequence is read
     * and the alloc retried; pairs with the seq_cst load of xfree_waiters in
     * _ember_free_wake() after the freer's unlock (Dekker: either the freer
     * sees us waiting and bumps xfree_seq, or our retry sees its free). */
    ember_atomic_add_seq_cst(&h->xfree_waiters, 1u);
    for (;;) {
        uint32_t seq = ember_atomic_load_seq_cst(&h->xfree_seq);
        int64_t left = -1;
        if (timeout_ns > 0) {
            left = deadline - ember_now_ns();
            if (left <= 0) {
                rc = EMBER_ERR_TIMEOUT;
                break;
            }
        }
        rc = _ember_lock_t(pool, left);
        if (rc)
            break;
        rc = _ember_alloc_locked(pool, size, need, flags, out, pristine);
        _ember_unlock(pool);
        if (rc != EMBER_ERR_EXHAUSTED)
            break;
        int64_t sleep_ns = -1;                 /* no bound */
        if (timeout_ns > 0) {
            left = deadline - ember_now_ns();
            if (left <= 0) {
                rc = EMBER_ERR_TIMEOUT;
                break;
            }
            sleep_ns = left;
        }
        if (ember_futex_wait(&h->xfree_seq, seq, sleep_ns) == EINTR) {
            rc = EMBER_ERR_INTERRUPTED;
            break;
        }
    }
    ember_atomic_sub_seq_cst(&h->xfree_waiters, 1u);
    return rc;
}

/* Validate `a` against the heap (mutex held).  Gives the block offset. */
static ember_rc_t _ember_validate_alloc(ember_pool_t *p, const ember_alloc_t *a, uint64_t *boff)
{
    if (a->offset < p->heap_off + _EMBER_BLK_HDR || a->offset > p->lim ||
        (a->offset & (EMBER_POOL_ALIGN - 1u)))
        return EMBER_ERR_OUT_OF_RANGE;
    uint64_t off = a->offset - _EMBER_BLK_HDR;
    _ember_blk_t *b = _ember_blk(p, off);
    uint64_t tag = ember_atomic_load_relaxed(&b->xtag);
    uint64_t sz = ember_atomic_load_relaxed(&b->xsize);
    if ((tag & _EMBER_BLK_MAGIC_MASK) != _EMBER_BLK_MAGIC || !_ember_size_ok(p, off, sz))
        return EMBER_ERR_BAD_MAGIC;
    if (tag != _EMBER_TAG_ALLOC)
        return tag == _EMBER_TAG_FREE ? EMBER_ERR_DOUBLE_FREE : EMBER_ERR_BAD_MAGIC;
    if (b->id != a->id)
        return EMBER_ERR_STALE;
    if (a->size > sz - _EMBER_BLK_HDR)
        return EMBER_ERR_OUT_OF_RANGE;
    /* free follows prev_size to the block before: never outside the heap */
    if ((b->prev_size & 63u) || b->prev_size > off - p->heap_off ||
        (b->prev_size == 0) != (off == p->heap_off) ||
        (b->prev_size != 0 && b->prev_size < _EMBER_BLK_MIN))
        return EMBER_ERR_CORRUPT;
    *boff = off;
    return EMBER_OK;
}

static void _ember_free_wake(ember_pool_t *p)
{
    _ember_pool_hdr_t *h = p->h;
    /* seq_cst: pairs with the seq_cst increment of xfree_waiters in
     * ember_pool_alloc_ex() (see there). */
    if (ember_atomic_load_seq_cst(&h->xfree_waiters) > 0) {
        ember_atomic_add_seq_cst(&h->xfree_seq, 1u);
        ember_futex_wake_all(&h->xfree_seq);
    }
}

/* A neighbour header at off (a block boundary found from b): FREE (its
 * size checked, its links sound; *bin its class), ALLOC, or corrupt. */
static inline ember_rc_t _ember_neighbour(ember_pool_t *p, uint64_t off, int *is_free,
                                          unsigned *bin)
{
    if (off > p->lim - _EMBER_BLK_HDR)
        return EMBER_ERR_CORRUPT;
    _ember_blk_t *n = _ember_blk(p, off);
    uint64_t tag = ember_atomic_load_relaxed(&n->xtag);
    *is_free = tag == _EMBER_TAG_FREE;
    if (tag == _EMBER_TAG_ALLOC)
        return _ember_size_ok(p, off, ember_atomic_load_relaxed(&n->xsize)) ? EMBER_OK : EMBER_ERR_CORRUPT;
    uint64_t sz = ember_atomic_load_relaxed(&n->xsize);
    if (!*is_free || !_ember_size_ok(p, off, sz))
        return EMBER_ERR_CORRUPT;
    *bin = _ember_bin_of(sz);
    return _ember_links_ok(p, off, *bin);
}

/* Free the ALLOC block at off whose header is checked (mutex held).
 * Everything read from shared memory is checked before the first store.
 * Gives the offset and size of the free block it ends up in. */
static ember_rc_t _ember_free_locked(ember_pool_t *p, uint64_t off, uint64_t *moff, uint64_t *msz)
{
    _ember_pool_hdr_t *h = p->h;
    _ember_blk_t *b = _ember_blk(p, off);
    uint64_t sz = ember_atomic_load_relaxed(&b->xsize);
    uint64_t noff = off + sz, poff = 0, nsz = 0;
    int nfree = 0, pfree = 0;
    unsigned nbin = 0, pbin = 0;
    ember_rc_t rc;
    if (noff < p->heap_end) {
        if ((rc = _ember_neighbour(p, noff, &nfree, &nbin)) != EMBER_OK ||
            _ember_blk(p, noff)->prev_size != sz)
            return EMBER_ERR_CORRUPT;
        nsz = ember_atomic_load_relaxed(&_ember_blk(p, noff)->xsize);
        if (nfree && noff + nsz < p->heap_end && noff + nsz > p->lim - _EMBER_BLK_HDR)
            return EMBER_ERR_CORRUPT;
    }
    if (b->prev_size) {
        poff = off - b->prev_size;
        if ((rc = _ember_neighbour(p, poff, &pfree, &pbin)) != EMBER_OK ||
            ember_atomic_load_relaxed(&_ember_blk(p, poff)->xsize) != b->prev_size)
            return EMBER_ERR_CORRUPT;
    }
    /* release: from this store on the block is FREE for the walk; a death
     * after it loses nothing (file header). */
    ember_atomic_store_release(&b->xtag, _EMBER_TAG_FREE);
    h->free_bytes += sz;
    h->live_allocs--;

    /* coalesce with the next block: unlink it, then ONE store grows b */
    if (nfree) {
        _ember_bin_unlink(p, noff, nbin);      /* links checked above */
        sz += nsz;
        ember_atomic_store_release(&b->xsize, sz);
    }
    /* coalesce with the previous block: unlink it, then ONE store grows it */
    if (pfree) {
        /* links checked above; unlinking the next block touched at most
         * the prev/next links of blocks of its own class, re-checked here */
        if (nfree && (rc = _ember_links_ok(p, poff, pbin)) != EMBER_OK)
            return rc;
        _ember_bin_unlink(p, poff, pbin);
        sz += b->prev_size;
        ember_atomic_store_release(&_ember_blk(p, poff)->xsize, sz);
        off = poff;
    }
    noff = off + sz;
    if (noff < p->heap_end)
        _ember_blk(p, noff)->prev_size = sz;
    if ((rc = _ember_bin_push(p, off)) != EMBER_OK)
        return rc;
    *moff = off;
    *msz = sz;
    return EMBER_OK;
}

ember_rc_t ember_pool_free(ember_pool_t *pool, const ember_alloc_t *a)
{
    return ember_pool_free_ex(pool, a, -1);
}

ember_rc_t ember_pool_free_ex(ember_pool_t *pool, const ember_alloc_t *a, int64_t lock_timeout_ns)
{
    if (!pool || !a)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = _ember_lock_t(pool, lock_timeout_ns);
    if (rc)
        return rc;
    uint64_t off, moff, msz;
    rc = _ember_validate_alloc(pool, a, &off);
    if (rc == EMBER_OK)
        rc = _ember_free_locked(pool, off, &moff, &msz);
    _ember_unlock(pool);
    if (rc == EMBER_OK)
        _ember_free_wake(pool);
    return rc;
}

ember_rc_t ember_pool_check(ember_pool_t *pool, const ember_alloc_t *a)
{
    return ember_pool_check_ex(pool, a, -1);
}

ember_rc_t ember_pool_check_ex(ember_pool_t *pool, const ember_alloc_t *a, int64_t lock_timeout_ns)
{
    if (!pool || !a)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = _ember_lock_t(pool, lock_timeout_ns);
    if (rc)
        return rc;
    uint64_t off;
    rc = _ember_validate_alloc(pool, a, &off);
    _ember_unlock(pool);
    return rc;
}

ember_rc_t ember_pool_set_owner(ember_pool_t *pool, const ember_alloc_t *a, uint32_t pid)
{
    if (!pool || !a)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = _ember_lock(pool);
    if (rc)
        return rc;
    uint64_t off;
    rc = _ember_validate_alloc(pool, a, &off);
    if (rc == EMBER_OK)
        /* relaxed: read under the mutex (reclaim) */
        ember_atomic_store_relaxed(&_ember_blk(pool, off)->xowner, pid);
    _ember_unlock(pool);
    return rc;
}

ember_rc_t ember_pool_take_owner(ember_pool_t *pool, const ember_alloc_t *a, uint32_t from,
                                 uint32_t to)
{
    if (!pool || !a)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = _ember_lock(pool);
    if (rc)
        return rc;
    uint64_t off;
    rc = _ember_validate_alloc(pool, a, &off);
    if (rc == EMBER_OK) {
        /* relaxed: read and written under the mutex (reclaim, set_owner) */
        _Atomic uint64_t *o = &_ember_blk(pool, off)->xowner;
        if (ember_atomic_load_relaxed(o) == from)
            ember_atomic_store_relaxed(o, to);
        else
            rc = EMBER_ERR_STALE;
    }
    _ember_unlock(pool);
    return rc;
}

ember_rc_t ember_pool_reclaim(ember_pool_t *pool, uint32_t pid, uint64_t *nblocks, uint64_t *nbytes)
{
    if (!pool || pid == 0)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = _ember_lock(pool);
    if (rc)
        return rc;
    uint64_t n = 0, bytes = 0;
    /* one walk; a freed block may merge with the free block before it, so
     * the walk goes on after the merged block.  Bounded: every step moves
     * on by at least _EMBER_BLK_MIN. */
    for (uint64_t off = pool->heap_off; off < pool->heap_end;) {
        if (off > pool->lim - _EMBER_BLK_HDR) {
            rc = EMBER_ERR_CORRUPT;
            break;
        }
        _ember_blk_t *b = _ember_blk(pool, off);
        uint64_t tag = ember_atomic_load_relaxed(&b->xtag);
        uint64_t sz = ember_atomic_load_relaxed(&b->xsize);
        if ((tag != _EMBER_TAG_FREE && tag != _EMBER_TAG_ALLOC) || !_ember_size_ok(pool, off, sz)) {
            rc = EMBER_ERR_CORRUPT;
            break;
        }
        /* relaxed: written under the mutex, or by the owner (alive) */
        if (tag == _EMBER_TAG_ALLOC && ember_atomic_load_relaxed(&b->xowner) == pid) {
            uint64_t moff, msz;
            if ((b->prev_size == 0) != (off == pool->heap_off) || b->prev_size > off - pool->heap_off) {
                rc = EMBER_ERR_CORRUPT;
                break;
            }
            rc = _ember_free_locked(pool, off, &moff, &msz);
            if (rc)
                break;
            n++;
            bytes += sz;
            off = moff + msz;
            continue;
        }
        off += sz;
    }
    _ember_unlock(pool);
    if (n)
        _ember_free_wake(pool);
    if (nblocks)
        *nblocks = n;
    if (nbytes)
        *nbytes = bytes;
    return rc;
}

void *ember_pool_ptr(const ember_pool_t *pool, uint64_t offset)
{
    if (!pool || offset >= pool->seg_size)
        return NULL;
    return pool->base + offset;
}

/* ------------------------------------------------------------------ */
/* stats, identity, validation, iteration                             */

/* What an alloc could really get from the free block at off of size sz:
 * pages not yet committed count only as far as /dev/shm has room. */
static inline uint64_t _ember_backable(const ember_pool_t *p, uint64_t off, uint64_t sz,
                                       uint64_t avail)
{
    if (off + sz <= p->lim)
        return sz;
    uint64_t in = p->lim > off ? p->lim - off : 0;
    uint64_t out = off + sz - (in ? p->lim : off);
    return in + (out < avail ? out : avail);
}

ember_rc_t ember_pool_stats(ember_pool_t *pool, ember_pool_stats_t *out)
{
    return ember_pool_stats_ex(pool, out, -1);
}

ember_rc_t ember_pool_stats_ex(ember_pool_t *pool, ember_pool_stats_t *out, int64_t lock_timeout_ns)
{
    if (!pool || !out)
        return EMBER_ERR_INVALID_ARG;
    uint64_t avail = UINT64_MAX;
    int fd = _ember_open_seg(pool);
    if (fd >= 0) {
        avail = _ember_fs_avail(fd);
        close(fd);
    }
    ember_rc_t rc = _ember_lock_t(pool, lock_timeout_ns);
    if (rc)
        return rc;
    _ember_pool_hdr_t *h = pool->h;
    uint64_t largest = 0, budget = _ember_max_blocks(pool);
    /* from the top class down, until no block of a lower class can beat
     * the best found (the uncommitted tail may shrink the top block) */
    for (unsigned top = _EMBER_NBINS; rc == EMBER_OK;) {
        unsigned b = _EMBER_NBINS;
        for (unsigned w = _EMBER_BITMAP_WORDS; w-- > 0;) {
            uint64_t bits = h->bitmap[w];
            if (top <= w * 64u)
                continue;
            if (top < w * 64u + 64u)
                bits &= (1ull << (top - w * 64u)) - 1u;
            if (bits) {
                b = w * 64u + 63u - (unsigned)__builtin_clzll(bits);
                break;
            }
        }
        if (b >= _EMBER_NBINS)
            break;
        uint64_t bin_max = b + 1u < _EMBER_EXACT_UNITS ? (uint64_t)(b + 1u) << 6
                         : b + 1u < _EMBER_NBINS ? _ember_bin_lo(b + 1u) : UINT64_MAX;
        if (bin_max <= largest)
            break;
        for (uint64_t off = h->bins[b], sz; off; off = _ember_blk(pool, off)->next_free) {
            if (!budget-- || !_ember_free_ok(pool, off, &sz) || _ember_bin_of(sz) != b) {
                rc = EMBER_ERR_CORRUPT;
                break;
            }
            uint64_t eff = _ember_backable(pool, off, sz, avail);
            if (eff > largest)
                largest = eff;
        }
        top = b;
    }
    if (rc == EMBER_OK) {
        uint64_t unc = pool->heap_end - pool->lim;      /* all inside free blocks */
        uint64_t fb = h->free_bytes;
        out->total = pool->heap_end - pool->heap_off;
        out->free = (fb > unc ? fb - unc : 0) + (unc < avail ? unc : avail);
        out->largest_free = largest > _EMBER_BLK_HDR ? largest - _EMBER_BLK_HDR : 0;
        out->live_allocs = h->live_allocs;
        out->committed = h->committed;
    }
    _ember_unlock(pool);
    return rc;
}

uint64_t ember_pool_m_uid(const ember_pool_t *pool) { return pool ? pool->m_uid : 0; }
uint64_t ember_pool_size(const ember_pool_t *pool) { return pool ? pool->seg_size : 0; }
const char *ember_pool_shm_name(const ember_pool_t *pool) { return pool ? pool->shm_name : NULL; }
const char *ember_pool_label(const ember_pool_t *pool) { return pool ? pool->label : NULL; }

_Atomic uint32_t *ember_pool_event_word(const ember_pool_t *pool)
{
    return pool ? &pool->h->xevent : NULL;
}

_Atomic uint32_t *ember_pool_event_waiters(const ember_pool_t *pool)
{
    return pool ? &pool->h->xevent_waiters : NULL;
}

uint64_t ember_pool_repair_count(ember_pool_t *pool)
{
    if (!pool || _ember_lock(pool) != EMBER_OK)
        return 0;
    uint64_t n = pool->h->repairs;
    _ember_unlock(pool);
    return n;
}

ember_rc_t ember_pool_debug_lock(ember_pool_t *pool)
{
    return pool ? _ember_lock(pool) : EMBER_ERR_INVALID_ARG;
}

ember_rc_t ember_pool_debug_unlock(ember_pool_t *pool)
{
    if (!pool)
        return EMBER_ERR_INVALID_ARG;
    _ember_unlock(pool);
    return EMBER_OK;
}

ember_rc_t ember_pool_validate(ember_pool_t *pool)
{
    if (!pool)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = _ember_lock(pool);
    if (rc)
        return rc;
    _ember_pool_hdr_t *h = pool->h;
    uint64_t off, prev_size = 0, free_bytes = 0, live = 0, nfree = 0, nlisted = 0;
    int prev_free = 0;
    rc = EMBER_ERR_CORRUPT;
    for (off = pool->heap_off; off < pool->heap_end;) {
        if (off > pool->lim - _EMBER_BLK_HDR)
            goto out;                                   /* I1 */
        _ember_blk_t *b = _ember_blk(pool, off);
        uint64_t tag = ember_atomic_load_relaxed(&b->xtag);
        uint64_t sz = ember_atomic_load_relaxed(&b->xsize);
        if (tag != _EMBER_TAG_FREE && tag != _EMBER_TAG_ALLOC)
            goto out;                                   /* I2 */
        if (!_ember_size_ok(pool, off, sz))
            goto out;                                   /* I1 */
        if (b->prev_size != prev_size)
            goto out;                                   /* I3 */
        if (tag == _EMBER_TAG_FREE) {
            if (prev_free)
                goto out;                               /* I4 */
            free_bytes += sz;
            nfree++;
        } else {
            if (off + sz > pool->lim)
                goto out;                               /* live blocks are committed */
            live++;
        }
        prev_free = tag == _EMBER_TAG_FREE;
        prev_size = sz;
        off += sz;
    }
    if (off != pool->heap_end || free_bytes != h->free_bytes || live != h->live_allocs)
        goto out;                                       /* I1, I6 */
    for (unsigned bin = 0; bin < _EMBER_NBINS; bin++) { /* I5 */
        int bit = (int)((h->bitmap[bin / 64u] >> (bin % 64u)) & 1u);
        if (bit != (h->bins[bin] != 0))
            goto out;
        uint64_t prev = 0, sz;
        for (uint64_t o = h->bins[bin]; o; o = _ember_blk(pool, o)->next_free) {
            if (!_ember_free_ok(pool, o, &sz) || ++nlisted > nfree)
                goto out;
            _ember_blk_t *b = _ember_blk(pool, o);
            if (_ember_bin_of(sz) != bin || b->prev_free != prev)
                goto out;
            prev = o;
        }
    }
    if (nlisted == nfree)
        rc = EMBER_OK;
out:
    _ember_unlock(pool);
    return rc;
}

ember_rc_t ember_pool_next_alloc(ember_pool_t *pool, uint64_t *cursor, ember_alloc_t *out)
{
    if (!pool || !cursor || !out)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = _ember_lock(pool);
    if (rc)
        return rc;
    rc = EMBER_ERR_EMPTY;
    for (uint64_t off = pool->heap_off; off < pool->heap_end;) {
        _ember_blk_t *b = _ember_blk(pool, off);
        uint64_t sz = off > pool->lim - _EMBER_BLK_HDR ? 0 : ember_atomic_load_relaxed(&b->xsize);
        uint64_t tag = sz ? ember_atomic_load_relaxed(&b->xtag) : 0;
        if ((tag != _EMBER_TAG_FREE && tag != _EMBER_TAG_ALLOC) || !_ember_size_ok(pool, off, sz)) {
            rc = EMBER_ERR_CORRUPT;
            break;
        }
        if (off + _EMBER_BLK_HDR >= *cursor && tag == _EMBER_TAG_ALLOC) {
            out->offset = off + _EMBER_BLK_HDR;
            out->size = b->req <= sz - _EMBER_BLK_HDR ? b->req : sz - _EMBER_BLK_HDR;
            out->id = b->id;
            *cursor = off + _EMBER_BLK_HDR + 1u;
            rc = EMBER_OK;
            break;
        }
        off += sz;
    }
    _ember_unlock(pool);
    return rc;
}


/* ------------------------------------------------------------------ */
/* allocation descriptors                                             */

/* Allocation descriptor, EMBER_ALLOC_SDESC_SIZE (128) bytes, little-endian:
 *   0  u32 magic "EMBA"        4  u16 version     6  u16 length (128)
 *   8  pool descriptor (96 bytes, with its own checksum)
 * 104  u64 allocation id
 * 112  u48 payload offset    118  u48 size   (segments are < 2^47 bytes)
 * 124  u32 FNV-1a-32 of bytes 0..123 */
ember_rc_t ember_alloc_serialize(const ember_pool_t *pool, const ember_alloc_t *a,
                                 void *buf, size_t cap, size_t *len)
{
    if (!pool || !a || !buf)
        return EMBER_ERR_INVALID_ARG;
    if (cap < EMBER_ALLOC_SDESC_SIZE)
        return EMBER_ERR_BUFFER_TOO_SMALL;
    if (a->offset >= pool->seg_size || a->size > pool->seg_size)
        return EMBER_ERR_OUT_OF_RANGE;
    uint8_t *d = buf;
    ember_put_le(d + 0, _EMBER_ALLOC_SDESC_MAGIC, 4);
    ember_put_le(d + 4, _EMBER_SDESC_VERSION, 2);
    ember_put_le(d + 6, EMBER_ALLOC_SDESC_SIZE, 2);
    _ember_pool_sdesc_write(pool, d + 8);
    ember_put_le(d + 104, a->id, 8);
    ember_put_le(d + 112, a->offset, 6);
    ember_put_le(d + 118, a->size, 6);
    ember_put_le(d + 124, ember_fnv1a32(d, 124), 4);
    if (len)
        *len = EMBER_ALLOC_SDESC_SIZE;
    return EMBER_OK;
}

ember_rc_t ember_alloc_parse(const void *sdesc, size_t len,
                             const uint8_t **pool_sdesc, size_t *pool_sdesc_len,
                             ember_alloc_t *out)
{
    const uint8_t *d = sdesc;
    if (!d || len != EMBER_ALLOC_SDESC_SIZE)
        return EMBER_ERR_BAD_DESCRIPTOR;
    if (ember_get_le(d, 4) != _EMBER_ALLOC_SDESC_MAGIC ||
        ember_get_le(d + 4, 2) != _EMBER_SDESC_VERSION ||
        ember_get_le(d + 6, 2) != EMBER_ALLOC_SDESC_SIZE ||
        ember_get_le(d + 124, 4) != ember_fnv1a32(d, 124))
        return EMBER_ERR_BAD_DESCRIPTOR;
    ember_rc_t rc = _ember_pool_sdesc_read(d + 8, EMBER_POOL_SDESC_SIZE, NULL, NULL, NULL);
    if (rc)
        return rc;
    if (pool_sdesc)
        *pool_sdesc = d + 8;
    if (pool_sdesc_len)
        *pool_sdesc_len = EMBER_POOL_SDESC_SIZE;
    if (out) {
        out->id = ember_get_le(d + 104, 8);
        out->offset = ember_get_le(d + 112, 6);
        out->size = ember_get_le(d + 118, 6);
    }
    return EMBER_OK;
}

ember_rc_t ember_pool_sdesc_name(const void *sdesc, size_t len, char *buf, size_t cap)
{
    const char *name;
    if (!buf)
        return EMBER_ERR_INVALID_ARG;
    ember_rc_t rc = _ember_pool_sdesc_read(sdesc, len, NULL, NULL, &name);
    if (rc)
        return rc;
    size_t n = strlen(name);
    if (n + 1 > cap)
        return EMBER_ERR_BUFFER_TOO_SMALL;
    memcpy(buf, name, n + 1);
    return EMBER_OK;
}
