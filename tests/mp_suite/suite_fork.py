"""CPython's multiprocessing suite under the "fork" start method: an
importable module (children unpickle the test classes by this name)."""
import ember  # noqa: F401  registers "ember"; wraps multiprocessing's factories
import test._test_multiprocessing as _tm

_tm.install_tests_in_module_dict(globals(), "fork")
