"""Process services: create, list, query, kill and join managed processes.

Every call is thread safe.  Identifiers: an ``int`` is a p_uid, a ``str`` a
user name.  Errors raise :class:`ember.exceptions.ProcessError`; every call
made outside a runtime raises :class:`ember.GlobalServicesError` ("not
running inside an ember runtime: call ember.init() first ...").
"""
import os
import _signal  # the C module: signal's enums import enum (~1.5 ms of every `ember run`)

from .. import messages as _m
from ..descriptors import ProcessDescriptor, ProcessOptions, ProcessStatus
from ..exceptions import ProcessError
from ._client import call as _call, connection as _connection

__all__ = ["create", "get_list", "query", "kill", "join", "multi_join", "this_process",
           "ProcessDescriptor", "ProcessOptions", "ProcessStatus", "ProcessError"]


def _ident(identifier):
    if isinstance(identifier, bool) or not isinstance(identifier, (int, str)):
        raise ProcessError(f"process identifier must be an int p_uid or a str name, "
                           f"not {type(identifier).__name__}")
    return identifier


def create(exe, run_dir, args, env=None, user_name="", options=None, soft=False):
    """Start ``exe`` with ``args`` in ``run_dir`` (``''``/None: the caller's
    current directory) as a managed process; return its
    :class:`ProcessDescriptor` once the OS process has started.

    ``env`` adds to / overrides the runtime's environment (a value None
    removes that variable of the runtime's).  With
    ``soft=True`` and a ``user_name`` that names a live process, that
    process's descriptor is returned instead.  A start failure (missing
    file, not executable, bad run_dir) raises ProcessError with the OS
    reason.

    Raises
    ------
    ember.ProcessError
        A bad argument (``exe`` not a path, ``args`` not a list of str,
        ``env`` not str to str or None, an unknown option), a ``user_name`` taken by
        a live process (without ``soft``), or a start failure.
    ember.GlobalServicesError
        Not inside a runtime.
    """
    if not isinstance(exe, (str, os.PathLike)):
        raise ProcessError(f"exe must be a str path, not {type(exe).__name__}")
    if isinstance(args, (str, bytes)) or args is None:
        raise ProcessError("args must be a list of str (not a single string)")
    args = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in args]
    if not all(isinstance(a, str) for a in args):
        raise ProcessError("args must be a list of str")
    env = dict(env or {})
    if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in env.items()):
        raise ProcessError("env must map str to str (or None: removed)")
    run_dir = os.fspath(run_dir) if run_dir else os.getcwd()
    opts = ProcessOptions.coerce(options, "options")
    if user_name is None:
        user_name = ""
    if not isinstance(user_name, str):
        raise ProcessError(f"user_name must be a str, not {type(user_name).__name__}")
    d = _call(_m.ProcessCreate, os.fspath(exe), args, env, run_dir, user_name,
              opts.to_dict(), bool(soft))
    return ProcessDescriptor.from_dict(d)


def get_list(alive_only=False):
    """``[(p_uid, name or None), ...]`` of every process GS knows, in
    creation order: live ones and exited ones (which :func:`query` still
    answers for), as the reference runtime does.  ``alive_only=True``
    lists only the processes that have not exited."""
    return [(p, n) for p, n, alive in _call(_m.ProcessList) if alive or not alive_only]


def query(identifier):
    """The :class:`ProcessDescriptor` of a process (live or exited).

    Raises
    ------
    ember.ProcessError
        ``identifier`` is not an int or str, or names no process.
    """
    return ProcessDescriptor.from_dict(_call(_m.ProcessQuery, _ident(identifier)))


def kill(identifier, sig=_signal.SIGKILL):
    """Send signal ``sig`` to a live process.

    Raises
    ------
    ember.ProcessError
        ``identifier`` names no process, or one that has already exited.
    """
    return _call(_m.ProcessKill, _ident(identifier), int(sig))


def _timeout(timeout):
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ProcessError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout < 0:
        raise ProcessError(f"timeout must be >= 0, got {timeout}")
    return float(timeout)


def multi_join(identifiers, timeout=None, join_all=False, return_on_bad_exit=False):
    """Wait for any (or, with ``join_all``, every) of the processes to exit.

    Returns ``(exited, status)``: ``exited`` is ``[(p_uid, exit_code), ...]``
    of the processes that have exited, or None if the timeout expired with
    none exited; ``status`` has an entry for every identifier: a known
    process's p_uid maps to its :class:`ProcessStatus`; an identifier that
    names no process (a name never used, a p_uid never given) maps, under
    that identifier itself, to ``ProcessStatus("unknown", None)`` and is
    not waited for.  If no identifier names a process, it returns at once.
    With ``join_all`` and ``return_on_bad_exit`` it returns as soon as one
    process exits with a non-zero code.  The timeout is kept by GS.  At
    most 4096 identifiers per call.

    Raises
    ------
    ember.ProcessError
        No identifier, an identifier that is not an int or str, a bad
        ``timeout``, joining the calling process itself.
    """
    idents = [_ident(i) for i in identifiers]
    if not idents:
        raise ProcessError("multi_join needs at least one process identifier")
    exited, status = _call(_m.ProcessJoin, idents, _timeout(timeout), bool(join_all),
                           bool(return_on_bad_exit))
    if exited is not None:
        exited = [tuple(x) for x in exited]
    return exited, {k: ProcessStatus(*v) for k, v in status.items()}


def join(identifier, timeout=None):
    """Wait for a process to exit; its exit code (-N if killed by signal N),
    or None if ``timeout`` seconds passed first (measured by GS).

    Raises
    ------
    ember.ProcessError
        ``identifier`` names no process, is the calling process, or
        ``timeout`` is not a number >= 0.
    """
    exited, status = multi_join([identifier], timeout=timeout)
    if status.get(identifier, (None,))[0] == "unknown":
        if isinstance(identifier, str):
            raise ProcessError(f"no process named {identifier!r}")
        raise ProcessError(f"no process with p_uid {identifier}")
    return exited[0][1] if exited else None


def this_process():
    """This process's p_uid (from ``EMBER_P_UID``)."""
    return _connection().p_uid
