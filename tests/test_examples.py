"""Every example in examples/ runs under a real runtime with its output
checked, beside its plain-multiprocessing counterpart in examples/mp/; and
docs/examples.md's line counts are those of the files."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(*argv, timeout=150):
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{argv} exited {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def ember_run(name, timeout=150):
    return _run("-m", "ember", "run", str(EXAMPLES / name), timeout=timeout)


def plain(name, timeout=150):
    return _run(str(EXAMPLES / "mp" / name), timeout=timeout)


def _check(out, *patterns):
    for p in patterns:
        assert re.search(p, out, re.M), f"{p!r} not in the output:\n{out}"


@pytest.mark.timeout(200)
def test_task_farm():
    out = ember_run("task_farm.py")
    _check(out, r"^results: \[536, 713, 242, 419, 948, 125, 654, 831\]$",
           r"^a task failed: ValueError\('model diverged for seed 13'\)$",
           r'^  File ".*task_farm\.py", line \d+, in simulate$',    # the worker's traceback
           r"^a worker died: executor worker .* was killed by SIGKILL while running this task$",
           r"^the executor still works: 10$")
    out = plain("task_farm.py")
    _check(out, r"^results: \[536, 713, 242, 419, 948, 125, 654, 831\]$",
           r"^a task failed: ValueError", r"^the executor is broken: ")


@pytest.mark.timeout(200)
def test_pipeline_queues():
    expected = r"^stored 1000 records, id sum 499500 \(expected 499500\)$"
    _check(ember_run("pipeline_queues.py"), expected, r"^exit codes: \[0, 0, 0\]$")
    _check(plain("pipeline_queues.py"), expected, r"^exit codes: \[0, 0, 0\]$")


@pytest.mark.timeout(200)
def test_shared_service():
    summary = r"\{'done': 20, 'running': 20\}$"
    for out in (ember_run("shared_service.py"), plain("shared_service.py")):
        _check(out, r"^service sees: " + summary, r"^inspector sees: " + summary,
               r"^request 2-3 is \('running', 2\)$")


@pytest.mark.timeout(200)
def test_scoped_objects():
    out = ember_run("scoped_objects.py")
    _check(out, r"^job-1: sum of squares 328350, totals by n % 3 \[\(0, 1683\), \(1, 1617\), "
                r"\(2, 1650\)\], 5 live objects \(the scope itself included\)$",
           r"^left after job-1: \[\]$", r"^job-2 made 4 objects, then was killed$",
           r"^left after job-2: \[\]$")
    _check(plain("scoped_objects.py"),
           r"^job-1: sum of squares 328350",
           r"^job-2 was killed; its manager's server still running: True$")


@pytest.mark.timeout(200)
def test_runner():
    out = ember_run("runner.py")
    _check(out, r"^sensor-0: '.*: 21\.5 C on attempt 3' \(2 restarts\)$",
           r"^reindex-0: '.* reindexed shard a-m' \(0 restarts\)$")
    # one sensor per node on three (local) nodes; the job on any one of them
    out = _run("-m", "ember", "run", "--hosts", "local:3", str(EXAMPLES / "runner.py"),
               timeout=150)
    for i in range(3):
        _check(out, rf"^sensor-{i}: '.*: 21\.5 C on attempt 3' \(2 restarts\)$")
    _check(out, r"^reindex-0: '.* reindexed shard a-m' \(0 restarts\)$")
    _check(plain("runner.py"), r"^sensor: '.*: 21\.5 C on attempt 3' \(2 restarts\)$",
           r"^reindex: 'pid \d+ reindexed shard a-m' \(0 restarts\)$")


@pytest.mark.timeout(200)
def test_barrier_event():
    out = ember_run("barrier_event.py")
    _check(out, r"^camera killed \(exit code -9\) while waiting at the barrier$",
           r"^stage: the barrier broke in round 1$", r"^detector: the barrier broke in round 1$",
           r"^shutter lock taken over from its dead holder: pid \d+, the camera's: True$")
    _check(plain("barrier_event.py"),
           r"^the others are still blocked in the barrier after 12 s$",
           r"^shutter lock taken over: False")


@pytest.mark.timeout(200)
def test_mp_switch_runs_the_same_program_on_ember():
    # without `ember run`: the program brings up its own runtime (ember.init)
    on_ember, on_mp = _run(str(EXAMPLES / "mp_switch.py")), plain("mp_switch.py")
    assert on_ember.replace("start method: ember", "") == on_mp.replace("start method: fork", "")
    _check(on_ember, r"^squares: 333283335000$", r"^received: 1000$", r"^counted: 2000$",
           r"^start method: ember$")
    # and it is the same program: only the import and the start method were added
    mine = _code(EXAMPLES / "mp_switch.py")
    theirs = _code(EXAMPLES / "mp" / "mp_switch.py")
    added = [ln for ln in mine if ln not in theirs]
    assert [ln for ln in theirs if ln not in mine] == []
    assert added == ["import ember  # noqa: F401  (registers the start method \"ember\")",
                     '    mp.set_start_method("ember")']


def _code(path):
    """The lines of a program without its module docstring, blank lines
    and comment lines."""
    src = path.read_text()
    tree = ast.parse(src)
    skip = 0
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(
            getattr(tree.body[0], "value", None), ast.Constant):
        skip = tree.body[0].end_lineno
    return [ln for ln in src.splitlines()[skip:] if ln.strip() and not ln.strip().startswith("#")]


def test_docs_line_counts_are_true():
    text = (ROOT / "docs" / "examples.md").read_text()
    rows = re.findall(r"^\| \[`(\w+\.py)`\]\([^)]*\) \| (\d+) \| (\d+) \|", text, re.M)
    names = sorted(p.name for p in EXAMPLES.glob("*.py") if (EXAMPLES / "mp" / p.name).exists())
    assert sorted(n for n, _, _ in rows) == names
    for name, mine, theirs in rows:
        assert (int(mine), int(theirs)) == (len(_code(EXAMPLES / name)),
                                            len(_code(EXAMPLES / "mp" / name))), name
