"""Python functions in managed processes vs multiprocessing / concurrent.futures.

    python benchmarks/bench_python_processes.py [--quick] [--map-n N] [--only start,sustained]

Re-executes itself under ``python -m ember run`` when not inside a runtime.
Every baseline runs in the same process and run, and each line prints the
ratio against the target of issue 10:

| measure                                  | target                                  |
|------------------------------------------|-----------------------------------------|
| start + join of a trivial function       | <= mp fork, and <= 5 ms (median)        |
| sustained starts per second              | >= 300/s                                |
| Executor.map of N trivial calls          | chunksize=1: >= 10x ProcessPoolExecutor |
|                                          | default: <= multiprocessing.Pool.map    |
| 100 MB numpy result back to the parent   | >= 5x faster than mp Queue / Pipe       |
"""
import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
import sys
import time

import _report  # benchmarks/_report.py: --json, --png
import _rundir  # benchmarks/_rundir.py: a private runtime directory


def trivial():
    return 1


def sq(x):
    return x * x


def big_result(nbytes):
    import numpy as np

    a = np.ones(nbytes // 8)
    return time.perf_counter(), a


def big_to_queue(q, nbytes):
    q.put(big_result(nbytes))


def big_to_pipe(conn, nbytes):
    conn.send(big_result(nbytes))


def median_ms(fn, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def rounds_ms(fns, rounds, n):
    """Median of ``n`` runs of each of ``fns`` (a dict), ``rounds`` times,
    the functions taking turns within each round (so that a change of load
    on this shared machine hits them alike); {name: [round medians]}."""
    out = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            out[k].append(median_ms(fn, n))
    return out


def load():
    return "load %.1f %.1f %.1f" % os.getloadavg()


def ember_start_join(method):
    import ember

    def run():
        p = ember.Process(target=trivial, start_method=method)
        p.start()
        p.join()
        p.close()
    return run


def mp_start_join(ctx):
    def run():
        p = ctx.Process(target=trivial)
        p.start()
        p.join()
        p.close()
    return run


def sustained(make, total, window=8):
    """Start ``total`` processes, at most ``window`` alive at once."""
    live = []
    t = time.perf_counter()
    for _ in range(total):
        if len(live) >= window:
            live.pop(0).join()
        p = make()
        p.start()
        live.append(p)
    for p in live:
        p.join()
    return total / (time.perf_counter() - t)


def start_kinds(target, mp_ember=False):
    """The starts of ``target`` a start benchmark compares, as ``(name,
    make)``: ember.Process, multiprocessing's "ember" start method (with
    ``mp_ember``) and its fork, the baseline."""
    import ember

    fork = mp.get_context("fork")
    kinds = [("ember.Process", lambda: ember.Process(target=target)),
             ("mp fork", lambda: fork.Process(target=target))]
    if mp_ember:
        ctx = mp.get_context("ember")
        kinds.insert(1, ('mp "ember"', lambda: ctx.Process(target=target)))
    return kinds


def line(what, value, unit, base=None, target=None):
    s = f"{what:<52} {value:10.3f} {unit}"
    if base is not None:
        s += f"   ratio {base:8.2f}"
    if target is not None:
        s += f"   target {target}"
    print(s, flush=True)


PARTS = ("start", "sustained", "map", "big")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--map-n", type=int, default=100_000)
    ap.add_argument("--big-mb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of the start + join measure (default 5, --quick 3)")
    _report.add_only(ap, PARTS, help="run only these measures (default: all)")
    _report.add_args(ap)
    a = ap.parse_args()
    only = a.only
    import ember

    reps = 40 if a.quick else 200
    slow_reps = 5 if a.quick else 20
    print(f"# bench_python_processes: {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
          flush=True)

    fork = mp.get_context("fork")
    measures = []

    if "start" in only:
        # --- start + join -------------------------------------------------
        median_ms(ember_start_join("template"), 3)          # start the template
        fs = mp.get_context("forkserver")
        median_ms(mp_start_join(fs), 2)                     # start the fork server
        n_rounds = a.rounds or (3 if a.quick else 5)
        print(f"## start + join of a trivial function: {n_rounds} rounds of {reps // n_rounds}, "
              f"ember and mp fork taking turns ({load()})", flush=True)
        r = rounds_ms({"ember": ember_start_join("template"), "fork": mp_start_join(fork)},
                      n_rounds, reps // n_rounds)
        t_tmpl, t_fork = statistics.median(r["ember"]), statistics.median(r["fork"])
        ratios = [f / e for e, f in zip(r["ember"], r["fork"])]
        t_fs = median_ms(mp_start_join(fs), reps // n_rounds)
        t_spawn_e = median_ms(ember_start_join("spawn"), slow_reps)
        t_spawn = median_ms(mp_start_join(mp.get_context("spawn")), slow_reps)
        print("round medians, ms: ember " + " ".join(f"{x:.2f}" for x in r["ember"])
              + " | mp fork " + " ".join(f"{x:.2f}" for x in r["fork"]))
        print(f"ember min {min(r['ember']):.2f} median {t_tmpl:.2f} ms; mp fork min "
              f"{min(r['fork']):.2f} median {t_fork:.2f} ms; per-round speed ratio (fork/ember) "
              f"min {min(ratios):.2f} median {statistics.median(ratios):.2f} max {max(ratios):.2f} "
              f"({load()})")
        line("mp fork (median of round medians)", t_fork, "ms")
        line("mp forkserver", t_fs, "ms")
        line("mp spawn", t_spawn, "ms")
        line("ember.Process start_method='spawn'", t_spawn_e, "ms", t_spawn / t_spawn_e)
        line("ember.Process (template) vs mp fork", t_tmpl, "ms", t_fork / t_tmpl,
             f"ratio >= 1 and <= 5 ms: {'MET' if t_tmpl <= t_fork and t_tmpl <= 5 else 'NOT MET'}")
        measures.append(_report.measure(
            "start + join of a trivial function, median", "ms",
            {"ember.Process (template)": t_tmpl, "ember.Process (spawn)": t_spawn_e,
             "mp fork": t_fork, "mp forkserver": t_fs, "mp spawn": t_spawn},
            better="lower", target=5))

    if "sustained" in only:
        # --- sustained starts ---------------------------------------------
        n = 100 if a.quick else 300
        r_e = sustained(lambda: ember.Process(target=trivial), n)
        r_f = sustained(lambda: fork.Process(target=trivial), n)
        print("## sustained starts per second (8 alive at once)")
        line("mp fork", r_f, "/s")
        line("ember.Process (template)", r_e, "/s", r_e / r_f,
             f">= 300/s: {'MET' if r_e >= 300 else 'NOT MET'}")
        measures.append(_report.measure("sustained starts, 8 alive at once", "starts/s",
                                        {"ember.Process (template)": r_e, "mp fork": r_f},
                                        target=300))

    if "map" in only:
        # --- Executor.map ---------------------------------------------------
        N = a.map_n
        workers = os.cpu_count() or 2
        print(f"## map of {N} trivial calls, {workers} workers")
        with ember.Executor(workers) as ex:
            list(ex.map(sq, range(100)))                      # warm
            t = time.perf_counter(); list(ex.map(sq, range(N), chunksize=1))
            e1 = time.perf_counter() - t
            t = time.perf_counter(); list(ex.map(sq, range(N)))
            ed = time.perf_counter() - t
        with cf.ProcessPoolExecutor(workers, mp_context=fork) as ppe:
            list(ppe.map(sq, range(100)))
            n1 = min(N, 20_000 if a.quick else N)
            t = time.perf_counter(); list(ppe.map(sq, range(n1), chunksize=1))
            p1 = (time.perf_counter() - t) * N / n1
            t = time.perf_counter(); list(ppe.map(sq, range(N), chunksize=1000))
            p1000 = time.perf_counter() - t
        with fork.Pool(workers) as pool:
            pool.map(sq, range(100))
            t = time.perf_counter(); pool.map(sq, range(N))
            pm = time.perf_counter() - t
        line("ProcessPoolExecutor chunksize=1" + (" (scaled)" if n1 != N else ""), p1, "s")
        line("ProcessPoolExecutor chunksize=1000", p1000, "s")
        line("multiprocessing.Pool.map (auto chunks)", pm, "s")
        line("ember.Executor.map chunksize=1 vs PPE chunksize=1", e1, "s", p1 / e1,
             f">= 10: {'MET' if p1 / e1 >= 10 else 'NOT MET'}")
        line("ember.Executor.map default vs Pool.map", ed, "s", pm / ed,
             f">= 1: {'MET' if ed <= pm else 'NOT MET'}")
        measures += [
            _report.measure(f"map of {N} trivial calls, chunksize=1", "s",
                            {"ember.Executor.map": e1, "ProcessPoolExecutor": p1},
                            better="lower", target=p1 / 10),
            _report.measure(f"map of {N} trivial calls, default chunks", "s",
                            {"ember.Executor.map": ed, "multiprocessing.Pool.map": pm,
                             "ProcessPoolExecutor chunksize=1000": p1000}, better="lower")]

    # --- big numpy result ---------------------------------------------
    if "big" not in only:
        _report.write(a, "bench_python_processes", measures)
        return 0
    try:
        import numpy  # noqa: F401
    except ImportError:
        print("## numpy not installed: big-result measure skipped")
        _report.write(a, "bench_python_processes", measures)
        return 0
    nbytes = a.big_mb << 20
    print(f"## {a.big_mb} MB numpy result back to the parent (send to receive, median of 5)")

    def ember_big():
        p = ember.Process(target=big_result, args=(nbytes,))
        p.start()
        t0, arr = p.result()
        t1 = time.perf_counter()
        p.join()
        p.close()
        assert arr.nbytes == nbytes
        return t1 - t0

    def mp_queue():
        q = fork.Queue()
        p = fork.Process(target=big_to_queue, args=(q, nbytes))
        p.start()
        t0, arr = q.get()
        t1 = time.perf_counter()
        p.join()
        return t1 - t0

    def mp_pipe():
        r, w = fork.Pipe(duplex=False)
        p = fork.Process(target=big_to_pipe, args=(w, nbytes))
        p.start()
        t0, arr = r.recv()
        t1 = time.perf_counter()
        p.join()
        r.close()
        w.close()
        return t1 - t0

    te = statistics.median(ember_big() for _ in range(5)) * 1e3
    tq = statistics.median(mp_queue() for _ in range(5)) * 1e3
    tp = statistics.median(mp_pipe() for _ in range(5)) * 1e3
    line("mp Queue", tq, "ms")
    line("mp Pipe", tp, "ms")
    line("ember.Process result vs mp Queue", te, "ms", tq / te,
         f">= 5: {'MET' if tq / te >= 5 else 'NOT MET'}")
    line("ember.Process result vs mp Pipe", te, "ms", tp / te,
         f">= 5: {'MET' if tp / te >= 5 else 'NOT MET'}")
    measures.append(_report.measure(f"{a.big_mb} MB numpy result back to the parent, median",
                                    "ms", {"ember.Process result": te, "mp Queue": tq,
                                           "mp Pipe": tp}, better="lower"))
    _report.write(a, "bench_python_processes", measures)
    return 0


if __name__ == "__main__":
    if "EMBER_GS_CH" not in os.environ:
        # (a child, not an exec: this process removes the runtime's
        # directory, its address and event log, once it is over)
        _rundir.use_private()
        import subprocess
        sys.exit(subprocess.run([sys.executable, "-m", "ember", "run",
                                 os.path.abspath(__file__)] + sys.argv[1:]).returncode)
    sys.exit(main())
