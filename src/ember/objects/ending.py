"""The end of a named object's memory, done by the shepherd of the node
that maps the pool (GS decides when: :mod:`ember.globalservices.objects`;
the shepherd's :class:`~ember.shepherd.resources.NodeResources` calls
:func:`end_parts` for ``ShObjectEnd``).

Nothing a client named is trusted: every descriptor must name memory of
``pool`` (the runtime's default pool), a ``"sync"`` part must hold a live
sync object of that kind, a ``"chan"`` part a channel, and an ``"alloc"``
part must not be a channel the node made for GS.
"""
import struct

__all__ = ["end_parts"]


def _alloc_offset(ch_sdesc):
    return struct.unpack_from("<Q", ch_sdesc, 104)[0]


def end_parts(pool, closes, parts, node_channels=()):
    """Close the channels ``closes`` (descriptors), then destroy ``parts``
    (``["chan", sdesc]``, ``["sync", kind, sdesc]``, ``["alloc", sdesc]``),
    all in ``pool``.  Returns the list of what failed (every step runs)."""
    from ..channels_c import Channel
    from ..pools_c import Allocation
    from ..sync_c import _sync
    errs = []
    reserved = {_alloc_offset(s) for s in node_channels}

    def channel(sdesc):
        ch = Channel.attach(sdesc)
        if ch.pool.sdesc != pool.sdesc:
            ch.detach()
            raise ValueError("the channel is not in the object's pool")
        return ch

    for sdesc in closes:
        try:
            ch = channel(sdesc)
            try:
                ch.close()
            finally:
                ch.detach()
        except Exception as exc:
            errs.append(f"closing a channel: {type(exc).__name__}: {exc}")
    for part in parts:
        try:
            what = part[0]
            if what == "chan":
                if _alloc_offset(part[1]) in reserved:
                    raise ValueError("the channel is one of the node's registered channels")
                channel(part[1]).destroy()
                continue
            a = Allocation.attach(part[-1])
            if a.pool.sdesc != pool.sdesc:
                raise ValueError("the allocation is not in the object's pool")
            if a.offset in reserved:
                raise ValueError("the allocation is a channel of the node's")
            if what == "sync":
                _sync._attach(_sync.SyncObject, int(part[1]), part[2], None).destroy()
            elif what == "alloc":
                a.free()
            else:
                raise ValueError(f"unknown part {what!r}")
        except Exception as exc:
            errs.append(f"freeing part {part[0]!r}: {type(exc).__name__}: {exc}")
    return errs
