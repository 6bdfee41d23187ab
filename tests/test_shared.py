"""ember.serve / ember.connect: shared objects hosted in a managed process
and called through proxies from every process of the runtime."""
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import ember
from ember.objects import naming, shared
from objhelp import uname

pytest_plugins = ["ember.testing"]


class Counter:
    def __init__(self, start=0):
        self.n = start
        self.label = "counter"

    def inc(self, k=1):
        self.n += k
        return self.n

    def fail(self, what):
        raise KeyError(what)

    def fail_unpicklable(self):
        e = ValueError("bad")
        e.lock = threading.Lock()
        raise e

    def double(self, a):
        return a * 2

    def zeros(self, n):
        return np.zeros(n, dtype=np.uint8)

    def die(self):
        os.kill(os.getpid(), signal.SIGKILL)

    def block(self, started, never):
        started.set()
        never.wait()

    def __len__(self):
        return self.n

    def make_lock(self):
        return threading.Lock()

    def slow(self, started, gate):
        started.set()
        gate.wait(30)
        return "late"


class Broken:
    def __init__(self):
        raise RuntimeError("cannot build")


def _host_gone(ref, timeout=10):
    from ember.globalservices import process
    return process.join(ref.p_uid, timeout=timeout)


def _use_proxy(p, k):
    return p.inc(k)


@pytest.mark.timeout(60)
def test_serve_connect_call_attribute_and_len(ember_runtime):
    name = uname("counter")
    ref = ember.serve(Counter(5), name=name)
    p = ember.connect(name, timeout=5)
    assert p.inc() == 6 and p.inc(k=4) == 10
    assert p.n == 10 and p.label == "counter"
    p.label = "renamed"
    assert p.label == "renamed"
    assert len(p) == 10
    assert p._callmethod("inc", (1,)) == 11
    assert p._getvalue().n == 11
    assert ref.proxy().n == 11
    assert re.match(r"^<ember\.Proxy 'counter-\w+' o_uid=\d+>$", repr(p))
    with pytest.raises(AttributeError, match=r"^'Counter' object has no attribute 'nope'$"):
        p.nope
    # the handle is not a proxy: the error says what to use
    with pytest.raises(AttributeError, match=r"^'SharedRef' object has no attribute 'inc': .*"
                                             r"through a proxy: ref\.proxy\(\)\.inc, or "
                                             r"ember\.connect\(name\)$"):
        ref.inc()
    assert pickle.loads(pickle.dumps(ref)).o_uid == ref.o_uid
    ref.destroy()
    assert _host_gone(ref) == 0


@pytest.mark.timeout(60)
def test_exception_comes_back_as_itself_with_remote_traceback(ember_runtime):
    ref = ember.serve(Counter())
    p = ref.proxy()
    with pytest.raises(KeyError, match=r"^'x'$") as ei:
        p.fail("x")
    cause = ei.value.__cause__
    assert isinstance(cause, ember.RemoteTraceback)
    assert "in fail\n    raise KeyError(what)" in str(cause)
    with pytest.raises(ember.RemoteError, match=r"^ValueError: bad$") as ei:
        p.fail_unpicklable()
    assert "could not be sent back as itself" in ei.value.traceback
    assert p.inc() == 1                   # the host serves on
    ref.destroy()


@pytest.mark.timeout(60)
def test_create_builds_in_the_host_and_its_failure_raises(ember_runtime):
    ref = ember.objects.create(Counter, 3, name=uname("built"))
    assert ref.proxy().inc() == 4
    ref.destroy()
    with pytest.raises(RuntimeError, match=r"^cannot build$") as ei:
        shared.create(Broken, name=uname("broken"))
    assert "in __init__" in str(ei.value.__cause__)
    assert [r for r in naming.get_list() if r[2] == "Shared"] == []


@pytest.mark.timeout(60)
def test_bad_arguments(ember_runtime):
    with pytest.raises(ember.ObjectError, match=r"^lifetime must be one of 'runtime', 'owner', "
                       r"'refcount' or a Scope, got 'forever'$"):
        ember.serve(Counter(), lifetime="forever")
    with pytest.raises(ember.ObjectError, match=r"^name must be a non-empty str or None, got ''$"):
        ember.serve(Counter(), name="")
    with pytest.raises(ember.ObjectTimeout):
        ember.connect(uname("nobody"), timeout=0.05)
    ref = ember.serve(Counter())
    with pytest.raises(TypeError, match=r"^cannot pickle the arguments of inc\(\) on shared "
                       r"object o_uid \d+: cannot pickle '_thread.lock' object$"):
        ref.proxy().inc(threading.Lock())
    with pytest.raises(TypeError, match=r"^cannot pickle the result of make_lock\(\): cannot "
                       r"pickle '_thread.lock' object$"):
        ref.proxy().make_lock()
    ref.destroy()


@pytest.mark.timeout(90)
def test_proxy_travels_to_a_process_and_through_a_queue(ember_runtime):
    ref = ember.serve(Counter(), name=uname("travel"))
    p = ref.proxy()
    proc = ember.Process(target=_use_proxy, args=(p, 10))
    proc.start()
    assert proc.result(timeout=60) == 10
    proc.join()
    proc.close()
    q = ember.Queue()
    q.put(p)
    p2 = q.get(timeout=10)
    assert p2.inc() == 11
    assert pickle.loads(pickle.dumps(p)).n == 11
    ref.destroy()


@pytest.mark.timeout(90)
def test_many_callers_are_all_served(ember_runtime):
    ref = ember.serve(Counter(), name=uname("many"))
    p = ref.proxy()
    procs = [ember.Process(target=_loop_inc, args=(p, 200)) for _ in range(4)]
    for pr in procs:
        pr.start()
    threads = [threading.Thread(target=_loop_inc, args=(p, 200)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for pr in procs:
        assert pr.result(timeout=60) is None
        pr.join()
        pr.close()
    assert p.n == 6 * 200
    ref.destroy()


def _loop_inc(p, n):
    for _ in range(n):
        p.inc()


@pytest.mark.timeout(60)
def test_large_numpy_argument_and_result(ember_runtime):
    ref = ember.serve(Counter())
    p = ref.proxy()
    a = np.arange(2_000_000, dtype=np.int64)
    r = p.double(a)
    assert r.dtype == np.int64 and r.shape == a.shape and r[-1] == 3_999_998
    z = p.zeros(5 << 20)
    assert z.nbytes == 5 << 20 and not z.any()
    del r, z
    ref.destroy()


@pytest.mark.timeout(60)
def test_host_killed_mid_call_raises_process_died(ember_runtime):
    ref = ember.serve(Counter(), name=uname("victim"))
    p = ref.proxy()
    started, never = ember.Event(), ember.Event()

    def killer():
        started.wait(30)
        from ember.globalservices import process
        process.kill(ref.p_uid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    msg = (rf"^shared object '{ref.name}' \(o_uid {ref.o_uid}\): its host process \(p_uid "
           rf"{ref.p_uid}, pid {ref.pid}\) ended before replying to {{}}$")
    with pytest.raises(ember.ProcessDied, match=msg.format(r"block\(\)")):
        p.block(started, never)
    t.join()
    with pytest.raises(ember.ProcessDied, match=msg.format(r"inc\(\)")):
        p.inc()                           # later calls too, at once
    with pytest.raises(ember.ProcessDied, match=msg.format("getting attribute 'n'")):
        p.n
    ref.destroy()


@pytest.mark.timeout(60)
def test_host_dying_in_the_call_itself(ember_runtime):
    ref = ember.serve(Counter())
    p = ref.proxy()
    with pytest.raises(ember.ProcessDied, match=r"ended before replying to die\(\)$"):
        p.die()
    ref.destroy()


@pytest.mark.timeout(60)
def test_destroyed_object_raises_shared_object_error(ember_runtime):
    name = uname("gone")
    ref = ember.serve(Counter(), name=name)
    p = ember.connect(name)
    assert p.inc() == 1
    ref.destroy()
    assert _host_gone(ref) == 0           # the host noticed and exited
    with pytest.raises(ember.SharedObjectError, match=rf"^shared object '{name}' \(o_uid "
                       rf"{ref.o_uid}\) was destroyed$"):
        p.inc()
    assert name not in {n for _, n, _, _ in naming.get_list()}


# ---------------------------------------------------------------- lifetimes
def _serve_and_exit(name, lifetime):
    return ember.serve(Counter(7), name=name, lifetime=lifetime).p_uid


@pytest.mark.timeout(90)
def test_lifetime_runtime_outlives_its_creator(ember_runtime):
    name = uname("rt")
    pr = ember.Process(target=_serve_and_exit, args=(name, "runtime"))
    pr.start()
    pr.join()
    assert pr.exitcode == 0
    pr.close()
    p = ember.connect(name, timeout=10)
    assert p.inc() == 8
    naming.destroy(name)


@pytest.mark.timeout(90)
def test_lifetime_owner_ends_with_its_creator(ember_runtime):
    name = uname("own")
    pr = ember.Process(target=_serve_and_exit, args=(name, "owner"))
    pr.start()
    host = pr.result(timeout=60)
    pr.join()
    assert pr.exitcode == 0
    pr.close()
    from ember.globalservices import process
    assert process.join(host, timeout=20) == 0      # the host saw its object end
    with pytest.raises(ember.ObjectTimeout):
        ember.connect(name, timeout=0.1)
    assert not [r for r in naming.get_list() if r[2] == "Shared"]


@pytest.mark.timeout(60)
def test_lifetime_refcount_ends_with_its_last_holder(ember_runtime):
    ref = ember.serve(Counter(), lifetime="refcount")
    p = ref.proxy()
    ref.close()
    assert p.inc() == 1                  # the proxy still holds it
    o_uid = p._o_uid
    p._close()
    assert _host_gone(ref) == 0
    assert o_uid not in {u for u, _, _, _ in naming.get_list()}


@pytest.mark.timeout(90)
def test_attached_interpreter_uses_a_proxy(ember_runtime):
    name = uname("attached")
    ref = ember.serve(Counter(40), name=name)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import ember
        ember.init(address="auto")
        p = ember.connect({name!r}, timeout=10)
        print("got", p.inc(2))
        try:
            p.fail("k")
        except KeyError as e:
            print("raised", repr(e), type(e.__cause__).__name__)
    """)], capture_output=True, text=True, timeout=60, cwd=os.path.dirname(__file__))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["got 42", "raised KeyError('k') RemoteTraceback"]
    ref.destroy()


class Gate:
    def wait_open(self, gate):
        return gate.wait(30)

    def open(self, gate):
        gate.set()
        return "opened"


@pytest.mark.timeout(60)
def test_threads_serve_calls_concurrently(ember_runtime):
    ref = ember.serve(Gate(), threads=2)
    p = ref.proxy()
    gate = ember.Event()
    out = []
    t = threading.Thread(target=lambda: out.append(p.wait_open(gate)))
    t.start()
    assert p.open(gate) == "opened"     # served while the other call blocks in the host
    t.join()
    assert out == [True]
    with pytest.raises(ValueError, match=r"^threads must be an int >= 1, got 0$"):
        ember.serve(Gate(), threads=0)
    ref.destroy()


def _hold_and_wait(p, started, never):
    p.inc()
    started.set()
    never.wait()


@pytest.mark.timeout(90)
def test_refcount_dead_holder_is_counted_out(ember_runtime):
    ref = ember.serve(Counter(), lifetime="refcount")
    started, never = ember.Event(), ember.Event()
    holder = ember.Process(target=_hold_and_wait, args=(ref.proxy(), started, never))
    holder.start()
    assert started.wait(60)
    ref.close()                           # only the holder's reference is left
    assert ref.o_uid in {u for u, _, _, _ in naming.get_list()}
    holder.kill()
    holder.join()
    holder.close()
    del holder                            # its args held this process's proxy
    import gc
    gc.collect()
    assert _host_gone(ref, timeout=30) == 0
    assert ref.o_uid not in {u for u, _, _, _ in naming.get_list()}


class Resource:
    def close(self):
        return "closed in the host"


@pytest.mark.timeout(60)
def test_object_methods_are_not_hidden_by_the_proxy(ember_runtime):
    import gc
    import weakref
    ref = ember.serve(Resource())
    p = ref.proxy()
    assert p.close() == "closed in the host"
    w = weakref.ref(p)
    del p                                 # no reference cycle: freed at once
    assert w() is None
    gc.collect()
    ref.destroy()


def _call_slow(p, started, gate):
    return p.slow(started, gate)


@pytest.mark.timeout(90)
def test_caller_killed_mid_call_costs_the_host_nothing(ember_runtime):
    ref = ember.serve(Counter())
    p = ref.proxy()
    started, gate = ember.Event(), ember.Event()
    caller = ember.Process(target=_call_slow, args=(p, started, gate))
    caller.start()
    assert started.wait(60)
    caller.kill()
    caller.join()
    caller.close()
    gate.set()                            # the host answers a caller that is gone
    assert p.inc() == 1                   # and serves the others on
    assert p.slow(ember.Event(), gate) == "late"
    ref.destroy()


def _load_only_in(pid):
    if os.getpid() != pid:
        raise ImportError("No module named 'only_in_the_caller'")
    return Unloadable()


class Unloadable:
    """Pickles in the caller; its unpickling fails anywhere else (as an
    argument of a class only the caller can import)."""
    def __reduce__(self):
        return (_load_only_in, (os.getpid(),))


@pytest.mark.timeout(60)
def test_argument_the_host_cannot_unpickle_raises_in_the_caller(ember_runtime):
    ref = ember.serve(Counter())
    p = ref.proxy()
    with pytest.raises(ember.RemoteError, match=r"^ImportError: .*only_in_the_caller") as ei:
        p.double(Unloadable())
    assert "could not unpickle the request" in str(ei.value)
    assert p.inc() == 1                   # the host serves on
    # the same in a request too large for a slot (a pool block's view)
    with pytest.raises(ember.RemoteError, match=r"^ImportError: .*only_in_the_caller") as ei:
        p.double((Unloadable(), b"x" * 200_000))
    assert "could not unpickle the request" in str(ei.value)
    assert p.inc() == 2
    ref.destroy()


class _Leaf:
    def value(self):
        return 42


class _Tree:
    """The root of a tree of shared objects: its attribute is a proxy."""

    def __init__(self, leaf):
        self.leaf = leaf


class _Adder:
    def __call__(self, x):
        return x + 1


@pytest.mark.timeout(60)
def test_a_proxy_is_callable_only_when_its_object_is(ember_runtime):
    # Every class has its metaclass's __call__: it is not the object's own, and
    # a proxy of an object without __call__ is not callable.  So a shared
    # object holding a proxy in an attribute gives that proxy (not a method
    # of that name) to `root.leaf`.
    leaf = ember.serve(_Leaf())
    tree = ember.serve(_Tree(leaf.proxy()))
    adder = ember.serve(_Adder())
    try:
        assert not callable(leaf.proxy())
        got = tree.proxy().leaf
        assert isinstance(got, ember.Proxy), got
        assert got.value() == 42
        p = adder.proxy()
        assert callable(p) and p(1) == 2
    finally:
        for ref in (tree, leaf, adder):
            ref.destroy()


def _processes():
    from ember import messages as m
    from ember.globalservices._client import call
    return call(m.ServiceDump)["processes"]


def _label_of(p_uid):
    return next(p["label"] for p in _processes() if p["p_uid"] == p_uid)


@pytest.mark.timeout(60)
def test_ember_ps_names_a_host_by_its_object(ember_runtime):
    # (not "Process-1 (ember.objects.shared._host_main)" for every host)
    name = uname("registry")
    ref = ember.serve(Counter(), name=name)
    made = ember.objects.create(Counter, 3)
    job = uname("job")
    try:
        assert re.match(rf"^Process-\d+ \(shared object '{name}': Counter\)$",
                        _label_of(ref.p_uid)), _label_of(ref.p_uid)
        assert re.match(r"^Process-\d+ \(shared object: Counter\)$", _label_of(made.p_uid))
        before = {p["p_uid"] for p in _processes()}
        with ember.scope(job):
            ember.dict(), ember.list(), ember.Namespace()
            labels = sorted(re.sub(r"^Process-\d+ ", "", p["label"]) for p in _processes()
                            if p["p_uid"] not in before)
        assert labels == [f"(shared object 'scope:{job}': scope)", "(shared object: Namespace)",
                          "(shared object: dict)", "(shared object: list)"], labels
    finally:
        ref.destroy()
        made.destroy()
