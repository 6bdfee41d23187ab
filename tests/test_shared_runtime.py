"""End to end under a real `ember run`: a program serves an object from
`__main__`, managed processes call it through proxies, a Manager's dict is
shared, and everything is gone when the program ends."""
import pytest

from test_runtime import ok, run_prog


@pytest.mark.timeout(180)
def test_serve_manager_and_scope_under_ember_run(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import signal
        import ember

        class Store:                       # a class of __main__: travels by value
            def __init__(self):
                self.items = {}
            def put(self, k, v):
                self.items[k] = v
                return len(self.items)
            def get(self, k):
                return self.items[k]

        def worker(p, d, k):
            p.put(k, k * k)
            d[k] = p.get(k)
            return k

        ref = ember.serve(Store(), name="store")
        p = ember.connect("store", timeout=10)
        with ember.Manager() as m:
            d = m.dict()
            procs = [ember.Process(target=worker, args=(p, d, k)) for k in range(3)]
            for pr in procs:
                pr.start()
            print("results", sorted(pr.result(timeout=60) for pr in procs))
            for pr in procs:
                pr.join()
            print("dict", sorted(d.items()))
        print("store", p.get(2))
        with ember.scope("job") as s:
            victim = ember.serve(Store(), lifetime="owner")
        from ember.globalservices import process
        process.kill(ref.p_uid, signal.SIGKILL)
        process.join(ref.p_uid, timeout=60)   # the kill is sent, not awaited, by kill()
        try:
            p.get(1)
        except Exception as e:   # the message depends on when the kill landed; the class may not
            print("died", type(e).__name__, "host" in str(e), repr(e))
        ref.destroy()
        print("left", [r for r in ember.objects.naming.get_list() if r[2] != "SharedReply"])
    """, timeout=150))
    assert "results [0, 1, 2]" in out
    assert "dict [(0, 0), (1, 1), (2, 4)]" in out
    assert "store 4" in out
    assert "died ProcessDied True" in out, out
    assert "left []" in out
