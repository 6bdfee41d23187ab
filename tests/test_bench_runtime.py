"""benchmarks/bench_runtime.py's 'join return after the exit' step under
load: a child that exits and is reaped by the shepherd before the benchmark
opens its pidfd made ``os.pidfd_open`` raise ProcessLookupError and killed
the whole benchmark.  The sample is now skipped (and another one taken)."""
import importlib.util
import os
import time

import pytest

pytest_plugins = ["ember.testing"]

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(os.path.dirname(HERE), "benchmarks", "bench_runtime.py")


@pytest.fixture(scope="module")
def bench():
    import sys
    sys.path.insert(0, os.path.dirname(BENCH))      # its helpers (benchmarks/_report.py)
    spec = importlib.util.spec_from_file_location("bench_runtime", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.timeout(60)
def test_pidfd_of_a_reaped_process_is_none(bench):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)           # exited and reaped: its pid is gone
    assert bench.pidfd_or_none(pid) is None
    fd = bench.pidfd_or_none(os.getpid())
    assert fd is not None
    os.close(fd)


@pytest.mark.timeout(120)
def test_exit_to_join_sample_when_the_exit_comes_first(bench, ember_runtime, monkeypatch):
    """The race made certain: the child has exited and the shepherd has
    reaped it before the benchmark opens its pidfd.  No exception: None
    (not timed), and the process was still joined."""
    from ember.globalservices import process

    real = bench.pidfd_or_none

    def late(pid):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:       # wait until the shepherd reaped it
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.005)
        return real(pid)

    monkeypatch.setattr(bench, "pidfd_or_none", late)
    assert bench.exit_to_join_sample("/bin/true", ()) is None
    # the process it created was joined: none is left running
    assert [p for p, _ in process.get_list(alive_only=True) if p != ember_runtime.p_uid] == []
    monkeypatch.setattr(bench, "pidfd_or_none", real)
    t = bench.exit_to_join_sample("/bin/sleep", ("0.05",))
    assert isinstance(t, float)
