"""The launcher's side of a runtime that spans several nodes
(docs/multinode.md).

:class:`Cluster` is used by :class:`~ember.launcher.host.Launcher` when
``ember run`` is given ``--hosts`` or runs inside a Slurm allocation of more
than one node:

1. :meth:`Cluster.prepare` (before GS is forked): makes the runtime's CURVE
   key pair, the head agent's input channel (in the private control pool)
   and forks the head agent (:class:`~ember.transport.agent.HeadAgent`),
   which binds its endpoint and says on which port;
2. :meth:`Cluster.gs_config`: what GS needs (the agent's input channel,
   the key pair and the head agent's address for the processes' env);
3. :meth:`Cluster.start_nodes` (after GS and the head's shepherd are up):
   starts ``python -m ember.transport.node`` on every other node through
   :mod:`ember.launcher.nodes` (``srun`` or ``ssh``, under its watchdog),
   hands each its settings and the key pair on its stdin (never on a
   command line), forwards its output (labelled ``[node N]`` with
   ``--label-output``) and waits until every node's agent said hello;
4. :meth:`Cluster.stop` (teardown, after GS's): waits for the nodes to end
   (they end when their shepherd stopped), closes their lifelines (the
   watchdog kills what is left), stops the head agent.
"""
import os
import signal
import sys
import threading
import time

from .. import _log

log = _log.get("launcher")

#: seconds to wait for every node's agent to join
START_TIMEOUT = 60.0


def _hostname():
    return os.uname().nodename      # socket.gethostname(), without importing socket


def _is_local(spec):
    names = {_hostname(), _hostname().split(".")[0], "localhost", "127.0.0.1"}
    return spec.name in names or spec.host in names


class Cluster:
    def __init__(self, args, node_launcher, specs):
        self.args = args
        self.nl = node_launcher
        # node 0 is this host (the launcher's); the others get a node process
        if specs and _is_local(specs[0]):
            self.remote = list(specs[1:])
        else:
            self.remote = list(specs)
        self.names = {0: _hostname()}
        for i, spec in enumerate(self.remote, 1):
            self.names[i] = spec.name
        self.commands = {}        # node -> RemoteCommand
        self.pumps = []
        self.agent_pid = None
        self.agent_addr = None
        self.ready_r = None
        self._drainer = None      # the thread that reads ready_r after bring-up
        self._drain_stop = threading.Event()
        self.up = {}              # node -> agent address
        self.out_lock = threading.Lock()

    @property
    def n_nodes(self):
        return 1 + len(self.remote)

    # ------------------------------------------------------------ bring-up
    def prepare(self, launcher, ctl, gs_ch):
        """Keys, the head agent's input channel, the head agent."""
        from ..channels_c import Channel
        from ..transport.zmq_backend import ZmqBackend
        self.keys = ZmqBackend.make_keys()
        self.to_agent = Channel.create(ctl.pool, capacity=256, block_size=512)
        r, w = os.pipe()
        self.ready_r = r
        to_agent, keys = self.to_agent, self.keys

        def agent_main():
            os.close(r)
            from ..transport.agent import HeadAgent
            backend = ZmqBackend()
            agent = HeadAgent(backend, keys, to_agent=to_agent, gs_ctl=ctl.to_gs, gs_in=gs_ch,
                              ready_fd=w)
            os.write(w, f"port {agent.port}\n".encode())
            signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            agent.serve()
            return 0
        self.agent_pid = launcher._fork("transport agent", "ember: transport agent node 0",
                                        agent_main)
        os.close(w)
        line = self._line(10.0)
        if not line or not line.startswith("port "):
            raise RuntimeError(f"the transport agent did not start ({line or 'no answer'})")
        self.port = int(line.split()[1])
        from ..transport.agent import _route_ip
        target = self.remote[0].name if self.remote else "127.0.0.1"
        self.head_ip = _route_ip(target)
        self.agent_addr = f"tcp://{self.head_ip}:{self.port}"

    def _line(self, timeout):
        import select
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.ready_r], [], [], left)
            if not ready:
                return None
            c = os.read(self.ready_r, 1)
            if not c:
                return None
            buf += c
        return buf.decode(errors="replace").strip()

    def gs_config(self):
        from ..transport.agent import mn_env
        return {"to_agent": self.to_agent, "env": mn_env(self.keys, {0: self.agent_addr}),
                "keys": self.keys, "agent0": self.agent_addr,
                "fail_fast": bool(getattr(self.args, "fail_fast_on_node_loss", False))}

    def launch(self):
        """Start the node processes at once (before this node's own
        bring-up: they start their interpreter and import what they need
        meanwhile, then wait for their settings on stdin)."""
        argv = [sys.executable, "-m", "ember.transport.node"]
        env = {k: v for k, v in os.environ.items()
               if k in ("EMBER_LOG", "EMBER_CONTROL_SPIN", "EMBER_SEGMENT_TAG", "EMBER_MN_TRACE", "EMBER_MN_DIRECT", "PYTHONPATH")}
        for i, spec in enumerate(self.remote, 1):
            self.commands[i] = self.nl.start(spec, argv, env=env, cwd=os.getcwd(), capture=True,
                                             ready=False)

    def start_nodes(self, runtime_id):
        """Hand each node its settings and the key pair (on its stdin: the
        lifeline, never a command line), forward its output, wait until
        every node's agent said hello."""
        import json
        a = self.args
        # Every node's settings at once, without waiting for its watchdog's
        # READY line: they wait in the pipe (the watchdog forwards its stdin
        # to the node once started), so no node waits for another's start.
        for i, cmd in self.commands.items():
            cfg = {"node": i, "head": self.agent_addr, "keys": list(self.keys),
                   "runtime": runtime_id, "label": a.label,
                   "inf_pool_size": a.inf_pool_size, "default_pool_size": a.default_pool_size,
                   "death_reports": getattr(a, "death_reports", True)}
            try:
                cmd.stdin.write((json.dumps(cfg) + "\n").encode())
            except OSError:
                pass                  # the launch failed: wait_ready() says why
        for i, cmd in self.commands.items():
            cmd.wait_ready()
            for stream, out in ((cmd.stdout, sys.stdout), (cmd.stderr, sys.stderr)):
                t = threading.Thread(target=self._pump, args=(i, stream, out), daemon=True,
                                     name=f"ember-node{i}-output")
                t.start()
                self.pumps.append(t)
        deadline = time.monotonic() + START_TIMEOUT
        while len(self.up) < len(self.remote):
            line = self._line(max(0.0, deadline - time.monotonic()))
            if line is None:
                missing = [str(i) for i in self.commands if i not in self.up]
                ended = [f"node {i} ({self.names[i]}) exited with status {c.poll()}"
                         for i, c in self.commands.items() if c.poll() is not None]
                raise RuntimeError(f"node(s) {', '.join(missing)} did not join within "
                                   f"{START_TIMEOUT:g} s" + (f": {'; '.join(ended)}" if ended
                                                             else ""))
            parts = line.split()
            if parts[0] == "up":
                self.up[int(parts[1])] = parts[2]
                log.info("node %s joined (agent %s)", parts[1], parts[2])
            elif parts[0] == "lost":
                raise RuntimeError(f"node {parts[1]} was lost while starting: "
                                   f"{' '.join(parts[2:])}")
        self._start_drain()

    def _start_drain(self):
        """From now on the ready pipe only reports losses: read it (and drop
        what it says) so that the agent never blocks on it."""
        self._drainer = threading.Thread(target=self._drain_ready,
                                         args=(self.ready_r, self._drain_stop),
                                         daemon=True, name="ember-agent-ready")
        self._drainer.start()

    @staticmethod
    def _drain_ready(fd, stop):
        """Read ``fd`` until its end or ``stop``.  :meth:`stop` closes it only
        after this returned: a read never meets a closed fd (or its number
        reused by another open), nor a ``None`` in its place."""
        import select
        while not stop.is_set():
            try:
                if select.select([fd], [], [], 0.25)[0] and not os.read(fd, 4096):
                    return
            except OSError:
                return

    def _pump(self, node, stream, out):
        """A node's output to ours, line by line (labelled if asked)."""
        label = f"[node {node}] ".encode() if getattr(self.args, "label_output", False) else b""
        fd = out.fileno()
        try:
            for line in iter(stream.readline, b""):
                data = label + line if label else line
                with self.out_lock:
                    try:
                        out.flush()
                        os.write(fd, data)
                    except OSError:
                        pass
        except (OSError, ValueError):
            pass

    # ------------------------------------------------------------ teardown
    def stop(self, timeout=5.0):
        """The nodes end once their shepherd stopped (GS's teardown); give
        them ``timeout`` seconds, then close their lifelines (the watchdog
        kills what is left) and stop the head agent."""
        deadline = time.monotonic() + timeout
        for i, cmd in self.commands.items():
            try:
                cmd.wait(max(0.0, deadline - time.monotonic()))
            except Exception:
                pass
        for i, cmd in self.commands.items():
            try:
                cmd.close()
            except Exception as exc:
                log.warning("node %d: %s", i, exc)
        for t in self.pumps:
            t.join(2.0)
        try:
            self.nl.close()
        except Exception:
            pass
        if self.agent_pid is not None:
            try:
                os.kill(self.agent_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self._drainer is not None:     # (it returns within its 0.25 s wait)
            self._drain_stop.set()
            self._drainer.join()
            self._drainer = None
        if self.ready_r is not None:
            try:
                os.close(self.ready_r)
            except OSError:
                pass
            self.ready_r = None
