"""The transport backend interface: what the agents and remote channel
handles use of a messaging library, kept narrow so that another backend
(UCX/RDMA through ``ucxx``) can be added beside :mod:`.zmq_backend`.

A backend makes the runtime's key material (:meth:`Backend.make_keys`),
*server* endpoints (bound; accept only peers holding the runtime's key) and
*client* endpoints (connected to a server, proving the key), and a poller
over endpoints.  Messages are lists of frames (bytes-like); a frame given
as a buffer (a ``memoryview`` of pool memory) is sent without a copy where
the backend can.  A server endpoint receives ``[peer id, frames...]`` and
sends to a peer by putting its id first; a client endpoint sends and
receives plain frames.
"""

__all__ = ["Backend", "Endpoint", "TransportError"]


class TransportError(Exception):
    """A transport endpoint could not be made, bound or connected."""


class Endpoint:
    """One bound or connected endpoint (not thread safe: one thread each)."""

    def send(self, frames, copy=True):
        """Queue one message (a list of frames); never blocks for the peer."""
        raise NotImplementedError

    def recv(self, copy=True):
        """The next message (a list of frames: bytes, or zero-copy frame
        objects with ``.buffer`` when ``copy`` is False); blocks."""
        raise NotImplementedError

    def recv_nowait(self, copy=True):
        """The next message, or None if none is queued."""
        raise NotImplementedError

    def close(self):
        raise NotImplementedError


class Backend:
    """A transport backend (one per process)."""

    name = "?"

    @staticmethod
    def make_keys():
        """``(public, secret)``: the runtime's key pair, as text."""
        raise NotImplementedError

    def server(self, address, keys):
        """A server endpoint bound to ``address`` (``"tcp://*:0"``: any
        port); returns ``(endpoint, the address it is bound to)``."""
        raise NotImplementedError

    def client(self, address, keys, identity=None):
        """A client endpoint connected to the server at ``address``."""
        raise NotImplementedError

    def poller(self, endpoints):
        """A callable ``poll(timeout_s) -> [endpoints with input]``."""
        raise NotImplementedError

    def close(self):
        raise NotImplementedError
