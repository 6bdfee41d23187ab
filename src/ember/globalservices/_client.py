"""The client side of the control plane: how a managed process talks to GS.

Connects lazily on first use from the ``EMBER_*`` environment.  Each thread
gets its own reply channel (created by the client in the infrastructure
pool), so many threads can wait on GS at once without sharing a queue.
Requests carry the reply channel's descriptor and the process's request key
(``EMBER_KEY``, made by GS for this process); GS replies only to reply
channels registered to the process and frees them when it exits.  After ``fork()`` the child builds fresh
reply channels (it must not read its parent's replies).

Reply channels are never destroyed by the client (GS may hold a handle to
them); instead:

- when a thread ends, its reply channel goes back to a per-process free list
  and the next new thread reuses it (so a thread-per-request program does
  not grow the infrastructure pool);
- when a request is abandoned (Ctrl-C, or any exception while waiting), the
  late reply will still come: the thread's channel is retired (left to GS to
  free at process exit) and the thread gets a fresh one, so late replies can
  never fill the channel a later request waits on.
"""
import builtins
import itertools
import os
import sys
import _thread   # (not threading: ~1.5 ms of every start for a lock and a local)
import time
from _collections import deque as _deque   # (the C module: nothing more imported)

from .. import _env, exceptions, messages
from ..descriptors import ChannelDescriptor, ChannelOptions
from ..exceptions import ChannelEmpty, ChannelError, GlobalServicesError, PoolError, ProcessError

_REPLY_CAPACITY = 8
_REPLY_BLOCK = 1024
#: the channels of ours (Connection._own) kept without a look at which are
#: gone: past this many (or twice the live ones), the ones another process
#: destroyed are forgotten
_OWN_PRUNE = 256
# A reply usually arrives within tens of microseconds: spin that long before
# sleeping, so a round trip costs no futex wake-up.  The spin is fixed, not
# adaptive: an adaptive one shrinks below the round trip once a peer sleeps,
# and both sides then stay in the slow, sleeping mode (docs/channels.md).
# EMBER_CONTROL_SPIN sets it (docs/user-guide.md); ``ember run`` refuses a
# bad value, so its processes never see one.
try:
    CONTROL_SPIN = _env.seconds(_env.CONTROL_SPIN, 100e-6)
except ValueError:
    CONTROL_SPIN = 100e-6
#: A wait for GS's reply longer than this (seconds) looks, at each such
#: interval, whether its runtime has ended (runtime.ended_error: a look at
#: its launcher's lock file): a runtime that failed under the wait (GS dead)
#: leaves nobody to answer it, and the waiting thread (a join) held the
#: program at its exit for ever.
ALIVE_LOOK = 1.0
_FOREVER = float("inf")
#: The top bit of a reply channel's c_uid, set on no other channel (GS's
#: c_uids count up from 1, Channel.create's random ones are 63 bits): a
#: process sleeping on one is waiting for GS's answer, which is how ``ember
#: ps`` tells "blocked on a reply from global services" from a wait on a
#: channel of the program (its process slot holds only the c_uid).
REPLY_C_UID_BIT = 1 << 63


def is_reply_c_uid(c_uid):
    """Whether ``c_uid`` is that of a reply channel (:data:`REPLY_C_UID_BIT`)."""
    return bool(c_uid) and c_uid >> 63 == 1


_KIND_ERRORS = (("Process", ProcessError), ("Pool", PoolError), ("Channel", ChannelError))


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


class _ReplyChannel:
    """A thread's reply channel; returns itself to the free list when the
    thread's locals are cleared (thread exit), unless retired."""

    __slots__ = ("ch", "r", "free", "retired", "__weakref__")

    def __init__(self, ch, free):
        self.ch, self.r, self.free, self.retired = ch, ch.sdesc, free, False

    def __del__(self):
        if not self.retired:
            self.free.append((self.ch, self.r))
            return
        try:                    # GS's to free: the handle let go (not collected attached,
            self.ch.detach()    # ResourceWarning under -X dev); detached already, or busy
        except Exception:
            pass


class Connection:
    """One process's connection to GS (see module docstring)."""

    def __init__(self, handles=None, bind=True):
        """``handles``: ``(infrastructure pool, GS's input channel)`` this
        process already holds (the launcher: they are its own, and stay
        its own -- :meth:`close` leaves them alone); ``bind=False``: the
        caller binds its process slot itself (the launcher, once the head
        is created: not on the way to the head's start)."""
        if not _env.in_runtime():
            raise GlobalServicesError(
                "not running inside an ember runtime: call ember.init() first (or "
                "ember.init(address=\"auto\") to attach to a running one), or start the "
                "program with `ember run PROGRAM`")
        from ..channels_c import Channel
        from ..channels_c._channels import _BoardPublisher
        from ..pools_c import Pool

        self._Channel = Channel
        self._BoardPublisher = _BoardPublisher
        self.pid = os.getpid()
        self.p_uid = int(_env.get(_env.P_UID, "0"))
        try:
            self.key = bytes.fromhex(_env.get(_env.KEY, ""))
        except ValueError:
            self.key = b""   # GS will drop our requests: say so at the first call
        self._borrowed = handles is not None
        if handles is not None:
            self.inf_pool, self.gs = handles
        else:
            self.inf_pool = Pool.attach(_env.decode(_env.get(_env.INF_POOL)))
            self.gs = Channel.attach(_env.decode(_env.get(_env.GS_CH)))
        if bind and _env.is_managed():   # say what we block on (ember ps; ember._slots)
            from .. import _slots
            _slots.bind(_env.get(_env.RUNTIME_ID), self.p_uid)
        self._local = _thread._local()
        self._tags = itertools.count(1)
        self._free = []          # reply channels of finished threads
        self._next_c_uid = None  # reserved by GS for our next channel (ChannelRegister)
        self._dpool = None       # the default pool, attached on the first own-made channel
        # The plain channels this process made and registered and has not
        # destroyed: c_uid -> (sdesc, name), name -> c_uid.  Their destroy
        # does not wait for GS (destroy_channel).
        self._own = {}
        self._own_names = {}
        self._own_limit = _OWN_PRUNE   # look for ones destroyed by others past this many
        self._board_desc = None  # the join wake board, as GS sent it (with a reservation)
        self._board = None       # ... attached on the first named create
        self._publisher = None   # ... and our side of it (wakeboard.c)
        self._od_last = self._od_packed = None   # the last options dict it packed, packed
        # c_uids GS reserved for our posted registers (ChannelRegisterPosted:
        # unnamed plain channels, registered without waiting), and the
        # default pool's m_uid and node for their descriptors
        self._posted = _deque()   # lowest first
        self._dflt_loc = None

    def _fork_identity(self):
        """In an os.fork() child of a managed process (its connection is
        new, its p_uid and key its parent's): a p_uid and key of its own
        (``ProcessForked``), in its environment too (a process it starts
        inherits them), and its process slot (docs/user-guide.md)."""
        desc = self.call(messages.ProcessForked, self.pid)
        self.p_uid, self.key = desc["p_uid"], bytes.fromhex(desc["key"])
        os.environ[_env.P_UID] = str(self.p_uid)
        os.environ[_env.KEY] = desc["key"]
        from .. import _slots
        _slots.bind(_env.get(_env.RUNTIME_ID), self.p_uid)

    def _reply_channel(self):
        holder = getattr(self._local, "reply", None)
        if holder is None:
            holder = self._local.reply = _ReplyChannel(self._new_reply_channel(), self._free)
        return holder

    def _new_reply_channel(self):
        """A reply channel from the free list, or a new one: its c_uid has
        REPLY_C_UID_BIT set (`ember ps` reads a wait on it as a wait for
        GS), it spins as GS's answers come fast."""
        try:
            ch, _ = self._free.pop()
        except IndexError:
            c_uid = REPLY_C_UID_BIT | int.from_bytes(os.urandom(8), "little") >> 1
            ch = self._Channel.create(self.inf_pool, capacity=_REPLY_CAPACITY,
                                      block_size=_REPLY_BLOCK, c_uid=c_uid)
            ch.set_spin(CONTROL_SPIN, adaptive=False)
        return ch

    def call(self, msg_cls, *fields, timeout=None):
        """Send a request and wait for its reply; return the reply's value or
        raise the error GS reported.  ``timeout`` (seconds) bounds the local
        wait for the reply (GS keeps the API's own timeouts); running out
        raises GlobalServicesError."""
        holder, tag = self.request(msg_cls, fields)
        return self._wait(holder, tag, msg_cls, timeout)

    def request(self, msg_cls, fields):
        """The sending half of :meth:`call`: returns ``(holder, tag)`` to
        wait on (:meth:`_wait`)."""
        holder = self._reply_channel()
        tag = next(self._tags)
        try:
            make = msg_cls._new if len(msg_cls.fields) == 4 + len(fields) else msg_cls
            data = make(tag, self.p_uid, holder.r, self.key, *fields).pack()
        except (TypeError, ValueError, OverflowError) as exc:
            # e.g. a str with surrogate escapes, an int beyond 64 bits
            kind = next((e for p, e in _KIND_ERRORS if msg_cls.__name__.startswith(p)),
                        GlobalServicesError)
            raise kind(f"cannot send {msg_cls.__name__} request: {type(exc).__name__}: {exc}") from None
        self.gs.send(data)
        return holder, tag

    def _wait(self, holder, tag, msg_cls, timeout, first=None):
        """Wait on the thread's reply channel for the reply to ``tag``
        (replies to other tags, late ones of abandoned requests, are
        dropped); ``first``: a message already received there.  A join
        answered from the join wake board gets the board's fixed binary
        record instead of GS's msgpack reply (wakeboard.h), decoded by the
        receive itself: returned as the ChannelDescriptor it holds."""
        ch = holder.ch
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                if first is None:
                    left = _FOREVER if deadline is None else \
                        max(0.0, deadline - time.monotonic())
                    try:
                        data = ch._recv_reply(min(left, ALIVE_LOOK), ChannelDescriptor)
                    except ChannelEmpty:
                        if left <= ALIVE_LOOK:
                            raise                    # (the call's own timeout)
                        from .. import runtime
                        ended = runtime.ended_error()
                        if ended is not None:
                            raise ended from None
                        continue
                else:
                    data, first = first, None
                if type(data) is tuple:      # answered from the join wake board
                    if data[0] == tag:
                        return data[1]
                    continue
                rep = messages.unpack(data)
                if type(rep) is messages.Reply and rep.ref == tag:
                    break
        except BaseException as exc:
            self.abandon(holder, tag)
            if isinstance(exc, ChannelEmpty):
                raise GlobalServicesError(
                    f"no reply from global services to {msg_cls.__name__} within {timeout} s") from None
            raise
        if rep.status == messages.ERR_OK:
            return rep.value
        raise _error_from_reply(rep)

    def abandon(self, holder, tag):
        """After the wait for ``tag``'s reply raised: tell GS to forget a
        parked wait; a reply may be on its way anyway, so never wait on
        this channel again."""
        try:
            self.gs.send(messages.Cancel(next(self._tags), self.p_uid, holder.r, self.key,
                                         tag).pack(),
                         timeout=0)
        except Exception:
            pass   # best effort: GS frees everything at process exit
        holder.retired = True
        self._local.reply = None

    def create_channel(self, m_uid, user_name, opts, soft, od=None):
        """channel.create: when GS has reserved a c_uid for us (each channel
        reply carries the next one) and the channel goes to the default
        pool, make it here and register it (one round trip, joiners woken
        at once: docs/channels.md, "How create, join and destroy flow");
        otherwise ask GS to have the node's shepherd make it.  An unnamed
        plain channel made with one of the c_uids GS reserved for posted
        registers (``post_c_uids``) is registered without waiting
        (:meth:`_create_posted`)."""
        if user_name is None and self._posted and not soft and m_uid is None and \
                opts.node is None and not opts.ref_count and self._dflt_loc is not None:
            try:
                c_uid = self._posted.popleft()
            except IndexError:           # another thread took the last one
                c_uid = None
            if c_uid is not None:
                d = self._create_posted(c_uid, opts, od)
                if d is not None:
                    return d
                self._posted.appendleft(c_uid)
        c_uid = None
        if od is None:
            od = opts.to_dict()
        d = None
        if user_name and self._board_desc is not None and self._posted and not soft and \
                m_uid is None and opts.node is None and not opts.ref_count:
            # a named plain create: made, published to its parked joiners
            # and registered in one C call (wakeboard.c), posted (not
            # waited for) when it answered joiners
            try:
                c_uid = self._posted.popleft()
            except IndexError:           # another thread took the last one
                c_uid = None
            pool = self._default_pool() if c_uid is not None else None
            if pool is not None:
                d = self._create_published(pool, c_uid, m_uid, user_name, opts, od, True)
            if d is None and c_uid is not None:
                self._posted.appendleft(c_uid)
            c_uid = None
        if d is None and not soft and m_uid is None and self._next_c_uid is not None and \
                opts.node is None:
            with _conn_lock:
                c_uid, self._next_c_uid = self._next_c_uid, None
        if c_uid is not None:
            pool = self._default_pool()
            if pool is None:
                c_uid = None
        ch = None
        if d is None and c_uid is not None and user_name and self._board_desc is not None:
            # a named create: made, published to its parked joiners and
            # registered in one C call (wakeboard.c)
            d = self._create_published(pool, c_uid, m_uid, user_name, opts, od)
        if d is None and c_uid is not None:
            # Owned by our pid until handed over: if we die before GS has
            # it, the shepherd's reclaim of our blocks frees it.
            try:
                ch = self._Channel.create(pool, opts.capacity, opts.block_size, c_uid=c_uid,
                                          owned=True)
            except Exception:
                self._next_c_uid = c_uid  # bad sizes, a full pool: GS words the error
        if d is None and ch is None:
            d = self.call(messages.ChannelCreate, m_uid, user_name, od, bool(soft))
        elif d is None:
            sdesc = ch.sdesc
            d = self._register_answer(
                ch, c_uid, opts,
                lambda: self.call(messages.ChannelRegister, m_uid, user_name, od, sdesc))
        return self._after_create(d, m_uid, opts.node)

    def _register_answer(self, ch, c_uid, opts, answer, keep=False):
        """GS's answer to the register of our channel ``ch`` (``answer()``
        sends or waits for it), recorded as ours.  Refused: ``ch`` is
        destroyed (GS recorded nothing), or with ``keep`` (joiners hold it)
        left ours, freed when we exit; an unknown outcome: detached (the
        shepherd adopts it, or our exit frees it)."""
        try:
            d = answer()
        except (ChannelError, GlobalServicesError):
            if keep:
                ch.detach()
            else:
                ch.destroy()
            raise
        except BaseException:
            ch.detach()
            raise
        self._registered(ch, c_uid, d, opts)
        return d

    def _after_create(self, d, m_uid, node):
        """GS's answer to a create or register carries our next reservations."""
        if isinstance(d, dict):
            nxt = d.pop("next_c_uid", None)
            if nxt is not None:
                self._next_c_uid = nxt
                board = d.pop("wake_board", None)
                if board is not None:
                    self._board_desc = board
            more = d.pop("post_c_uids", None)
            if more is not None:
                if m_uid is None and node is None:
                    self._dflt_loc = (d["m_uid"], d["node"])
                self._posted.extend(range(more[0], more[1]))
        return d

    def _create_posted(self, c_uid, opts, od):
        """An unnamed plain channel made here with ``c_uid`` (one of the
        ``post_c_uids``) and registered with ``ChannelRegisterPosted``,
        which GS answers nothing to: its descriptor is returned as soon as
        the register is in GS's input, ahead of every later request.  None
        if it cannot be made here (a full pool, bad sizes: the caller asks
        GS, which words the error)."""
        pool = self._default_pool()
        if pool is None:
            return None
        try:
            # owned by our pid until handed over: a death before the
            # register is sent leaves a block the shepherd's reclaim frees
            ch = self._Channel.create(pool, opts.capacity, opts.block_size, c_uid=c_uid,
                                      owned=True)
        except Exception:
            return None
        sdesc = ch.sdesc
        if od is None:
            od = opts.to_dict()
        try:
            self.post(messages.ChannelRegisterPosted, None, None, od, sdesc)
        except BaseException:
            ch.destroy()                 # not sent: GS knows nothing of it
            raise
        try:
            ch._take_owner(self.pid, 0)  # GS will have it: it outlives us now
        except Exception:
            pass                         # the node's shepherd took it over first
        ch.detach()
        self._owned(c_uid, sdesc, None)
        m_uid, node = self._dflt_loc
        return _made_desc(m_uid, node, c_uid, None, opts, sdesc)

    def _owned(self, c_uid, sdesc, name):
        """Record a plain channel we made and registered (its destroy need
        not wait: :meth:`destroy_channel`).  Another process may destroy it,
        and nobody tells us: once the map has grown past twice what was
        live at the last look (at least ``_OWN_PRUNE``), forget the ones no
        longer in their pool, so that it stays the size of what is live."""
        own = self._own
        own[c_uid] = (sdesc, name)
        if name:
            self._own_names[name] = c_uid
        if len(own) > self._own_limit:
            for c, (sd, nm) in list(own.items()):
                if not self._still_there(sd) and own.pop(c, None) is not None and \
                        nm is not None and self._own_names.get(nm) == c:
                    del self._own_names[nm]
            self._own_limit = max(_OWN_PRUNE, 2 * len(own))

    def destroy_channel(self, ident):
        """channel.destroy.  A plain channel this process made and
        registered itself (and has not destroyed) is destroyed without
        waiting for GS: if it is still in its pool (GS answers another
        process's destroy of it only once the node has freed it), the
        request goes to GS's input and we return -- every later request,
        anyone's, is handled after it.  Anything else waits for GS's
        answer (docs/channels.md, "How create, join and destroy flow")."""
        own = self._own
        if own:
            c_uid = ident if type(ident) is int else self._own_names.get(ident)
            ent = own.pop(c_uid, None)
            if ent is not None:
                sdesc, name = ent
                if name is not None and self._own_names.get(name) == c_uid:
                    del self._own_names[name]
                if self._still_there(sdesc):
                    self.post(messages.ChannelDestroyOwned, c_uid)
                    return None
        return self.call(messages.ChannelDestroy, ident)

    def _still_there(self, sdesc):
        """Whether the channel of ``sdesc`` is still in its pool (not freed:
        attaching it checks its block's allocation id and header)."""
        try:
            self._Channel.attach(sdesc).detach()
        except Exception:
            return False
        return True

    def start_call(self, msg_cls, *fields):
        """Send a request whose reply :meth:`finish_call` reads later, and
        return at once (a handle for it).  The reply comes on a reply
        channel of its own, not the thread's (a call made meanwhile would
        skip it); the channel goes back to the free list with the handle."""
        holder = _ReplyChannel(self._new_reply_channel(), self._free)
        tag = next(self._tags)
        self.gs.send(msg_cls._new(tag, self.p_uid, holder.r, self.key, *fields).pack())
        return holder, tag

    def finish_call(self, handle, timeout=None):
        """The reply to the request :meth:`start_call` sent (as
        :meth:`call` returns or raises); GlobalServicesError if it did not
        come within ``timeout`` seconds (the handle is then spent)."""
        holder, tag = handle
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                rep = messages.unpack(holder.ch.recv(timeout=left))
                if type(rep) is messages.Reply and rep.ref == tag:
                    break
        except ChannelEmpty:
            holder.retired = True        # the reply may still come: never reused
            raise GlobalServicesError(f"no reply from global services within {timeout} s") \
                from None
        except BaseException:
            holder.retired = True
            raise
        if rep.status == messages.ERR_OK:
            return rep.value
        raise _error_from_reply(rep)

    def post(self, msg_cls, *fields):
        """Send a request GS answers nothing to (a ``ChannelDestroyOwned``)."""
        holder = self._reply_channel()
        self.gs.send(msg_cls._new(next(self._tags), self.p_uid, holder.r, self.key,
                                  *fields).pack())

    def _registered(self, ch, c_uid, d, opts):
        """A channel we made was registered (``d``: GS's descriptor): hand
        its block over (it outlives us now) and remember a plain one."""
        try:
            ch._take_owner(self.pid, 0)      # GS has it: it outlives us now
        except Exception:
            pass                             # the node's shepherd took it over first
        ch.detach()
        if not opts.ref_count:
            self._owned(c_uid, d["sdesc"], d["name"])

    def _create_published(self, pool, c_uid, m_uid, name, opts, od, posted=False):
        """A named create with a reserved c_uid: one C call makes the
        channel, claims the name on the join wake board, queues the
        register for GS, answers and wakes the joiners parked on it and
        then GS (wakeboard.c; a name nobody waits for: only the channel is
        made, and the register sent as usual); then GS's answer to the
        register.  None if it cannot be done here (the board cannot be
        attached, bad sizes, a full pool: the caller's path words it).
        ``posted``: ``c_uid`` is one of the ``post_c_uids`` (a plain
        channel): with joiners answered, GS's answer is not waited for."""
        pub = self._publisher
        if pub is None:
            pub = self._make_publisher(pool)
            if pub is None:
                return None
        holder = self._reply_channel()
        tag = next(self._tags)
        try:
            if od is not self._od_last:          # (the defaults' dict: one object)
                self._od_packed, self._od_last = messages._packb(od), od
            ch, reg, n = pub.create(c_uid, opts.capacity, opts.block_size, opts.ref_count,
                                    name.encode(), tag, holder.r, self._od_packed, posted)
        except Exception:
            return None          # bad sizes, a full pool, a name msgpack refuses: see the caller
        return self._finish_published(ch, reg, n, holder, tag, c_uid, opts, name, posted)

    def _finish_published(self, ch, reg, n, holder, tag, c_uid, opts, name, posted):
        """After the publish (``n`` joiners answered, -1: none claimed, the
        register is ours to send): GS's answer to the register, or with
        ``posted`` and joiners answered, no answer (GS handles the
        ChannelRegisterPublished before any later request, and always
        accepts a claimant's register): the descriptor is made here.  A
        refusal after joiners were answered (not expected: GS accepts a
        claimant's register) leaves the channel ours: they hold it."""
        if posted and n >= 0:
            b = self._board
            d = _made_desc(None if b.default_m_uid < 0 else b.default_m_uid, b.node, c_uid,
                           name, opts, ch.sdesc)
            self._registered(ch, c_uid, d, opts)
            if self._publisher is not None:
                self._publisher.reserve(self)       # (see below)
            return d

        def answer():
            if n < 0:
                self.gs.send(reg)
                return self._wait(holder, tag, messages.ChannelRegister, None)
            # Joiners were just woken, and the kernel often puts one on
            # this very CPU: sleep for GS's answer at once rather than spin
            # (GS, woken last and cold, answers long after any spin) so
            # that the joiner gets the CPU (docs/channels.md)
            ch = holder.ch
            ch.set_spin(0, adaptive=False)
            try:
                return self._wait(holder, tag, messages.ChannelRegister, None)
            finally:
                ch.set_spin(CONTROL_SPIN, adaptive=False)
        d = self._register_answer(ch, c_uid, opts, answer, keep=n > 0)
        if n > 0 and self._publisher is not None:
            # joiners wait for names this process makes: make the next
            # channel's block now, off the next wake-up's path
            self._publisher.reserve(self)
        return d

    def _published(self, ch, reg, n, holder, tag, c_uid, name, posted):
        """The rest of :meth:`_BoardPublisher.create_named` (``channel.create``
        of a name with the default options): GS's answer; the descriptor."""
        d = self._after_create(self._finish_published(ch, reg, n, holder, tag, c_uid,
                                                      _DEFAULT_OPTIONS, name, posted), None, None)
        return ChannelDescriptor.from_dict(d)

    def _make_publisher(self, pool):
        """Attach the join wake board (from the descriptor GS sent) and make
        this connection's publisher on it (wakeboard.c); None if it cannot."""
        try:
            from .wakeboard import Board
            board = self._board = Board.attach(self._board_desc)
            self._publisher = self._BoardPublisher(
                pool, board.alloc, board.lock_alloc, self.inf_pool, self.gs, self.p_uid,
                self.key, board.default_m_uid, board.node, board.TEST_STOP,
                messages._packb(_DEFAULT_OPTIONS.to_dict()))
        except Exception:
            self._board_desc = None
            return None
        if _conn is self:
            _set_fast(self, self._publisher)
        return self._publisher

    def _default_pool(self):
        pool = self._dpool
        if pool is None:
            sdesc = _env.get(_env.DEFAULT_POOL)
            if not sdesc:
                return None
            from ..pools_c import Pool
            try:
                pool = self._dpool = Pool.attach(_env.decode(sdesc))
            except Exception:
                return None
        return pool

    def _drop_default_pool(self):
        _set_fast(None, None)
        pub, self._publisher = self._publisher, None
        if pub is not None:
            pub.release()
        board, self._board = self._board, None
        if board is not None:
            try:
                board.close()
            except Exception:
                pass
        pool, self._dpool = self._dpool, None
        if pool is not None:
            try:
                pool.detach()
            except Exception:
                pass

    def release(self):
        """After ``ProcessDetach``: GS freed every reply channel of this
        process except the one its reply came on, which is ours to destroy;
        the others are only unmapped here."""
        holder = getattr(self._local, "reply", None)
        if holder is not None:
            holder.retired = True
            try:
                holder.ch.destroy()
            except Exception:
                holder.ch.detach()
            self._local.reply = None
        for ch, _ in self._free:
            try:
                ch.detach()
            except Exception:
                pass
        self._free.clear()
        self._drop_default_pool()
        self.gs.detach()
        self.inf_pool.detach()

    def close(self, pool_goes=False):
        """Detach from GS (the launcher's last step; GS frees the reply
        channels of ordinary processes when they exit).  ``pool_goes``:
        the infrastructure pool is destroyed next, with the reply channels
        in it, so they are only let go (a destroy reads every slot of the
        channel: pages this process never touched)."""
        holder = getattr(self._local, "reply", None)
        chans = [ch for ch, _ in self._free]
        if holder is not None:
            holder.retired = True
            chans.append(holder.ch)
            self._local.reply = None
        self._free.clear()
        for ch in chans:
            if pool_goes:
                ch.detach()
            else:
                ch.destroy()
        self._drop_default_pool()
        if not self._borrowed:
            self.gs.detach()
            self.inf_pool.detach()


def _made_desc(m_uid, node, c_uid, name, opts, sdesc):
    """The descriptor (as GS's reply has it) of a plain channel this
    process made and registered without waiting for GS's answer."""
    return {"m_uid": m_uid, "c_uid": c_uid, "name": name, "node": node,
            "capacity": opts.capacity, "block_size": opts.block_size, "ref_count": False,
            "sdesc": sdesc}


_conn = None
_forking = None       # a fork child's connection whose ProcessForked failed (connection())
_conn_lock = _thread.allocate_lock()
_DEFAULT_OPTIONS = ChannelOptions()     # never mutated


def _set_fast(conn, pub):
    """The connection and its join wake board publisher once both exist:
    channel.create of a name with the default options goes straight to the
    publisher (_channels.channel_create), with no Python on the way to the
    joiners' wake-up.  None in a fork child and whenever _conn changes."""
    m = sys.modules.get(_CHANNELS)        # (not imported: nothing to forget)
    if m is not None:
        m._set_fast(conn, pub)


_CHANNELS = __name__.rsplit(".", 2)[0] + ".channels_c._channels"


def _forget_fast():
    _set_fast(None, None)


# (A fork child forgets them in the channels extension's own at-fork hook,
# _channels._after_raw_clone: no Python hook here, which cost every
# template child ~15 page faults of copy-on-write.)


def connection(reset=False):
    """The process's connection to GS, made on first use (fork-safe: a
    forked child of a process that attached with ``ember.init()`` attaches
    anew, as a managed process of its own)."""
    global _conn
    c = _conn
    if c is not None and c.pid == os.getpid() and not reset:
        return c
    reattach = _env.take_reattach()
    if reattach is not None:
        reattach()        # calls connection(reset=True) itself
        return _conn
    with _conn_lock:
        if reset or _conn is None or _conn.pid != os.getpid():
            old = _conn
            _forget_fast()
            # an os.fork() child of a managed process that had connected:
            # a process of its own (not its parent speaking)
            forked = not reset and old is not None and old.p_uid != 0 and \
                str(old.p_uid) == _env.get(_env.P_UID)
            _conn = None
            global _forking
            conn = _forking if forked and _forking is not None and \
                _forking.pid == os.getpid() else None
            _forking = None
            try:
                if conn is None:
                    conn = Connection(bind=not forked)
                if forked:
                    conn._fork_identity()
            except BaseException:
                if forked:    # (GS refused, a timeout, an interrupt): ask again next time,
                    _conn = old     # on the same connection and reply channel (GS has it
                    _forking = conn     # as the parent's until the answer moves it)
                raise
            _conn = conn
        return _conn


def connect(handles, bind=True):
    """Make this process's connection from handles it already holds (see
    :class:`Connection`); returns it."""
    global _conn
    with _conn_lock:
        _forget_fast()
        _conn = Connection(handles, bind)
        return _conn


def drop_connection():
    """Forget this process's connection (after a detach); the handles are
    not destroyed (GS frees a detached process's reply channels)."""
    global _conn
    with _conn_lock:
        _forget_fast()
        _conn = None


def call(msg_cls, *fields):
    return connection().call(msg_cls, *fields)


__all__ = ["Connection", "connection", "drop_connection", "call", "ChannelEmpty"]
