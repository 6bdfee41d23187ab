"""Several nodes on this machine: ``ember run --hosts local:N`` starts N-1
node processes here (each with its own pools, shepherd and transport agent,
talking to the head over CURVE-encrypted ZeroMQ on 127.0.0.1).  The same
runtime across real, separate nodes (Linux namespaces, sshd, Slurm) is
tests/test_multinode_cluster.py."""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("zmq")

from test_runtime import assert_lines  # noqa: E402

PRELUDE = f"""\
import os, sys, textwrap, time
from ember.globalservices import process, channel
from ember.descriptors import ProcessOptions, ChannelOptions
from ember.channels_c import Channel
from ember.exceptions import ProcessError, ChannelError
sys.path.append({os.path.dirname(os.path.abspath(__file__))!r})     # tests/procs.py
from procs import stat
PY = sys.executable
"""


def run_prog(tmp_path, body, hosts="local:3", extra=(), timeout=90):
    prog = tmp_path / "prog.py"
    prog.write_text(PRELUDE + textwrap.dedent(body))
    return subprocess.run([sys.executable, "-m", "ember", "run", "--hosts", hosts, *extra,
                           str(prog)], cwd=tmp_path, capture_output=True, timeout=timeout)


def ok(res):
    out = res.stdout.decode()
    assert res.returncode == 0, (res.returncode, out, res.stderr.decode())
    return out


@pytest.mark.timeout(120)
def test_processes_across_nodes(tmp_path):
    """create (node=N, "any"), query (location), list, join, multi_join,
    kill, bad placements; the head of a remote process creates one of its
    own (its default placement is its own node)."""
    out = ok(run_prog(tmp_path, """
        child = "import os; print('on node', os.environ['EMBER_NODE'], flush=True); raise SystemExit(int(os.environ['EMBER_NODE']) + 3)"
        d1 = process.create(PY, ".", ["-c", child], options=ProcessOptions(node=1))
        d2 = process.create(PY, ".", ["-c", child], options={"node": 2}, user_name="two")
        print("loc", d1.location.node, d2.location.node, d2.name)
        print("join", process.join(d1.p_uid, timeout=30), process.join("two", timeout=30))
        print("query", process.query(d1.p_uid).state, process.query(d1.p_uid).retval)
        sleeper = process.create(PY, ".", ["-c", "import time; time.sleep(60)"],
                                 options=ProcessOptions(node="any"))
        print("any", sleeper.node != 0)
        print("alive", sleeper.p_uid in [p for p, n in process.get_list(alive_only=True)])
        process.kill(sleeper.p_uid, 9)
        print("killed", process.multi_join([sleeper.p_uid], timeout=30)[0])
        for bad in (7, -1, "x"):
            try:
                process.create(PY, ".", ["-c", "pass"], options={"node": bad})
            except ProcessError as e:
                print("bad", bad, e)
        nested = '''
        import os, sys
        from ember.globalservices import process
        d = process.create(sys.executable, ".", ["-c", "pass"])
        print("nested on", d.node, "from", os.environ["EMBER_NODE"], "exit", process.join(d.p_uid, timeout=30), flush=True)
        '''
        d3 = process.create(PY, ".", ["-c", nested], options=ProcessOptions(node=2))
        print("nested exit", process.join(d3.p_uid, timeout=30))
    """))
    lines = out.splitlines()
    assert "loc 1 2 two" in lines
    assert "join 4 5" in lines
    assert "query exited 4" in lines
    assert "any True" in lines and "alive True" in lines
    assert any(l.startswith("killed [(") and l.endswith(", -9)]") for l in lines), lines
    assert "bad 7 no node 7 in this runtime (nodes: 0, 1, 2)" in lines
    assert any(l.startswith("bad -1 ProcessOptions.node must be") for l in lines)
    assert any(l.startswith("bad x ProcessOptions.node must be") for l in lines)
    assert "nested on 2 from 2 exit 0" in lines and "nested exit 0" in lines
    assert sorted(l for l in lines if l.startswith("on node")) == ["on node 1", "on node 2"]


@pytest.mark.timeout(120)
def test_channels_across_nodes_and_join_by_name(tmp_path):
    """A channel on node 1 used from the head (remote handle: send, recv,
    a 1 MiB message, flush, timeouts) and a process on node 2 that joins a
    channel of the head's node by name and answers through it."""
    out = ok(run_prog(tmp_path, """
        work = channel.create(None, "work", ChannelOptions(node=1, capacity=2048))
        print("desc node", work.node)
        h = Channel.attach(work)
        print(type(h).__name__)
        for i in range(1000):
            h.send(b"%d" % i)
        big = os.urandom(1 << 20)
        h.send(big)
        print("flushed", h.flush(timeout=30))
        got = [h.recv(timeout=10) for _ in range(1000)]
        print("order", got == [b"%d" % i for i in range(1000)])
        print("big", h.recv(timeout=10) == big)
        try:
            h.recv(timeout=0.1)
        except ChannelError as e:
            print("empty", type(e).__name__)
        answer = channel.create(None, "answers")        # node 0
        code = '''
        from ember.globalservices import channel
        from ember.channels_c import Channel
        import os
        a = Channel.attach(channel.join("answers", timeout=30))
        w = Channel.attach(channel.join("work", timeout=30))
        a.send(b"from node " + os.environ["EMBER_NODE"].encode() + b": " + w.recv(timeout=30))
        a.flush()
        '''
        p = process.create(PY, ".", ["-c", code], options=ProcessOptions(node=2))
        h.send(b"ping")
        print(Channel.attach(answer).recv(timeout=30))
        print("exit", process.join(p.p_uid, timeout=30))
        channel.destroy("work")         # answered before node 1's shepherd frees it
        try:
            for _ in range(100):
                h.send(b"x"); h.flush(timeout=10); time.sleep(0.1)
        except ChannelError as e:
            print("destroyed", isinstance(e, ChannelError))
    """))
    lines = out.splitlines()
    assert lines[:2] == ["desc node 1", "RemoteChannel"]
    assert "flushed True" in lines and "order True" in lines and "big True" in lines
    assert "empty ChannelEmpty" in lines
    assert "b'from node 2: ping'" in lines and "exit 0" in lines
    assert "destroyed True" in lines, lines


@pytest.mark.timeout(120)
def test_one_frame_sends_stay_in_step_and_a_failure_is_raised_without_flush(tmp_path):
    """The agent puts a one-frame send (OP_SENDF) into the channel before
    it asks the socket anything: a malformed one with a stray frame after it
    leaves its message in the channel, the frame dropped and the stream in
    step.  A failed send is raised by a later send without any flush (the
    handle reads the agent's reports after its sends)."""
    out = ok(run_prog(tmp_path, """
        from ember.transport.agent import SEND_HDR, OP_SENDF, LEN
        d = channel.create(None, "oneframe", ChannelOptions(node=1))
        h = Channel.attach(d)
        h.send(b"first")
        h._conn.sock.send_multipart([SEND_HDR.pack(OP_SENDF, h.c_uid) + LEN.pack(3) + b"abc",
                                     b"stray"])
        h.send(b"after")
        print("flushed", h.flush(timeout=30))
        print("got", [h.recv(timeout=10) for _ in range(3)])
        try:
            h.recv(timeout=0.2)
        except ChannelError as e:
            print("then", type(e).__name__)
        channel.destroy("oneframe")
        n = 0
        try:
            for n in range(3000):
                h.send(b"x")
                time.sleep(0.002)
            print("never raised")
        except ChannelError as e:
            print("raised by a send", isinstance(e, ChannelError), n > 0)
    """, hosts="local:2"))
    lines = out.splitlines()
    assert "flushed True" in lines
    assert "got [b'first', b'abc', b'after']" in lines, lines
    assert "then ChannelEmpty" in lines
    assert "raised by a send True True" in lines, lines


@pytest.mark.timeout(120)
def test_remote_streams_keep_order_under_back_pressure(tmp_path):
    """Small messages streamed (batched) into a small channel on node 1 read
    slowly there: batches stop at the full channel and resume in order;
    then 1 MiB messages, more than a window (64 MiB) of them, whose
    acknowledgements go by bytes: all arrive, in order, intact."""
    out = ok(run_prog(tmp_path, """
        N, NBIG = 5000, 80
        d = channel.create(None, "bp", ChannelOptions(node=1, capacity=16, block_size=128))
        res = channel.create(None, "res")
        reader = f'''
        import time
        from ember.globalservices import channel
        from ember.channels_c import Channel
        c = Channel.attach(channel.join("bp", timeout=30))
        r = Channel.attach(channel.join("res", timeout=30))
        got = []
        for i in range({N}):
            if i % 1000 == 0:
                time.sleep(0.05)
            got.append(c.recv(timeout=30))
        small = got == [b"%d" % i for i in range({N})]
        big = True
        for i in range({NBIG}):
            m = c.recv(timeout=30)
            big = big and len(m) == 1 << 20 and m == i.to_bytes(8, "little") * (1 << 17)
        r.send(b"small %r big %r" % (small, big))
        r.flush()
        '''
        p = process.create(PY, ".", ["-c", textwrap.dedent(reader)], options={"node": 1})
        h = Channel.attach(d)
        for i in range(N):
            h.send(b"%d" % i)
        for i in range(NBIG):
            h.send(i.to_bytes(8, "little") * (1 << 17))
        print("flushed", h.flush(timeout=60))
        print(Channel.attach(res).recv(timeout=60).decode())
        print("exit", process.join(p.p_uid, timeout=30))
    """, timeout=110))
    lines = out.splitlines()
    assert "flushed True" in lines and "small True big True" in lines and "exit 0" in lines, lines


@pytest.mark.timeout(120)
def test_remote_and_local_senders_mixed_and_a_receiver_killed_with_messages_in_flight(tmp_path):
    """A channel on node 1 fed by the head (isolated messages, one frame
    each, and a stream, batched) and by a process of node 1 at once: its
    reader there gets everything, each sender's messages in order.  Then a
    reader that takes a few and is SIGKILLed while the head goes on
    sending: every message it did not take is still in the channel, in
    order, for the next reader."""
    out = ok(run_prog(tmp_path, """
        N = 300
        d = channel.create(None, "mix", ChannelOptions(node=1, capacity=64, block_size=128))
        res = channel.create(None, "res")
        local = f'''
        from ember.globalservices import channel
        from ember.channels_c import Channel
        c = Channel.attach(channel.join("mix", timeout=30))
        for i in range({N}):
            c.send(b"L%d" % i, timeout=30)
        '''
        reader = f'''
        from ember.globalservices import channel
        from ember.channels_c import Channel
        c = Channel.attach(channel.join("mix", timeout=30))
        r = Channel.attach(channel.join("res", timeout=30))
        got = [c.recv(timeout=30) for _ in range(3 * {N})]
        ls = [m for m in got if m[:1] == b"L"]
        rs = [m for m in got if m[:1] == b"R"]
        r.send(b"L %r R %r" % (ls == [b"L%d" % i for i in range({N})],
                               rs == [b"R%d" % i for i in range(2 * {N})]))
        r.flush()
        '''
        h = Channel.attach(d)
        pr = process.create(PY, ".", ["-c", textwrap.dedent(reader)], options={"node": 1})
        pl = process.create(PY, ".", ["-c", textwrap.dedent(local)], options={"node": 1})
        for i in range(N):                  # isolated: one frame each
            h.send(b"R%d" % i)
            if i % 10 == 0:
                time.sleep(0.001)
        for i in range(N, 2 * N):           # a stream: batched
            h.send(b"R%d" % i)
        print("flushed", h.flush(timeout=60))
        print(Channel.attach(res).recv(timeout=60).decode())
        print("exits", process.join(pr.p_uid, timeout=30), process.join(pl.p_uid, timeout=30))

        # a reader killed with messages in flight
        taker = '''
        import time
        from ember.globalservices import channel
        from ember.channels_c import Channel
        c = Channel.attach(channel.join("mix", timeout=30))
        r = Channel.attach(channel.join("res", timeout=30))
        for _ in range(5):
            c.recv(timeout=30)
        r.send(b"took 5"); r.flush()
        time.sleep(60)
        '''
        pt = process.create(PY, ".", ["-c", textwrap.dedent(taker)], options={"node": 1})
        for i in range(20):
            h.send(b"K%d" % i)
        print(Channel.attach(res).recv(timeout=60).decode())
        for i in range(20, 40):
            h.send(b"K%d" % i)
        process.kill(pt.p_uid, 9)
        print("killed", process.join(pt.p_uid, timeout=30))
        for i in range(40, 50):
            h.send(b"K%d" % i)
        print("flushed", h.flush(timeout=60))
        rest = [h.recv(timeout=30) for _ in range(45)]
        print("rest in order", rest == [b"K%d" % i for i in range(5, 50)])
        try:
            h.recv(timeout=0.2)
        except ChannelError as e:
            print("then", type(e).__name__)
    """, timeout=110))
    lines = out.splitlines()
    assert lines.count("flushed True") == 2, lines
    assert "L True R True" in lines and "exits 0 0" in lines, lines
    assert "took 5" in lines and "killed -9" in lines, lines
    assert "rest in order True" in lines and "then ChannelEmpty" in lines, lines


@pytest.mark.timeout(120)
def test_node_loss_reports_processes_lost_and_goes_on(tmp_path):
    """Kill node 1's shepherd: its processes are reported lost (exit code
    255, state "lost"), its channels are gone, joins wake, the runtime goes
    on (node 2 still works)."""
    out = ok(run_prog(tmp_path, """
        import signal
        d = process.create(PY, ".", ["-c", "import time; time.sleep(60)"], options={"node": 1})
        ch = channel.create(None, "on1", ChannelOptions(node=1))
        h = Channel.attach(ch)
        h.send(b"x"); h.flush(timeout=10)
        # the shepherd of node 1: the parent of the sleeper
        sh = stat(d.os_pid)[1]
        os.kill(sh, signal.SIGKILL)
        print("join", process.join(d.p_uid, timeout=30))
        q = process.query(d.p_uid)
        print("state", q.state, q.retval, q.is_alive)
        try:
            channel.query("on1")
        except ChannelError as e:
            print("channel gone")
        try:
            h.recv(timeout=5)
        except ChannelError as e:
            print("handle raises", type(e).__name__)
        try:
            process.create(PY, ".", ["-c", "pass"], options={"node": 1})
        except ProcessError as e:
            print("create:", e)
        d2 = process.create(PY, ".", ["-c", "pass"], options={"node": 2})
        print("node 2", process.join(d2.p_uid, timeout=30))
    """))
    assert_lines(out, "join 255", "state lost 255 False", "channel gone",
                 "handle raises ChannelError",
                 "create: node 1 was lost: cannot start a process there", "node 2 0")


@pytest.mark.timeout(120)
def test_sender_node_loss_leaves_what_it_sent_in_the_channel(tmp_path):
    """A process of node 1 sends into a channel of the head's node; node 1
    is lost (its shepherd killed) after its sends were flushed: every
    message it sent is in the channel, in order, the channel works on
    (a local send, a sender on node 2)."""
    out = ok(run_prog(tmp_path, """
        import signal
        d = channel.create(None, "in0", ChannelOptions(capacity=256))
        sender = '''
        import time
        from ember.globalservices import channel
        from ember.channels_c import Channel
        c = Channel.attach(channel.join("in0", timeout=30))
        for i in range(100):
            c.send(b"S%d" % i)
            if i % 7 == 0:
                time.sleep(0.001)
        s = Channel.attach(channel.join("sig", timeout=30))
        s.send(b"flushed %r" % c.flush(timeout=30)); s.flush(timeout=30)
        time.sleep(60)
        '''
        sig = Channel.attach(channel.create(None, "sig"))
        p = process.create(PY, ".", ["-c", textwrap.dedent(sender)], options={"node": 1})
        print(sig.recv(timeout=60).decode())
        sh = stat(p.os_pid)[1]
        os.kill(sh, signal.SIGKILL)
        print("join", process.join(p.p_uid, timeout=30))
        h = Channel.attach(d)
        got = [h.recv(timeout=30) for _ in range(100)]
        print("order", got == [b"S%d" % i for i in range(100)])
        h.send(b"local")
        print("local", h.recv(timeout=10))
        other = '''
        from ember.globalservices import channel
        from ember.channels_c import Channel
        c = Channel.attach(channel.join("in0", timeout=30))
        c.send(b"from 2"); c.flush(timeout=30)
        '''
        p2 = process.create(PY, ".", ["-c", textwrap.dedent(other)], options={"node": 2})
        print("node 2", h.recv(timeout=30), process.join(p2.p_uid, timeout=30))
    """))
    lines = out.splitlines()
    assert "flushed True" in lines and "order True" in lines and "join 255" in lines, lines
    assert "local b'local'" in lines and "node 2 b'from 2' 0" in lines, lines


@pytest.mark.timeout(120)
def test_fail_fast_on_node_loss(tmp_path):
    res = run_prog(tmp_path, """
        import signal
        d = process.create(PY, ".", ["-c", "import time; time.sleep(60)"], options={"node": 1})
        sh = stat(d.os_pid)[1]
        os.kill(sh, signal.SIGKILL)
        time.sleep(30)
        print("not reached")
    """, extra=["--fail-fast-on-node-loss"])
    err = res.stderr.decode()
    assert res.returncode != 0 and b"not reached" not in res.stdout, (res.returncode, err)
    assert "node 1" in err and "lost" in err and "--fail-fast-on-node-loss" in err, err


@pytest.mark.timeout(180)
def test_wrong_key_is_refused(tmp_path):
    """A client with another key pair is refused by the agent's ZAP check
    (its CURVE handshake fails: the client's monitor says so) and gets no
    answer; one with the runtime's key is admitted and answered.  The
    refusal is the handshake's own outcome, not a few seconds of silence:
    on a loaded machine an answer may take longer than any such wait (the
    right key's needs up to 60 s), so silence passed an agent that
    answered a wrong key late."""
    out = ok(run_prog(tmp_path, """
        import zmq, struct
        from zmq.utils.monitor import recv_monitor_message
        agents = dict(i.split("=", 1) for i in os.environ["EMBER_MN_AGENTS"].split(";"))
        pub, sec = os.environ["EMBER_MN_KEY"].split(",")
        d = channel.create(None, "k", ChannelOptions(node=1))
        ctx = zmq.Context()
        def ask(cpub, csec):
            s = ctx.socket(zmq.DEALER); s.linger = 0
            s.curve_serverkey = pub.encode(); s.curve_publickey = cpub; s.curve_secretkey = csec
            mon = s.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED
                                       | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                       | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                       | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            s.connect(agents["1"])
            s.send_multipart([struct.pack("<cQI", b"a", d.c_uid, 1), d.sdesc])
            # (60 s: a handshake and the agent's turn on a loaded machine)
            event = zmq.Event(recv_monitor_message(mon)["event"]).name if mon.poll(60000) else None
            got = s.poll(60000 if event == "HANDSHAKE_SUCCEEDED" else 0)
            s.disable_monitor(); mon.close(); s.close()
            return event, bool(got)
        print("wrong key:", *ask(*zmq.curve_keypair()))
        print("right key:", *ask(pub.encode(), sec.encode()))
        ctx.term()
    """, hosts="local:2", timeout=150))
    assert "wrong key: HANDSHAKE_FAILED_AUTH False" in out and \
        "right key: HANDSHAKE_SUCCEEDED True" in out, out


@pytest.mark.timeout(120)
def test_the_head_transport_agent_runs_with_the_cyclic_gc_on(tmp_path):
    """`python -m ember` keeps the cyclic GC off until the bring-up has
    frozen what it allocated (Launcher.run); the transport agent of the
    head node is forked before that (ClusterRun.prepare), and ran all its
    life with the GC off: no cycle it made was ever collected.  Seen by a
    gc callback (sitecustomize) that notes each process that collects:
    the agent's imports after its fork make it collect."""
    seen = tmp_path / "seen"
    seen.mkdir()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""\
        import gc, os
        _dir = os.environ.get("EMBER_TEST_GC_SEEN")

        def _collects(phase, info):
            if phase == "start":
                p = os.path.join(_dir, str(os.getpid()))
                if not os.path.exists(p):
                    open(p, "w").close()

        if _dir:
            gc.callbacks.append(_collects)
    """))
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""\
        import os

        def ppid(pid):
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])

        launcher = ppid(os.getppid())          # head <- shepherd <- launcher
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    with open(f"/proc/{p}/cmdline", "rb") as f:
                        cmd = f.read()
                    if cmd.startswith(b"ember: transport agent") and ppid(p) == launcher:
                        print("agent", p)
                except OSError:
                    pass
    """))
    env = dict(os.environ, EMBER_TEST_GC_SEEN=str(seen),
               PYTHONPATH=os.pathsep.join([str(site)] + [x for x in (os.environ.get(
                   "PYTHONPATH"),) if x]))
    res = subprocess.run([sys.executable, "-m", "ember", "run", "--hosts", "local:2",
                          str(prog)], cwd=tmp_path, capture_output=True, timeout=90, env=env)
    out = ok(res)
    agents = [line.split()[1] for line in out.splitlines() if line.startswith("agent ")]
    assert len(agents) == 1, out
    assert agents[0] in os.listdir(seen), (agents, sorted(os.listdir(seen)))


def test_bad_hosts_are_usage_errors(tmp_path):
    (tmp_path / "p.py").write_text("pass\n")
    for hosts, text in (("local:0", "local:N needs N >= 1"), ("a,a", "appears twice")):
        res = subprocess.run([sys.executable, "-m", "ember", "run", "--hosts", hosts, "p.py"],
                             cwd=tmp_path, capture_output=True, timeout=60)
        assert res.returncode == 2 and text in res.stderr.decode(), res.stderr


@pytest.mark.timeout(60)
def test_help_documents_several_nodes():
    res = subprocess.run([sys.executable, "-m", "ember", "run", "--help"], capture_output=True,
                         timeout=60)
    text = res.stdout.decode()
    for flag in ("--hosts", "--label-output", "--fail-fast-on-node-loss", "--ssh-config",
                 "--single-node", "Slurm", "CURVE", "'local:N'"):
        assert flag in text, flag


@pytest.mark.timeout(120)
def test_python_processes_and_groups_across_nodes(tmp_path):
    """ember.Process(node=N | "any") runs its target there (arguments with a
    large out-of-band buffer too); kill and join work; a ProcessGroup with
    placement="all" has one member per node."""
    out = ok(run_prog(tmp_path, """
        import ember, numpy as np
        def where(x, big=None):
            return (os.environ["EMBER_NODE"], x * 2, None if big is None else int(big.sum()))
        p = ember.Process(target=where, args=(21,), node=1)
        p.start(); p.join(30); print("node1", p.exitcode, p.result())
        p = ember.Process(target=where, args=(1,), kwargs={"big": np.ones(1 << 18)}, node="any")
        p.start(); p.join(30); print("any", p.exitcode, p.result())
        with ember.ProcessGroup(placement="all") as g:
            g.add(1, where, args=(5,))
            g.start(); g.join()
            print("group", sorted(g.results()))
        with ember.ProcessGroup(policy="restart") as g:
            g.add(2, where, args=(3,), node=2)
            g.start(); g.join()
            print("group node", sorted(g.results()))
        try:
            ember.ProcessGroup(placement="all").add(1, where, node=1)
        except ValueError as e:
            print("group both:", e)
        q = ember.Process(target=time.sleep, args=(60,), node=2)
        q.start(); q.kill(); q.join(30); print("killed", q.exitcode)
        try:
            ember.Process(target=where, node=-1)
        except ValueError as e:
            print("bad node:", e)
    """))
    lines = out.splitlines()
    assert "node1 0 ('1', 42, None)" in lines
    assert "any 0 ('1', 2, 262144)" in lines
    assert "group [('0', 10, None), ('1', 10, None), ('2', 10, None)]" in lines
    assert "group node [('2', 6, None), ('2', 6, None)]" in lines
    assert any(ln.startswith("group both: node= cannot be combined") for ln in lines), out
    assert "killed -9" in lines
    assert "bad node: node must be a node index (int >= 0), 'any' or None, not -1" in lines


HEAP_PROBE = """
import ctypes, resource, sys, threading
if sys.argv[1] == "keep":
    from ember.transport.zmq_backend import ZmqBackend
    ZmqBackend().close()                 # what an agent makes; keep_heap() on the way
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
out = []
def coder():        # as libzmq's CURVE coder in its I/O thread: 3 buffers per 1 MiB message
    n = (1 << 20) + 64
    for i in range(60):
        if i == 10:
            r0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        ps = [libc.malloc(n) for _ in range(3)]
        for p in ps:
            libc.memset(p, 1, n)
        for p in ps:
            libc.free(p)
    out.append((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - r0) / 50)
t = threading.Thread(target=coder)
t.start()
t.join()
print(out[0])
"""


@pytest.mark.timeout(60)
def test_transport_keeps_the_heap_of_large_messages():
    """A process with a transport backend (agents; remote handles) keeps the
    memory of large messages in its heap: no page faults per 1 MiB message
    (glibc's default trimmed and refaulted ~3 MiB per message)."""
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"mallopt tuning is for glibc; this is {platform.libc_ver()!r}")
    r = subprocess.run([sys.executable, "-c", HEAP_PROBE, "keep"], capture_output=True,
                       text=True, timeout=50)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) < 16, r.stdout      # pages faulted per message, once warm
