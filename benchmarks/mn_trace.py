"""Where a cross-node round trip's time goes: reads the stamps that
``EMBER_MN_TRACE`` makes the transport write (src/ember/transport/_trace.py)
during ``bench_multinode.py --trace``'s round trips, and prints the median
of every hop.

    python benchmarks/mn_trace.py DIR

The round trip of the benchmark: the head process (node 0) sends on a
remote handle of channel "ping" on node 1 (stamps H0, then s0/s1 around the
handle's socket send), node 1's agent wakes (aw), reads it (ar), writes it
into the channel (ac) and goes back to sleep (ap); the echo process of
node 1 returns from its recv (E0), sends it on a remote handle of "pong"
on node 0 (s0/s1; E1), node 0's agent does the same, and the head returns
from its recv (H2).  Every process reads the same CLOCK_MONOTONIC (the
nodes are namespaces of one machine).

On the direct path (docs/multinode.md, "The direct path") no agent takes
part: the send stamps d0/d1 around its zmq send (in one call: its
copy kept and counted too), the receiver i1 when its inbox's read returned
(the message taken); those round trips are reported by the same hops
without the agents'.
"""
import bisect
import os
import statistics
import sys


def _load(path):
    out = {}
    with open(path) as f:
        for line in f:
            tag, _, ns = line.partition(" ")
            out.setdefault(tag, []).append(int(ns))
    return out


def _after(seq, t, limit):
    """The first time in sorted ``seq`` at or after ``t``, if before ``limit``."""
    i = bisect.bisect_left(seq, t)
    return seq[i] if i < len(seq) and seq[i] <= limit else None


def _before(seq, t, floor):
    """The last time in sorted ``seq`` at or before ``t``, if after ``floor``."""
    i = bisect.bisect_right(seq, t) - 1
    return seq[i] if i >= 0 and seq[i] >= floor else None


def hops(dirpath):
    """The round trips' hop times: {hop name: [us, ...]} and their count."""
    files = {n: _load(os.path.join(dirpath, n)) for n in os.listdir(dirpath)
             if os.path.isfile(os.path.join(dirpath, n))}
    head = next(v for v in files.values() if "H0" in v)
    echo = next(v for v in files.values() if "E0" in v)
    agents = [v for v in files.values() if "ar" in v]
    for v in files.values():
        for seq in v.values():
            seq.sort()

    def agent_of(t, limit):
        """(aw, ar, ac, ap) of the agent that read a message between t and limit."""
        best = None
        for a in agents:
            ar = _after(a["ar"], t, limit)
            if ar is not None and (best is None or ar < best[1]):
                aw = _before(a["aw"], ar, t - 10**9)
                ac = _after(a["ac"], ar, limit)
                ap = _after(a.get("ap", []), ac or ar, ar + 10**9)
                best = (aw, ar, ac, ap)
        return best

    rows = {}

    def add(name, a, b):
        if a is not None and b is not None:
            rows.setdefault(name, []).append((b - a) / 1000.0)

    def agent_hops(node, a, who, woke):
        aw, ar, ac, ap = a
        add(f"agent {node}: awake -> message read", aw, ar)
        add(f"agent {node}: read -> in the channel (incl. futex wake)", ar, ac)
        add(f"agent {node}: in the channel -> asleep", ac, ap)
        add(f"agent {node} in channel -> {who} recv returns (wake)", ac, woke)

    def direct(h0, h2, e0):
        """The hops of a round trip on the direct path (1), or 0."""
        hs0, hd0, hd1 = (_after(head.get(t, []), h0, h2) for t in ("s0", "d0", "d1"))
        ei1 = _before(echo.get("i1", []), e0, h0)
        es0, ed0, ed1 = (_after(echo.get(t, []), e0, h2) for t in ("s0", "d0", "d1"))
        e1 = _after(echo["E1"], e0, h2)
        hi1 = _before(head.get("i1", []), h2, e0)
        if None in (hd1, ei1, ed1, hi1):
            return 0
        add("round trip (H0 -> H2), direct path", h0, h2)
        add("head: send call start (H0 -> s0)", h0, hs0)
        add("head: to the zmq send (s0 -> d0)", hs0, hd0)
        add("head: zmq send, copy kept (d0 -> d1)", hd0, hd1)
        add("head d1 -> echo's inbox read (zmq I/O x2, veth, wake)", hd1, ei1)
        add("echo: inbox read -> recv returns (i1 -> E0)", ei1, e0)
        add("echo: recv -> send call start (E0 -> s0)", e0, es0)
        add("echo: to the zmq send (s0 -> d0)", es0, ed0)
        add("echo: zmq send, copy kept (d0 -> d1)", ed0, ed1)
        add("echo: after the send (d1 -> E1)", ed1, e1)
        add("echo d1 -> head's inbox read (zmq I/O x2, veth, wake)", ed1, hi1)
        add("head: inbox read -> recv returns (i1 -> H2)", hi1, h2)
        return 1

    n = 0
    for h0 in head["H0"]:
        h2 = _after(head["H2"], h0, h0 + 10**9)
        if h2 is None:
            continue
        s1 = _after(head.get("s1", []), h0, h2)
        a1 = agent_of(h0, h2)
        e0 = _after(echo["E0"], h0, h2)
        if e0 is None:
            continue
        if a1 is None:
            n += direct(h0, h2, e0)
            continue
        es0 = _after(echo.get("s0", []), e0, h2)
        es1 = _after(echo.get("s1", []), e0, h2)
        e1 = _after(echo["E1"], e0, h2)
        a0 = agent_of(e1 or e0, h2)
        if a0 is None:
            continue
        n += 1
        add("round trip (H0 -> H2)", h0, h2)
        add("head: send call (H0 -> s1)", h0, s1)
        add("head s1 -> agent 1 awake (zmq I/O x2, veth, agent wake)", s1, a1[0])
        agent_hops(1, a1, "echo's", e0)
        add("echo: recv -> send call start (E0 -> s0)", e0, es0)
        add("echo: send call (s0 -> s1)", es0, es1)
        add("echo s1 -> agent 0 awake (zmq I/O x2, veth, agent wake)", es1, a0[0])
        agent_hops(0, a0, "head's", h2)
    return rows, n


def report(dirpath, out=sys.stdout):
    rows, n = hops(dirpath)
    print(f"trace of {n} round trips ({dirpath}): median / 10th / 90th percentile, us",
          file=out)
    for name, v in rows.items():
        v.sort()
        print(f"  {name:<60} {statistics.median(v):7.1f} {v[len(v) // 10]:7.1f} "
              f"{v[len(v) * 9 // 10]:7.1f}", file=out)
    out.flush()


if __name__ == "__main__":
    report(sys.argv[1])
