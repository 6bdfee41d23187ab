"""tests/test_mp_suite.py's checks and tests/mp_suite/run_suite.py's
arguments, without running CPython's suite (fast)."""
import subprocess
import sys

import pytest

from test_mp_suite import _HAVE_SUITE, DOCUMENTED, RUNNER, unexpected

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
        "run_suite.py: --skip names no test of the suite: WithThreadsTestPool.test_terminat "
        "(CLASS.TEST, e.g. WithThreadsTestPool.test_terminate)")
    assert res.stdout == ""
