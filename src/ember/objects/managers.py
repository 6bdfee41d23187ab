"""``ember.Manager()``: ``multiprocessing.managers.SyncManager``'s API over
ember's shared objects and scopes.

- A started manager is a :class:`~ember.objects.scopes.Scope` with lifetime
  ``"owner"``: everything it made is destroyed by ``shutdown()``, at the
  end of ``with``, or when the process that started it ends.
- ``dict()``, ``list()``, ``Namespace()`` and registered types are shared
  objects (:mod:`.shared`): each has a host process of its own (one
  ``multiprocessing`` server holds them all), and the methods are
  called through ember proxies (picklable; usable from any process of the
  runtime and nested in one another).
- ``Queue``, ``JoinableQueue``, ``Lock``, ``RLock``, ``Semaphore``,
  ``BoundedSemaphore``, ``Condition``, ``Event``, ``Barrier``, ``Value``,
  ``Array`` are ember's own objects (:mod:`.queues`, :mod:`.sync`), which
  need no server: every process operates on them directly.
- ``register(typeid, callable, proxytype=None, exposed=None,
  method_to_typeid=None, create_method=True)`` as in the stdlib: a method
  named in ``method_to_typeid`` (or the proxytype's ``_method_to_typeid_``)
  returns a proxy of its result, which stays in the host of the object that
  made it, exposed as ``typeid``'s registration says (``proxytype`` itself
  is not used: ember proxies forward every exposed method).
"""
import enum
from builtins import dict as _builtin_dict
from multiprocessing.context import ProcessError as _MPProcessError

from ..exceptions import ProcessError as _ProcessError
from . import scopes, shared

__all__ = ["BaseManager", "SyncManager", "Manager", "Namespace", "ProcessError"]


class ProcessError(_ProcessError, _MPProcessError):
    """A manager used in the wrong state: both ``ember.ProcessError`` and
    the ``multiprocessing.ProcessError`` the stdlib's managers raise."""

Namespace = scopes._Namespace


class _State(enum.Enum):
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2


def _state_error(state):
    if state is _State.STARTED:
        return ProcessError("Already started server")
    if state is _State.SHUTDOWN:
        return ProcessError("Manager has shut down")
    return ProcessError(f"Unknown state {state!r}")


class BaseManager:
    """``multiprocessing.managers.BaseManager``'s API (``address``,
    ``authkey`` and ``serializer`` are accepted for compatibility: ember's
    objects are reached through the runtime, not a socket)."""

    _registry = {}

    def __init__(self, address=None, authkey=None, serializer="pickle", ctx=None, *,
                 shutdown_timeout=1.0):
        if serializer not in ("pickle", "xmlrpclib"):
            raise ValueError(f"unknown serializer {serializer!r}")
        self._address = address
        self._ctx = ctx
        self._state = _State.INITIAL
        self._scope = None
        self._shutdown_timeout = shutdown_timeout
        self._pools = []

    @property
    def address(self):
        return self._address

    def start(self, initializer=None, initargs=()):
        """Make the manager's scope (``initializer`` is called here)."""
        if self._state is not _State.INITIAL:
            raise _state_error(self._state)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if initializer is not None:
            initializer(*initargs)
        self._scope = scopes.Scope(None, lifetime="owner", parent=None)
        self._state = _State.STARTED

    def connect(self):
        raise ProcessError("ember managers are not reached by address: pass their proxies "
                           "to other processes (they are picklable)")

    def get_server(self):
        raise ProcessError("ember managers have no server object")

    def join(self, timeout=None):
        """Compatibility: nothing to wait for."""

    def shutdown(self):
        """Destroy every object this manager made (its Pools are
        terminated)."""
        if self._state is _State.STARTED:
            self._state = _State.SHUTDOWN
            pools, self._pools = self._pools, []
            for p in pools:
                try:
                    p.terminate()
                except Exception:
                    pass
            self._scope.close()
        else:
            self._state = _State.SHUTDOWN

    def _number_of_objects(self):
        return len(self._scope.members()) if self._state is _State.STARTED else 0

    def _debug_info(self):
        """What the manager holds, one line per object (the stdlib's shows
        its server's table)."""
        if self._state is not _State.STARTED:
            return ""
        from . import naming
        lines = []
        for o_uid in self._scope.members():
            try:
                rec = naming.query(o_uid)
                lines.append(f"  o_uid {o_uid}: {rec.get('kind')} {rec.get('name') or ''}".rstrip())
            except Exception as exc:
                lines.append(f"  o_uid {o_uid}: ({type(exc).__name__}: {exc})")
        return "\n".join(lines)

    def __enter__(self):
        if self._state is _State.INITIAL:
            self.start()
        if self._state is not _State.STARTED:
            raise _state_error(self._state)
        return self

    def __exit__(self, *exc):
        self.shutdown()

    def _create(self, typeid, *args, **kwds):
        if self._state is not _State.STARTED:
            raise ProcessError("Manager has shut down" if self._state is _State.SHUTDOWN
                               else "Manager has not been started")
        factory, exposed = self._registry[typeid][:2]
        if factory is None:
            raise ProcessError(f"typeid {typeid!r} has no callable: it cannot be created")
        return factory, exposed

    @classmethod
    def register(cls, typeid, callable=None, proxytype=None, exposed=None,
                 method_to_typeid=None, create_method=True):
        """Register ``typeid``: ``manager.<typeid>(*args, **kwds)`` then
        hosts ``callable(*args, **kwds)`` and returns its proxy."""
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if not isinstance(typeid, str):
            raise TypeError(f"typeid must be a str, not {type(typeid).__name__}")
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for k, v in method_to_typeid.items():
                if type(k) is not str or type(v) is not str:
                    raise TypeError(f"method_to_typeid must map str to str, got {k!r}: {v!r}")
            method_to_typeid = dict(method_to_typeid)
        cls._registry[typeid] = (callable, tuple(exposed) if exposed else None,
                                 method_to_typeid, proxytype)
        if create_method:
            def temp(self, /, *args, **kwds):
                factory, exp = self._create(typeid)
                mtt = self._registry[typeid][2]
                types = {t: (r[1], r[2]) for t, r in self._registry.items()}
                ref = shared._start(factory, args, kwds, None, None, self._scope, exp, 60.0, 1,
                                    shared._returns(mtt, types))
                return ref.proxy_and_close()
            temp.__name__ = typeid
            setattr(cls, typeid, temp)


class SyncManager(BaseManager):
    """``multiprocessing.managers.SyncManager``: shared ``dict``, ``list``
    and ``Namespace`` as ember shared objects; queues, locks, events,
    values and arrays as ember's own objects (no server round trip)."""

    def _native(self, cls, *args, **kwds):
        if self._state is not _State.STARTED:
            raise ProcessError("Manager has shut down" if self._state is _State.SHUTDOWN
                               else "Manager has not been started")
        obj = cls(*args, **kwds)
        self._scope.adopt(obj)
        return obj

    def dict(self, *args, **kwds):
        self._create("dict")
        # as the stdlib's: every keyword is an item (name=, exist_ok=, ... are
        # options of ember.dict only)
        return scopes.dict(_builtin_dict(*args, **kwds), scope=self._scope)

    def list(self, sequence=()):
        self._create("list")
        return scopes.list(sequence, scope=self._scope)

    def __getattr__(self, name):
        # A type registered on multiprocessing's own SyncManager
        # (``multiprocessing.managers.SyncManager.register("Counter",
        # Counter)``, as programs do before ``multiprocessing.Manager()``,
        # which is this class under the "ember" method): registered here the
        # same way at its first use.  Only the names the stdlib's class has
        # a method for (not its create_method=False entries, not ours).
        from multiprocessing import managers as _mpm
        entry = None if name.startswith("_") else \
            _mpm.SyncManager.__dict__.get("_registry", {}).get(name)
        if entry is None or name in type(self)._registry or \
                not callable(getattr(_mpm.SyncManager, name, None)):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        factory, exposed, method_to_typeid, proxytype = entry
        SyncManager.register(name, factory, proxytype, exposed, method_to_typeid)
        return getattr(self, name)

    def Namespace(self, **kwds):  # noqa: N802
        self._create("Namespace")
        return scopes.Namespace(scope=self._scope, **kwds)

    def Queue(self, maxsize=0):  # noqa: N802
        from .queues import Queue
        return self._native(Queue, maxsize)

    def JoinableQueue(self, maxsize=0):  # noqa: N802
        from .queues import JoinableQueue
        return self._native(JoinableQueue, maxsize)

    def Lock(self):  # noqa: N802
        from .sync import Lock
        return self._native(Lock)

    def RLock(self):  # noqa: N802
        from .sync import RLock
        return self._native(RLock)

    def Semaphore(self, value=1):  # noqa: N802
        from .sync import Semaphore
        return self._native(Semaphore, value)

    def BoundedSemaphore(self, value=1):  # noqa: N802
        from .sync import BoundedSemaphore
        return self._native(BoundedSemaphore, value)

    def Condition(self, lock=None):  # noqa: N802
        from .sync import Condition
        return self._native(Condition, lock)

    def Event(self):  # noqa: N802
        from .sync import Event
        return self._native(Event)

    def Barrier(self, parties, action=None, timeout=None):  # noqa: N802
        from .sync import Barrier
        return self._native(Barrier, parties, action, timeout)

    def Value(self, typecode, value, lock=True):  # noqa: N802
        from .sync import Value
        return self._native(Value, typecode, value, lock=lock)

    def Array(self, typecode, sequence, lock=True):  # noqa: N802
        from .sync import Array
        return self._native(Array, typecode, sequence, lock=lock)

    def Pool(self, processes=None, initializer=None, initargs=(),  # noqa: N802
             maxtasksperchild=None):
        """A process pool of the manager's context (``"ember"``'s: its
        queues are ember's), made in *this* process and terminated by
        ``shutdown()``.  Unlike the stdlib's ``PoolProxy`` it cannot be
        passed to another process."""
        if self._state is not _State.STARTED:
            raise ProcessError("Manager has shut down" if self._state is _State.SHUTDOWN
                               else "Manager has not been started")
        ctx = self._ctx
        if ctx is None:
            import multiprocessing
            ctx = multiprocessing.get_context()
        try:
            pool = ctx.Pool(processes, initializer, initargs, maxtasksperchild)
        except (ValueError, TypeError) as exc:
            # the stdlib's manager makes the pool in its server: bad arguments
            # come back as multiprocessing.managers.RemoteError
            from multiprocessing.managers import RemoteError

            class PoolArgumentError(RemoteError, type(exc)):
                __module__ = __name__

                def __str__(self):
                    return str(self.args[0])

            raise PoolArgumentError(f"Pool{(processes, initializer, initargs, maxtasksperchild)}"
                                    f": {type(exc).__name__}: {exc}") from exc
        self._pools.append(pool)
        return pool


SyncManager._registry = {n: (True, None, None, None) for n in ("dict", "list", "Namespace")}


def Manager(*args, **kwargs):  # noqa: N802
    """A started :class:`~ember.objects.managers.SyncManager`
    (``multiprocessing.Manager()``)."""
    m = SyncManager(*args, **kwargs)
    m.start()
    return m
