"""The ``ember`` command line: ``ember run``, ``start``, ``stop``, ``cleanup``.

Argument parsing and dispatch only: the runtime's bring-up, head and
teardown are :mod:`ember.launcher.host`; attaching is :mod:`ember.runtime`.

``ember run PROGRAM [ARGS...]`` brings up a runtime on this node, runs
PROGRAM in it as the head process, tears everything down and exits with the
head's exit code (128+N if a signal N killed it, as shells do).  ``ember
start`` / ``ember stop`` run a runtime with no head (see
:mod:`ember.runtime`), ``ember run --address`` runs a head in one.

Start-up, fast and without shelling out: the launcher takes the runtime's
lock (see below), creates the infrastructure pool (GS, shepherd and reply
channels live there) and the default pool, then forks the shepherd and
global services side by side — both are this same interpreter with everything
already imported (and the launcher's objects frozen out of the cyclic GC, so
that a forked process does not copy the whole heap), so they are serving
within a millisecond — and asks GS to create the head (a ``.py`` head is a
fork of the shepherd).  The head reads the launcher's stdin (every other managed
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
import stat
import time
import sys

from .. import __version__, _env, _log
from .host import (  # the runtime's host: bring-up, head, teardown
    EXIT_RUNTIME_FAILED, EXIT_START_FAILED, EXIT_USAGE, Launcher, _lock_name, _take_lock)  # noqa: F401

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
    mn = r.add_argument_group(
        "several nodes (docs/multinode.md)",
        "One runtime across nodes: GS and the head on this node (node 0), a shepherd and a "
        "transport agent on every other node, channel traffic between nodes over ZeroMQ "
        "encrypted and authenticated with CURVE keys made for this run (handed to the nodes on "
        "their stdin, never on a command line).  Inside a Slurm allocation of several nodes "
        "the nodes are started with srun automatically (this node must be one of them); "
        "otherwise give --hosts (ssh, keys already set up).  Output of remote processes comes "
        "here.  Teardown reaches every node; if this launcher is killed, each node's watchdog "
        "kills what ran there.")
    mn.add_argument("--hosts", metavar="HOSTS", default=None,
                    help="run on these hosts over ssh: 'n1,n2,n3' or '@FILE' (one per line); the "
                         "first is node 0, this host; 'local:N': N nodes on this machine (to "
                         "try it, tests)")
    mn.add_argument("--ssh-config", metavar="FILE", default=None,
                    help="ssh config file for --hosts (ssh -F FILE)")
    mn.add_argument("--label-output", action="store_true",
                    help="prefix each output line of another node with [node N]")
    mn.add_argument("--fail-fast-on-node-loss", action="store_true",
                    help="end the run (kill every process) when a node is lost; by default its "
                         "processes are reported lost (exit code 255) and the run goes on")
    mn.add_argument("--single-node", action="store_true",
                    help="inside a Slurm allocation, use this node only")
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
                    "segments of other users, are never touched (the latter are listed).  "
                    "Also removes the event logs of runtimes no longer running: those older "
                    "than --events-age, and the oldest beyond the caps --events-keep (a "
                    "count) and --events-max-size (their total size).")
    c.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    c.add_argument("--events-age", type=_duration_arg, default=DEFAULT_EVENTS_AGE,
                   metavar="DURATION",
                   help="also remove the event logs (<runtime dir>/<id>.events) of runtimes "
                        "that are no longer running and whose last event is older than "
                        "DURATION: a number of seconds or a number with a unit s, m, h, d, w "
                        "(default: 7d; 0: every finished runtime's log)")
    c.add_argument("--events-keep", type=_count_arg, default=DEFAULT_EVENTS_KEEP, metavar="N",
                   help="also keep at most the N newest event logs of finished runtimes, "
                        "removing older ones whatever their age (default: %(default)s)")
    c.add_argument("--events-max-size", type=_size_arg, default=DEFAULT_EVENTS_MAX_SIZE,
                   metavar="SIZE",
                   help="also keep the event logs of finished runtimes within SIZE in all "
                        "(e.g. 64M, 1G), removing the oldest first (default: 64M); a running "
                        "runtime's log is never removed and does not count")
    c.add_argument("--events-only", action="store_true",
                   help="only remove old event logs; leave /dev/shm alone")
    c.add_argument("--tag", type=_tag_arg, default=None, metavar="TAG",
                   help="only look at runtimes and standalone pools whose owner carries TAG, "
                        "the EMBER_SEGMENT_TAG they were made under (ember.r<pid>-<hex>-TAG.*, "
                        "ember.p<pid>-TAG.*): a test suite's or CI job's own, on a machine "
                        "others use at the same time; every other segment, lock and file is "
                        "left unread")

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
_RUN_ONLY_DEFAULTS = {"hosts": None, "ssh_config": None, "label_output": False,
                      "fail_fast_on_node_loss": False, "single_node": False}
_RUN_OPTIONS = {"--grace": ("grace", _grace_value), "--label": ("label", _label_value),
                "--address": ("address", str), "--hosts": ("hosts", str),
                "--ssh-config": ("ssh_config", str),
                "--default-pool-size": ("default_pool_size", _size_value),
                "--inf-pool-size": ("inf_pool_size", _size_value)}
_RUN_FLAGS = {"--no-death-reports": ("death_reports", False),
              "--label-output": ("label_output", True),
              "--fail-fast-on-node-loss": ("fail_fast_on_node_loss", True),
              "--single-node": ("single_node", True)}


def _fast_run_args(argv):
    """The arguments of a well-formed ``ember run [OPTIONS] PROGRAM [ARGS]``
    without argparse (whose import and set-up cost ~5 ms of every start);
    None for anything else -- help, other commands, abbreviations, bad
    values, no PROGRAM -- which argparse then parses or reports."""
    import types
    if not argv or argv[0] != "run":
        return None
    ns = dict(_RUN_DEFAULTS, command="run", address=os.environ.get("EMBER_ADDRESS"),
              **_RUN_ONLY_DEFAULTS)
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
    # Sizes left at their defaults shrink to what /dev/shm can hold (Docker
    # gives containers 64 MiB): half of the free space for the default pool,
    # an eighth for the infrastructure pool.  Sizes asked for are not changed.
    for key, share in (("default_pool_size", 2), ("inf_pool_size", 8)):
        if getattr(args, key) == _RUN_DEFAULTS[key] and getattr(args, key) > free // share:
            setattr(args, key, max(free // share // (1 << 20), 1) << 20)
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
    parser = None
    if args is None:
        parser = _parser()
        args = parser.parse_args(argv)
    if args.command not in ("run", "start") or getattr(args, "address", None):
        import gc
        gc.enable()           # no bring-up here: see entry()
    if parser is not None:
        if args.command == "cleanup":
            if not args.events_only:
                cleanup(dry_run=args.dry_run, tag=args.tag)
            return cleanup_events(args.events_age, dry_run=args.dry_run,
                                  keep=args.events_keep, max_size=args.events_max_size,
                                  tag=args.tag)
        if args.command == "stop":
            return stop(args.target, args.timeout)
        from . import inspect as _inspect
        if args.command in _inspect.COMMANDS:
            return _inspect.main(args)
        if args.command == "run" and args.program is None:
            parser.run_parser.error("the following arguments are required: PROGRAM")
    try:
        level = _log.level_from_env()
        for name in _env.SECONDS:
            _env.seconds(name, None)
    except ValueError as exc:
        print(f"ember: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log.level = level
    if not _check_sizes(args):
        return EXIT_USAGE
    if args.command == "start":
        from .. import runtime
        from ..exceptions import GlobalServicesError
        try:
            runtime.check_name_free(args.name)
        except GlobalServicesError as exc:
            print(f"ember start: {exc}", file=sys.stderr)
            return 1
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
    the end of every run; everything of ours is closed by then).

    The cyclic GC is off from here (from the start of ``python -m ember``)
    until a runtime's bring-up has frozen what it allocated
    (:meth:`Launcher.run`; any other command turns it on in :func:`main`):
    the imports of a bring-up allocate ~11000 tracked objects, most of them
    for good, and ~23 collections went through them for nothing (~1.5 ms
    of every ``ember run``)."""
    import gc
    gc.disable()
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



# ------------------------------------------------------------------ cleanup
#: ``ember cleanup --events-age`` default: a week.
DEFAULT_EVENTS_AGE = 7 * 86400.0
#: ``ember cleanup --events-keep`` and ``--events-max-size`` defaults: a
#: runtime's log is ~1-150 KB; a test suite or a benchmark starts hundreds
#: of runtimes a day, which the age alone would keep for a week.
DEFAULT_EVENTS_KEEP = 200
DEFAULT_EVENTS_MAX_SIZE = 64 << 20
_DURATION = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*$"   # (re: loaded on use, not at start-up)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text):
    """Seconds (a float >= 0) of ``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or a
    plain number of seconds; ValueError quoting ``text`` otherwise."""
    import re
    mo = re.match(_DURATION, str(text), re.IGNORECASE)
    if not mo:
        raise ValueError(f"not a duration: {text!r} (use seconds or a number with a unit "
                         f"s, m, h, d, w, e.g. 7d, 12h, 30m)")
    return float(mo.group(1)) * _DURATION_UNITS[mo.group(2).lower()]


def _count_arg(text):
    import argparse
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (a whole number >= 0)")
    return n


def _tag_arg(text):
    import argparse
    if not (0 < len(text) <= 8 and text.isascii() and text.replace("_", "a").isalnum()):
        raise argparse.ArgumentTypeError(f"not a segment tag: {text!r} (1-8 of A-Z a-z 0-9 _)")
    return text


def _size_arg(text):
    import argparse
    from .._size import parse_size
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_arg(text):
    import argparse
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _runtime_running(runtime_id):
    """True while the launcher of ``runtime_id`` holds its lock (or the lock
    cannot be checked: then we keep what belongs to it)."""
    path = os.path.join(SHM_DIR, _lock_name(runtime_id))
    try:
        fd = _take_lock(path, create=False)
    except FileNotFoundError:
        return False           # removed at teardown (or never made): not running
    except OSError:
        return True
    if fd is None:
        return True
    os.close(fd)
    return False


def cleanup_events(max_age, dry_run=False, out=sys.stdout, now=None, keep=None,
                   max_size=None, d=None, tag=None):
    """Remove the event logs ``<runtime dir>/<id>.events`` (``d``: that
    directory; None: this process's :func:`ember.runtime.runtime_dir`) of runtimes that
    are not running (their launcher holds no lock) and whose last event
    (the file's mtime) is older than ``max_age`` seconds; and, newest
    first, every such log beyond the ``keep`` newest or beyond ``max_size``
    bytes in all (None: no cap).  A running runtime's log is never removed
    and does not count.  ``tag``: only the runtimes whose id carries it
    (:func:`_tag_of`).  Returns 0."""
    from ..runtime import runtime_dir
    from ..exceptions import GlobalServicesError
    try:
        d = runtime_dir(create=False) if d is None else d
        names = sorted(os.listdir(d))
    except (FileNotFoundError, GlobalServicesError):
        return 0
    now = time.time() if now is None else now
    capped = keep is not None or max_size is not None
    logs = []                      # the finished runtimes' logs: (mtime, name, path, size, old)
    for name in names:
        rid, dot, ext = name.rpartition(".")
        if ext != "events" or not dot or not rid or "/" in rid or \
                (tag is not None and _tag_of(rid) != tag):
            continue
        path = os.path.join(d, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        old = now - st.st_mtime >= max_age
        if not (old or capped) or _runtime_running(rid):
            continue
        logs.append((st.st_mtime, name, path, st.st_size, old))
    logs.sort(reverse=True)        # newest first: the caps keep the newest
    kept = total = 0
    full = False                   # a cap was reached: every older log goes
    for _, _, path, size, old in logs:
        if not old and not full:
            if (keep is None or kept < keep) and (max_size is None or total + size <= max_size):
                kept += 1
                total += size
                continue
            full = True
        if dry_run:
            print(f"would remove {path}", file=out)
            continue
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            print(f"skipped {path}: {exc.strerror}", file=out)
            continue
        print(f"removed {path}", file=out)
    return 0


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


def _tag_of(owner):
    """The EMBER_SEGMENT_TAG an owner id (``r<pid>-<hex>-<tag>``,
    ``p<pid>-<tag>``) carries, or None."""
    parts = owner.split("-")
    return parts[-1] if len(parts) == (3 if owner[:1] == "r" else 2) else None


def cleanup(dry_run=False, out=sys.stdout, tag=None):
    """Remove the calling user's segments whose owner is gone (see the
    module docstring); skip and list other users' segments and anything
    that cannot be removed.  ``tag``: only the owners that carry it
    (:func:`_tag_of`); nothing else is looked at (no other lock taken, not
    even for a moment).  Returns 0."""
    uid = os.geteuid()
    try:
        names = sorted(os.listdir(SHM_DIR))
    except FileNotFoundError:
        names = []
    by_owner = {}
    for name in names:
        o = _owner(name)
        if o is not None and (tag is None or _tag_of(o[1]) == tag):
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
    removed += _stale_introspection(dry_run, out, tag)
    if not removed and not skipped:
        print("nothing to clean up", file=out)
    return 0


def _stale_introspection(dry_run, out, tag=None):
    """The process-slots tables (``<id>.slots``) and stack directories
    (``<id>.stacks``) in the runtime dir of runtimes that are gone: no lock
    segment of theirs is left in /dev/shm (a live runtime holds one from its
    start to its end).  Returns how many were (or would be) removed."""
    from ..runtime import _remove_introspection, runtime_dir
    try:
        d = runtime_dir(create=False)
        entries = os.listdir(d)
    except OSError:
        return 0
    try:
        shm = set(os.listdir(SHM_DIR))
    except OSError:
        return 0
    n = 0
    for rid in sorted({e.rsplit(".", 1)[0] for e in entries
                       if e.endswith((".slots", ".stacks"))}):
        if not rid.startswith("r") or _lock_name(rid) in shm or \
                (tag is not None and _tag_of(rid) != tag):
            continue
        paths = [os.path.join(d, rid + sfx) for sfx in (".slots", ".stacks")
                 if rid + sfx in entries]
        if not dry_run:
            _remove_introspection(d, rid)
        for path in paths:
            print(f"{'would remove' if dry_run else 'removed'} {path}", file=out)
            n += 1
    return n


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
