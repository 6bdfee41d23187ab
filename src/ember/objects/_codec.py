"""How Queue and Connection turn objects into channel messages and back.

Pickle protocol 5.  A pickle with no large buffer travels as it is (its
first bytes are the protocol-5 header ``\\x80\\x05``): inline in the channel
slot when it fits, else the channel moves it through a pool allocation.
When the object has large contiguous buffers (``PickleBuffer``: bytearray,
numpy arrays, ...; at least :data:`OOB_MIN` bytes) they are taken out of
band: one pool allocation holds a *frame* -- header, the pickle, then each
buffer, 64-byte aligned -- written with one copy of each buffer and moved
through the channel without another.  The receiver gets a memoryview over
that block (``Channel.recv_auto``) and unpickles with the buffers as views
of it: a numpy array is rebuilt over the pool memory with no copy (the block
is freed when the last such view is released); ``bytearray`` copies, as its
own ``__reduce_ex__`` asks.

Frame layout (little endian): ``b"EMQF"``, u32 number of buffers n, u64
pickle length, n x u64 buffer lengths; padded to 64; the pickle; each buffer
at the next multiple of 64.
"""
import pickle
import struct

from ..pools_c import Allocation

#: Buffers smaller than this travel in band (a pool allocation costs more).
OOB_MIN = 64 * 1024
MAGIC = b"EMQF"
_HEAD = struct.Struct("<4sIQ")


def _align(n):
    return (n + 63) & ~63


class _Large(Exception):
    pass


def _in_band(pb):
    """The fast path's buffer callback: small buffers in band; a large one
    sends us to the frame path."""
    try:
        raw = pb.raw()
    except BufferError:
        return True
    if raw.nbytes < OOB_MIN:
        return True
    raise _Large


_plain = pickle.dumps


def dumps(obj, pool, timeout=0):
    """``bytes`` (a plain pickle) or an :class:`Allocation` holding a frame
    (the caller sends it, or frees it if the send fails)."""
    try:
        return _plain(obj, 5, buffer_callback=_in_band)
    except _Large:
        return _dumps_frame(obj, pool, timeout)


def _dumps_frame(obj, pool, timeout):
    bufs = []

    def cb(pb):
        try:
            raw = pb.raw()
        except BufferError:          # not contiguous: in band
            return True
        if raw.nbytes < OOB_MIN:
            return True
        bufs.append(raw)
        return False

    data = pickle.dumps(obj, 5, buffer_callback=cb)
    if not bufs:
        return data
    n = len(bufs)
    hsize = _align(_HEAD.size + 8 * n)
    off = hsize + _align(len(data))
    offsets = []
    for b in bufs:
        offsets.append(off)
        off += _align(b.nbytes)
    a = pool.alloc(off, timeout=timeout)
    try:
        mv = memoryview(a)
        try:
            _HEAD.pack_into(mv, 0, MAGIC, n, len(data))
            struct.pack_into(f"<{n}Q", mv, _HEAD.size, *(b.nbytes for b in bufs))
            mv[hsize:hsize + len(data)] = data
            for o, b in zip(offsets, bufs):
                mv[o:o + b.nbytes] = b
        finally:
            mv.release()
    except BaseException:
        a.free()
        raise
    return a


def loads(data):
    """The object from a received message (``bytes`` or a memoryview over
    a pool block)."""
    if type(data) is bytes:
        return pickle.loads(data)
    if data[:4] != MAGIC:
        try:
            return pickle.loads(data)
        finally:
            data.release()
    _, n, plen = _HEAD.unpack_from(data, 0)
    lens = struct.unpack_from(f"<{n}Q", data, _HEAD.size)
    hsize = _align(_HEAD.size + 8 * n)
    off = hsize + _align(plen)
    bufs = []
    for ln in lens:
        bufs.append(data[off:off + ln])
        off += _align(ln)
    return pickle.loads(data[hsize:hsize + plen], buffers=bufs)


def free_unsent(msg):
    """Give back the pool block of a frame that was not sent."""
    if isinstance(msg, Allocation) and not msg.closed:
        try:
            msg.free()
        except Exception:
            pass
