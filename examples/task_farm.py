"""A task farm: many independent tasks on a pool of worker processes.

    ember run examples/task_farm.py

``ember.Executor`` is a ``concurrent.futures.Executor``: ``map`` spreads the
calls over the workers and gives the results back in order.  A task that
raises raises *its own* exception in the caller, with the worker's
traceback attached as ``__cause__``; the other tasks and the workers are
not affected.  A worker that dies (here: killed by a signal) fails only
the task it was running, with ``ember.ProcessDied``; a new worker takes its
place.
"""
import os
import signal

import ember


def simulate(seed):
    """A stand-in for real work: a small deterministic computation."""
    x = seed
    for _ in range(10_000):
        x = (x * 1103515245 + 12345) % 2**31
    if seed == 13:
        raise ValueError(f"model diverged for seed {seed}")
    return x % 1000


def crash():
    os.kill(os.getpid(), signal.SIGKILL)     # as the OOM killer would


if __name__ == "__main__":
    with ember.Executor(max_workers=4) as ex:
        print("results:", list(ex.map(simulate, range(8))))

        try:
            list(ex.map(simulate, range(10, 16)))
        except ValueError as e:
            print(f"a task failed: {e!r}")
            print("its traceback, from the worker:")
            print(e.__cause__)

        try:
            ex.submit(crash).result()
        except ember.ProcessDied as e:
            print(f"a worker died: {e}")

        print("the executor still works:", ex.submit(simulate, 42).result())
