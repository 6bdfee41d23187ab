"""Named synchronization objects: ``ember.Lock``, ``RLock``, ``Semaphore``,
``BoundedSemaphore``, ``Event``, ``Barrier``, ``Condition``, ``Value``,
``Array``.

Thin wrappers over :mod:`ember.sync_c` (every operation is the C object's
own: the hot methods are the C object's bound methods, stored on the
wrapper; see docs/sync.md for the semantics and what a holder's death
does), allocated in the runtime's default pool and registered with GS
(:mod:`.naming`): ``name=``, ``lifetime=``, ``exist_ok=``,
``cls.attach(name, timeout=...)``, pickling into other processes (the
receiver's handle holds its own reference), ``detach()`` and ``destroy()``.
"""
import pickle

from ..sync_c import _sync, sharedctypes
from ..exceptions import ObjectError
from . import _codec, naming

__all__ = ["Lock", "RLock", "Semaphore", "BoundedSemaphore", "Event", "Barrier", "Condition",
           "Value", "Array"]


def _kind_of(obj):
    return obj.__reduce__()[1][1]


def _rebuild(cls, rec, token=None, claim=True):
    if claim:
        naming.claim(rec["o_uid"], token)
    try:
        obj = cls._from_desc(rec["desc"])
    except BaseException:
        naming.release(rec["o_uid"])
        raise
    return cls._wrap(obj, rec)


def _raw(obj):
    """The sync_c object under a wrapper (or the object itself)."""
    return obj._obj if isinstance(obj, _Named) else obj


class _Named:
    """A handle of a registered object: the C object (``_obj``), GS's
    record, the reference this handle holds."""

    _KIND = None
    _HOT = ()          # methods bound straight to the C object's

    @classmethod
    def _wrap(cls, obj, rec):
        self = object.__new__(cls)
        self._obj = obj
        self._rec = rec
        for m in cls._HOT:
            if m not in cls.__dict__:       # a Value's field of that name (a property) comes first
                setattr(self, m, getattr(obj, m))
        self._hold = naming.hold(self, rec["o_uid"])
        return self

    @classmethod
    def _from_desc(cls, desc):
        return pickle.loads(desc)

    @staticmethod
    def _desc(obj):
        # by value what names __main__ (a Barrier's action defined in the
        # script): the other processes' __main__ is not the creator's
        try:
            return _codec.pickle_bytes(obj)
        except Exception:
            # cloudpickle refuses some (a ctypes Structure of __main__, a
            # Value's type): by reference, as before, usable where it is found
            return pickle.dumps(obj, 5)

    @staticmethod
    def _parts(obj):
        return [["sync", _kind_of(obj), obj.sdesc]]

    @staticmethod
    def _free(obj):
        obj.destroy()

    @classmethod
    def _register(cls, obj, name, lifetime, exist_ok, extra_parts=()):
        desc = cls._desc(obj)
        try:
            rec = naming.create(cls._KIND, name, lifetime, desc, (),
                                cls._parts(obj) + list(extra_parts), exist_ok=exist_ok)
        except BaseException:
            cls._free(obj)
            raise
        if rec["desc"] != desc:
            # exist_ok found a live one: a handle of that one; ours is not needed
            cls._free(obj)
            obj = cls._from_desc(rec["desc"])
        return cls._wrap(obj, rec)

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
        return _rebuild(cls, naming.attach(name, cls._KIND, timeout), claim=False)

    @property
    def name(self):
        return self._rec["name"]

    @property
    def o_uid(self):
        return self._rec["o_uid"]

    @property
    def lifetime(self):
        return self._rec["lifetime"]

    def __reduce__(self):
        # the reference travels with the pickle: lent now, claimed by the receiver
        return (_rebuild, (type(self), self._rec, naming.lend(self._rec["o_uid"])))

    def __getattr__(self, attr):
        if attr.startswith("__") or attr in ("_obj", "_rec", "_hold"):
            raise AttributeError(attr)
        return getattr(self._obj, attr)

    def __enter__(self):
        return self._obj.__enter__()

    def __exit__(self, *exc):
        return self._obj.__exit__(*exc)

    def __repr__(self):
        name = f" {self._rec['name']!r}" if self._rec.get("name") else ""
        return f"<ember.{type(self).__name__}{name} o_uid={self._rec['o_uid']} {self._obj!r}>"

    def detach(self):
        """Drop this handle's reference (the object lives on while others
        hold it, or until its lifetime ends)."""
        self._hold.drop()

    def destroy(self):
        """End the object now for everyone (GS frees its memory); only when
        nobody uses it any more."""
        naming.destroy(self._rec["o_uid"])
        self._hold.drop()


class Lock(_Named):
    """``multiprocessing.Lock`` in pool memory: ``Lock(*, name=None,
    lifetime=None, exist_ok=False)``.  A dead holder's lock is taken over
    with ``OwnerDied`` (docs/sync.md).

    The operations are those of :class:`ember.sync_c.Lock`
    (:meth:`~ember.sync_c.Lock.acquire`, :meth:`~ember.sync_c.Lock.release`,
    ``locked``, ``consistent``, ``with lock:``); this handle adds the name,
    the lifetime, :meth:`attach`, :meth:`detach` and :meth:`destroy`, as do
    the handles of every other object on this page.

    Raises
    ------
    ember.ObjectError
        ``name`` is taken by a live object (without ``exist_ok``), or a bad
        ``name`` or ``lifetime`` (the same for every object on this page).
    ember.PoolExhausted
        No room in the runtime's default pool.
    ember.GlobalServicesError
        Not inside a runtime.
    """

    _KIND = "Lock"
    _HOT = ("acquire", "release", "locked")

    def __new__(cls, *, name=None, lifetime=None, exist_ok=False):
        return cls._register(_sync.Lock(pool=naming.default_pool()), name, lifetime, exist_ok)


class RLock(_Named):
    """``multiprocessing.RLock`` in pool memory (``OwnerDied`` as Lock);
    operations: :class:`ember.sync_c.RLock`."""

    _KIND = "RLock"
    _HOT = ("acquire", "release")

    def __new__(cls, *, name=None, lifetime=None, exist_ok=False):
        return cls._register(_sync.RLock(pool=naming.default_pool()), name, lifetime, exist_ok)


class Semaphore(_Named):
    """``multiprocessing.Semaphore(value=1)``; a dead holder's permits are
    counted back (``reclaim=False``: not).  Operations:
    :class:`ember.sync_c.Semaphore`."""

    _KIND = "Semaphore"
    _HOT = ("acquire", "release", "get_value")

    def __new__(cls, value=1, *, name=None, lifetime=None, exist_ok=False, reclaim=True):
        return cls._register(_sync.Semaphore(value, pool=naming.default_pool(), reclaim=reclaim),
                             name, lifetime, exist_ok)


class BoundedSemaphore(_Named):
    """``multiprocessing.BoundedSemaphore(value=1)``; operations:
    :class:`ember.sync_c.BoundedSemaphore`."""

    _KIND = "BoundedSemaphore"
    _HOT = ("acquire", "release", "get_value")

    def __new__(cls, value=1, *, name=None, lifetime=None, exist_ok=False):
        return cls._register(_sync.BoundedSemaphore(value, pool=naming.default_pool()),
                             name, lifetime, exist_ok)


class Event(_Named):
    """``multiprocessing.Event``; operations (``set``, ``clear``,
    ``is_set``, ``wait``): :class:`ember.sync_c.Event`."""

    _KIND = "Event"
    _HOT = ("is_set", "set", "clear", "wait")

    def __new__(cls, *, name=None, lifetime=None, exist_ok=False):
        return cls._register(_sync.Event(pool=naming.default_pool()), name, lifetime, exist_ok)


class _ActionWithHandle:
    """In a Barrier's record (GS's copy, what ``attach`` gets), in place of
    an action that plain pickle refuses: one holding something that
    multiprocessing pickles only while it starts a child (a heap
    ``BufferWrapper``, a ``RawValue``, a stdlib lock).  Such an action
    travels with each pickled handle instead, pickled by whatever pickles
    the handle (a child's start: ``ForkingPickler``, fds through the
    resource sharer), as the stdlib's Barrier carries its action."""

    def __call__(self):
        raise ObjectError("this Barrier's action pickles only with a handle (it holds something "
                          "plain pickle refuses): pass the Barrier itself to the process, not "
                          "its name")


def _rebuild_barrier(rec, token, action):
    self = _rebuild(Barrier, rec, token)
    self._obj._restore((action, self._obj._extra()[1]))
    self._carry = True
    return self


class Barrier(_Named):
    """``threading.Barrier(parties, action=None, timeout=None)`` across
    processes; a party that dies while waiting breaks it.  Operations:
    :class:`ember.sync_c.Barrier`.

    The action travels with the barrier's record (plain pickle); one that
    plain pickle refuses travels with each pickled handle instead (so a
    child started with the Barrier gets it, and ``attach`` by name, or
    ``exist_ok`` finding it, raises ``ObjectError``)."""

    _KIND = "Barrier"
    _HOT = ("wait", "abort", "reset")
    _carry = False      # the action travels with this handle (not in the record)

    def __new__(cls, parties, action=None, timeout=None, *, name=None, lifetime=None,
                exist_ok=False):
        obj = _sync.Barrier(parties, action, timeout, pool=naming.default_pool())
        carry = False
        if action is not None:
            try:
                pickle.dumps(action, 5)
            except Exception:
                carry = True
                obj._restore((_ActionWithHandle(), timeout))     # what the record holds
        self = cls._register(obj, name, lifetime, exist_ok)
        if self._obj is not obj:                # exist_ok found another: as attach
            return self._by_name()
        if carry:
            obj._restore((action, timeout))
            self._carry = True
        return self

    @classmethod
    def attach(cls, name, timeout=None):
        return super().attach(name, timeout)._by_name()

    def _by_name(self):
        """This handle, got by name: refused if the action is not in the record."""
        if type(self._obj._extra()[0]) is _ActionWithHandle:
            self.detach()
            raise ObjectError(f"Barrier {self.name!r}: its action pickles only with a handle (it "
                              f"holds something plain pickle refuses): it cannot be attached by "
                              f"name")
        return self

    def __reduce__(self):
        if not self._carry:
            return super().__reduce__()
        return (_rebuild_barrier, (self._rec, naming.lend(self._rec["o_uid"]),
                                   self._obj._extra()[0]))


class Condition(_Named):
    """``multiprocessing.Condition(lock=None)``: ``lock`` an ember Lock or
    RLock (default: a new RLock, freed with the Condition).  A lock passed in
    is its own object: keep a handle of it while the Condition is used.
    Operations: :class:`ember.sync_c.Condition`."""

    _KIND = "Condition"
    _HOT = ("acquire", "release", "wait", "wait_for", "notify", "notify_all")

    def __new__(cls, lock=None, *, name=None, lifetime=None, exist_ok=False):
        pool = naming.default_pool()
        own = None
        if lock is None:
            own = _sync.RLock(pool=pool)
        try:
            cond = _sync.Condition(own if own is not None else _raw(lock), pool=pool)
        except BaseException:
            if own is not None:
                own.destroy()
            raise
        # the lock handle the user gave travels with the Condition (and keeps it alive)
        extra = [["sync", _kind_of(own), own.sdesc]] if own is not None else []
        return cls._register((cond, lock), name, lifetime, exist_ok, extra)

    @classmethod
    def _wrap(cls, pair, rec):
        self = super()._wrap(pair[0], rec)
        self._lock_handle = pair[1]
        return self

    @staticmethod
    def _parts(pair):
        return _Named._parts(pair[0])

    @staticmethod
    def _free(pair):
        cond, lock = pair
        raw_lock = cond.lock
        cond.destroy()
        if lock is None and not raw_lock.closed:
            raw_lock.destroy()

    @property
    def lock(self):
        return self._lock_handle if self._lock_handle is not None else self._obj.lock


# ---------------------------------------------------------------- Value/Array
class _SharedNamed(_Named):
    _HOT = ("get_obj", "get_lock", "acquire", "release")

    @staticmethod
    def _free(obj):
        sharedctypes.Value.destroy(obj)     # (the method: a Structure's field may be destroy)

    @staticmethod
    def _parts(obj):
        parts = [["alloc", obj._alloc.sdesc]]
        if obj._lock is not None and obj._own_lock:
            parts.append(["sync", _kind_of(obj._lock), obj._lock.sdesc])
        return parts

    @property
    def value(self):
        return self._obj.value

    @value.setter
    def value(self, v):
        self._obj.value = v

    def __len__(self):
        return len(self._obj)

    def __getitem__(self, i):
        return self._obj[i]

    def __setitem__(self, i, v):
        self._obj[i] = v


def _lock_arg(lock):
    return lock if isinstance(lock, bool) or lock is None else _raw(lock)


class Value(_SharedNamed):
    """``multiprocessing.Value(typecode_or_type, *args, lock=True)`` in the
    default pool (``name=``, ``lifetime=``, ``exist_ok=`` as every object).
    See :class:`ember.sync_c.Value`."""

    _KIND = "Value"

    @classmethod
    def _wrap(cls, obj, rec):
        # a Structure's or Union's: the handle class with its fields
        return _Named._wrap.__func__(sharedctypes.with_fields(cls, obj._spec), obj, rec)

    def _field(self, f):
        return self._obj._field(f)

    def _set_field(self, f, v):
        self._obj._set_field(f, v)

    def __reduce__(self):
        return (_rebuild, (Value, self._rec, naming.lend(self._rec["o_uid"])))

    def __new__(cls, typecode_or_type, *args, lock=True, name=None, lifetime=None,
                exist_ok=False):
        return cls._register(sharedctypes.Value(typecode_or_type, *args, lock=_lock_arg(lock),
                                                pool=naming.default_pool()),
                             name, lifetime, exist_ok)


class Array(_SharedNamed):
    """``multiprocessing.Array(typecode_or_type, size_or_initializer, *,
    lock=True)`` in the default pool.  See :class:`ember.sync_c.Array`."""

    _KIND = "Array"

    def __new__(cls, typecode_or_type, size_or_initializer, *, lock=True, name=None,
                lifetime=None, exist_ok=False):
        return cls._register(sharedctypes.Array(typecode_or_type, size_or_initializer,
                                                lock=_lock_arg(lock), pool=naming.default_pool()),
                             name, lifetime, exist_ok)

    @property
    def raw(self):
        return self._obj.raw

    @raw.setter
    def raw(self, v):
        self._obj.raw = v
