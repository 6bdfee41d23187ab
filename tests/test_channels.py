"""ember.channels_c: the Python API in one process (errors asserted with
their text)."""
import gc
import re
import time
import warnings

import pytest

from ember.channels_c import Channel, wait_any
from ember.exceptions import ChannelEmpty, ChannelError, ChannelFull, DescriptorError, PoolError, PoolExhausted
from ember.pools_c import Pool


@pytest.fixture
def pool():
    p = Pool.create(16 << 20)
    yield p
    p.destroy()


@pytest.fixture
def ch(pool):
    c = Channel.create(pool, capacity=8, block_size=128)
    yield c
    if not c.closed:
        c.destroy()


def test_public_names():
    import ember.channels_c as m
    assert sorted(m.__all__) == sorted(["Channel", "wait_any", "DEFAULT_CAPACITY", "DEFAULT_BLOCK_SIZE",
                                        "ChannelError", "ChannelEmpty", "ChannelFull"])
    assert issubclass(ChannelEmpty, TimeoutError) and issubclass(ChannelFull, TimeoutError)


def test_defaults_and_identity(pool):
    with Channel.create(pool) as c:
        assert c.capacity == 128 and c.block_size == 1024 and c.payload_size == 1008
        assert c.pool is pool
        assert isinstance(c.c_uid, int)
        assert len(c.sdesc) == 152
    assert c.closed
    with Channel.create(pool, capacity=4, block_size=64, c_uid=42) as c:
        assert c.c_uid == 42 and repr(c) == "<ember Channel c_uid=42 capacity=4 block_size=64 queued=0>"


def test_send_recv_fifo_and_types(ch):
    ch.send(b"one")
    ch.send(bytearray(b"two"))
    ch.send(memoryview(b"xthreex")[1:6])
    ch.send(b"")
    assert len(ch) == 4
    assert [ch.recv() for _ in range(4)] == [b"one", b"two", b"three", b""]
    assert len(ch) == 0
    with pytest.raises(TypeError, match=r"^send\(\) needs a bytes-like object or an Allocation, got str$"):
        ch.send("text")
    with pytest.raises(TypeError, match=r"^send\(\) needs a bytes-like object or an Allocation, got int$"):
        ch.send(5)


def test_try_once_full_and_empty(ch):
    with pytest.raises(ChannelEmpty, match=r"^channel c_uid \d+: no message arrived \(timeout=0\)$"):
        ch.recv(timeout=0)
    for i in range(8):
        ch.send(b"%d" % i, timeout=0)
    with pytest.raises(ChannelFull, match=r"^channel c_uid \d+: send of 1 bytes: the channel is full "
                                          r"\(8 messages\) after timeout=0$"):
        ch.send(b"x", timeout=0)
    assert ch.poll() is True
    assert wait_any([ch], timeout=0, writable=True) == []
    assert [ch.recv(timeout=0) for _ in range(8)] == [b"%d" % i for i in range(8)]
    assert ch.poll() is False


def test_timeouts(ch):
    t = time.monotonic()
    with pytest.raises(ChannelEmpty):
        ch.recv(timeout=0.1)
    assert 0.1 <= time.monotonic() - t < 0.6
    t = time.monotonic()
    assert ch.poll(timeout=0.05) is False
    assert 0.05 <= time.monotonic() - t < 0.55
    for i in range(8):
        ch.send(b"x")
    t = time.monotonic()
    with pytest.raises(ChannelFull, match=r"after timeout=0\.1\b"):
        ch.send(b"y", timeout=0.1)
    assert 0.1 <= time.monotonic() - t < 0.6
    with pytest.raises(ValueError, match=r"^timeout must be None or >= 0 seconds, got -1$"):
        ch.recv(timeout=-1)
    with pytest.raises(TypeError, match=r"^timeout must be None or a number of seconds, got str$"):
        ch.recv(timeout="soon")


def test_large_messages_copy(pool, ch):
    base = pool.stats().live_allocs
    big = bytes(range(256)) * 4096                       # 1 MiB
    ch.send(big)
    assert pool.stats().live_allocs == base + 1
    assert ch.recv() == big
    assert pool.stats().live_allocs == base
    ch.send(big)
    buf = bytearray(2 << 20)
    assert ch.recv_into(buf) == len(big) and buf[:len(big)] == big
    assert pool.stats().live_allocs == base


def test_message_too_big_for_pool(ch):
    with pytest.raises(ChannelError, match=r"^channel c_uid \d+: cannot send a message of 17000000 bytes: "
                                           r"larger than its pool can hold \(\d+ bytes\) \[EMBER_ERR_TOO_BIG\]$"):
        ch.send(b"\0" * 17_000_000)
    ch.send(b"still works")
    assert ch.recv() == b"still works"


def test_pool_exhausted_by_large_messages(pool):
    with Channel.create(pool, capacity=64, block_size=64) as c:
        blob = b"\1" * (4 << 20)
        sent = 0
        with pytest.raises(PoolExhausted, match=r"has no free block that large"):
            for _ in range(10):
                c.send(blob, timeout=0)
                sent += 1
        assert 2 <= sent < 10
        for _ in range(sent):
            assert c.recv(timeout=0) == blob


def test_zero_copy_send_and_view(pool, ch):
    base = pool.stats().live_allocs
    a = pool.alloc(300_000)
    memoryview(a)[:] = b"z" * 300_000
    ch.send(a)
    assert a.closed                                      # ownership moved
    v = ch.recv_view()
    assert isinstance(v, memoryview) and len(v) == 300_000 and v[0] == ord("z") and v[-1] == ord("z")
    assert pool.stats().live_allocs == base + 1
    v.release()
    gc.collect()
    assert pool.stats().live_allocs == base              # freed with the view
    ch.send(b"small")
    v = ch.recv_view()
    assert bytes(v) == b"small"
    ch.send(b"q" * 5000)
    v = ch.recv_view()
    del v
    gc.collect()
    assert pool.stats().live_allocs == base


def test_zero_copy_errors(pool, ch):
    with Pool.create(1 << 20) as other:
        a = other.alloc(10)
        with pytest.raises(ChannelError, match=r"^channel c_uid \d+: cannot send an allocation of pool "
                                               r".*: the channel lives in pool .*; only allocations of the "
                                               r"channel's pool move without copying$"):
            ch.send(a)
        a.free()
    a = pool.alloc(10)
    m = memoryview(a)
    with pytest.raises(ChannelError, match=r"still exported \(1\); release them first$"):
        ch.send(a)
    m.release()
    a.free()
    with pytest.raises(Exception, match=r"was freed"):
        ch.send(a)


def test_recv_into_too_small_keeps_message(ch):
    ch.send(b"0123456789")
    with pytest.raises(ChannelError, match=r"^channel c_uid \d+: the next message \(10 bytes\) does not fit "
                                           r"the buffer \(4 bytes\); it stays queued \[EMBER_ERR_BUFFER_TOO_SMALL\]$"):
        ch.recv_into(bytearray(4))
    buf = bytearray(16)
    assert ch.recv_into(buf) == 10 and buf[:10] == b"0123456789"
    with pytest.raises(TypeError, match=r"^recv_into\(\) needs a writable bytes-like object, got bytes$"):
        ch.recv_into(b"readonly")


def test_attach_detach_and_use_after(pool, ch):
    other = Channel.attach(ch.sdesc)
    assert other.c_uid == ch.c_uid and other.capacity == 8 and other.block_size == 128
    assert other.pool is pool
    ch.send(b"m")
    assert other.recv() == b"m"
    other.detach()
    with pytest.raises(ChannelError, match=r"^channel c_uid \d+: cannot receive: the channel is detached or destroyed$"):
        other.recv()
    with pytest.raises(ChannelError, match=r"cannot detach: the channel is detached or destroyed$"):
        other.detach()
    sd = ch.sdesc
    ch.destroy()
    with pytest.raises(ChannelError, match=r"^channel c_uid \d+: cannot send: the channel is detached or destroyed$"):
        ch.send(b"x")
    with pytest.raises(ChannelError, match=r"^cannot attach channel c_uid \d+ in pool .*: the channel was destroyed "
                                           r"\[EMBER_ERR_DESTROYED\]$"):
        Channel.attach(sd)


def test_bad_descriptors(ch):
    sd = ch.sdesc
    with pytest.raises(DescriptorError, match=r"^cannot attach channel from a 151-byte descriptor: the descriptor "
                                              r"is truncated, corrupt, foreign, or names another pool "
                                              r"\[EMBER_ERR_BAD_DESCRIPTOR\]$"):
        Channel.attach(sd[:-1])
    with pytest.raises(DescriptorError, match=r"0-byte descriptor"):
        Channel.attach(b"")
    bad = bytearray(sd)
    bad[130] ^= 1
    with pytest.raises(DescriptorError, match=r"EMBER_ERR_BAD_DESCRIPTOR"):
        Channel.attach(bytes(bad))
    with pytest.raises(TypeError, match=r"^sdesc must be bytes-like, got int$"):
        Channel.attach(5)


def test_construction_and_argument_errors(pool):
    with pytest.raises(TypeError, match=r"^Channel cannot be instantiated directly; use Channel.create\(\) "
                                        r"or Channel.attach\(\)$"):
        Channel()
    with pytest.raises(TypeError, match=r"^pool must be an ember.pools_c.Pool, got str$"):
        Channel.create("pool")
    with pytest.raises(ValueError, match=r"^capacity must be a power of two between 1 and 16777216, got 3$"):
        Channel.create(pool, capacity=3)
    with pytest.raises(ValueError, match=r"^capacity must be a power of two between 1 and 16777216, got 0$"):
        Channel.create(pool, capacity=0)
    with pytest.raises(ValueError, match=r"^block_size must be a multiple of 64 between 64 and 16777216, got 100$"):
        Channel.create(pool, block_size=100)
    with pytest.raises(TypeError, match=r"^capacity must be an int, got float$"):
        Channel.create(pool, capacity=2.0)
    with pytest.raises(ChannelError, match=re.escape("bytes) in pool") + r".*\[EMBER_ERR_TOO_BIG\]$"):
        Channel.create(pool, capacity=1 << 16, block_size=1 << 16)
    with pytest.raises(ValueError, match=r"^wait_any\(\) needs at least one channel$"):
        wait_any([])
    with pytest.raises(TypeError, match=r"^wait_any\(\) needs Channel objects, got int at index 0$"):
        wait_any([1])


def test_unclosed_channel_warns(pool):
    c = Channel.create(pool, capacity=2, block_size=64)
    sd = c.sdesc
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del c
        gc.collect()
    assert any(issubclass(x.category, ResourceWarning) and "unclosed ember Channel" in str(x.message) for x in w)
    Channel.attach(sd).destroy()


def test_wait_any_same_and_different_pools(pool):
    with Pool.create(1 << 20) as p2, Channel.create(pool, capacity=2, block_size=64) as a, \
            Channel.create(pool, capacity=2, block_size=64) as b, \
            Channel.create(p2, capacity=2, block_size=64) as c:
        assert wait_any([a, b, c], timeout=0) == []
        t = time.monotonic()
        assert wait_any([a, b, c], timeout=0.05) == []
        assert 0.05 <= time.monotonic() - t < 0.55
        b.send(b"x")
        assert wait_any([a, b, c]) == [b]
        c.send(b"y")
        assert wait_any([a, b, c], timeout=1) == [b, c]
        assert wait_any([a, b, c], writable=True, timeout=0) == [a, b, c]
        a.send(b"1")
        a.send(b"2")
        assert wait_any([a], writable=True, timeout=0.01) == []


def test_pool_detached_under_channel():
    p = Pool.create(1 << 20)
    c = Channel.create(p, capacity=2, block_size=64)
    sd = c.sdesc
    c.detach()
    c2 = Channel.attach(sd)
    assert c2.pool is p
    c2.detach()
    p.destroy()
    with pytest.raises(ChannelError, match=r"cannot send: the channel is detached or destroyed"):
        c2.send(b"x")


def test_detach_refused_while_another_thread_is_blocked(ch):
    import threading
    got = []
    t = threading.Thread(target=lambda: got.append(ch.recv(timeout=10)))
    t.start()
    time.sleep(0.3)                                   # the thread is blocked in recv by now
    with pytest.raises(ChannelError, match=r"^channel c_uid \d+: cannot detach: 1 call\(s\) of other threads "
                                           r"are blocked in it; wake or stop them first$"):
        ch.detach()
    ch.send(b"wake")
    t.join(10)
    assert got == [b"wake"]


def test_threads_share_a_channel(pool):
    import threading
    with Channel.create(pool, capacity=16, block_size=64) as c:
        N, T = 5000, 3
        out = []
        lock = threading.Lock()

        def consume():
            mine = []
            while True:
                m = c.recv(timeout=10)
                if m == b"end":
                    break
                mine.append(m)
            with lock:
                out.extend(mine)

        ths = [threading.Thread(target=consume) for _ in range(T)]
        for t in ths:
            t.start()
        for i in range(N):
            c.send(b"%d" % i)
        for _ in range(T):
            c.send(b"end")
        for t in ths:
            t.join(30)
        assert sorted(int(x) for x in out) == list(range(N))


def test_stale_handle_after_destroy_never_touches_the_memory():
    """A second handle of a destroyed channel must refuse every operation,
    before and after the channel's block is reused by someone else."""
    with Pool.create(1 << 20) as pool:
        ch = Channel.create(pool, capacity=4, block_size=128)
        stale = Channel.attach(ch.sdesc)
        ch.destroy()
        msg = r"^channel c_uid \d+: send of 1 bytes: the channel was destroyed \[EMBER_ERR_DESTROYED\]$"
        for _ in range(5):                       # more than the capacity
            with pytest.raises(ChannelError, match=msg):
                stale.send(b"x", timeout=0)
        # the freed block now belongs to someone else, filled with a pattern
        a = pool.alloc(4 * 128 + 320)
        with memoryview(a) as m:
            m[:] = b"\xab" * len(m)
        for op in (lambda: stale.send(b"x", timeout=0), lambda: stale.recv(timeout=0),
                   lambda: stale.recv_view(timeout=0), lambda: stale.send(b"y" * 5000, timeout=0)):
            with pytest.raises(ChannelError, match=r"the channel was destroyed \[EMBER_ERR_DESTROYED\]$"):
                op()
        with memoryview(a) as m:
            assert m.tobytes() == b"\xab" * len(m)  # not a byte changed
        a.free()
        stale.detach()
        pool._validate()


def test_allocation_in_flight_cannot_be_freed_by_another_thread():
    import threading
    with Pool.create(1 << 20) as pool, Channel.create(pool, capacity=1, block_size=128) as ch:
        ch.send(b"fill")
        a = pool.alloc(4000)
        t = threading.Thread(target=lambda: ch.send(a, timeout=5))
        t.start()
        deadline = time.monotonic() + 5
        while not a.closed and time.monotonic() < deadline:
            time.sleep(0.001)
        with pytest.raises(PoolError, match=r"is being sent on a channel by another thread$"):
            a.free()
        assert ch.recv() == b"fill"
        t.join()
        assert a.closed
        with ch.recv_view() as v:
            assert len(v) == 4000
