"""What ember itself makes a program's process and the template import
(docs/multiprocessing.md, "How a child starts"): each module with an
extension is five more mappings in every clone of the template and at every
child's exit, and in every fork the program makes itself."""
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)


def run_prog(tmp_path, body):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(body))
    res = subprocess.run([sys.executable, str(prog)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return res.stdout.split("\n")


def test_the_method_imports_no_multiprocessing_connection_the_program_did_not(tmp_path):
    """An "ember"-method start imports neither multiprocessing.connection
    nor what it brings (tempfile, shutil, random, bz2, lzma), in the parent
    or in the child; imported later by the program, its wait is wrapped
    and its Connections still travel over ember's Queues by fd."""
    out = run_prog(tmp_path, """
        import multiprocessing as mp, sys
        import ember

        HEAVY = ("multiprocessing.connection", "tempfile", "shutil", "random", "bz2", "lzma")

        def child(q):
            q.put([m for m in HEAVY if m in sys.modules])

        def writer(q):
            conn = q.get(timeout=30)        # a stdlib Connection, over an ember Queue
            conn.send("by fd")
            conn.close()

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print("child", q.get(timeout=30))
            p.join(30)
            print("parent", [m for m in HEAVY if m in sys.modules], p.exitcode)
            import multiprocessing.connection as mpc
            print("wrapped", getattr(mpc.wait, "_ember", False))
            r, w = mpc.Pipe(duplex=False)
            p = ctx.Process(target=writer, args=(q,))
            p.start()
            q.put(w)
            w.close()
            print("got", r.recv())
            p.join(30)
            print("exit", p.exitcode)
    """)
    assert out[:5] == ["child []", "parent [] 0", "wrapped True", "got by fd", "exit 0"], out


def test_the_template_imports_no_shepherd_server(tmp_path):
    """The template's (and so a child's) modules hold neither the
    shepherd's server (ember.service with it) nor the queue module; nor
    does the program's process after a join."""
    out = run_prog(tmp_path, """
        import sys
        import ember

        HEAVY = ("ember.shepherd.server", "ember.service", "queue", "heapq")

        def child():
            return [m for m in HEAVY if m in sys.modules]

        if __name__ == "__main__":
            ember.init()
            p = ember.Process(target=child)
            p.start()
            print("child", p.result(30))
            p.join(30)
            print("parent", [m for m in HEAVY if m in sys.modules], p.exitcode)
    """)
    assert out[:2] == ["child []", "parent [] 0"], out


def test_a_start_of_a_target_pickled_by_reference_imports_no_cloudpickle(tmp_path):
    """Neither an "ember"-method start (its process object's pickles name
    ``__main__`` as data) nor an ember.Process start of a program module's
    function imports cloudpickle in the parent; a lambda still travels by
    value."""
    (tmp_path / "helper.py").write_text("def answer():\n    return 42\n")
    out = run_prog(tmp_path, """
        import multiprocessing as mp, sys
        import ember
        import helper

        def trivial():
            pass

        if __name__ == "__main__":
            p = mp.get_context("ember").Process(target=trivial)
            p.start()
            p.join(30)
            print("mp", p.exitcode, "cloudpickle" in sys.modules)
            p = ember.Process(target=helper.answer)
            p.start()
            print("ref", p.result(30), "cloudpickle" in sys.modules)
            p.join(30)
            p = ember.Process(target=lambda: 43)
            p.start()
            print("value", p.result(30), "cloudpickle" in sys.modules)
            p.join(30)
    """)
    assert out[:3] == ["mp 0 False", "ref 42 False", "value 43 True"], out


def test_the_first_start_gives_the_c_heap_back_once_per_process(tmp_path):
    """A process's first start trims its C heap (what ember's runtime and
    the first start freed is given back: a fork of the program copies
    less), once; a forked child's own first start trims its own."""
    out = run_prog(tmp_path, """
        import os
        import ember
        from ember.objects import process
        from ember.shepherd import _spawn

        if __name__ == "__main__":
            ember.init()
            print("before", process._trimmed_in[0] == os.getpid())
            p = ember.Process(target=os.getpid)
            p.start()
            p.join(30)
            print("after", process._trimmed_in[0] == os.getpid(), type(_spawn.trim_heap()).__name__)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    c = ember.Process(target=os.getpid)
                    c.start()
                    c.join(30)
                    os.write(w, b"%d" % (process._trimmed_in[0] == os.getpid()))
                finally:
                    os._exit(0)
            os.close(w)
            print("child", os.read(r, 8).decode())
            os.waitpid(pid, 0)
    """)
    assert out[:3] == ["before False", "after True bool", "child 1"], out


#: What cloudpickle brings (logging with it): no template imports them
#: before a program ships code by value.
_CLOUDPICKLE_ONLY = ("cloudpickle", "logging", "inspect", "dataclasses", "uuid", "platform", "dis")


def test_the_template_imports_cloudpickle_only_for_code_shipped_by_value(tmp_path):
    """The children of an "ember"-method program and of an ember.Process
    target pickled by reference have no cloudpickle (nor what it brings)
    from the template; once the program ships a function by value, the
    template preloads it, and the child unpickles with the template's
    (it did not import it itself: the module is among the objects the
    template froze, not the child's)."""
    out = run_prog(tmp_path, """
        import gc, multiprocessing as mp, os, sys
        import ember

        HEAVY = %r

        def child(q):
            q.put([m for m in HEAVY if m in sys.modules])

        def by_value():
            from ember.shepherd import template
            cp = sys.modules.get("cloudpickle")
            mine = cp is not None and any(o is cp for o in gc.get_objects())
            return cp is not None, mine, "?cloudpickle" in template._preloaded

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print("mp", q.get(timeout=30))
            p.join(30)
            p = ember.Process(target=os.getenv, args=("EMBER_P_UID",))
            p.start()
            print("ref", p.result(30) is not None, "cloudpickle" in sys.modules)
            p.join(30)
            for _ in range(2):
                p = ember.Process(target=by_value)
                p.start()
                print("value", *p.result(30))
                p.join(30)
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print("mp after", "cloudpickle" in q.get(timeout=30))
            p.join(30)
    """ % (_CLOUDPICKLE_ONLY,))
    assert out[:5] == ["mp []", "ref True False", "value True False True",
                       "value True False True", "mp after True"], out


def _pkgutil_prog(top):
    return """
        import gc, multiprocessing as mp, os, sys
        import ember
        %s

        def child(q):
            m = sys.modules.get("pkgutil")
            q.put((m is not None, "typing" in sys.modules,
                   m is not None and any(o is m for o in gc.get_objects())))

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            for _ in range(2):
                p = ctx.Process(target=child, args=(q,))
                p.start()
                print(*q.get(timeout=30))
                p.join(30)
    """ % top


def test_the_template_imports_pkgutil_only_for_children_that_run_the_main_file(tmp_path,
                                                                               monkeypatch):
    """pkgutil (and typing, which it imports) is runpy.run_path's: an
    "ember"-method child whose main module the template ran has neither;
    one that runs the main file itself (a main that does more than define,
    or EMBER_MP_MAIN_IN_TEMPLATE=0) finds it imported by the template (the
    module is among the objects the template froze, not the child's)."""
    assert run_prog(tmp_path, _pkgutil_prog(""))[:2] == ["False False False"] * 2
    ran = ["True True False"] * 2
    assert run_prog(tmp_path, _pkgutil_prog("N = len(os.environ)"))[:2] == ran
    monkeypatch.setenv("EMBER_MP_MAIN_IN_TEMPLATE", "0")
    assert run_prog(tmp_path, _pkgutil_prog(""))[:2] == ran


def test_the_template_imports_no_ctypes(tmp_path):
    """The raw clone is set up and made in C (_spawn.clone_setup,
    clone_parent): no template child has ctypes (_ctypes and libffi)."""
    out = run_prog(tmp_path, """
        import multiprocessing as mp, sys
        import ember

        def child(q):
            q.put([m for m in ("ctypes", "_ctypes") if m in sys.modules])

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(q,))
            p.start()
            print("mp", q.get(timeout=30))
            p.join(30)
    """)
    assert out[:1] == ["mp []"], out
