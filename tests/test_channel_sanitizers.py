"""tests/c/channel_stress.c built with ThreadSanitizer (threads) and with
AddressSanitizer + UndefinedBehaviorSanitizer (threads and processes), then
run.  Skipped only when the compiler lacks the sanitizer."""
import pytest

from csanitize import build, run

SOURCES = ["src/ember/pools_c/pool.c", "src/ember/common_c/slots.c",
           "src/ember/channels_c/channel.c", "tests/c/channel_stress.c"]
INCLUDE = ["common_c", "pools_c", "channels_c"]
LIBS = ["-lpthread", "-lrt"]


@pytest.mark.timeout(300)
def test_stress_threads_tsan(tmp_path):
    run(build(tmp_path, "stress_tsan", "thread", SOURCES, INCLUDE, libs=LIBS), "threads", "5000")


@pytest.mark.timeout(300)
def test_stress_asan_ubsan(tmp_path):
    exe = build(tmp_path, "stress_asan", "address,undefined", SOURCES, INCLUDE, libs=LIBS)
    run(exe, "threads", "20000")
    run(exe, "procs", "20000")
