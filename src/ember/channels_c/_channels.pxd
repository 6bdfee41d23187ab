# cython: language_level=3
"""Raw C declarations of ember's channel API (channel.h) and the cdef class
that owns a channel handle, for other extensions to cimport::

    from ember.channels_c._channels cimport Channel, ember_ch_t

``Channel._ch`` is the ``ember_ch_t *`` (NULL once detached/destroyed) and
``Channel._pool`` the :class:`ember.pools_c.Pool` it lives in.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from ember.pools_c._pools cimport Pool, Allocation, ember_pool_t, ember_alloc_t, ember_rc_t


cdef extern from "channel.h" nogil:
    enum:
        EMBER_ERR_CLOSED            # ember_common.h (the pools binding does not declare it)
        EMBER_CH_SDESC_SIZE
        EMBER_CH_SLOT_HEADER
        EMBER_CH_MIN_BLOCK
        EMBER_CH_MAX_BLOCK
        EMBER_CH_MAX_CAPACITY
        EMBER_CH_DEFAULT_CAPACITY
        EMBER_CH_DEFAULT_BLOCK
        EMBER_CH_DEFAULT_SPIN_NS

    ctypedef struct ember_ch_t:
        pass

    ctypedef struct ember_ch_msg_t:
        const void *data
        uint64_t len
        int is_alloc
        ember_alloc_t alloc

    ember_rc_t ember_ch_create(ember_pool_t *pool, uint64_t c_uid, uint32_t capacity,
                               uint32_t block_size, ember_ch_t **out)
    ember_rc_t ember_ch_create_ex(ember_pool_t *pool, uint64_t c_uid, uint32_t capacity,
                                  uint32_t block_size, unsigned flags, ember_ch_t **out)
    const ember_alloc_t *ember_ch_alloc(const ember_ch_t *ch)
    ctypedef struct ember_ch_reserved_t:
        ember_alloc_t alloc
        uint32_t capacity, block_size
    ember_rc_t ember_ch_reserve(ember_pool_t *pool, uint32_t capacity, uint32_t block_size,
                                unsigned flags, ember_ch_reserved_t *out)
    ember_rc_t ember_ch_create_reserved(ember_pool_t *pool, const ember_ch_reserved_t *r,
                                        uint64_t c_uid, ember_ch_t **out)
    ember_rc_t ember_ch_unreserve(ember_pool_t *pool, const ember_ch_reserved_t *r)
    ctypedef struct ember_ch_sdesc_info_t:
        uint64_t offset, id, size, c_uid
        uint32_t capacity, block_size
    ember_rc_t ember_ch_sdesc_info(const void *sdesc, size_t len, ember_ch_sdesc_info_t *out)
    ember_rc_t ember_ch_sdesc_pool(const void *sdesc, size_t len,
                                   const uint8_t **pool_sdesc, size_t *pool_sdesc_len)
    ember_rc_t ember_ch_attach(ember_pool_t *pool, const void *sdesc, size_t len, ember_ch_t **out)
    ember_rc_t ember_ch_serialize(const ember_ch_t *ch, void *buf, size_t cap, size_t *len)
    ember_rc_t ember_ch_detach(ember_ch_t *ch)
    ember_rc_t ember_ch_destroy(ember_ch_t *ch)
    ember_rc_t ember_ch_destroy_last(ember_ch_t *ch)
    void ember_ch_debug_handover_pause(int64_t ns)
    void ember_ch_debug_claim_pause(int64_t ns)
    void ember_ch_after_clone()
    ember_rc_t ember_ch_close(ember_ch_t *ch)
    int ember_ch_is_closed(const ember_ch_t *ch)
    ember_rc_t ember_ch_send(ember_ch_t *ch, const void *data, uint64_t len, int64_t timeout_ns)
    ember_rc_t ember_ch_send_quiet(ember_ch_t *ch, const void *data, uint64_t len)
    ember_rc_t ember_ch_notify(ember_ch_t *ch)
    ember_rc_t ember_ch_send_alloc(ember_ch_t *ch, const ember_alloc_t *a, int64_t timeout_ns)
    ember_rc_t ember_ch_recv_begin(ember_ch_t *ch, int64_t timeout_ns, int64_t max_len,
                                   ember_ch_msg_t *msg)
    ember_rc_t ember_ch_recv_end(ember_ch_t *ch, ember_ch_msg_t *msg)
    ember_rc_t ember_ch_recv_take(ember_ch_t *ch, ember_ch_msg_t *msg)
    ember_rc_t ember_ch_recv(ember_ch_t *ch, void *buf, uint64_t cap, uint64_t *len,
                             int64_t timeout_ns)
    ember_rc_t ember_ch_poll(ember_ch_t *ch, int writable, int64_t timeout_ns)
    ember_rc_t ember_ch_wait_any(ember_ch_t *const *chs, size_t n, int writable,
                                 int64_t timeout_ns, uint8_t *ready, size_t *nready)
    uint64_t ember_ch_count(const ember_ch_t *ch)
    ember_rc_t ember_ch_wait_below(ember_ch_t *ch, uint64_t n, int64_t timeout_ns)
    uint32_t ember_ch_capacity(const ember_ch_t *ch)
    uint32_t ember_ch_block_size(const ember_ch_t *ch)
    uint32_t ember_ch_payload_size(const ember_ch_t *ch)
    uint64_t ember_ch_c_uid(const ember_ch_t *ch)
    void ember_ch_set_spin(ember_ch_t *ch, int64_t spin_ns)
    void ember_ch_set_spin_range(ember_ch_t *ch, int64_t min_ns, int64_t max_ns)


cdef class Channel:
    cdef ember_ch_t *_ch
    cdef Pool _pool
    cdef bint _created
    cdef int _owner_pid             # the process that made this handle (fork: a child's copy is not its own)
    cdef uint64_t _payload
    cdef uint64_t _c_uid
    cdef uint32_t _capacity
    cdef uint32_t _block_size
    cdef Py_ssize_t _busy           # calls of this handle blocked with the GIL released
    cdef public object _direct      # the direct path's receive (ember.transport.route), or None
    cdef object __weakref__

    @staticmethod
    cdef Channel _wrap(ember_ch_t *ch, Pool pool, bint created)
    cdef int _check_open(self, str what) except -1
    cdef int _check_idle(self, str what) except -1
    cdef str _desc(self)
    cdef int _send_error(self, ember_rc_t rc, Py_ssize_t n, timeout) except -1
    cdef int _send_wait(self, const char *p, Py_ssize_t n, int64_t tmo) except -1
    cdef int _send_alloc_wait(self, ember_alloc_t *a, int64_t deadline, Py_ssize_t n, timeout) except -1
    cdef int _send_allocation(self, Allocation al, timeout) except -1
    cdef ember_rc_t _recv_wait(self, ember_ch_msg_t *m, int64_t max_len, timeout) except -1
    cdef int _recv_claim(self, ember_ch_msg_t *m, int64_t max_len, timeout) except -1
    cdef object _msg_bytes_end(self, ember_ch_msg_t *m)
    cdef object _recv_join(self, uint64_t tag, object desc, bytes sdesc, str name,
                           const char *u, Py_ssize_t ul)
