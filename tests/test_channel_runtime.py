"""Channels under a real ``ember run`` (where users meet them): a stale
handle's destroy() of a channel GS made, and close() between managed
processes.  The pipeline example (close() ending each stage's stream) is
tests/test_runtime.py::test_pipeline_example."""
import os

import pytest

from test_runtime import ok, run_prog

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.timeout(90)


def test_stale_handle_destroy_under_ember_run(tmp_path):
    """Issue 8.2 as a user meets it: a handle kept after channel.destroy()
    must not destroy the channel GS later makes in the same block."""
    out = ok(run_prog(tmp_path, """
        from ember.channels_c import Channel
        from ember.exceptions import ChannelError
        from ember.globalservices import channel

        import time
        a = channel.create(None, "a")
        ha = Channel.attach(a.sdesc)
        channel.destroy("a")
        # the node's shepherd frees a destroyed channel just after GS answered
        # the destroy: wait until a new channel lands in a's block
        for _ in range(100):
            b = channel.create(None, "b")
            if b.sdesc[104:112] == a.sdesc[104:112]:
                break
            channel.destroy("b")
            time.sleep(0.02)
        print("same block", b.sdesc[104:112] == a.sdesc[104:112])
        hb = Channel.attach(b.sdesc)
        hb.send(b"y" * 100_000)
        try:
            ha.destroy()
            print("stale destroy accepted")
        except ChannelError as e:
            print("stale destroy refused:", str(e).split(": ", 1)[1])
        print("b got", len(hb.recv(timeout=5)))
        hb.detach()
        channel.destroy("b")
    """))
    assert out.splitlines() == ["same block True",
                                "stale destroy refused: the channel was destroyed [EMBER_ERR_DESTROYED]",
                                "b got 100000"]


def test_close_ends_a_blocked_consumer_under_ember_run(tmp_path):
    out = ok(run_prog(tmp_path, """
        import sys
        from ember.channels_c import Channel
        from ember.exceptions import ChannelClosed
        from ember.globalservices import channel, process

        if sys.argv[1:] == ["consumer"]:
            ch = Channel.attach(channel.join("stream", timeout=30).sdesc)
            got = []
            try:
                while True:
                    got.append(ch.recv())          # blocks until the next message or the end
            except ChannelClosed as e:
                print("consumer: ", len(got), "messages, then", type(e).__name__, flush=True)
            ch.detach()
            sys.exit(0 if got == [b"%d" % i for i in range(100)] else 1)

        c = process.create(sys.executable, "", [sys.argv[0], "consumer"], user_name="consumer")
        ch = Channel.attach(channel.create(None, "stream").sdesc)
        for i in range(100):
            ch.send(b"%d" % i)
        import time
        deadline = time.monotonic() + 60
        while len(ch):                             # the consumer took all 100 ...
            assert time.monotonic() < deadline, len(ch)
            time.sleep(0.01)
        sys.path.insert(0, @HERE@)
        from procs import wait_sleeping_on_shm     # ... and sleeps in its recv (0.3 s only hoped so)
        wait_sleeping_on_shm(process.query(c.p_uid).location.os_pid)
        ch.close()
        print("consumer exit", process.join(c.p_uid, timeout=30))
        ch.detach()
        channel.destroy("stream")
    """.replace("@HERE@", repr(HERE))))
    assert "consumer:  100 messages, then ChannelClosed" in out
    assert "consumer exit 0" in out
