"""`ember cleanup` (issue 8, points 11 and 12): liveness of a runtime is the
flock its launcher holds on /dev/shm/ember.<runtime id>.lock, not its pid;
crafted names and other users' segments cannot stop it."""
import fcntl
import os
import signal
import subprocess
import sys

import pytest

from test_runtime import READY, ember, start_ready

pytestmark = pytest.mark.timeout(60)

SHM = "/dev/shm"
TAG = os.environ["EMBER_SEGMENT_TAG"]      # set by conftest: our segments carry it

# The tests below use --dry-run and --tag TAG (this worker's segments only:
# without it a cleanup reads every runtime's segments and takes each one's
# lock for a moment, those of tests running in parallel too; a real cleanup
# would also remove those whose owner just died).  test_runtime's
# test_launcher_kill_9_then_cleanup checks the real removal.


def pid_max():
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read())


def segments(prefix):
    return sorted(n for n in os.listdir(SHM) if n.startswith(prefix))


def make(name, uid=None):
    path = os.path.join(SHM, name)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.close(fd)
    if uid is not None:
        os.chown(path, uid, uid)
    return path


def unlink_all(names):
    for n in names:
        try:
            os.unlink(os.path.join(SHM, n))
        except FileNotFoundError:
            pass


def stop_runtime(p):
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGINT


def test_live_runtime_survives_cleanup_from_another_pid_namespace(tmp_path):
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a pid namespace here: {probe.stderr.decode().strip()}")
    p = start_ready(tmp_path, READY)
    try:
        prefix = f"ember.r{p.pid}-"
        before = segments(prefix)
        assert f"ember.{before[0].split('.')[1]}.lock" in before
        # There the launcher's pid is unknown (or another process's).  A dry
        # run: standalone pools of tests running in parallel have only their
        # creator's pid, which this namespace cannot see.
        res = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc",
                              sys.executable, "-m", "ember", "cleanup", "--dry-run", "--tag", TAG],
                             capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert prefix not in res.stdout.decode(), res.stdout
        assert segments(prefix) == before
    finally:
        stop_runtime(p)


def test_dead_runtime_is_cleaned_even_if_its_pid_was_reused():
    # The runtime's launcher died (its lock is free); its pid now belongs to
    # a live process (this one).
    rid = f"r{os.getpid()}-dead01-{TAG}"
    names = [f"ember.{rid}.0", f"ember.{rid}.1", f"ember.{rid}.lock"]
    try:
        for n in names:
            make(n)
        res = ember("cleanup", "--dry-run", "--tag", TAG)
        assert res.returncode == 0, res.stderr
        out = [ln for ln in res.stdout.decode().splitlines() if rid in ln]
        assert out == [f"would remove {SHM}/{n}" for n in names], out   # the lock last
    finally:
        unlink_all(names)


def test_a_held_lock_keeps_a_runtime_whose_pid_is_gone():
    rid = f"r{pid_max() + 1}-a11ve0-{TAG}"
    names = [f"ember.{rid}.0", f"ember.{rid}.lock"]
    try:
        for n in names:
            make(n)
        fd = os.open(os.path.join(SHM, names[1]), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            res = ember("cleanup", "--dry-run", "--tag", TAG)
            assert res.returncode == 0, res.stderr
            assert rid not in res.stdout.decode(), res.stdout
        finally:
            os.close(fd)
    finally:
        unlink_all(names)


def test_crafted_pid_does_not_stop_cleanup():
    name = f"ember.p99999999999999999999-{TAG}.x"
    try:
        make(name)
        res = ember("cleanup", "--dry-run", "--tag", TAG)
        assert (res.returncode, res.stderr) == (0, b"")
        assert f"would remove {SHM}/{name}" in res.stdout.decode().splitlines()
    finally:
        unlink_all([name])


def test_tag_keeps_cleanup_to_its_owners():
    """--tag TAG: only the owners made under EMBER_SEGMENT_TAG=TAG are
    looked at; another tag's dead runtime and pool are neither listed nor
    removed, and a real cleanup of that other tag removes them alone."""
    other = ("o" + TAG)[:8] if not TAG.startswith("o") else ("q" + TAG)[:8]
    dead = pid_max() + 3
    ours = [f"ember.r{dead}-7a9000-{TAG}.0", f"ember.r{dead}-7a9000-{TAG}.lock",
            f"ember.p{dead}-{TAG}.t"]
    theirs = [f"ember.r{dead}-7a9000-{other}.0", f"ember.r{dead}-7a9000-{other}.lock",
              f"ember.p{dead}-{other}.t"]
    try:
        for n in ours + theirs:
            make(n)
        res = ember("cleanup", "--dry-run", "--tag", TAG)
        assert (res.returncode, res.stderr) == (0, b""), res.stderr
        out = res.stdout.decode()
        assert all(f"would remove {SHM}/{n}" in out.splitlines() for n in ours), out
        assert other not in out, out
        res = ember("cleanup", "--tag", other)
        assert (res.returncode, res.stderr) == (0, b""), res.stderr
        assert sorted(ln for ln in res.stdout.decode().splitlines() if other in ln) == \
            sorted(f"removed {SHM}/{n}" for n in theirs), res.stdout
        assert [n for n in ours if os.path.exists(os.path.join(SHM, n))] == ours
        assert not [n for n in theirs if os.path.exists(os.path.join(SHM, n))]
    finally:
        unlink_all(ours + theirs)


def test_a_launcher_takes_its_lock_file_a_cleanup_held_a_moment():
    """A cleanup took a starting runtime's fresh lock file between the
    launcher's create and its flock (the launcher found it held), then let
    go of it without unlinking it (a dry run; a real one before its
    unlink): the launcher's next try takes that file, its own, where its
    create (O_EXCL) failed with FileExistsError and the runtime did not
    start."""
    from ember.launcher.host import Launcher

    class Starting:
        tag = f"r{os.getpid()}-10cc00-{TAG}"
    name = f"ember.{Starting.tag}.lock"
    path = make(name)            # as the try before left it
    try:
        fd = Launcher._runtime_lock(Starting())
        try:
            assert os.fstat(fd).st_ino == os.stat(path).st_ino
            other = os.open(path, os.O_RDWR)
            try:
                with pytest.raises(BlockingIOError):
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)    # held: by it
            finally:
                os.close(other)
        finally:
            os.close(fd)
    finally:
        unlink_all([name])


@pytest.mark.parametrize("bad", ["", "a-b", "123456789", "t.x", "é"])
def test_a_bad_tag_is_refused(bad):
    res = ember("cleanup", "--dry-run", "--tag", bad)
    assert res.returncode == 2 and res.stdout == b"", res
    assert f"argument --tag: not a segment tag: {bad!r} (1-8 of A-Z a-z 0-9 _)" in \
        res.stderr.decode(), res.stderr


def test_other_users_segments_are_skipped_and_reported():
    if os.geteuid() != 0:
        pytest.skip("needs root to make a segment owned by another user")
    dead = pid_max() + 1
    theirs, mine = f"ember.p{dead}-{TAG}.theirs", f"ember.p{dead}-{TAG}.mine"
    try:
        make(theirs, uid=54321)
        make(mine)
        # root could unlink it, but it is not root's to remove
        res = ember("cleanup", "--dry-run", "--tag", TAG)
        assert res.returncode == 0, res.stderr
        out = res.stdout.decode().splitlines()
        assert f"skipped {SHM}/{theirs}: owned by uid 54321, not by you" in out, out
        assert f"would remove {SHM}/{mine}" in out, out
    finally:
        unlink_all([theirs, mine])


def test_dead_runtime_introspection_files_are_listed():
    # A runtime killed after its segments were cleaned left its ember ps
    # table and stack directory in the runtime dir: cleanup removes them; a
    # runtime whose lock segment exists keeps its own.
    from ember.runtime import runtime_dir
    d = runtime_dir()
    dead = f"r{pid_max() + 7}-dead02-{TAG}"
    live = f"r{os.getpid()}-live02-{TAG}"
    made = [os.path.join(d, f"{dead}.slots"), os.path.join(d, f"{live}.slots")]
    lock = f"ember.{live}.lock"
    try:
        for p in made:
            open(p, "w").close()
        os.mkdir(os.path.join(d, f"{dead}.stacks"))
        open(os.path.join(d, f"{dead}.stacks", "3"), "w").close()
        make(lock)
        fd = os.open(os.path.join(SHM, lock), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)             # the live runtime's launcher
            res = ember("cleanup", "--dry-run", "--tag", TAG)
        finally:
            os.close(fd)
        assert res.returncode == 0, res.stderr
        out = [ln for ln in res.stdout.decode().splitlines() if "02-" in ln and TAG in ln]
        assert out == [f"would remove {d}/{dead}.slots", f"would remove {d}/{dead}.stacks"], out
        assert os.path.exists(made[0])                  # a dry run removes nothing
    finally:
        unlink_all([lock])
        for p in made:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        import shutil
        shutil.rmtree(os.path.join(d, f"{dead}.stacks"), ignore_errors=True)
