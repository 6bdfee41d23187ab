"""End to end under a real `ember run`: sync objects in the runtime's default
pool, passed (pickled) to a managed process that is SIGKILLed while holding
them."""
import pytest

from test_runtime import ok, run_prog


@pytest.mark.timeout(120)
def test_sync_objects_survive_killed_managed_process(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import pickle, signal, sys
        from ember.globalservices import pool, process
        from ember.pools_c import Pool
        from ember.sync_c import Barrier, BoundedSemaphore, BrokenBarrierError, Event, Lock, OwnerDied

        p = Pool.attach(pool.default().sdesc)
        lock, ready, sem, bar = Lock(pool=p), Event(pool=p), BoundedSemaphore(2, pool=p), Barrier(3, pool=p)
        child = ("import pickle, sys, time\n"
                 "lock, ready, sem, bar = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
                 "lock.acquire(); sem.acquire(); ready.set()\n"
                 "bar.wait()\n")
        c = process.create(sys.executable, ".", ["-c", child, pickle.dumps((lock, ready, sem, bar)).hex()])
        assert ready.wait(30)
        while bar.n_waiting != 1:
            pass
        process.kill(c.p_uid, signal.SIGKILL)
        assert process.join(c.p_uid, timeout=30) == -signal.SIGKILL
        try:
            lock.acquire(timeout=30)
        except OwnerDied as e:
            print("lock: OwnerDied from the child", e.pid == c.location.os_pid)
            lock.consistent()
        lock.release()
        print("semaphore: permits back", sem.acquire(timeout=30), sem.acquire(timeout=30))
        try:
            bar.wait(timeout=30)
        except BrokenBarrierError:
            print("barrier: broken")
        for o in (lock, ready, sem, bar):
            o.destroy()
        p.detach()
    """))
    assert out.splitlines() == ["lock: OwnerDied from the child True",
                                "semaphore: permits back True True",
                                "barrier: broken"]
