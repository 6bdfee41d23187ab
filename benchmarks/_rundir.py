"""A private runtime directory for a benchmark that starts runtimes.

Every runtime publishes its address and writes its event log
(``<runtime dir>/<id>.events``, docs/introspection.md) in the user's
runtime directory, and the log stays after the run (``ember cleanup``
removes old ones).  A benchmark starts hundreds of runtimes: it calls
:func:`use_private` first, so they go to a fresh directory
(``$XDG_RUNTIME_DIR`` of this process and of everything it starts) that is
removed when it exits.  Its runtimes are then invisible to ``ember ls`` of
another shell (the benchmark's own subprocesses inherit the directory)."""
import atexit
import os
import shutil
import tempfile

__all__ = ["use_private"]

_ENV = "EMBER_BENCH_RUNTIME_DIR"


def use_private():
    """Point ``XDG_RUNTIME_DIR`` at a new private directory, removed at exit
    by this process (not by a forked child); return it.  Under a benchmark
    that did so already (its head, a subprocess), use that one."""
    d = os.environ.get(_ENV)
    if d and os.environ.get("XDG_RUNTIME_DIR") == d and os.path.isdir(d):
        return d
    d = tempfile.mkdtemp(prefix="ember-bench-")
    os.environ["XDG_RUNTIME_DIR"] = d
    os.environ[_ENV] = d
    pid = os.getpid()

    def remove():
        if os.getpid() == pid:
            shutil.rmtree(d, ignore_errors=True)
    atexit.register(remove)
    return d
