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


def test_the_templates_rehearsal_of_a_call_leaves_nothing_behind():
    """ember._worker.rehearse (the warm template's call, made once it has
    cleared the type attribute cache, so that its children's look-ups are
    hits): nothing is left in the pool, sys.path, os.environ and the
    directory are as they were, no trace point is recorded, and in a pool
    too small for its channels it gives up without a word or a leftover."""
    import subprocess
    import sys
    import textwrap

    prog = textwrap.dedent("""
        import os, sys
        from ember import _trace, _worker
        from ember.pools_c import Pool

        def state(pool):
            return pool.stats().live_allocs, list(sys.path), dict(os.environ), os.getcwd()

        pool = Pool.create(16 << 20)
        before = state(pool)
        _worker.rehearse(pool)
        print("big", state(pool) == before, _trace._buf == [])
        pool.destroy()
        small = Pool.create(1 << 20)
        blocks, size = [], 1 << 19
        while size >= 64:                 # filled but for less than a channel's room
            try:
                blocks.append(small.alloc(size))
            except Exception:
                size //= 2
        before = state(small)
        _worker.rehearse(small)
        print("small", state(small) == before, len(blocks) > 10)
        for b in blocks:
            b.free()
        small.destroy()
    """)
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.splitlines() == ["big True True", "small True True"]


def test_templated_answers_each_options_text_whatever_was_asked_before():
    """``_worker.templated`` keeps its last answer (a start asks about the
    same text each time): texts asked in turn, each answered as it is, a
    printing variable's name in the key whether as the variable (set:
    no template; set to "": one) or only inside another option's text."""
    flags = _worker.interpreter_flags
    cases = [(flags(()), True),
             (flags((("PYTHONHASHSEED", "0"), ("PYTHONVERBOSE", ""))), True),
             (flags((("PYTHONVERBOSE", "1"),)), False),
             (flags((("PYTHONPROFILEIMPORTTIME", "x"), ("PYTHONUTF8", "1"))), False),
             (flags((("PYTHONWARNINGS", "ignore:PYTHONVERBOSE"),)), True),
             ("k" + _worker.FLAGS_KEY_END + "-v", False),
             ("k" + _worker.FLAGS_KEY_END + _worker.FLAGS_SEP.join(["-X", "importtime"]), False),
             ("k" + _worker.FLAGS_KEY_END + _worker.FLAGS_SEP.join(["-X", "dev"]), True)]
    for text, want in cases + cases[::-1] + [(t, w) for t, w in cases for _ in (0, 1)]:
        assert _worker.templated(text) is want, text
        assert _worker.templated((text + ".")[:-1]) is want, text      # equal, another object
