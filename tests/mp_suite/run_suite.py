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
import signal
import sys
import time
import types
import unittest

import ember  # noqa: F401  registers the "ember" start method


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout("test exceeded the per-test timeout")


class Result(unittest.TextTestResult):
    def __init__(self, *a, per_test_timeout=120, **kw):
        super().__init__(*a, **kw)
        self.per_test_timeout = per_test_timeout
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
    import test._test_multiprocessing as tm

    mod = types.ModuleType(f"mp_suite_{method}")
    sys.modules[mod.__name__] = mod
    tm.install_tests_in_module_dict(mod.__dict__, method)
    return mod


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("--per-test-timeout", type=int, default=120)
    ap.add_argument("-k", dest="pattern", action="append")
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
    t0 = time.monotonic()
    mod.setUpModule()
    runner = unittest.TextTestRunner(
        verbosity=1, stream=sys.stderr,
        resultclass=lambda *a, **kw: Result(*a, per_test_timeout=args.per_test_timeout, **kw))
    try:
        res = runner.run(suite)
    finally:
        try:
            mod.tearDownModule()
        except Exception:
            pass
    out = {"method": args.method, "seconds": round(time.monotonic() - t0, 1),
           "classes": {k: dict(v) for k, v in sorted(res.counts.items())},
           "failures": {k: v for k, v in sorted(res.failures_of.items())}}
    sys.stdout.flush()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
