"""Helpers for the tests of ember.objects (queues, pipes, named objects):
child interpreters started as managed processes of the test's runtime,
with objects handed over by pickle."""
import os
import pickle
import signal
import sys
import textwrap
import uuid


def uname(prefix):
    """A name unique across test workers."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def spawn(code, *objs):
    """Start ``code`` in a managed child interpreter; ``ARGS`` there is the
    tuple of ``objs`` (pickled here, unpickled there).  Returns the
    ProcessDescriptor."""
    from ember.globalservices import process
    prog = ("import pickle, sys\nARGS = pickle.loads(bytes.fromhex(sys.argv[1]))\n"
            + textwrap.dedent(code))
    return process.create(sys.executable, os.getcwd(), ["-c", prog, pickle.dumps(objs).hex()])


def join(p, timeout=60):
    from ember.globalservices import process
    return process.join(p.p_uid, timeout=timeout)


def kill(p, sig=signal.SIGKILL):
    from ember.globalservices import process
    process.kill(p.p_uid, sig)


def run(code, *objs, timeout=60):
    """Run ``code`` in a child and return its exit code."""
    return join(spawn(code, *objs), timeout)


def names():
    from ember.objects import naming
    return {n for _, n, _, _ in naming.get_list() if n}


def uids():
    from ember.objects import naming
    return {u for u, _, _, _ in naming.get_list()}
