"""The template's partly used pymalloc pools filled before its clones
(``ember.shepherd._spawn.fill_pools``, called by the spare loop in C): a
child's first objects of each size class come from the blocks of one pool
in order, not from free blocks spread over the template's pools.  Each
case runs in a fresh interpreter with the template's imports."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

PROBE = textwrap.dedent(r"""
    import sys
    from ember.shepherd import _spawn
    import ember, multiprocessing, pickle, json  # noqa: F401  (a template's objects)
    K = 8
    objs = [None] * (32 * K)
    sizes = [16 * (c + 1) - 33 for c in range(32)]     # a bytes of one block of class c
    n = _spawn.fill_pools() if sys.argv[1] == "fill" else 0
    for i in range(2 * K, 32 * K):                     # (no allocation freed in between)
        objs[i] = bytes(sizes[i // K])
    in_order = 0
    for c in range(2, 32):        # the 2nd to 8th of a class: one block after another
        a = [id(o) for o in objs[c * K:(c + 1) * K]]
        in_order += all(y - x == 16 * (c + 1) for x, y in zip(a[1:], a[2:]))
    print(n, in_order)
""")


def _probe(mode, **env):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=30)
    assert out.returncode == 0, out.stderr
    return [int(x) for x in out.stdout.split()]


def test_after_the_fill_a_size_class_s_next_blocks_come_in_order():
    n, in_order = _probe("fill")
    _, without = _probe("none")
    # 30 classes (48..512 bytes): in order for all but a class whose pool
    # was opened again from the arena's free pools (its old free list)
    assert n > 0 and in_order >= 27, (n, in_order, without)
    assert without < in_order, (in_order, without)


@pytest.mark.parametrize("env", [{"PYTHONMALLOC": "malloc"}, {"PYTHONMALLOC": "pymalloc_debug"},
                                 {"PYTHONDEVMODE": "1"}])
def test_no_fill_where_the_allocator_is_not_pymalloc_alone(env):
    n, _ = _probe("fill", **env)
    assert n == -1
