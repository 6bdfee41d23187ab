"""The pool mutex is never waited for without a bound (issue 8 point 5): a
live holder stopped with SIGSTOP does not wedge the others: alloc(timeout)
returns in time, a try-once alloc waits without the GIL, and a holder stuck
past the lock bound is reported by pid."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import ember.pools_c as pools_c
from ember.exceptions import PoolError, PoolExhausted
from ember.pools_c import Pool
from procs import stat, wait_sleeping_on_shm

HOLDER = r'''
import os, signal, sys
from ember.pools_c import Pool
p = Pool.attach(bytes.fromhex(sys.argv[1]))
p._debug_lock()
sys.stdout.write("locked\n")
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGSTOP)
p._debug_unlock()
p.detach()
'''


class StoppedHolder:
    """A child process that holds the pool's mutex and is stopped."""

    def __init__(self, pool):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, pool.sdesc.hex()],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "locked\n"
        while stat(self.proc.pid)[0] != "T":
            time.sleep(0.01)
        self.pid = self.proc.pid

    def release(self):
        os.kill(self.pid, signal.SIGCONT)
        assert self.proc.wait(timeout=30) == 0
        self.proc.stdout.close()


@pytest.fixture
def pool():
    with Pool.create(1 << 20, name="locktest") as p:
        yield p


@pytest.fixture
def bound():
    yield pools_c.set_lock_bound
    pools_c.set_lock_bound(None)


def _desc(p):
    return re.escape(f"pool 'locktest' (m_uid 0x{p.m_uid:016x})")


@pytest.mark.timeout(60)
def test_pool_lock_alloc_timeout_holds(pool):
    a = pool.alloc(64)
    h = StoppedHolder(pool)
    try:
        with pytest.raises(PoolExhausted, match=rf"^{_desc(pool)}: cannot allocate 64 bytes within 1.0 s: "
                                                rf"the pool mutex is held by pid {h.pid}$"):
            pool.alloc(64, timeout=1.0)
    finally:
        h.release()
    a.free()
    pool._validate()


@pytest.mark.timeout(60)
def test_pool_lock_try_once_alloc_releases_the_gil(pool):
    h = StoppedHolder(pool)
    started, out = threading.Event(), []

    def worker():
        started.set()
        try:
            out.append(pool.alloc(64))          # waits for the mutex, GIL released
        except BaseException as e:              # pragma: no cover - shown by the assert
            out.append(e)

    t = threading.Thread(target=worker)
    t.start()
    try:
        started.wait()
        # this thread runs while the worker sleeps on the mutex (seen: a
        # 0.2 s sleep let it pass with the worker not yet waiting) ...
        wait_sleeping_on_shm(os.getpid(), t.native_id)
    finally:
        h.release()                 # ... and lets the holder go (before the 10 s bound)
    t.join()
    assert len(out) == 1 and isinstance(out[0], pools_c.Allocation), out
    out[0].free()
    pool._validate()


@pytest.mark.timeout(60)
def test_pool_lock_stuck_holder_is_reported(pool, bound):
    a = pool.alloc(100)
    h = StoppedHolder(pool)
    try:
        bound(0.3)
        assert pools_c.lock_bound() == 0.3
        held = rf"pool mutex held by pid {h.pid} for more than 0.3 s \[EMBER_ERR_LOCK_STUCK\]$"
        with pytest.raises(PoolError, match=rf"^{_desc(pool)}: cannot allocate 64 bytes: {held}"):
            pool.alloc(64)
        with pytest.raises(PoolError, match=rf"^{_desc(pool)}: cannot allocate 64 bytes: {held}"):
            pool.alloc(64, timeout=None)        # waits in 50 ms slices: they add up to the bound
        with pytest.raises(PoolError, match=rf"^{_desc(pool)}: cannot read stats: {held}"):
            pool.stats()
        with pytest.raises(PoolError, match=rf"^{_desc(pool)}: cannot free allocation at offset {a.offset} "
                                            rf"\(id {a.id}, 100 bytes\): {held}"):
            a.free()
        assert not a.closed                     # not freed: may be freed again later
    finally:
        h.release()
    a.free()
    assert pool.stats().live_allocs == 0
    pool._validate()


def test_pool_lock_bound_args(bound):
    with pytest.raises(ValueError, match=r"^lock bound must be > 0 and < 1e9 seconds, got 0$"):
        bound(0)
    with pytest.raises(TypeError, match=r"^lock bound must be a number of seconds or None, not str$"):
        bound("1")
    bound(2.5)
    assert pools_c.lock_bound() == 2.5
    bound(None)
    assert pools_c.lock_bound() == 10.0
