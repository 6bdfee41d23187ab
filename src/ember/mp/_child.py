"""What an ``"ember"``-method child runs (as spawn's ``spawn._main``)."""
import os
import sys


def main(prep_b, obj_b):
    from multiprocessing import process, reduction, spawn

    from . import context

    context.register()
    context._patch_wait()
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
