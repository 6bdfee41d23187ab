"""The client side of the control plane: how a managed process talks to GS.

Connects lazily on first use from the ``EMBER_*`` environment.  Each thread
gets its own reply channel (created by the client in the infrastructure
pool), so many threads can wait on GS at once without sharing a queue.
Requests carry the reply channel's descriptor; GS frees a process's reply
channels when that process exits.  After ``fork()`` the child builds fresh
reply channels (it must not read its parent's replies).
"""
import builtins
import itertools
import os
import threading
import time

from .. import _env, exceptions, messages
from ..exceptions import ChannelEmpty, GlobalServicesError

_REPLY_CAPACITY = 8
_REPLY_BLOCK = 1024
# A reply usually arrives within tens of microseconds: spin that long before
# sleeping, so a round trip costs no futex wake-up.  The spin is fixed, not
# adaptive: an adaptive one shrinks below the round trip once a peer sleeps,
# and both sides then stay in the slow, sleeping mode (docs/channels.md).
CONTROL_SPIN = float(os.environ.get("EMBER_CONTROL_SPIN", "100e-6"))


def _error_from_reply(rep):
    cls = getattr(exceptions, rep.err_type or "", None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = getattr(builtins, rep.err_type or "", None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            cls = GlobalServicesError
    err = cls(rep.msg)
    if rep.tb:
        err.remote_traceback = rep.tb
    return err


class Connection:
    """One process's connection to GS (see module docstring)."""

    def __init__(self):
        if not _env.in_runtime():
            raise GlobalServicesError(
                "not running inside an ember runtime (EMBER_GS_CH is not set): "
                "start the program with `ember run PROGRAM`")
        from ..channels_c import Channel
        from ..pools_c import Pool

        self._Channel = Channel
        self.pid = os.getpid()
        self.p_uid = int(_env.get(_env.P_UID, "0"))
        self.inf_pool = Pool.attach(_env.decode(_env.get(_env.INF_POOL)))
        self.gs = Channel.attach(_env.decode(_env.get(_env.GS_CH)))
        self._local = threading.local()
        self._tags = itertools.count(1)

    def _reply_channel(self):
        ch = getattr(self._local, "ch", None)
        if ch is None:
            ch = self._Channel.create(self.inf_pool, capacity=_REPLY_CAPACITY, block_size=_REPLY_BLOCK)
            ch.set_spin(CONTROL_SPIN, adaptive=False)
            self._local.ch = ch
            self._local.r = ch.sdesc
        return ch, self._local.r

    def call(self, msg_cls, *fields, timeout=None):
        """Send a request and wait for its reply; return the reply's value or
        raise the error GS reported.  ``timeout`` (seconds) bounds the local
        wait for the reply (GS keeps the API's own timeouts); running out
        raises GlobalServicesError."""
        ch, r = self._reply_channel()
        tag = next(self._tags)
        self.gs.send(msg_cls(tag, self.p_uid, r, *fields).pack())
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                data = ch.recv(timeout=left)
            except ChannelEmpty:
                raise GlobalServicesError(
                    f"no reply from global services to {msg_cls.__name__} within {timeout} s") from None
            rep = messages.unpack(data)
            if type(rep) is messages.Reply and rep.ref == tag:
                break
            # A late reply to a request abandoned by Ctrl-C: drop it.
        if rep.status == messages.ERR_OK:
            return rep.value
        raise _error_from_reply(rep)

    def close(self):
        """Detach from GS (the launcher's last step; GS frees the reply
        channels of ordinary processes when they exit)."""
        ch = getattr(self._local, "ch", None)
        if ch is not None:
            ch.destroy()
            self._local.ch = None
        self.gs.detach()
        self.inf_pool.detach()


_conn = None
_conn_lock = threading.Lock()


def connection():
    """The process's connection to GS, made on first use (fork-safe)."""
    global _conn
    c = _conn
    if c is not None and c.pid == os.getpid():
        return c
    with _conn_lock:
        if _conn is None or _conn.pid != os.getpid():
            _conn = Connection()
        return _conn


def call(msg_cls, *fields):
    return connection().call(msg_cls, *fields)


__all__ = ["Connection", "connection", "call", "ChannelEmpty"]
