/*
 * Shared declarations of the Python binding (module.c and bind_*.c).
 * Only binding files include this (it pulls in Python.h); the core API is
 * carmp_native.h.
 */
#ifndef CARMP_BINDING_H
#define CARMP_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "carmp_native.h"

/* How long one GIL-free wait lasts before checking for signals. */
#define CARMP_WAIT_SLICE_NS 50000000LL

typedef struct {
    PyObject_HEAD
    Py_buffer view;
    char *base; /* NULL once released */
    Py_ssize_t size;
    PyObject *closed_error; /* raised on use after release */
} Region;

extern PyTypeObject RegionType;

/* Map a native status to a Python exception; always returns NULL. */
PyObject *carmp_raise_status(carmp_status status, const char *what);
/* Address of `width` bytes at an 8-aligned, in-bounds offset, or NULL with an exception set. */
char *carmp_region_address(Region *self, PyObject *offset_obj, Py_ssize_t width);
/* A Python int as a 64-bit word; negatives wrap (two's complement). */
int carmp_as_word(PyObject *obj, uint64_t *out);
int carmp_check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected);
/* Deadline (monotonic ns) from a timeout object: None -> -1 (none), else now + seconds. */
int carmp_deadline_from(PyObject *timeout, int64_t *deadline);
int64_t carmp_monotonic_ns(void);
/* The next GIL-free wait slice before `deadline`; 0 once it has passed. */
int64_t carmp_next_slice(int64_t deadline);

/* Try a robust lock, watching it a while when busy before giving up with CARMP_BUSY. */
carmp_status carmp_lock_try_spinning(void *lock);

/* Each bind_*.c file adds its types and constants to the module; called from PyInit. */
int carmp_bind_channel(PyObject *module);
int carmp_bind_table(PyObject *module);
int carmp_bind_ring(PyObject *module);

#endif
