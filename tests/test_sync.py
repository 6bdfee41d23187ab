"""ember.sync_c semantics across real processes (forked children and
``python -c`` subprocesses): the stdlib's expectations for Lock, RLock,
Semaphore, BoundedSemaphore, Event and Barrier, pickling, and errors.
Holder death is in test_sync_death.py."""
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import ctypes
import threading

import pytest

import ember.exceptions as exc
from ember.pools_c import Pool
from ember.sync_c import (Barrier, BoundedSemaphore, BrokenBarrierError, Condition, Event, Lock,
                          OwnerDied, ReleaseError, RLock, Semaphore, SyncError, Value, Array)
from procs import fork, join


@pytest.fixture
def pool(request):
    with Pool.create(1 << 20, name="sync-" + request.node.name[:30]) as p:
        yield p


def _shared_ints(pool, n):
    """n int64 words in pool memory, visible to forked children."""
    a = pool.alloc(8 * n)
    mv = memoryview(a).cast("q")
    for i in range(n):
        mv[i] = 0
    return a, mv


def _py(code, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------- Lock

@pytest.mark.timeout(60)
def test_lock_mutual_exclusion_across_processes(pool):
    lock = Lock(pool=pool)
    a, mv = _shared_ints(pool, 3)          # counter, owner, violations

    def work():
        me = os.getpid()
        for _ in range(2000):
            with lock:
                if mv[1] != 0:
                    mv[2] += 1
                mv[1] = me
                mv[0] = mv[0] + 1
                if mv[1] != me:
                    mv[2] += 1
                mv[1] = 0

    pids = [fork(work) for _ in range(3)]
    work()
    assert [join(p) for p in pids] == [0, 0, 0]
    assert (mv[0], mv[2]) == (8000, 0)
    mv.release()
    a.free()


@pytest.mark.timeout(60)
def test_lock_timeouts_and_nonblocking(pool):
    lock = Lock(pool=pool)
    assert lock.acquire() is True
    assert lock.locked()

    def child():
        assert lock.acquire(False) is False
        assert lock.acquire(block=False, timeout=5) is False
        assert lock.acquire(timeout=0) is False
        assert lock.acquire(timeout=-1) is False          # negative: try once (multiprocessing)
        assert lock.acquire(timeout=0.05) is False
        assert lock.locked()

    assert join(fork(child)) == 0
    lock.release()
    assert not lock.locked()
    assert lock.acquire(timeout=0) is True
    lock.release()


@pytest.mark.timeout(60)
def test_lock_release_by_other_process_and_errors(pool):
    lock = Lock(pool=pool)
    lock.acquire()
    assert join(fork(lock.release)) == 0            # multiprocessing: any process may release
    assert not lock.locked()
    with pytest.raises(ReleaseError, match=r"^Lock \(pool '.*', offset \d+\): release unlocked lock$"):
        lock.release()
    with pytest.raises(ValueError):
        lock.release()
    with pytest.raises(RuntimeError):
        lock.release()


@pytest.mark.timeout(60)
def test_lock_blocking_acquire_woken_by_release_in_other_process(pool):
    lock = Lock(pool=pool)
    ev = Event(pool=pool)
    lock.acquire()

    def child():
        ev.set()
        assert lock.acquire(timeout=30) is True
        lock.release()

    pid = fork(child)
    assert ev.wait(30)
    lock.release()
    assert join(pid) == 0


@pytest.mark.timeout(60)
def test_lock_ctrl_c_interrupts_blocking_acquire(pool):
    lock = Lock(pool=pool)
    ev = Event(pool=pool)
    lock.acquire()

    def child():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            ev.set()
            lock.acquire()
        except KeyboardInterrupt:
            os._exit(7)
        os._exit(1)

    pid = fork(child)
    assert ev.wait(30)
    os.kill(pid, signal.SIGINT)
    assert join(pid) == 7
    assert lock._state()[0] == os.getpid()          # still ours
    lock.release()


# ------------------------------------------------------------------ RLock

@pytest.mark.timeout(60)
def test_rlock_recursion_and_ownership(pool):
    r = RLock(pool=pool)
    assert r.acquire() and r.acquire() and r.acquire(timeout=0)
    assert r._is_owned() and r._state()[1] == 3

    def child():
        assert r.acquire(timeout=0.05) is False
        with pytest.raises(ReleaseError, match=r"^RLock \(pool '.*', offset \d+\): cannot release "
                                               r"un-acquired lock$"):
            r.release()

    assert join(fork(child)) == 0

    errors = []

    def other_thread():
        try:
            r.release()
        except ReleaseError as e:
            errors.append(str(e))
        errors.append(r.acquire(timeout=0.05))

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert errors[0].endswith("cannot release un-acquired lock") and errors[1] is False
    r.release()
    r.release()
    assert r.locked()
    r.release()
    assert not r.locked() and not r._is_owned()
    with pytest.raises(ReleaseError):
        r.release()
    with r:
        with r:
            assert r._state()[1] == 2
    assert not r.locked()


# -------------------------------------------------------------- Semaphore

@pytest.mark.timeout(60)
def test_semaphore_counts_across_processes(pool):
    s = Semaphore(2, pool=pool)
    assert s.get_value() == 2
    assert s.acquire() and s.acquire(timeout=0)
    assert s.acquire(False) is False and s.get_value() == 0

    def child():
        assert s.acquire(timeout=0.05) is False
        s.release()                                 # a release without holding adds a permit
        s.release(2)

    assert join(fork(child)) == 0
    assert s.get_value() == 3
    assert all(s.acquire(timeout=0) for _ in range(3))
    assert s.acquire(timeout=0) is False
    s.release(5)
    assert s.get_value() == 5                       # an unbounded semaphore may grow


@pytest.mark.timeout(60)
def test_semaphore_blocking_acquire_woken_by_other_process(pool):
    s = Semaphore(0, pool=pool)
    ev = Event(pool=pool)

    def child():
        ev.set()
        assert s.acquire(timeout=30)

    pid = fork(child)
    assert ev.wait(30)
    s.release()
    assert join(pid) == 0
    assert s.get_value() == 0


@pytest.mark.timeout(60)
def test_bounded_semaphore_release_error(pool):
    b = BoundedSemaphore(2, pool=pool)
    with pytest.raises(ReleaseError, match=r"^BoundedSemaphore \(pool '.*', offset \d+\): "
                                           r"semaphore or lock released too many times$"):
        b.release()
    assert b.acquire()

    def child():
        b.release()                                 # on behalf of the parent
        with pytest.raises(ValueError, match=r"released too many times$"):
            b.release()

    assert join(fork(child)) == 0
    assert b.get_value() == 2
    with b:
        assert b.get_value() == 1
    assert repr(b) == "<ember.BoundedSemaphore(value=2, maxvalue=2)>"


def test_semaphore_bad_arguments(pool):
    with pytest.raises(ValueError, match=r"^semaphore initial value must be >= 0$"):
        Semaphore(-1, pool=pool)
    with pytest.raises(TypeError, match=r"^Semaphore\(\) value must be an int, got float$"):
        Semaphore(1.5, pool=pool)
    s = Semaphore(pool=pool)
    with pytest.raises(ValueError, match=r"^n must be one or more$"):
        s.release(0)


# ------------------------------------------------------------------ Event

@pytest.mark.timeout(60)
def test_event_wakes_waiters_in_other_processes(pool):
    ev = Event(pool=pool)
    ready = Semaphore(0, pool=pool)
    assert ev.is_set() is False and ev.wait(0) is False and ev.wait(0.01) is False

    def child():
        ready.release()
        assert ev.wait(30) is True
        assert ev.is_set()

    pids = [fork(child) for _ in range(3)]
    for _ in pids:
        assert ready.acquire(timeout=30)
    ev.set()
    assert [join(p) for p in pids] == [0, 0, 0]
    ev.set()                                         # idempotent
    assert ev.wait() is True
    ev.clear()
    assert ev.is_set() is False and ev.wait(timeout=0.01) is False


# ---------------------------------------------------------------- Barrier

@pytest.mark.timeout(60)
def test_barrier_indices_and_action_across_processes(pool):
    a, mv = _shared_ints(pool, 21)                # [k * 5 + round] = index; [20] actions

    def action():
        mv[20] += 1

    b = Barrier(4, action=action, pool=pool)
    assert (b.parties, b.n_waiting, b.broken) == (4, 0, False)

    def party(k):
        for rnd in range(5):
            mv[k * 5 + rnd] = b.wait(timeout=30)

    pids = [fork(party, k) for k in range(3)]
    party(3)
    assert [join(p) for p in pids] == [0, 0, 0]
    for rnd in range(5):
        assert sorted(mv[k * 5 + rnd] for k in range(4)) == [0, 1, 2, 3]
    assert mv[20] == 5                            # the action ran once per generation
    assert (b.n_waiting, b.broken) == (0, False)
    mv.release()
    a.free()


@pytest.mark.timeout(60)
def test_barrier_indices_are_a_permutation(pool):
    b = Barrier(3, pool=pool)
    a, mv = _shared_ints(pool, 3)

    def child():
        mv[b.wait(timeout=30)] += 1

    pids = [fork(child) for _ in range(2)]
    mv[b.wait(timeout=30)] += 1
    assert [join(p) for p in pids] == [0, 0]
    assert list(mv) == [1, 1, 1]
    mv.release()
    a.free()


@pytest.mark.timeout(60)
def test_barrier_abort_reset_and_timeout(pool):
    b = Barrier(3, pool=pool)

    def waiter():
        with pytest.raises(BrokenBarrierError, match=r"^Barrier \(pool '.*', offset \d+\): the barrier "
                                                      r"was broken \(aborted, reset, timed out, or a "
                                                      r"party died\) while waiting$"):
            b.wait()

    pid = fork(waiter)
    while b.n_waiting != 1:
        os.sched_yield()
    b.abort()
    assert join(pid) == 0
    assert b.broken
    with pytest.raises(threading.BrokenBarrierError, match=r"the barrier is broken$"):
        b.wait()
    b.reset()
    assert not b.broken and b.n_waiting == 0

    pid = fork(waiter)
    while b.n_waiting != 1:
        os.sched_yield()
    b.reset()                                     # current waiters get BrokenBarrierError
    assert join(pid) == 0
    assert not b.broken

    with pytest.raises(BrokenBarrierError, match=r"timed out \(the barrier is now broken\)$"):
        b.wait(timeout=0.05)
    assert b.broken
    b.reset()
    b2 = Barrier(2, timeout=0.05, pool=pool)       # the default timeout
    with pytest.raises(BrokenBarrierError):
        b2.wait()
    assert b2.broken


@pytest.mark.timeout(60)
def test_barrier_failing_action_breaks_it(pool):
    def bad():
        raise KeyError("boom")

    b = Barrier(2, action=bad, pool=pool)

    def child():
        with pytest.raises(BrokenBarrierError):
            b.wait(timeout=30)

    pid = fork(child)
    while b.n_waiting != 1:
        os.sched_yield()
    with pytest.raises(KeyError, match="boom"):
        b.wait(timeout=30)
    assert join(pid) == 0
    assert b.broken


def test_barrier_bad_arguments(pool):
    with pytest.raises(ValueError, match=r"^parties must be >= 1$"):
        Barrier(0, pool=pool)
    with pytest.raises(ValueError, match=r"^parties must be <= 64, got 65$"):
        Barrier(65, pool=pool)
    with pytest.raises(TypeError, match=r"^action must be callable or None$"):
        Barrier(2, action=3, pool=pool)


# --------------------------------------------------- pickling, life cycle

@pytest.mark.timeout(60)
def test_pickle_attaches_same_objects_in_another_process(pool):
    lock, ev, sem = Lock(pool=pool), Event(pool=pool), BoundedSemaphore(3, pool=pool)
    bar = Barrier(2, timeout=30, pool=pool)
    lock.acquire()
    sem.acquire()
    child = _py("""
        import pickle, sys
        from ember.pools_c import clear_attach_cache
        lock, ev, sem, bar = pickle.loads(bytes.fromhex(sys.argv[1]))
        print(lock.acquire(timeout=0), lock.locked(), sem.get_value(), bar.parties)
        ev.set()
        print(bar.wait())
        del lock, ev, sem, bar
        clear_attach_cache()
    """, pickle.dumps((lock, ev, sem, bar)).hex())
    assert ev.wait(30)
    i = bar.wait()
    out, err = child.communicate(timeout=50)
    assert child.returncode == 0, err
    assert err == ""
    first, second = out.splitlines()
    assert first == "False True 2 2"
    assert sorted([i, int(second)]) == [0, 1]
    lock.release()


def test_errors_and_life_cycle(pool):
    with pytest.raises(TypeError, match=r"^Lock\(\) needs pool=: the ember.pools_c.Pool the object "
                                        r"lives in$"):
        Lock()
    with pytest.raises(TypeError, match=r"^Event\(\): pool must be an ember.pools_c.Pool, got int$"):
        Event(pool=3)
    lock = Lock(pool=pool)
    sd = pickle.dumps(lock)
    ev = pickle.loads(pickle.dumps(Event(pool=pool)))
    # a Lock's memory attached as an Event is refused
    from ember.sync_c._sync import _attach
    with pytest.raises(exc.DescriptorError, match=r"^cannot attach Event at offset \d+ of pool '.*': "
                                                  r"the allocation does not hold an ember Event "
                                                  r"\[EMBER_ERR_BAD_MAGIC\]$"):
        _attach(Event, 4, lock.sdesc, None)
    lock.destroy()
    assert lock.closed
    with pytest.raises(SyncError, match=r"^Lock \(pool '.*', offset \d+\): the object was destroyed$"):
        lock.acquire()
    with pytest.raises(exc.DescriptorError):
        pickle.loads(sd)                          # the allocation was freed
    with pytest.raises(TypeError):
        Lock(3)
    ev.destroy()
    assert issubclass(OwnerDied, exc.SyncError) and not issubclass(OwnerDied, RuntimeError)
    assert issubclass(BrokenBarrierError, threading.BrokenBarrierError)


def test_pool_detached_under_object(pool):
    p2 = Pool.create(1 << 16, name="sync-detach")
    lock = Lock(pool=p2)
    p2.destroy()
    with pytest.raises(SyncError, match=r"^Lock \(pool 'sync-detach', offset \d+\): its pool is "
                                        r"detached or destroyed$"):
        lock.acquire()


# -------------------------------------------------------------- Condition

def _wait_until(cond):
    while not cond():
        os.sched_yield()


@pytest.mark.timeout(60)
def test_condition_notify_wakes_at_most_n_oldest_first(pool):
    c = Condition(pool=pool)
    a, mv = _shared_ints(pool, 4)                 # woken count, order of wake-ups

    def waiter(k):
        with c:
            assert c.wait(30) is True
            mv[1 + mv[0]] = k
            mv[0] += 1

    p1 = fork(waiter, 1)
    _wait_until(lambda: c._n_waiting() == 1)
    p2 = fork(waiter, 2)
    _wait_until(lambda: c._n_waiting() == 2)
    with c:
        c.notify()
    _wait_until(lambda: mv[0] == 1)
    assert c._n_waiting() == 1 and mv[1] == 1     # exactly one, the oldest
    p3 = fork(waiter, 3)
    _wait_until(lambda: c._n_waiting() == 2)
    with c:
        c.notify_all()
    assert [join(p) for p in (p1, p2, p3)] == [0, 0, 0]
    assert mv[0] == 3 and sorted(mv[2:4]) == [2, 3]
    mv.release()
    a.free()


@pytest.mark.timeout(60)
def test_condition_counts_under_the_stdlib_names(pool):
    """The waits begun, ended, and notified but not yet returned, read
    under the names of the stdlib Condition's semaphores (CPython's suite
    reads them): `_sleeping_count`, `_woken_count`, `_wait_semaphore`.  A
    wait that timed out, returned or whose process died has ended."""
    c = Condition(pool=pool)

    def counts():
        return (c._sleeping_count.get_value(), c._woken_count.get_value(),
                c._wait_semaphore.get_value())

    def waiter():
        with c:
            assert c.wait(30) is True

    assert counts() == (0, 0, 0)
    with c:
        assert c.wait(0) is False
    assert counts() == (1, 1, 0)
    p1 = fork(waiter)
    _wait_until(lambda: c._n_waiting() == 1)
    p2 = fork(waiter)
    _wait_until(lambda: c._n_waiting() == 2)
    with c:
        pass                                      # both gave the lock up
    assert counts() == (3, 1, 0)
    os.kill(p1, signal.SIGSTOP)
    try:
        with c:
            c.notify()                            # the oldest: stopped, notified, not returned
        assert counts() == (3, 1, 1)
    finally:
        os.kill(p1, signal.SIGCONT)
    assert join(p1) == 0
    assert counts() == (3, 2, 0)
    os.kill(p2, signal.SIGKILL)
    assert join(p2) == -signal.SIGKILL
    assert counts() == (3, 3, 0)                  # a dead waiter's wait has ended
    assert c._counts() == (3, 3, 0)
    assert repr(c._woken_count) == f"<_woken_count of {c!r}: 3>"


@pytest.mark.timeout(60)
def test_condition_producer_consumer_wait_for(pool):
    c = Condition(Lock(pool=pool))
    a, mv = _shared_ints(pool, 2)                 # items, consumed

    def consumer():
        for _ in range(50):
            with c:
                assert c.wait_for(lambda: mv[0] > 0, timeout=30)
                mv[0] -= 1
                mv[1] += 1

    pid = fork(consumer)
    for _ in range(50):
        with c:
            mv[0] += 1
            c.notify()
    assert join(pid) == 0
    assert (mv[0], mv[1]) == (0, 50)
    mv.release()
    a.free()


def test_condition_timeout_errors_and_rlock_depth(pool):
    c = Condition(pool=pool)
    with pytest.raises(ReleaseError, match=r"^Condition \(pool '.*', offset \d+\): cannot wait on "
                                           r"un-acquired lock$"):
        c.wait(0)
    with pytest.raises(ReleaseError, match=r"cannot notify on un-acquired lock$"):
        c.notify()
    with c:
        with c:
            assert c.wait(0.01) is False
            assert c.lock._state()[1] == 2        # the RLock depth is restored
            assert c.wait_for(lambda: False, timeout=0.01) is False
    assert not c.lock.locked() and c._n_waiting() == 0
    with pytest.raises(TypeError, match=r"^Condition\(\) lock must be an ember Lock or RLock, "
                                        r"got lock$"):
        Condition(threading.Lock(), pool=pool)
    c2 = pickle.loads(pickle.dumps(c))
    assert c2.lock.sdesc == c.lock.sdesc


# ----------------------------------------------------------- Value, Array

@pytest.mark.timeout(60)
def test_value_and_array_shared_across_processes(pool):
    v = Value("i", 0, pool=pool)
    arr = Array("d", 4, pool=pool)

    def work(k):
        for _ in range(500):
            with v:
                v.value += 1
        arr[k] = k + 0.5

    pids = [fork(work, k) for k in range(3)]
    work(3)
    assert [join(p) for p in pids] == [0, 0, 0]
    assert v.value == 2000
    assert arr[:] == [0.5, 1.5, 2.5, 3.5] and len(arr) == 4
    child = _py("""
        import pickle, sys
        from ember.pools_c import clear_attach_cache
        v, arr, s = pickle.loads(bytes.fromhex(sys.argv[1]))
        with v.get_lock():
            v.value = -7
        arr[1:3] = [9.0, 8.0]
        print(s.value.decode(), v.value)
        for o in (v, arr, s):
            o.close()
        clear_attach_cache()
    """, pickle.dumps((v, arr, Array("c", b"hi there", pool=pool, lock=False))).hex())
    out, err = child.communicate(timeout=50)
    assert child.returncode == 0, err
    assert out == "hi there -7\n" and err == ""
    assert v.value == -7 and arr[:] == [0.5, 9.0, 8.0, 3.5]
    live = pool.stats().live_allocs
    v.destroy()
    arr.destroy()
    assert pool.stats().live_allocs == live - 4     # data + lock each
    with pytest.raises(SyncError, match=r"^Value: closed or destroyed$"):
        v.value


class _Rec(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in
                ("value", "get_obj", "get_lock", "acquire", "close", "sdesc")]


@pytest.mark.timeout(60)
def test_value_of_a_structure_with_fields_named_as_its_methods(pool):
    """A Value of a Structure whose fields are named as the Value's own
    attributes (``value``, ``get_obj``, ``get_lock``, ``acquire``,
    ``close``, ``sdesc``) has the fields as attributes, read and written
    under the lock, in this process, a forked child and a pickled handle,
    as multiprocessing's synchronized wrapper makes a property of every
    field.  The Value's own methods stay reachable through the class
    (``Value.destroy(v)``).  The methods used to hide the fields (``v.close``
    was the method; ``v.close = 1`` replaced it on this handle only)."""
    v = Value(_Rec, 1, 2, 3, 4, 5, 6, pool=pool)
    show = lambda r: (r.value, r.get_obj, r.get_lock, r.acquire, r.close, r.sdesc)
    assert show(v) == (1, 2, 3, 4, 5, 6)

    def child():
        v.close, v.sdesc = 50, 60
        with Value.get_lock(v):
            v.value += 10

    assert join(fork(child)) == 0
    assert show(v) == (11, 2, 3, 4, 50, 60)
    w = pickle.loads(pickle.dumps(v))
    assert type(w) is type(v) and isinstance(w, Value)
    w.get_obj = 20
    assert show(v) == (11, 20, 3, 4, 50, 60) and Value.get_obj(v).get_obj == 20
    with v:                                       # the lock, not a field
        assert Value.get_lock(v)._is_owned()
    Value.close(w)
    live = pool.stats().live_allocs
    Value.destroy(v)
    assert pool.stats().live_allocs == live - 2     # data + lock


def test_value_array_errors(pool):
    with pytest.raises(ValueError, match=r"^unknown typecode 'z'; expected one of cubBhHiIlLqQfd or "
                                         r"a ctypes type$"):
        Value("z", pool=pool)
    with pytest.raises(TypeError, match=r"^pointer types cannot live in shared memory$"):
        Value(ctypes.c_char_p, pool=pool)
    with pytest.raises(TypeError, match=r"^Array\(\) needs pool=: the ember.pools_c.Pool it lives in$"):
        Array("i", 3)
    raw = Value(ctypes.c_double, 2.5, lock=False, pool=pool)
    assert raw.value == 2.5
    with pytest.raises(SyncError, match=r"^Value was made with lock=False: it has no lock$"):
        raw.get_lock()
    lk = Lock(pool=pool)
    shared_lock = Array("i", [1, 2], lock=lk, pool=pool)
    assert shared_lock.get_lock() is lk
    with shared_lock:
        assert lk.locked()
    raw.destroy()
    shared_lock.destroy()
    assert not lk.closed                          # a lock passed in is not ours to destroy


def test_public_names():
    import ember
    import ember.sync_c as m
    assert sorted(m.__all__) == sorted(["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event",
                                        "Barrier", "Condition", "Value", "Array", "SEM_SLOTS",
                                        "BARRIER_MAX_PARTIES", "SyncError", "OwnerDied",
                                        "ReleaseError", "BrokenBarrierError"])
    for n in m.__all__:
        assert getattr(m, n) is not None
    assert ember.OwnerDied is OwnerDied and ember.BrokenBarrierError is BrokenBarrierError
    assert (m.SEM_SLOTS, m.BARRIER_MAX_PARTIES) == (64, 64)


@pytest.mark.parametrize("make", [lambda p: Lock(pool=p), lambda p: RLock(pool=p),
                                  lambda p: Semaphore(pool=p), lambda p: Event(pool=p)],
                         ids=["Lock", "RLock", "Semaphore", "Event"])
def test_bad_timeout_raises_even_when_free(pool, make):
    o = make(pool)
    call = o.wait if isinstance(o, Event) else o.acquire
    with pytest.raises(TypeError, match=r"^timeout must be None or a number of seconds, got str$"):
        call(timeout="soon")
    with pytest.raises(ValueError, match=r"^timeout must be None or a number of seconds, got nan$"):
        call(timeout=float("nan"))
    if not isinstance(o, Event):
        assert not (o.locked() if hasattr(o, "locked") else o.get_value() != 1)
