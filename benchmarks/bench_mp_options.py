"""A start+join under the program's interpreter options, each set against none.

    python benchmarks/bench_mp_options.py [--rounds 2] [--reps 20] [--sets LIST]

A program run as ``python OPTIONS`` (this file with ``--child``: a runtime
of its own, as any multiprocessing program brings up) times ``reps``
start+joins of a trivial function under the "ember" method and under
``ember.Process`` (after three of each to warm up), and fork's in the same
process as its baseline; and says where its children came from: from a
warm template (its command line the template's) or a fresh
interpreter, and whether they had the options spawn's child has
(``subprocess._args_from_interpreter_flags``).  The first set is none (the
baseline the others are divided by); ``env-`` sets run without this
machine's ``PYTHONDONTWRITEBYTECODE`` and ``PYTHONUNBUFFERED`` (what a user
without them sees).  Each set in its own process, the sets in turn, for
``rounds`` rounds; the median of each set's round medians.

``--sets=LIST``: a comma-separated list of set names (``none``, ``-O``,
``-X dev``, ``env-none``, ... as printed; with ``=``, as they start with a
dash); "none" is always run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

#: (name, interpreter options, variables removed from the environment)
SETS = [
    ("none", [], ()),
    ("-O", ["-O"], ()),
    ("-OO", ["-OO"], ()),
    ("-X dev", ["-X", "dev"], ()),
    ("-W error", ["-W", "error"], ()),
    ("-W ignore::DeprecationWarning", ["-W", "ignore::DeprecationWarning"], ()),
    ("-u", ["-u"], ()),
    ("-E", ["-E"], ()),
    ("-s", ["-s"], ()),
    ("-I", ["-I"], ()),
    ("-P", ["-P"], ()),
    ("-b", ["-b"], ()),
    ("-q", ["-q"], ()),
    ("-X utf8", ["-X", "utf8"], ()),
    ("-X warn_default_encoding", ["-X", "warn_default_encoding"], ()),
    ("-X faulthandler", ["-X", "faulthandler"], ()),
    ("-X frozen_modules=off", ["-X", "frozen_modules=off"], ()),
    ("env-none", [], ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")),
    ("env- -u", ["-u"], ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")),
    ("env- -B", ["-B"], ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")),
]


def trivial():
    pass


def _cloned():
    """Whether this process is a template's clone (it runs the template's
    command line; a fresh interpreter runs ember._worker's)."""
    with open("/proc/self/cmdline", "rb") as f:
        return b"ember._template" in f.read().split(b"\0")


def where(q=None):
    """Where this child came from and its options: (a template child,
    the options spawn's child would have)."""
    from subprocess import _args_from_interpreter_flags
    got = (_cloned(), _args_from_interpreter_flags())
    if q is None:
        return got
    q.put(got)


def times(make, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        p = make(target=trivial)
        p.start()
        p.join()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def child(reps):
    import multiprocessing as mp

    import ember

    em, fork = mp.get_context("ember"), mp.get_context("fork")
    q = em.Queue()
    p = em.Process(target=where, args=(q,))
    p.start()
    mine = where()[1]
    got_mp = q.get(timeout=120)
    p.join()
    ep = ember.Process(target=where)
    ep.start()
    got_ep = ep.result()
    ep.join()
    out = {"template": [got_mp[0], got_ep[0]],
           "options": [got_mp[1] == mine, got_ep[1] == mine]}
    for name, make in (("ember", em.Process), ("ember.Process", ember.Process),
                       ("fork", fork.Process)):
        times(make, 3)
        out[name] = times(make, reps)
    print(json.dumps(out), flush=True)


def now():
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return f"{time.strftime('%H:%M:%S', time.gmtime())} UTC, load {load}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--sets", default=None)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        return child(args.child)
    sets = SETS
    if args.sets:
        want = args.sets.split(",")
        sets = [s for s in SETS if s[0] in want or s[0] == "none"]
    print(f"start+join of a trivial function (ms), each set's median of {args.reps} after 3, "
          f"in a program of its own; {args.rounds} rounds ({now()}):")
    got = {s[0]: [] for s in sets}
    here = os.path.abspath(__file__)
    for _ in range(args.rounds):
        for name, opts, unset in sets:
            env = {k: v for k, v in os.environ.items()
                   if k not in unset and not k.startswith("EMBER_")}
            res = subprocess.run([sys.executable, *opts, here, "--child", str(args.reps)],
                                 env=env, capture_output=True, text=True, timeout=300)
            line = res.stdout.strip().splitlines()[-1:] if res.returncode == 0 else []
            if not line:
                print(f"  {name}: failed (exit {res.returncode}): {res.stderr[-500:]}")
                continue
            got[name].append(json.loads(line[0]))
    base = {k: statistics.median(r[k] for r in got["none"]) for k in ("ember", "ember.Process")}
    print(f"  {'set':<30} {'ember':>7} {'/none':>6} {'Process':>8} {'/none':>6} {'fork':>6}  "
          f"from a template (mp, Process), options as spawn's")
    for name, _, _ in sets:
        runs = got[name]
        if not runs:
            continue
        m = {k: statistics.median(r[k] for r in runs) for k in ("ember", "ember.Process", "fork")}
        print(f"  {name:<30} {m['ember']:7.2f} {m['ember'] / base['ember']:6.2f} "
              f"{m['ember.Process']:8.2f} {m['ember.Process'] / base['ember.Process']:6.2f} "
              f"{m['fork']:6.2f}  {runs[-1]['template']} {runs[-1]['options']}")
    print(f"  ({now()})")


if __name__ == "__main__":
    sys.exit(main())
