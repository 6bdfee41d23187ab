"""``ember.Executor``: a ``concurrent.futures.Executor`` over warm ember
processes.

Each worker is an :class:`ember.Process` (forked from the template) running
:func:`_worker_main`; it stays up and runs task after task.  The parent has
one thread per worker slot that feeds its worker and collects its results:

* tasks go to the worker in **batches** (whatever is queued, up to
  ``_BATCH``), one record per batch on the worker's task channel; the
  function of a ``map`` is pickled once per batch;
* each result comes back as soon as it is ready, one record per task on the
  worker's result channel (large buffers out of band, as for Process);
* before running a task the worker writes its id into a shared 8-byte
  *progress word*; if the worker dies, the task named there fails with
  ``ProcessDied`` and the tasks sent after it go back to the queue; a new
  worker takes the slot.  The pool is never "broken".
"""
import atexit
import collections
import concurrent.futures as _cf
import itertools
import os
import struct
import threading
import weakref

from .. import _env, _roles
from ..exceptions import ProcessDied
from . import _codec, _pickling as P
from .process import Process, _default_pool, _offer_cloudpickle, _signal_name, outcome

__all__ = ["Executor"]

_BATCH = 256          # most tasks sent to a worker in one record
_SLICE = 0.05         # how often a waiting slot checks its worker is alive
_TID = struct.Struct("<q")
_KIND_STOP = 9
_ids = itertools.count(1)


def _worker_main(task_sdesc, result_sdesc, progress_sdesc, parent_pid):
    """The loop of a worker process."""
    from .. import _worker
    from ..channels_c import Channel
    from ..pools_c import Allocation

    if _env.is_managed():     # an idle worker shows as such in `ember ps` (ember._slots)
        from .. import _slots
        _slots.bind(_env.get(_env.RUNTIME_ID), int(_env.get(_env.P_UID, "0")))
    tasks = Channel.attach(task_sdesc)
    res = Channel.attach(result_sdesc)
    alloc = Allocation.attach(progress_sdesc)
    progress = memoryview(alloc).cast("q")
    reader = P.RecordReader(tasks)
    fn_cache = {}                         # pickled function -> function
    import pickle
    try:
        while True:
            while not reader.records:
                if not reader.pump(1.0):
                    try:
                        os.kill(parent_pid, 0)
                    except ProcessLookupError:
                        return            # the parent is gone: nobody wants results
            rec = reader.records.pop(0)
            if rec.kind == _KIND_STOP:
                return
            blobs, batch = P.loads(rec)
            del rec
            fns = []
            for blob in blobs:
                fn = fn_cache.get(blob)
                if fn is None:
                    if len(fn_cache) >= 256:
                        fn_cache.clear()
                    fn = fn_cache[blob] = pickle.loads(blob)
                fns.append(fn)
            for tid, fi, args, kwargs in batch:
                progress[0] = tid
                prefix = _TID.pack(tid)
                fn = fns[fi]
                try:
                    if kwargs is None:            # a chunk of map(): a list of arg tuples
                        r = list(itertools.starmap(fn, args))
                    elif kwargs is True:          # a chunk of map() over one iterable
                        r = list(map(fn, args))
                    else:
                        r = fn(*args, **kwargs)
                except BaseException as exc:
                    _worker._send_exception(res, exc, _worker._format_tb(exc, _worker_main.__code__),
                                            prefix)
                    continue
                try:
                    msg = _codec.dumps(r, res.pool)
                except BaseException as exc:
                    data = pickle.dumps((_worker._type_name(exc),
                                         f"cannot pickle the result of {_worker._what(fn)}() "
                                         f"(a {type(r).__name__}): {exc}",
                                         _worker._format_tb(exc, _worker_main.__code__)), 5)
                    P.send_record(res, P.KIND_REMOTE_ERR, data, extra=prefix)
                    continue
                del r
                P.send_record(res, P.KIND_OK, msg, extra=prefix)
                del msg
            del batch, fns
    finally:
        progress.release()
        del progress
        tasks.detach()
        res.detach()


class _WorkItem:
    __slots__ = ("tid", "future", "fn", "args", "kwargs")

    def __init__(self, future, fn, args, kwargs):
        self.tid = next(_ids)
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


_STOP = object()


class _MapJob:
    """The results of one ``map(chunksize=1)``: one slot per call, filled by
    the slot threads, read in order by the iterator.  Lighter than one
    concurrent.futures.Future per call; per-call semantics are the same
    (each call is its own task, its own result, its own failure)."""

    __slots__ = ("out", "cv", "waiting", "cancelled")

    def __init__(self, n):
        self.out = [None] * n
        self.cv = threading.Condition(threading.Lock())
        self.waiting = -1
        self.cancelled = False

    def put(self, i, value):
        with self.cv:
            self.out[i] = value
            if i == self.waiting:
                self.cv.notify()

    def results(self, timeout):
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for i in range(len(self.out)):
                with self.cv:
                    while self.out[i] is None:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise _cf.TimeoutError()
                        self.waiting = i
                        self.cv.wait(left)
                    kind, value = self.out[i]
                    self.out[i] = True           # drop the reference
                if kind == "err":
                    raise value
                yield value
        finally:
            self.cancelled = True                # what was not started never runs


class _MapFuture:
    """The part of the Future protocol the executor uses, for a _MapJob slot."""

    __slots__ = ("job", "i", "state")

    def __init__(self, job, i):
        self.job, self.i, self.state = job, i, 0

    def set_running_or_notify_cancel(self):
        if self.job.cancelled:
            self.job.put(self.i, ("err", _cf.CancelledError()))
            return False
        self.state = 1
        return True

    def running(self):
        return self.state == 1

    def cancel(self):
        if self.state == 0:
            self.job.put(self.i, ("err", _cf.CancelledError()))
            self.state = 2

    def set_result(self, value):
        self.job.put(self.i, ("ok", value))

    def set_exception(self, exc):
        self.job.put(self.i, ("err", exc))


class Executor(_cf.Executor):
    """A ``concurrent.futures.Executor`` whose workers are warm ember
    processes.

    A worker killed while running a task fails that task's future with
    :class:`ember.ProcessDied` and is replaced; other tasks are unaffected.

    Parameters
    ----------
    max_workers : int or None
        Number of worker processes (default: ``os.cpu_count()``).
    start_method : {"template", "spawn"} or None
        How workers start (default: :attr:`ember.Process.start_method`).

    Raises
    ------
    ValueError
        ``max_workers`` is not an int > 0.
    """

    def __init__(self, max_workers=None, *, start_method=None):
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers <= 0:
            raise ValueError(f"max_workers must be an int > 0, got {max_workers!r}")
        self._max_workers = max_workers
        self._start_method = start_method
        self._queue = collections.deque()
        self._cv = threading.Condition()
        self._shutdown = False
        self._threads = []
        _executors.add(self)
        self._workers = {}            # slot -> Process (current worker)
        self._fn_cache = {}           # id(fn) -> (fn, its cloudpickle)
        self.replaced = 0             # workers replaced after dying

    # --- submit --------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)`` on a worker; return a
        :class:`concurrent.futures.Future`.  Its ``result()`` re-raises the
        call's exception (with the worker's traceback as ``__cause__``), or
        raises :class:`ember.ProcessDied` if the worker was killed while
        running it.

        Raises
        ------
        TypeError
            ``fn`` is not callable.
        RuntimeError
            The executor was shut down.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        f = _cf.Future()
        item = _WorkItem(f, fn, args, kwargs)
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._queue.append(item)
            self._adjust()
            self._cv.notify()
        return f

    def map(self, fn, *iterables, timeout=None, chunksize=None):
        """Like ``concurrent.futures.Executor.map``.  ``chunksize`` None:
        chosen as multiprocessing.Pool.map does (about four chunks per
        worker).

        Raises
        ------
        Exception
            While iterating the results: the first failed call's exception,
            as itself (or :class:`ember.ProcessDied` if its worker was
            killed).
        TimeoutError
            While iterating: a result did not come within ``timeout`` of the
            call to ``map``.
        RuntimeError
            The executor was shut down.
        TypeError
            ``fn`` is not callable.
        ValueError
            ``chunksize`` is not an int >= 1.
        """
        single = len(iterables) == 1
        items = list(iterables[0]) if single else list(zip(*iterables))
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._max_workers * 4)
            chunksize = max(1, chunksize + bool(extra))
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        if chunksize == 1:
            if not callable(fn):
                raise TypeError(f"fn must be callable, not {type(fn).__name__}")
            job = _MapJob(len(items))
            with self._cv:
                if self._shutdown:
                    raise RuntimeError("cannot schedule new futures after shutdown")
                self._queue.extend(_WorkItem(_MapFuture(job, i), fn, (args,) if single else args,
                                             {})
                                   for i, args in enumerate(items))
                self._adjust()
                self._cv.notify_all()
            return job.results(timeout)
        if not callable(fn):
            raise TypeError(f"fn must be callable, not {type(fn).__name__}")
        chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        job = _MapJob(len(chunks))
        with self._cv:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            # kwargs None marks a chunk of argument tuples (the worker calls
            # fn(*a) for each), True a chunk of single arguments (fn(a))
            mark = True if single else None
            self._queue.extend(_WorkItem(_MapFuture(job, i), fn, chunk, mark)
                               for i, chunk in enumerate(chunks))
            self._adjust()
            self._cv.notify_all()
        return itertools.chain.from_iterable(job.results(timeout))

    def _adjust(self):
        """Start slot threads as work arrives (under self._cv)."""
        n = len(self._threads)
        idle = sum(1 for t in self._threads if not t.busy)
        for slot in range(n, n + min(self._max_workers - n, len(self._queue) - idle)):
            t = threading.Thread(target=self._slot, args=(slot,), daemon=True,
                                 name=f"ember-executor-{slot}")
            t.busy = True
            self._threads.append(t)
            t.start()

    # --- shutdown ------------------------------------------------------
    def shutdown(self, wait=True, *, cancel_futures=False):
        """Accept no more calls; the workers finish the queued ones (unless
        ``cancel_futures`` cancels those not started) and stop; ``wait``:
        return only then (as ``concurrent.futures``)."""
        with self._cv:
            self._shutdown = True
            if cancel_futures:
                while self._queue:
                    item = self._queue.popleft()
                    item.future.cancel()
            self._cv.notify_all()
        if wait:
            for t in list(self._threads):
                t.join()

    # --- slots ---------------------------------------------------------
    def _take(self, block):
        """Runnable items for one worker: a fair share of the queue (at
        most _BATCH), so that slow tasks spread over the workers; [] if
        none (not blocking), or _STOP."""
        with self._cv:
            while not self._queue:
                if self._shutdown:
                    return _STOP
                if not block:
                    return []
                threading.current_thread().busy = False
                self._cv.wait()
            threading.current_thread().busy = True
            out = []
            share = min(_BATCH, max(1, len(self._queue) // self._max_workers))
            while self._queue and len(out) < share:
                if (self._queue[0].kwargs is None or self._queue[0].kwargs is True) and out:
                    break            # a map chunk is a batch of its own
                item = self._queue.popleft()
                # requeued items (their worker died before starting them) are running already
                if item.future.running() or item.future.set_running_or_notify_cancel():
                    out.append(item)
            return out

    def _pack(self, batch, pool):
        """A batch as one message of ``pool`` (:mod:`._codec`): each
        distinct function once, with cloudpickle (cached), the arguments
        with the codec (the C pickler first)."""
        index, blobs, entries = {}, [], []
        cache = self._fn_cache
        for it in batch:
            fi = index.get(id(it.fn))
            if fi is None:
                hit = cache.get(id(it.fn))
                if hit is None or hit[0] is not it.fn:
                    data = _codec.pickle_inband(it.fn)    # self-contained: cached, reused
                    if len(cache) >= 128:
                        cache.clear()
                    hit = cache[id(it.fn)] = (it.fn, data)
                fi = index[id(it.fn)] = len(blobs)
                blobs.append(hit[1])
            entries.append((it.tid, fi, it.args, it.kwargs))
        return _codec.dumps((blobs, entries), pool)

    def _requeue(self, items):
        with self._cv:
            self._queue.extendleft(reversed(items))
            self._cv.notify()

    def _start_worker(self):
        from ..channels_c import Channel

        pool = _default_pool()
        task_ch = Channel.create(pool, capacity=16, block_size=1024,
                                 c_uid=_roles.c_uid(_roles.EXECUTOR_TASKS))
        res_ch = Channel.create(pool, capacity=1024, block_size=256,
                                c_uid=_roles.c_uid(_roles.EXECUTOR_RESULTS))
        prog = pool.alloc(64)
        memoryview(prog)[:8] = _TID.pack(0)
        _offer_cloudpickle()          # its tasks' functions come by cloudpickle
        p = Process(target=_worker_main,
                    args=(task_ch.sdesc, res_ch.sdesc, prog.sdesc, os.getpid()),
                    daemon=True, start_method=self._start_method)
        p._what = "Executor worker"
        try:
            p.start()
        except BaseException:
            task_ch.destroy()
            res_ch.destroy()
            prog.free()
            raise
        return p, task_ch, res_ch, prog

    def _slot(self, slot):
        try:
            while self._run_worker(slot):
                self.replaced += 1
        except BaseException as exc:      # cannot start workers: fail what is queued
            with self._cv:
                items = list(self._queue)
                self._queue.clear()
            for item in items:
                # requeued items (their worker died before starting them) are running already
                if item.future.running() or item.future.set_running_or_notify_cancel():
                    item.future.set_exception(exc)

    def _run_worker(self, slot):
        """Run one worker until shutdown (False) or its death (True)."""
        p, task_ch, res_ch, prog = self._start_worker()
        self._workers[slot] = p
        inflight = collections.OrderedDict()     # tid -> item, in send order
        reader = P.RecordReader(res_ch)
        who = f"executor worker {p.name!r} (p_uid {p.p_uid}, pid {p.pid})"
        died = False
        last = 1
        try:
            while True:
                # Refill once half of the last batch is done (a batch of
                # one: once it is done), so fast tasks stream and slow ones
                # are not hoarded.
                # A map chunk: keep two in flight (the next one is sent
                # while the worker runs the current one).
                if len(inflight) < (2 if last == 0 else (last + 1) // 2):
                    batch = self._take(block=not inflight)
                    if batch is _STOP:
                        if not inflight:
                            break
                    elif batch:
                        try:
                            msg = self._pack(batch, task_ch.pool)
                        except Exception:
                            # Some task cannot be pickled: fail those, send the rest.
                            good = []
                            for it in batch:
                                try:
                                    _codec.free_unsent(self._pack([it], task_ch.pool))
                                    good.append(it)
                                except Exception as exc:
                                    # not this frame: it holds received records
                                    tb = exc.__traceback__
                                    it.future.set_exception(exc.with_traceback(tb and tb.tb_next))
                                    del exc, tb
                            batch = good
                            if not batch:
                                continue
                            msg = self._pack(batch, task_ch.pool)
                        last = 0 if batch[0].kwargs is None or batch[0].kwargs is True \
                            else len(batch)
                        for it in batch:
                            inflight[it.tid] = it
                        P.send_record(task_ch, P.KIND_CALL, msg)
                        del msg
                if not inflight:
                    continue
                reader.pump(_SLICE)
                if reader.records:
                    recs, reader.records = reader.records, []
                    for rec in recs:
                        tid = _TID.unpack_from(rec.extra)[0]
                        item = inflight.pop(tid, None)
                        if item is None:
                            continue
                        kind, value = outcome(rec, who, _TID.size)
                        if kind == "ok":
                            item.future.set_result(value)
                        else:
                            item.future.set_exception(value)
                        del item, value
                    # Hold no received message (a pool block) while waiting.
                    rec = recs = None
                elif p._ended(0):
                    while reader.pump(0):
                        pass
                    if reader.records:
                        continue          # results it sent before dying
                    died = True
                    break
            if not died:
                P.send_record(task_ch, _KIND_STOP, b"")
                p.join()
        finally:
            running = _TID.unpack_from(memoryview(prog))[0]
            if died or inflight:
                if not p._ended(0):
                    p.kill()
                p.join()
                code = p.exitcode
                rest = []
                for tid, item in inflight.items():
                    if tid == running:
                        how = (f"was killed by {_signal_name(-code)}" if code < 0
                               else f"exited with code {code}")
                        item.future.set_exception(ProcessDied(
                            f"{who} {how} while running this task", p.p_uid, code))
                    else:
                        rest.append(item)
                # The tasks it had not started go to another worker.
                self._requeue(rest)
            p.close()
            task_ch.destroy()
            res_ch.destroy()
            prog.free()
            self._workers.pop(slot, None)
        return died


_executors = weakref.WeakSet()


def _python_exit():
    """At interpreter exit, as concurrent.futures does: let every executor
    finish its queued work and stop its workers (this runs before
    ember.Process's own exit hook, which would kill the daemon workers)."""
    for ex in list(_executors):
        try:
            ex.shutdown(wait=True)
        except Exception:
            pass


atexit.register(_python_exit)
