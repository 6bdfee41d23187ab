"""pytest support: a runtime per test, from plain Python.

Use it as a plugin (``pytest -p ember.testing``, or ``pytest_plugins =
["ember.testing"]`` in a conftest) and ask for the ``ember_runtime``
fixture::

    def test_workers(ember_runtime):
        from ember.globalservices import process
        p = process.create("/bin/true", ".", [])
        assert process.join(p.p_uid) == 0

Each test gets a fresh runtime (``ember.init()``), torn down after it, so
nothing a test made outlives it.  ``ember_runtime`` is the
:class:`ember.runtime.Runtime`.
"""
import pytest


@pytest.fixture
def ember_runtime():
    from . import runtime
    if runtime.is_initialized():
        raise RuntimeError("ember_runtime: this process is already part of an ember runtime")
    rt = runtime.init()
    try:
        yield rt
    finally:
        runtime.shutdown()
