"""ember.sync_c -- synchronization objects in pool memory that stay honest
when a holder dies (C library + Cython binding).  See docs/sync.md.

>>> from ember.pools_c import Pool
>>> from ember.sync_c import Lock
>>> with Pool.create(1 << 20) as pool:
...     lock = Lock(pool=pool)
...     with lock:
...         pass
...     lock.destroy()
"""
from ember.exceptions import BrokenBarrierError, OwnerDied, ReleaseError, SyncError
from ember.sync_c._sync import (
    BARRIER_MAX_PARTIES,
    SEM_SLOTS,
    Barrier,
    BoundedSemaphore,
    Condition,
    Event,
    Lock,
    RLock,
    Semaphore,
)


def __getattr__(name):
    # Value and Array load ctypes (~10 ms): only when asked for (the runtime
    # uses a Lock of this package in every process that creates a channel
    # a joiner waits for: globalservices/wakeboard.py).
    if name in ("Value", "Array"):
        from ember.sync_c import sharedctypes
        return getattr(sharedctypes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Event",
    "Barrier",
    "Condition",
    "Value",
    "Array",
    "SEM_SLOTS",
    "BARRIER_MAX_PARTIES",
    "SyncError",
    "OwnerDied",
    "ReleaseError",
    "BrokenBarrierError",
]
