"""The trust model (docs/architecture.md, "Trust model"), attacked end to end
under a real ``ember run``: a managed process that forges control-plane
messages with ember's own client internals must not be able to end the run,
change its exit code, destroy what others hold, or start processes GS does
not know about."""
import os

import pytest

from procs import readable_memory
from test_runtime import run_prog

pytestmark = pytest.mark.timeout(60)

# Shared by the attacking programs: build a message from keyword fields (so
# the same program also runs against an older schema without request keys).
FORGE = r'''
import os, sys
from ember import _env, messages as m
from ember.channels_c import Channel
from ember.globalservices import _client, process, channel

def forge(cls, **kw):
    conn = _client.connection()
    kw.setdefault("key", getattr(conn, "key", b""))
    return cls(*[kw[f] for f in cls.fields]).pack()

def gs_channel():
    return Channel.attach(_env.decode(os.environ["EMBER_GS_CH"]))

def my_reply():
    return _client.connection()._reply_channel().r

def settle():
    # GS reads its input in order: once this answer is back, every message
    # sent before it has been handled.
    process.get_list()
'''


def _worker(tmp_path, body, name="attacker.py"):
    p = tmp_path / name
    p.write_text(FORGE + body)
    return str(p)


def test_forged_shexited_cannot_fake_the_heads_exit_code(tmp_path):
    res = run_prog(tmp_path, FORGE + r'''
me = int(os.environ["EMBER_P_UID"])
gs_channel().send(m.ShExited(me, 0).pack())
settle()
os._exit(3)
''')
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert b"dropped ShExited from the public input channel: only the shepherd sends it" \
        in res.stderr


def test_forged_release_cannot_destroy_a_channel_someone_holds(tmp_path):
    w = _worker(tmp_path, r'''
head = int(sys.argv[1])
gs_channel().send(forge(m.ChannelRelease, tag=1, p_uid=head, r=my_reply(), ident="held"))
gs_channel().send(forge(m.ChannelRelease, tag=2, p_uid=head, r=my_reply(), ident="held",
                        key=b"\0" * 16))
settle()
''')
    res = run_prog(tmp_path, f'''
import os, sys
from ember.globalservices import channel, process
me = int(os.environ["EMBER_P_UID"])
d = channel.create(None, "held", {{"ref_count": True}})
assert process.join(process.create({w!r}, ".", [str(me)]).p_uid) == 0
assert channel.query("held").c_uid == d.c_uid
print("still held")
''')
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout == b"still held\n"
    assert b"dropped ChannelRelease claiming p_uid 1: its key is not that process's" in res.stderr


def test_teardown_from_a_managed_process_is_refused(tmp_path):
    w = _worker(tmp_path, r'''
from ember.exceptions import EmberError
try:
    _client.connection().call(m.Teardown, 0.0)
except EmberError as exc:
    print("refused:", exc)
''')
    res = run_prog(tmp_path, f'''
import sys
from ember.globalservices import process
assert process.join(process.create({w!r}, ".", []).p_uid) == 0
assert process.join(process.create(sys.executable, ".", ["-c", "pass"]).p_uid) == 0
print("runtime still up")
''')
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout == (b"refused: Teardown is accepted from the launcher only, not from process 2\n"
                          b"runtime still up\n")


def test_managed_processes_cannot_reach_the_shepherd(tmp_path):
    """No shepherd channel in a managed process's environment: no ShSpawn
    of processes GS never lists, no malformed ShKill killing the runtime."""
    marker = tmp_path / "spawned-behind-gs"
    res = run_prog(tmp_path, FORGE + f'''
import time
sh = os.environ.get("EMBER_SH_CH")
print("shepherd channel in env:", sh is not None)
if sh is not None:
    ch = Channel.attach(_env.decode(sh))
    ch.send(m.ShSpawn(99, 999, "/bin/sh", ["-c", "touch {marker}"], None, ".", "").pack())
    deadline = time.monotonic() + 10
    while not os.path.exists({str(marker)!r}) and time.monotonic() < deadline:
        time.sleep(0.01)
    ch.send(m.ShKill([1], 2 ** 40).pack())
    settle()
print(sorted(k for k in os.environ if k.startswith("EMBER_") and not k.startswith("EMBER_TEST_")))
''')
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert not marker.exists()
    assert res.stdout.decode().splitlines() == [
        "shepherd channel in env: False",
        "['EMBER_DEFAULT_POOL', 'EMBER_GS_CH', 'EMBER_INF_POOL', 'EMBER_KEY', 'EMBER_NODE', "
        "'EMBER_OUTPUT_LABEL', 'EMBER_P_UID', 'EMBER_RUNTIME_ID', 'EMBER_SEGMENT_TAG']"]


def test_naming_other_channels_as_reply_channel_destroys_nothing(tmp_path):
    w = _worker(tmp_path, r'''
victim = channel.query("victim").sdesc
for tag, r in ((1, victim), (2, _env.decode(os.environ["EMBER_GS_CH"])),
               (3, _env.decode(os.environ["EMBER_INF_POOL"])), (4, b"garbage")):
    gs_channel().send(forge(m.ProcessList, tag=tag, p_uid=_client.connection().p_uid, r=r))
settle()
''')
    res = run_prog(tmp_path, f'''
import sys
from ember.channels_c import Channel
from ember.globalservices import channel, process
d = channel.create(None, "victim")
assert process.join(process.create({w!r}, ".", []).p_uid) == 0
ch = Channel.attach(d.sdesc)
ch.send(b"alive")
print(ch.recv(timeout=5), len(process.get_list()))
ch.detach()
''')
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert res.stdout == b"b'alive' 2\n"
    err = res.stderr.decode()
    assert "dropped ProcessList from p_uid 2: its reply channel cannot be used (it is a " \
           "registered channel)" in err
    assert "dropped ProcessList from p_uid 2: its reply channel cannot be used (it is one of " \
           "the runtime's own channels)" in err


# ------------------------------------------------- spawn directives, forked head
def test_spawn_directives_are_the_launchers_only(tmp_path):
    """EMBER_FORK_PY (a fork of the shepherd: its memory, the control pool)
    and EMBER_STDIN (the launcher's stdin) from a managed process are
    refused; EMBER_STDIO_FROM only names the requester's own pid."""
    res = run_prog(tmp_path, r'''
import os, sys
from ember.globalservices import process
from ember.exceptions import ProcessError
script = os.path.join(os.getcwd(), "child.py")
with open(script, "w") as f:
    f.write("print('child ran')\n")
for env in ({"EMBER_FORK_PY": "1"}, {"EMBER_STDIN": "inherit"},
            {"EMBER_STDIO_FROM": str(os.getppid())}, {"EMBER_STDIO_FROM": "1"},
            {"EMBER_STDIO_FROM": "me"}):
    try:
        process.create(sys.executable, os.getcwd(), [script], env=env)
    except ProcessError as e:
        print("refused", sorted(env)[0], "|", e)
    else:
        print("ACCEPTED", env)
p = process.create(sys.executable, os.getcwd(), ["-c", "print('own stdio ok')"],
                   env={"EMBER_STDIO_FROM": str(os.getpid())})
print("joined", process.join(p.p_uid, timeout=30), flush=True)
''')
    out = res.stdout.decode()
    assert res.returncode == 0, (out, res.stderr)
    lines = out.splitlines()
    refused = [ln.split(" | ")[0] for ln in lines if ln.startswith("refused")]
    assert refused == ["refused EMBER_FORK_PY", "refused EMBER_STDIN", "refused EMBER_STDIO_FROM",
                       "refused EMBER_STDIO_FROM", "refused EMBER_STDIO_FROM"], out
    assert "ACCEPTED" not in out and "child ran" not in out
    assert "EMBER_FORK_PY is a spawn directive of the launcher only" in out
    assert "EMBER_STDIO_FROM must be the requesting process's own pid" in out
    assert "own stdio ok" in lines and "joined 0" in lines


def _launcher_keys(pid):
    """The launcher's key(s): the EMBER_KEY values in its memory (the test
    is its parent, so it may read it)."""
    import re
    keys = set()
    for _, _, data in readable_memory(pid):
        keys.update(m.group(1) for m in re.finditer(rb"EMBER_KEY=([0-9a-f]{32})\0", data))
    return keys


# The head scans its own memory for the launcher's key, given only hashes of
# it (and 4 bytes to find candidates), so that it never holds the key itself.
SCAN = f"import sys; sys.path.append({os.path.dirname(os.path.abspath(__file__))!r})\n" + r'''
import hashlib
from procs import readable_memory                  # tests/procs.py
maps = open("/proc/self/maps").read()
print("control pool mapped:", "7ffffffffffffffe" in maps, flush=True)
req = sys.stdin.readline().split()
found = []
for hex_sha, raw_sha, raw4, hex6 in zip(*[iter(req)] * 4):
    raw4, hex6 = bytes.fromhex(raw4), hex6.encode()
    for lo, name, data in readable_memory():
        for needle, n, want, what in ((raw4, 16, raw_sha, "raw"), (hex6, 32, hex_sha, "hex")):
            i = data.find(needle)
            while i >= 0:
                if hashlib.sha256(data[i:i + n]).hexdigest() == want:
                    found.append(f"{what} at {lo + i:#x} in {name}")
                i = data.find(needle, i + 1)
print("launcher key found:", found, flush=True)
'''


def test_forked_head_has_no_control_pool_and_no_launcher_key(tmp_path):
    import hashlib
    import subprocess
    import sys
    prog = tmp_path / "head.py"
    prog.write_text(SCAN)
    env = dict(__import__("os").environ)
    env.pop("EMBER_ADDRESS", None)
    run = subprocess.Popen([sys.executable, "-m", "ember", "run", str(prog)], cwd=tmp_path,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=env)
    try:
        first = run.stdout.readline()
        assert first == b"control pool mapped: False\n", (first, run.stderr.read1())
        try:
            keys = _launcher_keys(run.pid)
        except PermissionError as exc:
            pytest.skip(f"cannot read the launcher's memory here: {exc}")
        assert keys, "no EMBER_KEY in the launcher's memory"
        req = []
        for k in keys:
            raw = bytes.fromhex(k.decode())
            req += [hashlib.sha256(k).hexdigest(), hashlib.sha256(raw).hexdigest(),
                    raw[:4].hex(), k[:6].decode()]
        out, err = run.communicate(" ".join(req).encode() + b"\n", timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, (out, err)
    assert out == b"launcher key found: []\n", out
