/*
 * spawn.h -- the shepherd's process spawn helper.
 *
 * ember_spawn() starts one executable the way posix_spawn() does in glibc:
 * clone(CLONE_VM | CLONE_VFORK) on a private stack, so the parent's memory is
 * never copied (cost independent of the parent's size) and the calling thread
 * is suspended until the child has called execve() or given up.  The child,
 * before execve():
 *
 *   1. prctl(PR_SET_PDEATHSIG, SIGKILL), then checks that getppid() is still
 *      the parent (else it gives up: the parent is already gone); with
 *      new_pgrp it makes itself a process-group leader (setpgid(0, 0));
 *   2. resets every signal disposition to SIG_DFL;
 *   3. chdir(cwd) if cwd is not NULL;
 *   4. dup2()s the three stdio fds into place (-1 leaves that fd inherited);
 *   5. closes every other fd (close_range(3, ~0U));
 *   5b. with nofile_soft >= 0, sets its soft RLIMIT_NOFILE to that (capped
 *      at the hard limit): the shepherd raises its own soft limit and gives
 *      children back the one it started with;
 *   6. sets an empty signal mask and calls execve().
 *
 * A failing step is reported to the parent through memory shared with the
 * child (CLONE_VM), then the child _exit(127)s and the parent reaps it, so a
 * failed spawn leaves no zombie.  Only async-signal-safe calls run in the
 * child.
 *
 * PR_SET_PDEATHSIG fires when the *thread* that spawned the child exits, not
 * only when the process does: call ember_spawn() from a thread that lives as
 * long as its children should.
 */
#ifndef EMBER_SPAWN_H
#define EMBER_SPAWN_H

#include <sys/types.h>
#include "ember_common.h"

/* The step of the spawn that failed (ember_spawn_failure_t.step). */
typedef enum {
    EMBER_SPAWN_STEP_NONE = 0,
    EMBER_SPAWN_STEP_CLONE = 1,       /* in the parent: mmap/clone failed   */
    EMBER_SPAWN_STEP_PDEATHSIG = 2,   /* prctl(PR_SET_PDEATHSIG) failed     */
    EMBER_SPAWN_STEP_PARENT_GONE = 3, /* the parent died before the check   */
    EMBER_SPAWN_STEP_SIGNALS = 4,     /* resetting dispositions / the mask  */
    EMBER_SPAWN_STEP_CHDIR = 5,       /* chdir(cwd)                         */
    EMBER_SPAWN_STEP_STDIO = 6,       /* dup2 of stdin/stdout/stderr        */
    EMBER_SPAWN_STEP_CLOSE_FDS = 7,   /* closing the other fds              */
    EMBER_SPAWN_STEP_EXEC = 8,        /* execve(exe)                        */
    EMBER_SPAWN_STEP_PGRP = 9,        /* setpgid(0, 0)                      */
    EMBER_SPAWN_STEP_RLIMIT = 10,     /* setrlimit(RLIMIT_NOFILE)           */
    EMBER_SPAWN_STEP_MAX_ = 11
} ember_spawn_step_t;

typedef struct {
    const char *exe;          /* path given to execve(); no PATH search here */
    char *const *argv;        /* NULL-terminated */
    char *const *envp;        /* NULL-terminated */
    const char *cwd;          /* NULL: stay in the parent's directory */
    int stdio[3];             /* fd for the child's 0/1/2, or -1 to inherit */
    int new_pgrp;             /* non-zero: setpgid(0, 0) in the child */
    long long nofile_soft;    /* >= 0: the child's soft RLIMIT_NOFILE; < 0: inherit */
} ember_spawn_args_t;

typedef struct {
    int step;                 /* ember_spawn_step_t; NONE on success */
    int err;                  /* errno of the failed step */
} ember_spawn_failure_t;

/* Spawn args->exe.  EMBER_OK: *pid_out is the child's pid (the caller reaps
 * it).  EMBER_ERR_OS: nothing is left running, *failure says which step
 * failed with which errno.  EMBER_ERR_INVALID_ARG: NULL exe/argv/envp/out. */
ember_rc_t ember_spawn(const ember_spawn_args_t *args, pid_t *pid_out,
                       ember_spawn_failure_t *failure);

/* prctl(PR_SET_PDEATHSIG, sig) for the calling thread's process: sig is sent
 * to the caller when the thread that created it exits.  EMBER_ERR_OS on
 * failure (errno set). */
ember_rc_t ember_set_pdeathsig(int sig);

/* A short name of a step ("execve", "chdir", ...). */
const char *ember_spawn_step_str(int step);

#endif /* EMBER_SPAWN_H */
