"""The how-to guides' commands work (issue 16): each command block of
docs/howto/*.md is a file under docs/howto/code/ (or docs/tutorial/), and
this runs what can run here under a real runtime, checking the output the
guide shows or describes.  (`ember top` is interactive and not run.)"""
import os
import shlex
import subprocess
import sys
import uuid

import pytest

from test_tutorial import hanging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = os.path.join(ROOT, "docs", "howto", "code")
TUT = os.path.join(ROOT, "docs", "tutorial")
BIN = os.path.dirname(sys.executable)


def _lines(name):
    with open(os.path.join(CODE, name)) as f:
        return [ln for ln in f.read().splitlines() if ln.strip()]


def _argv(line, **subst):
    argv = [a.format(**subst) if subst else a for a in shlex.split(line)]
    if argv[0] == "ember":
        return [sys.executable, "-m", "ember", *argv[1:]]
    assert argv[0] == "python", line
    return [sys.executable, *argv[1:]]


def _expected(name):
    with open(os.path.join(CODE, name)) as f:
        return f.read()


def test_every_code_file_is_shown_in_a_guide():
    pages = ""
    for page in os.listdir(os.path.join(ROOT, "docs", "howto")):
        if page.endswith(".md"):
            with open(os.path.join(ROOT, "docs", "howto", page)) as f:
                pages += f.read()
    for name in os.listdir(CODE):
        if name != "__pycache__":
            assert f"{{literalinclude}} code/{name}" in pages, name


@pytest.mark.timeout(200)                # (its runs are bounded at 180 s)
def test_multiprocessing_program_runs_on_ember_both_ways():
    for line in _lines("run_mp.sh"):
        r = subprocess.run(_argv(line), cwd=CODE, capture_output=True, text=True, timeout=180)
        assert (r.returncode, r.stderr) == (0, ""), (line, r.stderr)
        assert r.stdout == _expected("mp_program.out"), line


@pytest.mark.timeout(200)                # (its runs are bounded at 180 s)
def test_notebook_cells_run_in_a_plain_interpreter():
    r = subprocess.run([sys.executable, "notebook.py"], cwd=CODE, capture_output=True, text=True,
                       timeout=180)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == _expected("notebook.out")


@pytest.mark.timeout(120)
def test_started_runtime_keeps_named_objects_between_attaches():
    name = f"howto-{uuid.uuid4().hex[:8]}"
    start, put, get, stop = [ln.replace("exp1", name) for ln in _lines("start_stop.sh")]
    r = subprocess.run(_argv(start), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"({name})" in r.stdout, r.stdout
    try:
        r = subprocess.run(_argv(put), capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr
        r = subprocess.run(_argv(get), capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stdout, r.stderr) == (0, "kept\n", ""), r.stderr
    finally:
        r = subprocess.run(_argv(stop), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.timeout(120)
def test_debug_a_hang_commands():
    with hanging([sys.executable, "-m", "ember", "run", "hang.py"]) as (first, rid, env):
        assert first.startswith("started")
        out = {}
        for line in _lines("debug.sh"):
            r = subprocess.run(_argv(line), capture_output=True, text=True, env=env, timeout=60)
            assert r.returncode == 0, (line, r.stderr)
            out[line] = r.stdout
        assert rid in out["ember ls"]
        assert 'blocked on get(Queue "jobs")' in \
            "".join(ln for ln in out["ember ps"].splitlines() if " consumer " in ln)
        assert 'hang.py", line 5 in consumer' in out["ember stacks consumer"]
        assert out["ember channels"].strip(), "no channel listed"
        assert "consumer" in out["ember events"], out["ember events"]


@pytest.mark.timeout(120)
def test_cleanup_after_a_killed_launcher(tmp_path):
    # The guide's script as written (a real `ember cleanup`, not a dry run),
    # in a private mount namespace with its own /dev/shm and runtime
    # directory: it can only see, and remove, its own runtime's segments.
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs unshare --mount (root)")
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    script = (f"mount -t tmpfs tmpfs /dev/shm && cd {shlex.quote(TUT)} && "
              f"bash {shlex.quote(os.path.join(CODE, 'crash.sh'))} && echo left: $(ls -A /dev/shm)")
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], XDG_RUNTIME_DIR=str(xdg))
    env.pop("EMBER_ADDRESS", None)
    r = subprocess.run(["unshare", "--mount", "--fork", "bash", "-c", script], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    would = [ln for ln in lines if ln.startswith("would remove /dev/shm/ember.r")]
    removed = [ln for ln in lines if ln.startswith("removed /dev/shm/ember.r")]
    assert would and any(ln.endswith(".lock") for ln in would), r.stdout
    assert [ln.replace("would remove", "removed") for ln in would] == removed, r.stdout
    assert lines[-1] == "left:", r.stdout


@pytest.mark.timeout(200)                # (its runs are bounded at 180 s)
def test_one_worker_per_node_on_three_local_nodes():
    (line,) = _lines("run_nodes.sh")
    r = subprocess.run(_argv(line), cwd=CODE, capture_output=True, text=True, timeout=180)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    lines = r.stdout.splitlines()
    # Output of another node's process reaches the launcher by its own
    # stream: it may come after the head's last line (docs/multinode.md).
    assert "exit codes: [0, 0, 0, 0]" in lines, r.stdout
    workers = [ln for ln in lines if ln != "exit codes: [0, 0, 0, 0]"]
    assert len(workers) == 4, r.stdout
    assert sorted(set(workers)) == ["worker on node 0", "worker on node 1",
                                    "worker on node 2"], r.stdout


@pytest.mark.timeout(120)
def test_the_cluster_commands_use_flags_ember_run_has():
    # ssh hosts and Slurm cannot run here (tests/test_multinode_cluster.py
    # runs them on emulated nodes); their command lines must still be real.
    helptext = subprocess.run([sys.executable, "-m", "ember", "run", "--help"],
                              capture_output=True, text=True, timeout=60).stdout
    lines = _lines("run_hosts.sh") + [ln for ln in _lines("slurm_job.sh")
                                       if ln.startswith("ember ")]
    for line in lines:
        flags = [a for a in shlex.split(line) if a.startswith("--")]
        for flag in flags:
            assert flag in helptext, (flag, line)
        assert _argv(line)[3] == "run" and "one_per_node.py" in line
