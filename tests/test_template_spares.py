"""The warm template's spare loop in C (``ember.shepherd._spawn.serve_spares``,
spares.c), driven directly: a Python process plays the template, this test
the shepherd (the spares are its children: CLONE_PARENT)."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import msgpack
import pytest

from ember.shepherd import _spawn, template as T
from procs import sockets

pytestmark = pytest.mark.timeout(60)

TEMPLATE = textwrap.dedent(r"""
    import os, socket, sys
    from ember.shepherd import template as T
    from ember.shepherd._spawn import serve_spares

    sock = socket.socket(fileno=int(sys.argv[1]))
    keep = sys.argv[2] == "keep"          # the spares keep the shepherd's end
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
        got = serve_spares(sock.fileno(), b"SPARE", b"\xc0\x90\xc2", *T._clone, buf,
                           os.getppid(), b"ember-spare", b"ember-leased", b"tmpl-child", None,
                           keep)
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


@pytest.mark.parametrize("way", ["keep", "send"])
def test_the_spare_loop_answers_its_request_and_hands_back_the_others(tmp_path, way):
    """Each request that is exactly the loop's (and carries no fds) is
    answered in C: ``[pid, fd, None, [], False]`` about a new socket pair:
    ``keep``, the spare holds both ends, ``fd`` the number of ours in it,
    which we take from it (``take_end``: pidfd_getfd), the answer carrying
    no fd (no socket in flight); ``send``, our end comes with the answer
    (``SCM_RIGHTS``), ``fd`` -1.  The spare is our child (a sibling of the template), named
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
    proc = subprocess.Popen([sys.executable, "-c", TEMPLATE, str(theirs.fileno()), way],
                            pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        mine.settimeout(30)
        if mine.recv(100) != b"ready":
            pytest.skip("no raw clone on this machine")

        def spare(tag, args=("-m", "x")):
            mine.send(b"SPARE")
            data, fds, _, _ = socket.recv_fds(mine, 1024, 2)
            pid, end, err, preloaded, final = msgpack.unpackb(data, raw=False)
            assert (err, preloaded, final) == (None, [], False), data
            if way == "keep":
                assert len(fds) == 0 and end > 2, data
                fds = [_spawn.take_end(pid, end)]
                # ours is the spare's fd ``end``, which it holds with its own
                mine_ino = os.readlink(f"/proc/self/fd/{fds[0]}")
                assert os.readlink(f"/proc/{pid}/fd/{end}") == mine_ino
            else:
                assert len(fds) == 1 and end == -1, data
            comm = None
            for _ in range(3000):             # it names itself once it is up
                with open(f"/proc/{pid}/comm", "rb") as f:
                    comm = f.read().strip()
                if comm == b"ember-spare":
                    break
                time.sleep(0.01)
            assert comm == b"ember-spare"
            if way == "keep":                 # (closed the others: detached)
                for _ in range(3000):
                    if len(sockets(pid)) == 2:
                        break
                    time.sleep(0.01)
                assert mine_ino in sockets(pid) and len(sockets(pid)) == 2
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
    replaced), then ``(key, None)`` for each key of the template's that
    envp lacks (removed).  None (the spare unpacks the request itself)
    when the request has another shape."""
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
    # an entry to remove (a variable the parent removed), a key replaced and another removed
    assert spare_request(req(["a"], [b"A=1", b"EMBER_P_UID=0"], None), env) == (
        ["a"], None, [(b"B", None)])
    assert spare_request(req(["a"], [b"A=3", b"EMBER_P_UID=5"], None), env) == (
        ["a"], None, [(b"A", b"3"), (b"EMBER_P_UID", b"5"), (b"B", None)])
    assert spare_request(req(["a"], [b"EMBER_P_UID=0"], None), b"A=1\0B=2\0EMBER_P_UID=0\0C\0") \
        is None                                 # (a template entry without "=")
    assert spare_request(req(["a"], [b"EMBER_P_UID=0"], None),
                         b"".join(b"N%d=1\0" % i for i in range(17))) is None   # > 16 removals
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


def _spare_cases():
    """Requests for ``ember_spare_request`` with the template environment
    each is read against: valid ones (str and bin entries, ``=`` in values,
    nil, str and bin cwd, duplicate keys, empty and large environments,
    each limit and one past it), then each truncated at every length and
    mutated (bytes changed, lengths past the end, 32-bit lengths), and
    environments that break the format (no final NUL, too many entries)."""
    import random

    rnd = random.Random(20261204)
    keys = [b"A", b"B", b"AB", b"EMBER_P_UID", b"K", b"\xff\xfe"]
    vals = [b"", b"1", b"v=w", b"=", b"\xff", b"x" * 300]

    def blob(d):
        return b"".join(k + b"=" + v + b"\0" for k, v in sorted(d.items()))

    valid = []
    for _ in range(400):
        tmpl = {rnd.choice(keys): rnd.choice(vals) for _ in range(rnd.randrange(0, 5))}
        envp = [k + b"=" + v for k, v in tmpl.items() if rnd.random() < 0.9]
        envp += [rnd.choice(keys) + b"=" + rnd.choice(vals) for _ in range(rnd.randrange(0, 4))]
        rnd.shuffle(envp)
        envp = [e.decode() if e.isascii() and rnd.random() < 0.1 else e for e in envp]
        args = ["".join(rnd.choice("ab=é/") for _ in range(rnd.randrange(0, 40)))
                for _ in range(rnd.randrange(0, 4))] + ["z" * rnd.choice([0, 31, 32, 255, 256])]
        cwd = rnd.choice([None, "", "/tmp/d", b"/tmp/b", "é" * 20])
        valid.append((msgpack.packb([args, envp, cwd], use_bin_type=True), blob(tmpl)))
    many = [b"N%d=1" % i for i in range(300)]
    for n_args, n_sets, n_env in ((32, 16, 256), (33, 0, 0), (0, 17, 0), (0, 0, 257)):
        env = b"".join(e + b"\0" for e in many[:n_env])
        valid.append((msgpack.packb([["a"] * n_args, many[:n_env] + [b"S%d=" % i for i in range(n_sets)],
                                     None], use_bin_type=True), env))
    big = b"y" * 70000                          # 32-bit lengths
    valid += [(msgpack.packb([["z" * 70000], [b"A=" + big], "é" * 40000], use_bin_type=True),
               b"A=" + big + b"\0"),
              (msgpack.packb([[], [b"B=" + big], None], use_bin_type=True), b"A=1\0")]
    cases = list(valid)
    for msg, env in valid[:60]:
        cut = range(len(msg)) if len(msg) < 1000 else rnd.sample(range(len(msg)), 100)
        cases += [(msg[:k], env) for k in cut]
    for msg, env in valid:
        for _ in range(8):
            b = bytearray(msg)
            i = rnd.randrange(len(b))
            if rnd.random() < 0.5:
                b[i] = rnd.randrange(256)
            else:
                b[i:i] = bytes([rnd.choice([0xdb, 0xc6, 0xdd, 0xda, 0xc4, 0xd9, 0xc0])]) \
                    + bytes(rnd.choice([0, 1, 0x7f, 0xff]) for _ in range(rnd.randrange(0, 5)))
            cases.append((bytes(b), env))
    cases += [(valid[0][0], b"A=1"), (valid[0][0], b"A=1\0B"), (valid[0][0], b"\0"),
              (b"", b""), (b"\x93\xdd\xff\xff\xff\xff", b""), (b"\x93\x90\xdd\x00\x00\x00\x10", b""),
              (b"\x93\x90\x91\xdb\xff\xff\xff\xff", b""), (b"\x93\x90\x91\xc6\x00\x00\x00\x05A=", b"")]
    return cases


def _spare_expected(msg, env):
    """What the spare's Python path makes of (msg, env): (args, cwd, the
    environment as a dict), or None where it would not run it as given
    (not the shape, or a key given twice: its choice is a set's order)."""
    try:
        args, envp, cwd = msgpack.unpackb(msg, raw=False, unicode_errors="surrogateescape")
    except Exception:
        return None
    if not (isinstance(args, list) and all(isinstance(a, str) for a in args)
            and isinstance(envp, list) and all(isinstance(e, (bytes, str)) for e in envp)
            and (cwd is None or isinstance(cwd, (str, bytes)))):
        return None
    envp = [os.fsencode(e) for e in envp]
    keys = [e.partition(b"=")[0] for e in envp]
    if len(set(keys)) != len(keys):
        return None
    tmpl = dict(e.partition(b"=")[::2] for e in env.split(b"\0")[:-1])
    # template._set_env's steps, on a dict for os.environb
    have = frozenset(k + b"=" + v for k, v in tmpl.items())
    want = frozenset(envp)
    new = {kv.partition(b"=")[0]: kv.partition(b"=")[2] for kv in want - have}
    for kv in have - want:
        if kv.partition(b"=")[0] not in new:
            del tmpl[kv.partition(b"=")[0]]
    tmpl.update(new)
    return args, (os.fsdecode(cwd) if isinstance(cwd, bytes) else cwd), tmpl


@pytest.mark.timeout(300)
def test_spare_request_and_putenv_under_sanitizers(tmp_path):
    """ember_spare_request (the C reader of a spare's request) built with
    ASan + UBSan over valid, truncated and mutated requests and broken
    environments, each in a buffer of exactly its size: no read out of
    bounds, no undefined behaviour; each result it gives is
    msgpack.unpackb's reading and the environment the Python path
    (template._set_env) would make; ``_spawn.spare_request`` gives the
    same.  ember_spare_putenv's environ, then glibc's setenv/unsetenv
    over it, alike."""
    import sysconfig

    from csanitize import build, run
    from ember.shepherd._spawn import spare_request

    exe = build(tmp_path, "spare_request_fuzz", "address,undefined",
                ["tests/c/spare_request_fuzz.c"], ["shepherd", "common_c"],
                flags=["-Werror", f"-I{sysconfig.get_paths()['include']}"], libs=())
    run(exe, "putenv", detect_leaks=False)      # (the old arrays are left by design)
    cases = _spare_cases()
    with open(tmp_path / "cases", "wb") as f:
        for msg, env in cases:
            f.write(len(msg).to_bytes(4, "little") + msg + len(env).to_bytes(4, "little") + env)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1")
    r = subprocess.run([str(exe), "request", str(tmp_path / "cases")], capture_output=True,
                       text=True, timeout=240, env=env)
    assert r.returncode == 0 and "runtime error" not in r.stderr, r.stderr[-6000:]
    lines = r.stdout.splitlines()
    assert lines[0] == f"ok: {len(cases)} cases" and len(lines) == len(cases) + 1
    read = 0
    for (msg, env), line in zip(cases, lines[1:]):
        got = spare_request(msg, env)
        if line == "-1":
            assert got is None, (msg, env)
            continue
        spans = [[tuple(int(x) for x in s.split(":")) for s in part.split()[1:]]
                 for part in line[2:].split(" | ")[:3]]
        cwd = line.rsplit(" | ", 1)[1]
        try:
            args = [msg[o:o + n].decode() for o, n in spans[0]]
            cwd = None if cwd == "nil" else msg[int(cwd.split(":")[0]):][:int(cwd.split(":")[1])].decode()
        except UnicodeDecodeError:
            assert got is None, (msg, env)          # the caller unpacks it
            continue
        sets = [tuple(msg[o:o + n].partition(b"=")[::2]) for o, n in spans[1]]
        unsets = [env[o:o + n] for o, n in spans[2]]
        assert got == (args, cwd, sets + [(k, None) for k in unsets]), (msg, env)
        made = dict(e.partition(b"=")[::2] for e in env.split(b"\0")[:-1])
        made.update(sets)
        for k in unsets:
            del made[k]
        want = _spare_expected(msg, env)
        if want is not None:
            assert (args, cwd, made) == want, (msg, env)
            read += 1
    assert read > 300                                  # most of the valid ones read in C


def _lease_cases():
    """Lease requests (``[args, envp, cwd]``, the template's environment
    empty) whose worker arguments vary: the usual ones, ``--template`` and
    ``--preload=`` anywhere, no token, two tokens, an empty one, one, two or
    three others, args[0] not ``-m``, too few args, the template's
    ``--flags=-B`` (mostly), other ones, none, two."""
    import random

    rnd = random.Random(20261205)
    words = ["--template", "--preload=a,b", "--preload=", "--spare=t0k", "--spare=", "--spare=2nd",
             "Q0FMTA==", "UkVTVUxU", "x", "--other", "-m", "é", "--flags=-B", "--flags=",
             "--flags=-O", "--flags=-B\x1f-O", "--flags=-B\x1e-O", "--flags=\x1e-B",
             "--flags=-O\x1e-B"]
    cases = []
    for _ in range(3000):
        args = [rnd.choice(["-m", "-m", "-m", "-c", "", "-mm"])]
        args += [rnd.choice(["ember._worker", "x"])] if rnd.random() < 0.95 else []
        args += [rnd.choice(words) for _ in range(rnd.randrange(0, 7))]
        if rnd.random() < 0.7:
            args.insert(rnd.randrange(min(2, len(args)), len(args) + 1), "--flags=-B")
        cases.append(msgpack.packb([args, [], rnd.choice([None, "/d"])], use_bin_type=True))
    cases.append(msgpack.packb([["-m", "ember._worker", "--template", "--flags=-B", "--spare=abc",
                                 "Q0FMTA==", "UkVTVUxU"], [b"A=1"], None], use_bin_type=True))
    return cases


def _b64_cases():
    """Base64 texts: encodings of random bytes (every length to 40, padded
    or not), each with a character changed, inserted or removed, padding
    moved or with bits set in it, whitespace, and odd lengths."""
    import base64
    import random

    rnd = random.Random(4)
    valid = [base64.b64encode(rnd.randbytes(n)) for n in range(41) for _ in range(3)]
    cases = list(valid) + [b"=", b"==", b"====", b"A===", b"QQ==", b"QR==", b"QUI=", b"QUJ=",
                           b"QU=D", b"QUJD\n", b" QUJD", b"QUJDRA==QQ==", b"QQ=A"]
    for t in valid:
        for _ in range(6):
            b = bytearray(t)
            i = rnd.randrange(len(b) + 1)
            r = rnd.random()
            if r < 0.4 and b:
                b[min(i, len(b) - 1)] = rnd.choice(b"=+/-_ \n\0\xffAz9")
            elif r < 0.7:
                b[i:i] = bytes([rnd.choice(b"=+/A\n")])
            elif b:
                del b[min(i, len(b) - 1)]
            cases.append(bytes(b))
    return cases


@pytest.mark.timeout(300)
def test_a_leases_arguments_and_base64_read_in_c_under_sanitizers(tmp_path):
    """ember_spare_lease_args (a lease's worker arguments: the first
    ``--spare=`` token, then exactly CALL and RESULT, ``--template`` and
    ``--preload=`` skipped, args[0] ``-m``, one ``--flags=`` whose key, up
    to a 0x1e, is the template's, here ``-B``) and ember_spare_b64_decode,
    built with ASan + UBSan, each input in a buffer of exactly its size:
    where they give a result it is what ember._worker's argument scan and
    binascii's strict base64 give; where they refuse, the Python path does,
    or (base64) the text has bits set in its padding (binascii takes it:
    the lease's Python path reads it then)."""
    import binascii
    import sysconfig

    from csanitize import build
    from ember import _worker

    exe = build(tmp_path, "spare_request_fuzz", "address,undefined",
                ["tests/c/spare_request_fuzz.c"], ["shepherd", "common_c"],
                flags=["-Werror", f"-I{sysconfig.get_paths()['include']}"], libs=())
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1")

    def run(mode, parts):
        with open(tmp_path / mode, "wb") as f:
            for p in parts:
                f.write(len(p).to_bytes(4, "little") + p)
        r = subprocess.run([str(exe), mode, str(tmp_path / mode)], capture_output=True,
                           text=True, timeout=240, env=env)
        assert r.returncode == 0 and "runtime error" not in r.stderr, r.stderr[-6000:]
        return r.stdout.splitlines()

    cases = _lease_cases()
    lines = run("lease", [x for m in cases for x in (m, b"")])
    assert len(lines) == len(cases)
    taken = 0
    for msg, line in zip(cases, lines):
        args = msgpack.unpackb(msg)[0]
        try:
            _, _, token, rest = _worker._scan(args[2:])
        except SystemExit:
            token = rest = None
        flags = [a[8:].partition("\x1e")[0] for a in args[2:] if a[:8] == "--flags="]
        want = None if token is None or rest is None or args[:1] != ["-m"] or flags != ["-B"] \
            else (token, *rest)
        if line == "x":
            continue                        # (not read in C: more args than its limit)
        got = None if line == "-1" else tuple(
            msg[int(o):int(o) + int(n)].decode() for o, n in (s.split(":") for s in line.split()))
        assert got == want, (args, line)
        taken += got is not None
    assert taken > 20

    cases = _b64_cases()
    lines = run("b64", cases)
    assert len(lines) == len(cases)
    refused = 0
    for text, line in zip(cases, lines):
        try:
            want = binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error:
            want = None
        if line == "-1":
            assert want is None or binascii.b2a_base64(want, newline=False) != text, text
            refused += want is None
        else:
            assert want == bytes.fromhex("" if line == "=" else line), text
    assert refused > 100


def test_a_dead_templates_group_id_is_not_given_away_before_its_group_is_killed(monkeypatch):
    """Template._stop kills the template's process group after the
    template (what is left of it: children whose answer never came).  Its
    id is the template's pid: were the template reaped first, a process
    could be given that pid meanwhile (here: asked for by ns_last_pid,
    between the reap and the kill) and lead a group of that id (an
    adopted child does, or anyone's setsid()), and the kill would be
    its.  The template stays a zombie until its group is killed."""
    last_pid = "/proc/sys/kernel/ns_last_pid"
    if not os.access(last_pid, os.W_OK):
        pytest.skip("cannot set the next pid here (root, a pid namespace of our own)")
    t = T.Template([k + b"=" + v for k, v in os.environb.items()], os.open(os.devnull, os.O_WRONLY),
                   os.open(os.devnull, os.O_WRONLY))
    t._start()
    os.close(t._out_fd)
    os.close(t._err_fd)
    group = t.pid
    got = []
    read_unread = T._reap_unread

    def between(sock):                    # after the template's kill, before its group's
        read_unread(sock)
        for _ in range(5):
            r, w = os.pipe()
            with open(last_pid, "w") as f:
                f.write(str(group - 1))
            pid = os.fork()
            if pid == 0:
                if os.getpid() == group:
                    os.setsid()           # leads a group of the template's id
                    os.write(w, b"x")
                    signal.pause()
                os._exit(0)
            os.close(w)
            if pid == group:
                os.read(r, 1)
                os.close(r)
                got.append(pid)
                return
            os.close(r)
            os.waitpid(pid, 0)
            got.append(pid)

    monkeypatch.setattr(T, "_reap_unread", between)
    t._stop()
    if got[-1] == group:
        try:
            alive = os.waitpid(group, os.WNOHANG) == (0, 0)
        except ChildProcessError:
            alive = False                 # killed, and reaped, with the template's group
        if alive:
            os.kill(group, signal.SIGKILL)
            os.waitpid(group, 0)
        assert alive, "the kill of the template's group killed a process that reused its id"
    assert group not in got
    with pytest.raises(ChildProcessError):
        os.waitpid(group, os.WNOHANG)     # the template reaped


_KCMP = {"x86_64": 312, "aarch64": 272}     # kcmp(2)'s number; KCMP_VM is 1


def _same_memory(pid1, pid2):
    """Whether two processes share their memory (kcmp KCMP_VM), or None
    where this machine's syscall number is not known here."""
    import ctypes
    nr = _KCMP.get(os.uname().machine)
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_long(pid1), ctypes.c_long(pid2),
                     ctypes.c_long(1), ctypes.c_long(0), ctypes.c_long(0))
    assert r >= 0, os.strerror(ctypes.get_errno())
    return r == 0


_CLOSE_RANGE = 436                           # close_range(2)'s number (generic table)
_PIDFD_GETFD = 438                           # pidfd_getfd(2)'s


def _deny(nr):
    """A seccomp filter on this process and what it starts: system call
    ``nr`` fails with EPERM, as under a container profile that predates it
    or refuses it; every other call is allowed."""
    import ctypes
    import struct

    ld_nr, jeq, ret = 0x20, 0x15, 0x06           # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K
    prog = b"".join(struct.pack("=HBBI", *ins) for ins in (
        (ld_nr, 0, 0, 0), (jeq, 0, 1, nr),
        (ret, 0, 0, 0x00050000 | 1), (ret, 0, 0, 0x7fff0000)))  # ERRNO(EPERM), ALLOW
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("=HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0                # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0, \
        os.strerror(ctypes.get_errno())                    # PR_SET_SECCOMP, FILTER


def _deny_close_range():
    """close_range(2) fails with EPERM here (:func:`_deny`)."""
    import ctypes

    _deny(_CLOSE_RANGE)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(ctypes.c_long(_CLOSE_RANGE), ctypes.c_uint(1000),
                        ctypes.c_uint(1000), ctypes.c_uint(0)) == -1


def _exit_holder_child(shared, threads, parent, deny=False):
    """In a fork: make the exit's holder for ``parent`` (after starting a
    thread that is still running, with ``threads``; with close_range(2)
    failing, with ``deny``), say its pid and whether a second call made
    another and fd 1 was still open, then end as ``shared[16]`` says (1:
    exit 7, 2: SIGKILL)."""
    import struct
    import threading
    from ember.shepherd import _spawn

    try:
        if threads:
            stop = threading.Event()
            threading.Thread(target=stop.wait, daemon=True).start()
        if deny:
            _deny_close_range()
        holder = _spawn.exit_holder(parent)
        again = _spawn.exit_holder(parent)
        try:
            os.fstat(1)
            fd1 = 1
        except OSError:
            fd1 = 0
        shared[0:16] = struct.pack("=qii", holder, again, fd1)
        while shared[16] == 0:
            time.sleep(0.001)
        if shared[16] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(7)
    finally:
        os._exit(99)


def _wait_exit(pid, timeout=20.0):
    """The exit code of child ``pid`` (negative: the signal), reaped."""
    deadline = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, f"pid {pid} did not end"
        time.sleep(0.005)


@pytest.mark.parametrize("end", ["exit", "killed"])
def test_an_exit_holder_keeps_the_memory_until_the_process_has_ended(end):
    """spares.h's ember_exit_holder(), in a fork of this process: the holder
    shares the process's memory, is our child (CLONE_PARENT: a template
    child's is the shepherd's), named ``ember-exit``, in "/" (not in the
    process's directory), holds no fd but the process's pidfd (every other fd closed before the exit, as the exit
    would), lives while the process does and ends, with code 0, once it
    has ended, by an exit (its code kept) or SIGKILL.  Once only."""
    import mmap
    import struct

    shared = mmap.mmap(-1, 4096)
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        _exit_holder_child(shared, False, me)
    holder = 0
    try:
        deadline = time.monotonic() + 20
        while shared[0:8] == bytes(8):
            assert time.monotonic() < deadline, "no holder made"
            time.sleep(0.001)
        holder, again, fd1 = struct.unpack("=qii", shared[0:16])
        assert holder > 0 and again == 0 and fd1 == 0
        assert os.waitid(os.P_PID, holder, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        while True:                   # (named and moved once it first runs)
            with open(f"/proc/{holder}/comm") as f:
                if f.read().strip() == "ember-exit" and os.readlink(f"/proc/{holder}/cwd") == "/":
                    break
            assert time.monotonic() < deadline, "the holder is not named"
            time.sleep(0.001)
        assert os.listdir(f"/proc/{holder}/fd") == os.listdir(f"/proc/{pid}/fd") == ["0"]
        assert os.readlink(f"/proc/{holder}/fd/0") == "anon_inode:[pidfd]"
        assert _same_memory(pid, holder) in (True, None)
        assert _same_memory(os.getpid(), holder) in (False, None)
        shared[16] = 1 if end == "exit" else 2
        assert _wait_exit(pid) == (7 if end == "exit" else -signal.SIGKILL)
        assert _wait_exit(holder) == 0
    finally:
        for p in (pid, holder):
            if p > 0:
                try:
                    os.kill(p, signal.SIGKILL)
                    os.waitpid(p, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass


@pytest.mark.parametrize("why", ["thread", "parent", "close_range"])
def test_no_exit_holder_while_another_thread_runs_or_for_another_parent(why):
    """With a second thread running, ember_exit_holder() makes no holder and
    closes nothing (that thread could use an fd, or be given a closed one's
    number, before the exit ends it); nor when the process's parent is not
    the one given (the holder would be that process's child); nor when
    close_range(2) fails with anything but ENOSYS (a seccomp profile that
    predates it: EPERM here), which would leave the holder sharing every
    fd of the process until it ends (it was made all the same): the exit
    unmaps as before."""
    import mmap
    import struct

    if why == "close_range" and os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("close_range's number is known here for x86_64 and aarch64")
    shared = mmap.mmap(-1, 4096)
    parent = 1 if why == "parent" else os.getpid()
    pid = os.fork()
    if pid == 0:
        _exit_holder_child(shared, why == "thread", parent, why == "close_range")
    try:
        deadline = time.monotonic() + 20
        while shared[12:16] == bytes(4) and shared[0:8] == bytes(8):
            assert time.monotonic() < deadline, "no answer"
            time.sleep(0.001)
        assert struct.unpack("=qii", shared[0:16]) == (0, 0, 1)
        shared[16] = 1
        assert _wait_exit(pid) == 7
        with pytest.raises(ChildProcessError):        # no other child (no holder)
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG)
    finally:
        for p in (pid, struct.unpack("=q", shared[0:8])[0]):   # (a holder made wrongly)
            if p > 0:
                try:
                    os.kill(p, signal.SIGKILL)
                    os.waitpid(p, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass


SPARE_ENDS = r"""
from procs import children, sockets, wait_children
ember.Process._lease_spares = False   # the shepherd's spares alone
sh = os.getppid()

def held():
    # the spares whose answers the shepherd has read (given a group of their own)
    out = []
    for pid in children(sh, "ember-spare"):
        try:
            if os.getpgid(pid) == pid:
                out.append(pid)
        except OSError:
            pass
    return out

for i in range(3):                    # the answers read at the next start
    p = ember.Process(target=os.getpid); p.start(); assert p.result() == p.pid; p.join()
    wait_children(sh, "ember-spare", 2)
before = leak_state()
spares = held()
# the shepherd's end of each held spare's pair: also the spare's own fd
# (taken from it, pidfd_getfd), or only the shepherd's (sent, SCM_RIGHTS)
shared = [bool(sockets(s) & sockets(sh)) for s in spares]
p = ember.Process(target=os.getpid); p.start(); pid = p.result(); p.join()
print("spares", len(spares) >= 1, "shared", set(shared), "from a spare", pid in spares)
# a spare whose answer is unread, SIGKILLed before the shepherd takes its
# end: reaped at the next start, which goes on
for _ in range(3000):
    fresh = [s for s in children(sh, "ember-spare") if s not in held()]
    if fresh:
        break
    time.sleep(0.01)
os.kill(fresh[0], signal.SIGKILL)
p = ember.Process(target=lambda: 7); p.start(); print("result", p.result()); p.join()
for _ in range(3000):
    if not os.path.exists(f"/proc/{fresh[0]}"):
        break
    time.sleep(0.01)
after = leak_state()
print("reaped", not os.path.exists(f"/proc/{fresh[0]}"), "leaks", after != before)
"""


@pytest.mark.parametrize("getfd", ["allowed", "denied"])
def test_the_shepherd_takes_its_end_of_a_spares_pair_from_the_spare(tmp_path, getfd):
    """Where pidfd_getfd(2) is allowed, a spare holds both ends of its
    socket pair and the shepherd takes its own from it (no unix socket in
    flight: docs/multiprocessing.md, "sparesock"): each spare whose answer
    it has read shares a socket with it; where it is refused (a seccomp
    filter on the whole runtime: EPERM), the end comes with the template's
    answer (``SCM_RIGHTS``) as before, and no socket is shared.  Either
    way the starts are served by the spares, and a spare SIGKILLed before
    the shepherd has read its answer (taken its end) is reaped at the next
    start, which goes on; nothing is left."""
    if getfd == "denied" and os.uname().machine not in ("x86_64", "aarch64"):
        pytest.skip("pidfd_getfd's number is known here for x86_64 and aarch64")
    from test_pyprocess import PRELUDE, ok

    prog = tmp_path / "prog.py"
    prog.write_text(PRELUDE + SPARE_ENDS)
    deny = f"import test_template_spares as t; t._deny({_PIDFD_GETFD}); " \
        if getfd == "denied" else ""
    res = subprocess.run(
        [sys.executable, "-c", f"import os, sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
         f"{deny}os.execv(sys.executable, [sys.executable, '-m', 'ember', 'run', {str(prog)!r}])"],
        cwd=tmp_path, capture_output=True, timeout=100)
    out = ok(res)
    assert out.splitlines() == [
        f"spares True shared {{{getfd == 'allowed'}}} from a spare True", "result 7",
        "reaped True leaks False"], out


def test_spares_holding_the_shepherds_end_die_with_the_shepherd(tmp_path):
    """The shepherd SIGKILLed while its spares hold both ends of their
    pairs (the answers read, and one asked for and not yet read): they
    never see EOF, but die with it (their parent-death signal), as does the
    template; nothing is left."""
    from procs import wait_gone
    from test_pyprocess import run_prog

    pidfile = tmp_path / "pids"
    res = run_prog(tmp_path, rf"""
        from procs import children, wait_children, template_of
        ember.Process._lease_spares = False
        sh = os.getppid()
        for i in range(3):
            p = ember.Process(target=os.getpid); p.start(); p.result(); p.join()
            wait_children(sh, "ember-spare", 2)
        spares = children(sh, "ember-spare")
        open({str(pidfile)!r}, "w").write(" ".join(map(str, spares + [template_of(sh)])))
        os.kill(sh, signal.SIGKILL)
        time.sleep(60)
    """, timeout=60)
    assert res.returncode == 70, res.stderr
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) >= 3 and wait_gone(pids) == []
