"""ember.pools_c -- shared-memory pools (C library + Cython binding).

>>> from ember.pools_c import Pool
>>> with Pool.create(1 << 20, name="demo") as pool:
...     with pool.alloc(5) as a:
...         memoryview(a)[:] = b"hello"
"""
from ember.exceptions import DescriptorError, PoolError, PoolExhausted
from ember.pools_c._pools import Allocation, Pool, PoolStats, clear_attach_cache, lock_bound, set_lock_bound

__all__ = [
    "Pool",
    "Allocation",
    "PoolStats",
    "clear_attach_cache",
    "set_lock_bound",
    "lock_bound",
    "PoolError",
    "PoolExhausted",
    "DescriptorError",
]
