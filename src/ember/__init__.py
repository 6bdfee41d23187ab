"""ember: a runtime for Python programs that use many processes.

Explicit re-exports only; the parts live in their subpackages:
``ember.pools_c``, ``ember.channels_c``, ``ember.globalservices``.
"""
from .exceptions import (  # noqa: F401
    ChannelEmpty,
    ChannelError,
    ChannelFull,
    ChannelTimeout,
    DescriptorError,
    EmberError,
    GlobalServicesError,
    PoolError,
    PoolExhausted,
    ProcessError,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelEmpty",
    "ChannelError",
    "ChannelFull",
    "ChannelTimeout",
    "DescriptorError",
    "EmberError",
    "GlobalServicesError",
    "PoolError",
    "PoolExhausted",
    "ProcessError",
    "__version__",
]
