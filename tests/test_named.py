"""Named objects: rendezvous by name (attach before and after create), soft
create, the list call, each lifetime, and the named sync wrappers
(ember.Lock, ..., Value, Array) pickled into and attached from other
processes -- under ember.init() (ember_runtime fixture) and a real
`ember run`."""
import os
import pickle
import signal

import pytest

import ember
from ember.exceptions import ObjectError, ObjectTimeout, OwnerDied
from ember.objects import naming
from objhelp import join, kill, names, run, spawn, uname, uids
from test_runtime import ok, run_prog

pytest_plugins = ["ember.testing"]


@pytest.mark.timeout(120)
def test_attach_before_create_waits_for_the_name(ember_runtime):
    name = uname("jobs")
    back = ember.Queue()
    p = spawn("""
        import ember
        name, back = ARGS
        q = ember.Queue.attach(name, timeout=60)     # not created yet: waits
        back.put(("attached", q.name))
        back.put(q.get(timeout=60))
        """, name, back)
    with pytest.raises(ObjectTimeout, match=rf"^attach\('{name}'\) timed out: no object of that "
                                            rf"name was created$"):
        ember.Queue.attach(name, timeout=0)
    q = ember.Queue(name=name)
    assert back.get(timeout=60) == ("attached", name)
    q.put("job 1")
    assert back.get(timeout=60) == "job 1"
    assert join(p) == 0


@pytest.mark.timeout(60)
def test_attach_after_create_soft_create_and_the_list(ember_runtime):
    name = uname("q")
    q = ember.Queue(3, name=name)
    assert q.name == name and q.lifetime == "runtime"
    assert name in names()
    assert (q.o_uid, name, "Queue", "runtime") in naming.get_list()
    a = ember.Queue.attach(name)
    a.put(1)
    assert q.get() == 1 and a.maxsize == 3
    same = ember.Queue(3, name=name, exist_ok=True)
    assert same.o_uid == q.o_uid
    with pytest.raises(ObjectError, match=rf"^an object is already named '{name}' \(Queue, "
                                          rf"o_uid {q.o_uid}\)$"):
        ember.Queue(name=name)
    with pytest.raises(ObjectError, match=rf"^object '{name}' is a Queue, not a Lock$"):
        ember.Lock.attach(name)
    with pytest.raises(ObjectError, match=r"^lifetime must be one of 'runtime', 'owner', "
                                          r"'refcount', got 'forever'$"):
        ember.Queue(name=uname("x"), lifetime="forever")
    with pytest.raises(ObjectTimeout) as ei:
        ember.Event.attach(uname("never"), timeout=0.05)
    assert isinstance(ei.value, TimeoutError)
    q.destroy()
    assert name not in names()


@pytest.mark.timeout(120)
def test_lifetimes_runtime_owner_refcount(ember_runtime):
    rt_name, own_name, rc_name = uname("rt"), uname("own"), uname("rc")
    assert run("""
        import ember
        rt_name, own_name, rc_name = ARGS
        ember.Queue(name=rt_name).put("left behind")
        q = ember.Queue(name=own_name, lifetime="owner")
        ember.Queue(name=rc_name, lifetime="refcount")
        """, rt_name, own_name, rc_name) == 0
    # runtime: outlives its creator; owner: ended with it; refcount: no holder left
    assert rt_name in names() and own_name not in names() and rc_name not in names()
    assert ember.Queue.attach(rt_name).get(timeout=10) == "left behind"
    # refcount, with holders in two processes: ends with the last
    q = ember.Queue(name=rc_name, lifetime="refcount")
    other = ember.Queue.attach(rc_name)
    q.detach()
    assert rc_name in names()
    other.detach()
    assert rc_name not in names()


@pytest.mark.timeout(120)
def test_barrier_action_that_plain_pickle_refuses_travels_with_the_handle(ember_runtime):
    """A Barrier's action that plain pickle refuses (a local function) is
    kept out of the record and travels with each pickled handle: a child
    given the Barrier runs it when it arrives last (the barrier was refused
    before: "Can't pickle local object" at creation); attaching by name, which would get
    no action, is refused."""
    count, who = ember.Value("i", 0), ember.Array("i", 4)

    def action():
        with count.get_lock():
            who[count.value] = os.getpid()
            count.value += 1

    def party(b, first):
        if first:
            while b.n_waiting != 1:     # the other party waits: this one arrives last
                pass
        for _ in range(4):
            b.wait()
        return os.getpid()

    name = uname("bar")
    bar = ember.Barrier(2, action, timeout=60, name=name)
    p = ember.Process(target=party, args=(bar, True))
    p.start()
    party(bar, False)
    pid = p.result()
    p.join(60)
    assert p.exitcode == 0 and count.value == 4
    assert who[0] == pid                        # the child's copy of the action ran
    with pytest.raises(ObjectError, match=rf"^Barrier '{name}': its action pickles only with a "
                                          rf"handle .*: it cannot be attached by name$"):
        ember.Barrier.attach(name)
    with pytest.raises(ObjectError, match=rf"^Barrier '{name}': its action pickles only with a "):
        ember.Barrier(2, name=name, exist_ok=True)
    plain = ember.Barrier(2, print)             # a picklable action stays in the record
    assert bar._carry and not plain._carry
    bar.destroy()


@pytest.mark.timeout(120)
def test_named_sync_objects_across_processes(ember_runtime):
    n = {k: uname(k) for k in ("lock", "ev", "sem", "bar", "val", "arr", "cond", "rlock", "bsem")}
    lock = ember.Lock(name=n["lock"])
    ev = ember.Event(name=n["ev"])
    sem = ember.Semaphore(2, name=n["sem"])
    bar = ember.Barrier(2, name=n["bar"], timeout=60)
    val = ember.Value("i", 0, name=n["val"])
    arr = ember.Array("d", [0.0] * 4, name=n["arr"])
    cond = ember.Condition(ember.Lock(), name=n["cond"])
    rlock = ember.RLock(name=n["rlock"])
    bsem = ember.BoundedSemaphore(1, name=n["bsem"])
    p = spawn("""
        import ember
        n, = ARGS
        lock = ember.Lock.attach(n["lock"]); ev = ember.Event.attach(n["ev"])
        sem = ember.Semaphore.attach(n["sem"]); bar = ember.Barrier.attach(n["bar"])
        val = ember.Value.attach(n["val"]); arr = ember.Array.attach(n["arr"])
        cond = ember.Condition.attach(n["cond"]); rlock = ember.RLock.attach(n["rlock"])
        bsem = ember.BoundedSemaphore.attach(n["bsem"])
        with rlock:
            with rlock:
                pass
        for _ in range(100):
            with val.get_lock():
                val.value += 1
        arr[1] = 2.5
        with lock:
            sem.acquire()
        bsem.acquire(); bsem.release()
        ev.set()
        bar.wait()
        with cond:
            cond.wait_for(lambda: val.value >= 1000, timeout=60)
        """, n)
    bar.wait()
    assert ev.wait(60)
    for _ in range(900):
        with val.get_lock():
            val.value += 1
    with cond:
        cond.notify_all()
    assert join(p) == 0
    assert val.value == 1000 and arr[:] == [0.0, 2.5, 0.0, 0.0]
    # the exited holder's permit is counted back (when a try finds none free)
    assert sem.acquire(False) and sem.acquire(False)
    assert bsem.acquire(False)
    assert set(n.values()) <= names()
    with pytest.raises(ValueError, match=r"semaphore or lock released too many times"):
        bsem.release()
        bsem.release()


@pytest.mark.timeout(120)
def test_pickled_lock_into_a_child_killed_holding_it(ember_runtime):
    lock, ready = ember.Lock(), ember.Event()
    p = spawn("""
        lock, ready = ARGS
        lock.acquire()
        ready.set()
        import time
        time.sleep(600)
        """, lock, ready)
    assert ready.wait(60)
    kill(p)
    assert join(p) == -signal.SIGKILL
    with pytest.raises(OwnerDied) as ei:
        lock.acquire(timeout=60)
    assert ei.value.pid == p.location[1]
    lock.consistent()
    lock.release()
    assert lock.acquire(False)
    lock.release()


@pytest.mark.timeout(60)
def test_unnamed_objects_end_with_their_last_handle(ember_runtime):
    objs = [ember.Lock(), ember.Event(), ember.Value("d", 1.5), ember.Condition()]
    ids = {o.o_uid for o in objs}
    assert ids <= uids()
    copies = [pickle.loads(pickle.dumps(o)) for o in objs]
    for o in objs:
        o.detach()
    assert ids <= uids()
    for c in copies:
        c.detach()
    assert not ids & uids()


@pytest.mark.timeout(120)
def test_queue_and_lock_by_name_under_ember_run(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import sys
        import ember
        from ember.globalservices import process
        from ember.objects import naming
        worker = ("import ember\n"
                  "q = ember.Queue.attach('jobs', timeout=60)\n"
                  "res = ember.Queue.attach('results', timeout=60)\n"
                  "with ember.Lock.attach('io', timeout=60):\n"
                  "    pass\n"
                  "while (job := q.get()) is not None:\n"
                  "    res.put(job * 10)\n")
        ws = [process.create(sys.executable, ".", ["-c", worker]) for _ in range(2)]
        q, res, lock = ember.Queue(name="jobs"), ember.Queue(name="results"), ember.Lock(name="io")
        for i in range(100):
            q.put(i)
        for _ in ws:
            q.put(None)
        print(sorted(res.get(timeout=60) for _ in range(100)) == [i * 10 for i in range(100)])
        print([process.join(w.p_uid, timeout=60) for w in ws])
        print(sorted(n for _, n, _, _ in naming.get_list() if n))
    """))
    assert out.splitlines() == ["True", "[0, 0]", "['io', 'jobs', 'results']"]


@pytest.mark.timeout(90)
def test_a_barrier_action_of_the_main_script_reaches_other_processes(tmp_path):
    """A Barrier whose action is a function of the script run by `ember run`
    (plain pickle takes it, by reference to __main__): a child that attaches
    it by name, or gets it as an argument, runs it (its __main__ is not the
    script: it failed to unpickle the Barrier, "Can't get attribute 'act'",
    and the parent waited at the barrier until its timeout)."""
    out = ok(run_prog(tmp_path, r"""
        import os
        import ember

        def act():
            print("action in", "head" if os.environ["EMBER_P_UID"] == "1" else "a child",
                  flush=True)

        def by_name(name):
            return ember.Barrier.attach(name, timeout=30).wait(30)

        def by_handle(bar):
            return bar.wait(30)

        if __name__ == "__main__":
            named = ember.Barrier(2, action=act, name="meet", timeout=60)
            p = ember.Process(target=by_name, args=("meet",))
            p.start()
            head = named.wait(60)
            print("named", sorted([head, p.result()])); p.join()
            plain = ember.Barrier(2, action=act, timeout=60)
            p = ember.Process(target=by_handle, args=(plain,))
            p.start()
            head = plain.wait(60)
            print("passed", sorted([head, p.result()])); p.join()
            # what cloudpickle refuses (a ctypes Structure of the script) is made as before
            import ctypes
            class Rec(ctypes.Structure):
                _fields_ = [("x", ctypes.c_double)]
            print("value", ember.Value(Rec, 1.5, name="rec").x)
    """))
    lines = out.splitlines()
    assert [ln for ln in lines if not ln.startswith("action in")] == ["named [0, 1]",
                                                                      "passed [0, 1]",
                                                                      "value 1.5"], out
    assert len([ln for ln in lines if ln.startswith("action in ")]) == 2, out
