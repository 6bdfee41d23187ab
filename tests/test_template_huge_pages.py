"""The template's heap in huge pages (``ember.shepherd._spawn.huge_pages``,
called at each of the template's freezes): each 2 MiB-aligned 2 MiB of its
C heap and pymalloc arenas that is mostly resident is one huge page, so
that a clone copies one page table entry for it, not 512, and the child's
exit unmaps them as one folio; a sparse mapping is left as it is."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_usable():
    try:
        with open(_THP) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


needs_thp = pytest.mark.skipif(not _thp_usable(), reason="no transparent huge pages here")

PROBE = textwrap.dedent(r"""
    import mmap, sys
    from ember.shepherd import _spawn
    objs = [bytearray(100) for _ in range(200000)]      # ~30 MB of arenas and heap
    sparse = mmap.mmap(-1, 64 << 20)
    for i in range(0, 64 << 20, 2 << 20):                # a page per 2 MiB
        sparse[i] = 1
    import ctypes
    addr = ctypes.addressof(ctypes.c_char.from_buffer(sparse))
    done = _spawn.huge_pages()
    huge = rss = 0
    with open("/proc/self/smaps") as f:
        mine = False
        for line in f:
            if "-" in line.split()[0] and len(line.split()[0]) > 12:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                mine = lo <= addr < hi
            elif line.startswith("AnonHugePages:"):
                huge += int(line.split()[1])
            elif mine and line.startswith("Rss:"):
                rss += int(line.split()[1])
    print(done, huge, rss)
""")


@needs_thp
def test_a_resident_heap_is_made_huge_pages_and_a_sparse_mapping_is_not():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    done, huge_kb, sparse_rss_kb = (int(x) for x in out.stdout.split())
    if done == 0:
        pytest.skip("the kernel made no huge page (no MADV_COLLAPSE?)")
    assert done % (2 << 20) == 0 and huge_kb * 1024 >= done, (done, huge_kb)
    assert sparse_rss_kb <= 32 * 4 + 64, sparse_rss_kb        # its 32 pages, not 64 MB


PROG = textwrap.dedent(r"""
    import multiprocessing as mp
    import os
    import struct
    import sys

    import ember


    def huge_pages_mapped():
        # pages of this child's private anonymous memory (inherited from the
        # template where the child has not written) that are in a huge page
        # (/proc/kpageflags bit 22, THP)
        n = 0
        with open("/proc/self/pagemap", "rb") as pm, open("/proc/kpageflags", "rb") as kf, \
                open("/proc/self/maps") as maps:
            for line in maps:
                f = line.split()
                if f[1] != "rw-p" or f[4] != "0" or (len(f) > 5 and f[5] != "[heap]"):
                    continue
                lo, hi = (int(x, 16) for x in f[0].split("-"))
                pm.seek(lo // 4096 * 8)
                data = pm.read((hi - lo) // 4096 * 8)
                for (e,) in struct.iter_unpack("<Q", data):
                    if e >> 63 & 1 and e & ((1 << 55) - 1):
                        kf.seek((e & ((1 << 55) - 1)) * 8)
                        n += struct.unpack("<Q", kf.read(8))[0] >> 22 & 1
        return n


    def report(q):
        q.put(huge_pages_mapped())


    if __name__ == "__main__":
        p = ember.Process(target=huge_pages_mapped)
        p.start()
        print("process", p.result(60))
        p.join(60)
        ctx = mp.get_context("ember")
        q = ctx.Queue()
        for _ in range(2):           # (the second from the program's template)
            c = ctx.Process(target=report, args=(q,))
            c.start()
            got = q.get(timeout=60)
            c.join(60)
            assert c.exitcode == 0, c.exitcode
        print("mp", got)
""")


@needs_thp
@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/proc/kpageflags", os.R_OK),
                    reason="reading the page frames a process maps needs root")
@pytest.mark.parametrize("on", [True, False])
def test_a_template_child_maps_the_template_s_heap_in_huge_pages(tmp_path, on):
    (tmp_path / "prog.py").write_text(PROG)
    env = dict(os.environ)
    env.pop("EMBER_TEMPLATE_HUGE_PAGES", None)
    if not on:
        env["EMBER_TEMPLATE_HUGE_PAGES"] = "0"
    res = subprocess.run([sys.executable, "-m", "ember", "run", "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100, env=env)
    assert res.returncode == 0, (res.stdout, res.stderr)
    got = dict(line.split() for line in res.stdout.splitlines())
    if on:
        # 512 pages a huge page; the child's own writes split some of them
        assert int(got["process"]) >= 256 and int(got["mp"]) >= 256, got
    else:
        assert got == {"process": "0", "mp": "0"}, got
