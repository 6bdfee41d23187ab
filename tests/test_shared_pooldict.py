"""ember.dict(in_pool=True): a shared dict in pool memory (PoolDict)."""
import os
import pickle
import time

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
    with pytest.raises(ValueError, match=r"^key and value take 103 bytes encoded: more than a "
                       r"slot of this dict holds \(48\); make it with a larger slot_size$"):
        d["k"] = "v" * 100             # (1 + 1) + (1 + 100): a tag byte each
    d["k"] = "v" * 45                  # 48 bytes: fits exactly
    assert d["k"] == "v" * 45 and len(d) == 1
    del d["k"]
    assert ("x" * 100 in d, d.get("x" * 100, 5)) == (False, 5)   # a key too big to be there
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


class _Color(int):
    pass


@pytest.mark.timeout(60)
def test_every_kind_of_key_and_value(ember_runtime):
    # Small ints, str, bytes, floats, None/True/False are encoded directly;
    # the rest is pickled: each must come back as itself, with its type.
    d = ember.dict(in_pool=True, capacity=64, slot_size=2048)
    values = [0, -1, 2**63 - 1, -2**63, 2**63, -2**64 - 5, 10**40, "", "é€😀", "\udcff",
              b"", b"\x00\xff", 1.5, -0.0, float("inf"), None, True, False, (1, "a"),
              frozenset({1}), _Color(3), [1, [2]], {"n": 1}, "x" * 700, b"y" * 900]
    for i, v in enumerate(values):
        d[v if v.__hash__ is not None else i] = v
    for i, v in enumerate(values):
        got = d[v if v.__hash__ is not None else i]
        assert got == v and type(got) is type(v), (v, got)
    assert str(d[-0.0]) == "-0.0" and type(d[_Color(3)]) is _Color
    # keys are compared by their encoding: 1, 1.0 and True are three keys
    d.clear()
    d[1], d[1.0], d[True] = "int", "float", "bool"
    assert (d[1], d[1.0], d[True], len(d)) == ("int", "float", "bool", 3)
    assert sorted(map(repr, d.keys())) == ["1", "1.0", "True"]
    d.destroy()


@pytest.mark.timeout(60)
def test_pop_and_setdefault_are_one_step(ember_runtime):
    d = ember.dict(in_pool=True, capacity=16)
    d["a"] = "x" * 200
    assert d.pop("a") == "x" * 200 and "a" not in d and len(d) == 0
    with pytest.raises(KeyError, match=r"^'a'$"):
        d.pop("a")
    with pytest.raises(TypeError, match=r"^pop expected at most 2 arguments, got 3$"):
        d.pop("a", 1, 2)
    assert d.setdefault("s") is None and d["s"] is None
    d.destroy()


def _race_setdefault(d, me, n):
    return [d.setdefault(("k", i), me) for i in range(n)]


@pytest.mark.timeout(90)
def test_setdefault_races_agree(ember_runtime):
    # Two processes setdefault the same keys with their own default: each
    # key gets one value, and both processes see that one.
    d = ember.dict(in_pool=True, capacity=1024)
    procs = [ember.Process(target=_race_setdefault, args=(d, me, 500)) for me in ("p", "q")]
    for p in procs:
        p.start()
    got = [p.result(timeout=60) for p in procs]
    for p in procs:
        p.join()
        p.close()
    assert got[0] == got[1] == [d[("k", i)] for i in range(500)]
    assert len(d) == 500
    d.destroy()


@pytest.mark.timeout(60)
def test_exist_ok(ember_runtime):
    name = "pd-" + os.urandom(4).hex()
    d = ember.dict(in_pool=True, name=name)
    d["k"] = 1
    with pytest.raises(ember.ObjectError, match=rf"^an object is already named '{name}' "
                       rf"\(PoolDict, o_uid {d.o_uid}\)$"):
        ember.dict(in_pool=True, name=name)
    with ember.scope() as s:
        d2 = ember.dict(in_pool=True, name=name, exist_ok=True)     # the live one
        assert d2.o_uid == d.o_uid and d2["k"] == 1
        assert s.members() == []           # found, not made: the scope does not own it
        d2["k"] = 2
        d2.close()
    assert d["k"] == 2 and "exist_ok" not in d
    d3 = ember.dict({"a": 1}, in_pool=True, name=name + "-new", exist_ok=True)   # made
    assert d3.copy() == {"a": 1}
    d3.destroy()
    d.destroy()


def _slot_states(d):
    """(offset, state) of every slot of the table (white box: pooldict.c's layout)."""
    mv = memoryview(d._alloc)
    try:
        return [(64 + i * d.slot_size,
                 int.from_bytes(mv[64 + i * d.slot_size:68 + i * d.slot_size], "little"))
                for i in range(d.capacity)]
    finally:
        mv.release()


@pytest.mark.timeout(60)
def test_a_torn_entry_is_reported_and_repaired(ember_runtime):
    # The state a writer killed in the middle of an overwrite leaves (the
    # entry marked WRITING): reading that key raises, the others read, and
    # setting (or deleting) the key repairs it.
    d = ember.dict(in_pool=True, capacity=8)
    d["torn"] = "old"
    used = [o for o, st in _slot_states(d) if st == 1]
    d["fine"] = 2
    mv = memoryview(d._alloc)
    mv[used[0]:used[0] + 4] = (3).to_bytes(4, "little")
    mv.release()
    pat = (r"^<ember.PoolDict o_uid=\d+ len=2>: the entry of key 'torn' was torn by a process "
           r"that died while writing it \(set or delete the key to repair it\)$")
    with pytest.raises(ember.SharedObjectError, match=pat):
        d["torn"]
    with pytest.raises(ember.SharedObjectError, match=r"^<ember.PoolDict o_uid=\d+ len=2>: 1 "
                       r"entry was torn by a process that died while writing it"):
        d.items()
    assert "torn" in d and d["fine"] == 2 and len(d) == 2
    d["torn"] = "new"
    assert d["torn"] == "new" and d.copy() == {"torn": "new", "fine": 2}
    d.destroy()


def _churn(d, n):
    i = 0
    while True:
        d["big"] = bytes([i % 256]) * n
        d[("k", i % 40)] = i
        d.pop(("k", (i + 20) % 40), None)
        i += 1


@pytest.mark.timeout(120)
def test_writers_killed_mid_operation(ember_runtime):
    # Writers SIGKILLed at random moments (long entries: a kill often lands
    # while the lock is held and an entry is half written).  After each:
    # the lock comes back, the count is right, every entry reads whole or
    # (only "big", the one overwritten in place) raises the torn error, and
    # setting it repairs it.
    import random
    n = 500000
    d = ember.dict(in_pool=True, capacity=64, slot_size=512 * 1024)
    keys = ["big"] + [("k", i) for i in range(40)]
    for _ in range(12):
        p = ember.Process(target=_churn, args=(d, n))
        p.start()
        time.sleep(random.uniform(0.2, 0.4))
        p.kill()
        p.join(timeout=30)
        p.close()
        present = [k for k in keys if k in d]
        assert len(d) == len(present)
        for k in present:
            try:
                v = d[k]
            except ember.SharedObjectError as exc:
                assert k == "big" and "was torn" in str(exc)
                d["big"] = b"x" * n
                continue
            if k == "big":
                assert len(v) == n and v == v[:1] * n
            else:
                assert v % 40 == k[1]
    d["after"] = 1
    assert d["after"] == 1
    d.destroy()
