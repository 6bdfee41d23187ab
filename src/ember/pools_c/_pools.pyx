# cython: language_level=3
"""Cython binding of ember's shared-memory pools (private module; import
from :mod:`ember.pools_c`).

The C library (pool.c) does all the work; this module converts arguments,
owns each C object in one ``cdef class`` with a fixed life cycle, and maps
return codes to exceptions from :mod:`ember.exceptions` in one place
(:func:`check_rc`).
"""
cimport cython
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.exc cimport PyErr_CheckSignals
from cpython.pycapsule cimport PyCapsule_New
from posix.unistd cimport getpid
from libc.errno cimport errno
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport strlen

import collections
from ember._env import owner_tag as _owner_tag
import os
import time
import warnings
import weakref

from ember import _rc
from ember.exceptions import DescriptorError, PoolError, PoolExhausted

__all__ = ["Pool", "Allocation", "PoolStats", "clear_attach_cache", "set_lock_bound", "lock_bound"]

PoolStats = collections.namedtuple("PoolStats", "total free largest_free live_allocs committed")
PoolStats.__doc__ = """Immutable snapshot of a pool's allocator.

- ``total``: bytes in the heap (segment minus the header page);
- ``free``: bytes in free blocks (headers included), counting pages not yet
  committed only as far as /dev/shm has room for them right now;
- ``largest_free``: the largest ``nbytes`` one ``alloc`` can get right now
  (same cap);
- ``live_allocs``: number of allocated blocks (by any process);
- ``committed``: bytes of the segment already backed by pages (fallocate).
"""

_SHM_DIR = "/dev/shm"
_MAX_SIZE = 1 << 47

# Blocking waits run in slices of this length so Ctrl-C is seen promptly.
cdef int64_t _SLICE_NS = 50_000_000

# Every open Pool of this process by shm name (explicit ones: weak refs) and
# the pools that Allocation.attach attached on its own (strong refs; kept
# until clear_attach_cache() or process exit, so repeated attaches are cheap).
_open_pools = weakref.WeakValueDictionary()
_implicit_pools = {}

# pool.c is compiled into this extension only; the others call it through
# this table of function pointers (common_c/pool_api.h).
cdef extern from "pool_api.h":
    const void *ember_pool_api_table()

_C_API = PyCapsule_New(<void *>ember_pool_api_table(), b"ember.pools_c._pools._C_API", NULL)


cdef int check_rc(ember_rc_t rc, str what, Pool pool=None) except -1:
    """Raise the exception for ``rc`` (nothing for EMBER_OK), from the one
    map of every extension (:mod:`ember._rc`).

    The message is ``"<pool>: <what>: <explanation> [<rc name>]"``.
    """
    cdef int err = errno
    if rc == EMBER_OK:
        return 0
    prefix = pool._desc() + ": " if pool is not None else ""
    raise _rc.error(rc, prefix + what, err)


def _raise_rc(int rc, str what):
    """Raise what this extension raises for ``rc`` (tests: one map everywhere)."""
    check_rc(<ember_rc_t>rc, what)


def _rc_name(int rc):
    """ember_rc_str(rc) of the C core (tests: ember._rc.NAMES mirrors the enum)."""
    return ember_rc_str(rc).decode()


cdef str _decode(const char *s):
    return s[:strlen(s)].decode("utf-8", "replace")


cdef extern from "slots.h" nogil:
    void ember_slots_after_clone()


def _after_raw_clone():
    """In a child made by a raw clone() (ember.shepherd.template's spares:
    no pthread_atfork handler ran): refresh the pid cached by pool.c (the
    owner that allocations record) and reset slots.c's binding, as their
    fork handlers would."""
    ember_pool_after_clone()
    ember_slots_after_clone()

# A raw clone's child runs Python's fork hooks (PyOS_AfterFork_Child), not
# pthread_atfork's; an ordinary fork runs both (this refresh is idempotent).
os.register_at_fork(after_in_child=_after_raw_clone)


def set_lock_bound(seconds):
    """Set how long (seconds, > 0) one live process may hold a pool's mutex
    before the processes waiting for it give up with
    ``PoolError("... pool mutex held by pid N for more than X s ...")``.
    Process-wide; the default is 10 s.  ``None`` restores the default."""
    if seconds is None:
        ember_pool_set_lock_bound(0)
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"lock bound must be a number of seconds or None, not {type(seconds).__name__}")
    if not 0 < seconds < 1e9:
        raise ValueError(f"lock bound must be > 0 and < 1e9 seconds, got {seconds}")
    ember_pool_set_lock_bound(max(1, <int64_t>(seconds * 1e9)))


def lock_bound():
    """The current lock bound in seconds (see :func:`set_lock_bound`)."""
    return ember_pool_lock_bound() / 1e9


cdef _tid_pid(uint32_t tid):
    """The pid (thread group) of thread ``tid``, or None if it does not exist."""
    try:
        with open(f"/proc/{tid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _shm_free():
    """Free bytes of the file system behind POSIX shared memory."""
    st = os.statvfs(_SHM_DIR)
    return st.f_bavail * st.f_frsize


@cython.final
cdef class Pool:
    """A shared-memory pool: a POSIX shm segment with an allocator that many
    processes use at once.

    Made only by :meth:`create` and :meth:`attach`.  Used as a context
    manager, a pool made by ``create()`` is **destroyed** on exit (segment
    unlinked), an attached one is **detached**.  Any use after
    ``detach()``/``destroy()`` raises :class:`~ember.exceptions.PoolError`.
    A pool collected while still attached warns ``ResourceWarning`` and
    unmaps (the segment itself stays until destroyed).

    A handle belongs to the process that made it.  A copy inherited through
    ``fork()`` may be used and detached in the child (that unmaps the
    child's mapping only) but not destroyed: ``destroy()`` raises
    PoolError; leaving a ``with`` block detaches it instead of destroying;
    it is collected without a ResourceWarning.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Pool cannot be instantiated directly; use Pool.create() or Pool.attach()")

    def __dealloc__(self):
        if self._pool != NULL:
            # an inherited copy in a fork()ed child: unmap quietly; one
            # whose runtime was left (_leave) too
            if not self._implicit and not self._left and getpid() == self._owner_pid:
                try:
                    warnings.warn(f"unclosed ember Pool {self._shm_name} (m_uid 0x{self._m_uid:016x})",
                                  ResourceWarning)
                except Exception:
                    pass
            ember_pool_detach(self._pool)
            self._pool = NULL

    @staticmethod
    cdef Pool _wrap(ember_pool_t *p, bint created, bint implicit):
        cdef Pool self = Pool.__new__(Pool)
        self._pool = p
        self._created = created
        self._implicit = implicit
        self._left = False
        self._owner_pid = getpid()
        self._exports = 0
        self._busy = 0
        self._shm_name = _decode(ember_pool_shm_name(p))
        label = _decode(ember_pool_label(p))
        self._label = label if label else None
        self._m_uid = ember_pool_m_uid(p)
        self._size = ember_pool_size(p)
        if implicit:
            _implicit_pools[self._shm_name] = self
        else:
            _open_pools[self._shm_name] = self
        return self

    @staticmethod
    def create(size, name=None, m_uid=None, owner_tag=None, commit="lazy"):
        """Create a new pool of ``size`` bytes (rounded up to a page).

        Parameters
        ----------
        size : int
            Segment size in bytes; the heap is the segment minus one page.
        name : str, optional
            A label kept in the pool header (truncated to 47 bytes).
        m_uid : int, optional
            The pool's unique id (default: random 63-bit).
        owner_tag : str, optional
            ``[A-Za-z0-9_-]{1,24}`` put in the segment name
            ``/ember.<owner_tag>.<m_uid hex>.<random hex>`` (default
            ``p<pid>``, plus ``-<EMBER_SEGMENT_TAG>`` when that is set; see
            ember._env).
        commit : {"lazy", "full"}
            ``"lazy"`` (default): pages of /dev/shm are committed as the heap
            is handed out; when /dev/shm is full an alloc raises
            PoolExhausted.  ``"full"``: the whole segment is committed now
            (PoolError if /dev/shm cannot hold it); such a pool never runs
            out of pages later.

        Returns
        -------
        Pool

        Raises
        ------
        PoolError
            ``size`` is larger than the free space of /dev/shm (checked
            first, so the message names both numbers).
        ValueError
            size above 2**47 bytes, a bad owner_tag or commit.
        """
        cdef ember_pool_t *p = NULL
        cdef ember_rc_t rc
        cdef uint64_t c_size, c_uid
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"pool size must be an int, not {type(size).__name__}")
        if size < 1:
            raise ValueError(f"pool size must be at least 1 byte, got {size}")
        if name is not None:
            if not isinstance(name, str):
                raise TypeError(f"pool name must be a str or None, not {type(name).__name__}")
            if "\0" in name:
                raise ValueError(f"pool name must not contain NUL characters, got {name!r}")
        if m_uid is None:
            m_uid = (int.from_bytes(os.urandom(8), "little") >> 1) or 1
        if not 0 <= m_uid < 2 ** 64:
            raise ValueError(f"m_uid must be in [0, 2**64), got {m_uid}")
        free = _shm_free()
        if size > free:        # (pool.c checks again, race-free, at create)
            raise PoolError(f"cannot create a pool of {size} bytes: {_SHM_DIR} has only {free} bytes free")
        if size > _MAX_SIZE:
            raise ValueError(f"cannot create a pool of {size} bytes: the largest pool is "
                             f"{_MAX_SIZE} bytes (128 TiB)")
        if commit not in ("lazy", "full"):
            raise ValueError(f"commit must be 'lazy' or 'full', got {commit!r}")
        if owner_tag is None:
            owner_tag = _owner_tag("p")
        if not isinstance(owner_tag, str):
            raise TypeError(f"owner_tag must be a str, not {type(owner_tag).__name__}")
        c_size = size
        c_uid = m_uid
        cdef unsigned flags = EMBER_POOL_COMMIT_FULL if commit == "full" else 0
        btag = owner_tag.encode()
        blabel = name.encode() if name is not None else None
        cdef const char *ctag = btag
        cdef const char *clabel = <const char *>blabel if blabel is not None else NULL
        with nogil:      # a full commit writes the whole segment's pages
            rc = ember_pool_create_ex(c_size, c_uid, ctag, clabel, flags, &p)
        if rc != EMBER_OK:
            err = errno
            if rc == EMBER_ERR_OS and err == 28:     # ENOSPC
                raise PoolError(f"cannot create a pool of {size} bytes: {_SHM_DIR} has only "
                                f"{_shm_free()} bytes free")
            if rc == EMBER_ERR_INVALID_ARG:
                raise ValueError(f"owner_tag must match [A-Za-z0-9_-]{{1,24}}, got {owner_tag!r}")
            check_rc(rc, f"cannot create a pool of {size} bytes (name {name!r})")
        return Pool._wrap(p, True, False)

    @staticmethod
    def attach(sdesc):
        """Attach to an existing pool from its serialized descriptor (bytes).

        Raises DescriptorError for a truncated, corrupt or foreign
        descriptor, PoolError if the pool no longer exists.
        """
        cdef ember_pool_t *p = NULL
        cdef const uint8_t[::1] d = _as_bytes(sdesc)
        cdef ember_rc_t rc = ember_pool_attach(&d[0] if d.shape[0] else NULL, d.shape[0], &p)
        if rc != EMBER_OK:
            check_rc(rc, f"cannot attach pool {_sdesc_name(sdesc)}")
        return Pool._wrap(p, False, False)

    cdef str _desc(self):
        if self._label:
            return f"pool {self._label!r} (m_uid 0x{self._m_uid:016x})"
        return f"pool {self._shm_name!r} (m_uid 0x{self._m_uid:016x})"

    cdef int _check_open(self) except -1:
        if self._pool == NULL:
            raise PoolError(f"{self._desc()} is detached or destroyed")
        return 0

    cdef int _lock_error(self, ember_rc_t rc, str what) except -1:
        """Raise for a mutex that could not be taken (EMBER_ERR_LOCK_STUCK)
        naming its holder; any other rc goes to check_rc."""
        cdef uint32_t tid
        if rc != EMBER_ERR_LOCK_STUCK:
            return check_rc(rc, what, self)
        tid = ember_pool_lock_owner(self._pool)
        bound = f"{ember_pool_lock_bound() / 1e9:g}"
        if tid == 0:
            raise PoolError(f"{self._desc()}: {what}: pool mutex held for more than {bound} s "
                            f"[EMBER_ERR_LOCK_STUCK]")
        pid = _tid_pid(tid)
        if pid is None:
            raise _rc.EXC[EMBER_ERR_CORRUPT](f"{self._desc()}: {what}: pool corrupt: its mutex names "
                                             f"thread {tid} as holder, which does not exist "
                                             f"[EMBER_ERR_CORRUPT]")
        raise PoolError(f"{self._desc()}: {what}: pool mutex held by pid {pid} for more than "
                        f"{bound} s [EMBER_ERR_LOCK_STUCK]")

    cdef int _check_closable(self, str what) except -1:
        self._check_open()
        if self._exports:
            raise PoolError(f"{self._desc()}: cannot {what}: {self._exports} memoryview(s) of its "
                            f"allocations are still exported; release them first")
        if self._busy:
            raise PoolError(f"{self._desc()}: cannot {what}: another thread is waiting in alloc()")
        return 0

    cdef _forget(self):
        if self._implicit:
            _implicit_pools.pop(self._shm_name, None)
        elif _open_pools.get(self._shm_name) is self:
            del _open_pools[self._shm_name]

    def detach(self):
        """Unmap the pool from this process (the segment stays)."""
        self._check_closable("detach")
        cdef ember_pool_t *p = self._pool
        self._pool = NULL
        self._forget()
        check_rc(ember_pool_detach(p), "cannot detach", self)

    def _leave(self):
        """This process leaves the pool's runtime (``ember.shutdown()``, at
        exit too): :meth:`detach`, or, while memoryviews of its allocations
        are exported (an ``mp.Value`` a program still holds) or a thread
        waits in ``alloc()``, which keep it mapped, mark it left: it and
        the handles into it (channels) are then collected without a
        ``ResourceWarning``, as they are once it is detached (the program
        cannot close them any more than it could then)."""
        if self._pool == NULL:
            return
        if self._exports or self._busy:
            self._left = True
            return
        self.detach()

    def _unmap_in_fork_child(self):
        """Unmap the pool now, whatever still points into it (channel
        handles, a waiter of a thread that does not exist in this process):
        for a forked child that must not keep a pool of its parent's (the
        ``.py`` head, a fork of the shepherd, and the private control pool).
        Nothing of this process may use those handles afterwards."""
        cdef ember_pool_t *p = self._pool
        if p == NULL:
            return
        self._pool = NULL
        self._forget()
        check_rc(ember_pool_detach(p), "cannot detach", self)

    def destroy(self):
        """Unlink the segment, then detach.  Processes still attached keep
        their mapping until they detach; new attaches fail.  Only in the
        process that made this handle (not in a fork()ed child)."""
        self._check_closable("destroy")
        if getpid() != self._owner_pid:
            raise PoolError(f"{self._desc()}: cannot destroy: this handle was inherited through fork() "
                            f"from process {self._owner_pid}; destroy the pool there, or attach a "
                            f"handle of this process's own (Pool.attach(pool.sdesc))")
        cdef ember_pool_t *p = self._pool
        self._pool = NULL
        self._forget()
        check_rc(ember_pool_destroy(p), "cannot destroy", self)

    @property
    def closed(self):
        """True once detached or destroyed."""
        return self._pool == NULL

    @property
    def sdesc(self):
        """The serialized pool descriptor (bytes) for :meth:`attach`."""
        cdef uint8_t buf[EMBER_POOL_SDESC_SIZE]
        cdef size_t n = 0
        self._check_open()
        check_rc(ember_pool_serialize(self._pool, buf, sizeof(buf), &n), "cannot serialize", self)
        return buf[:n]

    @property
    def m_uid(self):
        self._check_open()
        return self._m_uid

    @property
    def size(self):
        """Segment size in bytes (header page included)."""
        self._check_open()
        return self._size

    @property
    def name(self):
        """The label given at create (None if none)."""
        self._check_open()
        return self._label

    @property
    def shm_name(self):
        """The POSIX shm name, ``/ember.<owner_tag>.<m_uid hex>``."""
        self._check_open()
        return self._shm_name

    def stats(self):
        """A :class:`PoolStats` snapshot (total, free, largest_free,
        live_allocs, committed)."""
        cdef ember_pool_stats_t st
        cdef ember_rc_t rc
        self._check_open()
        self._busy += 1
        try:
            with nogil:
                rc = ember_pool_stats(self._pool, &st)
        finally:
            self._busy -= 1
        if rc != EMBER_OK:
            self._lock_error(rc, "cannot read stats")
        return PoolStats(st.total, st.free, st.largest_free, st.live_allocs, st.committed)

    def alloc(self, Py_ssize_t nbytes, timeout=0):
        """Allocate ``nbytes`` (>= 1) bytes, 64-byte aligned.

        Parameters
        ----------
        nbytes : int
        timeout : float or None
            0 (default): try once; > 0: wait up to that many seconds for a
            free; None: wait forever.  Waits release the GIL and check for
            signals every 50 ms.

        Raises
        ------
        PoolExhausted
            No free block is large enough (within the timeout).
        """
        cdef ember_alloc_t a
        cdef ember_rc_t rc
        cdef uint64_t n
        cdef int64_t slice_ns
        cdef double deadline = 0.0, left
        if self._pool == NULL:
            self._check_open()
        if nbytes < 1:
            raise ValueError(f"nbytes must be at least 1, got {nbytes}")
        n = <uint64_t>nbytes
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
            if not timeout >= 0:       # also rejects NaN
                raise ValueError(f"timeout must be None or >= 0, got {timeout}")
            if timeout == float("inf"):
                timeout = None
        if timeout == 0:
            # try once; only a busy mutex is waited for, without the GIL
            rc = ember_pool_alloc_ex(self._pool, n, 0, EMBER_ALLOC_OWNED | EMBER_ALLOC_NO_FREE_WAIT, &a)
            if rc == EMBER_ERR_TIMEOUT:
                self._busy += 1
                try:
                    while rc == EMBER_ERR_TIMEOUT:
                        with nogil:
                            rc = ember_pool_alloc_ex(self._pool, n, _SLICE_NS,
                                                     EMBER_ALLOC_OWNED | EMBER_ALLOC_NO_FREE_WAIT, &a)
                        if rc == EMBER_ERR_TIMEOUT:
                            PyErr_CheckSignals()
                finally:
                    self._busy -= 1
        else:
            if timeout is not None:
                deadline = time.monotonic() + timeout
            self._busy += 1
            try:
                while True:
                    slice_ns = _SLICE_NS
                    if timeout is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            rc = ember_pool_alloc_ex(self._pool, n, 0,
                                                     EMBER_ALLOC_OWNED | EMBER_ALLOC_NO_FREE_WAIT, &a)
                            if rc == EMBER_ERR_EXHAUSTED:
                                rc = EMBER_ERR_TIMEOUT
                            break
                        if left * 1e9 < slice_ns:
                            slice_ns = <int64_t>(left * 1e9) + 1
                    with nogil:
                        rc = ember_pool_alloc_ex(self._pool, n, slice_ns, EMBER_ALLOC_OWNED, &a)
                    if rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
                        break
                    PyErr_CheckSignals()
            finally:
                self._busy -= 1
        if rc != EMBER_OK:
            self._alloc_error(rc, nbytes, timeout)
        al = allocation_from_c(self, a)
        al._owned = True
        return al

    cdef _alloc_error(self, ember_rc_t rc, Py_ssize_t nbytes, timeout):
        cdef ember_pool_stats_t st
        cdef ember_rc_t src
        cdef uint32_t tid
        if rc == EMBER_ERR_EXHAUSTED or rc == EMBER_ERR_TIMEOUT:
            within = "" if rc == EMBER_ERR_EXHAUSTED else f" within {timeout} s"
            src = ember_pool_stats_ex(self._pool, &st, 0)
            if src == EMBER_ERR_TIMEOUT:
                tid = ember_pool_lock_owner(self._pool)
                pid = _tid_pid(tid) if tid else None
                raise PoolExhausted(f"{self._desc()}: cannot allocate {nbytes} bytes{within}: "
                                    f"the pool mutex is held by pid {pid}")
            if src != EMBER_OK:
                self._lock_error(src, "cannot read stats")
            raise PoolExhausted(f"{self._desc()}: cannot allocate {nbytes} bytes{within}: "
                                f"largest free block is {st.largest_free} bytes")
        self._lock_error(rc, f"cannot allocate {nbytes} bytes")

    def _validate(self):
        """Check every allocator invariant (walks the heap); PoolError if not."""
        cdef ember_rc_t rc
        self._check_open()
        self._busy += 1
        try:
            with nogil:
                rc = ember_pool_validate(self._pool)
        finally:
            self._busy -= 1
        if rc != EMBER_OK:
            self._lock_error(rc, "validation failed")

    def _repair_count(self):
        """How often a process found the lock's owner dead and repaired."""
        cdef uint64_t n
        self._check_open()
        self._busy += 1
        try:
            with nogil:
                n = ember_pool_repair_count(self._pool)
        finally:
            self._busy -= 1
        return n

    def _debug_lock(self):
        """Take the pool's mutex and keep it (tests: a stuck holder)."""
        cdef ember_rc_t rc
        self._check_open()
        with nogil:
            rc = ember_pool_debug_lock(self._pool)
        if rc != EMBER_OK:
            self._lock_error(rc, "cannot lock")

    def _debug_unlock(self):
        """Release the mutex taken by :meth:`_debug_lock` (same thread)."""
        self._check_open()
        check_rc(ember_pool_debug_unlock(self._pool), "cannot unlock", self)

    def reclaim(self, pid):
        """Free every allocation that process ``pid`` made with
        :meth:`alloc` and still owned when it died (an allocation stops
        being owned when it is handed over: sent on a channel, serialized
        with ``sdesc`` or pickled).  Safe while other processes use the pool.

        Returns ``(blocks, bytes)`` given back (bytes include block headers).
        Raises PoolError if ``pid`` is still alive (a zombie counts as alive:
        reap it first).
        """
        cdef ember_rc_t rc
        cdef uint64_t nb = 0, nbytes = 0
        cdef uint32_t cpid
        self._check_open()
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, not {type(pid).__name__}")
        if not 0 < pid < 2 ** 31:
            raise ValueError(f"pid must be in [1, 2**31), got {pid}")
        alive = True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
        if alive:
            raise PoolError(f"{self._desc()}: cannot reclaim the allocations of pid {pid}: "
                            f"the process is alive")
        cpid = pid
        self._busy += 1
        try:
            with nogil:
                rc = ember_pool_reclaim(self._pool, cpid, &nb, &nbytes)
        finally:
            self._busy -= 1
        if rc != EMBER_OK:
            self._lock_error(rc, f"cannot reclaim the allocations of pid {pid}")
        return (nb, nbytes)

    def _live_allocations(self):
        """Owning Allocation objects for every live block, in offset order
        (any process's: for tests and reclaiming blocks of dead processes)."""
        cdef uint64_t cursor = 0
        cdef ember_alloc_t a
        cdef ember_rc_t rc
        self._check_open()
        out = []
        while True:
            self._busy += 1
            try:
                with nogil:
                    rc = ember_pool_next_alloc(self._pool, &cursor, &a)
            finally:
                self._busy -= 1
            if rc == EMBER_ERR_EMPTY:
                return out
            if rc != EMBER_OK:
                self._lock_error(rc, "cannot walk the heap")
            out.append(allocation_from_c(self, a))

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        if self._pool != NULL:
            if self._created and getpid() == self._owner_pid:
                self.destroy()
            else:
                self.detach()

    def __reduce__(self):
        return (Pool.attach, (self.sdesc,))

    def __repr__(self):
        state = "closed" if self._pool == NULL else f"size={self._size}"
        return f"<ember Pool {self._shm_name} name={self._label!r} m_uid=0x{self._m_uid:016x} {state}>"


cdef const uint8_t[::1] _as_bytes(obj):
    if isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        if len(b) == 0:
            raise DescriptorError("descriptor is empty")
        return b
    raise TypeError(f"descriptor must be bytes, not {type(obj).__name__}")


cdef str _sdesc_name(sdesc):
    cdef char buf[EMBER_POOL_NAME_MAX]
    cdef const uint8_t[::1] d = _as_bytes(sdesc)
    if ember_pool_sdesc_name(&d[0], d.shape[0], buf, sizeof(buf)) == EMBER_OK:
        return _decode(buf)
    return "(unknown)"


cdef Allocation allocation_from_c(Pool owner, ember_alloc_t a):
    """Wrap a checked ``ember_alloc_t`` of ``owner`` in an owning Allocation."""
    cdef Allocation self = Allocation.__new__(Allocation)
    self._a = a
    self._owner = owner
    self._state = 0
    self._exports = 0
    self._owned = False
    return self


@cython.final
@cython.freelist(64)
@cython.no_gc_clear
cdef class Allocation:
    """A block of a pool: ``memoryview(a)`` is a writable, zero-copy view of
    exactly ``a.size`` bytes.

    Made only by :meth:`Pool.alloc` and :meth:`attach`.  As a context
    manager it frees the block on exit (if still held).  An Allocation that
    is garbage-collected without ``free()`` leaves the block allocated (it may
    have been handed to another process by its descriptor).  Any use after
    ``free()`` raises PoolError; ``free()`` is refused while memoryviews are
    exported.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Allocation cannot be instantiated directly; use Pool.alloc() or Allocation.attach()")

    @staticmethod
    def attach(sdesc):
        """The allocation named by a serialized allocation descriptor.

        Attaches its pool if this process has not (kept in a per-process
        cache).  DescriptorError if the descriptor is bad or names a block
        that is no longer this allocation (freed, reallocated).
        """
        cdef const uint8_t[::1] d = _as_bytes(sdesc)
        cdef const uint8_t *psd = NULL
        cdef size_t psd_len = 0
        cdef ember_alloc_t a
        cdef ember_pool_t *p = NULL
        cdef ember_rc_t rc
        cdef Pool pool
        rc = ember_alloc_parse(&d[0], d.shape[0], &psd, &psd_len, &a)
        if rc != EMBER_OK:
            check_rc(rc, "cannot attach allocation")
        pool = _pool_for_sdesc(psd[:psd_len],
                               f"of allocation at offset {a.offset} (id {a.id})")
        pool._busy += 1
        try:
            with nogil:
                rc = ember_pool_check(pool._pool, &a)
        finally:
            pool._busy -= 1
        if rc != EMBER_OK:
            if rc in (EMBER_ERR_OUT_OF_RANGE, EMBER_ERR_DOUBLE_FREE, EMBER_ERR_STALE):
                raise DescriptorError(f"{pool._desc()}: cannot attach allocation at offset {a.offset} "
                                      f"(id {a.id}): {_rc.TEXT[rc]} [{ember_rc_str(rc).decode()}]")
            pool._lock_error(rc, f"cannot attach allocation at offset {a.offset} (id {a.id})")
        return allocation_from_c(pool, a)

    cdef str _what(self):
        return f"allocation at offset {self._a.offset} (id {self._a.id}, {self._a.size} bytes)"

    cdef int _check_open(self, str what) except -1:
        if self._state == 1:
            raise PoolError(f"{self._owner._desc()}: cannot {what}: {self._what()} was freed")
        if self._state == 2:
            raise PoolError(f"{self._owner._desc()}: cannot {what}: {self._what()} was handed over")
        if self._state == 3:
            raise PoolError(f"{self._owner._desc()}: cannot {what}: {self._what()} is being sent "
                            f"on a channel by another thread")
        if self._owner._pool == NULL:
            raise PoolError(f"{self._owner._desc()}: cannot {what}: {self._what()}: "
                            f"the pool is detached or destroyed")
        return 0

    def free(self):
        """Return the block to the pool."""
        cdef ember_rc_t rc
        cdef Pool pool = self._owner
        if self._state != 0 or pool._pool == NULL:
            self._check_open("free")
        if self._exports:
            raise PoolError(f"{pool._desc()}: cannot free {self._what()}: "
                            f"{self._exports} memoryview(s) still exported; release them first")
        rc = ember_pool_free_ex(pool._pool, &self._a, 0)
        if rc == EMBER_ERR_TIMEOUT:
            # the mutex is busy: wait for it without the GIL, in slices
            self._state = 1            # other threads: already freed
            pool._busy += 1
            try:
                while rc == EMBER_ERR_TIMEOUT:
                    with nogil:
                        rc = ember_pool_free_ex(pool._pool, &self._a, _SLICE_NS)
                    if rc == EMBER_ERR_TIMEOUT:
                        PyErr_CheckSignals()
            except BaseException:
                self._state = 0
                raise
            finally:
                pool._busy -= 1
        if rc == EMBER_ERR_LOCK_STUCK or rc == EMBER_ERR_CORRUPT:
            self._state = 0            # not freed: the caller may try again
            pool._lock_error(rc, f"cannot free {self._what()}")
        self._state = 1
        if rc != EMBER_OK:
            check_rc(rc, f"cannot free {self._what()}", pool)

    cdef int _unown(self) except -1:
        """Record in the pool that no process owns the block any more (it is
        being handed over): :meth:`Pool.reclaim` will not free it."""
        cdef ember_rc_t rc
        cdef Pool pool = self._owner
        if not self._owned:
            return 0
        pool._busy += 1
        try:
            with nogil:
                rc = ember_pool_set_owner(pool._pool, &self._a, 0)
        finally:
            pool._busy -= 1
        if rc != EMBER_OK:
            pool._lock_error(rc, f"cannot hand over {self._what()}")
        self._owned = False
        return 0

    cpdef _disown(self):
        """Stop owning the block without freeing it (it was handed over, e.g.
        to a channel).  Every later use of this object raises PoolError."""
        self._check_open("hand over")
        if self._exports:
            raise PoolError(f"{self._owner._desc()}: cannot hand over {self._what()}: "
                            f"{self._exports} memoryview(s) still exported; release them first")
        self._unown()
        self._state = 2

    @property
    def closed(self):
        """True once freed or handed over."""
        return self._state != 0

    @property
    def sdesc(self):
        """The serialized allocation descriptor (bytes) for :meth:`attach`."""
        cdef uint8_t buf[EMBER_ALLOC_SDESC_SIZE]
        cdef size_t n = 0
        self._check_open("serialize")
        self._unown()                  # a descriptor may reach another process
        check_rc(ember_alloc_serialize(self._owner._pool, &self._a, buf, sizeof(buf), &n),
                 f"cannot serialize {self._what()}", self._owner)
        return buf[:n]

    @property
    def size(self):
        return self._a.size

    @property
    def offset(self):
        """Payload offset from the segment base."""
        return self._a.offset

    @property
    def id(self):
        return self._a.id

    @property
    def pool(self):
        return self._owner

    def __len__(self):
        return self._a.size

    def __getbuffer__(self, Py_buffer *view, int flags):
        self._check_open("export a buffer")
        cdef void *ptr = ember_pool_ptr(self._owner._pool, self._a.offset)
        PyBuffer_FillInfo(view, self, ptr, <Py_ssize_t>self._a.size, 0, flags)
        self._exports += 1
        self._owner._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._exports -= 1
        self._owner._exports -= 1

    def __enter__(self):
        self._check_open("enter")
        return self

    def __exit__(self, *exc):
        if self._state == 0 and self._owner._pool != NULL:
            self.free()

    def __reduce__(self):
        return (Allocation.attach, (self.sdesc,))

    def __repr__(self):
        state = {0: "", 1: " freed", 2: " handed over"}[self._state]
        return (f"<ember Allocation offset={self._a.offset} size={self._a.size} id={self._a.id} "
                f"of {self._owner._shm_name}{state}>")


def _pool_for_sdesc(pool_sdesc, str what=""):
    """The open Pool of this process for a pool descriptor: an explicit
    handle if one is open, else one from the per-process cache of implicit
    attaches (attached now if needed; kept until :func:`clear_attach_cache`,
    no ResourceWarning).  Allocation.attach, Channel.attach and the sync
    objects' attach all get their pool here."""
    cdef ember_pool_t *p = NULL
    cdef ember_rc_t rc
    cdef const uint8_t[::1] d = _as_bytes(pool_sdesc)
    name = _sdesc_name(pool_sdesc)
    cdef Pool pool = _open_pools.get(name) or _implicit_pools.get(name)
    if pool is not None and pool._pool != NULL and \
            pool._m_uid == int.from_bytes(pool_sdesc[8:16], "little"):
        return pool
    rc = ember_pool_attach(&d[0] if d.shape[0] else NULL, d.shape[0], &p)
    if rc != EMBER_OK:
        check_rc(rc, f"cannot attach pool {name}" + (" " + what if what else ""))
    return Pool._wrap(p, False, True)


def clear_attach_cache():
    """Detach the pools that :meth:`Allocation.attach` attached implicitly
    (skipping any with exported buffers).  Their Allocation objects then
    raise PoolError."""
    for name, pool in list(_implicit_pools.items()):
        if (<Pool>pool)._exports == 0 and (<Pool>pool)._busy == 0:
            pool.detach()


def _alloc_where(sdesc):
    """``(m_uid of its pool, offset)`` of an allocation descriptor, read
    without attaching anything (``ember ps`` matches what a process is
    blocked on, recorded as pool and offset, with the objects of GS's
    registry).  DescriptorError if ``sdesc`` is not one."""
    cdef const uint8_t[::1] d = _as_bytes(sdesc)
    cdef const uint8_t *psd = NULL
    cdef size_t psd_len = 0
    cdef ember_alloc_t a
    cdef ember_rc_t rc = ember_alloc_parse(&d[0] if d.shape[0] else NULL, d.shape[0], &psd,
                                           &psd_len, &a)
    if rc != EMBER_OK or psd_len < 16:
        check_rc(rc if rc != EMBER_OK else EMBER_ERR_INVALID_ARG, "not an allocation descriptor")
    return int.from_bytes(psd[8:16], "little"), a.offset
