"""Channel services: channels registered with global services.

Identifiers: an ``int`` is a c_uid, a ``str`` a user name.  Errors raise
:class:`ember.exceptions.ChannelError`; :func:`join` running out of time
raises :class:`ember.exceptions.ChannelTimeout` (a ``TimeoutError``).
Attach with ``ember.channels_c.Channel.attach(descriptor.sdesc)``.
"""
from .. import messages as _m
from ..descriptors import ChannelDescriptor, ChannelOptions
from ..exceptions import ChannelError, ChannelTimeout
from ..channels_c import _channels
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


def _create(m_uid, user_name, channel_options, soft):
    """:func:`create` but for a named create the join wake board's
    publisher took (_channels.channel_create)."""
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


def _join_begin(name, timeout):
    """:func:`join` up to its wait: the request sent; ``(connection,
    holder, tag)``."""
    if not isinstance(name, str):
        raise ChannelError(f"channel.join needs a str name, not {type(name).__name__}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ChannelError(f"timeout must be a number >= 0 or None, got {timeout!r}")
        timeout = float(timeout)
    conn = _connection()
    return (conn,) + conn.request(_m.ChannelJoin, (name, timeout))


def _join_finish(conn, holder, tag, data):
    """:func:`join` after its wait received ``data``, not the join wake
    board's answer to it: GS's reply (or another's, then wait on)."""
    d = conn._wait(holder, tag, _m.ChannelJoin, None, data)
    if type(d) is ChannelDescriptor:
        return d          # answered from the join wake board after all
    return ChannelDescriptor(d["m_uid"], d["c_uid"], d["name"], d["node"], d["capacity"],
                             d["block_size"], d["ref_count"], d["sdesc"])


# create and join are C functions (channels_c/_channels.pyx): no Python frame
# on either side of a join wake-up (docs/channels.md, "The join wake board")
create = _channels.channel_create
join = _channels.channel_join
_channels._set_gs(_create, _join_begin, _join_finish, ChannelDescriptor)


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
