"""A real Slurm on the emulated nodes of mn_cluster.py (Debian's slurm-wlm).

slurmctld runs in node 0, a munged and a slurmd in every node, each in
that node's namespaces with its own address, NodeName (= the node's host
name) and spool directory (the node's private /run).  Every node sees the
cluster's own /etc/slurm (slurm.conf) and /etc/munge (one key made for
this cluster) through bind mounts, so ``salloc``, ``srun``, ``sinfo`` work
inside any node with no environment variable.  Processes are tracked with
proctrack/linuxproc and no task plugin: nothing touches the host's
cgroups.  Accounting is off.
"""
import os
import shutil
import time

from mn_cluster import ClusterUnavailable, _need_tools

TOOLS = ["slurmctld", "slurmd", "munged", "srun", "salloc", "sinfo", "scontrol"]


def prepare(c):
    """Write the configuration and key; add the bind mounts (before the
    nodes start)."""
    _need_tools(TOOLS)
    for d in ("/etc/slurm", "/etc/munge"):
        if not os.path.isdir(d):
            raise ClusterUnavailable(f"{d} does not exist (is slurm-wlm / munge installed?)")
    etc_slurm = c.path("etc-slurm")
    etc_munge = c.path("etc-munge")
    os.makedirs(etc_slurm)
    os.makedirs(etc_munge, mode=0o700)
    key = os.path.join(etc_munge, "munge.key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as f:
        f.write(os.urandom(1024))
    ncpu = os.cpu_count() or 1
    n0 = c.nodes[0]
    lines = [
        f"ClusterName=emn{c.tag}",
        f"SlurmctldHost={n0.name}({n0.addr})",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "MpiDefault=none",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "StateSaveLocation=/run/slurmctld",
        "SlurmdSpoolDir=/run/slurmd",
        "SlurmctldPidFile=/run/slurmctld.pid",
        "SlurmdPidFile=/run/slurmd.pid",
        f"SlurmctldLogFile={c.path('slurmctld.log')}",
        f"SlurmdLogFile={c.path('slurmd-%n.log')}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "InactiveLimit=0",
        "KillWait=2",
        "MinJobAge=2",
        "MessageTimeout=10",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "HealthCheckInterval=0",
    ]
    for nd in c.nodes:
        lines.append(f"NodeName={nd.name} NodeAddr={nd.addr} CPUs={ncpu} State=UNKNOWN")
    lines.append(f"PartitionName=emn Nodes=ALL Default=YES MaxTime=INFINITE State=UP "
                 f"OverSubscribe=FORCE:4")
    with open(os.path.join(etc_slurm, "slurm.conf"), "w") as f:
        f.write("\n".join(lines) + "\n")
    c._binds += [(etc_slurm, "/etc/slurm"), (etc_munge, "/etc/munge")]
    c._dirs += [("/run/slurmctld", 0o755), ("/run/slurmd", 0o755), ("/run/munge", 0o755)]
    c.slurm = {"conf": os.path.join(etc_slurm, "slurm.conf"), "munge_key": key}


def _all_idle(c):
    r = c.run(0, ["sinfo", "-h", "-N", "-o", "%N %T"], timeout=30)
    if r.returncode != 0:
        return False
    states = dict(ln.split() for ln in r.stdout.splitlines() if ln.strip())
    return len(states) == len(c.nodes) and all(s == "idle" for s in states.values())


def start(c, timeout=60.0):
    munged = shutil.which("munged")
    for nd in c.nodes:
        c.daemon(nd.index, [munged, "--foreground", "--force",
                            "--key-file=/etc/munge/munge.key",
                            "--socket=/run/munge/munge.socket.2",
                            "--pid-file=/run/munge/munged.pid",
                            "--seed-file=/run/munge/seed",
                            f"--log-file={c.path(f'munged-{nd.index}.log')}",
                            "--num-threads=2"],
                 f"munged-{nd.index}.out",
                 ready=lambda nd=nd: c.run(nd.index, ["test", "-S", "/run/munge/munge.socket.2"],
                                           timeout=30).returncode == 0)
    c.daemon(0, [shutil.which("slurmctld"), "-D", "-i"], "slurmctld.out",
             ready=lambda: c.run(0, ["scontrol", "ping"], timeout=30).stdout.find("UP") >= 0)
    for nd in c.nodes:
        c.daemon(nd.index, [shutil.which("slurmd"), "-D", "-N", nd.name], f"slurmd-{nd.index}.out")
    deadline = time.monotonic() + timeout
    while not _all_idle(c):
        if time.monotonic() > deadline:
            r = c.run(0, ["sinfo", "-N", "-l"], timeout=30)
            tail = ""
            try:
                with open(c.path("slurmctld.log")) as f:
                    tail = f.read()[-1500:]
            except OSError:
                pass
            raise ClusterUnavailable(f"Slurm nodes not idle within {timeout} s: {r.stdout} "
                                     f"{r.stderr} slurmctld.log: {tail}")
        time.sleep(0.2)
