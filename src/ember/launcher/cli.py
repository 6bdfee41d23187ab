"""The ``ember`` command line: ``ember run``, ``ember cleanup``.

``ember run PROGRAM [ARGS...]`` brings up a runtime on this node, runs
PROGRAM in it as the head process, tears everything down and exits with the
head's exit code (128+N if a signal N killed it, as shells do).  ``ember
start`` / ``ember stop`` run a runtime with no head (see
:mod:`ember.runtime`), ``ember run --address`` runs a head in one.

Start-up, fast and without shelling out: the launcher takes the runtime's
lock (see below), creates the infrastructure pool (GS, shepherd and reply
channels live there) and the default pool, then forks global services and
the shepherd side by side — both are this same interpreter with everything
already imported, so they are serving within a millisecond — and asks GS to
create the head.  The head reads the launcher's stdin (every other managed
process gets /dev/null); if that is the terminal and the launcher is in its
foreground, the head's process group becomes the terminal's foreground
group for as long as the head runs (a REPL works, Ctrl-C goes to it).

Signals: SIGINT, SIGTERM and SIGHUP to the launcher are forwarded to the
head; if the head has not exited ``--grace`` seconds later, every managed
process is killed.  A second signal kills everything at once.  GS and the
shepherd ignore all three, so the same signal sent to the whole process
group (``kill -TERM -PGID``, ``timeout``, a batch system's job cancel) does
exactly what it does sent to the launcher alone.  Managed processes run in
their own process groups, so a group signal reaches them only through the
launcher.

Teardown, however the run ends, step by step and each step independent of
the others' failure: remaining processes get SIGTERM, then SIGKILL after the
grace period; every channel and pool is destroyed; GS and the shepherd exit
(if GS died, the shepherd is asked directly to kill and sweep what managed
processes started); the launcher unlinks anything left under its runtime id.
A failed step is reported and the run exits 70.  If the launcher is
SIGKILLed, GS and the shepherd die by PR_SET_PDEATHSIG, the managed
processes by theirs, and ``ember cleanup`` removes the segments.

Liveness for ``ember cleanup``: the launcher holds an exclusive flock on
``/dev/shm/ember.<runtime id>.lock`` for its whole life (GS and the shepherd
share it).  ``ember cleanup`` removes a runtime's segments only if it can
take that lock: this holds across pid namespaces that share /dev/shm and
whatever became of the launcher's pid.
"""
import os
import signal
import sys

from .. import __version__, _env, _log

EXIT_START_FAILED = 127
EXIT_RUNTIME_FAILED = 70
EXIT_USAGE = 2
_CONTROL_CAPACITY = 256      # slots of GS's and the shepherd's input channels (back-pressure beyond)
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

SHM_DIR = "/dev/shm"
_PID_MAX_LIMIT = 1 << 22     # the kernel's PID_MAX_LIMIT: no pid is larger

log = _log.get("launcher")


def _columns():
    """shutil.get_terminal_size() without importing shutil (and with it
    bz2 and lzma: ~5 ms at every start, for a width only --help uses)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


def _parser():
    import argparse

    class Formatter(argparse.HelpFormatter):
        def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
            super().__init__(prog, indent_increment, max_help_position,
                             _columns() - 2 if width is None else width)

    p = argparse.ArgumentParser(
        prog="ember", formatter_class=Formatter,
        description="ember: a runtime for Python programs that use many processes.",
        epilog="See `ember run --help` and `ember cleanup --help`; docs/user-guide.md.")
    p.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser(
        "run", help="run a program inside a new ember runtime", formatter_class=Formatter,
        description="Bring up global services and this node's shepherd, run PROGRAM as the "
                    "head process (a PROGRAM ending in .py runs with this Python interpreter, "
                    "anything else is executed as is, looked up in PATH), tear everything "
                    "down, and exit with the head's exit code (128+N if signal N killed it; "
                    "127 if it could not be started; 70 if the runtime failed).  The head "
                    "reads this command's stdin.")
    _runtime_flags(r)
    r.add_argument("--address", metavar="ADDR", default=os.environ.get("EMBER_ADDRESS"),
                   help="run PROGRAM in the already running runtime ADDR (an id or name printed "
                        "by `ember start`, or 'auto' for the only one running) instead of "
                        "starting a new one; default: $EMBER_ADDRESS if set")
    r.add_argument("program", metavar="PROGRAM", nargs="?",
                   help="the head program (path or command)")
    r.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments passed to PROGRAM")
    p.run_parser = r

    st = sub.add_parser(
        "start", help="start a runtime in the background and print its address",
        formatter_class=Formatter,
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
        formatter_class=Formatter,
        description="Tear down a running runtime: its processes get SIGTERM, then SIGKILL "
                    "after its grace period; its channels and pools are destroyed.")
    sp.add_argument("target", nargs="?", default="auto", metavar="NAME|ADDR",
                    help="the runtime's name, id or address file (default: the only one running)")
    sp.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="how long to wait for the teardown (default: 60)")

    c = sub.add_parser(
        "cleanup", help="remove shared memory left by runtimes whose launcher is gone",
        formatter_class=Formatter,
        description="Remove your /dev/shm segments of ember runtimes whose launcher is gone "
                    "(it no longer holds the runtime's lock) and of standalone pools whose "
                    "creating process no longer exists.  Segments of live runtimes, and "
                    "segments of other users, are never touched (the latter are listed).")
    c.add_argument("--dry-run", action="store_true", help="only list what would be removed")

    from . import inspect as _inspect     # ember ls/ps/stacks/channels/pools/events/top
    _inspect.add_parsers(sub, Formatter)
    return p


def _runtime_flags(r):
    """The flags shared by ``run`` and ``start``."""
    r.add_argument("--grace", type=_grace, default=_RUN_DEFAULTS["grace"], metavar="SECONDS",
                   help="after SIGINT/SIGTERM/SIGHUP, and at teardown between SIGTERM and "
                        "SIGKILL, wait this long for processes to exit (default: 5)")
    r.add_argument("--label", choices=("none", "puid", "name"), default=_RUN_DEFAULTS["label"],
                   help="prefix each output line of managed processes with its p_uid or name "
                        "(default: none)")
    r.add_argument("--default-pool-size", type=_size, default=_RUN_DEFAULTS["default_pool_size"],
                   metavar="SIZE",
                   help="size of the runtime's default pool, sparse (default: 1G; suffixes "
                        "K, M, G, T, P or KiB, MiB, ...: powers of 1024)")
    r.add_argument("--inf-pool-size", type=_size, default=_RUN_DEFAULTS["inf_pool_size"],
                   metavar="SIZE",
                   help="size of the infrastructure pool for control channels, sparse "
                        "(default: 256M)")
    r.add_argument("--no-death-reports", dest="death_reports", action="store_false",
                   help="do not print a line on stderr for managed processes that die "
                        "unexpectedly or are still running when the head exits")


def _size_value(text):
    from .._size import parse_size
    return parse_size(text)


def _grace_value(text):
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (0 <= v < float("inf")):
        raise ValueError(f"must be a number of seconds >= 0, got {text!r}")
    return v


def _label_value(text):
    if text not in ("none", "puid", "name"):
        raise ValueError(text)
    return text


def _arg_type(fn):
    """An argparse ``type=`` that shows ``fn``'s ValueError message."""
    def convert(text):
        import argparse
        try:
            return fn(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


_size = _arg_type(_size_value)
_grace = _arg_type(_grace_value)

# ``ember run``'s options: flag -> (dest, converter or the constant of a
# store_false/true flag).  _fast_run_args() parses exactly these; a flag added
# to _parser() must be added here too (a test compares the two).
_RUN_DEFAULTS = {"grace": 5.0, "label": "none", "default_pool_size": 1 << 30,
                 "inf_pool_size": 256 << 20, "death_reports": True}
_RUN_OPTIONS = {"--grace": ("grace", _grace_value), "--label": ("label", _label_value),
                "--address": ("address", str),
                "--default-pool-size": ("default_pool_size", _size_value),
                "--inf-pool-size": ("inf_pool_size", _size_value)}
_RUN_FLAGS = {"--no-death-reports": ("death_reports", False)}


def _fast_run_args(argv):
    """The arguments of a well-formed ``ember run [OPTIONS] PROGRAM [ARGS]``
    without argparse (whose import and set-up cost ~5 ms of every start);
    None for anything else -- help, other commands, abbreviations, bad
    values, no PROGRAM -- which argparse then parses or reports."""
    import types
    if not argv or argv[0] != "run":
        return None
    ns = dict(_RUN_DEFAULTS, command="run", address=os.environ.get("EMBER_ADDRESS"))
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        arg = argv[i]
        if arg in _RUN_FLAGS:
            dest, const = _RUN_FLAGS[arg]
            ns[dest] = const
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name not in _RUN_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            value = argv[i + 1]
        i += 1 if eq else 2
        dest, convert = _RUN_OPTIONS[name]
        try:
            ns[dest] = convert(value)
        except ValueError:
            return None
    if i >= len(argv):
        return None
    ns.update(program=argv[i], args=list(argv[i + 1:]))
    return types.SimpleNamespace(**ns)


def _shm_free():
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def _check_sizes(args):
    """Refuse a pool that /dev/shm could never back (the pools are sparse,
    but touching a page tmpfs cannot give is SIGBUS).  Prints the usage
    error and returns False, or returns True."""
    try:
        free = _shm_free()
    except OSError:
        return True
    for flag, size in (("--default-pool-size", args.default_pool_size),
                       ("--inf-pool-size", args.inf_pool_size)):
        if size > free:
            from .._size import format_size
            _parser().run_parser.print_usage(sys.stderr)
            print(f"ember {args.command}: error: {flag} {format_size(size)} ({size} bytes) is larger than "
                  f"the free space of {SHM_DIR} ({format_size(free)}, {free} bytes)",
                  file=sys.stderr)
            return False
    return True


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
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _fast_run_args(argv)
    if args is None:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command == "cleanup":
            return cleanup(dry_run=args.dry_run)
        if args.command == "stop":
            return stop(args.target, args.timeout)
        from . import inspect as _inspect
        if args.command in _inspect.COMMANDS:
            return _inspect.main(args)
        if args.command == "run" and args.program is None:
            parser.run_parser.error("the following arguments are required: PROGRAM")
    try:
        level = _log.level_from_env()
    except ValueError as exc:
        print(f"ember: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log.level = level
    if not _check_sizes(args):
        return EXIT_USAGE
    if args.command == "start":
        if not args.foreground and not args.detach:
            args.detach = True
        if args.detach:
            return _daemonize(args)
        return Launcher(args).run()
    if args.address:
        return Launcher(args).run_attached(args.address)
    return Launcher(args).run()


def entry():
    """The ``ember`` command and ``python -m ember``: :func:`main`, then exit
    without the interpreter's finalization (a few ms of freeing modules at
    the end of every run; everything of ours is closed by then)."""
    code = main()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(code)


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



# --------------------------------------------------------------- proc titles
def _set_title(title):
    """Name this process in ``ps`` (its /proc/PID/cmdline) with setproctitle.
    The C extension is loaded by itself: the package's __init__ imports
    ``logging`` (~15 ms), which no ember process otherwise needs."""
    try:
        from importlib import machinery
        spec = machinery.PathFinder.find_spec("setproctitle")
        mod = sys.modules.get("setproctitle._setproctitle")
        if mod is None and spec is not None and spec.submodule_search_locations:
            for d in spec.submodule_search_locations:
                for suffix in machinery.EXTENSION_SUFFIXES:
                    path = os.path.join(d, "_setproctitle" + suffix)
                    if os.path.exists(path):
                        loader = machinery.ExtensionFileLoader("setproctitle._setproctitle", path)
                        mspec = machinery.ModuleSpec("setproctitle._setproctitle", loader,
                                                     origin=path)
                        mod = loader.create_module(mspec)
                        loader.exec_module(mod)
                        sys.modules["setproctitle._setproctitle"] = mod
                        break
                if mod is not None:
                    break
        if mod is None:
            import setproctitle as mod
        mod.setproctitle(title)
    except Exception as exc:   # a name in ps is never worth failing a run
        log.debug("cannot set the process title %r: %r", title, exc)


# ------------------------------------------------------------------ cleanup
def _lock_name(runtime_id):
    return f"ember.{runtime_id}.lock"


def _take_lock(path, create):
    """Open ``path`` and take an exclusive flock without waiting.  Returns
    the fd (the lock is held while it is open), None if someone holds the
    lock, raises OSError if the file cannot be opened."""
    import fcntl
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _pid_alive(pid):
    if not 0 < pid <= _PID_MAX_LIMIT:
        return False             # no process can have this pid (a crafted name)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name):
    """(kind, owner id, pid) of an ember segment name, or None.
    ``ember.r<pid>-<hex>[-tag].<x>`` is a runtime's (owner id up to the
    second dot), ``ember.p<pid>[-tag].<x>`` a standalone pool's."""
    if not name.startswith("ember."):
        return None
    owner = name[6:].split(".", 1)[0]
    kind = owner[:1]
    digits = owner[1:].split("-", 1)[0]
    if kind not in ("r", "p") or not digits.isascii() or not digits.isdigit():
        return None
    return kind, owner, int(digits)


def cleanup(dry_run=False, out=sys.stdout):
    """Remove the calling user's segments whose owner is gone (see the
    module docstring); skip and list other users' segments and anything
    that cannot be removed.  Returns 0."""
    uid = os.geteuid()
    try:
        names = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        names = []
    by_owner = {}
    for name in names:
        o = _owner(name)
        if o is not None:
            by_owner.setdefault(o, []).append(name)
    removed = skipped = 0
    for (kind, owner, pid), seg_names in sorted(by_owner.items()):
        mine = []
        for name in seg_names:
            try:
                st = os.lstat(os.path.join(SHM_DIR, name))
            except FileNotFoundError:
                continue
            if st.st_uid != uid:
                print(f"skipped {SHM_DIR}/{name}: owned by uid {st.st_uid}, not by you",
                      file=out)
                skipped += 1
            else:
                mine.append(name)
        if not mine:
            continue
        lock_fd = None
        lock = _lock_name(owner)
        if kind == "r" and lock in mine:
            try:
                lock_fd = _take_lock(os.path.join(SHM_DIR, lock), create=False)
            except OSError as exc:
                print(f"skipped {SHM_DIR}/{lock} and its runtime: cannot open the lock: {exc}",
                      file=out)
                skipped += len(mine)
                continue
            if lock_fd is None:
                continue                 # the launcher (or its GS/shepherd) holds it: alive
            mine.remove(lock)
            mine.append(lock)            # unlinked last, while we hold it
        elif _pid_alive(pid):
            # A standalone pool (or a runtime of an ember without lock files):
            # only its creator's pid tells liveness.
            continue
        try:
            for name in mine:
                path = os.path.join(SHM_DIR, name)
                if dry_run:
                    print(f"would remove {path}", file=out)
                    removed += 1
                    continue
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    print(f"skipped {path}: {exc.strerror}", file=out)
                    skipped += 1
                    continue
                print(f"removed {path}", file=out)
                removed += 1
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
    if not removed and not skipped:
        print("nothing to clean up", file=out)
    return 0


# ------------------------------------------------------------------- runtime
class _Signalled(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _ChildDied(BaseException):
    def __init__(self, role, text):
        super().__init__(text)
        self.role = role


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
        self.dead = set()         # roles that died unexpectedly
        self.head = None
        self.head_pidfd = None
        self.signals = 0
        self.failed = False       # a teardown step failed: exit 70
        self.tty = None           # fd of the terminal handed to the head, if any
        self.shm_lock_fd = None

    # The forked services.  Each returns via os._exit, never to the caller.
    def _fork(self, role, title, fn):
        for f in (sys.stdout, sys.stderr):
            if f is not None:
                f.flush()
        pid = os.fork()
        if pid:
            self.children[pid] = role
            log.debug("forked %s: pid %d", role, pid)
            return pid
        code = 1
        try:
            if getattr(self.args, "ready_fd", None) is not None:
                os.close(self.args.ready_fd)     # only the launcher says "ready"
            _set_pdeathsig()
            if os.getppid() != self.launcher_pid:
                os._exit(1)
            # Signals meant for the job are the launcher's to handle: the
            # services ignore them (they are blocked since before the fork,
            # so none can slip in before this).
            for s in _FORWARDED:
                signal.signal(s, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            _set_title(title)
            code = fn()
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code if isinstance(code, int) else 1)

    def run(self):
        from ..channels_c import Channel
        from ..exceptions import EmberError
        from ..pools_c import Pool

        a = self.args
        self.launcher_pid = os.getpid()
        # Until the head exists, the job's signals wait (then go to the head).
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        if a.command == "run":
            _set_title(" ".join(["ember: launcher", a.program] + a.args))
        else:
            _set_title("ember: runtime host" + (f" {a.name}" if getattr(a, "name", None) else ""))
        try:
            self.shm_lock_fd = self._runtime_lock()
        except OSError as exc:
            print(f"ember: cannot create the runtime's lock in {SHM_DIR}: {exc}", file=sys.stderr)
            return EXIT_RUNTIME_FAILED
        log.info("runtime %s: lock %s/%s taken", self.tag, SHM_DIR, _lock_name(self.tag))
        inf = dflt = gs_ch = sh_ch = None
        self.ctl = None
        code = EXIT_RUNTIME_FAILED
        try:
            try:
                inf = Pool.create(a.inf_pool_size, name="ember-infrastructure", m_uid=0,
                                  owner_tag=self.tag)
            except (EmberError, OSError, ValueError) as exc:
                print(f"ember: cannot create the infrastructure pool: {exc}", file=sys.stderr)
                return EXIT_RUNTIME_FAILED
            log.info("infrastructure pool created (%d bytes)", a.inf_pool_size)
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
            log.info("default pool created (%d bytes); control channels created",
                     a.default_pool_size)
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
            # Everything the three need, imported once here: after the fork
            # GS and the shepherd serve at once, with no import of their own
            # competing with the launcher's for the CPU.
            from .. import messages  # noqa: F401
            from ..globalservices import process, server as _gs_server  # noqa: F401
            from ..shepherd import server as _sh_server  # noqa: F401
            from . import _forkhead  # noqa: F401  (the shepherd forks a .py head with it)
            death_reports = getattr(a, "death_reports", True)
            import secrets
            self.key = secrets.token_hex(16)     # what an attaching process must show
            self._fork("global services", "ember: global services",
                       lambda: _gs_main(gs_ch, sh_ch, self.tag, dflt, self.ctl, death_reports,
                                        self.key))
            self._fork("shepherd", "ember: shepherd node 0",
                       lambda: _sh_main(sh_ch, gs_ch, a.label, self.ctl, death_reports))
            try:
                signal.signal(signal.SIGCHLD, self._on_sigchld)
                self._on_sigchld(signal.SIGCHLD, None)    # one that died before this
                log.info("global services and shepherd forked")
                try:
                    self._publish(inf, gs_ch, dflt)
                except Exception as exc:
                    print(f"ember: cannot publish the runtime's address: {exc}", file=sys.stderr)
                    self._ready(f"cannot publish the runtime's address: {exc}")
                    return EXIT_RUNTIME_FAILED
                if a.command == "start":
                    code = self._serve_host()
                else:
                    code = self._run_head(process)
            except _ChildDied as exc:                     # outside _run_head's own catch
                print(f"ember: runtime failure: {exc}", file=sys.stderr)
                self.broken = True
                code = EXIT_RUNTIME_FAILED
        finally:
            self._shutdown(gs_ch, sh_ch, inf, dflt)
            self._unpublish()
        if self.failed:
            return EXIT_RUNTIME_FAILED
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
        prev = {s: signal.signal(s, self._on_signal) for s in _FORWARDED}
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)   # blocked since run() began
            if a.ready_fd is not None:
                self._ready(self.address.path)
            else:
                print(f"ember: runtime {self.tag} running; address {self.address.path}; "
                      f"stop with `ember stop {getattr(a, 'name', None) or self.tag}`", flush=True)
            import select
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
        self.attached = True
        try:
            from ..globalservices import process
            return self._run_head(process)
        finally:
            if self.head_pidfd is not None:
                os.close(self.head_pidfd)
            runtime.shutdown()

    def _runtime_lock(self):
        """Create and flock ``/dev/shm/ember.<tag>.lock``; check that the
        path still names the file we locked (a concurrent ``ember cleanup``
        may take a fresh lock file for an orphan and unlink it)."""
        path = os.path.join(SHM_DIR, _lock_name(self.tag))
        for _ in range(5):
            fd = _take_lock(path, create=True)
            if fd is None:
                continue
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
        raise OSError(f"{path} keeps being taken or removed by someone else")

    def _on_sigchld(self, signum, frame):
        for pid, role in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.children.pop(pid, None)
                if not getattr(self, "stopping", False):
                    self.dead.add(role)
                    raise _ChildDied(role, f"{role} exited unexpectedly "
                                           f"(status {os.waitstatus_to_exitcode(status)})")

    def _on_signal(self, signum, frame):
        raise _Signalled(signum)

    # --- the terminal ------------------------------------------------------
    def _give_terminal(self, pgid):
        """If our stdin is the terminal and we are its foreground group,
        make the head's group the foreground one (or its reads would stop
        it with SIGTTIN), and wake it should it have stopped already."""
        try:
            if not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
                return
            os.tcsetpgrp(0, pgid)
        except OSError as exc:
            log.debug("terminal not handed to the head: %s", exc)
            return
        self.tty = 0
        log.debug("terminal's foreground process group: %d (the head)", pgid)
        try:
            os.killpg(pgid, signal.SIGCONT)
        except OSError:
            pass

    def _take_terminal_back(self):
        if self.tty is None:
            return
        # We are a background group now: tcsetpgrp would stop us with SIGTTOU.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(self.tty, os.getpgrp())
        except OSError as exc:
            log.debug("cannot take the terminal back: %s", exc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            self.tty = None

    # --- the head ----------------------------------------------------------
    def _run_head(self, process):
        a = self.args
        for s in _FORWARDED:
            signal.signal(s, self._on_signal)
        try:
            prog = a.program
            if prog.endswith(".py"):
                if not os.path.isfile(prog):
                    why = "Is a directory" if os.path.isdir(prog) else "No such file"
                    print(f"ember: cannot run {prog!r}: {why}", file=sys.stderr)
                    return EXIT_START_FAILED
                exe, argv = sys.executable, [prog] + a.args
                # The shepherd runs it in a fork of itself (saves an interpreter start).
                fork = os.environ.get(_env.FORK_PY, "1") == "1"
            else:
                exe, argv, fork = prog, a.args, False
            # The job's signals are blocked since run() began; they are
            # delivered (and forwarded to the head) as soon as it exists.
            try:
                env = {}
                if not getattr(self, "attached", False):
                    # (attached, the runtime's shepherd has another stdin, and
                    # its interpreter is not ours)
                    env[_env.STDIN] = "inherit"
                    if fork:
                        env[_env.FORK_PY] = "1"
                self.head = process.create(exe, os.getcwd(), argv, env=env)
            except Exception as exc:
                print(f"ember: cannot start {prog!r}: {exc}", file=sys.stderr)
                return EXIT_START_FAILED
            finally:
                if self.head is not None:
                    log.info("head created: p_uid %d, pid %d: %s", self.head.p_uid,
                             self.head.os_pid, " ".join([exe] + argv))
                    try:
                        self.head_pidfd = os.pidfd_open(self.head.os_pid)
                    except OSError:
                        self.head_pidfd = None   # already gone: join will say so
                    else:
                        self._give_terminal(self.head.os_pid)
                try:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
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
                    log.info("head exited: %d", code)
                    self._take_terminal_back()
                    self._report_survivors(process)
                    return code if code >= 0 else 128 - code
                except _Signalled as s:
                    self.signals += 1
                    if self.signals > 1:
                        print("ember: second signal: killing everything", file=sys.stderr)
                        self.grace_override = 0.0
                        return 128 + s.signum
                    log.info("signal %d: forwarded to the head", s.signum)
                    self._forward(s.signum)
                    deadline = time.monotonic() + a.grace
        except _ChildDied as exc:
            print(f"ember: runtime failure: {exc}", file=sys.stderr)
            self.broken = True
            return EXIT_RUNTIME_FAILED
        finally:
            # Teardown must not be cut short by the job's signals.
            for s in _FORWARDED:
                signal.signal(s, signal.SIG_IGN)

    def _report_survivors(self, process):
        """The head is gone: say which processes teardown is about to kill."""
        if not getattr(self.args, "death_reports", True) or getattr(self, "attached", False):
            return                # (attached: the runtime lives on, nothing is terminated)
        try:
            try:
                pairs = process.get_list(alive_only=True)   # an API that lists exited ones too
            except TypeError:
                pairs = process.get_list()                  # one that lists live ones only
            live = [(p, n) for p, n in pairs if p != self.head.p_uid]
        except Exception as exc:
            log.warning("cannot list the remaining processes: %s", exc)
            return
        if live:
            what = ", ".join(f"{p} {n!r}" if n else str(p) for p, n in sorted(live))
            noun = "process" if len(live) == 1 else "processes"
            print(f"ember: head exited; terminating {len(live)} running {noun}: {what}",
                  file=sys.stderr, flush=True)

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

    # --- teardown ----------------------------------------------------------
    def _step(self, what, fn, *args):
        """One teardown step: run it; on failure report it and go on."""
        try:
            fn(*args)
        except BaseException as exc:     # every step runs, whatever the others did
            self.failed = True
            print(f"ember: teardown: {what} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
        else:
            log.debug("teardown: %s", what)

    def _shutdown(self, gs_ch, sh_ch, inf, dflt):
        self.stopping = True
        # From here on _reap() waits for GS and the shepherd itself.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for s in _FORWARDED:
            signal.signal(s, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        log.info("teardown")
        self._step("giving the terminal back", self._take_terminal_back)
        if self.children:
            if getattr(self, "broken", False) or self.dead:
                self._step("stopping the shepherd", self._stop_shepherd, sh_ch)
            else:
                self._step("teardown through global services", self._teardown_gs)
        self._step("reaping global services and the shepherd", self._reap)
        if self.head_pidfd is not None:
            self._step("closing the head's pidfd", os.close, self.head_pidfd)
            self.head_pidfd = None
        self._step("closing the connection to global services", self._close_client)
        for what, obj in (("GS's input channel", gs_ch),
                          ("the default pool", dflt), ("the control plane", self.ctl),
                          ("the infrastructure pool", inf)):
            if obj is not None:
                self._step(f"destroying {what}", self._destroy, obj)
        self._step("unlinking the runtime's segments", self._sweep)

    @staticmethod
    def _destroy(obj):
        errors = obj.destroy()           # ControlPlane.destroy returns its errors
        if errors:
            raise errors[0]

    def _teardown_gs(self):
        from .. import messages
        from ..globalservices import _client
        grace = getattr(self, "grace_override", self.args.grace)
        try:
            _client.connection().call(messages.Teardown, grace, timeout=grace + 10.0)
        except _ChildDied as exc:
            raise RuntimeError(str(exc)) from None

    def _stop_shepherd(self, sh_ch):
        """GS (or the shepherd) is dead.  If the shepherd lives, ask it
        directly to kill every child and sweep their process groups (no
        reply: nobody could read it); GS, if alive, is of no use and goes."""
        from .. import messages
        roles = {role: pid for pid, role in self.children.items()}
        if "shepherd" in roles and sh_ch is not None:
            sh_ch.send(messages.ShShutdown(None).pack(), timeout=1.0)
            log.info("asked the shepherd to kill and sweep every managed process")
        gs = roles.get("global services")
        if gs is not None:
            os.kill(gs, signal.SIGKILL)

    def _close_client(self):
        from ..globalservices import _client
        conn = _client._conn
        if conn is not None:
            conn.close()

    def _reap(self):
        """Wait for GS and the shepherd to exit (pidfd, no sleeping loops);
        SIGKILL whatever is still there after a bound (long enough for the
        shepherd's sweep, which waits up to 2 s for its victims)."""
        import select
        import time
        deadline = time.monotonic() + 5.0
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
                        print(f"ember: teardown: {self.children[pid]} did not exit; killing it",
                              file=sys.stderr)
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                finally:
                    os.close(fd)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid, None)

    def _sweep(self):
        """Unlink every segment still carrying this runtime's id (a GS that
        died could not destroy its pools), the lock last; then let it go."""
        prefix = f"ember.{self.tag}."
        lock = _lock_name(self.tag)
        try:
            names = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix) and n != lock]
            errors = []
            for n in names + [lock]:
                try:
                    os.unlink(os.path.join(SHM_DIR, n))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    errors.append(f"{n}: {exc.strerror}")
            if names:
                log.info("unlinked %d leftover segment(s): %s", len(names), " ".join(names))
            if errors:
                raise OSError("cannot unlink " + "; ".join(errors))
        finally:
            if self.shm_lock_fd is not None:
                os.close(self.shm_lock_fd)
                self.shm_lock_fd = None


if __name__ == "__main__":  # pragma: no cover
    entry()
