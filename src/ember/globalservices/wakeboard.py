"""The join wake board: a parked ``channel.join`` woken by the channel's
creator directly, with GS off the wake-up's path (docs/channels.md, "The
join wake board").

Why: a joiner parked in GS used to wake only when GS, itself asleep, had
woken up, decoded and checked the creator's ``ChannelRegister`` and sent
the joiner its reply: two wake-ups of sleeping processes in a row, with
cold Python in each (~550 µs on the project's VM, where one wake-up is
~50 µs).  Here the creator answers the parked joiners itself, in the same
breath as it queues the register for GS: one wake-up.

The board is one allocation in the infrastructure pool, made by GS at the
first join that waits (its descriptor reaches a process in the reply to
its next create that reserves a c_uid), with
an ember ``Lock`` (robust: a holder that dies is reported to the next
acquirer) guarding it.  It has ``N_ENTRIES`` entries, one per name hash
(``crc32(name) % N_ENTRIES``; a name whose entry holds another name, a
name longer than ``MAX_NAME`` bytes, or joiners beyond ``MAX_WAITERS``
per name simply take the path through GS).  Each entry::

    u32 state   FREE 0 | WAITING 1 | CLAIMED 2 | WOKEN 3
    u32 name length, u64 claimant p_uid, u64 claimant c_uid,
    u32 waiters listed, u32 waiters answered by the claimant,
    name (MAX_NAME bytes), then MAX_WAITERS x (u64 tag, u32 length, reply
    channel descriptor)

Who writes what (always under the lock):

- GS lists a parked joiner (tag, reply channel) of a name no channel has
  (state WAITING), unlists it when the wait ends any other way (timeout,
  cancel, its process's exit — before GS frees its reply channels, so a
  creator never writes to a freed channel), and frees the entry when the
  name is taken (a register, a create through GS).
- A creator with a c_uid reserved (the client-made create), whose name's
  entry is WAITING, in one hold of the lock -- all of it one C call,
  ``src/ember/channels_c/wakeboard.c`` (through
  ``ember.channels_c._channels._BoardPublisher``), which also makes the
  channel and packs the register: writes its p_uid and c_uid, then
  CLAIMED; queues its ``ChannelRegister`` on GS's input channel without
  waking GS (``ember_ch_send_quiet``, try-once: a full input channel puts
  the entry back and takes the path through GS); sets WOKEN and sends each
  listed joiner, on its reply channel, the channel's descriptor as a fixed
  binary record (wakeboard.h: the same tag and descriptor as GS's reply
  would carry; the joiner's receive decodes it, no msgpack on either
  side), counting each one answered (a prefix of the list).  Then it
  releases the lock and wakes GS: GS wakes last, so it does not take the
  second core from the joiner.

GS stays the authority for names: an entry exists only while its name is
free in GS's registry, and while it is CLAIMED or WOKEN GS holds back
every other request that would take that name (a register, a create) until
the claimant's register has been handled (or the claimant died), then
handles them as if they had come after it.  So the claimant's register is
always accepted, and a joiner answered from the board holds exactly what
GS's reply would have given it: GS records its reference as for any joiner
(and sends it no second reply).

Death at any point (the lock is robust; the state word is written last):

- a creator killed before CLAIMED: nothing changed.  Killed while CLAIMED
  with its register not queued: GS, at its exit, puts the entry back to
  WAITING (no register can come after the exit notice, which reaches GS
  behind anything the creator sent) and handles the requests it held back;
  the joiners stay parked in GS, none was answered.  Killed once its
  register is queued (CLAIMED or WOKEN, GS woken or not: the exit notice
  wakes it): GS handles the register, registers the channel (the node's
  shepherd adopts it, as any client-made channel, unless its reclaim of
  the dead creator's blocks came first) and answers the joiners the
  creator had not answered.  But if GS met the register while the board
  was busy (the creator stopped holding it) and handles the creator's
  exit first, the register goes with the exit (as any request of a
  process that exited): the channel is never registered, its block goes
  with the creator's; joiners not answered stay parked (the next create
  of the name answers them), one already answered holds a channel that is
  gone, as when the node's reclaim beats the adopt.
- a joiner killed while listed: GS unlists it (the exit) before it frees
  its reply channels; a joiner killed after it was answered holds a
  reference GS drops at its exit, as for any joiner.
- a joiner whose timeout runs out after a claimant answered it: GS does
  not time it out (the register is already on GS's input channel); it is
  answered by the register as usual.
- any holder killed holding the lock: the next acquirer is told
  (``OwnerDied``); the entries are consistent (each is only ever seen
  through its state word, written last), so it marks the lock consistent
  and goes on.
"""
import binascii
import os
import struct

from .. import _env
from ..exceptions import OwnerDied

__all__ = ["Board", "Busy", "HELD", "FREE", "WAITING", "CLAIMED", "WOKEN"]

FREE, WAITING, CLAIMED, WOKEN = 0, 1, 2, 3
HELD = "held"                # Board.take: another creator claimed the name
#: GS never waits for the board's lock (a try that spins a few hundred
#: nanoseconds, no sleep: a holder stopped on it must not stop GS); what
#: finds it busy is tried again every RETRY seconds.  (A creator waits up
#: to 10 ms, EMBER_WB_LOCK_WAIT_NS in wakeboard.h, then goes through GS.)
RETRY = 0.01
#: GS: how long a request that needs the board (a listed joiner's timeout,
#: a create or register of a listed name) is tried again while the lock
#: stays busy, before it gets its answer without the board: the joiner is
#: timed out, the create or register refused with ChannelBusy
#: (docs/channels.md).  EMBER_WB_BUSY_GRACE sets it (docs/user-guide.md):
#: longer where a creator may stay descheduled that long holding the lock
#: (an oversubscribed machine); ``ember run`` refuses a bad value, so GS
#: never sees one.
try:
    BUSY_GRACE = _env.seconds(_env.WB_BUSY_GRACE, 1.0)
except ValueError:
    BUSY_GRACE = 1.0


class Busy(Exception):
    """The board's lock was busy (a holder is in it, perhaps stopped)."""

N_ENTRIES = 64
ENTRY = 1024
MAX_NAME = 96
MAX_WAITERS = 5
_R_MAX = 160                 # room for a reply channel's descriptor (152 bytes today)
_HDR = 64                    # u64 magic, i64 default m_uid, i64 node
_MAGIC = 0x42574b414d424d45  # "EMBMAKWB"
_E_HEAD = struct.Struct("<IIQQII")       # state, name len, p_uid, c_uid, listed, answered
_W_HEAD = struct.Struct("<QI")           # tag, descriptor length
_W_SIZE = 8 + 4 + 4 + _R_MAX             # (padded to 8)
_NAME_OFF = 32
_W_OFF = _NAME_OFF + MAX_NAME
assert _W_OFF + MAX_WAITERS * _W_SIZE <= ENTRY
SIZE = _HDR + N_ENTRIES * ENTRY


def _index(name_b):
    return binascii.crc32(name_b) % N_ENTRIES


class _Held:
    """What :meth:`Board._held` returns: gives the entry, releases the lock."""

    __slots__ = ("lock", "entry")

    def __init__(self, lock, entry):
        self.lock, self.entry = lock, entry

    def __enter__(self):
        return self.entry

    def __exit__(self, *exc):
        self.lock.release()


class Board:
    """One process's handle of the board (see the module docstring)."""

    __slots__ = ("lock", "alloc", "mem", "default_m_uid", "node", "lock_alloc")

    # Tests only: a creator stops itself (SIGSTOP) at this point of its
    # publish (wakeboard.c), for the test to SIGKILL it there: "created"
    # (the channel made, the board not touched), "claimed", "queued" (its
    # register queued, nobody answered), "answered" (after the first
    # joiner's reply).
    TEST_STOP = {"claimed": 1, "queued": 2, "answered": 3, "created": 4, "woken": 5}.get(
        os.environ.get("EMBER_TEST_WAKEBOARD_STOP", ""), 0)

    def __init__(self, lock, alloc, lock_alloc=None):
        self.lock, self.alloc, self.lock_alloc = lock, alloc, lock_alloc
        self.mem = memoryview(alloc)
        magic, self.default_m_uid, self.node = struct.unpack_from("<Qqq", self.mem, 0)
        if magic != _MAGIC:
            raise ValueError("not a join wake board")

    @classmethod
    def make(cls, pool, default_m_uid, node):
        """GS: a new board in ``pool`` (its memory all zeros: every entry FREE)."""
        from ..sync_c._sync import Lock
        lock = Lock(pool=pool)
        try:
            alloc = pool.alloc(SIZE)
        except BaseException:
            lock.destroy()
            raise
        mem = memoryview(alloc)
        mem[:SIZE] = bytes(SIZE)
        struct.pack_into("<Qqq", mem, 0, _MAGIC, -1 if default_m_uid is None else default_m_uid,
                         node)
        mem.release()
        return cls(lock, alloc)

    def descriptor(self):
        """What a client needs to attach it: ``[lock kind, lock
        descriptor, table descriptor]`` (plain data for a message)."""
        _, (_, kind, lock_sdesc, _) = self.lock.__reduce__()
        return [kind, lock_sdesc, self.alloc.sdesc]

    @classmethod
    def attach(cls, desc):
        from ..pools_c import Allocation
        from ..sync_c._sync import Lock, _attach
        kind, lock_sdesc, sdesc = desc
        # (the lock's block too: the creator's publish takes the lock in C)
        return cls(_attach(Lock, kind, lock_sdesc, None), Allocation.attach(sdesc),
                   Allocation.attach(lock_sdesc))

    def close(self, destroy=False):
        self.mem.release()
        if destroy:
            self.lock.destroy()
            self.alloc.free()

    # ------------------------------------------------------------ the lock
    def _acquire(self):
        """GS: take the lock if it is free (or its holder died) or frees
        within a short spin; False if it is busy.  Never sleeps: a holder
        stopped, e.g. by SIGSTOP, must not stop GS (every caller has a way
        round a busy board)."""
        try:
            return self.lock.acquire(timeout=0)
        except OwnerDied:
            # The holder died: every entry is still consistent (its state
            # word is written last, its answered count after each reply),
            # so there is nothing to repair.
            self.lock.consistent()
            return True

    def _held(self, name):
        """GS: ``with self._held(name) as (name_b, off, head):`` the lock
        held (Busy if it is busy) and ``name``'s entry read (see
        :meth:`_entry`); the lock is released on the way out."""
        name_b = name.encode("utf-8", "surrogatepass")
        if not self._acquire():
            raise Busy("the join wake board's lock is busy")
        try:
            return _Held(self.lock, self._entry(name_b))
        except BaseException:
            self.lock.release()
            raise

    def _entry(self, name_b):
        """``(name_b, offset of its entry, the entry's head)``; the head is
        None if the entry holds another name."""
        off = _HDR + _index(name_b) * ENTRY
        head = _E_HEAD.unpack_from(self.mem, off)
        if head[0] != FREE and bytes(self.mem[off + _NAME_OFF:off + _NAME_OFF + head[1]]) != name_b:
            return name_b, off, None
        return name_b, off, head

    def _waiters(self, off, n):
        out = []
        for k in range(n):
            w = off + _W_OFF + k * _W_SIZE
            tag, ln = _W_HEAD.unpack_from(self.mem, w)
            out.append((tag, bytes(self.mem[w + 16:w + 16 + ln])))
        return out

    def _set_waiters(self, off, ws):
        for k, (tag, r) in enumerate(ws):
            w = off + _W_OFF + k * _W_SIZE
            _W_HEAD.pack_into(self.mem, w, tag, len(r))
            self.mem[w + 16:w + 16 + len(r)] = r

    # ------------------------------------------------------------------ GS
    # Each raises Busy when the lock stayed busy (the caller retries later
    # or takes the path through GS).

    def listen(self, name, tag, r):
        """GS: list a parked joiner of ``name``; False if it cannot be (the
        name, its entry or the reply channel does not fit: GS answers it)."""
        if not 0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME or len(r) > _R_MAX:
            return False
        with self._held(name) as (name_b, off, head):
            if head is None:
                return False
            state, _, p_uid, c_uid, n, answered = head
            if n >= MAX_WAITERS:
                return False
            if state == FREE:
                self.mem[off + _NAME_OFF:off + _NAME_OFF + len(name_b)] = name_b
                p_uid = c_uid = answered = 0
            self._set_waiters(off, self._waiters(off, n) + [(tag, r)])
            _E_HEAD.pack_into(self.mem, off, state or WAITING, len(name_b), p_uid, c_uid, n + 1,
                              answered)
            return True

    def unlisten(self, name, tag, r):
        """GS: a listed joiner's wait ended otherwise (timeout, cancel,
        exit): unlist it.  Returns True if a claimant had answered it."""
        with self._held(name) as (name_b, off, head):
            if head is None or head[0] == FREE:
                return False
            state, ln, p_uid, c_uid, n, answered = head
            ws = self._waiters(off, n)
            try:
                k = ws.index((tag, r))
            except ValueError:
                return False
            was_answered = state == WOKEN and k < answered
            del ws[k]
            if k < answered:
                answered -= 1
            self._set_waiters(off, ws)
            if state == WAITING and not ws:
                state = FREE
            _E_HEAD.pack_into(self.mem, off, state, ln, p_uid, c_uid, len(ws), answered)
            return was_answered

    def answered(self, name, tag, r):
        """GS: whether a claimant has answered this listed joiner."""
        with self._held(name) as (name_b, off, head):
            if head is None or head[0] != WOKEN:
                return False
            return (tag, r) in self._waiters(off, head[5])

    def take(self, name, mine, alive):
        """GS: a request (a register by ``mine`` = (p_uid, c_uid), or None)
        is about to take ``name``.  Returns HELD if another creator, alive
        (``alive(p_uid)``), claimed the name (the request waits for that
        creator's register); else frees the entry and returns the joiners a
        claimant answered (``{(tag, r)}``: the claimant's register)."""
        with self._held(name) as (name_b, off, head):
            if head is None or head[0] == FREE:
                return set()
            state, _, p_uid, c_uid, _, answered = head
            if state in (CLAIMED, WOKEN) and (p_uid, c_uid) != mine and alive(p_uid):
                return HELD
            done = set(self._waiters(off, answered)) if state == WOKEN and \
                (p_uid, c_uid) == mine else set()
            _E_HEAD.pack_into(self.mem, off, FREE, 0, 0, 0, 0, 0)
            return done

    def drop_claims(self, p_uid):
        """GS: process ``p_uid`` exited: every entry it claimed goes back
        to WAITING (FREE if nobody is listed), in one hold of the lock and
        one scan of the entries.  Returns ``{name: the state it had
        claimed (CLAIMED or WOKEN)}``."""
        if not self._acquire():
            raise Busy("the join wake board's lock is busy")
        try:
            mem, dropped = self.mem, {}
            for off in range(_HDR, _HDR + N_ENTRIES * ENTRY, ENTRY):
                state, ln, owner, _, n, _ = _E_HEAD.unpack_from(mem, off)
                if state in (CLAIMED, WOKEN) and owner == p_uid:
                    name = bytes(mem[off + _NAME_OFF:off + _NAME_OFF + ln])
                    _E_HEAD.pack_into(mem, off, WAITING if n else FREE, ln, 0, 0, n, 0)
                    dropped[name.decode("utf-8", "surrogatepass")] = state
            return dropped
        finally:
            self.lock.release()

    def claimed_by(self, name, mine):
        """GS, without the lock: whether ``name``'s entry is claimed by
        ``mine`` = (p_uid, c_uid), i.e. a register GS holds is the
        claimant's own.  Sound without the lock: the claimant wrote its
        claim before it queued that register (the channel's receive
        orders them), and only GS changes a claimed entry afterwards (a
        creator claims only a WAITING one)."""
        _, off, head = self._entry(name.encode("utf-8", "surrogatepass"))
        return head is not None and head[0] in (CLAIMED, WOKEN) and (head[2], head[3]) == mine

    def holder(self):
        """The pid of the lock's holder (0: free): for messages."""
        return self.lock._state()[0]
