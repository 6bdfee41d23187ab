"""Fork-aware handles (issue 9; pyzmq's owner-pid guard): a Pool, Channel or
sync-object handle inherited through fork() cannot destroy the parent's
object in the child, and is collected there without a ResourceWarning."""
import gc
import json
import os
import re
import warnings

import pytest

from ember.channels_c import Channel
from ember.exceptions import PoolError
from ember.pools_c import Pool
from ember.sync_c import Event


def in_child(fn):
    """Run fn() in a fork()ed child; return what it returned (JSON)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            out = json.dumps(fn())
        except BaseException as e:                # report, never run the parent's code
            out = json.dumps({"child raised": f"{type(e).__name__}: {e}"})
            code = 1
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, data
    return json.loads(data)


def _raised(call):
    try:
        call()
    except Exception as e:
        return [type(e).__name__, str(e)]
    return None


@pytest.mark.timeout(60)
def test_pool_destroy_in_forked_child_refused():
    pool = Pool.create(1 << 20)
    try:
        me = os.getpid()
        got = in_child(lambda: _raised(pool.destroy))
        assert got[0] == "PoolError"
        assert re.match(rf"^<?.*: cannot destroy: this handle was inherited through fork\(\) from process "
                        rf"{me}; destroy the pool there, or attach a handle of this process's own "
                        rf"\(Pool\.attach\(pool\.sdesc\)\)$", got[1]), got[1]
        a = pool.alloc(64)                        # the parent's pool is intact
        a.free()

        def own_handle_may():
            p = Pool.attach(pool.sdesc)
            with pytest.raises(PoolError, match=r"cannot destroy: this handle was inherited"):
                pool.destroy()
            p.detach()
            return "ok"
        assert in_child(own_handle_may) == "ok"
    finally:
        pool.destroy()


@pytest.mark.timeout(60)
def test_pool_with_block_in_child_detaches_only():
    pool = Pool.create(1 << 20)
    try:
        def leave_with():
            with pool:
                pass
            return pool.closed
        assert in_child(leave_with) is True        # the child's copy is detached ...
        assert not pool.closed
        pool.alloc(64).free()                      # ... the parent's pool still exists
        Pool.attach(pool.sdesc).detach()
    finally:
        pool.destroy()


@pytest.mark.timeout(60)
def test_channel_destroy_in_forked_child_refused():
    with Pool.create(4 << 20) as pool:
        ch = Channel.create(pool)
        try:
            me, cuid = os.getpid(), _cuid(ch)

            def child():
                ch.send(b"from child")            # using the inherited handle is fine
                return _raised(ch.destroy)
            got = in_child(child)
            assert got == ["ChannelError",
                           f"channel c_uid {cuid}: cannot destroy: this handle was inherited "
                           f"through fork() from process {me}; destroy the channel there, or attach a "
                           f"handle of this process's own (Channel.attach(channel.sdesc))"]
            assert ch.recv(timeout=5) == b"from child"
        finally:
            ch.destroy()


def _cuid(ch):
    return re.search(r"c_uid=(\d+)", repr(ch)).group(1)


@pytest.mark.timeout(60)
def test_sync_destroy_in_forked_child_refused():
    with Pool.create(1 << 20) as pool:
        ev = Event(pool=pool)
        me = os.getpid()

        def child():
            ev.set()
            return _raised(ev.destroy)
        got = in_child(child)
        assert got[0] == "SyncError"
        assert got[1].endswith(f": cannot destroy: this handle was inherited through fork() from process {me}; "
                               f"destroy the object there, or attach a handle of this process's own "
                               f"(pickle.loads(pickle.dumps(obj)))"), got[1]
        assert ev.is_set()                         # not destroyed
        ev.destroy()


@pytest.mark.timeout(60)
def test_no_resource_warning_for_inherited_handles():
    pool = Pool.create(4 << 20)
    try:
        held = [Pool.attach(pool.sdesc)]
        held.append(Channel.create(held[0]))
        sd = held[1].sdesc
        held.append(Channel.attach(sd))

        def child():
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                held.clear()
                gc.collect()
            return [str(x.message) for x in w]
        assert in_child(child) == []
        # the parent's handles are still the parent's: collected unclosed, they warn
        with pytest.warns(ResourceWarning, match=r"^unclosed ember Channel \(c_uid \d+\)$"):
            held.pop()
            gc.collect()
        held[1].destroy()
        held[0].detach()
    finally:
        pool.destroy()


@pytest.mark.timeout(90)
def test_forked_child_cannot_destroy_under_ember_run(tmp_path):
    """As a user meets it: a program under ``ember run`` forks; the child
    tries to destroy a channel through an inherited handle, drops another,
    leaves a ``with`` block of the parent's pool, and exits normally (with
    ResourceWarnings shown): nothing of the parent's is gone, and nothing
    warns."""
    from test_runtime import ok, run_prog
    out = ok(run_prog(tmp_path, """
        import os, sys, warnings
        warnings.simplefilter("always", ResourceWarning)
        from ember.channels_c import Channel
        from ember.exceptions import ChannelError
        from ember.pools_c import Pool

        pool = Pool.create(4 << 20)
        ch = Channel.create(pool)
        extra = Channel.attach(ch.sdesc)          # never closed: collected in the child
        pid = os.fork()
        if pid == 0:
            try:
                ch.destroy()
            except ChannelError as e:
                print("child:", str(e).split(": ", 1)[1].split(";")[0], flush=True)
            ch.send(b"child was here")
            del extra
            with pool:                            # detaches the child's mapping only
                pass
            sys.exit(0)
        os.waitpid(pid, 0)
        print("parent got", ch.recv(timeout=5))
        extra.detach()
        ch.destroy()
        pool.destroy()
    """))
    assert out.splitlines() == [
        "child: cannot destroy: this handle was inherited through fork() from process " + out.split("process ")[1].split()[0],
        "parent got b'child was here'",
    ]
    assert "ResourceWarning" not in out
