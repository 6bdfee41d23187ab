/*
 * pool_stress.c -- multi-process stress and death tests of ember's pool
 * allocator, in C, built by tests/test_pool_cstress.py with
 * -fsanitize=address,undefined.  It #includes pool.c to reach the
 * internals it needs to stage deaths at exact points of an operation.
 *
 *   pool_stress deaths          deaths at every step of alloc/free, staged
 *   pool_stress corrupt         garbage in the heap + owner death -> CORRUPT
 *   pool_stress storm KILLS W   W workers in alloc/free loops, SIGKILLed at
 *                               random moments KILLS times, then a full check
 *
 * Exit 0 on success; prints what failed otherwise.
 */
#include "../../src/ember/pools_c/pool.c"

#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>

#define CHECK(cond) do { if (!(cond)) { \
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); exit(1); } } while (0)
#define CHECK_RC(expr, want) do { ember_rc_t rc_ = (expr); if (rc_ != (want)) { \
    fprintf(stderr, "%s:%d: %s = %s, want %s\n", __FILE__, __LINE__, #expr, \
            ember_rc_str(rc_), ember_rc_str(want)); exit(1); } } while (0)

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static ember_pool_t *mkpool(uint64_t size)
{
    ember_pool_t *p;
    char tag[32];
    snprintf(tag, sizeof tag, "p%d", (int)getpid());
    CHECK_RC(ember_pool_create(size, rnd() >> 1, tag, "stress", &p), EMBER_OK);
    return p;
}

static void stats(ember_pool_t *p, ember_pool_stats_t *st) { CHECK_RC(ember_pool_stats(p, st), EMBER_OK); }

/* Run fn(p, arg) in a child that attaches the pool, takes the lock, does a
 * partial mutation and dies holding the lock. */
static void die_in_child(ember_pool_t *p, void (*fn)(ember_pool_t *, uint64_t), uint64_t arg)
{
    uint8_t sd[EMBER_POOL_SDESC_SIZE];
    CHECK_RC(ember_pool_serialize(p, sd, sizeof sd, NULL), EMBER_OK);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        ember_pool_t *q;
        if (ember_pool_attach(sd, sizeof sd, &q) != EMBER_OK)
            _exit(90);
        if (_ember_lock(q) != EMBER_OK)
            _exit(91);
        fn(q, arg);
        raise(SIGKILL);                 /* dies holding the lock */
        _exit(92);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
}

/* the staged partial operations (lock held, as in the real code) */
static void st_nothing(ember_pool_t *q, uint64_t a) { (void)q; (void)a; }
static void st_unlinked(ember_pool_t *q, uint64_t off) { _ember_bin_remove(q, off); }
static void st_tail_written(ember_pool_t *q, uint64_t off)
{
    /* alloc of 128 B from the free block at off: unlink, tail header
     * written, original block not yet shrunk */
    _ember_bin_remove(q, off);
    _ember_blk_t *b = _ember_blk(q, off);
    uint64_t bsz = ember_atomic_load_relaxed(&b->xsize);
    _ember_blk_t *t = _ember_blk(q, off + 192);
    ember_atomic_store_relaxed(&t->xsize, bsz - 192);
    t->prev_size = 192;
    ember_atomic_store_relaxed(&t->xtag, _EMBER_TAG_FREE);
}
static void st_shrunk(ember_pool_t *q, uint64_t off)
{
    st_tail_written(q, off);
    ember_atomic_store_release(&_ember_blk(q, off)->xsize, 192);   /* tail not linked */
}
static void st_marked_alloc(ember_pool_t *q, uint64_t off)
{
    st_shrunk(q, off);
    _ember_blk(q, off)->id = ++q->h->next_id;
    ember_atomic_store_release(&_ember_blk(q, off)->xtag, _EMBER_TAG_ALLOC);
}
static void st_free_marked(ember_pool_t *q, uint64_t off)
{
    ember_atomic_store_release(&_ember_blk(q, off)->xtag, _EMBER_TAG_FREE);
}
static void st_free_merged_next(ember_pool_t *q, uint64_t off)
{
    /* free of the block at off whose next block is free: marked, next
     * unlinked, size grown -- not linked, neighbours' prev_size stale */
    _ember_blk_t *b = _ember_blk(q, off);
    ember_atomic_store_release(&b->xtag, _EMBER_TAG_FREE);
    uint64_t sz = ember_atomic_load_relaxed(&b->xsize);
    _ember_bin_remove(q, off + sz);
    sz += ember_atomic_load_relaxed(&_ember_blk(q, off + sz)->xsize);
    ember_atomic_store_release(&b->xsize, sz);
}

static void test_deaths(void)
{
    struct { const char *what; void (*fn)(ember_pool_t *, uint64_t); int on_free_block;
             int lost; } cases[] = {
        {"lock only", st_nothing, 1, 0},
        {"alloc: block unlinked", st_unlinked, 1, 0},
        {"alloc: tail header written", st_tail_written, 1, 0},
        {"alloc: block shrunk", st_shrunk, 1, 0},
        {"alloc: block marked ALLOC", st_marked_alloc, 1, 1},
        {"free: block marked FREE", st_free_marked, 0, 0},
        {"free: merged with next", st_free_merged_next, 0, 0},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ember_pool_t *p = mkpool(1 << 20);
        ember_alloc_t a1, a2, a3;
        CHECK_RC(ember_pool_alloc(p, 100, &a1), EMBER_OK);
        CHECK_RC(ember_pool_alloc(p, 100, &a2), EMBER_OK);
        CHECK_RC(ember_pool_alloc(p, 100, &a3), EMBER_OK);
        CHECK_RC(ember_pool_free(p, &a2), EMBER_OK);      /* a free hole after a1 */
        uint64_t off;
        ember_alloc_t keep = a1;
        if (cases[c].on_free_block) {
            off = a3.offset + 128;                          /* the big tail block */
        } else {
            /* free a3 (its next is the free tail) */
            off = a3.offset - 64;
        }
        die_in_child(p, cases[c].fn, off);
        /* the next locker repairs */
        ember_pool_stats_t st;
        stats(p, &st);
        CHECK_RC(ember_pool_validate(p), EMBER_OK);
        CHECK(ember_pool_repair_count(p) == 1);
        uint64_t expect_live = cases[c].on_free_block ? 2u + (unsigned)cases[c].lost : 1u;
        if (st.live_allocs != expect_live) {
            fprintf(stderr, "case '%s': live %llu, want %llu\n", cases[c].what,
                    (unsigned long long)st.live_allocs, (unsigned long long)expect_live);
            exit(1);
        }
        /* the pool works: free what is left, everything comes back */
        CHECK_RC(ember_pool_free(p, &keep), EMBER_OK);
        if (cases[c].on_free_block)
            CHECK_RC(ember_pool_free(p, &a3), EMBER_OK);
        else
            CHECK_RC(ember_pool_free(p, &a3), EMBER_ERR_DOUBLE_FREE);  /* done by the dead */
        uint64_t cur = 0;
        ember_alloc_t x;
        while (ember_pool_next_alloc(p, &cur, &x) == EMBER_OK)      /* reclaim the lost */
            CHECK_RC(ember_pool_free(p, &x), EMBER_OK);
        stats(p, &st);
        CHECK(st.free == st.total && st.live_allocs == 0 && st.largest_free == st.total - 64);
        CHECK_RC(ember_pool_validate(p), EMBER_OK);
        CHECK_RC(ember_pool_destroy(p), EMBER_OK);
    }
    printf("deaths: %zu staged cases ok\n", sizeof cases / sizeof cases[0]);
}

/* A locker that got EOWNERDEAD is repairing (glibc marks the mutex
 * INCONSISTENT meanwhile): stopped there it is a stuck holder, never
 * "corrupt"; killed there, the next locker repairs again. */
static void test_repairer_deaths(void)
{
    ember_pool_t *p = mkpool(1 << 20);
    ember_alloc_t a;
    uint8_t sd[EMBER_POOL_SDESC_SIZE];
    CHECK_RC(ember_pool_alloc(p, 100, &a), EMBER_OK);
    CHECK_RC(ember_pool_serialize(p, sd, sizeof sd, NULL), EMBER_OK);
    die_in_child(p, st_nothing, 0);                 /* owner dead */
    for (int stop = 1; stop >= 0; stop--) {
        int pipefd[2];
        CHECK(pipe(pipefd) == 0);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            ember_pool_t *q;
            char c = 'x';
            if (ember_pool_attach(sd, sizeof sd, &q) != EMBER_OK)
                _exit(90);
            if (pthread_mutex_lock(&q->h->mutex) != EOWNERDEAD)   /* the repair would start here */
                _exit(91);
            if (write(pipefd[1], &c, 1) != 1)
                _exit(92);
            raise(stop ? SIGSTOP : SIGKILL);
            _exit(93);
        }
        char c;
        close(pipefd[1]);
        CHECK(read(pipefd[0], &c, 1) == 1);
        close(pipefd[0]);
        int status;
        if (stop) {
            CHECK(waitpid(pid, &status, WUNTRACED) == pid && WIFSTOPPED(status));
            ember_pool_set_lock_bound(200000000);
            CHECK_RC(ember_pool_alloc(p, 10, &a), EMBER_ERR_LOCK_STUCK);
            ember_pool_set_lock_bound(0);
            CHECK(ember_pool_lock_owner(p) == (uint32_t)pid);
            kill(pid, SIGKILL);
        }
        CHECK(waitpid(pid, &status, 0) == pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    }
    CHECK(ember_pool_repair_count(p) == 1);         /* repaired once, by us */
    CHECK_RC(ember_pool_alloc(p, 10, &a), EMBER_OK);
    CHECK_RC(ember_pool_validate(p), EMBER_OK);
    CHECK_RC(ember_pool_destroy(p), EMBER_OK);
    printf("repairer deaths: ok\n");
}

static void st_garbage(ember_pool_t *q, uint64_t off)
{
    ember_atomic_store_relaxed(&_ember_blk(q, off)->xsize, 12345);
}

static void test_corrupt(void)
{
    ember_pool_t *p = mkpool(1 << 16);
    ember_alloc_t a;
    CHECK_RC(ember_pool_alloc(p, 100, &a), EMBER_OK);
    die_in_child(p, st_garbage, a.offset - 64);
    ember_pool_stats_t st;
    CHECK_RC(ember_pool_stats(p, &st), EMBER_ERR_CORRUPT);
    CHECK_RC(ember_pool_alloc(p, 10, &a), EMBER_ERR_CORRUPT);
    CHECK_RC(ember_pool_free(p, &a), EMBER_ERR_CORRUPT);
    CHECK_RC(ember_pool_validate(p), EMBER_ERR_CORRUPT);
    CHECK_RC(ember_pool_destroy(p), EMBER_OK);
    printf("corrupt: ok\n");
}

/* ---------------------------------------------------------------- storm */

#define HOLD 16
typedef struct { _Atomic uint64_t id[HOLD]; } ledger_t;

/* Pattern over the first and last 2 KiB of a block (whole block if
 * smaller): catches any overlap between blocks, keeps the loop lock-heavy. */
#define PAT(id, i) ((uint8_t)((id) * 131u + (i)))
static void fill(uint8_t *d, uint64_t n, uint64_t id)
{
    for (uint64_t i = 0; i < n; i++) {
        if (i == 2048 && n > 4096)
            i = n - 2048;
        d[i] = PAT(id, i);
    }
}

static int verify(const uint8_t *d, uint64_t n, uint64_t id)
{
    for (uint64_t i = 0; i < n; i++) {
        if (i == 2048 && n > 4096)
            i = n - 2048;
        if (d[i] != PAT(id, i))
            return 0;
    }
    return 1;
}

static void worker(const uint8_t *sd, ledger_t *lg, uint64_t seed)
{
    ember_pool_t *p;
    if (ember_pool_attach(sd, EMBER_POOL_SDESC_SIZE, &p) != EMBER_OK)
        _exit(10);
    rng_state = seed | 1;
    ember_alloc_t held[HOLD];
    int n = 0;
    static const uint64_t sizes[] = {1, 64, 100, 500, 4096, 10000, 70000};
    for (;;) {
        if (n > 0 && (n == HOLD || (rnd() & 1))) {
            int i = (int)(rnd() % (uint64_t)n);
            ember_alloc_t a = held[i];
            if (!verify(ember_pool_ptr(p, a.offset), a.size, a.id))
                _exit(12);                                   /* overlap/corruption */
            for (int j = 0; j < HOLD; j++)
                if (ember_atomic_load_relaxed(&lg->id[j]) == a.id) {
                    ember_atomic_store_relaxed(&lg->id[j], 0);  /* forget, then free */
                    break;
                }
            if (ember_pool_free(p, &a) != EMBER_OK)
                _exit(13);
            held[i] = held[--n];
        } else {
            ember_alloc_t a;
            ember_rc_t rc = ember_pool_alloc(p, sizes[rnd() % 7], &a);
            if (rc == EMBER_ERR_EXHAUSTED)
                continue;
            if (rc != EMBER_OK)
                _exit(14);
            for (int j = 0; j < HOLD; j++)     /* record first: a death now loses nothing */
                if (ember_atomic_load_relaxed(&lg->id[j]) == 0) {
                    ember_atomic_store_relaxed(&lg->id[j], a.id);
                    break;
                }
            fill(ember_pool_ptr(p, a.offset), a.size, a.id);
            held[n++] = a;
        }
    }
}

static void test_storm(int kills, int nworkers)
{
    ember_pool_t *p = mkpool(4 << 20);
    uint8_t sd[EMBER_POOL_SDESC_SIZE];
    CHECK_RC(ember_pool_serialize(p, sd, sizeof sd, NULL), EMBER_OK);
    ledger_t *lg = mmap(NULL, sizeof(ledger_t) * (size_t)nworkers, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(lg != MAP_FAILED);
    pid_t pids[64];
    CHECK(nworkers <= 64);
    for (int w = 0; w < nworkers; w++) {
        pids[w] = fork();
        CHECK(pids[w] >= 0);
        if (pids[w] == 0)
            worker(sd, &lg[w], rnd());
    }
    for (int k = 0; k < kills; k++) {
        struct timespec ts = {0, (long)(rnd() % 2000000)};     /* 0..2 ms */
        nanosleep(&ts, NULL);
        int w = (int)(rnd() % (uint64_t)nworkers);
        kill(pids[w], SIGKILL);
        int status;
        CHECK(waitpid(pids[w], &status, 0) == pids[w]);
        if (!WIFSIGNALED(status)) {
            fprintf(stderr, "worker exited with %d (10 attach, 12 corruption, 13 free, 14 alloc)\n",
                    WEXITSTATUS(status));
            exit(1);
        }
        /* the dead worker's held blocks are reclaimed by the parent (as
         * the runtime would do on its behalf); the slot restarts */
        for (int j = 0; j < HOLD; j++) {
            uint64_t id = ember_atomic_load_relaxed(&lg[w].id[j]);
            if (!id)
                continue;
            uint64_t cur = 0;
            ember_alloc_t x;
            ember_rc_t rc;
            while ((rc = ember_pool_next_alloc(p, &cur, &x)) == EMBER_OK)
                if (x.id == id) {
                    CHECK_RC(ember_pool_free(p, &x), EMBER_OK);
                    break;
                }
            CHECK(rc == EMBER_OK || rc == EMBER_ERR_EMPTY);
            ember_atomic_store_relaxed(&lg[w].id[j], 0);
        }
        pids[w] = fork();
        CHECK(pids[w] >= 0);
        if (pids[w] == 0)
            worker(sd, &lg[w], rnd());
    }
    for (int w = 0; w < nworkers; w++) {
        kill(pids[w], SIGKILL);
        int status;
        CHECK(waitpid(pids[w], &status, 0) == pids[w]);
        CHECK(WIFSIGNALED(status));
    }
    CHECK_RC(ember_pool_validate(p), EMBER_OK);
    /* every live block now is either in a ledger or lost by a death
     * (at most one per kill) */
    uint64_t cur = 0, live = 0, lost = 0;
    ember_alloc_t x;
    while (ember_pool_next_alloc(p, &cur, &x) == EMBER_OK) {
        live++;
        int in_ledger = 0;
        for (int w = 0; w < nworkers; w++)
            for (int j = 0; j < HOLD; j++)
                if (ember_atomic_load_relaxed(&lg[w].id[j]) == x.id)
                    in_ledger = 1;
        lost += !in_ledger;
        CHECK_RC(ember_pool_free(p, &x), EMBER_OK);
    }
    ember_pool_stats_t st;
    stats(p, &st);
    CHECK(st.free == st.total && st.live_allocs == 0 && st.largest_free == st.total - 64);
    ember_alloc_t whole;
    CHECK_RC(ember_pool_alloc(p, st.total - 64, &whole), EMBER_OK);
    CHECK_RC(ember_pool_free(p, &whole), EMBER_OK);
    CHECK_RC(ember_pool_validate(p), EMBER_OK);
    uint64_t repairs = ember_pool_repair_count(p);
    printf("storm: %d kills, %d workers, %llu live at end, %llu lost (<= kills + workers), %llu repairs\n",
           kills, nworkers, (unsigned long long)live, (unsigned long long)lost,
           (unsigned long long)repairs);
    CHECK(lost <= (uint64_t)(kills + nworkers));   /* at most one block per death */
    munmap(lg, sizeof(ledger_t) * (size_t)nworkers);
    CHECK_RC(ember_pool_destroy(p), EMBER_OK);
}

int main(int argc, char **argv)
{
    rng_state ^= (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)time(NULL);
    if (argc >= 2 && strcmp(argv[1], "deaths") == 0) {
        test_deaths();
        test_repairer_deaths();
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "corrupt") == 0) {
        test_corrupt();
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "storm") == 0) {
        test_storm(atoi(argv[2]), atoi(argv[3]));
        return 0;
    }
    fprintf(stderr, "usage: %s deaths | corrupt | storm KILLS WORKERS\n", argv[0]);
    return 2;
}
