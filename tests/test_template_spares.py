"""The warm template's spare loop in C (``ember.shepherd._spawn.serve_spares``,
spares.c), driven directly: a Python process plays the template, this test
the shepherd (the spares are its children: CLONE_PARENT)."""
import os
import socket
import subprocess
import sys
import textwrap
import time

import msgpack
import pytest

from ember.shepherd import template as T

pytestmark = pytest.mark.timeout(60)

TEMPLATE = textwrap.dedent(r"""
    import os, socket, sys
    from ember.shepherd import template as T
    from ember.shepherd._spawn import serve_spares

    sock = socket.socket(fileno=int(sys.argv[1]))
    if not T._clone_ready():
        sock.send(b"no clone")            # no raw clone on this machine
        sys.exit(0)
    sock.send(b"ready")
    buf = T._receive_buffer()             # the template's: not inherited by a clone
    import ctypes
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))

    def mapped(a):
        with open("/proc/self/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= a < hi:
                    return 1
        return 0
    while True:
        # the answer's tail: None, [], False (msgpack)
        got = serve_spares(sock.fileno(), b"SPARE", b"\xc0\x90\xc2", *T._clone[3:6], buf,
                           os.getppid(), b"ember-spare", b"ember-leased", b"tmpl-child")
        if got[0] == "child":             # a spare: answer the request it is sent, exit
            kind, req, leased = got[1]    # its request is in, its fds are 0, 1, 2
            with open("/proc/self/comm", "rb") as f:
                comm = f.read().strip()
            fds = len(os.listdir("/proc/self/fd"))     # 0, 1, 2 and the listing's own
            os.write(1, b"spare %d parent %d got %s %d comm %s fds %d pgrp %d buf %d"
                     % (os.getpid(), os.getppid(), req, leased, comm, fds,
                        os.getpgrp() == os.getpid(), mapped(addr)))
            os._exit(0)
        if got[0] == "eof":
            sys.exit(0)
        _, n, fds = got                   # not the loop's: ours to answer
        sock.send(b"python: " + bytes(buf[:n]) + b" fds %d buf %d" % (len(fds), mapped(addr)))
        for fd in fds:
            os.close(fd)
""")


def test_the_spare_loop_answers_its_request_and_hands_back_the_others(tmp_path):
    """Each request that is exactly the loop's (and carries no fds) is
    answered in C: ``[pid, None, [], False]`` with the spare's end of a
    socket pair; the spare is our child (a sibling of the template), named
    ember-spare while it waits, in the template's process group until the
    shepherd gives it its own; its request (with three fds, made its 0,
    1, 2; no other fd left open) comes back
    to its Python, the spare named ember-leased for a lease (an argument
    ``--spare=...``), else the name it was given.  Any other request, or the same bytes
    with fds, is handed back to the Python caller, which can go back into
    the loop; EOF ends it.  The template's receive buffer
    (``template._receive_buffer``) is mapped in the template, not in a
    spare (``MADV_DONTFORK``)."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([sys.executable, "-c", TEMPLATE, str(theirs.fileno())],
                            pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        mine.settimeout(30)
        if mine.recv(100) != b"ready":
            pytest.skip("no raw clone on this machine")

        def spare(tag, args=("-m", "x")):
            mine.send(b"SPARE")
            data, fds, _, _ = socket.recv_fds(mine, 1024, 2)
            pid, err, preloaded, final = msgpack.unpackb(data, raw=False)
            assert (err, preloaded, final, len(fds)) == (None, [], False, 1), data
            comm = None
            for _ in range(3000):             # it names itself once it is up
                with open(f"/proc/{pid}/comm", "rb") as f:
                    comm = f.read().strip()
                if comm == b"ember-spare":
                    break
                time.sleep(0.01)
            assert comm == b"ember-spare"
            # It waits in the template's process group; the shepherd gives
            # it its own when it reads the answer (template._adopt): a spare
            # whose answer never came dies with that group.
            assert os.getpgid(pid) == os.getpgid(proc.pid)
            assert T._adopt(pid) and os.getpgid(pid) == pid
            r, w = os.pipe()
            req = msgpack.packb([list(args), [b"K=" + tag], ""], use_bin_type=True)
            with socket.socket(fileno=fds[0]) as s, open(os.devnull, "rb") as null:
                socket.send_fds(s, [req], [null.fileno(), w, w])
            os.close(w)
            with os.fdopen(r, "rb") as f:
                said = f.read()
            assert os.waitpid(pid, 0) == (pid, 0)   # ours to reap
            assert req in said, said
            return said.replace(req, b"REQ")

        me = os.getpid()
        for tag in (b"one", b"two"):
            said = spare(tag)
            assert said.split()[2:] == [b"parent", str(me).encode(), b"got", b"REQ", b"0",
                                        b"comm", b"tmpl-child", b"fds", b"4", b"pgrp", b"1",
                                        b"buf", b"0"], said
        said = spare(b"lease", ("-m", "ember._worker", "--spare=abc", "C", "R"))
        assert said.split()[-9:] == [b"1", b"comm", b"ember-leased", b"fds", b"4", b"pgrp", b"1",
                                     b"buf", b"0"], said
        mine.send(b"SPARE!")
        assert mine.recv(100) == b"python: SPARE! fds 0 buf 1"
        assert spare(b"three").endswith(b"buf 0")
        with open(os.devnull, "rb") as f:
            socket.send_fds(mine, [b"SPARE"], [f.fileno()])
        assert mine.recv(100) == b"python: SPARE fds 1 buf 1"
        assert spare(b"four").endswith(b"buf 0")
        mine.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        mine.close()


def test_a_spares_request_is_read_in_c_against_the_template_environment():
    """``spare_request`` (spares.c, ember_spare_request) reads a spare's
    request ``[args, envp, cwd]`` against the template's environment (NUL-
    ended ``K=V`` entries): the args, the cwd, and the envp entries the
    template lacks, as ``(key, value)`` to set (a key the template has is
    replaced).  None (the spare unpacks the request itself) when an entry
    of the template's is to be removed, or the request has another shape."""
    from ember.shepherd._spawn import spare_request

    env = b"A=1\0B=2\0EMBER_P_UID=0\0"

    def req(args, envp, cwd):
        return msgpack.packb([args, envp, cwd], use_bin_type=True)

    same = [b"A=1", b"B=2", b"EMBER_P_UID=0"]
    assert spare_request(req(["-m", "x"], same, None), env) == (["-m", "x"], None, [])
    assert spare_request(req(["-m", "é"], list(reversed(same)), "/tmp/d"), env) == (
        ["-m", "é"], "/tmp/d", [])
    assert spare_request(req(["a"], [b"A=1", b"B=2", b"EMBER_P_UID=7", b"K=v=w", b"E="], ""),
                         env) == (["a"], "", [(b"EMBER_P_UID", b"7"), (b"K", b"v=w"), (b"E", b"")])
    assert spare_request(req([], same, None), b"") == (
        [], None, [(b"A", b"1"), (b"B", b"2"), (b"EMBER_P_UID", b"0")])
    # an entry to remove, or a key replaced but another missing: the caller's
    assert spare_request(req(["a"], [b"A=1", b"EMBER_P_UID=0"], None), env) is None
    assert spare_request(req(["a"], [b"A=1", b"A=3", b"EMBER_P_UID=0"], None), env) is None
    # other shapes: not str args, an entry without "=", a str envp entry is
    # fine, trailing or missing bytes, a non-UTF-8 arg, too many args
    m = req(["a"], same, None)
    assert spare_request(req([b"a"], same, None), env) is None
    assert spare_request(req(["a"], same + [b"NOEQ"], None), env) is None
    assert spare_request(req(["a"], same + ["S=1"], None), env) == (["a"], None, [(b"S", b"1")])
    assert spare_request(m + b"\xc0", env) is None
    assert spare_request(m[:-1], env) is None
    assert spare_request(msgpack.packb([["a"], same]), env) is None
    assert spare_request(m.replace(b"\xa1a", b"\xa1\xff"), env) is None
    assert spare_request(req(["a"] * 33, same, None), env) is None
    assert spare_request(req(["a"] * 32, same, None), env)[0] == ["a"] * 32


def test_spare_setenv_sets_the_c_and_the_python_environment():
    """``spare_setenv`` sets each ``(key, value)`` in the C environment
    (what a subprocess inherits, what getenv reads) and in os.environ,
    replacing a key's value or adding it; later changes through os.environ
    work as usual."""
    prog = textwrap.dedent(r"""
        import ctypes, os, subprocess
        from ember.shepherd._spawn import spare_setenv
        os.environ["SSE_OLD"] = "0"
        os.environ.pop("SSE_NEW", None)
        spare_setenv([(b"SSE_OLD", b"1"), (b"SSE_NEW", b"a=b")], os.environ._data)
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_char_p
        sh = lambda: subprocess.run(["sh", "-c", 'echo "$SSE_OLD|$SSE_NEW|$SSE_MORE"'],
                                    capture_output=True, text=True).stdout.strip()
        print(os.environ["SSE_OLD"], os.environ["SSE_NEW"], libc.getenv(b"SSE_OLD"),
              libc.getenv(b"SSE_NEW"), sh())
        os.environ["SSE_MORE"] = "m"
        del os.environ["SSE_OLD"]
        print(sh(), "SSE_OLD" in os.environ)
        try:
            spare_setenv([(b"A=B", b"1")], os.environ._data)
        except ValueError:
            print("refused")
    """)
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1 a=b b'1' b'a=b' 1|a=b|", "|a=b|m False", "refused"]
