"""The "ember" context's Pool (ember.mp.pool): what it does beyond the
stdlib's, checked end to end in a real child interpreter."""
import subprocess
import sys
import textwrap

import pytest

from ember.mp.pool import Pool


def _f(x):
    return x


def test_a_range_is_cut_into_ranges_and_anything_else_into_tuples():
    assert list(Pool._get_tasks(_f, range(10), 4)) == [(_f, range(0, 4)), (_f, range(4, 8)),
                                                       (_f, range(8, 10))]
    assert list(Pool._get_tasks(_f, range(10, 0, -3), 2)) == [(_f, range(10, 4, -3)),
                                                             (_f, range(4, -2, -3))]
    assert list(Pool._get_tasks(_f, range(0), 0)) == []
    assert list(Pool._get_tasks(_f, [1, 2, 3], 2)) == [(_f, (1, 2)), (_f, (3,))]
    assert list(Pool._get_tasks(_f, iter(range(3)), 2)) == [(_f, (0, 1)), (_f, (2,))]


@pytest.mark.timeout(120)
def test_map_and_starmap_over_ranges_give_the_stdlib_results(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import multiprocessing as mp
        import ember

        def sq(x):
            return x * x

        def add(a, b):
            return a + b

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            with ctx.Pool(2) as pool:
                for r in (range(0), range(1), range(10), range(1001), range(5, 100, 7),
                          range(50, -50, -3), range(-10**20, -10**20 + 33)):
                    for cs in (None, 1, 4, 1000):
                        assert pool.map(sq, r, cs) == [x * x for x in r], (r, cs)
                assert pool.map_async(sq, range(77), 5).get(60) == [x * x for x in range(77)]
                assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
                try:
                    pool.starmap(add, range(3))       # an int is no argument tuple
                except TypeError as exc:
                    print("starmap TypeError", "int" in str(exc))
                got = []
                pool.map_async(sq, range(6), 2, callback=got.append).wait(60)
                print(got)
            print("ok")
    """))
    res = subprocess.run([sys.executable, str(prog)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["starmap TypeError True", "[[0, 1, 4, 9, 16, 25]]", "ok"], \
        (res.stdout, res.stderr)


@pytest.mark.timeout(180)
def test_workers_started_at_once_are_all_there_and_a_failed_start_leaves_none(tmp_path):
    """Pool(6) starts its workers from several threads at once: six
    distinct live workers named EmberPoolWorker-N (as the stdlib names
    them), in the pool's list in the order they were made, each taking
    tasks.  When the third start fails, Pool() raises that error and no
    worker is left running."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import multiprocessing as mp, os, time
        import ember
        from ember.mp.context import EmberContext, EmberProcess

        def nap_pid(_):
            time.sleep(0.05)
            return os.getpid()

        class Failing(EmberProcess):
            made = 0

            def start(self):
                Failing.made += 1
                if Failing.made == 3:
                    raise OSError("third start refused")
                super().start()

        class FailingContext(EmberContext):
            Process = Failing

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            with ctx.Pool(6) as pool:
                names = [w.name for w in pool._pool]
                nums = [int(n.rsplit("-", 1)[1]) for n in names]
                print(all(n.startswith("EmberPoolWorker-") for n in names), nums == sorted(nums),
                      len({w.pid for w in pool._pool}), all(w.is_alive() for w in pool._pool))
                seen = set()
                for _ in range(100):
                    seen |= set(pool.map(nap_pid, range(12), 1))
                    if len(seen) == 6:
                        break
                print(sorted(seen) == sorted(w.pid for w in pool._pool))
            try:
                FailingContext().Pool(6)
            except OSError as exc:
                print("raised", exc)
            time.sleep(0.5)
            print("left", [p for p in mp.active_children() if p.is_alive()])
    """))
    res = subprocess.run([sys.executable, str(prog)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=170)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["True True 6 True", "True", "raised third start refused",
                                       "left []"], (res.stdout, res.stderr)


@pytest.mark.timeout(120)
def test_a_result_larger_than_the_pool_fails_its_task_not_the_worker(tmp_path):
    """A result that cannot travel (larger than the runtime's pool: an
    ember queue's limit, where spawn's pipe has none) fails its task with
    the stdlib's ``MaybeEncodingError``, which names the reason, and the
    worker goes on.  The stdlib's worker wraps the failed put in that
    error, which holds the result's repr: as large as the result, it
    failed to travel too, the worker died on it and ``apply`` waited
    forever."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import multiprocessing as mp, os
        import ember

        def big(n):
            return b"x" * n

        if __name__ == "__main__":
            ember.init(default_pool_size=32 << 20)
            ctx = mp.get_context("ember")
            with ctx.Pool(1) as pool:
                pid = pool.apply(os.getpid)
                try:
                    pool.apply_async(big, (40 << 20,)).get(60)
                except mp.pool.MaybeEncodingError as exc:
                    print("raised", "PoolExhausted" in exc.exc, exc.value[:5],
                          len(exc.value) < (1 << 20))
                print("after", pool.apply(big, (3,)), pool.apply(os.getpid) == pid)
    """))
    res = subprocess.run([sys.executable, str(prog)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["raised True b'xxx True", "after b'xxx' True"], \
        (res.stdout, res.stderr)
