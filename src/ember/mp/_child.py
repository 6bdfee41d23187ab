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


def main(prep_b, obj_b, tracker=None):
    from multiprocessing import process, reduction, spawn

    from . import context

    context.register()
    context._patch_wait()
    _share_tracker(tracker)
    prep = reduction.pickle.loads(prep_b)
    process.current_process()._inheriting = True
    try:
        spawn.prepare(prep)
        process_obj = reduction.pickle.loads(obj_b)
    finally:
        del process.current_process()._inheriting
    try:
        sentinel = os.pidfd_open(process_obj._parent_pid)
    except OSError:
        sentinel = None
    exitcode = process_obj._bootstrap(parent_sentinel=sentinel)
    sys.exit(exitcode)
