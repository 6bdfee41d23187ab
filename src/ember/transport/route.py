"""The direct path's receiving side in a runtime (docs/multinode.md, "The
direct path"): a local channel handle's ``recv`` that also takes what
processes of other nodes sent straight to this process.

On in every runtime of several nodes unless it was started with
``EMBER_MN_DIRECT=0`` in the launcher's environment
(``Channel.attach(descriptor)`` of a channel of this node installs
:func:`receiver` as the handle's ``_direct``).  At the
handle's first receive that may wait (``recv``/``recv_auto`` with a
timeout other than 0), this process makes its inbox
(:class:`~.direct.Inbox`, one per process) and a take gate for the channel,
and registers ``(c_uid, pid, record fd, gate, inbox address)`` with its
node's agent; the agent maps the record, watches the pid and offers the
route to the channel's remote senders (:mod:`.remote`: they switch once
all they sent through the agent is in the channel).  From then on the
handle's receives wait on the channel and the inbox at once
(:meth:`~.direct.Inbox.recv`: the channel first).

The route ends (the agent closes the gate, reads what was taken and tells
each sender to resend the rest through the agent) when this process ends,
when another process registers on the channel or a remote handle receives
from it, when a sender flushes, or when this handle is detached; the
handle then receives from the channel only.  A second handle of the same
channel in this process ends it too.  Messages that reach the inbox while
the process does not receive wait there until its next receive (or its
end: then they are resent through the agent).
"""
import os
import struct
import threading

from .. import _log
from ..exceptions import ChannelError

log = _log.get("route")

#: OP_REGISTER: op, c_uid, req, pid, record fd, gate offset (+ frame: inbox address)
REG_HDR = struct.Struct("<cQIqII")

_receiver = None


def enabled():
    """The direct path is on for this process (a several-node runtime not
    started with EMBER_MN_DIRECT=0)."""
    from .. import _env
    return (_env.get("EMBER_MN_DIRECT") or "1") != "0" and bool(_env.get("EMBER_MN_AGENTS"))


def receiver():
    """This process's :class:`Receiver` (made at first use; a fork()ed
    child makes its own)."""
    global _receiver
    if _receiver is None or _receiver.pid != os.getpid():
        _receiver = Receiver()
    return _receiver


class Receiver:
    """A process's receiving side of the direct path (the module docstring)."""

    def __init__(self):
        self.pid = os.getpid()
        self.inbox = None
        self.routes = {}          # c_uid -> (handle, watch) routed; (None, None) not routed
        self.taken = 0            # messages taken from the inbox (tests, benchmarks)
        # the inbox's zmq socket has one user at a time: the thread that
        # holds busy waits in it; a routed channel received in another
        # thread meanwhile leaves its route (recv)
        self.busy = threading.Lock()
        self._reg = threading.Lock()      # one registration at a time (one inbox)

    def _register(self, ch):
        """Make the inbox, a gate and a watch; register with the node's
        agent.  True when the agent gave the route."""
        from .. import _env
        from . import remote
        from .agent import R_OK
        from .direct import own_inbox
        if self.inbox is None:
            self.inbox = own_inbox()
        inbox = self.inbox
        off, addr = inbox.record.gate()
        conn = remote._conn(int(_env.get(_env.NODE, "0") or 0))
        req = next(conn.reqs)
        # the answer: MSG(R_OK, req), then b"1" (the route) or b"0" (refused)
        frames = conn.request(remote._Stub(ch.c_uid),
                              [REG_HDR.pack(b"g", ch.c_uid, req, os.getpid(), inbox.record.fd,
                                            off), inbox.address.encode()], req, 30.0)
        if bytes(frames[0][:1]) != R_OK or bytes(frames[1]) != b"1":
            return False
        inbox.set_gate(ch.c_uid, addr)
        w = inbox.watch(ch)
        self.routes[ch.c_uid] = (ch, w)
        if inbox._handle:
            # its receives' common case in one call (DirectRecv), the rest here
            from ..channels_c._channels import DirectRecv
            from . import _trace
            ch._direct = DirectRecv(ch, self, inbox, w, _trace.stamp if _trace.ON else None)
        return True

    def recv(self, ch, timeout):
        """``ch.recv(timeout)`` (or ``recv_auto``) of a handle with the
        direct path installed."""
        if self.pid != os.getpid():
            # a fork child's handle: the child's own receiver (its own
            # inbox, its own route, if the agent gives it one), not the
            # parent's (its socket is the parent's: _forget_routes_at_fork)
            ch._direct = receiver()
            return ch._direct.recv(ch, timeout)
        c_uid = ch.c_uid
        r = self.routes.get(c_uid)
        if r is None:
            if timeout == 0:
                return ch._recv_local(0)            # (it registers at a receive that waits)
            with self._reg:                         # (another thread may register it)
                r = self.routes.get(c_uid)
                if r is None:
                    try:
                        routed = self._register(ch)
                    except ChannelError as exc:
                        log.info("direct path: channel %d not routed: %s", c_uid, exc)
                        routed = False
                    if not routed:
                        self.routes[c_uid] = (None, None)
                    r = self.routes[c_uid]
        if r[0] is not ch:
            # another handle of the channel in this process (or a refused
            # route): the channel only; a second handle ends the route
            if r[0] is not None:
                self._end(c_uid, "a second handle of the channel receives")
            ch._direct = None
            return ch._recv_local(timeout)
        inbox = self.inbox
        if not self.busy.acquire(False):
            # another thread waits in the inbox's socket (one user at a
            # time): this channel leaves the route, as for a second handle
            self._end(c_uid, "another thread of the process receives from the inbox")
            ch._direct = None
            return ch._recv_local(timeout)
        try:
            got = inbox.recv(ch, r[1], timeout)
        finally:
            self.busy.release()
            if c_uid in inbox.closed:               # the agent revoked the route
                self._forget(c_uid)
                ch._direct = None
        return got

    def _forget(self, c_uid):
        ch, w = self.routes.get(c_uid, (None, None))
        self.routes[c_uid] = (None, None)
        if w is not None:
            self.inbox.unwatch(w)

    def _end(self, c_uid, why):
        """End this process's route of ``c_uid`` (its gate closed here, the
        agent told: it reads the record, the senders resend the rest)."""
        from .. import _env
        from ..channels_c._channels import _gate_close
        from . import remote
        from .agent import OP_REVOKE, SEND_HDR
        gate = self.inbox.gates.get(c_uid) if self.inbox is not None else None
        if gate is None or c_uid in self.inbox.closed:
            self._forget(c_uid)
            return
        _gate_close(gate)                          # no take after this (this thread takes)
        self.inbox.close_route(c_uid)
        self._forget(c_uid)
        log.debug("direct path: channel %d's route ends: %s", c_uid, why)
        try:
            conn = remote._conn(int(_env.get(_env.NODE, "0") or 0))
            with conn.lock:
                conn.sock.send(SEND_HDR.pack(OP_REVOKE, c_uid))
        except Exception as exc:                   # the process is going away: its pid tells
            log.debug("direct path: telling the agent: %r", exc)

    def release(self, ch):
        """``ch`` is being detached."""
        if self.pid != os.getpid():
            return
        r = self.routes.get(ch.c_uid)
        if r is not None and r[0] is ch:
            self._end(ch.c_uid, "its handle was detached")


def _routes_forgotten():
    """In a fork child (os.fork; remote._after_fork): each routed handle
    it inherited receives by the Python path (the parent's
    :class:`Receiver`, which sees the fork and gives the handle the
    child's own), not by its DirectRecv's one call on the parent's inbox
    socket (whose zmq context's I/O thread is the parent's)."""
    r = _receiver
    if r is not None:
        for ch, _ in list(r.routes.values()):
            if ch is not None:
                ch._direct = r


def install(ch):
    """Give local handle ``ch`` the direct path's receive, if it is on."""
    if enabled():
        ch._direct = receiver()
    return ch
