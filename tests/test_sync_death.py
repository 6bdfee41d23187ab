"""ember.sync_c when a process dies (SIGKILL): holder death for every type,
dead waiters, and kill storms on a Lock protecting a shared counter (short
always, long under -m slow)."""
import os
import random
import signal
import time

import pytest

from ember.pools_c import Pool
from ember.sync_c import (Barrier, BoundedSemaphore, BrokenBarrierError, Condition, Event, Lock,
                          OwnerDied, RLock, Semaphore)
from procs import alive, fork, join, kill, reap

_OWNER_DIED = (r"^{cls} \(pool '.*', offset \d+\): acquired, but its previous holder \(pid {pid}\) "
               r"died while holding it; the state it protects may be inconsistent: {tail}$")
_TAIL = r"repair it, call consistent\(\), then release\(\)"
_TAIL_WITH = (r"the lock was released again, because a `with` block must not run on it: "
              r"acquire\(\) it, repair the state, call consistent\(\), then release\(\)")


@pytest.fixture
def pool(request):
    with Pool.create(1 << 20, name="sdeath-" + request.node.name[:28]) as p:
        yield p


def _hold_and_hang(ready, fn):
    """Child body: fn() (acquire something), tell the parent, wait to be killed."""
    fn()
    ready.set()
    while True:
        time.sleep(60)


def _killed_holder(pool, fn, reap_it=True):
    ready = Event(pool=pool)
    pid = fork(_hold_and_hang, ready, fn)
    assert ready.wait(30)
    os.kill(pid, signal.SIGKILL)
    if reap_it:
        reap(pid)
    ready.destroy()
    return pid


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reaped", [True, False], ids=["reaped", "zombie"])
def test_lock_holder_death_reported_to_next_acquirer(pool, reaped):
    lock = Lock(pool=pool)
    pid = _killed_holder(pool, lock.acquire, reap_it=reaped)
    with pytest.raises(OwnerDied, match=_OWNER_DIED.format(cls="Lock", pid=pid, tail=_TAIL)) as ei:
        lock.acquire(timeout=30)
    assert ei.value.pid == pid
    assert lock._state() == (os.getpid(), 0, pid, 1)      # held by us, marked, one death
    lock.consistent()
    lock.release()
    assert lock.acquire(timeout=0) is True                # repaired: no report any more
    lock.release()
    assert lock._state() == (0, 0, 0, 1)
    if not reaped:
        reap(pid)


@pytest.mark.timeout(60)
def test_lock_try_once_sees_dead_holder(pool):
    lock = Lock(pool=pool)
    pid = _killed_holder(pool, lock.acquire)
    with pytest.raises(OwnerDied):
        lock.acquire(False)
    lock.consistent()
    lock.release()


@pytest.mark.timeout(60)
def test_lock_report_passed_on_until_consistent(pool):
    lock = Lock(pool=pool)
    pid = _killed_holder(pool, lock.acquire)
    with pytest.raises(OwnerDied):
        lock.acquire(timeout=30)
    lock.release()                                        # no consistent(): passed on

    def child():
        with pytest.raises(OwnerDied, match=_OWNER_DIED.format(cls="Lock", pid=pid, tail=_TAIL)):
            lock.acquire(timeout=30)
        lock.consistent()
        lock.release()

    assert join(fork(child)) == 0
    assert lock.acquire(timeout=0) is True
    lock.release()
    assert lock._state()[3] == 1                          # still one death, reported twice


@pytest.mark.timeout(60)
def test_lock_with_statement_on_dead_holder_raises_and_does_not_hold(pool):
    lock = Lock(pool=pool)
    pid = _killed_holder(pool, lock.acquire)
    with pytest.raises(OwnerDied, match=_OWNER_DIED.format(cls="Lock", pid=pid, tail=_TAIL_WITH)):
        with lock:
            pytest.fail("the with block ran on suspect state")
    assert not lock.locked()
    with pytest.raises(OwnerDied):                        # still marked: reported again
        lock.acquire()
    lock.consistent()
    lock.release()
    with lock:
        pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [Lock, RLock])
def test_with_statement_on_free_but_unrepaired_lock(pool, cls):
    """Released without consistent(): the lock is free but marked, and a
    `with` block must raise OwnerDied (not hang, not run, not hold it)."""
    lock = cls(pool=pool)
    pid = _killed_holder(pool, lock.acquire)
    with pytest.raises(OwnerDied):
        lock.acquire(timeout=30)
    lock.release()
    with pytest.raises(OwnerDied, match=_OWNER_DIED.format(cls=cls.__name__, pid=pid, tail=_TAIL_WITH)):
        with lock:
            pytest.fail("the with block ran on suspect state")
    assert not lock.locked()


@pytest.mark.timeout(60)
def test_lock_waiter_in_other_process_takes_over_from_dead_holder(pool):
    lock = Lock(pool=pool)
    waiting = Event(pool=pool)
    ready = Event(pool=pool)
    holder = fork(_hold_and_hang, ready, lock.acquire)
    assert ready.wait(30)

    def waiter():
        waiting.set()
        try:
            lock.acquire(timeout=30)
        except OwnerDied as e:
            assert e.pid == holder
            lock.consistent()
            lock.release()
            os._exit(5)
        os._exit(1)

    w = fork(waiter)
    assert waiting.wait(30)
    os.kill(holder, signal.SIGKILL)
    assert join(w) == 5
    reap(holder)
    assert not lock.locked()


@pytest.mark.timeout(60)
def test_lock_dead_waiter_costs_nothing(pool):
    lock = Lock(pool=pool)
    waiting = Event(pool=pool)
    lock.acquire()

    def waiter():
        waiting.set()
        lock.acquire()

    w = fork(waiter)
    assert waiting.wait(30)
    kill(w)
    lock.release()
    assert lock.acquire(timeout=0) is True                # no report: the waiter held nothing
    lock.release()
    assert lock._state() == (0, 0, 0, 0)


@pytest.mark.timeout(60)
def test_rlock_holder_death(pool):
    r = RLock(pool=pool)

    def twice():
        r.acquire()
        r.acquire()

    pid = _killed_holder(pool, twice)
    with pytest.raises(OwnerDied, match=_OWNER_DIED.format(cls="RLock", pid=pid, tail=_TAIL)):
        r.acquire(timeout=30)
    assert r._is_owned() and r._state()[:3] == (os.getpid(), 1, pid)
    r.consistent()
    r.release()
    assert not r.locked()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [Semaphore, BoundedSemaphore])
def test_semaphore_permits_of_dead_holder_come_back(pool, cls):
    s = cls(3, pool=pool)

    def take2():
        assert s.acquire() and s.acquire()

    _killed_holder(pool, take2)
    assert s.acquire(timeout=0)                           # the one left
    assert s.acquire(timeout=30) and s.acquire(timeout=30)   # the dead holder's two
    assert s.get_value() == 0
    s.release(3)
    assert s.get_value() == 3
    if cls is BoundedSemaphore:
        with pytest.raises(ValueError):
            s.release()


@pytest.mark.timeout(60)
def test_semaphore_reclaim_false_keeps_consumed_permits(pool):
    s = Semaphore(2, pool=pool, reclaim=False)
    _killed_holder(pool, s.acquire)
    assert s._reclaim() == 0 and s.get_value() == 1
    assert s.acquire(timeout=0) is True
    assert s.acquire(timeout=0) is False


@pytest.mark.timeout(60)
def test_semaphore_waiter_gets_permit_of_holder_killed_while_it_waits(pool):
    s = BoundedSemaphore(1, pool=pool)
    ready = Event(pool=pool)
    holder = fork(_hold_and_hang, ready, s.acquire)
    assert ready.wait(30)

    def waiter():
        assert s.acquire(timeout=30)

    w = fork(waiter)
    os.kill(holder, signal.SIGKILL)
    assert join(w) == 0
    reap(holder)
    assert s.get_value() == 0                             # held by the (dead) waiter now...
    assert s.acquire(timeout=30)                          # ...and counted back again


@pytest.mark.timeout(60)
def test_event_dead_waiter_costs_nothing(pool):
    ev = Event(pool=pool)
    waiting = Event(pool=pool)

    def waiter():
        waiting.set()
        ev.wait()

    w = fork(waiter)
    assert waiting.wait(30)
    kill(w)

    def waiter2():
        assert ev.wait(30)

    w2 = fork(waiter2)
    ev.set()
    assert join(w2) == 0


@pytest.mark.timeout(60)
def test_barrier_party_death_while_waiting_breaks_it(pool):
    b = Barrier(3, pool=pool)
    dead = fork(b.wait)
    while b.n_waiting != 1:
        os.sched_yield()
    kill(dead)

    def other():
        with pytest.raises(BrokenBarrierError):
            b.wait(timeout=30)

    w = fork(other)
    with pytest.raises(BrokenBarrierError):
        b.wait(timeout=30)
    assert join(w) == 0
    assert b.broken
    b.reset()
    assert not b.broken
    # usable again
    pid = fork(b.wait, 30)
    pid2 = fork(b.wait, 30)
    b.wait(30)
    assert [join(pid), join(pid2)] == [0, 0]


@pytest.mark.timeout(60)
def test_barrier_death_in_action_breaks_it(pool):
    in_action = Event(pool=pool)

    def action():
        in_action.set()
        while True:
            time.sleep(60)

    b = Barrier(2, action=action, pool=pool)

    def waiter():
        with pytest.raises(BrokenBarrierError):
            b.wait(timeout=30)

    w = fork(waiter)
    while b.n_waiting != 1:
        os.sched_yield()
    last = fork(b.wait, 30)
    assert in_action.wait(30)
    os.kill(last, signal.SIGKILL)
    assert join(w) == 0
    reap(last)
    assert b.broken


# ------------------------------------------------------------ kill storms

_COUNTER, _OWNER, _STOP, _VIOL, _NREP, _REPORTS = 0, 1, 2, 3, 4, 5
_MAXREP = 4000


def _storm_worker(lock, mv):
    me = os.getpid()
    while mv[_STOP] == 0:
        try:
            lock.acquire()
        except OwnerDied as e:
            # A death is reported: the owner word is 0 or a dead process.
            o = mv[_OWNER]
            if o != 0 and alive(o):
                mv[_VIOL] += 1
            n = mv[_NREP]
            if n < _MAXREP:
                mv[_REPORTS + n] = e.pid
                mv[_NREP] = n + 1
            mv[_OWNER] = 0
            lock.consistent()
        else:
            if mv[_OWNER] != 0:              # an unreported death, or two holders
                mv[_VIOL] += 1
        mv[_OWNER] = me
        mv[_COUNTER] += 1
        for _ in range(random.randrange(20)):
            pass
        if mv[_OWNER] != me:                 # someone else inside at the same time
            mv[_VIOL] += 1
        mv[_OWNER] = 0
        lock.release()


def _storm(kills, nworkers, seed):
    rng = random.Random(seed)
    with Pool.create(1 << 20, name=f"sstorm-{seed}") as pool:
        lock = Lock(pool=pool)
        a = pool.alloc(8 * (_REPORTS + _MAXREP))
        mv = memoryview(a).cast("q")
        workers = []
        # (a failure must not leave the workers running nor the view
        # exported: the pool's destroy would refuse, its segment left)
        try:
            for i in range(len(mv)):
                mv[i] = 0
            workers = [fork(_storm_worker, lock, mv) for _ in range(nworkers)]
            killed = set()
            for k in range(kills):
                # wait for progress so kills land inside and outside the lock
                target = mv[_COUNTER] + rng.randrange(1, 50)
                deadline = time.monotonic() + 30
                while mv[_COUNTER] < target:
                    assert time.monotonic() < deadline, \
                        f"wedged after {k} kills (counter {mv[_COUNTER]})"
                    os.sched_yield()
                i = rng.randrange(nworkers)
                os.kill(workers[i], signal.SIGKILL)
                reap(workers[i])
                killed.add(workers[i])
                workers[i] = fork(_storm_worker, lock, mv)
            mv[_STOP] = 1
            assert [join(w) for w in workers] == [0] * nworkers
            try:
                lock.acquire(timeout=30)
            except OwnerDied as e:                 # the last death may be unreported yet
                n = mv[_NREP]
                mv[_REPORTS + n] = e.pid
                mv[_NREP] = n + 1
                lock.consistent()
            assert mv[_VIOL] == 0
            reports = [mv[_REPORTS + i] for i in range(mv[_NREP])]
            assert len(reports) == len(set(reports)), "a death was reported twice"
            assert set(reports) <= killed
            assert len(reports) <= lock._state()[3]   # a taker killed before logging loses its log entry
            assert mv[_COUNTER] > kills
            lock.release()
            return len(reports)
        finally:
            for w in workers:
                kill(w)
            mv.release()
            a.free()


@pytest.mark.timeout(120)
def test_lock_kill_storm_short():
    _storm(kills=40, nworkers=3, seed=11)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_lock_kill_storm_long():
    reported = _storm(kills=1500, nworkers=4, seed=12)
    assert reported > 0


@pytest.mark.timeout(60)
def test_condition_dead_waiter_absorbs_no_notify(pool):
    c = Condition(pool=pool)

    def waiter():
        with c:
            c.wait()

    dead = fork(waiter)
    while c._n_waiting() != 1:
        os.sched_yield()
    # counted as waiting before it gives the lock up: kill it only once it
    # has (else it dies holding the lock, and the live waiter's `with`
    # rightly raises OwnerDied instead of waiting)
    with c:
        pass
    kill(dead)

    def live():
        with c:
            assert c.wait(30)

    w = fork(live)
    while c._n_waiting() != 2:
        os.sched_yield()
    with c:
        c.notify()                                 # the oldest waiter is dead: skipped
    assert join(w) == 0
    assert c._n_waiting() == 0


@pytest.mark.timeout(60)
def test_condition_wait_reports_lock_holder_death(pool):
    c = Condition(Lock(pool=pool))
    waiting = Event(pool=pool)
    ready = Event(pool=pool)

    def waiter():
        with pytest.raises(OwnerDied):
            with c:
                waiting.set()
                c.wait(30)                         # reacquiring finds the holder dead
        os._exit(0)

    w = fork(waiter)
    assert waiting.wait(30)

    def notify_and_die():
        c.acquire()
        c.notify()
        ready.set()
        while True:
            time.sleep(60)

    d = fork(notify_and_die)
    assert ready.wait(30)
    os.kill(d, signal.SIGKILL)
    assert join(w) == 0
    reap(d)


def _sem_worker(sem, mv, k):
    while mv[0] == 0:
        assert sem.acquire(timeout=30)
        mv[1 + k] += 1                      # progress of this worker slot
        sem.release()


@pytest.mark.timeout(120)
def test_bounded_semaphore_kill_storm_loses_no_permit():
    rng = random.Random(5)
    with Pool.create(1 << 20, name="sstorm-sem") as pool:
        sem = BoundedSemaphore(2, pool=pool)
        a = pool.alloc(8 * 8)
        mv = memoryview(a).cast("q")
        for i in range(len(mv)):
            mv[i] = 0
        workers = [fork(_sem_worker, sem, mv, k) for k in range(4)]
        for _ in range(30):
            k = rng.randrange(4)
            target = mv[1 + k] + rng.randrange(1, 30)
            deadline = time.monotonic() + 30
            while mv[1 + k] < target:
                assert time.monotonic() < deadline, "wedged"
                os.sched_yield()
            os.kill(workers[k], signal.SIGKILL)
            reap(workers[k])
            workers[k] = fork(_sem_worker, sem, mv, k)
        mv[0] = 1
        assert [join(w) for w in workers] == [0] * 4
        sem._reclaim()
        assert sem.get_value() == 2          # every permit of a dead holder came back, none extra
        assert sem.acquire(timeout=0) and sem.acquire(timeout=0) and not sem.acquire(timeout=0)
        sem.release(2)
        mv.release()
        a.free()
