/*
 * pooldict.c -- the hash table of ember.dict(in_pool=True) (PoolDict) in one
 * pool allocation, shared by every process that maps it.
 *
 * ALGORITHM
 * ---------
 * Open addressing with linear probing and tombstones (Knuth, TAOCP vol. 3,
 * 6.4, algorithm L), in `capacity` (a power of two) slots of `slot_size`
 * bytes after a 64-byte header.  Every operation runs under one ember Lock
 * (sync.c, a robust lock kept beside the table, not in it): the table
 * itself is a sequential data structure, the lock makes it shared.  The
 * Python layer (_pooldict.pxi) encodes a key or value as a type tag byte
 * and a payload, takes the lock, calls one function here (no Python code
 * runs while the lock is held: values are copied out, then decoded), and
 * releases it.
 *
 *   header: u32 magic "EMPD" (stored last), u32 capacity, u32 slot_size,
 *           u32 version, u64 count (keys), padding to 64 bytes.
 *   slot:   u32 state, u32 hash, u32 klen, u32 vlen, then klen key bytes
 *           and vlen value bytes (each starting with its tag byte).
 *   state:  EMPTY (never used since the last clear: ends a probe), USED,
 *           DELETED (a tombstone: the probe goes on; reused by an insert),
 *           WRITING (an entry being overwritten in place).
 *
 * The hash is FNV-1a over the key bytes with MurmurHash3's finalizer (so
 * that the low bits, which pick the first slot, depend on every byte).  A
 * lookup probes from hash & (capacity - 1) until the key (same hash, same
 * length, same bytes) or an EMPTY slot.  At most capacity * 3 / 4 keys are
 * held, so an insert always finds a free slot and a probe always ends.
 * Deleting a key whose next slot is EMPTY makes it (and the tombstones just
 * before it) EMPTY again, so tombstones do not pile up at the end of chains.
 *
 * INVARIANTS (between operations, i.e. whenever the lock is free)
 * ---------------------------------------------------------------
 * - every key is in at most one USED/WRITING slot, reachable from its first
 *   slot without crossing an EMPTY slot;
 * - a USED slot's klen + vlen fit the slot (checked again on every read:
 *   shared memory is never trusted with a length);
 * - count == the number of USED + WRITING slots (see DEATH for the one way
 *   it can drift, and how it is put right).
 *
 * MEMORY ORDER
 * ------------
 * Between live processes every access is ordered by the lock (its acquire
 * CAS and releasing CAS in sync.c): plain loads and stores suffice.  The
 * state word is atomic only to fix the order of the stores for a process
 * that dies part way (below): a store that a killed process made is in
 * shared memory, one it did not make is not, and the release stores /
 * fence here keep the compiler (and a weakly ordered CPU) from moving the
 * entry's bytes across the state change.  Nothing in this file waits or
 * spins: progress is the lock's.
 *
 * DEATH (SIGKILL at any instruction; the lock is taken over by the next
 * caller, who gets OWNER_DIED and calls ember_pdict_recount)
 * ----------------------------------------------------------------------
 * - insert of a new key: the entry is written in an EMPTY/DELETED slot,
 *   then published by one store of state = USED: a death before it leaves
 *   the table as if the insert never began; a death between it and the
 *   count increment leaves count one short (recount repairs it);
 * - overwrite of an existing key: state = WRITING, then the new value, then
 *   state = USED.  A death in between leaves that entry WRITING: reading
 *   it fails with EMBER_ERR_CORRUPT ("torn"), its key is intact, so setting
 *   or deleting the key repairs it; no other entry is touched;
 * - delete: one store (DELETED or EMPTY) removes the key; a death before
 *   the count decrement leaves count one over (recount); a death while
 *   turning tombstones back to EMPTY leaves tombstones, which are harmless;
 * - clear: a death part way leaves some keys in place and count wrong
 *   (recount);
 * - a dead reader costs nothing.
 */
#include "pooldict.h"
#include "ember_base.h"      /* FNV-1a: one copy for all of ember */

#include <stdlib.h>
#include <string.h>

#define PD_MAGIC   0x44504d45u      /* "EMPD" little endian */
#define PD_VERSION 2u               /* 1 (0 in the header): the Python table before it */

enum { PD_EMPTY = 0, PD_USED = 1, PD_DELETED = 2, PD_WRITING = 3 };

typedef struct {
    _Atomic uint32_t xmagic;
    uint32_t capacity;
    uint32_t slot_size;
    uint32_t version;
    uint64_t count;
    uint8_t pad_[40];
} pd_header_t;

typedef struct {
    _Atomic uint32_t xstate;
    uint32_t hash;
    uint32_t klen;
    uint32_t vlen;
    uint8_t data[];
} pd_slot_t;

_Static_assert(sizeof(pd_header_t) == EMBER_PDICT_HEADER, "table header is 64 bytes");
_Static_assert(sizeof(pd_slot_t) == EMBER_PDICT_SLOT_HDR, "slot header is 16 bytes");

static inline pd_slot_t *slot_at(pd_header_t *t, uint32_t i)
{
    return (pd_slot_t *)((uint8_t *)t + EMBER_PDICT_HEADER + (size_t)i * t->slot_size);
}

static inline uint32_t room_of(const pd_header_t *t)
{
    return t->slot_size - EMBER_PDICT_SLOT_HDR;
}

static uint32_t key_hash(uint8_t tag, const uint8_t *k, uint32_t kn)
{
    uint32_t h = 0x811c9dc5u;
    h ^= tag;
    h *= 0x01000193u;
    for (uint32_t i = 0; i < kn; i++) {
        h ^= k[i];
        h *= 0x01000193u;
    }
    /* MurmurHash3 fmix32 */
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

size_t ember_pdict_size(uint32_t capacity, uint32_t slot_size)
{
    if (capacity < EMBER_PDICT_MIN_CAP || (capacity & (capacity - 1)) != 0)
        return 0;
    if (slot_size < EMBER_PDICT_MIN_SLOT || slot_size > EMBER_PDICT_MAX_SLOT || slot_size % 64)
        return 0;
    if ((uint64_t)capacity * slot_size > (uint64_t)SIZE_MAX - EMBER_PDICT_HEADER)
        return 0;
    return EMBER_PDICT_HEADER + (size_t)capacity * slot_size;
}

ember_rc_t ember_pdict_init(void *mem, size_t size, uint32_t capacity, uint32_t slot_size)
{
    size_t need = ember_pdict_size(capacity, slot_size);
    if (!mem || need == 0 || size < need || ((uintptr_t)mem & 7u))
        return EMBER_ERR_INVALID_ARG;
    pd_header_t *t = mem;
    memset(t, 0, sizeof *t);
    t->capacity = capacity;
    t->slot_size = slot_size;
    t->version = PD_VERSION;
    for (uint32_t i = 0; i < capacity; i++)
        memset(slot_at(t, i), 0, EMBER_PDICT_SLOT_HDR);
    /* release: publishes the header and the empty slots written above;
     * pairs with the acquire load of xmagic in ember_pdict_check(). */
    ember_atomic_store_release(&t->xmagic, PD_MAGIC);
    return EMBER_OK;
}

ember_rc_t ember_pdict_check(const void *mem, size_t size, uint32_t *capacity,
                             uint32_t *slot_size)
{
    if (!mem || size < EMBER_PDICT_HEADER)
        return EMBER_ERR_INVALID_ARG;
    pd_header_t *t = (pd_header_t *)mem;
    /* acquire: pairs with the release store of xmagic in ember_pdict_init(). */
    if (ember_atomic_load_acquire(&t->xmagic) != PD_MAGIC)
        return EMBER_ERR_BAD_MAGIC;
    if (t->version != PD_VERSION)
        return EMBER_ERR_VERSION;
    size_t need = ember_pdict_size(t->capacity, t->slot_size);
    if (need == 0 || need > size)
        return EMBER_ERR_CORRUPT;
    if (capacity)
        *capacity = t->capacity;
    if (slot_size)
        *slot_size = t->slot_size;
    return EMBER_OK;
}

/* The slot holding the key (USED or WRITING), or -1; *free_out: the first
 * slot an insert may take (DELETED or the EMPTY one that ended the probe),
 * -1 if none. */
static int64_t find(pd_header_t *t, uint32_t h, uint8_t ktag, const uint8_t *k, uint32_t kn,
                    int64_t *free_out)
{
    uint32_t mask = t->capacity - 1, i = h & mask, klen = kn + 1, room = room_of(t);
    int64_t free_slot = -1;
    for (uint32_t n = 0; n < t->capacity; n++, i = (i + 1) & mask) {
        pd_slot_t *s = slot_at(t, i);
        /* relaxed: under the lock (see MEMORY ORDER). */
        uint32_t st = ember_atomic_load_relaxed(&s->xstate);
        if (st == PD_EMPTY) {
            if (free_slot < 0)
                free_slot = i;
            break;
        }
        if (st == PD_DELETED) {
            if (free_slot < 0)
                free_slot = i;
            continue;
        }
        if (s->hash == h && s->klen == klen && klen <= room && s->data[0] == ktag
            && memcmp(s->data + 1, k, kn) == 0)
            return i;
    }
    if (free_out)
        *free_out = free_slot;
    return -1;
}

ember_rc_t ember_pdict_get(void *mem, uint8_t ktag, const void *k, uint32_t kn,
                           void *buf, uint32_t bufsize, uint32_t *vlen)
{
    pd_header_t *t = mem;
    if (!t || (!k && kn) || !vlen || (!buf && bufsize))
        return EMBER_ERR_INVALID_ARG;
    int64_t i = find(t, key_hash(ktag, k, kn), ktag, k, kn, NULL);
    if (i < 0)
        return EMBER_ERR_NOT_FOUND;
    pd_slot_t *s = slot_at(t, (uint32_t)i);
    /* relaxed: under the lock. */
    if (ember_atomic_load_relaxed(&s->xstate) != PD_USED)
        return EMBER_ERR_CORRUPT;
    uint32_t vl = s->vlen;
    if (vl == 0 || vl > room_of(t) - s->klen)
        return EMBER_ERR_CORRUPT;
    *vlen = vl;
    if (vl > bufsize)
        return EMBER_ERR_BUFFER_TOO_SMALL;
    memcpy(buf, s->data + s->klen, vl);
    return EMBER_OK;
}

int ember_pdict_contains(void *mem, uint8_t ktag, const void *k, uint32_t kn)
{
    if (!mem || (!k && kn))
        return 0;
    return find(mem, key_hash(ktag, k, kn), ktag, k, kn, NULL) >= 0;
}

ember_rc_t ember_pdict_set(void *mem, uint8_t ktag, const void *k, uint32_t kn,
                           uint8_t vtag, const void *v, uint32_t vn, int only_new,
                           int *existed)
{
    pd_header_t *t = mem;
    if (!t || (!k && kn) || (!v && vn))
        return EMBER_ERR_INVALID_ARG;
    if (existed)
        *existed = 0;
    uint64_t need = (uint64_t)kn + 1 + (uint64_t)vn + 1;
    if (need > room_of(t))
        return EMBER_ERR_TOO_BIG;
    uint32_t h = key_hash(ktag, k, kn);
    int64_t free_slot = -1;
    int64_t i = find(t, h, ktag, k, kn, &free_slot);
    if (i >= 0) {
        if (only_new) {
            if (existed)
                *existed = 1;
            return EMBER_OK;
        }
        pd_slot_t *s = slot_at(t, (uint32_t)i);
        ember_atomic_store_relaxed(&s->xstate, PD_WRITING);
        /* release fence: the WRITING mark above is stored before the value
         * bytes below, for a process that dies while writing them (see
         * DEATH); live readers are ordered by the lock. */
        ember_atomic_fence_release();
        s->data[s->klen] = vtag;
        memcpy(s->data + s->klen + 1, v, vn);
        s->vlen = vn + 1;
        /* release: the value written above is in memory before the entry
         * is USED again; pairs (for a survivor of our death) with the lock
         * acquire that precedes any read of this slot. */
        ember_atomic_store_release(&s->xstate, PD_USED);
        return EMBER_OK;
    }
    if (free_slot < 0 || t->count >= (uint64_t)t->capacity * 3 / 4)
        return EMBER_ERR_FULL;
    pd_slot_t *s = slot_at(t, (uint32_t)free_slot);
    s->hash = h;
    s->klen = kn + 1;
    s->vlen = vn + 1;
    s->data[0] = ktag;
    memcpy(s->data + 1, k, kn);
    s->data[kn + 1] = vtag;
    memcpy(s->data + kn + 2, v, vn);
    /* release: publishes the entry written above in one store (an insert
     * cut short by a death before it leaves nothing); pairs, for the next
     * holder of the lock, with the lock's acquire. */
    ember_atomic_store_release(&s->xstate, PD_USED);
    t->count++;
    return EMBER_OK;
}

ember_rc_t ember_pdict_delete(void *mem, uint8_t ktag, const void *k, uint32_t kn)
{
    pd_header_t *t = mem;
    if (!t || (!k && kn))
        return EMBER_ERR_INVALID_ARG;
    int64_t i = find(t, key_hash(ktag, k, kn), ktag, k, kn, NULL);
    if (i < 0)
        return EMBER_ERR_NOT_FOUND;
    uint32_t mask = t->capacity - 1, j = (uint32_t)i;
    /* relaxed (all the stores below): under the lock; each is one store
     * that leaves the table valid if we die right after it. */
    if (ember_atomic_load_relaxed(&slot_at(t, (j + 1) & mask)->xstate) == PD_EMPTY) {
        ember_atomic_store_relaxed(&slot_at(t, j)->xstate, PD_EMPTY);
        /* the tombstones just before an EMPTY slot end no probe: empty them */
        for (uint32_t n = 1; n < t->capacity; n++) {
            j = (j - 1) & mask;
            pd_slot_t *s = slot_at(t, j);
            if (ember_atomic_load_relaxed(&s->xstate) != PD_DELETED)
                break;
            ember_atomic_store_relaxed(&s->xstate, PD_EMPTY);
        }
    } else {
        ember_atomic_store_relaxed(&slot_at(t, j)->xstate, PD_DELETED);
    }
    if (t->count > 0)
        t->count--;
    return EMBER_OK;
}

uint64_t ember_pdict_len(const void *mem)
{
    return mem ? ((const pd_header_t *)mem)->count : 0;
}

ember_rc_t ember_pdict_clear(void *mem)
{
    pd_header_t *t = mem;
    if (!t)
        return EMBER_ERR_INVALID_ARG;
    for (uint32_t i = 0; i < t->capacity; i++)
        ember_atomic_store_relaxed(&slot_at(t, i)->xstate, PD_EMPTY);   /* under the lock */
    t->count = 0;
    return EMBER_OK;
}

ember_rc_t ember_pdict_recount(void *mem)
{
    pd_header_t *t = mem;
    if (!t)
        return EMBER_ERR_INVALID_ARG;
    uint64_t n = 0;
    for (uint32_t i = 0; i < t->capacity; i++) {
        uint32_t st = ember_atomic_load_relaxed(&slot_at(t, i)->xstate);   /* under the lock */
        n += (st == PD_USED || st == PD_WRITING);
    }
    t->count = n;
    return EMBER_OK;
}

/* The bytes of a USED entry, or 0 if its lengths do not fit the slot. */
static inline uint32_t entry_bytes(pd_header_t *t, pd_slot_t *s)
{
    uint32_t room = room_of(t);
    if (s->klen == 0 || s->vlen == 0 || s->klen > room || s->vlen > room - s->klen)
        return 0;
    return s->klen + s->vlen;
}

ember_rc_t ember_pdict_snapshot(void *mem, uint8_t **out, size_t *outlen, uint32_t *n,
                                uint32_t *torn)
{
    pd_header_t *t = mem;
    if (!t || !out || !outlen || !n || !torn)
        return EMBER_ERR_INVALID_ARG;
    *out = NULL;
    *outlen = 0;
    *n = 0;
    *torn = 0;
    size_t total = 0;
    uint32_t bad = 0;
    for (uint32_t i = 0; i < t->capacity; i++) {
        pd_slot_t *s = slot_at(t, i);
        uint32_t st = ember_atomic_load_relaxed(&s->xstate);   /* under the lock */
        if (st == PD_USED) {
            uint32_t b = entry_bytes(t, s);
            if (b)
                total += 8 + (size_t)b;
            else
                bad++;
        } else if (st == PD_WRITING) {
            bad++;
        }
    }
    *torn = bad;
    if (total == 0)
        return EMBER_OK;
    uint8_t *buf = malloc(total), *p = buf;
    if (!buf)
        return EMBER_ERR_NOMEM;
    uint32_t count = 0;
    for (uint32_t i = 0; i < t->capacity; i++) {
        pd_slot_t *s = slot_at(t, i);
        if (ember_atomic_load_relaxed(&s->xstate) != PD_USED)
            continue;
        uint32_t b = entry_bytes(t, s);
        if (!b)
            continue;
        memcpy(p, &s->klen, 4);
        memcpy(p + 4, &s->vlen, 4);
        memcpy(p + 8, s->data, b);
        p += 8 + b;
        count++;
    }
    *out = buf;
    *outlen = (size_t)(p - buf);
    *n = count;
    return EMBER_OK;
}
