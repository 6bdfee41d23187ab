"""The transport agent's data plane (ember.transport.agent.DataServer) and
its poller, driven in this process: a real zmq ROUTER/DEALER pair over TCP
on 127.0.0.1 and a real channel in a real pool (the several-node runtime
around them is tested in test_multinode*.py)."""
import os
import threading
import time

import pytest
import zmq

from ember.channels_c import Channel
from ember.exceptions import ChannelEmpty
from ember.pools_c import Pool
from ember.transport import agent as A


@pytest.fixture
def plane():
    pool = Pool.create(4 << 20)
    ch = Channel.create(pool, capacity=64, block_size=256)
    ctx = zmq.Context(1)
    srv = ctx.socket(zmq.ROUTER)
    port = srv.bind_to_random_port("tcp://127.0.0.1")
    cli = ctx.socket(zmq.DEALER)
    cli.connect(f"tcp://127.0.0.1:{port}")
    data = A.DataServer(srv)
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    poller = A._Poller([srv], [efd])
    try:
        yield ch, srv, cli, data, poller, efd
    finally:
        data.close()
        os.close(efd)
        cli.close(0)
        srv.close(0)
        ctx.term()
        ch.destroy()
        pool.destroy()


def _serve_until(data, poller, srv, cond, timeout=10.0):
    """Run the agent's loop body until ``cond()`` (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the agent's loop did not get there"
        events = data.poll(poller, time.monotonic() + 0.5)
        if srv in events and data.pump():
            poller.fresh(srv)


def _arrived(srv):
    """Wait until input is at ``srv`` (ZMQ_EVENTS: its descriptor's notice
    may be taken by this, so only for a socket the poller asks before its
    wait, touch()-ed or returned by its last wait).  A sleep only hoped the
    I/O thread had passed it on by then."""
    assert srv.poll(60000, zmq.POLLIN) & zmq.POLLIN, "no input reached the socket"


def _attach(ch, srv, cli, data, poller):
    cli.send_multipart([A.ATTACH_HDR.pack(A.OP_ATTACH, ch.c_uid, 1), ch.sdesc])
    _serve_until(data, poller, srv, lambda: ch.c_uid in data.chans)
    assert cli.poll(10000)
    assert cli.recv_multipart()[0][:1] == A.R_OK


def _sendf(c_uid, payload):
    return A.SEND_HDR.pack(A.OP_SENDF, c_uid) + A.LEN.pack(len(payload)) + payload


def _batch(c_uid, msgs):
    return [A.SEND_HDR.pack(A.OP_SENDB, c_uid),
            b"".join(A.LEN.pack(len(m)) + m for m in msgs)]


def test_one_frame_sends_keep_order_with_the_other_kinds(plane):
    ch, srv, cli, data, poller, _ = plane
    _attach(ch, srv, cli, data, poller)
    sent = []
    for i in range(30):
        m = f"m{i}".encode()
        kind = i % 3
        if kind == 0:
            cli.send(_sendf(ch.c_uid, m))                     # header and message in one frame
            sent.append(m)
        elif kind == 1:
            cli.send_multipart([A.SEND_HDR.pack(A.OP_SEND, ch.c_uid), m])
            sent.append(m)
        else:
            ms = [m + b"a", m + b"b"]
            cli.send_multipart(_batch(ch.c_uid, ms))
            sent.extend(ms)
    _serve_until(data, poller, srv, lambda: len(ch) == len(sent))
    assert [ch.recv(0) for _ in sent] == sent
    # all acknowledged (on the quiet wake-up after ACK_DELAY)
    _serve_until(data, poller, srv, lambda: not data.acks)
    got = 0
    while got < len(sent) and cli.poll(60000):
        hdr = cli.recv_multipart()[0]
        assert hdr[:1] == A.R_ACK
        got += A.ACK.unpack(hdr)[2]
    assert got == len(sent)
    # and no more: the ack of one more message comes next, counting it
    # alone (an ack sent twice would come before it: one connection keeps
    # their order), not after some silence
    cli.send(_sendf(ch.c_uid, b"last"))
    _serve_until(data, poller, srv, lambda: len(ch) == 1)
    _serve_until(data, poller, srv, lambda: not data.acks)
    assert cli.poll(60000)
    hdr = cli.recv_multipart()[0]
    assert hdr[:1] == A.R_ACK and A.ACK.unpack(hdr)[1:] == (ch.c_uid, 1), A.ACK.unpack(hdr)
    assert ch.recv(0) == b"last"


def test_one_frame_send_that_finds_the_channel_full_waits_in_order(plane):
    ch, srv, cli, data, poller, _ = plane
    _attach(ch, srv, cli, data, poller)
    n = ch.capacity + 10
    for i in range(n):
        cli.send(_sendf(ch.c_uid, b"%d" % i))

    def waiting():                 # the messages the agent holds for want of room
        if ch.c_uid not in data.full:
            return 0
        return 1 + len(data.full[ch.c_uid][3])     # the one retried, those behind it

    # every message read from the socket (they may come in several reads):
    # the channel full, the rest waiting in order
    _serve_until(data, poller, srv, lambda: len(ch) + waiting() == n)
    assert len(ch) == ch.capacity
    got = []

    def drained():                 # the receiver empties the channel, the agent retries
        while True:
            try:
                got.append(ch.recv(0))
            except ChannelEmpty:
                break
        data.retry()
        return len(got) == n

    _serve_until(data, poller, srv, drained)
    assert got == [b"%d" % i for i in range(n)]


def test_malformed_one_frame_send_is_its_senders_error(plane):
    ch, srv, cli, data, poller, _ = plane
    _attach(ch, srv, cli, data, poller)
    bad = A.SEND_HDR.pack(A.OP_SENDF, ch.c_uid) + A.LEN.pack(50) + b"short"
    cli.send(bad)
    _serve_until(data, poller, srv, lambda: cli.poll(0))
    hdr, text = cli.recv_multipart()
    assert hdr[:1] == A.R_ERR
    assert text.startswith(b"ValueError\0") and b"truncated" in text
    # the channel lives on for the next (good) message
    cli.send(_sendf(ch.c_uid, b"good"))
    _serve_until(data, poller, srv, lambda: len(ch) == 1)
    assert ch.recv(0) == b"good"


@pytest.mark.parametrize("frames, why", [
    ([A.OP_SENDF + b"\1\2\3"], "shorter than its op's header"),
    ([A.OP_RECV + b"\0" * 8], "shorter than its op's header"),
    ([A.SEND_HDR.pack(A.OP_SENDB, 7)], "a frame its op needs is missing"),
    ([b"z" + b"\0" * 8, b"x"], "unknown op"),
])
def test_malformed_header_gets_an_error_reply_and_the_agent_serves_on(plane, frames, why):
    ch, srv, cli, data, poller, _ = plane
    cli.send_multipart(frames)
    _serve_until(data, poller, srv, lambda: cli.poll(0))
    hdr, text = cli.recv_multipart()
    assert A.ERR.unpack(hdr) == (A.R_ERR, 0, 0)
    assert text.decode() == (f"ValueError\0malformed data-plane message: op {frames[0][:1]!r}, "
                             f"first frame of {len(frames[0])} bytes: {why}")
    _attach(ch, srv, cli, data, poller)          # and it serves on
    cli.send(_sendf(ch.c_uid, b"good"))
    _serve_until(data, poller, srv, lambda: len(ch) == 1)
    assert ch.recv(0) == b"good"


def test_poller_sees_input_after_the_socket_was_used_and_plain_fds_under_a_stream(plane):
    ch, srv, cli, data, poller, efd = plane
    _attach(ch, srv, cli, data, poller)
    # the socket was used (the attach reply): its events are asked before a
    # wait, so a message that came meanwhile is reported without waiting
    cli.send(_sendf(ch.c_uid, b"a"))
    _arrived(srv)
    poller.touch(srv)
    assert srv in poller.wait(60.0)
    assert data.pump() is True                  # ended on "no input left"
    poller.fresh(srv)
    assert ch.recv(0) == b"a"
    # a wait that began before the input came wakes for it: a descriptor...
    t = threading.Timer(0.2, os.eventfd_write, (efd, 1))
    t.start()
    assert poller.wait(60.0) == [efd]
    t.join()
    os.eventfd_read(efd)
    # ... and the socket (its ZMQ_FD), after the pump and the fresh() above
    t = threading.Timer(0.2, cli.send, (_sendf(ch.c_uid, b"b"),))
    t.start()
    assert srv in poller.wait(60.0)
    t.join()
    assert data.pump() is True
    assert ch.recv(0) == b"b"
    # a descriptor is reported while the socket has input too
    for _ in range(5):
        cli.send(_sendf(ch.c_uid, b"s"))
    _arrived(srv)                               # (the socket was returned: asked before the wait)
    os.eventfd_write(efd, 1)
    ready = poller.wait(60.0)
    assert srv in ready and efd in ready
    os.eventfd_read(efd)
