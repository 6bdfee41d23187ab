"""``multiprocessing`` on ember: the start method ``"ember"``.

``import ember`` registers it; then ``multiprocessing.set_start_method("ember")``
or ``multiprocessing.get_context("ember")`` run an unchanged multiprocessing
program with its processes started by ember (managed processes forked from
the node's warm template) and its queues, pipes and locks mapped onto
ember's objects.  See docs/multiprocessing.md.
"""
from .context import EmberContext, EmberProcess, Popen, register

__all__ = ["EmberContext", "EmberProcess", "Popen", "register"]
