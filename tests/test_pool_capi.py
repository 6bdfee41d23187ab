"""The pool C API on its own, driven through cffi (pool.c compiled by
tests/cffi_build.py), including deliberate misuse that must return error
codes and never crash."""
import os
import random
import re
import stat
import struct
import threading
import time

import pytest

import cffi_build
from procs import kill, once_sleeping_on_shm

HDR = 4096          # pool header page (heap offset)
BLK = 64            # block header


@pytest.fixture(scope="session")
def capi(tmp_path_factory):
    pytest.importorskip("cffi")
    return cffi_build.build_pool(tmp_path_factory.mktemp("cffi_pool"))


@pytest.fixture
def ffi(capi):
    return capi.ffi


@pytest.fixture
def lib(capi):
    return capi.lib


def _uid():
    return random.getrandbits(63) | 1


class CPool:
    """Tiny helper around an ember_pool_t * for the tests."""

    def __init__(self, capi, size, label=None, m_uid=None, owner=None):
        self.ffi, self.lib = capi.ffi, capi.lib
        pp = self.ffi.new("ember_pool_t **")
        self.m_uid = m_uid if m_uid is not None else _uid()
        owner = owner or f"p{os.getpid()}"
        rc = self.lib.ember_pool_create(size, self.m_uid, owner.encode(),
                                        label.encode() if label else self.ffi.NULL, pp)
        assert rc == self.lib.EMBER_OK, self.rcname(rc)
        self.p = pp[0]

    def rcname(self, rc):
        return self.ffi.string(self.lib.ember_rc_str(rc)).decode()

    def alloc(self, n):
        a = self.ffi.new("ember_alloc_t *")
        rc = self.lib.ember_pool_alloc(self.p, n, a)
        return rc, a

    def must_alloc(self, n):
        rc, a = self.alloc(n)
        assert rc == self.lib.EMBER_OK, self.rcname(rc)
        return a

    def free(self, a):
        return self.lib.ember_pool_free(self.p, a)

    def stats(self):
        st = self.ffi.new("ember_pool_stats_t *")
        assert self.lib.ember_pool_stats(self.p, st) == 0
        return st.total, st.free, st.largest_free, st.live_allocs

    def sdesc(self):
        buf = self.ffi.new("uint8_t[]", self.lib.EMBER_POOL_SDESC_SIZE)
        n = self.ffi.new("size_t *")
        assert self.lib.ember_pool_serialize(self.p, buf, len(buf), n) == 0
        return bytes(self.ffi.buffer(buf, n[0]))

    def alloc_sdesc(self, a):
        buf = self.ffi.new("uint8_t[]", self.lib.EMBER_ALLOC_SDESC_SIZE)
        n = self.ffi.new("size_t *")
        assert self.lib.ember_alloc_serialize(self.p, a, buf, len(buf), n) == 0
        return bytes(self.ffi.buffer(buf, n[0]))

    def validate(self):
        return self.lib.ember_pool_validate(self.p)

    def name(self):
        return self.ffi.string(self.lib.ember_pool_shm_name(self.p)).decode()

    def destroy(self):
        assert self.lib.ember_pool_destroy(self.p) == 0
        self.p = None


@pytest.fixture
def mkpool(capi):
    made = []

    def make(size, **kw):
        p = CPool(capi, size, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        if p.p is not None:
            p.destroy()


def _attach(ffi, lib, sdesc):
    pp = ffi.new("ember_pool_t **")
    rc = lib.ember_pool_attach(sdesc, len(sdesc), pp)
    return rc, pp[0]


def _fnv64(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _pool_sdesc(m_uid, size, name, magic=0x50424D45, version=1):
    body = struct.pack("<IHHQQ64s", magic, version, 96, m_uid, size, name.encode())
    return body + struct.pack("<Q", _fnv64(body))


# ------------------------------------------------------------------ create

def test_capi_create_names_mode_sparse(mkpool, ffi, lib):
    p = mkpool(1 << 30, label="big")
    name = p.name()
    assert re.match(rf"^/ember\.p{os.getpid()}\.{p.m_uid:016x}\.[0-9a-f]{{12}}$", name)
    st = os.stat("/dev/shm" + name)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == 1 << 30
    assert st.st_blocks * 512 <= 64 * 1024           # sparse: header page + first block
    assert ffi.string(lib.ember_pool_label(p.p)) == b"big"
    assert lib.ember_pool_m_uid(p.p) == p.m_uid
    assert lib.ember_pool_size(p.p) == 1 << 30
    total, free, largest, live = p.stats()
    assert (total, free, largest, live) == ((1 << 30) - HDR, (1 << 30) - HDR, (1 << 30) - HDR - BLK, 0)
    assert p.validate() == lib.EMBER_OK


def test_capi_create_touches_only_the_header(mkpool):
    """Why a create is fast whatever the size (the benchmark has the
    figure; no timing here): a 1 GiB pool commits its header page and first
    block header, nothing of the heap."""
    p = mkpool(1 << 30)
    st = os.stat("/dev/shm" + p.name())
    assert st.st_size == 1 << 30 and st.st_blocks * 512 <= 64 * 1024


def test_capi_create_misuse(capi, ffi, lib, mkpool):
    pp = ffi.new("ember_pool_t **")
    for tag in [b"", b"a" * 25, b"a.b", b"a/b", b"sp ace"]:
        assert lib.ember_pool_create(1 << 16, 1, tag, ffi.NULL, pp) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_create(0, 1, b"p1", ffi.NULL, pp) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_create(1 << 60, 1, b"p1", ffi.NULL, pp) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_create(1 << 16, 1, b"p1", ffi.NULL, ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    p = mkpool(1 << 16)
    import errno
    # the same m_uid again: another segment (the name has a random part)
    rc = lib.ember_pool_create(1 << 16, p.m_uid, f"p{os.getpid()}".encode(), ffi.NULL, pp)
    assert rc == lib.EMBER_OK
    q_name = ffi.string(lib.ember_pool_shm_name(pp[0])).decode()
    assert q_name != p.name() and q_name.startswith(p.name()[:-12])
    assert lib.ember_pool_destroy(pp[0]) == lib.EMBER_OK
    # more than /dev/shm has free: refused, nothing left behind
    st = os.statvfs("/dev/shm")
    too_big = min(st.f_bavail * st.f_frsize + (1 << 30), 1 << 47)
    mine = f"ember.p{os.getpid()}."         # the other xdist worker makes segments meanwhile
    before = {n for n in os.listdir("/dev/shm") if n.startswith(mine)}
    rc = lib.ember_pool_create(too_big, 7, f"p{os.getpid()}".encode(), ffi.NULL, pp)
    assert rc == lib.EMBER_ERR_OS and ffi.errno == errno.ENOSPC
    assert {n for n in os.listdir("/dev/shm") if n.startswith(mine)} <= before
    assert lib.ember_pool_create_ex(1 << 16, 1, b"p1", ffi.NULL, 2, pp) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_detach(ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_destroy(ffi.NULL) == lib.EMBER_ERR_INVALID_ARG


def test_capi_small_pool_rounds_up(mkpool):
    p = mkpool(1)
    total, free, largest, live = p.stats()
    assert total >= 4096 and largest == total - BLK


def test_capi_label_truncated(mkpool, ffi, lib):
    p = mkpool(1 << 16, label="x" * 100)
    assert ffi.string(lib.ember_pool_label(p.p)) == b"x" * 47


# ------------------------------------------------------------------ alloc / free

def test_capi_200_4k_in_1mib(mkpool, lib):
    p = mkpool(1 << 20)
    allocs = [p.must_alloc(4096) for _ in range(200)]
    offs = sorted(a.offset for a in allocs)
    assert all(o % 64 == 0 for o in offs)
    assert all(b - a >= 4096 for a, b in zip(offs, offs[1:]))
    assert len({a.id for a in allocs}) == 200 and all(a.id for a in allocs)
    assert p.stats()[3] == 200
    assert p.validate() == lib.EMBER_OK
    for a in allocs:
        assert p.free(a) == lib.EMBER_OK
    total, free, largest, live = p.stats()
    assert free == total and largest == total - BLK and live == 0


def test_capi_exhaustion_is_a_return_code(mkpool, lib):
    p = mkpool(1 << 16)
    n = 0
    while True:
        rc, a = p.alloc(1000)
        if rc != lib.EMBER_OK:
            break
        n += 1
    assert rc == lib.EMBER_ERR_EXHAUSTED
    assert n == (65536 - HDR) // (1024 + BLK)
    assert p.validate() == lib.EMBER_OK


def test_capi_alloc_zero_and_huge(mkpool, ffi, lib):
    p = mkpool(1 << 16)
    assert p.alloc(0)[0] == lib.EMBER_ERR_INVALID_ARG
    for huge in [1 << 16, (1 << 64) - 1, (1 << 63), (1 << 16) - HDR - BLK + 1]:
        assert p.alloc(huge)[0] == lib.EMBER_ERR_EXHAUSTED
    assert lib.ember_pool_alloc(ffi.NULL, 8, ffi.new("ember_alloc_t *")) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_alloc(p.p, 8, ffi.NULL) == lib.EMBER_ERR_INVALID_ARG


def test_capi_whole_heap_in_one_alloc(mkpool, lib):
    p = mkpool(1 << 20)
    total = p.stats()[0]
    a = p.must_alloc(total - BLK)
    assert p.stats()[1:] == (0, 0, 1)
    assert p.alloc(1)[0] == lib.EMBER_ERR_EXHAUSTED
    assert p.free(a) == lib.EMBER_OK
    assert p.stats()[2] == total - BLK


def test_capi_coalesce_both_neighbours(mkpool, lib):
    p = mkpool(1 << 16)
    total = p.stats()[0]
    a, b, c, d = (p.must_alloc(1000) for _ in range(4))
    for x in (a, c):
        assert p.free(x) == 0
    assert p.stats()[3] == 2
    assert p.free(b) == 0          # merges with a (before) and c (after)
    assert p.validate() == 0
    assert p.free(d) == 0          # merges with a+b+c and the tail
    assert p.stats() == (total, total, total - BLK, 0)
    assert p.validate() == 0


def test_capi_payload_is_writable_and_distinct(mkpool, ffi, lib):
    p = mkpool(1 << 20)
    allocs = [p.must_alloc(random.randint(1, 3000)) for _ in range(100)]
    for i, a in enumerate(allocs):
        ffi.memmove(lib.ember_pool_ptr(p.p, a.offset), bytes([i]) * a.size, a.size)
    for i, a in enumerate(allocs):
        assert bytes(ffi.buffer(lib.ember_pool_ptr(p.p, a.offset), a.size)) == bytes([i]) * a.size
        assert p.free(a) == 0
    assert p.validate() == 0


def test_capi_double_free_and_stale(mkpool, ffi, lib):
    p = mkpool(1 << 16)
    a = p.must_alloc(100)
    keep = p.must_alloc(100)       # so a does not merge into the tail
    old = ffi.new("ember_alloc_t *", (a.offset, a.size, a.id))
    assert p.free(a) == lib.EMBER_OK
    assert p.free(a) == lib.EMBER_ERR_DOUBLE_FREE
    assert lib.ember_pool_check(p.p, a) == lib.EMBER_ERR_DOUBLE_FREE
    b = p.must_alloc(100)          # same block again, new id
    assert b.offset == old.offset and b.id != old.id
    assert p.free(old) == lib.EMBER_ERR_STALE
    assert lib.ember_pool_check(p.p, old) == lib.EMBER_ERR_STALE
    assert lib.ember_pool_check(p.p, b) == lib.EMBER_OK
    assert p.stats()[3] == 2
    assert p.free(b) == 0 and p.free(keep) == 0
    assert p.validate() == 0


def test_capi_bad_offsets(mkpool, ffi, lib):
    p = mkpool(1 << 16)
    a = p.must_alloc(1000)
    bad = ffi.new("ember_alloc_t *", (0, 8, a.id))
    for off in [0, 64, HDR - 64, HDR, (1 << 16), (1 << 16) + 64, 1 << 62, (1 << 64) - 64]:
        bad.offset = off
        assert p.free(bad) == lib.EMBER_ERR_OUT_OF_RANGE, off
        assert lib.ember_pool_check(p.p, bad) == lib.EMBER_ERR_OUT_OF_RANGE
    for off in [a.offset + 1, a.offset + 8, a.offset - 1, a.offset + 63]:
        bad.offset = off
        assert p.free(bad) == lib.EMBER_ERR_OUT_OF_RANGE, off
    # aligned, in range, but inside a payload: no block header there
    ffi.memmove(lib.ember_pool_ptr(p.p, a.offset), b"\xa5" * a.size, a.size)
    bad.offset = a.offset + 128
    assert p.free(bad) == lib.EMBER_ERR_BAD_MAGIC
    # size larger than the block
    big = ffi.new("ember_alloc_t *", (a.offset, 100000, a.id))
    assert p.free(big) == lib.EMBER_ERR_OUT_OF_RANGE
    assert lib.ember_pool_free(p.p, ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_free(ffi.NULL, a) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_ptr(p.p, 1 << 20) == ffi.NULL
    assert p.stats()[3] == 1 and p.validate() == 0
    assert p.free(a) == 0


def test_capi_random_workload_stats(mkpool, lib):
    rng = random.Random(1234)
    p = mkpool(1 << 20)
    total = p.stats()[0]
    live = {}
    for step in range(4000):
        if live and (rng.random() < 0.45 or len(live) > 300):
            k = rng.choice(list(live))
            assert p.free(live.pop(k)) == 0
        else:
            n = rng.choice([1, 64, 65, 200, 1000, 4096, 5000, 20000, rng.randint(1, 60000)])
            rc, a = p.alloc(n)
            if rc == lib.EMBER_OK:
                assert a.offset % 64 == 0 and a.size == n
                live[a.id] = a
            else:
                assert rc == lib.EMBER_ERR_EXHAUSTED
                assert p.stats()[2] < n
        if step % 97 == 0:
            assert p.validate() == 0
            t, free, largest, nlive = p.stats()
            used = sum((x.size + 63) // 64 * 64 + 64 for x in live.values())
            assert nlive == len(live)
            assert t == total and free + used >= total - 64 * len(live)  # splits may leave <128 B tails
            assert largest <= free
    for a in live.values():
        assert p.free(a) == 0
    assert p.stats() == (total, total, total - BLK, 0)


def test_capi_next_alloc_iterates(mkpool, ffi, lib):
    p = mkpool(1 << 16)
    allocs = [p.must_alloc(n) for n in (10, 200, 3000)]
    p.free(allocs[1])
    cur = ffi.new("uint64_t *", 0)
    out = ffi.new("ember_alloc_t *")
    seen = []
    while lib.ember_pool_next_alloc(p.p, cur, out) == lib.EMBER_OK:
        seen.append((out.offset, out.size, out.id))
    assert seen == [(a.offset, a.size, a.id) for a in (allocs[0], allocs[2])]
    assert lib.ember_pool_next_alloc(p.p, cur, out) == lib.EMBER_ERR_EMPTY


# ------------------------------------------------------------------ alloc_wait

def test_capi_alloc_wait_timeout_and_wake(mkpool, ffi, lib):
    p = mkpool(1 << 16)
    total = p.stats()[0]
    whole = p.must_alloc(total - BLK)
    out = ffi.new("ember_alloc_t *")
    t = time.monotonic()
    assert lib.ember_pool_alloc_wait(p.p, 100, 50_000_000, out) == lib.EMBER_ERR_TIMEOUT
    assert time.monotonic() - t >= 0.045
    assert lib.ember_pool_alloc_wait(p.p, 100, 0, out) == lib.EMBER_ERR_EXHAUSTED
    # never fits: no wait
    assert lib.ember_pool_alloc_wait(p.p, 1 << 20, -1, out) == lib.EMBER_ERR_EXHAUSTED
    t = once_sleeping_on_shm(p.free, whole)    # in its wait (0.1 s later only hoped so) ...
    # EMBER_OK (not a timeout): woken by the free
    assert lib.ember_pool_alloc_wait(p.p, 100, 30_000_000_000, out) == lib.EMBER_OK
    t.join()
    assert p.free(out) == 0


# ------------------------------------------------------------------ descriptors

def test_capi_pool_sdesc_roundtrip(mkpool, ffi, lib):
    p = mkpool(1 << 16, label="lbl")
    sd = p.sdesc()
    assert len(sd) == lib.EMBER_POOL_SDESC_SIZE == 96
    rc, q = _attach(ffi, lib, sd)
    assert rc == lib.EMBER_OK
    assert lib.ember_pool_m_uid(q) == p.m_uid
    assert ffi.string(lib.ember_pool_shm_name(q)).decode() == p.name()
    assert ffi.string(lib.ember_pool_label(q)) == b"lbl"
    a = p.must_alloc(10)
    assert lib.ember_pool_check(q, a) == 0
    assert lib.ember_pool_free(q, a) == 0            # freed through the other handle
    assert p.free(a) == lib.EMBER_ERR_DOUBLE_FREE
    buf = ffi.new("char[64]")
    assert lib.ember_pool_sdesc_name(sd, len(sd), buf, 64) == 0
    assert ffi.string(buf).decode() == p.name()
    assert lib.ember_pool_sdesc_name(sd, len(sd), buf, 5) == lib.EMBER_ERR_BUFFER_TOO_SMALL
    small = ffi.new("uint8_t[95]")
    assert lib.ember_pool_serialize(p.p, small, 95, ffi.NULL) == lib.EMBER_ERR_BUFFER_TOO_SMALL
    _check_event_words(lib, p)
    assert lib.ember_pool_detach(q) == 0


def _check_event_words(lib, p):
    # the channel event word and its waiter count share one cache line of
    # their own in the pool header
    w1, w2 = lib.test_event_word(p.p), lib.test_event_waiters(p.p)
    assert w1 and w2 and w1 % 64 == 0 and w2 == w1 + 4


def test_capi_pool_sdesc_misuse(mkpool, ffi, lib):
    p = mkpool(1 << 16)
    sd = p.sdesc()
    for n in range(len(sd)):                          # truncated
        assert _attach(ffi, lib, sd[:n])[0] == lib.EMBER_ERR_BAD_DESCRIPTOR
    assert _attach(ffi, lib, sd + b"\0")[0] == lib.EMBER_ERR_BAD_DESCRIPTOR
    for i in range(len(sd)):                          # any corrupt byte
        bad = bytearray(sd)
        bad[i] ^= 0x5A
        assert _attach(ffi, lib, bytes(bad))[0] == lib.EMBER_ERR_BAD_DESCRIPTOR, i
    assert _attach(ffi, lib, b"\x89PNG" + sd[4:])[0] == lib.EMBER_ERR_BAD_DESCRIPTOR
    # well-formed but foreign magic / version / name (checksums recomputed)
    for fake in [_pool_sdesc(p.m_uid, 1 << 16, p.name(), magic=0x12345678),
                 _pool_sdesc(p.m_uid, 1 << 16, p.name(), version=2),
                 _pool_sdesc(p.m_uid, 1 << 16, "/etc/passwd"),
                 _pool_sdesc(p.m_uid, 1 << 16, "/ember.x/../../etc")]:
        assert _attach(ffi, lib, fake)[0] == lib.EMBER_ERR_BAD_DESCRIPTOR
    # right name, wrong m_uid / size: the segment header does not match
    assert _attach(ffi, lib, _pool_sdesc(p.m_uid ^ 1, 1 << 16, p.name()))[0] == lib.EMBER_ERR_BAD_MAGIC
    assert _attach(ffi, lib, _pool_sdesc(p.m_uid, 1 << 17, p.name()))[0] == lib.EMBER_ERR_BAD_MAGIC
    # a pool that no longer exists
    p.destroy()
    assert _attach(ffi, lib, sd)[0] == lib.EMBER_ERR_NOT_FOUND
    assert lib.ember_pool_attach(ffi.NULL, 96, ffi.new("ember_pool_t **")) == lib.EMBER_ERR_BAD_DESCRIPTOR
    assert lib.ember_pool_attach(sd, 96, ffi.NULL) == lib.EMBER_ERR_INVALID_ARG


def test_capi_attach_foreign_segment(ffi, lib):
    name = f"/ember.p{os.getpid()}.{_uid():016x}"
    path = "/dev/shm" + name
    with open(path, "wb") as f:
        f.write(os.urandom(3 * 4096))
    try:
        assert _attach(ffi, lib, _pool_sdesc(1, 3 * 4096, name))[0] == lib.EMBER_ERR_BAD_MAGIC
    finally:
        os.unlink(path)
    assert lib.ember_pool_unlink_name(name.encode()) == lib.EMBER_ERR_NOT_FOUND
    assert lib.ember_pool_unlink_name(b"/etc/passwd") == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pool_unlink_name(ffi.NULL) == lib.EMBER_ERR_INVALID_ARG


def test_capi_alloc_sdesc(mkpool, ffi, lib):
    p = mkpool(1 << 16)
    a = p.must_alloc(777)
    keep = p.must_alloc(1)
    sd = p.alloc_sdesc(a)
    assert len(sd) == lib.EMBER_ALLOC_SDESC_SIZE == 128
    psd = ffi.new("uint8_t **")
    plen = ffi.new("size_t *")
    out = ffi.new("ember_alloc_t *")
    assert lib.ember_alloc_parse(sd, len(sd), ffi.cast("const uint8_t **", psd), plen, out) == 0
    assert (out.offset, out.size, out.id) == (a.offset, a.size, a.id)
    assert bytes(ffi.buffer(psd[0], plen[0])) == p.sdesc()
    assert lib.ember_pool_check(p.p, out) == 0
    cpsd = ffi.cast("const uint8_t **", psd)
    for n in range(len(sd)):
        assert lib.ember_alloc_parse(sd[:n], n, cpsd, plen, out) == lib.EMBER_ERR_BAD_DESCRIPTOR
    for i in range(len(sd)):
        bad = bytearray(sd)
        bad[i] ^= 0x01
        assert lib.ember_alloc_parse(bytes(bad), 128, cpsd, plen, out) == lib.EMBER_ERR_BAD_DESCRIPTOR, i
    assert lib.ember_alloc_parse(p.sdesc() + b"\0" * 32, 128, cpsd, plen, out) == lib.EMBER_ERR_BAD_DESCRIPTOR
    assert lib.ember_alloc_parse(ffi.NULL, 128, cpsd, plen, out) == lib.EMBER_ERR_BAD_DESCRIPTOR
    # a descriptor that parses but is stale / freed: check says so
    assert p.free(a) == 0
    assert lib.ember_alloc_parse(sd, 128, cpsd, plen, out) == 0
    assert lib.ember_pool_check(p.p, out) == lib.EMBER_ERR_DOUBLE_FREE
    b = p.must_alloc(777)
    assert b.offset == a.offset
    assert lib.ember_pool_check(p.p, out) == lib.EMBER_ERR_STALE
    small = ffi.new("uint8_t[127]")
    assert lib.ember_alloc_serialize(p.p, b, small, 127, ffi.NULL) == lib.EMBER_ERR_BUFFER_TOO_SMALL
    p.free(b)
    p.free(keep)


# ------------------------------------------------------------------ corruption

def test_capi_corruption_detected_not_crashing(mkpool, ffi, lib):
    p = mkpool(1 << 16)
    a = p.must_alloc(100)
    b = p.must_alloc(100)
    hdr = ffi.cast("uint64_t *", lib.ember_pool_ptr(p.p, b.offset - BLK))
    saved = [hdr[i] for i in range(8)]
    hdr[1] = 12345                                     # size not a multiple of 64
    assert p.validate() == lib.EMBER_ERR_CORRUPT
    assert p.free(b) == lib.EMBER_ERR_BAD_MAGIC
    hdr[1] = saved[1]
    hdr[0] = 0                                         # magic gone
    assert p.validate() == lib.EMBER_ERR_CORRUPT
    assert p.free(b) == lib.EMBER_ERR_BAD_MAGIC
    for i, v in enumerate(saved):
        hdr[i] = v
    hdr[2] = 1 << 40                                   # prev_size pointing before the heap
    assert p.free(b) == lib.EMBER_ERR_CORRUPT
    assert lib.ember_pool_check(p.p, b) == lib.EMBER_ERR_CORRUPT
    hdr[2] = saved[2]
    assert p.validate() == 0
    assert p.free(a) == 0 and p.free(b) == 0


# ------------------------------------------------------------------ the mutex: bounded waits

def test_capi_lock_waits_are_bounded(mkpool, ffi, lib):
    """Another thread holds the mutex: _ex calls with a lock timeout give
    EMBER_ERR_TIMEOUT, waits past the lock bound EMBER_ERR_LOCK_STUCK; the
    holder's thread id is readable; nothing blocks for ever."""
    p = mkpool(1 << 16)
    a = p.must_alloc(10)
    locked, release, tid = threading.Event(), threading.Event(), []

    def holder():
        assert lib.ember_pool_debug_lock(p.p) == lib.EMBER_OK
        tid.append(threading.get_native_id())
        locked.set()
        release.wait()
        assert lib.ember_pool_debug_unlock(p.p) == lib.EMBER_OK

    t = threading.Thread(target=holder)
    t.start()
    locked.wait()
    try:
        assert lib.ember_pool_lock_owner(p.p) == tid[0]
        assert lib.ember_pool_check_ex(p.p, a, 0) == lib.EMBER_ERR_TIMEOUT
        assert lib.ember_pool_check_ex(p.p, a, 20_000_000) == lib.EMBER_ERR_TIMEOUT
        assert lib.ember_pool_free_ex(p.p, a, 0) == lib.EMBER_ERR_TIMEOUT
        st = ffi.new("ember_pool_stats_t *")
        assert lib.ember_pool_stats_ex(p.p, st, 0) == lib.EMBER_ERR_TIMEOUT
        out = ffi.new("ember_alloc_t *")
        assert lib.ember_pool_alloc_ex(p.p, 10, 0, lib.EMBER_ALLOC_NO_FREE_WAIT, out) == lib.EMBER_ERR_TIMEOUT
        assert lib.ember_pool_alloc_ex(p.p, 10, 20_000_000, 0, out) == lib.EMBER_ERR_TIMEOUT
        lib.ember_pool_set_lock_bound(100_000_000)
        assert lib.ember_pool_lock_bound() == 100_000_000
        assert lib.ember_pool_check(p.p, a) == lib.EMBER_ERR_LOCK_STUCK
        assert lib.ember_pool_alloc(p.p, 10, out) == lib.EMBER_ERR_LOCK_STUCK
        # slices of one thread on the same holder add up to the bound
        rcs = {lib.ember_pool_check_ex(p.p, a, 30_000_000) for _ in range(10)}
        assert rcs == {lib.EMBER_ERR_TIMEOUT, lib.EMBER_ERR_LOCK_STUCK}
    finally:
        lib.ember_pool_set_lock_bound(0)
        release.set()
        t.join()
    assert lib.ember_pool_lock_bound() == lib.EMBER_POOL_LOCK_BOUND_NS
    assert lib.ember_pool_lock_owner(p.p) == 0
    assert lib.ember_pool_check_ex(p.p, a, 0) == lib.EMBER_OK
    assert p.free(a) == lib.EMBER_OK
    assert lib.ember_pool_validate(p.p) == lib.EMBER_OK


# ------------------------------------------------------- pristine blocks

def _alloc_pristine(p, n):
    a = p.ffi.new("ember_alloc_t *")
    flag = p.ffi.new("int *", 7)
    rc = p.lib.ember_pool_alloc_pristine(p.p, n, -1, 0, a, flag)
    assert rc == p.lib.EMBER_OK, p.rcname(rc)
    return a, flag[0]


def _zeros(p, a):
    return bytes(p.ffi.buffer(p.lib.ember_pool_ptr(p.p, a.offset), a.size)) == bytes(a.size)


def test_capi_pristine_blocks(mkpool, ffi, lib):
    """Issue 7: the pool says which blocks were never written (a channel
    made there skips its slot initialisation).  Fresh blocks are pristine
    and read as zeros; a reused block, or one carved from free space that
    held a freed block, is not."""
    p = mkpool(1 << 20)
    a, fa = _alloc_pristine(p, 4000)
    b, fb = _alloc_pristine(p, 4000)
    assert (fa, fb) == (1, 1) and _zeros(p, a) and _zeros(p, b)
    ffi.memmove(lib.ember_pool_ptr(p.p, a.offset), b"\xff" * a.size, a.size)
    assert p.free(a) == 0
    a2, f = _alloc_pristine(p, 4000)
    assert a2.offset == a.offset and f == 0          # reused
    assert p.free(a2) == 0 and p.free(b) == 0        # all merged back into one block
    c, f = _alloc_pristine(p, 12000)
    assert c.offset == a.offset and f == 0           # its start was written
    d, f = _alloc_pristine(p, 4000)
    assert d.offset > b.offset + b.size and f == 1 and _zeros(p, d)   # beyond anything written
    assert p.free(c) == 0 and p.free(d) == 0 and p.validate() == 0
    # the plain alloc_ex is alloc_pristine without the answer
    out = ffi.new("ember_alloc_t *")
    assert lib.ember_pool_alloc_ex(p.p, 100, -1, 0, out) == lib.EMBER_OK


def test_capi_pristine_blocks_read_zero_under_a_random_workload(mkpool, ffi, lib):
    """Whatever the history of allocs, frees and writes, a block reported
    pristine reads as zeros, and a mark scribbled out of bounds only makes
    blocks count as written."""
    rnd = random.Random(7)
    p = mkpool(1 << 20)
    held, pristine_seen = [], 0
    for step in range(3000):
        if held and (rnd.random() < 0.45 or len(held) > 60):
            assert p.free(held.pop(rnd.randrange(len(held)))) == 0
            continue
        a = ffi.new("ember_alloc_t *")
        flag = ffi.new("int *")
        rc = lib.ember_pool_alloc_pristine(p.p, rnd.choice([1, 64, 700, 3000, 20000]), -1, 0, a, flag)
        if rc == lib.EMBER_ERR_EXHAUSTED:
            continue
        assert rc == lib.EMBER_OK
        if flag[0]:
            pristine_seen += 1
            assert _zeros(p, a), f"step {step}: a pristine block holds data"
        ffi.memmove(lib.ember_pool_ptr(p.p, a.offset), bytes([rnd.randrange(1, 256)]) * a.size, a.size)
        held.append(a)
    assert pristine_seen > 10
    for a in held:
        assert p.free(a) == 0
    assert p.validate() == 0
    # scribble the mark (the word after `committed` in the allocator state)
    # far beyond the heap: nothing is pristine any more
    touched = ffi.cast("uint64_t *", lib.ember_pool_ptr(p.p, 256 + 5 * 8))
    assert HDR < touched[0] <= lib.ember_pool_size(p.p)      # (the layout: test_pool_fuzz)
    touched[0] = 1 << 62
    for _ in range(5):
        a, f = _alloc_pristine(p, 20000)
        assert f == 0
    assert p.validate() == 0


@pytest.mark.timeout(60)
def test_capi_pristine_survives_killed_allocators(capi, mkpool, ffi, lib):
    """Processes killed at random instants while allocating, writing and
    freeing (some holding the mutex: the next locker repairs) never make a
    written block count as pristine."""
    p = mkpool(4 << 20)
    rnd = random.Random(11)
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            try:
                r = random.Random(os.getpid())
                live = []
                while True:
                    a = ffi.new("ember_alloc_t *")
                    if lib.ember_pool_alloc(p.p, r.choice([64, 900, 5000]), a) == lib.EMBER_OK:
                        ffi.memmove(lib.ember_pool_ptr(p.p, a.offset), b"\xee" * a.size, a.size)
                        live.append(a)
                    if len(live) > 20:
                        lib.ember_pool_free(p.p, live.pop(r.randrange(len(live))))
            finally:
                os._exit(0)
        time.sleep(rnd.uniform(0.001, 0.01))
        kill(pid)
        for _ in range(20):
            a, f = _alloc_pristine(p, rnd.choice([64, 900, 5000]))
            if f:
                assert _zeros(p, a)
            assert p.free(a) == 0
    assert p.validate() == 0
