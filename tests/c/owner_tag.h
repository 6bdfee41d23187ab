/*
 * owner_tag.h -- the owner tag the C test programs give their pools:
 * "p<pid>", plus the test worker's EMBER_SEGMENT_TAG when set (test
 * isolation, see tests/conftest.py).
 */
#ifndef EMBER_TEST_OWNER_TAG_H
#define EMBER_TEST_OWNER_TAG_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static inline void owner_tag(char *buf, size_t cap)
{
    const char *extra = getenv("EMBER_SEGMENT_TAG");
    if (extra && *extra)
        snprintf(buf, cap, "p%d-%.8s", (int)getpid(), extra);
    else
        snprintf(buf, cap, "p%d", (int)getpid());
}

#endif /* EMBER_TEST_OWNER_TAG_H */
