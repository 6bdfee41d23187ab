"""Introspection of a running runtime: what global services (GS) knows.

``stats()`` is GS's service-core record (messages handled per type, error
replies, dropped messages, uptime, timers pending); ``dump()`` is its state
as plain data — processes (state, pid, name, exit code, joined), pools,
channels (holders and reference counts), parked waiters (who waits on
what) and the teardown phase.  Both are one request to GS (``ServiceStats``,
``ServiceDump``); they feed ``ember ps``.
"""
from types import MappingProxyType

from .. import messages as m
from ..service import ServiceStats
from ._client import call

__all__ = ["stats", "dump"]


def stats():
    """GS's :class:`~ember.service.ServiceStats` (an immutable record)."""
    d = call(m.ServiceStats)
    d["handled"] = MappingProxyType(d["handled"])
    return ServiceStats(**d)


def dump():
    """GS's state as a dict of plain data (see the module docstring):
    ``service``, ``stats``, ``node``, ``runtime``, ``processes``, ``pools``,
    ``channels``, ``waiters``, ``teardown``."""
    return call(m.ServiceDump)
