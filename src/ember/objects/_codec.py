"""The one codec of ember's Python layer: how a Python object becomes one
channel message and back.  Queue, Pipe/Connection, shared objects (proxy
requests and replies) and Processes (call and result records,
:mod:`._pickling`) all use it.

**Pickling.**  Pickle protocol 5 with the C pickler; when it refuses the
object (lambdas, closures, local classes, ...) or its output names the
``__main__`` module (a class or function of ``__main__`` pickled by
reference could not be found in another process, whose ``__main__`` is not
ours -- a template child, a host process), the object is pickled again with
``cloudpickle``, which ships such code by value (keeping the real
``co_filename``, so remote tracebacks show the source lines).  A pickle
that merely contains the text ``__main__`` also takes that (equally
correct, slower) way.  The receiver always uses ``pickle.loads``.

**Messages.**  A pickle with no large buffer travels as it is (``bytes``,
starting with the protocol-5 header ``\\x80\\x05``): inline in the channel
slot when it fits, else the channel moves it through a pool allocation.
When the object has contiguous buffers (``PickleBuffer``: numpy arrays,
``bytearray``, ...) of at least :data:`OOB_MIN` bytes in all, they are taken
**out of band** in the same pickling pass (the object is pickled once): one
pool allocation holds a *frame* -- header, the pickle, then each buffer,
64-byte aligned -- written with one copy of each buffer and moved through
the channel without another.  The receiver gets a memoryview over that
block (``Channel.recv_auto``) and unpickles with the buffers as views of
it: a numpy array is rebuilt over the pool memory with no copy (the block is
freed when the last such view is released); ``bytearray`` copies, as its own
``__reduce_ex__`` asks.  When an object's buffers are small in all, it is
pickled once more with them in band (small, so cheap), since a pool
allocation costs more than the copy.

Frame layout (little endian): ``b"EMQF"``, u32 number of buffers n, u64
pickle length, n x u64 buffer lengths; padded to 64; the pickle; each buffer
at the next multiple of 64.  :func:`loads` checks every length against the
block: a malformed frame or a message that is not a pickle raises
:class:`~ember.exceptions.MessageError` (an ``UnpicklingError``), never
reads outside the block.
"""
import pickle
import struct

from ..exceptions import MessageError
from ..pools_c import Allocation

__all__ = ["dumps", "loads", "not_ours", "FLAT", "pickle_bytes", "pickle_inband", "free_unsent", "OOB_MIN",
           "MAGIC", "MessageError"]

#: Buffers smaller than this in all travel in band (a pool allocation costs more).
OOB_MIN = 64 * 1024
MAGIC = b"EMQF"
_HEAD = struct.Struct("<4sIQ")
_MAX_BUFS = 1 << 20

_pdumps = pickle.dumps
_ploads = pickle.loads


def _align(n):
    return (n + 63) & ~63


# ------------------------------------------------------------------ cloudpickle
_pickler_cls = None


def _cloud_pickler():
    """cloudpickle's Pickler, except that code objects keep their real
    ``co_filename`` (cloudpickle writes ``<dynamic-code>``), so tracebacks
    from the other process show the source lines of ``__main__`` code."""
    global _pickler_cls
    if _pickler_cls is None:
        import collections
        import types

        import cloudpickle

        base = cloudpickle.Pickler
        code_reduce = getattr(cloudpickle.cloudpickle, "_code_reduce", None)
        if code_reduce is None or not hasattr(base, "dispatch_table"):
            _pickler_cls = base
        else:
            def reduce_code(obj):
                fn, args = code_reduce(obj)
                return fn, tuple(obj.co_filename if type(a) is str and a == "<dynamic-code>"
                                 else a for a in args)

            class _Pickler(base):
                dispatch_table = collections.ChainMap({types.CodeType: reduce_code},
                                                      base.dispatch_table)

            _pickler_cls = _Pickler
    return _pickler_cls


def _cloud_dumps(obj, buffer_callback=None):
    import io
    f = io.BytesIO()
    _cloud_pickler()(f, protocol=5, buffer_callback=buffer_callback).dump(obj)
    return f.getvalue()


def pickle_bytes(obj, buffer_callback=None):
    """Pickle ``obj`` (protocol 5): the C pickler, or cloudpickle when it
    refuses the object or names ``__main__`` (see the module's doc)."""
    try:
        data = _pdumps(obj, 5, buffer_callback=buffer_callback)
    except Exception:
        return _cloud_dumps(obj, buffer_callback)
    if data.find(b"__main__") >= 0:
        return _cloud_dumps(obj, buffer_callback)
    return data


def pickle_inband(obj):
    """``obj`` as one self-contained pickle (every buffer in band), always
    by cloudpickle (functions and classes by value where they need it)."""
    return _cloud_dumps(obj)


# ------------------------------------------------------------------ messages
#: Types whose pickle can hold no out-of-band buffer and no reference to a
#: global (so none to ``__main__``): :func:`dumps` pickles them with no
#: buffer callback and no ``__main__`` check, the small-object fast path of
#: Queue and Pipe.  (``bytes`` is pickled in band by protocol 5; only
#: ``PickleBuffer`` goes out of band.)
FLAT = frozenset((int, float, str, bytes, bool, type(None), complex))


def dumps(obj, pool, timeout=None):
    """``bytes`` (a plain pickle) or an :class:`Allocation` of ``pool``
    holding a frame (the caller sends it, or frees it with
    :func:`free_unsent` if the send fails).  ``timeout``: how long to wait
    for pool space for a frame (None: forever)."""
    t = type(obj)
    if t in FLAT:
        return _pdumps(obj, 5)
    if t is tuple and len(obj) <= 8:
        for x in obj:
            if type(x) not in FLAT:
                break
        else:
            return _pdumps(obj, 5)
    bufs = []
    try:
        data = _pdumps(obj, 5, buffer_callback=bufs.append)
    except Exception:
        bufs = []
        data = _cloud_dumps(obj, bufs.append)
    else:
        if data.find(b"__main__") >= 0:      # (find: cheaper than `in` for bytes)
            bufs = []
            data = _cloud_dumps(obj, bufs.append)
    if not bufs:
        return data
    try:
        raws = [b.raw() for b in bufs]
    except BufferError:           # a buffer that is not contiguous: all in band
        raws = None
    if raws is None or sum(r.nbytes for r in raws) < OOB_MIN:
        return pickle_bytes(obj)
    return _frame(data, raws, pool, timeout)


def _frame(data, bufs, pool, timeout):
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


def _bad(n, why):
    return MessageError(f"malformed message ({n} bytes): {why}")


def _unpickle(data, n, buffers=None):
    try:
        return _ploads(data, buffers=buffers)
    except (pickle.UnpicklingError, EOFError) as exc:
        if isinstance(exc, MessageError):
            raise
        raise _bad(n, f"a broken pickle ({type(exc).__name__}: {exc})") from None


def not_ours(data, exc):
    """What :func:`loads` raises for ``bytes`` that ``pickle.loads``
    refused with ``exc`` (for callers that unpickle ``bytes`` themselves on
    a fast path): ``exc`` itself if it is a MessageError already."""
    if isinstance(exc, MessageError):
        return exc
    return _bad(len(data), f"not an ember message ({type(exc).__name__}: {exc})")


def loads(data):
    """The object from a received message (``bytes``, or a memoryview over
    a pool block, which is released here unless the object keeps views of
    it).  :class:`MessageError` when the message is not one :func:`dumps`
    made."""
    if type(data) is bytes:
        try:
            return _ploads(data)
        except (pickle.UnpicklingError, EOFError) as exc:
            raise not_ours(data, exc) from None
    total = len(data)
    if data[:4] != MAGIC:
        try:
            if data[:2] != b"\x80\x05":
                raise _bad(total, "not a pickle (protocol 5) nor an ember frame")
            return _unpickle(data, total)
        finally:
            data.release()
    bufs = []
    try:
        if total < _HEAD.size:
            raise _bad(total, "a frame shorter than its header")
        _, n, plen = _HEAD.unpack_from(data, 0)
        hsize = _align(_HEAD.size + 8 * n)
        if n == 0 or n > _MAX_BUFS or hsize > total:
            raise _bad(total, f"a frame that says it holds {n} buffers")
        lens = struct.unpack_from(f"<{n}Q", data, _HEAD.size)
        off = hsize + _align(plen)
        if plen < 2 or off > total:
            raise _bad(total, f"a frame whose pickle ({plen} bytes) overruns it")
        for ln in lens:
            if off + ln > total:
                raise _bad(total, f"a frame whose buffer of {ln} bytes at offset {off} "
                                  f"overruns it")
            bufs.append(data[off:off + ln])
            off += _align(ln)
    except MessageError:
        for b in bufs:
            b.release()
        data.release()
        raise
    return _unpickle(data[hsize:hsize + plen], total, bufs)


def free_unsent(msg):
    """Give back the pool block of a frame that was not sent."""
    if isinstance(msg, Allocation) and not msg.closed:
        try:
            msg.free()
        except Exception:
            pass
