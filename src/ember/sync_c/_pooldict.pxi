# Included from _sync.pyx (the table's lock is an ember Lock of sync.c, which
# is compiled into this extension only).
#
# The hot path of ember.dict(in_pool=True) (ember.objects.shared.PoolDict,
# which subclasses _PoolTable): encode the key (and value) without the lock,
# take the table's ember Lock, run one C call of pooldict.c, release the
# lock, then decode.  No Python code runs while the lock is held (a value is
# copied out and decoded after the release), so a finalizer or a signal
# handler that uses the same dict cannot deadlock on it.
#
# Encoding: a type tag byte and a payload.  int (64-bit), str (UTF-8),
# bytes, float, None, True and False are written directly; anything else
# (a tuple, an int subclass, a big int, ...) is pickled (protocol 5; a value
# that the C pickler refuses goes through cloudpickle, as everywhere in
# ember).  Keys are equal when their encodings are: 1, 1.0 and True are
# three keys (as when keys were compared by their pickles).
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_FromDouble
from cpython.long cimport PyLong_FromLongLong
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdint cimport uint8_t
from libc.stdlib cimport free
from libc.string cimport memcpy
from ember.pools_c._pools cimport (EMBER_ERR_BUFFER_TOO_SMALL, EMBER_ERR_CORRUPT,
                                   EMBER_ERR_NOT_FOUND)

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)

cdef extern from "pooldict.h" nogil:
    unsigned EMBER_PDICT_HEADER
    unsigned EMBER_PDICT_SLOT_HDR
    size_t ember_pdict_size(uint32_t capacity, uint32_t slot_size)
    ember_rc_t ember_pdict_init(void *mem, size_t size, uint32_t capacity, uint32_t slot_size)
    ember_rc_t ember_pdict_check(const void *mem, size_t size, uint32_t *capacity,
                                 uint32_t *slot_size)
    ember_rc_t ember_pdict_get(void *mem, uint8_t ktag, const void *k, uint32_t kn,
                               void *buf, uint32_t bufsize, uint32_t *vlen)
    int ember_pdict_contains(void *mem, uint8_t ktag, const void *k, uint32_t kn)
    ember_rc_t ember_pdict_set(void *mem, uint8_t ktag, const void *k, uint32_t kn,
                               uint8_t vtag, const void *v, uint32_t vn, int only_new,
                               int *existed)
    ember_rc_t ember_pdict_delete(void *mem, uint8_t ktag, const void *k, uint32_t kn)
    uint64_t ember_pdict_len(const void *mem)
    ember_rc_t ember_pdict_clear(void *mem)
    ember_rc_t ember_pdict_recount(void *mem)
    ember_rc_t ember_pdict_snapshot(void *mem, uint8_t **out, size_t *outlen, uint32_t *n,
                                    uint32_t *torn)

import pickle as _pickle
from ember.exceptions import ObjectError as _ObjectError, SharedObjectError as _SharedObjectError

cdef object _pd_pdumps = _pickle.dumps
cdef object _pd_ploads = _pickle.loads
cdef object _pd_value_dumps = None      # ember.objects._codec.pickle_bytes, imported on first use

cdef enum:
    _T_PICKLE = 0x70    # 'p'
    _T_INT = 0x69       # 'i'  8 bytes, native order (a pool is never shared across machines)
    _T_STR = 0x73       # 's'  UTF-8
    _T_BYTES = 0x62     # 'b'
    _T_FLOAT = 0x66     # 'f'  8 bytes
    _T_NONE = 0x6e      # 'n'
    _T_TRUE = 0x54      # 'T'
    _T_FALSE = 0x46     # 'F'
    _PD_STACK = 512     # values up to this size are copied out to the stack


cdef struct _Enc:
    uint8_t tag
    const char *p
    Py_ssize_t n
    char small[8]


cdef object _pd_encode(object x, _Enc *e, bint key):
    """Fill ``e`` with the encoding of ``x``; return the object that owns
    ``e.p``'s bytes (keep it alive while they are used), or None."""
    global _pd_value_dumps
    cdef type t = type(x)
    cdef long long v
    cdef double d
    cdef int overflow = 0
    cdef Py_ssize_t n = 0
    e.p = e.small
    e.n = 0
    if t is int:
        v = PyLong_AsLongLongAndOverflow(x, &overflow)
        if not overflow:
            e.tag = _T_INT
            memcpy(e.small, &v, 8)
            e.n = 8
            return None
    elif t is str:
        try:
            e.p = PyUnicode_AsUTF8AndSize(x, &n)
        except UnicodeError:       # lone surrogates: pickle keeps them
            pass
        else:
            e.tag = _T_STR
            e.n = n
            return x
    elif t is bytes:
        e.tag = _T_BYTES
        e.p = PyBytes_AS_STRING(x)
        e.n = PyBytes_GET_SIZE(x)
        return x
    elif t is float:
        d = PyFloat_AS_DOUBLE(x)
        e.tag = _T_FLOAT
        memcpy(e.small, &d, 8)
        e.n = 8
        return None
    elif x is None:
        e.tag = _T_NONE
        return None
    elif x is True:
        e.tag = _T_TRUE
        return None
    elif x is False:
        e.tag = _T_FALSE
        return None
    if key:
        data = _pd_pdumps(x, 5)       # the same bytes in every process: no cloudpickle
    else:
        if _pd_value_dumps is None:
            from ember.objects._codec import pickle_bytes
            _pd_value_dumps = pickle_bytes
        data = _pd_value_dumps(x)
    e.tag = _T_PICKLE
    e.p = PyBytes_AS_STRING(data)
    e.n = PyBytes_GET_SIZE(data)
    return data


cdef object _pd_decode(const uint8_t *b, uint32_t n):
    """The object of an encoded value (tag byte first), or raise ValueError."""
    cdef long long v
    cdef double d
    cdef uint8_t tag = b[0]
    if tag == _T_INT and n == 9:
        memcpy(&v, b + 1, 8)
        return PyLong_FromLongLong(v)
    if tag == _T_STR:
        return PyUnicode_DecodeUTF8(<const char *>b + 1, n - 1, NULL)
    if tag == _T_BYTES:
        return PyBytes_FromStringAndSize(<const char *>b + 1, n - 1)
    if tag == _T_PICKLE:
        return _pd_ploads(PyBytes_FromStringAndSize(<const char *>b + 1, n - 1))
    if tag == _T_FLOAT and n == 9:
        memcpy(&d, b + 1, 8)
        return PyFloat_FromDouble(d)
    if n == 1:
        if tag == _T_NONE:
            return None
        if tag == _T_TRUE:
            return True
        if tag == _T_FALSE:
            return False
    raise ValueError(f"an entry with an unknown encoding (tag {tag}, {n} bytes)")


cdef class _PoolTable:
    """The table and its lock, as one process sees them; PoolDict
    (ember.objects.shared) subclasses it with the GS object around it."""

    cdef SyncObject _lk          # the ember Lock that guards the table
    cdef Allocation _tab         # the table's pool allocation
    cdef void *_t                # the table in this process (NULL until bound)
    cdef uint32_t _cap
    cdef uint32_t _ssz
    cdef Py_ssize_t _room        # bytes of key + value (tags included) a slot holds

    @staticmethod
    def _table_size(capacity, slot_size):
        """Bytes of a table (0 for sizes it cannot have)."""
        return ember_pdict_size(capacity, slot_size)

    @staticmethod
    def _init_table(Allocation alloc, uint32_t capacity, uint32_t slot_size):
        """Write an empty table of ``capacity`` slots of ``slot_size`` bytes
        in ``alloc``."""
        alloc._check_open("init a table in")
        _check_rc(ember_pdict_init(ember_pool_ptr(alloc._owner._pool, alloc._a.offset),
                                   alloc._a.size, capacity, slot_size),
                  f"cannot make a dict table of {capacity} slots of {slot_size} bytes in "
                  f"{alloc._a.size} bytes")

    def _bind(self, SyncObject lock not None, Allocation alloc not None):
        """Use the table in ``alloc``, guarded by ``lock`` (an ember Lock)."""
        cdef uint32_t cap = 0, ssz = 0
        cdef void *t
        if lock._kind != EMBER_SYNC_LOCK:
            raise TypeError(f"a dict table is guarded by an ember Lock, not {type(lock).__name__}")
        alloc._check_open("attach a table in")
        lock._check()
        t = ember_pool_ptr(alloc._owner._pool, alloc._a.offset)
        rc = ember_pdict_check(t, alloc._a.size, &cap, &ssz)
        if rc != EMBER_OK:
            raise DescriptorError(f"cannot attach a dict table at offset {alloc._a.offset} of pool "
                                  f"{alloc._owner.name!r}: the allocation does not hold one "
                                  f"[{ember_rc_str(rc).decode()}]")
        self._lk, self._tab, self._t = lock, alloc, t
        self._cap, self._ssz = cap, ssz
        self._room = ssz - EMBER_PDICT_SLOT_HDR

    @property
    def capacity(self):
        return self._cap

    @property
    def slot_size(self):
        return self._ssz

    # ---------------------------------------------------------------- locking
    cdef int _acquire(self) except -1:
        cdef uint32_t died = 0
        cdef ember_rc_t rc
        cdef SyncObject lk = self._lk
        if self._t == NULL:
            raise _SharedObjectError("this dict handle is not bound to a table")
        if lk._p == NULL or lk._pool._pool == NULL or self._tab._owner._pool == NULL:
            lk._check()
            raise _SharedObjectError(f"{self._desc()}: its pool is detached or destroyed")
        rc = ember_lock_acquire(lk._p, 0, 0, &died)
        if rc == EMBER_OK:
            return 0
        if rc == EMBER_ERR_TIMEOUT:
            rc = ember_lock_spin_acquire(lk._p, _SPINS, &died)
            if rc == EMBER_ERR_TIMEOUT:
                rc = _lock_wait(lk, -1, &died)
        if rc == EMBER_OK:
            return 0
        if rc == EMBER_SYNC_OWNER_DIED:
            # A holder died mid-operation: entries are safe (pooldict.c,
            # DEATH); only the key count may be off by one.
            ember_pdict_recount(self._t)
            ember_lock_consistent(lk._p)
            return 0
        lk._rc(rc, "acquire")
        return -1

    cdef inline int _release(self) except -1:
        cdef ember_rc_t rc = ember_lock_release(self._lk._p)
        if rc != EMBER_OK:
            self._lk._rc(rc, "release")
        return 0

    cdef str _desc(self):
        return f"dict table (pool {self._tab._owner._label!r}, offset {self._tab._a.offset})"

    # ---------------------------------------------------------------- errors
    cdef object _too_big(self, Py_ssize_t n):
        return ValueError(f"key and value take {n} bytes encoded: more than a slot of this "
                          f"dict holds ({self._room}); make it with a larger slot_size")

    cdef object _full(self):
        return _ObjectError(f"{self!r} is full: it holds at most {self._cap * 3 // 4} keys "
                            f"(capacity={self._cap})")

    cdef object _torn(self, key):
        return _SharedObjectError(f"{self!r}: the entry of key {key!r} was torn by a process that "
                                  f"died while writing it (set or delete the key to repair it)")

    # ---------------------------------------------------------------- lookups
    cdef object _lookup(self, key, bint delete, default):
        """The value of ``key`` (removed too if ``delete``); ``default`` if
        absent, or KeyError when ``default`` is the _MISSING marker."""
        cdef _Enc k
        cdef uint8_t stack[_PD_STACK]
        cdef uint8_t *buf = stack
        cdef uint32_t vl = 0
        cdef ember_rc_t rc
        keep = _pd_encode(key, &k, True)
        if k.n + 2 > self._room:
            rc = EMBER_ERR_NOT_FOUND       # it could not have been stored
        else:
            self._acquire()
            rc = ember_pdict_get(self._t, k.tag, k.p, <uint32_t>k.n, buf, _PD_STACK, &vl)
            if rc == EMBER_ERR_BUFFER_TOO_SMALL:
                buf = <uint8_t *>PyMem_RawMalloc(vl)     # no GC, no Python code: safe under the lock
                if buf == NULL:
                    self._release()
                    raise MemoryError(f"cannot copy a value of {vl} bytes out of {self._desc()}")
                rc = ember_pdict_get(self._t, k.tag, k.p, <uint32_t>k.n, buf, vl, &vl)
            if delete and (rc == EMBER_OK or rc == EMBER_ERR_CORRUPT):
                ember_pdict_delete(self._t, k.tag, k.p, <uint32_t>k.n)
            self._release()
        try:
            if rc == EMBER_OK:
                return _pd_decode(buf, vl)
            if rc == EMBER_ERR_NOT_FOUND:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            if rc == EMBER_ERR_CORRUPT:
                raise self._torn(key)
            _check_rc(rc, f"{self._desc()}: cannot read key {key!r}")
        finally:
            if buf != stack:
                PyMem_RawFree(buf)

    def __getitem__(self, key):
        return self._lookup(key, False, _MISSING)

    def get(self, key, default=None):
        return self._lookup(key, False, default)

    def pop(self, key, *default):
        """Remove ``key`` and return its value (one step under the lock)."""
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        return self._lookup(key, True, default[0] if default else _MISSING)

    def __contains__(self, key):
        cdef _Enc k
        keep = _pd_encode(key, &k, True)
        if k.n + 2 > self._room:
            return False
        self._acquire()
        found = ember_pdict_contains(self._t, k.tag, k.p, <uint32_t>k.n)
        self._release()
        return bool(found)

    # ---------------------------------------------------------------- changes
    cdef int _store(self, key, value, bint only_new, int *existed) except -1:
        cdef _Enc k, v
        cdef ember_rc_t rc
        keep_k = _pd_encode(key, &k, True)
        keep_v = _pd_encode(value, &v, False)
        if k.n + v.n + 2 > self._room:
            raise self._too_big(k.n + v.n + 2)
        self._acquire()
        rc = ember_pdict_set(self._t, k.tag, k.p, <uint32_t>k.n, v.tag, v.p, <uint32_t>v.n,
                             only_new, existed)
        self._release()
        if rc == EMBER_OK:
            return 0
        if rc == EMBER_ERR_FULL:
            raise self._full()
        _check_rc(rc, f"{self._desc()}: cannot set key {key!r}")
        return -1

    def __setitem__(self, key, value):
        self._store(key, value, False, NULL)

    def setdefault(self, key, default=None):
        """The value of ``key``, set to ``default`` first if absent (atomic:
        two processes that race get the same value)."""
        cdef int existed = 0
        while True:
            try:
                return self._lookup(key, False, _MISSING)
            except KeyError:
                pass
            self._store(key, default, True, &existed)
            if not existed:
                return default

    def __delitem__(self, key):
        cdef _Enc k
        cdef ember_rc_t rc = EMBER_ERR_NOT_FOUND
        keep = _pd_encode(key, &k, True)
        if k.n + 2 <= self._room:
            self._acquire()
            rc = ember_pdict_delete(self._t, k.tag, k.p, <uint32_t>k.n)
            self._release()
        if rc == EMBER_ERR_NOT_FOUND:
            raise KeyError(key)
        _check_rc(rc, f"{self._desc()}: cannot delete key {key!r}")

    def clear(self):
        self._acquire()
        ember_pdict_clear(self._t)
        self._release()

    def __len__(self):
        self._acquire()
        n = ember_pdict_len(self._t)
        self._release()
        return n

    def _snapshot(self):
        """``[(key, value), ...]`` of every entry, copied under the lock in
        one step (SharedObjectError if an entry is torn)."""
        cdef uint8_t *out = NULL
        cdef size_t outlen = 0, pos = 0
        cdef uint32_t n = 0, torn = 0, kl, vl
        cdef ember_rc_t rc
        self._acquire()
        rc = ember_pdict_snapshot(self._t, &out, &outlen, &n, &torn)
        self._release()
        if rc != EMBER_OK:
            _check_rc(rc, f"{self._desc()}: cannot copy the entries")
        try:
            if torn:
                raise _SharedObjectError(f"{self!r}: {torn} entr{'y was' if torn == 1 else 'ies were'}"
                                         f" torn by a process that died while writing "
                                         f"{'it' if torn == 1 else 'them'} (set or delete the "
                                         f"key to repair it)")
            items = []
            while pos < outlen:
                memcpy(&kl, out + pos, 4)
                memcpy(&vl, out + pos + 4, 4)
                pos += 8
                items.append((_pd_decode(out + pos, kl), _pd_decode(out + pos + kl, vl)))
                pos += kl + vl
            return items
        finally:
            free(out)


cdef object _MISSING = object()
