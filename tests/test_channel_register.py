"""A channel the client makes itself and registers with GS (ChannelRegister):
one GS round trip per create, joiners answered as GS registers it; GS checks
the descriptor without mapping the pool, the node's shepherd adopts it
(header, c_uid, the block is the requester's) and frees it on destroy; a
client killed before registering leaves no block behind.

State-machine tests use the GS harness of test_gs_state (real pools and
channels, the real NodeResources); the end-to-end ones run under `ember run`.
"""
import os

import pytest

from ember import messages as m
from ember.channels_c import Channel
from ember.exceptions import ChannelError
from ember.pools_c import Pool
from test_gs_state import Harness
from test_runtime import ok, run_prog

OPTS = {"capacity": 8, "block_size": 128, "ref_count": False}


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def _client(h):
    """A managed process of the harness whose pid is ours (it makes the
    channels here), with a c_uid reserved by a first, ordinary create."""
    a = h.create()
    h.gs.procs[a].os_pid = os.getpid()
    d = h.ok(h.req(m.ChannelCreate, None, None, OPTS, False, p_uid=a, r=b"RA"))
    assert isinstance(d["next_c_uid"], int) and d["next_c_uid"] != d["c_uid"]
    assert h.ok(h.req(m.ChannelDestroy, d["c_uid"], p_uid=a, r=b"RA")) is None
    assert h.gs.procs[a].next_c_uid == d["next_c_uid"]        # a destroy keeps it
    return a, d["next_c_uid"]


def _owner(pool, ch):
    """The recorded owner of ``ch``'s block: its pid, or 0 (nobody)."""
    for pid in (os.getpid(), 0):
        try:
            ch._take_owner(pid, pid)
            return pid
        except ChannelError as exc:                # not that pid's
            assert "EMBER_ERR_STALE" in str(exc), exc
    return None


def test_register_answers_creator_and_joiner_at_once_and_the_node_adopts(h):
    a, c_uid = _client(h)
    h.auto = False
    join = h.req(m.ChannelJoin, "box", None, p_uid=0, r=b"RJ")
    ch = Channel.create(h.pool, 8, 128, c_uid=c_uid, owned=True)
    assert _owner(h.pool, ch) == os.getpid()
    key = h.req(m.ChannelRegister, None, "box", OPTS, ch.sdesc, p_uid=a, r=b"RA")
    # answered in the same step: no message to the node was needed first
    d = h.ok(key)
    assert h.ok(join) == {k: v for k, v in d.items() if k != "next_c_uid"}
    assert (d["c_uid"], d["name"], d["sdesc"], d["capacity"]) == (c_uid, "box", ch.sdesc, 8)
    assert d["next_c_uid"] not in (None, c_uid)
    assert h.gs.chan_names["box"] == c_uid and h.gs.chans[c_uid].holders == {}
    (adopt,) = h.to_node
    assert type(adopt) is m.ShChannelAdopt and (adopt.c_uid, adopt.pid) == (c_uid, os.getpid())
    h.pump()
    assert c_uid in h.node.chans and _owner(h.pool, ch) == 0 and not h.from_node
    ch.detach()
    # destroy: answered at once, the node frees it
    assert h.ok(h.req(m.ChannelDestroy, "box", p_uid=a, r=b"RA")) is None
    h.pump()
    assert not h.node.chans and h.pool._live_allocations() == []


def test_a_reservation_serves_once(h):
    a, c_uid = _client(h)
    ch = Channel.create(h.pool, 8, 128, c_uid=c_uid, owned=True)
    d = h.ok(h.req(m.ChannelRegister, None, None, OPTS, ch.sdesc, p_uid=a, r=b"RA"))
    ch.detach()
    again = Channel.create(h.pool, 8, 128, c_uid=c_uid, owned=True)
    assert h.err(h.req(m.ChannelRegister, None, None, OPTS, again.sdesc, p_uid=a, r=b"RA")) == (
        "ChannelError", f"cannot register channel '': its c_uid {c_uid} is not the one reserved "
                        f"for process {a} ({d['next_c_uid']})")
    again.destroy()
    # the refusal spent the reservation: the next create goes through the node
    assert h.err(h.req(m.ChannelRegister, None, None, OPTS, b"x", p_uid=a, r=b"RA")) == (
        "ChannelError", f"process {a} has no c_uid reserved: create the channel through "
                        f"channel.create")


def _refused(h, a, c_uid, sdesc, opts=OPTS, name=None):
    before = (dict(h.gs.chans), set(h.gs.chan_sdescs))
    err = h.err(h.req(m.ChannelRegister, None, name, opts, sdesc, p_uid=a, r=b"RA"))
    assert (dict(h.gs.chans), set(h.gs.chan_sdescs)) == before and not h.to_node
    h.gs.procs[a].next_c_uid = c_uid         # (what a fresh create would have reserved)
    return err


def test_gs_refuses_what_it_can_check_without_mapping_the_pool(h):
    a, c_uid = _client(h)
    ok_ch = Channel.create(h.pool, 8, 128, c_uid=c_uid, owned=True)
    other = Pool.create(1 << 20)
    try:
        foreign = Channel.create(other, 8, 128, c_uid=c_uid)
        wrong_uid = Channel.create(h.pool, 8, 128, c_uid=c_uid + 1000, owned=True)
        e = _refused(h, a, c_uid, b"not a descriptor")
        assert e[0] == "ChannelError" and "not a channel descriptor" in e[1]
        e = _refused(h, a, c_uid, ok_ch.sdesc[:-1] + bytes([ok_ch.sdesc[-1] ^ 1]))   # checksum
        assert e[0] == "ChannelError" and "not a channel descriptor" in e[1]
        assert _refused(h, a, c_uid, foreign.sdesc) == (
            "ChannelError", "cannot register channel '': it is not in pool 1")
        assert _refused(h, a, c_uid, wrong_uid.sdesc)[1].endswith(
            f"its c_uid {c_uid + 1000} is not the one reserved for process {a} ({c_uid})")
        assert _refused(h, a, c_uid, ok_ch.sdesc, dict(OPTS, capacity=16)) == (
            "ChannelError", "cannot register channel '': it is 8 x 128 B, not the 16 x 128 B asked")
        assert _refused(h, a, c_uid, ok_ch.sdesc, {"capcity": 8}) [0] == "ChannelError"
        # a name that is taken: the same words as channel.create
        taken = h.ok(h.req(m.ChannelCreate, None, "taken", OPTS, False, p_uid=a, r=b"RA"))
        h.gs.procs[a].next_c_uid = c_uid
        assert _refused(h, a, c_uid, ok_ch.sdesc, name="taken") == (
            "ChannelError", f"a channel is already named 'taken' (c_uid {taken['c_uid']})")
        # a channel GS knows already (registered; a reply channel is refused alike)
        assert _refused(h, a, c_uid, taken["sdesc"])[0] == "ChannelError"
        # and the good one still registers
        d = h.ok(h.req(m.ChannelRegister, None, "fine", OPTS, ok_ch.sdesc, p_uid=a, r=b"RA"))
        assert d["c_uid"] == c_uid and c_uid in h.node.chans
    finally:
        ok_ch.detach()
        for ch in (foreign, wrong_uid):
            ch.destroy()
        other.destroy()


def test_a_hand_over_by_a_pid_that_does_not_own_the_block_is_a_channel_error():
    """Channel._take_owner raises a ChannelError naming both pids (not the
    pool's "freed and allocated again" PoolError), and changes nothing."""
    pool = Pool.create(1 << 20)
    try:
        ch = Channel.create(pool, 8, 128, owned=True)
        me, other = os.getpid(), os.getpid() + 1
        with pytest.raises(ChannelError) as ei:
            ch._take_owner(other, 0)
        assert type(ei.value) is ChannelError
        assert str(ei.value) == (f"channel c_uid {ch.c_uid}: cannot hand its block from pid "
                                 f"{other} to 0: pid {other} does not own it (handed over or "
                                 f"reclaimed meanwhile, or never its) [EMBER_ERR_STALE]")
        assert _owner(pool, ch) == me                     # still ours
        ch._take_owner(me, 0)
        assert _owner(pool, ch) == 0
        ch.destroy()
    finally:
        pool.destroy()


def test_the_node_refuses_a_block_that_is_not_the_requesters(h):
    """GS cannot read the header: the node can.  A descriptor of a block
    the requester does not own (here: owned by nobody, as every channel the
    node made is) is refused by the node, and GS forgets the channel."""
    a, c_uid = _client(h)
    victim = Channel.create(h.pool, 8, 128, c_uid=c_uid)       # nobody's block
    h.auto = False
    d = h.ok(h.req(m.ChannelRegister, None, "stolen", OPTS, victim.sdesc, p_uid=a, r=b"RA"))
    assert d["c_uid"] == c_uid
    h.gs.procs[a].os_pid = os.getpid() + 1    # GS knows it by another pid: not its block
    h.to_node[0].pid = os.getpid() + 1
    victim._take_owner(0, 12345)              # the block is someone else's
    h.pump()
    assert "stolen" not in h.gs.chan_names and c_uid not in h.gs.chans and not h.node.chans
    # the victim's block was not touched (not freed, still usable)
    victim.send(b"still here")
    assert victim.recv() == b"still here"
    victim._take_owner(12345, 0)
    victim.destroy()


@pytest.mark.timeout(60)
def test_a_killed_creator_leaves_no_block():
    """Made but not registered (killed in between): the block is the dead
    creator's, and the node's reclaim of its blocks frees it."""
    pool = Pool.create(1 << 22)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                Channel.create(pool, 128, 1024, c_uid=7, owned=True)
            finally:
                os._exit(0)                   # dies holding it, unregistered
        os.waitpid(pid, 0)
        assert len(pool._live_allocations()) == 1
        assert pool.reclaim(pid)[0] == 1
        assert pool._live_allocations() == []
    finally:
        pool.destroy()


@pytest.mark.timeout(120)
def test_create_join_destroy_under_ember_run(tmp_path):
    """End to end: the second create of a process goes the one-round-trip
    way; a joiner in another process gets it; a SIGKILLed process that made
    a channel and never registered it leaves the default pool as it was."""
    out = ok(run_prog(tmp_path, """
        import os, signal, sys, time
        from ember.channels_c import Channel
        from ember.globalservices import channel, process, _client
        from ember.pools_c import Pool

        first = channel.create(None, "first")            # through the node: reserves a c_uid
        conn = _client.connection()
        print("reserved", conn._next_c_uid is not None)
        joiner = process.create(sys.executable, ".", ["-c",
            "from ember.globalservices import channel\\n"
            "from ember.channels_c import Channel\\n"
            "d = channel.join('second')\\n"
            "ch = Channel.attach(d.sdesc); print('joiner got', ch.recv()); ch.detach()"])
        from ember.globalservices import introspect
        deadline = time.monotonic() + 60     # the joiner waits in its join (not a sleep:
        while not any(w.get("name") == "second"   # a late one found the channel made)
                      for w in introspect.dump()["waiters"]):
            assert time.monotonic() < deadline, "the joiner never waited"
            time.sleep(0.01)
        second = channel.create(None, "second")
        print("registered", second.c_uid > first.c_uid, conn._next_c_uid is not None)
        ch = Channel.attach(second.sdesc)
        ch.send(b"hello")
        ch.detach()
        print("joiner exit", process.join(joiner.p_uid))
        # a process that makes a channel and is killed before registering it
        dpool = Pool.attach(first.sdesc and __import__("ember")._env.decode(os.environ["EMBER_DEFAULT_POOL"]))
        before = len(dpool._live_allocations())
        victim = process.create(sys.executable, ".", ["-c",
            "import os, signal\\n"
            "from ember.channels_c import Channel\\n"
            "from ember.globalservices import _client\\n"
            "Channel.create(_client.connection()._default_pool(), 64, 1024, c_uid=1 << 40, owned=True)\\n"
            "os.kill(os.getpid(), signal.SIGKILL)"])
        print("victim exit", process.join(victim.p_uid))
        print("blocks back", len(dpool._live_allocations()) == before)
        dpool.detach()
        channel.destroy("first")
        channel.destroy("second")
        print("listed", channel.get_list(names=True))
    """))
    assert out.splitlines() == ["reserved True", "registered True True", "joiner got b'hello'",
                                "joiner exit 0", "victim exit -9", "blocks back True", "listed []"]


def test_a_channel_destroyed_before_its_adopt_went_out_is_freed_in_one_step(h):
    """GS holds its notices to the node (batch_notices, as serve() runs
    it): a channel registered and destroyed within one burst gets one
    ShChannelFree in its adopt's place and no ShChannelDrop; the node checks
    it as it would adopt it and frees it.  A channel that lives on gets its
    adopt, and a later destroy its drop, as before."""
    a, c_uid = _client(h)
    h.gs.batch_notices = True
    h.auto = False
    short = Channel.create(h.pool, 8, 128, c_uid=c_uid, owned=True)
    d = h.ok(h.req(m.ChannelRegister, None, "short", OPTS, short.sdesc, p_uid=a, r=b"RA"))
    short._take_owner(os.getpid(), 0)            # what the client does once answered
    short.detach()
    assert h.ok(h.req(m.ChannelDestroy, "short", p_uid=a, r=b"RA")) is None
    keep = Channel.create(h.pool, 8, 128, c_uid=d["next_c_uid"], owned=True)
    d2 = h.ok(h.req(m.ChannelRegister, None, "keep", OPTS, keep.sdesc, p_uid=a, r=b"RA"))
    keep.detach()
    assert not h.to_node and h.gs.notices_pending == 2
    h.gs.flush_notices()
    assert [type(x) for x in h.to_node] == [m.ShChannelFree, m.ShChannelAdopt]
    assert h.to_node[0].c_uid == c_uid
    h.pump()
    assert list(h.node.chans) == [d2["c_uid"]] and not h.from_node
    assert len(h.pool._live_allocations()) == 1                   # "keep"'s block only
    assert h.ok(h.req(m.ChannelDestroy, "keep", p_uid=a, r=b"RA")) is None
    h.gs.flush_notices()
    assert [type(x) for x in h.to_node] == [m.ShChannelDrop]
    h.pump()
    assert not h.node.chans and h.pool._live_allocations() == []


def test_the_node_frees_only_a_channel_it_would_adopt(h):
    """ShChannelFree is checked as an adopt is: a block that is not the
    requester's (nor nobody's) is left alone, and nothing is answered."""
    a, c_uid = _client(h)
    victim = Channel.create(h.pool, 8, 128, c_uid=c_uid)
    victim._take_owner(0, 12345)                 # someone else's block
    h.node.handle_msg(m.ShChannelFree(c_uid, 1, h.pool.sdesc, victim.sdesc, os.getpid()))
    assert not h.from_node and not h.node.chans
    victim.send(b"still here")
    assert victim.recv() == b"still here"
    # a descriptor whose header carries another c_uid is refused too
    h.node.handle_msg(m.ShChannelFree(c_uid + 1, 1, h.pool.sdesc, victim.sdesc, 12345))
    victim.send(b"still")
    assert victim.recv() == b"still"
    victim._take_owner(12345, 0)
    victim.destroy()
    assert h.pool._live_allocations() == []


def test_adopt_while_the_requester_hands_its_block_over(h):
    """The requester hands its block to nobody on its own once GS answered,
    maybe between the node's looks at the owner (nobody's? no; the
    requester's? no longer): the node looks again and adopts it, it does
    not refuse it (a refused adopt makes GS forget a live channel)."""
    a, c_uid = _client(h)
    ch = Channel.create(h.pool, 8, 128, c_uid=c_uid, owned=True)
    looks = []

    class Racing:
        """The node's handle on ``ch``: the requester's hand-over lands
        right after the node's first look finds the block still its."""

        def __init__(self, real):
            self.real = real

        def __getattr__(self, name):
            return getattr(self.real, name)

        def _take_owner(self, frm, to):
            looks.append(frm)
            try:
                return self.real._take_owner(frm, to)
            finally:
                if len(looks) == 1:
                    ch._take_owner(os.getpid(), 0)      # the requester, meanwhile

    real_attach = h.node._attach_channel
    h.node._attach_channel = lambda sdesc: Racing(real_attach(sdesc))
    for kind in (m.ShChannelAdopt, m.ShChannelFree):
        looks.clear()
        if kind is m.ShChannelFree:
            ch = Channel.create(h.pool, 8, 128, c_uid=c_uid + 1, owned=True)
        h.node.handle_msg(kind(ch.c_uid, 1, h.pool.sdesc, ch.sdesc, os.getpid()))
        assert looks == [0, os.getpid(), 0] and not h.from_node     # not refused
        ch.detach()
    assert list(h.node.chans) == [c_uid]                             # adopted; the other freed
    h.node.handle_msg(m.ShChannelDrop([c_uid]))
    assert not h.node.chans and h.pool._live_allocations() == []
