# cython: language_level=3
"""Raw C declarations of ember's pool API and the cdef classes that own its
objects, for other extensions to cimport::

    from ember.pools_c._pools cimport Pool, Allocation, ember_pool_t, ember_alloc_t

``Pool._pool`` is the ``ember_pool_t *`` (NULL once detached/destroyed: call
``pool._check_open()`` first, it raises PoolError).  ``Allocation._a`` is the
``ember_alloc_t`` and ``Allocation._owner`` its Pool.  ``Allocation._disown()``
marks the Python object as no longer owning the block (without freeing it):
after that every use of the object raises PoolError.  ``allocation_from_c()``
wraps a received ``ember_alloc_t`` (already checked by ``ember_pool_check``)
into an owning Allocation.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t


cdef extern from "ember_common.h" nogil:
    ctypedef int ember_rc_t
    enum:
        EMBER_OK
        EMBER_ERR_INVALID_ARG
        EMBER_ERR_NOMEM
        EMBER_ERR_OS
        EMBER_ERR_NOT_FOUND
        EMBER_ERR_BAD_DESCRIPTOR
        EMBER_ERR_BAD_MAGIC
        EMBER_ERR_VERSION
        EMBER_ERR_OUT_OF_RANGE
        EMBER_ERR_EXHAUSTED
        EMBER_ERR_DOUBLE_FREE
        EMBER_ERR_STALE
        EMBER_ERR_CORRUPT
        EMBER_ERR_FULL
        EMBER_ERR_EMPTY
        EMBER_ERR_TIMEOUT
        EMBER_ERR_TOO_BIG
        EMBER_ERR_DESTROYED
        EMBER_ERR_INTERRUPTED
        EMBER_ERR_BUFFER_TOO_SMALL
        EMBER_ERR_LOCK_STUCK
    const char *ember_rc_str(int rc)


cdef extern from "pool.h" nogil:
    enum:
        EMBER_POOL_ALIGN
        EMBER_POOL_NAME_MAX
        EMBER_POOL_LABEL_MAX
        EMBER_POOL_SDESC_SIZE
        EMBER_ALLOC_SDESC_SIZE
        EMBER_POOL_COMMIT_FULL
        EMBER_ALLOC_OWNED
        EMBER_ALLOC_NO_FREE_WAIT
        EMBER_POOL_LOCK_BOUND_NS

    ctypedef struct ember_pool_t:
        pass

    ctypedef struct ember_alloc_t:
        uint64_t offset
        uint64_t size
        uint64_t id

    ctypedef struct ember_pool_stats_t:
        uint64_t total
        uint64_t free
        uint64_t largest_free
        uint64_t live_allocs
        uint64_t committed

    ember_rc_t ember_pool_create(uint64_t size, uint64_t m_uid, const char *owner_tag,
                                 const char *label, ember_pool_t **out)
    ember_rc_t ember_pool_create_ex(uint64_t size, uint64_t m_uid, const char *owner_tag,
                                    const char *label, unsigned flags, ember_pool_t **out)
    void ember_pool_set_lock_bound(int64_t ns)
    void ember_pool_after_clone()
    int64_t ember_pool_lock_bound()
    uint32_t ember_pool_lock_owner(const ember_pool_t *pool)
    ember_rc_t ember_pool_attach(const void *sdesc, size_t len, ember_pool_t **out)
    ember_rc_t ember_pool_serialize(const ember_pool_t *pool, void *buf, size_t cap, size_t *len)
    ember_rc_t ember_pool_detach(ember_pool_t *pool)
    ember_rc_t ember_pool_destroy(ember_pool_t *pool)
    ember_rc_t ember_pool_unlink_name(const char *shm_name)
    ember_rc_t ember_pool_alloc(ember_pool_t *pool, uint64_t size, ember_alloc_t *out)
    ember_rc_t ember_pool_alloc_wait(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                                     ember_alloc_t *out)
    ember_rc_t ember_pool_alloc_ex(ember_pool_t *pool, uint64_t size, int64_t timeout_ns,
                                   unsigned flags, ember_alloc_t *out)
    ember_rc_t ember_pool_free(ember_pool_t *pool, const ember_alloc_t *a)
    ember_rc_t ember_pool_free_ex(ember_pool_t *pool, const ember_alloc_t *a, int64_t lock_timeout_ns)
    ember_rc_t ember_pool_check(ember_pool_t *pool, const ember_alloc_t *a)
    ember_rc_t ember_pool_check_ex(ember_pool_t *pool, const ember_alloc_t *a, int64_t lock_timeout_ns)
    ember_rc_t ember_pool_set_owner(ember_pool_t *pool, const ember_alloc_t *a, uint32_t pid)
    ember_rc_t ember_pool_reclaim(ember_pool_t *pool, uint32_t pid, uint64_t *nblocks, uint64_t *nbytes)
    void *ember_pool_ptr(const ember_pool_t *pool, uint64_t offset)
    ember_rc_t ember_pool_stats(ember_pool_t *pool, ember_pool_stats_t *out)
    ember_rc_t ember_pool_stats_ex(ember_pool_t *pool, ember_pool_stats_t *out, int64_t lock_timeout_ns)
    uint64_t ember_pool_m_uid(const ember_pool_t *pool)
    uint64_t ember_pool_size(const ember_pool_t *pool)
    const char *ember_pool_shm_name(const ember_pool_t *pool)
    const char *ember_pool_label(const ember_pool_t *pool)
    uint32_t *ember_pool_event_word(const ember_pool_t *pool)      # _Atomic uint32_t *
    uint32_t *ember_pool_event_waiters(const ember_pool_t *pool)   # _Atomic uint32_t *
    ember_rc_t ember_alloc_serialize(const ember_pool_t *pool, const ember_alloc_t *a,
                                     void *buf, size_t cap, size_t *len)
    ember_rc_t ember_alloc_parse(const void *sdesc, size_t len,
                                 const uint8_t **pool_sdesc, size_t *pool_sdesc_len,
                                 ember_alloc_t *out)
    ember_rc_t ember_pool_sdesc_name(const void *sdesc, size_t len, char *buf, size_t cap)
    ember_rc_t ember_pool_validate(ember_pool_t *pool)
    ember_rc_t ember_pool_debug_lock(ember_pool_t *pool)
    ember_rc_t ember_pool_debug_unlock(ember_pool_t *pool)
    ember_rc_t ember_pool_next_alloc(ember_pool_t *pool, uint64_t *cursor, ember_alloc_t *out)
    uint64_t ember_pool_repair_count(ember_pool_t *pool)


cdef class Pool:
    cdef ember_pool_t *_pool
    cdef bint _created          # made by Pool.create (owner: destroy on __exit__)
    cdef bint _implicit         # attached by Allocation.attach (process cache)
    cdef bint _left             # its runtime left while it could not be unmapped (_leave)
    cdef int _owner_pid         # the process that made this handle (fork: a child's copy is not its own)
    cdef Py_ssize_t _exports    # buffers exported by this pool's Allocations
    cdef Py_ssize_t _busy       # threads waiting in alloc(timeout != 0)
    cdef str _shm_name
    cdef str _label
    cdef uint64_t _m_uid
    cdef uint64_t _size
    cdef object __weakref__

    @staticmethod
    cdef Pool _wrap(ember_pool_t *p, bint created, bint implicit)
    cdef int _check_open(self) except -1
    cdef int _check_closable(self, str what) except -1
    cdef _forget(self)
    cdef _alloc_error(self, ember_rc_t rc, Py_ssize_t nbytes, timeout)
    cdef str _desc(self)
    cdef int _lock_error(self, ember_rc_t rc, str what) except -1


cdef class Allocation:
    cdef ember_alloc_t _a
    cdef Pool _owner
    cdef int _state             # 0 open, 1 freed, 2 disowned, 3 being sent (channels)
    cdef Py_ssize_t _exports
    cdef bint _owned            # the C block records this process as its owner

    cdef int _check_open(self, str what) except -1
    cdef str _what(self)
    cpdef _disown(self)
    cdef int _unown(self) except -1


cdef Allocation allocation_from_c(Pool owner, ember_alloc_t a)
cdef int check_rc(ember_rc_t rc, str what, Pool pool=*) except -1
