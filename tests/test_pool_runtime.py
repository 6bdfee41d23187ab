"""Pools under a real `ember run`, where the user meets them (issue 7):
pool.create of more than /dev/shm can hold is refused with one clear
message naming both numbers (not repeated, no internal owner_tag)."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

PROG = r'''
from ember.globalservices import pool
from ember.exceptions import PoolError
for size in (1 << 40, 1 << 50):
    try:
        pool.create(size)
    except PoolError as e:
        print(str(e))
    else:
        print("created", size)
d = pool.create(1 << 20)
print("ok", d.m_uid)
'''


@pytest.mark.timeout(90)
def test_pool_runtime_create_larger_than_shm(tmp_path):
    st = os.statvfs("/dev/shm")
    if st.f_bavail * st.f_frsize >= 1 << 40:
        pytest.skip("/dev/shm has 1 TiB free or more here")
    (tmp_path / "prog.py").write_text(textwrap.dedent(PROG))
    res = subprocess.run([sys.executable, "-m", "ember", "run", "prog.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (res.stdout, res.stderr)
    lines = res.stdout.splitlines()
    assert len(lines) == 3, lines
    assert re.match(r"^cannot create a pool of 1099511627776 bytes: /dev/shm has only \d+ bytes free$", lines[0])
    assert re.match(r"^cannot create a pool of 1125899906842624 bytes: /dev/shm has only \d+ bytes free$", lines[1])
    assert re.match(r"^ok \d+$", lines[2])
