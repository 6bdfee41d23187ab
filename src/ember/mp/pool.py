"""``Pool`` of the ``"ember"`` context: ``multiprocessing.pool.Pool`` with
its task and result queues on ember's queues (one channel each in the
runtime's default pool) instead of the stdlib's pipes.

Everything else is the stdlib's: its three handler threads, chunking,
``map``/``imap``/``apply_async``/``starmap``, ``maxtasksperchild``,
``close``/``terminate``/``join``, and its worker loop
(``multiprocessing.pool.worker``, which takes any object with
``put``/``get``).  What changes:

- a task or a result is one channel message (pickled in the sending
  thread with multiprocessing's ``ForkingPickler``, as the stdlib's pool
  does, so the same objects can and cannot travel; small ones inline in
  the channel's slot, a large chunk in one pool block), so no pipe is
  written in pieces and read back by a lock holder, and no reader lock is
  taken: the channel is multi-consumer;
- the worker handler waits on the workers' sentinels and its own change
  notifier only (the stdlib's also wakes for every result: it waits on the
  result pipe's fd, which an ember queue does not have).
"""
import queue as _queue
import time

from multiprocessing import pool as _pool

__all__ = ["Pool"]


class _Pipe:
    """One direction of the pool's traffic over an ember Queue, pickled as
    the stdlib's pool pickles it (``ForkingPickler``, no cloudpickle
    fallback): what the stdlib cannot send (a lambda as a result) fails at
    ``put`` as it does there, and the worker wraps that in
    ``MaybeEncodingError``."""

    __slots__ = ("_q",)

    def __init__(self, q):
        self._q = q

    def put(self, obj):
        from multiprocessing.reduction import ForkingPickler
        self._q.put(bytes(ForkingPickler.dumps(obj)))

    def get(self, *args, **kwargs):
        from multiprocessing.reduction import ForkingPickler
        return ForkingPickler.loads(self._q.get(*args, **kwargs))

    def __reduce__(self):
        return (_Pipe, (self._q,))


class Pool(_pool.Pool):
    """``multiprocessing.pool.Pool`` over ember queues (see the module)."""

    def _setup_queues(self):
        from ..objects.queues import Queue

        self._inqueue = _Pipe(Queue())
        self._outqueue = _Pipe(Queue())
        self._quick_put = self._inqueue.put
        self._quick_get = self._outqueue.get

    def _get_sentinels(self):
        return [self._change_notifier._reader]

    @staticmethod
    def _help_stuff_finish(inqueue, task_handler, size):
        # terminate(): the task handler may be blocked on a full task queue;
        # take tasks out until it has finished (the workers are terminated
        # next, whatever they took).
        while task_handler.is_alive():
            try:
                inqueue.get(timeout=0.01)
            except _queue.Empty:
                pass
            except (OSError, EOFError, ValueError):
                break
            time.sleep(0)
