"""The GS event log (globalservices/events.py) as a state machine, and
`ember events --follow` end to end."""
import json
import os
import signal
import subprocess
import sys

import pytest

from ember import messages as m

from test_gs_state import Harness
from test_inspect import _env, _start, _stop, _wait_for, xdg  # noqa: F401 (a fixture)


def _events(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_gs_writes_the_event_log(tmp_path):
    h = Harness()
    try:
        h.gs.events_path = str(tmp_path / "r.events")
        a, b = h.create("a"), h.create()
        d = h.ok(h.req(m.ChannelCreate, None, "jobs", {"ref_count": True}, False, p_uid=a))
        h.ok(h.req(m.ChannelJoin, "jobs", None, p_uid=b))
        h.exit(a, -signal.SIGSEGV)
        h.exit(b, 3)                 # the last holder: the channel goes
        ev = _events(tmp_path / "r.events")
        for e in ev:
            assert isinstance(e.pop("t"), float)
        pid_a, pid_b = ev[0]["pid"], ev[1]["pid"]
        assert ev == [
            {"event": "process.started", "p_uid": a, "name": "a", "pid": pid_a,
             "exe": "/bin/true", "parent": 0},
            {"event": "process.started", "p_uid": b, "name": None, "pid": pid_b,
             "exe": "/bin/true", "parent": 0},
            {"event": "channel.created", "c_uid": d["c_uid"], "name": "jobs", "m_uid": 1,
             "capacity": d["capacity"], "by": a},
            {"event": "process.exited", "p_uid": a, "name": "a", "pid": pid_a, "exit_code": -11,
             "signal": "SIGSEGV"},
            {"event": "channel.holder_died", "c_uid": d["c_uid"], "name": "jobs", "p_uid": a,
             "refs": 1},
            {"event": "process.exited", "p_uid": b, "name": None, "pid": pid_b, "exit_code": 3},
            {"event": "channel.holder_died", "c_uid": d["c_uid"], "name": "jobs", "p_uid": b,
             "refs": 1},
            {"event": "channel.destroyed", "c_uid": d["c_uid"], "name": "jobs"},
        ]
    finally:
        h.gs._close_events()
        h.close()


def test_an_unwritable_event_log_switches_off_and_never_fails_a_request(tmp_path):
    h = Harness()
    try:
        h.gs.events_path = str(tmp_path / "no-such-dir" / "r.events")
        p = h.create("x")
        assert h.gs.events_path is None and p in h.gs.procs
    finally:
        h.close()


FOLLOWED = """\
import sys
from ember.globalservices import channel
channel.create(None, "first")
sys.stdin.readline()                 # the test says when
channel.create(None, "second")
"""


@pytest.mark.timeout(120)
def test_events_follow_until_the_runtime_ends(tmp_path, xdg):
    run = _start(tmp_path, xdg, FOLLOWED, stdin=subprocess.PIPE)
    follow = None
    try:
        def created():
            res = subprocess.run([sys.executable, "-m", "ember", "channels", "--json"],
                                 capture_output=True, env=_env(xdg))
            return res.returncode == 0 and json.loads(res.stdout)
        _wait_for(created, "the first channel")
        follow = subprocess.Popen([sys.executable, "-m", "ember", "events", "--follow", "--json"],
                                  env=_env(xdg), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = []
        while not any(e.get("name") == "first" for e in seen):
            seen.append(json.loads(follow.stdout.readline()))
        run.stdin.write(b"go\n")
        run.stdin.close()
        run.stdin = None
        out, err = follow.communicate(timeout=60)       # ends with the runtime
        assert follow.returncode == 0, err
        seen += [json.loads(line) for line in out.decode().splitlines()]
        kinds = [(e["event"], e.get("name")) for e in seen]
        assert ("channel.created", "second") in kinds
        assert kinds[-1] == ("runtime.ended", None)
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
            follow.communicate()
        _stop(run)


@pytest.mark.timeout(60)
def test_events_skips_lines_that_are_not_event_records():
    """A finished runtime's log with garbage in it: `ember events` prints the
    records it can read and skips the rest, never a traceback."""
    from ember.launcher.inspect import events_path
    path = events_path("r1-badlog00")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w") as f:
        f.write('{"t": 1.5, "event": "runtime.started", "runtime": "r1-badlog00"}\n'
                '123\n[]\n{"event": 7}\n{"t": "x", "event": "a"}\nnot json\n'
                '{"t": 2.5, "event": "runtime.ended"}\n')
    try:
        res = subprocess.run([sys.executable, "-m", "ember", "events", "--address", "r1-badlog00",
                              "--json"], capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(path)
    assert res.returncode == 0, res.stderr
    assert [json.loads(ln)["event"] for ln in res.stdout.splitlines()] == [
        "runtime.started", "runtime.ended"]


@pytest.mark.timeout(90)
def test_events_after_the_run_names_the_finished_log(tmp_path, xdg):
    """`ember events` once the run is over (what happened, after a crash):
    no runtime runs, and the message names the newest finished run's log
    and the command that prints it, not "start one"."""
    run = _start(tmp_path, xdg, "print('done')\n")
    out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    (rid,) = [n[:-len(".events")] for n in os.listdir(xdg / "ember") if n.endswith(".events")]
    res = subprocess.run([sys.executable, "-m", "ember", "events"], capture_output=True,
                         text=True, env=_env(xdg), timeout=60)
    assert res.returncode == 1
    assert res.stderr == (f"ember events: no running ember runtime found for this user; the "
                          f"newest finished run's log is {rid}'s: ember events --address "
                          f"{rid}\n"), res.stderr
    res = subprocess.run([sys.executable, "-m", "ember", "events", "--address", rid],
                         capture_output=True, text=True, env=_env(xdg), timeout=60)
    assert res.returncode == 0 and res.stdout.splitlines()[-1].endswith(" runtime.ended"), res
