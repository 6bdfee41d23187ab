"""multiprocessing's start method "ember" (ember.mp): the common idioms of
existing multiprocessing programs, unchanged, in real child interpreters --
under plain python (the embedded runtime comes up on first use) and under
`ember run`."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import ember  # noqa: F401  (registers the start method)
from procs import alive

MODES = ["plain", "ember_run"]


def run_prog(tmp_path, mode, body, timeout=100):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(body))
    if mode == "plain":
        cmd = [sys.executable, str(prog)]
    else:
        cmd = [sys.executable, "-m", "ember", "run", str(prog)]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return res.stdout


def test_registered_on_import_of_ember():
    import multiprocessing as mp
    from ember.mp import EmberContext

    ctx = mp.get_context("ember")
    assert isinstance(ctx, EmberContext)
    assert ctx.get_start_method() == "ember"
    assert "ember" in mp.get_all_start_methods()
    assert ctx.Process._start_method == "ember"


def test_the_module_s_lazy_modules_have_no_other_attribute():
    # doctest's finder (pytest --doctest-modules) unwraps every global of
    # the module: hasattr(_m, "__wrapped__") raised KeyError
    import doctest

    from ember.mp import context

    assert not hasattr(context._m, "__wrapped__")
    with pytest.raises(AttributeError):
        context._m.nothing
    assert doctest.DocTestFinder().find(context)
    assert context._m.util.__name__ == "multiprocessing.util"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("first", ["import ember", "import ember.mp",
                                   "from ember.mp.pool import Pool",
                                   "import ember.mp.context"])
def test_registered_whatever_the_first_import(first):
    """However ember's start method is first imported, before
    multiprocessing, "ember" is a context afterwards."""
    res = subprocess.run([sys.executable, "-c", f"{first}\nimport multiprocessing as mp\n"
                          "print(mp.get_context('ember').get_start_method())"],
                         capture_output=True, text=True, timeout=50)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ember"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_process_queue_pipe_and_sync_objects(tmp_path, mode):
    out = run_prog(tmp_path, mode, """
        import multiprocessing as mp, os, signal, sys, time
        import ember

        COUNTER = 0        # spawn semantics: children do not see the parent's changes

        def who(q):
            p = mp.current_process()
            q.put((p.name, p.daemon, os.getpid() == p.pid, mp.parent_process().pid, COUNTER,
                   __name__))

        def exits(code):
            sys.exit(code)

        def raises():
            raise ValueError("boom")

        def sleeper():
            time.sleep(60)

        def piped(conn):
            conn.send(conn.recv() * 2)
            conn.close()

        def locked(lock, v, arr, i):
            for _ in range(200):
                with lock:
                    v.value += 1
            arr[i] = i * 10

        def via_queue(q):
            conn = q.get(timeout=30)       # a stdlib Connection, sent over an ember Queue
            conn.send("through the fd")
            conn.close()

        def barrier(b, ev, q):
            q.put(b.wait(timeout=30))
            ev.wait(30)
            q.put("released")

        if __name__ == "__main__":
            mp.set_start_method("ember")
            COUNTER = 5
            q = mp.Queue()
            print("queue", type(q).__module__)
            p = mp.Process(target=who, args=(q,), name="w-one", daemon=True)
            p.start()
            print("who", q.get(timeout=30), os.getpid())
            p.join(30)
            print("exitcode", p.exitcode, p.is_alive())
            codes = []
            for target, args in ((exits, (3,)), (exits, (0,)), (raises, ())):
                c = mp.Process(target=target, args=args)
                c.start(); c.join(30); codes.append(c.exitcode)
            print("codes", codes)
            for how in ("terminate", "kill"):
                s = mp.Process(target=sleeper)
                s.start()
                assert s.is_alive()
                getattr(s, how)()
                s.join(30)
                print(how, s.exitcode)
                s.close()
            a, b = mp.Pipe()
            pp = mp.Process(target=piped, args=(b,))
            pp.start(); a.send(21); print("pipe", a.recv()); pp.join(30)
            lock, v, arr = mp.Lock(), mp.Value("i", 0), mp.Array("i", 4)
            ps = [mp.Process(target=locked, args=(lock, v, arr, i)) for i in range(4)]
            for x in ps: x.start()
            for x in ps: x.join(30)
            print("value", v.value, list(arr), [x.exitcode for x in ps])
            b2, ev, q2 = mp.Barrier(3), mp.Event(), mp.Queue()
            ps = [mp.Process(target=barrier, args=(b2, ev, q2)) for i in range(3)]
            for x in ps: x.start()
            got = sorted(q2.get(timeout=30) for _ in range(3))
            ev.set()
            got += [q2.get(timeout=30) for _ in range(3)]
            for x in ps: x.join(30)
            print("barrier", got)
            import multiprocessing.connection as mpc
            r, w = mpc.Pipe(duplex=False)
            q3 = mp.Queue()
            c = mp.Process(target=via_queue, args=(q3,)); c.start()
            q3.put(w); w.close()
            print("stdlib-conn", r.recv(), c.join(30), c.exitcode)
            print("types", type(lock).__module__, type(v).__module__, type(b2).__module__)
    """)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    name, daemon, pid_ok, ppid, counter, modname = eval(lines["who"].rsplit(" ", 1)[0])
    assert (name, daemon, pid_ok, counter, modname) == ("w-one", True, True, 0, "__mp_main__")
    assert ppid == int(lines["who"].rsplit(" ", 1)[1])
    assert lines["queue"] == "ember.objects.queues"
    assert lines["exitcode"] == "0 False"
    assert lines["codes"] == "[3, 0, 1]"
    assert lines["terminate"] == "-15"
    assert lines["kill"] == "-9"
    assert lines["pipe"] == "42"
    assert lines["value"] == "800 [0, 10, 20, 30] [0, 0, 0, 0]"
    assert lines["barrier"] == "[0, 1, 2, 'released', 'released', 'released']"
    assert lines["stdlib-conn"] == "through the fd None 0"
    assert lines["types"] == "ember.objects.sync ember.objects.sync ember.objects.sync"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_pool_executor_wait_and_shared_memory(tmp_path, mode):
    out = run_prog(tmp_path, mode, """
        import multiprocessing as mp, concurrent.futures as cf, sys
        from multiprocessing import shared_memory
        from multiprocessing.connection import wait
        import ember

        def sq(x):
            return x * x

        def fail(x):
            raise KeyError(f"task {x}")

        def inc(d, lst, rv):
            d["x"] = 1
            lst.append(2)
            rv.value += 5

        def fill(name, n):
            from multiprocessing import resource_tracker
            shm = shared_memory.SharedMemory(name=name)
            shm.buf[:n] = bytes(range(n))
            shm.close()
            # attaching registered the segment with the parent's tracker (as
            # under spawn), not with a tracker of its own that would unlink
            # it when this child exits
            sys.exit(0 if resource_tracker._resource_tracker._pid is None else 5)

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            with ctx.Pool(2) as pool:
                print("map", sum(pool.map(sq, range(10000))))
                print("imap", list(pool.imap(sq, range(6))))
                print("async", pool.apply_async(sq, (9,)).get(30))
                try:
                    pool.apply_async(fail, (7,)).get(30)
                except KeyError as e:
                    print("error", repr(e))
                print("after", pool.map(sq, [1, 2]))
            with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
                print("ppe", list(ex.map(sq, range(5))))
                try:
                    ex.submit(fail, 1).result(30)
                except KeyError as e:
                    print("ppe-error", repr(e))
            ps = [ctx.Process(target=sq, args=(i,)) for i in range(3)]
            for p in ps: p.start()
            left = {p.sentinel for p in ps}
            while left:
                left -= set(wait(list(left), timeout=30))
            for p in ps: p.join(30)
            print("wait", [p.exitcode for p in ps])
            shm = shared_memory.SharedMemory(create=True, size=16)
            p = ctx.Process(target=fill, args=(shm.name, 16)); p.start(); p.join(30)
            print("shm", bytes(shm.buf[:4]).hex(), p.exitcode)
            p = ctx.Process(target=fill, args=(shm.name, 16)); p.start(); p.join(30)
            print("shm-again", p.exitcode)
            shm.close(); shm.unlink()
            with ctx.Manager() as m:
                d, lst, rv = m.dict(), m.list(), ctx.RawValue("i", 1)
                p = ctx.Process(target=inc, args=(d, lst, rv)); p.start(); p.join(30)
                print("manager", dict(d), list(lst), rv.value, p.exitcode)
    """)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["map"] == str(sum(x * x for x in range(10000)))
    assert lines["imap"] == "[0, 1, 4, 9, 16, 25]"
    assert lines["async"] == "81"
    assert lines["error"] == "KeyError('task 7')"
    assert lines["after"] == "[1, 4]"
    assert lines["ppe"] == "[0, 1, 4, 9, 16]"
    assert lines["ppe-error"] == "KeyError('task 1')"
    assert lines["wait"] == "[0, 0, 0]"
    assert lines["shm"] == "00010203 0"
    assert lines["shm-again"] == "0"
    assert lines["manager"] == "{'x': 1} [2] 6 0"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("imports", [
    "import ember\nimport multiprocessing as mp",
    "import multiprocessing as mp\nimport ember",
    "import multiprocessing as mp, multiprocessing.connection\nimport ember"])
def test_connection_wait_imported_by_name(tmp_path, imports):
    """`from multiprocessing.connection import wait` after `import ember`
    (the idiom of the stdlib's documentation), before any ember object
    exists: the name bound waits on ember Connections and Queues too,
    whichever of ember and multiprocessing was imported first."""
    out = run_prog(tmp_path, "plain", imports + textwrap.dedent("""
        from multiprocessing.connection import wait

        def answer(conn, q):
            conn.send("by pipe")
            q.put("by queue")

        if __name__ == "__main__":
            mp.set_start_method("ember")
            r, w = mp.Pipe()
            q = mp.Queue()
            p = mp.Process(target=answer, args=(w, q))
            p.start()
            left, got = [r, q, p.sentinel], []
            while left:
                for o in wait(left, timeout=30):
                    left.remove(o)
                    got.append("exited" if o is p.sentinel else
                               o.recv() if o is r else o.get())
            p.join(30)
            print(sorted(got), p.exitcode)
    """))
    assert out.split("\n")[0] == "['by pipe', 'by queue', 'exited'] 0"


@pytest.mark.timeout(120)
def test_the_sentinel_is_made_at_the_first_ask(tmp_path):
    """A start takes no sentinel for the program (BaseProcess.start reads
    popen.sentinel at every start: it made an eventfd and woke the
    sentinel watcher's thread, ember-sentinels, for nothing): a process
    started and joined without ``p.sentinel`` asked has none, and no
    watcher thread is made.  Asked while it runs, ``p.sentinel`` is the
    ember.Process's eventfd, the same fd at each ask, readable at the end
    under ``multiprocessing.connection.wait`` and a selector, and after
    the join; asked first after the join, readable at once; ValueError
    before the start and after close(), as the stdlib's."""
    out = run_prog(tmp_path, "plain", """
        import multiprocessing as mp, multiprocessing.connection as mpc
        import os, selectors, threading, time
        import ember

        def nap(path):
            while not os.path.exists(path):
                time.sleep(0.01)

        def kind(fd):
            return os.readlink(f"/proc/self/fd/{fd}")

        def watcher():
            return any(t.name == "ember-sentinels" for t in threading.enumerate())

        if __name__ == "__main__":
            mp.set_start_method("ember")
            p = mp.Process(target=os.getpid)
            try:
                p.sentinel
            except ValueError as e:
                print("before start", e)
            p.start(); p.join(30)
            print("unasked", p.exitcode, p._popen._proc._res.sentinel, watcher())
            p.close()
            p = mp.Process(target=nap, args=("go",)); p.start()
            s = p.sentinel
            print("asked", kind(s), s == p.sentinel, mpc.wait([s], 0), p.is_alive())
            sel = selectors.DefaultSelector()
            sel.register(s, selectors.EVENT_READ)
            open("go", "w").close()
            print("end", mpc.wait([s], 30) == [s], len(sel.select(30)), p.is_alive())
            sel.close()
            p.join(30)
            print("joined", p.exitcode, mpc.wait([p.sentinel], 0) == [s])
            p.close()
            try:
                p.sentinel
            except ValueError as e:
                print("closed", e)
            p = mp.Process(target=os.getpid); p.start(); p.join(30)
            s = p.sentinel
            print("after join", kind(s), mpc.wait([s], 0) == [s], p.exitcode)
            p.close()
    """)
    assert out.splitlines() == [
        "before start process not started", "unasked 0 -1 False",
        "asked anon_inode:[eventfd] True [] True", "end True 1 False", "joined 0 True",
        "closed process object is closed", "after join anon_inode:[eventfd] True 0"], out


@pytest.mark.timeout(120)
def test_spawn_and_forkserver_children_of_an_ember_parent(tmp_path):
    """A program whose start method is "ember" starts children of another
    method through an explicit context: spawn's and forkserver's children,
    fresh interpreters, apply the parent's global method before they import
    anything, and find it (they import ember while they unpickle the
    preparation data); then each runs under its own method, as under the
    stdlib."""
    out = run_prog(tmp_path, "plain", """
        import multiprocessing as mp, sys
        import ember

        def who(conn):
            conn.send(mp.get_start_method())

        if __name__ == "__main__":
            mp.set_start_method("ember")
            for m in ("spawn", "forkserver", "fork", "ember"):
                ctx = mp.get_context(m)
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=who, args=(w,))
                p.start()
                w.close()
                try:
                    print(m, r.recv(), end=" ")
                except EOFError:          # the child ended without a word
                    print(m, None, end=" ")
                p.join(30)
                print(p.exitcode, flush=True)
    """)
    assert out.splitlines() == ["spawn spawn 0", "forkserver forkserver 0", "fork fork 0",
                                "ember ember 0"]


@pytest.mark.timeout(120)
def test_children_left_running_at_an_explicit_shutdown(tmp_path):
    """ember.init(), children started and not joined, then ember.shutdown():
    the teardown ended them (SIGTERM), and afterwards is_alive(), exitcode
    and join() say so (the kernel's exit status through the pidfd), though
    the runtime's channels and GS are gone; multiprocessing's exit
    handler finds nothing to complain about."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import multiprocessing as mp, time
        import ember

        def sleeper():
            time.sleep(60)

        if __name__ == "__main__":
            ember.init()
            mp.set_start_method("ember")
            ps = [mp.Process(target=sleeper), mp.Process(target=sleeper, daemon=True),
                  ember.Process(target=sleeper)]
            for p in ps:
                p.start()
            ember.shutdown()
            for p in ps:
                print(p.is_alive(), p.exitcode, end=" ")
                p.join(10)
                print(p.exitcode, flush=True)
    """))
    res = subprocess.run([sys.executable, str(prog)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=100)
    assert (res.returncode, res.stderr) == (0, ""), res
    assert res.stdout.splitlines() == ["False -15 -15"] * 3


@pytest.mark.timeout(200)
def test_in_a_jupyter_kernel(tmp_path):
    """The method in a real IPython kernel (jupyter_client + ipykernel):
    Pool.map and Process with a module's function, a function defined in
    a cell refused in the child as under spawn (it cannot be pickled by
    reference), and at the kernel's shutdown nothing left: no child, no
    segment of its embedded runtime."""
    pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    (tmp_path / "jwork.py").write_text("def sq(x):\n    return x * x\n")
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent("""
        from jupyter_client.manager import start_new_kernel
        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=90)
        outputs = []
        def run(code):
            reply = kc.execute_interactive(code, timeout=90, output_hook=outputs.append)
            assert reply["content"]["status"] == "ok", reply["content"]
        try:
            run("import multiprocessing as mp, os, sys, time\\nsys.path.insert(0, os.getcwd())\\n"
                "import ember, jwork\\nctx = mp.get_context('ember')")
            run("with ctx.Pool(2) as pool:\\n    print('map', sum(pool.map(jwork.sq, range(100))))")
            run("p = ctx.Process(target=jwork.sq, args=(3,)); p.start(); p.join()\\n"
                "print('module', p.exitcode)")
            run("def local(x):\\n    return x\\n"
                "p = ctx.Process(target=local, args=(3,)); p.start(); p.join()\\n"
                "print('cell', p.exitcode)")
            run("from ember import _env\\n"
                "p = ctx.Process(target=time.sleep, args=(120,), daemon=True); p.start()\\n"
                "print('left', _env.get(_env.RUNTIME_ID), p.pid)")
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=False)
        print("".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"))
    """))
    res = subprocess.run([sys.executable, str(driver)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, (res.stdout, res.stderr[-3000:])
    lines = dict(ln.split(" ", 1) for ln in res.stdout.splitlines() if " " in ln)
    assert (lines["map"], lines["module"], lines["cell"]) == (str(sum(x * x for x in range(100))),
                                                              "0", "1"), res.stdout
    rid, pid = lines["left"].split()
    deadline = time.monotonic() + 30
    while alive(int(pid)) or [e for e in os.listdir("/dev/shm") if e.startswith(f"ember.{rid}.")]:
        assert time.monotonic() < deadline, (pid, rid, os.listdir("/dev/shm"))
        time.sleep(0.1)


@pytest.mark.timeout(120)
def test_a_main_without_a_file_is_not_the_templates(tmp_path):
    """A parent whose main module has no file (``python -c``, as a
    notebook's): a function of its ``__main__`` cannot be found in the
    child, which says so naming ``__main__``, as spawn's child does.  The
    child's ``__main__`` was the template's (ember._template): the error
    named that module, and a function called ``main`` was found there, the
    template's own, and run (OSError: Socket operation on non-socket)."""
    code = textwrap.dedent("""
        import multiprocessing as mp, sys
        import ember

        def main():
            print("the parent's main")

        ctx = mp.get_context(sys.argv[1])
        p = ctx.Process(target=main)
        p.start(); p.join(30)
        print(p.exitcode)
    """)
    for method in ("spawn", "ember"):
        res = subprocess.run([sys.executable, "-c", code, method], cwd=tmp_path,
                             capture_output=True, text=True, timeout=100)
        assert (res.returncode, res.stdout) == (0, "1\n"), (method, res)
        assert res.stderr.splitlines()[-1].startswith(
            "AttributeError: Can't get attribute 'main' on <module '__main__'"), (method, res)


@pytest.mark.timeout(120)
def test_method_found_after_a_find_spec(tmp_path):
    """importlib.util.find_spec of multiprocessing and of
    multiprocessing.connection (a check that a module exists) before
    their import: the "ember" method is registered and wait wrapped all
    the same; the finder that does it left sys.meta_path at the find, and
    the import that followed went without it."""
    out = run_prog(tmp_path, "plain", textwrap.dedent("""
        import importlib.util
        import sys
        import ember

        assert importlib.util.find_spec("multiprocessing") is not None
        import multiprocessing as mp
        assert importlib.util.find_spec("multiprocessing.connection") is not None
        from multiprocessing.connection import wait

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            print(ctx.get_start_method(), getattr(wait, "_ember", False),
                  any(type(f).__name__ == "_AfterImport" and f.name != "multiprocessing.spawn"
                      for f in sys.meta_path))
    """))
    assert out.split("\n")[0] == "ember True False"


@pytest.mark.timeout(120)
def test_method_registered_in_a_frozen_app(tmp_path):
    """In a frozen or bundled app (PyInstaller-like) the standard library
    comes from a meta path finder of the app's own, not from sys.path: the
    "ember" method is registered and wait wrapped all the same, and the
    modules keep their own loader.  The finder that does it asked
    PathFinder alone, found nothing, and was never called again: no
    "ember" context (ValueError: cannot find context for 'ember').  (A
    zipapp does not show it: its standard library is still on sys.path.)"""
    out = run_prog(tmp_path, "plain", """
        import os, sys, sysconfig
        from importlib.machinery import PathFinder

        lib = os.path.realpath(sysconfig.get_paths()["stdlib"])
        hidden = [d for d in sys.path
                  if d and os.path.realpath(d) in (lib, os.path.join(lib, "lib-dynload"))]

        class Bundle:
            \"\"\"The app's finder: the standard library from a place that is
            not on sys.path.\"\"\"
            def find_spec(self, name, path=None, target=None):
                return PathFinder.find_spec(name, hidden, target) if path is None else None

        sys.path[:] = [d for d in sys.path if d not in hidden]
        sys.meta_path.append(Bundle())

        import ember
        import multiprocessing as mp
        from multiprocessing.connection import wait

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            print(ctx.get_start_method(), getattr(wait, "_ember", False),
                  type(mp.__loader__).__name__, mp.__spec__.loader is mp.__loader__,
                  os.path.dirname(mp.__file__) == os.path.join(lib, "multiprocessing"))
    """)
    assert out.split("\n")[0] == "ember True SourceFileLoader True True", out


@pytest.mark.timeout(120)
def test_sigkill_of_the_parent_leaves_nothing(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys, time
        import ember

        def sleeper(q):
            q.put(os.getpid())
            time.sleep(120)

        if __name__ == "__main__":
            mp.set_start_method("ember")
            from ember import runtime
            q = mp.Queue()
            lock = mp.Lock()
            ps = [mp.Process(target=sleeper, args=(q,)) for _ in range(2)]
            for p in ps: p.start()
            pids = [q.get(timeout=30) for _ in ps]
            rt = runtime.current()
            print(rt.id, rt.host_pid, *pids, flush=True)
            time.sleep(120)
    """))
    before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen([sys.executable, str(prog)], cwd=tmp_path, stdout=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline().split()
        assert len(line) == 4, line
        rid = line[0]
        pids = [int(x) for x in line[1:]]
        assert all(alive(p) for p in pids)
        assert any(n.startswith(f"ember.{rid}") for n in os.listdir("/dev/shm"))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        segs = [n for n in set(os.listdir("/dev/shm")) - before if n.startswith(f"ember.{rid}")]
        if not left and not segs:
            break
        time.sleep(0.1)
    assert (left, segs) == ([], [])


@pytest.mark.timeout(120)
def test_value_and_array_lock_argument_as_multiprocessing(tmp_path):
    out = run_prog(tmp_path, "plain", """
        import multiprocessing as mp, ctypes
        import ember

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            raw = ctx.Value("i", 3, lock=False)          # the stdlib's raw ctypes object
            print("raw", type(raw).__name__, hasattr(raw, "get_lock"), raw.value)
            rawa = ctx.Array("i", [1, 2], lock=False)
            print("rawa", hasattr(rawa, "get_obj"), list(rawa))
            v = ctx.Value("i", 1, lock=None)               # None: a new lock, as True
            print("none", type(v.get_lock()).__name__)
            lock = ctx.Lock()
            a = ctx.Array("i", 4, lock=lock)
            print("same", a.get_lock() is lock)
            try:
                ctx.Array("i", 4, lock="notalock")
            except AttributeError as e:
                print("bad", e)
    """)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["raw"] == "c_int False 3"
    assert lines["rawa"] == "False [1, 2]"
    assert lines["none"] == "RLock"            # as multiprocessing's default lock
    assert lines["same"] == "True"
    assert lines["bad"] == "'notalock' has no method 'acquire'"


@pytest.mark.timeout(120)
def test_barrier_action_holding_a_raw_value(tmp_path):
    """A Barrier whose action holds what multiprocessing pickles only while
    it starts a child (a RawValue: a heap arena's fd), as CPython's
    test_action's does: the action travels with the Barrier to each child
    (failed before: TypeError "cannot pickle 'mmap.mmap' object" at
    creation) and runs once per generation, in the last party's process."""
    out = run_prog(tmp_path, "plain", """
        import multiprocessing as mp, os
        import ember

        class Count:
            def __init__(self, raw, pids):
                self.raw, self.pids = raw, pids
            def __call__(self):
                self.pids[self.raw.value] = os.getpid()
                self.raw.value += 1

        def party(b, q):
            for _ in range(3):
                b.wait()
            q.put(os.getpid())

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            raw, pids = ctx.RawValue("i", 0), ctx.RawArray("i", 3)
            b, q = ctx.Barrier(3, action=Count(raw, pids)), ctx.Queue()
            ps = [ctx.Process(target=party, args=(b, q)) for _ in range(2)]
            for p in ps: p.start()
            party(b, q)
            mine = {q.get(timeout=30) for _ in range(3)}
            for p in ps: p.join(30)
            print(raw.value, [p.exitcode for p in ps], set(pids) <= mine)
    """)
    assert out.split() == ["3", "[0,", "0]", "True"]


@pytest.mark.timeout(120)
def test_event_repr_is_multiprocessings(tmp_path):
    """The context's Event has multiprocessing's repr (`<Event at 0x... set>`,
    with the object's o_uid), in the parent and in a child it is passed to
    (it was ember's: `<ember.Event o_uid=3 <ember.Event(unset)>>`)."""
    out = run_prog(tmp_path, "plain", """
        import multiprocessing as mp
        import ember

        def show(ev, q):
            ev.set()
            q.put(repr(ev))

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            ev, q = ctx.Event(), ctx.Queue()
            print(repr(ev))
            p = ctx.Process(target=show, args=(ev, q))
            p.start()
            print(q.get(timeout=30))
            p.join(30)
            print(repr(ev), ev.o_uid, hex(id(ev)))
            ev.clear()
            print(repr(ev))
    """)
    lines = out.splitlines()
    o_uid, at = lines[2].split()[-2:]
    assert lines[0] == lines[3] == f"<Event at {at} o_uid={o_uid} unset>"
    assert lines[2].split()[:-2] == ["<Event", "at", at, f"o_uid={o_uid}", "set>"]
    assert re.fullmatch(rf"<Event at 0x[0-9a-f]+ o_uid={o_uid} set>", lines[1])


@pytest.mark.timeout(120)
def test_send_handle_and_recv_handle_over_an_ember_pipe(tmp_path):
    """multiprocessing.reduction.send_handle/recv_handle pass an fd over
    the context's Pipe (through the sender's resource sharer), both ways
    and from one child to another; a message that carries no handle raises
    RuntimeError, as the stdlib's does (they failed: the Connection had no
    fileno(), and it is no socket now)."""
    out = run_prog(tmp_path, "plain", """
        import multiprocessing as mp, os
        from multiprocessing import reduction
        import ember

        def write(conn, data):
            fd = reduction.recv_handle(conn)
            os.write(fd, data)
            os.close(fd)

        def writer(conn, data):
            write(conn, data)
            r, w = os.pipe()
            os.write(w, b"back from " + data)
            os.close(w)
            reduction.send_handle(conn, r, os.getppid())
            os.close(r)
            conn.send("no handle")
            conn.recv()

        def relay(conn, to):
            fd = reduction.recv_handle(conn)
            reduction.send_handle(to, fd, 0)       # on to the other child
            os.close(fd)
            conn.recv()                            # (its resource sharer serves the fd)

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            a, b = ctx.Pipe()
            p = ctx.Process(target=writer, args=(b, b"one"))
            p.start()
            r, w = os.pipe()
            reduction.send_handle(a, w, p.pid)
            os.close(w)
            fd = reduction.recv_handle(a)
            print(os.read(r, 100), os.read(fd, 100))
            os.close(fd)
            os.close(r)
            try:
                reduction.recv_handle(a)
            except RuntimeError as e:
                print("error", e)
            a.send("done")
            p.join(30)
            c, d = ctx.Pipe()
            e, f = ctx.Pipe()
            q1 = ctx.Process(target=relay, args=(d, e))
            q2 = ctx.Process(target=write, args=(f, b"two"))
            q1.start(); q2.start()
            r, w = os.pipe()
            reduction.send_handle(c, w, q1.pid)
            os.close(w)
            print(os.read(r, 100))
            q2.join(30)
            c.send("done")
            q1.join(30)
            os.close(r)
            print(p.exitcode, q1.exitcode, q2.exitcode)
    """)
    assert out.splitlines() == [
        "b'one' b'back from one'",
        "error received a str that carries no handle (send_handle sends one)",
        "b'two'", "0 0 0"]


@pytest.mark.timeout(120)
def test_value_of_a_structure_has_its_fields(tmp_path):
    """multiprocessing's Value of a ctypes Structure gives its fields as
    attributes, read and written under the lock (the stdlib's synchronized
    wrapper); an Array of Structures gives each element's.  A child's
    writes reach the parent (`p.x = 1.5` on the handle used to set an
    attribute of the child's handle only)."""
    out = run_prog(tmp_path, "plain", """
        import multiprocessing as mp, ctypes
        import ember

        class Point(ctypes.Structure):
            _fields_ = [("x", ctypes.c_double), ("y", ctypes.c_double)]

        def move(p, a):
            p.x = 1.5
            with p.get_lock():
                p.y += 2
            a[1].x = 9.0

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            p = ctx.Value(Point, 0.5, 1.0)
            a = ctx.Array(Point, [(1, 2), (3, 4)])
            c = ctx.Process(target=move, args=(p, a))
            c.start(); c.join(30)
            print(c.exitcode, p.x, p.y, [(q.x, q.y) for q in a])
            try:
                p.z
            except AttributeError as e:
                print("no field", e)
    """)
    assert out.splitlines()[0] == "0 1.5 3.0 [(1.0, 2.0), (9.0, 4.0)]"
    assert out.splitlines()[1].startswith("no field ")


@pytest.mark.timeout(120)
def test_a_structures_fields_named_as_the_handles_attributes(tmp_path):
    """A Structure's fields named as the Value handle's own attributes
    (``name``, ``lifetime``, ``o_uid``, ``value``, ``get_obj``,
    ``get_lock``) are the fields, read and written, in the parent and in a
    child, as on multiprocessing's synchronized wrapper.  The handle's
    attributes were read instead (the object's name None, its lifetime
    'refcount'), though a write went to the field; a field named as one of
    the lock's methods made the Value fail at its creation (TypeError)."""
    out = run_prog(tmp_path, "plain", """
        import multiprocessing as mp, ctypes
        import ember

        class Rec(ctypes.Structure):
            _fields_ = [("name", ctypes.c_char * 8), ("lifetime", ctypes.c_int),
                        ("o_uid", ctypes.c_int), ("value", ctypes.c_int),
                        ("get_obj", ctypes.c_int), ("get_lock", ctypes.c_int)]

        def show(r):
            return (r.name, r.lifetime, r.o_uid, r.value, r.get_obj, r.get_lock)

        def child(r):
            print("child", *show(r), flush=True)
            with r:
                r.name, r.lifetime, r.o_uid, r.value, r.get_obj, r.get_lock = b"kid", 4, 5, 6, 7, 8

        if __name__ == "__main__":
            for method in ("fork", "ember"):
                ctx = mp.get_context(method)
                r = ctx.Value(Rec, b"abc", 1, 2, 3, -1, -2)
                print(method, *show(r))
                c = ctx.Process(target=child, args=(r,))
                c.start(); c.join(30)
                print(method, c.exitcode, *show(r))
    """)
    assert out.splitlines() == [
        "fork b'abc' 1 2 3 -1 -2", "child b'abc' 1 2 3 -1 -2", "fork 0 b'kid' 4 5 6 7 8",
        "ember b'abc' 1 2 3 -1 -2", "child b'abc' 1 2 3 -1 -2", "ember 0 b'kid' 4 5 6 7 8"], out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", MODES)
def test_pool_manager_and_child_start(tmp_path, mode):
    """Under "ember": mp.Pool is ember's Pool (its queues are ember
    Queues) with the stdlib's behaviour (errors, terminate,
    maxtasksperchild); mp.Manager() is ember.Manager (its Pool, the
    stdlib's RemoteError for bad arguments); the child runs the main module
    the parent compiled (line numbers in tracebacks are the file's) and
    finds the parent's library modules already imported by the template."""
    out = run_prog(tmp_path, mode, """
        import multiprocessing as mp, os, sys, traceback
        import ember

        def sq(x):
            return x * x

        def boom(x):
            if x == 3:
                raise ValueError(f"bad {x}")
            return x

        def pid(_):
            return os.getpid()

        def where():
            try:
                raise KeyError("here")
            except KeyError:
                tb = traceback.extract_tb(sys.exc_info()[2])[-1]
                return os.path.basename(tb.filename), tb.lineno, tb.line

        def report(q):
            q.put(("colorsys" in sys.modules, where()))

        if __name__ == "__main__":
            import colorsys          # imported by the parent only (not at module level)
            mp.set_start_method("ember")
            with mp.Pool(2) as pool:
                print("type", type(pool).__module__, type(pool._inqueue._q).__module__)
                print("map", sum(pool.map(sq, range(20000))), list(pool.imap(sq, range(4))))
                try:
                    pool.map(boom, range(5))
                except ValueError as e:
                    print("raised", e)
                print("starmap", pool.starmap(pow, [(2, 3), (3, 2)]))
            with mp.Pool(2, maxtasksperchild=1) as pool:
                print("fresh", len(set(pool.map(pid, range(6), chunksize=1))) >= 3)
            pool = mp.Pool(2)
            pool.map_async(sq, range(100000), chunksize=1)
            pool.terminate()
            pool.join()
            print("terminated", [w.exitcode is not None for w in pool._pool])
            m = mp.Manager()
            print("manager", type(m).__module__)
            d = m.dict(a=1)
            p = m.Pool(2)
            print("manager-pool", p.map(sq, [3, 4]))
            try:
                m.Pool(0)
            except ValueError as e:
                from multiprocessing.managers import RemoteError
                print("remote-error", isinstance(e, RemoteError))
            m.shutdown()
            q = mp.Queue()
            c = mp.Process(target=report, args=(q,))
            c.start()
            pre, (fname, lineno, line) = q.get(timeout=60)
            c.join(60)
            print("child", pre, fname, lineno, line, c.exitcode)
    """)
    lines = dict(line.split(" ", 1) for line in out.splitlines())
    assert lines["type"] == "ember.mp.pool ember.objects.queues"
    assert lines["map"] == f"{sum(x * x for x in range(20000))} [0, 1, 4, 9]"
    assert lines["raised"] == "bad 3"
    assert lines["starmap"] == "[8, 9]"
    assert lines["fresh"] == "True"
    assert lines["terminated"] == "[True, True]"
    assert lines["manager"] == "ember.objects.managers"
    assert lines["manager-pool"] == "[9, 16]"
    assert lines["remote-error"] == "True"
    assert lines["child"] == "True prog.py 18 raise KeyError(\"here\") 0"


@pytest.mark.timeout(120)
def test_an_executor_worker_started_again_is_keyed_by_its_own_pid(tmp_path):
    """concurrent.futures keys each worker by the ``pid`` it reads right
    after ``start()``, and a worker that exits after ``max_tasks_per_child``
    tasks says which it was by its ``os.getpid()``.  A worker handed to a
    spare (or a lease) that was SIGKILLed before it read its call is
    started again under another pid: ``pid`` read before then named the
    dead spare, the executor's manager thread died on the worker's exit
    (``KeyError`` in ``self.processes.pop(result_item.exit_pid)``) and
    every later submit and the shutdown hung.  The "ember" method's
    ``pid`` is the one the process keeps, as spawn's."""
    tests = os.path.dirname(os.path.abspath(__file__))
    out = run_prog(tmp_path, "ember_run", f"""
        import concurrent.futures as cf, multiprocessing as mp, os, signal, sys, threading
        import ember

        def f(x):
            return x * 2

        if __name__ == "__main__":
            sys.path.insert(0, {tests!r})
            from procs import table, wait_gone

            shepherd = os.getppid()
            ctx = mp.get_context("ember")
            for _ in range(3):                 # spares and a lease for the executor's workers
                with cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1) as ex:
                    ex.submit(f, 1).result(30)
            procs = table()
            victims = [pid for pid, (_, ppid, comm) in procs.items()
                       if ppid == shepherd and comm in ("ember-spare", "ember-leased")]
            for v in victims:
                os.kill(v, signal.SIGSTOP)    # none reads its request or call
            killed = threading.Event()
            def kill():
                for v in victims:
                    os.kill(v, signal.SIGKILL)
                killed.set()
            timer = threading.Timer(0.5, kill)
            timer.start()
            ex = cf.ProcessPoolExecutor(1, mp_context=ctx, max_tasks_per_child=1)
            first = ex.submit(f, 21)          # starts the worker, keys it by its pid
            print("keyed after the kill", killed.is_set(), set(ex._processes) & set(victims))
            timer.join()
            print("results", first.result(30), ex.submit(f, 2).result(30))
            ex.shutdown()
            print("gone", wait_gone(victims) == [])
    """, timeout=100)
    assert out.splitlines() == ["keyed after the kill True set()", "results 42 4", "gone True"], out


@pytest.mark.timeout(120)
def test_a_child_stopped_before_it_read_its_call_has_a_repr_and_a_pid(tmp_path):
    """``repr(p)`` and ``p.pid`` of a child whose spare (or lease) was
    SIGSTOPped before it read its call: the repr shows the pid it has now
    and never waits (fork's and spawn's never do), the pid read answers
    that pid once it has waited ``_PID_WAIT`` s for the read (both waited
    for ever); continued, the child runs, and keeps that pid."""
    tests = os.path.dirname(os.path.abspath(__file__))
    out = run_prog(tmp_path, "ember_run", f"""
        import multiprocessing as mp, os, signal, sys
        import ember

        def f(q):
            q.put(os.getpid())

        if __name__ == "__main__":
            sys.path.insert(0, {tests!r})
            from procs import table, stop

            shepherd = os.getppid()
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            for _ in range(3):                 # spares and a lease for the next starts
                p = ctx.Process(target=f, args=(q,)); p.start(); q.get(30); p.join(30)
            victims = [pid for pid, (_, ppid, comm) in table().items()
                       if ppid == shepherd and comm in ("ember-spare", "ember-leased")]
            print("stopped", stop(victims))
            p = ctx.Process(target=f, args=(q,))
            p.start()
            r = repr(p)
            print("repr", r.startswith("<EmberProcess name='EmberProcess-4' pid=") and
                  int(r.split("pid=")[1].split()[0]) in victims, "started" in r)
            print("pid", p.pid in victims, p.pid == p.pid)
            for v in victims:
                os.kill(v, signal.SIGCONT)
            print("kept", q.get(30) == p.pid)
            p.join(30)
            print("joined", p.exitcode, repr(p) == f"<EmberProcess name='EmberProcess-4' pid={{p.pid}} "
                  f"parent={{os.getpid()}} stopped exitcode=0>")
    """, timeout=100)
    assert out.splitlines() == ["stopped []", "repr True True", "pid True True", "kept True",
                                "joined 0 True"], out


@pytest.mark.timeout(120)
def test_fds_a_child_never_asked_for_are_closed_at_its_end(tmp_path):
    """An fd pickled for a child (a stdlib Connection argument) waits in
    the parent's resource sharer until the child asks for it; a child that
    ends first (killed while it unpickles the argument before it, a worker
    of a ProcessPoolExecutor broken by a kill) never will.  Its copy is
    closed once the parent knows the end, as spawn's child, which inherits
    the fd, leaves none behind (each stayed open in the parent for its
    life, with its entry in the sharer: 73 after 20 broken executors)."""
    out = run_prog(tmp_path, "plain", """
        import concurrent.futures as cf, multiprocessing as mp, os, signal, time
        import multiprocessing.connection as mpc
        from multiprocessing import resource_sharer
        import ember

        class Slow:
            def __reduce__(self):                   # unpickled before the pipe
                return (time.sleep, (60,))

        def f(slow, conn):
            conn.send(1)

        def g(x):
            time.sleep(0.05)
            return x

        def pipes(pipe="pipe:"):
            n = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    n += os.readlink(f"/proc/self/fd/{fd}").startswith(pipe)
                except OSError:
                    pass
            return n

        def fds():
            # the pipes (the Connection's ends and their copies), not the fds
            # of the lease held for the next start (two channels and a
            # pidfd, there or not as the starts go: one still on its way is
            # not dropped, 'kill -9 0 -3')
            from ember.objects.process import _drop_lease
            _drop_lease()
            return pipes()

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            r, w = mpc.Pipe(duplex=False)
            p = ctx.Process(target=f, args=(None, w)); p.start(); p.join()
            print("received", r.recv())
            p.close()
            # the sharer's thread closes its copy of w right after the hand-over,
            # when it runs next: the child may have used w and ended before
            # that ('kill -9 0 -1' under load); bounded as any wait of the suite
            deadline = time.monotonic() + 60
            while pipes(os.readlink(f"/proc/self/fd/{w.fileno()}")) > 2 and \
                    time.monotonic() < deadline:
                time.sleep(0.01)
            before = fds()
            for how in ("kill", "terminate"):
                p = ctx.Process(target=f, args=(Slow(), w)); p.start()
                getattr(p, how)()
                p.join(30)
                code = p.exitcode
                p.close()
                print(how, code, len(resource_sharer._resource_sharer._cache), fds() - before)
            for _ in range(3):
                ex = cf.ProcessPoolExecutor(2, mp_context=ctx, max_tasks_per_child=1)
                futs = [ex.submit(g, i) for i in range(4)]
                futs[0].result(30)
                try:
                    os.kill(next(iter(ex._processes)), signal.SIGKILL)
                except (StopIteration, ProcessLookupError):
                    pass
                for x in futs:
                    try:
                        x.result(30)
                    except cf.process.BrokenProcessPool:
                        pass
                ex.shutdown()
            print("executors", len(resource_sharer._resource_sharer._cache))
    """)
    assert out.splitlines() == ["received 1", "kill -9 0 0", "terminate -15 0 0",
                                "executors 0"], out


@pytest.mark.timeout(120)
def test_an_fd_asked_for_after_its_release_prints_nothing_in_the_parent(tmp_path):
    """A child that sent its request for an fd to the parent's resource
    sharer and was killed before the sharer's thread read it: the parent,
    knowing its end, released the fd (Popen._unshare), and the thread then
    found no such key; its KeyError was printed (a second traceback in
    test_a_child_killed_while_it_fetches_its_fds_prints_nothing_in_the_parent,
    now and then).  The order forced: released, then asked for."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import os
        from ember.mp import context
        sharer = context._sharer()
        r, w = os.pipe()
        d = sharer.DupFd(w)
        context._unshare([d._id[1]])
        try:
            d.detach()
        except EOFError:
            print("released", flush=True)
        # (served after it: the sharer serves one connection at a time)
        os.close(sharer.DupFd(r).detach())
    """))
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (0, "released\n", ""), res


def test_a_child_killed_while_it_fetches_its_fds_prints_nothing_in_the_parent(tmp_path):
    """A child killed while it fetches the fds its start pickled (a stdlib
    Connection argument: from the parent's resource sharer) costs the
    parent no traceback, as spawn's child, which inherits them: the
    sharer's thread printed the ConnectionResetError, BrokenPipeError or
    EOFError of the connection whose other end was gone (6 of 10 such
    kills here, one a worker in 20 broken executors).  Another error of
    the sharer is printed as before (a client with a wrong key)."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, os, signal, sys, time
        import multiprocessing.connection as mpc
        from multiprocessing import resource_sharer
        import ember

        def f(conn):
            conn.send(1)
            time.sleep(60)

        if __name__ == "__main__":
            ctx = mp.get_context(sys.argv[1])
            r, w = mpc.Pipe(duplex=False)
            codes = set()
            for i in range(20):
                p = ctx.Process(target=f, args=(w,))
                p.start()
                os.kill(p.pid, signal.SIGKILL)
                p.join(30)
                codes.add(p.exitcode)
            print("killed", codes, flush=True)
            if sys.argv[1] == "ember":
                try:
                    mpc.Client(resource_sharer._resource_sharer._address, authkey=b"wrong")
                except mpc.AuthenticationError:
                    print("refused", flush=True)
                # (an fd fetched after it: the sharer, one connection at a
                # time, has printed that one's error, before the exit)
                os.close(resource_sharer.DupFd(0).detach())
    """))
    got = {}
    for method in ("spawn", "ember"):
        res = subprocess.run([sys.executable, "prog.py", method], cwd=tmp_path,
                             capture_output=True, text=True, timeout=100)
        assert res.returncode == 0, (method, res.stdout, res.stderr)
        got[method] = res.stdout, res.stderr.count("Traceback"), \
            "AuthenticationError: digest received was wrong" in res.stderr
    assert got == {"spawn": ("killed {-9}\n", 0, False),
                   "ember": ("killed {-9}\nrefused\n", 1, True)}, (got, res.stderr)
