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
import _thread
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
#: Notices for a node held at most (batch_notices), and for at most
#: NOTICE_DELAY seconds of idle input.
NOTICE_BATCH = 64
NOTICE_DELAY = 0.001
#: Events for the log are held at most this many seconds (or NOTICE_BATCH
#: of them), idle input or not: each write of the log is a cold run of its
#: code and a system call (~40 us of GS's CPU), and starts one after another
#: made one or two a start when GS wrote at each millisecond of idle input.
EVENTS_DELAY = 0.02


class GlobalServices(Service, ProcessesPart, MemoryPart, WaitersPart, TeardownPart, ObjectsPart,
                     EventsPart):
    """The GS state machine on the service core.  See the module docstring."""

    name = "GS"
    error_type = "GlobalServicesError"
    REQUESTS = ((m.ServiceStats, "on_service_stats"), (m.ServiceDump, "on_service_dump"))
    NOTICES = ((m.ShPoolCreated, "on_node_done"), (m.ShPoolDestroyed, "on_node_done"),
               (m.ShChannelCreated, "on_node_done"), (m.ShChannelDestroyed, "on_node_done"),
               (m.ShObjectEnded, "on_node_done"), (m.ShChannelClosed, "on_node_done"),
               (m.MnFrom, "on_mn_from"), (m.MnNodeUp, "on_mn_node_up"),
               (m.MnNodeLost, "on_mn_node_lost"))

    def __init__(self, *, runtime_tag, send_reply, send_shepherd, clock=time.monotonic,
                 node=0, default_pool=None, launcher_key=None, reserved_replies=(),
                 check_reply=None, death_reports=True, err=None, attach_key=None,
                 send_remote=None, mn_env=None, fail_fast=False, batch_notices=False):
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
        GS does not use the node's pools, their shepherd does);
        ``batch_notices``: keep the notices for a node that need no answer
        (``ShChannelAdopt``, ``ShChannelDrop``; a channel destroyed while its
        adopt is held gets one ``ShChannelFree`` instead of both) until
        :meth:`flush_notices`
        (the loop calls it when its input is idle), up to
        :data:`NOTICE_BATCH` of them; anything else sent to the node
        flushes them first, so the node sees every message in order."""
        Service.__init__(self, clock=clock, logger=log)
        self.attach_key = attach_key
        self.runtime_tag = runtime_tag
        self.send_reply = send_reply
        self._send_node = send_shepherd
        self._notices = []        # notices for the node, held until flush_notices()
        self._held_adopts = {}    # c_uid -> index in _notices of its ShChannelAdopt
        self.batch_notices = batch_notices
        self.node = node
        self.send_remote = send_remote
        self.mn_env = dict(mn_env or {})
        self.fail_fast = fail_fast
        # node index -> {"host", "alive", "default_m_uid", "agent"}
        self.nodes = {node: {"host": os.uname().nodename, "alive": True, "default_m_uid": 1,
                             "agent": None}}
        self.reply_node = {}      # reply channel of a process on another node -> that node
        # The private control channel (the shepherd's reports; serve), read
        # by read_reports
        self.ctl_channel = None
        self._origin = node       # the node of the request being handled
        self._node_ops = {}       # tag of a request to a node's shepherd -> (node, on_done, msg)
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
        if sender is not None and sender.state == EXITED and cls is not m.ProcessForked:
            # Sent just before its sender died (and its reply channels
            # were freed): nobody can read a reply, and a parked wait or
            # a channel reference would never be released.  (A fork child
            # that asks for its own p_uid may ask after its parent's end:
            # its reply channel becomes its own.)
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
        elif self._origin != self.node:
            pass        # made on its node by the process itself; that node's agent uses it
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
        if self._origin != self.node:
            self.reply_node[r] = self._origin
        return True

    def _reply(self, tag, r, value=None):
        if r:
            self.route_reply(self.node, r, m.reply_ok(tag, value))

    # ---------------------------------------------------------------- routing
    def route_reply(self, node, r, msg):
        """The one function every reply goes through: deliver ``msg`` to
        the reply channel ``r`` of a process on ``node``.  A reply channel
        registered by a process of another node (``reply_node``) is that
        node's: the reply goes there through the transport agents."""
        if self.reply_node:
            node = self.reply_node.get(r, node)
        if node == self.node:
            self.send_reply(r, msg)
            return
        info = self.nodes.get(node)
        if self.send_remote is None or info is None or not info["alive"]:
            log.info("reply %r to node %s dropped: no such node (or it was lost)", msg, node)
            return
        self.send_remote(node, m.MN_REPLY, r, msg.pack())

    def to_node(self, node, msg):
        """Hand ``msg`` to the shepherd of ``node`` (nothing if it was lost)."""
        if node == self.node:
            self.send_shepherd(msg)
            return
        info = self.nodes.get(node)
        if self.send_remote is None or info is None or not info["alive"]:
            log.info("%r to node %s dropped: no such node (or it was lost)", msg, node)
            return
        self.send_remote(node, m.MN_SH, None, msg.pack())

    def node_request(self, node, build, on_done):
        """Ask the shepherd of ``node`` to do something (create or destroy
        a pool or channel): ``build(tag)`` makes the message;
        ``on_done(msg)`` runs when its answer (``ref`` == tag) comes back
        on the control channel (or, if the node is lost meanwhile, with a
        stand-in answer whose ``err`` says so)."""
        info = self.nodes.get(node)
        if info is None or not info["alive"]:
            raise EmberError(f"node {node} is not a live node of this runtime")
        tag = next(self._node_tags)
        msg = build(tag)
        self._node_ops[tag] = (node, on_done, msg)
        self.to_node(node, msg)

    def send_shepherd(self, msg):
        """Hand ``msg`` to the node's shepherd, after any notices held."""
        if self._notices:
            self.flush_notices()
        self._send_node(msg)

    def node_notice(self, node, msg):
        """Tell the shepherd of ``node`` something that needs no answer
        (``ShChannelAdopt``, ``ShChannelDrop``); in order with every other
        message to it.  Held and sent in a burst when ``batch_notices`` (the
        local node only): one wake-up of the shepherd for many creates and
        destroys."""
        if node not in self.nodes:
            raise EmberError(f"node {node} is not a node of this runtime")
        if node != self.node or not self.batch_notices:
            return self.to_node(node, msg)
        if type(msg) is m.ShChannelAdopt:
            self._held_adopts[msg.c_uid] = len(self._notices)
        self._notices.append(msg)
        if len(self._notices) >= NOTICE_BATCH:
            self.flush_notices()

    @property
    def notices_pending(self):
        return len(self._notices)

    def free_held_adopt(self, c_uid):
        """Channel ``c_uid`` was destroyed while its ``ShChannelAdopt`` is
        still held: put a ``ShChannelFree`` in its place (the node checks
        and frees it in one step, and needs no ``ShChannelDrop``); False if
        no adopt of it is held."""
        i = self._held_adopts.pop(c_uid, None)
        if i is None:
            return False
        a = self._notices[i]
        self._notices[i] = m.ShChannelFree._new(a.c_uid, a.m_uid, a.pool_sdesc, a.sdesc, a.pid)
        return True

    def flush_notices(self):
        """Send the held notices to the local node's shepherd (in order)."""
        notices, self._notices = self._notices, []
        self._held_adopts.clear()
        for msg in notices:
            self._send_node(msg)

    def on_node_done(self, msg):
        op = self._node_ops.pop(msg.ref, None)
        if op is None:
            log.warning("%s for no request of GS's (ref %r)", type(msg).__name__, msg.ref)
            return
        op[1](msg)

    # ------------------------------------------------------------ several nodes
    def on_mn_from(self, msg):
        """A message from another node, put on the control channel by the
        head's transport agent: its shepherd's (trusted) or a user
        process's request there (admitted as any request; replies go back
        to that node)."""
        info = self.nodes.get(msg.node)
        if info is None or not info["alive"] or not isinstance(msg.data, bytes):
            self.warn("lost-node", "dropped a message from node %r: not a live node", msg.node)
            return
        if msg.trusted:
            self.handle_bytes(msg.data, trusted=True)
            return
        self._origin = msg.node
        try:
            self.handle_bytes(msg.data)
        finally:
            self._origin = self.node

    def on_mn_node_up(self, msg):
        """Node ``msg.node`` joined: its default pool is registered (so
        ``channel.create(..., node=N)`` has a pool to use)."""
        from .memory import _Pool
        info = msg.info if isinstance(msg.info, dict) else {}
        node = msg.node
        if isinstance(node, bool) or not isinstance(node, int) or node in self.nodes:
            log.warning("MnNodeUp for a bad or known node %r", node)
            return
        m_uid = next(self._m_uids)
        rec = _Pool(m_uid, f"default@{node}", info.get("default_sdesc"),
                    info.get("default_size"), default=True, node=node)
        self._add_pool(rec)
        self.nodes[node] = {"host": info.get("host"), "alive": True, "default_m_uid": m_uid,
                            "agent": info.get("agent")}
        self._update_agents()
        log.info("node %d (%s) joined", node, info.get("host"))
        self._event("node.up", node=node, host=info.get("host"))

    def on_mn_node_lost(self, msg):
        """Node ``msg.node`` is gone (its agent or shepherd died, or its host
        stopped answering): its processes are reported lost (exit code 255,
        state "lost"), its pools and channels are forgotten (handles to
        them raise), requests waiting on it fail; the runtime goes on (or,
        with ``fail_fast``, every process is killed)."""
        import sys
        node = msg.node
        info = self.nodes.get(node)
        if info is None or not info["alive"] or node == self.node:
            return
        info["alive"] = False
        self._update_agents()
        err = self.err if self.err is not None else sys.stderr
        err.write(f"ember: node {node} ({info.get('host')}) lost: {msg.why}; its processes "
                  f"are reported lost (exit code {m.EXIT_UNKNOWN})\n")
        err.flush()
        self._event("node.lost", node=node, host=info.get("host"), why=msg.why)
        self._node_lost_memory(node)
        for tag, (n, on_done, req) in list(self._node_ops.items()):
            if n != node:
                continue
            del self._node_ops[tag]
            done = _LostAnswer(tag, req, f"node {node} was lost")
            self._step(f"failing a request to lost node {node}", on_done, done)
        for rec in [p for p in self.procs.values() if p.node == node and p.state != EXITED]:
            if rec.create_req is not None and rec.state == PENDING:
                self._step(f"failing the start of process {rec.p_uid}", self.on_sh_spawned,
                           m.ShSpawned(None, rec.p_uid, None, f"node {node} was lost"))
                continue
            rec.lost = True
            self._step(f"reporting process {rec.p_uid} lost", self._exited, rec, m.EXIT_UNKNOWN)
        for r in [r for r, n in self.reply_node.items() if n == node]:
            del self.reply_node[r]
        if self.teardown is not None:
            self._teardown_node_lost(node)
        elif self.fail_fast:
            err.write("ember: --fail-fast-on-node-loss: killing every process\n")
            err.flush()
            for p in self.procs.values():
                if p.state != EXITED and not p.attached:
                    self.to_node(p.node, m.ShKill(p.p_uid, 9))

    def _update_agents(self):
        """The agents' addresses every new process gets (EMBER_MN_AGENTS)."""
        if self.mn_env:
            self.mn_env["EMBER_MN_AGENTS"] = ";".join(
                f"{n}={i['agent']}" for n, i in sorted(self.nodes.items())
                if i["alive"] and i.get("agent"))

    def live_nodes(self):
        return [n for n, info in self.nodes.items() if info["alive"]]

    # ----------------------------------------------------------- introspection
    def on_service_stats(self, msg):
        self._reply(msg.tag, msg.r, self.stats().as_dict())

    def on_service_dump(self, msg):
        self.read_reports()
        self._reply(msg.tag, msg.r, self.dump())

    def read_reports(self):
        """Handle what the control channel holds (the shepherd's reports).
        The loop calls it at a poke and after a request; a request that
        reports a process's state calls it first (read_reports in
        processes.py): the shepherd reports a plain exit without a poke
        (Shepherd.quiet_reports), and such a request sent after that
        report was sent sees the exit.  Not once finished: the launcher
        destroys the control plane as soon as it has the teardown's
        answer."""
        ch = self.ctl_channel
        if ch is None:
            return
        from ..exceptions import ChannelEmpty, ChannelError

        while not self.finished and len(ch):
            try:
                data = ch.recv(timeout=0)
            except ChannelEmpty:
                break
            except ChannelError as exc:
                if "[EMBER_ERR_CORRUPT]" not in str(exc):
                    raise
                self.warn("corrupt-input", "dropped a corrupt control message: %s", exc)
                continue
            self.handle_bytes(data, trusted=True)

    def dump(self):
        """GS's state as plain data: the core's stats, processes, pools,
        channels (holders, reference counts), parked waiters (who waits on
        what) and the teardown phase (None: not tearing down)."""
        d = Service.dump(self)
        pools, chans = self._dump_memory()
        d.update(node=self.node, runtime=self.runtime_tag,
                 nodes={str(n): dict(i) for n, i in self.nodes.items()}, processes=self._dump_processes(),
                 pools=pools, channels=chans, waiters=self._dump_waiters(),
                 teardown=self._dump_teardown(), objects=self._dump_objects())
        return d


class _LostAnswer:
    """The stand-in answer to a request whose node was lost: the fields of
    the request (``m_uid``, ``c_uid``), ``ref`` and an ``err``."""

    def __init__(self, tag, req, text):
        self.ref = tag
        self.err = ["EmberError", text, True]
        for f in ("m_uid", "c_uid"):
            setattr(self, f, getattr(req, f, None))
        self.sdesc = self.size = self.capacity = self.block_size = None


# ------------------------------------------------------------------ transport
class ChannelTransport:
    """Real transport: replies and shepherd messages over channels.

    Replies are sent with ``timeout=0`` (GS never blocks on a client).
    Shepherd messages that do not fit wait in a local queue and go out as
    the shepherd drains its channel.  ``reply_pool_sdesc``: when given,
    :meth:`check_reply` accepts only channels in that pool (the
    infrastructure pool, where clients make their reply channels).
    """

    def __init__(self, sh_channel, attach_channel, reply_pool_sdesc=None, agent_channel=None):
        self.sh = sh_channel
        self.attach = attach_channel
        self.reply_pool_sdesc = reply_pool_sdesc
        self.cache = {}          # reply sdesc -> attached Channel
        self.backlog = []
        self.agent = agent_channel   # several nodes: the head agent's input
        self.agent_backlog = []
        self.replies = 0         # replies sent (serve(): spin after a message answered)

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
        self.replies += 1
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

    def to_remote(self, node, kind, r, data):
        """Several nodes: a message for node ``node``, to the head agent."""
        data = m.MnTo(node, kind, r, data).pack()
        if not self.agent_backlog:
            try:
                self.agent.send(data, timeout=0)
                return
            except Exception:
                pass
        self.agent_backlog.append(data)

    @property
    def pending(self):
        return bool(self.backlog or self.agent_backlog)

    def flush(self):
        for ch, backlog in ((self.sh, self.backlog), (self.agent, self.agent_backlog)):
            while backlog:
                try:
                    ch.send(backlog[0], timeout=0)
                except Exception:
                    return False
                backlog.pop(0)
        return True


#: The runtime directory's event logs (``<id>.events``) beyond which a
#: runtime's start prunes them as ``ember cleanup --events-only`` would
#: with its defaults; below it, a start only counts them.
EVENTS_PRUNE_AT = 1000


def _prune_events(d):
    """On a thread of its own at GS's start: if the runtime directory ``d``
    holds more than EVENTS_PRUNE_AT event logs, remove the finished
    runtimes' logs that ``ember cleanup`` would remove by default (older
    than a week, beyond the 200 newest or 64 MB).  Nothing else removes
    them: a machine that runs many short runtimes (test suites,
    benchmarks) gathered thousands (docs/introspection.md)."""
    try:
        with os.scandir(d) as it:
            n = sum(1 for e in it if e.name.endswith(".events"))
        if n <= EVENTS_PRUNE_AT:
            return
        import io

        from ..launcher import cli
        cli.cleanup_events(cli.DEFAULT_EVENTS_AGE, out=io.StringIO(),
                           keep=cli.DEFAULT_EVENTS_KEEP, max_size=cli.DEFAULT_EVENTS_MAX_SIZE,
                           d=d)
    except Exception as exc:         # a log left is no reason to fail a runtime
        log.warning("event logs not pruned: %s", exc)


def serve(gs_channel, sh_channel, runtime_tag, default_pool=None, node=0, ctl_channel=None,
          launcher_key=None, death_reports=True, attach_key=None, mn=None):
    """Run GS until teardown completes.

    ``gs_channel``: the public input channel (requests, and ``Poke``);
    ``ctl_channel``: the private control channel (the shepherd's messages),
    read whenever a ``Poke`` arrives; ``sh_channel``: the shepherd's input.
    ``mn``: several nodes: ``{"to_agent": the head agent's input channel,
    "env": what every process gets, "fail_fast": bool}``.
    """
    from ..channels_c import Channel
    from ..exceptions import ChannelEmpty, ChannelError

    from ._client import CONTROL_SPIN

    # Requests come in bursts: spin a little after one that was answered
    # before sleeping (its sender, awake, may ask again at once).  Not after
    # the shepherd's reports nor a request answered later (a create, a lease
    # of ember.Process: ProcessClaimNext), nor after the answer to a spare's
    # create, which its creator reads at its next start (unawaited_replies):
    # nothing follows those within a spin, which ran its 100 us three times
    # a start, on a core the start's own processes wanted
    # (docs/python-processes.md, "Seventh pass"; multiprocessing.md, pass
    # gsmsg).
    gs_channel.set_spin(CONTROL_SPIN, adaptive=False)
    spinning, replies = True, 0
    transport = ChannelTransport(sh_channel, Channel.attach,
                                 reply_pool_sdesc=gs_channel.pool.sdesc,
                                 agent_channel=mn["to_agent"] if mn else None)
    reserved = [gs_channel.sdesc, sh_channel.sdesc]
    if ctl_channel is not None:
        reserved.append(ctl_channel.sdesc)
    if mn:
        reserved.append(mn["to_agent"].sdesc)
    gs = GlobalServices(runtime_tag=runtime_tag, send_reply=transport,
                        send_shepherd=transport.to_shepherd, default_pool=default_pool, node=node,
                        launcher_key=launcher_key, reserved_replies=reserved,
                        check_reply=transport.check_reply, death_reports=death_reports,
                        attach_key=attach_key,
                        send_remote=transport.to_remote if mn else None,
                        mn_env=mn.get("env") if mn else None,
                        fail_fast=bool(mn and mn.get("fail_fast")),
                        batch_notices=True)
    if mn:
        gs.nodes[node]["agent"] = mn.get("agent0")
    gs.ctl_channel = ctl_channel
    gs._board_pool = gs_channel.pool    # the join wake board's (wakeboard.py), made when needed
    recv = gs_channel.recv
    poke = m.POKE
    try:                 # the event log (ember events), next to the runtime's address
        from ..runtime import runtime_dir
        gs.events_path = os.path.join(runtime_dir(), f"{runtime_tag}.events")
    except Exception as exc:
        log.warning("no event log: %s", exc)
    else:
        _thread.start_new_thread(_prune_events, (os.path.dirname(gs.events_path),))
    gs.defer_events = True       # written in bursts (flush_events), after the replies
    gs._event("runtime.started", runtime=runtime_tag, pid=os.getppid())
    while not gs.finished:
        timeout = gs.next_timeout()
        if transport.pending and not transport.flush():
            timeout = 0.001 if timeout is None else min(timeout, 0.001)
        if gs._notices:
            timeout = NOTICE_DELAY if timeout is None else min(timeout, NOTICE_DELAY)
        due = gs.events_due(EVENTS_DELAY)
        if due is not None:
            timeout = due if timeout is None else min(timeout, due)
        try:
            data = recv(timeout=timeout)
        except ChannelEmpty:
            data = None
            if gs._notices:            # idle: now wake the shepherd for them
                gs.flush_notices()
            if gs.events_due(EVENTS_DELAY) == 0.0:
                gs.flush_events()      # (idle or not: see EVENTS_DELAY)
        except ChannelError as exc:
            # A message someone scribbled over is dropped (the channel
            # reports it and stays usable); a destroyed or closed input
            # channel ends GS (the launcher then reports a runtime failure).
            if "[EMBER_ERR_CORRUPT]" not in str(exc):
                raise
            gs.warn("corrupt-input", "dropped a corrupt message on GS's input channel: %s", exc)
            data = None
        if data is not None:
            if data != poke:
                gs.handle_bytes(data)
            # The control channel (the shepherd's reports) is read at a poke
            # and after any request: the shepherd reports a plain exit there
            # without a poke (Shepherd.quiet_reports), read in the wake-up
            # of the next request, after it (a start's request asks for the
            # spare the start after it takes: not delayed by the exit).  Not
            # once finished: the launcher destroys the control plane as
            # soon as it has the teardown's answer.
            # The control channel (the shepherd's reports) is read at a poke
            # and after any request: the shepherd reports a plain exit there
            # without a poke (Shepherd.quiet_reports), read in the wake-up
            # of the next request, after it (a start's request asks for the
            # spare the start after it takes: not delayed by the exit), or
            # before it by a request that reports a process's state.
            if ctl_channel is not None and not gs.finished and \
                    (data == poke or len(ctl_channel)):
                gs.read_reports()
            sent = transport.replies - gs.unawaited_replies
            spin = sent != replies
            replies = sent
            if spin is not spinning:
                gs_channel.set_spin(CONTROL_SPIN if spin else 0, adaptive=False)
                spinning = spin
        if gs.timers_pending:
            gs.expire()
        if len(gs._events_held) >= NOTICE_BATCH or gs.events_due(EVENTS_DELAY) == 0.0:
            gs.flush_events()        # after the replies: off the requesters' path
    for ch in transport.cache.values():
        try:
            ch.detach()
        except Exception:
            pass
    if gs.wake_board is not None:
        try:
            gs.wake_board.close(destroy=True)
        except Exception as exc:
            log.debug("join wake board: %s", exc)
        gs.wake_board = None
    gs._event("runtime.ended")
    gs._close_events()
    return gs


def main_forked(gs_channel, sh_channel, runtime_tag, default_pool, control=None,
                death_reports=True, attach_key=None, mn=None):
    """Entry point when the launcher forks GS: returns the process exit code.
    ``control``: the runtime's :class:`~ember.globalservices.control.ControlPlane`."""
    try:
        serve(gs_channel, sh_channel, runtime_tag, default_pool,
              ctl_channel=control.to_gs if control is not None else None,
              launcher_key=control.launcher_key if control is not None else None,
              death_reports=death_reports, attach_key=attach_key, mn=mn)
        return 0
    except BaseException:
        import traceback
        traceback.print_exc()
        return 1
