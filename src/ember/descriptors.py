"""Descriptors and options of the global-services API.

Descriptors are local snapshots of what global services (GS) knows about a
process, pool or channel; they travel as msgpack maps (``to_dict`` /
``from_dict``) and are never pickled.  Users get them from ``create`` and
``query``; constructing one by hand is possible but rarely useful.
"""
from collections import namedtuple

__all__ = [
    "ProcessDescriptor",
    "ProcessLocation",
    "ProcessStatus",
    "PoolDescriptor",
    "ChannelDescriptor",
    "ProcessOptions",
    "PoolOptions",
    "ChannelOptions",
]

#: Where a process runs: node index and OS pid (None until it started).
ProcessLocation = namedtuple("ProcessLocation", "node os_pid")

#: The status of one process in a multi_join answer: ``state`` is one of
#: ``"pending"``, ``"running"``, ``"exited"``; ``exit_code`` is None unless
#: the process exited.
ProcessStatus = namedtuple("ProcessStatus", "state exit_code")


class _Record:
    __slots__ = ()

    def to_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}

    @classmethod
    def from_dict(cls, d):
        return cls(**{k: d[k] for k in cls.__slots__})

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        body = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__ if k != "sdesc")
        return f"{type(self).__name__}({body})"


class ProcessDescriptor(_Record):
    """What GS knows about one managed process.

    Attributes: ``p_uid``, ``user_name`` (``name``), ``is_alive``,
    ``retval`` (exit code, None while alive; -N for death by signal N),
    ``location`` (:class:`~ember.descriptors.ProcessLocation`), ``state``.
    """

    __slots__ = ("p_uid", "user_name", "state", "retval", "node", "os_pid")

    def __init__(self, p_uid, user_name, state, retval, node, os_pid):
        self.p_uid = p_uid
        self.user_name = user_name
        self.state = state
        self.retval = retval
        self.node = node
        self.os_pid = os_pid

    @property
    def name(self):
        return self.user_name

    @property
    def is_alive(self):
        return self.state not in ("exited", "lost")

    @property
    def location(self):
        return ProcessLocation(self.node, self.os_pid)

    def refresh(self):
        """Re-read this descriptor from GS (in place)."""
        # straight through the client (globalservices.process imports this
        # module: no import loop)
        from . import messages
        from .globalservices._client import call

        fresh = ProcessDescriptor.from_dict(call(messages.ProcessQuery, self.p_uid))
        for k in self.__slots__:
            setattr(self, k, getattr(fresh, k))

    def __repr__(self):
        return (f"ProcessDescriptor(p_uid={self.p_uid}, user_name={self.user_name!r}, "
                f"state={self.state!r}, retval={self.retval!r}, location={self.location})")


class PoolDescriptor(_Record):
    """A pool as GS knows it: ``m_uid``, ``name``, ``node``, ``size`` and
    ``sdesc`` (attach with :meth:`ember.pools_c.Pool.attach`)."""

    __slots__ = ("m_uid", "name", "node", "size", "sdesc")

    def __init__(self, m_uid, name, node, size, sdesc):
        self.m_uid = m_uid
        self.name = name
        self.node = node
        self.size = size
        self.sdesc = sdesc


class ChannelDescriptor(_Record):
    """A channel as GS knows it: ``m_uid`` (its pool), ``c_uid``, ``name``,
    ``node``, ``capacity``, ``block_size``, ``ref_count`` and ``sdesc``
    (attach with :meth:`ember.channels_c.Channel.attach`)."""

    __slots__ = ("m_uid", "c_uid", "name", "node", "capacity", "block_size", "ref_count", "sdesc")

    def __init__(self, m_uid, c_uid, name, node, capacity, block_size, ref_count, sdesc):
        self.m_uid = m_uid
        self.c_uid = c_uid
        self.name = name
        self.node = node
        self.capacity = capacity
        self.block_size = block_size
        self.ref_count = ref_count
        self.sdesc = sdesc


class _Options:
    """Plain option records (no dataclasses: this module is imported at
    every process's start-up, and dataclasses costs milliseconds)."""

    _fields = ()
    _error = "EmberError"     # the name of the kind's exception in ember.exceptions

    def __init__(self, **kw):
        for name, default in self._fields:
            setattr(self, name, kw.pop(name, default))
        if kw:
            self._unknown(kw)

    @classmethod
    def _unknown(cls, kw):
        from . import exceptions

        names = [n for n, _ in cls._fields]
        valid = f"valid: {', '.join(names)}" if names else "it takes none"
        raise getattr(exceptions, cls._error)(
            f"unknown {cls.__name__} option(s) {', '.join(map(repr, sorted(map(str, kw))))}; {valid}")

    def to_dict(self):
        return {name: getattr(self, name) for name, _ in self._fields}

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __repr__(self):
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{type(self).__name__}({body})"

    @classmethod
    def coerce(cls, value, what):
        """Accept an instance, a dict of fields, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                cls._unknown({k: None for k in value if not isinstance(k, str)})
            return cls(**value)
        from . import exceptions

        raise getattr(exceptions, cls._error)(
            f"{what} must be a {cls.__name__}, a dict or None, not {type(value).__name__}")


class ProcessOptions(_Options):
    """How to launch a process.

    ``node``: where it runs (docs/multinode.md): a node index, ``"any"``
    (the live node with the fewest live processes) or None (the node of
    the process that creates it).  ``label``: what ``ember ps`` shows for
    it when it has no name (a str of at most LABEL_MAX characters, or
    None); ember.Process gives ``"Process-3 (mymod.work)"``."""

    _fields = (("node", None), ("label", None))
    _error = "ProcessError"
    LABEL_MAX = 200

    def __init__(self, node=None, label=None, **unknown):
        super().__init__(node=node, label=label, **unknown)
        _check_node(node, "ProcessOptions", allow_any=True)
        if label is not None and (not isinstance(label, str) or len(label) > self.LABEL_MAX):
            from .exceptions import ProcessError
            raise ProcessError(f"ProcessOptions.label must be a str of at most {self.LABEL_MAX} "
                               f"characters or None, got {label!r:.80}")


class PoolOptions(_Options):
    """Pool creation options: none yet beyond the size given to create
    (reserved for placement on other nodes)."""

    _fields = ()
    _error = "PoolError"

    def __init__(self, **unknown):
        super().__init__(**unknown)


class ChannelOptions(_Options):
    """Channel creation options.

    ``capacity``: number of slots (rounded up to a power of two);
    ``block_size``: bytes per slot (messages larger than a slot's payload
    go through a pool allocation automatically); ``ref_count``: when True,
    GS counts which processes hold the channel (create, join and
    ``channel.add_ref`` add one; ``channel.release`` or the holder's death
    drops it) and destroys it when the count reaches zero.
    """

    _fields = (("capacity", 128), ("block_size", 1024), ("ref_count", False), ("node", None))
    _error = "ChannelError"

    def __init__(self, capacity=128, block_size=1024, ref_count=False, node=None, **unknown):
        super().__init__(capacity=capacity, block_size=block_size, ref_count=ref_count, node=node,
                         **unknown)
        _check_node(node, "ChannelOptions")


def _check_node(node, who, allow_any=False):
    """``node`` must be None, an int >= 0 (or ``"any"`` where allowed)."""
    if node is None or (allow_any and node == "any"):
        return
    if isinstance(node, bool) or not isinstance(node, int) or node < 0:
        from . import exceptions
        err = exceptions.ProcessError if who == "ProcessOptions" else exceptions.ChannelError
        what = "a node index (int >= 0), 'any' or None" if allow_any else \
            "a node index (int >= 0) or None"
        raise err(f"{who}.node must be {what}, not {node!r}")
