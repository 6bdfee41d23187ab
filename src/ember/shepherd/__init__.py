"""The shepherd: the per-node process that spawns and watches the OS
processes of global services (see docs/shepherd.md)."""
from ._spawn import set_pdeathsig, spawn  # noqa: F401
from .server import LABELS, Shepherd, run  # noqa: F401

__all__ = ["LABELS", "Shepherd", "run", "spawn", "set_pdeathsig"]
