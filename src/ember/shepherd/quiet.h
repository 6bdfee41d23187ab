/*
 * quiet.h -- a template child's quiet end (ember.shepherd.template,
 * _end_quietly): whether its exit has anything to run, and the output
 * board's mark, read and made with no Python run and no reference count
 * written (docs/python-processes.md, "The quiet end").
 */
#ifndef EMBER_QUIET_H
#define EMBER_QUIET_H

/*
 * Whether a template child's exit has anything to run, read with borrowed
 * references only, so that the look-ups write none of the template's
 * objects (a Python function's look-ups wrote a reference count on each
 * module, dict and value they touched, and a type attribute cache entry
 * and its name for each attribute of a module: ~10 pages a child).
 *
 * ember_quiet_note(state) (the template, at each freeze; with the GIL)
 * keeps ``state`` (a new reference; the one before is dropped), None for
 * "no quiet end", else the tuple
 * (count, fin, finalize, ncallbacks, shepherd_pid, names, checks, board):
 * ``count`` the atexit registrations expected (an int), ``fin`` whether
 * weakref.finalize registered its exit function in the template, ``finalize``
 * that class, ``ncallbacks`` atexit._ncallbacks, ``names`` the strings
 * ("_registered_with_atexit", "_registry", "atexit"), ``checks`` a tuple of
 * (dict, key, op, arg): the value under ``key`` in ``dict`` must be there
 * and be empty (EMBER_QUIET_EMPTY), be ``arg`` (EMBER_QUIET_IS), hold at
 * most ``arg`` items (EMBER_QUIET_AT_MOST, an int), or be a list whose
 * length is ``arg[0]`` and whose last item is ``arg[1]``
 * (EMBER_QUIET_SAME_END).  -1 with an exception set for a state of another
 * shape.
 *
 * ember_quiet() (a child, with the GIL): 1 if the state is a tuple, the
 * process's parent is ``shepherd_pid``, ``ncallbacks()`` is ``count`` (one
 * more if weakref.finalize registered its exit function since, which then
 * has no finalizer to run at exit) and every check holds; 0 if not; -1
 * with an exception set if a call failed (a length's, an ``atexit``
 * attribute's).  Lengths of other types than dict, set and list are asked
 * for (len()).
 */
enum { EMBER_QUIET_EMPTY = 0, EMBER_QUIET_IS = 1, EMBER_QUIET_AT_MOST = 2,
       EMBER_QUIET_SAME_END = 3 };

struct _object;
int ember_quiet_note(struct _object *state);
int ember_quiet(void);

/* ember_quiet_mark() (a child at its quiet end, after its last write):
 * _outboard.exiting() with no Python run: if the state's eighth item,
 * (_outboard's _mapped_for, the names of the runtime id's and the p_uid's
 * environment variables as bytes), says the board mapped is the runtime
 * the process's environment names (an ASCII id), marks the entry of the
 * p_uid its environment holds (ember_ob_exiting); 1 if it marked it.
 * The variables are read from the C environment, which os.environ's
 * changes reach (putenv, unsetenv) as the lease's set-up does (its
 * Python was ~8 pages a child).  What a death costs: quiet.c. */
int ember_quiet_mark(void);

#endif
