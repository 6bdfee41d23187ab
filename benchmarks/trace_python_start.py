"""Where the time of an ``ember.Process`` start + join goes: timestamps in
every process on the path (parent, GS, shepherd, template, child).

    python benchmarks/trace_python_start.py [-n N] [--keep DIR] [--mp] [--block K]

Runs itself under ``ember run`` with ``EMBER_TRACE_START`` set (see
``ember._trace``: each process records ``CLOCK_MONOTONIC`` timestamps at
named points, all comparable), starts and joins N trivial functions one
at a time, alternating with N ``multiprocessing`` fork starts (timestamped
in the parent and the child), and prints for each point the median time
since the start was asked for (and the step from the point before), with
the child's page faults (before its request, before its target, at its
exit) and its CPU time.  Tracing itself costs a few microseconds a point;
compare runs of this script with each other, not with the benchmark.

Labels: ``P.`` parent, ``G.`` global services, ``S.`` shepherd (request
thread), ``T.`` template, ``C.`` the child (a spare until ``C.req``),
``N.`` the next spare, ``F.`` the multiprocessing fork start.
"""
import argparse
import collections
import os
import statistics
import sys
import tempfile
import time


def trivial():
    return 1


def traced_fork_target():
    from ember._trace import flush, t
    t("F.target")
    flush()
    return 1


def traced_mp_target():
    from ember._trace import t, t_faults
    t("M.target")
    t_faults("M.faults_target")
    return 1


def _start_join(make, target, t=None, label=None, started=False, gap=0.0):
    """One start and join of ``make(target=target)``, stamped
    ``<label>.begin`` and ``<label>.joined`` (and ``<label>.started`` after
    the start, with ``started``) by ``t`` if ``label``; then ``gap`` s of
    sleep."""
    if label:
        t(f"{label}.begin")
    p = make(target=target)
    p.start()
    if started:
        t(f"{label}.started")
    p.join()
    if label:
        t(f"{label}.joined")
    p.close()
    if gap:
        time.sleep(gap)


def drive(n, gap=0.002, with_mp=False, block=1):
    """``gap``: seconds of sleep after each start + join (0: back to back,
    as the benchmark's loop, where each start follows the last join at
    once); ``with_mp``: also starts under the multiprocessing method
    "ember"; ``block``: starts of one kind in a row (1: the kinds
    alternate at each start; more: as the benchmark's rounds, where a
    start follows one of its own kind, whose lease it takes)."""
    import multiprocessing as mp

    import ember
    from ember._trace import flush, t

    ctx = mp.get_context("fork")
    ectx = mp.get_context("ember")
    for _ in range(5):                       # the template, the first spares
        _start_join(ember.Process, trivial)
        if with_mp:
            _start_join(ectx.Process, trivial)
    time.sleep(0.1)
    for i in range(0, n, block):
        k = min(block, n - i)
        for _ in range(k if with_mp else 0):
            _start_join(ectx.Process, traced_mp_target, t, "M", gap=gap)
        for _ in range(k):
            _start_join(ember.Process, trivial, t, "P", gap=gap)
        for _ in range(k):
            _start_join(ctx.Process, traced_fork_target, t, "F", started=True, gap=gap)
    flush()


def analyse(path, out=sys.stdout):
    ev = []
    with open(path) as f:
        for line in f:
            ns, pid, label = line.split()
            ev.append((int(ns), int(pid), label))
    ev.sort()
    windows, cur = [], None
    for e in ev:
        if e[2] in ("P.begin", "F.begin", "M.begin"):
            cur = [e]
            windows.append(cur)
        elif cur is not None:
            cur.append(e)
    steps = collections.defaultdict(list)
    values = collections.defaultdict(list)
    for w in windows:
        t0 = w[0][0]
        kind = w[0][2][0]
        first = {}
        for ns, _pid, label in w:
            if "=" in label:
                k, v = label.split("=", 1)
                values[kind, k].append(float(v))
            elif label not in first:
                first[label] = ns - t0
        if kind + ".joined" in first:
            for k, v in first.items():
                steps[kind, k].append(v / 1e6)
    for kind, title in (("P", "ember.Process start + join"),
                        ("M", "multiprocessing \"ember\" start + join"),
                        ("F", "multiprocessing fork start + join")):
        end = (kind, kind + ".joined")
        if not steps.get(end):
            continue
        print(f"## {title}: {len(steps[end])} starts; ms since the start was asked for "
              f"(median, p25-p75), and the step from the line before", file=out)
        rows = sorted(((k[1], v) for k, v in steps.items() if k[0] == kind),
                      key=lambda kv: statistics.median(kv[1]))
        prev = 0.0
        for k, vs in rows:
            vs = sorted(vs)
            m = statistics.median(vs)
            print(f"  {k:18s} {m:7.3f}  (+{m - prev:6.3f})   {vs[len(vs) // 4]:7.3f}-"
                  f"{vs[3 * len(vs) // 4]:7.3f}  n={len(vs)}", file=out)
            prev = m
        for k, vs in sorted(values.items()):
            if k[0] == kind:
                print(f"  {k[1]}: median {statistics.median(vs):g}", file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=150, help="starts of each kind (default 150)")
    ap.add_argument("--keep", metavar="DIR", default=None,
                    help="write the raw trace to DIR/trace and keep it")
    ap.add_argument("--back-to-back", action="store_true",
                    help="no pause between one start + join and the next (as the benchmark)")
    ap.add_argument("--mp", action="store_true",
                    help="also multiprocessing starts under the \"ember\" method (M.)")
    ap.add_argument("--block", type=int, default=1, metavar="K",
                    help="K starts of each kind in a row (default 1: the kinds alternate)")
    ap.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.drive:
        drive(a.n, 0 if a.back_to_back else 0.002, a.mp, max(1, a.block))
        return 0
    d = a.keep or tempfile.mkdtemp(prefix="ember-trace-")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "trace")
    if os.path.exists(path):
        os.unlink(path)
    import _rundir
    _rundir.use_private()         # the runtime's address and event log, removed at exit
    env = dict(os.environ, EMBER_TRACE_START=d)
    import subprocess
    print(f"# trace_python_start: n={a.n}, load {' '.join('%.1f' % x for x in os.getloadavg())}",
          flush=True)
    subprocess.run([sys.executable, "-m", "ember", "run", os.path.abspath(__file__), "--drive",
                    "-n", str(a.n)] + (["--back-to-back"] if a.back_to_back else [])
                   + (["--mp"] if a.mp else []) + ["--block", str(a.block)],
                   env=env, check=True, timeout=600)
    analyse(path)
    print(f"# load after: {' '.join('%.1f' % x for x in os.getloadavg())}")
    if a.keep is None:
        os.unlink(path)
        os.rmdir(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
