"""Several nodes: ember across emulated nodes against raw pyzmq over the
same veth with the same kind of CURVE key, side by side in one run.

Needs root (Linux namespaces, tests/mn_cluster.py) and sshd.  Run:

    python benchmarks/bench_multinode.py [--rounds 3] [--only small,big,rtt,raw2,rawrr,direct,bringup,create]

(``--only`` keeps a run short: e.g. ``--only small,big,rtt --rounds 5`` takes
about two minutes on the shared test machine.)

Measures (targets of issue 15):

- 64 B messages/s node 0 -> a channel on node 1, read there by a process
  of node 1 (raw: PUSH in node 0, PULL in node 1): >= 80% of raw, in the
  runtime as a user gets it (the direct path on, the default: a stream
  whose receiver waits in ``recv`` goes direct); again on the agent's
  path alone (EMBER_MN_DIRECT=0, in a runtime of its own), for comparison;
- 1 MiB throughput, the same paths: >= 80% of raw;
- round trip: node 0 sends to a channel on node 1, a process there echoes
  into a channel on node 0, by the ordinary API (a remote handle's send, a
  local handle's recv) with the direct path on (EMBER_MN_DIRECT=1), and
  again with it off (the agent's path, in its own runtime of the same
  round) (raw: DEALER/ROUTER echo): <= raw + 20 us (each
  side's figure is the median of its 2000 round trips, which a load spike
  moves less than their mean; met if both the best-vs-best and the median
  of the rounds' differences are);
- ``raw2``: raw pyzmq's round trip over two connections, one per direction
  (each side sends on its own DEALER to the other's ROUTER, as the direct
  path does), beside the one-connection figure: what the second
  connection costs (docs/multinode.md, "What remains");
- ``rawrr``: raw pyzmq's round trip over one connection used both ways from
  both ends, each end with one ROUTER socket (bound as a CURVE server, as an
  inbox is; node 0's also connected to node 1's as a CURVE client under an
  alias, ZMQ_CONNECT_ROUTING_ID): the shape of a direct path whose replies
  come back over the connection the requests came on; and beside it the
  same pyzmq calls over two connections (each end answers on a ROUTER of its
  own connected to the other's), so that the difference is the connections'
  alone (raw and raw2 make different pyzmq calls: a ``recv_multipart`` costs
  some 6 us more than a ``recv``);
- the direct path's floor (``direct``; ``directnoack`` without acknowledgements): the same round trip on the building
  blocks of the direct path (ember.transport.direct: each process sends to
  the other's own inbox and waits on its channel and inbox at once), not the
  runtime's path yet: what that path's hot loop costs against raw, without
  its acknowledgements (docs/multinode.md, "The direct path");
- bring-up of 4 nodes (``ember run --hosts`` of an empty program) against
  ``ember run`` on one node: <= 1 s more;
- remote process create+join against local create+join: <= local + 1 ms.

Prints min and median over the rounds, the ratios, and the load (uptime).
"""
import argparse
import os
import statistics
import subprocess
import sys
import textwrap
import time

import _report  # benchmarks/_report.py: --json, --png

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

N_SMALL = 200_000
N_BIG = 300
N_RTT = 2000
N_CREATE = 30

RAW_PULL = """
import sys, time, zmq
pub, sec, port, n, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ctx = zmq.Context()
s = ctx.socket(zmq.PULL); s.curve_server = True
s.curve_publickey, s.curve_secretkey = pub.encode(), sec.encode()
s.rcvhwm = 1 << 20
s.bind(f"tcp://*:{port}")
print("ready", flush=True)
s.recv()
t0 = time.perf_counter()
for _ in range(n):
    s.recv(copy=size < 65536)
print(n / (time.perf_counter() - t0), flush=True)
"""

RAW_PUSH = """
import sys, zmq
pub, sec, addr, n, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ctx = zmq.Context()
s = ctx.socket(zmq.PUSH); s.sndhwm = 1 << 20
cp, cs = zmq.curve_keypair()
s.curve_serverkey = pub.encode(); s.curve_publickey, s.curve_secretkey = cp, cs
s.connect(addr)
msg = b"x" * size
s.send(b"go")
for _ in range(n):
    s.send(msg, copy=size < 65536)
s.close(linger=-1); ctx.term()
"""

RAW_ECHO = """
import sys, zmq
pub, sec, port, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER); s.curve_server = True
s.curve_publickey, s.curve_secretkey = pub.encode(), sec.encode()
s.bind(f"tcp://*:{port}")
print("ready", flush=True)
for _ in range(n + 1):
    s.send_multipart(s.recv_multipart())
"""

RAW_PING = """
import sys, time, zmq
pub, sec, addr, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
cp, cs = zmq.curve_keypair()
s.curve_serverkey = pub.encode(); s.curve_publickey, s.curve_secretkey = cp, cs
s.connect(addr)
s.send(b"x"); s.recv()
ts = []
pc = time.perf_counter
for _ in range(n):
    t0 = pc()
    s.send(b"x" * 64); s.recv()
    ts.append(pc() - t0)
ts.sort()
print(ts[n // 2] * 1e6, flush=True)
"""

RAW_ECHO2 = """
import sys, zmq
pub, sec, port, back, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER); s.curve_server = True
s.curve_publickey, s.curve_secretkey = pub.encode(), sec.encode()
s.bind(f"tcp://*:{port}")
d = ctx.socket(zmq.DEALER)
cp, cs = zmq.curve_keypair()
d.curve_serverkey = pub.encode(); d.curve_publickey, d.curve_secretkey = cp, cs
d.connect(back)
print("ready", flush=True)
for _ in range(n + 1):
    d.send(s.recv_multipart()[1])
"""

RAW_PING2 = """
import sys, time, zmq
pub, sec, addr, port, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = zmq.Context()
r = ctx.socket(zmq.ROUTER); r.curve_server = True
r.curve_publickey, r.curve_secretkey = pub.encode(), sec.encode()
r.bind(f"tcp://*:{port}")
s = ctx.socket(zmq.DEALER)
cp, cs = zmq.curve_keypair()
s.curve_serverkey = pub.encode(); s.curve_publickey, s.curve_secretkey = cp, cs
s.connect(addr)
s.send(b"x"); r.recv_multipart()
ts = []
pc = time.perf_counter
for _ in range(n):
    t0 = pc()
    s.send(b"x" * 64); r.recv_multipart()
    ts.append(pc() - t0)
ts.sort()
print(ts[n // 2] * 1e6, flush=True)
"""

RAW_PINGR = """
import sys, time, zmq
pub, sec, addr, port, n, two = (sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4],
                                int(sys.argv[5]), sys.argv[6] == "2")
ctx = zmq.Context()
# the inbox's shape: one ROUTER bound as a CURVE server; with one
# connection (not two) it is also connected to the echo's ROUTER as a CURVE
# client under an alias (ZMQ_CONNECT_ROUTING_ID), and sends on it; with
# two, a second ROUTER does (the same pyzmq calls either way)
r = ctx.socket(zmq.ROUTER); r.curve_server = True
r.curve_publickey, r.curve_secretkey = pub.encode(), sec.encode()
r.router_mandatory = True
r.bind(f"tcp://*:{port}")
s = ctx.socket(zmq.ROUTER) if two else r
if two:
    s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
s.curve_serverkey = pub.encode()          # (a CURVE client from here on: the connect)
s.connect_routing_id = b"echo"
s.connect(addr)
s.send_multipart([b"echo", b"x"]); r.recv_multipart()
ts = []
pc = time.perf_counter
for _ in range(n):
    t0 = pc()
    s.send_multipart([b"echo", b"x" * 64]); r.recv_multipart()
    ts.append(pc() - t0)
ts.sort()
print(ts[n // 2] * 1e6, flush=True)
"""

RAW_ECHOR = """
import sys, zmq
pub, sec, port, back, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
ctx = zmq.Context()
r = ctx.socket(zmq.ROUTER); r.curve_server = True
r.curve_publickey, r.curve_secretkey = pub.encode(), sec.encode()
r.bind(f"tcp://*:{port}")
s = r
if back != "-":             # two connections: the answer on one of its own, to the pinger's inbox
    s = ctx.socket(zmq.ROUTER)
    s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
    s.curve_serverkey = pub.encode()
    s.connect_routing_id = b"ping"
    s.connect(back)
print("ready", flush=True)
for _ in range(n + 1):
    m = r.recv_multipart()
    s.send_multipart([m[0] if back == "-" else b"ping", m[1]])
"""

EMBER_PROG = """
import os, sys, time
from ember.globalservices import process, channel
from ember.descriptors import ChannelOptions
from ember.channels_c import Channel
N_SMALL, N_BIG, N_RTT, N_CREATE = %d, %d, %d, %d
ONLY = %r
PY = sys.executable
DIRECT = []

def stream(n, size, cap, block):
    name = f"s{n}-{size}"
    d = channel.create(None, name, ChannelOptions(node=1, capacity=cap, block_size=block))
    rcv = f'''
import time
from ember.globalservices import channel
from ember.channels_c import Channel
c = Channel.attach(channel.join("{name}"))
c.recv()
t0 = time.perf_counter()
for _ in range({n}):
    c.recv_auto() if {size} > 65536 else c.recv()
print("rate", {n} / (time.perf_counter() - t0), flush=True)
'''
    p = process.create(PY, ".", ["-c", rcv], options={"node": 1})
    h = Channel.attach(d)
    msg = b"x" * size
    h.send(b"go")
    for _ in range(n):
        h.send(msg)
    h.flush()
    # how many went by the direct path, and in how many batches (printed at
    # the end: the launcher's output of two processes that print at once
    # can mix within a line)
    o = h._dout
    DIRECT.append(f"direct {o.seq if o is not None else 0} {getattr(o, 'batches', 0)}")
    process.join(p.p_uid)
    channel.destroy(name)

if "small" in ONLY:
    stream(N_SMALL, 64, 8192, 256)
if "big" in ONLY:
    stream(N_BIG, 1 << 20, 64, 1024)


def round_trip():
    there = channel.create(None, "ping", ChannelOptions(node=1))
    back = channel.create(None, "pong")
    echo = f'''
from ember.globalservices import channel
from ember.channels_c import Channel
from ember.transport import _trace
a = Channel.attach(channel.join("ping")); b = Channel.attach(channel.join("pong"))
if _trace.ON:
    st = _trace.stamp
    for _ in range({N_RTT} + 1):
        x = a.recv()
        st("E0")
        b.send(x)
        st("E1")
else:
    for _ in range({N_RTT} + 1):
        b.send(a.recv())
b.flush()
'''
    p = process.create(PY, ".", ["-c", echo], options={"node": 1})
    ping, pong = Channel.attach(there), Channel.attach(back)
    ping.send(b"x"); pong.recv()
    time_round_trips("rtt", ping.send, pong.recv)
    process.join(p.p_uid)


def time_round_trips(tag, send, recv):
    # N_RTT round trips (send a 64 B message, receive the answer); prints the
    # median in us after tag
    ts = []
    pc = time.perf_counter
    from ember.transport import _trace
    st = _trace.stamp if _trace.ON else None
    msg = b"x" * 64
    for _ in range(N_RTT):
        t0 = pc()
        if st:
            st("H0")
        send(msg)
        recv()
        if st:
            st("H2")
        ts.append(pc() - t0)
    ts.sort()
    print(tag, ts[N_RTT // 2] * 1e6, flush=True)


if "rtt" in ONLY:
    round_trip()


def direct_round_trip(tag, acks):
    # The same round trip on the direct path's building blocks
    # (ember.transport.direct): each process sends straight to the other's
    # inbox and waits on its channel and its inbox at once (a ChannelWatch).
    # Not the runtime's path: the floor of that path's hot loop, with its
    # acknowledgements (acks) or without them (their timers pushed out).
    from ember.transport import direct
    from ember.transport.direct import DirectSender, Inbox
    if not acks:
        direct.ACK_EVERY, direct.ACK_BYTES = 1 << 60, 1 << 60
    there = channel.create(None, tag + "ping", ChannelOptions(node=1))
    back = channel.create(None, tag + "pong")
    addr = channel.create(None, tag + "addr")
    echo = f'''
from ember.globalservices import channel
from ember.channels_c import Channel
from ember.transport import direct
from ember.transport.direct import DirectSender, Inbox
if not {acks}:
    direct.ACK_EVERY, direct.ACK_BYTES = 1 << 60, 1 << 60
a = Channel.attach(channel.join("{tag}ping"))
inbox = Inbox()
w = inbox.watch(a)
r = Channel.attach(channel.join("{tag}addr")); r.send(inbox.address.encode()); r.flush()
ds = DirectSender(a.recv().decode())
for _ in range({N_RTT} + 1):
    ds.send({back.c_uid}, inbox.recv(a, w))
ds.close()
'''
    p = process.create(PY, ".", ["-c", echo], options={"node": 1})
    inbox = Inbox()
    pong = Channel.attach(back)
    w = inbox.watch(pong)
    Channel.attach(there).send(inbox.address.encode())      # through the agent
    ds = DirectSender(Channel.attach(addr).recv().decode())
    ds.send(there.c_uid, b"x"); inbox.recv(pong, w)
    c_uid, send = there.c_uid, ds.send
    time_round_trips(tag, lambda m: send(c_uid, m), lambda: inbox.recv(pong, w))
    process.join(p.p_uid)
    inbox.unwatch(w)
    inbox.close()
    ds.close()
    direct.ACK_EVERY, direct.ACK_BYTES = 128, 4 << 20


if "direct" in ONLY:
    direct_round_trip("drtt", True)
if "directnoack" in ONLY:
    direct_round_trip("dnrtt", False)


for node in (0, 1, 0, 1) if "create" in ONLY else ():
    ts = []
    for _ in range(N_CREATE):
        t0 = time.perf_counter()
        d = process.create("/bin/true", "/", [], options={"node": node})
        process.join(d.p_uid)
        ts.append(time.perf_counter() - t0)
    print("create", node, min(ts) * 1e3, sorted(ts)[len(ts) // 2] * 1e3, flush=True)
for line in DIRECT:
    print(line, flush=True)
"""


def run_round(c, only, trace=None, index=0):
    import zmq
    out = {}
    pub, sec = (k.decode() for k in zmq.curve_keypair())
    addr1 = c.nodes[1].addr
    for what, key, n, size in (("small", "raw64", N_SMALL, 64), ("big", "raw1m", N_BIG, 1 << 20)):
        if what not in only:
            continue
        pull = c.popen(1, [sys.executable, "-c", RAW_PULL, pub, sec, "5555", str(n), str(size)],
                       stdout=subprocess.PIPE, text=True)
        assert pull.stdout.readline().strip() == "ready"
        c.run(0, [sys.executable, "-c", RAW_PUSH, pub, sec, f"tcp://{addr1}:5555", str(n),
                  str(size)], timeout=300)
        out[key] = float(pull.stdout.readline())
        pull.wait(60)
    raws = []
    if only & {"rtt", "direct", "directnoack", "raw2", "rawrr"}:
        raws.append(("rawrtt", RAW_ECHO, [], RAW_PING, []))
    if "raw2" in only:
        raws.append(("raw2rtt", RAW_ECHO2, [f"tcp://{c.nodes[0].addr}:5558"], RAW_PING2,
                     ["5558"]))
    if "rawrr" in only:
        raws.append(("rawrrrtt", RAW_ECHOR, ["-"], RAW_PINGR, ["5558"], "1"))
        raws.append(("rawrr2rtt", RAW_ECHOR, [f"tcp://{c.nodes[0].addr}:5558"], RAW_PINGR,
                     ["5558"], "2"))
    # the raw shapes in turns, each round starting at the next one (the
    # first of a round ran faster in some runs)
    k = index % len(raws) if raws else 0
    for key, echo_src, echo_args, ping_src, ping_args, *mode in raws[k:] + raws[:k]:
        echo = c.popen(1, [sys.executable, "-c", echo_src, pub, sec, "5556", *echo_args,
                           str(N_RTT)], stdout=subprocess.PIPE, text=True)
        assert echo.stdout.readline().strip() == "ready"
        r = c.run(0, [sys.executable, "-c", ping_src, pub, sec, f"tcp://{addr1}:5556",
                      *ping_args, str(N_RTT), *mode], timeout=300)
        out[key] = float(r.stdout)
        echo.wait(60)
    if only & {"small", "big", "rtt", "direct", "directnoack", "create"}:
        prog = c.path("bench_prog.py")
        with open(prog, "w") as f:
            f.write(EMBER_PROG % (N_SMALL, N_BIG, N_RTT, N_CREATE, sorted(only)))
        hosts2 = ",".join(n.name for n in c.nodes[:2])
        # The runtime as a user gets it (the direct path on: the default),
        # then the same streams and round trip on the agent's path alone
        # (EMBER_MN_DIRECT=0, in a runtime of its own): a stream whose
        # receiver waits in recv goes direct by default, so the headline
        # rows must be the default's, not the agent path's.

        def ember_run(direct, trace_dir):
            # the program in a runtime of its own on nodes 0 and 1; its lines
            env = {"EMBER_MN_DIRECT": direct}
            if trace_dir:
                os.makedirs(trace_dir, exist_ok=True)
                env["EMBER_MN_TRACE"] = trace_dir
            r = c.run(0, [sys.executable, "-m", "ember", "run", "--hosts", hosts2, prog],
                      timeout=600, cwd=c.path(), env=env)
            assert r.returncode == 0, (r.stdout, r.stderr)
            return r.stdout.splitlines()

        lines = ember_run("1", trace and os.path.join(trace, "direct"))
        rates = [float(ln.split()[1]) for ln in lines if ln.startswith("rate")]
        directs = [ln.split()[1:] for ln in lines if ln.startswith("direct ")]
        for what, key, n in (("small", "e64", N_SMALL), ("big", "e1m", N_BIG)):
            if what in only:
                out[key] = rates.pop(0)
                # the share of the stream that went by the direct path, and
                # its messages per batch
                sent, batches = (int(x) for x in directs.pop(0))
                out[key + "dir"] = sent / n
                out[key + "per"] = sent / batches if batches else 0
        if "rtt" in only:
            out["ertt"] = float(next(ln.split()[1] for ln in lines if ln.startswith("rtt")))
        agent = [p for p in ("small", "big", "rtt") if p in only]
        if agent:
            with open(prog, "w") as f:
                f.write(EMBER_PROG % (N_SMALL, N_BIG, N_RTT, N_CREATE, agent))
            alines = ember_run("0", trace)
            rates = [float(ln.split()[1]) for ln in alines if ln.startswith("rate")]
            for what, key in (("small", "a64"), ("big", "a1m")):
                if what in only:
                    out[key] = rates.pop(0)
            if "rtt" in only:
                out["artt"] = float(next(ln.split()[1] for ln in alines
                                         if ln.startswith("rtt")))
        if "directnoack" in only:
            out["dnrtt"] = float(next(ln.split()[1] for ln in lines if ln.startswith("dnrtt")))
        if "direct" in only:
            out["drtt"] = float(next(ln.split()[1] for ln in lines if ln.startswith("drtt")))
        if "rtt" in only and trace:
            import mn_trace
            mn_trace.report(trace)                          # the agent's path
            mn_trace.report(os.path.join(trace, "direct"))  # the direct path
        if "create" in only:
            creates = [ln.split() for ln in lines if ln.startswith("create")]
            out["clocal"] = min(float(x[2]) for x in creates if x[1] == "0")
            out["cremote"] = min(float(x[2]) for x in creates if x[1] == "1")
    if "bringup" in only:
        empty = c.path("empty.py")
        with open(empty, "w") as f:
            f.write("pass\n")
        for key, flags in (("up1", []), ("up4", ["--hosts", c.hosts])):
            t0 = time.perf_counter()
            r = c.run(0, [sys.executable, "-m", "ember", "run", *flags, empty], timeout=120,
                      cwd=c.path())
            assert r.returncode == 0, r.stderr
            out[key] = time.perf_counter() - t0
    return out


PARTS = ("small", "big", "rtt", "raw2", "rawrr", "direct", "directnoack", "bringup", "create")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    _report.add_only(ap, PARTS, help="comma-separated measures to run (default: all)")
    ap.add_argument("--trace", metavar="DIR",
                    help="time-stamp every hop of the ember round trips (EMBER_MN_TRACE), "
                         "print where the time goes (benchmarks/mn_trace.py) and keep the "
                         "stamps in DIR/round<i>; the stamps cost a little: the figures of a "
                         "traced run are not the figures")
    _report.add_args(ap)
    a = ap.parse_args()
    only = a.only
    from mn_cluster import ClusterUnavailable, emulated_nodes
    rounds = []
    print(f"load average at start {' '.join(open('/proc/loadavg').read().split()[:3])} on "
          f"{os.cpu_count()} CPUs", flush=True)
    from bench_runtime import bench_channel_wake
    print(f"the machine's state: a bare channel message wakes a sleeping process in "
          f"{statistics.median(bench_channel_wake(50)) * 1e6:.1f} us (median of 50; "
          f"4-9 us in the VM's fast state, 45-60 us in its slow one: docs/performance.md)",
          flush=True)
    try:
        with emulated_nodes(4, sshd=True) as c:
            for i in range(a.rounds):
                trace = None
                if a.trace:
                    trace = c.path(f"trace{i}")
                    os.makedirs(trace)
                rounds.append(run_round(c, only, trace, i))
                if trace:
                    import shutil
                    shutil.copytree(trace, os.path.join(a.trace, f"round{i}"))
                print(f"round {i + 1} (load {open('/proc/loadavg').read().split()[0]}): "
                      + ", ".join(f"{k}={v:.4g}" for k, v in rounds[-1].items()), flush=True)
    except ClusterUnavailable as exc:
        print(f"skipped: {exc}")
        return 0

    def mm(key):
        vals = [r[key] for r in rounds]
        return min(vals), statistics.median(vals), max(vals)

    load = open("/proc/loadavg").read().split()[:3]
    print(f"\nload average {' '.join(load)} on {os.cpu_count()} CPUs; {a.rounds} rounds; "
          f"best / median")
    rows = []
    for what, ek, rk, note, target in (
            ("64 B msgs/s", "e64", "raw64", "target >= 80%", True),
            ("64 B, agent's path", "a64", "raw64", "EMBER_MN_DIRECT=0", False),
            ("1 MiB msgs/s", "e1m", "raw1m", "target >= 80%", True),
            ("1 MiB, agent's path", "a1m", "raw1m", "EMBER_MN_DIRECT=0", False)):
        if ek not in rounds[0]:
            continue
        e, r = mm(ek), mm(rk)
        ratio = max(x[ek] / x[rk] for x in rounds)
        med = statistics.median(x[ek] / x[rk] for x in rounds)
        rows.append((what, f"ember {e[2]:,.0f} / {e[1]:,.0f}", f"raw {r[2]:,.0f} / {r[1]:,.0f}",
                     f"{ratio:.0%} / {med:.0%} of raw ({note})",
                     ("met" if med >= 0.8 else "missed") if target else ""))
    for what, key, note, target in (
            ("round trip", "ertt", "target <= +20 us", True),
            ("round trip, agent's path", "artt", "EMBER_MN_DIRECT=0", False),
            ("direct path's floor", "drtt", "building blocks only, not the runtime's path", False),
            ("direct, no acks", "dnrtt", "building blocks, acknowledgements off", False),
            ("raw, two connections", "raw2rtt", "raw pyzmq, one connection per direction",
             False),
            ("raw, ROUTER to ROUTER", "rawrrrtt", "raw pyzmq, one connection, each end's one "
             "socket both ways", False),
            ("raw, ROUTERs, two conn.", "rawrr2rtt", "raw pyzmq, the same calls over one "
             "connection per direction", False)):
        if key not in rounds[0]:
            continue
        e, r = mm(key), mm("rawrtt")
        d = statistics.median(x[key] - x["rawrtt"] for x in rounds)
        who = {"raw2rtt": "raw2", "rawrrrtt": "rawrr", "rawrr2rtt": "rawrr2"}.get(key, "ember")
        rows.append((what, f"{who} {e[0]:.0f} / {e[1]:.0f} us", f"raw {r[0]:.0f} / {r[1]:.0f} us",
                     f"raw + {e[0] - r[0]:.0f} best vs best / {d:.0f} median of the "
                     f"rounds' differences ({note})",
                     ("met" if max(d, e[0] - r[0]) <= 20 else "missed") if target else ""))
    if "rawrr2rtt" in rounds[0]:
        d = [x["rawrr2rtt"] - x["rawrrrtt"] for x in rounds]
        rows.append(("one connection's gain", f"rawrr2 - rawrr {statistics.median(d):.0f} us",
                     f"{sum(v > 0 for v in d)} of {len(d)} rounds",
                     "median of the rounds' differences: the same calls over two "
                     "connections, less over one", ""))
    if "up4" in rounds[0]:
        d = [x["up4"] - x["up1"] for x in rounds]
        rows.append(("bring-up", f"4 nodes {mm('up4')[0]:.2f} / {mm('up4')[1]:.2f} s",
                     f"1 node {mm('up1')[0]:.2f} / {mm('up1')[1]:.2f} s",
                     f"+{min(d):.2f} / {statistics.median(d):.2f} s (target <= +1 s)",
                     "met" if statistics.median(d) <= 1 else "missed"))
    if "cremote" in rounds[0]:
        d = [x["cremote"] - x["clocal"] for x in rounds]
        rows.append(("create+join", f"remote {mm('cremote')[0]:.2f} / {mm('cremote')[1]:.2f} ms",
                     f"local {mm('clocal')[0]:.2f} / {mm('clocal')[1]:.2f} ms",
                     f"+{min(d):.2f} / {statistics.median(d):.2f} ms (target <= +1 ms)",
                     "met" if statistics.median(d) <= 1 else "missed"))
    for row in rows:
        print("  ".join(f"{c:<28}" if i < 3 else c for i, c in enumerate(row)))
    med = {k: mm(k)[1] for k in rounds[0]}
    measures = []
    if "e64" in med:
        measures.append(_report.measure(
            "64 B messages, node 0 to node 1, median", "msgs/s",
            {"ember channel": med["e64"], "raw pyzmq PUSH/PULL": med["raw64"]},
            target=0.8 * med["raw64"]))
    if "e1m" in med:
        measures.append(_report.measure(
            "1 MiB messages, node 0 to node 1, median", "msgs/s",
            {"ember channel": med["e1m"], "raw pyzmq PUSH/PULL": med["raw1m"]},
            target=0.8 * med["raw1m"]))
    if "ertt" in med:
        measures.append(_report.measure(
            "round trip node 0 - node 1, median", "µs",
            {"ember channels": med["ertt"], "raw pyzmq DEALER/ROUTER": med["rawrtt"]},
            better="lower", target=med["rawrtt"] + 20))
    if "up4" in med:
        measures.append(_report.measure(
            "bring-up + teardown of an empty program, median", "s",
            {"ember run --hosts (4 nodes)": med["up4"], "ember run (1 node)": med["up1"]},
            better="lower", target=med["up1"] + 1))
    if "cremote" in med:
        measures.append(_report.measure(
            "process create + join, best", "ms",
            {"ember, on node 1 (remote)": mm("cremote")[0],
             "ember, on node 0 (local)": mm("clocal")[0]},
            better="lower", target=mm("clocal")[0] + 1))
    _report.write(a, "bench_multinode", measures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
