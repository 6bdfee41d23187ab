"""tests/test_mp_suite.py's checks and tests/mp_suite/run_suite.py's
arguments, without running CPython's suite (fast)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from test_mp_suite import (_HAVE_SUITE, DOCUMENTED, MAY_PASS, RUNNER, TIMING, _group_of,
                           _run, retried, stale, unexpected)

pytestmark = pytest.mark.timeout(120)


def test_a_documented_failure_counts_only_in_its_documented_mode():
    mode, _ = DOCUMENTED["WithManagerTestEvent"]["test_repr"]
    assert mode == "fail"
    out = {"failures": {"WithManagerTestEvent": [["test_repr", "AssertionError: ...", "fail"]],
                        "WithProcessesTestConnection": [["test_missing_fd_transfer", "E", "error"]],
                        "WithProcessesTestQueue": [["test_put", "AssertionError: x", "fail"]]}}
    assert unexpected(out) == [
        ("WithProcessesTestConnection", "test_missing_fd_transfer",
         "[error, documented as timeout]\nE"),
        ("WithProcessesTestQueue", "test_put", "[fail]\nAssertionError: x")]


def test_every_documented_mode_is_one_run_suite_records():
    assert {m for tests in DOCUMENTED.values() for m, _ in tests.values()} <= {"fail", "error",
                                                                              "timeout"}


@pytest.mark.skipif(not _HAVE_SUITE, reason="CPython's test package is not installed")
def test_skip_of_a_name_that_names_no_test_is_refused():
    res = subprocess.run([sys.executable, RUNNER, "ember", "--skip", "WithThreadsTestPool.test_terminat",
                          "--skip", "WithThreadsTestPool.test_terminate"],
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert res.stderr.strip().splitlines()[-1] == (
        "run_suite.py: --skip or --deadline names no test of the suite: "
        "WithThreadsTestPool.test_terminat "
        "(CLASS.TEST, e.g. WithThreadsTestPool.test_terminate)")
    assert res.stdout == ""


@pytest.mark.skipif(not _HAVE_SUITE, reason="CPython's test package is not installed")
@pytest.mark.parametrize("arg", ["TestStartMethod.test_get_al=5", "TestStartMethod.test_get_all"])
def test_a_deadline_that_names_no_test_or_no_seconds_is_refused(arg):
    res = subprocess.run([sys.executable, RUNNER, "ember", "--deadline", arg],
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert res.stdout == ""
    last = res.stderr.strip().splitlines()[-1]
    assert (last.startswith("run_suite.py: --skip or --deadline names no test of the suite: "
                            "TestStartMethod.test_get_al ")
            if "=" in arg else
            last == "run_suite.py: --deadline takes CLASS.TEST=SECONDS, "
                    "not ['TestStartMethod.test_get_all']"), last


def test_a_documented_test_that_did_not_fail_is_stale_but_for_may_pass():
    # every documented failure of the misc part but one, which passed
    failed = [["test_noforkbomb", "AssertionError", "fail"]]
    out = {"failures": {"TestNoForkBomb": failed}}
    assert stale(out, "misc") == ["TestStartMethod.test_get_all"]
    assert ("TestIgnoreEINTR", "test_ignore") in MAY_PASS      # passed too: not stale
    out["failures"]["TestStartMethod"] = [["test_get_all", "AssertionError", "fail"]]
    assert stale(out, "misc") == []
    # another part's entries are not this part's business
    assert stale({"failures": {}}, "threads") == []
    assert stale({"failures": {}}, "manager") == ["WithManagerTestEvent.test_repr"]


@pytest.mark.skipif(not _HAVE_SUITE, reason="CPython's test package is not installed")
def test_a_group_runs_its_classes_only_and_records_each_outcome():
    # test_repr is in WithProcessesTestEvent, WithThreadsTestEvent and
    # WithManagerTestEvent: the manager part runs the last one only
    res = subprocess.run([sys.executable, RUNNER, "ember", "--group", "manager", "-k", "test_repr",
                          "--deadline", "WithManagerTestEvent.test_repr=100"],
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["classes"] == {"WithManagerTestEvent": {"failed": 1}}, out
    assert out["outcomes"] == {"WithManagerTestEvent": {"test_repr": "fail"}}, out
    assert set(out["class_seconds"]) == {"WithManagerTestEvent"}


def test_compare_lists_what_passed_under_spawn_and_not_under_ember():
    spec = importlib.util.spec_from_file_location(
        "mp_suite_compare", os.path.join(os.path.dirname(RUNNER), "compare.py"))
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    results = {"spawn": {"outcomes": {"A": {"t1": "passed", "t2": "passed", "t3": "fail"},
                                      "B": {"t4": "passed"}}},
               "ember": {"outcomes": {"A": {"t1": "passed", "t2": "skipped: why", "t3": "passed"}}}}
    assert compare.not_passed("ember", results, against="spawn") == [
        ("A.t2", "skipped: why"), ("B.t4", "not run")]


@pytest.mark.skipif(not _HAVE_SUITE, reason="CPython's test package is not installed")
def test_each_timing_test_is_a_test_of_a_default_part():
    # run_suite.py --skip refuses a name that is no test of the suite
    cmd = [sys.executable, RUNNER, "ember", "-k", "no_test_has_this_name"]
    for name in TIMING:
        cmd += ["--skip", name]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert {_group_of(name.split(".")[0]) for name in TIMING} <= {"processes", "manager", "misc"}


@pytest.mark.skipif(not _HAVE_SUITE, reason="CPython's test package is not installed")
def test_a_timing_test_that_passes_when_run_again_alone_is_a_warning_only():
    # test_notify is run again, alone (not test_notify_all or _n); it passes
    # (an idle run), and leaves a warning; test_put, not in TIMING, stays
    out = _run("ember", 100, "processes", only=["WithProcessesTestCondition.test_notify"])
    assert out["outcomes"] == {"WithProcessesTestCondition": {"test_notify": "passed"}}, out
    bad = [("WithProcessesTestCondition", "test_notify", "[fail]\nAssertionError: 1 != 2"),
           ("WithProcessesTestQueue", "test_put", "[fail]\nAssertionError: x")]
    with pytest.warns(UserWarning, match=r"(?s)WithProcessesTestCondition\.test_notify failed "
                                         r"and passed when run again.*AssertionError: 1 != 2"):
        assert retried(bad, "processes") == bad[1:]
    assert retried(bad[1:], "processes") == bad[1:]          # nothing to run again
