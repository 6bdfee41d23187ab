"""Which of the template's pages a child writes (copy-on-write), when, and why.

    python benchmarks/cow_pages.py [-n N] [--mp] [--perf] [--steps] [--pools] [--top K]

Runs itself under ``ember run``, as root (it reads the runtime's processes'
``/proc/PID/pagemap`` and ``mem`` and ptraces its children).  A child of
the warm template maps the template's memory; its first write to a page
copies it (a copy-on-write fault), and the page's frame number (PFN) in
the child's pagemap changes.  A child's own PFN for an address changes only
when the child writes there, so its pagemap read at a few points says
which pages each step wrote, whatever the template does meanwhile:

- **spare**: from the clone to the spare's wait for a request (read against
  its template, the one it shares the most frames with, while both wait:
  pages the template wrote since the clone count here too);
- **lease**: from the request to the leased spare's wait for its call;
- **call**: from the call to the program's target (with ``--mp``: most of
  it the method's own start in the child, ``ember.mp._child``);
- **exit**: from the target to the exit (``PTRACE_O_TRACEEXIT`` stops the
  child before its memory is unmapped).

Every leased spare waiting is seized (``PTRACE_SEIZE``) before the
start (which takes the start is the shepherd's choice: with ``--mp`` a
program's template's lease once it has one), the one whose pid the start
gives is followed and the others let go; the target (:func:`stop_here`)
stops itself with SIGSTOP, which the tracer reads and suppresses.  On any
error the seized are detached and the child continued and joined, so that
the runtime's teardown has no stopped child to wait for.  Starts are one
at a time (start, then join).

What it prints, a start's mean over the traced starts:

- the pages written in each step, by mapping: pages that hold the header
  of one of the template's Python objects, libpython's data, the C heap,
  other anonymous memory (named after the file mapping it follows, which
  it need not belong to: pymalloc's arenas are plain anonymous mappings);
- the objects on those pages by type and by the module that made them
  (each page shared among the objects whose header is on it).  The object
  map comes from one child run first (:func:`object_map`: every object
  reachable from ``gc.get_objects()`` and the modules, at the addresses
  every child of this template has them; an object is taken as the
  template's only where the template's memory has the same type there);
- CPython 3.11's type attribute cache: the entries each step filled (its
  misses), with the name and what the lookup found.  Each miss writes the
  entry and the reference counts of the name stored and of the name it
  evicts (a string anywhere in the template's heap);
- with ``--perf`` (``perf record`` of ``exceptions:page_fault_user``,
  write faults only): the object at each fault's address, i.e. the first
  write to each page copied, by step (``header``: its reference count).
  Each object is named (a function's or code object's name, a string's
  text, a module's or class's name, whose dict a dict is) and, for a
  string, tuple, dict and the like, after one of the objects that hold it
  (``str 'name' <- code _child.py:main``: a name or constant of that code,
  or of another that holds the same string).  A write that is no object
  of the template's is named after what is there: the type attribute
  cache, a library's data symbol (``nm``: ``_PyRuntime+0x...``,
  ``usedpools``...), a pymalloc pool's header (an allocation or a free in
  that pool: its count and free list) or one of its free blocks (an
  object allocated there), by the pool's block size;
- with ``--steps`` (implies ``--perf``; the runtime runs with
  ``EMBER_TRACE_START``, so every process records its trace labels and the
  child writes a few pages more for them): the call step's write faults
  cut at the trace labels the child passes (the worker's ``C.call`` and
  ``C.target``, the method's ``M.c_*`` in ``_child.main`` and ``M.b_*`` in
  its bootstrap, ``target``), each step named after the label that ends
  it, with the objects first written in it: which of the template's
  objects each step of a child's path writes.

``--pools``: the pages the child wrote since its clone (at its target and
at its exit), each by what the child changed on it against the
template's bytes, word by word in pymalloc's pools (:func:`pool_kinds`):
only the allocator's writes (a pool's header, blocks free in the
template that the child allocated), those and reference counts, blocks
of the template's the child freed, reference counts only, nothing
(written and put back), outside the pools; and how many pools and
blocks the child allocated in or freed into.

``--mp`` traces multiprocessing's ``"ember"`` start method instead of
``ember.Process``.  This file's top level only imports and defines, so the
template runs it once as the children's main module.
"""
import argparse
import bisect
import collections
import ctypes
import gc
import mmap
import os
import signal
import statistics
import struct
import sys
import time
import types

PAGE = mmap.PAGESIZE
_PRESENT, _FILE, _PFN = 1 << 63, 1 << 61, (1 << 55) - 1
_SEIZE, _INTERRUPT, _CONT, _DETACH = 0x4206, 0x4207, 7, 17
_O_TRACEEXIT, _EVENT_EXIT = 0x40, 6
_WALL = 0x40000000
STAGES = ("spare", "lease", "call", "exit")
#: CPython 3.11's type attribute cache: 4096 entries of (version, name, value).
_TC_ENTRIES, _TC_ENTRY = 4096, 24


try:
    from ember import _trace
except ImportError:                   # (the head, before it runs under ember)
    _trace = None


def stop_here():
    """The children's target: stop, for the tracer to read the pagemap
    (with ``--steps``, its trace label and the child's labels written first)."""
    if _trace is not None and _trace.on:
        _trace.t("target")
        _trace.flush()
    os.kill(os.getpid(), signal.SIGSTOP)


# --- in a child: the object map --------------------------------------------

def type_cache_addr():
    """The address of the interpreter's type attribute cache (CPython 3.11's
    layout, found from a lookup just made), or 0."""
    if sys.version_info[:2] != (3, 11):
        return 0

    class Probe:
        pass

    name, value = sys.intern("cow_pages_probe"), object()
    Probe.cow_pages_probe = value
    Probe.cow_pages_probe                  # noqa: B018  (the lookup fills an entry)
    get = ctypes.pythonapi.PyInterpreterState_Get
    get.restype = ctypes.c_void_p
    interp = get()
    data = ctypes.string_at(interp, 256 << 10)
    i = data.find(struct.pack("QQ", id(name), id(value)))
    if i < 8:
        return 0
    version = struct.unpack_from("I", data, i - 8)[0]
    return interp + i - 8 - _TC_ENTRY * ((version ^ (id(name) >> 3)) & (_TC_ENTRIES - 1))


def _describe(o):
    """What ``o`` is, its type's name first: a function's or code object's
    name, a string's text, a module's or class's name, whose dict a dict is."""
    t = type(o)
    try:
        if t is types.FunctionType:
            return f"function {o.__module__}.{o.__qualname__}"
        if t is types.CodeType:
            return f"code {o.co_filename.rsplit('/', 1)[-1]}:{o.co_qualname}"
        if t is str:
            return f"str {o[:40]!r}"
        if t is types.ModuleType:
            return f"module {o.__name__}"
        if isinstance(o, type):
            return f"{t.__name__} {o.__module__}.{o.__qualname__}"
        if t in (tuple, list, dict, set, frozenset, bytes):
            return f"{t.__name__} len {len(o)}"
        if t is types.BuiltinFunctionType:
            return f"builtin_function_or_method {o.__name__}"
    except Exception:
        pass
    return t.__name__


#: Types whose objects are named after what holds them (the first object the
#: map's walk reached them from): a code object's names and constants, a
#: function's defaults, a module's or instance's dict.
_HELD = (str, tuple, bytes, dict, frozenset, int, float, list, set, types.CellType)


def _owners():
    """{id: module name} of the modules' dicts and of what they define."""
    owner = {}
    for mname, m in list(sys.modules.items()):
        d = getattr(m, "__dict__", None)
        if d is None:
            continue
        owner[id(d)] = owner[id(m)] = mname
        for v in list(d.values()):
            try:
                if getattr(v, "__module__", None) != mname:
                    continue
                members = [v] + (list(vars(v).values()) if isinstance(v, type) else [])
                for x in members:
                    owner.setdefault(id(x), mname)
                    code = getattr(x, "__code__", None)
                    if code is not None:
                        owner.setdefault(id(code), mname)
            except Exception:          # an object whose attributes raise
                pass
    return owner


def object_map(path):
    """Write ``path``: the type cache's address, then one line per object
    reachable from the modules and ``gc.get_objects()`` (its address, the
    bytes before it, its size, its type's address, the module that made it
    and what it is); objects a module's own reach are that module's."""
    tc = type_cache_addr()
    owner = _owners()
    holder = {}
    for mname, m in list(sys.modules.items()):
        d = getattr(m, "__dict__", None)
        if isinstance(d, dict):
            holder[id(d)] = f"module {mname}"
    seen = set()
    stack = [(o, None) for o in list(gc.get_objects()) + list(sys.modules.values())]
    rows = []
    while stack:
        o, via = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        try:
            size = sys.getsizeof(o)
        except Exception:
            size = 16
        pre = 16 if type(o).__flags__ & (1 << 14) else 0      # the GC header
        mod = owner.get(id(o), "?")
        what = _describe(o)
        if id(o) in holder:
            what += f" <- {holder[id(o)]}"
        elif via is not None and isinstance(o, _HELD):
            what += f" <- {via}"
        rows.append((id(o), pre, size, id(type(o)), mod, what))
        if isinstance(o, dict):          # its keys table: a block of its own
            keys = ctypes.c_void_p.from_address(id(o) + 32).value
            if keys:
                rows.append((keys, 0, max(size - 48, 8), 0, mod, f"dict keys of {what}"))
        elif isinstance(o, list) and o:
            items = ctypes.c_void_p.from_address(id(o) + 24).value
            if items:
                rows.append((items, 0, 8 * len(o), 0, mod, f"list items of {what}"))
        refs = gc.get_referents(o)
        if type(o) is types.CodeType:   # no traverse: its names and constants are its own
            refs = [o.co_consts, o.co_names, o.co_varnames, o.co_freevars, o.co_cellvars,
                    o.co_filename, o.co_name, o.co_qualname, o.co_linetable, o.co_exceptiontable]
        # what holds a held object: the first non-held object above it
        below = what if not isinstance(o, _HELD) or via is None else via
        for r in refs:
            if id(r) not in seen:
                if mod != "?":
                    owner.setdefault(id(r), mod)
                stack.append((r, below))
    with open(path, "w") as f:
        f.write(f"{tc}\n")
        for row in rows:
            f.write("{} {} {} {} {}\t{}\n".format(*row))


class ObjectIndex:
    """The object map: the template's object at an address."""

    def __init__(self, path, template):
        rows = []
        with open(path) as f:
            self.type_cache = int(f.readline())
            for line in f:
                head, kind = line.rstrip("\n").split("\t", 1)
                a, pre, size, tid, mod = head.split(" ", 4)
                a, pre = int(a), int(pre)
                rows.append((a - pre, a, int(size), int(tid), mod, kind))
        rows.sort()
        self.rows, self.starts = rows, [r[0] for r in rows]
        self.template, self._pages = template, {}
        self._by_page = collections.defaultdict(list)
        for r in rows:
            self._by_page[r[1] - r[1] % PAGE].append(r)

    def _template_has(self, obj, tid):
        """True if the template's memory has an object of type ``tid`` at
        ``obj`` (the map's child made objects of its own too)."""
        if not tid:
            return True
        page = obj + 8 - (obj + 8) % PAGE
        if page not in self._pages:
            self._pages[page] = _read(self.template, page)
        data = self._pages[page]
        off = obj + 8 - page
        return data is not None and off + 8 <= len(data) and \
            struct.unpack_from("Q", data, off)[0] == tid

    def find(self, addr):
        """(kind, module, 'header' or 'inside') of the template's object
        that holds ``addr``, or None."""
        i = bisect.bisect_right(self.starts, addr) - 1
        while i >= 0 and addr - self.rows[i][0] < 1 << 16:
            start, obj, size, tid, mod, kind = self.rows[i]
            if start <= addr < start + size and self._template_has(obj, tid):
                return kind, mod, "header" if addr == obj else "inside"
            i -= 1
        return None

    def on_page(self, page):
        """The template's objects whose header is on ``page``."""
        return [r for r in self._by_page.get(page, ()) if self._template_has(r[1], r[3])]


# --- the tracer -----------------------------------------------------------

def _children(ppid):
    """[(pid, comm, state)] of ``ppid``'s children."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    s = f.read()
                fields = s[s.rfind(b")") + 2:].split()
                if int(fields[1]) == ppid:
                    out.append((int(d), s[s.find(b"(") + 1:s.rfind(b")")].decode(), fields[0]))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _maps(pid):
    """[(start, end, perms, path)] of ``pid``'s mappings."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            p = line.split(None, 5)
            a, b = (int(x, 16) for x in p[0].split("-"))
            out.append((a, b, p[1], p[5].strip() if len(p) > 5 else ""))
    return out


def snapshot(pid):
    """({page address: PFN} of ``pid``'s private anonymous pages (copied or
    new) in its writable private mappings, its maps)."""
    maps = _maps(pid)
    out = {}
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        for a, b, perms, path in maps:
            if "w" not in perms or "p" not in perms or path == "[vsyscall]":
                continue
            data = os.pread(fd, 8 * ((b - a) // PAGE), 8 * (a // PAGE))
            for i, e in enumerate(struct.unpack(f"{len(data) // 8}Q", data)):
                if e & _PRESENT and not e & _FILE:
                    out[a + i * PAGE] = e & _PFN
    finally:
        os.close(fd)
    return out, maps


def written(before, after):
    """Pages whose PFN changed, or that appeared, from ``before`` to ``after``."""
    return {a for a, pfn in after.items() if before.get(a) != pfn}


def _region(maps, addr):
    """Where ``addr`` is: a file's private data, the C heap, the stack,
    other anonymous memory (named after the file mapping right before it)."""
    prev = None
    for a, b, perms, path in maps:
        if a <= addr < b:
            if path == "[heap]":
                return "C heap (brk)"
            if path.startswith("["):
                return path
            if path:
                return path.rsplit("/", 1)[-1] + " data"
            if prev is not None and prev[1] == a and prev[3] and not prev[3].startswith("["):
                return "anonymous after " + prev[3].rsplit("/", 1)[-1]
            return "anonymous"
        prev = (a, b, perms, path)
    return "unmapped"


class Symbols:
    """The data symbols of the shared objects a process maps (``nm``): what
    is at an address of a library's data (libpython's ``_PyRuntime``,
    ``usedpools``, a static type...), with the offset into it."""

    def __init__(self, maps):
        import shutil
        import subprocess

        self._libs = []               # (start, end, load bias, [(addr, size, name)])
        bases = {}
        for a, b, perms, path in maps:
            if path.startswith("/") and ".so" in path:
                bases.setdefault(path, a)          # the first mapping: file offset 0
        if shutil.which("nm") is None:
            return
        syms = {}
        for a, b, perms, path in maps:
            if path not in bases or "w" not in perms:
                continue
            if path not in syms:
                out = subprocess.run(["nm", "-S", "--defined-only", path],
                                     capture_output=True, text=True).stdout
                rows = []
                for line in out.splitlines():
                    f = line.split()
                    if len(f) == 4 and f[2] in "dDbBgGsSvV":
                        rows.append((int(f[0], 16), int(f[1], 16), f[3]))
                rows.sort()
                syms[path] = rows
            self._libs.append((a, b, bases[path], syms[path]))

    def find(self, addr):
        """``name+offset`` of the data symbol at ``addr``, or None."""
        for a, b, base, rows in self._libs:
            if a <= addr < b:
                v = addr - base
                i = bisect.bisect_right(rows, (v, 1 << 62)) - 1
                if i >= 0 and rows[i][0] <= v < rows[i][0] + max(rows[i][1], 1):
                    return f"{rows[i][2]}+{v - rows[i][0]:#x}"
                return None
        return None


#: pymalloc's pools (CPython 3.11: 16 KiB; 48 bytes of header at the start of
#: each: count, free list, next, prev, arena index, size class index at
#: offset 36, next offset, max).
POOL, _POOL_HEADER, _POOL_SZIDX = 16 << 10, 48, 36


def _not_an_object(addr, maps, index, syms):
    """What a write at ``addr`` that is no object of the template's wrote:
    the type cache, a library's data symbol, a pymalloc pool's header (an
    allocation or a free there: the pool's count and free list) or a free
    block of it (an object allocated there), or the region."""
    tc = index.type_cache
    if tc and tc <= addr < tc + _TC_ENTRIES * _TC_ENTRY:
        return "type attribute cache"
    sym = syms.find(addr) if syms is not None else None
    if sym is not None:
        return sym
    region = _region(maps, addr)
    if region.startswith("anonymous"):
        head = _read(index.template, addr - addr % POOL, _POOL_HEADER)
        if head is not None and len(head) == _POOL_HEADER:
            szidx = struct.unpack_from("I", head, _POOL_SZIDX)[0]
            if szidx < 32:        # (a guess: the page may be no pool at all)
                what = "header" if addr % POOL < _POOL_HEADER else "free block"
                return f"pool {what} ({16 * (szidx + 1)}-byte blocks)"
    return f"(no object) {region}"


def _ptrace(req, pid, data=0):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
    if libc.ptrace(req, pid, None, ctypes.c_void_p(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _wait_stop(pid, deadline):
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG | _WALL)
        if got:
            return status
        time.sleep(0.0005)
    raise TimeoutError(f"pid {pid} did not stop")


def _read(pid, addr, n=PAGE):
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.pread(fd, n, addr)
    except OSError:
        return None
    finally:
        os.close(fd)


POOL_KINDS = ("alloc", "alloc+object", "freed", "object", "unchanged", "empty pool", "not a pool")


def _pool_head(data):
    """(block size, blocks in use, free list head, next offset) of the pool
    header at the start of ``data``, or None where it is none."""
    if data is None or len(data) < POOL:
        return None
    count, free, _, _, _, szidx, nextoff, maxnext = struct.unpack_from("I4xQQQIIII", data)
    size = (szidx + 1) * 16
    if szidx >= 32 or maxnext != POOL - size or not _POOL_HEADER <= nextoff <= POOL:
        return None
    return size, count, free, nextoff


def _free_blocks(base, data, head):
    """The offsets of the pool's free blocks: its free list and the blocks
    never used (at and past its next offset)."""
    size, _, free, nextoff = head
    out = set(range(nextoff, POOL - size + 1, size))
    while free and base <= free < base + POOL and len(out) < POOL // 16:
        if free - base in out:
            break
        out.add(free - base)
        free = struct.unpack_from("Q", data, free - base)[0]
    return out


def pool_kinds(child, template, pages):
    """Counter of ``pages`` (written by ``child``) by what ``child`` changed
    on them against ``template``'s bytes, word by word: ``alloc``, only the
    allocator's writes (the pool's header, blocks free in the template that
    the child allocated, or allocated and freed again); ``alloc+object``,
    those and writes to blocks in use in both (reference counts); ``freed``,
    blocks of the template's that the child freed (the reference count's
    write took the page anyway) and no allocation; ``object``, only
    writes to blocks in use in both; ``unchanged``, written and put back;
    ``empty pool``, a pool of the template's with no block in use (its
    free pools: the child opened it again); ``not a pool``: outside
    pymalloc's arenas.  Also the pools whose header the child changed, and
    the blocks it allocated in and freed into the template's pools."""
    out = collections.Counter()
    cache = {}
    for page in sorted(pages):
        base = page - page % POOL
        if base not in cache:
            c, t = _read(child, base, POOL), _read(template, base, POOL)
            hc, ht = _pool_head(c), _pool_head(t)
            if hc is None or ht is None or hc[0] != ht[0]:
                cache[base] = None
            else:
                fc, ft = _free_blocks(base, c, hc), _free_blocks(base, t, ht)
                cache[base] = (c, t, hc, ht, fc, ft)
                if hc[1:3] != ht[1:3]:
                    out["pools the child allocated in or freed into"] += 1
                    out["blocks allocated in the template's pools"] += len(ft - fc)
                    out["blocks freed into the template's pools"] += len(fc - ft)
        got = cache[base]
        if got is None:
            out["not a pool"] += 1
            continue
        c, t, hc, ht, fc, ft = got
        if ht[1] == 0:
            out["empty pool"] += 1
            continue
        size, seen = hc[0], set()
        for w in range(page - base, page - base + PAGE, 8):
            if c[w:w + 8] == t[w:w + 8]:
                continue
            if w < _POOL_HEADER:
                seen.add("alloc")
                continue
            block = _POOL_HEADER + (w - _POOL_HEADER) // size * size
            seen.add("alloc" if block in ft else "freed" if block in fc else "object")
        kind = ("alloc+object" if "object" in seen else "alloc") if "alloc" in seen else \
            "freed" if "freed" in seen else "object" if seen else "unchanged"
        out[kind] += 1
    return out


def _str_at(pid, addr):
    """The text of the compact ASCII str at ``addr`` in ``pid``, or None."""
    head = _read(pid, addr, 48)
    if head is None or len(head) < 48:
        return None
    n = struct.unpack_from("q", head, 16)[0]
    body = _read(pid, addr + 48, n) if 0 < n <= 100 else None
    return body.decode("ascii", "replace") if body else None


def _changed(caches, a, b):
    """Indices of the type cache entries that differ from ``caches[a]`` to
    ``caches[b]`` (those filled meanwhile)."""
    x, y = caches.get(a), caches.get(b)
    if x is None or y is None:
        return []
    e = _TC_ENTRY
    return [i for i in range(_TC_ENTRIES) if x[i * e:(i + 1) * e] != y[i * e:(i + 1) * e]]


def _cache_names(pid, caches, a, b):
    """The names of the entries filled from ``a`` to ``b``, read from ``pid``
    while it is stopped, into ``caches["names"]``."""
    names = caches.setdefault("names", {})
    for i in _changed(caches, a, b):
        name = struct.unpack_from("Q", caches[b], i * _TC_ENTRY + 8)[0]
        if name and name not in names:
            names[name] = _str_at(pid, name)


def _finish(proc, timeout=10.0):
    """Join ``proc``'s child, continuing it while it stops itself untraced
    (its target, :func:`stop_here`); killed if it has not ended in
    ``timeout`` s.  Also after an error, so that no child is left stopped
    (the runtime's teardown would wait for it)."""
    try:
        pid = proc.pid
    except Exception:                  # its start failed
        return
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        proc.join(0.01)
        if proc.exitcode is not None:
            return
    proc.kill()
    proc.join()


def _let_go(pid, deadline):
    """Detach ``pid`` if traced, whether it is in a stop or running (a seized
    tracee is detached only in a stop: PTRACE_INTERRUPT puts it in one)."""
    try:
        _ptrace(_DETACH, pid)
        return
    except OSError:                    # not in a stop, not traced or gone
        pass
    try:
        _ptrace(_INTERRUPT, pid)
    except OSError:
        return
    try:
        status = _wait_stop(pid, deadline)
    except (OSError, TimeoutError):
        return
    if os.WIFSTOPPED(status):
        sig = os.WSTOPSIG(status)      # a signal it was getting is passed on
        try:
            _ptrace(_DETACH, pid, 0 if status >> 16 or sig == signal.SIGTRAP else sig)
        except OSError:
            pass


def _leased(shepherd, deadline):
    """The pids of the leased spares waiting for their call (a program's
    template's and the warm template's), or []."""
    while time.monotonic() < deadline:
        ls = [p for p, comm, st in _children(shepherd) if comm == "ember-leased" and st == b"S"]
        if ls:
            return ls
        time.sleep(0.005)
    return []


def one_start(make, template, spare_snaps, tc=0, timeout=10.0, pools=False):
    """One start on a leased spare, traced: ({step: pages written}, the
    child's maps, its pid, {step: time it ended}, the type cache at each
    point, {"call"/"exit": :func:`pool_kinds` of the pages it wrote since
    its clone} with ``pools``), or None (no lease took the call, or it timed out).  Every lease
    waiting is read and seized before the start, since which one takes it
    is the shepherd's choice (a program's template's for an mp start once
    it has one, else the warm template's); the child that took it (its pid,
    after the start) is followed, the others let go.  On any error the
    seized are detached and the child continued and joined."""
    shepherd = os.getppid()
    deadline = time.monotonic() + timeout
    leases = _leased(shepherd, deadline)
    if not leases:
        return None
    time.sleep(0.01)                  # at their wait
    tsnaps = {}                       # the templates': the warm one's, a program's
    for p, comm, st in _children(shepherd):
        if p == template or (comm not in ("ember-spare", "ember-leased") and p != os.getpid()):
            try:
                tsnaps[p] = snapshot(p)[0]
            except OSError:
                pass
    times = {}
    size = _TC_ENTRIES * _TC_ENTRY
    tcache = _read(template, tc, size) if tc else None
    before = {}                       # pid: (snapshot, maps, type cache) at its wait
    for pid in leases:
        try:
            before[pid] = snapshot(pid) + (_read(pid, tc, size) if tc else None,)
        except OSError:               # it took a call or ended meanwhile
            pass
    times["lease"] = time.monotonic_ns()
    for p, comm, st in _children(shepherd):          # spares leased by later starts
        if comm == "ember-spare" and p not in spare_snaps:
            try:
                snap = snapshot(p)[0]
            except OSError:
                continue
            # its template: the one it shares the most frames with
            tsnap = max(tsnaps.values(), key=lambda t: sum(t.get(a) == f for a, f in snap.items()))
            spare_snaps[p] = (snap, written(tsnap, snap), time.monotonic_ns())
    seized = set()
    proc, snaps = make(), {}
    try:
        for pid in before:
            try:
                _ptrace(_SEIZE, pid, _O_TRACEEXIT)
                seized.add(pid)
            except OSError:
                pass
        proc.start()
        leased = proc.pid
        for pid in seized - {leased}:
            _let_go(pid, deadline)
        seized &= {leased}
        if leased not in seized:
            return None
        lsnap, maps, lcache = before[leased]
        snaps["lease"] = lsnap
        # its template: the one it shares the most frames with
        tpl = max(tsnaps, key=lambda t: sum(tsnaps[t].get(a) == f for a, f in lsnap.items()))
        kinds = {}
        caches = {"template": tcache, "lease": lcache}
        while True:
            status = _wait_stop(leased, deadline)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                seized.clear()
                break
            sig = os.WSTOPSIG(status)
            if status >> 8 == (signal.SIGTRAP | (_EVENT_EXIT << 8)):
                snaps["exit"], maps = snapshot(leased)
                times["exit"] = time.monotonic_ns()
                if pools:
                    kinds["exit"] = pool_kinds(leased, tpl, written(tsnaps[tpl], snaps["exit"]))
                caches["exit"] = _read(leased, tc, size) if tc else None
                _cache_names(leased, caches, "call", "exit")
                break
            if sig == signal.SIGSTOP and "call" not in snaps:
                snaps["call"], _ = snapshot(leased)
                times["call"] = time.monotonic_ns()
                if pools:
                    kinds["call"] = pool_kinds(leased, tpl, written(tsnaps[tpl], snaps["call"]))
                caches["call"] = _read(leased, tc, size) if tc else None
                _cache_names(leased, caches, "template", "lease")
                _cache_names(leased, caches, "lease", "call")
                sig = 0
            _ptrace(_CONT, leased, sig)
    except (OSError, TimeoutError) as e:
        print(f"cow_pages: a start not traced: {e!r}", file=sys.stderr)
        return None
    finally:
        for pid in seized:
            _let_go(pid, deadline)
        _finish(proc)
    if "exit" not in snaps or "call" not in snaps:
        return None
    pre = spare_snaps.pop(leased, None)
    times["spare"] = pre[2] if pre else None
    pages = {"spare": pre[1] if pre else None, "lease": written(pre[0], lsnap) if pre else None,
             "call": written(lsnap, snaps["call"]), "exit": written(snaps["call"], snaps["exit"])}
    return pages, maps, leased, times, caches, kinds


def perf_start(path):
    """``perf record`` of every user write fault on the machine (with
    CLOCK_MONOTONIC times) into ``path``: the Popen, or None."""
    import shutil
    import subprocess

    if shutil.which("perf") is None:
        print("cow_pages: no perf here: --perf ignored", file=sys.stderr)
        return None
    p = subprocess.Popen(["perf", "record", "-q", "-a", "-k", "CLOCK_MONOTONIC", "-e",
                          "exceptions:page_fault_user", "--filter", "error_code & 2", "-o", path],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return p


def perf_faults(path, pids):
    """{pid: [(time ns, address)]} of the recorded write faults of ``pids``."""
    import subprocess

    out = collections.defaultdict(list)
    text = subprocess.run(["perf", "script", "-i", path, "--ns", "-F", "pid,time,trace"],
                          capture_output=True, text=True).stdout
    for line in text.splitlines():
        f = line.split()
        try:
            pid = int(f[0])
            if pid in pids:
                sec, ns = f[1].rstrip(":").split(".")
                out[pid].append((int(sec) * 1_000_000_000 + int(ns), int(f[2].split("=")[1], 16)))
        except (ValueError, IndexError):
            continue
    return out


# --- the report -----------------------------------------------------------

def _line(counter, n, top):
    return ", ".join(f"{k} {v / n:.1f}" for k, v in counter.most_common(top))


def report_pages(results, index, top, out=sys.stdout):
    print("# pages written a start, by step (median; by where: mean)", file=out)
    for stage in STAGES:
        got = [(r[0][stage], r[1]) for r in results if r[0][stage] is not None]
        if not got:
            continue
        where, kinds, mods = collections.Counter(), collections.Counter(), collections.Counter()
        for pages, maps in got:
            for a in pages:
                objs = index.on_page(a)
                where["Python objects" if objs else _region(maps, a)] += 1
                for o in objs:
                    kinds[o[5].split(" ", 1)[0]] += 1 / len(objs)
                    mods[o[4]] += 1 / len(objs)
        n = len(got)
        print(f"{stage:>6}: {statistics.median(len(p) for p, _ in got):.0f} pages ({n} starts): "
              f"{_line(where, n, 8)}", file=out)
        print(f"        objects by type:   {_line(kinds, n, top)}", file=out)
        print(f"        objects by module: {_line(mods, n, top)}", file=out)


def report_type_cache(results, index, top, out=sys.stdout):
    if not index.type_cache:
        return
    print("\n# the type attribute cache: entries filled a start (misses), by step", file=out)
    for a, b, label in (("template", "lease", "spare+lease"), ("lease", "call", "call"),
                        ("call", "exit", "exit")):
        n, total, pairs = 0, 0, collections.Counter()
        for r in results:
            caches = r[4]
            if caches.get(a) is None or caches.get(b) is None:
                continue
            n += 1
            for i in _changed(caches, a, b):
                total += 1
                _, name, value = struct.unpack_from("IxxxxQQ", caches[b], i * _TC_ENTRY)
                what = index.find(value) if value else None
                pairs[(caches["names"].get(name),
                       what[0] if what else ("NULL" if not value else "?"))] += 1
        if n:
            print(f"  {label}: {total / n:.1f} entries ({n} starts); most often:", file=out)
            print("    " + ", ".join(f"{name} -> {what}" for (name, what), _ in
                                     pairs.most_common(top * 2)), file=out)


def report_pools(results, out=sys.stdout):
    print("\n# the pages a child wrote since its clone, by what it changed on them "
          "(pymalloc's pools; medians a start)", file=out)
    for stage, label in (("call", "at its target"), ("exit", "at its exit")):
        got = [r[5][stage] for r in results if stage in r[5]]
        if not got:
            continue
        keys = list(POOL_KINDS) + sorted({k for g in got for k in g} - set(POOL_KINDS))
        print(f"  {label} ({len(got)} starts): " + ", ".join(
            f"{k} {statistics.median(g[k] for g in got):.0f}" for k in keys), file=out)


def _fault_object(addr, maps, index, syms):
    """(what, module, where) of the first write at ``addr``."""
    return index.find(addr) or (_not_an_object(addr, maps, index, syms), "-", "")


def report_faults(results, faults, index, syms, top, out=sys.stdout):
    print("\n# write faults (perf) a start, by step, by the template's object at the "
          "fault's address (the first write to the page; header: its reference count)",
          file=out)
    for stage in STAGES:
        objs, kinds, mods = collections.Counter(), collections.Counter(), collections.Counter()
        n = total = 0
        for _, maps, pid, times, *_ in results:
            end = times.get(stage)
            begin = {"spare": 0, "lease": times.get("spare"), "call": times["lease"],
                     "exit": times["call"]}[stage]
            if end is None or begin is None:
                continue
            n += 1
            for t, addr in faults.get(pid, ()):
                if begin <= t < end:
                    total += 1
                    hit = _fault_object(addr, maps, index, syms)
                    objs[hit] += 1
                    kinds[hit[0].split(" ", 1)[0]] += 1
                    mods[hit[1]] += 1
        if not n:
            continue
        print(f"{stage:>6}: {total / n:.0f} write faults ({n} starts)", file=out)
        print(f"        by type:   {_line(kinds, n, top)}", file=out)
        print(f"        by module: {_line(mods, n, top)}", file=out)
        for (kind, mod, where), v in objs.most_common(top * 2):
            print(f"    {v / n:5.1f}  {kind} [{mod}] {where}", file=out)


def read_steps(trace_dir):
    """{pid: [(time ns, label)]} of the trace written under ``trace_dir``."""
    steps = collections.defaultdict(list)
    try:
        with open(os.path.join(trace_dir, "trace")) as f:
            for line in f:
                p = line.split(" ", 2)
                if len(p) == 3 and "=" not in p[2]:
                    steps[int(p[1])].append((int(p[0]), p[2].strip()))
    except OSError:
        pass
    for v in steps.values():
        v.sort()
    return steps


def report_steps(results, faults, index, syms, steps, top, out=sys.stdout):
    """The call step's write faults by the trace labels the child passed
    (each step named after the label that ends it), and in each step by the
    template's object first written."""
    order, per = [], collections.defaultdict(collections.Counter)
    totals, n = collections.Counter(), 0
    for _, maps, pid, times, *_ in results:
        labels = [(t, lab) for t, lab in steps.get(pid, ())
                  if times["lease"] <= t <= times["call"]]
        if not labels:
            continue
        n += 1
        bounds = [times["lease"]] + [t for t, _ in labels]
        names = [lab for _, lab in labels]
        for lab in names:
            if lab not in order:
                order.append(lab)
        for t, addr in faults.get(pid, ()):
            if not bounds[0] <= t < bounds[-1]:
                continue
            i = bisect.bisect_right(bounds, t) - 1
            hit = _fault_object(addr, maps, index, syms)
            per[names[i]][hit] += 1
            totals[names[i]] += 1
    if not n:
        print("\n# steps: no child's trace labels found", file=out)
        return
    print(f"\n# the call step's write faults by the child's step ({n} starts; a step "
          "is named after the label that ends it; each label's own recording costs "
          "0-2): faults a start, then each first-written object, a start", file=out)
    for lab in order:
        print(f"  -> {lab}: {totals[lab] / n:.1f}", file=out)
        for (kind, mod, where), v in per[lab].most_common(top):
            print(f"    {v / n:5.1f}  {kind} [{mod}] {where}", file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="starts traced (default 20)")
    ap.add_argument("--mp", action="store_true", help='multiprocessing\'s "ember" start method')
    ap.add_argument("--perf", action="store_true",
                    help="also the object at each write fault's address (perf)")
    ap.add_argument("--steps", action="store_true",
                    help="with --perf: the call step's faults by the child's trace labels "
                         "(the runtime run with EMBER_TRACE_START)")
    ap.add_argument("--pools", action="store_true",
                    help="also the pages written by what changed on them (pymalloc's pools)")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    if a.steps:
        a.perf = True
    if "EMBER_P_UID" not in os.environ:
        import shutil
        import subprocess
        import tempfile

        import _rundir
        _rundir.use_private()
        env, trace_dir = dict(os.environ), None
        if a.steps:
            trace_dir = env["EMBER_TRACE_START"] = tempfile.mkdtemp(prefix="cow_pages-")
            env["COW_PAGES_TRACE"] = trace_dir
        try:
            return subprocess.run([sys.executable, "-m", "ember", "run",
                                   os.path.abspath(__file__)] + sys.argv[1:], env=env).returncode
        finally:
            if trace_dir is not None:
                shutil.rmtree(trace_dir, ignore_errors=True)
    import multiprocessing as mp

    import ember

    ctx = mp.get_context("ember") if a.mp else None

    def make():
        return ctx.Process(target=stop_here) if a.mp else ember.Process(target=stop_here)

    for _ in range(6):                       # warm: the template, its modules, the lease
        p = make()
        p.start()
        _finish(p)
    shepherd = os.getppid()
    # the template: the shepherd's oldest child but this process (a spare
    # just cloned still has the template's name)
    template = min((p for p, _, _ in _children(shepherd) if p != os.getpid()),
                   key=lambda p: int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[19]))
    path = f"/tmp/cow_pages-{os.getpid()}.map"
    perf_path = f"/tmp/cow_pages-{os.getpid()}.perf"
    results, spare_snaps, perf = [], {}, None
    try:
        p = ember.Process(target=object_map, args=(path,))
        p.start()
        p.join()
        if p.exitcode != 0:
            print(f"cow_pages: the object map's child failed: {p.exception!r}", file=sys.stderr)
            return 1
        index = ObjectIndex(path, template)
        perf = perf_start(perf_path) if a.perf else None
        try:
            for _ in range(a.n):
                r = one_start(make, template, spare_snaps, index.type_cache, pools=a.pools)
                if r is not None:
                    results.append(r)
        finally:
            if perf is not None:
                perf.send_signal(signal.SIGINT)
                perf.wait()
        faults = perf_faults(perf_path, {r[2] for r in results}) if perf is not None else None
    finally:
        for f in (path, perf_path):
            if os.path.exists(f):
                os.unlink(f)
    what = 'mp "ember"' if a.mp else "ember.Process"
    print(f"# cow_pages: {what}, {len(results)} of {a.n} starts traced, template pid {template}, "
          f"load {' '.join('%.1f' % x for x in os.getloadavg())}")
    report_pages(results, index, a.top)
    report_type_cache(results, index, a.top)
    if a.pools:
        report_pools(results)
    if faults is not None:
        syms = Symbols(results[0][1]) if results else None
        report_faults(results, faults, index, syms, a.top)
        if a.steps:
            steps = read_steps(os.environ.get("COW_PAGES_TRACE", ""))
            report_steps(results, faults, index, syms, steps, a.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
