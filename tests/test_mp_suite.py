"""CPython's own multiprocessing suite (``test._test_multiprocessing``,
the suite behind test_multiprocessing_fork/spawn/forkserver) under the
"ember" start method.  Long: marked ``slow`` (``pytest -m slow
tests/test_mp_suite.py``).  The per-class figures next to spawn's and
fork's: ``python tests/mp_suite/compare.py`` (docs/multiprocessing.md)."""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "mp_suite", "run_suite.py")

try:
    import test._test_multiprocessing  # noqa: F401
    _HAVE_SUITE = True
except ImportError:
    _HAVE_SUITE = False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _HAVE_SUITE, reason="CPython's test package (test._test_multiprocessing) "
                                               "is not installed with this Python"),
]

#: Test classes that fail under "ember" for a documented reason (see
#: docs/multiprocessing.md, "CPython's suite"): class name -> max failures.
DOCUMENTED = {
    "TestIgnoreEINTR": 1,                    # a large send_bytes on an ember Pipe does not block
    "TestNoForkBomb": 1,                     # a fresh interpreter must import ember to name it
    "TestStartMethod": 2,                    # same (spawn child of an "ember" parent); get_all lists it
    "WithProcessesTestBarrier": 1,           # the action is pickled when the barrier is made
    "WithProcessesTestCondition": 3,         # no _sleeping_count/_woken_count internals
    "WithProcessesTestConnection": 4,        # ember Connections have no fileno()
    "WithProcessesTestEvent": 1,             # ember's repr
    "WithManagerTestEvent": 1,               # ember.Manager's Event is ember's (its repr)
    "WithProcessesTestQueue": 1,             # put() pickles in the caller (no feeder thread)
}


def _run(method, timeout):
    res = subprocess.run([sys.executable, RUNNER, method], capture_output=True, text=True,
                         timeout=timeout)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert lines, (res.returncode, res.stderr[-5000:])
    return json.loads(lines[-1])


@pytest.mark.timeout(3600)
def test_cpython_multiprocessing_suite_under_ember():
    out = _run("ember", 3500)
    assert "error" not in out, out
    assert sum(c.get("passed", 0) for c in out["classes"].values()) > 100, out
    bad = {cls: counts["failed"] for cls, counts in out["classes"].items()
           if counts.get("failed", 0) > DOCUMENTED.get(cls, 0)}
    assert bad == {}, {cls: out["failures"].get(cls) for cls in bad}
