"""Pools never promise pages that /dev/shm cannot give (issue 8 point 1,
issue 7): pages are committed before they are handed out, a full tmpfs is
PoolExhausted for the allocating process (never SIGBUS), a pool larger than
the free space is refused at create, commit="full" commits everything up
front, and stats() caps what it reports by what tmpfs can still back."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from ember.exceptions import PoolError
from ember.pools_c import Pool

# Runs inside a private mount namespace with an 8 MiB tmpfs on /dev/shm.
SMALL_TMPFS_CHILD = r'''
import os, re, sys
from ember.exceptions import PoolError, PoolExhausted
from ember.pools_c import Pool

def shm_free():
    st = os.statvfs("/dev/shm")
    return st.f_bavail * st.f_frsize

assert shm_free() == 8 << 20, shm_free()
# larger than the whole tmpfs: refused at create, with both numbers
try:
    Pool.create(16 << 20)
    sys.exit("16 MiB pool created on an 8 MiB tmpfs")
except PoolError as e:
    assert str(e) == "cannot create a pool of 16777216 bytes: /dev/shm has only 8388608 bytes free", str(e)
assert os.listdir("/dev/shm") == []

# two lazy pools of 6 MiB each fit at create; together they cannot be backed
a = Pool.create(6 << 20, name="a")
b = Pool.create(6 << 20, name="b")
got = {}
for pool in (a, b):
    held = []
    while True:
        try:
            x = pool.alloc(256 << 10)
        except PoolExhausted as e:
            msg = str(e)
            break
        memoryview(x)[:] = b"\xab" * x.size      # every page touched: no SIGBUS
        held.append(x)
    got[pool.name] = (len(held), msg)
    st = pool.stats()
    assert st.largest_free < 256 << 10, st       # stats promise no more than alloc gets
    pool._validate()
    for x in held[:2]:
        x.free()
    pool.alloc(256 << 10).free()                 # freed (committed) blocks are reused
assert got["a"][0] >= 20, got                    # a: all of its heap (6 MiB / 256 KiB - header)
assert 0 < got["b"][0] < got["a"][0], got        # b: what was left of the tmpfs
assert re.match(r"^pool 'b' \(m_uid 0x[0-9a-f]{16}\): cannot allocate 262144 bytes: "
                r"largest free block is \d+ bytes$", got["b"][1]), got["b"][1]

# the tmpfs is full: a fully committed pool is refused at create
try:
    Pool.create(2 << 20, commit="full")
    sys.exit("2 MiB committed pool created on a full tmpfs")
except PoolError as e:
    assert re.match(r"^cannot create a pool of 2097152 bytes: /dev/shm has only \d+ bytes free$", str(e)), str(e)
b.destroy()
free = shm_free()
c = Pool.create(2 << 20, commit="full", name="c")   # fits now: all of it committed at once
assert c.stats().committed == c.size == 2 << 20
assert free - shm_free() == 2 << 20
other = open("/dev/shm/filler", "wb")              # someone else fills the tmpfs ...
try:
    while True:
        other.write(b"\0" * 65536)
        other.flush()
except OSError:
    pass
xs = []
while True:                                        # ... c still hands out all of its heap
    try:
        xs.append(c.alloc(64 << 10))
    except PoolExhausted:
        break
    memoryview(xs[-1])[:] = b"\xcd" * (64 << 10)
assert len(xs) == (2 << 20) // ((64 << 10) + 64) - 1 or len(xs) == (2 << 20) // ((64 << 10) + 64), len(xs)
c._validate()
for x in xs:
    x.free()
c.destroy()
a.destroy()
print("ok")
'''


def _unshare_ok():
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.timeout(60)
def test_pool_commit_full_tmpfs_is_exhausted_not_sigbus():
    if not _unshare_ok():
        pytest.skip("cannot make a private mount namespace here (unshare --mount needs CAP_SYS_ADMIN)")
    cmd = ("mount -t tmpfs -o size=8m,mode=1777 tmpfs /dev/shm && "
           f"exec {shlex.quote(sys.executable)} -c \"$0\"")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd, SMALL_TMPFS_CHILD],
                       capture_output=True, text=True, timeout=50)
    assert r.returncode == 0, f"child exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert r.stdout == "ok\n"


def test_pool_commit_refuses_more_than_shm_free():
    st = os.statvfs("/dev/shm")
    size = min(st.f_bavail * st.f_frsize + (1 << 30), 1 << 47)
    with pytest.raises(PoolError, match=rf"^cannot create a pool of {size} bytes: /dev/shm has only \d+ bytes free$"):
        Pool.create(size)
    if st.f_bavail * st.f_frsize < 1 << 40:          # issue 7's case on any ordinary machine
        with pytest.raises(PoolError, match=r"^cannot create a pool of 1099511627776 bytes: /dev/shm has only "
                                            r"\d+ bytes free$"):
            Pool.create(1 << 40)
    # issue 7: the message says it once, with both numbers, and no owner_tag
    with pytest.raises(PoolError, match=r"^cannot create a pool of 1125899906842624 bytes: /dev/shm has only "
                                        r"\d+ bytes free$"):
        Pool.create(1 << 50)
    with pytest.raises(ValueError, match=r"^commit must be 'lazy' or 'full', got 'some'$"):
        Pool.create(1 << 20, commit="some")


def test_pool_commit_lazy_and_full():
    with Pool.create(8 << 20, name="lazy") as p:
        st = p.stats()
        assert st.committed == 2 * 4096                # header page + first heap page
        blocks = os.stat("/dev/shm" + p.shm_name).st_blocks * 512
        assert blocks == 2 * 4096
        a = p.alloc(3 << 20)
        # committed up to past the block (and the next header), rounded up
        # to the first step (64 KiB: the mark was 8 KiB)
        assert p.stats().committed == (3 << 20) + (64 << 10)
        assert os.stat("/dev/shm" + p.shm_name).st_blocks * 512 == (3 << 20) + (64 << 10)
        a.free()
        assert p.stats().committed == (3 << 20) + (64 << 10)   # the high-water mark stays
        p._validate()
    with Pool.create(8 << 20, name="full", commit="full") as p:
        assert p.stats().committed == p.size == 8 << 20
        assert os.stat("/dev/shm" + p.shm_name).st_blocks * 512 == 8 << 20
        p.alloc(7 << 20).free()
        p._validate()


def test_pool_commit_step_doubles_with_the_mark():
    """A fresh pool's first small block commits tens of pages, not a 2 MiB
    step (fallocate allocates every page it commits: ~0.8 ms for 2 MiB on
    a VM, twice on the way of every `ember run`); the step then doubles with
    the mark up to 2 MiB, so a growing pool commits in few calls."""
    with Pool.create(16 << 20, name="steps") as p:
        shm = "/dev/shm" + p.shm_name
        first = p.alloc(100 << 10)                     # a control channel's size
        assert p.stats().committed == 128 << 10        # 8 KiB + the block, in 64 KiB steps
        assert os.stat(shm).st_blocks * 512 == 128 << 10
        marks, keep = [128 << 10], [first]
        while marks[-1] < 8 << 20:
            keep.append(p.alloc(60 << 10))
            c = p.stats().committed
            if c != marks[-1]:
                marks.append(c)
        for before, after in zip(marks, marks[1:]):
            step = 64 << 10
            while step < before and step < 2 << 20:
                step <<= 1
            assert after % step == 0 and after - before <= step, (before, after, marks)
        # 128 KiB .. 2 MiB by doublings, then 2 MiB steps to 8 MiB: 8 commits
        assert len(marks) <= 9, marks
        assert os.stat(shm).st_blocks * 512 == marks[-1]
        for a in keep:
            a.free()
        p._validate()


@pytest.mark.timeout(90)
def test_ember_run_in_a_docker_sized_dev_shm(tmp_path):
    """Docker gives containers a 64 MiB /dev/shm: `ember run` with default
    sizes still starts (its pools shrink to fit), a program that fills the
    default pool gets PoolExhausted (no SIGBUS), and teardown leaves nothing."""
    if not _unshare_ok():
        pytest.skip("cannot make a private mount namespace here (unshare --mount needs CAP_SYS_ADMIN)")
    prog = tmp_path / "fill.py"
    prog.write_text(
        "import os\n"
        "from ember import _env\n"
        "from ember.exceptions import PoolExhausted\n"
        "from ember.pools_c import Pool\n"
        "p = Pool.attach(_env.decode(os.environ['EMBER_DEFAULT_POOL']))\n"
        "keep = []\n"
        "try:\n"
        "    while True:\n"
        "        a = p.alloc(1 << 20)\n"
        "        with memoryview(a) as m:\n"
        "            m[:] = b'x' * (1 << 20)\n"
        "        keep.append(a)\n"
        "except PoolExhausted:\n"
        "    print('exhausted after', len(keep), 'MiB', p.size <= 32 << 20)\n"
        "for a in keep:\n"
        "    a.free()\n"
        "p.detach()\n")
    cmd = ("mount -t tmpfs -o size=64m,mode=1777 tmpfs /dev/shm && "
           f"{shlex.quote(sys.executable)} -m ember run \"$0\" && ls /dev/shm | grep -c . || true")
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", cmd, str(prog)],
                       capture_output=True, text=True, timeout=80, cwd=tmp_path)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines[0].startswith("exhausted after") and lines[0].endswith(" True"), \
        (r.returncode, r.stdout, r.stderr)
    assert lines[1:] == ["0"], r.stdout          # nothing left in that /dev/shm
