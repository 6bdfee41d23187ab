"""ember.init() refuses bad arguments at once with a ValueError that says
what is accepted (they used to reach the host's command line, and init
failed with "the ember runtime failed to start (exit 70): no address
published")."""
import os
import subprocess
import sys

import pytest

import ember
from ember.exceptions import GlobalServicesError

BAD = [
    ({"label": "bogus"}, r"ember\.init\(label='bogus'\): must be one of 'none', 'puid', 'name'"),
    ({"grace": -1}, r"ember\.init\(grace=-1\): must be a number of seconds >= 0"),
    ({"grace": "5"}, r"ember\.init\(grace='5'\): must be a number of seconds >= 0"),
    ({"start_timeout": 0}, r"ember\.init\(start_timeout=0\): must be a number of seconds > 0"),
    ({"default_pool_size": "lots"}, r"ember\.init\(default_pool_size='lots'\): not a size: 'lots'"),
    ({"inf_pool_size": 0}, r"ember\.init\(inf_pool_size=0\): size must be positive"),
    ({"address": 5}, r"ember\.init\(address=\.\.\.\) must be None, \"auto\", a runtime's name or "
                     r"id, or the path of its address file \(a str\), not int 5"),
    ({"address": ""}, r"ember\.init\(address=''\): not \"auto\", a runtime's name or id, nor the "
                      r"path of an address file"),
    ({"address": "two\nlines"}, r"ember\.init\(address='two\\nlines'\): not \"auto\""),
    ({"name": ""}, r"ember\.init\(name=''\): a runtime's name must be a non-empty printable str"),
    ({"detached": "yes"}, r"ember\.init\(detached='yes'\): must be True or False"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[next(iter(k)) + "=" + repr(next(iter(k.values())))
                                                      for k, _ in BAD])
def test_bad_init_argument_is_a_clear_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ember.init(**kwargs)
    assert not ember.is_initialized()


@pytest.mark.timeout(60)
def test_bad_label_in_a_fresh_interpreter_is_not_a_start_failure():
    """End to end, as a user meets it: the error names the argument, and no
    host is started (nothing to clean up)."""
    code = ("import ember\n"
            "try:\n"
            "    ember.init(label='bogus')\n"
            "except ValueError as e:\n"
            "    print('ValueError:', e)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ValueError: ember.init(label='bogus'): must be one of 'none', 'puid', 'name'\n"


def test_an_unknown_runtime_name_is_still_not_found(monkeypatch, tmp_path):
    """A well-formed name that no running runtime has: not a ValueError, the
    runtime is not there (GlobalServicesError naming it)."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(GlobalServicesError, match=r"no running ember runtime named 'bogus-name-"):
        ember.init(address=f"bogus-name-{os.getpid()}")
    assert not ember.is_initialized()
