"""A .py head runs in a fork of the shepherd's already-initialised
interpreter (issue 7, `ember run empty.py` start-up cost), and looks to its
program like `python3 prog.py ARGS` did."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from test_runtime import start_ready

pytestmark = pytest.mark.timeout(60)


def run(tmp_path, body, *args, env=None, name="prog.py", flags=(), **kw):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, "-m", "ember", "run", *flags, name, *args],
                          cwd=tmp_path, capture_output=True, timeout=60, env=env, **kw)


_PROBE = r"""
    import os, sys
    print("forked", "ember.launcher.cli" in sys.modules)
    print("argv", sys.argv)
    print("file", __file__ == os.path.join(os.getcwd(), "prog.py"), __name__)
    print("path0", sys.path[0] == os.getcwd())
    print("env", os.environ["EMBER_P_UID"], "EMBER_FORK_PY" in os.environ, "EMBER_STDIN" in os.environ)
    print("main", sys.modules["__main__"].__file__ == __file__)
    import threading
    t = threading.current_thread()
    print("thread", t.name, t.daemon, t is threading.main_thread())
    cmd = open("/proc/self/cmdline", "rb").read().replace(b"\0", b" ").decode().strip()
    print("ps", cmd == " ".join([sys.executable] + sys.argv))
"""


def test_py_head_is_forked_and_looks_like_python3(tmp_path):
    res = run(tmp_path, _PROBE, "a", "b c")
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == [
        "forked True", "argv ['prog.py', 'a', 'b c']", "file True __main__", "path0 True",
        "env 1 False False", "main True", "thread MainThread False True", "ps True"]


def test_ember_fork_py_0_starts_a_new_interpreter(tmp_path):
    res = run(tmp_path, _PROBE, env={**os.environ, "EMBER_FORK_PY": "0"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines()[0] == "forked False"


@pytest.mark.parametrize("body, code, err", [
    ("import sys; sys.exit(3)", 3, ""),
    ("import sys; sys.exit('bye')", 1, "bye\n"),
    ("raise SystemExit", 0, ""),
    ("def f():\n    raise ValueError('boom')\nf()", 1,
     'Traceback (most recent call last):\n  File "{path}", line 3, in <module>\n    f()\n'
     '  File "{path}", line 2, in f\n    raise ValueError(\'boom\')\nValueError: boom\n'),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + 15, ""),
    ("raise KeyboardInterrupt", 128 + 2,
     'Traceback (most recent call last):\n  File "{path}", line 1, in <module>\n'
     '    raise KeyboardInterrupt\nKeyboardInterrupt\n'),
])
def test_exit_codes_and_tracebacks(tmp_path, body, code, err):
    res = run(tmp_path, body, flags=("--no-death-reports",))   # stderr: the program's only
    assert (res.returncode, res.stderr.decode()) == (code, err.format(path=tmp_path / "prog.py"))


def test_end_of_program_as_in_python3(tmp_path):
    res = run(tmp_path, r"""
        import atexit, sys, threading, time
        atexit.register(lambda: print("atexit ran", flush=True))
        def late():
            time.sleep(0.2)
            print("thread done", flush=True)
        threading.Thread(target=late).start()
        sys.stdout.write("no newline, no flush")
    """)
    assert (res.returncode, res.stderr) == (0, b"")
    assert res.stdout == b"no newline, no flushthread done\natexit ran\n"


def test_sigint_to_a_forked_head_raises_keyboard_interrupt(tmp_path):
    p = start_ready(tmp_path, """
        import sys, time
        try:
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(9)
    """, start_new_session=True)
    os.killpg(p.pid, signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out, err) == (9, b"interrupted\n", b"")


def test_forked_head_is_a_managed_process(tmp_path):
    res = run(tmp_path, r"""
        import os, sys
        from ember.globalservices import process
        me = process.query(1)
        assert me.location.os_pid == os.getpid() and me.is_alive, me
        assert os.getpgrp() == os.getpid()
        assert (1, None) in process.get_list()
        c = process.create(sys.executable, ".", ["-c", "print('child ran')"])
        assert process.join(c.p_uid) == 0
        print("fds", sorted(int(f) for f in os.listdir("/proc/self/fd"))[:3])
    """)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().splitlines()
    assert "child ran" in out and "fds [0, 1, 2]" in out, out


def test_forked_head_and_services_run_with_the_cyclic_gc_on(tmp_path):
    """`python -m ember` turns the cyclic GC off until the bring-up has
    frozen what it allocated (cli.entry, Launcher.run): the head's program,
    the processes it creates and the services run with it on, as python3
    does; the commands that bring nothing up turn it on again (main)."""
    res = run(tmp_path, r"""
        import gc, sys
        from ember.globalservices import process
        print("head", gc.isenabled(), gc.get_threshold())
        c = process.create(sys.executable, ".", ["-c", "import gc; print('child', gc.isenabled())"])
        assert process.join(c.p_uid) == 0
    """)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode().splitlines()
    assert "head True (700, 10, 10)" in out and "child True" in out, out
    from ember.launcher import cli
    import gc
    gc.disable()                  # as entry() leaves it
    try:
        assert cli.main(["cleanup", "--dry-run", "--events-only"]) == 0
        assert gc.isenabled()
    finally:
        gc.enable()


def test_forked_head_compiles_its_program_as_python3_does(tmp_path):
    """The head's program is compiled as ``python3 prog.py`` compiles a
    script, not by compile(), whose check for an AST source makes the ast
    module's ~120 node types at a process's first call (~1 ms of every
    head's start): none are made unless the program asks for them.  What
    the program sees is compile()'s: its path in a traceback and in a
    SyntaxError, a coding cookie, future imports, the error of a NUL byte."""
    res = run(tmp_path, r"""
        from __future__ import annotations
        import gc, sys
        n = sum(1 for o in gc.get_objects() if isinstance(o, type) and o.__module__ == "ast")
        def f(x: undefined_name) -> None: pass
        print("ast types", n, f.__annotations__["x"])
        raise RuntimeError("from the head")
    """)
    err = res.stderr.decode()
    assert res.returncode == 1, err
    assert res.stdout.decode().splitlines() == ["ast types 0 undefined_name"], res.stdout
    assert f'File "{tmp_path / "prog.py"}", line 7, in <module>' in err and "RuntimeError: from the head" in err, err
    res = run(tmp_path, "x = (\n", name="bad.py")
    err = res.stderr.decode()
    assert res.returncode == 1 and f'File "{tmp_path / "bad.py"}", line 1' in err and "SyntaxError" in err, err
    (tmp_path / "latin.py").write_bytes("# -*- coding: latin-1 -*-\nprint('caf\xe9')\n".encode("latin-1"))
    res = subprocess.run([sys.executable, "-m", "ember", "run", "latin.py"], cwd=tmp_path,
                         capture_output=True, timeout=60)
    assert (res.returncode, res.stdout.decode()) == (0, "caf\xe9\n"), res.stderr
    (tmp_path / "nul.py").write_bytes(b"x = 1\0\n")
    res = subprocess.run([sys.executable, "-m", "ember", "run", "nul.py"], cwd=tmp_path,
                         capture_output=True, timeout=60)
    assert res.returncode == 1 and b"null bytes" in res.stderr, res.stderr


def test_only_the_launcher_can_ask_for_a_forked_worker(tmp_path):
    """EMBER_FORK_PY is the launcher's spawn directive (a fork of the
    shepherd has its memory): a managed process's create with it is refused
    (docs/architecture.md, "Trust model"); without it the worker is a new
    interpreter."""
    (tmp_path / "worker.py").write_text(
        "import sys\nprint('worker', sys.argv[1:], 'ember.launcher.cli' in sys.modules)\n")
    res = run(tmp_path, r"""
        import sys
        from ember.exceptions import ProcessError
        from ember.globalservices import process
        try:
            process.create(sys.executable, ".", ["worker.py", "1"], env={"EMBER_FORK_PY": "1"})
        except ProcessError as e:
            print("refused:", e)
        w = process.create(sys.executable, ".", ["worker.py", "0"])
        assert process.join(w.p_uid) == 0
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().splitlines() == [
        "refused: EMBER_FORK_PY is a spawn directive of the launcher only (process 1 may not "
        "ask for it)", "worker ['0'] False"]


def test_start_path_stays_lean(tmp_path):
    """A .py head is a fork of the shepherd, itself a fork of the launcher:
    what the start path imports is in every head.  None of the modules it
    avoids (threading, signal and its enum: ~3 ms of CPU in every `ember
    run`; pickle, json, re, logging) may creep back (docs/architecture.md,
    "Performance")."""
    res = run(tmp_path, """
        import sys
        print(sorted(m for m in ("threading", "signal", "enum", "_pickle", "json", "re",
                                 "logging", "ember._slots") if m in sys.modules))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"[]\n"


def test_lazy_broken_barrier_error_is_one_picklable_class():
    """ember.exceptions.BrokenBarrierError is made on first use (its base is
    threading's): every way to reach it gives the same class, still a
    threading.BrokenBarrierError, and it pickles by reference."""
    code = textwrap.dedent("""
        import pickle, sys
        import ember, ember.exceptions
        assert "threading" not in sys.modules
        from ember.exceptions import BrokenBarrierError as B
        import threading
        from ember.sync_c import BrokenBarrierError as B2
        e = pickle.loads(pickle.dumps(B("broken")))
        print(B is ember.BrokenBarrierError is ember.exceptions.BrokenBarrierError is B2,
              issubclass(B, threading.BrokenBarrierError), type(e) is B, str(e))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"True True True broken\n"


def test_lazy_exceptions_are_one_class_when_threads_race_for_them():
    """Threads that reach a lazy exception class at once (the first use is
    in any of them) all get one class: what one raises, another's
    ``except`` catches.  (The factory is slowed down here so that they do
    race: each makes a class; only the first stored is handed out.)"""
    code = textwrap.dedent("""
        import threading, time
        import ember.exceptions as ex
        for name in ("BrokenBarrierError", "MessageError"):
            real = ex._LAZY[name]
            def slow(real=real):
                c = real()
                time.sleep(0.05)
                return c
            ex._LAZY[name] = slow
            got = []
            ts = [threading.Thread(target=lambda: got.append(getattr(ex, name)))
                  for _ in range(8)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            print(name, len(got), len(set(got)), got[0] is getattr(ex, name))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"BrokenBarrierError 8 1 True\nMessageError 8 1 True\n"
