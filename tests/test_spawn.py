"""The shepherd's C spawn helper (ember.shepherd._spawn)."""
import ctypes
import errno
import os
import select
import signal
import sys
import threading

import pytest

from ember.shepherd._spawn import set_pdeathsig, spawn, which

ENV = {"PATH": "/usr/bin:/bin"}


def _wait(pid, timeout=10.0):
    """Wait for ``pid`` through its pidfd (bounded) and return its exit code."""
    fd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        assert ready, f"pid {pid} did not exit within {timeout} s"
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _run(exe, argv, env=ENV, cwd=None, stdin_fd=-1):
    """Spawn with stdout+stderr on a pipe; return (exit code, output)."""
    r, w = os.pipe()
    try:
        pid = spawn(exe, argv, env, cwd, stdin_fd, w, w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    return _wait(pid), b"".join(chunks)


@pytest.mark.timeout(30)
def test_exit_code():
    assert _run("/bin/sh", ["sh", "-c", "exit 7"]) == (7, b"")
    assert _run("/bin/true", ["true"]) == (0, b"")


@pytest.mark.timeout(30)
def test_env_is_exactly_the_given_one():
    code, out = _run("/usr/bin/env", ["env"], {"A": "1", "B": "x y", "EMPTY": ""})
    assert code == 0
    assert out == b"A=1\nB=x y\nEMPTY=\n"
    code, out = _run("/usr/bin/env", ["env"], [b"K=\xff\xfe", "L=2"])
    assert out == b"K=\xff\xfe\nL=2\n"


@pytest.mark.timeout(30)
def test_argv_binary_safe():
    code, out = _run("/bin/sh", ["sh", "-c", 'printf "%s|" "$@"', "sh", "a b", "", b"\xff"])
    assert (code, out) == (0, b"a b||\xff|")


@pytest.mark.timeout(30)
def test_cwd(tmp_path):
    assert _run("/bin/pwd", ["pwd"], cwd=str(tmp_path)) == (0, f"{tmp_path}\n".encode())


@pytest.mark.timeout(30)
def test_relative_exe_is_relative_to_cwd(tmp_path):
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    assert _run("./hello.sh", ["hello"], cwd=str(tmp_path)) == (0, b"hello\n")


@pytest.mark.timeout(30)
def test_stdin(tmp_path):
    r, w = os.pipe()
    os.write(w, b"from stdin\n")
    os.close(w)
    try:
        assert _run("/bin/cat", ["cat"], stdin_fd=r) == (0, b"from stdin\n")
    finally:
        os.close(r)


@pytest.mark.timeout(30)
def test_path_lookup_uses_the_given_env():
    assert _run("env", ["env"], {"PATH": "/nonexistent:/usr/bin:/bin"}) == (
        0, b"PATH=/nonexistent:/usr/bin:/bin\n")
    with pytest.raises(OSError) as info:
        spawn("env", ["env"], {"PATH": "/nonexistent"})
    assert info.value.errno == errno.ENOENT
    assert str(info.value) == "[Errno 2] cannot execute 'env' (searched PATH)"


def test_which(tmp_path):
    (tmp_path / "noexec").write_text("")
    assert which("/abs/x", None) == b"/abs/x"
    assert which("sh", "/nonexistent:/bin") == b"/bin/sh"
    with pytest.raises(PermissionError, match=r"^\[Errno 13\] cannot execute 'noexec' \(searched PATH\)$"):
        which("noexec", str(tmp_path))


@pytest.mark.timeout(30)
def test_missing_exe():
    with pytest.raises(FileNotFoundError) as info:
        spawn("/nonexistent/prog", ["prog"], ENV)
    assert info.value.errno == errno.ENOENT
    assert info.value.strerror == "cannot execute '/nonexistent/prog'"
    assert str(info.value) == "[Errno 2] cannot execute '/nonexistent/prog'"


@pytest.mark.timeout(30)
def test_not_executable(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("not a program\n")
    with pytest.raises(PermissionError) as info:
        spawn(str(f), ["data"], ENV)
    assert info.value.errno == errno.EACCES
    assert info.value.strerror == f"cannot execute '{f}'"
    with pytest.raises(PermissionError) as info:
        spawn(str(tmp_path), ["dir"], ENV)
    assert info.value.strerror == f"cannot execute '{tmp_path}'"


@pytest.mark.timeout(30)
def test_bad_cwd(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        spawn("/bin/true", ["true"], ENV, "/nonexistent/dir")
    assert info.value.errno == errno.ENOENT
    assert str(info.value) == "[Errno 2] bad run_dir '/nonexistent/dir'"
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(NotADirectoryError) as info:
        spawn("/bin/true", ["true"], ENV, str(f))
    assert info.value.errno == errno.ENOTDIR
    assert info.value.strerror == f"bad run_dir '{f}'"


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^argument contains a NUL byte: b'a\\x00b'$"):
        spawn("/bin/true", ["true", "a\0b"], ENV)
    with pytest.raises(ValueError, match=r"^bad env name 'A=B'$"):
        spawn("/bin/true", ["true"], {"A=B": "1"})
    with pytest.raises(TypeError, match=r"^argument must be str or bytes, not int$"):
        spawn("/bin/true", ["true", 3], ENV)


@pytest.mark.timeout(30)
def test_signals_reset_and_fds_closed():
    # Python ignores SIGPIPE; block SIGUSR1 in this thread and leave an
    # inheritable fd open: the child must see none of it.
    fd = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(fd, True)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        code, out = _run("/bin/sh", ["sh", "-c", "grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/$$/fd"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        os.close(fd)
    assert code == 0
    lines = out.decode().split()
    assert lines[:4] == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
    # The shell's own fds: 0, 1, 2 (+ maybe one it opened itself, >= 10).
    assert sorted(int(x) for x in lines[4:] if int(x) < 10) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_child_has_pdeathsig_sigkill():
    prog = ("import ctypes; v = ctypes.c_int(-1); "
            "ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); print(v.value)")
    code, out = _run(sys.executable, ["python", "-c", prog], dict(os.environ))
    assert (code, out) == (0, b"%d\n" % signal.SIGKILL)


@pytest.mark.timeout(30)
def test_child_dies_with_the_spawning_thread():
    box = {}

    def spawner():
        box["pid"] = spawn("/bin/sleep", ["sleep", "60"], ENV)

    t = threading.Thread(target=spawner)
    t.start()
    t.join()
    # The spawning thread exited: PR_SET_PDEATHSIG(SIGKILL) fired.
    assert _wait(box["pid"]) == -signal.SIGKILL


@pytest.mark.timeout(30)
def test_child_survives_while_the_spawning_thread_lives():
    pid = spawn("/bin/sleep", ["sleep", "60"], ENV)
    fd = os.pidfd_open(pid)
    try:
        assert select.select([fd], [], [], 0.2)[0] == []
        signal.pidfd_send_signal(fd, signal.SIGTERM)
    finally:
        os.close(fd)
    assert _wait(pid) == -signal.SIGTERM


@pytest.mark.timeout(30)
def test_set_pdeathsig():
    libc = ctypes.CDLL(None, use_errno=True)
    PR_GET_PDEATHSIG = 2
    pid = os.fork()
    if pid == 0:  # child: report the pdeathsig through the exit code
        code = 1
        try:
            set_pdeathsig(signal.SIGUSR2)
            v = ctypes.c_int(-1)
            libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(v), 0, 0, 0)
            code = 0 if v.value == signal.SIGUSR2 else 2
        finally:
            os._exit(code)
    assert _wait(pid) == 0
    with pytest.raises(OSError, match=r"^\[Errno 22\] prctl\(PR_SET_PDEATHSIG, 999\) failed: Invalid argument$"):
        set_pdeathsig(999)


@pytest.mark.timeout(60)
def test_many_spawns_leave_no_zombie_or_fd():
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        with pytest.raises(FileNotFoundError):
            spawn("/nonexistent", ["x"], ENV)
        assert _wait(spawn("/bin/true", ["true"], ENV)) == 0
    assert len(os.listdir("/proc/self/fd")) == fds


@pytest.mark.timeout(30)
def test_child_soft_nofile_limit():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    r, w = os.pipe()
    code = "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    try:
        for want, expect in ((-1, soft), (37, 37),
                             (2 ** 62, hard if hard != resource.RLIM_INFINITY else 2 ** 62)):
            pid = spawn(sys.executable, [sys.executable, "-c", code], os.environ, None, -1, w, -1,
                        nofile_soft=want)
            assert os.waitpid(pid, 0)[1] == 0
            assert int(os.read(r, 100)) == expect, want
    finally:
        os.close(r)
        os.close(w)
