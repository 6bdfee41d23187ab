"""A runner: named jobs on worker processes, restarted when they fail,
their results returned.

    ember run examples/runner.py

``ember.ProcessGroup(policy="restart")`` starts each job's processes and
starts a failed one again (with a growing back-off) up to
``max_restarts`` times; ``results()`` gives each member's return value
or raises the failure that outlived its restarts.  This example runs on
one node: "one worker per node" is one worker here, and "any node" is this
one.  ``ProcessGroup`` cannot place its members on other nodes yet; the
runtime's process API can (``process.create(..., options={"node": "any"})``,
docs/multinode.md).
"""
import os
import socket

import ember


def read_sensor(attempts):
    """A job bound to the node's hardware: fails until the device is warm."""
    with attempts.get_lock():                 # a Value shared by every attempt
        attempts.value += 1
        n = attempts.value
    if n < 3:
        raise RuntimeError(f"device not ready (attempt {n})")
    return f"{socket.gethostname()}: 21.5 C on attempt {n}"


def reindex(shard):
    """A job that can run anywhere."""
    member = os.environ["EMBER_GROUP_INDEX"]  # the member's index in its group
    return f"member {member} reindexed shard {shard}"


if __name__ == "__main__":
    attempts = ember.Value("i", 0)
    with ember.ProcessGroup(policy="restart", max_restarts=3, backoff=0.05) as g:
        g.add(1, read_sensor, args=(attempts,), name="sensor")  # one per node
        g.add(1, reindex, args=("a-m",), name="reindex")        # on any node
        g.start()
        g.join(timeout=120)
        for p, result, restarts in zip(g.processes, g.results(), g.restarts):
            print(f"{p.name}: {result!r} ({restarts} restarts)")
