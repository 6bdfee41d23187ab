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
  result pipe's fd, which an ember queue does not have);
- ``map``/``map_async``/``starmap``/``starmap_async`` over a ``range``
  send each chunk as a slice of the range (three numbers) instead of a
  tuple of its items: the parent does not build and pickle, nor the
  worker unpickle, a tuple of ``chunksize`` ints per task (with 100k
  trivial calls that was a fifth of the map's CPU on 2 cores).  The
  function sees the same items in the same order; the chunks, their
  number and the results are the stdlib's;
- a worker waiting for a task looks every second whether the pool's
  process (its parent) has ended, and exits if so, as spawn's worker
  exits when its task pipe closes (a queue has no end that the writer's
  death closes);
- ``Pool()`` starts its workers from up to four threads at once (an ember
  start waits for its round trip through GS and the shepherd; the
  stdlib's start one after the other).  Workers that replace exited ones
  (``maxtasksperchild``) start the same way when two or more exited
  together, one at a time otherwise;
- a result that cannot travel (larger than the runtime's pool) fails its
  task with ``MaybeEncodingError`` as the stdlib's worker makes it, but
  with the result's repr cut short (:func:`_shortened`).
"""
import queue as _queue
import threading
import time

from multiprocessing import pool as _pool

__all__ = ["Pool"]


#: How many of a Pool's workers are started at once (see
#: Pool._repopulate_pool_static).
_START_STREAMS = 4


class _Pipe:
    """One direction of the pool's traffic over an ember Queue, pickled as
    the stdlib's pool pickles it (``ForkingPickler``, no cloudpickle
    fallback): what the stdlib cannot send (a lambda as a result) fails at
    ``put`` as it does there, and the worker wraps that in
    ``MaybeEncodingError``."""

    __slots__ = ("_q", "_worker")

    def __init__(self, q, worker=False):
        self._q = q
        self._worker = worker     # unpickled in a worker (see get)

    def put(self, obj):
        # ForkingPickler's pickle in pieces: a large bytes object (a
        # task's argument, a result) is copied once, into the message
        # (_codec.parts), and once out of it (load_parts).  (Imported here:
        # `import ember.mp.pool` imports no more of ember than it did.)
        from ..objects import _codec
        from .context import _fp_pieces
        try:
            self._q.put(_codec.parts(_fp_pieces(obj)))
        except Exception:
            short = _shortened(obj) if self._worker else None
            if short is None:
                raise
            self._q.put(_codec.parts(_fp_pieces(short)))

    def get(self, *args, **kwargs):
        from ..objects import _codec
        if self._worker and not args and not kwargs:
            return _codec.load_parts(self._worker_get())
        return _codec.load_parts(self._q.get(*args, **kwargs))

    def _worker_get(self):
        """A worker's wait for its next task, which ends in EOFError (the
        stdlib's worker then exits, as it does at the end of its pipe)
        once the pool's process has ended: a queue has no end that its
        writer's death closes, and a pool's workers are the children of
        the process that made the pool, so that process's pidfd
        (``parent_process()``) is looked at every ``_ORPHAN_CHECK``
        seconds.  Else the workers of a pool whose process was killed
        (SIGKILL, the OOM killer) waited for tasks until the runtime's
        teardown; spawn's see their pipe close and exit."""
        from multiprocessing import process
        while True:
            try:
                return self._q.get(timeout=_ORPHAN_CHECK)
            except _queue.Empty:
                parent = process.parent_process()
                if parent is not None and not parent.is_alive():
                    raise EOFError("the pool's process has ended") from None

    def __reduce__(self):
        return (_Pipe, (self._q, True))


#: The most of a result's repr that a worker's MaybeEncodingError keeps
#: when the whole did not travel (_shortened).
_REPR_MAX = 64 * 1024


def _shortened(obj):
    """A worker's ``(job, i, (False, MaybeEncodingError))`` with the
    result's repr cut to :data:`_REPR_MAX` characters, or None (anything
    else, or a repr that short already).  The stdlib's worker wraps a
    result that failed to travel in that error, which holds the result's
    repr: a result larger than the runtime's pool (an ember queue's limit;
    spawn's pipe has none) failed, and its repr, as large, failed too, so
    the worker died and the task's caller waited forever."""
    try:
        job, i, (ok, exc) = obj
    except (TypeError, ValueError):
        return None
    if ok or type(exc) is not _pool.MaybeEncodingError or len(exc.value) <= _REPR_MAX:
        return None
    short = _pool.MaybeEncodingError(None, None)
    short.exc = exc.exc
    short.value = f"{exc.value[:_REPR_MAX]}... ({len(exc.value)} characters)"
    short.args = (short.exc, short.value)
    return (job, i, (False, short))


#: How often (seconds) an idle worker looks whether its pool's process has
#: ended (_Pipe._worker_get).
_ORPHAN_CHECK = 1.0


class Pool(_pool.Pool):
    """``multiprocessing.pool.Pool`` over ember queues (see the module)."""

    def _setup_queues(self):
        from ..objects.queues import Queue

        self._inqueue = _Pipe(Queue())
        self._outqueue = _Pipe(Queue())
        self._quick_put = self._inqueue.put
        self._quick_get = self._outqueue.get

    @staticmethod
    def _repopulate_pool_static(ctx, Process, processes, pool, inqueue, outqueue, initializer,
                                initargs, maxtasksperchild, wrap_exception):
        """The stdlib's, but the workers are started by up to
        ``_START_STREAMS`` threads at once: an ember start waits for its
        round trip through GS and the shepherd (the stdlib's starts one
        after the other).  Workers are named, appended to ``pool`` and
        started in the stdlib's order within each stream; if starts fail,
        the workers that did start are in ``pool`` (Pool.__init__
        terminates them) and the first error is raised."""
        n = processes - len(pool)
        if n <= 1 or _START_STREAMS <= 1:
            return _pool.Pool._repopulate_pool_static(
                ctx, Process, processes, pool, inqueue, outqueue, initializer, initargs,
                maxtasksperchild, wrap_exception)
        workers = []
        for _ in range(n):
            w = Process(ctx, target=_pool.worker,
                        args=(inqueue, outqueue, initializer, initargs, maxtasksperchild,
                              wrap_exception))
            w.name = w.name.replace('Process', 'PoolWorker')
            w.daemon = True
            workers.append(w)
        todo = list(reversed(workers))
        errors = []
        lock = threading.Lock()

        def stream():
            while True:
                with lock:
                    if errors or not todo:
                        return
                    w = todo.pop()
                try:
                    w.start()
                except BaseException as exc:
                    with lock:
                        errors.append(exc)
                    return

        threads = [threading.Thread(target=stream, name="ember Pool start", daemon=True)
                   for _ in range(min(n, _START_STREAMS) - 1)]
        for t in threads:
            t.start()
        try:
            stream()
        finally:
            for t in threads:
                t.join()
            pool.extend(w for w in workers if w._popen is not None)
        if errors:
            raise errors[0]

    @staticmethod
    def _get_tasks(func, it, size):
        """``multiprocessing.pool.Pool._get_tasks``: ``(func, chunk)`` for
        each ``size`` items of ``it``; a ``range`` is cut into ranges."""
        if type(it) is range and size > 0:
            return ((func, it[i:i + size]) for i in range(0, len(it), size))
        return _pool.Pool._get_tasks(func, it, size)

    def _map_async(self, func, iterable, mapper, chunksize=None, callback=None,
                   error_callback=None):
        # The stdlib's (3.8-3.13), except that the chunks come from our
        # _get_tasks (it calls Pool._get_tasks by the class's name).
        self._check_running()
        if not hasattr(iterable, '__len__'):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), len(self._pool) * 4)
            if extra:
                chunksize += 1
        if len(iterable) == 0:
            chunksize = 0
        task_batches = self._get_tasks(func, iterable, chunksize)
        result = _pool.MapResult(self, chunksize, len(iterable), callback,
                                 error_callback=error_callback)
        self._taskqueue.put((self._guarded_task_generation(result._job, mapper, task_batches),
                             None))
        return result

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
