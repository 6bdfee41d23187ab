/*
 * spares.c -- the warm template's spare-making loop (see spares.h for the
 * contract, what it saves and what a death costs).
 *
 * No shared memory here: the loop is the template's own, single-threaded,
 * and talks to the shepherd through one socket.  The only state it writes
 * between two clones is its stack, the receive buffer, the socket pair's
 * fds and what PyOS_BeforeFork/AfterFork_Parent write (the import lock, the
 * at-fork hooks' calls): a few pages where the Python loop wrote ~145, each
 * copied once after every clone.
 *
 * Also here, a spare's and a lease's steps up to its call (run in the new
 * spare, on its own memory) and a template child's exit holder
 * (ember_exit_holder: the one process that shares a process's memory,
 * CLONE_VM, only once that process does nothing but exit; its one atomic
 * keeps a second call off the holder's stack).  And the shepherd's one
 * call here, ember_spares_take (pidfd_getfd: its end of a spare's pair,
 * taken from the spare, so that no socket is ever in flight).  What a
 * death at each step costs: spares.h, at each.
 */
#include <Python.h>     /* first: it sets the feature macros */

#include "spares.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_PARENT
#define CLONE_PARENT 0x00008000
#endif
#ifndef CLONE_CHILD_SETTID
#define CLONE_CHILD_SETTID 0x01000000
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

#define _EMBER_SPARES_MAX_FDS 3

/* clone() as a sibling (the child's parent is ours: the shepherd), on the
 * caller's stack as fork() does; the argument order of the raw system call
 * is the machine's.  -1 with errno ENOSYS where it is not known. */
static long _ember_clone_sibling(void *tid_addr)
{
    unsigned long flags = CLONE_PARENT | CLONE_CHILD_SETTID | SIGCHLD;
#if defined(__x86_64__)
    return syscall(SYS_clone, flags, NULL, NULL, tid_addr, 0UL);      /* ..., ctid, tls */
#elif defined(__aarch64__)
    return syscall(SYS_clone, flags, NULL, NULL, 0UL, tid_addr);      /* ..., tls, ctid */
#else
    (void)flags;
    (void)tid_addr;
    errno = ENOSYS;
    return -1;
#endif
}

/* Receive one request; its length (0: EOF) or -1 (errno).  Its fds (at most
 * three; more are closed) go to fds_out. */
static ssize_t _ember_spares_recv(const ember_spares_args_t *a, int fds_out[3], int *nfds_out)
{
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(_EMBER_SPARES_MAX_FDS * sizeof(int))];
    } ctl;
    struct iovec iov = {a->buf, a->buf_cap};
    struct msghdr mh;
    struct cmsghdr *cm;
    ssize_t n;

    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof ctl.buf;
    do {
        n = recvmsg(a->sock, &mh, 0);
    } while (n < 0 && errno == EINTR);
    *nfds_out = 0;
    if (n < 0)
        return -1;
    for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
        size_t i, k;
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            if (*nfds_out < _EMBER_SPARES_MAX_FDS)
                fds_out[(*nfds_out)++] = fd;
            else
                close(fd);
        }
    }
    return n;
}

/* Send the answer: [pid, fd's number, <the caller's tail>], with ``fd``
 * itself (SCM_RIGHTS) unless it stays in the spare (keep_peer: the number
 * is the spare's, as the clone copied the fd table; else -1).  The pid and
 * the number as msgpack int 32s after the array's header (the tail holds
 * its other three items). */
static int _ember_spares_answer(const ember_spares_args_t *a, pid_t pid, int fd)
{
    unsigned char head[11];
    union {
        struct cmsghdr align;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    struct iovec iov[2];
    struct msghdr mh;
    struct cmsghdr *cm;
    uint32_t u = (uint32_t)pid;
    uint32_t f = (uint32_t)(a->keep_peer ? fd : -1);
    ssize_t w;

    head[0] = 0x95;                     /* fixarray of 5 */
    head[1] = 0xd2;                     /* int 32, big-endian */
    head[2] = (unsigned char)(u >> 24);
    head[3] = (unsigned char)(u >> 16);
    head[4] = (unsigned char)(u >> 8);
    head[5] = (unsigned char)u;
    head[6] = 0xd2;
    head[7] = (unsigned char)(f >> 24);
    head[8] = (unsigned char)(f >> 16);
    head[9] = (unsigned char)(f >> 8);
    head[10] = (unsigned char)f;
    iov[0].iov_base = head;
    iov[0].iov_len = sizeof head;
    iov[1].iov_base = (void *)a->tail;
    iov[1].iov_len = a->tail_len;
    memset(&mh, 0, sizeof mh);
    memset(&ctl, 0, sizeof ctl);
    mh.msg_iov = iov;
    mh.msg_iovlen = 2;
    if (!a->keep_peer) {
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof ctl.buf;
        cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    do {
        w = sendmsg(a->sock, &mh, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    return w < 0 ? -1 : 0;
}

int ember_spares_in_clone;

int ember_clone_setup(void **tid_addr, void **robust_head, size_t *robust_len)
{
    void *head = NULL;
    size_t len = 0;
    int *tid;

    if (tid_addr == NULL || robust_head == NULL || robust_len == NULL) {
        errno = EINVAL;
        return -1;
    }
#if !defined(__x86_64__) && !defined(__aarch64__)
    errno = ENOSYS;             /* (_ember_clone_sibling's machines) */
    return -1;
#endif
    if (syscall(SYS_get_robust_list, 0, &head, &len) != 0)
        return -1;
    if (head == NULL) {
        errno = EINVAL;
        return -1;
    }
    tid = (int *)(void *)((char *)head - 2 * sizeof(int) - sizeof(void *));
    if (*tid != (int)syscall(SYS_gettid)) {
        errno = EINVAL;
        return -1;
    }
    *tid_addr = tid;
    *robust_head = head;
    *robust_len = len;
    return 0;
}

long ember_clone_parent(void *tid_addr, void *robust_head, size_t robust_len)
{
    long pid;
    int err;

    ember_spares_in_clone = 1;
    PyOS_BeforeFork();
    pid = _ember_clone_sibling(tid_addr);
    if (pid == 0) {
        /* glibc's robust list is per thread, registered with the kernel
         * by address; the kernel does not carry it over. */
        syscall(SYS_set_robust_list, robust_head, robust_len);
        PyOS_AfterFork_Child();
        ember_spares_in_clone = 0;
        return 0;
    }
    err = errno;
    PyOS_AfterFork_Parent();
    ember_spares_in_clone = 0;
    errno = err;
    return pid;
}

ember_rc_t ember_spares_serve(const ember_spares_args_t *a, int *what, size_t *len_out,
                              int fds_out[3], int *nfds_out, int *sock_out, int *peer_out)
{
    if (a == NULL || what == NULL || len_out == NULL || fds_out == NULL || nfds_out == NULL
            || sock_out == NULL || peer_out == NULL || a->buf == NULL || a->request == NULL
            || (a->tail == NULL && a->tail_len != 0))
        return EMBER_ERR_INVALID_ARG;
#if !defined(__x86_64__) && !defined(__aarch64__)
    return EMBER_ERR_INVALID_ARG;
#endif
    *sock_out = *peer_out = -1;
    for (;;) {
        ssize_t n = _ember_spares_recv(a, fds_out, nfds_out);
        int sv[2];
        long pid;
        int err;

        if (n < 0)
            return EMBER_ERR_OS;
        *len_out = (size_t)n;
        if (n == 0) {
            int i;
            for (i = 0; i < *nfds_out; i++)
                close(fds_out[i]);
            *nfds_out = 0;
            *what = EMBER_SPARES_EOF;
            return EMBER_OK;
        }
        if (*nfds_out != 0 || (size_t)n != a->request_len
                || memcmp(a->buf, a->request, (size_t)n) != 0) {
            *what = EMBER_SPARES_MESSAGE;       /* not ours: the caller's */
            return EMBER_OK;
        }
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
            *what = EMBER_SPARES_MESSAGE;       /* the caller's path answers it */
            return EMBER_OK;
        }
        pid = ember_clone_parent(a->tid_addr, a->robust_head, a->robust_len);
        if (pid == 0) {         /* the spare */
            if (a->keep_peer)
                *peer_out = sv[0];          /* until its request is in */
            else
                close(sv[0]);
            *sock_out = sv[1];
            *what = EMBER_SPARES_CHILD;
            return EMBER_OK;
        }
        err = errno;
        close(sv[1]);
        if (pid < 0) {
            close(sv[0]);
            errno = err;
            *what = EMBER_SPARES_MESSAGE;
            return EMBER_OK;
        }
        err = _ember_spares_answer(a, (pid_t)pid, sv[0]);
        /* Sent (the spare sees EOF once the shepherd drops it) or kept in
         * the spare (which the shepherd kills if it drops it unused). */
        close(sv[0]);
        if (err != 0)
            return EMBER_ERR_OS;                /* the shepherd is gone */
    }
}


/* ------------------------------------------------------------------ */
/* the spare's own steps (spares.h)                                    */

void ember_spare_name(const char *comm)
{
    if (comm != NULL)
        (void)prctl(PR_SET_NAME, (unsigned long)comm, 0UL, 0UL, 0UL);
}

/* Close fds [lo, hi] (hi: ~0U for all); 0 or -1 (errno). */
static int _ember_close_fds(unsigned int lo, unsigned int hi)
{
    long max_fd;

    if (lo > hi)
        return 0;
    if (syscall(SYS_close_range, lo, hi, 0u) == 0)
        return 0;
    if (errno != ENOSYS)
        return -1;
    max_fd = sysconf(_SC_OPEN_MAX);
    if (max_fd < 0 || max_fd > (1L << 20))
        max_fd = 1L << 20;
    for (long fd = (long)lo; fd < max_fd && (unsigned long)fd <= hi; fd++)
        (void)close((int)fd);
    return 0;
}

int ember_spare_detach(int keep, int keep2, pid_t shepherd_pid, const char *comm)
{
    unsigned int lo = 3u;
    int kept[2];

    ember_spare_name(comm);
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)SIGKILL, 0UL, 0UL, 0UL) != 0)
        return EMBER_SPARE_STEP_PDEATHSIG;
    if (getppid() != shepherd_pid) {
        errno = 0;
        return EMBER_SPARE_STEP_PARENT;
    }
    kept[0] = keep < keep2 ? keep : keep2;          /* in order: the ranges between */
    kept[1] = keep < keep2 ? keep2 : keep;
    for (int i = 0; i < 2; i++) {
        if (kept[i] < (int)lo)
            continue;                               /* (none, 0-2, or the same twice) */
        if (_ember_close_fds(lo, (unsigned int)kept[i] - 1u) != 0)
            return EMBER_SPARE_STEP_CLOSE;
        lo = (unsigned int)kept[i] + 1u;
    }
    if (_ember_close_fds(lo, ~0u) != 0)
        return EMBER_SPARE_STEP_CLOSE;
    return EMBER_SPARE_OK;
}

int ember_spares_take(pid_t pid, int fd)
{
    int pidfd, got, err;

    pidfd = (int)syscall(SYS_pidfd_open, (long)pid, 0L);
    if (pidfd < 0)
        return -1;
    got = (int)syscall(SYS_pidfd_getfd, (long)pidfd, (long)fd, 0L);
    err = errno;
    (void)close(pidfd);
    errno = err;
    return got;
}

ssize_t ember_spare_peek(int sock)
{
    char one;
    struct iovec iov = {&one, 1};
    struct msghdr mh;
    ssize_t n;

    /* No control buffer: a peek would install the message's fds too. */
    memset(&mh, 0, sizeof mh);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    do {
        n = recvmsg(sock, &mh, MSG_PEEK | MSG_TRUNC);
    } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t ember_spare_recv(int sock, char *buf, size_t cap, int fds_out[3], int *nfds_out)
{
    ember_spares_args_t a;

    memset(&a, 0, sizeof a);
    a.sock = sock;
    a.buf = buf;
    a.buf_cap = cap;
    return _ember_spares_recv(&a, fds_out, nfds_out);
}

int ember_spare_stdio(const int fds[3])
{
    int use[3];

    /* A source below 3 not in place is moved out of the way first, so
     * that an earlier dup2 cannot overwrite it (as spawn.c does). */
    for (int i = 0; i < 3; i++) {
        use[i] = fds[i];
        if (use[i] >= 0 && use[i] < 3 && use[i] != i) {
            use[i] = fcntl(use[i], F_DUPFD_CLOEXEC, 3);
            if (use[i] < 0)
                return -1;
        }
    }
    for (int i = 0; i < 3; i++)
        if (use[i] != i && dup2(use[i], i) < 0)
            return -1;
    for (int i = 0; i < 3; i++) {
        int dup_of_earlier = 0;
        for (int j = 0; j < i; j++)
            dup_of_earlier |= use[j] == use[i];
        if (use[i] > 2 && !dup_of_earlier)
            (void)close(use[i]);
    }
    return 0;
}

/* Read a msgpack array header at *p; its length, or -1. */
static long _ember_mp_array(const unsigned char **p, const unsigned char *end)
{
    const unsigned char *q = *p;
    long n;

    if (q >= end)
        return -1;
    if ((q[0] & 0xf0) == 0x90) {
        n = q[0] & 0x0f;
        q += 1;
    } else if (q[0] == 0xdc && end - q >= 3) {
        n = ((long)q[1] << 8) | q[2];
        q += 3;
    } else if (q[0] == 0xdd && end - q >= 5) {
        n = ((long)q[1] << 24) | ((long)q[2] << 16) | ((long)q[3] << 8) | q[4];
        q += 5;
    } else {
        return -1;
    }
    *p = q;
    return n;
}

int ember_spare_leased(const char *msg, size_t len)
{
    static const char mark[] = "--spare=";
    const size_t mark_len = sizeof mark - 1;
    const unsigned char *p = (const unsigned char *)msg;
    const unsigned char *end = p + len;
    long n;

    if (msg == NULL || _ember_mp_array(&p, end) != 3)
        return -1;
    n = _ember_mp_array(&p, end);
    if (n < 0)
        return -1;
    for (long i = 0; i < n; i++) {
        size_t k;
        if (p >= end)
            return -1;
        if ((p[0] & 0xe0) == 0xa0) {                      /* fixstr */
            k = p[0] & 0x1f;
            p += 1;
        } else if (p[0] == 0xd9 && end - p >= 2) {        /* str 8 */
            k = p[1];
            p += 2;
        } else if (p[0] == 0xda && end - p >= 3) {        /* str 16 */
            k = ((size_t)p[1] << 8) | p[2];
            p += 3;
        } else if (p[0] == 0xdb && end - p >= 5) {        /* str 32 */
            k = ((size_t)p[1] << 24) | ((size_t)p[2] << 16) | ((size_t)p[3] << 8) | p[4];
            p += 5;
        } else {
            return -1;                                    /* not a str */
        }
        if ((size_t)(end - p) < k)
            return -1;
        if (k >= mark_len && memcmp(p, mark, mark_len) == 0)
            return 1;
        p += k;
    }
    return 0;
}


/* Read a msgpack str (raw: 1, also bin) at *p: its span in ``base``, or -1. */
static int _ember_mp_str(const unsigned char **p, const unsigned char *end,
                         const unsigned char *base, int raw, ember_spare_span_t *span)
{
    const unsigned char *q = *p;
    size_t k;

    if (q >= end)
        return -1;
    if ((q[0] & 0xe0) == 0xa0) {                                  /* fixstr */
        k = q[0] & 0x1f;
        q += 1;
    } else if ((q[0] == 0xd9 || (raw && q[0] == 0xc4)) && end - q >= 2) {     /* 8 */
        k = q[1];
        q += 2;
    } else if ((q[0] == 0xda || (raw && q[0] == 0xc5)) && end - q >= 3) {     /* 16 */
        k = ((size_t)q[1] << 8) | q[2];
        q += 3;
    } else if ((q[0] == 0xdb || (raw && q[0] == 0xc6)) && end - q >= 5) {     /* 32 */
        k = ((size_t)q[1] << 24) | ((size_t)q[2] << 16) | ((size_t)q[3] << 8) | q[4];
        q += 5;
    } else {
        return -1;
    }
    if ((size_t)(end - q) < k)
        return -1;
    span->off = (size_t)(q - base);
    span->len = k;
    *p = q + k;
    return 0;
}

int ember_spare_request(const char *msg, size_t len, const char *env, size_t env_len,
                        ember_spare_request_t *out)
{
    const unsigned char *base = (const unsigned char *)msg;
    const unsigned char *p = base;
    const unsigned char *end = base + len;
    /* The template's entries, as offsets into env (a few KB of stack:
     * pages a spare's stack may not have had yet, a fault each). */
    uint32_t starts[EMBER_SPARE_MAX_ENV];
    uint32_t lens[EMBER_SPARE_MAX_ENV];
    unsigned char kept[EMBER_SPARE_MAX_ENV];        /* the entry is in envp, or its key set */
    size_t nenv = 0, i, j;
    long n;

    if (msg == NULL || out == NULL || (env == NULL && env_len != 0) || env_len > UINT32_MAX)
        return -1;
    for (i = 0; i < env_len; ) {                    /* the template's entries */
        const char *nul = memchr(env + i, '\0', env_len - i);
        if (nul == NULL || nenv == EMBER_SPARE_MAX_ENV)
            return -1;
        starts[nenv] = (uint32_t)i;
        lens[nenv] = (uint32_t)(nul - (env + i));
        kept[nenv] = 0;
        nenv++;
        i = (size_t)(nul - env) + 1;
    }
    if (_ember_mp_array(&p, end) != 3)
        return -1;
    n = _ember_mp_array(&p, end);                   /* args */
    if (n < 0 || n > EMBER_SPARE_MAX_ARGS)
        return -1;
    out->nargs = (size_t)n;
    for (i = 0; i < out->nargs; i++)
        if (_ember_mp_str(&p, end, base, 0, &out->args[i]) != 0)
            return -1;
    n = _ember_mp_array(&p, end);                   /* envp */
    if (n < 0)
        return -1;
    out->nsets = 0;
    for (long e = 0; e < n; e++) {
        ember_spare_span_t it;
        const char *kv, *eq;
        size_t klen;
        int found = 0;

        if (_ember_mp_str(&p, end, base, 1, &it) != 0)
            return -1;
        kv = msg + it.off;
        eq = memchr(kv, '=', it.len);
        if (eq == NULL || eq == kv || memchr(kv, '\0', it.len) != NULL)
            return -1;                              /* (what os.environ would refuse) */
        for (j = 0; j < nenv && !found; j++) {
            if (lens[j] == it.len && memcmp(env + starts[j], kv, it.len) == 0) {
                kept[j] = 1;
                found = 1;
            }
        }
        if (found)
            continue;
        if (out->nsets == EMBER_SPARE_MAX_SETS)
            return -1;
        out->sets[out->nsets++] = it;
        klen = (size_t)(eq - kv) + 1;               /* the key and its '=' */
        for (j = 0; j < nenv; j++)
            if (lens[j] >= klen && memcmp(env + starts[j], kv, klen) == 0)
                kept[j] = 1;                        /* replaced */
    }
    out->nunsets = 0;
    for (j = 0; j < nenv; j++) {
        const char *eq;

        if (kept[j])
            continue;
        eq = memchr(env + starts[j], '=', lens[j]);
        if (eq == NULL || out->nunsets == EMBER_SPARE_MAX_SETS)
            return -1;
        out->unsets[out->nunsets].off = starts[j];  /* to be removed: its key */
        out->unsets[out->nunsets].len = (size_t)(eq - (env + starts[j]));
        out->nunsets++;
    }
    if (p < end && *p == 0xc0) {                    /* cwd */
        out->cwd_nil = 1;
        p++;
    } else {
        out->cwd_nil = 0;
        if (_ember_mp_str(&p, end, base, 1, &out->cwd) != 0)
            return -1;
    }
    return p == end ? 0 : -1;
}

int ember_spare_putenv(char *const *entries, size_t n)
{
    extern char **environ;
    size_t have = 0, count, i, j;
    char **next;

    while (environ != NULL && environ[have] != NULL)
        have++;
    next = malloc((have + n + 1) * sizeof *next);
    if (next == NULL) {
        errno = ENOMEM;
        return -1;
    }
    if (have)
        memcpy(next, environ, have * sizeof *next);
    count = have;
    for (i = 0; i < n; i++) {
        const char *eq = strchr(entries[i], '=');
        size_t klen = eq == NULL ? strlen(entries[i]) : (size_t)(eq - entries[i]);

        for (j = 0; j < count; j++)             /* the entry of its key: "K=" */
            if (strncmp(next[j], entries[i], klen) == 0 && next[j][klen] == '=')
                break;
        if (eq == NULL) {                       /* "K": removed (the last moved in) */
            if (j < count)
                next[j] = next[--count];
            continue;
        }
        next[j] = entries[i];
        if (j == count)
            count++;
    }
    next[count] = NULL;
    environ = next;     /* the old array is the template's (or setenv's): left as it is */
    return 0;
}


/* ------------------------------------------------------------------ */
/* a lease's steps up to its call (spares.h)                           */

/* The value of a base64 character, or -1. */
static int _ember_b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

long ember_spare_b64_decode(const char *text, size_t len, unsigned char *out, size_t cap)
{
    size_t i, n = 0, pad = 0;

    if (len % 4 != 0)
        return -1;
    if (len >= 1 && text[len - 1] == '=')
        pad = (len >= 2 && text[len - 2] == '=') ? 2 : 1;
    if ((len / 4) * 3 - pad > cap)
        return -1;
    for (i = 0; i < len; i += 4) {
        int v[4];
        int j, last = i + 4 == len;
        unsigned long w;

        for (j = 0; j < 4; j++) {
            v[j] = _ember_b64_value((unsigned char)text[i + (size_t)j]);
            if (v[j] < 0) {
                /* '=' only as the padding of the last group */
                if (!(last && text[i + (size_t)j] == '=' && (size_t)j >= 4 - pad))
                    return -1;
                v[j] = 0;
            }
        }
        w = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12)
            | ((unsigned long)v[2] << 6) | (unsigned long)v[3];
        if (last && pad != 0 && (w & (pad == 2 ? 0xffffUL : 0xffUL)) != 0)
            return -1;      /* bits set in the padding: binascii's strict mode refuses it */
        out[n++] = (unsigned char)(w >> 16);
        if (!last || pad < 2)
            out[n++] = (unsigned char)(w >> 8);
        if (!last || pad < 1)
            out[n++] = (unsigned char)w;
    }
    return (long)n;
}

int ember_spare_lease_args(const char *msg, const ember_spare_request_t *req,
                           const char *flags, size_t flags_len, ember_spare_span_t *token,
                           ember_spare_span_t *call, ember_spare_span_t *result)
{
    static const char tmpl[] = "--template", preload[] = "--preload=", spare[] = "--spare=",
                      fl[] = "--flags=";
    ember_spare_span_t rest[2];
    size_t i, nrest = 0;
    int have_token = 0, have_flags = 0;

    if (msg == NULL || req == NULL || req->nargs < 2 || req->args[0].len != 2
            || memcmp(msg + req->args[0].off, "-m", 2) != 0)
        return -1;
    for (i = 2; i < req->nargs; i++) {          /* the worker's argv: args[2:] */
        const char *a = msg + req->args[i].off;
        size_t k = req->args[i].len;

        if (k == sizeof tmpl - 1 && memcmp(a, tmpl, k) == 0)
            continue;
        if (k >= sizeof preload - 1 && memcmp(a, preload, sizeof preload - 1) == 0)
            continue;
        if (k >= sizeof fl - 1 && memcmp(a, fl, sizeof fl - 1) == 0) {
            const char *key = a + sizeof fl - 1, *end = memchr(key, '\x1e', k - (sizeof fl - 1));
            size_t key_len = end != NULL ? (size_t)(end - key) : k - (sizeof fl - 1);

            if (have_flags || key_len != flags_len
                    || (flags_len && memcmp(key, flags, flags_len) != 0))
                return -1;                      /* not the template's: a fresh interpreter */
            have_flags = 1;
            continue;
        }
        if (k >= sizeof spare - 1 && memcmp(a, spare, sizeof spare - 1) == 0) {
            if (!have_token) {
                token->off = req->args[i].off + (sizeof spare - 1);
                token->len = k - (sizeof spare - 1);
                have_token = 1;
            }
            continue;
        }
        if (nrest == 2)
            return -1;
        rest[nrest++] = req->args[i];
    }
    if (!have_token || nrest != 2 || (!have_flags && flags_len != 0))
        return -1;
    *call = rest[0];
    *result = rest[1];
    return 0;
}

void ember_spare_wait_adopted(void)
{
    pid_t me = getpid();
    int spins = 0;

    while (getpgrp() != me) {
        if (spins < 200) {
            spins++;
            sched_yield();
        } else {
            struct timespec ts = {0, 200000};       /* 0.2 ms */
            nanosleep(&ts, NULL);
        }
    }
}


/* ------------------------------------------------------------------ */
/* a template child's exit (spares.h)                                  */

/* The holder's stack (it makes three system calls), and whether it was
 * made: one holder a process, since they would share the stack. */
static char _ember_holder_stack[16384] __attribute__((aligned(64)));
static atomic_int _ember_holder_made;

/* The holder: named, it waits for the pidfd of the process whose memory
 * it shares (CLONE_VM) to be readable, that process's exit, and ends,
 * which unmaps the memory.  System calls through syscall() only: it runs on that
 * process's thread-local storage (no CLONE_SETTLS; syscall() writes errno
 * there on a failure only, in a process that has exited or is exiting),
 * and with every signal blocked (inherited), so that no handler of the
 * process's runs in it. */
static int _ember_holder(void *arg)
{
    struct pollfd p;

    (void)syscall(SYS_prctl, PR_SET_NAME, (unsigned long)EMBER_EXIT_HOLDER_COMM, 0UL, 0UL, 0UL);
    p.fd = (int)(intptr_t)arg;
    p.events = POLLIN;
    p.revents = 0;
    (void)syscall(SYS_ppoll, &p, 1UL, NULL, NULL, (size_t)8);     /* (no mask: size unused) */
    return 0;
}

pid_t ember_exit_holder(pid_t parent)
{
    struct stat st;
    sigset_t all;
    int pidfd;
    long pid;

    /* The holder is the parent's child (CLONE_PARENT): only the one it
     * was meant for (a fork of a template child that ran on into its end
     * would give its parent, a user's process, a child it did not make). */
    if (parent > 0 && getppid() != parent)
        return 0;
    /* Single-threaded only: another thread could use an fd closed below
     * (or be handed its number by an open()) before the exit ends it.
     * /proc/self/task links 2 + the number of threads. */
    if (stat("/proc/self/task", &st) != 0 || st.st_nlink != 3)
        return 0;
    /* Relaxed: it only keeps a second call from using the same stack; it
     * publishes nothing (one thread, as checked above). */
    if (atomic_exchange_explicit(&_ember_holder_made, 1, memory_order_relaxed) != 0)
        return 0;
    sigfillset(&all);
    (void)sigprocmask(SIG_BLOCK, &all, NULL);
    /* close_range failing with anything but ENOSYS (a seccomp profile
     * that predates it: EPERM) closed nothing: no holder, which would
     * share every fd of the process until it ended. */
    if (_ember_close_fds(0u, ~0u) != 0)
        return 0;
    /* Out of its directory, which the holder's copy (no CLONE_FS) would
     * hold until it ends, as its fds would: nothing runs here after this. */
    (void)chdir("/");
    pidfd = (int)syscall(SYS_pidfd_open, (long)getpid(), 0L);
    if (pidfd < 0)
        return 0;
    /* CLONE_FILES: the holder shares the (now empty but for the pidfd)
     * fd table rather than copying it; CLONE_PARENT: the shepherd's child,
     * as the process is; CLONE_UNTRACED: a tracer of the process does not
     * follow it there. */
    pid = clone(_ember_holder, _ember_holder_stack + sizeof _ember_holder_stack,
                CLONE_VM | CLONE_FILES | CLONE_PARENT | CLONE_UNTRACED, (void *)(intptr_t)pidfd);
    if (pid < 0) {
        (void)close(pidfd);
        return 0;
    }
    /* Its unmapping waits for a CPU nothing else wants: woken by the same
     * exit as the joiner, it would take the CPU the joiner and the next
     * start need (nice 0: the joiner waited for it in a quarter of the
     * exits).  A nice value, not SCHED_IDLE: under a full load a nice-19
     * process still gets 1.5% of a CPU against each busy one, so the
     * holders waiting to unmap stay few (SCHED_IDLE: 0.3%). */
    (void)setpriority(PRIO_PROCESS, (id_t)pid, EMBER_EXIT_HOLDER_NICE);
    return (pid_t)pid;
}
