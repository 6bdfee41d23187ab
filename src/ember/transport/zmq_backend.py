"""The ZeroMQ backend (pyzmq): CURVE-authenticated, encrypted TCP.

Every runtime makes one CURVE key pair (:meth:`ZmqBackend.make_keys`, at
the launcher); the launcher hands it to each node's process at launch (in
its environment, never on its command line: argv is visible to every user
in ``ps``).  A server endpoint is a CURVE server with that secret key and a
ZAP handler (:class:`_ZapHandler`) that admits a client only if it proved
the runtime's public key: a peer without the key cannot complete the
handshake, and everything after the handshake is encrypted and
authenticated (CurveZMQ: Curve25519, XSalsa20, Poly1305).

Server endpoints are ROUTER sockets, clients DEALER sockets.  High-water
marks are raised (small messages are pipelined in bulk; back-pressure is
the agents' own, per channel) and linger is 0 (a closed endpoint drops what
it had not sent: nothing outlives a teardown).
"""
import threading

import zmq
from zmq.utils import z85

from .base import Backend, Endpoint, TransportError

__all__ = ["ZmqBackend", "ZmqEndpoint", "keep_heap"]

_HWM = 1 << 20
_ZAP_ADDR = "inproc://zeromq.zap.01"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3      # <malloc.h>
_malloc_kept = False


def keep_heap():
    """Stop glibc's malloc from giving a large message's memory back to the
    kernel after every message.  libzmq's CURVE coder allocates about three
    buffers of a message's size per large message (plaintext, box, the
    result) in its I/O thread and frees them right after; glibc's default
    trim threshold (twice its dynamic mmap threshold, about 2-3 MiB then)
    made it shrink the heap (brk) after each 1 MiB message and fault the
    pages in again (and zero them) for the next: about as much CPU as the
    encryption itself.  Called by the agents and, once, by every process
    when it first connects to another node's agent: heap chunks up to 32 MiB, and
    up to 64 MiB of free heap kept (per arena).  A no-op where mallopt is
    not glibc's."""
    global _malloc_kept
    if _malloc_kept:
        return
    _malloc_kept = True
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, AttributeError):
        pass


class ZmqEndpoint(Endpoint):
    __slots__ = ("sock",)

    def __init__(self, sock):
        self.sock = sock

    def send(self, frames, copy=True):
        self.sock.send_multipart(frames, copy=copy)

    def recv(self, copy=True):
        return self.sock.recv_multipart(copy=copy)

    def recv_nowait(self, copy=True):
        try:
            return self.sock.recv_multipart(zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            return None

    def close(self):
        self.sock.close(linger=0)


class _ZapHandler(threading.Thread):
    """ZAP (RFC 27) handler: admits CURVE clients with the runtime's public
    key, refuses everything else."""

    def __init__(self, ctx, public_key):
        super().__init__(name="ember-zap", daemon=True)
        self.sock = ctx.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind(_ZAP_ADDR)
        self.allowed = z85.decode(public_key)
        self.refused = 0

    def run(self):
        sock = self.sock
        try:
            while True:
                req = sock.recv_multipart()
                version, request_id = req[0], req[1]
                mechanism = req[5] if len(req) > 5 else b""
                key = req[6] if len(req) > 6 else b""
                if mechanism == b"CURVE" and key == self.allowed:
                    sock.send_multipart([version, request_id, b"200", b"OK", b"ember", b""])
                else:
                    self.refused += 1
                    sock.send_multipart([version, request_id, b"400", b"not this runtime's key",
                                         b"", b""])
        except zmq.ContextTerminated:
            pass
        except zmq.ZMQError:
            pass
        finally:
            sock.close(linger=0)


def _text(k):
    return k.decode("ascii") if isinstance(k, bytes) else k


class ZmqBackend(Backend):
    """One per process: a zmq context (its own, or ``ctx``), and the ZAP
    handler once a server endpoint is made."""

    name = "zmq"

    def __init__(self, io_threads=1, ctx=None):
        keep_heap()
        self.ctx = zmq.Context(io_threads) if ctx is None else ctx
        self._own_ctx = ctx is None   # a borrowed one is its owner's to destroy
        self.zap = None

    @staticmethod
    def make_keys():
        pub, sec = zmq.curve_keypair()
        return pub.decode("ascii"), sec.decode("ascii")

    def _socket(self, kind):
        s = self.ctx.socket(kind)
        s.linger = 0
        s.sndhwm = _HWM
        s.rcvhwm = _HWM
        return s

    def server(self, address, keys):
        pub, sec = (_text(k) for k in keys)
        if self.zap is None:
            self.zap = _ZapHandler(self.ctx, pub)
            self.zap.start()
        s = self._socket(zmq.ROUTER)
        try:
            s.curve_server = True
            s.curve_publickey = pub.encode()
            s.curve_secretkey = sec.encode()
            s.zap_domain = b"ember"
            s.bind(address)
            bound = s.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            s.close(linger=0)
            raise TransportError(f"cannot bind {address}: {exc}") from None
        return ZmqEndpoint(s), bound

    def client(self, address, keys, identity=None):
        pub, sec = (_text(k) for k in keys)
        s = self._socket(zmq.DEALER)
        try:
            if identity is not None:
                s.identity = identity
            s.curve_serverkey = pub.encode()
            s.curve_publickey = pub.encode()
            s.curve_secretkey = sec.encode()
            s.connect(address)
        except zmq.ZMQError as exc:
            s.close(linger=0)
            raise TransportError(f"cannot connect to {address}: {exc}") from None
        return ZmqEndpoint(s)

    def poller(self, endpoints):
        p = zmq.Poller()
        for e in endpoints:
            p.register(e.sock if isinstance(e, ZmqEndpoint) else e, zmq.POLLIN)
        return p

    def close(self):
        if self._own_ctx:             # (a borrowed one's sockets, ZAP's too, go with it)
            self.ctx.destroy(linger=0)
