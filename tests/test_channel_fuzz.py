"""Scribble fuzz of a channel's shared memory (issue 8 point 14, channel
part): random bytes, words and bit flips written over a live channel's
header and slots, then every operation on it.  Each run is in a forked child
so that a crash shows as the child's death: the child must exit normally,
every error must be an ember exception (ChannelError "channel corrupt: ...",
ChannelEmpty, ...), no receive may return more bytes than a message can
have, and no call may hang (short timeouts; the test's own timeout).

The default run is short; ``-m slow`` runs many more trials."""
import mmap
import os
import random
import struct

import pytest

from ember.channels_c import Channel, wait_any
from ember.exceptions import ChannelError, DescriptorError, PoolError
from ember.pools_c import Pool
from procs import fork, join

HDR = 320
HOT = (0, 8, 12, 16, 24, 32, 40, 64, 128, 192, 196, 256, 260)   # header fields (docs/channels.md)
LARGE = (300, 5000, 70000)


def _scribble(rnd, seg, off, cap, blk):
    size = HDR + cap * blk
    for _ in range(rnd.randint(1, 6)):
        kind = rnd.random()
        if kind < 0.45:                                   # a slot's state or meta word
            at = off + HDR + rnd.randrange(cap) * blk + rnd.choice((0, 8, 16, 24))
            word = rnd.choice((rnd.getrandbits(64), rnd.getrandbits(24) << 40, 1 << 63 | rnd.getrandbits(20),
                               rnd.getrandbits(17), 1 << 62, 0, (1 << 64) - 1))
            struct.pack_into("<Q", seg, at, word)
        elif kind < 0.6:                                  # a header field
            at = off + rnd.choice(HOT)
            struct.pack_into("<I", seg, at, rnd.getrandbits(32))
        elif kind < 0.85:                                 # a bit flip anywhere in the channel
            at = off + rnd.randrange(size)
            seg[at] ^= 1 << rnd.randrange(8)
        else:                                             # a run of random bytes
            at = off + rnd.randrange(size)
            n = min(rnd.randint(1, 64), off + size - at)
            seg[at:at + n] = rnd.randbytes(n)


def _op(rnd, ch, limit):
    """One random operation; returns nothing; checks what it received."""
    x = rnd.random()
    t = rnd.choice((0, 0, 0.001))
    if x < 0.2:
        ch.send(b"s" * rnd.randint(0, ch.payload_size), timeout=t)
    elif x < 0.3:
        ch.send(b"L" * rnd.choice(LARGE), timeout=t)
    elif x < 0.5:
        m = ch.recv(timeout=t)
        assert len(m) <= limit, len(m)
    elif x < 0.6:
        with ch.recv_view(timeout=t) as v:
            assert len(v) <= limit, len(v)
    elif x < 0.7:
        buf = bytearray(rnd.choice((8, 100, 6000)))
        n = ch.recv_into(buf, timeout=t)
        assert n <= len(buf)
    elif x < 0.75:
        ch.poll(timeout=t)
    elif x < 0.8:
        wait_any([ch], timeout=t, writable=rnd.random() < 0.5)
    elif x < 0.85:
        len(ch)
        ch.statistics()
        repr(ch)
    elif x < 0.9:
        other = Channel.attach(ch.sdesc)
        try:
            other.recv(timeout=0)
        finally:
            other.detach()
    elif x < 0.93:
        ch.close()
    else:
        a = ch.pool.alloc(rnd.choice(LARGE))
        try:
            ch.send(a, timeout=t)
        finally:
            if not a.closed:
                a.free()


def _fuzz(trials, seed):
    rnd = random.Random(seed)
    pool = Pool.create(8 << 20)
    fd = os.open("/dev/shm" + pool.shm_name, os.O_RDWR)
    seg = mmap.mmap(fd, 0)
    os.close(fd)
    errors = {}
    try:
        for _ in range(trials):
            cap, blk = rnd.choice((1, 2, 4, 8)), rnd.choice((64, 128, 256))
            ch = Channel.create(pool, capacity=cap, block_size=blk)
            off = struct.unpack_from("<Q", ch.sdesc, 104)[0]
            limit = max(LARGE)                            # nothing longer was ever sent
            for _ in range(rnd.randint(0, cap)):
                try:
                    ch.send(b"m" * rnd.choice((1, blk - 16, LARGE[0])), timeout=0)
                except ChannelError:
                    pass
            _scribble(rnd, seg, off, cap, blk)
            for _ in range(12):
                try:
                    _op(rnd, ch, limit)
                except (ChannelError, PoolError, DescriptorError) as e:
                    key = type(e).__name__ + (" corrupt" if "corrupt" in str(e) else "")
                    errors[key] = errors.get(key, 0) + 1
            try:
                ch.destroy()
            except ChannelError:
                pass
    finally:
        seg.close()
        pool.destroy()
    return errors


def _run(trials, seeds):
    pids = [fork(_fuzz, trials, s) for s in seeds]
    codes = [join(pid, 600) for pid in pids]
    # 0: normal exit; 1: an unexpected exception (traceback on stderr);
    # negative: killed by a signal (a crash)
    assert codes == [0] * len(seeds), codes


@pytest.mark.timeout(120)
def test_scribbled_channel_never_crashes_short():
    _run(400, [1, 2])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_scribbled_channel_never_crashes_long():
    _run(5000, list(range(10, 18)))


def test_fuzz_reports_corruption():
    """The fuzzer does reach the checks (not only harmless scribbles)."""
    errors = _fuzz(150, 7)
    assert errors.get("CoreError corrupt", 0) > 0, errors     # EMBER_ERR_CORRUPT: CoreError, a ChannelError
