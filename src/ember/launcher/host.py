"""The runtime's host: the process that brings a runtime up, runs (or
serves) it and tears it down — the ``Launcher``.

``ember run`` is a host that runs a head program; ``ember start`` and
``ember.init()`` (through :mod:`ember.runtime`) start a host that serves
until it is stopped or its starter dies.  The command line
(:mod:`ember.launcher.cli`) only parses arguments and calls this.

Bring-up: the launcher takes the runtime's lock (``/dev/shm/ember.<id>.lock``,
its liveness for ``ember cleanup`` and for attaching processes), creates the
infrastructure pool, the default pool and the private control plane, forks
the shepherd and global services (the same interpreter, everything already
imported, the launcher's objects frozen out of the cyclic GC so that the
forks share the heap's pages), publishes the runtime's address
(:mod:`ember.runtime`), then runs the head or serves.  Teardown: every step
independent of the others (a failed one is reported, the run exits 70);
after a clean one the runtime's channels and pools are destroyed while GS
and the shepherd exit; everything named with the runtime's id unlinked at
the end, the address, then the lock last (whoever waits for the lock finds
no address left).
"""
import gc
import os
import _signal as signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)
import sys

from .. import _env, _log

log = _log.get("launcher")

EXIT_START_FAILED = 127
EXIT_RUNTIME_FAILED = 70
EXIT_USAGE = 2
_CONTROL_CAPACITY = 256      # slots of GS's and the shepherd's input channels (back-pressure beyond)
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_SLOT_DELAY = 0.05           # seconds of the head's run before p_uid 0's process slot is bound
SHM_DIR = "/dev/shm"


# --------------------------------------------------------------- proc titles
def _set_title(title):
    """Name this process in ``ps`` (its /proc/PID/cmdline) with setproctitle.
    The C extension is loaded by itself: the package's __init__ imports
    ``logging`` (~15 ms), which no ember process otherwise needs."""
    try:
        mod = sys.modules.get("setproctitle._setproctitle")
        # (loaded once, by the launcher: its forks and the .py head forked
        # from the shepherd find it above, without searching sys.path again)
        spec = None
        if mod is None:
            from importlib import machinery
            spec = machinery.PathFinder.find_spec("setproctitle")
        if mod is None and spec is not None and spec.submodule_search_locations:
            for d in spec.submodule_search_locations:
                for suffix in machinery.EXTENSION_SUFFIXES:
                    path = os.path.join(d, "_setproctitle" + suffix)
                    if os.path.exists(path):
                        loader = machinery.ExtensionFileLoader("setproctitle._setproctitle", path)
                        mspec = machinery.ModuleSpec("setproctitle._setproctitle", loader,
                                                     origin=path)
                        mod = loader.create_module(mspec)
                        loader.exec_module(mod)
                        sys.modules["setproctitle._setproctitle"] = mod
                        break
                if mod is not None:
                    break
        if mod is None:
            import setproctitle as mod
        mod.setproctitle(title)
    except Exception as exc:   # a name in ps is never worth failing a run
        log.debug("cannot set the process title %r: %r", title, exc)


#: Seconds the launcher tries to lock its runtime's lock file that an
#: ``ember cleanup`` holds for a moment (Launcher._runtime_lock).
_LOCK_WAIT = 10.0


def _lock_name(runtime_id):
    return f"ember.{runtime_id}.lock"


def _take_lock(path, create):
    """Open ``path`` and take an exclusive flock without waiting.  Returns
    the fd (the lock is held while it is open), None if someone holds the
    lock, raises OSError if the file cannot be opened."""
    import fcntl
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    if create:
        flags |= os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd



class _Signalled(BaseException):
    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _ChildDied(BaseException):
    def __init__(self, role, text):
        super().__init__(text)
        self.role = role


def _set_pdeathsig():
    try:
        from ..shepherd._spawn import set_pdeathsig
        set_pdeathsig(signal.SIGKILL)
    except ImportError:  # pragma: no cover - the extension is always built
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def _gs_main(gs_ch, sh_ch, tag, dflt, ctl=None, death_reports=True, attach_key=None, mn=None):
    from ..globalservices import server
    return server.main_forked(gs_ch, sh_ch, tag, dflt, control=ctl, death_reports=death_reports,
                              attach_key=attach_key, mn=mn)


def _sh_main(sh_ch, gs_ch, label, ctl=None, death_reports=True, pools=None, first_request=False):
    from ..shepherd import server
    if ctl is not None:
        # The shepherd makes no request as the launcher: its copy of the
        # launcher's key goes (and so the .py head forked from it has none);
        # the head also unmaps the control pool (server.Shepherd._scrub_fork).
        ctl.forget_key()
    return server.main_forked(sh_ch, gs_ch, label=label, death_reports=death_reports,
                              ctl_channel=ctl.to_gs if ctl is not None else None,
                              control_pool=ctl.pool if ctl is not None else None,
                              pools=pools, first_request=first_request)


class Launcher:
    def __init__(self, args):
        self.args = args
        self.tag = _env.owner_tag("r")
        self.children = {}        # pid -> role
        self.dead = set()         # roles that died unexpectedly
        self.head = None
        self.head_pidfd = None
        self.signals = 0
        self.failed = False       # a teardown step failed: exit 70
        self.tty = None           # fd of the terminal handed to the head, if any
        self.shm_lock_fd = None
        self.cluster = None       # several nodes: launcher.multinode.Cluster

    def _make_cluster(self):
        """Several nodes (``--hosts``, or a Slurm allocation of more than
        one node): the :class:`~ember.launcher.multinode.Cluster`, or None
        for a one-node runtime.  Raises ValueError/LauncherError."""
        a = self.args
        if a.command != "run" or getattr(a, "address", None):
            return None
        hosts = getattr(a, "hosts", None)
        if hosts is None and (getattr(a, "single_node", False)
                              or not os.environ.get("SLURM_JOB_ID")):
            return None
        from . import nodes
        from .multinode import Cluster
        options = {}
        if hosts is not None and hosts.startswith("local:"):
            # N node processes on this machine (tests, trying it out)
            try:
                n = int(hosts[6:])
            except ValueError:
                n = 0
            if n < 1:
                raise ValueError(f"--hosts local:N needs N >= 1, not {hosts[6:]!r}")
            nl = nodes.LocalLauncher()
            specs = [nodes.NodeSpec(i, "localhost", "localhost") for i in range(n)]
            return Cluster(a, nl, specs) if n > 1 else None
        if hosts is not None and getattr(a, "ssh_config", None):
            options["config_file"] = a.ssh_config
        nl, specs = nodes.detect(hosts, **options)
        cluster = Cluster(a, nl, specs)
        if not cluster.remote:
            nl.close()
            return None
        return cluster

    # The forked services.  Each returns via os._exit, never to the caller.
    def _fork(self, role, title, fn):
        for f in (sys.stdout, sys.stderr):
            if f is not None:
                f.flush()
        pid = os.fork()
        if pid:
            self.children[pid] = role
            log.debug("forked %s: pid %d", role, pid)
            return pid
        code = 1
        try:
            if getattr(self.args, "ready_fd", None) is not None:
                os.close(self.args.ready_fd)     # only the launcher says "ready"
            _set_pdeathsig()
            if os.getppid() != self.launcher_pid:
                os._exit(1)
            # The cyclic GC is on in every process forked here, as in
            # python3 (cli.entry turned it off for the bring-up: a fork
            # before run() turns it on, the head node's transport agent,
            # would have run with it off all its life).
            gc.enable()
            # Signals meant for the job are the launcher's to handle: the
            # services ignore them (they are blocked since before the fork,
            # so none can slip in before this).
            for s in _FORWARDED:
                signal.signal(s, signal.SIG_IGN)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
            _set_title(title)
            code = fn()
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code if isinstance(code, int) else 1)

    def run(self):
        from ..channels_c import Channel
        from ..exceptions import EmberError
        from ..pools_c import Pool

        a = self.args
        self.launcher_pid = os.getpid()
        # Until the head exists, the job's signals wait (then go to the head).
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        if a.command == "run":
            _set_title(" ".join(["ember: launcher", a.program] + a.args))
        else:
            _set_title("ember: runtime host" + (f" {a.name}" if getattr(a, "name", None) else ""))
        try:
            self.cluster = self._make_cluster()
            if self.cluster is not None:
                self.cluster.launch()
        except Exception as exc:        # LauncherError, ValueError: bad hosts, no srun/ssh
            print(f"ember: cannot run on several nodes: {exc}", file=sys.stderr)
            if self.cluster is not None:
                self.cluster.stop(0)
            return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_RUNTIME_FAILED
        try:
            self.shm_lock_fd = self._runtime_lock()
        except OSError as exc:
            print(f"ember: cannot create the runtime's lock in {SHM_DIR}: {exc}", file=sys.stderr)
            return EXIT_RUNTIME_FAILED
        log.info("runtime %s: lock %s/%s taken", self.tag, SHM_DIR, _lock_name(self.tag))
        inf = dflt = gs_ch = sh_ch = None
        self.ctl = None
        code = EXIT_RUNTIME_FAILED
        try:
            try:
                inf = Pool.create(a.inf_pool_size, name="ember-infrastructure", m_uid=0,
                                  owner_tag=self.tag)
            except (EmberError, OSError, ValueError) as exc:
                print(f"ember: cannot create the infrastructure pool: {exc}", file=sys.stderr)
                return EXIT_RUNTIME_FAILED
            log.info("infrastructure pool created (%d bytes)", a.inf_pool_size)
            try:
                dflt = Pool.create(a.default_pool_size, name="default", m_uid=1, owner_tag=self.tag)
                gs_ch = Channel.create(inf, capacity=_CONTROL_CAPACITY, block_size=512)
                # The shepherd's input and GS's control input live in a pool that
                # managed processes never map (docs/architecture.md, "Trust model").
                from ..globalservices.control import ControlPlane
                self.ctl = ControlPlane.create(self.tag)
                sh_ch = self.ctl.to_shepherd
            except (EmberError, OSError, ValueError) as exc:
                print(f"ember: cannot set up the runtime (--inf-pool-size {a.inf_pool_size}, "
                      f"--default-pool-size {a.default_pool_size}): {exc}", file=sys.stderr)
                return EXIT_RUNTIME_FAILED
            log.info("default pool created (%d bytes); control channels created",
                     a.default_pool_size)
            key_hex = self.ctl.launcher_key.hex()
            os.environ.update({
                _env.RUNTIME_ID: self.tag,
                _env.INF_POOL: _env.encode(inf.sdesc),
                _env.GS_CH: _env.encode(gs_ch.sdesc),
                _env.KEY: key_hex,                       # p_uid 0's request key
                _env.DEFAULT_POOL: _env.encode(dflt.sdesc),
                _env.NODE: "0",
                _env.P_UID: "0",
                _env.LABEL: a.label,
            })
            from ..shepherd._spawn import wipe_str
            wipe_str(key_hex)        # the environment keeps its own copies (the shepherd wipes those)
            del key_hex
            # Everything the three need, imported once here: after the fork
            # GS and the shepherd serve at once, with no import of their own
            # competing with the launcher's for the CPU (ember.runtime: the
            # address the launcher publishes, the event log GS opens;
            # resource: the shepherd's RLIMIT_NOFILE).
            import resource  # noqa: F401
            from .. import messages, runtime  # noqa: F401
            from ..globalservices import process, server as _gs_server  # noqa: F401
            from ..shepherd import resources as _sh_res, server as _sh_server  # noqa: F401
            from . import _forkhead  # noqa: F401  (the shepherd forks a .py head with it)
            # The fast constructors of every run's messages (the head's
            # create and join, the teardown), compiled once here rather
            # than in the sender and again in the receiver of each.
            messages.prepare(messages.ProcessCreate, messages.ProcessJoin, messages.Reply,
                             messages.Teardown, messages.ShSpawn, messages.ShSpawned,
                             messages.ShExited, messages.ShShutdown, messages.ShShutdownDone)
            death_reports = getattr(a, "death_reports", True)
            # what an attaching process must show (os.urandom: the secrets
            # module would import hmac, hashlib and OpenSSL, ~3 ms)
            self.key = os.urandom(16).hex()
            mn = None
            if self.cluster is not None:
                try:
                    self.cluster.prepare(self, self.ctl, gs_ch)
                except Exception as exc:
                    print(f"ember: cannot start the transport agent: {exc}", file=sys.stderr)
                    self.broken = True
                    return EXIT_RUNTIME_FAILED
                mn = self.cluster.gs_config()
            # What is allocated by now lives as long as the runtime: out of
            # the cyclic GC's reach, so that a collection in GS, the shepherd
            # or the .py head forked from it does not write to every object
            # inherited (copy-on-write: ~500 page copies, ~3 ms of the head's
            # start).  The GC was off until here (cli.entry); on again for
            # the launcher and all it forks (the head's program gets it on).
            gc.freeze()
            gc.enable()
            # GS first: the head's create reaches it first (the launcher
            # sends it ~1 ms after the forks, and on two cores the process
            # forked second waits for one); the shepherd is needed only
            # once GS has handled it (~1 ms less than shepherd-first).
            self._fork("global services", "ember: global services",
                       lambda: _gs_main(gs_ch, sh_ch, self.tag, dflt, self.ctl, death_reports,
                                        self.key, mn))
            # (``ember run`` on one node: the shepherd's first request is
            # the head's spawn, which its main thread takes before it starts
            # its request thread and loop: neither is on the head's way.)
            self._fork("shepherd", "ember: shepherd node 0",
                       lambda: _sh_main(sh_ch, gs_ch, a.label, self.ctl, death_reports,
                                        {0: inf, 1: dflt},
                                        first_request=a.command == "run" and self.cluster is None))
            try:
                signal.signal(signal.SIGCHLD, self._on_sigchld)
                self._on_sigchld(signal.SIGCHLD, None)    # one that died before this
                log.info("global services and shepherd forked")
                if self.cluster is not None:
                    try:
                        self.cluster.start_nodes(self.tag)
                    except _ChildDied:
                        raise
                    except Exception as exc:
                        print(f"ember: cannot start the other nodes: {exc}", file=sys.stderr)
                        return EXIT_RUNTIME_FAILED
                try:
                    self._publish(inf, gs_ch, dflt)
                except Exception as exc:
                    print(f"ember: cannot publish the runtime's address: {exc}", file=sys.stderr)
                    self._ready(f"cannot publish the runtime's address: {exc}")
                    return EXIT_RUNTIME_FAILED
                if a.command == "start":
                    code = self._serve_host()
                else:
                    # p_uid 0's connection to GS, from the handles held
                    # here (no second mapping of the pool); its process
                    # slot is bound once the head is created.
                    from ..globalservices import _client
                    _client.connect((inf, gs_ch), bind=False)
                    self.bind_slot = True
                    code = self._run_head(process)
            except _ChildDied as exc:                     # outside _run_head's own catch
                print(f"ember: runtime failure: {exc}", file=sys.stderr)
                self.broken = True
                code = EXIT_RUNTIME_FAILED
        finally:
            self._shutdown(gs_ch, sh_ch, inf, dflt)
            self._unpublish()
        if self.failed:
            return EXIT_RUNTIME_FAILED
        return code

    # ------------------------------------------------------- address, hosting
    def _publish(self, inf, gs_ch, dflt):
        """Publish the address so that other processes of this user can
        attach (``ember.init(address=...)``, ``ember run --address``); its
        liveness is the runtime's lock in /dev/shm, held since bring-up."""
        from .. import runtime
        a = self.args
        program = " ".join([a.program] + list(a.args)) if a.command == "run" else None
        self.address = runtime.publish(
            self.tag, name=getattr(a, "name", None), pid=os.getpid(), key=self.key,
            inf_pool=inf.sdesc, gs_ch=gs_ch.sdesc, default_pool=dflt.sdesc, program=program)

    def _unpublish(self):
        from .. import runtime
        if getattr(self, "address", None) is not None:
            runtime.unpublish(self.tag)
            self.address = None

    def _ready(self, text):
        fd = getattr(self.args, "ready_fd", None)
        if fd is None:
            return
        try:
            os.write(fd, (text + "\n").encode())
        except OSError:
            pass
        os.close(fd)
        self.args.ready_fd = None

    def _serve_host(self):
        """``ember start`` / ``ember.init()``: no head; serve until SIGTERM,
        SIGINT or SIGHUP (``ember stop``), or until the watched process (the
        one that called ``ember.init()``) exits."""
        a = self.args
        watch = None
        if a.watch_pid is not None:
            try:
                watch = os.pidfd_open(a.watch_pid)
            except OSError:
                return 0                      # the starter is gone already
        prev = {s: signal.signal(s, self._on_signal) for s in _FORWARDED}
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)   # blocked since run() began
            if a.ready_fd is not None:
                self._ready(self.address.path)
            else:
                print(f"ember: runtime {self.tag} running; address {self.address.path}; "
                      f"stop with `ember stop {getattr(a, 'name', None) or self.tag}`", flush=True)
            import select
            while True:
                select.select([watch] if watch is not None else [], [], [])
                if watch is not None:
                    return 0                  # the starter exited
        except _Signalled:
            return 0
        except _ChildDied as exc:
            print(f"ember: runtime failure: {exc}", file=sys.stderr)
            self.broken = True
            return EXIT_RUNTIME_FAILED
        finally:
            for s, h in prev.items():
                signal.signal(s, h)
            if watch is not None:
                os.close(watch)

    def run_attached(self, address):
        """``ember run --address ADDR PROGRAM``: run the head in a running
        runtime; it stays up afterwards."""
        from .. import runtime
        from ..exceptions import EmberError
        try:
            runtime.init(address=address)
        except EmberError as exc:
            print(f"ember: {exc}", file=sys.stderr)
            return EXIT_RUNTIME_FAILED
        self.attached = True
        try:
            from ..globalservices import process
            return self._run_head(process)
        finally:
            if self.head_pidfd is not None:
                os.close(self.head_pidfd)
            runtime.shutdown()

    def _runtime_lock(self):
        """Create and flock ``/dev/shm/ember.<tag>.lock``; check that the
        path still names the file we locked (a concurrent ``ember cleanup``
        may take a fresh lock file for an orphan and unlink it).  A cleanup
        that held it for a moment between our create and our flock leaves
        it there (a dry run; a real one until it unlinks it): the file is
        ours (the tag is this runtime's), taken then as it is, for up to
        _LOCK_WAIT s (a cleanup preempted while it holds it)."""
        import time
        path = os.path.join(SHM_DIR, _lock_name(self.tag))
        deadline = time.monotonic() + _LOCK_WAIT
        create = True
        while time.monotonic() < deadline:
            try:
                fd = _take_lock(path, create=create)
            except (FileExistsError, FileNotFoundError) as exc:
                create = isinstance(exc, FileNotFoundError)     # unlinked: made again
                continue
            if fd is None:
                create = False        # held by a cleanup: again once it lets go
                time.sleep(0.001)
                continue
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
            create = True
        raise OSError(f"{path} keeps being taken or removed by someone else")

    def _on_sigchld(self, signum, frame):
        for pid, role in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.children.pop(pid, None)
                if not getattr(self, "stopping", False):
                    self.dead.add(role)
                    text = f"{role} exited unexpectedly (status {os.waitstatus_to_exitcode(status)})"
                    if getattr(self, "address", None) is not None and \
                            self.shm_lock_fd is not None:
                        # Before the teardown destroys anything: a process
                        # attached by ember.init() finds it when its next
                        # call meets the torn-down runtime
                        # (runtime.ended_error).
                        from .. import runtime
                        runtime.note_failure(self.tag, text, self.shm_lock_fd)
                    raise _ChildDied(role, text)

    def _on_signal(self, signum, frame):
        raise _Signalled(signum)

    # --- the terminal ------------------------------------------------------
    def _give_terminal(self, pgid):
        """If our stdin is the terminal and we are its foreground group,
        make the head's group the foreground one (or its reads would stop
        it with SIGTTIN), and wake it should it have stopped already."""
        try:
            if not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
                return
            os.tcsetpgrp(0, pgid)
        except OSError as exc:
            log.debug("terminal not handed to the head: %s", exc)
            return
        self.tty = 0
        log.debug("terminal's foreground process group: %d (the head)", pgid)
        try:
            os.killpg(pgid, signal.SIGCONT)
        except OSError:
            pass

    def _take_terminal_back(self):
        if self.tty is None:
            return
        # We are a background group now: tcsetpgrp would stop us with SIGTTOU.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTTOU})
        try:
            os.tcsetpgrp(self.tty, os.getpgrp())
        except OSError as exc:
            log.debug("cannot take the terminal back: %s", exc)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            self.tty = None

    # --- the head ----------------------------------------------------------
    def _run_head(self, process):
        a = self.args
        for s in _FORWARDED:
            signal.signal(s, self._on_signal)
        try:
            prog = a.program
            if prog.endswith(".py"):
                if not os.path.isfile(prog):
                    why = "Is a directory" if os.path.isdir(prog) else "No such file"
                    print(f"ember: cannot run {prog!r}: {why}", file=sys.stderr)
                    return EXIT_START_FAILED
                exe, argv = sys.executable, [prog] + a.args
                # The shepherd runs it in a fork of itself (saves an interpreter start).
                fork = os.environ.get(_env.FORK_PY, "1") == "1"
            else:
                exe, argv, fork = prog, a.args, False
            # The job's signals are blocked since run() began; they are
            # delivered (and forwarded to the head) as soon as it exists.
            try:
                env = {}
                if not getattr(self, "attached", False):
                    env[_env.STDIN] = "inherit"
                    if fork:
                        env[_env.FORK_PY] = "1"
                else:
                    # the runtime's shepherd has another stdin and stdout, and
                    # its interpreter is not ours: the head gets our own stdio
                    env[_env.STDIO_FROM] = str(os.getpid())
                self.head = process.create(exe, os.getcwd(), argv, env=env)
            except Exception as exc:
                print(f"ember: cannot start {prog!r}: {exc}", file=sys.stderr)
                return EXIT_START_FAILED
            finally:
                if self.head is not None:
                    log.info("head created: p_uid %d, pid %d: %s", self.head.p_uid,
                             self.head.os_pid, " ".join([exe] + argv))
                    try:
                        self.head_pidfd = os.pidfd_open(self.head.os_pid)
                    except OSError:
                        self.head_pidfd = None   # already gone: join will say so
                    else:
                        self._give_terminal(self.head.os_pid)
                try:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
                except _Signalled as s:          # delivered on unblock
                    pending = s.signum
                else:
                    pending = None
            deadline = None
            import time
            if pending is not None:
                self.signals = 1
                self._forward(pending)
                deadline = time.monotonic() + a.grace
            # p_uid 0's process slot (what it blocks on, for `ember ps`; its
            # stack dump) is bound once the head has run _SLOT_DELAY: not
            # beside the start of the head, nor in a short run at all (~1 ms
            # of CPU, on two cores shared with the head, GS and the shepherd).
            bind_at = (time.monotonic() + _SLOT_DELAY if getattr(self, "bind_slot", False)
                       else None)
            while True:
                try:
                    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                    for_slot = bind_at is not None and (timeout is None or
                                                        bind_at - time.monotonic() < timeout)
                    if for_slot:
                        timeout = max(0.0, bind_at - time.monotonic())
                    code = process.join(self.head.p_uid, timeout=timeout)
                    if code is None and for_slot:
                        from .. import _slots
                        _slots.bind(self.tag, 0)
                        bind_at = None
                        continue
                    if code is None:
                        print(f"ember: head process did not exit {a.grace:g} s after the signal; "
                              f"killing everything", file=sys.stderr)
                        self.grace_override = 0.0
                        return 128 + signal.SIGKILL
                    log.info("head exited: %d", code)
                    self._take_terminal_back()
                    # GS names the processes still running when the
                    # teardown starts (Teardown(survivors=True)): no round
                    # trip of our own for it.
                    self.report_survivors = (getattr(self.args, "death_reports", True)
                                             and not getattr(self, "attached", False))
                    return code if code >= 0 else 128 - code
                except _Signalled as s:
                    self.signals += 1
                    if self.signals > 1:
                        print("ember: second signal: killing everything", file=sys.stderr)
                        self.grace_override = 0.0
                        return 128 + s.signum
                    log.info("signal %d: forwarded to the head", s.signum)
                    self._forward(s.signum)
                    deadline = time.monotonic() + a.grace
        except _ChildDied as exc:
            print(f"ember: runtime failure: {exc}", file=sys.stderr)
            self.broken = True
            return EXIT_RUNTIME_FAILED
        finally:
            # Teardown must not be cut short by the job's signals.
            for s in _FORWARDED:
                signal.signal(s, signal.SIG_IGN)

    def _forward(self, signum):
        if self.head_pidfd is None:
            return
        # Through the shepherd, so it knows ember sent the signal (no death
        # report for it); straight to the head if that cannot be done.
        if getattr(self, "ctl", None) is not None and self.ctl.kill(self.head.p_uid, signum):
            return
        try:
            signal.pidfd_send_signal(self.head_pidfd, signum)
        except ProcessLookupError:
            pass

    # --- teardown ----------------------------------------------------------
    def _step(self, what, fn, *args):
        """One teardown step: run it; on failure report it and go on."""
        try:
            fn(*args)
        except BaseException as exc:     # every step runs, whatever the others did
            self.failed = True
            print(f"ember: teardown: {what} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
        else:
            log.debug("teardown: %s", what)

    def _shutdown(self, gs_ch, sh_ch, inf, dflt):
        self.stopping = True
        # From here on _reap() waits for GS and the shepherd itself.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for s in _FORWARDED:
            signal.signal(s, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        log.info("teardown")
        self._step("giving the terminal back", self._take_terminal_back)
        clean = False
        if self.children:
            if getattr(self, "broken", False) or self.dead:
                self._step("stopping the shepherd", self._stop_shepherd, sh_ch)
            else:
                failed, self.failed = self.failed, False
                self._step("teardown through global services", self._teardown_gs)
                clean, self.failed = not self.failed, failed or self.failed
        if self.cluster is not None:
            self._step("stopping the other nodes", self.cluster.stop)
            clean = False
        if clean:
            # GS answered the teardown: it and the shepherd are done with
            # the runtime's channels and pools and only exit now.  Destroy
            # them and unlink what is left meanwhile (the mappings of those
            # two stay valid until they exit; the lock file goes too, but
            # the lock itself is held until both are gone: they share its
            # open file).
            self._release(gs_ch, inf, dflt)
            self._step("unlinking the runtime's segments", self._sweep)
        self._step("reaping global services and the shepherd", self._reap)
        if not clean:
            self._release(gs_ch, inf, dflt)
            self._step("unlinking the runtime's segments", self._sweep)

    def _release(self, gs_ch, inf, dflt):
        """Close the launcher's own handles and destroy the runtime's
        channels and pools, each step independent."""
        if self.head_pidfd is not None:
            self._step("closing the head's pidfd", os.close, self.head_pidfd)
            self.head_pidfd = None
        self._step("closing the connection to global services", self._close_client)
        for what, obj in (("GS's input channel", gs_ch),
                          ("the default pool", dflt), ("the control plane", self.ctl),
                          ("the infrastructure pool", inf)):
            if obj is not None:
                self._step(f"destroying {what}", self._destroy, obj)

    @staticmethod
    def _destroy(obj):
        errors = obj.destroy()           # ControlPlane.destroy returns its errors
        if errors:
            raise errors[0]

    def _teardown_gs(self):
        from .. import messages
        from ..globalservices import _client
        grace = getattr(self, "grace_override", self.args.grace)
        try:
            _client.connection().call(messages.Teardown, grace,
                                      bool(getattr(self, "report_survivors", False)),
                                      timeout=grace + 10.0)
        except _ChildDied as exc:
            raise RuntimeError(str(exc)) from None

    def _stop_shepherd(self, sh_ch):
        """GS (or the shepherd) is dead.  If the shepherd lives, ask it
        directly to kill every child and sweep their process groups (no
        reply: nobody could read it); GS, if alive, is of no use and goes."""
        from .. import messages
        roles = {role: pid for pid, role in self.children.items()}
        if "shepherd" in roles and sh_ch is not None:
            sh_ch.send(messages.ShShutdown(None).pack(), timeout=1.0)
            log.info("asked the shepherd to kill and sweep every managed process")
        gs = roles.get("global services")
        if gs is not None:
            os.kill(gs, signal.SIGKILL)

    def _close_client(self):
        from ..globalservices import _client
        conn = _client._conn
        if conn is not None:
            conn.close(pool_goes=True)     # _release destroys the pool next

    def _reap(self):
        """Wait for GS and the shepherd to exit (pidfd, no sleeping loops);
        SIGKILL whatever is still there after a bound (long enough for the
        shepherd's sweep, which waits up to 2 s for its victims)."""
        import select
        import time
        deadline = time.monotonic() + 5.0
        for pid in list(self.children):
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                fd = None
            if fd is not None:
                try:
                    select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
                    try:
                        done, _ = os.waitpid(pid, os.WNOHANG)
                    except ChildProcessError:
                        done = pid
                    if not done:
                        print(f"ember: teardown: {self.children[pid]} did not exit; killing it",
                              file=sys.stderr)
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                finally:
                    os.close(fd)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self.children.pop(pid, None)

    def _sweep(self):
        """Unlink every segment still carrying this runtime's id (a GS that
        died could not destroy its pools), the lock last; remove the
        address; then let the lock go."""
        prefix = f"ember.{self.tag}."
        lock = _lock_name(self.tag)
        try:
            names = [n for n in os.listdir(SHM_DIR) if n.startswith(prefix) and n != lock]
            errors = []
            for n in names + [lock]:
                try:
                    os.unlink(os.path.join(SHM_DIR, n))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    errors.append(f"{n}: {exc.strerror}")
            if names:
                log.info("unlinked %d leftover segment(s): %s", len(names), " ".join(names))
            if errors:
                raise OSError("cannot unlink " + "; ".join(errors))
        finally:
            # The address goes before the lock: whoever waits for the lock
            # to be released (`ember stop`, a process that did not start the
            # runtime) must find no address of it left when it returns.
            try:
                self._unpublish()
            except Exception as exc:
                log.warning("cannot remove the runtime's address: %s", exc)
            if self.shm_lock_fd is not None:
                os.close(self.shm_lock_fd)
                self.shm_lock_fd = None

