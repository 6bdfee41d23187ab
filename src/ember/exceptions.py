"""Every public exception of ember, in one pure-Python module.

Exceptions also inherit the matching built-in so ordinary ``except
MemoryError`` / ``except TimeoutError`` / ``except ValueError`` keep working.
"""

__all__ = [
    "SharedObjectError",
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
    "ProcessDied",
    "RemoteError",
    "RemoteTraceback",
    "ChannelClosed",
    "SyncError",
    "OwnerDied",
    "ReleaseError",
    "BrokenBarrierError",
    "ObjectError",
    "ObjectTimeout",
    "MessageError",
    "CoreError",
    "CoreTimeout",
    "RuntimeEnded",
    "LauncherError",
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


class ChannelBusy(ChannelError, BlockingIOError):
    """GS could not decide a create of a named channel now (the join wake
    board's lock stayed busy: a process holding it does not go on, e.g.
    stopped); nothing was created: try again."""


class ProcessError(EmberError):
    """Errors to do with process creation, query, join and kill."""


class GlobalServicesError(EmberError):
    """Global services could not be reached or replied with an internal error."""


class ProcessDied(ProcessError, ChildProcessError):
    """A Python process (``ember.Process``, an Executor worker, a group
    member) ended without delivering its result: killed by a signal, or
    exited before finishing.

    Attributes: ``p_uid``, ``exitcode`` (-N for signal N), ``signal``
    (the signal number, or None if it exited with a code).
    """

    def __init__(self, message, p_uid=None, exitcode=None):
        super().__init__(message)
        self.p_uid = p_uid
        self.exitcode = exitcode
        self.signal = -exitcode if isinstance(exitcode, int) and exitcode < 0 else None

    def __reduce__(self):
        return (type(self), (str(self), self.p_uid, self.exitcode))


class RemoteError(EmberError):
    """An exception raised in another process that could not be brought
    back as itself (it, or its result, could not be pickled or unpickled).

    Attributes: ``type_name`` (qualified name of the original exception's
    class), ``message`` (its ``str``), ``traceback`` (the formatted
    traceback text from the other process).  ``str()`` is
    ``"<type_name>: <message>"``.
    """

    def __init__(self, type_name, message, traceback=""):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback

    def __reduce__(self):
        return (type(self), (self.type_name, self.message, self.traceback))


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of an exception re-raised from another
    process: its ``str`` is the other process's formatted traceback (as in
    ``concurrent.futures``)."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb


class ChannelClosed(ChannelError, EOFError):
    """The channel was closed: send refuses; recv raises it once every
    message sent before the close was received (the end of the channel)."""


class SyncError(EmberError):
    """Errors to do with ember's synchronization objects (Lock, Semaphore, ...)."""


class OwnerDied(SyncError):
    """The lock WAS acquired, but a previous holder died while holding it
    (like a robust mutex's EOWNERDEAD): the state it protects may be
    inconsistent.  ``pid`` is the dead holder.  Repair the state, call
    ``lock.consistent()``, then ``release()``; a release without
    ``consistent()`` passes the report on to the next acquirer.  It inherits
    no built-in on purpose: a generic ``except RuntimeError`` must not
    swallow it."""

    def __init__(self, msg, pid=0):
        super().__init__(msg)
        self.pid = pid

    def __reduce__(self):
        return (type(self), (self.args[0] if self.args else "", self.pid))


class ReleaseError(SyncError, ValueError, RuntimeError):
    """release() of an unlocked Lock, of an RLock the caller does not hold,
    or of a BoundedSemaphore beyond its initial value.  Also a ValueError
    (what multiprocessing raises) and a RuntimeError (what threading raises)."""


def _broken_barrier_error():
    import threading   # (here, not at the top: ~1.5 ms of every start for one base class)

    class BrokenBarrierError(SyncError, threading.BrokenBarrierError):
        """The barrier is broken (aborted, reset while waiting, timed out, a
        failed action, or a party died while waiting)."""

    BrokenBarrierError.__module__ = __name__       # pickled by reference: ember.exceptions.
    BrokenBarrierError.__qualname__ = "BrokenBarrierError"
    return BrokenBarrierError


class ObjectError(EmberError, ValueError):
    """Errors to do with named objects (Queue, Pipe, Lock, ... of
    ``ember.objects``): a bad request, an unknown name, a name taken."""


class ObjectTimeout(ObjectError, TimeoutError):
    """``attach(name, timeout=...)`` ran out of time before the object was
    created."""


def _message_error():
    from _pickle import UnpicklingError

    class MessageError(ObjectError, UnpicklingError):
        """A message received on a Queue, Pipe, shared object's or process's
        channel is not one ember's codec made (a malformed frame, a broken or
        truncated pickle): also a ``pickle.UnpicklingError``."""

    MessageError.__module__, MessageError.__qualname__ = __name__, "MessageError"
    return MessageError


# MessageError is made on first use (module __getattr__ below): its base,
# pickle's UnpicklingError, costs ~1 ms to import (_pickle, copyreg,
# _compat_pickle) in every `ember run` launcher, whose services never use it.
# BrokenBarrierError likewise: its base is threading's (~1.5 ms to import).
_LAZY = {"MessageError": _message_error, "BrokenBarrierError": _broken_barrier_error}


def __getattr__(name):
    make = _LAZY.get(name)
    if make is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # setdefault (atomic): threads that race here may each make a class,
    # but all get the first one stored, so one class is ever seen and
    # ``except ember.BrokenBarrierError`` catches what any thread raises
    return globals().setdefault(name, make())


class SharedObjectError(ObjectError):
    """A shared object (``ember.serve``, ``ember.connect``) cannot be used:
    it was destroyed (its scope closed, its owner ended, its last holder
    let go), or a request to it could not be made."""


class CoreError(PoolError, ChannelError, SyncError):
    """An error of ember's C core that belongs to no one kind of object: a
    bad argument, a system call that failed, a segment that is gone, shared
    state that failed validation, a wait interrupted by a signal.  The same
    return code raises it from pools, channels and sync objects alike (see
    ``ember._rc``), so it is also a PoolError, a ChannelError and a
    SyncError: ``except PoolError`` around pool calls still catches it."""


class CoreTimeout(CoreError, TimeoutError):
    """A C-core wait ran out of time (EMBER_ERR_TIMEOUT) where the call has
    no more specific meaning for it."""


class RuntimeEnded(GlobalServicesError, CoreError):
    """A call into a runtime that has ended: its launcher tore it down
    (a runtime failure, GS or the shepherd dead; or a stop) and the
    channel or pool the call met is gone.  The message says which part
    failed, as ``ember run`` reports it, and where the runtime's event log
    is.  Also a CoreError, the error the torn-down object gave, so that
    ``except ChannelError`` / ``except PoolError`` catch it as before."""


class LauncherError(EmberError, RuntimeError):
    """A command could not be started on a node: the host is unknown or
    refused the connection, ``srun`` is missing or this is not a Slurm
    allocation, or the node could not run the command.  The message names
    the node and ends with the tail of what the launch printed on stderr.

    Attributes: ``node`` (the ``ember.launcher.nodes.NodeSpec``, or
    None), ``argv`` (the command), ``stderr`` (the launch's stderr text).
    """

    def __init__(self, message, node=None, argv=None, stderr=""):
        super().__init__(message)
        self.node = node
        self.argv = argv
        self.stderr = stderr

    def __reduce__(self):
        return (type(self), (str(self), self.node, self.argv, self.stderr))
