"""Seeing inside a running runtime: ember ls/ps/stacks/channels/pools/events/top
(docs/introspection.md), end to end under a real `ember run`."""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from procs import join, kill

# A deliberately deadlocked program: alice and bob each wait on their own
# inbox, which only the other would feed; "crash" dies of SIGSEGV; the head
# waits for alice.
DEADLOCK = """\
import os, sys
from ember.channels_c import Channel
from ember.globalservices import channel, process

def side(mine, other):
    inbox = Channel.attach(channel.create(None, mine).sdesc)
    channel.join(other, timeout=60)
    inbox.recv()                                    # BLOCK-HERE

if len(sys.argv) > 1:
    side(sys.argv[1], sys.argv[2])
    sys.exit(0)
me = os.path.abspath(__file__)
process.create(sys.executable, os.getcwd(), [me, "a_in", "b_in"], user_name="alice")
process.create(sys.executable, os.getcwd(), [me, "b_in", "a_in"], user_name="bob")
process.create(sys.executable, os.getcwd(),
               ["-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], user_name="crash")
process.create(sys.executable, os.getcwd(),
               ["-c", "from ember.globalservices import channel; channel.join('never', timeout=60)"],
               user_name="waiter")
process.join("alice")
"""
BLOCK_LINE = DEADLOCK.splitlines().index(
    "    inbox.recv()                                    # BLOCK-HERE") + 1


def _env(xdg):
    env = dict(os.environ)
    env["XDG_RUNTIME_DIR"] = str(xdg)
    env.pop("EMBER_ADDRESS", None)
    return env


def ember(xdg, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "ember", *args], capture_output=True,
                          timeout=timeout, env=_env(xdg))


def ember_json(xdg, *args):
    res = ember(xdg, *args, "--json")
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return json.loads(res.stdout)


@pytest.fixture
def xdg(tmp_path):
    d = tmp_path / "xdg"
    d.mkdir(mode=0o700)
    return d


def _start(tmp_path, xdg, body, **popen):
    """`ember run` of ``body`` (written to tmp_path/prog.py) with the private
    runtime directory ``xdg``; stdout and stderr piped (``popen``: more
    arguments to subprocess.Popen)."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(body))
    return subprocess.Popen([sys.executable, "-m", "ember", "run", str(prog)], cwd=tmp_path,
                            env=_env(xdg), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            **popen)


def _stop(run):
    if run.poll() is None:
        run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    return out, err


def _wait_for(fn, what, timeout=45):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        time.sleep(0.05)


def _ps_rows(xdg, *args):
    """The rows of `ember ps --json` (``args``: more options), or None
    while the runtime is not published yet."""
    res = ember(xdg, "ps", *args, "--json")
    if res.returncode == 1:
        return None
    return json.loads(res.stdout)


def _runtime_id(xdg):
    rows = ember_json(xdg, "ls")
    return rows[0]["id"] if len(rows) == 1 else None


def _by_name(r, rows):
    return r["name"]


def _ps_by(xdg, *args, key=_by_name):
    """The rows of `ember ps --json` (``args``: more options) by
    ``key(row, rows)`` (recorded for a timeout's message), or None while
    the runtime is not published yet."""
    rows = _ps_rows(xdg, *args)
    if rows is None:
        return None
    by = {key(r, rows): r for r in rows}
    _LAST_PS[str(xdg)] = {n: (r.get("status"), r.get("blocked_on")) for n, r in by.items()}
    return by


def _wait_ps(xdg, what, ready, *args, key=_by_name):
    """:func:`_ps_by` once ``ready(by)``: the states a test asserts, not just
    "blocked" (on its way each process is seen waiting for GS for a
    moment: its channel create, join, ...)."""
    def poll():
        by = _ps_by(xdg, *args, key=key)
        return by if by is not None and ready(by) else None
    return _wait_for(poll, lambda: f"{what} (last ps: {_LAST_PS.get(str(xdg))})")


def _deadlocked(by):
    return all(n in by for n in (None, "alice", "bob", "crash", "waiter")) and \
        by["alice"]["blocked_on"] == 'recv("a_in")' and \
        by["bob"]["blocked_on"] == 'recv("b_in")' and by["crash"]["state"] == "exited" and \
        by["waiter"]["blocked_on"] == "channel.join('never')" and \
        (by[None]["blocked_on"] or "").startswith("join(")


PS_KEYS = {"p_uid", "name", "label", "pid", "node", "state", "status", "blocked_on", "blocked_since",
           "blocked_detail", "core_dumped", "oom_killed",
           "cpu_percent", "rss", "age", "parent", "exit_code", "signal", "attached", "exe"}


@pytest.mark.timeout(120)
def test_deadlock_seen_from_outside(tmp_path, xdg):
    run = _start(tmp_path, xdg, DEADLOCK)
    try:
        rid = _wait_for(lambda: _runtime_id(xdg), "the runtime's address")
        by = _wait_ps(xdg, "alice and bob to block", _deadlocked, "--all")
        for r in by.values():
            assert set(r) == PS_KEYS, r
        # ps: both blocked on the channel only the other would feed
        assert by["alice"]["blocked_on"] == 'recv("a_in")'
        assert by["bob"]["blocked_on"] == 'recv("b_in")'
        assert by["alice"]["status"] == 'blocked on recv("a_in")'
        assert by["alice"]["blocked_since"] <= time.time()
        head = by[None]
        assert head["blocked_on"] == f"join({by['alice']['p_uid']})"
        assert by["alice"]["parent"] == head["p_uid"] and by["alice"]["rss"] > 0
        assert by["waiter"]["status"] == "blocked on channel.join('never')"
        # the crashed one: its signal (--all only)
        assert (by["crash"]["status"], by["crash"]["signal"], by["crash"]["exit_code"]) == \
            ("killed by SIGSEGV", "SIGSEGV", -signal.SIGSEGV)
        assert "crash" not in {r["name"] for r in ember_json(xdg, "ps")}
        text = ember(xdg, "ps").stdout.decode()
        line = next(ln for ln in text.splitlines() if " alice " in ln)
        assert 'blocked on recv("a_in") for ' in line, text
        assert text.splitlines()[0].split() == ["P_UID", "NAME", "PID", "NODE", "STATE", "CPU%",
                                                "RSS", "AGE", "PARENT"]
        text = ember(xdg, "ps", "--all").stdout.decode()
        assert "killed by SIGSEGV" in next(ln for ln in text.splitlines() if " crash " in ln)

        # stacks: the blocking line of each, annotated with what it waits on
        res = ember(xdg, "stacks", "alice", "bob")
        assert res.returncode == 0, res.stderr
        out = res.stdout.decode()
        prog = str(tmp_path / "prog.py")
        for name, ch in (("alice", "a_in"), ("bob", "b_in")):
            part = out.split(f"=== process {by[name]['p_uid']} '{name}'")[1].split("===")[0]
            assert f'File "{prog}", line {BLOCK_LINE} in side' in part, out
            assert f'^ blocked on recv("{ch}")' in part, out
        st = ember_json(xdg, "stacks", "bob")
        assert [s["name"] for s in st] == ["bob"] and f"line {BLOCK_LINE} in side" in st[0]["stacks"]
        res = ember(xdg, "stacks", "nobody")
        assert res.returncode == 3
        assert res.stderr.decode() == f"ember stacks: no live process 'nobody' in the runtime {rid}\n"

        # channels: who is blocked where
        chans = {c["name"]: c for c in ember_json(xdg, "channels")}
        assert chans["a_in"]["receivers_blocked"] == [by["alice"]["p_uid"]]
        assert chans["b_in"]["receivers_blocked"] == [by["bob"]["p_uid"]]
        assert (chans["a_in"]["depth"], chans["a_in"]["closed"], chans["a_in"]["senders_blocked"]) \
            == (0, False, [])
        assert set(chans["a_in"]) == {"c_uid", "name", "m_uid", "node", "capacity", "block_size",
                                      "ref_count", "refs", "holders", "depth", "closed",
                                      "senders_blocked", "receivers_blocked"}
        pools = ember_json(xdg, "pools")
        dflt = next(p for p in pools if p["default"])
        assert dflt["channels"] == 2 and dflt["used"] > 0 and dflt["live_allocs"] >= 2
        assert set(dflt) == {"m_uid", "name", "size", "default", "node", "channels", "used",
                             "free", "largest_free", "live_allocs"}
        ls = ember_json(xdg, "ls")
        assert set(ls[0]) == {"id", "name", "address", "pid", "program", "created", "age",
                              "processes", "pool_used", "pool_size"}
        assert (ls[0]["id"], ls[0]["pid"], ls[0]["processes"]) == (rid, run.pid, 4)
        assert ls[0]["program"] == str(tmp_path / "prog.py")

        # events: the crash with its signal, as text and JSON lines.  GS
        # writes them once its input is idle (about a millisecond after what
        # ps shows): waited for, the crash's exit and both channels' creation
        def logged():
            res = ember(xdg, "events", "--json")
            events = [json.loads(ln) for ln in res.stdout.decode().splitlines()]
            kinds = [e["event"] for e in events]
            return kinds.count("channel.created") >= 2 and \
                any(e["event"] == "process.exited" and e["name"] == "crash" for e in events) \
                and events
        events = _wait_for(logged, "the crash and both channels in the event log")
        crash = [e for e in events if e["event"] == "process.exited" and e["name"] == "crash"]
        assert len(crash) == 1 and crash[0]["signal"] == "SIGSEGV" and crash[0]["exit_code"] == -11
        kinds = [e["event"] for e in events]
        assert kinds[0] == "runtime.started" and kinds.count("process.started") == 5
        assert kinds.count("channel.created") == 2
        assert not any("ember-inspect" in str(e.get("name")) for e in events)
        text = ember(xdg, "events").stdout.decode()
        assert f"process.exited p_uid={by['crash']['p_uid']} name='crash' pid={by['crash']['pid']} " \
            "exit_code=-11 signal='SIGSEGV'" in text, text
    finally:
        _, err = _stop(run)
    assert b"killed by SIGSEGV" in err
    # The run is over: its event log survives, its slots and stack files do not.
    assert sorted(os.listdir(xdg / "ember")) == [f"{rid}.events"]
    events = [json.loads(ln) for ln in ember(xdg, "events", "--address", rid, "--json")
              .stdout.decode().splitlines()]
    assert events[-1]["event"] == "runtime.ended"
    assert {e["name"] for e in events if e["event"] == "process.exited"} >= {"alice", "bob"}
    # ... and the commands say that it is gone
    res = ember(xdg, "ps", "--address", rid)
    assert res.returncode == 1
    assert res.stderr.decode() == f"ember ps: no running ember runtime named {rid!r} for this user\n"


NO_RUNTIME = ("no running ember runtime found for this user (start one with `ember start` or "
              "call ember.init())")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cmd", ["ps", "stacks", "channels", "pools", "events", "top"])
def test_no_runtime(xdg, cmd):
    res = ember(xdg, cmd)
    assert (res.returncode, res.stdout) == (1, b"")
    assert res.stderr.decode() == f"ember {cmd}: {NO_RUNTIME}\n"


@pytest.mark.timeout(60)
def test_ls_without_runtimes_and_bad_addresses(xdg, tmp_path):
    res = ember(xdg, "ls")
    assert (res.returncode, res.stdout) == (0, b"no ember runtime is running for this user\n")
    assert ember_json(xdg, "ls") == []
    res = ember(xdg, "ps", "--address", "nosuch")
    assert res.returncode == 1
    assert res.stderr.decode() == "ember ps: no running ember runtime named 'nosuch' for this user\n"
    missing = str(tmp_path / "gone.addr")
    res = ember(xdg, "channels", "--address", missing)
    assert res.returncode == 1
    assert res.stderr.decode() == \
        f"ember channels: no ember runtime at {missing}: the address file does not exist\n"
    res = ember(xdg, "ps", "--bogus")
    assert res.returncode == 2


def _read_until(fd, *needles, timeout=45):
    buf = b""
    deadline = time.monotonic() + timeout
    while not all(n in buf for n in needles):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; got {buf[-2000:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


@pytest.mark.timeout(120)
def test_top_through_a_pty(tmp_path, xdg):
    run = _start(tmp_path, xdg, DEADLOCK)
    try:
        _wait_ps(xdg, "alice and bob to block", _deadlocked, "--all")
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.environ.update(_env(xdg), TERM="xterm", LINES="40", COLUMNS="150")
                os.execv(sys.executable, [sys.executable, "-m", "ember", "top",
                                          "--interval", "0.2"])
            finally:
                os._exit(127)
        try:
            buf = _read_until(fd, b"ember top", b"alice", b"a_in")
            assert b"blocked on recv(\"a_in\")" in buf
            os.write(fd, b"q")
            assert join(pid) == 0
        finally:
            kill(pid)
            os.close(fd)
    finally:
        _stop(run)


# Two processes deadlocked on two named Locks (each holds one and wants the
# other's), plus an Event waiter, a put on a full bounded Queue and a get on
# an empty one: every one of them is named by `ember ps` from outside.
LOCK_DEADLOCK = """\
import os, sys
import ember
from ember.globalservices import process

def side(first, second):
    a = ember.Lock.attach(first, timeout=60)
    b = ember.Lock.attach(second, timeout=60)
    ready = ember.Barrier.attach("ready", timeout=60)
    a.acquire()
    ready.wait(timeout=60)                  # both hold their first lock
    b.acquire()                                     # BLOCK-HERE

def other(what):
    if what == "eve":
        ember.Event.attach("go", timeout=60).wait()
    elif what == "putter":
        q = ember.Queue.attach("jobs", timeout=60)
        for i in range(4):
            q.put(i)
    elif what == "late":
        ember.Lock.attach("later", timeout=100)     # parked in GS: nobody makes it
    else:
        ember.Queue.attach("inbox", timeout=60).get()

if len(sys.argv) > 2:
    side(sys.argv[1], sys.argv[2])
    sys.exit(0)
if len(sys.argv) > 1:
    other(sys.argv[1])
    sys.exit(0)
db, cache = ember.Lock(name="db"), ember.Lock(name="cache")
ready, go = ember.Barrier(2, name="ready"), ember.Event(name="go")
jobs, inbox = ember.Queue(3, name="jobs"), ember.Queue(name="inbox")
me = os.path.abspath(__file__)
process.create(sys.executable, os.getcwd(), [me, "db", "cache"], user_name="alice")
process.create(sys.executable, os.getcwd(), [me, "cache", "db"], user_name="bob")
for who in ("eve", "putter", "getter", "late"):
    process.create(sys.executable, os.getcwd(), [me, who], user_name=who)
process.join("alice")
"""
LOCK_BLOCK_LINE = LOCK_DEADLOCK.splitlines().index(
    "    b.acquire()                                     # BLOCK-HERE") + 1


_LAST_PS = {}

# The process slot of p_uid argv[1] in runtime argv[2], read from outside:
# whether its c_uid is a reply channel's, and what `ember ps` makes of the
# slot alone (no GS channel, object nor parked request to name it).
SLOT_OF = """\
import sys, time
from ember import _slots
from ember.globalservices._client import is_reply_c_uid
from ember.launcher.inspect import blocked_on
# GS records the parked attach as soon as it has the request; the process
# writes its slot only when it goes to sleep on the reply (after its spin):
# wait for that state ("not stuck" bound), never assume it.
deadline = time.monotonic() + 30
while int(sys.argv[1]) not in (slots := _slots.read(sys.argv[2])) and time.monotonic() < deadline:
    time.sleep(0.01)
slot = slots[int(sys.argv[1])]
print(is_reply_c_uid(slot["c_uid"]))
print(blocked_on({"p_uid": int(sys.argv[1]), "os_pid": slot["pid"]}, slot, {}, {}))
"""


#: What each of LOCK_DEADLOCK's other processes ends up blocked on.  Before
#: that each is seen, for a moment, on its way (waiting for GS's answer to
#: its attach, at the barrier): the wait is for the states asserted.
LOCK_FINAL = {"eve": 'wait(Event "go")', "putter": 'put(Queue "jobs")',
              "getter": 'get(Queue "inbox")', "late": "Lock.attach('later')"}


def _lock_deadlocked(by):
    return all(n in by and by[n]["blocked_on"] and "held by" in by[n]["blocked_on"]
               for n in ("alice", "bob")) and \
        all(n in by and by[n]["blocked_on"] == want for n, want in LOCK_FINAL.items())


@pytest.mark.timeout(120)
def test_lock_deadlock_seen_from_outside(tmp_path, xdg):
    run = _start(tmp_path, xdg, LOCK_DEADLOCK)
    try:
        by = _wait_ps(xdg, "alice and bob to deadlock", _lock_deadlocked)
        alice, bob = by["alice"], by["bob"]
        assert alice["blocked_on"] == f'acquire(Lock "cache") held by p_uid {bob["p_uid"]}'
        assert bob["blocked_on"] == f'acquire(Lock "db") held by p_uid {alice["p_uid"]}'
        assert alice["status"] == "blocked on " + alice["blocked_on"]
        assert alice["blocked_since"] <= time.time()
        d = alice["blocked_detail"]
        assert (d["kind"], d["object_kind"], d["name"], d["held_by"], d["held_by_pid"]) == \
            ("Lock", "Lock", "cache", bob["p_uid"], bob["pid"])
        assert isinstance(d["object"], int) and isinstance(d["m_uid"], int)
        assert by["eve"]["blocked_on"] == 'wait(Event "go")'
        assert by["putter"]["blocked_on"] == 'put(Queue "jobs")'
        assert by["getter"]["blocked_on"] == 'get(Queue "inbox")'
        # an attach parked in GS names the object it waits for ...
        assert by["late"]["blocked_on"] == "Lock.attach('later')"
        assert by["late"]["blocked_detail"] == {"name": "later", "object_kind": "Lock"}
        # ... and, without GS's record of it, its process slot alone says that
        # it waits for GS (its reply channel), never "recv(channel N)"
        res = subprocess.run([sys.executable, "-c", SLOT_OF, str(by["late"]["p_uid"]),
                              _runtime_id(xdg)], capture_output=True, timeout=60, env=_env(xdg))
        assert res.stdout.decode().splitlines() == ["True", "a reply from global services"], res
        for r in by.values():
            assert set(r) == PS_KEYS, r
        want = f'blocked on acquire(Lock "db") held by p_uid {alice["p_uid"]} for '
        last = []

        def blocked_text():         # (taken again until a look lands inside a wait)
            last[:] = [ember(xdg, "ps").stdout.decode()]
            return last[0] if any(" bob " in ln and want in ln
                                  for ln in last[0].splitlines()) else None
        _wait_for(blocked_text, lambda: f"bob blocked in ember ps's text ({last})")
        # stacks: the blocking line, annotated with the lock and its holder
        res = ember(xdg, "stacks", "alice", "bob")
        assert res.returncode == 0, res.stderr
        out = res.stdout.decode()
        prog = str(tmp_path / "prog.py")
        for name, want in (("alice", "cache"), ("bob", "db")):
            part = out.split(f"=== process {by[name]['p_uid']} '{name}'")[1].split("===")[0]
            assert f'File "{prog}", line {LOCK_BLOCK_LINE} in side' in part, out
            assert f'^ blocked on acquire(Lock "{want}") held by p_uid ' in part, out
    finally:
        _stop(run)


# The Python layer's own channels (not GS channels nor objects): a head
# waiting for a Process's result, a process whose Executor waits for a
# task's result.
OWN_CHANNELS = """\
import time, ember

def forever():
    time.sleep(3600)

def boss():
    ex = ember.Executor(max_workers=1)
    ex.submit(forever).result()          # the executor's reader waits on its results

if __name__ == "__main__":
    b = ember.Process(target=boss, name="boss")
    b.start()
    p = ember.Process(target=forever, name="slow")
    p.start()
    p.result()                           # the head waits for the result
"""
OWN_RESULT_LINE = OWN_CHANNELS.splitlines().index(
    "    ex.submit(forever).result()          # the executor's reader waits on its results") + 1


def _head_or_name(r, rows):
    # the head (the first process) and boss; the executor's worker has no name either
    return "head" if r["p_uid"] == min(x["p_uid"] for x in rows) else r["name"]


def _own_blocked(by):
    # their last waits (boss waits for GS's replies first, starting its worker)
    return "head" in by and "boss" in by and \
        by["head"]["blocked_on"] == "recv(result of a Process)" and \
        by["boss"]["blocked_on"] == "recv(results of an Executor)"


@pytest.mark.timeout(120)
def test_waits_on_the_python_layers_own_channels_say_what_they_are(tmp_path, xdg):
    """Not ``recv(channel 4611...)``: the channel's role, read from its c_uid."""
    run = _start(tmp_path, xdg, OWN_CHANNELS)
    try:
        by = _wait_ps(xdg, "the head and boss to block", _own_blocked, key=_head_or_name)
        head, boss = by["head"], by["boss"]
        assert head["blocked_on"] == "recv(result of a Process)"
        assert head["status"] == "blocked on recv(result of a Process)"
        assert head["blocked_detail"]["role"] == "result of a Process"
        assert boss["blocked_on"] == "recv(results of an Executor)"
        assert boss["blocked_detail"]["role"] == "results of an Executor"
        # (the text is a second look: the head's wait is taken in slices,
        # and a look between two of them sees it sleeping; taken again, as
        # _wait_ps does, until it lands inside one: a loaded CI run's look
        # landed between)
        last = []

        def blocked_text():
            last[:] = [ember(xdg, "ps").stdout.decode()]
            return last[0] if "blocked on recv(result of a Process) for " in last[0] else None
        text = _wait_for(blocked_text, lambda: f"the head blocked in ember ps's text ({last})")
        assert "channel" not in text, text
        # boss met GS first from its executor's thread, where Python sets
        # no signal handler: its stacks are dumped all the same (every
        # thread's: the main one waiting for the result, the executor's)
        res = ember(xdg, "stacks", "boss")
        assert res.returncode == 0, res.stderr
        out = res.stdout.decode()
        assert f'prog.py", line {OWN_RESULT_LINE} in boss' in out, out
        assert "in _run_worker" in out and "(no stacks" not in out, out
        # after the dump boss's executor waits again: its reader waits in
        # slices too (executor._SLICE), so this look is taken again as well
        _wait_ps(xdg, "boss blocked on its executor's results again",
                 lambda by: by["boss"]["blocked_on"] == "recv(results of an Executor)",
                 key=_head_or_name)
    finally:
        _, err = _stop(run)
    assert b"SIGUSR2" not in err, err


# Unnamed processes: an ember.Process, an Executor's worker, idle, and two
# multiprocessing processes under the "ember" start method.
LABELS = """\
import multiprocessing as mp, time, ember

def work():
    time.sleep(3600)

class Worker(mp.get_context("ember").Process):
    def run(self):
        time.sleep(3600)

if __name__ == "__main__":
    p = ember.Process(target=work)
    p.start()
    ex = ember.Executor(max_workers=1)
    ex.submit(int, 1).result()
    mp.get_context("ember").Process(target=work, name="Cruncher").start()
    Worker().start()
    p.join()
"""


@pytest.mark.timeout(120)
def test_unnamed_processes_show_their_target_and_idle_workers_as_such(tmp_path, xdg):
    """Not a blank NAME: an unnamed Process shows as multiprocessing names
    it, with its target (``Process-1 (__main__.work)``); an Executor's
    worker waiting for tasks shows as an idle worker (it binds its slot
    itself: it never talks to GS); a multiprocessing process of the
    "ember" start method by multiprocessing's name for it and its target
    or its class's run, not by the method's child code."""
    run = _start(tmp_path, xdg, LABELS)
    try:
        by = _wait_ps(xdg, "the worker to idle and both mp processes",
                      lambda by: len(by) == 5 and any(r["status"].startswith("idle")
                                                      for r in by.values()),
                      key=lambda r, rows: r["label"])
        assert set(by) == {None, "Process-1 (__main__.work)", "Process-2 (Executor worker)",
                           "Cruncher (__main__.work)", "Worker-2 (__main__.Worker.run)"}, by
        worker = by["Process-2 (Executor worker)"]
        assert worker["status"] == "idle (an Executor's worker waiting for tasks)"
        assert worker["blocked_on"] == "recv(tasks of an Executor)" and worker["name"] is None
        # The idle worker waits in slices of a second (it checks that its
        # parent lives between them): a look that lands between two slices,
        # which a loaded machine can stretch, sees it running.  Each look is
        # taken again until it lands inside a wait.
        last = {}

        def ps_text():
            text = last["ps"] = ember(xdg, "ps").stdout.decode()
            line = next((ln for ln in text.splitlines() if "Process-2 (Executor worker)" in ln),
                        "")
            return text if "idle (an Executor's worker waiting for tasks) for " in line else None
        text = _wait_for(ps_text, lambda: f"ember ps to show the worker idle: {last['ps']}",
                         timeout=30)
        assert " Process-1 (__main__.work) " in text, text
        head = (f"=== process {worker['p_uid']} Process-2 (Executor worker) "
                f"(pid {worker['pid']}): idle (an Executor's worker waiting for tasks)\n")

        def stacks():
            out = last["stacks"] = ember(xdg, "stacks", str(worker["p_uid"])).stdout.decode()
            return out if out.startswith(head) else None
        out = _wait_for(stacks, lambda: f"ember stacks to show the worker idle: {last['stacks']}",
                        timeout=30)
        assert "in _worker_main" in out, out
    finally:
        _stop(run)


ODD_NAMES = """\
import multiprocessing as mp, time, ember

def work():
    time.sleep(3600)

if __name__ == "__main__":
    ctx = mp.get_context("ember")
    for name in ("evil\\nFAKE 99 line", "\\x1b[31mred"):
        ctx.Process(target=work, name=name, daemon=True).start()
    time.sleep(3600)
"""


@pytest.mark.timeout(120)
def test_ps_shows_control_characters_of_a_label_escaped(tmp_path, xdg):
    """A multiprocessing name (any str) with a newline or an escape
    sequence in it is shown escaped by `ember ps`, one line per process:
    it forged a line of the table, or wrote to the terminal."""
    run = _start(tmp_path, xdg, ODD_NAMES)
    try:
        _wait_ps(xdg, "both mp processes", lambda by: len(by) == 3,
                 key=lambda r, rows: r["label"])
        lines = ember(xdg, "ps").stdout.decode().splitlines()
        assert len(lines) == 4 and not any("\x1b" in ln for ln in lines), lines
        assert any(" evil\\nFAKE 99 line (__main__.work) " in ln for ln in lines), lines
        assert any(" \\x1b[31mred (__main__.work) " in ln for ln in lines), lines
    finally:
        _stop(run)


# Three processes without stacks, each for its own reason.
NO_STACKS = """\
import sys
from ember.globalservices import process

OWN = '''
import signal
signal.signal(signal.SIGUSR2, lambda *a: None)      # its own, before it binds
from ember.channels_c import Channel
from ember.globalservices import channel
Channel.attach(channel.create(None, "own_in").sdesc).recv()
'''
STUCK = '''
import ctypes
from ember.globalservices import channel
channel.create(None, "stuck_up")
libc = ctypes.CDLL(None)
mutex = ctypes.create_string_buffer(64)               # PTHREAD_MUTEX_INITIALIZER
libc.pthread_mutex_lock(mutex)
libc.pthread_mutex_lock(mutex)                        # never returns, never checks signals
'''
process.create("/bin/sleep", ".", ["3600"], user_name="sleeper")
process.create(sys.executable, ".", ["-c", OWN], user_name="own")
process.create(sys.executable, ".", ["-c", STUCK], user_name="stuck")
process.join("sleeper")
"""


@pytest.mark.timeout(120)
def test_stacks_says_why_a_process_has_none(tmp_path, xdg):
    """Not one catch-all line: a process without stacks is shown with the
    reason (not a Python process or not bound yet; the program's own
    SIGUSR2 handler; no answer within --timeout), in --json too."""
    run = _start(tmp_path, xdg, NO_STACKS)
    try:
        def ready(by):
            return all(n in by for n in ("sleeper", "own", "stuck")) and \
                by["own"]["blocked_on"] == 'recv("own_in")' and \
                by["stuck"]["status"] == "sleeping" and \
                any(c["name"] == "stuck_up" for c in ember_json(xdg, "channels"))
        by = _wait_ps(xdg, "own blocked and stuck in its mutex", ready)
        st = {s["name"]: s for s in ember_json(xdg, "stacks", "--timeout", "0.5",
                                                "sleeper", "own", "stuck")}
        assert {n: (s["stacks"], s["no_stacks"]) for n, s in st.items()} == {
            "sleeper": (None, "it does not catch SIGUSR2: not a Python process, or it has not "
                              "bound its process slot yet (at its first contact with global "
                              "services)"),
            "own": (None, "it catches SIGUSR2 but has no stacks file: the program's own handler "
                          "(ember installs none over it)"),
            "stuck": (None, "it did not answer within 0.5 s (its main thread in C code that "
                            "does not check for signals; --timeout waits longer)")}
        res = ember(xdg, "stacks", "--timeout", "0.5", "own")
        assert res.stdout.decode() == (
            f"=== process {by['own']['p_uid']} 'own' (pid {by['own']['pid']}): "
            f"blocked on recv(\"own_in\")\n"
            "  (no stacks: it catches SIGUSR2 but has no stacks file: the program's own handler "
            "(ember installs none over it))\n\n"), res
        assert os.path.exists(f"/proc/{by['stuck']['pid']}")      # signalled, not killed
    finally:
        _stop(run)


# concurrent.futures' ProcessPoolExecutor on the "ember" start method: two
# workers (each one's initializer waits for the other: both exist), idle.
POOL_EXECUTOR = """\
import concurrent.futures as cf, multiprocessing as mp, os, sys, time

if __name__ == "__main__":
    ctx = mp.get_context("ember")
    b = ctx.Barrier(2)
    ex = cf.ProcessPoolExecutor(2, mp_context=ctx, initializer=b.wait)
    print(sorted(ex.map(abs, [-1, -2])), flush=True)
    while not os.path.exists("go"):
        time.sleep(0.05)
    print(sorted(ex.map(abs, range(-20, 0))), flush=True)
    ex.shutdown()
"""


@pytest.mark.timeout(120)
def test_idle_workers_of_a_process_pool_executor_show_as_such(tmp_path, xdg):
    """A ProcessPoolExecutor's worker (ember.mp) waits for tasks on an OS
    pipe, which the C layer's records do not see: it showed as a
    'sleeping' 'Process-1 (ember.mp._child.main)', and a second idle
    worker as blocked on a Lock the first held.  Each shows as an idle
    worker of a ProcessPoolExecutor, named as multiprocessing names it,
    and tasks still reach them."""
    run = _start(tmp_path, xdg, POOL_EXECUTOR)
    try:
        workers = {"EmberProcess-1 (ProcessPoolExecutor worker)",
                   "EmberProcess-2 (ProcessPoolExecutor worker)"}
        by = _wait_ps(xdg, "both workers to idle",
                      lambda by: workers <= set(by) and
                      all(by[w]["status"].startswith("idle") for w in workers),
                      key=lambda r, rows: r["label"])
        assert set(by) == {None} | workers, by
        for w in workers:
            assert by[w]["status"] == "idle (a ProcessPoolExecutor's worker waiting for tasks)"
            assert by[w]["blocked_on"] == "recv(tasks of a ProcessPoolExecutor)"
            assert by[w]["name"] is None and by[w]["parent"] == by[None]["p_uid"]
        (tmp_path / "go").touch()
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, (out, err)
        assert out.decode().splitlines() == ["[1, 2]", str(list(range(1, 21)))], (out, err)
    finally:
        _stop(run)


def test_roles_in_c_uids():
    from ember import _roles
    from ember.globalservices._client import is_reply_c_uid
    for role, text in _roles.LABELS.items():
        u = _roles.c_uid(role)
        assert 0 < u < 1 << 64 and not is_reply_c_uid(u)
        assert _roles.label(u) == text
        assert _roles.c_uid(role) != u
    # a GS channel's, a reply channel's, a plain random one's: no role
    for u in (1, 5000, 1 << 63 | 1 << 62 | 0xEB7 << 44 | 2 << 56, None):
        assert _roles.label(u) is None
