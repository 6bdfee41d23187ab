"""Services that share an object by name, and a second shell that looks in.

    ember run examples/shared_service.py
    python examples/shared_service.py inspect RUNTIME_ID    # from another shell

``ember.serve(obj, name=...)`` hosts one object in its own process; any
process of the runtime calls it through ``ember.connect(name)`` -- the
calls run in the host, one at a time, so the object needs no lock.  A
program that ember did not start (a second terminal, IPython, a debugger)
attaches to the running runtime with ``ember.init(address=...)`` and gets
the same object by the same name.  Here the head starts that second
interpreter itself, with the clean environment a new terminal would have.
"""
import os
import subprocess
import sys

import ember


class Registry:
    """The shared state of a request-processing service."""

    def __init__(self):
        self.requests = {}

    def submit(self, req_id, worker):
        self.requests[req_id] = ("running", worker)

    def finish(self, req_id):
        self.requests[req_id] = ("done", self.requests[req_id][1])

    def summary(self):
        states = [s for s, _ in self.requests.values()]
        return {s: states.count(s) for s in sorted(set(states))}


def worker(i, n):
    reg = ember.connect("registry", timeout=30)      # waits until it is served
    for j in range(n):
        reg.submit(f"{i}-{j}", i)
        if j % 2 == 0:                              # every other one finishes
            reg.finish(f"{i}-{j}")


def inspect(address):
    """What a second shell does: attach, look, detach (the runtime runs on)."""
    ember.init(address=address)
    reg = ember.connect("registry", timeout=10)
    print("inspector sees:", reg.summary())
    print("request 2-3 is", reg.requests["2-3"])    # attributes too
    ember.shutdown()


if __name__ == "__main__":
    if sys.argv[1:2] == ["inspect"]:
        inspect(sys.argv[2])
        sys.exit(0)

    ref = ember.serve(Registry(), name="registry")
    workers = [ember.Process(target=worker, args=(i, 10)) for i in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    print("service sees:", ember.connect("registry").summary())

    runtime_id = ember.init().id                    # the runtime this program runs in
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    subprocess.run([sys.executable, __file__, "inspect", runtime_id],
                   env=clean_env, check=True, timeout=60)
    ref.destroy()
