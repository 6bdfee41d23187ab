"""How a forked ember process ends without interpreter finalization: flush
Python's standard streams, then ``os._exit``.  Shared by the node watchdog
(:mod:`ember.launcher._watch`) and the template's children
(:mod:`ember.shepherd.template`); imports nothing but ``os`` and ``sys``
(the watchdog's start-up is on every bring-up's critical path)."""
import os
import sys


def flush_and_exit(code, last=None):
    """Flush ``sys.stdout`` and ``sys.stderr`` (an error, e.g. a closed
    pipe, is ignored: nothing more can be said), call ``last()`` if given
    (a template child's: ``_spawn.exit_holder``), then ``os._exit``: no
    atexit handlers, no finalizers, no flush of anything else.  ``code``:
    an int (taken modulo 256, as the kernel does), anything else exits 1.
    Never returns."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    if last is not None:
        try:
            last()
        except BaseException:
            pass
    os._exit(code & 0xFF if isinstance(code, int) else 1)
