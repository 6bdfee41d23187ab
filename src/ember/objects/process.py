"""``ember.Process``: run a Python function in a managed process.

Mirrors ``multiprocessing.Process`` and adds ``result()`` / ``exception``.
The process is a global-services process like any other (a p_uid, a GS
name when ``name=`` is given, ``process.query/join/kill`` see it, its output
is forwarded, teardown kills it).  How things travel: see
``ember.objects._pickling`` and docs/python-processes.md.

Everything here goes through the global-services client API and channels in
the runtime's default pool; nothing assumes how the runtime was started.
"""
import atexit
import itertools
import os
import pickle
import select
import signal as _signal
import sys
import threading
import time
import weakref

from .. import _env, _outboard, _roles, _worker
from ..descriptors import ProcessOptions
from ..exceptions import ChannelError, ProcessDied, ProcessError, RemoteError, RemoteTraceback
from . import _codec, _pickling as P
from .._trace import t as _t

__all__ = ["Process", "START_METHODS"]

#: ``"template"``: forked from the node's warm template interpreter (fast);
#: ``"spawn"``: a fresh interpreter.
START_METHODS = ("template", "spawn")

_counter = itertools.count(1)
_CALL_CAPACITY_MIN = 4
_RESULT_CAPACITY = 8
_BLOCK = 1024
#: The messages of a record (_pickling.send_record): a call still whole
#: in its channel was not read.
_CALL_MESSAGES = 2
# How often a wait for a result checks whether the process is still alive.
_SLICE = 0.02
#: How long :meth:`Process._final_pid` waits for the call's read before it
#: answers the pid the process has then (a child stopped or wedged before
#: it read its call; one started again in its place waits its own start).
_PID_WAIT = 5.0

# Started processes not yet joined (strong refs, like multiprocessing's
# _children): joined (non-daemon) or killed (daemon) at interpreter exit.
_live = set()
_live_lock = threading.Lock()


def _default_pool():
    """The runtime's default pool, attached once per process and runtime
    (a process may leave a runtime and init another: the cache of
    :func:`ember.objects.naming.default_pool` is keyed by both)."""
    from .naming import default_pool
    return default_pool()


def _create(args, env, cwd, user_name, label=None):
    """Start ``python <args>`` as a managed process; the one place where a
    Python process is created (placement, ``node=``, will go here)."""
    from ..globalservices import process as gproc

    return gproc.create(sys.executable, cwd, args, env=env, user_name=user_name or "",
                        options=None if label is None else {"label": label})


def _target_name(target):
    """``mymod.work``: a target's module and qualified name, or None."""
    if target is None:
        return None
    qn = getattr(target, "__qualname__", None)
    mod = getattr(target, "__module__", None)
    if not isinstance(qn, str):
        qn, mod = type(target).__qualname__, type(target).__module__
    return f"{mod}.{qn}" if isinstance(mod, str) and mod else qn


#: [(the C environment's fingerprint, what :func:`_environ` made of it,
#: its start-up variables: ``_worker.startup_env``)]
_environ_cache = [(None, None, ())]
_environ_mark = None                # _spawn.environ_mark, bound at the first start


def _environ():
    """This process's environment (str to str) without ``EMBER_P_UID``, and
    None for each variable the runtime's environment may hold that it
    lacks (:func:`ember._env.removed`: one it removed, which the child is
    to lack too), a new dict.  Read from the C environment, which spawn's
    child inherits (``os.environ``'s changes, ``os.putenv`` and
    ``os.unsetenv`` alike); built again only when it changed (its
    fingerprint, ``_spawn.environ_mark``, in C): decoding ~50 variables one
    by one was ~0.1 ms of every start."""
    return dict(_environ_now()[1])


def _environ_now():
    """The entry of :data:`_environ_cache` for the environment as it is
    now (made again if it changed)."""
    global _environ_mark
    if _environ_mark is None:
        _environ_mark = _outboard._ext().environ_mark
    mark = _environ_mark()
    c = _environ_cache[0]                 # (one read: starts from several threads)
    if c[0] == mark:
        return c
    env = {}
    for kv in _outboard._ext().environ_entries():
        k, eq, v = kv.partition(b"=")
        if eq and k:
            env.setdefault(os.fsdecode(k), os.fsdecode(v))
    env.pop(_env.P_UID, None)
    env.update(dict.fromkeys(_env.removed(env)))
    c = _environ_cache[0] = (mark, env, _worker.startup_env(env))
    return c


# --- the leased spare -------------------------------------------------
# A process that starts a Process (template, this node, no name) also
# creates, right after it, the next one's process ahead of time: a *spare*,
# forked from the template with the same argv and environment, its call
# and result channels attached, waiting for its call (``ember._worker
# --spare``).  GS keeps it out of lists, events and the teardown's
# survivors until it is claimed, and kills it when its creator exits.  The
# next start sends its call straight to the spare's channel and tells GS,
# in the message that asks for the next spare (ProcessClaimNext; alone,
# ProcessClaim, if none is asked for), not waited for: no round trip
# through GS, the shepherd and the template on the start's path.  See
# docs/python-processes.md.
_lease = None                 # the _Lease held, or None
#: One made for another argv, kept (not dropped) while starts of that argv
#: are not made: an "ember"-method start's argv names its program's template
#: (ember.mp.context), a plain start's does not, and a program that starts
#: both in turn would otherwise drop a lease at each start.
_parked = None
_lease_lock = threading.Lock()
#: The pid of the process (this one, not the one it was forked from) that
#: has made a template start: only a start after an earlier one asks for a
#: spare, so a program that starts a single Process leases none.
_started_in = [0]
#: The pid of the process whose C heap its first start has trimmed
#: (:func:`_trim_once`).
_trimmed_in = [0]
#: How long dropping a spare waits for it to die before its channels are
#: freed (they are its creator's; it may not touch them once freed).
_DROP_WAIT = 2.0
#: How long a start waits for GS's reply about the spare it takes.
_REPLY_WAIT = 30.0


class _Lease:
    """A spare: asked for (``pending``, GS's reply not read yet) or made
    (``desc``, its pidfd in ``res.fd``)."""

    __slots__ = ("key", "argv", "env", "cwd", "token", "desc", "res", "pending")


def _lease_key():
    """Whose spare: this process (not a fork of it) in this runtime."""
    return (os.getpid(), _env.get(_env.RUNTIME_ID), _env.get(_env.DEFAULT_POOL))


#: ``(Process._preload, Process._quiet_preload, the interpreter options'
#: text, the template's worker argv)`` of the last start (the tuples held:
#: their ids cannot be reused).
_argv_c = [None]


def _worker_argv(method, program=None):
    """The worker's argv for ``method`` (a new list), with this process's
    interpreter options (``_worker.interpreter_flags``, what spawn gives
    its child): in front for a fresh interpreter, as ``--flags=`` for the
    template (the shepherd picks one started with them; a child of one
    that is not, execs a fresh interpreter with them).  The template's, with its ``--preload=`` text
    (~2 KB under the "ember" mp method, which preloads the parent's library
    modules), is made again only when either preload tuple was replaced
    (``preload`` and the mp method replace them, never change them in
    place), the options changed (``-W`` and ``-X`` are lists a program
    may change) or ``program`` (a last preload item an mp start adds: its
    program's template, see ember.mp.context) differs."""
    flags = _worker.interpreter_flags(_environ_now()[2])
    if method != "template":
        return _worker.options_of(flags) + ["-m", "ember._worker"]
    if not _cp_offered[0] and "cloudpickle" in sys.modules:
        _offer_cloudpickle()
    pre, quiet = Process._preload, Process._quiet_preload
    c = _argv_c[0]                      # (one read: starts from several threads)
    if c is None or c[0] is not pre or c[1] is not quiet or c[2] != flags \
            or c[4] != program:
        args = ["-m", "ember._worker", "--template"]
        items = pre + quiet + ((program,) if program else ())
        if items:
            args.append("--preload=" + ",".join(items))
        if flags:
            args.append("--flags=" + flags)
        c = _argv_c[0] = (pre, quiet, flags, args, program)
    return list(c[3])


_cp_offered = [False]


def _offer_cloudpickle():
    """Have the template import cloudpickle (if it can, silently) before
    its next forks: once this process has it (a target or an object
    shipped by value, a program's own import), its children are likely to
    unpickle what it sends by value, and a child that imported it itself
    would pay ~12 ms.  The template has no cloudpickle otherwise (~1.8 MB
    and 16 mappings every clone copies and every child's exit unmaps:
    docs/python-processes.md, "Start methods and the warm template")."""
    _cp_offered[0] = True
    if "?cloudpickle" not in Process._quiet_preload:
        Process._quiet_preload = Process._quiet_preload + ("?cloudpickle",)


def _settle(lease):
    """Read GS's reply for a spare asked for: True if it runs (``desc``
    and a pidfd set); False if it could not be made (its channels then
    freed, or dropped)."""
    if lease.pending is None:
        return lease.desc is not None
    from ..descriptors import ProcessDescriptor
    from ..globalservices._client import connection

    handle, lease.pending = lease.pending, None
    try:
        lease.desc = ProcessDescriptor.from_dict(connection().finish_call(handle, _REPLY_WAIT))
        _t("P.leased")
        lease.res.fd = os.pidfd_open(lease.desc.os_pid)
        lease.res.pidfd = True
    except Exception:
        _drop(lease)
        return False
    return True


def _take_lease(argv):
    """The spare held, if it is this process's, in this runtime, made for
    ``argv`` and alive; else None (a stale one is dropped)."""
    global _lease, _parked
    stale = None
    with _lease_lock:
        lease, _lease = _lease, None
        if lease is not None and lease.argv != argv:
            if _parked is not None and _parked.argv == argv:
                lease, _parked = _parked, lease
            else:
                lease, stale, _parked = None, _parked, lease
    if stale is not None:
        _drop(stale)
    if lease is None:
        return None
    if lease.key == _lease_key() and _settle(lease) and not _readable([lease.res.fd], 0):
        return lease
    _drop(lease)
    return None


#: The largest environment a start sets in a leased spare through its
#: call channel when it differs from the spare's; a larger one takes a
#: fresh start's path (the shepherd's: the template's socket, or execve,
#: E2BIG beyond the kernel's ARG_MAX, as spawn's child), so that a start
#: works or fails alike, lease or not (the channel has no limit: an
#: environment larger than ARG_MAX reached the child of a lease).  Well
#: below the least ARG_MAX (32 pages) and the template's socket's buffer.
_LEASE_ENV_MAX = 64 * 1024


def _env_size(env):
    """The bytes ``env`` (:func:`_environ`'s) takes in a process's
    environment block, about (``k=v`` as str characters, a NUL each)."""
    return sum(len(k) + len(v) + 2 for k, v in env.items() if v is not None)


def _drop(lease):
    """Be rid of a spare that will not be used: killed (if it is still
    alive, in this process's runtime) and waited for, then its channels
    freed.  A spare of another runtime (left) or of the process this one
    was forked from is only forgotten."""
    res = lease.res
    if lease.key != _lease_key():
        res.call = res.result = None          # not ours to free
        if lease.key[0] == os.getpid() and res.fd >= 0:
            os.close(res.fd)
        res.fd = -1
        lease.pending = None
        return
    if lease.pending is not None:
        try:
            if not _settle(lease):
                return                        # dropped there
        except Exception:
            pass
    if lease.desc is None:
        res.release()                         # never made
        return
    if res.fd < 0 or not _readable([res.fd], 0):
        from ..globalservices import process as gproc
        try:
            gproc.kill(lease.desc.p_uid, _signal.SIGKILL)
        except Exception:
            pass
        if res.fd < 0 or not _readable([res.fd], _DROP_WAIT):
            res.call = res.result = None      # it may still read them: leak, do not free
    res.release()


def _drop_lease():
    """Drop the spare held, and close the sentinel watcher if it watches
    nothing (leaving the runtime, the process living on)."""
    global _lease, _parked
    with _lease_lock:
        held, _lease, _parked = (_lease, _parked), None, None
    for lease in held:
        if lease is not None:
            try:
                _drop(lease)
            except Exception:
                pass
    _Watcher.stop()


def _forget_lease():
    """At interpreter exit: be rid of the spare held without a GS round
    trip or a wait (:func:`_drop` could wait for GS's reply and for the
    spare's death, up to 32 s).  If its pid is known (GS's reply read, or
    there now), it is SIGKILLed through its pidfd: it runs no more code
    once the signal is sent, so the shepherd may reclaim its two channels
    with this process's other pool blocks at our exit.  Otherwise it is
    left to GS, which kills a process's unclaimed spares when it learns of
    its exit.  None held (every template child that started no process of
    its own): nothing touched (the lock's and this module's pages are the
    template's; each written is a copy-on-write fault)."""
    global _lease, _parked
    if _lease is None and _parked is None:
        return
    with _lease_lock:
        held, _lease, _parked = (_lease, _parked), None, None
    for lease in held:
        _forget(lease)


def _forget(lease):
    """:func:`_forget_lease` of one spare.  Its channels' handles are
    detached, not destroyed (the spare may not be dead yet; their blocks
    go with this process's at its exit): collected attached, each warned
    ``ResourceWarning: unclosed ember Channel`` under ``-X dev``."""
    if lease is None or lease.key != _lease_key():
        return
    res = lease.res
    try:
        if lease.pending is not None:
            from ..descriptors import ProcessDescriptor
            from ..globalservices._client import connection

            handle, lease.pending = lease.pending, None
            lease.desc = ProcessDescriptor.from_dict(connection().finish_call(handle, 0))
            res.fd = os.pidfd_open(lease.desc.os_pid)
        if res.fd >= 0:
            _signal.pidfd_send_signal(res.fd, _signal.SIGKILL)
    except Exception:
        pass                                  # not there yet, or gone: GS's
    for ch in (res.call, res.result):
        try:
            ch.detach()
        except Exception:
            pass                              # (None, or detached)
    res.call = res.result = None


def _ask_lease(pool, argv, claim=None):
    """Ask GS for the spare of the next start with ``argv`` and return at
    once: the reply is read by the start that takes it (:func:`_settle`).
    Nothing if it cannot be asked for (the start that asks is not failed
    for that).  ``claim``: ``(p_uid, label)`` of the spare this start took,
    claimed in the same message (ProcessClaimNext), or alone (ProcessClaim)
    if no spare is asked for."""
    global _lease
    from .. import messages as m
    from ..channels_c import Channel
    from ..globalservices._client import connection

    if _lease is not None or not _worker.templated(_worker.flags_of(argv)):
        # another thread's start asked already; or -v, -X importtime: a
        # lease would print its start-up, as no spawn child does ahead
        _claim(claim)
        return
    lease = _Lease()
    lease.desc = lease.pending = None
    res = lease.res = _Resources()
    try:
        lease.key = _lease_key()
        lease.argv = argv
        lease.env = _environ()
        lease.cwd = os.getcwd()           # (FileNotFoundError if it is gone)
        lease.token = os.urandom(8).hex()
        res.call = Channel.create(pool, capacity=_CALL_CAPACITY_MIN, block_size=_BLOCK,
                                  c_uid=_roles.c_uid(_roles.PROCESS_CALL))
        res.result = Channel.create(pool, capacity=_RESULT_CAPACITY, block_size=_BLOCK,
                                    c_uid=_roles.c_uid(_roles.PROCESS_RESULT))
        args = argv + ["--spare=" + lease.token, _env.encode(res.call.sdesc),
                       _env.encode(res.result.sdesc)]
        _t("P.lease")
        if claim is None:
            lease.pending = connection().start_call(m.ProcessCreate, sys.executable, args,
                                                    dict(lease.env), lease.cwd, "",
                                                    {"spare": True}, False)
        else:
            lease.pending = connection().start_call(m.ProcessClaimNext, *claim, sys.executable,
                                                    args, dict(lease.env), lease.cwd)
            claim = None
    except BaseException as exc:
        res.release()
        _claim(claim)                     # (the process runs: it is the caller's)
        if not isinstance(exc, Exception):
            raise
        return
    with _lease_lock:
        old, _lease = _lease, lease
    if old is not None:                       # another thread asked for one too
        _drop(old)


def _claim(claim):
    """Tell GS that the spare ``claim`` names (``(p_uid, label)``, or None:
    nothing) is a process of its own now (ProcessClaim, a notice)."""
    if claim is not None:
        from .. import messages as m
        from ..globalservices._client import connection

        connection().post(m.ProcessClaim, *claim)


#: Variables the runtime sets in each process itself (its p_uid, its
#: request key) or never passes on (spawn directives): a spare keeps its own.
_RUNTIME_VARS = frozenset((_env.P_UID, _env.KEY, _env.STDIN, _env.FORK_PY, _env.STDIO_FROM))


def _env_change(have, want):
    """(variables to set, variables to unset) to turn ``have`` into
    ``want`` (:func:`_environ`'s: a value None is a variable removed, set
    to None), or (None, None) if they are equal; never one of
    :data:`_RUNTIME_VARS`."""
    if have == want:
        return None, None
    return ({k: v for k, v in want.items() if have.get(k) != v and k not in _RUNTIME_VARS},
            [k for k in have if k not in want and k not in _RUNTIME_VARS])


def _trim_once():
    """After this process's first start, its C heap's free pages given
    back (``malloc_trim``): ember's runtime and the first start (ember's
    process and mp modules imported, the main module parsed and compiled)
    leave ~1 MB freed but kept by malloc, whose page table entries every
    fork the program makes itself copies, and every such child's exit
    unmaps (~0.3 ms once)."""
    _trimmed_in[0] = os.getpid()
    _outboard._ext().trim_heap()


def _dump_call(target, args, kwargs, pool):
    """The call's message (:func:`_codec.dumps` of ``(target, args,
    kwargs)``).  A target that cloudpickle ships by value (a function of
    ``__main__``, a lambda, a closure) is pickled once and its pickle
    reused while nothing it depends on has changed
    (:func:`_codec.prepickled`: ~0.4 ms of every start), when the
    arguments need no cloudpickle of their own (else everything is
    pickled together, as they may share objects with the target)."""
    pre = _codec.prepickled(target)
    if pre is not None:
        msg = _codec.dumps((pre, args, kwargs), pool, known_main=pre.mains)
        if msg is not None:
            return msg
        return _codec.dumps((target, args, kwargs), pool)
    # ``__main__`` inside an argument's bytes (the "ember" method's pickles
    # of its process object, whole or in _codec.parts' tuple) is data, not
    # a global the C pickler would name: no cloudpickle for it (it would be
    # imported in the parent for nothing, 2.7 MB)
    return _codec.dumps((target, args, kwargs), pool,
                        data_mains=[x for a in args for x in (a if type(a) is tuple else (a,))])


def _signal_name(sig):
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class _Resources:
    """What a started Process holds; released by :meth:`release` (join,
    close, or garbage collection through a weakref.finalize)."""

    __slots__ = ("call", "result", "fd", "pidfd", "sentinel", "__weakref__")

    def __init__(self):
        self.call = self.result = None
        self.fd = -1
        self.pidfd = False        # fd is the process's pidfd (not an eventfd)
        self.sentinel = -1        # Process.sentinel once asked for: an eventfd (_Watcher)

    def release_channels(self):
        # Once the process has exited (its fd readable) this one is the
        # channels' last user: a destroy that frees their blocks even if it
        # was killed inside a send's or receive's hand-over window
        # (channel.c, HAND-OVER), which a plain destroy leaves allocated.
        last = self.fd >= 0 and _readable([self.fd], 0)
        for attr in ("call", "result"):
            ch = getattr(self, attr)
            setattr(self, attr, None)
            if ch is not None and not ch.closed:
                try:
                    ch._destroy_last() if last else ch.destroy()
                except Exception:
                    pass

    def release(self):
        self.release_channels()
        if self.sentinel >= 0:
            _Watcher.forget(self)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _RemoteResources(_Resources):
    """What a Process started on another node holds: remote handles of its
    call and result channels (destroyed through GS) and an eventfd that a
    thread sets when GS reports the exit (the process's sentinel)."""

    __slots__ = ("c_uids", "call_sdesc", "result_sdesc")

    def __init__(self):
        super().__init__()
        self.c_uids = []
        self.call_sdesc = self.result_sdesc = None
        self.fd = os.eventfd(0, os.EFD_CLOEXEC)

    def watch(self, p_uid):
        fd = self.fd

        def wait():
            from ..globalservices import process as gproc
            try:
                gproc.join(p_uid)
            except Exception:
                pass
            try:
                os.eventfd_write(fd, 1)
            except OSError:
                pass
        threading.Thread(target=wait, daemon=True, name=f"ember-join-{p_uid}").start()

    def release_channels(self):
        from ..globalservices import channel as gch
        self.call = self.result = None
        c_uids, self.c_uids = self.c_uids, []
        for c_uid in c_uids:
            try:
                gch.destroy(c_uid)
            except Exception:
                pass

    def release(self):
        self.release_channels()
        # the fd stays open until the watching thread wrote it: closed with
        # the object (an eventfd costs nothing)


def _resolve_node(node):
    """None if ``node`` is this process's node (or None), else the node
    index (``"any"``: the live node with the fewest live processes, as GS
    would pick)."""
    if node is None:
        return None
    here = int(_env.get(_env.NODE, "0") or 0)
    if node == "any":
        d = _service_dump()
        nodes = [n for n, alive in _nodes(d).items() if alive]
        load = {n: 0 for n in nodes}
        for p in d.get("processes", ()):
            if p.get("state") not in ("exited", "lost") and p.get("node") in load:
                load[p["node"]] += 1
        node = min(nodes, key=lambda n: (load[n], n))
    return None if node == here else node


def _service_dump():
    from .. import messages as m
    from ..globalservices._client import call
    return call(m.ServiceDump)


def _nodes(dump):
    """{node index: alive} of a ServiceDump."""
    return {int(n): bool(i.get("alive"))
            for n, i in (dump.get("nodes") or {"0": {"alive": True}}).items()}


def _node_refused(name, node):
    """The ProcessError for a start on ``node`` whose channels GS refused,
    if the node is why (not in the runtime, or lost); else None."""
    nodes = _nodes(_service_dump())
    if node not in nodes:
        return ProcessError(f"cannot start process {name!r}: no node {node} in this runtime "
                            f"(nodes: {', '.join(map(str, sorted(nodes)))})")
    if not nodes[node]:
        return ProcessError(f"cannot start process {name!r}: node {node} was lost")
    return None


def _readable(fds, timeout):
    """True if any of ``fds`` is readable within ``timeout`` seconds (None:
    wait).  poll(), not select(): fds may be above FD_SETSIZE."""
    p = select.poll()
    for fd in fds:
        p.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return bool(p.poll(ms))


def _here():
    """This process's working directory, where a process started without
    ``cwd=`` runs; ProcessError if it cannot be known (removed)."""
    try:
        return os.getcwd()
    except OSError as exc:
        raise ProcessError(f"cannot start a process in this process's working directory: "
                           f"{exc.strerror} (removed?); give cwd=, or os.chdir() "
                           f"elsewhere first") from None


def _exited_fd():
    """An fd that is readable at once (the process is already gone)."""
    fd = os.eventfd(1, os.EFD_CLOEXEC)
    return fd


#: How often the sentinel watcher looks again at a Process whose lock
#: another thread held, and at whether it still has anything to watch
#: (:class:`_Watcher`).
_BUSY_RETRY = 0.05
#: ... and at whether anything is left to watch: it is gone once nothing
#: was for a look (a program that starts and joins one process after
#: another keeps it).
_IDLE_LOOK = 1.0


class _Watcher:
    """The thread that makes each ``Process.sentinel`` asked for readable
    at its process's end: one per process (this one, not a process it was
    forked from) while any sentinel it made waits for its end, made at
    the first such sentinel, gone (its thread and epoll set) once none is
    left.

    The sentinel is an eventfd, not the process's pidfd: a process started
    again in its place (a spare or a lease killed before it read its
    request or call, docs/python-processes.md) has a pidfd of its own, and
    an epoll set, a ``selectors`` selector or an asyncio loop that
    registered the old one keys on its open file, not on its fd number:
    the new pidfd, though it takes the old fd number (``dup2``), would
    never be seen; and the old one turns readable at the first process's
    death, before anyone knows whether it is started again.  The thread
    waits on the pidfds (an epoll set of its own) and writes a sentinel
    once its Process knows the end (:meth:`Process._ended`: the end of
    the process started again, if it was).  A Process whose lock another
    thread holds (a ``join()`` that waits for the process started again)
    is out of the set and looked at again every :data:`_BUSY_RETRY` s.
    A pidfd leaves the set before it is closed or replaced (a fork's copy
    of it would keep a closed one's entry, readable for ever).  Once
    nothing is watched for :data:`_IDLE_LOOK` s, or at :meth:`stop`, the
    set is closed and the thread ends."""

    __slots__ = ("pid", "ep", "procs", "lock")
    _it = None                            # the last made
    _make_lock = threading.Lock()

    @classmethod
    def watch(cls, proc):
        """``proc``'s sentinel, made (and its pidfd watched) at the first call."""
        res = proc._res
        with cls._make_lock:
            while res.sentinel < 0 and res.fd >= 0:
                if proc._exitcode is not None:        # ended (joined): readable at once
                    res.sentinel = os.eventfd(1, os.EFD_CLOEXEC)
                    break
                w = cls._it
                if w is None or w.pid != os.getpid() or w.ep.closed:
                    w = object.__new__(cls)
                    w.pid, w.ep, w.procs, w.lock = os.getpid(), select.epoll(), {}, \
                        threading.Lock()
                    threading.Thread(target=w._run, daemon=True, name="ember-sentinels").start()
                    cls._it = w
                with w.lock:
                    if w.ep.closed:
                        continue          # its last one ended meanwhile: a new one
                    res.sentinel = os.eventfd(0, os.EFD_CLOEXEC)
                    w.procs[res.fd] = weakref.ref(proc)
                    w.ep.register(res.fd, select.EPOLLIN)
        return res.sentinel

    @classmethod
    def _mine(cls, res):
        """The live watcher of this process, if ``res`` has a sentinel."""
        w = cls._it
        return w if res.sentinel >= 0 and w is not None and w.pid == os.getpid() else None

    @classmethod
    def forget(cls, res):
        """Before ``res`` closes its pidfd: out of the set, its sentinel closed."""
        w = cls._mine(res)
        if w is None:
            os.close(res.sentinel)
            res.sentinel = -1
            return
        with w.lock:
            w._drop(res.fd)
            os.close(res.sentinel)
            res.sentinel = -1

    @classmethod
    def replace(cls, res, fd):
        """``fd``, a new process's pidfd, takes ``res.fd``'s number (``dup2``;
        closed), watched in its place if ``res`` is."""
        w = cls._mine(res)
        if w is None:
            os.dup2(fd, res.fd, inheritable=False)
            os.close(fd)
            return
        with w.lock:
            watched = res.fd in w.procs
            if watched:
                try:
                    w.ep.unregister(res.fd)
                except OSError:
                    pass                  # out of the set (busy)
            os.dup2(fd, res.fd, inheritable=False)
            os.close(fd)
            if watched:
                w.ep.register(res.fd, select.EPOLLIN)

    @classmethod
    def pause(cls, res):
        """The watcher of ``res``'s sentinel, its pidfd out of the set while
        a thread waits on it (:meth:`Process._ended`, then :meth:`resume`);
        None if it is not watched."""
        w = cls._mine(res)
        if w is None:
            return None
        with w.lock:
            if res.fd not in w.procs:
                return None
            try:
                w.ep.unregister(res.fd)
            except OSError:
                pass                      # out already (busy, or another's wait)
        return w

    def resume(self, res, ended):
        """After :meth:`pause`: the sentinel written if the wait ``ended``,
        else the pidfd back in the set."""
        with self.lock:
            if res.fd not in self.procs:
                return                    # done meanwhile (the thread, another wait)
            if ended:
                os.eventfd_write(res.sentinel, 1)
                self._drop(res.fd)
            else:
                try:
                    self.ep.register(res.fd, select.EPOLLIN)
                except FileExistsError:
                    pass

    @classmethod
    def stop(cls):
        """Close this process's watcher now if it watches nothing (leaving
        the runtime; its thread ends at its next look)."""
        w = cls._it
        if w is not None and w.pid == os.getpid():
            with w.lock:
                if not w.procs:
                    w.ep.close()

    def _drop(self, fd):
        """``fd`` watched no more (under the lock)."""
        if self.procs.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass                      # out of the set (busy)

    def _run(self):
        busy = set()                      # out of the set: their lock was held
        while True:
            try:
                events = self.ep.poll(_BUSY_RETRY if busy else _IDLE_LOOK)
            except (ValueError, OSError):
                return                    # closed (stop())
            if not events and not busy:
                with self.lock:
                    if not self.procs:
                        self.ep.close()   # nothing watched for a look: gone
                        return
            out, busy = busy, set()
            for fd in out.union(fd for fd, _ in events):
                ref = self.procs.get(fd)
                p = None if ref is None else ref()
                try:
                    ended = True if p is None else p._ended(0, block=False)
                except Exception:
                    ended = True          # (GS gone: the kernel's word, as _follow's)
                with self.lock:
                    if ref is None or self.procs.get(fd) is not ref:
                        continue          # forgotten meanwhile
                    if ended is None:
                        try:
                            self.ep.unregister(fd)
                        except OSError:
                            pass
                        busy.add(fd)
                    elif ended:
                        if p is not None and p._res.sentinel >= 0:
                            os.eventfd_write(p._res.sentinel, 1)
                        self._drop(fd)
                    elif fd in out:       # (or back already: replace())
                        try:
                            self.ep.register(fd, select.EPOLLIN)
                        except FileExistsError:
                            pass


# ioctl(pidfd, PIDFD_GET_INFO, struct pidfd_info) (Linux 6.13+; the exit
# status in it, PIDFD_INFO_EXIT, 6.15+): _IOWR(0xFF, 11, 64 bytes), the
# first version of the struct (mask, cgroupid, 11 ids, exit_code at 60).
_PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
_PIDFD_INFO_EXIT = 8
_STAT_EXIT_CODE = 49      # /proc/PID/stat field 52, counted after the ")"


def _ids_match(status, euid=None, egid=None):
    """True if this process (effective ids ``euid``, ``egid``; None: ours)
    may read the ``exit_code`` field of the process whose /proc/PID/status
    is ``status`` (the kernel shows it only with ptrace-read access, and
    shows 0 otherwise): same real, effective and saved uid and gid as our
    effective ones, or we are root."""
    euid = os.geteuid() if euid is None else euid
    egid = os.getegid() if egid is None else egid
    if euid == 0:
        return True
    want = {b"Uid:": euid, b"Gid:": egid}
    seen = 0
    for line in status.split(b"\n"):
        f = line.split()
        if f and f[0] in want:
            if len(f) < 4 or any(int(x) != want[f[0]] for x in f[1:4]):
                return False
            seen += 1
    return seen == 2


def _read_proc(pid, name):
    """The contents of /proc/``pid``/``name`` (a small file, read in one
    call: no file object, ~5 us less a read)."""
    fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def _exit_status(pid, pidfd):
    """The exit code (as ``exitcode``: -N for a signal) of process ``pid``,
    which has ended (``pidfd`` is readable), learnt here without asking GS;
    None if it cannot be known for sure.  The process is the shepherd's
    child, not ours, so we cannot wait for it.  Once the shepherd has
    reaped it, the kernel keeps its wait status with the pidfd
    (``PIDFD_INFO_EXIT``, Linux 6.15+).  Before that, while it is a
    zombie, the status is the ``exit_code`` field of /proc/PID/stat, ours
    if the pid still names our process *after* the read (a signal 0
    through the pidfd succeeds until the reap; only after it could the pid
    be reused).  A reap in progress (state X) is waited for a few yields."""
    import fcntl
    import signal
    import struct

    buf = bytearray(64)
    has_info = True
    for _ in range(20):
        if has_info:
            try:
                struct.pack_into("=Q", buf, 0, _PIDFD_INFO_EXIT)
                fcntl.ioctl(pidfd, _PIDFD_GET_INFO, buf, True)
                if struct.unpack_from("=Q", buf, 0)[0] & _PIDFD_INFO_EXIT:
                    return os.waitstatus_to_exitcode(struct.unpack_from("=i", buf, 60)[0])
            except OSError:
                has_info = False                        # an older kernel
        try:
            fields = _read_proc(pid, "stat").rsplit(b")", 1)[1].split()
            state = fields[0]
            # (root may read every field: no need of the ids)
            status = None if state != b"Z" or os.geteuid() == 0 else _read_proc(pid, "status")
        except (OSError, IndexError):
            state = None                                # reaped (or being reaped)
        if state == b"Z" and len(fields) > _STAT_EXIT_CODE:
            if status is not None and not _ids_match(status):
                return None
            try:
                wstatus = int(fields[_STAT_EXIT_CODE])
                signal.pidfd_send_signal(pidfd, 0)      # still not reaped: it was ours
                return os.waitstatus_to_exitcode(wstatus)
            except (OSError, ValueError):
                pass                                    # reaped meanwhile: the pidfd has it
        elif state not in (None, b"X") or not has_info:
            return None
        os.sched_yield()
    return None


class Process:
    """A Python function run in its own managed process.

    Parameters
    ----------
    target : callable or None
        Called in the new process as ``target(*args, **kwargs)``; any
        callable cloudpickle can ship (module functions, functions and
        classes of ``__main__``, lambdas, closures, bound methods).
    args, kwargs
        Its arguments (pickled, protocol 5; large buffers out of band).
    name : str or None
        A global-services name for the process (unique among live
        processes); None: the process has no GS name and ``p.name`` is
        ``"Process-<n>"``.
    daemon : bool or None
        A daemon process is killed when the process that started it exits;
        others are joined then (as in multiprocessing).
    env : dict or None
        Environment variables added to / overriding this process's own.
    cwd : str or None
        Working directory (default: this process's).
    start_method : {"template", "spawn"} or None
        None: :attr:`Process.start_method`.  See docs/python-processes.md.
    node : int, "any" or None
        The node it runs on in a runtime of several nodes
        (docs/multinode.md): a node index, ``"any"`` (the live node with
        the fewest live processes), or None (this process's node).

    Raises
    ------
    TypeError
        ``target`` not callable, ``args`` not a tuple, ``kwargs`` or ``env``
        not a dict (of str to str), ``name`` not a str, ``daemon`` not a
        bool (the message names the argument).
    ValueError
        An unknown ``start_method``, a bad ``node``.
    """

    #: Default start method of new processes.
    start_method = "template"
    _preload = ()
    #: ``"?name"``: modules the template imports if it can, silently (the
    #: multiprocessing start method preloads the parent's library modules).
    _quiet_preload = ()
    #: An mp start's program template (``_worker_argv``); None for others.
    _program = None
    #: Lease a spare for the next start (see "How a start works" in
    #: docs/python-processes.md); False: every start goes through GS.
    _lease_spares = True

    def __init__(self, target=None, args=(), kwargs=None, name=None, daemon=None, env=None,
                 cwd=None, *, start_method=None, node=None):
        if target is not None and not callable(target):
            raise TypeError(f"target must be callable, not {type(target).__name__}")
        if isinstance(args, (str, bytes)) or not isinstance(args, (tuple, list)):
            raise TypeError(f"args must be a tuple, not {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs must be a dict, not {type(kwargs).__name__}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__}")
        if daemon is not None and not isinstance(daemon, bool):
            raise TypeError(f"daemon must be a bool or None, not {type(daemon).__name__}")
        if env is not None:
            if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in env.items()):
                raise TypeError("env must be a dict mapping str to str")
        if cwd is not None:
            cwd = os.fspath(cwd)
        if start_method is not None and start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
        if node is not None and node != "any" and (isinstance(node, bool)
                                                   or not isinstance(node, int) or node < 0):
            raise ValueError(f"node must be a node index (int >= 0), 'any' or None, not {node!r}")
        self._node = node
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._gs_name = name
        self._name = name or f"Process-{next(_counter)}"
        self._what = None             # what it is, for `ember ps` (default: the target's name)
        self._daemon = bool(daemon)
        self._env = dict(env or {})
        self._cwd = cwd
        self._start_method = start_method
        self._desc = None
        self._res = None
        self._finalizer = None
        self._reader = None
        self._exitcode = None
        self._kcode = None            # (pid, the kernel's exit status of it): _kernel_code
        self._leased = False          # started on a lease not yet started again (_rerun)
        self._asked = ()              # signals GS took to send it (_send_signal)
        self._settled = False         # pid is final: its process read the call (pid)
        self._pid_waited = False      # _final_pid waited _PID_WAIT in vain: answers at once
        self._outcome = None          # (kind, value) once decided
        self._closed = False
        self._lock = threading.RLock()

    def _ps_label(self):
        """What `ember ps` shows for this process when it has no GS name
        (ProcessOptions.label), as multiprocessing names its processes:
        ``"Process-3 (mymod.work)"``; None for a named one."""
        if self._gs_name is not None:
            return None
        what = self._what or _target_name(self._target)
        label = f"{self._name} ({what})" if what else self._name
        return label[:ProcessOptions.LABEL_MAX]

    # ------------------------------------------------------------------
    @classmethod
    def preload(cls, modules):
        """Import ``modules`` (a list of names) in the warm template before
        it forks the next processes, so they start with them imported (like
        multiprocessing's ``set_forkserver_preload``)."""
        if isinstance(modules, str) or not all(isinstance(m, str) and m and "," not in m
                                               for m in modules):
            raise TypeError("preload takes a list of module names")
        cls._preload = tuple(dict.fromkeys(tuple(cls._preload) + tuple(modules)))

    # --- properties as multiprocessing.Process -------------------------
    @property
    def name(self):
        """The process's GS name if ``name=`` was given, else
        ``"Process-<n>"``.  Settable before :meth:`start` (a
        :class:`~ember.ProcessError` after)."""
        return self._name

    @name.setter
    def name(self, value):
        if self._desc is not None:
            raise ProcessError("cannot rename a started process")
        if not isinstance(value, str):
            raise TypeError("name must be a str")
        self._name = self._gs_name = value

    @property
    def daemon(self):
        """Killed (True) or joined (False) when the process that started it
        exits.  Settable before :meth:`start`."""
        return self._daemon

    @daemon.setter
    def daemon(self, value):
        if self._desc is not None:
            raise ProcessError("process has already started")
        self._daemon = bool(value)

    @property
    def pid(self):
        """The OS pid (on its node), or None before :meth:`start`; also
        ``ident``.  A process started again because its spare died before
        it read the request (docs/python-processes.md) has the new pid from
        then on."""
        if self._desc is not None and not self._settled and self._exitcode is None \
                and not self._closed and self._res.pidfd:
            self._check_pid()
        return None if self._desc is None else self._desc.os_pid

    ident = pid

    def _final_pid(self):
        """:attr:`pid` once it is final: the process that has it read its
        call, or it ended (a process started again in its place is waited
        for; one on another node at once).  The "ember" method's
        ``Popen.pid``: a program keeps the pid it read after ``start()``,
        as concurrent.futures keys its workers by it, and each worker that
        exits after ``max_tasks_per_child`` tasks says which it was by its
        ``os.getpid()`` (the executor's manager thread died on the spare's
        pid and every later submit hung).  Waits on the call channel until
        the child took it (``Channel._wait_below``: the receive wakes it),
        looking at the pidfd each :data:`_SLICE` (a child killed before it
        read its call, started again or not).  A process that has not read
        it after :data:`_PID_WAIT` s (SIGSTOPped, wedged) gets the pid it has
        then, and every later ask at once (:attr:`pid`: the one started
        again in its place, if it is): this waited for ever."""
        deadline = None
        while True:
            pid = self.pid                # (follows a start again, notes a read call)
            res = self._res
            if pid is None or self._settled or self._pid_waited or self._exitcode is not None \
                    or self._closed or not res.pidfd or self._ended(0):
                return self._desc.os_pid
            now = time.monotonic()
            if deadline is None:
                deadline = now + _PID_WAIT
            elif now >= deadline:
                self._pid_waited = True
                continue
            try:
                res.call._wait_below(_CALL_MESSAGES, min(_SLICE, deadline - now))
            except Exception:
                # (released meanwhile, or no channel to wait on: the next
                # look says; not at once, which would spin while it runs)
                time.sleep(0.001)

    @property
    def p_uid(self):
        """The process's identity in the runtime (global services' p_uid),
        or None before :meth:`start`."""
        return None if self._desc is None else self._desc.p_uid

    @property
    def exitcode(self):
        """None while it runs; then 0 after a return, 1 after an exception,
        ``sys.exit``'s code, or -N after death by signal N."""
        if self._desc is not None and self._exitcode is None and not self._closed:
            self._poll()
        return self._exitcode

    def _check_pid(self):
        """Follow a new pid if the process was started again (:meth:`_ended`),
        and note when the pid is final: once the process that has it has
        read its call, it is started again no more (a spare only before
        it read its request, a lease before it read its call, which comes
        after the request), so :attr:`pid` asks nothing from then on.  The
        call is looked at before the pidfd (a process started again in
        its place may be the one that read it)."""
        res = self._res
        try:
            read = res.call is None or len(res.call) != _CALL_MESSAGES
        except Exception:                 # (released meanwhile: ended)
            read = False
        if _readable([res.fd], 0):
            self._ended(0)                # (follows a new pid)
        elif read:
            self._settled = True

    @property
    def sentinel(self):
        """An fd that becomes readable when the process ends (an eventfd
        made at the first ask; for a process started again in its place,
        when that one ends).  See docs/python-processes.md."""
        self._check_closed()
        res = self._res
        if res is None:
            raise ValueError("process not started")
        if not res.pidfd:
            return res.fd                 # an eventfd already (another node; gone at once)
        return res.sentinel if res.sentinel >= 0 else _Watcher.watch(self)

    def __repr__(self):
        if self._desc is None:
            state = "initial"
        elif self._exitcode is None:
            state = "started"
        else:
            state = f"stopped exitcode={self._exitcode}"
        return f"<ember.Process name={self._name!r} p_uid={self.p_uid} {state}>"

    # ------------------------------------------------------------------
    def _check_closed(self):
        if self._closed:
            raise ValueError("process object is closed")

    def start(self):
        """Start the process; returns once it runs.

        Raises
        ------
        ember.ProcessError
            It was started before, its ``name`` is taken by a live process,
            or the runtime could not start it (the message says why).
        ValueError
            The object was closed.
        ember.PoolExhausted
            No room in the runtime's default pool for the call's channels.
        """
        self._check_closed()
        with self._lock:
            if self._desc is not None:
                raise ProcessError("cannot start a process twice")
            _t("P.start")
            _sweep()
            node = _resolve_node(self._node)
            if node is not None:
                return self._start_remote(node)
            here = self._cwd or _here()   # (before anything is made or taken)
            pool = _default_pool()
            method = self._start_method or Process.start_method
            leasing = method == "template" and self._gs_name is None and Process._lease_spares
            _t("P.prep")
            msg = _dump_call(self._target, self._args, self._kwargs, pool)
            argv = _worker_argv(method, self._program)    # (after the call's pickle, which may import cloudpickle)
            _t("P.dumped")
            lease = _take_lease(argv) if leasing and self._cwd_ok() else None
            claim = None
            if lease is not None and self._start_spare(lease, msg, here):
                claim = (lease.desc.p_uid, self._ps_label())
            else:
                self._start_new(pool, msg, argv, here)
            with _live_lock:
                _live.add(self)
            if _trimmed_in[0] != os.getpid():
                _trim_once()
            if leasing:
                pid = os.getpid()
                if claim is not None or _started_in[0] == pid:
                    # the next start's, while this one runs; with the claim
                    _ask_lease(pool, argv, claim)
                _started_in[0] = pid          # (not after a first start: it may be the only)

    def _cwd_ok(self):
        """False if ``cwd`` is not a directory we may enter (the spare is
        not used: a fresh start reports why, as the shepherd says it)."""
        cwd = self._cwd
        return not cwd or (os.path.isdir(cwd) and os.access(cwd, os.X_OK))

    def _start_spare(self, lease, msg, here):
        """Start by giving the call to the leased spare ``lease`` (its
        claim goes to GS with the next spare's request: :func:`_ask_lease`),
        to run in ``here``; False, the lease dropped and nothing sent, for
        an environment other than the lease's and larger than
        :data:`_LEASE_ENV_MAX` (a fresh start decides)."""
        res = lease.res
        want = _environ()
        want.update(self._env)
        setenv, unsetenv = _env_change(lease.env, want)
        if (setenv or unsetenv) and _env_size(want) > _LEASE_ENV_MAX:
            _drop(lease)
            return False
        # (the directory always: the lease's, entered when it was made, may
        # have been removed and made again under the same name since)
        cwd = os.path.abspath(here) if self._cwd else here
        extra = pickle.dumps((list(sys.path), setenv, unsetenv, cwd, lease.token,
                              _outboard._ext().proc_state()))
        try:
            P.send_record(res.call, P.KIND_CALL, msg, extra=extra)
        except BaseException:
            _drop(lease)
            raise
        _t("P.sent")
        self._leased = True
        self._desc = lease.desc
        self._res = res
        self._finalizer = weakref.finalize(self, res.release)
        self._finalizer.atexit = False
        self._reader = P.RecordReader(res.result)
        return True

    def _start_new(self, pool, msg, args, here):
        """Start a new process (GS, the shepherd, the template or spawn) in
        ``here``."""
        from ..channels_c import Channel

        res = _Resources()
        fin = weakref.finalize(self, res.release)
        # Not at interpreter exit: weakref's exit hook runs before ours
        # (and before an Executor's), and would pull channels and the
        # pidfd from under processes still being joined.
        fin.atexit = False
        try:
            try:
                res.call = Channel.create(pool, capacity=_CALL_CAPACITY_MIN, block_size=_BLOCK,
                                          c_uid=_roles.c_uid(_roles.PROCESS_CALL))
                res.result = Channel.create(pool, capacity=_RESULT_CAPACITY, block_size=_BLOCK,
                                            c_uid=_roles.c_uid(_roles.PROCESS_RESULT))
            except BaseException:
                _codec.free_unsent(msg)
                raise
            P.send_record(res.call, P.KIND_CALL, msg, extra=pickle.dumps(
                (list(sys.path), None, None, None, None, _outboard._ext().proc_state())))
            del msg
            args = args + [_env.encode(res.call.sdesc), _env.encode(res.result.sdesc)]
            env = _environ()
            env.update(self._env)
            _t("P.create")
            self._desc = _create(args, env, here, self._gs_name, self._ps_label())
            _t("P.created")
        except BaseException:
            fin()
            raise
        try:
            res.fd = os.pidfd_open(self._desc.os_pid)
            res.pidfd = True
        except ProcessLookupError:
            res.fd = _exited_fd()
        self._res = res
        self._finalizer = fin
        self._reader = P.RecordReader(res.result)

    def _start_remote(self, node):
        """Start on another node: the call and result channels are made in
        that node's pool through GS (the parent holds remote handles, the
        worker local ones); the exit is learnt from GS, not from a pidfd."""
        from ..globalservices import channel as gch
        from ..channels_c import Channel
        from ..descriptors import ChannelOptions

        msg = _codec.dumps((self._target, self._args, self._kwargs), _default_pool())
        if not isinstance(msg, bytes):            # a frame in this node's pool: by value
            data = bytes(memoryview(msg))
            _codec.free_unsent(msg)
            msg = data
        res = _RemoteResources()
        fin = weakref.finalize(self, res.release)
        fin.atexit = False
        try:
            for attr, cap in (("call", _CALL_CAPACITY_MIN), ("result", _RESULT_CAPACITY)):
                try:
                    d = gch.create(None, None, ChannelOptions(capacity=cap, block_size=_BLOCK,
                                                              node=node))
                except ChannelError as exc:
                    # (GS names the channel, which the caller never saw)
                    raise _node_refused(self._name, node) or exc from None
                res.c_uids.append(d.c_uid)
                setattr(res, attr, Channel.attach(d))
                setattr(res, attr + "_sdesc", d.sdesc)
            P.send_record(res.call, P.KIND_CALL, msg, extra=pickle.dumps(list(sys.path)))
            res.call.flush()
            del msg
            args = ["-m", "ember._worker"]
            if (self._start_method or Process.start_method) == "template":
                args.append("--template")
                pre = Process._preload
                if "cloudpickle" in sys.modules:      # (see _offer_cloudpickle)
                    pre += ("?cloudpickle",)
                if pre:
                    args.append("--preload=" + ",".join(pre))
                flags = _worker.interpreter_flags(_environ_now()[2])  # (the parent's, as here)
                if flags:
                    args.append("--flags=" + flags)
            args += [_env.encode(res.call_sdesc), _env.encode(res.result_sdesc)]
            env = _environ()
            env.update(self._env)
            from ..globalservices import process as gproc
            self._desc = gproc.create(sys.executable, self._cwd, args, env=env,
                                      user_name=self._gs_name or "",
                                      options={"node": node, "label": self._ps_label()})
            res.watch(self._desc.p_uid)
        except BaseException:
            fin()
            raise
        self._res = res
        self._finalizer = fin
        self._reader = P.RecordReader(res.result)
        with _live_lock:
            _live.add(self)

    # --- waiting --------------------------------------------------------
    def _ended(self, timeout, block=True):
        """Wait up to ``timeout`` (None: forever) for the process to end: its
        pidfd readable and, if a signal ended it, not started again by the
        runtime (:meth:`_follow`).  A signal that GS took to send it
        (:meth:`kill`, :meth:`terminate`) is its end, at once: the
        shepherd and GS start again only a process that a signal nobody
        asked through ember ended.  ``block`` False: None if another
        thread holds the lock that :meth:`_follow` takes.

        A wait of this thread on the pidfd takes it out of the sentinel
        watcher's set meanwhile (:meth:`_Watcher.pause`): the end wakes
        this thread alone, which writes the sentinel (a join does not
        share the end's wake-up with the watcher's thread)."""
        res = self._res
        if timeout != 0 and res.sentinel >= 0:
            w = _Watcher.pause(res)
            if w is not None:
                ended = False
                try:
                    ended = self._end_known(timeout, block)
                finally:
                    w.resume(res, ended)
                return ended
        return self._end_known(timeout, block)

    def _end_known(self, timeout, block):
        """:meth:`_ended`, the sentinel's watcher aside."""
        if self._exitcode is not None:
            return True
        res = self._res
        pid = self._desc.os_pid
        if not _readable([res.fd], timeout):
            return False
        if not res.pidfd:
            return True
        code = self._kernel_code()
        if code is not None and (code >= 0 or -code in self._asked):
            return True
        if not self._lock.acquire(block):
            return None
        try:
            if self._exitcode is not None:
                return True
            if self._desc.os_pid != pid:      # another thread followed meanwhile
                return self._ended(timeout)
            if code is not None and self._settled:
                # it read its call: never started again, the kernel's word is
                # its end (GS need not be asked: it may be slow or stopped;
                # a lease's GS is told its end stands)
                self._rerun()
                return True
            return self._follow(timeout)
        finally:
            self._lock.release()

    def _rerun(self):
        """A lease this start took that ended (GS says so) with its call
        record still whole in the call channel never ran it: a signal
        killed it just before the call's send (after :func:`_take_lease`
        looked at its pidfd: it lands at once, ends the process a moment
        later) or just after.  GS starts it again under the same p_uid
        (ProcessRerun: once, from the lease's request); its descriptor,
        with the new pid, or None."""
        if not self._leased:
            return None
        self._leased = False
        try:
            from .. import messages as m
            from ..globalservices._client import connection

            if len(self._res.call) != _CALL_MESSAGES:
                # read, or being read: its end stands (GS writes the death
                # line it held while it could be started again)
                connection().post(m.ProcessNoRerun, self._desc.p_uid)
                return None
            from ..descriptors import ProcessDescriptor

            return ProcessDescriptor.from_dict(connection().call(m.ProcessRerun,
                                                                 self._desc.p_uid))
        except Exception:
            return None

    def _kernel_code(self):
        """:func:`_exit_status` of the ended process, asked once (kept with
        its pid)."""
        k = self._kcode
        if k is None or k[0] != self._desc.os_pid:
            k = self._kcode = (self._desc.os_pid, _exit_status(self._desc.os_pid, self._res.fd))
        return k[1]

    def _follow(self, timeout):
        """A signal ended the process (or its status is unknown): it may be
        a shepherd's spare killed just before a start handed it the
        request, which the shepherd then starts again under the same p_uid
        (another spare, or the template's fork), GS learning the new pid.
        GS says which: True if it ended, else the pidfd follows the new pid
        (at the same fd number; :class:`_Watcher` watches it for the
        sentinel) and the new process is waited for within what is left
        of ``timeout``.  Called under the lock (:meth:`_ended`).  Until
        GS knows either (the shepherd has yet to report the exit or the
        new pid), GS is asked again after a join of at most :data:`_SLICE`
        s, one even with ``timeout`` 0 (the shepherd reports an exit that
        soon: ``is_alive()`` says False for a process killed, as it did
        before); False once ``timeout`` has passed."""
        import time

        from ..globalservices import process as gproc

        deadline = None if timeout is None else time.monotonic() + timeout
        grace = _SLICE
        while True:
            try:
                desc = gproc.query(self._desc.p_uid)
            except Exception:             # GS gone (ember.shutdown()): the kernel's word
                return True
            if not desc.is_alive:
                desc = self._rerun()
                if desc is None:
                    return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if desc.os_pid != self._desc.os_pid and desc.os_pid is not None:
                self._desc = desc
                try:
                    fd = os.pidfd_open(desc.os_pid)
                except ProcessLookupError:
                    continue              # ended already: GS will say so
                _Watcher.replace(self._res, fd)     # (the same fd number)
                _t("P.followed")
                return self._ended(left)
            if left is not None and left <= 0 and grace is None:
                return False
            wait = _SLICE if left is None else min(_SLICE, max(left, grace or 0.0))
            grace = None
            try:
                gproc.join(self._desc.p_uid, wait)
            except Exception:
                return True

    def _wait(self, timeout, result_only=False):
        """Collect the result record and the exit; True once the process has
        ended and everything it sent is read (with ``result_only``: once a
        complete result has arrived, or the process has ended).

        Without ``result_only`` (join), only the exit is waited for, on the
        pidfd: the result record is read afterwards.  The worker sends one
        record (two messages) on a channel of :data:`_RESULT_CAPACITY`
        slots and exits, so it never waits for this side to read; and this
        process is woken once, at the exit, not also for the result (a
        wake-up that could also preempt the child on its way out).  A
        process on another node is read as it goes (its result comes
        through the transport, which a read after the exit may not yet
        have brought)."""
        import time

        if self._exitcode is not None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        reader = self._reader
        _t("P.wait")
        read_first = result_only or isinstance(self._res, _RemoteResources)
        while read_first and not reader.records and self._outcome is None:
            if self._ended(0):
                break
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            reader.pump(_SLICE if left is None else min(_SLICE, left))
        if result_only and (reader.records or self._outcome is not None):
            return True
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._ended(left):
            return False
        _t("P.ended")
        try:
            while reader.pump(0):     # what it sent just before exiting
                pass
        except ChannelError:
            res = self._res
            if not (res.pidfd and res.result is not None and res.result.pool.closed):
                raise
            # this process shut the runtime down (ember.shutdown()): the
            # teardown ended the process, and its channels and GS are gone;
            # what it sent is lost, its exit status is the kernel's
            from ..messages import EXIT_UNKNOWN

            code = _exit_status(self._desc.os_pid, res.fd)
            self._finish(EXIT_UNKNOWN if code is None else code)
            return True
        _t("P.pumped")
        code = self._exit_code_here()
        if code is None:
            from ..globalservices import process as gproc

            code = gproc.join(self._desc.p_uid)
        _t("P.code")
        self._finish(code)
        return True

    def _exit_code_here(self):
        """0 if the ended process exited with code 0, as the kernel says
        through its pidfd (:func:`_exit_status`), without the GS round trip
        (which waits for the shepherd to reap it and tell GS); else None:
        the exit is then learnt from GS's join, which also frees a GS
        name for reuse, marks a failed exit as joined (no death report at
        teardown) and returns after the shepherd reclaimed what a killed
        process held."""
        res = self._res
        if not res.pidfd or self._gs_name is not None:
            return None
        if self._kernel_code() != 0:
            return None
        # Its output is all out (the shepherd's output board), or GS's
        # answer, which follows the shepherd's forwarding of it.
        return 0 if _outboard.out(self._desc.p_uid) else None

    def _poll(self):
        # The end is looked at before the lock: a join() or result() of
        # another thread holds it for as long as the process runs (exitcode
        # waited for that wait, and gave the exit code where it was None),
        # or one started again in its place (block=False: None, not known)
        if self._res is None or not self._ended(0, block=False):
            return
        with self._lock:
            if self._exitcode is None and self._ended(0):
                self._wait(None)

    def _finish(self, code):
        self._exitcode = code
        self._res.release_channels()
        with _live_lock:
            _live.discard(self)

    def join(self, timeout=None):
        """Wait until the process ends (at most ``timeout`` seconds).  As in
        multiprocessing, returns None either way; check :attr:`exitcode`.

        Raises
        ------
        ember.ProcessError
            The process was never started.
        ValueError
            The object was closed.
        """
        self._check_closed()
        if self._desc is None:
            raise ProcessError("can only join a started process")
        if timeout is not None and timeout < 0:
            timeout = 0
        with self._lock:
            self._wait(timeout)

    def is_alive(self):
        """True from :meth:`start` until the process has ended."""
        self._check_closed()
        if self._desc is None or self._exitcode is not None:
            return False
        if not self._ended(0):
            return True
        self._poll()
        return False

    # --- outcome --------------------------------------------------------
    def _decide(self):
        """The outcome after the end: ("ok", value) or ("err", exception)."""
        if self._outcome is not None:
            return self._outcome
        recs = self._reader.records
        rec = recs[-1] if recs else None
        self._reader.records = []
        code = self._exitcode
        who = f"process {self._name!r} (p_uid {self.p_uid}, pid {self.pid})"
        if rec is None:
            if code == 0:
                out = ("ok", None)
            elif code < 0:
                out = ("err", ProcessDied(f"{who} was killed by {_signal_name(-code)} "
                                          f"before returning a result", self.p_uid, code))
            else:
                out = ("err", ProcessDied(f"{who} exited with code {code} "
                                          f"before returning a result", self.p_uid, code))
        else:
            out = outcome(rec, who)
        self._outcome = out
        return out

    def result(self, timeout=None):
        """The target's return value, waiting until it has arrived or the
        process has ended (at most ``timeout`` seconds, else TimeoutError);
        the process may still be exiting when it returns.  Re-raises the
        target's exception (its traceback in the other process attached as
        ``__cause__``), ``ember.RemoteError`` if that exception could not be
        pickled, or ``ember.ProcessDied`` if the process died first.

        Raises
        ------
        Exception
            The target's own exception, as itself.
        ember.RemoteError
            The target's exception (or its result) could not be pickled.
        ember.ProcessDied
            The process was killed, or exited, before sending a result.
        TimeoutError
            ``timeout`` passed first.
        ember.ProcessError
            The process was never started.
        ValueError
            The object was closed.
        """
        self._check_closed()
        if self._desc is None:
            raise ProcessError("can only get the result of a started process")
        with self._lock:
            if not self._wait(timeout, result_only=True):
                raise TimeoutError(f"process {self._name!r} (p_uid {self.p_uid}) "
                                   f"did not end within {timeout} s")
            kind, value = self._decide()
        if kind == "err":
            raise value
        return value

    @property
    def exception(self):
        """Once the process has ended, the exception :meth:`result` raises,
        or None.  None while it runs."""
        self._check_closed()
        if self._desc is None or self.exitcode is None:
            return None
        with self._lock:
            kind, value = self._decide()
        return value if kind == "err" else None

    # --- signals and cleanup -------------------------------------------
    def _send_signal(self, sig):
        self._check_closed()
        if self._desc is None or self._exitcode is not None:
            return
        from ..globalservices import process as gproc

        # its end is meant: a lease that a signal ended before it read its
        # call is not started again (_rerun), even once GS knows the end
        # (then the kill raises, and is_alive() below must not rerun it)
        self._leased = False
        try:
            gproc.kill(self._desc.p_uid, sig)
        except ProcessError:
            if self.is_alive():
                raise
            return
        # a death by it is the end, known at once (_ended): nothing starts
        # a process that GS sent a signal again
        self._asked = self._asked + (sig,)

    def terminate(self):
        """Send SIGTERM."""
        self._send_signal(_signal.SIGTERM)

    def kill(self):
        """Send SIGKILL."""
        self._send_signal(_signal.SIGKILL)

    def close(self):
        """Release what this object holds.  ValueError if the process is
        still running."""
        if self._closed:
            return
        if self._desc is not None and self._exitcode is None:
            if self.is_alive():
                raise ValueError("Cannot close a process while it is still running. "
                                 "You should first call join() or terminate().")
        if self._finalizer is not None:
            self._finalizer()
        with _live_lock:
            _live.discard(self)
        self._reader = None
        self._outcome = None
        self._closed = True


def outcome(rec, who, tb_skip=0):
    """Decode a result record: ("ok", value) or ("err", exception to raise).
    ``tb_skip`` bytes of ``rec.extra`` precede the traceback text."""
    if rec.kind == P.KIND_OK:
        try:
            return ("ok", P.loads(rec))
        except BaseException as exc:
            return ("err", RemoteError(type(exc).__name__,
                                       f"cannot unpickle the result of {who}: {exc}"))
    if rec.kind == P.KIND_ERR:
        tb = bytes(rec.extra[tb_skip:]).decode("utf-8", "replace")
        try:
            exc = P.loads(rec)
            if not isinstance(exc, BaseException):
                raise TypeError(f"not an exception: {type(exc).__name__}")
        except BaseException as uerr:
            exc = RemoteError("?", f"cannot unpickle the exception of {who}: "
                              f"{type(uerr).__name__}: {uerr}", tb)
        exc.__cause__ = RemoteTraceback(tb)
        return ("err", exc)
    if rec.kind == P.KIND_REMOTE_ERR:
        type_name, message, tb = P.loads(rec)
        exc = RemoteError(type_name, message, tb)
        exc.__cause__ = RemoteTraceback(tb)
        return ("err", exc)
    return ("err", ProcessError(f"{who} sent an unknown record kind {rec.kind}"))


def _sweep():
    """Finish processes that ended without being joined, so that programs
    that never join do not pile up channels (as multiprocessing does)."""
    with _live_lock:
        if len(_live) < 32:
            return
        procs = list(_live)
    for p in procs:
        try:
            if not p._closed and p._exitcode is None and p._res is not None and p._ended(0):
                p._poll()
        except Exception:
            pass


def _exit_function():
    """At interpreter exit: kill daemon processes, join the others.  If the
    interpreter is exiting because of a KeyboardInterrupt (Ctrl-C reaches
    the head under ``ember run``), or one interrupts the wait for them, the
    others get SIGINT (:func:`_interrupt_at_exit`); the interrupt is raised
    again once they are joined, and a second one ends the wait, and every
    later one at exit (:data:`_exit_abandoned`: the teardown ends them).
    None alive (every template child that started none): nothing touched,
    as in :func:`_forget_lease`."""
    if not _live or _exit_abandoned[0]:
        return
    with _live_lock:
        procs = list(_live)
    if isinstance(getattr(sys, "last_value", None), KeyboardInterrupt):
        _interrupt_at_exit()
    for p in procs:
        if p._daemon:
            try:
                p.kill()
            except Exception:
                pass
    interrupted = None
    for p in procs:
        while True:
            try:
                p.join()
            except KeyboardInterrupt as exc:
                if not _interrupted_at_exit():
                    raise
                interrupted = exc
                continue
            except Exception:
                pass
            break
    if interrupted is not None:
        raise interrupted


_exit_interrupted = [False]
#: A second Ctrl-C interrupted a wait at exit: no exit hook waits for the
#: children any more (this module's, multiprocessing's through the "ember"
#: method's Popen.wait), the teardown ends them.  One hook's wait ended by
#: it, the next one's began: a third Ctrl-C was needed, or more.
_exit_abandoned = [False]


def _interrupt_at_exit():
    """A Ctrl-C at exit (the program ended on one, or it interrupted the
    wait for the children, here or in multiprocessing's own exit hook):
    SIGINT to every live non-daemon process, once, as a terminal's Ctrl-C
    reaches the children in its process group (ours are in groups of their
    own).  False if it was done already (this is a second Ctrl-C)."""
    if _exit_interrupted[0]:
        return False
    _exit_interrupted[0] = True
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if not p._daemon:
            try:
                p._send_signal(_signal.SIGINT)
            except Exception:
                pass
    return True


def _interrupted_at_exit():
    """A Ctrl-C interrupted a wait for the children at exit: the first is
    passed on to them (:func:`_interrupt_at_exit`: True, wait on for
    them), a second ends every wait at exit (False)."""
    if _interrupt_at_exit():
        return True
    _exit_abandoned[0] = True
    return False


atexit.register(_exit_function)
atexit.register(_forget_lease)    # runs first (last registered)
