"""The service core that global services (GS), the shepherd and (later) the
per-node transport agent share.

A service is a state machine fed one message at a time.  The core gives it:

- **a handler table** (:attr:`Service.handlers`): message class ->
  ``(method, kind)``; ``kind`` is :data:`REQUEST` (a client waits for a
  reply: a failure becomes an error reply) or :data:`NOTICE` (nobody waits:
  a failure is logged);
- **one dispatch** (:meth:`Service.handle_bytes` / :meth:`Service.dispatch`):
  decode, look the type up, let the service *admit* it once where it enters
  (:meth:`Service.admit`: authentication, reply address, field types of the
  envelope), run the handler, and turn an exception into an error reply
  ``{status, ref, err_type, msg, tb}`` (dask.distributed's convention): an
  :class:`~ember.exceptions.EmberError` keeps its class name and text, any
  other exception is a bug and is reported as :attr:`Service.error_type`
  with its traceback;
- **a rate-limited warning logger** (:class:`RateLimitedLog`): a client that
  floods a service with garbage cannot flood the log;
- **timers**: a heap of deadlines (:meth:`Service.call_at`), with
  :meth:`Service.next_timeout` for the transport loop's wait and
  :meth:`Service.expire` to fire what is due; a timer is cancelled in O(1);
- **introspection**: :meth:`Service.stats` returns an immutable
  :class:`ServiceStats` record (messages handled per type, error replies,
  dropped messages, uptime, timers pending) and :meth:`Service.dump` the
  service's state as plain msgpack-able data.

Transport and clock stay outside: a service receives bytes or message
objects and sends through callables it was given, so each service is tested
as a state machine by feeding it messages (``tests/test_gs_state.py``,
``tests/test_service.py``).  The core imports nothing heavy: GS and the
shepherd are forked from the launcher on every ``ember run``.
"""
import heapq
import itertools
import time
from collections import namedtuple
from types import MappingProxyType

from . import messages as m
from .exceptions import EmberError

__all__ = ["Service", "ServiceStats", "RateLimitedLog", "Timer", "REQUEST", "NOTICE",
           "WARN_BURST", "WARN_WINDOW"]

#: Handler kinds: a request is answered (its failure too); a notice is not.
REQUEST, NOTICE = "request", "notice"

#: Repeated warnings of one kind: the first WARN_BURST per WARN_WINDOW
#: seconds are logged, then one line says how many were suppressed.
WARN_BURST = 10
WARN_WINDOW = 1.0


class ServiceStats(namedtuple("ServiceStats", "service uptime handled errors dropped "
                                              "timers_pending")):
    """What a service has done so far (immutable; trio's ``statistics()``).

    ``service``: its name; ``uptime``: seconds since it was made (its
    clock); ``handled``: ``{message type name: count}`` of messages that
    reached a handler; ``errors``: handler failures (error replies sent, or
    notices that failed); ``dropped``: messages never handled (undecodable,
    unexpected type, refused by :meth:`Service.admit`); ``timers_pending``:
    timers armed and neither fired nor cancelled.
    """

    __slots__ = ()

    def as_dict(self):
        """The record as a plain dict (msgpack-able)."""
        d = self._asdict()
        d["handled"] = dict(self.handled)
        return d


class RateLimitedLog:
    """Warnings by kind: the first ``burst`` of a kind per ``window``
    seconds are logged; the rest are counted and reported in one summary
    line when the window has passed (at the next warning of that kind or
    at :meth:`flush`).  The kinds are fixed strings, so the state is
    bounded whatever a client sends."""

    def __init__(self, clock, logger, burst=WARN_BURST, window=WARN_WINDOW):
        self.clock, self.log, self.burst, self.window = clock, logger, burst, window
        self.state = {}       # kind -> [window start, logged, suppressed]

    def __call__(self, kind, fmt, *args):
        now = self.clock()
        st = self.state.get(kind)
        if st is None or now - st[0] >= self.window:
            if st is not None and st[2]:
                self._summary(kind, st)
            st = self.state[kind] = [now, 0, 0]
        if st[1] < self.burst:
            st[1] += 1
            self.log.warning(fmt, *args)
        else:
            st[2] += 1

    def _summary(self, kind, st):
        self.log.warning("%d more %s warning(s) suppressed", st[2], kind)
        st[2] = 0

    def flush(self):
        for kind, st in self.state.items():
            if st[2]:
                self._summary(kind, st)


class Timer:
    """One armed deadline (made by :meth:`Service.call_at`)."""

    __slots__ = ("deadline", "callback", "args", "active", "_service")

    def __init__(self, service, deadline, callback, args):
        self._service = service
        self.deadline, self.callback, self.args = deadline, callback, args
        self.active = True

    def cancel(self):
        """Disarm it (idempotent; a fired timer is no longer active)."""
        if self.active:
            self.active = False
            self._service._n_timers -= 1


class Service:
    """Base of a service: handler table, dispatch, errors, timers, stats.

    Subclasses set :attr:`name` and :attr:`error_type`, fill
    :attr:`handlers` (:meth:`on`), and override :meth:`admit` (how a
    message is accepted where it enters) and :meth:`send_error_reply` (how
    an error reply reaches the requester) as they need.
    """

    #: The service's name (logs, stats).
    name = "service"
    #: ``err_type`` of the error reply to a request whose handler failed
    #: with anything but an EmberError (a bug): the client raises it.
    error_type = "EmberError"

    def __init__(self, *, clock=time.monotonic, logger=None):
        from . import _log

        self.clock = clock
        self.log = logger if logger is not None else _log.get(self.name)
        self.warn = RateLimitedLog(clock, self.log)
        #: message class -> (bound method, REQUEST or NOTICE)
        self.handlers = {}
        self._started = clock()
        self._handled = {}           # message class -> count
        self._errors = 0
        self._dropped = 0
        self._timers = []            # heap of (deadline, seq, Timer)
        self._n_timers = 0
        self._seq = itertools.count()

    def on(self, cls, method, kind=REQUEST):
        """Register ``method`` for messages of class ``cls``."""
        self.handlers[cls] = (method, kind)

    # ------------------------------------------------------------ dispatch
    def handle_bytes(self, data, trusted=False):
        """Decode and dispatch one message.  ``trusted``: it came on a
        private channel only the runtime can write.  Never raises: a
        message that cannot be decoded is logged (rate-limited) and
        dropped."""
        try:
            msg = m.unpack(data)
        except m.MessageError as exc:
            self._dropped += 1
            self.warn("malformed-message", "dropped malformed message: %s", exc)
            return None
        return self.dispatch(msg, trusted)

    def dispatch(self, msg, trusted=False):
        """Dispatch one decoded message; returns what its handler returned
        (None if it was dropped or failed)."""
        cls = type(msg)
        entry = self.handlers.get(cls)
        if entry is None:
            self._dropped += 1
            self.warn("unexpected-message", "dropped unexpected %s", cls.__name__)
            return None
        method, kind = entry
        if not self.admit(msg, kind, trusted):
            self._dropped += 1
            return None
        self._handled[cls] = self._handled.get(cls, 0) + 1
        try:
            return method(msg)
        except Exception as exc:
            self._errors += 1
            if kind is REQUEST and isinstance(exc, EmberError):
                self.send_error_reply(msg, type(exc).__name__, str(exc))
                return None
            import traceback     # a bug or a bad field type: report, keep serving

            tb = traceback.format_exc()
            if kind is REQUEST:
                self.send_error_reply(
                    msg, self.error_type,
                    f"{self.name} failed on {cls.__name__}: {type(exc).__name__}: {exc}", tb)
            else:
                self.notice_failed(msg, exc, tb)
        return None

    def admit(self, msg, kind, trusted):
        """Whether ``msg`` may reach its handler (the one place a message
        is validated on entry).  The default admits everything; a refusing
        override logs why (rate-limited) and returns False."""
        return True

    def send_error_reply(self, msg, err_type, text, tb=None):
        """Deliver an error reply to the requester of ``msg``.  The
        default logs it (a service without requests)."""
        self.log.warning("%s: %s: %s", type(msg).__name__, err_type, text)

    def notice_failed(self, msg, exc, tb):
        """A notice's handler raised ``exc`` (nobody waits for a reply)."""
        self.log.error("%s failed on %r:\n%s", self.name, msg, tb)

    @staticmethod
    def error_reply(msg, err_type, text, tb=None):
        """The error reply to request ``msg``."""
        return m.reply_err(msg.tag, err_type, text, tb)

    # --------------------------------------------------------------- timers
    def call_at(self, deadline, callback, *args):
        """Arm a timer: ``callback(*args)`` runs from :meth:`expire` once
        the clock reaches ``deadline``.  Returns the :class:`Timer`."""
        t = Timer(self, deadline, callback, args)
        heapq.heappush(self._timers, (deadline, next(self._seq), t))
        self._n_timers += 1
        return t

    def call_later(self, delay, callback, *args):
        return self.call_at(self.clock() + delay, callback, *args)

    def next_timeout(self, now=None):
        """Seconds until the next timer fires (None: no timer armed)."""
        timers = self._timers
        while timers and not timers[0][2].active:
            heapq.heappop(timers)
        if not timers:
            return None
        now = self.clock() if now is None else now
        return max(0.0, timers[0][0] - now)

    def expire(self, now=None):
        """Fire every armed timer whose deadline has passed, in deadline
        order.  A failing callback is logged; the others still fire."""
        now = self.clock() if now is None else now
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, t = heapq.heappop(timers)
            if not t.active:
                continue
            t.cancel()
            try:
                t.callback(*t.args)
            except Exception as exc:
                self.log.error("%s: timer %r failed: %s: %s", self.name, t.callback,
                               type(exc).__name__, exc)

    @property
    def timers_pending(self):
        return self._n_timers

    # -------------------------------------------------------- introspection
    def stats(self):
        """An immutable :class:`ServiceStats` record of this service."""
        return ServiceStats(self.name, self.clock() - self._started,
                            MappingProxyType({c.__name__: n for c, n in self._handled.items()}),
                            self._errors, self._dropped, self._n_timers)

    def dump(self):
        """The service's state as plain data (dicts, lists, str, int,
        float, None: msgpack-able).  Services extend it with their
        registries."""
        return {"service": self.name, "stats": self.stats().as_dict()}
