"""channel.join woken by the channel's creator through the join wake board
(src/ember/globalservices/wakeboard.py; docs/channels.md, "The join wake
board"), under a real ``ember run``: the joiner is answered without GS on
the path, GS's semantics hold (references, names, a second creator), and a
creator or joiner SIGKILLed at any point of the wake wedges nobody."""
import os
import re

import pytest

from test_runtime import assert_lines, ember, ok, write

pytestmark = pytest.mark.timeout(120)

COMMON = """
    import os, signal, sys, threading, time
    sys.path.append(%r)     # tests/procs.py
    from procs import children, stat
    from ember.descriptors import ChannelOptions
    from ember.exceptions import ChannelError, ChannelTimeout
    from ember.globalservices import channel, introspect, process

    def wait_for(pred, timeout=30, what="it"):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.005)

    def fields(d):                  # a descriptor, every field (its type's too)
        return repr((type(d).__name__, d.m_uid, d.c_uid, d.name, d.node, d.capacity,
                     d.block_size, d.ref_count, d.sdesc.hex()))

    def parked(name, n=1):
        return sum(w.get("name") == name for w in introspect.dump()["waiters"]) >= n

    def gs_pid():
        launcher = int(os.environ["EMBER_RUNTIME_ID"][1:].split("-")[0])
        for p in children(launcher):
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if f.read().startswith(b"ember: global services"):
                        return p
            except OSError:
                continue
        raise SystemExit("no GS process found")

    def stopped(pid):
        return stat(pid)[0] == "T"

    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def spawn(*args, env=None):
        return process.create(sys.executable, "", [sys.argv[0], *args], env=env)

    def create_with_gs_stopped(name, out):
        # channel.create(None, NAME) in a thread with GS stopped (SIGSTOP):
        # (the joiner's OUT as written meanwhile, the create returned
        # meanwhile, its descriptor once GS runs again)
        gs = gs_pid()
        made = []
        os.kill(gs, signal.SIGSTOP)
        try:
            th = threading.Thread(target=lambda: made.append(channel.create(None, name)))
            th.start()
            deadline = time.monotonic() + 20
            while read(out) is None and time.monotonic() < deadline:
                time.sleep(0.005)
            woke = read(out)
            th.join(20)
            returned = bool(made)
        finally:
            os.kill(gs, signal.SIGCONT)
        th.join(30)
        return woke, returned, made[0]

    def claimant_stopped(name):     # a joiner of NAME parked, a creator of it stopped
        # (SIGSTOP) holding the board's lock, its claim made: (joiner, creator, pid)
        j = spawn("join", name, f"{tmp}/j")
        c = spawn("create", name, f"{tmp}/c-ready", f"{tmp}/c-go", f"{tmp}/c-out",
                  env={"EMBER_TEST_WAKEBOARD_STOP": "claimed"})
        wait_for(lambda: os.path.exists(f"{tmp}/c-ready"), what="the creator")
        wait_for(lambda: parked(name), what="the joiner to park")
        pid = process.query(c.p_uid).location.os_pid
        open(f"{tmp}/c-go", "w").close()
        wait_for(lambda: stopped(pid), what="the creator to stop with its claim")
        return j, c, pid

    role = sys.argv[1] if len(sys.argv) > 1 else "head"
    if role == "join":              # join NAME OUT [GO]: write the c_uid (and OUT.desc: every
        d = channel.join(sys.argv[2], timeout=60)       # field); then wait for GO, release
        with open(sys.argv[3] + ".desc", "w") as f:
            f.write(fields(d))
        with open(sys.argv[3] + ".tmp", "w") as f:
            f.write(str(d.c_uid))
        os.rename(sys.argv[3] + ".tmp", sys.argv[3])
        if len(sys.argv) > 4:
            wait_for(lambda: os.path.exists(sys.argv[4]), what="go")
            channel.release(sys.argv[2])
        sys.exit(0)
    if role == "create":            # create NAME READY GO OUT: (c_uid reserved) create NAME at GO
        channel.destroy(channel.create(None).c_uid)
        open(sys.argv[3], "w").close()
        wait_for(lambda: os.path.exists(sys.argv[4]), what="go")
        try:
            d = channel.create(None, sys.argv[2])
            out = str(d.c_uid)
        except ChannelError as e:
            out = "ChannelError: " + str(e)
        with open(sys.argv[5] + ".tmp", "w") as f:
            f.write(out)
        os.rename(sys.argv[5] + ".tmp", sys.argv[5])
        sys.exit(0)
    tmp = os.environ["WB_TMP"]
    try:                # GS makes the board at the first join that waits
        channel.join("wb-warm-up", timeout=0.001)
    except ChannelTimeout:
        pass
    channel.destroy(channel.create(None).c_uid)      # the head gets a c_uid reserved (and the board)
""" % os.path.dirname(os.path.abspath(__file__))


def run(tmp_path, body, **env):
    """Run COMMON + ``body`` as the head under ``ember run`` (``env`` added
    to its environment); its stdout."""
    prog = write(tmp_path, COMMON + body)
    return ok(ember("run", prog, cwd=tmp_path, timeout=100,
                    env=dict(os.environ, WB_TMP=str(tmp_path), **env)))


def test_a_parked_join_is_woken_by_the_creator_with_gs_stopped(tmp_path):
    """The wake-up takes GS off the path: with GS stopped (SIGSTOP), a
    parked joiner still gets the channel the moment it is created, and the
    creator's create returns too (its register is posted: GS answers it
    nothing); a lookup once GS runs again finds the name."""
    out = run(tmp_path, """
    j = spawn("join", "wb-a", f"{tmp}/a")
    wait_for(lambda: parked("wb-a"), what="the joiner to park")
    woke, returned, d = create_with_gs_stopped("wb-a", f"{tmp}/a")
    print("joiner answered while GS was stopped:", woke is not None)
    print("create returned while GS was stopped:", returned)
    print("same channel:", woke == str(d.c_uid))
    print("found right after:", channel.query("wb-a").c_uid == d.c_uid)
    print("joiner exit", process.join(j.p_uid, timeout=30))
    channel.destroy("wb-a")
    """)
    assert "joiner answered while GS was stopped: True" in out
    assert "create returned while GS was stopped: True" in out
    assert "same channel: True" in out
    assert "found right after: True" in out
    assert "joiner exit 0" in out


def test_a_join_answered_from_the_board_holds_its_reference(tmp_path):
    """A ref-counted channel: the joiner answered by the creator holds a
    reference GS counts (the channel outlives the creator's release and
    goes with the joiner's)."""
    out = run(tmp_path, """
    j = spawn("join", "wb-r", f"{tmp}/r", f"{tmp}/r-go")
    wait_for(lambda: parked("wb-r"), what="the joiner to park")
    d = channel.create(None, "wb-r", ChannelOptions(ref_count=True))
    wait_for(lambda: read(f"{tmp}/r") is not None, what="the joiner's answer")
    print("joiner got it:", read(f"{tmp}/r") == str(d.c_uid))
    ch = [c for c in introspect.dump()["channels"] if c["name"] == "wb-r"][0]
    print("holders:", sorted(int(p) for p in ch["holders"]) ==
          sorted([process.this_process(), j.p_uid]))
    channel.release("wb-r")
    print("alive after the creator's release:", channel.query("wb-r").c_uid == d.c_uid)
    open(f"{tmp}/r-go", "w").close()
    print("joiner exit", process.join(j.p_uid, timeout=30))
    try:
        channel.query("wb-r")
        print("still there")
    except ChannelError:
        print("gone with the joiner's release")
    """)
    assert_lines(out, "joiner got it: True", "holders: True",
                 "alive after the creator's release: True", "joiner exit 0",
                 "gone with the joiner's release")


def test_a_second_creator_waits_for_the_claimant(tmp_path):
    """GS stays the authority for names: while a creator has claimed a name
    on the board (stopped there), another create of that name is held back;
    once the claimant goes on, its channel is the one registered and
    joined, and the other create fails as for any name taken first.  GS
    holds the second create for BUSY_GRACE at most while the stopped
    claimant keeps the board's lock (test_a_holder_stopped_on_the_board_...
    is that refusal): the grace is 600 s here, past the test's timeout, so
    that a head or claimant preempted for 1 s (the default) on a loaded
    machine between the second create and the claimant's release does not
    turn the hold into ChannelBusy."""
    out = run(tmp_path, """
    j, c, pid = claimant_stopped("wb-2")
    res = []
    def second():
        try:
            res.append(channel.create(None, "wb-2").c_uid)
        except ChannelError as e:
            res.append("ChannelError: " + str(e))
    def creates():         # GS's count of the requests a create makes
        handled = introspect.stats().handled
        return sum(handled.get(k, 0) for k in ("ChannelCreate", "ChannelRegister",
                                               "ChannelRegisterPosted",
                                               "ChannelRegisterPublished"))
    before = creates()
    th = threading.Thread(target=second)
    th.start()
    # GS has had it (and held it: BUSY_GRACE is 600 s), not only hoped so
    wait_for(lambda: creates() > before, what="GS to have the second create")
    print("second create held while the claim stands:", res == [] and read(f"{tmp}/j") is None)
    os.kill(pid, signal.SIGCONT)
    th.join(30)
    print("creator exit", process.join(c.p_uid, timeout=30))
    wait_for(lambda: read(f"{tmp}/j") is not None, what="the joiner's answer")
    print("joiner has the claimant's:", read(f"{tmp}/j") == read(f"{tmp}/c-out"))
    print("second:", str(res[0]).split(" (")[0])
    print("joiner exit", process.join(j.p_uid, timeout=30))
    channel.destroy("wb-2")
    """, EMBER_WB_BUSY_GRACE="600")
    assert "second create held while the claim stands: True" in out
    assert "creator exit 0" in out
    assert "joiner has the claimant's: True" in out
    assert "second: ChannelError: a channel is already named 'wb-2'" in out
    assert "joiner exit 0" in out


@pytest.mark.parametrize("stage", ["created", "claimed", "queued", "answered"])
def test_a_creator_killed_mid_wake_wedges_nobody(tmp_path, stage):
    """The creator is SIGKILLed while it holds the board (stopped at
    ``stage``): the joiner is answered (by the dead creator's register, or
    else by the next create of the name), the board's lock is taken over,
    and joins and creates of other names go on."""
    out = run(tmp_path, f"""
    stage = {stage!r}
    j = spawn("join", "wb-k", f"{{tmp}}/j")
    c = spawn("create", "wb-k", f"{{tmp}}/c-ready", f"{{tmp}}/c-go", f"{{tmp}}/c-out",
              env={{"EMBER_TEST_WAKEBOARD_STOP": stage}})
    wait_for(lambda: os.path.exists(f"{{tmp}}/c-ready"), what="the creator")
    wait_for(lambda: parked("wb-k"), what="the joiner to park")
    pid = process.query(c.p_uid).location.os_pid
    open(f"{{tmp}}/c-go", "w").close()
    wait_for(lambda: stopped(pid), what="the creator to stop")
    os.kill(pid, signal.SIGKILL)
    print("creator exit", process.join(c.p_uid, timeout=30))
    if stage in ("created", "claimed"):
        # (GS has handled the exit: still parked there, no answer written)
        print("joiner still waits:", parked("wb-k") and read(f"{{tmp}}/j") is None)
        d = channel.create(None, "wb-k")
        wait_for(lambda: read(f"{{tmp}}/j") is not None, what="the joiner's answer")
        print("joiner has the next creator's:", read(f"{{tmp}}/j") == str(d.c_uid))
    else:
        # answered by the dead creator's register, or (GS found the board
        # busy, the creator stopped holding it, and handled its exit first:
        # the register goes with it) by the next create of the name
        deadline = time.monotonic() + 5
        while read(f"{{tmp}}/j") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if read(f"{{tmp}}/j") is None:
            print("not answered by the dead creator:", stage)
            channel.create(None, "wb-k")
        wait_for(lambda: read(f"{{tmp}}/j") is not None, what="the joiner's answer")
        print("joiner answered")
    print("joiner exit", process.join(j.p_uid, timeout=30))
    # the board goes on: another name, joined then created
    j2 = spawn("join", "wb-k2", f"{{tmp}}/j2")
    wait_for(lambda: parked("wb-k2"), what="the second joiner to park")
    d2 = channel.create(None, "wb-k2")
    wait_for(lambda: read(f"{{tmp}}/j2") is not None, what="the second joiner's answer")
    print("second joiner has it:", read(f"{{tmp}}/j2") == str(d2.c_uid))
    print("second joiner exit", process.join(j2.p_uid, timeout=30))
    for name in ("wb-k", "wb-k2"):
        try:
            channel.destroy(name)
        except ChannelError:
            pass          # the dead creator's channel, reclaimed with its blocks
    """)
    assert "creator exit -9" in out
    if stage in ("created", "claimed"):
        assert "joiner still waits: True" in out
        assert "joiner has the next creator's: True" in out
    else:
        assert "joiner answered" in out
        # a joiner answered from the board is never left waiting
        assert "not answered by the dead creator: answered" not in out
    assert "joiner exit 0" in out.splitlines(), out     # a whole line: not the second's
    assert "second joiner has it: True" in out
    assert "second joiner exit 0" in out.splitlines(), out


def test_a_joiner_runs_with_the_board_free(tmp_path):
    """The creator wakes its joiners only once it has released the board
    (the kernel often runs a woken joiner on the creator's CPU at once):
    with the creator stopped right after its joiner's wake-up, the joiner
    has its answer and the board is free -- another name's joiner is
    listed on it and answered from it by a create with GS stopped."""
    out = run(tmp_path, """
    j = spawn("join", "wb-f", f"{tmp}/j")
    c = spawn("create", "wb-f", f"{tmp}/c-ready", f"{tmp}/c-go", f"{tmp}/c-out",
              env={"EMBER_TEST_WAKEBOARD_STOP": "woken"})
    wait_for(lambda: os.path.exists(f"{tmp}/c-ready"), what="the creator")
    wait_for(lambda: parked("wb-f"), what="the joiner to park")
    pid = process.query(c.p_uid).location.os_pid
    open(f"{tmp}/c-go", "w").close()
    wait_for(lambda: stopped(pid), what="the creator to stop after the wake-up")
    wait_for(lambda: read(f"{tmp}/j") is not None, what="the joiner's answer")
    print("joiner answered, creator stopped:", stopped(pid))
    j2 = spawn("join", "wb-f2", f"{tmp}/j2")
    wait_for(lambda: parked("wb-f2"), what="the second joiner to park")
    woke, _, d = create_with_gs_stopped("wb-f2", f"{tmp}/j2")
    print("second joiner answered from the board:", woke is not None)
    print("second joiner has it:", read(f"{tmp}/j2") == str(d.c_uid))
    os.kill(pid, signal.SIGCONT)
    print("creator exit", process.join(c.p_uid, timeout=30))
    wait_for(lambda: read(f"{tmp}/c-out") is not None, what="the creator's output")
    print("joiner has the creator's:", read(f"{tmp}/j") == read(f"{tmp}/c-out"))
    print("joiner exit", process.join(j.p_uid, timeout=30))
    print("second joiner exit", process.join(j2.p_uid, timeout=30))
    channel.destroy("wb-f")
    channel.destroy("wb-f2")
    """)
    assert_lines(out, "joiner answered, creator stopped: True",
                 "second joiner answered from the board: True", "second joiner has it: True",
                 "creator exit 0", "joiner has the creator's: True", "joiner exit 0",
                 "second joiner exit 0")


def test_a_holder_stopped_on_the_board_stalls_nobody_but_itself(tmp_path):
    """A creator SIGSTOPped while it holds the board's lock (its claim
    made): GS never sleeps on that lock (its tries do not wait: the lock's
    sleepers flag, which a sleeper sets and only a release clears, stays
    0), answers everyone else meanwhile, and a create of the same name
    ends with ChannelBusy after BUSY_GRACE instead of waiting for the
    stopped holder; once the holder goes on, its channel is the name's."""
    out = run(tmp_path, """
    import struct
    from ember.exceptions import ChannelBusy
    from ember.globalservices import _client
    from ember.globalservices.wakeboard import Board
    j, c, pid = claimant_stopped("wb-b")
    board = Board.attach(_client.connection()._board_desc)
    # sync.c's lock_obj_t: a 64-byte header, u64 xstate, u32 xseq, u32 xsleepers
    sleepers = lambda: struct.unpack_from("<I", board.lock_alloc, 64 + 8 + 4)[0]
    print("held by the stopped creator:", board.lock._state()[0] == pid, sleepers())
    res = {}
    def others():                 # each needs GS; the joins make it try the board
        res["query"] = process.query(j.p_uid).p_uid == j.p_uid
        for name in ("wb-b", "wb-b3"):
            try:
                channel.join(name, timeout=0.2)
            except ChannelTimeout:
                res[name] = "timed out"
        d = channel.create(None)
        channel.destroy(d.c_uid)
        res["unnamed create"] = True
    th = threading.Thread(target=others)
    th.start()
    th.join(30)
    print("others answered:", sorted(res.items()))
    print("GS slept on the board's lock:", sleepers() != 0)
    second = []
    def create_second():
        try:
            second.append(channel.create(None, "wb-b"))
        except ChannelBusy as e:
            second.append(f"ChannelBusy: {e}")
    th = threading.Thread(target=create_second)
    th.start()
    th.join(30)
    print("second create:", second)
    print("pid", pid)
    os.kill(pid, signal.SIGCONT)
    print("creator exit", process.join(c.p_uid, timeout=30))
    wait_for(lambda: read(f"{tmp}/j") is not None, what="the joiner's answer")
    print("joiner has the creator's:", read(f"{tmp}/j") == read(f"{tmp}/c-out"))
    print("joiner exit", process.join(j.p_uid, timeout=30))
    board.close()
    channel.destroy("wb-b")
    """)
    assert "held by the stopped creator: True 0" in out
    assert ("others answered: [('query', True), ('unnamed create', True), ('wb-b', 'timed out'), "
            "('wb-b3', 'timed out')]") in out
    assert "GS slept on the board's lock: False" in out
    pid = re.search(r"^pid (\d+)$", out, re.M).group(1)
    assert (f"second create: [\"ChannelBusy: cannot create channel 'wb-b' now: the join wake "
            f"board's lock stayed busy for 1 s (held by pid {pid}, which does not go on: "
            f"stopped?); nothing was created: try again\"]") in out
    assert "creator exit 0" in out
    assert "joiner has the creator's: True" in out
    assert "joiner exit 0" in out


def test_a_joiner_killed_while_parked_wedges_nobody(tmp_path):
    """A listed joiner SIGKILLed while it waits: GS unlists it before it
    frees its reply channel; the create that follows answers the live
    joiner, holds no reference for the dead one, and a join with a timeout
    still times out."""
    out = run(tmp_path, """
    j1 = spawn("join", "wb-d", f"{tmp}/d1")
    j2 = spawn("join", "wb-d", f"{tmp}/d2")
    wait_for(lambda: parked("wb-d", 2), what="both joiners to park")
    os.kill(process.query(j1.p_uid).location.os_pid, signal.SIGKILL)
    print("killed joiner exit", process.join(j1.p_uid, timeout=30))
    d = channel.create(None, "wb-d", ChannelOptions(ref_count=True))
    wait_for(lambda: read(f"{tmp}/d2") is not None, what="the live joiner's answer")
    print("live joiner has it:", read(f"{tmp}/d2") == str(d.c_uid))
    print("live joiner exit", process.join(j2.p_uid, timeout=30))
    ch = [c for c in introspect.dump()["channels"] if c["name"] == "wb-d"][0]
    print("dead joiner holds nothing:", str(j1.p_uid) not in map(str, ch["holders"]))
    channel.release("wb-d")
    try:
        channel.join("wb-never", timeout=0.3)
        print("joined a name never created")
    except ChannelTimeout:
        print("timed out")
    """)
    assert "killed joiner exit -9" in out
    assert "live joiner has it: True" in out
    assert "live joiner exit 0" in out
    assert "dead joiner holds nothing: True" in out
    assert "timed out" in out


def test_many_joiners_before_and_after_the_create(tmp_path):
    """Seven joiners parked on one name (five fit its board entry, two are
    answered by GS), a name of non-ASCII characters, a name longer than a
    board entry holds, and a join after the create: every joiner gets the
    creator's channel, with its name; the descriptor a joiner answered from
    the board returns (filled into one made before its wait) holds, field
    by field, what GS answers a join after the create."""
    out = run(tmp_path, """
    names = ["wb-many", "wb-\u00e9t\u00e9-\u6f22", "wb-" + "l" * 120]
    js = {n: [spawn("join", n, f"{tmp}/{k}-{i}") for i in range(7 if k == 0 else 2)]
          for k, n in enumerate(names)}
    for k, n in enumerate(names):
        wait_for(lambda: parked(n, len(js[n])), what="the joiners to park")
    for k, n in enumerate(names):
        d = channel.create(None, n)
        for i in range(len(js[n])):
            wait_for(lambda: read(f"{tmp}/{k}-{i}") is not None, what="an answer")
        print(k, "all have it:", all(read(f"{tmp}/{k}-{i}") == str(d.c_uid)
                                     for i in range(len(js[n]))))
        print(k, "joined after:", channel.join(n).c_uid == d.c_uid, channel.join(n).name == n)
        print(k, "fields as GS's:", all(read(f"{tmp}/{k}-{i}.desc") == fields(channel.join(n))
                                         for i in range(len(js[n]))))
        print(k, "exits:", [process.join(j.p_uid, timeout=30) for j in js[n]])
    for n in names:
        channel.destroy(n)
    """)
    for k, n in enumerate((7, 2, 2)):
        assert f"{k} all have it: True" in out
        assert f"{k} joined after: True True" in out
        assert f"{k} fields as GS's: True" in out
        assert f"{k} exits: {[0] * n}" in out


def test_join_timeout_with_a_creator_of_other_names(tmp_path):
    """A join with a timeout on a name nobody creates times out while a
    creator publishes other names through the board; a timed-out joiner's
    entry does not hold back a later create and join of its name."""
    out = run(tmp_path, """
    j = spawn("join", "wb-t-other", f"{tmp}/o")
    wait_for(lambda: parked("wb-t-other"), what="the joiner to park")
    t0 = time.monotonic()
    try:
        channel.join("wb-t", timeout=0.5)
        print("joined")
    except ChannelTimeout:
        print("timed out after", time.monotonic() - t0 >= 0.5)
    d = channel.create(None, "wb-t-other")
    wait_for(lambda: read(f"{tmp}/o") is not None, what="the other joiner's answer")
    print("other answered:", read(f"{tmp}/o") == str(d.c_uid))
    d2 = channel.create(None, "wb-t")
    print("late join:", channel.join("wb-t", timeout=5).c_uid == d2.c_uid)
    print("joiner exit", process.join(j.p_uid, timeout=30))
    channel.destroy("wb-t")
    channel.destroy("wb-t-other")
    """)
    assert "timed out after True" in out
    assert "other answered: True" in out
    assert "late join: True" in out
    assert "joiner exit 0" in out


def test_send_quiet_and_notify():
    """The channel primitive the board uses: a try-once inline send that
    queues without waking anyone, and the wake-up on its own."""
    from ember.channels_c import Channel
    from ember.exceptions import ChannelError, ChannelFull
    from ember.pools_c import Pool

    pool = Pool.create(1 << 20)
    try:
        ch = Channel.create(pool, capacity=2, block_size=128)
        other = Channel.attach(ch.sdesc)
        ch._send_quiet(b"a")
        ch._send_quiet(b"b")
        with pytest.raises(ChannelFull):
            ch._send_quiet(b"c")             # try-once: never waits
        with pytest.raises(ChannelError):
            ch._send_quiet(b"x" * 200)       # inline only (payload 112 bytes)
        ch._notify()
        assert other.recv(timeout=5) == b"a" and other.recv_nowait() == b"b"
        with pytest.raises(TypeError):
            ch._send_quiet(memoryview(b"a"))  # bytes only
        other.detach()
        ch.destroy()
        with pytest.raises(ChannelError):
            ch._notify()
    finally:
        pool.destroy()


# ------------------------------------------------ GS's side, as a state machine
# (the harness of test_gs_state: real pools and board, a fake clock)
@pytest.fixture
def h():
    from test_gs_state import Harness
    harness = Harness()
    harness.gs._board_pool = harness.pool       # what serve() sets: a board at the first join
    yield harness
    if harness.gs.wake_board is not None:
        harness.gs.wake_board.close(destroy=True)
    harness.close()


NEVER = ("ChannelTimeout", "channel.join('late') timed out: no channel of that name was created")


def test_a_listed_join_times_out_while_the_board_stays_busy(h):
    """A listed joiner's timeout that finds the board's lock busy (its
    holder stopped) is looked at again for a while, not for ever: the
    joiner is timed out, and unlisted once the lock is free."""
    from ember import messages as m
    from ember.globalservices import wakeboard
    key = h.req(m.ChannelJoin, "late", 0.5, r=b"RJ")
    (w,) = h.gs.chan_joiners["late"]
    assert w.listed and h.reply(key) is None
    lock = h.gs.wake_board.lock
    assert lock.acquire(timeout=5)              # a holder stopped on the lock
    try:
        h.advance(0.6)
        assert h.reply(key) is None             # cannot tell whether a claimant answered it
        for _ in range(int(wakeboard.BUSY_GRACE / 0.05) + 10):
            if h.reply(key) is not None:
                break
            h.advance(0.05)
        assert h.err(key) == NEVER
        assert "late" not in h.gs.chan_joiners
    finally:
        lock.release()
    h.advance(0.5)                              # unlisted now: the entry is free again
    assert h.gs.wake_board.take("late", None, lambda p: True) == set()
    assert not h.gs._board_unfreed


def test_an_exit_looks_at_the_board_only_for_a_process_told_of_it(h):
    """Only a process whose create reply carried the board can hold a
    claim on it: another's exit does not touch the board (here: busy, so
    a look would leave a retry timer behind)."""
    from ember import messages as m
    from test_channel_register import OPTS
    a = h.create()
    h.gs.procs[a].os_pid = os.getpid()
    h.req(m.ChannelJoin, "late", None, r=b"RJ")       # the board is made; a joiner listed
    told = h.create()
    h.gs.procs[told].os_pid = os.getpid()
    d = h.ok(h.req(m.ChannelCreate, None, None, OPTS, False, p_uid=told, r=b"RT"))
    assert "wake_board" in d and h.gs._board_told == {told}
    h.ok(h.req(m.ChannelDestroy, d["c_uid"], p_uid=told, r=b"RT"))
    lock = h.gs.wake_board.lock
    assert lock.acquire(timeout=5)
    try:
        before = h.gs.timers_pending
        h.exit(a, 0)
        assert h.gs.timers_pending == before        # never told: the board was not looked at
        h.exit(told, 0)
        assert h.gs.timers_pending == before + 1    # told: its claims dropped once the lock is free
    finally:
        lock.release()
    h.advance(0.1)
    assert h.gs.timers_pending == before and h.gs._board_told == set()
    key = h.req(m.ChannelJoin, "late", 0, r=b"RX")
    assert h.err(key)[0] == "ChannelTimeout"


def test_the_next_channel_block_is_made_ahead(tmp_path):
    """Issue 7 (join wake-up): once a create has answered parked joiners,
    the creator makes its next channel's block ahead (allocated, header
    faulted in: off the wake-up's path), and the channel itself in it with
    one of its posted c_uids and a tag; the next named create takes it (also
    one nobody waits for, whose register then waits for GS as usual); the
    block is the creator's own, so its exit gives the one made ahead last
    back to the pool."""
    out = run(tmp_path, """
    from ember.channels_c import Channel
    from ember.globalservices import _client
    if role == "publisher":         # publisher NAME1 NAME2: answer a joiner of each
        conn = _client.connection()
        for k, name in enumerate(sys.argv[2:4]):
            wait_for(lambda: parked(name), what="the joiner to park")
            before = conn._publisher.reserved if conn._publisher else None
            pre = conn._publisher.prepared if conn._publisher else None
            d = channel.create(None, name)
            print(name, "took the block made ahead:", k == 0 or
                  Channel.describe(d.sdesc)[1] == before, flush=True)
            print(name, "took the create made ahead:", k == 0 or
                  (pre is not None and d.c_uid == pre[0]), flush=True)
            print(name, "next made ahead:", conn._publisher.reserved is not None,
                  conn._publisher.prepared is not None, flush=True)
            open(f"{tmp}/{name}-made", "w").close()
        pre = conn._publisher.prepared
        d = channel.create(None, "wb-m3")           # nobody waits: GS answers its register
        print("wb-m3 took the create made ahead:", d.c_uid == pre[0],
              channel.query("wb-m3").c_uid == d.c_uid, flush=True)
        channel.destroy("wb-m3")
        sys.exit(0)
    dpool = _client.connection()._default_pool()
    wait_for(lambda: dpool.stats().live_allocs == 0, what="the warm-up's channel freed")
    joiners = [spawn("join", "wb-m1", f"{tmp}/wb-m1")]
    p = spawn("publisher", "wb-m1", "wb-m2")
    # wb-m2's joiner parks once wb-m1's create is over: GS lists a joiner on
    # the board only if its lock is free (a joiner that parks while the
    # publisher holds it, making wb-m1, is answered by GS: wb-m2's create
    # then answers nobody and makes no block ahead, as it should)
    wait_for(lambda: os.path.exists(f"{tmp}/wb-m1-made"), what="wb-m1 made")
    joiners.append(spawn("join", "wb-m2", f"{tmp}/wb-m2"))
    print("publisher exit", process.join(p.p_uid, timeout=60))
    print("joiners exit", [process.join(j.p_uid, timeout=60) for j in joiners])
    print("answered:", [read(f"{tmp}/{n}") == str(channel.query(n).c_uid)
                        for n in ("wb-m1", "wb-m2")])
    channel.destroy("wb-m1")
    channel.destroy("wb-m2")
    wait_for(lambda: dpool.stats().live_allocs == 0, what="the blocks back in the pool")
    print("pool as before")
    """)
    assert_lines(out, "wb-m1 next made ahead: True True", "wb-m2 took the block made ahead: True",
                 "wb-m2 took the create made ahead: True", "wb-m2 next made ahead: True True",
                 "wb-m3 took the create made ahead: True True", "publisher exit 0",
                 "joiners exit [0, 0]", "answered: [True, True]", "pool as before")


def test_a_request_held_for_a_busy_board_leaves_no_entry_when_it_ends(h):
    """A create held back while the board was busy has an entry (since
    when it waits, for BUSY_GRACE): it goes when the request ends, not when
    its process exits (a long-lived process that makes many names would
    grow GS's table) — also when the name's joiners left meanwhile, so
    that the retried create does not look at the board again."""
    from ember import messages as m
    from test_channel_register import OPTS
    a = h.create()
    h.gs.procs[a].os_pid = os.getpid()
    keys = []
    for i in range(3):
        name = f"held-{i}"
        joiner = h.create()
        h.req(m.ChannelJoin, name, None, p_uid=joiner, r=b"RJ%d" % i)   # listed on the board
        lock = h.gs.wake_board.lock
        assert lock.acquire(timeout=5)              # a holder stopped on the lock
        try:
            keys.append(h.req(m.ChannelCreate, None, name, OPTS, False, p_uid=a, r=b"RA"))
            assert h.reply(keys[-1]) is None and len(h.gs._board_busy_since) == 1
            h.exit(joiner, 0)                       # the name's only joiner leaves
        finally:
            lock.release()
        h.advance(0.05)                             # retried: created
        assert h.ok(keys[-1])["name"] == name
        assert h.gs._board_busy_since == {}, h.gs._board_busy_since
    for i in range(3):
        h.ok(h.req(m.ChannelDestroy, f"held-{i}", p_uid=a, r=b"RA"))


# ---------------------------------- the posted register (ChannelRegisterPublished)
def _posted_rig(h, name):
    """A creator (p_uid ``a``, our pid) told the board, with post_c_uids
    (``lo``...), a joiner of ``name`` listed on the board, and the
    creator's publisher (its GS input: ``gs_in``, read by the test)."""
    from ember import messages as m
    from ember.channels_c import Channel
    from ember.channels_c import _channels as C
    from ember.globalservices import wakeboard
    from test_channel_register import OPTS
    joiner = h.create()
    jr = Channel.create(h.pool, capacity=4, block_size=1024)
    join = h.req(m.ChannelJoin, name, None, p_uid=joiner, r=jr.sdesc)   # the board made, listed
    a = h.create()
    h.gs.procs[a].os_pid = os.getpid()
    d = h.ok(h.req(m.ChannelCreate, None, None, OPTS, False, p_uid=a, r=b"RA"))
    assert "wake_board" in d
    h.ok(h.req(m.ChannelDestroy, d["c_uid"], p_uid=a, r=b"RA"))
    gs_in = Channel.create(h.pool, capacity=4, block_size=1024)
    board = wakeboard.Board.attach(d["wake_board"])
    od = {"capacity": 128, "block_size": 1024, "ref_count": False, "node": None}
    pub = C._BoardPublisher(h.pool, board.alloc, board.lock_alloc, h.pool, gs_in, a, h.key(a),
                            h.gs.default_m_uid, 0, 0, m._packb(od))
    return dict(a=a, lo=d["post_c_uids"][0], jr=jr, join=join, gs_in=gs_in, board=board,
                pub=pub, od=m._packb(od))


def _posted_close(h, rig, names):
    from ember import messages as m
    for name in names:
        h.ok(h.req(m.ChannelDestroy, name, p_uid=0))
    h.pump()
    rig["pub"].release()
    rig["board"].close()
    rig["gs_in"].destroy()
    rig["jr"].destroy()


def test_a_posted_register_is_answered_nothing_and_found_right_after(h):
    """Issue 7 (join wake-up): a create that answered parked joiners from
    the board queues its register as ChannelRegisterPublished (made with
    one of its post_c_uids) and waits for nothing: GS records it as a
    register (the joiner gets no second reply, the node adopts it), answers
    nothing, and a lookup after it finds the name.  A name nobody waits for
    is registered the waited way, with a posted c_uid all the same."""
    from ember import messages as m
    from ember.descriptors import ChannelDescriptor
    rig = _posted_rig(h, "wb-p")
    a, lo = rig["a"], rig["lo"]
    nxt = h.gs.procs[a].next_c_uid
    ch, reg, n = rig["pub"].create(lo, 128, 1024, False, b"wb-p", 77, b"RA", rig["od"], True)
    assert n == 1
    tag, d = rig["jr"]._recv_reply(5, ChannelDescriptor)
    assert (tag, d.c_uid, d.name, d.sdesc) == (rig["join"][1], lo, "wb-p", ch.sdesc)
    data = rig["gs_in"].recv(timeout=5)
    msg = m.unpack(data)
    assert type(msg) is m.ChannelRegisterPublished
    w = m.unpack(reg)
    assert [getattr(msg, f) for f in m.ChannelRegister.fields] == \
        [getattr(w, f) for f in m.ChannelRegister.fields]          # the same fields
    assert type(m.unpack(reg)) is m.ChannelRegister     # (what the caller sends if n < 0)
    ch._take_owner(os.getpid(), 0)                      # as the client does right after
    ch.detach()
    h.gs.handle_bytes(data)
    h.pump()
    assert h.reply((b"RA", 77)) is None and h.reply(rig["join"]) is None
    assert h.gs.chan_names["wb-p"] == lo and lo in h.node.chans
    assert lo not in h.gs.procs[a].posted_c_uids and h.gs.procs[a].next_c_uid == nxt
    assert h.ok(h.req(m.ChannelQuery, "wb-p", p_uid=a, r=b"RA"))["sdesc"] == d.sdesc
    # nobody waits: not claimed, the waited register (code 100) with a posted c_uid
    ch2, reg2, n2 = rig["pub"].create(lo + 1, 128, 1024, False, b"wb-q", 78, b"RA", rig["od"],
                                      True)
    assert n2 == -1
    h.gs.handle_bytes(reg2)
    h.pump()
    got = h.ok((b"RA", 78))
    assert (got["c_uid"], got["name"]) == (lo + 1, "wb-q")
    assert lo + 1 not in h.gs.procs[a].posted_c_uids and got["next_c_uid"] == nxt
    ch2.detach()                                        # (adopted by the node already)
    _posted_close(h, rig, ("wb-p", "wb-q"))


def test_a_posted_register_held_for_a_busy_board_survives_its_creator_s_exit(h):
    """GS met the posted register while the board was still held (the
    creator answering its joiners); the creator, which waits for no answer,
    exits before GS tries again: the register (sent before the exit) is
    handled at the exit, not dropped with it."""
    from ember import messages as m
    from ember.descriptors import ChannelDescriptor
    rig = _posted_rig(h, "wb-x")
    a, lo = rig["a"], rig["lo"]
    ch, reg, n = rig["pub"].create(lo, 128, 1024, False, b"wb-x", 79, b"RA", rig["od"], True)
    assert n == 1
    rig["jr"]._recv_reply(5, ChannelDescriptor)
    ch._take_owner(os.getpid(), 0)
    ch.detach()
    lock = h.gs.wake_board.lock
    assert lock.acquire(timeout=5)          # still held by its creator
    try:
        h.gs.handle_bytes(rig["gs_in"].recv(timeout=5))
        assert "wb-x" in h.gs._held and "wb-x" not in h.gs.chan_names
    finally:
        lock.release()
    h.exit(a, 0)
    assert h.gs.chan_names["wb-x"] == lo and "wb-x" not in h.gs._held
    assert h.reply(rig["join"]) is None                 # answered once, by the creator
    assert "before GS registered its channel" not in h.errlog.getvalue()
    h.advance(0.05)                                     # the retry finds nothing left
    assert h.gs.chan_names["wb-x"] == lo
    _posted_close(h, rig, ("wb-x",))
