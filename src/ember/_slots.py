"""The process-slots table of a runtime: what each process is blocked on.

``<runtime dir>/<runtime id>.slots`` is a sparse file of fixed size that
every process of the runtime maps shared.  The C layer (common_c/slots.c,
compiled into the channels extension) writes, in the calling process's own
slot, what a blocking channel call waits on — only on the path that is
about to sleep, never on the fast path.  ``ember ps`` reads the slots
(:func:`read`).  A process binds its slot at its first contact with global
services (an attached process when it attaches, and it unbinds when it
detaches); an unbound process records nothing.  Binding also registers the
process's stack dump for ``ember stacks`` (:mod:`ember.launcher.inspect`).
The file is removed with the runtime's address.
"""
import os

from . import _log

log = _log.get("slots")

__all__ = ["path", "bind", "unbind", "read"]

#: Set by ``ember ps`` and friends: their own short attachment records nothing.
disabled = False


def path(runtime_id):
    from .runtime import runtime_dir
    return os.path.join(runtime_dir(create=False), f"{runtime_id}.slots")


def bind(runtime_id, p_uid):
    """Bind this process to slot ``p_uid`` of its runtime's table (created
    if missing).  Best effort: introspection must never stop a process, so a
    failure is logged and nothing is recorded."""
    if disabled or not runtime_id or p_uid is None:
        return False
    from .channels_c import _channels
    try:
        _channels._slots_bind_path(path(runtime_id), int(p_uid))
    except Exception as exc:
        log.debug("no process slot for p_uid %s: %s", p_uid, exc)
        return False
    try:       # and write our stacks on request (ember stacks)
        from .launcher.inspect import register_stacks
        register_stacks(runtime_id, p_uid)
    except Exception as exc:
        log.debug("no stack dumps for p_uid %s: %s", p_uid, exc)
    return True


def unbind():
    """Stop recording (an attached process that detaches)."""
    try:
        from .channels_c import _channels
        _channels._slots_bind_path(None, 0)
        from .launcher.inspect import unregister_stacks
        unregister_stacks()
    except Exception as exc:
        log.debug("unbinding the process slot: %s", exc)


def read(runtime_id):
    """``{p_uid: record}`` of the waits in progress in the runtime's table
    (empty if it has none); a record is a dict with ``c_uid``, ``op``
    (``recv``, ``send``, ``wait_any``, ``wait_any(writable)``), ``count``
    (channels waited on), ``since`` (epoch seconds), ``pid`` and ``tid``."""
    from .channels_c import _channels
    try:
        recs = _channels._slots_read_path(path(runtime_id))
    except Exception:
        return {}
    return {p_uid: {"c_uid": c_uid, "op": op, "count": count, "since": since_ns / 1e9,
                    "pid": pid, "tid": tid}
            for p_uid, c_uid, op, count, since_ns, pid, tid in recs}
