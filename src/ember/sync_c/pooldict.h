/*
 * pooldict.h -- the hash table of ember.dict(in_pool=True) (PoolDict): an
 * open-addressing table of fixed-size slots in one pool allocation, read and
 * written directly by every process that maps it.
 *
 * The table has no lock of its own: every call below except init/check/size
 * must be made while holding the ember Lock (sync.h) that guards the table
 * (the Cython layer, _pooldict.pxi, does).  Algorithm, layout and what a
 * death at any instruction costs: pooldict.c's opening comment; the user
 * view: docs/shared-objects.md.
 *
 * Keys and values are byte strings whose first byte is a type tag chosen by
 * the caller (the Cython layer encodes small ints, str, bytes, floats,
 * None/True/False directly and everything else as a pickle); the table
 * compares keys byte for byte and never interprets a value.  A key is passed
 * as (tag, payload, payload length): the stored key is the tag followed by
 * the payload, and so is the stored value.
 */
#ifndef EMBER_POOLDICT_H
#define EMBER_POOLDICT_H

#include <stdint.h>
#include <stddef.h>
#include "../common_c/ember_common.h"

#define EMBER_PDICT_HEADER     64u    /* bytes of the table header */
#define EMBER_PDICT_SLOT_HDR   16u    /* bytes of a slot header (state, hash, klen, vlen) */
#define EMBER_PDICT_MIN_CAP     8u
#define EMBER_PDICT_MIN_SLOT   64u
#define EMBER_PDICT_MAX_SLOT   (1u << 20)

/* Bytes a table of `capacity` slots of `slot_size` bytes needs (0 if the
 * sizes are not valid: capacity a power of two >= 8, slot_size a multiple of
 * 64 in 64 .. 1 MiB). */
size_t ember_pdict_size(uint32_t capacity, uint32_t slot_size);

/* Initialize an empty table in `mem` (`size` bytes, 8-byte aligned).  The
 * magic is stored last (release), so a checker never sees half a table.
 * EMBER_ERR_INVALID_ARG: NULL, bad sizes, or `size` too small. */
ember_rc_t ember_pdict_init(void *mem, size_t size, uint32_t capacity, uint32_t slot_size);

/* Check that `mem` (`size` bytes) holds a table; its capacity and slot size.
 * EMBER_ERR_BAD_MAGIC, EMBER_ERR_VERSION, EMBER_ERR_CORRUPT (sizes in the
 * header that do not fit `size`), EMBER_ERR_INVALID_ARG. */
ember_rc_t ember_pdict_check(const void *mem, size_t size, uint32_t *capacity,
                             uint32_t *slot_size);

/* ---- under the lock ----------------------------------------------------- */

/* Copy the value of key (ktag, k, kn) -- tag byte first -- into buf and set
 * *vlen to its length.  EMBER_ERR_NOT_FOUND; EMBER_ERR_BUFFER_TOO_SMALL
 * (*vlen says how much is needed, nothing copied); EMBER_ERR_CORRUPT: the
 * entry was torn by a process that died while overwriting it (its key is
 * intact: setting or deleting the key repairs it). */
ember_rc_t ember_pdict_get(void *mem, uint8_t ktag, const void *k, uint32_t kn,
                           void *buf, uint32_t bufsize, uint32_t *vlen);

/* 1 if the key is in the table (a torn entry included), else 0. */
int ember_pdict_contains(void *mem, uint8_t ktag, const void *k, uint32_t kn);

/* Set key -> value (vtag, v, vn).  only_new: leave an existing entry as it is
 * and set *existed = 1.  EMBER_ERR_TOO_BIG: the key and value do not fit one
 * slot; EMBER_ERR_FULL: a new key, and the table holds its most keys
 * (capacity * 3 / 4). */
ember_rc_t ember_pdict_set(void *mem, uint8_t ktag, const void *k, uint32_t kn,
                           uint8_t vtag, const void *v, uint32_t vn, int only_new,
                           int *existed);

/* Remove the key.  EMBER_ERR_NOT_FOUND. */
ember_rc_t ember_pdict_delete(void *mem, uint8_t ktag, const void *k, uint32_t kn);

/* Number of keys. */
uint64_t ember_pdict_len(const void *mem);

/* Remove every key. */
ember_rc_t ember_pdict_clear(void *mem);

/* Count the keys again (after a holder of the lock died mid-operation: the
 * count it was about to change may be off by one). */
ember_rc_t ember_pdict_recount(void *mem);

/* Copy every entry into one malloc()ed buffer (*out, *outlen bytes; the
 * caller free()s it; NULL when empty): per entry, u32 key length, u32 value
 * length (native order), the key bytes, the value bytes.  *n: entries
 * copied; *torn: torn entries (not copied).  EMBER_ERR_NOMEM. */
ember_rc_t ember_pdict_snapshot(void *mem, uint8_t **out, size_t *outlen, uint32_t *n,
                                uint32_t *torn);

#endif /* EMBER_POOLDICT_H */
