"""``ember.ProcessGroup``: start N processes of a target and manage them as
one, with a failure policy.

Policies (what happens when a member fails: an exception, a non-zero exit,
or death by a signal):

``"fail_fast"``
    every other member is killed (SIGKILL) at once and :meth:`join`
    raises the first failure's exception;
``"restart"``
    the member is started again (same target and arguments), after a
    backoff of ``backoff * 2**k`` seconds (at most ``max_backoff``) for its
    k-th restart, up to ``max_restarts`` times; a member that fails once
    more keeps its failure (:meth:`join` does not raise, :meth:`results`
    does);
``"ignore"``
    failures are collected; the others run on.

Each member finds its index in the group in ``EMBER_GROUP_INDEX``.
"""
import time

from .process import Process, _readable

__all__ = ["ProcessGroup", "POLICIES"]

POLICIES = ("fail_fast", "restart", "ignore")
_SLICE = 0.05


class _Member:
    __slots__ = ("index", "spec", "proc", "restarts", "restart_at", "done")

    def __init__(self, index, spec):
        self.index = index
        self.spec = spec
        self.proc = None
        self.restarts = 0
        self.restart_at = None
        self.done = False


def _live_nodes():
    """The runtime's live nodes, in order (GS's dump)."""
    from .. import messages as m
    from ..globalservices._client import call
    d = call(m.ServiceDump)
    nodes = d.get("nodes") or {"0": {"alive": True}}
    return sorted(int(n) for n, i in nodes.items() if i.get("alive"))


class ProcessGroup:
    """N managed Python processes with a failure policy.

    ``placement="all"``: each ``add(n, ...)`` puts ``n`` members on every
    live node of the runtime (one per node with ``n=1``).

    >>> g = ember.ProcessGroup(policy="fail_fast")
    >>> g.add(4, work, args=(x,))
    >>> g.start(); g.join(); g.results()

    Parameters
    ----------
    policy : {"fail_fast", "restart", "ignore"}
        What a member's failure does (see the module's documentation,
        ``ember.objects.group``, and docs/python-processes.md).
    max_restarts : int
        Under ``"restart"``, how many times a member is started again.
    backoff, max_backoff : float
        Seconds before the k-th restart: ``backoff * 2**k``, at most
        ``max_backoff``.

    Raises
    ------
    ValueError
        An unknown ``policy``, or ``max_restarts`` not an int >= 0.
    """

    def __init__(self, policy="fail_fast", max_restarts=3, *, backoff=0.1, max_backoff=5.0,
                 placement=None):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if placement not in (None, "all"):
            raise ValueError(f"placement must be None or 'all', got {placement!r}")
        # "all": every add(n, ...) puts n members on every live node
        # (docs/multinode.md); None: members run on this process's node.
        self.placement = placement
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        self.policy = policy
        self.max_restarts = max_restarts
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._members = []
        self._started = False
        self._failure = None          # the first failing member (fail_fast)

    def add(self, n, target, args=(), kwargs=None, *, name=None, env=None, cwd=None,
            daemon=None, start_method=None, node=None):
        """Add ``n`` members running ``target(*args, **kwargs)``.  With
        ``name``, member i of this call is named ``f"{name}-{i}"`` (GS
        names).  ``node`` (a node index or ``"any"``) places them, as for
        :class:`ember.Process`; it cannot be combined with
        ``placement="all"``.  Other keywords as for :class:`ember.Process`.

        Raises
        ------
        ValueError
            ``n`` is not an int >= 1, or ``node`` is given with
            ``placement="all"``.
        TypeError
            ``target`` is not callable.
        RuntimeError
            The group was already started.
        """
        if self._started:
            raise RuntimeError("cannot add members to a started group")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if not callable(target):
            raise TypeError(f"target must be callable, not {type(target).__name__}")
        if node is not None and self.placement == "all":
            raise ValueError("node= cannot be combined with placement='all' "
                             "(which puts members on every node)")
        nodes = _live_nodes() if self.placement == "all" else [node]
        i = 0
        for node in nodes:
            for _ in range(n):
                spec = dict(target=target, args=tuple(args), kwargs=dict(kwargs or {}),
                            name=None if name is None else f"{name}-{i}", env=dict(env or {}),
                            cwd=cwd, daemon=daemon, start_method=start_method, node=node)
                self._members.append(_Member(len(self._members), spec))
                i += 1
        return self

    def __len__(self):
        return len(self._members)

    # ------------------------------------------------------------------
    def _launch(self, m):
        spec = dict(m.spec)
        spec["env"] = dict(spec["env"], EMBER_GROUP_INDEX=str(m.index))
        if m.proc is not None:
            m.proc.close()
        m.proc = Process(**spec)
        m.proc.start()

    def start(self):
        """Start every member."""
        if self._started:
            raise RuntimeError("the group was already started")
        if not self._members:
            raise RuntimeError("the group has no members; add() some first")
        self._started = True
        try:
            for m in self._members:
                self._launch(m)
        except BaseException:
            self.kill()
            raise

    @property
    def processes(self):
        """The members' current :class:`ember.Process` objects, in order."""
        return [m.proc for m in self._members]

    @property
    def restarts(self):
        """How many times each member was restarted."""
        return [m.restarts for m in self._members]

    def kill(self):
        """SIGKILL every live member (and cancel pending restarts)."""
        for m in self._members:
            m.restart_at = None
            p = m.proc
            if p is not None and p._exitcode is None and not p._closed:
                try:
                    p.kill()
                except Exception:
                    pass

    # ------------------------------------------------------------------
    def _on_end(self, m):
        """A member's process has ended (and was joined)."""
        if m.proc.exitcode == 0:
            m.done = True
            return
        if self.policy == "restart" and m.restarts < self.max_restarts:
            delay = min(self.max_backoff, self.backoff * (2 ** m.restarts))
            m.restart_at = time.monotonic() + delay
            return
        m.done = True
        if self.policy == "fail_fast" and self._failure is None:
            self._failure = m
            self.kill()

    def join(self, timeout=None):
        """Wait until every member has finished (restarts included).
        Returns True when all are done, False on timeout.  Under
        ``fail_fast`` raises the first failure's exception (the others
        killed).

        Raises
        ------
        Exception
            Under ``"fail_fast"``: the first failed member's exception (its
            target's own, or :class:`ember.ProcessDied`).
        RuntimeError
            The group was not started.
        """
        if not self._started:
            raise RuntimeError("can only join a started group")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pending = [m for m in self._members if not m.done]
            if not pending:
                break
            now = time.monotonic()
            for m in pending:
                if m.restart_at is not None and now >= m.restart_at and self._failure is None:
                    m.restart_at = None
                    m.restarts += 1
                    self._launch(m)
            running = [m for m in pending if m.restart_at is None and not m.done]
            for m in running:
                p = m.proc
                p._reader.pump(0)           # keep big results flowing
                if p._ended(0):
                    p.join()
                    self._on_end(m)
            if all(m.done for m in self._members):
                break
            if deadline is not None and time.monotonic() >= deadline:
                return self._raise_or(False)
            waits = [m.restart_at - now for m in pending if m.restart_at is not None]
            slice_ = min([_SLICE] + [max(0.0, w) for w in waits])
            if deadline is not None:
                slice_ = min(slice_, max(0.0, deadline - time.monotonic()))
            fds = [m.proc._res.fd for m in self._members
                   if not m.done and m.restart_at is None and m.proc._exitcode is None]
            if fds:
                _readable(fds, slice_)
            else:
                time.sleep(slice_)
        return self._raise_or(True)

    def _raise_or(self, value):
        if self._failure is not None and self.policy == "fail_fast":
            raise self._failure.proc.exception
        return value

    def exceptions(self):
        """Per member: the exception it ended with (after restarts), or None."""
        return [None if m.proc is None or not m.done else m.proc.exception
                for m in self._members]

    def results(self):
        """Per member, the return value; raises the first failed member's
        exception if any failed (see :meth:`exceptions` for all).

        Raises
        ------
        Exception
            The first failed member's exception (its target's own, or
            :class:`ember.ProcessDied`).
        RuntimeError
            Some member has not finished: :meth:`join` first.
        """
        if not all(m.done for m in self._members):
            raise RuntimeError("the group has not finished; join() it first")
        out = []
        for m in self._members:
            out.append(m.proc.result())
        return out

    def close(self):
        """Release the members' resources (they must have ended)."""
        for m in self._members:
            if m.proc is not None:
                m.proc.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        for m in self._members:
            if m.proc is not None and m.proc._desc is not None and not m.proc._closed:
                m.proc.join()
        self.close()
