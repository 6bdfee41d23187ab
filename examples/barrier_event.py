"""Named Event, Barrier and Lock across processes, and a participant that dies.

    ember run examples/barrier_event.py

Three instrument processes find the objects by name (``exist_ok=True``:
whoever comes first creates them), wait for the "start" Event, and meet
at the "step" Barrier after each round.  The camera holds the "shutter"
Lock and is then killed (SIGKILL) while it waits at the barrier.  Nothing
hangs: the others get ``BrokenBarrierError``, and the next process to take
the lock gets it, with ``ember.OwnerDied`` naming the dead holder so that
it can repair what the lock protects.
"""
import ember

PARTIES = 3


def instrument(name, rounds):
    start = ember.Event(name="start", exist_ok=True)
    step = ember.Barrier(PARTIES, name="step", exist_ok=True)
    resume = ember.Event(name="resume", exist_ok=True)
    start.wait()
    for r in range(rounds):
        if r == 1:
            resume.wait()                   # a slow round: the camera arrives first
        try:
            step.wait(timeout=60)
        except ember.BrokenBarrierError:
            return f"{name}: the barrier broke in round {r}"
    return f"{name}: {rounds} rounds"


def camera():
    start = ember.Event(name="start", exist_ok=True)
    step = ember.Barrier(PARTIES, name="step", exist_ok=True)
    shutter = ember.Lock(name="shutter", exist_ok=True)
    is_open = ember.Event(name="shutter-open", exist_ok=True)
    start.wait()
    step.wait(timeout=60)                   # round 0
    shutter.acquire()                       # round 1: opens the shutter ...
    is_open.set()
    step.wait()                             # ... and is killed while it waits


if __name__ == "__main__":
    procs = [ember.Process(target=instrument, args=(n, 3), name=n) for n in ("stage", "detector")]
    cam = ember.Process(target=camera, name="camera")
    for p in procs + [cam]:
        p.start()
    ember.Event(name="start", exist_ok=True).set()

    step = ember.Barrier(PARTIES, name="step", exist_ok=True)
    ember.Event(name="shutter-open", exist_ok=True).wait()
    while step.n_waiting != 1:              # the camera waits alone, holding the shutter
        cam.join(0.01)
    cam.kill()
    cam.join()
    print(f"camera killed (exit code {cam.exitcode}) while waiting at the barrier")
    ember.Event(name="resume", exist_ok=True).set()
    for p in procs:
        print(p.result(timeout=60))

    shutter = ember.Lock(name="shutter", exist_ok=True)
    try:
        shutter.acquire(timeout=30)
    except ember.OwnerDied as e:            # we hold the lock now
        print(f"shutter lock taken over from its dead holder: pid {e.pid}, "
              f"the camera's: {e.pid == cam.pid}")
        shutter.consistent()                # the shutter's state is repaired
    shutter.release()
    for p in procs:
        p.join()
