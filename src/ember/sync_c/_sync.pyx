# cython: language_level=3, boundscheck=False, wraparound=False, binding=False
"""Cython binding of ember's synchronization objects in pool memory (sync.h).

The classes mirror ``multiprocessing.synchronize`` (and ``threading``) names
and signatures.  Each object lives in an allocation of an ember Pool and
pickles to that allocation's descriptor, so another process that unpickles
it attaches the same object.  Blocking calls release the GIL and wait in
slices of at most 50 ms, checking for signals (Ctrl-C) in between.  What
happens when a holder dies is in docs/sync.md and sync.c.
"""
cimport cython
from cpython.pycapsule cimport PyCapsule_Import
from posix.unistd cimport getpid
import os
import time as _time
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport int64_t, uint32_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from ember.pools_c._pools cimport (
    Allocation, Pool, ember_pool_ptr, ember_rc_str, ember_rc_t, EMBER_OK, EMBER_ERR_INVALID_ARG,
    EMBER_ERR_BAD_MAGIC, EMBER_ERR_VERSION, EMBER_ERR_DESTROYED, EMBER_ERR_TIMEOUT,
    EMBER_ERR_INTERRUPTED, EMBER_ERR_FULL,
)

from ember.exceptions import (BrokenBarrierError, DescriptorError, OwnerDied, ReleaseError,
                              SyncError)
from ember.pools_c import Allocation as _PyAllocation
from ember import _rc

# The pool functions come from ember.pools_c._pools (pool.c is compiled
# there only), through the table it exports (common_c/pool_api.h).
cdef extern from "pool_api.h":
    ember_rc_t ember_pool_api_set(const void *table)

if ember_pool_api_set(PyCapsule_Import(b"ember.pools_c._pools._C_API", 0)) != EMBER_OK:
    raise ImportError("ember.pools_c._pools exports a pool API of another build of ember; reinstall it")

# What a blocked call waits on, in the process's slot (common_c/slots.c,
# compiled into _pools, reached through the same table): written only on
# the slow path, once the try (and the spin) failed, for the whole sliced
# wait; ``ember ps`` reads it (docs/introspection.md).
cdef extern from "slots.h" nogil:
    enum:
        EMBER_WAIT_ACQUIRE
        EMBER_WAIT_SYNC
    void _ember_slot_wait_begin(uint32_t op, uint64_t c_uid, uint32_t count, uint64_t obj)
    void _ember_slot_wait_end()


cdef inline void _slot_begin(SyncObject o, uint32_t op) noexcept:
    """Record "blocked on ``op`` of this object" (its pool's m_uid, its
    offset there, its kind) in the process slot; a no-op if unbound."""
    _ember_slot_wait_begin(op, o._pool._m_uid, <uint32_t>o._kind, o._alloc._a.offset)

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Barrier", "Condition",
           "SEM_SLOTS", "BARRIER_MAX_PARTIES"]

SEM_SLOTS = EMBER_SYNC_SEM_SLOTS
BARRIER_MAX_PARTIES = EMBER_SYNC_BARRIER_MAX

# Blocking calls wait in slices of at most this long, then check signals.
cdef int64_t _SLICE_NS = 50_000_000
# Pause iterations a blocking Lock acquire spins with the GIL held first.
cdef uint32_t _SPINS = 100

_KIND_NAME = {EMBER_SYNC_LOCK: "Lock", EMBER_SYNC_RLOCK: "RLock",
              EMBER_SYNC_SEMAPHORE: "Semaphore", EMBER_SYNC_EVENT: "Event",
              EMBER_SYNC_BARRIER: "Barrier", EMBER_SYNC_CONDITION: "Condition"}


cdef int _check_rc(ember_rc_t rc, str what) except -1:
    """Raise the exception for ``rc`` (nothing for EMBER_OK): an ember_rc_t
    from the one map of every extension (:mod:`ember._rc`); a sync-only code
    that reached here (none should) as a SyncError naming it."""
    if rc == EMBER_OK:
        return 0
    if 0 < rc < len(_rc.NAMES):
        raise _rc.error(rc, what, 0)
    raise SyncError(f"{what}: unexpected return code [{ember_rc_str(rc).decode()} ({rc})]")


def _after_raw_clone():
    """In a child made by a raw clone() (no pthread_atfork handler ran):
    forget the identity sync.c cached (lock holders record it)."""
    ember_sync_after_clone()

# A raw clone's child runs Python's fork hooks (PyOS_AfterFork_Child), not
# pthread_atfork's; an ordinary fork runs both (this refresh is idempotent).
os.register_at_fork(after_in_child=_after_raw_clone)


def _raise_rc(int rc, str what):
    """Raise what this extension raises for ``rc`` (tests: one map everywhere)."""
    _check_rc(<ember_rc_t>rc, what)


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef int64_t _timeout_ns(timeout) except -2:
    """None -> -1 (forever); a number of seconds -> ns, negative -> 0 (try
    once), as multiprocessing does."""
    if timeout is None:
        return -1
    try:
        t = float(timeout)
    except (TypeError, ValueError):
        raise TypeError(f"timeout must be None or a number of seconds, got {type(timeout).__name__}")
    if t != t:
        raise ValueError("timeout must be None or a number of seconds, got nan")
    if t <= 0:
        return 0
    if t > 1e9:
        return -1
    cdef int64_t ns = <int64_t>(t * 1e9)
    return ns if ns > 0 else 1


cdef inline int64_t _deadline(int64_t tmo) noexcept nogil:
    return -1 if tmo < 0 else _now_ns() + tmo


cdef inline int64_t _slice(int64_t deadline) noexcept nogil:
    """The next wait slice, 0 once the deadline has passed (< 0: forever)."""
    cdef int64_t left
    if deadline < 0:
        return _SLICE_NS
    left = deadline - _now_ns()
    if left <= 0:
        return 0
    return left if left < _SLICE_NS else _SLICE_NS


cdef Allocation _new_alloc(pool, int kind, str cls):
    if pool is None:
        raise TypeError(f"{cls}() needs pool=: the ember.pools_c.Pool the object lives in")
    if not isinstance(pool, Pool):
        raise TypeError(f"{cls}(): pool must be an ember.pools_c.Pool, got {type(pool).__name__}")
    return pool.alloc(ember_sync_size(kind))


cdef class SyncObject:
    """Base of every synchronization object: owns its pool allocation."""

    def __init__(self, *args, **kwargs):
        raise TypeError("SyncObject cannot be instantiated directly")

    cdef int _setup(self, Allocation alloc, int kind) except -1:
        cdef ember_rc_t rc
        self._alloc = alloc
        self._pool = alloc._owner
        self._kind = kind
        self._owner_pid = getpid()
        self._p = ember_pool_ptr(self._pool._pool, alloc._a.offset)
        rc = ember_sync_check(self._p, alloc._a.size, kind)
        if rc != EMBER_OK:
            self._p = NULL
            name = _KIND_NAME.get(kind, "object")
            if rc == EMBER_ERR_DESTROYED:
                raise _rc.EXC[EMBER_ERR_DESTROYED](f"cannot attach {name} at offset {alloc._a.offset} of pool "
                                                   f"{self._pool.name!r}: it was destroyed [EMBER_ERR_DESTROYED]")
            raise DescriptorError(f"cannot attach {name} at offset {alloc._a.offset} of pool "
                                  f"{self._pool.name!r}: the allocation does not hold an ember "
                                  f"{name} [{ember_rc_str(rc).decode()}]")
        return 0

    cdef str _desc(self):
        name = type(self).__name__
        if self._alloc is None:
            return f"{name} (unset)"
        return f"{name} (pool {self._pool._label!r}, offset {self._alloc._a.offset})"

    cdef int _check(self) except -1:
        if self._p == NULL:
            raise SyncError(f"{self._desc()}: the object was destroyed")
        if self._pool._pool == NULL:
            raise SyncError(f"{self._desc()}: its pool is detached or destroyed")
        return 0

    cdef int _rc(self, ember_rc_t rc, str what) except -1:
        return _check_rc(rc, f"{self._desc()}: cannot {what}")

    @property
    def sdesc(self):
        """The allocation descriptor (bytes) of the object's memory."""
        self._check()
        return self._alloc.sdesc

    @property
    def pool(self):
        return self._pool

    @property
    def closed(self):
        """True once destroyed (or its pool closed) in this process."""
        return self._p == NULL or self._pool._pool == NULL

    def destroy(self):
        """Mark the object destroyed and free its memory.  Any process may
        do it, but only when nobody uses the object any more, and only with
        a handle of its own: a handle inherited through fork() raises
        SyncError (attach one in the child: ``pickle.loads(pickle.dumps(obj))``)."""
        self._check()
        if getpid() != self._owner_pid:
            raise SyncError(f"{self._desc()}: cannot destroy: this handle was inherited through fork() "
                            f"from process {self._owner_pid}; destroy the object there, or attach a "
                            f"handle of this process's own (pickle.loads(pickle.dumps(obj)))")
        ember_sync_destroy(self._p)
        self._p = NULL
        self._alloc.free()

    def __reduce__(self):
        self._check()
        return (_attach, (type(self), self._kind, self._alloc.sdesc, self._extra()))

    def _extra(self):
        return None

    def _restore(self, extra):
        pass


def _attach(cls, int kind, sdesc, extra):
    """Unpickle: attach the object named by an allocation descriptor."""
    cdef SyncObject obj = cls.__new__(cls)
    obj._setup(_PyAllocation.attach(sdesc), kind)
    obj._restore(extra)
    return obj


cdef object _owner_died(SyncObject self, uint32_t pid, bint released):
    if released:
        tail = ("the lock was released again, because a `with` block must not run on it: "
                "acquire() it, repair the state, call consistent(), then release()")
    else:
        tail = "repair it, call consistent(), then release()"
    return OwnerDied(f"{self._desc()}: acquired, but its previous holder (pid {pid}) died while "
                     f"holding it; the state it protects may be inconsistent: {tail}", pid)


cdef ember_rc_t _lock_wait(SyncObject self, int64_t tmo, uint32_t *died) except -1:
    """Blocking part of Lock/RLock acquire: slices with the GIL released."""
    cdef ember_rc_t rc
    cdef int64_t deadline, sl
    cdef void *p = self._p
    if tmo == 0:
        return ember_lock_acquire(p, 0, 1, died)
    deadline = _deadline(tmo)
    self._pool._busy += 1
    _slot_begin(self, EMBER_WAIT_ACQUIRE)
    try:
        while True:
            sl = _slice(deadline)
            if sl == 0:
                return ember_lock_acquire(p, 0, 1, died)
            with nogil:
                rc = ember_lock_acquire(p, sl, 1, died)
            if rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
                return rc
            PyErr_CheckSignals()
    finally:
        _ember_slot_wait_end()
        self._pool._busy -= 1


cdef class _LockBase(SyncObject):

    def acquire(self, block=True, timeout=None):
        """Acquire the lock; True, or False if ``timeout`` ran out (or the
        lock is busy and ``block`` is false).  Raises OwnerDied AFTER
        acquiring if a holder died while holding it: the caller holds the
        lock and should repair, call :meth:`consistent`, then release.

        Raises
        ------
        ember.OwnerDied
            A holder died holding the lock; the caller now holds it.
        TypeError
            ``timeout`` is not None or a number.
        ValueError
            ``timeout`` is NaN.
        ember.SyncError
            The lock was destroyed, or its memory failed validation.
        """
        cdef uint32_t died = 0
        cdef ember_rc_t rc
        cdef int64_t tmo = -1
        if self._p == NULL or self._pool._pool == NULL:
            self._check()
        if timeout is not None:
            tmo = _timeout_ns(timeout)          # bad input raises even when the lock is free
        rc = ember_lock_acquire(self._p, 0, 0, &died)
        if rc == EMBER_OK:
            return True
        if rc == EMBER_ERR_TIMEOUT and block:
            # A short spin with the GIL held first: cheaper than releasing
            # the GIL when the holder is about to release.
            rc = ember_lock_spin_acquire(self._p, _SPINS, &died)
            if rc == EMBER_OK:
                return True
        if rc == EMBER_ERR_TIMEOUT:
            rc = _lock_wait(self, tmo if block else 0, &died)
            if rc == EMBER_OK:
                return True
            if rc == EMBER_ERR_TIMEOUT:
                return False
        if rc == EMBER_SYNC_OWNER_DIED:
            raise _owner_died(self, died, False)
        self._rc(rc, "acquire")

    def release(self):
        """Release the lock (ReleaseError, also a ValueError and a
        RuntimeError, if it is not held / not held by this thread).

        Raises
        ------
        ember.ReleaseError
            The lock is not held (RLock: not by this thread).
        """
        cdef ember_rc_t rc
        if self._p == NULL or self._pool._pool == NULL:
            self._check()
        rc = ember_lock_release(self._p)
        if rc == EMBER_OK:
            return
        if rc == EMBER_SYNC_OVER:
            raise ReleaseError(f"{self._desc()}: release unlocked lock")
        if rc == EMBER_SYNC_NOT_OWNER:
            raise ReleaseError(f"{self._desc()}: cannot release un-acquired lock")
        self._rc(rc, "release")

    def consistent(self):
        """Mark the state protected by the lock repaired after OwnerDied
        (the caller must hold the lock)."""
        self._check()
        if ember_lock_consistent(self._p) != EMBER_OK:
            raise ReleaseError(f"{self._desc()}: consistent() needs the lock held by the caller")

    def locked(self):
        self._check()
        return bool(ember_lock_locked(self._p))

    def _state(self):
        """(holder pid or 0, recursion count, pid of an unrepaired dead
        holder or 0, deaths taken over so far) -- for tests and debugging."""
        cdef uint64_t holder = 0
        cdef uint32_t count = 0, died = 0, deaths = 0
        self._check()
        ember_lock_state(self._p, &holder, &count, &died, &deaths)
        return (<uint32_t>holder, count, died, deaths)

    def __enter__(self):
        cdef uint32_t died = 0
        cdef ember_rc_t rc = EMBER_ERR_TIMEOUT
        if self._p != NULL and self._pool._pool != NULL:
            rc = ember_lock_acquire(self._p, 0, 0, &died)     # the uncontended fast path
            if rc == EMBER_OK:
                return True
        if rc != EMBER_SYNC_OWNER_DIED:
            try:
                return self.acquire()
            except OwnerDied as e:
                died = e.pid
        # Acquired, but marked: a `with` block must not run on it, nor leave
        # it held when __enter__ raises.
        self.release()
        raise _owner_died(self, died, True)

    def __exit__(self, exc_type, exc, tb):
        if self._p != NULL and self._pool._pool != NULL and ember_lock_release(self._p) == EMBER_OK:
            return None
        self.release()

    def __repr__(self):
        if self.closed:
            return f"<ember.{type(self).__name__} closed>"
        holder, count, died, _ = self._state()
        extra = f", count={count}" if self._kind == EMBER_SYNC_RLOCK and holder else ""
        dead = f", owner_died={died}" if died else ""
        return (f"<ember.{type(self).__name__}(owner={holder or None}{extra}{dead}) "
                f"pool={self._pool._label!r} offset={self._alloc._a.offset}>")


@cython.final
cdef class Lock(_LockBase):
    """A non-recursive lock in pool memory (``multiprocessing.Lock``); any
    process may release it.  When its holder dies, the next acquire gets
    the lock and raises :class:`ember.OwnerDied`."""

    def __init__(self, *, pool=None):
        cdef Allocation a = _new_alloc(pool, EMBER_SYNC_LOCK, "Lock")
        ember_sync_init(ember_pool_ptr(a._owner._pool, a._a.offset), a._a.size, EMBER_SYNC_LOCK, 0, 0)
        self._setup(a, EMBER_SYNC_LOCK)


@cython.final
cdef class RLock(_LockBase):
    """A recursive lock in pool memory (``multiprocessing.RLock``): owned by
    one thread of one process, released as often as it was acquired."""

    def __init__(self, *, pool=None):
        cdef Allocation a = _new_alloc(pool, EMBER_SYNC_RLOCK, "RLock")
        ember_sync_init(ember_pool_ptr(a._owner._pool, a._a.offset), a._a.size, EMBER_SYNC_RLOCK, 0, 0)
        self._setup(a, EMBER_SYNC_RLOCK)

    def _is_owned(self):
        self._check()
        return bool(ember_rlock_is_mine(self._p))


cdef class Semaphore(SyncObject):
    """A semaphore in pool memory (``multiprocessing.Semaphore``).

    With ``reclaim=True`` (the default) the permits a process holds are
    tracked (up to SEM_SLOTS processes at once) and counted back when it
    dies.  Pass ``reclaim=False`` for a semaphore whose acquirers consume
    permits that others produce (a count of items), where a dead acquirer's
    permits must not come back."""

    def __init__(self, value=1, *, pool=None, reclaim=True):
        self._make(value, pool, 0 if reclaim else EMBER_SYNC_F_NORECLAIM)

    def _make(self, value, pool, uint32_t flags):
        cdef int64_t v
        cdef Allocation a
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{type(self).__name__}() value must be an int, got {type(value).__name__}")
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        if value > EMBER_SYNC_SEM_MAX:
            raise ValueError(f"semaphore initial value must be <= {EMBER_SYNC_SEM_MAX}, got {value}")
        v = value
        a = _new_alloc(pool, EMBER_SYNC_SEMAPHORE, type(self).__name__)
        ember_sync_init(ember_pool_ptr(a._owner._pool, a._a.offset), a._a.size,
                        EMBER_SYNC_SEMAPHORE, v, flags)
        self._setup(a, EMBER_SYNC_SEMAPHORE)

    def acquire(self, block=True, timeout=None):
        """Take one permit; True, or False if none came within ``timeout``.

        Raises
        ------
        TypeError
            ``timeout`` is not None or a number.
        ember.SyncError
            The semaphore was destroyed, or its memory failed validation.
        """
        cdef ember_rc_t rc
        cdef int64_t tmo, deadline, sl
        cdef void *p
        if self._p == NULL or self._pool._pool == NULL:
            self._check()
        p = self._p
        tmo = _timeout_ns(timeout) if timeout is not None else -1
        rc = ember_sem_acquire(p, 0)
        if rc == EMBER_OK:
            return True
        if not block:
            tmo = 0
        if rc == EMBER_ERR_TIMEOUT and tmo != 0:
            deadline = _deadline(tmo)
            self._pool._busy += 1
            _slot_begin(self, EMBER_WAIT_ACQUIRE)
            try:
                while True:
                    sl = _slice(deadline)
                    if sl == 0:
                        rc = ember_sem_acquire(p, 0)
                        break
                    with nogil:
                        rc = ember_sem_acquire(p, sl)
                    if rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
                        break
                    PyErr_CheckSignals()
            finally:
                _ember_slot_wait_end()
                self._pool._busy -= 1
        if rc == EMBER_OK:
            return True
        if rc == EMBER_ERR_TIMEOUT:
            return False
        self._rc(rc, "acquire")

    def release(self, n=1):
        """Return ``n`` permits (BoundedSemaphore: ReleaseError, also a
        ValueError, beyond the initial value).

        Raises
        ------
        ember.ReleaseError
            BoundedSemaphore: more permits than its initial value.
        TypeError
            ``n`` is not an int.
        ValueError
            ``n`` < 1.
        """
        cdef ember_rc_t rc
        if type(n) is not int or not (1 <= n <= 0xffffffff):
            if isinstance(n, bool) or not isinstance(n, int):
                raise TypeError(f"n must be an int, got {type(n).__name__}")
            if n < 1:
                raise ValueError("n must be one or more")
            if n > 0xffffffff:
                raise ValueError(f"n must be < 2**32, got {n}")
        if self._p == NULL or self._pool._pool == NULL:
            self._check()
        rc = ember_sem_release(self._p, <uint32_t>n)
        if rc == EMBER_OK:
            return
        if rc == EMBER_SYNC_OVER:
            raise ReleaseError(f"{self._desc()}: semaphore or lock released too many times")
        self._rc(rc, "release")

    def get_value(self):
        """The number of permits available now."""
        self._check()
        return ember_sem_value(self._p)

    def _reclaim(self):
        """Count back the permits of dead holders now; returns how many."""
        cdef uint64_t n = 0
        self._check()
        ember_sem_reclaim(self._p, &n)
        return n

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        if self.closed:
            return f"<ember.{type(self).__name__} closed>"
        cdef int64_t param = 0
        ember_sync_params(self._p, &param, NULL)
        if isinstance(self, BoundedSemaphore):
            return f"<ember.BoundedSemaphore(value={self.get_value()}, maxvalue={param})>"
        return f"<ember.Semaphore(value={self.get_value()})>"


cdef class BoundedSemaphore(Semaphore):
    """A semaphore whose value never exceeds its initial value
    (``multiprocessing.BoundedSemaphore``); a dead holder's permits are
    counted back."""

    def __init__(self, value=1, *, pool=None):
        self._make(value, pool, EMBER_SYNC_F_BOUNDED)


@cython.final
cdef class Event(SyncObject):
    """An event flag in pool memory (``multiprocessing.Event``)."""

    def __init__(self, *, pool=None):
        cdef Allocation a = _new_alloc(pool, EMBER_SYNC_EVENT, "Event")
        ember_sync_init(ember_pool_ptr(a._owner._pool, a._a.offset), a._a.size, EMBER_SYNC_EVENT, 0, 0)
        self._setup(a, EMBER_SYNC_EVENT)

    def is_set(self):
        if self._p == NULL or self._pool._pool == NULL:
            self._check()
        return bool(ember_event_is_set(self._p))

    def set(self):
        if self._p == NULL or self._pool._pool == NULL:
            self._check()
        ember_event_set(self._p)

    def clear(self):
        if self._p == NULL or self._pool._pool == NULL:
            self._check()
        ember_event_clear(self._p)

    def wait(self, timeout=None):
        """Block until the flag is set (True) or ``timeout`` runs out
        (False).  A set() followed at once by clear() still wakes it."""
        cdef ember_rc_t rc
        cdef int64_t tmo, deadline, sl
        cdef uint32_t token
        cdef void *p
        if self._p == NULL or self._pool._pool == NULL:
            self._check()
        p = self._p
        tmo = _timeout_ns(timeout)
        token = ember_event_token(p)
        if token & 1:
            return True
        if tmo == 0:
            return False
        deadline = _deadline(tmo)
        self._pool._busy += 1
        _slot_begin(self, EMBER_WAIT_SYNC)
        try:
            while True:
                sl = _slice(deadline)
                if sl == 0:
                    rc = ember_event_wait(p, token, 0)
                    break
                with nogil:
                    rc = ember_event_wait(p, token, sl)
                if rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
                    break
                PyErr_CheckSignals()
        finally:
            _ember_slot_wait_end()
            self._pool._busy -= 1
        return rc == EMBER_OK

    def __repr__(self):
        if self.closed:
            return "<ember.Event closed>"
        return f"<ember.Event({'set' if self.is_set() else 'unset'})>"


@cython.final
cdef class Barrier(SyncObject):
    """A barrier in pool memory with ``threading.Barrier`` semantics.

    A party that dies while waiting (or while running the action) breaks
    the barrier: the others get BrokenBarrierError instead of hanging."""
    cdef object _action
    cdef object _timeout

    def __init__(self, parties, action=None, timeout=None, *, pool=None):
        cdef Allocation a
        if isinstance(parties, bool) or not isinstance(parties, int):
            raise TypeError(f"parties must be an int, got {type(parties).__name__}")
        if parties < 1:
            raise ValueError("parties must be >= 1")
        if parties > EMBER_SYNC_BARRIER_MAX:
            raise ValueError(f"parties must be <= {EMBER_SYNC_BARRIER_MAX}, got {parties}")
        if action is not None and not callable(action):
            raise TypeError("action must be callable or None")
        if timeout is not None:
            _timeout_ns(timeout)
        a = _new_alloc(pool, EMBER_SYNC_BARRIER, "Barrier")
        ember_sync_init(ember_pool_ptr(a._owner._pool, a._a.offset), a._a.size,
                        EMBER_SYNC_BARRIER, parties, 0)
        self._setup(a, EMBER_SYNC_BARRIER)
        self._action = action
        self._timeout = timeout

    def _extra(self):
        return (self._action, self._timeout)

    def _restore(self, extra):
        self._action, self._timeout = extra

    cdef _broken(self, str why):
        return BrokenBarrierError(f"{self._desc()}: {why}")

    def wait(self, timeout=None):
        """Wait until all parties have arrived; returns this party's arrival
        index (0 .. parties-1).  BrokenBarrierError if the barrier is or
        becomes broken, and on timeout (which breaks it, as threading does).

        Raises
        ------
        ember.BrokenBarrierError
            The barrier is or becomes broken: a timeout, ``abort()``, a
            failed action, or a party that died while waiting (also a
            ``threading.BrokenBarrierError``).
        """
        cdef ember_rc_t rc
        cdef int64_t tmo, deadline, sl
        cdef uint32_t index = 0, slot = 0
        cdef void *p
        cdef bint ok
        self._check()
        p = self._p
        if timeout is None:
            timeout = self._timeout
        tmo = _timeout_ns(timeout)
        deadline = _deadline(tmo)
        self._pool._busy += 1
        try:
            # Arrive (waits only while the previous generation's action runs).
            while True:
                sl = _slice(deadline)
                with nogil:
                    rc = ember_barrier_arrive(p, sl, &index, &slot)
                if rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
                    break
                if sl == 0:
                    ember_barrier_abort(p)
                    raise self._broken("timed out waiting for the previous generation")
                PyErr_CheckSignals()
            if rc == EMBER_SYNC_BROKEN:
                raise self._broken("the barrier is broken")
            if rc == EMBER_ERR_FULL:
                raise SyncError(f"{self._desc()}: no free waiter slot "
                                f"({EMBER_SYNC_BARRIER_SLOTS} threads already inside wait())")
            if rc == EMBER_SYNC_LAST:
                ok = False
                try:
                    if self._action is not None:
                        self._action()
                    ok = True
                finally:
                    rc = ember_barrier_trip(p, slot, ok)
                if rc != EMBER_OK:
                    raise self._broken("the barrier was broken while the action ran")
                return index
            self._rc(rc, "wait")
            _slot_begin(self, EMBER_WAIT_SYNC)
            try:
                while True:
                    sl = _slice(deadline)
                    if sl == 0:
                        rc = ember_barrier_abandon(p, slot)
                        if rc == EMBER_OK:
                            return index
                        raise self._broken("timed out (the barrier is now broken)")
                    with nogil:
                        rc = ember_barrier_wait(p, slot, sl)
                    if rc == EMBER_OK:
                        return index
                    if rc == EMBER_SYNC_BROKEN:
                        raise self._broken("the barrier was broken (aborted, reset, timed out, "
                                           "or a party died) while waiting")
                    if rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
                        self._rc(rc, "wait")
                    PyErr_CheckSignals()
            except BaseException as e:
                if not isinstance(e, BrokenBarrierError):
                    ember_barrier_abandon(p, slot)      # e.g. KeyboardInterrupt: break it
                raise
            finally:
                _ember_slot_wait_end()
        finally:
            self._pool._busy -= 1

    def abort(self):
        """Break the barrier: current and future waiters get
        BrokenBarrierError until reset()."""
        self._check()
        ember_barrier_abort(self._p)

    def reset(self):
        """Return to the initial state; current waiters get BrokenBarrierError."""
        self._check()
        ember_barrier_reset(self._p)

    @property
    def parties(self):
        cdef uint32_t parties = 0
        self._check()
        ember_barrier_state(self._p, &parties, NULL, NULL)
        return parties

    @property
    def n_waiting(self):
        cdef uint32_t n = 0
        self._check()
        ember_barrier_state(self._p, NULL, &n, NULL)
        return n

    @property
    def broken(self):
        cdef int b = 0
        self._check()
        ember_barrier_state(self._p, NULL, NULL, &b)
        return bool(b)

    def __repr__(self):
        if self.closed:
            return "<ember.Barrier closed>"
        return (f"<ember.Barrier(parties={self.parties}, waiters={self.n_waiting}, "
                f"broken={self.broken})>")


class _CondCount:
    """One of :meth:`Condition._counts`, read by ``get_value()`` (the
    stdlib's Condition keeps it in a semaphore of that name)."""

    __slots__ = ("_cond", "_i", "_name")

    def __init__(self, cond, i, name):
        self._cond, self._i, self._name = cond, i, name

    def get_value(self):
        return self._cond._counts()[self._i]

    def __repr__(self):
        return f"<{self._name} of {self._cond!r}: {self.get_value()}>"


@cython.final
cdef class Condition(SyncObject):
    """A condition variable in pool memory (``multiprocessing.Condition``)
    over an ember Lock or RLock (a new RLock in the same pool by default).

    ``notify(n)`` wakes at most ``n`` waiters, oldest first; a waiter that
    died is skipped (it absorbs no notification).  Reacquiring the lock
    after a wait may raise OwnerDied (the lock's holder died): the caller
    then holds the lock, as after ``acquire()``."""
    cdef object _lock

    def __init__(self, lock=None, *, pool=None):
        cdef Allocation a
        if lock is None:
            lock = RLock(pool=pool)
        elif not isinstance(lock, _LockBase):
            raise TypeError(f"Condition() lock must be an ember Lock or RLock, got {type(lock).__name__}")
        if pool is None:
            pool = (<SyncObject>lock)._pool
        a = _new_alloc(pool, EMBER_SYNC_CONDITION, "Condition")
        ember_sync_init(ember_pool_ptr(a._owner._pool, a._a.offset), a._a.size, EMBER_SYNC_CONDITION, 0, 0)
        self._setup(a, EMBER_SYNC_CONDITION)
        self._lock = lock

    def _extra(self):
        return self._lock

    def _restore(self, extra):
        self._lock = extra

    @property
    def lock(self):
        return self._lock

    def acquire(self, block=True, timeout=None):
        return self._lock.acquire(block, timeout)

    def release(self):
        self._lock.release()

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)

    cdef int _owned_count(self, str what) except -1:
        """How many times the caller holds the lock (0: not held)."""
        lock = self._lock
        if isinstance(lock, RLock):
            if not lock._is_owned():
                return 0
            return lock._state()[1]
        return 1 if lock._state()[0] == os.getpid() else 0

    def wait(self, timeout=None):
        """Release the lock, wait for a notify (True) or the timeout (False),
        and reacquire the lock.

        Raises
        ------
        ember.ReleaseError
            The caller does not hold the lock.
        ember.OwnerDied
            Reacquiring: the lock's holder died holding it (the caller holds
            it now, as after ``Lock.acquire``).
        ember.SyncError
            No free waiter slot (too many threads waiting at once).
        """
        cdef uint32_t slot = 0
        cdef ember_rc_t rc
        cdef int64_t tmo, deadline, sl
        cdef int count, i
        cdef void *p
        self._check()
        p = self._p
        count = self._owned_count("wait")
        if count == 0:
            raise ReleaseError(f"{self._desc()}: cannot wait on un-acquired lock")
        tmo = _timeout_ns(timeout)
        rc = ember_cond_enter(p, &slot)
        if rc == EMBER_ERR_FULL:
            raise SyncError(f"{self._desc()}: no free waiter slot ({EMBER_SYNC_COND_SLOTS} threads "
                            f"already waiting)")
        self._rc(rc, "wait")
        for i in range(count):
            self._lock.release()
        notified = False
        deadline = _deadline(tmo)
        self._pool._busy += 1
        _slot_begin(self, EMBER_WAIT_SYNC)
        try:
            try:
                while True:
                    sl = _slice(deadline)
                    if sl == 0:
                        notified = ember_cond_leave(p, slot) == EMBER_OK
                        break
                    with nogil:
                        rc = ember_cond_wait(p, slot, sl)
                    if rc == EMBER_OK:
                        notified = True
                        break
                    if rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
                        ember_cond_leave(p, slot)
                        self._rc(rc, "wait")
                    PyErr_CheckSignals()
            except BaseException:
                ember_cond_leave(p, slot)
                raise
        finally:
            _ember_slot_wait_end()
            self._pool._busy -= 1
            died = None
            for i in range(count):
                try:
                    self._lock.acquire()
                except OwnerDied as e:
                    died = e
            if died is not None:
                raise died
        return notified

    def wait_for(self, predicate, timeout=None):
        """Wait until ``predicate()`` is true (as threading.Condition.wait_for)."""
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = _time.monotonic() + waittime
                else:
                    waittime = endtime - _time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n=1):
        """Wake at most ``n`` waiters (the caller must hold the lock)."""
        cdef uint32_t woken = 0
        self._check()
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if self._owned_count("notify") == 0:
            raise ReleaseError(f"{self._desc()}: cannot notify on un-acquired lock")
        if n <= 0:
            return
        ember_cond_notify(self._p, <uint32_t>min(n, 0xffffffff), &woken)

    def notify_all(self):
        self.notify(0xffffffff)

    def _n_waiting(self):
        self._check()
        return ember_cond_waiting(self._p)

    def _counts(self):
        """``(begun, ended, notified)``: the waits begun on this condition
        ever, those of them that ended (returned, or their process died),
        and the notified waits that have not returned yet, at one moment."""
        cdef uint64_t begun = 0
        cdef uint32_t waiting = 0, notified = 0
        self._check()
        ember_cond_counts(self._p, &begun, &waiting, &notified)
        return begun, begun - waiting - notified, notified

    # The stdlib Condition's semaphores, by name, as read-only counts
    # (get_value only) with the same meaning, for code that inspects them
    # (CPython's suite): the waits that began, the waits that ended, the
    # wake-ups given and not yet taken.
    @property
    def _sleeping_count(self):
        return _CondCount(self, 0, "_sleeping_count")

    @property
    def _woken_count(self):
        return _CondCount(self, 1, "_woken_count")

    @property
    def _wait_semaphore(self):
        return _CondCount(self, 2, "_wait_semaphore")

    def __repr__(self):
        if self.closed:
            return "<ember.Condition closed>"
        return f"<ember.Condition({self._lock!r}, waiters={self._n_waiting()})>"
include "_pooldict.pxi"
