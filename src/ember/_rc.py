"""The one map from the C core's return codes (``ember_rc_t`` in
``common_c/ember_common.h``) to exceptions, shared by ``ember.pools_c._pools``,
``ember.channels_c._channels`` and ``ember.sync_c._sync`` (pyzmq's
``checkrc``): the same code raises the same exception class, with the same
explanation, whichever extension met it.

Each extension's ``_check_rc(rc, what)`` calls :func:`error` and raises what
it returns; the message is ``"<what>: <explanation> [<code name>]"``.
Call sites that know more (the holder of a stuck mutex, the size of the
message that did not fit) raise the class from :data:`EXC` with their own
text, still ending in ``[<code name>]``.
"""
import errno
import os

from ember.exceptions import (ChannelClosed, ChannelEmpty, ChannelError, ChannelFull, CoreError,
                              CoreTimeout, DescriptorError, PoolError, PoolExhausted)

__all__ = ["NAMES", "EXC", "TEXT", "error"]

# Mirrors the enum in ember_common.h; tests/test_cbase_rc.py checks it
# against ember_rc_str() of every extension.
NAMES = (
    "EMBER_OK", "EMBER_ERR_INVALID_ARG", "EMBER_ERR_NOMEM", "EMBER_ERR_OS",
    "EMBER_ERR_NOT_FOUND", "EMBER_ERR_BAD_DESCRIPTOR", "EMBER_ERR_BAD_MAGIC",
    "EMBER_ERR_VERSION", "EMBER_ERR_OUT_OF_RANGE", "EMBER_ERR_EXHAUSTED",
    "EMBER_ERR_DOUBLE_FREE", "EMBER_ERR_STALE", "EMBER_ERR_CORRUPT",
    "EMBER_ERR_FULL", "EMBER_ERR_EMPTY", "EMBER_ERR_TIMEOUT",
    "EMBER_ERR_TOO_BIG", "EMBER_ERR_DESTROYED", "EMBER_ERR_INTERRUPTED",
    "EMBER_ERR_BUFFER_TOO_SMALL", "EMBER_ERR_CLOSED", "EMBER_ERR_LOCK_STUCK",
)
EMBER_OK = 0
EMBER_ERR_INVALID_ARG = 1
EMBER_ERR_NOMEM = 2
EMBER_ERR_OS = 3
EMBER_ERR_NOT_FOUND = 4
EMBER_ERR_BAD_DESCRIPTOR = 5
EMBER_ERR_BAD_MAGIC = 6
EMBER_ERR_VERSION = 7
EMBER_ERR_OUT_OF_RANGE = 8
EMBER_ERR_EXHAUSTED = 9
EMBER_ERR_DOUBLE_FREE = 10
EMBER_ERR_STALE = 11
EMBER_ERR_CORRUPT = 12
EMBER_ERR_FULL = 13
EMBER_ERR_EMPTY = 14
EMBER_ERR_TIMEOUT = 15
EMBER_ERR_TOO_BIG = 16
EMBER_ERR_DESTROYED = 17
EMBER_ERR_INTERRUPTED = 18
EMBER_ERR_BUFFER_TOO_SMALL = 19
EMBER_ERR_CLOSED = 20
EMBER_ERR_LOCK_STUCK = 21
assert [globals()[n] for n in NAMES] == list(range(len(NAMES)))

# code -> (exception class, explanation).  EMBER_ERR_OS explains with errno.
_TABLE = {
    EMBER_ERR_INVALID_ARG: (CoreError, "invalid argument"),
    EMBER_ERR_NOMEM: (MemoryError, "out of process memory"),
    EMBER_ERR_OS: (CoreError, "a system call failed"),
    EMBER_ERR_NOT_FOUND: (CoreError, "the pool's segment does not exist "
                                     "(destroyed, or made on another node)"),
    EMBER_ERR_BAD_DESCRIPTOR: (DescriptorError, "the descriptor is truncated, corrupt, "
                                                "foreign, or names another pool"),
    EMBER_ERR_BAD_MAGIC: (DescriptorError, "the header there does not match (not the "
                                           "expected ember object, or a stale descriptor)"),
    EMBER_ERR_VERSION: (DescriptorError, "layout version mismatch "
                                         "(made by a different ember version)"),
    EMBER_ERR_OUT_OF_RANGE: (PoolError, "offset or size outside the pool's heap"),
    EMBER_ERR_EXHAUSTED: (PoolExhausted, "the pool has no free block large enough"),
    EMBER_ERR_DOUBLE_FREE: (PoolError, "the block is not allocated (already freed)"),
    EMBER_ERR_STALE: (PoolError, "the block was freed and allocated again since "
                                 "(stale allocation id)"),
    EMBER_ERR_CORRUPT: (CoreError, "shared state is corrupt (the pool's allocator, or the "
                                   "object); destroy the pool"),
    EMBER_ERR_FULL: (ChannelFull, "the channel is full"),
    EMBER_ERR_EMPTY: (ChannelEmpty, "the channel is empty"),
    EMBER_ERR_TIMEOUT: (CoreTimeout, "timed out"),
    EMBER_ERR_TOO_BIG: (ChannelError, "the message is larger than the pool can ever hold"),
    # Only channel calls pass DESTROYED through the map (a destroyed sync object
    # is reported at attach, a destroyed pool is EMBER_ERR_NOT_FOUND).
    EMBER_ERR_DESTROYED: (CoreError, "the channel was destroyed"),
    EMBER_ERR_INTERRUPTED: (CoreError, "interrupted by a signal"),
    EMBER_ERR_BUFFER_TOO_SMALL: (CoreError, "the buffer is too small"),
    EMBER_ERR_CLOSED: (ChannelClosed, "the channel is closed"),
    EMBER_ERR_LOCK_STUCK: (PoolError, "the pool mutex is held by a live process "
                                      "that does not release it"),
}
assert sorted(_TABLE) == list(range(1, len(NAMES))), "every ember_rc_t needs an entry"

#: code -> exception class
EXC = {rc: cls for rc, (cls, _) in _TABLE.items()}
#: code -> explanation
TEXT = {rc: text for rc, (_, text) in _TABLE.items()}


def name(rc):
    """``"EMBER_ERR_..."`` for a code (``"EMBER_ERR_UNKNOWN"`` outside the enum)."""
    return NAMES[rc] if 0 <= rc < len(NAMES) else "EMBER_ERR_UNKNOWN"


def error(rc, what, err=0):
    """The exception for a nonzero ``rc`` (not raised): ``EXC[rc]`` with the
    message ``"<what>: <explanation> [<code name>]"``; an unknown code gives
    a CoreError.  ``err`` is the errno that goes with EMBER_ERR_OS.

    A channel destroyed or a segment gone (DESTROYED, NOT_FOUND, ENOENT)
    in a runtime that has ended gives :class:`RuntimeEnded` instead,
    which says why it ended (``runtime.ended_error``): the torn-down
    runtime's own error named a channel or pool the program never saw."""
    if rc in (EMBER_ERR_DESTROYED, EMBER_ERR_NOT_FOUND) or \
            (rc == EMBER_ERR_OS and err == errno.ENOENT):
        from ember import runtime
        ended = runtime.ended_error()
        if ended is not None:
            return ended
    if rc == EMBER_ERR_OS:
        text = f"{os.strerror(err)} (errno {err})"
    else:
        text = TEXT.get(rc, f"unknown return code {rc}")
    return EXC.get(rc, CoreError)(f"{what}: {text} [{name(rc)}]")
