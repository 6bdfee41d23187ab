"""The direct path's building blocks (ember.transport.direct) in a
``--hosts local:2`` runtime: a receiver on node 1 waits on its channel and
its own inbox at once; the head sends to the channel through the agent,
then (once that is acknowledged) straight to the inbox; a process of node 1
sends into the channel meanwhile.  Every sender's messages arrive in order,
those that went through the agent before the head's direct ones, also when
the direct ones were read from the inbox first (by a receive on another
channel)."""
import pytest

from test_multinode import ok, run_prog

pytest.importorskip("zmq")


@pytest.mark.timeout(120)
def test_inbox_and_channel_in_one_wait_keep_each_senders_order(tmp_path):
    out = ok(run_prog(tmp_path, """
        from ember.transport.direct import DirectSender
        NA, ND, NL = 10, 60, 50
        d = channel.create(None, "dch", ChannelOptions(node=1, capacity=64))
        go = channel.create(None, "go", ChannelOptions(node=1))
        other = channel.create(None, "other", ChannelOptions(node=1))
        addr = Channel.attach(channel.create(None, "addr"))
        res = Channel.attach(channel.create(None, "res"))
        reader = f'''
        from ember.globalservices import channel
        from ember.channels_c import Channel
        from ember.channels_c.watch import ChannelWatch
        from ember.transport.direct import Inbox
        c = Channel.attach(channel.join("dch", timeout=30))
        inbox = Inbox()
        w = ChannelWatch(c)
        a = Channel.attach(channel.join("addr", timeout=30))
        a.send(inbox.address.encode()); a.flush(timeout=30)
        o = Channel.attach(channel.join("other", timeout=30))
        wo = ChannelWatch(o)
        Channel.attach(channel.join("go", timeout=30)).recv(timeout=30)
        # the inbox holds dch's D0-9 by now: reading other's message reads them too
        first = inbox.recv(o, wo, timeout=30)
        got = [inbox.recv(c, w, timeout=30) for _ in range({NA} + {ND} + {NL})]
        head = [m for m in got if m[:1] in b"AD"]
        ls = [m for m in got if m[:1] == b"L"]
        r = Channel.attach(channel.join("res", timeout=30))
        r.send(b"other %r head %r local %r taken %r" % (first,
            head == [b"A%d" % i for i in range({NA})] + [b"D%d" % i for i in range({ND})],
            ls == [b"L%d" % i for i in range({NL})], sorted(inbox.taken.values())))
        r.flush(timeout=30)
        for x in (w, wo):
            inbox.unwatch(x); x.close()
        inbox.close()
        '''
        local = f'''
        import time
        from ember.globalservices import channel
        from ember.channels_c import Channel
        c = Channel.attach(channel.join("dch", timeout=30))
        Channel.attach(channel.join("go", timeout=30)).recv(timeout=30)
        for i in range({NL}):
            c.send(b"L%d" % i, timeout=30)
            time.sleep(0.002)
        '''
        pr = process.create(PY, ".", ["-c", textwrap.dedent(reader)], options={"node": 1})
        pl = process.create(PY, ".", ["-c", textwrap.dedent(local)], options={"node": 1})
        h = Channel.attach(d)
        for i in range(NA):
            h.send(b"A%d" % i)
        print("through the agent, acknowledged", h.flush(timeout=30))
        ds = DirectSender(addr.recv(timeout=30).decode())
        ds.sock.send(b"junk")                   # a malformed frame: dropped, the stream goes on
        for i in range(10):
            ds.send(d.c_uid, b"D%d" % i)
        ds.send(other.c_uid, b"O")
        time.sleep(0.3)                         # (so that these reach the inbox before the reader looks)
        g = Channel.attach(go)
        g.send(b"go"); g.send(b"go"); g.flush(timeout=30)
        for i in range(10, ND):
            ds.send(d.c_uid, b"D%d" % i)
            time.sleep(0.002)
        print(res.recv(timeout=60).decode())
        print("exits", process.join(pr.p_uid, timeout=30), process.join(pl.p_uid, timeout=30))
        ds.close()
    """, hosts="local:2"))
    lines = out.splitlines()
    assert "through the agent, acknowledged True" in lines, lines
    assert "other b'O' head True local True taken [1, 60]" in lines, lines
    assert "exits 0 0" in lines, lines
