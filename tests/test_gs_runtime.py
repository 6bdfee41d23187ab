"""Global services and the shepherd as a user meets them under a real
``ember run``: death reports, lifecycle logging, multi_join of unknown
names, option errors, listing with names, ``.py`` workers."""
import os
import sys

import pytest

from test_runtime import READY, ember, ok, run_prog, start_ready, write

pytestmark = pytest.mark.timeout(60)


def test_death_reports_for_signals_and_unjoined_exits(tmp_path):
    res = run_prog(tmp_path, r'''
import sys, time
from ember.globalservices import process
segv = ("import os, resource, signal; resource.setrlimit(resource.RLIMIT_CORE, (0, 0)); "
        "os.kill(os.getpid(), signal.SIGSEGV)")
a = process.create(sys.executable, ".", ["-c", segv], user_name="squarer")
b = process.create(sys.executable, ".", ["-c", "import sys; sys.exit(5)"], user_name="quiet")
c = process.create(sys.executable, ".", ["-c", "import sys; sys.exit(6)"], user_name="joined")
t = process.create(sys.executable, ".", ["-c", "import time; time.sleep(60)"], user_name="term")
assert process.join("joined") == 6
assert process.join("squarer") == -11
process.kill("term", 15)
assert process.join("term") == -15
while process.query("quiet").is_alive:     # exits on its own; nobody joins it
    time.sleep(0.01)
print(a.os_pid, b.os_pid, flush=True)
''')
    out = ok(res)
    pa, pb = out.split()
    assert res.stderr.decode().splitlines() == [
        f"ember: process 2 'squarer' (pid {pa}) killed by SIGSEGV",
        f"ember: process 3 'quiet' (pid {pb}) exited with code 5 and was never joined"]


def test_lifecycle_is_logged_at_info_and_waits_at_debug(tmp_path):
    prog = write(tmp_path, r'''
import sys
from ember.globalservices import channel, process, pool
p = pool.create(1 << 20, "mypool")
c = channel.create(None, "made")
w = process.create(sys.executable, ".", ["-c", "import time; time.sleep(0.3)"], user_name="w")
process.join("w")
try:
    channel.join("typo", timeout=0.2)
except TimeoutError:
    pass
channel.destroy("made")
pool.destroy("mypool")
''')
    res = ember("run", prog, cwd=tmp_path, env={**os.environ, "EMBER_LOG": "debug"})
    ok(res)
    err = res.stderr.decode()
    for line in ("ember gs: INFO: pool 2 'mypool' created (1048576 bytes) by process 1",
                 "ember gs: INFO: channel 1 'made' created in pool 1 by process 1",
                 "ember gs: INFO: process 2 'w' (pid ",
                 "ember gs: DEBUG: process 1 waits for any of processes [2]",
                 "ember gs: DEBUG: process 1 is waiting for channel 'typo' (up to 0.2 s)",
                 "ember gs: INFO: channel 1 'made' destroyed",
                 "ember gs: INFO: pool 2 'mypool' destroyed",
                 "ember shepherd: INFO: started p_uid 2 (pid "):
        assert line in err, (line, err)
    assert "exited with code 0" in err
    res = ember("run", prog, cwd=tmp_path, env={**os.environ, "EMBER_LOG": "info"})
    assert "DEBUG" not in res.stderr.decode() and "INFO: pool 2" in res.stderr.decode()


def test_multi_join_with_a_name_never_created(tmp_path):
    out = ok(run_prog(tmp_path, r'''
import sys
from ember.globalservices import process
from ember.exceptions import ProcessError
a = process.create(sys.executable, ".", ["-c", "import sys; sys.exit(2)"], user_name="real")
exited, status = process.multi_join(["real", "ghost"], join_all=True)
print(exited, status)
try:
    process.join("ghost")
except ProcessError as exc:
    print("join:", exc)
'''))
    assert out.splitlines() == [
        "[(2, 2)] {2: ProcessStatus(state='exited', exit_code=2), "
        "'ghost': ProcessStatus(state='unknown', exit_code=None)}",
        "join: no process named 'ghost'"]


def test_option_errors_are_the_kinds_errors(tmp_path):
    out = ok(run_prog(tmp_path, r'''
from ember.globalservices import channel, pool, process
from ember.descriptors import ChannelOptions
from ember.exceptions import ChannelError, PoolError, ProcessError
for f, exc in ((lambda: channel.create(None, "x", {"capcity": 4}), ChannelError),
               (lambda: ChannelOptions(capcity=4), ChannelError),
               (lambda: pool.create(1 << 20, "p", {"size": 1}), PoolError),
               (lambda: process.create("/bin/true", ".", [], options={"node": 2}), ProcessError)):
    try:
        f()
    except exc as e:
        print(type(e).__name__, e)
'''))
    assert out.splitlines() == [
        "ChannelError unknown ChannelOptions option(s) 'capcity'; valid: capacity, block_size, "
        "ref_count, node"] * 2 + [
        "PoolError unknown PoolOptions option(s) 'size'; it takes none",
        "ProcessError no node 2 in this runtime (nodes: 0)"]


def test_lists_with_names_and_exited_processes(tmp_path):
    out = ok(run_prog(tmp_path, r'''
import os, sys
from ember.globalservices import channel, pool, process
me = int(os.environ["EMBER_P_UID"])
c = channel.create(None, "named")
d = channel.create(None)
print(channel.get_list(), channel.get_list(names=True))
print(pool.get_list(), pool.get_list(names=True))
w = process.create(sys.executable, ".", ["-c", "pass"], user_name="gone")
process.join(w.p_uid)
print(process.get_list(), process.get_list(alive_only=True), process.query("gone").retval)
'''))
    assert out.splitlines() == [
        "[1, 2] [(1, 'named'), (2, None)]",
        "[1] [(1, 'default')]",
        "[(1, None), (2, 'gone')] [(1, None)] 0"]


def test_create_a_py_worker_by_file_name(tmp_path):
    write(tmp_path, "import sys; print('worker', sys.argv[1:], sys.executable == %r)\n"
          % sys.executable, name="worker.py")
    (tmp_path / "data.txt").write_text("x")
    out = ok(run_prog(tmp_path, r'''
from ember.globalservices import process
from ember.exceptions import ProcessError
print(process.join(process.create("worker.py", ".", ["a"]).p_uid))
try:
    process.create("./data.txt", ".", [])
except ProcessError as exc:
    print(exc)
'''))
    assert out.splitlines() == [
        "worker ['a'] True", "0",
        "cannot start process: cannot execute './data.txt': [Errno 13] Permission denied: it "
        "exists but is not executable (mode 0644)"]


def test_dead_process_pool_blocks_are_reclaimed(tmp_path):
    from ember.pools_c import Pool
    if not hasattr(Pool, "reclaim"):
        pytest.skip("Pool.reclaim (the pools layer's sweep primitive) is not on this branch")
    out = ok(run_prog(tmp_path, r'''
import os, sys
from ember import _env
from ember.pools_c import Pool
from ember.globalservices import process
pool = Pool.attach(_env.decode(os.environ["EMBER_DEFAULT_POOL"]))
before = pool.stats()
hog = ("import os, signal; from ember import _env; from ember.pools_c import Pool; "
       "p = Pool.attach(_env.decode(os.environ['EMBER_DEFAULT_POOL'])); "
       "keep = [p.alloc(4096) for _ in range(50)]; os.kill(os.getpid(), signal.SIGKILL)")
for _ in range(4):
    assert process.join(process.create(sys.executable, ".", ["-c", hog]).p_uid) == -9
process.get_list()     # GS handled the exits (and swept) before answering this
after = pool.stats()
print(after.free == before.free, after.live_allocs == before.live_allocs)
pool.detach()
'''))
    assert out == "True True\n"


def test_a_forwarded_ctrl_c_is_not_reported_as_a_death(tmp_path):
    import signal

    p = start_ready(tmp_path, READY)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert b"killed by" not in err, err


@pytest.mark.parametrize("how", ["exit", "sigkill", "release"])
def test_last_sender_gone_closes_the_channel(tmp_path, how):
    """A consumer blocked in recv() after its producer died gets the queued
    messages, then ChannelClosed (an EOFError), instead of waiting forever:
    GS closes a ref-counted channel when its last sending holder goes."""
    res = run_prog(tmp_path, r'''
import sys
from ember.channels_c import Channel
from ember.exceptions import ChannelClosed
from ember.globalservices import channel, process
from ember.globalservices.channel import ChannelOptions
how = sys.argv[1]
desc = channel.create(None, user_name="jobs", channel_options=ChannelOptions(ref_count=True))
ch = Channel.attach(desc.sdesc)
producer = f"""
import os, signal, time
from ember.channels_c import Channel
from ember.globalservices import channel
d = channel.join("jobs")
channel.add_sender("jobs")
ch = Channel.attach(d.sdesc)
for i in range(3):
    ch.send(b"job %d" % i)
if {how!r} == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
if {how!r} == "release":
    channel.release("jobs")
    channel.release("jobs")
    time.sleep(30)            # alive, but no longer a sender
"""
p = process.create(sys.executable, ".", ["-c", producer], user_name="producer")
got = []
try:
    while True:
        got.append(ch.recv(timeout=20).decode())
except ChannelClosed as exc:
    print(got, isinstance(exc, EOFError))
if how == "release":
    process.kill("producer", 9)
process.join("producer")
ch.detach()
''', how)
    assert ok(res).strip() == "['job 0', 'job 1', 'job 2'] True"


def _run_poke_delay(tmp_path, body, delay):
    prog = write(tmp_path, body)
    return ember("run", prog, cwd=tmp_path, timeout=60,
                 env={**os.environ, "EMBER_TEST_POKE_DELAY": str(delay)})


def test_plain_exits_reported_quietly_are_seen_by_every_request_and_joined_through_gs(tmp_path):
    # The shepherd reports an exit with code 0 of a process with no GS name
    # without waking GS; GS reads it in its next wake-up, after the request
    # that woke it, and a join in GS has the shepherd poke it.  The late
    # poke set to an hour: each of these would wait for it otherwise.
    out = ok(_run_poke_delay(tmp_path, r'''
import os, sys, time
import ember
from ember.globalservices import process
if __name__ == "__main__":
    joined = []
    for i in range(6):          # joined in GS while they run (ShExitWanted), or after
        p = ember.Process(target=time.sleep, args=(0.05 if i % 2 else 0,))
        p.start()
        if i % 2 == 0:
            time.sleep(0.2)
        joined.append(process.join(p.p_uid))
        p.join()
    c = process.create(sys.executable, ".", ["-c", "import time; time.sleep(0.05)"])
    exited, status = process.multi_join([c.p_uid], join_all=True)
    seen = 0
    for i in range(6):          # joined by the kernel: GS asked only after
        p = ember.Process(target=os.getpid)
        p.start()
        p.join()
        while process.query(p.p_uid).is_alive:
            time.sleep(0.01)
        seen += 1
    print(joined, [code for _, code in exited], tuple(status[c.p_uid]), seen)
''', 3600))
    assert out.split("\n")[0] == "[0, 0, 0, 0, 0, 0] [0] ('exited', 0) 6", out


def test_a_plain_exit_reported_quietly_reaches_gs_with_no_request(tmp_path):
    # Nothing asks GS anything after the exit: the shepherd's late poke
    # (POKE_DELAY) has GS read it (its event is written); with no late
    # poke (an hour) it is not read while nothing else wakes GS.  The child
    # exits once the answer to the next spare's create (asked at its start;
    # its ShSpawned is poked) is in: no poke follows the exit's report.
    body = r'''
import json, os, sys, time
import ember
from ember import _env
from ember.objects import process as _process
from ember.runtime import runtime_dir

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.01)

if __name__ == "__main__":
    go = os.path.abspath("go-" + str(os.getpid()))
    p = ember.Process(target=wait_for, args=(go,))
    p.start()
    if _process._lease is not None:
        _process._settle(_process._lease)
    open(go, "w").close()
    p.join()
    log = os.path.join(runtime_dir(), _env.get(_env.RUNTIME_ID) + ".events")
    t = time.monotonic()
    seen = False
    while not seen and time.monotonic() - t < float(sys.argv[1]):
        time.sleep(0.05)
        with open(log) as f:
            seen = any(e.get("event") == "process.exited" and e.get("p_uid") == p.p_uid
                       for e in map(json.loads, f))
    print(seen)
'''
    prog = write(tmp_path, body)
    for delay, wait, want in ((None, 30, "True"), (3600, 1.0, "False")):
        env = dict(os.environ)
        if delay is not None:
            env["EMBER_TEST_POKE_DELAY"] = str(delay)
        out = ok(ember("run", prog, str(wait), cwd=tmp_path, timeout=60, env=env))
        assert out.split("\n")[0] == want, (delay, out)
