"""What the parts of global services (GS) share: identifier look-up,
request timeouts, and parked requests (waiters).

GS is one :class:`~ember.service.Service` composed of parts, each a mixin
that owns its registry and its handlers and reads alone:

- :mod:`.processes` — the process registry: create, attach, detach, exit,
  kill, join;
- :mod:`.memory` — the pool and channel registries: names, reference
  counts, channel joins, reclaim;
- :mod:`.teardown` — the runtime's end, as an explicit phase;
- this module — the waiters both process joins and channel joins park;
- :mod:`.server` — the composition: the entry of a request (keys, reply
  channels), the transport and the loop.

A part reaches another only through the few methods named in its
docstring.
"""
import math

from .. import _log, messages as m

log = _log.get("gs")


def _timeout(value, err_cls):
    """A request's timeout: None (wait forever) or finite seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise err_cls(f"timeout must be a number >= 0 or None, got {value!r}")
    return None if math.isinf(value) else value


def _lookup(ident, by_uid, by_name, err_cls, kind, uid_name):
    """The record an identifier names: an int is a uid, a str a name."""
    if isinstance(ident, bool) or not isinstance(ident, (int, str)):
        raise err_cls(f"{kind} identifier must be an int or str, not {type(ident).__name__}")
    if isinstance(ident, str):
        uid = by_name.get(ident)
        if uid is None:
            raise err_cls(f"no {kind} named {ident!r}")
        return by_uid[uid]
    rec = by_uid.get(ident)
    if rec is None:
        raise err_cls(f"no {kind} with {uid_name} {ident}")
    return rec


class _Waiter:
    """A parked request: a process join (``name`` None) or a channel join
    (``name``: the channel it waits for)."""

    __slots__ = ("tag", "r", "owner", "timer", "done", "p_uids", "join_all", "bad_exit", "name",
                 "n_exited", "any_bad", "unknown", "listed", "busy_since")

    def __init__(self, tag, r, owner):
        self.tag, self.r, self.owner = tag, r, owner
        self.timer = None        # its timeout (a service Timer), if it has one
        self.done = False
        self.p_uids = ()
        self.join_all = False
        self.bad_exit = False
        self.name = None
        self.n_exited = 0        # how many of p_uids have exited
        self.any_bad = False     # one of them exited with a non-zero code
        self.unknown = ()        # identifiers that name no process
        self.listed = False      # a channel join listed on the join wake board (memory.py)
        self.busy_since = None   # ... its timeout found the board busy since then (clock)

    def dump(self):
        """Who waits on what (plain data, for ``ServiceDump``)."""
        d = {"owner": self.owner, "tag": self.tag,
             "deadline": None if self.timer is None else self.timer.deadline}
        if self.name is not None:
            d.update(kind="channel.join", name=self.name)
        else:
            d.update(kind="process.join", p_uids=list(self.p_uids), join_all=self.join_all,
                     unknown=list(self.unknown))
        return d


class WaitersPart:
    """Parked requests, by owner.  Uses the processes part's
    ``_unlink_proc_join``/``_answer_join`` and the memory part's
    ``_unlink_chan_join``/``_chan_join_timed_out``."""

    REQUESTS = ((m.Cancel, "on_cancel"),)
    NOTICES = ()

    def _init_waiters(self):
        self.owned_waiters = {}   # owner p_uid -> set(_Waiter)

    def _park(self, w, timeout):
        self.owned_waiters.setdefault(w.owner, set()).add(w)
        if timeout is not None:
            w.timer = self.call_later(timeout, self._waiter_timed_out, w)

    def _waiter_timed_out(self, w):
        hook = getattr(w, "on_timeout", None)     # a waiter of another part (objects)
        if hook is not None:
            return hook(self)
        if w.name is not None:
            self._chan_join_timed_out(w)
        else:
            self._answer_join(w, timed_out=True)

    def _finish_waiter(self, w):
        w.done = True
        if w.timer is not None:
            w.timer.cancel()
        owned = self.owned_waiters.get(w.owner)
        if owned is not None:
            owned.discard(w)
            if not owned:
                del self.owned_waiters[w.owner]
        unlink = getattr(w, "unlink", None)       # a waiter of another part (objects)
        if unlink is not None:
            unlink(self)
        elif w.name is not None:
            self._unlink_chan_join(w)
        else:
            self._unlink_proc_join(w)

    def on_cancel(self, msg):
        """The requester gave up waiting for ``ref``: forget that waiter
        (a channel join then adds no reference).  Never replied to."""
        for w in list(self.owned_waiters.get(msg.p_uid, ())):
            if w.tag == msg.ref and w.r == msg.r:
                self._finish_waiter(w)

    def _step(self, what, fn, *args):
        """Run one step of a cleanup path: its failure is logged and does
        not stop the next step."""
        try:
            fn(*args)
        except Exception as exc:
            log.error("%s: %s: %s", what, type(exc).__name__, exc)

    def _dump_waiters(self):
        return [w.dump() for ws in self.owned_waiters.values() for w in ws]
