"""The destroy of a channel by the process that made and registered it
(``ChannelDestroyOwned``): not waited for, GS answers nothing; and what
keeps its errors where the spec wants them -- another process's destroy of
that channel is answered only once the node has freed it, so the owner,
told of it, finds the channel gone and its destroy raises ChannelError.

State-machine tests use the GS harness of test_gs_state (real pools and
channels, the real NodeResources); the end-to-end ones run under `ember run`.
"""
import os

import pytest

from ember import messages as m
from ember.channels_c import Channel
from ember.exceptions import ChannelError
from test_channel_register import OPTS
from test_gs_state import Harness
from test_runtime import ok, run_prog


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def _client(h, r=b"RA"):
    """A managed process of the harness whose pid is ours, with a c_uid
    reserved by a first, ordinary create (test_channel_register's, with a
    reply channel of its own)."""
    a = h.create()
    h.gs.procs[a].os_pid = os.getpid()
    d = h.ok(h.req(m.ChannelCreate, None, None, OPTS, False, p_uid=a, r=r))
    assert h.ok(h.req(m.ChannelDestroy, d["c_uid"], p_uid=a, r=r)) is None
    return a, d["next_c_uid"]


def _registered(h, a, c_uid, name):
    """Make channel ``name`` as the client does (made here, registered,
    handed over); returns (descriptor dict, the c_uid reserved next)."""
    ch = Channel.create(h.pool, 8, 128, c_uid=c_uid, owned=True)
    r = h.gs.procs[a].replies and next(iter(h.gs.procs[a].replies))
    d = h.ok(h.req(m.ChannelRegister, None, name, OPTS, ch.sdesc, p_uid=a, r=r))
    try:
        ch._take_owner(os.getpid(), 0)
    except ChannelError as exc:        # the node adopted it first (auto pump)
        assert "EMBER_ERR_STALE" in str(exc), exc
    ch.detach()
    return d, d["next_c_uid"]


def test_the_owner_destroys_without_an_answer(h):
    a, c_uid = _client(h)
    d, nxt = _registered(h, a, c_uid, "mine")
    assert h.gs.chans[c_uid].owner == a
    key = h.req(m.ChannelDestroyOwned, c_uid, p_uid=a, r=b"RA")
    assert h.reply(key) is None                      # nothing is answered
    assert c_uid not in h.gs.chans and "mine" not in h.gs.chan_names
    assert not h.node.chans and h.pool._live_allocations() == []   # the node freed it
    # the name is free at once, for anyone
    b, b_uid = _client(h, b"RB")
    again, _ = _registered(h, b, b_uid, "mine")
    assert h.gs.chan_names["mine"] == again["c_uid"]
    # a second destroy of the gone channel: dropped, nothing answered, nothing touched
    key = h.req(m.ChannelDestroyOwned, c_uid, p_uid=a, r=b"RA")
    assert h.reply(key) is None and h.gs.chan_names["mine"] == again["c_uid"]


def test_only_the_owner_may_destroy_without_an_answer(h):
    a, c_uid = _client(h)
    b, _ = _client(h, b"RB")
    _registered(h, a, c_uid, "hers")
    key = h.req(m.ChannelDestroyOwned, c_uid, p_uid=b, r=b"RB")
    assert h.reply(key) is None and h.gs.chan_names["hers"] == c_uid   # refused: still there
    # a channel the node made (no owner) is refused alike
    made = h.ok(h.req(m.ChannelCreate, None, "node-made", OPTS, False, p_uid=a, r=b"RA"))
    key = h.req(m.ChannelDestroyOwned, made["c_uid"], p_uid=a, r=b"RA")
    assert h.reply(key) is None and h.gs.chan_names["node-made"] == made["c_uid"]
    # a bad c_uid is no crash
    key = h.req(m.ChannelDestroyOwned, "x", p_uid=a, r=b"RA")
    assert h.reply(key) is None
    for name in ("hers", "node-made"):
        assert h.ok(h.req(m.ChannelDestroy, name, p_uid=a, r=b"RA")) is None


def test_another_process_destroy_is_answered_once_the_node_freed_it(h):
    a, c_uid = _client(h)
    b, _ = _client(h, b"RB")
    _registered(h, a, c_uid, "shared")
    assert c_uid in h.node.chans
    h.auto = False
    key = h.req(m.ChannelDestroy, "shared", p_uid=b, r=b"RB")
    # forgotten at once (the name is free), answered only when the node freed it
    assert "shared" not in h.gs.chan_names and h.reply(key) is None
    assert [type(x) for x in h.to_node] == [m.ShChannelDestroy]
    h.pump()
    assert h.ok(key) is None and not h.node.chans and h.pool._live_allocations() == []
    # the owner's own destroy that comes after finds nothing and is dropped
    key = h.req(m.ChannelDestroyOwned, c_uid, p_uid=a, r=b"RA")
    assert h.reply(key) is None


def test_another_process_destroy_while_the_adopt_is_held(h):
    """The adopt goes out first, then the destroy: the node adopts, frees,
    and the requester is answered."""
    a, c_uid = _client(h)
    b, _ = _client(h, b"RB")
    h.gs.batch_notices = True
    h.auto = False
    _registered(h, a, c_uid, "young")
    assert h.gs.notices_pending == 1 and not h.to_node
    key = h.req(m.ChannelDestroy, c_uid, p_uid=b, r=b"RB")
    assert h.reply(key) is None
    assert [type(x) for x in h.to_node] == [m.ShChannelAdopt, m.ShChannelDestroy]
    h.pump()
    assert h.ok(key) is None and not h.node.chans and h.pool._live_allocations() == []


def test_the_owner_destroy_of_its_node_made_channel_waits_as_before(h):
    """Its own destroy of a channel it registered, sent the waiting way
    (a client that does not know the channel is its own): answered at once."""
    a, c_uid = _client(h)
    _registered(h, a, c_uid, "w")
    assert h.ok(h.req(m.ChannelDestroy, "w", p_uid=a, r=b"RA")) is None
    assert not h.node.chans and h.pool._live_allocations() == []


@pytest.mark.timeout(120)
def test_owner_destroy_under_ember_run(tmp_path):
    """End to end: the owner's destroy returns without GS's answer, yet
    every later request sees the channel gone (a name reused at once, a
    query, a second destroy that raises); another process's destroy of the
    owner's channel, once answered, makes the owner's destroy raise; a
    forked child (not the owner) destroys the waiting way."""
    out = ok(run_prog(tmp_path, """
        import os, sys
        from ember.globalservices import channel, process, _client
        from ember.exceptions import ChannelError

        channel.destroy(channel.create(None, "warm").c_uid)      # reserves a c_uid
        conn = _client.connection()
        d = channel.create(None, "box")
        print("own", d.c_uid in conn._own)
        print("destroyed", channel.destroy("box"))
        try:
            channel.query("box")
        except ChannelError as e:
            print("query: gone")
        again = channel.create(None, "box")                      # the name is free at once
        print("again", again.c_uid != d.c_uid)
        channel.destroy(again.c_uid)
        try:
            channel.destroy(again.c_uid)
        except ChannelError as e:
            print("twice:", "no channel" in str(e))
        # another process destroys our channel and says so: ours raises
        victim = channel.create(None, "victim")
        p = process.create(sys.executable, ".", ["-c",
            "from ember.globalservices import channel\\n"
            "channel.destroy('victim')"])
        print("other exit", process.join(p.p_uid))
        try:
            channel.destroy(victim.c_uid)
            print("destroy after the other's: no error")
        except ChannelError as e:
            print("after the other's:", "no channel" in str(e))
        # a forked child does not own its parent's channels
        kept = channel.create(None, "kept")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                c = _client.connection()
                os.write(w, b"%d" % (kept.c_uid in c._own))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        print("child owns", os.read(r, 10).decode())
        channel.destroy("kept")
        print("listed", channel.get_list(names=True))
    """))
    assert out.splitlines() == [
        "own True", "destroyed None", "query: gone", "again True", "twice: True",
        "other exit 0", "after the other's: True", "child owns 0",
        "listed []"], out


@pytest.mark.timeout(120)
def test_own_channels_destroyed_by_others_are_forgotten(tmp_path):
    """The client's map of its own channels (destroyed without waiting)
    does not keep growing with channels another process destroyed: past
    _OWN_PRUNE of them, the ones no longer in their pool are forgotten
    (a live one stays, and its destroy still goes the quick way)."""
    out = ok(run_prog(tmp_path, """
        import sys
        from ember.globalservices import channel, process, _client

        channel.destroy(channel.create(None, "warm").c_uid)      # reserves c_uids
        conn = _client.connection()
        kept = channel.create(None, "kept")
        n = _client._OWN_PRUNE - 4           # with "kept": the map stays at _OWN_PRUNE - 3
        made = [channel.create(None, f"c{i}" if i % 2 else None).c_uid for i in range(n)]
        print("own", len(conn._own) >= n)
        p = process.create(sys.executable, ".", ["-c",
            "import sys\\n"
            "from ember.globalservices import channel\\n"
            "for c in sys.argv[1:]:\\n"
            "    channel.destroy(int(c))", *map(str, made)])
        print("other exit", process.join(p.p_uid))
        for i in range(5):                    # the fourth passes _OWN_PRUNE: a look
            channel.create(None, f"more{i}")
        print("pruned", len(conn._own), sorted(conn._own_names))
        print("kept is own", kept.c_uid in conn._own)
        for name in ("kept", "more0", "more1", "more2", "more3", "more4"):
            channel.destroy(name)
        print("listed", channel.get_list(names=True))
    """))
    assert out.splitlines() == [
        "own True", "other exit 0",
        "pruned 6 ['kept', 'more0', 'more1', 'more2', 'more3', 'more4']",
        "kept is own True", "listed []"], out


# ---------------------------------------------------------------- posted registers
def test_sync_replies_reserve_a_range_for_posted_registers(h):
    from ember.globalservices.memory import POST_BATCH, POST_LOW
    a = h.create()
    h.gs.procs[a].os_pid = os.getpid()
    first = h.ok(h.req(m.ChannelCreate, None, None, OPTS, False, p_uid=a, r=b"RA"))
    lo, hi = first["post_c_uids"]        # the first channel reply brings a range
    assert hi - lo == POST_BATCH and h.gs.procs[a].posted_c_uids == set(range(lo, hi))
    d, nxt = _registered(h, a, first["next_c_uid"], None)
    c_uid = first["next_c_uid"]
    assert "post_c_uids" not in d                 # enough left: no new range
    assert nxt not in range(lo, hi) and c_uid not in range(lo, hi)
    # a posted register: recorded, the node told to adopt it, nothing answered
    r = next(iter(h.gs.procs[a].replies))
    ch = Channel.create(h.pool, 8, 128, c_uid=lo + 3, owned=True)
    key = h.req(m.ChannelRegisterPosted, None, None, OPTS, ch.sdesc, p_uid=a, r=r)
    assert h.reply(key) is None
    rec = h.gs.chans[lo + 3]
    assert (rec.owner, rec.name, rec.sdesc) == (a, None, ch.sdesc) and lo + 3 in h.node.chans
    assert lo + 3 not in h.gs.procs[a].posted_c_uids
    ch.detach()
    # a c_uid spent, one never reserved: refused, nothing recorded, the block
    # left to its maker (it is not known to be the requester's)
    for c, name, opts in ((lo + 3, None, OPTS), (hi + 100, None, OPTS)):
        bad = Channel.create(h.pool, 8, 128, c_uid=c, owned=True)
        before = (dict(h.gs.chans), dict(h.gs.chan_names))
        key = h.req(m.ChannelRegisterPosted, None, name, opts, bad.sdesc, p_uid=a, r=r)
        assert h.reply(key) is None and (dict(h.gs.chans), dict(h.gs.chan_names)) == before
        assert Channel.describe(bad.sdesc)[1] in {x.offset for x in h.pool._live_allocations()}
        bad.destroy()
    # a name, a ref-counted one, the wrong sizes, with a reserved c_uid:
    # refused, nothing recorded, and the block (handed to nobody, as the
    # client does right after it posts) is freed by the node
    for c, name, opts in ((lo + 4, "named", OPTS), (lo + 5, None, dict(OPTS, ref_count=True)),
                          (lo + 6, None, dict(OPTS, capacity=16))):
        bad = Channel.create(h.pool, 8, 128, c_uid=c, owned=True)
        bad._take_owner(os.getpid(), 0)
        sdesc = bad.sdesc
        off = Channel.describe(sdesc)[1]
        bad.detach()
        before = (dict(h.gs.chans), dict(h.gs.chan_names))
        key = h.req(m.ChannelRegisterPosted, None, name, opts, sdesc, p_uid=a, r=r)
        assert h.reply(key) is None and (dict(h.gs.chans), dict(h.gs.chan_names)) == before
        assert off not in {x.offset for x in h.pool._live_allocations()}, (c, name, opts)
        assert c not in h.gs.procs[a].posted_c_uids
    # spend the range down to POST_LOW - 1: the next synchronous reply adds a range
    left = sorted(h.gs.procs[a].posted_c_uids)
    for c in left[:len(left) - POST_LOW + 1]:
        ch = Channel.create(h.pool, 8, 128, c_uid=c, owned=True)
        h.req(m.ChannelRegisterPosted, None, None, OPTS, ch.sdesc, p_uid=a, r=r)
        ch.detach()
        assert h.ok(h.req(m.ChannelDestroy, c, p_uid=a, r=r)) is None
    assert len(h.gs.procs[a].posted_c_uids) == POST_LOW - 1
    d2, _ = _registered(h, a, nxt, None)
    lo2, hi2 = d2["post_c_uids"]
    assert lo2 >= hi and len(h.gs.procs[a].posted_c_uids) == POST_LOW - 1 + POST_BATCH
    assert h.ok(h.req(m.ChannelDestroy, lo + 3, p_uid=a, r=r)) is None
    for c in (first["c_uid"], c_uid, nxt):
        assert h.ok(h.req(m.ChannelDestroy, c, p_uid=a, r=r)) is None
    h.pump()
    assert not h.gs.chans and h.pool._live_allocations() == []


@pytest.mark.timeout(120)
def test_posted_create_under_ember_run(tmp_path):
    """End to end: an unnamed plain create returns without waiting for GS
    (a c_uid of the reserved range), yet GS knows the channel for every
    later request (this process's list, another process's query); a
    channel made just before its creator exits outlives it, as any
    channel does; named ones still wait (a taken name raises)."""
    out = ok(run_prog(tmp_path, """
        import sys
        from ember.channels_c import Channel
        from ember.globalservices import channel, process, _client
        from ember.exceptions import ChannelError

        channel.destroy(channel.create(None).c_uid)      # brings the reservations
        conn = _client.connection()
        stock = set(conn._posted)
        d = channel.create(None)
        print("posted", d.c_uid in stock, d.c_uid in channel.get_list())
        p = process.create(sys.executable, ".", ["-c",
            "import sys\\n"
            "from ember.globalservices import channel\\n"
            "q = channel.query(int(sys.argv[1])); assert q.sdesc == bytes.fromhex(sys.argv[2])\\n"
            "made = channel.create(None); channel.create(None)\\n"
            "print(made.c_uid, flush=True)", str(d.c_uid), d.sdesc.hex()])
        print("query from another process", process.join(p.p_uid))
        mine = channel.get_list()
        print("its channels outlive it", len(mine) == 3)
        for c in mine:
            if c != d.c_uid:
                ch = Channel.attach(channel.query(c).sdesc)
                ch.send(b"x"); ch.recv(); ch.detach()
                channel.destroy(c)
        channel.create(None, "name")
        try:
            channel.create(None, "name")
        except ChannelError as e:
            print("taken:", "already named" in str(e))
        channel.destroy("name")
        channel.destroy(d.c_uid)
        print("listed", channel.get_list())
    """))
    lines = [ln for ln in out.splitlines() if not ln.isdigit()]
    assert lines == ["posted True True", "query from another process 0",
                     "its channels outlive it True", "taken: True", "listed []"], out


@pytest.mark.timeout(120)
def test_a_creator_killed_right_after_posted_creates_leaves_nothing_behind(tmp_path):
    """A process SIGKILLs itself right after posted creates (its registers
    in GS's input, its blocks handed over or not): every channel GS lists
    for it is a live, adopted channel, and every block of the default pool
    is either one of them or gone -- none leaks, none is listed but freed."""
    out = ok(run_prog(tmp_path, """
        import os, sys, time
        from ember import _env
        from ember.channels_c import Channel
        from ember.globalservices import channel, process
        from ember.pools_c import Pool

        dpool = Pool.attach(_env.decode(os.environ["EMBER_DEFAULT_POOL"]))
        before = set(channel.get_list())
        blocks = len(dpool._live_allocations())
        victim = process.create(sys.executable, ".", ["-c",
            "import os, signal\\n"
            "from ember.globalservices import channel\\n"
            "channel.destroy(channel.create(None).c_uid)\\n"       # brings the reservations
            "for _ in range(5):\\n"
            "    channel.create(None)\\n"
            "os.kill(os.getpid(), signal.SIGKILL)"])
        print("victim exit", process.join(victim.p_uid))
        deadline = time.monotonic() + 20
        while True:
            left = set(channel.get_list()) - before
            live = len(dpool._live_allocations()) - blocks
            if live == len(left) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        print("listed == blocks", live == len(left), len(left) <= 5)
        for c in left:
            ch = Channel.attach(channel.query(c).sdesc)      # adopted, not freed
            ch.send(b"x"); assert ch.recv() == b"x"; ch.detach()
            channel.destroy(c)
        deadline = time.monotonic() + 20
        while len(dpool._live_allocations()) != blocks and time.monotonic() < deadline:
            time.sleep(0.05)
        print("blocks back", len(dpool._live_allocations()) == blocks)
        dpool.detach()
    """))
    assert out.splitlines() == ["victim exit -9", "listed == blocks True True", "blocks back True"], out
