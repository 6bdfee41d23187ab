"""An object manager with scopes: what a job makes goes away with the job.

    ember run examples/scoped_objects.py

Inside ``with ember.scope(name):`` every queue, lock, shared dict, ...
that this process creates joins the scope, and all of them are destroyed
when the block ends -- however it ends.  The handles are picklable, so the
job hands them to its worker processes.  A scope made with
``lifetime="owner"`` also closes when the process that made it dies, even
by SIGKILL: a crashed job leaves nothing behind either.
"""
import time

import ember
from ember.objects import naming


def live_objects():
    """The o_uids of the runtime's objects (not the per-thread reply channels)."""
    return {o_uid for o_uid, _, kind, _ in naming.get_list() if kind != "SharedReply"}


def worker(tasks, results, totals, lock):
    while (n := tasks.get()) is not None:
        with lock:                              # totals: read-modify-write across workers
            totals[n % 3] = totals.get(n % 3, 0) + n
        results.put(n * n)


def run_job(job, n):
    before = live_objects()
    with ember.scope(job):
        tasks, results = ember.Queue(), ember.Queue()
        lock = ember.Lock(name=f"{job}-lock")
        totals = ember.dict()
        workers = [ember.Process(target=worker, args=(tasks, results, totals, lock))
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
        print(f"{job}: sum of squares {squares}, totals by n % 3 {sorted(totals.items())}, "
              f"{len(live_objects() - before)} live objects (the scope itself included)")
    # the with block ended: the queues, the lock and the dict are gone


def crashing_job(job, report):
    with ember.scope(job, lifetime="owner"):    # closes if this process dies
        objs = [ember.Queue(name=f"{job}-q"), ember.Event(), ember.dict(), ember.list()]
        report.put([getattr(o, "o_uid", None) or o._o_uid for o in objs])
        ember.Event().wait()                    # until killed


if __name__ == "__main__":
    before = live_objects()
    run_job("job-1", 100)
    print("left after job-1:", sorted(live_objects() - before))

    report = ember.Queue()
    p = ember.Process(target=crashing_job, args=("job-2", report))
    p.start()
    made = report.get(timeout=30)
    print(f"job-2 made {len(made)} objects, then was killed")
    p.kill()
    p.join()
    deadline = time.monotonic() + 30           # the scope's host notices within milliseconds
    while set(made) & live_objects() and time.monotonic() < deadline:
        time.sleep(0.05)
    print("left after job-2:", sorted(set(made) & live_objects()))
