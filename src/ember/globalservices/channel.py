"""Channel services: channels registered with global services.

Identifiers: an ``int`` is a c_uid, a ``str`` a user name.  Errors raise
:class:`ember.exceptions.ChannelError`; :func:`join` running out of time
raises :class:`ember.exceptions.ChannelTimeout` (a ``TimeoutError``).
Attach with ``ember.channels_c.Channel.attach(descriptor.sdesc)``.
"""
from .. import messages as _m
from ..descriptors import ChannelDescriptor, ChannelOptions
from ..exceptions import ChannelError, ChannelTimeout
from . import _client
from ._client import call as _call, connection as _connection

__all__ = ["create", "get_list", "list", "query", "join", "destroy", "release", "add_ref",
           "add_sender",
           "ChannelDescriptor", "ChannelOptions", "ChannelError", "ChannelTimeout"]

_list = list


def _ident(identifier):
    if isinstance(identifier, bool) or not isinstance(identifier, (int, str)):
        raise ChannelError(f"channel identifier must be an int c_uid or a str name, "
                           f"not {type(identifier).__name__}")
    return identifier


def create(m_uid, user_name=None, channel_options=None, soft=False):
    """Create a channel in pool ``m_uid`` (None: the default pool); return
    its :class:`ChannelDescriptor`.  ``soft=True`` returns the live channel
    of that name if there is one.  Waiters in :func:`join` for this name
    wake at once.  An unnamed plain channel in the default pool is
    registered without waiting for GS's answer (GS handles it before any
    later request; docs/channels.md, "How create, join and destroy flow").

    Raises
    ------
    ember.ChannelError
        A bad argument or option, no pool with that ``m_uid``, a name taken
        by a live channel (without ``soft``).
    ember.PoolExhausted
        No room for the channel in the pool.
    """
    fast = _client._fast
    if fast is not None and m_uid is None and channel_options is None and not soft and \
            type(user_name) is str and user_name:
        # a name with the default options, the join wake board's publisher
        # ready: one C call to the joiners' wake-up (_client.py, wakeboard.c)
        d = fast[1].create_named(fast[0], user_name)
        if d is not None:
            return d
    if m_uid is not None and (isinstance(m_uid, bool) or not isinstance(m_uid, int)):
        raise ChannelError(f"m_uid must be an int or None, not {type(m_uid).__name__}")
    if user_name is not None and not isinstance(user_name, str):
        raise ChannelError(f"user_name must be a str or None, not {type(user_name).__name__}")
    if channel_options is None:
        opts, od = _DEFAULTS, _DEFAULTS_DICT
    else:
        opts = ChannelOptions.coerce(channel_options, "channel_options")
        od = opts.to_dict()
    return ChannelDescriptor.from_dict(_connection().create_channel(m_uid, user_name, opts, soft,
                                                                    od))


_DEFAULTS = ChannelOptions()        # never mutated: the options of channel_options=None
_DEFAULTS_DICT = _DEFAULTS.to_dict()


def get_list(names=False):
    """The c_uids of the live channels (the spec's return type); with
    ``names=True``, ``[(c_uid, name or None), ...]``."""
    rows = _call(_m.ChannelList)
    return [(c, n) for c, n in rows] if names else [c for c, _ in rows]


list = get_list  # the spec's name


def query(identifier):
    """The :class:`ChannelDescriptor` of a live channel.

    Raises
    ------
    ember.ChannelError
        ``identifier`` is not an int or str, or names no live channel.
    """
    return ChannelDescriptor.from_dict(_call(_m.ChannelQuery, _ident(identifier)))


def join(name, timeout=None):
    """The descriptor of channel ``name``, waiting until some process creates
    it (``timeout`` seconds at most, kept by GS).  Joining a ref-counted
    channel adds a reference for this process.

    Raises
    ------
    ember.ChannelTimeout
        No channel of that name was created within ``timeout`` (a
        ``TimeoutError``).
    ember.ChannelError
        ``name`` is not a non-empty str, or ``timeout`` not a number >= 0.
    """
    if not isinstance(name, str):
        raise ChannelError(f"channel.join needs a str name, not {type(name).__name__}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ChannelError(f"timeout must be a number >= 0 or None, got {timeout!r}")
        timeout = float(timeout)
    d = _call(_m.ChannelJoin, name, timeout)
    # (from_dict without its comprehension: this is a wake-up's path, where
    # each Python frame costs microseconds on a cold CPU)
    if type(d) is ChannelDescriptor:
        return d          # answered from the join wake board (_client.Connection._wait)
    return ChannelDescriptor(d["m_uid"], d["c_uid"], d["name"], d["node"], d["capacity"],
                             d["block_size"], d["ref_count"], d["sdesc"])


def destroy(identifier):
    """Destroy a channel (its memory returns to the pool).  A plain channel
    this process made itself is destroyed without waiting for GS's answer
    (GS handles it before any later request; docs/channels.md).

    Raises
    ------
    ember.ChannelError
        ``identifier`` names no live channel.
    """
    return _connection().destroy_channel(_ident(identifier))


def add_ref(identifier):
    """Add a reference to a ref-counted channel for this process.

    Raises
    ------
    ember.ChannelError
        The channel does not exist or is not ref-counted.
    """
    return _call(_m.ChannelAddRef, _ident(identifier))


def add_sender(identifier):
    """Take a reference to a ref-counted channel as one of its *senders*.
    When the last sending holder releases its reference or dies, GS closes
    the channel: receivers get what was queued, then ``ChannelClosed``
    (an ``EOFError``) instead of waiting forever for a producer that is gone.

    Raises
    ------
    ember.ChannelError
        The channel does not exist, is not ref-counted, or was closed
        already.
    """
    return _call(_m.ChannelAddSender, _ident(identifier))


def release(identifier):
    """Drop one of this process's references to a ref-counted channel; GS
    destroys the channel when no references remain.

    Raises
    ------
    ember.ChannelError
        The channel is not ref-counted, or this process holds no reference
        to it.
    """
    return _call(_m.ChannelRelease, _ident(identifier))
