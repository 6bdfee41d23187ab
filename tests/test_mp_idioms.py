"""multiprocessing programs as users write them, run under the "ember"
start method beside spawn: the ways a program is started (``python -m
pkg``, a directory) and the ways it ends (an unhandled KeyboardInterrupt),
each compared with what spawn does with the same program."""
import signal
import subprocess
import sys
import textwrap

import pytest

METHODS = ["ember", "spawn"]

_PKG_MAIN = """
    import multiprocessing as mp, os, sys
    import ember

    def main():
        print("the program's main ran in the child", flush=True)

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[1])
        p = mp.Process(target=main)
        p.start()
        p.join()
        print("exit", p.exitcode, flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["python -m pkg", "python dir"])
@pytest.mark.parametrize("method", METHODS)
def test_a_packages_main_is_not_the_templates(tmp_path, how, method):
    """A program run as ``python -m pkg`` (its ``pkg/__main__.py``) or as
    ``python dir`` (a directory with a ``__main__.py``): spawn does not run
    such a main again in the child, whose ``__main__`` is then a module of
    its own, so a target of the parent's ``__main__`` cannot be found
    there.  Under "ember" the child's ``__main__`` was the template's
    (``ember._template``): a target named ``main`` was found there, the
    template's own, and run (``OSError: Socket operation on non-socket``)."""
    where = tmp_path / "pkg"
    where.mkdir()
    (where / "__main__.py").write_text(textwrap.dedent(_PKG_MAIN))
    if how == "python -m pkg":
        (where / "__init__.py").write_text("")
        cmd = [sys.executable, "-m", "pkg", method]
    else:
        cmd = [sys.executable, str(where), method]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["exit 1"], (res.stdout, res.stderr)
    assert "Can't get attribute 'main' on <module '__main__'" in res.stderr, res.stderr
    assert "ember._template" not in res.stderr, res.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_an_unhandled_keyboard_interrupt_ends_the_program_by_sigint(tmp_path, method):
    """A program ended by an unhandled KeyboardInterrupt (Ctrl-C) dies by
    SIGINT, as Python makes it (bpo-1054041: so that a shell or ``make``
    stops too), with the embedded runtime brought up by the method as
    without it.  It exited 1: the runtime's teardown at exit built its
    first ``ProcessDetach`` message, whose constructor was compiled by an
    ``exec()`` of a str, and that clears CPython's record of the
    unhandled KeyboardInterrupt."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import multiprocessing as mp, sys
        import ember

        if __name__ == "__main__":
            mp.set_start_method(sys.argv[1])
            p = mp.Process(target=print, args=("child",))
            p.start()
            p.join()
            raise KeyboardInterrupt
    """))
    res = subprocess.run([sys.executable, str(prog), method], cwd=tmp_path,
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == -signal.SIGINT, (res.returncode, res.stdout, res.stderr)
    assert res.stdout == "child\n"
    assert res.stderr.rstrip().endswith("KeyboardInterrupt"), res.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_types_registered_on_the_stdlibs_sync_manager(tmp_path, method):
    """``multiprocessing.managers.SyncManager.register(...)`` before
    ``multiprocessing.Manager()``: the manager makes the registered types,
    whose proxies work in children.  Under "ember" ``Manager()`` is
    ``ember.Manager()``, whose class had its own registry only:
    ``AttributeError: 'SyncManager' object has no attribute 'Counter'``."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import collections, multiprocessing as mp, sys
        from multiprocessing.managers import DictProxy, SyncManager
        import ember

        class Counter:
            def __init__(self, n=0):
                self.n = n
            def incr(self):
                self.n += 1
                return self.n

        SyncManager.register("Counter", Counter)
        SyncManager.register("defaultdict", collections.defaultdict, DictProxy)

        def work(c, d):
            for _ in range(10):
                c.incr()
            d["k"] = d["k"] + 1

        if __name__ == "__main__":
            mp.set_start_method(sys.argv[1])
            with mp.Manager() as m:
                c, d = m.Counter(5), m.defaultdict(int)
                ps = [mp.Process(target=work, args=(c, d)) for _ in range(2)]
                for p in ps:
                    p.start()
                    p.join()
                print([p.exitcode for p in ps], c.incr(), d["k"], d["other"])
                print(hasattr(m, "Iterator"), hasattr(m, "nothing"))
    """))
    res = subprocess.run([sys.executable, str(prog), method], cwd=tmp_path,
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["[0, 0] 26 2 0", "False False"], (res.stdout, res.stderr)


def _waiting(pid):
    """Whether process ``pid``'s main thread is blocked in poll(2),
    ppoll(2) (ember's join, on a pidfd) or wait4(2) (spawn's) (x86-64 and
    aarch64 numbers; /proc/PID/syscall)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            nr = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return nr in ("7", "271", "61", "73", "260")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("first", ["event", "start"])
@pytest.mark.parametrize("when", ["join", "exit"])
@pytest.mark.parametrize("method", METHODS)
def test_ctrl_c_while_the_program_waits_for_its_children(tmp_path, method, when, first):
    """Ctrl-C (SIGINT to the terminal's process group) while the program
    waits for a child: in its ``p.join()`` (the program then ends on the
    KeyboardInterrupt) or, its main module ended, in multiprocessing's wait
    at exit.  Under spawn the child, in the same group, gets it too and
    the program ends.  Under "ember" children are in process groups of
    their own: the child ran on and the program waited for its whole run
    at exit (under ``ember run``: the launcher's grace, then everything
    killed, exit 137), but for a main that ended on the interrupt when
    ember's exit hook ran before multiprocessing's (no ember object made
    before the first start).  Now the interrupt is passed on to the
    children, whichever hook waits, and the program waits on for them
    before the runtime's teardown: the child's clean-up after its
    KeyboardInterrupt, made slow, writes its line and its traceback whole
    (a Ctrl-C in multiprocessing's wait at exit ended that wait, and the
    teardown killed the child mid-traceback: with a quick child a race, the
    test failing 27 runs in 30 at 37a3c9b, with the slow one every run)."""
    import os
    import time

    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import atexit, multiprocessing as mp, sys, time
        import ember

        def line(text):           # one write (an unbuffered print writes the newline apart)
            sys.stdout.write(text + "\\n")
            sys.stdout.flush()

        def sleeper():
            try:
                line("ready")
                time.sleep(300)
            except KeyboardInterrupt:
                time.sleep(0.5)               # a clean-up that takes a while
                line("cleaned up")
                raise

        if __name__ == "__main__":
            mp.set_start_method(sys.argv[1])
            if sys.argv[3] == "event":
                mp.Event()        # multiprocessing's exit hook then runs before ember's
            p = mp.Process(target=sleeper)
            p.start()
            if sys.argv[2] == "join":
                p.join()
            else:
                atexit.register(line, "exiting")                  # the first exit hook
    """))
    proc = subprocess.Popen([sys.executable, str(prog), method, when, first], cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = {"ready\n"} if when == "join" else {"ready\n", "exiting\n"}
        assert {proc.stdout.readline() for _ in lines} == lines
        while not _waiting(proc.pid):       # waiting for the child
            assert proc.poll() is None
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(("still running 60 s after the Ctrl-C", exc.stderr)) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == (-signal.SIGINT if when == "join" else 0), (proc.returncode, err)
    assert out == "cleaned up\n", (out, err)          # the program waited for the child's end
    child = err[err.index("Process Process-1:"):]          # the child's traceback
    assert "KeyboardInterrupt" in child, err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("first", ["event", "start"])
def test_a_second_ctrl_c_at_exit_ends_the_program(tmp_path, first):
    """A second Ctrl-C while the program waits at exit for a child still
    busy with the first (its clean-up here never ends) ends the wait: the
    program exits, the teardown ending the child, whichever exit hook
    waits first."""
    import os
    import time

    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import atexit, multiprocessing as mp, sys, threading
        import ember

        def line(text):
            sys.stdout.write(text + "\\n")
            sys.stdout.flush()

        def sleeper():
            try:
                line("ready")
                threading.Event().wait()
            except KeyboardInterrupt:
                line("cleaning up")
                threading.Event().wait()      # a clean-up that never ends

        if __name__ == "__main__":
            mp.set_start_method("ember")
            if sys.argv[1] == "event":
                mp.Event()        # multiprocessing's exit hook then runs before ember's
            p = mp.Process(target=sleeper)
            p.start()
            atexit.register(line, "exiting")
    """))
    proc = subprocess.Popen([sys.executable, str(prog), first], cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert {proc.stdout.readline() for _ in range(2)} == {"ready\n", "exiting\n"}
        for expect in ("cleaning up\n", None):
            while not _waiting(proc.pid):
                assert proc.poll() is None
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGINT)
            if expect:
                assert proc.stdout.readline() == expect
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(("still running 60 s after the second Ctrl-C",
                                  exc.stderr)) from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert out == "", (out, err)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_the_workers_of_a_killed_pools_process_exit(tmp_path, method):
    """A child that made a Pool is SIGKILLed (the OOM killer, a kill by
    hand): its pool's workers exit, as spawn's do when their task pipe
    closes.  Under "ember" they waited on the pool's task queue until the
    runtime's teardown, the top-level program's whole run."""
    from procs import wait_gone

    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import multiprocessing as mp, os, signal, sys, time
        import ember

        def child(q):
            pool = mp.Pool(2)
            pool.map(abs, range(4))
            q.put([w.pid for w in pool._pool])
            time.sleep(300)

        if __name__ == "__main__":
            mp.set_start_method(sys.argv[1])
            q = mp.Queue()
            p = mp.Process(target=child, args=(q,))
            p.start()
            pids = q.get(timeout=60)
            os.kill(p.pid, signal.SIGKILL)
            p.join()
            print(*pids, flush=True)
            sys.stdin.readline()          # the test looks, then lets us end
    """))
    proc = subprocess.Popen([sys.executable, str(prog), method], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pids = [int(x) for x in proc.stdout.readline().split()]
        assert len(pids) == 2, proc.stderr.read() if proc.poll() is not None else pids
        left = wait_gone(pids, timeout=30.0)
    finally:
        out, err = proc.communicate("\n", timeout=60)
    assert left == [], (left, err)
    assert proc.returncode == 0, err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_children_draw_different_numpy_random_numbers(tmp_path, method):
    """A program that used ``numpy.random`` before its children start:
    each child's global ``numpy.random`` state is its own, as spawn's child
    seeds it afresh at its import.  Under "ember" the template had
    imported ``numpy.random`` for the children (the parent's modules are
    preloaded), seeded once there, and every child (a Pool's workers, a
    Process in each round) drew the same numbers; ``random`` was never
    affected (it reseeds itself after a fork)."""
    pytest.importorskip("numpy")
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import multiprocessing as mp, os, random, sys
        import numpy as np
        import ember

        def draw(i):
            return float(np.random.rand()), np.random.randint(1 << 30), random.random()

        def put_draw(q):
            q.put(draw(0))

        if __name__ == "__main__":
            mp.set_start_method(sys.argv[1])
            np.random.rand()
            q = mp.Queue()
            draws = []
            for _ in range(2):
                ps = [mp.Process(target=put_draw, args=(q,)) for _ in range(3)]
                for p in ps:
                    p.start()
                draws += [q.get(timeout=60) for _ in ps]
                for p in ps:
                    p.join()
            with mp.Pool(3) as pool:
                draws += pool.map(draw, range(3), chunksize=1)
            print(len(draws), *(len({d[k] for d in draws}) for k in range(3)))
    """))
    res = subprocess.run([sys.executable, str(prog), method], cwd=tmp_path,
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["9", "9", "9", "9"], (res.stdout, res.stderr)
