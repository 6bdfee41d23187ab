"""End to end: real programs under a real `ember run`."""
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from procs import children, wait_gone

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


READY = """
    import time
    print("ready", flush=True)
    time.sleep(60)
"""


def ember(*args, cwd=None, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "ember", *args], cwd=cwd, capture_output=True,
                          timeout=timeout, **kw)


def write(tmp_path, body, name="prog.py"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


def start_ready(tmp_path, body, *extra, **popen):
    """`ember run [extra] prog`, ``body`` written as the program, stdout and
    stderr piped (``popen``: more Popen arguments); returns the Popen once
    the head has printed "ready"."""
    p = subprocess.Popen([sys.executable, "-m", "ember", "run", *extra, write(tmp_path, body)],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)
    assert p.stdout.readline() == b"ready\n"
    return p


def run_prog(tmp_path, body, *args, timeout=60, extra=()):
    prog = write(tmp_path, body)
    return ember("run", *extra, prog, *args, cwd=tmp_path, timeout=timeout)


def ok(res):
    assert res.returncode == 0, (res.returncode, res.stdout.decode(), res.stderr.decode())
    return res.stdout.decode()


def assert_lines(out, *want):
    """Each of ``want`` is a whole line of ``out`` (a program's output);
    the failure names the missing ones."""
    lines = out.splitlines()
    missing = [w for w in want if w not in lines]
    assert not missing, (missing, out)


# ------------------------------------------------------------------ launcher
def test_help_documents_every_flag():
    out = ember("--help").stdout.decode()
    assert "run" in out and "cleanup" in out
    out = ember("run", "--help").stdout.decode()
    for flag in ("--grace", "--label", "--default-pool-size", "--inf-pool-size", "PROGRAM"):
        assert flag in out
    assert ember("cleanup", "--help").returncode == 0


def test_exit_codes(tmp_path):
    assert run_prog(tmp_path, "import sys; sys.exit(7)").returncode == 7
    assert run_prog(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)").returncode \
        == 128 + 9
    res = ember("run", "/bin/sh", "-c", "exit 3", cwd=tmp_path)
    assert res.returncode == 3
    res = ember("run", "/definitely/not/here", cwd=tmp_path)
    assert res.returncode == 127
    assert b"cannot start '/definitely/not/here'" in res.stderr
    assert b"No such file or directory" in res.stderr


def test_args_and_empty_program(tmp_path):
    out = ok(run_prog(tmp_path, """
        import os, sys
        print("args", sys.argv[1:], "p_uid", os.environ["EMBER_P_UID"])
    """, "a", "b c"))
    assert out.strip() == "args ['a', 'b c'] p_uid 1"


# ------------------------------------------------------------------ processes
def test_process_api(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import os, signal, sys, time
        from ember.globalservices import process
        from ember.exceptions import ProcessError
        py = sys.executable
        me = int(os.environ["EMBER_P_UID"])

        a = process.create(py, ".", ["-c", "import sys; sys.exit(5)"], user_name="five")
        assert a.p_uid != me and a.user_name == "five" and a.location.os_pid > 0
        assert process.join("five") == 5
        d = process.query(a.p_uid)
        assert (d.is_alive, d.retval) == (False, 5), d
        print("exit codes ok")

        s = process.create(py, ".", ["-c", "import time; time.sleep(60)"], user_name="sleeper")
        assert (s.p_uid, "sleeper") in process.get_list()
        assert process.join(s.p_uid, timeout=0.2) is None
        t0 = time.monotonic()
        assert process.join(s.p_uid, timeout=0) is None
        process.kill("sleeper", signal.SIGTERM)
        assert process.join(s.p_uid) == -signal.SIGTERM
        s.refresh()
        assert not s.is_alive and s.retval == -15
        for sig in (signal.SIGKILL, signal.SIGUSR1, signal.SIGINT):
            # (SIGINT while the interpreter is still starting is a fatal
            # error, exit 1, not death by SIGINT: wait until it runs)
            ready = f"ready-{sig}"
            p = process.create(py, ".", ["-c", f"import time; open({ready!r}, 'w').close(); time.sleep(60)"])
            while not os.path.exists(ready):
                time.sleep(0.005)
            process.kill(p.p_uid, sig)
            assert process.join(p.p_uid, timeout=30) == -sig, sig
        print("kill ok")

        try:
            process.kill(s.p_uid)
        except ProcessError as e:
            assert str(e) == f"process {s.p_uid} has already exited (exit code -15)", e
        else:
            raise AssertionError("kill of an exited process did not raise")
        for bad in (10**6, "nobody"):
            try:
                process.query(bad)
            except ProcessError as e:
                assert "no process" in str(e) and str(bad) in str(e)
            else:
                raise AssertionError(bad)
        try:
            process.join(me)
        except ProcessError as e:
            assert str(e) == f"process {me} cannot join itself"
        else:
            raise AssertionError("self join")
        print("errors ok")

        # multi_join: any, all, bad exit, timeouts
        fast = process.create(py, ".", ["-c", "pass"])
        slow = process.create(py, ".", ["-c", "import time; time.sleep(1)"])
        bad = process.create(py, ".", ["-c", "import sys; sys.exit(3)"])
        exited, status = process.multi_join([fast.p_uid, slow.p_uid, bad.p_uid])
        assert exited and all(code is not None for _, code in exited), exited
        exited, status = process.multi_join([slow.p_uid, bad.p_uid], join_all=True,
                                            return_on_bad_exit=True)
        assert (bad.p_uid, 3) in exited and status[bad.p_uid].state == "exited"
        exited, status = process.multi_join([fast.p_uid, slow.p_uid], join_all=True, timeout=30)
        assert sorted(exited) == sorted([(fast.p_uid, 0), (slow.p_uid, 0)])
        hang = process.create(py, ".", ["-c", "import time; time.sleep(60)"])
        exited, status = process.multi_join([hang.p_uid], timeout=0.1)
        assert exited is None and status[hang.p_uid].state == "running"
        exited, _ = process.multi_join([hang.p_uid, fast.p_uid], join_all=True, timeout=0.1)
        assert exited == [(fast.p_uid, 0)]
        process.kill(hang.p_uid)
        assert process.join(hang.p_uid) == -9
        print("multi_join ok")
    """))
    assert out.split() == ["exit", "codes", "ok", "kill", "ok", "errors", "ok", "multi_join", "ok"]


def test_soft_create_and_name_reuse(tmp_path):
    ok(run_prog(tmp_path, r"""
        import sys
        from ember.globalservices import process
        from ember.exceptions import ProcessError
        py = sys.executable
        a = process.create(py, ".", ["-c", "import time; time.sleep(60)"], user_name="svc")
        try:
            process.create(py, ".", ["-c", "pass"], user_name="svc")
        except ProcessError as e:
            assert str(e) == f"a live process is already named 'svc' (p_uid {a.p_uid})", e
        else:
            raise AssertionError("duplicate name")
        b = process.create(py, ".", ["-c", "pass"], user_name="svc", soft=True)
        assert b.p_uid == a.p_uid
        process.kill("svc")
        process.join(a.p_uid)
        c = process.create(py, ".", ["-c", "pass"], user_name="svc")
        assert c.p_uid != a.p_uid
        assert process.join("svc") == 0
    """))


def test_env_and_run_dir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, KEEP="kept")
    prog = write(tmp_path, rf"""
        import sys
        from ember.globalservices import process
        code = "import os; open('out.txt','w').write(os.getcwd() + '|' + os.environ['FOO'] + '|' + os.environ['EMBER_P_UID'] + '|' + os.environ.get('KEEP', ''))"
        p = process.create(sys.executable, {str(work)!r}, ["-c", code], env={{"FOO": "bar"}})
        assert process.join(p.p_uid) == 0
        cwd, foo, puid, keep = open({str(work / 'out.txt')!r}).read().split("|")
        assert cwd == {str(work)!r} and foo == "bar" and int(puid) == p.p_uid and keep == "kept", (cwd, foo, puid, keep)
    """)
    ok(ember("run", prog, cwd=tmp_path, env=env))


def test_start_failures(tmp_path):
    noexec = tmp_path / "noexec.sh"
    noexec.write_text("#!/bin/sh\n")
    out = ok(run_prog(tmp_path, rf"""
        from ember.globalservices import process
        from ember.exceptions import ProcessError
        for exe, run_dir in (("/no/such/exe", "."), ({str(noexec)!r}, "."), ("/bin/true", "/no/such/dir")):
            try:
                process.create(exe, run_dir, [])
            except ProcessError as e:
                print(e)
            else:
                raise AssertionError(exe)
        import os; print(process.get_list() == [(int(os.environ["EMBER_P_UID"]), None)])
    """))
    lines = out.splitlines()
    assert "No such file or directory" in lines[0] and "/no/such/exe" in lines[0]
    assert "Permission denied" in lines[1] and "noexec.sh" in lines[1]
    assert "/no/such/dir" in lines[2]
    assert lines[3] == "True"      # failed starts are not listed


def test_threads_share_the_connection(tmp_path):
    ok(run_prog(tmp_path, r"""
        import sys, threading
        from ember.globalservices import process, pool
        py = sys.executable
        sleeper = process.create(py, ".", ["-c", "import time; time.sleep(1)"])
        errors = []
        def worker():
            try:
                for _ in range(200):
                    assert pool.default().m_uid == 1
            except BaseException as e:
                errors.append(e)
        # one thread blocked in join while others query
        joiner = threading.Thread(target=lambda: process.join(sleeper.p_uid))
        joiner.start()
        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        joiner.join()
        assert not errors, errors
    """))


def test_gs_survives_garbage_on_its_channel(tmp_path):
    ok(run_prog(tmp_path, r"""
        import os, base64, msgpack
        from ember.channels_c import Channel
        from ember.globalservices import pool, process
        gs = Channel.attach(base64.b64decode(os.environ["EMBER_GS_CH"]))
        for junk in (b"", b"\xc1\xc1", msgpack.packb([999, 1]), msgpack.packb([1, "x"]),
                     msgpack.packb({"type": 1}), os.urandom(3000)):
            gs.send(junk)
        assert pool.default().m_uid == 1
        assert process.get_list()
        gs.detach()
    """))


# ------------------------------------------------------------ pools, channels
def test_pool_api(tmp_path):
    ok(run_prog(tmp_path, r"""
        from ember.globalservices import pool
        from ember.pools_c import Pool
        from ember.exceptions import PoolError
        d = pool.create(1 << 20, user_name="mine")
        assert pool.query("mine") == d and d.m_uid in pool.get_list()
        assert pool.create(1 << 20, user_name="mine", soft=True) == d
        p = Pool.attach(d.sdesc)
        a = p.alloc(100)
        memoryview(a)[:5] = b"hello"
        a.free()
        p.detach()
        pool.destroy("mine")
        try:
            pool.query("mine")
        except PoolError as e:
            assert str(e) == "no pool named 'mine'"
        else:
            raise AssertionError
        assert pool.default().name == "default"
    """))


def test_message_through_channel_joined_by_name(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import sys, time
        from ember.globalservices import channel, introspect, process
        from ember.channels_c import Channel
        reader = ("from ember.globalservices import channel\n"
                  "from ember.channels_c import Channel\n"
                  "ch = Channel.attach(channel.join('greetings', timeout=30).sdesc)\n"
                  "print('got', ch.recv(timeout=30).decode(), flush=True)\n"
                  "ch.detach()\n")
        p = process.create(sys.executable, ".", ["-c", reader])    # joins before create:
        deadline = time.monotonic() + 30                           # parked in GS
        while not any(w.get("name") == "greetings" for w in introspect.dump()["waiters"]):
            assert time.monotonic() < deadline, "the reader's join did not park"
            time.sleep(0.005)
        d = channel.create(None, "greetings")
        ch = Channel.attach(d.sdesc)
        ch.send(b"hello through ember")
        assert process.join(p.p_uid, timeout=30) == 0
        assert channel.join("greetings", timeout=0) == d             # after create
        try:
            channel.join("nobody-makes-this", timeout=0.2)
        except TimeoutError as e:
            print("timeout:", e)
        ch.detach()
        channel.destroy("greetings")
        assert d.c_uid not in channel.list()
    """))
    assert "got hello through ember" in out
    assert "timeout: channel.join('nobody-makes-this') timed out" in out


def test_ref_counted_channel_destroyed_when_holders_exit(tmp_path):
    ok(run_prog(tmp_path, r"""
        import sys
        from ember.globalservices import channel, process
        from ember.descriptors import ChannelOptions
        holder = "from ember.globalservices import channel; channel.join('shared', timeout=30)"
        maker = "from ember.globalservices import channel; from ember.descriptors import ChannelOptions; channel.create(None, 'shared', ChannelOptions(ref_count=True))"
        m = process.create(sys.executable, ".", ["-c", maker])
        assert process.join(m.p_uid) == 0
        # the maker exited holding the only reference: destroyed
        assert "shared" not in [channel.query(c).name for c in channel.list()]
        m = process.create(sys.executable, ".", ["-c", maker + "; import time; time.sleep(0.5)"])
        j = process.create(sys.executable, ".", ["-c", holder])
        d = channel.join("shared", timeout=30)      # the head is a holder now too
        assert d.ref_count
        process.multi_join([m.p_uid, j.p_uid], join_all=True)
        assert channel.query("shared").c_uid == d.c_uid   # head still holds it
        channel.release("shared")
        assert d.c_uid not in channel.list()
    """))


# --------------------------------------------------------- output forwarding
def test_output_lines_intact_and_labelled(tmp_path):
    res = run_prog(tmp_path, r"""
        import sys
        from ember.globalservices import process
        code = "import sys\nfor i in range(300): print('x' * 3000 + ' line %d' % i)\nsys.stdout.write('tail-no-newline')"
        ps = [process.create(sys.executable, ".", ["-c", code], user_name=f"w{i}") for i in range(3)]
        process.multi_join([p.p_uid for p in ps], join_all=True)
    """, extra=("--label", "name"))
    out = ok(res)
    lines = out.splitlines()
    body = [ln for ln in lines if " line " in ln]
    assert len(body) == 900
    for ln in body:
        label, rest = ln.split(" ", 1)
        assert label in ("[w0]", "[w1]", "[w2]") and rest.startswith("x" * 3000 + " line "), ln[:80]
    assert sum("tail-no-newline" in ln for ln in lines) == 3


# --------------------------------------------------------------- teardown
def test_teardown_kills_leftovers(tmp_path):
    pidfile = tmp_path / "pids"
    res = run_prog(tmp_path, rf"""
        import sys
        from ember.globalservices import process, pool, channel
        ps = [process.create(sys.executable, ".", ["-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"]) for _ in range(2)]
        ps.append(process.create(sys.executable, ".", ["-c", "import time; time.sleep(60)"]))
        open({str(pidfile)!r}, "w").write(" ".join(str(p.location.os_pid) for p in ps))
        pool.create(1 << 20, user_name="left")
        channel.create(None, "left-behind")
    """, extra=("--grace", "0.3"))
    ok(res)
    pids = [int(x) for x in pidfile.read_text().split()]
    assert wait_gone(pids) == [], pids


def test_ctrl_c_reaches_the_head(tmp_path):
    p = start_ready(tmp_path, r"""
        import sys, time
        try:
            print("ready", flush=True)
            time.sleep(60)
        except KeyboardInterrupt:
            print("head got KeyboardInterrupt", flush=True)
            sys.exit(42)
    """)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 42, err
    assert b"head got KeyboardInterrupt" in out


def test_head_ignoring_sigterm_is_killed_after_grace(tmp_path):
    p = start_ready(tmp_path, r"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
    """, "--grace", "0.3")
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 128 + 9, err
    assert b"did not exit 0.3 s after the signal" in err
    assert time.monotonic() - t0 < 20


def test_launcher_kill_9_then_cleanup(tmp_path):
    pidfile = tmp_path / "pids"
    p = start_ready(tmp_path, rf"""
        import os, sys, time
        from ember.globalservices import process, pool
        c = process.create(sys.executable, ".", ["-c", "import time; time.sleep(60)"])
        pool.create(1 << 20, user_name="orphaned")
        open({str(pidfile)!r}, "w").write(f"{{os.getpid()}} {{c.location.os_pid}} {{os.getppid()}}")
        print("ready", flush=True)
        time.sleep(60)
    """)
    runtime_pids = [int(x) for x in pidfile.read_text().split()]
    gs_and_shepherd = children(p.pid)
    assert len(gs_and_shepherd) == 2
    segs = [n for n in os.listdir("/dev/shm") if n.startswith(f"ember.r{p.pid}-")]
    assert len(segs) >= 3, segs          # infrastructure, default, "orphaned"
    p.kill()
    p.communicate(timeout=30)
    assert wait_gone(runtime_pids + gs_and_shepherd) == [], runtime_pids + gs_and_shepherd
    # the dead runtime's segments are listed, then removed (--tag: this
    # worker's segments only; another test's runtime, alive or dead, is not
    # looked at, its lock not taken even for a moment)
    tag = os.environ["EMBER_SEGMENT_TAG"]
    res = ember("cleanup", "--dry-run", "--tag", tag)
    assert res.returncode == 0
    for s in segs:   # (unless a plain cleanup of another run on the machine took it first)
        assert (f"would remove /dev/shm/{s}".encode() in res.stdout
                or not os.path.exists(f"/dev/shm/{s}")), res.stdout
    assert f"ember.r{p.pid}-" in " ".join(segs) and any(s.endswith(".lock") for s in segs)
    res = ember("cleanup", "--tag", tag)
    assert res.returncode == 0
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"ember.r{p.pid}-")]


def test_cleanup_leaves_live_runtime_alone(tmp_path):
    p = start_ready(tmp_path, READY)
    try:
        before = [n for n in os.listdir("/dev/shm") if n.startswith(f"ember.r{p.pid}-")]
        assert before
        dry = ember("cleanup", "--dry-run", "--tag", os.environ["EMBER_SEGMENT_TAG"])
        assert dry.returncode == 0
        assert not [n for n in before if n in dry.stdout.decode()]
        after = [n for n in os.listdir("/dev/shm") if n.startswith(f"ember.r{p.pid}-")]
        assert after == before
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)
    assert p.returncode == 128 + 2


def test_pipeline_example():
    res = ember("run", os.path.join(ROOT, "examples", "pipeline.py"), "2000", cwd=ROOT)
    out = ok(res)
    assert "pipeline ok" in out
    assert "summer: 2000 squares, sum 2668667000 (expected 2668667000)" in out


# ------------------------------------------------ found by adversarial review
def test_grandchildren_do_not_survive_teardown(tmp_path):
    pidfile = tmp_path / "gpid"
    ok(run_prog(tmp_path, rf"""
        import sys
        from ember.globalservices import process
        code = ("import subprocess, sys; p = subprocess.Popen(['sleep', '60']); "
                "open({str(pidfile)!r}, 'w').write(str(p.pid))")
        p = process.create(sys.executable, ".", ["-c", code])
        assert process.join(p.p_uid) == 0      # the child exits, its grandchild lives on
    """))
    assert wait_gone([int(pidfile.read_text())]) == []


def test_abandoned_requests_do_not_wedge_the_thread(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import signal
        from ember.globalservices import channel, process
        class Alarm(Exception):
            pass
        def on_alarm(signum, frame):
            raise Alarm()
        signal.signal(signal.SIGALRM, on_alarm)
        for i in range(12):                      # more than a reply channel holds
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            try:
                channel.join("later")
            except Alarm:
                pass
        signal.setitimer(signal.ITIMER_REAL, 0)
        channel.create(None, "later")            # wakes 12 abandoned joins
        print(len(process.get_list()), flush=True)
        channel.destroy("later")
    """))
    assert out.strip() == "1"


def test_thread_reply_channels_are_reused(tmp_path):
    ok(run_prog(tmp_path, r"""
        import threading
        from ember.globalservices import pool
        for i in range(1500):          # 17 KB each would need 25 MB without reuse
            t = threading.Thread(target=pool.default)
            t.start()
            t.join()
    """, extra=("--inf-pool-size", "8M")))


def test_closed_stdout_and_tiny_infrastructure_pool(tmp_path):
    prog = write(tmp_path, "import sys; sys.exit(3)")
    res = subprocess.run(f"{shlex.quote(sys.executable)} -m ember run {shlex.quote(str(prog))} >&-",
                         shell=True, cwd=tmp_path,
                         capture_output=False, stderr=subprocess.PIPE, timeout=60)
    assert res.returncode == 3, res.stderr
    res = ember("run", "--inf-pool-size", "64K", prog, cwd=tmp_path)
    assert res.returncode == 70
    assert res.stderr.startswith(b"ember: cannot set up the runtime (--inf-pool-size 65536")


def test_unencodable_arguments_are_a_process_error(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        from ember.globalservices import process
        from ember.exceptions import ProcessError
        try:
            process.create("/bin/echo", ".", ["\udcff-arg"])
        except ProcessError as e:
            print(e)
        print(process.get_list() != [])
    """))
    assert out.splitlines()[0].startswith("cannot send ProcessCreate request: UnicodeEncodeError")
    assert out.splitlines()[1] == "True"


def test_last_lines_without_newline_are_not_glued(tmp_path):
    out = ok(run_prog(tmp_path, r"""
        import sys
        from ember.globalservices import process
        code = "import sys; sys.stdout.write('first\\nno-newline-' + sys.argv[1])"
        ps = [process.create(sys.executable, ".", ["-c", code, str(i)]) for i in range(4)]
        process.multi_join([p.p_uid for p in ps], join_all=True)
    """))
    lines = out.splitlines()
    assert sorted(lines) == ["first"] * 4 + [f"no-newline-{i}" for i in range(4)]


# ---------------------------------------------------------------- kill storm
STORM_WORKER = r"""
import os
from ember.globalservices import channel, pool, process
from ember.descriptors import ChannelOptions
me = os.environ["EMBER_P_UID"]
i = 0
while True:
    i += 1
    pool.default()
    name = "w%s-%d" % (me, i)
    channel.create(None, name, ChannelOptions(capacity=8, block_size=256, ref_count=True))
    channel.join(name, timeout=1)
    process.get_list()
    if i % 3 == 0:
        channel.release(name)
        channel.release(name)
"""


@pytest.mark.timeout(120)
def test_gs_survives_a_kill_storm_of_its_clients(tmp_path):
    (tmp_path / "worker.py").write_text(STORM_WORKER)
    out = ok(run_prog(tmp_path, r"""
        import base64, os, random, signal, sys, time
        from ember.globalservices import channel, pool, process
        from ember.pools_c import Pool
        inf = Pool.attach(base64.b64decode(os.environ["EMBER_INF_POOL"]))
        pool.default()
        before = inf.stats().live_allocs
        rng = random.Random(7)
        spawn = lambda: process.create(sys.executable, ".", ["worker.py"])
        ws = [spawn() for _ in range(3)]
        time.sleep(0.3)                       # let them get going
        kills = 40
        for k in range(kills):
            time.sleep(rng.random() * 0.02)
            j = rng.randrange(len(ws))
            process.kill(ws[j].p_uid, signal.SIGKILL)
            assert process.join(ws[j].p_uid, timeout=30) == -9
            ws[j] = spawn()
        for w in ws:
            process.kill(w.p_uid, signal.SIGKILL)
        exited, _ = process.multi_join([w.p_uid for w in ws], join_all=True, timeout=30)
        assert len(exited) == 3
        me = int(os.environ["EMBER_P_UID"])
        assert process.get_list(alive_only=True) == [(me, None)]
        assert channel.get_list() == [], channel.get_list()    # refs dropped at death
        after = inf.stats().live_allocs
        # dead workers' reply channels are freed by GS; at most the block a
        # worker was allocating when killed may be lost
        assert after <= before + kills + 3, (before, after)
        print("storm ok", before, after, flush=True)
        inf.detach()
    """, timeout=110))
    assert out.startswith("storm ok")


@pytest.mark.parametrize("victim", ["shepherd", "global services"])
def test_service_killed_ends_the_run_cleanly(tmp_path, victim):
    pidfile = tmp_path / "pids"
    res = run_prog(tmp_path, rf"""
        import os, signal, sys, time
        from ember.globalservices import process
        c = process.create(sys.executable, ".", ["-c", "import time; time.sleep(60)"])
        launcher = int(os.environ["EMBER_RUNTIME_ID"][1:].split("-")[0])
        shepherd = os.getppid()
        sys.path.insert(0, {HERE!r})
        from procs import children        # (not /proc/PID/task/TID/children: CONFIG_PROC_CHILDREN)
        kids = children(launcher)
        gs = next(p for p in kids if p != shepherd)
        open({str(pidfile)!r}, "w").write(f"{{os.getpid()}} {{c.location.os_pid}} {{gs}} {{shepherd}}")
        os.kill(shepherd if {victim!r} == "shepherd" else gs, signal.SIGKILL)
        time.sleep(60)
    """, timeout=60)
    assert res.returncode == 70, res.stderr
    assert f"ember: runtime failure: {victim} exited unexpectedly".encode() in res.stderr
    assert wait_gone([int(p) for p in pidfile.read_text().split()]) == []


@pytest.mark.timeout(60)
def test_gs_killed_the_shepherd_sweeps_grandchildren(tmp_path):
    pidfile = tmp_path / "pids"
    res = run_prog(tmp_path, rf"""
        import os, signal, subprocess, sys, time
        launcher = int(os.environ["EMBER_RUNTIME_ID"][1:].split("-")[0])
        shepherd = os.getppid()
        sys.path.insert(0, {HERE!r})
        from procs import children        # (not /proc/PID/task/TID/children: CONFIG_PROC_CHILDREN)
        kids = children(launcher)
        gs = next(p for p in kids if p != shepherd)
        grandchild = subprocess.Popen(["sleep", "60"])
        open({str(pidfile)!r}, "w").write(f"{{os.getpid()}} {{grandchild.pid}} {{gs}} {{shepherd}}")
        os.kill(gs, signal.SIGKILL)
        time.sleep(60)
    """, timeout=60)
    assert res.returncode == 70, res.stderr
    assert b"ember: runtime failure: global services exited unexpectedly (status -9)\n" in res.stderr
    pids = [int(p) for p in pidfile.read_text().split()]
    assert wait_gone(pids) == [], pids          # the head's own subprocess too


@pytest.mark.timeout(60)
def test_teardown_goes_on_after_a_failed_step(tmp_path):
    # The head removes the runtime's pools from /dev/shm (as a stray
    # `rm /dev/shm/ember.*` would): destroying them fails at teardown.
    res = run_prog(tmp_path, r"""
        import os
        prefix = "ember." + os.environ["EMBER_RUNTIME_ID"] + "."
        for n in os.listdir("/dev/shm"):
            if n.startswith(prefix) and not n.endswith(".lock"):
                os.unlink("/dev/shm/" + n)
        print("unlinked", flush=True)
    """, timeout=60)
    err = res.stderr.decode()
    assert res.returncode == 70, err
    assert res.stdout == b"unlinked\n"
    lines = err.splitlines()
    failed = [ln.split(": ", 3)[2] for ln in lines]
    assert all(ln.startswith("ember: teardown: destroying ") for ln in lines), err
    assert {"destroying the default pool failed",
            "destroying the infrastructure pool failed"} <= set(failed), err
    assert "Traceback" not in err
