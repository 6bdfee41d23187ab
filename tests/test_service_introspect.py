"""Introspection through the service core under a real `ember run`:
ember.globalservices.introspect.stats()/dump()."""
import pytest

from test_runtime import ok, run_prog

pytestmark = pytest.mark.timeout(90)


def test_stats_and_dump_under_ember_run(tmp_path):
    out = ok(run_prog(tmp_path, """
        import sys
        from ember.globalservices import channel, introspect, process
        from ember.service import ServiceStats

        w = process.create(sys.executable, ".", ["-c", "from ember.globalservices import channel; channel.join('box')"],
                           user_name="waiter")
        ch = channel.create(None, "held", channel.ChannelOptions(ref_count=True))
        # wait until the worker has parked its join
        import time
        while not [x for x in introspect.dump()["waiters"] if x.get("name") == "box"]:
            time.sleep(0.01)
        d = introspect.dump()
        (wt,) = [x for x in d["waiters"] if x.get("name") == "box"]
        assert wt["owner"] == w.p_uid and wt["kind"] == "channel.join", wt
        procs = {p["p_uid"]: p for p in d["processes"]}
        assert procs[w.p_uid]["name"] == "waiter" and procs[w.p_uid]["state"] == "running"
        me = [p for p in d["processes"] if p["name"] is None and p["state"] == "running"]
        assert me, d["processes"]
        (held,) = [c for c in d["channels"] if c["name"] == "held"]
        assert held["refs"] == 1 and held["ref_count"] is True
        assert d["teardown"] is None and [p["name"] for p in d["pools"]] == ["default"]
        channel.create(None, "box")
        assert process.join(w.p_uid) == 0
        d = introspect.dump()
        p = [p for p in d["processes"] if p["p_uid"] == w.p_uid][0]
        assert (p["state"], p["exit_code"], p["joined"]) == ("exited", 0, True)
        s = introspect.stats()
        assert isinstance(s, ServiceStats) and s.service == "GS" and s.uptime > 0
        assert s.handled["ServiceDump"] >= 3 and s.handled["ServiceStats"] == 1
        assert s.handled["ChannelJoin"] == 1 and s.handled["ShExited"] >= 1 and s.errors == 0
        print("ok", s.handled["ServiceStats"])
    """))
    assert out == "ok 1\n"
