"""Building blocks of the direct path between nodes (docs/multinode.md, "The
direct path"): a receiving process's own endpoint, and a receive that waits
on a local channel and on that endpoint at once.

Today a message from another node reaches its channel through the
channel's node agent (:mod:`.agent`): the agent's zmq I/O thread, the
agent, then the receiver's futex wake-up: per direction one wake-up more
than raw zmq, whose receiver is woken by its own zmq I/O thread.  On the
direct path a remote sender sends to the receiving process's own endpoint
(an :class:`Inbox`), and the receiver waits on that endpoint (its
channel's arrivals wake the same wait), so the network wakes it once.

Here, each tested (tests/test_multinode_direct.py):

- :class:`Inbox`: a CURVE server endpoint of this process (the runtime's
  key pair, the same ZAP check as an agent's endpoint), with its address
  on this node;
- :meth:`Inbox.recv`: the next message of a local channel, from the
  channel or from the inbox, waiting on both (the channel by a
  :class:`~ember.channels_c.watch.ChannelWatch` whose thread notifies the
  inbox's socket: :meth:`Inbox.watch`).  A message from the
  inbox is taken only when the channel is empty after it was read: a
  sender switches to the inbox only once everything it sent through the
  agent is acknowledged (in the channel), so what the channel holds of a
  sender is older than what came to the inbox; each sender's messages stay
  in order (checked by their sequence numbers);
- :class:`DirectSender`: a connection to an inbox, through this
  process's own inbox (:func:`own_inbox`: one socket per process for its
  direct receives and sends, one connection per pair of processes used
  both ways, so that a round trip's TCP acknowledgements ride on its
  answers); each message one frame with its channel and its sequence
  number (per sender and channel), kept until the inbox acknowledges it
  (every 128 takes or 4 MiB, or when the sender asks; back on the same
  connection);
- :class:`TakenRecord`: what an inbox took, per sender and channel, in a
  page the node's agent can map and read after the receiver died.

The protocol around them (registration with the node's agent, the
senders' switch, the route's end and the resend through the agent) is in
:mod:`.route` (receiving side), :mod:`.agent` (``DataServer``'s routes) and
:mod:`.remote` (sending side); docs/multinode.md, "The direct path".
"""
import collections
import errno
import math
import os
import struct
import threading
import time

import zmq

from .. import _log
from ..channels_c._channels import DirectOut, DirectStream, _zd_init, _zd_recv, _zd_records
from ..exceptions import ChannelEmpty, ChannelError, ChannelFull
from . import _trace, remote
from .agent import Z_EVENTS, Z_NOBLOCK, Z_POLLIN, Z_RCVMORE

# the backend socket's methods, called directly on the hot path: pyzmq's
# Socket.send is a Python method around them (1.8 against 0.5 us a call
# here, warm), and its getsockopt maps the option first (1.9 against 1.4)
_zsend = zmq.backend.Socket.send
_zrecv = zmq.backend.Socket.recv
_zget = zmq.backend.Socket.get

log = _log.get("direct")
TRACE = _trace.ON

__all__ = ["Inbox", "DirectSender", "TakenRecord", "OP_DIRECT", "DIRECT_HDR", "OP_BATCH",
           "OP_TAKEN", "TAKEN_HDR"]

#: a direct message: one frame, this header then the message
OP_DIRECT = b"D"
DIRECT_HDR = struct.Struct("<cQQ")            # op, c_uid, seq (per sender and channel, from 1)
#: a batch of direct messages: one frame, DIRECT_HDR with this op and the
#: first message's seq, then each message as its length (BATCH_LEN) and its
#: bytes; the messages are seq, seq + 1, ...
OP_BATCH = b"B"
BATCH_LEN = struct.Struct("<I")
#: a message of at most BATCH_MAX bytes sent within STREAMING seconds of the
#: end of the send before joins a batch of up to BATCH messages or
#: BATCH_BYTES bytes (as the agent's path batches: remote.BATCH), sent when
#: it is full, before the next message that does not join it, when the
#: sender waits for acknowledgements, or FLUSH_AFTER seconds after it began
#: (the inbox's flusher thread: a stream's last messages); any other message
#: goes at once, alone.  STREAMING is well below a round trip between two
#: processes over TCP (some 20 us at the least on this machine's loopback,
#: 50 us between its emulated nodes, each in the VM's fast state; 20 us let
#: a round trip's message join a batch now and then: measured), so a round
#: trip's messages, whose sender waits for each answer between two sends,
#: never join a batch, and above a sending loop's own time between two
#: sends (about 1 us)
BATCH = 256
BATCH_BYTES = 64 << 10
BATCH_MAX = 8192
STREAMING = 0.000005
FLUSH_AFTER = 0.0002
#: the inbox's acknowledgement, back on the same connection: "taken up to seq"
OP_TAKEN = b"k"
TAKEN_HDR = struct.Struct("<cQQ")             # op, c_uid, seq
#: a watch's notice to its inbox (over inproc): "the channel has a message"
OP_WAKE = b"w"
#: a sender's request: "acknowledge what you took of mine" (its window is
#: full, or it waits until all was taken); answered when the inbox reads it
OP_ACKREQ = b"q"
#: an inbox acknowledges a sender every ACK_EVERY takes or ACK_BYTES bytes,
#: and when the sender asks (OP_ACKREQ): no send per receive, and no timer
#: in the receive's wait (a wait with a timeout cost a round trip 60-100 us
#: in this VM's slow state, measured: docs/multinode.md)
ACK_EVERY = 128
ACK_BYTES = 4 << 20
#: a sender keeps at most WINDOW unacknowledged messages (WINDOW_BYTES
#: bytes) per channel (its back-pressure), and reads the acknowledgements
#: every DRAIN_AFTER sends
WINDOW = 8192
WINDOW_BYTES = 64 << 20
DRAIN_AFTER = 128

_backend = None
_backend_pid = None
_zd = None


def _zd_ready():
    """The inbox's receive in one C call (channels_c/_zdirect.pxi) can be
    used: the libzmq that pyzmq loaded gave its functions."""
    global _zd
    if _zd is None:
        try:
            from zmq.backend.cython import _zmq
            _zd = bool(_zd_init(_zmq.__file__))
        except (ImportError, AttributeError, OSError):   # another backend (cffi)
            _zd = False
        if not _zd:
            log.info("direct path: the inbox reads in Python (no libzmq functions found)")
    return _zd


def _server_backend():
    """The backend of this process's inboxes, on its transport context (one
    zmq I/O thread with its remote handles; one ZAP handler)."""
    global _backend, _backend_pid
    if _backend is None or _backend_pid != os.getpid():
        from .zmq_backend import ZmqBackend
        _backend, _backend_pid = ZmqBackend(ctx=remote.context()), os.getpid()
    return _backend


def _node_host():
    """This node's address (its agent's host)."""
    from .. import _env
    addr = remote._agents().get(int(_env.get(_env.NODE, "0") or 0))
    if addr is None:
        raise ChannelError("this process knows no agent of its node: it is not a managed "
                           "process of a runtime that spans several nodes")
    return addr.split("//", 1)[1].rsplit(":", 1)[0]


class TakenRecord:
    """The last sequence number an inbox took per (sender, channel), in a
    page of a memfd that another process of the node (the agent) maps while
    this one lives and reads after it died (part 3 of the protocol:
    docs/multinode.md, "The direct path").

    A take is one aligned 8-byte store into the page (no system call); a
    slot's channel and sender are written before its first store, so a
    process killed at any point leaves every slot either unused (channel 0)
    or naming what it took up to its last store.  :data:`SLOTS` pairs at
    most (the route would refuse more senders)."""

    MAGIC = 0x454D4245524B4E31            # "EMBERKN1"
    HEAD = 64
    SLOT = struct.Struct("<QQ16sQ")       # c_uid, sender length, sender, seq
    SLOTS = 128
    STRIDE = 48                           # a slot's bytes (SLOT's 40, 8-aligned cell)
    #: take gates (channels_c._gate_take): one 8-byte word per routed channel
    GATES = 64
    GATE_AT = HEAD + SLOTS * STRIDE
    SIZE = GATE_AT + GATES * 8

    def __init__(self):
        import mmap
        self.fd = os.memfd_create("ember-taken", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, self.SIZE)
        self.map = mmap.mmap(self.fd, self.SIZE)
        struct.pack_into("<Q", self.map, 0, self.MAGIC)
        self.used = 0
        self.gates = 0

    def gate(self):
        """A new take gate: (its offset in the page, its address)."""
        import ctypes
        if self.gates >= self.GATES:
            raise ChannelError(f"inbox: more than {self.GATES} routed channels")
        off = self.GATE_AT + 8 * self.gates
        self.gates += 1
        return off, ctypes.addressof(ctypes.c_uint64.from_buffer(self.map, off))

    def cell(self, sender, c_uid):
        """The 8-byte cell of (sender, c_uid)'s sequence number, in a new
        slot (ChannelError when none is left)."""
        import ctypes
        if self.used >= self.SLOTS:
            raise ChannelError(f"inbox: more than {self.SLOTS} (sender, channel) pairs")
        if not 0 < len(sender) <= 16:
            raise ChannelError(f"inbox: a sender id of {len(sender)} bytes")
        off = self.HEAD + self.used * self.STRIDE
        self.used += 1
        # the slot's names first, c_uid last (a reader skips c_uid 0), then the cell
        struct.pack_into("<Q16s", self.map, off + 8, len(sender), sender)
        struct.pack_into("<Q", self.map, off, c_uid)
        return ctypes.c_uint64.from_buffer(self.map, off + 32)

    @classmethod
    def read(cls, buf, c_uid=None):
        """{(sender, c_uid): last seq taken} of a record's page (of channel
        ``c_uid`` only, if given: then {sender: seq})."""
        if c_uid is not None:
            return {k[0]: v for k, v in cls.read(buf).items() if k[1] == c_uid}
        if len(buf) < cls.SIZE or struct.unpack_from("<Q", buf, 0)[0] != cls.MAGIC:
            raise ChannelError("not an inbox's taken record")
        out = {}
        for i in range(cls.SLOTS):
            c_uid, n, sender, seq = cls.SLOT.unpack_from(buf, cls.HEAD + i * cls.STRIDE)
            if c_uid:
                out[(sender[:n], c_uid)] = seq
        return out

    @classmethod
    def open(cls, pid, fd, write=False):
        """A mapping of process ``pid``'s record ``fd`` (this node, while it
        lives; readable after it ended): read-only, or read-write (``write``:
        the agent closes gates in it)."""
        import mmap
        f = os.open(f"/proc/{pid}/fd/{fd}", (os.O_RDWR if write else os.O_RDONLY) | os.O_CLOEXEC)
        try:
            if os.fstat(f).st_size < cls.SIZE:
                raise ChannelError(f"process {pid}'s fd {fd} is not an inbox's taken record")
            return mmap.mmap(f, cls.SIZE, prot=mmap.PROT_READ | (mmap.PROT_WRITE if write else 0))
        finally:
            os.close(f)

    def close(self):
        self.map.close()
        os.close(self.fd)


class Inbox:
    """This process's own endpoint for direct messages (see the module
    docstring).  ``address`` is what a :class:`DirectSender` connects to;
    ``port``: the TCP port it binds on all addresses (0: a free one).

    A receive blocks in the socket's own receive (libzmq's wait, without
    the GIL), as raw zmq's receiver does: the message is read in the
    thread that called ``recv``, by one call, with no ``ZMQ_FD``/
    ``ZMQ_EVENTS`` round of our own (measured, that round and the Python
    around it cost 25-30 us a message in this VM: docs/multinode.md).  A
    local channel's arrivals wake it through the same socket: its watch
    (:meth:`watch`) sends a one-frame notice to the inbox over ``inproc``."""

    def __init__(self, port=0):
        backend = _server_backend()
        ep, bound = backend.server(f"tcp://*:{int(port)}", remote._keys())
        self.sock = ep.sock
        # this inbox's routing id on the connections it makes (a sender's:
        # DirectSender); a peer that connected to it is named by the peer's
        # own (see DirectSender)
        self.rid = b"a" + os.urandom(15)
        self.sock.routing_id = self.rid
        # a send to a peer that is not connected fails (EHOSTUNREACH)
        # instead of dropping the message unseen
        self.sock.router_mandatory = True
        # a peer's new connection under a routing id an old one of it still
        # holds here (it reconnected; or it connected afresh after its
        # stale connection: DirectSender) takes the id over instead of
        # being refused
        self.sock.router_handover = True
        #: what a DirectSender connects to: the endpoint, then "#" and the
        #: routing id in hex
        self.address = f"tcp://{_node_host()}:{bound.rsplit(':', 1)[1]}#{self.rid.hex()}"
        # the watches' notices come in over inproc (same socket, no CURVE:
        # inproc never leaves the process)
        self._wake_addr = f"inproc://ember-inbox-{os.getpid()}-{id(self):x}"
        self.sock.bind(self._wake_addr)
        self._ctx = backend.ctx
        # the socket has one user at a time (zmq's rule): the thread that
        # holds `lock`.  A receive holds it while it waits in the socket; a
        # thread that wants to send meanwhile counts itself in `wanted`,
        # pokes the socket (a notice over inproc) and waits for the lock,
        # which the receive hands over (_yield) before it waits again
        self.lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self.wanted = 0
        self._poke = self._ctx.socket(zmq.DEALER)
        self._poke.linger = 0
        self._poke.connect(self._wake_addr)
        self._poke_lock = threading.Lock()
        self.peers = {}           # address -> (peer's routing id here, our id there)
        self.at = {}              # endpoint -> the address of the inbox last known there
        self.senders = {}         # peer's routing id here -> its DirectSender
        self._client = False      # the socket's connects are CURVE clients (set once)
        # the socket's address for the one-call receive (0: read in Python;
        # 0 after close: the socket is gone)
        self._handle = self.sock.underlying if _zd_ready() else 0
        self._closed = False
        self._rcvtimeo = -1       # the socket's receive timeout now (ms; -1: none)
        self._watches = {}        # ChannelWatch -> its notice socket
        self.held = {}            # c_uid -> deque of (sender, seq, frame): read, not taken
        self.record = TakenRecord()
        self._cells = {}          # (sender, c_uid) -> its cell in the record (ctypes)
        # (sender, c_uid) -> its DirectStream: the cell's and the gate's
        # addresses, the last seq taken and acknowledged, the bytes since
        self._streams = {}
        self._hot = {}            # c_uid -> the stream of its last take (the C call's guess)
        self.gates = {}           # c_uid -> its take gate's address (a routed channel: set_gate)
        self.closed = set()       # c_uids whose gate the agent closed: no more takes
        self._flush_wake = threading.Event()      # a sender's batch began (flush_soon)
        self._flusher = None
        # a batch of a sender through this inbox may wait for the flusher:
        # a receive that is about to wait sends it first (flush_batches)
        self.batching = False

    @property
    def taken(self):
        """{(sender, c_uid): the last sequence number taken}."""
        return {k: c.value for k, c in self._cells.items()}

    def grab(self):
        """Take the socket (its one user; see __init__): at once if it is
        free, else by poking the thread that waits in it."""
        if self.lock.acquire(False):
            return
        with self._cv:
            self.wanted += 1
        try:
            with self._poke_lock:
                if self._poke is not None:
                    try:
                        _zsend(self._poke, OP_WAKE, Z_NOBLOCK)
                    except zmq.ZMQError:    # full (notices are waiting): no loss
                        pass
            self.lock.acquire()
        finally:
            with self._cv:
                self.wanted -= 1
                if not self.wanted:
                    self._cv.notify_all()

    def flush_soon(self):
        """A batch of a sender through this inbox began (DirectOut.wake):
        the flusher sends it FLUSH_AFTER seconds later, if it is still
        being filled then, or a receive of this process that is about to
        wait sends it before (:meth:`flush_batches`): a round trip's
        message taken for a stream's (its sender preempted between its
        send and the answer) waits for nothing."""
        self.batching = True
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_later, daemon=True,
                                             name="ember-direct-flush")
            self._flusher.start()
        self._flush_wake.set()

    def flush_batches(self):
        """Send every sender's batch being filled (the caller holds the
        socket)."""
        ok = True
        for ds in list(self.senders.values()):
            ok = ds.flush_batches() and ok
        if ok:
            self.batching = False

    def _flush_later(self):
        wake = self._flush_wake
        while True:
            wake.wait()
            wake.clear()
            time.sleep(FLUSH_AFTER)
            if self._closed:
                return
            self.grab()
            try:
                self.flush_batches()
            except Exception as exc:          # the socket closed: the process ends
                log.debug("direct path: the flusher ends: %r", exc)
                return
            finally:
                self.lock.release()

    def _yield(self):
        """A receive (holding the socket) lets the threads that want it
        have it, then takes it again."""
        self.lock.release()
        with self._cv:
            self._cv.wait_for(lambda: not self.wanted, 1.0)
        self.lock.acquire()

    def serve_pending(self):
        """Read and serve what the socket holds, without waiting (its
        holder: a sender reading its acknowledgements)."""
        sock = self.sock
        while True:
            try:
                sender = _zrecv(sock, Z_NOBLOCK)
            except zmq.Again:
                return
            try:
                frame = _zrecv(sock, Z_NOBLOCK)
            except zmq.Again:
                frame = b""
            self._serve(sender, frame, _zget(sock, Z_RCVMORE))

    def connect(self, endpoint, alias):
        """Connect the socket (held) to another inbox at ``endpoint``; its
        messages come from, and go to, routing id ``alias``."""
        if not self._client:
            # from here on the socket's connects are CURVE clients (its
            # listener keeps the server's options of its bind)
            self.sock.curve_serverkey = remote._keys()[0].encode()
            self._client = True
        self.sock.connect_routing_id = alias
        self.sock.connect(endpoint)

    def watch(self, ch):
        """A :class:`~ember.channels_c.watch.ChannelWatch` of local channel
        ``ch`` that wakes this inbox's receive (what :meth:`recv` needs);
        :meth:`unwatch` ends it."""
        from ..channels_c.watch import ChannelWatch
        s = self._ctx.socket(zmq.DEALER)
        s.linger = 0
        s.connect(self._wake_addr)

        def notify():             # (the watch's thread: the only user of s)
            try:
                _zsend(s, OP_WAKE, Z_NOBLOCK)
            except zmq.ZMQError:  # full (notices are waiting) or closing: no loss
                pass
        w = ChannelWatch(ch, notify=notify)
        self._watches[w] = s
        return w

    def _recv_one(self):
        """Read one message from the socket (waiting up to its receive
        timeout) into ``held``, or serve it (an acknowledgement request, a
        watch's notice); False if none came."""
        sock = self.sock
        try:
            sender = _zrecv(sock, 0)
        except zmq.Again:
            return False
        try:
            frame = _zrecv(sock, Z_NOBLOCK)     # (a message's parts come together)
        except zmq.Again:
            frame = b""
        self._serve(sender, frame, _zget(sock, Z_RCVMORE))
        return True

    def _serve(self, sender, frame, more):
        """Serve a message read (its sender, its first frame; ``more``:
        frames follow, unread): hold a direct message, answer a request."""
        if more:
            extra = 0
            while _zget(self.sock, Z_RCVMORE):
                _zrecv(self.sock, 0)
                extra += 1
            frame = b"?%d more frames" % extra
        op = frame[:1]
        if (op == OP_DIRECT or op == OP_BATCH) and len(frame) >= DIRECT_HDR.size:
            _, c_uid, seq = DIRECT_HDR.unpack_from(frame)
            if op == OP_BATCH:
                msgs = _zd_records(frame)
                if msgs is None:
                    log.warning("inbox: dropped a malformed batch from %r (%r...)", sender,
                                frame[:32])
                    return
            if c_uid in self.closed:
                return                      # its route was revoked: the sender resends
            q = self.held.get(c_uid)
            if q is None:
                q = self.held[c_uid] = collections.deque()
            if op == OP_DIRECT:
                q.append((sender, seq, frame))
            else:
                q.extend(self._frames(sender, c_uid, seq, msgs))
        elif frame == OP_WAKE:
            pass                            # a notice (a watch's, a poke): the caller looks again
        elif frame == OP_ACKREQ:
            self.ack(sender)
        elif frame[:1] == OP_TAKEN and len(frame) == TAKEN_HDR.size:
            ds = self.senders.get(sender)   # what a peer took of ours
            if ds is not None:
                _, c_uid, seq = TAKEN_HDR.unpack(frame)
                ds._acked(c_uid, seq)
            else:
                log.debug("inbox: an acknowledgement from an unknown peer %r", sender)
        else:
            log.warning("inbox: dropped a malformed message from %r (%r...)", sender, frame[:16])

    @staticmethod
    def _frames(sender, c_uid, seq, msgs):
        """Batch messages ``msgs`` (from ``seq`` on) as held entries."""
        pack = DIRECT_HDR.pack
        return [(sender, seq + i, pack(OP_DIRECT, c_uid, seq + i) + m)
                for i, m in enumerate(msgs)]

    def _spill(self, c_uid):
        """What channel ``c_uid``'s last stream holds of a batch (the one
        call took its first message) goes to the front of ``held``: older
        than anything held of that sender (it was read after)."""
        s = self._hot.get(c_uid)
        if s is not None and s.holds:
            rest = s.spill()
            q = self.held.get(c_uid)
            if q is None:
                q = self.held[c_uid] = collections.deque()
            q.extendleft(reversed(self._frames(s.sender, c_uid, rest[0][0],
                                               [m for _, m in rest])))

    def recv(self, ch, watch, timeout=None):
        """The next message of local channel ``ch`` (watched by ``watch``,
        made by :meth:`watch`): from the channel, or else from this inbox;
        waits on both at once (up to ``timeout`` s; None: no limit;
        ChannelEmpty after it)."""
        if watch.channel is not ch or watch not in self._watches:
            raise ValueError("watch must be this inbox's watch of ch (Inbox.watch)")
        if watch._stop:
            raise ValueError("the watch was closed: end it with Inbox.unwatch, and make "
                             "another with Inbox.watch to receive")
        if self._closed:
            raise ChannelError("inbox: closed")
        lock = self.lock
        if not lock.acquire(False):
            self.grab()                     # (a sending thread holds the socket)
        try:
            c_uid = ch.c_uid
            poll, take, held = ch.poll, ch._recv_local, self.held
            handle, hot = self._handle, self._hot
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                while self.wanted:          # (taken back, another may still want it)
                    self._yield()
                # the channel first (see the module docstring); poll(0) is a
                # flag test, where an empty recv_nowait raises
                if poll(0):
                    try:
                        return take(0)
                    except ChannelEmpty:        # another receiver took it
                        pass
                self._spill(c_uid)
                q = held.get(c_uid)
                if q:
                    got = self._take(c_uid, q)
                    if got is not None:
                        return got
                    continue
                watch.rearm()
                ms = -1 if deadline is None else \
                    min(max(0, math.ceil((deadline - time.monotonic()) * 1000.0)), 1 << 30)
                if ms != self._rcvtimeo:
                    self.sock.rcvtimeo = self._rcvtimeo = ms
                if self.batching:
                    self.flush_batches()        # (before a wait: see flush_soon)
                if handle:
                    # one C call: read, and take if it is the next message of
                    # the channel's last stream (the channel empty, the gate open)
                    s = hot.get(c_uid)
                    got = _zd_recv(ch, handle, s, 0)
                    if TRACE:
                        _trace.stamp("i1")      # the message read (and taken)
                    if got.__class__ is bytes:
                        if s.ack_due:
                            self._ack(s)
                        return got
                    if got is not None:
                        self._serve(*got)
                        continue
                elif self._recv_one():
                    continue
                if deadline is not None and time.monotonic() >= deadline:
                    raise ChannelEmpty(f"channel c_uid {c_uid}: no message within {timeout} s "
                                       f"(channel or inbox)")
        finally:
            lock.release()

    def _take(self, c_uid, q):
        """Take the first message of ``q`` (a channel's held deque); None
        if it was a duplicate (dropped).  A gap in a sender's sequence
        raises ChannelError and leaves the message where it is."""
        sender, seq, frame = q[0]
        key = (sender, c_uid)
        st = self._streams.get(key)
        if st is None:
            import ctypes
            cell = self.record.cell(sender, c_uid)
            st = DirectStream(sender, c_uid, ctypes.addressof(cell), self.gates.get(c_uid, 0),
                              ACK_EVERY, ACK_BYTES)
            self._cells[key] = cell
            self._streams[key] = st
        last = st.last
        if seq != last + 1:
            if seq <= last:
                q.popleft()           # taken before (a resend): nothing to return
                return None
            raise ChannelError(f"inbox: message {seq} of a sender on channel {c_uid} after "
                               f"{last}: the sender's sequence broke")
        if not st.take(seq, len(frame) - DIRECT_HDR.size):
            self.close_route(c_uid)   # the agent revoked the route: the senders resend
            return None
        q.popleft()
        self._hot[c_uid] = st
        if st.ack_due:
            self._ack(st)
        return frame[DIRECT_HDR.size:]

    def set_gate(self, c_uid, gate):
        """Channel ``c_uid``'s takes go through the take gate at address
        ``gate`` from now on (a routed channel)."""
        self.gates[c_uid] = gate
        for st in self._streams.values():
            if st.c_uid == c_uid:
                st.gate = gate

    def close_route(self, c_uid):
        """Channel ``c_uid``'s route was revoked (its gate closed): what is
        held of it and what comes later is dropped (its senders resend it
        through the agent, after what was taken)."""
        self.closed.add(c_uid)
        self.held.pop(c_uid, None)
        self._hot.pop(c_uid, None)
        for st in self._streams.values():
            if st.c_uid == c_uid:         # nothing more to acknowledge of it
                st.acked, st.due, st.ack_due = st.last, 0, False
                st.spill()                # (nor to take of a batch)

    def _ack(self, st):
        """Tell ``st``'s sender what was taken of it.  Never raises (it
        follows a take, whose message is the caller's: raising here lost
        it), nor waits (a full pipe to the sender): an acknowledgement
        not sent stays due, sent with a later take's or when the sender
        asks (OP_ACKREQ), which covers it."""
        try:
            self.sock.send_multipart([st.sender, TAKEN_HDR.pack(OP_TAKEN, st.c_uid, st.last)],
                                     Z_NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                log.debug("inbox: an acknowledgement not sent (still due): %r", exc)
                return
            # the sender is gone (or reconnecting: it asks again, OP_ACKREQ)
        st.acked, st.due, st.ack_due = st.last, 0, False

    def ack(self, sender=None):
        """Acknowledge every take not acknowledged yet (of ``sender`` only, if given)."""
        for st in list(self._streams.values()):
            if st.last > st.acked and (sender is None or st.sender == sender):
                self._ack(st)

    def unwatch(self, watch):
        """Close ``watch`` (made by :meth:`watch`) and its notice socket."""
        s = self._watches.pop(watch, None)
        watch.close()                 # (its thread ends before its socket closes)
        if s is not None:
            s.close(linger=0)

    def close(self):
        for w in list(self._watches):
            self.unwatch(w)
        self._closed = True
        self._flush_wake.set()        # (the flusher ends)
        self._handle = 0
        for ds in list(self.senders.values()):
            ds._handle = 0
            for o in ds.outs.values():
                o.handle = 0
        with self._poke_lock:
            self._poke.close(linger=0)
            self._poke = None
        self._hot.clear()             # (the streams and cells point into the record's mapping)
        self._streams.clear()
        self._cells.clear()
        self.record.close()
        self.sock.close(linger=0)


def own_inbox():
    """This process's own :class:`Inbox` (made at first use; a fork()ed
    child makes its own): its receives and its direct sends share it."""
    global _inbox, _inbox_pid
    with _inbox_lock:
        if _inbox is None or _inbox_pid != os.getpid():
            _inbox, _inbox_pid = Inbox(), os.getpid()
        return _inbox


_inbox = None
_inbox_pid = None
_inbox_lock = threading.Lock()


class DirectSender:
    """A connection to an :class:`Inbox` at ``address`` (its ``address``:
    the endpoint and its routing id), through this process's own inbox
    (``inbox``; default :func:`own_inbox`): ``send(c_uid, data)`` puts one
    message on the wire (the header, then the message) and returns; the
    messages of each channel are numbered from 1.  A copy of each is kept
    until the inbox acknowledges it (:meth:`unacked`: what a resend after
    the receiver's death starts from, :meth:`after`); at most
    :data:`WINDOW` per channel are unacknowledged (a send waits for room:
    the receiver's back-pressure).

    One connection per pair of inboxes, used both ways (docs/multinode.md,
    "The direct path"): if the peer already connected to this inbox (it
    sends here), its messages go back on that connection (to the peer's
    routing id; the peer sees them from its alias of this inbox, "c" and
    our id's last 15 bytes); else this inbox connects to the peer under
    the alias "c" and the peer's id's last 15 bytes (the peer sees this
    inbox's own id).  ``identity`` is the name the peer's record keeps this
    sender's takes under."""

    def __init__(self, address, identity=None, inbox=None):
        ib = self.inbox = inbox if inbox is not None else own_inbox()
        endpoint, _, rid = address.partition("#")
        peer_rid = bytes.fromhex(rid) if rid else None
        self.sock = ib.sock
        ib.grab()
        try:
            known = ib.peers.get(address)
            old = ib.at.get(endpoint)
            if known is None and old is not None and old != address:
                # another inbox had that endpoint (its process ended, the
                # port was bound again): its connection, if this inbox made
                # it, goes (its id was the old inbox's alias; the new one
                # has its own)
                gone = ib.peers.pop(old, None)
                if gone is not None and gone[1] == ib.rid:
                    try:
                        ib.sock.disconnect(endpoint)
                    except zmq.ZMQError:
                        pass
            if known is None:
                if peer_rid is not None and len(peer_rid) == 16:
                    try:                    # connected to us? (a notice: a no-op there)
                        ib.sock.send_multipart([peer_rid, OP_WAKE])
                        known = (peer_rid, b"c" + ib.rid[1:])
                    except zmq.ZMQError as exc:
                        if exc.errno != errno.EHOSTUNREACH:
                            raise
                if known is None:
                    alias = b"c" + (peer_rid[1:] if peer_rid is not None and len(peer_rid) == 16
                                    else os.urandom(15))
                    ib.connect(endpoint, alias)
                    known = (alias, ib.rid)
                ib.peers[address] = known
                ib.at[endpoint] = address
            self.peer, self.identity = known
            ib.senders[self.peer] = self
            # what was sent goes out at exit (up to 2 s: the route's end at
            # exit resends through the agent what the peer did not take)
            ib.sock.linger = 2000
        finally:
            ib.lock.release()
        # the socket's address for the one-call send (0: pyzmq's send)
        self._handle = ib._handle
        self.outs = {}            # c_uid -> its DirectOut: last seq sent, copies, their bytes
        self._shared = [0]        # [sends since the acknowledgements were last read]

    @property
    def shares(self):
        """The messages go back on a connection the peer made (one
        connection for both ways)."""
        return self.identity != self.inbox.rid

    def out(self, c_uid):
        """Channel ``c_uid``'s :class:`DirectOut` (its ``send`` is the hot
        path, called holding the inbox's socket; this ``send`` what it
        declines)."""
        o = self.outs.get(c_uid)
        if o is None:
            o = self.outs[c_uid] = DirectOut(c_uid, self._handle, self._shared, DRAIN_AFTER,
                                             WINDOW, WINDOW_BYTES, BATCH, BATCH_BYTES,
                                             BATCH_MAX, STREAMING)
            o.rid = self.peer
            o.wake = self.inbox.flush_soon
        return o

    def flush_batches(self):
        """Send every channel's batch being filled (the caller holds the
        inbox's socket); False if some could not go (no peer: they stay)."""
        ok = True
        for o in self.outs.values():
            if o.pending and not o.flush_batch():
                ok = False
        return ok

    def retire(self, c_uid):
        """Channel ``c_uid``'s route ended: its :class:`DirectOut` sends
        no more (``send_now`` declines; set under the socket's lock, so a
        send under way finishes first, its copy kept)."""
        self.inbox.grab()
        try:
            o = self.outs.get(c_uid)
            if o is not None:
                o.handle = 0
                o.drop_batch()        # (its messages are among the copies resent)
        finally:
            self.inbox.lock.release()

    def forget(self, c_uid):
        """Drop channel ``c_uid``'s copies (resent elsewhere); its sequence goes on."""
        self.inbox.grab()
        try:
            o = self.outs.get(c_uid)
            if o is not None:
                o.copies.clear()
                o.nbytes = 0
        finally:
            self.inbox.lock.release()

    def _acked(self, c_uid, seq):
        """The peer took channel ``c_uid``'s messages up to ``seq`` (the
        inbox's holder serves it)."""
        o = self.outs.get(c_uid)
        if o is None:
            return
        q = o.copies
        while q and q[0][0] <= seq:
            o.nbytes -= len(q.popleft()[1])

    def send(self, c_uid, data, timeout=None, idle=None, arg=None):
        """Send ``data`` to channel ``c_uid`` of the inbox.  A full window
        waits (``ChannelFull`` after ``timeout``), and so does a peer that
        is not connected (it reconnects, or its route ends: ``idle``);
        ``idle(c_uid, arg)``, if given, is called while it waits (and may
        raise: then nothing was sent)."""
        o = self.outs.get(c_uid) or self.out(c_uid)
        q = o.copies
        shared = self._shared
        shared[0] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        if shared[0] >= DRAIN_AFTER or len(q) >= WINDOW or o.nbytes >= WINDOW_BYTES:
            self._drain()
            if not self._wait(lambda: len(q) < WINDOW and o.nbytes < WINDOW_BYTES,
                              timeout, idle and (lambda: idle(c_uid, arg))):
                raise ChannelFull(f"channel {c_uid}: {WINDOW} direct messages or "
                                  f"{WINDOW_BYTES} bytes unacknowledged for {timeout} s")
        if type(data) is not bytes:
            data = bytes(data)
        ib = self.inbox
        while True:
            ib.grab()
            try:
                if TRACE:
                    _trace.stamp("d0")
                if self._handle and o.handle:
                    if o.put(data):             # one copy (or into the batch)
                        if TRACE:
                            _trace.stamp("d1")
                        return
                else:
                    seq = o.seq + 1     # (taken once the message went: a send that raises uses none)
                    try:
                        ib.sock.send_multipart([self.peer, DIRECT_HDR.pack(OP_DIRECT, c_uid, seq)
                                                + data])
                    except zmq.ZMQError as exc:
                        if exc.errno != errno.EHOSTUNREACH:
                            raise
                    else:
                        o.seq = seq
                        q.append((seq, data))
                        o.nbytes += len(data)
                        return
            finally:
                ib.lock.release()
            # the peer is not connected (reconnecting, or gone: its route
            # ends, idle raises): nothing was sent; try again shortly
            if deadline is not None and time.monotonic() >= deadline:
                raise ChannelFull(f"channel {c_uid}: the receiver's inbox is not connected")
            if idle is not None:
                idle(c_uid, arg)
            time.sleep(0.01)

    def _drain(self):
        """Read the acknowledgements that arrived; drop what they cover."""
        self._shared[0] = 0
        ib = self.inbox
        ib.grab()
        try:
            ib.serve_pending()
        finally:
            ib.lock.release()

    def _wait(self, done, timeout, idle=None):
        """Wait until ``done()`` (True) or ``timeout`` passed (False); asks
        the inbox for its acknowledgements first (OP_ACKREQ), then at most
        every 0.1 s while waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        asked = None
        ib = self.inbox
        while True:
            ib.grab()
            try:
                ib.serve_pending()
                if done():
                    return True
                self.flush_batches()            # (what is batched is not sent yet)
                now = time.monotonic()
                left = None if deadline is None else deadline - now
                if left is not None and left <= 0:
                    return False
                if asked is None or now - asked >= 0.1:
                    try:
                        ib.sock.send_multipart([self.peer, OP_ACKREQ])
                    except zmq.ZMQError as exc:
                        if exc.errno != errno.EHOSTUNREACH:
                            raise
                    asked = now
                # a short wait in the socket (its holder), so that a
                # receive of this process is not kept from it for long
                wait = 0.01 if left is None else min(left, 0.01)
                ib.sock.poll(wait * 1000.0)
            finally:
                ib.lock.release()
            if ib.wanted:                   # a receive waits for the socket: its turn
                with ib._cv:
                    ib._cv.wait_for(lambda: not ib.wanted, 0.1)
            if idle is not None:
                idle()

    def wait_acked(self, timeout=None):
        """Wait until every message sent was taken (True) or ``timeout``
        passed (False)."""
        return self._wait(lambda: not any(o.copies for o in self.outs.values()), timeout)

    def unacked(self, c_uid):
        """The (seq, data) of channel ``c_uid`` not acknowledged yet, oldest first."""
        self._drain()
        o = self.outs.get(c_uid)
        return [] if o is None else list(o.copies)

    def after(self, c_uid, seq):
        """The messages of channel ``c_uid`` after ``seq`` (the receiver's
        last take, from its TakenRecord), oldest first: what to resend
        through the agent when the receiver died, nothing it took and
        nothing it did not take left out."""
        return [d for s, d in self.unacked(c_uid) if s > seq]

    def close(self):
        """This sender sends no more (the connection stays: the inbox's);
        what is batched goes first."""
        if self._handle:
            self.inbox.grab()
            try:
                self.flush_batches()
            finally:
                self.inbox.lock.release()
        self._handle = 0
        for o in self.outs.values():
            o.handle = 0
        if self.inbox.senders.get(self.peer) is self:
            del self.inbox.senders[self.peer]
