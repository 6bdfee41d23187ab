"""CPU time and page faults per ``ember.Process`` start, over every process
of the runtime, against a ``multiprocessing`` fork start.

    python benchmarks/cpu_python_start.py [-n N] [--window W] [--mp]

Runs itself under ``ember run``; starts N trivial functions with at most W
alive at once (1: start + join one at a time; 8: the benchmark's
sustained starts), ember and mp fork in turn, and prints the CPU time
(user + system) per start of each process on the path, summed from
``/proc/PID/stat`` before and after: global services, the shepherd (its
own, and its reaped children's: the started processes and the spares that
were used), the template, the head (mp fork's children are the head's).
On two cores, ``2 / cpu per start`` bounds the starts per second.

``--mp`` adds multiprocessing's ``"ember"`` start method (issue 13) between
the two: its children are the shepherd's too.  This file's top level only
imports and defines, so the template runs it once as the children's main
module (docs/multiprocessing.md) and no child runs it again.
"""
import argparse
import functools
import os
import sys
import time

from bench_python_processes import start_kinds, sustained  # the starts compared; n of them, `window` alive at once

@functools.cache
def _hz():
    # (not at the top level: a call there would make every "ember"-method
    # child run this file again, see --mp)
    return os.sysconf("SC_CLK_TCK")


def trivial():
    return 1


def _stat(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rfind(b")") + 2:].split()


def _ppid(pid):
    return int(_stat(pid)[1])


def _children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if _ppid(int(d)) == ppid:
                    out.append(int(d))
            except (OSError, IndexError):
                pass
    return out


def _comm(pid):
    """The process's name, or None once it has exited (a spare or a child
    of the shepherd may exit between the scan of /proc and this read)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu(pid, reaped=False):
    """(cpu seconds, minor faults) of ``pid`` itself, or of its reaped children."""
    f = _stat(pid)
    if reaped:
        return (int(f[13]) + int(f[14])) / _hz(), int(f[8])
    return (int(f[11]) + int(f[12])) / _hz(), int(f[7])


def sample():
    shepherd = os.getppid()
    gs = [p for p in _children(_ppid(shepherd)) if p != shepherd]
    templates = [p for p in _children(shepherd) if p != os.getpid()
                 and _comm(p) not in (None, "ember-spare", "ember-leased")]
    parts = {"global services": [(p, False) for p in gs], "shepherd": [(shepherd, False)],
             "started (shepherd's reaped)": [(shepherd, True)],
             "template": [(p, False) for p in templates],
             "head": [(os.getpid(), False)], "head's reaped (mp fork)": [(os.getpid(), True)]}
    out = {}
    for k, procs in parts.items():
        c = f = 0
        for p, reaped in procs:
            try:
                x, y = _cpu(p, reaped)
            except (OSError, IndexError):
                continue
            c, f = c + x, f + y
        out[k] = (c, f)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--mp", action="store_true",
                    help='also multiprocessing\'s "ember" start method')
    a = ap.parse_args()
    if "EMBER_P_UID" not in os.environ:
        import _rundir
        import subprocess
        _rundir.use_private()
        return subprocess.run([sys.executable, "-m", "ember", "run", os.path.abspath(__file__)]
                              + sys.argv[1:]).returncode
    print(f"# cpu_python_start: n={a.n}, window {a.window}, load "
          f"{' '.join('%.1f' % x for x in os.getloadavg())}", flush=True)
    for name, make in start_kinds(trivial, a.mp):
        sustained(make, 20, a.window)                 # warm: the template, the spares, the lease
        before, t = sample(), time.perf_counter()
        sustained(make, a.n, a.window)
        wall = (time.perf_counter() - t) / a.n
        after = sample()
        per = {k: ((after[k][0] - before[k][0]) / a.n * 1e3, (after[k][1] - before[k][1]) / a.n)
               for k in before}
        total = sum(c for c, _ in per.values())
        print(f"{name}: {wall * 1e3:.2f} ms a start (wall), {total:.2f} ms of CPU a start: "
              + "; ".join(f"{k} {c:.2f} ms / {f:.0f} faults" for k, (c, f) in per.items() if c or f),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
