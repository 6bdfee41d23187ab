"""The shepherd's output board (shepherd/outboard.c): whether a process's
output had all been forwarded when it exited, for a join answered by the
kernel (ember.objects.process; docs/python-processes.md, "Output and
join").  One per node's shepherd: ``/dev/shm/ember.<runtime id>.output``,
made by the shepherd, which unlinks it when it ends (the launcher's sweep
of the runtime's segments takes it otherwise)."""
import os

from . import _env

__all__ = ["path", "create", "attach", "out", "exiting"]


def path(runtime_id):
    return f"/dev/shm/ember.{runtime_id}.output"


_refused = set()      # runtime ids whose board could not be mapped here
#: The runtime whose board this process maps (a process maps one board
#: for its life; inherited by a fork).
_mapped_for = [None]


def create(runtime_id):
    """The shepherd: make and map its node's board (OSError if it cannot)."""
    from .shepherd import _spawn
    _spawn.ob_open(path(runtime_id), True)
    _mapped_for[0] = runtime_id


def attach():
    """Map this node's board (once a process; a process forked from the
    shepherd or the template has it already).  True if this process maps
    the board of the runtime it is in (not, after ``ember.init()`` of a
    second runtime, the first one's)."""
    from .shepherd import _spawn
    rid = _env.get(_env.RUNTIME_ID)
    if not rid:
        return False
    if _mapped_for[0] is not None or _spawn.ob_mapped():
        return _mapped_for[0] == rid
    if rid in _refused:
        return False
    if _spawn.ob_open(path(rid)):
        _mapped_for[0] = rid
        return True
    _refused.add(rid)
    return False


#: How long a join waits for the shepherd to forward what an exited
#: process's pipes held before it asks GS (whose answer comes after that).
WAIT = 0.25


def out(p_uid):
    """True once everything process ``p_uid`` (of this node, exited with
    code 0) wrote is out: it had nothing left to forward when it exited,
    or the shepherd has written what it left (waited for, up to
    :data:`WAIT`).  False: ask GS, whose answer follows the shepherd's
    forwarding of it."""
    from .shepherd import _spawn
    if not attach():
        return False
    return _spawn.ob_clean(p_uid) or _spawn.ob_wait_drained(p_uid, WAIT)


def exiting():
    """In a process about to exit with code 0, after its last write: say on
    the board whether all its output is out (a template child: the board
    inherited from the template)."""
    from .shepherd import _spawn
    if _mapped_for[0] is not None:
        try:
            _spawn.ob_exiting(int(os.environ.get(_env.P_UID, "")))
        except ValueError:
            pass
