"""Records: how a Process's call and result (and an Executor's batches)
travel on its channels.  The objects themselves are made into messages by
the one codec of the Python layer, :mod:`._codec` (pickle protocol 5,
cloudpickle for what plain pickle refuses or what names ``__main__``, large
buffers out of band in one pool block, received zero-copy).

A *record* on a channel is two messages::

    header   _HDR (magic, kind) + kind-specific extra bytes
    data     one message made by _codec.dumps (bytes, or a frame's pool block)

A sender that fails part-way through a record (e.g. the pool is full) pads
it with a placeholder message and raises: readers keep the *last* complete
record.
"""
import struct

from ..exceptions import ChannelEmpty, MessageError
from . import _codec

__all__ = ["send_record", "RecordReader", "Record", "KIND_CALL", "KIND_OK", "KIND_ERR",
           "KIND_REMOTE_ERR"]

KIND_CALL = 1        # extra: pickled sys.path; data: (target, args, kwargs)
KIND_OK = 2          # data: the return value
KIND_ERR = 3         # extra: traceback text (utf-8); data: the exception
KIND_REMOTE_ERR = 4  # data: plain pickle of (type_name, message, traceback text)

_MAGIC = b"EMR2"
_HDR = struct.Struct("<4sB")


def send_record(ch, kind, msg, extra=b""):
    """Send one record on channel ``ch`` (blocking): ``msg`` is what
    :func:`._codec.dumps` made (bytes or an Allocation of the channel's
    pool; freed here if it cannot be sent).  If the data cannot be sent,
    the record is padded so that readers stay in step, and the error is
    raised."""
    try:
        ch.send(_HDR.pack(_MAGIC, kind) + extra)
    except BaseException:
        _codec.free_unsent(msg)
        raise
    try:
        ch.send(msg)
    except BaseException:
        _codec.free_unsent(msg)
        try:
            ch.send(b"\0", timeout=1.0)
        except Exception:
            pass
        raise


def loads(rec):
    """The object of a record (:class:`~ember.exceptions.MessageError` if
    its data is not a message of the codec)."""
    data, rec.data = rec.data, None
    return _codec.loads(data)


class Record:
    __slots__ = ("kind", "extra", "data")

    def __init__(self, kind, extra, data):
        self.kind, self.extra, self.data = kind, extra, data


class RecordReader:
    """Reads records from a channel incrementally (a record's messages may
    arrive over time); complete ones gather in :attr:`records`."""

    __slots__ = ("ch", "records", "_hdr")

    def __init__(self, ch):
        self.ch = ch
        self.records = []
        self._hdr = None

    @property
    def partial(self):
        """True while a record has started but is not complete."""
        return self._hdr is not None

    def pump(self, timeout=0):
        """Read every message available, waiting up to ``timeout`` seconds
        (None: forever) for the first.  Returns True if anything was read."""
        got = False
        while True:
            try:
                m = self.ch.recv_auto(timeout=0 if got else timeout)
            except ChannelEmpty:
                return got
            got = True
            if self._hdr is None:
                if len(m) < _HDR.size or bytes(m[:4]) != _MAGIC:
                    n = len(m)
                    if type(m) is not bytes:
                        m.release()
                    raise MessageError(f"bad record header ({n} bytes) on channel c_uid "
                                       f"{self.ch.c_uid}")
                _, kind = _HDR.unpack_from(m)
                self._hdr = (kind, bytes(m[_HDR.size:]))
                if type(m) is not bytes:
                    m.release()
                continue
            kind, extra = self._hdr
            self.records.append(Record(kind, extra, m))
            self._hdr = None
