"""What an ``"ember"``-method child runs (as spawn's ``spawn._main``).

The template imports this module before it forks (``context._CHILD_MODULES``),
so what can be done once is done here, at import: the modules a child uses
are bound, the method is registered and ``connection.wait`` wrapped
(``context.register``, ``context._patch_wait``), and the resource tracker's
hook set (:func:`_tracker_hook`).  A child then only writes what is its own
(each first write to a page it shares with the template is a copy-on-write
fault, 5-8 µs here).
"""
import os
import sys
from multiprocessing import context as _mpctx
from multiprocessing import process as _process
from multiprocessing import reduction as _reduction
from multiprocessing import resource_tracker as _rtracker
from multiprocessing import spawn as _spawn
from multiprocessing import util as _util

from .._trace import t as _t
from . import _mainload, context

#: In a child: ``(parent pid, fd)`` of the parent's resource tracker pipe.
_tracker = [None]


def _tracker_hook():
    """Let a child use its parent's resource tracker (spawn passes its fd;
    the child reopens the pipe's write end through /proc) from its first
    use on (``ensure_running``): most children never register a resource.
    Set once, here; a child only sets :data:`_tracker`."""
    rt = _rtracker._resource_tracker
    if "ensure_running" in vars(rt):
        return
    cls_ensure = type(rt).ensure_running

    def ensure_running():
        tracker = _tracker[0]
        if tracker is not None and rt._fd is None:
            _tracker[0] = None
            try:
                rt._fd = os.open(f"/proc/{tracker[0]}/fd/{tracker[1]}",
                                 os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                pass             # the child starts its own tracker
        return cls_ensure(rt)

    rt.ensure_running = ensure_running


context.register()
context._patch_wait()
_tracker_hook()


#: How long a worker that found its task taken by another waits for the
#: queue's lock and a task before it waits idle again.
_TAKEN_WAIT = 0.05


def _show_idle(call_queue):
    """A ProcessPoolExecutor's worker waits for its next task on an OS pipe
    (its call queue), which the C layer's wait records do not see: `ember
    ps` showed it "sleeping" on nothing.  Its blocking ``get()`` (the only
    one the worker makes) now waits for the pipe to be readable outside
    the queue's lock, recording "receive from the tasks of a
    ProcessPoolExecutor" in the process slot meanwhile (``ember ps``:
    "idle (a ProcessPoolExecutor's worker waiting for tasks)"), then takes
    the task as before, under the lock.  A worker that another one beat to
    the task waits again (no idle worker sits on the lock, shown blocked on
    a Lock its neighbour holds)."""
    import queue
    from .. import _roles
    from ..channels_c import _channels

    c_uid = _roles.c_uid(_roles.POOL_EXECUTOR_TASKS)
    get, readable = call_queue.get, call_queue._reader.poll

    def idle_get(block=True, timeout=None):
        if not block or timeout is not None:
            return get(block, timeout)
        while True:
            if not readable():
                _channels._slot_recv_begin(c_uid)
                try:
                    readable(None)     # a task, or the end of the pipe
                finally:
                    _channels._slot_wait_end()
            try:
                return get(True, _TAKEN_WAIT)
            except queue.Empty:         # another worker took it
                pass

    call_queue.get = idle_get


def _devnull_stdin():
    """``(text stream over fd 0, /dev/null's stat)`` when fd 0 is
    /dev/null, as in the template (which imports this module before it
    forks): a child's ``_bootstrap`` would close sys.stdin, open /dev/null
    and wrap it again (~0.1 ms of every start); the child takes this one
    instead (:func:`main`).  None otherwise."""
    try:
        st, null = os.fstat(0), os.stat(os.devnull)
        if (st.st_dev, st.st_ino) != (null.st_dev, null.st_ino):
            return None
        return open(0, encoding="utf-8", closefd=False), null
    except (OSError, ValueError):
        return None


_STDIN = _devnull_stdin()


def _take_stdin(process_obj):
    """Let ``process_obj._bootstrap`` skip reopening stdin (sys.stdin None)
    and ``EmberProcess._after_fork`` put the template's stream over
    /dev/null in its place: what spawn's child gets (a text stream at
    EOF), made once.  Only for an EmberProcess whose fd 0 is still
    /dev/null."""
    if _STDIN is None or type(process_obj)._after_fork is not context.EmberProcess._after_fork:
        return
    try:
        st = os.fstat(0)
    except OSError:
        return
    if (st.st_dev, st.st_ino) != (_STDIN[1].st_dev, _STDIN[1].st_ino):
        return
    context._stdin_after_fork[:] = [_STDIN[0]]
    sys.stdin = None


def _apply(prep, main=True):
    """What ``spawn.prepare(prep)`` does, each step set directly (the same
    values, in the same order): the process's name and authkey, logging,
    ``sys.path``, ``sys.argv``, the working directory, ``ORIGINAL_DIR``,
    the start method; then, with ``main``, the main module (spawn's
    ``_fixup_main_*``).  ``main=False`` when the template's run of the main
    module is in place (``_mainload.install``): spawn's fixup would find it
    there and return."""
    cp = _process.current_process()
    if "name" in prep:
        cp.name = prep["name"]
    if "authkey" in prep:
        cp.authkey = prep["authkey"]
    if prep.get("log_to_stderr"):
        _util.log_to_stderr()
    if "log_level" in prep:
        _util.get_logger().setLevel(prep["log_level"])
    if "sys_path" in prep:
        sys.path = prep["sys_path"]
    if "sys_argv" in prep:
        sys.argv = prep["sys_argv"]
    if "dir" in prep:
        os.chdir(prep["dir"])
    if "orig_dir" in prep:
        _process.ORIGINAL_DIR = prep["orig_dir"]
    if "start_method" in prep:
        # set_start_method(method, force=True), its lookup done here
        ctx = _mpctx._concrete_contexts.get(prep["start_method"])
        if ctx is None:
            _spawn.set_start_method(prep["start_method"], force=True)   # raises as spawn's
        else:
            _mpctx._default_context._actual_context = ctx
    if not main:
        return
    if "init_main_from_name" in prep:
        _spawn._fixup_main_from_name(prep["init_main_from_name"])
    elif "init_main_from_path" in prep:
        _spawn._fixup_main_from_path(prep["init_main_from_path"])


def _prepare(prep, main_code, prog_codes=None, entry=None):
    """spawn.prepare(prep) (:func:`_apply`), with the main module the
    template ran (if it ran the parent's ``entry``: ``_mainload.install``),
    else running the main module from the code the
    parent compiled (``main_code``, see ``context._main_code``) instead
    of reading and compiling the file again, and importing the program
    modules the parent compiled (``prog_codes``, see
    ``context._program_codes``) from that code, each only if its file is
    still the one the parent compiled (mtime and size)."""
    if _mainload.install(prep, entry):
        return _apply(prep, main=False)     # the main module is in place: not run again
    import importlib.util
    import marshal

    from .._filecache import stat_key

    magic = importlib.util.MAGIC_NUMBER
    code = None
    if main_code is not None and main_code[1] == magic:
        path = main_code[0]
        code = marshal.loads(main_code[2])
    codes = prog_codes[1] if prog_codes and prog_codes[0] == magic else None
    if code is None and not codes:
        return _apply(prep)
    import runpy
    from importlib.machinery import SourceFileLoader

    orig = runpy._get_code_from_file
    orig_loader = SourceFileLoader.get_code

    def get_code(run_name, fname):
        if code is not None and fname == path:
            return code, fname
        return orig(run_name, fname)

    def loader_get_code(self, fullname):
        hit = codes.get(self.path)
        if hit is not None:
            try:
                if stat_key(self.path) == hit[:2]:
                    return marshal.loads(hit[2])
            except (OSError, ValueError, EOFError, TypeError):
                pass
        return orig_loader(self, fullname)

    # runpy.run_path asks every path hook whether the main file is an
    # importer (pkgutil.get_importer): zipimport opens it and searches its
    # last 64 KB for a zip directory, at every start (~0.2-0.3 ms here).
    # A file the parent compiled as Python source is no zip archive:
    # "no importer" is cached for it while it runs (get_importer does not
    # cache a miss itself), and the entry removed after.
    cache = sys.path_importer_cache
    no_probe = code is not None and path not in cache
    if no_probe:
        cache[path] = None
    runpy._get_code_from_file = get_code
    if codes:
        SourceFileLoader.get_code = loader_get_code
    try:
        _apply(prep)
    finally:
        runpy._get_code_from_file = orig
        SourceFileLoader.get_code = orig_loader
        if no_probe and path in cache and cache[path] is None:
            del cache[path]


def _process_obj(obj, config):
    """The process object from what ``context._pickles`` sent: ``obj``
    itself, or (with ``config``, the object's ``_config``) an
    ``EmberProcess``'s other attributes, rebuilt as pickle rebuilds an
    object of a class with no reduce or state methods of its own
    (``cls.__new__(cls)``, then the attributes set, names interned)."""
    if config is None:
        return obj
    cls = context.EmberProcess
    process_obj = cls.__new__(cls)
    d = process_obj.__dict__
    d["_config"] = config
    intern = sys.intern
    for k, v in obj.items():
        d[intern(k)] = v
    return process_obj


def main(prep_b, obj_b, tracker=None, main_code=None, prog_codes=None, name=None, entry=None):
    """The child: ``prep_b``, spawn's preparation data (its name apart:
    ``name``) and the process object's ``_config``, pickled; ``obj_b``, the
    process object or its other attributes (``context._pickles``);
    ``tracker``, the parent's resource tracker (pid, fd);
    ``main_code``/``prog_codes``, code the parent compiled (None when it
    expects the template's run of the main module, its preload ``entry``)."""
    _t("M.c_main")
    _tracker[0] = tracker
    process = _process
    prep, config = _reduction.pickle.loads(prep_b)
    if name is not None:
        prep["name"] = name
    process.current_process()._inheriting = True
    try:
        _prepare(prep, main_code, prog_codes, entry)
        _t("M.c_prepared")
        process_obj = _process_obj(_reduction.pickle.loads(obj_b), config)
        _t("M.c_obj")
    except SystemExit:
        raise                     # the main module exited: its code, as spawn's child
    except BaseException:
        # As spawn's child, where this is an uncaught exception: the
        # traceback on stderr, exit code 1 (ember's worker would send it
        # back as a result record that nobody reads).
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    finally:
        del process.current_process()._inheriting
    try:
        sentinel = os.pidfd_open(process_obj._parent_pid)
    except OSError:
        sentinel = None
    _take_stdin(process_obj)
    if context.is_pool_executor_worker(process_obj):
        _show_idle(process_obj._args[0])
    exitcode = process_obj._bootstrap(parent_sentinel=sentinel)
    _t("M.c_booted")
    sys.exit(exitcode)
