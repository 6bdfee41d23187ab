"""Node-scoped resources under a real `ember run`: the node's shepherd
creates and destroys pools and channels; GS only records them and never
maps a pool it did not need (the infrastructure pool, to send replies)."""
import pytest

from test_runtime import ok, run_prog

pytestmark = pytest.mark.timeout(90)


def test_user_pools_live_in_the_shepherd_not_in_gs(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import os
        from ember.globalservices import channel, pool
        from ember.pools_c import Pool

        def children(ppid):
            out = []
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        with open(f"/proc/{d}/stat") as f:
                            if int(f.read().rsplit(")", 1)[1].split()[1]) == ppid:
                                out.append(int(d))
                    except OSError:
                        pass
            return out

        def maps(pid):
            with open(f"/proc/{pid}/maps") as f:
                return f.read()

        shepherd = os.getppid()                   # the shepherd spawned us
        with open(f"/proc/{shepherd}/stat") as f:
            launcher = int(f.read().rsplit(")", 1)[1].split()[1])
        (gs,) = [p for p in children(launcher) if p != shepherd]
        d = pool.create(1 << 20, "mine")
        p = Pool.attach(d.sdesc)
        name = p.shm_name.lstrip("/")
        p.detach()
        c = channel.create(d.m_uid, "in-mine")
        print(name in maps(shepherd), name in maps(gs))
        channel.destroy(c.c_uid)
        pool.destroy(d.m_uid)
        print(name in maps(shepherd), os.path.exists("/dev/shm/" + name))
    """))
    assert out == "True False\nFalse False\n"


def test_channels_made_by_the_node_carry_messages_and_refcounts_hold(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import sys
        from ember.channels_c import Channel
        from ember.globalservices import channel, process

        d = channel.create(None, "rc-node", channel.ChannelOptions(ref_count=True))
        ch = Channel.attach(d.sdesc)
        w = process.create(sys.executable, ".", ["-c",
            "from ember.channels_c import Channel\n"
            "from ember.globalservices import channel\n"
            "d = channel.join('rc-node'); Channel.attach(d.sdesc).send(b'hello')\n"])
        print(ch.recv(timeout=30), process.join(w.p_uid))
        ch.detach()
        channel.release("rc-node")                 # last holder: the node destroys it
        try:
            channel.query("rc-node")
        except channel.ChannelError as exc:
            print(exc)
    """))
    assert out == "b'hello' 0\nno channel named 'rc-node'\n"


def test_node_resources_as_a_state_machine():
    """The shepherd's side alone: requests in, answers out; what it still
    holds at close is destroyed (the safety net behind GS's teardown)."""
    import os

    from ember import _env, messages as m
    from ember.pools_c import Pool
    from ember.shepherd.resources import NodeResources

    out = []
    node = NodeResources(out.append)
    tag = _env.owner_tag("p")
    dflt = Pool.create(1 << 20, name="dflt", owner_tag=tag)
    try:
        node.handle_msg(m.ShPoolCreate(1, 7, 1 << 20, "seven", tag))
        node.handle_msg(m.ShChannelCreate(2, 70, 7, None, 16, 128))
        node.handle_msg(m.ShChannelCreate(3, 71, 1, dflt.sdesc, 16, 128))   # attaches dflt
        node.handle_msg(m.ShChannelCreate(4, 72, 1, dflt.sdesc, 3, 128))
        node.handle_msg(m.ShChannelDestroy(5, 99))
        node.handle_msg(m.ShPoolDestroy(6, 99))
        p7, c70, c71, bad, nochan, nopool = out
        assert (type(p7), p7.ref, p7.m_uid, p7.err) == (m.ShPoolCreated, 1, 7, None)
        assert c70.err is None and c71.err is None and c71.capacity == 16
        assert bad.err == ["ValueError", "capacity must be a power of two between 1 and 16777216, "
                                         "got 3", True]
        assert nochan.err == ["ChannelError", "no channel with c_uid 99 on this node", False]
        assert nopool.err == ["PoolError", "no pool with m_uid 99 on this node", False]
        assert sorted(node.chans) == [70, 71] and list(node.attached) == [1]
        seg = Pool.attach(p7.sdesc)
        name = seg.shm_name.lstrip("/")
        seg.detach()
        st = node.stats()
        assert st.service == "shepherd" and st.handled["ShChannelCreate"] == 3 and st.errors == 0
        assert node.dump()["channels"] == [70, 71]
        node.reclaim(os.getpid() + 10**6)        # no such pid: nothing to give back, no error
        node.close()
        assert not node.chans and not node.pools and not os.path.exists("/dev/shm/" + name)
    finally:
        node.close()
        dflt.destroy()


def test_the_shepherd_dispatches_through_the_service_core():
    from ember import messages as m
    from ember.shepherd.server import Shepherd

    sent = []
    with Shepherd(sent.append) as sh:
        assert sh.handle(b"\xc1") is True                     # undecodable: dropped
        assert sh.handle(m.ShExited(1, 0).pack()) is True      # not the shepherd's: dropped
        assert sh.handle(m.ShKill(42, 9).pack()) is True       # unknown p_uid: ignored
        assert sh.handle(m.ShChannelDestroy(1, 5).pack()) is True
        st = sh.stats()
        assert (st.service, st.dropped, st.errors) == ("shepherd", 2, 0)
        assert dict(st.handled) == {"ShKill": 1, "ShChannelDestroy": 1}
        assert m.unpack(sent[0]).err == ["ChannelError", "no channel with c_uid 5 on this node",
                                         False]
