"""The ``ember`` command line (``ember run``, ``ember cleanup``)."""
from .cli import main  # noqa: F401

__all__ = ["main"]
