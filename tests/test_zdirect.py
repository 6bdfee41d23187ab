"""The direct path's receive in one C call (channels_c/_zdirect.pxi,
``_zd_recv``): it takes only the next message of the stream it is given
(its sender, its channel, the next sequence number, the channel empty,
the gate open) and hands anything else back untouched, malformed or not;
the Python path (ember.transport.direct.Inbox) serves those.  In one
process: a ROUTER socket, DEALER senders, a local channel."""
import ctypes
import struct
import time

import pytest
import zmq

from ember.channels_c import Channel
from ember.channels_c._channels import DirectStream, _gate_close, _zd_init, _zd_recv, _zd_send
from ember.exceptions import ChannelError
from ember.pools_c import Pool

HDR = struct.Struct("<cQQ")          # ember.transport.direct.DIRECT_HDR


@pytest.fixture(scope="module", autouse=True)
def libzmq():
    from zmq.backend.cython import _zmq
    assert _zd_init(_zmq.__file__)


@pytest.fixture
def pool():
    p = Pool.create(8 << 20)
    yield p
    p.destroy()


@pytest.fixture
def net():
    """(router, its address for _zd_recv, a connected DEALER of identity b"S1")."""
    ctx = zmq.Context()
    r = ctx.socket(zmq.ROUTER)
    r.linger = 0
    r.rcvtimeo = 10_000                 # (a test that fails does not hang)
    r.bind("inproc://zd")
    socks = [r]

    def dealer(ident):
        d = ctx.socket(zmq.DEALER)
        d.linger = 0
        d.identity = ident
        d.connect("inproc://zd")
        socks.append(d)
        return d
    yield r, r.underlying, dealer(b"S1"), dealer
    for s in socks:
        s.close(linger=0)
    ctx.term()


class Cells:
    """A record cell and a gate word (8-aligned), kept alive by the test."""

    def __init__(self):
        self.cell = ctypes.c_uint64(0)
        self.gate = ctypes.c_uint64(0)

    def stream(self, c_uid, gated=True, sender=b"S1", every=128, nbytes=4 << 20):
        return DirectStream(sender, c_uid, ctypes.addressof(self.cell),
                            ctypes.addressof(self.gate) if gated else 0, every, nbytes)


def recv(ch, h, st):
    return _zd_recv(ch, h, st, 0)


def test_next_message_of_the_stream_is_taken(pool, net):
    r, h, d, _ = net
    ch = Channel.create(pool)
    cs = Cells()
    st = cs.stream(ch.c_uid)
    for seq in (1, 2, 3):
        d.send(HDR.pack(b"D", ch.c_uid, seq) + b"m%d" % seq)
        assert recv(ch, h, st) == b"m%d" % seq
        assert (cs.cell.value, st.last, cs.gate.value) == (seq, seq, 0)
    assert st.due == 3 * 3 and not st.ack_due
    ch.destroy()


def test_without_a_gate_the_cell_is_stored(pool, net):
    r, h, d, _ = net
    ch = Channel.create(pool)
    cs = Cells()
    st = cs.stream(ch.c_uid, gated=False)
    d.send(HDR.pack(b"D", ch.c_uid, 1) + b"x")
    assert recv(ch, h, st) == b"x" and cs.cell.value == 1
    ch.destroy()


def test_acknowledgement_due_after_every_takes_or_bytes(pool, net):
    r, h, d, _ = net
    ch = Channel.create(pool)
    cs = Cells()
    st = cs.stream(ch.c_uid, every=2, nbytes=1 << 20)
    d.send(HDR.pack(b"D", ch.c_uid, 1) + b"a")
    assert recv(ch, h, st) == b"a" and not st.ack_due
    d.send(HDR.pack(b"D", ch.c_uid, 2) + b"b")
    assert recv(ch, h, st) == b"b" and st.ack_due
    st.acked, st.due, st.ack_due = 2, 0, False
    st2 = Cells().stream(ch.c_uid, every=1000, nbytes=10)
    d.send(HDR.pack(b"D", ch.c_uid, 1) + b"0123456789")
    assert recv(ch, h, st2) == b"0123456789" and st2.ack_due          # 11 >= 10 bytes
    ch.destroy()


@pytest.mark.parametrize("frame", [
    b"", b"D", b"D" + b"\0" * 15,                       # short of a header
    b"X" + b"\0" * 16 + b"payload",                     # not a direct message
    b"w", b"q",                                         # a notice, a request
])
def test_malformed_or_other_frames_come_back_untouched(pool, net, frame):
    r, h, d, _ = net
    ch = Channel.create(pool)
    cs = Cells()
    st = cs.stream(ch.c_uid)
    d.send(frame)
    assert recv(ch, h, st) == (b"S1", frame, False)
    assert (cs.cell.value, st.last, st.due) == (0, 0, 0)
    ch.destroy()


def test_wrong_channel_sender_or_sequence_come_back(pool, net):
    r, h, d, dealer = net
    ch = Channel.create(pool)
    cs = Cells()
    st = cs.stream(ch.c_uid)
    cases = [
        (d, HDR.pack(b"D", ch.c_uid + 1, 1) + b"x"),     # another channel
        (dealer(b"S2"), HDR.pack(b"D", ch.c_uid, 1) + b"x"),   # another sender
        (dealer(b"S1x"), HDR.pack(b"D", ch.c_uid, 1) + b"x"),  # a longer id, same prefix
        (d, HDR.pack(b"D", ch.c_uid, 2) + b"x"),         # a gap
        (d, HDR.pack(b"D", ch.c_uid, 0) + b"x"),         # taken before
    ]
    for sock, frame in cases:
        sock.send(frame)
        sender, got, more = recv(ch, h, st)
        assert (sender, got, more) == (sock.identity, frame, False)
        assert (cs.cell.value, st.last) == (0, 0)
    ch.destroy()


def test_the_channel_first(pool, net):
    r, h, d, _ = net
    ch = Channel.create(pool)
    cs = Cells()
    st = cs.stream(ch.c_uid)
    ch.send(b"in the channel")
    frame = HDR.pack(b"D", ch.c_uid, 1) + b"direct"
    d.send(frame)
    assert recv(ch, h, st) == (b"S1", frame, False)      # not taken: the channel has one
    assert cs.cell.value == 0
    assert ch.recv() == b"in the channel"
    ch.destroy()


def test_a_closed_gate_takes_nothing(pool, net):
    r, h, d, _ = net
    ch = Channel.create(pool)
    cs = Cells()
    st = cs.stream(ch.c_uid)
    assert _gate_close(ctypes.addressof(cs.gate)) == 0
    frame = HDR.pack(b"D", ch.c_uid, 1) + b"x"
    d.send(frame)
    assert recv(ch, h, st) == (b"S1", frame, False)
    assert (cs.cell.value, cs.gate.value, st.last) == (0, 2, 0)
    assert not st.take(1, 1)                            # the Python path's take: refused too
    ch.destroy()


def test_more_frames_and_no_stream(pool, net):
    r, h, d, _ = net
    ch = Channel.create(pool)
    frame = HDR.pack(b"D", ch.c_uid, 1) + b"x"
    d.send_multipart([frame, b"extra"])
    assert recv(ch, h, Cells().stream(ch.c_uid)) == (b"S1", frame, True)
    assert r.recv() == b"extra" and not r.rcvmore
    d.send(frame)
    assert recv(ch, h, None) == (b"S1", frame, False)
    ch.destroy()


def test_nothing_comes(pool, net):
    r, h, d, _ = net
    ch = Channel.create(pool)
    st = Cells().stream(ch.c_uid)
    assert _zd_recv(ch, h, st, zmq.DONTWAIT) is None
    r.rcvtimeo = 20
    assert _zd_recv(ch, h, st, 0) is None
    ch.destroy()


def test_bad_arguments(pool, net):
    r, h, d, _ = net
    ch = Channel.create(pool)
    cs = Cells()
    with pytest.raises(ValueError):
        cs.stream(ch.c_uid, sender=b"")
    with pytest.raises(ValueError):
        cs.stream(ch.c_uid, sender=b"x" * 17)
    with pytest.raises(ValueError):
        DirectStream(b"S1", ch.c_uid, 0, 0, 1, 1)
    with pytest.raises(ValueError):
        DirectStream(b"S1", ch.c_uid, ctypes.addressof(cs.cell) + 4, 0, 1, 1)
    st = cs.stream(ch.c_uid)
    with pytest.raises(ValueError):
        st.gate = 3
    with pytest.raises(ValueError):
        _zd_recv(ch, h, cs.stream(ch.c_uid + 1), zmq.DONTWAIT)      # another channel's stream
    with pytest.raises(ValueError):
        _zd_recv(ch, 0, st, zmq.DONTWAIT)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)                       # a zmq error: a PUB socket cannot receive
    try:
        with pytest.raises(zmq.ZMQError):
            _zd_recv(ch, pub.underlying, st, zmq.DONTWAIT)
    finally:
        pub.close(linger=0)
        ctx.term()
    ch.destroy()
    with pytest.raises(ChannelError):
        _zd_recv(ch, h, st, zmq.DONTWAIT)                           # destroyed handle


def test_send_puts_the_header_and_the_data_in_one_frame(pool, net):
    r, h, d, _ = net
    for seq, data in ((1, b"x" * 64), (2, b""), (3, b"y" * (1 << 20))):
        _zd_send(d.underlying, 77, seq, data)
        assert r.recv_multipart() == [b"S1", HDR.pack(b"D", 77, seq) + data]
    ch = Channel.create(pool)                  # and the receive takes it
    st = Cells().stream(ch.c_uid)
    _zd_send(d.underlying, ch.c_uid, 1, b"m")
    assert _zd_recv(ch, h, st, 0) == b"m"
    ch.destroy()


def test_send_errors():
    ctx = zmq.Context()
    try:
        alone = ctx.socket(zmq.DEALER)             # no peer: full at once
        alone.sndtimeo = 20
        pull = ctx.socket(zmq.PULL)                # cannot send
        with pytest.raises(zmq.Again):
            _zd_send(alone.underlying, 1, 1, b"x")
        with pytest.raises(zmq.ZMQError):
            _zd_send(pull.underlying, 1, 1, b"x")
        with pytest.raises(ValueError):
            _zd_send(0, 1, 1, b"x")
        with pytest.raises(TypeError):
            _zd_send(alone.underlying, 1, 1, bytearray(b"x"))
    finally:
        alone.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def test_direct_out_sends_or_declines(net):
    from ember.channels_c._channels import DirectOut
    r, h, d, _ = net
    shared = [0]
    o = DirectOut(9, d.underlying, shared, 4, 2, 100)      # drain every 4, window 2 / 100 B
    assert o.send(b"a") and o.send(b"bb")
    assert (o.seq, o.nbytes, list(o.copies), shared) == (2, 3, [(1, b"a"), (2, b"bb")], [2])
    assert r.recv_multipart()[1] == HDR.pack(b"D", 9, 1) + b"a"
    assert r.recv_multipart()[1] == HDR.pack(b"D", 9, 2) + b"bb"
    assert not o.send(b"c")                                 # the window is full
    o.copies.popleft()
    o.nbytes = 2
    assert o.send(b"c") and shared == [3]
    o.copies.clear()
    o.nbytes = 0
    assert not o.send(b"d")                                 # the acknowledgements are due
    shared[0] = 0
    assert not o.send(bytearray(b"d"))                      # not bytes
    o.nbytes = 100
    assert not o.send(b"d")                                 # the window's bytes
    o.nbytes = 0
    o.handle = 0
    assert not o.send(b"d")                                 # no socket
    assert (o.seq, shared) == (3, [0])                      # nothing done by a decline
    r.recv_multipart()
    with pytest.raises(ValueError):
        DirectOut(9, d.underlying, [], 4, 2, 100)


def test_direct_out_send_that_raises_counts_nothing():
    from ember.channels_c._channels import DirectOut
    ctx = zmq.Context()
    alone = ctx.socket(zmq.DEALER)                 # no peer: full at once
    alone.sndtimeo = 20
    try:
        shared = [0]
        o = DirectOut(9, alone.underlying, shared, 4, 2, 100)
        with pytest.raises(zmq.Again):
            o.send(b"a")
        # no sequence number used, no copy kept: the next send is seq 1
        assert (o.seq, o.nbytes, list(o.copies), shared) == (0, 0, [], [0])
    finally:
        alone.close(linger=0)
        ctx.term()


LEN = struct.Struct("<I")            # ember.transport.direct.BATCH_LEN


def batch(c_uid, seq, *msgs):
    return HDR.pack(b"B", c_uid, seq) + b"".join(LEN.pack(len(m)) + m for m in msgs)


def test_direct_out_batches_a_stream_and_sends_an_isolated_message_alone(net):
    """An isolated message goes alone; one that follows within
    ``streaming`` joins a batch (one frame: "B", the first seq, each
    message's length and bytes), sent when it is full (messages or bytes),
    before a message that cannot join it, or by flush_batch; a retired
    DirectOut (handle 0) drops its batch (the copies are resent elsewhere)."""
    from ember.channels_c._channels import DirectOut
    r, h, d, _ = net
    shared = [0]
    # batches of 3 messages or 20 bytes (their records: 4 + the message's),
    # of messages up to 8 bytes; a stream within 10 s of the message before
    o = DirectOut(9, d.underlying, shared, 1000, 1000, 1 << 20, 3, 20, 8, 10.0)
    woke = []
    o.wake = lambda: woke.append(o.pending)
    assert o.send(b"a") and o.pending == 0                  # the first: alone
    assert r.recv_multipart()[1] == HDR.pack(b"D", 9, 1) + b"a"
    assert o.send(b"b") and o.send(b"cc") and o.pending == 2 and woke == [1]
    assert r.poll(50) == 0                                  # not sent yet
    assert o.send(b"d") and o.pending == 0                  # three: full
    assert r.recv_multipart()[1] == batch(9, 2, b"b", b"cc", b"d")
    assert o.send(b"e" * 8) and o.send(b"f" * 8) and o.pending == 0  # 24 bytes: full
    assert r.recv_multipart()[1] == batch(9, 5, b"e" * 8, b"f" * 8)
    assert o.send(b"g") and o.send(b"h" * 9)                # too large to join: after the batch
    assert r.recv_multipart()[1] == batch(9, 7, b"g")
    assert r.recv_multipart()[1] == HDR.pack(b"D", 9, 8) + b"h" * 9
    assert o.send(b"i") and o.flush_batch() and o.pending == 0
    assert r.recv_multipart()[1] == batch(9, 9, b"i")
    assert o.flush_batch()                                  # nothing to send
    assert (o.seq, o.batches, [s for s, _ in o.copies]) == (9, 4, list(range(1, 10)))
    assert o.send(b"j") and o.pending == 1
    o.handle = 0
    assert o.flush_batch() and o.pending == 0 and r.poll(50) == 0    # retired: dropped
    assert o.seq == 10 and o.copies[-1] == (10, b"j")
    with pytest.raises(ValueError):
        o.put(b"k")                                          # sends no more
    with pytest.raises(ValueError):
        DirectOut(9, d.underlying, shared, 4, 2, 100, -1)
    with pytest.raises(ValueError):
        DirectOut(9, d.underlying, shared, 4, 2, 100, 3, 8, 4, float("nan"))
    # a message after a pause (longer than streaming, 50 ms here) goes
    # alone, after the batch.  b joins a's batch only if this thread ran on
    # from a's send to b's (at 1 ms, a preemption between the two sent b
    # alone): a try whose two sends took streaming or more says nothing
    # and is made again (a and b, alone or batched: two frames)
    for _ in range(50):
        o = DirectOut(9, d.underlying, shared, 1000, 1000, 1 << 20, 3, 20, 8, 0.05)
        t0 = time.monotonic()
        assert o.send(b"a") and o.send(b"b")
        if time.monotonic() - t0 < 0.05:
            break
        assert o.flush_batch()
        r.recv_multipart(), r.recv_multipart()
    assert o.pending == 1
    time.sleep(0.1)
    assert o.send(b"c") and o.pending == 0
    assert [r.recv_multipart()[1] for _ in range(3)] == [
        HDR.pack(b"D", 9, 1) + b"a", batch(9, 2, b"b"), HDR.pack(b"D", 9, 3) + b"c"]
    # batching off (batch 0): every message alone, however close
    o = DirectOut(9, d.underlying, shared, 1000, 1000, 1 << 20, 0, 20, 8, 10.0)
    assert o.send(b"a") and o.send(b"b") and o.pending == 0
    assert [r.recv_multipart()[1] for _ in range(2)] == [HDR.pack(b"D", 9, 1) + b"a",
                                                         HDR.pack(b"D", 9, 2) + b"b"]


def test_a_batch_is_taken_one_message_at_a_time_and_a_malformed_one_is_not(pool, net):
    """The one-call receive takes a batch's first message and holds the rest
    in the stream (the next ones: spill gives them to the Python path); a
    malformed batch (a length past its end, a cut length, a byte after its
    last message, no message) comes back untouched, nothing taken."""
    from ember.channels_c._channels import _zd_records
    r, h, d, _ = net
    ch = Channel.create(pool)
    cs = Cells()
    st = cs.stream(ch.c_uid)
    good = batch(ch.c_uid, 1, b"m1", b"", b"m3")
    d.send(good)
    assert recv(ch, h, st) == b"m1" and st.holds and (st.last, cs.cell.value) == (1, 1)
    assert st.spill() == [(2, b""), (3, b"m3")] and not st.holds and st.spill() == []
    assert _zd_records(good) == [b"m1", b"", b"m3"]
    assert _zd_records(good, len(good)) is None and _zd_records(good, 3) is None
    d.send(batch(ch.c_uid, 2, b"only"))                  # one message: nothing held
    assert recv(ch, h, st) == b"only" and not st.holds and st.last == 2
    for bad in (HDR.pack(b"B", ch.c_uid, 3) + b"\xff\xff\xff\xff",
                HDR.pack(b"B", ch.c_uid, 3) + LEN.pack(3) + b"ab",
                batch(ch.c_uid, 3, b"a") + b"\x01",
                HDR.pack(b"B", ch.c_uid, 3) + b"\x01\x00",
                HDR.pack(b"B", ch.c_uid, 3)):
        d.send(bad)
        assert recv(ch, h, st) == (b"S1", bad, False)
        assert _zd_records(bad) is None
        assert (st.last, cs.cell.value, st.holds) == (2, 2, False)
    ch.send(b"local")                                    # the channel first: not taken
    d.send(batch(ch.c_uid, 3, b"x"))
    assert recv(ch, h, st) == (b"S1", batch(ch.c_uid, 3, b"x"), False) and st.last == 2
    ch.destroy()
