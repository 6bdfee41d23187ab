/*
 * pooldict_stress.c -- sync_c/pooldict.c against a reference model, built
 * with AddressSanitizer + UndefinedBehaviorSanitizer by
 * tests/test_pooldict_capi.py:
 *
 *   model N   N random set / set-if-new / get / delete / clear / snapshot
 *             operations on a small table (many collisions, tombstones,
 *             a full table), each checked against a plain array;
 *   garbage N N rounds of random bytes written over slot headers and
 *             entries, then random operations: any return code is fine,
 *             but nothing may read or write outside the table (the table
 *             is malloc()ed to its exact size, so ASan sees an overrun).
 *
 * Prints "ok: ..." and exits 0, or prints what differed and exits 1.
 */
#include "pooldict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CAP 32u
#define SSZ 64u
#define NKEYS 40u                  /* more keys than fit: ERR_FULL happens */
#define MAXV 40u                   /* key 1+4, value 1+40: 46 <= 48 */

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

typedef struct {
    int present;
    uint32_t len;
    uint8_t val[MAXV];
} model_t;

static int fail(const char *what, uint32_t key, int rc)
{
    printf("FAIL: %s (key %u, rc %d)\n", what, key, rc);
    return 1;
}

static int run_model(uint8_t *mem, long n)
{
    model_t m[NKEYS];
    memset(m, 0, sizeof m);
    uint32_t count = 0;
    for (long i = 0; i < n; i++) {
        uint32_t k = rnd(NKEYS), op = rnd(100);
        uint8_t buf[SSZ];
        uint32_t vl = 0;
        if (op < 40) {                               /* set, or set-if-new */
            int only_new = op < 8, existed = 0;
            uint32_t len = rnd(MAXV + 1);
            uint8_t v[MAXV];
            for (uint32_t j = 0; j < len; j++)
                v[j] = (uint8_t)rnd(256);
            ember_rc_t rc = ember_pdict_set(mem, 'i', &k, 4, 'b', v, len, only_new, &existed);
            if (rc == EMBER_ERR_FULL) {
                if (m[k].present || count < CAP * 3 / 4)
                    return fail("full while it should not be", k, rc);
                continue;
            }
            if (rc != EMBER_OK)
                return fail("set", k, rc);
            if (existed != (only_new && m[k].present))
                return fail("set: existed", k, existed);
            if (only_new && m[k].present)
                continue;
            count += !m[k].present;
            m[k].present = 1;
            m[k].len = len;
            memcpy(m[k].val, v, len);
        } else if (op < 75) {                        /* get */
            uint32_t small = rnd(4) == 0 ? rnd(8) : SSZ;
            ember_rc_t rc = ember_pdict_get(mem, 'i', &k, 4, buf, small, &vl);
            if (!m[k].present) {
                if (rc != EMBER_ERR_NOT_FOUND)
                    return fail("get of an absent key", k, rc);
            } else if (m[k].len + 1 > small) {
                if (rc != EMBER_ERR_BUFFER_TOO_SMALL || vl != m[k].len + 1)
                    return fail("get into a small buffer", k, rc);
            } else if (rc != EMBER_OK || vl != m[k].len + 1 || buf[0] != 'b'
                       || memcmp(buf + 1, m[k].val, m[k].len) != 0) {
                return fail("get", k, rc);
            }
            if (ember_pdict_contains(mem, 'i', &k, 4) != m[k].present)
                return fail("contains", k, 0);
        } else if (op < 97) {                        /* delete */
            ember_rc_t rc = ember_pdict_delete(mem, 'i', &k, 4);
            if (rc != (m[k].present ? EMBER_OK : EMBER_ERR_NOT_FOUND))
                return fail("delete", k, rc);
            count -= m[k].present;
            m[k].present = 0;
        } else if (op < 98) {                        /* clear */
            ember_pdict_clear(mem);
            memset(m, 0, sizeof m);
            count = 0;
        } else {                                     /* snapshot */
            uint8_t *out = NULL;
            size_t outlen = 0;
            uint32_t got = 0, torn = 0;
            if (ember_pdict_snapshot(mem, &out, &outlen, &got, &torn) != EMBER_OK
                || got != count || torn != 0)
                return fail("snapshot", got, (int)torn);
            free(out);
        }
        if (ember_pdict_len(mem) != count)
            return fail("len", count, (int)ember_pdict_len(mem));
        if (i % 997 == 0) {
            ember_pdict_recount(mem);
            if (ember_pdict_len(mem) != count)
                return fail("recount", count, (int)ember_pdict_len(mem));
        }
    }
    return 0;
}

static void run_garbage(uint8_t *mem, long n)
{
    size_t size = ember_pdict_size(CAP, SSZ);
    for (long i = 0; i < n; i++) {
        for (int j = 0; j < 8; j++) {                /* scribble over slots, never the header */
            size_t off = EMBER_PDICT_HEADER + rnd((uint32_t)(size - EMBER_PDICT_HEADER));
            mem[off] = (uint8_t)(rnd(4) ? rnd(4) : rnd(256));
        }
        for (int j = 0; j < 16; j++) {
            uint32_t k = rnd(NKEYS), vl = 0;
            uint8_t buf[SSZ], v[MAXV] = {0};
            int existed = 0;
            switch (rnd(5)) {
            case 0: ember_pdict_set(mem, 'i', &k, 4, 'b', v, rnd(MAXV + 1), rnd(2), &existed); break;
            case 1: ember_pdict_get(mem, 'i', &k, 4, buf, sizeof buf, &vl); break;
            case 2: ember_pdict_delete(mem, 'i', &k, 4); break;
            case 3: ember_pdict_contains(mem, 'i', &k, 4); break;
            default: {
                uint8_t *out = NULL;
                size_t outlen = 0;
                uint32_t got = 0, torn = 0;
                ember_pdict_snapshot(mem, &out, &outlen, &got, &torn);
                free(out);
            }
            }
        }
        if (i % 50 == 0) {
            ember_pdict_recount(mem);
            if (rnd(4) == 0)
                ember_pdict_clear(mem);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s model|garbage N\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]);
    size_t size = ember_pdict_size(CAP, SSZ);
    uint8_t *mem = malloc(size);                    /* exact size: ASan sees any overrun */
    if (!mem || ember_pdict_init(mem, size, CAP, SSZ) != EMBER_OK) {
        printf("FAIL: init\n");
        return 1;
    }
    if (strcmp(argv[1], "model") == 0) {
        if (run_model(mem, n))
            return 1;
    } else {
        run_garbage(mem, n);
    }
    free(mem);
    printf("ok: %s %ld\n", argv[1], n);
    return 0;
}
