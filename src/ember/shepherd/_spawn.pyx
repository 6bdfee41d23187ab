# cython: language_level=3
"""Binding of the shepherd's C spawn helper (spawn.c).

:func:`spawn` starts an executable with clone(CLONE_VM|CLONE_VFORK) +
execve, PR_SET_PDEATHSIG(SIGKILL) set in the child, default signal
dispositions, an empty signal mask, and no fd inherited besides 0, 1, 2.
The C code does the work; this module only converts arguments and maps
failures to :class:`OSError`.

The child's PR_SET_PDEATHSIG fires when the *thread* that called
:func:`spawn` exits: call it from a thread that lives as long as the
children should.
"""
import errno as _errno
import os
from time import monotonic as _monotonic

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp, memcpy
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport errno
from libc.stdlib cimport malloc, free
from posix.types cimport pid_t
from posix.unistd cimport chdir, close as _close
from libc.signal cimport SIGINT

__all__ = ["spawn", "set_pdeathsig", "which", "wipe_env_value", "wipe_bytes", "wipe_str", "compile_file",
           "serve_spares", "spare_wait", "take_end", "exit_holder", "spare_request", "spare_setenv", "spare_name",
           "environ_mark", "environ_entries", "proc_state", "proc_state_note", "proc_state_apply",
           "clone_setup", "clone_parent", "skip_in_clone", "ob_open", "ob_replace", "ob_mapped", "ob_spawned",
           "ob_busy", "ob_exiting", "ob_clean", "ob_drained", "ob_wait_drained", "trim_heap",
           "quiet_note", "quiet", "quiet_mark", "QUIET_EMPTY", "QUIET_IS", "QUIET_AT_MOST", "QUIET_SAME_END",
           "fill_pools", "stdin_note", "template_stdin"]

# What the OSError says for each failed step; {path} is the exe or cwd.
_WHAT = {
    EMBER_SPAWN_STEP_CLONE: "cannot spawn '{exe}'",
    EMBER_SPAWN_STEP_PDEATHSIG: "cannot set the parent-death signal for '{exe}'",
    EMBER_SPAWN_STEP_PARENT_GONE: "parent exited while spawning '{exe}'",
    EMBER_SPAWN_STEP_SIGNALS: "cannot reset signals for '{exe}'",
    EMBER_SPAWN_STEP_CHDIR: "bad run_dir '{cwd}'",
    EMBER_SPAWN_STEP_STDIO: "cannot set up stdin/stdout/stderr for '{exe}'",
    EMBER_SPAWN_STEP_CLOSE_FDS: "cannot close inherited fds for '{exe}'",
    EMBER_SPAWN_STEP_EXEC: "cannot execute '{exe}'",
    EMBER_SPAWN_STEP_PGRP: "cannot make a process group for '{exe}'",
    EMBER_SPAWN_STEP_RLIMIT: "cannot set the fd limit of '{exe}'",
}


cdef bytes _b(obj, what):
    if isinstance(obj, str):
        obj = os.fsencode(obj)
    elif not isinstance(obj, bytes):
        raise TypeError(f"{what} must be str or bytes, not {type(obj).__name__}")
    if b"\0" in <bytes>obj:
        raise ValueError(f"{what} contains a NUL byte: {obj!r}")
    return <bytes>obj


def _env_list(envp):
    """A list of b'KEY=VALUE' from a mapping or a sequence of 'KEY=VALUE'."""
    if hasattr(envp, "items"):
        out = []
        for k, v in envp.items():
            kb = _b(k, "env name")
            if not kb or b"=" in kb:
                raise ValueError(f"bad env name {k!r}")
            out.append(kb + b"=" + _b(v, f"env value of {k!r}"))
        return out
    return [_b(e, "env entry") for e in envp]


def which(exe, path):
    """Resolve an exe without a slash along ``path`` (a PATH string, as
    execvp does; os.defpath if None).  A name with a slash is returned as
    is.  Raises OSError ENOENT (or EACCES if only non-executable matches
    exist) with "cannot execute 'exe'"."""
    exe_b = _b(exe, "exe")
    if b"/" in exe_b:
        return exe_b
    if not exe_b:
        raise OSError(_errno.ENOENT, "cannot execute ''")
    if path is None:
        path = os.defpath
    err = _errno.ENOENT
    for d in _b(path, "PATH").split(b":"):
        cand = (d or b".") + b"/" + exe_b
        try:
            if os.access(cand, os.X_OK) and not os.path.isdir(cand):
                return cand
            if os.path.exists(cand) and not os.path.isdir(cand):
                err = _errno.EACCES
        except ValueError:
            continue
    raise OSError(err, f"cannot execute '{os.fsdecode(exe_b)}' (searched PATH)")


def spawn(exe, argv, envp, cwd=None, int stdin_fd=-1, int stdout_fd=-1, int stderr_fd=-1,
          bint new_pgrp=False, long long nofile_soft=-1):
    """Start ``exe`` and return its pid (the caller must reap it).

    Parameters
    ----------
    exe : str or bytes
        Executable.  Without a slash it is looked up in the PATH of
        ``envp`` (os.defpath if it has none); otherwise it is used as is
        (relative to ``cwd``).
    argv : sequence of str or bytes
        The full argument vector, argv[0] included.
    envp : mapping or sequence of 'KEY=VALUE'
        The child's complete environment.
    cwd : str, bytes or None
        Working directory of the child; None keeps the caller's.
    stdin_fd, stdout_fd, stderr_fd : int
        fds that become the child's 0, 1, 2; -1 inherits the caller's.
    new_pgrp : bool
        Make the child the leader of a new process group (setpgid(0, 0)).
    nofile_soft : int
        >= 0: the child's soft RLIMIT_NOFILE (capped at the hard limit);
        -1: inherit the caller's.

    Raises
    ------
    OSError
        With the errno of the failed step and a message naming it:
        ``"cannot execute '/x'"``, ``"bad run_dir '/d'"``, ...  No child is
        left behind.
    """
    cdef ember_spawn_args_t args
    cdef ember_spawn_failure_t failure
    cdef pid_t pid = -1
    cdef ember_rc_t rc
    cdef char **c_argv = NULL
    cdef char **c_envp = NULL
    cdef Py_ssize_t i

    env_list = _env_list(envp)
    exe_b = _b(exe, "exe")
    if b"/" not in exe_b:
        path = None
        for e in env_list:
            if e.startswith(b"PATH="):
                path = e[5:]
        exe_b = which(exe_b, path)
    argv_list = [_b(a, "argument") for a in argv]
    cwd_b = None if cwd is None else _b(cwd, "cwd")

    c_argv = <char **>malloc((len(argv_list) + 1) * sizeof(char *))
    c_envp = <char **>malloc((len(env_list) + 1) * sizeof(char *))
    if c_argv == NULL or c_envp == NULL:
        free(c_argv)
        free(c_envp)
        raise MemoryError()
    try:
        for i in range(len(argv_list)):
            c_argv[i] = PyBytes_AS_STRING(argv_list[i])
        c_argv[len(argv_list)] = NULL
        for i in range(len(env_list)):
            c_envp[i] = PyBytes_AS_STRING(env_list[i])
        c_envp[len(env_list)] = NULL
        args.exe = PyBytes_AS_STRING(exe_b)
        args.argv = c_argv
        args.envp = c_envp
        args.cwd = NULL if cwd_b is None else PyBytes_AS_STRING(cwd_b)
        args.stdio[0] = stdin_fd
        args.stdio[1] = stdout_fd
        args.stdio[2] = stderr_fd
        args.new_pgrp = new_pgrp
        args.nofile_soft = nofile_soft
        with nogil:
            rc = ember_spawn(&args, &pid, &failure)
    finally:
        free(c_argv)
        free(c_envp)
    if rc == EMBER_OK:
        return pid
    if rc == EMBER_ERR_INVALID_ARG:
        raise ValueError("ember_spawn: invalid argument")
    what = _WHAT.get(failure.step, "cannot spawn '{exe}'").format(
        exe=os.fsdecode(exe_b), cwd=os.fsdecode(cwd_b or b""))
    raise OSError(failure.err, what)


def set_pdeathsig(int sig):
    """prctl(PR_SET_PDEATHSIG, sig): the kernel sends ``sig`` to this
    process when the thread that created it exits (0 clears it)."""
    if ember_set_pdeathsig(sig) != EMBER_OK:
        e = errno
        raise OSError(e, f"prctl(PR_SET_PDEATHSIG, {sig}) failed: {os.strerror(e)}")


# ------------------------------------------------------------- spares
def exit_holder(pid_t parent=0):
    """Just before an ``os._exit``: hand this process's memory to a holder
    process, which unmaps it once this one has ended (spares.h), so that
    the exit wakes a joiner without unmapping it first.  Blocks every
    signal and closes every fd first (nothing can be written after it).
    The holder is this process's parent's child; with ``parent`` > 0, it
    is made only while that is this process's parent.  Returns the
    holder's pid, or 0 if none was made (another thread running, another
    parent, or a call failed: the exit then unmaps as usual).  Once in a
    process (0 the next time)."""
    return ember_exit_holder(parent)


QUIET_EMPTY, QUIET_IS, QUIET_AT_MOST, QUIET_SAME_END = (
    EMBER_QUIET_EMPTY, EMBER_QUIET_IS, EMBER_QUIET_AT_MOST, EMBER_QUIET_SAME_END)


def quiet_note(state):
    """The template, at each freeze: what its children's :func:`quiet`
    compares (quiet.h, ``ember_quiet_note``), None for "never quiet"."""
    ember_quiet_note(state)


def quiet():
    """A template child once its call returned: True if its exit has
    nothing to run (quiet.h, ``ember_quiet``: every look-up with
    borrowed references, writing none of the template's objects)."""
    return ember_quiet() == 1


def quiet_mark():
    """A template child at its quiet end, after its last write: what
    ``_outboard.exiting()`` does, in C (quiet.h, ``ember_quiet_mark``);
    True if its output board entry is marked clean."""
    return ember_quiet_mark() == 1


def serve_spares(int sock, bytes request, bytes tail, size_t tid_addr, size_t robust_head,
                 size_t robust_len, unsigned char[::1] buf not None, pid_t shepherd_pid=0,
                 bytes spare_comm=None, bytes leased_comm=None, bytes run_comm=None,
                 tuple lease=None, bint keep_peer=False):
    """The warm template's spare loop in C (spares.h): answer every
    request on ``sock`` that is exactly ``request`` (no fds) by cloning a
    spare and sending ``[pid, fd] + tail`` (``tail``: the msgpack of the
    answer's other three items) about a new socket pair, the spare holding
    one end: with ``keep_peer`` the spare keeps the shepherd's end too
    (``fd`` its number there, for :func:`take_end`), else that end goes
    with the answer (``SCM_RIGHTS``, ``fd`` -1); return at the first other
    request.  Only in a single-threaded template, with the GIL held
    throughout.

    Returns ``("child", what)`` in a new spare, ``what`` being what
    :func:`spare_wait` returns for its end of the pair (``shepherd_pid``
    and the names and ``lease`` its arguments),
    ``("message", n, fds)`` for a request the caller must handle (in
    ``buf[:n]``, with the fds it came with), or ``("eof",)``.  ``buf`` is
    any writable buffer (the template's is an anonymous mapping that its
    clones do not inherit).  OSError if
    receiving or answering failed (the shepherd is gone); ValueError if
    this machine is not supported."""
    cdef ember_spares_args_t a
    cdef int what = 0, nfds = 0, child_sock = -1, peer = -1
    cdef int fds[3]
    cdef size_t n = 0
    cdef ember_rc_t rc
    a.sock = sock
    a.keep_peer = keep_peer
    a.request = PyBytes_AS_STRING(request)
    a.request_len = len(request)
    a.tail = PyBytes_AS_STRING(tail)
    a.tail_len = len(tail)
    a.tid_addr = <void *>tid_addr
    a.robust_head = <void *>robust_head
    a.robust_len = robust_len
    a.buf = <char *>&buf[0]
    a.buf_cap = <size_t>buf.shape[0]
    ember_fill_pools()      # last, so that the clones have fresh pools to allocate from
    rc = ember_spares_serve(&a, &what, &n, fds, &nfds, &child_sock, &peer)
    if rc == EMBER_ERR_OS:
        e = errno
        raise OSError(e, f"the template's spare loop: {os.strerror(e)}")
    if rc != EMBER_OK:
        raise ValueError("serve_spares: not supported here")
    if what == EMBER_SPARES_CHILD:
        return ("child", _spare_wait(child_sock, shepherd_pid, spare_comm, leased_comm, run_comm,
                                     lease, peer))
    if what == EMBER_SPARES_EOF:
        return ("eof",)
    return ("message", n, [fds[i] for i in range(nfds)])


def clone_setup():
    """``(tid_addr, robust_head, robust_len)`` for :func:`clone_parent`
    and :func:`serve_spares`: this thread's robust list and the address
    of glibc's TID field, checked to hold this thread's TID (spares.h,
    ``ember_clone_setup``); None where a raw clone cannot be made exact."""
    cdef void *tid = NULL
    cdef void *head = NULL
    cdef size_t n = 0
    if ember_clone_setup(&tid, &head, &n) != 0:
        return None
    return (<size_t>tid, <size_t>head, n)


def clone_parent(size_t tid_addr, size_t robust_head, size_t robust_len):
    """fork() as a sibling, for a single-threaded template (spares.h,
    ``ember_clone_parent``): the pid, 0 in the child; OSError if the
    clone failed."""
    cdef long pid = ember_clone_parent(<void *>tid_addr, <void *>robust_head, robust_len)
    if pid < 0:
        e = errno
        raise OSError(e, f"clone: {os.strerror(e)}")
    return pid


cdef class skip_in_clone:
    """An ``os.register_at_fork`` hook that calls ``hook`` but in a raw
    clone (:func:`clone_parent`, :func:`serve_spares`; ember.shepherd.template's
    ``_CLONE_SKIPS``): a C callable, so a clone's child runs no Python for
    it (a closure's frame and code wrote pages it shares with the
    template)."""
    cdef readonly object hook

    def __init__(self, hook):
        self.hook = hook

    def __call__(self):
        if not ember_spares_in_clone:
            self.hook()


_SPARE_STEP = {
    EMBER_SPARE_STEP_PDEATHSIG: "set the parent-death signal",
    EMBER_SPARE_STEP_CLOSE: "close inherited fds",
}


def spare_wait(int sock, pid_t shepherd_pid, bytes spare_comm=None, bytes leased_comm=None,
               bytes run_comm=None, tuple lease=None, int peer=-1):
    """In a spare just cloned, its steps up to its request, in C (spares.h:
    no Python runs, so none of the template's pages is written for them):
    named ``spare_comm``, detached (the parent-death signal, its parent
    checked to be ``shepherd_pid``, every fd above 2 closed but ``sock``
    and ``peer``, the shepherd's end kept for it to take, -1: none; its
    process group is the template's until the shepherd gives it its
    own), the request received on ``sock`` (which is closed, and ``peer``
    with it), its three fds made 0, 1, 2, and the process named
    ``leased_comm`` if the request is a lease (an argument
    ``--spare=...``), else ``run_comm`` (None: not renamed).

    With ``lease``, ``(env, data, set_signal, handler)``, a lease's request
    (``leased`` 1) is also set up here as far as its wait for its call
    (:func:`_lease_setup`): ``("lease", args, call, result, token)``.

    Returns ``("request", msg, leased)`` (``leased``: 1, 0, or -1 if the
    request's args could not be read here, the process then not renamed),
    ``("eof",)`` (no request, or not one with three fds: exit quietly),
    ``("spare-error", text)`` (a detaching step failed: ``step: reason``)
    or ``("child-error", text)`` (its fds could not be put in place)."""
    return _spare_wait(sock, shepherd_pid, spare_comm, leased_comm, run_comm, lease, peer)


def take_end(pid_t pid, int fd):
    """In the shepherd: a copy of fd ``fd`` of its child ``pid`` (a spare's
    end of the pair kept for the shepherd: spares.h, ``ember_spares_take``;
    pidfd_getfd(2), close-on-exec).  OSError with the errno: EBADF (no such
    fd: a negative ``fd`` checks only that it is allowed), ESRCH (exited),
    EPERM, ENOSYS or a seccomp filter's errno (not allowed here)."""
    cdef int got = ember_spares_take(pid, fd)
    if got < 0:
        e = errno
        raise OSError(e, f"pidfd_getfd: {os.strerror(e)}")
    return got


cdef object _spare_wait(int sock, pid_t shepherd_pid, bytes spare_comm, bytes leased_comm,
                        bytes run_comm, tuple lease, int peer):
    """:func:`spare_wait` (called so by :func:`serve_spares` in a new spare:
    no look-up of the module's global and no call of it through Python)."""
    cdef int step, nfds = 0, leased = -1, i
    cdef int fds[3]
    cdef Py_ssize_t n, got
    cdef bytes msg
    step = ember_spare_detach(sock, peer, shepherd_pid,
                              NULL if spare_comm is None else PyBytes_AS_STRING(spare_comm))
    if step != EMBER_SPARE_OK:
        e = errno
        if step == EMBER_SPARE_STEP_PARENT:
            return ("spare-error", "set the parent-death signal: the shepherd exited")
        return ("spare-error", f"{_SPARE_STEP.get(step, 'detach')}: {OSError(e, os.strerror(e))}")
    n = ember_spare_peek(sock)
    if n <= 0:
        return ("eof",)
    msg = PyBytes_FromStringAndSize(NULL, n)
    got = ember_spare_recv(sock, PyBytes_AS_STRING(msg), <size_t>n, fds, &nfds)
    _close(sock)
    if peer >= 0:
        _close(peer)            # (the shepherd took its copy before it sent the request)
    if got != n or nfds != 3:
        for i in range(nfds):
            _close(fds[i])
        return ("eof",)
    if ember_spare_stdio(fds) != 0:
        e = errno
        return ("child-error", f"set up stdin/stdout/stderr: {OSError(e, os.strerror(e))}")
    if run_comm is not None:
        leased = ember_spare_leased(PyBytes_AS_STRING(msg), <size_t>n)
        if leased == 1 and leased_comm is not None:
            ember_spare_name(PyBytes_AS_STRING(leased_comm))
        elif leased == 0:
            ember_spare_name(PyBytes_AS_STRING(run_comm))
    if leased == 1 and lease is not None:
        set_up = _lease_setup(msg, lease)
        if set_up is not None:
            return set_up
    return ("request", msg, leased)


def spare_name(bytes comm not None):
    """Set this process's comm (a spare's, its only thread's) to ``comm``
    (at most 15 bytes are kept)."""
    ember_spare_name(PyBytes_AS_STRING(comm))


cdef list _request_sets(const char *m, const char *env, const ember_spare_request_t *r):
    """The ``(key, value)`` bytes of each environment entry a request ``m``
    sets, then ``(key, None)`` for each key of the template's environment
    ``env`` it removes (``r``, ember_spare_request's reading of it)."""
    cdef size_t i, k
    sets = []
    for i in range(r.nsets):
        k = <size_t>(<const char *>memchr(m + r.sets[i].off, 61, r.sets[i].len)
                     - (m + r.sets[i].off))           # '=': there, ember_spare_request checked
        sets.append((PyBytes_FromStringAndSize(m + r.sets[i].off, <Py_ssize_t>k),
                     PyBytes_FromStringAndSize(m + r.sets[i].off + k + 1,
                                               <Py_ssize_t>(r.sets[i].len - k - 1))))
    for i in range(r.nunsets):
        sets.append((PyBytes_FromStringAndSize(env + r.unsets[i].off,
                                               <Py_ssize_t>r.unsets[i].len), None))
    return sets


cdef bytes _b64(const char *text, size_t n):
    """The bytes of base64 ``text`` (ember_spare_b64_decode), or None."""
    cdef size_t size = n // 4 * 3
    if n % 4 != 0:
        return None
    if n and text[n - 1] == 61:         # '=' padding: made to its size, not sliced
        size -= 2 if n >= 2 and text[n - 2] == 61 else 1
    cdef bytes out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>size)
    if ember_spare_b64_decode(text, n, <unsigned char *>PyBytes_AS_STRING(out), size) \
            != <long>size:
        return None
    return out


cdef object _lease_setup(bytes msg, tuple lease):
    """A lease's set-up up to the wait for its call, in C (spares.h): the
    worker's arguments read (ember_spare_lease_args: the token, CALL and
    RESULT decoded; its ``--flags=`` key the template's, ``lease[4]``), the
    environment set (the entries that differ from the
    template's ``env``, in C and in ``data``, ``os.environ``'s mapping), the
    directory changed, SIGINT's handler set (``set_signal(SIGINT,
    handler)``), the wait until the shepherd has given it its process group
    (template._wait_adopted).  The Python of template._spare_main,
    template._child and ember._worker's argument scan wrote ~50 pages the
    lease shares with the template.

    Returns ``("lease", argv, call, result, token)`` (``argv``: the worker's
    ``sys.argv``, ``["-m"] + args[2:]``; the descriptors as bytes, the rest
    str); ``("child-error", text)`` if a step failed (the
    template's child reports it: ``cannot TEXT``); None, having done
    nothing, for a request of another shape (its Python path reads it)."""
    cdef ember_spare_request_t r
    cdef ember_spare_span_t tok, cs, rs
    cdef const char *m = PyBytes_AS_STRING(msg)
    cdef bytes env = lease[0]
    cdef bytes flags = lease[4]
    cdef size_t i
    if ember_spare_request(m, <size_t>len(msg), PyBytes_AS_STRING(env), <size_t>len(env),
                           &r) != 0 \
            or ember_spare_lease_args(m, &r, PyBytes_AS_STRING(flags), <size_t>len(flags),
                                      &tok, &cs, &rs) != 0:
        return None
    call = _b64(m + cs.off, cs.len)
    result = _b64(m + rs.off, rs.len)
    if call is None or result is None \
            or (not r.cwd_nil and memchr(m + r.cwd.off, 0, r.cwd.len) != NULL):
        return None
    try:
        argv = [PyUnicode_DecodeUTF8(m + r.args[i].off, <Py_ssize_t>r.args[i].len, NULL)
                for i in range(r.nargs) if i != 1]          # args[0] is "-m" (a lease's)
        token = PyUnicode_DecodeUTF8(m + tok.off, <Py_ssize_t>tok.len, NULL)
        cwd = None if r.cwd_nil or r.cwd.len == 0 else \
            PyUnicode_DecodeUTF8(m + r.cwd.off, <Py_ssize_t>r.cwd.len, NULL)
    except UnicodeDecodeError:
        return None
    sets = _request_sets(m, PyBytes_AS_STRING(env), &r)
    # From here on, done: a failure is the child's.
    if cwd is not None:
        path = PyBytes_FromStringAndSize(m + r.cwd.off, <Py_ssize_t>r.cwd.len)
        if chdir(PyBytes_AS_STRING(path)) != 0:
            e = errno
            return ("child-error", f"change to run_dir '{cwd}': {OSError(e, os.strerror(e), cwd)}")
    try:
        _setenv(sets, lease[1])
    except (ValueError, MemoryError) as exc:
        return ("child-error", f"set the environment: {exc}")
    lease[2](SIGINT, lease[3])
    ember_spare_wait_adopted()
    return ("lease", argv, call, result, token)


def spare_request(bytes msg not None, bytes env not None):
    """A spare's request ``msg`` (the msgpack of ``[args, envp, cwd]``) read
    in C against ``env``, the environment the spare has from its template
    (its ``K=V`` entries, each ended by a NUL): ``(args, cwd, sets)``, the
    args a list of str, the cwd a str or None, ``sets`` the ``(key,
    value)`` bytes of each envp entry the template lacks (set in order: a
    key the template has gets the new value), then ``(key, None)`` for
    each of the template's keys envp lacks (removed).  None when the
    request is of another shape: the caller unpacks it itself (spares.h,
    ember_spare_request).  No msgpack objects and no set operations in the
    spare's Python: each of them wrote pages it shares with the template."""
    cdef ember_spare_request_t r
    cdef const char *m = PyBytes_AS_STRING(msg)
    cdef size_t i
    if ember_spare_request(m, <size_t>len(msg), PyBytes_AS_STRING(env), <size_t>len(env),
                           &r) != 0:
        return None
    try:
        args = [PyUnicode_DecodeUTF8(m + r.args[i].off, <Py_ssize_t>r.args[i].len, NULL)
                for i in range(r.nargs)]
        cwd = None if r.cwd_nil else PyUnicode_DecodeUTF8(m + r.cwd.off,
                                                          <Py_ssize_t>r.cwd.len, NULL)
    except UnicodeDecodeError:
        return None
    sets = _request_sets(m, PyBytes_AS_STRING(env), &r)
    return args, cwd, sets


def spare_setenv(list sets not None, dict data not None):
    """In a spare, set each ``(key, value)`` of ``sets`` (bytes, what
    :func:`spare_request` returns; a value None removes the key) in the C
    environment (``ember_spare_putenv``: one new ``environ`` array) and in
    ``data``, ``os.environ``'s own mapping (``os.environ._data``: encoded
    key -> encoded value), as ``os.environb[key] = value`` (``del``) does,
    without its Python code and setenv()'s writes to the template's pages.
    The entries' memory is never freed (the C environment points into it).
    ValueError for a key or value ``os.environb`` would refuse; MemoryError."""
    _setenv(sets, data)


cdef int _setenv(list sets, dict data) except -1:
    """:func:`spare_setenv`'s work (also a lease's, :func:`_lease_setup`)."""
    cdef size_t n = len(sets), total = 0, i, off
    cdef int rc
    cdef char *buf
    cdef char **entries
    for k, v in sets:
        # (memchr, not ``b"=" in k``: bytes.__contains__ tries the operand
        # as an int first, a TypeError made and dropped each time)
        if type(k) is not bytes or (v is not None and type(v) is not bytes) or not k \
                or memchr(PyBytes_AS_STRING(k), 61, len(k)) != NULL \
                or memchr(PyBytes_AS_STRING(k), 0, len(k)) != NULL \
                or (v is not None and memchr(PyBytes_AS_STRING(v), 0, len(v)) != NULL):
            raise ValueError(f"bad environment entry {k!r}={v!r}")
        total += len(k) + (len(v) + 2 if v is not None else 1)
    buf = <char *>malloc(total + 1)
    entries = <char **>malloc((n + 1) * sizeof(char *))
    if buf == NULL or entries == NULL:
        free(buf)
        free(entries)
        raise MemoryError()
    off = 0
    for i in range(n):
        k, v = sets[i]
        entries[i] = buf + off
        memcpy(buf + off, PyBytes_AS_STRING(k), len(k))
        off += len(k)
        if v is not None:               # (None: "K", removed)
            buf[off] = 61       # '='
            off += 1
            memcpy(buf + off, PyBytes_AS_STRING(v), len(v))
            off += len(v)
        buf[off] = 0
        off += 1
    rc = ember_spare_putenv(entries, n)
    free(entries)
    if rc != 0:
        free(buf)
        raise MemoryError()
    for k, v in sets:
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    return 0


# ------------------------------------------------------------- secrets
from libc.string cimport memset, strlen
from cpython.unicode cimport PyUnicode_AsUTF8
from libc.stdlib cimport getenv


def wipe_env_value(name):
    """Overwrite, in place, the value of the environment variable ``name``
    in the C environment (``environ``) with ``0`` characters; returns how
    many.  (``os.environ`` keeps its own copy: see :func:`wipe_bytes`.)"""
    cdef bytes n = os.fsencode(name)
    cdef char *v = getenv(n)
    if v == NULL:
        return 0
    cdef size_t k = strlen(v)
    memset(v, 48, k)
    return k


def wipe_str(str s):
    """Overwrite an ASCII str's characters with ``0`` in place (as
    :func:`wipe_bytes`; a str that is not ASCII is left alone: False)."""
    if not s.isascii():
        return False
    cdef const char *p = PyUnicode_AsUTF8(s)      # an ASCII str's own data
    memset(<char *>p, 48, len(s))
    return True


def wipe_bytes(bytes b):
    """Overwrite a bytes object's contents with zeros in place (a secret
    that must not outlive its use in this process's memory: only for an
    object nothing else will read)."""
    memset(PyBytes_AS_STRING(b), 0, len(b))


# ------------------------------------------------------------- output board
# (outboard.c: whether a process's output was all forwarded at its exit)

cdef bytes _ob_path(path):
    """``path`` as the C calls take it; ValueError if it has a NUL (C
    would open the path cut there)."""
    cdef bytes p = os.fsencode(path)
    if b"\0" in p:
        raise ValueError(f"the output board's path has a NUL: {path!r}")
    return p


def ob_open(path, bint create=False):
    """Map the output board at ``path`` into this process (once; created
    with ``create``).  Returns True if it is mapped, False if there is no
    board of this layout there; OSError for a failure to create it."""
    cdef bytes p = _ob_path(path)
    cdef ember_rc_t rc = ember_ob_open(p, create)
    if rc == EMBER_OK:
        return True
    if create and rc == EMBER_ERR_OS:
        raise OSError(errno, f"cannot create the output board {path!r}: {os.strerror(errno)}")
    return False


def ob_replace(path, bint create=False):
    """Map the output board at ``path`` (created with ``create``) in place
    of the one this process maps (at the same address: a call in another
    thread meanwhile reads one or the other), or map it if none is.  True
    if it is mapped now; False if there is no board of this layout there
    (the old one stays); OSError if it cannot be made or moved there."""
    cdef bytes p = _ob_path(path)
    cdef ember_rc_t rc = ember_ob_replace(p, create)
    if rc == EMBER_OK:
        return True
    if rc == EMBER_ERR_OS:
        raise OSError(errno, f"cannot map the output board {path!r}: {os.strerror(errno)}")
    return False


def ob_mapped():
    """True if this process has the output board mapped."""
    return bool(ember_ob_mapped())


def ob_spawned(unsigned long long p_uid, bint clean=False):
    """Shepherd: process ``p_uid`` is about to start (``clean``: its stdio
    is not forwarded)."""
    ember_ob_spawned(p_uid, clean)


def ob_busy(unsigned long long p_uid, bint busy):
    """Shepherd: taking or holding output of ``p_uid`` (True), or all of it
    written (False)."""
    ember_ob_busy(p_uid, busy)


def ob_exiting(unsigned long long p_uid):
    """The process ``p_uid``, after its last write: mark itself clean if
    nothing it wrote is left to forward.  True if it did."""
    return bool(ember_ob_exiting(p_uid))


def ob_clean(unsigned long long p_uid):
    """True if process ``p_uid`` exited with all its output forwarded."""
    return bool(ember_ob_clean(p_uid))


def ob_drained(unsigned long long p_uid):
    """Shepherd: ``p_uid`` reaped, its pipes drained and written."""
    ember_ob_drained(p_uid)


def ob_wait_drained(unsigned long long p_uid, double timeout):
    """Wait up to ``timeout`` seconds (>= 0; inf: no bound) for the
    shepherd to have drained ``p_uid``'s pipes (without the GIL; a
    signal's handler runs, and its exception propagates; the bound holds
    across signals).  True if it has.  ValueError for a NaN or negative
    ``timeout``."""
    cdef int r
    cdef long long ns
    if not timeout >= 0.0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    if timeout > _OB_MAX_WAIT:
        timeout = _OB_MAX_WAIT
    end = _monotonic() + timeout
    while True:
        ns = <long long>(max(0.0, end - _monotonic()) * 1e9)
        with nogil:
            r = ember_ob_wait_drained(p_uid, ns)
        if r >= 0:
            return r == 1
        PyErr_CheckSignals()


# The longest wait ob_wait_drained makes (s; ~100 years: its ns fit an
# int64 with CLOCK_MONOTONIC's value added).
_OB_MAX_WAIT = 3.2e9


cdef extern from "Python.h":
    ctypedef struct PyCompilerFlags:
        int cf_flags
        int cf_feature_version
    int PyCF_SOURCE_IS_UTF8
    int PY_MINOR_VERSION
    int Py_file_input
    object Py_CompileStringObject(const char *s, object filename, int start,
                                  PyCompilerFlags *flags, int optimize)


def compile_file(bytes source not None, str filename not None):
    """``compile(source, filename, "exec", dont_inherit=True)`` (the same
    flags and checks) without the builtin's look at whether ``source`` is
    an AST: the first such look in a process makes the ast module's ~120
    node types, ~1 ms and ~140 page faults of a forked ``.py`` head's start
    (``python3 FILE`` compiles its script without it too).  A NUL byte in
    ``source`` is left to compile(), for its error."""
    if memchr(PyBytes_AS_STRING(source), 0, <size_t>len(source)) != NULL:
        return compile(source, filename, "exec", dont_inherit=True)
    cdef PyCompilerFlags cf
    cf.cf_flags = PyCF_SOURCE_IS_UTF8
    cf.cf_feature_version = PY_MINOR_VERSION
    return Py_CompileStringObject(PyBytes_AS_STRING(source), filename, Py_file_input, &cf, -1)


cdef extern from *:
    """
    #ifdef __GLIBC__
    #include <malloc.h>
    static int ember_trim_heap(void) { return malloc_trim(0); }
    #else
    static int ember_trim_heap(void) { return 0; }
    #endif
    """
    int ember_trim_heap() nogil


def trim_heap():
    """glibc's ``malloc_trim(0)`` (a no-op with another C library): the C
    heap's free pages given back to the kernel, so that they are no longer
    mapped (each fork copies the page table entries of every page a
    process maps, and each exit of the child unmaps them).  True if memory
    was given back."""
    cdef int r
    with nogil:
        r = ember_trim_heap()
    return r != 0



cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    /* pymalloc's partly used pools filled (fill_pools): CPython's small-object
       allocator hands out the blocks of the pool at the head of its size
       class's list of partly used pools, each pool starting with its
       header (struct pool_header: the count of blocks in use first; the
       size class index at byte 36, the largest block offset at 44), in
       pools of 16 KiB (4 KiB in builds without the radix tree); the free
       list's head at byte 8, the offset of the first block never used at
       40.  A block at or past that offset has never been written. */
    extern const char *_PyMem_GetCurrentAllocatorName(void);
    #include <sys/mman.h>
    #ifndef MADV_POPULATE_WRITE
    #define MADV_POPULATE_WRITE 23
    #endif
    #define EMBER_FILL_MAX 8192
    static void *ember_fill[EMBER_FILL_MAX];  /* the fillers: never freed */
    static size_t ember_filled;
    static uintptr_t ember_pool_size;         /* 0: not known yet; 1: no filling here */

    /* The pool size this build's pools have, from the header of the
       pool of ``p``, a block of ``size`` bytes of size class ``c``; 1 if
       neither size fits (not filled then).  The 4 KiB candidate is read
       first: it is the page of ``p``, mapped whatever the pool size. */
    static uintptr_t ember_pool_size_of(void *p, size_t size, unsigned c) {
        static const uintptr_t sizes[2] = {4096, 16384};
        for (int i = 0; i < 2; i++) {
            const unsigned char *h = (const unsigned char *)((uintptr_t)p & ~(sizes[i] - 1));
            unsigned idx, maxnext;
            memcpy(&idx, h + 36, sizeof idx);
            memcpy(&maxnext, h + 44, sizeof maxnext);
            if (idx == c && maxnext == sizes[i] - size)
                return sizes[i];
        }
        return 1;
    }

    /* Allocate blocks of each size class until one opens an empty pool
       (its count is 1 after it) or leaves its pool with nothing but
       blocks never used, a page of them at least (the free list's head is
       the first of them and the last on the list): the child's first
       allocations of a class then take those, not free blocks spread over
       the template's pools.  The one that tells is given back if it was
       the only one of its class and its pool holds others; at most a
       pool's bytes a class.  The pages of the next blocks (two) are
       populated here, so that the child's first writes there copy a
       page (a copy-on-write fault) rather than take a new zeroed one,
       which costs twice as much here.  Returns
       the number of blocks allocated (kept), -1 if the allocator is not
       pymalloc. */
    static long ember_fill_pools(void) {
        const char *name;
        size_t before = ember_filled;
        if (ember_pool_size == 1)
            return -1;
        if (ember_pool_size == 0) {
            void *p;
            name = _PyMem_GetCurrentAllocatorName();
            if (name == NULL || strcmp(name, "pymalloc") != 0 || (p = PyObject_Malloc(16)) == NULL) {
                ember_pool_size = 1;
                return -1;
            }
            ember_pool_size = ember_pool_size_of(p, 16, 0);
            PyObject_Free(p);
            if (ember_pool_size == 1)
                return -1;
        }
        for (unsigned c = 0; c < 32; c++) {
            size_t size = 16 * (c + 1);
            int first = 1;
            for (size_t bytes = 0; bytes < ember_pool_size && ember_filled < EMBER_FILL_MAX;
                 bytes += size) {
                void *p = PyObject_Malloc(size);
                uintptr_t pool, head;
                unsigned count, next;
                if (p == NULL)
                    return (long)(ember_filled - before);
                pool = (uintptr_t)p & ~(ember_pool_size - 1);
                memcpy(&count, (const void *)pool, sizeof count);
                memcpy(&head, (const void *)(pool + 8), sizeof head);
                memcpy(&next, (const void *)(pool + 40), sizeof next);
                if (count == 1 || (head != 0 && head == pool + next - size
                                   && *(const uintptr_t *)head == 0
                                   && ember_pool_size - next + size >= ember_pool_size / 4)) {
                    uintptr_t from, to;
                    if (first && count != 1)   /* (its pool keeps others: still open) */
                        PyObject_Free(p);
                    else
                        ember_fill[ember_filled++] = p;
                    memcpy(&head, (const void *)(pool + 8), sizeof head);
                    from = head & ~(uintptr_t)4095;
                    to = from + 2 * 4096 < pool + ember_pool_size ? from + 2 * 4096
                                                                  : pool + ember_pool_size;
                    if (head != 0)   /* no error: a kernel without it (< 5.14) leaves it */
                        madvise((void *)from, to - from, MADV_POPULATE_WRITE);
                    break;
                }
                ember_fill[ember_filled++] = p;
                first = 0;
            }
        }
        return (long)(ember_filled - before);
    }
    """
    long ember_fill_pools()


def fill_pools():
    """Fill the allocator's partly used pools (pymalloc), so that the
    objects a child of this process allocates first come from a pool per
    size class opened here last (its first page copied once, the rest
    untouched: no copy), not from the free blocks the template's pools
    have left, a page of the template's copied for each.  Blocks of each
    size class are allocated and kept until one opens an empty pool (or
    lands in the pool the last call opened).  The number of blocks kept
    (their memory is the template's for good), or -1 where the allocator
    is not pymalloc (``PYTHONMALLOC``, ``-X dev``): nothing is done."""
    return ember_fill_pools()


# ------------------------------------------------------------- the mp child's stdin
from posix.stat cimport fstat as _fstat, struct_stat as _stat_t

cdef object _stdin_stream = None      # the template's text stream over fd 0 (/dev/null)
cdef _stat_t _stdin_st                # fd 0's stat when it was noted


def stdin_note(stream):
    """The template (``ember.mp._child``, at its import): ``stream``, its
    text stream over fd 0 (/dev/null), is what :func:`template_stdin`
    gives its children while their fd 0 is the file it is now; None:
    nothing noted.  Whether it was noted."""
    global _stdin_stream
    _stdin_stream = None
    if stream is not None and _fstat(0, &_stdin_st) == 0:
        _stdin_stream = stream
    return _stdin_stream is not None


def template_stdin():
    """The stream :func:`stdin_note` noted if fd 0 is still the file it was
    then (its device and inode), else None: an ``fstat`` compared in C,
    where the same check in Python made a ``stat_result`` (its ~20 fields,
    allocations in the template's pools) and read its fields through
    their descriptors: ~8 of the template's pages written in each child."""
    cdef _stat_t st
    if _stdin_stream is None or _fstat(0, &st) != 0 \
            or st.st_dev != _stdin_st.st_dev or st.st_ino != _stdin_st.st_ino:
        return None
    return _stdin_stream


# ------------------------------------------------------------- what a child inherits
# (docs/python-processes.md, "What a child inherits"): the C environment as
# spawn's child gets it, and the process state spawn's child inherits
# (umask, nice value, CPU affinity, resource limits), read in the parent
# at each start and applied in the child where it differs.
cdef extern from *:
    """
    #include <sched.h>
    #include <stdint.h>
    #include <string.h>
    #include <sys/resource.h>
    #include <sys/stat.h>
    #include <errno.h>
    extern char **environ;

    /* A fingerprint of the C environment: its array's address, its
     * entries' addresses and count (FNV-1a over them).  glibc's setenv()
     * never frees an entry it made (it keeps each "K=V" it made for a
     * later set of the same value), so an unchanged fingerprint is an
     * unchanged environment, unless a program wrote into an entry's
     * characters itself. */
    static uint64_t ember_environ_mark(void)
    {
        uint64_t h = 1469598103934665603ULL;
        size_t i = 0;
        uintptr_t a = (uintptr_t)environ;

        for (;;) {
            for (size_t b = 0; b < sizeof a; b++) {
                h ^= (a >> (8 * b)) & 0xff;
                h *= 1099511628211ULL;
            }
            if (environ == NULL || environ[i] == NULL)
                break;
            a = (uintptr_t)environ[i++];
        }
        return h ^ (uint64_t)i;
    }

    /* The state spawn's child inherits, as one comparable block. */
    #define EMBER_NLIMITS 16
    typedef struct {
        uint32_t umask;
        int32_t nice;
        unsigned char cpus[sizeof(cpu_set_t)];
        struct { uint64_t cur, max; } lim[EMBER_NLIMITS];   /* RLIMIT_CPU .. RLIMIT_RTTIME */
    } ember_pstate_t;

    /* The umask last seen: read by setting it to that value, so that a
     * process whose umask did not change never has another one, even for
     * an instant another thread could see (there is no getumask()). */
    static mode_t ember_umask_seen = 022;

    static int ember_pstate_read(ember_pstate_t *s)
    {
        cpu_set_t cpus;
        mode_t m = umask(ember_umask_seen);

        if (m != ember_umask_seen) {
            umask(m);
            ember_umask_seen = m;
        }
        memset(s, 0, sizeof *s);
        s->umask = (uint32_t)m;
        errno = 0;
        s->nice = getpriority(PRIO_PROCESS, 0);
        if (errno != 0)
            return -1;
        CPU_ZERO(&cpus);
        if (sched_getaffinity(0, sizeof cpus, &cpus) != 0)
            return -1;
        memcpy(s->cpus, &cpus, sizeof cpus);
        for (int r = 0; r < EMBER_NLIMITS && r < RLIM_NLIMITS; r++) {
            struct rlimit rl;
            if (getrlimit(r, &rl) != 0)
                return -1;
            s->lim[r].cur = rl.rlim_cur;
            s->lim[r].max = rl.rlim_max;
        }
        return 0;
    }

    /* Make this process's state ``want``'s where ``have`` (its own) differs:
     * 0, or the step that failed (errno set): 1 umask, 2 nice, 3 affinity,
     * 4 + r the limit r.  Limits first, a lowered hard limit included
     * (a raised one needs a privilege: EPERM, as setrlimit() says). */
    static int ember_pstate_apply(const ember_pstate_t *want, const ember_pstate_t *have)
    {
        for (int r = 0; r < EMBER_NLIMITS && r < RLIM_NLIMITS; r++) {
            if (want->lim[r].cur != have->lim[r].cur || want->lim[r].max != have->lim[r].max) {
                struct rlimit rl = {(rlim_t)want->lim[r].cur, (rlim_t)want->lim[r].max};
                if (setrlimit(r, &rl) != 0)
                    return 4 + r;
            }
        }
        if (want->umask != have->umask) {
            umask((mode_t)want->umask);
            ember_umask_seen = (mode_t)want->umask;
        }
        if (want->nice != have->nice && setpriority(PRIO_PROCESS, 0, want->nice) != 0)
            return 2;
        if (memcmp(want->cpus, have->cpus, sizeof want->cpus) != 0) {
            cpu_set_t cpus;
            memcpy(&cpus, want->cpus, sizeof cpus);
            if (sched_setaffinity(0, sizeof cpus, &cpus) != 0)
                return 3;
        }
        return 0;
    }

    /* The template's state, noted before its children are cloned: a child
     * compares the parent's with it without a system call (nor a write to
     * a page it shares with the template). */
    static ember_pstate_t ember_pstate_noted;
    static int ember_pstate_have_noted = 0;
    """
    unsigned long long ember_environ_mark()
    char **environ
    ctypedef struct ember_pstate_t:
        pass
    int ember_pstate_read(ember_pstate_t *s)
    int ember_pstate_apply(const ember_pstate_t *want, const ember_pstate_t *have)
    ember_pstate_t ember_pstate_noted
    int ember_pstate_have_noted
    int EMBER_NLIMITS


def environ_mark():
    """A fingerprint of this process's C environment (the one spawn's child
    inherits, ``os.environ``'s changes included): equal while it has not
    changed (see the C comment)."""
    return ember_environ_mark()


def environ_entries():
    """The C environment's entries, ``b"K=V"`` each, in order."""
    cdef size_t i = 0
    out = []
    if environ == NULL:
        return out
    while environ[i] != NULL:
        out.append(<bytes>environ[i])
        i += 1
    return out


def proc_state():
    """The state a spawn child inherits from this process (umask, nice
    value, CPU affinity, the resource limits), as bytes (equal bytes,
    equal state), for :func:`proc_state_apply` in the child; None if it
    is the template's as noted (this process is a child of the template
    that has changed none of it: nothing to ship).  OSError if it cannot
    be read."""
    cdef ember_pstate_t s
    if ember_pstate_read(&s) != 0:
        raise OSError(errno, os.strerror(errno))
    if ember_pstate_have_noted and memcmp(&s, &ember_pstate_noted, sizeof(s)) == 0:
        return None
    return PyBytes_FromStringAndSize(<const char *>&s, sizeof(s))


def proc_state_note():
    """In the template, before it clones: note its state (what its children
    start with) for :func:`proc_state_apply`."""
    global ember_pstate_have_noted
    if ember_pstate_read(&ember_pstate_noted) == 0:
        ember_pstate_have_noted = 1


_LIMIT_NAMES = ("RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
                "RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS",
                "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE",
                "RLIMIT_RTPRIO", "RLIMIT_RTTIME")


def proc_state_apply(bytes want not None):
    """Make this process's state ``want`` (:func:`proc_state`'s bytes, the
    parent's at its start) where it differs from the state it has: the
    template's noted one if this is its child and nothing changed it
    (compared without a system call), else read.  OSError naming what
    could not be set (a raised hard limit or a lower nice value need a
    privilege the process may lack)."""
    cdef ember_pstate_t have
    cdef const ember_pstate_t *w = <const ember_pstate_t *>PyBytes_AS_STRING(want)
    cdef int step
    if <size_t>len(want) != sizeof(ember_pstate_t):
        raise ValueError("not a process state")
    if ember_pstate_have_noted:
        if memcmp(w, &ember_pstate_noted, sizeof(ember_pstate_t)) == 0:
            return
        memcpy(&have, &ember_pstate_noted, sizeof(ember_pstate_t))
    elif ember_pstate_read(&have) != 0:
        raise OSError(errno, os.strerror(errno))
    step = ember_pstate_apply(w, &have)
    if step == 0:
        return
    e = errno
    what = ("", "the umask", "the nice value", "the CPU affinity")[step] if step < 4 \
        else _LIMIT_NAMES[step - 4] if step - 4 < len(_LIMIT_NAMES) else f"resource limit {step - 4}"
    raise OSError(e, f"cannot set {what} to the parent's: {os.strerror(e)}")
