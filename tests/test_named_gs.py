"""The GS registry of named objects as a state machine (the harness of
test_gs_state.py: scripted messages, a fake shepherd, a fake clock):
create, soft create, attach waiting for a name (and its server-side
timeout), references, loans (pickling), each lifetime at a holder's exit,
Pipe ends closing their direction, parts freed with the object."""
import pickle

import pytest

from ember import messages as m
from ember.exceptions import DescriptorError
from ember.sync_c import Lock
from test_gs_state import Harness


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def create(h, p_uid, kind="Queue", name=None, lifetime=None, channels=(), parts=(), children=(),
           soft=False, desc=b"d"):
    return h.req(m.ObjectCreate, kind, name, lifetime, desc, [list(c) for c in channels],
                 [list(p) for p in parts], [[k, list(c)] for k, c in children], soft, p_uid=p_uid)


def listed(h):
    return {(n or o): (k, lt) for o, n, k, lt in h.ok(h.req(m.ObjectList))}


def test_create_attach_soft_and_errors(h):
    a = h.create("a")
    d = h.ok(create(h, a, name="jobs", channels=[[16, 256]]))
    assert d["name"] == "jobs" and d["lifetime"] == "runtime" and len(d["channels"]) == 1
    assert d["o_uid"] in {1} and h.gs.chans        # the channel is an ordinary GS channel
    again = h.ok(create(h, a, name="jobs", soft=True, desc=b"other"))
    assert again["o_uid"] == d["o_uid"] and again["desc"] == b"d"
    assert h.err(create(h, a, name="jobs")) == (
        "ObjectError", "an object is already named 'jobs' (Queue, o_uid 1)")
    assert h.err(create(h, a, kind="Lock", name="jobs", soft=True)) == (
        "ObjectError", "an object is already named 'jobs' (Queue, o_uid 1)")
    assert h.err(create(h, a, lifetime="forever")) == (
        "ObjectError", "lifetime must be one of 'runtime', 'owner', 'refcount', got 'forever'")
    assert h.err(create(h, a, channels=[[0, 1]])) == (
        "ObjectError", "a channel spec must be [capacity, block_size], got [0, 1]")
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
    # a waiter whose process exits is forgotten
    gone = h.req(m.ObjectAttach, "x", None, None, p_uid=b)
    h.exit(b, 0)
    create(h, a, name="x")
    assert h.reply(gone) is None


def test_refcount_ends_with_the_last_holder_and_frees_its_parts(h):
    a, b = h.create("a"), h.create("b")
    lock = Lock(pool=h.pool)
    d = h.ok(create(h, a, channels=[[8, 128]], parts=[["sync", lock.__reduce__()[1][1],
                                                        lock.sdesc]]))
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
    assert o not in h.gs.objs and not h.gs.chans
    with pytest.raises(DescriptorError, match=r"^pool 'default' \(m_uid 0x[0-9a-f]+\): cannot "
                                              r"attach allocation at offset \d+ \(id \d+\): the "
                                              r"block is not allocated \(already freed\)"):
        pickle.loads(pickle.dumps(lock))              # its memory was freed with the object
    assert h.ok(h.req(m.ObjectRelease, o, p_uid=a)) is False     # already ended: harmless


def test_owner_lifetime_and_runtime_lifetime_at_the_creators_exit(h):
    a, b = h.create("a"), h.create("b")
    own = h.ok(create(h, a, name="own", lifetime="owner"))["o_uid"]
    h.ok(h.req(m.ObjectAttach, "own", None, None, p_uid=b))
    keep = h.ok(create(h, a, name="keep", channels=[[8, 128]]))["o_uid"]
    unclaimed = h.ok(create(h, a, name="rc", lifetime="refcount"))["o_uid"]
    h.ok(h.req(m.ObjectLend, unclaimed, p_uid=a))     # pickled but never unpickled
    h.exit(a, 0)
    assert own not in h.gs.objs                       # ended with its owner, although b held it
    assert unclaimed not in h.gs.objs                 # the lender's loan ends with it
    assert keep in h.gs.objs and listed(h) == {"keep": ("Queue", "runtime")}
    h.ok(h.req(m.ObjectDestroy, "keep", p_uid=b))
    assert not h.gs.objs and not h.gs.chans


def test_pipe_ends_close_their_direction_and_the_pipe_ends_with_both(h):
    a, b = h.create("a"), h.create("b")
    d = h.ok(create(h, a, kind="Pipe", lifetime="refcount", channels=[[8, 128], [8, 128]],
                    children=[("Connection", [0]), ("Connection", [1])]))
    end0, end1 = d["children"]
    ch0, ch1 = (h.gs.chans[c].ch for c in h.gs.objs[d["o_uid"]].c_uids)
    token = h.ok(h.req(m.ObjectLend, end1, p_uid=a))
    h.ok(h.req(m.ObjectClaim, end1, token, p_uid=b))
    h.ok(h.req(m.ObjectRelease, end1, p_uid=a))       # a closes its copy of b's end
    assert not ch1.closed
    ch0.send(b"last words")
    h.ok(h.req(m.ObjectRelease, end0, p_uid=a))       # end 0 has no handle left
    assert ch0.closed and not ch1.closed and d["o_uid"] in h.gs.objs
    h.exit(b, -9)                                     # end 1's last holder dies
    assert d["o_uid"] not in h.gs.objs and not h.gs.chans
    assert listed(h) == {}


def test_parts_must_be_default_pool_allocations_that_are_no_channel(h):
    import struct

    from ember.channels_c import Channel
    from ember.pools_c import Pool
    a = h.create("a")
    with Pool.create(1 << 20) as other:
        blk = other.alloc(64)
        assert h.err(create(h, a, parts=[["alloc", blk.sdesc]])) == (
            "ObjectError", "a part must be an allocation of the runtime's default pool")
        blk.free()
    c = Channel.attach(h.ok(create(h, a, channels=[[8, 128]]))["channels"][0])
    offset = struct.unpack_from("<Q", c.sdesc, 104)[0]
    c.detach()
    (chan_block,) = [x for x in h.pool._live_allocations() if x.offset == offset]
    assert h.err(create(h, a, parts=[["alloc", chan_block.sdesc]])) == (
        "ObjectError", "a part must not be a channel's memory")
    err_type, msg = h.err(create(h, a, parts=[["alloc", b"garbage"]]))
    assert err_type == "ObjectError" and msg.startswith("a part names no live allocation: ")
