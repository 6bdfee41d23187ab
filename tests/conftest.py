"""Leak checks for every test (autouse): no /dev/shm segment, no child
process and no file descriptor may outlive the test that made it.

Every segment made by this test process or its descendants carries this
worker's tag in its name (``EMBER_SEGMENT_TAG``, set below and inherited):
``ember.p<pid>-<tag>.…`` for a standalone pool, ``ember.r<pid>-<hex>-<tag>.…``
for a runtime.  Any such segment that appeared during a test and is still
there after it is a leak; the other xdist worker's segments are not ours.
The stdlib's named semaphores (``sem.mp-<tag>-…``: a SemLock made under a
start method other than fork, by this process or a child started by
"ember" or fork) are checked the same way, after a garbage collection.
"""
import gc
import os
import time

import pytest

from mn_cluster import emulated_cluster, slurm_cluster, ssh_cluster  # noqa: F401,E402 (multi-node fixtures)
from procs import table  # noqa: E402

SHM = "/dev/shm"
# Unique per pytest run and worker (two runs may share the machine).
_TAG = (os.environ.get("PYTEST_XDIST_WORKER", "gwm").replace("gw", "t")
        + os.environ.get("PYTEST_XDIST_TESTRUNUID", os.urandom(4).hex())[:5])[:8]
os.environ["EMBER_SEGMENT_TAG"] = _TAG
# Runtimes publish their address in $XDG_RUNTIME_DIR/ember: give this worker a
# private one, so address="auto" never finds another worker's runtime.
import tempfile  # noqa: E402
os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix=f"ember-test-{_TAG}-")
import atexit  # noqa: E402
import shutil  # noqa: E402
atexit.register(shutil.rmtree, os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)
os.environ.pop("EMBER_ADDRESS", None)
# The stdlib's named semaphores (a SemLock made under any start method but
# "fork": /dev/shm/sem.<semprefix>-<random>) carry the tag too: children
# started by "ember" and fork copy the prefix (spawn's start "/mp" again).
import multiprocessing  # noqa: E402
SEM_PREFIX = f"sem.mp-{_TAG}-"
multiprocessing.current_process()._config["semprefix"] = "/" + SEM_PREFIX[4:-1]


def _segments():
    try:
        return {n for n in os.listdir(SHM) if n.startswith(("ember.", SEM_PREFIX))}
    except FileNotFoundError:
        return set()


def _is_ours(name):
    if name.startswith(SEM_PREFIX):
        return True
    parts = name.split(".")
    return len(parts) >= 3 and parts[1].endswith("-" + _TAG)


def _children():
    """Descendants of this process (pid -> comm), zombies included."""
    procs = table()
    me = os.getpid()
    out, frontier = {}, {me}
    while frontier:
        nxt = set()
        for pid, (state, ppid, comm) in procs.items():
            if ppid in frontier and pid not in out and pid != me:
                out[pid] = f"{comm} (state {state})"
                nxt.add(pid)
        frontier = nxt
    return out


def _fds():
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks(request):
    segs_before = _segments()
    fds_before = _fds()
    yield
    # Processes: give exiting children time, then fail on any survivor (a
    # loaded machine may take seconds to run a killed runtime's exit; one
    # still there after 30 s is left, not slow).
    deadline = time.monotonic() + 30.0
    kids = _children()
    while kids and time.monotonic() < deadline:
        time.sleep(0.02)
        kids = _children()
    # Segments: the runtime's teardown may still be unlinking (as above:
    # seconds under load, not stuck).
    leaked = set()
    deadline = time.monotonic() + 10.0
    while True:
        leaked = {s for s in _segments() - segs_before if _is_ours(s)}
        if not leaked or time.monotonic() > deadline:
            break
        gc.collect()        # a stdlib SemLock's name goes when it is collected
        time.sleep(0.02)
    fds_leaked = _fds() - fds_before
    # An fd may be closed by now but listed because listdir opened it.
    fds_leaked = {fd for fd in fds_leaked if os.path.exists(f"/proc/self/fd/{fd}")}
    problems = []
    if kids:
        problems.append(f"child processes left alive: {kids}")
        for pid in kids:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        for pid in kids:     # reap our own: a zombie left would fail every later test here
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    if leaked:
        problems.append(f"shared-memory segments leaked: {sorted(leaked)}")
        for s in leaked:
            try:
                os.unlink(os.path.join(SHM, s))
            except OSError:
                pass
    if fds_leaked:
        targets = {}
        for fd in fds_leaked:
            try:
                targets[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                targets[fd] = "?"
        problems.append(f"file descriptors leaked: {targets}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)
