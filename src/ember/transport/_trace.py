"""Time stamps of a message's hops across nodes, for finding where a round
trip's time goes (``benchmarks/mn_trace.py`` reads them).

Off unless ``EMBER_MN_TRACE`` names a directory that every node can see
(the launcher hands the variable to the nodes' processes): then the hot
paths of the transport (a remote handle's send, an agent's wake-up, read,
channel write and sleep) call :func:`stamp`, and each process appends its
stamps, ``tag monotonic_ns`` per line, to a file of its own there
(``<host>-<pid>``), every :data:`EVERY` stamps and at exit.  Every node's
processes read the same ``CLOCK_MONOTONIC`` when the nodes are namespaces
of one machine (as in the tests and benchmarks), so stamps of different
processes compare.  Off, a hot path pays one test of a module constant.
"""
import os
import time

DIR = os.environ.get("EMBER_MN_TRACE") or None
ON = DIR is not None
#: stamps buffered before they are appended to the file (an agent that is
#: SIGKILLed at teardown loses at most that many)
EVERY = 256

_buf = []
_ns = time.monotonic_ns


def stamp(tag):
    """Record ``tag`` (a short word without spaces) with the time now."""
    _buf.append((tag, _ns()))
    if len(_buf) >= EVERY:
        flush()


def flush():
    if not (ON and _buf):
        return
    import socket
    text = "".join(f"{t} {n}\n" for t, n in _buf)
    _buf.clear()
    try:
        with open(os.path.join(DIR, f"{socket.gethostname()}-{os.getpid()}"), "a", encoding="utf-8") as f:
            f.write(text)
    except OSError:
        pass


if ON:
    import atexit
    atexit.register(flush)
    os.register_at_fork(after_in_child=_buf.clear)   # the parent's stamps are the parent's
