"""Forked helper processes for the multi-process tests (and benchmarks).

    pid = fork(fn, arg)        # fn(arg) in a child that never returns into pytest
    assert join(pid) == 0      # its exit code (negative: killed by that signal)
    status = reap(pid)         # or its raw wait status (os.WIFSIGNALED & co.)
    kill(pid)                  # in a finally: SIGKILL and reap it if it is still ours

and what /proc says of any process (also imported by the programs some
tests run, with this folder put on their sys.path):

    state, ppid, comm = stat(pid)      # OSError once it is gone
    alive(pid)                         # exists and is no zombie
    assert wait_gone(pids) == []       # those still alive after the wait
    assert stop(pids) == []            # SIGSTOPped, and stopped once it returns
    children(ppid, comm="ember-spare") # its children (named so)
    template_of(shepherd_pid)          # the shepherd's warm template
    templates(runtime_id)              # a runtime's templates and their clones
    wait_children(ppid, "ember-spare", 2)   # at least two live ones, waiting for them
    wait_sleeping_on_shm(pid, tid)     # its thread sleeps in a channel's, pool's or sync wait
    t = once_sleeping_on_shm(fn, *args) # fn(*args) in a thread once this thread sleeps so
    for address, name, data in readable_memory(pid): ...   # what its memory holds
"""
import json
import os
import subprocess
import signal
import sys
import threading
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


def stat(pid):
    """(state, ppid, comm) of process ``pid`` from /proc/PID/stat; OSError
    if there is no such process."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rp = data.rfind(b")")
    fields = data[rp + 2:].split()
    return fields[0].decode(), int(fields[1]), data[data.find(b"(") + 1:rp].decode(errors="replace")


def alive(pid):
    """True if process ``pid`` exists and has not exited: a zombie (whose
    reaping this machine's init may be slow to do) is not alive."""
    try:
        return stat(pid)[0] not in "ZX"
    except OSError:
        return False


def wait_gone(pids, timeout=30.0):
    """Wait until none of ``pids`` is alive; returns those still alive
    after ``timeout`` seconds (``[]``: all gone)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def stop(pids, timeout=30.0):
    """SIGSTOP each of ``pids`` and wait until each is stopped (state T)
    or gone; returns those that are neither after ``timeout`` seconds.
    kill() returns before the signal is taken: a process stops only once
    it runs again, and until then a fatal signal sent to it (SIGTERM, a
    terminate()) ends it at once, where a stopped one keeps it pending."""
    for p in pids:
        os.kill(p, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for p in pids:
            try:
                if stat(p)[0] not in "TZX":
                    left.append(p)
            except OSError:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.005)


def table():
    """Every process: pid -> (state, ppid, comm), zombies included."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out[int(d)] = stat(d)
            except (OSError, IndexError, ValueError):     # exited meanwhile
                continue
    return out


def children(ppid, comm=None):
    """The pids of the processes whose parent is ``ppid`` (and whose name,
    /proc/PID/comm, is ``comm``, if given), zombies included."""
    return [pid for pid, (_, pp, c) in table().items()
            if pp == ppid and (comm is None or c == comm)]


def template_of(shepherd):
    """The pid of the shepherd's warm template (``-m ember._template``,
    leading its own process group), or None."""
    for pid in children(shepherd):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            if b"ember._template" in cmd and os.getpgid(pid) == pid:
                return pid
        except OSError:
            pass
    return None


def templates(runtime_id):
    """{pid: (start time, ``--flags=`` text or None)} of the live processes
    of the runtime ``runtime_id`` (in their environment) that run
    ``-m ember._template``: its templates and their clones (spares,
    programs' templates, children until they exec); of those made with one
    option set, the template is the first started."""
    out = {}
    mark = b"EMBER_RUNTIME_ID=" + runtime_id.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if b"ember._template" not in argv:
                continue
            with open(f"/proc/{d}/environ", "rb") as f:
                if mark not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{d}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in b"ZX":
            out[int(d)] = (int(fields[19]), next(
                (a[8:].decode() for a in argv if a.startswith(b"--flags=")), None))
    return out


def wait_children(ppid, comm, n=1, timeout=30.0):
    """The live processes of ``children(ppid, comm)`` once there are at
    least ``n`` of them; ``[]`` if there are fewer after ``timeout``
    seconds.  Zombies are left out: a spare or lease killed keeps its name
    until its parent reaps it, which may be after the next start (a
    dropped lease's zombie, named ember-leased, was found in place of the
    lease waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in children(ppid, comm) if alive(p)]
        if len(found) >= n:
            return found
        if time.monotonic() > deadline:
            return []
        time.sleep(0.01)


#: futex(2)'s number (x86-64, aarch64)
_FUTEX = {"x86_64": 202, "aarch64": 98}.get(os.uname().machine)


def sleeps_on_shm(pid, tid=None):
    """Whether thread ``tid`` of process ``pid`` (its main thread if None)
    sleeps in futex(2) on a word of a shared-memory mapping (/dev/shm:
    ember's channels, pools and sync objects wait so), not on the GIL or
    any other word of its own memory (/proc/PID/task/TID/syscall)."""
    task = f"/proc/{pid}/task/{tid or pid}"
    try:
        try:
            with open(f"{task}/syscall") as f:
                call = f.read().split()
        except PermissionError as e:        # (not "not yet": say so at once)
            raise AssertionError(f"cannot see what {pid}/{tid or pid} waits in: {e} "
                                 "(reading it needs the right to trace it)") from e
        if len(call) < 2 or call[0] != str(_FUTEX):
            return False
        addr = int(call[1], 16)
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= addr < hi:
                    return len(parts) > 5 and parts[5].startswith("/dev/shm/")
    except (OSError, ValueError):
        pass
    return False


def wait_sleeping_on_shm(pid, tid=None, timeout=60.0):
    """Wait until :func:`sleeps_on_shm` (a blocked receive, send, alloc or
    wait is in its sleep: a sleep of the test's own would only hope so);
    AssertionError after ``timeout`` seconds."""
    assert _FUTEX is not None, f"futex's number is not known here ({os.uname().machine})"
    deadline = time.monotonic() + timeout
    while not sleeps_on_shm(pid, tid):
        assert time.monotonic() < deadline, \
            f"{pid}/{tid or pid} did not sleep on shared memory within {timeout} s"
        time.sleep(0.002)


#: poll(2)'s and ppoll(2)'s numbers (x86-64; aarch64 has only ppoll)
_POLLS = {"x86_64": ("7", "271"), "aarch64": ("73",)}.get(os.uname().machine)


def polls_on(fd, tid):
    """Whether thread ``tid`` of this process waits in poll(2) or ppoll(2)
    on ``fd`` (the first of its pollfds, read from this process's memory:
    /proc/self/task/TID/syscall gives their address)."""
    import ctypes
    try:
        with open(f"/proc/self/task/{tid}/syscall") as f:
            call = f.read().split()
    except OSError:
        return False
    if len(call) < 3 or call[0] not in _POLLS or int(call[2], 16) < 1:
        return False
    return ctypes.c_int.from_address(int(call[1], 16)).value == fd


def wait_polling_on(fd, tid, timeout=60.0):
    """Wait until :func:`polls_on` (a thread's wait on a pidfd is in its
    sleep: a sleep of the test's own would only hope so); AssertionError
    after ``timeout`` seconds."""
    assert _POLLS is not None, f"poll's number is not known here ({os.uname().machine})"
    deadline = time.monotonic() + timeout
    while not polls_on(fd, tid):
        assert time.monotonic() < deadline, f"thread {tid} did not poll fd {fd} within {timeout} s"
        time.sleep(0.002)


def sockets(pid, lowest=3):
    """The socket inodes (``socket:[N]``) among the fds of ``pid`` from
    ``lowest`` on (its standard streams left out by default)."""
    got = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if int(fd) >= lowest and link.startswith("socket:"):
            got.add(link)
    return got


def once_sleeping_on_shm(fn, *args):
    """Start a thread that calls ``fn(*args)`` once the calling thread
    sleeps on shared memory (:func:`wait_sleeping_on_shm`): the change a
    wait of the caller's is to wake for, made while it waits (a timer's
    change may come before the wait, which then finds it made and tests
    nothing of a wake-up).  Returns the thread (started; join it)."""
    pid, tid = os.getpid(), threading.get_native_id()

    def run():
        wait_sleeping_on_shm(pid, tid)
        fn(*args)

    t = threading.Thread(target=run)
    t.start()
    return t


def readable_memory(pid="self"):
    """(address, mapping name, bytes) of each readable mapping of process
    ``pid`` (its memory as /proc/PID/maps lists it when called), device
    mappings and the kernel's vvar/vsyscall pages left out, and any that
    cannot be read.  Reading another process's needs the right to trace
    it (PermissionError otherwise)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read().splitlines()
    with open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            name = parts[5] if len(parts) > 5 else "anon"
            if "r" not in parts[1] or name.startswith("/dev/") or \
                    name in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            yield lo, name, data


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
