"""One ember runtime across emulated nodes (tests/mn_cluster.py: each node
in its own network, mount, UTS, pid and IPC namespaces, with a private
/dev/shm, a real sshd, and for the Slurm path a real slurmctld/slurmd).

``ember run`` runs inside node 0 (where the nodes' network is); the test
looks into every node from outside (its processes, its /dev/shm, its
traffic).  Skips, saying why, where namespaces, sshd, Slurm or tcpdump are
not available (see docs/multinode-testing.md)."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest.importorskip("zmq")

pytestmark = pytest.mark.timeout(240)

PRELUDE = """\
import os, sys, time, socket
from ember.globalservices import process, channel
from ember.descriptors import ProcessOptions, ChannelOptions
from ember.channels_c import Channel
from ember.exceptions import ProcessError, ChannelError
PY = sys.executable
def say(*a):
    print(*a, flush=True)
"""

# A pipeline whose stages run on three nodes: node 0 feeds "s1" (on node
# 1), a stage on node 1 doubles into "s2" (on node 2), a stage on node 2
# adds one into "out" (node 0); the stages find their channels by name.
PIPELINE = """
N = 200
s1 = channel.create(None, "s1", ChannelOptions(node=1, capacity=256))
s2 = channel.create(None, "s2", ChannelOptions(node=2, capacity=256))
out = channel.create(None, "out", ChannelOptions(capacity=256))
stage = '''
import os, socket, sys
from ember.globalservices import channel
from ember.channels_c import Channel
src = Channel.attach(channel.join(sys.argv[1], timeout=30))
dst = Channel.attach(channel.join(sys.argv[2], timeout=30))
op = sys.argv[3]
print("stage", sys.argv[1], "on node", os.environ["EMBER_NODE"], socket.gethostname(), flush=True)
while True:
    m = src.recv(timeout=60)
    if m == b"end":
        dst.send(m)
        break
    v = int(m)
    dst.send(str(v * 2 if op == "double" else v + 1).encode())
if hasattr(dst, "flush"):
    dst.flush(timeout=30)
'''
p1 = process.create(PY, ".", ["-c", stage, "s1", "s2", "double"], options={"node": 1})
p2 = process.create(PY, ".", ["-c", stage, "s2", "out", "inc"], options=ProcessOptions(node=2))
say("placed", p1.location.node, p2.location.node)
feed = Channel.attach(s1)
for i in range(N):
    feed.send(str(i).encode())
feed.send(b"end")
sink = Channel.attach(out)
got = []
while True:
    m = sink.recv(timeout=60)
    if m == b"end":
        break
    got.append(int(m))
say("pipeline", got == [2 * i + 1 for i in range(N)])
say("joins", process.multi_join([p1.p_uid, p2.p_uid], join_all=True, timeout=60)[0])
say("nodes", sorted({process.query(p).node for p, _ in process.get_list()}))
"""


def _prog(c, body, name="prog.py"):
    path = c.path(name)
    with open(path, "w") as f:
        f.write(PRELUDE + textwrap.dedent(body))
    return path


def _ember_run(c, prog, *flags, slurm=False, timeout=180):
    argv = [sys.executable, "-m", "ember", "run", *flags, prog]
    if slurm:
        argv = ["salloc", "-N", str(len(c.nodes)), "--quiet"] + argv
    return c.run(0, argv, timeout=timeout, cwd=c.path())


def _nothing_left(c):
    """No ember process and no ember segment on any node."""
    for i in range(len(c.nodes)):
        assert c.wait_no_process(i, "ember") == [], f"node {i}"
        assert c.wait_no_process(i, "-c import") == [], f"node {i}"
        r = c.run(i, ["ls", "/dev/shm"])
        left = [n for n in r.stdout.split() if n.startswith("ember.")]
        assert left == [], f"node {i}: {left}"


@pytest.fixture
def cluster3(request):
    from mn_cluster import ClusterUnavailable, emulated_nodes, unavailable
    kw = getattr(request, "param", {"sshd": True})
    try:
        with emulated_nodes(3, **kw) as c:
            yield c
    except ClusterUnavailable as exc:
        unavailable(exc)


def test_pipeline_on_three_nodes_over_ssh(cluster3):
    """The spec API across real nodes over ssh: placement, a remote
    process's channel.join by name, channels on each node, output labelled
    with the node; teardown leaves nothing on any node."""
    c = cluster3
    prog = _prog(c, PIPELINE)
    r = _ember_run(c, prog, "--hosts", c.hosts, "--label-output")
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    assert "placed 1 2" in lines
    assert "pipeline True" in lines
    assert "joins [(2, 0), (3, 0)]" in lines or any(l.startswith("joins [(") for l in lines)
    assert "nodes [0, 1, 2]" in lines
    assert f"[node 1] stage s1 on node 1 {c.nodes[1].name}" in lines
    assert f"[node 2] stage s2 on node 2 {c.nodes[2].name}" in lines
    _nothing_left(c)


@pytest.mark.slow
@pytest.mark.parametrize("cluster3", [{"slurm": True}], indirect=True)
def test_pipeline_under_slurm(cluster3):
    """Inside a Slurm allocation of three nodes, ``ember run`` starts the
    other nodes with srun by itself."""
    c = cluster3
    prog = _prog(c, PIPELINE)
    r = _ember_run(c, prog, slurm=True)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "pipeline True" in r.stdout.splitlines()
    assert "nodes [0, 1, 2]" in r.stdout.splitlines()
    _nothing_left(c)


LOSS = """
a = process.create(PY, ".", ["-c", "import time; time.sleep(120)"], options={"node": 1})
b = process.create(PY, ".", ["-c", "import time; time.sleep(120)"], options={"node": 2})
on2 = Channel.attach(channel.create(None, "on2", ChannelOptions(node=2)))
say("ready")
say("a", process.join(a.p_uid, timeout=60), process.query(a.p_uid).state)
say("b", process.join(b.p_uid, timeout=60), process.query(b.p_uid).state)
try:
    on2.recv(timeout=10)
except ChannelError as e:
    say("on2 raises")
d = process.create(PY, ".", ["-c", "print('still here', flush=True)"])
say("after", process.join(d.p_uid, timeout=30))
"""


@pytest.mark.slow
def test_node_loss_shepherd_then_whole_node(cluster3):
    """Node 1 loses its shepherd, node 2 dies whole (its namespaces): their
    processes are reported lost (255), the runtime goes on."""
    c = cluster3
    prog = _prog(c, LOSS)
    p = c.popen(0, [sys.executable, "-m", "ember", "run", "--hosts", c.hosts, prog],
                cwd=c.path(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert c.kill_processes(1, "ember: shepherd node 1")
        assert p.stdout.readline().split() == ["a", "255", "lost"]
        c.kill_node(2)
        assert p.stdout.readline().split() == ["b", "255", "lost"]
        rest = p.stdout.read()
        assert p.wait(60) == 0, (rest, p.stderr.read())
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert "on2 raises" in rest and "still here" in rest and "after 0" in rest
    err = p.stderr.read()
    assert "node 1" in err and "node 2" in err and "lost" in err
    for i in (0, 1):
        assert c.wait_no_process(i, "ember") == []


CAPTURE = """
import zmq, struct
d = channel.create(None, "secret", ChannelOptions(node=1))
h = Channel.attach(d)
for _ in range(20):
    h.send(b"PLAINTEXT-CANARY-" + b"x" * 40)
h.flush(timeout=30)
say("got", h.recv(timeout=10)[:16])
agents = dict(i.split("=", 1) for i in os.environ["EMBER_MN_AGENTS"].split(";"))
pub, sec = os.environ["EMBER_MN_KEY"].split(",")
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER); s.linger = 0
s.curve_serverkey = pub.encode()
s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
s.connect(agents["1"])
s.send_multipart([struct.pack("<cQI", b"a", d.c_uid, 1), d.sdesc])
say("wrong key answered", bool(s.poll(3000)))
s.close(); ctx.term()
"""


@pytest.mark.slow
def test_traffic_is_encrypted_and_a_wrong_key_refused(cluster3):
    """tcpdump on node 1's veth sees the channel traffic but never the
    known payload in plaintext; a client with another key gets nothing."""
    c = cluster3
    prog = _prog(c, CAPTURE)
    with c.capture(1, filter_expr="tcp") as cap:
        r = _ember_run(c, prog, "--hosts", c.hosts)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "got b'PLAINTEXT-CANARY'" in r.stdout
    assert "wrong key answered False" in r.stdout
    assert len(cap["data"]) > 4000              # the traffic was captured
    assert b"PLAINTEXT-CANARY" not in cap["data"]
    assert b"ShSpawn" not in cap["data"] and b"python" not in cap["data"]


HOLD = """
ps = [process.create(PY, ".", ["-c", "import time; time.sleep(300)"], options={"node": i})
      for i in range(3)]
say("ready")
time.sleep(300)
"""


@pytest.mark.slow
def test_sigkill_of_the_launcher_leaves_nothing_on_any_node(cluster3):
    c = cluster3
    prog = _prog(c, HOLD)
    p = c.popen(0, [sys.executable, "-m", "ember", "run", "--hosts", c.hosts, prog],
                cwd=c.path(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        (launcher,) = c.find(0, "ember: launcher")
        os.kill(launcher.pid, signal.SIGKILL)
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    for i in range(3):
        assert c.wait_no_process(i, "sleep(300)", timeout=30) == [], f"node {i}"
        assert c.wait_no_process(i, "ember", timeout=30) == [], f"node {i}"
    # what the killed launcher could not unlink on node 0 is `ember cleanup`'s;
    # the other nodes unlinked their own
    for i in (1, 2):
        r = c.run(i, ["ls", "/dev/shm"])
        assert [n for n in r.stdout.split() if n.startswith("ember.")] == [], f"node {i}"


@pytest.mark.slow
def test_a_killed_node_agent_leaves_what_ember_cleanup_there_removes(cluster3):
    """kill -9 of node 1's agent: its segments (the shepherd's output board,
    named by the runtime id, included: the node holds that id's lock there)
    stay, and `ember cleanup` on node 1 removes them all."""
    c = cluster3
    prog = _prog(c, HOLD)
    p = c.popen(0, [sys.executable, "-m", "ember", "run", "--hosts", c.hosts, prog],
                cwd=c.path(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        r = c.run(1, ["ls", "/dev/shm"])
        live = [n for n in r.stdout.split() if n.startswith("ember.")]
        (board,) = [n for n in live if n.endswith(".output")]
        # the runtime id's lock, held by the node: not its id's pid, which
        # names a process of node 0 (any process here may have that pid)
        assert board[:-len("output")] + "lock" in live, live
        cleaned = c.run(1, [sys.executable, "-m", "ember", "cleanup"])
        assert "removed" not in cleaned.stdout, cleaned.stdout      # the node lives
        (agent,) = c.find(1, "ember: node 1 agent")
        os.kill(agent.pid, signal.SIGKILL)
        assert c.wait_no_process(1, "ember", timeout=30) == []
        r = c.run(1, ["ls", "/dev/shm"])
        assert any(n.endswith(".output") for n in r.stdout.split()), r.stdout
        cleaned = c.run(1, [sys.executable, "-m", "ember", "cleanup"])
        assert cleaned.returncode == 0, cleaned.stderr
        r = c.run(1, ["ls", "/dev/shm"])
        assert [n for n in r.stdout.split() if n.startswith("ember.")] == [], cleaned.stdout
    finally:
        for launcher in c.find(0, "ember: launcher"):     # the run goes on without node 1
            os.kill(launcher.pid, signal.SIGTERM)
        try:
            p.wait(60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
