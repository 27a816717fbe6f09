/*
 * carmp._native.Table: the Python face of table.c. A Table is bound to a Region and
 * the byte offset of a table in it. A read is one call (hash, probe, torn-free copy);
 * a write is one call that opens, fills and commits a batch, so a caller holding the
 * lock never sees a batch left open. Keys and actions are str (UTF-8), values bytes.
 * Nothing here blocks: a read that finds a bucket busy for too long raises
 * BlockingIOError, and the caller takes the lock (which recovers a dead writer) and
 * reads again.
 */
#include "binding.h"

typedef struct {
    PyObject_HEAD
    Region *region;
    Py_ssize_t offset;
} Table;

static PyTypeObject TableType;

static void *table_at(Table *self) {
    if (self->region == NULL || self->region->base == NULL) {
        PyErr_SetString(self->region && self->region->closed_error ? self->region->closed_error
                                                                   : PyExc_ValueError,
                        "this carmp state store's segment is closed; attach it again");
        return NULL;
    }
    return self->region->base + self->offset;
}

static const char *utf8_of(PyObject *obj, Py_ssize_t *length, const char *what) {
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", what, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    return PyUnicode_AsUTF8AndSize(obj, length);
}

static int u64_of(PyObject *obj, uint64_t *out) {
    unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    *out = value;
    return 0;
}

static PyObject *bytes_or_none(const void *data, size_t length) {
    if (data == NULL) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(data, (Py_ssize_t)length);
}

/* ---- lifecycle ------------------------------------------------------------------ */

static int config_from(PyObject *const *args, carmp_table_config *config) {
    uint64_t *fields[] = {&config->max_keys, &config->arena_bytes, &config->log_bytes,
                          &config->max_key_bytes, &config->max_value_bytes, &config->seed};
    for (int i = 0; i < 6; i++)
        if (u64_of(args[i], fields[i]) < 0) return -1;
    return 0;
}

/* table_size(max_keys, arena_bytes, log_bytes, max_key_bytes, max_value_bytes, seed) */
static PyObject *native_table_size(PyObject *Py_UNUSED(module), PyObject *const *args,
                                   Py_ssize_t nargs) {
    carmp_table_config config;
    if (carmp_check_nargs("table_size", nargs, 6) < 0 || config_from(args, &config) < 0)
        return NULL;
    size_t size = carmp_table_size(&config);
    if (size == 0) return PyErr_Format(PyExc_ValueError, "invalid state table geometry");
    return PyLong_FromSize_t(size);
}

/* table_init(region, offset, max_keys, arena_bytes, log_bytes, max_key_bytes, max_value_bytes, seed) */
static PyObject *native_table_init(PyObject *Py_UNUSED(module), PyObject *const *args,
                                   Py_ssize_t nargs) {
    carmp_table_config config;
    if (carmp_check_nargs("table_init", nargs, 8) < 0 || config_from(args + 2, &config) < 0)
        return NULL;
    if (!PyObject_TypeCheck(args[0], &RegionType))
        return PyErr_Format(PyExc_TypeError, "table_init() needs a Region");
    size_t size = carmp_table_size(&config);
    if (size == 0) return PyErr_Format(PyExc_ValueError, "invalid state table geometry");
    char *table = carmp_region_address((Region *)args[0], args[1], (Py_ssize_t)size);
    if (table == NULL) return NULL;
    carmp_status st = carmp_table_init(table, size, &config);
    if (st != CARMP_OK) return carmp_raise_status(st, "table_init");
    Py_RETURN_NONE;
}

static int Table_init(Table *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"region", "offset", NULL};
    PyObject *region;
    Py_ssize_t offset;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!n:Table", kwlist, &RegionType, &region,
                                     &offset))
        return -1;
    Region *r = (Region *)region;
    if (r->base == NULL || offset < 0 || offset % 64 || offset >= r->size) {
        PyErr_Format(PyExc_ValueError, "offset %zd is misaligned or outside the region", offset);
        return -1;
    }
    carmp_table_config config;
    if (carmp_table_attach(r->base + offset, (size_t)(r->size - offset), &config) != CARMP_OK) {
        PyErr_SetString(PyExc_ValueError,
                        "no valid state table at this offset (bad magic, layout or geometry)");
        return -1;
    }
    Py_INCREF(region);
    Py_XSETREF(self->region, r);
    self->offset = offset;
    return 0;
}

static void Table_dealloc(Table *self) {
    Py_XDECREF(self->region);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- lock-free reads --------------------------------------------------------------- */

#define READ_BUFFER 512

/* The value of `key_obj` as bytes (Py_None when absent), with its version and expiry. */
static PyObject *read_value(Table *self, PyObject *key_obj, carmp_table_value *v) {
    void *table = table_at(self);
    Py_ssize_t key_len;
    const char *key = table ? utf8_of(key_obj, &key_len, "key") : NULL;
    if (key == NULL) return NULL;
    char small[READ_BUFFER];
    carmp_status st = carmp_table_get(table, key, (size_t)key_len, small, sizeof small, v);
    if (st == CARMP_OK && v->length <= sizeof small)
        return v->version ? PyBytes_FromStringAndSize(small, (Py_ssize_t)v->length)
                          : Py_NewRef(Py_None);
    while (st == CARMP_OK && v->version) { /* larger than the stack buffer */
        size_t want = v->length;
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)want);
        if (out == NULL) return NULL;
        st = carmp_table_get(table, key, (size_t)key_len, PyBytes_AS_STRING(out), want, v);
        if (st == CARMP_OK && v->version && v->length <= want) {
            if (v->length == want) return out;
            PyObject *shorter = PyBytes_FromStringAndSize(PyBytes_AS_STRING(out), (Py_ssize_t)v->length);
            Py_DECREF(out);
            return shorter;
        }
        Py_DECREF(out);
    }
    if (st == CARMP_OK) Py_RETURN_NONE;
    if (st == CARMP_BUSY) {
        PyErr_SetString(PyExc_BlockingIOError, "a writer holds this key's bucket");
        return NULL;
    }
    PyErr_SetString(PyExc_ValueError, "a state table chain is corrupt");
    return NULL;
}

static PyObject *Table_get(Table *self, PyObject *key) {
    carmp_table_value v;
    return read_value(self, key, &v);
}

static PyObject *Table_get_entry(Table *self, PyObject *key) {
    carmp_table_value v;
    PyObject *value = read_value(self, key, &v);
    if (value == NULL || value == Py_None) return value;
    return Py_BuildValue("(NKK)", value, (unsigned long long)v.version,
                         (unsigned long long)v.expires_ns);
}

static PyObject *Table_version(Table *self, PyObject *key_obj) {
    void *table = table_at(self);
    Py_ssize_t key_len;
    const char *key = table ? utf8_of(key_obj, &key_len, "key") : NULL;
    if (key == NULL) return NULL;
    carmp_table_value v;
    carmp_status st = carmp_table_get(table, key, (size_t)key_len, NULL, 0, &v);
    if (st == CARMP_BUSY) {
        PyErr_SetString(PyExc_BlockingIOError, "a writer holds this key's bucket");
        return NULL;
    }
    if (st != CARMP_OK) return carmp_raise_status(st, "version");
    return PyLong_FromUnsignedLongLong(v.version);
}

/* ---- writes (the caller holds the lock) ---------------------------------------------- */

/* Raise for a failed put/remove: BufferError(("keys" | "bytes", key)) when full. */
static PyObject *raise_write(carmp_status st, const carmp_table_change *change, PyObject *key) {
    if (st != CARMP_FULL) return carmp_raise_status(st, "state write");
    PyObject *args = Py_BuildValue(
        "(sO)", change->full == CARMP_TABLE_FULL_KEYS ? "keys" : "bytes", key);
    if (args != NULL) {
        PyErr_SetObject(PyExc_BufferError, args);
        Py_DECREF(args);
    }
    return NULL;
}

typedef struct {
    PyObject *key; /* str */
    const char *key_utf8, *value, *action;
    Py_ssize_t key_len, value_len, action_len;
    int has_value;
    uint64_t expires_ns;
} write_op;

/* Borrowed pointers into the arguments; value None means delete, action NULL means "". */
static int parse_op(PyObject *key, PyObject *value, PyObject *expires, PyObject *action,
                    write_op *op) {
    op->key = key;
    op->key_utf8 = utf8_of(key, &op->key_len, "key");
    if (op->key_utf8 == NULL) return -1;
    op->has_value = value != Py_None;
    if (op->has_value) {
        if (!PyBytes_Check(value)) {
            PyErr_SetString(PyExc_TypeError, "values must be bytes (or None to delete)");
            return -1;
        }
        op->value = PyBytes_AS_STRING(value);
        op->value_len = PyBytes_GET_SIZE(value);
    }
    if (u64_of(expires, &op->expires_ns) < 0) return -1;
    op->action = "";
    op->action_len = 0;
    if (action != NULL) op->action = utf8_of(action, &op->action_len, "action_id");
    return op->action == NULL ? -1 : 0;
}

/* (key, value or None, expires_ns, action) -> op */
static int op_from(PyObject *item, write_op *op) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 4) {
        PyErr_SetString(PyExc_TypeError, "each op must be (key, value or None, expires_ns, action)");
        return -1;
    }
    return parse_op(PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1),
                    PyTuple_GET_ITEM(item, 2), PyTuple_GET_ITEM(item, 3), op);
}

/* (key, value, expires_ns) -> op */
static int item_from(PyObject *item, write_op *op) {
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
        PyErr_SetString(PyExc_TypeError, "each item must be (key, value, expires_ns)");
        return -1;
    }
    if (parse_op(PyTuple_GET_ITEM(item, 0), PyTuple_GET_ITEM(item, 1), PyTuple_GET_ITEM(item, 2),
                 NULL, op) < 0)
        return -1;
    if (!op->has_value) {
        PyErr_SetString(PyExc_TypeError, "replace() values must be bytes");
        return -1;
    }
    return 0;
}

/* Apply one op inside the open batch; NULL (batch aborted) on failure, else
 * (old: bytes | None, old_version, new_version). */
static PyObject *apply_op(void *table, const write_op *op, unsigned flags) {
    carmp_table_change change;
    carmp_status st =
        op->has_value
            ? carmp_table_put(table, op->key_utf8, (size_t)op->key_len, op->value,
                              (size_t)op->value_len, op->expires_ns, op->action,
                              (size_t)op->action_len, flags, &change)
            : carmp_table_remove(table, op->key_utf8, (size_t)op->key_len, op->action,
                                 (size_t)op->action_len, flags, &change);
    if (st != CARMP_OK) {
        carmp_table_abort(table);
        return raise_write(st, &change, op->key);
    }
    PyObject *old = bytes_or_none(change.old_value, change.old_length);
    if (old == NULL) {
        carmp_table_abort(table);
        return NULL;
    }
    return Py_BuildValue("(NKK)", old, (unsigned long long)change.old_version,
                         (unsigned long long)change.new_version);
}

static PyObject *commit_or_raise(void *table, PyObject *result) {
    carmp_status st = carmp_table_commit(table);
    if (st == CARMP_OK) return result;
    Py_DECREF(result);
    return carmp_raise_status(st, "commit");
}

/* set(key, value, expires_ns, action, timestamp_ns, lock_offset=-1)
 *   -> (old, old_version, new_version)
 * With a lock offset the call also takes that robust lock (spinning briefly) and releases
 * it: one native call for an uncontended write. It then returns None, having done
 * nothing, when the lock stays busy (the caller waits on it, sleeping), and False when
 * it took the lock from a dead owner (the caller holds it and must repair first). */
static PyObject *Table_set(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 && nargs != 6)
        return PyErr_Format(PyExc_TypeError,
                            "set(key, value, expires_ns, action, timestamp_ns, lock_offset=-1)");
    void *table = table_at(self), *lock = NULL;
    write_op op;
    uint64_t timestamp;
    if (table == NULL || parse_op(args[0], args[1], args[2], args[3], &op) < 0 ||
        u64_of(args[4], &timestamp) < 0)
        return NULL;
    if (!op.has_value) return PyErr_Format(PyExc_TypeError, "set() needs a bytes value");
    if (nargs == 6) {
        if ((lock = carmp_region_address(self->region, args[5], CARMP_LOCK_SIZE)) == NULL)
            return NULL;
        carmp_status st = carmp_lock_try_spinning(lock);
        if (st == CARMP_BUSY) Py_RETURN_NONE;
        if (st == CARMP_OWNERDEAD) Py_RETURN_FALSE;
        if (st != CARMP_OK) return carmp_raise_status(st, "lock_acquire");
    }
    PyObject *result = NULL;
    carmp_status st = carmp_table_begin(table, timestamp);
    if (st != CARMP_OK)
        carmp_raise_status(st, "begin");
    else if ((result = apply_op(table, &op, 0)) != NULL)
        result = commit_or_raise(table, result);
    if (lock != NULL && (st = carmp_lock_release(lock)) != CARMP_OK) {
        Py_XDECREF(result);
        return carmp_raise_status(st, "lock_release");
    }
    return result;
}

/* apply(ops, timestamp_ns) -> [(old, old_version, new_version)]: one atomic batch of
 * (key, value or None to delete, expires_ns, action) ops, each logged as a transition. */
static PyObject *Table_apply(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (carmp_check_nargs("apply", nargs, 2) < 0) return NULL;
    void *table = table_at(self);
    uint64_t timestamp;
    if (table == NULL || u64_of(args[1], &timestamp) < 0) return NULL;
    PyObject *ops = PySequence_Fast(args[0], "apply() needs a sequence of ops");
    if (ops == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(ops);
    write_op *parsed = PyMem_New(write_op, n > 0 ? n : 1);
    PyObject *results = parsed ? PyList_New(n) : PyErr_NoMemory();
    for (Py_ssize_t i = 0; results && i < n; i++) /* all checked before anything changes */
        if (op_from(PySequence_Fast_GET_ITEM(ops, i), &parsed[i]) < 0) Py_CLEAR(results);
    carmp_status st = results ? carmp_table_begin(table, timestamp) : CARMP_OK;
    if (st != CARMP_OK) {
        Py_CLEAR(results);
        carmp_raise_status(st, "begin");
    }
    for (Py_ssize_t i = 0; results && i < n; i++) {
        PyObject *one = apply_op(table, &parsed[i], 0);
        if (one == NULL)
            Py_CLEAR(results);
        else
            PyList_SET_ITEM(results, i, one);
    }
    if (results) results = commit_or_raise(table, results);
    PyMem_Free(parsed);
    Py_DECREF(ops);
    return results;
}

/* replace(items, timestamp_ns, transition_count): one atomic batch that empties the
 * table, puts every (key, value, expires_ns) unlogged, and keeps only the first
 * transition_count transitions. */
static PyObject *Table_replace(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (carmp_check_nargs("replace", nargs, 3) < 0) return NULL;
    void *table = table_at(self);
    uint64_t timestamp, count;
    if (table == NULL || u64_of(args[1], &timestamp) < 0 || u64_of(args[2], &count) < 0)
        return NULL;
    PyObject *items = PySequence_Fast(args[0], "replace() needs a sequence of items");
    if (items == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(items);
    write_op *parsed = PyMem_New(write_op, n > 0 ? n : 1);
    int ok = parsed != NULL;
    if (!ok) PyErr_NoMemory();
    for (Py_ssize_t i = 0; ok && i < n; i++)
        ok = item_from(PySequence_Fast_GET_ITEM(items, i), &parsed[i]) == 0;
    carmp_status st = ok ? carmp_table_begin(table, timestamp) : CARMP_OK;
    if (st != CARMP_OK) {
        ok = 0;
        carmp_raise_status(st, "begin");
    }
    if (ok && (st = carmp_table_clear(table)) != CARMP_OK) {
        ok = 0;
        carmp_table_abort(table);
        carmp_raise_status(st, "clear");
    }
    for (Py_ssize_t i = 0; ok && i < n; i++) {
        PyObject *one = apply_op(table, &parsed[i], CARMP_TABLE_UNLOGGED);
        ok = one != NULL;
        Py_XDECREF(one);
    }
    if (ok && (st = carmp_table_truncate_log(table, count)) != CARMP_OK) {
        ok = 0;
        carmp_table_abort(table);
        PyErr_Format(PyExc_ValueError, "transition_count %llu is more than were recorded",
                     (unsigned long long)count);
    }
    if (ok && (st = carmp_table_commit(table)) != CARMP_OK) {
        ok = 0;
        carmp_raise_status(st, "commit");
    }
    PyMem_Free(parsed);
    Py_DECREF(items);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* recover() -> bool: repair after a dead writer (the caller holds the lock it recovered). */
static PyObject *Table_recover(Table *self, PyObject *Py_UNUSED(ignored)) {
    void *table = table_at(self);
    if (table == NULL) return NULL;
    int repaired = 0;
    carmp_status st = carmp_table_recover(table, &repaired);
    if (st == CARMP_EINVAL) {
        PyErr_SetString(PyExc_ValueError, "the state table is corrupt beyond recovery");
        return NULL;
    }
    if (st != CARMP_OK) return carmp_raise_status(st, "recover");
    return PyBool_FromLong(repaired);
}

/* ---- whole-table reads (the caller holds the lock) ------------------------------------ */

enum { ITEMS, KEYS, EXPIRED };

static PyObject *collect(Table *self, int what, uint64_t now_ns) {
    void *table = table_at(self);
    PyObject *out = table ? PyList_New(0) : NULL;
    uint64_t cursor = 0;
    carmp_table_item item;
    int rc = 0;
    while (out && (rc = carmp_table_next(table, &cursor, &item)) == 1) {
        if (what == EXPIRED && (item.expires_ns == 0 || item.expires_ns > now_ns)) continue;
        PyObject *key = PyUnicode_DecodeUTF8(item.key, (Py_ssize_t)item.key_len, "strict");
        PyObject *row = key;
        if (key && what == ITEMS)
            row = Py_BuildValue("(Ny#KK)", key, (const char *)item.value,
                                (Py_ssize_t)item.value_len, (unsigned long long)item.version,
                                (unsigned long long)item.expires_ns);
        if (row == NULL || PyList_Append(out, row) < 0) Py_CLEAR(out);
        Py_XDECREF(row);
    }
    if (out && rc < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_ValueError, "a state table entry points outside the table");
    }
    return out;
}

static PyObject *Table_items(Table *self, PyObject *Py_UNUSED(ignored)) {
    return collect(self, ITEMS, 0);
}

static PyObject *Table_keys(Table *self, PyObject *Py_UNUSED(ignored)) {
    return collect(self, KEYS, 0);
}

static PyObject *Table_expired(Table *self, PyObject *now) {
    uint64_t now_ns;
    if (u64_of(now, &now_ns) < 0) return NULL;
    return collect(self, EXPIRED, now_ns);
}

/* transitions(since) -> [(index, timestamp_ns, version, key, action, old, new)] */
static PyObject *Table_transitions(Table *self, PyObject *since) {
    void *table = table_at(self);
    uint64_t from, cursor;
    if (table == NULL || u64_of(since, &from) < 0) return NULL;
    if (carmp_table_log_seek(table, from, &cursor) != CARMP_OK)
        return PyErr_Format(PyExc_IndexError, "transition %llu is not retained",
                            (unsigned long long)from);
    PyObject *out = PyList_New(0);
    carmp_transition t;
    int rc;
    while (out && (rc = carmp_table_log_next(table, &cursor, &t)) == 1) {
        PyObject *row = Py_BuildValue(
            "(KKKs#s#NN)", (unsigned long long)t.index, (unsigned long long)t.timestamp_ns,
            (unsigned long long)t.version, (const char *)t.key, (Py_ssize_t)t.key_len,
            (const char *)t.action, (Py_ssize_t)t.action_len,
            bytes_or_none(t.old_value, t.old_length), bytes_or_none(t.new_value, t.new_length));
        if (row == NULL || PyList_Append(out, row) < 0) Py_CLEAR(out);
        Py_XDECREF(row);
    }
    if (out && rc < 0) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_ValueError, "a transition record failed its CRC check");
    }
    return out;
}

static PyObject *Table_log_bounds(Table *self, PyObject *Py_UNUSED(ignored)) {
    void *table = table_at(self);
    if (table == NULL) return NULL;
    uint64_t first, next;
    carmp_table_log_bounds(table, &first, &next);
    return Py_BuildValue("(KK)", (unsigned long long)first, (unsigned long long)next);
}

/* statistics() -> (keys, max_keys, bytes_used, arena_bytes, log_first, log_next,
 *                  log_dropped, log_bytes, commits, recoveries) */
static PyObject *Table_statistics(Table *self, PyObject *Py_UNUSED(ignored)) {
    void *table = table_at(self);
    if (table == NULL) return NULL;
    carmp_table_statistics s;
    carmp_table_stats(table, &s);
    return Py_BuildValue("(KKKKKKKKKK)", (unsigned long long)s.keys,
                         (unsigned long long)s.max_keys, (unsigned long long)s.bytes_used,
                         (unsigned long long)s.arena_bytes, (unsigned long long)s.log_first,
                         (unsigned long long)s.log_next, (unsigned long long)s.log_dropped,
                         (unsigned long long)s.log_bytes, (unsigned long long)s.commits,
                         (unsigned long long)s.recoveries);
}

/* config() -> (max_keys, arena_bytes, log_bytes, max_key_bytes, max_value_bytes) */
static PyObject *Table_config(Table *self, PyObject *Py_UNUSED(ignored)) {
    void *table = table_at(self);
    if (table == NULL) return NULL;
    carmp_table_config c;
    if (carmp_table_attach(table, (size_t)(self->region->size - self->offset), &c) != CARMP_OK)
        return PyErr_Format(PyExc_ValueError, "the state table header is corrupt");
    return Py_BuildValue("(KKKKK)", (unsigned long long)c.max_keys,
                         (unsigned long long)c.arena_bytes, (unsigned long long)c.log_bytes,
                         (unsigned long long)c.max_key_bytes, (unsigned long long)c.max_value_bytes);
}

static PyObject *Table_check(Table *self, PyObject *Py_UNUSED(ignored)) {
    void *table = table_at(self);
    if (table == NULL) return NULL;
    return PyLong_FromLong(carmp_table_check(table));
}

/* ---- type ------------------------------------------------------------------------------ */

#define FASTCALL(f) (PyCFunction)(void (*)(void))(f), METH_FASTCALL

static PyMethodDef Table_methods[] = {
    {"get", (PyCFunction)Table_get, METH_O, "get(key) -> bytes | None (lock-free)"},
    {"get_entry", (PyCFunction)Table_get_entry, METH_O,
     "get_entry(key) -> (value, version, expires_ns) | None (lock-free)"},
    {"version", (PyCFunction)Table_version, METH_O, "version(key) -> int, 0 when absent"},
    {"set", FASTCALL(Table_set),
     "set(key, value, expires_ns, action, timestamp_ns, lock_offset=-1) -> (old, old_version, "
     "new_version); with a lock offset also takes and releases that lock (None: busy, False: "
     "taken from a dead owner and held)"},
    {"apply", FASTCALL(Table_apply),
     "apply(ops, timestamp_ns) -> [(old, old_version, new_version)]: one atomic batch"},
    {"replace", FASTCALL(Table_replace),
     "replace(items, timestamp_ns, transition_count): swap in a whole map atomically"},
    {"recover", (PyCFunction)Table_recover, METH_NOARGS,
     "recover() -> bool: repair a dead writer's batch"},
    {"items", (PyCFunction)Table_items, METH_NOARGS,
     "items() -> [(key, value, version, expires_ns)]"},
    {"keys", (PyCFunction)Table_keys, METH_NOARGS, "keys() -> [key]"},
    {"expired", (PyCFunction)Table_expired, METH_O,
     "expired(now_ns) -> keys whose TTL deadline is <= now_ns"},
    {"transitions", (PyCFunction)Table_transitions, METH_O,
     "transitions(since) -> [(index, timestamp_ns, version, key, action, old, new)]"},
    {"log_bounds", (PyCFunction)Table_log_bounds, METH_NOARGS,
     "log_bounds() -> (first retained, number recorded)"},
    {"statistics", (PyCFunction)Table_statistics, METH_NOARGS,
     "statistics() -> (keys, max_keys, bytes_used, arena_bytes, log_first, log_next, "
     "log_dropped, log_bytes, commits, recoveries)"},
    {"config", (PyCFunction)Table_config, METH_NOARGS,
     "config() -> (max_keys, arena_bytes, log_bytes, max_key_bytes, max_value_bytes)"},
    {"check", (PyCFunction)Table_check, METH_NOARGS,
     "check() -> 0, or the negative number of the first broken invariant"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "carmp._native.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Table(region, offset): the shared hash table at a Region offset",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Table_init,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
};

static PyMethodDef table_functions[] = {
    {"table_size", FASTCALL(native_table_size),
     "table_size(max_keys, arena_bytes, log_bytes, max_key_bytes, max_value_bytes, seed) -> bytes"},
    {"table_init", FASTCALL(native_table_init),
     "table_init(region, offset, max_keys, arena_bytes, log_bytes, max_key_bytes, "
     "max_value_bytes, seed): lay out an empty table"},
    {NULL, NULL, 0, NULL}};

int carmp_bind_table(PyObject *module) {
    if (PyType_Ready(&TableType) < 0) return -1;
    if (PyModule_AddFunctions(module, table_functions) < 0) return -1;
    Py_INCREF(&TableType);
    if (PyModule_AddObject(module, "Table", (PyObject *)&TableType) < 0) {
        Py_DECREF(&TableType);
        return -1;
    }
    return 0;
}
