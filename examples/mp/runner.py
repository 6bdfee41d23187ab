"""runner.py with plain multiprocessing: restarts and results by hand.  A
failed attempt is only an exit code (its exception is printed by the child,
not returned), results need a queue, and the processes can only run on
this machine."""
import os
import socket
import time
from multiprocessing import Process, Queue, Value
from multiprocessing.connection import wait


def read_sensor(attempts, results, key):
    with attempts.get_lock():
        attempts.value += 1
        n = attempts.value
    if n < 3:
        raise RuntimeError(f"device not ready (attempt {n})")
    results.put((key, f"{socket.gethostname()}: 21.5 C on attempt {n}"))


def reindex(shard, results, key):
    results.put((key, f"pid {os.getpid()} reindexed shard {shard}"))


def run_with_restarts(jobs, results, max_restarts=3, backoff=0.05):
    restarts, running = dict.fromkeys(jobs, 0), {}

    def launch(key):
        target, args = jobs[key]
        p = Process(target=target, args=(*args, results, key))
        p.start()
        running[p.sentinel] = key, p

    for key in jobs:
        launch(key)
    while running:
        for sentinel in wait(list(running)):
            key, p = running.pop(sentinel)
            p.join()
            if p.exitcode != 0 and restarts[key] < max_restarts:
                time.sleep(backoff * 2 ** restarts[key])
                restarts[key] += 1
                launch(key)
    return restarts


if __name__ == "__main__":
    results = Queue()
    restarts = run_with_restarts({"sensor": (read_sensor, (Value("i", 0),)),
                                  "reindex": (reindex, ("a-m",))}, results)
    got = dict(results.get(timeout=10) for _ in restarts)
    for key in restarts:
        print(f"{key}: {got[key]!r} ({restarts[key]} restarts)")
