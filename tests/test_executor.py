"""ember.Executor end to end under a real `ember run`."""
import textwrap

import pytest

import test_pyprocess
from test_pyprocess import ok

pytestmark = pytest.mark.timeout(120)


def run_prog(tmp_path, body):
    """``body`` under `ember run` after test_pyprocess's PRELUDE (ember,
    leak_state()) and ``import concurrent.futures as cf``."""
    return test_pyprocess.run_prog(tmp_path, "import concurrent.futures as cf\n"
                                   + textwrap.dedent(body))


def test_submit_map_exceptions(tmp_path):
    out = ok(run_prog(tmp_path, """
        class Boom(Exception):
            pass

        def sq(x):
            return x * x

        def boom():
            raise Boom("no")

        before = leak_state()
        with ember.Executor(max_workers=2) as ex:
            assert isinstance(ex, cf.Executor)
            print("submit", ex.submit(sq, 7).result(), ex.submit(lambda a, b=1: a + b, 1, b=2).result())
            print("map", list(ex.map(sq, range(10))) == [x * x for x in range(10)],
                  list(ex.map(sq, range(1000), chunksize=1)) == [x * x for x in range(1000)],
                  list(ex.map(sq, range(1000), chunksize=7)) == [x * x for x in range(1000)],
                  list(ex.map(pow, [2, 3], [3, 2])), list(ex.map(sq, [])))
            f = ex.submit(boom)
            try:
                f.result()
            except Boom as e:
                print("boom", str(e), "raise Boom" in str(e.__cause__))
            f = ex.submit(threading.Lock)
            print("unpicklable", type(f.exception()).__name__, str(f.exception()))
            try:
                ex.map(sq, [1], chunksize=0)
            except ValueError as e:
                print("chunksize", e)
            fs = [ex.submit(sq, 2), ex.submit(len, [threading.Lock()]), ex.submit(sq, 3)]
            print("bad arg", fs[0].result(), type(fs[1].exception()).__name__, str(fs[1].exception()),
                  fs[2].result())
            big = ex.submit(lambda: bytearray(3 << 20)).result()
            print("big", len(big))
            blob = b"z" * (1 << 20)                      # a function holding a big buffer
            print("closure", list(ex.map(lambda i: len(blob) + i, range(3))))
            def f(x):
                if x == 5:
                    raise Boom(x)
                return x
            for cs in (1, 3):
                it = ex.map(f, range(10), chunksize=cs)
                got = []
                try:
                    for v in it:
                        got.append(v)
                except Boom as e:
                    print("map raises at", e, got)
        try:
            ex.submit(sq, 1)
        except RuntimeError as e:
            print("after shutdown", e)
        import gc; gc.collect()
        after = leak_state()
        print("leaks", after == before, *(() if after == before else (before, after)))
    """))
    assert out.splitlines() == [
        "submit 49 3",
        "map True True True [8, 9] []",
        "boom no True",
        "unpicklable RemoteError TypeError: cannot pickle the result of allocate_lock() (a lock): "
        "cannot pickle '_thread.lock' object",
        "chunksize chunksize must be an int >= 1, got 0",
        "bad arg 4 TypeError cannot pickle '_thread.lock' object 9",
        "big 3145728",
        "closure [1048576, 1048577, 1048578]",
        "map raises at 5 [0, 1, 2, 3, 4]",
        "map raises at 5 [0, 1, 2]",
        "after shutdown cannot schedule new futures after shutdown",
        "leaks True",
    ]


def test_worker_killed_mid_task_is_replaced(tmp_path):
    """A worker SIGKILLed while running a task fails that future only; the
    tasks queued behind it run on a replacement; the executor keeps working."""
    out = ok(run_prog(tmp_path, """
        def sq(x):
            return x * x

        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        before = leak_state()
        with ember.Executor(max_workers=1) as ex:
            first = ex.submit(os.getpid).result()
            fs = [ex.submit(sq, i) for i in range(5)] + [ex.submit(die)] + \\
                 [ex.submit(sq, i) for i in range(5, 10)]
            e = fs[5].exception()
            print("died", type(e).__name__, e.signal,
                  str(e).endswith("was killed by SIGKILL while running this task"))
            print("others", [f.result() for f in fs[:5] + fs[6:]])
            print("replaced", ex.replaced, ex.submit(os.getpid).result() != first)
            print("still works", sum(ex.map(sq, range(100))))
            def maybe_die(x):
                if x == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
                return x
            got = []
            try:
                for v in ex.map(maybe_die, range(6), chunksize=1):
                    got.append(v)
            except ember.ProcessDied as e:
                print("map died at", got, e.signal)
            print("after", list(ex.map(sq, range(4), chunksize=1)), ex.replaced)
        import gc; gc.collect()
        after = leak_state()
        print("leaks", after == before, *(() if after == before else (before, after)))
    """))
    assert out.splitlines() == [
        "died ProcessDied 9 True",
        "others [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",
        "replaced 1 True",
        "still works 328350",
        "map died at [0, 1, 2] 9",
        "after [0, 1, 4, 9] 2",
        "leaks True",
    ]


def test_shutdown_cancel_futures(tmp_path):
    out = ok(run_prog(tmp_path, """
        def held(path):
            while not os.path.exists(path):
                time.sleep(0.01)

        ex = ember.Executor(max_workers=1)
        gate = ex.submit(held, os.path.abspath("go"))
        while not gate.running():          # handed to the worker, alone
            time.sleep(0.01)
        rest = [ex.submit(time.sleep, 0) for _ in range(20)]
        # the gate holds the worker until the shutdown has cancelled the rest
        # (a 0.5 s task that ran out before the shutdown's call let the
        # worker take some: 'cancelled 20' failed on a loaded machine)
        t = threading.Thread(target=ex.shutdown, kwargs={"cancel_futures": True})
        t.start()
        deadline = time.monotonic() + 60
        while not all(f.cancelled() for f in rest) and time.monotonic() < deadline:
            time.sleep(0.01)
        open("go", "w").close()
        t.join()
        print("gate", gate.done(), gate.exception())
        print("cancelled", sum(f.cancelled() for f in rest), all(f.done() for f in rest))
        ex2 = ember.Executor(max_workers=2)
        fs = [ex2.submit(pow, 2, i) for i in range(50)]
        ex2.shutdown(wait=False)
        print("no wait", sum(f.result() for f in fs) == 2 ** 50 - 1)
        ex2.shutdown()
    """))
    assert out.splitlines() == ["gate True None", "cancelled 20 True", "no wait True"]


def test_exit_without_shutdown_finishes_the_work(tmp_path):
    out = ok(run_prog(tmp_path, """
        def note(i):
            time.sleep(0.1)
            with open("done.txt", "a") as f:
                f.write(f"{i}\\n")

        ex = ember.Executor(max_workers=2)
        fs = [ex.submit(note, i) for i in range(6)]
        while not fs[0].running():        # the workers are up: exit now, mid-work
            time.sleep(0.01)
        print("submitted")
    """))
    assert out == "submitted\n"
    assert sorted((tmp_path / "done.txt").read_text().split()) == [str(i) for i in range(6)]
