"""A template of the program's own (ember.shepherd.template's program
templates, ember.mp._mainload.become): the children of an "ember"-method
program whose main module ran in the warm template are cloned from a
process that has that run and the preparation every child of it shares in
place; they see what the warm template's children see, plain
``ember.Process`` children never see it, and its death costs nothing but
its speed."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(180)


def _run(tmp_path, main, args=(), timeout=150):
    (tmp_path / "prog.py").write_text(textwrap.dedent(main))
    res = subprocess.run([sys.executable, "prog.py", *args], cwd=tmp_path, capture_output=True,
                         text=True, timeout=timeout)
    assert res.returncode == 0, (res.stdout, res.stderr)
    return res.stdout.splitlines()


_PROG = """
    import multiprocessing as mp
    import os
    import signal
    import sys
    import time

    import ember
    import helper

    TABLE = {i: i * i for i in range(4)}

    def report(q):
        import multiprocessing
        import os
        import sys
        from multiprocessing import process
        from ember.mp import _mainload
        import helper
        p = _mainload.program
        q.put((p[0] if p else None, p[2]["pid"] if p else None,
               (sys.argv, sys.path, os.getcwd(), process.ORIGINAL_DIR,
                multiprocessing.get_start_method(), helper.VALUE, TABLE,
                sys.modules["__main__"] is sys.modules["__mp_main__"],
                process.current_process().name, bytes(process.current_process().authkey),
                type(process.current_process().authkey).__name__)))

    def plain():
        import os
        import sys
        from ember.mp import _mainload
        return (_mainload.program, "helper" in sys.modules, sys.path, os.getcwd())

    def start(ctx, q, i):
        p = ctx.Process(target=report, args=(q,), name=f"child-{i}")
        p.start()
        got = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        return got

    def want(name, state):
        return (sys.argv, sys.path, os.getcwd(), mp.process.ORIGINAL_DIR, mp.get_start_method(),
                42, TABLE, True, name, bytes(mp.current_process().authkey),
                "AuthenticationString") == state

    def started_until(ctx, q, seen, what):
        for i in range(60):
            key, pid, state = start(ctx, q, i)
            assert want(f"child-{i}", state), state
            if seen(key, pid):
                return key, pid
        raise AssertionError(what)

    if __name__ == "__main__":
        mp.set_start_method("ember")
        ctx = mp.get_context()
        q = ctx.Queue()
        p = ember.Process(target=plain); p.start(); before = p.result(60); p.join(60)
        key, pid = started_until(ctx, q, lambda k, p: k is not None, "no program template")
        print("program", key is not None)
        p = ember.Process(target=plain); p.start(); after = p.result(60); p.join(60)
        print("plain", after[0], after[1], after == before)
        if "--kill" in sys.argv:
            os.kill(pid, signal.SIGKILL)
            started_until(ctx, q, lambda k, p: p is not None and p != pid, "no new template")
            for i in range(200):          # the dead one reaped (not left a zombie)
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().split(")")[-1].split()[0] not in "ZX":
                            break
                except FileNotFoundError:
                    print("reaped")
                    break
                time.sleep(0.05)
"""


def test_children_come_from_the_programs_template_and_see_what_they_saw(tmp_path):
    """After a few starts the children of a definition-only main come from
    its own template, and each sees what spawn's child sees (its argv,
    sys.path, working directory, ORIGINAL_DIR, start method, name and
    authkey, the main module's definitions, the program module); a plain
    ``ember.Process`` child after them sees none of it (the same as one
    before them)."""
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    out = _run(tmp_path, _PROG, args=("x", "y"))
    assert out == ["program True", "plain None False True"], out


def test_a_program_template_killed_is_reaped_and_made_again(tmp_path):
    """A program's template SIGKILLed while it serves: the starts after it
    go on (the warm template's spares, exactly as before), the shepherd
    reaps it, and a new one is made for the program."""
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    out = _run(tmp_path, _PROG, args=("--kill",))
    assert out == ["program True", "plain None False True", "reaped"], out


def test_a_childs_start_for_another_run_puts_the_template_back(tmp_path):
    """In a child of a program's template whose start names another run
    (``_mainload.install``), what ``become`` replaced is put back first:
    ``sys.path``, the working directory, ``ORIGINAL_DIR``, the start method,
    ``__main__``, the program's modules; the child then goes on as one of
    the warm template."""
    (tmp_path / "prog.py").write_text("VALUE = 1\n")
    other = tmp_path / "other"
    other.mkdir()
    code = textwrap.dedent(f"""
        import multiprocessing, os, sys, types
        from multiprocessing import process, spawn
        from ember.mp import _mainload as ml
        from ember._filecache import stat_key
        prog = {str(tmp_path / "prog.py")!r}
        mod, helper = types.ModuleType("__mp_main__"), types.ModuleType("helper_pt")
        ml._mains["k"] = ("entry", ml._Main(prog, ["/x"], ["prog.py"], {str(other)!r}, mod,
                                            {{"helper_pt": helper}}, {{prog: stat_key(prog)}},
                                            "/orig", "spawn"))
        before = (sys.path[:], os.getcwd(), process.ORIGINAL_DIR, multiprocessing.get_start_method(),
                  sys.modules["__main__"], "__mp_main__" in sys.modules, len(spawn.old_main_modules))
        print("become", ml.become("k"), sys.path == ["/x"], os.getcwd() == {str(other)!r},
              process.ORIGINAL_DIR, multiprocessing.get_start_method(), sys.modules["__main__"] is mod,
              "helper_pt" in sys.modules)
        prep = {{"init_main_from_path": prog, "sys_path": ["/x"], "sys_argv": ["prog.py"],
                 "dir": {str(other)!r}, "orig_dir": "/orig", "start_method": "spawn"}}
        print("same", ml.install(prep, "k"), sorted(ml.preset))
        print("other", ml.install(dict(prep, sys_argv=["prog.py", "2"]), "k"), ml.program, ml.preset)
        after = (sys.path[:], os.getcwd(), process.ORIGINAL_DIR, multiprocessing.get_start_method(),
                 sys.modules["__main__"], "__mp_main__" in sys.modules, len(spawn.old_main_modules))
        print("back", after == before, "helper_pt" in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "become True True True /orig spawn True True",
        "same True ['dir', 'orig_dir', 'start_method', 'sys_path']",
        "other False None {}",
        "back True False"], res.stdout


_TURNS = """
    import multiprocessing as mp

    import ember
    from ember.objects import process as P_

    def triv():
        return 1

    def leased(argv_of):
        # the pid of the lease a start of this argv would take, if any
        for lease in (P_._lease, P_._parked):
            if lease is not None and lease.argv == argv_of and P_._settle(lease):
                return lease.desc.os_pid
        return None

    if __name__ == "__main__":
        ctx = mp.get_context("ember")
        for i in range(6):                    # the program's template made, its spares too
            p = ctx.Process(target=triv); p.start(); p.join(60)
        used = []
        for i in range(8):
            p = ember.Process(target=triv)
            before = leased(P_._worker_argv("template"))
            p.start(); p.join(60)
            used.append(before is not None and before == p.pid)
            q = ctx.Process(target=triv)
            q.start(); q.join(60)
        print("plain starts on their lease", sum(used[2:]), "of", len(used) - 2)
"""


def test_starts_of_both_kinds_in_turn_drop_no_lease(tmp_path):
    """An mp start's worker argv names its program's template, a plain
    ``ember.Process`` start's does not, so each kind leases its own spare;
    the other kind's is kept aside (``process._parked``), not dropped, so
    plain and mp starts in turn each take the lease of its kind (dropping
    it cost each start a kill, a wait and a start without a lease: 2.3-3.4
    -> 7.3-8.9 ms a start, 2026-12-05 05:43, not quiet, load 3.5).  Fails
    with the other kind's lease dropped: 0 of 6."""
    out = _run(tmp_path, _TURNS)
    assert out == ["plain starts on their lease 6 of 6"], out


def test_a_child_runs_in_the_directory_made_again_under_the_same_name(tmp_path):
    """The working directory removed and made again under the same name
    between two starts: each child runs in the new one, as spawn's (which
    changes to it by name).  A lease (of the program's template, or the
    warm one) entered its directory when it was made, and the start sent
    it none when the name was the lease's: the first child after ran in
    the removed directory (its relative open: FileNotFoundError)."""
    out = _run(tmp_path, """
        import multiprocessing as mp
        import os
        import shutil

        def write(q):
            from ember.mp import _mainload
            try:
                with open("out.txt", "w") as f:
                    f.write("x")
                q.put(("ok", _mainload.program is not None))
            except OSError as exc:
                q.put((type(exc).__name__, _mainload.program is not None))

        def start(ctx, q):
            p = ctx.Process(target=write, args=(q,)); p.start()
            got = q.get(timeout=60); p.join(60)
            return got

        if __name__ == "__main__":
            import ember
            work = os.path.abspath("work")
            os.mkdir(work); os.chdir(work)
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            # until the program's template serves a start (it serves one only
            # when it holds a spare made since its last: under load the warm
            # template's spare may serve the next, which never waits for it)
            print("program", any(start(ctx, q)[1] for _ in range(60)))
            shutil.rmtree(work); os.mkdir(work); os.chdir(work)
            for i in range(3):
                got = start(ctx, q)
                print(i, got[0], os.path.exists("out.txt"))
                if os.path.exists("out.txt"):
                    os.unlink("out.txt")
    """)
    assert out == ["program True", "0 ok True", "1 ok True", "2 ok True"], out


_CHANGES = """
    import multiprocessing as mp
    import os
    import sys

    import ember
    import helper

    def report(q):
        import os
        import sys
        from multiprocessing import process
        from ember.mp import _mainload
        q.put((sys.argv is _mainload.preset_argv,
               (sys.argv, sys.path, os.getcwd(), process.ORIGINAL_DIR, mp.get_start_method(),
                helper.VALUE, process.current_process().name,
                bytes(process.current_process().authkey),
                type(process.current_process().authkey).__name__)))

    def start(ctx, q, i):
        p = ctx.Process(target=report, args=(q,), name=f"child-{i}")
        p.start()
        got = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        return got

    def want(i):
        return (sys.argv, sys.path, os.getcwd(), mp.process.ORIGINAL_DIR, mp.get_start_method(),
                42, f"child-{i}", bytes(mp.current_process().authkey), "AuthenticationString")

    def until_preset(ctx, q, i):
        # starts until one comes from the program's template with the parent's
        # values set there (the child sets none of them)
        for _ in range(60):
            i += 1
            hit, state = start(ctx, q, i)
            assert state == want(i), (state, want(i))
            if hit:
                return i
        raise AssertionError("no child with the template's values")

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[1])
        ctx = mp.get_context()
        q = ctx.Queue()
        i = until_preset(ctx, q, 0)
        for change in ("argv", "path", "cwd", "authkey"):
            if change == "argv":
                sys.argv.append("more")         # in place
            elif change == "path":
                sys.path.insert(1, os.path.abspath("lib"))
            elif change == "cwd":
                os.chdir("sub")
            else:
                mp.current_process().authkey = b"k" * 32
            i += 1
            hit, state = start(ctx, q, i)       # the first start after the change
            assert state == want(i), (change, state, want(i))
            print(change, "seen")
            i = until_preset(ctx, q, i)         # the program's template of the new values
        print("preset again")
"""


def test_a_change_between_two_starts_reaches_the_next_child(tmp_path):
    """A child of the program's template whose values (``sys.path``,
    ``argv``, working directory, ``ORIGINAL_DIR``, start method: spawn's
    data but the name and authkey) are the parent's sets none of them
    (``_mainload.preset_hit``: the parent's pickle of them compared as
    bytes with the template's, and the files' versions as the parent saw
    them); ``sys.argv`` changed in place, ``sys.path``, the working
    directory or the authkey changed between two starts reach the very
    next child, as spawn's, and a template of the new values is made
    (failed on main: no preset_argv, every child set them all)."""
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "sub").mkdir()
    out = _run(tmp_path, _CHANGES, args=("ember",))
    assert out == ["argv seen", "path seen", "cwd seen", "authkey seen", "preset again"], out


def test_preset_hit_is_exact(tmp_path):
    """``_mainload.preset_hit`` in a program's template (``become``): True
    only for the bytes of the very values it set (``context.shared_bytes``)
    and of the versions its run read, in the order of the entry's files,
    under its key; any other value, version, file or key is a miss; and a
    run that read a file its entry does not name gives no preset at all."""
    (tmp_path / "prog.py").write_text("VALUE = 1\n")
    (tmp_path / "helper_pe.py").write_text("VALUE = 2\n")
    code = textwrap.dedent(f"""
        import types
        from ember.mp import _mainload as ml
        from ember.mp.context import shared_bytes
        from ember._filecache import stat_key
        prog, helper = {str(tmp_path / "prog.py")!r}, {str(tmp_path / "helper_pe.py")!r}
        st, hst = stat_key(prog), stat_key(helper)
        def main(files, stats):
            return ml._Main(prog, ["/x", "/y"], ["prog.py", "a"], {str(tmp_path)!r},
                            types.ModuleType("__mp_main__"), {{}}, stats, "/orig", "spawn", files)
        ml._mains["k"] = ("entry", main([helper], {{prog: st, helper: hst}}))
        print("become", ml.become("k"))
        values = [prog, ["/x", "/y"], ["prog.py", "a"], {str(tmp_path)!r}, "/orig", "spawn"]
        sb, vb = shared_bytes(values), shared_bytes([st, hst])
        print("same", ml.preset_hit("k", sb, vb), ml.preset_argv == ["prog.py", "a"])
        for i, other in enumerate((prog + "x", ["/x"], ["prog.py", "b"], "/", None, "fork")):
            print(i, ml.preset_hit("k", shared_bytes(values[:i] + [other] + values[i + 1:]), vb))
        print("version", ml.preset_hit("k", sb, shared_bytes([st, (hst[0] + 1, hst[1])])))
        print("files", ml.preset_hit("k", sb, shared_bytes([st])))
        print("key", ml.preset_hit("j", sb, vb))
        ml._leave()
        print("left", ml.preset_hit("k", sb, vb))
        ml._mains["k"] = ("entry", main([], {{prog: st, helper: hst}}))
        print("unnamed file", ml.become("k"), ml.preset_shared, ml.preset_hit("k", sb, vb))
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "become True", "same True True", "0 False", "1 False", "2 False", "3 False", "4 False",
        "5 False", "version False", "files False", "key False", "left False",
        "unnamed file True None False"], res.stdout


def test_the_program_template_rehearses_a_childs_start_and_puts_everything_back(tmp_path):
    """``_mainload.become`` runs a child's path up to its target
    (``_child.rehearse``: ``_start`` and ``_boot`` on a process object made
    there) until CPython has quickened and specialized its code, so that
    each child reads module and instance attributes through specialized
    instructions; what the runs set in the template is put back (its
    process object's name and authkey, ``sys.argv``, ``sys.stdin``,
    ``parent_process()``, the process counter, ``_children``, the start
    method, the main thread's native id, multiprocessing's finalizers, the
    resource tracker); with an after-fork hook registered (its call would
    run in the template) it is not rehearsed, and the hook is not called
    (failed on main: no rehearsal, the code not specialized)."""
    (tmp_path / "prog.py").write_text("VALUE = 1\n")
    code = textwrap.dedent(f"""
        import dis, sys, threading, types
        from multiprocessing import context as mpctx, process, util
        from ember.mp import _child, _mainload as ml
        from ember._filecache import stat_key
        prog = {str(tmp_path / "prog.py")!r}
        def main():
            return ml._Main(prog, list(sys.path), ["prog.py"], {str(tmp_path)!r},
                            types.ModuleType("__mp_main__"), {{}}, {{prog: stat_key(prog)}},
                            {str(tmp_path)!r}, "spawn", [])
        class Res:
            pass
        kept = Res()
        util.Finalize(kept, print, args=("finalized",))
        cur = process.current_process()
        def state():
            return (cur.name, bytes(cur.authkey), sys.argv, sys.stdin, process.current_process(),
                    process.parent_process(), process._process_counter, process._children,
                    mpctx._default_context._actual_context,
                    threading.main_thread().native_id, dict(util._finalizer_registry),
                    _child._tracker[0])
        def specialized():
            return sorted({{i.opname for f in (_child._start, _child._boot)
                           for i in dis.get_instructions(f, adaptive=True)
                           if i.opname in ("LOAD_ATTR_MODULE", "LOAD_GLOBAL_MODULE")}})
        ml._mains["k"] = ("entry", main())
        print("become", ml.become("k"), ml.preset_shared is not None)
        print("specialized", specialized())
        before = state()
        print("again", _child.rehearse())
        after = state()
        # (the same objects; the name, authkey, native id and finalizers equal)
        print("same", [i for i, (a, b) in enumerate(zip(before, after))
                       if (a != b if i in (0, 1, 9, 10) else a is not b)])
        print("fresh", next(process._process_counter), process._children, cur.name,
              process.parent_process())
        ml._leave()
        util.register_after_fork(kept, lambda obj: print("after-fork hook called"))
        ml._mains["k"] = ("entry", main())
        print("become", ml.become("k"), _child.rehearse())
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         stdin=subprocess.DEVNULL, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "become True True", "specialized ['LOAD_ATTR_MODULE', 'LOAD_GLOBAL_MODULE']",
        "again True", "same []", "fresh 1 set() MainProcess None", "become True False"], \
        (res.stdout, res.stderr)


def test_a_program_with_a_long_command_line_starts_its_children(tmp_path):
    """A program given thousands of arguments (``prog.py data/*.csv``:
    4,000 names, ~200 KB) starts its children under the "ember" method with
    its ``sys.argv``, as spawn's: its main module's preload entry, which
    holds ``sys.argv`` and ``sys.path`` and travels in every start's
    request to the template, is not made beyond ``_mainload.ENTRY_MAX``
    (the children run the main module themselves, as spawn's).  Every
    start failed: ProcessError, "Message too long" (the request is one
    datagram to the template)."""
    out = _run(tmp_path, """
        import multiprocessing as mp
        import sys
        import ember

        def report(q):
            q.put(sys.argv)

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            for i in range(3):
                p = ctx.Process(target=report, args=(q,))
                p.start()
                print("argv", q.get(timeout=60) == sys.argv, len(sys.argv))
                p.join()
    """, args=[f"data/file-{i:05}-{'x' * 40}.csv" for i in range(4000)])
    assert out == ["argv True 4001"] * 3, out
