"""Pool services: shared-memory pools registered with global services.

Identifiers: an ``int`` is an m_uid, a ``str`` a user name.  Errors raise
:class:`ember.exceptions.PoolError`.  Attach to a pool's memory with
``ember.pools_c.Pool.attach(descriptor.sdesc)``.
"""
from .. import messages as _m
from ..descriptors import PoolDescriptor, PoolOptions
from ..exceptions import PoolError
from ._client import call as _call

__all__ = ["create", "get_list", "query", "destroy", "default",
           "PoolDescriptor", "PoolOptions", "PoolError"]


def _ident(identifier):
    if isinstance(identifier, bool) or not isinstance(identifier, (int, str)):
        raise PoolError(f"pool identifier must be an int m_uid or a str name, "
                        f"not {type(identifier).__name__}")
    return identifier


def create(size, user_name=None, pool_options=None, soft=False):
    """Create a pool of ``size`` bytes (sparse: memory is used as it is
    touched); return its :class:`PoolDescriptor`.  ``soft=True`` returns
    the live pool of that name if there is one.

    Raises
    ------
    ember.PoolError
        ``size`` not a positive int, a bad ``user_name`` or option, a name
        taken by a live pool (without ``soft``), or the segment could not be
        made (larger than the free space of /dev/shm: the message names
        both sizes).
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise PoolError(f"pool size must be a positive int, got {size!r}")
    if user_name is not None and not isinstance(user_name, str):
        raise PoolError(f"user_name must be a str or None, not {type(user_name).__name__}")
    opts = PoolOptions.coerce(pool_options, "pool_options")
    return PoolDescriptor.from_dict(_call(_m.PoolCreate, size, user_name, opts.to_dict(), bool(soft)))


def get_list(names=False):
    """The m_uids of the live pools, the default pool included (the spec's
    return type); with ``names=True``, ``[(m_uid, name or None), ...]``."""
    rows = _call(_m.PoolList)
    return [(p, n) for p, n in rows] if names else [p for p, _ in rows]


def query(identifier):
    """The :class:`PoolDescriptor` of a live pool.

    Raises
    ------
    ember.PoolError
        ``identifier`` is not an int or str, or names no live pool.
    """
    return PoolDescriptor.from_dict(_call(_m.PoolQuery, _ident(identifier)))


def destroy(identifier):
    """Destroy a pool.

    Raises
    ------
    ember.PoolError
        Channels still live in it (destroy them first), it is the
        runtime's default pool, or ``identifier`` names no live pool.
    """
    return _call(_m.PoolDestroy, _ident(identifier))


def default():
    """The runtime's default pool (where channels go unless told otherwise)."""
    return PoolDescriptor.from_dict(_call(_m.PoolDefault))
