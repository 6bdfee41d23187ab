/*
 * outboard.h -- the shepherd's output board: one entry per process it
 * spawned, saying whether all the process wrote to its stdout and stderr
 * pipes was forwarded when it exited.  See outboard.c.
 */
#ifndef EMBER_OUTBOARD_H
#define EMBER_OUTBOARD_H

#include <stddef.h>
#include <stdint.h>
#include "ember_common.h"

#define EMBER_OB_MAGIC    0x3144524f42544f45ull    /* "EOTBORD1" */
#define EMBER_OB_VERSION  1u
#define EMBER_OB_COUNT    16384u                   /* entries; a process uses p_uid % COUNT */
#define EMBER_OB_ENTRY    32u                      /* bytes an entry */
#define EMBER_OB_BYTES    ((size_t)EMBER_OB_ENTRY * (EMBER_OB_COUNT + 1))

/* Map the board at `path` (a file or /dev/shm segment; created, sized and
 * given its header with `create`) into this process, once: later calls
 * return EMBER_OK at once.  EMBER_ERR_NOT_FOUND: no such board;
 * EMBER_ERR_BAD_MAGIC / EMBER_ERR_VERSION: not one of this layout. */
ember_rc_t ember_ob_open(const char *path, int create);

/* Map the board at `path` (created as by ember_ob_open() with `create`)
 * in place of the one this process maps, at the same address, the old
 * mapping gone in the same step (or map it, if none is): for a process
 * that joins in a later runtime, and a shepherd forked from one (which
 * inherited the earlier runtime's board).  The errors of ember_ob_open();
 * on one, the board mapped before stays. */
ember_rc_t ember_ob_replace(const char *path, int create);

/* 1 if this process has a board mapped. */
int ember_ob_mapped(void);

/* Shepherd, before it starts process p_uid: the entry is p_uid's.  With
 * `clean` (a process whose stdio is not forwarded), it is clean already. */
void ember_ob_spawned(uint64_t p_uid, int clean);

/* Shepherd: it is about to take output of p_uid from its pipes, or holds
 * some not yet written (busy 1); all it took is written (busy 0). */
void ember_ob_busy(uint64_t p_uid, int busy);

/* The process p_uid itself, after its last write, about to exit: marks its
 * entry clean if nothing it wrote is left to forward (its fd 1 and fd 2 are
 * pipes holding no bytes, and the shepherd is not busy with its output).
 * Returns 1 if it did. */
int ember_ob_exiting(uint64_t p_uid);

/* Whether process p_uid marked itself clean at its exit (or was spawned
 * clean).  0 without a board. */
int ember_ob_clean(uint64_t p_uid);

/* Shepherd, after it reaped p_uid and wrote all its pipes held: drained
 * (wakes a joiner waiting in ember_ob_wait_drained()). */
void ember_ob_drained(uint64_t p_uid);

/* The joiner of p_uid (exited, not clean): wait up to ns nanoseconds for
 * the shepherd to say it drained p_uid's pipes.  1: drained; 0: not within
 * ns (a negative ns: no wait), or the entry went to a later process; -1:
 * interrupted (EINTR: the caller waits again for what is left of its
 * bound, not ns anew). */
int ember_ob_wait_drained(uint64_t p_uid, int64_t ns);

#endif
