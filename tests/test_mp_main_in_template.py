"""The main module of an "ember"-method program runs once in the warm
template when its top level only defines (ember.mp._mainload): what runs
how often, and when a child runs it again as spawn's would."""
import os
import subprocess
import sys
import textwrap

import pytest

from ember.mp._mainload import why_not

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("source", [
    '"""doc"""\nimport os, sys\nfrom collections import namedtuple\nP = namedtuple("P", "x y")\n',
    "import multiprocessing as mp\nctx = mp.get_context('ember')\nN = 3 * 4\n",
    "from dataclasses import dataclass, field\n@dataclass(frozen=True)\nclass A:\n"
    "    x: list = field(default_factory=list)\n    @property\n    def y(self): return 1\n"
    "    @y.setter\n    def y(self, v): pass\n",
    "def f(x=(1, 2), *, y=None) -> int:\n    print(os.getpid())\n",
    "try:\n    import numpy\nexcept ImportError:\n    numpy = None\n",
    "SQUARES = [x * x for x in range(3)]\nf = lambda: print(1)\n",
    "x = dict()\ndef dict():\n    pass\n",
    "def main():\n    pass\nif __name__ == '__main__':\n    print('only in the parent')\n    main()\n",
])
def test_definition_only_top_levels_pass(source):
    assert why_not(source) is None


@pytest.mark.parametrize("source, reason", [
    ("print('hello')\n", "expression statement"),
    ("import time\nT0 = time.time()\n", "calls time.time"),
    ("import os\nHOME = os.environ['HOME']\n", "reads os.environ"),
    ("import os\nPID = os.getpid()\n", "os.getpid"),
    ("import os\nget = os.getenv\n", "reads os.getenv"),
    ("from os import environ as ENV\nMODE = ENV['MODE'] if 'MODE' in ENV else 'a'\n",
     "reads ENV"),
    ("from os import getpid as pid\nP = pid\n", "reads pid"),
    ("import os\nE = getattr(os, 'environ')\n", "reads getattr(os, 'environ')"),
    ("import multiprocessing as mp\nCTX = mp.get_context()\n", "reads the start method"),
    ("from multiprocessing import get_context\nCTX = get_context(None)\n",
     "reads the start method"),
    ("def helper():\n    return 1\nX = helper()\n", "calls helper"),
    ("def dict():\n    pass\nx = dict()\n", "calls dict"),
    ("import sys\nsys.path.insert(0, 'lib')\n", "expression statement"),
    ("import sys\nsys.flag = 1\n", "assigns to sys.flag"),
    ("import atexit\n@atexit.register\ndef bye():\n    pass\n", "decorator atexit.register"),
    ("if __name__ == '__mp_main__':\n    raise SystemExit(5)\n", "Raise"),
    ("for i in range(3):\n    pass\n", "For"),
    ("with open('f') as f:\n    pass\n", "With"),
    ("L = [g(x) for x in range(3)]\n", "calls g"),
    ("def f(t=open('log', 'a')):\n    pass\n", "calls open"),
    ("class A(Base, metaclass=make_meta()):\n    pass\n", "calls make_meta"),
    ("def broken(:\n", "does not compile"),
])
def test_top_levels_that_may_do_more_are_refused(source, reason):
    got = why_not(source)
    assert got is not None and reason in got, got


def _run(tmp_path, main, env=None, timeout=150):
    (tmp_path / "prog.py").write_text(textwrap.dedent(main))
    res = subprocess.run([sys.executable, "prog.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert res.returncode == 0, (res.stdout, res.stderr)
    return res.stdout.splitlines()


_PROG = """
    import multiprocessing as mp
    import sys
    from collections import namedtuple

    import ember
    import helper

    Point = namedtuple("Point", "x y")
    TABLE = {i: i * i for i in range(4)}

    def report(q):
        import sys
        from ember.mp import _mainload
        import helper
        q.put((_mainload.installed is not None, helper.VALUE, TABLE, Point(1, 2),
               sys.modules["__main__"] is sys.modules["__mp_main__"]))

    def plain():
        import sys
        return "helper" in sys.modules

    if __name__ == "__main__":
        ctx = mp.get_context("ember")
        q = ctx.Queue()
        for i in range(3):
            p = ctx.Process(target=report, args=(q,)); p.start()
            print(*q.get(timeout=60)); p.join(60); print("exit", p.exitcode)
        p = ember.Process(target=plain); p.start()
        print("plain", p.result(60)); p.join(60)
        from multiprocessing import spawn
        from ember.mp import _mainload
        print("expected", _mainload.expected(spawn.get_preparation_data("x")))
"""


def test_a_definition_only_main_runs_once_in_the_template_and_not_in_children(tmp_path):
    """Children of a definition-only main find it in place (the template ran
    it, with the parent's sys.path: ``helper`` is found in the program's
    directory); objects of the main module travel both ways; a plain
    ``ember.Process`` child sees none of the program's modules; with
    ``EMBER_MP_MAIN_IN_TEMPLATE=0`` every child runs it again, same results."""
    (tmp_path / "helper.py").write_text("VALUE = 42\n")
    row = "42 {0: 0, 1: 1, 2: 4, 3: 9} Point(x=1, y=2) True"
    out = _run(tmp_path, _PROG)
    assert out == [f"True {row}", "exit 0"] * 3 + ["plain False", "expected True"], out
    out = _run(tmp_path, _PROG, env={"EMBER_MP_MAIN_IN_TEMPLATE": "0"})
    assert out == [f"False {row}", "exit 0"] * 3 + ["plain False", "expected False"], out


_COUNTING = """
    import multiprocessing as mp
    import os
    import sys

    import ember
    {imports}

    {effect}

    def report(q):
        from ember.mp import _mainload
        q.put(_mainload.installed is not None)

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        q = ctx.Queue()
        for i in range(3):
            p = ctx.Process(target=report, args=(q,)); p.start()
            print("installed", q.get(timeout=60)); p.join(60); print("exit", p.exitcode)
        from multiprocessing import spawn
        from ember.mp import _mainload
        assert not _mainload.expected(spawn.get_preparation_data("x"))
"""


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("where", ["main", "helper"])
def test_a_top_level_with_side_effects_runs_in_each_child_as_under_spawn(tmp_path, where):
    """A top level that does more than define (here: appends a line to a
    file), in the main module or in a program module it imports, is never
    run in the template: each child runs it once, as spawn's children do
    (the parent once, three children three times: the same four lines as
    under spawn, not five)."""
    effect = "with open('runs.txt', 'a') as f:\n        f.write(__name__ + '\\n')"
    if where == "main":
        main = _COUNTING.format(imports="", effect=effect)
    else:
        (tmp_path / "helper.py").write_text(effect.replace("\n        ", "\n    ") + "\n")
        main = _COUNTING.format(imports="import helper", effect="")
    (tmp_path / "prog.py").write_text(textwrap.dedent(main))
    counts = {}
    for method in ("ember", "spawn"):
        (tmp_path / "runs.txt").unlink(missing_ok=True)
        res = subprocess.run([sys.executable, "prog.py", method], cwd=tmp_path,
                             capture_output=True, text=True, timeout=150)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines() == ["installed False", "exit 0"] * 3, res.stdout
        counts[method] = sorted(_lines(tmp_path / "runs.txt"))
    want = sorted(["__main__"] + ["__mp_main__"] * 3) if where == "main" else ["helper"] * 4
    assert counts == {"ember": want, "spawn": want}


def test_a_main_module_changed_after_the_start_is_the_one_children_run(tmp_path):
    """spawn's children run the main file as it is when they start: after
    the file changed, the template runs the new version (the parent's
    entry names its mtime and size) and children see it; so after a
    program module it imports changed (the entry names the version of
    each program module the parent imported): the template runs the main
    module again, with the module as it is now, and children find that
    run in place (on a stale run, each child ran the main module again,
    compiling every file)."""
    (tmp_path / "helper.py").write_text("VALUE = 'helper 1'\n")
    main = """
        import multiprocessing as mp
        import os

        import ember
        import helper

        VALUE = "main 1"

        def report(q):
            from ember.mp import _mainload
            import helper
            q.put((_mainload.installed is not None, VALUE, helper.VALUE))

        def start(ctx, q):
            p = ctx.Process(target=report, args=(q,)); p.start()
            print(*q.get(timeout=60)); p.join(60)

        def rewrite(name, old, new, ns):
            with open(name) as f:
                text = f.read()
            with open(name, "w") as f:
                f.write(text.replace(old, new))
            os.utime(name, ns=(ns, ns))

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            start(ctx, q)
            rewrite("prog.py", '"main 1"', '"main 2"', 10**18)
            start(ctx, q)
            start(ctx, q)
            rewrite("helper.py", "'helper 1'", "'helper 2'", 10**18)
            start(ctx, q)
            print("parent", VALUE, helper.VALUE)
    """
    out = _run(tmp_path, main)
    assert out == ["True main 1 helper 1", "True main 2 helper 1", "True main 2 helper 1",
                   "True main 2 helper 2", "parent main 1 helper 1"], out


def test_a_program_package_with_relative_imports_comes_from_the_template_run(tmp_path):
    """A definition-only package of the program's (``__init__`` and a
    submodule imported relatively) is checked and imported in the
    template's run, and the child finds package and submodule in place;
    the same program with a package whose ``__init__`` prints runs the
    main module in each child (the print once per child, as under spawn)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .core import scale\nNAME = 'pkg'\n")
    (pkg / "core.py").write_text("FACTOR = 3\n\ndef scale(x):\n    return x * FACTOR\n")
    main = """
        import multiprocessing as mp

        import ember
        import pkg

        def report(q):
            import sys
            from ember.mp import _mainload
            q.put((_mainload.installed is not None, pkg.scale(2), pkg.NAME,
                   sys.modules["pkg.core"] is pkg.core))

        if __name__ == "__main__":
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            for i in range(2):
                p = ctx.Process(target=report, args=(q,)); p.start()
                print(*q.get(timeout=60)); p.join(60)
    """
    out = _run(tmp_path, main)
    assert out == ["True 6 pkg True"] * 2, out
    (pkg / "__init__.py").write_text("from .core import scale\nNAME = 'pkg'\nprint('pkg imported')\n")
    out = _run(tmp_path, main)
    # (a child's print reaches the output through the shepherd: in any order)
    assert sorted(out) == ["False 6 pkg True"] * 2 + ["pkg imported"] * 3, out


def test_the_template_run_and_the_shipped_code_take_the_same_modules_as_the_programs(tmp_path):
    """One rule (``_mainload.program_origin``) says which modules are the
    program's, for the parent's check of what the template may run
    (``_mainload.expected``) and for the program code it ships compiled
    when the template does not run it (``context._program_codes``): both
    take the same files, here a program module whose name starts with
    "ember" (the shipped code once left it out by its name, while the
    template's check took it) beside an ordinary one."""
    (tmp_path / "ember_tools.py").write_text("VALUE = 'tools'\n")
    (tmp_path / "helper.py").write_text("VALUE = 'helper'\n")
    main = """
        import multiprocessing as mp
        import os

        import ember
        import ember_tools
        import helper

        def report(q):
            q.put((ember_tools.VALUE, helper.VALUE))

        if __name__ == "__main__":
            from multiprocessing import spawn
            from ember.mp import _mainload, context
            ctx = mp.get_context("ember")
            q = ctx.Queue()
            p = ctx.Process(target=report, args=(q,)); p.start()
            print(*q.get(timeout=60)); p.join(60); print("exit", p.exitcode)
            print("expected", _mainload.expected(spawn.get_preparation_data("x")))
            checked = set(_mainload._checked.entries) - {os.path.abspath("prog.py")}
            shipped = set(context._program_codes()[1])
            print("checked", *sorted(os.path.basename(f) for f in checked))
            print("shipped", *sorted(os.path.basename(f) for f in shipped))
    """
    out = _run(tmp_path, main, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert out == ["tools helper", "exit 0", "expected True",
                   "checked ember_tools.py helper.py", "shipped ember_tools.py helper.py"], out


def test_a_run_is_installed_only_for_its_own_main_sys_path_argv_and_cwd():
    """A start's call names the template's run by the CRC-32 of its preload
    entry (``_mainload.run_key``): a run found under a child's key is
    installed only if its main file, ``sys.path``, ``argv`` and working
    directory are the child's (two entries with the same CRC cost a run of
    the main module in the child, never a wrong module)."""
    code = textwrap.dedent("""
        import sys, types
        from ember.mp import _mainload as ml
        mod = types.ModuleType("__mp_main__")
        ml._mains["k"] = ("entry", ml._Main("/x/prog.py", ["/x"], ["prog.py", "a"], "/x",
                                            mod, {}, {}))
        prep = {"init_main_from_path": "/x/prog.py", "sys_path": ["/x"],
                "sys_argv": ["prog.py", "a"], "dir": "/x"}
        for item, value in (("init_main_from_path", "/y/prog.py"), ("sys_path", ["/y"]),
                            ("sys_argv", ["prog.py", "b"]), ("dir", "/y")):
            print(item, ml.install(dict(prep, **{item: value}), "k"))
        print("same", ml.install(prep, "k"), sys.modules["__main__"] is mod)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["init_main_from_path False", "sys_path False",
                                       "sys_argv False", "dir False", "same True True"], \
        res.stdout


@pytest.mark.timeout(60)
def test_the_main_modules_entry_is_the_same_in_every_interpreter(tmp_path):
    """The preload entry for the same program (main file, program modules,
    sys.path, argv, cwd) is the same bytes in every process: a parent's and
    its (nested) children's starts share the template's run and its spares.
    On main it carried hash() of the program modules' versions, salted per
    interpreter (PYTHONHASHSEED), and differed."""
    (tmp_path / "helper_entry.py").write_text("VALUE = 1\n")
    (tmp_path / "prog.py").write_text("import helper_entry\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import helper_entry
        from ember.mp import _mainload
        assert helper_entry.__file__ in _mainload._program_files(), _mainload._program_files()
        print(_mainload.entry({{"init_main_from_path": {str(tmp_path / "prog.py")!r},
                               "sys_path": [{str(tmp_path)!r}], "sys_argv": ["prog.py"],
                               "dir": {str(tmp_path)!r}}}))
    """)
    got = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        got.append(res.stdout.strip())
    assert got[0] == got[1] and got[0].startswith("?"), got


_OPTIMIZED = """
    import multiprocessing as mp
    import sys

    import ember
    import helper

    DEBUG = "on"
    if not __debug__:
        DEBUG = "off"

    def checks():
        assert False, "an assert ran in the main module"
        return "asserts off"

    def asserts(f):
        try:
            return f()
        except AssertionError:
            return "asserts on"

    def report(q):
        q.put((DEBUG, asserts(checks), helper.DEBUG, asserts(helper.checks)))

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        q = ctx.Queue()
        for i in range(2):
            p = ctx.Process(target=report, args=(q,)); p.start()
            print(*q.get(timeout=60)); p.join(60); print("exit", p.exitcode)
"""


@pytest.mark.parametrize("method", ["ember", "spawn"])
def test_a_main_run_with_python_O_is_compiled_optimized_in_the_children(tmp_path, method):
    """``python -O prog.py``: the child's main module and program modules
    are compiled as the parent's are (``__debug__`` False, no asserts), as
    spawn's child is (it gets ``-O`` on its command line).  The template
    runs with ``sys.flags.optimize`` 0, so its run of a definition-only
    main module had ``__debug__`` True and its asserts on in every child."""
    (tmp_path / "helper.py").write_text(textwrap.dedent("""
        DEBUG = "on"
        if not __debug__:
            DEBUG = "off"

        def checks():
            assert False, "an assert ran in a program module"
            return "asserts off"
    """))
    (tmp_path / "prog.py").write_text(textwrap.dedent(_OPTIMIZED))
    res = subprocess.run([sys.executable, "-O", "prog.py", method], cwd=tmp_path,
                         capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["off asserts off off asserts off", "exit 0"] * 2, \
        (res.stdout, res.stderr)



_ENV_READ = """
    import multiprocessing as mp
    import os
    import sys
    from os import environ as ENV

    import ember

    {top}

    def report(q):
        q.put(VALUE)

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        q = ctx.Queue()
        for value in ("/tmp/first", "/tmp/second"):
            os.environ[{var!r}] = value
            p = ctx.Process(target=report, args=(q,)); p.start()
            print(q.get(timeout=60)); p.join(60)
"""


@pytest.mark.parametrize("var, top", [
    ("EMBER_TEST_MODE", 'VALUE = ENV["EMBER_TEST_MODE"] if "EMBER_TEST_MODE" in ENV else "unset"'),
    ("HOME", 'VALUE = os.path.expanduser("~")'),
], ids=["environ-as-ENV", "expanduser"])
@pytest.mark.parametrize("method", ["ember", "spawn"])
def test_a_main_reading_the_environment_runs_in_each_child(tmp_path, method, var, top):
    """A top level that reads the environment without naming ``os.environ``
    (``from os import environ as ENV``; ``os.path.expanduser``, which reads
    ``HOME``): each child runs the main module with the environment it
    starts with (the parent's, changed before each start), as spawn's does.
    The check passed both, so the template ran such a main once, with its
    own environment, and every child had the template's value."""
    (tmp_path / "prog.py").write_text(textwrap.dedent(_ENV_READ).format(top=top, var=var))
    res = subprocess.run([sys.executable, "prog.py", method], cwd=tmp_path,
                         capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["/tmp/first", "/tmp/second"], (res.stdout, res.stderr)


_DEFAULT_CONTEXT = """
    import multiprocessing as mp
    import sys

    import ember

    CTX = mp.get_context()

    def report(q):
        q.put(CTX.get_start_method())

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[1], force=True)
        q = mp.Queue()
        p = mp.Process(target=report, args=(q,)); p.start()
        print(q.get(timeout=60)); p.join(60)
"""


@pytest.mark.parametrize("method", ["ember", "spawn"])
def test_a_main_taking_the_current_context_runs_in_each_child(tmp_path, method):
    """``CTX = mp.get_context()`` at the top level (no method named): the
    child's is the context of the start method the parent set, which
    spawn's child sets before it runs the main module.  The check took any
    ``get_context`` call for pure, the template ran the main with its own
    start method, and every child's ``CTX`` was fork's."""
    (tmp_path / "prog.py").write_text(textwrap.dedent(_DEFAULT_CONTEXT))
    res = subprocess.run([sys.executable, "prog.py", method], cwd=tmp_path,
                         capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == [method], (res.stdout, res.stderr)
