/*
 * channel_stress.c -- stress test of ember channels for sanitizer builds.
 *
 *   channel_stress threads [n_msgs]   producers/consumers as threads (TSan)
 *   channel_stress procs   [n_msgs]   producers/consumers as processes (ASan/UBSan)
 *
 * P producers each send n_msgs messages (inline and large, some as moved
 * pool allocations, some with try-once retries); C consumers receive with
 * the copying, two-phase and zero-copy paths, check every message is intact,
 * FIFO per producer (per consumer), and count receipts in a shared table.
 * The last producer to finish closes the channel (ember_ch_close); the
 * consumers run until EMBER_ERR_CLOSED, so the close's "drain, then
 * CLOSED" is checked under the sanitizers too.  The parent checks that every message was received exactly once and that
 * the pool has no live allocation left but the channel's own.
 * Exit status 0 on success; the failure is printed otherwise.
 */
#include "channel.h"
#include "owner_tag.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define P 4
#define C 3

typedef struct {
    uint32_t producer;
    uint32_t seq;
    uint64_t check;
} msg_hdr_t;

static ember_pool_t *g_pool;
static ember_ch_t *g_ch;
static uint32_t g_n;
static _Atomic uint32_t *g_counts;    /* in the pool: P * g_n receipt counters */
static _Atomic uint32_t *g_fail;      /* in the pool: failure flag */
static _Atomic uint32_t *g_done;      /* in the pool: producers finished */

#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); \
                       ember_atomic_store_relaxed(g_fail, 1); } while (0)

static uint64_t check_of(uint32_t p, uint32_t s) { return ((uint64_t)p << 32 | s) * 0x9E3779B97F4A7C15ull; }

static size_t size_of(uint32_t s)
{
    static const size_t sizes[] = { 16, 24, 40, 48, 200, 16, 3000, 32 };
    return sizes[s % 8];
}

static void fill(unsigned char *b, uint32_t p, uint32_t s, size_t n)
{
    msg_hdr_t h = { p, s, check_of(p, s) };
    memcpy(b, &h, sizeof h);
    for (size_t i = sizeof h; i < n; i++)
        b[i] = (unsigned char)(s + i);
}

static void producer(uint32_t p)
{
    unsigned char buf[4096];
    for (uint32_t s = 0; s < g_n && !ember_atomic_load_relaxed(g_fail); s++) {
        size_t n = size_of(s);
        ember_rc_t rc;
        if (n == 3000 && s % 16 == 6) {              /* zero-copy handover */
            ember_alloc_t a;
            while ((rc = ember_pool_alloc(g_pool, n, &a)) == EMBER_ERR_EXHAUSTED)
                usleep(100);
            if (rc != EMBER_OK) { FAIL("alloc: %s", ember_rc_str(rc)); return; }
            fill(ember_pool_ptr(g_pool, a.offset), p, s, n);
            rc = ember_ch_send_alloc(g_ch, &a, -1);
            if (rc != EMBER_OK) { FAIL("send_alloc: %s", ember_rc_str(rc)); return; }
            continue;
        }
        fill(buf, p, s, n);
        if (s % 5 == 0) {                            /* try-once with retries */
            while ((rc = ember_ch_send(g_ch, buf, n, 0)) == EMBER_ERR_FULL)
                ember_cpu_relax();
        } else {
            rc = ember_ch_send(g_ch, buf, n, 2000000000ll);
        }
        if (rc != EMBER_OK) { FAIL("send p%u s%u: %s", p, s, ember_rc_str(rc)); return; }
    }
    if (ember_atomic_add_seq_cst(g_done, 1) + 1 == P) {
        ember_ch_close(g_ch);                        /* the last one ends the stream */
        unsigned char one = 0;
        if (ember_ch_send(g_ch, &one, 1, 0) != EMBER_ERR_CLOSED)
            FAIL("send after close did not return EMBER_ERR_CLOSED");
    }
}

static void verify(const unsigned char *b, size_t n, uint32_t *last)
{
    msg_hdr_t h;
    if (n < sizeof h) { FAIL("short message %zu", n); return; }
    memcpy(&h, b, sizeof h);
    if (h.producer >= P || h.seq >= g_n || h.check != check_of(h.producer, h.seq) || n != size_of(h.seq)) {
        FAIL("corrupt message p%u s%u n%zu", h.producer, h.seq, n);
        return;
    }
    for (size_t i = sizeof h; i < n; i++)
        if (b[i] != (unsigned char)(h.seq + i)) { FAIL("corrupt payload p%u s%u", h.producer, h.seq); return; }
    if (last[h.producer] != UINT32_MAX && h.seq <= last[h.producer])
        FAIL("FIFO violated for producer %u: %u after %u", h.producer, h.seq, last[h.producer]);
    last[h.producer] = h.seq;
    ember_atomic_add_relaxed(&g_counts[(size_t)h.producer * g_n + h.seq], 1);
}

static void consumer(uint32_t c)
{
    static _Thread_local unsigned char buf[4096];
    uint32_t last[P];
    for (int i = 0; i < P; i++)
        last[i] = UINT32_MAX;
    for (uint64_t k = 0;; k++) {
        if (ember_atomic_load_relaxed(g_fail))
            return;
        ember_rc_t rc;
        if ((k + c) % 3 == 0) {                       /* two-phase / zero-copy */
            ember_ch_msg_t m;
            rc = ember_ch_recv_begin(g_ch, 20000000ll, -1, &m);
            if (rc == EMBER_OK) {
                verify(m.data, m.len, last);
                if (m.is_alloc && k % 2) {
                    ember_ch_recv_take(g_ch, &m);
                    ember_pool_free(g_pool, &m.alloc);
                } else {
                    ember_ch_recv_end(g_ch, &m);
                }
            }
        } else if ((k + c) % 3 == 1) {
            uint8_t ready = 0;
            size_t nr = 0;
            rc = ember_ch_wait_any(&g_ch, 1, 0, 20000000ll, &ready, &nr);
            if (rc == EMBER_OK) {
                uint64_t n = 0;
                rc = ember_ch_recv(g_ch, buf, sizeof buf, &n, 0);
                if (rc == EMBER_OK)
                    verify(buf, n, last);
            }
        } else {
            uint64_t n = 0;
            rc = ember_ch_recv(g_ch, buf, sizeof buf, &n, 20000000ll);
            if (rc == EMBER_OK)
                verify(buf, n, last);
        }
        if (rc == EMBER_OK)
            continue;
        if (rc == EMBER_ERR_CLOSED)                  /* closed and drained */
            return;
        if (rc != EMBER_ERR_EMPTY && rc != EMBER_ERR_TIMEOUT && rc != EMBER_ERR_INTERRUPTED) {
            FAIL("recv: %s", ember_rc_str(rc));
            return;
        }
    }
}

static void *producer_thread(void *arg) { producer((uint32_t)(uintptr_t)arg); return NULL; }
static void *consumer_thread(void *arg) { consumer((uint32_t)(uintptr_t)arg); return NULL; }

int main(int argc, char **argv)
{
    int procs = argc > 1 && strcmp(argv[1], "procs") == 0;
    g_n = argc > 2 ? (uint32_t)atoi(argv[2]) : 20000;
    char tag[32];
    owner_tag(tag, sizeof tag);
    ember_rc_t rc = ember_pool_create(64u << 20, (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20),
                                      tag, "stress", &g_pool);
    if (rc != EMBER_OK) { fprintf(stderr, "pool_create: %s\n", ember_rc_str(rc)); return 2; }
    ember_alloc_t table;
    rc = ember_pool_alloc(g_pool, (uint64_t)P * g_n * 4 + 128, &table);
    if (rc != EMBER_OK) { fprintf(stderr, "alloc table: %s\n", ember_rc_str(rc)); ember_pool_destroy(g_pool); return 2; }
    unsigned char *t = ember_pool_ptr(g_pool, table.offset);
    memset(t, 0, (size_t)P * g_n * 4 + 128);
    g_fail = (_Atomic uint32_t *)t;
    g_done = (_Atomic uint32_t *)(t + 64);
    g_counts = (_Atomic uint32_t *)(t + 128);
    rc = ember_ch_create(g_pool, 1, 64, 64, &g_ch);
    if (rc != EMBER_OK) { fprintf(stderr, "ch_create: %s\n", ember_rc_str(rc)); ember_pool_destroy(g_pool); return 2; }

    if (procs) {
        pid_t pids[P + C];
        for (int i = 0; i < P + C; i++) {
            pids[i] = fork();
            if (pids[i] == 0) {
                if (i < P)
                    producer((uint32_t)i);
                else
                    consumer((uint32_t)(i - P));
                _exit(0);
            }
        }
        for (int i = 0; i < P + C; i++) {
            int st = 0;
            waitpid(pids[i], &st, 0);
            if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "child %d exited with status 0x%x\n", i, st);
                ember_atomic_store_relaxed(g_fail, 1);
            }
        }
    } else {
        pthread_t th[P + C];
        for (int i = 0; i < P + C; i++)
            pthread_create(&th[i], NULL, i < P ? producer_thread : consumer_thread,
                           (void *)(uintptr_t)(i < P ? i : i - P));
        for (int i = 0; i < P + C; i++)
            pthread_join(th[i], NULL);
    }
    int ok = !ember_atomic_load_relaxed(g_fail);
    uint64_t missing = 0, dup = 0;
    for (size_t i = 0; i < (size_t)P * g_n; i++) {
        uint32_t c = ember_atomic_load_relaxed(&g_counts[i]);
        missing += c == 0;
        dup += c > 1;
    }
    if (missing || dup) {
        fprintf(stderr, "missing %llu, duplicated %llu\n", (unsigned long long)missing, (unsigned long long)dup);
        ok = 0;
    }
    ember_pool_stats_t st;
    ember_pool_stats(g_pool, &st);
    if (st.live_allocs != 2) {                  /* the table and the channel */
        fprintf(stderr, "live allocations left: %llu (expected 2)\n", (unsigned long long)st.live_allocs);
        ok = 0;
    }
    ember_ch_destroy(g_ch);
    ember_pool_free(g_pool, &table);
    ember_pool_destroy(g_pool);
    printf("%s: %s %u producers x %u messages, %u consumers\n", ok ? "ok" : "FAILED",
           procs ? "processes" : "threads", P, g_n, C);
    return ok ? 0 : 1;
}
