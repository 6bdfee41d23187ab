"""Global services as a state machine: scripted requests in, replies out,
with a recording transport and a scripted fake shepherd.  Pools and channels
are real: the harness's shepherd side is the real NodeResources (what the
node's shepherd runs), fed GS's requests after each message (``pump``), and
each test destroys what it made."""
import os
import signal
import time

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember import _env, messages as m
from ember.globalservices.server import GlobalServices
from ember.pools_c import Pool
from ember.shepherd.resources import NodeResources


LAUNCHER_KEY = b"L" * 16


class Harness:
    def __init__(self):
        import io

        self.errlog = io.StringIO()   # death reports
        self.replies = {}          # (r, tag) -> Reply
        self.sh = []               # messages to the shepherd
        self.now = 100.0
        self.tags = iter(range(1, 10**9))
        self.tag_prefix = _env.owner_tag("p")
        self.pool = Pool.create(1 << 22, name="default", owner_tag=self.tag_prefix)
        self.to_node = []          # GS -> the node's resources (pools, channels)
        self.from_node = []        # the node's resources -> GS
        self.auto = True           # pump after every message
        self.node = NodeResources(self.from_node.append)
        self.gs = GlobalServices(runtime_tag=self.tag_prefix, send_reply=self._reply,
                                 send_shepherd=self._to_shepherd, clock=lambda: self.now,
                                 default_pool=self.pool, launcher_key=LAUNCHER_KEY,
                                 reserved_replies=[b"GS-INPUT"], err=self.errlog)
        self.next_pid = 5000

    def _to_shepherd(self, msg):
        (self.to_node if type(msg) in NodeResources.TYPES else self.sh).append(msg)

    def pump(self):
        """Let the node's shepherd do what GS asked, and GS hear back."""
        while self.to_node or self.from_node:
            while self.to_node:
                self.node.handle_msg(self.to_node.pop(0))
            while self.from_node:
                self.gs.handle_bytes(self.from_node.pop(0).pack(), trusted=True)

    def _reply(self, r, msg):
        assert type(msg) is m.Reply
        key = (r, msg.ref)
        assert key not in self.replies, f"second reply to {key}"
        self.replies[key] = msg

    def key(self, p_uid):
        """The request key GS made for ``p_uid`` (what its EMBER_KEY holds)."""
        if p_uid == 0:
            return LAUNCHER_KEY
        rec = self.gs.procs.get(p_uid)
        return rec.key if rec is not None else b"?" * 16

    def req(self, cls, *fields, p_uid=0, r=None, key=None):
        """Send a request as process ``p_uid`` (with its key unless ``key``
        is given), replying to ``r`` (default: ``b"R<p_uid>"``)."""
        tag = next(self.tags)
        r = f"R{p_uid}".encode() if r is None else r
        key = self.key(p_uid) if key is None else key
        self.gs.handle_bytes(cls(tag, p_uid, r, key, *fields).pack())
        if self.auto:
            self.pump()
        return (r, tag)

    def shepherd(self, msg):
        """A message from the (fake) shepherd, on the control channel."""
        self.gs.handle_bytes(msg.pack(), trusted=True)
        if self.auto:
            self.pump()

    def reply(self, key):
        return self.replies.get(key)

    def ok(self, key):
        rep = self.replies[key]
        assert rep.status == m.ERR_OK, (rep.err_type, rep.msg)
        return rep.value

    def err(self, key):
        rep = self.replies[key]
        assert rep.status != m.ERR_OK, rep.value
        return rep.err_type, rep.msg

    # the fake shepherd
    def spawn_all(self, fail=None):
        out = []
        for msg in [x for x in self.sh if type(x) is m.ShSpawn]:
            self.sh.remove(msg)
            self.next_pid += 1
            err = fail if fail else None
            self.shepherd(m.ShSpawned(msg.tag, msg.p_uid, None if err else self.next_pid, err))
            out.append(msg)
        return out

    def exit(self, p_uid, code):
        self.shepherd(m.ShExited(p_uid, code))

    def create(self, name="", **kw):
        key = self.req(m.ProcessCreate, "/bin/true", [], {}, "/", name, {}, kw.get("soft", False),
                       p_uid=kw.get("p_uid", 0))
        self.spawn_all()
        return self.ok(key)["p_uid"]

    def advance(self, dt):
        self.now += dt
        self.gs.expire()
        if self.auto:
            self.pump()

    def close(self):
        self.node.close()
        self.pool.destroy()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


def test_create_replies_only_after_spawn(h):
    key = h.req(m.ProcessCreate, "/bin/echo", ["hi"], {"A": "1"}, "/tmp", "worker", {}, False)
    assert h.reply(key) is None
    (spawn,) = [x for x in h.sh if type(x) is m.ShSpawn]
    assert (spawn.exe, spawn.args, spawn.run_dir, spawn.user_name) == \
        ("/bin/echo", ["hi"], "/tmp", "worker")
    # the request key GS made for the process goes into its environment
    assert spawn.env == {"A": "1", "EMBER_KEY": h.gs.procs[spawn.p_uid].key.hex()}
    h.spawn_all()
    d = h.ok(key)
    assert d["user_name"] == "worker" and d["state"] == "running" and d["retval"] is None
    assert d["os_pid"] == h.next_pid and d["node"] == 0


def test_spawn_failure_is_process_error_and_frees_the_name(h):
    key = h.req(m.ProcessCreate, "/nope", [], {}, "/", "w", {}, False)
    h.spawn_all(fail="cannot execute '/nope': [Errno 2] No such file or directory")
    assert h.err(key) == ("ProcessError", "cannot start process: cannot execute '/nope': "
                                          "[Errno 2] No such file or directory")
    assert "w" not in h.gs.last_by_name
    p = h.create("w")
    h.exit(p, 0)
    h.req(m.ProcessCreate, "/nope", [], {}, "/", "w", {}, False)
    h.spawn_all(fail="no")
    # the name again finds the process that did run
    assert h.ok(h.req(m.ProcessQuery, "w"))["p_uid"] == p


def test_names_unique_among_live_soft_create_and_reuse(h):
    p = h.create("w")
    key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "w", {}, False)
    assert h.err(key) == ("ProcessError", f"a live process is already named 'w' (p_uid {p})")
    key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "w", {}, True)
    assert h.ok(key)["p_uid"] == p
    h.exit(p, 0)
    q = h.create("w")
    assert q != p
    assert h.ok(h.req(m.ProcessQuery, "w"))["p_uid"] == q


def test_query_unknown_and_bad_identifiers(h):
    assert h.err(h.req(m.ProcessQuery, 99)) == ("ProcessError", "no process with p_uid 99")
    assert h.err(h.req(m.ProcessQuery, "ghost")) == ("ProcessError", "no process named 'ghost'")
    assert h.err(h.req(m.ProcessQuery, 1.5)) == (
        "ProcessError", "process identifier must be an int or str, not float")


def test_list_shows_live_and_exited_processes(h):
    a, b = h.create("a"), h.create()
    assert h.ok(h.req(m.ProcessList)) == [[a, "a", True], [b, None, True]]
    h.exit(a, 0)
    # exited processes stay listed (query still answers for them), flagged
    assert h.ok(h.req(m.ProcessList)) == [[a, "a", False], [b, None, True]]


def test_join_waits_for_exit_and_exit_codes(h):
    p = h.create()
    key = h.req(m.ProcessJoin, [p], None, False, False)
    assert h.reply(key) is None
    h.exit(p, -9)
    exited, status = h.ok(key)
    assert exited == [[p, -9]] and status == {p: ["exited", -9]}
    # joining an exited process answers at once
    assert h.ok(h.req(m.ProcessJoin, [p], None, False, False))[0] == [[p, -9]]


def test_a_join_that_waits_asks_the_shepherd_to_poke_those_exits(h):
    # The shepherd reports a plain exit quietly (no poke); a join parked in
    # GS has it report the ends of the processes it waits for with a poke.
    a, b, c = h.create(), h.create(), h.create()
    h.exit(c, 0)
    h.sh.clear()
    key = h.req(m.ProcessJoin, [a, b, c], None, True, False)
    assert h.reply(key) is None
    assert [(type(x), x.p_uids) for x in h.sh] == [(m.ShExitWanted, [a, b])]
    h.sh.clear()
    h.exit(a, 0)
    h.exit(b, 0)
    assert h.ok(key)[0] == [[a, 0], [b, 0], [c, 0]]
    # answered at once, or with a timeout of 0: nothing asked
    h.ok(h.req(m.ProcessJoin, [a], None, False, False))
    d = h.create()
    h.ok(h.req(m.ProcessJoin, [d], 0, False, False))
    assert h.sh == []


def test_a_request_that_reports_a_process_s_state_first_reads_the_shepherd_s_reports(h):
    # The shepherd reports a plain exit on GS's control channel without a
    # poke (Shepherd.quiet_reports), so a query sent right after it (a
    # kernel-answered join returned) may reach GS before anything made GS
    # read it: query, list, join, kill and dump read the control channel
    # first and see every report sent before them.
    from ember.channels_c import Channel

    ch = Channel.create(h.pool)
    h.gs.ctl_channel = ch
    try:
        seen, unread = [], []
        for ask in ("query", "list", "join", "kill", "dump"):
            p = h.create()
            ch.send(m.ShExited(p, 0).pack())           # sent, not read (no poke)
            if ask == "query":
                seen.append(h.ok(h.req(m.ProcessQuery, p))["state"])
            elif ask == "list":
                seen.append([a for q, _, a in h.ok(h.req(m.ProcessList)) if q == p])
            elif ask == "join":
                seen.append(h.ok(h.req(m.ProcessJoin, [p], 0, False, False))[0])
            elif ask == "kill":
                seen.append(h.err(h.req(m.ProcessKill, p, signal.SIGTERM))[1])
            else:
                seen.append([d for d in h.ok(h.req(m.ServiceDump))["processes"]
                             if d["p_uid"] == p])
            unread.append(len(ch))
        assert seen[:3] == ["exited", [False], [[seen[2][0][0], 0]]], seen
        assert "has already exited" in seen[3], seen
        assert seen[4][0]["state"] == "exited", seen
        assert not [x for x in h.sh if type(x) in (m.ShKill, m.ShExitWanted)], h.sh
        assert unread == [0] * 5, unread
    finally:
        h.gs.ctl_channel = None
        ch.destroy()


def test_the_teardown_reads_the_shepherd_s_reports_before_it_names_survivors(h):
    # The head joined its last process (the kernel's answer) and exited at
    # once: that process's exit report can still sit unread on GS's control
    # channel (a plain exit is reported without a poke) when the launcher's
    # Teardown(survivors=True) comes.  The survivors' line must not name it
    # ("head exited; terminating 1 running process: ...", seen in a
    # tutorial run), nor may it be sent a signal.
    from ember.channels_c import Channel

    ch = Channel.create(h.pool)
    h.gs.ctl_channel = ch
    try:
        done, live = h.create("done"), h.create("live")
        ch.send(m.ShExited(done, 0).pack())              # sent, not read (no poke)
        h.sh.clear()
        h.req(m.Teardown, 5.0, True)
        assert len(ch) == 0
        kills = [(x.p_uid, x.sig) for x in h.sh if type(x) is m.ShKill]
        assert kills == [(live, signal.SIGTERM)], kills
        lines = [ln for ln in h.errlog.getvalue().splitlines() if "head exited" in ln]
        assert lines == [f"ember: head exited; terminating 1 running process: {live} 'live'"], \
            lines
    finally:
        h.gs.ctl_channel = None
        ch.destroy()


def test_join_timeout_is_server_side_and_leaves_no_waiter(h):
    p = h.create()
    key = h.req(m.ProcessJoin, [p], 2.0, False, False)
    h.advance(1.9)
    assert h.reply(key) is None
    h.advance(0.2)
    exited, status = h.ok(key)
    assert exited is None and status == {p: ["running", None]}
    assert not h.gs.owned_waiters and not h.gs.procs[p].waiters
    h.exit(p, 0)       # no late second reply (the harness asserts on duplicates)
    assert h.gs.next_timeout() is None


def test_join_timeout_zero_and_self_join(h):
    p = h.create()
    assert h.ok(h.req(m.ProcessJoin, [p], 0, False, False))[0] is None
    assert h.err(h.req(m.ProcessJoin, [p], None, False, False, p_uid=p)) == (
        "ProcessError", f"process {p} cannot join itself")
    assert h.err(h.req(m.ProcessJoin, [p], -1, False, False)) == (
        "ProcessError", "timeout must be a number >= 0 or None, got -1")


def test_multi_join_any_all_and_bad_exit(h):
    a, b, c = h.create(), h.create(), h.create()
    any_key = h.req(m.ProcessJoin, [a, b, c], None, False, False)
    all_key = h.req(m.ProcessJoin, [a, b, c], None, True, False)
    bad_key = h.req(m.ProcessJoin, [a, b, c], None, True, True)
    h.exit(b, 0)
    assert h.ok(any_key)[0] == [[b, 0]]
    assert h.reply(all_key) is None and h.reply(bad_key) is None
    h.exit(a, 3)
    assert h.ok(bad_key)[0] == [[a, 3], [b, 0]]
    assert h.reply(all_key) is None
    h.exit(c, 0)
    exited, status = h.ok(all_key)
    assert exited == [[a, 3], [b, 0], [c, 0]]
    assert status == {a: ["exited", 3], b: ["exited", 0], c: ["exited", 0]}


def test_multi_join_all_timeout_reports_partial(h):
    a, b = h.create(), h.create()
    key = h.req(m.ProcessJoin, [a, b], 1.0, True, False)
    h.exit(a, 0)
    h.advance(1.5)
    assert h.ok(key)[0] == [[a, 0]]


def test_kill_forwards_and_rejects(h):
    p = h.create()
    h.sh.clear()
    h.ok(h.req(m.ProcessKill, p, int(signal.SIGTERM)))
    assert h.sh == [m.ShKill(p, int(signal.SIGTERM))]
    assert h.err(h.req(m.ProcessKill, p, 0)) == ("ProcessError", f"invalid signal 0 for process {p}")
    h.exit(p, -15)
    assert h.err(h.req(m.ProcessKill, p, 9)) == (
        "ProcessError", f"process {p} has already exited (exit code -15)")


def test_exit_before_spawned_reply_is_handled(h):
    key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {}, False)
    (spawn,) = [x for x in h.sh if type(x) is m.ShSpawn]
    h.exit(spawn.p_uid, 0)             # the shepherd saw the exit first
    h.shepherd(m.ShSpawned(spawn.tag, spawn.p_uid, 4242, None))
    d = h.ok(key)
    assert d["state"] == "exited" and d["retval"] == 0 and d["os_pid"] == 4242


def test_channel_join_before_and_after_create(h):
    k1 = h.req(m.ChannelJoin, "pipe", None, r=b"R1")
    k2 = h.req(m.ChannelJoin, "pipe", 5.0, r=b"R2")
    assert h.reply(k1) is None and h.reply(k2) is None
    ck = h.req(m.ChannelCreate, None, "pipe", {"capacity": 16, "block_size": 256}, False)
    d = h.ok(ck)
    assert h.ok(k1) == d and h.ok(k2) == d
    assert d["capacity"] == 16 and d["block_size"] == 256 and d["m_uid"] == 1
    assert h.ok(h.req(m.ChannelJoin, "pipe", 0)) == d
    assert h.gs.next_timeout() is None


def test_channel_join_timeout(h):
    key = h.req(m.ChannelJoin, "never", 0.5)
    h.advance(0.6)
    assert h.err(key) == ("ChannelTimeout", "channel.join('never') timed out: "
                                            "no channel of that name was created")
    assert not h.gs.chan_joiners
    assert h.err(h.req(m.ChannelJoin, "never", 0)) == (
        "ChannelTimeout", "channel.join('never') timed out: no channel of that name was created")


def test_channel_names_soft_and_destroy(h):
    d = h.ok(h.req(m.ChannelCreate, None, "c", {}, False))
    assert h.err(h.req(m.ChannelCreate, None, "c", {}, False)) == (
        "ChannelError", f"a channel is already named 'c' (c_uid {d['c_uid']})")
    assert h.ok(h.req(m.ChannelCreate, None, "c", {}, True)) == d
    assert h.ok(h.req(m.ChannelList)) == [[d["c_uid"], "c"]]
    h.ok(h.req(m.ChannelDestroy, "c"))
    assert h.err(h.req(m.ChannelQuery, "c")) == ("ChannelError", "no channel named 'c'")
    assert h.ok(h.req(m.ChannelCreate, None, "c", {}, False))["c_uid"] != d["c_uid"]


def test_channel_bad_options(h):
    assert h.err(h.req(m.ChannelCreate, None, "x", {"capacity": 0}, False)) == (
        "ChannelError", "ChannelOptions.capacity must be a positive int, got 0")
    assert h.err(h.req(m.ChannelCreate, 77, "x", {}, False)) == (
        "ChannelError", "cannot create channel 'x': no pool with m_uid 77")


def test_ref_counted_channel_destroyed_when_holders_exit(h):
    a, b = h.create(), h.create()
    d = h.ok(h.req(m.ChannelCreate, None, "rc", {"ref_count": True}, False, p_uid=a))
    h.ok(h.req(m.ChannelJoin, "rc", None, p_uid=b))
    h.exit(a, 0)
    assert d["c_uid"] in h.gs.chans
    h.exit(b, 0)
    assert d["c_uid"] not in h.gs.chans and "rc" not in h.gs.chan_names


def test_ref_counted_release(h):
    a = h.create()
    d = h.ok(h.req(m.ChannelCreate, None, "rc2", {"ref_count": True}, False, p_uid=a))
    h.ok(h.req(m.ChannelRelease, "rc2", p_uid=a))
    assert d["c_uid"] not in h.gs.chans
    d = h.ok(h.req(m.ChannelCreate, None, "plain", {}, False, p_uid=a))
    assert h.err(h.req(m.ChannelRelease, "plain", p_uid=a)) == (
        "ChannelError", f"channel plain (c_uid {d['c_uid']}) is not ref-counted")


def test_pools(h):
    d = h.ok(h.req(m.PoolCreate, 1 << 20, "p1", {}, False))
    assert d["name"] == "p1" and d["size"] >= 1 << 20 and d["m_uid"] != 1
    assert h.ok(h.req(m.PoolCreate, 1 << 20, "p1", {}, True)) == d
    assert h.err(h.req(m.PoolCreate, 1 << 20, "p1", {}, False))[0] == "PoolError"
    assert h.ok(h.req(m.PoolList)) == [[1, "default"], [d["m_uid"], "p1"]]
    assert h.ok(h.req(m.PoolDefault))["m_uid"] == 1
    c = h.ok(h.req(m.ChannelCreate, d["m_uid"], None, {}, False))
    assert h.err(h.req(m.PoolDestroy, "p1")) == (
        "PoolError", f"pool p1 (m_uid {d['m_uid']}) still holds 1 channel(s) [{c['c_uid']}]: "
                     "destroy them first")
    h.ok(h.req(m.ChannelDestroy, c["c_uid"]))
    h.ok(h.req(m.PoolDestroy, "p1"))
    assert h.err(h.req(m.PoolQuery, "p1")) == ("PoolError", "no pool named 'p1'")
    assert h.err(h.req(m.PoolDestroy, 1)) == (
        "PoolError", "pool 1 is the runtime's default pool and cannot be destroyed")
    assert h.err(h.req(m.PoolCreate, 0, None, {}, False)) == (
        "PoolError", "pool size must be a positive int, got 0")


def test_dead_process_waiters_are_forgotten(h):
    a, b = h.create(), h.create()
    h.req(m.ProcessJoin, [b], None, False, False, p_uid=a, r=b"RA")
    h.req(m.ChannelJoin, "later", None, p_uid=a, r=b"RA")
    h.exit(a, -9)
    assert not h.gs.owned_waiters and not h.gs.chan_joiners and not h.gs.procs[b].waiters
    h.exit(b, 0)
    assert (b"RA", 1) not in h.replies


def test_teardown_terms_kills_destroys_and_stops_shepherd(h):
    a, b = h.create(), h.create()
    h.ok(h.req(m.ChannelCreate, None, "x", {}, False))
    h.ok(h.req(m.PoolCreate, 1 << 20, "extra", {}, False))
    h.sh.clear()
    key = h.req(m.Teardown, 1.0)
    assert h.sh == [m.ShKill(a, 15), m.ShKill(b, 15)]
    h.exit(a, -15)
    h.advance(1.1)                      # b ignored SIGTERM
    assert m.ShKill(b, 9) in h.sh
    h.exit(b, -9)
    assert not h.gs.chans and list(h.gs.pools) == [1]
    (shut,) = [x for x in h.sh if type(x) is m.ShShutdown]
    assert h.reply(key) is None
    h.shepherd(m.ShShutdownDone(shut.tag))
    assert h.gs.finished and h.ok(key) == {a: -15, b: -9}
    assert h.err(h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {}, False)) == (
        "ProcessError", "the runtime is shutting down: no new processes")


def test_malformed_requests_get_error_replies(h):
    # wrong field types in a well-formed message
    assert h.err(h.req(m.ProcessCreate, 5, "notalist", {}, "/", "", {}, False)) == (
        "ProcessError", "exe must be a non-empty str")
    # unknown message type with no reply address: dropped, GS keeps serving
    h.gs.handle_bytes(msgpack.packb([999, 1, 2]))
    h.gs.handle_bytes(b"\xc1garbage")
    h.gs.handle_bytes(msgpack.packb([m.ProcessQuery.code, 1]))   # too few fields
    h.gs.handle_bytes(msgpack.packb({"a": 1}))
    # a reply-type message sent to GS with a reply address
    h.gs.handle_bytes(m.Reply(1, 0, None, None, None, None).pack())
    assert h.ok(h.req(m.ProcessList)) == []


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=10)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(code=st.sampled_from(sorted(m.by_code)), fields=st.lists(_values, max_size=12))
def test_fuzzed_messages_never_stop_gs(h, code, fields):
    h.gs.handle_bytes(msgpack.packb([code] + fields, use_bin_type=True))
    # GS still answers a well-formed request afterwards
    key = h.req(m.PoolDefault)
    assert h.ok(key)["m_uid"] == 1


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.binary(max_size=64))
def test_fuzzed_bytes_never_stop_gs(h, data):
    h.gs.handle_bytes(data)
    assert h.ok(h.req(m.PoolDefault))["m_uid"] == 1


def test_transport_never_blocks_on_a_full_reply_channel(h):
    from ember.channels_c import Channel
    from ember.globalservices.server import ChannelTransport

    reply = Channel.create(h.pool, capacity=1, block_size=256)
    sh = Channel.create(h.pool, capacity=1, block_size=256)
    t = ChannelTransport(sh, Channel.attach)
    try:
        t(reply.sdesc, m.reply_ok(1, "first"))
        t(reply.sdesc, m.reply_ok(2, "dropped, not blocking"))    # full: dropped at once
        assert m.unpack(reply.recv(timeout=0)) == m.reply_ok(1, "first")
        assert len(reply) == 0
        # the shepherd's channel full: messages wait in the backlog, in order
        for i in range(3):
            t.to_shepherd(m.ShKill(i, 9))
        assert len(t.backlog) == 2 and not t.flush()
        got = [m.unpack(sh.recv(timeout=0))]
        assert t.flush() is False           # one more fits, one still waits
        got.append(m.unpack(sh.recv(timeout=0)))
        assert t.flush() is True and not t.backlog
        got.append(m.unpack(sh.recv(timeout=0)))
        assert [g.p_uid for g in got] == [0, 1, 2]
        t(b"\x00garbage-descriptor", m.reply_ok(3))   # unattachable: dropped, no raise
    finally:
        for ch in t.cache.values():
            ch.detach()
        reply.destroy()
        sh.destroy()


def test_cancel_forgets_a_parked_wait(h):
    p, q = h.create(), h.create()
    j = h.req(m.ProcessJoin, [p], None, False, False, p_uid=q, r=b"RX")
    c = h.req(m.ChannelJoin, "rc-later", None, p_uid=p, r=b"RY")
    h.gs.handle_bytes(m.Cancel(99, q, b"RX", h.key(q), j[1]).pack())
    h.gs.handle_bytes(m.Cancel(98, p, b"RY", h.key(p), c[1]).pack())
    h.gs.handle_bytes(m.Cancel(97, p, b"RY", h.key(p), 12345).pack())   # unknown: ignored
    assert not h.gs.owned_waiters and not h.gs.chan_joiners and not h.gs.procs[p].waiters
    d = h.ok(h.req(m.ChannelCreate, None, "rc-later", {"ref_count": True}, False))
    h.exit(p, 0)
    assert h.reply(j) is None and h.reply(c) is None               # no late replies
    assert h.gs.chans[d["c_uid"]].holders == {0: 1}                # the cancelled join added no ref


def test_requests_from_a_dead_process_are_dropped(h):
    p = h.create()
    h.exit(p, -9)
    # already queued when it died: must not park, reply or take a reference
    k1 = h.req(m.ChannelJoin, "after-death", None, p_uid=p, r=b"RD")
    d = h.ok(h.req(m.ChannelCreate, None, "after-death", {"ref_count": True}, False))
    k2 = h.req(m.ProcessList, p_uid=p, r=b"RD")
    assert h.reply(k1) is None and h.reply(k2) is None
    assert h.gs.chans[d["c_uid"]].holders == {0: 1} and not h.gs.procs[p].replies


# ------------------------------------------------------------- trust model
def test_requests_need_the_key_gs_made_for_the_claimed_p_uid(h, capsys):
    a, b = h.create("a"), h.create("b")
    d = h.ok(h.req(m.ChannelCreate, None, "held", {"ref_count": True}, False, p_uid=a))
    # b claims to be a (with its own key, with none, with a guess): dropped, no reply
    for key in (h.key(b), b"", b"\0" * 16):
        k = h.req(m.ChannelRelease, "held", p_uid=a, key=key, r=b"RB")
        assert h.reply(k) is None
    assert h.gs.chans[d["c_uid"]].holders == {a: 1}
    # a p_uid GS never gave, and the launcher's p_uid without its key
    assert h.reply(h.req(m.ProcessList, p_uid=99)) is None
    assert h.reply(h.req(m.ProcessList, p_uid=0, key=h.key(a))) is None
    err = capsys.readouterr().err
    assert err.count("dropped ChannelRelease claiming p_uid %d: its key is not that process's" % a) == 3
    assert "dropped ProcessList claiming p_uid 99" in err
    h.ok(h.req(m.ChannelRelease, "held", p_uid=a))          # the real holder can
    assert d["c_uid"] not in h.gs.chans


def test_shepherd_messages_only_from_the_control_channel(h, capsys):
    p = h.create()
    h.gs.handle_bytes(m.ShExited(p, 0).pack())               # public channel: forged
    h.gs.handle_bytes(m.ShShutdownDone(1).pack())
    assert h.gs.procs[p].state == "running" and not h.gs.finished
    assert "dropped ShExited from the public input channel: only the shepherd sends it" \
        in capsys.readouterr().err
    h.exit(p, 0)                                              # the control channel: accepted
    assert h.gs.procs[p].state == "exited"


def test_teardown_only_from_the_launcher(h):
    p = h.create()
    assert h.err(h.req(m.Teardown, 0.0, p_uid=p)) == (
        "EmberError", f"Teardown is accepted from the launcher only, not from process {p}")
    assert h.gs.teardown is None


def test_reply_channels_are_registered_to_one_process(h, capsys):
    a, b = h.create(), h.create()
    d = h.ok(h.req(m.ChannelCreate, None, "user", {}, False, p_uid=a))
    h.ok(h.req(m.ProcessList, p_uid=a, r=b"RA"))
    # another process's reply channel, a registered channel, GS's own input
    for r in (b"RA", d["sdesc"], b"GS-INPUT"):
        assert h.reply(h.req(m.ProcessList, p_uid=b, r=r)) is None
    err = capsys.readouterr().err
    assert f"dropped ProcessList from p_uid {b}: its reply channel cannot be used (it is process " \
           f"{a}'s reply channel)" in err
    assert "(it is a registered channel)" in err
    assert "(it is one of the runtime's own channels)" in err
    assert h.gs.reply_owner == {b"R0": 0, b"R%d" % a: a, b"RA": a}
    freed = []
    h.gs._free_reply_channel = freed.append    # the harness transport has no forget()
    h.exit(b, 0)
    assert freed == []                                        # b registered nothing
    h.exit(a, 0)
    assert sorted(freed) == [b"R%d" % a, b"RA"] and h.gs.reply_owner == {b"R0": 0}
    assert d["c_uid"] in h.gs.chans


def test_check_reply_rejects_what_the_transport_cannot_use(h, capsys):
    h.gs.check_reply = lambda r: None if r.startswith(b"R") else "cannot attach it: garbage"
    p = h.create()
    assert h.reply(h.req(m.ProcessList, p_uid=p, r=b"\x00junk")) is None
    assert "its reply channel cannot be used (cannot attach it: garbage)" in capsys.readouterr().err
    assert b"\x00junk" not in h.gs.reply_owner


# -------------------------------------------------------- cleanup isolation
def _break(h, c_uid):
    """Make the destroy of a channel fail: destroy it behind GS's and the
    shepherd's back."""
    h.node.chans[c_uid].destroy()


def test_exit_cleanup_steps_are_independent(h, capsys):
    a, b = h.create(), h.create()
    rcs = [h.ok(h.req(m.ChannelCreate, None, f"rc{i}", {"ref_count": True}, False, p_uid=a))["c_uid"]
           for i in range(3)]
    h.req(m.ProcessJoin, [b], None, False, False, p_uid=a, r=b"RA2")
    freed = []
    h.gs._free_reply_channel = lambda r: (freed.append(r), 1 / 0)
    _break(h, rcs[0])
    h.exit(a, -9)
    # every other reference dropped, every reply channel tried, waits forgotten
    assert not any(c in h.gs.chans for c in rcs)
    assert sorted(freed) == [b"R%d" % a, b"RA2"] and not h.gs.procs[a].replies
    assert not h.gs.owned_waiters and not h.gs.procs[b].waiters
    err = capsys.readouterr().err
    # the node's shepherd logs the failed free (GS forgot the channel already)
    assert f"freeing channel {rcs[0]}: ChannelError" in err
    assert err.count(f"freeing a reply channel of process {a}: ZeroDivisionError") == 2


def test_teardown_goes_on_when_a_destroy_fails(h, capsys):
    a = h.create()
    rc = h.ok(h.req(m.ChannelCreate, None, "rcx", {"ref_count": True}, False, p_uid=a))["c_uid"]
    plain = h.ok(h.req(m.ChannelCreate, None, "plain", {}, False))["c_uid"]
    _break(h, rc)
    _break(h, plain)
    key = h.req(m.Teardown, 5.0)
    h.exit(a, -15)
    # no waiting for the grace: the exit's failed cleanup does not hide it
    assert [x for x in h.sh if type(x) is m.ShShutdown]
    assert not h.gs.chans
    (shut,) = [x for x in h.sh if type(x) is m.ShShutdown]
    h.shepherd(m.ShShutdownDone(shut.tag))
    assert h.ok(key) == {a: -15}


# ---------------------------------------------------- one client, bounded
def test_garbage_reply_addresses_are_bounded_and_warned_rate_limited(h, capsys):
    h.gs.check_reply = lambda r: "cannot attach it: garbage" if r.startswith(b"G") else None
    p = h.create()
    for i in range(5000):
        h.req(m.ProcessList, p_uid=p, r=b"G%d" % i)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 10 and len(h.gs.procs[p].replies) == 0 and len(h.gs.reply_owner) == 1
    h.now += 1.5                              # a second later: one summary line, then more
    h.req(m.ProcessList, p_uid=p, r=b"Gx")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "ember gs: WARNING: 4990 more bad-reply-channel warning(s) suppressed"
    assert len(err) == 2
    # forged requests (wrong key) are rate-limited the same way
    for i in range(1000):
        h.req(m.ProcessList, p_uid=p, key=b"x")
    assert len(capsys.readouterr().err.splitlines()) == 10


def test_reply_channels_per_process_are_bounded(h, capsys, monkeypatch):
    from ember.globalservices import server
    monkeypatch.setattr(server, "MAX_REPLY_CHANNELS", 50)
    p = h.create()
    keys = [h.req(m.ProcessList, p_uid=p, r=b"RR%d" % i) for i in range(200)]
    assert len(h.gs.procs[p].replies) == 50
    # one refusal on each channel beyond the bound (not registered), so the
    # client raises instead of waiting forever
    assert h.err(keys[-1]) == ("GlobalServicesError", f"process {p} already uses 50 reply "
                                                      "channels: request refused")
    assert "dropped ProcessList from p_uid %d: its reply channel cannot be used (the process " \
           "already uses 50 reply channels)" % p in capsys.readouterr().err


def test_join_identifier_count_is_bounded_and_names_are_found_by_dict(h):
    from ember.globalservices import server
    p = h.create("only")
    names = ["only"] * server.MAX_JOIN_IDENTS
    assert h.ok(h.req(m.ProcessJoin, names, 0, False, False))[1] == {p: ["running", None]}
    assert h.err(h.req(m.ProcessJoin, names + ["x"], 0, False, False)) == (
        "ProcessError", f"multi_join takes at most {server.MAX_JOIN_IDENTS} identifiers, "
                        f"got {server.MAX_JOIN_IDENTS + 1}")
    h.exit(p, 0)
    assert h.gs.last_by_name == {"only": p} and "only" not in h.gs.proc_names
    q = h.create("only")
    h.exit(q, 4)
    assert h.ok(h.req(m.ProcessQuery, "only"))["p_uid"] == q


# ------------------------------------------------------------ multi_join
def test_multi_join_unknown_identifiers_get_unknown_status(h):
    a, b = h.create("a"), h.create("b")
    key = h.req(m.ProcessJoin, ["a", "ghost", b, 777], None, True, False)
    assert h.reply(key) is None                  # waits for a and b, not for the unknown ones
    h.exit(a, 0)
    assert h.reply(key) is None
    h.exit(b, 2)
    exited, status = h.ok(key)
    assert exited == [[a, 0], [b, 2]]
    assert status == {a: ["exited", 0], b: ["exited", 2], "ghost": ["unknown", None],
                      777: ["unknown", None]}
    # nothing known to wait for: answered at once
    assert h.ok(h.req(m.ProcessJoin, ["ghost"], None, False, False)) == [
        None, {"ghost": ["unknown", None]}]


# ---------------------------------------------------------- death reports
def test_unjoined_nonzero_exits_are_reported_at_teardown(h):
    a, b, c, d = h.create("quiet"), h.create("joined"), h.create(), h.create("fine")
    h.ok(h.req(m.ProcessJoin, [b], 0, False, False))        # b will be joined when it exits
    h.exit(a, 3)
    h.exit(b, 4)
    h.ok(h.req(m.ProcessJoin, [b], None, False, False))
    h.exit(c, -11)                                          # signals: the shepherd reports
    h.exit(d, 0)
    h.req(m.Teardown, 1.0)
    assert h.errlog.getvalue() == (f"ember: process {a} 'quiet' (pid {h.gs.procs[a].os_pid}) exited "
                                   "with code 3 and was never joined\n")


def test_an_attached_process_exit_is_not_reported_with_a_code(h):
    """A process that attached (ember.init() of a program the runtime did
    not start: the embedded runtime's owner) is not the shepherd's child:
    its exit code is unknown (EXIT_UNKNOWN), and the teardown does not
    report it as 'exited with code 255' (an owner SIGKILLed or ended by
    os._exit(3) was)."""
    h.gs.attach_key = "attach-key"
    p = h.ok(h.req(m.ProcessAttach, 4321, "attach-key", "", r=b"RA"))["p_uid"]
    q = h.create("quiet")
    h.exit(p, m.EXIT_UNKNOWN)
    h.exit(q, 3)
    h.req(m.Teardown, 1.0)
    assert h.errlog.getvalue() == (f"ember: process {q} 'quiet' (pid {h.gs.procs[q].os_pid}) exited "
                                   "with code 3 and was never joined\n")


def test_death_reports_can_be_turned_off(h):
    h.gs.death_reports = False
    a = h.create()
    h.exit(a, 3)
    h.req(m.Teardown, 1.0)
    assert h.errlog.getvalue() == ""


# ---------------------------------------------------------- introspection
def test_service_stats_and_dump_requests(h):
    a, b = h.create("a"), h.create()
    d = h.ok(h.req(m.ChannelCreate, None, "rc", {"ref_count": True}, False, p_uid=a))
    h.ok(h.req(m.ChannelJoin, "rc", None, p_uid=b))
    h.ok(h.req(m.ChannelJoin, "rc", None, p_uid=b))
    jk = h.req(m.ProcessJoin, [a, "ghost"], 5.0, True, False, p_uid=b, r=b"RJ")
    h.req(m.ChannelJoin, "later", None, p_uid=a, r=b"RL")
    h.exit(a, 3)                                          # wakes b's join
    h.ok(jk)
    h.req(m.ChannelJoin, "later2", 2.0, p_uid=b, r=b"RW")
    h.req(m.ProcessList, key=b"forged")                   # dropped: bad key
    st = h.ok(h.req(m.ServiceStats))
    assert st["service"] == "GS" and st["dropped"] == 1 and st["errors"] == 0
    assert st["timers_pending"] == 1 and st["uptime"] == 0.0
    assert st["handled"]["ChannelJoin"] == 4 and st["handled"]["ServiceStats"] == 1
    assert st["handled"]["ShSpawned"] == 2 and "ProcessKill" not in st["handled"]
    dump = h.ok(h.req(m.ServiceDump))
    assert msgpack.unpackb(msgpack.packb(dump), strict_map_key=False) == dump
    assert dump["teardown"] is None and dump["node"] == 0
    pa, pb = dump["processes"]
    assert (pa["p_uid"], pa["name"], pa["state"], pa["exit_code"], pa["joined"]) == (a, "a", "exited", 3, True)
    assert pa["os_pid"] == h.gs.procs[a].os_pid and "key" not in pa
    assert (pb["state"], pb["exit_code"], pb["joined"], pb["refs"]) == ("running", None, False,
                                                                        {d["c_uid"]: 2})
    assert dump["pools"] == [{"m_uid": 1, "name": "default", "size": h.pool.size, "default": True,
                              "node": 0, "channels": [d["c_uid"]]}]
    (ch,) = dump["channels"]
    assert (ch["c_uid"], ch["name"], ch["holders"], ch["refs"], ch["ref_count"]) == (
        d["c_uid"], "rc", {b: 2}, 2, True)
    (w,) = dump["waiters"]                                # a's wait was forgotten at its exit
    assert w == {"owner": b, "tag": w["tag"], "deadline": 102.0, "kind": "channel.join",
                 "name": "later2"}
    h.req(m.Teardown, 1.0)
    h.exit(b, -15)
    assert h.gs.dump()["teardown"] == "shepherd"
    (shut,) = [x for x in h.sh if type(x) is m.ShShutdown]
    h.shepherd(m.ShShutdownDone(shut.tag))
    assert h.gs.dump()["teardown"] == "done"


def test_teardown_phases_are_explicit_and_each_arms_one_timer(h):
    from ember.globalservices.teardown import Phase
    a = h.create()
    h.req(m.Teardown, 1.0)
    assert h.gs.teardown.phase is Phase.TERM and h.gs.timers_pending == 1
    h.advance(1.0)                                        # grace over: SIGKILL
    assert h.gs.teardown.phase is Phase.KILL and h.gs.timers_pending == 1
    assert h.sh[-1] == m.ShKill(a, 9)
    h.exit(a, -9)
    assert h.gs.teardown.phase is Phase.SHEPHERD and h.gs.timers_pending == 1
    h.advance(3.0)                                        # the shepherd never confirmed
    assert h.gs.teardown.phase is Phase.DONE and h.gs.finished and h.gs.timers_pending == 0


def test_a_finished_phase_leaves_no_stale_timer(h):
    """The TERM timer is cancelled when the phase ends early, so it cannot
    cut the SHEPHERD phase short (it used to stay armed and end the
    teardown at the grace's end, before the shepherd confirmed)."""
    a = h.create()
    key = h.req(m.Teardown, 5.0)
    h.advance(4.5)
    h.exit(a, -15)
    assert h.gs.teardown.phase.value == "shepherd"
    h.advance(1.0)                     # past the grace, within the SHEPHERD wait
    assert not h.gs.finished and h.reply(key) is None
    (shut,) = [x for x in h.sh if type(x) is m.ShShutdown]
    h.shepherd(m.ShShutdownDone(shut.tag))
    assert h.ok(key) == {a: -15}


# ------------------------------------------------- node-scoped resources
def test_the_nodes_shepherd_makes_the_channel_and_gs_answers_when_it_confirms(h):
    h.auto = False
    ck = h.req(m.ChannelCreate, None, "box", {"capacity": 8, "block_size": 128}, False)
    (req,) = h.to_node
    assert type(req) is m.ShChannelCreate and (req.m_uid, req.capacity, req.block_size) == (1, 8, 128)
    assert req.pool_sdesc == h.pool.sdesc and h.reply(ck) is None
    # meanwhile: the name is taken, a soft create and a join wait for it
    assert h.err(h.req(m.ChannelCreate, None, "box", {}, False)) == (
        "ChannelError", f"a channel is already named 'box' (c_uid {req.c_uid})")
    soft = h.req(m.ChannelCreate, None, "box", {}, True, r=b"RS")
    join = h.req(m.ChannelJoin, "box", None, r=b"RJ")
    assert h.err(h.req(m.ChannelQuery, "box")) == ("ChannelError", "no channel named 'box'")
    assert h.reply(soft) is None and h.reply(join) is None
    h.pump()
    d = h.ok(ck)
    assert h.ok(soft) == d and h.ok(join) == d and d["sdesc"] == h.node.chans[d["c_uid"]].sdesc
    assert d["capacity"] == 8 and d["block_size"] == 128
    # GS keeps the record, not the channel
    assert not hasattr(h.gs.chans[d["c_uid"]], "ch")
    # a destroy is answered as soon as GS forgets it; the shepherd frees it after
    dk = h.req(m.ChannelDestroy, "box")
    assert h.ok(dk) is None and h.to_node == [m.ShChannelDrop([d["c_uid"]])]
    assert "box" not in h.gs.chan_names and h.node.chans     # forgotten at once, not yet freed
    h.pump()
    assert not h.node.chans and not h.from_node              # freed; no answer to GS


def test_node_answers_only_from_the_control_channel(h, capsys):
    h.auto = False
    ck = h.req(m.ChannelCreate, None, "guarded", {}, False)
    (req,) = h.to_node
    assert [c["being_made"] for c in h.gs.dump()["channels"]] == [True]
    # a forged answer on the public input channel: dropped, the create still waits
    h.gs.handle_bytes(m.ShChannelCreated(1, req.c_uid, b"forged", 16, 256, None).pack())
    h.gs.handle_bytes(m.ShChannelCreated(1, req.c_uid, None, None, None,
                                         ["ChannelError", "no", False]).pack())
    assert h.reply(ck) is None and "guarded" not in h.gs.chan_names
    assert "dropped ShChannelCreated from the public input channel" in capsys.readouterr().err
    h.pump()
    assert h.ok(ck)["sdesc"] == h.node.chans[req.c_uid].sdesc


def test_a_failed_create_on_the_node_is_the_requesters_error(h):
    assert h.err(h.req(m.ChannelCreate, None, "odd", {"capacity": 3}, False)) == (
        "ChannelError", "cannot create channel 'odd' in pool 1: capacity must be a power of two "
                        "between 1 and 16777216, got 3")
    assert "odd" not in h.gs.chan_names and h.gs.pools[1].channels == set()
    assert h.err(h.req(m.PoolCreate, 1 << 60, "huge", {}, False))[0] == "PoolError"
    assert "huge" not in h.gs.pool_names and not h.node.pools


def test_creator_exits_before_the_node_confirms(h):
    h.auto = False
    a = h.create()
    h.spawn_all()
    h.req(m.ChannelCreate, None, "orphan", {"ref_count": True}, False, p_uid=a, r=b"RA")
    h.req(m.ChannelCreate, None, "plain", {}, False, p_uid=a, r=b"RA")
    h.exit(a, -9)
    h.pump()
    assert (b"RA", 1) not in h.replies and not [k for k in h.replies if k[0] == b"RA"]
    # the ref-counted one lost its only holder: destroyed on the node; the plain one stays
    assert list(h.gs.chan_names) == ["plain"] and len(h.node.chans) == 1


def test_pools_are_made_and_destroyed_by_the_node(h):
    h.auto = False
    pk = h.req(m.PoolCreate, 1 << 20, "p", {}, False)
    soft = h.req(m.PoolCreate, 1 << 20, "p", {}, True, r=b"RS")
    (req,) = h.to_node
    assert type(req) is m.ShPoolCreate and (req.size, req.name, req.owner_tag) == (
        1 << 20, "p", h.tag_prefix)
    h.pump()
    d = h.ok(pk)
    assert h.ok(soft) == d and d["sdesc"] == h.node.pools[d["m_uid"]].sdesc
    dk = h.req(m.PoolDestroy, "p")
    assert h.reply(dk) is None
    h.pump()
    assert h.ok(dk) is None and not h.node.pools


def test_the_answer_to_a_spares_create_is_counted_as_awaited_by_nobody(h):
    # serve() spins on its input after a reply (its sender, awake, may ask
    # again at once), not after the answer to a spare's create: its creator
    # reads it at its next start.
    creator = h.create()
    assert h.gs.unawaited_replies == 0
    key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {"spare": True}, False,
                p_uid=creator)
    h.spawn_all()
    h.ok(key)
    h.create()
    assert h.gs.unawaited_replies == 1


def test_spares_are_hidden_until_claimed_and_die_with_their_creator(h, tmp_path):
    """ProcessCreate option "spare" (ember.Process's leased spares): not
    listed, no events, no survivor line until its creator claims it
    (ProcessClaim, answered by nothing); only the creator may claim it; an
    unclaimed spare is killed when its creator exits, SIGKILLed (no grace)
    at teardown; a spare may not be named."""
    h.gs.events_path = str(tmp_path / "r.events")
    creator = h.create("creator")

    def spare(p_uid=creator, name=""):
        key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", name, {"spare": True}, False,
                    p_uid=p_uid)
        h.spawn_all()
        return key

    a = h.ok(spare())["p_uid"]
    b = h.ok(spare())["p_uid"]
    assert h.err(spare(name="named")) == ("ProcessError", "a spare has no name")
    listed = [p for p, _, _ in h.ok(h.req(m.ProcessList))]
    assert listed == [creator]
    assert [p["p_uid"] for p in h.gs._dump_processes()] == [creator]
    assert h.ok(h.req(m.ProcessQuery, a))["state"] == "running"     # by p_uid: known
    # a claim by another process is refused, and answered by nothing
    other = h.create()
    key = h.req(m.ProcessClaim, a, p_uid=other)
    assert h.reply(key) is None and h.gs.procs[a].spare
    key = h.req(m.ProcessClaim, a, p_uid=creator)
    assert h.reply(key) is None and not h.gs.procs[a].spare
    assert [p for p, _, _ in h.ok(h.req(m.ProcessList))] == [creator, a, other]
    h.req(m.ProcessClaim, a, p_uid=creator)                 # twice: refused (logged)
    # the creator exits: its unclaimed spare (b) is killed, the claimed one (a) is not
    h.sh.clear()
    h.exit(creator, 0)
    assert [(x.p_uid, x.sig) for x in h.sh if type(x) is m.ShKill] == [(b, signal.SIGKILL)]
    h.exit(b, -signal.SIGKILL)
    assert h.gs.spares_of == {}
    h.exit(a, 0)
    ev = [(e["event"], e["p_uid"]) for e in _events_of(tmp_path / "r.events")]
    assert ev == [("process.started", creator), ("process.started", other),
                  ("process.started", a), ("process.exited", creator), ("process.exited", a)]
    # a claim that comes after the spare's exit still tells both events
    c = h.ok(spare(p_uid=other))["p_uid"]
    h.exit(c, 0)
    h.req(m.ProcessClaim, c, p_uid=other)
    ev = [(e["event"], e["p_uid"]) for e in _events_of(tmp_path / "r.events")][-2:]
    assert ev == [("process.started", c), ("process.exited", c)]
    # teardown: an unclaimed spare gets SIGKILL at once, the others SIGTERM first
    d = h.ok(spare(p_uid=other))["p_uid"]
    h.sh.clear()
    h.req(m.Teardown, 5.0, True)
    kills = sorted((x.p_uid, x.sig) for x in h.sh if type(x) is m.ShKill)
    assert kills == [(other, signal.SIGTERM), (d, signal.SIGKILL)]
    # the survivors line names the live process, never the unclaimed spare
    line = next(ln for ln in h.errlog.getvalue().splitlines() if "head exited; terminating" in ln)
    listed = [x.split()[0] for x in line.split("running ", 1)[1].split(": ", 1)[1].split(", ")]
    assert str(other) in listed and str(d) not in listed, line
    h.gs._close_events()


def test_a_lease_dead_as_idle_is_reported_only_if_claimed(h, tmp_path):
    """A lease killed by a signal nobody in ember sent while still named
    as an idle spare: the shepherd leaves its death report to GS
    (ShExited.info "idle_report"), which sends it back (ShDeathReport)
    only if the lease was claimed, whether the claim came before or after
    the exit; the line never reaches the event log's info."""
    h.gs.events_path = str(tmp_path / "r.events")
    creator = h.create("creator")

    def spare():
        key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {"spare": True}, False,
                    p_uid=creator)
        h.spawn_all()
        return h.ok(key)["p_uid"]

    def died(p_uid):
        info = {"status": signal.SIGKILL, "core_dumped": False, "oom_killed": False,
                "idle_report": f"ember: process {p_uid} (pid 1) killed by SIGKILL\n"}
        h.shepherd(m.ShExited(p_uid, -signal.SIGKILL, info))

    def reports():
        got = [(x.p_uid, x.line) for x in h.sh if type(x) is m.ShDeathReport]
        h.sh.clear()
        return got

    idle, before, after = spare(), spare(), spare()
    h.sh.clear()
    died(idle)                                   # never claimed: nothing
    h.req(m.ProcessClaim, before, p_uid=creator)
    died(before)                                 # claimed, then dead
    h.req(m.ProcessNoRerun, before, p_uid=creator)   # (its creator saw its call read)
    assert reports() == [(before, f"ember: process {before} (pid 1) killed by SIGKILL\n")]
    died(after)                                  # dead, then claimed
    assert reports() == []
    h.req(m.ProcessClaim, after, p_uid=creator)
    h.req(m.ProcessNoRerun, after, p_uid=creator)
    assert reports() == [(after, f"ember: process {after} (pid 1) killed by SIGKILL\n")]
    exited = [e for e in _events_of(tmp_path / "r.events") if e["event"] == "process.exited"]
    assert [e["p_uid"] for e in exited] == [before, after]
    assert not any("idle_report" in str(e) for e in exited), exited
    h.gs._close_events()


def test_a_claimed_lease_s_death_line_waits_for_its_creator(h):
    """The death line of a claimed lease that a signal nobody asked through
    GS ended is held while its creator may still ask to start it again
    (its call unread, which only the creator sees): dropped if it asks
    and the lease runs again (no process died), written at the creator's
    ProcessNoRerun (its call was read; another's is ignored), at a start
    again that fails, at the creator's exit, or REPORT_HOLD s after the
    death.  It was written at the death, the lease then started again."""
    creator = h.create("creator")
    other = h.create()

    def lease():
        key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {"spare": True}, False,
                    p_uid=creator)
        h.spawn_all()
        p_uid = h.ok(key)["p_uid"]
        h.req(m.ProcessClaim, p_uid, p_uid=creator)
        return p_uid

    def line(p_uid):
        return f"ember: process {p_uid} (pid 1) killed by SIGKILL\n"

    def died(p_uid):
        info = {"status": signal.SIGKILL, "core_dumped": False, "oom_killed": False,
                "idle_report": line(p_uid)}
        h.shepherd(m.ShExited(p_uid, -signal.SIGKILL, info))

    def reports():
        got = [(x.p_uid, x.line) for x in h.sh if type(x) is m.ShDeathReport]
        h.sh.clear()
        return got

    a, b, c, d = lease(), lease(), lease(), lease()
    h.sh.clear()
    for x in (a, b, c, d):
        died(x)
    assert reports() == []
    key = h.req(m.ProcessRerun, a, p_uid=creator)        # its call unread: it runs again
    h.spawn_all()
    assert h.ok(key)["state"] == "running"
    h.req(m.ProcessNoRerun, b, p_uid=other)               # not its lease: ignored
    assert reports() == []
    h.req(m.ProcessNoRerun, b, p_uid=creator)             # its call was read
    assert reports() == [(b, line(b))]
    h.auto = False
    key = h.req(m.ProcessRerun, c, p_uid=creator)
    h.pump()
    h.auto = True
    h.spawn_all(fail="no template")                      # it cannot run again
    assert h.err(key)[0] == "ProcessError"
    assert reports() == [(c, line(c))]
    from ember.globalservices.processes import REPORT_HOLD

    h.advance(REPORT_HOLD)                               # its creator never looked
    assert reports() == [(d, line(d))]
    e = lease()
    died(e)
    h.advance(REPORT_HOLD / 2)
    assert reports() == []
    h.exit(creator, 0)                                   # nobody can start it again
    assert reports() == [(e, line(e))]
    h.advance(REPORT_HOLD)
    assert reports() == []                               # (a's never)
    assert h.gs.reports_held == {} and h.gs.stats().timers_pending == 0


def test_claim_next_claims_and_leases_in_one_message(h, tmp_path):
    """ProcessClaimNext: the claim of the sender's spare and the create of
    its next spare in one message, answered as the create is; a claim GS
    refuses (not the sender's, not a spare, not an int) is logged and the
    create made all the same; bad create fields get a clear error; a
    creator that exits with its next spare still being spawned leaves
    nothing (the spare is killed, its late ShSpawned answers nobody)."""
    h.gs.events_path = str(tmp_path / "r.events")
    creator = h.create("creator")
    other = h.create()

    def claim_next(ident, label=None, p_uid=creator, args=None, env=None):
        key = h.req(m.ProcessClaimNext, ident, label, "/bin/true", [] if args is None else args,
                    {} if env is None else env, "/", p_uid=p_uid)
        h.spawn_all()
        return key

    key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {"spare": True}, False,
                p_uid=creator)
    h.spawn_all()
    a = h.ok(key)["p_uid"]
    b = h.ok(claim_next(a, "Process-2 (m.work)"))["p_uid"]
    assert not h.gs.procs[a].spare and h.gs.procs[a].label == "Process-2 (m.work)"
    assert h.gs.procs[b].spare and h.gs.spares_of == {creator: {b}}
    assert h.gs.procs[b].creator == creator and not h.gs.procs[b].name
    assert [p for p, _, _ in h.ok(h.req(m.ProcessList))] == [creator, other, a]
    # refused claims (logged): another's spare, a claimed one, not a p_uid; each still leases
    c = h.ok(claim_next(b, p_uid=other))["p_uid"]
    assert h.gs.procs[b].spare and h.gs.spares_of == {creator: {b}, other: {c}}
    d = h.ok(claim_next(a))["p_uid"]
    e = h.ok(claim_next("x", label=5))["p_uid"]
    assert h.gs.spares_of == {creator: {b, d, e}, other: {c}}
    # bad create fields: a clear error, the claim made
    assert h.err(claim_next(b, args="no list")) == ("ProcessError", "args must be a list of str")
    assert not h.gs.procs[b].spare
    assert h.err(claim_next(d, env={"A": 1})) == ("ProcessError", "env must map str to str (or None: removed)")
    assert h.gs.spares_of == {creator: {e}, other: {c}}
    # the creator exits while its next spare is being spawned: it is killed
    h.auto = False
    key = h.req(m.ProcessClaimNext, e, None, "/bin/true", [], {}, "/", p_uid=creator)
    h.pump()
    (spawn,) = [x for x in h.sh if type(x) is m.ShSpawn]
    h.auto = True
    h.sh.clear()
    h.exit(creator, 0)
    assert [(x.p_uid, x.sig) for x in h.sh if type(x) is m.ShKill] == [(spawn.p_uid, signal.SIGKILL)]
    h.shepherd(m.ShSpawned(spawn.tag, spawn.p_uid, 4242, None))
    assert h.reply(key) is None                       # its creator is gone: nobody to answer
    h.exit(spawn.p_uid, -signal.SIGKILL)
    assert h.gs.spares_of == {other: {c}}
    # the process.started events: the creators', and each claimed spare's once
    ev = [(x["event"], x["p_uid"]) for x in _events_of(tmp_path / "r.events")
          if x["event"] == "process.started"]
    assert ev == [("process.started", p) for p in (creator, other, a, b, d, e)]
    h.gs._close_events()


def test_rerun_starts_a_claimed_lease_killed_again_once(h):
    """ProcessRerun (ember.Process's creator, for a lease that died with its
    call unread): GS sends the lease's own request again under the same
    p_uid and answers with the new pid once the shepherd runs it; once
    only.  Refused with a ProcessError for another's lease, an unclaimed
    one, a live one, one that exited by no signal or by one asked through
    GS (p.terminate()), a process that is no lease, not a p_uid.  A start again that fails leaves its end as it
    was."""
    creator = h.create("creator")
    other = h.create()

    def lease(arg):
        key = h.req(m.ProcessCreate, "/bin/true", [arg], {"A": arg}, "/", "",
                    {"spare": True}, False, p_uid=creator)
        h.spawn_all()
        return h.ok(key)["p_uid"]

    def rerun(ident, p_uid=creator, fail=None):
        h.auto = False
        key = h.req(m.ProcessRerun, ident, p_uid=p_uid)
        h.pump()
        h.auto = True
        spawns = h.spawn_all(fail)
        return key, spawns

    a, b, c, d = lease("a"), lease("b"), lease("c"), lease("d")
    for s in (a, b, c):
        h.req(m.ProcessClaim, s, p_uid=creator)
    h.exit(a, -signal.SIGKILL)
    h.exit(c, 0)
    h.exit(d, -signal.SIGKILL)                       # never claimed
    pid = h.gs.procs[a].os_pid
    key, (spawn,) = rerun(a)
    assert (spawn.p_uid, spawn.args, spawn.env["A"]) == (a, ["a"], "a")
    got = h.ok(key)
    assert (got["p_uid"], got["state"], got["retval"]) == (a, "running", None)
    assert got["os_pid"] not in (None, pid)
    refused = "ProcessError", f"process {a} cannot be started again: not a lease of process " \
        f"{creator} that a signal ended, not started again"
    h.exit(a, -signal.SIGKILL)
    assert h.err(rerun(a)[0]) == refused                  # once only
    for ident, p_uid in ((b, creator), (c, creator), (d, creator), (other, 0), ("x", creator)):
        key, spawns = rerun(ident, p_uid)
        assert spawns == [] and h.err(key)[0] == "ProcessError", ident
    e = lease("e")
    h.req(m.ProcessClaim, e, p_uid=creator)
    h.exit(e, -signal.SIGKILL)
    assert h.err(rerun(e, p_uid=other)[0])[0] == "ProcessError"     # not its lease
    f = lease("f")
    h.req(m.ProcessClaim, f, p_uid=creator)
    h.req(m.ProcessKill, f, signal.SIGTERM, p_uid=creator)   # (p.terminate(): meant)
    h.exit(f, -signal.SIGTERM)
    assert h.err(rerun(f)[0])[0] == "ProcessError"
    key, spawns = rerun(e, fail="no template")
    assert len(spawns) == 1 and h.err(key) == ("ProcessError", "cannot start process: no template")
    rec = h.gs.procs[e]
    assert (rec.state, rec.exit_code) == ("exited", -signal.SIGKILL)


def _events_of(path):
    import json
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_a_label_is_what_ps_shows_of_an_unnamed_process(h):
    """ProcessOptions.label (a create) and ProcessClaim's label (a leased
    spare's claim) are kept for `ember ps` (the dump); one that is not a
    str is dropped, a long one cut; ProcessOptions refuses both."""
    from ember.descriptors import ProcessOptions
    from ember.exceptions import ProcessError
    creator = h.create("creator")
    key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {"label": "Process-1 (m.work)"},
                False, p_uid=creator)
    h.spawn_all()
    a = h.ok(key)["p_uid"]
    key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {"spare": True}, False,
                p_uid=creator)
    h.spawn_all()
    b = h.ok(key)["p_uid"]
    h.req(m.ProcessClaim, b, "x" * 300, p_uid=creator)
    key = h.req(m.ProcessCreate, "/bin/true", [], {}, "/", "", {"label": 7}, False, p_uid=creator)
    h.spawn_all()
    c = h.ok(key)["p_uid"]
    labels = {p["p_uid"]: p["label"] for p in h.gs._dump_processes()}
    assert labels == {creator: None, a: "Process-1 (m.work)", b: "x" * 200, c: None}
    with pytest.raises(ProcessError, match=r"^ProcessOptions\.label must be a str of at most 200 "
                                           r"characters or None, got 7$"):
        ProcessOptions(label=7)
    with pytest.raises(ProcessError, match=r"^ProcessOptions\.label must be a str"):
        ProcessOptions(label="y" * 201)


def test_held_events_are_due_by_the_monotonic_clock_not_the_wall_clock(h, tmp_path, monkeypatch):
    """GS holds the event log's events at most EVENTS_DELAY (f48c330); an
    event stamped by a wall clock that then jumps back (here: stamped an
    hour ahead) must not hold the log for the hour."""
    from ember.globalservices import events, server
    h.gs.events_path = str(tmp_path / "run.events")
    h.gs.defer_events = True
    assert h.gs.events_due(server.EVENTS_DELAY) is None
    real = time.time
    monkeypatch.setattr(events.time, "time", lambda: real() + 3600.0)
    h.gs._event("test.clock", n=1)
    monkeypatch.setattr(events.time, "time", real)      # the clock jumped back
    due = h.gs.events_due(server.EVENTS_DELAY)
    assert due is not None and due <= server.EVENTS_DELAY
    assert h.gs.events_due(server.EVENTS_DELAY, now=time.monotonic() + server.EVENTS_DELAY) == 0.0
    h.gs.flush_events()
    assert h.gs.events_due(server.EVENTS_DELAY) is None
    with open(h.gs.events_path) as f:
        assert '"test.clock"' in f.read()


def test_no_key_or_environment_value_reaches_a_log(h, capsys, monkeypatch):
    """GS's failure paths that format a message (a reply or a spawn
    dropped) write neither a process's key nor its environment's values:
    the repr of a message hides them.  Main's 'dropped ShSpawn(...)'
    printed the child's EMBER_KEY."""
    from ember.channels_c import Channel
    from ember.globalservices import server
    monkeypatch.setattr(server.log, "level", 0)            # EMBER_LOG=debug: every line
    h.req(m.ProcessCreate, "/bin/true", [], {"SECRET_TOKEN": "hunter2"}, "/", "", {}, False)
    spawn, = [x for x in h.sh if type(x) is m.ShSpawn]
    key = h.key(spawn.p_uid)
    assert spawn.env[_env.KEY] == key.hex() and spawn.env["SECRET_TOKEN"] == "hunter2"
    # a spawn for a node that is not (or no longer) there; a reply with a
    # key (an attach's, a fork child's) to a full reply channel and to one
    # that cannot be attached
    h.gs.to_node(3, spawn)
    reply = m.reply_ok(7, {"p_uid": spawn.p_uid, "key": key.hex()})
    full = Channel.create(h.pool, capacity=1, block_size=256)
    t = server.ChannelTransport(full, Channel.attach)
    try:
        full.send(b"x", timeout=0)
        t(full.sdesc, reply)
        t(b"\x00garbage-descriptor", reply)
    finally:
        for ch in t.cache.values():
            ch.detach()
        full.destroy()
    h.spawn_all()
    err = capsys.readouterr().err
    assert "ShSpawn(" in err and "to node 3 dropped" in err, err
    assert err.count("reply Reply(") == 2, err
    for secret in (key.hex(), repr(key), "hunter2"):
        assert secret not in err, err
    assert "env=<environment of 2 variables>" in err and "'key': <hidden>" in err, err
    # a message of another node's, as the head's agent hands it to GS
    # (MnFrom: the packed request, with its key)
    req = m.ProcessQuery(1, spawn.p_uid, b"R", key, spawn.p_uid).pack()
    shown = repr(m.MnFrom(1, False, req))
    assert shown == f"MnFrom(node=1, trusted=False, data=<a message of {len(req)} bytes>)"
