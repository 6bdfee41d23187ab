"""The Python layer: functions in managed processes (``Process``), a futures
executor (``Executor``) and process groups (``ProcessGroup``); queues
(:mod:`.queues`), pipes and ``wait`` (:mod:`.connection`), named
synchronization objects (:mod:`.sync`), names and lifetimes
(:mod:`.naming`).

Imported lazily by ``ember`` (``ember.Process``, ``ember.Queue`` etc.), so
``import ember`` stays cheap.
"""
from .process import Process

__all__ = ["Process"]


def create(factory, *args, **kwargs):
    """Start a host process that constructs ``factory(*args, **kwargs)``
    and serves it (``name=``, ``lifetime=``, ``scope=``, ``exposed=``,
    ``threads=`` as :func:`ember.serve`); returns its :class:`ember.SharedRef`."""
    from .shared import create as _create
    return _create(factory, *args, **kwargs)
