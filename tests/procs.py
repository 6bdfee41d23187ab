"""Forked helper processes for the multi-process tests (and benchmarks).

    pid = fork(fn, arg)        # fn(arg) in a child that never returns into pytest
    assert join(pid) == 0      # its exit code (negative: killed by that signal)
    status = reap(pid)         # or its raw wait status (os.WIFSIGNALED & co.)
    kill(pid)                  # in a finally: SIGKILL and reap it if it is still ours
"""
import json
import os
import subprocess
import signal
import sys
import time
import traceback


def fork(fn, *args):
    """Run fn(*args) in a forked child; it exits 0 on success, 1 (with the
    traceback on stderr) if fn raised."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def reap(pid, timeout=30.0):
    """Wait for child ``pid`` and return its raw wait status.  After
    ``timeout`` seconds it is SIGKILLed and AssertionError raised;
    ``timeout=None`` waits without limit."""
    if timeout is None:
        return os.waitpid(pid, 0)[1]
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not exit within {timeout} s")
        time.sleep(0.005)


def join(pid, timeout=30.0):
    """As reap, but return the exit code (os.waitstatus_to_exitcode)."""
    return os.waitstatus_to_exitcode(reap(pid, timeout))


def kill(pid):
    """SIGKILL child ``pid`` and reap it; nothing if it was reaped already
    (or is no child of ours): for a test's ``finally:``, so that no child
    outlives the test whatever failed, without a second kill of a pid that
    was reaped (and may have been reused) meanwhile."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return                              # it had exited: reaped now
    except ChildProcessError:
        return
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def runtime_of(launcher_pid, deadline):
    """The id of the runtime whose launcher is ``launcher_pid`` (``ember ls
    --json``), waiting until the monotonic ``deadline``."""
    while time.monotonic() < deadline:
        r = subprocess.run([sys.executable, "-m", "ember", "ls", "--json"], capture_output=True,
                           text=True, timeout=60)
        for rt in json.loads(r.stdout or "[]"):
            if rt.get("pid") == launcher_pid:
                return rt["id"]
        time.sleep(0.2)
    raise AssertionError(f"no runtime of launcher {launcher_pid} in `ember ls`")
