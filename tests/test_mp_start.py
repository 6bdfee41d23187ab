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
