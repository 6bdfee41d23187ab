"""The Python API of ember.pools_c: life cycle, errors and their text,
buffers, descriptors, warnings."""
import gc
import os
import re
import threading
import time

import pytest

import ember.pools_c as pools_c
from ember import _env
from ember.exceptions import DescriptorError, EmberError, PoolError, PoolExhausted
from ember.pools_c import Allocation, Pool, PoolStats
from procs import once_sleeping_on_shm, wait_sleeping_on_shm

HEX = r"0x[0-9a-f]{16}"


@pytest.fixture
def pool():
    p = Pool.create(1 << 20, name="tp")
    yield p
    if not p.closed:
        p.destroy()


def test_pools_public_names():
    assert pools_c.__all__ == ["Pool", "Allocation", "PoolStats", "clear_attach_cache",
                               "set_lock_bound", "lock_bound",
                               "PoolError", "PoolExhausted", "DescriptorError"]
    for n in pools_c.__all__:
        assert hasattr(pools_c, n)
    assert issubclass(PoolExhausted, MemoryError) and issubclass(PoolExhausted, PoolError)


def test_pools_no_direct_construction():
    with pytest.raises(TypeError, match=r"^Pool cannot be instantiated directly; use Pool.create\(\) or Pool.attach\(\)$"):
        Pool()
    with pytest.raises(TypeError, match=r"^Allocation cannot be instantiated directly"):
        Allocation()


def test_pools_create_properties(pool):
    assert pool.name == "tp"
    assert pool.size == 1 << 20
    assert 0 < pool.m_uid < 2 ** 63
    assert re.match(rf"^/ember\.{_env.owner_tag('p')}\.{pool.m_uid:016x}\.[0-9a-f]{{12}}$", pool.shm_name)
    assert os.path.exists("/dev/shm" + pool.shm_name)
    assert len(pool.sdesc) == 96
    st = pool.stats()
    assert isinstance(st, PoolStats)
    assert st == PoolStats(total=(1 << 20) - 4096, free=(1 << 20) - 4096,
                           largest_free=(1 << 20) - 4096 - 64, live_allocs=0, committed=2 * 4096)
    with pytest.raises(AttributeError):
        st.free = 0
    assert re.match(rf"^<ember Pool /ember\.p\d+(-\w+)?\.[0-9a-f]{{16}}\.[0-9a-f]{{12}} name='tp' m_uid={HEX} size=1048576>$", repr(pool))


def test_pools_create_args():
    with Pool.create(1 << 16, m_uid=0xABC, owner_tag="t-1_x") as p:
        assert re.match(r"^/ember\.t-1_x\.0000000000000abc\.[0-9a-f]{12}$", p.shm_name)
        assert p.m_uid == 0xABC and p.name is None
        # the name carries a random part: the same m_uid again is another segment
        with Pool.create(1 << 16, m_uid=0xABC, owner_tag="t-1_x") as q:
            assert q.shm_name != p.shm_name and q.shm_name.startswith("/ember.t-1_x.0000000000000abc.")
        name = p.shm_name
    assert not os.path.exists("/dev/shm" + name)
    with pytest.raises(ValueError, match=r"^pool size must be at least 1 byte, got 0$"):
        Pool.create(0)
    with pytest.raises(ValueError, match=r"^owner_tag must match \[A-Za-z0-9_-\]\{1,24\}, got 'bad/tag'$"):
        Pool.create(4096, owner_tag="bad/tag")
    with pytest.raises(ValueError, match=r"^m_uid must be in"):
        Pool.create(4096, m_uid=-1)


def test_pools_alloc_memoryview(pool):
    a = pool.alloc(5)
    assert (a.size, len(a)) == (5, 5) and a.offset % 64 == 0 and a.id > 0 and a.pool is pool
    with memoryview(a) as m:
        assert m.nbytes == 5 and not m.readonly and m.format == "B"
        m[:] = b"hello"
    with memoryview(a) as m:
        assert bytes(m) == b"hello"
    assert pool.stats().live_allocs == 1
    a.free()
    assert a.closed and pool.stats().live_allocs == 0


def test_pools_alloc_errors(pool):
    with pytest.raises(PoolExhausted, match=rf"^pool 'tp' \(m_uid {HEX}\): cannot allocate 2000000 bytes: "
                                            r"largest free block is 1044416 bytes$"):
        pool.alloc(2000000)
    with pytest.raises(MemoryError):
        pool.alloc(1 << 40)
    with pytest.raises(ValueError, match=r"^nbytes must be at least 1, got 0$"):
        pool.alloc(0)
    with pytest.raises(ValueError, match=r"^timeout must be None or >= 0, got -1$"):
        pool.alloc(1, timeout=-1)
    with pytest.raises(TypeError):
        pool.alloc("x")


def test_pools_alloc_timeout(pool):
    whole = pool.alloc(pool.stats().largest_free)
    t = time.monotonic()
    with pytest.raises(PoolExhausted, match=rf"^pool 'tp' \(m_uid {HEX}\): cannot allocate 10 bytes within 0.2 s: "
                                            r"largest free block is 0 bytes$"):
        pool.alloc(10, timeout=0.2)
    assert 0.19 <= time.monotonic() - t < 10    # the whole timeout waited; not stuck
    t = once_sleeping_on_shm(whole.free)        # woken by the free (not 0.1 s later: a hope)
    a = pool.alloc(10, timeout=None)
    a.free()
    t.join()


def test_pools_alloc_wait_blocks_close(pool):
    whole = pool.alloc(pool.stats().largest_free)
    got = []

    def waiter():
        try:
            got.append(pool.alloc(10, timeout=60))
        except PoolExhausted as e:
            got.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    # in its alloc's sleep (a 0.1 s sleep here, and a 0.5 s timeout there,
    # only hoped that it was still waiting at the destroy)
    wait_sleeping_on_shm(os.getpid(), t.native_id)
    with pytest.raises(PoolError, match=r": cannot destroy: another thread is waiting in alloc\(\)$"):
        pool.destroy()
    whole.free()                                # wakes it: its alloc succeeds
    t.join(60)
    assert len(got) == 1 and isinstance(got[0], Allocation), got
    got[0].free()


def test_pools_free_errors(pool):
    a = pool.alloc(100)
    keep = pool.alloc(1)
    m = memoryview(a)
    with pytest.raises(PoolError, match=rf"^pool 'tp' \(m_uid {HEX}\): cannot free allocation at offset \d+ "
                                        r"\(id \d+, 100 bytes\): 1 memoryview\(s\) still exported; release them first$"):
        a.free()
    m.release()
    a.free()
    with pytest.raises(PoolError, match=rf"^pool 'tp' \(m_uid {HEX}\): cannot free: allocation at offset \d+ "
                                        r"\(id \d+, 100 bytes\) was freed$"):
        a.free()
    for use in (lambda: memoryview(a), lambda: a.sdesc, lambda: a._disown(), lambda: a.__enter__()):
        with pytest.raises(PoolError, match=r"was freed$"):
            use()
    assert repr(a).endswith(" freed>")
    # freed elsewhere (another handle of the same block): the C check says so
    b = pool.alloc(100)
    b2 = Allocation.attach(b.sdesc)
    b2.free()
    with pytest.raises(PoolError, match=r"cannot free allocation at offset \d+ \(id \d+, 100 bytes\): "
                                        r"the block is not allocated \(already freed\) \[EMBER_ERR_DOUBLE_FREE\]$"):
        b.free()
    c = pool.alloc(100)                       # reuses the block: b2's id is stale now
    c2_sdesc = c.sdesc
    c.free()
    d = pool.alloc(100)
    with pytest.raises(DescriptorError, match=r"cannot attach allocation at offset \d+ \(id \d+\): the block was "
                                              r"freed and allocated again since \(stale allocation id\) \[EMBER_ERR_STALE\]$"):
        Allocation.attach(c2_sdesc)
    d.free()
    keep.free()


def test_pools_context_managers():
    with Pool.create(1 << 16, name="cm") as p:
        name = p.shm_name
        with p.alloc(10) as a:
            memoryview(a)[:2] = b"ok"
        assert a.closed and p.stats().live_allocs == 0
        with p.alloc(10) as a:
            a.free()                           # explicit free inside is fine
        q = Pool.attach(p.sdesc)
        with q:
            assert q.stats().total == p.stats().total
        assert q.closed                        # attached: detached on exit
        assert os.path.exists("/dev/shm" + name)
    assert p.closed                            # created: destroyed on exit
    assert not os.path.exists("/dev/shm" + name)


def test_pools_use_after_detach_destroy(pool):
    a = pool.alloc(10)
    q = Pool.attach(pool.sdesc)
    q.detach()
    for use in (q.detach, q.destroy, q.stats, lambda: q.alloc(1), lambda: q.sdesc,
                lambda: q.m_uid, lambda: q.size, lambda: q.name, lambda: q.shm_name,
                q._validate, q.__enter__):
        with pytest.raises(PoolError, match=rf"^pool 'tp' \(m_uid {HEX}\) is detached or destroyed$"):
            use()
    q.__exit__(None, None, None)              # no-op once closed
    assert repr(q).endswith(" closed>")
    pool.destroy()
    with pytest.raises(PoolError, match=r"is detached or destroyed$"):
        pool.alloc(1)
    for use in (a.free, lambda: memoryview(a), lambda: a.sdesc):
        with pytest.raises(PoolError, match=r": allocation at offset \d+ \(id \d+, 10 bytes\): "
                                            r"the pool is detached or destroyed$"):
            use()
    assert a.size == 10                        # plain fields stay readable


def test_pools_attach_destroyed():
    p = Pool.create(1 << 16)
    sd = p.sdesc
    a_sd = p.alloc(8).sdesc
    p.destroy()
    with pytest.raises(PoolError, match=r"^cannot attach pool /ember\.p\d+(-\w+)?\.[0-9a-f]{16}\.[0-9a-f]{12}: the pool's segment "
                                        r"does not exist \(destroyed, or made on another node\) \[EMBER_ERR_NOT_FOUND\]$"):
        Pool.attach(sd)
    with pytest.raises(PoolError, match=r"^cannot attach pool /ember\.p\d+(-\w+)?\.[0-9a-f]{16}\.[0-9a-f]{12} of allocation at offset "
                                        r"\d+ \(id 1\): the pool's segment does not exist"):
        Allocation.attach(a_sd)


def test_pools_refuse_close_with_views(pool):
    a = pool.alloc(10)
    m = memoryview(a)
    with pytest.raises(PoolError, match=rf"^pool 'tp' \(m_uid {HEX}\): cannot detach: 1 memoryview\(s\) of its "
                                        r"allocations are still exported; release them first$"):
        pool.detach()
    with pytest.raises(PoolError, match=r"cannot destroy: 1 memoryview"):
        pool.destroy()
    with pytest.raises(PoolError, match=r"cannot hand over .*: 1 memoryview\(s\) still exported"):
        a._disown()
    m.release()
    a.free()


def test_pools_bad_descriptors(pool):
    sd = pool.sdesc
    for bad in (sd[:50], sd + b"x", bytes([sd[0] ^ 1]) + sd[1:], b"\0" * 96):
        with pytest.raises(DescriptorError, match=r"^cannot attach pool \(unknown\): the descriptor is truncated, "
                                                  r"corrupt, foreign, or names another pool \[EMBER_ERR_BAD_DESCRIPTOR\]$"):
            Pool.attach(bad)
    with pytest.raises(DescriptorError, match=r"^descriptor is empty$"):
        Pool.attach(b"")
    with pytest.raises(TypeError, match=r"^descriptor must be bytes, not str$"):
        Pool.attach("abc")
    a = pool.alloc(10)
    asd = a.sdesc
    assert len(asd) == 128
    for bad in (asd[:127], asd[:-1] + bytes([asd[-1] ^ 1]), sd + b"\0" * 32):
        with pytest.raises(DescriptorError, match=r"^cannot attach allocation: the descriptor is truncated"):
            Allocation.attach(bad)
    a.free()
    with pytest.raises(DescriptorError, match=r": cannot attach allocation at offset \d+ \(id \d+\): the block is "
                                              r"not allocated \(already freed\) \[EMBER_ERR_DOUBLE_FREE\]$"):
        Allocation.attach(asd)
    with pytest.raises(ValueError):          # DescriptorError is a ValueError too
        Allocation.attach(b"junk")
    with pytest.raises(EmberError):
        Allocation.attach(b"junk")


def test_pools_allocation_attach_same_process_shares_pool(pool):
    a = pool.alloc(3)
    memoryview(a)[:] = b"abc"
    b = Allocation.attach(a.sdesc)
    assert b.pool is pool and (b.offset, b.size, b.id) == (a.offset, a.size, a.id)
    assert bytes(memoryview(b)) == b"abc"
    # an attached (not created) pool object is also found
    q = Pool.attach(pool.sdesc)
    pool_name = pool.shm_name
    assert q.shm_name == pool_name
    q.detach()
    a.free()


def test_pools_pickle_roundtrip(pool):
    import pickle
    a = pool.alloc(4)
    memoryview(a)[:] = b"pick"
    b = pickle.loads(pickle.dumps(a))
    assert bytes(memoryview(b)) == b"pick" and b.pool is pool
    q = pickle.loads(pickle.dumps(pool))
    assert q is not pool and q.m_uid == pool.m_uid
    q.detach()
    a.free()


def test_pools_disown(pool):
    a = pool.alloc(10)
    a._disown()
    assert a.closed and repr(a).endswith(" handed over>")
    with pytest.raises(PoolError, match=r"^pool 'tp' \(m_uid .*\): cannot free: allocation at offset \d+ "
                                        r"\(id \d+, 10 bytes\) was handed over$"):
        a.free()
    assert pool.stats().live_allocs == 1       # the block stays allocated
    (b,) = pool._live_allocations()
    assert (b.offset, b.id) == (a.offset, a.id)
    b.free()


def test_pools_resource_warning():
    p = Pool.create(1 << 16)
    name = p.shm_name
    with pytest.warns(ResourceWarning, match=rf"^unclosed ember Pool {re.escape(name)} \(m_uid {HEX}\)$"):
        del p
        gc.collect()
    assert os.path.exists("/dev/shm" + name)   # unmapped, not destroyed
    os.unlink("/dev/shm" + name)


def test_pools_implicit_attach_cache(pool, recwarn):
    from ember.pools_c import _pools
    a = pool.alloc(4)
    memoryview(a)[:] = b"impl"
    asd = a.sdesc
    # pretend this process does not have the pool open (as in another process)
    del _pools._open_pools[pool.shm_name]
    try:
        b = Allocation.attach(asd)
        c = Allocation.attach(asd)
        assert b.pool is not pool and c.pool is b.pool          # attached once, cached
        assert _pools._implicit_pools[pool.shm_name] is b.pool
        assert bytes(memoryview(b)) == b"impl"
        pools_c.clear_attach_cache()
        assert b.pool.closed and pool.shm_name not in _pools._implicit_pools
        with pytest.raises(PoolError, match=r"the pool is detached or destroyed$"):
            memoryview(b)
        del b, c
        gc.collect()
    finally:
        _pools._open_pools[pool.shm_name] = pool
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning)]
    a.free()


def test_pools_many_allocs_and_stats(pool):
    allocs = [pool.alloc(4096) for _ in range(200)]
    st = pool.stats()
    assert st.live_allocs == 200 and st.free == st.total - 200 * (4096 + 64)
    for i, a in enumerate(allocs):
        memoryview(a)[:] = bytes([i % 256]) * 4096
    for i, a in enumerate(allocs):
        assert bytes(memoryview(a)) == bytes([i % 256]) * 4096
        a.free()
    pool._validate()
    assert pool.stats().free == pool.stats().total
    assert pool._repair_count() == 0


# ------------------------------------------------------------------ model-based

try:
    from hypothesis import HealthCheck, settings, strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
except ImportError:                                   # pragma: no cover
    RuleBasedStateMachine = None

if RuleBasedStateMachine is not None:
    class PoolMachine(RuleBasedStateMachine):
        """Random alloc/free sequences against a model: every live block keeps
        its own pattern (no overlap), stats match, invariants hold."""

        def __init__(self):
            super().__init__()
            self.pool = Pool.create(1 << 18, name="hyp")
            self.live = {}                            # id -> (Allocation, byte)

        @rule(n=st.one_of(st.integers(1, 200), st.integers(1, 70000), st.sampled_from([64, 4096])))
        def alloc(self, n):
            before = self.pool.stats()
            try:
                a = self.pool.alloc(n)
            except PoolExhausted:
                assert before.largest_free < n
                return
            assert a.offset % 64 == 0 and a.size == n and a.id not in self.live
            tag = a.id % 251 + 1
            memoryview(a)[:] = bytes([tag]) * n
            self.live[a.id] = (a, tag)

        @precondition(lambda self: self.live)
        @rule(data=st.data())
        def free(self, data):
            key = data.draw(st.sampled_from(sorted(self.live)))
            a, tag = self.live.pop(key)
            assert bytes(memoryview(a)) == bytes([tag]) * a.size
            a.free()

        @invariant()
        def consistent(self):
            self.pool._validate()
            s = self.pool.stats()
            assert s.live_allocs == len(self.live)
            assert s.largest_free <= max(s.free - 64, 0)
            used = sum((a.size + 63) // 64 * 64 + 64 for a, _ in self.live.values())
            assert s.free <= s.total - used

        def teardown(self):
            for a, tag in self.live.values():
                assert bytes(memoryview(a)) == bytes([tag]) * a.size
                a.free()
            s = self.pool.stats()
            assert s.free == s.total and s.largest_free == s.total - 64
            self.pool.destroy()

    TestPoolMachine = PoolMachine.TestCase
    TestPoolMachine.settings = settings(max_examples=40, stateful_step_count=60, deadline=None, database=None,
                                        suppress_health_check=[HealthCheck.too_slow])


def test_alloc_timeout_validation():
    with Pool.create(1 << 20) as pool:
        with pytest.raises(ValueError, match=r"^timeout must be None or >= 0, got nan$"):
            pool.alloc(10, timeout=float("nan"))
        with pytest.raises(ValueError, match=r"^timeout must be None or >= 0, got -1$"):
            pool.alloc(10, timeout=-1)
        with pytest.raises(TypeError, match=r"^timeout must be a number of seconds or None, not str$"):
            pool.alloc(10, timeout="1")
        pool.alloc(10, timeout=float("inf")).free()


def test_create_rejects_bad_size_and_name_types():
    with pytest.raises(TypeError, match=r"^pool size must be an int, not float$"):
        Pool.create(1.5)
    with pytest.raises(TypeError, match=r"^pool size must be an int, not bool$"):
        Pool.create(True)
    with pytest.raises(TypeError, match=r"^pool name must be a str or None, not int$"):
        Pool.create(1 << 20, 5)
    with pytest.raises(ValueError, match=r"^pool name must not contain NUL characters, got 'a\\x00b'$"):
        Pool.create(1 << 20, "a\x00b")
