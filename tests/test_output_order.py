"""End to end: a child's output is at the launcher before what its parent
prints after join() (docs/python-processes.md, "Output and join")."""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

ROUNDS = 80
LINES = 5

PROG = """
    import multiprocessing as mp
    import sys
    import ember

    def child(r):
        for i in range({lines}):
            print(f"r{{r}} child {{i}}", flush=True)
        sys.stdout.write(f"r{{r}} child {lines}")    # a last line without its newline

    def main():
        {setup}
        for r in range({rounds}):
            {start_join}
            sys.stdout.write(f"r{{r}} joined\\n")
            sys.stdout.flush()

    if __name__ == "__main__":
        main()
"""

CASES = {
    "template": ("ember.Process.start_method = 'template'",
                 "p = ember.Process(target=child, args=(r,)); p.start(); p.join()"),
    "spawn": ("ember.Process.start_method = 'spawn'",
              "p = ember.Process(target=child, args=(r,)); p.start(); p.join()"),
    "mp": ("mp.set_start_method('ember')",
           "p = mp.Process(target=child, args=(r,)); p.start(); p.join()"),
}


def out_of_order(out, rounds, lines):
    """The rounds whose "joined" line came before one of its child's lines,
    or whose lines are missing."""
    pos = {line: n for n, line in enumerate(out.splitlines())}
    bad = []
    for r in range(rounds):
        joined = pos.get(f"r{r} joined")
        got = [pos.get(f"r{r} child {i}") for i in range(lines + 1)]
        if joined is None or None in got or max(got) > joined:
            bad.append(r)
    return bad


@pytest.mark.parametrize("case", sorted(CASES))
def test_child_output_before_what_the_parent_prints_after_join(tmp_path, case):
    setup, start_join = CASES[case]
    rounds = ROUNDS if case != "spawn" else 5
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(PROG).format(setup=setup, start_join=start_join,
                                                 rounds=rounds, lines=LINES))
    res = subprocess.run([sys.executable, "-m", "ember", "run", str(prog)], cwd=tmp_path,
                         capture_output=True, timeout=100)
    out = res.stdout.decode()
    assert res.returncode == 0, (res.returncode, out, res.stderr.decode())
    bad = out_of_order(out, rounds, LINES)
    assert bad == [], (bad, out)


def _lines_stay_whole(tmp_path, program, want, prompt_max=None):
    """Run ``program`` under ``ember run`` (the shepherd's _PROMPT_MAX set
    to ``prompt_max`` s: EMBER_PROMPT_MAX): its output must be exactly the
    lines of ``want``, each once and whole (in any order)."""
    prog = tmp_path / "prog.py"
    prog.write_text(textwrap.dedent(program))
    env = dict(os.environ)
    if prompt_max is not None:
        env["EMBER_PROMPT_MAX"] = str(prompt_max)
    res = subprocess.run([sys.executable, "-m", "ember", "run", str(prog)], cwd=tmp_path,
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=100, env=env)
    out = res.stdout.decode()
    assert res.returncode == 0, (res.returncode, out[-2000:], res.stderr.decode())
    got = out.split("\n")
    assert got[-1] == ""
    bad = [line[:40] + f"... ({len(line)})" for line in got[:-1] if line not in want]
    assert bad == [] and len(got) - 1 == len(want), (len(bad), bad[:5])


WHOLE = """
    import ember

    def lines(tag, n, width):
        for i in range(n):
            print(f"{tag}{i:05d}" + tag * width)

    if __name__ == "__main__":
        for n, width in ((2000, 90), (200, 20000)):
            p = ember.Process(target=lines, args=("c", n, width))
            p.start()
            lines("h", n, width)
            p.join()
"""


def test_the_heads_lines_and_a_childs_stay_whole(tmp_path):
    """Under `ember run` the head (its stdin is the launcher's: its output
    is forwarded as it comes, so that a prompt shows) and a child print
    lines at once: every output line is one process's line, whole.
    Before, a child's line could cut one of the head's in two (the part
    read so far written, the child's line on a line of its own, then the
    rest), and a print's write of its newline apart from the text left
    an empty line."""
    _lines_stay_whole(tmp_path, WHOLE, {f"{t}{i:05d}" + t * width
                                        for n, width in ((2000, 90), (200, 20000))
                                        for i in range(n) for t in "hc"})


# What HELD and THREAD share: a busy wait, and a child that prints n lines
# of 27 bytes, ``pause`` s apart.
SPIN_CHILD = """
    import os
    import threading
    import time
    import ember

    def spin(secs):
        end = time.monotonic() + secs
        while time.monotonic() < end:
            pass

    def child(n, pause):
        for i in range(n):
            print(f"c{i:06d}" + "c" * 20, flush=True)
            spin(pause)
"""

# (HELD_MAX: the bound of a held line in HELD; its head writes for 9 s at
# least, its child as long.)
HELD_MAX = 3
HELD = SPIN_CHILD + """
    if __name__ == "__main__":
        p = ember.Process(target=child, args=(30000, 0.0003))
        p.start()
        # Each write ends a line and starts the next: a partial line is
        # always held, never one for long (the head stays runnable).
        os.write(1, b"h%06d" % 0)
        for i in range(1, 3000):
            spin(0.003)
            os.write(1, b"h" * 20 + b"\\nh%06d" % i)
        os.write(1, b"h" * 20 + b"\\n")
        p.join()
"""


def test_a_line_held_is_timed_from_its_own_start(tmp_path):
    """The head's partial lines, one after another with no wait between
    (each write ends a line and starts the next), are each held from
    their own start: on main the bound of the first (_PROMPT_MAX) was
    kept while lines followed it, and once it passed the line just
    begun was written, and a child's line cut it in two.  The bound is
    HELD_MAX (3 s), not the default 1 s, and the head writes for 9 s at
    least (its spins count the clock): a head preempted 1 s in the
    middle of a line on a loaded machine (or the whole VM stalled) had
    its line written at the bound, and cut; the run still lasts three
    bounds, at each of which main's bound of a line held since the
    last one passed wrote the line just begun."""
    _lines_stay_whole(tmp_path, HELD, {f"{t}{i:06d}" + t * 20
                                       for t, n in (("h", 3000), ("c", 30000)) for i in range(n)},
                      prompt_max=HELD_MAX)


THREAD = SPIN_CHILD + """
    def writer():
        for i in range(6):
            os.write(1, b"h%06d" % i)
            spin(0.15)                  # busy in the middle of its line
            os.write(1, b"h" * 20 + b"\\n")

    if __name__ == "__main__":
        p = ember.Process(target=child, args=(2000, 0.001))
        p.start()
        t = threading.Thread(target=writer)
        t.start()
        t.join()                        # the main thread waits
        p.join()
"""


def test_a_line_held_while_another_thread_of_the_head_runs(tmp_path):
    """The head's main thread waits (join) while another of its threads,
    busy, writes a line in two pieces: the line is held, not written as a
    prompt (a process waits only when none of its threads runs); on main
    only the main thread's state was read, and a child's line cut the
    head's in two.  The bound of a held line (_PROMPT_MAX) is 600 s here,
    past the test's timeout: the writer preempted 1 s (the default) in the
    middle of its line on a loaded machine had it written and cut; what
    is tested is that a waiting main thread does not make it a prompt."""
    _lines_stay_whole(tmp_path, THREAD, {f"{t}{i:06d}" + t * 20
                                         for t, n in (("h", 6), ("c", 2000)) for i in range(n)},
                      prompt_max=600)
