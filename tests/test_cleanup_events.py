"""`ember cleanup --events-age DURATION` (issue 14): old event logs of
runtimes that are no longer running are removed; a running runtime's log,
and recent logs, are kept.  Every test uses a private runtime directory
($XDG_RUNTIME_DIR) and `--events-only`, so nothing of the parallel suites
(and nothing in /dev/shm) is touched."""
import contextlib
import os
import subprocess
import sys
import time

import pytest

from ember.launcher.cli import parse_duration
from test_inspect import _env, _start, _wait_for, xdg  # noqa: F401 (a fixture)

pytestmark = pytest.mark.timeout(90)

TAG = os.environ["EMBER_SEGMENT_TAG"]
DAY = 86400


def ember(xdg, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "ember", *args], capture_output=True,
                          timeout=timeout, env=_env(xdg), text=True)


@pytest.fixture
def rdir(xdg):
    d = xdg / "ember"
    d.mkdir(mode=0o700)
    return d


@contextlib.contextmanager
def running(tmp_path, rdir):
    """A runtime of ``rdir`` running (its head waits for stdin to close),
    and its event log; it must end with exit code 0."""
    before = {p.name for p in rdir.iterdir()}
    run = _start(tmp_path, rdir.parent, """
        import sys
        print("ready", flush=True)
        sys.stdin.read()
    """, stdin=subprocess.PIPE)
    try:
        assert run.stdout.readline() == b"ready\n"
        # GS writes its log's first lines once its input is idle (a
        # millisecond or so behind): the head may print before the file exists
        (events,) = _wait_for(lambda: [p for p in rdir.iterdir() if p.name.endswith(".events")
                                       and p.name not in before],
                              "the event log", timeout=30)
        yield events
    finally:
        run.communicate(b"", timeout=60)
    assert run.returncode == 0


def log(d, rid, age):
    p = d / f"{rid}.events"
    p.write_text('{"t": 1, "event": "runtime.started"}\n')
    t = time.time() - age
    os.utime(p, (t, t))
    return p


def test_parse_duration():
    assert parse_duration("7d") == 7 * DAY
    assert parse_duration("12h") == 12 * 3600
    assert parse_duration("1.5m") == 90
    assert parse_duration("2w") == 14 * DAY
    assert parse_duration("45") == 45
    assert parse_duration("0") == 0
    for bad in ("", "x", "-1d", "3y", "1 d s"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_old_logs_of_finished_runtimes_are_removed(rdir):
    old = log(rdir, f"r1-{TAG}old", 8 * DAY)
    recent = log(rdir, f"r1-{TAG}new", 3600)
    other = rdir / f"r1-{TAG}x.addr"              # not an event log: never touched
    other.write_text("x")
    t = time.time() - 30 * DAY
    os.utime(other, (t, t))
    # a launcher killed with -9 leaves its lock file, held by nobody: not running
    lock = f"/dev/shm/ember.r1-{TAG}killed.lock"
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    try:
        killed = log(rdir, f"r1-{TAG}killed", 9 * DAY)
        res = ember(rdir.parent, "cleanup", "--events-only", "--dry-run")
        assert res.returncode == 0, res.stderr
        assert f"would remove {old}" in res.stdout and f"would remove {killed}" in res.stdout
        assert str(recent) not in res.stdout and old.exists()
        res = ember(rdir.parent, "cleanup", "--events-only")           # default: 7 days
        assert res.returncode == 0, res.stderr
        assert f"removed {old}" in res.stdout and f"removed {killed}" in res.stdout
        assert not old.exists() and not killed.exists()
        assert recent.exists() and other.exists() and os.path.exists(lock)
        res = ember(rdir.parent, "cleanup", "--events-only", "--events-age", "30m")
        assert res.returncode == 0, res.stderr
        assert f"removed {recent}" in res.stdout and not recent.exists() and other.exists()
    finally:
        os.unlink(lock)


def test_a_running_runtimes_log_is_kept(rdir, tmp_path):
    with running(tmp_path, rdir) as live:
        t = time.time() - 30 * DAY
        os.utime(live, (t, t))
        res = ember(rdir.parent, "cleanup", "--events-only", "--events-age", "0")
        assert res.returncode == 0, res.stderr
        assert live.exists() and "removed" not in res.stdout
    # finished now: age 0 removes it
    res = ember(rdir.parent, "cleanup", "--events-only", "--events-age", "0")
    assert res.returncode == 0 and f"removed {live}" in res.stdout
    assert not live.exists()


def test_bad_duration_is_a_usage_error(rdir):
    res = ember(rdir.parent, "cleanup", "--events-only", "--events-age", "soon")
    assert res.returncode == 2 and "not a duration: 'soon'" in res.stderr


def test_count_and_size_caps_keep_the_newest(rdir):
    """Retention is capped by count and total size as well as by age: a day
    of test suites or benchmarks makes hundreds of recent logs."""
    logs = [log(rdir, f"r1-{TAG}n{i}", 60 * (10 - i)) for i in range(10)]   # n9 newest
    for p in logs:
        p.write_bytes(b"x" * 1000)
    for i, p in enumerate(logs):
        t = time.time() - 60 * (10 - i)
        os.utime(p, (t, t))
    res = ember(rdir.parent, "cleanup", "--events-only", "--events-keep", "4", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.split()[2::3]) == sorted(str(p) for p in logs[:6])
    assert all(p.exists() for p in logs)
    res = ember(rdir.parent, "cleanup", "--events-only", "--events-keep", "4")
    assert res.returncode == 0, res.stderr
    assert [p.exists() for p in logs] == [False] * 6 + [True] * 4
    # 2500 bytes in all: the two newest (1000 each) fit, the third does not
    res = ember(rdir.parent, "cleanup", "--events-only", "--events-max-size", "2500")
    assert res.returncode == 0, res.stderr
    assert [p.exists() for p in logs[6:]] == [False, False, True, True]
    assert f"removed {logs[7]}" in res.stdout
    # the defaults leave these two alone (200 logs, 64M)
    res = ember(rdir.parent, "cleanup", "--events-only")
    assert res.returncode == 0 and "removed" not in res.stdout
    assert logs[8].exists() and logs[9].exists()


def test_a_running_runtimes_log_is_outside_the_caps(rdir, tmp_path):
    with running(tmp_path, rdir) as live:
        done = log(rdir, f"r1-{TAG}done", 60)
        res = ember(rdir.parent, "cleanup", "--events-only", "--events-keep", "0")
        assert res.returncode == 0, res.stderr
        assert live.exists() and not done.exists()
        assert res.stdout == f"removed {done}\n"


@pytest.mark.parametrize("opt,bad,why", [("--events-keep", "-1", "not a count: '-1'"),
                                         ("--events-keep", "many", "not a count: 'many'"),
                                         ("--events-max-size", "0", "size must be positive"),
                                         ("--events-max-size", "lots", "not a size: 'lots'")])
def test_bad_caps_are_usage_errors(rdir, opt, bad, why):
    res = ember(rdir.parent, "cleanup", "--events-only", opt, bad)
    assert res.returncode == 2 and why in res.stderr, res.stderr


def test_cleanup_help_names_the_caps():
    res = subprocess.run([sys.executable, "-m", "ember", "cleanup", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "--events-keep N" in res.stdout and "--events-max-size SIZE" in res.stdout
    assert "(default: 200)" in res.stdout and "(default: 64M)" in res.stdout


def test_a_runtime_start_prunes_a_crowded_directory(rdir, tmp_path):
    """Nothing but `ember cleanup` removed event logs: a machine that runs
    many short runtimes gathered thousands.  A runtime's start whose
    directory holds more than EVENTS_PRUNE_AT logs removes what `ember
    cleanup --events-only` would by default (here: beyond the 200 newest
    finished ones); the running runtime's own log stays."""
    from ember.globalservices.server import EVENTS_PRUNE_AT
    from ember.launcher.cli import DEFAULT_EVENTS_KEEP
    n = EVENTS_PRUNE_AT + 5
    now = time.time()
    for i in range(n):                      # i = n - 1 the newest
        p = rdir / f"r1-{TAG}crowd{i}.events"
        p.write_text("{}\n")
        os.utime(p, (now - 3600 - (n - i), now - 3600 - (n - i)))
    with running(tmp_path, rdir) as live:
        def left():
            names = [p.name for p in rdir.iterdir() if p.name.endswith(".events")]
            return names if len(names) == DEFAULT_EVENTS_KEEP + 1 else None
        names = _wait_for(left, "the prune", timeout=30)
        assert live.name in names
        assert f"r1-{TAG}crowd{n - 1}.events" in names          # the newest kept
        assert f"r1-{TAG}crowd{n - DEFAULT_EVENTS_KEEP}.events" in names
        assert f"r1-{TAG}crowd{n - DEFAULT_EVENTS_KEEP - 1}.events" not in names


def test_a_runtime_start_leaves_a_directory_below_the_mark(rdir, tmp_path):
    """Below EVENTS_PRUNE_AT logs a start removes nothing, however old."""
    old = [log(rdir, f"r1-{TAG}old{i}", 30 * DAY) for i in range(3)]
    with running(tmp_path, rdir) as live:
        assert live.exists() and all(p.exists() for p in old)
