"""Benchmark: alloc+free pairs per second of ember pools, side by side with
the obvious alternatives, at 64 B, 4 KiB and 1 MiB, in one process and in
two processes at once.

    python benchmarks/bench_pools.py [--seconds 0.5] [--commit lazy|full]

Rows:
  ember C            ember_pool_alloc + ember_pool_free in a C loop (cffi build of pool.c)
  malloc C           malloc + free in a C loop (process-local; the floor)
  ember Python       pool.alloc(n).free()
  SharedMemory       multiprocessing.shared_memory.SharedMemory(create=True, size=n)
                     + close() + unlink()
  bytearray          bytearray(n) (process-local, zero-filled)

"2 procs" runs the same loop in two processes at the same time (ember: on the
same pool, contending for its lock) and reports the sum.  Targets on a 2-core
machine: >= 5 M/s from C and >= 1.5 M/s from Python at 64 B.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import shared_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from ember.pools_c import Pool  # noqa: E402
import _report  # noqa: E402  (benchmarks/_report.py: --json, --png)

C_CDEF = """
uint64_t bench_ember(ember_pool_t *pool, uint64_t size, double seconds);
uint64_t bench_malloc(uint64_t size, double seconds);
"""

C_SOURCE = """
#include <stdlib.h>
#include <time.h>
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
uint64_t bench_ember(ember_pool_t *pool, uint64_t size, double seconds)
{
    uint64_t n = 0;
    double end = now_s() + seconds;
    ember_alloc_t a;
    do {
        for (int i = 0; i < 1000; i++) {
            if (ember_pool_alloc(pool, size, &a) != EMBER_OK || ember_pool_free(pool, &a) != EMBER_OK)
                return 0;
        }
        n += 1000;
    } while (now_s() < end);
    return n;
}
uint64_t bench_malloc(uint64_t size, double seconds)
{
    uint64_t n = 0;
    double end = now_s() + seconds;
    do {
        for (int i = 0; i < 1000; i++) {
            void *volatile p = malloc(size);
            free(p);
        }
        n += 1000;
    } while (now_s() < end);
    return n;
}
"""

SIZES = [(64, "64 B"), (4096, "4 KiB"), (1 << 20, "1 MiB")]


def _timed(loop, seconds):
    """Run loop(k) (k iterations) in batches until `seconds` pass; rate/s."""
    n, batch = 0, 200
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        loop(batch)
        n += batch
        t = time.perf_counter()
        if t >= end:
            return n / (t - t0)


def py_ember(pool, size, seconds):
    alloc = pool.alloc

    def loop(k):
        for _ in range(k):
            alloc(size).free()
    return _timed(loop, seconds)


def py_shm(size, seconds):
    SM = shared_memory.SharedMemory

    def loop(k):
        for _ in range(k // 10 or 1):
            s = SM(create=True, size=size)
            s.close()
            s.unlink()
    return _timed(loop, seconds) / 10


def py_bytearray(size, seconds):
    def loop(k):
        for _ in range(k):
            bytearray(size)
    return _timed(loop, seconds)


def c_ember(mod, pool_handle, size, seconds):
    return mod.lib.bench_ember(pool_handle, size, seconds) / seconds


def c_malloc(mod, size, seconds):
    return mod.lib.bench_malloc(size, seconds) / seconds


def in_two_processes(fn, *args):
    """Run fn(*args) -> rate in two forked processes at once; sum of rates."""
    rfds, pids = [], []
    start_at = time.monotonic() + 0.1
    for _ in range(2):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                while time.monotonic() < start_at:
                    pass
                os.write(w, repr(fn(*args)).encode())
            finally:
                os._exit(0)
        os.close(w)
        rfds.append(r)
        pids.append(pid)
    total = 0.0
    for r, pid in zip(rfds, pids):
        with os.fdopen(r) as f:
            total += float(f.read())
        os.waitpid(pid, 0)
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    ap.add_argument("--commit", choices=["lazy", "full"], default="lazy",
                    help="how the benchmark pool commits /dev/shm pages (Pool.create(commit=...))")
    _report.add_args(ap)
    args = ap.parse_args(argv)
    secs = args.seconds

    import cffi_build
    tmp = tempfile.mkdtemp(prefix="bench_pools_")
    try:
        mod = cffi_build.build_pool(tmp, extra_cdef=C_CDEF, extra_source=C_SOURCE)
        pool = Pool.create(64 << 20, name="bench", commit=args.commit)
        cpool = None
        try:
            pp = mod.ffi.new("ember_pool_t **")
            sd = pool.sdesc
            assert mod.lib.ember_pool_attach(sd, len(sd), pp) == 0
            cpool = pp[0]
            print(f"ember pools benchmark: alloc+free pairs per second ({os.cpu_count()} CPUs, "
                  f"{secs} s per cell, commit={args.commit})\n")
            hdr = f"{'size':>6}  {'impl':<14} {'1 proc':>12} {'2 procs':>12}   {'ember/this (1p)':>16}"
            print(hdr)
            print("-" * len(hdr))
            results = {}
            for size, label in SIZES:
                rows = [
                    ("ember C", lambda: c_ember(mod, cpool, size, secs)),
                    ("malloc C", lambda: c_malloc(mod, size, secs)),
                    ("ember Python", lambda: py_ember(pool, size, secs)),
                    ("SharedMemory", lambda: py_shm(size, secs)),
                    ("bytearray", lambda: py_bytearray(size, secs)),
                ]
                for name, fn in rows:
                    one = fn()                     # warm-up (caches, page faults, CPU clock)
                    one = max(fn(), fn())          # best of two: the box may be shared
                    two = in_two_processes(fn)
                    results[(label, name)] = (one, two)
                for name, _ in rows:
                    one, two = results[(label, name)]
                    ref = results[(label, "ember C" if name.endswith(" C") else "ember Python")][0]
                    ratio = "" if name.startswith("ember") else f"{ref / one:>15.2f}x"
                    print(f"{label:>6}  {name:<14} {one / 1e6:>10.3f} M {two / 1e6:>10.3f} M   {ratio:>16}")
                print()
            c64 = results[("64 B", "ember C")][0]
            p64 = results[("64 B", "ember Python")][0]
            print(f"targets at 64 B: C {c64 / 1e6:.2f} M/s (>= 5 M/s: {'ok' if c64 >= 5e6 else 'MISSED'}), "
                  f"Python {p64 / 1e6:.2f} M/s (>= 1.5 M/s: {'ok' if p64 >= 1.5e6 else 'MISSED'})")
            pool._validate()
            _report.write(args, "bench_pools", [_report.measure(
                f"alloc+free pairs, {label}, 1 process", "pairs/s",
                {name: one for (lab, name), (one, _) in results.items() if lab == label})
                for _, label in SIZES], argv=argv)
        finally:
            if cpool is not None:
                mod.lib.ember_pool_detach(cpool)
            pool.destroy()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
