"""The node's pools and channels, made and destroyed by the node's shepherd.

Global services (GS) decides and records (uids, names, reference counts);
the shepherd of the node that owns the memory does the creating and the
destroying, so GS never needs to map a node's pools (docs/architecture.md,
"Node-scoped resources").  The requests come on the shepherd's private
input channel and are answered on GS's control channel:

=====================  ==========================================
GS -> shepherd         shepherd -> GS
=====================  ==========================================
``ShPoolCreate``       ``ShPoolCreated(ref, m_uid, sdesc, size, err)``
``ShPoolDestroy``      ``ShPoolDestroyed(ref, m_uid, err)``
``ShChannelCreate``    ``ShChannelCreated(ref, c_uid, sdesc, capacity, block_size, err)``
``ShChannelDestroy``   ``ShChannelDestroyed(ref, c_uid, err)``
``ShChannelDrop``      (none: GS answered the destroy already; a failure is logged)
``ShChannelAdopt``     ``ShChannelAdoptFailed(c_uid, err)`` only when it refuses
``ShChannelFree``      (none: adopt and drop at once, GS forgot it already; a refusal is logged)
``ShObjectEnd``        ``ShObjectEnded(ref, err)`` (a named object's memory: ember.objects)
``ShReclaim(pid)``     (none)
=====================  ==========================================

The shepherd also calls :meth:`NodeResources.reclaim` for every child it
reaps, before it reports the exit: a dead process's pool blocks are given
back by the node that maps the pools.

``err`` is None or ``[err_type, text, expected]`` (the exception's class
name and message; ``expected``: an ordinary failure of the resource, out of
memory or a bad size, which GS words as "cannot create ...").  :class:`NodeResources` is a :class:`~ember.service.Service`
(handler table, stats, dump) independent of the transport: ``send(msg)``
delivers a message to GS.  It runs on the shepherd's request thread.
"""
import _thread   # (not threading: ~1.5 ms of every start)

from .. import _log, messages as M
from ..service import NOTICE, Service

__all__ = ["NodeResources"]

log = _log.get("shepherd")


def _err(exc, expected=()):
    """``[err_type, text, expected]``: ``expected`` says the failure is one
    of the resource's ordinary ones (out of memory, bad size), which GS
    words as "cannot create ...: <text>"."""
    return [type(exc).__name__, str(exc), isinstance(exc, expected)]


def _owned_by(ch, pid):
    """Hand ``ch``'s block from ``pid`` to nobody (0: check that it is
    nobody's); False if its owner is not ``pid``."""
    try:
        ch._take_owner(pid, 0)
        return True
    except Exception:
        return False


class NodeResources(Service):
    """The pools and channels of one node, by m_uid and c_uid.

    ``send(msg)``: hands one message to GS.  ``pool_factory`` /
    ``channel_factory`` / ``pool_attach``: the pools and channels layer
    (``Pool.create``, ``Channel.create``, ``Pool.attach`` by default).
    """

    name = "shepherd"
    TYPES = (M.ShPoolCreate, M.ShPoolDestroy, M.ShChannelCreate, M.ShChannelDestroy,
             M.ShChannelClose, M.ShObjectEnd, M.ShChannelDrop, M.ShChannelAdopt,
             M.ShChannelFree)

    def __init__(self, send, *, pool_factory=None, channel_factory=None, pool_attach=None,
                 channel_attach=None, clock=None):
        kw = {} if clock is None else {"clock": clock}
        Service.__init__(self, logger=log, **kw)
        if pool_factory is None or channel_factory is None or pool_attach is None:
            from ..channels_c import Channel
            from ..pools_c import Pool
            pool_factory = pool_factory or Pool.create
            channel_factory = channel_factory or Channel.create
            pool_attach = pool_attach or Pool.attach
        if channel_attach is None:
            from ..channels_c import Channel
            channel_attach = Channel.attach
        self._attach_channel = channel_attach
        self._send = send
        self._make_pool, self._make_channel, self._attach_pool = \
            pool_factory, channel_factory, pool_attach
        self.pools = {}           # m_uid -> Pool this shepherd made (it destroys them)
        self.attached = {}        # m_uid -> Pool it attached (the default pool, the launcher's)
        self.inherited = set()    # m_uids in attached whose Pool came through fork (not detached)
        self.chans = {}           # c_uid -> Channel it made
        # Pools are destroyed (request thread) under it and swept (main
        # thread, at a child's exit) under it.
        self._lock = _thread.allocate_lock()
        for cls, method in ((M.ShPoolCreate, self.on_pool_create),
                            (M.ShPoolDestroy, self.on_pool_destroy),
                            (M.ShChannelCreate, self.on_channel_create),
                            (M.ShChannelDestroy, self.on_channel_destroy),
                            (M.ShChannelClose, self.on_channel_close),
                            (M.ShObjectEnd, self.on_object_end),
                            (M.ShChannelDrop, self.on_channel_drop),
                            (M.ShChannelAdopt, self.on_channel_adopt),
                            (M.ShChannelFree, self.on_channel_free)):
            self.on(cls, method, NOTICE)

    def handle_msg(self, msg):
        """Dispatch one of :attr:`TYPES` (for a caller that has decoded
        it); always True (keep reading)."""
        self.dispatch(msg, trusted=True)
        return True

    # ----------------------------------------------------------------- pools
    def on_pool_create(self, msg):
        try:
            pool = self._make_pool(msg.size, name=msg.name, m_uid=msg.m_uid,
                                   owner_tag=msg.owner_tag)
        except Exception as exc:
            return self._send(M.ShPoolCreated(msg.tag, msg.m_uid, None, None,
                                              _err(exc, (MemoryError, OSError, ValueError))))
        with self._lock:
            self.pools[msg.m_uid] = pool
        log.debug("pool %s made (%d bytes)", msg.m_uid, pool.size)
        self._send(M.ShPoolCreated(msg.tag, msg.m_uid, pool.sdesc, pool.size, None))

    def on_pool_destroy(self, msg):
        with self._lock:
            pool = self.pools.pop(msg.m_uid, None)
        err = None
        if pool is None:
            err = ["PoolError", f"no pool with m_uid {msg.m_uid} on this node", False]
        else:
            try:
                with self._lock:
                    pool.destroy()
            except Exception as exc:
                err = _err(exc)
        self._send(M.ShPoolDestroyed(msg.tag, msg.m_uid, err))

    def _pool(self, m_uid, sdesc):
        pool = self.pools.get(m_uid) or self.attached.get(m_uid)
        if pool is None:
            pool = self._attach_pool(sdesc)
            with self._lock:
                self.attached[m_uid] = pool
        return pool

    # -------------------------------------------------------------- channels
    def on_channel_create(self, msg):
        try:
            pool = self._pool(msg.m_uid, msg.pool_sdesc)
            ch = self._make_channel(pool, capacity=msg.capacity, block_size=msg.block_size,
                                    c_uid=msg.c_uid)
        except Exception as exc:
            return self._send(M.ShChannelCreated(msg.tag, msg.c_uid, None, None, None,
                                                 _err(exc, (MemoryError, ValueError))))
        self.chans[msg.c_uid] = ch
        self._send(M.ShChannelCreated(msg.tag, msg.c_uid, ch.sdesc, ch.capacity, ch.block_size,
                                      None))

    def on_channel_destroy(self, msg):
        ch = self.chans.pop(msg.c_uid, None)
        err = None
        if ch is None:
            err = ["ChannelError", f"no channel with c_uid {msg.c_uid} on this node", False]
        else:
            try:
                ch.destroy()
            except Exception as exc:
                err = _err(exc)
        self._send(M.ShChannelDestroyed(msg.tag, msg.c_uid, err))

    def _adoptable(self, msg):
        """The registered channel of ``msg`` (ShChannelAdopt/ShChannelFree),
        attached, its block handed to nobody; raises if it is not one (see
        :meth:`on_channel_adopt`)."""
        ch = None
        try:
            if not isinstance(msg.c_uid, int) or not isinstance(msg.pid, int):
                raise ValueError("bad c_uid or pid")
            self._pool(msg.m_uid, msg.pool_sdesc)
            ch = self._attach_channel(msg.sdesc)
            if ch.c_uid != msg.c_uid:
                raise ValueError(f"its header says c_uid {ch.c_uid}, GS registered {msg.c_uid}")
            # The owner only ever goes from the requester's pid to 0 (the
            # requester hands it over itself once GS answered): "nobody's"
            # first (the usual case, no exception), then "the requester's",
            # then "nobody's" again -- the requester may have handed it
            # over between the first two looks.
            if not (_owned_by(ch, 0) or _owned_by(ch, msg.pid) or _owned_by(ch, 0)):
                raise ValueError(f"its block is not process pid {msg.pid}'s")
        except Exception:
            if ch is not None:
                try:
                    ch.detach()
                except Exception:
                    pass
            raise
        return ch

    def on_channel_adopt(self, msg):
        """Take over a channel a process made itself and GS registered
        (``pid``: the requester's).  It must attach (a live block holding a
        channel header of this pool: magic, version, allocation id), carry
        the c_uid GS reserved, and its block must be the requester's or
        already handed to nobody (the requester does that itself once GS
        has answered); then the block becomes nobody's (a reclaim of the
        requester's blocks leaves it) and this node destroys it when GS
        says so.  Otherwise GS is told to forget it."""
        try:
            ch = self._adoptable(msg)
        except Exception as exc:
            log.warning("refused to adopt channel %r: %s: %s", msg.c_uid, type(exc).__name__, exc)
            self._send(M.ShChannelAdoptFailed(msg.c_uid, _err(exc)))
            return
        self.chans[msg.c_uid] = ch

    def on_channel_free(self, msg):
        """A registered channel GS forgot before this node adopted it (made
        and destroyed within one burst of GS's notices): checked as
        :meth:`on_channel_adopt` checks it, then destroyed.  A channel that
        does not pass (its requester died and its blocks were reclaimed
        first: nothing left to free) is logged, not destroyed."""
        try:
            ch = self._adoptable(msg)
        except Exception as exc:
            log.info("channel %r not freed: %s: %s", msg.c_uid, type(exc).__name__, exc)
            return
        try:
            ch.destroy()
        except Exception as exc:
            log.warning("freeing channel %s: %s: %s", msg.c_uid, type(exc).__name__, exc)

    def on_channel_drop(self, msg):
        """Free channels GS has already forgotten (and answered the destroy
        of): each on its own, a failure logged."""
        c_uids = msg.c_uids
        if not isinstance(c_uids, list):
            self.warn("bad-drop", "dropped ShChannelDrop: c_uids is not a list")
            return
        for c_uid in c_uids:
            ch = self.chans.pop(c_uid, None) if isinstance(c_uid, int) else None
            if ch is None:
                log.warning("cannot free channel %r: no such channel on this node", c_uid)
                continue
            try:
                ch.destroy()
            except Exception as exc:
                log.warning("freeing channel %s: %s: %s", c_uid, type(exc).__name__, exc)

    def on_channel_close(self, msg):
        """Close a channel whose last sender went away (GS decided): no
        more sends; receivers drain, then get ChannelClosed."""
        ch = self.chans.get(msg.c_uid)
        err = None
        if ch is None:
            err = ["ChannelError", f"no channel with c_uid {msg.c_uid} on this node", False]
        else:
            try:
                ch.close()
            except Exception as exc:
                err = _err(exc)
        self._send(M.ShChannelClosed(msg.tag, msg.c_uid, err))

    # --------------------------------------------------------- named objects
    def on_object_end(self, msg):
        """A named object ended (GS decided): close and destroy its memory
        (:func:`ember.objects.ending.end_parts`); every step independent."""
        from ..objects.ending import end_parts
        try:
            pool = self._pool(msg.m_uid, msg.pool_sdesc)
            errs = end_parts(pool, msg.closes or [], msg.parts or [],
                             [ch.sdesc for ch in list(self.chans.values())])
            err = ["ObjectError", "; ".join(errs), False] if errs else None
        except Exception as exc:
            err = _err(exc)
        self._send(M.ShObjectEnded(msg.tag, err))

    # --------------------------------------------------------------- reclaim
    def adopt(self, m_uid, sdesc):
        """Attach a pool someone else made (the launcher's infrastructure and
        default pools) so that :meth:`reclaim` sweeps it too."""
        self._pool(m_uid, sdesc)

    def adopt_pool(self, m_uid, pool):
        """:meth:`adopt` for a pool already mapped in this process (the
        launcher's handle, inherited through fork: no second mapping).  It
        is swept, never detached here: the same mapping may hold channels
        this process still uses."""
        with self._lock:
            self.attached[m_uid] = pool
            self.inherited.add(m_uid)

    def reclaim(self, pid, external=False):
        """Give back the blocks dead ``pid`` still owned, in every pool of
        the node (where the pools layer has ``reclaim``).  Called from the
        shepherd's main thread: under the lock that pool destroys take.
        ``external``: an attached process, not our child — it may still be
        a zombie its own parent has not reaped, and then its blocks cannot
        be told from a live process's: they are left (docs/embedding.md)."""
        with self._lock:
            pools = list(self.pools.items()) + list(self.attached.items())
            for m_uid, pool in pools:
                self._reclaim_one(m_uid, pool, pid, external)

    @staticmethod
    def _reclaim_one(m_uid, pool, pid, external=False):
        reclaim = getattr(pool, "reclaim", None)
        if reclaim is None:
            return
        try:
            got = reclaim(pid)
        except Exception as exc:
            (log.debug if external else log.warning)(
                "cannot reclaim the blocks of pid %d in pool %s: %s", pid, m_uid, exc)
            return
        if got and got[0]:
            log.info("reclaimed %d block(s), %d bytes of dead pid %d in pool %s",
                     got[0], got[1], pid, m_uid)

    # ----------------------------------------------------------------- close
    def close(self):
        """Destroy what is left (GS destroys everything at teardown; this
        is the safety net when it could not), detach attached pools.
        Each step independent of the others' failure."""
        for c_uid, ch in list(self.chans.items()):
            try:
                ch.destroy()
            except Exception as exc:
                log.debug("destroying channel %s at exit: %s", c_uid, exc)
        self.chans.clear()
        with self._lock:
            self._close_pools()

    def _close_pools(self):
        for m_uid, pool in list(self.pools.items()):
            try:
                pool.destroy()
            except Exception as exc:
                log.debug("destroying pool %s at exit: %s", m_uid, exc)
        self.pools.clear()
        for m_uid, pool in self.attached.items():
            if m_uid in self.inherited:
                continue
            try:
                pool.detach()
            except Exception:
                pass
        self.attached.clear()
        self.inherited.clear()

    def dump(self):
        d = Service.dump(self)
        d.update(pools=sorted(self.pools), attached_pools=sorted(self.attached),
                 channels=sorted(self.chans))
        return d
