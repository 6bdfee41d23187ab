"""Names of the environment variables through which a managed process finds
its runtime, and helpers to read them.  Descriptors travel as base64 text.
"""
import binascii
import os
import sys

RUNTIME_ID = "EMBER_RUNTIME_ID"      # "r<launcher pid>-<hex>": owner tag of the runtime's segments
INF_POOL = "EMBER_INF_POOL"          # sdesc of the infrastructure pool (GS/shepherd/reply channels)
GS_CH = "EMBER_GS_CH"                # sdesc of global services' input channel
SH_CH = "EMBER_SH_CH"                # sdesc of the node's shepherd input channel
DEFAULT_POOL = "EMBER_DEFAULT_POOL"  # sdesc of the runtime's default pool for user channels
P_UID = "EMBER_P_UID"                # this process's p_uid
NODE = "EMBER_NODE"                  # index of this node
LABEL = "EMBER_OUTPUT_LABEL"         # shepherd output labelling: "none", "puid" or "name"
# In the env of a process.create (never passed on to the child): "inherit"
# gives the child the launcher's stdin instead of /dev/null (the head gets it).
STDIN = "EMBER_STDIN"
# In the env of a process.create (never passed on): "1" runs a .py file given
# to sys.executable in a fork of the shepherd (the launcher asks it for a .py head).
FORK_PY = "EMBER_FORK_PY"
STDIO_FROM = "EMBER_STDIO_FROM"   # spawn directive: the child uses that pid's own stdio
# GS accepts STDIN and FORK_PY from the launcher (p_uid 0) only, STDIO_FROM
# only naming the requester's own pid (docs/architecture.md, "Trust model").


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


# binascii, not base64: the base64 module imports re (~4 ms in every process).
def encode(sdesc: bytes) -> str:
    return binascii.b2a_base64(sdesc, newline=False).decode("ascii")


def decode(text: str) -> bytes:
    """The bytes of a base64 text; ValueError (binascii.Error) if it is not
    strict base64 (no characters outside the alphabet, correct padding)."""
    if _STRICT:
        # One C call: what a template child runs to read its descriptors
        # (the encode and translate of the other path cost each ~14 page
        # faults of copy-on-write more).
        return binascii.a2b_base64(text, strict_mode=True)
    data = text.encode("ascii")
    if data.translate(None, _B64):
        raise binascii.Error(f"not base64: {text[:40]!r}")
    return binascii.a2b_base64(data)


#: binascii.a2b_base64 has strict_mode (3.11): no characters outside the
#: alphabet, correct padding, nothing after it.
_STRICT = sys.version_info >= (3, 11)


# A process that attached with ember.init() reads its runtime from here, not
# from os.environ (its subprocesses must not inherit the attachment).
_overrides = None
_reattach = None


def set_overrides(values):
    """Install (or, with None, remove) the attached runtime's settings."""
    global _overrides, _reattach
    _overrides = dict(values) if values is not None else None
    if values is not None:
        _reattach = None


def forked(fn):
    """After fork: the parent's settings dropped, and ``fn()`` attaches
    this child anew on first use."""
    global _overrides, _reattach
    _overrides, _reattach = None, fn


def take_reattach():
    global _reattach
    fn, _reattach = _reattach, None
    return fn


#: Names of the variables the runtime's environment, which every child of
#: the shepherd starts from, may hold: this process's own at its start (its
#: exec's, ``/proc/self/environ``, and at this module's import) and at the
#: start of a runtime it made (:func:`note_environ`).  A child is to lack
#: each of them that this process lacks (:func:`removed`).
_known = set(os.environ)
_known_exec = [False]


def note_environ():
    """At the start of a runtime this process makes: its environment is the
    runtime's (the host is forked from it, or gets a copy)."""
    _known.update(os.environ)


def removed(env):
    """The names of the variables the runtime's environment may hold that
    ``env`` (this process's environment, a mapping) lacks: a child started
    with ``env`` is to lack them too (a removal, as spawn's child lacks
    what its parent removed), but the runtime's own (``EMBER_*``)."""
    if not _known_exec[0]:
        _known_exec[0] = True
        try:
            with open("/proc/self/environ", "rb") as f:
                names = [kv.partition(b"=")[0] for kv in f.read().split(b"\0")]
            _known.update(os.fsdecode(n) for n in names if n)
        except (OSError, ValueError):
            pass
    return [k for k in _known if k not in env and not k.startswith("EMBER_")]


#: GS: how long a create of a name whose joiners are on the join wake board
#: is held back while the board's lock stays busy (globalservices/wakeboard.py,
#: BUSY_GRACE); seconds, default 1.
WB_BUSY_GRACE = "EMBER_WB_BUSY_GRACE"
#: The shepherd: how long an unfinished line of a stdin reader (the head) is
#: held at most while its process runs (shepherd/server.py, _PROMPT_MAX);
#: seconds, default 1.
PROMPT_MAX = "EMBER_PROMPT_MAX"
#: Every process: how long a wait for GS's reply, and GS's and the
#: shepherd's wait for their next request, spin before they sleep
#: (globalservices/_client.py, CONTROL_SPIN); seconds, default 100e-6, 0
#: for no spin.
CONTROL_SPIN = "EMBER_CONTROL_SPIN"
#: The settings in seconds ``ember run`` checks before it starts anything.
SECONDS = (WB_BUSY_GRACE, PROMPT_MAX, CONTROL_SPIN)
#: Those of them that may be 0.
_ZERO_OK = (CONTROL_SPIN,)


def seconds(name, default):
    """The positive (0 too for a name in :data:`_ZERO_OK`), finite number
    of seconds the variable ``name`` holds (``default`` if it is unset or
    empty); ValueError with the message ``ember run`` prints for anything
    else."""
    text = os.environ.get(name, "")
    if not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = None
    if name in _ZERO_OK:
        if value is None or not 0 <= value < float("inf"):
            raise ValueError(f"{name}={text!r} is not a number of seconds, 0 or above")
    elif value is None or not 0 < value < float("inf"):
        raise ValueError(f"{name}={text!r} is not a number of seconds above 0")
    return value


def get(name, default=None):
    if _overrides is not None:
        return _overrides.get(name, default)
    return os.environ.get(name, default)


def in_runtime() -> bool:
    return GS_CH in (_overrides if _overrides is not None else os.environ) or _reattach is not None


def is_managed() -> bool:
    """True in a process started by a runtime (it has a p_uid in its
    environment) or attached to one."""
    return get(P_UID) is not None

SEGMENT_TAG = "EMBER_SEGMENT_TAG"    # optional: appended to every segment's owner tag (test isolation)


def owner_tag(kind, pid=None):
    """The owner tag put in segment names: ``p<pid>`` for a standalone pool,
    ``r<launcher pid>-<hex>`` for a runtime (kind ``"p"`` or ``"r"``), plus
    ``-<EMBER_SEGMENT_TAG>`` when that is set (up to 8 of [A-Za-z0-9_])."""
    pid = os.getpid() if pid is None else pid
    tag = f"p{pid}" if kind == "p" else f"r{pid}-{os.urandom(3).hex()}"
    extra = "".join(c for c in os.environ.get(SEGMENT_TAG, "") if c.isascii() and (c.isalnum() or c == "_"))[:8]
    return f"{tag}-{extra}" if extra else tag

# Trust model (docs/architecture.md): never inherited by managed processes
# from the runtime's environment; GS gives each process its own.
KEY = "EMBER_KEY"                    # this process's request key (hex), checked by GS
GS_CTL = "EMBER_GS_CTL"              # sdesc of GS's private control channel (python -m ember.shepherd only)


def first_at(path):
    """For the test hooks (``EMBER_TEST_*``): True for the one process that
    creates ``path`` (O_EXCL), False for every later one."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return False
    return True


def hold_at(path, limit=60.0):
    """For the test hooks: the one that creates ``path`` (:func:`first_at`)
    waits until ``path + ".go"`` exists (at most ``limit`` seconds: a test
    that failed)."""
    if first_at(path):
        import time
        deadline = time.monotonic() + limit
        while not os.path.exists(path + ".go") and time.monotonic() < deadline:
            time.sleep(0.01)
