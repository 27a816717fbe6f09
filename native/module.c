/*
 * carmp._native: the thin Python binding of the native core.
 *
 * Region wraps a writable buffer (a mapped segment) and exposes word atomics and
 * robust locks at byte offsets, checked for bounds and alignment. Status codes
 * from the core become exceptions in exactly one place: carmp_raise_status().
 * Blocking calls release the GIL, wait in short slices and check for signals
 * between slices, so Ctrl-C raises KeyboardInterrupt instead of hanging.
 */
#include "binding.h" /* first: Python.h sets the feature macros */

#include <errno.h>
#include <limits.h>
#include <time.h>

PyObject *carmp_raise_status(carmp_status status, const char *what) {
    switch (status) {
    case CARMP_TIMEOUT:
        PyErr_Format(PyExc_TimeoutError, "%s timed out", what);
        break;
    case CARMP_NOT_OWNER:
        PyErr_Format(PyExc_RuntimeError, "%s: the calling thread does not hold this lock", what);
        break;
    case CARMP_RELOCK:
        PyErr_Format(PyExc_RuntimeError,
                     "%s: the calling thread already holds this lock (it is not reentrant)",
                     what);
        break;
    case CARMP_NOTRECOVERABLE:
        PyErr_Format(PyExc_OSError,
                     "%s: the lock was abandoned and cannot be recovered; recreate the segment",
                     what);
        break;
    case CARMP_BUSY:
        PyErr_Format(PyExc_BlockingIOError, "%s: busy", what);
        break;
    case CARMP_FULL:
        PyErr_Format(PyExc_BufferError, "%s: full", what);
        break;
    case CARMP_EINVAL:
        PyErr_Format(PyExc_ValueError, "%s: invalid argument", what);
        break;
    case CARMP_ERRNO:
        PyErr_SetFromErrno(PyExc_OSError);
        break;
    default:
        PyErr_Format(PyExc_SystemError, "%s: unexpected native status %d", what, (int)status);
    }
    return NULL;
}

int64_t carmp_monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
}

int carmp_deadline_from(PyObject *timeout, int64_t *deadline) {
    *deadline = -1;
    if (timeout == NULL || timeout == Py_None) return 0;
    double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred()) return -1;
    if (!(seconds >= 0)) {
        PyErr_SetString(PyExc_ValueError, "timeout must be >= 0 or None");
        return -1;
    }
    if (seconds >= 1e9) return 0; /* over 30 years: no deadline, and no overflow */
    *deadline = carmp_monotonic_ns() + (int64_t)(seconds * 1e9);
    return 0;
}

int64_t carmp_next_slice(int64_t deadline) {
    if (deadline < 0) return CARMP_WAIT_SLICE_NS;
    int64_t remaining = deadline - carmp_monotonic_ns();
    if (remaining <= 0) return 0;
    return remaining < CARMP_WAIT_SLICE_NS ? remaining : CARMP_WAIT_SLICE_NS;
}

/* ---- argument helpers ---------------------------------------------------- */

static int ensure_open(Region *self) {
    if (self->base != NULL) return 0;
    PyErr_SetString(self->closed_error ? self->closed_error : PyExc_ValueError,
                    "this carmp segment is closed; attach it again to keep using it");
    return -1;
}

char *carmp_region_address(Region *self, PyObject *offset_obj, Py_ssize_t width) {
    if (ensure_open(self) < 0) return NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(offset_obj);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    if (offset < 0 || offset > self->size - width) {
        PyErr_Format(PyExc_IndexError, "offset %zd (+%zd bytes) is outside the %zd-byte segment",
                     offset, width, self->size);
        return NULL;
    }
    if (offset % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "offset %zd is not 8-byte aligned", offset);
        return NULL;
    }
    return self->base + offset;
}

static uint64_t *word_at(Region *self, PyObject *offset_obj) {
    return (uint64_t *)carmp_region_address(self, offset_obj, 8);
}

/* A Python int as a 64-bit word: negatives wrap (two's complement), so deltas may be < 0. */
int carmp_as_word(PyObject *obj, uint64_t *out) {
    int overflow = 0;
    long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (value == -1 && PyErr_Occurred()) return -1;
    if (overflow == 0) {
        *out = (uint64_t)value;
        return 0;
    }
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(obj);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        *out = u;
        return 0;
    }
    PyErr_SetString(PyExc_OverflowError, "value is below -2**63");
    return -1;
}

int carmp_check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected) {
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, expected,
                     nargs);
        return -1;
    }
    return 0;
}

/* ---- Region lifecycle ------------------------------------------------------ */

static int Region_init(Region *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buffer", "closed_error", NULL};
    PyObject *buffer, *closed_error = PyExc_ValueError;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:Region", kwlist, &buffer, &closed_error))
        return -1;
    if (self->base != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Region is already initialised");
        return -1;
    }
    if (!PyExceptionClass_Check(closed_error)) {
        PyErr_SetString(PyExc_TypeError, "closed_error must be an exception class");
        return -1;
    }
    if (PyObject_GetBuffer(buffer, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (((uintptr_t)self->view.buf) % 64 != 0) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "a Region needs a 64-byte aligned buffer (an mmap)");
        return -1;
    }
    self->base = self->view.buf;
    self->size = self->view.len;
    Py_INCREF(closed_error);
    Py_XSETREF(self->closed_error, closed_error);
    return 0;
}

static void Region_drop(Region *self) {
    if (self->base != NULL) {
        self->base = NULL;
        PyBuffer_Release(&self->view);
    }
}

static void Region_dealloc(Region *self) {
    Region_drop(self);
    Py_XDECREF(self->closed_error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Region_release(Region *self, PyObject *Py_UNUSED(ignored)) {
    Region_drop(self);
    Py_RETURN_NONE;
}

/* ---- word atomics -------------------------------------------------------- */

static PyObject *Region_load(Region *self, PyObject *offset) {
    uint64_t *word = word_at(self, offset);
    if (word == NULL) return NULL;
    return PyLong_FromUnsignedLongLong(carmp_load(word));
}

static PyObject *Region_store(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t value, *word;
    if (carmp_check_nargs("store", nargs, 2) < 0 || (word = word_at(self, args[0])) == NULL ||
        carmp_as_word(args[1], &value) < 0)
        return NULL;
    carmp_store(word, value);
    Py_RETURN_NONE;
}

static PyObject *Region_fetch_add(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t delta, *word;
    if (carmp_check_nargs("fetch_add", nargs, 2) < 0 || (word = word_at(self, args[0])) == NULL ||
        carmp_as_word(args[1], &delta) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(carmp_fetch_add(word, delta));
}

#define ADD_MANY_MAX 16

static PyObject *Region_add_many(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1) return PyErr_Format(PyExc_TypeError, "add_many() needs an offset");
    if (nargs - 1 > ADD_MANY_MAX)
        return PyErr_Format(PyExc_TypeError, "add_many() takes at most %d deltas", ADD_MANY_MAX);
    uint64_t deltas[ADD_MANY_MAX];
    for (Py_ssize_t i = 1; i < nargs; i++) /* convert all first: a bad one changes nothing */
        if (carmp_as_word(args[i], &deltas[i - 1]) < 0) return NULL;
    uint64_t *words = (uint64_t *)carmp_region_address(self, args[0], 8 * (nargs - 1));
    if (words == NULL) return NULL;
    for (Py_ssize_t i = 0; i < nargs - 1; i++)
        if (deltas[i] != 0) carmp_fetch_add(&words[i], deltas[i]);
    Py_RETURN_NONE;
}

static PyObject *Region_cas(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t expected, desired, *word;
    if (carmp_check_nargs("cas", nargs, 3) < 0 || (word = word_at(self, args[0])) == NULL ||
        carmp_as_word(args[1], &expected) < 0 || carmp_as_word(args[2], &desired) < 0)
        return NULL;
    return PyBool_FromLong(carmp_cas(word, &expected, desired));
}

static PyObject *Region_add_bounded(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t delta, limit, old, *word;
    if (carmp_check_nargs("add_bounded", nargs, 3) < 0 || (word = word_at(self, args[0])) == NULL ||
        carmp_as_word(args[1], &delta) < 0 || carmp_as_word(args[2], &limit) < 0)
        return NULL;
    if (carmp_add_bounded(word, delta, limit, &old) == CARMP_FULL) return PyLong_FromLong(-1);
    return PyLong_FromUnsignedLongLong(old);
}

static PyObject *Region_first_reached(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    if (carmp_check_nargs("first_reached", nargs, 3) < 0) return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "count must be >= 0");
    if (n > self->size / 8)
        return PyErr_Format(PyExc_IndexError, "%zd words do not fit the %zd-byte segment", n,
                            self->size);
    char *counters = carmp_region_address(self, args[0], 8 * n);
    char *limits = counters ? carmp_region_address(self, args[1], 8 * n) : NULL;
    if (limits == NULL) return NULL;
    return PyLong_FromLong(
        carmp_first_reached((const uint64_t *)counters, (const uint64_t *)limits, (size_t)n));
}

/* ---- raw bytes (headers, records) --------------------------------------------- */

static PyObject *Region_read(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    if (carmp_check_nargs("read", nargs, 2) < 0) return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[1]);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0) return PyErr_Format(PyExc_ValueError, "length must be >= 0");
    if (ensure_open(self) < 0) return NULL;
    Py_ssize_t offset = PyLong_AsSsize_t(args[0]);
    if (offset == -1 && PyErr_Occurred()) return NULL;
    if (offset < 0 || n > self->size || offset > self->size - n)
        return PyErr_Format(PyExc_IndexError, "bytes [%zd, %zd) are outside the %zd-byte segment",
                            offset, offset + n, self->size);
    return PyBytes_FromStringAndSize(self->base + offset, n);
}

/* ---- robust lock ------------------------------------------------------------ */

static void *lock_at(Region *self, PyObject *offset) {
    return carmp_region_address(self, offset, CARMP_LOCK_SIZE);
}

static PyObject *Region_lock_init(Region *self, PyObject *offset) {
    void *lock = lock_at(self, offset);
    if (lock == NULL) return NULL;
    carmp_status st = carmp_lock_init(lock);
    if (st != CARMP_OK) return carmp_raise_status(st, "lock_init");
    Py_RETURN_NONE;
}

/* Locks are held for a microsecond or so, while a sleep and a wake-up across CPUs cost
 * tens: watch a busy lock for a while before sleeping on it. */
#define LOCK_SPINS 1000

carmp_status carmp_lock_try_spinning(void *lock) {
    carmp_status st = carmp_lock_try(lock);
    for (int i = 0; st == CARMP_BUSY && i < LOCK_SPINS; i++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        if (carmp_lock_owner_pid(lock) == 0) st = carmp_lock_try(lock);
    }
    return st;
}

/* acquire(offset, timeout=None) -> bool: True when the previous owner had died holding it. */
static PyObject *Region_lock_acquire(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2)
        return PyErr_Format(PyExc_TypeError, "lock_acquire(offset, timeout=None)");
    void *lock = lock_at(self, args[0]);
    if (lock == NULL) return NULL;
    int64_t deadline;
    if (carmp_deadline_from(nargs == 2 ? args[1] : NULL, &deadline) < 0) return NULL;
    carmp_status st = carmp_lock_try_spinning(lock);
    while (st == CARMP_BUSY || st == CARMP_TIMEOUT) {
        int64_t slice = carmp_next_slice(deadline);
        if (slice == 0) {
            st = CARMP_TIMEOUT;
            break;
        }
        Py_BEGIN_ALLOW_THREADS
        st = carmp_lock_timed(lock, slice);
        Py_END_ALLOW_THREADS
        if (st == CARMP_TIMEOUT && PyErr_CheckSignals() < 0) return NULL;
    }
    if (st == CARMP_OK) Py_RETURN_FALSE;
    if (st == CARMP_OWNERDEAD) Py_RETURN_TRUE;
    return carmp_raise_status(st, "lock_acquire");
}

/* try(offset) -> None when busy, else bool as for acquire. */
static PyObject *Region_lock_try(Region *self, PyObject *offset) {
    void *lock = lock_at(self, offset);
    if (lock == NULL) return NULL;
    carmp_status st = carmp_lock_try(lock);
    if (st == CARMP_BUSY) Py_RETURN_NONE;
    if (st == CARMP_OK) Py_RETURN_FALSE;
    if (st == CARMP_OWNERDEAD) Py_RETURN_TRUE;
    return carmp_raise_status(st, "lock_try");
}

static PyObject *Region_lock_release(Region *self, PyObject *offset) {
    void *lock = lock_at(self, offset);
    if (lock == NULL) return NULL;
    carmp_status st = carmp_lock_release(lock);
    if (st != CARMP_OK) return carmp_raise_status(st, "lock_release");
    Py_RETURN_NONE;
}

static PyObject *Region_lock_owner(Region *self, PyObject *offset) {
    void *lock = lock_at(self, offset);
    if (lock == NULL) return NULL;
    return PyLong_FromUnsignedLongLong(carmp_lock_owner_pid(lock));
}

/* ---- sleeping until a word changes ----------------------------------------------- */

/* wait(offset, expected, timeout=None) -> bool: False on timeout. Sleeps while the low
 * 32 bits of the word equal `expected`; wakes on wake(), a change, or a signal. */
static PyObject *Region_wait(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3)
        return PyErr_Format(PyExc_TypeError, "wait(offset, expected, timeout=None)");
    uint32_t *word = (uint32_t *)carmp_region_address(self, args[0], 8);
    uint64_t expected;
    int64_t deadline;
    if (word == NULL || carmp_as_word(args[1], &expected) < 0 ||
        carmp_deadline_from(nargs == 3 ? args[2] : NULL, &deadline) < 0)
        return NULL;
    for (;;) {
        int64_t slice = carmp_next_slice(deadline);
        if (slice == 0) Py_RETURN_FALSE;
        carmp_status st;
        Py_BEGIN_ALLOW_THREADS
        st = carmp_wait(word, (uint32_t)expected, slice);
        Py_END_ALLOW_THREADS
        if (st == CARMP_OK) Py_RETURN_TRUE;
        if (st == CARMP_ERRNO) return carmp_raise_status(st, "wait");
        if (PyErr_CheckSignals() < 0) return NULL; /* timeout slice or EINTR */
    }
}

/* wake(offset, count=-1) -> int: wake up to `count` sleepers on the word (-1: all). */
static PyObject *Region_wake(Region *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return PyErr_Format(PyExc_TypeError, "wake(offset, count=-1)");
    uint32_t *word = (uint32_t *)carmp_region_address(self, args[0], 8);
    if (word == NULL) return NULL;
    long count = -1;
    if (nargs == 2 && (count = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred()) return NULL;
    int woken = carmp_wake(word, count < 0 || count > INT_MAX ? -1 : (int)count);
    if (woken < 0) return carmp_raise_status(CARMP_ERRNO, "wake");
    return PyLong_FromLong(woken);
}

/* ---- type -------------------------------------------------------------------- */

static PyObject *Region_get_size(Region *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->base ? self->size : 0);
}

static PyObject *Region_get_closed(Region *self, void *Py_UNUSED(closure)) {
    return PyBool_FromLong(self->base == NULL);
}

static PyMethodDef Region_methods[] = {
    {"load", (PyCFunction)Region_load, METH_O, "load(offset) -> int: atomic read of a word"},
    {"store", (PyCFunction)(void (*)(void))Region_store, METH_FASTCALL,
     "store(offset, value): atomic write of a word"},
    {"fetch_add", (PyCFunction)(void (*)(void))Region_fetch_add, METH_FASTCALL,
     "fetch_add(offset, delta) -> old: atomic add (negative deltas wrap)"},
    {"add_many", (PyCFunction)(void (*)(void))Region_add_many, METH_FASTCALL,
     "add_many(offset, *deltas): atomically add each delta to consecutive words"},
    {"cas", (PyCFunction)(void (*)(void))Region_cas, METH_FASTCALL,
     "cas(offset, expected, desired) -> bool: compare and swap"},
    {"add_bounded", (PyCFunction)(void (*)(void))Region_add_bounded, METH_FASTCALL,
     "add_bounded(offset, delta, limit) -> old, or -1 when the sum would exceed limit"},
    {"first_reached", (PyCFunction)(void (*)(void))Region_first_reached, METH_FASTCALL,
     "first_reached(counters, limits, n) -> first i with counter >= limit, or -1"},
    {"read", (PyCFunction)(void (*)(void))Region_read, METH_FASTCALL,
     "read(offset, n) -> bytes"},
    {"lock_init", (PyCFunction)Region_lock_init, METH_O, "lock_init(offset)"},
    {"lock_acquire", (PyCFunction)(void (*)(void))Region_lock_acquire, METH_FASTCALL,
     "lock_acquire(offset, timeout=None) -> recovered: bool"},
    {"lock_try", (PyCFunction)Region_lock_try, METH_O,
     "lock_try(offset) -> None if busy, else recovered: bool"},
    {"lock_release", (PyCFunction)Region_lock_release, METH_O, "lock_release(offset)"},
    {"lock_owner", (PyCFunction)Region_lock_owner, METH_O, "lock_owner(offset) -> pid or 0"},
    {"wait", (PyCFunction)(void (*)(void))Region_wait, METH_FASTCALL,
     "wait(offset, expected, timeout=None) -> bool: sleep while the word's low 32 bits == "
     "expected; False on timeout"},
    {"wake", (PyCFunction)(void (*)(void))Region_wake, METH_FASTCALL,
     "wake(offset, count=-1) -> int: wake sleepers on the word"},
    {"release", (PyCFunction)Region_release, METH_NOARGS,
     "release(): drop the buffer; later calls raise closed_error"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Region_getset[] = {
    {"size", (getter)Region_get_size, NULL, "bytes addressable (0 once released)", NULL},
    {"closed", (getter)Region_get_closed, NULL, "True once released", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

PyTypeObject RegionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "carmp._native.Region",
    .tp_basicsize = sizeof(Region),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Region(buffer, closed_error=ValueError): atomics and robust locks over a buffer",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Region_init,
    .tp_dealloc = (destructor)Region_dealloc,
    .tp_methods = Region_methods,
    .tp_getset = Region_getset,
};

/* ---- module functions ------------------------------------------------------------ */

static int bytes_of(PyObject *obj, Py_buffer *view, const char **data, Py_ssize_t *n) {
    view->obj = NULL;
    if (PyUnicode_Check(obj)) {
        *data = PyUnicode_AsUTF8AndSize(obj, n);
        return *data == NULL ? -1 : 0;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) return -1;
    *data = view->buf;
    *n = view->len;
    return 0;
}

static PyObject *native_crc32c(PyObject *Py_UNUSED(module), PyObject *const *args,
                               Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return PyErr_Format(PyExc_TypeError, "crc32c(data, crc=0)");
    uint64_t crc = 0;
    if (nargs == 2 && carmp_as_word(args[1], &crc) < 0) return NULL;
    if (crc > UINT32_MAX) return PyErr_Format(PyExc_OverflowError, "crc must fit in 32 bits");
    Py_buffer view;
    const char *data;
    Py_ssize_t n;
    if (bytes_of(args[0], &view, &data, &n) < 0) return NULL;
    uint32_t result = carmp_crc32c((uint32_t)crc, data, (size_t)n);
    if (view.obj) PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(result);
}

static PyObject *native_hash64(PyObject *Py_UNUSED(module), PyObject *const *args,
                               Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return PyErr_Format(PyExc_TypeError, "hash64(data, seed=0)");
    uint64_t seed = 0;
    if (nargs == 2 && carmp_as_word(args[1], &seed) < 0) return NULL;
    Py_buffer view;
    const char *data;
    Py_ssize_t n;
    if (bytes_of(args[0], &view, &data, &n) < 0) return NULL;
    uint64_t result = carmp_hash64(data, (size_t)n, seed);
    if (view.obj) PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(result);
}

static PyObject *native_watchdog_start(PyObject *Py_UNUSED(module), PyObject *pid_obj) {
    long pid = PyLong_AsLong(pid_obj);
    if (pid == -1 && PyErr_Occurred()) return NULL;
    if (pid <= 0 || pid > INT32_MAX) return PyErr_Format(PyExc_ValueError, "bad pid %ld", pid);
    carmp_status st = carmp_watchdog_start((int32_t)pid);
    if (st != CARMP_OK) return carmp_raise_status(st, "watchdog_start");
    Py_RETURN_NONE;
}

static PyObject *native_set_parent_death_signal(PyObject *Py_UNUSED(module), PyObject *sig_obj) {
    int sig = PyLong_AsLong(sig_obj);
    if (sig == -1 && PyErr_Occurred()) return NULL;
    carmp_status st = carmp_set_parent_death_signal(sig);
    if (st != CARMP_OK) return carmp_raise_status(st, "set_parent_death_signal");
    Py_RETURN_NONE;
}

static PyObject *native_sigint_ignore(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(arg)) {
    carmp_status st = carmp_sigint_ignore();
    if (st != CARMP_OK) return carmp_raise_status(st, "sigint_ignore");
    Py_RETURN_NONE;
}

static PyObject *native_sigint_restore(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(arg)) {
    carmp_status st = carmp_sigint_restore();
    if (st == CARMP_EINVAL) return PyErr_Format(PyExc_RuntimeError, "sigint_restore() without sigint_ignore()");
    if (st != CARMP_OK) return carmp_raise_status(st, "sigint_restore");
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"sigint_ignore", (PyCFunction)native_sigint_ignore, METH_NOARGS,
     "sigint_ignore(): ignore SIGINT process-wide until the matching sigint_restore()"},
    {"sigint_restore", (PyCFunction)native_sigint_restore, METH_NOARGS,
     "sigint_restore(): undo one sigint_ignore()"},
    {"watchdog_start", (PyCFunction)native_watchdog_start, METH_O,
     "watchdog_start(pid): SIGKILL this process as soon as process `pid` exits"},
    {"set_parent_death_signal", (PyCFunction)native_set_parent_death_signal, METH_O,
     "set_parent_death_signal(signum): prctl(PR_SET_PDEATHSIG)"},
    {"crc32c", (PyCFunction)(void (*)(void))native_crc32c, METH_FASTCALL,
     "crc32c(data, crc=0) -> int: CRC32C of bytes or str (UTF-8), continuing from crc"},
    {"hash64", (PyCFunction)(void (*)(void))native_hash64, METH_FASTCALL,
     "hash64(data, seed=0) -> int: fast 64-bit hash of bytes or str (UTF-8)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "carmp._native",
    .m_doc = "carmp's native core: word atomics, robust locks, futex waits, crc32c and hashing.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&RegionType) < 0) return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL) return NULL;
    PyObject *flags = Py_BuildValue("{s:i,s:i,s:i}", "HAVE_ROBUST_MUTEX", 1, "HAVE_CLOCKLOCK", 1,
                                    "CRC32C_HARDWARE", carmp_crc32c_hardware());
    if (flags == NULL || PyModule_AddObject(m, "flags", flags) < 0 ||
        PyModule_AddIntConstant(m, "LOCK_SIZE", CARMP_LOCK_SIZE) < 0) {
        Py_XDECREF(flags);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&RegionType);
    if (PyModule_AddObject(m, "Region", (PyObject *)&RegionType) < 0) {
        Py_DECREF(&RegionType);
        Py_DECREF(m);
        return NULL;
    }
    if (carmp_bind_channel(m) < 0 || carmp_bind_table(m) < 0 || carmp_bind_ring(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
