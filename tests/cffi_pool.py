"""Build a cffi module straight from ember/pools_c/pool.c (no Cython), so the
tests can drive the C API on its own, misuse included.

``build(tmpdir, extra_cdef="", extra_source="")`` compiles pool.c with the
project's flags into ``tmpdir`` and returns the imported module (``.ffi``,
``.lib``).  ``extra_*`` let a caller add small C helpers (the benchmark's C
loop uses it).
"""
import importlib.util
import os
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOLS = os.path.join(ROOT, "ember", "pools_c")
COMMON = os.path.join(ROOT, "ember", "common_c")

CDEF = """
typedef enum {
    EMBER_OK = 0, EMBER_ERR_INVALID_ARG = 1, EMBER_ERR_NOMEM = 2, EMBER_ERR_OS = 3,
    EMBER_ERR_NOT_FOUND = 4, EMBER_ERR_BAD_DESCRIPTOR = 5, EMBER_ERR_BAD_MAGIC = 6,
    EMBER_ERR_VERSION = 7, EMBER_ERR_OUT_OF_RANGE = 8, EMBER_ERR_EXHAUSTED = 9,
    EMBER_ERR_DOUBLE_FREE = 10, EMBER_ERR_STALE = 11, EMBER_ERR_CORRUPT = 12,
    EMBER_ERR_FULL = 13, EMBER_ERR_EMPTY = 14, EMBER_ERR_TIMEOUT = 15,
    EMBER_ERR_TOO_BIG = 16, EMBER_ERR_DESTROYED = 17, EMBER_ERR_INTERRUPTED = 18,
    EMBER_ERR_BUFFER_TOO_SMALL = 19, EMBER_RC_MAX_ = 20
} ember_rc_t;

#define EMBER_POOL_ALIGN ...
#define EMBER_POOL_NAME_MAX ...
#define EMBER_POOL_LABEL_MAX ...
#define EMBER_POOL_SDESC_SIZE ...
#define EMBER_ALLOC_SDESC_SIZE ...

typedef struct ember_pool ember_pool_t;
typedef struct { uint64_t offset; uint64_t size; uint64_t id; } ember_alloc_t;
typedef struct { uint64_t total; uint64_t free; uint64_t largest_free; uint64_t live_allocs; }
    ember_pool_stats_t;

const char *ember_rc_str(int rc);
ember_rc_t ember_pool_create(uint64_t size, uint64_t m_uid, const char *owner_tag,
                             const char *label, ember_pool_t **out);
ember_rc_t ember_pool_attach(const void *sdesc, size_t len, ember_pool_t **out);
ember_rc_t ember_pool_serialize(const ember_pool_t *pool, void *buf, size_t cap, size_t *len);
ember_rc_t ember_pool_detach(ember_pool_t *pool);
ember_rc_t ember_pool_destroy(ember_pool_t *pool);
ember_rc_t ember_pool_unlink_name(const char *shm_name);
ember_rc_t ember_pool_alloc(ember_pool_t *pool, uint64_t size, ember_alloc_t *out);
ember_rc_t ember_pool_alloc_wait(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                                 ember_alloc_t *out);
ember_rc_t ember_pool_free(ember_pool_t *pool, const ember_alloc_t *a);
ember_rc_t ember_pool_check(ember_pool_t *pool, const ember_alloc_t *a);
void *ember_pool_ptr(const ember_pool_t *pool, uint64_t offset);
ember_rc_t ember_pool_stats(ember_pool_t *pool, ember_pool_stats_t *out);
uint64_t ember_pool_m_uid(const ember_pool_t *pool);
uint64_t ember_pool_size(const ember_pool_t *pool);
const char *ember_pool_shm_name(const ember_pool_t *pool);
const char *ember_pool_label(const ember_pool_t *pool);
ember_rc_t ember_alloc_serialize(const ember_pool_t *pool, const ember_alloc_t *a,
                                 void *buf, size_t cap, size_t *len);
ember_rc_t ember_alloc_parse(const void *sdesc, size_t len,
                             const uint8_t **pool_sdesc, size_t *pool_sdesc_len,
                             ember_alloc_t *out);
ember_rc_t ember_pool_sdesc_name(const void *sdesc, size_t len, char *buf, size_t cap);
ember_rc_t ember_pool_validate(ember_pool_t *pool);
ember_rc_t ember_pool_next_alloc(ember_pool_t *pool, uint64_t *cursor, ember_alloc_t *out);
uint64_t ember_pool_repair_count(ember_pool_t *pool);

/* the event-word accessors return _Atomic pointers, which cffi cannot
 * declare; expose their addresses as integers */
uintptr_t test_event_word(const ember_pool_t *pool);
uintptr_t test_event_waiters(const ember_pool_t *pool);
"""

SOURCE = """
#include "pool.h"
uintptr_t test_event_word(const ember_pool_t *pool)
{ return (uintptr_t)(void *)ember_pool_event_word(pool); }
uintptr_t test_event_waiters(const ember_pool_t *pool)
{ return (uintptr_t)(void *)ember_pool_event_waiters(pool); }
"""

CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE"]


def build(tmpdir, extra_cdef="", extra_source="", name=None):
    """Compile pool.c (+ extras) with cffi into ``tmpdir``; return the module."""
    import cffi

    name = name or f"_ember_pool_cffi_{uuid.uuid4().hex[:8]}"
    ffi = cffi.FFI()
    ffi.cdef(CDEF + extra_cdef)
    ffi.set_source(
        name,
        SOURCE + extra_source,
        sources=[os.path.join(POOLS, "pool.c")],
        include_dirs=[POOLS, COMMON],
        extra_compile_args=CFLAGS,
        libraries=["rt", "pthread"],
    )
    tmpdir = str(tmpdir)
    path = ffi.compile(tmpdir=tmpdir, verbose=False)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod
    return mod
