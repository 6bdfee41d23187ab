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
_EXCEPTIONS = ("ChannelClosed", "ObjectError", "ObjectTimeout", "MessageError", "LauncherError",
               "RuntimeEnded")


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
from .exceptions import OwnerDied, ReleaseError, SyncError  # noqa: E402,F401
_EXCEPTIONS += ("BrokenBarrierError",)   # (made on first use: it imports threading)

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


# multiprocessing's start method "ember" (ember.mp): registered so that
# multiprocessing.set_start_method("ember") / get_context("ember") work —
# at once if multiprocessing is loaded already, else as soon as it is
# imported (a finder on sys.meta_path that runs once), so that `import
# ember` does not load multiprocessing (~6 ms: socket, pickle, re, ...).
def _register_mp():
    try:
        from .mp import register
        register()
    except Exception:  # pragma: no cover - never let the registration break an import
        pass


class _AfterImport:
    """A finder on sys.meta_path that finds nothing itself: when module
    ``name`` is being imported it takes the spec the other finders give
    (whichever finds it: PathFinder, or a frozen or bundled app's own) and
    calls ``then()`` right after the module has run; then it leaves
    sys.meta_path.  It leaves only once the module has run: a spec asked
    for and not loaded (``importlib.util.find_spec``, a check that the
    module exists) left the import that followed without ``then()``."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        spec = _find_spec_past(self, name, path, target)
        if spec is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenLoader(spec.loader, self)
        return spec


class _ThenLoader:
    """The loader of :class:`_AfterImport`'s spec: the module's own loader
    (put back in the spec and the module before it runs: a loader may load
    many modules, and is not changed), then ``then()``."""

    def __init__(self, loader, finder):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        import sys
        module.__loader__ = module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        try:
            sys.meta_path.remove(self.finder)
        except ValueError:
            pass
        self.finder.then()


def _find_spec_past(me, name, path=None, target=None):
    """The spec of module ``name`` from the finders on sys.meta_path other
    than ``me``: what the import would find without it."""
    import sys
    for finder in list(sys.meta_path):        # a finder may remove itself meanwhile
        if finder is not me and hasattr(finder, "find_spec"):
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                return spec
    return None


def _after_import(name, then):
    """Call ``then()`` now if module ``name`` is imported, else right after
    its import (once)."""
    import sys
    if name in sys.modules:
        then()
    elif not any(getattr(f, "name", None) == name and getattr(f, "then", None) is then
                 for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, then))


_after_import("multiprocessing", _register_mp)
