"""ember.Manager(): multiprocessing.managers.SyncManager's API.  The first
tests are ported from CPython's Lib/test/_test_multiprocessing.py
(_TestContainers, _TestMyManager) and run against ember.Manager."""
from multiprocessing.context import ProcessError

import pytest

import ember
from ember.objects import naming
from ember.objects.managers import BaseManager, SyncManager

pytest_plugins = ["ember.testing"]


@pytest.fixture
def m(ember_runtime):
    with ember.Manager() as manager:
        yield manager
    assert [r for r in naming.get_list() if r[2] not in ("SharedReply",)] == []


# ---------------------------------------------------- CPython _TestContainers
@pytest.mark.timeout(120)
def test_list(m):
    a = m.list(list(range(10)))
    assert a[:] == list(range(10))
    b = m.list()
    assert b[:] == []
    b.extend(list(range(5)))
    assert b[:] == list(range(5))
    assert b[2] == 2
    assert b[2:10] == [2, 3, 4]
    b *= 2
    assert b[:] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert b + [5, 6] == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]
    assert a[:] == list(range(10))
    d = [a, b]
    e = m.list(d)
    assert [element[:] for element in e] == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                                             [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]]
    f = m.list([a])
    a.append("hello")
    assert f[0][:] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, "hello"]


@pytest.mark.timeout(120)
def test_list_iter(m):
    a = m.list(list(range(10)))
    it = iter(a)
    assert list(it) == list(range(10))
    assert list(it) == []  # exhausted
    # list modified during iteration (the contents are fetched at the first next())
    it = iter(a)
    a[0] = 100
    assert next(it) == 100


@pytest.mark.timeout(120)
def test_list_proxy_in_list(m):
    a = m.list([m.list(range(3)) for _i in range(3)])
    assert [inner[:] for inner in a] == [[0, 1, 2]] * 3
    a[0][-1] = 55
    assert a[0][:] == [0, 1, 55]
    for i in range(1, 3):
        assert a[i][:] == [0, 1, 2]
    assert a[1].pop() == 2
    assert len(a[1]) == 2
    for i in range(0, 3, 2):
        assert len(a[i]) == 3
    del a
    b = m.list()
    b.append(b)
    del b


@pytest.mark.timeout(120)
def test_dict(m):
    d = m.dict()
    indices = list(range(65, 70))
    for i in indices:
        d[i] = chr(i)
    assert d.copy() == dict((i, chr(i)) for i in indices)
    assert sorted(d.keys()) == indices
    assert sorted(d.values()) == [chr(i) for i in indices]
    assert sorted(d.items()) == [(i, chr(i)) for i in indices]
    it = iter(d)
    assert list(it) == indices
    assert list(it) == []  # exhausted
    # dictionary changed size during iteration
    it = iter(d)
    d.clear()
    with pytest.raises(RuntimeError, match="changed size during iteration"):
        next(it)


@pytest.mark.timeout(120)
def test_dict_keywords_are_items(m):
    # as the stdlib's: name=, exist_ok=, ... are items here (ember.dict's
    # own options are not SyncManager.dict's)
    opts = m.dict({"a": 0}, name="n", exist_ok=True, in_pool=1, lifetime="x")
    assert opts.copy() == {"a": 0, "name": "n", "exist_ok": True, "in_pool": 1, "lifetime": "x"}


@pytest.mark.timeout(120)
def test_dict_proxy_nested(m):
    pets = m.dict(ferrets=2, hamsters=4)
    supplies = m.dict(water=10, feed=3)
    d = m.dict(pets=pets, supplies=supplies)
    assert supplies["water"] == 10
    assert d["supplies"]["water"] == 10
    d["supplies"]["blankets"] = 5
    assert supplies["blankets"] == 5
    assert d["supplies"]["blankets"] == 5
    d["supplies"]["water"] = 7
    assert supplies["water"] == 7
    assert d["supplies"]["water"] == 7
    del pets
    del supplies
    assert d["pets"]["ferrets"] == 2
    d["supplies"]["blankets"] = 11
    assert d["supplies"]["blankets"] == 11
    pets = d["pets"]
    supplies = d["supplies"]
    supplies["water"] = 7
    assert supplies["water"] == 7
    assert d["supplies"]["water"] == 7
    d.clear()
    assert len(d) == 0
    assert supplies["water"] == 7
    assert pets["hamsters"] == 4
    lst = m.list([pets, supplies])
    lst[0]["marmots"] = 1
    assert pets["marmots"] == 1
    assert lst[0]["marmots"] == 1
    del pets
    del supplies
    assert lst[0]["marmots"] == 1
    outer = m.list([[88, 99], lst])
    assert isinstance(outer[0], list)  # Not a ListProxy
    assert outer[-1][-1]["feed"] == 3


@pytest.mark.timeout(120)
def test_nested_queue(m):
    a = m.list()  # Test queue inside list
    a.append(m.Queue())
    a[0].put(123)
    assert a[0].get() == 123
    b = m.dict()  # Test queue inside dict
    b[0] = m.Queue()
    b[0].put(456)
    assert b[0].get() == 456


@pytest.mark.timeout(120)
def test_namespace(m):
    n = m.Namespace()
    n.name = "Bob"
    n.job = "Builder"
    n._hidden = "hidden"
    assert (n.name, n.job) == ("Bob", "Builder")
    del n.job
    assert str(n) == "Namespace(name='Bob')"
    assert hasattr(n, "name")
    assert not hasattr(n, "job")


# ---------------------------------------------------- CPython _TestMyManager
class FooBar(object):
    def f(self):
        return "f()"

    def g(self):
        raise ValueError

    def _h(self):
        return "_h()"


class MyManager(BaseManager):
    pass


MyManager.register("Foo", callable=FooBar)
MyManager.register("Bar", callable=FooBar, exposed=("f", "_h"))


def _common(manager):
    foo = manager.Foo()
    bar = manager.Bar()
    foo_methods = [name for name in ("f", "g", "_h") if hasattr(foo, name)]
    bar_methods = [name for name in ("f", "g", "_h") if hasattr(bar, name)]
    assert foo_methods == ["f", "g"]
    assert bar_methods == ["f", "_h"]
    assert foo.f() == "f()"
    with pytest.raises(ValueError):
        foo.g()
    assert foo._callmethod("f") == "f()"
    with pytest.raises(ember.RemoteError, match=r"^AttributeError: method '_h' of 'FooBar' "
                       r"object is not exposed$"):
        foo._callmethod("_h")
    assert bar.f() == "f()"
    assert bar._h() == "_h()"
    assert bar._callmethod("f") == "f()"
    assert bar._callmethod("_h") == "_h()"


@pytest.mark.timeout(120)
def test_mymanager(ember_runtime):
    manager = MyManager()
    manager.start()
    _common(manager)
    manager.shutdown()
    with MyManager() as manager:
        _common(manager)
    assert [r for r in naming.get_list() if r[2] == "Shared"] == []


# ---------------------------------------------------- states and the rest
@pytest.mark.timeout(60)
def test_states_as_the_stdlib(ember_runtime):
    manager = SyncManager()
    with pytest.raises(ProcessError, match=r"^Manager has not been started$"):
        manager.dict()
    manager.start()
    with pytest.raises(ProcessError, match=r"^Already started server$"):
        manager.start()
    manager.shutdown()
    with pytest.raises(ProcessError, match=r"^Manager has shut down$"):
        manager.start()
    with pytest.raises(ProcessError, match=r"^Manager has shut down$"):
        with manager:
            pass
    with pytest.raises(TypeError, match=r"^initializer must be a callable$"):
        SyncManager().start(initializer=3)
    manager.shutdown()                  # idempotent


def _worker(d, lst, v, arr, ev, lock):
    with lock:
        d["child"] = v.value
        lst.append(sum(arr[:]))
        v.value += 1
    ev.set()


@pytest.mark.timeout(120)
def test_objects_used_from_another_process(m):
    d, lst = m.dict(), m.list()
    v, arr = m.Value("i", 41), m.Array("d", [1.0, 2.0])
    ev, lock = m.Event(), m.Lock()
    p = ember.Process(target=_worker, args=(d, lst, v, arr, ev, lock))
    p.start()
    assert ev.wait(60)
    p.join()
    assert p.exitcode == 0
    p.close()
    assert (d.copy(), lst[:], v.value) == ({"child": 41}, [3.0], 42)
    for make in (m.RLock, m.Semaphore, m.BoundedSemaphore, m.Condition, m.JoinableQueue):
        make()
    assert m.Barrier(1).wait() == 0
    assert m._number_of_objects() == 12


# ---------------------------------------------------- method_to_typeid
class Tally:
    def __init__(self):
        self.n = 0

    def incr(self, k=1):
        self.n += k
        return self.n

    def hidden(self):
        return "hidden"


class Store:
    def __init__(self):
        self.tallies = {}

    def make(self, name):
        t = self.tallies[name] = Tally()
        return t

    def get(self, name):
        return self.tallies[name]

    def total(self):
        return sum(t.n for t in self.tallies.values())


class StoreManager(BaseManager):
    pass


StoreManager.register("Store", Store, method_to_typeid={"make": "Tally", "get": "Tally"})
StoreManager.register("Tally", None, exposed=("incr",), create_method=False)


def _wait_ended(o_uid, timeout=20):
    import gc
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        try:
            naming.query(o_uid)
        except ember.ObjectError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(120)
def test_method_to_typeid_returns_a_proxy_of_an_object_left_in_the_host(ember_runtime):
    from objhelp import run
    with StoreManager() as m:
        s = m.Store()
        t = s.make("a")
        assert isinstance(t, ember.Proxy)
        assert t.incr(2) == 2 and t.incr(3) == 5
        assert s.total() == 5                  # the same object as the host's
        assert s.get("a").incr() == 6          # get() returns a proxy of it too
        with pytest.raises(ember.RemoteError, match="'hidden' of 'Tally' object is not exposed"):
            t._callmethod("hidden")            # exposed as "Tally" was registered
        # the proxy travels to another process, which calls the same object
        assert run("ARGS[0].incr(10)", t) == 0
        assert s.total() == 16
        o_uid = t._o_uid
        assert naming.query(o_uid)["kind"] == "Shared"
        del t
        assert _wait_ended(o_uid)              # refcount: it ends with its last proxy
        assert s.total() == 16                 # (the host's own object lives on)
    assert [r for r in naming.get_list() if r[2] != "SharedReply"] == []


@pytest.mark.timeout(120)
def test_serve_with_method_to_typeid(ember_runtime):
    ref = ember.serve(Store(), method_to_typeid={"make": "Tally"})
    s = ref.proxy()
    t = s.make("x")
    assert isinstance(t, ember.Proxy) and t.incr(4) == 4 and t.hidden() == "hidden"
    assert s.total() == 4
    plain = s.total
    assert plain() == 4
    with pytest.raises(TypeError, match="method_to_typeid must map str to str"):
        ember.serve(Store(), method_to_typeid={"make": 1})
    del t
    ref.destroy()
