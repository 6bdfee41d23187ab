"""Run CPython's ``test._test_multiprocessing`` under one start method and
print one JSON line of per-class counts (the last line of output).

    python tests/mp_suite/run_suite.py ember|spawn|fork [--per-test-timeout S] [-k PATTERN]

Used by ``compare.py`` and ``tests/test_mp_suite.py``.  Each test gets a
SIGALRM deadline (default 120 s) so that one hanging test cannot stall the
run; it is then counted as an error.
"""
import argparse
import collections
import json
import os
import signal
import sys
import time
import unittest

import ember  # noqa: F401  registers the "ember" start method


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout("test exceeded the per-test timeout")


class Result(unittest.TextTestResult):
    def __init__(self, *a, per_test_timeout=120, partial=None, method=None, **kw):
        super().__init__(*a, **kw)
        self.per_test_timeout = per_test_timeout
        self.partial = partial
        self.method = method
        self.t0 = time.monotonic()
        self.counts = collections.defaultdict(lambda: collections.Counter())
        self.failures_of = collections.defaultdict(list)

    def _cls(self, test):
        return type(test).__name__ if isinstance(test, unittest.TestCase) else str(test)

    def startTest(self, test):
        signal.alarm(self.per_test_timeout)
        super().startTest(test)

    def stopTest(self, test):
        signal.alarm(0)
        super().stopTest(test)
        if self.partial:
            # what is known so far, should the whole run be cut short
            with open(self.partial + ".tmp", "w") as f:
                json.dump(self.summary(partial=True), f)
            os.replace(self.partial + ".tmp", self.partial)

    def summary(self, partial=False):
        out = {"method": self.method, "seconds": round(time.monotonic() - self.t0, 1),
               "classes": {k: dict(v) for k, v in sorted(self.counts.items())},
               "failures": {k: v for k, v in sorted(self.failures_of.items())}}
        if partial:
            out["partial"] = True
        return out

    def addSuccess(self, test):
        super().addSuccess(test)
        self.counts[self._cls(test)]["passed"] += 1

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.counts[self._cls(test)]["failed"] += 1
        self.failures_of[self._cls(test)].append(
            (getattr(test, "_testMethodName", str(test)), self._exc_info_to_string(err, test)[-600:]))

    def addError(self, test, err):
        super().addError(test, err)
        self.counts[self._cls(test)]["failed"] += 1
        self.failures_of[self._cls(test)].append(
            (getattr(test, "_testMethodName", str(test)), self._exc_info_to_string(err, test)[-600:]))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.counts[self._cls(test)]["skipped"] += 1

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.counts[self._cls(test)]["passed"] += 1

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.counts[self._cls(test)]["failed"] += 1


def build(method):
    # suite_<method>.py next to this file: the children (spawn, ember)
    # unpickle the test classes by their module's name, found on sys.path
    # (this directory is sys.path[0], and travels to them).
    import importlib

    return importlib.import_module(f"suite_{method}")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("--per-test-timeout", type=int, default=120)
    ap.add_argument("-k", dest="pattern", action="append")
    ap.add_argument("--partial", help="keep the counts so far in this JSON file")
    args = ap.parse_args(argv)
    try:
        mod = build(args.method)
    except ImportError as exc:
        print(json.dumps({"method": args.method, "error": f"test package missing: {exc}"}))
        return 2
    signal.signal(signal.SIGALRM, _alarm)
    loader = unittest.TestLoader()
    if args.pattern:
        loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in args.pattern]
    suite = loader.loadTestsFromModule(mod)
    mod.setUpModule()
    runner = unittest.TextTestRunner(
        verbosity=1, stream=sys.stderr,
        resultclass=lambda *a, **kw: Result(*a, per_test_timeout=args.per_test_timeout,
                                            partial=args.partial, method=args.method, **kw))
    try:
        res = runner.run(suite)
    finally:
        try:
            mod.tearDownModule()
        except Exception:
            pass
    out = res.summary()
    sys.stdout.flush()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
