"""ember.channels_c: the Python API in one process (errors asserted with
their text)."""
import contextlib
import gc
import re
import threading
import time
import warnings

import pytest

import mmap
import os
import struct

from ember.channels_c import Channel, ChannelStatistics, wait_any
from ember.exceptions import (ChannelClosed, ChannelEmpty, ChannelError, ChannelFull, DescriptorError,
                              PoolError, PoolExhausted)
from ember.pools_c import Pool
from procs import join, kill, once_sleeping_on_shm, wait_sleeping_on_shm


@pytest.fixture
def pool():
    p = Pool.create(16 << 20)
    yield p
    p.destroy()


@pytest.fixture
def ch(pool):
    c = Channel.create(pool, capacity=8, block_size=128)
    yield c
    try:
        c.destroy()
    except ChannelError:
        pass                                # destroyed by the test already


def test_public_names():
    import ember.channels_c as m
    assert sorted(m.__all__) == sorted(["Channel", "ChannelStatistics", "wait_any", "DEFAULT_CAPACITY",
                                        "DEFAULT_BLOCK_SIZE", "ChannelError", "ChannelEmpty", "ChannelFull",
                                        "ChannelClosed"])
    assert issubclass(ChannelEmpty, TimeoutError) and issubclass(ChannelFull, TimeoutError)
    assert issubclass(ChannelClosed, EOFError) and issubclass(ChannelClosed, ChannelError)


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
    assert 0.1 <= time.monotonic() - t < 10     # the whole timeout waited; not stuck
    t = time.monotonic()
    assert ch.poll(timeout=0.05) is False
    assert 0.05 <= time.monotonic() - t < 10
    for i in range(8):
        ch.send(b"x")
    t = time.monotonic()
    with pytest.raises(ChannelFull, match=r"after timeout=0\.1\b"):
        ch.send(b"y", timeout=0.1)
    assert 0.1 <= time.monotonic() - t < 10     # the whole timeout waited; not stuck
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
        assert 0.05 <= time.monotonic() - t < 10    # the whole timeout waited; not stuck
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
    t = threading.Thread(target=lambda: got.append(ch.recv(timeout=60)))
    t.start()
    wait_sleeping_on_shm(os.getpid(), t.native_id)    # blocked in its recv (a sleep was not enough)
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
        a = _scribble(pool, 4 * 128 + 320)
        for op in (lambda: stale.send(b"x", timeout=0), lambda: stale.recv(timeout=0),
                   lambda: stale.recv_view(timeout=0), lambda: stale.send(b"y" * 5000, timeout=0)):
            with pytest.raises(ChannelError, match=r"the channel was destroyed \[EMBER_ERR_DESTROYED\]$"):
                op()
        assert _intact(a)                        # not a byte changed
        a.free()
        stale.detach()
        pool._validate()


@contextlib.contextmanager
def _one_slot_channel(side, fill=b"fill"):
    """A pool with a channel of one slot, holding ``fill`` when ``side`` is
    "recv" (the message a receiving child takes; a send of ours waits for
    room).  Yields (pool, channel, forked): each pid put in the list
    ``forked`` is SIGKILLed and reaped (unless it was) before the pool is
    destroyed."""
    pool = Pool.create(1 << 20)
    forked = []
    try:
        ch = Channel.create(pool, capacity=1, block_size=128)
        if side == "recv":
            ch.send(fill)
        yield pool, ch, forked
    finally:
        for pid in forked:
            kill(pid)
        pool.destroy()


def _scribble(pool, size):
    """A block of ``size`` bytes allocated from ``pool`` and filled with a
    pattern: a stray write into it shows (``_intact``)."""
    a = pool.alloc(size)
    with memoryview(a) as m:
        m[:] = b"\xab" * len(m)
    return a


def _intact(a):
    """True if the block ``_scribble`` made still holds its pattern."""
    with memoryview(a) as m:
        return m.tobytes() == b"\xab" * len(m)


def _all_freed(pool):
    pool._validate()
    assert pool.stats().live_allocs == 0


def _fork_side(ch, side, where, pause, ready=False, before=0.0):
    """Fork a child that sends b"last" on ``ch`` (``side`` "send") or
    receives b"fill" from it ("recv") with channel.c's test pause ``where``
    ("handover": inside the hand-over window; "claim": a send between its
    claim and its write of the slot) set to ``pause`` seconds, after
    waiting ``before`` seconds.  Exits 0 if its operation did what it
    should.  Returns its pid (with ``ready``: once the child has set its
    pause).  ("claim" pauses a receive too: after its claim, before it
    reads.)"""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from ember.channels_c import _channels
            getattr(_channels, f"_debug_{where}_pause")(pause)
            os.write(w, b"g")
            time.sleep(before)
            if side == "send":
                ch.send(b"last", timeout=10)
                code = 0
            else:
                code = 0 if ch.recv(timeout=10) == b"fill" else 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        assert not ready or os.read(r, 1) == b"g"
    finally:
        os.close(r)
    return pid


def _handover_then_destroy(side, receiver_sleeps):
    """One message handed over by a forked child that pauses inside its
    hand-over window (after its FULL/FREE store, before its notify): this
    process sees the hand-over, destroys the channel and reuses its block
    at once (a one-shot channel: "receive the last message, then
    destroy").  The child's notify must never write into the block
    (HAND-OVER in channel.c).  Returns True if the block stayed intact."""
    with _one_slot_channel(side) as (pool, ch, forked):
        offset = Channel.describe(ch.sdesc)[1]
        # the child hands one slot over, paused; the parent is asleep in
        # recv/send by then
        pid = _fork_side(ch, side, "handover", 0.5, before=0.2)
        forked.append(pid)
        if side == "send":
            if receiver_sleeps:
                got = ch.recv(timeout=60)
            else:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        got = ch.recv(timeout=0)
                        break
                    except ChannelEmpty:
                        assert time.monotonic() < deadline
            assert got == b"last"
        elif receiver_sleeps:
            ch.send(b"next", timeout=60)         # room made by the paused child
        else:
            deadline = time.monotonic() + 60
            while True:
                try:
                    ch.send(b"next", timeout=0)
                    break
                except ChannelFull:
                    assert time.monotonic() < deadline
        ch.destroy()                             # returns at once (HAND-OVER: no wait)
        a = _scribble(pool, 320 + 128)           # the channel's block if it is free already
        assert join(pid) == 0
        intact = _intact(a)
        # the block is freed by whoever was last out: the destroy, or the
        # paused side at the end of its window; either way it is free now
        b = pool.alloc(320 + 128)
        freed = offset in (a.offset, b.offset)
        b.free()
        a.free()
        _all_freed(pool)
        return intact and freed


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["send", "recv"])
@pytest.mark.parametrize("receiver_sleeps", [False, True])
def test_destroy_right_after_a_hand_over_never_touches_the_reused_block(side, receiver_sleeps):
    """The pool corruption seen as test_manager's flake: a shared-object
    host sent b"started" on a boot channel, its creator received it,
    destroyed the channel and allocated a Value there, and then the host's
    publish wrote its spin hints (and its notify) into the reused block."""
    assert _handover_then_destroy(side, receiver_sleeps)


@pytest.mark.timeout(60)
def test_a_large_message_taken_then_destroyed_is_not_freed_by_its_sender():
    """A sender paused in its hand-over window after publishing a large
    message (its block in the pool): the receiver takes the block
    (recv_view), releases the slot and destroys the channel.  The sender,
    seeing the channel destroyed, must not free the block the receiver now
    owns (publish_ex frees it only if it takes the slot back)."""
    pool = Pool.create(4 << 20)
    pid = 0
    view = None
    try:
        ch = Channel.create(pool, capacity=2, block_size=128)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                from ember.channels_c import _channels
                _channels._debug_handover_pause(1.0)
                ch.send(b"\x5a" * 100_000, timeout=60)
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while True:                              # (its notify comes after the pause)
            try:
                view = ch.recv_view(timeout=0)
                break
            except ChannelEmpty:
                assert time.monotonic() < deadline
        ch.destroy()                             # the sender is still in its window
        assert join(pid) == 0
        a = _scribble(pool, 100_000)             # the block's place, had the sender freed it
        assert view.tobytes() == b"\x5a" * 100_000
        a.free()
        view.release()
        _all_freed(pool)
    finally:
        if pid:
            kill(pid)
        if view is not None:
            view.release()
        pool.destroy()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["send", "recv"])
def test_destroy_does_not_wait_for_a_side_stuck_in_its_hand_over(side):
    """A process stopped (or killed) inside its hand-over window: destroy
    returns while it is still there (it used to wait up to 2 s, stalling
    GS's or the shepherd's loop), and the block stays the channel's until
    that side ends its hand-over (then it frees it), or for ever if it
    died there."""
    with _one_slot_channel(side) as (pool, ch, forked):
        offset = Channel.describe(ch.sdesc)[1]
        pid = _fork_side(ch, side, "handover", 30, ready=True)   # hand one slot over, stay there
        forked.append(pid)
        if side == "send":
            assert ch.recv(timeout=30) == b"last"
        else:
            ch.send(b"next", timeout=30)         # room made by the paused child
        ch.destroy()
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)     # still inside its 30 s window
        a = pool.alloc(320 + 128)
        assert a.offset != offset                # the block is still the channel's
        kill(pid)                                # dies there: the block leaks, nothing else
        assert pool.stats().live_allocs == 2
        a.free()
        pool._validate()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["send", "recv"])
def test_destroy_last_frees_the_block_of_a_side_killed_in_its_hand_over(side):
    """The channel's last user (every other process that used it dead):
    _destroy_last frees the block that a process killed inside its
    hand-over window kept allocated (a plain destroy leaves it: above)."""
    with _one_slot_channel(side) as (pool, ch, forked):
        pid = _fork_side(ch, side, "handover", 30, ready=True)   # hand one slot over, stay there
        forked.append(pid)
        if side == "send":
            assert ch.recv(timeout=30) == b"last"
        else:
            ch.send(b"next", timeout=30)         # room made by the paused child
        kill(pid)                                # dies inside its window
        ch._destroy_last()
        assert pool.stats().live_allocs == 0
        pool._validate()


def _claimed_by_child(ch, pause, side="send"):
    """A forked child whose send claims a slot of the empty ``ch`` (whose
    receive claims the slot of ``ch``'s one message, b"fill") and pauses
    there (before it writes / reads the slot) for ``pause`` seconds, or
    until 0.2 s after it sees the channel destroyed.  Returns its pid once
    its claim is made (head / tail has moved)."""
    n = len(ch)
    pid = _fork_side(ch, side, "claim", pause, ready=True)
    deadline = time.monotonic() + 30
    while len(ch) == n:
        assert time.monotonic() < deadline, "the child never claimed its slot"
        time.sleep(0.001)
    return pid


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side", ["send", "recv"])
def test_destroy_while_a_send_or_receive_is_claimed_never_touches_the_reused_block(side):
    """A sender or receiver counts itself busy from before its claim
    (HAND-OVER in channel.c): a destroy while it writes (reads) its slot
    leaves the block allocated until it has handed the slot over, so a
    block allocated right after the destroy is never the one it writes to
    (it was: busy counts started at the hand-over store)."""
    with _one_slot_channel(side) as (pool, ch, forked):
        offset = Channel.describe(ch.sdesc)[1]
        pid = _claimed_by_child(ch, 30, side)
        forked.append(pid)
        ch.destroy()                             # returns at once
        a = _scribble(pool, 320 + 128)           # the channel's block if it is free already
        assert a.offset != offset                # the block is still the channel's
        assert join(pid) == 0                    # it did its part, handed over, freed the block
        assert _intact(a)
        a.free()
        _all_freed(pool)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("side, recovered_by", [("send", "destroy"), ("send", "other side"),
                                                ("recv", "destroy"), ("recv", "other side")])
def test_a_side_killed_between_claim_and_hand_over_costs_nothing(side, recovered_by):
    """Its busy count is ended for it by whoever takes its slot over (a
    receiver's skip of a dead sender's slot, a sender's recovery of a dead
    receiver's, or destroy's scan): the channel goes on, and its destroy
    frees the block (a large message's block included)."""
    # (a large message to receive: a pool block of its own)
    with _one_slot_channel(side, fill=b"F" * 1000) as (pool, ch, forked):
        pid = _claimed_by_child(ch, 30, side)
        forked.append(pid)
        kill(pid)
        if recovered_by == "other side" and side == "send":
            with pytest.raises(ChannelEmpty):
                ch.recv(timeout=0.3)              # skips the dead sender's slot
        elif recovered_by == "other side":
            ch.send(b"after", timeout=10)         # recovers the dead receiver's slot
            assert ch.recv(timeout=10) == b"after"
        if recovered_by == "other side":
            ch.send(b"next")
            assert ch.recv(timeout=10) == b"next"
        ch.destroy()
        _all_freed(pool)                          # freed: no count left up


@pytest.mark.timeout(300)
def test_destroy_racing_with_large_sends_never_touches_the_reused_block():
    """Stress: a forked sender sends 1 MiB messages (claim, allocate,
    copy, publish) while this process destroys the channel at a random
    moment, at once allocates a block of the channel's size and fills it:
    the sender never writes into it, and every block is freed in the end
    (a large message published into a destroyed channel included).  Before
    the busy count started at the claim, ~60% of rounds wrote into the
    reused block and leaked one (a few seconds for 150 rounds)."""
    import random
    rng = random.Random(11)
    block, big = 128, 1 << 20
    pool = Pool.create(1 << 25)
    pid = 0
    try:
        for _ in range(150):
            ch = Channel.create(pool, capacity=8, block_size=block)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    payload = b"\x5a" * big
                    os.write(w, b"g")
                    while True:
                        try:
                            ch.send(payload, timeout=0)
                        except ChannelFull:
                            pass
                except ChannelError:
                    code = 0                     # destroyed
                finally:
                    os._exit(code)
            os.close(w)
            assert os.read(r, 1) == b"g"
            os.close(r)
            time.sleep(rng.random() * 0.004)
            ch.destroy()
            a = _scribble(pool, 320 + 8 * block)
            assert join(pid) == 0
            assert _intact(a)
            a.free()
        _all_freed(pool)
    finally:
        if pid:
            kill(pid)
        pool.destroy()


def test_allocation_in_flight_cannot_be_freed_by_another_thread():
    import threading
    with Pool.create(1 << 20) as pool, Channel.create(pool, capacity=1, block_size=128) as ch:
        ch.send(b"fill")
        a = pool.alloc(4000)
        t = threading.Thread(target=lambda: ch.send(a, timeout=60))
        t.start()
        deadline = time.monotonic() + 60         # (not stuck: a thread's start under load)
        while not a.closed and time.monotonic() < deadline:
            time.sleep(0.001)
        with pytest.raises(PoolError, match=r"is being sent on a channel by another thread$"):
            a.free()
        assert ch.recv() == b"fill"
        t.join()
        assert a.closed
        with ch.recv_view() as v:
            assert len(v) == 4000


def test_stale_handle_destroy_leaves_the_new_channel_alone():
    """Issue 8.2: a stale handle's destroy() must not destroy the channel
    that occupies its block now (nor free its queued large messages)."""
    p = Pool.create(1 << 22)
    try:
        a = Channel.create(p)
        Channel.attach(a.sdesc).destroy()
        b = Channel.create(p)
        assert b.sdesc[104:112] == a.sdesc[104:112]          # the same block
        b.send(b"y" * 100_000)
        with pytest.raises(ChannelError, match=r"^cannot destroy channel c_uid \d+: the channel was destroyed "
                                               r"\[EMBER_ERR_DESTROYED\]$"):
            a.destroy()
        assert a.closed
        assert b.recv(timeout=0) == b"y" * 100_000
        b.send(b"still alive")
        assert b.recv(timeout=0) == b"still alive"
        b.destroy()
        assert p.stats().live_allocs == 0
        p._validate()
    finally:
        p.destroy()


# ---- close() (issue 7) ----------------------------------------------------

def test_close_drains_then_raises_channel_closed(ch):
    ch.send(b"one")
    ch.send(b"x" * 1000)                                  # a large message too
    assert not ch.closed
    ch.close()
    assert ch.closed
    ch.close()                                           # idempotent
    assert ch.statistics() == ChannelStatistics(depth=2, capacity=8, closed=True)
    assert repr(ch).endswith(" queued=2 closed>")
    msg = r"^channel c_uid \d+: cannot send 3 bytes: the channel is closed \[EMBER_ERR_CLOSED\]$"
    with pytest.raises(ChannelClosed, match=msg):
        ch.send(b"two")
    with pytest.raises(ChannelClosed, match=msg):
        ch.send_nowait(b"two")
    with pytest.raises(ChannelClosed, match=r"cannot send 5000 bytes: the channel is closed"):
        ch.send(b"z" * 5000, timeout=1)
    a = ch.pool.alloc(100)
    with pytest.raises(ChannelClosed, match=r"cannot send 100 bytes: the channel is closed"):
        ch.send(a)
    assert not a.closed                                  # still the caller's
    a.free()
    assert ch.recv() == b"one"
    assert ch.poll(timeout=0)
    assert ch.recv_nowait() == b"x" * 1000
    end = (r"^channel c_uid \d+: the channel is closed and every message sent before the close was "
           r"received \[EMBER_ERR_CLOSED\]$")
    for op in (lambda: ch.recv(), lambda: ch.recv(timeout=0), lambda: ch.recv(timeout=5),
               ch.recv_nowait, ch.recv_view, lambda: ch.recv_into(bytearray(10))):
        with pytest.raises(ChannelClosed, match=end):
            op()
    with pytest.raises(EOFError):
        ch.recv()
    assert ch.poll(timeout=None)                         # recv() would not wait
    assert wait_any([ch], timeout=None) == [ch]
    assert wait_any([ch], timeout=0, writable=True) == [ch]
    assert ch.statistics() == ChannelStatistics(depth=0, capacity=8, closed=True)
    other = Channel.attach(ch.sdesc)                     # closed for every handle
    assert other.closed
    with pytest.raises(ChannelClosed):
        other.recv(timeout=0)
    other.detach()
    ch.destroy()
    assert ch.closed
    with pytest.raises(ChannelError, match=r"^channel c_uid \d+: cannot close: the channel is detached or "
                                           r"destroyed$"):
        ch.close()


def test_close_wakes_blocked_receivers_and_senders(pool):
    import threading
    with Channel.create(pool, capacity=1, block_size=64) as full, \
            Channel.create(pool, capacity=1, block_size=64) as empty:
        full.send(b"f")
        errors = []

        def run(fn):
            try:
                fn()
            except ChannelClosed as e:
                errors.append(type(e).__name__)

        threads = [threading.Thread(target=run, args=(lambda: empty.recv(),)),
                   threading.Thread(target=run, args=(lambda: full.send(b"g"),)),
                   threading.Thread(target=run, args=(lambda: wait_any([empty]) and empty.recv(),))]
        for t in threads:
            t.start()
        for t in threads:                                # blocked (not about to be: a sleep hoped so)
            wait_sleeping_on_shm(os.getpid(), t.native_id)
        empty.close()
        full.close()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert errors == ["ChannelClosed"] * 3
        assert full.recv(timeout=0) == b"f"               # queued before the close: still delivered


def test_send_nowait_recv_nowait_and_statistics(ch):
    for i in range(8):
        ch.send_nowait(b"%d" % i)
    with pytest.raises(ChannelFull, match=r"^channel c_uid \d+: send of 1 bytes: the channel is full "
                                          r"\(8 messages\) after timeout=0$"):
        ch.send_nowait(b"9")
    st = ch.statistics()
    assert st == (8, 8, False) and st.depth == 8 and st.capacity == 8 and st.closed is False
    assert [ch.recv_nowait() for _ in range(8)] == [b"%d" % i for i in range(8)]
    with pytest.raises(ChannelEmpty, match=r"^channel c_uid \d+: no message arrived \(timeout=0\)$"):
        ch.recv_nowait()


# ---- corruption (issue 8.14) ------------------------------------------------

def _segment(pool):
    fd = os.open("/dev/shm" + pool.shm_name, os.O_RDWR)
    try:
        return mmap.mmap(fd, 0)
    finally:
        os.close(fd)


def test_inline_length_beyond_the_slot_is_corrupt_not_a_leak(pool, ch):
    """A scribbled inline length must not make recv() return neighbouring
    memory (or crash): ChannelError "channel corrupt", message dropped,
    channel goes on."""
    off = struct.unpack_from("<Q", ch.sdesc, 104)[0]          # the channel's allocation
    seg = _segment(pool)
    try:
        ch.send(b"abc")
        ch.send(b"next")
        struct.pack_into("<Q", seg, off + 320 + 8, 65536)        # slot 0's xmeta: length 64 KiB
        with pytest.raises(ChannelError, match=r"^channel c_uid \d+: channel corrupt: an inline message of "
                                               r"65536 bytes does not fit its slot \(112 bytes\) or the buffer; "
                                               r"the message was dropped \[EMBER_ERR_CORRUPT\]$"):
            ch.recv()
        assert ch.recv() == b"next"
        ch.send(b"abc")                                        # slot 2
        struct.pack_into("<Q", seg, off + 320 + 2 * 128 + 8, 113)
        with pytest.raises(ChannelError, match=r"channel corrupt: an inline message of 113 bytes"):
            ch.recv_into(bytearray(1000))
        ch.send(b"abc")                                        # slot 3: a large message's block, forged
        struct.pack_into("<QQQ", seg, off + 320 + 3 * 128 + 8, (1 << 63) | 5000, 1 << 40, 7)
        with pytest.raises(ChannelError, match=r"^channel c_uid \d+: channel corrupt: a message names pool "
                                               r"block \(offset 1099511627776, size 5000, id 7\) that is not a "
                                               r"live allocation of pool .*; the message was dropped "
                                               r"\[EMBER_ERR_CORRUPT\]$"):
            ch.recv_view()
        ch.send(b"ok")
        assert ch.recv() == b"ok"
    finally:
        seg.close()


def _framed(msgs):
    return b"".join(struct.pack("<I", len(m)) + m for m in msgs)


def test_send_framed_batch_until_full_then_resumes(ch):
    """The transport agent's batch send: (length, message)s in one buffer,
    sent in order until the channel has no room; the returned offset resumes
    it (large messages go through the pool, an empty one is a message)."""
    msgs = [b"m%d" % i for i in range(6)] + [b"", b"L" * 5000, b"z"]
    buf = _framed(msgs)
    off, count, nbytes = ch._send_framed(memoryview(buf))
    assert (count, nbytes) == (8, sum(len(m) for m in msgs[:8]))
    assert off == len(_framed(msgs[:8])) < len(buf)          # capacity 8: the 9th waits
    assert [ch.recv() for _ in range(8)] == msgs[:8]
    assert ch._send_framed(buf, off) == (len(buf), 1, 1)
    assert ch.recv() == b"z"
    assert ch._send_framed(b"") == (0, 0, 0)


def test_send_framed_bad_input_and_closed(ch):
    good = _framed([b"a", b"b"])
    with pytest.raises(ValueError, match="truncated batch: a message of 9 bytes, 2 left"):
        ch._send_framed(good + struct.pack("<I", 9) + b"xy")
    assert [ch.recv(), ch.recv()] == [b"a", b"b"]           # what came before it is in
    with pytest.raises(ValueError, match="truncated batch: 2 bytes after the last message"):
        ch._send_framed(good + b"\0\0")
    assert [ch.recv(), ch.recv()] == [b"a", b"b"]
    with pytest.raises(ValueError, match="offset 99 outside the batch"):
        ch._send_framed(good, 99)
    with pytest.raises(TypeError):
        ch._send_framed("text")
    ch.close()
    with pytest.raises(ChannelClosed):
        ch._send_framed(good)


def test_a_leases_attach_in_its_pool_and_record_read(pool):
    """``_attach_in`` (ember._worker.lease's attach, no Python): a channel
    of the given pool as Channel.attach gives it; None, having attached
    nothing, for a descriptor of another pool's channel or one that is not
    a channel's.  ``_recv_record`` waits for a record of
    ember.objects._pickling (header: magic + kind + extra, then the data)
    and gives the last complete one once nothing more is waiting (what its
    RecordReader gives): a record's data sent after its header is waited
    for, a large data message comes as a view of its pool block, a header
    without its data yet is left, and a message that should be a header
    but is not one gives None."""
    from ember.channels_c._channels import _attach_in, _recv_record
    from ember.objects import _pickling as P

    other = Pool.create(1 << 20)
    try:
        with Channel.create(other) as elsewhere:
            assert _attach_in(pool, elsewhere.sdesc) is None
    finally:
        other.destroy()
    with Channel.create(pool, capacity=8, block_size=128) as ch:
        assert _attach_in(pool, b"x" * len(ch.sdesc)) is None
        assert _attach_in(pool, ch.sdesc[:-1]) is None
        mine = _attach_in(pool, ch.sdesc)
        assert mine.c_uid == ch.c_uid and mine.pool is pool and mine.payload_size == 112

        def header(kind, extra=b""):
            return P._HDR.pack(P._MAGIC, kind) + extra

        ch.send(header(P.KIND_CALL, b"extra"))
        t = once_sleeping_on_shm(ch.send, b"data")   # its data once the reader waits for it
        assert _recv_record(mine, P._MAGIC) == (P.KIND_CALL, b"extra", b"data")
        t.join()
        for m in (header(1, b"a"), b"1", header(2, b"b" * 300), b"2" * 500, header(3)):
            ch.send(m)                    # the last header's data not sent yet
        kind, extra, data = _recv_record(mine, P._MAGIC)
        assert (kind, extra, type(data), bytes(data)) == (2, b"b" * 300, memoryview, b"2" * 500)
        data.release()
        ch.send(b"3")                     # the data of header(3), then a record of its own
        assert _recv_record(mine, P._MAGIC) is None        # b"3" read as a header
        ch.send(b"EMR")                   # shorter than a header
        assert _recv_record(mine, P._MAGIC) is None
        ch.send(header(4))
        ch.send(b"")
        assert _recv_record(mine, P._MAGIC) == (4, b"", b"")
        with pytest.raises(TypeError):
            _recv_record(mine, 4)         # (a bytes magic only)
        mine.detach()
        with pytest.raises(ChannelError, match="detached"):
            _recv_record(mine, P._MAGIC)


@pytest.mark.timeout(60)
def test_wait_below_returns_once_a_receiver_took_one(ch):
    """``Channel._wait_below(n)`` (ember.Process's wait for its child to
    take its call, the mp "ember" method's ``Popen.pid``): true at once
    while fewer than ``n`` are queued; false when a timeout runs out with
    ``n`` queued; with no timeout, it returns once another process's
    receive took one (its release wakes the wait); a destroyed channel
    raises ChannelError."""
    ch.send(b"a")
    ch.send(b"b")
    assert ch._wait_below(3) is True
    assert ch._wait_below(2, 0) is False
    assert ch._wait_below(2, 0.05) is False
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.read(r, 1)
            code = 0 if ch.recv(timeout=10) == b"a" else 1
        finally:
            os._exit(code)
    try:
        os.close(r)
        os.write(w, b"g")
        assert ch._wait_below(2) is True
        assert len(ch) == 1
        assert join(pid) == 0
    finally:
        kill(pid)
        os.close(w)
    ch.destroy()
    with pytest.raises(ChannelError):
        ch._wait_below(2)
