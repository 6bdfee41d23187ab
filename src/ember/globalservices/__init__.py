"""Global services: the runtime's registries of processes, pools and
channels, and the client API user code imports::

    from ember.globalservices import process, pool, channel
"""
from ..descriptors import (  # noqa: F401
    ChannelDescriptor,
    ChannelOptions,
    PoolDescriptor,
    PoolOptions,
    ProcessDescriptor,
    ProcessOptions,
)
from ..exceptions import ChannelError, ChannelTimeout, PoolError, ProcessError  # noqa: F401
from . import channel, pool, process  # noqa: F401

__all__ = [
    "process", "pool", "channel",
    "ProcessDescriptor", "PoolDescriptor", "ChannelDescriptor",
    "ProcessOptions", "PoolOptions", "ChannelOptions",
    "ProcessError", "PoolError", "ChannelError", "ChannelTimeout",
]
