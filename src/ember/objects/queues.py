"""``ember.Queue``, ``SimpleQueue`` and ``JoinableQueue``: multiprocessing's
queues over one lock-free channel in the runtime's default pool.

See docs/queues.md.  In short:

- one message per object, pickle protocol 5 (:mod:`._codec`: small objects
  inline in the channel slot, large buffers out of band in a pool block,
  zero-copy on the receiving side for numpy arrays);
- ``put`` returns once the object is in the channel: it is never lost
  afterwards unless the consumer receiving it dies in the middle of that
  receive.  There is no feeder thread (``join_thread``/``cancel_join_thread``
  exist for compatibility and do nothing), so an object is never buffered
  where a producer's death would lose it;
- ``maxsize``: the channel's capacity is the next power of two (at most
  :data:`MAX_CAPACITY`); when ``maxsize`` is not that power of two, a
  ``BoundedSemaphore(maxsize)`` in pool memory counts the free places.
  ``maxsize <= 0`` (unbounded): capacity :data:`UNBOUNDED_CAPACITY`; ``put``
  waits for room when that many objects are queued (multiprocessing would
  buffer them in the producer's memory instead);
- ``close()`` is multiprocessing's: this handle puts and gets no more, other
  handles are not affected.  ``shutdown()`` ends the queue for everyone (as
  Python 3.13's ``queue.Queue.shutdown``): ``put`` raises ``ChannelClosed``
  and ``get`` raises ``ChannelClosed`` (an ``EOFError``) once every object
  put before is received;
- names, lifetimes, pickling: :mod:`.naming` (``Queue(name="jobs")``,
  ``Queue.attach("jobs", timeout=...)``, ``exist_ok=True``).
"""
import pickle
import queue as _queue
import time

from ..channels_c import Channel, ChannelClosed, ChannelEmpty, ChannelFull
from ..exceptions import ReleaseError
from . import _codec, naming

_dumps = _codec.dumps
_loads = _codec.loads
_pdumps = pickle.dumps
_ploads = pickle.loads
_FLAT = _codec.FLAT
_OOB_MIN = _codec.OOB_MIN
_BadPickle = (pickle.UnpicklingError, EOFError)

__all__ = ["Queue", "SimpleQueue", "JoinableQueue", "MAX_CAPACITY", "UNBOUNDED_CAPACITY",
           "BLOCK_SIZE"]

#: Slots of an unbounded queue's channel.
UNBOUNDED_CAPACITY = 8192
#: Largest channel capacity a bounded queue uses.
MAX_CAPACITY = 65536
#: Channel block size: objects that pickle to at most 240 bytes travel inline.
BLOCK_SIZE = 256


def _wait_for(block, timeout):
    """The channel's wait of a put or get: None (for ever), 0 (not at
    all: ``block`` false) or ``timeout`` (a negative one as 0, as
    multiprocessing's queues take it)."""
    if not block:
        return 0
    if timeout is None:
        return None
    return 0.0 if timeout < 0 else timeout


def _capacity(maxsize):
    if maxsize <= 0:
        return UNBOUNDED_CAPACITY
    cap = 1
    while cap < maxsize and cap < MAX_CAPACITY:
        cap <<= 1
    return cap


def _rebuild(cls, rec, token=None):
    naming.claim(rec["o_uid"], token)
    self = cls.__new__(cls)
    self._setup(rec)
    return self


def _destroy(ch, sync):
    if ch is not None:
        ch.destroy()
    for o in sync:
        if o is not None:
            o.destroy()


def _finish(ch):
    try:
        ch.detach()
    except Exception:
        pass


class _NamedHandle:
    """What every handle of ember.objects shares: the GS record, the
    reference it holds, attach by name, pickling, destroy."""

    _KIND = None

    @classmethod
    def attach(cls, name, timeout=None):
        """The object called ``name``, waiting up to ``timeout`` seconds
        (None: forever) until some process creates it.

        Raises
        ------
        ember.ObjectTimeout
            No object of that name was created within ``timeout`` (a
            ``TimeoutError``).
        ember.ObjectError
            ``name`` is not a non-empty str, or names an object of another
            kind (``object 'x' is a Queue, not a Lock``).
        """
        rec = naming.attach(name, cls._KIND, timeout)
        self = cls.__new__(cls)
        try:
            self._setup(rec)
        except BaseException:
            naming.release(rec["o_uid"])
            raise
        return self

    @property
    def name(self):
        """The name given at creation, or None."""
        return self._rec["name"]

    @property
    def o_uid(self):
        """The object's unique id in the runtime (global services')."""
        return self._rec["o_uid"]

    @property
    def lifetime(self):
        """``"runtime"``, ``"owner"`` or ``"refcount"``."""
        return self._rec["lifetime"]

    def __reduce__(self):
        # the reference travels with the pickle: lent now, claimed by the receiver
        return (_rebuild, (type(self), self._rec, naming.lend(self._rec["o_uid"])))

    def destroy(self):
        """End the object now for everyone (GS destroys its memory); only
        when nobody uses it any more."""
        naming.destroy(self._rec["o_uid"])
        self._drop()

    def detach(self):
        """Drop this handle (and its reference); the object lives on while
        others hold it (lifetime "refcount") or until its lifetime ends."""
        self._drop()


class Queue(_NamedHandle):
    """A process-safe FIFO queue (``multiprocessing.Queue``).

    ``Queue(maxsize=0, name=None, *, lifetime=None, exist_ok=False)``.

    Parameters
    ----------
    maxsize : int
        At most this many objects queued (<= 0: unbounded).
    name : str or None
        A name other processes find it by (:meth:`attach`).
    lifetime : {"runtime", "owner", "refcount"}, ember.Scope or None
        How long it lives (see docs/queues.md, "Names and lifetimes").
    exist_ok : bool
        With a ``name`` that a live queue has: return that queue instead of
        raising.

    Raises
    ------
    TypeError
        ``maxsize`` is not an int.
    ember.ObjectError
        ``name`` is taken by a live object (without ``exist_ok``), or a bad
        ``name`` or ``lifetime``.
    ember.PoolExhausted
        No room for the queue in the runtime's default pool.
    ember.GlobalServicesError
        Not inside a runtime.
    """

    _KIND = "Queue"

    def __init__(self, maxsize=0, name=None, *, lifetime=None, exist_ok=False):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        cap = _capacity(maxsize)
        pool = naming.default_pool()
        sync = self._make_sync(maxsize, cap, pool)
        parts = [["sync", o.__reduce__()[1][1], o.sdesc] for o in sync if o is not None]
        desc = pickle.dumps((maxsize,) + tuple(sync), 5)
        ch = None
        try:
            ch = Channel.create(pool, capacity=cap, block_size=BLOCK_SIZE)
            rec = naming.create(self._KIND, name, lifetime, desc, [ch.sdesc], parts,
                                exist_ok=exist_ok)
        except BaseException:
            _destroy(ch, sync)
            raise
        if rec["channels"][0] != ch.sdesc:   # exist_ok found the live one: ours are not needed
            _destroy(ch, sync)
        else:
            ch.detach()
        self._setup(rec)

    @classmethod
    def create(cls, *args, **kwargs):
        """``cls(*args, **kwargs)`` (``exist_ok=True``: soft create)."""
        return cls(*args, **kwargs)

    def _make_sync(self, maxsize, cap, pool):
        from ..sync_c import BoundedSemaphore
        slots = BoundedSemaphore(maxsize, pool=pool) if 0 < maxsize != cap else None
        return (slots,)

    def _setup(self, rec):
        self._rec = rec
        state = pickle.loads(rec["desc"])
        self._maxsize = state[0]
        self._slots = state[1]
        self._extra = state[2:]
        self._ch = Channel.attach(rec["channels"][0])
        self._pool = self._ch.pool
        self._closed = False
        self._joinable = False
        self._set_fast()
        self._hold = naming.hold(self, rec["o_uid"])
        import weakref
        weakref.finalize(self, _finish, self._ch).atexit = False

    def _set_fast(self):
        # The small-object fast paths of put/get (blocking, no timeout): a
        # put with no place to count (no BoundedSemaphore) and no task count,
        # a get with no place to give back.  False once closed.
        open_ = not self._closed
        self._fast_put = open_ and self._slots is None and not self._joinable
        self._fast_get = open_ and self._slots is None
        self._send = self._ch.send
        self._recv = self._ch.recv_auto

    def _drop(self):
        self._closed = True
        self._set_fast()
        self._hold.drop()

    def _check(self):
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")

    def _named(self):
        """``Queue 'jobs'`` (``Queue`` if it has no name)."""
        name = self._rec.get("name")
        return f"{type(self).__name__} {name!r}" if name else type(self).__name__

    def _label(self):
        """``Queue 'jobs' (o_uid 3)``, for messages."""
        return f"{self._named()} (o_uid {self._rec['o_uid']})"

    def __repr__(self):
        return f"<ember.{self._named()} o_uid={self._rec['o_uid']} maxsize={self._maxsize}>"

    # ---------------------------------------------------------------- put/get
    def put(self, obj, block=True, timeout=None):
        """Put ``obj``; with a full bounded queue wait (``block``) up to
        ``timeout`` seconds, then raise ``queue.Full``.

        Raises
        ------
        queue.Full
            No room within ``timeout`` (or at once, without ``block``).
        ember.ChannelClosed
            The queue was shut down (:meth:`shutdown`).
        ValueError
            This handle was closed.
        ember.PoolExhausted
            A large object does not fit in the pool.
        pickle.PicklingError
            ``obj`` cannot be pickled (nor by cloudpickle).
        """
        try:
            if self._fast_put and block and timeout is None:
                # the fast path: a small flat object pickled here, sent as it is
                t = type(obj)
                msg = _pdumps(obj, 5) if t in _FLAT and (t is not bytes or len(obj) < _OOB_MIN) \
                    else _dumps(obj, self._pool, None)
                if type(msg) is bytes:
                    self._send(msg, None)
                    return
                self._put_msg(msg, None)
                return
            if self._closed:
                self._check()
            tmo = _wait_for(block, timeout)
            msg = _dumps(obj, self._pool, tmo)
            if self._slots is None and type(msg) is bytes and not self._joinable:
                try:
                    self._ch.send(msg, tmo)     # the fast path: no place to count, nothing to free
                except ChannelFull:
                    raise _queue.Full from None
                return
            self._put_msg(msg, tmo)
        except ChannelClosed:
            raise ChannelClosed(f"cannot put on {self._label()}: it was shut down") from None

    def _put_msg(self, msg, tmo):
        slots = self._slots
        if slots is not None:
            deadline = None if not tmo else time.monotonic() + tmo
            if not slots.acquire(tmo != 0, tmo):
                _codec.free_unsent(msg)
                raise _queue.Full
            if deadline is not None:
                tmo = max(0.0, deadline - time.monotonic())
        try:
            self._ch.send(msg, tmo)
        except ChannelFull:
            self._undo_put(msg)
            raise _queue.Full from None
        except BaseException:
            self._undo_put(msg)
            raise

    def _undo_put(self, msg):
        _codec.free_unsent(msg)
        if self._slots is not None:
            try:
                self._slots.release()
            except ReleaseError:
                pass

    def get(self, block=True, timeout=None):
        """Remove and return an object; wait (``block``) up to ``timeout``
        seconds, then raise ``queue.Empty``.  A queue that was shut down and
        is drained raises ``ChannelClosed`` (an ``EOFError``).

        Raises
        ------
        queue.Empty
            Nothing arrived within ``timeout`` (or at once, without
            ``block``).
        ember.ChannelClosed
            The queue was shut down and everything put before was received.
        ValueError
            This handle was closed.
        ember.MessageError
            The message is not one ember's codec made.
        """
        try:
            if self._fast_get and block and timeout is None:
                data = self._recv(None)
                if type(data) is bytes:
                    try:
                        return _ploads(data)
                    except _BadPickle as exc:
                        raise _codec.not_ours(data, exc) from None
                return _loads(data)
            if self._closed:
                self._check()
            tmo = _wait_for(block, timeout)
            try:
                data = self._recv(tmo)
            except ChannelEmpty:
                raise _queue.Empty from None
            if self._slots is not None:
                try:
                    self._slots.release()
                except ReleaseError:
                    pass       # a dead producer's permit was already counted back
            return _loads(data)
        except ChannelClosed:
            raise ChannelClosed(f"{self._label()} was shut down, and everything put on it "
                                "before was received") from None

    def put_nowait(self, obj):
        """``put(obj, False)``: ``queue.Full`` at once if there is no room."""
        return self.put(obj, False)

    def get_nowait(self):
        """``get(False)``: ``queue.Empty`` at once if nothing is queued."""
        return self.get(False)

    # ---------------------------------------------------------------- state
    def qsize(self):
        """Objects queued now (a snapshot)."""
        self._check()
        return len(self._ch)

    def empty(self):
        """Whether nothing is queued now (a snapshot)."""
        self._check()
        return len(self._ch) == 0

    def full(self):
        """Whether a bounded queue has no room now (a snapshot)."""
        self._check()
        if self._maxsize <= 0:
            return False
        if self._slots is not None:
            return self._slots.get_value() == 0
        return len(self._ch) >= self._maxsize

    @property
    def maxsize(self):
        """The ``maxsize`` it was made with (<= 0: unbounded)."""
        return self._maxsize

    # ---------------------------------------------------------------- ends
    def close(self):
        """This handle will put and get no more (``multiprocessing``'s
        ``close``; other handles are not affected).  Idempotent."""
        if not self._closed:
            self._drop()

    def join_thread(self):
        """Compatibility: there is no feeder thread; nothing to wait for."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self):
        """Compatibility: there is no feeder thread (nothing is buffered in
        this process that its exit could lose)."""

    def shutdown(self):
        """End the queue for everyone: puts raise ``ChannelClosed``; gets
        receive what was put before, then raise ``ChannelClosed`` (an
        ``EOFError``).

        Raises
        ------
        ValueError
            This handle was closed.
        """
        self._check()
        self._ch.close()

    # ember.wait() support
    def _wait_channel(self):
        return self._ch

    @property
    def _reader(self):
        # multiprocessing's Queue has a pipe end there that some programs
        # wait on (connection.wait([q._reader])): say what to do instead
        raise AttributeError(f"ember's {type(self).__name__} has no _reader (multiprocessing's "
                             "private pipe end): wait on the queue itself, "
                             "multiprocessing.connection.wait([q]) or ember.wait([q])")


class SimpleQueue(Queue):
    """``multiprocessing.SimpleQueue``: ``put(obj)``, ``get()``, ``empty()``,
    ``close()``; unbounded."""

    _KIND = "SimpleQueue"

    def __init__(self, name=None, *, lifetime=None, exist_ok=False):
        super().__init__(0, name, lifetime=lifetime, exist_ok=exist_ok)

    def put(self, obj):
        """Put ``obj`` (waits only if 8192 objects are queued)."""
        Queue.put(self, obj)

    def get(self):
        """Remove and return an object, waiting for one."""
        return Queue.get(self)


class JoinableQueue(Queue):
    """``multiprocessing.JoinableQueue``: a Queue with ``task_done()`` and
    ``join()``.  The count of unfinished tasks is a Semaphore in pool
    memory, guarded by a Condition, as multiprocessing does it."""

    _KIND = "JoinableQueue"

    def _make_sync(self, maxsize, cap, pool):
        from ..sync_c import Condition, Lock, Semaphore
        lock = Lock(pool=pool)
        return super()._make_sync(maxsize, cap, pool) + (
            Semaphore(0, pool=pool, reclaim=False), lock, Condition(lock, pool=pool))

    def _setup(self, rec):
        super()._setup(rec)
        self._joinable = True
        self._set_fast()
        self._unfinished, _, self._cond = self._extra

    def _put_msg(self, msg, tmo):
        slots = self._slots
        if slots is not None:
            deadline = None if not tmo else time.monotonic() + tmo
            if not slots.acquire(tmo != 0, tmo):
                _codec.free_unsent(msg)
                raise _queue.Full
            if deadline is not None:
                tmo = max(0.0, deadline - time.monotonic())
        with self._cond:
            self._unfinished.release()
        try:
            self._ch.send(msg, tmo)
        except BaseException as exc:
            self._undo_put(msg)
            with self._cond:          # as task_done: a join() waiting on this count wakes
                self._unfinished.acquire(False)
                if self._unfinished.get_value() == 0:
                    self._cond.notify_all()
            if isinstance(exc, ChannelFull):
                raise _queue.Full from None
            raise

    def task_done(self):
        """Say that a task got with ``get()`` is finished.

        Raises
        ------
        ValueError
            Called more times than objects were put, or on a closed handle.
        """
        self._check()
        with self._cond:
            if not self._unfinished.acquire(False):
                raise ValueError("task_done() called too many times")
            if self._unfinished.get_value() == 0:
                self._cond.notify_all()

    def join(self):
        """Wait until every task put is done."""
        self._check()
        with self._cond:
            self._cond.wait_for(lambda: self._unfinished.get_value() == 0)


# ChannelClosed is what a shut-down queue raises (an EOFError)
Queue.ShutDown = ChannelClosed
