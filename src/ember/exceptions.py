"""Every public exception of ember, in one pure-Python module.

Exceptions also inherit the matching built-in so ordinary ``except
MemoryError`` / ``except TimeoutError`` / ``except ValueError`` keep working.
"""

__all__ = [
    "EmberError",
    "PoolError",
    "PoolExhausted",
    "ChannelError",
    "ChannelEmpty",
    "ChannelFull",
    "ChannelTimeout",
    "ProcessError",
    "DescriptorError",
    "GlobalServicesError",
    "ChannelClosed",
]


class EmberError(Exception):
    """Base class of every ember error."""


class DescriptorError(EmberError, ValueError):
    """A serialized descriptor is truncated, corrupt, foreign or stale."""


class PoolError(EmberError):
    """Errors to do with memory pools and allocations."""


class PoolExhausted(PoolError, MemoryError):
    """The pool has no free block large enough (within the timeout)."""


class ChannelError(EmberError):
    """Errors to do with channel creation, attachment, send and receive."""


class ChannelEmpty(ChannelError, TimeoutError):
    """recv found no message (try-once) or none arrived within the timeout."""


class ChannelFull(ChannelError, TimeoutError):
    """send found no free slot (try-once) or none freed within the timeout."""


class ChannelTimeout(ChannelError, TimeoutError):
    """channel.join ran out of time before the channel was created."""


class ProcessError(EmberError):
    """Errors to do with process creation, query, join and kill."""


class GlobalServicesError(EmberError):
    """Global services could not be reached or replied with an internal error."""


class ChannelClosed(ChannelError, EOFError):
    """The channel was closed: send refuses; recv raises it once every
    message sent before the close was received (the end of the channel)."""
