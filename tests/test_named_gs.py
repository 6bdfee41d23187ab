"""The GS registry of named objects as a state machine (the harness of
test_gs_state.py: scripted messages, a fake shepherd, a fake clock):
create, soft create, attach waiting for a name (and its server-side
timeout), references, loans (pickling), each lifetime at a holder's exit,
Pipe ends closing their direction, parts freed with the object."""
import pickle

import pytest

from ember import messages as m
from ember.channels_c import Channel
from ember.exceptions import ChannelError, DescriptorError
from ember.sync_c import Lock
from test_gs_state import Harness


@pytest.fixture
def h():
    harness = Harness()
    harness.made = []                    # the test's own handles of the objects' channels
    yield harness
    for c in harness.made:
        if not c.closed:
            c.detach()
    harness.close()


def live(ch):
    """Whether the channel still exists (not destroyed by the shepherd)."""
    try:
        Channel.attach(ch.sdesc).detach()
        return True
    except ChannelError:
        return False


def create(h, p_uid, kind="Queue", name=None, lifetime=None, channels=0, parts=(), children=(),
           soft=False, desc=b"d"):
    """``channels``: how many channels to make (in the default pool, as a
    client does) for the object."""
    chans = [Channel.create(h.pool, capacity=8, block_size=128) for _ in range(channels)]
    h.made.extend(chans)
    key = h.req(m.ObjectCreate, kind, name, lifetime, desc, [c.sdesc for c in chans],
                [list(p) for p in parts], [[k, list(c)] for k, c in children], soft, p_uid=p_uid)
    h.pump()
    return key


def listed(h):
    return {(n or o): (k, lt) for o, n, k, lt in h.ok(h.req(m.ObjectList))}


def test_create_attach_soft_and_errors(h):
    a = h.create("a")
    d = h.ok(create(h, a, name="jobs", channels=1))
    assert d["name"] == "jobs" and d["lifetime"] == "runtime"
    assert d["channels"] == [h.made[0].sdesc] and d["o_uid"] == 1
    again = h.ok(create(h, a, name="jobs", soft=True, desc=b"other"))
    assert again["o_uid"] == d["o_uid"] and again["desc"] == b"d"
    assert h.err(create(h, a, name="jobs")) == (
        "ObjectError", "an object is already named 'jobs' (Queue, o_uid 1)")
    assert h.err(create(h, a, kind="Lock", name="jobs", soft=True)) == (
        "ObjectError", "an object is already named 'jobs' (Queue, o_uid 1)")
    assert h.err(create(h, a, lifetime="forever")) == (
        "ObjectError", "lifetime must be one of 'runtime', 'owner', 'refcount', got 'forever'")
    assert h.err(h.req(m.ObjectCreate, "Queue", None, None, b"", [[8, 128]], [], [], False,
                       p_uid=a)) == (
        "ObjectError", "a channel must be given by its descriptor (bytes), got [8, 128]")
    assert h.err(h.req(m.ObjectAttach, "jobs", "Lock", None, p_uid=a)) == (
        "ObjectError", "object 'jobs' is a Queue, not a Lock")
    assert h.ok(h.req(m.ObjectAttach, "jobs", "Queue", None, p_uid=a))["o_uid"] == 1
    assert h.gs.objs[1].holders == {a: 3}
    assert listed(h) == {"jobs": ("Queue", "runtime")}


def test_attach_waits_for_the_name_and_times_out_on_the_server(h):
    a, b = h.create("a"), h.create("b")
    wait = h.req(m.ObjectAttach, "later", None, None, p_uid=b)
    short = h.req(m.ObjectAttach, "never", None, 2.0, p_uid=b)
    assert h.reply(wait) is None and h.reply(short) is None
    h.advance(2.5)
    assert h.err(short) == ("ObjectTimeout",
                            "attach('never') timed out: no object of that name was created")
    made = create(h, a, kind="Event", name="later")
    assert h.ok(wait)["o_uid"] == h.ok(made)["o_uid"]
    assert h.gs.objs[h.ok(made)["o_uid"]].holders == {a: 1, b: 1}
    assert h.err(h.req(m.ObjectAttach, "nope", None, 0, p_uid=a)) == (
        "ObjectTimeout", "attach('nope') timed out: no object of that name was created")
    # a waiter of another kind is told at the create, as an attach after it is
    queue = h.req(m.ObjectAttach, "evt", "Queue", None, p_uid=b)
    served = h.req(m.ObjectAttach, "evt", "Shared", None, p_uid=b)
    event = h.req(m.ObjectAttach, "evt", "Event", None, p_uid=b)
    assert h.reply(queue) is None
    create(h, a, kind="Event", name="evt")
    assert h.err(queue) == ("ObjectError", "object 'evt' is an Event, not a Queue")
    assert h.err(served) == ("ObjectError", "object 'evt' is an Event, not a shared object")
    assert h.ok(event)["name"] == "evt"
    assert "evt" not in h.gs.obj_joiners
    assert h.err(h.req(m.ObjectAttach, "evt", "Queue", None, p_uid=b)) == (
        "ObjectError", "object 'evt' is an Event, not a Queue")
    # a waiter whose process exits is forgotten
    gone = h.req(m.ObjectAttach, "x", None, None, p_uid=b)
    h.exit(b, 0)
    create(h, a, name="x")
    assert h.reply(gone) is None


def test_refcount_ends_with_the_last_holder_and_frees_its_parts(h):
    a, b = h.create("a"), h.create("b")
    lock = Lock(pool=h.pool)
    d = h.ok(create(h, a, channels=1, parts=[["sync", lock.__reduce__()[1][1], lock.sdesc]]))
    o = d["o_uid"]
    assert h.gs.objs[o].lifetime == "refcount"
    token = h.ok(h.req(m.ObjectLend, o, p_uid=a))     # a pickles it ...
    assert h.gs.objs[o].holders == {a: 2}
    h.ok(h.req(m.ObjectClaim, o, token, p_uid=b))     # ... b unpickles it: the loan moves
    assert h.gs.objs[o].holders == {a: 1, b: 1}
    h.ok(h.req(m.ObjectClaim, o, token, p_uid=b))     # the same bytes again: a reference of its own
    assert h.gs.objs[o].holders == {a: 1, b: 2}
    assert h.ok(h.req(m.ObjectRelease, o, p_uid=a)) is True
    h.exit(b, -9)                                     # a dead holder is counted out
    h.pump()                                          # the shepherd frees its memory
    assert o not in h.gs.objs and not live(h.made[0])
    with pytest.raises(DescriptorError, match=r"^pool 'default' \(m_uid 0x[0-9a-f]+\): cannot "
                                              r"attach allocation at offset \d+ \(id \d+\): the "
                                              r"block is not allocated \(already freed\)"):
        pickle.loads(pickle.dumps(lock))              # its memory was freed with the object
    assert h.ok(h.req(m.ObjectRelease, o, p_uid=a)) is False     # already ended: harmless


def test_owner_lifetime_and_runtime_lifetime_at_the_creators_exit(h):
    a, b = h.create("a"), h.create("b")
    own = h.ok(create(h, a, name="own", lifetime="owner"))["o_uid"]
    h.ok(h.req(m.ObjectAttach, "own", None, None, p_uid=b))
    keep = h.ok(create(h, a, name="keep", channels=1))["o_uid"]
    unclaimed = h.ok(create(h, a, name="rc", lifetime="refcount"))["o_uid"]
    h.ok(h.req(m.ObjectLend, unclaimed, p_uid=a))     # pickled but never unpickled
    h.exit(a, 0)
    assert own not in h.gs.objs                       # ended with its owner, although b held it
    assert unclaimed not in h.gs.objs                 # the lender's loan ends with it
    assert keep in h.gs.objs and listed(h) == {"keep": ("Queue", "runtime")}
    h.ok(h.req(m.ObjectDestroy, "keep", p_uid=b))
    h.pump()
    assert not h.gs.objs and not live(h.made[0])


def test_pipe_ends_close_their_direction_and_the_pipe_ends_with_both(h):
    a, b = h.create("a"), h.create("b")
    d = h.ok(create(h, a, kind="Pipe", lifetime="refcount", channels=2,
                    children=[("Connection", [0]), ("Connection", [1])]))
    end0, end1 = d["children"]
    ch0, ch1 = h.made
    token = h.ok(h.req(m.ObjectLend, end1, p_uid=a))
    h.ok(h.req(m.ObjectClaim, end1, token, p_uid=b))
    h.ok(h.req(m.ObjectRelease, end1, p_uid=a))       # a closes its copy of b's end
    assert not ch1.closed
    ch0.send(b"last words")
    h.ok(h.req(m.ObjectRelease, end0, p_uid=a))       # end 0 has no handle left
    h.pump()
    assert ch0.closed and not ch1.closed and d["o_uid"] in h.gs.objs
    assert ch0.recv() == b"last words"             # what was sent before the close arrives
    h.exit(b, -9)                                     # end 1's last holder dies
    h.pump()
    assert d["o_uid"] not in h.gs.objs and not live(ch0) and not live(ch1)
    assert listed(h) == {}


def test_the_shepherd_frees_only_the_objects_pool_and_no_registered_channel(h):
    from ember.objects.ending import end_parts
    from ember.pools_c import Pool
    a = h.create("a")
    with Pool.create(1 << 20) as other:
        blk = other.alloc(64)
        ch = Channel.create(other)
        assert end_parts(h.pool, [ch.sdesc], [["alloc", blk.sdesc], ["chan", ch.sdesc]]) == [
            "closing a channel: ValueError: the channel is not in the object's pool",
            "freeing part 'alloc': ValueError: the allocation is not in the object's pool",
            "freeing part 'chan': ValueError: the channel is not in the object's pool"]
        assert not ch.closed
        ch.destroy()
        blk.free()
    # a channel registered with GS (made by the node's shepherd), named as a part
    key = h.req(m.ChannelCreate, None, "registered", {}, False, p_uid=a)
    h.pump()
    reg = h.ok(key)["sdesc"]
    errs = end_parts(h.pool, [], [["chan", reg]], [c.sdesc for c in h.node.chans.values()])
    assert errs == ["freeing part 'chan': ValueError: the channel is one of the node's "
                    "registered channels"]
    lock = Lock(pool=h.pool)
    assert end_parts(h.pool, [], [["sync", 99, lock.sdesc]])[0].startswith(
        "freeing part 'sync': DescriptorError: cannot attach ")
    lock.destroy()
