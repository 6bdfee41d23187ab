"""cffi builds of ember's C APIs (no Cython), so the tests and benchmarks can
drive the C code on its own, misuse included.

    import cffi_build
    mod = cffi_build.build_pool(tmpdir)        # pool.c           -> mod.ffi, mod.lib
    mod = cffi_build.build_channel(tmpdir)     # pool.c + channel.c

The declarations come from the real public headers (``pool.h``,
``channel.h`` and what they include), so the headers stay the single source
of truth; ``header_cdef`` turns them into something cffi's parser accepts.
The C is compiled with the project's flags (see setup.py).
"""
import importlib.util
import os
import re
import sys
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = os.path.join(ROOT, "src", "ember", "common_c")
POOLS = os.path.join(ROOT, "src", "ember", "pools_c")
CHANNELS = os.path.join(ROOT, "src", "ember", "channels_c")
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE"]

# --- headers -> cdef ------------------------------------------------------
#
# cffi parses declarations, not C: it knows no preprocessor beyond
# "#define NAME <int literal or ...>", no _Static_assert, no function bodies
# and no _Atomic.  header_cdef() therefore, per header:
#   1. drops comments (so nothing below is fooled by text inside them);
#   2. follows '#include "x.h"' (each header once, in include order) and
#      drops every other preprocessor line: <system> includes, include
#      guards, #if/#endif, function-like macros (the atomic wrappers);
#   3. keeps object-like constants ("#define EMBER_X 64u") as
#      "#define EMBER_X ...", so the compiler supplies the value (cffi cannot
#      read expressions like "(1u << 24)");
#   4. drops _Static_assert(...) declarations;
#   5. turns "static inline T f(args) { body }" into the prototype "T f(args);"
#      (the generated C calls the inline function, e.g. ember_rc_str);
#   6. drops declarations mentioning _Atomic (cffi cannot express them; a
#      build adds integer-returning wrappers where a test needs one).

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_CONTINUATION = re.compile(r"\\\n")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
_CONSTANT = re.compile(r"^\s*#\s*define\s+([A-Za-z_]\w*)\s+\S")   # not NAME( nor bare NAME
_STATIC_ASSERT = re.compile(r"_Static_assert\s*\(.*?\)\s*;", re.S)
_INLINE = re.compile(r"static\s+inline\s+([^;{}]*?\))\s*\{")


def _strip_inline_bodies(text):
    """static inline definitions -> prototypes (step 5)."""
    out, pos = [], 0
    while True:
        m = _INLINE.search(text, pos)
        if not m:
            return "".join(out) + text[pos:]
        out.append(text[pos:m.start()] + m.group(1) + ";")
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        pos = i


def _drop_atomic_decls(text):
    """Drop every declaration that mentions _Atomic (step 6).  Splits at ';',
    so it is meant for function declarations: the public structs are opaque
    or plain and carry no _Atomic fields."""
    decls = re.split(r"(?<=;)", text)
    return "".join(d for d in decls if "_Atomic" not in d)


def _one_header(path, seen):
    path = os.path.normpath(path)
    if path in seen:
        return ""
    seen.add(path)
    with open(path) as f:
        text = _CONTINUATION.sub(" ", _COMMENT.sub(" ", f.read()))
    lines = []
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            lines.append(line)
        elif (m := _INCLUDE.match(line)):
            lines.append(_one_header(os.path.join(os.path.dirname(path), m.group(1)), seen))
        elif (m := _CONSTANT.match(line)):
            lines.append(f"#define {m.group(1)} ...")
    text = "\n".join(lines)
    text = _STATIC_ASSERT.sub("", text)
    return _drop_atomic_decls(_strip_inline_bodies(text))


def header_cdef(*headers):
    """The cffi cdef for ``headers`` and the headers they include."""
    seen = set()
    return "\n".join(_one_header(h, seen) for h in headers)


# --- building -------------------------------------------------------------

def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules.setdefault(name, mod)
    return mod


def _built(tmpdir, name):
    if not os.path.isdir(tmpdir):
        return None
    so = [f for f in os.listdir(tmpdir) if f.startswith(name + ".") and f.endswith(".so")]
    return os.path.join(tmpdir, so[0]) if so else None


def build(tmpdir, name, headers, sources, extra_cdef="", extra_source="", extra_cflags=()):
    """Compile ``sources`` with the declarations of ``headers`` (+ extras)
    into module ``name`` in ``tmpdir`` and return the imported module
    (``.ffi``, ``.lib``).  A module already built there is reused."""
    from cffi import FFI

    tmpdir = str(tmpdir)
    path = _built(tmpdir, name)
    if path is None:
        ffi = FFI()
        ffi.cdef(header_cdef(*headers) + extra_cdef)
        ffi.set_source(
            name,
            "".join(f'#include "{os.path.basename(h)}"\n' for h in headers) + extra_source,
            sources=sources,
            include_dirs=[COMMON, POOLS, CHANNELS],
            extra_compile_args=CFLAGS + list(extra_cflags),
            extra_link_args=list(extra_cflags),
            libraries=["rt", "pthread"],
        )
        path = ffi.compile(tmpdir=tmpdir, verbose=False)
    return _load(name, path)


# The pool header's event-word accessors return _Atomic pointers, which cffi
# cannot declare; the pool build exposes their addresses as integers.
_POOL_CDEF = """
uintptr_t test_event_word(const ember_pool_t *pool);
uintptr_t test_event_waiters(const ember_pool_t *pool);
"""
_POOL_SOURCE = """
uintptr_t test_event_word(const ember_pool_t *pool)
{ return (uintptr_t)(void *)ember_pool_event_word(pool); }
uintptr_t test_event_waiters(const ember_pool_t *pool)
{ return (uintptr_t)(void *)ember_pool_event_waiters(pool); }
"""


def build_pool(tmpdir, extra_cdef="", extra_source="", name=None):
    """pool.c (+ small C helpers of the caller, e.g. a benchmark loop)."""
    return build(tmpdir, name or f"_ember_pool_cffi_{uuid.uuid4().hex[:8]}",
                 [os.path.join(POOLS, "pool.h")], [os.path.join(POOLS, "pool.c")],
                 extra_cdef=_POOL_CDEF + extra_cdef, extra_source=_POOL_SOURCE + extra_source)


def build_channel(tmpdir, name="_ember_ch_cffi", extra_cflags=()):
    """pool.c + slots.c + channel.c; ``extra_cflags`` (e.g. sanitizers) go to compiler
    and linker."""
    return build(tmpdir, name, [os.path.join(CHANNELS, "channel.h")],
                 [os.path.join(POOLS, "pool.c"), os.path.join(COMMON, "slots.c"),
                  os.path.join(CHANNELS, "channel.c")],
                 extra_cflags=extra_cflags)


if __name__ == "__main__":
    import tempfile
    d = tempfile.mkdtemp(prefix="ember-cffi-")
    print(header_cdef(os.path.join(CHANNELS, "channel.h")))
    print("built into", d, build_pool(d).lib.EMBER_POOL_SDESC_SIZE,
          build_channel(d).lib.EMBER_CH_SDESC_SIZE)
