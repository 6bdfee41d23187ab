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


def init(address=None, **kwargs):
    """Start a runtime in the background and attach to it, or attach to a
    running one (``address="auto"``, a name or an id).  See
    :func:`ember.runtime.init`."""
    from . import runtime
    return runtime.init(address, **kwargs)


def shutdown():
    """Detach from the runtime; tear it down if this process started it.
    See :func:`ember.runtime.shutdown`."""
    from . import runtime
    return runtime.shutdown()


def is_initialized():
    """True if this process is part of an ember runtime."""
    from . import runtime
    return runtime.is_initialized()


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
    "init",
    "is_initialized",
    "shutdown",
]
