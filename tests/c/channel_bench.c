/*
 * channel_bench.c -- the channel C API alone, between two processes
 * (benchmarks/bench_channels.py builds and runs it).
 *
 *   channel_bench [n_msgs] [rtt_iters]
 *
 * Prints one line per measurement, "name value unit":
 *   c_throughput_64B <msgs/s>
 *   c_rtt_median_ns <ns> / c_rtt_p99_ns <ns>
 */
#include "channel.h"
#include "owner_tag.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 5000000;
    long iters = argc > 2 ? atol(argv[2]) : 200000;
    char tag[32];
    owner_tag(tag, sizeof tag);
    ember_pool_t *pool;
    ember_rc_t rc = ember_pool_create(64u << 20, ((uint64_t)getpid() << 24) ^ (uint64_t)now_ns(), tag,
                                      "bench", &pool);
    if (rc != EMBER_OK) { fprintf(stderr, "pool: %s\n", ember_rc_str(rc)); return 1; }
    ember_ch_t *ch, *back;
    if (ember_ch_create(pool, 1, 1024, 128, &ch) || ember_ch_create(pool, 2, 1024, 128, &back)) {
        fprintf(stderr, "channel create failed\n");
        ember_pool_destroy(pool);
        return 1;
    }
    char msg[64];
    memset(msg, 'x', sizeof msg);

    /* throughput: child sends n, parent receives n */
    pid_t pid = fork();
    if (pid == 0) {
        char go[8];
        uint64_t len;
        ember_ch_recv(back, go, sizeof go, &len, -1);
        for (long i = 0; i < n; i++)
            ember_ch_send(ch, msg, sizeof msg, -1);
        _exit(0);
    }
    char buf[128];
    uint64_t len;
    int64_t t0 = now_ns();
    ember_ch_send(back, "go", 2, -1);
    for (long i = 0; i < n; i++)
        ember_ch_recv(ch, buf, sizeof buf, &len, -1);
    int64_t t1 = now_ns();
    waitpid(pid, NULL, 0);
    printf("c_throughput_64B %.0f msg/s\n", n / ((t1 - t0) / 1e9));

    /* round trip: child echoes */
    pid = fork();
    if (pid == 0) {
        for (long i = 0; i < iters + 1000; i++) {
            ember_ch_recv(ch, buf, sizeof buf, &len, -1);
            ember_ch_send(back, buf, len, -1);
        }
        _exit(0);
    }
    int64_t *lat = malloc(sizeof(int64_t) * (size_t)iters);
    for (long i = 0; i < iters + 1000; i++) {
        int64_t a = now_ns();
        ember_ch_send(ch, msg, sizeof msg, -1);
        ember_ch_recv(back, buf, sizeof buf, &len, -1);
        if (i >= 1000)
            lat[i - 1000] = now_ns() - a;
    }
    waitpid(pid, NULL, 0);
    qsort(lat, (size_t)iters, sizeof *lat, cmp64);
    printf("c_rtt_median_ns %lld ns\n", (long long)lat[iters / 2]);
    printf("c_rtt_p99_ns %lld ns\n", (long long)lat[iters * 99 / 100]);
    free(lat);
    ember_ch_destroy(ch);
    ember_ch_destroy(back);
    ember_pool_destroy(pool);
    return 0;
}
