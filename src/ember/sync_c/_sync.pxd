# cython: language_level=3
"""Raw C declarations of ember's synchronization objects (sync.h) and the
base cdef class that owns one, for other extensions to cimport::

    from ember.sync_c._sync cimport SyncObject, ember_lock_acquire

``SyncObject._p`` is the object's address in this process (NULL once
destroyed), ``_alloc`` the pool Allocation holding it and ``_pool`` its Pool.
"""
from libc.stdint cimport uint32_t, uint64_t, int64_t
from ember.pools_c._pools cimport Pool, Allocation, ember_rc_t


cdef extern from "sync.h" nogil:
    void ember_sync_after_clone()
    enum:
        EMBER_SYNC_OWNER_DIED
        EMBER_SYNC_NOT_OWNER
        EMBER_SYNC_OVER
        EMBER_SYNC_BROKEN
        EMBER_SYNC_LAST
        EMBER_SYNC_LOCK
        EMBER_SYNC_RLOCK
        EMBER_SYNC_SEMAPHORE
        EMBER_SYNC_EVENT
        EMBER_SYNC_BARRIER
        EMBER_SYNC_CONDITION
        EMBER_SYNC_COND_SLOTS
        EMBER_SYNC_SEM_SLOTS
        EMBER_SYNC_BARRIER_MAX
        EMBER_SYNC_BARRIER_SLOTS
        EMBER_SYNC_F_BOUNDED
        EMBER_SYNC_F_NORECLAIM
    int64_t EMBER_SYNC_CHECK_NS
    int64_t EMBER_SYNC_SEM_MAX

    size_t ember_sync_size(int kind)
    ember_rc_t ember_sync_init(void *mem, size_t size, int kind, int64_t param, uint32_t flags)
    ember_rc_t ember_sync_check(const void *mem, size_t size, int kind)
    ember_rc_t ember_sync_params(const void *mem, int64_t *param, uint32_t *flags)
    ember_rc_t ember_sync_destroy(void *mem)
    uint64_t ember_sync_self()
    int ember_sync_id_dead(uint64_t id)

    ember_rc_t ember_lock_acquire(void *mem, int64_t timeout_ns, int check_dead, uint32_t *died_pid)
    ember_rc_t ember_lock_spin_acquire(void *mem, uint32_t spins, uint32_t *died_pid)
    ember_rc_t ember_lock_release(void *mem)
    ember_rc_t ember_lock_consistent(void *mem)
    int ember_lock_locked(const void *mem)
    void ember_lock_state(const void *mem, uint64_t *holder, uint32_t *count, uint32_t *died_pid,
                          uint32_t *deaths)
    int ember_rlock_is_mine(const void *mem)

    ember_rc_t ember_sem_acquire(void *mem, int64_t timeout_ns)
    ember_rc_t ember_sem_release(void *mem, uint32_t n)
    int64_t ember_sem_value(void *mem)
    ember_rc_t ember_sem_reclaim(void *mem, uint64_t *reclaimed)

    ember_rc_t ember_event_set(void *mem)
    ember_rc_t ember_event_clear(void *mem)
    int ember_event_is_set(const void *mem)
    uint32_t ember_event_token(const void *mem)
    ember_rc_t ember_event_wait(void *mem, uint32_t token, int64_t timeout_ns)

    ember_rc_t ember_barrier_arrive(void *mem, int64_t timeout_ns, uint32_t *index, uint32_t *slot)
    ember_rc_t ember_barrier_wait(void *mem, uint32_t slot, int64_t timeout_ns)
    ember_rc_t ember_barrier_trip(void *mem, uint32_t slot, int ok)
    ember_rc_t ember_barrier_abandon(void *mem, uint32_t slot)
    ember_rc_t ember_barrier_abort(void *mem)
    ember_rc_t ember_barrier_reset(void *mem)
    void ember_barrier_state(void *mem, uint32_t *parties, uint32_t *n_waiting, int *broken)

    ember_rc_t ember_cond_enter(void *mem, uint32_t *slot)
    ember_rc_t ember_cond_wait(void *mem, uint32_t slot, int64_t timeout_ns)
    ember_rc_t ember_cond_leave(void *mem, uint32_t slot)
    ember_rc_t ember_cond_notify(void *mem, uint32_t n, uint32_t *woken)
    uint32_t ember_cond_waiting(void *mem)
    void ember_cond_counts(void *mem, uint64_t *begun, uint32_t *waiting, uint32_t *notified)


cdef class SyncObject:
    cdef void *_p
    cdef Pool _pool
    cdef Allocation _alloc
    cdef int _kind
    cdef int _owner_pid     # the process that made this handle (fork: a child's copy is not its own)
    cdef object __weakref__

    cdef int _setup(self, Allocation alloc, int kind) except -1
    cdef int _check(self) except -1
    cdef str _desc(self)
    cdef int _rc(self, ember_rc_t rc, str what) except -1
