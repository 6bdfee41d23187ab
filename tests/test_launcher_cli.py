"""`ember run` as the user meets it: signals to the whole job, stdin and the
terminal, what it says when the head leaves processes behind, names in ps,
EMBER_LOG, and the errors of the command line (issue 7)."""
import os
import pty
import select
import signal
import subprocess
import sys

import pytest

from ember._size import format_size, parse_size
from procs import join, kill
from test_runtime import ember, write

pytestmark = pytest.mark.timeout(90)


def start(tmp_path, prog, *extra, **kw):
    """`ember run` in a session (and process group) of its own, as a batch
    system or `timeout` starts a job."""
    return subprocess.Popen([sys.executable, "-m", "ember", "run", *extra, prog], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **kw)


def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


# ------------------------------------------------------------------ signals
_HANDLER = r"""
    import signal, sys, time
    def on(s, f):
        print("head got", signal.Signals(s).name, flush=True)
        sys.exit(40 + s)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on)
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_the_process_group_goes_to_the_head_alone(tmp_path, sig):
    p = start(tmp_path, write(tmp_path, _HANDLER))
    assert p.stdout.readline() == b"ready\n"
    os.killpg(p.pid, sig)                   # kill -SIG -PGID: launcher, GS and shepherd
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out, err) == (40 + sig, f"head got {sig.name}\n".encode(), b"")


@pytest.mark.timeout(60)
def test_sigterm_to_the_group_kills_a_default_head_with_143(tmp_path):
    p = start(tmp_path, write(tmp_path, """
        import time
        print("ready", flush=True)
        time.sleep(60)
    """))
    assert p.stdout.readline() == b"ready\n"
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, err) == (128 + signal.SIGTERM, b"")


# ------------------------------------------------------------ stdin, tty
@pytest.mark.timeout(60)
def test_head_reads_the_launchers_stdin_others_get_dev_null(tmp_path):
    prog = write(tmp_path, """
        import sys
        from ember.globalservices import process
        name = input("name? ")
        print("hello", name, flush=True)
        c = process.create(sys.executable, ".", ["-c", "import sys; print('child read', repr(sys.stdin.read()))"])
        assert process.join(c.p_uid) == 0
        print("rest", repr(sys.stdin.read()), flush=True)
    """)
    res = ember("run", prog, cwd=tmp_path, input=b"bob\nmore\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"name? hello bob\nchild read ''\nrest 'more\\n'\n"


def _read_until(fd, needle, buf):
    """Read the pty until ``needle`` appears (bounded by the test timeout)."""
    while needle not in buf:
        r, _, _ = select.select([fd], [], [], 30)
        assert r, f"no {needle!r} in {buf!r}"
        try:
            data = os.read(fd, 4096)
        except OSError:              # EIO: the other side is gone
            data = b""
        assert data, f"pty closed before {needle!r}: {buf!r}"
        buf += data
    return buf


@pytest.mark.timeout(60)
def test_repl_on_a_terminal(tmp_path):
    pid, fd = pty.fork()
    if pid == 0:                      # a session on the pty, as in a terminal
        try:
            os.chdir(tmp_path)
            os.execv(sys.executable, [sys.executable, "-m", "ember", "run",
                                      sys.executable, "-i", "-q"])
        finally:
            os._exit(127)
    try:
        os.write(fd, b"print(6 * 7)\n")
        buf = _read_until(fd, b"42", b"")
        os.write(fd, b"import os; print('foreground', os.tcgetpgrp(0) == os.getpgrp())\n")
        buf = _read_until(fd, b"foreground True", buf)
        os.write(fd, b"raise SystemExit(5)\n")
        assert join(pid) == 5, buf
    finally:
        kill(pid)
        os.close(fd)


# ------------------------------------------------ telling what happened
_LEAVES_CHILDREN = r"""
    import sys
    from ember.globalservices import process
    for n in ("squarer", "summer", ""):
        process.create(sys.executable, ".", ["-c", "import time; time.sleep(60)"], user_name=n)
    print("head done", flush=True)
"""


_LEAVES_A_HOST = r"""
    import ember
    class Registry:
        pass
    ember.serve(Registry(), name="registry")
    print("head done", flush=True)
"""


@pytest.mark.timeout(60)
def test_head_exiting_with_a_host_running_says_which_object_it_serves(tmp_path):
    # an unnamed process is listed by its label, as `ember ps` shows it (not its p_uid alone)
    res = ember("run", "--grace", "0.5", write(tmp_path, _LEAVES_A_HOST), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (b"ember: head exited; terminating 1 running process: "
            b"2 Process-1 (shared object 'registry': Registry)\n" in res.stderr), res.stderr


@pytest.mark.timeout(60)
def test_head_exiting_with_children_running_says_so(tmp_path):
    res = ember("run", "--grace", "0.5", write(tmp_path, _LEAVES_CHILDREN), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"head done\n"
    assert (b"ember: head exited; terminating 3 running processes: 2 'squarer', 3 'summer', 4\n"
            in res.stderr), res.stderr


@pytest.mark.timeout(60)
def test_no_death_reports(tmp_path):
    res = ember("run", "--no-death-reports", "--grace", "0.5", write(tmp_path, _LEAVES_CHILDREN),
                cwd=tmp_path)
    assert (res.returncode, res.stdout, res.stderr) == (0, b"head done\n", b"")


@pytest.mark.timeout(60)
def test_names_in_ps(tmp_path):
    p = start(tmp_path, write(tmp_path, """
        import os, time
        print(os.getppid(), flush=True)
        time.sleep(60)
    """), "--grace", "0.5")
    try:
        shepherd = int(p.stdout.readline())
        assert cmdline(p.pid).startswith("ember: launcher ") and cmdline(p.pid).endswith("prog.py")
        assert cmdline(shepherd) == "ember: shepherd node 0"
        with open(f"/proc/{p.pid}/task/{p.pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
        assert sorted(cmdline(k) for k in kids) == ["ember: global services",
                                                     "ember: shepherd node 0"]
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM


# ------------------------------------------------------------- EMBER_LOG
def test_unknown_log_level_is_refused(tmp_path):
    res = ember("run", write(tmp_path, "print('ran')"), cwd=tmp_path,
                env={**os.environ, "EMBER_LOG": "verbose"})
    assert (res.returncode, res.stdout, res.stderr) == (
        2, b"", b"ember: EMBER_LOG='verbose' is not a log level; "
                b"use one of debug, info, warning, error\n")


@pytest.mark.parametrize("name", ["EMBER_WB_BUSY_GRACE", "EMBER_PROMPT_MAX",
                                  "EMBER_CONTROL_SPIN"])
@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf", "nan"])
def test_a_bad_setting_in_seconds_is_refused(tmp_path, name, value):
    """(EMBER_CONTROL_SPIN may be 0, no spin; a bad one raised
    ValueError at the import of ember: "could not convert string to
    float: 'soon'", a traceback and exit 1.)"""
    res = ember("run", write(tmp_path, "print('ran')"), cwd=tmp_path,
                env={**os.environ, name: value})
    if name == "EMBER_CONTROL_SPIN" and value == "0":
        assert (res.returncode, res.stdout, res.stderr) == (0, b"ran\n", b"")
        return
    limit = ", 0 or above" if name == "EMBER_CONTROL_SPIN" else " above 0"
    assert (res.returncode, res.stdout, res.stderr.decode()) == (
        2, b"", f"ember: {name}={value!r} is not a number of seconds{limit}\n")


@pytest.mark.timeout(60)
def test_debug_log_shows_the_launchers_lifecycle(tmp_path):
    res = ember("run", write(tmp_path, "print('ran')"), cwd=tmp_path,
                env={**os.environ, "EMBER_LOG": "DEBUG"})
    assert res.returncode == 0, res.stderr
    err = res.stderr.decode()
    for line in ("ember launcher: INFO: infrastructure pool created (268435456 bytes)",
                 "ember launcher: INFO: global services and shepherd forked",
                 "ember launcher: INFO: head exited: 0",
                 "ember launcher: INFO: teardown",
                 "ember launcher: DEBUG: teardown: destroying the default pool"):
        assert line in err.splitlines(), err
    assert "ember launcher: INFO: head created: p_uid 1, pid " in err


# ------------------------------------------------------- command-line errors
def test_no_program(tmp_path):
    res = ember("run", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.decode().splitlines()[-1] == \
        "ember run: error: the following arguments are required: PROGRAM"


def test_missing_py_head_is_127(tmp_path):
    res = ember("run", "x.py", "arg", cwd=tmp_path)
    assert (res.returncode, res.stderr) == (127, b"ember: cannot run 'x.py': No such file\n")


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_bad_grace_is_refused(tmp_path, value):
    res = ember("run", "--grace", value, "x.py", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.decode().splitlines()[-1] == \
        f"ember run: error: argument --grace: must be a number of seconds >= 0, got '{value}'"


def test_pool_larger_than_dev_shm_is_refused(tmp_path):
    st = os.statvfs("/dev/shm")
    free = st.f_bavail * st.f_frsize
    res = ember("run", "--default-pool-size", "4P", "x.py", cwd=tmp_path)
    assert res.returncode == 2
    last = res.stderr.decode().splitlines()[-1]
    assert last.startswith("ember run: error: --default-pool-size 4P (4503599627370496 bytes) "
                           "is larger than the free space of /dev/shm ("), last
    # the free space is read again by the launcher: allow for other tests' use
    got = int(last.rsplit(", ", 1)[1].split()[0])
    assert abs(got - free) < free // 2, (got, free)


@pytest.mark.timeout(60)
def test_size_suffixes_on_the_command_line(tmp_path):
    res = ember("run", "--default-pool-size", "64MiB", "--inf-pool-size", "0.0625G",
                write(tmp_path, """
                    from ember.globalservices import pool
                    print(pool.default().size)
                """), cwd=tmp_path)
    assert (res.returncode, res.stdout) == (0, b"67108864\n"), res.stderr
    res = ember("run", "--default-pool-size", "1.5.G", "x.py", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.decode().splitlines()[-1].startswith(
        "ember run: error: argument --default-pool-size: not a size: '1.5.G' (use bytes or a suffix")


@pytest.mark.parametrize("text, value", [
    ("1", 1), ("4096", 4096), ("1K", 1024), ("1k", 1024), ("1KiB", 1024), ("2KB", 2048),
    ("64M", 64 << 20), ("64MiB", 64 << 20), ("1G", 1 << 30), ("10T", 10 << 40),
    ("1TiB", 1 << 40), ("1P", 1 << 50), ("1.5K", 1536), (".5K", 512), ("1.25G", 5 << 28),
    (" 3 M ", 3 << 20), ("123456789012345678901234567890", 123456789012345678901234567890),
    (1 << 40, 1 << 40),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text, message", [
    ("0", "size must be positive: '0'"),
    ("0.1K", "not a whole number of bytes: '0.1K'"),
    ("-1", "not a size: '-1' (use bytes or a suffix K, M, G, T, P (powers of 1024, "
           "also KiB, MiB, ...), e.g. 64M, 1G, 1.5T)"),
    ("1E", "not a size: '1E' (use bytes or a suffix K, M, G, T, P (powers of 1024, "
           "also KiB, MiB, ...), e.g. 64M, 1G, 1.5T)"),
    (True, "not a size: True"),
])
def test_parse_size_refuses(text, message):
    with pytest.raises(ValueError, match="^" + __import__("re").escape(message) + "$"):
        parse_size(text)


def test_format_size():
    assert [format_size(n) for n in (1, 1024, 1536, 1 << 30, 10 << 40, 1 << 50)] == \
        ["1B", "1K", "1.5K", "1G", "10T", "1P"]


def test_fast_path_parses_what_argparse_parses():
    from ember.launcher import cli
    run = cli._parser().run_parser
    dests = {a.dest for a in run._actions} - {"help"}
    for argv in (["run", "p.py"], ["run", "--grace", "2", "--label=name", "--no-death-reports",
                                   "--default-pool-size", "64M", "--inf-pool-size=1G", "p.py",
                                   "--grace", "x", "-h"]):
        fast = vars(cli._fast_run_args(argv))
        slow = vars(cli._parser().parse_args(argv))
        assert fast == slow and set(fast) == dests | {"command"}, (fast, slow)
    for argv in (["run"], ["run", "--gra", "1", "p"], ["run", "--grace", "-1", "p"], ["run", "-h"],
                 ["run", "--label", "x", "p"], ["run", "--", "p"], ["cleanup"], ["--version"]):
        assert cli._fast_run_args(argv) is None, argv


@pytest.mark.timeout(60)
def test_py_head_reads_the_terminal(tmp_path):
    write(tmp_path, """
        name = input("name? ")
        print("hello", name)
    """, name="ask.py")
    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.chdir(tmp_path)
            os.execv(sys.executable, [sys.executable, "-m", "ember", "run", "ask.py"])
        finally:
            os._exit(127)
    try:
        buf = _read_until(fd, b"name? ", b"")      # the prompt shows before the answer
        os.write(fd, b"bob\n")
        buf = _read_until(fd, b"hello bob", buf)
        assert join(pid) == 0, buf
    finally:
        kill(pid)
        os.close(fd)
