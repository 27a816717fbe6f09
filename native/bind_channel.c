/*
 * carmp._native.Channel: the Python face of channel.c. A Channel is bound to a
 * Region and three offsets in it (the channel, the bell its consumer sleeps on,
 * the bell its producer sleeps on) so that every call is one C call with no
 * offset arithmetic in Python. Waits spin briefly, then sleep on the bell in
 * GIL-free slices, checking for signals between slices.
 */
#include "binding.h"

#include <time.h>

typedef struct {
    PyObject_HEAD
    Region *region;
    Py_ssize_t channel, readable, writable; /* byte offsets in the region */
} Channel;

static PyTypeObject ChannelType;

static void *channel_at(Channel *self) {
    if (self->region == NULL || self->region->base == NULL) {
        PyErr_SetString(self->region && self->region->closed_error ? self->region->closed_error
                                                                   : PyExc_ValueError,
                        "this carmp channel's segment is closed");
        return NULL;
    }
    return self->region->base + self->channel;
}

static carmp_bell *bell_at(Channel *self, Py_ssize_t offset) {
    return (carmp_bell *)(self->region->base + offset);
}

static int Channel_init(Channel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"region", "offset", "readable_bell", "writable_bell", NULL};
    PyObject *region;
    Py_ssize_t channel, readable, writable;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!nnn:Channel", kwlist, &RegionType, &region,
                                     &channel, &readable, &writable))
        return -1;
    Region *r = (Region *)region;
    Py_ssize_t offsets[3] = {channel, readable, writable};
    Py_ssize_t widths[3] = {CARMP_CHANNEL_HEADER, sizeof(carmp_bell), sizeof(carmp_bell)};
    for (int i = 0; i < 3; i++) {
        if (offsets[i] < 0 || offsets[i] % 8 || offsets[i] > r->size - widths[i]) {
            PyErr_Format(PyExc_ValueError, "offset %zd is misaligned or outside the region",
                         offsets[i]);
            return -1;
        }
    }
    Py_INCREF(region);
    Py_XSETREF(self->region, r);
    self->channel = channel;
    self->readable = readable;
    self->writable = writable;
    return 0;
}

static void Channel_dealloc(Channel *self) {
    Py_XDECREF(self->region);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The channel's full extent must lie inside the region (checked on every data access
 * because the capacity word lives in shared memory). */
static int check_extent(Channel *self, void *ch) {
    uint64_t capacity = *(uint64_t *)((char *)ch + 128);
    if (capacity == 0 || (capacity & (capacity - 1)) ||
        capacity > (uint64_t)(self->region->size - self->channel - CARMP_CHANNEL_HEADER)) {
        PyErr_SetString(PyExc_ValueError,
                        "channel is not initialised or its capacity word is corrupt");
        return -1;
    }
    return 0;
}

static PyObject *Channel_initialize(Channel *self, PyObject *capacity_obj) {
    void *ch = channel_at(self);
    if (ch == NULL) return NULL;
    unsigned long long capacity = PyLong_AsUnsignedLongLong(capacity_obj);
    if (capacity == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (capacity > (unsigned long long)(self->region->size - self->channel - CARMP_CHANNEL_HEADER))
        return PyErr_Format(PyExc_ValueError, "capacity %llu does not fit the region", capacity);
    if (carmp_channel_init(ch, capacity) != CARMP_OK)
        return PyErr_Format(PyExc_ValueError, "capacity must be a power of two >= 64");
    memset(bell_at(self, self->readable), 0, sizeof(carmp_bell));
    memset(bell_at(self, self->writable), 0, sizeof(carmp_bell));
    Py_RETURN_NONE;
}

static int send_one(Channel *self, void *ch, PyObject *tag_obj, PyObject *data_obj) {
    unsigned long tag = PyLong_AsUnsignedLong(tag_obj);
    if (tag == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (tag > UINT32_MAX) {
        PyErr_SetString(PyExc_OverflowError, "tag must fit in 32 bits");
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data_obj, &view, PyBUF_SIMPLE) < 0) return -1;
    carmp_status st = carmp_channel_send(ch, (uint32_t)tag, view.buf, (uint64_t)view.len);
    PyBuffer_Release(&view);
    if (st == CARMP_EINVAL) {
        PyErr_Format(PyExc_ValueError,
                     "a %zd-byte message exceeds this channel's limit of %llu bytes; "
                     "split it into fragments",
                     view.len, (unsigned long long)carmp_channel_max_message(ch));
        return -1;
    }
    (void)self;
    return st == CARMP_OK ? 1 : 0;
}

/* send(tag, data) -> bool: False when full (nothing sent). Wakes a sleeping consumer. */
static PyObject *Channel_send(Channel *self, PyObject *const *args, Py_ssize_t nargs) {
    if (carmp_check_nargs("send", nargs, 2) < 0) return NULL;
    void *ch = channel_at(self);
    if (ch == NULL || check_extent(self, ch) < 0) return NULL;
    int sent = send_one(self, ch, args[0], args[1]);
    if (sent < 0) return NULL;
    if (sent) carmp_bell_ring(bell_at(self, self->readable));
    return PyBool_FromLong(sent);
}

/* send_many(messages) -> int: send (tag, data) pairs in order until one does not fit;
 * returns how many were sent and wakes the consumer once. */
static PyObject *Channel_send_many(Channel *self, PyObject *messages) {
    void *ch = channel_at(self);
    if (ch == NULL || check_extent(self, ch) < 0) return NULL;
    PyObject *seq = PySequence_Fast(messages, "send_many() takes a sequence of (tag, data)");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), sent = 0;
    for (; sent < n; sent++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, sent);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "send_many() items must be (tag, data) tuples");
            sent = -1;
            break;
        }
        int ok = send_one(self, ch, PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1));
        if (ok < 0) {
            sent = -1;
            break;
        }
        if (!ok) break;
    }
    Py_DECREF(seq);
    if (sent > 0) carmp_bell_ring(bell_at(self, self->readable));
    return sent < 0 ? NULL : PyLong_FromSsize_t(sent);
}

/* One record as (tag, bytes), or NULL with *status set (CARMP_EMPTY: no exception). */
static PyObject *recv_one(void *ch, carmp_status *status) {
    uint32_t tag;
    const void *payload;
    uint64_t length;
    *status = carmp_channel_peek(ch, &tag, &payload, &length);
    if (*status == CARMP_CORRUPT) {
        PyErr_SetString(PyExc_ValueError, "channel holds a corrupt record; the segment was "
                                          "overwritten by something other than carmp");
        return NULL;
    }
    if (*status != CARMP_OK) return NULL;
    PyObject *data = PyBytes_FromStringAndSize(payload, (Py_ssize_t)length);
    if (data == NULL) return NULL;
    carmp_channel_advance(ch, length);
    return Py_BuildValue("(kN)", (unsigned long)tag, data);
}

/* recv() -> (tag, bytes) | None. Wakes a producer waiting for room. */
static PyObject *Channel_recv(Channel *self, PyObject *Py_UNUSED(ignored)) {
    void *ch = channel_at(self);
    if (ch == NULL || check_extent(self, ch) < 0) return NULL;
    carmp_status st;
    PyObject *item = recv_one(ch, &st);
    if (item != NULL) {
        carmp_bell_ring(bell_at(self, self->writable));
        return item;
    }
    if (st == CARMP_EMPTY) Py_RETURN_NONE;
    return NULL;
}

/* recv_many(limit) -> list of (tag, bytes), at most `limit`, possibly empty. */
static PyObject *Channel_recv_many(Channel *self, PyObject *limit_obj) {
    void *ch = channel_at(self);
    if (ch == NULL || check_extent(self, ch) < 0) return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(limit_obj);
    if (limit == -1 && PyErr_Occurred()) return NULL;
    PyObject *items = PyList_New(0);
    if (items == NULL) return NULL;
    carmp_status st = CARMP_OK;
    while (PyList_GET_SIZE(items) < limit) {
        PyObject *item = recv_one(ch, &st);
        if (item == NULL) break;
        int rc = PyList_Append(items, item);
        Py_DECREF(item);
        if (rc < 0) {
            Py_DECREF(items);
            return NULL;
        }
    }
    if (PyErr_Occurred()) {
        Py_DECREF(items);
        return NULL;
    }
    if (PyList_GET_SIZE(items) > 0) carmp_bell_ring(bell_at(self, self->writable));
    return items;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

typedef int (*ready_fn)(void *ctx, uint64_t arg);

static int is_readable(void *ch, uint64_t arg) {
    (void)arg;
    return carmp_channel_readable(ch);
}

static int has_room(void *ch, uint64_t need) {
    uint64_t capacity = *(uint64_t *)((char *)ch + 128);
    return capacity - carmp_channel_used(ch) >= need;
}

/* Spin up to spin_seconds, then sleep on `bell` until ready(ctx, arg) or the deadline;
 * with until_ring, any ring of the bell also ends the wait. Called with the GIL;
 * releases it while spinning and sleeping. */
static PyObject *wait_until(void *ch, carmp_bell *bell, ready_fn ready, uint64_t arg,
                            PyObject *timeout, double spin_seconds, int until_ring) {
    int64_t deadline;
    if (carmp_deadline_from(timeout, &deadline) < 0) return NULL;
    if (ready(ch, arg)) Py_RETURN_TRUE;
    int64_t spin_ns = spin_seconds > 0 ? (int64_t)(spin_seconds * 1e9) : 0;
    int outcome = 0;
    Py_BEGIN_ALLOW_THREADS
    if (spin_ns > 0) {
        int64_t spin_end = carmp_monotonic_ns() + spin_ns;
        while (!(outcome = ready(ch, arg)) && carmp_monotonic_ns() < spin_end) {
            for (int i = 0; i < 64; i++) cpu_relax();
        }
    }
    Py_END_ALLOW_THREADS
    while (!outcome) {
        int64_t slice = carmp_next_slice(deadline);
        if (slice == 0) Py_RETURN_FALSE;
        carmp_status st;
        Py_BEGIN_ALLOW_THREADS
        uint32_t seq = carmp_bell_prepare(bell);
        outcome = ready(ch, arg);
        st = outcome ? CARMP_OK : carmp_bell_sleep(bell, seq, slice);
        carmp_bell_cancel(bell);
        if (!outcome) outcome = ready(ch, arg) || (until_ring && (uint32_t)__atomic_load_n(&bell->seq, __ATOMIC_SEQ_CST) != seq);
        Py_END_ALLOW_THREADS
        if (st == CARMP_ERRNO) return carmp_raise_status(st, "channel wait");
        if (!outcome && PyErr_CheckSignals() < 0) return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *Channel_wait_readable(Channel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"timeout", "spin", NULL};
    PyObject *timeout = Py_None;
    double spin = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Od:wait_readable", kwlist, &timeout, &spin))
        return NULL;
    void *ch = channel_at(self);
    if (ch == NULL || check_extent(self, ch) < 0) return NULL;
    return wait_until(ch, bell_at(self, self->readable), is_readable, 0, timeout, spin, 0);
}

static PyObject *Channel_wait_writable(Channel *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"size", "timeout", NULL};
    Py_ssize_t size;
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n|O:wait_writable", kwlist, &size, &timeout))
        return NULL;
    void *ch = channel_at(self);
    if (ch == NULL || check_extent(self, ch) < 0) return NULL;
    if (size < 0 || (uint64_t)size > carmp_channel_max_message(ch))
        return PyErr_Format(PyExc_ValueError, "size %zd is beyond this channel's limit", size);
    /* room for a record of `size` bytes, plus a wrap marker's worst case */
    uint64_t need = 8 + (((uint64_t)size + 7) & ~(uint64_t)7);
    return wait_until(ch, bell_at(self, self->writable), has_room, 2 * need, timeout, 0, 0);
}

/* The channels wait_any watches; they all share one readable bell. With `has_since`,
 * a bell seq other than `since` (an announcement since the caller looked) also ends it. */
typedef struct {
    carmp_bell *bell;
    int has_since;
    uint32_t since;
    Py_ssize_t count;
    void *channels[];
} channel_set;

static int any_readable(void *ctx, uint64_t arg) {
    channel_set *set = ctx;
    (void)arg;
    if (set->has_since && carmp_bell_seq(set->bell) != set->since) return 1;
    for (Py_ssize_t i = 0; i < set->count; i++)
        if (carmp_channel_readable(set->channels[i])) return 1;
    return 0;
}

/* wait_any(channels, timeout=None, spin=0.0, since=None) -> bool: until one of the
 * channels, which must share one readable bell, has a message, or anybody rings that
 * bell, or (since=) its seq is no longer `since` (True), or the timeout (False). */
static PyObject *native_wait_any(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"channels", "timeout", "spin", "since", NULL};
    PyObject *channels, *timeout = Py_None, *since = Py_None;
    double spin = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OdO:wait_any", kwlist, &channels, &timeout,
                                     &spin, &since))
        return NULL;
    unsigned long since_seq = 0;
    if (since != Py_None) {
        if (PyLong_Check(since) && !PyBool_Check(since)) {
            since_seq = PyLong_AsUnsignedLong(since);
            if (since_seq == (unsigned long)-1 && PyErr_Occurred()) {
                if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return NULL;
                PyErr_Clear();
                since_seq = (unsigned long)UINT32_MAX + 1;
            }
        } else {
            since_seq = (unsigned long)UINT32_MAX + 1;
        }
        if (since_seq > UINT32_MAX)
            return PyErr_Format(PyExc_ValueError,
                                "since=%R is not a bell seq (an int 0..2**32-1); pass what "
                                "bell_seq() returned", since);
    }
    PyObject *seq = PySequence_Fast(channels, "wait_any() takes a sequence of Channels");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n == 0) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "wait_any() needs at least one channel");
    }
    channel_set *set = PyMem_Malloc(sizeof(channel_set) + (size_t)n * sizeof(void *));
    if (set == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    set->count = n;
    set->has_since = since != Py_None;
    set->since = (uint32_t)since_seq;
    carmp_bell *bell = NULL;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyObject_TypeCheck(item, &ChannelType)) {
            PyErr_SetString(PyExc_TypeError, "wait_any() takes Channels");
            goto done;
        }
        Channel *ch = (Channel *)item;
        void *mem = channel_at(ch);
        if (mem == NULL || check_extent(ch, mem) < 0) goto done;
        carmp_bell *own = bell_at(ch, ch->readable);
        if (bell != NULL && own != bell) {
            PyErr_SetString(PyExc_ValueError, "wait_any() channels must share one readable bell");
            goto done;
        }
        bell = own;
        set->channels[i] = mem;
    }
    /* `seq` holds the channels, and they hold their regions, for the whole wait */
    set->bell = bell;
    result = wait_until(set, bell, any_readable, 0, timeout, spin, 1);
done:
    PyMem_Free(set);
    Py_DECREF(seq);
    return result;
}

/* ring() -> int: announce a change on this channel's readable bell: its seq moves and
 * its sleepers wake (a waiter that passed bell_seq() to wait_any cannot miss it). */
static PyObject *Channel_ring(Channel *self, PyObject *Py_UNUSED(ignored)) {
    if (channel_at(self) == NULL) return NULL;
    return PyLong_FromLong(carmp_bell_announce(bell_at(self, self->readable)));
}

/* bell_seq() -> int: the readable bell's seq now, for wait_any(since=). */
static PyObject *Channel_bell_seq(Channel *self, PyObject *Py_UNUSED(ignored)) {
    if (channel_at(self) == NULL) return NULL;
    return PyLong_FromUnsignedLong(carmp_bell_seq(bell_at(self, self->readable)));
}

static PyObject *Channel_get_readable(Channel *self, void *Py_UNUSED(closure)) {
    void *ch = channel_at(self);
    return ch == NULL ? NULL : PyBool_FromLong(carmp_channel_readable(ch));
}

static PyObject *Channel_get_used(Channel *self, void *Py_UNUSED(closure)) {
    void *ch = channel_at(self);
    return ch == NULL ? NULL : PyLong_FromUnsignedLongLong(carmp_channel_used(ch));
}

static PyObject *Channel_get_max_message(Channel *self, void *Py_UNUSED(closure)) {
    void *ch = channel_at(self);
    if (ch == NULL || check_extent(self, ch) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(carmp_channel_max_message(ch));
}

static PyMethodDef Channel_methods[] = {
    {"initialize", (PyCFunction)Channel_initialize, METH_O,
     "initialize(capacity): creator only; capacity is a power of two >= 64"},
    {"send", (PyCFunction)(void (*)(void))Channel_send, METH_FASTCALL,
     "send(tag, data) -> bool: False when full"},
    {"send_many", (PyCFunction)Channel_send_many, METH_O,
     "send_many([(tag, data), ...]) -> int sent before the first that did not fit"},
    {"recv", (PyCFunction)Channel_recv, METH_NOARGS, "recv() -> (tag, bytes) | None"},
    {"ring", (PyCFunction)Channel_ring, METH_NOARGS,
     "ring() -> int: announce a change on the readable bell (its seq moves; sleepers wake)"},
    {"bell_seq", (PyCFunction)Channel_bell_seq, METH_NOARGS,
     "bell_seq() -> int: the readable bell's seq, for wait_any(since=)"},
    {"recv_many", (PyCFunction)Channel_recv_many, METH_O,
     "recv_many(limit) -> [(tag, bytes), ...]"},
    {"wait_readable", (PyCFunction)(void (*)(void))Channel_wait_readable,
     METH_VARARGS | METH_KEYWORDS,
     "wait_readable(timeout=None, spin=0.0) -> bool: spin `spin` seconds, then sleep"},
    {"wait_writable", (PyCFunction)(void (*)(void))Channel_wait_writable,
     METH_VARARGS | METH_KEYWORDS,
     "wait_writable(size, timeout=None) -> bool: until a `size`-byte message fits"},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Channel_getset[] = {
    {"readable", (getter)Channel_get_readable, NULL, "a message is waiting", NULL},
    {"used", (getter)Channel_get_used, NULL, "bytes in flight", NULL},
    {"max_message", (getter)Channel_get_max_message, NULL, "largest payload in bytes", NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject ChannelType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "carmp._native.Channel",
    .tp_basicsize = sizeof(Channel),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Channel(region, offset, readable_bell, writable_bell): an SPSC message channel",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Channel_init,
    .tp_dealloc = (destructor)Channel_dealloc,
    .tp_methods = Channel_methods,
    .tp_getset = Channel_getset,
};

static PyMethodDef channel_functions[] = {
    {"wait_any", (PyCFunction)(void (*)(void))native_wait_any, METH_VARARGS | METH_KEYWORDS,
     "wait_any(channels, timeout=None, spin=0.0, since=None) -> bool: until one of the "
     "channels, which share one readable bell, has a message, the bell rings, or its seq "
     "is no longer `since`"},
    {NULL, NULL, 0, NULL}};

int carmp_bind_channel(PyObject *module) {
    if (PyType_Ready(&ChannelType) < 0) return -1;
    if (PyModule_AddFunctions(module, channel_functions) < 0) return -1;
    Py_INCREF(&ChannelType);
    if (PyModule_AddObject(module, "Channel", (PyObject *)&ChannelType) < 0) {
        Py_DECREF(&ChannelType);
        return -1;
    }
    if (PyModule_AddIntConstant(module, "CHANNEL_HEADER", CARMP_CHANNEL_HEADER) < 0 ||
        PyModule_AddIntConstant(module, "BELL_SIZE", sizeof(carmp_bell)) < 0)
        return -1;
    return 0;
}
