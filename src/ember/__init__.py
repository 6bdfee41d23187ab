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
from .exceptions import ProcessDied, RemoteError, RemoteTraceback  # noqa: F401

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


# The Python layer (multiprocessing's names), imported on first use so that
# ``import ember`` stays cheap: ember.Queue, ember.Pipe, ember.Lock, ...
_OBJECTS = {
    "Queue": "queues", "SimpleQueue": "queues", "JoinableQueue": "queues",
    "Pipe": "connection", "Connection": "connection", "wait": "connection",
    "Lock": "sync", "RLock": "sync", "Semaphore": "sync", "BoundedSemaphore": "sync",
    "Event": "sync", "Barrier": "sync", "Condition": "sync", "Value": "sync", "Array": "sync",
}
_EXCEPTIONS = ("ChannelClosed", "ObjectError", "ObjectTimeout", "MessageError")


def __getattr__(attr):
    mod = _OBJECTS.get(attr) or _LAZY.get(attr)
    if mod is not None:
        import importlib
        value = getattr(importlib.import_module(f".objects.{mod}", __name__), attr)
    elif attr in _EXCEPTIONS:
        from . import exceptions
        value = getattr(exceptions, attr)
    else:
        raise AttributeError(f"module 'ember' has no attribute {attr!r}")
    globals()[attr] = value
    return value


__all__ = [
    *_OBJECTS, *_EXCEPTIONS,
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

# Synchronization objects (ember.sync_c): their exceptions at top level.
from .exceptions import BrokenBarrierError, OwnerDied, ReleaseError, SyncError  # noqa: E402,F401

__all__ += ["BrokenBarrierError", "OwnerDied", "ReleaseError", "SyncError"]

# The Python-process layer (ember.objects), imported on first use so that
# `import ember` stays cheap.
_LAZY = {"Process": "process", "Executor": "executor", "ProcessGroup": "group"}
__all__ += ["Process", "Executor", "ProcessGroup", "ProcessDied", "RemoteError",
            "RemoteTraceback"]

# Shared objects, scopes and the SyncManager-compatible Manager (issue 12).
_LAZY.update({"serve": "shared", "connect": "shared", "proxy": "shared", "SharedRef": "shared",
              "Proxy": "shared", "scope": "scopes", "Scope": "scopes", "dict": "scopes",
              "list": "scopes", "Namespace": "scopes", "Manager": "managers"})
_EXCEPTIONS += ("SharedObjectError",)
# (ember.dict and ember.list are left out of __all__: `from ember import *`
# must not shadow the builtins.)
__all__ += ["serve", "connect", "proxy", "SharedRef", "Proxy", "scope", "Scope", "Namespace",
            "Manager", "SharedObjectError"]


# multiprocessing's start method "ember" (ember.mp): registered on import so
# that multiprocessing.set_start_method("ember") / get_context("ember") work.
try:
    from .mp import register as _register_mp  # noqa: E402
    _register_mp()
    del _register_mp
except Exception:      # pragma: no cover - never let the registration break `import ember`
    pass
