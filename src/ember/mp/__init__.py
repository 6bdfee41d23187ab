"""``multiprocessing`` on ember: the start method ``"ember"``.

``import ember`` registers it; then ``multiprocessing.set_start_method("ember")``
or ``multiprocessing.get_context("ember")`` run an unchanged multiprocessing
program with its processes started by ember (managed processes forked from
the node's warm template) and its queues, pipes and locks mapped onto
ember's objects.  See docs/multiprocessing.md.
"""
from .context import EmberContext, EmberProcess, Popen, register

__all__ = ["EmberContext", "EmberProcess", "Popen", "register"]

# `import ember` registers the method once multiprocessing is imported; when
# the first import of multiprocessing is this package's own (`import
# ember.mp.pool` before anything imported multiprocessing), that hook runs
# while this package is half-imported and cannot: register here.
register()
