"""The service core (src/ember/service.py) as a state machine: a tiny service
on it, fed messages, with a scripted clock."""
import msgpack
import pytest

from ember import messages as m
from ember.exceptions import ProcessError
from ember.service import NOTICE, REQUEST, RateLimitedLog, Service, ServiceStats


class _Log:
    def __init__(self):
        self.lines = []

    def warning(self, fmt, *args):
        self.lines.append(("W", fmt % args))

    def error(self, fmt, *args):
        self.lines.append(("E", fmt % args))

    debug = info = warning


class Echo(Service):
    """Answers ProcessList with the number of ProcessQuery idents seen;
    ProcessQuery(ident) records ident, fails for "bad" (EmberError) and
    "bug" (a bug); ShExited is a notice; Cancel is refused by admit()."""

    name = "echo"
    error_type = "GlobalServicesError"

    def __init__(self, clock):
        super().__init__(clock=clock, logger=_Log())
        self.sent = []
        self.seen = []
        self.on(m.ProcessList, self.on_list)
        self.on(m.ProcessQuery, self.on_query)
        self.on(m.ShExited, self.on_exited, NOTICE)
        self.on(m.Cancel, self.on_list)

    def admit(self, msg, kind, trusted):
        return type(msg) is not m.Cancel

    def send_error_reply(self, msg, err_type, text, tb=None):
        self.sent.append(self.error_reply(msg, err_type, text, tb))

    def on_list(self, msg):
        self.sent.append(m.reply_ok(msg.tag, len(self.seen)))

    def on_query(self, msg):
        if msg.ident == "bad":
            raise ProcessError("no process named 'bad'")
        if msg.ident == "bug":
            return {}["missing"]
        self.seen.append(msg.ident)
        return "handled"

    def on_exited(self, msg):
        raise RuntimeError("notice failed")


@pytest.fixture
def svc():
    now = [10.0]
    s = Echo(lambda: now[0])
    s.now = now
    return s


def _req(cls, tag, *fields):
    return cls(tag, 1, b"R", b"K", *fields).pack()


def test_dispatch_and_error_replies(svc):
    assert svc.handle_bytes(_req(m.ProcessQuery, 1, "a")) == "handled"
    svc.handle_bytes(_req(m.ProcessList, 2))
    assert svc.sent == [m.reply_ok(2, 1)]
    svc.handle_bytes(_req(m.ProcessQuery, 3, "bad"))
    rep = svc.sent[-1]
    assert (rep.ref, rep.status, rep.err_type, rep.msg, rep.tb) == (
        3, m.ERR_FAIL, "ProcessError", "no process named 'bad'", None)
    svc.handle_bytes(_req(m.ProcessQuery, 4, "bug"))
    rep = svc.sent[-1]
    assert (rep.ref, rep.err_type, rep.msg) == (
        4, "GlobalServicesError", "echo failed on ProcessQuery: KeyError: 'missing'")
    assert "Traceback" in rep.tb and "KeyError" in rep.tb
    # a notice that fails is logged, never answered
    n = len(svc.sent)
    svc.handle_bytes(m.ShExited(1, 0).pack())
    assert len(svc.sent) == n
    assert svc.log.lines[-1][0] == "E" and "echo failed on ShExited" in svc.log.lines[-1][1]


def test_dropped_messages_are_counted_and_rate_limited(svc):
    for i in range(15):
        svc.handle_bytes(b"\xc1")                              # undecodable
    svc.handle_bytes(msgpack.packb([m.ProcessKill.code, 1, 1, b"R", b"K", 1, 9]))  # no handler
    svc.handle_bytes(_req(m.Cancel, 5, 1))                     # refused by admit()
    assert svc.sent == []
    st = svc.stats()
    assert (st.dropped, st.errors, dict(st.handled)) == (17, 0, {})
    assert [t for _, t in svc.log.lines].count("dropped unexpected ProcessKill") == 1
    assert len([t for _, t in svc.log.lines if t.startswith("dropped malformed")]) == 10
    svc.now[0] += 1.5
    svc.handle_bytes(b"\xc1")
    assert svc.log.lines[-2][1] == "5 more malformed-message warning(s) suppressed"


def test_timers_fire_in_order_cancel_and_next_timeout(svc):
    fired = []
    assert svc.next_timeout() is None
    svc.call_at(13.0, fired.append, "c")
    a = svc.call_later(1.0, fired.append, "a")     # 11.0
    b = svc.call_at(12.0, fired.append, "b")
    svc.call_at(12.5, lambda: 1 / 0)
    assert svc.next_timeout() == 1.0 and svc.timers_pending == 4
    a.cancel()
    a.cancel()                                       # idempotent
    assert svc.next_timeout() == 2.0 and svc.timers_pending == 3
    svc.expire(now=12.9)
    assert fired == ["b"] and not b.active and svc.timers_pending == 1
    assert svc.log.lines[-1][0] == "E" and "ZeroDivisionError" in svc.log.lines[-1][1]
    svc.now[0] = 13.0
    assert svc.next_timeout() == 0.0
    svc.expire()
    assert fired == ["b", "c"] and svc.next_timeout() is None and svc.timers_pending == 0


def test_stats_is_an_immutable_record_and_dump_is_plain_data(svc):
    svc.handle_bytes(_req(m.ProcessQuery, 1, "a"))
    svc.handle_bytes(_req(m.ProcessQuery, 2, "bad"))
    svc.handle_bytes(_req(m.ProcessList, 3))
    svc.call_later(5, print)
    svc.now[0] += 2.5
    st = svc.stats()
    assert isinstance(st, ServiceStats)
    assert st == ServiceStats("echo", 2.5, {"ProcessQuery": 2, "ProcessList": 1}, 1, 0, 1)
    with pytest.raises(AttributeError):
        st.errors = 0
    with pytest.raises(TypeError):
        st.handled["ProcessList"] = 7
    d = svc.dump()
    assert d == {"service": "echo", "stats": {"service": "echo", "uptime": 2.5, "errors": 1,
                                              "handled": {"ProcessQuery": 2, "ProcessList": 1},
                                              "dropped": 0, "timers_pending": 1}}
    assert msgpack.unpackb(msgpack.packb(d)) == d


def test_rate_limited_log_flush():
    log, now = _Log(), [0.0]
    warn = RateLimitedLog(lambda: now[0], log, burst=2, window=1.0)
    for i in range(5):
        warn("k", "w%d", i)
    warn("other", "x")
    warn.flush()
    assert [t for _, t in log.lines] == ["w0", "w1", "x", "3 more k warning(s) suppressed"]
    warn.flush()                                     # nothing more to say
    assert len(log.lines) == 4


def test_default_admit_and_error_reply_of_a_bare_service():
    s = Service(logger=_Log())
    got = []
    s.on(m.ProcessList, lambda msg: got.append(msg.tag), REQUEST)
    s.on(m.ProcessQuery, lambda msg: 1 / 0, REQUEST)
    s.dispatch(m.ProcessList(7, 0, b"R", b""))
    s.dispatch(m.ProcessQuery(8, 0, b"R", b"", 1))
    assert got == [7]
    # without a transport, an error reply is logged
    assert s.log.lines[-1][1].startswith("ProcessQuery: EmberError: service failed on "
                                         "ProcessQuery: ZeroDivisionError")
