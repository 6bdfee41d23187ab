"""GS's answers while a creator is stopped holding the join wake board's
lock: ``channel.join(name, timeout=1 ms)`` of fresh names (GS tries the
board to list each joiner), per call, with the board free and with it held
by a creator stopped (SIGSTOP) right after its claim, in the same run.

    python -m ember run benchmarks/board_busy.py [N]

Before GS only tried the lock (74c2684) each such join cost GS a 10 ms
wait on the lock; now it costs what it costs with the board free
(docs/performance.md, "The runtime").
"""
import os, signal, sys, tempfile, threading, time
from ember.exceptions import ChannelError, ChannelTimeout
from ember.globalservices import channel, introspect, process

def wait_for(pred, what):
    deadline = time.monotonic() + 30
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.005)

def stopped(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"

if len(sys.argv) > 1 and sys.argv[1] == "create":     # create NAME READY GO
    channel.destroy(channel.create(None).c_uid)
    open(sys.argv[3], "w").close()
    wait_for(lambda: os.path.exists(sys.argv[4]), "go")
    try:
        channel.create(None, sys.argv[2])
    except ChannelError:
        pass
    sys.exit(0)

tmp = tempfile.mkdtemp(prefix="ember-board-busy-")
try:
    channel.join("warm", timeout=0.001)
except ChannelTimeout:
    pass
channel.destroy(channel.create(None).c_uid)

def joins(n, tag):
    t0 = time.perf_counter()
    for i in range(n):
        try:
            channel.join(f"{tag}{i}", timeout=0.001)
        except ChannelTimeout:
            pass
    return (time.perf_counter() - t0) / n * 1e3

N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
base = joins(N, "a")
th = threading.Thread(target=lambda: channel.join("b", timeout=60), daemon=True)
th.start()
wait_for(lambda: any(w.get("name") == "b" for w in introspect.dump()["waiters"]), "park")
c = process.create(sys.executable, "", [sys.argv[0], "create", "b", f"{tmp}/r", f"{tmp}/g"],
                   env={"EMBER_TEST_WAKEBOARD_STOP": "claimed"})
wait_for(lambda: os.path.exists(f"{tmp}/r"), "ready")
pid = process.query(c.p_uid).location.os_pid
open(f"{tmp}/g", "w").close()
wait_for(lambda: stopped(pid), "stop")
held = joins(N, "c")
os.kill(pid, signal.SIGCONT)
process.join(c.p_uid, timeout=30)
th.join(30)
print(f"join(timeout=1ms) of a fresh name, per call: board free {base:.2f} ms, "
      f"board held by a stopped creator {held:.2f} ms (ratio {held / base:.1f}x)")
channel.destroy("b")
for f in ("r", "g"):
    os.unlink(f"{tmp}/{f}")
os.rmdir(tmp)
