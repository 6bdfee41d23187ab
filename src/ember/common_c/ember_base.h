/*
 * ember_base.h -- the one copy of the OS helpers every ember C file needs:
 * the monotonic clock, futex wait/wake, this process's pid (cached, fixed up
 * after fork()), process liveness and start time from /proc, and the FNV-1a
 * checksums and little-endian field codecs of the serialized descriptors.
 *
 * Internal to ember's C (pool.c, channel.c, sync.c); not part of any public
 * header, so the cffi test builds never parse it.  Everything is static
 * inline: each C file that includes it gets its own private copy of the
 * code (the one source lives here), and functions it does not use cost
 * nothing and raise no -Wunused warning.  The pid cache is per C file, as it
 * was before; each copy is refreshed in a fork()ed child by its own
 * pthread_atfork handler, and in a child of a raw clone() (which runs no
 * pthread_atfork handler) by the file's exported *_after_clone() function,
 * which its extension calls from an os.register_at_fork hook (CPython's
 * PyOS_AfterFork_Child runs those; the raw clone's child calls it).
 *
 * Include it from a .c file compiled with -D_GNU_SOURCE (setup.py and
 * tests/cffi_build.py pass it; syscall() and pthread_atfork need it under
 * -std=c11).
 *
 * Death mid-operation: nothing here touches shared state; a process dying
 * inside any of these helpers costs nothing.
 */
#ifndef EMBER_BASE_H
#define EMBER_BASE_H

#include "ember_common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ---- clock -------------------------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds: deadlines and slices, never wall time. */
static inline int64_t ember_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* ---- futex -------------------------------------------------------------- */

/* Sleep while *addr == val, at most ns nanoseconds (ns < 0: no bound).
 * Returns 0 (woken, or *addr already differed: EAGAIN), ETIMEDOUT or EINTR.
 * The futex is process-shared (no FUTEX_PRIVATE_FLAG): the word lives in
 * shared memory. */
static inline int ember_futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t ns)
{
    struct timespec ts, *tsp = NULL;
    if (ns >= 0) {
        ts.tv_sec = (time_t)(ns / 1000000000ll);
        ts.tv_nsec = (long)(ns % 1000000000ll);
        tsp = &ts;
    }
    long r = syscall(SYS_futex, (uint32_t *)(void *)addr, FUTEX_WAIT, val, tsp, NULL, 0);
    if (r == 0)
        return 0;
    return errno == EAGAIN ? 0 : errno;
}

/* Wake every sleeper on addr, in any process. */
static inline void ember_futex_wake_all(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)(void *)addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* ---- this CPU ----------------------------------------------------------- */

/* 1 + the CPU this thread runs on now, 0 if unknown: a scheduling hint only
 * (the thread may move at any time).  glibc >= 2.35 reads it from rseq
 * (no system call); older ones use the vDSO. */
static inline uint32_t ember_cpu_hint(void)
{
    int c = sched_getcpu();
    return c < 0 ? 0u : (uint32_t)c + 1u;
}

/* ---- this process ------------------------------------------------------- */

/* This process's pid, cached (getpid() is a system call) and refreshed in
 * the child after fork() by the pthread_atfork handler. */
static _Atomic int ember_pid_cache_;
static pthread_once_t ember_pid_once_ = PTHREAD_ONCE_INIT;

static inline void ember_pid_refresh_(void)
{
    /* relaxed: a per-process cache; every thread computes the same value. */
    ember_atomic_store_relaxed(&ember_pid_cache_, (int)getpid());
}

static inline void ember_pid_init_(void)
{
    ember_pid_refresh_();
    pthread_atfork(NULL, NULL, ember_pid_refresh_);
}

/* In a child made by a raw clone() (no pthread_atfork handler ran: the
 * spares of ember.shepherd.template): what this file's fork handler does.
 * Each C file that caches the pid exports a function that calls it
 * (ember_pool_after_clone, ember_ch_after_clone, ...), which its extension
 * registers with os.register_at_fork (so it also runs after an ordinary
 * fork, after the handler: a second refresh to the same value). */
static inline void ember_pid_after_clone_(void)
{
    if (ember_atomic_load_relaxed(&ember_pid_cache_) != 0)
        ember_pid_refresh_();
}

static inline uint32_t ember_self_pid(void)
{
    /* relaxed: see ember_pid_refresh_(). */
    int p = ember_atomic_load_relaxed(&ember_pid_cache_);
    if (__builtin_expect(p == 0, 0)) {
        pthread_once(&ember_pid_once_, ember_pid_init_);
        p = ember_atomic_load_relaxed(&ember_pid_cache_);
        if (p == 0)          /* forked child of a process that never ran the init */
            p = (int)getpid();
    }
    return (uint32_t)p;
}

/* This process's session id (a scheduling hint: with autogroup scheduling
 * each session is a group of its own), cached per pid: recomputed on the
 * first call in a new process (after fork(), whose child usually calls
 * setsid() before anything sends). */
static _Atomic uint32_t ember_sid_cache_;
static _Atomic uint32_t ember_sid_pid_;

static inline uint32_t ember_self_sid(void)
{
    uint32_t pid = ember_self_pid();
    /* relaxed throughout: a hint; two threads racing here store the same
     * values, and a stale read only costs one spin choice. */
    if (__builtin_expect(ember_atomic_load_relaxed(&ember_sid_pid_) != pid, 0)) {
        pid_t sid = getsid(0);
        ember_atomic_store_relaxed(&ember_sid_cache_, sid < 0 ? 0u : (uint32_t)sid);
        ember_atomic_store_relaxed(&ember_sid_pid_, pid);
    }
    return ember_atomic_load_relaxed(&ember_sid_cache_);
}

/* ---- other processes ---------------------------------------------------- */

/* Read /proc/<pid>/stat (pid 0: this process): 0 and *start (field 22,
 * start time in clock ticks, truncated to 32 bits) and *zombie (state Z or
 * X); -1 if the process does not exist; -2 if it cannot be read. */
static inline int ember_proc_stat(uint32_t pid, uint32_t *start, int *zombie)
{
    char path[64], buf[1024];
    if (pid == 0)
        snprintf(path, sizeof path, "/proc/self/stat");
    else
        snprintf(path, sizeof path, "/proc/%u/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return (errno == ENOENT || errno == ESRCH) ? -1 : -2;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int err = errno;
    close(fd);
    if (n <= 0)
        return err == ESRCH ? -1 : -2;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ')
        return -2;
    p += 2;
    *zombie = (*p == 'Z' || *p == 'X');
    /* p is at field 3 (state); starttime is field 22. */
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p)
            return -2;
        p++;
    }
    unsigned long long st = 0;
    while (*p >= '0' && *p <= '9')
        st = st * 10 + (unsigned)(*p++ - '0');
    *start = (uint32_t)st;
    return 0;
}

/* Liveness of a pid.  level 1: kill(pid, 0) only; level 2: a zombie
 * (killed, not yet reaped) counts as dead too.  Pid 0 is dead; this
 * process is alive; when /proc cannot be read the process counts as alive. */
static inline int ember_pid_dead(uint32_t pid, int level)
{
    if (pid == 0)
        return 1;
    if (pid == ember_self_pid())
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 1;
    if (level < 2)
        return 0;
    uint32_t start = 0;
    int zombie = 0;
    int r = ember_proc_stat(pid, &start, &zombie);
    if (r == -1)
        return 1;
    return r == 0 && zombie;
}

/* ---- checksums and descriptor fields ------------------------------------ */

static inline uint64_t ember_fnv1a64(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static inline uint32_t ember_fnv1a32(const uint8_t *p, size_t n)
{
    uint32_t h = 0x811c9dc5u;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x01000193u;
    }
    return h;
}

/* nbytes (1..8) little-endian bytes of v at p. */
static inline void ember_put_le(uint8_t *p, uint64_t v, unsigned nbytes)
{
    for (unsigned i = 0; i < nbytes; i++)
        p[i] = (uint8_t)(v >> (8u * i));
}

static inline uint64_t ember_get_le(const uint8_t *p, unsigned nbytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < nbytes; i++)
        v |= (uint64_t)p[i] << (8u * i);
    return v;
}

#endif /* EMBER_BASE_H */
