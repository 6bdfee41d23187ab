"""ember._filecache: the one cache of values made from files (the "ember"
start method's compiled main and program modules, its check of a main
module), on real files: a value is made once per version of its file, a
changed size or mtime makes it again, a missing file raises, and a failed
make caches nothing."""
import os

import pytest

from ember import _filecache
from ember.mp import _mainload, context


def test_a_value_is_made_once_per_version_of_the_file(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"one")
    made = []

    def make(path):
        with open(path, "rb") as fh:
            made.append(fh.read())
        return made[-1].upper()

    cache = _filecache.FileCache(make)
    st = os.stat(f)
    assert cache.get(str(f)) == ((st.st_mtime_ns, 3), b"ONE")
    assert cache.get(str(f)) == ((st.st_mtime_ns, 3), b"ONE")
    assert made == [b"one"]
    f.write_bytes(b"three")                                   # another size
    assert cache.get(str(f))[1] == b"THREE"
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, another mtime
    f.write_bytes(b"thre3")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert cache.get(str(f)) == ((st.st_mtime_ns + 2 * 10**9, 5), b"THRE3")
    assert made == [b"one", b"three", b"thre3"]
    assert _filecache.stat_key(str(f)) == (st.st_mtime_ns + 2 * 10**9, 5)


def test_a_missing_file_raises_and_a_failed_make_caches_nothing(tmp_path):
    calls = []

    def make(path):
        calls.append(path)
        if len(calls) == 1:
            raise ValueError("cannot read it yet")
        return len(calls)

    cache = _filecache.FileCache(make)
    with pytest.raises(FileNotFoundError):
        cache.get(str(tmp_path / "none"))
    assert calls == []
    f = tmp_path / "b"
    f.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"^cannot read it yet$"):
        cache.get(str(f))
    assert cache.get(str(f))[1] == 2 and cache.get(str(f))[1] == 2


def test_the_start_methods_caches_are_file_caches(tmp_path):
    """The main module's code and check follow the file's versions."""
    main = tmp_path / "prog.py"
    main.write_text("x = 1\n")
    assert isinstance(context._main_codes, _filecache.FileCache)
    assert isinstance(context._prog_codes, _filecache.FileCache)
    assert isinstance(_mainload._checked, _filecache.FileCache)
    prep = {"init_main_from_path": str(main)}
    first = context._main_code(prep)
    assert first[0] == str(main) and context._main_code(prep) is first
    main.write_text("x = 22\n")
    assert context._main_code(prep) is not first
    main.write_text("def (:\n\n")              # another size; does not compile: None
    assert context._main_code(prep) is None
    assert context._main_code({"init_main_from_path": str(tmp_path / "gone.py")}) is None
    assert _mainload._check_file(str(tmp_path / "gone.py")).startswith(
        "[Errno 2] No such file or directory")
