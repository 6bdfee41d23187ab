"""docs/tutorial.md cannot rot: every code block of it is a file under
docs/tutorial/ (included with ``literalinclude``), and this runs each one
under a real runtime and checks its output against the ``.out`` file the
tutorial shows (issue 16)."""
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from procs import runtime_of

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUT = os.path.join(ROOT, "docs", "tutorial")
PAGE = os.path.join(ROOT, "docs", "tutorial.md")


def _argv(line):
    """An ``ember ...`` line of a .sh file as the argv this interpreter runs."""
    argv = shlex.split(line)
    assert argv[0] == "ember", line
    return [sys.executable, "-m", "ember", *argv[1:]]


def _lines(name):
    with open(os.path.join(TUT, name)) as f:
        return [ln for ln in f.read().splitlines() if ln.strip()]


@contextlib.contextmanager
def hanging(argv):
    """The tutorial's hang.py run by ``argv`` (an `ember run`) in docs/tutorial,
    once its consumer is blocked on its q.get() (`ember ps` says so).
    Yields (the launcher's first line, the runtime's id, an environment
    that points ember's commands at it: other runtimes of this user may run
    beside the test); then Ctrl-C must end it (the launcher forwards SIGINT
    to the head: exit 130)."""
    launcher = subprocess.Popen(argv, cwd=TUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    try:
        first = launcher.stdout.readline()
        rid = runtime_of(launcher.pid, time.monotonic() + 60)
        env = dict(os.environ, EMBER_ADDRESS=rid)
        deadline = time.monotonic() + 60
        while True:
            ps = subprocess.run([sys.executable, "-m", "ember", "ps"], capture_output=True,
                                text=True, env=env, timeout=60)
            assert ps.returncode == 0, ps.stderr
            consumer = [ln for ln in ps.stdout.splitlines() if " consumer " in ln]
            if consumer and 'blocked on get(Queue "jobs")' in consumer[0]:
                break
            assert time.monotonic() < deadline, (first, ps.stdout)
            time.sleep(0.2)
        yield first, rid, env
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 130
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=60)
        launcher.stdout.close()
        launcher.stderr.close()


def test_every_file_is_in_the_page_and_every_block_is_a_file():
    with open(PAGE) as f:
        page = f.read()
    included = {ln.split("tutorial/", 1)[1].strip()
                for ln in page.splitlines() if ln.startswith("```{literalinclude} tutorial/")}
    assert included == set(os.listdir(TUT)) - {"__pycache__"}
    # no inline code block: every fenced block is a literalinclude
    fences = [ln for ln in page.splitlines() if ln.startswith("```") and ln.strip() != "```"]
    assert all(f.startswith("```{literalinclude}") for f in fences), fences


def test_install_is_the_readmes_first_command():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert _lines("install.sh") == ["pip install ."]
    assert "pip install . && ember run examples/pipeline.py" in readme


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prog", ["hello", "process", "squares", "event"])
def test_program_prints_what_the_tutorial_shows(prog):
    (line,) = _lines(f"run_{prog}.sh")
    assert line == f"ember run {prog}.py"
    r = subprocess.run(_argv(line), cwd=TUT, capture_output=True, text=True, timeout=120)
    with open(os.path.join(TUT, f"{prog}.out")) as f:
        expected = f.read()
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == expected


@pytest.mark.timeout(120)
def test_ps_and_stacks_show_the_hang():
    (line,) = _lines("run_hang.sh")
    with hanging(_argv(line)) as (first, _, env):
        assert first.startswith("started; now run `ember ps`")
        # the tutorial's commands
        ps_line, stacks_line = _lines("ps.sh")
        ps = subprocess.run(_argv(ps_line), capture_output=True, text=True, env=env, timeout=60)
        assert ps.returncode == 0, ps.stderr
        assert ps.stdout.startswith("P_UID  NAME"), ps.stdout
        consumer = [ln for ln in ps.stdout.splitlines() if " consumer " in ln]
        assert consumer and 'blocked on get(Queue "jobs")' in consumer[0], ps.stdout
        st = subprocess.run(_argv(stacks_line), capture_output=True, text=True, env=env,
                            timeout=60)
        assert st.returncode == 0, st.stderr
        assert "process 2 'consumer'" in st.stdout, st.stdout
        assert 'hang.py", line 5 in consumer' in st.stdout, st.stdout
        assert '^ blocked on get(Queue "jobs")' in st.stdout, st.stdout
