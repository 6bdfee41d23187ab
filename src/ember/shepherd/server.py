"""The shepherd: one per node; spawns and watches the OS processes that
global services (GS) asks for, forwards their output, reports their exits.

Threading model
---------------
* The **request thread** reads GS's messages (``ShSpawn``, ``ShKill``,
  ``ShShutdown``) and handles them with :meth:`Shepherd.handle`.  All
  spawning happens on this one thread, which lives as long as the shepherd:
  every child has PR_SET_PDEATHSIG(SIGKILL) and the kernel sends it when the
  *thread* that spawned the child exits.  Under ``ember run`` the first
  request (the head's spawn) is taken by the main thread before the
  request thread and the loop start (their start is then not on the
  head's way); the main thread too lives as long as the shepherd.
* The **main thread** runs :meth:`Shepherd.serve`, an epoll loop over every
  child's pidfd and its stdout/stderr pipes.  An exit is seen only through
  pidfd readiness followed by ``waitpid(pid, WNOHANG)`` (never by polling);
  the child's pipes are then drained without blocking and ``ShExited`` is
  sent.  All output is written by this thread alone, so lines of different
  processes can never interleave.

Messages to GS are sent under a lock (both threads send).  ``ShSpawned`` for
a child is always sent before its ``ShExited``: the loop handles the
child's exit only once ``ShSpawned`` has gone out (its pidfd is in the loop's
set from its record on; an exit seen earlier is parked, ``_on_exit``).

:class:`Shepherd` is transport-agnostic (``send`` is any callable taking
bytes; requests are fed to :meth:`Shepherd.handle`); :func:`run` wires it to
channels.
"""
import os
import select
import _signal as signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)
import stat
import sys
import _thread   # (not threading: ~1.5 ms of every start, and of the .py heads forked)
from time import monotonic as _monotonic

from .. import _env, _log
from .. import messages as M
from ..service import NOTICE, Service
from .._trace import t as _t
from .._worker import fd_ready as _fd_ready, spare_token as _worker_spare_token
from . import _spawn as _ob
from ._spawn import set_pdeathsig, spawn

__all__ = ["Shepherd", "run", "main_forked", "LABELS", "raise_nofile_limit"]

log = _log.get("shepherd")

#: Values of the ``label`` option: no prefix, ``[p_uid] `` or ``[name] ``.
LABELS = ("none", "puid", "name")

_READ_SIZE = 1 << 16
#: A quiet report to GS (Shepherd.quiet_reports) still unread this many
#: seconds after it is sent is poked (EMBER_TEST_POKE_DELAY: a test's).
POKE_DELAY = float(os.environ.get("EMBER_TEST_POKE_DELAY") or 0.005)
# After a child's last pipe EOF, how many times the loop yields waiting for
# its pidfd before it goes back to sleep (_settle).
_SETTLE_YIELDS = 20
# A "line" longer than this is written out in pieces (labelled output then
# gets no prefix on the continuation): bounds the memory per stream.
_MAX_PARTIAL = 1 << 20


class _Stream:
    """One read end of a child's stdout or stderr pipe."""

    __slots__ = ("fd", "out_fd", "prefix", "partial", "at_line_start", "eager", "child")

    def __init__(self, fd, out_fd, prefix):
        self.child = None             # its _Child (the output board's entry)
        self.fd = fd
        self.out_fd = out_fd
        self.prefix = prefix          # b"" when not labelling
        self.partial = b""            # bytes after the last newline seen
        self.at_line_start = True     # next byte written starts a line
        self.eager = False            # write partial lines at once (prompts of a stdin reader)


class _Child:
    __slots__ = ("p_uid", "pid", "pidfd", "streams", "name", "sent", "external", "lease",
                 "busy", "watched", "parked", "request")

    def __init__(self, p_uid, pid, pidfd, streams, name="", external=False, lease=False):
        self.p_uid = p_uid
        self.pid = pid
        self.pidfd = pidfd
        self.streams = streams
        self.name = name
        self.sent = set()             # signals ember sent it (no death report for those)
        self.external = external      # attached, not started by us: watched, never reaped
        self.lease = lease            # a leased spare (ember._worker --spare): may die idle
        self.busy = False             # busy on the output board (_take/_taken)
        self.watched = False          # its exit may be handled (ShSpawned sent)
        self.parked = False           # its exit came first: out of the poll until then
        self.request = None           # its ShSpawn, while a spare may not have read it


def _unread_request(pid):
    """True if the zombie ``pid``, a shepherd's spare handed a request
    that is no lease's, died before it read it: still named
    ``ember-spare`` (it takes the template's name once its request is in,
    before it runs anything of it, spares.c / :func:`_spare_main`)."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n") == _template_module().SPARE_COMM
    except OSError:
        return False


def _template_module():
    """:mod:`ember.shepherd.template`, imported when first needed: a spawn
    that is no template request (``ember run``'s head, which the launcher
    imports the shepherd's modules for before it forks) does without it
    and the ``ember._worker`` code it loads (~1 ms, ~110 page faults)."""
    from . import template
    return template


def _is_template_request(exe, args):
    return args[2:3] == ["--template"] and _template_module().is_template_request(exe, args)


#: Seconds until the loop looks again at a dead template whose handle a
#: start held (Shepherd._template_died).
_TEMPLATE_RETRY = 0.05
#: Seconds an eager stream's partial line (a stdin reader's: a prompt) is
#: held before it is looked at (Shepherd._write_prompts): the rest of a
#: line comes sooner, and a prompt shows all the same...
_PROMPT_WAIT = 0.05
#: ... and at most this long while its process is runnable (preempted in
#: the middle of its line, or busy after printing part of a line).
#: EMBER_PROMPT_MAX sets it (docs/user-guide.md); ``ember run`` refuses a
#: bad value, so the shepherd never sees one.
try:
    _PROMPT_MAX = _env.seconds(_env.PROMPT_MAX, 1.0)
except ValueError:
    _PROMPT_MAX = 1.0


def _runnable(child):
    """Whether a thread of ``child``'s process is running or runnable
    (state R), not all of them waiting (its main thread may wait in a
    join while another writes)."""
    try:
        task = f"/proc/{child.pid}/task/"
        tids = os.listdir(task)
    except (OSError, AttributeError):
        return False
    for tid in tids:
        try:
            with open(task + tid + "/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"R":
                    return True
        except (OSError, IndexError):
            pass                      # (a thread gone meanwhile)
    return False


#: Seconds close() waits for a spawn in flight (a spawn waits up to 120 s
#: for the template's answer): a spawn stuck longer does not hang it.
_CLOSE_WAIT = 130.0
#: For the tests: a path; the first spawn while it does not exist creates
#: it and waits between the child's fork and its record until
#: ``path + ".go"`` exists (tests/test_shepherd.py).
_HOLD_RECORD = os.environ.get("EMBER_TEST_SHEPHERD_HOLD_RECORD")
#: For the tests: a path; the first spawn to create it waits there, its
#: child recorded and its pidfd in the loop's set, before ShSpawned (until
#: ``path + ".go"`` exists).
_HOLD_REPORT = os.environ.get("EMBER_TEST_SHEPHERD_HOLD_REPORT")
#: For the tests: a path; the first spawn to create it finds the epoll set
#: full (ENOSPC, as at fs.epoll.max_user_watches) at its pidfd.
_EPOLL_FULL = os.environ.get("EMBER_TEST_SHEPHERD_EPOLL_FULL")
#: Seconds between the loop's looks for zombies of orphans it adopted
#: (Shepherd._reap_orphans; while a template runs).
_ORPHAN_SCAN = 1.0
#: At how many exits after its own a template child's process group is
#: looked at for the holder of its memory (Shepherd._reap_holders) before
#: the orphan sweep is left to reap it.
_HOLDER_LOOKS = 8


def _child_pids():
    """The pids of this process's children, those of every thread
    (``/proc/self/task/*/children``; none without CONFIG_PROC_CHILDREN)."""
    pids = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return pids
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children", "rb") as f:
                pids.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return pids


class _Flag:
    """threading.Event's set() (called once) and wait(), on a bare lock
    held until it is set."""

    __slots__ = ("_lock", "_set")

    def __init__(self):
        self._set = False
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self):
        if not self._set:
            self._set = True
            self._lock.release()

    def wait(self, timeout=None):
        if self._set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._lock.release()
            return True
        return self._set


class _StartError(Exception):
    """A spawn request that cannot start, with the text for ShSpawned.err."""


def _signame(sig):
    try:
        import signal as _signal_enums     # (loaded on first use)
        return _signal_enums.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


#: Most memory cgroup directories _oom_kills() reads (cgroup v1 keeps the
#: count per cgroup: each directory of the subtree is read).
_OOM_WALK_MAX = 256


def _read_oom_kill(name):
    try:
        with open(name, encoding="utf-8") as f:
            for ln in f:
                key, _, value = ln.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def _oom_kills():
    """``(where, counts)``: the kernel's counts of OOM kills in this
    process's memory cgroup and every cgroup below it (a child that moved
    itself into a smaller one is still counted), by the file read: cgroup
    v2 ``memory.events`` (one file: already hierarchical), or cgroup v1
    ``memory.oom_control`` of each directory of the subtree (at most
    _OOM_WALK_MAX) — or None if no memory cgroup file says (no memory
    controller, /sys/fs/cgroup not mounted).  Compare two with
    :func:`_oom_rose`.  A dead process's own cgroup cannot be asked: the
    kernel moves an exiting task to the root cgroup before its parent
    reaps it."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        path = "" if path == "/" else path
        if hid == "0" and ctrls == "":
            for name in (f"/sys/fs/cgroup{path}/memory.events",
                         f"/sys/fs/cgroup/unified{path}/memory.events"):
                n = _read_oom_kill(name)
                if n is not None:
                    return name, {name: n}
        elif "memory" in ctrls.split(","):
            top = f"/sys/fs/cgroup/memory{path}"
            counts, seen = {}, 0
            for d, _, _ in os.walk(top):
                name = os.path.join(d, "memory.oom_control")
                n = _read_oom_kill(name)
                if n is not None:
                    counts[name] = n
                seen += 1
                if seen >= _OOM_WALK_MAX:
                    break
            if counts:
                return top, counts
    return None


def _oom_rose(before, now):
    """Whether an OOM kill was counted between two :func:`_oom_kills`
    counts: a cgroup's count rose, or a cgroup made since has kills.  Not a
    sum: a cgroup v1 directory removed since (a sibling's, with its kills)
    takes its count away, which would hide a kill of ours."""
    return any(n > before.get(name, 0) for name, n in now.items())


def raise_nofile_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit (the shepherd keeps
    three fds per live child).  Returns ``(old_soft, new_soft)``."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        target = hard
        if target == resource.RLIM_INFINITY:      # the kernel caps it at nr_open
            try:
                with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
                    target = int(f.read())
            except (OSError, ValueError):
                target = soft
        if target != soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                return soft, target
            except (OSError, ValueError) as exc:
                log.warning("cannot raise RLIMIT_NOFILE from %s to %s: %s", soft, target, exc)
    return soft, soft


_KEY_EQ = _env.KEY.encode() + b"="
_P_UID_EQ = _env.P_UID.encode() + b"="


def _index_of(envp, prefix):
    """The index of the entry of ``envp`` that starts with ``prefix``."""
    n = len(prefix)
    for i, e in enumerate(envp):
        if e[:n] == prefix:
            return i
    raise ValueError(f"no {prefix!r} entry")


class Shepherd(Service):
    """The shepherd's core, independent of the transport; a service on
    the service core (:mod:`ember.service`): its handler table, dispatch,
    ``stats()`` and ``dump()``.

    Parameters
    ----------
    send : callable(bytes)
        Delivers one packed message to GS; called from both threads (under
        a lock).
    base_env : mapping or None
        The environment every child starts from (``os.environ`` if None);
        each request's ``env`` is applied on top, then ``EMBER_P_UID``.
    label : {"none", "puid", "name"}
        Prefix of every forwarded output line: nothing, ``[<p_uid>] `` or
        ``[<user_name or p_uid>] ``.
    out_fd, err_fd : int
        Where children's stdout / stderr lines go (the shepherd's own 1 and
        2 by default).  Not closed by the shepherd.
    death_reports : bool
        Write one line to ``err_fd`` for every child killed by a signal
        that ember did not send it (``ember: process 3 'squarer' (pid
        4121) killed by SIGSEGV (core dumped)``).
    """

    name = "shepherd"

    def __init__(self, send, base_env=None, label="none", out_fd=1, err_fd=2, death_reports=True):
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        Service.__init__(self, logger=log)
        self._send_raw = send
        # Quiet reports (quiet_reports): (send without waking GS, whether
        # anything sent is unread, the poke), or None
        self._quiet = None
        self._poke_by = None          # when an unread quiet report is poked (_poke_late)
        self._exit_wanted = set()     # p_uids whose exit GS waits for (ShExitWanted; _lock)
        self._main_ident = None       # the loop's thread (serve)
        self._label = label
        self._out_fd = out_fd
        self._err_fd = err_fd
        base = os.environ if base_env is None else base_env
        self._base_env = {os.fsencode(k): os.fsencode(v) for k, v in base.items()}
        # Never inherited: each child gets its own key from GS, or none.
        self._base_env.pop(_env.KEY.encode(), None)
        # The last request's environment, built (_child_env): (its variables
        # but the key, the entries, the key's index, the p_uid's index).
        self._last_env = None
        self._death_reports = death_reports
        self.control_pool = None      # unmapped in a forked .py head (run())
        # The OOM-kill counts of our memory cgroup subtree so far, by file
        # (_oom_kills; see _oom_killed); None: no memory cgroup counts them here.  First
        # counted when serve() starts (not here: a few small reads off the
        # way of the first spawn, which the request thread may be making
        # meanwhile; exits are handled only by serve()).
        self._oom_seen = None
        #: Soft RLIMIT_NOFILE given to children (-1: they inherit ours); run()
        #: sets it to the limit the shepherd had before raising its own.
        self.child_nofile = -1
        self._send_lock = _thread.allocate_lock()
        # Held by a spawn from its first step to the child's record (_spawn), and
        # by close (which so kills the child of a spawn in flight too).
        self._spawn_lock = _thread.allocate_lock()
        # Guards _children and _fds, and the life of each pidfd (ShKill on the
        # request thread vs. close after reaping on the main thread).
        self._lock = _thread.allocate_lock()
        self._children = {}           # p_uid -> _Child
        # p_uid -> signals asked while it starts again (_rerun): the new
        # process takes them when it is recorded (_start)
        self._again = {}
        self._pgids = set()           # process groups of every child ever started
        self._holder_groups = []      # [(pgid, looks)] of exited children: _reap_holders
        self._open_line = {}          # out fd -> stream whose line is unfinished
        self._prompts = {}            # eager stream -> (next look, last) at its held partial line
        self._fds = {}                # fd -> _Child (its pidfd), _Stream, or the Template (its pidfd)
        self._dead_out = set()        # out fds that gave EPIPE
        self._stop_requested = False
        self._stop_tag = None         # tag of ShShutdown (None: no reply)
        self._done = _Flag()
        self._closed = False
        self._ep = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._ep.register(self._wake, select.EPOLLIN)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._template = None         # the warm template, started on first use
        self._template_retry = None   # its pidfd, out of the poll until a retry (_template_died)
        self._board = None            # the output board this shepherd made (open_output_board)
        # GS's requests: notices (each handler sends its own answer, if any).
        self._death_lines = []        # ShDeathReport lines, for the main thread to write
        for cls, method in ((M.ShSpawn, self._on_spawn), (M.ShKill, self._on_kill),
                            (M.ShShutdown, self._on_shutdown), (M.ShWatch, self._on_watch),
                            (M.ShUnwatch, self._on_unwatch),
                            (M.ShDeathReport, self._on_death_report),
                            (M.ShExitWanted, self._on_exit_wanted)):
            self.on(cls, method, NOTICE)
        # The node's pools and channels (created and destroyed on GS's behalf).
        from .resources import NodeResources
        self.resources = NodeResources(self._send)
        for cls in NodeResources.TYPES:
            self.on(cls, self.resources.handle_msg, NOTICE)

    def open_output_board(self, runtime_id):
        """Make (and map) the node's output board (shepherd/outboard.c,
        ember._outboard): each child's entry says whether all it wrote was
        forwarded when it exited, which a join answered by the kernel
        waits for (docs/python-processes.md, "Output and join").  Unlinked
        when :meth:`serve` ends if this shepherd made it: the shepherd of a
        node that shares the head's ``/dev/shm`` (``--hosts local:N``) maps
        the head shepherd's board (named by the runtime id), which it
        leaves to its maker (and the launcher's sweep).  Its maker is the
        one whose ``O_EXCL`` create succeeded (a look before the create was
        a race between two such shepherds starting together: both took
        themselves for the maker, and the first to stop unlinked the
        board under the other).  Before the first spawn; a failure is
        logged (joins then ask GS)."""
        from .. import _outboard
        path = _outboard.path(runtime_id)
        try:
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
            made = True           # (sized and given its header by create, as another's)
        except FileExistsError:
            made = False
        except OSError as exc:
            log.warning("no output board: %s", exc)
            return
        try:
            _outboard.create(runtime_id)
        except OSError as exc:
            log.warning("no output board: %s", exc)
            if made:
                os.unlink(path)
            return
        self._board = path if made else None

    # ------------------------------------------------------------------
    # request thread
    # ------------------------------------------------------------------
    def handle(self, data):
        """Handle one packed request from GS.  Returns False once the
        request was ``ShShutdown`` (the caller stops reading), else True.
        Malformed or unexpected messages are logged and dropped (the
        service core's dispatch)."""
        return self.handle_bytes(data, trusted=True) is not False

    def notice_failed(self, msg, exc, tb):
        # a malformed field: drop it, keep serving
        log.warning("dropped %r: %s: %s", msg, type(exc).__name__, exc)

    def _child_env(self, p_uid, overrides):
        """The child's environment entries: the runtime's, ``overrides``
        (GS's request: the creator's variables and the key GS made for
        this child; None removes one), its p_uid.  A request whose
        variables but the key are the last one's (every start of a
        process's children, unless it changed ``os.environ``) reuses the
        last entries with its own key and p_uid put in (in their places):
        the ~100 encodings of a full environment were ~45 us of each
        spawn."""
        key = overrides.get(_env.KEY) if type(overrides) is dict else None
        if type(key) is not str:
            return self._build_env(p_uid, overrides)
        rest = dict(overrides)
        del rest[_env.KEY]
        last = self._last_env
        if last is not None and last[0] == rest:
            envp = last[1].copy()
            envp[last[2]] = _KEY_EQ + os.fsencode(key)
            envp[last[3]] = _P_UID_EQ + str(p_uid).encode()
            return envp
        envp = self._build_env(p_uid, overrides)
        self._last_env = (rest, envp.copy(), _index_of(envp, _KEY_EQ), _index_of(envp, _P_UID_EQ))
        return envp

    def _build_env(self, p_uid, overrides):
        env = dict(self._base_env)
        if overrides:
            if not hasattr(overrides, "items"):
                raise TypeError(f"env must be a map, not {type(overrides).__name__}")
            for k, v in overrides.items():
                if not isinstance(k, str) or not k or "=" in k:
                    raise ValueError(f"bad env name {k!r}")
                if v is None:             # None removes the variable
                    env.pop(os.fsencode(k), None)
                elif isinstance(v, str):
                    env[os.fsencode(k)] = os.fsencode(v)
                else:
                    raise TypeError(f"env value of {k!r} must be a str, not {type(v).__name__}")
        env.pop(_env.STDIN.encode(), None)      # spawn directives, not for the child
        env.pop(_env.FORK_PY.encode(), None)
        env.pop(_env.STDIO_FROM.encode(), None)
        env[_env.P_UID.encode()] = str(p_uid).encode()
        return [k + b"=" + v for k, v in env.items()]

    @staticmethod
    def _resolve(exe, args, run_dir):
        """``(exe, argv)`` to spawn: a ``.py`` file runs with the runtime's
        Python (as ``ember run`` does); else ``exe`` as given."""
        if exe.endswith(".py"):
            path = exe if os.path.isabs(exe) else os.path.join(run_dir or os.getcwd(), exe)
            if not os.path.isfile(path):
                raise _StartError(f"cannot execute '{exe}': [Errno 2] No such file or directory "
                                  f"(a .py file runs with {sys.executable})")
            return sys.executable, [sys.executable, exe] + args
        return exe, [exe] + args

    @staticmethod
    def _explain(exc, exe, run_dir):
        """The start-failure text for ``exc`` from spawn()."""
        text = f"{exc.strerror}: [Errno {exc.errno}] {os.strerror(exc.errno)}"
        if exc.errno == 7:                 # E2BIG
            return (f"{text}: its environment and arguments are more than the kernel takes "
                    f"for a new program (ARG_MAX, {os.sysconf('SC_ARG_MAX')} bytes in all; "
                    f"{32 * os.sysconf('SC_PAGE_SIZE')} for one variable or argument)")
        if not exc.strerror.startswith("cannot execute"):
            return text
        if "/" in exe:
            path = exe if os.path.isabs(exe) else os.path.join(run_dir or os.getcwd(), exe)
        else:
            path = os.path.join(run_dir or os.getcwd(), exe)
        try:
            st = os.stat(path)
        except OSError:
            return text
        if "/" not in exe:
            return (f"{text}; '{exe}' exists in run_dir but a name without a slash is looked "
                    f"up in PATH: use './{exe}'")
        if exc.errno == 13 and stat.S_ISREG(st.st_mode) and not st.st_mode & 0o111:
            return (f"{text}: it exists but is not executable "
                    f"(mode {stat.S_IMODE(st.st_mode):04o})")
        return text

    def spare_due(self):
        """Seconds until the request thread must ask the template for the
        next spare (None: nothing to ask); see ``Template.spawn``."""
        template = self._template
        return None if template is None else template.spare_due()

    def ask_spare(self):
        """Request thread: ask the template for the spare now due."""
        template = self._template
        if template is not None:
            template.ask_wanted()

    def _on_spawn(self, msg):
        _t("S.spawn")
        p_uid = msg.p_uid
        try:
            err = self._spawn(msg)
        except Exception as exc:
            err = self._spawn_failed(msg, exc)
        if err is not None:
            self._send(M.ShSpawned(msg.tag, p_uid, None, err))
        return True

    @staticmethod
    def _spawn_failed(msg, exc):
        """The answer to a spawn that raised what no start failure
        raises (a bug, a broken install: an extension not rebuilt, a
        module of the user's named like one the shepherd imports): the
        start fails with it, and its traceback goes to the log.  Never
        dropped: its creator would wait for ever (``ember run`` hung).
        Nothing of the spawn is left (:meth:`_start`)."""
        import traceback
        log.error("p_uid %r: the spawn of %r failed:\n%s", msg.p_uid, msg.exe,
                  traceback.format_exc().rstrip())
        return f"the shepherd failed on it: {type(exc).__name__}: {exc}"

    def _spawn(self, msg):
        """Start the child of ``msg``; return None or the error text.  Under
        the spawn lock from the first step to the child's record: a child
        of ours that nothing records yet is no orphan (_reap_orphans)."""
        with self._spawn_lock:
            if self._closed:
                return "shepherd is closed"
            return self._start(msg)

    def _start(self, msg):
        p_uid, exe = msg.p_uid, msg.exe
        if self._stop_requested:
            return "shepherd is shutting down"
        if not isinstance(p_uid, int) or isinstance(p_uid, bool):
            return f"bad p_uid {p_uid!r}"
        if p_uid in self._children:
            return f"p_uid {p_uid} is already running"
        try:
            if not isinstance(exe, str) or not exe:
                raise ValueError(f"exe must be a non-empty str, got {exe!r}")
            args = msg.args or []
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise TypeError(f"args must be a list of str, got {args!r}")
            run_dir = msg.run_dir or None
            if run_dir is not None and not isinstance(run_dir, str):
                raise TypeError(f"run_dir must be a str, got {run_dir!r}")
            envp = self._child_env(p_uid, msg.env)
        except (TypeError, ValueError) as exc:
            return f"bad spawn request for p_uid {p_uid}: {exc}"

        try:
            direct = self._stdio_from(msg.env)
        except OSError as exc:
            return f"cannot open the caller's stdio for '{exe}': {exc}"
        if direct is not None:            # the caller's own stdin/stdout/stderr, no forwarding
            out_r = err_r = None
            direct_in, out_w, err_w = direct
        else:
            direct_in = None
            try:
                out_r, out_w = os.pipe()      # both CLOEXEC (PEP 446)
            except OSError as exc:
                return f"cannot create pipes for '{exe}': [Errno {exc.errno}] {exc.strerror}"
            try:
                err_r, err_w = os.pipe()
            except OSError as exc:
                os.close(out_r)
                os.close(out_w)
                return f"cannot create pipes for '{exe}': [Errno {exc.errno}] {exc.strerror}"
        try:
            # The child's entry on the output board (a direct stdio is not
            # ours to forward: clean from the start).
            _ob.ob_spawned(p_uid, direct is not None)
            stdin_fd = self._stdin_for(msg.env) if direct_in is None else direct_in
            gate = None                   # a forked .py child waits until it is closed
            request = None
            if _is_template_request(exe, args):
                # a spare may die before it reads the request (_rerun)
                request = None if _worker_spare_token(args) is not None else msg
                pid = self._template_spawn(p_uid, args, envp, run_dir, out_w, err_w)
            else:
                path, argv = self._resolve(exe, args, run_dir)
                if self._fork_py(msg.env, path, argv[1:], run_dir):
                    from ..launcher._forkhead import fork_python
                    pid, gate = fork_python(argv[1], argv[2:], envp, run_dir, stdin_fd, out_w,
                                            err_w, nofile_soft=self.child_nofile,
                                            scrub=self._scrub_fork)
                else:
                    pid = spawn(path, argv, envp, run_dir, stdin_fd, out_w, err_w,
                                new_pgrp=True, nofile_soft=self.child_nofile)
        except BaseException as exc:
            for fd in (out_r, err_r):
                if fd is not None:
                    os.close(fd)
            if isinstance(exc, _StartError):
                return str(exc)
            if isinstance(exc, OSError):
                return self._explain(exc, exe, run_dir)
            if isinstance(exc, (ValueError, TypeError)):
                return f"bad spawn request for p_uid {p_uid}: {exc}"
            raise                         # (_on_spawn answers it)
        finally:
            os.close(out_w)
            os.close(err_w)
            if direct_in is not None:
                os.close(direct_in)
        if _HOLD_RECORD:
            _env.hold_at(_HOLD_RECORD)
        pidfd = None
        try:
            if self._closed:      # close gave up waiting for this spawn (_CLOSE_WAIT)
                raise _StartError("shepherd is closed")     # (nobody would kill it)
            try:
                pidfd = os.pidfd_open(pid)
            except OSError as exc:
                raise _StartError(f"cannot watch '{exe}': pidfd_open: "
                                  f"[Errno {exc.errno}] {exc.strerror}") from None
            child = self._record(msg, p_uid, pid, pidfd, args, direct, out_r, err_r,
                                 stdin_fd, request)
        except BaseException as exc:
            # Not reaped yet, so the pid cannot have been reused.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            for fd in (out_r, err_r, pidfd, gate):
                if fd is not None:
                    os.close(fd)
            if isinstance(exc, _StartError):
                return str(exc)
            raise                         # (_on_spawn answers it)
        if _HOLD_REPORT:
            _env.hold_at(_HOLD_REPORT)
        self._send(M.ShSpawned(msg.tag, p_uid, pid, None))
        _t("S.spawned_sent")
        # Only now may the loop handle the exit: ShSpawned precedes
        # ShExited.  (Its pidfd is in the loop's set since _record: an
        # exit seen before this was parked, _on_exit; the loop re-enables
        # it too if it parked it after this look, and may have handled the
        # exit since: closed, its number maybe another's; both under the
        # lock.)
        child.watched = True
        if child.parked:
            with self._lock:
                if self._fds.get(pidfd) is child:
                    self._ep.modify(pidfd, select.EPOLLIN)
        if gate is not None:
            os.close(gate)                # GS knows it: the forked child may run
        log.info("started p_uid %d (pid %d): %s", p_uid, pid, exe)
        return None

    def _record(self, msg, p_uid, pid, pidfd, args, direct, out_r, err_r, stdin_fd, request):
        """The spawned child's record, and its pipes in the loop's set;
        on an error, nothing of it is left there (the caller kills it)."""
        if self._label == "puid":
            prefix = f"[{p_uid}] ".encode()
        elif self._label == "name":
            prefix = f"[{msg.user_name or p_uid}] ".encode(errors="surrogateescape")
        else:
            prefix = b""
        streams = [] if direct is not None else \
            [_Stream(out_r, self._out_fd, prefix), _Stream(err_r, self._err_fd, prefix)]
        for s_ in streams:
            s_.eager = stdin_fd != self._devnull
        child = _Child(p_uid, pid, pidfd, streams,
                       msg.user_name if isinstance(msg.user_name, str) else "",
                       lease=_worker_spare_token(args) is not None)
        child.request = request
        for s_ in streams:
            s_.child = child
        with self._lock:
            # (in the loop's set before the lock is let go: a stale event
            # for its fd number, _read at EOF, closes it under the lock).
            # The pidfd too, here, before ShSpawned: an epoll_ctl that
            # fails (ENOMEM; ENOSPC, fs.epoll.max_user_watches) fails the
            # start, where after ShSpawned it gave a started process a
            # second, error answer and left it unwatched; its exit is not
            # handled before the report (_on_exit parks it).
            try:
                for s in streams:
                    os.set_blocking(s.fd, False)
                    self._ep.register(s.fd, select.EPOLLIN)
                    self._fds[s.fd] = s
                if _EPOLL_FULL and _env.first_at(_EPOLL_FULL):
                    raise OSError(28, os.strerror(28))          # ENOSPC
                self._ep.register(pidfd, select.EPOLLIN)
                self._fds[pidfd] = child
            except BaseException as exc:
                for fd in [s.fd for s in streams] + [pidfd]:
                    if self._fds.pop(fd, None) is not None:
                        self._ep.unregister(fd)
                if isinstance(exc, OSError):
                    raise _StartError(f"cannot watch '{msg.exe}': epoll: [Errno {exc.errno}] "
                                      f"{exc.strerror}") from None
                raise
            self._children[p_uid] = child
            self._pgids.add(pid)
            # Started again (_rerun): the signals GS asked for meanwhile,
            # taken here, with the record, not after the spawn: the new
            # process may die and be started again before that.
            for sig in self._again.pop(p_uid, ()):
                child.sent.add(sig)
                try:
                    signal.pidfd_send_signal(pidfd, sig)
                except ProcessLookupError:
                    pass                  # exited, not reaped yet
        return child

    def _template_spawn(self, p_uid, args, envp, run_dir, out_w, err_w):
        """Fork the child from the warm template (ember.shepherd.template),
        started on first use; the child is re-parented to us (subreaper)."""
        if self._template is None:
            template = _template_module()
            template.become_subreaper()
            self._template = template.Template(list(self._child_env(0, None)),
                                               self._err_fd, self._err_fd,
                                               watch=self._watch_template)
        return self._template.spawn(p_uid, args, envp, run_dir, self._devnull, out_w, err_w)

    def _watch_template(self, pidfd, template):
        """The template's pidfd in the loop's set (``template`` None: out
        of it): its death is seen at once (:meth:`_template_died`)."""
        with self._lock:
            if template is not None:
                self._fds[pidfd] = template
                self._ep.register(pidfd, select.EPOLLIN)
            elif self._fds.pop(pidfd, None) is not None:
                self._ep.unregister(pidfd)

    def _template_died(self, template, pidfd):
        got = template.died(pidfd)
        if got is False:
            # A start holds the handle's lock, maybe for as long as the
            # template's answer takes (up to 120 s): the loop never waits
            # for it.  The pidfd (readable until it is handled) is left out
            # of the poll and tried again in _TEMPLATE_RETRY s
            # (_rearm_template); the start may stop the template first.
            with self._lock:
                if self._fds.get(pidfd) is template:
                    self._ep.modify(pidfd, 0)
                    self._template_retry = pidfd
            return
        if got is None:
            return                        # stale: stopped, or a new one's number
        pid, si = got
        how = "exited" if si is None else \
            f"exited with code {si.si_status}" if si.si_code == os.CLD_EXITED else \
            f"died ({_signame(si.si_status)})"
        log.warning("the template (pid %d) %s: reaped with its process group; the next "
                    "start makes a new one", pid, how)

    def _rearm_template(self):
        """The template's pidfd back in the poll, after a retry's wait."""
        with self._lock:
            pidfd, self._template_retry = self._template_retry, None
            if self._fds.get(pidfd) is self._template:
                self._ep.modify(pidfd, select.EPOLLIN)

    def _scrub_fork(self):
        """In a ``.py`` head forked from us, before its program runs: unmap
        the private control pool (the shepherd's input and GS's control
        input live there: a managed process must never map it).  The
        launcher's key is already gone from the shepherd's memory
        (ControlPlane.forget_key, at its start)."""
        pool = self.control_pool
        if pool is not None:
            pool._unmap_in_fork_child()

    @staticmethod
    def _stdio_from(overrides):
        """``EMBER_STDIO_FROM=<pid>`` in the create's env (``ember run
        --address``: the head of a program run in a runtime that is already
        up): the child gets that process's own stdin, stdout and stderr,
        reopened through ``/proc/<pid>/fd`` (a regular file in append mode,
        so output lands after what is there), instead of /dev/null and
        forwarding through the shepherd.  None without the directive."""
        if not isinstance(overrides, dict) or not overrides.get(_env.STDIO_FROM):
            return None
        pid = overrides[_env.STDIO_FROM]
        if not pid.isdigit():
            raise OSError(f"{_env.STDIO_FROM} must be a pid, not {pid!r}")
        fds = []
        try:
            for n, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
                path = f"/proc/{pid}/fd/{n}"
                flags = mode | os.O_CLOEXEC | os.O_NOCTTY
                if n and stat.S_ISREG(os.stat(path).st_mode):
                    flags |= os.O_APPEND
                fds.append(os.open(path, flags))
        except OSError:
            for fd in fds:
                os.close(fd)
            raise
        return tuple(fds)

    def _stdin_for(self, overrides):
        """The child's stdin: /dev/null, or (-1) the shepherd's own, i.e. the
        launcher's, when the create's env has ``EMBER_STDIN=inherit`` (the
        launcher asks it for the head)."""
        if isinstance(overrides, dict) and overrides.get(_env.STDIN) == "inherit":
            return -1
        return self._devnull

    @staticmethod
    def _fork_py(overrides, exe, args, run_dir):
        """True if the create's env has ``EMBER_FORK_PY=1`` (the launcher's
        for a .py head) and it runs this interpreter on an existing .py
        file: then the child is a fork of this process that runs the file
        (ember.launcher._forkhead), not a new interpreter (~10 ms less)."""
        return (isinstance(overrides, dict) and overrides.get(_env.FORK_PY) == "1"
                and exe == sys.executable and bool(args) and args[0].endswith(".py")
                and os.path.isfile(os.path.join(run_dir or ".", args[0])))

    def _on_kill(self, msg):
        sig, p_uid = msg.sig, msg.p_uid
        if not isinstance(sig, int) or isinstance(sig, bool) or not 0 <= sig < signal.NSIG:
            log.warning("dropped ShKill with bad signal %r", sig)
            return True
        if not isinstance(p_uid, int) or isinstance(p_uid, bool):
            log.warning("dropped ShKill with bad p_uid %r", p_uid)
            return True
        with self._lock:
            child = self._children.get(p_uid)
            if child is None:
                if p_uid in self._again:  # its spare died: for the next one (_rerun)
                    self._again[p_uid].append(sig)
                return True               # already exited (or never ran)
            child.sent.add(sig)
            try:
                signal.pidfd_send_signal(child.pidfd, sig)
            except ProcessLookupError:
                pass                      # exited, not reaped yet
            except OSError as exc:
                log.warning("cannot send signal %r to p_uid %r: %s",
                            sig, msg.p_uid, exc)
        return True

    def _on_watch(self, msg):
        """Watch an attached process (``ember.init()``): not our child, so we
        learn of its exit from its pidfd but cannot read its status."""
        if not (isinstance(msg.p_uid, int) and isinstance(msg.pid, int) and msg.pid > 0):
            log.warning("dropped ShWatch with bad fields %r", msg)
            return True
        try:
            pidfd = os.pidfd_open(msg.pid)
        except OSError:
            self._send(M.ShExited(msg.p_uid, M.EXIT_UNKNOWN))
            return True
        with self._lock:
            child = _Child(msg.p_uid, msg.pid, pidfd, [], external=True)
            self._children[msg.p_uid] = child
            self._fds[pidfd] = child
            self._ep.register(pidfd, select.EPOLLIN)
            child.watched = True
        return True

    def _on_unwatch(self, msg):
        with self._lock:
            child = self._children.get(msg.p_uid)
            if child is not None and child.external:
                self._forget_external(child)
        return True

    def _forget_external(self, child):   # with self._lock held
        del self._children[child.p_uid]
        del self._fds[child.pidfd]
        self._ep.unregister(child.pidfd)
        os.close(child.pidfd)
        child.pidfd = -1

    def _on_death_report(self, msg):
        """GS found that a lease we reported as dead while idle had been
        claimed: its death report is written after all (by the main
        thread, which writes all output)."""
        if isinstance(msg.line, str) and self._death_reports:
            self._death_lines.append(msg.line)
            os.eventfd_write(self._wake, 1)
        return True

    def _on_shutdown(self, msg):
        self.request_stop(msg.tag)
        return False

    def request_stop(self, tag=None):
        """Ask the loop to kill every child, reap them, flush output, send
        ``ShShutdownDone(tag)`` (if tag is not None) and return.  Any
        thread; no spawn is accepted afterwards."""
        self._stop_tag = tag
        self._stop_requested = True
        os.eventfd_write(self._wake, 1)

    def wait_done(self, timeout=None):
        """Block until :meth:`serve` has finished.  Returns True if it has."""
        return self._done.wait(timeout)

    # ------------------------------------------------------------------
    # main thread: the epoll loop
    # ------------------------------------------------------------------
    def serve(self):
        """Run the loop until a stop was requested and every child has been
        reaped and reported.  Then flush the output of orphaned pipes and
        send ``ShShutdownDone``."""
        monotonic = _monotonic
        self._main_ident = _thread.get_ident()
        got = _oom_kills()
        self._oom_seen = None if got is None else got[1]
        killed = False
        try:
            scan_at = None            # when to look for orphans next (_reap_orphans)
            while True:
                timeout = -1
                if self._template is not None:      # the child subreaper: orphans come
                    now = monotonic()
                    if scan_at is None or now >= scan_at:
                        if scan_at is not None:
                            self._reap_orphans()
                        scan_at = now + _ORPHAN_SCAN
                    timeout = scan_at - now
                retry = self._template_retry
                if retry is not None:
                    timeout = _TEMPLATE_RETRY if timeout < 0 else min(timeout, _TEMPLATE_RETRY)
                if self._prompts:
                    due = self._write_prompts(monotonic())
                    if due is not None:
                        timeout = due if timeout < 0 else min(timeout, due)
                poke_by = self._poke_by
                if poke_by is not None:
                    left = max(0.0, poke_by - monotonic())
                    timeout = left if timeout < 0 else min(timeout, left)
                events = self._ep.poll(timeout)
                if self._poke_by is not None:
                    self._poke_late(monotonic())
                if retry is not None:
                    self._rearm_template()
                for fd, _events in events:
                    if fd == self._wake:
                        try:
                            os.eventfd_read(self._wake)
                        except BlockingIOError:
                            pass
                        while self._death_lines:
                            self._report(self._death_lines.pop(0).encode(errors="replace"))
                        continue
                    # The fd may have been closed since poll() returned
                    # (an exit earlier in this batch, or the request thread:
                    # ShUnwatch) and its number reused for another object
                    # (ShWatch's pidfd, a spawn's pipes): the event may be
                    # stale.  Each handler checks readiness itself: a
                    # child's exit by waitpid or its pidfd, a pipe by a
                    # non-blocking read.
                    obj = self._fds.get(fd)
                    if obj is None:
                        continue          # closed earlier in this batch
                    if isinstance(obj, _Child):
                        self._on_exit(obj)
                    elif obj is self._template:     # its pidfd (_watch_template)
                        self._template_died(obj, fd)
                    else:
                        self._read(obj)
                if self._stop_requested:
                    with self._lock:       # attached processes are not ours to kill
                        for child in [c for c in self._children.values() if c.external]:
                            self._forget_external(child)
                    if not killed:
                        self._kill_all()
                        killed = True
                    if not self._children:
                        break
            self._kill_leftover_groups()
            for obj in list(self._fds.values()):
                if isinstance(obj, _Stream):   # pipes a grandchild still holds
                    self._drain(obj, final=True)
                    self._close_stream(obj)
            if self._board is not None:
                try:
                    os.unlink(self._board)
                except OSError:
                    pass
            if self._stop_tag is not None:
                self._send(M.ShShutdownDone(self._stop_tag))
        finally:
            self._done.set()

    def _reap_orphans(self):
        """Reap the zombies of processes adopted as the child subreaper that
        are none of ours to wait for: a managed process's fork's fork (a
        double fork), which never called GS (those that did are watched
        and reaped by pidfd: _on_watch, _on_exit).  They stayed zombies
        until the teardown.  Looked for every :data:`_ORPHAN_SCAN` s
        while a template runs (only then are we the subreaper), and only
        while no spawn is in flight (a child between its fork and its
        record is ours) and the template handle is free (its children
        before their adoption and its spares are its to reap): else at
        the next look."""
        try:
            if os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return                    # no zombie child (the usual case): one syscall
        except ChildProcessError:
            return
        if not self._spawn_lock.acquire(blocking=False):
            return
        try:
            with self._lock:
                known = {c.pid for c in self._children.values()}
            pids = [pid for pid in _child_pids() if pid not in known]
            if self._template is not None and pids:
                pids = self._template.foreign(pids)
            for pid in pids or ():
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        log.debug("reaped pid %d, an orphan unknown to the runtime", pid)
                except ChildProcessError:
                    pass
        finally:
            self._spawn_lock.release()

    def _kill_leftover_groups(self):
        """SIGKILL what managed processes left behind: anything still in the
        process group of a child we started (subprocesses, forks), even after
        that child exited.  A group id can be reused only once the group is
        empty; to be sure we never hit a stranger that reused one, only
        processes of our own session are killed, each through a pidfd.
        Groups with no member left (the usual end: ``killpg(pgid, 0)``
        fails with ESRCH) cost no scan of /proc."""
        pgids = set()
        for pgid in self._pgids:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                continue                  # empty: nothing of it to kill
            except OSError:
                pass                      # (EPERM: someone's, maybe ours: look)
            pgids.add(pgid)
        if not pgids:
            return
        sid = os.getsid(0)
        fds = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            pgrp, session = int(fields[2]), int(fields[3])
            if pgrp in pgids and session == sid:
                try:
                    fd = os.pidfd_open(int(d))
                except OSError:
                    continue
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    fds.append(fd)
                except OSError:
                    os.close(fd)
        # Wait (bounded) until they are gone: a pidfd turns readable at exit.
        import time
        deadline = time.monotonic() + 2.0
        for fd in fds:
            try:
                _fd_ready(fd, max(0.0, deadline - time.monotonic()))
            finally:
                os.close(fd)

    def _kill_all(self):
        with self._lock:
            for child in self._children.values():
                if child.external:
                    continue              # attached: not ours to kill
                child.sent.add(signal.SIGKILL)
                # The child leads its own process group (it is alive, so its
                # pgid cannot have been reused): take what it started too.
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _on_exit(self, child):
        _t("S.exit")
        if not child.watched:
            # ShSpawned not sent yet (_start): a stale event (serve(): its
            # fd number was another's when poll() returned, and a spawn in
            # flight took it), or its exit, seen first: then its pidfd
            # leaves the poll (a level-triggered readiness would wake the
            # loop again and again) until the spawning thread, once it has
            # sent ShSpawned, puts it back; or the loop does, if that
            # thread looked at ``parked`` before it was set.
            if _fd_ready(child.pidfd):
                with self._lock:
                    if self._fds.get(child.pidfd) is child:
                        self._ep.modify(child.pidfd, 0)
                        child.parked = True
                        if child.watched:
                            self._ep.modify(child.pidfd, select.EPOLLIN)
            return
        if child.external:
            with self._lock:
                if self._children.get(child.p_uid) is not child:
                    return
                if not _fd_ready(child.pidfd):
                    # A stale event (serve()): an attached process that
                    # detached and exited, whose pidfd number this one
                    # reused.  Reporting it would end a live process in
                    # GS (its reply channels freed under a waiting call:
                    # "the channel was destroyed").
                    return
                # Ours if its parent died first (an os.fork() child of one
                # of ours: we are the child subreaper): reap its zombie, by
                # its pidfd (its pid may be a new process's if not ours).
                try:
                    os.waitid(os.P_PIDFD, child.pidfd, os.WEXITED | os.WNOHANG)
                except OSError:           # ECHILD: not ours, its parent reaps it
                    pass
                self._forget_external(child)
            self.resources.reclaim(child.pid, external=True)   # before GS hears of the exit
            self._send(M.ShExited(child.p_uid, M.EXIT_UNKNOWN))
            return
        unsent = self._unsent_kill(child)     # before the reap: a peek at its status
        oom = self._oom_killed(child, unsent)  # its cgroup is readable until the reap
        # Only a lease can have died idle: a child that a shepherd spare
        # was handed (not a lease) is a user process from the hand-over on,
        # though it may not have taken the template's name back yet.  A
        # lease's death by a signal nobody in ember sent is always left to
        # GS (below), which writes it only if the creator claimed the lease
        # (sent its call): its name cannot tell, as a lease forked for its
        # request has the template's name until its first step
        # (template._child), and a creator's kill at its exit can land
        # before that step under load (it was reported then: 1 suite run
        # in ~10 of test_lease_killed_while_it_sets_up_is_no_death).
        idle = child.lease and unsent is not None
        # A spare killed before it read its request (by hand, the OOM
        # killer): no user process died, the request runs elsewhere.
        again = child.request is not None and unsent is not None and \
            _unread_request(child.pid)
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:         # reaped behind our back: cannot happen
            log.error("p_uid %r (pid %d) was reaped by someone else",
                      child.p_uid, child.pid)
            pid, status = child.pid, None
        if pid == 0:
            return                        # spurious readiness
        code = -signal.SIGKILL if status is None else os.waitstatus_to_exitcode(status)
        info = None if status is None else self._exit_info(child, status, oom)
        with self._lock:
            del self._children[child.p_uid]
            del self._fds[child.pidfd]
            self._ep.unregister(child.pidfd)
            os.close(child.pidfd)
            child.pidfd = -1
            if again:
                # the signals GS asked for go to the new process (_rerun):
                # those asked after the peek above, as those from here on
                self._again[child.p_uid] = sorted(child.sent)
        # Everything the child wrote before exiting is in its pipes now: take
        # it all, without waiting for EOF (a grandchild may hold the pipe).
        for s in child.streams:
            if s.fd >= 0:
                self._drain(s, final=True)
        self.resources.reclaim(child.pid)         # its pool blocks, before GS hears of the exit
        if again:
            _thread.start_new_thread(self._rerun, (child, code, status, info))
        else:
            self._exited(child, code, status, info, idle)
        template = self._template
        if template is not None:
            template.ask_wanted()         # a CPU is free: the template may make the next spare
        self._holder_groups.append((child.pid, 0))
        self._reap_holders()

    def _rerun(self, child, code, status, info):
        """Its own thread (a spawn may wait for the template, the loop never
        does): start the request of ``child``, a spare that died before it
        read it, again (another spare, or the template's fork), under the
        same p_uid, on new pipes; GS hears the new pid (a second ShSpawned:
        the record is the request's; the creator's ``Process.pid`` still
        names the dead spare).  A signal GS asked for meanwhile is sent
        to the new process when it is recorded (:meth:`_start`): here,
        after the spawn, the new process could have died too and its own
        restart taken the list, whose signals were then lost (the
        second restart's KeyError ended its thread: the request ran to
        its end, exit 0 where the user asked SIGTERM).  Should the start
        fail, the death is reported as it would have been."""
        log.info("p_uid %d: its spare (pid %d) died before it read its request: "
                 "started again", child.p_uid, child.pid)
        try:
            err = self._spawn(child.request)
        except BaseException as exc:      # (nothing else would report its end)
            err = self._spawn_failed(child.request, exc)
        if err is not None:
            with self._lock:
                self._again.pop(child.p_uid, None)
            log.warning("p_uid %d: cannot start it again after its spare died: %s",
                        child.p_uid, err)
            self._exited(child, code, status, info, False)

    def _exited(self, child, code, status, info, idle):
        """Report the exit of ``child`` (reaped, its pipes drained) to GS and
        its death on the shepherd's stderr (``idle``: GS decides)."""
        _ob.ob_drained(child.p_uid)       # a joiner answered by the kernel may return
        log.info("p_uid %d (pid %d) exited with code %d", child.p_uid, child.pid, code)
        if (self._death_reports and status is not None and os.WIFSIGNALED(status)
                and os.WTERMSIG(status) not in child.sent):
            name = f" {child.name!r}" if child.name else ""
            core = " (core dumped)" if os.WCOREDUMP(status) else ""
            line = (f"ember: process {child.p_uid}{name} (pid {child.pid}) killed by "
                    f"{_signame(os.WTERMSIG(status))}{core}\n")
            if idle:
                # Idle by its name, but its creator may have sent its call
                # already (start() returned): GS knows whether it claimed
                # it, and sends the line back then (ShDeathReport).
                info["idle_report"] = line
            else:
                self._report(line.encode(errors="replace"))
        msg = M.ShExited(child.p_uid, code, info)
        if code == 0 and not child.name and not child.sent and self._quiet is not None \
                and not self._stop_requested and _thread.get_ident() == self._main_ident:
            self._send(msg, quiet=True)
            # (looked at after the send: ShExitWanted's handler adds, then
            # looks whether anything is unread; one of the two sees the other)
            with self._lock:
                wanted = child.p_uid in self._exit_wanted
                self._exit_wanted.discard(child.p_uid)
            if wanted:
                self._poke()
            elif self._poke_by is None:
                self._poke_by = _monotonic() + POKE_DELAY
            return
        self._send(msg)

    def _reap_holders(self):
        """Reap the holders of exited template children's memory (spares.h,
        ``ember_exit_holder``: a child of ours by CLONE_PARENT, in the
        exited child's process group, that ends once it has unmapped that
        memory after the child's exit).  Each exited child's group (its id
        the child's pid) is looked at, at its own exit and at each later
        one, until no child of ours is left in it, :data:`_HOLDER_LOOKS`
        times at most (then the orphan sweep reaps what is left,
        _reap_orphans): a holder is usually still unmapping at its child's
        exit, and dead by the next.  A child that made none (another
        start method, another thread running at its exit) costs one
        ``waitid`` that finds no member.  A group led by its id's process
        is a new one (the id reused): not looked at again.  A process we
        record found there (it joined the group: os.setpgid) is left to its
        own exit's handling, which takes its code (reaped here, it was
        joined with -9): the group is looked at again at the next exit."""
        keep = []
        for pgid, looks in self._holder_groups:
            while True:
                try:
                    si = os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    break                 # no child of ours in it (any more)
                if si is None:            # (still unmapping)
                    if looks + 1 < _HOLDER_LOOKS:
                        keep.append((pgid, looks + 1))
                    break
                if si.si_pid == pgid:
                    break                 # a new group of that id: its leader is not a holder
                if self._is_child(si.si_pid):
                    # One of ours that joined the group (os.setpgid), not
                    # yet handled: its own _on_exit reaps it, with its code.
                    if looks + 1 < _HOLDER_LOOKS:
                        keep.append((pgid, looks + 1))
                    break
                try:
                    os.waitpid(si.si_pid, os.WNOHANG)
                except ChildProcessError:
                    break
        self._holder_groups = keep

    def _is_child(self, pid):
        """Whether ``pid`` is a process we record (started or attached)."""
        with self._lock:
            return any(c.pid == pid for c in self._children.values())

    @staticmethod
    def _unsent_kill(child):
        """The status of ``child`` (exited, not yet reaped; a peek that
        leaves it a zombie) if a signal that ember did not send killed it,
        else None."""
        try:
            si = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (ChildProcessError, OSError):
            return None
        if si is None or si.si_code not in (os.CLD_KILLED, os.CLD_DUMPED) \
                or si.si_status in child.sent:
            return None
        return si

    def _oom_killed(self, child, unsent):
        """Whether the kernel's OOM killer ended ``child`` (exited, not yet
        reaped; ``unsent``: :meth:`_unsent_kill`'s answer): True if it was
        killed by a SIGKILL that ember did not send and the OOM-kill count
        of the shepherd's memory cgroup subtree rose since the shepherd
        last looked (at start-up, then at each such exit); None if no
        memory cgroup counts OOM kills here; False otherwise.  Only a
        SIGKILL that ember did not send costs anything (a few small
        reads)."""
        if unsent is None or unsent.si_code != os.CLD_KILLED \
                or unsent.si_status != signal.SIGKILL:
            return False
        got = _oom_kills()
        if got is None or self._oom_seen is None:
            self._oom_seen = None if got is None else got[1]
            return None
        before, self._oom_seen = self._oom_seen, got[1]
        return _oom_rose(before, got[1])

    @staticmethod
    def _exit_info(child, status, oom):
        """ShExited.info: the wait status, core dumped, OOM-killed."""
        return {"status": status,
                "core_dumped": bool(os.WIFSIGNALED(status) and os.WCOREDUMP(status)),
                "oom_killed": oom}

    def _report(self, line):
        """Write one line of the shepherd's own to the error fd, on a line
        of its own (ends another stream's unfinished line first)."""
        fd = self._err_fd
        if self._open_line.get(fd) is not None:
            self._write(fd, b"\n")
        self._write(fd, line)
        self._open_line[fd] = None

    @staticmethod
    def _take(s):
        """Before a read of ``s``: its child's entry on the output board
        says busy (outboard.c: stored before the bytes leave the pipe)."""
        c = s.child
        if c is not None and not c.busy:
            c.busy = True
            _ob.ob_busy(c.p_uid, True)

    @staticmethod
    def _taken(s):
        """After the writes of what was read from ``s``: not busy unless a
        partial line of its child is held."""
        c = s.child
        if c is not None and c.busy and not any(x.partial for x in c.streams):
            c.busy = False
            _ob.ob_busy(c.p_uid, False)

    def _read(self, s):
        self._take(s)
        try:
            data = os.read(s.fd, _READ_SIZE)
        except BlockingIOError:
            data = None
        if data:
            self._feed(s, data)
        elif data is not None:
            self._flush_partial(s)
            self._close_stream(s)
            c = s.child
            if c is not None and c.watched and c.pidfd >= 0:
                self._taken(s)
                self._settle(c)
                return
        self._taken(s)

    def _settle(self, child):
        """A pipe of ``child`` reached EOF: it is exiting, most likely (its
        files are closed just before the kernel marks it exited).  Handle
        the exit in this wake-up (its other pipe drained to EOF with it) if
        its pidfd turns readable within a few yields, rather than sleeping
        and being woken by the other pipe's EOF and the pidfd
        (docs/shepherd.md)."""
        for _ in range(_SETTLE_YIELDS):
            if _fd_ready(child.pidfd):
                self._on_exit(child)
                return
            os.sched_yield()

    def _drain(self, s, final):
        """Read ``s`` until it would block or hits EOF; with ``final``,
        write out its trailing partial line too."""
        self._take(s)
        while s.fd >= 0:
            try:
                data = os.read(s.fd, _READ_SIZE)
            except BlockingIOError:
                break
            if not data:
                self._flush_partial(s)
                self._close_stream(s)
                break
            self._feed(s, data)
        if final:
            self._flush_partial(s)
        self._taken(s)

    def _close_stream(self, s):
        if s.fd < 0:
            return
        with self._lock:
            del self._fds[s.fd]
            self._ep.unregister(s.fd)
            os.close(s.fd)
        s.fd = -1

    # --- output forwarding ---------------------------------------------
    def _feed(self, s, data):
        buf = s.partial + data if s.partial else data
        nl = buf.rfind(b"\n")
        if nl < 0:
            if len(buf) > _MAX_PARTIAL:
                self._emit(s, buf, end_line=False)
                s.partial = b""
            else:
                s.partial = buf
                self._held(s)
            return
        whole, s.partial = buf[:nl + 1], buf[nl + 1:]
        if s.eager:
            # the held line is ended: a new one waits from its own start
            self._prompts.pop(s, None)
        if s.partial:
            self._held(s)
        if s.prefix:
            head = s.prefix if s.at_line_start else b""
            whole = head + whole[:-1].replace(b"\n", b"\n" + s.prefix) + b"\n"
        self._out(s, whole)
        s.at_line_start = True

    def _held(self, s):
        """``s`` holds a partial line: an eager stream's (a stdin reader's,
        unlabelled) is written once its writer waits (:meth:`_write_prompts`),
        so that a prompt shows before the reply is typed; the rest of a
        line comes sooner (a long line comes in pieces, a print writes
        its newline apart), and the line goes whole."""
        if s.eager and not s.prefix and s not in self._prompts:
            now = _monotonic()
            self._prompts[s] = (now + _PROMPT_WAIT, now + _PROMPT_MAX)

    def _write_prompts(self, now):
        """Look at the partial lines held :data:`_PROMPT_WAIT` s
        (:meth:`_held`): what came since is read first; a line still
        unfinished is written if its process is not runnable (it waits:
        for input, at a prompt) or has been held :data:`_PROMPT_MAX` s,
        else looked at again later (it is writing the rest, or was
        preempted in the middle of its line: under load that took more
        than 50 ms).  Returns the seconds until the next look (None:
        nothing held)."""
        due = None
        for s, (at, until) in list(self._prompts.items()):
            if at <= now:
                self._drain(s, final=False)
                got = self._prompts.get(s)
                if got is not None and got[0] > now:
                    at = got[0]           # a line ended meanwhile: the next one's own wait (_feed)
                elif s.partial and s.fd >= 0 and now < until and _runnable(s.child):
                    at = now + _PROMPT_WAIT
                    self._prompts[s] = (at, until)
                else:
                    self._prompts.pop(s, None)
                    if s.partial and s.fd >= 0:
                        self._emit(s, s.partial, end_line=False)
                        s.partial = b""
                        self._taken(s)
                    continue
            due = at - now if due is None else min(due, at - now)
        return due

    def _emit(self, s, data, end_line):
        """Write ``data`` (no newline inside) as the rest of a line."""
        if s.prefix:
            if s.at_line_start:
                data = s.prefix + data
            if end_line:
                data += b"\n"
        self._out(s, data)
        s.at_line_start = end_line or not s.prefix

    def _flush_partial(self, s):
        if s.partial:
            # Labelled output is line-oriented: end the line.  Unlabelled
            # output stays byte-exact; _out() starts a new line only if
            # another stream writes to the same fd after it.
            self._emit(s, s.partial, end_line=bool(s.prefix))
            s.partial = b""

    def _out(self, s, data):
        """Write a stream's data to its fd.  If another stream left a line
        open on that fd (it wrote no final newline), end that line first, so
        lines of different processes are never glued together."""
        fd = s.out_fd
        owner = self._open_line.get(fd)
        if owner is not None and owner is not s:
            self._write(fd, b"\n")
        self._write(fd, data)
        self._open_line[fd] = None if data.endswith(b"\n") else s

    def _write(self, fd, data):
        if fd in self._dead_out:
            return
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                _fd_ready(fd, None, select.POLLOUT)
                continue
            except OSError as exc:        # EPIPE etc.: the reader is gone
                self._dead_out.add(fd)
                log.warning("output to fd %d stopped: %s", fd, exc)
                return
            view = view[n:]

    # ------------------------------------------------------------------
    def quiet_reports(self, send_quiet, unread, poke):
        """Report a plain exit (code 0, no GS name, no signal asked through
        GS) without waking GS: ``send_quiet(bytes)`` puts it on GS's control
        channel alone, ``unread()`` says whether that channel holds
        anything, ``poke()`` wakes GS to read it.  GS reads its control
        channel at each wake-up (the next start's request, in a loop of
        starts), so the report rarely needs a wake-up of its own: one is
        sent :data:`POKE_DELAY` after it if it is still unread then, and at
        once for a process a join in GS waits for (``ShExitWanted``)."""
        self._quiet = (send_quiet, unread, poke)

    def _on_exit_wanted(self, msg):
        """A join waits in GS for the end of ``msg.p_uids``: each exit of
        theirs is reported with a poke (one reported quietly already and
        unread is poked now)."""
        p_uids = msg.p_uids
        if not isinstance(p_uids, list) or self._quiet is None:
            return
        with self._lock:          # (the loop thread takes one out at its exit)
            want = {p for p in self._exit_wanted if p in self._children}
            want.update(p for p in p_uids if type(p) is int)
            self._exit_wanted = want
        if self._unread():
            self._poke()

    def _poke_late(self, now):
        """Main thread: a quiet report that GS has not read by its
        deadline is poked; read (GS woke for anything else and read its
        control channel), nothing to do."""
        if not self._unread():
            self._poke_by = None
        elif now >= self._poke_by:
            self._poke_by = None
            self._poke()

    def _unread(self):
        try:
            return self._quiet[1]() > 0
        except Exception:         # GS's channel gone (the runtime's end): nothing to poke
            return False

    def _poke(self):
        with self._send_lock:
            try:
                self._quiet[2]()
            except Exception as exc:  # GS gone: nothing better to do than log
                log.error("cannot wake GS: %r", exc)

    def _send(self, msg, quiet=False):
        with self._send_lock:
            try:
                (self._quiet[0] if quiet else self._send_raw)(msg.pack())
            except Exception as exc:  # GS gone: nothing better to do than log
                log.error("cannot send %r to GS: %r", msg, exc)

    def close(self):
        """Release the loop's fds.  Children still running (only if
        :meth:`serve` never ran to the end) are killed and reaped, the
        child of a spawn in flight too: close waits for it (the spawn lock;
        a spawn afterwards is refused), at most :data:`_CLOSE_WAIT` s."""
        got = self._spawn_lock.acquire(timeout=_CLOSE_WAIT)
        try:
            if self._closed:
                return
            self._closed = True
        finally:
            if got:
                self._spawn_lock.release()
        if not got:
            log.warning("closing with a spawn still in flight after %.0f s", _CLOSE_WAIT)
        if self._template is not None:
            self._template.close()
        with self._lock:
            children = list(self._children.values())
            self._children.clear()
        for child in children:
            if child.external:            # attached: not ours to kill or reap
                if child.pidfd >= 0:
                    os.close(child.pidfd)
                continue
            try:
                signal.pidfd_send_signal(child.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(child.pid, 0)
            os.close(child.pidfd)
            for s in child.streams:
                if s.fd >= 0:
                    os.close(s.fd)
                    s.fd = -1
        for obj in list(self._fds.values()):
            if isinstance(obj, _Stream) and obj.fd >= 0:
                os.close(obj.fd)
                obj.fd = -1
        self._fds.clear()
        self.resources.close()
        self._ep.close()
        os.close(self._wake)
        os.close(self._devnull)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run(in_channel, gs_channel, base_env=None, label="none", parent_pid=None, ctl_channel=None,
        death_reports=True, control_pool=None, pools=None, first_request=False):
    """Run a shepherd until GS sends ``ShShutdown``; must be called on the
    main thread of a process dedicated to it (the launcher forks one and
    calls this; then ``os._exit``).

    Parameters
    ----------
    in_channel
        The shepherd's input channel (``recv() -> bytes``); read by a
        dedicated request thread, which also does all the spawning.
    gs_channel
        GS's public input channel (``send(bytes)``).
    ctl_channel
        GS's private control channel (``send(bytes)``).  When given, every
        message to GS goes there, followed by :data:`ember.messages.POKE`
        on ``gs_channel`` (GS accepts the shepherd's messages only from the
        control channel); when None, messages go to ``gs_channel`` itself.
    base_env : mapping or None
        The runtime's environment for children (``os.environ`` if None).
    label : {"none", "puid", "name"}
        Output line prefix, see :class:`Shepherd`.
    death_reports : bool
        See :class:`Shepherd`.
    control_pool : Pool or None
        The runtime's private control pool: a ``.py`` head forked from the
        shepherd unmaps it before its program runs.
    pools : dict or None
        ``{m_uid: Pool}``: the runtime's own pools (infrastructure 0,
        default 1), already mapped in this process (the launcher forked
        it).  Without it they are attached from the environment
        (``EMBER_INF_POOL``, ``EMBER_DEFAULT_POOL``).
    first_request : bool
        The first request is on its way (``ember run``'s head): the main
        thread takes and handles it before it starts the request thread
        and the loop.
    parent_pid : int or None
        The launcher's pid.  The shepherd sets PR_SET_PDEATHSIG(SIGKILL) so
        it dies with the thread that forked it (the launcher must fork from
        a thread that lives as long as the runtime); with ``parent_pid``
        given it also checks the launcher did not die before that, and
        raises RuntimeError if it did.

    If the input channel fails, every child is killed and run() returns
    without sending ``ShShutdownDone``.  SIGINT is ignored (the launcher
    forwards Ctrl-C to the head process); children get default dispositions.
    The soft RLIMIT_NOFILE is raised to the hard limit first
    (:func:`raise_nofile_limit`).
    """
    set_pdeathsig(signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:
        raise RuntimeError(f"the launcher (pid {parent_pid}) exited before the shepherd started")
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
        pass                              # not the main thread
    old_soft, _ = raise_nofile_limit()

    if ctl_channel is None:
        send = gs_channel.send
    else:
        poke = M.POKE

        def send(data):          # called under the shepherd's send lock
            ctl_channel.send(data)
            gs_channel.send(poke)

    shepherd = Shepherd(send, base_env=base_env, label=label, death_reports=death_reports)
    if ctl_channel is not None:
        shepherd.quiet_reports(ctl_channel.send, ctl_channel.__len__,
                               lambda: gs_channel.send(poke))
    shepherd.control_pool = control_pool
    runtime_id = _env.get(_env.RUNTIME_ID)
    if runtime_id:
        shepherd.open_output_board(runtime_id)
    # The runtime's own pools (made by the launcher): swept too when a
    # process dies, though no channel was made in them through us.
    for m_uid, var in ((0, _env.INF_POOL), (1, _env.DEFAULT_POOL)):
        if pools and pools.get(m_uid) is not None:
            shepherd.resources.adopt_pool(m_uid, pools[m_uid])
            continue
        sdesc = _env.get(var)
        if sdesc:
            try:
                shepherd.resources.adopt(m_uid, _env.decode(sdesc))
            except Exception as exc:
                log.warning("cannot attach pool %d to sweep it: %s", m_uid, exc)
    # GS's requests come in bursts (create, then destroy): spin a little
    # after each before sleeping, as GS does on its input; adaptive: a
    # spin that catches nothing (after a start's ShSpawn, the next comes a
    # start later) shrinks to an eighth, and grows back in a burst.
    if hasattr(in_channel, "set_spin"):
        from ..globalservices._client import CONTROL_SPIN
        in_channel.set_spin(CONTROL_SPIN, adaptive=True)
    import resource
    if old_soft != resource.RLIM_INFINITY:
        shepherd.child_nofile = old_soft       # children get the limit we started with

    def take(first_only):
        """Read and handle GS's requests; with ``first_only``, one.  True
        while the shepherd goes on (False: ShShutdown, or the channel
        failed and every child is being killed)."""
        from ..exceptions import ChannelError
        try:
            while True:
                try:
                    data = in_channel.recv(timeout=shepherd.spare_due())
                except TimeoutError:      # ChannelEmpty: nothing within the spare's delay
                    shepherd.ask_spare()
                    continue
                except ChannelError as exc:
                    # a message someone scribbled over is dropped; the channel goes on
                    if "[EMBER_ERR_CORRUPT]" not in str(exc):
                        raise
                    log.warning("dropped a corrupt message on the input channel: %s", exc)
                    continue
                if not shepherd.handle(data):
                    return False
                if first_only:
                    return True
        except BaseException as exc:  # channel destroyed / broken
            log.error("input channel failed (%r); killing every child", exc)
            shepherd.request_stop(None)
            return False

    def request_loop(ended):
        try:
            take(False)
            # Stay alive until the loop is done: this thread is the parent of
            # every child, and its exit would SIGKILL them (PR_SET_PDEATHSIG).
            shepherd.wait_done()
        finally:
            ended.set()

    # Under ``ember run`` the first request is the head's spawn.  Taken
    # here, on the main thread, before the request thread and the loop
    # start (their start and the GIL they would share are not on the
    # head's way); the main thread, the head's parent for
    # PR_SET_PDEATHSIG, lives as long as the shepherd.
    # (A bare thread: no threading module in the shepherd, nor in the .py
    # heads forked from it, ~1.5 ms of each start.)
    if first_request and not take(True):
        reader = None
    else:
        reader = _Flag()
        _thread.start_new_thread(request_loop, (reader,))
    try:
        shepherd.serve()
    finally:
        # After a clean serve() the reader returns at once; if serve() raised,
        # the reader may be blocked in recv(): close() kills the children.
        if reader is not None:
            reader.wait(timeout=1.0)
        shepherd.close()


def main_forked(in_channel, gs_channel, label="none", ctl_channel=None, death_reports=True,
                control_pool=None, pools=None, first_request=False):
    """Entry point when the launcher forks the shepherd: run it, return the
    process exit code (0 after a clean ShShutdown)."""
    try:
        run(in_channel, gs_channel, label=label, ctl_channel=ctl_channel,
            death_reports=death_reports, control_pool=control_pool, pools=pools,
            first_request=first_request)
        return 0
    except BaseException:
        import traceback
        traceback.print_exc()
        return 1
