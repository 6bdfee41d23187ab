"""``python -m ember.transport.node``: one node of a runtime that spans
several nodes (every node but the head's).

The launcher starts it on each node (by ``srun`` inside a Slurm allocation,
by ``ssh`` for a host list: :mod:`ember.launcher.nodes`), with its settings
in one JSON line on its stdin (the node's index, the head agent's address,
the runtime's transport key pair, the runtime id, pool sizes, output
labels).  The key pair never appears on a command line or in an
environment.

It makes the node's own runtime pieces, all named with a segment tag of its
own and guarded by a lock of its own in the node's ``/dev/shm`` (so ``ember
cleanup`` there leaves them alone while it lives): the infrastructure pool
(reply channels of the node's processes, and the channel that is their
``EMBER_GS_CH``), the node's default pool, and a control pool (its
shepherd's input and output).  Then it forks the shepherd (the same one as
on the head's node) and runs the node's transport agent
(:class:`~ember.transport.agent.NodeAgent`) until its shepherd stops
(teardown), its shepherd dies, or the head goes silent; on the way out it
kills whatever is left (the shepherd's children die with it), destroys its
pools and unlinks its segments and lock, and its shepherd's output board
(``ember.<runtime id>.output``, guarded by a ``ember.<runtime id>.lock``
the node holds on its own /dev/shm).  If it is killed outright, the
launcher's watchdog kills its process group and its segments are what
``ember cleanup`` removes.
"""
import json
import os
import signal
import sys
import time


def _lock(tag):
    import fcntl
    path = f"/dev/shm/ember.{tag}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd, path


def _sweep(tag, lock_fd, lock_path):
    prefix = f"ember.{tag}."
    try:
        for n in os.listdir("/dev/shm"):
            if n.startswith(prefix) and n != os.path.basename(lock_path):
                try:
                    os.unlink(os.path.join("/dev/shm", n))
                except OSError:
                    pass
    finally:
        try:
            os.unlink(lock_path)
        except OSError:
            pass
        os.close(lock_fd)


def _board_lock(runtime_id):
    """The runtime's lock on this node (``ember.<runtime id>.lock``, held
    for the node's life, the shepherd's too): ``ember cleanup`` here then
    leaves the shepherd's output board alone (named by the runtime id, not
    the node's tag: ember._outboard) while the node lives, and removes it
    with the lock once the node is gone, even killed.  ``(fd, path)``, or
    None where this /dev/shm is the head's (the launcher holds that lock
    and sweeps its runtime's segments)."""
    try:
        return _lock(runtime_id)
    except OSError:                       # FileExistsError: the head's
        return None


def _unlink_board(runtime_id, board_lock):
    """The output board the node's shepherd made, which a shepherd killed
    did not unlink, then the lock of :func:`_board_lock`."""
    from .. import _outboard
    if board_lock is None:
        return
    fd, path = board_lock
    try:
        os.unlink(_outboard.path(runtime_id))
    except OSError:
        pass
    try:
        os.unlink(path)
    except OSError:
        pass
    os.close(fd)


def _read_config(timeout=60.0):
    """The first line of stdin (the launcher writes it; stdin stays open:
    it is the node's lifeline, watched by ember.launcher.nodes)."""
    import select
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([0], [], [], left)[0]:
            return None
        c = os.read(0, 4096)
        if not c:
            return None
        buf += c
    return buf.decode()


def main(argv=None):
    from .. import _env, _log
    from ..launcher.host import _set_title

    log = _log.get("node")
    # everything the node needs, imported while the launcher brings up the head
    from ..channels_c import Channel  # noqa: F401
    from ..pools_c import Pool  # noqa: F401
    from ..shepherd import server as _sh  # noqa: F401
    from ..launcher import _forkhead  # noqa: F401
    from . import agent as _agent, zmq_backend as _zb  # noqa: F401
    text = _read_config()
    if not text:
        print("ember node: no settings on stdin: this is started by `ember run --hosts ...` "
              "or inside a Slurm allocation, not by hand", file=sys.stderr)
        return 2
    try:
        cfg = json.loads(text)
        node = int(cfg["node"])
        head = str(cfg["head"])
        keys = tuple(cfg["keys"])
        runtime_id = str(cfg["runtime"])
    except (ValueError, KeyError, TypeError) as exc:
        print(f"ember node: bad settings: {exc}", file=sys.stderr)
        return 2
    for k in list(os.environ):           # nothing of a runtime this process might sit in
        if k.startswith("EMBER_") and k not in ("EMBER_LOG", "EMBER_CONTROL_SPIN", "EMBER_SEGMENT_TAG", "EMBER_MN_TRACE", "EMBER_MN_DIRECT"):
            del os.environ[k]
    for k, v in (cfg.get("env") or {}).items():
        os.environ[k] = v
    _set_title(f"ember: node {node} agent ({runtime_id})")
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the launcher ends the run
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def on_term(signum, frame):     # the watchdog: the launcher is gone; clean up, go
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(1)
    signal.signal(signal.SIGTERM, on_term)

    from ..channels_c import Channel
    from ..pools_c import Pool
    from ..globalservices.control import CONTROL_M_UID

    tag = _env.owner_tag("r")
    lock_fd, lock_path = _lock(tag)
    made = []
    sh_pid = None
    agent = None
    board_lock = None
    try:
        board_lock = _board_lock(runtime_id)
        inf = Pool.create(int(cfg.get("inf_pool_size", 256 << 20)), name="ember-infrastructure",
                          m_uid=0, owner_tag=tag)
        made.append(inf)
        dflt = Pool.create(int(cfg.get("default_pool_size", 1 << 30)), name="default", m_uid=1,
                           owner_tag=tag)
        made.append(dflt)
        ctl = Pool.create(16 << 20, name="ember-control", m_uid=CONTROL_M_UID, owner_tag=tag)
        made.append(ctl)
        to_sh = Channel.create(ctl, capacity=256, block_size=512)
        sh_out = Channel.create(ctl, capacity=256, block_size=512)
        gs_proxy = Channel.create(inf, capacity=256, block_size=512)
        os.environ.update({
            _env.RUNTIME_ID: runtime_id,
            _env.INF_POOL: _env.encode(inf.sdesc),
            _env.GS_CH: _env.encode(gs_proxy.sdesc),
            _env.DEFAULT_POOL: _env.encode(dflt.sdesc),
            _env.NODE: str(node),
            _env.LABEL: str(cfg.get("label", "none")),
        })
        from ..shepherd import server as sh_server
        from ..launcher import _forkhead  # noqa: F401  (the shepherd forks .py programs with it)
        sys.stdout.flush()
        sys.stderr.flush()
        sh_pid = os.fork()
        if sh_pid == 0:
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.close(lock_fd)
                _set_title(f"ember: shepherd node {node}")
                sh_server.run(to_sh, sh_out, label=str(cfg.get("label", "none")),
                              death_reports=bool(cfg.get("death_reports", True)))
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(code)
        from .agent import NodeAgent
        from .zmq_backend import ZmqBackend
        backend = ZmqBackend()
        hello = {"node": node, "host": os.uname().nodename, "pid": os.getpid(),
                 "default_sdesc": dflt.sdesc, "default_size": dflt.size,
                 "segment_tag": tag}
        agent = NodeAgent(backend, keys, node=node, head=head, to_sh=to_sh, sh_out=sh_out,
                          gs_proxy=gs_proxy, hello=hello, shepherd_pid=sh_pid,
                          attach=Channel.attach)
        why = agent.serve()
        log.info("node %d ends: %s", node, why)
        return 0 if why == "shutdown" else 1
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            import traceback
            traceback.print_exc()
        return 1
    finally:
        if sh_pid:
            try:
                os.kill(sh_pid, signal.SIGKILL)     # its children die with it (PDEATHSIG)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(sh_pid, 0)
            except ChildProcessError:
                pass
        _unlink_board(runtime_id, board_lock)
        if agent is not None:
            try:
                agent.close()
            except Exception:
                pass
        # the readers may sit in recv() on these: their process ends right after
        for pool in reversed(made):
            try:
                pool.destroy()
            except Exception:
                pass
        _sweep(tag, lock_fd, lock_path)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
