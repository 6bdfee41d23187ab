"""tests/c/sync_stress.c built with ThreadSanitizer (threads) and with
AddressSanitizer + UndefinedBehaviorSanitizer (threads, and processes with
SIGKILLed lock holders), then run.  Skipped only when the compiler lacks the
sanitizer."""
import pytest

from csanitize import build, run

SOURCES = ["src/ember/sync_c/sync.c", "tests/c/sync_stress.c"]
INCLUDE = ["common_c", "sync_c"]


@pytest.mark.timeout(300)
def test_sync_stress_threads_tsan(tmp_path):
    exe = build(tmp_path, "sync_tsan", "thread", SOURCES, INCLUDE, flags=["-Werror"])
    run(exe, "threads", "3000", detect_leaks=False)


@pytest.mark.timeout(300)
def test_sync_stress_asan_ubsan(tmp_path):
    exe = build(tmp_path, "sync_asan", "address,undefined", SOURCES, INCLUDE, flags=["-Werror"])
    run(exe, "threads", "20000", detect_leaks=False)
    run(exe, "procs", "100", detect_leaks=False)
