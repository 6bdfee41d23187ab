"""What the "ember" start method does to make a start cheap, checked end to end."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)


def test_program_modules_travel_compiled_and_a_changed_file_is_read_again(tmp_path):
    """Without a bytecode cache (PYTHONDONTWRITEBYTECODE), the program's own
    modules that ``__main__`` imports are compiled once in the parent and
    shipped with each start; a child whose file changed since imports the
    file as it is now."""
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys
        import helper
        import ember
        from ember.mp import context

        # not definition-only: every child runs this module again (no
        # template run, see test_mp_main_in_template.py), so the codes travel
        STARTED_BY = os.getpid()

        def work(q):
            import helper
            q.put(helper.VALUE)

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            p = ctx.Process(target=work, args=(q,)); p.start()
            print("child", q.get(timeout=60)); p.join()
            codes = context._program_codes()
            print("shipped", codes is not None and os.path.abspath("helper.py") in codes[1])
            with open("helper.py", "w") as f:
                f.write("VALUE = 43 \\n")
            os.utime("helper.py", ns=(10**9, 10**9))
            p = ctx.Process(target=work, args=(q,)); p.start()
            print("changed", q.get(timeout=60)); p.join()
            print("exit", p.exitcode)
    """))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["child 42", "shipped True", "changed 43", "exit 0"], \
        (res.stdout, res.stderr)
    assert not (tmp_path / "__pycache__").exists()


def test_child_failing_before_its_target_prints_the_traceback_and_exits_1(tmp_path):
    """A child whose main module raises when it is imported again (as
    ``__mp_main__``) behaves as spawn's: the traceback on its stderr, exit
    code 1 (not a silent 1); one whose main module calls ``sys.exit(5)``
    there exits with 5."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys
        import ember

        if __name__ == "__mp_main__":
            if os.environ.get("PROG_MODE") == "raise":
                raise RuntimeError("boom while importing the main module")
            sys.exit(5)

        def work():
            pass

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            for mode in ("raise", "exit"):
                os.environ["PROG_MODE"] = mode
                p = ctx.Process(target=work); p.start(); p.join(60)
                print(mode, p.exitcode, flush=True)
    """))
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["raise 1", "exit 5"], (res.stdout, res.stderr)
    assert "RuntimeError: boom while importing the main module" in res.stderr, res.stderr
    assert "Traceback (most recent call last)" in res.stderr, res.stderr


@pytest.mark.parametrize("in_template", ["0", "1"])
def test_main_module_runs_again_without_an_importer_probe_and_leaves_no_cache_entry(
        tmp_path, in_template):
    """The main module the parent compiled is run again in the child with
    no zipimport probe of its file (the child caches "no importer" for it
    while it runs): its ``__file__`` and tracebacks are the file's, and
    nothing is left in ``sys.path_importer_cache`` for it afterwards.  The
    same seen from a child whose main module the template ran
    (``EMBER_MP_MAIN_IN_TEMPLATE`` unset)."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys
        import ember

        SEEN = (__name__, os.path.basename(__file__))

        def work(q):
            import __mp_main__
            q.put((__mp_main__.SEEN, os.path.abspath(__mp_main__.__file__)
                   in sys.path_importer_cache))

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            p = ctx.Process(target=work, args=(q,)); p.start()
            print(q.get(timeout=60)); p.join(60)
            print("exit", p.exitcode)
    """))
    env = dict(os.environ, EMBER_MP_MAIN_IN_TEMPLATE=in_template)
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100, env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["(('__mp_main__', 'prog.py'), False)", "exit 0"], \
        (res.stdout, res.stderr)


def test_child_stdin_is_devnull_at_eof_for_ember_and_subclassed_processes(tmp_path):
    """A child's sys.stdin is a text stream over /dev/null at EOF, as under
    spawn, whether it is the template's ready-made one (an EmberProcess) or
    one _bootstrap opens (a subclass of multiprocessing.Process); the
    shared resource tracker works in a child (a SharedMemory it makes and
    unlinks)."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys
        from multiprocessing import shared_memory
        import ember

        def look(q):
            st, null = os.fstat(sys.stdin.fileno()), os.stat(os.devnull)
            shm = shared_memory.SharedMemory(create=True, size=64)
            shm.close(); shm.unlink()
            q.put((sys.stdin.read(), sys.stdin.closed, (st.st_dev, st.st_ino) ==
                   (null.st_dev, null.st_ino), sys.stdin.encoding))

        class Sub(mp.Process):
            pass

        if __name__ == "__main__":
            mp.set_start_method("ember")
            q = mp.Queue()
            for make in (mp.Process, Sub, mp.Process):
                p = make(target=look, args=(q,)); p.start()
                print(*q.get(timeout=60)); p.join(60); print("exit", p.exitcode)
    """))
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [" False True utf-8", "exit 0"] * 3, (res.stdout, res.stderr)
    assert "leaked" not in res.stderr, res.stderr
