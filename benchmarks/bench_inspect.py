"""`ember ps` for many processes: the issue's target is <= 200 ms for 1,000.

    python benchmarks/bench_inspect.py [--procs N] [--reps R]

Starts a runtime (ember.init), creates N managed processes (/bin/sleep, plus
two Python processes blocked on a channel, so the slots table has records),
then measures
  * the whole command: `python -m ember ps --json` wall time (interpreter
    start-up included; `python -c pass` is printed beside it);
  * the work itself, in process: attach, ServiceDump, read the slots table,
    one psutil look per pid, format, detach;
and tears the runtime down.  Best and median of R runs.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import _report  # benchmarks/_report.py: --json, --png
import _rundir  # benchmarks/_rundir.py: a private runtime directory

TARGET = 0.200

BLOCKED = """
from ember.channels_c import Channel
from ember.globalservices import channel
Channel.attach(channel.join("bench-inspect", timeout=60).sdesc).recv()
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    _report.add_args(ap)
    a = ap.parse_args(argv)
    xdg = tempfile.mkdtemp(prefix="ember-bench-inspect-")
    import atexit
    import shutil
    atexit.register(shutil.rmtree, xdg, True)   # the private runtime dir and its event logs
    os.environ["XDG_RUNTIME_DIR"] = xdg
    import ember
    from ember.globalservices import channel, process
    from ember.launcher import inspect
    rt = ember.init(name="bench-inspect")
    try:
        channel.create(None, "bench-inspect")
        for _ in range(2):
            process.create(sys.executable, "/", ["-c", BLOCKED])
        t0 = time.perf_counter()
        for _ in range(a.procs - 2):
            process.create("/bin/sleep", "/", ["600"])
        print(f"# {os.cpu_count()} CPUs; {a.procs} processes created in "
              f"{time.perf_counter() - t0:.1f} s")

        def cli():
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "ember", "ps", "--json",
                                  "--address", rt.id], capture_output=True)
            assert res.returncode == 0, res.stderr
            return time.perf_counter() - t0, res.stdout

        def bare():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"])
            return time.perf_counter() - t0

        def inproc():
            # In a process of its own: an Inspector attaches (and detaches)
            # its process, which must not be one attached already.
            code = ("import json, sys, time\n"
                    "from ember import runtime\n"
                    "from ember.launcher import inspect\n"
                    "t0 = time.perf_counter()\n"
                    "with inspect.Inspector(runtime.resolve(sys.argv[1])) as ins:\n"
                    "    rows = inspect.process_rows(ins)\n"
                    "json.dumps(rows); inspect._ps_table(rows)\n"
                    "print(time.perf_counter() - t0)\n"
                    "print(sum(1 for r in rows if r['blocked_on']), len(rows))\n")
            out = subprocess.run([sys.executable, "-c", code, rt.id], capture_output=True,
                                 check=True).stdout.split()
            return float(out[0]), (int(out[1]), int(out[2]))

        # wait until the two Python ones block (their slots say so)
        deadline = time.monotonic() + 60
        while True:
            _, (blocked, n) = inproc()
            if blocked >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert n >= a.procs and blocked >= 2, (n, blocked)
        t_cli = [cli()[0] for _ in range(a.reps)]
        t_bare = [bare() for _ in range(a.reps)]
        t_in = [inproc()[0] for _ in range(a.reps)]
        fmt = lambda xs: f"best {min(xs) * 1e3:7.1f} ms, median {statistics.median(xs) * 1e3:7.1f} ms"  # noqa: E731
        print(f"ember ps --json, whole command : {fmt(t_cli)}")
        print(f"python -c pass (start-up alone): {fmt(t_bare)}")
        print(f"ember ps work, in process      : {fmt(t_in)}")
        verdict = "MET" if statistics.median(t_cli) <= TARGET else "MISSED"
        print(f"target: ember ps for {a.procs} processes <= {TARGET * 1e3:.0f} ms -> {verdict}")
        med = statistics.median
        _report.write(a, "bench_inspect", [_report.measure(
            f"ember ps for {a.procs} processes, median", "ms",
            {"ember ps --json (whole command)": med(t_cli) * 1e3,
             "ember ps work, in process": med(t_in) * 1e3,
             "python -c pass (start-up alone)": med(t_bare) * 1e3},
            better="lower", target=TARGET * 1e3)], argv=argv)
    finally:
        ember.shutdown()


if __name__ == "__main__":
    _rundir.use_private()     # its runtime's address and event log
    main()
