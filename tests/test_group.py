"""ember.ProcessGroup end to end under a real `ember run`."""
import textwrap

import pytest

import test_pyprocess
from test_pyprocess import ok

pytestmark = pytest.mark.timeout(120)

MEMBER = """
class Bad(Exception):
    pass

def member(fail_index, attempts_file=None):
    i = int(os.environ["EMBER_GROUP_INDEX"])
    if attempts_file:
        with open(f"{attempts_file}.{i}", "a") as f:
            f.write("x")
        with open(f"{attempts_file}.{i}") as f:
            n = len(f.read())
        if i == fail_index and n <= 2:
            raise Bad(f"member {i} attempt {n}")
        return (i, n)
    if i == fail_index:
        raise Bad(f"member {i} failed")
    if fail_index >= 0:
        time.sleep(60)          # fail_fast must kill us
    return i * 10
"""


def run_prog(tmp_path, body):
    """``body`` under `ember run` after test_pyprocess's PRELUDE (ember,
    leak_state()) and MEMBER."""
    return test_pyprocess.run_prog(tmp_path, MEMBER + textwrap.dedent(body))


def test_policies(tmp_path):
    out = ok(run_prog(tmp_path, """
        before = leak_state()
        with ember.ProcessGroup(policy="fail_fast") as g:
            g.add(3, member, args=(-1,), name="grp")
            g.start()
            print("all ok", g.join(), g.results(), [p.exitcode for p in g.processes])

        with ember.ProcessGroup(policy="fail_fast") as g:
            g.add(4, member, args=(2,))
            g.start()
            try:
                g.join()
            except Bad as e:
                print("fail_fast", e, [p.exitcode for p in g.processes])
            print("killed", [type(e).__name__ if e else None for e in g.exceptions()])

        with ember.ProcessGroup(policy="restart", max_restarts=3, backoff=0.01) as g:
            g.add(3, member, args=(1, os.path.abspath("attempts")))
            g.start()
            print("restart", g.join(), g.results(), g.restarts)

        with ember.ProcessGroup(policy="restart", max_restarts=1, backoff=0.01) as g:
            g.add(2, member, args=(0, os.path.abspath("again")))
            g.start()
            print("exhausted", g.join(), g.restarts, [str(e) if e else None for e in g.exceptions()])
            try:
                g.results()
            except Bad as e:
                print("results raise", e)

        with ember.ProcessGroup(policy="ignore") as g:
            g.add(1, member, args=(0,))
            g.add(1, lambda: 5)
            g.add(1, lambda: os.kill(os.getpid(), signal.SIGKILL))
            g.start()
            print("ignore", g.join(), [type(e).__name__ if e else None for e in g.exceptions()])

        for bad in (lambda: ember.ProcessGroup(policy="nope"),
                    lambda: ember.ProcessGroup().add(0, member),
                    lambda: ember.ProcessGroup().start()):
            try:
                bad()
            except (ValueError, RuntimeError) as e:
                print("bad", type(e).__name__, e)
        import gc; gc.collect()
        after = leak_state()
        print("leaks", after == before, *(() if after == before else (before, after)))
    """))
    assert out.splitlines() == [
        "all ok True [0, 10, 20] [0, 0, 0]",
        "fail_fast member 2 failed [-9, -9, 1, -9]",
        "killed ['ProcessDied', 'ProcessDied', 'Bad', 'ProcessDied']",
        "restart True [(0, 1), (1, 3), (2, 1)] [0, 2, 0]",
        "exhausted True [1, 0] ['member 0 attempt 2', None]",
        "results raise member 0 attempt 2",
        "ignore True ['Bad', None, 'ProcessDied']",
        "bad ValueError policy must be one of ('fail_fast', 'restart', 'ignore'), got 'nope'",
        "bad ValueError n must be an int >= 1, got 0",
        "bad RuntimeError the group has no members; add() some first",
        "leaks True",
    ]
