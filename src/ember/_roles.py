"""What an internal channel of the Python layer is for, written in its
c_uid, so that ``ember ps`` can say what a process blocked on it waits for.

A Process's call and result channels, an Executor's task and result
channels and a shared object host's start-up channels are neither GS
channels nor GS objects (nor is a ProcessPoolExecutor's call queue, an OS
pipe, whose idle workers record a receive from a c_uid of its role:
``ember.mp._child``): nothing names them but their c_uid, and a wait on
one used to show as ``recv(channel 4611686...)``.  Their creator makes the
c_uid with :func:`c_uid` (the same one random draw as ``Channel.create``'s
own c_uid): bit 63 clear (it marks GS's reply channels,
``_client.REPLY_C_UID_BIT``), bit 62 set, the role in bits 56-61, the mark
``0xEB7`` in bits 44-55 and 44 random bits.  :func:`label` reads it back
(``"result of a Process"``); a random c_uid is taken for a role with odds
of about 1 in 100,000.
"""
import os

__all__ = ["PROCESS_CALL", "PROCESS_RESULT", "EXECUTOR_TASKS", "EXECUTOR_RESULTS",
           "SHARED_BOOT", "POOL_EXECUTOR_TASKS", "IDLE", "c_uid", "label"]

PROCESS_CALL, PROCESS_RESULT, EXECUTOR_TASKS, EXECUTOR_RESULTS, SHARED_BOOT = 1, 2, 3, 4, 5
POOL_EXECUTOR_TASKS = 6
LABELS = {PROCESS_CALL: "call of a Process", PROCESS_RESULT: "result of a Process",
          EXECUTOR_TASKS: "tasks of an Executor", EXECUTOR_RESULTS: "results of an Executor",
          SHARED_BOOT: "start-up of a shared object's host",
          POOL_EXECUTOR_TASKS: "tasks of a ProcessPoolExecutor"}
#: ``ember ps``'s status of a worker waiting on its executor's tasks (its
#: role's label).
IDLE = {LABELS[EXECUTOR_TASKS]: "idle (an Executor's worker waiting for tasks)",
        LABELS[POOL_EXECUTOR_TASKS]: "idle (a ProcessPoolExecutor's worker waiting for tasks)"}
_MARK = 1 << 62 | 0xEB7 << 44
_MARK_MASK = 3 << 62 | 0xFFF << 44
_RANDOM = (1 << 44) - 1


def c_uid(role):
    """A new c_uid for an internal channel of ``role`` (one of the
    constants above)."""
    return _MARK | role << 56 | int.from_bytes(os.urandom(8), "little") & _RANDOM


def label(c_uid):
    """What the channel of ``c_uid`` is for (``"result of a Process"``), or
    None if its c_uid names no role."""
    if c_uid is None or c_uid & _MARK_MASK != _MARK:
        return None
    return LABELS.get(c_uid >> 56 & 0x3F)
