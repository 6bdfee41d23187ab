"""The ``"ember"`` multiprocessing context (see docs/multiprocessing.md).

- :class:`EmberProcess` is a ``multiprocessing.process.BaseProcess`` whose
  :class:`Popen` starts the child as an ``ember.Process`` (a managed process
  forked from the warm template).  The child runs
  :func:`ember.mp._child.main`, which does what spawn's child does: it
  applies spawn's preparation data (``sys.path``, ``sys.argv``, cwd,
  authkey, the main module imported as ``__mp_main__``), unpickles the
  process object and runs ``process_obj._bootstrap()``.
- :class:`EmberContext` maps the context's factories onto ember's objects.
- With no runtime (neither ``ember run`` nor ``ember.init()``), the first
  start brings up an embedded one (``ember.init()``), torn down at exit
  after multiprocessing has joined its children.
"""
import atexit
import copyreg
import io
import os
import pickle
import sys
import threading
import types

import multiprocessing
from multiprocessing import context as _mpctx
from multiprocessing import process as _mpprocess
from multiprocessing import reduction

from .._filecache import FileCache
from .._trace import t as _t

# multiprocessing.util, .spawn, .connection and .resource_sharer are
# imported where they are used: `import ember` registers the method and
# should stay cheap.

__all__ = ["EmberContext", "EmberProcess", "Popen", "register"]

NAME = "ember"

_rt_lock = threading.Lock()
_exit_hook = [False]


class _Mods:
    """The modules a start uses, each imported at its first use (``import
    ember`` stays cheap) and bound here: an import statement in a function
    runs importlib's ``_handle_fromlist`` at every call."""

    _NAMES = {"connection": "multiprocessing.connection",
              "resource_tracker": "multiprocessing.resource_tracker",
              "spawn": "multiprocessing.spawn", "util": "multiprocessing.util",
              "runtime": "ember.runtime", "process": "ember.objects.process",
              "child": "ember.mp._child", "mainload": "ember.mp._mainload"}

    def __getattr__(self, attr):
        import importlib

        try:
            name = self._NAMES[attr]
        except KeyError:
            # (AttributeError, as getattr, hasattr and inspect.unwrap expect)
            raise AttributeError(attr) from None
        mod = importlib.import_module(name)
        setattr(self, attr, mod)
        return mod


_m = _Mods()


def _exit_before_teardown():
    """Runs before the runtime's teardown (registered after ``ember.init``,
    so earlier in atexit's LIFO order): multiprocessing joins its
    non-daemon children and terminates its daemons while they still can.
    A Ctrl-C in multiprocessing's wait has sent the children SIGINT
    (:meth:`Popen.wait`): ember's own exit function then waits on for them
    (a second Ctrl-C ends that wait), and the interrupt is raised again
    after; it escaped at once, and the teardown killed the children while
    they were still handling their SIGINT (their tracebacks lost)."""
    from multiprocessing import util
    interrupted = None
    try:
        util._exit_function()
    except KeyboardInterrupt as exc:
        interrupted = exc
    except Exception:
        pass
    try:
        from ..objects import process as eproc
        eproc._exit_function()
    except Exception:
        pass
    if interrupted is not None:
        raise interrupted


def ensure_runtime():
    """Make sure this process is part of a runtime; bring up an embedded one
    on first use otherwise."""
    if _m.runtime.is_initialized():
        _patch_wait()
        return
    with _rt_lock:
        if _m.runtime.is_initialized():
            return
        _patch_wait()
        _m.runtime.init()
        if not _exit_hook[0]:
            _exit_hook[0] = True
            atexit.register(_exit_before_teardown)


_offered = set()
_seen = {}          # module name -> the module object last looked at (offered or not)
#: What every "ember"-method child imports beyond ember.Process's worker (the
#: child's own code, and what spawn.prepare imports): the template has them
#: imported before it forks.  Not pkgutil (runpy.run_path's, with typing:
#: ~0.45 MB, 6 mappings): only a child that runs the main file itself needs
#: it, and the template imports it then (``_mainload.offer``, ``preload``).
_CHILD_MODULES = ("ember.mp._child", "ember.mp.context", "ember.mp._mainload",
                  "runpy", "multiprocessing.spawn", "multiprocessing.resource_tracker",
                  "multiprocessing.util")


def _library_modules():
    """Names of the modules this process has imported from the standard
    library or site-packages (not the program's own), in import order, that
    were not returned before.  A module is looked at once (its path
    resolved), unless it is replaced in sys.modules; sys.modules is not
    walked again while its length stays the same (a module replaced in
    place is then missed: it is only not preloaded)."""
    out = []
    seen = _seen
    if len(sys.modules) == seen.get(None):
        return out                # nothing imported since the last look (the usual case)
    lib = _m.mainload.library_dirs()
    seen[None] = len(sys.modules)
    for name, mod in list(sys.modules.items()):
        if seen.get(name) is mod:
            continue
        seen[name] = mod
        if name in _offered or name.startswith(("__main__", "__mp_main__", "ember.")) \
                or name in ("ember", "cloudpickle") or "," in name or mod is None:
            # (cloudpickle: offered by the start itself, process._offer_cloudpickle)
            continue
        f = getattr(mod, "__file__", None)
        if f is None:
            if name in sys.builtin_module_names:
                _offered.add(name)
            continue
        if os.path.realpath(f).startswith(lib):
            out.append(name)
    return out


def _preload_parent_modules():
    """Let the template import the library modules this process has (its
    children re-import ``__main__`` as spawn's do: what it imports is then
    already there), and what every child of this method imports
    (``_CHILD_MODULES``).  Optional: a module the template cannot import is
    left to the child.  Only new names are added, so the list settles."""
    new = _library_modules()
    if not _offered.issuperset(_CHILD_MODULES):
        new += [m for m in _CHILD_MODULES if m not in _offered and m not in new]
    if new:
        _offered.update(new)
        Process = _m.process.Process
        Process._quiet_preload = Process._quiet_preload + tuple("?" + m for m in new)


def _main_code(prep):
    """``(path, magic, marshalled code)`` of the main module that spawn's
    preparation makes the child run again (as ``__mp_main__``), compiled
    here once per version of the file, so that no child compiles it; None
    when there is none (or it does not compile: the child then reports
    that as spawn's would)."""
    path = prep.get("init_main_from_path")
    if not path:
        return None
    try:
        return _main_codes.get(path)[1]
    except OSError:
        return None


def _compile_main(path):
    import importlib.util
    import io
    import marshal
    try:
        with io.open_code(path) as f:
            code = compile(f.read(), path, "exec", dont_inherit=True)
        return (path, importlib.util.MAGIC_NUMBER, marshal.dumps(code))
    except Exception:
        return None


_main_codes = FileCache(_compile_main)    # path -> its (path, magic, code) or None


def _tracker_fd():
    """The write end of multiprocessing's resource tracker pipe, the tracker
    started if it is not running.  ``resource_tracker.getfd()`` probes a
    running tracker by writing to its pipe, which wakes the tracker process
    at every start; a tracker this process started (its child) is known to
    run, without the probe, while ``waitid(WNOWAIT)`` says it has not
    exited (nothing is reaped).  Otherwise ``getfd()`` as before (it starts
    a new tracker when the old one died)."""
    resource_tracker = _m.resource_tracker
    rt = getattr(resource_tracker, "_resource_tracker", None)
    fd, pid = getattr(rt, "_fd", None), getattr(rt, "_pid", None)
    if fd is not None and pid is not None:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return fd
        except (ChildProcessError, OSError):
            pass
    return resource_tracker.getfd()


_prog = {}              # module name -> (module, path of its source or None)


def _compile_prog(path):
    import marshal
    try:
        with open(path, "rb") as f:
            return marshal.dumps(compile(f.read(), path, "exec", dont_inherit=True))
    except Exception:
        return None                       # the child reports it as an import would


_prog_codes = FileCache(_compile_prog)    # path -> marshalled code or None
_prog_out = [None, None]    # (len(sys.modules), the last answer)
#: At most this many bytes of program code travel with each start.
_PROG_CODE_MAX = 1 << 20


def _program_codes():
    """``(magic, {path: (mtime_ns, size, marshalled code)})`` of the
    program's own modules (``_mainload.program_origin``, the rule the
    template's run of the main module applies too) that this process
    imported from a source file that has no bytecode cache
    (PYTHONDONTWRITEBYTECODE, a read-only directory): a child imports them
    again when it runs ``__main__`` again, and would compile each one from
    source, at every start.  Compiled here once per
    version of the file (the child uses the code only if the file's mtime
    and size are still these); at most ``_PROG_CODE_MAX`` bytes in all;
    None when there is nothing to send."""
    if _prog_out[0] == len(sys.modules):
        return _prog_out[1]
    import importlib.util
    from importlib.machinery import SourceFileLoader

    from ._mainload import program_origin

    out, total = {}, 0
    for name, mod in list(sys.modules.items()):
        known = _prog.get(name)
        if known is None or known[0] is not mod:
            path = program_origin(name, mod)       # the one rule of what is the program's
            if path is not None and not (path.endswith(".py") and isinstance(
                    getattr(mod.__spec__, "loader", None), SourceFileLoader)):
                path = None                       # not compiled from a source file
            known = _prog[name] = (mod, path)
        path = known[1]
        if path is None:
            continue
        try:
            if os.path.exists(importlib.util.cache_from_source(path)):
                continue                          # the child reads the bytecode cache
            key, data = _prog_codes.get(path)
        except (OSError, NotImplementedError, ValueError):
            continue
        if data is not None and total + len(data) <= _PROG_CODE_MAX:
            out[path] = key + (data,)
            total += len(data)
    _prog_out[:] = [len(sys.modules), (importlib.util.MAGIC_NUMBER, out) if out else None]
    return _prog_out[1]


_FP = reduction.ForkingPickler
_fp_table = [None]      # (copyreg's table, ForkingPickler's reducers, the two merged)


def _fp_pieces(obj):
    """``reduction.ForkingPickler.dumps(obj)``, the same pickle without
    making a ForkingPickler: a C pickler of the same protocol with the same
    reducers (copyreg's table updated with ForkingPickler's), merged once
    and again only when either table changed (compared by value: a few
    entries), as a list of pieces (the pickler's file a list: each
    ``bytes`` of 64 KiB or more in the object a piece by reference, not
    copied; sent as ``_codec.parts``).  ``ForkingPickler.dumps`` (its Python ``__init__``
    copies and updates the tables at every call) took 15-50 us of every
    start, a plain pickle of the same object 3-7.  A ForkingPickler
    replaced in ``multiprocessing.reduction`` is used as it is."""
    fp = reduction.ForkingPickler
    if fp is not _FP:
        return [bytes(fp.dumps(obj))]
    c = _fp_table[0]                    # (one read: Pool starts from several threads)
    if c is None or c[0] != copyreg.dispatch_table or c[1] != fp._extra_reducers:
        table = dict(copyreg.dispatch_table)
        table.update(fp._extra_reducers)
        c = _fp_table[0] = (dict(copyreg.dispatch_table), dict(fp._extra_reducers), table)
    out = []
    p = pickle.Pickler(types.SimpleNamespace(write=out.append))  # (the default protocol, as its)
    p.dispatch_table = c[2]
    p.dump(obj)
    return out


def _fp_dumps(obj):
    """:func:`_fp_pieces` joined: ``bytes(ForkingPickler.dumps(obj))``."""
    return b"".join(_fp_pieces(obj))


def prep_bytes(rest, config):
    """``(rest, config)`` (spawn's preparation data without SHARED's items,
    a process object's ``_config``) pickled for ``_child._start``, their
    authkey (an ``AuthenticationString``) as plain ``bytes``, which the
    child makes an ``AuthenticationString`` again: pickled as itself, the
    child's unpickling looked up ``multiprocessing.process`` and its
    class (``find_class``: the module's and its spec's pages, 5-7 of the
    template's written a child).  The data then holds no global."""
    AS = _mpprocess.AuthenticationString
    if type(rest.get("authkey")) is AS:
        rest = dict(rest, authkey=bytes(rest["authkey"]))
    if config is not None and type(config.get("authkey")) is AS:
        config = dict(config, authkey=bytes(config["authkey"]))
    return _fp_dumps((rest, config))


#: The items of spawn's preparation data that a program's template sets
#: for each of its children (``_mainload.become``; ``sys.argv`` it keeps for
#: them), in the order :func:`shared_bytes` takes their values.
SHARED = ("init_main_from_path", "sys_path", "sys_argv", "dir", "orig_dir", "start_method")
_NONE = object()
#: The items a start's preparation data may hold for SHARED to travel
#: apart: SHARED's, and what a child of a program's template then sets
#: itself (``_child._apply_rest``; "name" travels apart too).
_SPLIT = frozenset(SHARED + ("name", "authkey", "log_to_stderr", "log_level"))


def shared_bytes(values):
    """The values of :data:`SHARED` (a list; or the files' versions,
    ``_mainload.stats_bytes``) pickled as the parent and a program's
    template both pickle them, so that equal bytes are equal values:
    without the memo (an object met twice, as ``ORIGINAL_DIR`` in
    ``sys.path`` and as itself, is written twice: the template's come from
    JSON, each its own), only ``str``, ``None``, tuples of ``int`` and
    lists of ``str`` (anything else, or an item missing: None, and the
    data travels whole)."""
    for v in values:
        if v is not None and type(v) is not str and not (
                type(v) is list and all(type(x) is str for x in v)) and not (
                type(v) is tuple and all(type(x) is int for x in v)):
            return None
    f = io.BytesIO()
    p = pickle.Pickler(f, 4)
    p.fast = True                          # (no memo)
    p.dump(values)
    return f.getvalue()


#: [(what spawn's preparation data is made of, the data but its "name",
#: a process object's _config, the pickle of both)]: the same at every
#: start unless sys.path, argv, the cwd, the authkey... changed.
_prep_c = [None]


def _pickles(popen, process_obj):
    """``(prep, prep_b, shared_b, obj_b)``: spawn's preparation data without its
    "name" (``spawn.get_preparation_data``) and the process object, pickled
    as spawn pickles them (``ForkingPickler``'s pickle, :func:`_fp_dumps`,
    ``popen`` the spawning one).

    ``prep_b`` is ``(prep, config)`` pickled, where ``config`` is the
    process object's ``_config`` (its authkey and semprefix, copied from
    ours when it was made) and ``prep`` is without the items a program's
    template sets (``_mainload.SHARED``: the main file, ``sys.path``,
    ``sys.argv``, the directories, the start method), which travel apart
    as ``shared_b`` (``_mainload.shared_bytes``; None, and all in
    ``prep_b``, when they do not pickle so): a child of the program's
    template that set those very values compares the bytes with its
    template's and neither unpickles nor compares the values.  Both are
    the same at every start, so their
    pickle is the last start's while what spawn makes the data of is the
    same (its logging state, the authkey, ``sys.path``, ``sys.argv``,
    ``ORIGINAL_DIR``, the working directory, the start method, the main
    module; comparing those is cheaper than building the dict again) and
    the config is equal.  Not cached while a logger is set (its level) or
    before a start method is (spawn's own call sets the default).

    ``obj_b`` (:func:`_fp_pieces`' pieces, sent as ``_codec.parts``: a
    large ``bytes`` in the object travels out of band, not copied into a
    whole pickle first) is then an ``EmberProcess``'s other attributes (its
    ``__dict__`` but ``_config``), which is all pickle would write for it
    besides its class (``ember.mp._child`` rebuilds it as pickle would);
    the authkey's pickle was a third of the process object's.  Any other
    class is pickled whole (``config`` None)."""
    util = _m.util
    cur = _mpprocess.current_process()
    ctx = _mpctx._default_context._actual_context
    main = sys.modules.get("__main__")
    if util._logger is not None or ctx is None or main is None \
            or getattr(cur, "_inheriting", False):
        made = None                      # spawn's call below (and its error, if any)
    else:
        md = main.__dict__
        made = (util._log_to_stderr, cur.authkey, list(sys.path), list(sys.argv),
                _mpprocess.ORIGINAL_DIR, os.getcwd(), ctx, main, md.get("__spec__"),
                md.get("__file__"))
    state = process_obj.__dict__
    config = state.get("_config") if type(process_obj) is EmberProcess else None
    if type(config) is not dict:
        config = None
    c = _prep_c[0]                       # (one read: Pool starts from several threads)
    _mpctx.set_spawning_popen(popen)
    try:
        if made is not None and c is not None and c[0] == made and c[2] == config:
            prep, prep_b, shared_b = c[1], c[3], c[4]
        else:
            prep = _m.spawn.get_preparation_data(process_obj._name)
            prep.pop("name", None)       # the one item that differs at every start
            if c is not None and c[1] == prep and c[2] == config:
                prep_b, shared_b = c[3], c[4]
            else:
                shared_b = shared_bytes([prep.get(k, _NONE) for k in SHARED]) \
                    if _SPLIT.issuperset(prep) and "authkey" in prep else None
                rest = prep if shared_b is None else \
                    {k: v for k, v in prep.items() if k not in SHARED}
                prep_b = prep_bytes(rest, config)
            # (spawn's data holds sys.argv itself, not a copy: kept as it
            # is, an argv changed in place would compare equal to it)
            kept = dict(prep, sys_argv=list(prep["sys_argv"])) if "sys_argv" in prep else prep
            _prep_c[0] = (made, kept, None if config is None else dict(config), prep_b, shared_b)
        if config is not None:
            state = {k: v for k, v in state.items() if k != "_config"}
            obj_b = _fp_pieces(state)
        else:
            obj_b = _fp_pieces(process_obj)
    finally:
        _mpctx.set_spawning_popen(None)
    return prep, prep_b, shared_b, obj_b


class Popen:
    """multiprocessing's Popen interface over an ``ember.Process``."""

    method = NAME
    def DupFd(self, fd):
        """Connections and other fds pickled while spawning travel through
        multiprocessing's resource sharer (the child is forked from the
        warm template, not from us, so it inherits none of our fds); the
        copy waits there until the child asks for it (``_unshare``)."""
        d = _sharer().DupFd(fd)
        self._shared.append(d._id[1])
        return d

    def _unshare(self):
        """Close the copies of the fds this start's pickles left with the
        resource sharer that the child never asked for: it ended first
        (killed while it unpickled what comes before them, a worker of a
        broken ProcessPoolExecutor) or its start failed.  Each stayed open
        in the sharer for the program's life; spawn's child inherits the
        fds and leaves none.  Called once the end is known."""
        keys, self._shared = self._shared, []
        _unshare(keys)

    def __init__(self, process_obj):
        _m.util._flush_std_streams()
        self.returncode = None
        self.finalizer = None
        self._proc = None
        self._shared = []         # the resource sharer's keys of the fds pickled (DupFd)
        self._launch(process_obj)

    def duplicate_for_child(self, fd):
        return fd

    def _launch(self, process_obj):
        _t("M.launch")
        prep, prep_b, shared_b, obj_b = _pickles(self, process_obj)
        # The child shares our resource tracker, as spawn's children do
        # (else its own tracker would unlink at its exit the shared memory
        # it merely attached to): it reopens the tracker's pipe through
        # /proc/<our pid>/fd (it does not inherit our fds).
        tracker = (os.getpid(), _tracker_fd())
        ensure_runtime()
        _preload_parent_modules()
        mainload = _m.mainload
        e = mainload.offer(prep)      # the template runs the main module, if it only defines

        _t("M.prepared")
        expect = mainload.expected(prep, e)
        if expect:
            codes = (None, None)      # the template runs the main module: no code to ship
        else:
            codes = (_main_code(prep), _program_codes())
        key = mainload.run_key(e) if e else None    # the template's run of the entry
        stats_b = mainload.stats_bytes() if expect and key is not None else None
        # (ember's Python layer imported here, after ensure_runtime: its exit
        # hooks then run before the runtime's, see test_mp_idioms' Ctrl-C)
        from ..objects import _codec
        obj_b = _codec.parts(obj_b)
        p = _m.process.Process(target=_m.child.main,
                       args=(prep_b, obj_b, tracker) + codes + (process_obj._name, key,
                                                                shared_b, stats_b),
                       daemon=bool(process_obj.daemon))
        # `ember ps` shows it as multiprocessing names it, with its target
        p._name, p._what = process_obj.name, _ps_what(process_obj)
        if expect and key is not None:
            p._program = mainload.program_item(key)   # its spares come from the program's template
        try:
            p.start()
        except BaseException:
            self._unshare()
            raise
        self._proc = p

    @property
    def sentinel(self):
        # What BaseProcess.start stores as its _sentinel, which it reads
        # at every start: the pidfd, which costs nothing more.  What a
        # program waits on is BaseProcess.sentinel (_sentinel_property):
        # the ember.Process's sentinel, made at the first ask.
        return self._proc._res.fd

    @property
    def pid(self):
        # (ember.Process's, once final: a process started again in its place
        # is waited for, the pid read is the one it keeps; at most
        # _PID_WAIT s.  In a repr, the pid it has now: a repr never waits.)
        if self._proc is None:
            return None
        return self._proc.pid if _in_repr.on else self._proc._final_pid()

    def poll(self, flag=os.WNOHANG):
        if self.returncode is None:
            if flag == 0:
                return self.wait()
            code = self._proc.exitcode
            if code is not None:
                self.returncode = code
                self._unshare()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            # on the pidfd first (ember.Process._ended: it follows a
            # process started again): ember.Process.join() reads results
            # in slices, and this child sends none
            exiting = _m.util._exiting    # multiprocessing's wait at exit for its children
            if exiting:
                if _m.process._exit_abandoned[0]:
                    return None                      # a second Ctrl-C: the teardown ends it
                if isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
                    _m.process._interrupt_at_exit()  # the program ended on a Ctrl-C
            try:
                if not self._proc._ended(timeout):
                    return None
            except KeyboardInterrupt:
                if exiting:
                    _m.process._interrupted_at_exit()
                raise
            self._proc.join()
            code = self._proc.exitcode
            if code is not None:
                self.returncode = code
                self._unshare()
        return self.returncode

    def _send_signal(self, sig):
        if self.returncode is None:
            try:
                if sig == 15:
                    self._proc.terminate()
                else:
                    self._proc.kill()
            except Exception:
                if self.wait(timeout=0.1) is None:
                    raise

    def terminate(self):
        self._send_signal(15)

    def kill(self):
        self._send_signal(9)

    def close(self):
        if self._proc is not None:
            self._proc.close()


def is_pool_executor_worker(process_obj):
    """Whether ``process_obj`` is a worker of concurrent.futures'
    ProcessPoolExecutor (its target is that module's worker loop)."""
    target = process_obj._target
    return getattr(target, "__module__", None) == "concurrent.futures.process" and \
        getattr(target, "__name__", None) == "_process_worker"


def _ps_what(process_obj):
    """What ``ember ps`` shows after a child's name: its target
    (``mymod.work``); ``ProcessPoolExecutor worker`` for one of
    concurrent.futures' workers; a subclass's own run() (``mymod.Worker.run``;
    not the method's child code, which an ember.Process shows when it has
    nothing to show); "no target" for a process with neither."""
    if is_pool_executor_worker(process_obj):
        return "ProcessPoolExecutor worker"
    run = type(process_obj).run
    if run is not _mpprocess.BaseProcess.run:
        return _m.process._target_name(run)
    return _m.process._target_name(process_obj._target) or "no target"


class EmberProcess(_mpprocess.BaseProcess):
    _start_method = NAME

    @staticmethod
    def _Popen(process_obj):
        return Popen(process_obj)

    @staticmethod
    def _after_fork():
        # As spawn's children: the child starts from the template, not from a
        # fork of the parent; still run the after-fork hooks of whatever
        # unpickling the process object imported.
        # BaseProcess._after_fork, without its import (_bootstrap, our
        # caller, imported util) and without walking an empty registry (a
        # WeakValueDictionary's items(): five Python functions, each a
        # page or two that the child would copy)
        util = sys.modules["multiprocessing.util"]
        util._finalizer_registry.clear()
        if util._afterfork_registry.data:
            util._run_after_forkers()


class _SemLockShim:
    """The part of ``_multiprocessing.SemLock`` that the stdlib's own
    queues reach for (``multiprocessing.queues.Queue.full``/``qsize`` use
    ``q._sem._semlock``), over an ember semaphore."""

    __slots__ = ("_sem",)

    def __init__(self, sem):
        self._sem = sem

    def _is_zero(self):
        return self._sem.get_value() == 0

    def _get_value(self):
        return self._sem.get_value()


_mp_cls = {}


def _mp_classes():
    """The context's subclasses of ember's objects, defined on first use
    (ember.objects.sync loads the C extension): Semaphore and
    BoundedSemaphore with a ``_semlock`` (see :class:`_SemLockShim`), and
    Event with multiprocessing's repr."""
    if not _mp_cls:
        from ..objects import sync

        class Semaphore(sync.Semaphore):
            __module__ = __name__
            __qualname__ = "_MpSemaphore"

            @property
            def _semlock(self):
                return _SemLockShim(self)

        class BoundedSemaphore(sync.BoundedSemaphore):
            __module__ = __name__
            __qualname__ = "_MpBoundedSemaphore"

            @property
            def _semlock(self):
                return _SemLockShim(self)

        class Event(sync.Event):
            __module__ = __name__
            __qualname__ = "_MpEvent"

            def __repr__(self):
                # multiprocessing.synchronize.Event's, with the object's o_uid
                state = "closed" if self._obj.closed else "set" if self.is_set() else "unset"
                return f"<Event at {id(self):#x} o_uid={self.o_uid} {state}>"

        for cls in (Semaphore, BoundedSemaphore, Event):
            globals()[cls.__qualname__] = cls
            _mp_cls[cls.__qualname__[3:]] = cls
    return _mp_cls


def __getattr__(attr):
    # unpickling one of them in a process that has not made one yet
    if attr in ("_MpSemaphore", "_MpBoundedSemaphore", "_MpEvent"):
        _mp_classes()
        return globals()[attr]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def _check_lock(lock):
    """multiprocessing's ``lock=`` argument: True or None (a new lock), or
    a lock; ember's Value/Array take None as "no lock"."""
    if lock is True or lock is None:
        return True
    if not hasattr(lock, "acquire"):
        raise AttributeError("%r has no method 'acquire'" % lock)
    return lock


def _own_lock(obj, lock):
    """``get_lock()`` gives back the very lock passed in (as the stdlib's)."""
    if lock is not True:
        obj.get_lock = lambda: lock
    return obj


class EmberContext(_mpctx.BaseContext):
    """``multiprocessing.get_context("ember")``."""

    _name = NAME
    Process = EmberProcess

    # --- ember's own objects --------------------------------------------
    def Queue(self, maxsize=0):
        ensure_runtime()
        from ..objects.queues import Queue
        return Queue(maxsize)

    def JoinableQueue(self, maxsize=0):
        ensure_runtime()
        from ..objects.queues import JoinableQueue
        return JoinableQueue(maxsize)

    def SimpleQueue(self):
        # The stdlib's SimpleQueue (an OS pipe) with ember locks:
        # multiprocessing.pool and concurrent.futures reach into its
        # _reader/_writer and wait on its fd.
        from multiprocessing.queues import SimpleQueue
        return SimpleQueue(ctx=self)

    def Pipe(self, duplex=True):
        ensure_runtime()
        from ..objects.connection import Pipe
        return Pipe(duplex)

    def Lock(self):
        ensure_runtime()
        from ..objects.sync import Lock
        return Lock()

    def RLock(self):
        ensure_runtime()
        from ..objects.sync import RLock
        return RLock()

    def Semaphore(self, value=1):
        ensure_runtime()
        return _mp_classes()["Semaphore"](value)

    def BoundedSemaphore(self, value=1):
        ensure_runtime()
        return _mp_classes()["BoundedSemaphore"](value)

    def Condition(self, lock=None):
        ensure_runtime()
        from ..objects.sync import Condition
        return Condition(lock)

    def Event(self):
        ensure_runtime()
        return _mp_classes()["Event"]()

    def Barrier(self, parties, action=None, timeout=None):
        ensure_runtime()
        from ..objects.sync import Barrier
        return Barrier(parties, action, timeout)

    def Value(self, typecode_or_type, *args, lock=True):
        if lock is False:
            # the stdlib's raw ctypes object, as multiprocessing.Value(lock=False)
            return self.RawValue(typecode_or_type, *args)
        lock = _check_lock(lock)
        ensure_runtime()
        from ..objects.sync import Value
        return _own_lock(Value(typecode_or_type, *args, lock=lock), lock)

    def Array(self, typecode_or_type, size_or_initializer, *, lock=True):
        if lock is False:
            return self.RawArray(typecode_or_type, size_or_initializer)
        lock = _check_lock(lock)
        ensure_runtime()
        from ..objects.sync import Array
        return _own_lock(Array(typecode_or_type, size_or_initializer, lock=lock), lock)

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None):
        """``multiprocessing.pool.Pool`` with its task and result queues on
        ember's queues (``ember.mp.pool``)."""
        ensure_runtime()
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild, context=self)

    def Manager(self):
        """``ember.Manager()``: a started SyncManager-compatible manager over
        ember's shared objects (no server process of multiprocessing's)."""
        ensure_runtime()
        from ..objects.managers import Manager
        return Manager(ctx=self)

    def _check_available(self):
        pass


_context = EmberContext()


def _all_start_methods(orig):
    def get_all_start_methods():
        methods = list(orig())
        if NAME not in methods:
            methods.append(NAME)
        return methods
    get_all_start_methods.__doc__ = orig.__doc__
    get_all_start_methods._ember = True
    return get_all_start_methods


#: The module-level factories (multiprocessing.Queue, .Lock, ...) that go to
#: ember's objects while "ember" is the start method set by
#: set_start_method (the stdlib's bind them to the default context, which
#: would build its own objects whatever the start method).
_MAPPED = ("Queue", "JoinableQueue", "Pipe", "Lock", "RLock", "Semaphore", "BoundedSemaphore",
           "Condition", "Event", "Barrier", "Value", "Array", "Manager", "Pool")


def _dispatch(name, orig):
    def factory(*args, **kwargs):
        if _mpctx._default_context._actual_context is _context:
            return getattr(_context, name)(*args, **kwargs)
        return orig(*args, **kwargs)
    factory.__name__ = name
    factory.__qualname__ = name
    factory.__doc__ = orig.__doc__
    factory._ember = True
    return factory


def _wait_wrapper(orig):
    def wait(object_list, timeout=None):
        objs = list(object_list)
        if any(getattr(o, "_wait_channel", None) is not None for o in objs):
            from ..objects.connection import wait as ewait
            return ewait(objs, timeout)
        return orig(objs, timeout)
    wait.__doc__ = orig.__doc__
    wait._ember = True
    return wait


def _ember_connection(conn):
    mod = sys.modules.get("ember.objects.connection")     # not imported: not one of ours
    return mod is not None and isinstance(conn, mod.Connection)


def _sharer():
    """``multiprocessing.resource_sharer``, its thread's loop :func:`_serve`
    (set before the thread starts, at the first fd ember has it serve)."""
    from multiprocessing import resource_sharer
    cls = resource_sharer._ResourceSharer
    if cls._serve is not _serve:
        cls._serve = _serve
    return resource_sharer


def _serve(self):
    """``resource_sharer._ResourceSharer._serve`` (CPython 3.8-3.13's), but
    a connection whose other end closed before it was served (a child
    killed while it fetched the fds its start pickled: the workers of a
    ProcessPoolExecutor broken by a kill) is dropped in silence: its error
    (ConnectionResetError, BrokenPipeError, EOFError) went to
    ``sys.excepthook``, a traceback on the parent's stderr for each such
    child, where spawn's child inherits its fds and its death costs the
    parent nothing.  So is a request for an fd already released
    (:func:`_unshare`: the child sent it, then died, and the parent closed
    its fds before this thread read it; the stdlib's KeyError).  Any other
    error is printed as before."""
    import signal

    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    while True:
        try:
            with self._listener.accept() as conn:
                msg = conn.recv()
                if msg is None:
                    break
                key, destination_pid = msg
                with self._lock:
                    entry = self._cache.pop(key, None)
                if entry is None:
                    continue    # released (_unshare): its child ended before it was served
                send, close = entry
                try:
                    send(conn, destination_pid)
                finally:
                    close()
        except (ConnectionError, EOFError):
            pass                # (the other end gone: nobody to hand the fd to)
        except BaseException:
            if not _m.util.is_exiting():
                sys.excepthook(*sys.exc_info())


def _unshare(keys):
    """Close the resource sharer's copies of the fds under ``keys`` (its
    keys of ``resource_sharer.DupFd``\\ s) that nobody took (whoever pops
    one, the sharer's thread handing it over or this, closes it)."""
    if keys:
        from multiprocessing import resource_sharer
        sharer = resource_sharer._resource_sharer
        for key in keys:
            with sharer._lock:
                entry = sharer._cache.pop(key, None)
            if entry is not None:
                entry[1]()


def _handle_wrappers(send_orig, recv_orig):
    """``multiprocessing.reduction.send_handle``/``recv_handle`` that pass
    an fd over an ember Connection too: its ``fileno()`` is no socket to
    carry ``SCM_RIGHTS``, so the message is a ``resource_sharer.DupFd``
    (the fd duplicated and served by the sender's resource sharer, as an
    fd pickled for a child is), and ``recv_handle`` takes the fd from it;
    a message that is not one raises ``RuntimeError``, as the stdlib's does
    when no fd came with the data."""
    def send_handle(conn, handle, destination_pid):
        if not _ember_connection(conn):
            return send_orig(conn, handle, destination_pid)
        dup = _sharer().DupFd(handle)
        try:
            conn.send(dup)
        except BaseException:
            _unshare((dup._id[1],))   # not sent: closed now, not at exit
            raise

    def recv_handle(conn):
        if not _ember_connection(conn):
            return recv_orig(conn)
        from multiprocessing import resource_sharer
        got = conn.recv()
        if not isinstance(got, resource_sharer.DupFd):
            raise RuntimeError(f"received a {type(got).__name__} that carries no handle "
                               f"(send_handle sends one)")
        return got.detach()

    send_handle.__doc__, recv_handle.__doc__ = send_orig.__doc__, recv_orig.__doc__
    send_handle._ember = recv_handle._ember = True
    return send_handle, recv_handle


_fd_reducers = [False]


def _register_fd_reducers():
    """Let stdlib Connections and sockets travel over ember's Queues and
    Pipes as they do over the stdlib's: by fd, through multiprocessing's
    resource sharer.  multiprocessing registers those reducers with its
    ForkingPickler only; ember's objects pickle with the plain pickler,
    which would copy the fd *number* (a foreign process then closes a
    descriptor that is not its own).  Done once the method is in use, and
    again for a Connection's once multiprocessing.connection is imported
    (:func:`_on_connection`): the method does not import it itself."""
    _fd_reducers[0] = True
    import copyreg
    import socket

    for cls, reducer in list(reduction.ForkingPickler._extra_reducers.items()):
        if cls is socket.socket or getattr(cls, "__module__", "") == "multiprocessing.connection":
            copyreg.pickle(cls, reducer)


def _wrap_wait():
    """ember's Connections and Queues have no fd: multiprocessing's
    connection.wait() on them (and on fds beside them) goes to ember.wait.
    Done as soon as both ember and multiprocessing.connection are imported
    (``register``), before a program binds the name (``from
    multiprocessing.connection import wait``)."""
    _mpconn = _m.connection
    if not getattr(_mpconn.wait, "_ember", False):
        _mpconn.wait = _wait_wrapper(_mpconn.wait)


def _on_connection():
    """multiprocessing.connection is imported (and ember): its ``wait``
    wrapped, and its Connection's fd reducers registered for ember's
    pickling if the method is in use."""
    _wrap_wait()
    if _fd_reducers[0]:
        _register_fd_reducers()


def _patch_wait():
    """``connection.wait`` wrapped and the fd reducers registered: done
    when the first ember object is made.  multiprocessing.connection is
    not imported for it (its ``tempfile`` brings ``shutil``, ``random``,
    ``bz2``, ``lzma``: 9 shared objects, 45 mappings and ~1 MB in the
    parent, and in the template and every child of a parent that has
    them): if the program imports it later, :func:`_on_connection` runs
    then."""
    if _fd_reducers[0]:
        return
    _register_fd_reducers()
    from .. import _after_import
    _after_import("multiprocessing.connection", _on_connection)


class _ImportEmber:
    """Unpickles as ``import ember`` (the ember module), which registers
    the method in the process that unpickles it."""

    def __reduce__(self):
        import importlib
        return (importlib.import_module, ("ember",))


def _prep_wrapper(orig):
    def get_preparation_data(name):
        d = orig(name)
        if d.get("start_method") == NAME and \
                not isinstance(_mpctx.get_spawning_popen(), Popen):
            # a spawn or forkserver child (a fresh interpreter, or a fork of
            # one) applies its parent's global method before it imports
            # anything: it imports ember while it unpickles this data, so
            # that it finds the method (ember's own children have it; our
            # _pickles sets the spawning popen before it calls this)
            d["ember"] = _ImportEmber()
        return d
    get_preparation_data.__doc__ = orig.__doc__
    get_preparation_data._ember = True
    return get_preparation_data


def _wrap_preparation_data():
    spawn = _m.spawn
    if not getattr(spawn.get_preparation_data, "_ember", False):
        spawn.get_preparation_data = _prep_wrapper(spawn.get_preparation_data)


def _sentinel_property(orig):
    """multiprocessing's ``BaseProcess.sentinel``, that of a process of
    this method the ``ember.Process``'s: an eventfd written at the end of
    the process (or of the one started again in its place,
    docs/python-processes.md), made at the first ask.  ``BaseProcess.start``
    takes ``popen.sentinel`` at every start, and most programs never ask
    for it; made there, it cost every start an eventfd, a place in the
    sentinel watcher's set (and its thread) and a wake-up of that thread
    when the child ended before ``join()``.  Other processes' is the
    stdlib's."""
    def sentinel(self):
        popen = getattr(self, "_popen", None)
        if isinstance(popen, Popen):
            return popen._proc.sentinel
        return orig.fget(self)
    sentinel.__doc__ = orig.__doc__
    sentinel._ember = True
    return property(sentinel)


class _InRepr(threading.local):
    on = False


_in_repr = _InRepr()


def _repr_wrapper(orig):
    """multiprocessing's ``BaseProcess.__repr__``, which shows
    ``popen.pid``: for a process of this method the pid it has now, not
    the final one :attr:`Popen.pid` waits for (a repr of a child stopped
    before it read its call waited for ever; fork's and spawn's never
    wait)."""
    def __repr__(self):
        if not isinstance(getattr(self, "_popen", None), Popen) or _in_repr.on:
            return orig(self)
        _in_repr.on = True
        try:
            return orig(self)
        finally:
            _in_repr.on = False
    __repr__._ember = True
    return __repr__


_registered = [False]


def register():
    """Register the ``"ember"`` start method with multiprocessing (done by
    ``import ember``); idempotent (at once once done: a child of the
    template finds it done there)."""
    if _registered[0] and _mpctx._concrete_contexts.get(NAME) is _context:
        return _context
    _mpctx._concrete_contexts.setdefault(NAME, _context)
    dflt = _mpctx._default_context
    if not getattr(dflt.get_all_start_methods, "_ember", False):
        f = _all_start_methods(dflt.get_all_start_methods)
        dflt.get_all_start_methods = f
        multiprocessing.get_all_start_methods = f
    for name in _MAPPED:
        orig = getattr(dflt, name)
        if not getattr(orig, "_ember", False):
            f = _dispatch(name, orig)
            setattr(dflt, name, f)
            setattr(multiprocessing, name, f)
    base = _mpprocess.BaseProcess
    if not getattr(base.sentinel.fget, "_ember", False):
        base.sentinel = _sentinel_property(base.sentinel)
    if not getattr(base.__repr__, "_ember", False):
        base.__repr__ = _repr_wrapper(base.__repr__)
    if not getattr(reduction.send_handle, "_ember", False):
        reduction.send_handle, reduction.recv_handle = _handle_wrappers(reduction.send_handle,
                                                                        reduction.recv_handle)
    from .. import _after_import
    _after_import("multiprocessing.connection", _on_connection)
    _after_import("multiprocessing.spawn", _wrap_preparation_data)
    _registered[0] = True
    return _mpctx._concrete_contexts[NAME]
