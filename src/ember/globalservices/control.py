"""The runtime's private control plane.

A small pool that only the launcher, global services (GS) and the node's
shepherd map, holding two channels: the shepherd's input (GS -> shepherd:
``ShSpawn``, ``ShKill``, ``ShShutdown``) and GS's control input (shepherd ->
GS: ``ShSpawned``, ``ShExited``, ``ShShutdownDone``).  Its descriptors are
never put in a managed process's environment; GS accepts the shepherd's
message types only from the control input.  GS blocks on its public input
channel, so whoever puts a message on the control input then sends
:data:`ember.messages.POKE` to the public one (see docs/architecture.md,
"Trust model").

The launcher makes one with :meth:`ControlPlane.create` before it forks GS
and the shepherd (they inherit the mapped objects), and destroys it last.
"""
import os

__all__ = ["ControlPlane", "CONTROL_M_UID"]

#: m_uid of the control pool (GS numbers the pools it makes from 2 up).
CONTROL_M_UID = (1 << 63) - 2
_POOL_SIZE = 16 << 20         # sparse: only touched pages cost memory
_CAPACITY = 256
_BLOCK = 512


class ControlPlane:
    """The control pool, its two channels and the launcher's request key.

    Attributes: ``pool``, ``to_shepherd`` (the shepherd's input channel),
    ``to_gs`` (GS's control input channel), ``launcher_key`` (16 random
    bytes, a bytearray: the key of p_uid 0, which only the launcher's
    requests carry).
    """

    def __init__(self, pool, to_shepherd, to_gs, launcher_key):
        self.pool, self.to_shepherd, self.to_gs = pool, to_shepherd, to_gs
        self.launcher_key = launcher_key

    @classmethod
    def create(cls, owner_tag):
        from ..channels_c import Channel
        from ..pools_c import Pool

        pool = Pool.create(_POOL_SIZE, name="ember-control", m_uid=CONTROL_M_UID,
                           owner_tag=owner_tag)
        try:
            to_sh = Channel.create(pool, capacity=_CAPACITY, block_size=_BLOCK)
            to_gs = Channel.create(pool, capacity=_CAPACITY, block_size=_BLOCK)
        except BaseException:
            pool.destroy()
            raise
        # a bytearray: a process that must not keep it (the shepherd, a
        # fork of the launcher) zeroes it in place (forget_key)
        from ..shepherd._spawn import wipe_bytes
        raw = os.urandom(16)
        key = bytearray(raw)
        wipe_bytes(raw)                  # no stale copy in freed memory
        return cls(pool, to_sh, to_gs, key)

    def forget_key(self):
        """Zero the launcher's key in this process's memory: its
        ``launcher_key`` and the ``EMBER_KEY`` the launcher put in the
        environment (os.environ's copy and the C environment's), then drop
        the variable.  For the shepherd (a fork of the launcher that makes
        no requests) and so for the ``.py`` head forked from it."""
        from .. import _env
        from ..shepherd._spawn import wipe_bytes, wipe_env_value
        self.launcher_key[:] = bytes(len(self.launcher_key))
        if _env.KEY in os.environ:
            raw = os.environ._data.get(os.environ.encodekey(_env.KEY))
            if isinstance(raw, bytes):
                wipe_bytes(raw)
            wipe_env_value(_env.KEY)
            del os.environ[_env.KEY]

    def kill(self, p_uid, sig):
        """Ask the shepherd to send ``sig`` to process ``p_uid`` (the
        launcher forwarding a signal to the head): the shepherd then counts
        it as ember's, so no death report follows.  True if the request was
        queued; False if the shepherd's channel is full or gone."""
        from .. import messages

        try:
            self.to_shepherd.send(messages.ShKill(p_uid, int(sig)).pack(), timeout=0)
        except Exception:
            return False
        return True

    def destroy(self):
        """Destroy both channels and the pool; each step independent of the
        others' failure.  Returns the list of errors (empty: all done)."""
        errors = []
        for obj in (self.to_shepherd, self.to_gs, self.pool):
            try:
                if not obj.closed:
                    obj.destroy()
            except Exception as exc:  # keep going: the pool must go anyway
                errors.append(exc)
        return errors
