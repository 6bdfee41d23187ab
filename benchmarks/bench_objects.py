"""Shared objects: ember proxies against multiprocessing.managers, in the
same run.

    PYTHONPATH=. python benchmarks/bench_objects.py [--quick] [--rounds N]

Measures
- the proxy method call round trip with small arguments (``p.f(1)``):
  median, p99 and mean of single calls, against a
  ``multiprocessing.managers`` proxy of the same object;
- shared dict get/set per second with 2 processes hammering one dict
  (``ember.dict()`` against ``multiprocessing.Manager().dict()``);
- the same proxy call with the caller and the host pinned to two CPUs, and
  to one (on a loaded machine the unpinned median is one or the other);
each in --rounds rounds (ember and its baseline in turns), then prints the
median round against the target and the ratio to the baseline, with the
load average.
"""
import argparse
import multiprocessing as mp
import multiprocessing.managers as mpm
import os
import statistics
import time

import ember

import _report  # benchmarks/_report.py: --json, --png
import _rundir  # benchmarks/_rundir.py: a private runtime directory

TARGET_RTT_US = 20.0
TARGET_RTT_RATIO = 10.0
TARGET_DICT_RATIO = 20.0


class Echo:
    def f(self, x):
        return x


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))]


def call_latency(f, n, warmup):
    lat = []
    pc = time.perf_counter_ns
    for i in range(n + warmup):
        t = pc()
        f(1)
        if i >= warmup:
            lat.append(pc() - t)
    return statistics.median(lat) / 1e3, pct(lat, 0.99) / 1e3, statistics.fmean(lat) / 1e3


def dict_worker(d, k, n, start):
    start.wait()
    t = time.perf_counter()
    for i in range(n):
        d[k] = i
        d[k]
    return time.perf_counter() - t


def _mp_dict_worker(d, k, n, start, out):
    out.put(dict_worker(d, k, n, start))


def ember_dict_rate(n, in_pool=False):
    d = ember.dict(in_pool=in_pool)
    start = ember.Event()
    procs = [ember.Process(target=dict_worker, args=(d, k, n, start)) for k in range(2)]
    for p in procs:
        p.start()
    time.sleep(0.5)
    t = time.perf_counter()
    start.set()
    for p in procs:
        p.result()
    wall = time.perf_counter() - t
    for p in procs:
        p.join()
        p.close()
    d.close() if in_pool else d._close()
    return 2 * 2 * n / wall


def mp_dict_rate(n):
    with mp.Manager() as m:
        d = m.dict()
        start = mp.Event()
        out = mp.Queue()
        procs = [mp.Process(target=_mp_dict_worker, args=(d, k, n, start, out)) for k in range(2)]
        for p in procs:
            p.start()
        time.sleep(0.5)
        t = time.perf_counter()
        start.set()
        for _ in procs:
            out.get()
        wall = time.perf_counter() - t
        for p in procs:
            p.join()
    return 2 * 2 * n / wall


class _EchoManager(mpm.BaseManager):
    pass


_EchoManager.register("Echo", Echo)


def _median_round(rounds):
    """The round whose median is the median of the rounds' medians."""
    return sorted(rounds)[len(rounds) // 2]


def _pinned_latency(p, pid, cpus, n, warmup):
    """The proxy round trip with the caller on cpus[0] and the host on cpus[1]."""
    mine = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        os.sched_setaffinity(pid, {cpus[1]})
        return call_latency(p.f, n, warmup)
    finally:
        os.sched_setaffinity(0, mine)
        os.sched_setaffinity(pid, mine)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds of each measure (median and range printed; default 3, 1 "
                         "with --quick)")
    _report.add_args(ap)
    args = ap.parse_args()
    n = 3000 if args.quick else 30000
    nd = 2000 if args.quick else 20000
    rounds = args.rounds or (1 if args.quick else 3)
    load0 = os.getloadavg()
    cpus = sorted(os.sched_getaffinity(0))

    ember.init()
    try:
        ref = ember.serve(Echo())
        p = ref.proxy()
        e_rounds, m_rounds = [], []
        with _EchoManager() as m:
            q = m.Echo()
            for _ in range(rounds):        # ember and the baseline in turns
                e_rounds.append(call_latency(p.f, n, 2000))
                m_rounds.append(call_latency(q.f, n, 500))
        placed = {}
        if len(cpus) >= 2:
            placed["two CPUs"] = _pinned_latency(p, ref.pid, cpus[:2], n, 2000)
            placed["one CPU"] = _pinned_latency(p, ref.pid, cpus[:1] * 2, n, 2000)
        ref.destroy()
        e_rates = [ember_dict_rate(nd) for _ in range(rounds)]
        ep_rates = [ember_dict_rate(nd * 4, in_pool=True) for _ in range(rounds)]
    finally:
        ember.shutdown()
    m_rates = [mp_dict_rate(nd) for _ in range(rounds)]
    load1 = os.getloadavg()

    e_med, e_p99, e_mean = _median_round(e_rounds)
    m_med, m_p99, m_mean = _median_round(m_rounds)
    e_rate, ep_rate, m_rate = (statistics.median(r) for r in (e_rates, ep_rates, m_rates))
    print(f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; {rounds} "
          f"round(s) of each measure, the median round shown [min - max of the rounds]")
    print(f"proxy call round trip, small args (median / p99 / mean, µs): "
          f"ember {e_med:.1f} / {e_p99:.1f} / {e_mean:.1f}   "
          f"multiprocessing.managers {m_med:.1f} / {m_p99:.1f} / {m_mean:.1f}")
    print(f"  medians of the rounds: ember [{min(r[0] for r in e_rounds):.1f} - "
          f"{max(r[0] for r in e_rounds):.1f}], multiprocessing.managers "
          f"[{min(r[0] for r in m_rounds):.1f} - {max(r[0] for r in m_rounds):.1f}]")
    ratio = m_med / e_med
    print(f"  -> {ratio:.1f}x faster (median); target <= {TARGET_RTT_US:.0f} µs: "
          f"{'met' if e_med <= TARGET_RTT_US else 'NOT met'}, >= {TARGET_RTT_RATIO:.0f}x: "
          f"{'met' if ratio >= TARGET_RTT_RATIO else 'NOT met'}")
    if placed:
        print("  by placement (caller and host pinned; the median depends on it when the "
              "machine is loaded): " + ", ".join(
                  f"{k} {v[0]:.1f} µs ({m_med / v[0]:.1f}x)" for k, v in placed.items()))
    print(f"shared dict get+set, 2 processes: ember.dict() (served) {e_rate:,.0f} ops/s   "
          f"ember.dict(in_pool=True) {ep_rate:,.0f} ops/s   "
          f"Manager().dict() {m_rate:,.0f} ops/s")
    print(f"  rounds: in pool [{min(ep_rates):,.0f} - {max(ep_rates):,.0f}], served "
          f"[{min(e_rates):,.0f} - {max(e_rates):,.0f}], Manager().dict() "
          f"[{min(m_rates):,.0f} - {max(m_rates):,.0f}]")
    print(f"  -> served {e_rate / m_rate:.1f}x, in pool {ep_rate / m_rate:.1f}x; target >= "
          f"{TARGET_DICT_RATIO:.0f}x: "
          f"{'met' if ep_rate / m_rate >= TARGET_DICT_RATIO else 'NOT met'} (in pool)")
    measures = [
        _report.measure("proxy call round trip, small args, median", "µs",
                        {"ember.serve proxy": e_med, "multiprocessing.managers proxy": m_med},
                        better="lower", target=TARGET_RTT_US),
        _report.measure("shared dict get+set, 2 processes", "ops/s",
                        {"ember.dict(in_pool=True)": ep_rate, "ember.dict() (served)": e_rate,
                         "Manager().dict()": m_rate}, target=TARGET_DICT_RATIO * m_rate)]
    if placed:
        measures.append(_report.measure(
            "proxy call round trip by placement, median", "µs",
            {**{f"ember, caller and host on {k}": v[0] for k, v in placed.items()},
             "multiprocessing.managers proxy (not pinned)": m_med},
            better="lower", target=TARGET_RTT_US))
    _report.write(args, "bench_objects", measures)


if __name__ == "__main__":
    _rundir.use_private()     # its runtime's address and event log
    main()
