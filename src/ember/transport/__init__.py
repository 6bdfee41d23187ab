"""Several nodes: the transport between them (docs/multinode.md).

- :mod:`.base`: the narrow backend interface (keys, a server socket, a
  client socket, multipart frames, a poller) that a UCX/RDMA backend could
  implement too;
- :mod:`.zmq_backend`: the backend on ZeroMQ (pyzmq), authenticated and
  encrypted with CURVE keys made per runtime;
- :mod:`.agent`: the transport agent (one per node): moves GS's messages to
  the other nodes' shepherds and back, the requests of processes on other
  nodes to GS and the replies back, and serves other nodes' handles of this
  node's channels;
- :mod:`.node`: ``python -m ember.transport.node``, what the launcher starts
  on every node but the head's: the node's pools, its shepherd, its agent;
- :mod:`.remote`: a handle of a channel on another node, with the API of a
  local one.

Nothing here is imported by a single-node runtime.
"""


def attach_descriptor(desc):
    """``Channel.attach(descriptor)``: a local handle if the channel is on
    this process's node (or the runtime has one node), else a
    :class:`~ember.transport.remote.RemoteChannel` through that node's
    agent."""
    from .. import _env
    from ..channels_c import Channel
    node = getattr(desc, "node", None)
    here = int(_env.get(_env.NODE, "0") or 0)
    if node is None or node == here:
        ch = Channel.attach(desc.sdesc)
        if node is not None:
            from .route import install         # the direct path, if on (docs/multinode.md)
            install(ch)
        return ch
    from .remote import RemoteChannel
    return RemoteChannel(desc)
