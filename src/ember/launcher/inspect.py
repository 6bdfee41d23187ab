"""Seeing inside a running runtime: ``ember ls``, ``ps``, ``channels``,
``pools``, ``stacks``, ``events``, ``top`` (docs/introspection.md).

Each command finds the runtime with ``--address``/``--name`` (default: the
only one running for this user; see :func:`ember.runtime.resolve`), attaches
to it as a short-lived process named ``ember-inspect-<pid>`` (left out of
every listing), asks global services for its state (``ServiceDump``), reads
the process-slots table (what each process is blocked on, written by the
C layer: :mod:`ember._slots`) and the OS's view of each pid (/proc), and
detaches.

Exit codes: 0 done; 1 no such runtime, or it is not running any more, or it
did not answer; 2 usage; 3 a process named on the command line does not
exist.
"""
import json
import os
import signal
import sys
import time

from .. import _roles
from ..globalservices._client import is_reply_c_uid

EXIT_OK = 0
EXIT_NO_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NO_PROCESS = 3

INSPECT_NAME = "ember-inspect-"
COMMANDS = ("ls", "ps", "stacks", "channels", "pools", "events", "top")
#: The signal on which a managed Python process writes its threads' stacks
#: (faulthandler) to its file in the runtime directory (ember._slots).
STACKS_SIGNAL = signal.SIGUSR2


class InspectError(Exception):
    def __init__(self, text, code=EXIT_NO_RUNTIME):
        super().__init__(text)
        self.code = code


# ------------------------------------------------------------------ parsing
def add_parsers(sub, formatter):
    """Add the introspection subcommands to the ``ember`` parser."""
    helps = {
        "ls": "list the running runtimes of this user",
        "ps": "list the processes of a runtime and what each one is blocked on",
        "stacks": "print the Python stacks of a runtime's processes",
        "channels": "list the channels of a runtime",
        "pools": "list the pools of a runtime",
        "events": "print a runtime's event log",
        "top": "a live view of a runtime's processes and channels (q quits)",
    }
    for cmd in COMMANDS:
        p = sub.add_parser(cmd, help=helps[cmd], formatter_class=formatter, description=
                           helps[cmd][0].upper() + helps[cmd][1:] + ".  Exit codes: 0 done, "
                           "1 no such runtime (or it is not running), 2 usage, 3 no such process.")
        if cmd != "ls":
            p.add_argument("--address", "--name", dest="address", default="auto",
                           metavar="ID|NAME|PATH",
                           help="the runtime (default: the only one running)")
        if cmd != "top" and cmd != "stacks":
            p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
        if cmd == "ps":
            p.add_argument("--all", action="store_true",
                           help="include exited processes, with their exit reason")
        if cmd == "stacks":
            p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
            p.add_argument("procs", nargs="*", metavar="P_UID|NAME",
                           help="the processes (default: all)")
            p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                           help="how long to wait for each process's stacks (default: 2)")
        if cmd == "events":
            p.add_argument("--follow", "-f", action="store_true",
                           help="keep printing new events until the runtime ends")
        if cmd == "top":
            p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                           help="refresh every SECONDS (default: 1)")


def main(args):
    """Run one introspection command; returns the exit code."""
    fn = globals()["cmd_" + args.command]
    try:
        return fn(args)
    except InspectError as exc:
        print(f"ember {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return EXIT_OK


# ------------------------------------------------------------ the runtime
def _resolve(address):
    from .. import runtime
    from ..exceptions import GlobalServicesError
    try:
        return runtime.resolve(address)
    except GlobalServicesError as exc:
        raise InspectError(str(exc)) from None


class Inspector:
    """An attachment to one runtime for reading its state."""

    def __init__(self, addr):
        self.addr = addr
        self.rt = None

    def __enter__(self):
        from .. import _slots, runtime
        _slots.disabled = True        # our own attachment records nothing
        from ..exceptions import GlobalServicesError
        rt = runtime.Runtime(self.addr)
        try:
            rt._attach(user_name=f"{INSPECT_NAME}{os.getpid()}")
        except (GlobalServicesError, OSError, Exception) as exc:
            raise InspectError(f"the ember runtime {self.addr.id} did not answer: {exc}") from None
        self.rt = rt
        return self

    def __exit__(self, *exc):
        if self.rt is not None:
            self.rt._detach(0)
            self.rt = None

    @property
    def p_uid(self):
        return self.rt.p_uid

    def dump(self):
        from .. import messages as m
        from ..globalservices import _client
        try:
            return _client.connection().call(m.ServiceDump, timeout=10.0)
        except Exception as exc:
            raise InspectError(f"the ember runtime {self.addr.id} did not answer: {exc}") from None

    def slots(self):
        from .. import _slots
        return _slots.read(self.addr.id)


def _signame(sig):
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_BOOT = None
_OS_STATES = {"R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped",
              "t": "tracing-stop", "Z": "zombie", "X": "dead", "I": "idle"}


def _boot_time():
    global _BOOT
    if _BOOT is None:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    _BOOT = float(line.split()[1])
                    break
            else:
                _BOOT = 0.0
    return _BOOT


def _os_info(pid):
    """CPU% (over its life), RSS, start time and OS state of a pid: one read
    of /proc/<pid>/stat (psutil would read several files per pid; ember ps
    answers for 1,000 processes within its 200 ms budget this way)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return {}
    try:
        fields = data[data.rindex(b")") + 2:].split()
        # fields[0] is field 3 (state) of proc(5): utime 14, stime 15, starttime 22, rss 24
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        started = _boot_time() + int(fields[19]) / _CLK_TCK
        rss = int(fields[21]) * _PAGE
        state = _OS_STATES.get(fields[0].decode(), fields[0].decode())
    except (ValueError, IndexError):
        return {}
    life = max(time.time() - started, 1e-3)
    return {"cpu_percent": round(100.0 * cpu / life, 1), "rss": rss, "started": started,
            "os_state": state, "cpu_seconds": cpu}


def _chan_label(c):
    return repr(c["name"]) .replace("'", '"') if c.get("name") else f"#{c['c_uid']}"


class _Objects:
    """GS's objects (``dump()["objects"]``) indexed by where their memory
    is, built on first use (only when a process is blocked on something
    that is not a GS channel): their sync objects by (pool m_uid, offset),
    their channels by c_uid."""

    def __init__(self, dump):
        self.objects = dump.get("objects") or []
        self._sync = None
        self._chans = None

    def sync(self, m_uid, offset):
        """(object record, kind of the part, allocation descriptor) or None."""
        if self._sync is None:
            from .._slots import SYNC_KINDS
            from ..pools_c import _pools
            self._sync = {}
            for o in self.objects:
                for kind, sdesc in o.get("sync") or ():
                    kind = SYNC_KINDS.get(kind, kind)       # sync.h's code -> its name
                    try:
                        self._sync[_pools._alloc_where(sdesc)] = (o, kind, sdesc)
                    except Exception:
                        continue
        return self._sync.get((m_uid, offset))

    def channel(self, c_uid):
        """The object record whose channel has this c_uid, or None."""
        if self._chans is None:
            from ..channels_c import Channel
            self._chans = {}
            for o in self.objects:
                for sdesc in o.get("sdescs") or ():
                    try:
                        ch = Channel.attach(sdesc)
                    except Exception:
                        continue
                    try:
                        self._chans[ch.c_uid] = o
                    finally:
                        ch.detach()
        return self._chans.get(c_uid)


def _obj_label(o):
    name = o.get("name")
    return f'{o["kind"]} "{name}"' if name else f'{o["kind"]} o_uid {o["o_uid"]}'


_QUEUE_OPS = {"recv": "get", "send": "put", "wait_any": "get", "wait_any(writable)": "put"}


def _lock_holder_pid(kind, sdesc):
    """The pid holding a Lock/RLock now (0: free), read from its memory."""
    from ..sync_c import _sync
    cls = {"Lock": _sync.Lock, "RLock": _sync.RLock}[kind]
    obj = _sync._attach(cls, 1 if kind == "Lock" else 2, sdesc, None)
    return obj._state()[0]


def blocked_info(p, slot, waiters, chans, objs=None, pids=None):
    """What a live process waits on: ``(text, detail)``, text None if it is
    not blocked.  From its process slot (the C layer's record: a channel,
    or a synchronization object's pool and offset) named through GS's
    channels and objects (``objs``, an :class:`_Objects`), and GS's parked
    requests.  ``detail`` (for ``--json``) names the object and, for a
    Lock/RLock, who holds it (``held_by``: a p_uid, via ``pids``, pid ->
    p_uid of the live processes)."""
    ws = waiters.get(p["p_uid"], [])
    mine = slot is not None and slot["pid"] == p["os_pid"]
    if mine and slot["op"] in ("acquire", "wait"):
        return _sync_blocked(slot, objs, pids or {})
    if mine:
        c = chans.get(slot["c_uid"])
        if c is not None:
            return _waited(slot, _chan_label(c)), {"channel": slot["c_uid"]}
        o = objs.channel(slot["c_uid"]) if objs is not None and slot["c_uid"] else None
        if o is not None:
            op = slot["op"]
            if "Queue" in o["kind"]:
                op = _QUEUE_OPS.get(op, op)
            return f"{op}({_obj_label(o)})", {"channel": slot["c_uid"], "object": o["o_uid"],
                                               "kind": o["kind"], "name": o.get("name")}
    for w in ws:
        if w["kind"] == "process.join":
            return "join(" + ", ".join(str(u) for u in w["p_uids"] + w["unknown"]) + ")", {}
        if w["kind"] == "channel.join":
            return f"channel.join({w['name']!r})", {}
        if w["kind"] == "object.attach":
            kind = w.get("object_kind")
            return (f"{kind}.attach({w['name']!r})" if kind else f"attach({w['name']!r})"), \
                {"name": w["name"], "object_kind": kind}
    if mine:
        if is_reply_c_uid(slot["c_uid"]):
            return "a reply from global services", {}
        role = _roles.label(slot["c_uid"])     # the Python layer's own channels
        if role is not None:
            return _waited(slot, role), {"channel": slot["c_uid"], "role": role}
        return f"{slot['op']}(channel {slot['c_uid']})", {"channel": slot["c_uid"]}
    return None, {}


def _waited(slot, what):
    """``op(what)`` of a channel wait, with ``+N`` for the other channels
    of a wait_any."""
    op = slot["op"]
    more = f" +{slot['count'] - 1}" if op.startswith("wait_any") and slot["count"] > 1 else ""
    return f"{op}({what}{more})"


def _sync_blocked(slot, objs, pids):
    op, kind = slot["op"], slot["kind"]
    found = objs.sync(slot["m_uid"], slot["offset"]) if objs is not None else None
    detail = {"kind": kind, "m_uid": slot["m_uid"], "offset": slot["offset"]}
    if found is None:
        return f"{op}({kind} at pool {slot['m_uid']:#x} offset {slot['offset']})", detail
    o, part_kind, sdesc = found
    detail.update(object=o["o_uid"], name=o.get("name"), object_kind=o["kind"])
    if part_kind == o["kind"]:
        text = f"{op}({_obj_label(o)})"
    elif "Queue" in o["kind"] and part_kind == "Semaphore" and op == "acquire":
        text = f"put({_obj_label(o)})"                 # a bounded queue's free places
    elif "Queue" in o["kind"] and part_kind == "Condition":
        text = f"join({_obj_label(o)})"
    else:
        text = f"{op}({part_kind} of {_obj_label(o)})"
    if part_kind in ("Lock", "RLock"):
        try:
            holder = _lock_holder_pid(part_kind, sdesc)
        except Exception:
            holder = None
        if holder:
            detail["held_by_pid"] = holder
            who = pids.get(holder)
            detail["held_by"] = who
            text += f" held by p_uid {who}" if who is not None else f" held by pid {holder}"
    return text, detail


def blocked_on(p, slot, waiters, chans, objs=None, pids=None):
    """:func:`blocked_info`'s text alone."""
    return blocked_info(p, slot, waiters, chans, objs, pids)[0]


def process_rows(ins, dump=None, slots=None, all_=False):
    d = ins.dump() if dump is None else dump
    slots = ins.slots() if slots is None else slots
    chans = {c["c_uid"]: c for c in d["channels"]}
    waiters = {}
    for w in d["waiters"]:
        waiters.setdefault(w["owner"], []).append(w)
    objs = _Objects(d)
    pids = {p["os_pid"]: p["p_uid"] for p in d["processes"]
            if p["state"] != "exited" and p["os_pid"]}
    now = time.time()
    rows = []
    for p in d["processes"]:
        if p["name"] and p["name"].startswith(INSPECT_NAME) or p["p_uid"] == ins.p_uid:
            continue
        if p["state"] in ("exited", "lost") and not all_:
            continue
        row = {"p_uid": p["p_uid"], "name": p["name"], "label": p.get("label"),
               "pid": p["os_pid"], "node": d["node"],
               "state": p["state"], "parent": p["creator"], "exit_code": p["exit_code"],
               "attached": p["attached"], "exe": p["exe"], "blocked_on": None,
               "blocked_since": None, "blocked_detail": None, "cpu_percent": None, "rss": None,
               "age": None, "signal": None, "core_dumped": p.get("core_dumped"),
               "oom_killed": p.get("oom_killed")}
        if p["state"] in ("exited", "lost"):
            code = p["exit_code"]
            if isinstance(code, int) and code < 0:
                row["signal"] = _signame(-code)
                row["status"] = f"killed by {row['signal']}"
                if p.get("core_dumped"):
                    row["status"] += " (core dumped)"
                if p.get("oom_killed"):
                    row["status"] += " (out of memory: the kernel's OOM killer)"
            else:
                row["status"] = f"exited {code}"
        elif p["state"] == "pending":
            row["status"] = "starting"
        else:
            slot = slots.get(p["p_uid"])
            what, detail = blocked_info(p, slot, waiters, chans, objs, pids)
            info = _os_info(p["os_pid"]) if p["os_pid"] else {}
            row.update(cpu_percent=info.get("cpu_percent"), rss=info.get("rss"))
            if info.get("started"):
                row["age"] = round(now - info["started"], 3)
            if what is not None:
                row["blocked_on"] = what
                row["blocked_detail"] = detail or None
                if slot is not None and slot["pid"] == p["os_pid"]:
                    row["blocked_since"] = slot["since"]
                row["status"] = f"blocked on {what}"
                idle = _roles.IDLE.get((detail or {}).get("role"))
                if idle is not None:
                    row["status"] = idle
            else:
                row["status"] = info.get("os_state", "running")
        rows.append(row)
    rows.sort(key=lambda r: r["p_uid"])
    return rows


def channel_rows(ins, dump=None, slots=None):
    from ..channels_c import Channel
    from ..globalservices import channel as gchannel
    d = ins.dump() if dump is None else dump
    slots = ins.slots() if slots is None else slots
    live = {p["p_uid"]: p["os_pid"] for p in d["processes"] if p["state"] not in ("exited", "lost")}
    blocked = {}
    for p_uid, s in slots.items():
        if live.get(p_uid) == s["pid"] and s["c_uid"] is not None:
            key = "senders_blocked" if s["op"].endswith("writable)") or s["op"] == "send" \
                else "receivers_blocked"
            blocked.setdefault(s["c_uid"], {}).setdefault(key, []).append(p_uid)
    rows = []
    for c in d["channels"]:
        row = {k: c[k] for k in ("c_uid", "name", "m_uid", "node", "capacity", "block_size",
                                 "ref_count", "refs")}
        row["holders"] = {str(k): v for k, v in c["holders"].items()}
        row.update(depth=None, closed=None)
        if not c.get("being_made"):
            try:
                ch = Channel.attach(gchannel.query(c["c_uid"]).sdesc)
                try:
                    st = ch.statistics()
                    row.update(depth=st.depth, closed=st.closed)
                finally:
                    ch.detach()
            except Exception:
                pass
        b = blocked.get(c["c_uid"], {})
        row["senders_blocked"] = sorted(b.get("senders_blocked", []))
        row["receivers_blocked"] = sorted(b.get("receivers_blocked", []))
        rows.append(row)
    rows.sort(key=lambda r: r["c_uid"])
    return rows


def pool_rows(ins, dump=None):
    from ..globalservices import pool as gpool
    from ..pools_c import Pool
    d = ins.dump() if dump is None else dump
    rows = []
    for p in d["pools"]:
        row = {k: p[k] for k in ("m_uid", "name", "size", "default", "node")}
        row["channels"] = len(p["channels"])
        row.update(used=None, free=None, largest_free=None, live_allocs=None)
        if not p.get("being_made"):
            try:
                pool = Pool.attach(gpool.query(p["m_uid"]).sdesc)
                try:
                    st = pool.stats()
                    row.update(used=st.total - st.free, free=st.free,
                               largest_free=st.largest_free, live_allocs=st.live_allocs)
                finally:
                    pool.detach()
            except Exception:
                pass
        rows.append(row)
    rows.sort(key=lambda r: r["m_uid"])
    return rows


# ------------------------------------------------------------------ output
def _size(n):
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


def _age(s):
    if s is None:
        return "-"
    s = max(0.0, s)
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _printable(v):
    """``str(v)`` with its control characters escaped (``\\n``,
    ``\\x1b``): a name or label is any str (multiprocessing's), and one
    with a newline forged a line of the table, an escape sequence wrote to
    the terminal."""
    s = str(v)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def table(headers, rows):
    """Plain aligned text (the last column is not padded; control
    characters escaped)."""
    cells = [headers] + [["-" if v is None else _printable(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        lines.append("  ".join(v.ljust(widths[i]) if i < len(r) - 1 else v
                               for i, v in enumerate(r)).rstrip())
    return "\n".join(lines)


def _ps_table(rows):
    now = time.time()
    out = []
    for r in rows:
        status = r["status"]
        if r["blocked_since"]:
            status += f" for {_age(now - r['blocked_since'])}"
        out.append([r["p_uid"], r["name"] or r["label"] or "", r["pid"], r["node"], status,
                    "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.1f}",
                    _size(r["rss"]), _age(r["age"]), r["parent"]])
    return table(["P_UID", "NAME", "PID", "NODE", "STATE", "CPU%", "RSS", "AGE", "PARENT"], out)


def _channels_table(rows):
    return table(["C_UID", "NAME", "POOL", "CAPACITY", "DEPTH", "CLOSED", "SENDERS", "RECEIVERS",
                  "HOLDERS"],
                 [[r["c_uid"], r["name"] or "", r["m_uid"], r["capacity"], r["depth"],
                   "-" if r["closed"] is None else ("yes" if r["closed"] else "no"),
                   ",".join(map(str, r["senders_blocked"])) or "-",
                   ",".join(map(str, r["receivers_blocked"])) or "-",
                   ",".join(f"{k}x{v}" if v != 1 else k for k, v in r["holders"].items()) or "-"]
                  for r in rows])


def _print_json(obj):
    print(json.dumps(obj, indent=1, default=repr))


# ---------------------------------------------------------------- commands
def cmd_ls(args):
    from .. import runtime
    from ..exceptions import GlobalServicesError
    try:
        addrs = runtime.list_runtimes()
    except GlobalServicesError as exc:
        raise InspectError(str(exc)) from None
    now = time.time()
    rows = []
    for a in addrs:
        row = {"id": a.id, "name": a.name, "address": a.path, "pid": a.pid, "program": a.program,
               "created": a.created, "age": round(now - a.created, 3) if a.created else None,
               "processes": None, "pool_used": None, "pool_size": None}
        try:
            with Inspector(a) as ins:
                d = ins.dump()
                row["processes"] = sum(1 for p in d["processes"] if p["state"] not in ("exited", "lost")
                                       and not (p["name"] or "").startswith(INSPECT_NAME))
                used = size = 0
                for p in pool_rows(ins, d):
                    if p["used"] is not None:
                        used += p["used"]
                        size += p["size"]
                row.update(pool_used=used, pool_size=size)
        except InspectError:
            pass
        rows.append(row)
    if args.json:
        _print_json(rows)
    elif not rows:
        print("no ember runtime is running for this user")
    else:
        print(table(["ID", "NAME", "PID", "AGE", "PROCS", "POOL USE", "PROGRAM"],
                    [[r["id"], r["name"] or "", r["pid"], _age(r["age"]), r["processes"],
                      f"{_size(r['pool_used'])}/{_size(r['pool_size'])}", r["program"] or ""]
                     for r in rows]))
    return EXIT_OK


def cmd_ps(args):
    with Inspector(_resolve(args.address)) as ins:
        rows = process_rows(ins, all_=args.all)
    if args.json:
        _print_json(rows)
    else:
        print(_ps_table(rows))
    return EXIT_OK


def cmd_channels(args):
    with Inspector(_resolve(args.address)) as ins:
        rows = channel_rows(ins)
    if args.json:
        _print_json(rows)
    else:
        print(_channels_table(rows))
    return EXIT_OK


def cmd_pools(args):
    with Inspector(_resolve(args.address)) as ins:
        rows = pool_rows(ins)
    if args.json:
        _print_json(rows)
    else:
        print(table(["M_UID", "NAME", "SIZE", "USED", "LARGEST FREE", "ALLOCS", "CHANNELS"],
                    [[r["m_uid"], r["name"] or "", _size(r["size"]), _size(r["used"]),
                      _size(r["largest_free"]), r["live_allocs"], r["channels"]] for r in rows]))
    return EXIT_OK


# ------------------------------------------------------------------ stacks
# The managed-process side (the SIGUSR2 handler) is in ember._slots.
def stacks_dir(runtime_id):
    from .. import _slots
    return _slots.stacks_dir(runtime_id)


def _catches(pid, sig):
    """Whether process ``pid`` has a handler for ``sig`` (SigCgt of its
    /proc status): a signal it does not catch would kill it."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for ln in f:
                if ln.startswith("SigCgt:"):
                    return bool(int(ln.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _read_stacks(runtime_id, p_uid, pid, timeout):
    """``(text, None)``: the stacks of process ``p_uid``; or ``(None,
    why)``, why it has none to show."""
    if not pid:
        return None, "it has no pid yet (starting)"
    path = os.path.join(stacks_dir(runtime_id), str(p_uid))
    if not _catches(pid, STACKS_SIGNAL):
        # no handler (yet, or any more): never signal it
        return None, ("it does not catch SIGUSR2: not a Python process, or it has not bound "
                      "its process slot yet (at its first contact with global services)")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None, ("it catches SIGUSR2 but has no stacks file: the program's own handler "
                      "(ember installs none over it)")
    try:
        os.ftruncate(fd, 0)
        os.kill(pid, STACKS_SIGNAL)
        deadline = time.monotonic() + timeout
        size, stable_since = 0, None
        while time.monotonic() < deadline:
            n = os.fstat(fd).st_size
            if n and n == size:
                if stable_since is None:
                    stable_since = time.monotonic()
                elif time.monotonic() - stable_since > 0.05:
                    break
            else:
                size, stable_since = n, None
            time.sleep(0.005)
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 1 << 20).decode(errors="replace")
        # the handler's own frame is not the program's
        data = "".join(ln for ln in data.splitlines(True) if "in _on_stacks_signal" not in ln)
        if not data:
            return None, (f"it did not answer within {timeout:g} s (its main thread in C code "
                          f"that does not check for signals; --timeout waits longer)")
        return data, None
    except ProcessLookupError:
        return None, "it exited"
    finally:
        os.close(fd)


def cmd_stacks(args):
    addr = _resolve(args.address)
    with Inspector(addr) as ins:
        rows = process_rows(ins)
    chosen = rows
    if args.procs:
        chosen = []
        for ident in args.procs:
            match = [r for r in rows if str(r["p_uid"]) == ident or r["name"] == ident]
            if not match:
                raise InspectError(f"no live process {ident!r} in the runtime {addr.id}",
                                   EXIT_NO_PROCESS)
            chosen += [r for r in match if r not in chosen]
    out = []
    for r in chosen:
        text, why = _read_stacks(addr.id, r["p_uid"], r["pid"], args.timeout)
        out.append({"p_uid": r["p_uid"], "name": r["name"], "label": r["label"],
                    "pid": r["pid"], "blocked_on": r["blocked_on"], "status": r["status"],
                    "stacks": text, "no_stacks": why})
    if args.json:
        _print_json(out)
        return EXIT_OK
    for o in out:
        label = o["label"] and _printable(o["label"])
        name = f" {o['name']!r}" if o["name"] else f" {label}" if label else ""
        print(f"=== process {o['p_uid']}{name} (pid {o['pid']}): {o['status']}")
        if o["stacks"] is None:
            print(f"  (no stacks: {o['no_stacks']})")
        else:
            for line in o["stacks"].rstrip("\n").splitlines():
                print("  " + line)
            if o["blocked_on"]:
                print(f"  ^ blocked on {o['blocked_on']}")
        print()
    return EXIT_OK


# ------------------------------------------------------------------ events
def events_path(runtime_id):
    from ..runtime import runtime_dir
    return os.path.join(runtime_dir(create=False), f"{runtime_id}.events")


def _events_target(address):
    """(runtime id, Address or None): a live runtime, or the id of a
    finished one whose event log is still there."""
    from .. import runtime
    from ..exceptions import GlobalServicesError
    try:
        a = runtime.resolve(address)
        return a.id, a
    except GlobalServicesError as exc:
        if address and address != "auto" and os.sep not in address and \
                os.path.exists(events_path(address)):
            return address, None
        last = None if address and address != "auto" or runtime.list_runtimes() \
            else _newest_finished_log()
        if last is not None:      # (not "start one": what happened is what is asked)
            raise InspectError(f"no running ember runtime found for this user; the newest "
                               f"finished run's log is {last}'s: ember events --address "
                               f"{last}") from None
        raise InspectError(str(exc)) from None


def _newest_finished_log():
    """The id of the newest event log in this user's runtime directory (no
    runtime runs: every log there is a finished run's), or None."""
    from ..runtime import runtime_dir
    d = runtime_dir(create=False)
    try:
        logs = [(os.stat(os.path.join(d, n)).st_mtime, n[:-len(".events")])
                for n in os.listdir(d) if n.endswith(".events")]
    except OSError:
        return None
    return max(logs)[1] if logs else None


def _format_event(e):
    t = time.strftime("%H:%M:%S", time.localtime(e.get("t", 0)))
    ms = int((e.get("t", 0) % 1) * 1000)
    rest = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                    for k, v in e.items() if k not in ("t", "event") and v is not None)
    return f"{t}.{ms:03d} {e.get('event')} {rest}".rstrip()


def _is_inspect(e):
    return (e.get("name") or "").startswith(INSPECT_NAME) if isinstance(e.get("name"), str) \
        else False


def cmd_events(args):
    rid, addr = _events_target(args.address)
    path = events_path(rid)
    inspect_uids = set()

    def emit(line):
        try:
            e = json.loads(line)
        except ValueError:
            return
        if not (isinstance(e, dict) and isinstance(e.get("event"), str)
                and isinstance(e.get("t", 0), (int, float))):
            return                        # not an event record: skipped, never a traceback
        if e.get("event") == "process.attached" and _is_inspect(e):
            inspect_uids.add(e.get("p_uid"))
            return
        if e.get("p_uid") in inspect_uids and e.get("event", "").startswith("process."):
            return
        print(json.dumps(e) if args.json else _format_event(e), flush=args.follow)

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InspectError(f"the ember runtime {rid} has no event log ({path})") from None
    with f:
        buf = b""
        while True:
            chunk = f.read()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                emit(line.decode(errors="replace"))
            if not args.follow:
                break
            if not chunk:
                if addr is None or not addr.alive():
                    break
                try:
                    time.sleep(0.2)
                except KeyboardInterrupt:
                    break
    return EXIT_OK


# --------------------------------------------------------------------- top
def cmd_top(args):
    import curses
    addr = _resolve(args.address)
    with Inspector(addr) as ins:
        return curses.wrapper(_top_loop, ins, addr, max(0.1, args.interval))


def _top_loop(scr, ins, addr, interval):
    import curses
    curses.curs_set(0) if hasattr(curses, "curs_set") else None
    scr.timeout(int(interval * 1000))
    prev = {}
    while True:
        if not addr.alive():
            return EXIT_OK
        try:
            d = ins.dump()
        except InspectError:
            return EXIT_NO_RUNTIME
        slots = ins.slots()
        rows = process_rows(ins, d, slots)
        now = time.monotonic()
        for r in rows:       # CPU% over the last interval, not over the life
            info = _os_info(r["pid"]) if r["pid"] else {}
            cs = info.get("cpu_seconds")
            if cs is not None and r["pid"] in prev:
                t0, c0 = prev[r["pid"]]
                r["cpu_percent"] = round(100.0 * (cs - c0) / max(now - t0, 1e-3), 1)
            if cs is not None:
                prev[r["pid"]] = (now, cs)
        text = (f"ember top  {addr.id}" + (f" ({addr.name})" if addr.name else "") +
                f"  {time.strftime('%H:%M:%S')}  q quits\n\n" + _ps_table(rows) + "\n\n" +
                _channels_table(channel_rows(ins, d, slots)))
        scr.erase()
        h, w = scr.getmaxyx()
        for i, line in enumerate(text.splitlines()[:h - 1]):
            try:
                scr.addstr(i, 0, line[:w - 1])
            except curses.error:
                pass
        scr.refresh()
        ch = scr.getch()
        if ch in (ord("q"), ord("Q")):
            return EXIT_OK
