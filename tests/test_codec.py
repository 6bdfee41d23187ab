"""The one codec of the Python layer (ember.objects._codec): what plain
pickle refuses travels by cloudpickle through Queues, Pipes, shared objects
and Processes; large buffers are pickled once; malformed messages raise a
clear error (MessageError) and leak nothing."""
import pickle
import struct
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

def test_a_recursive_closure_is_not_kept_alive_by_the_pickle_cache():
    """A function that reaches itself (a recursive closure) would hold its
    own weak key alive in the cache's fingerprint: it is not kept, and is
    freed once its program drops it."""
    import gc
    import weakref

    def make():
        def rec(n):
            return rec(n - 1) if n else 0
        return rec

    fn = make()
    assert _codec.prepickled(fn) is not None
    ref = weakref.ref(fn)
    del fn
    gc.collect()
    assert ref() is None


import ember
from ember.exceptions import MessageError
from ember.objects import _codec

pytest_plugins = ["ember.testing"]


class Counted:
    """Counts how often it is pickled."""
    reduced = 0

    def __reduce__(self):
        Counted.reduced += 1
        return (Counted, ())


def _live_allocs():
    from ember.objects import naming
    return naming.default_pool().stats().live_allocs


@pytest.mark.timeout(60)
def test_lambda_and_closure_through_a_queue_and_a_pipe(ember_runtime):
    n = 5
    q = ember.Queue()
    q.put(lambda: 1)
    q.put(lambda x: x + n)              # a closure over a local
    assert q.get(timeout=10)() == 1
    assert q.get(timeout=10)(2) == 7
    a, b = ember.Pipe()
    a.send(lambda: "piped")
    assert b.recv()() == "piped"
    a.close()
    b.close()
    q.close()


@pytest.mark.timeout(60)
def test_unpicklable_raises_in_put_and_nothing_is_queued(ember_runtime):
    q = ember.Queue(2)
    with pytest.raises(TypeError):
        q.put(threading.Lock())         # neither pickle nor cloudpickle can
    assert q.qsize() == 0


@pytest.mark.timeout(60)
def test_a_large_object_is_pickled_once(ember_runtime):
    q = ember.Queue()
    before = Counted.reduced
    q.put([Counted(), np.ones(1 << 18)])          # 2 MiB: out of band, in a frame
    assert Counted.reduced == before + 1
    got = q.get(timeout=10)
    assert isinstance(got[0], Counted) and got[1].sum() == 1 << 18
    del got
    before = Counted.reduced
    q.put([Counted(), np.ones(4)])                 # small buffers: in band
    assert Counted.reduced == before + 2           # (pickled again with them in band)
    assert q.get(timeout=10)[1].sum() == 4
    q.close()


@pytest.mark.timeout(60)
def test_malformed_messages_raise_message_error_and_leak_nothing(ember_runtime):
    q = ember.Queue()
    pool = q._pool
    before = _live_allocs()
    q._ch.send(b"not a pickle")
    with pytest.raises(MessageError, match="malformed message .12 bytes.: not an ember message"):
        q.get(timeout=10)
    q._ch.send(pickle.dumps((1, 2), 5)[:-3])       # truncated
    with pytest.raises(pickle.UnpicklingError, match="malformed message"):
        q.get(timeout=10)
    # the same through get()'s fast path (blocking, no timeout)
    q._ch.send(b"not a pickle")
    with pytest.raises(MessageError, match="malformed message .12 bytes.: not an ember message"):
        q.get()
    q._ch.send(pickle.dumps((1, 2), 5)[:-3])
    with pytest.raises(MessageError, match="malformed message"):
        q.get()

    def frame(n, plen, lens, size=4096):
        a = pool.alloc(size)
        mv = memoryview(a)
        mv[:16] = struct.pack("<4sIQ", b"EMQF", n, plen)
        if lens:
            struct.pack_into(f"<{len(lens)}Q", mv, 16, *lens)
        mv.release()
        return a

    cases = [(frame(0, 10, []), "holds 0 buffers"),
             (frame(1 << 30, 10, []), "holds 1073741824 buffers"),
             (frame(1, 1 << 40, [8]), "pickle .1099511627776 bytes. overruns it"),
             (frame(2, 16, [64, 1 << 20]), "buffer of 1048576 bytes at offset 192 overruns it")]
    for a, why in cases:
        q._ch.send(a)                               # moved through the channel, as put does
        with pytest.raises(MessageError, match=why):
            q.get(timeout=10)
    # large plain bytes that are not a pickle (a pool block, not a frame)
    q._ch.send(b"x" * 100_000)
    with pytest.raises(MessageError, match="not a pickle"):
        q.get(timeout=10)
    assert _live_allocs() == before                  # every rejected block was freed
    q.put("still works")
    assert q.get(timeout=10) == "still works"
    q.close()


def test_codec_round_trips_without_a_runtime_pool():
    for obj in (1, "x", (1, "x"), {"a": [1, 2]}, b"b" * 1000, np.arange(10), b"b" * 300_000,
                [b"b" * 300_000],
                ("__main__", 1.5, None, True, 2j, b"", -(1 << 70)), (1, [2])):
        msg = _codec.dumps(obj, None)
        assert type(msg) is bytes
        got = _codec.loads(msg)
        assert (got == obj).all() if isinstance(obj, np.ndarray) else got == obj
    f = _codec.loads(_codec.dumps(lambda y: y * 3, None))
    assert f(2) == 6
    with pytest.raises(MessageError):
        _codec.loads(b"")


_G = 1
_L = [1]


def _prepickle_roundtrip(fn):
    pre = _codec.prepickled(fn)
    assert pre is not None
    msg = _codec.dumps((pre, (), {}), None, known_main=pre.mains)
    got, args, kwargs = pickle.loads(msg)
    return got()


@pytest.mark.timeout(60)
def test_a_function_pickled_by_value_is_pickled_again_when_what_it_uses_changed():
    """ember.Process reuses the pickle of a target cloudpickle ships by value
    (_codec.prepickled) only while nothing it depends on changed: a global
    it names rebound, a cell's contents, defaults, attributes, a function
    it calls redefined; one that names a mutable object is never cached."""
    global _G

    def uses_global():
        return _G

    def helper():
        return "a"

    def calls_helper():
        return helper()

    pre = _codec.prepickled(uses_global)
    assert _codec.prepickled(uses_global) is pre            # unchanged: the same pickle
    assert _prepickle_roundtrip(uses_global) == 1
    _G = 2
    try:
        assert _codec.prepickled(uses_global) is not pre
        assert _prepickle_roundtrip(uses_global) == 2
    finally:
        _G = 1
    assert _prepickle_roundtrip(calls_helper) == "a"
    helper = lambda: "b"                                      # noqa: E731,F811 (a new cell value)
    assert _prepickle_roundtrip(calls_helper) == "b"
    uses_global.__defaults__ = (1,)
    uses_global.tag = "t"
    got = pickle.loads(_codec.dumps((_codec.prepickled(uses_global),), None,
                                    known_main=0))[0]
    assert got.__defaults__ == (1,) and got.tag == "t"
    assert _codec.prepickled(lambda: _L[0]) is None          # a list: could change in place
    assert _codec.prepickled(_live_allocs) is None           # by reference: not by value
    # arguments that name __main__ or need cloudpickle: the caller pickles all together
    main_obj = type("M", (), {"__module__": "__main__"})
    pre = _codec.prepickled(uses_global)
    assert _codec.dumps((pre, (main_obj,), {}), None, known_main=pre.mains) is None
    assert _codec.dumps((pre, (lambda: 1,), {}), None, known_main=pre.mains) is None


# ------------------------------------------------------------------ __main__ code
PROG = """
import ember

class Point:                        # a class of __main__: not importable in a child
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2

def consume(q, out):
    p = q.get(timeout=30)
    f = q.get(timeout=30)
    out.put((type(p).__name__, p.norm2(), f(p)))

ember.Process.start_method = {method!r}
q, out = ember.Queue(), ember.Queue()
q.put(Point(3, 4))
q.put(lambda p: p.x * 10)
c = ember.Process(target=consume, args=(q, out))
c.start()
print("child", out.get(timeout=60))
c.join(60)
a, b = ember.Pipe()
def echo(conn):
    conn.send(conn.recv().norm2())
e = ember.Process(target=echo, args=(b,))
e.start()
a.send(Point(1, 2))
print("pipe", a.recv())
e.join(60)
"""


@pytest.mark.timeout(150)
@pytest.mark.parametrize("method", ["template", "spawn"])
def test_main_class_and_lambda_through_a_queue_to_a_child(tmp_path, method):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(PROG.format(method=method)))
    res = subprocess.run([sys.executable, "-m", "ember", "run", str(prog)], cwd=tmp_path,
                         capture_output=True, timeout=120)
    out = res.stdout.decode()
    assert res.returncode == 0, (out, res.stderr.decode())
    assert out.splitlines() == ["child ('Point', 25, 30)", "pipe 5"]


@pytest.mark.timeout(60)
def test_a_malformed_request_to_a_host_is_dropped_and_it_keeps_serving(ember_runtime):
    from ember.channels_c import Channel
    ref = ember.serve({"a": 1})
    p = ref.proxy()
    assert p.get("a") == 1
    req = Channel.attach(ref._rec["channels"][0])
    req.send(b"junk")                                  # not a message of the codec
    req.send(pickle.dumps("not a request", 5))         # a message, not a request
    assert p.get("a") == 1 and len(p) == 1
    req.detach()
    ref.destroy()


def _peak_traced(fn):
    """(what ``fn()`` returned, the peak of the Python heap above its level
    before, traced by tracemalloc, in bytes)."""
    import tracemalloc
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        got = fn()
        return got, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _nbytes(b):
    return len(b)


def _loads_block(msg):
    """:func:`_codec.loads` of what dumps made (its block freed after)."""
    if type(msg) is bytes:
        return _codec.loads(msg)
    try:
        return _codec.loads(memoryview(msg))
    finally:
        msg.free()


@pytest.mark.timeout(120)
def test_a_large_bytes_object_is_copied_once_into_the_pool_not_into_a_whole_pickle(
        ember_runtime):
    """A pickle that holds large ``bytes`` objects is written in pieces,
    each such object by reference, and copied once into one pool block: the
    sender's heap never holds a second copy (a whole pickle), for a Process's
    call (with a target pickled by reference or by value), a Queue put of
    the object itself or inside a container; it arrives equal."""
    from ember.objects import naming
    pool = naming.default_pool()
    big = bytes(range(256)) * (1 << 17)                  # 32 MiB
    small = 1 << 20
    for obj in (big, (len, (big,), {}), [1, {"k": big}, "x" * 300_000, big]):
        msg, peak = _peak_traced(lambda: _codec.dumps(obj, pool))
        assert type(msg) is not bytes and peak < small, (type(obj), peak)
        assert _loads_block(msg) == obj
    q = ember.Queue()
    for obj in (big, (1, big), {"a": big}):
        _, peak = _peak_traced(lambda: q.put(obj))
        assert peak < small, (type(obj), peak)
        assert q.get(timeout=30) == obj
    q.close()
    for target in (_nbytes, lambda b: len(b)):           # by reference, by value
        p = ember.Process(target=target, args=(big,))
        _, peak = _peak_traced(p.start)
        assert p.result(60) == len(big) and peak < small, peak
        p.join(60)
        assert p.exitcode == 0


@pytest.mark.timeout(120)
def test_the_main_check_reads_the_picklers_frames_not_large_data(ember_runtime, monkeypatch):
    """Whether a pickle names ``__main__`` (cloudpickle then) is read in the
    pickler's frames: large ``bytes`` holding the text as data are not read
    (they are no global's name), nor counted as ``data_mains``, so a real
    reference to ``__main__`` beside them still takes cloudpickle; data of
    up to 256 KiB is read and counted, as before."""
    import types
    from ember.objects import naming
    pool = naming.default_pool()
    calls = []
    real = _codec._cloud_pickler                  # (called by each cloudpickle pickling)
    monkeypatch.setattr(_codec, "_cloud_pickler", lambda: calls.append(1) or real())

    class InMain:
        pass
    InMain.__module__, InMain.__qualname__ = "__main__", "_ember_test_InMain"
    main = sys.modules["__main__"]
    monkeypatch.setattr(main, "_ember_test_InMain", InMain, raising=False)
    for n in (300_000, 100_000):
        text = b"__main__" * (n // 8)
        msg = _codec.dumps((print, (text,), {}), pool)             # only data names it...
        assert (calls == []) == (n > 256 * 1024), n                # (read when 256 KiB or less)
        assert _loads_block(msg)[1][0] == text
        calls.clear()
        msg = _codec.dumps((print, (text,), {}), pool, data_mains=(text,))
        assert calls == [], n                                      # ...as data_mains says
        _loads_block(msg)
        msg = _codec.dumps((print, (text, InMain), {}), pool, data_mains=(text, InMain))
        assert calls == [1], n                                     # a real reference too
        got = _loads_block(msg)
        assert got[1][0] == text and isinstance(got[1][1], type)
        calls.clear()
    assert isinstance(main, types.ModuleType)


@pytest.mark.timeout(120)
def test_a_large_result_whose_sender_is_killed_mid_transfer_leaves_no_block(ember_runtime,
                                                                              tmp_path):
    """A child SIGKILLed at any point of sending a 64 MiB result (copying
    it into a pool block of its own, sending it, or after) leaves no block
    in the default pool: a block not sent yet is its own (reclaimed by GS
    at its death), one sent is in its result channel (freed with it)."""
    import os
    import signal
    import time
    from ember.objects import naming
    pool = naming.default_pool()
    size = 64 << 20
    p = ember.Process(target=_big_after_mark, args=(str(tmp_path / "warm"), 1))
    p.start()
    p.join(60)
    free = pool.stats().free
    for i, delay in enumerate((0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.2)):
        mark = tmp_path / f"mark{i}"
        p = ember.Process(target=_big_after_mark, args=(str(mark), size))
        p.start()
        deadline = time.monotonic() + 60
        while not mark.exists() and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(delay)
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass                                    # (ended, its result sent)
        p.join(60)
        assert p.exitcode in (0, -signal.SIGKILL)
        p.close()
    stats = _wait_free(pool, free)
    assert stats.free >= free - (8 << 20), (free, stats)


def _big_after_mark(path, size):
    b = b"\x01" * size
    open(path, "w").close()
    return b


def _kill_and_close(p):
    """SIGKILL the started ``p`` (gone already: its end), join and close it."""
    import os
    import signal
    try:
        os.kill(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.join(60)
    assert p.exitcode in (0, -signal.SIGKILL)
    p.close()


def _wait_free(pool, free, slack=8 << 20, timeout=30):
    """Wait until ``pool`` has ``free`` bytes free again, less ``slack``
    (GS reclaims a dead process's blocks after its death); its stats."""
    import time
    deadline = time.monotonic() + timeout
    while pool.stats().free < free - slack and time.monotonic() < deadline:
        time.sleep(0.05)
    return pool.stats()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_child_killed_while_it_unpickles_a_large_argument_leaves_no_block(ember_runtime,
                                                                             kind):
    """A child SIGKILLed while it unpickles its 64 MiB argument (a plain
    pickle, or a frame for a bytearray), or before, or after, leaves no block
    in the default pool: the block it received is its own while it
    unpickles (reclaimed by GS at its death).  Before, each such kill
    left the 64 MiB block allocated until the runtime's end."""
    import time
    from ember.objects import naming
    pool = naming.default_pool()
    big = kind(b"\x01" * (64 << 20))
    p = ember.Process(target=_nbytes, args=(b"x",))
    p.start()
    p.join(60)
    free = pool.stats().free
    for delay in (0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05):
        p = ember.Process(target=_nbytes, args=(big,))
        p.start()
        time.sleep(delay)
        _kill_and_close(p)
    stats = _wait_free(pool, free)
    assert stats.free >= free - (8 << 20), (free, stats)


def _take_then_die(q):
    """Take the next item's message off ``q``'s channel and die before
    decoding it: the window between the channel's hand-over of a large
    message's block and the codec's."""
    import os
    import signal
    view = q._ch.recv_auto(None)      # (kept: its release would free the block)
    os.kill(os.getpid(), signal.SIGKILL)
    return view


@pytest.mark.timeout(120)
def test_a_receiver_killed_right_after_taking_a_large_message_leaves_no_block(ember_runtime):
    """A process SIGKILLed just after ``Channel.recv_auto`` handed it a
    large message's block (a Queue's get, before the codec unpickles it)
    leaves no block in the default pool: the block is its receiver's from
    the channel's hand-over (``_channels._recv_auto``), reclaimed by GS at
    its death.  Before, it was nobody's until the codec's ``_hold``, and
    such a kill left 64 MiB allocated until the runtime's end."""
    from ember.objects import naming
    pool = naming.default_pool()
    q = ember.Queue()
    free = pool.stats().free
    for _ in range(2):
        q.put(b"\x01" * (64 << 20))
        p = ember.Process(target=_take_then_die, args=(q,))
        p.start()
        p.join(60)
        assert p.exitcode == -9, p.exitcode
        p.close()
    stats = _wait_free(pool, free)
    q.close()
    assert stats.free >= free - (8 << 20), (free, stats)


@pytest.mark.timeout(180)
def test_a_lease_killed_after_taking_its_call_before_unpickling_it_leaves_no_block(
        ember_runtime):
    """A lease SIGKILLed once it has taken its call off the channel, before
    its unpickling (while it applies the call's environment: ~7,000
    variables here, a long window), leaves no block in the default pool:
    the call's 64 MiB block is its own from its receipt
    (``_channels._recv_record``), reclaimed by GS at its death.  Before,
    it was nobody's until the unpickling, and each such kill left it
    allocated until the runtime's end."""
    import time
    from ember.objects import naming
    from ember.objects import process as P
    pool = naming.default_pool()
    # The call's own variables, as many short ones as a lease still takes
    # (an environment over _LEASE_ENV_MAX goes a fresh start's way, which
    # applies none: 30,000 of them, in os.environ, made every kill here
    # one of a fresh interpreter, most of them after its unpickling).
    room = P._LEASE_ENV_MAX - P._env_size(P._environ()) - 1024
    env = {f"LW{i}": "" for i in range(room // 9)}
    assert P._env_size({**P._environ(), **env}) <= P._LEASE_ENV_MAX
    big = b"\x01" * (64 << 20)
    free = None
    for _ in range(3):
        for _ in range(2):                               # the second leases the next
            p = ember.Process(target=_nbytes, args=(b"x",))
            p.start()
            p.join(60)
        if free is None:
            free = pool.stats().free
        p = ember.Process(target=_nbytes, args=(big,), env=env)
        p.start()
        call = p._res.call
        deadline = time.monotonic() + 60
        while len(call) == P._CALL_MESSAGES and time.monotonic() < deadline:
            pass                                         # until it took its call
        _kill_and_close(p)
    stats = _wait_free(pool, free)
    assert stats.free >= free - (8 << 20), (free, stats)
