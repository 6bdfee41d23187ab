"""The kernel's AF_UNIX garbage-collector work and kworker wake-ups per
start, against a ``multiprocessing`` fork start.

    python benchmarks/unix_gc.py [-n N] [--mp] [--idle]

Runs itself under ``ember run`` (needs root: ``perf stat -a`` and
``/proc/kallsyms``).  For each kind (``ember.Process``; with ``--mp``
multiprocessing's ``"ember"`` start method; mp fork, the baseline) 20
start+joins to warm up, then N start+joins one at a time while ``perf stat
-a`` counts, machine-wide: the items of the AF_UNIX garbage collector
queued (``workqueue:workqueue_queue_work`` whose function is ``__unix_gc``),
the wake-ups of kworkers (``sched:sched_wakeup`` of a ``kworker*``) and
all workqueue items; printed per start, with the wall time a start.
``--idle`` adds a window as long as each loop with nothing started: what
the rest of the machine queues meanwhile.

On Linux (6.18 here) the last close of any unix socket queues the
collector whenever a unix socket is in flight anywhere on the machine
(sent by ``SCM_RIGHTS``, not yet received: docs/multiprocessing.md, the
twenty-fifth pass), so the unix sockets holding unread data on the machine
(``ss -x``, Recv-Q > 0: another program's socket in flight counts as this
runtime's would) are printed before and after each loop.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from bench_python_processes import start_kinds, sustained  # the starts compared; n of them, `window` alive at once


def trivial():
    return 1


def _gc_address():
    """The address of ``__unix_gc`` (/proc/kallsyms), or None."""
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "__unix_gc" and int(parts[0], 16):
                    return parts[0]
    except OSError:
        pass
    return None


def _unread():
    """The unix sockets on the machine holding unread data, as
    ``(recv-q bytes, ...)``."""
    try:
        out = subprocess.run(["ss", "-xH"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    got = []
    for line in out.splitlines():
        f = line.split()
        if len(f) > 3 and f[2].isdigit() and int(f[2]) > 0:
            got.append(int(f[2]))
    return tuple(got)


class _Counts:
    """``perf stat -a`` over a ``with`` block: ``.counts`` then maps
    ``gc``, ``kworker``, ``queued`` to their totals."""

    def __init__(self, gc):
        self.gc = gc
        self.counts = None

    def __enter__(self):
        self.out = tempfile.NamedTemporaryFile("r", suffix=".perf")
        events = []
        if self.gc:
            events += ["-e", "workqueue:workqueue_queue_work", "--filter", f"function == 0x{self.gc}"]
        events += ["-e", "sched:sched_wakeup", "--filter", 'comm ~ "kworker*"',
                   "-e", "workqueue:workqueue_queue_work"]
        self.proc = subprocess.Popen(["perf", "stat", "-a", "-x,", "-o", self.out.name] + events,
                                     stdin=subprocess.DEVNULL)
        time.sleep(0.5)                 # (attached)
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        rows = [line.split(",") for line in self.out.read().splitlines()
                if line and not line.startswith("#") and "," in line]
        self.out.close()
        names = (["gc"] if self.gc else []) + ["kworker", "queued"]
        vals = [int(r[0]) if r[0].isdigit() else -1 for r in rows if len(r) > 2]
        self.counts = dict(zip(names, vals))
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--mp", action="store_true",
                    help='also multiprocessing\'s "ember" start method')
    ap.add_argument("--idle", action="store_true", help="an idle window after each loop")
    a = ap.parse_args()
    if "EMBER_P_UID" not in os.environ:
        import _rundir
        _rundir.use_private()
        return subprocess.run([sys.executable, "-m", "ember", "run", os.path.abspath(__file__)]
                              + sys.argv[1:]).returncode
    gc = _gc_address()
    print(f"# unix_gc: n={a.n}, load {' '.join('%.1f' % x for x in os.getloadavg())}, "
          f"__unix_gc {'at 0x' + gc if gc else 'not found: kworker wake-ups only'}", flush=True)
    for name, make in start_kinds(trivial, a.mp):
        sustained(make, 20, 1)                        # warm: the template, the spares, the lease
        before = _unread()
        with _Counts(gc) as c:
            t = time.perf_counter()
            sustained(make, a.n, 1)
            wall = time.perf_counter() - t
        after = _unread()
        print(f"{name}: {wall / a.n * 1e3:.2f} ms a start; a start: "
              + ", ".join(f"{k} {v / a.n:.2f}" for k, v in c.counts.items())
              + f"; unread unix sockets before {before} after {after}", flush=True)
        if a.idle:
            with _Counts(gc) as c:
                time.sleep(wall)
            print(f"  idle as long: " + ", ".join(f"{k} {v / a.n:.2f}" for k, v in c.counts.items())
                  + " (per start's share)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
