"""tests/procs.py's /proc readers, where a test's expectation depends on
what they leave out or wait for."""
import os
import signal
import time

import pytest

from procs import alive, fork, join, kill, reap, stat, stop, wait_children

pytestmark = pytest.mark.timeout(60)


def _named(comm, hang):
    with open("/proc/self/comm", "w") as f:
        f.write(comm)
    while hang:
        time.sleep(60)


def test_wait_children_leaves_zombies_out():
    """A child killed keeps its name until it is reaped: wait_children
    (and so test_pyprocess's wait_leased) must not take its zombie for the
    live process waited for (a dropped lease's zombie, named ember-leased,
    was returned in place of the lease held)."""
    comm = f"zomb{os.getpid() % 100000}"
    dead = fork(_named, comm, False)
    live = fork(_named, comm, True)
    try:
        deadline = time.monotonic() + 30
        while not (stat(dead)[0] == "Z" and stat(live)[2] == comm):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert wait_children(os.getpid(), comm) == [live]
        assert wait_children(os.getpid(), comm, 2, timeout=0) == []
    finally:
        assert join(dead) == 0
        kill(live)


def test_stop_returns_once_each_is_stopped():
    """stop() returns once every process has taken its SIGSTOP: a fatal
    signal sent after it then stays pending (a process not yet stopped
    dies of it at once), and SIGKILL still ends it."""
    pids = [fork(_named, "stopme", True) for _ in range(3)]
    try:
        assert stop(pids) == []
        assert [stat(p)[0] for p in pids] == ["T"] * 3
        for p in pids:
            os.kill(p, signal.SIGTERM)
        assert all(alive(p) for p in pids)
        for p in pids:
            os.kill(p, signal.SIGKILL)
            assert os.WTERMSIG(reap(p)) == signal.SIGKILL
    finally:
        for p in pids:
            kill(p)
