"""GS part: the pool and channel registries of the runtime.

Pools by m_uid and name, channels by c_uid and name, the channels each pool
holds, reference counts (holders by p_uid, mirrored in each process's
``refs``), channel joins that wait for a name.  (A dead process's pool
blocks are swept by the node's shepherd, which maps the pools.)

Uses from the other parts: ``_park``/``_finish_waiter`` (:mod:`.registry`),
``procs`` (:mod:`.processes`), and from the composition (:mod:`.server`):
``_reply``, ``send_reply``, ``node``, ``runtime_tag``, the factories.
"""
import itertools

from .. import messages as m
from . import wakeboard
from ..descriptors import ChannelOptions
from ..exceptions import ChannelBusy, ChannelError, ChannelTimeout, PoolError
from .processes import EXITED
from .registry import _Waiter, _lookup, _timeout, log


_DEFAULTS = ChannelOptions()     # never mutated
_DEFAULT_OPTS = _DEFAULTS.to_dict()


_describe_sdesc = None


def _describe(sdesc):
    """A channel descriptor's fields, checked, without mapping its pool."""
    global _describe_sdesc
    if _describe_sdesc is None:      # channels_c loaded on first use (GS's start-up)
        from ..channels_c import Channel
        _describe_sdesc = Channel.describe
    return _describe_sdesc(sdesc)

def _c_uid_of(sdesc):
    """The c_uid a channel descriptor carries, or None if it is not one."""
    try:
        return _describe(sdesc)[4]
    except (TypeError, ValueError):
        return None

DEFAULT_POOL_NAME = "default"
#: c_uids reserved at once for a process's posted registers (unnamed plain
#: channels it makes and registers without waiting), when it has fewer than
#: POST_LOW left.
POST_BATCH = 32
POST_LOW = 8


class _Pool:
    __slots__ = ("m_uid", "name", "sdesc", "size", "channels", "default", "waiting", "node")

    def __init__(self, m_uid, name, sdesc, size, default=False, node=0):
        self.m_uid, self.name, self.sdesc, self.size = m_uid, name, sdesc, size
        self.node = node          # the node whose shepherd made it (and maps it)
        self.channels = set()     # c_uids of its channels (being created ones too)
        self.default = default
        self.waiting = None       # while the shepherd creates it: [(tag, r, p_uid)] to answer


class _Chan:
    __slots__ = ("c_uid", "m_uid", "name", "sdesc", "capacity", "block_size",
                 "ref_count", "holders", "waiting", "senders", "closing", "node", "owner")

    def __init__(self, c_uid, m_uid, name, opts, node=0):
        self.c_uid, self.m_uid, self.name = c_uid, m_uid, name
        self.node = node          # its pool's node
        self.sdesc = None         # known once the shepherd made it
        self.capacity = opts.capacity
        self.block_size = opts.block_size
        self.ref_count = bool(opts.ref_count)
        self.holders = {}  # p_uid -> count
        self.waiting = None       # while the shepherd creates it: [(tag, r, p_uid)] to answer
        self.senders = {}         # p_uid -> how many of its references are sending ones
        self.closing = False      # GS closed it: its last sending holder went away
        self.owner = None         # p_uid of the process that made and registered it


class MemoryPart:
    """Pools (``pools``, ``pool_names``) and channels (``chans``,
    ``chan_names``, ``chan_sdescs``, ``chan_joiners``).

    Node-scoped: GS decides (uids, names, options) and records; the
    shepherd of the node that owns the memory creates and destroys
    (``node_request`` in :mod:`.server`; the shepherd side is
    :mod:`ember.shepherd.resources`).  A pool or channel being created is
    recorded at once (its name and uid are taken: ``pools_creating``,
    ``chans_creating``) and becomes visible when the shepherd confirms;
    then its requester is answered, with everyone who asked for it
    meanwhile (a soft create of the same name; joiners of the name are
    woken as before).  A destroy forgets the record at once and answers
    its requester when the shepherd confirms.  GS never maps these pools.
    """

    REQUESTS = ((m.PoolCreate, "on_pool_create"), (m.PoolList, "on_pool_list"),
                (m.PoolQuery, "on_pool_query"), (m.PoolDestroy, "on_pool_destroy"),
                (m.PoolDefault, "on_pool_default"),
                (m.ChannelCreate, "on_channel_create"), (m.ChannelList, "on_channel_list"),
                (m.ChannelQuery, "on_channel_query"), (m.ChannelJoin, "on_channel_join"),
                (m.ChannelDestroy, "on_channel_destroy"), (m.ChannelRelease, "on_channel_release"),
                (m.ChannelAddRef, "on_channel_add_ref"),
                (m.ChannelAddSender, "on_channel_add_sender"),
                (m.ChannelRegister, "on_channel_register"),
                (m.ChannelDestroyOwned, "on_channel_destroy_owned"),
                (m.ChannelRegisterPosted, "on_channel_register_posted"),
                (m.ChannelRegisterPublished, "on_channel_register_published"))
    NOTICES = ((m.ShChannelAdoptFailed, "on_channel_adopt_failed"),)

    def _init_memory(self, default_pool):
        """``default_pool``: the runtime's default pool (made by the
        launcher; anything with ``sdesc`` and ``size``), or None."""
        self.pools = {}           # m_uid -> _Pool
        self.pool_names = {}
        self.pools_creating = {}  # m_uid -> _Pool the shepherd is making
        self.pool_names_creating = {}
        self.chans = {}           # c_uid -> _Chan
        self.chan_names = {}
        self.chans_creating = {}  # c_uid -> _Chan the shepherd is making
        self.chan_names_creating = {}
        self.chan_sdescs = set()  # descriptors of the registered channels
        self.chan_joiners = {}    # name -> [ _Waiter ]
        # The join wake board (wakeboard.py): set by serve() when GS maps
        # the infrastructure pool; None in-process (tests) and on no room.
        self.wake_board = None
        self._board_pool = None   # where to make it, at the first join that waits (serve())
        self._board_desc = None
        self._board_told = set()  # p_uids whose create replies carried the board
        self._held = {}           # name -> [requests held back while a creator claims it]
        self._held_retry = set()  # names whose held requests are tried again soon (board busy)
        self._board_busy_since = {}   # (p_uid, tag) of a request held for a busy board -> since
        self._board_unfreed = {}  # reply channel -> its joiner, listed still (board busy)
        self._board_free_later = set()   # ... of those, the ones to free once unlisted
        self._m_uids = itertools.count(2)
        self._c_uids = itertools.count(1)
        self.default_m_uid = None
        if default_pool is not None:
            self.default_m_uid = 1
            self._add_pool(_Pool(1, DEFAULT_POOL_NAME, default_pool.sdesc, default_pool.size,
                                 default=True))

    def _drop_refs(self, rec, c_uid):
        rec.refs.pop(c_uid, None)
        ch = self.chans.get(c_uid)
        if ch is not None:
            ch.holders.pop(rec.p_uid, None)
            if ch.ref_count and not ch.holders:
                self._destroy_channel(ch)
            elif ch.senders.pop(rec.p_uid, None):
                self._close_if_no_sender(ch)

    def _answer(self, waiting, value=None, err=None):
        """Answer everyone in ``waiting`` whose reply channel is still
        registered to them (a requester that exited meanwhile has none)."""
        for tag, r, owner in waiting:
            if self.reply_owner.get(r) != owner:
                continue
            if err is None:
                self._reply(tag, r, value)
            else:
                self.route_reply(self.node, r, m.reply_err(tag, err[0], str(err[1])))

    # ------------------------------------------------------------------ pools
    def _add_pool(self, rec):
        self.pools[rec.m_uid] = rec
        if rec.name:
            self.pool_names[rec.name] = rec.m_uid

    def _pool(self, ident):
        return _lookup(ident, self.pools, self.pool_names, PoolError, "pool", "m_uid")

    def _pool_desc(self, rec):
        return {"m_uid": rec.m_uid, "name": rec.name, "node": rec.node, "size": rec.size,
                "sdesc": rec.sdesc}

    def on_pool_create(self, msg):
        name = msg.user_name
        if name is not None and not isinstance(name, str):
            raise PoolError(f"user_name must be a str or None, not {type(name).__name__}")
        if name and name in self.pool_names:
            rec = self.pools[self.pool_names[name]]
            if msg.soft:
                return self._reply(msg.tag, msg.r, self._pool_desc(rec))
            raise PoolError(f"a pool is already named {name!r} (m_uid {rec.m_uid})")
        if name and name in self.pool_names_creating:
            rec = self.pools_creating[self.pool_names_creating[name]]
            if msg.soft:
                rec.waiting.append((msg.tag, msg.r, msg.p_uid))
                return
            raise PoolError(f"a pool is already named {name!r} (m_uid {rec.m_uid})")
        size = msg.size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise PoolError(f"pool size must be a positive int, got {size!r}")
        m_uid = next(self._m_uids)
        rec = _Pool(m_uid, name or None, None, size)
        rec.waiting = [(msg.tag, msg.r, msg.p_uid)]
        self.pools_creating[m_uid] = rec
        if name:
            self.pool_names_creating[name] = m_uid
        log.debug("pool %d %r requested (%d bytes) by process %s", m_uid, rec.name, size, msg.p_uid)
        self.node_request(rec.node, lambda tag: m.ShPoolCreate(
            tag, m_uid, size, name, self.runtime_tag), self._pool_created)

    def _pool_created(self, done):
        rec = self.pools_creating.pop(done.m_uid, None)
        if rec is None:
            return
        if rec.name and self.pool_names_creating.get(rec.name) == rec.m_uid:
            del self.pool_names_creating[rec.name]
        waiting, rec.waiting = rec.waiting, None
        if done.err:
            err_type, text, expected = done.err
            if expected:
                err_type, text = "PoolError", f"cannot create pool of {rec.size} bytes: {text}"
            log.info("pool %d %r not created: %s", rec.m_uid, rec.name, text)
            return self._answer(waiting, err=(err_type, text))
        rec.sdesc, rec.size = done.sdesc, done.size
        self._add_pool(rec)
        self._event("pool.created", m_uid=rec.m_uid, name=rec.name, size=rec.size,
                    by=waiting[0][2])
        log.info("pool %d %r created (%d bytes) by process %s", rec.m_uid, rec.name, rec.size,
                 waiting[0][2])
        self._answer(waiting, self._pool_desc(rec))

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
        self._destroy_pool(rec, (msg.tag, msg.r, msg.p_uid))

    def _destroy_pool(self, rec, requester=None):
        """Forget a pool, then have its shepherd destroy it; ``requester``
        ``(tag, r, p_uid)`` is answered when the shepherd confirms (else a
        failure is logged)."""
        del self.pools[rec.m_uid]
        if rec.name and self.pool_names.get(rec.name) == rec.m_uid:
            del self.pool_names[rec.name]
        log.info("pool %d %r destroyed", rec.m_uid, rec.name)
        self._event("pool.destroyed", m_uid=rec.m_uid, name=rec.name)
        if not self.nodes.get(rec.node, {"alive": True})["alive"]:
            return
        self.node_request(rec.node, lambda tag: m.ShPoolDestroy(tag, rec.m_uid),
                          lambda done: self._destroyed(f"pool {rec.m_uid}", done, requester))

    def _destroyed(self, what, done, requester):
        if requester is not None:
            self._answer([requester], err=done.err)
        elif done.err:
            log.error("destroying %s: %s: %s", what, done.err[0], done.err[1])

    # --------------------------------------------------------------- channels
    def _chan(self, ident):
        return _lookup(ident, self.chans, self.chan_names, ChannelError, "channel", "c_uid")

    def _chan_desc(self, rec):
        return {"m_uid": rec.m_uid, "c_uid": rec.c_uid, "name": rec.name, "node": rec.node,
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
        if name and name in self.chan_names_creating:
            rec = self.chans_creating[self.chan_names_creating[name]]
            if msg.soft:
                rec.waiting.append((msg.tag, msg.r, msg.p_uid))
                return
            raise ChannelError(f"a channel is already named {name!r} (c_uid {rec.c_uid})")
        if name and self._board_claimed(msg, name) is None:
            return               # held back: handled once the claiming creator has registered
        try:
            opts = ChannelOptions.coerce(msg.options, "channel_options")
        except TypeError as exc:
            raise ChannelError(str(exc)) from None
        node = opts.node
        if node is not None:
            if isinstance(node, bool) or not isinstance(node, int) or node not in self.nodes:
                raise ChannelError(f"cannot create channel {name or ''!r}: no node {node!r} in "
                                   f"this runtime")
            if not self.nodes[node]["alive"]:
                raise ChannelError(f"cannot create channel {name or ''!r}: node {node} was lost")
        if msg.m_uid is None:
            m_uid = self.default_m_uid if node is None else self.nodes[node]["default_m_uid"]
        else:
            m_uid = msg.m_uid
        if isinstance(m_uid, bool) or not isinstance(m_uid, int):
            raise ChannelError(f"m_uid must be an int, not {type(m_uid).__name__}")
        prec = self.pools.get(m_uid)
        if prec is None:
            raise ChannelError(f"cannot create channel {name or ''!r}: no pool with m_uid {m_uid}")
        if node is not None and prec.node != node:
            raise ChannelError(f"cannot create channel {name or ''!r}: pool {m_uid} is on node "
                               f"{prec.node}, not node {node}")
        for field in ("capacity", "block_size"):
            v = getattr(opts, field)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ChannelError(f"ChannelOptions.{field} must be a positive int, got {v!r}")
        c_uid = next(self._c_uids)
        rec = _Chan(c_uid, m_uid, name or None, opts, node=prec.node)
        rec.waiting = [(msg.tag, msg.r, msg.p_uid)]
        self.chans_creating[c_uid] = rec
        if name:
            self.chan_names_creating[name] = c_uid
        prec.channels.add(c_uid)         # the pool cannot go while it is being made
        self.node_request(prec.node, lambda tag: m.ShChannelCreate(
            tag, c_uid, m_uid, prec.sdesc, opts.capacity, opts.block_size), self._channel_created)

    def _channel_created(self, done):
        rec = self.chans_creating.pop(done.c_uid, None)
        if rec is None:
            return
        if rec.name and self.chan_names_creating.get(rec.name) == rec.c_uid:
            del self.chan_names_creating[rec.name]
        waiting, rec.waiting = rec.waiting, None
        prec = self.pools.get(rec.m_uid)
        if done.err:
            if prec is not None:
                prec.channels.discard(rec.c_uid)
            err_type, text, expected = done.err
            if expected:
                err_type = "ChannelError"
                text = f"cannot create channel {rec.name or rec.c_uid!r} in pool {rec.m_uid}: {text}"
            log.info("channel %d %r not created: %s", rec.c_uid, rec.name, text)
            return self._answer(waiting, err=(err_type, text))
        rec.sdesc, rec.capacity, rec.block_size = done.sdesc, done.capacity, done.block_size
        self.chans[rec.c_uid] = rec
        self.chan_sdescs.add(rec.sdesc)
        if rec.name:
            self.chan_names[rec.name] = rec.c_uid
        self._event("channel.created", c_uid=rec.c_uid, name=rec.name, m_uid=rec.m_uid,
                    capacity=rec.capacity, by=waiting[0][2])
        log.info("channel %d %r created in pool %d by process %s", rec.c_uid, rec.name, rec.m_uid,
                 waiting[0][2])
        desc = self._chan_desc(rec)
        # Wake the joiners first: they sleep, the creator is spinning for its reply.
        for w in list(self.chan_joiners.get(rec.name, ())) if rec.name else ():
            self._finish_waiter(w)
            self._add_ref(rec, w.owner)
            self._reply(w.tag, w.r, desc)
        for tag, r, owner in waiting:
            if self.reply_owner.get(r) != owner:
                continue         # exited meanwhile: it holds no reference
            proc = self.procs.get(owner)
            if proc is None or proc.state != EXITED:
                self._add_ref(rec, owner)
            self._reply(tag, r, self._with_reservation(desc, proc))
        if rec.ref_count and not rec.holders:
            self._destroy_channel(rec)   # every holder exited while it was made

    def _with_reservation(self, desc, proc):
        """``desc`` for a channel's creator: with the c_uid reserved for its
        next create (``next_c_uid``), which it makes itself and registers
        (:meth:`on_channel_register`).  Not for the launcher (p_uid 0, no
        record) or a process whose pid GS does not know."""
        if proc is None or proc.os_pid is None or proc.state == EXITED or proc.node != self.node:
            return desc
        posted = proc.posted_c_uids
        more = None
        if posted is None or len(posted) < POST_LOW:
            # a range for its posted registers (ChannelRegisterPosted),
            # which the client uses lowest first (before next_c_uid: a
            # process's unnamed channels get consecutive c_uids)
            lo = next(self._c_uids)
            self._c_uids = itertools.count(lo + POST_BATCH)
            if posted is None:
                posted = proc.posted_c_uids = set()
            posted.update(range(lo, lo + POST_BATCH))
            more = [lo, lo + POST_BATCH]
        if proc.next_c_uid is None:
            proc.next_c_uid = next(self._c_uids)
        extra = {} if more is None else {"post_c_uids": more}
        if self._board_desc is not None and proc.p_uid not in self._board_told:
            self._board_told.add(proc.p_uid)       # once per process
            extra["wake_board"] = self._board_desc
        return dict(desc, next_c_uid=proc.next_c_uid, **extra)

    def on_channel_register_posted(self, msg):
        """A ChannelRegister the client does not wait for (an unnamed plain
        channel, made with one of its ``post_c_uids``): checked and
        recorded the same way; nothing is answered, a refusal is logged
        (a client that keeps the protocol is never refused: it checked the
        arguments and made the channel itself).  The client has handed a
        posted channel's block to nobody already, so a refused one is freed
        by its node (``ShChannelFree``, as a channel forgotten before its
        adopt), if it is the requester's: see :meth:`_free_refused_posted`."""
        self._register_posted(msg, False)

    def _register_posted(self, msg, named):
        """A register nobody waits for (``named``: ChannelRegisterPublished,
        else ChannelRegisterPosted): a refusal is logged, the block freed."""
        try:
            if (not msg.user_name) if named else msg.user_name is not None:
                raise ChannelError("a published register is for named channels only" if named
                                   else "a posted register is for unnamed channels only")
            self._register(msg, posted=True)
        except ChannelError as exc:
            self.warn("bad-register", "refused %s from p_uid %s: %s", type(msg).__name__,
                      msg.p_uid, exc)
            self._free_refused_posted(msg)

    def _free_refused_posted(self, msg):
        """Have the node free the block of a refused posted register, when
        GS can tell it is the requester's: its descriptor names a pool of
        the requester's node, carries a c_uid reserved for the requester's
        posted registers (spent now), and is no channel the runtime knows.
        The node checks the rest (a channel header with that c_uid, the
        block the requester's or nobody's) before it frees anything
        (NodeResources.on_channel_free).  Anything else is left alone: it
        is not GS's to free."""
        proc = self.procs.get(msg.p_uid)
        reserved = proc.posted_c_uids if proc is not None else None
        sdesc = msg.sdesc
        if not reserved or proc.os_pid is None or sdesc in self.chan_sdescs or \
                sdesc in self.reply_owner or sdesc in self.reserved_replies:
            return
        try:
            psd, _, _, _, c_uid, _, _ = _describe(sdesc)
        except (TypeError, ValueError):
            return
        m_uid = self.default_m_uid if msg.m_uid is None else msg.m_uid
        prec = self.pools.get(m_uid) if type(m_uid) is int else None
        if c_uid not in reserved or prec is None or psd != prec.sdesc or prec.node != proc.node:
            return
        reserved.discard(c_uid)
        self.node_notice(prec.node, m.ShChannelFree._new(c_uid, m_uid, prec.sdesc, sdesc,
                                                         proc.os_pid))

    def on_channel_register_published(self, msg):
        """The register of a named plain channel whose parked joiners its
        creator answered from the join wake board (wakeboard.c queued it
        with this code as it claimed the name), made with one of its
        ``post_c_uids``: not waited for, so handled as a posted register
        (nothing answered; a refusal, which a creator that keeps the
        protocol never meets -- the name was free and is claimed -- is
        logged and the block freed as for ChannelRegisterPosted)."""
        self._register_posted(msg, True)

    def on_channel_register(self, msg):
        self._register(msg)

    def _register(self, msg, posted=False):
        """A channel the requester made itself in a pool it maps, with the
        c_uid GS reserved for it: check, record, wake joiners, answer — one
        round trip — then have the node's shepherd adopt it (it checks the
        header and takes the block from the requester: ShChannelAdopt).

        GS does not map the pool, so it checks what it can read: the
        descriptor is well formed (checksum), names this pool, lies within
        it, carries the reserved c_uid and the asked sizes, and is no channel
        GS knows (a registered one, a reply channel, one of the runtime's
        own).  Refused: nothing is recorded, and the requester destroys its
        channel."""
        proc = self.procs.get(msg.p_uid)
        spare = proc.posted_c_uids if proc is not None else None
        reserved = proc.next_c_uid if proc is not None else None
        name = msg.user_name
        if name is not None and not isinstance(name, str):
            raise ChannelError(f"user_name must be a str or None, not {type(name).__name__}")
        mine, from_spare = reserved, False
        if name and spare:
            # a named create made with a posted c_uid (the board's path):
            # posted, or waited when it could answer no joiner
            c_uid = _c_uid_of(msg.sdesc)
            if c_uid in spare:
                mine, from_spare = c_uid, True
        if posted or from_spare:
            reserved = spare
        done = self._board_claimed(msg, name, (msg.p_uid, mine)) if name else ()
        if done is None:
            return               # held back: handled once the claiming creator has registered
        try:
            self._register_checked(msg, proc, reserved, name, done, posted)
        except Exception:
            # refused: the creators held back for the name (this one's
            # claim on the board is gone) decide again, or they would wait
            # for ever for a register that never comes
            if name in self._held:
                self._release_held(name)
            raise

    def _register_checked(self, msg, proc, reserved, name, done, posted):
        """on_channel_register, once the board let the register through.
        ``reserved``: the c_uid reserved for it (next_c_uid), or the set of
        the requester's post_c_uids (``posted``: not answered; or a waited
        named register made with one of them)."""
        spent = type(reserved) is set
        if proc is not None and not spent:
            proc.next_c_uid = None
        if reserved is None or proc.os_pid is None:
            raise ChannelError(f"process {msg.p_uid} has no c_uid reserved: create the channel "
                               f"through channel.create")
        existing = self.chan_names.get(name) if name else None
        if existing is None and name:
            existing = self.chan_names_creating.get(name)
        if existing is not None:
            raise ChannelError(f"a channel is already named {name!r} (c_uid {existing})")
        m_uid = self.default_m_uid if msg.m_uid is None else msg.m_uid
        if isinstance(m_uid, bool) or not isinstance(m_uid, int):
            raise ChannelError(f"m_uid must be an int, not {type(m_uid).__name__}")
        prec = self.pools.get(m_uid)
        if prec is None:
            raise ChannelError(f"cannot create channel {name or ''!r}: no pool with m_uid {m_uid}")
        o = msg.options
        if o == _DEFAULT_OPTS:
            opts = _DEFAULTS          # the common case, without the generic parse
        else:
            try:
                opts = ChannelOptions.coerce(o, "channel_options")
            except TypeError as exc:
                raise ChannelError(str(exc)) from None
        if posted and opts.ref_count:
            raise ChannelError("a posted register is for channels without reference counts only")
        if opts.node is not None or prec.node != self.node or proc.node != self.node:
            raise ChannelError(f"cannot register channel {name or ''!r}: only channels of this "
                               f"node's pools are registered; create it through channel.create")
        sdesc = msg.sdesc
        try:
            psd, offset, _, size, c_uid, capacity, block_size = _describe(sdesc)
        except (TypeError, ValueError) as exc:
            raise ChannelError(f"cannot register channel {name or ''!r}: {exc}") from None
        why = None
        if psd != prec.sdesc:
            why = f"it is not in pool {m_uid}"
        elif offset + size > prec.size or offset + size < offset:
            why = f"its block [{offset}, +{size}) lies outside pool {m_uid} ({prec.size} bytes)"
        elif spent and c_uid not in reserved:
            why = f"its c_uid {c_uid} is not one reserved for process {msg.p_uid}'s posted registers"
        elif not spent and c_uid != reserved:
            why = f"its c_uid {c_uid} is not the one reserved for process {msg.p_uid} ({reserved})"
        elif (capacity, block_size) != (opts.capacity, opts.block_size):
            why = (f"it is {capacity} x {block_size} B, not the {opts.capacity} x "
                   f"{opts.block_size} B asked")
        elif sdesc in self.chan_sdescs or sdesc in self.reply_owner or \
                sdesc in self.reserved_replies:
            why = "it is a channel the runtime knows already"
        if why is not None:
            self.warn("bad-register", "refused ChannelRegister from p_uid %s: %s", msg.p_uid, why)
            raise ChannelError(f"cannot register channel {name or ''!r}: {why}")
        if spent:
            reserved.discard(c_uid)
        rec = _Chan(c_uid, m_uid, name or None, opts, node=prec.node)
        rec.sdesc = sdesc
        rec.owner = msg.p_uid
        self.chans[c_uid] = rec
        self.chan_sdescs.add(sdesc)
        if rec.name:
            self.chan_names[rec.name] = c_uid
        prec.channels.add(c_uid)
        desc = self._chan_desc(rec)
        # the joiners first (they sleep), then the creator; the rest after.
        # Those the creator answered from the wake board get no second reply.
        for w in list(self.chan_joiners.get(rec.name, ())) if rec.name else ():
            self._finish_waiter(w)
            self._add_ref(rec, w.owner)
            if (w.tag, w.r) not in done:
                self._reply(w.tag, w.r, desc)
        self._add_ref(rec, msg.p_uid)
        if not posted:
            self._reply(msg.tag, msg.r, self._with_reservation(desc, proc))
        if self._held:
            self._release_held(rec.name)
        self.node_notice(prec.node, m.ShChannelAdopt._new(c_uid, m_uid, prec.sdesc, sdesc, proc.os_pid))
        self._event("channel.created", c_uid=c_uid, name=rec.name, m_uid=m_uid,
                    capacity=rec.capacity, by=msg.p_uid)
        log.info("channel %d %r created in pool %d by process %s", c_uid, rec.name, m_uid,
                 msg.p_uid)

    def on_channel_adopt_failed(self, msg):
        """The node would not adopt a channel a process registered (not a
        channel, not that process's, or it died and its blocks were
        reclaimed first): forget it; the node holds nothing to free."""
        rec = self.chans.get(msg.c_uid)
        err = msg.err if isinstance(msg.err, list) and len(msg.err) >= 2 else ["?", msg.err]
        log.warning("channel %s %r forgotten: its node did not adopt it: %s: %s", msg.c_uid,
                    rec.name if rec is not None else None, err[0], err[1])
        if rec is not None:
            self._destroy_channel(rec, drop=False)

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
        b = self.wake_board
        if b is None and self._board_pool is not None:
            b = self._board_make()
        if b is not None and name not in self.chan_names_creating and \
                (not self.reply_node or msg.r not in self.reply_node):
            owner = self.procs.get(msg.p_uid)
            if owner is None or owner.node == self.node:
                try:
                    w.listed = b.listen(name, msg.tag, msg.r)
                except wakeboard.Busy:
                    pass         # not listed: GS answers it
                except Exception as exc:
                    log.warning("join wake board: cannot list a joiner of %r: %s", name, exc)
        log.debug("process %s is waiting for channel %r%s", msg.p_uid, name,
                  "" if timeout is None else f" (up to {timeout:g} s)")
        self._park(w, timeout)

    def on_channel_destroy(self, msg):
        rec = self._chan(msg.ident)
        requester = (msg.tag, msg.r, msg.p_uid)
        if rec.owner is None or rec.owner == msg.p_uid or rec.ref_count or \
                not self.nodes.get(rec.node, {"alive": False})["alive"]:
            return self._destroy_channel(rec, requester)
        # Another process's own channel (it made and registered it): it
        # may destroy it without waiting (ChannelDestroyOwned), after
        # checking in the pool that the channel is still there.  So this
        # destroy is answered once the node has freed it: whoever learns
        # of this answer and tells the owner, the owner then finds the
        # channel gone and its destroy raises, as the spec says.
        self._destroy_channel(rec, drop=False)
        c_uid = rec.c_uid

        def freed(done):
            if done.err:
                log.info("freeing channel %d for process %s's destroy: %s", c_uid,
                         requester[2], done.err)
            self._answer([requester])
        self.node_request(rec.node, lambda tag: m.ShChannelDestroy(tag, c_uid), freed)

    def on_channel_destroy_owned(self, msg):
        """The destroy of a channel by the process that made and registered
        it, which does not wait for an answer (it checked in the pool that
        the channel is still there; docs/channels.md).  Nothing is
        answered.  A channel that is gone (destroyed meanwhile by another
        process: the two destroys overlapped) is left alone; one that is
        not the sender's own is refused (logged)."""
        rec = self.chans.get(msg.c_uid) if isinstance(msg.c_uid, int) else None
        if rec is None:
            log.debug("process %s's destroy of its channel %r: already gone", msg.p_uid,
                      msg.c_uid)
            return
        if rec.owner != msg.p_uid or rec.ref_count:
            self.warn("bad-destroy-owned", "refused ChannelDestroyOwned of channel %s from "
                      "p_uid %s: it is not that process's own plain channel", msg.c_uid, msg.p_uid)
            return
        self._destroy_channel(rec)

    def on_channel_add_ref(self, msg):
        rec = self._chan(msg.ident)
        if not rec.ref_count:
            raise ChannelError(f"channel {rec.name or rec.c_uid} (c_uid {rec.c_uid}) is not ref-counted")
        self._add_ref(rec, msg.p_uid)
        self._reply(msg.tag, msg.r)

    def on_channel_add_sender(self, msg):
        """A reference that also makes the caller a sender of the channel:
        when its last sender releases (or dies), GS closes the channel, so
        its receivers drain what is queued and then get ChannelClosed."""
        rec = self._chan(msg.ident)
        if not rec.ref_count:
            raise ChannelError(f"channel {rec.name or rec.c_uid} (c_uid {rec.c_uid}) is not ref-counted")
        if rec.closing:
            raise ChannelError(f"channel {rec.name or rec.c_uid} (c_uid {rec.c_uid}) was closed: "
                               f"its last sender went away")
        self._add_ref(rec, msg.p_uid)
        rec.senders[msg.p_uid] = rec.senders.get(msg.p_uid, 0) + 1
        self._reply(msg.tag, msg.r)

    def _close_if_no_sender(self, rec):
        if rec.senders or rec.closing or rec.c_uid not in self.chans:
            return
        rec.closing = True
        log.info("channel %d %r closed: its last sender went away", rec.c_uid, rec.name)

        def done(msg):
            if msg.err:
                log.warning("closing channel %d: %s", rec.c_uid, msg.err)
        self.node_request(rec.node, lambda tag: m.ShChannelClose(tag, rec.c_uid), done)

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
        # a release gives up a sending reference first when the holder has
        # no plain one left to give
        s = rec.senders.get(msg.p_uid, 0)
        if s > n - 1:
            if s == 1:
                del rec.senders[msg.p_uid]
            else:
                rec.senders[msg.p_uid] = s - 1
        proc = self.procs.get(msg.p_uid)
        if proc is not None:
            k = proc.refs.get(rec.c_uid, 0) - 1
            if k <= 0:
                proc.refs.pop(rec.c_uid, None)
            else:
                proc.refs[rec.c_uid] = k
        if not rec.holders:
            self._destroy_channel(rec)
        elif s > n - 1 and not rec.senders:
            self._close_if_no_sender(rec)
        self._reply(msg.tag, msg.r)

    def _destroy_channel(self, rec, requester=None, drop=True):
        """Forget a channel and answer ``requester`` ``(tag, r, p_uid)`` at
        once; then have its shepherd free it (``ShChannelDrop``, no answer:
        the registries are consistent whatever the free's outcome, and the
        shepherd logs a failure).  Messages to a shepherd go out in order, so
        a pool destroy that follows finds the channel freed."""
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
        self._event("channel.destroyed", c_uid=rec.c_uid, name=rec.name)
        if not self.nodes.get(rec.node, {"alive": True})["alive"]:
            if requester is not None:
                self._answer([requester])
            return
        if drop and not self.free_held_adopt(rec.c_uid):
            self.node_notice(rec.node, m.ShChannelDrop._new([rec.c_uid]))
        if requester is not None:
            self._answer([requester])

    def _node_lost_memory(self, node):
        """Node ``node`` is gone: forget its channels and pools (their
        memory went with it; handles to them raise on use)."""
        for rec in [c for c in self.chans.values() if c.node == node]:
            self.chans.pop(rec.c_uid, None)
            self.chan_sdescs.discard(rec.sdesc)
            if rec.name and self.chan_names.get(rec.name) == rec.c_uid:
                del self.chan_names[rec.name]
            for p in rec.holders:
                proc = self.procs.get(p)
                if proc is not None:
                    proc.refs.pop(rec.c_uid, None)
            self._event("channel.lost", c_uid=rec.c_uid, name=rec.name, node=node)
        for rec in [p for p in self.pools.values() if p.node == node]:
            del self.pools[rec.m_uid]
            if rec.name and self.pool_names.get(rec.name) == rec.m_uid:
                del self.pool_names[rec.name]

    def _unlink_chan_join(self, w):
        if w.listed:
            w.listed = False
            self._board_unlist(w)
        lst = self.chan_joiners.get(w.name)
        if lst is not None:
            if w in lst:
                lst.remove(w)
            if not lst:
                del self.chan_joiners[w.name]

    # ------------------------------------------------- the join wake board
    # (wakeboard.py; docs/channels.md, "The join wake board")
    def _board_claimed(self, msg, name, mine=None):
        """Before ``msg`` takes ``name`` (a register by ``mine`` = (p_uid,
        c_uid), or a create through GS): None if it is held back (another
        creator claimed the name on the board: its register is on the way
        and must win; or the board is busy: retried shortly), else the
        joiners that ``mine`` answered from the board (the entry is freed:
        the name's joiners are GS's alone again)."""
        b = self.wake_board
        if b is None or not name or (name not in self.chan_joiners and name not in self._held):
            return ()
        try:
            done = b.take(name, mine, self._board_alive)
        except wakeboard.Busy:
            return self._board_busy(msg, name, mine)
        except Exception as exc:
            log.warning("join wake board: cannot free the entry of %r: %s", name, exc)
            return ()
        if self._board_busy_since:
            self._board_busy_since.pop((msg.p_uid, msg.tag), None)
        if done is wakeboard.HELD:
            self._hold(msg, name)
            return None
        for w in self.chan_joiners.get(name, ()):
            w.listed = False
        return done

    def _board_busy(self, msg, name, mine):
        """``msg`` (a create or register of ``name``) found the board's
        lock busy: hold it back and try again in RETRY s, for BUSY_GRACE at
        most, then refuse it (ChannelBusy: nothing was created; the
        requester tries again), so that a holder stopped on the lock stalls
        nobody but itself.  Except the claimant's own register (the entry
        claimed by ``mine``): it must win, joiners may hold its channel
        already, so it waits for the holder to go on or die."""
        key = (msg.p_uid, msg.tag)
        now = self.clock()
        since = self._board_busy_since.setdefault(key, now)
        if now - since < wakeboard.BUSY_GRACE or \
                (mine is not None and self.wake_board.claimed_by(name, mine)):
            self._hold(msg, name, retry=True)
            return None
        del self._board_busy_since[key]
        raise ChannelBusy(f"cannot create channel {name!r} now: the join wake board's lock stayed "
                          f"busy for {wakeboard.BUSY_GRACE:g} s (held by pid "
                          f"{self.wake_board.holder()}, which does not go on: stopped?); nothing "
                          f"was created: try again")

    def _board_make(self):
        """Make the board (once: at the first join that waits, so that a
        run without one pays nothing for it)."""
        pool, self._board_pool = self._board_pool, None
        try:
            self.wake_board = wakeboard.Board.make(pool, self.default_m_uid, self.node)
            self._board_desc = self.wake_board.descriptor()
        except Exception as exc:
            log.warning("no join wake board (joins are woken through GS): %s", exc)
            self.wake_board = None
        return self.wake_board

    def _board_alive(self, p_uid):
        # A creator GS saw exit has no register on the way any more: its
        # exit notice reached GS behind anything it sent.
        proc = self.procs.get(p_uid)
        return proc is not None and proc.state != EXITED

    def _hold(self, msg, name, retry=False):
        self._held.setdefault(name, []).append((msg, self._origin))
        if retry and name not in self._held_retry:     # one timer per name
            self._held_retry.add(name)
            self.call_later(wakeboard.RETRY, self._retry_held, name)

    def _retry_held(self, name):
        self._held_retry.discard(name)
        self._release_held(name)

    def _release_held(self, name):
        """Handle the requests held back for ``name``, as if they came now.
        One that is not held again has ended (answered, refused, or on its
        way to the node): its busy-board entry (since when it waits, for
        BUSY_GRACE) goes too, whichever way it ended (the name's joiners
        gone meanwhile, so the board was not looked at; the name taken)."""
        for msg, origin in self._held.pop(name, ()):
            saved, self._origin = self._origin, origin
            try:
                self.dispatch(msg)
            finally:
                self._origin = saved
                if self._board_busy_since:
                    self._board_busy_end(msg, name)

    def _board_busy_end(self, msg, name):
        key = (msg.p_uid, msg.tag)
        if key in self._board_busy_since and \
                not any(held is msg for held, _ in self._held.get(name, ())):
            del self._board_busy_since[key]

    def _board_exited(self, p_uid):
        """Process ``p_uid`` exited: drop its claims, handle what they held.
        Only a process GS told the board (a create reply carried its
        descriptor) can have claimed an entry: the others cost no look at
        the board.  (A forked child makes a connection of its own, which
        knows no board until GS tells it; one that shares its parent's
        p_uid exits unseen by GS, and its parent's exit covers it.)"""
        if self._board_busy_since:        # its requests held for a busy board are gone
            for key in [k for k in self._board_busy_since if k[0] == p_uid]:
                del self._board_busy_since[key]
        if p_uid not in self._board_told:
            return
        self._board_told.discard(p_uid)
        self._board_own_held(p_uid)
        self._board_drop_claims(p_uid)

    def _board_own_held(self, p_uid):
        """Process ``p_uid`` exited with its posted register
        (ChannelRegisterPublished) held back: GS met it while the creator
        still held the board, answering its joiners, and a creator that
        does not wait for GS may exit within the retry's 10 ms.  The
        register came before the exit (which reaches GS behind anything the
        process sent): handle it now, as then; the exit freed the board of
        it.  (Held again -- the board busy with another holder, stopped --
        it goes with the exit, as a waited register does.)"""
        own = m.ChannelRegisterPublished
        for name in [n for n, items in self._held.items()
                     if any(type(msg) is own and msg.p_uid == p_uid for msg, _ in items)]:
            items = self._held.pop(name)
            rest = [it for it in items if not (type(it[0]) is own and it[0].p_uid == p_uid)]
            if rest:
                self._held[name] = rest
            for msg, origin in items:
                if type(msg) is own and msg.p_uid == p_uid:
                    saved, self._origin = self._origin, origin
                    try:
                        self.on_channel_register_published(msg)
                    finally:
                        self._origin = saved

    def _board_drop_claims(self, p_uid):
        b = self.wake_board
        if b is None:
            return
        try:
            dropped = b.drop_claims(p_uid)       # one hold of the lock, one scan
        except wakeboard.Busy:
            self.call_later(wakeboard.RETRY, self._board_drop_claims, p_uid)
            return
        for name, state in dropped.items():
            if state == wakeboard.WOKEN:
                # Its register was held back (the board busy: it was stopped
                # holding it) and goes with its exit; its block went with
                # the node's reclaim of its blocks, as when that beats the
                # adopt of a client-made channel.
                log.warning("join wake board: process %s exited after it answered the joiners "
                            "of %r, before GS registered its channel", p_uid, name)
            self._release_held(name)

    def _board_unlist(self, w):
        """Unlist a joiner whose wait ended without the name being taken;
        if the board stays busy, its reply channel is not freed (a creator
        may still write to it) until it is unlisted."""
        try:
            self.wake_board.unlisten(w.name, w.tag, w.r)
            self._board_unfreed.pop(w.r, None)
        except wakeboard.Busy:
            self._board_unfreed[w.r] = w
            self.call_later(wakeboard.RETRY, self._board_retry_unlist, w)
        except Exception as exc:
            log.warning("join wake board: cannot unlist a joiner of %r: %s", w.name, exc)

    def _board_retry_unlist(self, w):
        if self._board_unfreed.get(w.r) is not w:
            return
        self._board_unlist(w)
        if w.r not in self._board_unfreed and w.r in self._board_free_later:
            self._board_free_later.discard(w.r)
            self._free_reply_channel(w.r)

    def _board_keeps(self, r):
        """Whether reply channel ``r`` must not be freed yet (a listed
        joiner's, not unlisted: the board was busy); it is freed once
        unlisted."""
        if r in self._board_unfreed:
            self._board_free_later.add(r)
            return True
        return False

    def _chan_join_timed_out(self, w):
        if w.listed:
            delay = 0.01
            try:
                answered = self.wake_board.answered(w.name, w.tag, w.r)
            except wakeboard.Busy:
                # Cannot tell yet: look again shortly, backing off, and for
                # BUSY_GRACE at most: a holder stopped on the lock must not
                # keep the joiner past its timeout for ever.  Timed out then, the joiner drops an
                # answer the holder may still send it (another tag by then),
                # and holds no reference in GS of that channel.
                now = self.clock()
                if w.busy_since is None:
                    w.busy_since = now
                waited = now - w.busy_since
                answered = waited < wakeboard.BUSY_GRACE
                delay = min(max(wakeboard.RETRY, 2 * waited), 0.2)
            except Exception:
                answered = False
            if answered:
                # A creator answered it from the board and its register is
                # on GS's input already: that register ends this wait.
                w.timer = self.call_later(delay, self._waiter_timed_out, w)
                return
        self._finish_waiter(w)
        self.route_reply(self.node, w.r, m.reply_err(
            w.tag, "ChannelTimeout",
            f"channel.join({w.name!r}) timed out: no channel of that name was created"))

    def _dump_memory(self):
        pools = [{"m_uid": p.m_uid, "name": p.name, "size": p.size, "default": p.default,
                  "node": p.node, "channels": sorted(p.channels)} for p in self.pools.values()]
        chans = [{"c_uid": c.c_uid, "name": c.name, "m_uid": c.m_uid, "node": c.node,
                  "capacity": c.capacity, "block_size": c.block_size, "ref_count": c.ref_count,
                  "holders": dict(c.holders), "refs": sum(c.holders.values())}
                 for c in self.chans.values()]
        # being made by their node's shepherd (not visible to requests yet)
        pools += [{"m_uid": p.m_uid, "name": p.name, "size": p.size, "default": False,
                   "node": p.node, "channels": [], "being_made": True}
                  for p in self.pools_creating.values()]
        chans += [{"c_uid": c.c_uid, "name": c.name, "m_uid": c.m_uid, "node": c.node,
                   "capacity": c.capacity, "block_size": c.block_size, "ref_count": c.ref_count,
                   "holders": {}, "refs": 0, "being_made": True}
                  for c in self.chans_creating.values()]
        return pools, chans
