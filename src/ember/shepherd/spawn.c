/*
 * spawn.c -- the shepherd's process spawn helper (see spawn.h for the
 * contract).
 *
 * Why clone(CLONE_VM | CLONE_VFORK) and not fork(): fork() copies the page
 * tables of the (large, Python) parent, which costs time proportional to its
 * size; vfork semantics share the memory and suspend only the calling thread
 * until the child execs, so a spawn costs a few tens of microseconds.  We use
 * clone() with a private stack rather than vfork() itself (as glibc's
 * posix_spawn does): the child then never runs on, and never returns into,
 * the parent's stack frame, so there is no -Wclobbered hazard and no
 * returns-twice reasoning.
 *
 * Rules for the child, which shares the parent's memory while other parent
 * threads keep running:
 *   - only async-signal-safe calls (raw system calls in effect); no malloc,
 *     no stdio, nothing that takes a lock another parent thread may hold;
 *   - it writes to parent memory only the two failure fields of the context;
 *   - no signal handler of the parent may run in it: the parent blocks every
 *     signal around clone(), the child resets every disposition to SIG_DFL
 *     before it unblocks anything (it sets the empty mask just before exec).
 *
 * The parent resumes when the child has exec'd or _exit()ed (CLONE_VFORK);
 * the kernel's mm release orders the child's stores to the failure fields
 * before the parent's loads of them.
 */
#include "spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <pthread.h>
#include <unistd.h>

#ifndef _NSIG
#define _NSIG 65
#endif

/* The child's stack.  It only makes a handful of system calls; pages are
 * touched lazily, so a generous size costs nothing (sanitizer builds need
 * more than plain ones). */
#define _EMBER_SPAWN_STACK (256u * 1024u)

typedef struct {
    const ember_spawn_args_t *args;
    pid_t parent_pid;
    int max_fd;                    /* bound for the close() fallback loop */
    volatile int fail_step;        /* written by the child only on failure */
    volatile int fail_errno;
} _ember_spawn_ctx_t;

static _Noreturn void _ember_child_fail(_ember_spawn_ctx_t *ctx, int step)
{
    ctx->fail_errno = errno;
    ctx->fail_step = step;
    _exit(127);
}

static int _ember_spawn_child(void *arg)
{
    _ember_spawn_ctx_t *ctx = arg;
    const ember_spawn_args_t *a = ctx->args;
    struct sigaction sa;
    sigset_t none;
    int fds[3];

    /* 1. Die with the parent thread; if it is already gone, give up. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
        _ember_child_fail(ctx, EMBER_SPAWN_STEP_PDEATHSIG);
    if (getppid() != ctx->parent_pid) {
        errno = ESRCH;
        _ember_child_fail(ctx, EMBER_SPAWN_STEP_PARENT_GONE);
    }

    /* 1b. Its own process group: a terminal's Ctrl-C reaches only the
     * launcher, which forwards it to the head; and the shepherd can kill a
     * process together with what it started (killpg). */
    if (a->new_pgrp && setpgid(0, 0) != 0)
        _ember_child_fail(ctx, EMBER_SPAWN_STEP_PGRP);

    /* 2. Default dispositions for every signal (ignored ones too: SIG_IGN
     * would survive exec; Python ignores SIGPIPE and SIGXFSZ).  sigaction()
     * refuses SIGKILL/SIGSTOP and glibc's internal signals with EINVAL,
     * which is expected and ignored. */
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        (void)sigaction(sig, &sa, NULL);
    }

    /* 3. Working directory. */
    if (a->cwd != NULL && chdir(a->cwd) != 0)
        _ember_child_fail(ctx, EMBER_SPAWN_STEP_CHDIR);

    /* 4. stdio.  A source fd below 3 that is not already in place is first
     * moved out of the way, so an earlier dup2 cannot overwrite it. */
    for (int i = 0; i < 3; i++) {
        fds[i] = a->stdio[i];
        if (fds[i] >= 0 && fds[i] < 3 && fds[i] != i) {
            fds[i] = fcntl(fds[i], F_DUPFD, 3);
            if (fds[i] < 0)
                _ember_child_fail(ctx, EMBER_SPAWN_STEP_STDIO);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (fds[i] < 0)
            continue;
        if (fds[i] == i) {
            /* Already in place: make sure it survives exec. */
            if (fcntl(i, F_SETFD, 0) != 0)
                _ember_child_fail(ctx, EMBER_SPAWN_STEP_STDIO);
        } else if (dup2(fds[i], i) < 0) {
            _ember_child_fail(ctx, EMBER_SPAWN_STEP_STDIO);
        }
    }

    /* 5. Close everything else (the parent's pipes to other children
     * included, so their EOF is never delayed by this child). */
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
        if (errno != ENOSYS)
            _ember_child_fail(ctx, EMBER_SPAWN_STEP_CLOSE_FDS);
        for (int fd = 3; fd < ctx->max_fd; fd++)
            (void)close(fd);
    }

    /* 5b. The soft fd limit the caller asks for (a raw prlimit64 syscall
     * through glibc's wrappers, no lock taken). */
    if (a->nofile_soft >= 0) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
            _ember_child_fail(ctx, EMBER_SPAWN_STEP_RLIMIT);
        rlim_t want = (rlim_t)a->nofile_soft;
        if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max)
            want = rl.rlim_max;
        if (want != rl.rlim_cur) {
            rl.rlim_cur = want;
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
                _ember_child_fail(ctx, EMBER_SPAWN_STEP_RLIMIT);
        }
    }

    /* 6. Empty signal mask (it survives exec), then exec. */
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0)
        _ember_child_fail(ctx, EMBER_SPAWN_STEP_SIGNALS);
    execve(a->exe, a->argv, a->envp);
    _ember_child_fail(ctx, EMBER_SPAWN_STEP_EXEC);
}

ember_rc_t ember_spawn(const ember_spawn_args_t *args, pid_t *pid_out,
                       ember_spawn_failure_t *failure)
{
    _ember_spawn_ctx_t ctx;
    struct rlimit rl;
    sigset_t all, saved;
    void *stack;
    pid_t pid;
    int clone_errno;

    if (args == NULL || args->exe == NULL || args->argv == NULL ||
        args->envp == NULL || pid_out == NULL || failure == NULL)
        return EMBER_ERR_INVALID_ARG;
    failure->step = EMBER_SPAWN_STEP_NONE;
    failure->err = 0;

    memset(&ctx, 0, sizeof ctx);
    ctx.args = args;
    ctx.parent_pid = getpid();
    ctx.max_fd = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
        rl.rlim_cur < (rlim_t)ctx.max_fd)
        ctx.max_fd = (int)rl.rlim_cur;

    stack = mmap(NULL, _EMBER_SPAWN_STACK, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        failure->step = EMBER_SPAWN_STEP_CLONE;
        failure->err = errno;
        return EMBER_ERR_OS;
    }

    /* No parent signal handler may run in the child (it would run on parent
     * memory): block everything across clone(); the child restores defaults
     * before unblocking. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    /* The stack grows down on every architecture we build for. */
    pid = clone(_ember_spawn_child, (char *)stack + _EMBER_SPAWN_STACK,
                CLONE_VM | CLONE_VFORK | SIGCHLD, &ctx);
    clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    munmap(stack, _EMBER_SPAWN_STACK);

    if (pid < 0) {
        failure->step = EMBER_SPAWN_STEP_CLONE;
        failure->err = clone_errno;
        return EMBER_ERR_OS;
    }
    if (ctx.fail_step != EMBER_SPAWN_STEP_NONE) {
        /* The child has already called _exit(127); reap it (this returns at
         * once) so a failed spawn leaves no zombie. */
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        failure->step = ctx.fail_step;
        failure->err = ctx.fail_errno;
        return EMBER_ERR_OS;
    }
    *pid_out = pid;
    return EMBER_OK;
}

ember_rc_t ember_set_pdeathsig(int sig)
{
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0) != 0)
        return EMBER_ERR_OS;
    return EMBER_OK;
}

const char *ember_spawn_step_str(int step)
{
    static const char *const names[EMBER_SPAWN_STEP_MAX_] = {
        "none", "clone", "prctl(PR_SET_PDEATHSIG)", "parent check",
        "signal reset", "chdir", "stdio dup2", "close_range", "execve", "setpgid",
        "setrlimit(RLIMIT_NOFILE)",
    };
    if (step < 0 || step >= EMBER_SPAWN_STEP_MAX_)
        return "unknown";
    return names[step];
}
