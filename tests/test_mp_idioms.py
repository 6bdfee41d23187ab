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
