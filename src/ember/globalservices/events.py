"""GS part: the runtime's event log (``ember events``).

One JSON object per line, appended to ``<runtime dir>/<runtime id>.events``
(``events_path``; None: no log, as in the state-machine tests): process
started / exited (exit code, the signal's name when a signal killed it,
the wait status, core dumped, OOM-killed: from the shepherd's ShExited;
plus ``process.core_dumped`` / ``process.oom_killed`` events), holder deaths (a process that exited holding channel references),
channel and pool created / destroyed.  Every event has ``t`` (epoch
seconds) and ``event``.  The file is written as things happen (under
``ember run`` in bursts, one ``write`` each, once 64 events are held or the
oldest is 20 ms old (``server.EVENTS_DELAY``): off the requesters' path,
and one write for the events of several starts; a
reader never sees half a line unless GS dies in the middle of one) and
outlives the runtime: ``ember events --address ID``
reads a finished run's log.  Writing never fails a request: an error is
logged once and the log is switched off.
"""
import os
import _signal as signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)
import time

from .registry import log


try:      # the C string encoder of the json module, without json (and re) loaded:
    from _json import encode_basestring_ascii as _jstr   # GS writes events from its start
except ImportError:  # pragma: no cover - not CPython
    def _jstr(s):
        import json
        return json.dumps(s)


def _json_value(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    t = type(v)
    if t is str:
        return _jstr(v)
    if t is int:
        return str(v)
    if t is float:
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "null"
    if t is dict:
        return "{" + ", ".join(f"{_jstr(str(k))}: {_json_value(x)}" for k, x in v.items()) + "}"
    if t in (list, tuple):
        return "[" + ", ".join(_json_value(x) for x in v) + "]"
    return _jstr(repr(v))


def _json_line(rec):
    """One event as a JSON object (what ``json.dumps(rec, default=repr)``
    writes, for the types events hold)."""
    return _json_value(rec)


def signal_name(sig):
    try:
        import signal as _signal_enums     # (loaded on first use)
        return _signal_enums.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class EventsPart:
    REQUESTS = ()
    NOTICES = ()

    def _init_events(self):
        self.events_path = None
        self._events_fd = None
        # deferred events: recorded during a request, written (formatted and
        # one write) by flush_events() once its reply is out — the loop calls
        # it once the oldest is EVENTS_DELAY (20 ms) old or many are held,
        # so the log is at most about 20 ms behind
        self.defer_events = False
        self._events_held = []
        self._events_held_at = 0.0    # time.monotonic() of the oldest held (events_due)

    def _event(self, event, **fields):
        if self.events_path is None:
            return
        if self.defer_events:
            if not self._events_held:
                self._events_held_at = time.monotonic()
            self._events_held.append((time.time(), event, fields))
            return
        self._write_events([(time.time(), event, fields)])

    def events_due(self, delay, now=None):
        """Seconds until the held events are to be written, ``delay``
        seconds after the oldest was held (0: now; None: none held).
        Timed by the monotonic clock: the events' own ``t`` is the wall
        clock's, which may jump back (the log would then wait as long)."""
        if not self._events_held:
            return None
        now = time.monotonic() if now is None else now
        return max(0.0, self._events_held_at + delay - now)

    def flush_events(self):
        held = self._events_held
        if held:
            self._events_held = []
            if self.events_path is not None:
                self._write_events(held)

    def _write_events(self, events):
        path = self.events_path
        try:
            if self._events_fd is None:
                self._events_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND |
                                          os.O_CLOEXEC, 0o600)
            lines = []
            for t, event, fields in events:
                rec = {"t": round(t, 6), "event": event}
                rec.update(fields)
                lines.append(_json_line(rec))
            os.write(self._events_fd, ("\n".join(lines) + "\n").encode())
        except Exception as exc:
            log.warning("event log %s switched off: %s", path, exc)
            self.events_path = None

    def _event_exited(self, rec, exit_code, info=None):
        """``process.exited``; with the shepherd's ``info`` (ShExited) also
        its wait ``status``, ``core_dumped`` and ``oom_killed`` (true /
        false / null: unknown), and a ``process.core_dumped`` or
        ``process.oom_killed`` event of its own when it was so."""
        fields = {"p_uid": rec.p_uid, "name": rec.name or None, "pid": rec.os_pid,
                  "exit_code": exit_code}
        if isinstance(exit_code, int) and exit_code < 0:
            fields["signal"] = signal_name(-exit_code)
        info = info or {}
        status = info.get("status")
        core = info.get("core_dumped") is True
        oom = info.get("oom_killed")
        if isinstance(status, int) and not isinstance(status, bool):
            fields["status"] = status
            fields["core_dumped"] = core
            fields["oom_killed"] = oom if isinstance(oom, bool) else None
        self._event("process.exited", **fields)
        short = {k: fields[k] for k in ("p_uid", "name", "pid", "signal") if k in fields}
        if core:
            self._event("process.core_dumped", **short)
        if oom is True:
            self._event("process.oom_killed", **short)

    def _close_events(self):
        self.flush_events()
        if self._events_fd is not None:
            try:
                os.close(self._events_fd)
            except OSError:
                pass
            self._events_fd = None
