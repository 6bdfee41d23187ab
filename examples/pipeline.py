"""A three-stage pipeline of processes connected by channels they join by name.

    producer --"numbers"--> squarer --"squares"--> summer

Run it with ``ember run examples/pipeline.py [N]``.  The head (this script
without arguments) starts the three stages as managed processes, waits for
all of them, and checks the answer.  Each stage finds its channels by name
with ``channel.join``, which waits until another stage has created them, so
the stages can start in any order.  A stage ends its output with
``Channel.close()``: the next stage receives everything sent before, then
``ChannelClosed`` (an ``EOFError``) ends its loop.
"""
import os
import struct
import sys

from ember.channels_c import Channel
from ember.exceptions import ChannelClosed
from ember.globalservices import channel, process


def producer(n):
    desc = channel.create(None, "numbers")          # in the runtime's default pool
    out = Channel.attach(desc.sdesc)
    for i in range(1, n + 1):
        out.send(struct.pack("<q", i))
    out.close()                                     # the end of the stream
    out.detach()


def squarer():
    src = Channel.attach(channel.join("numbers", timeout=30).sdesc)
    dst = Channel.attach(channel.create(None, "squares").sdesc)
    while True:
        try:
            msg = src.recv()
        except ChannelClosed:                       # everything received
            break
        (i,) = struct.unpack("<q", msg)
        dst.send(struct.pack("<q", i * i))
    dst.close()
    src.detach()
    dst.detach()


def summer(n):
    src = Channel.attach(channel.join("squares", timeout=30).sdesc)
    total = count = 0
    while True:
        try:
            msg = src.recv()
        except ChannelClosed:
            break
        total += struct.unpack("<q", msg)[0]
        count += 1
    src.detach()
    expected = n * (n + 1) * (2 * n + 1) // 6
    print(f"summer: {count} squares, sum {total} (expected {expected})", flush=True)
    sys.exit(0 if total == expected and count == n else 1)


def head(n):
    here = os.path.abspath(__file__)
    run_dir = os.path.dirname(here)
    # Start the consumer first: it waits for its channel by name.
    stages = [
        process.create(sys.executable, run_dir, [here, "summer", str(n)], user_name="summer"),
        process.create(sys.executable, run_dir, [here, "squarer"], user_name="squarer"),
        process.create(sys.executable, run_dir, [here, "producer", str(n)], user_name="producer"),
    ]
    exited, _ = process.multi_join([p.p_uid for p in stages], join_all=True, timeout=60)
    codes = dict(exited or [])
    for p in stages:
        print(f"{p.user_name:>8} (p_uid {p.p_uid}) exited with {codes.get(p.p_uid)}")
    for name in ("numbers", "squares"):
        channel.destroy(name)
    ok = all(codes.get(p.p_uid) == 0 for p in stages)
    print("pipeline ok" if ok else "pipeline FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "producer":
        producer(int(args[1]))
    elif args and args[0] == "squarer":
        squarer()
    elif args and args[0] == "summer":
        summer(int(args[1]))
    else:
        sys.exit(head(int(args[0]) if args else 10000))
