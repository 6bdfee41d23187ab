"""The one codec of ember's Python layer: how a Python object becomes one
channel message and back.  Queue, Pipe/Connection, shared objects (proxy
requests and replies) and Processes (call and result records,
:mod:`._pickling`) all use it.

**Pickling.**  Pickle protocol 5 with the C pickler; when it refuses the
object (lambdas, closures, local classes, ...) or its output names the
``__main__`` module (a class or function of ``__main__`` pickled by
reference could not be found in another process, whose ``__main__`` is not
ours -- a template child, a host process), the object is pickled again with
``cloudpickle``, which ships such code by value (keeping the real
``co_filename``, so remote tracebacks show the source lines).  A pickle
that merely contains the text ``__main__`` also takes that (equally
correct, slower) way.  The receiver always uses ``pickle.loads``.

**Messages.**  A pickle with no large buffer travels as it is (``bytes``,
starting with the protocol-5 header ``\\x80\\x05``): inline in the channel
slot when it fits, else the channel moves it through a pool allocation.
A pickle that holds large ``bytes`` objects (a Process's call or result,
an object put on a Queue or sent on a Pipe) is made by a
pickler that writes into a list of pieces (:func:`pickle_pieces`): its
own output in frames of ~64 KiB and, apart, each ``bytes`` object of 64
KiB or more *by reference*, which is not copied; the pieces are copied
once into one pool block, moved through the channel without another copy
(a plain pickle in a block: the receiver copies each such ``bytes`` out
of it as it unpickles, and frees the block).  So a 100 MB ``bytes``
costs two copies, one on each side (the fewest: a ``bytes`` object owns
its memory), where a pickle made whole and then sent cost three.  The
``__main__`` check reads only the pickler's frames (a piece longer than
:data:`_DATA_MIN` is one object's data, never a global's name).
When the object has contiguous buffers (``PickleBuffer``: numpy arrays,
``bytearray``, ...) of at least :data:`OOB_MIN` bytes in all, they are taken
**out of band** in the same pickling pass (the object is pickled once): one
pool allocation holds a *frame* -- header, the pickle, then each buffer,
64-byte aligned -- written with one copy of each buffer and moved through
the channel without another.  The receiver gets a memoryview over that
block (``Channel.recv_auto``) and unpickles with the buffers as views of
it: a numpy array is rebuilt over the pool memory with no copy (the block is
freed when the last such view is released); ``bytearray`` copies, as its own
``__reduce_ex__`` asks.  When an object's buffers are small in all, it is
pickled once more with them in band (small, so cheap), since a pool
allocation costs more than the copy.

**Deaths.**  A block made here is its sender's until it is sent
(``Pool.reclaim``: GS frees it if the sender dies first); a received one
is its receiver's from the channel's hand-over (``Channel.recv_auto``)
while :func:`loads` unpickles it (:func:`_hold`), then freed, or for a
frame whose views the object keeps, nobody's again.

Frame layout (little endian): ``b"EMQF"``, u32 number of buffers n, u64
pickle length, n x u64 buffer lengths; padded to 64; the pickle; each buffer
at the next multiple of 64.  :func:`loads` checks every length against the
block: a malformed frame or a message that is not a pickle raises
:class:`~ember.exceptions.MessageError` (an ``UnpicklingError``), never
reads outside the block.
"""
import copyreg as _copyreg
import io
import os as _os
import pickle
import struct
import sys as _sys
import types as _types

from ..exceptions import MessageError
from ..pools_c import Allocation

__all__ = ["dumps", "loads", "parts", "load_parts", "prepickled", "Prepickled", "not_ours",
           "FLAT", "pickle_bytes", "pickle_inband", "free_unsent", "OOB_MIN", "MAGIC",
           "MessageError"]

#: Buffers smaller than this in all travel in band (a pool allocation costs more).
OOB_MIN = 64 * 1024
MAGIC = b"EMQF"
_HEAD = struct.Struct("<4sIQ")
_MAX_BUFS = 1 << 20

_pdumps = pickle.dumps
_ploads = pickle.loads
_getpid = _os.getpid
_Pickler = pickle.Pickler
#: A piece of a pickle (:func:`pickle_pieces`) longer than this is the
#: data of one ``bytes`` (or ``str``) object, which the pickler writes apart
#: when it has 64 KiB or more; its own output comes in frames, each
#: committed once it passes 64 KiB, so shorter than twice that.
_DATA_MIN = 256 * 1024

#: copyreg extension codes of the call targets of ember's own that a start
#: pickles by reference (the ``"ember"`` method's child code): registered
#: here, in every process that pickles or unpickles a call, the pickle
#: names the target by its code (``EXT4``), and the unpickler takes it from
#: copyreg's extension cache, which the template fills when it imports the
#: target's module (:func:`cache_extension`): no ``find_class``, whose
#: ``PyImport_Import`` (``__import__``, the module's and its package's
#: specs looked at) wrote ~9 of the template's pages in every child.  A
#: process without the cache entry finds the target as before (the
#: unpickler's ``find_class``, once).  Codes far from the ranges PEP 307
#: gives out; one that a program registered first (or a name it gave a
#: code) leaves that target pickled by name.
EXTENSIONS = {("ember.mp._child", "main"): 0x456D6201}
for _key, _code in EXTENSIONS.items():
    try:
        _copyreg.add_extension(*_key, _code)
    except ValueError:
        pass


def cache_extension(fn):
    """Put ``fn``, one of :data:`EXTENSIONS`' targets, in copyreg's
    extension cache (what the unpickler puts there at its first ``EXT``
    of that code), so that this process's children, forked after, find it
    there without importing anything."""
    key = (fn.__module__, fn.__qualname__)
    code = _copyreg._extension_registry.get(key)
    if code is not None and _copyreg._inverted_registry.get(code) == key:
        _copyreg._extension_cache[code] = fn


def _align(n):
    return (n + 63) & ~63


# ------------------------------------------------------------------ cloudpickle
_pickler_cls = None


def _cloud_pickler():
    """cloudpickle's Pickler, except that code objects keep their real
    ``co_filename`` (cloudpickle writes ``<dynamic-code>``), so tracebacks
    from the other process show the source lines of ``__main__`` code."""
    global _pickler_cls
    if _pickler_cls is None:
        import collections
        import types

        import cloudpickle

        base = cloudpickle.Pickler
        code_reduce = getattr(cloudpickle.cloudpickle, "_code_reduce", None)
        if code_reduce is None or not hasattr(base, "dispatch_table"):
            _pickler_cls = base
        else:
            def reduce_code(obj):
                fn, args = code_reduce(obj)
                return fn, tuple(obj.co_filename if type(a) is str and a == "<dynamic-code>"
                                 else a for a in args)

            class _Pickler(base):
                dispatch_table = collections.ChainMap({types.CodeType: reduce_code},
                                                      base.dispatch_table)

            _pickler_cls = _Pickler
    return _pickler_cls


def _cloud_pieces(obj, buffer_callback=None):
    """``obj`` pickled by cloudpickle, as :func:`pickle_pieces`' pieces
    (its Pickler is the C pickler's subclass: large ``bytes`` by reference)."""
    out = _Pieces()
    _cloud_pickler()(out, protocol=5, buffer_callback=buffer_callback).dump(obj)
    return out


def _cloud_dumps(obj, buffer_callback=None):
    return b"".join(_cloud_pieces(obj, buffer_callback))


def pickle_bytes(obj, buffer_callback=None):
    """Pickle ``obj`` (protocol 5): the C pickler, or cloudpickle when it
    refuses the object or names ``__main__`` (see the module's doc)."""
    try:
        data = _pdumps(obj, 5, buffer_callback=buffer_callback)
    except Exception:
        return _cloud_dumps(obj, buffer_callback)
    if data.find(b"__main__") >= 0:
        return _cloud_dumps(obj, buffer_callback)
    return data


class _Pieces(list):
    """Where a pickler of :func:`pickle_pieces` writes: each write is
    kept as it is (a ``bytes`` object's data is that object)."""
    __slots__ = ()
    write = list.append


#: (pickler, its pieces, its out-of-band buffers) not in use: a pickler is
#: made once and used again (made at every call it cost ~0.6 us more than
#: ``pickle.dumps``; taken and given back by list.pop/append, atomic with
#: the GIL, so threads and a pickling inside a pickling take their own)
_picklers = []


def pickle_pieces(obj):
    """``(pieces, buffers)``: ``obj`` pickled by the C pickler (protocol
    5) as a list of ``bytes`` whose concatenation is the pickle, the data of
    each ``bytes`` object of 64 KiB or more a piece of its own, by
    reference (not copied), and its out-of-band buffers (``PickleBuffer``:
    numpy arrays, ``bytearray``, ...).  Raises what the pickler raises."""
    try:
        pk, out, bufs = _picklers.pop()
    except IndexError:
        out, bufs = _Pieces(), []
        pk = _Pickler(out, 5, buffer_callback=bufs.append)
    try:
        pk.dump(obj)
    finally:
        pk.clear_memo()          # (it held every object pickled)
    pieces = out.copy()
    out.clear()
    if bufs:
        oob = bufs.copy()
        bufs.clear()
    else:
        oob = ()
    _picklers.append((pk, out, bufs))
    return pieces, oob


def _mains(pieces, count=False):
    """How often the pickle ``pieces`` names ``__main__`` (with ``count``
    False: whether it does), read in the pickler's own pieces only: not in
    those longer than :data:`_DATA_MIN`, one object's data."""
    if len(pieces) == 1 and len(pieces[0]) <= _DATA_MIN:      # (most pickles: quick)
        p = pieces[0]
        return p.count(b"__main__") if count else p.find(b"__main__") >= 0
    if count:
        return sum(p.count(b"__main__") for p in pieces if len(p) <= _DATA_MIN)
    # (find: cheaper than `in` for bytes)
    return any(p.find(b"__main__") >= 0 for p in pieces if len(p) <= _DATA_MIN)


# ------------------------------------------------------- functions pickled ahead
class Prepickled:
    """An object pickled ahead: its pickle ``data`` travels as it is, and
    the receiver's ``pickle.loads`` rebuilds it (a call of ``pickle.loads``
    on those bytes).  ``mains``: how often ``data`` names ``__main__`` where
    :func:`dumps` looks (:func:`_mains`; with ``known_main`` it looks past
    those)."""

    __slots__ = ("data", "mains")

    def __init__(self, data):
        self.data = data
        self.mains = _mains([data], count=True)

    def __reduce__(self):
        return (_ploads, (self.data,))


_cp = None                # cloudpickle.cloudpickle, or False: no cache with this version
_fn_cache = None          # function -> (fingerprint, Prepickled)
_BYREF = object()         # fingerprint markers: pickled by reference / by value /
_BYVAL = object()         # a function met again (a cycle)
_AGAIN = object()
_ATOMS = frozenset((int, float, complex, str, bytes, bool, type(None)))
_EQ = frozenset((int, str, bytes, bool))     # compared by value (equal: the same pickle)


def _cloudpickle_internals():
    global _cp, _fn_cache
    if _cp is None:
        try:
            import weakref

            from cloudpickle import cloudpickle as cp
            for name in ("_function_getstate", "_should_pickle_by_reference",
                         "_get_cell_contents"):
                getattr(cp, name)
            _cp, _fn_cache = cp, weakref.WeakKeyDictionary()
        except (ImportError, AttributeError):
            _cp = False
    return _cp


def _flat(v, fp, seen, owned=False):
    """Append to ``fp`` what cloudpickle's pickle of ``v`` depends on, as
    objects compared by identity (by value for :data:`_EQ`); False if that
    cannot be told from them (a mutable object, a class or module pickled
    by value, an unknown type): no cache then.  ``owned``: ``v`` is a dict
    or list cloudpickle made (a function's state), flattened by content."""
    t = type(v)
    if t in _ATOMS:
        fp.append(v)
        return True
    if t is tuple:
        fp.append(v)
        fp.append(len(v))
        return all(_flat(x, fp, seen) for x in v)
    types, cp = _types, _cp
    if t is types.CellType:
        return _flat(cp._get_cell_contents(v), fp, seen)
    if owned and (t is dict or t is list):
        fp.append(t)
        fp.append(len(v))
        for x in (v.items() if t is dict else v):
            if t is dict:
                if not _flat(x[0], fp, seen):
                    return False
                x = x[1]
            if not _flat(x, fp, seen):
                return False
        return True
    if t is types.FunctionType or t is types.ModuleType or isinstance(v, type):
        byref = cp._should_pickle_by_reference(v)
        fp.append(_BYREF if byref else _BYVAL)
        fp.append(v)
        if t is types.ModuleType:
            return byref                   # a module by value: its whole dict
        if byref:
            fp.append(v.__module__)
            fp.append(v.__qualname__)
            return True
        if t is not types.FunctionType:
            return False                   # a class by value: mutable
        if id(v) in seen:
            fp.append(_AGAIN)
            return True
        return _flat_function(v, fp, seen)
    if t is types.BuiltinFunctionType and isinstance(v.__self__, types.ModuleType):
        fp.append(v)                       # by reference: its module and name
        return True
    return False


def _flat_function(fn, fp, seen):
    """:func:`_flat` of a function cloudpickle pickles by value: its code,
    the module attributes it is rebuilt with, and its state as cloudpickle
    takes it (``_function_getstate``: names, defaults, annotations,
    closure, the globals its code names, submodules, ``__dict__``)."""
    seen.add(id(fn))
    fp.append(fn.__code__)
    g = fn.__globals__
    for k in ("__package__", "__name__", "__path__", "__file__"):
        if k not in g:
            fp.append(_AGAIN)
        elif not _flat(g[k], fp, seen):
            return False
    state, slotstate = _cp._function_getstate(fn)
    if not _flat(state, fp, seen, owned=True):
        return False
    fp.append(len(slotstate))
    for k, x in slotstate.items():
        fp.append(k)
        if not _flat(x, fp, seen, owned=True):
            return False
    return True


def _same(a, b):
    if len(a) != len(b):
        return False
    eq = _EQ
    for x, y in zip(a, b):
        if x is not y and (type(x) is not type(y) or type(x) not in eq or x != y):
            return False
    return True


def _by_reference(fn):
    """True when ``fn`` is found by its module and qualified name (the C
    pickler pickles it by reference, as cloudpickle would) while cloudpickle
    is not imported (no module registered to be pickled by value): a
    start of such a target (the ``"ember"`` method's child code, a
    program's module function) does not import cloudpickle in the parent
    (2.7 MB, 21 mappings: a program's own forks copy them).  False when that
    cannot be told so simply: cloudpickle decides."""
    name = fn.__module__
    if name is None or name == "__main__" or "cloudpickle" in _sys.modules:
        return False
    obj = _sys.modules.get(name)
    if getattr(obj, "__spec__", None) is None:     # none, or a dynamic module
        return False
    for part in fn.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is fn


def prepickled(fn):
    """``fn`` pickled by value with cloudpickle, as a :class:`Prepickled`,
    made again only when what that pickle depends on has changed (the same
    function object, the same code, defaults, closure contents, the same
    objects bound to the globals it names, ...; see :func:`_flat`).  None
    when ``fn`` is no function pickled by value (the C pickler's way is
    fast), or when its pickle could change without that showing (it
    refers to a mutable object, a class defined in ``__main__``, ...)."""
    if type(fn) is not _types.FunctionType or _by_reference(fn) \
            or not _cloudpickle_internals():
        return None
    try:
        if _cp._should_pickle_by_reference(fn):
            return None
        fp = []
        if not _flat_function(fn, fp, set()):
            return None
        hit = _fn_cache.get(fn)
        if hit is not None and _same(hit[0], fp):
            return hit[1]
        pre = Prepickled(_cloud_dumps(fn))
        if not any(x is fn for x in fp):
            # (a function that reaches itself, e.g. a recursive closure,
            # would hold its own weak key alive: not kept)
            _fn_cache[fn] = (fp, pre)
        return pre
    except Exception:
        return None


def pickle_inband(obj):
    """``obj`` as one self-contained pickle (every buffer in band), always
    by cloudpickle (functions and classes by value where they need it)."""
    return _cloud_dumps(obj)


# ------------------------------------------------------------------ messages
#: Types whose pickle can hold no out-of-band buffer and no reference to a
#: global (so none to ``__main__``): :func:`dumps` pickles them with no
#: buffer callback and no ``__main__`` check, the small-object fast path of
#: Queue and Pipe.  (``bytes`` is pickled in band by protocol 5; only
#: ``PickleBuffer`` goes out of band.)
FLAT = frozenset((int, float, str, bytes, bool, type(None), complex))


def dumps(obj, pool, timeout=None, known_main=None, data_mains=None):
    """``bytes`` (a plain pickle) or an :class:`Allocation` of ``pool``
    holding a frame or a large plain pickle (the caller sends it, or frees
    it with :func:`free_unsent` if the send fails).  ``timeout``: how long
    to wait for pool space for a block (None: forever).

    ``known_main``: ``obj`` holds :class:`Prepickled` objects naming
    ``__main__`` that many times in all; it is pickled with the C pickler
    only, and None is returned when that refuses it or its pickle names
    ``__main__`` more often (the caller then pickles what it stands for).

    ``data_mains``: a sequence whose ``bytes`` items may hold ``__main__``
    as data (the "ember" method's pickles of its process object): a
    pickle that names it no more often than they do is the C pickler's,
    not cloudpickle's.  They are counted only when the pickle names it at
    all (a scan of every bytes argument at every start cost a 100 MB one
    0.15 s), and only those that :func:`_mains` reads (64 KiB or more: a
    piece of their own, not read when longer than :data:`_DATA_MIN`)."""
    if known_main is not None:
        return _dumps_prepickled(obj, pool, timeout, known_main)
    t = type(obj)
    if t in FLAT and (t is not bytes or len(obj) < OOB_MIN):
        return _pdumps(obj, 5)
    if t is tuple and len(obj) <= 8:
        for x in obj:
            if type(x) not in FLAT or type(x) is bytes and len(x) >= OOB_MIN:
                break
        else:
            return _pdumps(obj, 5)
    inband = pickle_bytes
    try:
        pieces, bufs = pickle_pieces(obj)
    except Exception:
        bufs = []
        pieces = _cloud_pieces(obj, bufs.append)
    else:
        # (one piece: under 128 KiB, the pickler's own; most messages)
        if pieces[0].find(b"__main__") >= 0 if len(pieces) == 1 else _mains(pieces):
            if data_mains is not None and _mains(pieces, count=True) <= _mains(
                    [a for a in data_mains if type(a) is bytes], count=True):
                inband = _pickle5             # its __main__ is data
            else:
                bufs = []
                pieces = _cloud_pieces(obj, bufs.append)
        elif not bufs and len(pieces) == 1:
            return pieces[0]
    return _message(obj, pieces, bufs, pool, timeout, inband)


def _dumps_prepickled(obj, pool, timeout, known_main):
    try:
        pieces, bufs = pickle_pieces(obj)
    except Exception:
        return None
    if _mains(pieces, count=True) > known_main:
        return None
    return _message(obj, pieces, bufs, pool, timeout, _pickle5)


def _pickle5(obj):
    return _pdumps(obj, 5)


def _message(obj, pieces, bufs, pool, timeout, inband):
    """The message of ``obj``, pickled as ``pieces`` with out-of-band
    ``bufs``: the pickle as ``bytes``, or in a pool block when it is
    large (one copy, :func:`_block`), or a frame with the buffers when they
    are large enough, else ``inband(obj)`` (every buffer in band)."""
    if not bufs:
        if len(pieces) == 1:
            return pieces[0]
        if pool is None or sum(map(len, pieces)) < OOB_MIN:     # (no pool: as bytes)
            return b"".join(pieces)
        return _block(pieces, (), pool, timeout)
    try:
        raws = [b.raw() for b in bufs]
    except BufferError:           # a buffer that is not contiguous: all in band
        raws = None
    if raws is None or sum(r.nbytes for r in raws) < OOB_MIN and len(pieces) == 1:
        return inband(obj)        # (a large pickle takes a block anyway: not then)
    return _block(pieces, raws, pool, timeout)


def _block(pieces, bufs, pool, timeout):
    """A block of ``pool`` holding the pickle ``pieces``: alone (a plain
    pickle) when there are no ``bufs``, else in a frame with them (see
    the module's doc); each piece and buffer copied once."""
    n = len(bufs)
    plen = sum(map(len, pieces))
    hsize = _align(_HEAD.size + 8 * n) if n else 0
    off = hsize + (_align(plen) if n else plen)
    offsets = []
    for b in bufs:
        offsets.append(off)
        off += _align(b.nbytes)
    a = pool.alloc(off, timeout=timeout)
    try:
        mv = memoryview(a)
        try:
            if n:
                _HEAD.pack_into(mv, 0, MAGIC, n, plen)
                struct.pack_into(f"<{n}Q", mv, _HEAD.size, *(b.nbytes for b in bufs))
            o = hsize
            for p in pieces:
                mv[o:o + len(p)] = p
                o += len(p)
            for o, b in zip(offsets, bufs):
                mv[o:o + b.nbytes] = b
        finally:
            mv.release()
    except BaseException:
        a.free()
        raise
    return a


def _bad(n, why):
    return MessageError(f"malformed message ({n} bytes): {why}")


def _unpickle(data, n, buffers=None):
    try:
        return _ploads(data, buffers=buffers)
    except (pickle.UnpicklingError, EOFError) as exc:
        if isinstance(exc, MessageError):
            raise
        raise _bad(n, f"a broken pickle ({type(exc).__name__}: {exc})") from None


def not_ours(data, exc):
    """What :func:`loads` raises for ``bytes`` that ``pickle.loads``
    refused with ``exc`` (for callers that unpickle ``bytes`` themselves on
    a fast path): ``exc`` itself if it is a MessageError already."""
    if isinstance(exc, MessageError):
        return exc
    return _bad(len(data), f"not an ember message ({type(exc).__name__}: {exc})")


def _hold(data):
    """Make the received block under the view ``data`` this process's
    (:class:`Pool.reclaim <ember.pools_c.Pool>` frees it if the process
    dies while it unpickles: a 100 MB argument takes ~30 ms), or find it so
    (as the channel hands it over: ``Channel.recv_auto``, a call's
    ``_channels._recv_record``); the pid, or None when it is no block of a
    channel's (a view of another kind)."""
    blk = data.obj
    hand = getattr(blk, "_hand", None)
    if hand is None:
        return None
    pid = _getpid()
    if blk._mine == pid:
        return pid
    return pid if hand(0, pid) or hand(pid, pid) else None


def loads(data):
    """The object from a received message (``bytes``, or a memoryview over
    a pool block, which is released here unless the object keeps views of
    it).  :class:`MessageError` when the message is not one :func:`dumps`
    made.  While it unpickles, the block is this process's (:func:`_hold`);
    a frame's block, whose views the object may keep (numpy arrays over
    it), is nobody's again afterwards, as a received block is (a process
    forked from this one may use them after its death)."""
    if type(data) is bytes:
        try:
            return _ploads(data)
        except (pickle.UnpicklingError, EOFError) as exc:
            raise not_ours(data, exc) from None
    total = len(data)
    held = _hold(data)
    if data[:4] != MAGIC:
        try:
            if data[:2] != b"\x80\x05":
                raise _bad(total, "not a pickle (protocol 5) nor an ember frame")
            return _unpickle(data, total)
        finally:
            data.release()
    bufs = []
    try:
        if total < _HEAD.size:
            raise _bad(total, "a frame shorter than its header")
        _, n, plen = _HEAD.unpack_from(data, 0)
        hsize = _align(_HEAD.size + 8 * n)
        if n == 0 or n > _MAX_BUFS or hsize > total:
            raise _bad(total, f"a frame that says it holds {n} buffers")
        lens = struct.unpack_from(f"<{n}Q", data, _HEAD.size)
        off = hsize + _align(plen)
        if plen < 2 or off > total:
            raise _bad(total, f"a frame whose pickle ({plen} bytes) overruns it")
        for ln in lens:
            if off + ln > total:
                raise _bad(total, f"a frame whose buffer of {ln} bytes at offset {off} "
                                  f"overruns it")
            bufs.append(data[off:off + ln])
            off += _align(ln)
    except MessageError:
        for b in bufs:
            b.release()
        data.release()
        raise
    try:
        return _unpickle(data[hsize:hsize + plen], total, bufs)
    finally:
        if held is not None:
            data.obj._hand(held, 0)


def parts(pieces):
    """A pickle made apart, in ``pieces`` (e.g. multiprocessing's
    ``ForkingPickler`` writing into a :class:`_Pieces`), as an object to
    send: one piece as it is (``bytes``), else a tuple of them with each
    of 64 KiB or more a ``PickleBuffer`` (out of band: copied once, into
    the message's frame, where a joined pickle would be copied twice).
    :func:`load_parts` unpickles it where it arrives."""
    if len(pieces) == 1:
        return pieces[0]
    return tuple(pickle.PickleBuffer(p) if len(p) >= OOB_MIN else p for p in pieces)


class _Chain(io.RawIOBase):
    """The concatenation of :func:`parts`' pieces as received (``bytes``
    and memoryviews over a frame's block) as a file for ``pickle.load``,
    which reads a large ``bytes`` object straight into it (one copy)."""

    def __init__(self, pieces):
        self._pieces, self._i, self._off = pieces, 0, 0

    def readable(self):
        return True

    def readinto(self, b):
        pieces = self._pieces
        while self._i < len(pieces):
            p, off = pieces[self._i], self._off
            n = min(len(b), len(p) - off)
            if n > 0:
                b[:n] = p[off:off + n]
                self._off = off + n
                return n
            self._i, self._off = self._i + 1, 0
        return 0


def hold_parts(got):
    """Make the block of what :func:`parts` made, as received, this
    process's until :func:`load_parts` unpickles it (:func:`_hold`): for a
    receiver that has steps to take before (the "ember" method's child
    runs the main module first)."""
    if type(got) is tuple:
        for p in got:
            if type(p) is memoryview:
                _hold(p)
                return


def load_parts(got, load=pickle.load):
    """The object of what :func:`parts` made, as received (``bytes``, or
    a tuple of ``bytes`` and memoryviews over the frame's pool block): the
    block is this process's while it unpickles (:func:`_hold`, or
    :func:`hold_parts` before), and freed after (the views released)."""
    if type(got) is not tuple:
        return _ploads(got)
    views = [p for p in got if type(p) is memoryview]
    held = _hold(views[0]) if views else None
    try:
        return load(io.BufferedReader(_Chain(got), 1 << 16))
    finally:
        if held is not None:
            views[0].obj._hand(held, 0)     # (freed below unless kept elsewhere)
        for v in views:
            v.release()


def free_unsent(msg):
    """Give back the pool block of a frame that was not sent."""
    if isinstance(msg, Allocation) and not msg.closed:
        try:
            msg.free()
        except Exception:
            pass
