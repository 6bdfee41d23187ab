"""``ember.Pipe`` / ``Connection`` and ``ember.wait`` (the shape of
``multiprocessing.connection``), over channels in the runtime's default
pool.  See docs/queues.md.

A Pipe is one GS object (kind ``"Pipe"``) that owns one channel per
direction, and two child objects, its ends (kind ``"Connection"``).  Each
handle of an end (made by ``Pipe()``, or unpickled in another process) holds
a reference on that end; when no handle of an end is left -- every holder
closed it or died (GS counts dead holders out) -- GS **closes** both of the
end's channels: the peer receives what was sent before, then ``EOFError``
(``ChannelClosed``), never a hang; and the peer's sends raise
``BrokenPipeError`` (as multiprocessing's, on a pipe nobody reads any more).
When both ends are gone the channels are destroyed.
"""
import errno
import multiprocessing as _mp
import os
import select
import threading
import time

from ..channels_c import Channel, ChannelClosed, wait_any
from ..channels_c.watch import SLICE, ChannelWatch
from ..exceptions import ChannelError
from . import _codec, naming

_dumps, _loads = _codec.dumps, _codec.loads

__all__ = ["Pipe", "Connection", "wait"]

#: Slots per direction, and block size (objects pickling to <= 240 bytes travel inline).
PIPE_CAPACITY = 1024
PIPE_BLOCK_SIZE = 256
#: Seconds a blocked receiver spins before it sleeps (fixed, as GS's control channels).
PIPE_SPIN = 50e-6


def Pipe(duplex=True):
    """``(conn1, conn2)``: with ``duplex`` both ends send and receive;
    otherwise ``conn1`` only receives and ``conn2`` only sends (as
    ``multiprocessing.Pipe``).

    Raises
    ------
    ember.PoolExhausted
        No room for the pipe's channels in the runtime's default pool.
    ember.GlobalServicesError
        Not inside a runtime.
    """
    pool = naming.default_pool()
    chs = []
    try:
        for _ in range(2 if duplex else 1):
            chs.append(Channel.create(pool, capacity=PIPE_CAPACITY, block_size=PIPE_BLOCK_SIZE))
        if duplex:
            # end 0 sends on channel 0 and receives on 1; end 1 the reverse
            # an end that is gone closes both of its channels: the peer
            # reads EOF after what was sent, and its sends raise BrokenPipeError
            rec = naming.create("Pipe", None, "refcount", b"D", [c.sdesc for c in chs], (),
                                [("Connection", [0, 1]), ("Connection", [1, 0])])
            specs = ((0, 1), (1, 0))
        else:
            rec = naming.create("Pipe", None, "refcount", b"S", [c.sdesc for c in chs], (),
                                [("Connection", [0]), ("Connection", [0])])
            specs = ((None, 0), (0, None))       # end 0 reads, end 1 writes
    except BaseException:
        for c in chs:
            c.destroy()
        raise
    for c in chs:
        c.detach()
    kids = rec.pop("children")
    return tuple(Connection._make(rec, i, kids[i], specs[i][0], specs[i][1]) for i in (0, 1))


def _rebuild(rec, end, o_uid, send_ix, recv_ix, token=None):
    naming.claim(o_uid, token)
    return Connection._make(rec, end, o_uid, send_ix, recv_ix)


class _ReadableWatch(ChannelWatch):
    """What :meth:`Connection.fileno` returns, kept readable while the
    channel has something to receive (a message, or end-of-file) and only
    then, as a socket's is.  The watch's thread makes the eventfd readable
    once the channel has a message (a thread's wake-up after it came); the
    receive that leaves the channel empty makes it unreadable itself,
    before it returns (:meth:`received`), so a ``select`` after the last
    receive never reports an empty end.  Both change the descriptor under
    one lock, each after looking at the channel under it: a message that
    arrives after a receive found the channel empty is seen by the thread,
    which sets it again.

    :meth:`stop` (the handle's close) does not wait for the thread, which
    may be in a ``Channel.poll`` of up to ``SLICE`` seconds: it closes the
    descriptor under the lock (the thread writes it only under the lock,
    after looking whether it was stopped) and lets the thread end by
    itself; the channels, which cannot be detached while the thread polls
    them, are detached by the thread as it ends if the handle was
    collected before (:meth:`detach_after`)."""

    def __init__(self, channel):
        self._lock = threading.Lock()
        self._set = False           # the eventfd holds a count (readable)
        self._ended = False         # the thread is out of its polls for good
        self._after = ()            # channels the thread detaches as it ends
        super().__init__(channel)

    def received(self):
        """A receive took a message: clear the descriptor if the channel is
        now empty (a message that comes after this look sets it again)."""
        with self._lock:
            try:
                if not self._set or self._stop or self.channel.poll(0):
                    return
            except ChannelError:                # destroyed: the next receive raises it
                return
            os.eventfd_read(self.fd)
            self._set = False
            self._armed.set()                   # the thread watches again

    def _run(self):
        poll, fd, armed, lock = self.channel.poll, self.fd, self._armed, self._lock
        try:
            while not self._stop:
                if not poll(SLICE):
                    continue
                with lock:
                    if self._stop:
                        break
                    if not self._set:
                        if not poll(0):             # taken meanwhile: watch again
                            continue
                        os.eventfd_write(fd, 1)     # something to receive: readable
                        self._set = True
                    armed.clear()
                armed.wait()                        # until a receive clears it
        except ChannelError as exc:                 # destroyed: the receive raises it
            self.error = exc
            with lock:
                if not self._stop and not self._set:
                    os.eventfd_write(fd, 1)
                    self._set = True
        finally:
            with lock:
                self._ended = True
                after, self._after = self._after, ()
            _detach(after)

    def stop(self):
        """Close the descriptor and let the thread end (at once if it waits
        for a receive, at the end of its poll's slice otherwise), without
        waiting for it."""
        with self._lock:
            if self._stop:
                return
            self._stop = True
            os.close(self.fd)
        self._armed.set()

    def close(self):
        self.stop()

    def detach_after(self, chs):
        """Detach ``chs`` now if the thread ended, else as it ends."""
        with self._lock:
            if not self._ended:
                self._after = chs
                return
        _detach(chs)


def _detach(chs):
    for ch in chs:
        try:
            ch.detach()
        except Exception:
            pass


def _finish(chs, fdw):
    if fdw:
        fdw[0].stop()
        fdw[0].detach_after(chs)        # its thread may still poll them
    else:
        _detach(chs)


class Connection:
    """One end of a :func:`Pipe` (``multiprocessing.connection.Connection``;
    wait on it with :func:`ember.wait`, or on :meth:`fileno` with
    ``select``)."""

    def __init__(self, *args, **kwargs):
        raise TypeError("Connection objects are made by ember.Pipe()")

    @classmethod
    def _make(cls, rec, end, o_uid, send_ix, recv_ix):
        import weakref
        self = cls.__new__(cls)
        self._rec, self._end, self._o_uid = rec, end, o_uid
        self._ix = (send_ix, recv_ix)
        chs = [Channel.attach(s) for s in rec["channels"]]
        for ch in chs:
            # request/reply traffic: a fixed spin (an adaptive one is bistable, docs/channels.md)
            ch.set_spin(PIPE_SPIN, adaptive=False)
        self._send_ch = chs[send_ix] if send_ix is not None else None
        self._recv_ch = chs[recv_ix] if recv_ix is not None else None
        # the hot paths' channels: None once closed (then the checks raise)
        self._sch, self._rch = self._send_ch, self._recv_ch
        self._pool = chs[0].pool
        self._closed = False
        self._hold = naming.hold(self, o_uid)
        self._fdw = []          # fileno()'s _ReadableWatch, once made
        weakref.finalize(self, _finish, chs, self._fdw).atexit = False
        return self

    def __reduce__(self):
        self._check_closed()
        # the reference travels with the pickle: lent now, claimed by the receiver
        return (_rebuild, (self._rec, self._end, self._o_uid) + self._ix
                + (naming.lend(self._o_uid),))

    def __repr__(self):
        state = "closed" if self._closed else ("duplex" if self.readable and self.writable
                                               else "read-only" if self.readable else "write-only")
        return f"<ember.Connection end {self._end} of pipe {self._rec['o_uid']} {state}>"

    # ------------------------------------------------------------------ state
    @property
    def closed(self):
        """Whether this handle was closed."""
        return self._closed

    @property
    def readable(self):
        """Whether this end receives (both ends of a duplex Pipe do)."""
        return self._recv_ch is not None

    @property
    def writable(self):
        """Whether this end sends (both ends of a duplex Pipe do)."""
        return self._send_ch is not None

    def _check_closed(self):
        if self._closed:
            raise OSError("handle is closed")

    def _check_readable(self):
        if self._closed:
            raise OSError("handle is closed")
        if self._recv_ch is None:
            raise OSError("connection is write-only")

    def _check_writable(self):
        if self._closed:
            raise OSError("handle is closed")
        if self._send_ch is None:
            raise OSError("connection is read-only")

    def close(self):
        """Close this handle.  Once no handle of this end is left in any
        process, the peer reads end-of-file (``EOFError``) after what was
        sent."""
        if not self._closed:
            self._closed = True
            self._sch = self._rch = None
            self._hold.drop()
            if self._fdw:
                self._fdw[0].stop()     # does not wait for its thread

    def fileno(self):
        """A file descriptor that is readable while this end has something
        to receive (a message, or end-of-file), as the stdlib Connection's
        socket is: for ``select``, ``selectors`` and asyncio's
        ``add_reader``.  Made at the first call (an eventfd, kept so by one
        thread of this process that sleeps while the channel is empty: see
        ``_ReadableWatch``) and closed with the handle.  What is
        received comes through the channel, not the descriptor: read it
        with :meth:`recv`, never with ``os.read``.

        Raises
        ------
        OSError
            This handle is closed, or write-only (a send waits only while
            the pipe holds ``PIPE_CAPACITY`` unread messages: nothing to
            wait for on a descriptor).
        """
        self._check_readable()
        if not self._fdw:
            self._fdw.append(_ReadableWatch(self._recv_ch))
            # its receives now tell the watch (the others pay nothing for it)
            self.__class__ = _WatchedConnection
        return self._fdw[0].fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ send
    def send(self, obj):
        """Send a picklable object (pickle protocol 5; large buffers out of
        band, zero-copy on the receiving side for numpy arrays).

        Raises
        ------
        BrokenPipeError
            The other end was closed, or its last holder died: nobody can
            receive any more (as multiprocessing's ``send`` on a pipe whose
            reader closed; ``errno.EPIPE``).
        OSError
            This handle is closed, or read-only.
        ember.PoolExhausted
            A large object does not fit in the pool.
        pickle.PicklingError
            ``obj`` cannot be pickled (nor by cloudpickle).
        """
        ch = self._sch
        if ch is None:
            self._check_writable()
        msg = _dumps(obj, self._pool)
        try:
            ch.send(msg)
        except BaseException as exc:
            if type(msg) is not bytes:
                _codec.free_unsent(msg)
            if isinstance(exc, ChannelClosed):
                raise self._broken() from None
            raise

    def send_bytes(self, buf, offset=0, size=None):
        """Send bytes from a bytes-like object, as multiprocessing does
        (``BrokenPipeError`` once the other end is gone, as :meth:`send`)."""
        self._check_writable()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        try:
            self._send_ch.send(m[offset:offset + size])
        except ChannelClosed:
            raise self._broken() from None

    def _broken(self):
        return BrokenPipeError(errno.EPIPE, f"the other end of pipe {self._rec['o_uid']} was "
                               f"closed (or its last holder died): nobody receives any more")

    # ------------------------------------------------------------------ recv
    def _eof(self, exc):
        return ChannelClosed(f"the other end of pipe {self._rec['o_uid']} was closed (or "
                             f"its last holder died) and everything it sent was received")

    def _recv(self, timeout=None):
        try:
            return self._recv_ch.recv_auto(timeout)
        except ChannelClosed as exc:
            raise self._eof(exc) from exc

    def recv(self):
        """Receive an object; ``EOFError`` (``ChannelClosed``) once the other
        end is closed or dead and everything it sent was received.

        Raises
        ------
        ember.ChannelClosed
            The other end was closed (or its last holder died) and
            everything it sent was received (an ``EOFError``).
        OSError
            This handle is closed, or write-only.
        ember.MessageError
            The message is not one ember's codec made.
        """
        ch = self._rch
        if ch is None:
            self._check_readable()
        try:
            data = ch.recv_auto(None)
        except ChannelClosed as exc:
            raise self._eof(exc) from exc
        return _loads(data)

    def recv_bytes(self, maxlength=None):
        """Receive a message sent with ``send_bytes`` as bytes."""
        self._check_readable()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._recv()
        if maxlength is not None and len(data) > maxlength:
            self.close()
            raise OSError("bad message length")
        if type(data) is bytes:
            return data
        with data:                      # a large message: give its pool block back now
            return bytes(data)

    def recv_bytes_into(self, buf, offset=0):
        """Receive into a writable buffer at ``offset`` (in bytes, as
        multiprocessing's, whatever the buffer's item size); return the
        number of bytes.  A message too long raises
        ``multiprocessing.BufferTooShort`` with the whole message as its
        argument."""
        self._check_readable()
        with memoryview(buf) as m:
            total = m.nbytes
            if offset < 0:
                raise ValueError("negative offset")
            if offset > total:
                raise ValueError("offset too large")
            data = self._recv()
            n = len(data)
            try:
                if offset + n > total:
                    raise _mp.BufferTooShort(data if type(data) is bytes else bytes(data))
                m.cast("B")[offset:offset + n] = data
                return n
            finally:
                if type(data) is not bytes:
                    data.release()      # a large message: give its pool block back now

    def poll(self, timeout=0.0):
        """Whether there is anything to read (or end-of-file), waiting up to
        ``timeout`` seconds (None: forever)."""
        self._check_readable()
        if timeout is not None and timeout < 0:
            timeout = 0
        return self._recv_ch.poll(timeout)

    # ember.wait() support
    def _wait_channel(self):
        self._check_readable()
        return self._recv_ch


class _WatchedConnection(Connection):
    """A :class:`Connection` whose :meth:`~Connection.fileno` was asked
    for: each receive clears the descriptor, before it returns, if nothing
    is left to receive."""

    def recv(self):
        obj = Connection.recv(self)
        self._fdw[0].received()
        return obj

    def _recv(self, timeout=None):
        data = Connection._recv(self, timeout)
        self._fdw[0].received()
        return data


def _fd_of(o):
    if isinstance(o, int) and not isinstance(o, bool):
        return o
    fileno = getattr(o, "fileno", None)
    if fileno is not None:
        return fileno()
    sentinel = getattr(o, "sentinel", None)
    if isinstance(sentinel, int):
        return sentinel
    raise TypeError(f"ember.wait() takes Connections, Queues, channels, file descriptors and "
                    f"objects with fileno() or an int sentinel, not {type(o).__name__}")


#: With file descriptors among the objects, channels and descriptors are
#: checked in turn, sleeping at most this long on either.
_MIXED_SLICE = 0.001


def wait(object_list, timeout=None):
    """Wait until one or more of ``object_list`` is ready; return those
    that are (``[]`` after ``timeout`` seconds; None waits forever).  Like
    ``multiprocessing.connection.wait``: a Connection or Queue is ready when
    a receive would not block (something to read, or end-of-file); a file
    descriptor (or an object with ``fileno()``, or with an int
    ``sentinel``, e.g. a process sentinel) when it is readable.

    Raises
    ------
    TypeError
        An object of ``object_list`` is none of those.
    """
    objs = list(object_list)
    by_ch = {}
    chans = []
    fds = {}
    for o in objs:
        if isinstance(o, Channel):
            ch = o
        else:
            get = getattr(o, "_wait_channel", None)
            ch = get() if get is not None else None
        if ch is not None:
            if id(ch) not in by_ch:
                by_ch[id(ch)] = []
                chans.append(ch)
            by_ch[id(ch)].append(o)
        else:
            fds.setdefault(_fd_of(o), []).append(o)
    if timeout is not None and timeout < 0:
        timeout = 0
    deadline = None if timeout is None else time.monotonic() + timeout

    def ready_of(chs, fd_events):
        out = []
        for ch in chs:
            out.extend(by_ch[id(ch)])
        for fd, _ in fd_events:
            out.extend(fds.get(fd, ()))
        return [o for o in objs if any(o is r for r in out)]

    if not fds:
        if not chans:
            if timeout:
                time.sleep(timeout)
            return []
        return ready_of(wait_any(chans, timeout=timeout), ())
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if chans:
            got = wait_any(chans, timeout=0)
            evs = poller.poll(0)
            if got or evs:
                return ready_of(got, evs)
            if left == 0:
                return []
            s = _MIXED_SLICE if left is None else min(_MIXED_SLICE, left)
            got = wait_any(chans, timeout=s)
            evs = poller.poll(0 if got else int(s * 1000))
        else:
            evs = poller.poll(None if left is None else int(left * 1000 + 0.999))
            got = []
        if got or evs:
            return ready_of(got, evs)
        if left == 0:
            return []

