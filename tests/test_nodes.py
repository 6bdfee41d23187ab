"""ember.launcher.nodes on this machine: the watchdog, LocalLauncher,
host lists, detection, and the errors of SSH and Slurm launchers that
need no cluster (the cluster tests are test_nodes_launch.py)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from ember.exceptions import EmberError, LauncherError
from ember.launcher import nodes
from ember.launcher.nodes import (LocalLauncher, NodeSpec, SlurmLauncher, SSHLauncher, detect,
                                  in_slurm_allocation, parse_hosts)
from procs import alive, kill, wait_gone

pytestmark = pytest.mark.timeout(60)
NODE = NodeSpec(0, "localhost", "here")


@pytest.fixture
def local():
    with LocalLauncher(grace=0.5) as launcher:
        yield launcher


def test_exported_names():
    assert sorted(nodes.__all__) == sorted([
        "NodeSpec", "RemoteCommand", "NodeLauncher", "LocalLauncher", "SSHLauncher",
        "SlurmLauncher", "LauncherError", "parse_hosts", "in_slurm_allocation",
        "slurm_nodes", "detect", "READY_MARKER", "FAILED_MARKER"])
    assert issubclass(LauncherError, EmberError) and issubclass(LauncherError, RuntimeError)


def test_stdout_stderr_exit_code(local):
    with local.start(NODE, ["sh", "-c", "echo out; echo err >&2; exit 3"]) as cmd:
        assert cmd.remote_pid == cmd.pid
        assert cmd.remote_host == os.uname().nodename
        assert cmd.stdout.read() == b"out\n"
        assert cmd.stderr.read() == b"err\n"
        assert cmd.wait(30) == 3
    assert cmd.stdin.closed and cmd.stdout.closed


def test_stdin_is_forwarded(local):
    with local.start(NODE, ["sh", "-c", "read a; echo got:$a"]) as cmd:
        cmd.stdin.write(b"hello\n")
        assert cmd.stdout.readline() == b"got:hello\n"
        assert cmd.wait(30) == 0


def test_env_and_cwd(local, tmp_path):
    with local.start(NODE, ["sh", "-c", "echo $EMBER_T_X; pwd"], env={"EMBER_T_X": "a b'c"},
                     cwd=str(tmp_path)) as cmd:
        assert cmd.stdout.read().decode().split("\n")[:2] == ["a b'c", str(tmp_path)]
        assert cmd.wait(30) == 0


def test_signal_death_is_128_plus_n(local):
    with local.start(NODE, ["sh", "-c", "kill -USR1 $$"]) as cmd:
        assert cmd.wait(30) == 128 + signal.SIGUSR1


def _group_pids(cmd, n):
    """Read n pids the command prints (one per line)."""
    return [int(cmd.stdout.readline()) for _ in range(n)]


SPAWN_TREE = (
    # a grandchild in the command's group, and one that escapes with setsid
    "sleep 300 & echo $!; setsid sleep 301 & echo $!; echo $$; wait"
)


def test_stdin_eof_kills_the_process_group(local):
    cmd = local.start(NODE, ["sh", "-c", SPAWN_TREE])
    pids = _group_pids(cmd, 3)
    assert all(alive(p) for p in pids)
    cmd.close_stdin()
    assert cmd.wait(30) == 128 + signal.SIGTERM
    assert wait_gone(pids) == []
    cmd.close()


def test_terminate_kills_everything(local):
    cmd = local.start(NODE, ["sh", "-c", SPAWN_TREE])
    pids = _group_pids(cmd, 3)
    cmd.terminate()
    assert cmd.wait(30) == 128 + signal.SIGTERM
    assert wait_gone(pids) == []
    cmd.close()


def test_sigterm_ignored_then_sigkill_after_grace(local):
    cmd = local.start(NODE, ["sh", "-c", "trap '' TERM; echo $$; while :; do sleep 0.1; done"])
    pid = int(cmd.stdout.readline())
    cmd.close_stdin()
    assert cmd.wait(30) == 128 + signal.SIGKILL
    assert wait_gone([pid]) == []
    cmd.close()


def test_kill(local):
    cmd = local.start(NODE, ["sh", "-c", SPAWN_TREE])
    pids = _group_pids(cmd, 3)
    cmd.kill()
    assert cmd.wait(30) == 128 + signal.SIGKILL
    assert wait_gone(pids) == []
    cmd.close()


def test_exit_kills_leftovers(local):
    with local.start(NODE, ["sh", "-c", "setsid sleep 302 & echo $!"]) as cmd:
        pid = int(cmd.stdout.readline())
        assert cmd.wait(30) == 0
        assert wait_gone([pid]) == []


def test_launcher_death_kills_the_command(tmp_path):
    """SIGKILL of the launching process: its end of the lifeline closes."""
    prog = (
        "import sys, time\n"
        "from ember.launcher.nodes import LocalLauncher, NodeSpec\n"
        "c = LocalLauncher().start(NodeSpec(0, 'l', 'l'), ['sh', '-c', 'echo $$; sleep 300'])\n"
        "print(c.stdout.readline().decode().strip(), flush=True)\n"
        "time.sleep(300)\n")
    p = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE)
    try:
        pid = int(p.stdout.readline())
        assert alive(pid)
        p.kill()
        assert p.wait(30) == -9
        assert wait_gone([pid]) == []
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_fork_does_not_hold_the_lifeline(local):
    cmd = local.start(NODE, ["sh", "-c", "echo $$; exec sleep 300"])
    pid = int(cmd.stdout.readline())
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        cmd.close_stdin()      # the forked child's copy points at /dev/null
        assert cmd.wait(30) == 128 + signal.SIGTERM
        assert wait_gone([pid]) == []
    finally:
        kill(child)
        cmd.close()


def test_capture_false_passes_output_through(tmp_path):
    out = tmp_path / "out"
    prog = ("from ember.launcher.nodes import LocalLauncher, NodeSpec\n"
            "c = LocalLauncher().start(NodeSpec(0, 'l', 'l'), ['sh', '-c', 'echo o; echo e >&2'],"
            " capture=False)\n"
            "assert c.stdout is None and c.stderr is None\n"
            "print('rc', c.wait(30), flush=True); c.close()\n")
    with open(out, "wb") as f:
        r = subprocess.run([sys.executable, "-c", prog], stdout=f, stderr=subprocess.STDOUT,
                           timeout=60)
    assert r.returncode == 0
    assert sorted(out.read_text().split("\n")) == ["", "e", "o", "rc 0"]


def test_missing_command_is_a_launcher_error(local):
    with pytest.raises(LauncherError, match=r"^cannot start 'no-such-cmd-xyz' on node 0 "
                       r"\(localhost\) with local: the node could not run it: 'no-such-cmd-xyz': "
                       r"command not found on PATH=") as ei:
        local.start(NODE, ["no-such-cmd-xyz"])
    assert ei.value.node == NODE and ei.value.argv == ["no-such-cmd-xyz"]


def test_missing_cwd_is_a_launcher_error(local):
    with pytest.raises(LauncherError, match=r"^cannot start 'true' on node 0 \(localhost\) with "
                       r"local: the node could not run it: cannot change to directory "
                       r"'/nonexistent-ember-dir': No such file or directory$"):
        local.start(NODE, ["true"], cwd="/nonexistent-ember-dir")


def test_missing_python_is_a_launcher_error():
    with LocalLauncher(python="/nonexistent/python3") as launcher:
        with pytest.raises(LauncherError, match=r"^cannot start 'true' on node 0 \(localhost\) with "
                           r"local: cannot run '/nonexistent/python3': No such file or directory$"):
            launcher.start(NODE, ["true"])


def test_bad_arguments(local):
    with pytest.raises(ValueError, match=r"^argv is empty: give the command to run$"):
        local.start(NODE, [])
    with pytest.raises(TypeError, match=r"^argv must be a list of str, not str$"):
        local.start(NODE, "ls")
    with pytest.raises(TypeError, match=r"^argv items must be str, not int \(3\)$"):
        local.start(NODE, ["ls", 3])
    with pytest.raises(ValueError, match=r"^environment variable name 'A=B' is not valid$"):
        local.start(NODE, ["true"], env={"A=B": "x"})
    with pytest.raises(TypeError, match=r"^environment variable A must be a str, not int$"):
        local.start(NODE, ["true"], env={"A": 1})
    with pytest.raises(TypeError, match=r"^node must be a NodeSpec, not int$"):
        local.start(0, ["true"])
    with pytest.raises(ValueError, match=r"^python must be an absolute path, not 'python3'$"):
        LocalLauncher(python="python3")
    with pytest.raises(ValueError, match=r"^grace must be a number >= 0, not -1$"):
        LocalLauncher(grace=-1)


def test_close_ends_every_command():
    launcher = LocalLauncher(grace=0.5)
    cmds = [launcher.start(NODE, ["sh", "-c", "echo $$; sleep 300"]) for _ in range(3)]
    pids = [int(c.stdout.readline()) for c in cmds]
    launcher.close()
    assert all(c.returncode is not None for c in cmds)
    assert wait_gone(pids) == []
    with pytest.raises(ValueError, match=r"is closed$"):
        launcher.start(NODE, ["true"])


def test_not_ready_start_then_wait_ready(local):
    cmds = [local.start(NODE, ["echo", str(i)], ready=False) for i in range(3)]
    for i, c in enumerate(cmds):
        c.wait_ready(30)
        assert c.stdout.read() == f"{i}\n".encode()
        # (its own end, not the one close() asks for: the stdout EOF can
        # come before the watchdog has seen the command exit)
        assert c.wait(30) == 0
        assert c.close() == 0


def test_watch_usage_errors():
    r = subprocess.run([sys.executable, "-m", "ember.launcher.nodes", "--watch", "--bogus"],
                       capture_output=True, timeout=30)
    assert r.returncode == 2 and r.stderr == b"ember watch: unknown option '--bogus'\n"
    r = subprocess.run([sys.executable, "-m", "ember.launcher.nodes", "--watch", "--"],
                       capture_output=True, timeout=30)
    assert r.returncode == 2 and r.stderr == b"ember watch: no command after --\n"
    r = subprocess.run([sys.executable, "-m", "ember.launcher.nodes", "--help"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0 and b"--watch" in r.stdout


def test_run_everywhere_locally():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run([sys.executable, "-m", "ember.launcher.nodes", "--", "echo", "hi"],
                       capture_output=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"[{os.uname().nodename}] hi\n".encode()


# -- host lists, detection -----------------------------------------------

def test_parse_hosts(tmp_path):
    assert parse_hosts("n1,n2, n3") == [NodeSpec(0, "n1", "n1"), NodeSpec(1, "n2", "n2"),
                                        NodeSpec(2, "n3", "n3")]
    assert parse_hosts(["a", "root@b"]) == [NodeSpec(0, "a", "a"), NodeSpec(1, "root@b", "b")]
    f = tmp_path / "hosts"
    f.write_text("# the nodes\nx1\nx2  # second\n\n")
    assert parse_hosts(f"@{f}") == [NodeSpec(0, "x1", "x1"), NodeSpec(1, "x2", "x2")]


def test_parse_hosts_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^the host list ' , ' names no host$"):
        parse_hosts(" , ")
    with pytest.raises(ValueError, match=r"^host 'n1' appears twice in the host list 'n1,n2,n1'$"):
        parse_hosts("n1,n2,n1")
    with pytest.raises(ValueError, match=r"^host 'n\[1-3\]' in the host list 'n\[1-3\]' is a "
                       r"bracket range, which is not expanded: list the names \(in Slurm: "
                       r"scontrol show hostnames\)$"):
        parse_hosts("n[1-3]")
    with pytest.raises(ValueError, match=r"^host '-oProxyCommand=x' in the host list "
                       r"'-oProxyCommand=x' is not a valid host name$"):
        parse_hosts("-oProxyCommand=x")
    with pytest.raises(ValueError, match=r"^cannot read the host file '/nonexistent/h': "
                       r"No such file or directory$"):
        parse_hosts("@/nonexistent/h")
    with pytest.raises(TypeError, match=r"^host names must be str, not int \(1\)$"):
        parse_hosts(["a", 1])
    with pytest.raises(TypeError, match=r"^hosts must be a str or a sequence of str, not int$"):
        parse_hosts(5)


def test_detect(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    launcher, ns = detect()
    assert isinstance(launcher, LocalLauncher) and launcher.name == "local"
    assert ns == [NodeSpec(0, "localhost", os.uname().nodename)]
    launcher, ns = detect("h1,h2")
    assert isinstance(launcher, SSHLauncher) and launcher.name == "ssh"
    assert [n.host for n in ns] == ["h1", "h2"]


def test_slurm_outside_an_allocation(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert not in_slurm_allocation()
    with pytest.raises(LauncherError, match=r"^not inside a Slurm allocation \(SLURM_JOB_ID is "
                       r"not set\): run under salloc or sbatch, or give the hosts to use ssh$"):
        SlurmLauncher()
    with pytest.raises(LauncherError, match=r"^not inside a Slurm allocation"):
        nodes.slurm_nodes()


def test_srun_missing(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    with pytest.raises(LauncherError, match=r"^'no-srun-here' not found on PATH: Slurm's srun is "
                       r"needed to start commands on the allocation's nodes$"):
        SlurmLauncher(srun="no-srun-here")


def test_ssh_missing_and_bad_config():
    with pytest.raises(LauncherError, match=r"^'no-ssh-here' not found on PATH: the ssh client "
                       r"is needed to start commands on other hosts$"):
        SSHLauncher(ssh="no-ssh-here")
    with pytest.raises(LauncherError, match=r"^ssh config file '/nonexistent/cfg' does not exist$"):
        SSHLauncher(config_file="/nonexistent/cfg")


def test_ssh_unknown_host_is_a_launcher_error(tmp_path):
    """A host name that does not resolve: ssh fails, the error names the
    node and carries ssh's own message."""
    import shutil
    if shutil.which("ssh") is None:
        pytest.skip("the ssh client (openssh-client) is not installed")
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n")
    node = NodeSpec(1, "no-such-host.invalid", "no-such-host.invalid")
    with SSHLauncher(config_file=str(cfg)) as launcher:
        with pytest.raises(LauncherError, match=r"^cannot start 'true' on node 1 "
                           r"\(no-such-host.invalid\) with ssh: the ssh launch ended \(exit status "
                           r"255\); stderr: .*no-such-host.invalid") as ei:
            launcher.start(node, ["true"])
    assert "Could not resolve hostname" in ei.value.stderr or "not known" in ei.value.stderr


def test_ssh_command_line_quotes():
    launcher = SSHLauncher(ssh_options=("-p", "2222"))
    cmd, env = launcher._command_line(NodeSpec(0, "h", "h"), ["/py", "-c", "print('a b')"],
                                      {"K": "v w"})
    assert env is None
    assert cmd[-3:] == ["--", "h", "exec env 'K=v w' /py -c 'print('\"'\"'a b'\"'\"')'"]
    # the caller's options, then the cheaper set-up (ssh keeps the first
    # value of an option: the caller's win)
    fast = list(SSHLauncher.FAST_OPTIONS)
    assert cmd[-3 - len(fast):-3] == fast
    assert cmd[-5 - len(fast):-3 - len(fast)] == ["-p", "2222"]
    assert any(o.startswith("KexAlgorithms=curve25519-sha256,") for o in fast)


def test_cluster_stop_waits_for_its_ready_pipe_reader():
    """The launcher's thread that drains the head agent's ready pipe after
    bring-up (loss reports) is done before stop() closes that pipe: a report
    arriving at teardown raised TypeError in it ('NoneType' object cannot be
    interpreted as an integer: it read self.ready_r, set to None by stop())
    and could read a reused fd number."""
    import threading
    from ember.launcher.multinode import Cluster
    errors = []
    hook, threading.excepthook = threading.excepthook, errors.append
    try:
        c = Cluster(None, None, [])
        r, w = os.pipe()
        c.ready_r = r
        c._start_drain()
        drainer = c._drainer
        os.write(w, b"lost 1 before the stop\n")     # read and dropped
        c.stop(timeout=0)
        assert c.ready_r is None and c._drainer is None
        try:
            os.write(w, b"lost 1 at the stop\n")     # nobody reads it now
        except BrokenPipeError:
            pass
        os.close(w)
        # its end (stop() joined it; one stop() left running would read on,
        # and raise, before it ends): not a sleep a loaded machine outlasts
        drainer.join(60)
        assert not drainer.is_alive()
    finally:
        threading.excepthook = hook
    assert errors == []
