"""Entry point of a Python process started by ``ember.Process``.

    python -m ember._worker [--template] [--preload=m1,m2] [--flags=F] [--spare=TOKEN] CALL RESULT

``CALL`` and ``RESULT`` are base64 channel descriptors.  The parent has
already sent the whole call record (target, args, kwargs; see
``ember.objects._pickling``) on CALL before starting this process; the
outcome goes back on RESULT as one record: the return value, the exception
(with its formatted traceback), or, if that cannot be pickled, a
``RemoteError`` record.  Exit code: 0 after a return, 1 after an exception,
the code of ``SystemExit`` if the target exits.

``--template`` and ``--preload`` are read by the shepherd's warm template
(``ember.shepherd.template``), which forks this process and calls
:func:`main` in the fork; started as a fresh interpreter they are ignored.
``--flags=F``: the parent's interpreter options (:func:`interpreter_flags`:
their key, then the options); a template child whose template's key is
another execs a fresh interpreter with them (:func:`fresh_argv`), as spawn
runs its child.

``--spare=TOKEN``: a *spare* that ``ember.Process`` leased ahead of its
next start (docs/python-processes.md, "How a start works").  The call is
not there yet: the worker waits for it, then applies what the call record
brings besides ``sys.path`` (environment changes, a working directory) and
checks that it carries ``TOKEN``; anything else on the call channel (its
creator died and the channel's memory was reclaimed) makes it exit at once,
silently, without touching the result channel.  A spare of the warm
template is set up in C as far as that wait (the template's
``_spawn.spare_wait``, then :func:`lease`: no Python of this module's runs
before its call comes, but the call of :func:`lease` itself).
"""
import os
import select
import sys

from . import _env, _outboard, _trace

_mods = None


def fd_ready(fd, timeout=0.0, events=select.POLLIN):
    """Whether ``fd`` (or an object's fileno()) is ready for ``events``
    within ``timeout`` seconds (None: as long as it takes); a pidfd is
    readable once its process has exited.  poll, never select: a shepherd
    with some 340 children has fds above select's limit (FD_SETSIZE, 1024:
    ValueError).  (The shepherd's and the template's; here, not in
    ``ember.shepherd.server``, so that the template need not import the
    shepherd's server.)"""
    p = select.poll()
    p.register(fd, events)
    return bool(p.poll(None if timeout is None else timeout * 1000.0))

_attach_in = _recv_record = _magic = None      # (:func:`lease`'s, bound by _imports)
# (a call's check, bound by _imports: read as globals, the modules, their
# dicts and the names' strings, pages of the template's, are not written)
_Record = _KIND_CALL = _ploads = None


def _imports():
    """(Channel, _codec, _pickling, pickle), imported once.  The template
    calls this before it forks: an import statement in a function runs the
    import machinery even for a module loaded already (the module's
    ``__spec__`` looked up, and for ``from PACKAGE import ...`` importlib's
    Python code, ``_handle_fromlist``): page faults of copy-on-write in
    every child.  (Not imported at this module's top: the shepherd imports
    it, and a .py head, forked from the shepherd, must not have pickle.)"""
    global _mods, _attach_in, _recv_record, _magic, _Record, _KIND_CALL, _ploads
    if _mods is None:
        import pickle

        from .channels_c import Channel
        from .channels_c._channels import _attach_in, _recv_record
        from .objects import _codec, _pickling
        _mods = (Channel, _codec, _pickling, pickle)
        _magic = _pickling._MAGIC
        _Record, _KIND_CALL, _ploads = _pickling.Record, _pickling.KIND_CALL, pickle.loads
    return _mods


def _format_tb(exc, skip_code):
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code is skip_code:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _type_name(exc):
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _what(target):
    return getattr(target, "__qualname__", None) or repr(target)


def _send_exception(res, exc, tb_text, prefix=b""):
    import pickle

    from .objects import _codec, _pickling as P

    try:
        data = _codec.pickle_bytes(exc)
        pickle.loads(data)           # it must also come back to life
    except BaseException as perr:
        detail = f"{type(perr).__name__}: {perr}"
        tb_text += (f"\n(the exception could not be sent back as itself: {detail})\n")
        data = pickle.dumps((_type_name(exc), str(exc), tb_text), 5)
        P.send_record(res, P.KIND_REMOTE_ERR, data, extra=prefix)
        return
    P.send_record(res, P.KIND_ERR, data, extra=prefix + tb_text.encode("utf-8", "replace"))


#: Name (``/proc/PID/comm``) of a leased spare while it waits for its call.
LEASED_COMM = b"ember-leased"
#: A ``--preload=`` item (after its ``?``) naming the program template an
#: ``"ember"``-method start is for: ``@program:`` and the ``run_key`` of its
#: main module's entry (ember.mp._mainload).  Imports nothing; it routes the
#: start to that program's spares (ember.shepherd.template) and keeps its
#: leases apart from a plain ``ember.Process``'s (their argv differs).
PROGRAM_PREFIX = "@program:"


#: A lease started in a fresh interpreter (:func:`main`): its own comm, taken
#: back once its call has come (it is named LEASED_COMM until then).
_fresh_comm = None


def _name(comm=None):
    """Set this process's comm to ``comm`` (None: the template's, which a
    child has while it runs, or a fresh lease's own); nothing if not
    forked from the template nor a fresh lease."""
    tmpl = sys.modules.get("ember.shepherd.template")
    if tmpl is not None and tmpl._template_comm:
        tmpl._comm(comm or tmpl._template_comm)
    elif _fresh_comm is not None:
        _outboard._ext().spare_name(comm or _fresh_comm)


def _wait_call(call, token):
    """A spare's wait for its call record; the record, or None (and the
    caller exits silently) if what came is not a call carrying ``token``."""
    _imports()
    try:
        if _trace.on:           # (a label's call and string: pages a child writes)
            _trace.t_faults("L.faults_wait")
            _trace.t("L.ready")
            _trace.t_faults("L.faults_ready")
        got = _recv_record(call, _magic)
        _name()
    except Exception:
        return None
    if got is None:
        return None
    rec = _Record(*got)
    extra = _check_call(rec, token)
    return None if extra is None else (rec, extra)


def _check_call(rec, token):
    """The extra tuple of ``rec`` if it is a call carrying ``token``, else
    None."""
    try:
        if rec.kind != _KIND_CALL:
            return None
        extra = _ploads(rec.extra)
        if not isinstance(extra, tuple) or len(extra) != 6 or extra[4] != token:
            return None
    except Exception:
        return None
    return extra


def _apply(setenv, unsetenv, cwd):
    """A spare's start: the environment (a value None: removed) and
    directory its call asks for."""
    if cwd:
        os.chdir(cwd)
    for k in unsetenv or ():
        os.environ.pop(k, None)
    for k, v in (setenv or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run(call_sdesc, result_sdesc, spare=None):
    """Run the call found on the CALL channel; return the exit code.  With
    ``spare`` (its token), wait for the call first (see the module's doc)."""
    Channel, _codec, P, pickle = _imports()
    call = Channel.attach(call_sdesc)
    res = Channel.attach(result_sdesc)
    try:
        # (the record by _recv_record: its data's block ours from its receipt)
        if spare is not None:
            got = _wait_call(call, spare)
            if got is None:
                os._exit(0)               # not a call of its creator: leave no trace
            return _run_call(call, res, *got)
        try:
            got = _recv_record(call, _magic) if call.poll(0) else None
        except Exception:
            got = None
        if got is None or got[0] != P.KIND_CALL:
            print("ember worker: no call record on the call channel", file=sys.stderr)
            return 70
        rec = P.Record(*got)
        del got
        return _run_call(call, res, rec, pickle.loads(rec.extra))
    finally:
        if not call.closed:
            call.detach()
        res.detach()


def lease(call_sdesc, result_sdesc, token, pool, rename=None):
    """A lease's run (``--spare=TOKEN``) once the template has set it up in
    C (ember.shepherd.template, ``_spawn.spare_wait``): attach its two
    channels in ``pool`` (the runtime's default pool, which the template
    holds) and wait for its call record, in C too (``_channels._attach_in``,
    ``_recv_record``: the Python of :func:`run` up to there wrote ~60 pages
    the lease shares with the template), then rename it (``rename``:
    ``(function, name)``, the template's name back) and run the call as
    :func:`run` does.  Channels of another pool: :func:`run`."""
    call = _attach_in(pool, call_sdesc) if pool is not None else None
    res = _attach_in(pool, result_sdesc) if call is not None else None
    if res is None:
        if call is not None:
            call.detach()
        return run(call_sdesc, result_sdesc, token)
    try:
        if _trace.on:
            _trace.t_faults("L.faults_wait")
            _trace.t("L.ready")
            _trace.t_faults("L.faults_ready")
        try:
            got = _recv_record(call, _magic)
        except Exception:
            got = None
        extra = None
        if got is not None:
            if rename is not None:
                rename[0](rename[1])
            rec = _Record(*got)
            got = None
            extra = _check_call(rec, token)
        if extra is None:
            os._exit(0)                   # not a call of its creator: leave no trace
        return _run_call(call, res, rec, extra)
    finally:
        if not call.closed:
            call.detach()
        res.detach()


def _run_call(call, res, rec, extra, traced=True):
    """Run the call of the record ``rec`` that came on ``call`` (detached
    here; the record's data taken from it), with its ``extra``: ``(path,
    setenv, unsetenv, cwd, token, state)`` (applied: a spare's
    environment and directory, and the parent's process state, the umask,
    nice value, CPU affinity and resource limits, where it differs:
    ``_spawn.proc_state_apply``), or ``sys.path`` alone (another node's
    start); send the outcome on ``res``; return the exit code.
    ``traced``: its trace points recorded (not in :func:`rehearse`)."""
    _codec, P, pickle = _imports()[1:]
    traced = traced and _trace.on
    if traced:
        _trace.t("C.call")
        _trace.t_faults("C.faults_call")
    data, rec.data = rec.data, None
    call.detach()
    if type(extra) is tuple:
        path, setenv, unsetenv, cwd, _, state = extra
        sys.path[:] = path
        try:
            _apply(setenv, unsetenv, cwd)
            if state is not None:
                _state_apply(state)
        except BaseException as exc:
            _send_exception(res, exc, _format_tb(exc, _run_call.__code__))
            return 1
    else:
        sys.path[:] = extra
    try:
        target, args, kwargs = _codec.loads(data)
    except BaseException as exc:
        _send_exception(res, exc, _format_tb(exc, _run_call.__code__))
        return 1
    del data
    if traced:
        _trace.t("C.target")
        _trace.t_faults("C.faults_target")
    me = os.getpid()
    try:
        result = None if target is None else target(*args, **kwargs)
    except BaseException as exc:
        if os.getpid() != me:
            _fork_end(exc)
        if not isinstance(exc, SystemExit):
            _send_exception(res, exc, _format_tb(exc, _run_call.__code__))
            return 1
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    if os.getpid() != me:
        _fork_end(None)
    del args, kwargs
    try:
        msg = _codec.dumps(result, res.pool)
    except BaseException as exc:
        data = pickle.dumps((_type_name(exc),
                             f"cannot pickle the result of {_what(target)}() "
                             f"(a {type(result).__name__}): {exc}",
                             _format_tb(exc, _run_call.__code__)), 5)
        P.send_record(res, P.KIND_REMOTE_ERR, data)
        return 1
    del result
    P.send_record(res, P.KIND_OK, msg)
    return 0


def _fork_end(exc):
    """In a fork the target made (``os.fork()``) that returned from it
    (``exc`` None) or raised ``exc``: end here, as a multiprocessing
    fork's child does, its output flushed, its code as a process's
    (SystemExit's, 1 with the traceback printed after an exception).
    It is no Process: it sends nothing, nor runs the child's exit
    (atexit, the output board, the exit holder).  The child's result
    channel is its parent's to destroy once the child has exited
    (``_destroy_last``): a send from here could write into a freed
    block."""
    code = 0
    try:
        if isinstance(exc, SystemExit):
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        elif exc is not None:
            code = 1
            import traceback
            traceback.print_exception(exc)
        for f in (sys.stdout, sys.stderr):
            f.flush()
    finally:
        os._exit(code)


def _rehearsal():
    """:func:`rehearse`'s call while cloudpickle is not imported."""


def rehearse(pool):
    """The warm template's rehearsal of a call, once it has cleared the
    type attribute cache (template._freeze): a call of a function shipped
    by value (as a ``__main__`` function is) once the template has
    cloudpickle (a preload), else of one pickled by reference (as the
    ``"ember"`` method's child code is: shipping one by value would import
    cloudpickle here), run by :func:`_run_call` on
    two channels of ``pool`` made for it, then destroyed.  What the call's
    path looks up is then in the cache, and each child's same look-up a
    hit: a miss writes a cache entry, on a page of libpython's data the
    child shares with the template, after its call (docs/python-processes.md,
    "Seventh pass").  Nothing of it outlives the call (its function's
    cycle with its globals is broken); an error is left unsaid (it only
    costs the children those pages)."""
    Channel, _codec, P, pickle = _imports()
    here = {"__name__": "__main__"}
    made, attached = [], []
    try:
        if "cloudpickle" in sys.modules:
            exec("def rehearsal():\n    return None\n", here)
        else:
            here["rehearsal"] = _rehearsal
        for _ in range(2):
            made.append(Channel.create(pool, capacity=2, block_size=1024, owned=True))
            attached.append(Channel.attach(made[-1].sdesc))
        extra = (list(sys.path), None, None, None, "", None)
        rec = P.Record(P.KIND_CALL, pickle.dumps(extra),
                       _codec.dumps((here["rehearsal"], (), {}), pool))
        _run_call(*attached, rec, _check_call(rec, ""), False)
    except Exception:
        pass
    finally:
        try:
            for c in attached:
                if not c.closed:
                    c.detach()
            for c in made:
                c.destroy()
        except Exception:
            pass
        here.clear()


def _state_apply(state):
    """The parent's process state (``_spawn.proc_state``) made this
    process's where it differs (``_spawn.proc_state_apply``)."""
    _outboard._ext().proc_state_apply(state)


#: What separates the interpreter options in ``--flags=`` (none holds it).
FLAGS_SEP = "\x1f"
#: What ends the options' key in ``--flags=KEY<FLAGS_KEY_END>OPTIONS``.
FLAGS_KEY_END = "\x1e"
#: The ``sys.flags`` fields spawn's options come from (subprocess.
#: _args_from_interpreter_flags), besides ``-W`` and ``-X``.
_FLAG_FIELDS = ("debug", "dont_write_bytecode", "no_site", "verbose", "bytes_warning", "quiet",
                "optimize", "isolated", "ignore_environment", "no_user_site", "safe_path",
                "dev_mode")
#: The environment variables an interpreter reads at its start-up only, that
#: change what a child is or does (``PYTHONHASHSEED`` its hash secret and
#: ``sys.flags.hash_randomization``; ``PYTHONOPTIMIZE``, ``PYTHONDEVMODE``,
#: ``PYTHONWARNINGS``, ... their ``sys.flags`` and ``sys.warnoptions``;
#: ``PYTHONIOENCODING``, ``PYTHONUTF8``, ``PYTHONCOERCECLOCALE`` its stdio and
#: file system encodings; ``PYTHONMALLOC``, ``PYTHONFAULTHANDLER``,
#: ``PYTHONTRACEMALLOC``, ``PYTHONHOME``, ``PYTHONUSERBASE``,
#: ``PYTHONPYCACHEPREFIX``, ...), ignored under ``-E``: a child of the
#: template has the template's, where spawn's child has those of the
#: parent's environment at the start.  ``PYTHONPATH`` is not one: a child
#: takes its parent's ``sys.path`` whatever its start-up made of it.
STARTUP_VARS = ("PYTHONHASHSEED", "PYTHONOPTIMIZE", "PYTHONDEBUG", "PYTHONINSPECT",
                "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "PYTHONUSERBASE",
                "PYTHONUNBUFFERED", "PYTHONVERBOSE", "PYTHONWARNINGS", "PYTHONDEVMODE",
                "PYTHONUTF8", "PYTHONIOENCODING", "PYTHONCOERCECLOCALE", "PYTHONFAULTHANDLER",
                "PYTHONTRACEMALLOC", "PYTHONPROFILEIMPORTTIME", "PYTHONMALLOC",
                "PYTHONMALLOCSTATS", "PYTHONSAFEPATH", "PYTHONPYCACHEPREFIX", "PYTHONHOME",
                "PYTHONPLATLIBDIR", "PYTHONINTMAXSTRDIGITS", "PYTHONWARNDEFAULTENCODING",
                "PYTHONNODEBUGRANGES", "PYTHONPERFSUPPORT", "PYTHON_CPU_COUNT", "PYTHON_GIL",
                "PYTHON_FROZEN_MODULES", "PYTHON_PERF_JIT_SUPPORT", "PYTHON_JIT")
#: The locale's variables for the start-up's encodings (``LC_CTYPE``'s),
#: read under ``-E`` too.
LOCALE_VARS = ("LC_ALL", "LC_CTYPE", "LANG")
_flags_c = [None]


def startup_names(ignore_environment):
    """The variables of :data:`STARTUP_VARS` and :data:`LOCALE_VARS` an
    interpreter run with ``ignore_environment`` (``-E``, ``-I``) reads."""
    return LOCALE_VARS if ignore_environment else LOCALE_VARS + STARTUP_VARS


def startup_env(env):
    """The start-up variables (:func:`startup_names`, for this
    interpreter's ``-E``) that ``env`` (str to str; None: removed) sets,
    as ``(name, value)`` pairs, in that order: what a child started with
    ``env`` and this interpreter's options reads at its start-up."""
    get = env.get
    return tuple((k, v) for k in startup_names(sys.flags.ignore_environment)
                 if (v := get(k)) is not None)


def flags_key(env=()):
    """What this interpreter's options are made of (the ``sys.flags`` that
    spawn passes, ``sys.warnoptions``, ``sys._xoptions``) and the start-up
    variables ``env`` (:func:`startup_env`'s) of a child's environment,
    as text; "" for none.  Equal keys, equal options (an option spawn does
    not pass, an ``-X`` of another kind, makes keys differ: a fresh
    interpreter for nothing, never a wrong one).  Made without an import:
    the template's, at each freeze, compared by its children and its
    leases' C set-up (``subprocess``, which spawn's own function is in,
    would cost the template its modules and mappings); its start-up
    variables back by :func:`key_env`."""
    f = sys.flags
    vals = [getattr(f, n, 0) for n in _FLAG_FIELDS]
    xo = getattr(sys, "_xoptions", None) or {}
    if not any(vals) and not sys.warnoptions and not xo and not env:
        return ""
    return repr((vals, sys.warnoptions, sorted(xo.items()), list(env)))


def key_env(flags):
    """The start-up variables the key of an :func:`interpreter_flags` text
    covers (those its options read: :func:`startup_names`) and the
    ``(name, value)`` pairs of those it sets."""
    key = flags.partition(FLAGS_KEY_END)[0]
    if not key:
        return startup_names(False), []
    import ast

    vals, _, _, env = ast.literal_eval(key)
    return startup_names(vals[_FLAG_FIELDS.index("ignore_environment")]), env


def interpreter_flags(env=()):
    """This process's interpreter options as the worker's ``--flags=``
    carries them, for a child whose environment's start-up variables are
    ``env`` (:func:`startup_env`'s): their key (:func:`flags_key`), then
    after :data:`FLAGS_KEY_END` the options spawn gives its child
    (multiprocessing's ``util._args_from_interpreter_flags``), joined by
    :data:`FLAGS_SEP`; "" for none.  Made again only when
    ``sys.warnoptions``, ``sys._xoptions`` or ``env`` changed
    (``sys.flags`` cannot)."""
    c = _flags_c[0]
    xo = getattr(sys, "_xoptions", None)
    if c is None or c[0] != sys.warnoptions or c[1] != xo or c[3] != env:
        key = flags_key(env)
        text = ""
        if key:
            from subprocess import _args_from_interpreter_flags
            text = key + FLAGS_KEY_END + FLAGS_SEP.join(_args_from_interpreter_flags())
        c = _flags_c[0] = (list(sys.warnoptions), dict(xo or {}), text, env)
    return c[2]


def options_of(flags):
    """The interpreter options (a list) of an :func:`interpreter_flags` text."""
    opts = flags.partition(FLAGS_KEY_END)[2]
    return opts.split(FLAGS_SEP) if opts else []


#: The start-up variables that are ``-v`` and ``-X importtime`` (set to
#: any text but "": ``PYTHONVERBOSE=0`` is taken for one too, a fresh
#: interpreter as spawn's, never a wrong output).
PRINTING_VARS = ("PYTHONVERBOSE", "PYTHONPROFILEIMPORTTIME")


#: ``(flags, templated(flags))`` of the last text asked about.
_templated_c = [("", True)]


def templated(flags):
    """Whether a template is made with the interpreter options of a
    worker's ``--flags=`` text: not with ``-v`` nor ``-X importtime``, nor
    the key's start-up variables that are them (:data:`PRINTING_VARS`,
    set in the parent's environment), whose output at the interpreter's
    start-up would be the template's imports (on the runtime's stderr),
    not the child's; nor is a lease started ahead with them (its
    start-up's, a process nobody started).  Asked at every start (a
    lease's, in the parent; the shepherd's, for new options) of the same
    text, mostly: the last answer is kept, and a text equal to the last
    (the same object, from :func:`interpreter_flags`' cache) costs a
    comparison.  Else the options are read, and the key's variables, by
    ``ast.literal_eval``, if a printing one's name occurs in it (38-41 us,
    docs/python-processes.md; the comparison 0.08)."""
    c = _templated_c[0]                   # (one read: starts from several threads)
    if c[0] == flags:
        return c[1]
    opts = options_of(flags)
    made = not any(o[:2] == "-v" or (o == "-X" and opts[i + 1:i + 2]
                                     and opts[i + 1].partition("=")[0] == "importtime")
                   for i, o in enumerate(opts)) and \
        (not any(v in flags for v in PRINTING_VARS)
         or not any(k in PRINTING_VARS and v for k, v in key_env(flags)[1]))
    _templated_c[0] = (flags, made)
    return made


def flags_of(argv):
    """The ``--flags=`` text of the worker's ``argv`` ("" if none)."""
    for a in argv:
        if a[:8] == "--flags=":
            return a[8:]
    return ""


def fresh_argv(argv, flags):
    """The command line that runs the worker's ``argv`` in a fresh
    interpreter with the options of ``flags`` (:func:`interpreter_flags`'s
    text): what a template child whose parent's options are not the
    template's execs (``sys.flags`` cannot change after start-up)."""
    return ([sys.executable] + options_of(flags) + ["-m", "ember._worker"]
            + [a for a in argv if a != "--template" and a[:10] != "--preload="
               and a[:8] != "--flags="])


_USAGE = ("usage: python -m ember._worker [--template] [--preload=M,...] [--flags=F] "
          "[--spare=TOKEN] CALL RESULT")


def _scan(argv):
    """One pass over ``argv``: (template, the ``--preload=`` text or None,
    the first ``--spare=`` token or None, [CALL, RESULT]); SystemExit with
    the usage if there are not exactly two other arguments.  Slices, not
    ``str.startswith``: a template child runs this for the first time
    (:func:`main`), and each method looked up there wrote pages it shares
    with the template (~13 fewer copy-on-write faults)."""
    template, preload, token, rest = False, None, None, []
    for a in argv:
        if a == "--template":
            template = True
        elif a[:10] == "--preload=":
            preload = a[10:]
        elif a[:8] == "--spare=":
            if token is None:
                token = a[8:]
        elif a[:8] == "--flags=":
            pass                        # (the template's: fresh_argv)
        else:
            rest.append(a)
    if len(rest) != 2:
        raise SystemExit(_USAGE)
    return template, preload, token, rest


def parse_argv(argv):
    """-> (template, preload list, call sdesc, result sdesc); the spare's
    token: :func:`spare_token`."""
    template, preload, _, rest = _scan(argv)
    return (template, [m for m in (preload or "").split(",") if m],
            _env.decode(rest[0]), _env.decode(rest[1]))


def _run_args(argv):
    """What :func:`main` needs of ``argv``: (call sdesc, result sdesc, the
    spare's token or None), without the preload list (the template's)."""
    _, _, token, rest = _scan(argv)
    return _env.decode(rest[0]), _env.decode(rest[1]), token


def spare_token(argv):
    """The token of ``--spare=TOKEN`` in ``argv``, or None."""
    for a in argv:
        if a.startswith("--spare="):
            return a[len("--spare="):]
    return None


def main(argv=None):
    """Run one call; return the process exit code."""
    global _fresh_comm
    argv = sys.argv[1:] if argv is None else argv
    args = _run_args(argv)
    if args[2] is not None and "ember.shepherd.template" not in sys.modules:
        # a lease in a fresh interpreter (its parent's options were not the
        # template's: fresh_argv): named as the template's are until its call
        with open("/proc/self/comm", "rb") as f:
            _fresh_comm = f.read().rstrip(b"\n")
        _name(LEASED_COMM)
    return run(*args)


def _leave_at_exit():
    """A fresh interpreter's last exit hook (registered before any other):
    once every other hook has run, what the process attached of the
    runtime is unmapped, as :func:`ember.shutdown` does in a process that
    joined the runtime itself: its connection's channels and pools (only
    detached: GS frees a process's reply channels at its exit), the
    default pool's handle, and the pools the handles its call unpickled
    attached (``pools_c.clear_attach_cache``).  So the handles the call
    left (a Queue argument: their finalizers do not run at exit,
    ``atexit=False``) are collected after it without ``ResourceWarning:
    unclosed ember Channel`` (under ``-X dev``).  A daemon thread still
    in one of them keeps it (its detach refuses).  (A template child ends
    by ``os._exit``: nothing is collected.)"""
    try:
        client = sys.modules.get("ember.globalservices._client")
        conn = client and client._conn
        if conn is not None and conn.pid == os.getpid():
            client.drop_connection()
            conn.close(pool_goes=True)
        naming = sys.modules.get("ember.objects.naming")
        if naming is not None:
            naming.forget_default_pool()
        sys.modules["ember.pools_c"].clear_attach_cache()
    except Exception:
        pass


if __name__ == "__main__":
    import atexit
    atexit.register(_leave_at_exit)
    sys.exit(main())
