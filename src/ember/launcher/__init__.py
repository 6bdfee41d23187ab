"""The ``ember`` command line (``ember run``, ``ember cleanup``)."""

__all__ = ["main"]


def __getattr__(name):
    # imported on first use: the watchdog every node runs
    # (ember.launcher._watch) lives in this package and must start cheaply
    if name == "main":
        from .cli import main
        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
