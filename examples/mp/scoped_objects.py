"""scoped_objects.py with plain multiprocessing: a Manager per job plays the
scope (everything it made ends with its server process).  Unnamed and
in-process only; and a job killed by SIGKILL leaves its manager's server
process running, holding its objects, until someone finds and kills it, and
the directory of its socket in the temp dir until someone removes it."""
import os
import shutil
import signal
import time
from multiprocessing import Manager, Process, Queue


def worker(tasks, results, totals, lock):
    while (n := tasks.get()) is not None:
        with lock:
            totals[n % 3] = totals.get(n % 3, 0) + n
        results.put(n * n)


def run_job(job, n):
    with Manager() as m:                        # the "scope": a server process
        tasks, results, lock, totals = m.Queue(), m.Queue(), m.Lock(), m.dict()
        workers = [Process(target=worker, args=(tasks, results, totals, lock))
                   for _ in range(2)]
        for p in workers:
            p.start()
        for i in range(n):
            tasks.put(i)
        for p in workers:
            tasks.put(None)
        squares = sum(results.get(timeout=30) for _ in range(n))
        for p in workers:
            p.join()
        print(f"{job}: sum of squares {squares}, totals by n % 3 {sorted(totals.items())}")


def crashing_job(job, report):
    m = Manager()
    objs = [m.Queue(), m.Event(), m.dict(), m.list()]
    report.put((m._process.pid, m.address))     # its server process, its socket
    time.sleep(3600)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


if __name__ == "__main__":
    run_job("job-1", 100)

    report = Queue()
    p = Process(target=crashing_job, args=("job-2", report))
    p.start()
    server, address = report.get(timeout=30)
    p.kill()
    p.join()
    time.sleep(1)
    print(f"job-2 was killed; its manager's server still running: {alive(server)}")
    if alive(server):
        os.kill(server, signal.SIGKILL)         # by hand: nobody else will
    shutil.rmtree(os.path.dirname(address), ignore_errors=True)   # and its socket's directory
