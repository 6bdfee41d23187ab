"""A handle of a channel that lives on another node.

``Channel.attach(descriptor)`` of a channel whose descriptor names another
node returns a :class:`RemoteChannel`: the same ``send``/``recv`` API as a
local :class:`ember.channels_c.Channel`, through that node's transport
agent (:mod:`.agent`, "the data plane"), over the runtime's CURVE-encrypted
connection.  One connection per (process, node), shared by every handle
of the process on that node's channels.

Sends are pipelined: ``send`` returns once the message is handed to the
transport; the agent acknowledges messages in bulk once they are in the
channel, and at most :data:`WINDOW` messages (or :data:`WINDOW_BYTES`)
are unacknowledged per handle — that window is the sender's back-pressure
(a full channel stops the acknowledgements; ``send(timeout=...)`` raises
``ChannelFull`` when the window does not open in time).  Small messages
sent in a stream (within :data:`STREAMING` seconds of the previous one)
are batched (up to :data:`BATCH` messages
or :data:`BATCH_BYTES`, or :data:`FLUSH_AFTER` seconds) into one transport
message; a message larger than :data:`BATCH_BYTES` goes alone as a
zero-copy frame of the caller's buffer.  A failure the agent reports for a
send (the channel was closed or destroyed) is raised by the next call on
the handle; :meth:`RemoteChannel.flush` waits until everything sent is in
the channel.  Pending messages are flushed at interpreter exit.

``recv`` asks the agent for one message (a large one comes as a zero-copy
frame of the pool block it was in).  While a call waits, the handle checks
every :data:`CHECK_EVERY` seconds with GS that the channel still exists:
a channel whose node was lost raises ``ChannelError``.
"""
import atexit
import itertools
import os
import sys
import threading
import time

import zmq

from .. import _log, exceptions
from . import _trace
from ..exceptions import ChannelEmpty, ChannelError, ChannelFull
from .agent import (ACK, ATTACH_HDR, ERR, LEN, MSG, OP_ATTACH, OP_RECV, OP_REVOKE, OP_SEND,
                    OP_SENDB, OP_SENDF, R_ACK, R_CLOSED, R_EMPTY, R_ERR, R_MSG, R_OK, R_ROUTE,
                    RECV_HDR, ROUTE, SEND_HDR, TAKEN_ENTRY, Z_EVENTS, Z_POLLIN)

__all__ = ["RemoteChannel", "WINDOW", "BATCH"]

WINDOW = 8192
WINDOW_BYTES = 64 << 20
BATCH = 256
BATCH_BYTES = 64 << 10
FLUSH_AFTER = 0.0002
#: an isolated message up to this size goes as one frame with its header
#: (agent.OP_SENDF: one zmq message part to send and to receive, where a
#: header frame and a payload frame are two); a larger one keeps its own
#: frame (not copied into another)
INLINE = 8192
#: a small send within this many seconds of the previous one is batched
STREAMING = 0.00005
#: while some messages are unacknowledged, a send reads what the agent said
#: (acknowledgements, a failure) once this many sends went out since it last
#: did (asking the socket costs about as much as a send: not on every one,
#: also not when a long stream keeps more than this many unacknowledged; the
#: agent acknowledges every ACK_EVERY = 128 at the latest; ``flush`` and every
#: wait read at once)
DRAIN_AFTER = 128
#: ... and at least this often (seconds) while some are unacknowledged
DRAIN_EVERY = 0.001
_monotonic = time.monotonic
TRACE = _trace.ON
CHECK_EVERY = 1.0
#: while a channel's messages go by the direct path (docs/multinode.md), a
#: thread of the process reads what the agent says (the end of a route)
#: this often (seconds): a send on the direct path does not ask the agent's
#: socket (its events cost a system call)
ROUTE_CHECK = 0.05
#: a stream that is offered a route waits this long (seconds) at most, once
#: per offer, for what it sent through the agent to be acknowledged, so that
#: it can switch (_Conn._try_switch)
SWITCH_WAIT = 0.01


class _Rerouted(Exception):
    """A send that waited on the direct path found its route ended."""

_conns = {}
_conns_lock = threading.Lock()
_ctx = None
_ctx_pid = None


def _agents():
    from .. import _env
    text = _env.get("EMBER_MN_AGENTS") or ""
    out = {}
    for item in text.split(";"):
        if "=" in item:
            n, a = item.split("=", 1)
            out[int(n)] = a
    return out


def _keys():
    from .. import _env
    text = _env.get("EMBER_MN_KEY") or ""
    if "," not in text:
        raise ChannelError("this process has no transport key: it is not a managed process of "
                           "a runtime that spans several nodes")
    return text.split(",", 1)


def _error(frames):
    text = bytes(frames[1]).decode(errors="replace") if len(frames) > 1 else "ChannelError\0?"
    name, _, msg = text.partition("\0")
    cls = getattr(exceptions, name, None)
    if not (isinstance(cls, type) and issubclass(cls, ChannelError)):
        cls = ChannelError
    return cls(msg)


def context():
    """This process's zmq context for its transport endpoints (remote
    handles, :mod:`.direct`): one, so one zmq I/O thread."""
    global _ctx, _ctx_pid
    if _ctx is None or _ctx_pid != os.getpid():
        from .zmq_backend import keep_heap
        keep_heap()           # large messages: see there
        _ctx, _ctx_pid = zmq.Context(1), os.getpid()
    return _ctx


class _Conn:
    """This process's connection to one node's agent."""

    def __init__(self, node):
        _watch_forks()
        addr = _agents().get(node)
        if addr is None:
            raise ChannelError(f"no transport agent known for node {node}: it is not a node of "
                               f"this runtime (or was lost)")
        pub, sec = _keys()
        s = context().socket(zmq.DEALER)
        s.linger = 2000
        s.sndhwm = s.rcvhwm = 1 << 20
        s.curve_serverkey = pub.encode()
        s.curve_publickey = pub.encode()
        s.curve_secretkey = sec.encode()
        s.connect(addr)
        self.sock = s
        self.node = node
        self.lock = threading.RLock()
        self.reqs = itertools.count(1)
        self.inflight = {}        # c_uid -> [messages, bytes] not acknowledged
        self.errors = {}          # c_uid -> exception of a failed send
        self.pending = {}         # c_uid -> [payloads, bytes] batched, not sent yet
        self.replies = {}         # req -> frames
        self.flusher = None
        self.last_send = 0.0
        self.last_drain = 0.0
        self.undrained = 0        # sends since the last _drain
        self.wake = threading.Event()
        self.pid = os.getpid()
        # the direct path (docs/multinode.md, "The direct path")
        self.offers = {}          # c_uid -> (epoch, inbox address) offered by the agent
        self.direct = {}          # c_uid -> (epoch, DirectSender): sends go there
        self.dsenders = {}        # inbox address -> DirectSender
        self.waited = set()       # (c_uid, epoch): offers a stream waited to take
        self.watcher = None       # the thread that reads the agent's route ends

    # ---- receiving what the agent says
    def _dispatch(self, frames):
        kind = bytes(frames[0][:1])
        if kind == R_ROUTE or kind == R_CLOSED:
            _, c_uid, epoch = ROUTE.unpack(bytes(frames[0]))
            if kind == R_ROUTE:
                self.offers[c_uid] = (epoch, bytes(frames[1]).decode())
            else:
                self._route_closed(c_uid, epoch, bytes(frames[1]))
        elif kind == R_ACK:
            _, c_uid, n = ACK.unpack(bytes(frames[0]))
            f = self.inflight.get(c_uid)
            if f is not None:
                f[0] -= n
                if f[0] <= 0:
                    f[0] = f[1] = 0
                else:
                    f[1] = f[1] * f[0] // (f[0] + n)
        elif kind == R_ERR:
            _, c_uid, req = ERR.unpack(bytes(frames[0]))
            if req == 0:
                self.errors[c_uid] = _error(frames)
                self.inflight.pop(c_uid, None)
            else:
                self.replies[req] = frames
        else:
            _, req = MSG.unpack(bytes(frames[0][:MSG.size]))
            self.replies[req] = frames

    # ---- the direct path
    def _switch(self, c_uid):
        """Take channel ``c_uid``'s offered route (nothing of it is
        unacknowledged here: all this process sent is in the channel)."""
        from .direct import DirectSender
        epoch, address = self.offers.pop(c_uid)
        ds = self.dsenders.get(address)
        if ds is None:
            ds = self.dsenders[address] = DirectSender(address)
        # (epoch, sender, the channel's DirectOut: the send's hot path, the
        # lock of the socket it sends on: the process's inbox's)
        o = ds.out(c_uid)
        o.handle = ds._handle             # (a route's end set it to 0: retire)
        o.bind(ds.inbox.lock, self.errors)
        d = self.direct[c_uid] = (epoch, ds, o, ds.inbox.lock)
        if self.watcher is None:
            self.watcher = threading.Thread(target=self._watch_routes, daemon=True,
                                            name=f"ember-routes-node{self.node}")
            self.watcher.start()
        return d

    def _try_switch(self, c_uid, timeout):
        """A route is offered: switch once nothing sent here is
        unacknowledged (all of it is in the channel).  A stream keeps some
        of its messages unacknowledged at every send: it flushes and waits
        for their acknowledgement, up to SWITCH_WAIT seconds (and its
        ``timeout``), once per offer (else it would stay on the agent's
        path while it streams).  The route (``_switch``), or None."""
        def busy():
            f = self.inflight.get(c_uid)
            return bool(f and f[0]) or c_uid in self.pending
        offer = self.offers.get(c_uid)
        if busy() and offer is not None and (c_uid, offer[0]) not in self.waited and \
                timeout != 0:
            self.waited.add((c_uid, offer[0]))
            self._flush(c_uid)
            deadline = _monotonic() + (SWITCH_WAIT if timeout is None
                                       else min(SWITCH_WAIT, timeout))
            while c_uid in self.offers and busy() and c_uid not in self.errors:
                left = deadline - _monotonic()
                if left <= 0 or not self._wait_one(left):
                    break
        if c_uid in self.offers and not busy():
            return self._switch(c_uid)
        return None

    def _route_closed(self, c_uid, epoch, table):
        """The agent ended channel ``c_uid``'s route: what the receiver did
        not take (by its record, ``table``) is sent again through the
        agent, in order, before anything new; this handle stays there."""
        o = self.offers.get(c_uid)
        if o is not None and o[0] == epoch:
            del self.offers[c_uid]
        d = self.direct.get(c_uid)
        if d is None or d[0] != epoch:
            return
        del self.direct[c_uid]
        ds = d[1]
        # no send of a handle's own (RemoteChannel.send: send_now) after
        # this: one that went before it has its copy among what is resent
        ds.retire(c_uid)
        taken = {}
        for i in range(0, len(table) - TAKEN_ENTRY.size + 1, TAKEN_ENTRY.size):
            n, sid, seq = TAKEN_ENTRY.unpack_from(table, i)
            taken[sid[:n]] = seq
        rest = ds.after(c_uid, taken.get(ds.identity, 0))
        ds.forget(c_uid)
        now = _monotonic()
        for data in rest:
            self._put(c_uid, data, len(data), now)
        self._flush(c_uid)

    def _watch_routes(self):
        while True:
            time.sleep(ROUTE_CHECK)
            if self.pid != os.getpid():
                return
            with self.lock:
                if self.direct:
                    try:
                        self._drain()
                    except Exception as exc:        # the socket closed: the process ends
                        _log.get("remote").debug("route watcher ends: %r", exc)
                        return

    def _route_idle(self, c_uid, d):
        """Called while a send on the direct path (route ``d``) waits for
        room: reads the agent's reports; raises _Rerouted if the route ended
        meanwhile (the message was not sent: it goes through the agent)."""
        self._drain()
        if self.direct.get(c_uid) is not d:
            raise _Rerouted()

    def _drain(self):
        self.undrained = 0
        sock = self.sock
        while sock.getsockopt(Z_EVENTS) & Z_POLLIN:
            self._dispatch(sock.recv_multipart(copy=True))

    def _wait_one(self, timeout):
        """Wait up to ``timeout`` s (None: CHECK_EVERY) for one message."""
        if self.sock.poll(CHECK_EVERY * 1000 if timeout is None else timeout * 1000):
            self._dispatch(self.sock.recv_multipart(copy=True))
            self._drain()
            return True
        return False

    # ---- sending
    def _flush(self, c_uid):
        p = self.pending.pop(c_uid, None)
        if p and p[0]:
            msgs = p[0]
            if len(msgs) == 1:
                self.sock.send_multipart([SEND_HDR.pack(OP_SEND, c_uid), msgs[0]])
            else:           # one frame: (length, message)... (one zmq message part)
                pack = LEN.pack
                self.sock.send_multipart([SEND_HDR.pack(OP_SENDB, c_uid),
                                          b"".join([x for m in msgs for x in (pack(len(m)), m)])])
            f = self.inflight.setdefault(c_uid, [0, 0])
            f[0] += len(p[0])
            f[1] += p[1]

    def flush_all(self):
        with self.lock:
            for c_uid in list(self.pending):
                self._flush(c_uid)

    def _flusher(self):
        while True:
            self.wake.wait()
            self.wake.clear()
            time.sleep(FLUSH_AFTER)
            with self.lock:
                if self.pid != os.getpid():
                    return
                for c_uid in list(self.pending):
                    self._flush(c_uid)

    def send(self, handle, data, timeout):
        if TRACE:
            _trace.stamp("s0")
        c_uid = handle.c_uid
        with self.lock:
            if self.errors:
                err = self.errors.pop(c_uid, None)
                if err is not None:
                    raise err
            d = self.direct.get(c_uid)
            if d is None and c_uid in self.offers:
                self._drain()
                d = self._try_switch(c_uid, timeout)
            if d is not None:
                if TRACE:
                    _trace.stamp("d0")
                handle._dout = d[2]             # its next sends: RemoteChannel.send
                lk = d[3]
                if lk.acquire(False):           # the inbox's socket is free
                    try:
                        sent = d[2].send(data)  # the hot path, in one call
                    finally:
                        lk.release()
                    if sent:
                        if TRACE:
                            _trace.stamp("d1")
                        return
                try:
                    d[1].send(c_uid, data, timeout, self._route_idle, d)
                    return
                except _Rerouted:
                    pass
            n = len(data) if type(data) is bytes else memoryview(data).nbytes
            f = self.inflight.get(c_uid)
            now = _monotonic()
            drain = False
            if f is not None and f[0]:
                u = self.undrained = self.undrained + 1
                if u >= DRAIN_AFTER or now - self.last_drain > DRAIN_EVERY:
                    # acknowledgements (or a failure) may be waiting: read
                    # them (not on every send: see DRAIN_AFTER), once this
                    # message is on its way (see _put)
                    self.last_drain = now
                    drain = True
            deadline = None
            while f is not None and (f[0] >= WINDOW or f[1] >= WINDOW_BYTES):
                self._flush(c_uid)
                if deadline is None and timeout is not None:
                    deadline = time.monotonic() + timeout
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ChannelFull(f"channel {c_uid} on node {self.node}: no room within "
                                      f"{timeout} s")
                if not self._wait_one(None if left is None else min(left, CHECK_EVERY)):
                    handle._check_alive()
                err = self.errors.pop(c_uid, None)
                if err is not None:
                    raise err
                now = _monotonic()
            self._put(c_uid, data, n, now)
            if drain:
                self._drain()

    def _put(self, c_uid, data, n, now):
        """Hand one message to the socket (or to the batch), under the lock.
        The caller reads the agent's reports after it, not before: reading
        them (``ZMQ_EVENTS``) takes as long as the send itself, and after it
        that time overlaps the message's way to the agent, where before it
        added to a round trip (a failure it finds is raised by the next
        call either way)."""
        if n > BATCH_BYTES:
            self._flush(c_uid)
            self.sock.send(SEND_HDR.pack(OP_SEND, c_uid), zmq.SNDMORE)
            self.sock.send(data, copy=False)
            f = self.inflight.setdefault(c_uid, [0, 0])
            f[0] += 1
            f[1] += n
            return
        if type(data) is not bytes:
            data = bytes(data)
        last, self.last_send = self.last_send, now
        if now - last > STREAMING and c_uid not in self.pending:
            # an isolated message (a request, a ping) goes at once; one
            # that follows another closely joins a batch
            if n <= INLINE:
                self.sock.send(SEND_HDR.pack(OP_SENDF, c_uid) + LEN.pack(n) + data)
                if TRACE:
                    _trace.stamp("s1")
            else:
                self.sock.send(SEND_HDR.pack(OP_SEND, c_uid), zmq.SNDMORE)
                self.sock.send(data)
            f = self.inflight.setdefault(c_uid, [0, 0])
            f[0] += 1
            f[1] += n
            return
        p = self.pending.get(c_uid)
        if p is None:
            p = self.pending[c_uid] = [[], 0]
            if self.flusher is None:
                self.flusher = threading.Thread(target=self._flusher, daemon=True,
                                                name=f"ember-flush-node{self.node}")
                self.flusher.start()
            self.wake.set()
        p[0].append(data)
        p[1] += n
        if len(p[0]) >= BATCH or p[1] >= BATCH_BYTES:
            self._flush(c_uid)

    def wait_acked(self, handle, timeout):
        c_uid = handle.c_uid
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            if c_uid in self.direct:
                # "in the channel": the route ends (the receiver keeps what
                # it took, the rest comes here and is sent through the agent)
                self.sock.send(SEND_HDR.pack(OP_REVOKE, c_uid))
                while c_uid in self.direct:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    if not self._wait_one(None if left is None else min(left, CHECK_EVERY)):
                        handle._check_alive()
            self._flush(c_uid)
            while True:
                err = self.errors.pop(c_uid, None)
                if err is not None:
                    raise err
                f = self.inflight.get(c_uid)
                if not f or not f[0]:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if not self._wait_one(None if left is None else min(left, CHECK_EVERY)):
                    handle._check_alive()

    # ---- requests with a reply
    def request(self, handle, frames, req, timeout, copy=True):
        with self.lock:
            self._flush(handle.c_uid)
            self.sock.send_multipart(frames, copy=copy)
            deadline = None if timeout is None else time.monotonic() + timeout + 5.0
            while req not in self.replies:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise ChannelError(f"no answer from node {self.node}'s transport agent")
                if not self._wait_one(None if left is None else min(left, CHECK_EVERY)):
                    handle._check_alive()
            return self.replies.pop(req)

    def close(self):
        try:
            self.flush_all()
        except Exception:
            pass
        for ds in self.dsenders.values():
            ds.close()
        self.sock.close(linger=2000)


#: this process's pid as its handles compare it (RemoteChannel._own: not
#: a getpid() a send), set at its first connection and in a fork child
_pid = None


def _watch_forks():
    """At a process's first connection: in a fork child of it (os.fork),
    :data:`_pid` is the child's, and every DirectOut it inherited declines
    (its socket is the parent's inbox's, whose zmq context's I/O thread is
    the parent's: what the child sent there never left), so that a
    handle's send takes its slow path, which makes the child's own
    connection (:meth:`RemoteChannel._own`)."""
    global _pid
    if _pid is None:
        _pid = os.getpid()
        os.register_at_fork(after_in_child=_after_fork)


def _after_fork():
    global _pid
    _pid = os.getpid()
    for c in list(_conns.values()):
        for d in c.direct.values():
            d[2].handle = 0
    route = sys.modules.get(__package__ + ".route")   # (its routes' registers made a connection)
    if route is not None:
        route._routes_forgotten()


def _conn(node):
    with _conns_lock:
        c = _conns.get(node)
        if c is None or c.pid != os.getpid():
            c = _conns[node] = _Conn(node)
        return c


@atexit.register
def _flush_at_exit():
    """Hand every batched message to the transport and give it up to 2 s
    to go out (the sockets' linger)."""
    for c in list(_conns.values()):
        if c.pid == os.getpid():
            try:
                c.flush_all()
                for c_uid in list(c.direct) + list(c.inflight):
                    c.wait_acked(_Stub(c_uid), 2.0)
            except Exception:
                pass


class _Stub:
    def __init__(self, c_uid):
        self.c_uid = c_uid

    def _check_alive(self):
        pass


class RemoteChannel:
    """A handle of channel ``descriptor`` on another node (see the module
    docstring).  Made by ``Channel.attach(descriptor)``."""

    def __init__(self, desc):
        self.desc = desc
        self.c_uid = desc.c_uid
        self.node = desc.node
        self._conn = _conn(desc.node)
        self._detached = False
        # the channel's DirectOut while its sends go by the direct path
        # (set by the connection's send; it declines once the route ended)
        self._dout = None
        self._last_check = time.monotonic()
        self._attach()

    def _attach(self):
        req = next(self._conn.reqs)
        frames = self._conn.request(self, [ATTACH_HDR.pack(OP_ATTACH, self.c_uid, req),
                                           self.desc.sdesc], req, 30.0)
        if frames[0][:1] == R_ERR:
            raise _error(frames)

    def _own(self):
        """This handle's connection; in a fork child (os.fork) of the
        process that made it, the child's own, made now and the channel
        attached on it: the parent's zmq socket is not the child's to use
        (its context's I/O thread is the parent's), nor is its direct
        route (docs/multinode.md)."""
        c = self._conn
        if c.pid != _pid:
            self._dout = None
            self._conn = _conn(self.node)
            self._attach()
            c = self._conn
        return c

    def __repr__(self):
        return f"<ember RemoteChannel c_uid={self.c_uid} node={self.node}>"

    # the attributes of a local handle
    sdesc = property(lambda self: self.desc.sdesc)
    capacity = property(lambda self: self.desc.capacity)
    block_size = property(lambda self: self.desc.block_size)

    @property
    def closed(self):
        return self._detached

    def _check_open(self):
        if self._detached:
            raise ChannelError(f"channel c_uid {self.c_uid} (node {self.node}): this handle is "
                               f"detached")

    def _check_alive(self):
        """Called while a call waits: does GS still know the channel?"""
        now = time.monotonic()
        if now - self._last_check < CHECK_EVERY:
            return
        self._last_check = now
        from ..globalservices import channel
        try:
            channel.query(self.c_uid)
        except ChannelError:
            raise ChannelError(f"channel c_uid {self.c_uid} on node {self.node} is gone (destroyed, "
                               f"or its node was lost)") from None
        except Exception:
            pass

    def send(self, data, timeout=None):
        """Send ``data`` (bytes-like) to the channel (see the module
        docstring: pipelined, acknowledged in bulk)."""
        if self._detached:
            self._check_open()
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
        o = self._dout
        if o is not None:
            # the direct path's hot path: one call, without the connection's
            # lock (the socket's own; a route's end makes it decline)
            if TRACE:
                _trace.stamp("s0")
                _trace.stamp("d0")
            if o.send_now(data):
                if TRACE:
                    _trace.stamp("d1")
                return
        c = self._conn
        (c if c.pid == _pid else self._own()).send(self, data, timeout)

    def send_nowait(self, data):
        self.send(data, 0)

    def flush(self, timeout=None):
        """Wait until every message sent through this handle is in the
        channel (True), or ``timeout`` passed (False); raises what the agent
        reported for a failed send."""
        self._check_open()
        return self._own().wait_acked(self, timeout)

    def recv(self, timeout=None):
        """The oldest message of the channel, as bytes; ChannelEmpty when
        none arrived within ``timeout``."""
        self._check_open()
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise ValueError(f"timeout must be None or >= 0, got {timeout!r}")
        conn = self._own()
        req = next(conn.reqs)
        frames = conn.request(self, [RECV_HDR.pack(OP_RECV, self.c_uid, req,
                                                   -1.0 if timeout is None else float(timeout))],
                              req, timeout)
        kind = bytes(frames[0][:1])
        if kind == R_MSG:
            return frames[1]
        if kind == R_EMPTY:
            raise ChannelEmpty(f"channel c_uid {self.c_uid} (node {self.node}): no message within "
                               f"{timeout} s")
        raise _error(frames)

    def recv_nowait(self):
        return self.recv(0)

    recv_auto = recv

    def recv_view(self, timeout=None):
        return memoryview(self.recv(timeout))

    def detach(self):
        """Forget this handle (what was sent is flushed first, up to 10 s)."""
        if not self._detached:
            try:
                self._own().wait_acked(self, 10.0)
            finally:
                self._detached = True
                self._dout = None

    def destroy(self):
        raise ChannelError("a channel on another node is destroyed through GS "
                           "(ember.globalservices.channel.destroy), not through a handle")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.detach()
