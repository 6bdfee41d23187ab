"""Starting commands on the nodes of a runtime: here, over SSH, or with
Slurm's ``srun`` inside an allocation.

A runtime that spans several nodes starts one shepherd and one transport
agent per node.  This module is only the "start a command over there, get
its pipes back, make sure it dies with us" layer; what runs is up to the
caller.  It stands on the engines a cluster already has: the system
``ssh`` (keys already set up, ``-F FILE`` or the user's ssh config) for a
host list, and ``srun`` for a Slurm allocation.  A new engine (PBS,
``mpiexec``) is one more :class:`NodeLauncher` subclass.

``detect(hosts)`` picks the launcher: ``hosts`` given → :class:`SSHLauncher`
on those hosts; inside a Slurm allocation → :class:`SlurmLauncher` on the
allocation's nodes; otherwise :class:`LocalLauncher` on this one node.

The watchdog
------------
Nothing started on a node may outlive the launcher, however it ends
(SIGKILLed included).  Every command therefore runs under a small watchdog
on the node (:mod:`ember.launcher._watch`, which imports next to nothing:
it is on every node's start-up path)::

    <python> -m ember.launcher._watch [--grace S] [--cwd DIR] -- argv...

started by absolute interpreter path (the launcher's ``sys.executable``,
never ``python3`` on the remote ``PATH``, where a login shell may put
something else first).  The watchdog

- starts ``argv`` in a session and process group of its own, with
  PR_SET_PDEATHSIG(SIGKILL), and becomes the child subreaper, so
  descendants that double-fork are still its children;
- forwards what arrives on its stdin to the command's stdin;
- shuts the command down when its stdin reaches EOF (the ssh or srun
  connection died, the launcher died, or :meth:`RemoteCommand.close_stdin`),
  or when it gets SIGTERM or SIGHUP: SIGTERM to the group and to every
  descendant, ``--grace`` seconds, then SIGKILL until none is left;
- when the command exits by itself, kills whatever it left behind the same
  way, then exits with the command's status (128+N if signal N killed it,
  as shells do; the same through every launcher).

Before starting the command it writes one line to its stderr,
``EMBER-WATCH-READY <pid> <hostname> <command pid>``; :meth:`NodeLauncher.start` waits for
it, so a command that could not even be started (unknown host, refused ssh,
``srun`` outside an allocation, a missing executable or directory on the
node) raises :class:`~ember.exceptions.LauncherError` naming the node and
the tail of what the launch printed, instead of looking like a command that
exited.

The lifeline is the stdin pipe: the launcher holds its write end, so
launcher death is EOF on the node.  A process forked by the launcher
without exec must not keep that end open: an at-fork handler in this module
points every lifeline at /dev/null in the child.
"""
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Sequence

from ..exceptions import LauncherError
# (No dataclasses, typing, shutil or socket: ``ember run --hosts`` imports
# this module before it starts the ssh connections, so whatever it imports
# delays every node's start.)

__all__ = [
    "NodeSpec", "RemoteCommand", "NodeLauncher", "LocalLauncher", "SSHLauncher",
    "SlurmLauncher", "LauncherError", "parse_hosts", "in_slurm_allocation",
    "slurm_nodes", "detect", "READY_MARKER", "FAILED_MARKER",
]

from ._watch import DEFAULT_GRACE, FAILED_MARKER, READY_MARKER  # noqa: E402
DEFAULT_START_TIMEOUT = 60.0  # seconds to wait for the watchdog's READY line
_TAIL = 2000                 # characters of the launch's stderr kept for errors
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_HOST_OK = re.compile(r"[A-Za-z0-9_.:%@\-]+\Z")


class NodeSpec:
    """One node of a runtime (immutable, compared and hashed by value).

    ``index`` is its node number (0 is the head's node), ``host`` what
    ``ssh`` / ``srun -w`` need to reach it (``user@host`` for ssh is
    allowed), ``name`` its display name (the host name).
    """
    __slots__ = ("index", "host", "name")

    def __init__(self, index, host, name):
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "name", name)

    def __setattr__(self, key, value):
        raise AttributeError(f"cannot assign to field {key!r}: a NodeSpec is immutable")

    def __delattr__(self, key):
        raise AttributeError(f"cannot delete field {key!r}: a NodeSpec is immutable")

    def _key(self):
        return (self.index, self.host, self.name)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return self._key() == other._key()
        return NotImplemented

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"NodeSpec(index={self.index!r}, host={self.host!r}, name={self.name!r})"

    def __reduce__(self):
        return (NodeSpec, self._key())


def _which(cmd):
    """What ``shutil.which(cmd)`` finds (shutil imports its compressors)."""
    if os.sep in cmd:
        return cmd if os.access(cmd, os.X_OK) and not os.path.isdir(cmd) else None
    from ._watch import _which as which
    return which(cmd, os.environ.get("PATH", os.defpath))


# --------------------------------------------------------------------------
# Host lists and Slurm
# --------------------------------------------------------------------------

def parse_hosts(spec):
    """Parse a host list into :class:`NodeSpec` s numbered from 0.

    ``spec`` is ``"n1,n2,n3"`` (commas and/or white space), a sequence of
    names, or ``"@FILE"``: one host per line, ``#`` starts a comment.
    Bracket ranges (``n[1-3]``) are not expanded: pass the plain names (in
    Slurm, ``scontrol show hostnames``).  A ``user@host`` entry keeps
    ``user@host`` as ``host`` (for ssh) and ``host`` as ``name``.

    Raises ValueError for an empty list, a duplicate, a bracket range or a
    name ssh could take for an option.
    """
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("@"):
            path = text[1:]
            try:
                with open(path, encoding="utf-8") as f:
                    lines = [ln.split("#", 1)[0] for ln in f]
            except OSError as e:
                raise ValueError(f"cannot read the host file {path!r}: {e.strerror}") from None
            items = [w for ln in lines for w in re.split(r"[\s,]+", ln) if w]
            where = f"host file {path!r}"
        else:
            items = [w for w in re.split(r"[\s,]+", text) if w]
            where = f"host list {spec!r}"
    elif isinstance(spec, Sequence):
        items = []
        for w in spec:
            if not isinstance(w, str):
                raise TypeError(f"host names must be str, not {type(w).__name__} ({w!r})")
            w = w.strip()
            if not w:
                raise ValueError(f"empty host name in {list(spec)!r}")
            items.append(w)
        where = f"host list {list(spec)!r}"
    else:
        raise TypeError(f"hosts must be a str or a sequence of str, not {type(spec).__name__}")
    if not items:
        raise ValueError(f"the {where} names no host")
    seen = set()
    nodes = []
    for i, host in enumerate(items):
        if "[" in host or "]" in host:
            raise ValueError(
                f"host {host!r} in the {where} is a bracket range, which is not expanded: "
                "list the names (in Slurm: scontrol show hostnames)")
        if host.startswith("-") or not _HOST_OK.match(host):
            raise ValueError(f"host {host!r} in the {where} is not a valid host name")
        if host in seen:
            raise ValueError(f"host {host!r} appears twice in the {where}")
        seen.add(host)
        name = host.rsplit("@", 1)[-1]
        nodes.append(NodeSpec(i, host, name))
    return nodes


def in_slurm_allocation():
    """True if this process runs inside a Slurm allocation (``salloc``,
    ``sbatch``, or a step of one): ``SLURM_JOB_ID`` is set."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def slurm_nodes():
    """The nodes of the current Slurm allocation, in Slurm's order, from
    ``scontrol show hostnames $SLURM_JOB_NODELIST``.

    Raises LauncherError outside an allocation or without ``scontrol``.
    """
    if not in_slurm_allocation():
        raise LauncherError("not inside a Slurm allocation (SLURM_JOB_ID is not set): "
                            "run under salloc or sbatch")
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        raise LauncherError("inside a Slurm allocation but SLURM_JOB_NODELIST is not set")
    scontrol = _which("scontrol")
    if scontrol is None:
        raise LauncherError("scontrol not found on PATH: Slurm's client commands are needed "
                            "to list the allocation's nodes")
    try:
        r = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True,
                           timeout=60, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LauncherError(f"scontrol show hostnames {nodelist} did not answer within 60 s") from None
    if r.returncode != 0:
        raise LauncherError(f"scontrol show hostnames {nodelist} failed (exit {r.returncode}): "
                            f"{_tail(r.stderr)}")
    names = r.stdout.decode().split()
    if not names:
        raise LauncherError(f"scontrol show hostnames {nodelist} listed no node")
    return [NodeSpec(i, n, n) for i, n in enumerate(names)]


def detect(hosts=None, **options):
    """Pick the launcher and the nodes.

    ``hosts`` (a host list as :func:`parse_hosts` takes it) → SSH to those
    hosts; otherwise inside a Slurm allocation → ``srun`` on its nodes;
    otherwise this one node, started locally.  ``options`` go to the
    launcher's constructor.  Returns ``(launcher, nodes)``.
    """
    if hosts is not None:
        return SSHLauncher(**options), parse_hosts(hosts)
    if in_slurm_allocation():
        return SlurmLauncher(**options), slurm_nodes()
    return LocalLauncher(**options), [NodeSpec(0, "localhost", os.uname().nodename)]


# --------------------------------------------------------------------------
# RemoteCommand
# --------------------------------------------------------------------------

def _tail(data, n=_TAIL):
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    data = data.strip()
    if not data:
        return "(nothing on stderr)"
    return data if len(data) <= n else "..." + data[-n:]


_lifelines = weakref.WeakSet()   # RemoteCommands whose stdin write end we hold


def _drop_lifelines_in_child():
    # A fork without exec must not keep the nodes' lifelines open: point each
    # write end at /dev/null (the file objects stay valid, closing them later
    # closes /dev/null).
    try:
        cmds = list(_lifelines)
    except Exception:
        return
    null = None
    for cmd in cmds:
        f = cmd.stdin
        try:
            fd = f.fileno()
        except Exception:
            continue
        if null is None:
            null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.dup2(null, fd, inheritable=False)
        except OSError:
            pass
    if null is not None:
        os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_lifelines_in_child)


class RemoteCommand:
    """One command running on a node, seen through the local process that
    started it (the watchdog itself, ``ssh`` or ``srun``).

    ``stdin`` is an unbuffered binary pipe to the command (writes go out at
    once; closing it asks the node to shut the command down), ``stdout`` and
    ``stderr`` binary pipes from it, or None when not captured.  ``pid`` is
    the local process, ``remote_pid`` the watchdog's pid on the node (in
    the node's pid namespace) and ``remote_host`` its host name, both known
    once :meth:`wait_ready` returned.  ``returncode`` is None while it runs.

    Made only by :meth:`NodeLauncher.start`.  Use as a context manager, or
    call :meth:`close`, to be sure it is gone and its pipes are closed.
    """

    def __init__(self, launcher, node, argv, popen, capture):
        self.launcher = launcher
        self.node = node
        self.argv = list(argv)
        self._popen = popen
        self.pid = popen.pid
        self.capture = capture
        raw = popen.stdin.detach()           # unbuffered: no forgotten flush
        popen.stdin = raw
        self.stdin = raw
        self.stdout = popen.stdout if capture else None
        self._err = popen.stderr             # always a pipe (the READY line)
        self.stderr = popen.stderr if capture else None
        self.remote_pid = None
        self.remote_host = None
        self.remote_pgid = None
        self.preamble = b""                  # what came on stderr before READY
        self._ready = False
        self._forwarder = None
        _lifelines.add(self)

    def __repr__(self):
        state = "running" if self.returncode is None else f"exit {self.returncode}"
        return (f"<RemoteCommand node={self.node.index} ({self.node.name}) "
                f"argv={self.argv!r} via {self.launcher.name} pid={self.pid} {state}>")

    @property
    def returncode(self):
        return self._popen.returncode

    # -- start-up -----------------------------------------------------------

    def wait_ready(self, timeout=DEFAULT_START_TIMEOUT):
        """Wait until the watchdog on the node has started the command.

        Raises LauncherError (after killing and reaping the local process)
        if the launch failed or no READY line came within ``timeout``.
        """
        if self._ready:
            return self
        fd = self._err.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        buf = bytearray()
        while True:
            end = buf.rfind(b"\n")
            if end >= 0:
                lines = bytes(buf[:end])
                for ln in lines.split(b"\n"):
                    if ln.startswith(READY_MARKER):
                        return self._got_ready(bytes(buf), ln)
                    if ln.startswith(FAILED_MARKER):
                        msg = ln[len(FAILED_MARKER):].decode(errors="replace").strip()
                        rest = bytes(buf).replace(ln + b"\n", b"")
                        self._fail(f"the node could not run it: {msg}", rest)
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([fd], [], [], wait)
            if not r:
                self._fail(f"no answer from the node within {timeout} s", buf)
            chunk = os.read(fd, 1)   # byte by byte: nothing after READY is consumed
            if not chunk:
                try:
                    self._popen.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
                self._fail(f"the {self.launcher.name} launch ended "
                           f"(exit status {self._popen.returncode})", buf)
            buf += chunk

    def _got_ready(self, buf, line):
        idx = buf.find(line)
        self.preamble = buf[:idx]
        parts = line.decode(errors="replace").split()
        try:
            self.remote_pid = int(parts[1])
            self.remote_host = parts[2]
            self.remote_pgid = int(parts[3])
        except (IndexError, ValueError):
            pass
        self._ready = True
        if self.preamble.strip() and not self.capture:
            os.write(2, self.preamble)
        if not self.capture:
            self._forwarder = threading.Thread(target=self._forward_stderr, daemon=True,
                                               name=f"ember-node{self.node.index}-stderr")
            self._forwarder.start()
        return self

    def _forward_stderr(self):
        fd = self._err.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                try:
                    os.write(2, chunk)
                except OSError:
                    pass
        except OSError:
            pass

    def _fail(self, why, buf):
        self.kill()
        try:
            self._popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            rest = b""
            if self._popen.returncode is not None:
                r, _, _ = select.select([self._err], [], [], 0)
                if r:
                    rest = os.read(self._err.fileno(), 65536)
        except (OSError, ValueError):
            rest = b""
        self._close_pipes()
        raise LauncherError(
            f"cannot start {self.argv[0]!r} on node {self.node.index} ({self.node.host}) "
            f"with {self.launcher.name}: {why}"
            + (f"; stderr: {_tail(bytes(buf) + rest)}" if (bytes(buf) + rest).strip() else ""),
            node=self.node, argv=self.argv, stderr=(bytes(buf) + rest).decode(errors="replace"))

    # -- Popen-like ----------------------------------------------------------

    def poll(self):
        """The exit status if the command ended, else None."""
        return self._popen.poll()

    def wait(self, timeout=None):
        """Wait for the command to end and return its exit status (128+N
        for signal N on the node; the local process's status if it was
        killed here: -N).  Raises subprocess.TimeoutExpired."""
        rc = self._popen.wait(timeout)
        if self._forwarder is not None:
            self._forwarder.join(5.0)
        return rc

    def send_signal(self, sig):
        """Send ``sig`` to the local process (watchdog, ssh or srun)."""
        if self._popen.returncode is None:
            try:
                self._popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def terminate(self):
        """SIGTERM to the local process: the node's command gets SIGTERM,
        then SIGKILL after the grace period (directly, or because the
        connection to the node closes)."""
        self.send_signal(signal.SIGTERM)

    def kill(self):
        """Kill the command.  Through ssh or srun: SIGKILL to the local
        process; the node notices the connection's end and kills the
        command's whole process group.  Locally: SIGKILL to the command's
        process group; its watchdog then kills what is left and exits."""
        self.launcher._kill(self)

    def close_stdin(self):
        """Close the command's stdin: the watchdog on the node takes the EOF
        as the order to shut the command down."""
        try:
            self.stdin.close()
        except OSError:
            pass

    def _close_pipes(self):
        for f in (self.stdin, self._popen.stdout, self._err):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        _lifelines.discard(self)

    def close(self, timeout=None):
        """Shut the command down and release everything: close stdin, wait
        up to ``timeout`` (default: the grace period plus 5 s), kill if it is
        still there, reap, close the pipes.  Returns the exit status."""
        if timeout is None:
            timeout = self.launcher.grace + 5.0
        self.close_stdin()
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self._popen.wait()
        if self._forwarder is not None:
            self._forwarder.join(5.0)
        self._close_pipes()
        return self._popen.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------

class NodeLauncher(ABC):
    """Starts commands on nodes.  Subclasses say how to reach a node
    (:meth:`_command_line`); start-up, the watchdog and the errors are
    shared.

    ``python``: the interpreter the node runs the watchdog with (default
    this one's ``sys.executable``: the nodes share the path, as they share
    the installation).  ``grace``: seconds between SIGTERM and SIGKILL
    when a node shuts a command down.
    """

    name = "?"

    def __init__(self, python=None, grace=DEFAULT_GRACE):
        self.python = python or sys.executable
        if not os.path.isabs(self.python):
            raise ValueError(f"python must be an absolute path, not {self.python!r}")
        if not (isinstance(grace, (int, float)) and grace >= 0):
            raise ValueError(f"grace must be a number >= 0, not {grace!r}")
        self.grace = float(grace)
        self._commands = weakref.WeakSet()
        self._closed = False

    def __repr__(self):
        return f"<{type(self).__name__} python={self.python!r}>"

    def watch_argv(self, argv, cwd=None):
        """The node-side command line: the watchdog running ``argv``."""
        out = [self.python, "-m", "ember.launcher._watch", "--grace", repr(self.grace)]
        if cwd is not None:
            out += ["--cwd", cwd]
        return out + ["--"] + list(argv)

    def start(self, node, argv, env=None, cwd=None, capture=True, *, ready=True,
              timeout=DEFAULT_START_TIMEOUT):
        """Start ``argv`` on ``node`` under the watchdog.

        ``env``: variables to set for the command (only these are passed;
        the command sees them on top of the node's own environment, see
        each launcher).  ``cwd``: its working directory on the node.
        ``capture``: pipe its stdout and stderr back (else they go to this
        process's).  ``ready``: wait (up to ``timeout`` s) until the node
        has started it, raising LauncherError if it could not; with
        ``ready=False`` call :meth:`RemoteCommand.wait_ready` later (to
        start on many nodes at once).
        """
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if not isinstance(node, NodeSpec):
            raise TypeError(f"node must be a NodeSpec, not {type(node).__name__}")
        if isinstance(argv, (str, bytes)) or not isinstance(argv, Sequence):
            raise TypeError(f"argv must be a list of str, not {type(argv).__name__}")
        argv = list(argv)
        if not argv:
            raise ValueError("argv is empty: give the command to run")
        for a in argv:
            if not isinstance(a, str):
                raise TypeError(f"argv items must be str, not {type(a).__name__} ({a!r})")
            if "\0" in a:
                raise ValueError(f"argv item {a!r} contains a NUL byte")
        env = dict(env or {})
        for k, v in env.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                raise ValueError(f"environment variable name {k!r} is not valid")
            if not isinstance(v, str):
                raise TypeError(f"environment variable {k} must be a str, not {type(v).__name__}")
            if "\0" in v:
                raise ValueError(f"environment variable {k} contains a NUL byte")
        if cwd is not None and (not isinstance(cwd, str) or not cwd):
            raise ValueError(f"cwd must be a non-empty str, not {cwd!r}")
        cmdline, popen_env = self._command_line(node, self.watch_argv(argv, cwd), env)
        try:
            popen = subprocess.Popen(
                cmdline, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE,
                env=popen_env, start_new_session=True)
        except OSError as e:
            raise LauncherError(
                f"cannot start {argv[0]!r} on node {node.index} ({node.host}) with {self.name}: "
                f"cannot run {cmdline[0]!r}: {e.strerror}", node=node, argv=argv, stderr="") from None
        cmd = RemoteCommand(self, node, argv, popen, capture)
        self._commands.add(cmd)
        if ready:
            cmd.wait_ready(timeout)
        return cmd

    def _kill(self, cmd):
        cmd.send_signal(signal.SIGKILL)

    @abstractmethod
    def _command_line(self, node, watch_argv, env):
        """Return ``(local argv, local environment or None)`` that runs
        ``watch_argv`` on ``node`` with ``env`` added."""

    def close(self):
        """Shut down every command this launcher started and still runs."""
        self._closed = True
        for cmd in list(self._commands):
            cmd.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalLauncher(NodeLauncher):
    """Runs commands on this machine (a one-node runtime, or tests).  The
    command inherits this process's environment plus ``env``; ``node`` is
    only a label."""

    name = "local"

    def _kill(self, cmd):
        if cmd.returncode is None and cmd.remote_pgid is not None and cmd.poll() is None:
            try:
                os.killpg(cmd.remote_pgid, signal.SIGKILL)
                return
            except OSError:
                pass
        cmd.send_signal(signal.SIGKILL)

    def _command_line(self, node, watch_argv, env):
        full = dict(os.environ)
        full.update(env)
        return watch_argv, full


class SSHLauncher(NodeLauncher):
    """Runs commands on other hosts through the system ``ssh`` client.

    Keys must already be set up (``BatchMode=yes``: no password prompt
    ever).  ``ssh_options``: extra ssh arguments (``("-p", "2222")``,
    ``("-o", "User=alice")``), which take precedence over
    :attr:`FAST_OPTIONS`; ``config_file``: an ssh config file passed
    with ``-F`` (else ssh reads the user's and the system's).  One ssh
    connection per command, no login shell (``exec`` of the watchdog in
    the shell sshd runs).  The command
    gets the remote login environment plus ``env`` (set with ``env K=V``
    in the remote command, quoted); nothing else of this process's
    environment is sent.
    """

    name = "ssh"
    BASE_OPTIONS = ("-T", "-x", "-a", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                    "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                    "-o", "LogLevel=ERROR")
    #: A cheaper connection set-up, after the caller's ``ssh_options`` (ssh
    #: keeps the first value it is given for an option, so those override
    #: these; a config file does not).  The key exchange: OpenSSH's default
    #: list without the post-quantum hybrids (sntrup761x25519, mlkem768x25519),
    #: whose key generation is the largest part of a handshake's CPU time
    #: (about 0.1 s per connection measured on a 2-CPU node, more under
    #: load), both ends.  What the session carries — the runtime's CURVE
    #: key pair, the nodes' output — is protected by Curve25519 afterwards
    #: anyway (CurveZMQ), so a post-quantum handshake would not protect the
    #: runtime more.  ``UpdateHostKeys=no``: no learning of new host keys
    #: (a possible extra round trip and signature).
    FAST_OPTIONS = ("-o", "KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org,"
                    "ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,"
                    "diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,"
                    "diffie-hellman-group18-sha512,diffie-hellman-group14-sha256",
                    "-o", "UpdateHostKeys=no")

    def __init__(self, ssh_options=(), config_file=None, ssh="ssh", **kw):
        super().__init__(**kw)
        if isinstance(ssh_options, str):
            raise TypeError("ssh_options must be a sequence of arguments, not a str")
        self.ssh_options = tuple(ssh_options)
        self.config_file = config_file
        if config_file is not None and not os.path.isfile(config_file):
            raise LauncherError(f"ssh config file {config_file!r} does not exist")
        self.ssh = _which(ssh)
        if self.ssh is None:
            raise LauncherError(f"{ssh!r} not found on PATH: the ssh client is needed to start "
                                "commands on other hosts")

    def _command_line(self, node, watch_argv, env):
        remote = watch_argv
        if env:
            remote = ["env"] + [f"{k}={v}" for k, v in env.items()] + remote
        cmd = [self.ssh, *self.BASE_OPTIONS]
        if self.config_file is not None:
            cmd += ["-F", self.config_file]
        cmd += [*self.ssh_options, *self.FAST_OPTIONS, "--", node.host,
                "exec " + shlex.join(remote)]
        return cmd, None


class SlurmLauncher(NodeLauncher):
    """Runs commands on the nodes of the current Slurm allocation, one job
    step each: ``srun -N1 -n1 -w HOST --overlap --export=NONE ...``.

    Must run inside the allocation (``salloc``, ``sbatch``).  The command
    gets Slurm's ``SLURM_*`` variables plus ``env`` (nothing else of this
    process's environment: ``--export=NONE``).  ``srun_options``: extra
    srun arguments.
    """

    name = "slurm"

    def __init__(self, srun_options=(), srun="srun", **kw):
        super().__init__(**kw)
        if isinstance(srun_options, str):
            raise TypeError("srun_options must be a sequence of arguments, not a str")
        self.srun_options = tuple(srun_options)
        if not in_slurm_allocation():
            raise LauncherError("not inside a Slurm allocation (SLURM_JOB_ID is not set): "
                                "run under salloc or sbatch, or give the hosts to use ssh")
        self.srun = _which(srun)
        if self.srun is None:
            raise LauncherError(f"{srun!r} not found on PATH: Slurm's srun is needed to start "
                                "commands on the allocation's nodes")

    def _command_line(self, node, watch_argv, env):
        remote = watch_argv
        if env:
            remote = ["/usr/bin/env"] + [f"{k}={v}" for k, v in env.items()] + remote
        cmd = [self.srun, "-N1", "-n1", "-w", node.host, "--overlap", "--export=NONE",
               "--unbuffered", "--job-name=ember", "--quiet", *self.srun_options, "--", *remote]
        return cmd, None


# --------------------------------------------------------------------------
# The watchdog (runs on the node): ember.launcher._watch, a module of its own
# so that starting it imports next to nothing
# --------------------------------------------------------------------------

def _watch_main(args):
    from ._watch import main as watch_main
    return watch_main(args)


_USAGE = """\
usage: python -m ember.launcher.nodes --watch [--grace S] [--cwd DIR] -- COMMAND [ARGS...]
       python -m ember.launcher.nodes [--hosts HOSTS] -- COMMAND [ARGS...]

--watch: run COMMAND in a process group of its own and kill that group
(SIGTERM, S seconds, SIGKILL) when stdin reaches EOF or on SIGTERM/SIGHUP.
This is what every node runs; ember starts it, you do not need to.

Without --watch: run COMMAND on every node (--hosts n1,n2 or @FILE: ssh;
inside a Slurm allocation: srun; else here) and print its output, each line
prefixed with the node's name.  A quick check that the nodes are reachable:
    python -m ember.launcher.nodes --hosts n1,n2 -- hostname
"""


def _run_everywhere(args):
    hosts = None
    i = 0
    while i < len(args) and args[i] != "--":
        if args[i] == "--hosts" and i + 1 < len(args):
            hosts = args[i + 1]
            i += 2
        else:
            sys.stderr.write(_USAGE)
            return 2
    argv = args[i + 1:]
    if not argv:
        sys.stderr.write(_USAGE)
        return 2
    try:
        launcher, nodes = detect(hosts)
    except (LauncherError, ValueError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    lock = threading.Lock()
    status = {}

    def pump(node, cmd, stream, out):
        for line in iter(stream.readline, b""):
            with lock:
                out.write(f"[{node.name}] ".encode() + line)
                out.flush()

    def one(node):
        try:
            cmd = launcher.start(node, argv)
        except LauncherError as e:
            with lock:
                sys.stderr.write(f"[{node.name}] error: {e}\n")
            status[node.index] = 255
            return
        t = threading.Thread(target=pump, args=(node, cmd, cmd.stderr, sys.stderr.buffer))
        t.start()
        pump(node, cmd, cmd.stdout, sys.stdout.buffer)
        t.join()
        status[node.index] = cmd.close()

    with launcher:
        threads = [threading.Thread(target=one, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return max(status.values(), default=0)


def main(args=None):
    args = sys.argv[1:] if args is None else list(args)
    if args and args[0] == "--watch":
        return _watch_main(args[1:])
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_USAGE)
        return 0 if args else 2
    return _run_everywhere(args)


if __name__ == "__main__":
    sys.exit(main())
