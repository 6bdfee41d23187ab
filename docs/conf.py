"""Sphinx configuration for ember's documentation.

Build: ``pip install -e '.[docs]' && sphinx-build docs docs/_build/html``.
tests/test_docs_build.py builds it with ``-W --keep-going`` (warnings are
errors) and ``-n`` (nitpicky: every cross-reference must resolve), so a
renamed function whose documentation still names it fails the suite.
"""
import os
import re
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src")))

import ember  # noqa: E402

project = "ember"
author = "the ember authors"
copyright = "2026, the ember authors"
release = ember.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "tutorial", "howto/code"]

# Markdown (MyST): fenced ``{directive}`` blocks, ::: blocks, and anchors for
# headings so that ``[...](page.md#a-heading)`` links resolve.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# The API reference: autodoc reads the docstrings (numpydoc or Google style,
# through napoleon), members in source order, signatures as written.
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True, "undoc-members": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_preprocess_types = True

# Every reference to an ember name must resolve (nitpicky).  The build runs
# offline (CI has no network), so there is no intersphinx inventory for the
# standard library: references to builtins (``TimeoutError``, ``bytes``) and
# to standard-library modules (``multiprocessing.Queue``, ``signal.Signals``)
# are the only ones let through unresolved.
nitpicky = True
import builtins  # noqa: E402

_std = sorted(m for m in sys.stdlib_module_names if not m.startswith("_"))
nitpick_ignore_regex = [
    (r"py:.*", "|".join(re.escape(n) for n in dir(builtins) if not n.startswith("_"))),
    (r"py:.*", r"(%s)(\..*)?" % "|".join(re.escape(m) for m in _std)),
    # Types a docstring names in prose that are not Python objects.
    (r"py:.*", r"optional|callable|iterable|buffer|bytes-like|path-like|file-like|"
               r"object|default|None|True|False"),
]

html_theme = "furo"
html_title = f"ember {release}"
html_static_path = []


# Pages other work adds to docs/ (multinode.md, examples.md, performance.md,
# ...) appear under "More" in the index without anyone editing it: the
# placeholder in index.md's last toctree is replaced, when Sphinx reads
# index.md, by every top-level page that no toctree of index.md names.
_OTHER_PAGES = "%(other pages)s"


def _fill_other_pages(app, docname, source):
    if docname != root_doc or _OTHER_PAGES not in source[0]:
        return
    named = set(re.findall(r"^([\w./-]+)$", source[0], re.M))
    pages = sorted(d for d in app.env.found_docs
                   if "/" not in d and d != root_doc and d not in named)
    source[0] = source[0].replace(_OTHER_PAGES, "\n".join(pages))


# Names of ember.__all__ that no page of docs/api/ documents (one added to
# the API by other work) are documented on api/more.md, filled in when Sphinx
# reads it: the reference never silently lacks a public name.
_UNDOCUMENTED = "%(undocumented names)s"


def _fill_undocumented(app, docname, source):
    if docname != "api/more" or _UNDOCUMENTED not in source[0]:
        return
    import glob
    import inspect
    text = ""
    for page in glob.glob(os.path.join(app.srcdir, "api", "*.md")):
        with open(page) as f:
            text += f.read()
    documented = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", text, re.M))
    out = []
    for name in ember.__all__:
        if f"ember.{name}" in documented or name.startswith("__"):
            continue
        obj = getattr(ember, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            kind = "autoexception"
        elif inspect.isclass(obj):
            kind = "autoclass"
        elif callable(obj):
            kind = "autofunction"
        else:
            kind = "autodata"
        opts = "\n   :members:" if kind in ("autoclass", "autoexception") else ""
        out.append(f".. {kind}:: ember.{name}{opts}\n")
    body = ("```{eval-rst}\n" + "\n".join(out) + "```\n") if out else \
        "(None today: every public name is on its page.)\n"
    source[0] = source[0].replace(_UNDOCUMENTED, body)


def _reread_index(app, env, added, changed, removed):
    # api/more depends on every api page and on the code: read it each time.
    return ["api/more"] + ([root_doc] if added or removed else [])


# One object, several names: ``ember.Queue`` is ``ember.objects.queues.Queue``,
# ``ember.OwnerDied`` is ``ember.exceptions.OwnerDied``.  The reference pages
# document each object once, under the name users write; a reference by any
# other name of the same object resolves to it (found by importing the name and
# comparing identity).  A name that does not import (a renamed function) stays
# unresolved, and the -W build fails on it.
def _import(name):
    import importlib
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _documented(env):
    cache = getattr(env, "_ember_by_id", None)
    if cache is None:
        cache = {}
        for name, entry in env.get_domain("py").objects.items():
            if entry.aliased:
                continue
            obj = _import(name)
            if obj is not None and not isinstance(obj, (int, str, float, bytes, tuple)):
                cache.setdefault(id(getattr(obj, "__func__", obj)), (name, entry))
        env._ember_by_id = cache
    return cache


def _resolve_alias(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"]
    candidates = [target]
    if "." not in target and node.get("py:module"):
        candidates.insert(0, node["py:module"] + "." + target)
    if "." not in target and node.get("py:class"):
        candidates.insert(0, f"{node.get('py:module')}.{node['py:class']}.{target}")
    for cand in candidates:
        obj = _import(cand)
        if obj is None:
            continue
        hit = _documented(env).get(id(getattr(obj, "__func__", obj)))
        if hit is None:
            continue
        from sphinx.util.nodes import make_refnode
        name, entry = hit
        return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id,
                            contnode, name)
    return None


def _public_bases(app, name, obj, options, bases):
    # Private helper classes (``_Named``, ``_sync.SyncObject``) are not part
    # of the API: show a class's public bases only.
    def private(b):
        return b.__name__.startswith("_") or any(
            p.startswith("_") for p in b.__module__.split("."))
    bases[:] = [b for b in bases if not private(b)] or [object]


def setup(app):
    app.connect("missing-reference", _resolve_alias)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("source-read", _fill_other_pages)
    app.connect("source-read", _fill_undocumented)
    app.connect("env-get-outdated", _reread_index)
