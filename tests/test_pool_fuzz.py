"""Corrupt shared state never crashes or hangs another process (issue 8
point 14, pools): random bytes scribbled on a live pool's header, mutex,
free lists or block headers, or a 64-byte overrun past a live payload; then
a fresh process attaches and allocates and frees.  It must exit normally or
with an ember error ("pool corrupt", a stuck mutex, a bad descriptor) --
never by a signal (SIGSEGV, SIGBUS, SIGABRT) and never hang.

The fresh processes are forked by a small single-threaded fork server (a
plain subprocess), so a trial costs a fork, not an interpreter start.
"""
import mmap
import os
import random
import subprocess
import sys

import pytest

from ember.pools_c import Pool

SERVER = r'''
import os, random, signal, sys, time, traceback
from ember.exceptions import EmberError
from ember.pools_c import Pool, set_lock_bound

set_lock_bound(0.3)
SIZES = [1, 64, 100, 1000, 5000, 40000]

def child(sdesc, seed):
    rnd = random.Random(seed)
    try:
        p = Pool.attach(sdesc)
        held = []
        for _ in range(60):
            if not held or rnd.random() < 0.55:
                try:
                    held.append(p.alloc(rnd.choice(SIZES)))
                except MemoryError:
                    pass
            else:
                held.pop(rnd.randrange(len(held))).free()
        p.stats()
        for a in p._live_allocations():      # every block, the parent's included
            a.free()
        p._validate()
        p.stats()
    except EmberError as e:
        sys.stderr.write(f"ember error: {type(e).__name__}: {e}\n")
        os._exit(3)
    except BaseException:
        traceback.print_exc()
        os._exit(4)
    os._exit(0)

for line in sys.stdin:
    sd, seed = line.split()
    pid = os.fork()
    if pid == 0:
        child(bytes.fromhex(sd), int(seed))
    end = time.monotonic() + 30
    while True:
        r, st = os.waitpid(pid, os.WNOHANG)
        if r:
            res = f"exit {os.WEXITSTATUS(st)}" if os.WIFEXITED(st) else f"signal {os.WTERMSIG(st)}"
            break
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            res = "hang"
            break
        time.sleep(0.001)
    sys.stdout.write(res + "\n")
    sys.stdout.flush()
'''

SIZES = [1, 64, 100, 1000, 5000, 40000]
HDR_MUTEX = (192, 240)          # pthread_mutex_t in the pool header (glibc x86-64: 40 bytes)
HDR_STATE = (256, 2976)         # allocator state: counters, committed, touched, bitmap, bins
KINDS = ["header", "mutex", "state", "block", "link", "overrun", "heap"]


@pytest.fixture
def server(tmp_path):
    """The fork server; the children's error lines go to a file (a pipe
    nobody reads would fill up and block them)."""
    with open(tmp_path / "children.err", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        proc.err_path = tmp_path / "children.err"
        yield proc
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        proc.stdout.close()


def _plausible(rnd, pool_size):
    """8 bytes that look like a heap offset or size (to get past the first check)."""
    v = rnd.choice([rnd.randrange(4096, pool_size) & ~63, rnd.randrange(0, 1 << 64),
                    rnd.randrange(128, 1 << 16) & ~63, 0])
    return v.to_bytes(8, "little")


def _trial(server, seed, kind=None, pool_size=1 << 20):
    rnd = random.Random(seed)
    kind = kind or rnd.choice(KINDS)
    pool = Pool.create(pool_size, name="fuzz")
    try:
        held = [pool.alloc(rnd.choice(SIZES)) for _ in range(40)]
        for a in rnd.sample(held, 20):
            a.free()
        live = [a for a in held if not a.closed]
        blocks = [a.offset - 64 for a in held]            # headers, live and free (some merged away)
        with open("/dev/shm" + pool.shm_name, "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0)
        try:
            for _ in range(rnd.randint(1, 3)):
                n = rnd.randint(1, 16)
                data = os.urandom(n)
                if kind == "header":
                    off = rnd.randrange(0, 3072)
                elif kind == "mutex":
                    off = rnd.randrange(*HDR_MUTEX)
                elif kind == "state":
                    off = rnd.randrange(*HDR_STATE)
                    if rnd.random() < 0.5:
                        off, data = off & ~7, _plausible(rnd, pool_size)
                elif kind == "block":
                    off = rnd.choice(blocks) + rnd.randrange(64)
                elif kind == "link":                       # size / prev_size / links: plausible values
                    off = rnd.choice(blocks) + rnd.choice([8, 16, 40, 48])
                    data = _plausible(rnd, pool_size)
                elif kind == "overrun":                    # 64 bytes past a live payload
                    a = rnd.choice(live)
                    off, data = a.offset + (a.size + 63) // 64 * 64, os.urandom(64)
                else:
                    off = rnd.randrange(4096, pool_size - 16)
                data = data[:len(mm) - off]
                mm[off:off + len(data)] = data
        finally:
            mm.close()
        server.stdin.write(f"{pool.sdesc.hex()} {seed}\n")
        server.stdin.flush()
        res = server.stdout.readline().strip()
    finally:
        pool.destroy()
    return kind, res


def _run(server, seeds, kind=None):
    bad = []
    for seed in seeds:
        k, res = _trial(server, seed, kind)
        if res not in ("exit 0", "exit 3"):
            bad.append((seed, k, res))
    assert not bad, (f"crashed or hung (seed, kind, result): {bad}\n"
                     f"{server.err_path.read_text()[-4000:]}")


@pytest.mark.timeout(120)
def test_pool_fuzz_scribbles(server):
    _run(server, range(1000, 1100))


@pytest.mark.timeout(120)
def test_pool_fuzz_overrun_past_live_payload(server):
    _run(server, range(2000, 2060), kind="overrun")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_pool_fuzz_scribbles_long(server):
    _run(server, range(100_000, 105_000))
