"""The transport agent: one per node of a runtime that spans several nodes.

Head agent (node 0, forked by the launcher beside GS and the shepherd)
----------------------------------------------------------------------
Binds one CURVE server endpoint.  Each other node's agent connects to it
(identity ``node:<N>``) and says hello; the head agent tells GS
(``MnNodeUp``) and the launcher (a line on its ready pipe).  Then:

- GS's messages for other nodes come on the head agent's input channel
  (``MnTo``, in the control pool): to that node's shepherd, a reply to a
  reply channel there, or "free that reply channel";
- what comes back from a node — its shepherd's messages, requests of its
  processes — is put on GS's control channel as ``MnFrom(node, trusted,
  data)`` followed by a ``Poke`` on GS's input (as the local shepherd does);
- heartbeats both ways every :data:`HEARTBEAT` seconds; a node silent for
  :data:`LOST_AFTER` seconds, or whose agent says its shepherd died, is
  reported lost (``MnNodeLost``).

Node agent (``python -m ember.transport.node``, :mod:`.node`)
-------------------------------------------------------------
Connects to the head agent; puts GS's messages on its shepherd's input;
reads the shepherd's output channel and the node's GS-request channel (the
``EMBER_GS_CH`` of the node's processes) and forwards both; delivers
replies to the node's reply channels.  It ends its node when the head has
been silent for :data:`LOST_AFTER` seconds (the launcher is gone) or when
its shepherd ends.

Both: the data plane
--------------------
Every agent serves the handles that processes of other nodes hold on this
node's channels (:mod:`.remote`), on its server endpoint: *attach* (by the
channel's descriptor), *send* (a batch of messages; acknowledged in bulk,
after they are in the channel: the sender's window is its back-pressure),
*recv* (one message, zero-copy from pool memory for a large one; a recv
that must wait is parked and retried).  Frames are raw (a small binary
header), not control-plane messages.

Channels are read by one thread each (a blocking ``recv``), which hands
each message to the loop through a queue and an eventfd (:class:`_Inbox`):
the loop waits only on the poller.
"""
import collections
import ctypes
import itertools
import os
import select
import struct
import threading
import time

import zmq

from .. import _log, messages as m
from . import _trace
from ..exceptions import ChannelClosed, ChannelEmpty, ChannelError, ChannelFull, PoolExhausted

log = _log.get("agent")
TRACE = _trace.ON

HEARTBEAT = 0.5
LOST_AFTER = 3.0
#: parked receives and full channels are retried at every turn of the loop
#: (a poll that does not wait) for the first RETRY_EAGER seconds of a wait,
#: then every RETRY seconds (the loop's poll counts whole milliseconds: a shorter
#: wait is none, and a loop that never waits holds a CPU for as long as a
#: receive is parked)
RETRY_EAGER = 0.002
RETRY = 0.001

# control frames, node agent <-> head agent (first frame)
HELLO, BEAT, TO_SH, FROM_SH, REQ, REPLY, FREE, BYE, LOSS = (
    b"H", b"B", b"S", b"C", b"Q", b"R", b"F", b"X", b"L")

# data plane, client -> agent: first frame = op byte + struct
OP_ATTACH, OP_SEND, OP_RECV, OP_DETACH, OP_SENDB = b"a", b"s", b"r", b"d", b"b"
#: one frame: SEND_HDR then (length, message)... (a sender's isolated small
#: message: one zmq message part to send, to receive and to hand to
#: Channel._send_framed, where OP_SEND takes two)
OP_SENDF = b"f"
LEN = struct.Struct("<I")                 # OP_SENDB, OP_SENDF: (length, message)...
#: acknowledgements wait until this many messages of a sender are in its
#: channel, or until the agent has had nothing to do for ACK_DELAY s (a
#: round trip needs no acknowledgement of its own; ``flush()`` waits at
#: most that long more)
ACK_EVERY = 128
#: ... or this many bytes (a window of large messages, remote.WINDOW_BYTES =
#: 64 MiB, holds fewer than ACK_EVERY of them: without it, a stream of 1 MiB
#: messages stalled at every window until the agent was idle for ACK_DELAY)
ACK_BYTES = 4 << 20
ACK_DELAY = 0.001
#: zmq's constants as plain ints for the hot paths: pyzmq looks its option
#: argument up in sets, and an IntEnum member's hash is a Python call (half
#: a microsecond per getsockopt on the test machine)
Z_EVENTS, Z_RCVMORE, Z_POLLIN, Z_NOBLOCK = (int(c) for c in (zmq.EVENTS, zmq.RCVMORE,
                                                              zmq.POLLIN, zmq.NOBLOCK))
ATTACH_HDR = struct.Struct("<cQI")        # op, c_uid, req  (+ frame: sdesc)
SEND_HDR = struct.Struct("<cQ")           # op, c_uid       (+ frames: payloads)
RECV_HDR = struct.Struct("<cQId")         # op, c_uid, req, timeout (< 0: none)
#: the direct path (docs/multinode.md; :mod:`.route`, :mod:`.remote`): a
#: receiving process of this node registers its route (REG_HDR + frame: its
#: inbox's address; answered MSG(R_OK) + b"1" granted / b"0" refused); a
#: sender's flush, or the receiver, asks to end it (SEND_HDR)
OP_REGISTER, OP_REVOKE = b"g", b"v"
REG_HDR = struct.Struct("<cQIqII")        # op, c_uid, req, pid, record fd, gate offset
# agent -> client
R_ACK, R_ERR, R_MSG, R_EMPTY, R_OK = b"K", b"E", b"M", b"T", b"A"
#: a route offered (frame: the inbox's address) / ended (frame: TAKEN_ENTRY
#: per sender: what the receiver took; the sender resends the rest here)
R_ROUTE, R_CLOSED = b"O", b"C"
ROUTE = struct.Struct("<cQQ")             # R_ROUTE / R_CLOSED, c_uid, epoch
TAKEN_ENTRY = struct.Struct("<B16sQ")     # sender id length, sender id, last seq taken
#: how long revoking waits for a receiver's take in progress (a few
#: instructions: only a process stopped right there makes it wait)
GATE_WAIT = 1.0
ACK = struct.Struct("<cQI")               # R_ACK, c_uid, count
ERR = struct.Struct("<cQI")               # R_ERR, c_uid, req (0: a send) + frame: [type, text]
MSG = struct.Struct("<cI")                # R_MSG / R_EMPTY / R_OK, req


def mn_env(keys, agents):
    """What every process of a several-node runtime gets in its
    environment: the agents' addresses and the runtime's transport key."""
    return {"EMBER_MN_AGENTS": ";".join(f"{n}={a}" for n, a in sorted(agents.items())),
            "EMBER_MN_KEY": f"{keys[0]},{keys[1]}"}   # (Z85 has ":" but not ",")


class _Inbox:
    """Messages the readers took from local channels, for the loop: a deque
    and an eventfd the loop polls.  A plain descriptor in the poll set costs
    next to nothing, where an inproc zmq socket costs a system call on every
    wake-up of the loop (its events are asked: see :class:`_Poller`) —
    and the loop's wake-ups are the round trip's."""

    def __init__(self):
        self.q = collections.deque()
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def put(self, tag, data):
        self.q.append((tag, data))          # before the wake-up: see take()
        os.eventfd_write(self.fd, 1)

    def take(self):
        """Everything queued (after a wake-up of the fd).  The counter is
        reset before the queue is emptied, so a message put meanwhile either
        is taken now or leaves the fd readable for the next poll."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass
        q = self.q
        while q:
            yield q.popleft()

    # The fd is never closed: a reader blocked in recv() may still put
    # (the process ends right after its agent).


class _Poller:
    """One wait of an agent's loop on its zmq sockets and plain descriptors,
    with fewer system calls than ``zmq_poll``.

    ``zmq_poll`` asks every zmq socket for its events (``ZMQ_EVENTS``: a
    system call each) before it waits, then again after a first poll that
    does not wait, then after the wait: for a node agent's two sockets, six
    system calls around each message of a round trip, on top of the wait
    itself.  Here the zmq sockets wait by their ``ZMQ_FD`` in one
    ``poll()`` with the other descriptors; a socket's events are asked only
    when it was used since they last said "no input" (``stale``): reading
    or sending on a socket may take the notice its descriptor would have
    given (libzmq's rule for ``ZMQ_FD``).  The loop marks a socket
    :meth:`touch`-ed when it sends on it, and :meth:`fresh` when its reading
    ended on "no input" (``zmq.Again``, or ``ZMQ_EVENTS`` without
    ``POLLIN``)."""

    def __init__(self, zsocks, fds):
        self.p = select.poll()
        self.by_fd = {}
        for z in zsocks:
            fd = z.getsockopt(zmq.FD)
            self.p.register(fd, select.POLLIN)
            self.by_fd[fd] = z
        for fd in fds:
            self.p.register(fd, select.POLLIN)
            self.by_fd[fd] = fd
        self.stale = set(zsocks)

    def touch(self, z):
        self.stale.add(z)

    def fresh(self, z):
        self.stale.discard(z)

    def add(self, fd):
        """Watch plain descriptor ``fd`` too (returned by wait when readable)."""
        self.p.register(fd, select.POLLIN)
        self.by_fd[fd] = fd

    def remove(self, fd):
        self.p.unregister(fd)
        self.by_fd.pop(fd, None)

    def wait(self, timeout):
        """The zmq sockets that may have input and the descriptors that are
        readable, after waiting up to ``timeout`` s (whole milliseconds, as
        zmq_poll) if none is at once.  The sockets returned count as used."""
        stale = self.stale
        ready = [z for z in stale if z.getsockopt(Z_EVENTS) & Z_POLLIN] if stale else []
        stale.clear()
        # the descriptors are looked at also when a socket has input (a
        # stream must not starve the rest of the loop)
        for fd, _ in self.p.poll(0 if ready else int(timeout * 1000.0)):
            o = self.by_fd[fd]
            if o not in ready:
                ready.append(o)
        for o in ready:
            if type(o) is not int:
                stale.add(o)
        return ready


class _Reader(threading.Thread):
    """Blocks on a local channel and hands each message to the loop (a
    channel has no descriptor to poll)."""

    def __init__(self, inbox, ch, name, tag):
        super().__init__(name=f"ember-agent-{name}", daemon=True)
        self.inbox = inbox
        self.ch, self.tag = ch, tag
        self.stopped = False

    def run(self):
        ch, put, tag = self.ch, self.inbox.put, self.tag
        try:
            while not self.stopped:
                try:
                    data = ch.recv()
                except ChannelError as exc:
                    if "[EMBER_ERR_CORRUPT]" in str(exc):
                        log.warning("dropped a corrupt message: %s", exc)
                        continue
                    break
                put(tag, data)
        except Exception as exc:     # the process is going away
            log.debug("reader %s ends: %r", self.name, exc)


class DataServer:
    """The data plane of one agent: other nodes' handles on this node's
    channels (see the module docstring)."""

    def __init__(self, sock):
        from ..channels_c import Channel
        self.sock = sock
        self._attach = Channel.attach
        self.chans = {}           # c_uid -> Channel
        self.full = {}            # c_uid -> [ident, [frames...], index] waiting for room
        self.parked = []          # [deadline or None, ident, c_uid, req] waiting receives
        self.acks = {}            # (ident, c_uid) -> messages to acknowledge
        self.ack_due = False      # some sender has ACK_EVERY or more of them
        self.busy_since = None    # since when something waits (full, parked)
        # the direct path (docs/multinode.md, "The direct path")
        self.senders = {}         # c_uid -> {ident} of the remote handles attached
        self.routes = {}          # c_uid -> _Route
        self.by_pidfd = {}        # a route's receiver's pidfd -> c_uid
        self.no_route = set()     # c_uids never routed again (two receivers, a flush)
        self._epochs = itertools.count(1)
        self.poller = None        # the loop's _Poller (a route's pidfd is added to it)

    @property
    def busy(self):
        return bool(self.full or self.parked)

    def wait_limit(self, now):
        """How long the loop may wait before it retries what waits: 0 for
        RETRY_EAGER seconds after something started waiting, then RETRY;
        None when nothing waits."""
        if not (self.full or self.parked):
            self.busy_since = None
            return None
        if self.busy_since is None:
            self.busy_since = now
        return 0.0 if now - self.busy_since < RETRY_EAGER else RETRY

    def pump(self, on_node=None, limit=4096):
        """Handle the messages waiting on the server endpoint (up to
        ``limit``); ``on_node(ident, frames)`` takes those of other nodes'
        agents (identity ``node:<N>``), if given.  True when it stopped
        because no input was left (the socket's events said so last: see
        :class:`_Poller`), False when it stopped at ``limit``.

        This is the agent's hot path (a round trip crosses it twice).  The
        identity and the first frame (a header, or an isolated small
        message: OP_SENDF) are read as bytes (cheaper than a zero-copy
        frame for a few bytes), the frames after it as zero-copy frames
        whose ``more`` says if another follows.  An OP_SENDF (one frame by
        the protocol) goes into the channel before anything else is asked
        of the socket: a ROUTER's message is the identity and at least one
        frame, so nothing needs to be asked before the first frame, and
        whether a malformed OP_SENDF has more frames (dropped) is asked
        after the receiver was woken.  After each message it asks the
        socket once whether another waits (``ZMQ_EVENTS``) instead of
        taking a ``zmq.Again`` exception at the end."""
        sock = self.sock
        recv = sock.recv
        get = sock.getsockopt
        handle, send, unpack = self.handle, self._send, SEND_HDR.unpack_from
        for _ in range(limit):
            try:
                ident = recv(Z_NOBLOCK)
            except zmq.Again:
                return True
            first = recv(0)
            if first[:1] == OP_SENDF and (on_node is None or ident[:5] != b"node:"):
                if TRACE:
                    _trace.stamp("ar")
                try:
                    send(ident, unpack(first)[1], first, SEND_HDR.size)
                except struct.error:
                    self._malformed(ident, first, "shorter than its op's header", None)
                except Exception as exc:
                    log.error("agent: dropped a message: %s: %s", type(exc).__name__, exc)
                if TRACE:
                    _trace.stamp("ac")
                if get(Z_RCVMORE):
                    self._drop_rest(ident)
            else:
                frames = None
                if get(Z_RCVMORE):
                    frames = [first]
                    more = True
                    while more:
                        f = recv(0, False)
                        frames.append(f)
                        more = f.more
                try:
                    if on_node is not None and ident[:5] == b"node:":
                        on_node(ident, frames or [first])
                    else:
                        handle(ident, frames or [first])
                except struct.error:
                    self._malformed(ident, first, "shorter than its op's header", on_node)
                except IndexError:
                    self._malformed(ident, first, "a frame its op needs is missing", on_node)
                except Exception as exc:
                    log.error("agent: dropped a message: %s: %s", type(exc).__name__, exc)
            if not get(Z_EVENTS) & Z_POLLIN:
                return True
        return False

    def _drop_rest(self, ident):
        """The frames after an OP_SENDF's one (a malformed message; its
        first frame was taken)."""
        n = 0
        while self.sock.getsockopt(Z_RCVMORE):
            self.sock.recv(0, False)
            n += 1
        log.warning("data plane: dropped %d frame(s) after a one-frame send from %r", n, ident)

    def handle(self, ident, frames):
        hdr = frames[0]
        if type(hdr) is zmq.Frame:
            hdr = hdr.bytes
        op = hdr[:1]
        if op == OP_SEND:
            _, c_uid = SEND_HDR.unpack(hdr)
            self._send(ident, c_uid, frames, 1)
        elif op == OP_SENDF:             # header and messages in one frame
            _, c_uid = SEND_HDR.unpack_from(hdr)
            self._send(ident, c_uid, hdr, SEND_HDR.size)
        elif op == OP_SENDB:             # a batch of small messages in one frame
            _, c_uid = SEND_HDR.unpack(hdr)
            f = frames[1]
            self._send(ident, c_uid, f.buffer if type(f) is zmq.Frame else memoryview(f), 0)
        elif op == OP_RECV:
            _, c_uid, req, timeout = RECV_HDR.unpack(hdr)
            if c_uid in self.routes:         # a second receiver (remote): the route ends
                self.no_route.add(c_uid)
                self.revoke(c_uid, "a remote handle receives")
            self._recv(ident, c_uid, req, None if timeout < 0 else time.monotonic() + timeout)
        elif op == OP_ATTACH:
            _, c_uid, req = ATTACH_HDR.unpack(hdr)
            sdesc = frames[1].bytes if hasattr(frames[1], "bytes") else frames[1]
            try:
                if c_uid not in self.chans:
                    ch = self._attach(sdesc)
                    if ch.c_uid != c_uid:
                        ch.detach()
                        raise ChannelError(f"descriptor is not that of channel {c_uid}")
                    self.chans[c_uid] = ch
                self.sock.send_multipart([ident, MSG.pack(R_OK, req)])
            except Exception as exc:
                self._error(ident, c_uid, req, exc)
            else:
                self.senders.setdefault(c_uid, set()).add(ident)
                r = self.routes.get(c_uid)
                if r is not None:
                    self.sock.send_multipart([ident, ROUTE.pack(R_ROUTE, c_uid, r.epoch),
                                              r.address])
        elif op == OP_REGISTER:
            _, c_uid, req, pid, fd, off = REG_HDR.unpack(hdr)
            self._register(ident, c_uid, req, pid, fd, off, bytes(frames[1]))
        elif op == OP_REVOKE:
            _, c_uid = SEND_HDR.unpack(hdr)
            if c_uid in self.routes:
                self.no_route.add(c_uid)
                self.revoke(c_uid, "asked (a sender's flush, or the receiver)")
        elif op == OP_DETACH:
            pass      # handles are shared by every client of this agent: kept until exit
        else:
            self._malformed(ident, hdr, "unknown op", None)

    def _malformed(self, ident, hdr, why, on_node):
        """A message whose first frame the data plane cannot read: its
        sender gets an R_ERR (c_uid and req 0: neither could be read) with
        a ValueError naming the op and the frame's length; an other node's
        agent's message is only logged (the control plane has no error
        reply)."""
        op = bytes(hdr[:1])
        exc = ValueError(f"malformed data-plane message: op {op!r}, first frame of "
                         f"{len(hdr)} bytes: {why}")
        if on_node is not None and ident[:5] == b"node:":
            log.error("agent: dropped a message of %r: %s", ident, exc)
        else:
            log.warning("agent: %s", exc)
            self._error(ident, 0, 0, exc)

    def _error(self, ident, c_uid, req, exc):
        self.sock.send_multipart([ident, ERR.pack(R_ERR, c_uid, req),
                                  f"{type(exc).__name__}\0{exc}".encode()])

    def _send(self, ident, c_uid, frames, i):
        """Put a sender's messages in the channel: ``frames`` (a list, from
        index ``i``: one message per frame) or a batch (a buffer of (length,
        message)s, from offset ``i``: sent by one call, Channel._send_framed).
        What finds no room waits in ``full`` (retried, in order)."""
        ch = self.chans.get(c_uid)
        if ch is None:
            self._error(ident, c_uid, 0, ChannelError(f"channel {c_uid} is not attached here"))
            return
        full = self.full.get(c_uid)
        if full is not None:           # keep the order: behind what waits
            full[3].append((ident, frames, i))
            return
        count = nbytes = 0
        try:
            if type(frames) is list:
                n = len(frames)
                send = ch.send
                while i < n:
                    f = frames[i]
                    b = f.buffer if type(f) is zmq.Frame else f
                    send(b, 0)
                    i += 1
                    count += 1
                    nbytes += len(b)
            else:
                n = len(frames)
                i, count, nbytes = ch._send_framed(frames, i)
                if i < n:
                    self.full[c_uid] = [ident, frames, i, []]
        except (ChannelFull, PoolExhausted):   # no room right now: retried
            self.full[c_uid] = [ident, frames, i, []]
        except ValueError as exc:       # a malformed batch: that sender's error, the channel lives on
            self._error(ident, c_uid, 0, exc)
            return
        except Exception as exc:        # destroyed, closed, ...: the sender raises it
            self._error(ident, c_uid, 0, exc)
            self._forget(c_uid, exc)
            return
        if count:
            key = (ident, c_uid)
            a = self.acks.get(key)
            if a is None:
                a = self.acks[key] = [count, nbytes]
            else:
                a[0] += count
                a[1] += nbytes
            if c_uid in self.routes:
                # a route is offered: the sender switches once all it sent
                # here is acknowledged, so acknowledge at once
                del self.acks[key]
                self.sock.send_multipart([ident, ACK.pack(R_ACK, c_uid, a[0])])
            elif a[0] >= ACK_EVERY or a[1] >= ACK_BYTES:
                self.ack_due = True

    # ---- the direct path's routes (docs/multinode.md, "The direct path")
    def _register(self, ident, c_uid, req, pid, fd, off, address):
        """A receiving process of this node asks for channel ``c_uid``'s
        route: granted if no other process has it (a second one ends the
        route for good) and its record can be mapped; then offered to every
        remote sender of the channel."""
        from .direct import TakenRecord
        r = self.routes.get(c_uid)
        granted = None
        if c_uid in self.no_route:
            pass
        elif r is not None:
            if r.pid != pid:
                self.no_route.add(c_uid)
                self.revoke(c_uid, "a second receiving process")
        elif not (TakenRecord.GATE_AT <= off < TakenRecord.SIZE and off % 8 == 0):
            log.warning("direct path: process %d registered a gate at %d", pid, off)
        else:
            pidfd = page = None
            try:
                pidfd = os.pidfd_open(pid)
                page = TakenRecord.open(pid, fd, write=True)
                TakenRecord.read(page)                   # (checks the magic)
                granted = _Route(ident, pid, pidfd, page, off, address, next(self._epochs))
            except (OSError, ChannelError) as exc:
                log.info("direct path: no route for channel %d to process %d: %s", c_uid, pid,
                         exc)
                if page is not None:
                    page.close()
                if pidfd is not None:
                    os.close(pidfd)
        self.sock.send_multipart([ident, MSG.pack(R_OK, req), b"1" if granted else b"0"])
        if granted is None:
            return
        self.routes[c_uid] = granted
        self.by_pidfd[granted.pidfd] = c_uid
        if self.poller is not None:
            self.poller.add(granted.pidfd)
        for s in self.senders.get(c_uid, ()):
            a = self.acks.pop((s, c_uid), None)
            if a is not None:
                self.sock.send_multipart([s, ACK.pack(R_ACK, c_uid, a[0])])
            self.sock.send_multipart([s, ROUTE.pack(R_ROUTE, c_uid, granted.epoch), address])

    def check_receivers(self, events):
        """End the routes whose receiving process ended (a readable pidfd in ``events``)."""
        for o in events:
            if type(o) is int and o in self.by_pidfd:
                self.receiver_ended(o)

    def receiver_ended(self, pidfd):
        """A route's receiving process ended (its pidfd is readable)."""
        c_uid = self.by_pidfd.get(pidfd)
        if c_uid is not None:
            self.revoke(c_uid, "its receiving process ended")

    def revoke(self, c_uid, why):
        """End channel ``c_uid``'s route: close the receiver's take gate (so
        it takes nothing more), read what it took of each sender from its
        record, and tell every sender (R_CLOSED): each resends the rest
        through this agent, in order, and stays on this path."""
        from ..channels_c._channels import _gate_close
        from .direct import TakenRecord
        r = self.routes.pop(c_uid, None)
        if r is None:
            return
        gate = ctypes.addressof(r.gate)
        deadline = time.monotonic() + GATE_WAIT
        while _gate_close(gate) == 1:               # a take in progress
            if select.select([r.pidfd], [], [], 0)[0]:
                break                               # (a dead taker: its record is final)
            if time.monotonic() > deadline:
                log.warning("direct path: channel %d's receiver %d stayed inside a take for "
                            "%g s; its record is read as it is", c_uid, r.pid, GATE_WAIT)
                break
            time.sleep(0.0001)
        taken = TakenRecord.read(r.map, c_uid)
        table = b"".join(TAKEN_ENTRY.pack(len(s), s, q) for s, q in taken.items())
        log.debug("direct path: channel %d's route to %d ends (%s): taken %s", c_uid, r.pid, why,
                  sorted(taken.values()))
        for s in self.senders.get(c_uid, ()):
            self.sock.send_multipart([s, ROUTE.pack(R_CLOSED, c_uid, r.epoch), table])
        self._drop_route(r)

    def _drop_route(self, r):
        self.by_pidfd.pop(r.pidfd, None)
        if self.poller is not None:
            try:
                self.poller.remove(r.pidfd)
            except (KeyError, ValueError):
                pass
        os.close(r.pidfd)
        r.gate = None                 # (a view into the mapping: before it is closed)
        r.map.close()

    def _forget(self, c_uid, exc):
        """A destroyed channel's handle is dropped (a closed one is kept:
        its queued messages can still be received)."""
        if isinstance(exc, ChannelClosed):
            return
        ch = self.chans.pop(c_uid, None)
        if ch is not None:
            try:
                ch.detach()
            except Exception:
                pass

    def _recv(self, ident, c_uid, req, deadline):
        ch = self.chans.get(c_uid)
        if ch is None:
            self._error(ident, c_uid, req, ChannelError(f"channel {c_uid} is not attached here"))
            return
        try:
            data = ch.recv_auto(0)
        except ChannelEmpty:
            if deadline is not None and time.monotonic() >= deadline:
                self.sock.send_multipart([ident, MSG.pack(R_EMPTY, req)])
            else:
                self.parked.append([deadline, ident, c_uid, req])
            return
        except Exception as exc:        # ChannelClosed, destroyed, ...
            self._error(ident, c_uid, req, exc)
            self._forget(c_uid, exc)
            return
        # a large message goes out as a zero-copy frame of its pool block
        self.sock.send_multipart([ident, MSG.pack(R_MSG, req), data], copy=False)

    def retry(self):
        """Retry what waits for room or for a message."""
        for c_uid in list(self.full):
            ident, frames, i, behind = self.full.pop(c_uid)
            self._send(ident, c_uid, frames, i)
            if c_uid in self.full:
                self.full[c_uid][3].extend(behind)
                continue
            while behind:
                ident, frames, i = behind.pop(0)
                self._send(ident, c_uid, frames, i)
                if c_uid in self.full:
                    self.full[c_uid][3].extend(behind)
                    break
        if self.parked:
            parked, self.parked = self.parked, []
            for deadline, ident, c_uid, req in parked:
                self._recv(ident, c_uid, req, deadline)

    def poll(self, poller, next_beat):
        """One wait of an agent's loop (:class:`_Poller`) until the loop's
        next heartbeat (``next_beat``, monotonic), less while something
        waits to be retried (:meth:`wait_limit`) or acknowledgements are
        held (ACK_DELAY); on a quiet wake-up the held acknowledgements go
        out.  Returns the sockets/descriptors with input (the caller reads
        the clock again afterwards: the wait may have been long)."""
        now = time.monotonic()
        timeout = next_beat - now
        if self.full or self.parked:
            limit = self.wait_limit(now)
            if limit < timeout:
                timeout = limit
        else:
            self.busy_since = None
        if self.acks and ACK_DELAY < timeout:
            timeout = ACK_DELAY
        if TRACE:
            _trace.stamp("ap")
        events = poller.wait(timeout if timeout > 0.0 else 0.0)
        if TRACE:
            _trace.stamp("aw")
        if not events and self.flush_acks():
            poller.touch(self.sock)
        return events

    def flush_acks(self, force=True):
        """Acknowledge what is in the channels: everything (``force``), or
        only senders with ACK_EVERY messages or ACK_BYTES bytes or more to
        acknowledge.  True if something was sent."""
        if not (self.acks and (force or self.ack_due)):
            return False
        self.ack_due = False
        send = self.sock.send_multipart
        if force:
            acks, self.acks = self.acks, {}
            for (ident, c_uid), a in acks.items():
                send([ident, ACK.pack(R_ACK, c_uid, a[0])])
            return True
        for key, a in list(self.acks.items()):
            if a[0] >= ACK_EVERY or a[1] >= ACK_BYTES:
                del self.acks[key]
                send([key[0], ACK.pack(R_ACK, key[1], a[0])])
        return True

    def close(self):
        for r in list(self.routes.values()):
            self._drop_route(r)
        self.routes.clear()
        for ch in self.chans.values():
            try:
                ch.detach()
            except Exception:
                pass
        self.chans.clear()


class _Route:
    """A channel's route to one receiving process of this node."""

    def __init__(self, ident, pid, pidfd, page, off, address, epoch):
        self.ident, self.pid, self.pidfd, self.map = ident, pid, pidfd, page
        self.gate = ctypes.c_uint64.from_buffer(page, off)
        self.address, self.epoch = address, epoch


def _route_ip(host):
    """This host's address on the route to ``host`` (no packet is sent)."""
    import socket
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())


class HeadAgent:
    """The head agent (see the module docstring)."""

    def __init__(self, backend, keys, *, to_agent, gs_ctl, gs_in, ready_fd=None,
                 bind="tcp://*:0"):
        self.backend = backend
        self.keys = keys
        self.ep, bound = backend.server(bind, keys)
        self.sock = self.ep.sock
        self.port = int(bound.rsplit(":", 1)[1])
        self.gs_ctl, self.gs_in = gs_ctl, gs_in
        self.inbox = _Inbox()
        self.reader = _Reader(self.inbox, to_agent, "gs", b"G")
        self.data = DataServer(self.sock)
        self.nodes = {}           # node -> {"ident", "last", "host"}
        self.ready_fd = ready_fd
        self.stopping = False

    def _to_gs(self, msg):
        self.gs_ctl.send(msg.pack())
        self.gs_in.send(m.POKE)

    def _ready(self, line):
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, (line + "\n").encode())
            except OSError:
                pass

    def _lost(self, node, why):
        info = self.nodes.pop(node, None)
        if info is None:
            return
        log.warning("node %d lost: %s", node, why)
        self._to_gs(m.MnNodeLost(node, why))
        self._ready(f"lost {node} {why}")

    def _from_node(self, ident, frames):
        try:
            node = int(ident[5:])
        except ValueError:
            return
        kind = frames[0]
        if type(kind) is not bytes:
            kind = kind.bytes
        info = self.nodes.get(node)
        if kind == HELLO:
            if info is not None:
                return
            import msgpack
            hello = msgpack.unpackb(frames[1].bytes, raw=False)
            self.nodes[node] = {"ident": ident, "last": time.monotonic(),
                                "host": hello.get("host")}
            self._to_gs(m.MnNodeUp(node, hello))
            self._ready(f"up {node} {hello.get('agent')}")
            return
        if info is None:
            return            # lost, or not said hello: ignored
        info["last"] = time.monotonic()
        if kind == FROM_SH:
            self._to_gs(m.MnFrom(node, True, frames[1].bytes))
        elif kind == REQ:
            self._to_gs(m.MnFrom(node, False, frames[1].bytes))
        elif kind == LOSS:
            self._lost(node, frames[1].bytes.decode(errors="replace"))
        elif kind == BYE:
            self.nodes.pop(node, None)
            self._ready(f"bye {node}")

    def _from_gs(self, data):
        msg = m.unpack(data)
        info = self.nodes.get(msg.node)
        if info is None:
            return
        ident = info["ident"]
        if msg.kind == m.MN_SH:
            self.sock.send_multipart([ident, TO_SH, msg.data])
        elif msg.kind == m.MN_REPLY:
            self.sock.send_multipart([ident, REPLY, msg.r, msg.data])
        elif msg.kind == m.MN_FREE:
            self.sock.send_multipart([ident, FREE, msg.r])

    def serve(self):
        self.reader.start()
        sock, inbox, data = self.sock, self.inbox, self.data
        efd = inbox.fd
        poller = _Poller([sock], [efd])
        data.poller = poller
        from_node = self._from_node
        next_beat = time.monotonic() + HEARTBEAT
        while not self.stopping:
            events = data.poll(poller, next_beat)
            if sock in events and data.pump(from_node):
                poller.fresh(sock)
            if efd in events:
                for tag, payload in inbox.take():
                    self._from_gs(payload)
                poller.touch(sock)
            if data.by_pidfd:
                data.check_receivers(events)
                poller.touch(sock)
            if data.busy:
                data.retry()
                poller.touch(sock)
            if data.flush_acks(force=False):
                poller.touch(sock)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + HEARTBEAT
                poller.touch(sock)
                for node, info in list(self.nodes.items()):
                    if now - info["last"] > LOST_AFTER:
                        self._lost(node, f"no heartbeat for {LOST_AFTER:g} s")
                    else:
                        sock.send_multipart([info["ident"], BEAT])


class NodeAgent:
    """A node's agent (see the module docstring).  ``shepherd_pid``: its
    shepherd (a child of this process): when it ends, so does the node."""

    def __init__(self, backend, keys, *, node, head, to_sh, sh_out, gs_proxy, hello,
                 shepherd_pid, attach):
        self.backend = backend
        self.node = node
        self.ep, bound = backend.server("tcp://*:0", keys)
        self.sock = self.ep.sock
        host = head.split("//", 1)[1].rsplit(":", 1)[0]
        self.address = f"tcp://{_route_ip(host)}:{bound.rsplit(':', 1)[1]}"
        self.head = backend.client(head, keys, identity=f"node:{node}".encode()).sock
        self.to_sh = to_sh
        self.inbox = _Inbox()
        self.readers = [_Reader(self.inbox, sh_out, "sh", FROM_SH),
                        _Reader(self.inbox, gs_proxy, "req", REQ)]
        self.hello = dict(hello, agent=self.address)
        self.shepherd_pid = shepherd_pid
        self.data = DataServer(self.sock)
        self._attach = attach
        self.replies = {}         # reply-channel descriptor -> Channel
        self.end = None           # why the node ended

    def _reply(self, r, payload):
        ch = self.replies.get(r)
        try:
            if ch is None:
                ch = self.replies[r] = self._attach(r)
            ch.send(payload, 0)
        except Exception as exc:
            log.info("reply dropped: %s", exc)

    def _free(self, r):
        ch = self.replies.pop(r, None)
        try:
            if ch is None:
                ch = self._attach(r)
            ch.destroy()
        except Exception as exc:
            log.debug("freeing a reply channel: %s", exc)

    def _shepherd_exited(self):
        try:
            pid, status = os.waitpid(self.shepherd_pid, os.WNOHANG)
        except ChildProcessError:
            return 255
        if not pid:
            return None
        return os.waitstatus_to_exitcode(status)

    def serve(self):
        import msgpack
        head, sock, data = self.head, self.sock, self.data
        head.send_multipart([HELLO, msgpack.packb(self.hello, use_bin_type=True)])
        for r in self.readers:
            r.start()
        pidfd = os.pidfd_open(self.shepherd_pid)     # readable when the shepherd ends
        try:
            return self._loop(pidfd)
        finally:
            os.close(pidfd)

    def _loop(self, pidfd):
        head, sock, data, inbox = self.head, self.sock, self.data, self.inbox
        efd = inbox.fd
        poller = _Poller([sock, head], [pidfd, efd])
        data.poller = poller
        last_head = time.monotonic()
        next_beat = last_head + HEARTBEAT
        while True:
            events = data.poll(poller, next_beat)
            if head in events:
                last_head = time.monotonic()
                while True:
                    try:
                        frames = head.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        poller.fresh(head)
                        break
                    kind = frames[0]
                    if kind == TO_SH:
                        self.to_sh.send(frames[1])
                    elif kind == REPLY:
                        self._reply(frames[1], frames[2])
                    elif kind == FREE:
                        self._free(frames[1])
            if sock in events and data.pump():
                poller.fresh(sock)
            if efd in events:
                for tag, payload in inbox.take():
                    head.send_multipart([tag, payload])
                poller.touch(head)
            if data.by_pidfd:
                data.check_receivers(events)
                poller.touch(sock)
            if data.busy:
                data.retry()
                poller.touch(sock)
            if data.flush_acks(force=False):
                poller.touch(sock)
            now = time.monotonic()
            if now >= next_beat or pidfd in events:
                next_beat = now + HEARTBEAT
                poller.touch(head)
                head.send_multipart([BEAT])
                code = self._shepherd_exited()
                if code is not None:
                    self._drain_readers()
                    if code == 0:
                        head.send_multipart([BYE])
                        self.end = "shutdown"
                    else:
                        why = f"its shepherd died (exit code {code})"
                        head.send_multipart([LOSS, why.encode()])
                        self.end = why
                    return self.end
                if now - last_head > LOST_AFTER:
                    self.end = f"the head was silent for {LOST_AFTER:g} s"
                    return self.end

    def _drain_readers(self):
        """The shepherd ended: forward what it said last (its
        ``ShShutdownDone``) before saying goodbye: until the readers' channels
        are empty and nothing more came for a moment (at most 0.5 s)."""
        import select
        deadline = time.monotonic() + 0.5
        inbox = self.inbox
        while time.monotonic() < deadline:
            got = False
            for tag, payload in inbox.take():
                self.head.send_multipart([tag, payload])
                got = True
            if not got and not any(len(r.ch) for r in self.readers):
                # a reader may hold a message it has not put yet
                if not select.select([inbox.fd], [], [], 0.002)[0]:
                    break

    def close(self):
        """Detach the node's handles and close the endpoints; what is queued
        for the head (a last goodbye) gets up to a second to go out."""
        for ch in self.replies.values():
            try:
                ch.detach()
            except Exception:
                pass
        self.replies.clear()
        self.data.close()
        for r in self.readers:
            r.stopped = True
        self.sock.close(linger=0)
        self.head.close(linger=1000)
        self.backend.ctx.term()
