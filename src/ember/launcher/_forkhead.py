"""Run a ``.py`` head in a fork of the shepherd instead of a new interpreter.

The shepherd is a fork of the launcher: an interpreter already started,
with ember imported.  Starting the head as ``python3 prog.py`` costs a whole
interpreter start (~10 ms, a third of ``ember run``'s overhead); forking the
shepherd and running ``prog.py`` in it costs ~1-2 ms.  The head is
still an ordinary managed process for the shepherd (a pid it watches through
a pidfd, pipes it forwards, its own process group, PR_SET_PDEATHSIG), and
for its program it looks like ``python3 prog.py ARGS``: ``sys.argv``,
``sys.path[0]`` (the script's directory), ``__main__``, the environment,
the working directory, a new ``__main__`` module, fresh ``sys.std*`` on fds 0-2, default signal
handling (SIGINT raises KeyboardInterrupt), ``sys.exit`` codes, uncaught
exceptions printed and exit 1, non-daemon threads joined and ``atexit``
handlers run at the end.  What differs: the interpreter's flags are the
launcher's (``python3 -X ... -m ember run`` passes its ``-X``, ``-O``,
``-u`` ... on), modules ember imported are already in ``sys.modules``, and
the hash seed is the launcher's.

The shepherd asks for this only when the launcher's create says so (the
``EMBER_FORK_PY`` spawn directive, see :mod:`ember._env`) and the file
exists; anything else is spawned as before.
"""
import os
import _signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)
import sys

__all__ = ["fork_python"]


def fork_python(script, args, envp, run_dir, stdin_fd, out_fd, err_fd, nofile_soft=-1,
                scrub=None):
    """Fork; in the child run ``script`` with ``args`` as ``__main__`` and
    exit.  Returns ``(pid, gate)``: the caller watches and reaps the pid,
    and closes the fd ``gate`` once the child may start the program (the
    shepherd: after it has reported the child to GS, so the program never
    finds itself "pending").  The child sets itself up (signals, stdio,
    fds, directory, environment) before it waits: ~0.6 ms of the head's
    start overlaps the shepherd's report.

    ``envp`` is the child's whole environment (``b"K=V"`` items);
    ``stdin_fd`` -1 keeps this process's fd 0; ``out_fd``/``err_fd`` become
    the child's 1 and 2; ``nofile_soft`` >= 0 becomes the child's soft
    RLIMIT_NOFILE (as spawn() does).  Call from the thread that must be the
    child's parent for PR_SET_PDEATHSIG (the shepherd's request thread, or
    its main thread for ``ember run``'s head: both live as long as the
    shepherd).  Signals sent to the child before its program runs are held,
    not lost, and then handled as the program's (as spawn.c does for an
    exec).  ``scrub()``, if given, runs in the child first: it drops what
    the parent holds that the program must not have (the shepherd: its
    private control pool)."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (AttributeError, OSError, ValueError):
            pass
    parent = os.getpid()
    gate_r, gate_w = os.pipe()
    old = _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
    try:
        pid = os.fork()
    except BaseException:
        os.close(gate_r)
        os.close(gate_w)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old)
        raise
    if pid:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, old)
        os.close(gate_r)
        try:
            # Its own process group before anyone learns its pid (the
            # launcher hands it the terminal's foreground): set by both
            # sides, whichever runs first.
            os.setpgid(pid, pid)
        except OSError:
            pass
        return pid, gate_w
    code = 127
    try:
        from ..shepherd._spawn import set_pdeathsig
        set_pdeathsig(_signal.SIGKILL)
        if os.getppid() != parent:    # the shepherd died before the prctl
            os._exit(1)
        os.setpgid(0, 0)
        if scrub is not None:
            scrub()
        if nofile_soft >= 0:
            import resource
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile_soft, hard), hard))
        os.close(gate_w)
        # Set up while the shepherd reports the child to GS (on the other
        # core, if free): nothing here is the program's yet.
        _setup(run_dir, stdin_fd, out_fd, err_fd, envp, keep=gate_r)
        os.read(gate_r, 1)            # EOF: the shepherd closed its end
        os.close(gate_r)
        code = _run(script, args)
    except BaseException:
        try:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(127)
    finally:
        os._exit(code)


def _setup(run_dir, stdin_fd, out_fd, err_fd, envp, keep):
    # (``keep``: the gate, the one fd of the shepherd's left open)
    # Signals as in a fresh interpreter: default dispositions, SIGINT raising
    # KeyboardInterrupt, SIGPIPE and SIGXFSZ ignored (all still blocked:
    # _run unblocks them once it is ready for a KeyboardInterrupt).
    for sig in _signal.valid_signals():
        if sig in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            if _signal.getsignal(sig) not in (_signal.SIG_DFL, None):
                _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    for sig in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(sig, _signal.SIG_IGN)
    if stdin_fd >= 0:
        os.dup2(stdin_fd, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.closerange(3, keep)                         # the shepherd's fds are not the head's
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    if run_dir:
        os.chdir(run_dir)
    # The child's environment is the shepherd's but for a few variables:
    # change only those (each change is a putenv/unsetenv).
    env = {}
    for item in envp:
        k, _, v = item.partition(b"=")
        env[os.fsdecode(k)] = os.fsdecode(v)
    environ = os.environ
    for k in [k for k in environ if k not in env]:
        del environ[k]
    for k, v in env.items():
        if environ.get(k) != v:
            environ[k] = v
    # Fresh std streams (the shepherd's may be mid-write in another thread
    # at the fork, their locks held forever), buffered as python3 would.
    # (-u: the launcher's own stdout was made write-through)
    unbuffered = (bool(os.environ.get("PYTHONUNBUFFERED"))
                  or bool(getattr(sys.__stdout__, "write_through", False)))
    enc = sys.stdout.encoding if sys.stdout is not None else None
    sys.stdin = sys.__stdin__ = _stream(0, "r", enc, False)
    sys.stdout = sys.__stdout__ = _stream(1, "w", enc, unbuffered)
    sys.stderr = sys.__stderr__ = _stream(2, "w", enc, unbuffered, errors="backslashreplace")
    # This thread (one of the shepherd's) is the main thread now: threads
    # the program starts must not inherit "daemon" from it.  (Without the
    # threading module loaded, there is nothing to fix: it takes the thread
    # that first imports it for the main one.)
    threading = sys.modules.get("threading")
    if threading is not None:
        main = threading.current_thread()
        main._daemonic = False
        main.name = "MainThread"


def _stream(fd, mode, encoding, unbuffered, errors=None):
    """A std stream as CPython's create_stdio() makes it: unbuffered with
    ``-u``/PYTHONUNBUFFERED (not stdin), else buffered and line-buffered on
    a terminal and for stderr."""
    import io
    raw = io.FileIO(fd, mode + "b", closefd=False)
    if mode == "r":
        buf = io.BufferedReader(raw)
        unbuffered = False
    elif unbuffered:
        buf = raw
    else:
        buf = io.BufferedWriter(raw)
    line = not unbuffered and (fd == 2 or raw.isatty())
    return io.TextIOWrapper(buf, encoding=encoding, errors=errors, line_buffering=line,
                            write_through=unbuffered)


def _exit_code(exc):
    c = exc.code
    if c is None:
        return 0
    if isinstance(c, int):
        return c & 0xFF
    try:
        print(c, file=sys.stderr)
    except Exception:
        pass
    return 1


def _run(script, args):
    from .host import _set_title

    path = os.path.abspath(script)     # __file__ is absolute, as python3 makes it
    sys.argv = [script] + list(args)
    _set_title(" ".join([sys.executable] + sys.argv))   # in ps, not "ember: shepherd node 0"
    sys.path[0] = os.path.dirname(path)
    code = 0
    interrupted = False
    try:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
        _exec_main(path)
    except SystemExit as exc:
        code = _exit_code(exc)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        tb = exc.__traceback__
        while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != path:
            tb = tb.tb_next          # drop our own frames: python3 shows none
        if tb is not None:
            exc.__traceback__ = tb
        # as PyErr_Print does: atexit handlers may look at the last exception
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, exc.__traceback__
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code = 1
    code = _finish(code)
    if interrupted:                  # python3 dies of SIGINT after a KeyboardInterrupt
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
        _signal.signal(_signal.SIGINT, _signal.SIG_DFL)
        os.kill(os.getpid(), _signal.SIGINT)
    return code


def _exec_main(path):
    """What ``python3 path`` does with the file: a new ``__main__`` module
    (not runpy's, which costs ~8 ms of imports)."""
    import builtins
    import types
    from importlib.machinery import SourceFileLoader

    main = types.ModuleType("__main__")
    main.__file__ = path
    main.__builtins__ = builtins
    main.__loader__ = SourceFileLoader("__main__", path)
    main.__spec__ = None
    main.__cached__ = None
    sys.modules["__main__"] = main
    with open(path, "rb") as f:
        source = f.read()
    from ..shepherd._spawn import compile_file     # compile() but for its AST check (~1 ms)
    exec(compile_file(source, path), main.__dict__)


def _finish(code):
    """What interpreter shutdown does that a program can see: join
    non-daemon threads, run atexit handlers, flush the streams."""
    import atexit
    threading = sys.modules.get("threading")    # (never loaded: no threads to join)
    try:
        if threading is not None:
            threading._shutdown()
    except BaseException:
        pass
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BrokenPipeError:
            code = code or 120
        except Exception:
            pass
    return code
