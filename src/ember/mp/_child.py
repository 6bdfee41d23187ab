"""What an ``"ember"``-method child runs (as spawn's ``spawn._main``)."""
import os
import sys


def _share_tracker(tracker):
    """Use the parent's resource tracker (spawn passes its fd; we reopen
    the pipe's write end through /proc)."""
    if tracker is None:
        return
    from multiprocessing import resource_tracker

    pid, fd = tracker
    try:
        new = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return                   # the child starts its own tracker if it needs one
    resource_tracker._resource_tracker._fd = new


def _prepare(spawn, prep, main_code):
    """spawn.prepare(prep), running the main module from the code the
    parent compiled (``main_code``, see ``context._main_code``) instead
    of reading and compiling the file again."""
    if main_code is None:
        return spawn.prepare(prep)
    import importlib.util
    import marshal
    import runpy

    path, magic, data = main_code
    if magic != importlib.util.MAGIC_NUMBER:
        return spawn.prepare(prep)
    code = marshal.loads(data)
    orig = runpy._get_code_from_file

    def get_code(run_name, fname):
        if fname == path:
            return code, fname
        return orig(run_name, fname)

    runpy._get_code_from_file = get_code
    try:
        spawn.prepare(prep)
    finally:
        runpy._get_code_from_file = orig


def main(prep_b, obj_b, tracker=None, main_code=None):
    from multiprocessing import process, reduction, spawn

    from . import context

    context.register()
    context._patch_wait()
    _share_tracker(tracker)
    prep = reduction.pickle.loads(prep_b)
    process.current_process()._inheriting = True
    try:
        _prepare(spawn, prep, main_code)
        process_obj = reduction.pickle.loads(obj_b)
    finally:
        del process.current_process()._inheriting
    try:
        sentinel = os.pidfd_open(process_obj._parent_pid)
    except OSError:
        sentinel = None
    exitcode = process_obj._bootstrap(parent_sentinel=sentinel)
    sys.exit(exitcode)
