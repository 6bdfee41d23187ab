"""The warm template: a per-node Python interpreter that forks the Python
processes of ``ember.Process`` instead of starting a fresh interpreter.

Shepherd side (:class:`Template`): started lazily by the shepherd's request
thread on the first spawn of ``python -m ember._worker --template ...``
(:func:`is_template_request`), over an ``AF_UNIX``/``SOCK_SEQPACKET``
socket pair that becomes the template's fd 0.  Each spawn sends
``[p_uid, args, envp, cwd]`` plus the child's stdin/stdout/stderr fds
(``SCM_RIGHTS``) and gets ``[pid, error]`` back.

Template side (:func:`main`): imports ember and the worker once (cloudpickle
only once a program ships code by value: a preload),
then for each request forks **twice**: the first child forks the real child
and exits at once, so the real child is orphaned and re-parented to the
shepherd, which made itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``).
The shepherd therefore watches and reaps it exactly like a spawned child
(pidfd + ``waitpid``): a managed process with a p_uid, its own process
group, PR_SET_PDEATHSIG(SIGKILL) tied to the shepherd, its output on the
shepherd's pipes, killed at teardown.  Why not ``clone(CLONE_PARENT)``: it
skips glibc's fork handlers (``pthread_atfork``), which libraries such as
OpenBLAS (imported with numpy, e.g. by ``Process.preload``) need to reset
their thread pools in the child; ``os.fork()`` runs them and CPython's own
after-fork code.  See docs/python-processes.md.

The real child, before running the worker: waits until it is re-parented
(EOF on a pipe the intermediate process held, then ``getppid()``), sets
PR_SET_PDEATHSIG(SIGKILL) and checks its parent is the shepherd, takes its
stdio fds, closes every other fd, changes directory, replaces its
environment, waits until the shepherd has made it a process group of its
own (:func:`_wait_adopted`: never, if the template died before its answer;
the shepherd then kills it with the template's group), and then runs
``ember._worker.main`` and ``os._exit``\\ s with its code.

The spares (single-threaded template only): the shepherd keeps
:data:`SPARES` children forked ahead of time.  It asks for the next ones
(``["spare", preload, True]``) after a spawn the template forked, at once;
after one that a spare took, when a child exits or :data:`SPARE_DELAY`
later, so that making it does not compete for the CPUs with the child
just started (:meth:`Template.spawn`).  The template clones each (in C,
:func:`_spare_loop`: ``_spawn.serve_spares``, spares.c, while the requests
are the one it last served in Python, :func:`_give_spare`), it does what
needs nothing of a request (:func:`_detach`) and waits on a socket pair,
whose other end the template hands to the shepherd with ``[pid, fd, None,
preloaded modules, no more spares]`` and closes: that end stays in the
spare as its fd ``fd`` until its request is in, and the shepherd takes its
copy from there (``pidfd_getfd``, :func:`_take_end`), so that no unix socket
is in flight while the answer waits to be read (every close of a unix
socket on the machine would wake the kernel's garbage collector meanwhile:
docs/python-processes.md); where ``pidfd_getfd`` is refused
(:func:`_take_ok`), the request is ``["spare", preload]`` and the end comes
with the answer (``SCM_RIGHTS``, ``fd`` -1).  The shepherd sends the
next request (``[args, envp, cwd]`` and the stdio fds) straight to the
spare, with no answer to wait for; the template is off the path.  Spares
that died or cannot be used (forked before a preload the request asks
for) are killed and reaped by the shepherd (they are its children), and
the template forks that child.  A spare waits in the template's process
group: the shepherd gives it a group of its own when it reads its answer
(:func:`_adopt`; so it does for a child the template forked).

The programs' templates (:class:`_Program`): for an ``"ember"``-method
start whose preload list ends with ``?@program:KEY`` (ember.mp.context),
the shepherd turns a spare that has that list into the template of that
program (``["program", KEY]`` and a new socket as its fd 0:
:func:`_program_main`, ``ember.mp._mainload.become``) and takes that
start's next spares from it (:meth:`Template._program_spawn`), falling
back to the warm template's whenever it holds none.  At most
:data:`PROGRAMS`, stopped when unused for :data:`PROGRAM_IDLE` seconds, when
dead (the next start or the orphan scan sees it) and at teardown.

The interpreter options (:meth:`Template._for_options`): the template is
started with the options of the first start it serves (``python OPTIONS -m
ember._template --flags=KEY...``, the worker's ``--flags=``, whose key it
takes as its own: :data:`_made_for`), so that a program run with ``-O``,
``-X dev``, ``-W ...`` has its children cloned with them; a start with other
options goes to a template of its own (:class:`_Options`, made at its first
start, at most :data:`OPTIONS`, stopped when unused for
:data:`PROGRAM_IDLE`), else its child execs a fresh interpreter with them
(:func:`_child`).

What a death costs: the template dying (killed, crash) fails the spawn in
flight ("template exited"); the shepherd's loop sees it at once (its
pidfd, :meth:`Template.died`): it is reaped, with what is left of its
group (below), and a warning logged; the next spawn starts a new
template.  A spare
the shepherd already holds is still used; one whose answer was in flight
(answered, not read) is killed and reaped once the template is, and so is
every child the template made whose answer never came (a spare cloned
just before the death: it is still in the template's process group,
:func:`_reap_group`).  A spare dying while it waits costs nothing but a
fork on the next request.  A child dying at any point is an ordinary
managed-process exit.
"""
import atexit
import errno
import os
import select
import _signal as signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)
import struct
import sys

from .. import _env, _trace
from .. import _outboard
from .._exit import flush_and_exit, std_streams
from .._trace import t as _t
# Bound here, not imported in the functions a child runs: a relative
# import in a function resolves its package through ModuleSpec.parent,
# Python code that cost each child ~25 page faults of copy-on-write.
# (Both modules are loaded with the shepherd anyway.)
from .._worker import FLAGS_KEY_END, LEASED_COMM, PROGRAM_PREFIX, _scan, fd_ready as _fd_ready, \
    flags_key as _flags_key, flags_of as _flags_of, fresh_argv as _fresh_argv, \
    key_env as _key_env, lease as _lease_worker, main as _run_worker, options_of as _options_of, \
    parse_argv, rehearse as _rehearse, spare_token, startup_env as _startup_env, \
    templated as _templated, PRINTING_VARS as _PRINTING_VARS
from ._spawn import exit_holder as _exit_holder, proc_state_note as _proc_state_note, \
    trim_heap as _trim_heap
from ._spawn import clone_parent as _clone_parent_c, clone_setup as _clone_setup
from ._spawn import QUIET_AT_MOST, QUIET_EMPTY, QUIET_IS, QUIET_SAME_END, quiet as _quiet, \
    quiet_mark as _quiet_mark, quiet_note as _quiet_note
from ._spawn import take_end as _take_end_c
from ._spawn import serve_spares as _serve_spares, \
    set_pdeathsig, skip_in_clone as _skip_in_clone, spare_name as _spare_name, \
    spare_request as _spare_request, spare_setenv as _spare_setenv, spare_wait as _spare_wait, \
    spawn as _spawn_process


def _socket():
    import socket
    return socket

__all__ = ["Template", "is_template_request", "become_subreaper", "main"]

_PR_SET_CHILD_SUBREAPER = 36
_MAX_MSG = 1 << 20
_REPLY_TIMEOUT = 120.0     # seconds: a first preload (e.g. numpy) may take a while
#: After a spare is handed a request, the next one is asked for when a
#: child exits, or this long after the hand-over (seconds), whichever
#: comes first (see :meth:`Template.ask_wanted`).
SPARE_DELAY = 0.010
#: Spares the shepherd keeps ready: two, so that a start that follows a
#: join at once (the benchmark's loop, a ProcessGroup's restarts) finds one
#: that has finished its own start-up, while the next one is made.
SPARES = 2
#: Program templates kept alive at most (the least recently used one is
#: stopped for another), and how long one, or a template of other options
#: (:class:`_Options`), is kept unused (seconds; a test sets it through
#: ``EMBER_TEST_TEMPLATE_IDLE``).
PROGRAMS = 2
PROGRAM_IDLE = float(os.environ.get("EMBER_TEST_TEMPLATE_IDLE") or 60.0)
#: Templates of other interpreter options than the warm template's kept at
#: most (:meth:`Template._for_options`): beyond, a parent's children exec a
#: fresh interpreter with its options.
OPTIONS = 2


def is_template_request(exe, args):
    """True for a spawn of ``python -m ember._worker --template ...`` with
    this interpreter (other interpreters get a fresh process)."""
    return (len(args) >= 3 and args[0] == "-m" and args[1] == "ember._worker"
            and args[2] == "--template" and _same_exe(exe))


def _same_exe(exe):
    try:
        return exe == sys.executable or os.path.samefile(exe, sys.executable)
    except OSError:
        return False


#: Set by the shepherd in the template's environment, with LD_BIND_NOW,
#: when the runtime's environment has no LD_BIND_NOW: the template takes
#: both out again at start-up, so that its children see the runtime's.
_BIND_NOW_MARK = b"EMBER_TEMPLATE_BIND_NOW"


def _request_size(args, envp, cwd):
    """At least the size of a request's message (:func:`_hand_over`'s,
    :meth:`Template._fork_in_template`'s): its bytes, a str's at 4 bytes a
    character, and msgpack's headers."""
    return (sum(map(len, envp)) + 4 * (sum(map(len, args)) + len(cwd or ""))
            + 9 * (len(envp) + len(args)) + 64)


_req_max = [0]


def _request_max():
    """The largest request a template or a spare can be sent: one
    ``SOCK_SEQPACKET`` message, at most the sending socket's buffer (its
    ``SO_SNDBUF``, ``net.core.wmem_default``: 212992 bytes by default) less
    the kernel's 32, and at most what the template receives
    (:data:`_MAX_MSG`)."""
    if not _req_max[0]:
        socket = _socket()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with a, b:
            _req_max[0] = min(a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 32, _MAX_MSG)
    return _req_max[0]


def _bind_now_env(envp):
    """The template's environment: ``envp`` with ``LD_BIND_NOW=1`` (and
    :data:`_BIND_NOW_MARK`), unless it sets LD_BIND_NOW itself.  The
    dynamic linker then resolves every function libpython and libc call
    through their PLT when the template starts, not at the first call:
    with lazy binding each child ran the resolver for every library
    function the template had not called yet (~20 symbol lookups a child)
    and wrote the resolved addresses into libpython's and libc's GOT,
    pages the child shares with the template (a copy-on-write fault each;
    ~20 fewer faults a child in all).  Extension modules are bound at
    import anyway (Python dlopens them with RTLD_NOW)."""
    if any(kv.startswith(b"LD_BIND_NOW=") for kv in envp):
        return envp
    return list(envp) + [b"LD_BIND_NOW=1", _BIND_NOW_MARK + b"=1"]


def _startup_envp(envp, flags):
    """The template's environment for the options ``flags`` (the
    worker's ``--flags=`` text): ``envp`` (the runtime's) with the start-up
    variables the key covers as the key has them (``_worker.key_env``:
    those of the parent's environment at its start), so that the template
    starts as spawn's child of that parent would (a ``PYTHONHASHSEED``, a
    ``PYTHONOPTIMIZE`` the program set after the runtime's start)."""
    names, env = _key_env(flags)
    names = {n.encode() for n in names}
    return ([kv for kv in envp if kv.partition(b"=")[0] not in names]
            + [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env])


def _unset_bind_now():
    """In the template, at start-up: take out what :func:`_bind_now_env`
    added (the dynamic linker read it when the template started; its
    children get the runtime's environment)."""
    if os.environ.pop(_BIND_NOW_MARK.decode(), None) is not None:
        os.environ.pop("LD_BIND_NOW", None)


def become_subreaper():
    """prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are
    re-parented to this process (so template-forked children are ours)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(e)}")


class Template:
    """The shepherd's handle on its template process and on the spare child
    the template handed over.  Used by the request thread, except
    :meth:`ask_wanted` (also the main thread, when a child exits) and
    :meth:`died` (the main thread): all under one lock, which ask_wanted
    and died never wait for."""

    def __init__(self, envp, out_fd=2, err_fd=2, watch=None):
        """``watch(pidfd, template)``: the shepherd's loop is to watch the
        pidfd of the template just started and call :meth:`died` when it
        turns readable; ``watch(pidfd, None)``: no more (it is closed
        next)."""
        import _thread

        # Held by spawn() (request thread) and ask_wanted() (either thread).
        self._lock = _thread.allocate_lock()
        self._want = None         # preload list of the next spare, not yet asked for
        self._want_by = None      # time.monotonic() by which it is asked for
        self._envp = envp
        self._out_fd = out_fd
        self._err_fd = err_fd
        self._sock = None
        self._pid = None
        self._spares = []         # _Spares we hold, oldest first: requests go to them
        self._asked = 0           # spares asked for whose answers are not yet read
        self._no_spares = False   # this template makes none (spares off, threads)
        self._rbuf = None         # the template's answers are received here (_answer)
        self._watch = watch
        self._pidfd = None        # the template's, in the shepherd's loop (watch)
        # What each start would make again from the same bytes: the last
        # request's preload list and its --preload= text (_preload_of), the
        # spare request for a preload list and its bytes (_ask_spare), the
        # end of the last answer after its pid and what it says (_collect_one).
        self._preload = self._preload_text = None
        self._ask_for = self._ask_req = self._ask_keep = None
        self._tail = self._tail_got = None
        # The programs' templates (_Program), least recently used first; the
        # keys refused (a template that died before its first spare); the
        # one to make when a spare is next asked for: (key, preload).
        self._programs = {}
        self._refused = set()
        self._make = None
        self._key_of = (None, None)   # (preload list, its program key): _program_key
        # The interpreter options its template is started with: the worker's
        # --flags= text of the first start it serves (None: none served yet;
        # False: none, options no template is made with); the templates of
        # other options (_Options), by key (_for_options).
        self._made_for = None
        self._others = {}
        self._untemplated = set()     # keys whose template never came up (_spawn)
        self._up = False              # its template has answered (with these options)
        self._killed = False          # its last template failed a start: killed (_spawn)

    @property
    def pid(self):
        return self._pid

    def exited(self):
        """True if its process has exited (not reaped)."""
        try:
            return self._pid is None or os.waitid(
                os.P_PID, self._pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _start(self):
        import socket         # only once a template is used (~2 ms at every start otherwise)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            exe = sys.executable
            argv = [exe, "-m", "ember._template"]
            # (not with the runtime's PYTHONVERBOSE, PYTHONPROFILEIMPORTTIME:
            # it would print its imports, its children none; theirs have it)
            envp = [kv for kv in self._envp
                    if os.fsdecode(kv.partition(b"=")[0]) not in _PRINTING_VARS]
            if isinstance(self._made_for, str):       # (_for_options)
                argv[1:1] = _options_of(self._made_for)
                argv.append("--flags=" + self._made_for)
                envp = _startup_envp(envp, self._made_for)
            self._pid = _spawn_process(exe, argv,
                                       _bind_now_env(envp), None,
                                       theirs.fileno(), self._out_fd, self._err_fd,
                                       new_pgrp=True)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        self._sock = mine
        self._asked = 0
        self._no_spares = False
        if self._watch is not None:
            try:
                self._pidfd = os.pidfd_open(self._pid)
            except OSError:
                return            # (not reaped: cannot fail) seen at the next spawn, as before
            self._watch(self._pidfd, self)

    def _stop(self):
        """Kill and reap the template (if any).  The spares we hold are not
        the template's: they stay usable.  Those it answered for whose
        answers are still unread (:func:`_reap_unread`) are killed and
        reaped, and so is what is left in its process group
        (:func:`_reap_group`): the children it made whose answer never
        came."""
        self._asked = 0
        sock, self._sock = self._sock, None
        group, self._pid = self._pid, None
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            self._watch(pidfd, None)
            os.close(pidfd)
        if group is not None:
            try:
                os.kill(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:                  # dead, but not reaped: its pid, the group's id, stays
                os.waitid(os.P_PID, group, os.WEXITED | os.WNOWAIT)    # taken
            except ChildProcessError:
                pass
        if sock is not None:
            _reap_unread(sock)
            sock.close()
        if group is not None:
            _reap_group(group)    # the template's zombie too
            try:
                os.waitpid(group, 0)
            except ChildProcessError:
                pass

    def died(self, pidfd):
        """The shepherd's loop saw ``pidfd`` readable: if it is this
        template's and it has exited (not a stale event: the number may
        have been reused meanwhile), stop it at once (:meth:`_stop`: its
        zombie and what is left of its group reaped), not at the next
        spawn, which may never come; the next spawn starts a new one.
        Returns ``(pid, waitid result)`` then, else None; False, doing
        nothing, if a spawn holds the handle's lock (the loop never waits
        for it: a spawn may wait up to :data:`_REPLY_TIMEOUT` for an
        answer; the caller asks again later)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if pidfd != self._pidfd or not _fd_ready(pidfd):
                return None
            pid = self._pid
            try:
                si = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except OSError:
                si = None
            self._stop()
            return pid, si
        finally:
            self._lock.release()

    def foreign(self, pids):
        """Of ``pids`` (children of the shepherd), those that are none of
        the handle's to wait for: not the template, nor a spare held, nor
        in the template's process group (its children before
        :func:`_adopt`, the spares of unread answers); None if the lock
        is held (a spawn: ask again later)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            mine, groups = set(), set()
            for h in (self, *self._others.values()):
                if h is not self and h._pid is not None and h.exited():
                    h._stop()             # (not watched: its zombie and group reaped here)
                h._reap_programs()
                mine.update(s.pid for s in h._spares)
                groups.add(h._pid)
                for ph in h._programs.values():    # (their spares are in their groups)
                    mine.update(s.pid for s in ph._spares)
                    groups.add(ph._pid)
            groups.discard(None)
            out = []
            for pid in pids:
                if pid in groups or pid in mine:
                    continue
                try:
                    if os.getpgid(pid) in groups:
                        continue
                except OSError:
                    continue              # (gone: reaped meanwhile)
                out.append(pid)
            return out
        finally:
            self._lock.release()

    # --- the spare ------------------------------------------------------
    def _ask_spare(self, preload, start=True):
        """Ask the template for spares (with ``preload`` imported first)
        until :data:`SPARES` are held or asked for, off the path of the
        request just served; the answers are read by :meth:`_collect`.
        With ``start`` False, a template that is not running is not
        started (the next spawn does)."""
        self._want = self._want_by = None
        if self._no_spares or len(self._spares) + self._asked >= SPARES:
            return
        if self._sock is None and not start:
            return
        for _ in (0, 1):
            try:
                if self._sock is None:
                    if not start:
                        return        # (the first try's template died: not restarted)
                    self._start()
                req = self._spare_request(preload)
                while len(self._spares) + self._asked < SPARES:
                    self._sock.send(req)
                    self._asked += 1
                    _t("S.ask_spare")
                return
            except OSError:
                self._stop()          # dead: the next spawn starts a new one

    def _spare_request(self, preload):
        """The spare request for ``preload`` (:meth:`_ask_spare`):
        ``["spare", preload, True]`` where we can take our end of the
        spare's pair from the spare (:func:`_take_ok`), else ``["spare",
        preload]`` (the end comes with the answer)."""
        keep = _take_ok(self._pid)
        if preload is not self._ask_for or keep is not self._ask_keep:
            import msgpack

            self._ask_req = msgpack.packb(["spare", list(preload)] + [True] * keep,
                                          use_bin_type=True)
            self._ask_for, self._ask_keep = preload, keep
        return self._ask_req

    def _collect(self, wait):
        """Read the template's answers to the spare requests in flight that
        have come (with ``wait``: wait for one, if none has): each is
        ``[pid, fd, error, preloaded modules, no more spares]``, the spare
        holding our end of its socket pair as its fd ``fd`` (taken from it:
        :func:`_take_end`), or ``fd`` -1 and that end with the answer
        (``SCM_RIGHTS``); or pid 0 and no socket."""
        while self._asked:
            if not self._collect_one(_REPLY_TIMEOUT if wait else 0):
                return
            wait = False

    def _collect_one(self, timeout):
        """Read one answer (False if none came within ``timeout``)."""
        import msgpack

        fds = []
        try:
            if not _fd_ready(self._sock, timeout):
                if timeout == 0:
                    return False
                raise TimeoutError("no answer from the template")
            self._asked -= 1
            data, fds = self._answer(1)
            if not data:
                raise ConnectionError("template exited")
            pid, end, preloaded, final = self._read_answer(data)
            self._up = True
        except (OSError, TimeoutError, ValueError, TypeError):
            for fd in fds:
                os.close(fd)
            self._stop()
            return False
        if pid and end >= 0 and not fds:
            fds = _take_end(pid, end)
        if pid and len(fds) == 1 and _adopt(pid):
            os.set_inheritable(fds[0], False)     # fds from SCM_RIGHTS are inherited by exec
            self._spares.append(_Spare(pid, _socket().socket(fileno=fds[0]), preloaded))
            return True
        for fd in fds:
            os.close(fd)
        if pid:                                   # no socket to reach it (or no group): not usable
            _kill_child(pid)
        self._no_spares = bool(final)
        return True

    def _read_answer(self, data):
        """(pid, fd, preloaded modules as a frozenset, no more spares) of an
        answer ``[pid, fd, error, preloaded, final]``.  Its end after the fd
        is the same bytes at every answer while the template's modules do
        not change (~2.5 KB, ~200 names): then, for the loop in C's answer
        (the two ints as int 32s: spares.c), only those are decoded."""
        import msgpack

        tail = self._tail
        if (tail is not None and len(data) == _ANSWER_HEAD.size + len(tail) and data[0] == 0x95
                and data[1] == data[6] == 0xd2 and data[_ANSWER_HEAD.size:] == tail):
            pid, fd = _ANSWER_HEAD.unpack_from(data)
            return pid, fd, self._tail_got[0], self._tail_got[1]
        u = msgpack.Unpacker(raw=False)
        u.feed(data)
        if u.read_array_header() != 5:
            raise ValueError("bad answer from the template")
        pid, fd = u.unpack(), u.unpack()
        if type(fd) is not int:
            raise ValueError("bad answer from the template")
        cut = u.tell()
        _err, preloaded, final = u.unpack(), frozenset(u.unpack()), u.unpack()
        if u.tell() != len(data):
            raise ValueError("bad answer from the template")
        self._tail, self._tail_got = data[cut:], (preloaded, final)
        return pid, fd, preloaded, final

    def _answer(self, maxfds):
        """One message from the template: (bytes, fds), with at most
        ``maxfds`` descriptors, received into a buffer kept for the handle's
        life (``recv_fds`` allocated a fresh 1 MB bytes object for each
        answer: an ``mmap`` + ``mremap`` + ``munmap`` a start).  ValueError
        for a message cut to fit (:func:`_receive`)."""
        if self._rbuf is None:
            self._rbuf = _receive_buffer()
        return _receive(self._sock, self._rbuf, maxfds)

    def _take_spare(self, preload, wait=True):
        """The oldest spare we hold that is alive and has ``preload``
        imported, waiting for one asked for if we hold none (with
        ``wait``); else None.
        Those that died or lack ``preload`` are killed and reaped (our
        children: the template forked them with CLONE_PARENT).  Returns
        with no answer in flight if it returns None (the template's socket
        is then free for a fork request)."""
        self._collect(wait=False)
        while True:
            keep = []
            for spare in self._spares:
                if spare.dead() or (spare.fits is not preload
                                    and any(m not in spare.preloaded for m in preload)):
                    _reap(spare)
                else:
                    spare.fits = preload      # (the same list object: _preload_of)
                    keep.append(spare)
            self._spares = keep
            if keep:
                return keep.pop(0)
            if not self._asked or not wait:
                return None
            self._collect(wait=True)

    # --- spawning -----------------------------------------------------
    def spare_due(self):
        """Seconds until the spare wanted must be asked for (None: none is
        wanted), or a program's template made or stopped for idleness (the
        other options' templates' too)."""
        by = None
        for h in (self, *self._others.values()):
            idle = () if h is self else (h.used + PROGRAM_IDLE,)
            for t in (h._want_by, *idle, *(t for ph in list(h._programs.values())
                                           for t in (ph._want_by, ph.used + PROGRAM_IDLE))):
                if t is not None and (by is None or t < by):
                    by = t
        if by is None:
            return None
        import time
        return max(0.0, by - time.monotonic())

    def ask_wanted(self):
        """Ask the template for the spare wanted since the last hand-over,
        if any, and the programs' templates for theirs (making the one
        wanted, stopping those unused for :data:`PROGRAM_IDLE`): called by
        the shepherd when a child exits (a CPU is freed) and when
        :meth:`spare_due` says it is time; those of the other options'
        templates too, stopping those unused as long.  Never waits for a
        spawn in progress (that spawn asks itself)."""
        if (self._want is None and not self._programs and self._make is None
                and not self._others) or not self._lock.acquire(blocking=False):
            return
        try:
            if self._others:
                self._reap_others()
            for h in (self, *self._others.values()):
                h._ask_wanted()
        finally:
            self._lock.release()

    def _ask_wanted(self):
        """:meth:`ask_wanted` for this handle, its lock held."""
        if self._want is not None:
            self._ask_spare(self._want, start=False)
        if self._make is not None:
            self._make_program(*self._make)
        if self._programs:
            self._reap_programs()
            for ph in list(self._programs.values()):
                if ph._want is not None:
                    ph._ask_spare(ph._want, start=False)
        if self._want is None:
            self._want_by = None      # (it was due for _make only)

    def _reap_others(self):
        """Stop the other options' templates (:class:`_Options`) unused for
        :data:`PROGRAM_IDLE` seconds, with their spares and programs'
        templates, as the programs' templates are: a program that ran with
        those options once (a test's ``-W``, another program attached for
        a while) keeps no template, its spares and their memory for the
        runtime's life.  Their next start makes one again."""
        import time

        now = time.monotonic()
        for key, h in list(self._others.items()):
            if now - h.used > PROGRAM_IDLE:
                del self._others[key]
                h.close()

    # --- the programs' templates --------------------------------------
    def _program_key(self, preload):
        """The program template an mp start's ``preload`` list names (its
        last item, ``?@program:KEY``: ember.mp.context), or None."""
        k = self._key_of
        if k[0] is preload:
            return k[1]
        key = None
        if preload and preload[-1].lstrip("?").startswith(PROGRAM_PREFIX):
            key = preload[-1].lstrip("?")[len(PROGRAM_PREFIX):] or None
        self._key_of = (preload, key)
        return key

    def _program_spawn(self, key, preload, args, envp, cwd, fds):
        """Hand the request to a spare of the template of program ``key``
        (the pid), or return 0: it has none ready (the warm template's
        spare or fork serves the start, exactly as before), or there is no
        such template yet (it is made when the next spare is asked for:
        :meth:`_make_program`).  Never waits for the program's template."""
        import time

        ph = self._programs.get(key)
        if ph is not None and ph.fits is not preload:
            if any(m not in ph.preloaded for m in preload):
                self._drop_program(key)   # made before the parent imported more: made again
                ph = None
            else:
                ph.fits = preload         # (the same list object: _preload_of)
        if ph is None:
            if key not in self._refused and PROGRAMS > 0:
                self._make = (key, preload)
                self._want_by = min(self._want_by or float("inf"),
                                    time.monotonic() + SPARE_DELAY)
            return 0
        spare = ph._take_spare(preload, wait=False)
        if spare is None:
            if ph._pid is None:           # it died: made again at a later start
                self._drop_program(key)
            else:
                ph._want, ph._want_by = preload, time.monotonic()
            return 0
        err = _check_cwd(cwd)
        if err is not None:
            ph._spares.insert(0, spare)   # a bad run_dir keeps the spare
            raise OSError(err[0], err[1])
        if not _hand_over(spare, args, envp, cwd, fds):
            _reap(spare)
            return 0
        _t("S.handed")
        ph.gave += 1
        ph.used = now = time.monotonic()
        self._programs[key] = self._programs.pop(key)        # most recently used last
        ph._want, ph._want_by = preload, now + SPARE_DELAY
        return spare.pid

    def _make_program(self, key, preload):
        """Make the template of program ``key`` from a spare we hold that
        has ``preload`` (the warm template's run of its main module among
        it): it is sent ``["program", key]``, with a new socket to us as
        its fd 0 (template._program_main), and asked for its spares.  None
        held: the next start asks again.  The least recently used of
        :data:`PROGRAMS` is stopped for it."""
        import msgpack

        self._make = None
        if key in self._programs or key in self._refused:
            return
        self._collect(wait=False)
        for i, spare in enumerate(self._spares):
            if all(m in spare.preloaded for m in preload) and not spare.dead():
                del self._spares[i]
                break
        else:
            return
        socket = _socket()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            socket.send_fds(spare.sock, [msgpack.packb(["program", key])],
                            [theirs.fileno(), self._out_fd, self._err_fd])
        except OSError:
            mine.close()
            _reap(spare)
            return
        finally:
            theirs.close()
        spare.sock.close()
        while len(self._programs) >= PROGRAMS:
            self._drop_program(next(iter(self._programs)))
        ph = self._programs[key] = _Program(self, spare.pid, mine, spare.preloaded)
        ph._ask_spare(preload, start=False)
        self._ask_spare(preload, start=False)     # the spare it took

    def _reap_programs(self):
        """Stop the programs' templates that died (their zombies, and
        their groups' children not handed over, reaped) or that were
        unused for :data:`PROGRAM_IDLE` seconds."""
        import time

        now = time.monotonic()
        for key, ph in list(self._programs.items()):
            if ph._pid is None or now - ph.used > PROGRAM_IDLE or ph.exited():
                self._drop_program(key)

    def _drop_program(self, key):
        """Stop the template of program ``key`` and reap the spares we hold
        of it.  One that refused (its run could not be put in place: its
        answer said no more spares) is not made again for ``key``."""
        ph = self._programs.pop(key)
        if ph._no_spares and not ph.gave:
            if len(self._refused) >= 64:
                self._refused.clear()
            self._refused.add(key)
        ph.close()

    def spawn(self, p_uid, args, envp, cwd, stdin_fd, out_fd, err_fd):
        """Start a child running ``args`` (``-m ember._worker ...``); return
        its pid (a child of this process).  OSError on failure (nothing
        left running).  The request goes straight to the spare we hold
        when there is one (one ``sendmsg``, no reply to wait for); then the
        next spare is *wanted*: asked for when a child exits or after
        :data:`SPARE_DELAY` (:meth:`ask_wanted`), not at once, so that the
        template's clone and the new spare's first page faults do not
        compete for the CPUs with the child just started (on two cores
        they delayed it by 0.5-2 ms).  Without a spare the template forks
        the child, and is asked for the next spare at once (a burst of
        starts)."""
        if _request_size(args, envp, cwd) > _request_max():
            # Too large for the template's and the spares' sockets (one
            # message each: EMSGSIZE): the environment travels by execve
            # (E2BIG beyond the kernel's ARG_MAX, as spawn's would).
            return _spawn_fresh(args, envp, cwd, stdin_fd, out_fd, err_fd)
        with self._lock:
            if _HOLD_SPAWN:
                _env.hold_at(_HOLD_SPAWN)
            return self._spawn(p_uid, args, envp, cwd, stdin_fd, out_fd, err_fd)

    def _preload_of(self, args):
        """The preload list of the worker's ``args`` (empty if they are
        not the worker's): the last request's list object while its
        ``--preload=`` text is the same (each start of a process's
        children: ~200 names, split and checked again each time)."""
        try:
            text = _scan(args[2:])[1]
            if text is not None and text == self._preload_text:
                return self._preload
            preload = parse_argv(args[2:])[1]
        except (Exception, SystemExit):
            return []
        self._preload, self._preload_text = preload, text
        return preload

    def _for_options(self, args, fresh=False):
        """The handle whose template has the interpreter options of the
        worker's ``args`` (its ``--flags=`` text, the parent's: the same
        text, the same options): this one, whose template is started with
        those of the first start it serves (a runtime's starts are most
        often all one program's: one template, as fast as any), or the
        template of other options (:class:`_Options`), made on their first
        start and kept while used (:meth:`_reap_others`); this one too for
        options no template is made with (:func:`_templated`) or whose
        template never came up (:meth:`_spawn`; ``fresh``: this start's
        exited at its start-up), and beyond :data:`OPTIONS` others: its
        child execs a fresh interpreter with them."""
        flags = _flags_of(args)
        if flags == self._made_for:
            return self
        key = flags.partition(FLAGS_KEY_END)[0]
        made = not fresh and _templated(flags) and key not in self._untemplated
        if self._made_for is None:
            self._made_for = flags if made else False
            return self
        h = self._others.get(key)
        if h is None:
            if not made or len(self._others) >= OPTIONS:
                return self
            h = self._others[key] = _Options(self, flags)
        return h

    def _spawn(self, p_uid, args, envp, cwd, stdin_fd, out_fd, err_fd, fresh=False):
        h = self._for_options(args, fresh)
        if h is not self:
            import time
            h.used = time.monotonic()     # (stopped once unused: _reap_others)
        try:
            return h._start_child(p_uid, args, envp, cwd, [stdin_fd, out_fd, err_fd])
        except OSError:
            if h._up or h._made_for is False:
                raise             # (the start's own error, or a template that ran)
        # A template never came up with those options, twice: this start's
        # child execs a fresh interpreter with them.  If it exited at its
        # start-up (one of its imports fails under them, -W error and a
        # warning), none is made with them again: so do the children of
        # those options from now on.  If a signal killed it (by hand, the
        # OOM killer), the next start makes one again (every child of the
        # options was a fresh interpreter for the runtime's life), and
        # this one's child is started fresh by us: the warm template's
        # handle is left to be made, with the options of its next start
        # (made without them for this child, it stayed, unused, and the
        # next start made an _Options one too).
        if not h._killed:
            if len(self._untemplated) >= 64:
                self._untemplated.clear()
            self._untemplated.add(_flags_of(args).partition(FLAGS_KEY_END)[0])
        if h is self:
            self._stop()
            self._made_for = None if h._killed else False
        else:
            self._others = {k: o for k, o in self._others.items() if o is not h}
            h.close()
        if h._killed:
            return _spawn_fresh(args, envp, cwd, stdin_fd, out_fd, err_fd)
        return self._spawn(p_uid, args, envp, cwd, stdin_fd, out_fd, err_fd, True)

    def _start_child(self, p_uid, args, envp, cwd, fds):
        """:meth:`spawn` by this handle's template (its spares, its
        programs' templates)."""
        preload = self._preload_of(args)
        key = self._program_key(preload)
        if key is not None:
            pid = self._program_spawn(key, preload, args, envp, cwd, fds)
            if pid:
                return pid
        # A spare whose hand-over fails (it died after its look, dead(): a
        # kill lands a moment before the end) is dropped and the next one
        # taken, or the answer to one asked for waited for: the fork below
        # only once _take_spare returned None, with no answer in flight
        # (the template answers in order, and _fork_in_template reads the
        # next message on its socket as its fork's answer).
        while (spare := self._take_spare(preload)) is not None:
            err = _check_cwd(cwd)
            if err is not None:
                self._spares.insert(0, spare)     # a bad run_dir keeps the spare
                raise OSError(err[0], err[1])
            if _hand_over(spare, args, envp, cwd, fds):
                _t("S.handed")
                import time
                self._want = preload
                self._want_by = time.monotonic() + SPARE_DELAY
                return spare.pid
            _reap(spare)
        try:
            return self._fork_in_template(p_uid, args, envp, cwd, fds)
        finally:
            self._ask_spare(preload)

    def _fork_in_template(self, p_uid, args, envp, cwd, fds):
        import msgpack

        req = msgpack.packb([p_uid, args, envp, cwd], use_bin_type=True)
        for attempt in (0, 1):
            if self._sock is None:
                self._start()
            try:
                _socket().send_fds(self._sock, [req], fds)
                if not _fd_ready(self._sock, _REPLY_TIMEOUT):
                    raise TimeoutError("no reply from the template")
                data, _ = self._answer(0)
                if not data:
                    raise ConnectionError("template exited")
                self._up = True
            except (OSError, TimeoutError, ValueError) as exc:
                # (its end of the socket closed: it is on its way out)
                self._killed = isinstance(exc, (ConnectionError, EOFError)) and \
                    _killed(self._pid)
                self._stop()
                if attempt:
                    raise OSError(getattr(exc, "errno", None) or 5,
                                  f"cannot start from the template: {exc}") from None
                continue
            pid, err, *rest = msgpack.unpackb(data, raw=False)
            if pid and not err and not _adopt(pid):
                # It waits for that before it runs (_wait_adopted).
                _kill_child(pid)
                err = [10, "cannot give the child a process group"]
                pid = 0
            for stale in (rest[0] if rest else ()):
                if type(stale) is not int or stale <= 0:
                    continue              # (0 or less would name a group)
                try:                      # a child it could not use: ours to reap
                    os.waitpid(stale, 0)
                except ChildProcessError:
                    pass
            if err:
                if type(pid) is int and pid > 0:
                    try:
                        os.waitpid(pid, 0)        # it was re-parented to us: reap it
                    except ChildProcessError:
                        pass
                raise OSError(err[0], err[1])
            return pid
        raise AssertionError("unreachable")

    def close(self):
        others, self._others = self._others, {}
        for h in others.values():
            h.close()
        for key in list(self._programs):
            self._drop_program(key)
        spares, self._spares = self._spares, []
        for spare in spares:
            _reap(spare)
        self._stop()


class _Program(Template):
    """The shepherd's handle on the template of one program (a spare of the
    warm template that became it: :func:`_program_main`), held by the warm
    template's handle: asked for spares as the warm template is, on its
    socket, never for a fork, never restarted (a dead one is dropped;
    a later start makes another)."""

    def __init__(self, warm, pid, sock, preloaded):
        super().__init__(warm._envp, warm._out_fd, warm._err_fd)
        import time

        self._pid, self._sock = pid, sock
        self.preloaded = preloaded        # what the spare it was made from had preloaded
        self.fits = None                  # the last preload list found in it
        self.used = time.monotonic()      # its last hand-over (or its making)
        self.gave = 0                     # spares of it handed a request

    def _start(self):
        raise OSError(5, "a program's template is not started again")


class _Options(Template):
    """The shepherd's handle on a template of other interpreter options
    than the warm template's, started with them as the warm one is with its
    own (:meth:`Template._for_options`): for the starts of a parent run with
    them (another program of the runtime, one that changed
    ``sys.warnoptions``), their spares and their programs' templates, as
    the warm template's handle is for its own.  Held by that handle, and
    used under its lock; not in the shepherd's loop: found dead by its next
    start or the orphan scan (:meth:`Template.foreign`), and started again
    by its next start.  Stopped when unused for :data:`PROGRAM_IDLE`
    seconds (:meth:`Template._reap_others`) and at teardown."""

    def __init__(self, warm, flags):
        super().__init__(warm._envp, warm._out_fd, warm._err_fd)
        import time

        self._lock = warm._lock
        self._made_for = flags
        self.used = time.monotonic()      # its last start (or its making)


def _spawn_fresh(args, envp, cwd, stdin_fd, out_fd, err_fd):
    """Start the worker's ``args`` in a fresh interpreter with their
    options (no template): a child of ours, its own process group."""
    return _spawn_process(sys.executable, _fresh_argv(args[2:], _flags_of(args)), envp,
                          cwd, stdin_fd, out_fd, err_fd, new_pgrp=True)


def _killed(pid):
    """Whether our child ``pid``, which closed its end of our socket (it
    exits), ended by a signal: False if it has not ended after a moment
    (it closed it otherwise) or ended by an exit."""
    import time

    deadline = time.monotonic() + 0.5
    while True:
        try:
            si = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (OSError, TypeError):
            return False
        if si is not None:
            return si.si_code != os.CLD_EXITED
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def _reap(spare):
    """Kill a spare we hold and reap it (the shepherd's child)."""
    pid = spare.discard()
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _adopt(pid):
    """Take ``pid``, a child the template named in an answer, out of the
    template's process group: it leads a group of its own from now on
    (``setpgid`` by its parent, us).  Until then it is in the template's
    group, and if the template dies before its answer is read it is killed
    and reaped with that group (:func:`_reap_group`).  False if that
    failed (it is not ours as it should be)."""
    if type(pid) is not int or pid <= 0:
        return False
    try:
        os.setpgid(pid, pid)
    except OSError:
        return False
    return True


#: The head of the loop in C's answer (spares.c): a fixarray of 5, the pid
#: and the fd as msgpack int 32s (their 0xd2 markers skipped here).
_ANSWER_HEAD = struct.Struct(">xxixi")
#: Whether the shepherd can take its end of a spare's pair from the spare
#: (pidfd_getfd: :func:`_take_ok`): None until probed.
_TAKE = [None]


def _take_ok(pid):
    """Whether we may take fds from our child ``pid`` (a template) with
    ``pidfd_getfd`` (the spares' are its clones: the same credentials, our
    children too, by CLONE_PARENT): probed once, by asking for fd -1 (EBADF:
    allowed, no such fd; EPERM, ENOSYS, a seccomp filter's errno: not
    here).  Not allowed, the spares' ends come with the template's answers
    (``SCM_RIGHTS``), as they did before: kernels before 5.6, a container's
    seccomp profile, a ptrace policy (Yama's ``ptrace_scope`` 2 or 3
    without CAP_SYS_PTRACE).  A ``pid`` that is gone decides nothing
    (False this time)."""
    if _TAKE[0] is None:
        if type(pid) is not int or pid <= 0:
            return False
        try:
            _take_end_c(pid, -1)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return False
            _TAKE[0] = exc.errno == errno.EBADF
        else:
            _TAKE[0] = True           # (no fd -1: not reached)
    return _TAKE[0]


def _take_end(pid, fd):
    """Our end of the socket pair of spare ``pid``, its fd ``fd``, taken
    from it (``pidfd_getfd``): ``[fd]``, or ``[]`` if it cannot be (the
    spare exited: ESRCH, EBADF; not allowed after all: the next spare
    requests have the end sent, :func:`_take_ok`)."""
    if type(pid) is not int or pid <= 0 or fd > 0x7fffffff:
        return []                     # (an answer that names no child of ours)
    try:
        return [_take_end_c(pid, fd)]
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EBADF):
            _TAKE[0] = False
        return []


def _kill_child(pid):
    """Kill and reap ``pid`` if it is a child of ours not yet reaped (so
    its pid is still its own); nothing otherwise (nor for a ``pid`` that
    is no process's: 0 or less would name a group)."""
    if type(pid) is not int or pid <= 0:
        return
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return                    # it had exited: reaped now
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _reap_group(pgid):
    """Kill and reap what is left in the process group of a template that
    died (``pgid``, its pid), and the template itself, its zombie: the
    children it made that we did not :func:`_adopt`, each ours
    (CLONE_PARENT, or re-parented to us: we are the subreaper).  A spare
    cloned whose answer the template never sent (killed between the clone
    and its ``sendmsg``) is one: nothing else tells us its pid.  The
    group's id cannot have been reused while it has a member, the
    template's zombie included (reaped here, not before: once the group
    is empty a new process could be given that pid and lead a group of
    that id, one of ours from :func:`_adopt` or anyone's)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:               # (ProcessLookupError: no member, zombies included)
        return
    while True:
        try:
            os.waitpid(-pgid, 0)
        except ChildProcessError:
            return


def _receive(sock, buf, maxfds, flags=0):
    """One message from ``sock`` received into ``buf`` (a writable buffer
    of :data:`_MAX_MSG` bytes): (bytes, fds), with at most ``maxfds``
    descriptors.  A message cut to fit (``MSG_TRUNC``: the kernel drops
    the rest; ``MSG_CTRUNC``: descriptors lost) is never taken for a whole
    one: its descriptors are closed and ValueError raised.  (Not
    ``socket.recv_fds``: a fresh buffer a call, and before Python 3.12 it
    ignores ``flags``.)"""
    socket = _socket()
    n, anc, got, _ = sock.recvmsg_into([buf], socket.CMSG_LEN(maxfds * 4) if maxfds else 0,
                                       flags)
    fds = []
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(int.from_bytes(cdata[i:i + 4], sys.byteorder, signed=True)
                       for i in range(0, len(cdata) - len(cdata) % 4, 4))
    if got & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a message from the template cut to fit (flags {got:#x})")
    return buf[:n], fds


def _reap_unread(sock, buf=None):
    """Read what the template, gone (reaped), left unread in ``sock``: the
    child each answer names is ours (its spare, or a late fork's) and no
    one else knows it; killed and reaped.  (Its socket closed unread, a
    spare would see EOF and exit, a zombie of ours.)  An answer cut to fit
    ``buf`` names no pid we can read: that child is still in the
    template's group (:func:`_reap_group`)."""
    import msgpack

    socket = _socket()
    if buf is None:
        buf = _receive_buffer()
    while True:
        try:
            data, fds = _receive(sock, buf, 1, socket.MSG_DONTWAIT)
        except ValueError:
            continue
        except OSError:               # (BlockingIOError: nothing left)
            return
        for fd in fds:
            os.close(fd)
        if not data:
            return
        try:
            pid = msgpack.unpackb(data, raw=False)[0]
        except Exception:
            continue
        _kill_child(pid)


# ----------------------------------------------------------------------
# the template process
# ----------------------------------------------------------------------
_preloaded = set()      # every module a preload list has named (imported or not)


def _preload(modules):
    """Import ``modules``; a name that starts with ``?`` is optional (no
    message if it cannot be imported).  ``?@mpmain:...`` names the main
    module of a multiprocessing program, run here only if it just defines
    (``ember.mp._mainload``)."""
    import importlib

    imported = False
    unfilter = _filter_at_fork()    # logging's hooks, when a preload brings it
    try:
        for m in modules:
            _preloaded.add(m)
            quiet = m.startswith("?")
            m = m.lstrip("?")
            if m.startswith(PROGRAM_PREFIX):
                continue          # (names a program's template: nothing to import)
            if m.startswith("@mpmain:"):
                # the main module of a multiprocessing program (ember.mp._mainload)
                from ..mp import _mainload

                _mainload.preload(m)
                imported = True
                continue
            if m in sys.modules:
                continue
            try:
                importlib.import_module(m)
                imported = True
            except BaseException as exc:   # the child will import it (and fail) itself
                if not quiet:
                    print(f"ember template: cannot preload {m!r}: {type(exc).__name__}: {exc}",
                          file=sys.stderr, flush=True)
    finally:
        if unfilter is not None:
            unfilter()
    if imported:
        _reseed_numpy_in_children()
        _freeze()
    else:                   # a module that failed may have changed os.environ
        _take_environ()


#: [True] in the template once :func:`_reseed_numpy` is an at-fork hook.
_numpy_reseed = [False]


def _reseed_numpy_in_children():
    """Once ``numpy.random`` is imported here (a preload, a module the
    program's main imports), give each child its own state of numpy's
    global generator (``np.random.rand()``, ``randint``...): it was seeded
    once, here, and every child drew the same numbers, where spawn's child
    (and a fresh interpreter) seeds it at its import.  Python's ``random``
    reseeds itself after a fork; numpy does not."""
    if not _numpy_reseed[0] and "numpy.random" in sys.modules:
        _numpy_reseed[0] = True
        os.register_at_fork(after_in_child=_reseed_numpy)


def _reseed_numpy():
    """After a fork of the template (a spare's clone: off the start path;
    ~2 us): 256 bits of the OS's entropy.  Not in a fork that the child
    makes itself (its flag is cleared here), which keeps its parent's
    state as after any fork."""
    if _numpy_reseed[0]:
        _numpy_reseed[0] = False
        try:
            np = sys.modules["numpy"]
            np.random.seed(np.frombuffer(os.urandom(32), dtype=np.uint32))
        except Exception:
            pass


def _freeze():
    """``gc.freeze()`` (after a collection): what the template holds is
    left out of the cyclic collector's passes, in the template and in every
    child, so that a collection in a child does not walk (and, writing to
    their headers, copy) the pages of the template's objects; a child
    that reaches the collector's thresholds pays only for its own
    objects.

    Then ``malloc_trim(0)``: the free pages of the C heap (buffers of
    what was just imported or parsed, freed but kept by malloc) are given
    back, so that they are no longer mapped here: each clone copies the
    page table entries of every page the template maps, each child's exit
    unmaps them again, and a child's allocations that landed on them wrote
    to a page of the template's (a copy-on-write fault).

    Last, the interpreter's type attribute cache is cleared (its names set
    to ``None``): each lookup a child misses replaces an entry, and
    releasing the name it held, a string anywhere in the template's heap,
    wrote that string's page.  Cleared here, the entries the children
    replace hold ``None`` (or what the template looked up since, which is
    what its children look up too): an ``"ember"``-method child writes ~33
    fewer pages, an ``ember.Process`` child as many as before
    (docs/multiprocessing.md, "Thirteenth pass").  Then a call is
    rehearsed (``ember._worker.rehearse``): what a child's call looks up
    is in the cache, each child's look-up a hit, no entry written (an
    ``ember.Process`` child ~14 fewer faults, most of them between its
    call and its exit: docs/python-processes.md, "Seventh pass")."""
    import gc

    _take_environ()
    gc.collect()
    gc.freeze()
    _trim_heap()
    clear = getattr(sys, "_clear_type_cache", None)
    if clear is not None:
        clear()
        if _default_pool is not None:
            _rehearse(_default_pool)
    _note_quiet_end()


def _take_environ():
    """Take the template's environment as its children compare theirs
    against it (:data:`_environ_kv`, :data:`_environ_blob`), and what else
    they compare with their parent's: its process state (umask, nice,
    CPU affinity, resource limits: ``_spawn.proc_state_note``) and its
    interpreter options (:data:`_flags`)."""
    global _environ_kv, _environ_blob, _flags
    _environ_kv = frozenset(k + b"=" + v for k, v in os.environb.items())
    _environ_blob = b"".join(kv + b"\0" for kv in sorted(_environ_kv))
    _proc_state_note()
    _flags = _flags_key(_startup_env(os.environ)) if _made_for is None else _made_for


#: The template's environment as ``b"K=V"`` items, taken by :func:`_take_environ`
#: (after start-up and after each preload, imported or not: nothing else
#: changes it).
_environ_kv = None
#: The same, each item ended by a NUL, for a spare's request read in C
#: (:func:`_spare_main`, ``_spawn.spare_request``).
_environ_blob = None
#: The key of the template's interpreter options (``_worker.flags_key``):
#: a child whose parent's (its worker's ``--flags=KEY...``) is another
#: execs a fresh interpreter with the parent's options (:func:`_child`).
_flags = ""
#: The key of the options this template was started with for its
#: parents (``python OPTIONS -m ember._template --flags=KEY...``,
#: :meth:`Template._start`), which is then its :data:`_flags`: it is what a
#: fresh interpreter with those options is (where the runtime's environment
#: adds to them, ``PYTHONWARNINGS`` to ``-W``, spawn's child and the fresh
#: one have that too); None: its own key (started without ``--flags=``).
_made_for = None


def _set_env(envp):
    """Make this process's environment exactly ``envp`` (a list of
    ``b"K=V"``), touching only the variables that differ (the template's
    environment is the runtime's, so most are already right).  A child of
    the template finds them by set operations against :data:`_environ_kv`
    (its environment as the template froze it): walking ``os.environ``
    would write to the reference count of each of its keys and values,
    ~45 page faults of copy-on-write in every child."""
    env = os.environb
    have = _environ_kv
    if have is None or len(have) != len(env):      # not as the template left it
        have = frozenset(k + b"=" + v for k, v in env.items())
    want = frozenset(envp)
    new = {}
    for kv in want - have:
        k, _, v = kv.partition(b"=")
        new[k] = v
    for kv in have - want:
        k = kv.partition(b"=")[0]
        if k not in new:
            del env[k]
    for k, v in new.items():
        env[k] = v


def _detach(shepherd_pid, keep=-1):
    """The steps of a child that need nothing of its request: the
    parent-death signal (checking the parent is the shepherd), every
    inherited fd above 2 closed but ``keep``, the default SIGINT handler.
    Returns the step that failed, or None.  (Its process group is the
    shepherd's to make: :func:`_adopt`, :func:`_wait_adopted`.)"""
    step = "set the parent-death signal"
    try:
        set_pdeathsig(signal.SIGKILL)
        if os.getppid() != shepherd_pid:
            raise OSError(0, "the shepherd exited")
        step = "close inherited fds"
        if keep >= 3:
            os.closerange(3, keep)
            os.closerange(keep + 1, 1 << 20)
        else:
            os.closerange(3, 1 << 20)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except BaseException as exc:
        return f"{step}: {exc}"
    return None


def _run_atexit():
    """What an interpreter's exit runs, in its order: the non-daemon
    threads waited for (``threading._shutdown``, as ``Py_FinalizeEx``
    does: an ``ember.Process`` child's thread, or a thread pool's task,
    was cut off at its exit where a fresh interpreter's child finishes it),
    then the child's ``atexit`` handlers (its own, and those it has from
    the template: ember's, logging's), but ``logging.shutdown`` when
    logging has no handler to flush and close but its ``lastResort``
    (stderr, which is flushed at the exit anyway): running it for nothing
    cost each child ~25 page faults of copy-on-write."""
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    logging = sys.modules.get("logging")
    try:
        idle = logging is not None and all(
            wr() in (None, logging.lastResort) for wr in logging._handlerList)
    except Exception:
        idle = False
    if idle:
        atexit.unregister(logging.shutdown)
    atexit._run_exitfuncs()


#: The ``atexit`` registrations a template may hold that do nothing in a
#: child that started, registered and logged nothing (:func:`_end_quietly`):
#: each module's, made at its import, and what would give it something
#: to do, as ``(attribute, op, arg)`` checks of the module's dict
#: (``_spawn.quiet``: an attribute not there is not quiet).
_QUIET_HOOKS = (
    ("multiprocessing.util", 1, (("_finalizer_registry", QUIET_EMPTY, None),   # _exit_function
                                 ("_logger", QUIET_IS, None))),
    ("multiprocessing.process", 0, (("_children", QUIET_EMPTY, None),)),       # (util's too)
    ("ember.objects.process", 2, (("_live", QUIET_EMPTY, None),               # _exit_function
                                  ("_lease", QUIET_IS, None),                 # _forget_lease
                                  ("_parked", QUIET_IS, None))),
    ("ember.objects.executor", 1, (("_executors", QUIET_EMPTY, None),)),      # _python_exit
    ("threading", 0, (("_shutdown_locks", QUIET_AT_MOST, 1),  # the main thread's: no other
                      ("_threading_atexits", QUIET_EMPTY, None))),
    ("logging", 1, ()),                                  # shutdown: its handlers, below
    ("ember._trace", 1 if _trace.on else 0, ()))         # flush: _end_quietly's
#: Whether ``atexit._ncallbacks()`` counts registrations here (None: not
#: tried yet; :func:`_note_quiet_end`).
_atexit_counts = None
#: The shepherd's pid (the template's parent), set once at the start.
_shepherd_pid = None


def _note_quiet_end():
    """At a freeze: whether this template's children may end quietly
    (:func:`_end_quietly`), and what they compare to know it
    (``_spawn.quiet_note``: the modules' dicts and the names looked up
    here, not in every child).  Only where CPython counts ``atexit``
    registrations (``atexit._ncallbacks()`` grows at each ``register``,
    an ``unregister`` leaves a hole: 3.10 to 3.12; tried once here, by a
    function registered and unregistered), when every registration the
    template made is one of :data:`_QUIET_HOOKS` or ``weakref.finalize``'s
    (their count is all of it) and logging has no handler but its
    ``lastResort``."""
    global _atexit_counts
    _quiet_note(None)
    if _atexit_counts is None:
        n = atexit._ncallbacks()
        atexit.register(_note_quiet_end)
        atexit.unregister(_note_quiet_end)
        _atexit_counts = atexit._ncallbacks() == n + 1
    mods = sys.modules
    n = atexit._ncallbacks()
    finalize = mods["weakref"].finalize     # (its exit function registered at its first use)
    fin = finalize._registered_with_atexit
    if not _atexit_counts or n != 1 + fin + sum(k for m, k, _ in _QUIET_HOOKS if m in mods):
        return
    checks = [(vars(mods[m]), name, op, arg) for m, _, c in _QUIET_HOOKS if m in mods
              for name, op, arg in c]
    logging = mods.get("logging")
    if logging is not None:
        hl = logging._handlerList
        if not all(wr() in (None, logging.lastResort) for wr in hl):
            return
        checks.append((vars(logging), "_handlerList", QUIET_SAME_END,
                       (len(hl), hl[-1] if hl else None)))
    _quiet_note((n, fin, finalize, atexit._ncallbacks, _shepherd_pid,
                 ("_registered_with_atexit", "_registry", "atexit"), tuple(checks),
                 (_outboard._mapped_for, _env.RUNTIME_ID.encode(), _env.P_UID.encode())))


def _end_quietly():
    """A template child's end once its call returned (an ``"ember"``-method
    child's target, an ``ember.Process``'s result sent), when nothing is
    left to run (:func:`_quiet`): its streams flushed, its output board
    entry marked, its memory handed to a holder, ``os._exit(0)``, without
    the generic exit's steps that would do nothing (a ``SystemExit``
    through the worker's frames, ``threading._shutdown``, the ``atexit``
    hooks that return at once), whose first run in each child wrote pages
    it shares with the template.  Returns, and the caller goes on with
    that exit, when anything is left to run, a flush fails or the call
    put other streams in the place of ``sys.stdout`` or ``sys.stderr``."""
    try:
        if not _quiet():    # (quiet.h, ember_quiet; what it checks: _QUIET_HOOKS)
            return
        out, err = sys.stdout, sys.stderr
        if out is not sys.__stdout__ or err is not sys.__stderr__:
            return          # (replaced: the exit flushes the first ones too, _say_clean)
        out.flush()
        err.flush()
    except Exception:
        return
    if _trace.on:
        _t("C.exit")
        _trace.t_faults("C.faults_exit", cpu=True)
        _trace.flush()
    _quiet_mark()       # (_outboard.exiting's, in C)
    try:
        _exit_holder(_shepherd_pid)
    finally:
        os._exit(0)


def _child(args, envp, cwd, fds, gate_r, middle_pid, shepherd_pid, detached=False,
           env_sets=None, lease=None):
    """In the real child: set up, run the worker.  Never returns.  With
    ``detached`` (a spare), :func:`_detach` has been done already; ``fds``
    None: they are in place (a spare's, by :func:`_spare_wait`).  With
    ``env_sets`` (a spare's request read by :func:`_spare_request`) the
    environment is the template's with those ``(key, value)`` set, and
    ``envp`` is None.  With ``lease``, ``(call, result, token)``, a lease
    set up in C as far as its wait for its call (``_spawn.spare_wait``):
    the worker's :func:`ember._worker.lease` runs at once, ``args`` being
    its ``sys.argv``."""
    code = 127
    step = "start"
    if not detached and _template_comm and spare_token(args) is not None:
        # a lease forked for its request: named as one from here on (ember
        # ps); whether its death is reported is GS's to say (claimed or
        # not: the shepherd's _on_exit), whatever its name
        _comm(LEASED_COMM)
    try:
        if lease is None:
            if gate_r >= 0:
                step = "wait for re-parenting"
                while os.read(gate_r, 1):   # EOF once the intermediate process has exited
                    pass
                os.close(gate_r)
                while os.getppid() == middle_pid:
                    os.sched_yield()
            step = "set up stdin/stdout/stderr"
            if fds is not None:
                for i, fd in enumerate(fds):
                    if fd != i:
                        os.dup2(fd, i)
            if detached:
                for fd in fds or ():
                    if fd > 2:
                        os.close(fd)
            else:
                err = _detach(shepherd_pid)       # closes the fds above 2 too
                if err is not None:
                    step, _, msg = err.partition(": ")
                    raise OSError(0, msg)
            step = f"change to run_dir '{cwd}'"
            if cwd:
                os.chdir(cwd)
            step = "set the environment"
            if env_sets is None:
                _set_env(envp)
            else:
                _spare_setenv(env_sets, os.environ._data)
            step = "wait for the shepherd"
            _wait_adopted()
            flags = _flags_of(args[2:])
            if flags.partition(FLAGS_KEY_END)[0] != _flags:
                # sys.flags cannot change after start-up: the parent's
                # options are had as spawn has them, in a fresh interpreter
                # (this process, its p_uid, stdio, directory, environment)
                step = "start a fresh interpreter with the parent's options " \
                    + repr(_fresh_argv([], flags)[1:-2])
                for f in (sys.stdout, sys.stderr):
                    f.flush()
                argv = _fresh_argv(args[2:], flags)
                os.execv(argv[0], argv)
        step = "run"
        if _trace.on:           # (a label's call and string: pages a child writes)
            _t("C.run")
            _trace.t_faults("C.faults_run")

        if _HOLD_LEASE:
            _hold_lease(args)
        if lease is None:
            sys.argv = ["-m"] + list(args[2:])
            code = _run_worker(list(args[2:]))
        else:
            sys.argv = args
            code = _lease_worker(*lease, _default_pool, _lease_rename)
        if code == 0:
            _end_quietly()
        _run_atexit()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        if step == "run":
            import traceback

            traceback.print_exc()
            code = 70
        else:
            try:
                print(f"ember template child: cannot {step}: {exc}", file=sys.stderr)
            except Exception:
                pass
    finally:
        if _trace.on:
            _t("C.exit")
            _trace.t_faults("C.faults_exit", cpu=True)
            _trace.flush()
        if code == 0:
            _say_clean()
        # The memory handed to a holder that unmaps it after the exit
        # (spares.h): the joiner is woken without waiting for that.
        flush_and_exit(code, lambda: _exit_holder(shepherd_pid))


def _wait_adopted():
    """In a child, before its worker runs: wait until the shepherd has
    given it a process group of its own (:func:`_adopt`, when it reads the
    template's answer naming it; a spare's was made before its request
    was sent, so this returns at once).  A child whose template died
    before that answer is never adopted: it waits here, in the template's
    process group, until the shepherd kills and reaps that group
    (:func:`_reap_group`), and never runs its request, which the shepherd
    hands to a child of a new template (the one it knows)."""
    me = os.getpid()
    spins = 0
    while os.getpgrp() != me:
        if spins < 200:
            spins += 1
            os.sched_yield()
        else:
            select.select([], [], [], 0.0002)


def _say_clean():
    """A child exiting with code 0: flush, then say on the output board
    whether all it wrote is out (its joiner waits for GS otherwise)."""
    try:
        out, err, *others = std_streams()
        out.flush()
        err.flush()
        for f in others:            # (the originals of replaced ones: as the exit's)
            try:
                f.flush()
            except Exception:
                pass
        _outboard.exiting()
    except Exception:
        pass


#: ``(tid_addr, robust_head, robust_len)`` of a raw clone (the C set-up,
#: ``_spawn.clone_setup``; see :func:`_clone_parent`), False where it
#: cannot be made exact, None before it was tried.
_clone = None


def _clone_ready():
    """True once the raw clone's set-up has succeeded here (tried once)."""
    global _clone
    if _clone is None:
        _clone = _clone_setup() or False
    return _clone is not False


def _clone_parent():
    """fork() as a sibling: ``clone(CLONE_PARENT | CLONE_CHILD_SETTID |
    SIGCHLD)`` with CPython's before/after-fork steps, so that the child's
    parent is the shepherd (in C: ``_spawn.clone_parent``, spares.h; ctypes
    before, whose _ctypes and libffi were 10 more mappings and ~0.2 MB in
    every clone).  glibc keeps the thread's TID in its thread descriptor
    and registers a *robust list* with the kernel (the pool allocator's
    mutex is a robust, process-shared one: the kernel marks it OWNER_DIED
    when its holder dies); glibc's fork() fixes both in the child, a raw
    clone does not, so the clone does: CLONE_CHILD_SETTID writes the
    child's TID into the descriptor (its address found from the robust
    list's head and checked at the set-up), and the child re-registers the
    robust list at the same address.  Only for a single-threaded template:
    the pthread_atfork handlers of glibc and of libraries do not run.
    Returns the pid (0 in the child); None if unsupported here."""
    if not _clone_ready():
        return None
    return _clone_parent_c(*_clone)


#: Modules whose ``os.register_at_fork`` hooks a raw clone skips
#: (:func:`_filter_at_fork`).  They reset state that only another thread
#: could have left inconsistent (the locks of threading and logging, the
#: thread list), and a raw clone is made only by a single-threaded
#: template, from its main loop, holding none of them: there is nothing
#: to reset.  Their hooks cost each child ~100 page faults of
#: copy-on-write (the Python code they run and the objects it touches).
_CLONE_SKIPS = ("threading", "logging")


def _filter_at_fork():
    """Make the ``os.register_at_fork`` hooks of the modules of
    :data:`_CLONE_SKIPS` do nothing in a raw clone (:func:`_clone_parent`);
    an ``os.fork()`` (a template with threads) runs them as always.  Called
    by the template before it imports them (at its start, and around each
    preload: logging comes with cloudpickle or a program's modules);
    returns the function that undoes the filter (once they are imported),
    or None when all of them are imported already."""
    if all(m in sys.modules for m in _CLONE_SKIPS):
        return None
    real = os.register_at_fork

    def register_at_fork(**hooks):
        if sys._getframe(1).f_globals.get("__name__") in _CLONE_SKIPS:
            hooks = {k: _skip_in_clone(v) for k, v in hooks.items()}
        return real(**hooks)

    def undo():
        os.register_at_fork = real

    os.register_at_fork = register_at_fork
    return undo


def _thread_state():
    """For tests, in a template child: (this thread's TID if glibc's TID
    field holds it, True if the kernel has this thread's robust list
    registered where the template's was), or None when the child was not
    made by _clone_parent's set-up."""
    if not _clone:
        return None
    got = _clone_setup()            # (it checks the TID field)
    if got is None:
        return None, False
    return (os.getpid() if got[0] == _clone[0] else None), got[1] == _clone[1]


def _single_threaded():
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _check_cwd(cwd):
    """None, or the error for a run_dir the child could not change to."""
    if cwd:
        if not os.path.isdir(cwd):
            e = 20 if os.path.exists(cwd) else 2
            return [e, f"bad run_dir '{cwd}'"]
        if not os.access(cwd, os.X_OK):
            return [13, f"bad run_dir '{cwd}'"]
    return None


# ----------------------------------------------------------------------
# the spare: a child forked ahead of the next request
# ----------------------------------------------------------------------
#: Name (``/proc/PID/comm``) of a spare while it waits for its request.
SPARE_COMM = b"ember-spare"


_template_comm = None     # the template's comm, which a spare takes back with its request
_lease_rename = None      # (_spare_name, _template_comm), for _worker.lease


def _comm(name=None):
    """Get (``name`` None) or set this process's comm (``/proc/self/comm``,
    the main thread's: the only thread of a template child); None if
    unavailable.  Through procfs, not ``prctl(PR_SET_NAME)`` by ctypes: a
    foreign call cost each spare ~35 page faults of copy-on-write (ctypes'
    objects and code), a few os calls ~5."""
    try:
        if name is None:
            fd = os.open("/proc/self/comm", os.O_RDONLY)
            try:
                return os.read(fd, 64).rstrip(b"\n")
            finally:
                os.close(fd)
        fd = os.open("/proc/self/comm", os.O_WRONLY)
        try:
            os.write(fd, name[:15])
        finally:
            os.close(fd)
    except OSError:
        return None
    return name


class _Spare:
    """One end of a spare child: its pid (a child of the shepherd, not yet
    known to it as a process), the socket its request goes on, and (on the
    shepherd's side) the modules its template had preloaded when it forked
    it."""

    __slots__ = ("pid", "sock", "preloaded", "fits")

    def __init__(self, pid, sock, preloaded=frozenset()):
        self.pid = pid
        self.sock = sock
        self.preloaded = preloaded
        self.fits = None          # the preload list found in ``preloaded`` (Template._take_spare)

    def dead(self):
        """True if the spare has exited (its end of the socket closed)."""
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        return bool(p.poll(0))

    def discard(self):
        """Kill it; return its pid (the shepherd's child, to be reaped)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.sock is not None:
            self.sock.close()
        return self.pid


def _make_spare(shepherd_pid, keep_peer=False):
    """Fork a spare with :func:`_clone_parent` (so it is the shepherd's
    child from the start): it does every step that needs nothing of a
    request (:func:`_detach`) and waits for one on a socket pair; with
    ``keep_peer`` it keeps the other end (ours, the shepherd's to take from
    it: :func:`_give_spare`) until its request is in.  None where a spare
    cannot be made (threads in the template, no clone)."""
    if not _single_threaded():
        return None
    socket = _socket()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for f in (sys.stdout, sys.stderr):
        f.flush()
    try:
        pid = _clone_parent()
    except OSError:
        pid = None
    if pid == 0:
        peer = mine.detach() if keep_peer else -1
        mine.close()
        _spare_main(_spare_wait(theirs.detach(), shepherd_pid, *_spare_names(), peer),
                    shepherd_pid)
    theirs.close()
    if pid is None:
        mine.close()
        return None
    return _Spare(pid, mine)


def _spare_names():
    """The arguments a spare takes (:func:`_spare_wait`'s): its names while
    it waits, as a lease (ember._worker --spare: named ember-leased from
    its request until its call: killed meanwhile, it is no user process,
    the shepherd reports no death for it), and otherwise once its request
    is in (the template's; None if unknown: then it is not renamed); and
    what a lease's set-up in C needs (the template's environment, its
    ``os.environ`` mapping, SIGINT's handler, its interpreter options'
    key: a lease whose ``--flags=`` has another goes the Python way, to a
    fresh interpreter), None where the request is
    read in Python (no frozen environment)."""
    lease = None
    if _environ_blob is not None and isinstance(getattr(os.environ, "_data", None), dict):
        lease = (_environ_blob, os.environ._data, signal.signal, signal.default_int_handler,
                 os.fsencode(_flags))
    return SPARE_COMM, LEASED_COMM, _template_comm or None, lease


def _spare_main(got, shepherd_pid):
    """In a spare, once :func:`_spare_wait` has returned ``got`` (its steps
    up to its request, done in C: named, detached, the request received,
    its fds made 0, 1, 2, named again): run the request.  Never returns.
    Its template gone (EOF): it exits at once; a request it cannot read:
    it says so and exits 127 (no start of the user's ran)."""
    try:
        if _trace.on:
            _t("C.req")
            _trace.t_faults("C.faults_req")
        kind = got[0]
        if _UNREADABLE and kind == "request" and _env.first_at(_UNREADABLE):
            raise ValueError("a request made unreadable (EMBER_TEST_TEMPLATE_UNREADABLE)")
        if kind == "lease":         # set up in C as far as its wait for its call
            _child(got[1], None, None, None, -1, 0, shepherd_pid, detached=True, lease=got[2:])
        if kind != "request":
            if kind == "spare-error":
                # A shepherd that exited (teardown while this spare was
                # being cloned) is no error: nobody is left to hand it a
                # request.
                if os.getppid() == shepherd_pid:
                    print(f"ember template spare: cannot {got[1]}", file=sys.stderr, flush=True)
                os._exit(127)
            if kind == "child-error":
                print(f"ember template child: cannot {got[1]}", file=sys.stderr, flush=True)
                os._exit(127)
            os._exit(0)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        # Read in C against the template's environment (no msgpack objects,
        # no set operations here); unpacked only when it is not that simple.
        sets = envp = None
        if _environ_blob is not None:
            parsed = _spare_request(got[1], _environ_blob)
            if parsed is not None:
                args, cwd, sets = parsed
        if sets is None:
            import msgpack

            req = msgpack.unpackb(got[1], raw=False)
            if len(req) == 2 and req[0] == "program":
                os._exit(_program_main(req[1], shepherd_pid))
            args, envp, cwd = req
        if got[2] < 0 and _template_comm:       # not read in C: a request of another shape
            _comm(LEASED_COMM if any(a.startswith("--spare=") for a in args)
                  else _template_comm)
    except BaseException as exc:
        # Its request unread (a bug): the start fails, on its own stderr
        # (its fds are the request's), not exit 0, which said it ran (an
        # mp child's exitcode 0 for a call that never ran).
        try:
            print(f"ember template spare: cannot read its request: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
        finally:
            os._exit(127)
    _child(args, envp, cwd, None, -1, 0, shepherd_pid, detached=True, env_sets=sets)


def _hand_over(spare, args, envp, cwd, fds):
    """Give the request to ``spare``; True if it took it."""
    import msgpack

    try:
        _socket().send_fds(spare.sock, [msgpack.packb([args, envp, cwd], use_bin_type=True)],
                           fds)
    except OSError:
        return False
    spare.sock.close()
    return True


def _fork_one(args, envp, cwd, fds, shepherd_pid):
    """Start the child as the shepherd's child; return (pid, error or None)."""
    err = _check_cwd(cwd)
    if err is not None:
        return 0, err
    for f in (sys.stdout, sys.stderr):
        f.flush()
    if _single_threaded():
        pid = _clone_parent()
        if pid == 0:
            _child(args, envp, cwd, fds, -1, 0, shepherd_pid)
        if pid is not None:
            return pid, None
    # Threads (e.g. a preloaded library's pool): a real fork, twice.
    pid_r, pid_w = os.pipe()
    gate_r, gate_w = os.pipe()
    middle = os.fork()
    if middle == 0:                       # intermediate: fork the child, exit
        try:
            os.close(pid_r)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(pid_w)
                os.close(gate_w)
                _child(args, envp, cwd, fds, gate_r, me, shepherd_pid)
            os.write(pid_w, struct.pack("<i", pid))
        finally:
            os._exit(0)
    for fd in (pid_w, gate_r, gate_w):
        os.close(fd)
    try:
        data = os.read(pid_r, 4)
        os.waitpid(middle, 0)             # the child is re-parented once this returns
        if len(data) != 4:
            return 0, [11, "cannot fork"]
        return struct.unpack("<i", data)[0], None
    finally:
        os.close(pid_r)


_default_pool = None


def main():
    global _made_for
    _unset_bind_now()
    flags = _flags_of(sys.argv[1:])
    if flags or "--flags=" in sys.argv[1:]:
        _made_for = flags.partition(FLAGS_KEY_END)[0]
    # Warm up: what every worker needs.
    # Not cloudpickle (nor logging, inspect, dataclasses, uuid, platform,
    # dis, traceback, tokenize, ... that it brings: ~1.8 MB and 16 mappings
    # every clone copies and every child's exit unmaps): a program that
    # ships code by value has it preloaded (ember.objects.process's
    # _offer_cloudpickle).
    unfilter = _filter_at_fork()
    from .. import _worker
    from ..channels_c import Channel  # noqa: F401
    from ..globalservices import channel, pool, process  # noqa: F401
    from ..objects import _pickling, process as _p  # noqa: F401
    import threading  # noqa: F401  (its at-fork hooks filtered)
    _worker._imports()
    if unfilter is not None:
        unfilter()
    # The node's output board (shepherd/outboard.c), inherited by every child.
    _outboard.attach()

    # Map the runtime's default pool once: children inherit the mapping (and
    # the pools binding's cache entry), so attaching their channels is free.
    global _default_pool
    try:
        from .. import _env
        from ..pools_c import Pool

        _default_pool = Pool.attach(_env.decode(os.environ[_env.DEFAULT_POOL]))
    except Exception:
        _default_pool = None
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _template_comm, _lease_rename
    _template_comm = _comm()      # looked up once, not in every spare
    if _template_comm:            # a lease's name once it has its call (_worker.lease)
        _lease_rename = (_spare_name, _template_comm)
    global _shepherd_pid
    shepherd_pid = _shepherd_pid = os.getppid()
    _freeze()
    sock = _take_socket()
    spares = os.environ.get("EMBER_TEMPLATE_SPARE", "1") != "0"
    return _serve(sock, shepherd_pid, spares)


def _take_socket():
    """The socket to the shepherd, which a template starts with as its fd
    0: taken as a socket (a new fd), and fd 0 made /dev/null."""
    sock = _socket().socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return sock


def _serve(sock, shepherd_pid, spares, program=False):
    """The template's loop: the shepherd's requests on ``sock`` until it is
    gone (returns 0).  A ``program`` template (:func:`_program_main`)
    serves spare requests only, and exits at any other request or at one
    that names a module it has not preloaded (the shepherd makes a new one
    from a spare that has it)."""
    import msgpack

    # The spare request served by the loop in C (_serve_spares): the last
    # one answered here (its preload list imported by then), and whether
    # its spares keep the shepherd's end (_give_spare).
    fast = [msgpack.packb(["spare", []], use_bin_type=True), None, False]
    while True:
        got = _spare_loop(sock, fast, shepherd_pid) if spares else None
        if got is None:
            try:
                msg, fds, _, _ = _socket().recv_fds(sock, _MAX_MSG, 3)
            except OSError:
                return 0
        elif got is False:
            return 0
        else:
            msg, fds = got
        if not msg:
            for fd in fds:
                os.close(fd)
            return 0
        try:
            req = msgpack.unpackb(msg, raw=False)
        except Exception:
            req = None
        if isinstance(req, list) and req and req[0] == "spare":
            for fd in fds:
                os.close(fd)
            if program and any(m not in _preloaded for m in (req[1] if len(req) > 1 else ())):
                return 0
            if not _give_spare(sock, req, shepherd_pid, spares):
                return 0
            fast[0] = msg             # served: the loop in C may answer it from now on
            fast[2] = _keeps_peer(req)
            continue
        if program:
            return 0
        try:
            if not isinstance(req, list) or len(req) != 4:
                raise ValueError("bad request")
            p_uid, args, envp, cwd = req
            if len(fds) != 3:
                pid, err = 0, [22, f"template: expected 3 fds, got {len(fds)}"]
            else:
                _, preload, _, _ = parse_argv(args[2:])
                if preload and any(m not in _preloaded for m in preload):
                    _preload(preload)
                pid, err = _fork_one(args, envp, cwd, fds, shepherd_pid)
                if pid and _DIE_AT_FORK:
                    _die_at_fork(pid, cwd)
        except Exception as exc:
            pid, err = 0, [getattr(exc, "errno", None) or 5,
                           f"template error: {type(exc).__name__}: {exc}"]
        finally:
            for fd in fds:
                os.close(fd)
        try:
            sock.send(msgpack.packb([pid, err, []], use_bin_type=True))
        except OSError:
            return 0


def _program_main(key, shepherd_pid):
    """A spare handed ``["program", key]`` (and its socket to the shepherd
    as fd 0) becomes the template of one program: the warm template's run
    ``key`` of its main module installed and the preparation that is the
    same for each of its children done (``_mainload.become``), frozen as
    the template is (:func:`_freeze`), then it serves the shepherd's spare
    requests (:func:`_serve`): those spares are that program's only.
    Returns the exit code (0: no run ``key`` here, or the shepherd gone)."""
    sock = _take_socket()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _template_comm:
        _comm(_template_comm)
    from ..mp import _mainload

    # numpy's generator reseeded in each of its clones too (_reseed_numpy:
    # the clone that became this process cleared its flag)
    _numpy_reseed[0] = "numpy.random" in sys.modules
    if not isinstance(key, str) or not _mainload.become(key):
        try:                      # no such run here: no spares (the shepherd makes none again)
            import msgpack

            sock.send(msgpack.packb([0, -1, None, [], True], use_bin_type=True))
        except OSError:
            pass
        return 0
    _freeze()
    return _serve(sock, shepherd_pid, True, program=True)


def _spare_loop(sock, fast, shepherd_pid):
    """Serve the shepherd's spare requests in C (``_spawn.serve_spares``,
    spares.h) while they are ``fast[0]``: no Python runs between clones, so
    the template writes (and copies, after each clone) a few pages instead
    of ~145.  It fills pymalloc's partly used pools first (``fill_pools``),
    so that each clone's first objects of a size class take consecutive
    blocks of one pool.  Returns the first other request as ``(msg, fds)``, False if
    the shepherd is gone, or None where the loop cannot run (threads in the
    template, no raw clone here: the Python path serves).  In a new spare
    it does not return (:func:`_spare_main`)."""
    import msgpack

    if not _clone_ready() or not _single_threaded():
        return None
    if fast[1] is None:
        fast[1] = _receive_buffer()
    tail = msgpack.packb(None) + msgpack.packb(sorted(_preloaded), use_bin_type=True) \
        + msgpack.packb(False)
    for f in (sys.stdout, sys.stderr):
        f.flush()
    try:           # (the loop says itself when the hooks of _CLONE_SKIPS do nothing)
        got = _serve_spares(sock.fileno(), fast[0], tail, *_clone, fast[1], shepherd_pid,
                            *_spare_names(), fast[2])
    except OSError:
        return False
    except ValueError:
        return None
    if got[0] == "child":
        _spare_main(got[1], shepherd_pid)
    if got[0] == "eof":
        return False
    return bytes(fast[1][:got[1]]), got[2]


def _receive_buffer():
    """The buffer the spare loop receives the shepherd's requests in
    (:data:`_MAX_MSG` bytes): an anonymous mapping, so that only the pages
    a request is written to are ever populated (a ``bytearray`` is zeroed,
    all 1 MB of it resident), marked ``MADV_DONTFORK``, so that no clone
    inherits it: each clone copies the page table entry of every populated
    page the template maps and each child's exit unmaps it again, and no
    child reads this buffer (a spare leaves the loop at once)."""
    import mmap

    buf = mmap.mmap(-1, _MAX_MSG)
    try:
        buf.madvise(mmap.MADV_DONTFORK)
    except (AttributeError, OSError):
        pass                # inherited: costs a few page table entries a clone
    return buf


#: For the tests: a path; the first template to fork a child whose cwd
#: differs from its own while the path does not exist creates it, waits
#: until the child is in that cwd (past every step before the wait for the
#: shepherd) and is SIGKILLed before its answer (tests/test_pyprocess.py).
_DIE_AT_FORK = os.environ.get("EMBER_TEST_TEMPLATE_DIE_AT_FORK")


def _die_at_fork(pid, cwd):
    if not cwd or os.path.realpath(cwd) == os.getcwd():
        return
    if not _env.first_at(_DIE_AT_FORK):
        return
    for _ in range(100000):            # (bounded: a child that failed does not get there)
        try:
            if os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(cwd):
                break
        except OSError:
            break
        os.sched_yield()
    os.kill(os.getpid(), signal.SIGKILL)


#: For the tests: a path; the first shepherd spare handed a request while
#: the path does not exist creates it and fails to read the request
#: (:func:`_spare_main`; tests/test_pyprocess.py).
_UNREADABLE = os.environ.get("EMBER_TEST_TEMPLATE_UNREADABLE")


#: For the tests: a path; the first template to make a spare in the Python
#: loop (:func:`_give_spare`) while it does not exist creates it and is
#: SIGKILLed between the clone and its answer (tests/test_pyprocess.py).
_DIE_AT_SPARE = os.environ.get("EMBER_TEST_TEMPLATE_DIE_AT_SPARE")


def _die_at_spare():
    if _env.first_at(_DIE_AT_SPARE):
        os.kill(os.getpid(), signal.SIGKILL)


#: For the tests: a path; the first lease (a child with ``--spare=``) to
#: get to its worker while the path does not exist creates it and waits
#: there, set up, until it is killed (tests/test_pyprocess.py).
_HOLD_LEASE = os.environ.get("EMBER_TEST_TEMPLATE_HOLD_LEASE")


#: For the tests: a path; the first spawn of the shepherd's template handle
#: while the path does not exist creates it and waits, holding the
#: handle's lock, until ``path + ".go"`` exists (tests/test_pyprocess.py).
_HOLD_SPAWN = os.environ.get("EMBER_TEST_SHEPHERD_HOLD_SPAWN")


def _hold_lease(args):
    if spare_token(args) is not None and _env.first_at(_HOLD_LEASE):
        while True:
            signal.pause()


def _keeps_peer(req):
    """Whether a spare request ``["spare", preload, keep]`` asks that the
    spare keep the shepherd's end of its pair (``keep`` True)."""
    return len(req) > 2 and req[2] is True


def _give_spare(sock, req, shepherd_pid, spares):
    """Answer the shepherd's ``["spare", preload, keep]``: import
    ``preload``, fork a spare (:func:`_make_spare`) and give the shepherd
    the other end of the spare's socket pair, on which it sends the spare
    its request itself: with ``keep`` (:func:`_keeps_peer`) that end stays
    in the spare, which holds it until its request is in, and the shepherd
    takes it from there (``pidfd_getfd``: :func:`_take_end`; no socket in
    flight), else it goes with the answer (``SCM_RIGHTS``).  Our copy is
    closed (a spare sees EOF once the shepherd drops the end sent; one that
    keeps it is killed when dropped).  The answer is ``[pid, fd, None,
    preloaded modules, no more spares]``, ``fd`` the number of the end in
    the spare (-1: sent); pid 0 (and no socket) if no spare can be made.
    False if the shepherd is gone."""
    import msgpack

    _t("T.spare_req")
    preload = [m for m in (req[1] if len(req) > 1 and isinstance(req[1], list) else ())
               if isinstance(m, str) and m]
    if any(m not in _preloaded for m in preload):
        _preload(preload)
    keep = _keeps_peer(req)
    spare = _make_spare(shepherd_pid, keep) if spares else None
    _t("T.cloned")
    if spare is not None and _DIE_AT_SPARE:
        _die_at_spare()
    final = not spares or (spare is None and not _single_threaded())
    fd = spare.sock.fileno() if keep and spare is not None else -1
    reply = msgpack.packb([spare.pid if spare else 0, fd, None, sorted(_preloaded), final],
                          use_bin_type=True)
    try:
        if spare is not None and not keep:
            _socket().send_fds(sock, [reply], [spare.sock.fileno()])
        else:
            sock.send(reply)
    except OSError:
        return False
    finally:
        if spare is not None:
            spare.sock.close()
    return True


if __name__ == "__main__":
    sys.exit(main())
