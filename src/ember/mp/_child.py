"""What an ``"ember"``-method child runs (as spawn's ``spawn._main``).

The template imports this module before it forks (``context._CHILD_MODULES``),
so what can be done once is done here, at import: the modules a child uses
are bound, the method is registered and ``connection.wait`` wrapped
(``context.register``, ``context._patch_wait``), and the resource tracker's
hook set (:func:`_tracker_hook`).  A child then only writes what is its own
(each first write to a page it shares with the template is a copy-on-write
fault, 5-8 µs here).
"""
import atexit as _atexit
import itertools as _itertools
import os
import sys
import threading as _threading
from multiprocessing import context as _mpctx
from multiprocessing import process as _process
from multiprocessing import reduction as _reduction
from multiprocessing import resource_tracker as _rtracker
from multiprocessing import spawn as _spawn
from multiprocessing import util as _util

# (the labels only when tracing: a call of _t and its label's string cost a
# child a copy-on-write fault or two each, even with tracing off)
from .._trace import on as _tracing, t as _t
from ..objects import _codec
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

# (context's own names, read as this module's globals: an attribute of a
# module with a __getattr__, as context has, is never read by a
# specialized instruction, see rehearse)
_EmberProcess, _is_pool_executor_worker = context.EmberProcess, context.is_pool_executor_worker


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

    reader = getattr(call_queue, "_reader", None)
    if not callable(getattr(reader, "poll", None)):
        return                  # not the stdlib's pipe queue: left as it is
    c_uid = _roles.c_uid(_roles.POOL_EXECUTOR_TASKS)
    get, readable = call_queue.get, reader.poll

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
    instead (:func:`_bootstrap`).  None otherwise."""
    try:
        st, null = os.fstat(0), os.stat(os.devnull)
        if (st.st_dev, st.st_ino) != (null.st_dev, null.st_ino):
            return None
        return open(0, encoding="utf-8", closefd=False), null
    except (OSError, ValueError):
        return None


_STDIN = _devnull_stdin()


_BaseProcess = _process.BaseProcess
_base_bootstrap = _BaseProcess._bootstrap
_base_run = _BaseProcess.run
#: Python versions whose ``BaseProcess._bootstrap`` :func:`_bootstrap` is
#: written after (CPython 3.10-3.12 have the same one); others run theirs.
_OWN_BOOTSTRAP = sys.version_info[:2] in ((3, 10), (3, 11), (3, 12))


def _template_stdin():
    """The template's text stream over /dev/null (:data:`_STDIN`) when this
    child's fd 0 is still /dev/null, else None."""
    if _STDIN is None:
        return None
    try:
        st = os.fstat(0)
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != (_STDIN[1].st_dev, _STDIN[1].st_ino):
        return None
    return _STDIN[0]


# In the template (which has its C module), the same check in C
# (``_spawn.template_stdin``: no stat_result made, ~8 pages fewer a child).
_c = sys.modules.get("ember.shepherd._spawn")
if _c is not None and _c.stdin_note(None if _STDIN is None else _STDIN[0]):
    _template_stdin = _c.template_stdin
del _c


def _boot(self, parent_sentinel):
    """:func:`_bootstrap`'s steps before the target (a function of its own,
    which :func:`rehearse` runs in the program's template)."""
    process, util, ctx = _process, _util, _mpctx
    if self._start_method is not None:
        ctx._default_context._actual_context = ctx._concrete_contexts[self._start_method]
    if _mainload.preset_shared is None:
        process._process_counter = _itertools.count(1)
        process._children = set()
    if _tracing:
        _t("M.b_counter")
    stdin = _template_stdin()
    if stdin is not None:
        sys.stdin = stdin
    elif sys.stdin is not None:
        util._close_stdin()
    if _tracing:
        _t("M.b_stdin")
    old_process = process._current_process
    process._current_process = self
    process._parent_process = process._ParentProcess(
        self._parent_name, self._parent_pid, parent_sentinel)
    if _tracing:
        _t("M.b_parent")
    if _threading._HAVE_THREAD_NATIVE_ID:
        _threading._main_thread._native_id = _threading.get_native_id()
    if _tracing:
        _t("M.b_native_id")
    try:
        self._after_fork()
    finally:
        del old_process
    if _tracing:
        _t("M.b_after_fork")


def _bootstrap(self, parent_sentinel):
    """``self._bootstrap(parent_sentinel)`` as CPython 3.11's
    ``BaseProcess._bootstrap`` does it, step for step, with fewer of the
    template's functions run in the child (each function run for the first
    time in a child writes its code object's page: a copy-on-write fault,
    5-8 µs here).  The same steps, the same order, the same outcome:

    - the start method forced (``context._force_start_method``), the
      process counter and ``_children`` new, stdin at /dev/null (a child
      whose fd 0 is /dev/null takes the text stream the template made over
      it, :data:`_STDIN`; else ``util._close_stdin``),
      ``current_process()`` and ``parent_process()`` set, the main
      thread's native id, the after-fork step (``self._after_fork()``);
    - ``self.run()`` (the target called directly when ``run`` is
      ``BaseProcess.run``);
    - after a return, in a template child, its quiet end when nothing is
      left to run (``template._end_quietly``: no finalizer, child, logger,
      thread or exit hook, so each step below and the worker's would do
      nothing but flush): flushed, exit code 0, at once;
    - ``util._exit_function()``, done as its one effect (``_exiting`` set)
      when it has nothing to run: no finalizer registered, no child, no
      logger (else called);
    - the exit code as ``_bootstrap``'s (0, ``SystemExit``'s code or 1
      with it written to stderr, 1 with the traceback after "Process
      <name>:"), ``threading._shutdown()``, stdout and stderr flushed;
      ``util.info`` called where ``_bootstrap`` calls it, only when a
      logger is set (it does nothing else).

    Only for a class that keeps ``BaseProcess._bootstrap`` (others run
    their own)."""
    util = _util
    try:
        _boot(self, parent_sentinel)
        if util._logger:
            util.info('child process calling self.run()')
        try:
            if type(self).run is _base_run:
                if self._target:
                    self._target(*self._args, **self._kwargs)
            else:
                self.run()
        except BaseException:
            _exit_function()
            raise
        if _end_quietly is not None:
            _end_quietly()      # nothing left to run: flushed, exits 0 here
        _exit_function()
        exitcode = 0
    except SystemExit as e:
        if e.code is None:
            exitcode = 0
        elif isinstance(e.code, int):
            exitcode = e.code
        else:
            sys.stderr.write(str(e.code) + '\n')
            exitcode = 1
    except:   # noqa: E722  (as _bootstrap: any exception)
        exitcode = 1
        import traceback
        sys.stderr.write('Process %s:\n' % self.name)
        traceback.print_exc()
    finally:
        _threading._shutdown()
        if util._logger:
            util.info('process exiting with exitcode %d' % exitcode)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, ValueError):
                pass
    return exitcode


def _exit_function():
    """``util._exit_function()`` as ``_bootstrap`` calls it after the
    target, done as its one effect (``_exiting`` set) when it has nothing
    to run: no finalizer registered, no child, no logger."""
    util = _util
    if util._exiting or util._finalizer_registry or _process._children or util._logger:
        util._exit_function()
    else:
        util._exiting = True
    # Its call at exit (util registers it with atexit) would return at
    # once now (_exiting), having written pages of the template's (its
    # code's, its defaults' reference counts): not made.
    _atexit.unregister(util._exit_function)


#: A template child's quiet end (``ember.shepherd.template._end_quietly``:
#: it returns when the exit has something to run), None elsewhere.
_end_quietly = getattr(sys.modules.get("ember.shepherd.template"), "_end_quietly", None)


def _apply(prep, main=True, preset=()):
    """What ``spawn.prepare(prep)`` does, each step set directly (the same
    values, in the same order): the process's name and authkey, logging,
    ``sys.path``, ``sys.argv``, the working directory, ``ORIGINAL_DIR``,
    the start method; then, with ``main``, the main module (spawn's
    ``_fixup_main_*``).  ``main=False`` when the template's run of the main
    module is in place (``_mainload.install``): spawn's fixup would find it
    there and return.  The items named in ``preset`` are not set: a
    program's template set them to these very values (``_mainload.preset``,
    compared by ``install``)."""
    cp = _process.current_process()
    if "name" in prep:
        cp.name = prep["name"]
    if "authkey" in prep:
        cp.authkey = prep["authkey"]
    if prep.get("log_to_stderr"):
        _util.log_to_stderr()
    if "log_level" in prep:
        _util.get_logger().setLevel(prep["log_level"])
    if "sys_path" in prep and "sys_path" not in preset:
        sys.path = prep["sys_path"]
    if "sys_argv" in prep and "sys_argv" not in preset:
        sys.argv = prep["sys_argv"]
    if "dir" in prep and "dir" not in preset:
        os.chdir(prep["dir"])
    if "orig_dir" in prep and "orig_dir" not in preset:
        _process.ORIGINAL_DIR = prep["orig_dir"]
    if "start_method" in prep and "start_method" not in preset:
        # set_start_method(method, force=True), its lookup done here
        ctx = _mpctx._concrete_contexts.get(prep["start_method"])
        if ctx is None:
            _spawn.set_start_method(prep["start_method"], force=True)   # raises as spawn's
        else:
            _mpctx._default_context._actual_context = ctx
    if not main:
        return
    template_main = sys.modules["__main__"]
    if "init_main_from_name" in prep:
        _spawn._fixup_main_from_name(prep["init_main_from_name"])
    elif "init_main_from_path" in prep:
        _spawn._fixup_main_from_path(prep["init_main_from_path"])
    if sys.modules["__main__"] is template_main:
        # spawn's fixup ran nothing: the parent's main has no file (python
        # -c, a notebook), or is a package's or a directory's or zipapp's
        # __main__ (python -m pkg, python dir/: spawn does not run those
        # again), or a file named ipython.py.  An empty __main__, as
        # spawn's child has its own, not the template's (ember._template:
        # a function of the parent's __main__ was looked for, and found,
        # there).  The template's is kept, as spawn's fixup keeps the one
        # it replaces (freeing it would write to its pages).
        _spawn.old_main_modules.append(template_main)
        sys.modules["__main__"] = type(sys)("__main__")


def _prepare(prep, main_code, prog_codes=None, entry=None):
    """spawn.prepare(prep) (:func:`_apply`), with the main module the
    template ran (if it ran the parent's ``entry``: ``_mainload.install``),
    else running the main module from the code the
    parent compiled (``main_code``, see ``context._main_code``) instead
    of reading and compiling the file again, and importing the program
    modules the parent compiled (``prog_codes``, see
    ``context._program_codes``) from that code, each only if its file is
    still the one the parent compiled (mtime and size)."""
    if entry is _mainload.PRESET:       # a program's template set the rest (main's preset_hit)
        _apply(prep, main=False)
        sys.argv = _mainload.preset_argv
        return
    if _mainload.install(prep, entry):     # the main module is in place: not run again
        return _apply(prep, main=False, preset=_mainload.preset)
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


def main(prep_b, obj_b, tracker=None, main_code=None, prog_codes=None, name=None, entry=None,
         shared_b=None, stats_b=None):
    """The child: ``prep_b``, spawn's preparation data (its name apart:
    ``name``, and the items of ``context.SHARED`` apart: ``shared_b``) and
    the process object's ``_config``, pickled; ``obj_b``, the
    process object or its other attributes (``context._pickles``);
    ``tracker``, the parent's resource tracker (pid, fd);
    ``main_code``/``prog_codes``, code the parent compiled (None when it
    expects the template's run of the main module, named by ``entry``:
    ``_mainload.run_key`` of its preload entry)."""
    if _tracing:
        _t("M.c_main")
    process_obj, sentinel = _start(prep_b, obj_b, tracker, main_code, prog_codes, name, entry,
                                   shared_b, stats_b)
    # process_obj._bootstrap(parent_sentinel=sentinel): ours when its class
    # keeps multiprocessing's
    if _OWN_BOOTSTRAP and type(process_obj)._bootstrap is _base_bootstrap:
        exitcode = _bootstrap(process_obj, sentinel)
    else:
        exitcode = process_obj._bootstrap(parent_sentinel=sentinel)
    if _tracing:
        _t("M.c_booted")
    sys.exit(exitcode)


# (the template's children unpickle their call's target from copyreg's cache)
_codec.cache_extension(main)


def _start(prep_b, obj_b, tracker, main_code, prog_codes, name, entry, shared_b, stats_b):
    """:func:`main`'s steps up to the process object's bootstrap: ``(the
    process object, the parent's pidfd or None)`` (a function of its own,
    which :func:`rehearse` runs in the program's template).  A child of
    the program's template whose values it has (the common case: ``SHARED``
    preset, only the name and the authkey to set) sets those two itself,
    as their properties' setters would, and calls no function of
    multiprocessing's to do it (each a function and a code object of the
    template's written)."""
    if type(obj_b) is tuple:
        _codec.hold_parts(obj_b)      # (a large one: its block ours until unpickled)
    _tracker[0] = tracker
    process, load = _process, _reduction.pickle.loads
    prep, config = load(prep_b)
    if _tracing:
        _t("M.c_prep_loaded")
    ml = _mainload
    if shared_b is not None:
        if ml.preset_hit(entry, shared_b, stats_b):
            entry = ml.PRESET       # all of SHARED set already: the rest here or in _prepare
        else:
            prep.update(zip(context.SHARED, load(shared_b)))
    if _tracing:
        _t("M.c_preset")
    cur = process._current_process
    cur._inheriting = True
    try:
        authkey = prep.get("authkey")
        if entry is ml.PRESET and len(prep) == 2 and prep.get("log_to_stderr") is False \
                and authkey is not None and type(name) is str:
            cur._name = name                # (the setters of name and authkey)
            cur._config["authkey"] = process.AuthenticationString(authkey)
            sys.argv = ml.preset_argv
        else:
            if name is not None:
                prep["name"] = name
            _prepare(prep, main_code, prog_codes, entry)
        if _tracing:
            _t("M.c_prepared")
        obj = load(obj_b) if type(obj_b) is bytes else _codec.load_parts(obj_b)
        if config is None:
            process_obj = obj
        else:
            # an EmberProcess's other attributes (context._pickles): rebuilt as
            # pickle rebuilds an object of a class with no reduce or state
            # methods of its own (cls.__new__(cls), the attributes set, names
            # interned)
            cls = _EmberProcess
            process_obj = cls.__new__(cls)
            d = process_obj.__dict__
            if type(config.get("authkey")) is bytes:      # (context.prep_bytes)
                config["authkey"] = process.AuthenticationString(config["authkey"])
            d["_config"] = config
            intern = sys.intern
            for k, v in obj.items():
                d[intern(k)] = v
        if _tracing:
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
        del cur._inheriting
    try:
        sentinel = os.pidfd_open(process_obj._parent_pid)
    except OSError:
        sentinel = None
    if _is_pool_executor_worker(process_obj):
        _show_idle(process_obj._args[0])
    if _tracing:
        _t("M.c_pidfd")
    return process_obj, sentinel


#: How many times :func:`rehearse` runs a child's path: CPython 3.11
#: quickens a function's code at its 8th call (or backward jump), and tries
#: to specialize each of its instructions at their 32nd run after that.
REHEARSALS = 50


def rehearse(times=REHEARSALS):
    """In a program's template (``_mainload.become``, before it freezes):
    run a child's path up to its target (:func:`_start`, :func:`_boot`)
    ``times`` over, on a process object made here, and put back all it
    set.  Its functions' code is then quickened and specialized here, and
    each child runs it as it is: an attribute of a module, a class or an
    instance read or set by a specialized instruction (``LOAD_ATTR_MODULE``,
    ``STORE_ATTR_INSTANCE_VALUE``, ...) writes neither the name's
    reference count nor an entry of the type attribute cache, where the
    generic one, run for the first time in every child, wrote both: a
    string and a cache entry of the template's each, a page each.
    Rehearsed only where a child of this template takes that path (its
    values preset, ``BaseProcess._bootstrap`` CPython's, fd 0 /dev/null)
    and where running it here changes nothing that is not put back: no
    after-fork hook and no logger (their calls would run here).  Returns
    whether it ran."""
    process, util, ctx = _process, _util, _mpctx
    key = _mainload.program[0] if _mainload.program else None
    if key is None or _mainload.preset_shared is None or not _OWN_BOOTSTRAP \
            or _template_stdin() is None or util._afterfork_registry.data or util._logger:
        return False
    cur, thread = process._current_process, _threading._main_thread
    saved = (cur._name, dict(cur._config), sys.argv, sys.stdin, process._parent_process,
             process._process_counter, process._children, ctx._default_context._actual_context,
             thread._native_id, dict(util._finalizer_registry))

    def put_back():
        (cur._name, config, sys.argv, sys.stdin, process._parent_process,
         process._process_counter, process._children, ctx._default_context._actual_context,
         thread._native_id, finalizers) = saved
        process._current_process = cur
        cur._config.clear()
        cur._config.update(config)
        util._finalizer_registry.update(finalizers)
        cur.__dict__.pop("_inheriting", None)
        _tracker[0] = None

    try:
        try:
            # a process object as the parent's, pickled as context._pickles does
            process._process_counter = _itertools.count(1)    # (its number: not ours)
            obj = _EmberProcess(target=os.getpid)
            state = {k: v for k, v in obj.__dict__.items() if k != "_config"}
            prep = _spawn.get_preparation_data(obj._name)
            rest = {k: v for k, v in prep.items() if k not in context.SHARED and k != "name"}
            ctx.set_spawning_popen(obj)                   # (the authkey pickles only then)
            try:
                prep_b = context.prep_bytes(rest, obj._config)
                obj_b = _codec.parts(context._fp_pieces(state))
            finally:
                ctx.set_spawning_popen(None)
        finally:
            put_back()
        for _ in range(times):
            try:
                child, sentinel = _start(prep_b, obj_b, None, None, None, obj._name, key,
                                         _mainload.preset_shared, _mainload.preset_stats)
                try:
                    _boot(child, sentinel)
                finally:
                    if sentinel is not None:
                        os.close(sentinel)
            finally:
                put_back()
    except BaseException:      # (an error of _start's prints its traceback and exits)
        return False
    return True
