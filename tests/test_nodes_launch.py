"""ember.launcher.nodes on emulated nodes: SSH to a real sshd in each node,
srun in a real Slurm, and the nsenter launcher of the test cluster.

The SSH and Slurm launchers must run where the nodes' network is: a small
driver program runs inside node 0 (``cluster.python``), starts commands on
the other nodes and prints what it saw as JSON lines; the test, outside,
also looks straight into the nodes' process tables (``cluster.find``).
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(180)

HEADER = """\
import json, os, signal, subprocess, sys, time
from ember.exceptions import LauncherError
from ember.launcher.nodes import *
def out(**kw):
    print(json.dumps(kw), flush=True)
"""

# A process tree: a child in the command's group and one that escapes with
# setsid; prints the three pids (inside the node) and waits.
TREE = ["sh", "-c", "sleep 317 & echo $!; setsid sleep 318 & echo $!; echo $$; wait"]


def _drive(cluster, body, launcher, slurm=False, timeout=120):
    code = HEADER + f"L = {launcher}\n" + body
    argv = [sys.executable, "-c", code]
    if slurm:
        argv = ["salloc", "-N", str(len(cluster.nodes)), "--quiet"] + argv
    r = cluster.run(0, argv, timeout=timeout)
    assert r.returncode == 0, f"driver failed ({r.returncode}): {r.stdout}\n{r.stderr}"
    return [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]


def _sleeps(cluster, i, timeout=60.0):
    """The TREE's two sleeps on node i, once both are there (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [p for p in cluster.find(i, "sleep 31") if p.cmdline[:1] == ["sleep"]]
        if len(found) >= 2 or time.monotonic() > deadline:
            return found


def _no_tree_left(cluster, i):
    assert cluster.wait_no_process(i, "sleep 31") == []
    assert cluster.wait_no_process(i, "ember.launcher._watch") == []


RUN_BODY = """
n = NODES[{i}]
with L.start(n, ["sh", "-c", "hostname; echo $EMBER_T; head -n1; exit 7"], env={{"EMBER_T": "a 'b'"}}) as c:
    c.stdin.write(b"from stdin\\n")
    first = [c.stdout.readline().decode() for _ in range(3)]
    rest = c.stdout.read().decode()
    out(host=c.remote_host, lines=first, rest=rest, rc=c.wait(30))
"""

EOF_BODY = """
n = NODES[{i}]
c = L.start(n, {tree!r})
pids = [int(c.stdout.readline()) for _ in range(3)]
out(pids=pids)
time.sleep(0.3)
{how}
out(rc=c.wait(30))
c.close()
"""


def _check_run(cluster, launcher, nodes_expr, slurm=False):
    for i in (1, 2):
        (res,) = _drive(cluster, f"NODES = {nodes_expr}\n" + RUN_BODY.format(i=i), launcher,
                        slurm=slurm)
        assert res["host"] == cluster.nodes[i].name
        assert res["lines"] == [f"{cluster.nodes[i].name}\n", "a 'b'\n", "from stdin\n"]
        assert res["rest"] == "" and res["rc"] == 7


def _check_shutdown(cluster, launcher, nodes_expr, how, expect_rc, slurm=False):
    body = f"NODES = {nodes_expr}\n" + EOF_BODY.format(i=1, tree=TREE, how=how)
    res = _drive(cluster, body, launcher, slurm=slurm)
    assert len(res[0]["pids"]) == 3
    assert res[1]["rc"] in expect_rc
    _no_tree_left(cluster, 1)


# -- nsenter (the test cluster's own launcher) --------------------------------

def test_namespace_launcher(emulated_cluster):
    c = emulated_cluster
    with c.launcher(grace=0.5) as launcher:
        for nd in c.nodes:
            with launcher.start(nd.spec(), ["hostname"]) as cmd:
                assert cmd.stdout.read() == f"{nd.name}\n".encode()
                assert cmd.wait(30) == 0
        cmd = launcher.start(c.nodes[2].spec(), TREE)
        pids = [int(cmd.stdout.readline()) for _ in range(3)]
        assert len(_sleeps(c, 2)) == 2 and max(pids) < 100     # node-local pids
        cmd.close_stdin()
        assert cmd.wait(30) == 128 + signal.SIGTERM
        cmd.close()
        _no_tree_left(c, 2)


# -- SSH --------------------------------------------------------------------

def _ssh(cluster, plain=False):
    if plain:      # the node's /etc/ssh/ssh_config: what `ember run --hosts` would use
        return "SSHLauncher(grace=0.5)"
    return f"SSHLauncher(config_file={cluster.ssh_config!r}, grace=0.5)"


def test_ssh_run_stdout_exit_code(ssh_cluster):
    _check_run(ssh_cluster, _ssh(ssh_cluster), f"parse_hosts({ssh_cluster.hosts!r})")


def test_ssh_plain_config_and_detect(ssh_cluster):
    c = ssh_cluster
    body = (f"L, nodes = detect({c.hosts!r}, grace=0.5)\n"
            "out(name=L.name, nodes=[n.name for n in nodes])\n"
            "with L.start(nodes[2], ['hostname']) as cmd:\n"
            "    out(host=cmd.stdout.read().decode().strip(), rc=cmd.wait(30))\n")
    res = _drive(c, body, "None")
    assert res == [{"name": "ssh", "nodes": [nd.name for nd in c.nodes]},
                   {"host": c.nodes[2].name, "rc": 0}]


def test_ssh_stdin_eof_kills_the_remote_group(ssh_cluster):
    _check_shutdown(ssh_cluster, _ssh(ssh_cluster), f"parse_hosts({ssh_cluster.hosts!r})",
                    "c.close_stdin()", [128 + signal.SIGTERM])


def test_ssh_sigkill_of_local_ssh_leaves_nothing(ssh_cluster):
    # kill() SIGKILLs the ssh client: the connection drops, the watchdog on
    # the node sees EOF and kills the group.
    _check_shutdown(ssh_cluster, _ssh(ssh_cluster), f"parse_hosts({ssh_cluster.hosts!r})",
                    "c.kill()", [-signal.SIGKILL])


def test_ssh_launcher_process_sigkilled_leaves_nothing(ssh_cluster):
    """SIGKILL of the whole launching program (not only its ssh)."""
    c = ssh_cluster
    marker = f"emn-driver-{os.getpid()}-{time.monotonic_ns()}"
    code = (HEADER + f"L = {_ssh(c)}\n"
            f"c = L.start(parse_hosts({c.hosts!r})[1], {TREE!r})\n"
            "pids = [int(c.stdout.readline()) for _ in range(3)]\n"
            "out(pids=pids)\n"
            "time.sleep(300)\n")
    p = c.popen(0, [sys.executable, "-c", code, marker], stdout=subprocess.PIPE, text=True)
    try:
        assert len(json.loads(p.stdout.readline())["pids"]) == 3
        assert len(_sleeps(c, 1)) == 2
        (driver,) = c.find(0, marker)
        os.kill(driver.pid, signal.SIGKILL)
        p.wait(30)
        _no_tree_left(c, 1)
        assert c.wait_no_process(0, "ssh ") == []     # the ssh client ended too
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def test_ssh_errors(ssh_cluster):
    c = ssh_cluster
    c.kill_processes(2, "sshd")
    assert c.wait_no_process(2, "sshd") == []
    body = (f"nodes = parse_hosts({c.hosts!r})\n"
            "for n in (nodes[2], NodeSpec(3, 'no-such-node', 'no-such-node')):\n"
            "    try:\n"
            "        L.start(n, ['true'])\n"
            "        out(error=None)\n"
            "    except LauncherError as e:\n"
            "        out(error=str(e), node=e.node.index)\n")
    refused, unknown = _drive(c, body, _ssh(c))
    assert refused["node"] == 2 and refused["error"].startswith(
        f"cannot start 'true' on node 2 ({c.nodes[2].name}) with ssh: the ssh launch ended "
        "(exit status 255); stderr: ssh: connect to host")
    assert refused["error"].endswith("port 22: Connection refused")
    assert unknown["node"] == 3 and unknown["error"].startswith(
        "cannot start 'true' on node 3 (no-such-node) with ssh: the ssh launch ended (exit "
        "status 255); stderr: ssh: Could not resolve hostname no-such-node")


# -- Slurm --------------------------------------------------------------------

SLURM = "SlurmLauncher(grace=0.5)"


def test_slurm_run_and_errors(slurm_cluster):
    c = slurm_cluster
    _check_run(c, SLURM, "slurm_nodes()", slurm=True)
    body = ("out(nodes=[n.name for n in slurm_nodes()], name=L.name)\n"
            "try:\n"
            "    L.start(NodeSpec(3, 'no-such-node', 'no-such-node'), ['true'])\n"
            "except LauncherError as e:\n"
            "    out(error=str(e))\n")
    res = _drive(c, body, SLURM, slurm=True)
    assert res[0] == {"nodes": [nd.name for nd in c.nodes], "name": "slurm"}
    assert res[1]["error"].startswith("cannot start 'true' on node 3 (no-such-node) with slurm: "
                                      "the slurm launch ended (exit status 1); stderr: srun: ")
    # Outside an allocation, in a node where Slurm works:
    r = c.python(0, HEADER + "try:\n    SlurmLauncher()\nexcept LauncherError as e:\n"
                 "    print(e)\n")
    assert r.stdout.startswith("not inside a Slurm allocation (SLURM_JOB_ID is not set)")


def test_slurm_stdin_eof_and_sigkill_leave_nothing(slurm_cluster):
    c = slurm_cluster
    _check_shutdown(c, SLURM, "slurm_nodes()", "c.close_stdin()", [128 + signal.SIGTERM],
                    slurm=True)
    # SIGKILL of the local srun: Slurm's step teardown, and the watchdog's
    # EOF, leave nothing.
    _check_shutdown(c, SLURM, "slurm_nodes()", "c.kill()", [-signal.SIGKILL], slurm=True)
