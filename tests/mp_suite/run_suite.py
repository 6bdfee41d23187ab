"""Run CPython's ``test._test_multiprocessing`` under one start method and
print one JSON line of per-class counts (the last line of output).

    python tests/mp_suite/run_suite.py ember|spawn|fork [--per-test-timeout S] [-k PATTERN]
                                       [--skip CLASS.TEST]  (exit 2 if it names no test)
                                       [--group processes|threads|manager|misc]
                                       [--deadline CLASS.TEST=S]

Used by ``compare.py`` and ``tests/test_mp_suite.py``.  Each test gets a
SIGALRM deadline (default 120 s; ``--deadline`` sets one test's) so that
one hanging test cannot stall the run; it is then counted as an error.
Each failure's whole text (traceback and all) is in the JSON line's
"failures", each test's outcome in "outcomes" ("passed", the failure's
mode, "skipped: REASON"), each class's time in "class_seconds".
``--group`` runs one of the four parts that CPython itself runs apart
(3.12's test_multiprocessing_spawn/test_processes, test_threads,
test_manager, test_misc): the With<Group>Test* classes, or (misc) every
class that is none of them.  Each part is its own run, so parts can run
at the same time (tests/test_mp_suite.py runs them as four tests).
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
    def __init__(self, *a, per_test_timeout=120, deadlines=None, partial=None, method=None,
                 **kw):
        super().__init__(*a, **kw)
        self.per_test_timeout = per_test_timeout
        self.deadlines = deadlines or {}
        self.partial = partial
        self.method = method
        self.t0 = time.monotonic()
        self.counts = collections.defaultdict(lambda: collections.Counter())
        self.failures_of = collections.defaultdict(list)
        self.seconds_of = collections.defaultdict(float)
        self.outcomes = collections.defaultdict(dict)

    def _cls(self, test):
        return type(test).__name__ if isinstance(test, unittest.TestCase) else str(test)

    def startTest(self, test):
        name = f"{self._cls(test)}.{getattr(test, '_testMethodName', '')}"
        signal.alarm(self.deadlines.get(name, self.per_test_timeout))
        self.started = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        signal.alarm(0)
        super().stopTest(test)
        self.seconds_of[self._cls(test)] += time.monotonic() - self.started
        if self.partial:
            # what is known so far, should the whole run be cut short
            with open(self.partial + ".tmp", "w") as f:
                json.dump(self.summary(partial=True), f)
            os.replace(self.partial + ".tmp", self.partial)

    def summary(self, partial=False):
        out = {"method": self.method, "seconds": round(time.monotonic() - self.t0, 1),
               "classes": {k: dict(v) for k, v in sorted(self.counts.items())},
               "failures": {k: v for k, v in sorted(self.failures_of.items())},
               "class_seconds": {k: round(v, 1) for k, v in sorted(self.seconds_of.items())},
               "outcomes": {k: v for k, v in sorted(self.outcomes.items())}}
        if partial:
            out["partial"] = True
        return out

    def _outcome(self, test, what):
        self.outcomes[self._cls(test)][getattr(test, "_testMethodName", str(test))] = what

    def addSuccess(self, test):
        super().addSuccess(test)
        self.counts[self._cls(test)]["passed"] += 1
        self._outcome(test, "passed")

    def _failed(self, test, text, mode):
        # the whole text (traceback, captured output): what a CI log shows;
        # mode: "fail" (an assertion), "error" (another exception),
        # "timeout" (the per-test deadline), "success" (an unexpected one)
        self.counts[self._cls(test)]["failed"] += 1
        self._outcome(test, mode)
        self.failures_of[self._cls(test)].append(
            (getattr(test, "_testMethodName", str(test)), text, mode))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._failed(test, self._exc_info_to_string(err, test), "fail")

    def addError(self, test, err):
        super().addError(test, err)
        self._failed(test, self._exc_info_to_string(err, test),
                     "timeout" if issubclass(err[0], _Timeout) else "error")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.counts[self._cls(test)]["skipped"] += 1
        self._outcome(test, f"skipped: {reason}")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.counts[self._cls(test)]["passed"] += 1
        self._outcome(test, "passed")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._failed(test, "unexpected success", "success")


def build(method):
    # suite_<method>.py next to this file: the children (spawn, ember)
    # unpickle the test classes by their module's name, found on sys.path
    # (this directory is sys.path[0], and travels to them).
    import importlib

    return importlib.import_module(f"suite_{method}")


def _names(suite):
    """Every CLASS.TEST of ``suite``."""
    for test in _tests(suite):
        yield f"{type(test).__name__}.{getattr(test, '_testMethodName', '')}"


GROUPS = ("processes", "threads", "manager", "misc")


def group_of(cls_name):
    """The part of the suite a test class is in (``GROUPS``)."""
    for group in GROUPS[:3]:
        if cls_name.startswith("With" + group.capitalize()):
            return group
    return "misc"


def _tests(suite):
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            yield from _tests(test)
        else:
            yield test


def _skip(suite, names):
    """Mark the tests named CLASS.TEST in ``names`` skipped (unittest's own
    skip: they count as skipped and their class fixtures still run)."""
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            _skip(test, names)
        elif f"{type(test).__name__}.{getattr(test, '_testMethodName', '')}" in names:
            def skipped():
                pass
            skipped.__unittest_skip__ = True
            skipped.__unittest_skip_why__ = "--skip (known flaky, see tests/test_mp_suite.py)"
            setattr(test, test._testMethodName, skipped)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("--per-test-timeout", type=int, default=120)
    ap.add_argument("-k", dest="pattern", action="append")
    ap.add_argument("--partial", help="keep the counts so far in this JSON file")
    ap.add_argument("--skip", action="append", default=[], metavar="CLASS.TEST",
                    help="report this test as skipped without running it")
    ap.add_argument("--group", choices=GROUPS, help="run this part of the suite only")
    ap.add_argument("--deadline", action="append", default=[], metavar="CLASS.TEST=S",
                    help="this test's deadline in seconds (one known to hang: its time)")
    args = ap.parse_args(argv)
    try:
        mod = build(args.method)
    except ImportError as exc:
        print(json.dumps({"method": args.method, "error": f"test package missing: {exc}"}))
        return 2
    signal.signal(signal.SIGALRM, _alarm)
    # Python keeps SIGINT ignored if it started so (a background job of a
    # script: `cmd &`); the suite's tests that SIGINT their own process
    # (test_wait_result, ..._SharedMemoryServer_ignores_sigint) expect
    # KeyboardInterrupt, and would hang or fail under every method.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        deadlines = {name: int(s) for name, s in (d.split("=") for d in args.deadline)}
    except ValueError:
        print(f"run_suite.py: --deadline takes CLASS.TEST=SECONDS, not {args.deadline}",
              file=sys.stderr)
        return 2
    unknown = sorted((set(args.skip) | set(deadlines))
                     - set(_names(unittest.TestLoader().loadTestsFromModule(mod))))
    if unknown:
        # a misspelt name would run the flaky test it meant to leave out
        print(f"run_suite.py: --skip or --deadline names no test of the suite: {', '.join(unknown)} "
              f"(CLASS.TEST, e.g. WithThreadsTestPool.test_terminate)", file=sys.stderr)
        return 2
    loader = unittest.TestLoader()
    if args.pattern:
        loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in args.pattern]
    suite = loader.loadTestsFromModule(mod)
    if args.group:
        # one flat suite, in the loader's order: each class's fixtures run
        # around its tests as before
        suite = unittest.TestSuite(t for t in _tests(suite)
                                   if group_of(type(t).__name__) == args.group)
    _skip(suite, set(args.skip))
    mod.setUpModule()
    runner = unittest.TextTestRunner(
        verbosity=1, stream=sys.stderr,
        resultclass=lambda *a, **kw: Result(*a, per_test_timeout=args.per_test_timeout,
                                            deadlines=deadlines,
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
