"""The C stress programs of tests/c built with a sanitizer and run (for
test_channel_sanitizers.py and test_sync_sanitizers.py)::

    exe = build(tmp_path, "x_tsan", "thread", SOURCES, ["common_c", "sync_c"])
    run(exe, "threads", "3000")        # exits 0, prints "ok: ...", no report
"""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
# -Wno-tsan: TSan does not model atomic_thread_fence (only the futex Dekker
# handshake uses one, and TSan does not check that anyway).
FLAGS = ["-std=c11", "-O1", "-g", "-fno-omit-frame-pointer", "-D_GNU_SOURCE", "-Wall", "-Wextra"]


def build(tmp_path, name, sanitize, sources, include, flags=(), libs=("-lpthread",)):
    """Build ``sources`` (paths from the repository's root) with
    ``-fsanitize=sanitize`` and -I src/ember/<each of ``include``> into
    tmp_path/name; returns its path.  Skips the test when the compiler
    cannot build or run a program with that sanitizer."""
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
    inc = [f"-I{os.path.join(ROOT, 'src', 'ember', d)}" for d in include]
    r = subprocess.run([CC, *FLAGS, *flags, *san, *extra, *inc,
                        *(os.path.join(ROOT, p) for p in sources), "-o", str(exe), *libs],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def run(exe, *args, detect_leaks=True):
    """Run ``exe``: it must exit 0, print "ok:" first, and no sanitizer
    may report anything (a leak too, with ``detect_leaks``)."""
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1",
               ASAN_OPTIONS=f"detect_leaks={int(detect_leaks)}:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1")
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-6000:]}"
    assert r.stdout.startswith("ok:"), r.stdout
    assert "WARNING: ThreadSanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-6000:]
