"""ember.dict(in_pool=True): a shared dict in pool memory (PoolDict)."""
import os
import pickle

import pytest

import ember
from ember.objects import naming
from ember.objects.shared import PoolDict

pytest_plugins = ["ember.testing"]


@pytest.mark.timeout(60)
def test_dict_methods(ember_runtime):
    d = ember.dict({"a": 1}, b=2, in_pool=True, capacity=16)
    assert isinstance(d, PoolDict)
    d["c"] = [1, 2]
    assert (d["a"], d["b"], d["c"], len(d)) == (1, 2, [1, 2], 3)
    assert "a" in d and "zz" not in d and d.get("zz", 5) == 5
    del d["a"]
    with pytest.raises(KeyError, match=r"^'a'$"):
        d["a"]
    with pytest.raises(KeyError):
        del d["a"]
    assert d.pop("b") == 2 and d.pop("b", 7) == 7
    assert d.setdefault("x", 9) == 9 and d.setdefault("x", 10) == 9
    d.update({"y": 1}, z=2)
    assert d.copy() == {"c": [1, 2], "x": 9, "y": 1, "z": 2}
    assert sorted(d) == sorted(d.keys()) == ["c", "x", "y", "z"]
    assert sorted(d.items()) == sorted(d.copy().items())
    for i in range(8):                 # deleted slots are reused
        d[i] = i
        del d[i]
    assert len(d) == 4
    d.clear()
    assert len(d) == 0 and d.copy() == {}
    d.destroy()


@pytest.mark.timeout(60)
def test_limits(ember_runtime):
    d = ember.dict(in_pool=True, capacity=8, slot_size=64)
    with pytest.raises(ValueError, match=r"^key and value pickle to \d+ bytes: more than a slot "
                       r"of this dict holds \(44\); make it with a larger slot_size$"):
        d["k"] = "v" * 100
    for i in range(6):
        d[i] = i
    with pytest.raises(ember.ObjectError, match=r"^<ember.PoolDict o_uid=\d+ len=6> is full: "
                       r"it holds at most 6 keys \(capacity=8\)$"):
        d[6] = 6
    d[5] = "replaced"                 # an existing key still can be set
    assert d[5] == "replaced"
    with pytest.raises(ValueError, match=r"^capacity must be a power of two >= 8, got 10$"):
        PoolDict(capacity=10)
    with pytest.raises(ValueError, match=r"^slot_size must be a multiple of 64 in 64 \.\. 1 MiB, "
                       r"got 100$"):
        PoolDict(slot_size=100)
    d.destroy()


def _writer(d, k, n):
    for i in range(n):
        d[(k, i)] = i
    return sum(d[(k, i)] for i in range(n))


def _die_holding(d):
    d._lock.acquire()
    os._exit(3)


@pytest.mark.timeout(90)
def test_two_processes_and_a_holder_that_died(ember_runtime):
    d = ember.dict(in_pool=True, name="pd-" + os.urandom(4).hex())
    procs = [ember.Process(target=_writer, args=(d, k, 300)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        assert p.result(timeout=60) == sum(range(300))
        p.join()
        p.close()
    assert len(d) == 600
    assert PoolDict.attach(d.name)[(1, 299)] == 299
    p = ember.Process(target=_die_holding, args=(d,))
    p.start()
    p.join()
    assert p.exitcode == 3
    p.close()
    d["after"] = 1                    # the lock came back (OwnerDied handled)
    assert d["after"] == 1 and len(d) == 601
    assert pickle.loads(pickle.dumps(d))[(0, 0)] == 0
    d.destroy()
    assert d.o_uid not in {u for u, _, _, _ in naming.get_list()}


@pytest.mark.timeout(60)
def test_in_a_scope(ember_runtime):
    with ember.scope() as s:
        d = ember.dict(in_pool=True)
        d[1] = 2
        assert s.members() == [d.o_uid]
    assert d.o_uid not in {u for u, _, _, _ in naming.get_list()}
