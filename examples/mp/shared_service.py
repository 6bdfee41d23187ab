"""shared_service.py with plain multiprocessing: a BaseManager server on a
TCP port with an authkey; every client (workers, a second shell) must know
both and register the same typeids.  The object's methods run in the
manager's threads, one thread per connection: the object needs its own
lock."""
import subprocess
import sys
import threading
from multiprocessing import Process
from multiprocessing.managers import BaseManager

AUTHKEY = b"change me"


class Registry:
    def __init__(self):
        self.requests = {}
        self.lock = threading.Lock()

    def submit(self, req_id, worker):
        with self.lock:
            self.requests[req_id] = ("running", worker)

    def finish(self, req_id):
        with self.lock:
            self.requests[req_id] = ("done", self.requests[req_id][1])

    def summary(self):
        with self.lock:
            states = [s for s, _ in self.requests.values()]
        return {s: states.count(s) for s in sorted(set(states))}

    def get(self, req_id):                  # attributes do not travel: a method
        return self.requests[req_id]


class Manager(BaseManager):
    pass


def connect(address):
    Manager.register("registry")
    m = Manager(address=address, authkey=AUTHKEY)
    m.connect()
    return m.registry()


def worker(address, i, n):
    reg = connect(address)
    for j in range(n):
        reg.submit(f"{i}-{j}", i)
        if j % 2 == 0:
            reg.finish(f"{i}-{j}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["inspect"]:
        reg = connect(("127.0.0.1", int(sys.argv[2])))
        print("inspector sees:", reg.summary())
        print("request 2-3 is", reg.get("2-3"))
        sys.exit(0)

    registry = Registry()
    Manager.register("registry", callable=lambda: registry)
    with Manager(address=("127.0.0.1", 0), authkey=AUTHKEY) as m:
        workers = [Process(target=worker, args=(m.address, i, 10)) for i in range(4)]
        for p in workers:
            p.start()
        for p in workers:
            p.join()
        print("service sees:", m.registry().summary())
        subprocess.run([sys.executable, __file__, "inspect", str(m.address[1])],
                       check=True, timeout=60)
