"""Global services (GS): the single owner of the runtime's truth.

GS holds the registries (processes by p_uid and name, pools by m_uid and
name, channels by c_uid and name) and the waiters (process joins with
server-side timeouts, channel joins waiting for a name).  It runs one loop:
read a request from its input channel, update the registries, reply or park
the requester.  It never blocks on a client: replies go out with
``timeout=0`` (a client's reply channel only ever holds the answers to its
own outstanding requests), and messages to the shepherd that do not fit are
queued and retried.

The state machine (:class:`GlobalServices`) is separate from its transport:
``send_reply(r, msg)`` delivers a reply to the channel whose descriptor is
``r``, ``send_shepherd(msg)`` hands a message to the shepherd, and
``clock()`` is a monotonic clock.  Tests drive it with scripted messages, a
recording transport and a fake shepherd; :func:`serve` runs it for real.

Decisions where the spec is open (see docs/architecture.md):

- names are unique among *live* objects of a kind; a dead process's name,
  a destroyed pool's or channel's name is free again;
- ``process.kill`` of an exited process raises ProcessError;
- ``pool.destroy`` refuses while channels live in the pool, and refuses the
  runtime's default pool;
- ``multi_join`` on timeout returns the processes that did exit, or None if
  none did;
- a dead process's reply channels are freed and its channel references are
  dropped; requests it left waiting are forgotten.

Trust model (docs/architecture.md): every request carries its sender's
key; a request whose key is not the one GS made for the p_uid it claims is
dropped.  ``Teardown`` is accepted from the launcher (p_uid 0) only; the
shepherd's messages only from the private control channel
(``handle_bytes(data, trusted=True)``).  GS replies only to reply channels
registered to the sender (first use registers one, unless it is any other
process's, a registered channel, or one of the runtime's own), and at a
process's exit destroys only the reply channels registered to it.  Every
step of a cleanup is independent of the others' failure.
"""
import hmac
import itertools
import math
import os
import signal
import sys
import time

from .. import _env, _log, messages as m
from ..descriptors import ChannelOptions
from ..exceptions import ChannelError, ChannelTimeout, EmberError, PoolError, ProcessError
from ..service import NOTICE, REQUEST, Service

log = _log.get("gs")

PENDING, RUNNING, EXITED = "pending", "running", "exited"
LAUNCHER_P_UID = 0
FIRST_P_UID = 1
DEFAULT_POOL_NAME = "default"
#: At most this many reply channels are registered per process (a thread
#: per request reuses freed ones; only abandoned requests retire one).
MAX_REPLY_CHANNELS = 4096
#: At most this many identifiers in one multi_join request.
MAX_JOIN_IDENTS = 4096


def _timeout(value, err_cls):
    """A request's timeout: None (wait forever) or finite seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise err_cls(f"timeout must be a number >= 0 or None, got {value!r}")
    return None if math.isinf(value) else value


def _lookup(ident, by_uid, by_name, err_cls, kind, uid_name):
    """The record an identifier names: an int is a uid, a str a name."""
    if isinstance(ident, bool) or not isinstance(ident, (int, str)):
        raise err_cls(f"{kind} identifier must be an int or str, not {type(ident).__name__}")
    if isinstance(ident, str):
        uid = by_name.get(ident)
        if uid is None:
            raise err_cls(f"no {kind} named {ident!r}")
        return by_uid[uid]
    rec = by_uid.get(ident)
    if rec is None:
        raise err_cls(f"no {kind} with {uid_name} {ident}")
    return rec


class _Proc:
    __slots__ = ("p_uid", "name", "state", "exit_code", "os_pid", "create_req", "refs",
                 "replies", "waiters", "creator", "key", "joined", "exe", "prev_same_name",
                 "attached")

    def __init__(self, p_uid, name, creator, key=None):
        self.p_uid = p_uid
        self.name = name
        self.state = PENDING
        self.exit_code = None
        self.os_pid = None
        self.create_req = None   # (tag, r) of the create waiting for ShSpawned
        self.refs = {}           # c_uid -> references this process holds
        self.replies = set()     # reply-channel descriptors this process used
        self.waiters = set()     # join waiters that watch this process
        self.creator = creator
        self.key = key           # the request key GS made for it (bytes)
        self.joined = False      # a join has reported its exit
        self.exe = ""
        self.prev_same_name = None   # the process last_by_name named before this one
        self.attached = False    # joined with ProcessAttach (not started by the runtime)

    def desc(self, node):
        return {"p_uid": self.p_uid, "user_name": self.name or None, "state": self.state,
                "retval": self.exit_code, "node": node, "os_pid": self.os_pid}


class _Pool:
    __slots__ = ("m_uid", "name", "pool", "size", "channels", "default")

    def __init__(self, m_uid, name, pool, size, default=False):
        self.m_uid, self.name, self.pool, self.size = m_uid, name, pool, size
        self.channels = set()
        self.default = default


class _Chan:
    __slots__ = ("c_uid", "m_uid", "name", "ch", "sdesc", "capacity", "block_size",
                 "ref_count", "holders")

    def __init__(self, c_uid, m_uid, name, ch, opts):
        self.c_uid, self.m_uid, self.name, self.ch = c_uid, m_uid, name, ch
        self.sdesc = ch.sdesc
        self.capacity = ch.capacity
        self.block_size = ch.block_size
        self.ref_count = bool(opts.ref_count)
        self.holders = {}  # p_uid -> count


class _Waiter:
    """A parked request: a process join or a channel join."""

    __slots__ = ("tag", "r", "owner", "timer", "done", "p_uids", "join_all", "bad_exit", "name",
                 "n_exited", "any_bad", "unknown")

    def __init__(self, tag, r, owner):
        self.tag, self.r, self.owner = tag, r, owner
        self.timer = None        # its timeout (a service Timer), if it has one
        self.done = False
        self.p_uids = ()
        self.join_all = False
        self.bad_exit = False
        self.name = None
        self.n_exited = 0        # how many of p_uids have exited
        self.any_bad = False     # one of them exited with a non-zero code
        self.unknown = ()        # identifiers that name no process


class GlobalServices(Service):
    """The GS state machine on the service core.  See the module docstring."""

    name = "GS"
    error_type = "GlobalServicesError"

    def __init__(self, *, runtime_tag, send_reply, send_shepherd, clock=time.monotonic,
                 node=0, default_pool=None, channel_factory=None, pool_factory=None,
                 attach_channel=None, launcher_key=None, reserved_replies=(),
                 check_reply=None, death_reports=True, err=None, attach_key=None):
        """``launcher_key``: the key of p_uid 0 (None: no request claiming
        p_uid 0 is accepted); ``reserved_replies``: descriptors that may
        never be a reply channel (GS's own inputs); ``check_reply(r)``:
        None if ``r`` is a channel GS can use as a reply channel, else the
        reason (the transport attaches it); ``death_reports``: write one
        line to ``err`` (stderr) for each process whose non-zero exit
        nobody joined (docs/architecture.md); ``attach_key``: the runtime's key
        (str) that a process the runtime did not start must present to
        attach (None: attaching is refused)."""
        Service.__init__(self, clock=clock, logger=log)
        self.attach_key = attach_key
        self.runtime_tag = runtime_tag
        self.send_reply = send_reply
        self.send_shepherd = send_shepherd
        self.node = node
        if channel_factory is None or pool_factory is None or attach_channel is None:
            from ..channels_c import Channel
            from ..pools_c import Pool
            channel_factory = channel_factory or Channel.create
            pool_factory = pool_factory or Pool.create
            attach_channel = attach_channel or Channel.attach
        self._make_channel = channel_factory
        self._make_pool = pool_factory
        self._attach_channel = attach_channel
        self.launcher_key = launcher_key
        self.launcher_replies = set()
        self.reserved_replies = frozenset(reserved_replies)
        self.check_reply = check_reply
        self.death_reports = death_reports
        self.err = err
        #: Called with a dead (reaped) process's OS pid to give back the pool
        #: blocks it still owned; by default every pool's ``reclaim(pid)``
        #: where the pools layer has one.  None: no sweep.
        self.sweep_allocations = self._reclaim_blocks
        self.extra_pools = []     # pools GS sweeps but does not own (the infrastructure pool)

        self.procs = {}           # p_uid -> _Proc
        self.proc_names = {}      # name -> p_uid (live processes only)
        self.last_by_name = {}    # name -> p_uid of the most recent process of that name
        self.reply_owner = {}     # reply-channel descriptor -> p_uid it is registered to
        self.pools = {}           # m_uid -> _Pool
        self.pool_names = {}
        self.chans = {}           # c_uid -> _Chan
        self.chan_names = {}
        self.chan_sdescs = set()  # descriptors of the registered channels
        self.chan_joiners = {}    # name -> [ _Waiter ]
        self.owned_waiters = {}   # owner p_uid -> set(_Waiter)
        self._p_uids = itertools.count(FIRST_P_UID)
        self._m_uids = itertools.count(2)
        self._c_uids = itertools.count(1)
        self.default_m_uid = None
        if default_pool is not None:
            self.default_m_uid = 1
            self._add_pool(_Pool(1, DEFAULT_POOL_NAME, default_pool, default_pool.size, default=True))
        self.teardown = None      # the teardown state while tearing down
        self.finished = False     # True once teardown has completed
        for cls, method in (
                (m.ProcessCreate, self.on_process_create),
                (m.ProcessList, self.on_process_list),
                (m.ProcessQuery, self.on_process_query),
                (m.ProcessKill, self.on_process_kill),
                (m.ProcessJoin, self.on_process_join),
                (m.ProcessAttach, self.on_process_attach),
                (m.ProcessDetach, self.on_process_detach),
                (m.PoolCreate, self.on_pool_create),
                (m.PoolList, self.on_pool_list),
                (m.PoolQuery, self.on_pool_query),
                (m.PoolDestroy, self.on_pool_destroy),
                (m.PoolDefault, self.on_pool_default),
                (m.ChannelCreate, self.on_channel_create),
                (m.ChannelList, self.on_channel_list),
                (m.ChannelQuery, self.on_channel_query),
                (m.ChannelJoin, self.on_channel_join),
                (m.ChannelDestroy, self.on_channel_destroy),
                (m.ChannelRelease, self.on_channel_release),
                (m.ChannelAddRef, self.on_channel_add_ref),
                (m.Teardown, self.on_teardown),
                (m.Cancel, self.on_cancel)):
            self.on(cls, method, REQUEST)
        # The shepherd's messages: accepted from the private control channel only.
        for cls, method in ((m.ShSpawned, self.on_sh_spawned),
                            (m.ShExited, self.on_sh_exited),
                            (m.ShShutdownDone, self.on_sh_shutdown_done)):
            self.on(cls, method, NOTICE)

    # ------------------------------------------------------------------ input
    # handle_bytes(data, trusted=False) and handle(msg, trusted) come from
    # the service core: decode, look up, admit(), run, error reply.  Never
    # raises: a malformed or unauthenticated message is logged
    # (rate-limited) and dropped; a well-formed, authenticated request that
    # fails gets an error reply.

    def admit(self, msg, kind, trusted):
        """Where a message enters GS: a shepherd message only from the
        control channel (``trusted``); a request only with a well-formed
        envelope, the key GS made for the p_uid it claims, from a live
        process, naming a reply channel that is (or may become) its own."""
        cls = type(msg)
        if kind is NOTICE:
            if not trusted:
                self.warn("forged-control", "dropped %s from the public input channel: only the "
                          "shepherd sends it, on the control channel", cls.__name__)
                return False
            return True
        if not (isinstance(msg.r, bytes) and msg.r and isinstance(msg.tag, int)
                and not isinstance(msg.p_uid, bool) and isinstance(msg.p_uid, int)
                and isinstance(msg.key, bytes)):
            self.warn("bad-request", "dropped %s with a bad tag/p_uid/key/reply address",
                      cls.__name__)
            return False
        if cls is m.ProcessAttach:       # authenticated by the runtime key it carries
            return True
        p_uid = msg.p_uid
        if p_uid == LAUNCHER_P_UID:
            sender = None
            good = self.launcher_key is not None and hmac.compare_digest(msg.key, self.launcher_key)
            replies = self.launcher_replies
        else:
            sender = self.procs.get(p_uid)
            good = sender is not None and sender.key is not None and \
                hmac.compare_digest(msg.key, sender.key)
            replies = sender.replies if sender is not None else None
        if not good:
            self.warn("bad-key", "dropped %s claiming p_uid %r: its key is not that process's",
                      cls.__name__, p_uid)
            return False
        if sender is not None and sender.state == EXITED:
            # Sent just before its sender died (and its reply channels
            # were freed): nobody can read a reply, and a parked wait or
            # a channel reference would never be released.
            log.debug("dropped %s from exited process %s", cls.__name__, p_uid)
            return False
        return msg.r in replies or self._register_reply(msg, p_uid, replies)

    def send_error_reply(self, msg, err_type, text, tb=None):
        self.send_reply(msg.r, m.reply_err(msg.tag, err_type, text, tb))

    def _register_reply(self, msg, p_uid, replies):
        """Make ``msg.r`` one of ``p_uid``'s reply channels, or say why not
        (rate-limited) and return False."""
        r, cls = msg.r, type(msg)
        why = None
        owner = self.reply_owner.get(r)
        if owner is not None:
            why = f"it is process {owner}'s reply channel"
        elif r in self.reserved_replies:
            why = "it is one of the runtime's own channels"
        elif r in self.chan_sdescs:
            why = "it is a registered channel"
        elif self.check_reply is not None:
            why = self.check_reply(r)
        if why is None and len(replies) >= MAX_REPLY_CHANNELS:
            # A usable channel, but one too many: say so on it (unregistered),
            # so the client raises instead of waiting forever.
            why = f"the process already uses {MAX_REPLY_CHANNELS} reply channels"
            self.send_reply(r, m.reply_err(
                msg.tag, "GlobalServicesError",
                f"process {p_uid} already uses {MAX_REPLY_CHANNELS} reply channels: "
                f"request refused"))
        if why is not None:
            self.warn("bad-reply-channel", "dropped %s from p_uid %r: its reply channel cannot be "
                      "used (%s)", cls.__name__, p_uid, why)
            return False
        replies.add(r)
        self.reply_owner[r] = p_uid
        return True

    def _reply(self, tag, r, value=None):
        if r:
            self.send_reply(r, m.reply_ok(tag, value))

    # ----------------------------------------------------------------- waiters
    def _waiter_timed_out(self, w):
        if w.name is not None:
            self._finish_waiter(w)
            self.send_reply(w.r, m.reply_err(
                w.tag, "ChannelTimeout",
                f"channel.join({w.name!r}) timed out: no channel of that name was created"))
        else:
            self._answer_join(w, timed_out=True)

    def _park(self, w, timeout):
        self.owned_waiters.setdefault(w.owner, set()).add(w)
        if timeout is not None:
            w.timer = self.call_later(timeout, self._waiter_timed_out, w)

    def _finish_waiter(self, w):
        w.done = True
        if w.timer is not None:
            w.timer.cancel()
        owned = self.owned_waiters.get(w.owner)
        if owned is not None:
            owned.discard(w)
            if not owned:
                del self.owned_waiters[w.owner]
        if w.name is not None:
            lst = self.chan_joiners.get(w.name)
            if lst is not None:
                if w in lst:
                    lst.remove(w)
                if not lst:
                    del self.chan_joiners[w.name]
        else:
            for p in w.p_uids:
                rec = self.procs.get(p)
                if rec is not None:
                    rec.waiters.discard(w)

    # -------------------------------------------------------------- processes
    def _proc(self, ident):
        if isinstance(ident, str) and ident not in self.proc_names:
            # the most recent process of that name, even if it has exited
            p_uid = self.last_by_name.get(ident)
            if p_uid is not None:
                return self.procs[p_uid]
        return _lookup(ident, self.procs, self.proc_names, ProcessError, "process", "p_uid")

    def _proc_label(self, rec):
        name = f" {rec.name!r}" if rec.name else ""
        pid = f" (pid {rec.os_pid})" if rec.os_pid is not None else ""
        return f"process {rec.p_uid}{name}{pid}"

    def on_process_create(self, msg):
        if self.teardown is not None:
            raise ProcessError("the runtime is shutting down: no new processes")
        name = msg.user_name or ""
        if not isinstance(name, str):
            raise ProcessError(f"user_name must be a str, not {type(name).__name__}")
        if name and name in self.proc_names:
            live = self.procs[self.proc_names[name]]
            if msg.soft:
                if live.state == PENDING:
                    raise ProcessError(f"process {name!r} (p_uid {live.p_uid}) is still starting")
                return self._reply(msg.tag, msg.r, live.desc(self.node))
            raise ProcessError(f"a live process is already named {name!r} (p_uid {live.p_uid})")
        if not isinstance(msg.exe, str) or not msg.exe:
            raise ProcessError("exe must be a non-empty str")
        if not isinstance(msg.args, list) or not all(isinstance(a, str) for a in msg.args):
            raise ProcessError("args must be a list of str")
        env = msg.env or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in env.items()):
            raise ProcessError("env must map str to str")
        if not isinstance(msg.run_dir, str):
            raise ProcessError("run_dir must be a str")
        p_uid = next(self._p_uids)
        rec = _Proc(p_uid, name, msg.p_uid, key=os.urandom(16))
        rec.create_req = (msg.tag, msg.r)
        rec.exe = msg.exe
        self.procs[p_uid] = rec
        if name:
            self.proc_names[name] = p_uid
            rec.prev_same_name = self.last_by_name.get(name)
            self.last_by_name[name] = p_uid
        # The key goes to the shepherd on the private channel, into the
        # child's environment; it overrides whatever the request put there.
        env = dict(env)
        env[_env.KEY] = rec.key.hex()
        self.send_shepherd(m.ShSpawn(msg.tag, p_uid, msg.exe, msg.args, env, msg.run_dir, name))

    def on_sh_spawned(self, msg):
        rec = self.procs.get(msg.p_uid)
        if rec is None:
            log.warning("ShSpawned for unknown p_uid %r", msg.p_uid)
            return
        tag, r = rec.create_req or (None, None)
        rec.create_req = None
        if r and self.reply_owner.get(r) != rec.creator:
            r = None       # the creator has exited and its reply channels are gone
        if msg.err:
            # never started: forget it, free its name
            del self.procs[rec.p_uid]
            if rec.name and self.proc_names.get(rec.name) == rec.p_uid:
                del self.proc_names[rec.name]
            if rec.name and self.last_by_name.get(rec.name) == rec.p_uid:
                if rec.prev_same_name in self.procs:
                    self.last_by_name[rec.name] = rec.prev_same_name
                else:
                    del self.last_by_name[rec.name]
            log.info("process %d %r failed to start: %s", rec.p_uid, rec.exe, msg.err)
            if r:
                self.send_reply(r, m.reply_err(tag, "ProcessError", f"cannot start process: {msg.err}"))
            return
        rec.os_pid = msg.os_pid
        if rec.state == PENDING:
            rec.state = RUNNING
        log.info("%s started: %r", self._proc_label(rec), rec.exe)
        if r:
            self._reply(tag, r, rec.desc(self.node))

    def on_process_attach(self, msg):
        """A process the runtime did not start joins it (``ember.init()``):
        it proves with the runtime's key that it may, and gets a p_uid and
        a request key of its own.  The shepherd watches it (not its child:
        no exit status, see docs/embedding.md)."""
        if self.attach_key is None or not isinstance(msg.attach_key, str) or \
                not hmac.compare_digest(msg.attach_key.encode(), self.attach_key.encode()):
            self.warn("bad-attach-key", "refused ProcessAttach: wrong runtime key")
            # an error on the given channel, unregistered: nothing is kept
            if self.check_reply is None or self.check_reply(msg.r) is None:
                self.send_reply(msg.r, m.reply_err(msg.tag, "ProcessError",
                                                   "attach refused: wrong runtime key"))
            return
        if msg.r in self.reply_owner:
            self.warn("bad-reply-channel", "refused ProcessAttach: its reply channel is "
                      "process %s's", self.reply_owner[msg.r])
            return
        err = None
        pid, name = msg.pid, msg.user_name or ""
        if self.teardown is not None:
            err = "the runtime is shutting down: cannot attach"
        elif isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            err = f"attach: bad pid {pid!r}"
        elif not isinstance(name, str):
            err = f"user_name must be a str, not {type(name).__name__}"
        elif name and name in self.proc_names:
            err = f"a live process is already named {name!r} (p_uid {self.proc_names[name]})"
        p_uid = next(self._p_uids) if err is None else None
        rec = _Proc(p_uid, name, 0, key=os.urandom(16))
        if not self._register_reply(msg, p_uid, rec.replies):
            return
        if err is not None:
            self._unregister_replies(rec)
            self.send_reply(msg.r, m.reply_err(msg.tag, "ProcessError", err))
            return
        rec.attached = True
        rec.state = RUNNING
        rec.os_pid = pid
        self.procs[p_uid] = rec
        if name:
            self.proc_names[name] = p_uid
        self.send_shepherd(m.ShWatch(p_uid, pid))
        log.info("process %d attached (pid %d)", p_uid, pid)
        self._reply(msg.tag, msg.r, dict(rec.desc(self.node), key=rec.key.hex()))

    def _unregister_replies(self, rec):
        for r in list(rec.replies):
            if self.reply_owner.get(r) == rec.p_uid:
                del self.reply_owner[r]
        rec.replies.clear()

    def on_process_detach(self, msg):
        """An attached process leaves (``ember.shutdown()``, or its exit)."""
        rec = self.procs.get(msg.p_uid)
        if rec is None or not rec.attached:
            raise ProcessError(f"process {msg.p_uid} is not an attached process")
        code = msg.exit_code
        if isinstance(code, bool) or not isinstance(code, int):
            code = 0
        self.send_shepherd(m.ShUnwatch(rec.p_uid))
        # The reply goes out on msg.r: the client destroys that channel itself.
        rec.replies.discard(msg.r)
        self.reply_owner.pop(msg.r, None)
        self._reply(msg.tag, msg.r)
        self._exited(rec, code, dead=False)

    def _step(self, what, fn, *args):
        """Run one step of a cleanup path: its failure is logged and does
        not stop the next step."""
        try:
            fn(*args)
        except Exception as exc:
            log.error("%s: %s: %s", what, type(exc).__name__, exc)

    def on_sh_exited(self, msg):
        p_uid = msg.p_uid
        if isinstance(p_uid, bool) or not isinstance(p_uid, int):
            log.warning("ShExited with a bad p_uid %r", p_uid)
            return
        rec = self.procs.get(p_uid)
        if rec is None or rec.state == EXITED:
            if rec is None or not rec.attached:     # a detached process's watch may race
                log.warning("ShExited for unknown or exited p_uid %r", p_uid)
            return
        self._exited(rec, msg.exit_code)

    def _exited(self, rec, exit_code, dead=True):
        """Everything a process's end releases.  ``dead``: its pid is gone
        (False for an attached process that detached and lives on: its pool
        blocks are still its own)."""
        p_uid = rec.p_uid
        rec.state = EXITED
        rec.exit_code = exit_code
        log.info("%s exited with code %s", self._proc_label(rec), exit_code)
        if rec.name and self.proc_names.get(rec.name) == rec.p_uid:
            del self.proc_names[rec.name]
        # Every step below is independent of the others' failure.
        for w in list(rec.waiters):           # wake its joiners
            self._step(f"waking a join on process {p_uid}", self._joined_exit, w, rec)
        for w in list(self.owned_waiters.get(p_uid, ())):   # forget its waits
            self._step(f"forgetting a wait of process {p_uid}", self._finish_waiter, w)
        for c_uid in list(rec.refs):          # drop its channel references
            self._step(f"dropping process {p_uid}'s reference to channel {c_uid}",
                       self._drop_refs, rec, c_uid)
        for r in list(rec.replies):           # free its reply channels
            self._step(f"freeing a reply channel of process {p_uid}", self._free_reply_channel, r)
            rec.replies.discard(r)
            if self.reply_owner.get(r) == p_uid:
                del self.reply_owner[r]
        sweep = self.sweep_allocations
        if sweep is not None and rec.os_pid is not None and dead:
            self._step(f"reclaiming the pool blocks of process {p_uid}", sweep, rec.os_pid)
        if self.teardown is not None:
            self._teardown_step()

    def _reclaim_blocks(self, pid):
        pools = [(r.m_uid, r.pool) for r in self.pools.values()] + \
            [(getattr(p, "m_uid", "?"), p) for p in self.extra_pools]
        for m_uid, pool in pools:
            reclaim = getattr(pool, "reclaim", None)
            if reclaim is None:
                continue
            try:
                got = reclaim(pid)
            except Exception as exc:
                log.warning("cannot reclaim the blocks of pid %d in pool %s: %s", pid, m_uid, exc)
                continue
            if got and got[0]:
                log.info("reclaimed %d block(s), %d bytes of dead pid %d in pool %s",
                         got[0], got[1], pid, m_uid)

    def _joined_exit(self, w, rec):
        if w.done:
            return
        w.n_exited += 1
        if rec.exit_code != 0:
            w.any_bad = True
        self._check_join(w)

    def _drop_refs(self, rec, c_uid):
        rec.refs.pop(c_uid, None)
        ch = self.chans.get(c_uid)
        if ch is not None:
            ch.holders.pop(rec.p_uid, None)
            if ch.ref_count and not ch.holders:
                self._destroy_channel(ch)

    def _free_reply_channel(self, r):
        """Hook: the transport frees a dead process's reply channel."""
        free = getattr(self.send_reply, "forget", None)
        if free is not None:
            free(r, destroy=True)

    def on_process_list(self, msg):
        # Every process GS knows, exited ones included (process.query still
        # answers for them), as the reference runtime does.
        self._reply(msg.tag, msg.r, [[p.p_uid, p.name or None, p.state != EXITED]
                                     for p in self.procs.values()])

    def on_process_query(self, msg):
        self._reply(msg.tag, msg.r, self._proc(msg.ident).desc(self.node))

    def on_process_kill(self, msg):
        rec = self._proc(msg.ident)
        sig = msg.sig
        if isinstance(sig, bool) or not isinstance(sig, int) or not 1 <= sig < signal.NSIG:
            raise ProcessError(f"invalid signal {sig!r} for process {rec.p_uid}")
        if rec.state == EXITED:
            raise ProcessError(f"process {rec.p_uid} has already exited (exit code {rec.exit_code})")
        self.send_shepherd(m.ShKill(rec.p_uid, sig))
        self._reply(msg.tag, msg.r)

    def on_process_join(self, msg):
        idents = msg.idents
        if not isinstance(idents, list) or not idents:
            raise ProcessError("join needs a non-empty list of process identifiers")
        if len(idents) > MAX_JOIN_IDENTS:
            raise ProcessError(f"multi_join takes at most {MAX_JOIN_IDENTS} identifiers, "
                               f"got {len(idents)}")
        timeout = _timeout(msg.timeout, ProcessError)
        recs = {}
        unknown = []
        for ident in idents:
            try:
                rec = self._proc(ident)
            except ProcessError:
                if isinstance(ident, bool) or not isinstance(ident, (int, str)):
                    raise
                if ident not in unknown:
                    unknown.append(ident)
                continue
            if rec.p_uid == msg.p_uid:
                raise ProcessError(f"process {rec.p_uid} cannot join itself")
            recs[rec.p_uid] = rec
        w = _Waiter(msg.tag, msg.r, msg.p_uid)
        w.p_uids = tuple(recs)
        w.unknown = tuple(unknown)
        w.join_all = bool(msg.join_all)
        w.bad_exit = bool(msg.return_on_bad_exit)
        for rec in recs.values():
            if rec.state == EXITED:
                w.n_exited += 1
                w.any_bad = w.any_bad or rec.exit_code != 0
        if self._check_join(w):
            return
        if timeout == 0:
            return self._answer_join(w, timed_out=True)
        for rec in recs.values():
            rec.waiters.add(w)
        log.debug("process %s waits for %s of processes %s", msg.p_uid,
                  "all" if w.join_all else "any", list(w.p_uids))
        self._park(w, timeout)

    def _check_join(self, w):
        """Answer the join if it is satisfied; return True if answered.
        A join that names no known process is answered at once."""
        if not w.p_uids:
            done = True
        elif w.join_all:
            done = w.n_exited == len(w.p_uids) or (w.bad_exit and w.any_bad)
        else:
            done = w.n_exited > 0
        if done:
            self._answer_join(w, timed_out=False)
        return done

    def _answer_join(self, w, timed_out):
        self._finish_waiter(w)
        exited = []
        status = {}
        for p in w.p_uids:
            rec = self.procs[p]
            if rec.state == EXITED:
                exited.append([p, rec.exit_code])
                rec.joined = True
            status[p] = [rec.state, rec.exit_code]
        for ident in w.unknown:
            status[ident] = ["unknown", None]
        self.send_reply(w.r, m.reply_ok(w.tag, [exited or None, status]))

    # ------------------------------------------------------------------ pools
    def _add_pool(self, rec):
        self.pools[rec.m_uid] = rec
        if rec.name:
            self.pool_names[rec.name] = rec.m_uid

    def _pool(self, ident):
        return _lookup(ident, self.pools, self.pool_names, PoolError, "pool", "m_uid")

    def _pool_desc(self, rec):
        return {"m_uid": rec.m_uid, "name": rec.name, "node": self.node, "size": rec.size,
                "sdesc": rec.pool.sdesc}

    def on_pool_create(self, msg):
        name = msg.user_name
        if name is not None and not isinstance(name, str):
            raise PoolError(f"user_name must be a str or None, not {type(name).__name__}")
        if name and name in self.pool_names:
            rec = self.pools[self.pool_names[name]]
            if msg.soft:
                return self._reply(msg.tag, msg.r, self._pool_desc(rec))
            raise PoolError(f"a pool is already named {name!r} (m_uid {rec.m_uid})")
        size = msg.size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise PoolError(f"pool size must be a positive int, got {size!r}")
        m_uid = next(self._m_uids)
        try:
            pool = self._make_pool(size, name=name, m_uid=m_uid, owner_tag=self.runtime_tag)
        except (MemoryError, OSError, ValueError) as exc:
            raise PoolError(f"cannot create pool of {size} bytes: {exc}") from None
        rec = _Pool(m_uid, name or None, pool, pool.size)
        self._add_pool(rec)
        log.info("pool %d %r created (%d bytes) by process %s", m_uid, rec.name, rec.size, msg.p_uid)
        self._reply(msg.tag, msg.r, self._pool_desc(rec))

    def on_pool_list(self, msg):
        self._reply(msg.tag, msg.r, [[p.m_uid, p.name] for p in self.pools.values()])

    def on_pool_query(self, msg):
        self._reply(msg.tag, msg.r, self._pool_desc(self._pool(msg.ident)))

    def on_pool_default(self, msg):
        if self.default_m_uid is None:
            raise PoolError("this runtime has no default pool")
        self._reply(msg.tag, msg.r, self._pool_desc(self.pools[self.default_m_uid]))

    def on_pool_destroy(self, msg):
        rec = self._pool(msg.ident)
        if rec.default:
            raise PoolError(f"pool {rec.m_uid} is the runtime's default pool and cannot be destroyed")
        if rec.channels:
            raise PoolError(f"pool {rec.name or rec.m_uid} (m_uid {rec.m_uid}) still holds "
                            f"{len(rec.channels)} channel(s) {sorted(rec.channels)}: destroy them first")
        self._destroy_pool(rec)
        self._reply(msg.tag, msg.r)

    def _destroy_pool(self, rec):
        del self.pools[rec.m_uid]
        if rec.name and self.pool_names.get(rec.name) == rec.m_uid:
            del self.pool_names[rec.name]
        log.info("pool %d %r destroyed", rec.m_uid, rec.name)
        rec.pool.destroy()

    # --------------------------------------------------------------- channels
    def _chan(self, ident):
        return _lookup(ident, self.chans, self.chan_names, ChannelError, "channel", "c_uid")

    def _chan_desc(self, rec):
        return {"m_uid": rec.m_uid, "c_uid": rec.c_uid, "name": rec.name, "node": self.node,
                "capacity": rec.capacity, "block_size": rec.block_size,
                "ref_count": rec.ref_count, "sdesc": rec.sdesc}

    def _add_ref(self, rec, p_uid):
        if rec.ref_count:
            rec.holders[p_uid] = rec.holders.get(p_uid, 0) + 1
            proc = self.procs.get(p_uid)
            if proc is not None:
                proc.refs[rec.c_uid] = proc.refs.get(rec.c_uid, 0) + 1

    def on_channel_create(self, msg):
        name = msg.user_name
        if name is not None and not isinstance(name, str):
            raise ChannelError(f"user_name must be a str or None, not {type(name).__name__}")
        if name and name in self.chan_names:
            rec = self.chans[self.chan_names[name]]
            if msg.soft:
                self._add_ref(rec, msg.p_uid)
                return self._reply(msg.tag, msg.r, self._chan_desc(rec))
            raise ChannelError(f"a channel is already named {name!r} (c_uid {rec.c_uid})")
        m_uid = self.default_m_uid if msg.m_uid is None else msg.m_uid
        if isinstance(m_uid, bool) or not isinstance(m_uid, int):
            raise ChannelError(f"m_uid must be an int, not {type(m_uid).__name__}")
        prec = self.pools.get(m_uid)
        if prec is None:
            raise ChannelError(f"cannot create channel {name or ''!r}: no pool with m_uid {m_uid}")
        try:
            opts = ChannelOptions.coerce(msg.options, "channel_options")
        except TypeError as exc:
            raise ChannelError(str(exc)) from None
        for field in ("capacity", "block_size"):
            v = getattr(opts, field)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ChannelError(f"ChannelOptions.{field} must be a positive int, got {v!r}")
        c_uid = next(self._c_uids)
        try:
            ch = self._make_channel(prec.pool, capacity=opts.capacity, block_size=opts.block_size,
                                    c_uid=c_uid)
        except (MemoryError, ValueError) as exc:
            raise ChannelError(f"cannot create channel {name or c_uid!r} in pool {m_uid}: {exc}") from None
        rec = _Chan(c_uid, m_uid, name or None, ch, opts)
        self.chans[c_uid] = rec
        self.chan_sdescs.add(rec.sdesc)
        log.info("channel %d %r created in pool %d by process %s", c_uid, rec.name, m_uid, msg.p_uid)
        prec.channels.add(c_uid)
        if name:
            self.chan_names[name] = c_uid
        self._add_ref(rec, msg.p_uid)
        desc = self._chan_desc(rec)
        # Wake the joiners first: they sleep, the creator is spinning for its reply.
        for w in list(self.chan_joiners.get(name, ())) if name else ():
            self._finish_waiter(w)
            self._add_ref(rec, w.owner)
            self._reply(w.tag, w.r, desc)
        self._reply(msg.tag, msg.r, desc)

    def on_channel_list(self, msg):
        self._reply(msg.tag, msg.r, [[c.c_uid, c.name] for c in self.chans.values()])

    def on_channel_query(self, msg):
        self._reply(msg.tag, msg.r, self._chan_desc(self._chan(msg.ident)))

    def on_channel_join(self, msg):
        name = msg.name
        if not isinstance(name, str) or not name:
            raise ChannelError(f"channel.join needs a non-empty str name, got {name!r}")
        timeout = _timeout(msg.timeout, ChannelError)
        c_uid = self.chan_names.get(name)
        if c_uid is not None:
            rec = self.chans[c_uid]
            self._add_ref(rec, msg.p_uid)
            return self._reply(msg.tag, msg.r, self._chan_desc(rec))
        if timeout == 0:
            raise ChannelTimeout(f"channel.join({name!r}) timed out: no channel of that name was created")
        w = _Waiter(msg.tag, msg.r, msg.p_uid)
        w.name = name
        self.chan_joiners.setdefault(name, []).append(w)
        log.debug("process %s is waiting for channel %r%s", msg.p_uid, name,
                  "" if timeout is None else f" (up to {timeout:g} s)")
        self._park(w, timeout)

    def on_channel_destroy(self, msg):
        self._destroy_channel(self._chan(msg.ident))
        self._reply(msg.tag, msg.r)

    def on_channel_add_ref(self, msg):
        rec = self._chan(msg.ident)
        if not rec.ref_count:
            raise ChannelError(f"channel {rec.name or rec.c_uid} (c_uid {rec.c_uid}) is not ref-counted")
        self._add_ref(rec, msg.p_uid)
        self._reply(msg.tag, msg.r)

    def on_channel_release(self, msg):
        rec = self._chan(msg.ident)
        if not rec.ref_count:
            raise ChannelError(f"channel {rec.name or rec.c_uid} (c_uid {rec.c_uid}) is not ref-counted")
        n = rec.holders.get(msg.p_uid, 0)
        if n == 0:
            raise ChannelError(f"process {msg.p_uid} holds no reference to channel "
                               f"{rec.name or rec.c_uid} (c_uid {rec.c_uid})")
        if n == 1:
            del rec.holders[msg.p_uid]
        else:
            rec.holders[msg.p_uid] = n - 1
        proc = self.procs.get(msg.p_uid)
        if proc is not None:
            k = proc.refs.get(rec.c_uid, 0) - 1
            if k <= 0:
                proc.refs.pop(rec.c_uid, None)
            else:
                proc.refs[rec.c_uid] = k
        if not rec.holders:
            self._destroy_channel(rec)
        self._reply(msg.tag, msg.r)

    def _destroy_channel(self, rec):
        """Forget a channel, then destroy it (the registries are consistent
        even if the destroy itself fails)."""
        self.chans.pop(rec.c_uid, None)
        self.chan_sdescs.discard(rec.sdesc)
        if rec.name and self.chan_names.get(rec.name) == rec.c_uid:
            del self.chan_names[rec.name]
        prec = self.pools.get(rec.m_uid)
        if prec is not None:
            prec.channels.discard(rec.c_uid)
        for p in rec.holders:
            proc = self.procs.get(p)
            if proc is not None:
                proc.refs.pop(rec.c_uid, None)
        log.info("channel %d %r destroyed", rec.c_uid, rec.name)
        rec.ch.destroy()

    def on_cancel(self, msg):
        """The requester gave up waiting for ``ref``: forget that waiter
        (a channel join then adds no reference).  Never replied to."""
        for w in list(self.owned_waiters.get(msg.p_uid, ())):
            if w.tag == msg.ref and w.r == msg.r:
                self._finish_waiter(w)

    # --------------------------------------------------------------- teardown
    def on_teardown(self, msg):
        """Launcher asks to end the runtime: SIGTERM every live process, SIGKILL
        after ``grace`` seconds, destroy every channel and pool, stop the
        shepherd, then reply."""
        if msg.p_uid != LAUNCHER_P_UID:
            raise EmberError(f"Teardown is accepted from the launcher only, not from process {msg.p_uid}")
        if self.teardown is not None:
            return
        try:
            grace = _timeout(msg.grace, EmberError)
        except EmberError:
            grace = None
        grace = 5.0 if grace is None else grace
        t = _Waiter(msg.tag, msg.r, msg.p_uid)
        t.name = None
        t.p_uids = ("term",)     # phase marker: term -> kill -> shepherd -> done
        for p in [p for p in self.procs.values() if p.attached and p.state != EXITED]:
            # not ours to kill: the runtime ends under it
            self.send_shepherd(m.ShUnwatch(p.p_uid))
            self._exited(p, m.EXIT_UNKNOWN, dead=False)
        self.teardown = t
        live = [p for p in self.procs.values() if p.state != EXITED]
        for p in live:
            if p.state == RUNNING or p.os_pid is not None:
                self.send_shepherd(m.ShKill(p.p_uid, signal.SIGTERM))
        t.timer = self.call_later(grace, self._teardown_step, True)
        self._step("reporting unjoined exits", self._report_unjoined)
        self._teardown_step()

    def _report_unjoined(self):
        """Death reports at teardown: one line for each process that exited
        with a non-zero code (not by a signal: the shepherd reports those)
        and whose exit no join ever reported."""
        self.warn.flush()
        if not self.death_reports:
            return
        err = self.err if self.err is not None else sys.stderr
        for p in self.procs.values():
            if p.state == EXITED and p.exit_code and p.exit_code > 0 and not p.joined:
                err.write(f"ember: {self._proc_label(p)} exited with code {p.exit_code} "
                          f"and was never joined\n")
        err.flush()

    def _teardown_step(self, timed_out=False):
        t = self.teardown
        if t is None or t.done:
            return
        live = [p for p in self.procs.values() if p.state != EXITED]
        phase = t.p_uids[0]
        if phase == "term":
            if live and not timed_out:
                return
            if live:
                for p in live:
                    self.send_shepherd(m.ShKill(p.p_uid, signal.SIGKILL))
                t.p_uids = ("kill",)
                t.timer.cancel()
                t.timer = self.call_later(2.0, self._teardown_step, True)
                return
            phase = "kill"
        if phase == "kill":
            if live and not timed_out:
                return
            for rec in list(self.chans.values()):
                self._step(f"destroying channel {rec.c_uid}", self._destroy_channel, rec)
            for w in list(itertools.chain.from_iterable(self.owned_waiters.values())):
                self._step("forgetting a wait", self._finish_waiter, w)
            for rec in list(self.pools.values()):
                if rec.default:
                    continue   # the launcher made it and destroys it
                self._step(f"destroying pool {rec.m_uid}", self._destroy_pool, rec)
            t.p_uids = ("shepherd",)
            self.send_shepherd(m.ShShutdown(t.tag))
            t.timer.cancel()
            t.timer = self.call_later(3.0, self._teardown_step, True)
            return
        if phase == "shepherd" and timed_out:
            log.error("shepherd did not confirm shutdown in time")
            self._teardown_done()

    def on_sh_shutdown_done(self, msg):
        if self.teardown is not None and self.teardown.p_uids[0] == "shepherd":
            self._teardown_done()

    def _teardown_done(self):
        t = self.teardown
        t.done = True
        t.timer.cancel()
        t.p_uids = ("done",)
        self.finished = True
        exits = {p.p_uid: p.exit_code for p in self.procs.values()}
        if t.r:
            self.send_reply(t.r, m.reply_ok(t.tag, exits))


# ------------------------------------------------------------------ transport
class ChannelTransport:
    """Real transport: replies and shepherd messages over channels.

    Replies are sent with ``timeout=0`` (GS never blocks on a client).
    Shepherd messages that do not fit wait in a local queue and go out as
    the shepherd drains its channel.  ``reply_pool_sdesc``: when given,
    :meth:`check_reply` accepts only channels in that pool (the
    infrastructure pool, where clients make their reply channels).
    """

    def __init__(self, sh_channel, attach_channel, reply_pool_sdesc=None):
        self.sh = sh_channel
        self.attach = attach_channel
        self.reply_pool_sdesc = reply_pool_sdesc
        self.cache = {}          # reply sdesc -> attached Channel
        self.backlog = []

    def check_reply(self, r):
        """None if ``r`` can be a reply channel, else why not."""
        if r in self.cache:
            return None
        try:
            ch = self.attach(r)
        except Exception as exc:
            return f"cannot attach it: {type(exc).__name__}: {exc}"
        why = None
        try:
            if ch.sdesc != r:
                why = "not a channel descriptor as ember makes them"
            elif self.reply_pool_sdesc is not None and ch.pool.sdesc != self.reply_pool_sdesc:
                why = "it is not in the infrastructure pool"
        except Exception as exc:
            why = f"cannot inspect it: {type(exc).__name__}: {exc}"
        if why is not None:
            try:
                ch.detach()
            except Exception:
                pass
            return why
        self.cache[r] = ch
        return None

    def __call__(self, r, msg):       # send_reply
        ch = self.cache.get(r)
        if ch is None:
            try:
                ch = self.attach(r)
            except Exception as exc:
                log.warning("cannot attach reply channel (%s); reply %r dropped", exc, msg)
                return
            self.cache[r] = ch
        try:
            ch.send(msg.pack(), timeout=0)
        except Exception as exc:
            log.warning("reply %r dropped: %s", msg, exc)

    def forget(self, r, destroy=False):
        ch = self.cache.pop(r, None)
        if ch is None and destroy:
            try:
                ch = self.attach(r)
            except Exception:
                return
        if ch is not None:
            try:
                ch.destroy() if destroy else ch.detach()
            except Exception as exc:
                log.debug("freeing reply channel: %s", exc)

    def to_shepherd(self, msg):
        data = msg.pack()
        if not self.backlog:
            try:
                self.sh.send(data, timeout=0)
                return
            except Exception:
                pass
        self.backlog.append(data)

    def flush(self):
        while self.backlog:
            try:
                self.sh.send(self.backlog[0], timeout=0)
            except Exception:
                return False
            self.backlog.pop(0)
        return True


def serve(gs_channel, sh_channel, runtime_tag, default_pool=None, node=0, ctl_channel=None,
          launcher_key=None, death_reports=True, attach_key=None):
    """Run GS until teardown completes.

    ``gs_channel``: the public input channel (requests, and ``Poke``);
    ``ctl_channel``: the private control channel (the shepherd's messages),
    read whenever a ``Poke`` arrives; ``sh_channel``: the shepherd's input.
    """
    from ..channels_c import Channel
    from ..exceptions import ChannelEmpty

    from ._client import CONTROL_SPIN

    # Requests come in bursts: spin a little after each before sleeping.
    gs_channel.set_spin(CONTROL_SPIN, adaptive=False)
    transport = ChannelTransport(sh_channel, Channel.attach,
                                 reply_pool_sdesc=gs_channel.pool.sdesc)
    reserved = [gs_channel.sdesc, sh_channel.sdesc]
    if ctl_channel is not None:
        reserved.append(ctl_channel.sdesc)
    gs = GlobalServices(runtime_tag=runtime_tag, send_reply=transport,
                        send_shepherd=transport.to_shepherd, default_pool=default_pool, node=node,
                        launcher_key=launcher_key, reserved_replies=reserved,
                        check_reply=transport.check_reply, death_reports=death_reports,
                        attach_key=attach_key)
    gs.extra_pools.append(gs_channel.pool)
    recv = gs_channel.recv
    poke = m.POKE
    while not gs.finished:
        timeout = gs.next_timeout()
        if transport.backlog and not transport.flush():
            timeout = 0.001 if timeout is None else min(timeout, 0.001)
        try:
            data = recv(timeout=timeout)
        except ChannelEmpty:
            data = None
        if data is not None:
            if data == poke:
                while ctl_channel is not None:
                    try:
                        gs.handle_bytes(ctl_channel.recv(timeout=0), trusted=True)
                    except ChannelEmpty:
                        break
            else:
                gs.handle_bytes(data)
        if gs.timers_pending:
            gs.expire()
    for ch in transport.cache.values():
        try:
            ch.detach()
        except Exception:
            pass
    return gs


def main_forked(gs_channel, sh_channel, runtime_tag, default_pool, control=None,
                death_reports=True, attach_key=None):
    """Entry point when the launcher forks GS: returns the process exit code.
    ``control``: the runtime's :class:`~ember.globalservices.control.ControlPlane`."""
    try:
        serve(gs_channel, sh_channel, runtime_tag, default_pool,
              ctl_channel=control.to_gs if control is not None else None,
              launcher_key=control.launcher_key if control is not None else None,
              death_reports=death_reports, attach_key=attach_key)
        return 0
    except BaseException:
        import traceback
        traceback.print_exc()
        return 1
