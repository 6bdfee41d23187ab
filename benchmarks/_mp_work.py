"""bench_mp.py's workloads, and its baselines' process: the same program
without ember.

``bench_mp.py`` times the "ember" start method in its own process (which
imports ember; the method brings up an embedded runtime) and the stdlib's
methods in a process running this file, which imports what bench_mp.py
imports except ember.  An ember process is no fair place to time fork: its
first ember start imports ember's runtime modules (and the extension
modules they pull in), so every later ``os.fork()`` there copies and tears
down more memory; on the development machine that made fork's start+join
~0.6 ms (40 %) slower than in a program without ember
(docs/multiprocessing.md, "Benchmarks").  A program that uses fork has
no ember in it, so that is the baseline.

    python benchmarks/_mp_work.py

reads one request a line on stdin (a JSON list: the workload's name and
its arguments) and answers each with one line of JSON (the result), until
``["exit"]``: bench_mp.py keeps one such process for its whole run and
interleaves its requests with its own measures.  This file must not
import ember (``serve`` checks it).
"""
import argparse  # noqa: F401  what bench_mp.py imports, less ember
import json
import multiprocessing as mp
import os
import signal  # noqa: F401
import statistics
import subprocess  # noqa: F401
import sys
import tempfile  # noqa: F401
import textwrap  # noqa: F401
import time


def trivial():
    pass


def sq(x):
    return x * x


def producer(q, n):
    for i in range(n):
        q.put(i)
    q.put(None)


def nap_pid(_):
    time.sleep(0.01)
    return os.getpid()


def pool_map(method, n):
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        # Both workers up (under every method a worker can still be starting
        # when the first one has run a short warm-up map, which then times a
        # map run mostly by one worker): two 10 ms naps at a time until two
        # workers took them.
        for _ in range(200):
            if len(set(pool.map(nap_pid, range(2), 1))) == 2:
                break
        pool.map(sq, range(100))
        t = time.perf_counter()
        pool.map(sq, range(n))
        return time.perf_counter() - t


def _make(method):
    """The Process class of ``method``: a start method's name or
    ``"ember.Process"`` (ember's own)."""
    if method == "ember.Process":
        import ember
        return ember.Process
    return mp.get_context(method).Process


def start_join(method, n, target=trivial):
    """Median seconds of ``n`` start+join of ``target``.  ``method`` is a
    start method's name, or ``"ember.Process"`` (ember's own)."""
    make = _make(method)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        p = make(target=target)
        p.start()
        p.join()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def stamp(path):
    """The tail's target: ``CLOCK_MONOTONIC`` at its return, written at the
    start of the file ``path`` (only ``os`` and ``time``: nothing to import
    in a child)."""
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, time.monotonic_ns().to_bytes(8, "little"), 0)
    os.close(fd)


def tail(method, n, target=stamp):
    """(median ms from the target's return to join()'s return, median ms
    from start() to the target's return) over ``n`` start+join of
    ``target`` (:func:`stamp` or one like it) under ``method`` (as
    :func:`start_join`'s).  The first is the end of a start: the worker's
    result and exit, the kernel's exit, the parent's wake and join."""
    make = _make(method)
    fd, path = tempfile.mkstemp(prefix="bench-tail-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                else None)
    ends, heads = [], []
    try:
        for _ in range(n):
            t0 = time.monotonic_ns()
            p = make(target=target, args=(path,))
            p.start()
            p.join()
            t1 = time.monotonic_ns()
            t = int.from_bytes(os.pread(fd, 8, 0), "little")
            ends.append((t1 - t) / 1e6)
            heads.append((t - t0) / 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(ends), statistics.median(heads)


def nbytes(b):
    """The large argument's target: touches only its length."""
    return len(b)


def make_bytes(n):
    """The large result's target: ``n`` bytes (written: every page is real)."""
    return b"\x01" * n


def put_bytes(q, n):
    """:func:`make_bytes`'s result sent back on a Queue (the way a
    multiprocessing ``Process`` returns one)."""
    q.put(make_bytes(n))


def bigarg(method, size, n, target=nbytes):
    """Median seconds of ``n`` start+join of ``target`` with one ``bytes``
    argument of ``size`` bytes (made once, before the timing), under
    ``method`` (as :func:`start_join`'s)."""
    big = b"\x01" * size
    make = _make(method)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        p = make(target=target, args=(big,))
        p.start()
        p.join()
        ts.append(time.perf_counter() - t)
        assert p.exitcode == 0, p.exitcode
    return statistics.median(ts)


def bigresult(method, size, n, targets=(make_bytes, put_bytes)):
    """Median seconds of ``n`` start, result of ``size`` bytes, join:
    ``ember.Process``'s ``result()`` (``targets[0]`` returns it); under a
    multiprocessing method the child puts it on the context's Queue
    (``targets[1]``) and the parent gets it, then joins."""
    ts = []
    q = None if method == "ember.Process" else mp.get_context(method).Queue()
    make = _make(method)
    for _ in range(n):
        t = time.perf_counter()
        if q is None:
            p = make(target=targets[0], args=(size,))
            p.start()
            r = p.result()
        else:
            p = make(target=targets[1], args=(q, size))
            p.start()
            r = q.get()
        p.join()
        ts.append(time.perf_counter() - t)
        assert len(r) == size and p.exitcode == 0
        del r
    if q is not None:
        q.close()
    return statistics.median(ts)


def poolresult(method, size, n, target=make_bytes):
    """Median seconds of ``n`` ``Pool(1).apply`` of ``target`` returning
    ``size`` bytes (the pool made, and its worker warm, before the timing);
    ``method`` ``"ember.Executor"``: ``Executor(1).submit(...).result()``."""
    if method == "ember.Executor":
        import ember
        pool = ember.Executor(1)
        pool.apply = lambda fn, args: pool.submit(fn, *args).result()
    else:
        pool = mp.get_context(method).Pool(1)
    with pool:
        pool.apply(target, (1,))
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            r = pool.apply(target, (size,))
            ts.append(time.perf_counter() - t)
            assert len(r) == size
            del r
    return statistics.median(ts)


def queue_rate(method, n):
    """(objects/s timed from the first object received, objects/s timed
    from the producer's start): the first is the queue's throughput, the
    second also counts the producer process's start-up (its own row
    above), which for a short run weighs more than the queue itself."""
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=producer, args=(q, n))
    t0 = time.perf_counter()
    p.start()
    got = 0
    if q.get() is not None:
        got += 1
    t = time.perf_counter()
    while q.get() is not None:
        got += 1
    t1 = time.perf_counter()
    p.join()
    assert got == n
    return (n - 1) / (t1 - t), n / (t1 - t0)


WORK = {"pool_map": pool_map, "start_join": start_join, "queue_rate": queue_rate, "tail": tail,
        "bigarg": bigarg, "bigresult": bigresult, "poolresult": poolresult}


class Baselines:
    """The baselines' process (this file run by the same interpreter), kept
    for a whole benchmark run: ``call(name, *args)`` runs a workload there
    and returns its result."""

    def __init__(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     cwd=os.path.dirname(os.path.abspath(__file__)))

    def call(self, name, *args):
        self.proc.stdin.write(json.dumps([name, *args]) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the baselines' process ended (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self):
        # "exit", not the end of stdin: processes forked from the benchmark
        # since (the embedded runtime's host) hold the pipe's write end too
        self.proc.stdin.write('["exit"]\n')
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.proc.wait()


def serve():
    for line in sys.stdin:
        name, *args = json.loads(line)
        if name == "exit":
            return
        result = WORK[name](*args)
        if "ember" in sys.modules:
            raise SystemExit("_mp_work: the baselines' process imported ember")
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    serve()
