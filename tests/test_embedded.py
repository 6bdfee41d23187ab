"""The runtime as a library: ember.init() from plain Python, attach by
address, ember start/stop, ember run --address, fork of an attached process,
and the pytest fixture.  Every test runs real runtimes in child interpreters
(or in this one, through the fixture) and checks that nothing is left."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytest_plugins = ["ember.testing"]


def _py(code, *, env=None, timeout=60, check=True):
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


def _ember(*args, timeout=60, **kw):
    return subprocess.run([sys.executable, "-m", "ember", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def _rundir():
    return os.path.join(os.environ["XDG_RUNTIME_DIR"], "ember")


def _addresses():
    try:
        return sorted(n for n in os.listdir(_rundir()) if n.endswith(".addr"))
    except FileNotFoundError:
        return []


@pytest.mark.timeout(60)
def test_init_from_plain_python_creates_joins_and_leaves_nothing():
    res = _py("""
        import os, ember
        from ember.globalservices import process, channel
        rt = ember.init()
        assert ember.is_initialized()
        assert ember.init() is rt                     # a re-run cell is harmless
        me = process.query(rt.p_uid)
        assert me.os_pid == os.getpid() and me.is_alive, me
        p = process.create("/bin/sh", os.getcwd(), ["-c", "exit 3"], user_name="three")
        print("join", process.join("three"))
        ch = channel.create(None, user_name="greeting")
        print("joined", channel.join("greeting", timeout=5).c_uid == ch.c_uid)
        print("segments", len([n for n in os.listdir("/dev/shm") if n.startswith("ember." + rt.id)]) > 0)
    """)
    assert "join 3" in res.stdout
    assert "joined True" in res.stdout
    assert "segments True" in res.stdout
    assert _addresses() == []


@pytest.mark.timeout(120)
def test_init_and_shutdown_leave_no_handle_to_warn_about():
    """ember.shutdown() lets go of everything of the runtime this process
    held: the default pool (m_uid 1) cached for its objects, the reply
    channels and GS's pool (a release of a collected object's reference,
    on its own thread, used to attach them anew while the process was
    leaving), the started host's Popen.  With ResourceWarnings shown,
    nothing warns -- not while init/shutdown repeat, and not at exit with
    an object of the last runtime still alive (a module global)."""
    res = _py("""
        import gc, os, warnings
        warnings.simplefilter("always", ResourceWarning)
        import ember
        for i in range(6):
            if i == 3:
                os.environ["EMBER_INIT_SPAWN"] = "1"      # the Popen path too
            ember.init()
            qs = [ember.Queue() for _ in range(5)]
            for q in qs:
                q.put(i)
                assert q.get() == i
            del qs, q                # their references are released on another thread...
            ember.shutdown()         # ...while this process leaves
            gc.collect()
        ember.init()
        kept = ember.Queue()         # alive at exit, after the shutdown
        kept.put(1)
        ember.shutdown()
        print("done", flush=True)
    """, timeout=110)
    assert res.stdout == "done\n"
    assert "ResourceWarning" not in res.stderr, res.stderr


@pytest.mark.timeout(60)
def test_second_interpreter_attaches_with_auto_and_sees_the_named_channel():
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, ember
        from ember.globalservices import channel, process
        rt = ember.init()
        ch = channel.create(None, user_name="shared-jobs")
        print("ready", rt.p_uid, flush=True)
        sys.stdin.readline()              # until the other side is done
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = starter.stdout.readline()
        assert line.startswith("ready"), line
        starter_puid = int(line.split()[1])
        res = _py(f"""
            import os, ember
            from ember.globalservices import channel, process
            rt = ember.init(address="auto")
            desc = channel.join("shared-jobs", timeout=5)
            print("found", desc.name)
            print("starter alive", process.query({starter_puid}).is_alive)
            print("me", rt.p_uid != {starter_puid}, rt.owner)
        """)
        assert "found shared-jobs" in res.stdout
        assert "starter alive True" in res.stdout
        assert "me True False" in res.stdout        # attached, not the owner
        starter.stdin.write("\n")
        starter.stdin.flush()
        assert starter.wait(timeout=30) == 0
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        starter.stdout.close()
        starter.stdin.close()
    assert _addresses() == []


@pytest.mark.timeout(60)
def test_attached_process_exit_is_noticed_and_it_leaves_the_runtime_running():
    res = _py("""
        import subprocess, sys, textwrap, ember
        from ember.globalservices import process
        rt = ember.init()
        child = subprocess.run([sys.executable, "-c", textwrap.dedent('''
            import ember
            rt = ember.init(address="auto")
            print(rt.p_uid)
        ''')], capture_output=True, text=True, timeout=30)
        assert child.returncode == 0, child.stderr
        p_uid = int(child.stdout)
        print("exit", process.join(p_uid, timeout=10))
        print("still up", ember.is_initialized(), process.query(rt.p_uid).is_alive)
    """)
    assert "exit 0" in res.stdout        # detached cleanly at interpreter exit
    assert "still up True True" in res.stdout


@pytest.mark.timeout(60)
def test_killed_attached_process_is_seen_with_unknown_exit_code():
    res = _py("""
        import os, signal, subprocess, sys, textwrap, ember
        from ember.globalservices import process
        ember.init()
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent('''
            import sys, ember
            rt = ember.init(address="auto")
            print(rt.p_uid, flush=True)
            sys.stdin.readline()
        ''')], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        p_uid = int(child.stdout.readline())
        child.kill(); child.wait()
        print("exit", process.join(p_uid, timeout=10))
    """)
    assert "exit 255" in res.stdout


@pytest.mark.timeout(60)
def test_wrong_key_is_refused(tmp_path):
    res = _py("""
        import ember
        from ember import runtime
        from ember.exceptions import ProcessError
        rt = ember.init()
        fake = runtime.Runtime(runtime.Address(**dict(rt.address.to_dict(), key="0" * 32,
                                                      path=rt.address.path)))
        pid = __import__("os").fork()
        if pid == 0:
            code = 1
            try:
                runtime._current = None
                fake._attach()
            except ProcessError as exc:
                print("refused:", exc, flush=True)
                code = 0
            finally:
                __import__("os")._exit(code)
        _, status = __import__("os").waitpid(pid, 0)
        print("child", status)
    """)
    assert "refused: attach refused: wrong runtime key" in res.stdout
    assert "child 0" in res.stdout


@pytest.mark.timeout(60)
def test_killed_starter_leaves_nothing():
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, ember
        from ember.globalservices import process
        rt = ember.init()
        process.create("/bin/sleep", os.getcwd(), ["60"], user_name="sleeper")
        print(rt.id, flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rid = p.stdout.readline().strip()
    assert rid.startswith("r"), rid
    p.kill()
    p.wait()
    p.stdout.close()
    p.stdin.close()
    # The host watches its starter: it tears the runtime down by itself.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        left = [n for n in os.listdir("/dev/shm") if n.startswith(f"ember.{rid}.")]
        if not left and not _addresses():
            break
        time.sleep(0.05)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"ember.{rid}.")]
    assert _addresses() == []
    res = _ember("cleanup", "--dry-run", "--tag", os.environ["EMBER_SEGMENT_TAG"])
    assert rid not in res.stdout


@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", ["shepherd", "global services"])
def test_calls_into_a_runtime_a_killed_part_ended_say_so(victim):
    """GS or the shepherd SIGKILLed under an ember.init() program: its
    launcher tears the runtime down, and every call after that raises
    RuntimeEnded naming the part and the event log, where it raised the
    torn-down channel's or pool's own CoreError; a call that was waiting
    for GS's reply (a join) raises it too, where it waited for ever and
    held the program at its exit; the program exits cleanly and leaves
    nothing."""
    res = _py(f"""
        import os, signal, sys, threading, time, ember
        from ember import _slots
        from ember.globalservices import process, channel
        from ember.globalservices._client import is_reply_c_uid
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from procs import children
        rt = ember.init()
        print("rid", rt.id, flush=True)
        sleeper = process.create("/bin/sleep", os.getcwd(), ["60"])
        shepherd = int(open(f"/proc/{{sleeper.location.os_pid}}/stat").read().rsplit(")", 1)[1].split()[1])
        gs, = [p for p in children(rt.host_pid) if p != shepherd]
        def join():
            try:
                process.join(sleeper.p_uid)
            except ember.RuntimeEnded as exc:
                print("error:", exc, flush=True)
        waiter = threading.Thread(target=join)
        waiter.start()
        deadline = time.monotonic() + 30       # until it waits for GS's answer
        while not is_reply_c_uid((_slots.read(rt.id).get(rt.p_uid) or {{}}).get("c_uid") or 0) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(shepherd if {victim!r} == "shepherd" else gs, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while rt.address.alive() and time.monotonic() < deadline:    # the teardown
            time.sleep(0.01)
        waiter.join(30)
        def work():
            ember.Process(target=print).start()
        for call in (work, ember.Queue, lambda: process.create("/bin/true", ".", []),
                     lambda: channel.create(None), lambda: process.join(sleeper.p_uid)):
            try:
                call()
            except ember.RuntimeEnded as exc:
                assert isinstance(exc, ember.ChannelError), type(exc).__mro__
                print("error:", exc, flush=True)
            else:
                print("no error", call, flush=True)
        print("end", flush=True)
    """)
    rid = res.stdout.split()[1]
    log = os.path.join(_rundir(), f"{rid}.events")
    errors = [line for line in res.stdout.splitlines() if not line.startswith("rid ")]
    assert errors == [f"error: the ember runtime {rid} has ended (runtime failure: {victim} "
                      f"exited unexpectedly (status -9)); its event log: {log} (ember events "
                      f"--address {rid})"] * 6 + ["end"], res.stdout
    assert f"ember: runtime failure: {victim} exited unexpectedly (status -9)" in res.stderr
    assert "runtime.failed reason=" in _ember("events", "--address", rid).stdout
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"ember.{rid}.")]
    assert _addresses() == []


def test_the_lock_file_of_a_runtime_in_its_teardown_says_why_it_failed():
    """Between a failure and the teardown's end the launcher holds the
    runtime's lock, with the reason written in it (runtime.note_failure):
    ended_error reads it there (the event log is read only once the lock
    file is gone); an empty lock that is held is a running runtime."""
    import fcntl
    from ember import _env, runtime
    rid = f"r{os.getpid()}-0f0f0f-{os.environ['EMBER_SEGMENT_TAG']}-lk"
    path = f"/dev/shm/ember.{rid}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _env.set_overrides({_env.RUNTIME_ID: rid, _env.GS_CH: "x", _env.NODE: "0"})
        assert runtime.ended_error() is None                   # held, empty: it runs
        runtime.note_failure(rid, "shepherd exited unexpectedly (status 1)", fd)
        log = os.path.join(_rundir(), f"{rid}.events")
        assert str(runtime.ended_error()) == (
            f"the ember runtime {rid} has ended (runtime failure: shepherd exited "
            f"unexpectedly (status 1)); its event log: {log} (ember events --address {rid})")
        os.unlink(path)                                        # the teardown's end
        assert "(runtime failure: shepherd exited unexpectedly (status 1))" in \
            str(runtime.ended_error())                         # from the log now
        os.unlink(log)
        assert "(its launcher is gone)" in str(runtime.ended_error())
    finally:
        _env.set_overrides(None)
        os.close(fd)
        if os.path.exists(path):
            os.unlink(path)


@pytest.mark.timeout(60)
def test_attach_to_a_dead_address_fails_fast_and_removes_it():
    from ember import runtime
    d = runtime.runtime_dir()
    # a runtime whose launcher died: an address with nobody holding its lock
    runtime.publish("r1-deadbeef-gone", name="ghost", pid=1, key="k" * 32,
                    inf_pool=b"x", gs_ch=b"y", default_pool=b"z", program=None)
    res = _py("""
        import ember
        from ember.exceptions import GlobalServicesError
        try:
            ember.init(address="ghost")
        except GlobalServicesError as exc:
            print("error:", exc)
    """, timeout=30)     # a dead address must not be waited on
    assert "error: no running ember runtime named 'ghost' for this user" in res.stdout
    assert not os.path.exists(os.path.join(d, "r1-deadbeef-gone.addr"))
    res = _py("""
        import ember
        from ember.exceptions import GlobalServicesError
        try:
            ember.init(address="auto")
        except GlobalServicesError as exc:
            print("error:", exc)
    """)
    assert "error: no running ember runtime found for this user" in res.stdout


def test_runtime_dir_refuses_a_directory_others_can_enter(tmp_path, monkeypatch):
    from ember import runtime
    from ember.exceptions import GlobalServicesError
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    os.mkdir(tmp_path / "ember", 0o755)
    os.chmod(tmp_path / "ember", 0o755)
    with pytest.raises(GlobalServicesError, match=r"^refusing the runtime directory .*mode 0700 "
                                                  r"\(it has owner 0, mode 755\)$"):
        runtime.runtime_dir()


@pytest.mark.timeout(90)
def test_ember_start_run_address_and_stop():
    res = _ember("start", "--name", "batch-a")
    assert res.returncode == 0, res.stderr
    rid = res.stdout.split()[0]
    assert res.stdout.strip() == f"{rid} (batch-a)"
    try:
        prog = textwrap.dedent("""
            import sys
            from ember.globalservices import channel, process
            ch = channel.create(None, user_name=sys.argv[1])
            print("created", sys.argv[1], len(process.get_list()) >= 1)
        """)
        import tempfile
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "prog.py")
            with open(path, "w") as f:
                f.write(prog)
            r1 = _ember("run", "--address", "batch-a", path, "ch-one")
            assert r1.returncode == 0, r1.stderr
            assert r1.stdout == "created ch-one True\n"     # the head wrote to our stdout
            # the runtime outlived the program: its channel is still there
            r2 = _py("""
                import ember
                from ember.globalservices import channel
                ember.init(address="batch-a")
                print("still", channel.query("ch-one").name)
            """)
            assert "still ch-one" in r2.stdout
            r3 = _ember("run", path, "x", env=dict(os.environ, EMBER_ADDRESS=rid))
            assert r3.returncode == 0, r3.stderr
            assert r3.stdout == "created x True\n"
            r5 = subprocess.run([sys.executable, "-m", "ember", "run", "--address", rid,
                                 sys.executable, "-c", "print(input()[::-1])"],
                                input="olleh\n", capture_output=True, text=True, timeout=60)
            assert (r5.returncode, r5.stdout) == (0, "hello\n"), r5.stderr
            r4 = _py("""
                import ember
                from ember.globalservices import channel
                ember.init(address="batch-a")
                print("names", sorted(n for _, n in channel.get_list(names=True)))
            """)
            assert "names ['ch-one', 'x']" in r4.stdout
            # a second runtime of that name is refused (the name would reach neither)
            twin = _ember("start", "--name", "batch-a")
            if twin.returncode == 0:                     # (not left running if it was made)
                _ember("stop", twin.stdout.split()[0])
            assert twin.returncode == 1 and twin.stdout == "", twin.stdout
            assert twin.stderr == (f"ember start: a runtime named 'batch-a' is already running "
                                   f"({rid}): stop it (`ember stop batch-a`), attach to it "
                                   f"(ember.init(address='batch-a')), or choose another name\n")
            r6 = _py("""
                import ember
                try:
                    ember.init(name="batch-a")
                except ember.GlobalServicesError as e:
                    print("refused:", e)
            """)
            assert f"refused: a runtime named 'batch-a' is already running ({rid})" in r6.stdout
            named = [ln for ln in _ember("ls").stdout.splitlines() if " batch-a " in ln]
            assert len(named) == 1, named
    finally:
        stop = _ember("stop", "batch-a")
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == f"stopped {rid} (batch-a)"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"ember.{rid}.")]
    assert not [n for n in _addresses() if n.startswith(rid)]
    again = _ember("stop", "batch-a")
    assert again.returncode == 1
    assert again.stderr.strip() == "ember stop: no running ember runtime named 'batch-a' for this user"


@pytest.mark.timeout(90)
def test_the_address_is_gone_before_the_lock_is_released():
    """Whoever waits for a runtime to stop waits for its lock (`ember stop`,
    every process that did not start it): the host must remove its address
    file before it lets the lock go, or a `stop` that returned leaves an
    address behind (the flake of this file's address checks).  We wait on
    the lock itself and look at the addresses the moment it is free."""
    import fcntl
    res = _ember("start", "--name", "lock-order")
    assert res.returncode == 0, res.stderr
    rid = res.stdout.split()[0]
    fd = os.open(f"/dev/shm/ember.{rid}.lock", os.O_RDONLY | os.O_CLOEXEC)
    stop = None
    try:
        assert [n for n in _addresses() if n.startswith(rid)] == [rid + ".addr"]
        stop = subprocess.Popen([sys.executable, "-m", "ember", "stop", "lock-order"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fcntl.flock(fd, fcntl.LOCK_EX)            # returns when the host lets its lock go
        left = [n for n in _addresses() if n.startswith(rid)]
    finally:
        os.close(fd)
        if stop is not None:
            out, err = stop.communicate(timeout=60)
    assert stop.returncode == 0, err
    assert left == []


@pytest.mark.timeout(60)
def test_fork_of_an_initialised_process_is_a_managed_process_of_its_own():
    res = _py("""
        import os, ember
        from ember.globalservices import process
        rt = ember.init()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                from ember import runtime
                p = process.create("/bin/true", os.getcwd(), [])
                mine = runtime.current()
                os.write(w, f"{mine.p_uid} {process.join(p.p_uid)} {mine.owner}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        _, status = os.waitpid(pid, 0)
        child_puid, joined, owner = os.read(r, 100).decode().split()
        print("child", status, int(child_puid) != rt.p_uid, joined, owner)
        print("child exit seen", process.join(int(child_puid), timeout=10))
    """)
    assert "child 0 True 0 False" in res.stdout
    assert "child exit seen" in res.stdout


@pytest.mark.timeout(60)
def test_pytest_fixture_gives_a_runtime(ember_runtime):
    from ember.globalservices import process
    assert ember_runtime.owner
    p = process.create("/bin/sh", os.getcwd(), ["-c", "exit 5"])
    assert process.join(p.p_uid) == 5


@pytest.mark.timeout(150)
def test_jupyter_kernel_inits_runs_and_leaves_nothing():
    """A real IPython kernel (jupyter_client + ipykernel), driven from a
    separate interpreter so its zmq sockets and threads stay out of ours."""
    pytest.importorskip("jupyter_client")
    pytest.importorskip("ipykernel")
    res = _py("""
        import os
        from jupyter_client.manager import start_new_kernel
        km, kc = start_new_kernel(kernel_name="python3", startup_timeout=90)
        outputs = []
        def run(code):
            reply = kc.execute_interactive(code, timeout=60, output_hook=outputs.append)
            assert reply["content"]["status"] == "ok", reply["content"]
        try:
            run("import ember, os\\nrt = ember.init()\\nrt2 = ember.init()\\n"
                "print('same', rt is rt2, rt.owner)")
            run("from ember.globalservices import process\\n"
                "p = process.create('/bin/sh', os.getcwd(), ['-c', 'exit 7'])\\n"
                "print('exit', process.join(p.p_uid))")
            run("rid = rt.id\\nember.shutdown()\\n"
                "print('left', [n for n in os.listdir('/dev/shm') if n.startswith('ember.' + rid)])\\n"
                "print('initialized', ember.is_initialized())")
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
        print("".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream"))
    """, timeout=140)
    assert "same True True" in res.stdout
    assert "exit 7" in res.stdout
    assert "left []" in res.stdout
    assert "initialized False" in res.stdout
