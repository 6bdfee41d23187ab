"""Value and Array in pool memory (``multiprocessing.sharedctypes`` shape).

A Value/Array is a ctypes object laid over a pool allocation (zero-copy, no
pointer stored in shared memory), with an ember Lock or RLock that
``with v:``, ``get_lock()``, ``acquire()``/``release()`` and the
element accessors use.  It pickles to the allocation's descriptor (plus the
type and its lock), so another process attaches the same memory.

Unlike multiprocessing, ``lock=False`` still returns the wrapper (so it can
be pickled to another process); its accessors then take no lock and
``get_lock()`` raises.
"""
import ctypes
import weakref

from ember.exceptions import SyncError
from ember.pools_c import Allocation, Pool
from ember.sync_c._sync import Lock, RLock

__all__ = ["Value", "Array"]

typecode_to_type = {
    "c": ctypes.c_char, "u": ctypes.c_wchar,
    "b": ctypes.c_byte, "B": ctypes.c_ubyte,
    "h": ctypes.c_short, "H": ctypes.c_ushort,
    "i": ctypes.c_int, "I": ctypes.c_uint,
    "l": ctypes.c_long, "L": ctypes.c_ulong,
    "q": ctypes.c_longlong, "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float, "d": ctypes.c_double,
}


def _ctype(typecode_or_type):
    if isinstance(typecode_or_type, str):
        try:
            return typecode_to_type[typecode_or_type]
        except KeyError:
            raise ValueError(f"unknown typecode {typecode_or_type!r}; expected one of "
                             f"{''.join(typecode_to_type)} or a ctypes type") from None
    if isinstance(typecode_or_type, type) and issubclass(
            typecode_or_type, (ctypes._SimpleCData, ctypes.Structure, ctypes.Union, ctypes.Array)):
        if issubclass(typecode_or_type, ctypes._Pointer) or typecode_or_type in (
                ctypes.c_char_p, ctypes.c_wchar_p, ctypes.c_void_p):
            raise TypeError("pointer types cannot live in shared memory")
        return typecode_or_type
    raise TypeError(f"typecode_or_type must be a typecode string or a ctypes type, "
                    f"got {typecode_or_type!r}")


def field_names(ctype):
    """The names of the fields of a Structure or Union type (``_fields_``:
    multiprocessing's synchronized wrapper makes a property of each), but
    those that start with ``_`` (the wrapper's own private names; reach
    them through ``get_obj()``); empty for any other type."""
    if isinstance(ctype, type) and issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        return frozenset(f[0] for f in getattr(ctype, "_fields_", ()) if f[0][:1] != "_")
    return frozenset()


_field_classes = weakref.WeakKeyDictionary()   # Structure/Union type -> {base: class with its fields}


def with_fields(base, ctype):
    """``base``, or for a Structure or Union ``ctype`` a subclass of it
    (made once per type) with a property for each field, read and written
    through ``_field``/``_set_field`` (under the lock), as multiprocessing's
    synchronized wrapper makes them.  Properties, not ``__getattr__``: a
    field named as one of ``base``'s own attributes (``value``,
    ``get_obj``, ``close``, ...) is the field, and the method stays
    reachable through the class (``Value.close(v)``)."""
    base = getattr(base, "_fields_base", base)
    names = field_names(ctype)
    if not names:
        return base
    classes = _field_classes.setdefault(ctype, {})
    cls = classes.get(base)
    if cls is None:
        def field(f):
            return property(lambda self: self._field(f), lambda self, v: self._set_field(f, v))
        ns = {f: field(f) for f in names}
        ns.update(__module__=base.__module__, __qualname__=base.__qualname__, _fields_base=base)
        cls = classes[base] = type(base.__name__, (base,), ns)
    return cls


def _lock_for(lock, pool):
    if lock is True:
        return RLock(pool=pool)
    if lock is False or lock is None:
        return None
    if isinstance(lock, (Lock, RLock)):
        return lock
    raise TypeError(f"lock must be True, False or an ember Lock/RLock, got {type(lock).__name__}")


class _Shared:
    """Common part: the allocation, the ctypes object over it, the lock."""

    def _init(self, spec, alloc, lock):
        self._spec = spec                  # picklable: a ctypes type, or (element type, length)
        ctype = spec[0] * spec[1] if isinstance(spec, tuple) else spec
        self._alloc = alloc
        self._view = memoryview(alloc)
        self._obj = ctype.from_buffer(self._view)
        self._lock = lock

    @classmethod
    def _attach(cls, spec, sdesc, lock):
        self = object.__new__(with_fields(cls, spec))
        self._init(spec, Allocation.attach(sdesc), lock)
        self._own_lock = False
        return self

    def __reduce__(self):
        self._check()
        cls = getattr(type(self), "_fields_base", type(self))     # Value, not its with_fields
        return (cls._attach, (self._spec, self._alloc.sdesc, self._lock))

    def _check(self):
        if self._obj is None:
            raise SyncError(f"{type(self).__name__}: closed or destroyed")

    def get_obj(self):
        self._check()
        return self._obj

    def get_lock(self):
        return self._get_lock()

    # the methods below call _get_lock: a Structure's field may be get_lock
    def _get_lock(self):
        if self._lock is None:
            raise SyncError(f"{type(self).__name__} was made with lock=False: it has no lock")
        return self._lock

    def acquire(self, block=True, timeout=None):
        return self._get_lock().acquire(block, timeout)

    def release(self):
        self._get_lock().release()

    def __enter__(self):
        return self._get_lock().__enter__()

    def __exit__(self, *exc):
        return self._get_lock().__exit__(*exc)

    def _locked(self):
        return self._lock if self._lock is not None else _NOLOCK

    @property
    def sdesc(self):
        self._check()
        return self._alloc.sdesc

    def close(self):
        """Release this handle's view of the memory without freeing it (the
        pool can then be detached); later use raises SyncError."""
        if self._obj is not None:
            self._obj = None
            self._view.release()

    def destroy(self):
        """Free the memory (and the lock if this object made it); only when
        nobody uses it any more.  Drop references to get_obj() first."""
        self._check()
        self._obj = None
        self._view.release()
        self._alloc.free()
        if self._lock is not None and self._own_lock:
            self._lock.destroy()

    def __repr__(self):
        if self._obj is None:
            return f"<ember.{type(self).__name__} closed>"
        return f"<ember.{type(self).__name__} wrapper for {self._obj!r}>"


class _NoLock:
    def __enter__(self):
        return True

    def __exit__(self, *exc):
        return None


_NOLOCK = _NoLock()


class Value(_Shared):
    """``Value(typecode_or_type, *args, lock=True, pool)``: a ctypes value in
    pool memory, ``.value`` read and written under the lock.  Of a Structure
    or Union, an instance of a subclass with its fields as attributes
    (``with_fields``)."""

    def __new__(cls, typecode_or_type=None, *args, lock=True, pool=None):
        return object.__new__(with_fields(cls, typecode_or_type))

    def __init__(self, typecode_or_type, *args, lock=True, pool=None):
        if not isinstance(pool, Pool):
            raise TypeError("Value() needs pool=: the ember.pools_c.Pool it lives in")
        ctype = _ctype(typecode_or_type)
        alloc = pool.alloc(max(1, ctypes.sizeof(ctype)))
        self._init(ctype, alloc, _lock_for(lock, pool))
        self._own_lock = lock is True
        ctypes.memset(ctypes.addressof(self._obj), 0, ctypes.sizeof(ctype))
        if args:
            tmp = ctype(*args)
            ctypes.memmove(ctypes.addressof(self._obj), ctypes.addressof(tmp), ctypes.sizeof(ctype))

    @property
    def value(self):
        self._check()
        with self._locked():
            return self._obj.value

    @value.setter
    def value(self, v):
        self._check()
        with self._locked():
            self._obj.value = v

    def _field(self, name):
        self._check()
        with self._locked():
            return getattr(self._obj, name)

    def _set_field(self, name, v):
        self._check()
        with self._locked():
            setattr(self._obj, name, v)


class Array(_Shared):
    """``Array(typecode_or_type, size_or_initializer, *, lock=True, pool)``:
    a ctypes array in pool memory; items and slices under the lock."""

    def __init__(self, typecode_or_type, size_or_initializer, *, lock=True, pool=None):
        if not isinstance(pool, Pool):
            raise TypeError("Array() needs pool=: the ember.pools_c.Pool it lives in")
        etype = _ctype(typecode_or_type)
        if isinstance(size_or_initializer, int):
            if size_or_initializer < 0:
                raise ValueError(f"Array size must be >= 0, got {size_or_initializer}")
            n, init = size_or_initializer, None
        else:
            init = list(size_or_initializer)
            n = len(init)
        ctype = etype * n
        alloc = pool.alloc(max(1, ctypes.sizeof(ctype)))
        self._init((etype, n), alloc, _lock_for(lock, pool))
        self._own_lock = lock is True
        ctypes.memset(ctypes.addressof(self._obj), 0, ctypes.sizeof(ctype))
        if init is not None:
            self._obj[:] = init

    def __len__(self):
        self._check()
        return len(self._obj)

    def __getitem__(self, i):
        self._check()
        with self._locked():
            return self._obj[i]

    def __setitem__(self, i, value):
        self._check()
        with self._locked():
            self._obj[i] = value

    @property
    def value(self):
        """For a char array, the bytes up to the first NUL (as multiprocessing)."""
        self._check()
        with self._locked():
            return self._obj.value

    @value.setter
    def value(self, v):
        self._check()
        with self._locked():
            self._obj.value = v

    @property
    def raw(self):
        self._check()
        with self._locked():
            return self._obj.raw

    @raw.setter
    def raw(self, v):
        self._check()
        with self._locked():
            self._obj.raw = v
