"""The runtime as a library: ``ember.init()``, attach, ``ember.shutdown()``.

A runtime is one launcher process (the *host*: it owns the pools and the
control channels and forks global services and the node's shepherd), plus
the processes it manages.  ``ember run`` is a host that also runs a head
program; ``ember start`` is a host with no head that waits to be stopped;
``ember.init()`` starts such a host in the background and *attaches* the
calling process to it.

Attaching
---------
A host publishes its address in a per-user directory (mode 0700, owned by
the user): ``$XDG_RUNTIME_DIR/ember`` when that is set and ours, else
``<tmp>/ember-<uid>``.  For each runtime there are two files:

- ``<id>.addr`` (mode 0600, msgpack): the runtime id, its name, the host's pid, a
  random key and the descriptors of the infrastructure pool, GS's input
  channel and the default pool;
- liveness is the runtime's lock, ``/dev/shm/ember.<id>.lock``: the
  launcher holds an exclusive ``flock`` on it for its whole life (the same
  lock ``ember cleanup`` tests).  A lock that can be taken (or is missing)
  means the host is gone: the address is stale, and whoever finds it
  removes it (liveness by lock survives pid namespaces and pid reuse, where
  a pid check does not; /dev/shm is what containers with ``--ipc=host``
  share).

An attaching process reads the address, proves with the key that it may,
and becomes a managed process of the runtime (``ProcessAttach``: it gets a
p_uid, a name if it asked for one, and the node's shepherd watches it, so
its death is noticed and its channel references are dropped).  Nothing is
put in ``os.environ``: a subprocess of an attached process is not itself
part of the runtime unless it attaches too.  After ``fork()`` the child of
an attached process attaches again on first use (it becomes a managed
process of its own), so it never speaks for its parent.

Exit codes of attached processes: ember did not start them and cannot read
their exit status.  A process that detaches cleanly (``shutdown()``, or the
interpreter's normal exit) is recorded with exit code 0; one that vanishes
without detaching (killed) with :data:`EXIT_UNKNOWN` (255).
"""
import atexit
import errno
import fcntl
import os
import _signal as signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)
import stat
import sys
import _thread   # (not threading: ~1.5 ms of every start for one RLock)
import time

import msgpack

from . import _env
from .exceptions import GlobalServicesError

__all__ = ["init", "shutdown", "is_initialized", "Runtime", "runtime_dir", "list_runtimes",
           "resolve", "Address", "EXIT_UNKNOWN"]

from .messages import EXIT_UNKNOWN  # noqa: E402  (255)
_ADDRESS_VERSION = 1


# ------------------------------------------------------------ the directory
def _single_threaded():
    """No thread but this one (threading's count; a process that never
    imported threading started none through it)."""
    threading = sys.modules.get("threading")
    return threading is None or threading.active_count() == 1


def runtime_dir(create=True):
    """The per-user directory where running runtimes publish their address.

    ``$XDG_RUNTIME_DIR/ember`` if ``XDG_RUNTIME_DIR`` is set, exists and
    belongs to this user; otherwise ``<system temp dir>/ember-<uid>``.  It is
    created with mode 0700; an existing one that is not ours or that others
    can enter is refused (``GlobalServicesError``), never used."""
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = None
    if base:
        try:
            st = os.stat(base)
            if st.st_uid == uid and stat.S_ISDIR(st.st_mode):
                path = os.path.join(base, "ember")
        except OSError:
            pass
    if path is None:
        tmp = os.environ.get("TMPDIR") or "/tmp"
        path = os.path.join(tmp, f"ember-{uid}")
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise GlobalServicesError(f"cannot create the runtime directory {path}: {exc}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise GlobalServicesError(
            f"refusing the runtime directory {path}: it must be a directory owned by uid {uid} "
            f"with mode 0700 (it has owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})")
    return path


class Address:
    """A published runtime address (the parsed ``<id>.addr``)."""

    __slots__ = ("id", "name", "pid", "key", "inf_pool", "gs_ch", "default_pool", "program",
                 "created", "path")

    def __init__(self, **kw):
        for k in self.__slots__:
            setattr(self, k, kw.get(k))

    @classmethod
    def load(cls, path):
        try:
            with open(path, "rb") as f:
                data = msgpack.unpackb(f.read(), raw=False)
        except FileNotFoundError:
            raise GlobalServicesError(f"no ember runtime at {path}: the address file does not exist") from None
        except Exception as exc:     # OSError, msgpack's several decode errors
            raise GlobalServicesError(f"unreadable ember address {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != _ADDRESS_VERSION:
            raise GlobalServicesError(f"unreadable ember address {path}: unknown format")
        try:
            return cls(id=str(data["id"]), name=data.get("name"), pid=int(data["pid"]),
                       key=str(data["key"]), inf_pool=str(data["inf_pool"]),
                       gs_ch=str(data["gs_ch"]), default_pool=str(data["default_pool"]),
                       program=data.get("program"), created=float(data.get("created", 0)),
                       path=path)
        except (KeyError, TypeError, ValueError) as exc:
            raise GlobalServicesError(f"unreadable ember address {path}: missing or bad field {exc}") from None

    @property
    def lock_path(self):
        return _lock_path(self.id)

    def alive(self):
        """True while the host holds its lock (no pid check: see module doc)."""
        return lock_held(self.lock_path)

    def to_dict(self):
        return {k: getattr(self, k) for k in self.__slots__ if k != "path"}

    def __repr__(self):
        return f"Address(id={self.id!r}, name={self.name!r}, pid={self.pid})"


def _lock_path(runtime_id):
    return os.path.join("/dev/shm", f"ember.{runtime_id}.lock")


def lock_held(lock_path, note=False):
    """True if some process holds an flock on ``lock_path``; ``note``:
    ``(held, text)``, with what the file holds (a failed runtime's reason,
    :func:`note_failure`; '' while it runs)."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return (False, "") if note else False
    try:
        text = os.read(fd, _NOTE_MAX).decode(errors="replace") if note else ""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            held = True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            held = False
    finally:
        os.close(fd)
    return (held, text) if note else held


def publish(runtime_id, *, name, pid, key, inf_pool, gs_ch, default_pool, program):
    """Host side: write the address file (the caller already holds the
    runtime's lock in /dev/shm); returns the :class:`Address`.  Call
    :func:`unpublish` at teardown."""
    d = runtime_dir()
    base = os.path.join(d, runtime_id)
    data = {"version": _ADDRESS_VERSION, "id": runtime_id, "name": name, "pid": pid, "key": key,
            "inf_pool": _env.encode(inf_pool), "gs_ch": _env.encode(gs_ch),
            "default_pool": _env.encode(default_pool), "program": program,
            "created": time.time()}
    tmp = base + ".addr.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(msgpack.packb(data, use_bin_type=True))
    os.replace(tmp, base + ".addr")
    return Address.load(base + ".addr")


def unpublish(runtime_id):
    d = runtime_dir(create=False)
    for suffix in (".addr", ".addr.tmp"):
        try:
            os.unlink(os.path.join(d, runtime_id + suffix))
        except FileNotFoundError:
            pass
    _remove_introspection(d, runtime_id)


def _remove_introspection(d, runtime_id):
    """The process-slots table and the stack files of ``ember ps`` /
    ``ember stacks`` (the event log, ``<id>.events``, is kept: it outlives
    the run; docs/introspection.md)."""
    try:
        os.unlink(os.path.join(d, runtime_id + ".slots"))
    except FileNotFoundError:
        pass
    stacks = os.path.join(d, runtime_id + ".stacks")     # a flat directory of files
    try:                                                # (no shutil: ~3 ms at every teardown)
        for n in os.listdir(stacks):
            try:
                os.unlink(os.path.join(stacks, n))
            except OSError:
                pass
        os.rmdir(stacks)
    except OSError:
        pass


def _remove_stale(addr):
    """Remove a dead host's address files and anything it left in /dev/shm."""
    try:
        os.unlink(addr.path)
    except FileNotFoundError:
        pass
    prefix = f"ember.{addr.id}."      # its segments and its (free) lock file
    try:
        for n in os.listdir("/dev/shm"):
            if n.startswith(prefix):
                try:
                    os.unlink(os.path.join("/dev/shm", n))
                except OSError:
                    pass
    except FileNotFoundError:
        pass
    _remove_introspection(os.path.dirname(addr.path), addr.id)


_FAILED = "runtime.failed"


def events_path(runtime_id):
    """The event log of a runtime (GS writes it; it outlives the run)."""
    return os.path.join(runtime_dir(create=False), f"{runtime_id}.events")


def note_failure(runtime_id, reason, lock_fd):
    """Host side, before it tears a failed runtime down: ``reason`` (what
    ``ember run`` reports after ``runtime failure:``) written in the
    runtime's lock file (``lock_fd``, held; empty while the runtime runs),
    where :func:`ended_error` reads it until the teardown's end removes the
    file, and as a ``runtime.failed`` event appended to the event log, which
    outlives the run (one write, as GS's).  Never raises."""
    from .globalservices.events import _json_line
    line = _json_line({"t": round(time.time(), 6), "event": _FAILED, "reason": reason}) + "\n"
    try:
        os.pwrite(lock_fd, reason.encode(errors="replace")[:_NOTE_MAX], 0)
        fd = os.open(events_path(runtime_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except (OSError, GlobalServicesError):
        pass


_NOTE_MAX = 4096


def _failure_of(path):
    """The reason of the last ``runtime.failed`` event in the last 64 KiB
    of the event log at ``path`` (after it, GS writes at most a few of the
    teardown's events: dead, or killed as of no use), or None."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 16)))
            tail = f.read()
    except OSError:
        return None
    at = tail.rfind(b'"event": "' + _FAILED.encode() + b'"')
    if at < 0:
        return None
    import json
    try:
        start = tail.rfind(b"\n", 0, at) + 1
        return str(json.loads(tail[start:tail.index(b"\n", at)])["reason"])
    except (ValueError, KeyError):
        return None


def ended_error():
    """The :class:`~ember.exceptions.RuntimeEnded` a call that met a
    destroyed channel or a missing segment (or a long wait for GS's reply,
    ``_client.ALIVE_LOOK``) raises when this process's runtime has ended:
    its launcher wrote why in its lock file (a failure, before the teardown
    destroyed anything), or it holds the lock no more (the reason is then
    read from the event log's ``runtime.failed``, if any).  None while it
    runs (the error is then the program's own).  Costs one open, read,
    flock and close of the lock file."""
    from .exceptions import RuntimeEnded
    if not _env.in_runtime() or _env.get(_env.NODE, "0") != "0":
        return None                  # (the lock is on the head node only)
    rid = _env.get(_env.RUNTIME_ID)
    if not rid:
        return None
    held, reason = lock_held(_lock_path(rid), note=True)
    if held and not reason:
        return None
    try:
        log = events_path(rid)
    except GlobalServicesError:
        return None
    if not reason:
        reason = _failure_of(log)
    how = f"runtime failure: {reason}" if reason is not None else "its launcher is gone"
    return RuntimeEnded(f"the ember runtime {rid} has ended ({how}); its event log: {log} "
                        f"(ember events --address {rid})")


def list_runtimes(clean_stale=True):
    """The live runtimes of this user (oldest first); stale addresses found on
    the way are removed when ``clean_stale``."""
    d = runtime_dir(create=False)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        if not n.endswith(".addr"):
            continue
        try:
            addr = Address.load(os.path.join(d, n))
        except GlobalServicesError:
            continue
        if addr.alive():
            out.append(addr)
        elif clean_stale:
            _remove_stale(addr)
    out.sort(key=lambda a: a.created or 0)
    return out


def resolve(address="auto"):
    """Find a live runtime by ``"auto"`` (the only one running for this user),
    its name, its id (``r<pid>-<hex>...``) or the path of its address file."""
    if address is None or address == "auto":
        env = os.environ.get("EMBER_ADDRESS")
        if env and env != "auto":
            return resolve(env)
        live = list_runtimes()
        if not live:
            raise GlobalServicesError(
                "no running ember runtime found for this user (start one with `ember start` "
                "or call ember.init())")
        if len(live) > 1:
            listing = ", ".join(f"{a.id}" + (f" ({a.name})" if a.name else "") for a in live)
            raise GlobalServicesError(
                f"{len(live)} ember runtimes are running ({listing}): pick one by id or name "
                f"(address=... in Python, --address on the command line)")
        return live[0]
    if not isinstance(address, str) or not address:
        raise GlobalServicesError(f"an ember address must be a non-empty str, not {address!r}")
    if os.sep in address:
        addr = Address.load(address)
    else:
        addr = None
        d = runtime_dir(create=False)
        path = os.path.join(d, address + ".addr")
        if os.path.exists(path):
            addr = Address.load(path)
        else:
            named = [a for a in list_runtimes() if a.name == address]
            if len(named) > 1:
                raise GlobalServicesError(f"several runtimes are named {address!r}: use its id")
            addr = named[0] if named else None
        if addr is None:
            raise GlobalServicesError(f"no running ember runtime named {address!r} for this user")
    if not addr.alive():
        _remove_stale(addr)
        raise GlobalServicesError(
            f"the ember runtime {addr.id} is not running any more (its launcher, pid {addr.pid}, "
            f"is gone); its address was removed")
    return addr


def check_name_free(name):
    """Refuse to start a runtime named ``name`` while a live one of this
    user has that name: the name would then reach neither (``ember stop
    NAME``, ``init(address=NAME)`` refuse a name two runtimes share).  Two
    starts at the same moment can both pass: the name is only looked up."""
    taken = [a for a in list_runtimes() if a.name == name] if name else []
    if taken:
        raise GlobalServicesError(
            f"a runtime named {name!r} is already running ({taken[0].id}): stop it "
            f"(`ember stop {name}`), attach to it (ember.init(address={name!r})), or "
            f"choose another name")


# ------------------------------------------------------------- attach/init
def _slots():
    from . import _slots as mod       # (imports this module: not at the top)
    return mod


class Runtime:
    """A runtime as seen from this process: started by it (``init()``) or
    attached to (``init(address=...)``)."""

    def __init__(self, addr, *, host_pid=None, owner=False, detached=False):
        self.address = addr
        self.id = addr.id
        self.name = addr.name
        self.host_pid = host_pid       # the host we started (our child), if any
        self.owner = owner             # tear down at shutdown()/exit
        self.detached = detached
        self.p_uid = None
        self.pid = os.getpid()

    def __repr__(self):
        how = "started" if self.owner else "attached"
        return f"<ember.Runtime {self.id} ({how}, p_uid {self.p_uid})>"

    # the env view the client API reads (never written to os.environ)
    def _env(self):
        a = self.address
        return {_env.RUNTIME_ID: a.id, _env.INF_POOL: a.inf_pool, _env.GS_CH: a.gs_ch,
                _env.DEFAULT_POOL: a.default_pool, _env.NODE: "0", _env.KEY: ""}

    def _attach(self, user_name=None):
        from . import messages
        from .globalservices import _client
        _env.set_overrides(self._env())
        conn = _client.connection(reset=True)
        try:
            desc = conn.call(messages.ProcessAttach, os.getpid(), self.address.key,
                             user_name or "", timeout=10.0)
        except BaseException:
            _env.set_overrides(None)
            _client.drop_connection()
            raise
        self.p_uid = desc["p_uid"]
        self.pid = os.getpid()
        conn.p_uid = self.p_uid
        conn.key = bytes.fromhex(desc["key"])
        _slots().bind(self.id, self.p_uid)        # say what we block on (ember ps)
        _env.set_overrides(dict(self._env(), **{_env.P_UID: str(self.p_uid),
                                                 _env.KEY: desc["key"]}))

    def _detach(self, exit_code=0):
        from . import messages
        from .globalservices import _client
        from .objects import naming
        _slots().unbind()
        with naming.leaving():    # no object reference released meanwhile (see there)
            conn = _client._conn
            if conn is not None and conn.pid == os.getpid():
                try:
                    from .objects import process
                    process._drop_lease()          # the spare ember.Process leased
                    conn.call(messages.ProcessDetach, exit_code, timeout=5.0)
                    conn.release()
                except Exception:
                    pass          # the runtime is gone already: nothing to free
            # The runtime's environment first: a thread asking for a
            # connection from now on is told the process is in no runtime,
            # instead of attaching the runtime it is leaving anew.
            _env.set_overrides(None)
            _client.drop_connection()
        naming.forget_default_pool()

    @classmethod
    def start(cls, *, name=None, detached=False, label="none", grace=5.0,
              default_pool_size="1G", inf_pool_size="256M", start_timeout=30.0):
        """Bring up a runtime (a host process, ``ember.launcher.host``)
        and attach this process to it.  Prefer :func:`init`, which also
        makes it this process's current runtime."""
        check_name_free(name)
        addr, host_pid = _start_host(name=name, detached=detached, label=label, grace=grace,
                                     default_pool_size=default_pool_size,
                                     inf_pool_size=inf_pool_size, timeout=start_timeout)
        rt = cls(addr, host_pid=host_pid, owner=not detached, detached=detached)
        try:
            rt._attach()
        except BaseException:
            if rt.owner:
                try:
                    _stop_host(rt.address, rt.host_pid, 10.0)
                except Exception:
                    pass
            raise
        return rt

    @classmethod
    def attach(cls, address="auto", user_name=None):
        """Attach this process to a running runtime (see :func:`resolve`)."""
        rt = cls(resolve(address))
        rt._attach(user_name)
        return rt

    def stop(self, timeout=30.0):
        """Tear the runtime down (only the process that started it may)."""
        if self.host_pid is None:
            raise GlobalServicesError("this process attached to the runtime; it did not start it "
                                      "(use `ember stop` to stop it)")
        _stop_host(self.address, self.host_pid, timeout)


_current = None
_lock = _thread.RLock()


def is_initialized():
    """True if this process is part of a runtime: it attached with
    :func:`init`, or it is a managed process started by one."""
    with _lock:
        if _current is not None and _current.pid == os.getpid():
            return True
    return _env.in_runtime() and _env.is_managed()


def current():
    return _current


def init(address=None, *, name=None, detached=False, label="none", grace=5.0,
         default_pool_size="1G", inf_pool_size="256M", start_timeout=30.0):
    """Bring up a runtime in the background and attach to it, or attach to a
    running one.

    Parameters
    ----------
    address : None, "auto", str
        None: start a new runtime (GS + this node's shepherd in a background
        host process) and attach.  ``"auto"``: attach to the only runtime
        running for this user.  Otherwise the id, name or address-file path
        of a running runtime (what ``ember start`` printed).
    name : str, optional
        For a new runtime, its name (``ember stop NAME`` and
        ``init(address=NAME)`` find it by it).
    detached : bool
        A runtime started here is torn down when this process calls
        :func:`shutdown` or exits, unless ``detached`` (then it runs on until
        ``ember stop``).
    label, grace, default_pool_size, inf_pool_size
        As the flags of ``ember run``.

    Returns
    -------
    Runtime
        Calling ``init()`` again in the same process returns the same
        runtime (a re-run notebook cell is harmless).  Inside a process
        managed by ``ember run`` it returns a handle to that runtime.

    Raises
    ------
    ember.GlobalServicesError
        The runtime did not start (within ``start_timeout``, or its host
        exited: the message carries its exit code and error output); no
        runtime, or several, matched ``address``; the address names a
        runtime that is not running any more (its files are then removed);
        the runtime directory is not private to this user; global services
        refused the attach (a wrong key).
    ValueError
        A bad argument (an address or name that is not a non-empty
        printable str, a ``label`` not ``ember run``'s, a negative
        ``grace``, a ``start_timeout`` <= 0, a size ``ember run`` would
        refuse), before anything starts.
    """
    global _current
    _check_init_args(address, name, detached, label, grace, default_pool_size, inf_pool_size,
                     start_timeout)
    with _lock:
        if _current is not None:
            if _current.pid == os.getpid():
                return _current
            _current = None          # inherited through fork: attach anew below
        if address is None and _env.in_runtime() and _env.is_managed():
            rt = Runtime(Address(id=_env.get(_env.RUNTIME_ID), name=None, pid=None, key=None,
                                 inf_pool=_env.get(_env.INF_POOL), gs_ch=_env.get(_env.GS_CH),
                                 default_pool=_env.get(_env.DEFAULT_POOL)))
            rt.p_uid = int(_env.get(_env.P_UID, "0"))
            _current = rt
            return rt
        if address is None:
            rt = Runtime.start(name=name, detached=detached, label=label, grace=grace,
                               default_pool_size=default_pool_size, inf_pool_size=inf_pool_size,
                               start_timeout=start_timeout)
        else:
            rt = Runtime.attach(address)
        _current = rt
        _install_hooks()
        return rt


_LABELS = ("none", "puid", "name")


def _check_init_args(address, name, detached, label, grace, default_pool_size, inf_pool_size,
                     start_timeout):
    """Refuse bad :func:`init` arguments here, with what is accepted (a
    bad value used to reach the host's command line, which then failed
    with "no address published")."""
    if address is not None:
        if not isinstance(address, str):
            raise ValueError(f"ember.init(address=...) must be None, \"auto\", a runtime's name "
                             f"or id, or the path of its address file (a str), not "
                             f"{type(address).__name__} {address!r}")
        if not address.strip() or any(not c.isprintable() for c in address):
            raise ValueError(f"ember.init(address={address!r}): not \"auto\", a runtime's name "
                             f"or id, nor the path of an address file")
    if name is not None and (not isinstance(name, str) or not name.strip()
                             or any(not c.isprintable() for c in name)):
        raise ValueError(f"ember.init(name={name!r}): a runtime's name must be a non-empty "
                         f"printable str or None")
    if not isinstance(detached, bool):
        raise ValueError(f"ember.init(detached={detached!r}): must be True or False")
    if label not in _LABELS:
        raise ValueError(f"ember.init(label={label!r}): must be one of "
                         f"{', '.join(map(repr, _LABELS))}")
    for what, value in (("grace", grace), ("start_timeout", start_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0 <= value < float("inf") or (what == "start_timeout" and value == 0):
            raise ValueError(f"ember.init({what}={value!r}): must be a number of seconds "
                             f"{'> 0' if what == 'start_timeout' else '>= 0'}")
    for what, value in (("default_pool_size", default_pool_size), ("inf_pool_size", inf_pool_size)):
        if value in ("1G", "256M"):     # the defaults: no need to load the parser (re)
            continue
        from ._size import parse_size
        try:
            parse_size(value)
        except ValueError as exc:
            raise ValueError(f"ember.init({what}={value!r}): {exc}") from None


def shutdown():
    """Leave the runtime: detach this process, and if it started the runtime
    (and not ``detached``), tear it down — the same teardown as ``ember
    run``'s, nothing left behind.  Harmless if not initialised.

    Raises
    ------
    ember.GlobalServicesError
        The runtime this process started did not stop within 30 s.
    """
    global _current
    with _lock:
        rt, _current = _current, None
        if rt is None or rt.pid != os.getpid():
            return
        rt._detach(0)
        if rt.owner:
            _stop_host(rt.address, rt.host_pid, 30.0)
        elif rt.host_pid is not None:      # detached: let it live, but reap it if it ends
            pass


_hooks = False


def _shutdown_at_exit():
    """:func:`shutdown` at interpreter exit; the spare ``ember.Process``
    leased is only killed, not waited for (``process._forget_lease``)."""
    process = sys.modules.get("ember.objects.process")
    if process is not None:
        process._forget_lease()
    shutdown()


def _install_hooks():
    global _hooks
    if _hooks:
        return
    _hooks = True
    atexit.register(_shutdown_at_exit)
    os.register_at_fork(after_in_child=_after_fork_child)


_forked_from = None     # in a forked child: the address of the parent's runtime


def _after_fork_child():
    """A forked child of an attached process re-attaches on first use.
    This runs in every fork the program makes itself, so it only writes
    two names here and two in ``_env``: each object of the parent's it
    touches is a copy-on-write fault of the child's (the child's Runtime
    made here cost ~15 more a fork)."""
    global _current, _forked_from
    rt = _current
    if rt is not None:
        _current, _forked_from = None, rt.address
        _env.forked(_reattach_forked)


def _reattach_forked():
    _reattach(Runtime(_forked_from))


def _reattach(rt):
    global _current
    with _lock:
        if _current is None:
            rt.pid = os.getpid()
            rt._attach()
            _current = rt


# ------------------------------------------------------------ host control
def _start_host(*, name, detached, label, grace, default_pool_size, inf_pool_size, timeout):
    """Start a host process (``ember start`` in the background) and wait
    until it has published its address.  Returns ``(Address, pid or None)``;
    the pid is that of our child host, None when detached (it was
    daemonized)."""
    r, w = os.pipe()
    args = [sys.executable, "-m", "ember", "start", "--ready-fd", str(w), "--grace", str(grace),
            "--label", label, "--default-pool-size", str(default_pool_size),
            "--inf-pool-size", str(inf_pool_size)]
    if name:
        args += ["--name", name]
    if detached:
        args += ["--detach"]
    else:
        args += ["--foreground", "--watch-pid", str(os.getpid())]
    _env.note_environ()           # (the host's environment, its children's base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_") or k in
           ("EMBER_LOG", "EMBER_SEGMENT_TAG", "EMBER_CONTROL_SPIN")}
    proc = None
    try:
        if not detached and _single_threaded() and \
                os.environ.get("EMBER_INIT_SPAWN") != "1":
            # Fast path: fork this (single-threaded, so fork-safe) interpreter
            # as the host instead of starting a fresh one (saves ~40 ms).
            pid = os.fork()
            if pid == 0:
                code = 70
                try:
                    os.close(r)
                    os.setsid()
                    null = os.open(os.devnull, os.O_RDONLY)
                    os.dup2(null, 0)
                    os.close(null)
                    from .launcher import cli
                    code = cli.main(args[3:])
                except BaseException:
                    import traceback
                    traceback.print_exc()
                finally:
                    os._exit(code if isinstance(code, int) else 70)
            proc = _Forked(pid)
        else:
            import subprocess
            proc = subprocess.Popen(args, pass_fds=(w,), env=env, stdin=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True)
    finally:
        os.close(w)
    # While the host comes up (the other core), load what attaching needs.
    from . import channels_c, pools_c  # noqa: F401
    from .globalservices import _client  # noqa: F401
    try:
        data = b""
        deadline = time.monotonic() + timeout
        import select
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise GlobalServicesError(f"the ember runtime did not start within {timeout} s")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            chunk = os.read(r, 4096)
            data += chunk
            if not chunk or b"\n" in data:
                break
    finally:
        os.close(r)
    line = data.decode(errors="replace").strip()
    if not line.startswith("/"):
        code = proc.wait()
        raise GlobalServicesError(f"the ember runtime failed to start (exit {code}): "
                                  f"{line or 'no address published'}")
    addr = Address.load(line)
    if detached:
        proc.wait()          # the daemonizing parent exits at once
        return addr, None
    if not isinstance(proc, _Forked):
        _spawned[proc.pid] = proc     # reaped by _stop_host (a Popen dropped unreaped warns)
    return addr, proc.pid


#: Hosts started with Popen, by pid, until _stop_host reaps them: a Popen
#: collected while its process runs warns ``ResourceWarning: subprocess N
#: is still running`` and puts it on subprocess's own reaping list.
_spawned = {}


class _Forked:
    """The bits of Popen that _start_host uses, for a forked host."""

    def __init__(self, pid):
        self.pid = pid

    def kill(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self):
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


def _stop_host(addr, host_pid, timeout):
    """Ask a host to tear down (SIGTERM) and wait until its lock is released
    (and reap it, if it is our child)."""
    if addr.alive():
        try:
            os.kill(addr.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while addr.alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    if host_pid is not None:
        popen = _spawned.pop(host_pid, None)
        status = None
        try:
            left = max(0.0, deadline - time.monotonic())
            end = time.monotonic() + left
            while True:
                pid, status = os.waitpid(host_pid, os.WNOHANG)
                if pid or time.monotonic() > end:
                    break
                time.sleep(0.005)
            if not pid:
                os.kill(host_pid, signal.SIGKILL)
                _, status = os.waitpid(host_pid, 0)
        except ChildProcessError:
            status = None
        if popen is not None:             # reaped here: tell its Popen so
            popen.returncode = -signal.SIGKILL if status is None \
                else os.waitstatus_to_exitcode(status)
    if addr.alive():
        raise GlobalServicesError(f"the ember runtime {addr.id} did not stop within {timeout} s")
    # The host removes its address before it lets the lock go; one killed
    # in its teardown (above, or by anyone) cannot: nothing of it is left
    # when a stop returns.
    if addr.path:
        _remove_stale(addr)
