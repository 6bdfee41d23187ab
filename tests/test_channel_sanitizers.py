"""tests/c/channel_stress.c built with ThreadSanitizer (threads) and with
AddressSanitizer + UndefinedBehaviorSanitizer (threads and processes), then
run.  Skipped only when the compiler lacks the sanitizer."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(ROOT, p) for p in ("src/ember/pools_c/pool.c", "src/ember/common_c/slots.c",
                                            "src/ember/channels_c/channel.c",
                                            "tests/c/channel_stress.c")]
INC = [f"-I{os.path.join(ROOT, 'src', 'ember', d)}" for d in ("common_c", "pools_c", "channels_c")]
CC = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
# -Wno-tsan: TSan does not model atomic_thread_fence (it only matters for the
# futex Dekker handshake, which TSan does not check anyway).
FLAGS = ["-std=c11", "-O1", "-g", "-fno-omit-frame-pointer", "-D_GNU_SOURCE", "-Wall", "-Wextra"]


def _build(tmp_path, name, sanitize):
    if CC is None:
        pytest.skip("no C compiler")
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void){return 0;}\n")
    san = [f"-fsanitize={sanitize}"]
    r = subprocess.run([CC, *san, str(probe), "-o", str(tmp_path / "probe")], capture_output=True)
    if r.returncode != 0 or subprocess.run([str(tmp_path / "probe")], capture_output=True).returncode != 0:
        pytest.skip(f"{CC} cannot build/run -fsanitize={sanitize}: {r.stderr.decode()[:200]}")
    exe = tmp_path / name
    extra = ["-Wno-tsan"] if sanitize == "thread" else ["-fno-sanitize-recover=all"]
    r = subprocess.run([CC, *FLAGS, *san, *extra, *INC, *SOURCES, "-o", str(exe), "-lpthread", "-lrt"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def _run(exe, *args):
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1",
               ASAN_OPTIONS="detect_leaks=1:abort_on_error=0", UBSAN_OPTIONS="print_stacktrace=1")
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-6000:]}"
    assert r.stdout.startswith("ok:"), r.stdout
    assert "WARNING: ThreadSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-6000:]


@pytest.mark.timeout(300)
def test_stress_threads_tsan(tmp_path):
    _run(_build(tmp_path, "stress_tsan", "thread"), "threads", "5000")


@pytest.mark.timeout(300)
def test_stress_asan_ubsan(tmp_path):
    exe = _build(tmp_path, "stress_asan", "address,undefined")
    _run(exe, "threads", "20000")
    _run(exe, "procs", "20000")
