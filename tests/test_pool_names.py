"""Segment names are unpredictable (issue 8 point 13): another local user
who creates the names a runtime would use cannot make pool creation fail.
The part before the second dot (the owner, parsed by `ember cleanup` and
tests/conftest.py) stays exactly as it was."""
import os
import re

from ember import _env
from ember.pools_c import Pool


def test_pool_names_squatted_names_do_not_block_create():
    tag = _env.owner_tag("p")
    # the names the old scheme gave (ember.<owner>.<m_uid>): m_uid 0, 1, 2 ...
    # are what a runtime uses; someone makes them all first (and random ones)
    squat = [f"/dev/shm/ember.{tag}.{m:016x}" for m in range(8)]
    squat += [f"/dev/shm/ember.{tag}.{m:016x}.{os.urandom(6).hex()}" for m in range(8)]
    for path in squat:
        with open(path, "wb") as f:
            f.write(b"not a pool")
    made = []
    try:
        for m in range(8):
            p = Pool.create(1 << 16, m_uid=m, owner_tag=tag)
            made.append(p)
            assert re.match(rf"^/ember\.{tag}\.{m:016x}\.[0-9a-f]{{12}}$", p.shm_name)
            assert "/dev/shm" + p.shm_name not in squat
            p.alloc(10).free()
        names = {p.shm_name for p in made}
        assert len(names) == 8
        # the owner part is what cleanup and conftest parse
        assert {n.split(".")[1] for n in names} == {tag}
    finally:
        for p in made:
            p.destroy()
        for path in squat:
            os.unlink(path)


def test_pool_names_are_not_predictable():
    with Pool.create(1 << 16, m_uid=5) as a, Pool.create(1 << 16, m_uid=5) as b:
        ra, rb = a.shm_name.rsplit(".", 1)[1], b.shm_name.rsplit(".", 1)[1]
        assert ra != rb and len(ra) == len(rb) == 12
        assert a.shm_name.rsplit(".", 1)[0] == b.shm_name.rsplit(".", 1)[0]
