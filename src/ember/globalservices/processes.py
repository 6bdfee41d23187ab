"""GS part: the process registry (one node's processes, by p_uid and name).

Create (GS decides the p_uid and the request key; the shepherd spawns and
confirms with ``ShSpawned``), attach and detach (processes the runtime did
not start), exit (``ShExited``: wake joiners, forget its waits, drop its
channel references, free its reply channels, reclaim its pool blocks),
kill, list, query and (multi-)join with server-side timeouts.

Uses from the other parts: ``_park``/``_finish_waiter``/``_step``
(:mod:`.registry`), ``_drop_refs`` (:mod:`.memory`),
``_teardown_step`` (:mod:`.teardown`), and from the composition
(:mod:`.server`): ``_reply``, ``send_reply``, ``send_shepherd``,
``_register_reply``, ``reply_owner``, ``check_reply``.
"""
from _operator import _compare_digest as compare_digest  # hmac.compare_digest without hashlib/OpenSSL (~2 ms at start-up)
import itertools
import os
import _signal as signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)

from .. import _env, messages as m
from .._trace import t as _t
from ..descriptors import ProcessOptions
from ..exceptions import ProcessError
from .registry import _Waiter, _lookup, _timeout, log

PENDING, RUNNING, EXITED = "pending", "running", "exited"
#: What descriptors and joins say of a process whose node was lost (it is
#: EXITED inside GS, with exit code 255).
LOST = "lost"
#: Environment variables that say where the runtime is on one node.
_NODE_LOCAL = (_env.RUNTIME_ID, _env.INF_POOL, _env.GS_CH, _env.DEFAULT_POOL, _env.NODE,
               _env.SH_CH, _env.GS_CTL, _env.P_UID)
LAUNCHER_P_UID = 0
FIRST_P_UID = 1
#: At most this many identifiers in one multi_join request.
MAX_JOIN_IDENTS = 4096
#: The options of the create a ProcessClaimNext carries (read, never changed).
_SPARE = {"spare": True}
#: Seconds GS holds the death line of a claimed lease that a signal nobody
#: asked through GS ended, while its creator may still ask to start it
#: again (its call unread): written at the creator's ProcessNoRerun, a
#: refused or failed start again, the creator's exit, or after this long.
REPORT_HOLD = 2.0


def _label(value):
    """A process's label (ProcessOptions.label, ProcessClaim.label) as
    kept: a str of at most LABEL_MAX characters (cut), else None."""
    if not isinstance(value, str) or not value:
        return None
    return value[:ProcessOptions.LABEL_MAX]


class _Proc:
    __slots__ = ("p_uid", "name", "state", "exit_code", "os_pid", "create_req", "refs",
                 "replies", "waiters", "creator", "key", "joined", "exe", "prev_same_name",
                 "attached", "node", "lost", "exit_info", "next_c_uid", "posted_c_uids",
                 "spare", "exit_held", "label", "forked", "respawn", "report_held")

    def __init__(self, p_uid, name, creator, key=None, node=0):
        self.p_uid = p_uid
        self.name = name
        self.state = PENDING
        self.exit_code = None
        self.exit_info = None     # the shepherd's ShExited.info (status, core, OOM)
        self.os_pid = None
        self.create_req = None   # (tag, r) of the create waiting for ShSpawned
        self.refs = {}           # c_uid -> references this process holds
        self.replies = set()     # reply-channel descriptors this process used
        self.waiters = set()     # join waiters that watch this process
        self.creator = creator
        self.key = key           # the request key GS made for it (bytes)
        self.joined = False      # a join has reported its exit
        self.exe = ""
        self.prev_same_name = None   # the process last_by_name named before this one
        self.next_c_uid = None   # the c_uid reserved for its next ChannelRegister
        self.posted_c_uids = None  # c_uids reserved for its ChannelRegisterPosted (a set)
        self.attached = False    # joined with ProcessAttach (not started by the runtime)
        self.forked = False      # ... or with ProcessForked (an os.fork() child of a process)
        self.node = node         # the node it runs on
        self.lost = False        # its node was lost (state "lost" in descriptors)
        # A spare its creator leased and has not claimed (ProcessCreate option
        # "spare"; ember.Process): left out of lists, events and the
        # teardown's survivors, killed when its creator exits.
        self.spare = False
        self.exit_held = None    # a spare's process.exited event, until it is claimed
        # A spare's request (exe, args, env, run_dir), while it may be started
        # again (ProcessRerun): until it exits by anything but a signal, is
        # sent a signal through GS (p.kill(): its end is meant) or is
        # started again.
        self.respawn = None
        # (line, timer): its death line while it may be started again
        # (_death_report); dropped if it is
        self.report_held = None
        self.label = None        # what `ember ps` shows for it without a name (ProcessOptions)

    @property
    def shown_state(self):
        return LOST if self.lost else self.state

    def desc(self, node=None):
        return {"p_uid": self.p_uid, "user_name": self.name or None, "state": self.shown_state,
                "retval": self.exit_code, "node": self.node, "os_pid": self.os_pid}


#: For the tests: a path; every ``ProcessForked`` GS gets while a file of
#: that name exists is refused (tests/test_pyprocess.py).
_REFUSE_FORKED = os.environ.get("EMBER_TEST_GS_REFUSE_FORKED")


class ProcessesPart:
    """Processes: ``procs`` (p_uid -> _Proc), ``proc_names`` (live ones),
    ``last_by_name`` (the most recent of a name, exited or not)."""

    REQUESTS = ((m.ProcessCreate, "on_process_create"), (m.ProcessList, "on_process_list"),
                (m.ProcessQuery, "on_process_query"), (m.ProcessKill, "on_process_kill"),
                (m.ProcessJoin, "on_process_join"), (m.ProcessAttach, "on_process_attach"),
                (m.ProcessDetach, "on_process_detach"), (m.ProcessClaim, "on_process_claim"),
                (m.ProcessClaimNext, "on_process_claim_next"), (m.ProcessRerun, "on_process_rerun"),
                (m.ProcessNoRerun, "on_process_no_rerun"), (m.ProcessForked, "on_process_forked"))
    NOTICES = ((m.ShSpawned, "on_sh_spawned"), (m.ShExited, "on_sh_exited"))

    def _init_processes(self):
        self.procs = {}           # p_uid -> _Proc
        self.proc_names = {}      # name -> p_uid (live processes only)
        self.last_by_name = {}    # name -> p_uid of the most recent process of that name
        self._p_uids = itertools.count(FIRST_P_UID)
        self.spares_of = {}       # creator p_uid -> p_uids of its unclaimed spares
        self.reports_held = {}    # p_uid -> _Proc: a lease's death line held (_death_report)
        self.unawaited_replies = 0  # replies sent that nobody waits for (a spare's create)

    def _proc(self, ident):
        if isinstance(ident, str) and ident not in self.proc_names:
            # the most recent process of that name, even if it has exited
            p_uid = self.last_by_name.get(ident)
            if p_uid is not None:
                return self.procs[p_uid]
        return _lookup(ident, self.procs, self.proc_names, ProcessError, "process", "p_uid")

    def _proc_label(self, rec):
        name = f" {rec.name!r}" if rec.name else ""
        pid = f" (pid {rec.os_pid})" if rec.os_pid is not None else ""
        return f"process {rec.p_uid}{name}{pid}"

    def on_process_create(self, msg):
        _t("G.create")
        if self.teardown is not None:
            raise ProcessError("the runtime is shutting down: no new processes")
        name = msg.user_name or ""
        if not isinstance(name, str):
            raise ProcessError(f"user_name must be a str, not {type(name).__name__}")
        if name and name in self.proc_names:
            live = self.procs[self.proc_names[name]]
            if msg.soft:
                if live.state == PENDING:
                    raise ProcessError(f"process {name!r} (p_uid {live.p_uid}) is still starting")
                return self._reply(msg.tag, msg.r, live.desc(self.node))
            raise ProcessError(f"a live process is already named {name!r} (p_uid {live.p_uid})")
        if not isinstance(msg.exe, str) or not msg.exe:
            raise ProcessError("exe must be a non-empty str")
        if not isinstance(msg.args, list) or not all(isinstance(a, str) for a in msg.args):
            raise ProcessError("args must be a list of str")
        env = msg.env or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and (v is None or
                                                                        isinstance(v, str))
                                                for k, v in env.items()):
            raise ProcessError("env must map str to str (or None: removed)")
        if not isinstance(msg.run_dir, str):
            raise ProcessError("run_dir must be a str")
        self._check_directives(msg.p_uid, env)
        node = self._placement(msg)
        p_uid = next(self._p_uids)
        rec = _Proc(p_uid, name, msg.p_uid, key=os.urandom(16), node=node)
        rec.create_req = (msg.tag, msg.r)
        rec.exe = msg.exe
        rec.label = _label(msg.options.get("label") if isinstance(msg.options, dict) else None)
        if isinstance(msg.options, dict) and msg.options.get("spare") is True:
            if name:
                raise ProcessError("a spare has no name")
            rec.spare = True
            self.spares_of.setdefault(msg.p_uid, set()).add(p_uid)
        self.procs[p_uid] = rec
        if name:
            self.proc_names[name] = p_uid
            rec.prev_same_name = self.last_by_name.get(name)
            self.last_by_name[name] = p_uid
        # The key goes to the shepherd on the private channel, into the
        # child's environment; it overrides whatever the request put there.
        env = dict(env)
        if self.mn_env:
            if node != self._creator_node(msg):
                # where the runtime is on the creator's node means nothing on
                # another: the child gets its own node's (the shepherd's env)
                for k in _NODE_LOCAL:
                    env.pop(k, None)
            env.update(self.mn_env)
        env[_env.KEY] = rec.key.hex()
        if rec.spare:
            rec.respawn = (msg.exe, msg.args, env, msg.run_dir)
        self.to_node(node, m.ShSpawn(msg.tag, p_uid, msg.exe, msg.args, env, msg.run_dir, name))

    def _creator_node(self, msg):
        creator = self.procs.get(msg.p_uid)
        return creator.node if creator is not None else self._origin

    def _placement(self, msg):
        """The node a new process runs on: ``options["node"]`` — an int (that
        node), ``"any"`` (the live node with the fewest live processes,
        the lowest index on a tie) — or, if not given, its creator's node."""
        opts = msg.options if isinstance(msg.options, dict) else {}
        want = opts.get("node")
        if want is None:
            return self._creator_node(msg)
        live = [n for n, info in self.nodes.items() if info["alive"]]
        if want == "any":
            load = {n: 0 for n in live}
            for p in self.procs.values():
                if p.state != EXITED and p.node in load:
                    load[p.node] += 1
            return min(live, key=lambda n: (load[n], n))
        if isinstance(want, bool) or not isinstance(want, int):
            raise ProcessError(f"ProcessOptions.node must be a node index (int) or 'any', "
                               f"not {want!r}")
        if want not in self.nodes:
            raise ProcessError(f"no node {want} in this runtime (nodes: "
                               f"{', '.join(map(str, sorted(self.nodes)))})")
        if want not in live:
            raise ProcessError(f"node {want} was lost: cannot start a process there")
        return want

    def _check_directives(self, p_uid, env):
        """The spawn directives in a create's env (ember._env; the shepherd
        acts on them and never passes them on) are the launcher's:
        EMBER_FORK_PY (run a .py in a fork of the shepherd, which has the
        shepherd's memory) and EMBER_STDIN (the launcher's own stdin) only
        from p_uid 0; EMBER_STDIO_FROM (that pid's stdio, reopened through
        /proc) only naming the requester's own pid.  ProcessError
        otherwise (docs/architecture.md, "Trust model")."""
        for name in (_env.FORK_PY, _env.STDIN):
            if name in env and p_uid != LAUNCHER_P_UID:
                raise ProcessError(f"{name} is a spawn directive of the launcher only "
                                   f"(process {p_uid} may not ask for it)")
        if _env.STDIO_FROM in env:
            if p_uid == LAUNCHER_P_UID:
                own = os.getppid()            # GS is the launcher's child
            else:
                rec = self.procs.get(p_uid)
                own = rec.os_pid if rec is not None else None
            if own is None or env[_env.STDIO_FROM] != str(own):
                raise ProcessError(f"{_env.STDIO_FROM} must be the requesting process's own pid "
                                   f"({own}), not {env[_env.STDIO_FROM]!r}")

    def on_sh_spawned(self, msg):
        _t("G.spawned")
        rec = self.procs.get(msg.p_uid)
        if rec is None:
            log.warning("ShSpawned for unknown p_uid %r", msg.p_uid)
            return
        tag, r = rec.create_req or (None, None)
        rec.create_req = None
        if r and self.reply_owner.get(r) != rec.creator:
            r = None       # the creator has exited and its reply channels are gone
        if msg.err and rec.exit_code is not None:
            # started again (ProcessRerun) and failed: its end stands
            rec.state = EXITED
            self._write_held(rec)             # (its death line, held)
            log.info("process %d could not be started again: %s", rec.p_uid, msg.err)
            if r:
                self.route_reply(self.node, r, m.reply_err(tag, "ProcessError",
                                                           f"cannot start process: {msg.err}"))
            return
        if msg.err:
            # never started: forget it, free its name
            del self.procs[rec.p_uid]
            self._unlist_spare(rec)
            if rec.name and self.proc_names.get(rec.name) == rec.p_uid:
                del self.proc_names[rec.name]
            if rec.name and self.last_by_name.get(rec.name) == rec.p_uid:
                if rec.prev_same_name in self.procs:
                    self.last_by_name[rec.name] = rec.prev_same_name
                else:
                    del self.last_by_name[rec.name]
            log.info("process %d %r failed to start: %s", rec.p_uid, rec.exe, msg.err)
            if r:
                self.route_reply(self.node, r, m.reply_err(tag, "ProcessError",
                                                           f"cannot start process: {msg.err}"))
            return
        rec.os_pid = msg.os_pid
        if rec.state == PENDING:
            rec.state = RUNNING
            rec.exit_code = rec.exit_info = None      # (started again: ProcessRerun)
            rec.report_held = None                    # no process died: its call runs
        log.info("%s started: %r", self._proc_label(rec), rec.exe)
        if not rec.spare:
            self._event("process.started", p_uid=rec.p_uid, name=rec.name or None,
                        pid=rec.os_pid, exe=rec.exe, parent=rec.creator)
        if r:
            self._reply(tag, r, rec.desc(self.node))
            if rec.spare:
                # nobody waits for it in most starts (the creator reads it
                # at its next start): no spin for a request to follow
                self.unawaited_replies += 1

    def on_process_attach(self, msg):
        """A process the runtime did not start joins it (``ember.init()``):
        it proves with the runtime's key that it may, and gets a p_uid and
        a request key of its own.  The shepherd watches it (not its child:
        no exit status, see docs/embedding.md)."""
        if self.attach_key is None or not isinstance(msg.attach_key, str) or \
                not compare_digest(msg.attach_key.encode(), self.attach_key.encode()):
            self.warn("bad-attach-key", "refused ProcessAttach: wrong runtime key")
            # an error on the given channel, unregistered: nothing is kept
            if self.check_reply is None or self.check_reply(msg.r) is None:
                self.route_reply(self.node, msg.r, m.reply_err(msg.tag, "ProcessError",
                                                   "attach refused: wrong runtime key"))
                forget = getattr(self.send_reply, "forget", None)
                if forget is not None:        # keep no handle for a process that is not ours
                    forget(msg.r)
            return
        if msg.r in self.reply_owner:
            self.warn("bad-reply-channel", "refused ProcessAttach: its reply channel is "
                      "process %s's", self.reply_owner[msg.r])
            return
        err = None
        pid, name = msg.pid, msg.user_name or ""
        if self.teardown is not None:
            err = "the runtime is shutting down: cannot attach"
        elif isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            err = f"attach: bad pid {pid!r}"
        elif not isinstance(name, str):
            err = f"user_name must be a str, not {type(name).__name__}"
        elif name and name in self.proc_names:
            err = f"a live process is already named {name!r} (p_uid {self.proc_names[name]})"
        p_uid = next(self._p_uids) if err is None else None
        rec = _Proc(p_uid, name, 0, key=os.urandom(16), node=self._origin)
        if not self._register_reply(msg, p_uid, rec.replies):
            return
        if err is not None:
            self._unregister_replies(rec)
            self.route_reply(self.node, msg.r, m.reply_err(msg.tag, "ProcessError", err))
            return
        if name:
            self.proc_names[name] = p_uid
        self._watched(rec, pid)
        log.info("process %d attached (pid %d)", p_uid, pid)
        self._event("process.attached", p_uid=p_uid, name=name or None, pid=pid)
        self._reply(msg.tag, msg.r, dict(rec.desc(self.node), key=rec.key.hex()))

    def on_process_forked(self, msg):
        """An os.fork() child of process ``msg.p_uid`` (it sent that
        process's key, which it inherited) at its first request: a p_uid
        and request key of its own, its parent as creator, watched as an
        attached process (not the shepherd's child: no exit status); the
        reply channel it asked on (admitted as its parent's) is its own.
        Until now a fork child spoke as its parent: the c_uid reserved for
        that p_uid went to whichever of them asked last, and the parent's
        exit freed the child's reply channels and silenced it."""
        parent = self.procs.get(msg.p_uid)
        pid = msg.pid
        if parent is None:
            raise ProcessError(f"process {msg.p_uid} cannot fork a process of the runtime")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ProcessError(f"forked: bad pid {pid!r}")
        if self.teardown is not None:
            raise ProcessError("the runtime is shutting down: a fork child cannot join it")
        if _REFUSE_FORKED and os.path.exists(_REFUSE_FORKED):
            raise ProcessError("refused for a test (EMBER_TEST_GS_REFUSE_FORKED)")
        p_uid = next(self._p_uids)
        rec = _Proc(p_uid, "", parent.p_uid, key=os.urandom(16), node=parent.node)
        parent.replies.discard(msg.r)
        rec.replies.add(msg.r)
        self.reply_owner[msg.r] = p_uid
        rec.forked = True
        self._watched(rec, pid)
        log.info("process %d forked process %d (pid %d)", parent.p_uid, p_uid, pid)
        self._event("process.forked", p_uid=p_uid, pid=pid, parent=parent.p_uid)
        self._reply(msg.tag, msg.r, dict(rec.desc(self.node), key=rec.key.hex()))

    def _watched(self, rec, pid):
        """A process the runtime did not start (attached, forked) is one of
        its processes from now on: listed, watched by its node's shepherd."""
        rec.attached = True
        rec.state = RUNNING
        rec.os_pid = pid
        self.procs[rec.p_uid] = rec
        self.to_node(rec.node, m.ShWatch(rec.p_uid, pid))

    def _unregister_replies(self, rec):
        for r in list(rec.replies):
            if self.reply_owner.get(r) == rec.p_uid:
                del self.reply_owner[r]
        rec.replies.clear()

    def on_process_detach(self, msg):
        """An attached process leaves (``ember.shutdown()``, or its exit)."""
        rec = self.procs.get(msg.p_uid)
        if rec is None or not rec.attached:
            raise ProcessError(f"process {msg.p_uid} is not an attached process")
        code = msg.exit_code
        if isinstance(code, bool) or not isinstance(code, int):
            code = 0
        self.to_node(rec.node, m.ShUnwatch(rec.p_uid))
        # The reply goes out on msg.r: the client destroys that channel itself.
        rec.replies.discard(msg.r)
        self.reply_owner.pop(msg.r, None)
        self._reply(msg.tag, msg.r)
        self._exited(rec, code)

    def on_sh_exited(self, msg):
        _t("G.exited")
        p_uid = msg.p_uid
        if isinstance(p_uid, bool) or not isinstance(p_uid, int):
            log.warning("ShExited with a bad p_uid %r", p_uid)
            return
        rec = self.procs.get(p_uid)
        if rec is None or rec.state == EXITED:
            if rec is None or not rec.attached:     # a detached process's watch may race
                log.warning("ShExited for unknown or exited p_uid %r", p_uid)
            return
        info = msg.info
        if info is not None and not isinstance(info, dict):
            log.warning("ShExited with a bad info %r", info)
            info = None
        report = None
        if info is not None and "idle_report" in info:
            info = dict(info)
            report = info.pop("idle_report")
        self._exited(rec, msg.exit_code, info, report)

    def _death_report(self, rec, report):
        """A lease that died, named as an idle spare, by a signal nobody in
        ember sent, was claimed (its creator had sent its call): a user's
        process died, and the shepherd writes the report it left to us.
        Held while the creator may still ask to start it again (its call
        unread: ProcessRerun), for :data:`REPORT_HOLD` s at most: the
        creator says which when it learns the end (ProcessRerun, or
        ProcessNoRerun), else it is written then, or at the creator's
        exit; a lease started again died no death."""
        if not isinstance(report, str):
            return
        if rec.respawn is None:
            self.to_node(rec.node, m.ShDeathReport(rec.p_uid, report))
            return
        rec.report_held = (report, self.call_later(REPORT_HOLD, self._write_held, rec))
        self.reports_held[rec.p_uid] = rec

    def _write_held(self, rec, write=True):
        """Write (``write``) or drop the death line held for ``rec``, if any."""
        held, rec.report_held = rec.report_held, None
        if held is None:
            return
        self.reports_held.pop(rec.p_uid, None)
        held[1].cancel()                  # (a no-op once fired or cancelled)
        if write:
            self.to_node(rec.node, m.ShDeathReport(rec.p_uid, held[0]))

    def _exited(self, rec, exit_code, info=None, report=None):
        """Everything a process's end releases (its pool blocks are swept by
        the node's shepherd, which reaped it, before it reports the exit; an
        attached process that detaches and lives on keeps its blocks).
        ``report``: a lease's death report, written only if it was claimed
        (ShExited.info ``idle_report``)."""
        p_uid = rec.p_uid
        rec.state = EXITED
        rec.exit_code = exit_code
        rec.exit_info = info
        if not (isinstance(exit_code, int) and exit_code < 0):
            rec.respawn = None
        log.info("%s exited with code %s", self._proc_label(rec), exit_code)
        if rec.spare:
            rec.exit_held = (exit_code, info, report)     # told if it is claimed after all
            self._unlist_spare(rec)
        else:
            self._event_exited(rec, exit_code, info)
            self._death_report(rec, report)
        if self.reports_held:             # its leases' death lines: none will be started again
            for held in [r for r in self.reports_held.values() if r.creator == p_uid]:
                self._write_held(held)
        # Its unclaimed spares go with it (nobody else may take them).
        for sp in self.spares_of.pop(p_uid, ()):
            srec = self.procs.get(sp)
            if srec is not None and srec.spare and srec.state != EXITED:
                self.to_node(srec.node, m.ShKill(sp, signal.SIGKILL))
        if rec.name and self.proc_names.get(rec.name) == rec.p_uid:
            del self.proc_names[rec.name]
        # Every step below is independent of the others' failure.
        for w in list(rec.waiters):           # wake its joiners
            self._step(f"waking a join on process {p_uid}", self._joined_exit, w, rec)
        for w in list(self.owned_waiters.get(p_uid, ())):   # forget its waits
            self._step(f"forgetting a wait of process {p_uid}", self._finish_waiter, w)
        for c_uid in list(rec.refs):          # drop its channel references
            ch = self.chans.get(c_uid)
            self._event("channel.holder_died", c_uid=c_uid, name=ch.name if ch else None,
                        p_uid=p_uid, refs=rec.refs.get(c_uid))
            self._step(f"dropping process {p_uid}'s reference to channel {c_uid}",
                       self._drop_refs, rec, c_uid)
        board_exited = getattr(self, "_board_exited", None)      # join wake board (.memory)
        if board_exited is not None:
            self._step(f"dropping process {p_uid}'s join wake board claims", board_exited, p_uid)
        objects_exited = getattr(self, "_objects_exited", None)   # named objects (.objects)
        if objects_exited is not None:
            self._step(f"dropping process {p_uid}'s objects", objects_exited, p_uid)
        for r in list(rec.replies):           # free its reply channels
            self._step(f"freeing a reply channel of process {p_uid}", self._free_reply_channel, r)
            rec.replies.discard(r)
            if self.reply_owner.get(r) == p_uid:
                del self.reply_owner[r]
        if self.teardown is not None:
            self._teardown_step()

    def _joined_exit(self, w, rec):
        if w.done:
            return
        w.n_exited += 1
        if rec.exit_code != 0:
            w.any_bad = True
        self._check_join(w)

    def _free_reply_channel(self, r):
        """Hook: the transport frees a dead process's reply channel."""
        keeps = getattr(self, "_board_keeps", None)     # the join wake board (.memory)
        if keeps is not None and keeps(r):
            return                        # freed once its joiner is unlisted
        node = self.reply_node.pop(r, None) if self.reply_node else None
        if node is not None:              # made on another node: its agent frees it
            if self.nodes.get(node, {}).get("alive") and self.send_remote is not None:
                self.send_remote(node, m.MN_FREE, r, None)
            return
        free = getattr(self.send_reply, "forget", None)
        if free is not None:
            free(r, destroy=True)

    def _unlist_spare(self, rec):
        mine = self.spares_of.get(rec.creator)
        if mine is not None:
            mine.discard(rec.p_uid)
            if not mine:
                del self.spares_of[rec.creator]

    def on_process_claim(self, msg):
        """The creator of a spare has given it a call (ember.Process): from
        now on it is a process like any other (listed, its events written).
        A notice: nothing is answered; a claim of what is not the sender's
        unclaimed spare is refused (logged)."""
        _t("G.claim")
        rec = self.procs.get(msg.ident) if isinstance(msg.ident, int) else None
        if rec is None or not rec.spare or rec.creator != msg.p_uid:
            self.warn("bad-claim", "refused ProcessClaim of %r from p_uid %s: not its unclaimed "
                      "spare", msg.ident, msg.p_uid)
            return
        rec.spare = False
        rec.label = _label(msg.label)
        self._unlist_spare(rec)
        self._event("process.started", p_uid=rec.p_uid, name=None, pid=rec.os_pid,
                    exe=rec.exe, parent=rec.creator)
        if rec.exit_held is not None:             # it has ended already
            code, info, report = rec.exit_held
            rec.exit_held = None
            self._event_exited(rec, code, info)
            self._death_report(rec, report)

    def on_process_claim_next(self, msg):
        """A claim (:meth:`on_process_claim`: refused and logged if
        ``ident`` is not the sender's unclaimed spare) and the create of
        the sender's next spare (:meth:`on_process_create` with the option
        ``spare``: answered with its descriptor, or an error), in one
        message: the create is made whatever became of the claim."""
        self.on_process_claim(msg)
        self.on_process_create(m.ProcessCreate._new(msg.tag, msg.p_uid, msg.r, msg.key, msg.exe,
                                                    msg.args, msg.env, msg.run_dir, "",
                                                    _SPARE, False))

    def on_process_rerun(self, msg):
        """The creator of a lease it claimed asks to start it again: a
        signal ended it before it read its call, whose record is still
        whole in the call channel (the creator sees that, GS cannot: a
        lease's name tells only that it had not run it).  Once, under the
        same p_uid, from the lease's own request; answered when the
        shepherd says it runs (:meth:`on_sh_spawned`: a failure leaves its
        end as it was).  ProcessError unless the lease is the sender's,
        claimed, ended by a signal and not started again (the creator's
        own joins while it waits for GS to learn the end may have marked
        it joined: it asks before its Process reports the end)."""
        ident = msg.ident
        rec = self.procs.get(ident) if isinstance(ident, int) and \
            not isinstance(ident, bool) else None
        if rec is None or rec.creator != msg.p_uid or rec.spare or rec.state != EXITED \
                or rec.respawn is None:
            raise ProcessError(f"process {ident!r} cannot be started again: not a lease of "
                               f"process {msg.p_uid} that a signal ended, not started again")
        if self.teardown is not None:
            self._write_held(rec)
            raise ProcessError("the runtime is shutting down: no new processes")
        if rec.report_held is not None:   # kept until the new process runs (on_sh_spawned)
            rec.report_held[1].cancel()
            self.reports_held.pop(rec.p_uid, None)
        exe, args, env, run_dir = rec.respawn
        rec.respawn = None
        rec.state = PENDING
        rec.joined = False
        rec.create_req = (msg.tag, msg.r)
        log.info("%s: started again (it died before it read its call)", self._proc_label(rec))
        self.to_node(rec.node, m.ShSpawn(msg.tag, rec.p_uid, exe, args, env, run_dir, ""))

    def on_process_no_rerun(self, msg):
        """The creator of a lease that a signal ended has seen its call
        read (ProcessRerun's notice counterpart, answered nothing): its end
        stands, and the death line held for it is written now.  Anything
        but the sender's lease is ignored."""
        ident = msg.ident
        rec = self.procs.get(ident) if isinstance(ident, int) and \
            not isinstance(ident, bool) else None
        if rec is not None and rec.creator == msg.p_uid and rec.state == EXITED:
            rec.respawn = None
            self._write_held(rec)

    def on_process_list(self, msg):
        # Every process GS knows, exited ones included (process.query still
        # answers for them), as the reference runtime does; not unclaimed
        # spares (no user's process yet).
        self.read_reports()
        self._reply(msg.tag, msg.r, [[p.p_uid, p.name or None, p.state != EXITED]
                                     for p in self.procs.values() if not p.spare])

    def on_process_query(self, msg):
        self.read_reports()
        self._reply(msg.tag, msg.r, self._proc(msg.ident).desc(self.node))

    def on_process_kill(self, msg):
        self.read_reports()            # (an exited one's kill is refused)
        rec = self._proc(msg.ident)
        sig = msg.sig
        if isinstance(sig, bool) or not isinstance(sig, int) or not 1 <= sig < signal.NSIG:
            raise ProcessError(f"invalid signal {sig!r} for process {rec.p_uid}")
        if rec.state == EXITED:
            raise ProcessError(f"process {rec.p_uid} has already exited (exit code {rec.exit_code})")
        rec.respawn = None                # a signal asked for: its end is meant
        self.to_node(rec.node, m.ShKill(rec.p_uid, sig))
        self._reply(msg.tag, msg.r)

    def on_process_join(self, msg):
        self.read_reports()            # (answered at once if they exited)
        idents = msg.idents
        if not isinstance(idents, list) or not idents:
            raise ProcessError("join needs a non-empty list of process identifiers")
        if len(idents) > MAX_JOIN_IDENTS:
            raise ProcessError(f"multi_join takes at most {MAX_JOIN_IDENTS} identifiers, "
                               f"got {len(idents)}")
        timeout = _timeout(msg.timeout, ProcessError)
        recs = {}
        unknown = []
        for ident in idents:
            try:
                rec = self._proc(ident)
            except ProcessError:
                if isinstance(ident, bool) or not isinstance(ident, (int, str)):
                    raise
                if ident not in unknown:
                    unknown.append(ident)
                continue
            if rec.p_uid == msg.p_uid:
                raise ProcessError(f"process {rec.p_uid} cannot join itself")
            recs[rec.p_uid] = rec
        w = _Waiter(msg.tag, msg.r, msg.p_uid)
        w.p_uids = tuple(recs)
        w.unknown = tuple(unknown)
        w.join_all = bool(msg.join_all)
        w.bad_exit = bool(msg.return_on_bad_exit)
        for rec in recs.values():
            if rec.state == EXITED:
                w.n_exited += 1
                w.any_bad = w.any_bad or rec.exit_code != 0
        if self._check_join(w):
            return
        if timeout == 0:
            return self._answer_join(w, timed_out=True)
        for rec in recs.values():
            rec.waiters.add(w)
        # (the node's shepherd reports a plain exit quietly, else)
        mine = [p for p, rec in recs.items() if rec.node == self.node and rec.state != EXITED]
        if mine:
            self.to_node(self.node, m.ShExitWanted(mine))
        log.debug("process %s waits for %s of processes %s", msg.p_uid,
                  "all" if w.join_all else "any", list(w.p_uids))
        self._park(w, timeout)

    def _check_join(self, w):
        """Answer the join if it is satisfied; return True if answered.
        A join that names no known process is answered at once."""
        if not w.p_uids:
            done = True
        elif w.join_all:
            done = w.n_exited == len(w.p_uids) or (w.bad_exit and w.any_bad)
        else:
            done = w.n_exited > 0
        if done:
            self._answer_join(w, timed_out=False)
        return done

    def _answer_join(self, w, timed_out):
        self._finish_waiter(w)
        exited = []
        status = {}
        for p in w.p_uids:
            rec = self.procs[p]
            if rec.state == EXITED:
                exited.append([p, rec.exit_code])
                rec.joined = True
            status[p] = [rec.shown_state, rec.exit_code]
        for ident in w.unknown:
            status[ident] = ["unknown", None]
        self.route_reply(self.node, w.r, m.reply_ok(w.tag, [exited or None, status]))

    def _unlink_proc_join(self, w):
        for p in w.p_uids:
            rec = self.procs.get(p)
            if rec is not None:
                rec.waiters.discard(w)

    def _dump_processes(self):
        return [{"p_uid": p.p_uid, "name": p.name or None, "state": p.shown_state, "node": p.node,
                 "os_pid": p.os_pid, "exit_code": p.exit_code, "joined": p.joined,
                 "attached": p.attached, "creator": p.creator, "exe": p.exe, "label": p.label,
                 "core_dumped": (p.exit_info or {}).get("core_dumped") is True,
                 "oom_killed": (p.exit_info or {}).get("oom_killed"),
                 "refs": dict(p.refs), "reply_channels": len(p.replies)}
                for p in self.procs.values() if not p.spare]
