"""A runner: a worker on every node and a job on any node, restarted when
they fail, their results returned.

    ember run examples/runner.py                  # one node
    ember run --hosts n1,n2,n3 examples/runner.py # one sensor per node

``ember.ProcessGroup(policy="restart")`` starts its members and starts a
failed one again (with a growing back-off) up to ``max_restarts`` times;
``results()`` gives each member's return value or raises the failure that
outlived its restarts.  ``placement="all"`` puts a member on every node of
the runtime; ``node="any"`` puts one on the least loaded node.
"""
import os
import socket
import tempfile

import ember


def read_sensor():
    """A job bound to its node's hardware: fails until the device is warm
    (counted in a file on that node: each attempt is a fresh process)."""
    count = os.path.join(tempfile.gettempdir(), "{}-sensor-{}".format(
        os.environ["EMBER_RUNTIME_ID"], os.environ["EMBER_GROUP_INDEX"]))
    with open(count, "a+") as f:
        f.write(".")
        f.seek(0)
        n = len(f.read())
    if n < 3:
        raise RuntimeError(f"device not ready (attempt {n})")
    os.unlink(count)
    return f"{socket.gethostname()}: 21.5 C on attempt {n}"


def reindex(shard):
    """A job that can run anywhere."""
    return f"{socket.gethostname()} reindexed shard {shard}"


if __name__ == "__main__":
    restart = dict(policy="restart", max_restarts=3, backoff=0.05)
    with ember.ProcessGroup(placement="all", **restart) as sensors, \
            ember.ProcessGroup(**restart) as jobs:
        sensors.add(1, read_sensor, name="sensor")            # one per node
        jobs.add(1, reindex, args=("a-m",), name="reindex", node="any")
        for g in (sensors, jobs):
            g.start()
        for g in (sensors, jobs):
            g.join(timeout=120)
            for p, result, restarts in zip(g.processes, g.results(), g.restarts):
                print(f"{p.name}: {result!r} ({restarts} restarts)")
