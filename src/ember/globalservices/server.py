"""Global services (GS): the single owner of the runtime's truth.

GS holds the registries (processes by p_uid and name, pools by m_uid and
name, channels by c_uid and name) and the waiters (process joins with
server-side timeouts, channel joins waiting for a name).  It decides and
records; the node's shepherd does (spawns, kills, and creates and destroys
the node's pools and channels: ``node_request``), and GS answers a request
that needs the shepherd when the shepherd confirms.  It runs one loop:
read a request from its input channel, update the registries, reply or park
the requester.  It never blocks on a client: replies go out with
``timeout=0`` (a client's reply channel only ever holds the answers to its
own outstanding requests), and messages to the shepherd that do not fit are
queued and retried.

GS is a :class:`~ember.service.Service` (the service core: handler table,
one dispatch, error replies, timers, stats/dump) composed of parts that each
read alone: :mod:`.processes` (the process registry), :mod:`.memory` (pools
and channels), :mod:`.teardown` (the end, as explicit phases) and
:mod:`.registry` (waiters, shared helpers).  This module composes them: where
a request enters (keys, reply channels), the transport and the loop.

The state machine (:class:`GlobalServices`) is separate from its transport:
``send_reply(r, msg)`` delivers a reply to the channel whose descriptor is
``r`` (every reply goes through :meth:`GlobalServices.route_reply` first),
``send_shepherd(msg)`` hands a message to the shepherd, and ``clock()`` is a
monotonic clock.  Tests drive it with scripted messages, a
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

from _operator import _compare_digest as compare_digest  # hmac.compare_digest without hashlib/OpenSSL (~2 ms at start-up)
import itertools
import os
import time

from .. import _log, messages as m
from ..exceptions import EmberError
from ..service import NOTICE, REQUEST, Service
from .memory import DEFAULT_POOL_NAME, MemoryPart  # noqa: F401  (re-exported)
from .objects import ObjectsPart
from .processes import (EXITED, FIRST_P_UID, LAUNCHER_P_UID, MAX_JOIN_IDENTS,  # noqa: F401
                        PENDING, RUNNING, ProcessesPart)
from .events import EventsPart
from .registry import WaitersPart
from .teardown import TeardownPart

log = _log.get("gs")

#: At most this many reply channels are registered per process (a thread
#: per request reuses freed ones; only abandoned requests retire one).
MAX_REPLY_CHANNELS = 4096


class GlobalServices(Service, ProcessesPart, MemoryPart, WaitersPart, TeardownPart, ObjectsPart,
                     EventsPart):
    """The GS state machine on the service core.  See the module docstring."""

    name = "GS"
    error_type = "GlobalServicesError"
    REQUESTS = ((m.ServiceStats, "on_service_stats"), (m.ServiceDump, "on_service_dump"))
    NOTICES = ((m.ShPoolCreated, "on_node_done"), (m.ShPoolDestroyed, "on_node_done"),
               (m.ShChannelCreated, "on_node_done"), (m.ShChannelDestroyed, "on_node_done"),
               (m.ShObjectEnded, "on_node_done"), (m.ShChannelClosed, "on_node_done"))

    def __init__(self, *, runtime_tag, send_reply, send_shepherd, clock=time.monotonic,
                 node=0, default_pool=None, launcher_key=None, reserved_replies=(),
                 check_reply=None, death_reports=True, err=None, attach_key=None):
        """``launcher_key``: the key of p_uid 0 (None: no request claiming
        p_uid 0 is accepted); ``reserved_replies``: descriptors that may
        never be a reply channel (GS's own inputs); ``check_reply(r)``:
        None if ``r`` is a channel GS can use as a reply channel, else the
        reason (the transport attaches it); ``death_reports``: write one
        line to ``err`` (stderr) for each process whose non-zero exit
        nobody joined (docs/architecture.md); ``attach_key``: the runtime's key
        (str) that a process the runtime did not start must present to
        attach (None: attaching is refused); ``default_pool``: the
        runtime's default pool (only its ``sdesc`` and ``size`` are read:
        GS does not use the node's pools, their shepherd does)."""
        Service.__init__(self, clock=clock, logger=log)
        self.attach_key = attach_key
        self.runtime_tag = runtime_tag
        self.send_reply = send_reply
        self.send_shepherd = send_shepherd
        self.node = node
        self._node_ops = {}       # tag of a request to a node's shepherd -> on_done(msg)
        self._node_tags = itertools.count(1)
        self.launcher_key = launcher_key
        self.launcher_replies = set()
        self.reserved_replies = frozenset(reserved_replies)
        self.check_reply = check_reply
        self.death_reports = death_reports
        self.err = err
        self._init_events()
        self._init_processes()
        self._init_memory(default_pool)
        self._init_waiters()
        self._init_teardown()
        self._init_objects()
        self.reply_owner = {}     # reply-channel descriptor -> p_uid it is registered to
        for part in (ProcessesPart, MemoryPart, WaitersPart, TeardownPart, ObjectsPart,
                     GlobalServices):
            for cls, method in part.REQUESTS:
                self.on(cls, getattr(self, method), REQUEST)
            # The shepherd's messages: accepted from the private control channel only.
            for cls, method in part.NOTICES:
                self.on(cls, getattr(self, method), NOTICE)

    # ------------------------------------------------------------------ input
    # handle_bytes(data, trusted=False) and dispatch(msg, trusted) come from
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
            good = self.launcher_key is not None and compare_digest(msg.key, self.launcher_key)
            replies = self.launcher_replies
        else:
            sender = self.procs.get(p_uid)
            good = sender is not None and sender.key is not None and \
                compare_digest(msg.key, sender.key)
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
        self.route_reply(self.node, msg.r, m.reply_err(msg.tag, err_type, text, tb))

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
            self.route_reply(self.node, r, m.reply_err(
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
            self.route_reply(self.node, r, m.reply_ok(tag, value))

    # ---------------------------------------------------------------- routing
    def route_reply(self, node, r, msg):
        """The one function every reply goes through: deliver ``msg`` to
        the reply channel ``r`` of a process on ``node``.  One node today:
        every reply channel is in the infrastructure pool of GS's own node,
        which GS maps; a multi-node transport takes over here."""
        if node != self.node:
            log.error("reply %r to node %s dropped: this runtime has one node", msg, node)
            return
        self.send_reply(r, msg)

    def node_request(self, node, build, on_done):
        """Ask the shepherd of ``node`` to do something (create or destroy
        a pool or channel): ``build(tag)`` makes the message;
        ``on_done(msg)`` runs when its answer (``ref`` == tag) comes back
        on the control channel."""
        if node != self.node:
            raise EmberError(f"node {node} is not a node of this runtime")
        tag = next(self._node_tags)
        self._node_ops[tag] = on_done
        self.send_shepherd(build(tag))

    def node_notice(self, node, msg):
        """Tell the shepherd of ``node`` something that needs no answer
        (``ShChannelDrop``); in order with :meth:`node_request`'s messages."""
        if node != self.node:
            raise EmberError(f"node {node} is not a node of this runtime")
        self.send_shepherd(msg)

    def on_node_done(self, msg):
        on_done = self._node_ops.pop(msg.ref, None)
        if on_done is None:
            log.warning("%s for no request of GS's (ref %r)", type(msg).__name__, msg.ref)
            return
        on_done(msg)

    # ----------------------------------------------------------- introspection
    def on_service_stats(self, msg):
        self._reply(msg.tag, msg.r, self.stats().as_dict())

    def on_service_dump(self, msg):
        self._reply(msg.tag, msg.r, self.dump())

    def dump(self):
        """GS's state as plain data: the core's stats, processes, pools,
        channels (holders, reference counts), parked waiters (who waits on
        what) and the teardown phase (None: not tearing down)."""
        d = Service.dump(self)
        pools, chans = self._dump_memory()
        d.update(node=self.node, runtime=self.runtime_tag, processes=self._dump_processes(),
                 pools=pools, channels=chans, waiters=self._dump_waiters(),
                 teardown=self._dump_teardown(), objects=self._dump_objects())
        return d


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
    from ..exceptions import ChannelEmpty, ChannelError

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
    recv = gs_channel.recv
    poke = m.POKE
    try:                 # the event log (ember events), next to the runtime's address
        from ..runtime import runtime_dir
        gs.events_path = os.path.join(runtime_dir(), f"{runtime_tag}.events")
    except Exception as exc:
        log.warning("no event log: %s", exc)
    gs._event("runtime.started", runtime=runtime_tag, pid=os.getppid())
    while not gs.finished:
        timeout = gs.next_timeout()
        if transport.backlog and not transport.flush():
            timeout = 0.001 if timeout is None else min(timeout, 0.001)
        try:
            data = recv(timeout=timeout)
        except ChannelEmpty:
            data = None
        except ChannelError as exc:
            # A message someone scribbled over is dropped (the channel
            # reports it and stays usable); a destroyed or closed input
            # channel ends GS (the launcher then reports a runtime failure).
            if "[EMBER_ERR_CORRUPT]" not in str(exc):
                raise
            gs.warn("corrupt-input", "dropped a corrupt message on GS's input channel: %s", exc)
            data = None
        if data is not None:
            if data == poke:
                while ctl_channel is not None:
                    try:
                        gs.handle_bytes(ctl_channel.recv(timeout=0), trusted=True)
                    except ChannelEmpty:
                        break
                    except ChannelError as exc:
                        if "[EMBER_ERR_CORRUPT]" not in str(exc):
                            raise
                        gs.warn("corrupt-input", "dropped a corrupt control message: %s", exc)
            else:
                gs.handle_bytes(data)
        if gs.timers_pending:
            gs.expire()
    for ch in transport.cache.values():
        try:
            ch.detach()
        except Exception:
            pass
    gs._event("runtime.ended")
    gs._close_events()
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
