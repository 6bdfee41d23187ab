"""Fewer of its template's pages written by an "ember"-method child
(docs/multiprocessing.md, "Pass pagecut"): its call's target named by a
copyreg extension code and found in the cache the template filled, and
its stdin check in C.  Each case runs in a fresh interpreter (the C
parts) or a real runtime (the children)."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)


def _py(code, *args, **kw):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args],
                         capture_output=True, text=True, timeout=60, **kw)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout.split()


def test_the_methods_target_is_pickled_by_its_extension_code():
    """``ember.mp._child.main`` pickles as an EXT4 of its code (not by
    name), and comes back the same function: from the cache in a process
    that imported ``_child`` (as the template has), through the import
    machinery in one that has only the codec (a fresh worker)."""
    made = _py("""
        import pickle, pickletools
        from ember.objects import _codec
        from ember.mp import _child
        data = pickle.dumps((_child.main, (), {}), 5)
        ops = [op.name for op, _, _ in pickletools.genops(data)]
        print(data.hex(), "EXT4" in ops, b"_child" in data)
    """)
    assert made[1:] == ["True", "False"], made
    got = _py("""
        import copyreg, pickle, sys
        from ember.objects import _codec
        code = _codec.EXTENSIONS[("ember.mp._child", "main")]
        print(code in copyreg._extension_cache, "ember.mp._child" in sys.modules)
        fn, args, kwargs = pickle.loads(bytes.fromhex(sys.argv[1]))
        from ember.mp import _child
        print(fn is _child.main, copyreg._extension_cache[code] is fn)
    """, made[0])
    assert got == ["False", "False", "True", "True"], got


def test_a_template_child_finds_its_target_in_the_cache(tmp_path):
    """An "ember"-method child (a clone of a template that imported
    ``_child``) has the target in copyreg's cache before its call came, and
    its stdin check is the C one (``_spawn.template_stdin``)."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import copyreg, multiprocessing as mp, sys
        import ember

        def look(q):
            from ember.objects import _codec
            from ember.mp import _child
            from ember.shepherd import _spawn
            code = _codec.EXTENSIONS[("ember.mp._child", "main")]
            q.put((copyreg._extension_cache.get(code) is _child.main,
                   _child._template_stdin is _spawn.template_stdin,
                   sys.stdin is _spawn.template_stdin()))

        if __name__ == "__main__":
            mp.set_start_method("ember")
            q = mp.Queue()
            for _ in range(3):
                p = mp.Process(target=look, args=(q,)); p.start()
                print(*q.get(timeout=60)); p.join(60)
    """))
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["True True True"] * 3, (res.stdout, res.stderr)


def test_a_program_that_took_the_code_first_keeps_it():
    """A code (or the name) a program registered before ember's import is
    left to it: the target is pickled by name then, and still loads."""
    got = _py("""
        import copyreg, pickle
        copyreg.add_extension("mine", "thing", 0x456D6201)
        from ember.objects import _codec
        from ember.mp import _child
        data = pickle.dumps(_child.main, 5)
        print(copyreg._extension_registry[("mine", "thing")] == 0x456D6201,
              ("ember.mp._child", "main") in copyreg._extension_registry,
              pickle.loads(data) is _child.main)
    """)
    assert got == ["True", "False", "True"], got


STDIN = """
    import os, sys
    from ember.shepherd import _spawn
    print(_spawn.stdin_note(None), _spawn.template_stdin())
    s = open(0, encoding="utf-8", closefd=False)
    print(_spawn.stdin_note(s), _spawn.template_stdin() is s)
    keep = os.dup(0)
    fd = os.open(sys.argv[1], os.O_RDONLY)
    os.dup2(fd, 0)
    print(_spawn.template_stdin())            # another file on fd 0
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    print(_spawn.template_stdin() is s)       # /dev/null again (another open of it)
    os.close(0)
    print(_spawn.template_stdin())            # nothing on fd 0
"""


def test_the_stdin_check_in_c_says_whether_fd_0_is_still_the_noted_file(tmp_path):
    (tmp_path / "f").write_text("x")
    got = _py(STDIN, str(tmp_path / "f"), stdin=subprocess.DEVNULL)
    assert got == ["False", "None", "True", "True", "None", "True", "None"], got
