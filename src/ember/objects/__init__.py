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
