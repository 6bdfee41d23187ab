"""One return-code map (issue 9, "One C base"): every ember_rc_t raises the
same exception class with the same explanation from every extension."""
import pytest

from ember import _rc, exceptions as exc
from ember.channels_c import _channels
from ember.pools_c import _pools
from ember.sync_c import _sync

EXTENSIONS = [_pools, _channels, _sync]


def _raised(mod, rc):
    with pytest.raises(Exception) as info:
        mod._raise_rc(rc, "op")
    return info.value


@pytest.mark.parametrize("rc", range(1, len(_rc.NAMES)), ids=lambda rc: _rc.NAMES[rc])
def test_every_code_same_exception_everywhere(rc):
    got = [_raised(m, rc) for m in EXTENSIONS]
    assert {type(e) for e in got} == {_rc.EXC[rc]}
    if rc != _rc.EMBER_ERR_OS:                      # errno text differs
        assert {str(e) for e in got} == {f"op: {_rc.TEXT[rc]} [{_rc.NAMES[rc]}]"}


def test_names_match_the_c_enum():
    # ember._rc mirrors the C enum of ember_common.h: same names, same values, no more
    assert [_pools._rc_name(rc) for rc in range(len(_rc.NAMES))] == list(_rc.NAMES)
    assert _pools._rc_name(len(_rc.NAMES)) == "EMBER_ERR_UNKNOWN"
    assert all(getattr(_rc, n) == rc for rc, n in enumerate(_rc.NAMES))


def test_ok_raises_nothing():
    for m in EXTENSIONS:
        assert m._raise_rc(0, "op") is None


@pytest.mark.parametrize("name, cls", [
    ("EMBER_ERR_CLOSED", exc.ChannelClosed),
    ("EMBER_ERR_FULL", exc.ChannelFull),
    ("EMBER_ERR_EMPTY", exc.ChannelEmpty),
    ("EMBER_ERR_LOCK_STUCK", exc.PoolError),
    ("EMBER_ERR_EXHAUSTED", exc.PoolExhausted),
    ("EMBER_ERR_NOMEM", MemoryError),
    ("EMBER_ERR_BAD_DESCRIPTOR", exc.DescriptorError),
    ("EMBER_ERR_BAD_MAGIC", exc.DescriptorError),
    ("EMBER_ERR_VERSION", exc.DescriptorError),
    ("EMBER_ERR_TIMEOUT", exc.CoreTimeout),
    ("EMBER_ERR_CORRUPT", exc.CoreError),
    ("EMBER_ERR_DESTROYED", exc.CoreError),
])
def test_named_codes(name, cls):
    rc = _rc.NAMES.index(name)
    for m in EXTENSIONS:
        assert type(_raised(m, rc)) is cls


def test_core_error_is_every_kind():
    # a code that belongs to no one kind of object is caught by each kind's except
    for base in (exc.PoolError, exc.ChannelError, exc.SyncError, exc.EmberError):
        assert issubclass(exc.CoreError, base)
    assert issubclass(exc.CoreTimeout, TimeoutError)


def test_os_error_names_errno():
    for m in EXTENSIONS:
        e = _raised(m, _rc.EMBER_ERR_OS)
        assert type(e) is exc.CoreError
        assert str(e).startswith("op: ") and str(e).endswith(" [EMBER_ERR_OS]")


def test_unknown_code():
    for m in (_pools, _channels):
        e = _raised(m, 99)
        assert type(e) is exc.CoreError
        assert str(e) == "op: unknown return code 99 [EMBER_ERR_UNKNOWN]"
