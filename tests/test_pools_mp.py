"""ember.pools_c across real processes: attach and read in another process,
concurrent alloc/free with integrity checks, blocking alloc woken by another
process, Ctrl-C in a blocking alloc, and SIGKILL storms."""
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from ember.exceptions import PoolExhausted
from ember.pools_c import Pool
from procs import fork, kill, reap, wait_sleeping_on_shm

ENV = dict(os.environ)


def _py(code, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.timeout(60)
def test_pools_mp_write_here_read_there():
    with Pool.create(1 << 20, name="xproc") as pool:
        a = pool.alloc(11)
        memoryview(a)[:] = b"from parent"
        child = _py("""
            import sys
            from ember.pools_c import Allocation, Pool, clear_attach_cache
            a = Allocation.attach(bytes.fromhex(sys.argv[1]))
            data = bytes(memoryview(a))
            memoryview(a)[:] = b"from child!"
            p = Pool.attach(bytes.fromhex(sys.argv[2]))
            b = p.alloc(5)
            memoryview(b)[:] = b"reply"
            print(data.decode(), b.sdesc.hex(), p.stats().live_allocs, sep="|")
            p.detach()
            clear_attach_cache()
        """, a.sdesc.hex(), pool.sdesc.hex())
        out, err = child.communicate(timeout=50)
        assert child.returncode == 0, err
        assert err == ""                      # no ResourceWarning etc.
        data, bsd, live = out.strip().split("|")
        assert data == "from parent" and live == "2"
        assert bytes(memoryview(a)) == b"from child!"
        from ember.pools_c import Allocation
        b = Allocation.attach(bytes.fromhex(bsd))
        assert bytes(memoryview(b)) == b"reply" and b.pool is pool
        a.free()
        b.free()
        assert pool.stats().live_allocs == 0


@pytest.mark.timeout(60)
def test_pools_mp_attach_destroyed_pool_in_child():
    pool = Pool.create(1 << 16)
    sd = pool.sdesc
    pool.destroy()
    child = _py("""
        import sys
        from ember.pools_c import Pool, PoolError
        try:
            Pool.attach(bytes.fromhex(sys.argv[1]))
        except PoolError as e:
            print(e)
    """, sd.hex())
    out, err = child.communicate(timeout=50)
    assert child.returncode == 0, err
    assert "the pool's segment does not exist" in out and "[EMBER_ERR_NOT_FOUND]" in out


def _integrity_worker(sdesc, wid, seconds, seed):
    pool = Pool.attach(sdesc)
    rng = random.Random(seed)
    held = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        if held and (len(held) > 20 or rng.random() < 0.5):
            a, tag = held.pop(rng.randrange(len(held)))
            with memoryview(a) as m:
                if bytes(m) != tag * a.size:
                    raise AssertionError(f"worker {wid}: block at {a.offset} overwritten")
            a.free()
        else:
            try:
                a = pool.alloc(rng.choice([1, 64, 100, 1000, 4096, 20000]))
            except PoolExhausted:
                continue
            tag = bytes([(wid * 37 + n) % 251 + 1])
            n += 1
            with memoryview(a) as m:
                m[:] = tag * a.size
            held.append((a, tag))
    for a, tag in held:
        assert bytes(memoryview(a)) == tag * a.size
        a.free()
    pool.detach()


@pytest.mark.timeout(60)
def test_pools_mp_concurrent_integrity():
    with Pool.create(1 << 20, name="conc") as pool:
        pids = [fork(_integrity_worker, pool.sdesc, w, 1.5, w) for w in range(4)]
        codes = [reap(p) for p in pids]
        assert codes == [0] * 4
        pool._validate()
        st = pool.stats()
        assert st.live_allocs == 0 and st.free == st.total


def _hog_then_free(sdesc, delay):
    pool = Pool.attach(sdesc)
    (a,) = pool._live_allocations()
    time.sleep(delay)
    a.free()
    pool.detach()


@pytest.mark.timeout(60)
def test_pools_mp_blocking_alloc_woken_by_other_process():
    with Pool.create(1 << 16) as pool:
        whole = pool.alloc(pool.stats().largest_free)
        whole._disown()                       # the other process frees it
        pid = fork(_hog_then_free, pool.sdesc, 0.3)
        # the whole pool is the child's block: it fits only once that is
        # freed (a timeout would raise PoolExhausted)
        a = pool.alloc(100, timeout=60)
        assert reap(pid) == 0
        a.free()


@pytest.mark.timeout(60)
def test_pools_mp_ctrl_c_interrupts_blocking_alloc():
    with Pool.create(1 << 16) as pool:
        whole = pool.alloc(pool.stats().largest_free)
        child = _py("""
            import signal, sys, time
            from ember.pools_c import Pool
            # Ctrl-C raises KeyboardInterrupt even when the suite was started
            # with SIGINT ignored (a shell's background job), as in a terminal
            signal.signal(signal.SIGINT, signal.default_int_handler)
            p = Pool.attach(bytes.fromhex(sys.argv[1]))
            print("waiting", flush=True)
            t = time.monotonic()
            try:
                p.alloc(100, timeout=None)
            except KeyboardInterrupt:
                print(f"interrupted after {time.monotonic() - t:.2f}", flush=True)
            p.detach()
        """, pool.sdesc.hex())
        assert child.stdout.readline().strip() == "waiting"
        wait_sleeping_on_shm(child.pid)     # in its alloc: a SIGINT before its try would end it
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=20)
        assert child.returncode == 0, err
        assert out.startswith("interrupted after"), (out, err)
        whole.free()


# ---------------------------------------------------------------- kill storms

HOLD = 16


def _storm_worker(sdesc, ledger, slot, seed):
    """alloc/free loop with pattern checks; records every block it holds in
    its ledger slot (recorded right after alloc, cleared right before free),
    so that only a block in flight at the moment of death can be lost."""
    pool = Pool.attach(sdesc)
    rng = random.Random(seed)
    ids = memoryview(ledger).cast("Q")
    base = slot * HOLD
    held = []
    while True:
        if held and (len(held) == HOLD or rng.random() < 0.5):
            j, a = held.pop(rng.randrange(len(held)))
            with memoryview(a) as m:
                if m[:8] != struct.pack("<Q", a.id) or m[-1] != a.id % 256:
                    os._exit(12)              # overlap / corruption
            ids[base + j] = 0
            a.free()
        else:
            try:
                a = pool.alloc(rng.choice([9, 64, 500, 4096, 30000]))
            except PoolExhausted:
                continue
            j = next(k for k in range(HOLD) if ids[base + k] == 0)
            ids[base + j] = a.id
            with memoryview(a) as m:
                m[:8] = struct.pack("<Q", a.id)
                m[-1] = a.id % 256
            held.append((j, a))


def _storm(kills, nworkers, seed):
    rng = random.Random(seed)
    ledger = mmap.mmap(-1, 8 * HOLD * nworkers)   # anonymous shared, no fd
    ids = memoryview(ledger).cast("Q")
    with Pool.create(1 << 20, name="storm") as pool:
        sd = pool.sdesc
        pids = [fork(_storm_worker, sd, ledger, w, rng.random()) for w in range(nworkers)]
        try:
            for _ in range(kills):
                time.sleep(rng.random() * 0.004)
                w = rng.randrange(nworkers)
                os.kill(pids[w], signal.SIGKILL)
                status = reap(pids[w])
                pids[w] = None
                assert os.WIFSIGNALED(status), f"worker exited with {os.waitstatus_to_exitcode(status)}"
                # survivors keep going; the dead worker's recorded blocks are
                # freed on its behalf, and its slot restarts
                recorded = {ids[w * HOLD + j] for j in range(HOLD)} - {0}
                for a in pool._live_allocations():
                    if a.id in recorded:
                        a.free()
                for j in range(HOLD):
                    ids[w * HOLD + j] = 0
                pids[w] = fork(_storm_worker, sd, ledger, w, rng.random())
        finally:
            for pid in pids:
                if pid is not None:
                    kill(pid)
        pool._validate()
        # stats add up, and the only unrecorded blocks are those in flight
        # at a death: at most one per kill
        live = pool._live_allocations()
        st = pool.stats()
        assert st.live_allocs == len(live)
        recorded = set(ids.tolist()) - {0}
        lost = [a for a in live if a.id not in recorded]
        assert len(lost) <= kills + nworkers
        for a in live:
            a.free()
        st = pool.stats()
        assert st.free == st.total and st.live_allocs == 0 and st.largest_free == st.total - 64
        whole = pool.alloc(st.largest_free)   # the whole heap again
        whole.free()
        pool._validate()
        repairs = pool._repair_count()
    del ids
    ledger.close()
    return len(lost), repairs


@pytest.mark.timeout(120)
def test_pools_mp_kill_storm_short():
    lost, repairs = _storm(kills=100, nworkers=3, seed=1)
    print(f"kill storm: 100 kills, {lost} blocks lost, {repairs} repairs")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pools_mp_kill_storm_long():
    lost, repairs = _storm(kills=1200, nworkers=3, seed=2)
    print(f"kill storm: 1200 kills, {lost} blocks lost, {repairs} repairs")
