# cython: language_level=3, boundscheck=False, wraparound=False
"""Cython binding of ember's shared-memory channels (channel.h).

The C library does the hot loop; this module converts arguments, maps return
codes to exceptions (:func:`_check_rc`) and waits in bounded slices with the
GIL released so that signals (Ctrl-C) are handled within 100 ms.
"""
cimport cython
from cpython.buffer cimport (PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_FillInfo, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from cpython.unicode cimport PyUnicode_DecodeUTF8

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object u, Py_ssize_t *size) except NULL
    unsigned long PyThread_get_thread_ident()
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.errno cimport errno
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from ember.pools_c._pools cimport (
    Allocation, Pool, ember_alloc_t, ember_pool_t, ember_pool_alloc_wait, ember_pool_attach, ember_pool_free,
    ember_pool_ptr, ember_pool_sdesc_name, ember_pool_serialize, ember_pool_stats, ember_pool_stats_t, ember_rc_str,
    ember_rc_t, EMBER_OK, EMBER_ERR_INVALID_ARG, EMBER_ERR_NOMEM, EMBER_ERR_OS,
    EMBER_ERR_NOT_FOUND, EMBER_ERR_BAD_DESCRIPTOR, EMBER_ERR_BAD_MAGIC, EMBER_ERR_VERSION,
    EMBER_ERR_OUT_OF_RANGE, EMBER_ERR_EXHAUSTED, EMBER_ERR_DOUBLE_FREE, EMBER_ERR_STALE,
    EMBER_ERR_CORRUPT, EMBER_ERR_FULL, EMBER_ERR_EMPTY, EMBER_ERR_TIMEOUT, EMBER_ERR_TOO_BIG,
    EMBER_ERR_DESTROYED, EMBER_ERR_INTERRUPTED, EMBER_ERR_BUFFER_TOO_SMALL, EMBER_POOL_NAME_MAX,
    EMBER_POOL_SDESC_SIZE,
)

from cpython.pycapsule cimport PyCapsule_Import
from posix.unistd cimport getpid
import os
import warnings
from collections import namedtuple

from ember.exceptions import (ChannelClosed, ChannelEmpty, ChannelError, ChannelFull,
                              DescriptorError, PoolExhausted)
from ember.pools_c import _pools as _pools_mod
from ember import _rc

# The pool functions come from ember.pools_c._pools (pool.c is compiled
# there only), through the table it exports (common_c/pool_api.h).
cdef extern from "pool_api.h":
    ember_rc_t ember_pool_api_set(const void *table)

cdef extern from "pool.h":
    ember_rc_t ember_pool_take_owner(ember_pool_t *pool, const ember_alloc_t *a, uint32_t src,
                                     uint32_t dst) nogil
    unsigned EMBER_ALLOC_OWNED

if ember_pool_api_set(PyCapsule_Import(b"ember.pools_c._pools._C_API", 0)) != EMBER_OK:
    raise ImportError("ember.pools_c._pools exports a pool API of another build of ember; reinstall it")

__all__ = ["Channel", "ChannelStatistics", "wait_any", "DEFAULT_CAPACITY", "DEFAULT_BLOCK_SIZE"]


# (collections, not typing.NamedTuple: no typing import at start-up)
ChannelStatistics = namedtuple("ChannelStatistics", "depth capacity closed")
ChannelStatistics.__doc__ = """A snapshot of a channel (:meth:`Channel.statistics`), immutable:
``depth`` (messages queued; in-flight sends and receives may count either way),
``capacity`` (slots), ``closed`` (close() was called; queued messages may
still be received)."""
ChannelStatistics.__module__ = "ember.channels_c"

DEFAULT_CAPACITY = EMBER_CH_DEFAULT_CAPACITY
DEFAULT_BLOCK_SIZE = EMBER_CH_DEFAULT_BLOCK
cdef object _DEFAULT_BS = DEFAULT_BLOCK_SIZE

# Blocking calls wait in slices of at most this long, then check signals.
cdef int64_t _SLICE_NS = 50_000_000

cdef int _check_rc(ember_rc_t rc, str what) except -1:
    """Raise the exception for ``rc`` (nothing for EMBER_OK), from the one
    map of every extension (:mod:`ember._rc`).

    The message is ``"<what>: <explanation> [<rc name>]"``.
    """
    cdef int err = errno
    if rc == EMBER_OK:
        return 0
    raise _rc.error(rc, what, err)


def _raise_rc(int rc, str what):
    """Raise what this extension raises for ``rc`` (tests: one map everywhere)."""
    _check_rc(<ember_rc_t>rc, what)


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef int64_t _timeout_ns(timeout) except -2:
    """None -> -1 (forever), 0 -> 0 (try once), t > 0 seconds -> ns."""
    if timeout is None:
        return -1
    try:
        t = float(timeout)
    except (TypeError, ValueError):
        raise TypeError(f"timeout must be None or a number of seconds, got {type(timeout).__name__}")
    if not t >= 0:
        raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout!r}")
    if t > 1e9:
        return -1
    cdef int64_t ns = <int64_t>(t * 1e9)
    if ns == 0 and t > 0:
        ns = 1
    return ns


cdef inline int64_t _slice(int64_t deadline) noexcept nogil:
    """Length of the next wait slice, 0 when the deadline has passed
    (deadline < 0: forever)."""
    cdef int64_t left
    if deadline < 0:
        return _SLICE_NS
    left = deadline - _now_ns()
    if left <= 0:
        return 0
    return left if left < _SLICE_NS else _SLICE_NS


cdef str _sdesc_pool_name(const uint8_t *psd, size_t plen):
    cdef char buf[EMBER_POOL_NAME_MAX]
    if ember_pool_sdesc_name(psd, plen, buf, sizeof(buf)) != EMBER_OK:
        return None
    return buf.decode("utf-8", "replace")


cdef Pool _pool_for(bytes pool_sdesc, str name):
    """The Pool of this process for the channel's pool: asked of pools_c (its
    open handles and its per-process attach cache), never a table of ours."""
    return _pools_mod._pool_for_sdesc(pool_sdesc)


cdef extern from *:
    """
    static int ember_set_by_descr(PyObject *descr, PyObject *obj, PyObject *v)
    {
        return Py_TYPE(descr)->tp_descr_set(descr, obj, v);
    }
    static PyObject *ember_alloc_instance(PyObject *cls)
    {
        return ((PyTypeObject *)cls)->tp_alloc((PyTypeObject *)cls, 0);
    }
    #include <structmember.h>
    /* The offset of a writable object slot (a __slots__ member) in its
     * instances, or -1 if descr is not such a member descriptor. */
    static Py_ssize_t ember_slot_offset(PyObject *descr)
    {
        if (!PyObject_TypeCheck(descr, &PyMemberDescr_Type))
            return -1;
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX || (m->flags & READONLY) || m->offset <= 0)
            return -1;
        return m->offset;
    }
    /* A slot's value stored as its member descriptor would (the old one,
     * if any, released), without the call. */
    static void ember_slot_set(PyObject *obj, Py_ssize_t off, PyObject *v)
    {
        PyObject **p = (PyObject **)((char *)obj + off);
        PyObject *old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
    }
    /* Whether a slot holds False. */
    static int ember_slot_is_false(PyObject *obj, Py_ssize_t off)
    {
        return *(PyObject **)((char *)obj + off) == Py_False;
    }
    """
    int _set_by_descr "ember_set_by_descr" (object descr, object obj, object v) except -1
    object _alloc_instance "ember_alloc_instance" (object cls)
    Py_ssize_t _slot_offset "ember_slot_offset" (object descr)
    void _slot_set "ember_slot_set" (object obj, Py_ssize_t off, object v)
    bint _slot_is_false "ember_slot_is_false" (object obj, Py_ssize_t off)

# The join wake board's record decoded into a ChannelDescriptor (its class
# passed to Channel._recv_reply): the member descriptors of its slots, in
# _DESC_FIELDS' order, when setting them is all an attribute set does
# (the class's __setattr__ is object's), else None.
_DESC_FIELDS = ("m_uid", "c_uid", "name", "node", "capacity", "block_size", "ref_count",
                "sdesc")
cdef object _desc_cls = None
cdef object _desc_set = None
# ... and their slots' offsets in an instance (_desc_direct: all eight known)
cdef Py_ssize_t _desc_off[8]
cdef bint _desc_direct = False


cdef _desc_prepare(cls):
    global _desc_cls, _desc_set, _desc_direct
    found = None
    _desc_direct = False
    if isinstance(cls, type) and cls.__setattr__ is object.__setattr__ and \
            cls.__new__ is object.__new__:
        found = tuple(getattr(cls, f, None) for f in _DESC_FIELDS)
        if any(type(d).__name__ != "member_descriptor" or d.__objclass__ is not cls
               for d in found):
            found = None
    cdef int i
    if found is not None:
        _desc_direct = True
        for i in range(8):
            _desc_off[i] = _slot_offset((<tuple>found)[i])
            if _desc_off[i] < 0:
                _desc_direct = False
    _desc_cls, _desc_set = cls, found


@cython.final
cdef class _MessageBlock:
    """A received large message: a pool allocation owned by this object,
    exported as a buffer and freed when the object goes away (the last view
    released or garbage collected) or on :meth:`release`."""
    cdef Pool _owner
    cdef ember_alloc_t _a
    cdef Py_ssize_t _exports
    cdef bint _freed
    #: the pid the block was handed to (``_hand``, or at its receipt:
    #: ``_recv_auto``'s ``own``), 0 when nobody's
    cdef readonly uint32_t _mine

    def __init__(self, *args, **kwargs):
        raise TypeError("_MessageBlock cannot be instantiated directly; use Channel.recv_view()")

    def __dealloc__(self):
        self._free()

    cdef _free(self):
        if not self._freed and self._owner is not None and self._owner._pool != NULL:
            ember_pool_free(self._owner._pool, &self._a)
        self._freed = True

    def __getbuffer__(self, Py_buffer *view, int flags):
        if self._freed or self._owner._pool == NULL:
            raise ChannelError("the received message was released (or its pool detached)")
        PyBuffer_FillInfo(view, self, ember_pool_ptr(self._owner._pool, self._a.offset),
                          <Py_ssize_t>self._a.size, 0, flags)
        self._exports += 1
        self._owner._exports += 1

    def __releasebuffer__(self, Py_buffer *view):
        self._exports -= 1
        self._owner._exports -= 1

    def __len__(self):
        return <Py_ssize_t>self._a.size

    def _hand(self, from_pid, to_pid):
        """Hand the block from owner ``from_pid`` to ``to_pid`` (0: nobody,
        as a received block is) in one step under the pool's mutex
        (``ember_pool_take_owner``): a block its receiver owns is freed by
        ``Pool.reclaim`` if the receiver dies holding it (GS reclaims a dead
        process's blocks).  False, changing nothing, if ``from_pid`` does
        not own it or it was released."""
        cdef uint32_t src = from_pid, dst = to_pid
        cdef ember_rc_t rc
        if self._freed or self._owner is None or self._owner._pool == NULL:
            return False
        with nogil:
            rc = ember_pool_take_owner(self._owner._pool, &self._a, src, dst)
        if rc == EMBER_OK:
            self._mine = dst
        return rc == EMBER_OK


cdef object _view_of_alloc(Pool owner, ember_alloc_t a):
    cdef _MessageBlock blk = _MessageBlock.__new__(_MessageBlock)
    blk._owner = owner
    blk._a = a
    blk._exports = 0
    blk._freed = False
    blk._mine = 0
    return memoryview(blk)


cdef object _own_view(Pool owner, ember_alloc_t a, uint32_t mine):
    """:func:`_view_of_alloc` of a block handed to ``mine`` already."""
    out = _view_of_alloc(owner, a)
    (<_MessageBlock>out.obj)._mine = mine
    return out



# The join wake board's record (wakeboard.h) in a reply channel's message:
# its fixed fields, decoded by _wb_record for Channel._recv_reply and
# Channel._recv_join.
cdef struct _WbRecord:
    uint64_t tag, c_uid
    int64_t m_uid, node
    uint32_t nl, cap, bs, rc, sl       # name length; capacity, block, ref count, sdesc length


cdef inline bint _wb_record(const ember_ch_msg_t *m, _WbRecord *r) noexcept nogil:
    """Whether ``m`` is a board's record (inline, its mark, its length with
    the name's); if so its fixed fields in ``r`` (``sl`` at most
    EMBER_CH_SDESC_SIZE)."""
    cdef const uint8_t *d = <const uint8_t *>m.data
    if m.is_alloc or m.len < EMBER_WB_REPLY_NAME or d[0] != EMBER_WB_REPLY_MARK:
        return False
    memcpy(&r.nl, d + 4, 4)
    if m.len != EMBER_WB_REPLY_NAME + r.nl:
        return False
    memcpy(&r.tag, d + 8, 8)
    memcpy(&r.m_uid, d + 16, 8)
    memcpy(&r.node, d + 24, 8)
    memcpy(&r.c_uid, d + 32, 8)
    memcpy(&r.cap, d + 40, 4)
    memcpy(&r.bs, d + 44, 4)
    memcpy(&r.rc, d + 48, 4)
    memcpy(&r.sl, d + 52, 4)
    if r.sl > EMBER_CH_SDESC_SIZE:
        r.sl = EMBER_CH_SDESC_SIZE
    return True


@cython.final
cdef class Channel:
    """A bounded MPMC message channel in a shared-memory pool.

    Made only by :meth:`create` and :meth:`attach`.  Used as a context
    manager, a channel made by ``create()`` is destroyed on exit, an attached
    one detached.  Use after :meth:`detach` / :meth:`destroy` raises
    :class:`~ember.exceptions.ChannelError`; a Channel collected while still
    attached warns ``ResourceWarning``.

    A handle belongs to the process that made it.  A copy inherited through
    ``fork()`` may be used, closed and detached in the child but not
    destroyed: ``destroy()`` raises ChannelError; leaving a ``with`` block
    detaches it instead; it is collected without a ResourceWarning.

    Timeouts: ``None`` waits forever, ``0`` tries once, ``t > 0`` waits at
    most ``t`` seconds.  Waits release the GIL and check for signals at least
    every 50 ms.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Channel cannot be instantiated directly; use Channel.create() or Channel.attach()")

    def __dealloc__(self):
        if self._ch != NULL:
            # No source=self: the object is being freed (tp_dealloc), a
            # reference kept by a warnings filter would dangle.  An inherited
            # copy in a fork()ed child is let go quietly, and so is a handle
            # whose pool was detached under it (ember.shutdown(): nothing of
            # the pool is held any more, only the handle's own memory), or
            # left mapped at that for what is still exported of it (Pool._leave).
            if getpid() == self._owner_pid and (self._pool is None or (
                    self._pool._pool != NULL and not self._pool._left)):
                try:
                    warnings.warn(f"unclosed ember Channel (c_uid {self._c_uid})", ResourceWarning)
                except Exception:
                    pass
            ember_ch_detach(self._ch)
            self._ch = NULL

    @staticmethod
    cdef Channel _wrap(ember_ch_t *ch, Pool pool, bint created):
        cdef Channel self = Channel.__new__(Channel)
        self._ch = ch
        self._pool = pool
        self._created = created
        self._owner_pid = getpid()
        self._payload = ember_ch_payload_size(ch)
        self._c_uid = ember_ch_c_uid(ch)
        self._capacity = ember_ch_capacity(ch)
        self._block_size = ember_ch_block_size(ch)
        return self

    @staticmethod
    def create(pool, capacity=DEFAULT_CAPACITY, block_size=DEFAULT_BLOCK_SIZE, c_uid=None,
               owned=False):
        """Create a channel in ``pool``.

        Parameters
        ----------
        pool : ember.pools_c.Pool
        capacity : int
            Number of slots, a power of two (1 .. 2**24).
        block_size : int
            Bytes per slot, a multiple of 64 (64 .. 16 MiB); messages up to
            ``block_size - 16`` bytes travel inline, larger ones through a
            pool allocation.
        c_uid : int or None
            The channel's unique id (random when None).
        owned : bool
            Record this process as the owner of the channel's block: if it
            dies before the block is handed over (``_take_owner``, the
            node's shepherd does it when global services registers the
            channel), reclaiming its blocks frees the channel.
        """
        if not isinstance(pool, Pool):
            raise TypeError(f"pool must be an ember.pools_c.Pool, got {type(pool).__name__}")
        cdef Pool p = pool
        p._check_open()
        if not isinstance(capacity, int) or isinstance(capacity, bool):
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}")
        if not isinstance(block_size, int) or isinstance(block_size, bool):
            raise TypeError(f"block_size must be an int, got {type(block_size).__name__}")
        if capacity < 1 or capacity > EMBER_CH_MAX_CAPACITY or capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two between 1 and {EMBER_CH_MAX_CAPACITY}, "
                             f"got {capacity}")
        if block_size < EMBER_CH_MIN_BLOCK or block_size > EMBER_CH_MAX_BLOCK or block_size % 64:
            raise ValueError(f"block_size must be a multiple of 64 between {EMBER_CH_MIN_BLOCK} and "
                             f"{EMBER_CH_MAX_BLOCK}, got {block_size}")
        if c_uid is None:
            c_uid = int.from_bytes(os.urandom(8), "little") >> 1   # (no random module at start-up)
        elif not isinstance(c_uid, int) or c_uid < 0 or c_uid >= 1 << 64:
            raise ValueError(f"c_uid must be an int in [0, 2**64), got {c_uid!r}")
        cdef ember_ch_t *ch = NULL
        cdef ember_rc_t rc = ember_ch_create_ex(p._pool, c_uid, capacity, block_size,
                                                EMBER_ALLOC_OWNED if owned else 0, &ch)
        if rc != EMBER_OK:
            _check_rc(rc, f"cannot create a channel of {capacity} x {block_size} B "
                          f"({320 + capacity * block_size} bytes) in {p._desc()}")
        return Channel._wrap(ch, p, True)

    @staticmethod
    def describe(sdesc):
        """The fields of a channel descriptor, checked (length, magic,
        version, checksum, sizes) but attaching nothing: ``(pool_sdesc,
        offset, alloc_id, size, c_uid, capacity, block_size)``.
        DescriptorError if it is not a well-formed channel descriptor."""
        if not isinstance(sdesc, bytes):
            raise TypeError(f"sdesc must be bytes, got {type(sdesc).__name__}")
        cdef const uint8_t *psd = NULL
        cdef size_t plen = 0
        cdef ember_ch_sdesc_info_t info
        cdef const char *b = PyBytes_AS_STRING(sdesc)
        cdef size_t n = PyBytes_GET_SIZE(sdesc)
        cdef ember_rc_t rc = ember_ch_sdesc_pool(b, n, &psd, &plen)
        if rc == EMBER_OK:
            rc = ember_ch_sdesc_info(b, n, &info)
        if rc != EMBER_OK:
            _check_rc(rc, "not a channel descriptor")
        return (PyBytes_FromStringAndSize(<const char *>psd, plen), info.offset, info.id,
                info.size, info.c_uid, info.capacity, info.block_size)

    @staticmethod
    def attach(sdesc):
        """Attach a channel from its serialized descriptor (bytes-like).

        Attaches its pool if this process has not (kept in the pools
        binding's per-process cache).  DescriptorError for a truncated,
        corrupt or foreign descriptor; ChannelError if the channel was
        destroyed.

        Given a :class:`~ember.descriptors.ChannelDescriptor` (what
        ``channel.create`` and ``channel.join`` return) of a channel on
        another node, returns a handle with the same API whose sends and
        receives go through that node's transport agent
        (``ember.transport.remote.RemoteChannel``, docs/multinode.md).
        """
        if hasattr(sdesc, "c_uid") and hasattr(sdesc, "node"):
            from ember.transport import attach_descriptor
            return attach_descriptor(sdesc)
        cdef const uint8_t[::1] d
        try:
            d = memoryview(sdesc).cast("B")
        except TypeError:
            raise TypeError(f"sdesc must be bytes-like, got {type(sdesc).__name__}") from None
        cdef const uint8_t *psd = NULL
        cdef size_t plen = 0
        cdef size_t n = d.shape[0]
        cdef ember_rc_t rc = EMBER_ERR_BAD_DESCRIPTOR
        if n:
            rc = ember_ch_sdesc_pool(&d[0], n, &psd, &plen)
        if rc != EMBER_OK:
            _check_rc(rc, f"cannot attach channel from a {n}-byte descriptor")
        pool_sdesc = psd[:plen]
        name = _sdesc_pool_name(psd, plen)
        if name is None:
            raise DescriptorError("cannot attach channel: the embedded pool descriptor is corrupt "
                                  "[EMBER_ERR_BAD_DESCRIPTOR]")
        cdef Pool pool = _pool_for(pool_sdesc, name)
        cdef ember_ch_t *ch = NULL
        rc = ember_ch_attach(pool._pool, &d[0], n, &ch)
        if rc != EMBER_OK:
            c_uid = int.from_bytes(bytes(d[120:128]), "little")
            _check_rc(rc, f"cannot attach channel c_uid {c_uid} in {pool._desc()}")
        return Channel._wrap(ch, pool, False)

    cdef str _desc(self):
        return f"channel c_uid {self._c_uid}"

    cdef int _check_open(self, str what) except -1:
        if self._ch == NULL:
            raise ChannelError(f"{self._desc()}: cannot {what}: the channel is detached or destroyed")
        if self._pool._pool == NULL:
            raise ChannelError(f"{self._desc()}: cannot {what}: its pool is detached or destroyed")
        return 0

    # ---- life cycle ----
    cdef int _check_idle(self, str what) except -1:
        self._check_open(what)
        if self._busy:
            raise ChannelError(f"{self._desc()}: cannot {what}: {self._busy} call(s) of other threads "
                               f"are blocked in it; wake or stop them first")
        return 0

    def detach(self):
        """Forget this process's handle; the channel stays for others.
        Also once its pool was detached (the runtime left): only the
        handle's own memory is freed then, nothing of the pool touched."""
        if self._ch == NULL or self._pool._pool != NULL:
            self._check_idle("detach")     # (its pool detached: nothing to wait for)
        if self._direct is not None:       # its route to this process ends (the senders resend)
            d, self._direct = self._direct, None
            d.release(self)
        ember_ch_detach(self._ch)
        self._ch = NULL

    def destroy(self):
        """Destroy the channel: processes still attached get ChannelError on
        their next blocking call; queued large messages are freed.  Only in
        the process that made this handle (not in a fork()ed child)."""
        self._check_idle("destroy")
        if getpid() != self._owner_pid:
            raise ChannelError(f"{self._desc()}: cannot destroy: this handle was inherited through fork() "
                               f"from process {self._owner_pid}; destroy the channel there, or attach a "
                               f"handle of this process's own (Channel.attach(channel.sdesc))")
        cdef ember_ch_t *ch = self._ch
        self._ch = NULL
        _check_rc(ember_ch_destroy(ch), f"cannot destroy {self._desc()}")

    def _destroy_last(self):
        """:meth:`destroy` by the channel's last user: every other process
        that used it is dead and this one has no call on it in flight (a
        Process's parent once its child has exited).  The block is freed
        even if a process was killed inside its hand-over window, which
        :meth:`destroy` leaves allocated (channel.c, HAND-OVER)."""
        self._check_idle("destroy")
        if getpid() != self._owner_pid:
            raise ChannelError(f"{self._desc()}: cannot destroy: this handle was inherited through fork() "
                               f"from process {self._owner_pid}")
        cdef ember_ch_t *ch = self._ch
        self._ch = NULL
        _check_rc(ember_ch_destroy_last(ch), f"cannot destroy {self._desc()}")

    def _take_owner(self, from_pid, to_pid=0):
        """Hand the channel's block from owner ``from_pid`` to ``to_pid``
        (0: nobody, never reclaimed) in one step under the pool's mutex.

        Raises
        ------
        ChannelError
            ``from_pid`` does not own the block: ``[EMBER_ERR_STALE]`` (it
            was handed over meanwhile, or was never that process's; or the
            block was reclaimed and allocated again), ``[EMBER_ERR_DOUBLE_FREE]``
            (the block was reclaimed: the channel is gone).  Nothing changed.
        ChannelError
            This handle was detached or destroyed.
        ValueError
            A pid is not an int in [0, 2**32).
        CoreError
            The pool's shared state is corrupt (``ember._rc``: the same
            code, the same class everywhere)."""
        self._check_open("take over")
        if not isinstance(from_pid, int) or not isinstance(to_pid, int) or \
                not 0 <= from_pid < 1 << 32 or not 0 <= to_pid < 1 << 32:
            raise ValueError(f"pids must be ints in [0, 2**32), got {from_pid!r}, {to_pid!r}")
        cdef uint32_t src = from_pid, dst = to_pid
        cdef ember_pool_t *pool = self._pool._pool
        cdef const ember_alloc_t *a = ember_ch_alloc(self._ch)
        cdef ember_rc_t rc
        with nogil:
            rc = ember_pool_take_owner(pool, a, src, dst)
        if rc in (EMBER_ERR_STALE, EMBER_ERR_DOUBLE_FREE, EMBER_ERR_OUT_OF_RANGE):
            # the pool's words ("the block was freed and allocated again")
            # would mislead: what matters here is who owns the block
            raise ChannelError(f"{self._desc()}: cannot hand its block from pid {from_pid} "
                               f"to {to_pid}: pid {from_pid} does not own it (handed over "
                               f"or reclaimed meanwhile, or never its) "
                               f"[{ember_rc_str(rc).decode()}]")
        if rc != EMBER_OK:
            _check_rc(rc, f"{self._desc()}: cannot hand its block from pid {from_pid} to {to_pid}")

    def close(self):
        """Close the channel (for every process): later sends raise
        :class:`~ember.exceptions.ChannelClosed`; receivers get the messages
        sent before, then ``ChannelClosed`` (an ``EOFError``) instead of
        waiting.  Blocked senders, receivers and :func:`wait_any` calls wake
        up.  Idempotent.  The handle stays attached (``detach()`` /
        ``destroy()`` as before)."""
        self._check_open("close")
        _check_rc(ember_ch_close(self._ch), f"cannot close {self._desc()}")

    @property
    def closed(self):
        """True once the channel was closed (by :meth:`close` in any
        process; queued messages may still be received), or once this
        handle was detached or destroyed."""
        if self._ch == NULL or self._pool._pool == NULL:
            return True
        return ember_ch_is_closed(self._ch) != 0

    def statistics(self):
        """A :class:`ChannelStatistics` snapshot: ``depth`` (messages
        queued), ``capacity``, ``closed``."""
        self._check_open("get statistics")
        return ChannelStatistics(ember_ch_count(self._ch), self._capacity,
                                 ember_ch_is_closed(self._ch) != 0)

    def __enter__(self):
        self._check_open("enter")
        return self

    def __exit__(self, *exc):
        if self._ch != NULL and self._pool._pool != NULL:
            if self._created and getpid() == self._owner_pid:
                self.destroy()
            else:
                self.detach()

    def __reduce__(self):
        return (Channel.attach, (self.sdesc,))

    def __repr__(self):
        if self._ch == NULL or self._pool._pool == NULL:
            state = " detached"
        else:
            state = f" queued={ember_ch_count(self._ch)}" + (" closed" if ember_ch_is_closed(self._ch) else "")
        return (f"<ember Channel c_uid={self._c_uid} capacity={self._capacity} "
                f"block_size={self._block_size}{state}>")

    # ---- identity ----
    @property
    def sdesc(self):
        """The serialized descriptor (bytes) for :meth:`attach`."""
        self._check_open("serialize")
        cdef uint8_t buf[EMBER_CH_SDESC_SIZE]
        cdef size_t n = 0
        _check_rc(ember_ch_serialize(self._ch, buf, sizeof(buf), &n), f"cannot serialize {self._desc()}")
        return buf[:n]

    @property
    def capacity(self):
        return self._capacity

    @property
    def block_size(self):
        return self._block_size

    @property
    def payload_size(self):
        """Largest message carried inline (block_size - 16)."""
        return self._payload

    @property
    def c_uid(self):
        return self._c_uid

    @property
    def pool(self):
        return self._pool

    def __len__(self):
        self._check_open("count")
        return ember_ch_count(self._ch)

    def set_spin(self, double seconds, bint adaptive=True):
        """Longest spin before a blocked call of this handle sleeps (default
        20 us).  Adaptive (the default): a spin that does not pay off is
        halved, down to 1/8 of ``seconds``, and grows back when it does.
        ``adaptive=False`` keeps it fixed: use it for request/reply channels,
        where the answer comes within a known time."""
        self._check_open("tune")
        cdef int64_t ns = <int64_t>(seconds * 1e9)
        if adaptive:
            ember_ch_set_spin(self._ch, ns)
        else:
            ember_ch_set_spin_range(self._ch, ns, ns)

    # ---- send ----
    def send(self, data, timeout=None):
        """Send ``data``: any bytes-like object (copied), or an
        :class:`ember.pools_c.Allocation` of this channel's pool (moved
        without copying: the Allocation object is closed afterwards).

        Raises ChannelFull when no slot became free within ``timeout``.

        Raises
        ------
        ember.ChannelFull
            No slot became free within ``timeout`` (a ``TimeoutError``).
        ember.ChannelClosed
            The channel was closed (:meth:`close`).
        ember.PoolExhausted
            A large message found no room in the pool.
        ember.ChannelError
            The channel was destroyed, or its memory failed validation.
        """
        cdef ember_ch_t *ch = self._ch
        cdef ember_rc_t rc
        cdef Py_ssize_t n
        if ch == NULL or self._pool._pool == NULL:
            self._check_open("send")
        if timeout is not None:
            _timeout_ns(timeout)
        if type(data) is bytes:
            n = PyBytes_GET_SIZE(data)
            if <uint64_t>n <= self._payload:
                rc = ember_ch_send(ch, PyBytes_AS_STRING(data), <uint64_t>n, 0)
                if rc == EMBER_OK:
                    return
                if rc != EMBER_ERR_FULL or timeout == 0:
                    self._send_error(rc, n, timeout)
                self._send_wait(PyBytes_AS_STRING(data), n, _timeout_ns(timeout))
                return
        if isinstance(data, Allocation):
            self._send_allocation(<Allocation>data, timeout)
            return
        cdef Py_buffer view
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except (TypeError, BufferError):
            raise TypeError(f"send() needs a bytes-like object or an Allocation, got {type(data).__name__}") from None
        try:
            if <uint64_t>view.len <= self._payload:
                rc = ember_ch_send(ch, view.buf, <uint64_t>view.len, 0)
                if rc == EMBER_OK:
                    return
                if rc != EMBER_ERR_FULL or timeout == 0:
                    self._send_error(rc, view.len, timeout)
            self._send_wait(<const char *>view.buf, view.len, _timeout_ns(timeout))
        finally:
            PyBuffer_Release(&view)

    def send_nowait(self, data):
        """``send(data, timeout=0)``: raises ChannelFull instead of waiting."""
        self.send(data, 0)

    def _send_framed(self, buffer, Py_ssize_t offset=0):
        """The transport agent's batch send (:mod:`ember.transport.agent`):
        ``buffer`` holds messages as (4-byte little-endian length, bytes)...;
        send them from ``offset`` on without waiting, until the end or until
        the channel (or its pool, for a large one) has no room right now.
        One call for a whole batch: no Python object per message.

        Returns ``(offset reached, messages sent, bytes sent)``; the offset
        is ``len(buffer)`` when everything went in.  Raises as :meth:`send`
        does for anything but "no room" (closed, destroyed, too big; the
        messages before it are in the channel), ValueError for a truncated
        batch (nothing after its last whole message is sent)."""
        cdef ember_ch_t *ch = self._ch
        if ch == NULL or self._pool._pool == NULL:
            self._check_open("send")
        cdef Py_buffer view
        PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE)
        cdef const uint8_t *p = <const uint8_t *>view.buf
        cdef Py_ssize_t n = view.len
        cdef Py_ssize_t o = offset
        cdef Py_ssize_t count = 0
        cdef Py_ssize_t nbytes = 0
        cdef uint64_t k = 0
        cdef ember_rc_t rc = EMBER_OK
        try:
            if o < 0 or o > n:
                raise ValueError(f"offset {offset} outside the batch ({n} bytes)")
            while o < n:
                if n - o < 4:
                    raise ValueError(f"truncated batch: {n - o} bytes after the last message")
                k = (<uint64_t>p[o] | (<uint64_t>p[o + 1] << 8) | (<uint64_t>p[o + 2] << 16)
                     | (<uint64_t>p[o + 3] << 24))
                if <uint64_t>(n - o - 4) < k:
                    raise ValueError(f"truncated batch: a message of {k} bytes, "
                                     f"{n - o - 4} left")
                rc = ember_ch_send(ch, p + o + 4, k, 0)
                if rc != EMBER_OK:
                    break
                o += 4 + <Py_ssize_t>k
                count += 1
                nbytes += <Py_ssize_t>k
            if rc != EMBER_OK and rc != EMBER_ERR_FULL and rc != EMBER_ERR_EXHAUSTED:
                self._send_error(rc, <Py_ssize_t>k, 0)
        finally:
            PyBuffer_Release(&view)
        return o, count, nbytes

    def _send_quiet(self, bytes data not None):
        """Queue ``data`` (try-once, inline only) without waking a sleeping
        receiver; :meth:`_notify` wakes it.  ChannelFull, ChannelClosed,
        ChannelError (too big for a slot).  Internal: the join wake board."""
        self._check_open("send on")
        cdef Py_ssize_t n = len(data)
        cdef ember_rc_t rc = ember_ch_send_quiet(self._ch, PyBytes_AS_STRING(data), <uint64_t>n)
        if rc != EMBER_OK:
            self._send_error(rc, n, 0)

    def _notify(self):
        """Wake the receivers sleeping on this channel (after
        :meth:`_send_quiet`)."""
        self._check_open("notify")
        _check_rc(ember_ch_notify(self._ch), f"{self._desc()}: notify")

    cdef int _send_error(self, ember_rc_t rc, Py_ssize_t n, timeout) except -1:
        if rc == EMBER_ERR_CLOSED:
            raise ChannelClosed(f"{self._desc()}: cannot send {n} bytes: the channel is closed "
                                f"[EMBER_ERR_CLOSED]")
        if rc == EMBER_ERR_FULL:
            raise ChannelFull(f"{self._desc()}: send of {n} bytes: the channel is full "
                              f"({self._capacity} messages) after timeout={timeout!r}")
        if rc == EMBER_ERR_TOO_BIG:
            raise ChannelError(f"{self._desc()}: cannot send a message of {n} bytes: larger than "
                               f"its pool can hold ({self._pool.size} bytes) [EMBER_ERR_TOO_BIG]")
        if rc == EMBER_ERR_EXHAUSTED:
            raise PoolExhausted(f"{self._desc()}: cannot send a message of {n} bytes: "
                                f"{self._pool._desc()} has no free block that large "
                                f"(after timeout={timeout!r}) [EMBER_ERR_EXHAUSTED]")
        _check_rc(rc, f"{self._desc()}: send of {n} bytes")
        return 0

    cdef int _send_wait(self, const char *p, Py_ssize_t n, int64_t tmo) except -1:
        """Blocking send in slices (GIL released), inline or large.  A large
        message: ember_ch_send claims a slot, allocates the block in the
        pool, records it in the slot and copies once; a slice that ends
        while waiting for pool space (EMBER_ERR_EXHAUSTED, which an inline
        send never returns) publishes a skip marker and the next slice
        starts over."""
        cdef ember_ch_t *ch = self._ch
        cdef int64_t deadline = -1 if tmo < 0 else _now_ns() + tmo
        cdef int64_t sl
        cdef ember_rc_t rc
        self._pool._busy += 1
        self._busy += 1
        try:
            while True:
                sl = _slice(deadline)
                with nogil:
                    rc = ember_ch_send(ch, p, <uint64_t>n, sl)
                if rc == EMBER_OK:
                    return 0
                if rc != EMBER_ERR_FULL and rc != EMBER_ERR_EXHAUSTED and rc != EMBER_ERR_INTERRUPTED:
                    break
                PyErr_CheckSignals()
                if sl == 0:
                    break
        finally:
            self._pool._busy -= 1
            self._busy -= 1
        self._send_error(rc, n, None if tmo < 0 else tmo / 1e9)
        return -1

    cdef int _send_alloc_wait(self, ember_alloc_t *a, int64_t deadline, Py_ssize_t n, timeout) except -1:
        cdef ember_ch_t *ch = self._ch
        cdef ember_rc_t rc = ember_ch_send_alloc(ch, a, 0)
        cdef int64_t sl
        if rc == EMBER_OK:
            return 0
        while rc == EMBER_ERR_FULL or rc == EMBER_ERR_INTERRUPTED:
            sl = _slice(deadline)
            if sl == 0:
                break
            with nogil:
                rc = ember_ch_send_alloc(ch, a, sl)
            if rc == EMBER_OK:
                return 0
            PyErr_CheckSignals()
        self._send_error(rc, n, timeout)
        return -1

    cdef int _send_allocation(self, Allocation al, timeout) except -1:
        al._check_open("send")
        if al._owner._m_uid != self._pool._m_uid or al._owner._shm_name != self._pool._shm_name:
            raise ChannelError(f"{self._desc()}: cannot send an allocation of {al._owner._desc()}: "
                               f"the channel lives in {self._pool._desc()}; only allocations of the "
                               f"channel's pool move without copying")
        if al._exports:
            raise ChannelError(f"{self._desc()}: cannot send an allocation whose memoryview(s) "
                               f"are still exported ({al._exports}); release them first")
        cdef int64_t tmo = _timeout_ns(timeout)
        cdef int64_t deadline = -1 if tmo < 0 else _now_ns() + tmo
        cdef ember_alloc_t a = al._a
        al._unown()            # queued for a receiver: Pool.reclaim must not free it
        self._pool._busy += 1
        self._busy += 1
        al._state = 3          # in flight: free()/memoryview()/send() by other threads refused
        try:
            self._send_alloc_wait(&a, deadline, <Py_ssize_t>a.size, timeout)
        except BaseException:
            al._state = 0      # not sent: still the caller's
            raise
        finally:
            self._pool._busy -= 1
            self._busy -= 1
        al._state = 2          # handed over
        return 0

    # ---- receive ----
    cdef ember_rc_t _recv_wait(self, ember_ch_msg_t *m, int64_t max_len, timeout) except -1:
        """Blocking two-phase receive begin in slices (GIL released)."""
        cdef ember_ch_t *ch = self._ch
        cdef int64_t tmo = _timeout_ns(timeout)
        cdef int64_t deadline = -1 if tmo < 0 else _now_ns() + tmo
        cdef int64_t sl
        cdef ember_rc_t rc = EMBER_ERR_EMPTY
        if tmo == 0:
            return ember_ch_recv_begin(ch, 0, max_len, m)
        self._pool._busy += 1
        self._busy += 1
        try:
            while True:
                sl = _slice(deadline)
                with nogil:
                    rc = ember_ch_recv_begin(ch, sl, max_len, m)
                if rc != EMBER_ERR_EMPTY and rc != EMBER_ERR_INTERRUPTED:
                    return rc
                PyErr_CheckSignals()
                if sl == 0:
                    return rc
        finally:
            self._pool._busy -= 1
            self._busy -= 1

    cdef int _recv_claim(self, ember_ch_msg_t *m, int64_t max_len, timeout) except -1:
        """Claim the oldest message into ``m`` (try once, then wait per
        ``timeout``; max_len >= 0: only a message that fits).  Raises
        ChannelEmpty when none arrived, ChannelError when it does not fit
        (it stays queued) or on any other error."""
        cdef ember_rc_t rc = ember_ch_recv_begin(self._ch, 0, max_len, m)
        if rc == EMBER_OK:
            return 0
        if rc == EMBER_ERR_EMPTY and timeout != 0:
            rc = self._recv_wait(m, max_len, timeout)
            if rc == EMBER_OK:
                return 0
        if rc == EMBER_ERR_BUFFER_TOO_SMALL:
            raise _rc.EXC[EMBER_ERR_BUFFER_TOO_SMALL](
                f"{self._desc()}: the next message ({m.len} bytes) does not fit "
                f"the buffer ({max_len} bytes); it stays queued "
                f"[EMBER_ERR_BUFFER_TOO_SMALL]")
        if rc == EMBER_ERR_EMPTY:
            raise ChannelEmpty(f"{self._desc()}: no message arrived (timeout={timeout!r})")
        if rc == EMBER_ERR_CLOSED:
            raise ChannelClosed(f"{self._desc()}: the channel is closed and every message sent "
                                f"before the close was received [EMBER_ERR_CLOSED]")
        if rc == EMBER_ERR_CORRUPT and m.is_alloc:
            raise _rc.EXC[EMBER_ERR_CORRUPT](
                f"{self._desc()}: channel corrupt: a message names pool block "
                f"(offset {m.alloc.offset}, size {m.alloc.size}, id {m.alloc.id}) "
                f"that is not a live allocation of {self._pool._desc()}; the message "
                f"was dropped [EMBER_ERR_CORRUPT]")
        if rc == EMBER_ERR_CORRUPT:
            raise _rc.EXC[EMBER_ERR_CORRUPT](
                f"{self._desc()}: channel corrupt: an inline message of {m.len} bytes "
                f"does not fit its slot ({self._payload} bytes) or the buffer; the "
                f"message was dropped [EMBER_ERR_CORRUPT]")
        _check_rc(rc, f"{self._desc()}: receive")
        return -1

    def recv(self, timeout=None):
        """Receive the oldest message as bytes (one copy; a large message's
        pool block is freed).  Raises ChannelEmpty when none arrived within
        ``timeout``.

        In a runtime of several nodes with the direct path on
        (docs/multinode.md), a receive of a channel that other nodes'
        processes send to may also take what they sent straight to this
        process.

        Raises
        ------
        ember.ChannelEmpty
            No message arrived within ``timeout`` (a ``TimeoutError``).
        ember.ChannelClosed
            The channel was closed and every message sent before was
            received (an ``EOFError``).
        ember.ChannelError
            The channel was destroyed, or the message failed validation
            ("channel corrupt": it is dropped).
        """
        if self._direct is not None:
            return self._direct.recv(self, timeout)
        return self._recv_local(timeout)

    def _recv_local(self, timeout=None):
        """:meth:`recv` from the channel only (not the direct path's inbox)."""
        cdef ember_ch_t *ch = self._ch
        cdef ember_ch_msg_t m
        cdef bytes out
        cdef char *dst
        if ch == NULL or self._pool._pool == NULL:
            self._check_open("receive")
        if timeout is not None:
            _timeout_ns(timeout)
        self._recv_claim(&m, -1, timeout)
        if not m.is_alloc:
            try:
                out = PyBytes_FromStringAndSize(<const char *>m.data, <Py_ssize_t>m.len)
            finally:
                ember_ch_recv_end(ch, &m)
            return out
        try:
            out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>m.len)
            dst = PyBytes_AS_STRING(out)
            with nogil:
                memcpy(dst, m.data, m.len)
        finally:
            ember_ch_recv_end(ch, &m)          # frees the block, releases the slot
        return out

    def _recv_reply(self, timeout, cls):
        """:meth:`recv` for a thread's reply channel (ember.globalservices):
        a join answered from the join wake board (wakeboard.h's record)
        comes back decoded, as ``(tag, descriptor)``, the descriptor a
        ``cls`` (ChannelDescriptor) made here without calling its
        ``__init__`` (no Python frame on a wake-up's path); any other
        message as bytes."""
        cdef ember_ch_t *ch = self._ch
        cdef ember_ch_msg_t m
        cdef const uint8_t *d
        cdef _WbRecord r
        cdef int i
        if ch == NULL or self._pool._pool == NULL:
            self._check_open("receive")
        if timeout is not None:
            _timeout_ns(timeout)
        self._recv_claim(&m, -1, timeout)
        if not _wb_record(&m, &r):
            return self._msg_bytes_end(&m)
        d = <const uint8_t *>m.data
        try:
            sdesc = PyBytes_FromStringAndSize(<const char *>d + EMBER_WB_REPLY_HEAD, r.sl)
            name = PyUnicode_DecodeUTF8(<const char *>d + EMBER_WB_REPLY_NAME, r.nl,
                                        "surrogatepass")
        finally:
            ember_ch_recv_end(ch, &m)
        if cls is not _desc_cls:
            _desc_prepare(cls)
        values = (None if r.m_uid < 0 else r.m_uid, r.c_uid, name, r.node, r.cap, r.bs,
                  r.rc != 0, sdesc)
        if _desc_set is not None:
            # its slots set through their member descriptors: no attribute
            # lookup in the type per field (each a few cold cache misses)
            desc = _alloc_instance(cls)
            for i in range(8):
                _set_by_descr((<tuple>_desc_set)[i], desc, (<tuple>values)[i])
        else:
            desc = cls.__new__(cls)
            for i in range(8):
                setattr(desc, _DESC_FIELDS[i], (<tuple>values)[i])
        return (r.tag, desc)

    cdef object _msg_bytes_end(self, ember_ch_msg_t *m):
        # a reply channel's message that is not a board's record: as bytes
        # (a large message's block freed by the end)
        try:
            return PyBytes_FromStringAndSize(<const char *>m.data, <Py_ssize_t>m.len)
        finally:
            ember_ch_recv_end(self._ch, m)

    cdef object _recv_join(self, uint64_t tag, object desc, bytes sdesc, str name,
                           const char *u, Py_ssize_t ul):
        """:meth:`_recv_reply` for ``channel.join``'s wait (no timeout:
        GS keeps it), with the descriptor made ahead: ``desc``, a
        ChannelDescriptor allocated before the wait (its slots unset;
        ``_desc_direct``), ``sdesc``, a bytes object of
        EMBER_CH_SDESC_SIZE bytes nobody else holds, ``name``, the name
        joined, ``u``/``ul`` its UTF-8.  The board's record for ``tag``
        fills them (the name's object is the caller's when the record's
        name is its UTF-8): no
        allocation after the wake-up but the record's larger integers.
        Returns ``desc``, or ``None`` for a record of another call (a late
        answer to an abandoned one), or any other message as bytes."""
        cdef ember_ch_t *ch = self._ch
        cdef ember_ch_msg_t m
        cdef const uint8_t *d
        cdef _WbRecord r
        if ch == NULL or self._pool._pool == NULL:
            self._check_open("receive")
        self._recv_claim(&m, -1, None)
        if not _wb_record(&m, &r):
            return self._msg_bytes_end(&m)
        d = <const uint8_t *>m.data
        try:
            if r.tag != tag:
                return None
            if r.sl == EMBER_CH_SDESC_SIZE:
                memcpy(PyBytes_AS_STRING(sdesc), d + EMBER_WB_REPLY_HEAD, r.sl)
            else:
                sdesc = PyBytes_FromStringAndSize(<const char *>d + EMBER_WB_REPLY_HEAD, r.sl)
            if ul != r.nl or memcmp(u, d + EMBER_WB_REPLY_NAME, r.nl) != 0:
                name = PyUnicode_DecodeUTF8(<const char *>d + EMBER_WB_REPLY_NAME, r.nl,
                                            "surrogatepass")
        finally:
            ember_ch_recv_end(ch, &m)
        # (_DESC_FIELDS' order)
        _slot_set(desc, _desc_off[0], None if r.m_uid < 0 else r.m_uid)
        _slot_set(desc, _desc_off[1], r.c_uid)
        _slot_set(desc, _desc_off[2], name)
        _slot_set(desc, _desc_off[3], r.node)
        _slot_set(desc, _desc_off[4], r.cap)
        # (the default block size's int made once: one allocation less
        # after the wake-up)
        _slot_set(desc, _desc_off[5], _DEFAULT_BS if r.bs == EMBER_CH_DEFAULT_BLOCK else r.bs)
        _slot_set(desc, _desc_off[6], r.rc != 0)
        _slot_set(desc, _desc_off[7], sdesc)
        return desc

    def recv_nowait(self):
        """``recv(timeout=0)``: raises ChannelEmpty instead of waiting."""
        return self.recv(0)

    def recv_into(self, buffer, timeout=None):
        """Receive the oldest message into a writable buffer; return its
        length.  A message longer than the buffer stays queued and
        ChannelError is raised."""
        cdef ember_ch_t *ch = self._ch
        cdef ember_ch_msg_t m
        cdef Py_buffer view
        if ch == NULL or self._pool._pool == NULL:
            self._check_open("receive")
        if timeout is not None:
            _timeout_ns(timeout)
        try:
            PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
        except (TypeError, BufferError):
            raise TypeError(f"recv_into() needs a writable bytes-like object, got {type(buffer).__name__}") from None
        try:
            self._recv_claim(&m, view.len, timeout)
            if m.is_alloc:
                with nogil:
                    memcpy(view.buf, m.data, m.len)
            else:
                memcpy(view.buf, m.data, m.len)
            ember_ch_recv_end(ch, &m)
            return <Py_ssize_t>m.len
        finally:
            PyBuffer_Release(&view)

    def recv_view(self, timeout=None):
        """Receive the oldest message as a read-write memoryview without
        copying a large message: the view is over the message's pool block,
        which is freed when the view is released (``view.release()``) or
        garbage collected, or by the pool's reclaim of this process's
        blocks if it dies first (the block is its own from the receipt).
        A message that fit a slot is copied once into a private buffer."""
        cdef ember_ch_t *ch = self._ch
        cdef ember_ch_msg_t m
        cdef uint32_t me
        if ch == NULL or self._pool._pool == NULL:
            self._check_open("receive")
        if timeout is not None:
            _timeout_ns(timeout)
        self._recv_claim(&m, -1, timeout)
        me = 0
        if m.is_alloc:                         # (see _recv_auto's own)
            me = <uint32_t>getpid()
            with nogil:
                if ember_pool_take_owner(self._pool._pool, &m.alloc, 0, me) != EMBER_OK:
                    me = 0
        if not m.is_alloc:
            try:
                out = bytearray(PyBytes_FromStringAndSize(<const char *>m.data, <Py_ssize_t>m.len))
            finally:
                ember_ch_recv_end(ch, &m)
            return memoryview(out)
        try:
            out = _own_view(self._pool, m.alloc, me)
        except BaseException:
            ember_ch_recv_end(ch, &m)
            raise
        ember_ch_recv_take(ch, &m)             # the view owns the block now
        return out

    def recv_auto(self, timeout=None):
        """Receive the oldest message: a message that fit a slot as ``bytes``
        (one copy, like :meth:`recv`), a large one as a zero-copy
        memoryview over its pool block (like :meth:`recv_view`).  For
        callers that expect mostly small messages but must not copy large
        ones (``ember.Queue``)."""
        if self._direct is not None:
            return self._direct.recv(self, timeout)
        cdef ember_ch_t *ch = self._ch
        cdef ember_ch_msg_t m
        if ch == NULL or self._pool._pool == NULL:
            self._check_open("receive")
        if timeout is not None:
            _timeout_ns(timeout)
        return _recv_auto(self, timeout, True)

    # ---- readiness ----
    def poll(self, timeout=0):
        """True when a message is waiting (waiting up to ``timeout``), or
        when the channel is closed and drained (``recv()`` will not wait: it
        raises ChannelClosed)."""
        self._check_open("poll")
        cdef ember_ch_t *ch = self._ch
        cdef int64_t tmo = _timeout_ns(timeout)
        cdef int64_t deadline = -1 if tmo < 0 else _now_ns() + tmo
        cdef int64_t sl
        cdef ember_rc_t rc = ember_ch_poll(ch, 0, 0)
        if rc == EMBER_OK or rc == EMBER_ERR_CLOSED:
            return True
        if tmo == 0 or rc != EMBER_ERR_EMPTY:
            if rc != EMBER_ERR_EMPTY:
                _check_rc(rc, f"{self._desc()}: poll")
            return False
        self._pool._busy += 1
        self._busy += 1
        try:
            while True:
                sl = _slice(deadline)
                if sl == 0:
                    rc = ember_ch_poll(ch, 0, 0)
                    return rc == EMBER_OK or rc == EMBER_ERR_CLOSED
                with nogil:
                    rc = ember_ch_poll(ch, 0, sl)
                if rc == EMBER_OK or rc == EMBER_ERR_CLOSED:
                    return True
                if rc != EMBER_ERR_EMPTY and rc != EMBER_ERR_INTERRUPTED:
                    _check_rc(rc, f"{self._desc()}: poll")
                PyErr_CheckSignals()
        finally:
            self._pool._busy -= 1
            self._busy -= 1

    def _wait_below(self, uint64_t n, timeout=None):
        """Wait until fewer than ``n`` messages are queued (a receiver took
        one: ``ember_ch_wait_below``, woken by its release, no polling),
        at most ``timeout`` seconds (None: no limit); False if that ran
        out.  (``ember.Process``'s final pid: the child took its call.)"""
        self._check_open("wait")
        cdef ember_ch_t *ch = self._ch
        cdef int64_t tmo = _timeout_ns(timeout)
        cdef int64_t deadline = -1 if tmo < 0 else _now_ns() + tmo
        cdef int64_t sl
        cdef ember_rc_t rc = ember_ch_wait_below(ch, n, 0)
        if rc == EMBER_OK or tmo == 0 or rc != EMBER_ERR_FULL:
            if rc != EMBER_OK and rc != EMBER_ERR_FULL:
                _check_rc(rc, f"{self._desc()}: wait")
            return rc == EMBER_OK
        self._pool._busy += 1
        self._busy += 1
        try:
            while True:
                sl = _slice(deadline)
                if sl == 0:
                    return ember_ch_wait_below(ch, n, 0) == EMBER_OK
                with nogil:
                    rc = ember_ch_wait_below(ch, n, sl)
                if rc == EMBER_OK:
                    return True
                if rc != EMBER_ERR_FULL and rc != EMBER_ERR_INTERRUPTED:
                    _check_rc(rc, f"{self._desc()}: wait")
                PyErr_CheckSignals()
        finally:
            self._pool._busy -= 1
            self._busy -= 1


cdef extern from *:
    """
    /* The direct path's take gate (ember/transport/direct.py, TakenRecord):
       a word in a receiving process's record page (a memfd the node's agent
       maps too): 0 open, 1 a take in progress, 2 closed.  A take stores its
       sequence number only through an open gate; the agent closes it to
       revoke the route, and then reads exactly what was taken.  A process
       SIGKILLed inside a take leaves the gate at 1: the agent, seeing it
       dead, reads the cell as it is (that one message, stored or not, is
       the one a kill between the store and recv's return may cost). */
    #include <stdint.h>
    static int ember_gate_take(uint64_t *gate, uint64_t *cell, uint64_t seq) {
        uint64_t open = 0;
        /* acquire on success: pairs with the closer's acq_rel CAS (a take
           after a close fails; nothing of the cell moves before the gate) */
        if (!__atomic_compare_exchange_n(gate, &open, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return 0;
        __atomic_store_n(cell, seq, __ATOMIC_RELAXED);   /* ordered by the release below */
        /* release: pairs with the closer's acquire: it sees the cell's store */
        __atomic_store_n(gate, 0, __ATOMIC_RELEASE);
        return 1;
    }
    static uint64_t ember_gate_close(uint64_t *gate) {
        uint64_t open = 0;
        /* acq_rel: acquire pairs with a take's release store (the cells it
           stored are seen after this), release with a later take's acquire */
        if (__atomic_compare_exchange_n(gate, &open, 2, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 0;
        return open;     /* 1: a take in progress (try again), 2: closed before */
    }
    """
    int ember_gate_take(uint64_t *gate, uint64_t *cell, uint64_t seq) nogil
    uint64_t ember_gate_close(uint64_t *gate) nogil


def _gate_take(size_t gate, size_t cell, uint64_t seq):
    """The direct path's take (see ember_gate_take above): store ``seq`` at
    address ``cell`` if the gate word at address ``gate`` is open; False if
    it is closed.  Internal: both addresses are 8-aligned words of a live
    mapping (ember.transport.direct.TakenRecord checks)."""
    if gate & 7 or cell & 7 or not gate or not cell:
        raise ValueError("gate and cell must be 8-aligned addresses")
    return ember_gate_take(<uint64_t *>gate, <uint64_t *>cell, seq) != 0


def _gate_close(size_t gate):
    """Close the gate word at address ``gate``: 0 closed now, 1 a take is in
    progress (try again), 2 it was closed before.  Internal, as _gate_take."""
    if gate & 7 or not gate:
        raise ValueError("gate must be an 8-aligned address")
    return ember_gate_close(<uint64_t *>gate)


def wait_any(channels, timeout=None, writable=False):
    """Wait until at least one of ``channels`` is readable (``writable=True``:
    has a free slot); return the list of ready channels (empty on timeout).

    Channels of one pool sleep on the pool's event word; channels of
    several pools wait in slices of at most 1 ms.
    """
    chans = list(channels)
    cdef Py_ssize_t n = len(chans), i
    if n == 0:
        raise ValueError("wait_any() needs at least one channel")
    cdef Channel c
    for i in range(n):
        if not isinstance(chans[i], Channel):
            raise TypeError(f"wait_any() needs Channel objects, got {type(chans[i]).__name__} at index {i}")
        (<Channel>chans[i])._check_open("wait")
    cdef int64_t tmo = _timeout_ns(timeout)
    cdef int64_t deadline = -1 if tmo < 0 else _now_ns() + tmo
    cdef int64_t sl
    cdef int wr = 1 if writable else 0
    cdef ember_rc_t rc
    cdef size_t nready = 0
    cdef ember_ch_t **arr = <ember_ch_t **>malloc(n * sizeof(ember_ch_t *))
    cdef uint8_t *ready = <uint8_t *>malloc(n)
    if arr == NULL or ready == NULL:
        free(arr)
        free(ready)
        raise MemoryError()
    pools = {id((<Channel>x)._pool): (<Channel>x)._pool for x in chans}
    for p in pools.values():
        (<Pool>p)._busy += 1
    for x in chans:
        (<Channel>x)._busy += 1
    try:
        for i in range(n):
            arr[i] = (<Channel>chans[i])._ch
        rc = ember_ch_wait_any(arr, n, wr, 0, ready, &nready)
        while rc != EMBER_OK and tmo != 0:
            if rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
                break
            sl = _slice(deadline)
            if sl == 0:
                break
            with nogil:
                rc = ember_ch_wait_any(arr, n, wr, sl, ready, &nready)
            if rc == EMBER_OK:
                break
            PyErr_CheckSignals()
        if rc != EMBER_OK and rc != EMBER_ERR_TIMEOUT and rc != EMBER_ERR_INTERRUPTED:
            _check_rc(rc, f"wait_any over {n} channel(s)")
        if rc != EMBER_OK:
            return []
        return [chans[i] for i in range(n) if ready[i]]
    finally:
        for p in pools.values():
            (<Pool>p)._busy -= 1
        for x in chans:
            (<Channel>x)._busy -= 1
        free(arr)
        free(ready)


# ------------------------------------------------------------ process slots
from posix.fcntl cimport O_RDWR, O_RDONLY, O_CREAT, O_CLOEXEC, open as posix_open
from posix.unistd cimport close as posix_close, ftruncate
from posix.stat cimport fstat, struct_stat as stat_t
from posix.mman cimport mmap, munmap, PROT_READ, PROT_WRITE, MAP_SHARED, MAP_FAILED

cdef extern from "slots.h" nogil:
    ctypedef struct ember_slot_rec_t:
        uint64_t p_uid
        uint64_t c_uid
        int64_t since_ns
        uint32_t op
        uint32_t tid
        uint32_t count
        uint32_t pid
        uint64_t obj
    enum:
        EMBER_SLOTS_COUNT
    size_t EMBER_SLOTS_BYTES

    enum:
        EMBER_WAIT_RECV
    ember_rc_t ember_slots_bind(void *base, size_t len, uint64_t p_uid)
    ember_rc_t ember_slots_read(const void *base, size_t len, ember_slot_rec_t *out, size_t cap,
                                size_t *n)
    void _ember_slot_wait_begin(uint32_t op, uint64_t c_uid, uint32_t count, uint64_t obj)
    void _ember_slot_wait_end()

SLOTS_BYTES = EMBER_SLOTS_BYTES
_SLOT_OPS = {1: "recv", 2: "send", 3: "wait_any", 4: "wait_any(writable)", 5: "acquire",
             6: "wait"}
cdef void *_slots_map = NULL      # this process's mapping of its runtime's table


cdef void *_map_table(str path, bint write) except NULL:
    """Open (create if ``write``) and map a process-slots table; the fd is
    closed at once (a mapping holds no descriptor)."""
    cdef bytes bpath = os.fsencode(path)
    cdef int fd = posix_open(bpath, (O_RDWR | O_CREAT if write else O_RDONLY) | O_CLOEXEC, 0o600)
    cdef stat_t st
    cdef void *p
    if fd < 0:
        raise OSError(errno, f"cannot open the process-slots table {path}: {os.strerror(errno)}")
    try:
        if fstat(fd, &st) != 0:
            raise OSError(errno, os.strerror(errno))
        if <size_t>st.st_size < EMBER_SLOTS_BYTES:
            if not write:
                raise ChannelError(f"not a process-slots table: {path} is too small")
            if ftruncate(fd, EMBER_SLOTS_BYTES) != 0:
                raise OSError(errno, os.strerror(errno))
        p = mmap(NULL, EMBER_SLOTS_BYTES, PROT_READ | (PROT_WRITE if write else 0), MAP_SHARED,
                 fd, 0)
        if p == MAP_FAILED:
            raise OSError(errno, f"cannot map {path}: {os.strerror(errno)}")
        return p
    finally:
        posix_close(fd)


cdef extern from "../sync_c/sync.h" nogil:
    void ember_sync_after_clone()     # this extension's own copy (setup.py)


def _after_raw_clone():
    """In a fork child (one made by a raw clone() too, where no
    pthread_atfork handler ran): refresh the pid channel.c records in slot
    states, and the identity the copy of sync.c in this extension gives
    the join wake board's lock; forget the parent's connection and
    publisher of the fast named create (``_set_fast``: the child makes its
    own connection)."""
    global _fast_pub, _fast_conn
    ember_ch_after_clone()
    ember_sync_after_clone()
    _fast_pub = None
    _fast_conn = None

# A raw clone's child runs Python's fork hooks (PyOS_AfterFork_Child), not
# pthread_atfork's; an ordinary fork runs both (this refresh is idempotent).
os.register_at_fork(after_in_child=_after_raw_clone)


def _debug_handover_pause(seconds):
    """Tests only: the calling thread pauses ``seconds`` inside every
    hand-over window of its sends and receives (after the slot is handed
    to the other side, before the notify that follows); 0 ends it.  See
    HAND-OVER in channel.c."""
    ember_ch_debug_handover_pause(<int64_t>(float(seconds) * 1e9))


def _debug_claim_pause(seconds):
    """Tests only: every send (receive) of the calling thread pauses after
    its claim of a slot, before it writes (reads) the slot, for ``seconds``
    or until 0.2 s after it sees the channel destroyed; 0 ends it.  See
    HAND-OVER in channel.c."""
    ember_ch_debug_claim_pause(<int64_t>(float(seconds) * 1e9))


def _slots_bind_path(path, uint64_t p_uid):
    """Bind this process to its slot (p_uid) of the table at ``path``
    (created if missing); None unbinds.  See ember._slots."""
    global _slots_map
    cdef void *p = NULL
    cdef ember_rc_t rc
    if path is not None:
        p = _map_table(path, True)
    ember_slots_bind(NULL, 0, 0)
    if _slots_map != NULL:
        munmap(_slots_map, EMBER_SLOTS_BYTES)
        _slots_map = NULL
    if p == NULL:
        return
    rc = ember_slots_bind(p, EMBER_SLOTS_BYTES, p_uid)
    if rc != EMBER_OK:
        munmap(p, EMBER_SLOTS_BYTES)
        raise ChannelError(f"cannot bind the process slot: [{ember_rc_str(rc).decode()}]")
    _slots_map = p


def _slot_recv_begin(uint64_t c_uid):
    """Record "blocked on a receive from ``c_uid``" in this process's slot,
    for a wait the C layer does not see (Python code waiting on a pipe: an
    idle worker of a ProcessPoolExecutor, ember.mp._child); a no-op if the
    process is unbound.  :func:`_slot_wait_end` ends it."""
    _ember_slot_wait_begin(EMBER_WAIT_RECV, c_uid, 1, 0)


def _slot_wait_end():
    """End the calling thread's wait record (:func:`_slot_recv_begin`)."""
    _ember_slot_wait_end()


def _slots_read_path(path):
    """:func:`_slots_read` of the table at ``path``."""
    cdef void *p = _map_table(path, False)
    try:
        return _slots_read_ptr(p, EMBER_SLOTS_BYTES)
    finally:
        munmap(p, EMBER_SLOTS_BYTES)


def _slots_bind(buf, uint64_t p_uid):
    """Bind this process to its slot (p_uid) in the table ``buf`` (a
    writable buffer of SLOTS_BYTES that stays alive; tests).  None unbinds."""
    global _slots_buf
    cdef unsigned char[::1] view
    cdef ember_rc_t rc
    if buf is None:
        ember_slots_bind(NULL, 0, 0)
        _slots_buf = None
        return
    view = buf
    rc = ember_slots_bind(&view[0], <size_t>view.shape[0], p_uid)
    if rc != EMBER_OK:
        raise ChannelError(f"cannot bind the process slot: [{ember_rc_str(rc).decode()}]")
    _slots_buf = buf

_slots_buf = None


def _slots_read(buf):
    """The records of the waits in progress in the table ``buf``: a list of
    ``(p_uid, c_uid, op, count, since_ns, pid, tid, obj)`` (a sync object's
    wait, op ``acquire`` or ``wait``: c_uid is its pool's m_uid, obj its
    offset there, count its kind)."""
    cdef const unsigned char[::1] view = buf
    return _slots_read_ptr(&view[0], <size_t>view.shape[0])


cdef list _slots_read_ptr(const void *base, size_t size):
    cdef size_t n = 0
    cdef ember_slot_rec_t *out = <ember_slot_rec_t *>malloc(EMBER_SLOTS_COUNT * sizeof(ember_slot_rec_t))
    cdef ember_rc_t rc
    if out == NULL:
        raise MemoryError("cannot read the process slots")
    try:
        rc = ember_slots_read(base, size, out, EMBER_SLOTS_COUNT, &n)
        if rc != EMBER_OK:
            raise ChannelError(f"not a process-slots table: [{ember_rc_str(rc).decode()}]")
        return [(out[i].p_uid, out[i].c_uid, _SLOT_OPS.get(out[i].op, "?"), out[i].count,
                 out[i].since_ns, out[i].pid, out[i].tid, out[i].obj) for i in range(n)]
    finally:
        free(out)


# ---------------------------------------------------------------- join wake board
# The creator's side of the join wake board (wakeboard.c; GS's side and the
# protocol: ember/globalservices/wakeboard.py).

cdef extern from "wakeboard.h" nogil:
    enum:
        EMBER_WB_HDR
        EMBER_WB_N_ENTRIES
        EMBER_WB_ENTRY
        EMBER_WB_MAX_NAME
        EMBER_WB_MAX_WAITERS
        EMBER_WB_R_MAX
        EMBER_WB_SIZE
        EMBER_WB_REPLY_MARK
        EMBER_WB_REPLY_HEAD
        EMBER_WB_REPLY_NAME
        EMBER_WB_REPLY_MAX
        EMBER_WB_REGISTER_PUBLISHED
        EMBER_WB_CACHE
    ctypedef struct ember_wb_cache_t:
        ember_ch_t *ch[EMBER_WB_CACHE]
    ctypedef struct ember_wb_pub_t:
        void *table
        void *lock
        ember_pool_t *reply_pool
        ember_ch_t *gs
        const uint8_t *name
        size_t name_len
        uint64_t p_uid, c_uid
        int64_t m_uid, node
        uint32_t capacity, block_size, ref_count
        const uint8_t *sdesc
        const uint8_t *reg
        size_t reg_len
        int posted
        ember_wb_cache_t *cache
        int test_stop
    int ember_wb_publish(const ember_wb_pub_t *p)
    void ember_wb_cache_clear(ember_wb_cache_t *c)
    uint32_t ember_wb_index(const uint8_t *name, size_t len)

cdef extern from "../sync_c/sync.h" nogil:
    enum:
        EMBER_SYNC_LOCK
    size_t ember_sync_size(int kind)
    ember_rc_t ember_sync_check(const void *mem, size_t size, int kind)

# (checked against wakeboard.py by tests/test_join_wake.py)
BOARD_GEOMETRY = (EMBER_WB_HDR, EMBER_WB_N_ENTRIES, EMBER_WB_ENTRY, EMBER_WB_MAX_NAME,
                  EMBER_WB_MAX_WAITERS, EMBER_WB_R_MAX, EMBER_WB_SIZE)
BOARD_REPLY_MARK = EMBER_WB_REPLY_MARK
BOARD_REPLY_MAX = EMBER_WB_REPLY_MAX
BOARD_REGISTER_PUBLISHED = EMBER_WB_REGISTER_PUBLISHED

cdef extern from "<sched.h>" nogil:
    int sched_yield()


def _board_index(bytes name not None):
    """The board entry of ``name`` (crc32 % entries, as wakeboard.py's)."""
    return ember_wb_index(<const uint8_t *>PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name))


cdef inline uint8_t *_mp_uint64(uint8_t *o, uint64_t v) noexcept nogil:
    o[0] = 0xcf
    cdef int i
    for i in range(8):
        o[1 + i] = <uint8_t>(v >> (56 - 8 * i))
    return o + 9


cdef inline uint8_t *_mp_head(uint8_t *o, uint8_t small, uint8_t c8, uint8_t c16, uint8_t c32,
                              Py_ssize_t n) noexcept nogil:
    """A msgpack str (small = 0xa0: fixstr) or bin (small = 0: none) header."""
    if small and n < 32:
        o[0] = small | <uint8_t>n
        return o + 1
    if n < 256:
        o[0] = c8
        o[1] = <uint8_t>n
        return o + 2
    if n < 65536:
        o[0] = c16
        o[1] = <uint8_t>(n >> 8)
        o[2] = <uint8_t>n
        return o + 3
    o[0] = c32
    o[1] = <uint8_t>(n >> 24)
    o[2] = <uint8_t>(n >> 16)
    o[3] = <uint8_t>(n >> 8)
    o[4] = <uint8_t>n
    return o + 5


cdef class _BoardPublisher:
    """A creator's side of the join wake board (wakeboard.c), made once per
    connection: :meth:`create` makes a channel, packs its ``ChannelRegister``
    (msgpack, here: no Python on the wake-up's path), claims the name on the
    board, queues the register for GS, answers and wakes the parked
    joiners, then wakes GS -- one call."""
    cdef Pool _dpool, _rpool
    cdef Channel _gs
    cdef Allocation _table, _lock
    cdef void *_table_p
    cdef void *_lock_p
    cdef uint64_t _p_uid
    cdef int64_t _m_uid, _node
    cdef bytes _key
    cdef int _test_stop
    cdef bytes _od_default
    cdef ember_ch_reserved_t _spare     # a default channel's block made ahead (reserve())
    cdef ember_wb_cache_t _kept         # the joiners' reply channels kept attached (wakeboard.h)
    # the next named create made ahead (reserve(), with _conn's next posted
    # c_uid and tag): its channel made in the reserved block, its
    # descriptor, by this process (_pre_pid), in the block at _pre_off
    cdef ember_ch_t *_pre_ch
    cdef object _pre_cuid, _pre_tag
    cdef uint8_t _pre_sdesc[EMBER_CH_SDESC_SIZE]
    cdef int _pre_pid
    cdef uint64_t _pre_off
    cdef bint _has_spare
    cdef int _spare_pid                 # ... by this process (a fork child leaves it alone)
    # the thread reply channel create_named last used (its thread's: the
    # holder of conn._local.reply), and its register's head packed
    # (_reg_head: every field before the name, the tag's bytes left to fill)
    cdef object _holder
    cdef unsigned long _holder_tid
    cdef bytes _head
    cdef Channel _hch                   # ... its channel
    # the connection create_named last served, its _posted deque (and the
    # deque's popleft, bound) and _tags (both made once, with it)
    cdef object _conn, _posted, _popleft, _tags
    # the offset of the reply channel holder's ``retired`` slot (-1: read
    # as an attribute), for _hcls
    cdef Py_ssize_t _retired_off
    cdef object _hcls

    def __init__(self, Pool pool not None, Allocation table not None, Allocation lock not None,
                 Pool reply_pool not None, Channel gs not None, uint64_t p_uid, bytes key not None,
                 int64_t m_uid, int64_t node, int test_stop=0, bytes od_default=None):
        """``pool``: where channels are made (the default pool);
        ``table``, ``lock``: the board's blocks; ``reply_pool``: the pool of
        the joiners' reply channels (the infrastructure pool); ``gs``: GS's
        input channel; ``p_uid``, ``key``: this process's (the register's
        fields); ``m_uid``, ``node``: the pool's, as GS reports them
        (m_uid < 0: none); ``test_stop``: tests only (wakeboard.h);
        ``od_default``: the default options' dict, msgpack-packed
        (:meth:`create_named`)."""
        for a in (table, lock):
            (<Allocation>a)._check_open("read")
        pool._check_open()
        reply_pool._check_open()
        gs._check_open("publish on")
        if table._a.size < EMBER_WB_SIZE:
            raise ValueError(f"a join wake board needs {EMBER_WB_SIZE} bytes, got {table._a.size}")
        self._lock_p = ember_pool_ptr(lock._owner._pool, lock._a.offset)
        cdef ember_rc_t rc = ember_sync_check(self._lock_p, lock._a.size, EMBER_SYNC_LOCK)
        if rc != EMBER_OK:
            _check_rc(rc, "the join wake board's lock")
        self._table_p = ember_pool_ptr(table._owner._pool, table._a.offset)
        self._dpool, self._rpool, self._gs, self._table, self._lock = pool, reply_pool, gs, table, lock
        self._p_uid, self._key, self._m_uid, self._node = p_uid, key, m_uid, node
        self._test_stop = test_stop
        self._od_default = od_default

    def reserve(self, conn=None):
        """Make the next default channel's block ahead (ember_ch_reserve:
        allocated, owned by this process, its header faulted in), off the
        wake-up's path: the next default create takes it; and, when the
        connection (``conn``, else the one create_named last served) has a
        posted c_uid left, the next named create itself (:meth:`_prepare`).
        False if the block could not be made (a full pool: the create
        allocates as usual)."""
        cdef ember_rc_t rc
        if conn is not None:
            self._serve(conn)
        if self._pre_ch != NULL:
            return True
        if not self._has_spare:
            if self._dpool._pool == NULL:
                return False
            with nogil:
                rc = ember_ch_reserve(self._dpool._pool, EMBER_CH_DEFAULT_CAPACITY,
                                      EMBER_CH_DEFAULT_BLOCK, EMBER_ALLOC_OWNED, &self._spare)
            if rc != EMBER_OK:
                return False
            self._has_spare = True
            self._spare_pid = getpid()
        self._prepare()
        return True

    cdef _prepare(self):
        # The next named create's work done here, off the wake-up's path:
        # one of the connection's posted c_uids and a tag taken, the channel
        # made in the reserved block (owned by this process until handed
        # over, as any of its channels: reclaimed if it dies) and its
        # descriptor serialized.  Nobody knows the channel until that
        # create publishes it; released (release(), a new connection), it
        # is destroyed and its c_uid, never registered, is not used.
        cdef ember_rc_t rc
        cdef ember_ch_t *ch = NULL
        cdef size_t sl = 0
        cdef uint64_t c
        if self._conn is None or not self._has_spare or getpid() != self._spare_pid or \
                len(self._posted) == 0:
            return
        c_uid = self._popleft()
        c = c_uid
        rc = ember_ch_create_reserved(self._dpool._pool, &self._spare, c, &ch)
        if rc != EMBER_OK:
            self._posted.appendleft(c_uid)
            return
        self._has_spare = False              # (the block is the channel's now)
        rc = ember_ch_serialize(ch, self._pre_sdesc, EMBER_CH_SDESC_SIZE, &sl)
        if rc != EMBER_OK:
            ember_ch_destroy(ch)
            return
        self._pre_off = self._spare.alloc.offset
        self._pre_cuid, self._pre_tag = c_uid, next(self._tags)
        self._pre_pid = getpid()
        self._pre_ch = ch

    cdef _serve(self, conn):
        # ``conn``'s c_uid deque and tags (made once, with it), taken for
        # the next creates
        if conn is not self._conn:
            self._conn = None
            self._drop_prepared()            # (another connection's c_uid)
            self._posted, self._tags = conn._posted, conn._tags
            self._popleft = self._posted.popleft
            self._conn = conn

    cdef _drop_prepared(self):
        if self._pre_ch != NULL:
            if getpid() == self._pre_pid and self._dpool._pool != NULL:
                ember_ch_destroy(self._pre_ch)
            else:
                ember_ch_detach(self._pre_ch)    # (a fork child's copy of the handle)
            self._pre_ch = NULL
        self._pre_cuid = self._pre_tag = None

    @property
    def reserved(self):
        """The pool offset of the block made ahead (the next named create's
        channel, when made ahead), or None."""
        if self._pre_ch != NULL:
            return self._pre_off
        return self._spare.alloc.offset if self._has_spare else None

    @property
    def prepared(self):
        """``(c_uid, tag)`` of the next named create made ahead, or None
        (tests)."""
        return (self._pre_cuid, self._pre_tag) if self._pre_ch != NULL else None

    def release(self):
        """Give the block made ahead back to the pool, destroy the channel
        made ahead (this process's only: a fork child's copy is its
        parent's)."""
        if self._has_spare and getpid() == self._spare_pid and self._dpool._pool != NULL:
            ember_ch_unreserve(self._dpool._pool, &self._spare)
        self._has_spare = False
        self._drop_prepared()

    def __dealloc__(self):
        if (self._has_spare or self._pre_ch != NULL) and self._dpool is not None:
            self.release()
        self._forget_kept()

    cdef _forget_kept(self):
        # (a fork child's copy of the handles is its own heap's: freed too)
        ember_wb_cache_clear(&self._kept)

    @property
    def kept(self):
        """How many joiners' reply channels are kept attached (tests)."""
        cdef int i, n = 0
        for i in range(EMBER_WB_CACHE):
            if self._kept.ch[i] != NULL:
                n += 1
        return n

    def create_named(self, conn, str name):
        """``channel.create(None, name)`` with the default options, on the
        creator's wake-up path: ``conn`` is the process's
        ember.globalservices Connection, whose c_uid reservation
        (``_next_c_uid``), thread reply channel (``_local.reply``) and
        request tags (``_tags``) it takes; the rest (GS's answer) is
        ``conn._published(channel, register, answered, holder, tag, c_uid,
        name)``, returned.  None (nothing taken) when this path does not
        apply: the caller takes the general one.  (``channel.create``
        itself is :func:`channel_create`, which calls this without a
        Python method call.)"""
        return self._create_named(conn, name)

    cdef object _create_named(self, conn, str name):
        cdef Py_ssize_t nl = 0
        cdef const char *nm
        if self._od_default is None:
            return None
        # the thread's reply channel, as last used by this thread unless it
        # was retired since (conn._local.reply is then another, or none)
        cdef unsigned long tid = PyThread_get_thread_ident()
        holder = self._holder
        if holder is not None and tid == self._holder_tid:
            # its ``retired`` slot read in place (an attribute lookup here
            # is a walk through cold type dictionaries)
            if self._retired_off > 0:
                if not _slot_is_false(holder, self._retired_off):
                    holder = None
            elif holder.retired:
                holder = None
        else:
            holder = None
        if holder is None:
            holder = getattr(conn._local, "reply", None)
            if holder is None:
                return None
            self._holder = None
            if type(holder) is not self._hcls:
                self._retired_off = _slot_offset(getattr(type(holder), "retired", None))
                self._hcls = type(holder)
            self._head = self._make_head(holder.r)
            self._hch = holder.ch
            self._holder, self._holder_tid = holder, tid
        self._serve(conn)
        try:
            nm = PyUnicode_AsUTF8AndSize(name, &nl)     # (strict: as msgpack would)
        except UnicodeError:
            return None
        # a c_uid reserved for posted registers first (no wait for GS once
        # joiners are answered), else the one reserved for a waited one;
        # taken: no Python code runs in between
        spare = self._posted
        cdef bint pre = self._pre_ch != NULL
        cdef bint posted = pre or len(spare) > 0
        if pre:                              # made ahead (_prepare)
            c_uid, tag = self._pre_cuid, self._pre_tag
        else:
            if posted:
                c_uid = self._popleft()
            else:
                c_uid = conn._next_c_uid
                if c_uid is None:
                    return None
                conn._next_c_uid = None
            tag = next(self._tags)
        cdef Channel rch = self._hch
        try:
            ch, reg, n = self._create(c_uid, EMBER_CH_DEFAULT_CAPACITY, EMBER_CH_DEFAULT_BLOCK,
                                      False, nm, nl, tag, self._head, self._od_default, rch._ch,
                                      posted, pre)
        except Exception:
            if pre:
                pass                         # (still made ahead, or used: nothing to give back)
            elif posted:                     # a full pool: the general path words it
                spare.appendleft(c_uid)
            else:
                conn._next_c_uid = c_uid
            return None
        return conn._published(ch, reg, n, holder, tag, c_uid, name, posted)

    cdef bytes _make_head(self, bytes r):
        """The register's fields before the name, packed: [code, tag (its
        8 bytes zero: _create writes them), p_uid, r, key, m_uid = nil."""
        cdef Py_ssize_t rl = PyBytes_GET_SIZE(r), kl = PyBytes_GET_SIZE(self._key)
        if rl >= 1 << 31 or kl >= 1 << 31:
            raise ValueError("a register field is too long")
        head = PyBytes_FromStringAndSize(NULL, 2 + 9 + 9 + 5 + rl + 5 + kl + 1)
        cdef uint8_t *base = <uint8_t *>PyBytes_AS_STRING(head)
        cdef uint8_t *o = base
        # [code, tag, p_uid, r, key, m_uid = nil, name, options, sdesc]
        o[0] = 0x99
        o[1] = 100                 # messages.ChannelRegister.code (checked by the tests)
        o = _mp_uint64(o + 2, 0)
        o = _mp_uint64(o, self._p_uid)
        o = _mp_head(o, 0, 0xc4, 0xc5, 0xc6, rl)
        memcpy(o, PyBytes_AS_STRING(r), rl)
        o += rl
        o = _mp_head(o, 0, 0xc4, 0xc5, 0xc6, kl)
        memcpy(o, PyBytes_AS_STRING(self._key), kl)
        o += kl
        o[0] = 0xc0
        return head[:o + 1 - base]

    def create(self, uint64_t c_uid, uint32_t capacity, uint32_t block_size, bint ref_count,
               bytes name not None, uint64_t tag, bytes r not None, bytes options not None,
               bint posted=False):
        """Make the channel (owned by this process until handed over, as
        ``Channel.create(..., owned=True)``), pack the register
        ``ChannelRegister(tag, p_uid, r, key, None, name, options, sdesc)``
        (``name``: UTF-8; ``options``: the options dict, msgpack-packed) and
        publish.  Returns ``(channel, register, answered)``: the joiners
        answered, or -1 if nothing was claimed (no joiner listed for the
        name, the board busy, GS's input full): the caller then sends the
        register itself.  ``posted``: ``c_uid`` is one of this process's
        ``post_c_uids`` (a plain channel): once joiners are answered, the
        register is queued as ``ChannelRegisterPublished`` (GS answers
        nothing, and is not woken), else (-1) it is the waited
        ``ChannelRegister`` the caller sends."""
        return self._create(c_uid, capacity, block_size, ref_count, PyBytes_AS_STRING(name),
                            PyBytes_GET_SIZE(name), tag, self._make_head(r), options, NULL,
                            posted)

    cdef tuple _create(self, uint64_t c_uid, uint32_t capacity, uint32_t block_size,
                       bint ref_count, const char *name, Py_ssize_t nl, uint64_t tag, bytes head,
                       bytes options, ember_ch_t *reply, bint posted, bint pre=False):
        # ``reply``: the handle of the reply channel ``r`` (or NULL): once
        # joiners were answered, the creator sleeps on it for GS's answer
        # at once, before any more Python (a joiner the kernel put on this
        # CPU runs only once we block; the caller's wait, whose spin it
        # sets to 0 here, then finds the answer there).  A posted register
        # has no answer: the creator yields its CPU instead (sched_yield:
        # such a joiner runs first; with none, it returns at once).
        # Nothing is allocated by Python before the joiners' wake-up (each
        # object made right after a sleep costs microseconds here): the
        # register is packed into a buffer, the Channel object and the
        # register's bytes are made after the publish.
        cdef Pool pool = self._dpool
        pool._check_open()
        self._rpool._check_open()
        self._gs._check_open("publish on")
        self._table._check_open("read")
        self._lock._check_open("read")
        cdef Py_ssize_t hl = PyBytes_GET_SIZE(head), ol = PyBytes_GET_SIZE(options)
        if nl >= 1 << 31:
            raise ValueError("a register field is too long")
        # [code, tag, p_uid, r, key, m_uid = nil (head: _make_head), name, options, sdesc]
        cdef Py_ssize_t n = hl + 5 + nl + ol + 2 + EMBER_CH_SDESC_SIZE
        cdef uint8_t stack_buf[2048]
        cdef uint8_t *buf = stack_buf
        if n > <Py_ssize_t>sizeof(stack_buf):
            buf = <uint8_t *>malloc(n)
            if buf == NULL:
                raise MemoryError()
        cdef uint8_t *o = buf
        cdef ember_ch_t *ch = NULL
        cdef ember_rc_t rc
        cdef size_t sl = 0
        cdef Py_ssize_t used
        cdef ember_wb_pub_t p
        cdef int answered
        try:
            memcpy(o, PyBytes_AS_STRING(head), hl)
            _mp_uint64(o + 2, tag)
            o = _mp_head(o + hl, 0xa0, 0xd9, 0xda, 0xdb, nl)
            memcpy(o, name, nl)
            o += nl
            memcpy(o, PyBytes_AS_STRING(options), ol)
            o += ol
            o[0] = 0xc4
            o[1] = EMBER_CH_SDESC_SIZE
            o += 2
            used = (o - buf) + EMBER_CH_SDESC_SIZE
            if pre and self._pre_ch != NULL and c_uid == <uint64_t>self._pre_cuid and \
                    capacity == EMBER_CH_DEFAULT_CAPACITY and block_size == EMBER_CH_DEFAULT_BLOCK:
                # made ahead (_prepare): the channel and its descriptor
                ch, self._pre_ch = self._pre_ch, NULL
                self._pre_cuid = self._pre_tag = None
                memcpy(o, self._pre_sdesc, EMBER_CH_SDESC_SIZE)
            else:
                if self._has_spare and capacity == self._spare.capacity and \
                        block_size == self._spare.block_size:
                    self._has_spare = False      # (taken: the channel's, or freed on failure)
                    rc = ember_ch_create_reserved(pool._pool, &self._spare, c_uid, &ch)
                else:
                    rc = ember_ch_create_ex(pool._pool, c_uid, capacity, block_size,
                                            EMBER_ALLOC_OWNED, &ch)
                if rc != EMBER_OK:
                    _check_rc(rc, f"cannot create a channel of {capacity} x {block_size} B "
                                  f"({320 + capacity * block_size} bytes) in {pool._desc()}")
                rc = ember_ch_serialize(ch, o, EMBER_CH_SDESC_SIZE, &sl)
                if rc != EMBER_OK:
                    ember_ch_destroy(ch)
                    _check_rc(rc, "cannot serialize the new channel")
            p.table = self._table_p
            p.lock = self._lock_p
            p.reply_pool = self._rpool._pool
            p.gs = self._gs._ch
            p.name = <const uint8_t *>name
            p.name_len = nl
            p.p_uid = self._p_uid
            p.c_uid = c_uid
            p.m_uid = self._m_uid
            p.node = self._node
            p.capacity = capacity
            p.block_size = block_size
            p.ref_count = 1 if ref_count else 0
            p.sdesc = o
            p.reg = buf
            p.reg_len = used
            p.posted = posted
            p.cache = &self._kept
            p.test_stop = self._test_stop
            with nogil:
                answered = ember_wb_publish(&p)
                if answered > 0 and posted:
                    sched_yield()
                elif answered > 0 and reply != NULL:
                    ember_ch_set_spin_range(reply, 0, 0)
                    ember_ch_poll(reply, 0, _SLICE_NS)    # (any outcome: the caller waits)
            return Channel._wrap(ch, pool, True), PyBytes_FromStringAndSize(<const char *>buf, used), answered
        finally:
            if buf != stack_buf:
                free(buf)


# ``ember.globalservices.channel.create`` and ``.join`` themselves (that
# module binds its names to these): a call from user code runs no Python
# frame of ours on a join wake-up's path -- the creator's way to the
# joiners' FUTEX_WAKE (the named create, _BoardPublisher._create_named) and
# the joiner's way back from its wake-up to the caller (the board's record,
# decoded by _recv_reply).  Every other case is the module's Python, set
# by _set_gs() at its import; _set_fast() is called by the connection
# (ember.globalservices._client) whenever its publisher appears or goes
# (forgotten in a fork child).  Process-private state: nothing shared.
cdef _BoardPublisher _fast_pub = None
cdef object _fast_conn = None
cdef object _create_general = None
cdef object _join_begin = None
cdef object _join_finish = None
cdef object _join_desc = None
# the descriptor channel_join last returned from its made-ahead path, kept
# until the next such join lets it go before its wait: a caller that drops
# it at once (``channel.join(name)`` as a statement) would otherwise free
# it and its slots' objects right after its wake-up, on its way to the
# next line (~1-3 µs on a just-woken CPU); one descriptor, no other effect
cdef object _join_kept = None


def _set_fast(conn, _BoardPublisher pub):
    """Route ``channel.create(None, name)`` to ``pub`` of ``conn`` (both
    None: to the general path)."""
    global _fast_pub, _fast_conn
    _fast_pub = None
    if conn is not None and pub is not None:
        _fast_conn = conn
        _fast_pub = pub
    else:
        _fast_conn = None


def _set_gs(create_general, join_begin, join_finish, desc_cls):
    """ember.globalservices.channel's side: ``create_general(m_uid,
    user_name, channel_options, soft)``; ``join_begin(name, timeout)`` sends
    the request and returns ``(connection, holder, tag)``;
    ``join_finish(connection, holder, tag, data)`` takes a reply that is not
    the board's record for ``tag`` (GS's, or another's) and returns the
    descriptor (after a wait that raised, the connection's
    ``abandon(holder, tag)``); ``desc_cls``: ChannelDescriptor."""
    global _create_general, _join_begin, _join_finish, _join_desc
    _create_general, _join_begin, _join_finish = create_general, join_begin, join_finish
    _join_desc = desc_cls


def channel_create(m_uid, user_name=None, channel_options=None, soft=False):
    """Create a channel in pool ``m_uid`` (None: the default pool); return
    its :class:`ChannelDescriptor`.  ``soft=True`` returns the live channel
    of that name if there is one.  Waiters in :func:`join` for this name
    wake at once.  An unnamed plain channel in the default pool is
    registered without waiting for GS's answer (GS handles it before any
    later request; docs/channels.md, "How create, join and destroy flow").

    Raises
    ------
    ember.ChannelError
        A bad argument or option, no pool with that ``m_uid``, a name taken
        by a live channel (without ``soft``).
    ember.PoolExhausted
        No room for the channel in the pool.
    """
    cdef _BoardPublisher pub = _fast_pub
    if pub is not None and m_uid is None and channel_options is None and not soft and \
            type(user_name) is str and user_name:
        # a name with the default options, the join wake board's publisher
        # ready: one C call to the joiners' wake-up (wakeboard.c)
        d = pub._create_named(_fast_conn, <str>user_name)
        if d is not None:
            return d
    return _create_general(m_uid, user_name, channel_options, soft)


def channel_join(name, timeout=None):
    """The descriptor of channel ``name``, waiting until some process creates
    it (``timeout`` seconds at most, kept by GS).  Joining a ref-counted
    channel adds a reference for this process.

    Raises
    ------
    ember.ChannelTimeout
        No channel of that name was created within ``timeout`` (a
        ``TimeoutError``).
    ember.ChannelError
        ``name`` is not a non-empty str, or ``timeout`` not a number >= 0.
    """
    global _join_kept
    cdef const char *u = NULL
    cdef Py_ssize_t ul = 0
    cls = _join_desc
    if cls is not _desc_cls:
        _desc_prepare(cls)
    if _desc_direct and type(name) is str:
        # the descriptor a board's record fills, made before the wait:
        # nothing but the record's larger integers is allocated between
        # the wake-up and the return
        try:
            u = PyUnicode_AsUTF8AndSize(name, &ul)     # (an ASCII name: its own data)
        except UnicodeError:
            u = NULL
        if u != NULL:
            _join_kept = None             # (the last join's: freed here, before the wait)
            desc = _alloc_instance(cls)
            sdesc = PyBytes_FromStringAndSize(NULL, EMBER_CH_SDESC_SIZE)
            conn, holder, tag = _join_begin(name, timeout)
            desc = _join_wait(conn, holder, tag, desc, sdesc, <str>name, u, ul)
            _join_kept = desc
            return desc
    conn, holder, tag = _join_begin(name, timeout)
    cdef Channel ch = holder.ch
    try:
        while True:
            # (GS keeps the join's timeout: the local wait has none)
            data = ch._recv_reply(None, _join_desc)
            if type(data) is tuple:       # answered from the join wake board
                if (<tuple>data)[0] == tag:
                    return (<tuple>data)[1]
                continue                  # (a late answer to an abandoned call)
            break
    except BaseException:
        conn.abandon(holder, tag)
        raise
    return _join_finish(conn, holder, tag, data)


cdef object _join_wait(conn, holder, tag, desc, bytes sdesc, str name, const char *u,
                       Py_ssize_t ul):
    cdef Channel ch = holder.ch
    cdef uint64_t t = tag
    try:
        while True:
            # (GS keeps the join's timeout: the local wait has none)
            data = ch._recv_join(t, desc, sdesc, name, u, ul)
            if data is desc:              # answered from the join wake board
                return desc
            if data is not None:
                break
            # (None: a late answer to an abandoned call)
    except BaseException:
        conn.abandon(holder, tag)
        raise
    return _join_finish(conn, holder, tag, data)


include "_zdirect.pxi"


cdef object _recv_auto(Channel ch, timeout, bint own=False):
    """:meth:`Channel.recv_auto`'s receive on an open channel (no direct
    path).  ``own``: a large message's block is handed to this process
    (``ember_pool_take_owner`` from nobody) while its slot still records
    it, so that no death of the receiver leaves it unowned: killed before
    the slot's release, the block is freed both by a reclaim of this
    pid's blocks and by the slot's recovery (the second free fails its id
    check harmlessly, as in ``ember_ch_recv_end``); killed after, by the
    reclaim.  The codec hands it back to nobody once it has unpickled it
    (``_codec.loads``: a frame's views may outlive it in a forked child);
    a caller that keeps the view keeps the block its own."""
    cdef ember_ch_msg_t m
    cdef uint32_t me = 0
    ch._recv_claim(&m, -1, timeout)
    if own and m.is_alloc:
        me = <uint32_t>getpid()
        with nogil:
            if ember_pool_take_owner(ch._pool._pool, &m.alloc, 0, me) != EMBER_OK:
                me = 0
    if not m.is_alloc:
        try:
            out = PyBytes_FromStringAndSize(<const char *>m.data, <Py_ssize_t>m.len)
        finally:
            ember_ch_recv_end(ch._ch, &m)
        return out
    try:
        out = _own_view(ch._pool, m.alloc, me)
    except BaseException:
        ember_ch_recv_end(ch._ch, &m)
        raise
    ember_ch_recv_take(ch._ch, &m)             # the view owns the block now
    return out


# ------------------------------------------------------------- a lease's
# (ember._worker.lease: a spare of ember.Process attaches its two channels
# and waits for its call without running Python; each Python step there,
# Channel.attach's look-ups of the descriptor's type and pool, the record
# reader's code, wrote pages the spare shares with the warm template.)

def _attach_in(Pool pool not None, bytes sdesc not None):
    """:meth:`Channel.attach` of a channel of ``pool`` (an open handle):
    None, having attached nothing, if ``sdesc`` is not a descriptor of a
    channel of that pool or the channel cannot be attached (Channel.attach
    then says why)."""
    cdef const uint8_t *psd = NULL
    cdef size_t plen = 0, mine_len = 0
    cdef uint8_t mine[EMBER_POOL_SDESC_SIZE]
    cdef ember_ch_t *ch = NULL
    cdef const char *d = PyBytes_AS_STRING(sdesc)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(sdesc)
    if pool._pool == NULL or ember_ch_sdesc_pool(d, n, &psd, &plen) != EMBER_OK \
            or ember_pool_serialize(pool._pool, mine, sizeof(mine), &mine_len) != EMBER_OK \
            or plen != mine_len or memcmp(psd, mine, plen) != 0 \
            or ember_ch_attach(pool._pool, d, n, &ch) != EMBER_OK:
        return None
    return Channel._wrap(ch, pool, False)


def _recv_record(Channel ch not None, bytes magic not None):
    """Wait for a record of ``ember.objects._pickling`` on ``ch`` (a
    header message, ``magic`` + a kind byte + its extra bytes, then a data
    message) and return ``(kind, extra, data)`` of the last complete one
    once no more messages are waiting (what its ``RecordReader.pump(None)``
    until a record is complete, then ``records[-1]``, gives); ``data`` as
    :meth:`Channel.recv_auto` returns it, its block (a large one) this
    process's from its receipt on (``_recv_auto``'s ``own``: a process
    killed at any point after, before the codec's unpickling, leaves it to
    the reclaim of its blocks at its death).  None if a message that
    should be a header is not one.  Raises what ``recv_auto`` raises."""
    cdef Py_ssize_t k = len(magic)
    cdef bint begun = False
    cdef int kind = 0
    extra = got = None
    if ch._ch == NULL or ch._pool._pool == NULL:
        ch._check_open("receive")
    if ch._direct is not None:
        raise ChannelError(f"{ch._desc()}: a record is read here only from the channel itself")
    while got is None or ember_ch_poll(ch._ch, 0, 0) == EMBER_OK:
        m = _recv_auto(ch, None, begun)
        if begun:
            got = (kind, extra, m)
            begun = False
            continue
        h = m if type(m) is bytes else bytes(m)
        if type(m) is not bytes:
            m.release()
        if len(h) < k + 1 or memcmp(PyBytes_AS_STRING(h), PyBytes_AS_STRING(magic), k) != 0:
            return None
        kind = <unsigned char>PyBytes_AS_STRING(h)[k]
        extra = PyBytes_FromStringAndSize(PyBytes_AS_STRING(h) + k + 1, len(h) - k - 1)
        begun = True
    return got
