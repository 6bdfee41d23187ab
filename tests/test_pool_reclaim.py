"""Blocks of processes that died holding them are reclaimed (issue 7):
Pool.alloc records the allocating pid in the block, Pool.reclaim(pid)
frees every block a dead process still owned -- and none it handed over
(sent on a channel, serialized, pickled).  A storm of SIGKILLed allocating
children, then the sweep: the pool's free bytes are back where they were."""
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from ember.exceptions import PoolError
from ember.pools_c import Allocation, Pool

ALLOCATOR = r'''
import os, random, sys
from ember.pools_c import Pool
p = Pool.attach(bytes.fromhex(sys.argv[1]))
rnd = random.Random(os.getpid())
handed = p.alloc(200)
memoryview(handed)[:3] = b"hey"
sys.stdout.write(handed.sdesc.hex() + "\n")   # handed over: no longer this process's
sys.stdout.flush()
held = []
while True:
    if len(held) < 16 and rnd.random() < 0.6:
        try:
            held.append(p.alloc(rnd.choice([1, 64, 500, 4096, 30000])))
        except MemoryError:                      # full of dead processes' blocks
            pass
    elif held:
        held.pop(rnd.randrange(len(held))).free()
'''


def _storm(pool, kills, parallel=4, seed=0, reclaim=False):
    """SIGKILL `kills` allocating children, `parallel` at a time; with
    reclaim=True sweep each batch's pids at once (as GS does on each death)."""
    rnd = random.Random(seed)
    pids, handed = [], []
    left = kills
    while left:
        n = min(parallel, left)
        procs = [subprocess.Popen([sys.executable, "-c", ALLOCATOR, pool.sdesc.hex()],
                                  stdout=subprocess.PIPE, text=True) for _ in range(n)]
        for p in procs:
            handed.append(bytes.fromhex(p.stdout.readline().strip()))
        time.sleep(rnd.uniform(0, 0.05))          # let them run: killed anywhere in alloc/free
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            assert p.wait(timeout=30) == -signal.SIGKILL
            p.stdout.close()
            pids.append(p.pid)
            if reclaim:
                pool.reclaim(p.pid)
        left -= n
    return pids, handed


@pytest.mark.timeout(120)
def test_pool_reclaim_after_kill_storm():
    with Pool.create(8 << 20, name="storm") as pool:
        before = pool.stats()
        pids, handed = _storm(pool, 12)
        st = pool.stats()
        assert st.live_allocs > len(handed)       # the dead held blocks
        got = [pool.reclaim(pid) for pid in pids]
        assert all(n >= 0 and b >= 0 for n, b in got)
        st = pool.stats()
        assert st.live_allocs == len(handed)      # only the handed-over blocks are left
        for sd in handed:
            a = Allocation.attach(sd)
            assert bytes(memoryview(a)[:3]) == b"hey"
            a.free()
        assert pool.stats()[:4] == before[:4]      # all but `committed` (a high-water mark)
        pool._validate()
        assert pool.reclaim(pids[0]) == (0, 0)    # nothing twice


def test_pool_reclaim_refuses_live_pid_and_bad_args():
    with Pool.create(1 << 20, name="rc") as pool:
        a = pool.alloc(10)
        desc = re.escape(f"pool 'rc' (m_uid 0x{pool.m_uid:016x})")
        with pytest.raises(PoolError, match=rf"^{desc}: cannot reclaim the allocations of pid {os.getpid()}: "
                                            rf"the process is alive$"):
            pool.reclaim(os.getpid())
        with pytest.raises(ValueError, match=r"^pid must be in \[1, 2\*\*31\), got 0$"):
            pool.reclaim(0)
        with pytest.raises(TypeError, match=r"^pid must be an int, not str$"):
            pool.reclaim("1")
        a.free()


@pytest.mark.timeout(120)
def test_pool_reclaim_counts_and_keeps_handed_over():
    """A child allocates three blocks, hands one over by descriptor, dies:
    reclaim frees exactly the other two."""
    child = r'''
import sys
from ember.pools_c import Pool
p = Pool.attach(bytes.fromhex(sys.argv[1]))
a, b, c = p.alloc(100), p.alloc(1000), p.alloc(64)
sys.stdout.write(b.sdesc.hex() + "\n")
sys.stdout.flush()
sys.stdin.read()
'''
    with Pool.create(1 << 20, name="rc") as pool:
        before = pool.stats()
        p = subprocess.Popen([sys.executable, "-c", child, pool.sdesc.hex()], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        sd = bytes.fromhex(p.stdout.readline().strip())
        p.kill()
        p.wait(timeout=30)
        p.stdout.close()
        p.stdin.close()
        assert pool.stats().live_allocs == 3
        assert pool.reclaim(p.pid) == (2, (128 + 64) + (64 + 64))
        b = Allocation.attach(sd)
        assert b.size == 1000
        b.free()
        assert pool.stats()[:4] == before[:4]      # all but `committed` (a high-water mark)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_pool_reclaim_after_kill_storm_long():
    with Pool.create(8 << 20, name="storm") as pool:
        before = pool.stats()
        pids, handed = _storm(pool, 300, seed=1, reclaim=True)
        assert pool.stats().live_allocs == len(handed)
        for sd in handed:
            Allocation.attach(sd).free()
        assert pool.stats()[:4] == before[:4]      # all but `committed` (a high-water mark)
        pool._validate()
