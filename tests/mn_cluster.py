"""Emulated nodes for multi-node tests: Linux namespaces on this machine.

``emulated_nodes(n, sshd=False, slurm=False)`` (a context manager) and the
pytest fixtures ``emulated_cluster`` (3 nodes), ``ssh_cluster`` (3 nodes,
an sshd on each) and ``slurm_cluster`` (3 nodes, slurmctld on node 0, a
slurmd and a munged on each) give a :class:`Cluster`.  docs/multinode-testing.md
says how it is built and why.

Each node is its own network, mount, UTS, IPC and pid namespace, held by a
process that dies with the test process (PR_SET_PDEATHSIG), with a private
tmpfs on /dev/shm, /tmp and /run, its own host name (``emn<hex>-<i>``,
unique per cluster), a fresh /proc, and a veth ``eth0`` with an address
in a private /24 (unique per cluster) joined to the other nodes by a bridge
that lives in a network namespace of its own.  The virtualenv, the checkout
and the cluster's directory are bound back at the same paths, and
/etc/hosts, /etc/ssh/ssh_config (and for Slurm /etc/slurm, /etc/munge) are
the cluster's own inside the nodes, so plain ``ssh emn..-1`` and
``salloc``/``srun`` work there.

The test process stays in the host's namespaces: it runs commands in a node
with :meth:`Cluster.run` / :meth:`Cluster.popen` (``nsenter``), sees a
node's processes with :meth:`Cluster.processes`, and can start commands in
nodes through the ember launcher interface with :meth:`Cluster.launcher`.

Everything here skips the test (``pytest.skip`` with the exact missing
thing) when it cannot work: not root, unshare refused, a tool missing;
with ``EMBER_TEST_CLUSTER=required`` in the environment (``.ci/run`` sets
it as root where namespaces can be made: it installed the servers) it
fails the test instead (:func:`unavailable`).
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import pytest

from procs import stat

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
INIT = os.path.join(HERE, "mn_nodeinit.py")
BRINGUP_TIMEOUT = 30.0

_used_subnets = set()
_subnet_lock = threading.Lock()


class ClusterUnavailable(Exception):
    """The emulated cluster cannot be built here (the reason is the text)."""


class ClusterLeak(AssertionError):
    """Teardown found something of the cluster left (process, namespace)."""


@dataclass
class Node:
    index: int
    name: str           # host name inside the node (also its NodeSpec host)
    addr: str           # its address on the cluster's /24
    pid: int = 0        # host pid of the node's init (pid 1 inside)
    holder: object = None
    pidns: int = 0      # inode of the node's pid namespace
    netns: int = 0
    mntns: int = 0

    def spec(self):
        from ember.launcher.nodes import NodeSpec
        return NodeSpec(self.index, self.name, self.name)


@dataclass
class NodeProcess:
    pid: int            # in the host's pid namespace
    nspid: int          # inside the node
    ppid: int
    state: str
    cmdline: list

    @property
    def cmd(self):
        return " ".join(self.cmdline)


def _need_tools(tools):
    for t in tools:
        if shutil.which(t) is None:
            raise ClusterUnavailable(f"{t!r} not found on PATH (needed by the emulated nodes)")


def _pick_subnet():
    """A private /24 (10.A.B.0/24) no other cluster of this process uses;
    parallel test processes pick at random among 65000: a clash would not
    matter anyway, every cluster has its own bridge namespace."""
    with _subnet_lock:
        while True:
            b = os.urandom(2)
            net = (100 + b[0] % 150, b[1])
            if net not in _used_subnets:
                _used_subnets.add(net)
                return net


def _ns_inode(pid, kind):
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def _start_holder(cfg):
    return subprocess.Popen([sys.executable, "-I", INIT, str(os.getpid()), json.dumps(cfg)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _finish_holder(p, what):
    """Read the holder's 'pid N' and the init's 'ready'; return N."""
    pid = None
    ready = False
    errors = []
    deadline = time.monotonic() + BRINGUP_TIMEOUT
    import select
    buf = b""
    while not (pid and ready) and time.monotonic() < deadline:
        r, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for ln in lines:
            ln = ln.decode()
            if ln.startswith("pid "):
                pid = int(ln[4:])
            elif ln == "ready":
                ready = True
            elif ln.startswith("error "):
                errors.append(ln[6:])
    if pid and ready:
        return pid
    p.kill()
    p.wait()
    err = p.stderr.read().decode(errors="replace").strip()
    raise ClusterUnavailable(f"cannot make the namespaces of {what}: "
                             + ("; ".join(errors) or err or "no answer within "
                                f"{BRINGUP_TIMEOUT} s"))


class Cluster:
    """n emulated nodes (see the module's docstring).  Made by
    :func:`emulated_nodes`; ``nodes[i]`` is a :class:`Node`."""

    def __init__(self, n, keep=()):
        if not isinstance(n, int) or not 1 <= n <= 200:
            raise ValueError(f"the number of nodes must be an int in 1..200, not {n!r}")
        if os.geteuid() != 0:
            raise ClusterUnavailable(
                f"emulated nodes need root (to unshare network, mount, UTS and pid namespaces); "
                f"running as uid {os.geteuid()}")
        _need_tools(["nsenter", "ip"])
        self.tag = os.urandom(3).hex()
        a, b = _pick_subnet()
        self._subnet = (a, b)
        self.subnet = f"10.{a}.{b}.0/24"
        self.dir = tempfile.mkdtemp(prefix=f"emn{self.tag}-")
        os.chmod(self.dir, 0o755)
        self.nodes = [Node(i, f"emn{self.tag}-{i}", f"10.{a}.{b}.{10 + i}") for i in range(n)]
        self.keep = [self.dir, sys.prefix, os.path.dirname(os.path.realpath(sys.executable)),
                     REPO, *keep]
        self.switch = None
        self.switch_pid = 0
        self._popens = []         # long-running commands started in nodes (daemons)
        self._binds = []          # (src, dst) bound in every node
        self._dirs = [("/run/sshd", 0o755), ("/run/munge", 0o755), ("/run/user/0", 0o700)]
        self.ssh_config = None
        self.slurm = None
        self._closed = False
        with open(self.path("hosts"), "w") as f:
            f.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n")
            for nd in self.nodes:
                f.write(f"{nd.addr}\t{nd.name}\n")
        self._binds.append((self.path("hosts"), "/etc/hosts"))
        self._write_ssh_client_config()

    # -- helpers -------------------------------------------------------------

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    @property
    def hosts(self):
        """The node names, comma-separated (``ember run --hosts``)."""
        return ",".join(nd.name for nd in self.nodes)

    def specs(self):
        """The nodes as :class:`ember.launcher.nodes.NodeSpec` s."""
        return [nd.spec() for nd in self.nodes]

    def __len__(self):
        return len(self.nodes)

    def __getitem__(self, i):
        return self.nodes[i]

    def __repr__(self):
        return f"<Cluster {self.tag} {len(self.nodes)} nodes on {self.subnet}>"

    # -- bring-up ------------------------------------------------------------

    def _write_ssh_client_config(self):
        self.ssh_config = self.path("ssh_config")
        with open(self.ssh_config, "w") as f:
            f.write(
                "Host *\n"
                "  User root\n"
                f"  IdentityFile {self.path('id_ed25519')}\n"
                "  IdentitiesOnly yes\n"
                f"  UserKnownHostsFile {self.path('known_hosts')}\n"
                "  GlobalKnownHostsFile /dev/null\n"
                "  StrictHostKeyChecking yes\n"
                "  CheckHostIP no\n"
                "  BatchMode yes\n"
                "  LogLevel ERROR\n"
                "  ConnectTimeout 10\n")
        if os.path.exists("/etc/ssh/ssh_config"):
            self._binds.append((self.ssh_config, "/etc/ssh/ssh_config"))

    def start(self):
        cfg_base = {"keep": self.keep, "binds": self._binds, "dirs": self._dirs}
        holders = [_start_holder({"kind": "switch", "hostname": f"emn{self.tag}-sw"})]
        for nd in self.nodes:
            holders.append(_start_holder(dict(cfg_base, kind="node", hostname=nd.name)))
        try:
            self.switch = holders[0]
            self.switch_pid = _finish_holder(holders[0], "the bridge")
            for nd, h in zip(self.nodes, holders[1:]):
                nd.holder = h
                nd.pid = _finish_holder(h, f"node {nd.index}")
                nd.pidns = _ns_inode(nd.pid, "pid")
                nd.netns = _ns_inode(nd.pid, "net")
                nd.mntns = _ns_inode(nd.pid, "mnt")
        except BaseException:
            for h in holders:
                h.kill()
                h.wait()
                for f in (h.stdout, h.stderr):
                    f.close()
            raise
        self._network()

    def _ip_batch(self, pid, lines, what):
        argv = ["ip", "-batch", "-"]
        if pid:
            argv = ["nsenter", "-t", str(pid), "-n", "--"] + argv
        r = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise ClusterUnavailable(f"cannot set up the network of {what}: {r.stderr.strip()}")

    def _network(self):
        # The veth pairs are made from here straight into their namespaces
        # (the bridge's end and the node's eth0): nothing appears in ours.
        self._ip_batch(0, [f"link add name e{self.tag}{nd.index} netns {self.switch_pid} type veth "
                           f"peer name eth0 netns {nd.pid}" for nd in self.nodes], "the veths")
        self._ip_batch(self.switch_pid, ["link set lo up", "link add br0 type bridge",
                                         "link set br0 up"]
                       + [f"link set e{self.tag}{nd.index} master br0 up" for nd in self.nodes], "the bridge")
        for nd in self.nodes:
            self._ip_batch(nd.pid, ["link set lo up", f"addr add {nd.addr}/24 dev eth0",
                                    "link set eth0 up"], f"node {nd.index}")

    # -- running things in nodes ---------------------------------------------

    def nsenter_argv(self, i, argv, cwd="/"):
        """The command line that runs ``argv`` inside node i."""
        nd = self.nodes[i]
        return ["nsenter", "-t", str(nd.pid), "-n", "-m", "-u", "-i", "-p", f"--wd={cwd}",
                "--", *argv]

    def _env(self, env):
        full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        full.pop("XDG_RUNTIME_DIR", None)      # the host's is hidden by the node's /tmp, /run
        # ... and the host's TMPDIR (ember's runtime directory when there is
        # no XDG_RUNTIME_DIR): set outside /tmp (/var/tmp/...) it was one
        # directory of every node's, and a node's `ember cleanup` removed
        # other nodes' runtimes' files (a launcher's pid names no process
        # there).  Each node's own /tmp.
        full.pop("TMPDIR", None)
        full.pop("EMBER_ADDRESS", None)
        if env:
            full.update(env)
        return full

    def run(self, i, argv, timeout=60, env=None, cwd="/", input=None, check=False):
        """Run ``argv`` in node i and wait: a CompletedProcess with text
        stdout and stderr.  ``env`` is added to this process's environment
        (less SLURM_*, XDG_RUNTIME_DIR, TMPDIR, EMBER_ADDRESS)."""
        return subprocess.run(self.nsenter_argv(i, argv, cwd), capture_output=True, text=True,
                              timeout=timeout, env=self._env(env), input=input, check=check,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def python(self, i, code, *args, **kw):
        """Run Python ``code`` (this interpreter, by absolute path) in node i."""
        return self.run(i, [sys.executable, "-c", code, *args], **kw)

    def popen(self, i, argv, env=None, cwd="/", **kw):
        """Start ``argv`` in node i; the caller waits for it (its nsenter
        is this process's child)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen(self.nsenter_argv(i, argv, cwd), env=self._env(env), **kw)

    def daemon(self, i, argv, log, ready=None, timeout=BRINGUP_TIMEOUT, env=None):
        """Start a long-running ``argv`` in node i, output to ``log`` (a
        file in the cluster's directory); wait until ``ready`` (a string)
        appears in the log, or ``ready()`` is true.  Killed at teardown."""
        logpath = self.path(log)
        with open(logpath, "ab") as f:
            p = self.popen(i, argv, env=env, stdout=f, stderr=subprocess.STDOUT)
        self._popens.append(p)
        deadline = time.monotonic() + timeout
        while ready is not None:
            if isinstance(ready, str):
                with open(logpath, "rb") as f:
                    if ready.encode() in f.read():
                        break
            elif ready():
                break
            if p.poll() is not None:
                with open(logpath, "rb") as f:
                    tail = f.read()[-1500:].decode(errors="replace")
                raise ClusterUnavailable(f"{argv[0]} on node {i} exited ({p.returncode}): {tail}")
            if time.monotonic() > deadline:
                with open(logpath, "rb") as f:
                    tail = f.read()[-1500:].decode(errors="replace")
                raise ClusterUnavailable(f"{argv[0]} on node {i} not ready within {timeout} s: "
                                         f"{tail}")
            time.sleep(0.02)
        return p

    def processes(self, i, zombies=False):
        """The processes inside node i (not its init), seen from here."""
        nd = self.nodes[i]
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == nd.pid:
                continue
            pid = int(d)
            try:
                if _ns_inode(pid, "pid") != nd.pidns:
                    continue
                state, ppid, _ = stat(pid)
                if state == "Z" and not zombies:
                    continue
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
                nspid = pid
                with open(f"/proc/{pid}/status") as f:
                    for ln in f:
                        if ln.startswith("NSpid:"):
                            nspid = int(ln.split()[-1])
            except (OSError, ValueError):
                continue
            out.append(NodeProcess(pid, nspid, ppid, state, cmdline))
        return out

    def find(self, i, text):
        """Processes of node i whose command line contains ``text``."""
        return [p for p in self.processes(i) if text in p.cmd]

    def kill_processes(self, i, text, sig=signal.SIGKILL):
        """Send ``sig`` to the processes of node i whose command line
        contains ``text``; returns them."""
        found = self.find(i, text)
        for p in found:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
        return found

    def wait_no_process(self, i, text, timeout=15.0):
        """Wait until no live process of node i matches ``text``; returns
        the ones still there (empty if none)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.find(i, text)
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.02)

    def node_path(self, i, path):
        """``path`` as node i sees it, reachable from here (through
        /proc/<init>/root): ``os.listdir(c.node_path(1, "/dev/shm"))``."""
        if not path.startswith("/"):
            raise ValueError(f"path must be absolute, not {path!r}")
        return f"/proc/{self.nodes[i].pid}/root{path}"

    def shm(self, i):
        """The names in node i's private /dev/shm."""
        return sorted(os.listdir(self.node_path(i, "/dev/shm")))

    def kill_node(self, i):
        """Kill node i whole (its namespaces and every process in them),
        as a host that dies would: SIGKILL to its holder."""
        nd = self.nodes[i]
        if nd.holder is not None and nd.holder.poll() is None:
            nd.holder.kill()
            nd.holder.wait()

    def launcher(self, **kw):
        """An ember NodeLauncher that starts commands inside the nodes
        (with nsenter, from this process): the launcher interface without
        ssh or Slurm.  The node-side watchdog is the same."""
        return NamespaceLauncher(self, **kw)

    @contextlib.contextmanager
    def capture(self, i, iface="eth0", filter_expr=""):
        """Capture node i's traffic on ``iface`` with tcpdump while the
        block runs; yields a dict whose "pcap" is the capture file's path
        and "data" the captured bytes once the block ends."""
        _need_tools_or_skip(["tcpdump"])
        out = self.path(f"capture-{i}-{time.monotonic_ns()}.pcap")
        log = os.path.basename(out) + ".log"
        argv = ["tcpdump", "-i", iface, "-n", "-U", "--immediate-mode", "-w", out]
        if filter_expr:
            argv.append(filter_expr)
        p = self.daemon(i, argv, log, ready="listening on")
        result = {"pcap": out, "data": b""}
        try:
            yield result
        finally:
            time.sleep(0.2)
            p.send_signal(signal.SIGINT)      # nsenter passes it on; tcpdump flushes
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self._popens.remove(p)
            with open(out, "rb") as f:
                result["data"] = f.read()

    # -- teardown ------------------------------------------------------------

    def close(self, check=True):
        """SIGKILL every node (and the bridge); reap; then check that no
        process of any node, and no namespace of the cluster, is left."""
        if self._closed:
            return
        self._closed = True
        for nd in self.nodes:
            if nd.holder is not None:
                nd.holder.kill()
        if self.switch is not None:
            self.switch.kill()
        problems = []
        for p in [nd.holder for nd in self.nodes if nd.holder] + [self.switch] + self._popens:
            if p is None:
                continue
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                problems.append(f"{p.args[0]} (pid {p.pid}) did not end after SIGKILL")
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()
        if check:
            problems += self.leftovers()
        if not os.environ.get("EMN_KEEP_DIR"):    # keep the logs for debugging
            shutil.rmtree(self.dir, ignore_errors=True)
        if problems:
            raise ClusterLeak("emulated cluster teardown left: " + "; ".join(problems))

    def leftovers(self, timeout=15.0):
        """What is left of the cluster: live processes in its namespaces,
        its interfaces in our namespace, mounts of its directory here."""
        inodes = {}
        for nd in self.nodes:
            if nd.pid:
                inodes[("pid", nd.pidns)] = nd.index
                inodes[("net", nd.netns)] = nd.index
                inodes[("mnt", nd.mntns)] = nd.index
        deadline = time.monotonic() + timeout
        while True:
            left = []
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    state = stat(d)[0]
                    if state == "Z":           # reaped slowly by this machine's init
                        continue
                    for kind in ("pid", "net", "mnt"):
                        key = (kind, _ns_inode(int(d), kind))
                        if key in inodes:
                            left.append(f"process {d} in node {inodes[key]}'s {kind} namespace")
                            break
                except (OSError, ValueError):
                    continue
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        try:
            here = os.listdir("/sys/class/net")
        except OSError:
            here = []
        left += [f"interface {x} in the host's network namespace" for x in here
                 if x.startswith(f"e{self.tag}")]
        with open("/proc/self/mountinfo") as f:
            if self.dir in f.read():
                left.append(f"a mount of {self.dir} in the host's mount namespace")
        return left

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(check=exc[0] is None)


def unavailable(reason):
    """A test that needs the emulated cluster cannot have it (``reason``):
    skip it, saying why; but fail it where the cluster is required
    (``EMBER_TEST_CLUSTER=required``: CI as root, where a server that failed
    to install or to come up must not pass as a skip)."""
    if os.environ.get("EMBER_TEST_CLUSTER") == "required":
        pytest.fail(f"emulated cluster unavailable (EMBER_TEST_CLUSTER=required): {reason}",
                    pytrace=False)
    pytest.skip(f"emulated cluster unavailable: {reason}")


def _need_tools_or_skip(tools):
    try:
        _need_tools(tools)
    except ClusterUnavailable as e:
        unavailable(e)


# -- the launcher interface, through nsenter -------------------------------------

def _namespace_launcher_class():
    from ember.launcher.nodes import NodeLauncher

    class NamespaceLauncher(NodeLauncher):
        """Starts commands inside the emulated nodes with ``nsenter``: the
        test process is the launcher, each command runs in its node under
        the same watchdog as through ssh or srun.  The command gets this
        process's environment (less what the cluster drops) plus ``env``."""

        name = "nsenter"

        def __init__(self, cluster, **kw):
            super().__init__(**kw)
            self.cluster = cluster

        def _command_line(self, node, watch_argv, env):
            return self.cluster.nsenter_argv(node.index, watch_argv), self.cluster._env(env)

    return NamespaceLauncher


def NamespaceLauncher(cluster, **kw):
    return _namespace_launcher_class()(cluster, **kw)


# -- sshd ------------------------------------------------------------------------

def _start_sshd(c):
    _need_tools(["sshd", "ssh", "ssh-keygen"])
    for key in ("ssh_host_ed25519_key", "id_ed25519"):
        r = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"emn{c.tag}",
                            "-f", c.path(key)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise ClusterUnavailable(f"ssh-keygen failed: {r.stderr.strip()}")
    shutil.copy(c.path("id_ed25519.pub"), c.path("authorized_keys"))
    with open(c.path("ssh_host_ed25519_key.pub")) as f:
        hostkey = " ".join(f.read().split()[:2])
    with open(c.path("known_hosts"), "w") as f:
        for nd in c.nodes:
            f.write(f"{nd.name},{nd.addr} {hostkey}\n")
    for nd in c.nodes:
        cfg = c.path(f"sshd_config-{nd.index}")
        with open(cfg, "w") as f:
            f.write(
                f"ListenAddress {nd.addr}\n"
                "Port 22\n"
                f"HostKey {c.path('ssh_host_ed25519_key')}\n"
                f"AuthorizedKeysFile {c.path('authorized_keys')}\n"
                "PermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "PrintMotd no\n"
                "PidFile /run/sshd.pid\n"
                "MaxStartups 200:30:400\n"
                "MaxSessions 200\n"
                "LogLevel INFO\n")
    sshd = shutil.which("sshd")
    for nd in c.nodes:
        c.daemon(nd.index, [sshd, "-D", "-e", "-f", c.path(f"sshd_config-{nd.index}")],
                 f"sshd-{nd.index}.log", ready="Server listening on")


@contextlib.contextmanager
def emulated_nodes(n, sshd=False, slurm=False, keep=()):
    """n emulated nodes for the block (see the module's docstring); sshd: an
    sshd on each; slurm: slurmctld on node 0 and munged + slurmd on each.
    ``keep``: more host directories to see inside the nodes.  Raises
    ClusterUnavailable (with the reason) if it cannot be built here, and
    ClusterLeak if teardown finds anything left."""
    c = Cluster(n, keep=keep)
    try:
        if slurm:
            import mn_slurm
            mn_slurm.prepare(c)
        c.start()
        if sshd:
            _start_sshd(c)
        if slurm:
            mn_slurm.start(c)
    except BaseException:
        c.close(check=False)
        raise
    with c:
        yield c


@contextlib.contextmanager
def _fixture_cluster(n, tmp_path_factory, **kw):
    # pytest's temporary directories (tmp_path) are seen by every node at the
    # same path, as a cluster's shared file system would be.
    kw.setdefault("keep", (str(tmp_path_factory.getbasetemp()),))
    try:
        cm = emulated_nodes(n, **kw)
        c = cm.__enter__()
    except ClusterUnavailable as e:
        unavailable(e)
    try:
        yield c
    except BaseException:
        cm.__exit__(*sys.exc_info())
        raise
    try:
        cm.__exit__(None, None, None)
    except ClusterLeak as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def emulated_cluster(tmp_path_factory):
    """3 emulated nodes (namespaces, bridge; no sshd, no Slurm)."""
    with _fixture_cluster(3, tmp_path_factory) as c:
        yield c


@pytest.fixture
def ssh_cluster(tmp_path_factory):
    """3 emulated nodes with an sshd each; inside the nodes plain ``ssh
    <name>`` works (the cluster's /etc/ssh/ssh_config), and
    ``cluster.ssh_config`` is the same file for ``-F``."""
    with _fixture_cluster(3, tmp_path_factory, sshd=True) as c:
        yield c


@pytest.fixture
def slurm_cluster(tmp_path_factory):
    """3 emulated nodes running a real Slurm (slurmctld on node 0, slurmd
    and munged on each); run ``salloc``/``srun`` inside node 0."""
    with _fixture_cluster(3, tmp_path_factory, slurm=True) as c:
        yield c
