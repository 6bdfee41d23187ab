"""ember.Queue / SimpleQueue / JoinableQueue: multiprocessing's semantics
(as its own tests and the queue module's expect them), across real managed
processes of a runtime made with ember.init() (the ember_runtime fixture)."""
import gc
import pickle
import queue

import numpy as np
import pytest

import ember
from ember.exceptions import ChannelClosed
from objhelp import join, run, spawn, uids, uname

pytest_plugins = ["ember.testing"]


@pytest.mark.timeout(60)
def test_fifo_sizes_and_exact_empty_full(ember_runtime):
    q = ember.Queue()
    assert q.empty() and q.qsize() == 0 and not q.full() and q.maxsize == 0
    for i in range(100):
        q.put(i)
    q.put_nowait("x")
    assert q.qsize() == 101 and not q.empty()
    assert [q.get() for _ in range(100)] == list(range(100))
    assert q.get_nowait() == "x"
    with pytest.raises(queue.Empty) as ei:
        q.get_nowait()
    assert type(ei.value) is queue.Empty and str(ei.value) == ""
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    with pytest.raises(queue.Empty):
        q.get(block=False)
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)          # negative: try once, as multiprocessing
    q.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("maxsize", [4, 3])       # a power of two: the channel; else a semaphore
def test_bounded_queue_full(ember_runtime, maxsize):
    q = ember.Queue(maxsize)
    for i in range(maxsize):
        q.put(i, timeout=1)
    assert q.full() and q.qsize() == maxsize
    with pytest.raises(queue.Full) as ei:
        q.put_nowait("no")
    assert type(ei.value) is queue.Full and str(ei.value) == ""
    with pytest.raises(queue.Full):
        q.put("no", timeout=0.01)
    with pytest.raises(queue.Full):
        q.put("no", block=False)
    assert q.get() == 0 and not q.full()
    q.put("yes", block=False)
    assert [q.get() for _ in range(maxsize)] == list(range(1, maxsize)) + ["yes"]
    assert q.empty() and not q.full()


@pytest.mark.timeout(60)
def test_close_is_per_handle_and_shutdown_ends_the_queue_for_everyone(ember_runtime):
    q = ember.Queue()
    other = pickle.loads(pickle.dumps(q))
    q.put(1)
    q.close()
    q.close()                                   # idempotent
    with pytest.raises(ValueError, match=r"^Queue <ember.Queue o_uid=\d+ maxsize=0> is closed$"):
        q.put(2)
    with pytest.raises(ValueError, match=r"is closed$"):
        q.get()
    q.join_thread()
    q.cancel_join_thread()
    assert other.get() == 1                     # the other handle is unaffected
    with pytest.raises(AssertionError, match=r"^Queue <ember.Queue o_uid=\d+ maxsize=0> not closed$"):
        other.join_thread()
    other.put("a")
    other.put("b")
    other.shutdown()
    # the messages name the queue, not its channel (whose c_uid the program never saw)
    label = rf"Queue \(o_uid {other.o_uid}\)"
    for put in (lambda: other.put("c"), lambda: other.put("c", timeout=1)):
        with pytest.raises(ChannelClosed, match=rf"^cannot put on {label}: it was shut down$"):
            put()
    assert other.get() == "a" and other.get(timeout=0) == "b"
    for get in (other.get, other.get_nowait, lambda: other.get(timeout=1)):
        with pytest.raises(EOFError, match=rf"^{label} was shut down, and everything put on it "
                                           r"before was received$"):
            get()
    named = ember.Queue(2, name=uname("q-shut"))      # a bounded one: its puts count places
    named.shutdown()
    with pytest.raises(ChannelClosed, match=rf"^cannot put on Queue '{named.name}' "
                                            rf"\(o_uid {named.o_uid}\): it was shut down$"):
        named.put(1)
    with pytest.raises(ChannelClosed, match=rf"^Queue '{named.name}' \(o_uid {named.o_uid}\) "
                                            r"was shut down"):
        named.get()


@pytest.mark.timeout(60)
def test_objects_small_and_large_and_zero_copy_numpy(ember_runtime):
    q = ember.Queue()
    big = np.arange(3_000_000, dtype=np.float64).reshape(1000, 3000)
    objs = [None, 1, "s" * 10, {"k": [1, 2, (3,)]}, b"x" * 300_000, bytearray(b"y" * 200_000),
            list(range(50_000)), big, big[:, ::2], np.zeros(0)]
    for o in objs:
        q.put(o)
    got = [q.get() for _ in objs]
    for o, g in zip(objs[:7], got[:7]):
        assert g == o and type(g) is type(o)
    for o, g in zip(objs[7:], got[7:]):
        assert isinstance(g, np.ndarray) and g.dtype == o.dtype and np.array_equal(g, o)
    # the large contiguous array was rebuilt over the pool block, not copied
    assert not got[7].flags.owndata and got[7].flags.writeable
    got[7][0, 0] = -1.0
    assert big[0, 0] == 0.0


@pytest.mark.timeout(60)
def test_unpicklable_object_raises_in_put_and_nothing_is_queued(ember_runtime):
    import threading
    q = ember.Queue(2)
    with pytest.raises((TypeError, pickle.PicklingError, AttributeError)):
        q.put(threading.Lock())      # (a lambda travels: by cloudpickle, test_codec.py)
    assert q.qsize() == 0 and not q.full()
    q.put(1)
    q.put(2)
    assert q.full()


@pytest.mark.timeout(120)
def test_producer_and_consumers_in_other_processes(ember_runtime):
    q, results = ember.Queue(8), ember.Queue()
    n = 2000
    consumers = [spawn("""
        q, results = ARGS
        while True:
            item = q.get()
            if item is None:
                break
            results.put((item, item * item))
        """, q, results) for _ in range(2)]
    prod = spawn("""
        q, n = ARGS
        for i in range(n):
            q.put(i)
        """, q, n)
    assert join(prod) == 0
    for _ in consumers:
        q.put(None)
    assert [join(c) for c in consumers] == [0, 0]
    got = sorted(results.get(timeout=30) for _ in range(n))
    assert got == [(i, i * i) for i in range(n)]
    assert results.empty()


@pytest.mark.timeout(120)
def test_fifo_order_from_one_producer_process(ember_runtime):
    q = ember.Queue()
    assert run("""
        q, = ARGS
        for i in range(3000):
            q.put(("item", i))
        """, q) == 0
    assert [q.get(timeout=10) for _ in range(3000)] == [("item", i) for i in range(3000)]


@pytest.mark.timeout(120)
def test_numpy_array_into_a_child_and_back(ember_runtime):
    q, back = ember.Queue(), ember.Queue()
    a = np.random.default_rng(1).random((500, 500))
    q.put(a)
    assert run("""
        q, back = ARGS
        a = q.get(timeout=30)
        back.put(a * 2)
        """, q, back) == 0
    assert np.array_equal(back.get(timeout=30), a * 2)


@pytest.mark.timeout(60)
def test_no_reader_the_queue_itself_is_waited_on(ember_runtime):
    """multiprocessing's Queue has a private pipe end, ``_reader``, that
    some programs wait on (``connection.wait([q._reader])``); ember's has
    no pipe: the error says to wait on the queue itself, which
    multiprocessing.connection.wait takes (it goes to ember.wait).  It used
    to be the bare "'Queue' object has no attribute '_reader'"."""
    from multiprocessing.connection import wait
    for q in (ember.Queue(), ember.JoinableQueue()):
        with pytest.raises(AttributeError, match=r"^ember's (Joinable)?Queue has no _reader \(multiprocess"
                                                 r"ing's private pipe end\): wait on the queue "
                                                 r"itself, multiprocessing.connection.wait\(\[q\]\)"
                                                 r" or ember.wait\(\[q\]\)$"):
            q._reader
        assert not hasattr(q, "_reader")
        assert wait([q], timeout=0) == []
        q.put(1)
        assert wait([q], timeout=30) == [q] and q.get() == 1
        q.close()


@pytest.mark.timeout(120)
def test_simple_queue(ember_runtime):
    q = ember.SimpleQueue()
    assert q.empty()
    assert run("""
        q, = ARGS
        for i in range(10):
            q.put(i)
        """, q) == 0
    assert [q.get() for _ in range(10)] == list(range(10))
    assert q.empty()
    q.close()
    with pytest.raises(ValueError, match=r"^Queue <ember.SimpleQueue o_uid=\d+ maxsize=0> is closed$"):
        q.get()


@pytest.mark.timeout(120)
def test_joinable_queue_task_done_and_join(ember_runtime):
    q = ember.JoinableQueue()
    done = ember.Value("i", 0)
    for i in range(20):
        q.put(i)
    c = spawn("""
        q, done = ARGS
        for _ in range(20):
            q.get()
            with done.get_lock():
                done.value += 1
            q.task_done()
        """, q, done)
    q.join()                                   # returns only once every task is done
    assert done.value == 20
    assert join(c) == 0
    q.join()                                   # nothing unfinished: returns at once
    with pytest.raises(ValueError, match=r"^task_done\(\) called too many times$"):
        q.task_done()


@pytest.mark.timeout(60)
def test_unnamed_queue_lives_while_someone_holds_it(ember_runtime):
    q = ember.Queue()
    o_uid = q.o_uid
    q.put("kept")
    # a child holds it too (unpickled), then exits: its reference is dropped
    assert run("""
        q, = ARGS
        assert q.get() == "kept"
        q.put("from child")
        """, q) == 0
    assert o_uid in uids()
    assert q.get() == "from child"
    del q
    gc.collect()
    from ember.objects import naming
    import time
    deadline = time.monotonic() + 60             # (not stuck: GS's turn under load)
    while o_uid in uids() and time.monotonic() < deadline:
        naming.get_list()
    assert o_uid not in uids()


@pytest.mark.timeout(120)
def test_handles_travel_through_a_queue_and_stay_the_same_objects(ember_runtime):
    box, back = ember.Queue(), ember.Queue()
    lock, ev, (a, b), inner = ember.Lock(), ember.Event(), ember.Pipe(), ember.Queue()
    val = ember.Value("q", 7)
    box.put((lock, ev, b, inner, val))
    del b                            # only the pickle in the queue holds that end now
    p = spawn("""
        box, back = ARGS
        lock, ev, conn, inner, val = box.get(timeout=60)
        with lock:
            val.value += 1
        conn.send("via the queue")
        inner.put("inner")
        ev.set()
        back.put(lock)               # and back again
        """, box, back)
    assert ev.wait(60)
    assert a.recv() == "via the queue" and inner.get(timeout=60) == "inner" and val.value == 8
    lock2 = back.get(timeout=60)
    assert lock2.o_uid == lock.o_uid
    assert lock.acquire(False) and lock2.locked()
    lock2.release()
    assert join(p) == 0


@pytest.mark.timeout(60)
def test_maxsize_validation(ember_runtime):
    with pytest.raises(TypeError, match=r"^maxsize must be an int, not float$"):
        ember.Queue(1.5)
    q = ember.Queue(100_000)           # above the largest channel: the semaphore bounds it
    assert q.maxsize == 100_000 and not q.full()


@pytest.mark.timeout(120)
def test_threads_share_one_handle_while_a_process_shares_the_queue(ember_runtime):
    import threading
    q, out = ember.Queue(16), ember.Queue()
    p = spawn("""
        q, out = ARGS
        while (item := q.get()) is not None:
            out.put(item)
        """, q, out)
    got = []

    def producer(k):
        for i in range(500):
            q.put((k, i))

    def consumer():
        while (item := q.get()) is not None:
            got.append(item)

    producers = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    consumers = [threading.Thread(target=consumer) for _ in range(3)]
    for t in producers + consumers:
        t.start()
    for t in producers:
        t.join()
    for _ in range(4):
        q.put(None)                 # three threads and the child stop
    for t in consumers:
        t.join()
    assert join(p) == 0
    while not out.empty():
        got.append(out.get())
    assert sorted(got) == sorted((k, i) for k in range(4) for i in range(500))


@pytest.mark.timeout(60)
def test_outside_a_runtime_the_error_says_what_to_do():
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", "import ember; ember.Queue()"], capture_output=True,
                         text=True, timeout=60, env={k: v for k, v in __import__("os").environ.items()
                                                     if not k.startswith("EMBER_")})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "ember.exceptions.GlobalServicesError: not running inside an ember runtime: call "
        "ember.init() first (or ember.init(address=\"auto\") to attach to a running one), or "
        "start the program with `ember run PROGRAM`")

