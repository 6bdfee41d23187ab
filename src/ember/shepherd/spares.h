/*
 * spares.h -- the warm template's loop that makes the shepherd's spares
 * (ember.shepherd.template), in C.
 *
 * The template answers the shepherd's requests for spares (the children it
 * clones ahead of time: docs/python-processes.md, "The spares, held by the
 * shepherd").  Each clone shares the template's pages copy-on-write with
 * the new spare, so every page the template writes before the next clone is
 * copied once: the Python loop between clones (receive, unpack, make a
 * socket pair, clone, pack and send the answer) wrote ~145
 * pages a clone.  ember_spares_serve() runs that loop without any Python:
 * it receives a request, and as long as it is the very request the caller
 * said it can answer here (the same bytes, no fds), it makes the socket
 * pair, clones the spare and sends the answer: the spare's pid, the number
 * of the shepherd's end of the pair in the spare, then the caller's answer
 * tail.  The shepherd's end stays in the spare (keep_peer), which holds
 * both ends until it has read its request, and the shepherd takes its own
 * copy from there with pidfd_getfd(2) (template.py _take_end): no socket is
 * ever in flight.  (A unix socket in flight, sent by SCM_RIGHTS and not yet
 * received, makes every last close of a unix socket on the machine queue
 * the kernel's AF_UNIX garbage collector, a kworker woken:
 * docs/multiprocessing.md, the twenty-fifth pass; the shepherd reads an
 * answer only at its next start.)  Where pidfd_getfd is not allowed
 * (keep_peer 0: an older kernel, a seccomp profile, a ptrace policy that
 * refuses it) the end goes with the answer by SCM_RIGHTS, the number -1.
 * Anything else is handed back to the caller.
 *
 * The clone is clone(CLONE_PARENT | CLONE_CHILD_SETTID | SIGCHLD) between
 * PyOS_BeforeFork() and PyOS_AfterFork_Parent/Child(), as the template's
 * Python path does (template._clone_parent): the child is the shepherd's
 * child, glibc's TID field (tid_addr) is set by the kernel and the robust
 * list re-registered by the child.  Only for a single-threaded template
 * (the caller checks), holding the GIL throughout (no other thread to give
 * it to; no Python runs until it returns).
 *
 * Death: the template killed in the loop costs what it did before: a
 * request in flight is never answered (the shepherd stops the template and
 * starts a new one); a spare cloned whose answer was not sent waits (with
 * keep_peer it holds both ends of its pair; without, it sees EOF once the
 * template's end is closed with the template, and exits).  Nothing
 * tells the shepherd that spare's pid (killed between the clone and the
 * answer's sendmsg), but the spare is still in the template's process
 * group (a spare does not leave it: the shepherd moves it out when it
 * reads its answer, template.py _adopt), so once the shepherd has reaped
 * the template it kills and reaps that group's members (template.py,
 * _reap_group); the answers sent but not yet read are read and their
 * spares reaped (_reap_unread).  A spare dying costs nothing here.
 */
#ifndef EMBER_SPARES_H
#define EMBER_SPARES_H

#include <stddef.h>
#include <sys/types.h>
#include "ember_common.h"

/* What ember_spares_serve() returns through *what. */
typedef enum {
    EMBER_SPARES_CHILD = 1,     /* in the new spare: *sock_out is its end of the pair */
    EMBER_SPARES_MESSAGE = 2,   /* a request for the caller: buf[0:*len_out], fds_out */
    EMBER_SPARES_EOF = 3        /* the shepherd closed its end */
} ember_spares_what_t;

typedef struct {
    int sock;                 /* the template's SOCK_SEQPACKET socket to the shepherd */
    const char *request;      /* the spare request answered here (exact bytes) */
    size_t request_len;
    const char *tail;         /* the answer after its header, the pid and the fd */
    size_t tail_len;
    int keep_peer;            /* 1: the shepherd's end stays in the spare (its number
                                 answered); 0: sent with the answer (SCM_RIGHTS) */
    void *tid_addr;           /* glibc's TID field of this thread (CLONE_CHILD_SETTID) */
    void *robust_head;        /* this thread's robust list, re-registered by the child */
    size_t robust_len;
    char *buf;                /* where a request is received */
    size_t buf_cap;
} ember_spares_args_t;

/* 1 from before a raw clone's PyOS_BeforeFork() until after its
 * PyOS_AfterFork_Parent/Child() (ember_clone_parent(): this loop's, and
 * the template's Python path's): the at-fork hooks
 * of template._CLONE_SKIPS do nothing then (_spawn.skip_in_clone).  The
 * template's only thread reads and writes it, holding the GIL. */
extern int ember_spares_in_clone;

/* The raw clone of the template's Python path (template._clone_parent,
 * for a request the loop below does not serve; ctypes before: _ctypes and
 * libffi, 10 mappings and ~0.2 MB in the template, copied at every clone
 * and unmapped at every child's exit).
 * ember_clone_setup(): this thread's robust list (get_robust_list) and
 * the address of glibc's TID field, derived from its head (glibc's struct
 * pthread keeps tid, an unused pid, robust_prev, then robust_head) and
 * checked to hold this thread's TID; -1 with errno where that cannot be
 * made exact (an unknown machine: ENOSYS; no list, another layout:
 * EINVAL).  In a child of ember_clone_parent() it finds the child's own
 * (tests: the kernel wrote its TID, its list is registered).
 * ember_clone_parent(): clone(CLONE_PARENT | CLONE_CHILD_SETTID | SIGCHLD)
 * between CPython's PyOS_BeforeFork() and PyOS_AfterFork_Parent/Child(),
 * ember_spares_in_clone set meanwhile, the child's robust list
 * re-registered at the same address (the kernel does not carry it over);
 * the child's pid, 0 in the child, -1 with errno.  With the GIL held, in
 * a single-threaded process. */
int ember_clone_setup(void **tid_addr, void **robust_head, size_t *robust_len);
long ember_clone_parent(void *tid_addr, void *robust_head, size_t robust_len);

/* Serve spare requests until one is not for this loop.  Returns EMBER_OK
 * with *what set, or EMBER_ERR_OS (errno: the receive failed) or
 * EMBER_ERR_INVALID_ARG (an unsupported machine, a NULL argument).  A
 * request whose spare cannot be made here (socketpair or clone failed) is
 * handed back as a MESSAGE (the caller's path answers it).  fds_out holds
 * up to 3 fds (received, the caller's to close); *nfds_out how many.
 * In the new spare (CHILD), *sock_out is its end of the pair and
 * *peer_out the shepherd's (keep_peer; else -1).  The answer is the
 * msgpack array [pid, fd, <the tail's three items>], both ints as int 32.
 * Call with the GIL held. */
ember_rc_t ember_spares_serve(const ember_spares_args_t *args, int *what, size_t *len_out,
                              int fds_out[3], int *nfds_out, int *sock_out, int *peer_out);

/* The shepherd's side: a copy of the fd ``fd`` of its child ``pid``
 * (pidfd_open(2), then pidfd_getfd(2): close-on-exec), or -1 with errno
 * (EBADF: no such fd, so a negative ``fd`` checks the permission only;
 * ESRCH: the process has exited; EPERM, ENOSYS, or a seccomp filter's
 * errno: not allowed here).  Death: nothing is held but the pidfd, for the
 * call (the shepherd's fd table goes with it). */
int ember_spares_take(pid_t pid, int fd);

/*
 * The spare's own steps (in the spare, before any of its Python runs: each
 * Python step there wrote pages it shares with the template, ~80 copy-on-
 * write faults for these): ember_spare_detach() names it and detaches it
 * from the template (parent-death signal, checked parent, no inherited fd
 * but its socket and the shepherd's end kept in it; it stays in the
 * template's process group until the shepherd moves it out),
 * ember_spare_recv() waits for its
 * request (the message and its three fds), ember_spare_stdio() puts those
 * fds in place as 0, 1, 2, ember_spare_leased() says whether the request
 * is a lease (ember._worker --spare=...), ember_spare_name() sets the
 * process's comm.
 *
 * ember_spare_request() reads its request for its Python without unpacking
 * it there, and ember_spare_putenv() puts the environment changes it finds
 * in place (their Python equivalents, msgpack's objects, set operations,
 * os.environ's setenv(), wrote ~70 pages the spare shares with the template).
 *
 * Death: a spare is no one's yet: killed anywhere in these steps, it costs
 * the shepherd a spare (it reaps it and hands the request to another, or
 * reports the start failed); the template is not involved.  Killed before
 * the shepherd took its end from it, the shepherd's pidfd_getfd fails
 * (ESRCH, EBADF) and it reaps it as a spare that cannot be used.  A spare
 * that holds the shepherd's end never sees EOF on its own: one the
 * shepherd drops unused is killed (template.py _reap, _kill_child), and
 * the shepherd's death kills it (its parent-death signal).
 */

/* The step of ember_spare_detach() that failed. */
typedef enum {
    EMBER_SPARE_OK = 0,
    EMBER_SPARE_STEP_PDEATHSIG = 1,   /* prctl(PR_SET_PDEATHSIG) failed (errno) */
    EMBER_SPARE_STEP_PARENT = 2,      /* the parent is not the shepherd (exited) */
    EMBER_SPARE_STEP_CLOSE = 4        /* closing the inherited fds failed (errno) */
} ember_spare_step_t;

/* Name the process ``comm`` (NULL: unchanged), set SIGKILL as its parent-
 * death signal, check that its parent is ``shepherd_pid``, close every fd
 * above 2 but ``keep`` and ``keep2`` (-1: none).  Returns the step that
 * failed (errno set), or EMBER_SPARE_OK.  (Its process group is the
 * shepherd's to make.) */
int ember_spare_detach(int keep, int keep2, pid_t shepherd_pid, const char *comm);

/* The length of the next message on ``sock`` (waiting for it), 0 at EOF,
 * -1 (errno) on error.  Nothing is consumed. */
ssize_t ember_spare_peek(int sock);

/* Receive the next message on ``sock`` into buf (cap bytes: at least what
 * ember_spare_peek() said) with up to three fds (more are closed); its
 * length, 0 at EOF, -1 (errno). */
ssize_t ember_spare_recv(int sock, char *buf, size_t cap, int fds_out[3], int *nfds_out);

/* dup2 fds[i] onto i (i = 0, 1, 2), then close those of fds above 2;
 * 0, or -1 (errno). */
int ember_spare_stdio(const int fds[3]);

/* A request ``msg`` (the msgpack of [args, envp, cwd]): 1 if one of args
 * starts with "--spare=", 0 if none does, -1 if args cannot be read here
 * (the caller decides). */
int ember_spare_leased(const char *msg, size_t len);

/* A request read for the spare's Python without unpacking it there
 * (ember_spare_request()): spans of ``msg``. */
#define EMBER_SPARE_MAX_ARGS 32
#define EMBER_SPARE_MAX_SETS 16
#define EMBER_SPARE_MAX_ENV 256

typedef struct {
    size_t off, len;
} ember_spare_span_t;

typedef struct {
    size_t nargs;                                   /* args: msgpack str items */
    ember_spare_span_t args[EMBER_SPARE_MAX_ARGS];
    size_t nsets;                                   /* envp items the template lacks */
    ember_spare_span_t sets[EMBER_SPARE_MAX_SETS];
    size_t nunsets;                                 /* the template's keys envp lacks */
    ember_spare_span_t unsets[EMBER_SPARE_MAX_SETS];    /* (spans of env, not msg) */
    int cwd_nil;                                    /* cwd: nil (1) or the span */
    ember_spare_span_t cwd;
} ember_spare_request_t;

/* Read a request ``msg`` (the msgpack of [args, envp, cwd]: args str
 * items, envp ``K=V`` items, str or bin, cwd nil, str or bin) against the
 * environment the spare has from its template, ``env`` (``env_len`` bytes:
 * its ``K=V`` entries, each ended by a NUL; at most EMBER_SPARE_MAX_ENV):
 * the args, the cwd, the envp items that are not among the template's
 * entries (``sets``: each to be set, replacing the template's value of its
 * key if it has one), and the keys of the template's entries that envp
 * has no entry for (``unsets``, spans of ``env``: each to be removed; a
 * parent that removed a variable of the runtime's environment).  Returns
 * 0, or -1 (``out`` unspecified) when the caller must unpack the request
 * itself: more args, sets or unsets than the limits, items of other
 * types, a malformed or truncated message.  No allocation, no system
 * call. */
int ember_spare_request(const char *msg, size_t len, const char *env, size_t env_len,
                        ember_spare_request_t *out);

/* Put the ``n`` entries ``K=V`` (NUL-ended, kept by the caller for the
 * life of the process) in the C environment, each replacing the entry of
 * its key or appended; an entry ``K`` (no '=') removes the entry of its
 * key: in one new array made ``environ``, with none of setenv()'s copies
 * and search tree, whose writes to the template's C heap cost a spare ~12
 * copy-on-write faults a variable.  Single-threaded callers only (a
 * spare).  0, or -1 (errno ENOMEM; nothing changed). */
int ember_spare_putenv(char *const *entries, size_t n);

/* Set the process's comm (the calling thread's: a spare's only one). */
void ember_spare_name(const char *comm);

/*
 * A lease (a request whose worker arguments hold ``--spare=TOKEN``) has its
 * set-up up to the wait for its call done in C too (_spawn.spare_wait with
 * ``lease``): its arguments read here, the environment, the directory, the
 * SIGINT handler, the wait for its process group; the Python it ran for
 * these (and the worker's argument scan and base64 decoding) wrote ~50
 * pages it shares with the template.  Death: as for the steps above (a
 * lease is no one's until its creator's call; killed here, GS sees it die
 * idle).
 */

/* In a request read by ember_spare_request() whose args[0] is "-m", the
 * worker's arguments (args[2:], as ember._worker reads them: ``--template`` and
 * ``--preload=...`` skipped, the first ``--spare=TOKEN``, then exactly two
 * others, CALL and RESULT): their spans in ``msg``.  0, or -1 when they are
 * not of that shape (the caller's Python reads them) or their interpreter
 * options are not the template's: ``--flags=KEY`` (at most once, KEY up to
 * a 0x1e byte if there is one, the options after it; none: KEY empty)
 * with KEY other than ``flags`` (``flags_len`` bytes; the Python path runs
 * the worker in a fresh interpreter with those options). */
int ember_spare_lease_args(const char *msg, const ember_spare_request_t *req,
                           const char *flags, size_t flags_len, ember_spare_span_t *token,
                           ember_spare_span_t *call, ember_spare_span_t *result);

/* Decode the base64 ``text`` (``len`` bytes: a multiple of 4, the standard
 * alphabet, '=' only as the last group's padding, no bits set in it) into
 * ``out`` (``cap`` bytes); its length, or -1 for anything else (the caller
 * leaves it to binascii's strict mode, which says why). */
long ember_spare_b64_decode(const char *text, size_t len, unsigned char *out, size_t cap);

/* Wait until the process leads its own process group (the shepherd's
 * setpgid, template.py _adopt): 200 sched_yield()s, then 0.2 ms sleeps.
 * Never returns for a child its shepherd never adopts (it is killed with
 * the template's group: template.py _wait_adopted). */
void ember_spare_wait_adopted(void);

/*
 * A template child's exit (template._child's end): ember_exit_holder() hands
 * the process's memory to a *holder* before the exit, so that the exit
 * does not unmap it.  An exit unmaps the whole address space before the
 * process's pidfd turns readable (exit_mm comes before exit_notify in the
 * kernel's do_exit): for a template child, the ~3,100 page table entries
 * and ~230 mappings the clone copied from the template, and the pages the
 * child wrote, 0.6-0.7 ms on the CPU between its last line and its
 * joiner's wake-up.  With the holder, the exit drops a reference to the
 * memory and the joiner is woken ~30 us after exit_group; the holder
 * unmaps it after that, on a CPU the joiner does not need.
 *
 * ember_exit_holder(parent) (single-threaded only, and only while the
 * process's parent is ``parent`` if it is > 0: else it does nothing and
 * returns 0) blocks every signal, closes every fd (what the exit would
 * close: the shepherd sees its pipes' EOF before the exit, as it did),
 * changes to "/" (the holder does not hold the process's directory), opens
 * the process's own pidfd and clones the holder: clone(CLONE_VM |
 * CLONE_FILES | CLONE_PARENT | CLONE_UNTRACED), named
 * EMBER_EXIT_HOLDER_COMM and given the nice value EMBER_EXIT_HOLDER_NICE
 * (its unmapping must not take the CPU its joiner is woken for), which
 * waits for that pidfd and ends.  Returns the
 * holder's pid, or 0 if none was made (then the exit unmaps as before):
 * also when close_range(2) fails with anything but ENOSYS (a seccomp
 * profile that predates it; ENOSYS: the fds are closed one by one), as the
 * holder would share every fd of the process until it ended (signals are
 * left blocked: the caller exits at once).
 * The caller then _exit()s at once: it can no longer write anything.
 * Once only in a process.
 *
 * The holder is the process's parent's child (the shepherd's), in the
 * process's group (the shepherd's _reap_holders() reaps it at a later
 * exit; its sweep of orphans otherwise).
 *
 * Death: the process killed before the clone costs nothing (its exit
 * unmaps); after it, the holder's pidfd turns readable all the same and it
 * ends.  The holder killed (its process group's SIGKILL at a teardown):
 * the process's exit unmaps, as without it.  The holder runs no code of
 * the process's, touches none of its memory but its own stack, and holds
 * no fd but the pidfd, so nothing the process held lives on but its
 * memory, for the time the holder takes to unmap it.
 */
#define EMBER_EXIT_HOLDER_COMM "ember-exit"
#define EMBER_EXIT_HOLDER_NICE 19

pid_t ember_exit_holder(pid_t parent);

#endif
