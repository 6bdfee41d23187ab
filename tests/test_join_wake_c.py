"""The creator's side of the join wake board in C (wakeboard.c, through
``ember.channels_c._channels._BoardPublisher``), against GS's side of the
board (wakeboard.py's Board) on real pools, channels and locks, without a
runtime: the register it packs is the one msgpack packs, each listed joiner
gets the board's record and is counted, a name nobody waits for (or a busy
board, or a full GS input) claims nothing and changes nothing, and a board
lock left held by a dead process is taken over.  The runtime's view (join
before/after create, many joiners, deaths mid-publish, timeouts) is in
test_join_wake.py."""
import binascii
import os
import time

import pytest

from ember import messages as m
from ember.channels_c import Channel
from ember.channels_c import _channels as C
from ember.descriptors import ChannelDescriptor
from ember.exceptions import ChannelEmpty, CoreError, DescriptorError
from ember.globalservices import wakeboard as wb
from ember.pools_c import Pool

pytestmark = pytest.mark.timeout(60)

P_UID, KEY, M_UID, NODE = 7, bytes.fromhex("00ff" * 8), 3, 0
OD = {"capacity": 128, "block_size": 1024, "ref_count": False, "node": None}


class Rig:
    """GS's side (a board in an 'infrastructure' pool, GS's input channel,
    joiners' reply channels there) and a creator's publisher on it."""

    def __init__(self, gs_capacity=16):
        self.inf = Pool.create(4 << 20)
        self.dflt = Pool.create(8 << 20)
        self.board = wb.Board.make(self.inf, M_UID, NODE)
        self.gs = Channel.create(self.inf, capacity=gs_capacity, block_size=1024)
        self.replies = []
        self.client_board = wb.Board.attach(self.board.descriptor())
        self.pub = C._BoardPublisher(self.dflt, self.client_board.alloc,
                                     self.client_board.lock_alloc, self.inf, self.gs, P_UID,
                                     KEY, M_UID, NODE, 0, m._packb(OD))

    def reply_channel(self):
        ch = Channel.create(self.inf, capacity=8, block_size=1024)
        self.replies.append(ch)
        return ch

    def publish(self, name, tag=1, r=None, c_uid=1000, ref_count=False, od=OD):
        r = r if r is not None else bytes(152)
        return self.pub.create(c_uid, 128, 1024, ref_count, name.encode(), tag, r, m._packb(od))

    def entry(self, name):
        _, _, head = self.board._entry(name.encode())
        return head

    def close(self):
        self.client_board.close()
        self.board.close(destroy=True)
        for ch in self.replies:
            ch.destroy()
        self.gs.destroy()
        self.dflt.destroy()
        self.inf.destroy()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def test_geometry_and_index_match_the_python_side():
    assert C.BOARD_REGISTER_PUBLISHED == m.ChannelRegisterPublished.code
    assert C.BOARD_GEOMETRY == (wb._HDR, wb.N_ENTRIES, wb.ENTRY, wb.MAX_NAME, wb.MAX_WAITERS,
                                wb._R_MAX, wb.SIZE)
    for name in (b"a", b"wb-k2", "\u00e9t\u00e9".encode(), bytes(range(1, 97)), b"x" * 300):
        assert C._board_index(name) == binascii.crc32(name) % wb.N_ENTRIES


@pytest.mark.parametrize("name", ["n", "x" * 31, "y" * 32, "z" * 255, "w" * 256, "\u00e9" * 40000])
def test_the_register_is_the_one_msgpack_packs(rig, name):
    """Nobody waits: nothing is claimed (-1), and the register made in C
    decodes to exactly the ChannelRegister the general path sends (every
    str length class, the descriptor written in)."""
    r = bytes(range(152))
    ch, reg, n = rig.publish(name, tag=2**40 + 5, r=r, c_uid=4242)
    try:
        assert n == -1
        msg = m.unpack(reg)
        want = m.ChannelRegister(2**40 + 5, P_UID, r, KEY, None, name, OD, ch.sdesc)
        assert type(msg) is m.ChannelRegister and msg.pack() == want.pack()
        assert Channel.describe(ch.sdesc)[4] == 4242
        with pytest.raises(ChannelEmpty):          # nothing queued on GS's input
            rig.gs.recv_nowait()
    finally:
        ch.destroy()


def test_every_listed_joiner_is_answered_and_counted(rig):
    """MAX_WAITERS joiners listed by GS: one publish answers each on its
    reply channel with the board's record (decoded by the receive into the
    channel's descriptor), queues the register for GS, and leaves the entry
    WOKEN with all of them counted (GS's take() returns them)."""
    name = "wb-many"
    js = []
    for k in range(wb.MAX_WAITERS):
        ch = rig.reply_channel()
        assert rig.board.listen(name, 100 + k, ch.sdesc)
        js.append(ch)
    assert not rig.board.listen(name, 999, rig.reply_channel().sdesc)   # full: through GS
    assert rig.entry(name)[0] == wb.WAITING
    ch, reg, n = rig.publish(name, tag=9, c_uid=77, ref_count=True)
    try:
        assert n == wb.MAX_WAITERS
        for k, j in enumerate(js):
            tag, d = j._recv_reply(5, ChannelDescriptor)
            assert tag == 100 + k
            assert (d.m_uid, d.c_uid, d.name, d.node, d.capacity, d.block_size, d.ref_count,
                    d.sdesc) == (M_UID, 77, name, NODE, 128, 1024, True, ch.sdesc)
        assert rig.gs.recv(timeout=5) == reg                   # queued for GS
        state, _, p_uid, c_uid, listed, answered = rig.entry(name)
        assert (state, p_uid, c_uid, listed, answered) == (wb.WOKEN, P_UID, 77, 5, 5)
        done = rig.board.take(name, (P_UID, 77), lambda p: True)
        assert done == {(100 + k, j.sdesc) for k, j in enumerate(js)}
        assert rig.entry(name)[0] == wb.FREE
    finally:
        ch.destroy()


def test_a_joiner_s_reply_channel_is_kept_attached(rig):
    """The publisher keeps the reply channels it attached (wakeboard.h,
    ember_wb_cache_t): a joiner that parks again on the same reply channel
    is answered through the handle kept, another joiner's is kept beside
    it; a kept channel destroyed meanwhile (listed again only by a broken
    GS) is answered nothing and forgotten, as a fresh attach would fail."""
    j, j2 = rig.reply_channel(), rig.reply_channel()
    assert rig.pub.kept == 0
    for k, (name, joiners) in enumerate((("wb-k1", [j]), ("wb-k2", [j]), ("wb-k3", [j, j2]))):
        for t, ch in enumerate(joiners):
            assert rig.board.listen(name, 10 * k + t, ch.sdesc)
        ch, reg, n = rig.publish(name, tag=k, c_uid=200 + k)
        try:
            assert n == len(joiners)
            for t, jc in enumerate(joiners):
                tag, d = jc._recv_reply(5, ChannelDescriptor)
                assert (tag, d.c_uid, d.name) == (10 * k + t, 200 + k, name)
            assert rig.gs.recv(timeout=5) == reg
            rig.board.take(name, (P_UID, 200 + k), lambda p: True)
        finally:
            ch.destroy()
        assert rig.pub.kept == (1 if k < 2 else 2)
    rig.replies.remove(j)
    sd = j.sdesc
    j.destroy()
    assert rig.board.listen("wb-k4", 40, sd)
    ch, reg, n = rig.publish("wb-k4", tag=4, c_uid=204)
    try:
        assert n == 0 and rig.pub.kept == 1
    finally:
        ch.destroy()


def test_another_name_in_the_entry_is_left_alone(rig):
    """Two names of one entry: the second's publish claims nothing."""
    a = "wb-a"
    b = next(f"wb-{i}" for i in range(10000)
             if f"wb-{i}" != a and wb._index(f"wb-{i}".encode()) == wb._index(a.encode()))
    j = rig.reply_channel()
    assert rig.board.listen(a, 1, j.sdesc)
    ch, _, n = rig.publish(b)
    ch.destroy()
    assert n == -1 and rig.entry(a)[0] == wb.WAITING
    with pytest.raises(ChannelEmpty):
        j.recv_nowait()


def test_a_busy_board_or_a_full_gs_input_claims_nothing():
    """The lock held (a creator stopped holding it): the publish gives up
    after its short wait; GS's input full: the entry goes back to WAITING.
    Both return -1 (the caller sends the register itself) and answer no one."""
    rig = Rig(gs_capacity=1)
    try:
        j = rig.reply_channel()
        assert rig.board.listen("wb-b", 1, j.sdesc)
        assert rig.board.lock.acquire(timeout=1)
        try:
            ch, _, n = rig.publish("wb-b")
            ch.destroy()
        finally:
            rig.board.lock.release()
        assert n == -1 and rig.entry("wb-b")[0] == wb.WAITING
        rig.gs.send(b"filler")
        ch, _, n = rig.publish("wb-b")
        ch.destroy()
        assert n == -1 and rig.entry("wb-b")[:2] == (wb.WAITING, 4)
        with pytest.raises(ChannelEmpty):
            j.recv_nowait()
        assert rig.gs.recv_nowait() == b"filler"
    finally:
        rig.close()


def test_a_lock_left_held_by_a_dead_process_is_taken_over(rig):
    """A process that died holding the board's lock: the publish is told
    (OWNER_DIED), marks the lock consistent and goes on."""
    j = rig.reply_channel()
    assert rig.board.listen("wb-d", 5, j.sdesc)
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if rig.board.lock.acquire(timeout=5) else 1)   # dies holding it
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    ch, _, n = rig.publish("wb-d", c_uid=55)
    try:
        assert n == 1
        tag, d = j._recv_reply(5, ChannelDescriptor)
        assert (tag, d.c_uid) == (5, 55)
        assert rig.board.lock.acquire(timeout=1)      # consistent again: no OwnerDied
        rig.board.lock.release()
    finally:
        ch.destroy()


def test_drop_claims_puts_back_every_claim_of_one_process_in_one_call(rig):
    """GS at a creator's exit: ``drop_claims(p_uid)`` puts every entry
    that process claimed back to WAITING in one hold of the lock (one scan)
    and leaves others' claims and plain WAITING entries alone; with the
    lock busy it raises Busy at once and changes nothing."""
    names = []
    for i in range(1000):                  # four names of four entries
        n = f"wb-drop-{i}"
        if wb._index(n.encode()) not in {wb._index(x.encode()) for x in names}:
            names.append(n)
        if len(names) == 4:
            break
    mine_a, mine_b, other, waiting = names
    for k, n in enumerate(names):
        assert rig.board.listen(n, k + 1, rig.reply_channel().sdesc)
    other_pub = C._BoardPublisher(rig.dflt, rig.client_board.alloc, rig.client_board.lock_alloc,
                                  rig.inf, rig.gs, P_UID + 1, KEY, M_UID, NODE, 0, m._packb(OD))
    made = [rig.publish(mine_a, c_uid=11)[0], rig.publish(mine_b, c_uid=12)[0],
            other_pub.create(13, 128, 1024, False, other.encode(), 1, bytes(152),
                             m._packb(OD))[0]]
    try:
        before = {n: rig.entry(n) for n in names}
        assert [before[n][0] for n in names] == [wb.WOKEN, wb.WOKEN, wb.WOKEN, wb.WAITING]
        assert rig.board.lock.acquire(timeout=1)      # a holder in the lock
        try:
            with pytest.raises(wb.Busy):
                rig.board.drop_claims(P_UID)
        finally:
            rig.board.lock.release()
        assert {n: rig.entry(n) for n in names} == before
        assert rig.board.drop_claims(P_UID) == {mine_a: wb.WOKEN, mine_b: wb.WOKEN}
        for n in (mine_a, mine_b):
            assert rig.entry(n) == (wb.WAITING, len(n), 0, 0, 1, 0)
        assert rig.entry(other) == before[other] and rig.entry(waiting) == before[waiting]
        assert rig.board.drop_claims(P_UID) == {}
        assert not rig.board.lock.locked()
    finally:
        for ch in made:
            ch.destroy()


def test_recv_reply_passes_other_messages_through(rig):
    """A reply channel's other traffic (GS's msgpack replies, a record of
    the wrong length) comes back as bytes; a large message too."""
    j = rig.reply_channel()
    body = m.reply_ok(3, {"x": 1}).pack()
    j.send(body)
    assert j._recv_reply(5, ChannelDescriptor) == body
    odd = bytes([0xc1]) + bytes(300)
    j.send(odd)
    assert j._recv_reply(5, ChannelDescriptor) == odd
    big = b"\xc1" * 5000
    j.send(big)
    assert j._recv_reply(5, ChannelDescriptor) == big
    t0 = time.monotonic()
    with pytest.raises(ChannelEmpty):
        j._recv_reply(0.01, ChannelDescriptor)
    assert time.monotonic() - t0 < 10


def test_bad_arguments_are_refused(rig):
    with pytest.raises(TypeError):
        rig.pub.create(1, 128, 1024, False, "str-not-bytes", 1, bytes(152), m._packb(OD))
    with pytest.raises(CoreError):
        rig.pub.create(1, 100, 1024, False, b"n", 1, bytes(152), m._packb(OD))  # not a power of 2
    with pytest.raises(TypeError):
        C._BoardPublisher(rig.dflt, None, rig.client_board.lock_alloc, rig.inf, rig.gs, 1, b"",
                          0, 0)
    # a table that is not the board's lock
    with pytest.raises(DescriptorError):
        C._BoardPublisher(rig.dflt, rig.client_board.alloc, rig.client_board.alloc, rig.inf,
                          rig.gs, 1, b"", 0, 0)
