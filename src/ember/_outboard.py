"""The shepherd's output board (shepherd/outboard.c): whether a process's
output had all been forwarded when it exited, for a join answered by the
kernel (ember.objects.process; docs/python-processes.md, "Output and
join").  One per node's shepherd: ``/dev/shm/ember.<runtime id>.output``,
made by the shepherd, which unlinks it when it ends (on another node, its
node agent after it; the launcher's sweep of the runtime's segments takes
it otherwise).  The shepherd of a node that shares the head's /dev/shm
maps the head shepherd's board and leaves it to it."""
import _thread     # (not threading: the shepherd, and a .py head forked from it, import this)
import os
import sys

from . import _env

__all__ = ["path", "create", "attach", "out", "exiting"]


def path(runtime_id):
    return f"/dev/shm/ember.{runtime_id}.output"


_refused = set()      # runtime ids whose board could not be mapped here
#: The runtime whose board this process maps (inherited by a fork).  A
#: process maps one board at a time: a join in a later runtime (ember.init()
#: after ember.shutdown()) maps that one's in its place, unless the board
#: mapped is the process's own runtime's (see :func:`attach`).
_mapped_for = [None]
_lock = _thread.allocate_lock()    # one (re)mapping at a time


_ext_mod = [None]


def _ext():
    """``ember.shepherd._spawn`` (the board's C functions), imported at the
    first call only: a ``from PACKAGE import`` in a function runs
    importlib's Python code (``_handle_fromlist``) at every call, and at
    :func:`exiting` that was the first time in every template child.  The
    template calls :func:`attach`, and so this, before it forks."""
    m = _ext_mod[0]
    if m is None:
        from .shepherd import _spawn as m
        _ext_mod[0] = m
    return m


def _environ(name):
    """``os.environ.get(name)``, read from the mapping's own dict: at
    :func:`exiting` ``os.environ.get`` ran os's and collections.abc's Python
    code (``Mapping.get``, ``_Environ.__getitem__``, the key's encoding and
    the value's decoding) for the first time in every template child, a
    copy-on-write fault for each object of the template's it touched.
    Encoded as os.environ encodes (``os.fsencode``'s codec, C calls only)."""
    data = getattr(os.environ, "_data", None)     # (CPython's; another Python: the mapping)
    if data is None:
        return os.environ.get(name)
    codec = sys.getfilesystemencoding()
    v = data.get(name.encode(codec, "surrogateescape"))
    return None if v is None else v.decode(codec, "surrogateescape")


def _home():
    """The runtime this process was started in (its environment's, not an
    ``ember.init()``'s): the board of a template child, the shepherd or a
    managed process, which its exit marks (:func:`exiting`)."""
    return _environ(_env.RUNTIME_ID)


def create(runtime_id):
    """The shepherd: make and map its node's board (OSError if it cannot),
    in place of one it inherited (a shepherd forked from a process that
    had joined in an earlier runtime: ember.init()'s host)."""
    _spawn = _ext()
    with _lock:
        if not _spawn.ob_replace(path(runtime_id), True):
            raise OSError(f"{path(runtime_id)} is not an output board of this layout")
        _mapped_for[0] = runtime_id


def attach():
    """Map the board of the runtime this process is in (a process forked
    from the shepherd or the template has it already).  True if this
    process maps it now: False if there is none, or if it maps its own
    runtime's board (:func:`_home`) and is in another one (``ember.init(
    address=...)`` in a managed process), which it keeps for its exit's
    mark (joins then ask GS)."""
    _spawn = _ext()             # bound here: the template forks after this
    rid = _env.get(_env.RUNTIME_ID)
    if not rid:
        return False
    if _mapped_for[0] == rid:
        return True
    if rid in _refused:
        return False
    with _lock:
        cur = _mapped_for[0]
        if cur == rid:
            return True
        if cur is not None and cur == _home():
            return False
        try:
            ok = _spawn.ob_replace(path(rid))
        except OSError:
            ok = False
        if ok:
            _mapped_for[0] = rid
        else:
            _refused.add(rid)
        return ok


# A fork child's copy may be held (another thread of the parent mapping):
# made a new, free lock in place.  The lock's own C method, not a Python
# function: a Python hook cost every template child ~15 page faults of
# copy-on-write (its frame, the module's globals, the old lock freed).
os.register_at_fork(after_in_child=_lock._at_fork_reinit)


#: How long a join waits for the shepherd to forward what an exited
#: process's pipes held before it asks GS (whose answer comes after that).
WAIT = 0.25


def out(p_uid):
    """True once everything process ``p_uid`` (of this node, exited with
    code 0) wrote is out: it had nothing left to forward when it exited,
    or the shepherd has written what it left (waited for, up to
    :data:`WAIT`).  False: ask GS, whose answer follows the shepherd's
    forwarding of it."""
    _spawn = _ext()
    if not attach():
        return False
    return _spawn.ob_clean(p_uid) or _spawn.ob_wait_drained(p_uid, WAIT)


def exiting():
    """In a process about to exit with code 0, after its last write: say on
    the board whether all its output is out (a template child: the board
    inherited from the template)."""
    _spawn = _ext()
    if _mapped_for[0] is not None and _mapped_for[0] == _home():
        try:
            _spawn.ob_exiting(int(_environ(_env.P_UID) or ""))
        except ValueError:
            pass
