"""The watchdog every command started on a node runs under
(:mod:`ember.launcher.nodes`, "The watchdog"; docs/node-launcher.md)::

    <python> -m ember.launcher._watch [--grace S] [--cwd DIR] -- argv...

A module of its own, importing only what it needs (no subprocess, socket,
shutil, dataclasses...): it is started once per node at every bring-up,
after the ssh or srun connection, so what it imports is on the bring-up's
critical path.

When ``argv`` is ``<this same interpreter> -m MODULE args...`` (the node
process of a runtime that spans several nodes is), the command is not
exec'd: the forked child runs MODULE as ``__main__`` in the interpreter
the watchdog already started, as ``python -m`` would (``sys.argv``,
``sys.path[0]``, Python's default signal dispositions), and exits with its
status.  That saves an interpreter start (and the imports both share) per
node; everything else — the session and process group, the parent-death
signal, the stdin forwarding, the shutdown — is as for any command.
"""
import os
import select
import signal
import sys
import time

from .._exit import flush_and_exit

READY_MARKER = b"EMBER-WATCH-READY"
FAILED_MARKER = b"EMBER-WATCH-FAILED"
DEFAULT_GRACE = 2.0          # seconds between SIGTERM and SIGKILL on the node

_PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper():
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:
        pass


def _my_children():
    me = os.getpid()
    kids = set()
    try:
        for t in os.listdir(f"/proc/{me}/task"):
            try:
                with open(f"/proc/{me}/task/{t}/children", encoding="ascii") as f:
                    kids.update(int(p) for p in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return kids


class _Watch:
    def __init__(self, argv, grace, cwd):
        self.argv = argv
        self.grace = grace
        self.cwd = cwd
        self.child = None           # the command's pid (= its process group)
        self.status = None          # the command's exit status (shell style)
        self.stop = None            # why we shut down, or None

    def fail(self, msg):
        os.write(2, FAILED_MARKER + b" " + msg.encode(errors="replace").replace(b"\n", b" ") + b"\n")
        return 127

    def reap(self):
        """Reap every dead child; record the command's status."""
        while True:
            try:
                pid, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                code = os.waitstatus_to_exitcode(st)
                self.status = 128 - code if code < 0 else code

    def signal_all(self, sig):
        if self.child is not None:
            try:
                os.killpg(self.child, sig)
            except OSError:
                pass
        for pid in _my_children():
            try:
                os.kill(pid, sig)
            except OSError:
                pass

    def shutdown(self):
        """SIGTERM everything left, wait the grace period, SIGKILL until
        no child is left."""
        self.reap()
        if not _my_children():
            return
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            self.reap()
            if not _my_children():
                return
            time.sleep(0.01)
        while True:
            self.signal_all(signal.SIGKILL)
            time.sleep(0.005)
            self.reap()
            if not _my_children():
                return

    def spawn(self, exe, stdin_r):
        """Fork the command, held at a gate until READY is written (so
        nothing it prints comes before that line), then exec it (or run
        its module here, see the module docstring) in a session of its
        own, dying with us (PR_SET_PDEATHSIG)."""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
        me = os.getpid()
        pid = os.fork()
        if pid == 0:   # the child: only exec or _exit from here
            try:
                os.close(gate_w)
                os.setsid()
                libc.prctl(1, signal.SIGKILL, 0, 0, 0)      # PR_SET_PDEATHSIG
                if os.getppid() != me:
                    os._exit(137)
                for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                          signal.SIGHUP, signal.SIGCHLD):
                    signal.signal(s, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                if os.read(gate_r, 1) != b"g":
                    os._exit(137)
                os.dup2(stdin_r, 0)
                os.closerange(3, 1 << 16)
                if _in_process(self.argv):
                    _run_module(self.argv[2], self.argv[3:])      # never returns
                os.execvp(exe, self.argv)
            except OSError as e:
                try:
                    os.write(2, f"ember watch: cannot start {exe!r}: {e.strerror}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(127)
        os.close(gate_r)
        self.child = pid
        return gate_w

    def run(self):
        env = os.environ
        if self.cwd is not None:
            try:
                os.chdir(self.cwd)
            except OSError as e:
                return self.fail(f"cannot change to directory {self.cwd!r}: {e.strerror}")
        exe = self.argv[0]
        if "/" in exe:
            if not os.access(exe, os.X_OK) or os.path.isdir(exe):
                return self.fail(f"{exe!r}: not an executable file")
        elif _which(exe, env.get("PATH", os.defpath)) is None:
            return self.fail(f"{exe!r}: command not found on PATH={env.get('PATH', os.defpath)}")
        _set_subreaper()
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        stop_sigs = []

        def on_stop(signum, frame):
            stop_sigs.append(signum)
        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGHUP, on_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the launcher decides, not a terminal
        signal.signal(signal.SIGCHLD, lambda s, f: None)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        stdin_r, to_child = os.pipe2(os.O_CLOEXEC)
        gate = self.spawn(exe, stdin_r)
        os.close(stdin_r)
        host = os.uname().nodename
        os.write(2, READY_MARKER + f" {os.getpid()} {host} {self.child}\n".encode())
        os.write(gate, b"g")
        os.close(gate)
        # Our stdout is the command's now: do not hold it.
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 1)
        os.close(null)
        os.set_blocking(to_child, False)
        os.set_blocking(0, False)
        pending = bytearray()
        child_in_open = True
        limit = 16 << 20
        while True:
            self.reap()
            if stop_sigs:
                self.stop = f"signal {stop_sigs[0]}"
                break
            if self.status is not None:
                break
            rlist = [wake_r, 0]
            wlist = [to_child] if (pending and child_in_open) else []
            try:
                r, w, _ = select.select(rlist, wlist, [], 1.0)
            except InterruptedError:
                continue
            if wake_r in r:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            if 0 in r:
                try:
                    data = os.read(0, 65536)
                except BlockingIOError:
                    data = None
                except OSError:
                    data = b""
                if data == b"":
                    self.stop = "stdin EOF"
                    break
                if data and child_in_open and len(pending) < limit:
                    pending += data
            if to_child in w:
                try:
                    n = os.write(to_child, pending)
                    del pending[:n]
                except BlockingIOError:
                    pass
                except OSError:      # the command closed its stdin
                    child_in_open = False
                    pending.clear()
        try:
            os.close(to_child)
        except OSError:
            pass
        self.shutdown()
        self.reap()
        if self.status is None:
            self.status = 128 + signal.SIGKILL
        return self.status


def main(args=None):
    """``python -m ember.launcher._watch [--grace S] [--cwd DIR] -- argv``."""
    if args is None:
        args = sys.argv[1:]
    grace = DEFAULT_GRACE
    cwd = None
    i = 0
    while i < len(args) and args[i] != "--":
        if args[i] == "--grace" and i + 1 < len(args):
            try:
                grace = float(args[i + 1])
            except ValueError:
                sys.stderr.write(f"ember watch: --grace needs a number, not {args[i + 1]!r}\n")
                return 2
            i += 2
        elif args[i] == "--cwd" and i + 1 < len(args):
            cwd = args[i + 1]
            i += 2
        else:
            sys.stderr.write(f"ember watch: unknown option {args[i]!r}\n")
            return 2
    argv = args[i + 1:]
    if not argv:
        sys.stderr.write("ember watch: no command after --\n")
        return 2
    return _Watch(argv, grace, cwd).run()

def _which(exe, path):
    for d in path.split(os.pathsep):
        p = os.path.join(d or ".", exe)
        if os.access(p, os.X_OK) and not os.path.isdir(p):
            return p
    return None


def _in_process(argv):
    """``argv`` is ``<this interpreter> -m MODULE ...``: run it here."""
    return (len(argv) >= 3 and argv[1] == "-m" and bool(sys.executable)
            and argv[0] == sys.executable and not argv[2].startswith("-"))


def _run_module(module, args):
    """In the forked child: run ``module`` as ``python -m module args``
    would, then exit with its status (never returns)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.default_int_handler)    # as Python starts
        for s in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(s, signal.SIG_IGN)
        sys.argv = [module] + list(args)       # runpy puts the module's path first
        sys.path[0] = os.getcwd()              # what -m puts first
        import runpy
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        c = exc.code
        if c is None:
            code = 0
        elif isinstance(c, int):
            code = c & 0xFF
        else:
            try:
                print(c, file=sys.stderr)
            except Exception:
                pass
            code = 1
    except BaseException:
        try:
            import traceback
            traceback.print_exc()
        except Exception:
            pass
    finally:
        flush_and_exit(code)


if __name__ == "__main__":
    # no interpreter finalization: the node's teardown waits for this exit
    flush_and_exit(main())
