"""The exit of an ember.Process learnt from the kernel (its pidfd), not from
GS: ember.objects.process._exit_status, and join() end to end."""
import os
import select
import signal

import pytest

import ember
from ember.globalservices import process as gproc
from ember.objects import process as P
from procs import kill

pytest_plugins = ["ember.testing"]
pytestmark = pytest.mark.timeout(90)


def _ended_child(code=None, sig=None):
    """A child of ours that has ended (a zombie), and a pidfd of it."""
    pid = os.fork()
    if pid == 0:
        if sig is not None:
            os.kill(os.getpid(), sig)
        os._exit(code)
    fd = os.pidfd_open(pid)
    select.select([fd], [], [], 30)
    return pid, fd


def _has_exit_info():
    """PIDFD_INFO_EXIT (Linux 6.15+): a reaped child's status stays with its pidfd."""
    pid, fd = _ended_child(0)
    os.waitpid(pid, 0)
    import fcntl
    buf = bytearray(64)
    buf[0] = P._PIDFD_INFO_EXIT
    try:
        fcntl.ioctl(fd, P._PIDFD_GET_INFO, buf, True)
        return bool(buf[0] & P._PIDFD_INFO_EXIT)
    except OSError:
        return False
    finally:
        os.close(fd)


@pytest.mark.parametrize("code, sig, want", [(0, None, 0), (3, None, 3), (None, signal.SIGKILL, -9),
                                             (None, signal.SIGTERM, -15)])
def test_exit_status_of_a_zombie_and_after_the_reap(code, sig, want):
    pid, fd = _ended_child(code, sig)
    try:
        assert P._exit_status(pid, fd) == want          # a zombie: /proc/PID/stat
        os.waitpid(pid, 0)
        got = P._exit_status(pid, fd)                   # reaped: from the pidfd, or unknown
        assert got == (want if _has_exit_info() else None)
    finally:
        os.close(fd)


def test_exit_status_needs_ptrace_read_access():
    status = b"Name:\tx\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n"
    assert P._ids_match(status, 1000, 100)
    assert P._ids_match(status, 0, 0)                   # root reads every field
    assert not P._ids_match(status, 1001, 100)          # the kernel would show 0
    assert not P._ids_match(status, 1000, 101)
    setuid = b"Uid:\t1000\t0\t0\t1000\nGid:\t100\t100\t100\t100\n"
    assert not P._ids_match(setuid, 1000, 100)
    assert not P._ids_match(b"Name:\tx\n", 1000, 100)   # no ids: not sure


def test_exit_status_of_a_zombie_checks_the_ids_unless_root(monkeypatch):
    # /proc/PID/stat's exit code is trusted only with ptrace-read access: a
    # reader that is not root reads the zombie's ids (/proc/PID/status) first.
    pid, fd = _ended_child(3)
    try:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1 if real else 1000)
        assert P._exit_status(pid, fd) is None          # not its ids: the code may be hidden
        monkeypatch.setattr(os, "geteuid", lambda: real)
        assert P._exit_status(pid, fd) == 3
    finally:
        os.waitpid(pid, 0)
        os.close(fd)


def test_exit_status_of_a_process_still_running_is_unknown():
    pid = os.fork()
    if pid == 0:
        import time
        time.sleep(30)
        os._exit(0)
    fd = os.pidfd_open(pid)
    try:
        assert P._exit_status(pid, fd) is None
    finally:
        kill(pid)
        os.close(fd)


def _exit(code):
    os._exit(code)


def test_join_learns_the_exit_from_the_kernel_and_gs_agrees(ember_runtime):
    """join() of a process that returned: exitcode 0 from the pidfd; GS
    hears of the same exit from the shepherd (its own join says 0 too).
    Failures and named processes still go through GS's join."""
    for _ in range(20):
        p = ember.Process(target=os.getpid)
        p.start()
        p.join()
        assert p.exitcode == 0 and p.result() == p.pid
        assert gproc.join(p.p_uid, timeout=30) == 0
        p.close()
    p = ember.Process(target=_exit, args=(3,))
    p.start()
    p.join()
    assert p.exitcode == 3
    assert gproc.query(p.p_uid).retval == 3             # learnt from GS: it knows already
    p.close()
    p = ember.Process(target=os.getpid, name=f"exit-status-{os.getpid()}")
    p.start()
    p.join()
    assert p.exitcode == 0
    # a named process is joined through GS: its name is free at once
    q = ember.Process(target=os.getpid, name=p.name)
    q.start()
    q.join()
    assert q.exitcode == 0
    p.close()
    q.close()
    k = ember.Process(target=signal.pause)
    k.start()
    k.kill()
    k.join()
    assert k.exitcode == -signal.SIGKILL
    with pytest.raises(ember.ProcessDied, match="SIGKILL"):
        k.result()
    k.close()


def test_mp_start_uses_the_running_resource_tracker_and_restarts_a_dead_one(tmp_path):
    """The "ember" method hands its children the resource tracker's fd
    without probing a tracker it knows runs (the probe wakes the tracker at
    every start), and still starts a new tracker when the old one died."""
    import subprocess
    import sys
    import textwrap

    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import os, signal, warnings
        from multiprocessing import resource_tracker
        from ember.mp.context import _tracker_fd

        rt = resource_tracker._resource_tracker
        fd = _tracker_fd()
        pid = rt._pid
        writes = []
        orig = os.write
        os.write = lambda f, b: writes.append(f) or orig(f, b)
        try:
            again = _tracker_fd()
        finally:
            os.write = orig
        print("alive", again == fd, rt._pid == pid, writes.count(fd))
        os.kill(pid, signal.SIGKILL)
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT) is None:
            pass
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # "resource_tracker: process died unexpectedly"
            new = _tracker_fd()
        print("restarted", rt._pid not in (None, pid), new == rt._fd)
        os.close(rt._fd)                          # the tracker exits at EOF
        os.waitpid(rt._pid, 0)
    """))
    res = subprocess.run([sys.executable, str(prog)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["alive True True 0", "restarted True True"], res.stdout
