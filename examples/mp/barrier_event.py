"""barrier_event.py with plain multiprocessing: the objects have no names
(they are made by the parent and passed to each child), and a participant
that dies goes unnoticed: the others stay blocked in the barrier (here
even past their timeout: the dead waiter left the barrier's condition
variable inconsistent), and a lock its dead holder held is never
released."""
import queue
import time
from multiprocessing import Barrier, Event, Lock, Process, Queue

PARTIES = 3
TIMEOUT = 3          # without one, the survivors would hang forever


def instrument(name, rounds, start, step, resume, out):
    start.wait()
    for r in range(rounds):
        if r == 1:
            resume.wait()
        try:
            step.wait(timeout=TIMEOUT)
        except Exception as e:          # threading.BrokenBarrierError
            out.put(f"{name}: the barrier broke in round {r} ({type(e).__name__} "
                    f"after its {TIMEOUT} s timeout)")
            return
    out.put(f"{name}: {rounds} rounds")


def camera(start, step, shutter, is_open):
    start.wait()
    step.wait(timeout=60)
    shutter.acquire()
    is_open.set()
    step.wait()


if __name__ == "__main__":
    start, resume, is_open = Event(), Event(), Event()
    step, shutter, out = Barrier(PARTIES), Lock(), Queue()
    procs = [Process(target=instrument, args=(n, 3, start, step, resume, out), name=n)
             for n in ("stage", "detector")]
    cam = Process(target=camera, args=(start, step, shutter, is_open), name="camera")
    for p in procs + [cam]:
        p.start()
    start.set()
    is_open.wait()
    while step.n_waiting != 1:
        time.sleep(0.01)
    cam.kill()
    cam.join()
    print(f"camera killed (exit code {cam.exitcode}) while waiting at the barrier")
    resume.set()
    try:
        for p in procs:
            print(out.get(timeout=4 * TIMEOUT))
    except queue.Empty:
        print(f"the others are still blocked in the barrier after {4 * TIMEOUT} s")
    print("shutter lock taken over:", shutter.acquire(timeout=TIMEOUT),
          "(its dead holder never releases it)")
    for p in procs:
        p.kill()                        # the only way to end them
        p.join()
