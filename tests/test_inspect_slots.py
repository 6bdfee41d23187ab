"""The process-slots table (common_c/slots.c): a blocking channel call
records what it waits on in the caller's slot, only while it sleeps."""
import mmap
import os
import threading
import time

import pytest

from ember.channels_c import Channel, _channels, wait_any
from ember.exceptions import ChannelEmpty
from ember.pools_c import Pool
from procs import fork, join


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "t.slots"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, _channels.SLOTS_BYTES)
    mm = mmap.mmap(fd, _channels.SLOTS_BYTES)
    os.close(fd)
    yield mm
    _channels._slots_bind(None, 0)
    mm.close()


def _wait_record(mm, p_uid, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = [r for r in _channels._slots_read(mm) if r[0] == p_uid]
        if recs:
            return recs[0]
        time.sleep(0.005)
    raise AssertionError("no record")


@pytest.mark.timeout(60)
def test_blocked_recv_and_send_are_recorded_then_cleared(table):
    _channels._slots_bind(table, 7)
    assert _channels._slots_read(table) == []
    with Pool.create(1 << 20) as pool, Channel.create(pool, capacity=1, c_uid=42) as ch:
        ch.set_spin(0)
        t0 = time.time()
        got = []
        th = threading.Thread(target=lambda: got.append(ch.recv()))
        th.start()
        p_uid, c_uid, op, count, since_ns, pid, tid, obj = _wait_record(table, 7)
        assert (p_uid, c_uid, op, count, pid, obj) == (7, 42, "recv", 1, os.getpid(), 0)
        assert t0 - 1 <= since_ns / 1e9 <= time.time() and tid == th.native_id
        ch.send(b"x")
        th.join()
        assert got == [b"x"] and _channels._slots_read(table) == []
        # a send that finds the channel full
        ch.send(b"y")
        th = threading.Thread(target=ch.send, args=(b"z",))
        th.start()
        assert _wait_record(table, 7)[1:4] == (42, "send", 1)
        assert ch.recv() == b"y"
        th.join()
        assert _channels._slots_read(table) == [] and ch.recv() == b"z"


@pytest.mark.timeout(60)
def test_wait_any_is_recorded(table):
    _channels._slots_bind(table, 3)
    with Pool.create(1 << 20) as pool, Channel.create(pool, c_uid=5) as a, \
            Channel.create(pool, c_uid=6) as b:
        a.set_spin(0)
        th = threading.Thread(target=wait_any, args=([a, b],))
        th.start()
        assert _wait_record(table, 3)[1:4] == (5, "wait_any", 2)
        b.send(b"go")
        th.join()
        assert _channels._slots_read(table) == []


@pytest.mark.timeout(60)
def test_nothing_recorded_unbound_or_on_the_fast_path(table):
    with Pool.create(1 << 20) as pool, Channel.create(pool, c_uid=9) as ch:
        with pytest.raises(Exception):
            ch.recv(timeout=0.05)                  # unbound: nothing written
        assert bytes(table[:64]) == bytes(64)      # not even the header
        _channels._slots_bind(table, 1)
        ch.send(b"a")
        assert ch.recv() == b"a" and _channels._slots_read(table) == []


@pytest.mark.timeout(60)
def test_a_forked_child_does_not_write_its_parents_slot(table):
    _channels._slots_bind(table, 11)
    with Pool.create(1 << 20) as pool, Channel.create(pool, c_uid=12) as ch:
        ch.set_spin(0)
        def wait_in_recv():                # in the child: a wait that times out
            with pytest.raises(ChannelEmpty):
                ch.recv(timeout=0.3)
        assert join(fork(wait_in_recv)) == 0
        assert _channels._slots_read(table) == []


def test_a_table_that_is_not_one_is_refused(tmp_path):
    with pytest.raises(Exception, match=r"^not a process-slots table: \[EMBER_ERR_BAD_MAGIC\]$"):
        _channels._slots_read(bytearray(_channels.SLOTS_BYTES))
    with pytest.raises(Exception, match=r"^not a process-slots table: \[EMBER_ERR_OUT_OF_RANGE\]$"):
        _channels._slots_read(bytearray(64))


# ------------------------------------------------------------ the C API alone
@pytest.fixture(scope="module")
def capi(tmp_path_factory):
    import cffi_build
    return cffi_build.build(tmp_path_factory.mktemp("slots-cffi"), "_ember_slots_cffi",
                            [os.path.join(cffi_build.COMMON, "slots.h")],
                            [os.path.join(cffi_build.POOLS, "pool.c"),
                             os.path.join(cffi_build.COMMON, "slots.c")])


def test_c_api_misuse_returns_error_codes(capi):
    ffi, lib = capi.ffi, capi.lib
    buf = ffi.new("char[]", lib.EMBER_SLOTS_BYTES)
    out = ffi.new("ember_slot_rec_t[4]")
    n = ffi.new("size_t *")
    assert lib.ember_slots_bind(buf, lib.EMBER_SLOTS_BYTES - 1, 1) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_slots_read(ffi.NULL, lib.EMBER_SLOTS_BYTES, out, 4, n) == \
        lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_slots_read(buf, lib.EMBER_SLOTS_BYTES, ffi.NULL, 4, n) == \
        lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_slots_read(buf, 64, out, 4, n) == lib.EMBER_ERR_OUT_OF_RANGE
    assert lib.ember_slots_read(buf, lib.EMBER_SLOTS_BYTES, out, 4, n) == lib.EMBER_ERR_BAD_MAGIC
    # a header that is not ours is refused, never overwritten
    buf[0] = b"x"
    assert lib.ember_slots_bind(buf, lib.EMBER_SLOTS_BYTES, 1) == lib.EMBER_ERR_BAD_MAGIC
    buf[0] = b"\0"
    assert lib.ember_slots_bind(buf, lib.EMBER_SLOTS_BYTES, 1) == lib.EMBER_OK
    assert lib.ember_slots_read(buf, lib.EMBER_SLOTS_BYTES, out, 4, n) == lib.EMBER_OK and n[0] == 0
    lib._ember_slot_wait_begin(lib.EMBER_WAIT_RECV, 77, 1, 0)
    assert lib.ember_slots_read(buf, lib.EMBER_SLOTS_BYTES, out, 4, n) == lib.EMBER_OK and n[0] == 1
    assert (out[0].p_uid, out[0].c_uid, out[0].op, out[0].pid) == (1, 77, lib.EMBER_WAIT_RECV,
                                                                   os.getpid())
    # cap 0: nothing copied, no error
    assert lib.ember_slots_read(buf, lib.EMBER_SLOTS_BYTES, ffi.NULL, 0, n) == lib.EMBER_OK
    lib._ember_slot_wait_end()
    assert lib.ember_slots_read(buf, lib.EMBER_SLOTS_BYTES, out, 4, n) == lib.EMBER_OK and n[0] == 0
    # a version this build does not know
    ffi.cast("uint32_t *", buf)[2] = 99
    assert lib.ember_slots_bind(buf, lib.EMBER_SLOTS_BYTES, 1) == lib.EMBER_ERR_VERSION
    assert lib.ember_slots_read(buf, lib.EMBER_SLOTS_BYTES, out, 4, n) == lib.EMBER_ERR_VERSION
    assert lib.ember_slots_bind(ffi.NULL, 0, 0) == lib.EMBER_OK


# ------------------------------------------------ synchronization objects
@pytest.mark.timeout(60)
def test_sync_waits_are_recorded_with_pool_offset_and_kind(table):
    """Every blocking sync_c call records (op, its pool's m_uid, its offset,
    its kind) while it waits, and clears it after; the uncontended calls
    (the fast path) record nothing."""
    from ember import _slots
    from ember.sync_c import Barrier, Condition, Event, Lock, RLock, Semaphore
    _channels._slots_bind(table, 21)
    with Pool.create(1 << 20) as pool:
        lock, rlock, sem = Lock(pool=pool), RLock(pool=pool), Semaphore(0, pool=pool)
        ev, bar, cond = Event(pool=pool), Barrier(2, pool=pool), Condition(pool=pool)
        with lock:                                     # the fast path: nothing
            pass
        assert sem.acquire(False) is False and ev.wait(0) is False
        assert _channels._slots_read(table) == []

        def blocked(start, release, op, kind, obj):
            th = threading.Thread(target=start)
            th.start()
            rec = _wait_record(table, 21)
            release()
            th.join()
            assert rec[2] == op and _slots.SYNC_KINDS[rec[3]] == kind, rec
            assert (rec[1], rec[7]) == (pool.m_uid, _alloc_offset(obj)), rec
            assert rec[6] == th.native_id
            assert _channels._slots_read(table) == []

        lock.acquire()
        blocked(lambda: lock.acquire() and lock.release(), lock.release, "acquire", "Lock", lock)
        blocked(sem.acquire, sem.release, "acquire", "Semaphore", sem)
        blocked(ev.wait, ev.set, "wait", "Event", ev)
        blocked(bar.wait, lambda: bar.wait(), "wait", "Barrier", bar)

        def notify():
            with cond:
                cond.notify()

        def cond_wait():
            with cond:
                cond.wait(30)
        blocked(cond_wait, notify, "wait", "Condition", cond)
        rlock.acquire()
        blocked(lambda: rlock.acquire() and rlock.release(), rlock.release, "acquire", "RLock",
                rlock)
        for o in (lock, rlock, sem, ev, bar, cond):
            o.destroy()


def _alloc_offset(obj):
    from ember.pools_c import _pools
    return _pools._alloc_where(obj.sdesc)[1]



_ALL_RECORDED = r"""
import sys, time
import ember
from ember import _env, _slots

def waiter():
    ember.Event.attach("go-all-recorded", timeout=60).wait()

if __name__ == "__main__":
    go = ember.Event(name="go-all-recorded")
    ps = [ember.Process(target=waiter, name=f"w{i}") for i in range(8)]
    for p in ps:
        p.start()
    want = {p.p_uid: p.pid for p in ps}
    deadline = time.monotonic() + 30
    while True:
        recs = _slots.read(_env.get(_env.RUNTIME_ID))
        got = {u: (recs[u]["pid"], recs[u]["op"]) for u in want if u in recs}
        if got == {u: (pid, "wait") for u, pid in want.items()}:
            break
        if time.monotonic() > deadline:
            print("not recorded:", sorted(set(want) - set(got)), got)
            go.set()
            sys.exit(1)
        time.sleep(0.05)
    go.set()
    for p in ps:
        p.join()
    print("all recorded")
"""


@pytest.mark.timeout(120)
def test_every_blocked_process_keeps_its_record(tmp_path):
    """Eight processes blocked in Event.wait are all seen blocked: the short
    waits of a process's helper threads (e.g. the handle releaser's GS
    request) never erase its main thread's record (they used to, in about
    one run of two: `ember ps` showed such a process sleeping on nothing)."""
    import subprocess
    import sys
    prog = tmp_path / "all_recorded.py"
    prog.write_text(_ALL_RECORDED)
    r = subprocess.run([sys.executable, "-m", "ember", "run", str(prog)], capture_output=True,
                       text=True, timeout=100, cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "all recorded"), (r.stdout, r.stderr)
