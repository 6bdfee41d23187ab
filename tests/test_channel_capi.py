"""The channel C API on its own, through cffi (tests/cffi_build.py),
including deliberate misuse that must return an error code, never crash."""
import os
import random
import struct
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cffi_build import build_channel  # noqa: E402

HDR = 320          # channel header bytes (5 cache lines), see docs/channels.md


def owner_tag():
    """p<pid>, plus the test worker's segment tag (see conftest.py)."""
    extra = os.environ.get("EMBER_SEGMENT_TAG")
    return (f"p{os.getpid()}-{extra}" if extra else f"p{os.getpid()}").encode()
SLOT_HDR = 16
FREE, WRITING, FULL, READING = range(4)


def state_word(pos, kind, pid, capacity):
    """A slot's stored state word (docs/channels.md): the position is
    stored with the slot's index bits cleared, so (lap 0, FREE) is 0."""
    return ((pos & ~(capacity - 1)) << 24) | (kind << 22) | pid


@pytest.fixture(scope="session")
def capi(tmp_path_factory):
    mod = build_channel(tmp_path_factory.mktemp("cffi_channel"))
    return mod.ffi, mod.lib


@pytest.fixture
def pool(capi):
    ffi, lib = capi
    out = ffi.new("ember_pool_t **")
    m_uid = random.getrandbits(63)
    rc = lib.ember_pool_create(8 << 20, m_uid, owner_tag(), b"chtest", out)
    assert rc == lib.EMBER_OK
    yield out[0]
    assert lib.ember_pool_destroy(out[0]) == lib.EMBER_OK


def make(capi, pool, capacity=8, block=128, c_uid=7):
    ffi, lib = capi
    out = ffi.new("ember_ch_t **")
    rc = lib.ember_ch_create(pool, c_uid, capacity, block, out)
    assert rc == lib.EMBER_OK, rc
    return out[0]


def sdesc_of(capi, ch):
    ffi, lib = capi
    buf = ffi.new("uint8_t[]", lib.EMBER_CH_SDESC_SIZE)
    n = ffi.new("size_t *")
    assert lib.ember_ch_serialize(ch, buf, len(buf), n) == lib.EMBER_OK
    assert n[0] == lib.EMBER_CH_SDESC_SIZE == 152
    return bytes(ffi.buffer(buf, n[0]))


def recv(capi, ch, timeout=0, cap=1 << 16):
    ffi, lib = capi
    buf = ffi.new("char[]", cap)
    n = ffi.new("uint64_t *")
    rc = lib.ember_ch_recv(ch, buf, cap, n, timeout)
    if rc != lib.EMBER_OK:
        return rc
    return bytes(ffi.buffer(buf, n[0]))


def live_allocs(capi, pool):
    ffi, lib = capi
    st = ffi.new("ember_pool_stats_t *")
    assert lib.ember_pool_stats(pool, st) == lib.EMBER_OK
    return st.live_allocs


def new_pool(capi, size, name):
    """A pool of its own (``size`` bytes, named ``name``) and the path of its
    segment, for a test that looks at the segment's pages or replaces it;
    the caller destroys (or detaches) it."""
    ffi, lib = capi
    out = ffi.new("ember_pool_t **")
    assert lib.ember_pool_create(size, random.getrandbits(63), owner_tag(), name, out) == lib.EMBER_OK
    return out[0], "/dev/shm" + ffi.string(lib.ember_pool_shm_name(out[0])).decode()


def dirty_block(capi, pool, size, fill=b"\xff"):
    """Allocate ``size`` bytes, write ``fill`` over them, free them: the
    offset of a reused (dirty) block the next allocation of that size
    gets."""
    ffi, lib = capi
    blk = ffi.new("ember_alloc_t *")
    assert lib.ember_pool_alloc(pool, size, blk) == lib.EMBER_OK
    ffi.memmove(lib.ember_pool_ptr(pool, blk.offset), fill * size, size)
    assert lib.ember_pool_free(pool, blk) == lib.EMBER_OK
    return blk.offset


def full_laps(capi, ch, capacity, laps=3, full=True):
    """Fill ``ch`` (``capacity`` messages; ``full``: then one send that
    finds it full) and empty it in order, ``laps`` times."""
    lib = capi[1]
    for lap in range(laps):
        for i in range(capacity):
            assert lib.ember_ch_send(ch, b"%d" % i, len(b"%d" % i), 0) == lib.EMBER_OK
        if full:
            assert lib.ember_ch_send(ch, b"x", 1, 0) == lib.EMBER_ERR_FULL
        assert [recv(capi, ch) for _ in range(capacity)] == [b"%d" % i for i in range(capacity)]


def test_create_send_recv_fifo(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool)
    assert lib.ember_ch_capacity(ch) == 8
    assert lib.ember_ch_block_size(ch) == 128
    assert lib.ember_ch_payload_size(ch) == 128 - SLOT_HDR
    assert lib.ember_ch_c_uid(ch) == 7
    assert lib.ember_ch_pool(ch) == pool
    for lap in range(5):                       # several laps around the ring
        for i in range(8):
            assert lib.ember_ch_send(ch, b"m%d" % i, 2, 0) == lib.EMBER_OK
        assert lib.ember_ch_count(ch) == 8
        assert lib.ember_ch_send(ch, b"x", 1, 0) == lib.EMBER_ERR_FULL
        for i in range(8):
            assert recv(capi, ch) == b"m%d" % i
        assert recv(capi, ch) == lib.EMBER_ERR_EMPTY
        assert lib.ember_ch_count(ch) == 0
    assert lib.ember_ch_send(ch, ffi.NULL, 0, 0) == lib.EMBER_OK   # empty message
    assert recv(capi, ch) == b""
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_attach_by_descriptor(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64, c_uid=99)
    sd = sdesc_of(capi, ch)
    psd = ffi.new("uint8_t **")
    plen = ffi.new("size_t *")
    assert lib.ember_ch_sdesc_pool(sd, len(sd), ffi.cast("const uint8_t **", psd), plen) == lib.EMBER_OK
    assert plen[0] == lib.EMBER_POOL_SDESC_SIZE
    out = ffi.new("ember_ch_t **")
    assert lib.ember_ch_attach(pool, sd, len(sd), out) == lib.EMBER_OK
    ch2 = out[0]
    assert lib.ember_ch_c_uid(ch2) == 99 and lib.ember_ch_capacity(ch2) == 4
    assert lib.ember_ch_send(ch, b"hello", 5, 0) == lib.EMBER_OK
    assert recv(capi, ch2) == b"hello"
    assert sdesc_of(capi, ch2) == sd
    assert lib.ember_ch_detach(ch2) == lib.EMBER_OK
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_two_phase_and_too_small(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool)
    assert lib.ember_ch_send(ch, b"abcdef", 6, 0) == lib.EMBER_OK
    n = ffi.new("uint64_t *")
    buf = ffi.new("char[4]")
    assert lib.ember_ch_recv(ch, buf, 4, n, 0) == lib.EMBER_ERR_BUFFER_TOO_SMALL
    assert n[0] == 6
    assert lib.ember_ch_count(ch) == 1                       # left queued
    m = ffi.new("ember_ch_msg_t *")
    assert lib.ember_ch_recv_begin(ch, 0, 5, m) == lib.EMBER_ERR_BUFFER_TOO_SMALL
    assert lib.ember_ch_recv_begin(ch, 0, -1, m) == lib.EMBER_OK
    assert m.is_alloc == 0 and bytes(ffi.buffer(m.data, m.len)) == b"abcdef"
    assert lib.ember_ch_recv_end(ch, m) == lib.EMBER_OK
    assert lib.ember_ch_recv_end(ch, m) == lib.EMBER_OK      # idempotent
    assert lib.ember_ch_count(ch) == 0
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_large_messages_through_pool(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64)
    base = live_allocs(capi, pool)
    big = os.urandom(100_000)
    assert lib.ember_ch_send(ch, big, len(big), 0) == lib.EMBER_OK
    assert live_allocs(capi, pool) == base + 1
    assert recv(capi, ch, cap=200_000) == big
    assert live_allocs(capi, pool) == base                   # freed by the receiver
    # too big for the pool: a clear code, never a crash
    huge = ffi.new("char[]", 9 << 20)
    assert lib.ember_ch_send(ch, huge, 9 << 20, 0) == lib.EMBER_ERR_TOO_BIG
    # zero-copy: send an allocation, receive it as an allocation
    a = ffi.new("ember_alloc_t *")
    assert lib.ember_pool_alloc(pool, 5000, a) == lib.EMBER_OK
    ffi.memmove(lib.ember_pool_ptr(pool, a.offset), b"Z" * 5000, 5000)
    assert lib.ember_ch_send_alloc(ch, a, 0) == lib.EMBER_OK
    m = ffi.new("ember_ch_msg_t *")
    assert lib.ember_ch_recv_begin(ch, 0, -1, m) == lib.EMBER_OK
    assert m.is_alloc == 1 and m.alloc.offset == a.offset and m.alloc.id == a.id
    assert bytes(ffi.buffer(m.data, m.len)) == b"Z" * 5000
    assert lib.ember_ch_recv_take(ch, m) == lib.EMBER_OK                 # zero-copy: caller owns it
    assert lib.ember_ch_recv_take(ch, m) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_recv_end(ch, m) == lib.EMBER_OK                  # no-op after take
    assert live_allocs(capi, pool) == base + 1                           # this block
    assert lib.ember_pool_free(pool, ffi.addressof(m, "alloc")) == lib.EMBER_OK
    # recv_end frees a large message that was not taken
    assert lib.ember_ch_send(ch, big, len(big), 0) == lib.EMBER_OK
    assert lib.ember_ch_recv_begin(ch, 0, -1, m) == lib.EMBER_OK and m.is_alloc == 1
    assert lib.ember_ch_recv_end(ch, m) == lib.EMBER_OK
    assert live_allocs(capi, pool) == base
    # a stale allocation cannot be sent
    assert lib.ember_ch_send_alloc(ch, a, 0) == lib.EMBER_ERR_DOUBLE_FREE
    # destroy frees queued large messages
    for _ in range(3):
        assert lib.ember_ch_send(ch, big, len(big), 0) == lib.EMBER_OK
    assert live_allocs(capi, pool) == base + 3
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
    assert live_allocs(capi, pool) == base - 1               # the channel itself too


def test_misuse_create(capi, pool):
    ffi, lib = capi
    out = ffi.new("ember_ch_t **")
    assert lib.ember_ch_create(pool, 1, 0, 128, out) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_create(pool, 1, 3, 128, out) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_create(pool, 1, 1 << 25, 128, out) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_create(pool, 1, 8, 0, out) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_create(pool, 1, 8, 100, out) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_create(pool, 1, 8, 32, out) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_create(ffi.NULL, 1, 8, 64, out) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_create(pool, 1, 8, 64, ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_create(pool, 1, 1 << 20, 1 << 16, out) == lib.EMBER_ERR_TOO_BIG
    assert lib.ember_ch_send(ffi.NULL, b"x", 1, 0) == lib.EMBER_ERR_INVALID_ARG
    ch = make(capi, pool)
    assert lib.ember_ch_send(ch, ffi.NULL, 5, 0) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_recv(ch, ffi.NULL, 5, ffi.NULL, 0) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_recv_begin(ch, 0, -1, ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_wait_any(ffi.NULL, 1, 0, 0, ffi.NULL, ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_serialize(ch, ffi.new("char[10]"), 10, ffi.NULL) == lib.EMBER_ERR_BUFFER_TOO_SMALL
    assert lib.ember_ch_detach(ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_destroy(ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_count(ffi.NULL) == 0
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_misuse_descriptors(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool)
    sd = sdesc_of(capi, ch)
    out = ffi.new("ember_ch_t **")

    def attach(b, p=pool):
        return lib.ember_ch_attach(p, b, len(b), out)

    assert attach(sd[:-1]) == lib.EMBER_ERR_BAD_DESCRIPTOR           # truncated
    assert attach(sd + b"\0") == lib.EMBER_ERR_BAD_DESCRIPTOR        # too long
    assert attach(b"") == lib.EMBER_ERR_BAD_DESCRIPTOR
    assert attach(b"\0" * 152) == lib.EMBER_ERR_BAD_DESCRIPTOR       # foreign
    for i in (0, 10, 100, 110, 130, 140, 150):                       # any flipped byte
        bad = bytearray(sd)
        bad[i] ^= 0x40
        assert attach(bytes(bad)) in (lib.EMBER_ERR_BAD_DESCRIPTOR, lib.EMBER_ERR_VERSION), i
    # a channel of another pool
    other = ffi.new("ember_pool_t **")
    assert lib.ember_pool_create(1 << 20, random.getrandbits(63), owner_tag(),
                                 ffi.NULL, other) == lib.EMBER_OK
    try:
        assert attach(sd, other[0]) == lib.EMBER_ERR_BAD_DESCRIPTOR
    finally:
        lib.ember_pool_destroy(other[0])
    # corrupt header in shared memory
    a = lib.ember_ch_alloc(ch)
    hdr = ffi.cast("uint64_t *", lib.ember_pool_ptr(pool, a.offset))
    saved = hdr[0]
    hdr[0] = 0x1234
    assert attach(sd) == lib.EMBER_ERR_BAD_MAGIC
    hdr[0] = saved
    cap32 = ffi.cast("uint32_t *", lib.ember_pool_ptr(pool, a.offset + 12))
    cap32[0] = 16
    assert attach(sd) == lib.EMBER_ERR_CORRUPT
    cap32[0] = 8
    assert attach(sd) == lib.EMBER_OK
    lib.ember_ch_detach(out[0])
    # destroyed channel
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
    assert attach(sd) == lib.EMBER_ERR_DESTROYED
    assert lib.ember_ch_sdesc_pool(b"abc", 3, ffi.NULL, ffi.NULL) == lib.EMBER_ERR_BAD_DESCRIPTOR


def test_timeouts_and_poll(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=2)
    t = time.monotonic()
    assert recv(capi, ch, timeout=50_000_000) == lib.EMBER_ERR_EMPTY
    el = time.monotonic() - t
    # waited its whole timeout, and then returned (the upper bound only says
    # "not stuck": a loaded 2-core machine may deschedule us for a while)
    assert 0.05 <= el < 10
    assert lib.ember_ch_poll(ch, 0, 0) == lib.EMBER_ERR_EMPTY
    assert lib.ember_ch_poll(ch, 1, 0) == lib.EMBER_OK
    assert lib.ember_ch_send(ch, b"a", 1, 0) == lib.EMBER_OK
    assert lib.ember_ch_send(ch, b"b", 1, 0) == lib.EMBER_OK
    assert lib.ember_ch_poll(ch, 0, 0) == lib.EMBER_OK
    assert lib.ember_ch_poll(ch, 1, 0) == lib.EMBER_ERR_FULL
    t = time.monotonic()
    assert lib.ember_ch_send(ch, b"c", 1, 30_000_000) == lib.EMBER_ERR_FULL
    assert 0.03 <= time.monotonic() - t < 10
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_wait_any(capi, pool):
    ffi, lib = capi
    chs = [make(capi, pool, capacity=2) for _ in range(3)]
    arr = ffi.new("ember_ch_t *[]", chs)
    ready = ffi.new("uint8_t[3]")
    n = ffi.new("size_t *")
    assert lib.ember_ch_wait_any(arr, 3, 0, 0, ready, n) == lib.EMBER_ERR_TIMEOUT
    t = time.monotonic()
    assert lib.ember_ch_wait_any(arr, 3, 0, 20_000_000, ready, n) == lib.EMBER_ERR_TIMEOUT
    assert 0.02 <= time.monotonic() - t < 10      # the whole timeout waited; not stuck
    assert lib.ember_ch_send(chs[1], b"x", 1, 0) == lib.EMBER_OK
    assert lib.ember_ch_wait_any(arr, 3, 0, -1, ready, n) == lib.EMBER_OK
    assert list(ready) == [0, 1, 0] and n[0] == 1
    assert lib.ember_ch_wait_any(arr, 3, 1, 0, ready, n) == lib.EMBER_OK
    assert list(ready) == [1, 1, 1] and n[0] == 3
    for c in chs:
        assert lib.ember_ch_destroy(c) == lib.EMBER_OK


@pytest.mark.timeout(60)
def test_wait_any_wakes_from_other_process(capi, pool):
    ffi, lib = capi
    chs = [make(capi, pool, capacity=2) for _ in range(2)]
    arr = ffi.new("ember_ch_t *[]", chs)
    ready = ffi.new("uint8_t[2]")
    n = ffi.new("size_t *")
    pid = os.fork()
    if pid == 0:
        time.sleep(0.1)
        lib.ember_ch_send(chs[1], b"y", 1, 0)
        os._exit(0)
    try:
        # EMBER_OK (not a timeout): woken by the other process's send
        assert lib.ember_ch_wait_any(arr, 2, 0, 30_000_000_000, ready, n) == lib.EMBER_OK
        assert list(ready) == [0, 1]
    finally:
        os.waitpid(pid, 0)
    for c in chs:
        assert lib.ember_ch_destroy(c) == lib.EMBER_OK


def _dead_pid():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


@pytest.mark.timeout(60)
def test_dead_producer_slot_is_skipped(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64)
    a = lib.ember_ch_alloc(ch)
    state = ffi.cast("uint64_t *", lib.ember_pool_ptr(pool, a.offset + HDR))
    dead = _dead_pid()
    state[0] = state_word(0, WRITING, dead, 4)     # (pos 0, WRITING, dead pid), head not advanced
    assert lib.ember_ch_send(ch, b"after", 5, 0) == lib.EMBER_OK   # helps head, takes slot 1
    assert recv(capi, ch) == lib.EMBER_ERR_EMPTY    # first try-once: in flight
    assert recv(capi, ch) == b"after"               # same stuck state twice: checked, skipped
    # blocking receive skips it at once
    state2 = ffi.cast("uint64_t *", lib.ember_pool_ptr(pool, a.offset + HDR + 2 * 64))
    assert lib.ember_ch_count(ch) == 0
    state2[0] = state_word(2, WRITING, dead, 4)
    hdr = ffi.cast("uint64_t *", lib.ember_pool_ptr(pool, a.offset))
    hdr[64 // 8] = 3                                 # head = 3 (producer had advanced it)
    assert lib.ember_ch_send(ch, b"later", 5, 0) == lib.EMBER_OK
    assert recv(capi, ch, timeout=1_000_000_000) == b"later"
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


@pytest.mark.timeout(60)
def test_dead_consumer_slot_is_recovered(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64)
    base = live_allocs(capi, pool)
    big = b"B" * 1000
    assert lib.ember_ch_send(ch, big, len(big), 0) == lib.EMBER_OK   # large: an allocation
    assert live_allocs(capi, pool) == base + 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        m = ffi.new("ember_ch_msg_t *")
        # claim the slot by hand (READING) and die before releasing it
        st = ffi.cast("uint64_t *", lib.ember_pool_ptr(pool, lib.ember_ch_alloc(ch).offset + HDR))
        st[0] = state_word(0, READING, os.getpid(), 4)
        os.write(w, b"1")
        del m
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    os.waitpid(pid, 0)
    hdr = ffi.cast("uint64_t *", lib.ember_pool_ptr(pool, lib.ember_ch_alloc(ch).offset))
    hdr[128 // 8] = 1                                # tail advanced by the dead consumer
    for i in range(3):
        assert lib.ember_ch_send(ch, b"%d" % i, 1, 0) == lib.EMBER_OK
    # slot 0 still READING by the dead pid: full until recovered
    assert lib.ember_ch_send(ch, b"3", 1, 0) == lib.EMBER_ERR_FULL
    assert lib.ember_ch_send(ch, b"3", 1, 1_000_000_000) == lib.EMBER_OK
    assert live_allocs(capi, pool) == base           # its allocation was freed
    assert [recv(capi, ch) for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


@pytest.mark.timeout(60)
def test_fork_producer_consumer(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=16, block=64)
    N = 20000
    pid = os.fork()
    if pid == 0:
        rc = 0
        for i in range(N):
            rc |= lib.ember_ch_send(ch, struct.pack("<Q", i), 8, -1)
        os._exit(1 if rc else 0)
    try:
        got = [recv(capi, ch, timeout=5_000_000_000) for _ in range(N)]
    finally:
        _, status = os.waitpid(pid, 0)
    assert status == 0
    assert [struct.unpack("<Q", g)[0] for g in got] == list(range(N))
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


@pytest.mark.timeout(60)
def test_dead_large_producer_block_is_freed(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64)
    base = live_allocs(capi, pool)
    a = ffi.new("ember_alloc_t *")
    assert lib.ember_pool_alloc(pool, 3000, a) == lib.EMBER_OK       # the dead producer's block
    slot = ffi.cast("uint64_t *", lib.ember_pool_ptr(pool, lib.ember_ch_alloc(ch).offset + HDR))
    dead = _dead_pid()
    slot[2], slot[3] = a.offset, a.id                                 # recorded in the payload
    slot[1] = (1 << 63) | 3000                                        # xmeta: alloc, 3000 bytes
    slot[0] = state_word(0, WRITING, dead, 4)                         # (0, WRITING, dead)
    assert lib.ember_ch_send(ch, b"next", 4, 0) == lib.EMBER_OK
    assert live_allocs(capi, pool) == base + 1
    assert recv(capi, ch, timeout=1_000_000_000) == b"next"           # skips the dead slot ...
    assert live_allocs(capi, pool) == base                            # ... and frees its block
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_aborted_large_send_leaves_a_skip_marker(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=8, block=64)
    blob = ffi.new("char[]", 3 << 20)
    sent = 0
    while True:                                    # fill the pool with large messages
        rc = lib.ember_ch_send(ch, blob, 3 << 20, 0)
        if rc != lib.EMBER_OK:
            break
        sent += 1
    assert rc == lib.EMBER_ERR_EXHAUSTED and sent >= 1
    assert lib.ember_ch_count(ch) == sent + 1       # the skip marker holds a slot
    assert lib.ember_ch_send(ch, b"small", 5, 0) == lib.EMBER_OK
    for _ in range(sent):
        assert len(recv(capi, ch, cap=4 << 20)) == 3 << 20
    assert lib.ember_ch_poll(ch, 0, 0) == lib.EMBER_OK    # the marker is passed over
    assert recv(capi, ch) == b"small"
    assert lib.ember_ch_count(ch) == 0
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_stale_handle_destroy_is_refused(capi, pool):
    """Issue 8.2: destroy through a stale handle must not destroy the
    channel that occupies the block now."""
    ffi, lib = capi
    a = make(capi, pool, capacity=4, block=64)
    sd = sdesc_of(capi, a)
    out = ffi.new("ember_ch_t **")
    assert lib.ember_ch_attach(pool, sd, len(sd), out) == lib.EMBER_OK
    stale = out[0]
    assert lib.ember_ch_destroy(a) == lib.EMBER_OK
    b = make(capi, pool, capacity=4, block=64, c_uid=8)
    assert lib.ember_ch_alloc(b).offset == lib.ember_ch_alloc(stale).offset     # the same block
    base = live_allocs(capi, pool)
    big = b"y" * 100_000
    assert lib.ember_ch_send(b, big, len(big), 0) == lib.EMBER_OK
    assert lib.ember_ch_destroy(stale) == lib.EMBER_ERR_DESTROYED   # frees the handle only
    assert live_allocs(capi, pool) == base + 1                    # the queued block is still there
    assert recv(capi, b, cap=200_000) == big
    assert lib.ember_pool_validate(pool) == lib.EMBER_OK
    assert lib.ember_ch_destroy(b) == lib.EMBER_OK


def test_close_end_position(capi, pool):
    """close: sends before it are delivered, none after; a producer that
    claimed the end slot itself gives it back; receivers get CLOSED only at
    the end."""
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64)
    assert lib.ember_ch_is_closed(ch) == 0
    assert lib.ember_ch_send(ch, b"a", 1, 0) == lib.EMBER_OK
    # a producer that read head == 1 claimed slot 1 and has not advanced head yet
    base = lib.ember_pool_ptr(pool, lib.ember_ch_alloc(ch).offset)
    st1 = ffi.cast("uint64_t *", base + HDR + 64)
    hdr = ffi.cast("uint64_t *", base)
    assert hdr[64 // 8] == 1
    assert lib.ember_ch_close(ch) == lib.EMBER_OK
    assert lib.ember_ch_close(ch) == lib.EMBER_OK                      # idempotent
    assert lib.ember_ch_is_closed(ch) == 1
    assert hdr[64 // 8] == (1 << 63) | 1                               # end = 1
    assert lib.ember_ch_send(ch, b"b", 1, 0) == lib.EMBER_ERR_CLOSED
    assert lib.ember_ch_send(ch, b"b" * 500, 500, -1) == lib.EMBER_ERR_CLOSED   # large: no block taken
    assert lib.ember_ch_poll(ch, 1, -1) == lib.EMBER_ERR_CLOSED
    assert lib.ember_ch_poll(ch, 0, 0) == lib.EMBER_OK                 # "a" is still queued
    assert lib.ember_ch_count(ch) == 1
    assert recv(capi, ch) == b"a"
    assert recv(capi, ch) == lib.EMBER_ERR_CLOSED
    assert recv(capi, ch, timeout=-1) == lib.EMBER_ERR_CLOSED           # never waits
    assert lib.ember_ch_poll(ch, 0, -1) == lib.EMBER_ERR_CLOSED
    arr = ffi.new("ember_ch_t *[]", [ch])
    ready = ffi.new("uint8_t[1]")
    n = ffi.new("size_t *")
    assert lib.ember_ch_wait_any(arr, 1, 0, -1, ready, n) == lib.EMBER_OK and ready[0] == 1
    assert lib.ember_ch_count(ch) == 0
    assert st1[0] == state_word(1, FREE, 0, 4)                         # untouched
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


@pytest.mark.timeout(60)
def test_close_while_a_claim_at_the_end_is_in_flight(capi, pool):
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64)
    base = lib.ember_pool_ptr(pool, lib.ember_ch_alloc(ch).offset)
    st0 = ffi.cast("uint64_t *", base + HDR)
    # a live producer (this process) claimed slot 0 at head 0 and is still writing
    st0[0] = state_word(0, WRITING, os.getpid(), 4)
    assert lib.ember_ch_close(ch) == lib.EMBER_OK                      # end = 0
    assert recv(capi, ch) == lib.EMBER_ERR_EMPTY                       # in flight at the end: wait
    st0[0] = state_word(0, FREE, 0, 4)                                  # ... it gave the slot back
    assert recv(capi, ch) == lib.EMBER_ERR_CLOSED
    # an in-flight claim by a producer that died: skipped, then CLOSED
    st0[0] = state_word(0, WRITING, _dead_pid(), 4)
    assert recv(capi, ch, timeout=1_000_000_000) == lib.EMBER_ERR_CLOSED
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
    assert lib.ember_ch_close(ch := make(capi, pool)) == lib.EMBER_OK
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_close_misuse(capi, pool):
    ffi, lib = capi
    assert lib.ember_ch_close(ffi.NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_ch_is_closed(ffi.NULL) == 0
    ch = make(capi, pool)
    sd = sdesc_of(capi, ch)
    out = ffi.new("ember_ch_t **")
    assert lib.ember_ch_attach(pool, sd, len(sd), out) == lib.EMBER_OK
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
    assert lib.ember_ch_close(out[0]) == lib.EMBER_ERR_DESTROYED
    assert lib.ember_ch_detach(out[0]) == lib.EMBER_OK


def test_corrupt_lengths_and_states_are_errors_never_crashes(capi, pool):
    """Issue 8.14: lengths, block references and state words read from
    shared memory are checked: EMBER_ERR_CORRUPT, never a read past the slot,
    a crash or an endless loop."""
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64)
    base = lib.ember_pool_ptr(pool, lib.ember_ch_alloc(ch).offset)
    slot = [ffi.cast("uint64_t *", base + HDR + i * 64) for i in range(4)]
    assert lib.ember_ch_send(ch, b"abc", 3, 0) == lib.EMBER_OK
    slot[0][1] = 1 << 16                                   # inline length 64 KiB in a 48-byte slot
    m = ffi.new("ember_ch_msg_t *")
    assert lib.ember_ch_recv_begin(ch, 0, -1, m) == lib.EMBER_ERR_CORRUPT
    assert m.len == 1 << 16 and m.is_alloc == 0
    assert lib.ember_ch_recv_end(ch, m) == lib.EMBER_OK    # nothing held
    assert lib.ember_ch_count(ch) == 0                     # dropped; the channel goes on
    assert lib.ember_ch_send(ch, b"abc", 3, 0) == lib.EMBER_OK
    slot[1][1] = 49                                        # one byte too many
    assert recv(capi, ch, cap=1000) == lib.EMBER_ERR_CORRUPT
    assert lib.ember_ch_send(ch, b"abc", 3, 0) == lib.EMBER_OK
    slot[2][1] = (1 << 63) | 100                           # a "large message" in a block that is not one
    slot[2][2], slot[2][3] = 1 << 40, 5
    assert recv(capi, ch) == lib.EMBER_ERR_CORRUPT
    assert lib.ember_ch_send(ch, b"fine", 4, 0) == lib.EMBER_OK
    assert recv(capi, ch) == b"fine"
    # garbage state words ahead of every position: the claim loops stop
    for s in slot:
        s[0] = state_word(1 << 38, FREE, 0, 4)
    assert lib.ember_ch_send(ch, b"x", 1, 0) == lib.EMBER_ERR_CORRUPT
    assert recv(capi, ch) == lib.EMBER_ERR_CORRUPT
    assert lib.ember_ch_poll(ch, 1, 0) == lib.EMBER_ERR_CORRUPT
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
    assert lib.ember_pool_validate(pool) == lib.EMBER_OK


def _shm_keeps_small_holes():
    """Skip the test unless a page written in a fresh /dev/shm file leaves
    the rest of the file's pages holes: where the kernel gives shared
    memory transparent huge pages (transparent_hugepage/shmem_enabled
    always, within_size or force; a tmpfs mounted huge=), one write
    makes 2 MiB data, and the page checks below cannot hold there."""
    import mmap
    path = f"/dev/shm/holes-probe-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.unlink(path)
        os.ftruncate(fd, 8 << 20)
        with mmap.mmap(fd, 8 << 20) as m:
            m[4 << 20] = 1
        try:
            hole = os.lseek(fd, (4 << 20) + 4096, os.SEEK_HOLE)
        except OSError as e:
            pytest.skip(f"/dev/shm cannot tell holes here: {e}")
        if hole != (4 << 20) + 4096:
            pytest.skip("the kernel gives /dev/shm huge pages here: one page written made "
                        f"{hole - (4 << 20)} bytes data")
    finally:
        os.close(fd)


def _data_ranges(path, start, end):
    """The written (non-hole) byte ranges of a file within [start, end)."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        cur = start
        while cur < end:
            try:
                d = os.lseek(fd, cur, os.SEEK_DATA)
            except OSError:
                break
            if d >= end:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, min(h, end)))
            cur = h
    finally:
        os.close(fd)
    return out


def test_fresh_channel_touches_no_slot_page(capi):
    """Issue 7 (join wake-up): a channel made in never-written pool memory
    writes its header only; its slot pages stay holes until used.  One made
    in a reused (dirty) block is initialised and works for many laps."""
    _shm_keeps_small_holes()
    ffi, lib = capi
    pool, path = new_pool(capi, 8 << 20, b"fresh")
    try:
        ch = make(capi, pool, capacity=128, block=1024)
        a = lib.ember_ch_alloc(ch)
        # the pages holding only slots (the allocator writes the next block's
        # header in the page after the last slot)
        first, last = (a.offset + HDR + 4095) // 4096 * 4096, (a.offset + a.size) // 4096 * 4096
        assert last - first >= 30 * 4096
        assert _data_ranges(path, first, last) == []
        assert lib.ember_ch_send(ch, b"hi", 2, 0) == lib.EMBER_OK
        assert recv(capi, ch) == b"hi"
        assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
        # a dirty block: fill it with a pattern, free it, make the channel there
        assert dirty_block(capi, pool, a.size) == a.offset
        ch = make(capi, pool, capacity=128, block=1024)
        assert lib.ember_ch_alloc(ch).offset == a.offset
        assert lib.ember_ch_count(ch) == 0
        full_laps(capi, ch, 128)
        assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
    finally:
        lib.ember_pool_destroy(pool)


def test_closer_killed_between_hint_and_close_leaves_an_open_channel(capi, pool):
    """A closer killed after the xflags hint and before head's CLOSED bit
    leaves a consistent, open channel (and a later close works)."""
    ffi, lib = capi
    ch = make(capi, pool, capacity=4, block=64)
    flags = ffi.cast("uint32_t *", lib.ember_pool_ptr(pool, lib.ember_ch_alloc(ch).offset + 20))
    flags[0] = 1                                          # FLAG_CLOSED: the hint only
    assert lib.ember_ch_is_closed(ch) == 0
    assert recv(capi, ch) == lib.EMBER_ERR_EMPTY            # not closed: empty
    assert lib.ember_ch_send(ch, b"still", 5, 0) == lib.EMBER_OK
    assert recv(capi, ch) == b"still"
    assert lib.ember_ch_close(ch) == lib.EMBER_OK
    assert lib.ember_ch_send(ch, b"x", 1, 0) == lib.EMBER_ERR_CLOSED
    assert recv(capi, ch) == lib.EMBER_ERR_CLOSED
    assert lib.ember_ch_destroy(ch) == lib.EMBER_OK


def test_create_never_trusts_a_replaced_segment_name(capi):
    """Create never reads the segment by name (the pool's pristine mark
    says which blocks were never written): a segment unlinked and replaced
    by a sparse decoy under the same name must not make create skip the
    initialisation of a dirty block."""
    ffi, lib = capi
    pool, path = new_pool(capi, 4 << 20, b"decoy")
    try:
        off = dirty_block(capi, pool, HDR + 64 * 256, b"\xa5")
        assert lib.ember_pool_unlink_name(path[len("/dev/shm"):].encode()) == lib.EMBER_OK
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        os.ftruncate(fd, lib.ember_pool_size(pool))                                  # all holes
        os.close(fd)
        ch = make(capi, pool, capacity=64, block=256)
        assert lib.ember_ch_alloc(ch).offset == off
        full_laps(capi, ch, 64, full=False)
        assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
    finally:
        if os.path.exists(path):
            os.unlink(path)
        lib.ember_pool_detach(pool)


def test_reserved_channel_block(capi):
    """Issue 7 (join wake-up): ember_ch_reserve makes a channel's block
    ahead (owned, header page faulted in, slot pages still holes in fresh
    memory); ember_ch_create_reserved makes the channel there without a
    new allocation; a reservation in a reused block gets its slots
    initialised; ember_ch_unreserve gives it back; a dead owner's
    reservation goes with the pool's reclaim; misuse returns errors."""
    _shm_keeps_small_holes()
    ffi, lib = capi
    pool, path = new_pool(capi, 8 << 20, b"resv")
    try:
        r = ffi.new("ember_ch_reserved_t *")
        assert lib.ember_ch_reserve(pool, 128, 1024, lib.EMBER_ALLOC_OWNED, r) == lib.EMBER_OK
        assert live_allocs(capi, pool) == 1
        a = r.alloc
        hdr_page = a.offset // 4096 * 4096
        assert _data_ranges(path, hdr_page, hdr_page + 4096) == [(hdr_page, hdr_page + 4096)]
        first, last = (a.offset + HDR + 4095) // 4096 * 4096, (a.offset + a.size) // 4096 * 4096
        assert _data_ranges(path, first, last) == []
        ch_out = ffi.new("ember_ch_t **")
        assert lib.ember_ch_create_reserved(pool, r, 4242, ch_out) == lib.EMBER_OK
        ch = ch_out[0]
        assert live_allocs(capi, pool) == 1
        assert lib.ember_ch_alloc(ch).offset == a.offset
        sd = sdesc_of(capi, ch)
        info = ffi.new("ember_ch_sdesc_info_t *")
        assert lib.ember_ch_sdesc_info(sd, len(sd), info) == lib.EMBER_OK
        assert (info.c_uid, info.capacity, info.block_size) == (4242, 128, 1024)
        other = ffi.new("ember_ch_t **")
        assert lib.ember_ch_attach(pool, sd, len(sd), other) == lib.EMBER_OK
        assert lib.ember_ch_send(ch, b"hi", 2, 0) == lib.EMBER_OK
        assert recv(capi, other[0]) == b"hi"
        assert lib.ember_ch_detach(other[0]) == lib.EMBER_OK
        assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
        # a dirty block: reserved, its slots are initialised; many laps work
        assert dirty_block(capi, pool, a.size) == a.offset
        assert lib.ember_ch_reserve(pool, 128, 1024, 0, r) == lib.EMBER_OK
        assert r.alloc.offset == a.offset
        assert lib.ember_ch_create_reserved(pool, r, 5, ch_out) == lib.EMBER_OK
        ch = ch_out[0]
        full_laps(capi, ch, 128)
        assert lib.ember_ch_destroy(ch) == lib.EMBER_OK
        # given back
        assert lib.ember_ch_reserve(pool, 8, 128, 0, r) == lib.EMBER_OK
        assert live_allocs(capi, pool) == 1
        assert lib.ember_ch_unreserve(pool, r) == lib.EMBER_OK
        assert live_allocs(capi, pool) == 0
        # a dead owner's reservation is reclaimed
        pid = os.fork()
        if pid == 0:
            os._exit(0 if lib.ember_ch_reserve(pool, 8, 128, lib.EMBER_ALLOC_OWNED, r) == 0 else 1)
        assert os.waitpid(pid, 0)[1] == 0
        assert live_allocs(capi, pool) == 1
        nb = ffi.new("uint64_t *")
        nbytes = ffi.new("uint64_t *")
        assert lib.ember_pool_reclaim(pool, pid, nb, nbytes) == lib.EMBER_OK
        assert nb[0] == 1 and live_allocs(capi, pool) == 0
        # misuse
        z = ffi.new("ember_ch_reserved_t *")
        assert lib.ember_ch_create_reserved(pool, z, 1, ch_out) == lib.EMBER_ERR_INVALID_ARG
        assert lib.ember_ch_unreserve(pool, z) == lib.EMBER_ERR_INVALID_ARG
        assert lib.ember_ch_create_reserved(ffi.NULL, z, 1, ch_out) == lib.EMBER_ERR_INVALID_ARG
        assert lib.ember_ch_reserve(pool, 3, 128, 0, r) == lib.EMBER_ERR_INVALID_ARG
        assert lib.ember_ch_reserve(pool, 8, 100, 0, r) == lib.EMBER_ERR_INVALID_ARG
        assert lib.ember_ch_reserve(ffi.NULL, 8, 128, 0, r) == lib.EMBER_ERR_INVALID_ARG
        assert lib.ember_ch_reserve(pool, 1 << 20, 1 << 16, 0, r) == lib.EMBER_ERR_TOO_BIG
        assert live_allocs(capi, pool) == 0
    finally:
        lib.ember_pool_destroy(pool)
