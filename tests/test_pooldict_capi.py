"""The C table of ember.dict(in_pool=True) (sync_c/pooldict.c) on its own,
through cffi: every operation, and misuse / corrupt memory that must return
an error code, never crash or read outside the table."""
import os

import pytest

import cffi_build

SYNC = os.path.join(cffi_build.ROOT, "src", "ember", "sync_c")


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    mod = cffi_build.build(tmp_path_factory.mktemp("cffi_pooldict"), "_ember_pooldict_cffi",
                           [os.path.join(SYNC, "pooldict.h")], [os.path.join(SYNC, "pooldict.c")],
                           extra_cdef="void free(void *);", extra_source="#include <stdlib.h>\n",
                           extra_cflags=[f"-I{SYNC}"])
    return mod.ffi, mod.lib


def _table(pd, cap=8, ssz=64):
    ffi, lib = pd
    size = lib.ember_pdict_size(cap, ssz)
    mem = ffi.new("uint64_t[]", size // 8)
    assert lib.ember_pdict_init(mem, size, cap, ssz) == lib.EMBER_OK
    return mem, size


def _get(pd, mem, key, bufsize=64):
    ffi, lib = pd
    buf = ffi.new("char[]", max(bufsize, 1))
    vl = ffi.new("uint32_t *")
    rc = lib.ember_pdict_get(mem, ord("b"), key, len(key), buf, bufsize, vl)
    return rc, (ffi.buffer(buf, vl[0])[:] if rc == lib.EMBER_OK else vl[0])


def _set(pd, mem, key, value, only_new=0):
    ffi, lib = pd
    existed = ffi.new("int *")
    rc = lib.ember_pdict_set(mem, ord("b"), key, len(key), ord("b"), value, len(value),
                             only_new, existed)
    return rc, existed[0]


def test_sizes(pd):
    _, lib = pd
    assert lib.ember_pdict_size(8, 64) == 64 + 8 * 64
    for cap, ssz in ((0, 64), (7, 64), (12, 64), (8, 0), (8, 32), (8, 100), (8, 2 << 20)):
        assert lib.ember_pdict_size(cap, ssz) == 0, (cap, ssz)


def test_operations(pd):
    ffi, lib = pd
    mem, size = _table(pd)
    cap, ssz = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    assert lib.ember_pdict_check(mem, size, cap, ssz) == lib.EMBER_OK and (cap[0], ssz[0]) == (8, 64)
    assert _get(pd, mem, b"a") == (lib.EMBER_ERR_NOT_FOUND, 0)
    assert _set(pd, mem, b"a", b"1") == (lib.EMBER_OK, 0)
    assert _get(pd, mem, b"a") == (lib.EMBER_OK, b"b1")          # tag byte first
    assert _set(pd, mem, b"a", b"2", only_new=1) == (lib.EMBER_OK, 1)
    assert _get(pd, mem, b"a") == (lib.EMBER_OK, b"b1")
    assert _get(pd, mem, b"a", bufsize=1) == (lib.EMBER_ERR_BUFFER_TOO_SMALL, 2)
    assert lib.ember_pdict_contains(mem, ord("b"), b"a", 1) == 1
    assert lib.ember_pdict_contains(mem, ord("s"), b"a", 1) == 0    # another tag: another key
    assert _set(pd, mem, b"k", b"v" * 46)[0] == lib.EMBER_ERR_TOO_BIG   # (1+1) + (1+46) > 48
    assert _set(pd, mem, b"k", b"v" * 45)[0] == lib.EMBER_OK             # (1+1) + (1+45): fits
    for i in range(4):
        assert _set(pd, mem, bytes([i]), b"x")[0] == lib.EMBER_OK
    assert lib.ember_pdict_len(mem) == 6
    assert _set(pd, mem, b"full", b"x")[0] == lib.EMBER_ERR_FULL         # 3/4 of 8
    assert lib.ember_pdict_delete(mem, ord("b"), b"a", 1) == lib.EMBER_OK
    assert lib.ember_pdict_delete(mem, ord("b"), b"a", 1) == lib.EMBER_ERR_NOT_FOUND
    assert _set(pd, mem, b"full", b"x")[0] == lib.EMBER_OK
    out, outlen = ffi.new("uint8_t **"), ffi.new("size_t *")
    n, torn = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    assert lib.ember_pdict_snapshot(mem, out, outlen, n, torn) == lib.EMBER_OK
    assert (n[0], torn[0]) == (6, 0) and outlen[0] == sum(8 + 1 + len(k) + 1 + len(v) for k, v in
                                                          [(b"k", b"v" * 45), (b"full", b"x")]
                                                          + [(bytes([i]), b"x") for i in range(4)])
    lib.free(out[0])
    assert lib.ember_pdict_clear(mem) == lib.EMBER_OK and lib.ember_pdict_len(mem) == 0
    assert _get(pd, mem, b"k")[0] == lib.EMBER_ERR_NOT_FOUND


def test_tombstones_do_not_pile_up(pd):
    # 1000 insert/delete rounds in a table of 8 slots: deleted slots before
    # an EMPTY one become EMPTY again, so probes stay short and inserts work.
    ffi, lib = pd
    mem, _ = _table(pd)
    for i in range(1000):
        key = i.to_bytes(4, "little")
        assert _set(pd, mem, key, b"v")[0] == lib.EMBER_OK
        assert lib.ember_pdict_delete(mem, ord("b"), key, 4) == lib.EMBER_OK
    assert lib.ember_pdict_len(mem) == 0
    assert lib.ember_pdict_recount(mem) == lib.EMBER_OK and lib.ember_pdict_len(mem) == 0


def test_misuse_and_corrupt_memory(pd):
    ffi, lib = pd
    NULL = ffi.NULL
    mem, size = _table(pd)
    assert lib.ember_pdict_init(NULL, size, 8, 64) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pdict_init(mem, size - 1, 8, 64) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pdict_init(mem, size, 9, 64) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pdict_check(NULL, size, NULL, NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pdict_check(mem, size - 64, NULL, NULL) == lib.EMBER_ERR_CORRUPT
    vl = ffi.new("uint32_t *")
    assert lib.ember_pdict_get(NULL, 0, b"a", 1, NULL, 0, vl) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pdict_get(mem, 0, NULL, 1, NULL, 0, vl) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pdict_set(NULL, 0, b"a", 1, 0, b"", 0, 0, NULL) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pdict_delete(mem, 0, NULL, 3) == lib.EMBER_ERR_INVALID_ARG
    assert lib.ember_pdict_contains(NULL, 0, b"a", 1) == 0
    assert lib.ember_pdict_snapshot(mem, NULL, NULL, NULL, NULL) == lib.EMBER_ERR_INVALID_ARG
    raw = ffi.cast("uint8_t *", mem)
    # a used entry whose lengths overrun its slot: an error, never a read past it
    assert _set(pd, mem, b"a", b"1")[0] == lib.EMBER_OK
    slot = next(64 + i * 64 for i in range(8) if raw[64 + i * 64] == 1)
    vlen = ffi.cast("uint32_t *", raw + slot + 12)
    vlen[0] = 10_000
    assert _get(pd, mem, b"a", bufsize=20000)[0] == lib.EMBER_ERR_CORRUPT
    out, outlen = ffi.new("uint8_t **"), ffi.new("size_t *")
    n, torn = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    assert lib.ember_pdict_snapshot(mem, out, outlen, n, torn) == lib.EMBER_OK
    assert (n[0], torn[0]) == (0, 1) and out[0] == NULL
    vlen[0] = 2
    # an entry left WRITING (its writer died mid-overwrite): torn until set again
    raw[slot] = 3
    assert _get(pd, mem, b"a")[0] == lib.EMBER_ERR_CORRUPT
    assert lib.ember_pdict_contains(mem, ord("b"), b"a", 1) == 1
    assert _set(pd, mem, b"a", b"2")[0] == lib.EMBER_OK
    assert _get(pd, mem, b"a") == (lib.EMBER_OK, b"b2")
    # a count that drifted (a writer died between the entry and the count)
    ffi.cast("uint64_t *", raw + 16)[0] = 5
    assert lib.ember_pdict_recount(mem) == lib.EMBER_OK and lib.ember_pdict_len(mem) == 1
    # bad magic, other version
    raw[12] = 1
    assert lib.ember_pdict_check(mem, size, NULL, NULL) == lib.EMBER_ERR_VERSION
    raw[0] = 0
    assert lib.ember_pdict_check(mem, size, NULL, NULL) == lib.EMBER_ERR_BAD_MAGIC


@pytest.mark.timeout(300)
def test_stress_under_asan_ubsan(tmp_path):
    # tests/c/pooldict_stress.c: random operations checked against a
    # reference model, then random bytes over the slots (any return code,
    # but no access outside the table), built with ASan + UBSan.
    import shutil
    import subprocess
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = tmp_path / "pooldict_stress"
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void){return 0;}\n")
    if subprocess.run([cc, *san, str(probe), "-o", str(tmp_path / "probe")],
                      capture_output=True).returncode != 0:
        pytest.skip(f"{cc} cannot build -fsanitize=address,undefined")
    r = subprocess.run([cc, "-std=c11", "-O1", "-g", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror",
                        *san, f"-I{os.path.join(cffi_build.ROOT, 'src', 'ember', 'common_c')}",
                        f"-I{SYNC}", os.path.join(SYNC, "pooldict.c"),
                        os.path.join(cffi_build.ROOT, "tests", "c", "pooldict_stress.c"),
                        "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1")
    for mode, n in (("model", "200000"), ("garbage", "20000")):
        r = subprocess.run([str(exe), mode, n], capture_output=True, text=True, timeout=240, env=env)
        assert r.returncode == 0 and r.stdout == f"ok: {mode} {n}\n", \
            f"exit {r.returncode}\n{r.stdout}\n{r.stderr[-6000:]}"
        assert "runtime error" not in r.stderr, r.stderr[-6000:]
