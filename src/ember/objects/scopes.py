"""Scopes: objects that are torn down together (a job, a session).

``with ember.scope("job-17") as s:`` -- every object created inside the
``with`` (in this thread) or with ``scope=s`` -- shared objects
(``ember.serve``, ``ember.dict``/``list``/``Namespace``), queues, pipes,
locks, ... of :mod:`ember.objects`, and nested scopes -- is destroyed when
the scope closes: at the end of the ``with``, by ``s.close()`` from any
process, or, for a scope with ``lifetime="owner"``, when the process that
made it ends (even by SIGKILL).

A scope is itself a shared object (:mod:`.shared`): its host process keeps
the list of members, and destroys them (newest first) when it is closed or
when GS ends the scope object (its owner died): the host watches its
request channel, which GS destroys with the object.  Members are ended with
``ObjectDestroy`` whatever their own lifetime (their memory is freed: use
no handle of them afterwards).
"""
import threading

from ..exceptions import ObjectError, ObjectTimeout, SharedObjectError
from . import naming

__all__ = ["Scope", "scope", "current", "dict", "list", "Namespace"]

_builtin_dict, _builtin_list = dict, list

_local = threading.local()


def _stack():
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


def current():
    """The innermost open scope of this thread's ``with`` blocks, or None."""
    s = _stack()
    return s[-1] if s else None


class _Members:
    """What a scope's host serves: the o_uids of its members."""
    _ember_what = "scope"  # what `ember ps` calls its host (shared._host_what)

    def __init__(self):
        self.members = []
        self.closed = False

    def add(self, o_uid):
        if self.closed:
            raise SharedObjectError("the scope is closed")
        if o_uid not in self.members:
            self.members.append(o_uid)

    def get(self):
        return _builtin_list(self.members)

    def close_members(self):
        """Destroy every member, newest first; return their o_uids."""
        self.closed = True
        done = []
        while self.members:
            o_uid = self.members.pop()
            try:
                naming.destroy(o_uid)
            except Exception:
                pass              # already ended (its own lifetime, or a nested scope)
            done.append(o_uid)
        return done

    def __ember_close__(self):
        self.close_members()


def _kind_hook(rec):
    """Called by :func:`naming.create` for every object made in this
    process: objects made inside a ``with scope`` join it."""
    if rec.get("kind") in ("Shared", "SharedReply"):
        return                    # shared objects join their scope themselves
    s = current()
    if s is not None and not s._closed:
        s._adopt(rec["o_uid"])


naming._created_hooks.append(_kind_hook)


class Scope:
    """A group of objects destroyed together.  ``Scope(name=None, *,
    lifetime="runtime" | "owner", parent=...)``; use :func:`scope`."""

    def __init__(self, name=None, *, lifetime="runtime", parent=None):
        from . import shared
        if lifetime not in ("runtime", "owner"):
            raise ObjectError(f"a scope's lifetime must be 'runtime' or 'owner', got {lifetime!r}")
        if parent is None:
            parent = current()
        self._closed = False
        self._ref = shared.serve(_Members(), name=name and f"scope:{name}",
                                 lifetime=lifetime, scope=parent,
                                 exposed=["add", "get", "close_members"])
        self._p = self._ref.proxy()
        self._name = name

    @classmethod
    def attach(cls, name, timeout=None):
        """The open scope called ``name`` (from any process), waiting up to
        ``timeout`` seconds (None: forever) until it is opened.

        Raises
        ------
        ember.ObjectTimeout
            No scope of that name was opened within ``timeout``.
        """
        from . import shared
        self = cls.__new__(cls)
        self._closed = False
        self._ref = None
        self._p = shared.connect(f"scope:{name}", timeout)
        self._name = name
        return self

    name = property(lambda self: self._name)

    @property
    def o_uid(self):
        """The scope's unique id in the runtime (global services')."""
        return self._p._o_uid

    def _check_open(self):
        if self._closed:
            raise SharedObjectError(f"scope {self._name!r} is closed")

    def _adopt(self, o_uid):
        self._p.add(o_uid)

    def adopt(self, obj):
        """Make ``obj`` (anything with an ``o_uid``: a Queue, Lock, Pipe
        end, SharedRef, Scope, ...) a member: it is destroyed with the
        scope.  Returns ``obj``.

        Raises
        ------
        TypeError
            ``obj`` has no ``o_uid``.
        ember.SharedObjectError
            The scope is closed.
        """
        self._check_open()
        o_uid = getattr(obj, "o_uid", None)
        if o_uid is None and hasattr(obj, "_o_uid"):
            o_uid = obj._o_uid
        if not isinstance(o_uid, int):
            raise TypeError(f"cannot put {type(obj).__name__} in a scope: it has no o_uid")
        self._adopt(o_uid)
        return obj

    def members(self):
        """The o_uids of the live members, oldest first."""
        return self._p.get()

    def close(self):
        """Destroy every member (newest first), then the scope.  From any
        process; idempotent."""
        if self._closed:
            return
        self._closed = True
        from . import shared
        try:
            done = self._p.close_members()
        except SharedObjectError:
            done = []              # it had ended already (its owner died, or closed elsewhere)
        o_uid = self._p._o_uid
        try:
            naming.destroy(o_uid)
        except ObjectError:
            pass
        self._p._close()
        for m in done + [o_uid]:
            shared._reap(m)
        if self._ref is not None:
            self._ref._hold.drop()

    def __enter__(self):
        _stack().append(self)
        return self

    def __exit__(self, *exc):
        st = _stack()
        if st and st[-1] is self:
            st.pop()
        self.close()

    def __reduce__(self):
        return (_rebuild, (self._name, self._p))

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"<ember.Scope {self._name!r} {state}>"


def _rebuild(name, p):
    self = Scope.__new__(Scope)
    self._closed = False
    self._ref = None
    self._p = p
    self._name = name
    return self


def scope(name=None, *, lifetime="runtime"):
    """A new :class:`Scope` (use it with ``with``).  ``lifetime="owner"``:
    it also closes when this process ends.

    Raises
    ------
    ember.ObjectError
        ``lifetime`` is not ``"runtime"`` or ``"owner"``, or ``name`` is
        taken by a live object.
    """
    return Scope(name, lifetime=lifetime)


# ------------------------------------------------------------------ shared containers
class _Namespace:
    """A plain attribute bag (``multiprocessing.managers.Namespace``)."""
    _ember_what = "Namespace"  # what `ember ps` calls its host (shared._host_what)

    def __init__(self, **kwds):
        self.__dict__.update(kwds)

    def __repr__(self):
        items = [f"{k}={v!r}" for k, v in self.__dict__.items() if not k.startswith("_")]
        return f"Namespace({', '.join(sorted(items))})"


_DICT_EXPOSED = ["__contains__", "__delitem__", "__getitem__", "__iter__", "__len__",
                 "__setitem__", "clear", "copy", "get", "items", "keys", "pop", "popitem",
                 "setdefault", "update", "values"]
_LIST_EXPOSED = ["__add__", "__contains__", "__delitem__", "__getitem__", "__iter__", "__len__",
                 "__mul__", "__reversed__", "__rmul__", "__setitem__", "append", "count",
                 "extend", "index", "insert", "pop", "remove", "reverse", "sort", "__imul__",
                 "__iadd__"]


def _make_dict(*args, **kwargs):
    d = _builtin_dict(*args, **kwargs)
    return _SharedDict(d)


class _SharedDict(_builtin_dict):
    """The host's dict: views come back as lists (they cannot travel)."""
    _ember_what = "dict"  # what `ember ps` calls its host (shared._host_what)

    def keys(self):
        return _builtin_list(super().keys())

    def values(self):
        return _builtin_list(super().values())

    def items(self):
        return _builtin_list(super().items())

    def copy(self):
        return _builtin_dict(self)


class _SharedList(_builtin_list):
    _ember_what = "list"  # what `ember ps` calls its host (shared._host_what)

    def __iadd__(self, other):
        self.extend(other)
        return None          # the proxy stays the proxy

    def __imul__(self, n):
        _builtin_list.__imul__(self, n)
        return None


def _soft(name, exist_ok, make):
    """``make()``, or with ``exist_ok=True`` and a ``name`` a proxy of the
    live shared object of that name (a soft create, as ``Queue(...,
    exist_ok=True)``: the object found keeps its lifetime and is not made a
    member of the caller's scope)."""
    from . import shared
    if not exist_ok or name is None:
        return make()
    for _ in range(3):
        try:
            return shared.connect(name, timeout=0)
        except ObjectTimeout:
            pass
        try:
            return make()
        except ObjectError as exc:
            if "is already named" not in str(exc):
                raise
            # made by another process meanwhile: take that one
    return shared.connect(name, timeout=0)


def dict(*args, name=None, lifetime=None, scope=None, in_pool=False, capacity=4096,
         slot_size=256, exist_ok=False, **kwargs):
    """A shared dict: a served ``dict`` (a proxy with the dict's methods),
    or with ``in_pool=True`` a :class:`~ember.objects.shared.PoolDict` that
    every process reads and writes directly in pool memory (``capacity``
    slots of ``slot_size`` bytes; see its limits).  ``exist_ok=True`` with
    a ``name``: the live object of that name if there is one (not made a
    member of the scope: it is not this call's), else a new one."""
    from . import shared
    if in_pool:
        if scope is None:
            scope = current()
        if scope is not None:
            scope._check_open()
        d = shared.PoolDict(*args, name=name, lifetime=lifetime, capacity=capacity,
                            slot_size=slot_size, exist_ok=exist_ok, **kwargs)
        if scope is not None and d._made:
            scope.adopt(d)
        return d
    return _soft(name, exist_ok, lambda: shared.create(
        _SharedDict, *args, name=name, lifetime=lifetime, scope=scope, exposed=_DICT_EXPOSED,
        **kwargs).proxy_and_close())


def list(sequence=(), *, name=None, lifetime=None, scope=None, exist_ok=False):
    """A shared list (a served ``list``); ``exist_ok`` as :func:`dict`."""
    from . import shared
    return _soft(name, exist_ok, lambda: shared.create(
        _SharedList, sequence, name=name, lifetime=lifetime, scope=scope,
        exposed=_LIST_EXPOSED).proxy_and_close())


def Namespace(*, name=None, lifetime=None, scope=None, exist_ok=False, **kwds):  # noqa: N802
    """A shared namespace: attribute gets and sets go to the host;
    ``exist_ok`` as :func:`dict`."""
    from . import shared
    return _soft(name, exist_ok, lambda: shared.create(
        _Namespace, name=name, lifetime=lifetime, scope=scope, exposed=[],
        **kwds).proxy_and_close())
