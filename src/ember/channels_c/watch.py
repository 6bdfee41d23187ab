"""A descriptor that a channel's arrivals make readable, for a caller that
waits on a channel and on sockets in one ``poll()``/``select()`` (asyncio's
``add_reader``), or a callable they call instead (``notify=``: the direct
path of docs/multinode.md, whose receiver waits in its zmq socket's receive
and is woken by a notice sent to that socket).

A channel's receivers sleep on a futex in shared memory, which no
``poll()`` can wait on, and its senders (other processes) cannot write a
descriptor of the receiver's.  :class:`ChannelWatch` turns the futex into an
eventfd with one thread of the caller's process, asleep in
``Channel.poll`` (without the GIL) while the channel is empty::

    w = ChannelWatch(ch)
    while True:
        try:
            msg = ch.recv_nowait()          # the channel first
            break
        except ChannelEmpty:
            pass
        w.rearm()                           # before waiting: see rearm()
        select.select([w.fd, sock_fd], [], [])
        ...                                 # the socket's input, if any
    w.close()                               # before the handle's detach

The fd becomes readable when the channel has a message (or is closed and
drained: ``recv`` will not wait), and stays readable until :meth:`rearm`.
It may be readable with no message left (another receiver took it, or the
caller took it before the thread wrote the fd): a caller loops, as above.
The thread fires once, then waits for :meth:`rearm`, which costs nothing
(a flag test) when it did not fire since the last one: a receiver whose
messages come by its socket pays no system call for the watch.  A message
that arrives after the caller found the channel empty and before its
``rearm`` is not missed: the rearmed thread polls the channel at once.

What it costs: one thread per watch, asleep while the channel is empty
(it re-takes the GIL every 50 ms, as every blocking channel call does, to
check for :meth:`close`), and for a message that comes by the channel one
wake-up more than a plain ``recv`` (the thread's, then the caller's).  A
process killed with a watch open loses nothing: the thread only looks.
"""
import os
import select
import threading

from ember.exceptions import ChannelError

__all__ = ["ChannelWatch"]

#: how long the thread's ``Channel.poll`` waits before it checks for close()
SLICE = 0.05


class ChannelWatch:
    """``fd``: readable while ``channel`` has a message (after :meth:`rearm`;
    see the module docstring).  The channel handle must outlive the watch:
    :meth:`close` it before the handle is detached (a handle busy in the
    watch's poll refuses to detach).

    With ``notify`` (a callable), the thread calls it where it would make
    ``fd`` readable (once per :meth:`rearm`, from the watch's thread, with
    the GIL), and ``fd`` is None (no eventfd is made): for a caller that waits on something
    the callable wakes, as the direct path's inbox does (a zmq message to
    the socket its receive blocks on, docs/multinode.md).  A notice may come
    after the message was taken, or twice for one: the caller loops."""

    def __init__(self, channel, notify=None):
        self.channel = channel
        self._notify = notify           # called instead of writing fd (see the class)
        self.fd = None if notify is not None else os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._fired = False             # the thread wrote fd and waits for rearm()
        self._armed = threading.Event()
        self._stop = False
        self.error = None               # what the channel raised (destroyed, ...)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"ember-watch-{channel.c_uid}")
        self._thread.start()

    def _run(self):
        poll, fd, notify = self.channel.poll, self.fd, self._notify
        try:
            while not self._stop:
                try:
                    ready = poll(SLICE)
                except ChannelError as exc:     # destroyed: the caller's recv raises
                    self.error = exc
                    ready = True
                if not ready or self._stop:
                    continue
                # the flag before the write: a rearm() that sees the flag
                # takes this write's count off the fd, waiting for the write
                # if it has not happened yet (so no count is left over to
                # wake a later wait for nothing)
                self._fired = True
                if notify is None:
                    os.eventfd_write(fd, 1)
                else:
                    try:
                        notify()
                    except Exception as exc:    # the caller's recv raises it
                        self.error = exc
                        return
                if self.error is not None:
                    return
                self._armed.wait()
                self._armed.clear()
        except OSError:                 # the fd closed under a late thread
            pass

    def rearm(self):
        """The caller found the channel empty and is about to wait: if the
        thread fired, take its count off the fd and let it watch again (it
        polls the channel at once, so a message that came meanwhile makes the
        fd readable again)."""
        if self._fired:
            self._fired = False
            if self._notify is None:
                try:
                    os.eventfd_read(self.fd)
                except BlockingIOError:     # the thread set the flag; its write follows
                    select.select([self.fd], [], [])
                    os.eventfd_read(self.fd)
            self._armed.set()

    def close(self):
        """Stop the thread (within :data:`SLICE` seconds) and close the fd."""
        if self._stop:
            return
        self._stop = True
        self._armed.set()
        self._thread.join()
        if self.fd is not None:
            os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
