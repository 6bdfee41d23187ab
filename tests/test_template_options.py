"""A parent run with interpreter options (``python -O``, ``-X dev``, ``-W
error``, ...) has its children cloned from a warm template started with
those options (ember.shepherd.template, ``Template._for_options``), not
started as fresh interpreters: each child has the options spawn's child has,
and came from a template; two programs of one runtime with other options
each have theirs; the templates made for them go with the runtime."""
import os
import subprocess
import sys
import textwrap
import time

import pytest
from procs import templates

pytestmark = pytest.mark.timeout(180)

_STATE = f"""
    import multiprocessing as mp
    import sys

    import ember
    sys.path.append({os.path.dirname(os.path.abspath(__file__))!r})     # tests/procs.py
    from procs import templates
    from ember import _env

    def _cloned():
        # a template's clone runs the template's command line; a fresh
        # interpreter, ember._worker's
        with open("/proc/self/cmdline", "rb") as f:
            return b"ember._template" in f.read().split(b"\\0")

    def state(q=None):
        try:
            assert False
            asserts = False
        except AssertionError:
            asserts = True
        got = ((tuple(sys.flags), sys.warnoptions, sys._xoptions, __debug__, asserts),
               _cloned())
        if q is None:
            return got
        q.put(got)

    def mp_child(ctx, target=state):
        q = ctx.Queue()
        p = ctx.Process(target=target, args=(q,))
        p.start()
        got = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        return got

    def ember_child(target=state):
        p = ember.Process(target=target)
        p.start()
        got = p.result(60)
        p.join(60)
        return got
"""


def _run(tmp_path, main, options=(), env=None, timeout=150):
    (tmp_path / "prog.py").write_text(textwrap.dedent(_STATE) + textwrap.dedent(main))
    res = subprocess.run([sys.executable, *options, "prog.py"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (res.stdout, res.stderr[-3000:])
    return res.stdout.splitlines()


_EACH = """
    if __name__ == "__main__":
        want = mp_child(mp.get_context("spawn"))[0]
        em = mp.get_context("ember")
        for i in range(3):                      # the first start, then spares and leases
            got = mp_child(em)
            print("mp", i, got[0] == want or (got[0], want), got[1])
        for i in range(3):
            got = ember_child()
            print("Process", i, got[0] == want or (got[0], want), got[1])
"""


@pytest.mark.parametrize("options", [
    ["-O"], ["-OO", "-b"], ["-X", "dev"], ["-W", "error"], ["-W", "ignore::DeprecationWarning"],
    ["-E", "-s"], ["-I"], ["-P", "-q"], ["-X", "utf8", "-X", "warn_default_encoding"],
    ["-X", "faulthandler", "-X", "frozen_modules=off"], ["-B"], ["-v"], ["-X", "importtime"]],
    ids=" ".join)
def test_a_child_has_the_options_spawns_child_has_from_a_template(tmp_path, options):
    """Under each option, an "ember" child (the first, then later ones)
    and an ``ember.Process`` child have ``sys.flags``, ``sys.warnoptions``,
    ``sys._xoptions``, ``__debug__`` and asserts as a spawn child of the
    same parent has them, and came from a template (``-B`` without
    ``PYTHONDONTWRITEBYTECODE`` in the environment, where it is the
    runtime's own).  ``-v`` and ``-X importtime``, whose output at start-up
    would be the template's, start a fresh interpreter.  Before, every
    option here started each child in a fresh interpreter (~50 ms)."""
    env = {k: v for k, v in os.environ.items()
           if options != ["-B"] or k != "PYTHONDONTWRITEBYTECODE"}
    out = _run(tmp_path, _EACH, options, env=env)
    tmpl = options not in (["-v"], ["-X", "importtime"])
    assert out == [f"{kind} {i} True {tmpl}" for kind in ("mp", "Process")
                   for i in range(3)], out


def test_a_template_killed_at_its_start_up_is_made_again_at_the_next_start(tmp_path):
    """The template of a program's options (``-X dev``) SIGKILLed at its
    start-up, twice (here by a ``sitecustomize``: by hand, by the OOM
    killer), before it ever answered: that start's child runs in a fresh
    interpreter, and the next start makes the template again, its
    children from it.  A kill is no sign that the options cannot start a
    template (an import failing under them makes it exit): every child of
    the runtime was a fresh interpreter (~50 ms a start)."""
    site = tmp_path / "site"
    site.mkdir()
    kills = tmp_path / "kills"
    (site / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import os
        with open("/proc/self/cmdline", "rb") as f:
            if b"ember._template" in f.read().split(b"\\0"):
                with open({str(kills)!r}, "a+") as g:
                    g.seek(0)
                    if len(g.read()) < 2:
                        g.write("k")
                        g.flush()
                        os.kill(os.getpid(), 9)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = _run(tmp_path, """
        if __name__ == "__main__":
            em = mp.get_context("ember")
            for i in range(4):
                got = mp_child(em)
                print(i, got[0][1] == sys.warnoptions, got[1])
            made = templates(_env.get(_env.RUNTIME_ID))
            print("templates", sorted({f is not None and "dev" in f for _, f in made.values()}))
    """, ["-X", "dev"], env=env)
    assert kills.read_text() == "kk"
    assert out == ["0 True False"] + [f"{i} True True" for i in (1, 2, 3)] + [
        "templates [True]"], out


_START_UPS = """
    import multiprocessing as mp
    import os
    import sys
    import ember

    def f():
        pass

    if __name__ == "__main__":
        method, var, when = sys.argv[1:]
        if when == "before":
            os.environ[var] = "1"
        if when != "-":
            ember.init()
            os.environ[var] = "1"
        ctx = mp.get_context(method)
        for _ in range(3):
            p = ctx.Process(target=f)
            p.start()
            p.join()
            assert p.exitcode == 0
"""


def _start_ups(tmp_path, mark, options=(), var="-", when="-"):
    """How many lines ``mark`` the children of three starts print on
    stderr, under spawn and under the "ember" method (``{method:
    count}``): the program run with ``options``, or with ``var`` set in
    its ``os.environ`` ``when`` "before" ``ember.init()`` or "after"."""
    (tmp_path / "prog.py").write_text(textwrap.dedent(_START_UPS))
    count = {}
    for method in ("spawn", "ember"):
        res = subprocess.run([sys.executable, *options, "prog.py", method, var, when],
                             cwd=tmp_path, capture_output=True, text=True, timeout=150)
        assert res.returncode == 0, res.stderr[-3000:]
        count[method] = res.stderr.count(mark)
    return count


@pytest.mark.parametrize("options, mark", [
    (["-v"], "# installing zipimport hook"),
    (["-X", "importtime"], "import time: self [us] | cumulative | imported package")],
    ids=["-v", "-X importtime"])
def test_start_up_output_is_that_of_spawns_children(tmp_path, options, mark):
    """Under ``-v`` and ``-X importtime`` every interpreter prints its
    imports as it starts: a program's children under the "ember" method
    print what spawn's print, no more.  Each child is a fresh interpreter
    with the options (a template's would print the template's imports),
    and none is started ahead for the next start (a lease: it printed its
    start-up, a process the program never started; 3 starts printed 4
    children's)."""
    count = _start_ups(tmp_path, mark, options=options)
    assert count["ember"] == count["spawn"] >= 4, count


@pytest.mark.parametrize("when", ["before", "after"],
                         ids=["in the runtime's", "after the runtime's start"])
@pytest.mark.parametrize("var, mark", [
    ("PYTHONVERBOSE", "# installing zipimport hook"),
    ("PYTHONPROFILEIMPORTTIME", "import time: self [us] | cumulative | imported package")],
    ids=["PYTHONVERBOSE", "PYTHONPROFILEIMPORTTIME"])
def test_start_up_output_set_by_a_variable_is_that_of_spawns(tmp_path, var, mark, when):
    """``PYTHONVERBOSE`` and ``PYTHONPROFILEIMPORTTIME`` set in
    ``os.environ`` after the program's start, before ``ember.init()`` (the
    runtime's environment has it) or after, are ``-v`` and ``-X
    importtime`` to its children: under the "ember" method they print the
    start-ups spawn's print, no more, no fewer (a template started with
    the variable printed its own imports and its children none, or a
    fresh child's were printed and a lease's too)."""
    count = _start_ups(tmp_path, mark, var=var, when=when)
    assert count["ember"] == count["spawn"] >= 3, count


def test_two_programs_with_other_options_each_have_theirs_and_nothing_is_left(tmp_path):
    """A runtime's first program (no options) and two programs attached to
    it at once, run with ``-O`` and ``-X dev``: each one's children (the
    "ember" method's, then ``ember.Process``'s) have its options, from a
    template; there is one template per option set while they run, and
    none once the runtime is gone (the autouse check: no segment left)."""
    (tmp_path / "other.py").write_text(textwrap.dedent(_STATE) + textwrap.dedent("""
        if __name__ == "__main__":
            ember.init(address="auto")
            want = mp_child(mp.get_context("spawn"))[0]
            em = mp.get_context("ember")
            got = [mp_child(em) for _ in range(3)] + [ember_child() for _ in range(3)]
            print(sys.flags.optimize, int(sys.flags.dev_mode),
                  all(g == (want, True) for g in got) or (got, want))
    """))
    out = _run(tmp_path, """
        import os, subprocess

        if __name__ == "__main__":
            rt = ember.init()
            rid = _env.get(_env.RUNTIME_ID)
            print("mine", ember_child() == (mp_child(mp.get_context("spawn"))[0], True))
            runs = [subprocess.Popen([sys.executable, *o, "other.py"], stdout=subprocess.PIPE,
                                     text=True) for o in (["-O"], ["-X", "dev"])]
            for r in runs:
                print(r.communicate(timeout=120)[0].strip(), r.returncode)
            print("mine", ember_child() == (mp_child(mp.get_context("spawn"))[0], True))
            made = templates(rid)
            print("options", sorted({("-O" in f, "dev" in f) for _, f in made.values()}))
            print("pids", " ".join(map(str, made)), rid, flush=True)
    """)
    assert out[:5] == ["mine True", "1 0 True 0", "0 1 True 0", "mine True",
                       "options [(False, False), (False, True), (True, False)]"], out
    pids, rid = out[5].split()[1:-1], out[5].split()[-1]
    deadline = time.monotonic() + 60             # (not stuck: the kills' reaping under load)
    while templates(rid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert templates(rid) == {}, (pids, templates(rid))


def test_new_options_after_the_first_start_have_their_own_template(tmp_path):
    """A program that changes ``sys.warnoptions`` between its starts: the
    children of the first ``template.OPTIONS`` other sets come from
    templates of their own, beyond that from a fresh interpreter, each with
    the parent's ``-W`` of its start (as spawn's).  A template of other
    options SIGKILLed: it is reaped, and the starts of its options go on
    from a template (more than the spares it left: a new one)."""
    out = _run(tmp_path, """
        import os, signal, time
        from ember.shepherd import template

        if __name__ == "__main__":
            em = mp.get_context("ember")
            for i, w in enumerate(["", "ignore::ImportWarning", "ignore::BytesWarning",
                                   "ignore::ResourceWarning"][:template.OPTIONS + 2]):
                if w:
                    sys.warnoptions.append(w)
                got = mp_child(em), ember_child()
                print(i, [g[0][1] == sys.warnoptions for g in got], [g[1] for g in got])
            del sys.warnoptions[1:]
            made = templates(_env.get(_env.RUNTIME_ID))
            old = min((t, p) for p, (t, f) in made.items() if f and "ImportWarning" in f)[1]
            os.kill(old, signal.SIGKILL)
            got = [(mp_child(em), ember_child()) for _ in range(6)]
            print("again", all(g[0][1] == sys.warnoptions and g[1] for two in got for g in two))
            for _ in range(200):
                try:
                    with open(f"/proc/{old}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] not in "ZX":
                            break
                except FileNotFoundError:
                    print("reaped")
                    break
                time.sleep(0.05)
    """)
    assert out == ["0 [True, True] [True, True]", "1 [True, True] [True, True]",
                   "2 [True, True] [True, True]", "3 [True, True] [False, False]",
                   "again True", "reaped"], out


@pytest.mark.parametrize("when", ["first", "later"])
def test_options_a_template_cannot_start_with_give_a_fresh_interpreter(tmp_path, when):
    """Options under which a template exits at its start-up (here a
    ``sitecustomize`` that exits in one run with ``-W error::ImportWarning``:
    as one of the template's imports would fail under ``-W error`` and a
    warning), the runtime's first start's or later ones': each child, the
    first too, runs in a fresh interpreter with them, as before templates
    were made for options, and the program's other children still come
    from the template."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, sys
        with open("/proc/self/cmdline", "rb") as f:
            if b"ember._template" in f.read().split(b"\\0") \\
                    and "error::ImportWarning" in sys.warnoptions:
                os._exit(3)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(site)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = _run(tmp_path, """
        if __name__ == "__main__":
            em = mp.get_context("ember")
            for i in range(2):
                got = mp_child(em), ember_child()
                print(0, [g[0][1] == sys.warnoptions for g in got], [g[1] for g in got])
            if "error::ImportWarning" not in sys.warnoptions:
                sys.warnoptions.append("error::ImportWarning")
                for i in range(2):
                    got = mp_child(em), ember_child()
                    print(1, [g[0][1] == sys.warnoptions for g in got], [g[1] for g in got])
                del sys.warnoptions[-1]
                got = mp_child(em), ember_child()
                print(2, [g[0][1] == sys.warnoptions for g in got], [g[1] for g in got])
    """, ["-W", "error::ImportWarning"] if when == "first" else [], env=env)
    if when == "first":
        assert out == ["0 [True, True] [False, False]"] * 2, out
    else:
        assert out == ["0 [True, True] [True, True]"] * 2 + ["1 [True, True] [False, False]"] * 2 \
            + ["2 [True, True] [True, True]"], out


def test_start_up_variables_set_after_the_start_reach_the_child_from_a_template(tmp_path):
    """Variables an interpreter reads only at its start-up (``PYTHONHASHSEED``,
    ``PYTHONOPTIMIZE``, ``PYTHONIOENCODING``), set in ``os.environ`` after
    the runtime is up, then taken out again: each child ("ember" method,
    then ``ember.Process``; the first, then spares and leases) has the
    hash secret, ``sys.flags`` and stdio encoding a spawn child of that
    moment has, and came from a template (the warm one, then one for each
    other set: ``template.OPTIONS``).  Before, they had the template's,
    made under the environment of the runtime's start."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHASHSEED", "PYTHONOPTIMIZE")}
    out = _run(tmp_path, """
        import os

        def seen(q=None):
            got = (hash("abc"), tuple(sys.flags), sys.stdout.encoding, _cloned())
            if q is None:
                return got
            q.put(got)

        if __name__ == "__main__":
            ember.init()
            em, sp = mp.get_context("ember"), mp.get_context("spawn")
            for step in ["none", "seed 0", "seed 12345, optimize, encoding", "none again"]:
                if step.startswith("none"):
                    for k in ("PYTHONHASHSEED", "PYTHONOPTIMIZE", "PYTHONIOENCODING"):
                        os.environ.pop(k, None)
                elif step == "seed 0":
                    os.environ["PYTHONHASHSEED"] = "0"
                else:
                    os.environ.update(PYTHONHASHSEED="12345", PYTHONOPTIMIZE="2",
                                      PYTHONIOENCODING="latin-1")
                # (no seed: each spawn child's hash secret is its own)
                n = 0 if "PYTHONHASHSEED" in os.environ else 1
                want = mp_child(sp, seen)[n:3]
                got = [mp_child(em, seen) for _ in range(3)] + [ember_child(seen) for _ in range(3)]
                print(step + ":", [g[n:3] == want or (g, want) for g in got],
                      all(g[3] for g in got))
    """, env=env)
    assert out == [f"{step}: {[True] * 6} True" for step in [
        "none", "seed 0", "seed 12345, optimize, encoding", "none again"]], out


def test_a_template_of_other_options_is_stopped_when_unused(tmp_path):
    """A template made for other options (a program that added to
    ``sys.warnoptions``) is stopped once unused for ``PROGRAM_IDLE``
    seconds (here 1, ``EMBER_TEST_TEMPLATE_IDLE``), with its spares, as a
    program's template is, while the warm template stays (the parent's
    lease made from it stays too: parked, the parent's own); the next start
    with those options makes one again, and its child has them.  Before,
    it was kept for the runtime's life."""
    out = _run(tmp_path, """
        import time

        def comm(pid):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    return f.read().strip()
            except OSError:
                return None

        def others():
            # the template of those options and its spares (not the parent's
            # lease made from it, parked: a process of the parent's)
            made = templates(_env.get(_env.RUNTIME_ID))
            return {p for p, (t, f) in made.items()
                    if f and "ImportWarning" in f and comm(p) not in (None, "ember-leased")}

        if __name__ == "__main__":
            em = mp.get_context("ember")
            print("warm", mp_child(em)[1], ember_child()[1])
            sys.warnoptions.append("ignore::ImportWarning")
            got = mp_child(em), ember_child()
            print("other", [g[0][1] == sys.warnoptions and g[1] for g in got], bool(others()))
            del sys.warnoptions[-1]
            first = others()
            deadline = time.monotonic() + 30
            while others() and time.monotonic() < deadline:
                ember_child()           # (the warm template's starts go on)
                time.sleep(0.2)
            print("stopped", not others(), bool(templates(_env.get(_env.RUNTIME_ID))))
            sys.warnoptions.append("ignore::ImportWarning")
            got = mp_child(em), ember_child()
            print("again", [g[0][1] == sys.warnoptions and g[1] for g in got],
                  bool(others()) and not others() & first)
    """, env=dict(os.environ, EMBER_TEST_TEMPLATE_IDLE="1"))
    assert out == ["warm True True", "other [True, True] True", "stopped True True",
                   "again [True, True] True"], out
