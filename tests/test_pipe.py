"""ember.Pipe / Connection and ember.wait: multiprocessing.connection's
semantics across real managed processes (ember_runtime fixture), EOF on a
closed or dead peer instead of a hang."""
import array
import multiprocessing
import os
import pickle
import re
import signal
import time

import numpy as np
import pytest

import ember
from ember.exceptions import ChannelClosed
from objhelp import join, kill, spawn, uids

pytest_plugins = ["ember.testing"]


@pytest.mark.timeout(60)
def test_duplex_send_recv_poll(ember_runtime):
    a, b = ember.Pipe()
    assert a.readable and a.writable and b.readable and b.writable
    assert not b.poll() and not b.poll(0.01)
    a.send({"x": [1, 2]})
    a.send(None)
    assert b.poll() and b.poll(None)
    assert b.recv() == {"x": [1, 2]} and b.recv() is None
    b.send("back")
    assert a.recv() == "back"
    a.close()
    b.close()


@pytest.mark.timeout(60)
def test_simplex_ends_refuse_the_wrong_direction(ember_runtime):
    r, w = ember.Pipe(duplex=False)
    assert r.readable and not r.writable and w.writable and not w.readable
    w.send(1)
    assert r.recv() == 1
    with pytest.raises(OSError, match=r"^connection is read-only$"):
        r.send(1)
    with pytest.raises(OSError, match=r"^connection is write-only$"):
        w.recv()
    with pytest.raises(OSError, match=r"^connection is write-only$"):
        w.poll()


@pytest.mark.timeout(60)
def test_bytes_offsets_and_recv_bytes_into(ember_runtime):
    a, b = ember.Pipe()
    a.send_bytes(b"abcdef")
    a.send_bytes(b"abcdef", 2)
    a.send_bytes(b"abcdef", 1, 3)
    a.send_bytes(array.array("i", [1, 2, 3]), 1, 4)        # offset/size in bytes of the cast view
    assert b.recv_bytes() == b"abcdef"
    assert b.recv_bytes() == b"cdef"
    assert b.recv_bytes() == b"bcd"
    assert b.recv_bytes() == array.array("i", [1, 2, 3]).tobytes()[1:5]
    for args, msg in (((b"ab", -1), "offset is negative"), ((b"ab", 3), "buffer length < offset"),
                      ((b"ab", 0, -1), "size is negative"),
                      ((b"ab", 1, 2), "buffer length < offset + size")):
        with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
            a.send_bytes(*args)
    a.send_bytes(b"12345")
    buf = bytearray(8)
    assert b.recv_bytes_into(buf, 2) == 5 and buf == b"\0\x0012345\0"
    # the offset is in bytes whatever the buffer's item size, as multiprocessing's
    a.send_bytes(array.array("i", [7, 8]))
    ints = array.array("i", [0] * 6)
    assert b.recv_bytes_into(ints, 3 * ints.itemsize) == 2 * ints.itemsize
    assert list(ints) == [0, 0, 0, 7, 8, 0]
    a.send_bytes(b"zz")
    assert b.recv_bytes_into(ints, 24 - 2) == 2 and ints.tobytes()[22:] == b"zz"
    for off, msg in ((-1, "negative offset"), (25, "offset too large")):
        with pytest.raises(ValueError, match=f"^{msg}$"):
            b.recv_bytes_into(ints, off)
    a.send_bytes(b"x" * 20)
    with pytest.raises(multiprocessing.BufferTooShort) as ei:
        b.recv_bytes_into(bytearray(4))
    assert ei.value.args[0] == b"x" * 20
    big = os.urandom(3 << 20)
    a.send_bytes(big)
    assert b.recv_bytes() == big
    a.send_bytes(b"toolong")
    with pytest.raises(OSError, match=r"^bad message length$"):
        b.recv_bytes(3)
    assert b.closed


def _readable(fd, timeout=0):
    import select
    return bool(select.select([fd], [], [], timeout)[0])


def _until(cond):
    while not cond():
        os.sched_yield()


@pytest.mark.timeout(60)
def test_fileno_is_readable_while_there_is_something_to_receive(ember_runtime):
    """fileno(): a descriptor readable while the end has a message or
    end-of-file, and only then, as the stdlib's socket (there was no
    fileno()): select waits for a child's message; the fd is clear again
    once the messages are received; recv_bytes and recv_bytes_into keep it
    too; end-of-file keeps it readable; closing closes it."""
    a, b = ember.Pipe()
    fd = b.fileno()
    assert isinstance(fd, int) and b.fileno() == fd and not _readable(fd)
    p = spawn("""
        a, = ARGS
        a.send("from the child")
        a.send_bytes(b"two")
        a.send_bytes(b"three")
        a.close()
        """, a)
    assert _readable(fd, None)                  # select waits for the child's message
    assert b.recv() == "from the child"
    assert b.recv_bytes() == b"two"
    _until(lambda: b.poll())
    assert b.recv_bytes_into(bytearray(8)) == 5
    assert join(p) == 0
    a.close()
    _until(lambda: _readable(fd))               # end-of-file: readable, and stays so
    with pytest.raises(EOFError):
        b.recv()
    assert _readable(fd)
    a, b = ember.Pipe()
    fd = b.fileno()
    a.send(1)
    _until(lambda: _readable(fd))
    assert b.recv() == 1
    _until(lambda: not _readable(fd))           # received: clear again
    a.send(2)
    assert _readable(fd, None) and b.recv() == 2
    b.close()
    with pytest.raises(OSError, match=r"^handle is closed$"):
        b.fileno()
    r, w = ember.Pipe(duplex=False)
    with pytest.raises(OSError, match=r"^connection is write-only$"):
        w.fileno()
    assert not _readable(r.fileno())
    for c in (a, r, w):
        c.close()


@pytest.mark.timeout(120)
def test_fileno_is_clear_when_the_last_receive_returns(ember_runtime):
    """The receive that empties the end clears fileno() before it returns,
    as a socket is never readable with nothing to read: a program that
    selects on several ends and receives from the one reported must not
    be sent to an empty one (it waited there while another had data).  It
    stayed readable until the watch's thread woke (a moment later): the
    select at once reported it."""
    a, b = ember.Pipe()
    fd = b.fileno()
    for i in range(300):
        a.send(i)
        if i % 3 == 0:
            a.send_bytes(b"second")
        assert _readable(fd, None)
        assert b.recv() == i
        if i % 3 == 0:
            assert _readable(fd)                # one more to receive
            assert b.recv_bytes() == b"second"
        assert not _readable(fd), i             # at once: no sleep
    a.send_bytes(b"into")                       # recv_bytes_into too
    assert _readable(fd, None) and b.recv_bytes_into(bytearray(8)) == 4
    assert not _readable(fd)
    for c in (a, b):
        c.close()


@pytest.mark.timeout(60)
def test_close_with_a_fileno_does_not_wait_for_the_watch(ember_runtime):
    """close() of a handle whose fileno() was asked for returns without
    joining the watch's thread, which may be in a Channel.poll of up to 50
    ms (it waited for it): right after close the fd is closed and the
    thread, still in its poll, ends by itself; a handle collected at once
    after its close has its channels detached by that thread as it ends."""
    alive = 0
    for _ in range(10):
        a, b = ember.Pipe()
        fd = b.fileno()
        watch = b._fdw[0]
        b.close()
        alive += watch._thread.is_alive()       # not joined: still in its poll
        with pytest.raises(OSError):
            os.fstat(fd)
        del b                                   # collected: its channels wait for the thread
        watch._thread.join(10)
        assert not watch._thread.is_alive()
        with pytest.raises(ember.ChannelError):
            watch.channel.poll(0)               # detached by the thread as it ended
        a.close()
    assert alive


@pytest.mark.timeout(60)
def test_closed_handle_and_eof_after_the_peer_closes(ember_runtime):
    a, b = ember.Pipe()
    a.send("last")
    a.close()
    for op in (lambda: a.send(1), a.recv, a.poll, lambda: pickle.dumps(a)):
        with pytest.raises(OSError, match=r"^handle is closed$"):
            op()
    assert b.poll(10)
    assert b.recv() == "last"
    assert b.poll(10)                           # end-of-file counts as readable
    with pytest.raises(EOFError, match=r"^the other end of pipe \d+ was closed \(or its last "
                                       r"holder died\) and everything it sent was received$"):
        b.recv()
    with pytest.raises(ChannelClosed):
        b.recv_bytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("duplex", [True, False])
def test_send_to_a_closed_peer_raises_broken_pipe(ember_runtime, duplex):
    """As multiprocessing: once the other end is closed (every handle),
    send and send_bytes raise BrokenPipeError (errno EPIPE), not succeed
    silently; the end's own receive still drains, then reads EOF."""
    import errno
    reader, writer = ember.Pipe(duplex)          # simplex: the first end reads, the second writes
    if duplex:
        reader.send("to the writer")
    writer.send("before")
    reader.close()
    msg = r"^\[Errno 32\] the other end of pipe \d+ was closed \(or its last holder died\): " \
          r"nobody receives any more$"
    deadline = time.monotonic() + 30
    while True:                                  # GS closes the channel once it hears of the close
        try:
            writer.send("after")
        except BrokenPipeError as exc:
            assert exc.errno == errno.EPIPE and re.match(msg, str(exc)), str(exc)
            break
        assert time.monotonic() < deadline, "send never raised BrokenPipeError"
        time.sleep(0.05)                         # (fewer sends than the pipe's capacity)
    with pytest.raises(BrokenPipeError, match=msg):
        writer.send(b"x" * 100_000)              # a large message: its pool block is freed
    with pytest.raises(BrokenPipeError, match=msg):
        writer.send_bytes(b"raw")
    if duplex:
        assert writer.recv() == "to the writer"
        with pytest.raises(EOFError):
            writer.recv()
    writer.close()


@pytest.mark.timeout(120)
def test_child_echo_and_numpy_through_a_pipe(ember_runtime):
    parent, child = ember.Pipe()
    p = spawn("""
        conn, = ARGS
        while True:
            try:
                obj = conn.recv()
            except EOFError:
                break
            conn.send(obj)
        """, child)
    child.close()          # the child holds its own handle: the pipe stays open
    arr = np.arange(2_000_000, dtype=np.int32)
    for obj in (1, "two", arr, {"a": arr[:10]}):
        parent.send(obj)
        got = parent.recv()
        if isinstance(obj, np.ndarray):
            assert np.array_equal(got, obj) and not got.flags.owndata
        elif isinstance(obj, dict):
            assert np.array_equal(got["a"], obj["a"])
        else:
            assert got == obj
    parent.close()         # the child reads EOF and exits
    assert join(p) == 0


@pytest.mark.timeout(120)
def test_recv_from_a_killed_peer_raises_eoferror_instead_of_hanging(ember_runtime):
    parent, child = ember.Pipe()
    p = spawn("""
        conn, = ARGS
        conn.send("ready")
        conn.recv()          # blocks until killed
        """, child)
    child.close()
    assert parent.recv() == "ready"
    kill(p)
    assert join(p) == -signal.SIGKILL
    with pytest.raises(EOFError, match=r"^the other end of pipe \d+ was closed"):
        parent.recv()
    # the pipe object ends with its last handle
    o_uid = parent._rec["o_uid"]
    parent.close()
    assert o_uid not in uids()


@pytest.mark.timeout(60)
def test_wait_on_connections_queues_and_file_descriptors(ember_runtime):
    a, b = ember.Pipe()
    q = ember.Queue()
    rfd, wfd = os.pipe()
    try:
        assert ember.wait([b, q, rfd], timeout=0) == []
        assert ember.wait([b, q, rfd], timeout=0.05) == []
        assert ember.wait([b, q], timeout=0.01) == []
        a.send(1)
        assert ember.wait([b, q, rfd], timeout=10) == [b]
        q.put(2)
        assert ember.wait([q, b], timeout=10) == [q, b]
        assert b.recv() == 1 and q.get() == 2
        os.write(wfd, b"x")
        assert ember.wait([b, q, rfd], timeout=10) == [rfd]
        assert ember.wait([rfd], timeout=10) == [rfd]
        with pytest.raises(TypeError, match=r"^ember.wait\(\) takes Connections, Queues, "
                                            r"channels, file descriptors and objects with "
                                            r"fileno\(\) or an int sentinel, not str$"):
            ember.wait(["x"])
        a.close()
        assert ember.wait([b], timeout=10) == [b]          # EOF is ready
    finally:
        os.close(rfd)
        os.close(wfd)


@pytest.mark.timeout(120)
def test_wait_wakes_for_a_message_from_another_process(ember_runtime):
    a, b = ember.Pipe()
    q = ember.Queue()
    p = spawn("""
        conn, q = ARGS
        conn.recv()
        q.put("from child")
        """, a, q)
    b.send("go")
    assert ember.wait([q], timeout=60) == [q]
    assert q.get() == "from child"
    assert join(p) == 0


def _proc_worker(conn, q, lock, arr):
    with lock:
        q.put(conn.recv() * 2)
    conn.send(arr.sum())


@pytest.mark.timeout(120)
def test_handles_as_ember_process_arguments_and_wait_on_its_sentinel(ember_runtime):
    a, b = ember.Pipe()
    q, lock = ember.Queue(), ember.Lock()
    arr = np.arange(100_000, dtype=np.int64)
    p = ember.Process(target=_proc_worker, args=(b, q, lock, arr))
    p.start()
    b.close()                                   # the child holds its own handle of that end
    assert ember.wait([a, q], timeout=0) == []
    a.send(21)
    assert q.get(timeout=60) == 42
    assert a.recv() == arr.sum()
    assert ember.wait([a, p.sentinel], timeout=60) != []
    p.join()
    assert p.exitcode == 0
    assert ember.wait([p.sentinel], timeout=10) == [p.sentinel]
    with pytest.raises(EOFError):               # the child's end went with it
        a.recv()
    p.close()
