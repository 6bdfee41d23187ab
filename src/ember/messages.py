"""The message schema of ember's control plane: the only place that builds
messages.

Every message is a msgpack array ``[code, field1, field2, ...]``; the
integer ``code`` names the message type and fixes its fields (the table
below).  Requests carry ``tag`` (request id, unique per sender), the
sender's ``p_uid``, ``r``, the serialized descriptor of the channel the
reply goes to, and ``key``, the sender's request key (``EMBER_KEY``: a
random secret GS made for that process, see docs/architecture.md, "Trust
model").  Every reply is a :class:`Reply` whose ``ref`` is the tag it
answers and whose body follows the dask-style error convention
``{status, ref, err_type, msg, tb}``: ``status`` 0 is success and ``value``
holds the result; otherwise ``err_type`` names the exception class (from
:mod:`ember.exceptions` or a built-in) and ``msg`` says what was wrong.

Arrays, not maps, because they are smaller and faster to pack and unpack;
the field names live here, in one table.  Nothing on the control plane is
ever pickled.
"""
from operator import attrgetter

import msgpack

__all__ = ["Message", "MessageError", "unpack", "pack", "ERR_OK", "ERR_FAIL", "EXIT_UNKNOWN", "by_code"]

ERR_OK = 0
ERR_FAIL = 1
# exit code recorded for an attached process that vanished without detaching
# (ember did not start it and cannot read its exit status)
EXIT_UNKNOWN = 255


class MessageError(ValueError):
    """A control-plane message could not be decoded or is malformed."""


class Message:
    """Base of all messages.  Subclasses are made by :func:`_define`."""

    __slots__ = ()
    code = -1
    fields = ()
    #: Optional trailing fields and their values when a sender omits them
    #: (a field added to an existing message; see :func:`_define`).
    defaults = {}

    def __init__(self, *args, **kwargs):
        fields = self.fields
        if len(args) == len(fields) and not kwargs:      # the common case, fast
            for name, value in zip(fields, args):
                setattr(self, name, value)
            return
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(self.fields)} fields, got {len(args)}")
        for name, value in zip(self.fields, args):
            setattr(self, name, value)
        for name in self.fields[len(args):]:
            try:
                setattr(self, name, kwargs.pop(name))
            except KeyError:
                if name not in self.defaults:
                    raise TypeError(f"{type(self).__name__} is missing field {name!r}") from None
                setattr(self, name, self.defaults[name])
        if kwargs:
            raise TypeError(f"{type(self).__name__} has no field(s) {sorted(kwargs)}")

    @classmethod
    def _new(cls, *args):
        """The fast constructor: exactly one value per field, in order, no
        checks (the hot paths: decoding, where the count is checked, and
        the client's requests).  The first call of a class compiles its own
        ``_new`` (one store per field instead of a generic loop of
        setattr: 5-7x faster) and installs it; classes a process never
        builds cost nothing at import (see also :func:`prepare`)."""
        prepare(cls)
        return cls._new(*args)

    def pack(self):
        return _packb([self.code, *self._values(self)])

    def __repr__(self):
        """The fields, with no secret: a key's value and an environment's
        values are left out (``_shown``), so that a log or an error that
        formats a message (``dropped %r``) holds neither."""
        body = ", ".join(f"{f}={_shown(f, getattr(self, f))}" for f in self.fields)
        return f"{type(self).__name__}({body})"

    def __eq__(self, other):
        return type(self) is type(other) and all(
            getattr(self, f) == getattr(other, f) for f in self.fields)


#: Fields whose values a message's repr never shows: a process's key (the
#: requests' ``key``, ProcessAttach's ``attach_key``, the ``key`` of an
#: attach's or a fork's reply) proves to GS who sends; a claim's token.
_SECRET = frozenset(("key", "attach_key", "token"))


def _shown(name, value):
    """``repr`` of a field or an item named ``name``, with secrets hidden:
    ``<hidden>`` for a key, the number of variables for an environment
    (``env``, which holds the child's ``EMBER_KEY`` and the user's own),
    the size only of a packed message another carries (``data``: a
    request of another node's, with its key), and so inside the dicts and lists a field holds (a reply's value)."""
    if name in _SECRET and value:
        return "<hidden>"
    if name == "env" and isinstance(value, dict):
        return f"<environment of {len(value)} variables>"
    if name == "data" and isinstance(value, (bytes, bytearray, memoryview)):
        return f"<a message of {len(value)} bytes>"     # MnFrom's, MnTo's: a packed message
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_shown(k, v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        body = ", ".join(_shown(None, v) for v in value)
        return f"[{body}]" if isinstance(value, list) else f"({body}{',' if len(value) == 1 else ''})"
    return repr(value)


by_code = {}


def prepare(*classes):
    """Compile the fast constructor (``_new``) of each of ``classes`` that
    has none yet, all in one ``compile``.  The launcher does it before it
    forks GS and the shepherd for the messages of every run (a create, a
    join, the teardown): compiled once there instead of on the way of each
    message in both the sender and the receiver (~0.1-0.3 ms each, 13 of
    them on the way of ``ember run empty.py``)."""
    todo = [c for c in classes if "_new" not in c.__dict__ or
            isinstance(c.__dict__["_new"], classmethod)]
    if not todo:
        return
    src = []
    ns = {"_alloc": object.__new__}
    for i, c in enumerate(todo):
        ns[f"_cls{i}"] = c
        body = "".join(f"    o.{f} = {f}\n" for f in c.fields)
        src.append(f"def _new{i}({', '.join(c.fields)}):\n    o = _alloc(_cls{i})\n{body}"
                   f"    return o\n")
    # compiled first: exec() of a str goes through PyRun_StringFlags, which
    # clears CPython's "unhandled KeyboardInterrupt" flag (set when the
    # program ends on one), and a message first built at exit (the
    # teardown's ProcessDetach) then made the process exit 1 instead of by
    # SIGINT; exec() of a code object does not touch it
    exec(compile("".join(src), "<ember.messages>", "exec"), ns)
    for i, c in enumerate(todo):
        c._new = staticmethod(ns[f"_new{i}"])


def _define(code, name, fields, defaults=None):
    """A message type: ``fields`` in order; ``defaults`` maps trailing
    (optional) fields to the value they take when a sender omits them, so
    a field can be added to an existing message without breaking senders
    that do not know it."""
    fields = tuple(fields.split())
    defaults = dict(defaults or {})
    if set(defaults) != set(fields[len(fields) - len(defaults):]):
        raise RuntimeError(f"{name}: only trailing fields may have defaults")
    if len(fields) > 1:
        values = attrgetter(*fields)                  # -> tuple of the field values
    elif fields:
        one = attrgetter(fields[0])
        values = lambda self: (one(self),)            # noqa: E731
    else:
        values = lambda self: ()                      # noqa: E731
    cls = type(name, (Message,), {"__slots__": fields, "code": code, "fields": fields,
                                  "defaults": defaults, "_values": staticmethod(values)})
    if code in by_code:
        raise RuntimeError(f"duplicate message code {code}")
    by_code[code] = cls
    globals()[name] = cls
    __all__.append(name)
    return cls


_REQ = "tag p_uid r key "

# --- user process -> global services ---------------------------------------
_define(1, "ProcessCreate", _REQ + "exe args env run_dir user_name options soft")
_define(2, "ProcessList", _REQ)
_define(3, "ProcessQuery", _REQ + "ident")
_define(4, "ProcessKill", _REQ + "ident sig")
_define(5, "ProcessJoin", _REQ + "idents timeout join_all return_on_bad_exit")
# a process the runtime did not start (ember.init(), attach) joins it, proving
# with the runtime's key that it may; leaves with ProcessDetach.
_define(6, "ProcessAttach", _REQ + "pid attach_key user_name")
_define(7, "ProcessDetach", _REQ + "exit_code")
_define(10, "PoolCreate", _REQ + "size user_name options soft")
_define(11, "PoolList", _REQ)
_define(12, "PoolQuery", _REQ + "ident")
_define(13, "PoolDestroy", _REQ + "ident")
_define(14, "PoolDefault", _REQ)
_define(20, "ChannelCreate", _REQ + "m_uid user_name options soft")
_define(21, "ChannelList", _REQ)
_define(22, "ChannelQuery", _REQ + "ident")
_define(23, "ChannelJoin", _REQ + "name timeout")
_define(24, "ChannelDestroy", _REQ + "ident")
_define(25, "ChannelRelease", _REQ + "ident")
_define(26, "ChannelAddRef", _REQ + "ident")
# a reference that also declares the caller a sender: when the last sending
# holder of a ref-counted channel releases or dies, GS closes the channel.
_define(28, "ChannelAddSender", _REQ + "ident")
# a client abandoned request ``ref`` (Ctrl-C while waiting): GS forgets the
# parked waiter; no reply.
_define(27, "Cancel", _REQ + "ref")
# launcher -> GS: kill everything, destroy everything, stop the shepherd, exit.
# survivors: say on stderr which processes are still running, before they
# are terminated (the launcher, when the head has exited)
_define(30, "Teardown", _REQ + "grace survivors", {"survivors": False})
# introspection (any process): the service's stats() record / its dump() as
# plain data (ember.globalservices.introspect; feeds `ember ps`).
_define(31, "ServiceStats", _REQ)
_define(32, "ServiceDump", _REQ)

# --- global services -> any requester ---------------------------------------
_define(40, "Reply", "ref status value err_type msg tb")

# --- global services -> shepherd (private control channel) -------------------
_define(50, "ShSpawn", "tag p_uid exe args env run_dir user_name")
_define(51, "ShKill", "p_uid sig")
_define(52, "ShShutdown", "tag")
# watch (not reap: not our child) an attached process; forget it again.
_define(53, "ShWatch", "p_uid pid")
_define(54, "ShUnwatch", "p_uid")
# node-scoped resources: GS decides and records, the shepherd of the node
# that owns the memory creates and destroys (docs/architecture.md).  Each
# is answered by the matching Sh*Done with ``err`` None or [err_type, text].
_define(55, "ShPoolCreate", "tag m_uid size name owner_tag")
_define(56, "ShPoolDestroy", "tag m_uid")
# ``pool_sdesc``: the pool's descriptor, for a pool the shepherd did not make
# (the runtime's default pool): it attaches it once.
_define(57, "ShChannelCreate", "tag c_uid m_uid pool_sdesc capacity block_size")
_define(58, "ShChannelDestroy", "tag c_uid")
_define(59, "ShChannelClose", "tag c_uid")
# a named object (ember.objects) ended: close the channels in ``closes`` (a
# Pipe end's direction) and destroy its ``parts`` (["chan", sdesc],
# ["sync", kind, sdesc], ["alloc", sdesc]) in pool m_uid; all memory of the
# node, so its shepherd does it.
_define(80, "ShObjectEnd", "tag m_uid pool_sdesc closes parts")

# chanperf (100-109).  A client that maps the pool makes the channel itself
# (owned by its pid, so a death before it is registered gives the block back)
# with the c_uid GS reserved for it in its previous channel reply
# (``next_c_uid``), and registers it: GS checks the descriptor without mapping
# the pool, records it, wakes its joiners and answers, then has the node's
# shepherd adopt it (attach, check its header and c_uid, hand the block from
# the requester's pid to nobody).  ``options``: capacity, block_size, ref_count.
_define(100, "ChannelRegister", _REQ + "m_uid user_name options sdesc")
_define(101, "ShChannelAdopt", "c_uid m_uid pool_sdesc sdesc pid")
# shepherd -> GS: the node refused to adopt a registered channel (GS forgets it)
_define(102, "ShChannelAdoptFailed", "c_uid err")
# a channel destroy is answered as soon as GS forgets the
# channel; the node's shepherd frees it afterwards (a notice, no answer: a
# failure is logged by the shepherd).  ``c_uids``: a list.
_define(103, "ShChannelDrop", "c_uids")

# chanperf (140-149).  A registered channel destroyed while GS still holds its
# ShChannelAdopt (both within one burst of notices): the node checks it as it
# would adopt it, then frees it at once (a notice, no answer: a refusal is
# logged).  GS sends it in the adopt's place and sends no ShChannelDrop.
_define(140, "ShChannelFree", "c_uid m_uid pool_sdesc sdesc pid")

# chancd (141-149).  The destroy of a channel by the process that made and
# registered it, not waited for: GS answers nothing (the client returned as
# soon as the request was in GS's input, whose order every later request of
# anyone's follows).  GS drops it when the channel is gone or is not the
# sender's own (it then was destroyed by another process concurrently: see
# docs/channels.md, "How create, join and destroy flow").
_define(141, "ChannelDestroyOwned", _REQ + "c_uid")
# The register of an unnamed plain channel, not waited for: the client made it
# with one of the c_uids GS reserved for such registers (``post_c_uids`` in its
# channel replies, a range) and returned its descriptor at once; GS checks and
# records it as a ChannelRegister and answers nothing (it logs a refusal:
# only a client that breaks the protocol is refused).  Every later request,
# anyone's, is handled after it (GS reads its input in order).
_define(142, "ChannelRegisterPosted", _REQ + "m_uid user_name options sdesc")

# mends (143-149).  An os.fork() child of a managed process, at its first
# request (sent with its parent's p_uid and key, which it inherited): it gets
# a p_uid and key of its own (its parent as creator), watched by the node's
# shepherd as an attached process is; the reply channel it asked on is its
# own from then on.  Until then it spoke as its parent: GS's reservations of
# that p_uid went to whichever asked last, and the parent's exit ended it.
_define(143, "ProcessForked", _REQ + "pid")

# wake (130-139).  The register of a named plain channel whose parked joiners
# its creator has just answered from the join wake board (wakeboard.c puts
# this code in the register it packed as it claims the name), not waited for:
# the name was free and is claimed on the board, so GS always accepts it; the
# c_uid is one of the creator's ``post_c_uids``.  GS records it as a
# ChannelRegister (the joiners the creator answered get no second reply) and
# answers nothing; the creator is not woken again, and GS is not woken by it
# (the next request, anyone's, or GS's 50 ms slice finds it: every later
# request is handled after it, as GS reads its input in order).
_define(130, "ChannelRegisterPublished", _REQ + "m_uid user_name options sdesc")

# pystart (160-169).  ``ember.Process`` takes a spare it leased (a process it
# created with the ProcessCreate option ``spare``: hidden from lists, events
# and the teardown's survivors until claimed, killed when its creator exits)
# and tells GS it is now a process of its own; a notice, not waited for (a
# refusal is logged).  ``ident``: the spare's p_uid.
# ``label`` (optional): what `ember ps` shows for it, as ProcessOptions.label.
_define(160, "ProcessClaim", _REQ + "ident label", {"label": None})
# GS -> shepherd: write ``line``, the death report of process ``p_uid``: a
# lease that died by a signal nobody in ember sent, still named as an idle
# spare (before it read its call), which the shepherd left to GS to decide
# (ShExited.info ``idle_report``) and GS found claimed: a user's process.
_define(161, "ShDeathReport", "p_uid line")

# gsmsg (162-169).  GS -> shepherd: a join waits in GS for the end of the
# processes ``p_uids`` (its own node's): their exits are reported with a
# poke, not quietly (the shepherd reports a plain exit with code 0 on GS's
# control channel without waking GS, read at GS's next wake-up: its next
# request, or the shepherd's poke at most ``POKE_DELAY`` later; see
# ember.shepherd.server).  A notice.
_define(162, "ShExitWanted", "p_uids")

# mends (155-159).  ``ember.Process``'s creator asks GS to start again the
# lease ``ident`` it took, which a signal ended before it read its call (the
# call still whole in its call channel, which only the creator sees): GS
# does it once, under the same p_uid, from the lease's own request (kept
# since its create, until an exit by no signal, or this), if the lease is
# the sender's, claimed and ended by a signal; answered as a create
# is (its descriptor, with the new pid, once the shepherd runs it), else
# ProcessError.
_define(155, "ProcessRerun", _REQ + "ident")

# rerun2 (135-139).  ``ember.Process``'s creator has seen that the lease
# ``ident`` it took, which a signal nobody asked through GS ended, had read
# its call (so it is not started again, ProcessRerun): its end stands, and
# GS writes the death line it held while the lease could be started again
# (ShDeathReport).  A notice, answered nothing; ignored for anything but
# the sender's ended process.
_define(135, "ProcessNoRerun", _REQ + "ident")

# rtcpu (180-189).  ``ember.Process``'s start that took a spare claims it
# and asks for the next one in one message: ProcessClaim of ``ident`` (with
# ``label``; a claim GS refuses is logged, as ProcessClaim's) followed by a
# ProcessCreate with the option ``spare`` (no name, not soft) of ``exe``,
# ``args``, ``env`` and ``run_dir``, answered as that create is (the new
# spare's descriptor, or an error).  One decode and one dispatch in GS,
# one send in the creator, where two messages took two of each.
_define(180, "ProcessClaimNext", _REQ + "ident label exe args env run_dir")

# --- shepherd -> global services (private control channel) -------------------
_define(60, "ShSpawned", "ref p_uid os_pid err")
# info (optional; None from a sender that cannot know, e.g. an attached
# process's exit): {"status": the raw wait status, "core_dumped": bool,
# "oom_killed": True / False / None (unknown: no memory cgroup to ask),
# and, for a lease that died as an idle spare by a signal nobody in ember
# sent, "idle_report": its death report line, written (ShDeathReport) only
# if GS finds it was claimed}
_define(61, "ShExited", "p_uid exit_code info", {"info": None})
_define(62, "ShShutdownDone", "ref")
# on GS's public input channel, after a message was put on its private
# control channel: "read your control channel".  Carries nothing; anyone may
# send it (it only makes GS look at a channel only the runtime can write).
_define(63, "Poke", "")
_define(64, "ShPoolCreated", "ref m_uid sdesc size err")
_define(65, "ShPoolDestroyed", "ref m_uid err")
_define(66, "ShChannelCreated", "ref c_uid sdesc capacity block_size err")
_define(67, "ShChannelDestroyed", "ref c_uid err")
_define(68, "ShChannelClosed", "ref c_uid err")
_define(81, "ShObjectEnded", "ref err")

_packb = msgpack.Packer(use_bin_type=True).pack
POKE = Poke().pack()


def pack(msg):
    """Serialize a message to bytes."""
    return msg.pack()


def unpack(data):
    """Decode bytes into a message object; raise :class:`MessageError` if
    the bytes are not a well-formed message of a known type."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several types on garbage
        raise MessageError(f"undecodable message ({len(data)} bytes): {exc}") from None
    if not isinstance(obj, list) or not obj:
        raise MessageError(f"message must be a non-empty array, got {type(obj).__name__}")
    code = obj[0]
    cls = by_code.get(code) if isinstance(code, int) else None
    if cls is None:
        raise MessageError(f"unknown message type {code!r}")
    n, total = len(obj) - 1, len(cls.fields)
    if n != total and not total - len(cls.defaults) <= n < total:
        raise MessageError(
            f"{cls.__name__} needs {total} fields, got {n}")
    return cls._new(*obj[1:]) if n == total else cls(*obj[1:])


def reply_ok(ref, value=None):
    return Reply._new(ref, ERR_OK, value, None, None, None)


def reply_err(ref, err_type, msg, tb=None):
    return Reply._new(ref, ERR_FAIL, None, err_type, msg, tb)


__all__ += ["reply_ok", "reply_err", "POKE"]

# --- named objects (Queue, Pipe, Lock, ...; ember.objects) --------------------
# GS keeps a registry of Python-layer objects: kind, an opaque descriptor
# (made and read by the client only), lifetime, holders, and the parts GS
# destroys with the object (channels it made for it, pool allocations).
_define(70, "ObjectCreate", _REQ + "kind user_name lifetime desc channels parts children soft")
_define(71, "ObjectAttach", _REQ + "name kind timeout")
_define(72, "ObjectAddRef", _REQ + "o_uid")
_define(73, "ObjectRelease", _REQ + "o_uid")
_define(74, "ObjectDestroy", _REQ + "ident")
_define(75, "ObjectList", _REQ)
_define(76, "ObjectQuery", _REQ + "ident")
# pickling a handle lends one of the pickler's references to whoever
# unpickles it (the token names the loan); ObjectClaim takes it over (or adds
# a reference of its own if the loan is gone).
_define(77, "ObjectLend", _REQ + "o_uid")
_define(78, "ObjectClaim", _REQ + "o_uid token")

# --- several nodes (ember.transport; codes 90-99, 120-129) -------------------
# head agent -> GS (control channel): a message from node ``node``: its
# shepherd's (``trusted``) or a request of a user process there (checked as
# any request; the reply goes back to that node).
_define(90, "MnFrom", "node trusted data")
# GS -> head agent: deliver ``data`` on node ``node``: ``kind`` MN_SH to its
# shepherd, MN_REPLY to the reply channel ``r``, MN_FREE destroys reply
# channel ``r`` (its process exited).
_define(91, "MnTo", "node kind r data")
# head agent -> GS: node ``node`` joined (``info``: host, agent address,
# default pool descriptor and size) / was lost (``why``).
_define(92, "MnNodeUp", "node info")
_define(93, "MnNodeLost", "node why")

MN_SH, MN_REPLY, MN_FREE = 0, 1, 2
__all__ += ["MN_SH", "MN_REPLY", "MN_FREE"]
