"""The Python layer: functions in managed processes (``Process``), a futures
executor (``Executor``) and process groups (``ProcessGroup``).

Imported lazily by ``ember`` (``ember.Process`` etc.), so ``import ember``
stays cheap.
"""
from .process import Process

__all__ = ["Process"]
