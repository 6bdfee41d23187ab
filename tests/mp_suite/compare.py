"""CPython's multiprocessing suite under "ember", "spawn" and "fork", in the
same run: passed/failed/skipped per test class, side by side.

    python tests/mp_suite/compare.py [--methods ember,spawn,fork] [--timeout S]
                                     [--json OUT] [--parallel] [--per-test-timeout S]
                                     [-k PATTERN]

Each method runs in its own interpreter (``run_suite.py``), one after the
other (or at the same time with ``--parallel``); a method that exceeds ``--timeout`` seconds is
reported with its counts so far.  After the table: each test that passed
under spawn and not under ember, with what it did under ember (issue 13's
target: each is in docs/multiprocessing.md's list, or a defect).
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(method, timeout, patterns, per_test):
    import tempfile

    partial = os.path.join(tempfile.gettempdir(), f"mp_suite_{method}_{os.getpid()}.json")
    cmd = [sys.executable, os.path.join(HERE, "run_suite.py"), method, "--partial", partial,
           "--per-test-timeout", str(per_test)]
    for p in patterns or ():
        cmd += ["-k", p]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            with open(partial) as f:
                out = json.load(f)
            out["cut"] = f"cut short after {timeout} s"
            return out
        except (OSError, ValueError):
            return {"method": method, "error": f"timed out after {timeout} s"}
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"method": method, "error": f"exit {res.returncode}: {res.stderr[-2000:]}"}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="ember,spawn,fork")
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--json")
    ap.add_argument("--per-test-timeout", type=int, default=120)
    ap.add_argument("--parallel", action="store_true", help="run the methods at the same time")
    ap.add_argument("-k", dest="patterns", action="append")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    if args.parallel:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(len(methods)) as ex:
            futs = {m: ex.submit(run, m, args.timeout, args.patterns, args.per_test_timeout) for m in methods}
        results = {m: f.result() for m, f in futs.items()}
    else:
        results = {m: run(m, args.timeout, args.patterns, args.per_test_timeout) for m in methods}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    for m, r in results.items():
        if "error" in r:
            print(f"{m}: {r['error']}")
        if "cut" in r:
            print(f"{m}: {r['cut']} (counts so far)")
    # classes are named With<Type><Name>; compare by that name
    names = sorted({c for r in results.values() for c in r.get("classes", {})})
    head = f"{'class':48}" + "".join(f"{m + ' p/f/s':>16}" for m in methods)
    print(head)
    print("-" * len(head))
    totals = {m: [0, 0, 0] for m in methods}
    for c in names:
        row = f"{c:48}"
        for m in methods:
            k = results[m].get("classes", {}).get(c)
            if k is None:
                row += f"{'-':>16}"
                continue
            t = (k.get("passed", 0), k.get("failed", 0), k.get("skipped", 0))
            for i in range(3):
                totals[m][i] += t[i]
            row += f"{'/'.join(map(str, t)):>16}"
        print(row)
    print("-" * len(head))
    print(f"{'total':48}" + "".join(f"{'/'.join(map(str, totals[m])):>16}" for m in methods))
    print(f"{'seconds':48}" + "".join(f"{results[m].get('seconds', '-'):>16}" for m in methods))
    if "ember" in results and "spawn" in results:
        lost = not_passed("ember", results, against="spawn")
        print(f"\npassed under spawn, not under ember: {len(lost)}")
        for name, what in lost:
            print(f"  {name}: {what}")
    return 0


def not_passed(method, results, against):
    """(CLASS.TEST, what it did under ``method``) for each test that passed
    under ``against`` and not under ``method``."""
    mine = results[method].get("outcomes", {})
    return [(f"{cls}.{test}", mine.get(cls, {}).get(test, "not run"))
            for cls, tests in sorted(results[against].get("outcomes", {}).items())
            for test, what in sorted(tests.items())
            if what == "passed" and mine.get(cls, {}).get(test) != "passed"]


if __name__ == "__main__":
    sys.exit(main())
