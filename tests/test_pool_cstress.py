"""The C stress program tests/c/pool_stress.c, built with ASan + UBSan and
run: staged deaths at every step of alloc/free, corruption detection, and a
SIGKILL storm of multi-process alloc/free loops.  Also checks that pool.c
compiles warning-free with the project's flags."""
import os
import shutil
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
POOLS = os.path.join(ROOT, "src", "ember", "pools_c")
COMMON = os.path.join(ROOT, "src", "ember", "common_c")
CC = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-D_GNU_SOURCE", f"-I{COMMON}", f"-I{POOLS}"]

pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")


@pytest.fixture(scope="session")
def stress_bin(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pool_stress") / "pool_stress")
    cmd = [CC, *FLAGS, "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=undefined", os.path.join(HERE, "c", "pool_stress.c"),
           "-o", out, "-lrt", "-lpthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and "sanitize" in r.stderr:
        pytest.skip(f"compiler cannot build with sanitizers: {r.stderr[-500:]}")
    assert r.returncode == 0, r.stderr
    return out


def _run(binary, *args, timeout):
    env = dict(os.environ, ASAN_OPTIONS="abort_on_error=0:detect_leaks=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{args}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    assert "runtime error" not in r.stderr and "AddressSanitizer" not in r.stderr, r.stderr
    return r.stdout


@pytest.mark.timeout(120)
def test_pool_c_compiles_warning_free(tmp_path):
    for extra in (["-O2"], ["-O0"], ["-O3", "-fvisibility=hidden"]):
        r = subprocess.run([CC, *FLAGS, *extra, "-c", os.path.join(POOLS, "pool.c"), "-o",
                            str(tmp_path / "pool.o")], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr


@pytest.mark.timeout(60)
def test_pool_c_staged_deaths(stress_bin):
    out = _run(stress_bin, "deaths", timeout=50)
    assert "deaths: 7 staged cases ok" in out
    assert "repairer deaths: ok" in out


@pytest.mark.timeout(60)
def test_pool_c_corruption_detected(stress_bin):
    assert "corrupt: ok" in _run(stress_bin, "corrupt", timeout=50)


@pytest.mark.timeout(120)
def test_pool_c_kill_storm_short(stress_bin):
    out = _run(stress_bin, "storm", "200", "3", timeout=100)
    assert out.startswith("storm: 200 kills")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_pool_c_kill_storm_long(stress_bin):
    out = _run(stress_bin, "storm", "3000", "4", timeout=850)
    assert out.startswith("storm: 3000 kills")
