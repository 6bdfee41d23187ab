"""The warm template: a per-node Python interpreter that forks the Python
processes of ``ember.Process`` instead of starting a fresh interpreter.

Shepherd side (:class:`Template`): started lazily by the shepherd's request
thread on the first spawn of ``python -m ember._worker --template ...``
(:func:`is_template_request`), over an ``AF_UNIX``/``SOCK_SEQPACKET``
socket pair that becomes the template's fd 0.  Each spawn sends
``[p_uid, args, envp, cwd]`` plus the child's stdin/stdout/stderr fds
(``SCM_RIGHTS``) and gets ``[pid, error]`` back.

Template side (:func:`main`): imports ember, cloudpickle and the worker once,
then for each request forks **twice**: the first child forks the real child
and exits at once, so the real child is orphaned and re-parented to the
shepherd, which made itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``).
The shepherd therefore watches and reaps it exactly like a spawned child
(pidfd + ``waitpid``): a managed process with a p_uid, its own process
group, PR_SET_PDEATHSIG(SIGKILL) tied to the shepherd, its output on the
shepherd's pipes, killed at teardown.  Why not ``clone(CLONE_PARENT)``: it
skips glibc's fork handlers (``pthread_atfork``), which libraries such as
OpenBLAS (imported with numpy, e.g. by ``Process.preload``) need to reset
their thread pools in the child; ``os.fork()`` runs them and CPython's own
after-fork code.  See docs/python-processes.md.

The real child, before running the worker: waits until it is re-parented
(EOF on a pipe the intermediate process held, then ``getppid()``), sets
PR_SET_PDEATHSIG(SIGKILL) and checks its parent is the shepherd, leads a new
process group, takes its stdio fds, closes every other fd, changes
directory, replaces its environment, reports "ready" (or the failed step)
to the template, and then runs ``ember._worker.main`` and ``os._exit``\\ s
with its code.

What a death costs: the template dying (killed, crash) fails the spawn in
flight ("template exited"); the next spawn starts a new template.  A child
dying at any point is an ordinary managed-process exit.
"""
import os
import select
import signal
import struct
import sys


def _socket():
    import socket
    return socket

__all__ = ["Template", "is_template_request", "become_subreaper", "main"]

_PR_SET_CHILD_SUBREAPER = 36
_MAX_MSG = 1 << 20
_REPLY_TIMEOUT = 120.0     # seconds: a first preload (e.g. numpy) may take a while


def is_template_request(exe, args):
    """True for a spawn of ``python -m ember._worker --template ...`` with
    this interpreter (other interpreters get a fresh process)."""
    return (len(args) >= 3 and args[0] == "-m" and args[1] == "ember._worker"
            and args[2] == "--template" and _same_exe(exe))


def _same_exe(exe):
    try:
        return exe == sys.executable or os.path.samefile(exe, sys.executable)
    except OSError:
        return False


def become_subreaper():
    """prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are
    re-parented to this process (so template-forked children are ours)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(e)}")


class Template:
    """The shepherd's handle on its template process (request thread only)."""

    def __init__(self, envp, out_fd=2, err_fd=2):
        self._envp = envp
        self._out_fd = out_fd
        self._err_fd = err_fd
        self._sock = None
        self._pid = None

    @property
    def pid(self):
        return self._pid

    def _start(self):
        from ._spawn import spawn

        import socket         # only once a template is used (~2 ms at every start otherwise)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            exe = sys.executable
            self._pid = spawn(exe, [exe, "-m", "ember._template"], self._envp, None,
                              theirs.fileno(), self._out_fd, self._err_fd, new_pgrp=True)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._sock = mine

    def _stop(self):
        """Kill and reap the template (if any)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self._pid, 0)
            except ChildProcessError:
                pass
            self._pid = None

    def spawn(self, p_uid, args, envp, cwd, stdin_fd, out_fd, err_fd):
        """Fork a child running ``args`` (``-m ember._worker ...``); return
        its pid (a child of this process once this returns).  OSError on
        failure (nothing left running)."""
        import msgpack

        req = msgpack.packb([p_uid, args, envp, cwd], use_bin_type=True)
        for attempt in (0, 1):
            if self._sock is None:
                self._start()
            try:
                _socket().send_fds(self._sock, [req], [stdin_fd, out_fd, err_fd])
                r, _, _ = select.select([self._sock], [], [], _REPLY_TIMEOUT)
                if not r:
                    raise TimeoutError("no reply from the template")
                data = self._sock.recv(_MAX_MSG)
                if not data:
                    raise ConnectionError("template exited")
            except (OSError, TimeoutError) as exc:
                self._stop()
                if attempt:
                    raise OSError(getattr(exc, "errno", None) or 5,
                                  f"cannot start from the template: {exc}") from None
                continue
            pid, err = msgpack.unpackb(data, raw=False)
            if err:
                if pid:
                    try:
                        os.waitpid(pid, 0)        # it was re-parented to us: reap it
                    except ChildProcessError:
                        pass
                raise OSError(err[0], err[1])
            return pid
        raise AssertionError("unreachable")

    def close(self):
        self._stop()


# ----------------------------------------------------------------------
# the template process
# ----------------------------------------------------------------------
def _preload(modules):
    import importlib

    for m in modules:
        if m in sys.modules:
            continue
        try:
            importlib.import_module(m)
        except BaseException as exc:   # the child will import it (and fail) itself
            print(f"ember template: cannot preload {m!r}: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)


def _child(args, envp, cwd, fds, gate_r, middle_pid, shepherd_pid):
    """In the real child: set up, run the worker.  Never returns."""
    code = 127
    step = "start"
    try:
        if gate_r >= 0:
            step = "wait for re-parenting"
            while os.read(gate_r, 1):   # EOF once the intermediate process has exited
                pass
            os.close(gate_r)
            while os.getppid() == middle_pid:
                os.sched_yield()
        from ._spawn import set_pdeathsig

        step = "set the parent-death signal"
        set_pdeathsig(signal.SIGKILL)
        if os.getppid() != shepherd_pid:
            raise OSError(0, "the shepherd exited")
        step = "make a process group"
        os.setpgid(0, 0)
        step = "set up stdin/stdout/stderr"
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        step = "close inherited fds"
        os.closerange(3, 1 << 20)
        step = f"change to run_dir '{cwd}'"
        if cwd:
            os.chdir(cwd)
        step = "set the environment"
        env = os.environb
        for k in list(env):
            del env[k]
        for kv in envp:
            k, _, v = kv.partition(b"=")
            env[k] = v
        signal.signal(signal.SIGINT, signal.default_int_handler)
        step = "run"
        from .. import _worker

        sys.argv = ["-m"] + list(args[2:])
        code = _worker.main(list(args[2:]))
        import atexit

        atexit._run_exitfuncs()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        if step == "run":
            import traceback

            traceback.print_exc()
            code = 70
        else:
            try:
                print(f"ember template child: cannot {step}: {exc}", file=sys.stderr)
            except Exception:
                pass
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        os._exit(code if isinstance(code, int) else 1)


_clone = None
_CLONE_PARENT = 0x00008000
_CLONE_CHILD_SETTID = 0x01000000
# syscall numbers: clone, set_robust_list, get_robust_list
_SYSCALLS = {"x86_64": (56, 273, 274), "aarch64": (220, 99, 100)}


def _clone_setup():
    """Prepare :func:`_clone_parent`, or return False where it cannot be
    made exact.  glibc keeps the thread's TID in its thread descriptor and
    registers a *robust list* with the kernel (the pool allocator's mutex is
    a robust, process-shared one: the kernel marks it OWNER_DIED when its
    holder dies).  glibc's fork() fixes both in the child; a raw clone does
    not, so we do it: CLONE_CHILD_SETTID writes the child's TID into the
    descriptor, and the child re-registers the robust list at the same
    address (its copy of the template's).  The TID field's address is found
    from the robust list head (``get_robust_list``), at the place glibc's
    ``struct pthread`` keeps it (``tid``, an unused ``pid``, ``robust_prev``,
    then ``robust_head``), and checked to hold this thread's TID."""
    import ctypes
    import threading

    nrs = _SYSCALLS.get(os.uname().machine)
    if nrs is None:
        return False
    libc = ctypes.PyDLL(None, use_errno=True)    # PyDLL: the GIL stays held
    fn = libc.syscall
    fn.restype = ctypes.c_long
    head = ctypes.c_void_p()
    size = ctypes.c_size_t()
    if fn(ctypes.c_long(nrs[2]), ctypes.c_long(0), ctypes.byref(head), ctypes.byref(size)) != 0 \
            or not head.value:
        return False
    tid_addr = head.value - 2 * ctypes.sizeof(ctypes.c_int) - ctypes.sizeof(ctypes.c_void_p)
    if ctypes.c_int.from_address(tid_addr).value != threading.get_native_id():
        return False
    return (ctypes, fn, nrs, tid_addr, head.value, size.value)


def _clone_parent():
    """fork() as a sibling: ``clone(CLONE_PARENT | CLONE_CHILD_SETTID |
    SIGCHLD)`` with CPython's before/after-fork steps, so that the child's
    parent is the shepherd.  Only for a single-threaded template: the
    pthread_atfork handlers of glibc and of libraries do not run.  Returns
    the pid (0 in the child); None if unsupported here."""
    global _clone
    if _clone is None:
        try:
            _clone = _clone_setup()
        except Exception:
            _clone = False
    if _clone is False:
        return None
    ctypes, fn, nrs, tid_addr, head, size = _clone
    api = ctypes.pythonapi
    flags = ctypes.c_ulong(_CLONE_PARENT | _CLONE_CHILD_SETTID | signal.SIGCHLD)
    tid = ctypes.c_void_p(tid_addr)
    null = ctypes.c_void_p(0)
    api.PyOS_BeforeFork()
    if nrs[0] == 56:      # x86_64: clone(flags, stack, parent_tid, child_tid, tls)
        pid = fn(ctypes.c_long(nrs[0]), flags, null, null, tid, null)
    else:                 # aarch64: clone(flags, stack, parent_tid, tls, child_tid)
        pid = fn(ctypes.c_long(nrs[0]), flags, null, null, null, tid)
    if pid == 0:
        fn(ctypes.c_long(nrs[1]), ctypes.c_void_p(head), ctypes.c_size_t(size))
        api.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def _thread_state():
    """For tests, in a template child: (the TID glibc recorded for this
    thread, True if the kernel has this thread's robust list registered),
    or None when the child was not made by _clone_parent's set-up."""
    if not _clone:
        return None
    ctypes, fn, nrs, tid_addr, head, size = _clone
    got = ctypes.c_void_p()
    n = ctypes.c_size_t()
    fn(ctypes.c_long(nrs[2]), ctypes.c_long(0), ctypes.byref(got), ctypes.byref(n))
    return ctypes.c_int.from_address(tid_addr).value, got.value == head


def _single_threaded():
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork_one(args, envp, cwd, fds, shepherd_pid):
    """Start the child as the shepherd's child; return (pid, error or None)."""
    if cwd:
        if not os.path.isdir(cwd):
            e = 20 if os.path.exists(cwd) else 2
            return 0, [e, f"bad run_dir '{cwd}'"]
        if not os.access(cwd, os.X_OK):
            return 0, [13, f"bad run_dir '{cwd}'"]
    for f in (sys.stdout, sys.stderr):
        f.flush()
    if _single_threaded():
        pid = _clone_parent()
        if pid == 0:
            _child(args, envp, cwd, fds, -1, 0, shepherd_pid)
        if pid is not None:
            return pid, None
    # Threads (e.g. a preloaded library's pool): a real fork, twice.
    pid_r, pid_w = os.pipe()
    gate_r, gate_w = os.pipe()
    middle = os.fork()
    if middle == 0:                       # intermediate: fork the child, exit
        try:
            os.close(pid_r)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(pid_w)
                os.close(gate_w)
                _child(args, envp, cwd, fds, gate_r, me, shepherd_pid)
            os.write(pid_w, struct.pack("<i", pid))
        finally:
            os._exit(0)
    for fd in (pid_w, gate_r, gate_w):
        os.close(fd)
    try:
        data = os.read(pid_r, 4)
        os.waitpid(middle, 0)             # the child is re-parented once this returns
        if len(data) != 4:
            return 0, [11, "cannot fork"]
        return struct.unpack("<i", data)[0], None
    finally:
        os.close(pid_r)


_default_pool = None


def main():
    import msgpack

    # Warm up: what every worker needs.
    import cloudpickle  # noqa: F401

    from .. import _worker  # noqa: F401
    from ..channels_c import Channel  # noqa: F401
    from ..globalservices import channel, pool, process  # noqa: F401
    from ..objects import _pickling, process as _p  # noqa: F401

    # Map the runtime's default pool once: children inherit the mapping (and
    # the pools binding's cache entry), so attaching their channels is free.
    global _default_pool
    try:
        from .. import _env
        from ..pools_c import Pool

        _default_pool = Pool.attach(_env.decode(os.environ[_env.DEFAULT_POOL]))
    except Exception:
        _default_pool = None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shepherd_pid = os.getppid()
    import socket
    sock = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    while True:
        try:
            msg, fds, _, _ = _socket().recv_fds(sock, _MAX_MSG, 3)
        except OSError:
            return 0
        if not msg:
            return 0
        try:
            p_uid, args, envp, cwd = msgpack.unpackb(msg, raw=False)
            if len(fds) != 3:
                pid, err = 0, [22, f"template: expected 3 fds, got {len(fds)}"]
            else:
                from .._worker import parse_argv

                _, preload, _, _ = parse_argv(args[2:])
                if preload:
                    _preload(preload)
                pid, err = _fork_one(args, envp, cwd, fds, shepherd_pid)
        except Exception as exc:
            pid, err = 0, [getattr(exc, "errno", None) or 5,
                           f"template error: {type(exc).__name__}: {exc}"]
        finally:
            for fd in fds:
                os.close(fd)
        try:
            sock.send(msgpack.packb([pid, err], use_bin_type=True))
        except OSError:
            return 0


if __name__ == "__main__":
    sys.exit(main())
