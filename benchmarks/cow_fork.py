"""Pages a plain forked child writes (copy-on-write) doing a fixed
multiprocessing-like workload, on the interpreter that runs this file.

    python3.X benchmarks/cow_fork.py [-n N]

No ember: compares interpreters (CPython 3.11 writes the reference count of
every object it reads; 3.12's immortal objects are not written).  The
parent imports what a template serving multiprocessing holds, freezes the
collector, and forks N children one at a time; each child runs
:func:`workload` and stops itself, and its pagemap is compared with the
parent's from before the fork (:mod:`cow_pages`).  Run as root (the child's
frame numbers).
"""
import argparse
import gc
import itertools
import os
import signal
import statistics
import sys

import collections  # noqa: F401  (below: what a template holds)
import concurrent.futures  # noqa: F401
import json
import logging
import multiprocessing
import multiprocessing.connection  # noqa: F401
import multiprocessing.process
import multiprocessing.spawn  # noqa: F401
import multiprocessing.util
import pickle
import queue
import random  # noqa: F401
import re
import selectors  # noqa: F401
import socket  # noqa: F401
import subprocess  # noqa: F401
import tempfile  # noqa: F401
import threading

from cow_pages import snapshot, written


def workload():
    """Some of what a multiprocessing child does at its start."""
    prep = pickle.loads(pickle.dumps({"name": "P-1", "sys_path": list(sys.path),
                                      "authkey": b"x" * 32, "dir": os.getcwd()}))
    cp = multiprocessing.process.current_process()
    cp.name = prep["name"]
    cp.authkey = prep["authkey"]
    sys.path = prep["sys_path"]
    os.chdir(prep["dir"])
    multiprocessing.get_context("fork").Process(target=print, args=(1,))
    multiprocessing.process._process_counter = itertools.count(1)
    multiprocessing.process._children = set()
    multiprocessing.util._exiting = False
    os.environ.get("HOME"), threading.main_thread().name, logging.getLogger().level
    json.dumps({"a": [1, 2, 3]})
    re.compile("a+b").match("aab")
    queue.Queue().put(1)
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20)
    a = ap.parse_args()
    gc.collect()
    gc.freeze()
    counts = []
    for _ in range(a.n):
        before = snapshot(os.getpid())[0]
        pid = os.fork()
        if pid == 0:
            workload()
            os.kill(os.getpid(), signal.SIGSTOP)
            os._exit(0)
        os.waitpid(pid, os.WUNTRACED)
        counts.append(len(written(before, snapshot(pid)[0])))
        os.kill(pid, signal.SIGCONT)
        os.waitpid(pid, 0)
    print(f"Python {sys.version.split()[0]}: pages a forked child writes: median "
          f"{statistics.median(counts):.0f}, min {min(counts)}, max {max(counts)} ({a.n} forks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
