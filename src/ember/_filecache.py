"""Values made from files, kept while a file stays the same: one helper for
every cache of that kind (the "ember" start method's compiled main module
and program modules, its check of a main module, its preload entry).

A file counts as the same while its :func:`stat_key` -- ``(st_mtime_ns,
st_size)`` -- is: what ``importlib``'s bytecode cache trusts too.
"""
import os

__all__ = ["stat_key", "FileCache"]


def stat_key(path):
    """``(st_mtime_ns, st_size)`` of the file at ``path`` (OSError if
    there is none)."""
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)


class FileCache:
    """``make(path)`` for each file, made again only when the file's
    :func:`stat_key` changed.

    Safe to share between threads: an entry is one ``(key, value)`` tuple,
    read once; two threads that both find it stale both make it (the last
    one's stays).  A file that changes while it is read gets a value under
    its older key, so the next look makes it again: never a stale value
    for a newer file.  An exception of ``make`` propagates and caches
    nothing."""

    __slots__ = ("make", "entries")

    def __init__(self, make):
        self.make = make
        self.entries = {}       # path -> (stat key, value)

    def get(self, path):
        """``(stat key, value)`` for the file at ``path`` as it is now
        (OSError if there is none)."""
        key = stat_key(path)
        hit = self.entries.get(path)
        if hit is None or hit[0] != key:
            hit = self.entries[path] = (key, self.make(path))
        return hit
