"""task_farm.py with plain multiprocessing (concurrent.futures)."""
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool


def simulate(seed):
    x = seed
    for _ in range(10_000):
        x = (x * 1103515245 + 12345) % 2**31
    if seed == 13:
        raise ValueError(f"model diverged for seed {seed}")
    return x % 1000


def crash():
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=4) as ex:
        print("results:", list(ex.map(simulate, range(8))))

        try:
            list(ex.map(simulate, range(10, 16)))
        except ValueError as e:
            print(f"a task failed: {e!r}")
            print("its traceback, from the worker:")
            print(e.__cause__)          # _RemoteTraceback: the text only

        try:
            ex.submit(crash).result()
        except BrokenProcessPool as e:
            print(f"a worker died: {e}")

        try:                            # the whole pool is broken now
            print("the executor still works:", ex.submit(simulate, 42).result())
        except BrokenProcessPool as e:
            print(f"the executor is broken: {e}")
