"""Names, rendezvous and lifetimes of the Python-layer objects (client side
of the GS object registry, :mod:`ember.globalservices.objects`).

Every Queue, Pipe end, Lock, ... made by :mod:`ember.objects` is a record in
GS: its kind, a descriptor (made and read here only; GS never decodes it),
the channels GS made for it, its lifetime and its holders.  Each handle a
process has (made, attached by name, or unpickled) holds one reference;
dropping the handle (garbage collection) or ``detach()`` gives it back; a
process that ends gives back all of its own.

- ``lifetime="refcount"`` (the default of unnamed objects): the object ends
  when no handle is left anywhere (dead holders are counted out by GS);
- ``"runtime"`` (the default of named objects): until ``destroy()`` or
  teardown;
- ``"owner"``: when the creating process ends (or ``destroy()``).
"""
import os
import threading
import weakref

from .. import messages as _m
from ..exceptions import ObjectError, ObjectTimeout

__all__ = ["create", "attach", "add_ref", "release", "destroy", "get_list", "query",
           "default_pool", "hold", "lend", "claim", "LIFETIMES", "ObjectError", "ObjectTimeout"]

LIFETIMES = ("runtime", "owner", "refcount")


def _call(msg_cls, *fields):
    from ..globalservices._client import connection
    return connection().call(msg_cls, *fields)


def create(kind, name=None, lifetime=None, desc=b"", channels=(), parts=(), children=(),
           exist_ok=False):
    """Register a new object; return GS's record (dict: o_uid, name, kind,
    lifetime, desc, channels (descriptors), and children (o_uids) when asked
    for).  ``channels``: descriptors of channels made for it in the default
    pool; ``parts``: its other memory there (``["sync", kind, sdesc]``,
    ``["alloc", sdesc]``); all are destroyed with the object.  ``exist_ok=True`` with the name of a live object of the same kind
    returns that one (soft create); it is not adopted by the caller's
    scope, which owns only what it created."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ObjectError(f"name must be a non-empty str or None, got {name!r}")
    if lifetime is not None and lifetime not in LIFETIMES:
        raise ObjectError(f"lifetime must be one of {', '.join(map(repr, LIFETIMES))}, "
                          f"got {lifetime!r}")
    rec = _call(_m.ObjectCreate, kind, name, lifetime, bytes(desc),
                [bytes(c) for c in channels], [list(p) for p in parts],
                [[k, list(c)] for k, c in children], bool(exist_ok))
    # A soft create that found a live object did not create it: the hooks
    # (a scope adopting what is made inside it) are only for new objects.
    existed = rec.pop("existed", False)
    if _created_hooks and not existed:
        _run_created_hooks(rec)
    return rec


#: Called with GS's record of each object this process creates (the scopes
#: of :mod:`.scopes` adopt objects made inside a ``with scope``).
_created_hooks = []


def _run_created_hooks(rec):
    for hook in _created_hooks:
        hook(rec)


def attach(name, kind=None, timeout=None):
    """GS's record of object ``name``, waiting until some process creates
    it; :class:`ObjectTimeout` (a TimeoutError) after ``timeout`` seconds
    (kept by GS).  Adds a reference for this process."""
    if not isinstance(name, str) or not name:
        raise ObjectError(f"attach needs a non-empty str name, got {name!r}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ObjectError(f"timeout must be a number >= 0 or None, got {timeout!r}")
        timeout = float(timeout)
    return _call(_m.ObjectAttach, name, kind, timeout)


def add_ref(o_uid):
    return _call(_m.ObjectAddRef, o_uid)


def lend(o_uid):
    """Pickling a handle: lend one reference of this process to whoever
    unpickles it; returns the loan's token (see :func:`claim`)."""
    return _call(_m.ObjectLend, o_uid)


def claim(o_uid, token):
    """Unpickling a handle: take over the loan ``token`` (or add a
    reference if it is gone)."""
    return _call(_m.ObjectClaim, o_uid, token)


def release(o_uid):
    """Drop one of this process's references (the object ends with its
    last one if its lifetime is "refcount").  False if it had already
    ended."""
    return _call(_m.ObjectRelease, o_uid)


def destroy(ident):
    """End the object now (any lifetime): GS destroys its channels and
    frees its memory.  Only when nobody uses it any more."""
    return _call(_m.ObjectDestroy, ident)


def get_list():
    """``[(o_uid, name or None, kind, lifetime), ...]`` of the live objects
    (a Pipe is listed once, not its two ends)."""
    return [tuple(r) for r in _call(_m.ObjectList)]


def query(ident):
    """GS's record of an object (by o_uid or name), with ``holders``: how
    many references are held."""
    return _call(_m.ObjectQuery, ident)


# ------------------------------------------------------------ the default pool
_pool = None
_pool_key = None
_pool_lock = threading.Lock()


def default_pool():
    """The runtime's default pool, attached in this process (cached per
    runtime: the descriptor comes from the process's environment)."""
    global _pool, _pool_key
    from .. import _env
    key = (os.getpid(), _env.get(_env.DEFAULT_POOL))
    p = _pool
    if p is not None and _pool_key == key and not p.closed:
        return p
    with _pool_lock:
        if _pool is None or _pool_key != key or _pool.closed:
            from ..pools_c import Pool
            if key[1]:
                _pool = Pool.attach(_env.decode(key[1]))
            else:
                from ..globalservices import pool as gs_pool
                _pool = Pool.attach(gs_pool.default().sdesc)
            _pool_key = key
        return _pool


def forget_default_pool():
    """This process leaves its runtime (``ember.shutdown()``): unmap the
    cached default pool, so that it is neither kept mapped after the
    runtime is gone nor collected attached at interpreter exit (which warns
    ``unclosed ember Pool ... (m_uid 0x...01)``).  Handles still pointing
    into it (queues, channels) raise from then on instead of touching it.
    If memoryviews of its allocations are still exported, it stays mapped
    for them (unmapping would pull the memory from under them), and it and
    the handles into it are collected quietly (``Pool._leave``)."""
    global _pool, _pool_key
    with _pool_lock:
        p, _pool, _pool_key = _pool, None, None
    if p is None or p.closed:
        return
    try:
        p._leave()
    except Exception:
        pass


# ------------------------------------------------------------ references
# Garbage collection may run inside any code, a GS call included: a
# reference is therefore never released from a finalizer directly, but
# queued to one thread per process that does the calls.
_rel_q = None
_rel_pid = None
_rel_lock = threading.Lock()


def _runtime_key():
    """What identifies the runtime this process is in now (compared, never
    decoded): the descriptor of GS's channel from the environment.  Called
    on every proxy call, so it reads ``os.environ``'s underlying bytes dict
    (no str encode/decode; CPython on POSIX keeps it as ``_data``)."""
    ov = _env_mod._overrides
    if ov is not None:
        return ov.get(_GS_CH)
    if _environ_data is not None:
        v = _environ_data.get(_GS_CH_B)
        if v is None:
            return None
        last = _last_key
        if v is not last[0]:             # changed (os.environ keeps the object until then)
            last = (v, v.decode("utf-8", "surrogateescape"))
            globals()["_last_key"] = last
        return last[1]
    return os.environ.get(_GS_CH)


_last_key = (None, None)


from .. import _env as _env_mod  # noqa: E402

_GS_CH = _env_mod.GS_CH
_GS_CH_B = _GS_CH.encode()
_environ_data = getattr(os.environ, "_data", None)
if not isinstance(_environ_data, dict) or not all(type(k) is bytes for k in list(_environ_data)[:1]):
    _environ_data = None


def _releaser(q):
    from ..globalservices import _client
    while True:
        o_uid, key = q.get()
        with _rel_call_lock:      # not while the process leaves its runtime (leaving())
            if key != _runtime_key():
                continue  # made in a runtime this process has left: nothing to give back
            # Only over the connection this process has: the handle's making
            # or claiming made one.  None: the process has left the runtime;
            # a connection made here would attach GS's pool and channel anew
            # for a call that can only fail, and be collected attached.
            conn = _client._conn
            if conn is None or conn.pid != os.getpid():
                continue
            try:
                conn.call(_m.ObjectRelease, o_uid, timeout=RELEASE_TIMEOUT)
            except Exception:
                pass      # the runtime is gone, or the object ended: nothing to give back
            del conn      # not kept (with its handles) until the next release


#: Held by the release thread during a call, and by :func:`leaving`.
_rel_call_lock = threading.Lock()


def leaving():
    """Held while this process leaves its runtime (``ember.shutdown()``):
    waits for a release call in progress on the release thread to finish
    (its reply channel is in GS's pool, which the leave unmaps: a thread
    inside it makes the unmap fail, and everything of the runtime stays
    attached), and keeps the next one from starting until the process has
    left (it then finds no connection, or another runtime, and skips)."""
    return _rel_call_lock


def _after_fork_in_child():
    global _rel_call_lock
    _rel_call_lock = threading.Lock()    # the parent's release thread may hold it


os.register_at_fork(after_in_child=_after_fork_in_child)


#: Seconds the release thread waits for GS's answer (it must never hang on
#: a runtime that went away).
RELEASE_TIMEOUT = 10.0


def _release_later(o_uid, pid, key):
    global _rel_q, _rel_pid
    if pid != os.getpid():
        return        # a forked child's copy of the parent's handle: not ours
    q = _rel_q
    if q is None or _rel_pid != pid:
        with _rel_lock:
            if _rel_q is None or _rel_pid != pid:
                # (imported here: the queue module, with heapq, would be
                # in every process that imports this, and in the template)
                from _queue import SimpleQueue
                _rel_q, _rel_pid = SimpleQueue(), pid
                threading.Thread(target=_releaser, args=(_rel_q,), daemon=True,
                                 name="ember-object-release").start()
            q = _rel_q
    q.put((o_uid, key))


class _Hold:
    """One GS reference held by a handle: given back when the handle is
    collected (asynchronously) or by :meth:`drop` (now)."""

    __slots__ = ("o_uid", "_fin", "_key", "_pid")

    def __init__(self, handle, o_uid):
        self.o_uid = o_uid
        self._pid = os.getpid()
        self._key = _runtime_key()
        self._fin = weakref.finalize(handle, _release_later, o_uid, os.getpid(), self._key)
        self._fin.atexit = False

    def drop(self):
        """Give the reference back now; True if this call did it."""
        if self._fin.detach() is None:
            return False
        if self._key != _runtime_key() or self._pid != os.getpid():
            return False     # the runtime it was made in is gone / a forked copy
        try:
            release(self.o_uid)
        except Exception:
            pass
        return True

    @property
    def alive(self):
        return self._fin.alive


def hold(handle, o_uid):
    """Attach a reference (already counted by GS) to ``handle``."""
    return _Hold(handle, o_uid)
