"""GS part: the runtime's end, as an explicit state.

``Teardown`` (from the launcher only) moves the runtime through phases::

    TERM ──all exited, or grace over (SIGKILL the rest)──► KILL
    KILL ──all exited, or 2 s over──► destroy channels, waits, pools; ShShutdown ──► SHEPHERD
    SHEPHERD ──ShShutdownDone, or 3 s over──► DONE: reply {p_uid: exit code}, GS stops

Each phase arms one timer (the previous one is cancelled); every exit
(``_exited`` in :mod:`.processes`) calls :meth:`TeardownPart._teardown_step`
so a phase ends as soon as its condition holds.  Every cleanup step is
independent of the others' failure (``_step``).

Uses from the other parts: ``procs``/``_exited``/``_proc_label``
(:mod:`.processes`), ``chans``/``pools``/``_destroy_channel``/
``_destroy_pool`` (:mod:`.memory`), ``owned_waiters``/``_finish_waiter``/
``_step`` (:mod:`.registry`), and ``send_shepherd``/``send_reply``/
``death_reports``/``err`` from the composition (:mod:`.server`).
"""
import itertools
import _signal as signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)
import sys

from .. import messages as m
from ..exceptions import EmberError
from .processes import EXITED, LAUNCHER_P_UID, RUNNING
from .registry import _timeout, log

#: Seconds the KILL phase waits for SIGKILLed processes to be reported.
KILL_WAIT = 2.0
#: Seconds the SHEPHERD phase waits for ShShutdownDone.
SHEPHERD_WAIT = 3.0
DEFAULT_GRACE = 5.0


class Phase:
    """A teardown phase: ``Phase.TERM``, ``KILL``, ``SHEPHERD`` or ``DONE``
    (compared by identity; ``value`` names it).  Not an enum: enum's import
    is ~1 ms of every start."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"Phase.{self.value.upper()}"


Phase.TERM = Phase("term")          # SIGTERM sent to every live process; waiting up to the grace
Phase.KILL = Phase("kill")          # SIGKILL sent to the rest; waiting for their exits
Phase.SHEPHERD = Phase("shepherd")  # everything destroyed; waiting for the shepherd to stop
Phase.DONE = Phase("done")          # replied; GS's loop ends


class Teardown:
    """The teardown in progress: who asked (``tag``, ``r``), the phase,
    and the phase's timer."""

    __slots__ = ("tag", "r", "phase", "timer", "shepherds")

    def __init__(self, tag, r):
        self.tag, self.r = tag, r
        self.shepherds = set()    # nodes whose shepherd has not confirmed its shutdown
        self.phase = Phase.TERM
        self.timer = None

    @property
    def done(self):
        return self.phase is Phase.DONE


class TeardownPart:
    """``teardown`` (a :class:`Teardown` while tearing down, else None)
    and ``finished`` (True once it is done)."""

    REQUESTS = ((m.Teardown, "on_teardown"),)
    NOTICES = ((m.ShShutdownDone, "on_sh_shutdown_done"),)

    def _init_teardown(self):
        self.teardown = None      # the teardown state while tearing down
        self.finished = False     # True once teardown has completed

    def _enter(self, phase, wait):
        """Move to ``phase``; its timer fires after ``wait`` seconds."""
        t = self.teardown
        t.phase = phase
        if t.timer is not None:
            t.timer.cancel()
        t.timer = None if wait is None else self.call_later(wait, self._teardown_step, True)
        log.debug("teardown: %s", phase.value)

    def on_teardown(self, msg):
        """Launcher asks to end the runtime: SIGTERM every live process, SIGKILL
        after ``grace`` seconds, destroy every channel and pool, stop the
        shepherd, then reply."""
        if msg.p_uid != LAUNCHER_P_UID:
            raise EmberError(f"Teardown is accepted from the launcher only, not from process {msg.p_uid}")
        if self.teardown is not None:
            return
        # The shepherd's reports first (read_reports, as a query does): a
        # plain exit is reported without a poke, and the head's last
        # join() is the kernel's, so an exit the head has joined may still
        # be unread here: the survivors' line named it as running, and it
        # was sent a SIGTERM it no longer needed.
        self.read_reports()
        try:
            grace = _timeout(msg.grace, EmberError)
        except EmberError:
            grace = None
        grace = DEFAULT_GRACE if grace is None else grace
        if msg.survivors is True and self.death_reports:
            self._step("reporting the processes still running", self._report_survivors)
        for p in [p for p in self.procs.values() if p.attached and p.state != EXITED]:
            # not ours to kill: the runtime ends under it
            self.to_node(p.node, m.ShUnwatch(p.p_uid))
            self._exited(p, m.EXIT_UNKNOWN)
        self.teardown = Teardown(msg.tag, msg.r)
        for p in self.procs.values():
            if p.state != EXITED and (p.state == RUNNING or p.os_pid is not None):
                # an unclaimed spare (ember.Process) runs no user code: no grace
                sig = signal.SIGKILL if p.spare else signal.SIGTERM
                self.to_node(p.node, m.ShKill(p.p_uid, sig))
        self._enter(Phase.TERM, grace)
        self._step("reporting unjoined exits", self._report_unjoined)
        self._teardown_step()

    def _report_survivors(self):
        """The head has exited (the launcher's ``Teardown(survivors=True)``):
        one line naming the processes the teardown is about to terminate."""
        live = sorted((p.p_uid, p.name, p.label) for p in self.procs.values()
                      if p.state != EXITED and not p.spare)
        if not live:
            return
        # each by its name, else its label (what `ember ps` shows), else its p_uid alone
        what = ", ".join(f"{u} {n!r}" if n else f"{u} {lab}" if lab else str(u)
                         for u, n, lab in live)
        noun = "process" if len(live) == 1 else "processes"
        err = self.err if self.err is not None else sys.stderr
        err.write(f"ember: head exited; terminating {len(live)} running {noun}: {what}\n")
        err.flush()

    def _report_unjoined(self):
        """Death reports at teardown: one line for each process that exited
        with a non-zero code (not by a signal: the shepherd reports those)
        and whose exit no join ever reported (not an os.fork() child's, nor
        an attached process's that did not detach with its code: not the
        shepherd's child, its code is ``EXIT_UNKNOWN``, whatever it exited
        with)."""
        self.warn.flush()
        if not self.death_reports:
            return
        err = self.err if self.err is not None else sys.stderr
        for p in self.procs.values():
            if p.state == EXITED and p.exit_code and p.exit_code > 0 and not p.joined and \
                    not p.forked and not (p.attached and p.exit_code == m.EXIT_UNKNOWN):
                # (a code unknown: not the shepherd's child)
                err.write(f"ember: {self._proc_label(p)} exited with code {p.exit_code} "
                          f"and was never joined\n")
        err.flush()

    def _teardown_step(self, timed_out=False):
        """Advance the teardown as far as it can go now (``timed_out``: the
        current phase's timer fired)."""
        t = self.teardown
        if t is None or t.done:
            return
        live = [p for p in self.procs.values() if p.state != EXITED]
        if t.phase is Phase.TERM:
            if live and not timed_out:
                return
            if live:
                for p in live:
                    self.to_node(p.node, m.ShKill(p.p_uid, signal.SIGKILL))
                self._enter(Phase.KILL, KILL_WAIT)
                return
            t.phase = Phase.KILL
        if t.phase is Phase.KILL:
            if live and not timed_out:
                return
            self._destroy_everything()
            # every live node's shepherd stops; this node's last (its
            # answer, or every answer, ends the teardown)
            nodes = getattr(self, "nodes", None) or {self.node: None}
            t.shepherds = {n for n in nodes
                           if n == self.node or (nodes[n] and nodes[n]["alive"])}
            for n in sorted(t.shepherds, key=lambda n: n == self.node):
                self.to_node(n, m.ShShutdown(t.tag))
            self._enter(Phase.SHEPHERD, SHEPHERD_WAIT)
            return
        if t.phase is Phase.SHEPHERD and timed_out:
            log.error("shepherd did not confirm shutdown in time")
            self._teardown_done()

    def _destroy_everything(self):
        for rec in list(self.chans.values()):
            self._step(f"destroying channel {rec.c_uid}", self._destroy_channel, rec)
        for w in list(itertools.chain.from_iterable(self.owned_waiters.values())):
            self._step("forgetting a wait", self._finish_waiter, w)
        for rec in list(self.pools.values()):
            if rec.default:
                continue   # the launcher made it and destroys it
            self._step(f"destroying pool {rec.m_uid}", self._destroy_pool, rec)

    def on_sh_shutdown_done(self, msg):
        """A shepherd stopped.  ``ShShutdownDone`` carries no node: the
        teardown ends when as many answers came as shepherds were asked
        (a lost node counts as answered)."""
        t = self.teardown
        if t is not None and t.phase is Phase.SHEPHERD:
            if t.shepherds:
                t.shepherds.pop()
            if not t.shepherds:
                self._teardown_done()

    def _teardown_node_lost(self, node):
        t = self.teardown
        if t is None or t.done:
            return
        if t.phase is Phase.SHEPHERD:
            t.shepherds.discard(node)
            if not t.shepherds:
                self._teardown_done()
        else:
            self._teardown_step()

    def _teardown_done(self):
        t = self.teardown
        self._enter(Phase.DONE, None)
        self.finished = True
        exits = {p.p_uid: p.exit_code for p in self.procs.values()}
        if t.r:
            self.route_reply(self.node, t.r, m.reply_ok(t.tag, exits))

    def _dump_teardown(self):
        t = self.teardown
        return None if t is None else t.phase.value
