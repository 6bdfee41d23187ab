# Raw C declarations of the spawn helper (spawn.h); the binding is _spawn.pyx.
from posix.types cimport pid_t


cdef extern from "spawn.h" nogil:
    ctypedef int ember_rc_t
    enum:
        EMBER_OK
        EMBER_ERR_INVALID_ARG
        EMBER_ERR_OS
        EMBER_ERR_NOT_FOUND

    enum:
        EMBER_SPAWN_STEP_NONE
        EMBER_SPAWN_STEP_CLONE
        EMBER_SPAWN_STEP_PDEATHSIG
        EMBER_SPAWN_STEP_PARENT_GONE
        EMBER_SPAWN_STEP_SIGNALS
        EMBER_SPAWN_STEP_CHDIR
        EMBER_SPAWN_STEP_STDIO
        EMBER_SPAWN_STEP_CLOSE_FDS
        EMBER_SPAWN_STEP_EXEC
        EMBER_SPAWN_STEP_PGRP
        EMBER_SPAWN_STEP_RLIMIT

    ctypedef struct ember_spawn_args_t:
        const char *exe
        char *const *argv
        char *const *envp
        const char *cwd
        int stdio[3]
        int new_pgrp
        long long nofile_soft

    ctypedef struct ember_spawn_failure_t:
        int step
        int err

    ember_rc_t ember_spawn(const ember_spawn_args_t *args, pid_t *pid_out,
                           ember_spawn_failure_t *failure)
    ember_rc_t ember_set_pdeathsig(int sig)
    const char *ember_spawn_step_str(int step)


cdef extern from "spares.h":
    # (not nogil: the loop calls PyOS_BeforeFork/AfterFork with the GIL held)
    enum:
        EMBER_SPARES_CHILD
        EMBER_SPARES_MESSAGE
        EMBER_SPARES_EOF

    ctypedef struct ember_spares_args_t:
        int sock
        const char *request
        size_t request_len
        const char *tail
        size_t tail_len
        int keep_peer
        void *tid_addr
        void *robust_head
        size_t robust_len
        char *buf
        size_t buf_cap

    int ember_spares_in_clone
    int ember_clone_setup(void **tid_addr, void **robust_head, size_t *robust_len)
    long ember_clone_parent(void *tid_addr, void *robust_head, size_t robust_len)
    ember_rc_t ember_spares_serve(const ember_spares_args_t *args, int *what, size_t *len_out,
                                  int fds_out[3], int *nfds_out, int *sock_out, int *peer_out)
    int ember_spares_take(pid_t pid, int fd)

    enum:
        EMBER_SPARE_OK
        EMBER_SPARE_STEP_PDEATHSIG
        EMBER_SPARE_STEP_PARENT
        EMBER_SPARE_STEP_CLOSE

    int ember_spare_detach(int keep, int keep2, pid_t shepherd_pid, const char *comm)
    Py_ssize_t ember_spare_peek(int sock)
    Py_ssize_t ember_spare_recv(int sock, char *buf, size_t cap, int fds_out[3], int *nfds_out)
    int ember_spare_stdio(const int fds[3])
    int ember_spare_leased(const char *msg, size_t len)
    pid_t ember_exit_holder(pid_t parent)


cdef extern from "quiet.h":
    enum:
        EMBER_QUIET_EMPTY
        EMBER_QUIET_IS
        EMBER_QUIET_AT_MOST
        EMBER_QUIET_SAME_END
    int ember_quiet_note(object state) except -1
    int ember_quiet() except -1
    int ember_quiet_mark()

    ctypedef struct ember_spare_span_t:
        size_t off
        size_t len
    enum:
        EMBER_SPARE_MAX_ARGS
        EMBER_SPARE_MAX_SETS
    ctypedef struct ember_spare_request_t:
        size_t nargs
        ember_spare_span_t args[EMBER_SPARE_MAX_ARGS]
        size_t nsets
        ember_spare_span_t sets[EMBER_SPARE_MAX_SETS]
        size_t nunsets
        ember_spare_span_t unsets[EMBER_SPARE_MAX_SETS]
        int cwd_nil
        ember_spare_span_t cwd
    int ember_spare_putenv(char *const *entries, size_t n)
    int ember_spare_request(const char *msg, size_t len, const char *env, size_t env_len,
                            ember_spare_request_t *out)
    void ember_spare_name(const char *comm)
    int ember_spare_lease_args(const char *msg, const ember_spare_request_t *req,
                               const char *flags, size_t flags_len, ember_spare_span_t *token,
                               ember_spare_span_t *call, ember_spare_span_t *result)
    long ember_spare_b64_decode(const char *text, size_t len, unsigned char *out, size_t cap)
    void ember_spare_wait_adopted() nogil


cdef extern from "outboard.h" nogil:
    ember_rc_t ember_ob_open(const char *path, int create)
    ember_rc_t ember_ob_replace(const char *path, int create)
    int ember_ob_mapped()
    void ember_ob_spawned(unsigned long long p_uid, int clean)
    void ember_ob_busy(unsigned long long p_uid, int busy)
    int ember_ob_exiting(unsigned long long p_uid)
    int ember_ob_clean(unsigned long long p_uid)
    void ember_ob_drained(unsigned long long p_uid)
    int ember_ob_wait_drained(unsigned long long p_uid, long long ns)
