"""The shepherd's output board (shepherd/outboard.c), on its own: each
case in a fresh interpreter (a process maps one board, for its life)."""
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

PRELUDE = """
    import os, sys
    from ember.shepherd import _spawn as ob
    # fd 1 and fd 2: pipes of our own, empty unless a case writes to them
    for fd in (1, 2):
        r, w = os.pipe()
        os.dup2(w, fd)
        os.close(w)
    keep = r
    assert not ob.ob_mapped() and not ob.ob_clean(5)
    assert ob.ob_open(sys.argv[1], True) and ob.ob_mapped()
"""


def run(tmp_path, body):
    prog = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    res = subprocess.run([sys.executable, "-c", prog, str(tmp_path / "board")],
                         capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr.decode()


def test_clean_only_with_nothing_left_to_forward(tmp_path):
    run(tmp_path, """
        ob.ob_spawned(5)
        assert not ob.ob_clean(5)
        ob.ob_busy(5, True)                    # the shepherd holds some of its output
        assert not ob.ob_exiting(5) and not ob.ob_clean(5)
        ob.ob_busy(5, False)
        assert ob.ob_exiting(5) and ob.ob_clean(5)
        assert not ob.ob_clean(5 + 16384)     # the same entry, another process

        ob.ob_spawned(6)
        os.write(1, b"unread")                 # still in the pipe
        assert not ob.ob_exiting(6) and not ob.ob_clean(6)

        ob.ob_spawned(7 + 16384)               # 7's entry went to a later process
        assert not ob.ob_exiting(7) and not ob.ob_clean(7)
        ob.ob_spawned(8, True)                 # stdio not forwarded: clean from the start
        assert ob.ob_clean(8)
        assert ob.ob_open(sys.argv[1] + ".other")    # mapped already: the same board
    """)


def test_a_joiner_waits_for_the_drain(tmp_path):
    run(tmp_path, """
        import threading
        ob.ob_spawned(9)
        assert not ob.ob_wait_drained(9, 0.01)
        t = threading.Timer(0.05, ob.ob_drained, (9,))
        t.start()
        assert ob.ob_wait_drained(9, 30.0)
        t.join()
        ob.ob_spawned(9 + 16384)               # taken over: no wait (else the test's timeout)
        assert not ob.ob_wait_drained(9, 1000.0)
    """)


def test_a_board_of_another_layout_is_refused(tmp_path):
    (tmp_path / "junk").write_bytes(b"junk" * 64)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from ember.shepherd import _spawn as ob
        assert not ob.ob_open(sys.argv[1])            # too small, not created here
        assert not ob.ob_open(sys.argv[1] + ".none")  # none there
        assert not ob.ob_mapped() and not ob.ob_wait_drained(1, 0.0)
    """), str(tmp_path / "junk")], capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr.decode()


def test_the_wait_is_bounded_under_signals(tmp_path):
    # a signal every 2 ms (its handler runs, raises nothing): the wait still
    # ends at its bound, not restarted by each (else the test's timeout)
    run(tmp_path, """
        import signal
        signal.signal(signal.SIGALRM, lambda *a: None)
        signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
        ob.ob_spawned(9)
        assert not ob.ob_wait_drained(9, 0.2)
        signal.setitimer(signal.ITIMER_REAL, 0)
    """)


def test_bad_arguments_raise(tmp_path):
    run(tmp_path, """
        for bad in (float("nan"), -1.0):
            try:
                ob.ob_wait_drained(9, bad)
            except ValueError:
                pass
            else:
                raise AssertionError(f"timeout {bad} accepted")
        assert not ob.ob_wait_drained(9, 0.0)
        import threading
        t = threading.Timer(0.05, ob.ob_drained, (9,))
        ob.ob_spawned(9)
        t.start()
        assert ob.ob_wait_drained(9, float("inf"))  # no bound: no overflow (a wait all the same)
        t.join()
    """)
    res = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from ember.shepherd import _spawn as ob
        try:
            ob.ob_open(sys.argv[1] + "\\0x", True)     # a NUL: not a shorter path
        except ValueError:
            pass
        else:
            raise AssertionError("a path with a NUL accepted")
        assert not ob.ob_mapped()
    """), str(tmp_path / "nul")], capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr.decode()
    assert not (tmp_path / "nul").exists()


def test_a_second_runtime_in_the_same_process_uses_its_own_board(tmp_path):
    # ember.init() after ember.shutdown(): the joins of the second runtime's
    # processes read its board (mapped over the first one's), not GS
    prog = textwrap.dedent("""
        import ember
        from ember import _outboard
        from ember.shepherd import _spawn

        def hello():
            print("hello")

        def silent():
            pass

        if __name__ == "__main__":
            for _ in range(2):
                rt = ember.init()
                p = ember.Process(target=hello)
                p.start()
                p.join()
                assert p.exitcode == 0
                assert _outboard.attach() and _outboard._mapped_for[0] == rt.id, \\
                    (_outboard._mapped_for, rt.id)
                assert _outboard.out(p.p_uid)
                q = ember.Process(target=silent)     # nothing to forward: clean at its exit
                q.start()
                q.join()
                assert q.exitcode == 0 and _spawn.ob_clean(q.p_uid)
                ember.shutdown()
            print("done")
    """)
    (tmp_path / "prog.py").write_text(prog)
    res = subprocess.run([sys.executable, str(tmp_path / "prog.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=50)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.split() == ["hello", "hello", "done"]


def test_a_shepherd_leaves_the_board_it_did_not_make(tmp_path):
    # A node sharing the head's /dev/shm (--hosts local:N): its shepherd
    # maps the head shepherd's board (named by the runtime id) and, at its
    # normal stop, leaves it to its maker; the maker unlinks it at its stop.
    prog = textwrap.dedent("""
        import os, threading
        from ember import _outboard
        from ember.shepherd.server import Shepherd

        rid = "obtest%d" % os.getpid()
        path = _outboard.path(rid)
        try:
            def start():
                sh = Shepherd(lambda data: None)
                sh.open_output_board(rid)
                loop = threading.Thread(target=sh.serve)
                loop.start()
                return sh, loop

            def stop(sh, loop):
                sh.request_stop(None)
                loop.join(20)
                assert not loop.is_alive()
                sh.close()

            head = start()
            node = start()
            ino = os.stat(path).st_ino
            stop(*node)
            print("after the node's stop", os.path.exists(path) and os.stat(path).st_ino == ino)
            stop(*head)
            print("after the head's stop", os.path.exists(path))
        finally:
            if os.path.exists(path):
                os.unlink(path)
    """)
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=50)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["after the node's stop True", "after the head's stop False"]


def test_two_shepherds_racing_to_make_the_board(tmp_path):
    # Two shepherds on one /dev/shm start together: the one whose look
    # for the board comes before the other's create, and whose own create
    # comes after it, did not make it, and must leave it at its stop.  Its
    # look is made to come first here (os.path.exists answers False for
    # the board once the head made it: the interleaving of a race); the
    # answer that counts is its create's own (O_EXCL), not a look before
    # it (an exists-check then a create: both took themselves for the
    # maker, and the first to stop unlinked the board under the other).
    prog = textwrap.dedent("""
        import os, threading
        from ember import _outboard
        from ember.shepherd.server import Shepherd

        rid = "obrace%d" % os.getpid()
        path = _outboard.path(rid)
        real_exists = os.path.exists
        try:
            def start():
                sh = Shepherd(lambda data: None)
                sh.open_output_board(rid)
                loop = threading.Thread(target=sh.serve)
                loop.start()
                return sh, loop

            def stop(sh, loop):
                sh.request_stop(None)
                loop.join(20)
                assert not loop.is_alive()
                sh.close()

            head = start()
            os.path.exists = lambda p: False if p == path else real_exists(p)
            node = start()
            os.path.exists = real_exists
            stop(*node)
            print("after the node's stop", os.path.exists(path))
            stop(*head)
            print("after the head's stop", os.path.exists(path))
        finally:
            os.path.exists = real_exists
            if os.path.exists(path):
                os.unlink(path)
    """)
    res = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=50)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout.splitlines() == ["after the node's stop True", "after the head's stop False"]
