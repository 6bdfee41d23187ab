"""The worker's command line (``ember._worker``): what its ``main`` reads
(``_run_args``, one pass) is what ``parse_argv`` and ``spare_token`` read."""
import os

import pytest

from ember import _env, _worker


def test_main_reads_the_arguments_as_parse_argv_and_spare_token_do():
    c, r = _env.encode(os.urandom(40)), _env.encode(os.urandom(70))
    for argv in (["--template", "--preload=a,?b", "--spare=T1", c, r], [c, r],
                 ["--spare=A", c, "--spare=B", r], ["--preload=", c, "--template", r],
                 ["--spare=", c, r]):
        _, _, call, result = _worker.parse_argv(argv)
        assert _worker._run_args(argv) == (call, result, _worker.spare_token(argv)), argv
    for bad in ([c], [c, r, c], ["--other", c, r], ["--template", "--spare=T"]):
        for read in (_worker.parse_argv, _worker._run_args):
            with pytest.raises(SystemExit, match="usage"):
                read(bad)
    with pytest.raises(ValueError):
        _worker._run_args(["not base64!", r])
