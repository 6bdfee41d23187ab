/*
 * sync_stress.c -- stress test of sync.c, built with sanitizers by
 * tests/test_sync_sanitizers.py.
 *
 *   sync_stress threads N   threads of one process: Lock and RLock mutual
 *                           exclusion over a plain (non-atomic) counter,
 *                           Semaphore bound, Event hand-off, Barrier rounds
 *   sync_stress procs N     forked processes on MAP_SHARED memory: Lock
 *                           mutual exclusion, then N SIGKILLs of holders,
 *                           each taken over exactly once with OWNER_DIED
 *
 * Prints "ok: ..." and exits 0, or prints what failed and exits 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "sync.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define NTHREADS 4
#define FAIL(...) do { printf(__VA_ARGS__); printf("\n"); exit(1); } while (0)
#define CHECK(c) do { if (!(c)) FAIL("check failed at line %d: %s", __LINE__, #c); } while (0)

static void *g_lock, *g_rlock, *g_sem, *g_ev, *g_bar;
static long g_counter, g_rcounter;     /* plain: protected by the locks */
static _Atomic int g_in_sem;
static long g_iters;
static long g_round_sum[NTHREADS];

static void *xalloc(int kind, int64_t param, uint32_t flags)
{
    size_t n = ember_sync_size(kind);
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    CHECK(ember_sync_init(p, n, kind, param, flags) == EMBER_OK);
    CHECK(ember_sync_check(p, n, kind) == EMBER_OK);
    return p;
}

static void *thread_main(void *arg)
{
    long id = (long)arg;
    for (long i = 0; i < g_iters; i++) {
        CHECK(ember_lock_acquire(g_lock, -1, 1, NULL) == EMBER_OK);
        g_counter++;
        CHECK(ember_lock_release(g_lock) == EMBER_OK);

        CHECK(ember_lock_acquire(g_rlock, -1, 1, NULL) == EMBER_OK);
        CHECK(ember_lock_acquire(g_rlock, 0, 0, NULL) == EMBER_OK);
        g_rcounter++;
        CHECK(ember_lock_release(g_rlock) == EMBER_OK);
        CHECK(ember_lock_release(g_rlock) == EMBER_OK);

        CHECK(ember_sem_acquire(g_sem, -1) == EMBER_OK);
        int in = atomic_fetch_add(&g_in_sem, 1) + 1;
        CHECK(in <= 2);
        atomic_fetch_sub(&g_in_sem, 1);
        CHECK(ember_sem_release(g_sem, 1) == EMBER_OK);
    }
    /* Barrier rounds: each round, the indices 0..N-1 sum to N(N-1)/2. */
    for (int r = 0; r < 200; r++) {
        uint32_t index = 0, slot = 0;
        ember_rc_t rc = ember_barrier_arrive(g_bar, -1, &index, &slot);
        if (rc == EMBER_SYNC_LAST)
            rc = ember_barrier_trip(g_bar, slot, 1);
        else if (rc == EMBER_OK)
            rc = ember_barrier_wait(g_bar, slot, -1);
        CHECK(rc == EMBER_OK);
        g_round_sum[id] += index;
    }
    return NULL;
}

static int run_threads(long iters)
{
    g_iters = iters;
    g_lock = xalloc(EMBER_SYNC_LOCK, 0, 0);
    g_rlock = xalloc(EMBER_SYNC_RLOCK, 0, 0);
    g_sem = xalloc(EMBER_SYNC_SEMAPHORE, 2, EMBER_SYNC_F_BOUNDED);
    g_ev = xalloc(EMBER_SYNC_EVENT, 0, 0);
    g_bar = xalloc(EMBER_SYNC_BARRIER, NTHREADS, 0);
    pthread_t t[NTHREADS];
    for (long i = 0; i < NTHREADS; i++)
        CHECK(pthread_create(&t[i], NULL, thread_main, (void *)i) == 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    CHECK(g_counter == iters * NTHREADS);
    CHECK(g_rcounter == iters * NTHREADS);
    CHECK(ember_sem_value(g_sem) == 2);
    CHECK(ember_sem_release(g_sem, 1) == EMBER_SYNC_OVER);
    long total = 0;
    for (int i = 0; i < NTHREADS; i++)
        total += g_round_sum[i];
    CHECK(total == 200L * NTHREADS * (NTHREADS - 1) / 2);
    /* Event: a set followed by a clear still releases a waiter's token. */
    uint32_t tok = ember_event_token(g_ev);
    CHECK(ember_event_wait(g_ev, tok, 0) == EMBER_ERR_TIMEOUT);
    CHECK(ember_event_set(g_ev) == EMBER_OK && ember_event_clear(g_ev) == EMBER_OK);
    CHECK(ember_event_wait(g_ev, tok, 0) == EMBER_OK);
    CHECK(!ember_event_is_set(g_ev));
    /* misuse: errors, never crashes */
    CHECK(ember_lock_release(g_lock) == EMBER_SYNC_OVER);
    CHECK(ember_lock_release(g_rlock) == EMBER_SYNC_NOT_OWNER);
    CHECK(ember_sync_check(g_lock, 128, EMBER_SYNC_EVENT) == EMBER_ERR_BAD_MAGIC);
    CHECK(ember_sync_init(g_lock, 8, EMBER_SYNC_LOCK, 0, 0) == EMBER_ERR_INVALID_ARG);
    CHECK(ember_sync_init(g_bar, 4096, EMBER_SYNC_BARRIER, 0, 0) == EMBER_ERR_INVALID_ARG);
    CHECK(ember_sem_release(g_sem, 0) == EMBER_ERR_INVALID_ARG);
    CHECK(ember_sync_destroy(g_ev) == EMBER_OK);
    CHECK(ember_sync_check(g_ev, 128, EMBER_SYNC_EVENT) == EMBER_ERR_DESTROYED);
    printf("ok: threads %d x %ld iterations\n", NTHREADS, iters);
    return 0;
}

/* ---- processes -------------------------------------------------------- */
struct shared {
    long counter;
    long owner;
    long violations;
    long stop;
};

static void proc_worker(void *lock, struct shared *sh)
{
    long me = getpid();
    while (!__atomic_load_n(&sh->stop, __ATOMIC_RELAXED)) {
        uint32_t died = 0;
        ember_rc_t rc = ember_lock_acquire(lock, -1, 1, &died);
        if (rc == EMBER_SYNC_OWNER_DIED) {
            sh->owner = 0;
            ember_lock_consistent(lock);
        } else if (rc != EMBER_OK) {
            _exit(3);
        }
        if (sh->owner != 0)
            sh->violations++;
        sh->owner = me;
        sh->counter++;
        if (sh->owner != me)
            sh->violations++;
        sh->owner = 0;
        ember_lock_release(lock);
    }
    _exit(0);
}

static int run_procs(long kills)
{
    void *lock = xalloc(EMBER_SYNC_LOCK, 0, 0);
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(sh != MAP_FAILED);
    memset(sh, 0, sizeof *sh);
    pid_t w[3];
    for (int i = 0; i < 3; i++)
        if ((w[i] = fork()) == 0)
            proc_worker(lock, sh);
    unsigned seed = 7;
    for (long k = 0; k < kills; k++) {
        long target = __atomic_load_n(&sh->counter, __ATOMIC_RELAXED) + 1 + rand_r(&seed) % 64;
        while (__atomic_load_n(&sh->counter, __ATOMIC_RELAXED) < target)
            sched_yield();
        int i = rand_r(&seed) % 3;
        kill(w[i], SIGKILL);
        waitpid(w[i], NULL, 0);
        if ((w[i] = fork()) == 0)
            proc_worker(lock, sh);
    }
    __atomic_store_n(&sh->stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 3; i++) {
        int st = 0;
        waitpid(w[i], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    uint32_t died = 0, deaths = 0;
    ember_rc_t rc = ember_lock_acquire(lock, 0, 1, &died);
    CHECK(rc == EMBER_OK || rc == EMBER_SYNC_OWNER_DIED);
    ember_lock_state(lock, NULL, NULL, NULL, &deaths);
    CHECK(sh->violations == 0);
    CHECK(deaths <= (uint32_t)kills);
    printf("ok: procs, %ld kills, %u deaths while holding, counter %ld\n", kills, deaths, sh->counter);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        FAIL("usage: sync_stress threads|procs N");
    long n = atol(argv[2]);
    if (!strcmp(argv[1], "threads"))
        return run_threads(n);
    if (!strcmp(argv[1], "procs"))
        return run_procs(n);
    FAIL("unknown mode %s", argv[1]);
}
