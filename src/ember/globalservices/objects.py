"""GS part: the registry of named objects (Queue, Pipe, Lock, ... of
:mod:`ember.objects`).

An object record holds what a process needs to attach the object (``kind``,
an opaque descriptor made and read by the client only — GS never decodes
it — and the descriptors of the channels GS made for it), its name (unique
among live objects; its own namespace, apart from channels'), its lifetime,
its holders (p_uid -> count) and the parts GS destroys with it:

- ``channels``: descriptors of the channels the client made for the object
  in the default pool (destroyed with it);
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

GS never maps the pool: when an object ends, the node's shepherd closes
and frees its memory (``ShObjectEnd``, :mod:`ember.objects.ending`, which
checks every descriptor it is given).

Uses from the other parts: ``_park``/``_finish_waiter`` and ``_Waiter``
(:mod:`.registry`), ``procs`` (:mod:`.processes`), ``pools``/
``default_m_uid`` (:mod:`.memory`), ``_reply``/``route_reply``/
``node_request``/``node`` from the composition.  :mod:`.processes` calls :meth:`ObjectsPart._objects_exited`
when a process ends.
"""
import itertools

from .. import messages as m
from ..exceptions import ObjectError, ObjectTimeout
from .registry import _Waiter, _lookup, _timeout, log

LIFETIMES = ("runtime", "owner", "refcount")
#: At most this many channels, parts and children in one ObjectCreate.
MAX_PARTS = 16


class _Obj:
    __slots__ = ("o_uid", "name", "kind", "lifetime", "owner", "desc", "sdescs",
                 "parts", "closes", "parent", "children", "holders", "loans")

    def __init__(self, o_uid, name, kind, lifetime, owner, desc):
        self.o_uid, self.name, self.kind, self.lifetime = o_uid, name, kind, lifetime
        self.owner, self.desc = owner, desc
        self.sdescs = []          # its channels (descriptors; destroyed with it)
        self.parts = []           # allocations to free with it
        self.closes = []          # channels to close when it ends (a Pipe end: its direction)
        self.parent = None        # o_uid of the object it keeps alive
        self.children = 0         # live children keeping it alive
        self.holders = {}         # p_uid -> count
        self.loans = {}           # token -> p_uid that lent one of its references (pickled)

    def desc_dict(self):
        return {"o_uid": self.o_uid, "name": self.name, "kind": self.kind,
                "lifetime": self.lifetime, "desc": self.desc, "channels": list(self.sdescs),
                "owner": self.owner}


def _not_a(name, kind, wanted):
    """``object 'jobs' is a Queue, not an Event``: an attach of ``wanted``
    found ``kind`` under ``name``."""
    def a(k):
        k = "shared object" if k == "Shared" else k      # (ember.serve's kind)
        return ("an " if k[:1] in "AEIOUaeiou" else "a ") + k
    return f"object {name!r} is {a(kind)}, not {a(wanted)}"


class _ObjWaiter(_Waiter):
    """An ``ObjectAttach`` parked until the name is created."""

    __slots__ = ("obj_name", "kind")

    def on_timeout(self, gs):
        gs._finish_waiter(self)
        gs.route_reply(gs.node, self.r, m.reply_err(
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
        for c in specs:
            if not isinstance(c, bytes) or not c:
                raise ObjectError(f"a channel must be given by its descriptor (bytes), got {c!r}")
        for p in parts:
            if not (isinstance(p, list) and len(p) in (2, 3) and p[0] in ("sync", "alloc")
                    and isinstance(p[-1], bytes) and (p[0] == "alloc") == (len(p) == 2)
                    and (len(p) == 2 or isinstance(p[1], int))):
                raise ObjectError(f"a part must be ['sync', kind, sdesc] or ['alloc', sdesc], "
                                  f"got {p!r}")
        for c in children:
            if not (isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and c[0]
                    and isinstance(c[1], list)
                    and all(isinstance(i, int) and 0 <= i < len(specs) for i in c[1])):
                raise ObjectError(f"a child must be [kind, [channel index, ...]], got {c!r}")
        if name and name in self.obj_names:
            rec = self.objs[self.obj_names[name]]
            if msg.soft and rec.kind == kind:
                self._obj_add_ref(rec, msg.p_uid)
                out = rec.desc_dict()
                out["existed"] = True     # the caller did not create it (a scope must not own it)
                return self._reply(msg.tag, msg.r, out)
            raise ObjectError(f"an object is already named {name!r} ({rec.kind}, o_uid {rec.o_uid})")
        if msg.p_uid not in self.procs and lifetime == "owner":
            raise ObjectError("lifetime 'owner' needs a managed process as creator")
        if self.default_m_uid is None:
            raise ObjectError("this runtime has no default pool for objects")
        rec = _Obj(next(self._o_uids), name, kind, lifetime, msg.p_uid, msg.desc)
        rec.sdescs = list(specs)
        rec.parts = [["chan", c] for c in specs] + list(parts)
        self.objs[rec.o_uid] = rec
        if name:
            self.obj_names[name] = rec.o_uid
        out = rec.desc_dict()
        if children:
            kids = []
            for ckind, closes in children:
                kid = _Obj(next(self._o_uids), None, ckind, "refcount", msg.p_uid, b"")
                kid.parent = rec.o_uid
                kid.closes = [rec.sdescs[i] for i in closes]
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
            self._finish_waiter(w)
            if w.kind and w.kind != kind:
                # as an attach that comes after this create: it would wait in vain
                # while this object lives, then say that nothing of the name was made
                self.route_reply(self.node, w.r, m.reply_err(
                    w.tag, "ObjectError", _not_a(name, kind, w.kind)))
                continue
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
                raise ObjectError(_not_a(name, rec.kind, kind))
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
        if rec.closes or rec.parts:
            prec = self.pools.get(self.default_m_uid)
            if prec is not None:
                closes, parts = list(rec.closes), list(rec.parts)
                self._step(f"ending the memory of object {rec.o_uid}", self.node_request, self.node,
                           lambda tag: m.ShObjectEnd(tag, prec.m_uid, prec.sdesc, closes, parts),
                           lambda done, o=rec.o_uid: done.err and log.error(
                               "ending the memory of object %d: %s", o, done.err[1]))
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
                 "channels": len(o.sdescs),
                 # where its memory is, so that `ember ps` can name what a
                 # process is blocked on: its channels' descriptors and its
                 # sync objects ([kind, allocation descriptor])
                 "sdescs": list(o.sdescs),
                 "sync": [[p[1], p[2]] for p in o.parts if p[0] == "sync"]}
                for o in self.objs.values()]

