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

# Synchronization objects (ember.sync_c): their exceptions at top level.
from .exceptions import BrokenBarrierError, OwnerDied, ReleaseError, SyncError  # noqa: E402,F401

__all__ += ["BrokenBarrierError", "OwnerDied", "ReleaseError", "SyncError"]
