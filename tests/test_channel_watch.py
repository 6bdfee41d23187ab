"""ChannelWatch: one select() on a channel (messages from another process)
and a socket at once; no wake-up lost between an empty check and rearm();
a destroyed or closed channel makes the fd readable; close() ends the
thread and the fd."""
import os
import select
import socket
import threading

import pytest

from ember.channels_c import Channel
from ember.channels_c.watch import ChannelWatch
from ember.exceptions import ChannelClosed, ChannelEmpty, ChannelError
from ember.pools_c import Pool
from procs import fork, join, kill


@pytest.fixture
def pool():
    p = Pool.create(8 << 20)
    yield p
    p.destroy()


def sender(sd, go_fd, n):
    """In a child: for each byte read on go_fd, send one message."""
    c = Channel.attach(sd)
    for i in range(n):
        assert os.read(go_fd, 1)
        c.send(b"m%d" % i)
    c.detach()


def recv_either(ch, w, sock, timeout=10.0):
    """A receiver of the direct path's kind: the channel first, else wait on
    the channel and the socket in one select()."""
    while True:
        try:
            return "ch", ch.recv_nowait()
        except ChannelEmpty:
            pass
        w.rearm()
        r, _, _ = select.select([w.fd, sock], [], [], timeout)
        assert r, "neither the channel nor the socket woke the select"
        if sock in r:
            return "sock", sock.recv(100)


@pytest.mark.timeout(60)
def test_watch_wakes_a_select_on_a_channel_and_a_socket(pool):
    ch = Channel.create(pool, capacity=16)
    r, w_ = os.pipe()
    pid = fork(sender, ch.sdesc, r, 50)
    a, b = socket.socketpair()
    w = ChannelWatch(ch)
    try:
        got = []
        for i in range(50):
            # alternately: the other process sends, or the socket has input
            if i % 2:
                b.send(b"s%d" % i)
            else:
                os.write(w_, b"x")
            got.append(recv_either(ch, w, a))
        want = [("sock", b"s%d" % i) if i % 2 else ("ch", b"m%d" % (i // 2)) for i in range(50)]
        assert got == want
        # a message sent while nobody waits, before rearm(): the next wait sees it
        for i in range(25):
            os.write(w_, b"x")
        assert [recv_either(ch, w, a)[1] for _ in range(25)] == [b"m%d" % i for i in range(25, 50)]
        assert join(pid) == 0
        # an empty channel leaves the fd quiet once rearmed (after at most one
        # late fire: the thread may have seen the last message before it was
        # taken)
        for _ in range(2):
            w.rearm()
            quiet = select.select([w.fd], [], [], 0.2)[0] == []
            if quiet:
                break
        assert quiet
        w.close()
        w.close()                                   # idempotent
        assert not any(t.name.startswith("ember-watch") for t in threading.enumerate())
    finally:
        w.close()
        kill(pid)
        for fd in (r, w_):
            os.close(fd)
        a.close()
        b.close()
        ch.detach()


@pytest.mark.timeout(60)
def test_watch_sees_close_and_destroy(pool):
    ch = Channel.create(pool, capacity=16)
    with ChannelWatch(ch) as w:
        ch.send(b"last")
        ch.close()
        assert select.select([w.fd], [], [], 10)[0] == [w.fd]
        assert ch.recv_nowait() == b"last"
        w.rearm()
        assert select.select([w.fd], [], [], 10)[0] == [w.fd]     # closed and drained
        with pytest.raises(ChannelClosed):
            ch.recv_nowait()
    ch.detach()
    ch2 = Channel.create(pool, capacity=16)
    other = Channel.attach(ch2.sdesc)
    w = ChannelWatch(ch2)
    try:
        other.destroy()
        assert select.select([w.fd], [], [], 10)[0] == [w.fd]
        assert isinstance(w.error, ChannelError)
    finally:
        w.close()
        ch2.detach()


@pytest.mark.timeout(60)
def test_watch_with_notify_calls_it_once_per_rearm_and_has_no_fd(pool):
    """notify= replaces the fd's write: called from the watch's thread when
    a message (from another process) is there, once until rearm(), and
    after a rearm that finds the message still waiting, again.  No eventfd
    is made for it."""
    ch = Channel.create(pool, capacity=16)
    r, w_ = os.pipe()
    pid = fork(sender, ch.sdesc, r, 2)
    got = threading.Semaphore(0)
    calls = []

    def notify():
        calls.append(threading.current_thread().name)
        got.release()
    w = ChannelWatch(ch, notify=notify)
    try:
        os.write(w_, b"x")
        assert got.acquire(timeout=10)
        assert calls == [f"ember-watch-{ch.c_uid}"]
        assert w.fd is None                                        # no eventfd
        assert not got.acquire(timeout=0.2)                        # once, until rearm
        w.rearm()                                                  # the message is still there
        assert got.acquire(timeout=10)
        assert ch.recv_nowait() == b"m0"
        w.rearm()
        os.write(w_, b"x")                                         # the next one
        assert got.acquire(timeout=10)
        assert ch.recv_nowait() == b"m1"
        assert join(pid) == 0
    finally:
        w.close()
        kill(pid)
        for fd in (r, w_):
            os.close(fd)
        ch.detach()


@pytest.mark.timeout(60)
def test_watch_whose_notify_raises_keeps_the_error(pool):
    """A notify= that raises ends the watch's thread with the exception in
    ``error`` (where a destroyed channel's is), not silently."""
    ch = Channel.create(pool, capacity=16)

    def notify():
        raise RuntimeError("notify failed")
    w = ChannelWatch(ch, notify=notify)
    try:
        ch.send(b"m")
        w._thread.join(10)
        assert not w._thread.is_alive()
        assert isinstance(w.error, RuntimeError) and str(w.error) == "notify failed"
        assert ch.recv_nowait() == b"m"
    finally:
        w.close()
        ch.detach()
