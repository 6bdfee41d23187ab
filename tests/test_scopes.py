"""ember.scope: objects torn down together; ember.dict / list / Namespace."""
import pytest

import ember
from ember.globalservices import process
from ember.objects import naming
from ember.objects.shared import PoolDict
from objhelp import uname

pytest_plugins = ["ember.testing"]


class Box:
    def __init__(self, v=0):
        self.v = v

    def get(self):
        return self.v


def _live():
    return {u for u, _, _, _ in naming.get_list()}


def _kinds():
    return sorted(k for _, _, k, _ in naming.get_list() if k != "SharedReply")


@pytest.mark.timeout(90)
def test_with_scope_destroys_everything_made_inside(ember_runtime):
    before = _live()
    with ember.scope(uname("job")) as s:
        ref = ember.serve(Box(3))
        d = ember.dict(a=1)
        lst = ember.list([1, 2])
        ns = ember.Namespace(x=1)
        q = ember.Queue()
        lock = ember.Lock(name=uname("lock"))
        d["b"] = 2
        lst.append(3)
        ns.y = 2
        assert (d.copy(), lst[:], ns.x + ns.y) == ({"a": 1, "b": 2}, [1, 2, 3], 3)
        assert len(s.members()) == 6
        assert _kinds() == ["Lock", "Queue", "Shared", "Shared", "Shared", "Shared", "Shared"]
    assert _live() - before <= {u for u, _, k, _ in naming.get_list() if k == "SharedReply"}
    assert _kinds() == []
    assert process.join(ref.p_uid, timeout=20) == 0
    with pytest.raises(ember.SharedObjectError, match=r"^shared object o_uid \d+ was destroyed$"):
        d["a"]
    del q, lock


@pytest.mark.timeout(90)
def test_scope_argument_and_nested_scopes(ember_runtime):
    outer = ember.scope(uname("outer"))
    with outer:
        with ember.scope(uname("inner")) as inner:
            d = ember.dict(scope=inner)
            d["k"] = 1
            ember.dict()["x"] = 1        # the innermost scope's
        keep = ember.dict()              # the outer one's
        assert _kinds() == ["Shared", "Shared"]      # outer scope and keep
        with pytest.raises(ember.SharedObjectError):
            d["k"]
        keep["z"] = 1
        inner2 = ember.scope(uname("inner2"))        # nested, closed by the outer one
        ember.dict(scope=inner2)["q"] = 1
        ref = ember.serve(Box(), lifetime=inner2)
    assert _kinds() == []
    assert process.join(ref.p_uid, timeout=20) == 0
    with pytest.raises(ember.SharedObjectError, match=r"^scope '.*' is closed$"):
        ember.serve(Box(), scope=outer)


def _make_scope_and_exit(name):
    s = ember.scope(name, lifetime="owner")
    ref = ember.serve(Box(), scope=s)
    q = ember.Queue(name=name + "-q")
    s.adopt(q)
    return ref.p_uid


@pytest.mark.timeout(90)
def test_scope_owned_by_a_process_closes_when_it_ends(ember_runtime):
    name = uname("owned")
    pr = ember.Process(target=_make_scope_and_exit, args=(name,))
    pr.start()
    host = pr.result(timeout=60)
    pr.join()
    pr.close()
    assert process.join(host, timeout=20) == 0
    import time
    deadline = time.monotonic() + 20
    while _kinds() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _kinds() == []


@pytest.mark.timeout(60)
def test_scope_attach_and_close_from_elsewhere(ember_runtime):
    name = uname("shared-scope")
    s = ember.scope(name)
    d = ember.dict(scope=s)
    other = ember.Scope.attach(name, timeout=5)
    assert other.members() == [d._o_uid]
    other.close()
    assert _kinds() == []
    s.close()                           # idempotent, even after another closed it


@pytest.mark.timeout(60)
def test_adopt_rejects_what_has_no_o_uid(ember_runtime):
    with ember.scope() as s:
        with pytest.raises(TypeError, match=r"^cannot put int in a scope: it has no o_uid$"):
            s.adopt(3)
    with pytest.raises(ember.ObjectError, match=r"^a scope's lifetime must be 'runtime' or "
                       r"'owner', got 'refcount'$"):
        ember.scope(lifetime="refcount")


def test_star_import_keeps_the_builtins():
    ns = {}
    exec("from ember import *", ns)
    assert "dict" not in ns and "list" not in ns and "serve" in ns and "Manager" in ns


@pytest.mark.timeout(90)
def test_scope_does_not_adopt_what_exist_ok_found(ember_runtime):
    # A soft create (exist_ok=True) that finds a live object does not
    # create it: the scope must not own it nor destroy it at its end.
    qname, ename, dname = uname("keep-q"), uname("keep-ev"), uname("keep-d")
    q = ember.Queue(name=qname)
    ev = ember.Event(name=ename)
    pd = PoolDict(name=dname)
    with ember.scope(uname("job")) as s:
        q2 = ember.Queue(name=qname, exist_ok=True)
        ev2 = ember.Event(name=ename, exist_ok=True)
        pd2 = PoolDict(name=dname, exist_ok=True)
        mine = ember.Queue(name=uname("mine"), exist_ok=True)     # new: the scope's
        assert (q2.o_uid, ev2.o_uid, pd2.o_uid) == (q.o_uid, ev.o_uid, pd.o_uid)
        assert s.members() == [mine.o_uid]
        q2.put("x")
        ev2.set()
        pd2["k"] = 1
    live = {u for u, _, _, _ in naming.get_list()}
    assert {q.o_uid, ev.o_uid, pd.o_uid} <= live and mine.o_uid not in live
    assert q.get(timeout=10) == "x" and ev.is_set() and pd["k"] == 1
    q2.detach()
    ev2.detach()
    for o in (q, ev, pd):
        naming.destroy(o.o_uid)
    del pd2, mine


@pytest.mark.timeout(120)
def test_served_containers_exist_ok(ember_runtime):
    # ember.dict/list/Namespace(name=..., exist_ok=True): a soft create, as
    # Queue's and PoolDict's: the live one of that name if there is one
    # (not made a member of the scope), else a new one.
    dname, lname, nname = uname("soft-d"), uname("soft-l"), uname("soft-n")
    d = ember.dict({"a": 1}, name=dname)
    lst = ember.list([1], name=lname)
    ns = ember.Namespace(name=nname, x=1)
    with pytest.raises(ember.ObjectError, match=rf"^an object is already named '{dname}' "
                       rf"\(Shared, o_uid {d._o_uid}\)$"):
        ember.dict(name=dname)
    with ember.scope(uname("job")) as s:
        d2 = ember.dict(name=dname, exist_ok=True)
        l2 = ember.list(name=lname, exist_ok=True)
        n2 = ember.Namespace(name=nname, exist_ok=True)
        assert (d2["a"], l2[0], n2.x) == (1, 1, 1)
        assert "exist_ok" not in d2
        new = ember.dict({"b": 2}, name=uname("soft-new"), exist_ok=True)    # made: the scope's
        assert s.members() == [new._o_uid]
        d2["a"] = 2
    assert d["a"] == 2 and lst[0] == 1 and ns.x == 1
    with pytest.raises(ember.SharedObjectError):
        new["b"]
    for p in (d, lst, ns):
        naming.destroy(p._o_uid)


PREVIOUS_RUNTIME = """
import os, time, ember
from ember import runtime
from ember.objects import naming

def wait(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return "ran"

# a runtime left with a served object that ended without its host joined here
runtime.init()
d = ember.dict({"a": 1})
naming.destroy(d._o_uid)            # (not d's destroy(), which joins its host)
first = d._o_uid
del d
runtime.shutdown()
# another runtime, in this same process: its o_uids and p_uids start again
runtime.init()
other = ember.Process(target=wait, args=("go",))
other.start()
q = ember.Queue()
with ember.scope() as s:
    s.adopt(q)                       # ended with the scope
print("same o_uid", q.o_uid == first, flush=True)
open("go", "w").close()
try:
    print("other", other.result(timeout=60), flush=True)
except ember.ProcessDied as e:
    print("other died", e, flush=True)
other.join(60)
print("exit", other.exitcode)
runtime.shutdown()
"""


@pytest.mark.timeout(120)
def test_a_scope_in_a_later_runtime_ends_no_process_of_it(tmp_path):
    """A process that served an object which ended without its host joined
    there (destroyed through GS, as a scope or anyone does), left that
    runtime and joined another (ember.shutdown(), ember.init(): a test
    suite's runtime per test): a scope that ends an object of the same
    o_uid there joins and kills no process of the new runtime.  The
    served hosts were kept by o_uid across runtimes, so the close joined
    the old host's p_uid, another process here, for 10 s, then SIGKILLed
    it (test_in_a_scope took 10 s after test_served_containers_exist_ok
    in one pytest worker)."""
    import subprocess
    import sys

    (tmp_path / "prog.py").write_text(PREVIOUS_RUNTIME)
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["same o_uid True", "other ran", "exit 0"], \
        (res.stdout, res.stderr)
