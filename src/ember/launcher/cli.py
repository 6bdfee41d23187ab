"""The ``ember`` command line: ``ember run``, ``ember cleanup``.

``ember run PROGRAM [ARGS...]`` brings up a runtime on this node, runs
PROGRAM in it as the head process, tears everything down and exits with the
head's exit code (128+N if a signal N killed it, as shells do).

Start-up, fast and without shelling out: the launcher creates the
infrastructure pool (GS, shepherd and reply channels live there) and the
default pool, then forks global services and the shepherd side by side —
both are this same interpreter with everything already imported, so they
are serving within a millisecond — and asks GS to create the head.

Signals: Ctrl-C (SIGINT) and SIGTERM to the launcher are forwarded to the
head; if the head has not exited ``--grace`` seconds later, every managed
process is killed.  A second Ctrl-C kills everything at once.  Managed
processes run in their own process groups, so a terminal's Ctrl-C reaches
them only through the launcher.

Teardown, however the run ends: remaining processes get SIGTERM, then
SIGKILL after the grace period; every channel and pool is destroyed; GS and
the shepherd exit; the launcher unlinks anything left under its runtime id.
If the launcher is SIGKILLed, GS and the shepherd die by PR_SET_PDEATHSIG,
the managed processes by theirs, and ``ember cleanup`` removes the
segments whose owner is gone.
"""
import argparse
import os
import re
import select
import signal
import sys

from .. import __version__, _env

EXIT_START_FAILED = 127
_CONTROL_CAPACITY = 256      # slots of GS's and the shepherd's input channels (back-pressure beyond)
EXIT_RUNTIME_FAILED = 70

_OWNER = re.compile(r"^ember\.([pr])(\d+)[-.]")
SHM_DIR = "/dev/shm"


def _parser():
    p = argparse.ArgumentParser(
        prog="ember",
        description="ember: a runtime for Python programs that use many processes.",
        epilog="See `ember run --help` and `ember cleanup --help`; docs/user-guide.md.")
    p.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser(
        "run", help="run a program inside a new ember runtime",
        description="Bring up global services and this node's shepherd, run PROGRAM as the "
                    "head process (a PROGRAM ending in .py runs with this Python interpreter, "
                    "anything else is executed as is), tear everything down, and exit with the "
                    "head's exit code (128+N if signal N killed it).")
    _runtime_flags(r)
    r.add_argument("--address", metavar="ADDR", default=os.environ.get("EMBER_ADDRESS"),
                   help="run PROGRAM in the already running runtime ADDR (an id or name printed "
                        "by `ember start`, or 'auto' for the only one running) instead of "
                        "starting a new one; default: $EMBER_ADDRESS if set")
    r.add_argument("program", metavar="PROGRAM", help="the head program (path or command)")
    r.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments passed to PROGRAM")

    st = sub.add_parser(
        "start", help="start a runtime in the background and print its address",
        description="Bring up global services and this node's shepherd with no head program, "
                    "print the runtime's address and return.  Programs join it with "
                    "`ember run --address ADDR prog.py` or ember.init(address=ADDR); "
                    "`ember stop` tears it down (the same teardown as `ember run`'s).  Output of "
                    "its processes goes to <runtime dir>/<id>.log.")
    _runtime_flags(st)
    st.add_argument("--name", help="a name to find the runtime by (ember stop NAME, "
                                   "ember.init(address=NAME))")
    st.add_argument("--foreground", action="store_true",
                    help="stay in the foreground (output to this terminal) until stopped "
                         "by SIGTERM/SIGINT/SIGHUP or `ember stop`")
    st.add_argument("--detach", action="store_true", help=argparse.SUPPRESS)
    st.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    st.add_argument("--watch-pid", type=int, default=None, help=argparse.SUPPRESS)

    sp = sub.add_parser(
        "stop", help="tear down a runtime started with `ember start` or ember.init()",
        description="Tear down a running runtime: its processes get SIGTERM, then SIGKILL "
                    "after its grace period; its channels and pools are destroyed.")
    sp.add_argument("target", nargs="?", default="auto", metavar="NAME|ADDR",
                    help="the runtime's name, id or address file (default: the only one running)")
    sp.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="how long to wait for the teardown (default: 60)")

    c = sub.add_parser(
        "cleanup", help="remove shared memory left by runtimes whose launcher is gone",
        description="Remove /dev/shm segments of ember runtimes (and standalone pools) whose "
                    "owning process no longer exists.  Segments of live runtimes are never "
                    "touched.")
    c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    return p


def _runtime_flags(r):
    """The flags shared by ``run`` and ``start``."""
    r.add_argument("--grace", type=float, default=5.0, metavar="SECONDS",
                   help="after Ctrl-C/SIGTERM, and at teardown between SIGTERM and SIGKILL, wait "
                        "this long for processes to exit (default: 5)")
    r.add_argument("--label", choices=("none", "puid", "name"), default="none",
                   help="prefix each output line of managed processes with its p_uid or name "
                        "(default: none)")
    r.add_argument("--default-pool-size", type=_size, default=_size("1G"), metavar="SIZE",
                   help="size of the runtime's default pool, sparse (default: 1G; suffixes K, M, G)")
    r.add_argument("--inf-pool-size", type=_size, default=_size("256M"), metavar="SIZE",
                   help="size of the infrastructure pool for control channels, sparse "
                        "(default: 256M)")


def _size(text):
    t = str(text).strip().upper()
    mult = 1
    for suffix, f in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if t.endswith(suffix):
            t, mult = t[:-1], f
            break
    try:
        v = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 64M, 1G)") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return v


def _ensure_stdio():
    """Open /dev/null on any of fds 0-2 that is closed (``ember run >&-``):
    otherwise a segment or pipe would take fd 1 and output would go there."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def main(argv=None):
    """Entry point of the ``ember`` command; returns the exit code."""
    _ensure_stdio()
    args = _parser().parse_args(argv)
    if args.command == "cleanup":
        return cleanup(dry_run=args.dry_run)
    if args.command == "stop":
        return stop(args.target, args.timeout)
    if args.command == "start":
        if not args.foreground and not args.detach:
            args.detach = True
        if args.detach:
            return _daemonize(args)
        return Launcher(args).run()
    if args.address:
        return Launcher(args).run_attached(args.address)
    return Launcher(args).run()


def stop(target, timeout):
    from .. import runtime
    from ..exceptions import EmberError
    try:
        addr = runtime.resolve(target)
        runtime._stop_host(addr, None, timeout)
    except EmberError as exc:
        print(f"ember stop: {exc}", file=sys.stderr)
        return 1
    print(f"stopped {addr.id}" + (f" ({addr.name})" if addr.name else ""))
    return 0


def _runtime_dir_or_unknown():
    from .. import runtime
    try:
        return runtime.runtime_dir(create=False)
    except Exception:
        return "the runtime directory"


def _daemonize(args):
    """``ember start``: run the host detached (its own session, not a child of
    the caller), print its address once it is serving, return."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                         # intermediate: new session, fork again
        os.close(r)
        try:
            os.setsid()
            if os.fork():
                os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.close(null)
            args.ready_fd = w
            launcher = Launcher(args)
            from .. import runtime
            log = os.path.join(runtime.runtime_dir(), launcher.tag + ".log")
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            code = launcher.run()
        except BaseException:
            import traceback
            traceback.print_exc()
            code = EXIT_RUNTIME_FAILED
        os._exit(code if isinstance(code, int) else 1)
    os.close(w)
    os.waitpid(pid, 0)
    data = b""
    while True:                          # until the line (GS and the shepherd hold w too)
        chunk = os.read(r, 4096)
        data += chunk
        if not chunk or b"\n" in data:
            break
    os.close(r)
    line = data.decode(errors="replace").strip()
    if not line.startswith("/"):
        print(f"ember start: the runtime failed to start{': ' + line if line else ''} "
              f"(see the log in {_runtime_dir_or_unknown()})", file=sys.stderr)
        return EXIT_RUNTIME_FAILED
    if args.ready_fd is not None:        # ember.init(detached=True): tell the caller
        os.write(args.ready_fd, (line + "\n").encode())
    else:
        from .. import runtime
        addr = runtime.Address.load(line)
        print(addr.id + (f" ({addr.name})" if addr.name else ""))
    return 0



# ------------------------------------------------------------------ cleanup
def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup(dry_run=False, out=sys.stdout):
    removed = 0
    try:
        names = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        names = []
    for name in names:
        mo = _OWNER.match(name)
        if not mo or _pid_alive(int(mo.group(2))):
            continue
        if dry_run:
            print(f"would remove {SHM_DIR}/{name}", file=out)
        else:
            try:
                os.unlink(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                continue
            print(f"removed {SHM_DIR}/{name}", file=out)
        removed += 1
    if not removed:
        print("nothing to clean up", file=out)
    return 0


# ------------------------------------------------------------------- runtime
class _Signalled(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _ChildDied(BaseException):
    pass


def _set_pdeathsig():
    try:
        from ..shepherd._spawn import set_pdeathsig
        set_pdeathsig(signal.SIGKILL)
    except ImportError:  # pragma: no cover - the extension is always built
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _gs_main(gs_ch, sh_ch, tag, dflt, ctl=None, death_reports=True, attach_key=None):
    from ..globalservices import server
    return server.main_forked(gs_ch, sh_ch, tag, dflt, control=ctl, death_reports=death_reports,
                              attach_key=attach_key)


def _sh_main(sh_ch, gs_ch, label, ctl=None, death_reports=True):
    from ..shepherd import server
    return server.main_forked(sh_ch, gs_ch, label=label, death_reports=death_reports,
                              ctl_channel=ctl.to_gs if ctl is not None else None)


class Launcher:
    def __init__(self, args):
        self.args = args
        self.tag = _env.owner_tag("r")
        self.children = {}        # pid -> role
        self.head = None
        self.head_pidfd = None
        self.signals = 0

    # The forked services.  Each returns via os._exit, never to the caller.
    def _fork(self, role, fn):
        for f in (sys.stdout, sys.stderr):
            if f is not None:
                f.flush()
        pid = os.fork()
        if pid:
            self.children[pid] = role
            return pid
        code = 1
        try:
            if getattr(self.args, "ready_fd", None) is not None:
                os.close(self.args.ready_fd)     # only the launcher says "ready"
            _set_pdeathsig()
            if os.getppid() != self.launcher_pid:
                os._exit(1)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = fn()
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code if isinstance(code, int) else 1)

    def run(self):
        from ..channels_c import Channel
        from ..pools_c import Pool

        from ..exceptions import EmberError

        a = self.args
        self.launcher_pid = os.getpid()
        try:
            inf = Pool.create(a.inf_pool_size, name="ember-infrastructure", m_uid=0, owner_tag=self.tag)
        except (EmberError, OSError, ValueError) as exc:
            print(f"ember: cannot create the infrastructure pool: {exc}", file=sys.stderr)
            return EXIT_RUNTIME_FAILED
        dflt = None
        gs_ch = sh_ch = None
        self.ctl = None
        try:
            try:
                dflt = Pool.create(a.default_pool_size, name="default", m_uid=1, owner_tag=self.tag)
                gs_ch = Channel.create(inf, capacity=_CONTROL_CAPACITY, block_size=512)
                # The shepherd's input and GS's control input live in a pool that
                # managed processes never map (docs/architecture.md, "Trust model").
                from ..globalservices.control import ControlPlane
                self.ctl = ControlPlane.create(self.tag)
                sh_ch = self.ctl.to_shepherd
            except (EmberError, OSError, ValueError) as exc:
                print(f"ember: cannot set up the runtime (--inf-pool-size {a.inf_pool_size}, "
                      f"--default-pool-size {a.default_pool_size}): {exc}", file=sys.stderr)
                return EXIT_RUNTIME_FAILED
            os.environ.update({
                _env.RUNTIME_ID: self.tag,
                _env.INF_POOL: _env.encode(inf.sdesc),
                _env.GS_CH: _env.encode(gs_ch.sdesc),
                _env.KEY: self.ctl.launcher_key.hex(),   # p_uid 0's request key
                _env.DEFAULT_POOL: _env.encode(dflt.sdesc),
                _env.NODE: "0",
                _env.P_UID: "0",
                _env.LABEL: a.label,
            })
            # All three need the message schema (msgpack): import it once.
            # GS and the shepherd import their own modules after the fork, in
            # parallel with each other and with the launcher's client import.
            from .. import messages  # noqa: F401
            death_reports = getattr(a, "death_reports", True)
            import secrets
            self.key = secrets.token_hex(16)     # what an attaching process must show
            self._fork("global services", lambda: _gs_main(gs_ch, sh_ch, self.tag, dflt, self.ctl,
                                                           death_reports, self.key))
            self._fork("shepherd", lambda: _sh_main(sh_ch, gs_ch, a.label, self.ctl, death_reports))
            signal.signal(signal.SIGCHLD, self._on_sigchld)
            try:
                self._publish(inf, gs_ch, dflt)
            except Exception as exc:
                print(f"ember: cannot publish the runtime's address: {exc}", file=sys.stderr)
                self._ready(f"cannot publish the runtime's address: {exc}")
                return EXIT_RUNTIME_FAILED
            if a.command == "start":
                code = self._serve_host()
            else:
                from ..globalservices import process
                code = self._run_head(process)
        finally:
            self._shutdown(gs_ch, sh_ch, inf, dflt)
            self._unpublish()
        return code

    # ------------------------------------------------------- address, hosting
    def _publish(self, inf, gs_ch, dflt):
        """Publish the address (and take the liveness lock) so that other
        processes of this user can attach (``ember.init(address=...)``,
        ``ember run --address``)."""
        from .. import runtime
        a = self.args
        program = " ".join([a.program] + list(a.args)) if a.command == "run" else None
        self.address, self.lock_fd = runtime.publish(
            self.tag, name=getattr(a, "name", None), pid=os.getpid(), key=self.key,
            inf_pool=inf.sdesc, gs_ch=gs_ch.sdesc, default_pool=dflt.sdesc, program=program)

    def _unpublish(self):
        from .. import runtime
        if getattr(self, "address", None) is not None:
            runtime.unpublish(self.tag)
            os.close(self.lock_fd)
            self.address = None

    def _ready(self, text):
        fd = getattr(self.args, "ready_fd", None)
        if fd is None:
            return
        try:
            os.write(fd, (text + "\n").encode())
        except OSError:
            pass
        os.close(fd)
        self.args.ready_fd = None

    def _serve_host(self):
        """``ember start`` / ``ember.init()``: no head; serve until SIGTERM,
        SIGINT or SIGHUP (``ember stop``), or until the watched process (the
        one that called ``ember.init()``) exits."""
        a = self.args
        watch = None
        if a.watch_pid is not None:
            try:
                watch = os.pidfd_open(a.watch_pid)
            except OSError:
                return 0                      # the starter is gone already
        held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        prev = {s: signal.signal(s, self._on_signal) for s in held}
        try:
            if a.ready_fd is not None:
                self._ready(self.address.path)
            else:
                print(f"ember: runtime {self.tag} running; address {self.address.path}; "
                      f"stop with `ember stop {getattr(a, 'name', None) or self.tag}`", flush=True)
            while True:
                select.select([watch] if watch is not None else [], [], [])
                if watch is not None:
                    return 0                  # the starter exited
        except _Signalled:
            return 0
        except _ChildDied as exc:
            print(f"ember: runtime failure: {exc}", file=sys.stderr)
            self.broken = True
            return EXIT_RUNTIME_FAILED
        finally:
            for s, h in prev.items():
                signal.signal(s, h)
            if watch is not None:
                os.close(watch)

    def run_attached(self, address):
        """``ember run --address ADDR PROGRAM``: run the head in a running
        runtime; it stays up afterwards."""
        from .. import runtime
        from ..exceptions import EmberError
        try:
            runtime.init(address=address)
        except EmberError as exc:
            print(f"ember: {exc}", file=sys.stderr)
            return EXIT_RUNTIME_FAILED
        try:
            from ..globalservices import process
            return self._run_head(process)
        finally:
            if self.head_pidfd is not None:
                os.close(self.head_pidfd)
            runtime.shutdown()


    def _on_sigchld(self, signum, frame):
        for pid, role in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.children.pop(pid, None)
                if not getattr(self, "stopping", False):
                    raise _ChildDied(f"{role} exited unexpectedly "
                                     f"(status {os.waitstatus_to_exitcode(status)})")

    def _on_signal(self, signum, frame):
        raise _Signalled(signum)

    def _run_head(self, process):
        a = self.args
        prev = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            prog = a.program
            if prog.endswith(".py"):
                exe, argv = sys.executable, [prog] + a.args
            else:
                exe, argv = prog, a.args
            # Hold Ctrl-C/SIGTERM while the head is being created; they are
            # delivered (and forwarded to the head) as soon as it exists.
            held = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, held)
            try:
                self.head = process.create(exe, os.getcwd(), argv)
            except Exception as exc:
                print(f"ember: cannot start {prog!r}: {exc}", file=sys.stderr)
                return EXIT_START_FAILED
            finally:
                if self.head is not None:
                    try:
                        self.head_pidfd = os.pidfd_open(self.head.os_pid)
                    except OSError:
                        self.head_pidfd = None   # already gone: join will say so
                try:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, held)
                except _Signalled as s:          # delivered on unblock
                    pending = s.signum
                else:
                    pending = None
            deadline = None
            import time
            if pending is not None:
                self.signals = 1
                self._forward(pending)
                deadline = time.monotonic() + a.grace
            while True:
                try:
                    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                    code = process.join(self.head.p_uid, timeout=timeout)
                    if code is None:
                        print(f"ember: head process did not exit {a.grace:g} s after the signal; "
                              f"killing everything", file=sys.stderr)
                        self.grace_override = 0.0
                        return 128 + signal.SIGKILL
                    return code if code >= 0 else 128 - code
                except _Signalled as s:
                    self.signals += 1
                    if self.signals > 1:
                        print("ember: second interrupt: killing everything", file=sys.stderr)
                        self.grace_override = 0.0
                        return 128 + s.signum
                    self._forward(s.signum)
                    deadline = time.monotonic() + a.grace
        except _ChildDied as exc:
            print(f"ember: runtime failure: {exc}", file=sys.stderr)
            self.broken = True
            return EXIT_RUNTIME_FAILED
        finally:
            for s, h in prev.items():
                signal.signal(s, h)

    def _forward(self, signum):
        if self.head_pidfd is None:
            return
        # Through the shepherd, so it knows ember sent the signal (no death
        # report for it); straight to the head if that cannot be done.
        if getattr(self, "ctl", None) is not None and self.ctl.kill(self.head.p_uid, signum):
            return
        try:
            signal.pidfd_send_signal(self.head_pidfd, signum)
        except ProcessLookupError:
            pass

    def _shutdown(self, gs_ch, sh_ch, inf, dflt):
        from ..exceptions import EmberError
        from ..globalservices import _client
        from .. import messages

        self.stopping = True
        # From here on _reap() waits for GS and the shepherd itself.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Signals during teardown: a second Ctrl-C is already "kill everything".
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grace = getattr(self, "grace_override", self.args.grace)
        if self.children and not getattr(self, "broken", False):
            try:
                _client.connection().call(messages.Teardown, grace, timeout=grace + 10.0)
            except (EmberError, _ChildDied) as exc:
                print(f"ember: teardown through global services failed: {exc}", file=sys.stderr)
        self._reap(timeout=2.0)
        if self.head_pidfd is not None:
            os.close(self.head_pidfd)
        conn = _client._conn
        if conn is not None:
            conn.close()
        for ch in (gs_ch, sh_ch):
            if ch is not None:
                ch.destroy()
        if dflt is not None:
            dflt.destroy()
        if getattr(self, "ctl", None) is not None:
            self.ctl.destroy()
        inf.destroy()
        self._sweep()

    def _reap(self, timeout):
        """Wait for GS and the shepherd to exit (pidfd, no sleeping loops);
        SIGKILL whatever is still there after ``timeout``."""
        import time
        deadline = time.monotonic() + timeout
        for pid in list(self.children):
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                fd = None
            if fd is not None:
                try:
                    select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                    try:
                        done, _ = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        done = pid
                    if not done:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                finally:
                    os.close(fd)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid, None)

    def _sweep(self):
        """Unlink any segment still carrying this runtime's id (a GS that
        died could not destroy its pools)."""
        prefix = f"ember.{self.tag}."
        try:
            names = os.listdir(SHM_DIR)
        except FileNotFoundError:
            return
        for n in names:
            if n.startswith(prefix):
                try:
                    os.unlink(os.path.join(SHM_DIR, n))
                except FileNotFoundError:
                    pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
