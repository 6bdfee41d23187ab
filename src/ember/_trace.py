"""Start-path tracing, a development aid (``benchmarks/trace_python_start.py``).

With ``EMBER_TRACE_START=DIR`` in the runtime's environment, :func:`t`
records ``CLOCK_MONOTONIC`` nanoseconds, the pid and a label in memory, in
every process of the path of an ``ember.Process`` start (parent, GS,
shepherd, template, spare and child; the clock is the same in all), and
appends them to ``DIR/trace`` every 64 events, at :func:`flush` and at
exit.  Without it :func:`t` returns at once (one global lookup).
"""
import os

_dir = os.environ.get("EMBER_TRACE_START") or None
#: True when tracing (guard what is costly to compute for a label).
on = _dir is not None
_buf = []
_pid = [0]


def t(label):
    """Record that this process reached ``label`` now."""
    if _dir is None:
        return
    import time

    pid = os.getpid()
    if _pid[0] != pid:
        _buf.clear()          # a fork's copy of its parent's events
        _pid[0] = pid
    _buf.append(f"{time.monotonic_ns()} {pid} {label}\n")
    if len(_buf) >= 64:
        flush()


def t_faults(label, cpu=False):
    """Record this process's minor page faults so far (and its CPU time)
    as ``label=N`` (``label_cpu=seconds``)."""
    if _dir is None:
        return
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    t(f"{label}={ru.ru_minflt}")
    if cpu:
        t(f"{label}_cpu={ru.ru_utime + ru.ru_stime:.6f}")


def flush():
    """Append the events recorded so far to the trace file."""
    if _dir is None or not _buf or _pid[0] != os.getpid():
        return
    data = "".join(_buf).encode()
    _buf.clear()
    fd = os.open(os.path.join(_dir, "trace"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


if on:
    import atexit
    import resource  # noqa: F401  (imported here, not in t_faults: an import takes ~0.5 ms)
    import time  # noqa: F401

    atexit.register(flush)
