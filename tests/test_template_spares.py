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
