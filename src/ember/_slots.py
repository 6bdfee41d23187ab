"""What each process of a runtime is doing, for ``ember ps`` and ``ember
stacks`` (docs/introspection.md): the process-slots table and the stack dump.

The process-slots table, ``<runtime dir>/<runtime id>.slots``, is a sparse
file of fixed size that every process of the runtime maps shared.  The C
layer (common_c/slots.c, compiled into the channels extension) writes, in
the calling process's own slot, what a blocking channel call waits on —
only on the path that is about to sleep, never on the fast path.  ``ember
ps`` reads the slots (:func:`read`).

A process binds its slot (:func:`bind`) at its first contact with global
services (an attached process when it attaches; it unbinds when it
detaches); an unbound process records nothing.  Binding also installs the
stack dump: on SIGUSR2 the process appends every thread's stack
(faulthandler) to ``<runtime dir>/<runtime id>.stacks/<p_uid>``, which
``ember stacks`` reads; when the binding thread is not the main one (where
alone Python sets signal handlers), faulthandler's own handler until the
main thread takes over.  Both files are removed with the runtime's address.

Everything here is best effort — a failure to bind is logged and nothing is
recorded — but only expected failures (OSError, a refused table) are
swallowed: an exception that a signal handler raises meanwhile (Ctrl-C, an
alarm) propagates as it would have without us.
"""
import faulthandler
import os
import _signal as signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)

from . import _log
from .channels_c import _channels
from .exceptions import EmberError

log = _log.get("slots")

__all__ = ["path", "stacks_dir", "bind", "unbind", "read", "STACKS_SIGNAL"]

#: Set by ``ember ps`` and friends: their own short attachment records nothing.
disabled = False
#: The signal on which a bound Python process writes its threads' stacks.
STACKS_SIGNAL = signal.SIGUSR2
_EXPECTED = (OSError, ValueError, EmberError)


def _dir():
    from .runtime import runtime_dir      # (it imports us: not at the top)
    return runtime_dir(create=False)


def path(runtime_id):
    return os.path.join(_dir(), f"{runtime_id}.slots")


def stacks_dir(runtime_id):
    return os.path.join(_dir(), f"{runtime_id}.stacks")


def bind(runtime_id, p_uid):
    """Bind this process to slot ``p_uid`` of its runtime's table (created
    if missing) and install the stack dump.  Returns True if the slot is
    bound."""
    if disabled or not runtime_id or p_uid is None:
        return False
    try:
        _channels._slots_bind_path(path(runtime_id), int(p_uid))
    except _EXPECTED as exc:
        log.debug("no process slot for p_uid %s: %s", p_uid, exc)
        return False
    try:
        _register_stacks(runtime_id, p_uid)
    except _EXPECTED as exc:
        log.debug("no stack dumps for p_uid %s: %s", p_uid, exc)
    return True


def unbind():
    """Stop recording (an attached process that detaches)."""
    try:
        _channels._slots_bind_path(None, 0)
    except _EXPECTED as exc:
        log.debug("unbinding the process slot: %s", exc)
    _unregister_stacks()


def read(runtime_id):
    """``{p_uid: record}`` of the waits in progress in the runtime's table
    (empty if it has none); a record is a dict with ``c_uid``, ``op``
    (``recv``, ``send``, ``wait_any``, ``wait_any(writable)``; ``acquire``,
    ``wait`` for a synchronization object), ``count`` (channels waited on),
    ``since`` (epoch seconds), ``pid`` and ``tid``; a synchronization
    object's record also has ``m_uid`` and ``offset`` (where it is: its
    pool and its allocation's offset there) and ``kind`` (``Lock``, ...)."""
    try:
        recs = _channels._slots_read_path(path(runtime_id))
    except _EXPECTED:
        return {}
    out = {}
    for p_uid, c_uid, op, count, since_ns, pid, tid, obj in recs:
        r = {"c_uid": c_uid, "op": op, "count": count, "since": since_ns / 1e9, "pid": pid,
             "tid": tid}
        if op in ("acquire", "wait"):
            r.update(c_uid=None, m_uid=c_uid, offset=obj, kind=SYNC_KINDS.get(count, "?"))
        out[p_uid] = r
    return out


#: sync.h's kinds (the ``count`` of a sync object's record).
SYNC_KINDS = {1: "Lock", 2: "RLock", 3: "Semaphore", 4: "Event", 5: "Barrier", 6: "Condition"}


# ------------------------------------------------------------- stack dumps
_stacks_path = None
#: The file faulthandler's handler writes into while that handler is the
#: process's (set from a thread other than the main one, until the main
#: thread takes over: _hand_over).
_stacks_file = None
_fork_hook = False
_hand_over_cb = None    # the pending call's C callback (ctypes), kept alive


def _on_stacks_signal(signum, frame):
    """SIGUSR2: append every thread's stack to our file."""
    p = _stacks_path
    if p is None:
        return
    try:
        with open(p, "a", encoding="utf-8") as f:
            faulthandler.dump_traceback(f, all_threads=True)
    except OSError:
        pass


def _forget_stacks_after_fork():
    global _stacks_path, _stacks_file
    _stacks_path = None          # the file is the parent's
    f, _stacks_file = _stacks_file, None
    if f is not None:            # faulthandler's handler would write into it
        faulthandler.unregister(STACKS_SIGNAL)
        f.close()


def _register_stacks(runtime_id, p_uid):
    """The stack dump, installed only if the program does not handle the
    signal itself: a Python signal handler (no descriptor is held).
    Python sets those only from the main thread.  From another thread (a
    process whose first contact with global services is a thread's: an
    Executor's, a server's), faulthandler's handler, which C sets from any
    thread, writing into a file it holds open, until the main thread takes
    over (:func:`_hand_over`, asked of it as a pending call: as soon as it
    runs Python code again, at once if it is running)."""
    global _stacks_path, _stacks_file, _fork_hook
    if signal.getsignal(STACKS_SIGNAL) not in (signal.SIG_DFL, _on_stacks_signal) \
            or _stacks_file is not None:
        return False
    d = stacks_dir(runtime_id)
    p = os.path.join(d, str(p_uid))
    # The handler before the file has its name: `ember stacks` signals a
    # process that has its file (with no handler, the signal would kill it).
    try:
        signal.signal(STACKS_SIGNAL, _on_stacks_signal)
        main = True
    except ValueError:           # not the main thread
        main = False
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    if main:
        open(p, "wb").close()
    else:
        tmp = f"{p}.{os.getpid()}.new"
        f = open(tmp, "ab")      # appends: `ember stacks` empties it before it asks
        try:
            faulthandler.register(STACKS_SIGNAL, file=f, all_threads=True)
            os.replace(tmp, p)
        except BaseException:
            faulthandler.unregister(STACKS_SIGNAL)
            f.close()
            os.unlink(tmp)
            raise
        _stacks_file = f
    if not _fork_hook:
        os.register_at_fork(after_in_child=_forget_stacks_after_fork)
        _fork_hook = True
    _stacks_path = p
    if not main:
        _ask_main_thread()
    return True


def _ask_main_thread():
    """Have the main thread run :func:`_hand_over` (Py_AddPendingCall: the
    interpreter runs it there, between two bytecodes)."""
    global _hand_over_cb
    import ctypes

    if _hand_over_cb is None:
        proto = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
        _hand_over_cb = proto(_hand_over)
        ctypes.pythonapi.Py_AddPendingCall.argtypes = [proto, ctypes.c_void_p]
        ctypes.pythonapi.Py_AddPendingCall.restype = ctypes.c_int
    if ctypes.pythonapi.Py_AddPendingCall(_hand_over_cb, None) != 0:
        log.debug("cannot ask the main thread to take the stack dump over")


def _hand_over(_arg=None):
    """On the main thread: our Python handler replaces faulthandler's (one
    sigaction: the signal is handled at every instant) and the file
    faulthandler held is closed.  Not if the program set a handler of its
    own meanwhile (it is the process's: faulthandler's file stays until
    :func:`unbind`).  faulthandler's record of its registration stays (its
    handler is no longer installed; :func:`unbind` clears it)."""
    global _stacks_file
    try:
        f = _stacks_file
        if f is not None and signal.getsignal(STACKS_SIGNAL) is signal.SIG_DFL:
            signal.signal(STACKS_SIGNAL, _on_stacks_signal)
            _stacks_file = None
            f.close()
    except BaseException as exc:      # a pending call must not raise
        log.debug("the main thread could not take the stack dump over: %r", exc)
    return 0


def _unregister_stacks():
    global _stacks_path, _stacks_file
    p, _stacks_path = _stacks_path, None
    if p is None:
        return
    try:      # nobody may signal us for stacks any more
        os.unlink(p)
    except OSError:
        pass
    f, _stacks_file = _stacks_file, None
    try:
        h = signal.getsignal(STACKS_SIGNAL)
        if h is signal.SIG_DFL or h is _on_stacks_signal:
            faulthandler.unregister(STACKS_SIGNAL)   # (if registered) back to SIG_DFL
        if h is _on_stacks_signal:
            signal.signal(STACKS_SIGNAL, signal.SIG_DFL)
    except ValueError:
        pass
    if f is not None:
        f.close()
