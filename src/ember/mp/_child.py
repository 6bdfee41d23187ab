"""What an ``"ember"``-method child runs (as spawn's ``spawn._main``)."""
import os
import sys


def _share_tracker(tracker):
    """Use the parent's resource tracker (spawn passes its fd; we reopen
    the pipe's write end through /proc), from the first use on: most
    children never register a resource."""
    if tracker is None:
        return
    from multiprocessing import resource_tracker

    rt = resource_tracker._resource_tracker
    if rt._fd is not None:
        return

    def ensure_running():
        del rt.ensure_running                 # the class's from now on
        if rt._fd is None:
            try:
                rt._fd = os.open(f"/proc/{tracker[0]}/fd/{tracker[1]}",
                                 os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                pass             # the child starts its own tracker
        return rt.ensure_running()

    rt.ensure_running = ensure_running


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
    from . import context

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


def _prepare(spawn, prep, main_code, prog_codes=None):
    """spawn.prepare(prep), with the main module the template ran (if it
    did: ``_mainload.install``), else running the main module from the code the
    parent compiled (``main_code``, see ``context._main_code``) instead
    of reading and compiling the file again, and importing the program
    modules the parent compiled (``prog_codes``, see
    ``context._program_codes``) from that code, each only if its file is
    still the one the parent compiled (mtime and size)."""
    from . import _mainload

    if _mainload.install(prep):
        return spawn.prepare(prep)        # the main module is in place: not run again
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
        return spawn.prepare(prep)
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
        spawn.prepare(prep)
    finally:
        runpy._get_code_from_file = orig
        SourceFileLoader.get_code = orig_loader
        if no_probe and path in cache and cache[path] is None:
            del cache[path]


def main(prep_b, obj_b, tracker=None, main_code=None, prog_codes=None, name=None):
    from multiprocessing import process, reduction, spawn

    from .._trace import t as _t
    from . import context

    _t("M.c_main")
    context.register()
    context._patch_wait()
    _share_tracker(tracker)
    _t("M.c_reg")
    prep = reduction.pickle.loads(prep_b)
    if name is not None:
        prep["name"] = name
    process.current_process()._inheriting = True
    try:
        _prepare(spawn, prep, main_code, prog_codes)
        _t("M.c_prepared")
        process_obj = reduction.pickle.loads(obj_b)
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
    exitcode = process_obj._bootstrap(parent_sentinel=sentinel)
    _t("M.c_booted")
    sys.exit(exitcode)
