"""GS part: the registry of named objects (Queue, Pipe, Lock, ... of
:mod:`ember.objects`).

An object record holds what a process needs to attach the object (``kind``,
an opaque descriptor made and read by the client only — GS never decodes
it — and the descriptors of the channels GS made for it), its name (unique
among live objects; its own namespace, apart from channels'), its lifetime,
its holders (p_uid -> count) and the parts GS destroys with it:

- ``channels``: channels GS creates for the object in the default pool
  (registered as ordinary unnamed channels: ``channel.get_list`` shows them,
  teardown destroys them);
- ``parts``: pool allocations the client made for it, freed with it:
  ``["sync", kind, alloc sdesc]`` (an ember.sync_c object: marked destroyed,
  then freed) or ``["alloc", alloc sdesc]``;
- ``children``: objects made in the same request that keep this one alive
  (a Pipe's two ends): each child holds one reference on its parent and,
  when it ends, *closes* the channels it names (its outgoing direction), so
  the peer end drains what was sent and then reads end-of-file.

Lifetimes:

- ``"runtime"``: until ``ObjectDestroy`` or teardown;
- ``"owner"``: until its creating process ends (or ``ObjectDestroy``);
- ``"refcount"``: until its last holder releases it or dies (``ObjectCreate``,
  ``ObjectAttach`` and ``ObjectAddRef`` add one; ``ObjectRelease`` or the
  holder's exit drop them).  The default of unnamed objects.

``ObjectAttach(name, kind, timeout)`` waits (parked, with a server-side
timeout) for a name not created yet, like ``channel.join``.

Uses from the other parts: ``_park``/``_finish_waiter`` and ``_Waiter``
(:mod:`.registry`), ``procs`` (:mod:`.processes`), ``chans``/``pools``/
``chan_sdescs``/``_c_uids``/``_destroy_channel``/``default_m_uid`` and the
channel factory (:mod:`.memory`), ``_reply``/``send_reply`` from the
composition.  :mod:`.processes` calls :meth:`ObjectsPart._objects_exited`
when a process ends.
"""
import itertools
import struct

from .. import messages as m
from ..descriptors import ChannelOptions
from ..exceptions import ObjectError, ObjectTimeout
from .memory import _Chan
from .registry import _Waiter, _lookup, _timeout, log

LIFETIMES = ("runtime", "owner", "refcount")
#: At most this many channels, parts and children in one ObjectCreate.
MAX_PARTS = 16


class _Obj:
    __slots__ = ("o_uid", "name", "kind", "lifetime", "owner", "desc", "c_uids", "sdescs",
                 "parts", "closes", "parent", "children", "holders", "loans")

    def __init__(self, o_uid, name, kind, lifetime, owner, desc):
        self.o_uid, self.name, self.kind, self.lifetime = o_uid, name, kind, lifetime
        self.owner, self.desc = owner, desc
        self.c_uids = []          # channels GS made for it (destroyed with it)
        self.sdescs = []          # their descriptors (for the client)
        self.parts = []           # allocations to free with it
        self.closes = []          # c_uids to close when it ends (a Pipe end: its direction)
        self.parent = None        # o_uid of the object it keeps alive
        self.children = 0         # live children keeping it alive
        self.holders = {}         # p_uid -> count
        self.loans = {}           # token -> p_uid that lent one of its references (pickled)

    def desc_dict(self):
        return {"o_uid": self.o_uid, "name": self.name, "kind": self.kind,
                "lifetime": self.lifetime, "desc": self.desc, "channels": list(self.sdescs),
                "owner": self.owner}


class _ObjWaiter(_Waiter):
    """An ``ObjectAttach`` parked until the name is created."""

    __slots__ = ("obj_name", "kind")

    def on_timeout(self, gs):
        gs._finish_waiter(self)
        gs.send_reply(self.r, m.reply_err(
            self.tag, "ObjectTimeout",
            f"attach({self.obj_name!r}) timed out: no object of that name was created"))

    def unlink(self, gs):
        lst = gs.obj_joiners.get(self.obj_name)
        if lst is not None:
            if self in lst:
                lst.remove(self)
            if not lst:
                del gs.obj_joiners[self.obj_name]

    def dump(self):
        return {"owner": self.owner, "tag": self.tag, "kind": "object.attach",
                "name": self.obj_name, "object_kind": self.kind,
                "deadline": None if self.timer is None else self.timer.deadline}


class ObjectsPart:
    """Named objects: ``objs`` (o_uid -> _Obj), ``obj_names`` (name ->
    o_uid), ``obj_joiners`` (name -> [waiter])."""

    REQUESTS = ((m.ObjectCreate, "on_object_create"), (m.ObjectAttach, "on_object_attach"),
                (m.ObjectAddRef, "on_object_add_ref"), (m.ObjectRelease, "on_object_release"),
                (m.ObjectDestroy, "on_object_destroy"), (m.ObjectList, "on_object_list"),
                (m.ObjectQuery, "on_object_query"), (m.ObjectLend, "on_object_lend"),
                (m.ObjectClaim, "on_object_claim"))
    NOTICES = ()

    def _init_objects(self):
        self.objs = {}
        self.obj_names = {}
        self.obj_joiners = {}
        self._o_uids = itertools.count(1)
        self._loan_tokens = itertools.count(1)

    # ------------------------------------------------------------ helpers
    def _obj(self, ident):
        return _lookup(ident, self.objs, self.obj_names, ObjectError, "object", "o_uid")

    def _obj_add_ref(self, rec, p_uid):
        rec.holders[p_uid] = rec.holders.get(p_uid, 0) + 1

    def _obj_make_channel(self, spec):
        if not (isinstance(spec, list) and len(spec) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in spec)):
            raise ObjectError(f"a channel spec must be [capacity, block_size], got {spec!r}")
        m_uid = self.default_m_uid
        prec = self.pools.get(m_uid) if m_uid is not None else None
        if prec is None:
            raise ObjectError("this runtime has no default pool to make the object's channels in")
        c_uid = next(self._c_uids)
        try:
            ch = self._make_channel(prec.pool, capacity=spec[0], block_size=spec[1], c_uid=c_uid)
        except (MemoryError, ValueError) as exc:
            raise ObjectError(f"cannot create a channel of {spec[0]} x {spec[1]} bytes for the "
                              f"object: {exc}") from None
        crec = _Chan(c_uid, m_uid, None, ch, ChannelOptions(capacity=spec[0], block_size=spec[1]))
        self.chans[c_uid] = crec
        self.chan_sdescs.add(crec.sdesc)
        prec.channels.add(c_uid)
        return crec

    def _obj_check_part(self, part):
        """A part must be a live allocation of the default pool (GS frees
        nothing else on a client's word: not its own channels, not another
        pool's memory)."""
        from ..pools_c import Allocation
        prec = self.pools.get(self.default_m_uid) if self.default_m_uid is not None else None
        try:
            a = Allocation.attach(part[-1])
            in_default = prec is not None and a.pool.sdesc == prec.pool.sdesc
        except Exception as exc:
            raise ObjectError(f"a part names no live allocation: {type(exc).__name__}: {exc}") \
                from None
        if not in_default:
            raise ObjectError("a part must be an allocation of the runtime's default pool")
        offsets = {struct.unpack_from("<Q", c.sdesc, 104)[0] for c in self.chans.values()
                   if c.m_uid == self.default_m_uid}
        if a.offset in offsets:
            raise ObjectError("a part must not be a channel's memory")

    # ------------------------------------------------------------ requests
    def on_object_create(self, msg):
        kind, name, lifetime = msg.kind, msg.user_name, msg.lifetime
        if not isinstance(kind, str) or not kind:
            raise ObjectError(f"object kind must be a non-empty str, got {kind!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ObjectError(f"object name must be a non-empty str or None, got {name!r}")
        if lifetime is None:
            lifetime = "refcount" if name is None else "runtime"
        if lifetime not in LIFETIMES:
            raise ObjectError(f"lifetime must be one of {', '.join(map(repr, LIFETIMES))}, "
                              f"got {lifetime!r}")
        if not isinstance(msg.desc, bytes):
            raise ObjectError("object descriptor must be bytes")
        specs, parts, children = msg.channels or [], msg.parts or [], msg.children or []
        for what, v in (("channels", specs), ("parts", parts), ("children", children)):
            if not isinstance(v, list) or len(v) > MAX_PARTS:
                raise ObjectError(f"{what} must be a list of at most {MAX_PARTS} entries")
        for p in parts:
            if not (isinstance(p, list) and p and p[0] in ("sync", "alloc")
                    and isinstance(p[-1], bytes)):
                raise ObjectError(f"a part must be ['sync', kind, sdesc] or ['alloc', sdesc], "
                                  f"got {p!r}")
        for c in children:
            if not (isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and c[0]
                    and isinstance(c[1], list)
                    and all(isinstance(i, int) and 0 <= i < len(specs) for i in c[1])):
                raise ObjectError(f"a child must be [kind, [channel index, ...]], got {c!r}")
        for p in parts:
            self._obj_check_part(p)
        if name and name in self.obj_names:
            rec = self.objs[self.obj_names[name]]
            if msg.soft and rec.kind == kind:
                self._obj_add_ref(rec, msg.p_uid)
                return self._reply(msg.tag, msg.r, rec.desc_dict())
            raise ObjectError(f"an object is already named {name!r} ({rec.kind}, o_uid {rec.o_uid})")
        if msg.p_uid not in self.procs and lifetime == "owner":
            raise ObjectError("lifetime 'owner' needs a managed process as creator")
        rec = _Obj(next(self._o_uids), name, kind, lifetime, msg.p_uid, msg.desc)
        made = []
        try:
            for spec in specs:
                made.append(self._obj_make_channel(spec))
        except Exception:
            for crec in made:
                self._step("destroying a channel of a failed object", self._destroy_channel, crec)
            raise
        rec.c_uids = [c.c_uid for c in made]
        rec.sdescs = [c.sdesc for c in made]
        rec.parts = list(parts)
        self.objs[rec.o_uid] = rec
        if name:
            self.obj_names[name] = rec.o_uid
        out = rec.desc_dict()
        if children:
            kids = []
            for ckind, closes in children:
                kid = _Obj(next(self._o_uids), None, ckind, "refcount", msg.p_uid, b"")
                kid.parent = rec.o_uid
                kid.closes = [rec.c_uids[i] for i in closes]
                self._obj_add_ref(kid, msg.p_uid)
                self.objs[kid.o_uid] = kid
                rec.children += 1
                kids.append(kid.o_uid)
            out["children"] = kids
        else:
            self._obj_add_ref(rec, msg.p_uid)
        log.info("object %d %s %r (%s) created by process %s", rec.o_uid, kind, name, lifetime,
                 msg.p_uid)
        for w in list(self.obj_joiners.get(name, ())) if name else ():
            if w.kind and w.kind != kind:
                continue
            self._finish_waiter(w)
            self._obj_add_ref(rec, w.owner)
            self._reply(w.tag, w.r, out)
        self._reply(msg.tag, msg.r, out)

    def on_object_attach(self, msg):
        name, kind = msg.name, msg.kind
        if not isinstance(name, str) or not name:
            raise ObjectError(f"attach needs a non-empty str name, got {name!r}")
        if kind is not None and not isinstance(kind, str):
            raise ObjectError(f"kind must be a str or None, got {kind!r}")
        timeout = _timeout(msg.timeout, ObjectError)
        o_uid = self.obj_names.get(name)
        if o_uid is not None:
            rec = self.objs[o_uid]
            if kind and rec.kind != kind:
                raise ObjectError(f"object {name!r} is a {rec.kind}, not a {kind}")
            self._obj_add_ref(rec, msg.p_uid)
            return self._reply(msg.tag, msg.r, rec.desc_dict())
        if timeout == 0:
            raise ObjectTimeout(f"attach({name!r}) timed out: no object of that name "
                                     f"was created")
        w = _ObjWaiter(msg.tag, msg.r, msg.p_uid)
        w.obj_name, w.kind = name, kind
        self.obj_joiners.setdefault(name, []).append(w)
        self._park(w, timeout)

    def on_object_add_ref(self, msg):
        rec = self._obj(msg.o_uid)
        self._obj_add_ref(rec, msg.p_uid)
        self._reply(msg.tag, msg.r)

    def on_object_lend(self, msg):
        """A handle is being pickled: its process takes one more reference
        and lends it to whoever unpickles it (the reply is the loan's token);
        the loan is the lender's until claimed, dropped with the lender."""
        rec = self._obj(msg.o_uid)
        self._obj_add_ref(rec, msg.p_uid)
        token = next(self._loan_tokens)
        rec.loans[token] = msg.p_uid
        self._reply(msg.tag, msg.r, token)

    def on_object_claim(self, msg):
        """A handle was unpickled: take the loan over (the lender's
        reference becomes the claimer's), or add a reference if there is no
        such loan any more (claimed already, or its lender ended)."""
        rec = self._obj(msg.o_uid)
        lender = rec.loans.pop(msg.token, None) if isinstance(msg.token, int) else None
        self._obj_add_ref(rec, msg.p_uid)
        if lender is not None and rec.holders.get(lender, 0) > 0:
            n = rec.holders[lender] - 1
            if n:
                rec.holders[lender] = n
            else:
                del rec.holders[lender]
        self._reply(msg.tag, msg.r)

    def on_object_release(self, msg):
        o_uid = msg.o_uid
        rec = self.objs.get(o_uid) if isinstance(o_uid, int) and not isinstance(o_uid, bool) else None
        if rec is None:      # already destroyed (by name, owner, teardown): nothing to do
            return self._reply(msg.tag, msg.r, False)
        n = rec.holders.get(msg.p_uid, 0)
        if n == 0:
            raise ObjectError(f"process {msg.p_uid} holds no reference to object {o_uid}")
        if n == 1:
            del rec.holders[msg.p_uid]
        else:
            rec.holders[msg.p_uid] = n - 1
        self._obj_maybe_end(rec)
        self._reply(msg.tag, msg.r, True)

    def on_object_destroy(self, msg):
        self._obj_end(self._obj(msg.ident))
        self._reply(msg.tag, msg.r)

    def on_object_list(self, msg):
        self._reply(msg.tag, msg.r, [[o.o_uid, o.name, o.kind, o.lifetime]
                                     for o in self.objs.values() if o.parent is None])

    def on_object_query(self, msg):
        rec = self._obj(msg.ident)
        d = rec.desc_dict()
        d["holders"] = sum(rec.holders.values())
        self._reply(msg.tag, msg.r, d)

    # ------------------------------------------------------------ ends
    def _obj_maybe_end(self, rec):
        if rec.lifetime == "refcount" and not rec.holders and not rec.children:
            self._obj_end(rec)

    def _obj_end(self, rec):
        """Forget the object, close what it closes, destroy its parts, release
        its parent.  Every step is independent of the others' failure."""
        if self.objs.pop(rec.o_uid, None) is None:
            return
        if rec.name and self.obj_names.get(rec.name) == rec.o_uid:
            del self.obj_names[rec.name]
        log.info("object %d %s %r ended", rec.o_uid, rec.kind, rec.name)
        for c_uid in rec.closes:
            crec = self.chans.get(c_uid)
            if crec is not None:
                self._step(f"closing channel {c_uid} of object {rec.o_uid}", crec.ch.close)
        for c_uid in rec.c_uids:
            crec = self.chans.get(c_uid)
            if crec is not None:
                self._step(f"destroying channel {c_uid} of object {rec.o_uid}",
                           self._destroy_channel, crec)
        for part in rec.parts:
            self._step(f"freeing a part of object {rec.o_uid}", _free_part, part)
        if rec.parent is not None:
            parent = self.objs.get(rec.parent)
            if parent is not None:
                parent.children -= 1
                self._obj_maybe_end(parent)

    def _objects_exited(self, p_uid):
        """A process ended: drop its references; end the objects it owned."""
        for rec in list(self.objs.values()):
            if rec.o_uid not in self.objs:
                continue
            for token in [t for t, lender in rec.loans.items() if lender == p_uid]:
                del rec.loans[token]
            if rec.holders.pop(p_uid, None) is not None:
                self._step(f"dropping process {p_uid}'s reference to object {rec.o_uid}",
                           self._obj_maybe_end, rec)
            if rec.owner == p_uid and rec.lifetime == "owner" and rec.o_uid in self.objs:
                self._step(f"ending object {rec.o_uid} of process {p_uid}", self._obj_end, rec)

    def _dump_objects(self):
        return [{"o_uid": o.o_uid, "name": o.name, "kind": o.kind, "lifetime": o.lifetime,
                 "owner": o.owner, "holders": dict(o.holders), "parent": o.parent,
                 "channels": list(o.c_uids)} for o in self.objs.values()]


def _free_part(part):
    from ..pools_c import Allocation
    if part[0] == "sync":
        from ..sync_c import _sync
        obj = _sync._attach(_sync.SyncObject, int(part[1]), part[2], None)
        obj.destroy()
    else:
        Allocation.attach(part[1]).free()
