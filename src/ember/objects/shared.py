"""Shared objects: host an object once in a managed process, call it from
every process of the runtime by name (``ember.serve``, ``ember.connect``).

See docs/shared-objects.md.  In short:

- ``ember.serve(obj, name=..., lifetime=..., scope=...)`` starts an
  :class:`ember.Process` (the *host*) running :func:`_host_main`: it
  unpickles (or, with :func:`create`, constructs) the object and serves it.
  The object is a GS object of kind ``"Shared"`` (:mod:`.naming`): its name,
  lifetime and holders are GS's, and GS made its *request channel*.
- A :class:`Proxy` (``ember.connect(name)``, ``ref.proxy()``, unpickled)
  sends each method call / attribute get as one message on the request
  channel and waits for the answer on a *reply channel* of its own thread
  (a refcount GS object, so that GS frees it when the caller ends).
  Messages are pickle protocol 5 through :mod:`._codec`: small ones inline
  in the channel slot, large buffers (numpy arrays) out of band in a pool
  block, received without a copy.
- The host serves requests **one at a time, in arrival order** (callers from
  many processes and threads are interleaved request by request).
- An exception in the host is re-raised in the caller as itself with the
  host's traceback as ``__cause__`` (an ``ember.RemoteTraceback``), or as
  ``ember.RemoteError`` if it cannot travel.
- The object ends as its lifetime says (GS then destroys the request
  channel, and the host, which watches it, exits); a host that dies makes
  every call raise ``ember.ProcessDied`` (checked every :data:`SLICE`
  seconds while a caller waits), never hang.
"""
import os
import pickle
import threading
import time
import weakref

from .. import _roles
from ..channels_c import Channel, ChannelClosed, ChannelEmpty, ChannelFull
from ..exceptions import (ChannelError, ObjectError, OwnerDied, ProcessDied, RemoteError,
                          RemoteTraceback, SharedObjectError)
from . import _codec, naming


__all__ = ["serve", "create", "connect", "proxy", "SharedRef", "Proxy", "PoolDict", "KIND",
           "SLICE"]

KIND = "Shared"
#: Slots of a request channel (callers wait for room beyond that).
REQ_CAPACITY = 1024
#: Slots of a caller's reply channel.
REPLY_CAPACITY = 8
#: Channel block size: messages up to 240 bytes travel inline.
BLOCK = 256
#: Seconds between two checks that the host is alive while a caller waits
#: (and between two checks by the host that its object still exists).
SLICE = 0.05
#: Seconds a channel spins before it sleeps (request/reply traffic).
SPIN = 50e-6

# request ops
_CALL, _GET, _SET, _HELLO, _DEL, _VALUE = 0, 1, 2, 3, 4, 5
# reply status
_OK, _ERR, _RERR = 0, 1, 2

_OPNAME = {_CALL: "{}()", _GET: "getting attribute {!r}", _SET: "setting attribute {!r}",
           _DEL: "deleting attribute {!r}", _VALUE: "_getvalue(){}"}


# ------------------------------------------------------------------ encoding
# A round trip is two pickles and two unpickles: their common cases are
# made here in one step, with what the codec (:mod:`._codec`) would add
# skipped when it cannot apply -- the same bytes it would produce.
_pdumps = pickle.dumps
_ploads = pickle.loads
_FLAT = _codec.FLAT


def _enc(obj, pool):
    """bytes or a pool Allocation, as ``_codec.dumps(obj, pool)``: one
    pickling pass that catches out-of-band buffers, and the codec (which
    pickles again its own way) only when there are some, or when the
    pickle names ``__main__``, or the C pickler refuses the object."""
    bufs = []
    try:
        data = _pdumps(obj, 5, buffer_callback=bufs.append)
    except Exception:
        return _codec.dumps(obj, pool)
    if bufs or data.find(b"__main__") >= 0:
        return _codec.dumps(obj, pool)
    return data


def _enc_call(cid, seq, op, name, args, kwargs, pool):
    """A request: plain pickle when the arguments are at most two flat
    values (int, str, ... : nothing the codec would treat otherwise)."""
    n = len(args)
    if not kwargs and (n == 0 or (type(args[0]) in _FLAT and (
            n == 1 or (n == 2 and type(args[1]) in _FLAT)))):
        return _pdumps((cid, seq, op, name, args, kwargs), 5)
    return _enc((cid, seq, op, name, args, kwargs), pool)


def _dec(data):
    """The object of a message, as ``_codec.loads`` (which raises the
    MessageError for what does not unpickle)."""
    if type(data) is bytes:
        try:
            return _ploads(data)
        except (pickle.UnpicklingError, EOFError) as exc:
            raise _codec.not_ours(data, exc) from None
    return _codec.loads(data)


def _type_name(exc):
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _exc_reply(seq, exc, pool):
    import traceback
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next
                                            if exc.__traceback__ else None))
    try:
        msg = _enc((seq, _ERR, exc, tb), pool)
        _dec(msg) if type(msg) is bytes else None      # it must also come back to life
        return msg
    except BaseException as perr:
        tb += (f"\n(the exception could not be sent back as itself: "
               f"{type(perr).__name__}: {perr})\n")
        return pickle.dumps((seq, _RERR, (_type_name(exc), str(exc), tb)), 5)


# ------------------------------------------------------------------ host side
def _start_time(pid):
    """The process's start time (clock ticks since boot), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return None
    return int(fields[19])


def _alive(pid, start):
    return _start_time(pid) == start


def _public_names(obj):
    names = []
    for n in dir(obj):
        if n.startswith("_"):
            continue
        try:
            if callable(getattr(obj, n)):
                names.append(n)
        except Exception:
            pass
    return names


_SPECIAL = ("__getitem__", "__setitem__", "__delitem__", "__len__", "__contains__",
            "__iter__", "__call__", "__enter__", "__exit__", "__add__", "__iadd__",
            "__mul__", "__rmul__", "__imul__", "__reversed__", "__str__", "__repr__")


def _exposed_of(obj, exposed):
    if exposed is None:
        return _public_names(obj) + [n for n in _SPECIAL if n not in ("__str__", "__repr__")
                                     and _defines(type(obj), n)]
    return list(exposed)


def _defines(cls, n):
    """``cls`` or a base class defines the special method ``n``: looked up
    in the classes, not with getattr, which finds the metaclass's
    ``type.__call__`` on every class (every proxy was then callable, and an
    attribute holding a proxy was taken for a method)."""
    return any(callable(k.__dict__.get(n)) for k in cls.__mro__)


def _host_main(factory, args, kwargs, exposed, boot_out, boot_in, threads=1, returns=None):
    """The host process: make the object, tell the creator what it exposes,
    wait for the GS record, serve until the object ends.  ``returns``:
    ``(method_to_typeid, {typeid: (exposed, method_to_typeid)})``."""
    try:
        obj = factory(*args, **kwargs)
        exposed = _exposed_of(obj, exposed)
        ok = pickle.dumps(("ok", exposed, os.getpid(), _start_time(os.getpid())), 5)
    except BaseException as exc:
        import traceback
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            data = _codec.pickle_inband(("err", exc, tb))
            pickle.loads(data)
        except BaseException:
            data = pickle.dumps(("rerr", (_type_name(exc), str(exc), tb)))
        boot_out.send(data)
        return None
    boot_out.send(ok)
    try:
        rec = pickle.loads(boot_in.recv(timeout=120))
    except ChannelEmpty:
        return None
    if rec is None:
        return None
    boot_out.send(b"started")
    boot_in.detach()
    boot_out.detach()
    try:
        _serve_loop(obj, rec, frozenset(exposed) | {"__repr__", "__str__"}, threads, returns)
    finally:
        # The creator let go of this Process's result channel once we
        # started: there is no result to send.
        import sys
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)


class _NotExposed(Exception):
    pass


class _Target:
    """An object the host serves on one request channel: the object it was
    started with, or one a method listed in ``method_to_typeid`` returned
    (served by this same host, as multiprocessing's server does)."""

    __slots__ = ("obj", "exposed", "mtt", "req", "hold")

    def __init__(self, obj, exposed, mtt, req, hold=None):
        self.obj, self.exposed, self.mtt, self.req, self.hold = obj, exposed, mtt or {}, req, hold


class _Host:
    """What the serve loop shares with the calls it runs."""

    def __init__(self, rec, pool, types):
        self.info = pickle.loads(rec["desc"])
        self.pool = pool
        self.types = types or {}
        self.subs = {}            # request channel's c_uid -> _Target (served results)
        self.lock = threading.Lock()

    def serve_result(self, value, typeid):
        """Serve ``value`` (a method's result listed in method_to_typeid)
        from this host as a new refcount object; return a proxy of it
        (pickled into the reply: the caller takes its reference over)."""
        exposed, mtt = self.types.get(typeid, (None, None))
        methods = _exposed_of(value, exposed)
        info = dict(self.info, methods=methods, typeid=typeid)
        req = Channel.create(self.pool, capacity=REQ_CAPACITY, block_size=BLOCK)
        try:
            rec = naming.create(KIND, None, "refcount", pickle.dumps(info, 5), [req.sdesc])
        except BaseException:
            req.destroy()
            raise
        req.set_spin(SPIN)
        t = _Target(value, frozenset(methods) | {"__repr__", "__str__"}, mtt, req)
        with self.lock:
            self.subs[req.c_uid] = t
        return _make_proxy(rec)


def _serve_loop(obj, rec, exposed, threads=1, returns=None):
    req = Channel.attach(rec["channels"][0])
    req.set_spin(SPIN)
    pool = req.pool
    mtt, types = returns or (None, None)
    host = _Host(rec, pool, types)
    main = _Target(obj, exposed, mtt, req)
    clients = {}
    pool_ex = None
    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor
        pool_ex = ThreadPoolExecutor(threads, thread_name_prefix="ember-shared")
    try:
        while True:
            if host.subs:
                got = _next_request(host, main)
                if got is None:
                    continue
                t, data = got
                if t is None:
                    break       # the object ended: GS closed / destroyed its channel
            else:
                t = main
                try:
                    data = req.recv_auto(SLICE * 4)
                except ChannelEmpty:
                    continue
                except (ChannelClosed, ChannelError):
                    break       # the object ended: GS closed / destroyed its channel
            try:
                # (a block's view: the codec gets a view of its own, which
                # it releases when the request does not decode, so that ours
                # still reads the request's first bytes then; no copy)
                cid, seq, op, name, args, kwargs = _dec(data if type(data) is bytes else data[:])
            except BaseException as exc:
                if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                    raise
                _undecodable(clients, data if type(data) is bytes else bytes(data[:_PEEK]), exc)
                continue
            del data
            if op == _HELLO:
                if cid not in clients:
                    try:
                        ch = Channel.attach(args[0])
                        ch.set_spin(SPIN)
                        clients[cid] = ch
                    except Exception:
                        pass
                continue
            if pool_ex is None:
                if op == _CALL and name in t.exposed and name != "__iter__" and not t.mtt:
                    # the fast path of a method call (the same as _answer's)
                    try:
                        value = getattr(t.obj, name)(*args, **kwargs)
                    except BaseException as exc:
                        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
                            raise
                        msg = _exc_reply(seq, exc, pool)
                    else:
                        del args, kwargs
                        msg = _result_msg(seq, value, pool, name)
                        del value
                    _reply(clients, cid, msg)
                    continue
                _answer(host, t, clients, cid, seq, op, name, args, kwargs)
            else:
                pool_ex.submit(_answer, host, t, clients, cid, seq, op, name, args, kwargs)
            del args, kwargs
    finally:
        if pool_ex is not None:
            pool_ex.shutdown(wait=False, cancel_futures=True)   # a call may never return
        close = getattr(obj, "__ember_close__", None)
        if close is not None:
            close()
        for ch in clients.values():
            try:
                ch.detach()
            except Exception:
                pass
        for sub in list(host.subs.values()) + [main]:
            try:
                sub.req.detach()
            except Exception:
                pass


def _next_request(host, main):
    """With served results: wait on every request channel.  Returns
    (target, data), None (nothing yet), or (None, None) when the main
    object ended.  A served result whose channel GS ended (its last proxy
    was dropped) is forgotten."""
    from ..channels_c import wait_any
    req = main.req
    with host.lock:
        subs = list(host.subs.values())
    chans = [req] + [t.req for t in subs]
    try:
        ready = wait_any(chans, timeout=SLICE * 4)
    except (ChannelClosed, ChannelError):
        ready = chans                  # find out which one below
    for ch in ready:
        t = None
        if ch is not req:
            with host.lock:
                t = host.subs.get(ch.c_uid)
            if t is None:
                continue
        try:
            data = ch.recv_auto(0)
        except ChannelEmpty:
            continue
        except (ChannelClosed, ChannelError):
            if ch is req:
                return None, None
            with host.lock:
                host.subs.pop(ch.c_uid, None)
            try:
                ch.detach()
            except Exception:
                pass
            continue
        return (t if t is not None else main), data
    if not ready:
        # a quiet slice: forget served results that ended
        for t in subs:
            try:
                t.req.poll(0)
            except (ChannelClosed, ChannelError):
                with host.lock:
                    host.subs.pop(t.req.c_uid, None)
                try:
                    t.req.detach()
                except Exception:
                    pass
    return None


def _answer(host, t, clients, cid, seq, op, name, args, kwargs):
    """Run one request and send its answer to the caller's reply channel."""
    obj, exposed, pool = t.obj, t.exposed, host.pool
    served = None
    try:
        if op == _CALL:
            if name not in exposed:
                raise _NotExposed(f"method {name!r} of {type(obj).__name__!r} object "
                                  f"is not exposed")
            if name == "__iter__":
                value = list(obj)
            else:
                value = getattr(obj, name)(*args, **kwargs)
            typeid = t.mtt.get(name)
            if typeid is not None:
                value = served = host.serve_result(value, typeid)
        elif op == _VALUE:
            value = obj
        elif op == _GET:
            value = getattr(obj, name)
            if callable(value) and name not in exposed and not isinstance(value, type):
                raise AttributeError(f"{type(obj).__name__!r} object's method {name!r} "
                                     f"is not exposed")
        elif op == _SET:
            setattr(obj, name, args[0])
            value = None
        elif op == _DEL:
            delattr(obj, name)
            value = None
        else:
            raise ObjectError(f"unknown request op {op}")
        del args, kwargs
        msg = _result_msg(seq, value, pool, name)
        del value
    except BaseException as exc:
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        if isinstance(exc, _NotExposed):
            msg = pickle.dumps((seq, _RERR, ("AttributeError", str(exc), "")), 5)
        else:
            msg = _exc_reply(seq, exc, pool)
    if served is not None:
        served._close()        # the reply's pickle holds the loan the caller takes over
    _reply(clients, cid, msg)


def _result_msg(seq, value, pool, name):
    try:
        if type(value) in _FLAT:
            return _pdumps((seq, _OK, value), 5)
        return _enc((seq, _OK, value), pool)
    except BaseException as exc:
        return _exc_reply(seq, TypeError(f"cannot pickle the result of {name}(): {exc}"), pool)


_PEEK = 4096     # what a frame's header and its pickle's first opcodes fit in


def _request_ids(head):
    """(cid, seq) from the first bytes of a request that did not unpickle
    (a pickle of ``(cid, seq, op, ...)``, bare or in a codec frame), or
    None when they are not there."""
    import pickletools
    try:
        if head[:4] == _codec.MAGIC:
            _, n, _plen = _codec._HEAD.unpack_from(head, 0)
            head = head[_codec._align(_codec._HEAD.size + 8 * n):]
        ints = []
        for op, arg, _pos in pickletools.genops(head):
            if op.name in ("PROTO", "FRAME", "MARK"):
                continue
            if op.name not in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG") \
                    or type(arg) is not int:
                return None
            ints.append(arg)
            if len(ints) == 2:
                return tuple(ints)
    except Exception:
        return None
    return None


def _undecodable(clients, head, exc):
    """A request the host cannot unpickle (an argument whose class only the
    caller can import, a corrupt message): the caller gets a RemoteError
    instead of waiting for ever, when the request says who it is."""
    ids = _request_ids(head)
    if ids is None or ids[0] not in clients:
        from .. import _log
        _log.get("shared").warning("shared object host: dropped a request that names no "
                                   "caller it knows (%d bytes): %s", len(head), exc)
        return
    import traceback
    cid, seq = ids
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    what = f"{exc} (the shared object's host could not unpickle the request)"
    _reply(clients, cid, pickle.dumps((seq, _RERR, (_type_name(exc), what, tb)), 5))


def _reply(clients, cid, msg):
    ch = clients.get(cid)
    if ch is None:
        _codec.free_unsent(msg)
        return
    try:
        ch.send(msg, 1.0)
    except Exception:        # the caller is gone (its reply channel ended), or stuck
        _codec.free_unsent(msg)
        clients.pop(cid, None)


def _identity(x):
    return x


def _host_what(factory, args, name):
    """What `ember ps` shows for a host (its label's part after
    ``Process-N``): ``shared object 'registry': Registry``, the type served
    or the factory called (ember's own say what they are: ``_ember_what``)."""
    made = type(args[0]) if factory is _identity else factory
    what = getattr(made, "_ember_what", None) or getattr(made, "__qualname__",
                                                         type(made).__name__)
    return f"shared object {name!r}: {what}" if name else f"shared object: {what}"


# ------------------------------------------------------------------ creator side
# Host Processes started here and not yet joined (so that they are not
# collected, and not joined at this process's exit: they outlive it as
# their lifetime says): o_uid -> p_uid, of the runtime this process is in
# (_hosts_here).  A process that left its runtime (ember.shutdown()) and
# joined another (ember.init()) has none of the old one's: o_uids and p_uids
# are a runtime's own, and the new one's o_uid N named another object, whose
# end (a scope's close) joined the old entry's p_uid there, another process,
# for 10 s and then killed it.
_hosts = {}
_hosts_lock = threading.Lock()
_hosts_of = [None]        # the runtime _hosts's entries were made in (naming._runtime_key)


def _hosts_here():
    """``_hosts`` (its lock held), emptied first if this process is in
    another runtime than the one its entries were made in."""
    key = naming._runtime_key()
    if _hosts_of[0] != key:
        _hosts.clear()
        _hosts_of[0] = key
    return _hosts


def serve(obj, name=None, lifetime=None, *, scope=None, exposed=None, threads=1, timeout=60.0,
          method_to_typeid=None):
    """Host ``obj`` (pickled to the host) in a new managed process; return a
    :class:`SharedRef`.  ``threads > 1``: the host runs requests in a pool
    of that many threads (the object must then be thread-safe); 1 (the
    default): one at a time, in arrival order.  ``method_to_typeid``
    (``{method name: typeid}``, as ``multiprocessing.managers``): what those
    methods return stays in the host and the caller gets a proxy of it (a
    "refcount" object: it lives while a proxy of it does).  See
    :func:`ember.objects.create`.

    Parameters
    ----------
    obj : object
        The object to host (it must pickle, with cloudpickle if need be).
    name : str or None
        A name other processes find it by (:func:`ember.connect`).
    lifetime : {"runtime", "owner", "refcount"}, ember.Scope or None
        How long it lives (docs/shared-objects.md, "Lifetimes").
    scope : ember.Scope or None
        The scope it belongs to (default: the current ``with ember.scope()``).
    exposed : list of str or None
        The only methods proxies may call (default: the public ones).
    threads : int
        Requests served at once.
    timeout : float
        Seconds the host may take to start.
    method_to_typeid : dict or None
        Methods whose results stay in the host, returned as proxies.

    Raises
    ------
    ember.ObjectError
        ``name`` is taken by a live object, or a bad ``name`` or
        ``lifetime``.
    TypeError
        ``exposed`` is not a list of method names.
    ValueError
        ``threads`` is not an int >= 1.
    ember.SharedObjectError
        The host did not start within ``timeout``, or ``scope`` is closed.
    ember.ProcessDied
        The host died while starting.
    """
    return _start(_identity, (obj,), {}, name, lifetime, scope, exposed, timeout, threads,
                  _returns(method_to_typeid))


def create(factory, *args, name=None, lifetime=None, scope=None, exposed=None, threads=1,
           timeout=60.0, method_to_typeid=None, **kwargs):
    """Start a host process that constructs ``factory(*args, **kwargs)`` and
    serves it; return a :class:`SharedRef` (its :meth:`~SharedRef.proxy`).
    ``method_to_typeid``: as :func:`serve`."""
    if not callable(factory):
        raise TypeError(f"factory must be callable, not {type(factory).__name__}")
    return _start(factory, args, kwargs, name, lifetime, scope, exposed, timeout, threads,
                  _returns(method_to_typeid))


def _returns(method_to_typeid, types=None):
    """The host's ``returns`` argument: ``(method_to_typeid, {typeid:
    (exposed, method_to_typeid)})``, checked here."""
    if not method_to_typeid:
        return None
    if not isinstance(method_to_typeid, dict) or not all(
            type(k) is str and type(v) is str for k, v in method_to_typeid.items()):
        raise TypeError(f"method_to_typeid must map str to str, got {method_to_typeid!r}")
    return dict(method_to_typeid), dict(types or {})


def _check_args(name, lifetime, exposed):
    from .scopes import Scope
    if name is not None and (not isinstance(name, str) or not name):
        raise ObjectError(f"name must be a non-empty str or None, got {name!r}")
    if lifetime is not None and not isinstance(lifetime, Scope) \
            and lifetime not in naming.LIFETIMES:
        raise ObjectError("lifetime must be one of 'runtime', 'owner', 'refcount' or a "
                          f"Scope, got {lifetime!r}")
    if exposed is not None and (isinstance(exposed, str)
                                or not all(isinstance(n, str) for n in exposed)):
        raise TypeError("exposed must be a list of method names")


def _start(factory, args, kwargs, name, lifetime, scope, exposed, timeout, threads=1,
           returns=None):
    from . import scopes
    from .process import Process, _live, _live_lock, _default_pool
    _check_args(name, lifetime, exposed)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    if isinstance(lifetime, scopes.Scope):
        scope, lifetime = lifetime, None
    if scope is None:
        scope = scopes.current()
    if scope is not None:
        scope._check_open()
        if lifetime is None:
            lifetime = "runtime"   # the scope ends it (or its own lifetime, earlier)
    pool = _default_pool()
    boot_out = Channel.create(pool, capacity=2, block_size=1024,
                              c_uid=_roles.c_uid(_roles.SHARED_BOOT))
    boot_in = Channel.create(pool, capacity=2, block_size=1024,
                             c_uid=_roles.c_uid(_roles.SHARED_BOOT))
    host = None
    try:
        host = Process(target=_host_main, args=(factory, args, kwargs, exposed, boot_out, boot_in,
                                                     threads, returns),
                       name=None, daemon=False)
        host._what = _host_what(factory, args, name)
        host.start()
        with _live_lock:
            _live.discard(host)        # it outlives us as its lifetime says
        deadline = time.monotonic() + timeout
        boot = pickle.loads(_wait_boot(boot_out, host, name, deadline))
        if boot[0] == "err":
            _, exc, tb = boot
            exc.__cause__ = RemoteTraceback(tb)
            raise exc
        if boot[0] == "rerr":
            t, m, tb = boot[1]
            exc = RemoteError(t, m, tb)
            exc.__cause__ = RemoteTraceback(tb)
            raise exc
        _, methods, pid, start = boot
        desc = pickle.dumps({"methods": methods, "pid": pid, "start": start,
                             "p_uid": host.p_uid}, 5)
        req = Channel.create(pool, capacity=REQ_CAPACITY, block_size=BLOCK)
        try:
            rec = naming.create(KIND, name, lifetime, desc, [req.sdesc])
        except BaseException:
            req.destroy()
            raise
        req.detach()
        try:
            boot_in.send(pickle.dumps(rec, 5))
            _wait_boot(boot_out, host, name, deadline)
        except BaseException:
            naming.destroy(rec["o_uid"])
            raise
    except BaseException:
        if host is not None and host._desc is not None:
            try:
                boot_in.send(pickle.dumps(None))
            except Exception:
                pass
            host.join(5)
            if host.exitcode is None:
                host.kill()
                host.join(5)
            host.close()
        boot_out.destroy()
        boot_in.destroy()
        raise
    # The host runs on its own now: let go of the Process object (its
    # channels and pidfd); the host is joined through GS by p_uid.
    boot_out.destroy()
    boot_in.destroy()
    p_uid = host.p_uid
    host._finalizer()
    with _hosts_lock:
        _hosts_here()[rec["o_uid"]] = p_uid
    ref = SharedRef(rec)
    if scope is not None:
        scope._adopt(rec["o_uid"])
    return ref


def _wait_boot(boot_out, host, name, deadline):
    while True:
        try:
            return boot_out.recv(timeout=SLICE)
        except ChannelEmpty:
            if not host.is_alive():
                host.result(timeout=1)      # raises what killed it
                raise ProcessDied(f"the host of shared object {name!r} ended before "
                                  f"it was ready", host.p_uid, host.exitcode)
            if time.monotonic() > deadline:
                raise SharedObjectError(f"the host of shared object {name!r} was not "
                                        f"ready in time")


def _reap(o_uid, timeout=10.0):
    """Join the host of ``o_uid`` if this process started it."""
    with _hosts_lock:
        entry = _hosts_here().pop(o_uid, None)
    if entry is None:
        return
    from ..globalservices import process as gproc
    try:
        if gproc.join(entry, timeout) is None:
            gproc.kill(entry)
            gproc.join(entry, timeout)
    except Exception:
        pass            # already joined / the runtime is gone


class SharedRef:
    """What :func:`serve` returns: the creator's handle of the shared
    object (it holds one GS reference).  ``proxy()`` makes a proxy;
    ``destroy()`` ends the object now; ``close()`` lets go of it."""

    def __init__(self, rec):
        self._rec = rec
        self._hold = naming.hold(self, rec["o_uid"])
        self._proxy = None

    name = property(lambda self: self._rec["name"])
    o_uid = property(lambda self: self._rec["o_uid"])
    lifetime = property(lambda self: self._rec["lifetime"])

    def __getattr__(self, attr):
        # (a name the class does not have) a program that took the handle
        # for a proxy of the object: say what to call instead
        if attr.startswith("_"):
            raise AttributeError(attr)
        raise AttributeError(f"'SharedRef' object has no attribute {attr!r}: it is the handle "
                             f"that serve() and create() return; the object's methods and "
                             f"attributes are reached through a proxy: ref.proxy().{attr}, or "
                             f"ember.connect(name)")

    @property
    def p_uid(self):
        """The host process's p_uid."""
        return pickle.loads(self._rec["desc"])["p_uid"]

    @property
    def pid(self):
        """The host process's OS pid."""
        return pickle.loads(self._rec["desc"])["pid"]

    def proxy(self):
        """A new proxy of the object (it holds its own reference)."""
        naming.add_ref(self._rec["o_uid"])
        return _make_proxy(self._rec)

    def proxy_and_close(self):
        """A proxy, and let go of this handle (the object then lives as
        long as its lifetime and proxies say)."""
        p = self.proxy()
        self._hold.drop()
        return p

    def destroy(self, timeout=10.0):
        """End the object now, for everyone; the host exits (and is joined
        here if this process started it)."""
        try:
            naming.destroy(self._rec["o_uid"])
        except ObjectError:
            pass
        self._hold.drop()
        _reap(self._rec["o_uid"], timeout)

    def close(self):
        """Let go of this handle's reference (a "refcount" object ends with
        its last one); the host is joined here if the object ended."""
        self._hold.drop()
        with _hosts_lock:
            entry = _hosts_here().get(self._rec["o_uid"])
        if entry is not None and self._rec["lifetime"] == "refcount":
            try:
                naming.query(self._rec["o_uid"])
            except ObjectError:
                _reap(self._rec["o_uid"])

    def join(self, timeout=None):
        """Wait until the host process ends (only in the creating process)."""
        with _hosts_lock:
            entry = _hosts_here().get(self._rec["o_uid"])
        if entry is None:
            raise ObjectError("only the process that served an object can join its host")
        from ..globalservices import process as gproc
        if gproc.join(entry, timeout) is not None:
            with _hosts_lock:
                _hosts_here().pop(self._rec["o_uid"], None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    def __repr__(self):
        n = f" {self.name!r}" if self.name else ""
        return f"<ember.SharedRef{n} o_uid={self.o_uid} lifetime={self.lifetime}>"


# ------------------------------------------------------------------ caller side
class _Client:
    """One reply channel per thread of a process (a refcount GS object:
    freed by GS when this process ends)."""

    def __init__(self):
        from .process import _default_pool
        ch = Channel.create(_default_pool(), capacity=REPLY_CAPACITY, block_size=BLOCK)
        try:
            rec = naming.create("SharedReply", None, "refcount", b"", [ch.sdesc])
        except BaseException:
            ch.destroy()
            raise
        self.rec = rec
        self.ch = ch
        self.ch.set_spin(SPIN, False)
        self.cid = self.ch.c_uid
        self.sdesc = rec["channels"][0]
        self.seq = 0
        self.pool = ch.pool
        self.hosts = set()       # o_uids we said hello to
        self.hold = naming.hold(self, rec["o_uid"])
        self.key = (os.getpid(), naming._runtime_key())
        weakref.finalize(self, _detach, ch).atexit = False


def _detach(ch):
    try:
        ch.detach()
    except Exception:
        pass


_local = threading.local()


def _forget_clients():
    """In a forked child: the parent's reply channels are not ours."""
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_clients)


def _rebuild_proxy(rec, token):
    naming.claim(rec["o_uid"], token)
    return _make_proxy(rec)


_proxy_types = {}


def _make_proxy(rec):
    info = pickle.loads(rec["desc"])
    methods = frozenset(info["methods"])
    cls = _proxy_types.get(methods)
    if cls is None:
        ns = {}
        for n in methods:
            if n in _SPECIAL:
                ns[n] = _special(n)
            elif not hasattr(Proxy, n):      # the proxy's own names stay its own
                ns[n] = _method(n)
        cls = _proxy_types[methods] = type("Proxy", (Proxy,), ns)
    p = object.__new__(cls)
    d = p.__dict__
    d["_rec"] = rec
    d["_info"] = info
    d["_methods"] = methods
    d["_hold"] = naming.hold(p, rec["o_uid"])
    d["_req"] = None
    return p


def _method(n):
    """The proxy class's method ``n``: a call in the host.  (Methods live on
    the class -- one per set of exposed names -- so that a proxy holds no
    reference to itself and is freed as soon as it is dropped.)"""
    def method(self, *args, **kwargs):
        return self._call(_CALL, n, args, kwargs)
    method.__name__ = method.__qualname__ = n
    return method


def _special(n):
    if n == "__iter__":
        def f(self):
            return _ProxyIterator(self)
    elif n in ("__iadd__", "__imul__"):
        def f(self, *args, **kwargs):
            self._call(_CALL, n, args, kwargs)
            return self          # `p += x` keeps the proxy
    else:
        def f(self, *args, **kwargs):
            return self._call(_CALL, n, args, kwargs)
    f.__name__ = n
    return f


class _ProxyIterator:
    """``iter(proxy)``: the contents are fetched in one round trip at the
    first ``next()`` (not one per item, as the stdlib's iterator proxies
    do), so what was changed between ``iter()`` and then is seen.  For a
    mapping (a proxy with ``keys``) the length is taken at ``iter()``; if it
    differs at the first ``next()``, that raises ``RuntimeError`` as a
    local dict changed during iteration does."""

    __slots__ = ("_proxy", "_it", "_len")

    def __init__(self, proxy):
        self._proxy = proxy
        self._it = None
        self._len = proxy._call(_CALL, "__len__", (), {}) \
            if hasattr(type(proxy), "keys") and hasattr(type(proxy), "__len__") else None

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            items = self._proxy._call(_CALL, "__iter__", (), {})
            self._proxy = None
            if self._len is not None and len(items) != self._len:
                self._it = iter(())
                raise RuntimeError("dictionary changed size during iteration")
            self._it = iter(items)
        return next(self._it)


class Proxy:
    """A proxy of a shared object: ``p.method(*args)`` runs in the host;
    ``p.attr`` gets an attribute there; ``p.attr = v`` sets it.  Picklable
    (the unpickled copy holds its own reference).  ``_callmethod(name,
    args, kwargs)`` as ``multiprocessing.managers.BaseProxy``.

    A call raises what the method raised in the host, as itself (the host's
    traceback attached as ``__cause__``), and:

    Raises
    ------
    ember.ProcessDied
        The host process ended before answering (it is checked while the
        caller waits).
    ember.SharedObjectError
        The object was destroyed, or this proxy was closed.
    ember.RemoteError
        The host's exception could not be pickled back.
    TypeError
        The arguments cannot be pickled.
    """

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return self._call(_GET, attr, (), {})

    def __setattr__(self, attr, value):
        if attr.startswith("_"):
            object.__setattr__(self, attr, value)
        else:
            self._call(_SET, attr, (value,), {})

    def __delattr__(self, attr):
        self._call(_DEL, attr, (), {})

    def _callmethod(self, methodname, args=(), kwds=None):
        return self._call(_CALL, methodname, tuple(args), dict(kwds or {}))

    def _getvalue(self):
        """A copy of the object itself (as ``BaseProxy._getvalue``)."""
        return self._call(_VALUE, None, (), {})

    def __str__(self):
        """The object's own repr (as ``BaseProxy.__str__``)."""
        try:
            return self._call(_CALL, "__repr__", (), {})
        except Exception:
            return repr(self)

    def __reduce__(self):
        return (_rebuild_proxy, (self._rec, naming.lend(self._rec["o_uid"])))

    def __repr__(self):
        n = self._rec["name"]
        return f"<ember.Proxy {n!r} o_uid={self._rec['o_uid']}>" if n else \
            f"<ember.Proxy o_uid={self._rec['o_uid']}>"

    @property
    def _o_uid(self):
        return self._rec["o_uid"]

    def _close(self):
        """Let go of this proxy's reference now."""
        self._hold.drop()


    # ------------------------------------------------------------ the call
    def _who(self):
        n = self._rec["name"]
        return f"shared object {n!r} (o_uid {self._rec['o_uid']})" if n else \
            f"shared object o_uid {self._rec['o_uid']}"

    def _dead(self, what):
        info = self._info
        return ProcessDied(f"{self._who()}: its host process (p_uid {info['p_uid']}, pid "
                           f"{info['pid']}) ended before replying to {what}", info["p_uid"])

    def _send(self, msg, op, name):
        what = _what(op, name)
        req = self.__dict__["_req"]
        if req is None:
            try:
                req = Channel.attach(self._rec["channels"][0])
            except Exception:
                _codec.free_unsent(msg)
                raise SharedObjectError(f"{self._who()} was destroyed") from None
            req.set_spin(SPIN)
            self.__dict__["_req"] = req
            weakref.finalize(self, _detach, req).atexit = False
        info = self._info
        while True:
            try:
                req.send(msg, SLICE)
                return
            except ChannelFull:
                if not _alive(info["pid"], info["start"]):
                    _codec.free_unsent(msg)
                    raise self._dead(what) from None
            except (ChannelClosed, ChannelError):
                _codec.free_unsent(msg)
                raise SharedObjectError(f"{self._who()} was destroyed") from None

    def _call(self, op, name, args, kwargs):
        d = self.__dict__
        if not d["_hold"].alive:
            raise SharedObjectError(f"{self._who()}: this proxy was closed")
        c = getattr(_local, "client", None)
        if c is None or c.key[1] != naming._runtime_key():
            c = _local.client = _Client()
        rec = d["_rec"]
        o_uid = rec["o_uid"]
        if o_uid not in c.hosts:
            self._send(pickle.dumps((c.cid, 0, _HELLO, None, (c.sdesc,), None), 5), op, name)
            c.hosts.add(o_uid)
        c.seq += 1
        seq = c.seq
        try:
            msg = _enc_call(c.cid, seq, op, name, args, kwargs, c.pool)
        except Exception as exc:
            raise TypeError(f"cannot pickle the arguments of {_what(op, name)} on "
                            f"{self._who()}: {exc}") from None
        req = d["_req"]
        if req is not None:
            try:
                req.send(msg, SLICE)       # the fast path
            except (ChannelFull, ChannelClosed, ChannelError):
                self._send(msg, op, name)
        else:
            self._send(msg, op, name)
        ch = c.ch
        while True:
            try:
                data = ch.recv_auto(SLICE)
            except ChannelEmpty:
                info = d["_info"]
                if not _alive(info["pid"], info["start"]):
                    # it may have answered just before it ended
                    try:
                        data = ch.recv_auto(0)
                    except ChannelEmpty:
                        raise self._dead(_what(op, name)) from None
                else:
                    continue
            reply = _dec(data)
            del data
            if reply[0] != seq:
                continue          # a late answer to a call that was given up
            status = reply[1]
            if status == _OK:
                return reply[2]
            if status == _ERR:
                exc, tb = reply[2], reply[3]
                exc.__cause__ = RemoteTraceback(tb)
                raise exc
            t, m, tb = reply[2]
            exc = RemoteError(t, m, tb)
            exc.__cause__ = RemoteTraceback(tb)
            raise exc


def _what(op, name):
    return _OPNAME[op].format(name if name is not None else "")


def connect(name, timeout=None):
    """A proxy of the shared object called ``name``, waiting up to
    ``timeout`` seconds (None: forever) until it is served
    (``ember.ObjectTimeout``, a ``TimeoutError``, afterwards).

    Raises
    ------
    ember.ObjectTimeout
        Nothing of that name was served within ``timeout``.
    ember.ObjectError
        ``name`` is not a non-empty str, or names an object that is not a
        shared object.
    """
    rec = naming.attach(name, KIND, timeout)
    try:
        return _make_proxy(rec)
    except BaseException:
        naming.release(rec["o_uid"])
        raise


proxy = connect


# ------------------------------------------------------------------ the pool dict
from ..sync_c._sync import _PoolTable  # noqa: E402


class PoolDict(_PoolTable):
    """A shared dict that lives in pool memory (``ember.dict(in_pool=True)``):
    every process reads and writes it directly under one ember Lock, with no
    host process and no round trip.

    An open-addressing hash table of ``capacity`` slots of ``slot_size``
    bytes in one pool allocation (``src/ember/sync_c/pooldict.c``); each
    operation is one C call under the lock.  Keys and values are encoded
    directly when they are ``int`` (64-bit), ``str``, ``bytes``, ``float``,
    ``None``, ``True`` or ``False``, and pickled (protocol 5) otherwise;
    keys are equal when their encodings are (``1``, ``1.0`` and ``True``
    are three keys here), and each entry's key and value must fit one slot
    (``ValueError`` otherwise).  At most ``capacity * 3 // 4`` keys
    (``ObjectError`` beyond).  A process killed while it overwrites an
    entry may leave that one entry torn: reading it raises
    ``SharedObjectError`` until the key is set or deleted again; the rest
    of the table is intact, and a new key whose insert was cut short is
    simply absent.

    A named GS object (kind ``"PoolDict"``): ``PoolDict.attach(name)``,
    ``exist_ok=True`` (a soft create), picklable, lifetimes and scopes as
    every object registered with global services.
    """

    _KIND = "PoolDict"

    def __init__(self, *args, name=None, lifetime=None, capacity=4096, slot_size=256,
                 exist_ok=False, **kwargs):
        from ..sync_c import Lock
        from .sync import _kind_of
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 8 \
                or capacity & (capacity - 1) or capacity > 1 << 30:
            raise ValueError(f"capacity must be a power of two >= 8, got {capacity!r}")
        if isinstance(slot_size, bool) or not isinstance(slot_size, int) or slot_size < 64 \
                or slot_size % 64 or slot_size > 1 << 20:
            raise ValueError(f"slot_size must be a multiple of 64 in 64 .. 1 MiB, "
                             f"got {slot_size!r}")
        initial = dict(*args, **kwargs)
        pool = naming.default_pool()
        lock = Lock(pool=pool)
        try:
            table = pool.alloc(_PoolTable._table_size(capacity, slot_size))
        except BaseException:
            lock.destroy()
            raise
        try:
            _PoolTable._init_table(table, capacity, slot_size)
        except BaseException:
            lock.destroy()
            table.free()
            raise
        desc = pickle.dumps((lock, table.sdesc, capacity, slot_size), 5)
        parts = [["sync", _kind_of(lock), lock.sdesc], ["alloc", table.sdesc]]
        try:
            rec = naming.create(self._KIND, name, lifetime, desc, (), parts, exist_ok=exist_ok)
        except BaseException:
            lock.destroy()
            table.free()
            raise
        #: False when exist_ok found a live one (ours is then not needed)
        self._made = rec["desc"] == desc
        if not self._made:
            lock.destroy()
            table.free()
        self._setup(rec)
        if initial:
            self.update(initial)

    @classmethod
    def attach(cls, name, timeout=None):
        rec = naming.attach(name, cls._KIND, timeout)
        self = cls.__new__(cls)
        try:
            self._setup(rec)
        except BaseException:
            naming.release(rec["o_uid"])
            raise
        return self

    def _setup(self, rec):
        from ..pools_c import Allocation
        self._rec = rec
        lock, sdesc, _, _ = pickle.loads(rec["desc"])
        self._lock = lock
        self._alloc = Allocation.attach(sdesc)
        self._bind(lock, self._alloc)
        self._hold = naming.hold(self, rec["o_uid"])

    name = property(lambda self: self._rec["name"])
    o_uid = property(lambda self: self._rec["o_uid"])
    _o_uid = o_uid
    lifetime = property(lambda self: self._rec["lifetime"])

    def __reduce__(self):
        return (_rebuild_pooldict, (self._rec, naming.lend(self._rec["o_uid"])))

    def close(self):
        """Drop this handle's reference."""
        self._hold.drop()

    detach = close

    def destroy(self):
        naming.destroy(self._rec["o_uid"])
        self._hold.drop()

    def __repr__(self):
        return f"<ember.PoolDict o_uid={self.o_uid} len={len(self)}>"

    # get, pop, setdefault, __getitem__/__setitem__/__delitem__, __contains__,
    # __len__, clear and _snapshot: _PoolTable (C, one lock hold each).

    def update(self, *args, **kwargs):
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def items(self):
        return self._snapshot()

    def keys(self):
        return [k for k, _ in self._snapshot()]

    def values(self):
        return [v for _, v in self._snapshot()]

    def copy(self):
        return dict(self._snapshot())

    def __iter__(self):
        return iter(self.keys())


def _rebuild_pooldict(rec, token):
    naming.claim(rec["o_uid"], token)
    self = PoolDict.__new__(PoolDict)
    self._setup(rec)
    return self
