"""How Python objects travel between ember processes.

Objects are pickled with protocol 5: functions, classes, lambdas and
closures by value through ``cloudpickle`` (so code defined in ``__main__``,
a notebook or interactively works); everything else as plain pickle does.
Buffers of at least :data:`OOB_MIN` bytes that offer ``PickleBuffer``
(numpy arrays, ``PickleBuffer`` itself) travel *out of band*: each is one
channel message, copied once into a pool allocation by the sender and
received zero-copy as a view of that allocation (the unpickled object keeps
the view; the block is freed when the object goes away).

A *record* on a channel is a sequence of messages::

    header   _HDR (magic, kind, nbuf) + kind-specific extra bytes
    data     the main pickle (bytes)
    buf 1..nbuf

A sender that fails part-way through a record (e.g. the pool is full) pads
it with placeholder messages and sends a new record: readers keep the
*last* complete record.
"""
import pickle
import struct

__all__ = ["dumps", "dumps_fast", "loads", "send_record", "RecordReader",
           "KIND_CALL", "KIND_OK", "KIND_ERR", "KIND_REMOTE_ERR", "OOB_MIN"]

KIND_CALL = 1        # extra: pickled sys.path; data: (target, args, kwargs)
KIND_OK = 2          # data: the return value
KIND_ERR = 3         # extra: traceback text (utf-8); data: the exception
KIND_REMOTE_ERR = 4  # data: plain pickle of (type_name, message, traceback text)

_MAGIC = b"EMR1"
_HDR = struct.Struct("<4sBI")

#: Buffers at least this large travel out of band (one message each).
OOB_MIN = 64 * 1024


_pickler_cls = None


def _pickler():
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
                return fn, tuple(obj.co_filename if type(a) is str and a == "<dynamic-code>" else a
                                 for a in args)

            class _Pickler(base):
                dispatch_table = collections.ChainMap({types.CodeType: reduce_code},
                                                      base.dispatch_table)

            _pickler_cls = _Pickler
    return _pickler_cls


def dumps(obj):
    """Pickle ``obj`` (protocol 5, cloudpickle) -> ``(data, buffers)``:
    ``buffers`` are the raw memoryviews of the out-of-band buffers."""
    import io

    bufs = []

    def callback(pb):
        try:
            raw = pb.raw()
        except BufferError:           # not contiguous: keep it in band
            return True
        if raw.nbytes < OOB_MIN:
            return True
        bufs.append(raw)
        return False

    f = io.BytesIO()
    _pickler()(f, protocol=5, buffer_callback=callback).dump(obj)
    return f.getvalue(), bufs


def dumps_inband(obj):
    """cloudpickle ``obj`` with every buffer in band (one self-contained
    bytes object)."""
    import io

    f = io.BytesIO()
    _pickler()(f, protocol=5).dump(obj)
    return f.getvalue()


def dumps_fast(obj):
    """Like :func:`dumps`, but try the C pickler first (several times faster
    for plain data).  cloudpickle is used instead when the C pickler fails
    (lambdas, closures, ...) or when its output names the ``__main__``
    module: a function or class of ``__main__`` pickled by reference could
    not be found in the other process, whose ``__main__`` is not ours.  (A
    pickle that merely contains the text ``__main__`` also goes the slow,
    equally correct way.)"""
    bufs = []

    def callback(pb):
        try:
            raw = pb.raw()
        except BufferError:
            return True
        if raw.nbytes < OOB_MIN:
            return True
        bufs.append(raw)
        return False

    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=callback)
    except Exception:
        return dumps(obj)
    if b"__main__" in data:
        return dumps(obj)
    return data, bufs


def loads(data, bufs):
    return pickle.loads(data, buffers=bufs)


def send_record(ch, kind, data, bufs=(), extra=b""):
    """Send one record on channel ``ch`` (blocking).  If a buffer cannot be
    sent, the rest of the record is padded so that readers stay in step,
    and the error is raised."""
    ch.send(_HDR.pack(_MAGIC, kind, len(bufs)) + extra)
    sent = 0
    try:
        ch.send(data)
        sent = 1
        for b in bufs:
            ch.send(b)
            sent += 1
    except BaseException:
        for _ in range(1 + len(bufs) - sent):
            try:
                ch.send(b"\0", timeout=1.0)
            except Exception:
                break
        raise


class Record:
    __slots__ = ("kind", "extra", "data", "bufs")

    def __init__(self, kind, extra, data, bufs):
        self.kind, self.extra, self.data, self.bufs = kind, extra, data, bufs


class RecordReader:
    """Reads records from a channel incrementally (a record's messages may
    arrive over time); complete ones gather in :attr:`records`."""

    __slots__ = ("ch", "records", "_hdr", "_data", "_bufs")

    def __init__(self, ch):
        self.ch = ch
        self.records = []
        self._hdr = None
        self._data = None
        self._bufs = []

    @property
    def partial(self):
        """True while a record has started but is not complete."""
        return self._hdr is not None

    def pump(self, timeout=0):
        """Read every message available, waiting up to ``timeout`` seconds
        (None: forever) for the first.  Returns True if anything was read."""
        from ..exceptions import ChannelEmpty

        got = False
        while True:
            try:
                m = self.ch.recv_view(timeout=0 if got else timeout)
            except ChannelEmpty:
                return got
            got = True
            if self._hdr is None:
                if len(m) < _HDR.size or bytes(m[:4]) != _MAGIC:
                    raise ValueError(f"bad record header on channel c_uid {self.ch.c_uid}")
                _, kind, nbuf = _HDR.unpack_from(m)
                self._hdr = (kind, nbuf, bytes(m[_HDR.size:]))
                continue
            if self._data is None:
                self._data = m
            else:
                self._bufs.append(m)
            kind, nbuf, extra = self._hdr
            if len(self._bufs) == nbuf:
                self.records.append(Record(kind, extra, self._data, self._bufs))
                self._hdr, self._data, self._bufs = None, None, []
