/*
 * carmp._native.Ring: the Python face of ring.c, one C call per append and one per
 * batch of reads. A Ring holds its own export of the segment's buffer, so the mapping
 * outlives every GIL-free wait; release() wakes all sleepers and drops the export once
 * no call is waiting inside the ring. Waits run in GIL-free slices and check for
 * signals between them, so Ctrl-C raises KeyboardInterrupt instead of hanging.
 */
#include "binding.h" /* first: Python.h sets the feature macros */

#include <pthread.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    carmp_ring ring;
    Py_buffer view;         /* view.obj is NULL once released */
    int waiting;            /* calls inside the ring without the GIL ... */
    uint32_t waiting_pid;   /* ... in this process: a forked child inherits none of them */
    int closing;            /* release() was called */
    PyObject *closed_error; /* the segment's closed error */
} Ring;

static PyTypeObject RingType;

/* Writers stamp records with this pid; forked children refresh it. */
static uint32_t own_pid;
static void refresh_own_pid(void) { own_pid = (uint32_t)getpid(); }

/* ---- lifecycle ------------------------------------------------------------------- */

static Ring *ring_over(PyTypeObject *type, PyObject *region_obj, Py_ssize_t offset,
                       Py_ssize_t size) {
    if (!PyObject_TypeCheck(region_obj, &RegionType)) {
        PyErr_SetString(PyExc_TypeError, "a Ring lives in a carmp._native.Region");
        return NULL;
    }
    Region *region = (Region *)region_obj;
    if (region->base == NULL) {
        PyErr_SetString(region->closed_error, "this carmp segment is closed; attach it again");
        return NULL;
    }
    if (offset < 0 || size <= 0 || offset > region->size - size || offset % 64 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "a ring of %zd bytes at offset %zd does not fit the %zd-byte region "
                     "(the offset must be 64-byte aligned)", size, offset, region->size);
        return NULL;
    }
    Ring *self = (Ring *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    if (PyObject_GetBuffer(region->view.obj, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(region->closed_error);
    self->closed_error = region->closed_error;
    return self;
}

static PyObject *ring_ready(Ring *self, carmp_status st, const char *what) {
    if (st != CARMP_OK) {
        Py_DECREF(self);
        PyErr_Format(PyExc_ValueError, "%s: not a valid event ring (bad geometry or header)", what);
        return NULL;
    }
    return (PyObject *)self;
}

/* Ring.create(region, offset, size, capacity, slots, readers, max_record, first_seq) */
static PyObject *Ring_create(PyTypeObject *type, PyObject *args) {
    PyObject *region;
    Py_ssize_t offset, size;
    unsigned long long capacity, slots, first_seq;
    unsigned int readers, max_record;
    if (!PyArg_ParseTuple(args, "OnnKKIIK:create", &region, &offset, &size, &capacity, &slots,
                          &readers, &max_record, &first_seq))
        return NULL;
    Ring *self = ring_over(type, region, offset, size);
    if (self == NULL) return NULL;
    carmp_status st = carmp_ring_init(&self->ring, (char *)self->view.buf + offset, (size_t)size,
                                      capacity, slots, readers, max_record, first_seq);
    return ring_ready(self, st, "Ring.create");
}

/* Ring.attach(region, offset, size) */
static PyObject *Ring_attach(PyTypeObject *type, PyObject *args) {
    PyObject *region;
    Py_ssize_t offset, size;
    if (!PyArg_ParseTuple(args, "Onn:attach", &region, &offset, &size)) return NULL;
    Ring *self = ring_over(type, region, offset, size);
    if (self == NULL) return NULL;
    carmp_status st = carmp_ring_attach(&self->ring, (char *)self->view.buf + offset, (size_t)size);
    return ring_ready(self, st, "Ring.attach");
}

static void drop_view(Ring *self) {
    if (self->view.obj != NULL) PyBuffer_Release(&self->view);
}

static void Ring_dealloc(Ring *self) {
    drop_view(self);
    Py_XDECREF(self->closed_error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Calls of this process waiting in the ring: threads counted before a fork stayed behind. */
static int *waiting_here(Ring *self) {
    if (self->waiting_pid != own_pid) {
        self->waiting = 0;
        self->waiting_pid = own_pid;
    }
    return &self->waiting;
}

/* release() -> int: close the ring here; returns how many waiting calls still hold it
 * (they were woken and leave within a moment; call again until 0). */
static PyObject *Ring_release(Ring *self, PyObject *Py_UNUSED(ignored)) {
    if (self->view.obj != NULL && !self->closing) {
        self->closing = 1;
        carmp_ring_wake_all(&self->ring);
    }
    int waiting = *waiting_here(self);
    if (waiting == 0) drop_view(self);
    return PyLong_FromLong(waiting);
}

static const carmp_ring *open_ring(Ring *self) {
    if (self->view.obj != NULL && !self->closing) return &self->ring;
    PyErr_SetString(self->closed_error ? self->closed_error : PyExc_ValueError,
                    "this carmp event log is closed; attach it again to keep using it");
    return NULL;
}

/* Bracket calls that release the GIL: the mapping stays until the last one leaves. */
static void enter_wait(Ring *self) { ++*waiting_here(self); }
static void leave_wait(Ring *self) {
    if (--*waiting_here(self) <= 0 && self->closing) drop_view(self);
}
static int closed_meanwhile(Ring *self) {
    if (!self->closing) return 0;
    PyErr_SetString(self->closed_error, "this carmp event log was closed while waiting");
    return 1;
}

/* ---- writers ------------------------------------------------------------------------ */

/* Reserve in GIL-free slices until there is room or the deadline passes. Returns -1 with
 * an exception set, else 0 with *st CARMP_OK or CARMP_TIMEOUT. */
static int reserve_waiting(Ring *self, uint32_t len, uint32_t pid, int64_t deadline,
                           carmp_ring_reservation *res, carmp_status *st) {
    for (;;) {
        int64_t slice = carmp_next_slice(deadline);
        if (slice == 0) {
            *st = CARMP_TIMEOUT;
            return 0;
        }
        Py_BEGIN_ALLOW_THREADS
        *st = carmp_ring_reserve(&self->ring, len, pid, slice, res);
        Py_END_ALLOW_THREADS
        if (closed_meanwhile(self)) return -1;
        if (*st == CARMP_OK) return 0;
        if (*st != CARMP_TIMEOUT && *st != CARMP_INTERRUPTED) {
            carmp_raise_status(*st, "append");
            return -1;
        }
        if (PyErr_CheckSignals() < 0) return -1;
    }
}

/* Claim, copy, commit: the seq, or -1 when readers abandoned the record first. */
static PyObject *finish_append(Ring *self, carmp_ring_reservation *res, const char *payload,
                               uint64_t timestamp_ns) {
    if (carmp_ring_claim(&self->ring, res) == CARMP_OK) {
        memcpy(carmp_ring_payload(&self->ring, res), payload, res->len);
        if (carmp_ring_commit(&self->ring, res, timestamp_ns) == CARMP_OK)
            return PyLong_FromUnsignedLongLong(res->seq);
    }
    return PyLong_FromLong(-1);
}

/* append(payload, timestamp_ns=0, timeout=0.0, pid=0) -> seq, or -1 when the record was
 * abandoned before its commit (append it again). TimeoutError when a registered reader
 * keeps the room past `timeout` (0: do not wait; None: wait without limit). pid 0 stamps
 * this process; a replay passes the original writer's. */
static PyObject *Ring_append(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 4)
        return PyErr_Format(PyExc_TypeError, "append(payload, timestamp_ns=0, timeout=0.0, pid=0)");
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    if (!PyBytes_Check(args[0])) return PyErr_Format(PyExc_TypeError, "payload must be bytes");
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]);
    if (len < 1 || len > (Py_ssize_t)ring->max_record)
        return PyErr_Format(PyExc_ValueError, "a %zd-byte payload is outside 1..%u bytes", len,
                            ring->max_record);
    uint64_t timestamp_ns = 0, pid = 0;
    if (nargs >= 2 && carmp_as_word(args[1], &timestamp_ns) < 0) return NULL;
    if (nargs == 4 && carmp_as_word(args[3], &pid) < 0) return NULL;
    if (pid > UINT32_MAX) return PyErr_Format(PyExc_ValueError, "pid %llu is out of range", (unsigned long long)pid);
    uint32_t writer = pid ? (uint32_t)pid : own_pid;
    carmp_ring_reservation res;
    carmp_status st = carmp_ring_reserve(ring, (uint32_t)len, writer, 0, &res);
    if (st == CARMP_FULL) {
        int64_t deadline = 0; /* the default timeout 0: no waiting */
        if (nargs >= 3 && carmp_deadline_from(args[2], &deadline) < 0) return NULL;
        enter_wait(self);
        int failed = reserve_waiting(self, (uint32_t)len, writer, deadline, &res, &st);
        PyObject *result = NULL;
        if (!failed && st == CARMP_OK)
            result = finish_append(self, &res, PyBytes_AS_STRING(args[0]), timestamp_ns);
        else if (!failed)
            carmp_raise_status(CARMP_TIMEOUT, "append: no room while registered readers lag");
        leave_wait(self);
        return result;
    }
    if (st != CARMP_OK) return carmp_raise_status(st, "append");
    return finish_append(self, &res, PyBytes_AS_STRING(args[0]), timestamp_ns);
}

/* append_unfinished(payload, steps) -> seq: a test hook that stops an append where a
 * killed writer would: steps 1 = reserved, 2 = claimed too, 3 = payload copied too. */
static PyObject *Ring_append_unfinished(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    if (carmp_check_nargs("append_unfinished", nargs, 2) < 0) return NULL;
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    if (!PyBytes_Check(args[0])) return PyErr_Format(PyExc_TypeError, "payload must be bytes");
    long steps = PyLong_AsLong(args[1]);
    if (steps == -1 && PyErr_Occurred()) return NULL;
    if (steps < 1 || steps > 3) return PyErr_Format(PyExc_ValueError, "steps must be 1, 2 or 3");
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]);
    if (len < 1 || len > (Py_ssize_t)ring->max_record)
        return PyErr_Format(PyExc_ValueError, "payload size out of range");
    carmp_ring_reservation res;
    carmp_status st = carmp_ring_reserve(ring, (uint32_t)len, own_pid, 0, &res);
    if (st != CARMP_OK) return carmp_raise_status(st, "append_unfinished");
    if (steps >= 2 && carmp_ring_claim(ring, &res) != CARMP_OK)
        return carmp_raise_status(CARMP_TIMEOUT, "append_unfinished: claim");
    if (steps >= 3) memcpy(carmp_ring_payload(ring, &res), PyBytes_AS_STRING(args[0]), (size_t)len);
    return PyLong_FromUnsignedLongLong(res.seq);
}

/* ---- readers --------------------------------------------------------------------------- */

/* The payloads of a batch as one JSON array, grown as records arrive. */
typedef struct {
    char *bytes;
    size_t used, size;
} batch_buffer;

/* Room for one more element of up to `len` bytes plus its comma. */
static int batch_reserve(batch_buffer *b, size_t len) {
    if (b->used + len + 2 <= b->size) return 0;
    size_t size = b->size ? b->size : 65536;
    while (size < b->used + len + 2) size *= 2;
    char *bytes = PyMem_Realloc(b->bytes, size);
    if (bytes == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->bytes = bytes;
    b->size = size;
    return 0;
}

static int append_int(PyObject *list, unsigned long long value) {
    PyObject *item = PyLong_FromUnsignedLongLong(value);
    int rc = item == NULL ? -1 : PyList_Append(list, item);
    Py_XDECREF(item);
    return rc;
}

/* read(seq, max_count, slot=-1) -> (payloads, timestamps, pids, sizes, stop, next_seq).
 * Records seq, seq+1, ... as one JSON array `payloads`: a committed record's payload as
 * written (its CRC verified), 1 for an abandoned hole, 2 for a corrupt record; with
 * their timestamps, writer pids and byte sizes in three lists. stop: RING_RECORD when
 * max_count records were read, else what ended the batch (RING_EMPTY, RING_PENDING, or
 * RING_LOST with next_seq the oldest record still held). With a registered slot the
 * reader's cursor advances to next_seq. */
static PyObject *Ring_read(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3)
        return PyErr_Format(PyExc_TypeError, "read(seq, max_count, slot=-1)");
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    uint64_t seq;
    if (carmp_as_word(args[0], &seq) < 0) return NULL;
    Py_ssize_t max_count = PyLong_AsSsize_t(args[1]);
    if (max_count == -1 && PyErr_Occurred()) return NULL;
    if (max_count < 1) return PyErr_Format(PyExc_ValueError, "max_count must be >= 1");
    long slot = -1;
    if (nargs == 3 && (slot = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred()) return NULL;
    PyObject *timestamps = PyList_New(0), *pids = PyList_New(0), *sizes = PyList_New(0);
    PyObject *result = NULL;
    batch_buffer batch = {NULL, 0, 0};
    if (timestamps == NULL || pids == NULL || sizes == NULL || batch_reserve(&batch, 0) < 0)
        goto done;
    batch.bytes[batch.used++] = '[';
    carmp_ring_outcome stop = CARMP_RING_RECORD;
    uint64_t end_pos = 0;
    for (Py_ssize_t n = 0; n < max_count; n++) {
        if (batch_reserve(&batch, ring->max_record) < 0) goto done;
        carmp_ring_record rec;
        uint64_t resume;
        char *at = batch.bytes + batch.used;
        carmp_ring_outcome outcome = carmp_ring_read(ring, seq, at, ring->max_record, &rec, &resume);
        if (outcome == CARMP_RING_EMPTY || outcome == CARMP_RING_PENDING ||
            outcome == CARMP_RING_LOST) {
            stop = outcome;
            if (outcome == CARMP_RING_LOST) seq = resume;
            break;
        }
        size_t len = rec.len;
        if (outcome == CARMP_RING_RECORD) {
            end_pos = rec.pos + ((rec.len + 7u) & ~7u);
        } else {
            *at = outcome == CARMP_RING_ABANDONED ? '1' : '2';
            len = 1;
        }
        batch.used += len;
        batch.bytes[batch.used++] = ',';
        if (append_int(timestamps, rec.timestamp_ns) < 0 || append_int(pids, rec.pid) < 0 ||
            append_int(sizes, len) < 0)
            goto done;
        seq++;
    }
    if (batch.bytes[batch.used - 1] == ',') batch.used--;
    batch.bytes[batch.used++] = ']';
    if (slot >= 0 && slot <= UINT32_MAX) carmp_ring_advance(ring, (uint32_t)slot, seq, end_pos);
    result = Py_BuildValue("(y#OOOiK)", batch.bytes, (Py_ssize_t)batch.used, timestamps, pids,
                           sizes, (int)stop, (unsigned long long)seq);
done:
    PyMem_Free(batch.bytes);
    Py_XDECREF(timestamps);
    Py_XDECREF(pids);
    Py_XDECREF(sizes);
    return result;
}

/* resolve(seq, hole_timeout, stale_below) -> records abandoned (see carmp_ring_resolve) */
static PyObject *Ring_resolve(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    if (carmp_check_nargs("resolve", nargs, 3) < 0) return NULL;
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    uint64_t seq, stale_below;
    double hole_timeout = PyFloat_AsDouble(args[1]);
    if (hole_timeout == -1.0 && PyErr_Occurred()) return NULL;
    if (!(hole_timeout >= 0 && hole_timeout < 1e9))
        return PyErr_Format(PyExc_ValueError, "hole_timeout must be in [0, 1e9) seconds");
    if (carmp_as_word(args[0], &seq) < 0 || carmp_as_word(args[2], &stale_below) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(
        carmp_ring_resolve(ring, seq, (uint64_t)(hole_timeout * 1e9), stale_below));
}

/* wait(seq, timeout=None) -> bool: sleep until seq may be readable (False on timeout).
 * Wakes on commits and abandons; it may wake early, so read again. */
static PyObject *Ring_wait(Ring *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) return PyErr_Format(PyExc_TypeError, "wait(seq, timeout=None)");
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    uint64_t seq;
    int64_t deadline;
    if (carmp_as_word(args[0], &seq) < 0 ||
        carmp_deadline_from(nargs == 2 ? args[1] : NULL, &deadline) < 0)
        return NULL;
    PyObject *result = NULL;
    enter_wait(self);
    for (;;) {
        int64_t slice = carmp_next_slice(deadline);
        if (slice == 0) {
            result = Py_False;
            break;
        }
        carmp_status st;
        Py_BEGIN_ALLOW_THREADS
        st = carmp_ring_wait(&self->ring, seq, slice);
        Py_END_ALLOW_THREADS
        if (closed_meanwhile(self)) break;
        if (st == CARMP_OK) {
            result = Py_True;
            break;
        }
        if (st == CARMP_ERRNO) {
            carmp_raise_status(st, "wait");
            break;
        }
        if (PyErr_CheckSignals() < 0) break; /* a slice ran out, or EINTR */
    }
    leave_wait(self);
    Py_XINCREF(result);
    return result;
}

/* ---- registered readers, statistics ------------------------------------------------- */

/* register(start_seq) -> slot, or -1 when every reader slot is taken. */
static PyObject *Ring_register(Ring *self, PyObject *start) {
    const carmp_ring *ring = open_ring(self);
    uint64_t start_seq;
    if (ring == NULL || carmp_as_word(start, &start_seq) < 0) return NULL;
    uint32_t slot;
    carmp_status st = carmp_ring_register(ring, own_pid, start_seq, &slot);
    if (st == CARMP_FULL) return PyLong_FromLong(-1);
    if (st != CARMP_OK) return carmp_raise_status(st, "register");
    return PyLong_FromUnsignedLong(slot);
}

static PyObject *Ring_unregister(Ring *self, PyObject *slot_obj) {
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    long slot = PyLong_AsLong(slot_obj);
    if (slot == -1 && PyErr_Occurred()) return NULL;
    if (slot < 0 || slot >= (long)ring->readers)
        return PyErr_Format(PyExc_ValueError, "no reader slot %ld", slot);
    carmp_ring_unregister(ring, (uint32_t)slot);
    Py_RETURN_NONE;
}

/* stats() -> (next_seq, next_pos, oldest_seq, abandoned, full_waits, readers_registered,
 * readers_reaped) */
static PyObject *Ring_stats(Ring *self, PyObject *Py_UNUSED(ignored)) {
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    carmp_ring_stats s;
    carmp_ring_stats_of(ring, &s);
    return Py_BuildValue("(KKKKKKK)", (unsigned long long)s.next_seq,
                         (unsigned long long)s.next_pos, (unsigned long long)s.oldest_seq,
                         (unsigned long long)s.abandoned, (unsigned long long)s.full_waits,
                         (unsigned long long)s.readers_registered,
                         (unsigned long long)s.readers_reaped);
}

static PyObject *Ring_next_seq(Ring *self, PyObject *Py_UNUSED(ignored)) {
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    return PyLong_FromUnsignedLongLong(carmp_ring_next_seq(ring));
}

/* wake(): wake every reader and writer asleep on the ring, in every process. */
static PyObject *Ring_wake(Ring *self, PyObject *Py_UNUSED(ignored)) {
    const carmp_ring *ring = open_ring(self);
    if (ring == NULL) return NULL;
    carmp_ring_wake_all(ring);
    Py_RETURN_NONE;
}

static PyObject *Ring_get_capacity(Ring *self, void *Py_UNUSED(c)) {
    return PyLong_FromUnsignedLongLong(self->ring.capacity);
}
static PyObject *Ring_get_slots(Ring *self, void *Py_UNUSED(c)) {
    return PyLong_FromUnsignedLongLong(self->ring.slots);
}
static PyObject *Ring_get_readers(Ring *self, void *Py_UNUSED(c)) {
    return PyLong_FromUnsignedLong(self->ring.readers);
}
static PyObject *Ring_get_max_record(Ring *self, void *Py_UNUSED(c)) {
    return PyLong_FromUnsignedLong(self->ring.max_record);
}
static PyObject *Ring_get_first_seq(Ring *self, void *Py_UNUSED(c)) {
    return PyLong_FromUnsignedLongLong(self->ring.first_seq);
}
static PyObject *Ring_get_closed(Ring *self, void *Py_UNUSED(c)) {
    return PyBool_FromLong(self->view.obj == NULL || self->closing);
}

static PyMethodDef Ring_methods[] = {
    {"create", (PyCFunction)(void (*)(void))Ring_create, METH_VARARGS | METH_CLASS,
     "create(region, offset, size, capacity, slots, readers, max_record, first_seq) -> Ring"},
    {"attach", (PyCFunction)(void (*)(void))Ring_attach, METH_VARARGS | METH_CLASS,
     "attach(region, offset, size) -> Ring: a ring another process created"},
    {"append", (PyCFunction)(void (*)(void))Ring_append, METH_FASTCALL,
     "append(payload, timestamp_ns=0, timeout=0.0, pid=0) -> seq, or -1 if abandoned first"},
    {"append_unfinished", (PyCFunction)(void (*)(void))Ring_append_unfinished, METH_FASTCALL,
     "append_unfinished(payload, steps) -> seq: test hook, stops where a killed writer would"},
    {"read", (PyCFunction)(void (*)(void))Ring_read, METH_FASTCALL,
     "read(seq, max_count, slot=-1) -> (payloads, timestamps, pids, sizes, stop, next_seq)"},
    {"resolve", (PyCFunction)(void (*)(void))Ring_resolve, METH_FASTCALL,
     "resolve(seq, hole_timeout, stale_below) -> records abandoned"},
    {"wait", (PyCFunction)(void (*)(void))Ring_wait, METH_FASTCALL,
     "wait(seq, timeout=None) -> bool: False on timeout"},
    {"register", (PyCFunction)Ring_register, METH_O,
     "register(start_seq) -> slot, or -1 when all are taken"},
    {"unregister", (PyCFunction)Ring_unregister, METH_O, "unregister(slot)"},
    {"stats", (PyCFunction)Ring_stats, METH_NOARGS,
     "stats() -> (next_seq, next_pos, oldest_seq, abandoned, full_waits, readers_registered, "
     "readers_reaped)"},
    {"next_seq", (PyCFunction)Ring_next_seq, METH_NOARGS,
     "next_seq() -> the sequence number the next append gets"},
    {"wake", (PyCFunction)Ring_wake, METH_NOARGS, "wake(): wake every sleeper on the ring"},
    {"release", (PyCFunction)Ring_release, METH_NOARGS,
     "release() -> calls still waiting: close the ring in this process"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Ring_getset[] = {
    {"capacity", (getter)Ring_get_capacity, NULL, "data bytes", NULL},
    {"slots", (getter)Ring_get_slots, NULL, "record descriptors", NULL},
    {"readers", (getter)Ring_get_readers, NULL, "reader cursor slots", NULL},
    {"max_record", (getter)Ring_get_max_record, NULL, "largest payload in bytes", NULL},
    {"first_seq", (getter)Ring_get_first_seq, NULL, "sequence number of the first record", NULL},
    {"closed", (getter)Ring_get_closed, NULL, "True once released", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "carmp._native.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ring.create(...) / Ring.attach(...): the event ring over a Region",
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
};

/* ring_size(capacity, slots, readers) -> bytes, or 0 when the geometry is invalid */
static PyObject *native_ring_size(PyObject *Py_UNUSED(module), PyObject *args) {
    unsigned long long capacity, slots;
    unsigned int readers;
    if (!PyArg_ParseTuple(args, "KKI:ring_size", &capacity, &slots, &readers)) return NULL;
    return PyLong_FromSize_t(carmp_ring_size(capacity, slots, readers));
}

static PyMethodDef ring_functions[] = {
    {"ring_size", (PyCFunction)native_ring_size, METH_VARARGS,
     "ring_size(capacity, slots, readers) -> bytes (0: invalid geometry)"},
    {NULL, NULL, 0, NULL}};

int carmp_bind_ring(PyObject *module) {
    refresh_own_pid();
    if (pthread_atfork(NULL, NULL, refresh_own_pid) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        return -1;
    }
    if (PyType_Ready(&RingType) < 0 || PyModule_AddFunctions(module, ring_functions) < 0) return -1;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(module, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        return -1;
    }
    struct {
        const char *name;
        long value;
    } constants[] = {
        {"RING_RECORD", CARMP_RING_RECORD},     {"RING_ABANDONED", CARMP_RING_ABANDONED},
        {"RING_CORRUPT", CARMP_RING_CORRUPT},   {"RING_EMPTY", CARMP_RING_EMPTY},
        {"RING_PENDING", CARMP_RING_PENDING},   {"RING_LOST", CARMP_RING_LOST},
        {"RING_MAX_SLOTS", (long)CARMP_RING_MAX_SLOTS},
        {"RING_MAX_READERS", CARMP_RING_MAX_READERS},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (PyModule_AddIntConstant(module, constants[i].name, constants[i].value) < 0) return -1;
    return 0;
}
