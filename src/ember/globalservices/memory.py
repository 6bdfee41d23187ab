"""GS part: the pool and channel registries of the runtime.

Pools by m_uid and name, channels by c_uid and name, the channels each pool
holds, reference counts (holders by p_uid, mirrored in each process's
``refs``), channel joins that wait for a name, and the sweep of a dead
process's pool blocks.

Uses from the other parts: ``_park``/``_finish_waiter`` (:mod:`.registry`),
``procs`` (:mod:`.processes`), and from the composition (:mod:`.server`):
``_reply``, ``send_reply``, ``node``, ``runtime_tag``, the factories.
"""
import itertools

from .. import messages as m
from ..descriptors import ChannelOptions
from ..exceptions import ChannelError, ChannelTimeout, PoolError
from .registry import _Waiter, _lookup, _timeout, log

DEFAULT_POOL_NAME = "default"


class _Pool:
    __slots__ = ("m_uid", "name", "pool", "size", "channels", "default")

    def __init__(self, m_uid, name, pool, size, default=False):
        self.m_uid, self.name, self.pool, self.size = m_uid, name, pool, size
        self.channels = set()
        self.default = default


class _Chan:
    __slots__ = ("c_uid", "m_uid", "name", "ch", "sdesc", "capacity", "block_size",
                 "ref_count", "holders")

    def __init__(self, c_uid, m_uid, name, ch, opts):
        self.c_uid, self.m_uid, self.name, self.ch = c_uid, m_uid, name, ch
        self.sdesc = ch.sdesc
        self.capacity = ch.capacity
        self.block_size = ch.block_size
        self.ref_count = bool(opts.ref_count)
        self.holders = {}  # p_uid -> count


class MemoryPart:
    """Pools (``pools``, ``pool_names``) and channels (``chans``,
    ``chan_names``, ``chan_sdescs``, ``chan_joiners``)."""

    REQUESTS = ((m.PoolCreate, "on_pool_create"), (m.PoolList, "on_pool_list"),
                (m.PoolQuery, "on_pool_query"), (m.PoolDestroy, "on_pool_destroy"),
                (m.PoolDefault, "on_pool_default"),
                (m.ChannelCreate, "on_channel_create"), (m.ChannelList, "on_channel_list"),
                (m.ChannelQuery, "on_channel_query"), (m.ChannelJoin, "on_channel_join"),
                (m.ChannelDestroy, "on_channel_destroy"), (m.ChannelRelease, "on_channel_release"),
                (m.ChannelAddRef, "on_channel_add_ref"))
    NOTICES = ()

    def _init_memory(self, default_pool):
        self.pools = {}           # m_uid -> _Pool
        self.pool_names = {}
        self.chans = {}           # c_uid -> _Chan
        self.chan_names = {}
        self.chan_sdescs = set()  # descriptors of the registered channels
        self.chan_joiners = {}    # name -> [ _Waiter ]
        self._m_uids = itertools.count(2)
        self._c_uids = itertools.count(1)
        #: Called with a dead (reaped) process's OS pid to give back the pool
        #: blocks it still owned; by default every pool's ``reclaim(pid)``
        #: where the pools layer has one.  None: no sweep.
        self.sweep_allocations = self._reclaim_blocks
        self.extra_pools = []     # pools GS sweeps but does not own (the infrastructure pool)
        self.default_m_uid = None
        if default_pool is not None:
            self.default_m_uid = 1
            self._add_pool(_Pool(1, DEFAULT_POOL_NAME, default_pool, default_pool.size, default=True))

    def _reclaim_blocks(self, pid):
        pools = [(r.m_uid, r.pool) for r in self.pools.values()] + \
            [(getattr(p, "m_uid", "?"), p) for p in self.extra_pools]
        for m_uid, pool in pools:
            reclaim = getattr(pool, "reclaim", None)
            if reclaim is None:
                continue
            try:
                got = reclaim(pid)
            except Exception as exc:
                log.warning("cannot reclaim the blocks of pid %d in pool %s: %s", pid, m_uid, exc)
                continue
            if got and got[0]:
                log.info("reclaimed %d block(s), %d bytes of dead pid %d in pool %s",
                         got[0], got[1], pid, m_uid)

    def _drop_refs(self, rec, c_uid):
        rec.refs.pop(c_uid, None)
        ch = self.chans.get(c_uid)
        if ch is not None:
            ch.holders.pop(rec.p_uid, None)
            if ch.ref_count and not ch.holders:
                self._destroy_channel(ch)

    def _add_pool(self, rec):
        self.pools[rec.m_uid] = rec
        if rec.name:
            self.pool_names[rec.name] = rec.m_uid

    def _pool(self, ident):
        return _lookup(ident, self.pools, self.pool_names, PoolError, "pool", "m_uid")

    def _pool_desc(self, rec):
        return {"m_uid": rec.m_uid, "name": rec.name, "node": self.node, "size": rec.size,
                "sdesc": rec.pool.sdesc}

    def on_pool_create(self, msg):
        name = msg.user_name
        if name is not None and not isinstance(name, str):
            raise PoolError(f"user_name must be a str or None, not {type(name).__name__}")
        if name and name in self.pool_names:
            rec = self.pools[self.pool_names[name]]
            if msg.soft:
                return self._reply(msg.tag, msg.r, self._pool_desc(rec))
            raise PoolError(f"a pool is already named {name!r} (m_uid {rec.m_uid})")
        size = msg.size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise PoolError(f"pool size must be a positive int, got {size!r}")
        m_uid = next(self._m_uids)
        try:
            pool = self._make_pool(size, name=name, m_uid=m_uid, owner_tag=self.runtime_tag)
        except (MemoryError, OSError, ValueError) as exc:
            raise PoolError(f"cannot create pool of {size} bytes: {exc}") from None
        rec = _Pool(m_uid, name or None, pool, pool.size)
        self._add_pool(rec)
        log.info("pool %d %r created (%d bytes) by process %s", m_uid, rec.name, rec.size, msg.p_uid)
        self._reply(msg.tag, msg.r, self._pool_desc(rec))

    def on_pool_list(self, msg):
        self._reply(msg.tag, msg.r, [[p.m_uid, p.name] for p in self.pools.values()])

    def on_pool_query(self, msg):
        self._reply(msg.tag, msg.r, self._pool_desc(self._pool(msg.ident)))

    def on_pool_default(self, msg):
        if self.default_m_uid is None:
            raise PoolError("this runtime has no default pool")
        self._reply(msg.tag, msg.r, self._pool_desc(self.pools[self.default_m_uid]))

    def on_pool_destroy(self, msg):
        rec = self._pool(msg.ident)
        if rec.default:
            raise PoolError(f"pool {rec.m_uid} is the runtime's default pool and cannot be destroyed")
        if rec.channels:
            raise PoolError(f"pool {rec.name or rec.m_uid} (m_uid {rec.m_uid}) still holds "
                            f"{len(rec.channels)} channel(s) {sorted(rec.channels)}: destroy them first")
        self._destroy_pool(rec)
        self._reply(msg.tag, msg.r)

    def _destroy_pool(self, rec):
        del self.pools[rec.m_uid]
        if rec.name and self.pool_names.get(rec.name) == rec.m_uid:
            del self.pool_names[rec.name]
        log.info("pool %d %r destroyed", rec.m_uid, rec.name)
        rec.pool.destroy()

    def _chan(self, ident):
        return _lookup(ident, self.chans, self.chan_names, ChannelError, "channel", "c_uid")

    def _chan_desc(self, rec):
        return {"m_uid": rec.m_uid, "c_uid": rec.c_uid, "name": rec.name, "node": self.node,
                "capacity": rec.capacity, "block_size": rec.block_size,
                "ref_count": rec.ref_count, "sdesc": rec.sdesc}

    def _add_ref(self, rec, p_uid):
        if rec.ref_count:
            rec.holders[p_uid] = rec.holders.get(p_uid, 0) + 1
            proc = self.procs.get(p_uid)
            if proc is not None:
                proc.refs[rec.c_uid] = proc.refs.get(rec.c_uid, 0) + 1

    def on_channel_create(self, msg):
        name = msg.user_name
        if name is not None and not isinstance(name, str):
            raise ChannelError(f"user_name must be a str or None, not {type(name).__name__}")
        if name and name in self.chan_names:
            rec = self.chans[self.chan_names[name]]
            if msg.soft:
                self._add_ref(rec, msg.p_uid)
                return self._reply(msg.tag, msg.r, self._chan_desc(rec))
            raise ChannelError(f"a channel is already named {name!r} (c_uid {rec.c_uid})")
        m_uid = self.default_m_uid if msg.m_uid is None else msg.m_uid
        if isinstance(m_uid, bool) or not isinstance(m_uid, int):
            raise ChannelError(f"m_uid must be an int, not {type(m_uid).__name__}")
        prec = self.pools.get(m_uid)
        if prec is None:
            raise ChannelError(f"cannot create channel {name or ''!r}: no pool with m_uid {m_uid}")
        try:
            opts = ChannelOptions.coerce(msg.options, "channel_options")
        except TypeError as exc:
            raise ChannelError(str(exc)) from None
        for field in ("capacity", "block_size"):
            v = getattr(opts, field)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ChannelError(f"ChannelOptions.{field} must be a positive int, got {v!r}")
        c_uid = next(self._c_uids)
        try:
            ch = self._make_channel(prec.pool, capacity=opts.capacity, block_size=opts.block_size,
                                    c_uid=c_uid)
        except (MemoryError, ValueError) as exc:
            raise ChannelError(f"cannot create channel {name or c_uid!r} in pool {m_uid}: {exc}") from None
        rec = _Chan(c_uid, m_uid, name or None, ch, opts)
        self.chans[c_uid] = rec
        self.chan_sdescs.add(rec.sdesc)
        log.info("channel %d %r created in pool %d by process %s", c_uid, rec.name, m_uid, msg.p_uid)
        prec.channels.add(c_uid)
        if name:
            self.chan_names[name] = c_uid
        self._add_ref(rec, msg.p_uid)
        desc = self._chan_desc(rec)
        # Wake the joiners first: they sleep, the creator is spinning for its reply.
        for w in list(self.chan_joiners.get(name, ())) if name else ():
            self._finish_waiter(w)
            self._add_ref(rec, w.owner)
            self._reply(w.tag, w.r, desc)
        self._reply(msg.tag, msg.r, desc)

    def on_channel_list(self, msg):
        self._reply(msg.tag, msg.r, [[c.c_uid, c.name] for c in self.chans.values()])

    def on_channel_query(self, msg):
        self._reply(msg.tag, msg.r, self._chan_desc(self._chan(msg.ident)))

    def on_channel_join(self, msg):
        name = msg.name
        if not isinstance(name, str) or not name:
            raise ChannelError(f"channel.join needs a non-empty str name, got {name!r}")
        timeout = _timeout(msg.timeout, ChannelError)
        c_uid = self.chan_names.get(name)
        if c_uid is not None:
            rec = self.chans[c_uid]
            self._add_ref(rec, msg.p_uid)
            return self._reply(msg.tag, msg.r, self._chan_desc(rec))
        if timeout == 0:
            raise ChannelTimeout(f"channel.join({name!r}) timed out: no channel of that name was created")
        w = _Waiter(msg.tag, msg.r, msg.p_uid)
        w.name = name
        self.chan_joiners.setdefault(name, []).append(w)
        log.debug("process %s is waiting for channel %r%s", msg.p_uid, name,
                  "" if timeout is None else f" (up to {timeout:g} s)")
        self._park(w, timeout)

    def on_channel_destroy(self, msg):
        self._destroy_channel(self._chan(msg.ident))
        self._reply(msg.tag, msg.r)

    def on_channel_add_ref(self, msg):
        rec = self._chan(msg.ident)
        if not rec.ref_count:
            raise ChannelError(f"channel {rec.name or rec.c_uid} (c_uid {rec.c_uid}) is not ref-counted")
        self._add_ref(rec, msg.p_uid)
        self._reply(msg.tag, msg.r)

    def on_channel_release(self, msg):
        rec = self._chan(msg.ident)
        if not rec.ref_count:
            raise ChannelError(f"channel {rec.name or rec.c_uid} (c_uid {rec.c_uid}) is not ref-counted")
        n = rec.holders.get(msg.p_uid, 0)
        if n == 0:
            raise ChannelError(f"process {msg.p_uid} holds no reference to channel "
                               f"{rec.name or rec.c_uid} (c_uid {rec.c_uid})")
        if n == 1:
            del rec.holders[msg.p_uid]
        else:
            rec.holders[msg.p_uid] = n - 1
        proc = self.procs.get(msg.p_uid)
        if proc is not None:
            k = proc.refs.get(rec.c_uid, 0) - 1
            if k <= 0:
                proc.refs.pop(rec.c_uid, None)
            else:
                proc.refs[rec.c_uid] = k
        if not rec.holders:
            self._destroy_channel(rec)
        self._reply(msg.tag, msg.r)

    def _destroy_channel(self, rec):
        """Forget a channel, then destroy it (the registries are consistent
        even if the destroy itself fails)."""
        self.chans.pop(rec.c_uid, None)
        self.chan_sdescs.discard(rec.sdesc)
        if rec.name and self.chan_names.get(rec.name) == rec.c_uid:
            del self.chan_names[rec.name]
        prec = self.pools.get(rec.m_uid)
        if prec is not None:
            prec.channels.discard(rec.c_uid)
        for p in rec.holders:
            proc = self.procs.get(p)
            if proc is not None:
                proc.refs.pop(rec.c_uid, None)
        log.info("channel %d %r destroyed", rec.c_uid, rec.name)
        rec.ch.destroy()

    def _unlink_chan_join(self, w):
        lst = self.chan_joiners.get(w.name)
        if lst is not None:
            if w in lst:
                lst.remove(w)
            if not lst:
                del self.chan_joiners[w.name]

    def _chan_join_timed_out(self, w):
        self._finish_waiter(w)
        self.send_reply(w.r, m.reply_err(
            w.tag, "ChannelTimeout",
            f"channel.join({w.name!r}) timed out: no channel of that name was created"))

    def _dump_memory(self):
        pools = [{"m_uid": p.m_uid, "name": p.name, "size": p.size, "default": p.default,
                  "node": self.node, "channels": sorted(p.channels)} for p in self.pools.values()]
        chans = [{"c_uid": c.c_uid, "name": c.name, "m_uid": c.m_uid, "node": self.node,
                  "capacity": c.capacity, "block_size": c.block_size, "ref_count": c.ref_count,
                  "holders": dict(c.holders), "refs": sum(c.holders.values())}
                 for c in self.chans.values()]
        return pools, chans
