"""One C base (issue 9): pool.c is compiled once, into ember.pools_c._pools,
and the channels and sync extensions call it through the C-API capsule that
_pools exports; Channel.attach gets its pool from pools_c's attach cache."""
import subprocess
import sys

import pytest

import ember.channels_c._channels as _channels
import ember.pools_c._pools as _pools
import ember.sync_c._sync as _sync
from ember.channels_c import Channel
from ember.pools_c import Pool


def test_pool_api_capsule_is_exported():
    assert type(_pools._C_API).__name__ == "PyCapsule"
    assert repr(_pools._C_API).startswith('<capsule object "ember.pools_c._pools._C_API" at ')


@pytest.mark.parametrize("mod", [_channels, _sync], ids=["channels", "sync"])
def test_pool_c_is_not_compiled_into_other_extensions(mod):
    # pool.c's functions (even those nobody else calls) exist in _pools only
    with open(mod.__file__, "rb") as f:
        data = f.read()
    assert b"ember_pool_create_ex" not in data
    assert b"ember_pool_reclaim" not in data
    with open(_pools.__file__, "rb") as f:
        assert b"ember_pool_create_ex" in f.read()


CHILD = r'''
import sys
from ember.channels_c import Channel
from ember.pools_c import Allocation, _pools
ch = Channel.attach(bytes.fromhex(sys.argv[1]))
pool = list(_pools._implicit_pools.values())     # the channel's pool: in pools_c's cache
a = Allocation.attach(bytes.fromhex(sys.argv[2]))  # the same pool: found there, not attached again
print(len(pool), list(_pools._implicit_pools.values()) == pool, ch.recv())
ch.detach()
del a
_pools.clear_attach_cache()
print(sorted(_pools._implicit_pools))
'''


@pytest.mark.timeout(60)
def test_channel_attach_uses_pools_attach_cache():
    with Pool.create(1 << 20) as pool:
        ch = Channel.create(pool)
        al = pool.alloc(64)
        try:
            ch.send(b"hi")
            out = subprocess.run([sys.executable, "-c", CHILD, ch.sdesc.hex(), al.sdesc.hex()],
                                 capture_output=True, text=True, timeout=50)
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines() == ["1 True b'hi'", "[]"]
        finally:
            al.free()
            ch.destroy()
