"""The shepherd: the per-node process that spawns and watches the OS
processes of global services (see docs/shepherd.md).

Its names are imported at their first use: the template (``.template``)
and every process that reads the output board (``._spawn``: a program's
process at its first join) import this package, and ``.server`` (with
``ember.service`` and ``heapq``) is the shepherd's own: ~0.3 MB of
anonymous memory and a shared object more in the template, whose page
tables every clone copies and every child's exit unmaps."""

__all__ = ["LABELS", "Shepherd", "run", "spawn", "set_pdeathsig"]

_FROM = {"LABELS": "server", "Shepherd": "server", "run": "server",
         "spawn": "_spawn", "set_pdeathsig": "_spawn"}


def __getattr__(name):
    mod = _FROM.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value
