"""What the "ember" start method does to make a start cheap, checked end to end."""
import os
import re
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


def test_argv_changed_in_place_reaches_the_next_child(tmp_path):
    """spawn's preparation data holds ``sys.argv`` itself: the parent's
    cached pickle of it (``context._pickles``) compared the new data with
    a cached dict holding that very list, so after ``sys.argv.append`` the
    next child still got the old argv.  Each child sees the argv of the
    parent at its start, also for a main module every child runs again."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, os, sys
        import ember

        def work(q):
            q.put(sys.argv[1:])

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            for arg in ("a", "b", "c"):
                sys.argv.append(arg)
                p = ctx.Process(target=work, args=(q,)); p.start()
                print(*q.get(timeout=60)); p.join(60)
    """))
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["a", "a b", "a b c"], (res.stdout, res.stderr)


def test_reducers_registered_between_starts_reach_the_next_child(tmp_path):
    """The process object is pickled with ForkingPickler's reducers and
    copyreg's (``context._fp_dumps``, their merged table made once and
    again when either changed): a reducer registered after some starts,
    with ``ForkingPickler.register`` or ``copyreg.pickle``, is used for
    the next child's arguments."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import copyreg
        import multiprocessing as mp
        from multiprocessing.reduction import ForkingPickler
        import ember

        class Box:
            def __init__(self, v):
                self.v = v

        class Crate(Box):
            pass

        def made_by(cls, how, v):
            return cls(f"{how}:{v}")

        def by_fp(b):
            return made_by, (type(b), "fp", b.v)

        def by_copyreg(b):
            return made_by, (type(b), "copyreg", b.v)

        def work(q, box, crate):
            q.put((box.v, crate.v))

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            for step in range(5):
                if step == 2:
                    ForkingPickler.register(Box, by_fp)
                if step == 4:
                    copyreg.pickle(Crate, by_copyreg)
                p = ctx.Process(target=work, args=(q, Box(1), Crate(2))); p.start()
                print(step, *q.get(timeout=60)); p.join(60)
    """))
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["0 1 2", "1 1 2", "2 fp:1 2", "3 fp:1 2",
                                       "4 fp:1 copyreg:2"], (res.stdout, res.stderr)


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


BOOT = """
import atexit, multiprocessing as mp, os, sys, threading, time
from multiprocessing import util
import ember

def report(tag, q):
    cp, pp = mp.current_process(), mp.parent_process()
    q.put((tag, cp.name, type(cp).__name__, pp.pid, pp.name,
           mp.active_children(), threading.main_thread().native_id == threading.get_native_id(),
           sys.stdin.read(), type(cp.authkey).__name__))

def ret(q):
    report("ret", q)

def exit3(q):
    report("exit3", q)
    sys.exit(3)

def exitmsg(q):
    sys.exit("leaving with a message")

def boom(q):
    raise ValueError("boom in the target")

class Held:
    pass

HELD = Held()

def finalizer_and_atexit(q):
    util.Finalize(HELD, print, args=("finalizer ran",), kwargs={"flush": True}, exitpriority=10)
    atexit.register(lambda: print("atexit ran", flush=True))

def lingering_thread(q):
    threading.Thread(target=lambda: (time.sleep(0.3), q.put(("thread done",)))).start()

def grandchild(q):
    c = mp.Process(target=report, args=("grandchild", q))
    c.start()           # not joined: the exit joins it

def seen(got, p):
    # the parent's pid: ours, or (a grandchild's) the child's
    if len(got) > 3:
        got = got[:3] + ({os.getpid(): "us", p.pid: "the child"}.get(got[3], got[3]),) + got[4:]
    return got

def out(*args):
    # print()'s pieces, one write each (PYTHONUNBUFFERED): a child's last
    # lines are out before join() returns (docs/python-processes.md), none
    # can land inside ours
    print(*args, flush=True)

class Sub(mp.Process):
    def __init__(self, q):
        super().__init__(name="Sub-x")
        self.q = q
    def run(self):
        report("sub", self.q)

if __name__ == "__main__":
    mp.set_start_method(sys.argv[1])
    q = mp.Queue()
    for fn, n in ((ret, 1), (exit3, 1), (exitmsg, 0), (boom, 0), (finalizer_and_atexit, 0),
                  (lingering_thread, 1), (grandchild, 1)):
        p = mp.Process(target=fn, args=(q,), name="P-" + fn.__name__)
        p.start(); p.join(60)
        out(fn.__name__, p.exitcode)
        for _ in range(n):
            out(" ", seen(q.get(timeout=30), p))
    p = Sub(q); p.start(); p.join(60)
    out("sub", p.exitcode, seen(q.get(timeout=30), p))
    util.log_to_stderr().setLevel(util.INFO)
    p = mp.Process(target=ret, args=(q,), name="P-logged"); p.start(); q.get(timeout=30); p.join(60)
    out("logged", p.exitcode)
"""


#: What the program prints under spawn (sorted: a child's lines reach the
#: terminal through ember's output forwarding, in no fixed order with the
#: parent's), stdout then stderr without the traceback's source lines.
BOOT_SPAWN = (sorted([
    "ret 0",
    "  ('ret', 'P-ret', 'Process', 'us', 'MainProcess', [], True, '', 'AuthenticationString')",
    "exit3 3",
    "  ('exit3', 'P-exit3', 'Process', 'us', 'MainProcess', [], True, '', 'AuthenticationString')",
    "exitmsg 1", "boom 1", "finalizer_and_atexit 0", "finalizer ran", "atexit ran",
    "lingering_thread 0", "  ('thread done',)", "grandchild 0",
    "  ('grandchild', 'Process-7:1', 'Process', 'the child', 'P-grandchild', [], True, '',"
    " 'AuthenticationString')",
    "sub 0 ('sub', 'Sub-x', 'Sub', 'us', 'MainProcess', [], True, '', 'AuthenticationString')",
    "logged 0"]),
    sorted(["leaving with a message", "Process P-boom:", "Traceback (most recent call last):",
            "ValueError: boom in the target", "[INFO/P-logged] child process calling self.run()",
            "[INFO/P-logged] process shutting down",
            "[INFO/P-logged] process exiting with exitcode 0",
            "[INFO/MainProcess] process shutting down"]))


@pytest.mark.timeout(120)
def test_the_preparation_data_pickles_no_global():
    """The preparation data and the process object's ``_config`` travel
    with their authkey (an ``AuthenticationString``) as plain bytes
    (``context.prep_bytes``): the child's unpickling looks up no module
    (``find_class``: the module's and its spec's pages of the template,
    written in every child), and makes it an ``AuthenticationString``
    again (the children's own, as spawn's: :func:`test_child_bootstrap_as_spawns`,
    tests/test_mp_program_template.py)."""
    import pickle
    import pickletools
    from multiprocessing import process

    from ember.mp import context

    key = process.AuthenticationString(b"k" * 32)
    data = context.prep_bytes({"authkey": key, "log_to_stderr": False},
                              {"authkey": key, "semprefix": "/mp"})
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert not ops & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE"}, ops
    assert pickle.loads(data) == ({"authkey": b"k" * 32, "log_to_stderr": False},
                                  {"authkey": b"k" * 32, "semprefix": "/mp"})


def test_child_bootstrap_as_spawns(tmp_path):
    """What multiprocessing's _bootstrap does in a child (the ember method
    runs its own, with fewer functions) is what spawn's child does (the
    program's output under spawn, :data:`BOOT_SPAWN`): exit codes (return,
    sys.exit(3), sys.exit("message") on stderr, an exception's traceback
    after "Process <name>:"), current_process()/parent_process(), no
    children, the main thread's native id, stdin at EOF, finalizers and
    atexit hooks at exit, a non-daemon thread and an unjoined child waited
    for, a subclass's run(), and multiprocessing's log lines."""
    (tmp_path / "prog.py").write_text(BOOT)
    res = subprocess.run([sys.executable, "prog.py", "ember"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    err = [ln for ln in res.stderr.splitlines() if not ln.startswith(("  File", "    "))]
    assert (sorted(res.stdout.splitlines()), sorted(err)) == BOOT_SPAWN, (res.stdout, res.stderr)


def test_a_large_bytes_argument_is_copied_once_in_the_parent_and_freed_if_the_child_dies(
        tmp_path):
    """A 32 MiB ``bytes`` argument of an "ember"-method start, or of a
    ``Pool`` task, is not copied into a whole pickle in the parent (the
    process object's pickle and the pool's message in pieces, the large
    ``bytes`` by reference, copied once into the message's pool block:
    the parent's heap never holds a second copy); the child unpickles it
    from the block.  Children killed at any point of that (the worker's
    receive, the main module's run, the process object's unpickling, the
    target) leave no block in the default pool."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import multiprocessing as mp, os, signal, time, tracemalloc
        import ember
        from ember.objects import naming

        def nbytes(b, q):
            q.put(len(b))

        def nap(b):
            time.sleep(60)

        def peak(fn):
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            try:
                fn()
                return tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            big = bytes(range(256)) * (1 << 17)
            q = ctx.Queue()
            p = ctx.Process(target=nbytes, args=(b"warm", q))    # (the runtime up)
            p.start()
            q.get(timeout=60)
            p.join(60)
            p = ctx.Process(target=nbytes, args=(big, q))
            print("start", peak(p.start) < 1 << 20)
            print("child", q.get(timeout=60) == len(big))
            p.join(60)
            with ctx.Pool(1) as pool:
                print("pool", pool.apply(len, (big,)) == len(big))
                print("apply", peak(lambda: pool.apply(len, (big,))) < 1 << 20)
                print("result", pool.apply(bytes, (len(big),)) == bytes(len(big)))
            dpool = naming.default_pool()
            free = dpool.stats().free
            big = big * 2
            for delay in (0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1):
                p = ctx.Process(target=nap, args=(big,))
                p.start()
                time.sleep(delay)
                p.kill()
                p.join(60)
            deadline = time.monotonic() + 30
            while dpool.stats().free < free - (8 << 20) and time.monotonic() < deadline:
                time.sleep(0.05)
            print("left", (free - dpool.stats().free) >> 20 < 8, p.exitcode)
    """))
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=100)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["start True", "child True", "pool True", "apply True",
                                       "result True", "left True -9"], (res.stdout, res.stderr)


EXITS = """
import atexit, concurrent.futures, logging, logging.handlers, multiprocessing as mp, os, sys
import threading, time, weakref
from multiprocessing import util
import ember

class Held:
    pass

HELD = Held()

def ret():
    pass

def unflushed():                    # stdout buffered (no PYTHONUNBUFFERED)
    sys.stdout.write("unflushed out\\n")

def exit3():
    sys.exit(3)

def exit0():
    sys.exit(0)

def boom():
    raise ValueError("boom in the target")

def atexit_hook():
    atexit.register(print, "atexit ran", flush=True)

def atexit_undone():
    atexit.register(print, "never")
    atexit.unregister(print)

def finalizer():
    util.Finalize(HELD, print, args=("finalizer ran",), kwargs={"flush": True}, exitpriority=10)

def weak_finalizer():
    weakref.finalize(HELD, print, "weakref.finalize ran", flush=True)

def held_log():                     # records held until logging.shutdown
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("log: %(message)s"))
    logging.getLogger("t").addHandler(logging.handlers.MemoryHandler(100, logging.CRITICAL, out))
    logging.getLogger("t").warning("held until shutdown")

def thread_left():
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()

def thread_ended():                 # ended, not joined
    t = threading.Thread(target=print, args=("thread ran",), kwargs={"flush": True})
    t.start()
    while t.is_alive():
        time.sleep(0.01)

def daemon_left():
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()

def executor_left():
    ex = concurrent.futures.ThreadPoolExecutor(1)
    ex.submit(lambda: (time.sleep(0.2), print("executor task done", flush=True)))

def forked():                       # a fork that returns from the target
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        print("fork parent", flush=True)

if __name__ == "__main__":
    mp.set_start_method(sys.argv[1])
    for fn in (ret, unflushed, exit3, exit0, boom, atexit_hook, atexit_undone, finalizer,
               weak_finalizer, held_log, thread_left, thread_ended, daemon_left, executor_left,
               forked, ret):
        p = mp.Process(target=fn, name="P-" + fn.__name__)
        p.start()
        p.join(60)
        print(fn.__name__, p.exitcode, flush=True)
        print(fn.__name__, "err", file=sys.stderr, flush=True)
"""


def test_a_child_s_end_runs_what_its_target_left_as_spawn_s(tmp_path):
    """A child of the "ember" method ends at once when its target returned
    and left nothing to run (template._end_quietly); what a target leaves
    runs as in spawn's child, in the same order with the parent's output:
    output written without a flush, sys.exit's codes, an exception, an
    atexit hook (and one registered and unregistered), a multiprocessing
    finalizer, a weakref.finalize, logging records held until its shutdown,
    a non-daemon thread running or ended unjoined, a daemon thread, a thread
    pool's task, a fork that returns from the target.  stdout and stderr
    buffered (no PYTHONUNBUFFERED)."""
    (tmp_path / "prog.py").write_text(EXITS)
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    got = {}
    for method in ("spawn", "ember"):
        res = subprocess.run([sys.executable, "prog.py", method], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=100)
        assert res.returncode == 0, (method, res.stderr)
        err = [ln for ln in res.stderr.splitlines() if not ln.startswith(("  File", "    "))]
        got[method] = (res.stdout.splitlines(), err)
    assert got["ember"] == got["spawn"], got
    assert "atexit ran" in got["spawn"][0] and "log: held until shutdown" in got["spawn"][0]


def test_a_child_that_left_nothing_ends_quietly(tmp_path):
    """The template's children may end quietly (template._quiet at their
    target: every atexit registration the template holds is one that does
    nothing in them), an "ember"-method child and an ember.Process child, in
    a program with and without logging; not once the target registered an
    atexit hook, started a thread or logs to a handler.  Each, quiet or
    not, the first starts too, marks its output board entry clean at its
    end (its joiner need not wait for the shepherd's drain).  The board is
    read once this process maps it (``_outboard.attach``): a join maps it
    only when the kernel says the exit (a named process's, here the first
    join, learns it from GS; so does the join of a child that ended before
    ``start()`` opened its pidfd, as a first start may under load), and
    ``ob_clean`` in a process that maps no board says False: the 'none
    True 0 False' of a first start under -n 2 (6a65833, which allowed one
    unmarked start of each kind) was that read, the child's entry marked."""
    for imports in ("", "import logging\n"):
        (tmp_path / "prog.py").write_text(imports + textwrap.dedent("""
            import atexit, logging, multiprocessing as mp, os, sys, threading, time
            import ember

            def quiet(q, what):
                from ember.shepherd import template
                if what == "atexit":
                    atexit.register(int)
                elif what == "thread":
                    threading.Thread(target=time.sleep, args=(0.2,)).start()
                elif what == "logging":
                    logging.getLogger("x").addHandler(logging.StreamHandler())
                q.put((what, template._quiet()))

            if __name__ == "__main__":
                from ember import _outboard
                from ember.shepherd import _spawn
                ctx = mp.get_context("ember")
                q = ctx.Queue()
                p = ember.Process(target=quiet, args=(q, "named"), name=f"quiet-{os.getpid()}")
                p.start(); q.get(timeout=60); p.join(60)
                print("named", _spawn.ob_mapped(), _outboard.attach(), _spawn.ob_clean(p.p_uid))
                for what in ("none", "atexit", "thread", "logging", "none"):
                    for make in (ctx.Process, ember.Process):
                        p = make(target=quiet, args=(q, what)); p.start()
                        got = q.get(timeout=60); p.join(60)
                        p_uid = p.p_uid if make is ember.Process else p._popen._proc.p_uid
                        print(*got, p.exitcode, _spawn.ob_clean(p_uid))   # marked at its end
        """))
        res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=100)
        assert res.returncode == 0, res.stderr
        lines = [ln.split() for ln in res.stdout.splitlines()]
        assert lines == [["named", "False", "True", "True"]] + [
            [what, quiet, "0", "True"] for what, quiet in [
                ("none", "True"), ("none", "True"), ("atexit", "False"), ("atexit", "False"),
                ("thread", "False"), ("thread", "False"), ("logging", "False"),
                ("logging", "False"), ("none", "True"), ("none", "True")]], \
            (imports, res.stdout, res.stderr)


def test_output_left_in_the_streams_a_target_replaced_is_written_as_spawn_s(tmp_path):
    """A target that wrote to stdout and stderr (buffered: no
    PYTHONUNBUFFERED, stderr without a newline) and then put other streams
    in their place (``sys.stdout = open(...)``, a log file per process):
    spawn's child writes what it left in the first ones at its exit
    (``Py_FinalizeEx`` puts ``sys.__stdout__`` back and flushes it), and so
    does an "ember"-method child, of the warm template and of the
    program's, and an ember.Process child; their exit flushed only the
    new streams and lost it."""
    (tmp_path / "prog.py").write_text(textwrap.dedent("""
        import multiprocessing as mp
        import sys

        import ember


        def work(i, log):
            sys.stdout.write(f"out {i}\\n")
            sys.stderr.write(f"err {i};")
            sys.stdout = sys.stderr = open(log, "w")
            print("in the log")


        if __name__ == "__main__":
            ctx = mp.get_context(sys.argv[1])
            for i in range(6):
                p = ctx.Process(target=work, args=(i, f"log{i}"))
                p.start()
                p.join(60)
                print("exit", i, p.exitcode, open(f"log{i}").read().strip(), flush=True)
            ember.Process.start_method = "spawn" if sys.argv[1] == "spawn" else "template"
            for i in range(6, 8):
                p = ember.Process(target=work, args=(i, f"log{i}"))
                p.start()
                p.join(60)
                print("exit", i, p.exitcode, open(f"log{i}").read().strip(), flush=True)
    """))
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    got = {}
    for method in ("spawn", "ember"):
        res = subprocess.run([sys.executable, "-m", "ember", "run", "prog.py", method],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
        assert res.returncode == 0, (method, res.stdout, res.stderr)
        # (stderr's pieces, each without a newline: in any order and lines)
        got[method] = res.stdout, sorted(re.findall(r"err \d;", res.stderr))
    want = "".join(f"out {i}\nexit {i} 0 in the log\n" for i in range(8))
    assert got["spawn"] == (want, [f"err {i};" for i in range(8)]), got
    assert got["ember"] == got["spawn"], got
