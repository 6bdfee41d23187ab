"""The program's main module, run once in the warm template instead of in
every ``"ember"``-method child (see docs/multiprocessing.md, "The main
module runs once in the template").

spawn's child runs the parent's main file again, as ``__mp_main__``, before
it unpickles the process object: 0.6-0.9 ms of every start here, most of it
importing the program's own modules again.  forkserver instead imports
``__main__`` once in its server and forks every child from there (its
default ``set_forkserver_preload(["__main__"])``).  This does the same in
the template, but only for a main module whose top level does nothing but
define: by a conservative static check (:func:`why_not`) of its source and
of every program module it imports (:class:`_Gate`), run before any of it
executes.  Such a top level gives every child the same state whether it ran
there or in the template, so a child sees exactly what spawn's would; one
that may do anything else (print, write a file, read the environment, call
a function of the program, start a thread...) is never run in the
template, and each child runs it again as spawn's does.

- Parent (:func:`offer`): the start's preload list gets one entry naming
  the main file (its mtime and size), ``sys.path``, ``sys.argv``, the
  working directory and the mtime and size of each program module, so
  that spares forked before it are not used.
- Template (:func:`preload`, from ``shepherd.template._preload``): checks,
  runs the file as spawn's ``_fixup_main_from_path`` would (with that
  ``sys.path``/``argv``/cwd, restored after), and keeps the module and the
  program modules it imported out of its own ``sys.modules`` (plain
  ``ember.Process`` children do not see them): :data:`_mains`.
- Child (:func:`install`, before ``spawn.prepare``): if the template ran
  this very main (same path, ``sys.path``, ``argv`` and cwd, and every file
  still has the mtime and size it had), puts the modules back into
  ``sys.modules`` and the module as ``__main__``/``__mp_main__``: spawn's
  preparation then finds the main module in place and does not run it
  again.  Otherwise nothing changes (the child runs it, as before).
"""
import ast
import base64
import binascii
import json
import os
import sys
from multiprocessing import spawn as _spawn

from .. import _find_spec_past
from .._filecache import FileCache, stat_key
from .._worker import PROGRAM_PREFIX
from ..objects.process import Process

#: Start of the preload entry (after the optional-preload ``?``).
PREFIX = "@mpmain:"
#: ``EMBER_MP_MAIN_IN_TEMPLATE=0`` in the parent's environment turns this off.
ENV = "EMBER_MP_MAIN_IN_TEMPLATE"
_ENV_KEY = os.fsencode(ENV)         # (os.environ._data's keys are bytes)
#: ``EMBER_MP_PROGRAM_TEMPLATE=0`` in the parent's environment: its children
#: come from the warm template (no template of the program's own).
_PROGRAM_ENV_KEY = b"EMBER_MP_PROGRAM_TEMPLATE"
#: Mains kept by the template (least recently run dropped first).
MAX_MAINS = 4

#: Template: :func:`run_key` of a preload entry -> (the entry without its
#: ``?``, its :class:`_Main` or the reason it was not run).
_mains = {}
#: Child: the main file whose template-run module it installed (tests).
installed = None


# ----------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------
#: The last entry made: [(main file, its stat key and the program files',
#: sys.path, argv, cwd, the program files), entry, its run_key, its
#: stats_bytes or None].
_last = [None, None, None, None]


_progs = [None, ()]        # (len(sys.modules), the program modules' files)


def _program_files():
    """The files of the program's own modules this process has imported
    (:func:`program_origin`), looked for again only when ``sys.modules``
    grew or shrank."""
    if _progs[0] != len(sys.modules):
        n = len(sys.modules)
        files = (program_origin(name, mod) for name, mod in list(sys.modules.items()))
        _progs[:] = [n, tuple(sorted({f for f in files if f is not None}))]
    return _progs[1]


def entry(prep):
    """The preload entry for spawn's preparation data ``prep`` (None when
    the main module is not a file: ``-c``, interactive, ``-m``; or when the
    entry would be larger than :data:`ENTRY_MAX`).  It names
    the version (mtime, size) of the main file and of every program module
    this process has imported: after one of them changed, the entry is a
    new one, which the template runs again (else its run was stale and
    every child ran the main module again, compiling each file).  The
    last one is kept while its inputs are equal (each file stat'ed, the
    lists compared as they are, no copy made)."""
    path = prep.get("init_main_from_path")
    if not path:
        return None
    files = _program_files()
    try:
        stats = [stat_key(path)]
        for f in files:
            stats.append(stat_key(f))
    except OSError:
        return None
    sys_path, argv, cwd = prep.get("sys_path") or [], prep.get("sys_argv") or [], prep.get("dir")
    orig, method = prep.get("orig_dir"), prep.get("start_method")
    k = _last[0]
    if k is not None and k[0] == path and k[1] == stats and k[2] == sys_path \
            and k[3] == argv and k[4] == cwd and k[5] == files and k[6] == orig \
            and k[7] == method:
        return _last[1]
    # The program modules' versions as a checksum (the template needs only
    # an entry that differs; its run records the files it read, which the
    # child checks): the entry travels with every spawn request.  Not
    # hash(): salted per interpreter, it differed between a parent and its
    # children, whose starts (nested) then each made a new entry.
    progs = tuple((f,) + st for f, st in zip(files, stats[1:]))
    # ORIGINAL_DIR and the start method too: a program's template sets
    # them for its children (:func:`become`).
    # (the files too, in this order: a program's template compares their
    # versions as the parent saw them at the start, stats_bytes, with its run's)
    data = json.dumps([path, stats[0][0], stats[0][1], list(sys_path), list(argv), cwd,
                       binascii.crc32(repr(progs).encode()), orig, method, list(files)],
                      separators=(",", ":")).encode()
    e = None if len(data) > ENTRY_MAX else \
        "?" + PREFIX + base64.urlsafe_b64encode(data).decode("ascii")
    _last[:] = [(path, stats, list(sys_path), list(argv), cwd, files, orig, method), e,
                e and run_key(e), None]
    return e


#: The largest preload entry made (its JSON, ~3/4 of the entry): the entry
#: travels in every start's request, which reaches the template as one
#: datagram (a socket's send buffer, ~208 KB by default, with the
#: environment and the other preload items).  A program with a longer
#: ``sys.argv`` or ``sys.path`` (``prog.py data/*.csv``: thousands of
#: names) has none: its children run the main module themselves, as
#: spawn's (every start failed, "Message too long").
ENTRY_MAX = 64 << 10


def stats_bytes():
    """The versions (``stat_key``) of the main file and of the program
    files of the last :func:`entry`, as the parent saw them at this start,
    pickled as ``context.shared_bytes`` pickles (made once per entry): a
    child of the program's template of that entry compares them with its
    run's (:func:`preset_hit`) instead of stating the files again."""
    if _last[3] is None:
        from .context import shared_bytes
        _last[3] = shared_bytes(_last[0][1])
    return _last[3]


def run_key(item):
    """What names the template's run of the preload entry ``item`` (with
    or without its ``?``) in :data:`_mains` and in a start's call: the
    entry's CRC-32, 8 hex digits.  The entry itself (~500 bytes: it holds
    ``sys.path`` and ``argv``) made an mp start's call larger than a
    channel block (1 KB), so every call went through a pool allocation.
    A key names one run only if that run's main file, ``sys.path``,
    ``argv`` and working directory are the child's too (:func:`install`
    compares them), so two entries with the same CRC cost a run of the
    main module, never a wrong one.  (CRC-32 from ``binascii``, which the
    method has imported: ``hashlib`` would map OpenSSL's libraries into
    the parent and the template.)"""
    if item is _last[1]:
        return _last[2]
    return "%08x" % binascii.crc32(item.lstrip("?").encode())


#: The parent runs with ``-O`` (or ``PYTHONOPTIMIZE``): the template, whose
#: ``sys.flags.optimize`` is 0, would compile the main module and the program
#: modules with ``__debug__`` True and their asserts on.
_OPTIMIZED = sys.flags.optimize != 0


def program_item(key):
    """The preload item that routes an mp start whose main module's run is
    ``key`` (:func:`run_key`) to that program's template
    (``ember._worker.PROGRAM_PREFIX``; see :func:`become`); None when
    ``EMBER_MP_PROGRAM_TEMPLATE=0`` in this process's environment (looked
    up at each start)."""
    data = getattr(os.environ, "_data", None)
    if (data.get(_PROGRAM_ENV_KEY) if type(data) is dict
            else os.environb.get(_PROGRAM_ENV_KEY)) == b"0":
        return None
    return "?" + PROGRAM_PREFIX + key


def enabled():
    """False when ``EMBER_MP_MAIN_IN_TEMPLATE=0`` or the parent runs
    optimized (every child then runs the main module again, as spawn's,
    from the code the parent compiled)."""
    if _OPTIMIZED:
        return False
    data = getattr(os.environ, "_data", None)     # (os.environ.get: four Python calls)
    if type(data) is dict:
        return data.get(_ENV_KEY) != b"0"
    return os.environ.get(ENV) != "0"


def offer(prep):
    """Make the entry of ``prep``'s main the last of the quiet preloads of
    ``ember.Process`` (replacing an older one); none when disabled.
    Returns the entry (for :func:`expected`: one stat of the file a start)."""
    e = entry(prep) if enabled() else None
    qp = Process._quiet_preload
    if qp and qp[-1] == e:
        return e
    rest = tuple(m for m in qp if not m.startswith("?" + PREFIX))
    if e is None and prep.get("init_main_from_path") and _RUN_PATH not in rest:
        rest += (_RUN_PATH,)      # every child runs the main file itself
    Process._quiet_preload = rest + ((e,) if e else ())
    return e


#: What a child that runs the main file itself imports (spawn's
#: ``_fixup_main_from_path``: ``runpy.run_path``, which imports pkgutil,
#: and pkgutil typing): the template imports it only for such children
#: (:func:`offer`, :func:`preload`), ~0.45 MB and 6 mappings that every
#: clone copies and every child's exit unmaps.
_RUN_PATH = "?pkgutil"


def _why_not_file(path):
    try:
        with open(path, "rb") as f:
            return why_not(f.read(), path)
    except OSError as exc:
        return str(exc)


_checked = FileCache(_why_not_file)     # file -> why_not's answer
_expect = [None, None]  # ((entry key, len(sys.modules)), the last answer)


def _check_file(path):
    """:func:`why_not` of the file at ``path``, once per version of it."""
    try:
        return _checked.get(path)[1]
    except OSError as exc:
        return str(exc)


def expected(prep, e=...):
    """True when the template can be expected to run ``prep``'s main (it
    passes the check, and so does every program module this process has
    imported): the child will not run it, and needs neither its code nor
    the program modules' (``context._main_code``, ``_program_codes``).  A
    child that runs it all the same (a file changed since, ...) reads and
    compiles the files itself, as spawn's.  ``e``: :func:`offer`'s answer
    for ``prep``, if the caller has it."""
    if e is ...:
        e = entry(prep) if enabled() else None
    if e is None:
        return False
    key = (_last[0], len(sys.modules))
    if _expect[0] == key:
        return _expect[1]
    from importlib.machinery import SourceFileLoader

    ok = _check_file(_last[0][0]) is None
    for name, mod in list(sys.modules.items()):
        if not ok:
            break
        origin = program_origin(name, mod)
        if origin is not None:
            ok = isinstance(mod.__spec__.loader, SourceFileLoader) and _check_file(origin) is None
    _expect[:] = [key, ok]
    return ok


# ----------------------------------------------------------------------
# the static check
# ----------------------------------------------------------------------
#: Calls allowed at module level: they return a value and do nothing else
#: (and call nothing of the program's).
_PURE_CALLS = frozenset("""
    dict list tuple set frozenset int float complex str bytes bytearray bool range len
    isinstance issubclass getattr hasattr type object property staticmethod classmethod
    repr round divmod chr ord slice zip enumerate reversed
    collections.namedtuple collections.OrderedDict collections.defaultdict collections.deque
    collections.Counter collections.ChainMap
    typing.TypeVar typing.NewType typing.NamedTuple typing.TypedDict typing.cast
    typing.ParamSpec typing.TypeAlias
    dataclasses.field dataclasses.dataclass dataclasses.make_dataclass
    functools.partial functools.wraps functools.lru_cache functools.cache
    functools.cached_property functools.total_ordering functools.singledispatch
    re.compile logging.getLogger multiprocessing.get_context
    os.path.join os.path.dirname os.path.basename os.path.splitext os.path.abspath
    os.path.realpath os.path.normpath
    pathlib.Path pathlib.PurePath
    enum.auto
""".split())
#: Decorators allowed besides those calls: they wrap or mark, nothing else.
_PURE_DECORATORS = _PURE_CALLS | frozenset("""
    abc.abstractmethod typing.overload typing.final typing.runtime_checkable
    contextlib.contextmanager contextlib.asynccontextmanager enum.unique
""".split())
#: Names whose value a child may see differ from the template's.
_UNSTABLE = frozenset(("environ", "getenv", "environb", "getpid", "getppid"))
_MAIN_TEST = "__name__ == '__main__'"


class _Refused(Exception):
    pass


class _Checker:
    def __init__(self):
        self.aliases = {}          # local name -> dotted module path (imports)
        self.bound = set()         # names bound at module level other than by imports

    def check(self, tree):
        self.body(tree.body)

    def body(self, stmts):
        for s in stmts:
            self.stmt(s)

    def stmt(self, s):
        line = getattr(s, "lineno", "?")
        if isinstance(s, ast.Expr):
            if isinstance(s.value, ast.Constant):
                return                        # a docstring
            raise _Refused(f"line {line}: an expression statement")
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            for a in s.names:
                if isinstance(s, ast.Import):
                    local = a.asname or a.name.split(".")[0]
                    self.aliases[local] = a.name if a.asname else local
                elif a.name != "*":
                    mod = ("." * s.level) + (s.module or "")
                    self.aliases[a.asname or a.name] = f"{mod}.{a.name}"
            return
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in s.decorator_list:
                self.decorator(d)
            self.arguments(s.args)
            if s.returns is not None:
                self.expr(s.returns)
            self.bound.add(s.name)
            return
        if isinstance(s, ast.ClassDef):
            for d in s.decorator_list:
                self.decorator(d)
            for b in s.bases:
                self.expr(b)
            for k in s.keywords:
                self.expr(k.value)
            self.body(s.body)
            self.bound.add(s.name)
            return
        if isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            for t in targets:
                self.target(t)
            if isinstance(s, ast.AnnAssign):
                self.expr(s.annotation)
            if s.value is not None:
                self.expr(s.value)
            return
        if isinstance(s, ast.If):
            if ast.unparse(s.test) in (_MAIN_TEST, '__name__ == "__main__"'):
                self.body(s.orelse)           # its body does not run as __mp_main__
                return
            self.expr(s.test)
            self.body(s.body)
            self.body(s.orelse)
            return
        if isinstance(s, ast.Try):
            self.body(s.body)
            for h in s.handlers:
                if h.type is not None:
                    self.expr(h.type)
                if h.name:
                    self.bound.add(h.name)
                self.body(h.body)
            self.body(s.orelse)
            self.body(s.finalbody)
            return
        if isinstance(s, ast.Pass):
            return
        raise _Refused(f"line {line}: {type(s).__name__}")

    def target(self, t):
        if isinstance(t, ast.Name):
            self.bound.add(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                self.target(e)
        elif isinstance(t, ast.Starred):
            self.target(t.value)
        else:       # an attribute or item: would change another object (a module's)
            raise _Refused(f"line {t.lineno}: assigns to {ast.unparse(t)}")

    def arguments(self, a):
        for d in a.defaults + [d for d in a.kw_defaults if d is not None]:
            self.expr(d)
        for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
            if arg.annotation is not None:
                self.expr(arg.annotation)

    def dotted(self, node):
        """The full dotted name ``node`` stands for (imports resolved), or
        None (a name the module binds itself, or not a name)."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        head = node.id
        if head in self.aliases:
            head = self.aliases[head]
        elif head in self.bound:
            return None
        return ".".join([head] + parts[::-1])

    def decorator(self, d):
        if isinstance(d, ast.Call):
            if self.dotted(d.func) not in _PURE_DECORATORS:
                raise _Refused(f"line {d.lineno}: decorator {ast.unparse(d.func)}")
            for a in d.args + [k.value for k in d.keywords]:
                self.expr(a)
            return
        name = self.dotted(d)
        if name in _PURE_DECORATORS:
            return
        # @x.setter / .getter / .deleter of a property defined just before
        if isinstance(d, ast.Attribute) and d.attr in ("setter", "getter", "deleter") \
                and isinstance(d.value, ast.Name):
            return
        raise _Refused(f"line {d.lineno}: decorator {ast.unparse(d)}")

    def expr(self, e):
        """An expression evaluated at import (a function's body is not)."""
        # The name, also as imported under another (``from os import environ
        # as ENV``) or named to getattr (``getattr(os, "environ")``).
        if isinstance(e, ast.Name) and (e.id in _UNSTABLE or e.id in self.aliases and
                                        self.aliases[e.id].rpartition(".")[2] in _UNSTABLE) or \
                isinstance(e, ast.Attribute) and e.attr in _UNSTABLE:
            raise _Refused(f"line {e.lineno}: reads {ast.unparse(e)}")
        if isinstance(e, ast.Call):
            func = self.dotted(e.func)
            if func not in _PURE_CALLS:
                raise _Refused(f"line {e.lineno}: calls {ast.unparse(e.func)}")
            if func == "getattr" and len(e.args) > 1 and isinstance(e.args[1], ast.Constant) \
                    and e.args[1].value in _UNSTABLE:
                raise _Refused(f"line {e.lineno}: reads {ast.unparse(e)}")
            if func == "multiprocessing.get_context":
                # With no method named it is the current start method's
                # context: the template's (fork), where spawn's child has set
                # the parent's before it runs the main module.
                method = e.args[0] if e.args else next(
                    (k.value for k in e.keywords if k.arg == "method"), None)
                if not (isinstance(method, ast.Constant) and isinstance(method.value, str)):
                    raise _Refused(f"line {e.lineno}: reads the start method "
                                   f"({ast.unparse(e)})")
            for a in e.args + [k.value for k in e.keywords]:
                self.expr(a)
            return
        if isinstance(e, (ast.Await, ast.Yield, ast.YieldFrom, ast.NamedExpr)):
            raise _Refused(f"line {e.lineno}: {type(e).__name__}")
        if isinstance(e, ast.Lambda):
            self.arguments(e.args)            # its body runs only when called
            return
        for child in ast.iter_child_nodes(e):
            if isinstance(child, ast.expr):
                self.expr(child)
            elif isinstance(child, ast.comprehension):
                self.expr(child.iter)
                for c in child.ifs:
                    self.expr(c)
            elif isinstance(child, ast.keyword):
                self.expr(child.value)


def why_not(source, filename="<main>"):
    """None if the module-level code of ``source`` only imports and defines
    (see the module's docstring), else why not (a short reason)."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError as exc:
        return f"does not compile: {exc}"
    try:
        _Checker().check(tree)
    except _Refused as exc:
        return str(exc)
    except RecursionError:
        return "too deeply nested"
    return None


# ----------------------------------------------------------------------
# template
# ----------------------------------------------------------------------
class _Main:
    __slots__ = ("path", "sys_path", "argv", "dir", "module", "modules", "stats", "orig_dir",
                 "start_method", "files")

    def __init__(self, path, sys_path, argv, cwd, module, modules, stats, orig_dir=None,
                 start_method=None, files=None):
        self.orig_dir = orig_dir          # the parent's ORIGINAL_DIR and start method (its
        self.start_method = start_method  # entry's: None in an older one), for become()
        self.files = files                # the entry's program files (None in an older one)
        self.path = path
        self.sys_path = sys_path
        self.argv = argv
        self.dir = cwd
        self.module = module          # what spawn's _fixup_main_from_path makes
        self.modules = modules        # name -> the program modules it imported
        self.stats = stats            # file -> (mtime_ns, size), the main's included


_dirs = {}      # "lib": the standard library's and site-packages' directories; "ember": ember's


def library_dirs():
    """The standard library's and site-packages' directories (realpaths,
    each ending with ``os.sep``)."""
    if not _dirs:
        import sysconfig
        paths = sysconfig.get_paths()
        lib = tuple(sorted({os.path.join(os.path.realpath(paths[k]), "")
                            for k in ("stdlib", "platstdlib", "purelib", "platlib")
                            if paths.get(k)}))
        own = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "")
        # Both at once: another thread that sees _dirs non-empty must find both keys.
        _dirs.update({"ember": own, "lib": lib})
    return _dirs["lib"]


def _is_program_file(origin):
    """True for a file of the program's own: an absolute path outside the
    standard library, site-packages and ember's own package."""
    if not isinstance(origin, str) or not os.path.isabs(origin):
        return False                  # built-in, frozen, namespace packages
    lib = library_dirs()
    return not os.path.realpath(origin).startswith(lib + (_dirs["ember"],))


def program_origin(name, mod_or_spec):
    """The file of the module ``name`` (a module or its spec) if it is one
    of the program's own modules, else None.  **The one rule** of which
    modules are the program's, for the template's run of the main module
    (:func:`expected`, :class:`_Gate`, :func:`_run`) and for the program
    code the parent ships compiled (``context._program_codes``): a module
    imported from a file (its spec's origin, an absolute path) outside the
    standard library, site-packages and ember's package, other than the
    main module itself (``__main__``, ``__mp_main__``).  Whatever its name:
    a program module may well be called ``ember_tools``."""
    if name in ("__main__", "__mp_main__") or mod_or_spec is None:
        return None
    spec = getattr(mod_or_spec, "__spec__", mod_or_spec)
    origin = getattr(spec, "origin", None)
    return origin if _is_program_file(origin) else None


class _Gate:
    """A meta path finder in front of the others while the main module runs
    in the template: a program module is imported only if its source passes
    :func:`why_not` (else the import fails and the main is not kept)."""

    def __init__(self):
        self.refused = None
        self.stats = {}

    def find_spec(self, name, path=None, target=None):
        from importlib.machinery import SourceFileLoader

        spec = _find_spec_past(self, name, path, target)
        if spec is None or program_origin(name, spec) is None:
            return spec
        reason = None
        if not isinstance(spec.loader, SourceFileLoader):
            reason = "not a Python source file"
        else:
            try:
                self.stats[spec.origin] = stat_key(spec.origin)
                with open(spec.origin, "rb") as f:
                    reason = why_not(f.read(), spec.origin)
            except OSError as exc:
                reason = str(exc)
        if reason is not None:
            self.refused = self.refused or f"{name}: {reason}"
            raise ImportError(f"not imported in the template: {reason}", name=name)
        return spec


def preload(item):
    """In the template: run the main module named by the preload entry
    ``item`` (``[?]@mpmain:...``) if it only defines; record the outcome in
    :data:`_mains`.  Never raises."""
    entry = item.lstrip("?")
    key = run_key(entry)
    hit = _mains.pop(key, None)
    if hit is not None and hit[0] == entry:
        _mains[key] = hit                         # most recently asked for
        return
    try:
        fields = json.loads(base64.urlsafe_b64decode(entry[len(PREFIX):].encode("ascii")))
        path, mtime, size, sys_path, argv, cwd = fields[:6]
        outcome = _run(path, (mtime, size), sys_path, argv, cwd)
        if isinstance(outcome, _Main) and len(fields) >= 9:
            outcome.orig_dir, outcome.start_method = fields[7], fields[8]
            outcome.files = fields[9] if len(fields) >= 10 else None
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    _mains[key] = (entry, outcome)                # (another entry of that key: replaced)
    if not isinstance(outcome, _Main):
        import pkgutil  # noqa: F401  (each child runs the main file: _RUN_PATH)
    while len(_mains) > MAX_MAINS:
        del _mains[next(iter(_mains))]


def _run(path, stat, sys_path, argv, cwd):
    import runpy
    import types

    if stat_key(path) != tuple(stat):
        return "changed since the parent looked"
    with open(path, "rb") as f:
        source = f.read()
    reason = why_not(source, path)
    if reason is not None:
        return reason
    code = compile(source, path, "exec", dont_inherit=True)
    gate = _Gate()
    gate.stats[path] = tuple(stat)
    saved = (sys.path[:], sys.argv[:], os.getcwd())
    before = set(sys.modules)
    sys.meta_path.insert(0, gate)
    try:
        sys.path[:] = sys_path
        sys.argv[:] = argv
        os.chdir(cwd)
        # as spawn._fixup_main_from_path: runpy.run_path(path, run_name="__mp_main__")
        content = runpy._run_module_code(code, None, "__mp_main__", pkg_name="",
                                         script_name=path)
        module = types.ModuleType("__mp_main__")
        module.__dict__.update(content)
    except BaseException as exc:
        module = None
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        sys.meta_path.remove(gate)
        sys.path[:], sys.argv[:] = saved[0], saved[1]
        os.chdir(saved[2])
        new = {name: sys.modules[name] for name in set(sys.modules) - before}
        program = {name: m for name, m in new.items() if program_origin(name, m) is not None}
        for name in program:
            del sys.modules[name]
    if gate.refused is not None:
        return gate.refused
    if module is None:
        return failure
    return _Main(path, list(sys_path), list(argv), cwd, module, program, gate.stats)


# ----------------------------------------------------------------------
# child
# ----------------------------------------------------------------------
def install(prep, key):
    """Before spawn's preparation of ``prep`` in a child forked from the
    template: put the template's run of this main in place (True), or do
    nothing (False) when there is none that fits or a file changed since.
    ``key``: the :func:`run_key` of the parent's preload entry for
    ``prep`` (:func:`offer`; None when the parent has this off), which
    names the main file, its version, ``sys.path``, ``sys.argv`` and the
    working directory: the run of that key is this very main if those are
    ``prep``'s (compared: the key is a CRC) and its files unchanged.

    In a child of a program's template (:func:`become`) the run is in place
    already, with the values of :data:`preset`: True if it is this very
    main (those values ``prep``'s too, the files unchanged), the child
    then setting only the rest of ``prep``; else the template's state is
    put back first (:func:`_leave`), so the child goes on exactly as one
    forked from the warm template."""
    global installed
    if program is not None:
        m = program[1]
        if program[0] == key and m.path == prep.get("init_main_from_path") \
                and m.argv == prep.get("sys_argv") \
                and all(prep.get(k) == v for k, v in preset.items()) and _unchanged(m):
            return True
        _leave()
    m = _mains.get(key) if key is not None else None
    m = m[1] if m is not None else None
    if not isinstance(m, _Main) or m.path != prep.get("init_main_from_path") \
            or m.sys_path != prep.get("sys_path") or m.argv != prep.get("sys_argv") \
            or m.dir != prep.get("dir") or not _unchanged(m):
        return False
    sys.modules.update(m.modules)
    _spawn.old_main_modules.append(sys.modules["__main__"])
    sys.modules["__main__"] = sys.modules["__mp_main__"] = m.module
    installed = m.path
    return True


def _unchanged(m):
    """True if every file of the run ``m`` has the version it ran."""
    try:
        for f, stat in m.stats.items():
            if stat_key(f) != stat:
                return False
    except OSError:
        return False
    return True


# ----------------------------------------------------------------------
# a program's template
# ----------------------------------------------------------------------
#: In a program's template and its children: ``(key, its _Main, what the
#: template replaced and its pid)``; None elsewhere.
program = None
#: The preparation values a program's template set (spawn's names: its
#: ``sys.path``, working directory, ``ORIGINAL_DIR``, start method), which
#: its children do not set again (``_child._apply``).
preset = {}
#: In a program's template: ``context.shared_bytes`` of the values it set
#: (and of its run's main file and ``sys.argv``), and of its run's files'
#: versions in the order of its entry's (as :func:`stats_bytes`), for
#: :func:`preset_hit`; None where there is none to compare with.
preset_shared = None
preset_stats = None
#: ...and a copy of its run's ``sys.argv``, which a child that hits takes
#: as its own (the worker set the template's before the call).
preset_argv = None
#: ``_child.main``'s mark for "the data's SHARED items are the template's".
PRESET = object()


def preset_hit(key, shared_b, stats_b):
    """In a child: True if it is a child of the program's template of the
    run ``key`` whose values of ``context.SHARED`` are exactly the
    parent's (``shared_b``, the parent's pickle of them, the same bytes as
    the template's: compared as bytes, nothing unpickled or looked into),
    and whose run read the very versions of the files that the parent saw
    at this start (``stats_b``, :func:`stats_bytes`; the files are not
    stated again: spawn's child reads them as of its start, which this
    is).  The child then sets only the rest of spawn's data (and the
    template's copy of the run's ``sys.argv``)."""
    return preset_shared is not None and shared_b == preset_shared \
        and stats_b == preset_stats and program[0] == key


def become(key):
    """In a process forked from the warm template that is to become the
    template of one program (shepherd.template's ``_program_main``): do
    once what each child of the template's run ``key`` does first, so
    that its children (cloned from here) do not: the run installed as
    :func:`install` does (its files checked), and spawn's preparation
    values that are the same for every child of that run set (the entry
    names them): ``sys.path``, the working directory, ``ORIGINAL_DIR`` and
    the start method (not ``sys.argv``: the worker sets its own in each
    child before the call, and the child sets the parent's again).  Then
    a child's start is rehearsed here (``_child.rehearse``: its code
    quickened and specialized before the template freezes).  False
    (nothing changed) if there is no such run or a file of it changed."""
    global program, preset, installed, preset_shared, preset_stats, preset_argv
    m = _mains.get(key)
    m = m[1] if m is not None else None
    if not isinstance(m, _Main) or not _unchanged(m):
        return False
    import itertools
    from multiprocessing import context as mpctx, process
    from . import _child

    # (not sys.argv: the worker sets its own in each child, before the call)
    values = {"sys_path": list(m.sys_path), "dir": m.dir}
    if m.orig_dir is not None and m.start_method in mpctx._concrete_contexts:
        values.update(orig_dir=m.orig_dir, start_method=m.start_method)
    saved = {"sys_path": sys.path, "sys_argv": sys.argv, "dir": os.getcwd(),
             "orig_dir": process.ORIGINAL_DIR,
             "context": mpctx._default_context._actual_context,
             "__main__": sys.modules["__main__"],
             "__mp_main__": sys.modules.get("__mp_main__", _spawn), "pid": os.getpid()}
    try:
        _child._apply(values, main=False)
    except BaseException:
        _restore(saved)
        return False
    sys.modules.update(m.modules)
    _spawn.old_main_modules.append(saved["__main__"])
    sys.modules["__main__"] = sys.modules["__mp_main__"] = m.module
    program, preset, installed = (key, m, saved), values, m.path
    files = [m.path] + list(m.files or ())
    if "start_method" in values and m.files is not None and set(m.stats) <= set(files):
        # (all of context.SHARED set or the run's; every file the run read
        # among the entry's)
        from .context import shared_bytes
        preset_argv = list(m.argv)
        preset_shared = shared_bytes([m.path, values["sys_path"], m.argv, m.dir,
                                      m.orig_dir, m.start_method])
        preset_stats = shared_bytes([m.stats.get(f) for f in files])
        process._process_counter = itertools.count(1)
        process._children = set()
        _child.rehearse()
    return True


def _leave():
    """In a child of a program's template whose start is not for its run:
    put back what :func:`become` replaced (the child is then as one forked
    from the warm template)."""
    global program, preset, installed, preset_shared, preset_stats, preset_argv
    _key, m, saved = program
    for name in m.modules:
        sys.modules.pop(name, None)
    if _spawn.old_main_modules and _spawn.old_main_modules[-1] is saved["__main__"]:
        _spawn.old_main_modules.pop()
    sys.modules["__main__"] = saved["__main__"]
    if saved["__mp_main__"] is _spawn:
        sys.modules.pop("__mp_main__", None)
    else:
        sys.modules["__mp_main__"] = saved["__mp_main__"]
    _restore(saved)
    program, preset, installed = None, {}, None
    preset_shared = preset_stats = preset_argv = None


def _restore(saved):
    """Put back the preparation values :func:`become` saved."""
    from multiprocessing import context as mpctx
    from . import _child

    _child._apply({k: saved[k] for k in ("sys_path", "sys_argv", "dir", "orig_dir")},
                  main=False)
    mpctx._default_context._actual_context = saved["context"]
