"""The runtime as a library: what ``ember.init()`` and attaching cost, with
baselines measured in the same run.

    python benchmarks/bench_init.py [--reps N]

Measures (each in a fresh interpreter, timed inside it, median of N):
  * ``ember.init()`` to the first ``process.create`` returning (target
    <= 50 ms), beside ``multiprocessing.Manager()`` start (the stdlib's way
    to get a shared-state server) and ``multiprocessing`` spawn of one
    process (a fresh interpreter, what a background service costs);
  * ``ember.init(address="auto")`` to a running runtime (target <= 10 ms);
  * the same ``init()`` with the forked host disabled (``EMBER_INIT_SPAWN=1``,
    the path taken from a multi-threaded process such as a Jupyter kernel).
The import of ember itself is not counted (it is the same for every call).
"""
import argparse
import os
import statistics
import subprocess
import sys
import textwrap

import _report  # benchmarks/_report.py: --json, --png
import _rundir  # benchmarks/_rundir.py: a private runtime directory

TARGET = {"init_to_create": 0.050, "attach_auto": 0.010}

INIT = textwrap.dedent("""
    import os, time
    import ember
    from ember.globalservices import process
    t0 = time.perf_counter()
    ember.init()
    process.create("/bin/true", "/", [])
    t1 = time.perf_counter()
    print(t1 - t0)
""")

ATTACH = textwrap.dedent("""
    import time
    import ember
    from ember.globalservices import process
    t0 = time.perf_counter()
    ember.init(address="auto")
    process.query(ember.runtime.current().p_uid)
    print(time.perf_counter() - t0)
""")

MANAGER = textwrap.dedent("""
    import time, multiprocessing as mp
    t0 = time.perf_counter()
    m = mp.Manager()
    d = m.dict()
    print(time.perf_counter() - t0)
    m.shutdown()
""")

SPAWN1 = textwrap.dedent("""
    import time, multiprocessing as mp
    def f(): pass
    if __name__ == "__main__":
        ctx = mp.get_context("spawn")
        t0 = time.perf_counter()
        p = ctx.Process(target=f); p.start(); p.join()
        print(time.perf_counter() - t0)
""")


def _time(code, env=None):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return float(out.stdout.strip().splitlines()[-1])


def median_of(code, reps, env=None):
    return statistics.median(_time(code, env) for _ in range(reps))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=9)
    _report.add_args(ap)
    args = ap.parse_args()
    import tempfile
    rd = tempfile.mkdtemp(prefix="ember-bench-")
    import atexit
    import shutil
    atexit.register(shutil.rmtree, rd, True)    # the private runtime dir and its event logs
    env = dict(os.environ, XDG_RUNTIME_DIR=rd)   # a private runtime dir: "auto" finds ours only
    env.pop("EMBER_ADDRESS", None)
    # byte-code caching on, as after `pip install` (this environment may turn
    # it off; every start would then compile ember's modules again)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "import ember.launcher.cli, ember.globalservices.server, "
                    "ember.shepherd.server, ember.globalservices._client"], env=env, check=True)
    res = {}
    res["init_to_create"] = median_of(INIT, args.reps, env)
    res["init_spawned_host"] = median_of(INIT, args.reps, dict(env, EMBER_INIT_SPAWN="1"))
    res["mp_manager"] = median_of(MANAGER, args.reps, env)
    res["mp_spawn_one"] = median_of(SPAWN1, args.reps, env)
    start = subprocess.run([sys.executable, "-m", "ember", "start", "--name", "bench-init"],
                           capture_output=True, text=True, env=env, timeout=60)
    if start.returncode:
        raise RuntimeError(start.stderr)
    try:
        res["attach_auto"] = median_of(ATTACH, args.reps, env)
    finally:
        subprocess.run([sys.executable, "-m", "ember", "stop", "bench-init"], env=env, timeout=60,
                       capture_output=True)

    def ms(v):
        return f"{v * 1e3:7.1f} ms"
    print(f"ember.init() -> first process.create   {ms(res['init_to_create'])}   "
          f"target <= 50 ms: {'MET' if res['init_to_create'] <= TARGET['init_to_create'] else 'MISSED'}")
    print(f"  same, host started as a fresh python {ms(res['init_spawned_host'])}   "
          f"(multi-threaded callers, e.g. Jupyter)")
    print(f"  baseline multiprocessing.Manager()    {ms(res['mp_manager'])}   "
          f"ember is {res['mp_manager'] / res['init_to_create']:.1f}x faster")
    print(f"  baseline mp spawn of one process      {ms(res['mp_spawn_one'])}   "
          f"ratio {res['mp_spawn_one'] / res['init_to_create']:.2f}")
    print(f"ember.init(address='auto') + 1 query   {ms(res['attach_auto'])}   "
          f"target <= 10 ms: {'MET' if res['attach_auto'] <= TARGET['attach_auto'] else 'MISSED'}")
    _report.write(args, "bench_init", [
        _report.measure("start a runtime, then the first process", "ms",
                        {"ember.init() + process.create": res["init_to_create"] * 1e3,
                         "ember.init(), host a fresh python": res["init_spawned_host"] * 1e3,
                         "multiprocessing.Manager()": res["mp_manager"] * 1e3,
                         "mp spawn of one process": res["mp_spawn_one"] * 1e3},
                        better="lower", target=TARGET["init_to_create"] * 1e3),
        _report.measure("attach to a running runtime + 1 query", "ms",
                        {"ember.init(address='auto')": res["attach_auto"] * 1e3},
                        better="lower", target=TARGET["attach_auto"] * 1e3)])


if __name__ == "__main__":
    _rundir.use_private()     # its runtimes' addresses and event logs
    main()
