"""How a forked ember process ends without interpreter finalization: flush
Python's standard streams, then ``os._exit``.  Shared by the node watchdog
(:mod:`ember.launcher._watch`) and the template's children
(:mod:`ember.shepherd.template`); imports nothing but ``os`` and ``sys``
(the watchdog's start-up is on every bring-up's critical path)."""
import os
import sys


def std_streams():
    """The streams an interpreter's finalization flushes: ``sys.stdout``
    and ``sys.stderr``, then ``sys.__stdout__`` and ``sys.__stderr__``
    where the program put others in their place (``Py_FinalizeEx`` puts
    them back and flushes them: what a process printed before it set
    ``sys.stdout = open(...)`` reaches its output; an ``os._exit`` after
    flushing only the new ones lost it).  Each once, None left out."""
    out, err = sys.stdout, sys.stderr
    streams = [out, err]
    for f in (sys.__stdout__, sys.__stderr__):
        if f is not None and f is not out and f is not err:
            streams.append(f)
    return streams


def flush_and_exit(code, last=None):
    """Flush the standard streams (:func:`std_streams`; an error, e.g. a
    closed pipe, is ignored: nothing more can be said), call ``last()`` if given
    (a template child's: ``_spawn.exit_holder``), then ``os._exit``: no
    atexit handlers, no finalizers, no flush of anything else.  ``code``:
    an int (taken modulo 256, as the kernel does), anything else exits 1.
    Never returns."""
    for f in std_streams():
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
