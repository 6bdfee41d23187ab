"""The same multiprocessing program under each start method, in one run.

    python benchmarks/bench_mp.py [--quick] [--only map,start,tail,queue,leftover,bigarg]
                                  [--map-n N] [--queue-n N] [--big-mb 1,10,100]

Runs under plain python (the "ember" method brings up an embedded runtime
on first use).  Each line prints the figure for every start method and the
ratio against the target of issue 13:

| measure                                   | baselines               | target              |
|-------------------------------------------|-------------------------|---------------------|
| Pool(2).map of N trivial calls            | fork, forkserver, spawn | faster than all     |
| Process start+join of a trivial function  | fork, spawn             | <= fork             |
| Queue small-object throughput             | fork's mp.Queue         | >= 5x               |
| leftovers after SIGKILL of the parent     | fork, spawn             | zero                |

Pool.map: rounds (3 with --quick, else 5), each a new Pool(2) per method
(the order rotated per round), a warm-up map of 100 items, then one timed
map; median and best over the rounds.  Start+join: rounds of ember then
fork, each the median of 20 (5 with --quick) starts; ``ember.Process``
itself (no multiprocessing layer; its target ``os.getpid``, pickled by
reference as the method's own call is) is timed in the
same rounds as a reference: the difference is what the start method adds.

The baselines (fork, forkserver, spawn) run in a second process, the same
program without ember (``_mp_work.py``: this file's workloads and imports,
less ember), kept for the whole run and asked for each round in turn with
ember's: fork timed in an ember process pays for ember's imports (the
'fork (here)' line, printed for information).
Tail (``--only tail``): the same rounds, each the
median of 20 start+joins of a target that writes ``CLOCK_MONOTONIC`` at its
return into a file in /dev/shm: from the target's return to ``join()``'s
return (the worker's result and exit, the kernel's, the parent's wake and
join), and from ``start()`` to the target's return.
Large arguments and results (``--only bigarg``; sizes in MB by
``--big-mb``): per size, rounds (2 with --quick, else 3) of every method in
turn, each the median of a few (9 at 1 MB, 5 at 10, 3 at 100; fewer with
--quick) of: a start+join with one ``bytes`` argument of that size (its
target takes its length), a start whose target returns ``bytes`` of that
size and its join (``ember.Process``'s ``result()``; a multiprocessing
child puts it on its context's Queue, which the parent gets), and a
warm ``Pool(1).apply`` returning it (``ember.Executor(1)``'s
``submit().result()`` beside); ratios to spawn (and to fork).
The Queue's throughput is timed from the first object received (median of
5 rounds, the methods interleaved); the figure timed from the producer's
start is printed beside it: with 100k objects that one is mostly the
producer's start-up, which the start+join row measures.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import ember  # noqa: F401  registers "ember"

import _report  # benchmarks/_report.py: --json, --png
import _rundir  # benchmarks/_rundir.py: a private runtime directory
from _mp_work import (Baselines, bigarg, bigresult, pool_map, poolresult,  # the workloads
                      queue_rate, start_join, tail)


def trivial():
    """Ember's start+join target, defined in the main module as the
    baselines' is in theirs (an ``ember.Process`` child gets a main-module
    function by value and imports none of the program's modules)."""


def stamp(path):
    """The tail's target (_mp_work.stamp's body), in the main module as
    :func:`trivial` is."""
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, time.monotonic_ns().to_bytes(8, "little"), 0)
    os.close(fd)


def nbytes(b):
    """The large argument's target (_mp_work.nbytes's body)."""
    return len(b)


def make_bytes(n):
    """The large result's target (_mp_work.make_bytes's body)."""
    return b"\x01" * n


def put_bytes(q, n):
    """The large result's target under multiprocessing (_mp_work.put_bytes's)."""
    q.put(make_bytes(n))


def load():
    return "load %.1f %.1f %.1f" % os.getloadavg()


LEFTOVER = """
import multiprocessing as mp, os, sys, time
if sys.argv[1] == "ember":
    import ember

def sleeper(q):
    q.put(os.getpid())
    time.sleep(60)

if __name__ == "__main__":
    mp.set_start_method(sys.argv[1])
    q = mp.Queue()
    lock = mp.Lock()
    ps = [mp.Process(target=sleeper, args=(q,)) for _ in range(2)]
    for p in ps: p.start()
    print(*[q.get(timeout=30) for _ in ps], flush=True)
    # what in /dev/shm is this program's own: its ember runtime's segments
    # (one prefix), the stdlib's named semaphores (one name each)
    own = []
    if "ember" in sys.modules:
        from ember import _env
        own.append("ember." + _env.get(_env.RUNTIME_ID) + ".")
    for obj in (q, lock, getattr(q, "_rlock", None), getattr(q, "_wlock", None),
                getattr(q, "_sem", None)):
        name = getattr(getattr(obj, "_semlock", None), "name", None)
        if name:
            own.append("sem." + name.lstrip("/"))
    print(*own, flush=True)
    time.sleep(60)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _own(entry, own):
    """True if a /dev/shm entry is the program's: an ember runtime prefix
    (ends with ".") or a semaphore's exact name."""
    return any(entry.startswith(o) if o.endswith(".") else entry == o for o in own)


def leftovers(method, settle=10.0):
    """(processes, /dev/shm entries) the program leaves after SIGKILL of the
    parent, once nothing changed for 2 s or ``settle`` s have passed.  Only
    the program's own entries count (the names it printed: other programs
    on the machine make and remove segments meanwhile)."""
    with tempfile.TemporaryDirectory() as d:
        prog = os.path.join(d, "prog.py")
        with open(prog, "w") as f:
            f.write(textwrap.dedent(LEFTOVER))
        before = set(os.listdir("/dev/shm"))
        proc = subprocess.Popen([sys.executable, prog, method], cwd=d, stdout=subprocess.PIPE,
                                text=True)
        pids = [int(x) for x in proc.stdout.readline().split()]
        own = proc.stdout.readline().split()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        deadline = time.monotonic() + settle
        last, stable = None, time.monotonic()
        while time.monotonic() < deadline:
            left = [p for p in pids if _alive(p)]
            segs = sorted(e for e in set(os.listdir("/dev/shm")) - before if _own(e, own))
            if (left, segs) != last:
                last, stable = (left, segs), time.monotonic()
            elif not left and not segs or time.monotonic() - stable >= 2.0:
                break
            time.sleep(0.1)
        for p in left:                       # clean up after the baselines
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # ... and their segments: their resource trackers unlink what they
        # know of once the processes above are gone; the rest here
        for i in range(21):
            rest = [e for e in set(os.listdir("/dev/shm")) - before if _own(e, own)]
            if not rest or i == 20:
                break
            time.sleep(0.1)
        for e in rest:
            try:
                os.unlink(os.path.join("/dev/shm", e))
            except FileNotFoundError:
                pass
        return len(left), len(segs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    _report.add_only(ap, ("map", "start", "tail", "queue", "leftover", "bigarg"))
    ap.add_argument("--map-n", type=int, default=100_000)
    ap.add_argument("--queue-n", type=int, default=100_000)
    ap.add_argument("--big-mb", default="1,10,100", help="--only bigarg's sizes (MB)")
    _report.add_args(ap)
    args = ap.parse_args()
    only = args.only
    measures = []
    reps = 5 if args.quick else 20
    methods = ["ember", "fork", "forkserver", "spawn"]
    base = Baselines()          # fork, forkserver, spawn: in a process without ember

    def run(work, method, *a):
        """``work`` under ``method``: ember's here, the others' in ``base``."""
        if method.startswith("ember"):
            # ember.Process's target: a function the template has, pickled by
            # reference, as the "ember" method's own call is (ember.mp._child's).
            # A main-module function (trivial) goes by value, and with it the
            # template preloads cloudpickle (~1.9 MB and 16 mappings with what
            # it brings) for every later child of the runtime, the method's
            # too: a cost a multiprocessing program, which ships no code by
            # value, does not have.  (Not a module-level name: the template
            # runs this module for the method's children only while it just
            # defines, docs/multiprocessing.md.)
            target = trivial if method == "ember" else os.getpid
            return work(method, *a, **({start_join: {"target": target},
                                        tail: {"target": stamp},
                                        bigarg: {"target": nbytes},
                                        bigresult: {"targets": (make_bytes, put_bytes)},
                                        poolresult: {"target": make_bytes}}.get(work, {})))
        if method == "fork (here)":
            return work("fork", *a)
        return base.call(work.__name__, method, *a)

    if "map" in only:
        n_rounds = 3 if args.quick else 5
        print(f"Pool(2).map of {args.map_n} trivial calls (ms): {n_rounds} rounds, each a new "
              f"pool per method, order rotated ({load()}):")
        runs = {m: [] for m in methods}
        for i in range(n_rounds):
            for m in methods[i % len(methods):] + methods[:i % len(methods)]:
                runs[m].append(run(pool_map, m, args.map_n) * 1e3)
        med = {m: statistics.median(v) for m, v in runs.items()}
        best = {m: min(v) for m, v in runs.items()}
        print("  median  " + "  ".join(f"{m} {v:.1f}" for m, v in med.items()))
        print("  best    " + "  ".join(f"{m} {v:.1f}" for m, v in best.items()))
        for what, r in (("median", med), ("best", best)):
            worst = max(r["ember"] / r[m] for m in methods[1:])
            print(f"  {what}: ember / fastest baseline = {worst:.2f} (target < 1: faster than "
                  f"all three)")
        print(f"  ({load()})")
        measures.append(_report.measure(f"Pool(2).map of {args.map_n} trivial calls, median of "
                                        f"{n_rounds} rounds", "ms", med, better="lower"))

    if "start" in only:
        n_rounds = 3 if args.quick else 5
        print(f"Process start+join, trivial function (ms): {n_rounds} rounds, each the median of "
              f"{reps} of ember, fork, ember.Process and fork (here) ({load()}); spawn: median "
              f"of {max(3, reps // 4)}.  fork and spawn run in a process without ember; "
              f"'fork (here)' is fork in this process, after its ember starts (information: "
              f"ember's imports make a fork dearer):")
        for m in ("ember", "ember.Process", "fork"):    # template, preloads, caches warm
            run(start_join, m, 3)
        rounds = {"ember": [], "fork": [], "ember.Process": [], "fork (here)": []}
        for _ in range(n_rounds):
            for m in rounds:
                rounds[m].append(run(start_join, m, reps) * 1e3)
        r = {m: statistics.median(v) for m, v in rounds.items()}
        r["spawn"] = run(start_join, "spawn", max(3, reps // 4)) * 1e3
        ratios = [e / f for e, f in zip(rounds["ember"], rounds["fork"])]
        print("  round medians: " + "  ".join(f"{m} " + " ".join(f"{x:.2f}" for x in v)
                                              for m, v in rounds.items()))
        print(f"  ember min {min(rounds['ember']):.2f} median {r['ember']:.2f}; fork min "
              f"{min(rounds['fork']):.2f} median {r['fork']:.2f}; spawn {r['spawn']:.2f}")
        print(f"  ember / fork = {r['ember'] / r['fork']:.2f} (target <= 1); per round: min "
              f"{min(ratios):.2f} median {statistics.median(ratios):.2f} max {max(ratios):.2f} "
              f"({load()})")
        print(f"  reference: ember.Process itself min {min(rounds['ember.Process']):.2f} median "
              f"{r['ember.Process']:.2f}: the start method adds "
              f"{r['ember'] - r['ember.Process']:.2f} ms (median); fork in this process (after "
              f"ember's starts) median {r['fork (here)']:.2f}")
        measures.append(_report.measure(f"Process start + join, median of {n_rounds} rounds of "
                                        f"{reps}", "ms", r, better="lower"))

    if "tail" in only:
        tail_part(args, measures, run, reps)
    if "bigarg" in only:
        big_part(args, measures, run)
    if "queue" in only:
        queue_part(args, measures, run)
    base.close()
    if "leftover" in only:
        leftover_part(measures)
    _report.write(args, "bench_mp", measures)


def tail_part(args, measures, run, reps):
    n_rounds = 3 if args.quick else 5
    print(f"Process start+join, the end of a start (ms): from the target's return to join()'s "
          f"return, and from start() to the target's return; {n_rounds} rounds, each the median "
          f"of {reps} of ember, fork, ember.Process ({load()}); fork in a process without ember:")
    for m in ("ember", "ember.Process", "fork"):
        run(tail, m, 3)
    rounds = {"ember": [], "fork": [], "ember.Process": []}
    for _ in range(n_rounds):
        for m in rounds:
            rounds[m].append(run(tail, m, reps))
    ends = {m: statistics.median(x[0] for x in v) for m, v in rounds.items()}
    for m, v in rounds.items():
        print(f"  {m:14s} target end -> join: " + " ".join(f"{x[0]:.3f}" for x in v)
              + f" (median {ends[m]:.3f});  start -> target end: "
              + " ".join(f"{x[1]:.3f}" for x in v))
    print(f"  ember / fork (the end of a start) = {ends['ember'] / ends['fork']:.2f} ({load()})")
    measures.append(_report.measure(f"target's return to join()'s, median of {n_rounds} rounds "
                                    f"of {reps}", "ms", ends, better="lower"))


def big_part(args, measures, run):
    n_rounds = 2 if args.quick else 3
    sizes = [float(x) for x in args.big_mb.split(",")]
    parts = ((bigarg, "start+join with a bytes argument",
              ("ember", "ember.Process", "fork", "spawn")),
             (bigresult, "start, a bytes result back, join (mp: through the context's Queue)",
              ("ember", "ember.Process", "fork", "spawn")),
             (poolresult, "a warm Pool(1).apply returning bytes",
              ("ember", "ember.Executor", "fork", "spawn")))
    print(f"Large arguments and results (ms): {n_rounds} rounds of every method in turn, each "
          f"the median of a few; fork and spawn in a process without ember ({load()}):")
    for work, what, methods in parts:
        for mb in sizes:
            size = int(mb * (1 << 20))
            reps = 3 if mb >= 50 else 5 if mb >= 5 else 9
            if args.quick:
                reps = max(1, reps // 2)
            for m in methods:                      # warm: template, preloads, caches
                run(work, m, min(size, 1 << 20), 1)
            rounds = {m: [] for m in methods}
            for _ in range(n_rounds):
                for m in methods:
                    rounds[m].append(run(work, m, size, reps) * 1e3)
            r = {m: statistics.median(v) for m, v in rounds.items()}
            print(f"  {what}, {mb:g} MB: " + "  ".join(f"{m} {v:.1f}" for m, v in r.items()))
            print("    rounds: " + "  ".join(f"{m} " + " ".join(f"{x:.1f}" for x in v)
                                          for m, v in rounds.items()))
            print("    " + "  ".join(f"{m} / spawn = {r[m] / r['spawn']:.2f}" for m in methods
                                     if m.startswith("ember"))
                  + "  " + "  ".join(f"{m} / fork = {r[m] / r['fork']:.2f}" for m in methods
                                     if m.startswith("ember")) + " (target: / spawn <= 1)")
            measures.append(_report.measure(f"{what}, {mb:g} MB, median of {n_rounds} rounds",
                                            "ms", r, better="lower"))
    print(f"  ({load()})")


def queue_part(args, measures, run):
    rounds = 1 if args.quick else 5
    print(f"Queue small-object throughput, {args.queue_n} ints child->parent, timed from the "
          f"first object (objects/s; {rounds} rounds interleaved, median and best; "
          f"load {os.getloadavg()[0]:.1f}):")
    runs = {"ember": [], "fork": []}
    for _ in range(rounds):
        for m in runs:
            runs[m].append(run(queue_rate, m, args.queue_n))
    r = {m: statistics.median(x[0] for x in v) for m, v in runs.items()}
    best = {m: max(x[0] for x in v) for m, v in runs.items()}
    incl = {m: statistics.median(x[1] for x in v) for m, v in runs.items()}
    print("  median  " + "  ".join(f"{m} {v:,.0f}" for m, v in r.items())
          + f"   ember / fork = {r['ember'] / r['fork']:.2f} (target >= 5)")
    print("  best    " + "  ".join(f"{m} {v:,.0f}" for m, v in best.items())
          + f"   ember / fork = {best['ember'] / best['fork']:.2f}")
    print("  (timed from the producer's start, median: "
          + "  ".join(f"{m} {v:,.0f}" for m, v in incl.items())
          + f"   ember / fork = {incl['ember'] / incl['fork']:.2f}; the gap is process start-up)")
    measures.append(_report.measure(f"Queue, {args.queue_n} ints child to parent, median",
                                    "objects/s", r, target=5 * r["fork"]))


def leftover_part(measures):
    print("Leftovers after SIGKILL of the parent, settled (processes, /dev/shm entries):")
    r = {m: leftovers(m) for m in ("ember", "fork", "spawn")}
    print("  " + "  ".join(f"{m} {v}" for m, v in r.items()))
    print(f"  ember leaves {r['ember']} (target (0, 0))")
    measures.append(_report.measure("left after SIGKILL of the parent", "processes + /dev/shm "
                                    "entries", {m: sum(v) for m, v in r.items()}, better="lower"))


if __name__ == "__main__":
    _rundir.use_private()     # its runtimes' addresses and event logs
    main()
