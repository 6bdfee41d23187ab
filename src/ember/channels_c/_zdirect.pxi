# The direct path's receive in one call (included by _channels.pyx; used by
# ember/transport/direct.py, Inbox.recv; docs/multinode.md, "The direct
# path").
#
# An inbox's receive read a message with two pyzmq calls and an option
# query, then parsed its header, checked its channel, sender and sequence
# number, took it through the channel's gate and counted it for the
# acknowledgement in Python: some 30 lines between the wake-up and the
# payload in the caller's hands, while the zmq I/O thread that woke the
# receiver goes idle (this VM makes a later send that must wake it cost the
# more the longer it idled).  Here that is one C call: libzmq's own receive
# (without the GIL, where raw pyzmq's receiver waits too), then, for a
# message of the stream the caller names (its sender and channel, the next
# sequence number, the channel empty, the gate open), the take; the payload
# comes back as bytes.  Anything else (another sender, a notice, a request,
# a gap, a closed gate, a malformed message) comes back as its frames,
# untouched, for the Python path to serve as before.
#
# libzmq is the one pyzmq loaded: its functions are looked up (dlsym)
# through pyzmq's own extension module, so nothing of zmq is needed to
# build ember; without them (another pyzmq backend) _zd_init says False
# and the inbox reads in Python.

from libc.errno cimport EAGAIN, EINTR, EHOSTUNREACH

cdef extern from "dlfcn.h" nogil:
    void *dlopen(const char *filename, int flag)
    void *dlsym(void *handle, const char *symbol)
    char *dlerror()
    int RTLD_LAZY
    int RTLD_NOLOAD

cdef extern from *:
    """
    /* What a death mid-call costs: nothing beyond the direct path's own
       window.  The call reads messages from the process's own zmq socket
       (gone with the process: the senders resend what the record says was
       not taken) and, for a take, stores one sequence number in the
       process's record through its gate (ember_gate_take: a SIGKILL
       between that store and the caller's return loses that one message,
       as a local recv killed after its claim does; docs/multinode.md).  It
       holds no lock and writes no other shared memory. */
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    #include <errno.h>

    /* zmq_msg_t of libzmq 4.x: 64 opaque bytes, pointer-aligned */
    typedef struct { _Alignas(8) unsigned char b[64]; } ember_zmsg_t;

    static struct {
        int (*msg_init)(ember_zmsg_t *);
        int (*msg_init_size)(ember_zmsg_t *, size_t);
        int (*msg_recv)(ember_zmsg_t *, void *, int);
        int (*msg_send)(ember_zmsg_t *, void *, int);
        void *(*msg_data)(ember_zmsg_t *);
        size_t (*msg_size)(const ember_zmsg_t *);
        int (*msg_more)(const ember_zmsg_t *);
        int (*msg_close)(ember_zmsg_t *);
        int (*zerrno)(void);
    } ember_zd;

    #define EMBER_ZD_DONTWAIT 1      /* ZMQ_DONTWAIT */
    #define EMBER_ZD_HDR 17          /* direct.DIRECT_HDR: "D", c_uid, seq (little-endian) */
    #define EMBER_ZD_LEN 4           /* a batch's record: its length (u32, little-endian), the message */

    /* A batch ("B", c_uid, the first message's seq, then records from
       offset `off`) is whole: its records end exactly at its end.  The
       number of records, or 0 if it is malformed. */
    static inline size_t ember_zd_batch_ok(const unsigned char *p, size_t n, size_t off) {
        size_t count = 0;
        while (off < n) {
            uint32_t len;
            if (n - off < EMBER_ZD_LEN)
                return 0;
            memcpy(&len, p + off, EMBER_ZD_LEN);
            off += EMBER_ZD_LEN;
            if (len > n - off)
                return 0;
            off += len;
            count++;
        }
        return count;
    }

    /* A (sender, channel) stream of an inbox (ember.transport.direct):
       where its takes go and how far it was taken and acknowledged. */
    typedef struct {
        uint64_t c_uid;
        uint64_t *cell;              /* its record cell (the last seq taken) */
        uint64_t *gate;              /* the channel's take gate, or NULL */
        uint64_t last, acked, due;   /* last taken; last acknowledged; bytes since */
        uint64_t ack_every, ack_bytes;
        uint32_t sender_len;
        int ack_due;                 /* the last take reached an acknowledgement */
        unsigned char sender[16];
    } ember_zd_stream_t;

    static inline uint64_t ember_zd_u64(const unsigned char *p) {
        uint64_t v;
        memcpy(&v, p, 8);            /* x86-64 / aarch64 Linux: little-endian */
        return v;
    }

    /* Take message `seq` (`nbytes` of payload) of stream `s`: through the
       gate (0 if it is closed: nothing stored), the record, the count;
       sets ack_due.  1 when taken. */
    static inline int ember_zd_take(ember_zd_stream_t *s, uint64_t seq, uint64_t nbytes) {
        if (s->gate != NULL) {
            if (!ember_gate_take(s->gate, s->cell, seq))
                return 0;
        } else {
            /* relaxed: an ungated cell has no reader while this lives
               (pairs with nothing) */
            __atomic_store_n(s->cell, seq, __ATOMIC_RELAXED);
        }
        s->last = seq;
        s->due += nbytes + 1;
        s->ack_due = seq - s->acked >= s->ack_every || s->due >= s->ack_bytes;
        return 1;
    }

    /* Read one message of ROUTER socket `sock` into m1 (the sender) and m2
       (the first frame after it).  Returns 1: m2 is the next message of
       stream `s` (may be NULL), taken: its record stored, counted; 2: m2 is
       a whole batch of stream `s` whose first message is the next one, and
       that first message was taken (its payload at offset EMBER_ZD_HDR +
       EMBER_ZD_LEN; the rest is the caller's to hold); 0: read,
       not taken (the caller serves m1 and m2; *more: frames follow m2);
       -1: no message (EAGAIN: the receive timed out, or flags had
       DONTWAIT); -2: interrupted (EINTR: the caller checks signals and
       calls again); -3: another zmq error (*err).  On 1 and 0 the caller
       closes m1 and m2; otherwise nothing is held.  `ready(ch)`: 1 if the
       channel has a message (or is closed and drained): then nothing is
       taken here (the channel first).  Called without the GIL. */
    static int ember_zd_recv(void *sock, int flags, ember_zd_stream_t *s,
                             int (*ready)(void *), void *ch,
                             ember_zmsg_t *m1, ember_zmsg_t *m2, int *more, int *err) {
        *more = 0;
        ember_zd.msg_init(m1);
        if (ember_zd.msg_recv(m1, sock, flags) < 0) {
            int e = ember_zd.zerrno();
            ember_zd.msg_close(m1);
            *err = e;
            return e == EAGAIN ? -1 : e == EINTR ? -2 : -3;
        }
        ember_zd.msg_init(m2);
        if (ember_zd.msg_more(m1) &&
                ember_zd.msg_recv(m2, sock, EMBER_ZD_DONTWAIT) >= 0)   /* (parts come together) */
            *more = ember_zd.msg_more(m2);
        if (s == NULL || *more)
            return 0;
        size_t n = ember_zd.msg_size(m2);
        const unsigned char *p = (const unsigned char *)ember_zd.msg_data(m2);
        if (n < EMBER_ZD_HDR || (p[0] != 'D' && p[0] != 'B') || ember_zd_u64(p + 1) != s->c_uid)
            return 0;
        if (ember_zd.msg_size(m1) != s->sender_len ||
                memcmp(ember_zd.msg_data(m1), s->sender, s->sender_len) != 0)
            return 0;
        uint64_t seq = ember_zd_u64(p + 9);
        if (seq != s->last + 1 || ready(ch))
            return 0;
        if (p[0] == 'D')
            return ember_zd_take(s, seq, n - EMBER_ZD_HDR);  /* 0: revoked, the Python path closes the route */
        if (ember_zd_batch_ok(p, n, EMBER_ZD_HDR) == 0)
            return 0;                    /* malformed (or empty): the Python path drops it */
        uint32_t len;
        memcpy(&len, p + EMBER_ZD_HDR, EMBER_ZD_LEN);
        return ember_zd_take(s, seq, len) ? 2 : 0;
    }
    """
    ctypedef struct ember_zmsg_t:
        pass
    ctypedef struct ember_zd_stream_t:
        uint64_t c_uid
        uint64_t *cell
        uint64_t *gate
        uint64_t last, acked, due, ack_every, ack_bytes
        uint32_t sender_len
        int ack_due
        unsigned char sender[16]
    int EMBER_ZD_HDR
    int EMBER_ZD_LEN
    int EMBER_ZD_DONTWAIT
    size_t ember_zd_batch_ok(const unsigned char *p, size_t n, size_t off) nogil
    void *ember_zd_msg_data "ember_zd.msg_data"(ember_zmsg_t *) nogil
    size_t ember_zd_msg_size "ember_zd.msg_size"(const ember_zmsg_t *) nogil
    int ember_zd_msg_close "ember_zd.msg_close"(ember_zmsg_t *) nogil
    int ember_zd_recv(void *sock, int flags, ember_zd_stream_t *s, int (*ready)(void *) noexcept nogil,
                      void *ch, ember_zmsg_t *m1, ember_zmsg_t *m2, int *more, int *err) nogil
    int _zd_set "ember_zd_set"(void *h) nogil
    int ember_zd_take(ember_zd_stream_t *s, uint64_t seq, uint64_t nbytes) nogil


cdef extern from *:
    """
    /* libzmq's functions, from the library of handle h (dlopen of pyzmq's
       extension module: dlsym searches its dependencies, libzmq among
       them); 1 when all were found and the library is libzmq 4.x. */
    #include <dlfcn.h>
    static int ember_zd_set(void *h) {
        void (*version)(int *, int *, int *) = (void (*)(int *, int *, int *))dlsym(h, "zmq_version");
        int major = 0, minor = 0, patch = 0;
        if (version == NULL)
            return 0;
        version(&major, &minor, &patch);
        if (major != 4)
            return 0;
        *(void **)&ember_zd.msg_init = dlsym(h, "zmq_msg_init");
        *(void **)&ember_zd.msg_init_size = dlsym(h, "zmq_msg_init_size");
        *(void **)&ember_zd.msg_recv = dlsym(h, "zmq_msg_recv");
        *(void **)&ember_zd.msg_send = dlsym(h, "zmq_msg_send");
        *(void **)&ember_zd.msg_data = dlsym(h, "zmq_msg_data");
        *(void **)&ember_zd.msg_size = dlsym(h, "zmq_msg_size");
        *(void **)&ember_zd.msg_more = dlsym(h, "zmq_msg_more");
        *(void **)&ember_zd.msg_close = dlsym(h, "zmq_msg_close");
        *(void **)&ember_zd.zerrno = dlsym(h, "zmq_errno");
        if (!ember_zd.msg_init || !ember_zd.msg_init_size || !ember_zd.msg_recv ||
                !ember_zd.msg_send || !ember_zd.msg_data || !ember_zd.msg_size ||
                !ember_zd.msg_more || !ember_zd.msg_close || !ember_zd.zerrno) {
            ember_zd.msg_init = NULL;
            return 0;
        }
        return 1;
    }
    """


cdef bint _zd_ok = False


def _zd_init(path):
    """Look up libzmq's functions through the library at ``path`` (pyzmq's
    loaded extension module); True when :func:`_zd_recv` can be used."""
    global _zd_ok
    if _zd_ok:
        return True
    cdef bytes p = os.fsencode(path)
    cdef void *h = dlopen(p, RTLD_LAZY | RTLD_NOLOAD)       # loaded: never a second copy
    if h == NULL:
        return False
    _zd_ok = _zd_set(h) == 1
    return _zd_ok


cdef int _zd_ready(void *ch) noexcept nogil:
    cdef ember_rc_t rc = ember_ch_poll(<ember_ch_t *>ch, 0, 0)
    return rc != EMBER_ERR_EMPTY


@cython.final
cdef class DirectStream:
    """One (sender, channel) stream of an inbox (ember.transport.direct):
    its record cell and the channel's take gate (addresses of 8-aligned
    words of the record's live mapping, which the inbox keeps), the last
    sequence number taken and acknowledged, the bytes taken since, and the
    acknowledgement thresholds.  Internal."""
    cdef ember_zd_stream_t s
    cdef readonly bytes sender
    # the rest of a batch whose first message was taken (the frame, and
    # where its next record starts), or None: its messages are the next
    # ones of the stream, taken one a receive (_next), the channel first
    cdef bytes batch
    cdef Py_ssize_t boff

    def __cinit__(self, bytes sender, uint64_t c_uid, size_t cell, size_t gate,
                  uint64_t ack_every, uint64_t ack_bytes):
        if not 0 < len(sender) <= 16:
            raise ValueError(f"a sender id of {len(sender)} bytes")
        if cell == 0 or cell & 7 or gate & 7:
            raise ValueError("cell and gate must be 8-aligned addresses")
        self.sender = sender
        self.s.c_uid = c_uid
        self.s.cell = <uint64_t *>cell
        self.s.gate = <uint64_t *>gate
        self.s.ack_every = ack_every
        self.s.ack_bytes = ack_bytes
        self.s.sender_len = <uint32_t>len(sender)
        memcpy(self.s.sender, <const char *>sender, len(sender))

    @property
    def c_uid(self):
        return self.s.c_uid

    @property
    def last(self):
        return self.s.last

    @last.setter
    def last(self, uint64_t v):
        self.s.last = v

    @property
    def acked(self):
        return self.s.acked

    @acked.setter
    def acked(self, uint64_t v):
        self.s.acked = v

    @property
    def due(self):
        return self.s.due

    @due.setter
    def due(self, uint64_t v):
        self.s.due = v

    @property
    def ack_due(self):
        return self.s.ack_due != 0

    @ack_due.setter
    def ack_due(self, bint v):
        self.s.ack_due = v

    @property
    def gate(self):
        return <size_t>self.s.gate

    @gate.setter
    def gate(self, size_t v):
        if v & 7:
            raise ValueError("gate must be an 8-aligned address")
        self.s.gate = <uint64_t *>v

    @property
    def holds(self):
        """Messages of a batch are held here (the next ones of the stream)."""
        return self.batch is not None

    cdef void _hold(self, ember_zmsg_t *m):
        # keep batch m's records after its first (taken; m validated)
        cdef const unsigned char *p = <const unsigned char *>ember_zd_msg_data(m)
        cdef size_t n = ember_zd_msg_size(m)
        cdef uint32_t first
        memcpy(&first, p + EMBER_ZD_HDR, EMBER_ZD_LEN)
        cdef size_t off = EMBER_ZD_HDR + EMBER_ZD_LEN + first
        if off < n:
            self.batch = PyBytes_FromStringAndSize(<const char *>p, <Py_ssize_t>n)
            self.boff = <Py_ssize_t>off

    cdef object _next(self):
        # the next message of the batch held (the caller found the channel
        # empty), taken; None when the gate is closed (nothing taken)
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(self.batch)
        cdef uint32_t n
        memcpy(&n, p + self.boff, EMBER_ZD_LEN)
        if not ember_zd_take(&self.s, self.s.last + 1, n):
            return None
        got = PyBytes_FromStringAndSize(<const char *>p + self.boff + EMBER_ZD_LEN, n)
        self.boff += EMBER_ZD_LEN + n
        if self.boff >= PyBytes_GET_SIZE(self.batch):
            self.batch = None
        return got

    def spill(self):
        """The messages of the batch held, as ``(seq, payload)``, oldest
        first, not taken; the stream holds none after."""
        if self.batch is None:
            return []
        got = _zd_records(self.batch, self.boff)
        self.batch = None
        return [(self.s.last + 1 + i, m) for i, m in enumerate(got)]

    def take(self, uint64_t seq, Py_ssize_t nbytes):
        """The Python path's take of message ``seq`` (``nbytes`` of payload)
        of this stream: through the gate (False if it is closed: nothing
        stored), the record, the count; sets ``ack_due``."""
        if nbytes < 0:
            raise ValueError(f"nbytes {nbytes} < 0")
        return ember_zd_take(&self.s, seq, <uint64_t>nbytes) != 0


def _zd_records(bytes frame, Py_ssize_t off=EMBER_ZD_HDR):
    """The messages of batch ``frame`` (direct.OP_BATCH: its records from
    ``off``), as a list of bytes; None when it is malformed (a record's
    length past its end, or no record).  Internal."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(frame)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(frame)
    cdef uint32_t len
    if off < EMBER_ZD_HDR or <size_t>off > n or ember_zd_batch_ok(p, n, <size_t>off) == 0:
        return None
    out = []
    while <size_t>off < n:
        memcpy(&len, p + off, EMBER_ZD_LEN)
        out.append(PyBytes_FromStringAndSize(<const char *>p + off + EMBER_ZD_LEN, len))
        off += EMBER_ZD_LEN + len
    return out


cdef bytes _zd_first(ember_zmsg_t *m):
    # the first message of batch m (validated)
    cdef const char *p = <const char *>ember_zd_msg_data(m)
    cdef uint32_t n
    memcpy(&n, p + EMBER_ZD_HDR, EMBER_ZD_LEN)
    return PyBytes_FromStringAndSize(p + EMBER_ZD_HDR + EMBER_ZD_LEN, n)


def _zd_recv(Channel ch, size_t sock, DirectStream stream, int flags):
    """Read one message of ROUTER socket ``sock`` (its address:
    ``zmq.Socket.underlying``; the caller's thread is its only user) for
    channel ``ch``'s receive (see above): the payload (bytes) when it was
    the next message of ``stream`` (may be None) and was taken (then see
    ``stream.ack_due``); None when none came (the socket's receive timeout,
    or ``flags`` 1: ZMQ_DONTWAIT); else ``(sender, frame, more)``, not
    taken (``more``: frames follow, unread).  Internal."""
    cdef ember_zmsg_t m1, m2
    cdef int more = 0, err = 0, rc
    cdef ember_zd_stream_t *s = NULL if stream is None else &stream.s
    cdef const char *p
    if not _zd_ok:
        raise RuntimeError("_zd_init found no libzmq")
    if sock == 0:
        raise ValueError("no socket")
    if ch._ch == NULL or ch._pool._pool == NULL:
        ch._check_open("receive")
    if stream is not None and stream.s.c_uid != ch._c_uid:
        raise ValueError(f"the stream is of channel {stream.s.c_uid}, not {ch._c_uid}")
    ch._pool._busy += 1
    ch._busy += 1
    try:
        while True:
            with nogil:
                rc = ember_zd_recv(<void *>sock, flags, s, _zd_ready, <void *>ch._ch,
                                   &m1, &m2, &more, &err)
            if rc != -2:
                break
            PyErr_CheckSignals()
    finally:
        ch._pool._busy -= 1
        ch._busy -= 1
    if rc == -1:
        return None
    if rc == -3:
        import zmq
        raise zmq.ZMQError(err)
    try:
        if rc == 1:
            p = <const char *>ember_zd_msg_data(&m2)
            return PyBytes_FromStringAndSize(p + EMBER_ZD_HDR,
                                             <Py_ssize_t>ember_zd_msg_size(&m2) - EMBER_ZD_HDR)
        if rc == 2:
            stream._hold(&m2)
            return _zd_first(&m2)
        return (PyBytes_FromStringAndSize(<const char *>ember_zd_msg_data(&m1),
                                          <Py_ssize_t>ember_zd_msg_size(&m1)),
                PyBytes_FromStringAndSize(<const char *>ember_zd_msg_data(&m2),
                                          <Py_ssize_t>ember_zd_msg_size(&m2)),
                more != 0)
    finally:
        ember_zd_msg_close(&m1)
        ember_zd_msg_close(&m2)


cdef extern from *:
    """
    /* The direct send's frame in one copy: the header (op 'D', c_uid, seq,
       little-endian, as direct.DIRECT_HDR; a batch: 'B', the first
       message's seq, its records) and the message into a zmq
       message, then libzmq's send.  Returns 0 (sent: zmq owns m) or the
       zmq errno (m still the caller's: EAGAIN with DONTWAIT, try again
       blocking; EINTR, try again).  Holds nothing a death could leave. */
    static int ember_zd_frame(ember_zmsg_t *m, char op, uint64_t c_uid, uint64_t seq,
                              const void *p, size_t n) {
        if (ember_zd.msg_init_size(m, EMBER_ZD_HDR + n) < 0)
            return ember_zd.zerrno();
        unsigned char *d = (unsigned char *)ember_zd.msg_data(m);
        d[0] = (unsigned char)op;
        memcpy(d + 1, &c_uid, 8);
        memcpy(d + 9, &seq, 8);
        if (n)
            memcpy(d + EMBER_ZD_HDR, p, n);
        return 0;
    }
    static int ember_zd_send(ember_zmsg_t *m, void *sock, int flags) {
        return ember_zd.msg_send(m, sock, flags) < 0 ? ember_zd.zerrno() : 0;
    }
    /* A ROUTER's first frame: the peer's routing id `rid` (n bytes), more
       to follow.  0 (sent) or the zmq errno (nothing sent: EHOSTUNREACH, no
       such peer, with ZMQ_ROUTER_MANDATORY; EAGAIN with DONTWAIT; EINTR).
       Once it went, the message's next frame cannot block (a ROUTER checks
       its high-water mark at a message's first frame). */
    static int ember_zd_send_rid(void *sock, const void *rid, size_t n, int flags) {
        ember_zmsg_t m;
        if (ember_zd.msg_init_size(&m, n) < 0)
            return ember_zd.zerrno();
        memcpy(ember_zd.msg_data(&m), rid, n);
        if (ember_zd.msg_send(&m, sock, flags | 2 /* ZMQ_SNDMORE */) < 0) {
            int e = ember_zd.zerrno();
            ember_zd.msg_close(&m);
            return e;
        }
        return 0;
    }
    """
    int ember_zd_frame(ember_zmsg_t *m, char op, uint64_t c_uid, uint64_t seq, const void *p,
                       size_t n) nogil
    int ember_zd_send(ember_zmsg_t *m, void *sock, int flags) nogil
    int ember_zd_send_rid(void *sock, const void *rid, size_t n, int flags) nogil


cdef int _zd_send_err(size_t sock, uint64_t c_uid, uint64_t seq, bytes data, bytes rid) except -1:
    """_zd_send's work: 0 when sent, else the zmq errno of a send that did
    not happen (nothing of the message went; EINTR is served here)."""
    return _zd_send_buf(sock, b'D', c_uid, seq, PyBytes_AS_STRING(data),
                        <size_t>PyBytes_GET_SIZE(data), rid)


cdef int _zd_send_buf(size_t sock, char op, uint64_t c_uid, uint64_t seq, const char *data,
                      size_t n, bytes rid) except -1:
    # _zd_send_err's work for the n bytes at data, after header op
    cdef ember_zmsg_t m
    cdef int err = 0
    cdef bint first = True
    cdef size_t nrid = 0
    cdef const char *prid = NULL
    if rid is not None:
        nrid = <size_t>PyBytes_GET_SIZE(rid)
        prid = PyBytes_AS_STRING(rid)
        if nrid == 0 or nrid > 255:
            raise ValueError(f"a routing id of {nrid} bytes")
        # the peer's id first (a ROUTER's message): nothing went if it failed
        err = ember_zd_send_rid(<void *>sock, prid, nrid, EMBER_ZD_DONTWAIT)
        while err == EINTR or (err == EAGAIN and first):
            first = False
            if err == EINTR:
                PyErr_CheckSignals()
            with nogil:                 # full: wait (up to the socket's send timeout)
                err = ember_zd_send_rid(<void *>sock, prid, nrid, 0)
        if err != 0:
            return err
    err = ember_zd_frame(&m, op, c_uid, seq, data, n)
    if err != 0:
        return err                      # (after a routing id: cannot happen but for ENOMEM)
    if rid is not None:
        # the rest of a message under way: it cannot wait, and a signal is
        # served after it (raising here would leave the socket mid-message)
        err = ember_zd_send(&m, <void *>sock, 0)
        while err == EINTR:
            err = ember_zd_send(&m, <void *>sock, 0)
        if err != 0:
            ember_zd_msg_close(&m)
        return err
    err = ember_zd_send(&m, <void *>sock, EMBER_ZD_DONTWAIT)
    while err == EINTR or (err == EAGAIN and first):
        first = False
        if err == EINTR:
            try:
                PyErr_CheckSignals()
            except BaseException:
                ember_zd_msg_close(&m)
                raise
        with nogil:                     # full: wait (up to the socket's send timeout)
            err = ember_zd_send(&m, <void *>sock, 0)
    if err != 0:
        ember_zd_msg_close(&m)
    return err


def _zd_send(size_t sock, uint64_t c_uid, uint64_t seq, bytes data, bytes rid=None):
    """Send one direct message (the header, then ``data``) on socket
    ``sock`` (its address: ``zmq.Socket.underlying``; the caller holds its
    only user's lock): a DEALER's one frame, or with ``rid`` a ROUTER's
    message to peer ``rid`` (its routing id frame first); a copy, then
    libzmq's send, waiting (without the GIL) only when the socket is full
    (zmq.Again after its send timeout; ZMQError EHOSTUNREACH: a ROUTER with
    ZMQ_ROUTER_MANDATORY has no such peer, nothing sent).  Internal."""
    if not _zd_ok:
        raise RuntimeError("_zd_init found no libzmq")
    if sock == 0:
        raise ValueError("no socket")
    cdef int err = _zd_send_err(sock, c_uid, seq, data, rid)
    if err != 0:
        import zmq
        raise zmq.Again() if err == EAGAIN else zmq.ZMQError(err)


@cython.final
cdef class DirectOut:
    """One channel's direct messages through one connection to an inbox
    (ember.transport.direct.DirectSender): the last sequence number sent,
    the copies kept until acknowledged (a deque of (seq, data)) and their
    bytes.  A message of at most ``batch_max`` bytes sent within
    ``streaming`` seconds of the end of the send before (a stream) joins a
    batch, one zmq message (direct.OP_BATCH) of up to ``batch`` messages or
    ``batch_bytes`` bytes of records, sent when it is full, before the next
    message that does not join it, or by :meth:`flush_batch` (the inbox's
    flusher, ``wake``: called when a batch starts); any other message (a
    request, a round trip's: its caller waited between two sends) goes at
    once, alone, after the batch if there is one (``batch`` 0: never
    batched).  Its
    :meth:`send` is the hot path in one call; the connection's
    state it shares with the connection's other channels (the socket, the
    sends since the last drain) is in ``shared``, a one-element list
    [sends] the connection keeps.  :meth:`send_now` is :meth:`send` with
    the socket's lock taken here (a remote handle's send, without the
    connection's own lock: :meth:`bind`).  Internal."""
    cdef readonly uint64_t c_uid
    cdef public uint64_t seq
    cdef public Py_ssize_t nbytes
    cdef readonly object copies
    cdef public size_t handle          # the DEALER's address (0: this call never sends)
    cdef readonly list shared
    cdef public bytes rid              # the peer's routing id (a ROUTER's send), or None
    cdef Py_ssize_t drain_after, window, window_bytes
    cdef object _acquire, _release     # the socket's lock's (send_now)
    cdef dict _errors                  # the connection's reported failures (send_now)
    cdef readonly Py_ssize_t sent_now  # messages send_now sent (tests, benchmarks)
    # the batch being filled: its records (length, message) at buf, their
    # bytes, their number, the first one's seq
    cdef char *buf
    cdef Py_ssize_t blen, bcount, batch, batch_bytes, batch_max
    cdef uint64_t bfirst
    cdef int64_t streaming, last_ns    # ns; the last message's send
    cdef public object wake            # called when a batch starts (or None)
    cdef readonly Py_ssize_t batches   # batches sent (tests, benchmarks)

    def __cinit__(self, uint64_t c_uid, size_t handle, list shared, Py_ssize_t drain_after,
                  Py_ssize_t window, Py_ssize_t window_bytes, Py_ssize_t batch=0,
                  Py_ssize_t batch_bytes=0, Py_ssize_t batch_max=0, double streaming=0.0):
        from collections import deque
        if len(shared) != 1:
            raise ValueError("shared must be a one-element list [sends]")
        if batch < 0 or batch_bytes < 0 or batch_max < 0 or batch_max > 0xffffffff or \
                not streaming >= 0:
            raise ValueError("batch, batch_bytes, batch_max and streaming must be >= 0")
        self.c_uid = c_uid
        self.handle = handle
        self.shared = shared
        self.copies = deque()
        self.drain_after = drain_after
        self.window = window
        self.window_bytes = window_bytes
        self.batch = batch if batch_bytes and batch_max else 0
        self.batch_bytes = batch_bytes
        self.batch_max = batch_max
        self.streaming = <int64_t>(streaming * 1e9)
        self.last_ns = -(<int64_t>1 << 62)

    def __dealloc__(self):
        free(self.buf)

    def bind(self, lock, dict errors):
        """:meth:`send_now` takes ``lock`` (the socket's: its one user) and
        declines while ``errors`` (the connection's failures reported and
        not raised yet) is not empty."""
        self._acquire = lock.acquire
        self._release = lock.release
        self._errors = errors

    cdef int _send(self, data) except -1:
        # send()'s work: 1 sent, 0 declined (nothing done)
        if type(data) is not bytes or self.handle == 0:
            return 0
        cdef Py_ssize_t sends = <Py_ssize_t>self.shared[0] + 1
        if sends >= self.drain_after or len(self.copies) >= self.window or \
                self.nbytes >= self.window_bytes:
            return 0
        cdef int err = self._put(data)
        if err == EHOSTUNREACH:
            return 0
        if err != 0:                    # (raises: nothing counted)
            import zmq
            raise zmq.Again() if err == EAGAIN else zmq.ZMQError(err)
        self.shared[0] = sends
        return 1

    cdef int _put(self, bytes data) except -1:
        # data as the next message, into the batch or alone: 0 (counted),
        # or the zmq errno of what did not happen (nothing done)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef timespec ts
        cdef int err
        cdef bint starts
        if not _zd_ok:
            raise RuntimeError("_zd_init found no libzmq")
        clock_gettime(CLOCK_MONOTONIC, &ts)
        cdef int64_t now = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
        if self.batch and n <= self.batch_max and now - self.last_ns < self.streaming:
            if self.bcount >= self.batch or self.blen >= self.batch_bytes:
                err = self._flush()     # (it could not go before: no peer)
                if err != 0:
                    return err
            if self.buf == NULL:
                self.buf = <char *>malloc(self.batch_bytes + EMBER_ZD_LEN + self.batch_max)
                if self.buf == NULL:
                    raise MemoryError()
            starts = self.bcount == 0
            if starts:
                self.bfirst = self.seq + 1
            memcpy(self.buf + self.blen, &n, EMBER_ZD_LEN)      # (little-endian)
            memcpy(self.buf + self.blen + EMBER_ZD_LEN, PyBytes_AS_STRING(data), n)
            self.blen += EMBER_ZD_LEN + n
            self.bcount += 1
            self._count(data)
            if starts and self.wake is not None:
                self.wake()
            if self.bcount >= self.batch or self.blen >= self.batch_bytes:
                self._flush()           # (if it cannot go now: see above)
        else:
            if self.bcount:
                err = self._flush()     # the batch before this message
                if err != 0:
                    return err
            err = _zd_send_err(self.handle, self.c_uid, self.seq + 1, data, self.rid)
            if err != 0:
                return err
            self._count(data)
        # the gap to the next message counts from here: the caller's own
        # time between two sends (a send that wakes zmq's I/O thread takes
        # 5-20 us in this VM; a round trip's wait is all in the gap)
        clock_gettime(CLOCK_MONOTONIC, &ts)
        self.last_ns = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
        return 0

    cdef void _count(self, bytes data):
        self.seq += 1
        self.copies.append((self.seq, data))
        self.nbytes += PyBytes_GET_SIZE(data)

    cdef int _flush(self) except -1:
        # send the batch: 0 (sent, or none), or the zmq errno (it stays)
        if self.bcount == 0:
            return 0
        if self.handle == 0:            # retired: its copies go elsewhere
            self.bcount = self.blen = 0
            return 0
        cdef int err = _zd_send_buf(self.handle, b'B', self.c_uid, self.bfirst, self.buf,
                                    <size_t>self.blen, self.rid)
        if err == 0:
            self.bcount = self.blen = 0
            self.batches += 1
        return err

    @property
    def pending(self):
        """Messages in the batch being filled (counted, not sent yet)."""
        return self.bcount

    def put(self, bytes data):
        """Send ``data`` as the next message (into the batch, or alone: see
        the class), keep its copy, count it: True; False, with nothing
        done, when the peer is not connected (EHOSTUNREACH).  No window or
        drain check (the caller's).  The caller holds the socket's lock."""
        if self.handle == 0:
            raise ValueError("this DirectOut sends no more")
        cdef int err = self._put(data)
        if err == EHOSTUNREACH:
            return False
        if err != 0:
            import zmq
            raise zmq.Again() if err == EAGAIN else zmq.ZMQError(err)
        return True

    def flush_batch(self):
        """Send the batch being filled, if any: True (none left), False (the
        peer is not connected: it stays).  The caller holds the socket's
        lock."""
        cdef int err = self._flush()
        if err == EHOSTUNREACH:
            return False
        if err != 0:
            import zmq
            raise zmq.Again() if err == EAGAIN else zmq.ZMQError(err)
        return True

    def drop_batch(self):
        """Forget the batch being filled (its copies are resent elsewhere)."""
        self.bcount = self.blen = 0

    def send(self, data):
        """Send ``data`` (bytes) as the next message, keep its copy, count
        it: True.  False, with nothing done, when the connection's slow
        path must send it (not bytes, the acknowledgements due to be read,
        the window full, no socket address, no such peer: EHOSTUNREACH).
        The caller holds the socket's lock."""
        return self._send(data) == 1

    def send_now(self, data):
        """:meth:`send`, taking the socket's lock (:meth:`bind`) here; also
        False when the lock is held (another thread uses the socket), when
        a failure is reported and not raised yet, or when the route ended
        (``handle`` 0: set under the lock, so a send either went before the
        route's end, its copy among what is resent, or declines)."""
        if self.handle == 0 or self._acquire is None or type(data) is not bytes or \
                self._errors:
            return False
        if not self._acquire(False):
            return False
        try:
            if self._send(data) != 1:
                return False
        finally:
            self._release()
        self.sent_now += 1
        return True


@cython.final
cdef class DirectRecv:
    """A routed channel's receive on the direct path, installed as the
    handle's ``_direct`` by ember.transport.route once the route is given:
    its common case in one call -- a message in the channel (taken from it
    at once, as the channel comes first), or no timeout, this process's inbox free
    (no other thread receives or wants its socket), the channel empty,
    nothing held of it, its watch quiet, and the message that comes the
    next one of the channel's last stream -- and everything else by the
    Python path (``receiver.recv``: Inbox.recv), which also serves what this
    call read and did not take.  Between a wake-up and the payload in the
    caller's hands it runs no Python (the Python path ran some 30 lines
    there: 4 us a direction in a traced round trip, the CPU's caches cold
    after the wait).  Internal."""
    cdef Channel ch
    cdef readonly object receiver      # ember.transport.route.Receiver
    cdef object inbox                  # ember.transport.direct.Inbox
    cdef object watch                  # the channel's ChannelWatch (the inbox's)
    cdef object _busy_acquire, _busy_release, _lock_acquire, _lock_release
    cdef dict _held, _hot
    cdef set _closed                   # the inbox's revoked channels
    cdef object _stamp                 # ember.transport._trace.stamp when tracing, else None
    cdef readonly Py_ssize_t taken     # messages taken by the one call (tests, benchmarks)

    def __cinit__(self, Channel ch, receiver, inbox, watch, stamp=None):
        self.ch = ch
        self.receiver = receiver
        self.inbox = inbox
        self.watch = watch
        self._busy_acquire = receiver.busy.acquire
        self._busy_release = receiver.busy.release
        self._lock_acquire = inbox.lock.acquire
        self._lock_release = inbox.lock.release
        self._held = inbox.held
        self._hot = inbox._hot
        self._closed = inbox.closed
        self._stamp = stamp

    def release(self, ch):
        """The handle is being detached (the receiver's release)."""
        return self.receiver.release(ch)

    def recv(self, ch, timeout=None):
        """``ch.recv(timeout)`` (or ``recv_auto``): see the class."""
        cdef object got = None
        if ch is self.ch and self.ch._ch != NULL and \
                ember_ch_poll(self.ch._ch, 0, 0) != EMBER_ERR_EMPTY:
            # the channel first (what came through the agent: a sender not
            # on the route, or before it switched), with no inbox or lock
            try:
                return self.ch._recv_local(0)
            except ChannelEmpty:        # another process took it
                pass
        if ch is self.ch and timeout is None and self._busy_acquire(False):
            try:
                if self._lock_acquire(False):
                    try:
                        got = self._hot_recv()
                    finally:
                        self._lock_release()
            finally:
                self._busy_release()
            if got is not None:
                if self._closed and self.ch._c_uid in self._closed:
                    # revoked meanwhile (by another thread: route.Receiver._end)
                    self.receiver._forget(self.ch._c_uid)
                    self.ch._direct = None
                return got
        return self.receiver.recv(ch, timeout)

    cdef object _hot_recv(self):
        # holding the inbox's socket: the payload, or None (the Python path
        # goes on; what was read and not taken is served first)
        cdef Channel ch = self.ch
        cdef DirectStream s
        cdef ember_zmsg_t m1, m2
        cdef int more = 0, err = 0, rc
        cdef size_t sock
        inbox = self.inbox
        if ch._ch == NULL or ch._pool._pool == NULL or not _zd_ok:
            return None
        sock = inbox._handle
        if sock == 0 or inbox.wanted or inbox._rcvtimeo != -1:
            return None
        w = self.watch
        if w._fired or w._stop:
            return None
        if ember_ch_poll(ch._ch, 0, 0) != EMBER_ERR_EMPTY:
            return None                 # the channel first (the Python path takes it)
        if self._held.get(ch._c_uid):
            return None
        s = self._hot.get(ch._c_uid)
        if s is None:
            return None
        if s.batch is not None:
            # the next message is the batch's (the channel is empty): no wait
            got = s._next()
            if got is None:
                return None             # the gate is closed: the Python path ends the route
            self.taken += 1
            if s.s.ack_due:
                inbox._ack(s)
            return got
        ch._pool._busy += 1
        ch._busy += 1
        cdef int flags = 0
        if inbox.batching:
            flags = EMBER_ZD_DONTWAIT   # a batch of ours waits: sent before this waits
        try:
            while True:
                with nogil:
                    rc = ember_zd_recv(<void *>sock, flags, &s.s, _zd_ready, <void *>ch._ch,
                                       &m1, &m2, &more, &err)
                if rc == -1 and flags != 0:
                    inbox.flush_batches()
                    flags = 0
                    continue
                if rc != -2:
                    break
                PyErr_CheckSignals()
        finally:
            ch._pool._busy -= 1
            ch._busy -= 1
        if rc == -1:
            return None
        if rc == -3:
            import zmq
            raise zmq.ZMQError(err)
        try:
            if self._stamp is not None:
                self._stamp("i1")
            if rc == 1 or rc == 2:
                if rc == 2:
                    s._hold(&m2)
                    got = _zd_first(&m2)
                else:
                    got = PyBytes_FromStringAndSize(
                        <const char *>ember_zd_msg_data(&m2) + EMBER_ZD_HDR,
                        <Py_ssize_t>ember_zd_msg_size(&m2) - EMBER_ZD_HDR)
                self.taken += 1
                if s.s.ack_due:
                    inbox._ack(s)
                return got
            inbox._serve(PyBytes_FromStringAndSize(<const char *>ember_zd_msg_data(&m1),
                                                   <Py_ssize_t>ember_zd_msg_size(&m1)),
                         PyBytes_FromStringAndSize(<const char *>ember_zd_msg_data(&m2),
                                                   <Py_ssize_t>ember_zd_msg_size(&m2)),
                         more != 0)
            return None
        finally:
            ember_zd_msg_close(&m1)
            ember_zd_msg_close(&m2)
