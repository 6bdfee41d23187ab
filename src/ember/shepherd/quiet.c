/*
 * quiet.c -- a template child's quiet end (quiet.h).  Every look-up takes
 * borrowed references: a Python function's look-ups wrote a reference
 * count on each module, dict and value they touched, and a type attribute
 * cache entry and its name for each attribute of a module, each write to
 * a page the child shares with its template a copy-on-write fault.
 *
 * Death: ember_quiet() only reads; ember_quiet_mark() is ember_ob_exiting()
 * (outboard.h: a process killed around it is one whose joiner waits for
 * the shepherd's drain, as before).
 */
#include <Python.h>     /* first: it sets the feature macros */

#include "quiet.h"
#include "outboard.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The template's state for its children's quiet end (quiet.h). */
static PyObject *_ember_quiet_state = NULL;

int ember_quiet_note(PyObject *state)
{
    if (state != Py_None && !(PyTuple_Check(state) && PyTuple_GET_SIZE(state) == 8)) {
        PyErr_SetString(PyExc_TypeError, "quiet_note: None or a tuple of 8");
        return -1;
    }
    Py_INCREF(state);
    Py_XSETREF(_ember_quiet_state, state);
    return 0;
}

/* The length of ``o`` into *n: 0, or -1 with an exception set. */
static int _ember_quiet_len(PyObject *o, Py_ssize_t *n)
{
    if (PyDict_CheckExact(o))
        *n = PyDict_GET_SIZE(o);
    else if (PyAnySet_CheckExact(o))
        *n = PySet_GET_SIZE(o);
    else if (PyList_CheckExact(o))
        *n = PyList_GET_SIZE(o);
    else if ((*n = PyObject_Size(o)) < 0)
        return -1;
    return 0;
}

/* One (dict, key, op, arg) check: 1 holds, 0 not, -1 error. */
static int _ember_quiet_check(PyObject *check)
{
    PyObject *d, *v, *arg;
    Py_ssize_t n;
    long op;

    if (!PyTuple_Check(check) || PyTuple_GET_SIZE(check) != 4 || !PyDict_Check(PyTuple_GET_ITEM(check, 0)))
        return 0;
    d = PyTuple_GET_ITEM(check, 0);
    op = PyLong_AsLong(PyTuple_GET_ITEM(check, 2));
    arg = PyTuple_GET_ITEM(check, 3);
    if (op == -1 && PyErr_Occurred())
        return -1;
    v = PyDict_GetItemWithError(d, PyTuple_GET_ITEM(check, 1));       /* borrowed */
    if (v == NULL)
        return PyErr_Occurred() ? -1 : 0;
    switch (op) {
    case EMBER_QUIET_IS:
        return v == arg;
    case EMBER_QUIET_EMPTY:
    case EMBER_QUIET_AT_MOST:
        if (_ember_quiet_len(v, &n) < 0)
            return -1;
        return op == EMBER_QUIET_EMPTY ? n == 0 : n <= PyLong_AsSsize_t(arg);
    case EMBER_QUIET_SAME_END:
        if (!PyList_CheckExact(v) || !PyTuple_Check(arg) || PyTuple_GET_SIZE(arg) != 2)
            return 0;
        n = PyList_GET_SIZE(v);
        if (n != PyLong_AsSsize_t(PyTuple_GET_ITEM(arg, 0)))
            return 0;
        return n == 0 || PyList_GET_ITEM(v, n - 1) == PyTuple_GET_ITEM(arg, 1);
    default:
        return 0;
    }
}

/* weakref.finalize's part: the atexit registrations it adds to ``count``
 * (1 if it registered its exit function since the template's freeze, else
 * 0), or -1 if its exit function has a finalizer to call (not quiet), or
 * -2 with an exception set. */
static int _ember_quiet_finalize(PyObject *st)
{
    PyObject *fin = PyTuple_GET_ITEM(st, 1), *cls = PyTuple_GET_ITEM(st, 2);
    PyObject *names = PyTuple_GET_ITEM(st, 5), *tdict, *reg, *registry, *info;
    Py_ssize_t pos = 0;

    if (!PyType_Check(cls) || !PyTuple_Check(names) || PyTuple_GET_SIZE(names) != 3)
        return -1;
    tdict = ((PyTypeObject *)cls)->tp_dict;
    reg = PyDict_GetItemWithError(tdict, PyTuple_GET_ITEM(names, 0));
    if (reg == NULL)
        return PyErr_Occurred() ? -2 : -1;
    if (reg != Py_True)
        return 0;
    registry = PyDict_GetItemWithError(tdict, PyTuple_GET_ITEM(names, 1));
    if (registry == NULL || !PyDict_Check(registry))
        return PyErr_Occurred() ? -2 : -1;
    while (PyDict_Next(registry, &pos, NULL, &info)) {
        PyObject *at = PyObject_GetAttr(info, PyTuple_GET_ITEM(names, 2));
        int truth;
        if (at == NULL)
            return -2;
        truth = PyObject_IsTrue(at);
        Py_DECREF(at);
        if (truth != 0)
            return truth < 0 ? -2 : -1;
    }
    return fin == Py_True ? 0 : 1;
}

int ember_quiet(void)
{
    PyObject *st = _ember_quiet_state, *checks, *got;
    Py_ssize_t i, count;
    long shepherd;
    int fin;

    if (st == NULL || !PyTuple_Check(st))
        return 0;
    shepherd = PyLong_AsLong(PyTuple_GET_ITEM(st, 4));
    if (shepherd == -1 && PyErr_Occurred())
        return -1;
    if ((long)getppid() != shepherd)
        return 0;           /* not the template's child: a fork its call made */
    fin = _ember_quiet_finalize(st);
    if (fin < 0)
        return fin == -2 ? -1 : 0;
    count = PyLong_AsSsize_t(PyTuple_GET_ITEM(st, 0));
    if (count == -1 && PyErr_Occurred())
        return -1;
    got = PyObject_CallNoArgs(PyTuple_GET_ITEM(st, 3));
    if (got == NULL)
        return -1;
    i = PyLong_AsSsize_t(got);
    Py_DECREF(got);
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (i != count + fin)
        return 0;
    checks = PyTuple_GET_ITEM(st, 6);
    if (!PyTuple_Check(checks))
        return 0;
    for (i = 0; i < PyTuple_GET_SIZE(checks); i++) {
        int r = _ember_quiet_check(PyTuple_GET_ITEM(checks, i));
        if (r != 1)
            return r;
    }
    return 1;
}

int ember_quiet_mark(void)
{
    PyObject *st = _ember_quiet_state, *board, *mapped, *rid;
    const char *home, *uid, *want;
    char *end;
    unsigned long long p_uid;

    if (st == NULL || !PyTuple_Check(st))
        return 0;
    board = PyTuple_GET_ITEM(st, 7);
    if (!PyTuple_Check(board) || PyTuple_GET_SIZE(board) != 3 || !PyList_Check(PyTuple_GET_ITEM(board, 0))
        || PyList_GET_SIZE(PyTuple_GET_ITEM(board, 0)) < 1 || !PyBytes_Check(PyTuple_GET_ITEM(board, 1))
        || !PyBytes_Check(PyTuple_GET_ITEM(board, 2)))
        return 0;
    mapped = PyTuple_GET_ITEM(board, 0);
    rid = PyList_GET_ITEM(mapped, 0);                       /* the runtime whose board is mapped */
    home = getenv(PyBytes_AS_STRING(PyTuple_GET_ITEM(board, 1)));
    if (home == NULL || !PyUnicode_Check(rid) || !PyUnicode_IS_ASCII(rid))
        return 0;
    want = (const char *)PyUnicode_DATA(rid);               /* ASCII: its own bytes, NUL-ended */
    if (strcmp(home, want) != 0)
        return 0;
    uid = getenv(PyBytes_AS_STRING(PyTuple_GET_ITEM(board, 2)));
    if (uid == NULL || *uid < '0' || *uid > '9')
        return 0;
    errno = 0;
    p_uid = strtoull(uid, &end, 10);
    if (errno != 0 || *end != '\0')
        return 0;
    return ember_ob_exiting((uint64_t)p_uid);
}
