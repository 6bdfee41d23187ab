"""The first process of one emulated node (see mn_cluster.py); standalone,
imports nothing of ember.

    python mn_nodeinit.py PARENT_PID CONFIG_JSON

It is the node's *holder*: it dies with PARENT_PID (PR_SET_PDEATHSIG
SIGKILL, set here and checked against a race), unshares the namespaces
named in the config and forks the node's init (pid 1 of the new pid
namespace), which dies with the holder.  When a pid namespace's init dies
the kernel SIGKILLs every process in it; the network, mount, UTS and IPC
namespaces go when their last process does.  So killing the holder, or the
test process, leaves nothing.

The init makes the node's mounts (all private to its mount namespace):
binds files over /etc paths, a fresh /proc (and /sys), tmpfs on /dev/shm,
/tmp and /run, then binds back the host directories listed in ``keep`` that
those tmpfs hid, at the same path.  It sets the host name, prints
``ready``, and then only reaps the orphans that are reparented to it.
The holder prints ``pid <host pid of the init>``.
"""
import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
O_PATH = 0o10000000

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p]


def check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(src, dst, fstype, flags, data=None):
    enc = (lambda s: s.encode() if s is not None else None)
    check(libc.mount(enc(src), enc(dst), enc(fstype), flags, enc(data)),
          f"mount {src} on {dst} ({fstype})")


def die_with_parent(parent):
    check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:       # the parent died before prctl took effect
        os._exit(137)


def node_mounts(cfg):
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for src, dst in cfg.get("binds", []):        # before the tmpfs hide their sources
        mount(src, dst, None, MS_BIND)
    hidden = ("/dev/shm", "/tmp", "/run")
    keep = []
    for path in cfg.get("keep", []):
        if any(path == h or path.startswith(h + "/") for h in hidden) and os.path.isdir(path):
            keep.append((path, os.open(path, O_PATH | os.O_DIRECTORY)))
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # A sysfs of the node's network namespace (its /sys/class/net), with the
    # host's cgroup tree bound back (slurmd reads it at start-up).
    try:
        cg = os.open("/sys/fs/cgroup", O_PATH | os.O_DIRECTORY)
    except OSError:
        cg = None
    try:
        mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        if cg is not None:
            mount(f"/proc/self/fd/{cg}", "/sys/fs/cgroup", None, MS_BIND | MS_REC)
    except OSError:
        pass
    if cg is not None:
        os.close(cg)
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755")
    for path, fd in keep:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    for d, mode in cfg.get("dirs", []):
        os.makedirs(d, mode=mode, exist_ok=True)
        os.chmod(d, mode)


def init_main(cfg):
    if cfg["kind"] == "node":
        node_mounts(cfg)
    name = cfg["hostname"].encode()
    check(libc.sethostname(name, len(name)), "sethostname")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    while True:                       # reap orphans, forever
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        signal.sigwait([signal.SIGCHLD])


def main():
    parent = int(sys.argv[1])
    cfg = json.loads(sys.argv[2])
    die_with_parent(parent)
    flags = CLONE_NEWNET | CLONE_NEWUTS
    if cfg["kind"] == "node":
        flags |= CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC
    try:
        check(libc.unshare(flags), "unshare")
    except OSError as e:
        sys.stdout.write(f"error {e}\n")
        return 1
    holder = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            # in a new pid namespace the parent is outside it: getppid() is 0
            die_with_parent(0 if flags & CLONE_NEWPID else holder)
            init_main(cfg)
        except BaseException as e:
            sys.stdout.write(f"error {e}\n")
            sys.stdout.flush()
        os._exit(1)
    sys.stdout.write(f"pid {pid}\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 1)
    os.close(null)
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    while True:
        try:
            os.waitpid(pid, 0)
            return 0
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue


if __name__ == "__main__":
    sys.exit(main())
