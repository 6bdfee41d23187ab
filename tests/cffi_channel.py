"""cffi builder for the channel C API tests: compiles pool.c + channel.c
(with the project's warning flags) into an extension module in a temporary
directory and loads it.

    from cffi_channel import build
    ffi, lib = build("/tmp/somewhere")

Extra compile flags (e.g. sanitizers) can be passed with ``extra_cflags``.
"""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INC = [os.path.join(ROOT, "ember", d) for d in ("common_c", "pools_c", "channels_c")]
SOURCES = [os.path.join(ROOT, "ember", "pools_c", "pool.c"),
           os.path.join(ROOT, "ember", "channels_c", "channel.c")]
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE"]

CDEF = r"""
typedef enum {
    EMBER_OK = 0, EMBER_ERR_INVALID_ARG = 1, EMBER_ERR_NOMEM = 2, EMBER_ERR_OS = 3,
    EMBER_ERR_NOT_FOUND = 4, EMBER_ERR_BAD_DESCRIPTOR = 5, EMBER_ERR_BAD_MAGIC = 6,
    EMBER_ERR_VERSION = 7, EMBER_ERR_OUT_OF_RANGE = 8, EMBER_ERR_EXHAUSTED = 9,
    EMBER_ERR_DOUBLE_FREE = 10, EMBER_ERR_STALE = 11, EMBER_ERR_CORRUPT = 12,
    EMBER_ERR_FULL = 13, EMBER_ERR_EMPTY = 14, EMBER_ERR_TIMEOUT = 15,
    EMBER_ERR_TOO_BIG = 16, EMBER_ERR_DESTROYED = 17, EMBER_ERR_INTERRUPTED = 18,
    EMBER_ERR_BUFFER_TOO_SMALL = 19, EMBER_RC_MAX_ = 20
} ember_rc_t;

#define EMBER_CH_SDESC_SIZE ...
#define EMBER_CH_SLOT_HEADER ...
#define EMBER_POOL_SDESC_SIZE ...

typedef struct ember_pool ember_pool_t;
typedef struct { uint64_t offset; uint64_t size; uint64_t id; } ember_alloc_t;
typedef struct { uint64_t total; uint64_t free; uint64_t largest_free; uint64_t live_allocs; } ember_pool_stats_t;

ember_rc_t ember_pool_create(uint64_t size, uint64_t m_uid, const char *owner_tag,
                             const char *label, ember_pool_t **out);
ember_rc_t ember_pool_attach(const void *sdesc, size_t len, ember_pool_t **out);
ember_rc_t ember_pool_serialize(const ember_pool_t *pool, void *buf, size_t cap, size_t *len);
ember_rc_t ember_pool_detach(ember_pool_t *pool);
ember_rc_t ember_pool_destroy(ember_pool_t *pool);
ember_rc_t ember_pool_alloc(ember_pool_t *pool, uint64_t size, ember_alloc_t *out);
ember_rc_t ember_pool_free(ember_pool_t *pool, const ember_alloc_t *a);
ember_rc_t ember_pool_check(ember_pool_t *pool, const ember_alloc_t *a);
void *ember_pool_ptr(const ember_pool_t *pool, uint64_t offset);
ember_rc_t ember_pool_stats(ember_pool_t *pool, ember_pool_stats_t *out);
uint64_t ember_pool_size(const ember_pool_t *pool);

typedef struct ember_ch ember_ch_t;
typedef struct {
    const void *data; uint64_t len; int is_alloc; ember_alloc_t alloc;
    uint64_t pos_; void *slot_;
} ember_ch_msg_t;

ember_rc_t ember_ch_create(ember_pool_t *pool, uint64_t c_uid, uint32_t capacity,
                           uint32_t block_size, ember_ch_t **out);
ember_rc_t ember_ch_sdesc_pool(const void *sdesc, size_t len,
                               const uint8_t **pool_sdesc, size_t *pool_sdesc_len);
ember_rc_t ember_ch_attach(ember_pool_t *pool, const void *sdesc, size_t len, ember_ch_t **out);
ember_rc_t ember_ch_serialize(const ember_ch_t *ch, void *buf, size_t cap, size_t *len);
ember_rc_t ember_ch_detach(ember_ch_t *ch);
ember_rc_t ember_ch_destroy(ember_ch_t *ch);
ember_rc_t ember_ch_send(ember_ch_t *ch, const void *data, uint64_t len, int64_t timeout_ns);
ember_rc_t ember_ch_send_alloc(ember_ch_t *ch, const ember_alloc_t *a, int64_t timeout_ns);
ember_rc_t ember_ch_recv_begin(ember_ch_t *ch, int64_t timeout_ns, int64_t max_len,
                               ember_ch_msg_t *msg);
ember_rc_t ember_ch_recv_end(ember_ch_t *ch, ember_ch_msg_t *msg);
ember_rc_t ember_ch_recv_take(ember_ch_t *ch, ember_ch_msg_t *msg);
ember_rc_t ember_ch_recv(ember_ch_t *ch, void *buf, uint64_t cap, uint64_t *len,
                         int64_t timeout_ns);
ember_rc_t ember_ch_poll(ember_ch_t *ch, int writable, int64_t timeout_ns);
ember_rc_t ember_ch_wait_any(ember_ch_t *const *chs, size_t n, int writable,
                             int64_t timeout_ns, uint8_t *ready, size_t *nready);
uint64_t ember_ch_count(const ember_ch_t *ch);
uint32_t ember_ch_capacity(const ember_ch_t *ch);
uint32_t ember_ch_block_size(const ember_ch_t *ch);
uint32_t ember_ch_payload_size(const ember_ch_t *ch);
uint64_t ember_ch_c_uid(const ember_ch_t *ch);
ember_pool_t *ember_ch_pool(const ember_ch_t *ch);
const ember_alloc_t *ember_ch_alloc(const ember_ch_t *ch);
void ember_ch_set_spin(ember_ch_t *ch, int64_t spin_ns);
"""


def build(tmpdir, modname="_ember_ch_cffi", extra_cflags=()):
    """Compile the module into ``tmpdir`` (once per directory) and return (ffi, lib)."""
    from cffi import FFI

    so = [f for f in os.listdir(tmpdir) if f.startswith(modname) and f.endswith(".so")] \
        if os.path.isdir(tmpdir) else []
    if not so:
        ffi = FFI()
        ffi.cdef(CDEF)
        ffi.set_source(
            modname,
            '#include "pool.h"\n#include "channel.h"\n',
            sources=SOURCES,
            include_dirs=INC,
            extra_compile_args=CFLAGS + list(extra_cflags),
            extra_link_args=list(extra_cflags),
            libraries=["rt", "pthread"],
        )
        ffi.compile(tmpdir=str(tmpdir), verbose=False)
        so = [f for f in os.listdir(tmpdir) if f.startswith(modname) and f.endswith(".so")]
    spec = importlib.util.spec_from_file_location(modname, os.path.join(str(tmpdir), so[0]))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules.setdefault(modname, mod)
    return mod.ffi, mod.lib


if __name__ == "__main__":
    import tempfile
    d = tempfile.mkdtemp(prefix="ember-cffi-")
    ffi, lib = build(d)
    print("built into", d, lib.EMBER_CH_SDESC_SIZE)
