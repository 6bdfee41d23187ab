"""The turns at a direct inbox's socket (ember.transport.direct.Inbox: one
user at a time; a receive that waits in it hands it over to a thread that
wants it, Inbox.grab / _yield), driven in a ``--hosts local:2`` runtime's
head: the receive and the threads that want the socket are this test's,
each one's step read from its frames (no timing)."""
import pytest

from test_multinode import ok, run_prog
from test_runtime import assert_lines

pytest.importorskip("zmq")


@pytest.mark.timeout(120)
def test_a_receive_does_not_wait_in_the_socket_while_a_thread_wants_it(tmp_path):
    """A receive that waited for the socket to come back (its _yield) and
    took it while another thread still wanted it hands it over again
    before it waits in the socket: it waited there with the wanter's
    notice already read (by the holder before it), so the wanter waited
    until some message came (a round trip whose request it was to send:
    forever)."""
    out = ok(run_prog(tmp_path, """
        import inspect, threading
        from ember.transport.direct import Inbox

        def line_of(func, text):
            src, first = inspect.getsourcelines(func)
            return [first + i for i, s in enumerate(src) if text in s]

        YIELD_TAKE = line_of(Inbox._yield, "self.lock.acquire()")
        GRAB_WAIT = line_of(Inbox.grab, "self.lock.acquire()")[-1:]
        RECV_WAIT = line_of(Inbox.recv, "_zd_recv(") + line_of(Inbox.recv, "self._recv_one()")

        def at(t, lines, name):
            f = sys._current_frames().get(t.ident)
            return f is not None and f.f_code.co_name == name and f.f_lineno in lines

        def until(cond):
            while not cond():
                time.sleep(0.001)

        c = Channel.attach(channel.create(None, "turns"))
        inbox = Inbox()
        w = inbox.watch(c)
        stalls = 0
        for _ in range(20):
            got = []
            r = threading.Thread(target=lambda: got.append(inbox.recv(c, w)))
            r.start()
            until(lambda: at(r, RECV_WAIT, "recv"))          # r waits in the socket
            inbox.grab()                                       # we take it (r yields) ...
            until(lambda: at(r, YIELD_TAKE, "_yield"))        # ... r waits to take it back
            done = threading.Event()

            def want():
                inbox.grab()
                done.set()
                inbox.lock.release()
            g = threading.Thread(target=want)
            g.start()
            until(lambda: at(g, GRAB_WAIT, "grab"))           # g wants it (its notice sent)
            assert inbox.sock.poll(30000)
            inbox.serve_pending()                              # (a holder reads the notice)
            inbox.lock.release()                               # r or g takes it
            until(lambda: done.is_set() or at(r, RECV_WAIT, "recv"))
            if not done.is_set():
                stalls += 1                                    # r waits in the socket, g for it
            c.send(b"x")                                       # (wakes r: it hands over)
            g.join(30)
            r.join(30)
            assert got == [b"x"] and done.is_set() and not g.is_alive() and not r.is_alive()
        print("stalls", stalls)
        inbox.unwatch(w)
        inbox.close()
    """, hosts="local:2"))
    assert_lines(out, "stalls 0")
