"""How long the "ember" method's ``Popen.pid`` read right after ``start()``
waits for the child to take its call, with the start+join around it.

    python benchmarks/mp_pid_read.py [-n N] [--rounds R]

``p.pid`` before the child has read its call waits until it has (a child
whose spare or lease was killed before then is started again under another
pid: docs/multiprocessing.md, "Differences").  Each round times N starts of
a trivial function under the "ember" method with ``p.pid`` read right
after ``start()``, then N without the read, and fork's start+join in the
same program as the bare baseline; it prints the medians and ratios of
each round.  (2026-12-05: the wait was a 1 ms poll, ~1.1 ms a read; it is
now woken by the child's receive of its call, ~0.2 ms.)"""
import argparse
import multiprocessing as mp
import os
import statistics
import time


def trivial():
    pass


def timed(ctx, n, read):
    pid_t, total = [], []
    for _ in range(n):
        p = ctx.Process(target=trivial)
        t0 = time.perf_counter()
        p.start()
        t1 = time.perf_counter()
        if read:
            p.pid
        t2 = time.perf_counter()
        p.join()
        t3 = time.perf_counter()
        pid_t.append(t2 - t1)
        total.append(t3 - t0)
    return statistics.median(pid_t) * 1e3, statistics.median(total) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    import ember  # noqa: F401  (registers the method)

    print(f"# mp_pid_read: n={a.n}, {a.rounds} rounds, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load "
          + " ".join("%.1f" % x for x in os.getloadavg()), flush=True)
    em, fork = mp.get_context("ember"), mp.get_context("fork")
    timed(em, 5, True)
    timed(fork, 5, False)
    for r in range(a.rounds):
        read, with_read = timed(em, a.n, True)
        _, without = timed(em, a.n, False)
        _, bare = timed(fork, a.n, False)
        print(f"round {r}: pid read {read:.3f} ms; start+pid+join {with_read:.3f} ms, "
              f"start+join {without:.3f} ms ({with_read / without:.2f}x), "
              f"bare fork start+join {bare:.3f} ms (ember {without / bare:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
