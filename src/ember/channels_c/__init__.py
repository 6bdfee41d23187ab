"""ember.channels_c -- lock-free shared-memory channels (C library + Cython binding).

>>> from ember.pools_c import Pool
>>> from ember.channels_c import Channel
>>> with Pool.create(1 << 20) as pool, Channel.create(pool, capacity=16) as ch:
...     ch.send(b"hello")
...     ch.recv()
b'hello'
"""
from ember.channels_c._channels import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CAPACITY,
    Channel,
    ChannelStatistics,
    wait_any,
)
from ember.exceptions import ChannelClosed, ChannelEmpty, ChannelError, ChannelFull

__all__ = [
    "Channel",
    "ChannelStatistics",
    "wait_any",
    "DEFAULT_CAPACITY",
    "DEFAULT_BLOCK_SIZE",
    "ChannelError",
    "ChannelEmpty",
    "ChannelFull",
    "ChannelClosed",
]
