"""The emulated cluster itself (tests/mn_cluster.py): nodes are isolated
from each other and from the host, reach each other over the bridge, and
leave nothing behind, also when the test process is SIGKILLed."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mn_cluster import Cluster, ClusterUnavailable, emulated_nodes, unavailable
from procs import alive, wait_gone

pytestmark = pytest.mark.timeout(120)
HERE = os.path.dirname(os.path.abspath(__file__))


def test_hostnames_differ(emulated_cluster):
    c = emulated_cluster
    names = [c.run(i, ["hostname"], check=True).stdout.strip() for i in range(3)]
    assert names == [nd.name for nd in c.nodes]
    assert len(set(names)) == 3 and os.uname().nodename not in names


def test_private_dev_shm_tmp_run(emulated_cluster):
    c = emulated_cluster
    name = f"emn-test-{os.getpid()}-{time.monotonic_ns()}"
    for d in ("/dev/shm", "/tmp", "/run"):
        c.run(0, ["sh", "-c", f"echo x > {d}/{name}"], check=True)
        assert c.run(0, ["cat", f"{d}/{name}"]).stdout == "x\n"
        assert c.run(1, ["test", "-e", f"{d}/{name}"]).returncode == 1
        assert not os.path.exists(f"{d}/{name}")
    # POSIX shared memory made the ordinary way stays in its node.
    code = ("from multiprocessing import shared_memory as s, resource_tracker as r\n"
            f"m = s.SharedMemory(name={name!r} + 'seg', create=True, size=4096)\n"
            "r.unregister(m._name, 'shared_memory'); m.close()\n")
    assert c.python(2, code).returncode == 0
    assert c.run(2, ["test", "-e", f"/dev/shm/{name}seg"]).returncode == 0
    assert c.run(1, ["test", "-e", f"/dev/shm/{name}seg"]).returncode == 1
    assert not os.path.exists(f"/dev/shm/{name}seg")
    assert f"{name}seg" in c.shm(2) and f"{name}seg" not in c.shm(1)


def test_pytest_tmp_path_is_shared(emulated_cluster, tmp_path):
    """tmp_path is the same directory in every node (a shared file system)."""
    c = emulated_cluster
    (tmp_path / "from-host").write_text("h")
    c.run(1, ["sh", "-c", "cat from-host > from-node1"], cwd=str(tmp_path), check=True)
    assert (tmp_path / "from-node1").read_text() == "h"
    assert c.run(2, ["cat", str(tmp_path / "from-node1")]).stdout == "h"


def test_the_checkout_and_venv_are_visible(emulated_cluster):
    r = emulated_cluster.python(1, "import ember, sys; print(ember.__file__); print(sys.prefix)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [__import__("ember").__file__, sys.prefix]


def test_own_pid_namespace(emulated_cluster):
    c = emulated_cluster
    r = c.python(1, "import os; print(os.getpid(), sorted(int(p) for p in os.listdir('/proc') "
                 "if p.isdigit()))")
    pid, pids = r.stdout.split(" ", 1)
    pids = json.loads(pids)
    assert pids[0] == 1 and int(pid) in pids and len(pids) <= 4   # init, nsenter'd python
    assert [p.nspid for p in c.processes(1)] == []                # it is gone already


def test_nodes_reach_each_other(emulated_cluster):
    """TCP from node 0 and node 2 to a server on node 1, by host name."""
    c = emulated_cluster
    server = c.popen(1, [sys.executable, "-c",
                         "import socket\n"
                         f"s = socket.create_server(({c.nodes[1].addr!r}, 5000))\n"
                         "print('up', flush=True)\n"
                         "for _ in range(2):\n"
                         "    a, peer = s.accept(); a.sendall(f'hi {peer[0]}'.encode()); a.close()\n"],
                     stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline() == "up\n"
        for i in (0, 2):
            r = c.python(i, "import socket\n"
                            f"s = socket.create_connection(({c.nodes[1].name!r}, 5000), 10)\n"
                            "print(s.recv(100).decode())\n")
            assert r.stdout == f"hi {c.nodes[i].addr}\n", r.stderr
        assert server.wait(30) == 0
    finally:
        server.kill()
        server.wait()
        server.stdout.close()


def test_host_does_not_see_the_nodes_network(emulated_cluster):
    c = emulated_cluster
    here = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    prefix = c.subnet.rsplit(".", 1)[0] + "."
    assert prefix not in here
    assert not [x for x in os.listdir("/sys/class/net") if x.startswith(f"e{c.tag}")]
    r = c.run(0, ["ls", "/sys/class/net"])
    assert r.stdout.split() == ["eth0", "lo"]


def test_capture_sees_the_traffic(emulated_cluster):
    c = emulated_cluster
    payload = f"emn-plaintext-{os.getpid()}"
    with c.capture(1, filter_expr="tcp port 5001") as cap:
        server = c.popen(1, [sys.executable, "-c",
                             "import socket\n"
                             f"s = socket.create_server(({c.nodes[1].addr!r}, 5001))\n"
                             "print('up', flush=True)\n"
                             "a, _ = s.accept(); a.recv(100); a.close()\n"],
                         stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline() == "up\n"
            r = c.python(0, "import socket\n"
                            f"s = socket.create_connection(({c.nodes[1].addr!r}, 5001), 10)\n"
                            f"s.sendall({payload!r}.encode()); s.close()\n")
            assert r.returncode == 0, r.stderr
            assert server.wait(30) == 0
        finally:
            server.kill()
            server.wait()
            server.stdout.close()
    assert payload.encode() in cap["data"]


def test_processes_find_and_kill(emulated_cluster):
    c = emulated_cluster
    p = c.popen(2, ["sleep", "313"])
    try:
        # nsenter's child inside the node carries "sleep 313" in its own
        # command line until it execs: wait for the exec'd sleep alone.
        deadline = time.monotonic() + 60         # (not stuck: a start in the node under load)
        while ([p.cmdline for p in c.find(2, "sleep 313")] != [["sleep", "313"]]
               and time.monotonic() < deadline):
            time.sleep(0.02)
        (found,) = c.find(2, "sleep 313")
        assert found.nspid != found.pid and found.cmdline == ["sleep", "313"]
        assert c.find(1, "sleep 313") == []
        # the same process (its state, R or S, may change between the looks)
        assert [(k.pid, k.nspid, k.ppid, k.cmdline) for k in c.kill_processes(2, "sleep 313")] \
            == [(found.pid, found.nspid, found.ppid, found.cmdline)]
        assert p.wait(10) != 0
        assert c.wait_no_process(2, "sleep 313") == []
    finally:
        p.kill()
        p.wait()


def test_kill_node(emulated_cluster):
    c = emulated_cluster
    p = c.popen(1, ["sleep", "314"])
    try:
        c.kill_node(1)
        assert p.wait(10) != 0
        assert c.run(0, ["true"]).returncode == 0       # the others go on
    finally:
        p.kill()
        p.wait()


def test_nothing_left_after_teardown():
    """Daemonized processes, mounts, veths: all gone when the block ends."""
    try:
        cm = emulated_nodes(2)
        c = cm.__enter__()
    except ClusterUnavailable as e:
        unavailable(e)
    try:
        for i in range(2):
            c.run(i, ["sh", "-c", "setsid sleep 315 >/dev/null 2>&1 < /dev/null &"], check=True)
        pids = [p.pid for i in range(2) for p in c.find(i, "sleep 315")]
        assert len(pids) == 2
        nodes = list(c.nodes)
    finally:
        cm.__exit__(None, None, None)      # raises ClusterLeak if anything is left
    for pid in pids:
        assert not alive(pid)
    assert c.leftovers(timeout=0) == []
    assert all(nd.holder.returncode == -signal.SIGKILL for nd in nodes)


def test_killed_test_process_leaves_nothing():
    """SIGKILL the process that built the cluster: every node dies with it."""
    prog = (f"import sys, time; sys.path.insert(0, {HERE!r})\n"
            "from mn_cluster import emulated_nodes\n"
            "with emulated_nodes(2) as c:\n"
            "    for i in range(2):\n"
            "        c.run(i, ['sh', '-c', 'setsid sleep 316 >/dev/null 2>&1 </dev/null &'])\n"
            "    pids = [p.pid for i in range(2) for p in c.find(i, 'sleep 316')]\n"
            "    print(' '.join(map(str, pids + [nd.pid for nd in c.nodes])), c.dir, flush=True)\n"
            "    time.sleep(300)\n")
    p = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    cdir = None
    try:
        line = p.stdout.readline().split()
        if not line:
            err = p.stderr.read()
            if "ClusterUnavailable" in err:
                unavailable(err.strip().splitlines()[-1])
            pytest.fail(f"the cluster did not come up: {err}")
        *pids, cdir = line
        pids = [int(x) for x in pids]
        assert len(pids) == 4
        p.kill()
        p.wait(30)
        assert wait_gone(pids, timeout=15) == []
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()
        if cdir:
            shutil.rmtree(cdir, ignore_errors=True)


def test_bad_node_count():
    with pytest.raises(ValueError, match=r"^the number of nodes must be an int in 1\.\.200, not 0$"):
        Cluster(0)


def test_unavailable_reasons_are_exact(monkeypatch, tmp_path_factory):
    """Not root, or a tool missing: the reason names the exact thing, and
    the fixtures turn it into a skip with that reason (never silently), or
    into a failure with it where the cluster is required (CI as root:
    EMBER_TEST_CLUSTER=required, set by .ci/run)."""
    import mn_cluster
    from mn_cluster import ClusterUnavailable
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match=r"^emulated nodes need root \(to unshare network, "
                       r"mount, UTS and pid namespaces\); running as uid 1000$"):
        Cluster(3)
    monkeypatch.delenv("EMBER_TEST_CLUSTER", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^emulated cluster unavailable: emulated "
                       r"nodes need root"):
        with mn_cluster._fixture_cluster(3, tmp_path_factory):
            pass
    monkeypatch.setenv("EMBER_TEST_CLUSTER", "required")
    with pytest.raises(pytest.fail.Exception, match=r"^emulated cluster unavailable \(EMBER_TEST_"
                       r"CLUSTER=required\): emulated nodes need root"):
        with mn_cluster._fixture_cluster(3, tmp_path_factory):
            pass
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))
    with pytest.raises(ClusterUnavailable, match=r"^'nsenter' not found on PATH \(needed by the "
                       r"emulated nodes\)$"):
        Cluster(3)
