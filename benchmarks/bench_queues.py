"""Queues, pipes and sync objects of ember.objects against their baselines,
in the same run (docs/queues.md, issue 11's Benchmark table).

    python benchmarks/bench_queues.py [--quick]

Every figure is the best of ``--repeat`` runs.  The other process is a
``fork`` child for every contender (ember handles work across fork).
"""
import argparse
import multiprocessing as mp
import os
import statistics
import threading
import time

import numpy as np

import ember

import _report  # benchmarks/_report.py: --json, --png
import _rundir  # benchmarks/_rundir.py: a private runtime directory

ctx = mp.get_context("fork")


def _best(fn, repeat):
    return max(fn() for _ in range(repeat))


def _best_low(fn, repeat):
    return min(fn() for _ in range(repeat))


# ------------------------------------------------------------ queue throughput
def _produce(q, n):
    put = q.put
    for i in range(n):
        put(i)


def queue_throughput(make, n, get_many=None):
    q = make()
    p = ctx.Process(target=_produce, args=(q, n))
    p.start()
    get = q.get
    first = get()
    t0 = time.perf_counter()
    if get_many is not None:
        left = n - 1
        while left:
            left -= len(get_many(q))
    else:
        for _ in range(n - 1):
            get()
    dt = time.perf_counter() - t0
    p.join()
    assert first == 0
    return (n - 1) / dt


def _ff_make():
    import faster_fifo
    return faster_fifo.Queue(max_size_bytes=64 << 20)


# ------------------------------------------------------------ pipe round trip
def _echo(conn, n):
    for _ in range(n):
        conn.send(conn.recv())


def pipe_rtt(make, n):
    a, b = make()
    p = ctx.Process(target=_echo, args=(b, n))
    p.start()
    times = []
    obj = (1, "x")
    for _ in range(n):
        t0 = time.perf_counter()
        a.send(obj)
        a.recv()
        times.append(time.perf_counter() - t0)
    p.join()
    return statistics.median(times[n // 10:]) * 1e6


# ------------------------------------------------------------ big arrays
def _put_arrays(q, k, nbytes):
    a = np.ones(nbytes // 8)
    for _ in range(k):
        q.put(a)


def array_bandwidth(make, k, nbytes):
    q = make()
    p = ctx.Process(target=_put_arrays, args=(q, k, nbytes))
    p.start()
    x = q.get()                      # the first one warms up the path
    t0 = time.perf_counter()
    for _ in range(k - 1):
        x = q.get()
        del x
    dt = time.perf_counter() - t0
    p.join()
    return (k - 1) * nbytes / dt / 1e9


# ------------------------------------------------------------ locks and events
def lock_uncontended(lock, n):
    acq, rel = lock.acquire, lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acq()
        rel()
    return n / (time.perf_counter() - t0)


def _hammer(lock, n, out, cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    out.put(lock_uncontended(lock, n))


def lock_contended(lock, n, make_q):
    """Two processes loop acquire+release on ``lock``; on two CPUs each
    (pinned) so that they run at once: contention, not turns."""
    out = make_q()
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        cpus = [None, None]
    ps = [ctx.Process(target=_hammer, args=(lock, n, out, cpu)) for cpu in cpus]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    dt = time.perf_counter() - t0
    return 2 * n / dt


def _event_echo(ping, pong, n):
    for _ in range(n):
        ping.wait()
        ping.clear()
        pong.set()


def event_wake(make, n):
    ping, pong = make(), make()
    p = ctx.Process(target=_event_echo, args=(ping, pong, n))
    p.start()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ping.set()
        pong.wait()
        pong.clear()
        times.append(time.perf_counter() - t0)
    p.join()
    return statistics.median(times[n // 10:]) / 2 * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    _report.add_args(ap)
    a = ap.parse_args()
    scale = 10 if a.quick else 1
    rep = 1 if a.quick else a.repeat
    try:
        import faster_fifo  # noqa: F401
        have_ff = True
    except ImportError:
        have_ff = False
    ember.init()
    try:
        rows = []
        n = 300_000 // scale
        e = _best(lambda: queue_throughput(ember.Queue, n), rep)
        m = _best(lambda: queue_throughput(ctx.Queue, n // 5), rep)
        f = _best(lambda: queue_throughput(
            _ff_make, n, get_many=lambda q: q.get_many(max_messages_to_get=1000)), rep) \
            if have_ff else None
        rows.append(("Queue small objects 1->1 (M obj/s)", e / 1e6, m / 1e6,
                     f / 1e6 if f else None, ">= 1 M/s, >= 5x both", e / m))
        n = 20_000 // scale
        e = _best_low(lambda: pipe_rtt(ember.Pipe, n), rep)
        m = _best_low(lambda: pipe_rtt(ctx.Pipe, n), rep)
        rows.append(("Pipe round trip, small object, median (us)", e, m, None,
                     "<= 5 us, >= 5x", m / e))
        k = 20 if not a.quick else 6
        nb = 100 << 20
        # bounded (2): the producer stays at most two arrays ahead, blocks are reused
        e = _best(lambda: array_bandwidth(lambda: ember.Queue(2), k, nb), rep)
        m = _best(lambda: array_bandwidth(lambda: ctx.Queue(2), max(3, k // 3), nb), rep)
        rows.append(("100 MB numpy array through a Queue (GB/s)", e, m, None, ">= 5 GB/s", e / m))
        n = 2_000_000 // scale
        e = _best(lambda: lock_uncontended(ember.Lock(), n), rep)
        m = _best(lambda: lock_uncontended(ctx.Lock(), n), rep)
        t = _best(lambda: lock_uncontended(threading.Lock(), n), rep)
        rows.append(("Lock acquire+release uncontended (M/s)", e / 1e6, m / 1e6, t / 1e6,
                     ">= mp.Lock", e / m))
        n = 500_000 // scale
        e = _best(lambda: lock_contended(ember.Lock(), n, ember.Queue), rep)
        m = _best(lambda: lock_contended(ctx.Lock(), n, ctx.SimpleQueue), rep)
        rows.append(("Lock, 2 processes contending (pinned), total (M/s)", e / 1e6, m / 1e6, None,
                     ">= 2x mp.Lock", e / m))
        n = 5_000 // scale
        e = _best_low(lambda: event_wake(ember.Event, n), rep)
        m = _best_low(lambda: event_wake(ctx.Event, n), rep)
        rows.append(("Event set -> waiter wakes, median (us)", e, m, None, "<= 100 us", m / e))
    finally:
        ember.shutdown()
    print(f"{'measure':46} {'ember':>9} {'mp':>9} {'3rd':>9}  {'ratio':>7}  target")
    print("-" * 104)
    for name, e, m, third, target, ratio in rows:
        th = f"{third:9.3g}" if third is not None else " " * 9
        print(f"{name:46} {e:9.3g} {m:9.3g} {th}  {ratio:6.2f}x  {target}")
    print("(3rd column: faster-fifo for the queue, threading.Lock for the lock; "
          "ratio = how many times better ember is)")
    _report.write(a, "bench_queues", [
        _report.measure(name.rsplit(" (", 1)[0], name.rsplit(" (", 1)[1].rstrip(")"),
                        {"ember": e, "multiprocessing": m,
                         "faster-fifo" if name.startswith("Queue") else "threading.Lock": third},
                        better="lower" if name.endswith("(us)") else "higher", note=target)
        for name, e, m, third, target, ratio in rows])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    _rundir.use_private()     # its runtime's address and event log
    main()
