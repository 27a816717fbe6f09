/* Shared hash table: byte keys -> byte values over caller-owned memory.
 *
 * Layout (byte offsets from the table start; every part 64-byte aligned):
 *
 *   header    geometry (fixed at init), writer state, allocator class lists (header_t)
 *   buckets   bucket_count x {seq, head}; head = entry index + 1, 0 = empty chain
 *   entries   2 x max_keys x entry_t. Entries are copy-on-write: a replaced or removed
 *             entry is only unlinked, and freed when its batch commits, so half of the
 *             pool lets one batch replace every key.
 *   undo      undo_capacity x {what, old}: each link a batch changed (bucket head or an
 *             entry's next) with its old value, and each entry it retired
 *   arena     blocks [tag | key_len u32, value_len u32 | key | value | pad | tag];
 *             tag = size | USED. Free blocks hold {next, prev} class-list links instead
 *             and are merged with free neighbours at once.
 *   log       the transition ring; records never wrap (a zero size pads to the end)
 *
 * Readers: a bucket's seq is odd while a writer changes its chain. A reader waits for
 * an even seq, walks the chain, copies the value, and retries if seq moved. Entry and
 * block contents never change while linked, and nothing unlinked is reused before the
 * buckets that held it are even again, so a reader that sees seq unchanged read one
 * consistent value.
 *
 * Writers (under the caller's lock): the first change to a bucket in a batch logs its
 * head and makes seq odd; the first change to an old entry's next logs it; new entries
 * and blocks are unreachable until linked. Commit publishes every touched bucket at
 * once, then frees what the batch retired. Recovery after a dead writer restores the
 * logged links (before the commit mark) and rebuilds the allocator and the free entry
 * list from what the chains reach, so it needs no log of allocator words.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "carmp_native.h"

#define TABLE_MAGIC 0x3142544d50524143ULL /* "CARMPTB1" */
#define TABLE_LAYOUT 1
#define USED 1ULL
#define MIN_BLOCK 32
#define BLOCK_OVERHEAD 24 /* tag, key_len + value_len, tag */
#define EXACT_CLASSES 64  /* sizes below 1024 bytes: one class per 16 bytes */
#define CLASSES 384
#define CLASS_WORDS (CLASSES / 64)
#define RECORD_HEADER 48
#define UNDO_BUCKET (1ULL << 62)
#define UNDO_ENTRY (2ULL << 62)
#define UNDO_RETIRE (3ULL << 62)
#define UNDO_KIND (3ULL << 62)
#define READ_SPINS 256
#define READ_YIELDS 64

enum { IDLE = 0, OPEN = 1, COMMITTED = 2 };
enum { LOG_TRUNCATED = 1 };

typedef struct {
    uint64_t magic, layout;
    /* geometry, fixed at init */
    uint64_t max_keys, bucket_mask, entry_count, undo_capacity;
    uint64_t arena_bytes, log_bytes, max_key_bytes, max_value_bytes, seed, total_size;
    uint64_t buckets_at, entries_at, undo_at, arena_at, log_at;
    /* writer state */
    uint64_t keys, bytes_used, next_version, free_entry, batch, state, batch_flags;
    uint64_t batch_timestamp, undo_count, pending_entry, pending_block, commits, recoveries;
    uint64_t log_first, log_first_pos, log_next, log_next_pos, log_dropped;
    uint64_t saved_log[5]; /* first, first_pos, next, next_pos, dropped at begin */
    uint64_t class_bits[CLASS_WORDS];
    uint64_t class_head[CLASSES];
} header_t;

typedef struct {
    uint64_t seq, head;
} bucket_t;

typedef struct {
    uint64_t hash, block, version, next, expires_ns;
    uint64_t mark; /* 2 * batch that created (| 1) or logged this entry */
} entry_t;

typedef struct {
    uint64_t what, old;
} undo_t;

#define LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
/* Order every store before it ahead of every store after it: a writer killed between
 * two stores leaves memory as if it ran up to one of them. */
#define ORDER() __atomic_thread_fence(__ATOMIC_RELEASE)

static inline uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

static inline bucket_t *buckets_of(const header_t *h) {
    return (bucket_t *)((char *)h + h->buckets_at);
}
static inline entry_t *entries_of(const header_t *h) {
    return (entry_t *)((char *)h + h->entries_at);
}
static inline undo_t *undo_of(const header_t *h) { return (undo_t *)((char *)h + h->undo_at); }
static inline uint64_t *word_at(const header_t *h, uint64_t offset) {
    return (uint64_t *)((char *)h + offset);
}
static inline uint32_t *half_at(const header_t *h, uint64_t offset) {
    return (uint32_t *)((char *)h + offset);
}
static inline char *bytes_at(const header_t *h, uint64_t offset) { return (char *)h + offset; }

/* ---- geometry ------------------------------------------------------------------- */

static int layout(const carmp_table_config *c, header_t *g) {
    if (c->max_keys < 1 || c->max_keys > (1ULL << 30)) return -1;
    if (c->arena_bytes < 64 || c->arena_bytes % 16 || c->arena_bytes > (1ULL << 46)) return -1;
    if (c->log_bytes < 64 || c->log_bytes % 8 || c->log_bytes > (1ULL << 40)) return -1;
    if (c->max_key_bytes < 1 || c->max_key_bytes > (1ULL << 20)) return -1;
    if (c->max_value_bytes > (1ULL << 31)) return -1;
    uint64_t buckets = 1;
    while (buckets < c->max_keys) buckets <<= 1;
    memset(g, 0, sizeof *g);
    g->max_keys = c->max_keys;
    g->bucket_mask = buckets - 1;
    g->entry_count = 2 * c->max_keys;
    /* a batch logs each bucket once and each old entry at most twice (link, retire) */
    g->undo_capacity = buckets + 2 * c->max_keys;
    g->arena_bytes = c->arena_bytes;
    g->log_bytes = c->log_bytes;
    g->max_key_bytes = c->max_key_bytes;
    g->max_value_bytes = c->max_value_bytes;
    g->seed = c->seed;
    uint64_t at = align_up(sizeof(header_t), 64);
    g->buckets_at = at;
    at = align_up(at + buckets * sizeof(bucket_t), 64);
    g->entries_at = at;
    at = align_up(at + g->entry_count * sizeof(entry_t), 64);
    g->undo_at = at;
    at = align_up(at + g->undo_capacity * sizeof(undo_t), 64);
    g->arena_at = at;
    at = align_up(at + c->arena_bytes, 64);
    g->log_at = at;
    g->total_size = align_up(at + c->log_bytes, 64);
    return 0;
}

size_t carmp_table_size(const carmp_table_config *config) {
    header_t g;
    return layout(config, &g) < 0 ? 0 : (size_t)g.total_size;
}

static void config_of(const header_t *h, carmp_table_config *c) {
    c->max_keys = h->max_keys;
    c->arena_bytes = h->arena_bytes;
    c->log_bytes = h->log_bytes;
    c->max_key_bytes = h->max_key_bytes;
    c->max_value_bytes = h->max_value_bytes;
    c->seed = h->seed;
}

carmp_status carmp_table_attach(const void *table, size_t size, carmp_table_config *config) {
    const header_t *h = table;
    header_t expected;
    if (size < sizeof(header_t) || h->magic != TABLE_MAGIC || h->layout != TABLE_LAYOUT)
        return CARMP_EINVAL;
    config_of(h, config);
    if (layout(config, &expected) < 0 || expected.total_size > size) return CARMP_EINVAL;
    /* every offset the header holds must be the one its geometry implies */
    if (memcmp(&expected.max_keys, &h->max_keys,
               offsetof(header_t, keys) - offsetof(header_t, max_keys)) != 0)
        return CARMP_EINVAL;
    return CARMP_OK;
}

/* ---- arena allocator (writer only) ---------------------------------------------- */

static unsigned size_class(uint64_t size) {
    if (size < 16 * EXACT_CLASSES) return (unsigned)(size / 16);
    unsigned log2 = 63u - (unsigned)__builtin_clzll(size);
    unsigned sub = (unsigned)(size >> (log2 - 3)) & 7u;
    unsigned c = EXACT_CLASSES + (log2 - 10) * 8 + sub;
    return c < CLASSES ? c : CLASSES - 1;
}

static void class_insert(header_t *h, uint64_t off, uint64_t size) {
    unsigned c = size_class(size);
    uint64_t head = h->class_head[c];
    STORE(word_at(h, off), size);
    STORE(word_at(h, off + size - 8), size);
    STORE(word_at(h, off + 8), head);
    STORE(word_at(h, off + 16), 0);
    if (head) STORE(word_at(h, head + 16), off);
    h->class_head[c] = off;
    h->class_bits[c / 64] |= 1ULL << (c % 64);
}

static void class_remove(header_t *h, uint64_t off, uint64_t size) {
    unsigned c = size_class(size);
    uint64_t next = LOAD(word_at(h, off + 8)), prev = LOAD(word_at(h, off + 16));
    if (prev)
        STORE(word_at(h, prev + 8), next);
    else
        h->class_head[c] = next;
    if (next) STORE(word_at(h, next + 16), prev);
    if (!h->class_head[c]) h->class_bits[c / 64] &= ~(1ULL << (c % 64));
}

/* The first non-empty class >= c, or CLASSES. */
static unsigned class_at_least(const header_t *h, unsigned c) {
    for (unsigned w = c / 64; w < CLASS_WORDS; w++) {
        uint64_t bits = h->class_bits[w];
        if (w == c / 64) bits &= ~0ULL << (c % 64);
        if (bits) return w * 64 + (unsigned)__builtin_ctzll(bits);
    }
    return CLASSES;
}

static void mark_used(header_t *h, uint64_t off, uint64_t size) {
    STORE(word_at(h, off), size | USED);
    STORE(word_at(h, off + size - 8), size | USED);
}

/* A used block of at least `need` bytes (a multiple of 16), or 0 when none is free. */
static uint64_t arena_alloc(header_t *h, uint64_t need) {
    unsigned c = size_class(need);
    uint64_t off = 0, size = 0;
    if (c >= EXACT_CLASSES) { /* a mixed-size class: look at a few of its blocks first */
        uint64_t cand = h->class_head[c];
        for (int i = 0; cand && i < 8; i++, cand = LOAD(word_at(h, cand + 8))) {
            if (LOAD(word_at(h, cand)) >= need) {
                off = cand;
                break;
            }
        }
        c++;
    }
    if (!off) { /* every block of a larger class fits */
        unsigned found = class_at_least(h, c);
        if (found == CLASSES) return 0;
        off = h->class_head[found];
    }
    size = LOAD(word_at(h, off));
    class_remove(h, off, size);
    if (size - need >= MIN_BLOCK) {
        class_insert(h, off + need, size - need);
        size = need;
    }
    mark_used(h, off, size);
    STORE(&h->bytes_used, h->bytes_used + size);
    return off;
}

static void arena_free(header_t *h, uint64_t off) {
    uint64_t size = LOAD(word_at(h, off)) & ~USED;
    uint64_t end = h->arena_at + h->arena_bytes;
    STORE(&h->bytes_used, h->bytes_used - size);
    if (off + size < end) {
        uint64_t right = LOAD(word_at(h, off + size));
        if (!(right & USED)) {
            class_remove(h, off + size, right);
            size += right;
        }
    }
    if (off > h->arena_at) {
        uint64_t left = LOAD(word_at(h, off - 8));
        if (!(left & USED)) {
            class_remove(h, off - left, left);
            off -= left;
            size += left;
        }
    }
    class_insert(h, off, size);
}

static uint64_t block_size(size_t key_len, size_t value_len) {
    uint64_t need = align_up(BLOCK_OVERHEAD + (uint64_t)key_len + value_len, 16);
    return need < MIN_BLOCK ? MIN_BLOCK : need;
}

/* ---- entries ------------------------------------------------------------------------ */

static inline uint64_t index_of(const header_t *h, const entry_t *e) {
    return (uint64_t)(e - entries_of(h));
}

static void entry_free(header_t *h, entry_t *e) {
    if (e->block) arena_free(h, e->block);
    STORE(&e->block, 0);
    STORE(&e->next, h->free_entry);
    h->free_entry = index_of(h, e) + 1;
}

/* The key and value lengths of an entry's block, checked to lie inside the arena: 0 when
 * no writer made such a block (corruption), so readers never follow it out of the table. */
static int block_lengths(const header_t *h, uint64_t block, uint64_t *key_len,
                         uint64_t *value_len) {
    uint64_t arena_end = h->arena_at + h->arena_bytes;
    if (block < h->arena_at || block > arena_end - MIN_BLOCK || block % 16) return 0;
    uint64_t size = LOAD(word_at(h, block)) & ~USED;
    *key_len = LOAD(half_at(h, block + 8));
    *value_len = LOAD(half_at(h, block + 12));
    return size <= arena_end - block && BLOCK_OVERHEAD + *key_len + *value_len <= size;
}

static const char *value_of(const header_t *h, const entry_t *e, uint32_t *length) {
    uint64_t block = e->block;
    uint32_t key_len = LOAD(half_at(h, block + 8));
    *length = LOAD(half_at(h, block + 12));
    return bytes_at(h, block + 16 + key_len);
}

/* ---- reads (lock-free) ---------------------------------------------------------------- */

/* One walk of a chain: 1 found, 0 absent, -1 inconsistent (a writer raced us, or corruption). */
static int lookup_once(const header_t *h, const bucket_t *bucket, uint64_t hash, const void *key,
                       size_t key_len, void *buf, size_t capacity, carmp_table_value *out) {
    const entry_t *entries = entries_of(h);
    uint64_t link = LOAD(&bucket->head);
    for (uint64_t steps = 0; link; steps++) {
        if (link > h->entry_count || steps > h->entry_count) return -1;
        const entry_t *e = &entries[link - 1];
        if (LOAD(&e->hash) == hash) {
            uint64_t block = LOAD(&e->block), klen, vlen;
            if (!block_lengths(h, block, &klen, &vlen)) return -1;
            if (klen == key_len && memcmp(bytes_at(h, block + 16), key, key_len) == 0) {
                out->version = LOAD(&e->version);
                out->expires_ns = LOAD(&e->expires_ns);
                out->length = vlen;
                if (vlen <= capacity && vlen) memcpy(buf, bytes_at(h, block + 16 + klen), vlen);
                return 1;
            }
        }
        link = LOAD(&e->next);
    }
    return 0;
}

/* Wait a little longer for a busy bucket; 0 once the reader should give up. */
static int backoff(unsigned attempt) {
    if (attempt < READ_SPINS) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
        return 1;
    }
    if (attempt < READ_SPINS + READ_YIELDS) {
        sched_yield();
        return 1;
    }
    return 0;
}

carmp_status carmp_table_get(const void *table, const void *key, size_t key_len, void *buf,
                             size_t capacity, carmp_table_value *value) {
    const header_t *h = table;
    if (key_len > h->max_key_bytes) { /* never stored */
        memset(value, 0, sizeof *value);
        return CARMP_OK;
    }
    uint64_t hash = carmp_hash64(key, key_len, h->seed);
    const bucket_t *bucket = &buckets_of(h)[hash & h->bucket_mask];
    for (unsigned attempt = 0;; attempt++) {
        uint64_t seq = __atomic_load_n(&bucket->seq, __ATOMIC_ACQUIRE);
        if (!(seq & 1)) {
            memset(value, 0, sizeof *value);
            int found = lookup_once(h, bucket, hash, key, key_len, buf, capacity, value);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (LOAD(&bucket->seq) == seq) {
                if (found < 0) return CARMP_EINVAL; /* stable yet inconsistent: corrupt */
                return CARMP_OK;
            }
        }
        if (!backoff(attempt)) return CARMP_BUSY;
    }
}

/* ---- the transition ring (writer only, except bounds) ------------------------------- */

static void log_evict_oldest(header_t *h) {
    uint64_t pos = h->log_first_pos, phys = pos % h->log_bytes;
    uint32_t size = LOAD(half_at(h, h->log_at + phys));
    if (size == 0) { /* padding to the end of the ring */
        STORE(&h->log_first_pos, pos + (h->log_bytes - phys));
        return;
    }
    STORE(&h->log_first_pos, pos + size);
    STORE(&h->log_first, h->log_first + 1);
    STORE(&h->log_dropped, h->log_dropped + 1);
}

static void log_drop_all(header_t *h) {
    STORE(&h->log_dropped, h->log_dropped + (h->log_next - h->log_first));
    STORE(&h->log_first, h->log_next);
    STORE(&h->log_first_pos, h->log_next_pos);
}

static void log_append(header_t *h, const void *key, uint32_t key_len, const void *action,
                       uint32_t action_len, const void *old_value, uint32_t old_length,
                       const void *new_value, uint32_t new_length, uint64_t version) {
    uint64_t old_bytes = old_value ? old_length : 0, new_bytes = new_value ? new_length : 0;
    uint64_t payload = (uint64_t)key_len + action_len + old_bytes + new_bytes;
    uint64_t size = align_up(RECORD_HEADER + payload, 8), ring = h->log_bytes;
    if (size > ring) { /* can never be kept: count it, as dropped */
        log_drop_all(h);
        STORE(&h->log_next, h->log_next + 1);
        STORE(&h->log_first, h->log_next);
        STORE(&h->log_dropped, h->log_dropped + 1);
        return;
    }
    uint64_t phys, pad;
    for (;;) {
        phys = h->log_next_pos % ring;
        pad = ring - phys < size ? ring - phys : 0;
        if (h->log_next_pos + pad + size - h->log_first_pos <= ring) break;
        if (h->log_first_pos == h->log_next_pos) { /* empty: start at the next lap */
            STORE(&h->log_next_pos, h->log_next_pos + pad);
            STORE(&h->log_first_pos, h->log_next_pos);
            continue;
        }
        log_evict_oldest(h);
    }
    if (pad) {
        STORE(half_at(h, h->log_at + phys), 0);
        STORE(&h->log_next_pos, h->log_next_pos + pad);
        phys = 0;
    }
    uint64_t at = h->log_at + phys;
    char *p = bytes_at(h, at + RECORD_HEADER);
    memcpy(p, key, key_len);
    memcpy(p + key_len, action, action_len);
    if (old_bytes) memcpy(p + key_len + action_len, old_value, old_bytes);
    if (new_bytes) memcpy(p + key_len + action_len + old_bytes, new_value, new_bytes);
    uint64_t fields[5] = {h->log_next, h->batch_timestamp, version,
                          (uint64_t)key_len | (uint64_t)action_len << 32,
                          (uint64_t)(old_value ? old_length : CARMP_TRANSITION_ABSENT) |
                              (uint64_t)(new_value ? new_length : CARMP_TRANSITION_ABSENT) << 32};
    memcpy(bytes_at(h, at + 8), fields, sizeof fields);
    uint32_t crc = carmp_crc32c(0, bytes_at(h, at + 8), RECORD_HEADER - 8 + payload);
    STORE(half_at(h, at), (uint32_t)size);
    STORE(half_at(h, at + 4), crc);
    STORE(&h->log_next_pos, h->log_next_pos + size);
    STORE(&h->log_next, h->log_next + 1);
}

void carmp_table_log_bounds(const void *table, uint64_t *first, uint64_t *next) {
    const header_t *h = table;
    *first = LOAD(&h->log_first);
    *next = LOAD(&h->log_next);
}

int carmp_table_log_next(const void *table, uint64_t *cursor, carmp_transition *t) {
    const header_t *h = table;
    uint64_t ring = h->log_bytes;
    for (;;) {
        uint64_t pos = *cursor, phys = pos % ring;
        if (pos >= h->log_next_pos) return 0;
        if (h->log_next_pos - pos > ring || pos % 8) return -1; /* no writer left it so */
        uint64_t at = h->log_at + phys;
        uint32_t size = *half_at(h, at);
        if (size == 0) {
            *cursor = pos + (ring - phys);
            continue;
        }
        if (size < RECORD_HEADER || size % 8 || size > ring - phys || pos + size > h->log_next_pos)
            return -1;
        uint64_t fields[5];
        memcpy(fields, bytes_at(h, at + 8), sizeof fields);
        uint32_t key_len = (uint32_t)fields[3], action_len = (uint32_t)(fields[3] >> 32);
        uint32_t old_length = (uint32_t)fields[4], new_length = (uint32_t)(fields[4] >> 32);
        uint64_t old_bytes = old_length == CARMP_TRANSITION_ABSENT ? 0 : old_length;
        uint64_t new_bytes = new_length == CARMP_TRANSITION_ABSENT ? 0 : new_length;
        uint64_t payload = (uint64_t)key_len + action_len + old_bytes + new_bytes;
        if (RECORD_HEADER + payload > size) return -1;
        if (carmp_crc32c(0, bytes_at(h, at + 8), RECORD_HEADER - 8 + payload) != *half_at(h, at + 4))
            return -1;
        const char *p = bytes_at(h, at + RECORD_HEADER);
        t->index = fields[0];
        t->timestamp_ns = fields[1];
        t->version = fields[2];
        t->key = p;
        t->key_len = key_len;
        t->action = p + key_len;
        t->action_len = action_len;
        t->old_value = old_length == CARMP_TRANSITION_ABSENT ? NULL : p + key_len + action_len;
        t->old_length = old_length;
        t->new_value =
            new_length == CARMP_TRANSITION_ABSENT ? NULL : p + key_len + action_len + old_bytes;
        t->new_length = new_length;
        *cursor = pos + size;
        return 1;
    }
}

carmp_status carmp_table_log_seek(const void *table, uint64_t index, uint64_t *cursor) {
    const header_t *h = table;
    if (index < h->log_first || index > h->log_next) return CARMP_EINVAL;
    *cursor = h->log_first_pos;
    carmp_transition t;
    for (uint64_t i = h->log_first; i < index; i++)
        if (carmp_table_log_next(table, cursor, &t) != 1) return CARMP_EINVAL;
    return CARMP_OK;
}

/* ---- batches -------------------------------------------------------------------------- */

static int undo_push(header_t *h, uint64_t what, uint64_t old) {
    if (h->undo_count >= h->undo_capacity) return -1;
    undo_t *u = &undo_of(h)[h->undo_count];
    STORE(&u->what, what);
    STORE(&u->old, old);
    ORDER();
    STORE(&h->undo_count, h->undo_count + 1);
    ORDER();
    return 0;
}

/* First change to a bucket in this batch: log its head and make readers wait. */
static int touch_bucket(header_t *h, bucket_t *b) {
    uint64_t seq = LOAD(&b->seq);
    if (seq & 1) return 0;
    if (undo_push(h, UNDO_BUCKET | (uint64_t)(b - buckets_of(h)), LOAD(&b->head)) < 0) return -1;
    STORE(&b->seq, seq + 1);
    ORDER();
    return 0;
}

/* Point a link (a bucket head, or the next of `owner`) at `value`, logging an old
 * entry's link the first time this batch changes it. */
static int set_link(header_t *h, uint64_t *link, entry_t *owner, uint64_t value) {
    if (owner && (owner->mark >> 1) != h->batch) {
        if (undo_push(h, UNDO_ENTRY | index_of(h, owner), LOAD(link)) < 0) return -1;
        owner->mark = h->batch << 1;
    }
    STORE(link, value);
    return 0;
}

static int is_fresh(const header_t *h, const entry_t *e) { return e->mark == (h->batch << 1 | 1); }

/* An unlinked entry: one made by this batch goes at the next write call (its old value
 * must outlive the call that unlinked it); an older one goes when the batch commits. */
static int retire(header_t *h, entry_t *e) {
    if (is_fresh(h, e)) {
        h->pending_entry = index_of(h, e) + 1;
        return 0;
    }
    return undo_push(h, UNDO_RETIRE | index_of(h, e), 0);
}

static void free_pending(header_t *h) {
    if (h->pending_block) arena_free(h, h->pending_block);
    if (h->pending_entry) entry_free(h, &entries_of(h)[h->pending_entry - 1]);
    h->pending_block = h->pending_entry = 0;
}

carmp_status carmp_table_begin(void *table, uint64_t timestamp_ns) {
    header_t *h = table;
    if (h->state != IDLE) return CARMP_EINVAL;
    uint64_t saved[5] = {h->log_first, h->log_first_pos, h->log_next, h->log_next_pos,
                         h->log_dropped};
    memcpy(h->saved_log, saved, sizeof saved);
    h->batch += 1;
    h->batch_flags = 0;
    h->batch_timestamp = timestamp_ns;
    h->undo_count = 0;
    ORDER();
    STORE(&h->state, OPEN);
    ORDER();
    return CARMP_OK;
}

/* The entry holding `key` in bucket `b`, with the link that points at it and the entry
 * that owns that link (NULL: the bucket head). */
static entry_t *find(header_t *h, bucket_t *b, uint64_t hash, const void *key, size_t key_len,
                     uint64_t **link, entry_t **owner) {
    entry_t *entries = entries_of(h);
    *link = &b->head;
    *owner = NULL;
    while (**link) {
        entry_t *e = &entries[**link - 1];
        if (e->hash == hash && LOAD(half_at(h, e->block + 8)) == key_len &&
            memcmp(bytes_at(h, e->block + 16), key, key_len) == 0)
            return e;
        *link = &e->next;
        *owner = e;
    }
    return NULL;
}

/* The start of a write call: free what the last call left pending, then find `key`. */
static entry_t *locate(header_t *h, const void *key, size_t key_len, uint64_t *hash,
                       bucket_t **b, uint64_t **link, entry_t **owner) {
    free_pending(h);
    *hash = carmp_hash64(key, key_len, h->seed);
    *b = &buckets_of(h)[*hash & h->bucket_mask];
    return find(h, *b, *hash, key, key_len, link, owner);
}

static void describe_old(const header_t *h, const entry_t *e, carmp_table_change *change) {
    if (!e) return;
    uint32_t length;
    change->old_version = e->version;
    change->old_value = value_of(h, e, &length);
    change->old_length = length;
}

/* A block holding key and value, or 0 when the arena has no room. */
static uint64_t store_block(header_t *h, const void *key, size_t key_len, const void *value,
                            size_t value_len) {
    uint64_t block = arena_alloc(h, block_size(key_len, value_len));
    if (!block) return 0;
    STORE(half_at(h, block + 8), (uint32_t)key_len);
    STORE(half_at(h, block + 12), (uint32_t)value_len);
    memcpy(bytes_at(h, block + 16), key, key_len);
    if (value_len) memcpy(bytes_at(h, block + 16 + key_len), value, value_len);
    return block;
}

static int logged(unsigned flags) { return !(flags & CARMP_TABLE_UNLOGGED); }

carmp_status carmp_table_put(void *table, const void *key, size_t key_len, const void *value,
                             size_t value_len, uint64_t expires_ns, const void *action,
                             size_t action_len, unsigned flags, carmp_table_change *change) {
    header_t *h = table;
    memset(change, 0, sizeof *change);
    if (h->state != OPEN || key_len > h->max_key_bytes || value_len > h->max_value_bytes ||
        action_len > UINT32_MAX / 2 || (logged(flags) && h->batch_flags & LOG_TRUNCATED))
        return CARMP_EINVAL;
    uint64_t hash, *link;
    bucket_t *b;
    entry_t *owner, *old = locate(h, key, key_len, &hash, &b, &link, &owner);
    if (!old && h->keys >= h->max_keys) {
        change->full = CARMP_TABLE_FULL_KEYS;
        return CARMP_FULL;
    }
    if (!old) { /* a new key goes in at the head of its chain */
        link = &b->head;
        owner = NULL;
    }
    uint64_t block = store_block(h, key, key_len, value, value_len);
    if (!block) {
        change->full = CARMP_TABLE_FULL_BYTES;
        return CARMP_FULL;
    }
    describe_old(h, old, change);
    entry_t *e;
    if (old && is_fresh(h, old)) { /* made by this batch, so unseen: replace in place */
        e = old;
        h->pending_block = e->block;
        STORE(&e->block, block);
    } else {
        /* Half the pool is spare for entries a batch retires, so there is always one. */
        e = &entries_of(h)[h->free_entry - 1];
        h->free_entry = e->next;
        STORE(&e->hash, hash);
        STORE(&e->block, block);
        STORE(&e->next, old ? old->next : LOAD(&b->head));
        e->mark = h->batch << 1 | 1;
        ORDER();
        if (touch_bucket(h, b) < 0 || set_link(h, link, owner, index_of(h, e) + 1) < 0 ||
            (old && retire(h, old) < 0))
            return CARMP_EINVAL; /* the undo log is sized so that this cannot happen */
        if (!old) STORE(&h->keys, h->keys + 1);
    }
    STORE(&e->version, ++h->next_version);
    STORE(&e->expires_ns, expires_ns);
    change->new_version = e->version;
    if (logged(flags))
        log_append(h, key, (uint32_t)key_len, action, (uint32_t)action_len, change->old_value,
                   (uint32_t)change->old_length, value, (uint32_t)value_len, e->version);
    return CARMP_OK;
}

carmp_status carmp_table_remove(void *table, const void *key, size_t key_len, const void *action,
                                size_t action_len, unsigned flags, carmp_table_change *change) {
    header_t *h = table;
    memset(change, 0, sizeof *change);
    if (h->state != OPEN || key_len > h->max_key_bytes || action_len > UINT32_MAX / 2 ||
        (logged(flags) && h->batch_flags & LOG_TRUNCATED))
        return CARMP_EINVAL;
    uint64_t hash, *link;
    bucket_t *b;
    entry_t *owner, *old = locate(h, key, key_len, &hash, &b, &link, &owner);
    if (!old) return CARMP_OK;
    if (touch_bucket(h, b) < 0 || set_link(h, link, owner, old->next) < 0 || retire(h, old) < 0)
        return CARMP_EINVAL;
    STORE(&h->keys, h->keys - 1);
    describe_old(h, old, change);
    if (logged(flags))
        log_append(h, key, (uint32_t)key_len, action, (uint32_t)action_len, change->old_value,
                   (uint32_t)change->old_length, NULL, 0, 0);
    return CARMP_OK;
}

carmp_status carmp_table_clear(void *table) {
    header_t *h = table;
    if (h->state != OPEN) return CARMP_EINVAL;
    free_pending(h);
    entry_t *entries = entries_of(h);
    for (uint64_t i = 0; i <= h->bucket_mask; i++) {
        bucket_t *b = &buckets_of(h)[i];
        if (!b->head) continue;
        if (touch_bucket(h, b) < 0) return CARMP_EINVAL;
        for (uint64_t link = b->head; link;) {
            entry_t *e = &entries[link - 1];
            link = e->next;
            if (is_fresh(h, e))
                entry_free(h, e);
            else if (retire(h, e) < 0)
                return CARMP_EINVAL;
        }
        STORE(&b->head, 0);
    }
    STORE(&h->keys, 0);
    return CARMP_OK;
}

carmp_status carmp_table_truncate_log(void *table, uint64_t count) {
    header_t *h = table;
    if (h->state != OPEN || count > h->log_next) return CARMP_EINVAL;
    if (count >= h->log_first) {
        uint64_t cursor;
        if (carmp_table_log_seek(table, count, &cursor) != CARMP_OK) return CARMP_EINVAL;
        STORE(&h->log_next_pos, cursor);
    } else {
        STORE(&h->log_first, count);
        STORE(&h->log_first_pos, h->log_next_pos);
    }
    STORE(&h->log_next, count);
    h->batch_flags |= LOG_TRUNCATED;
    return CARMP_OK;
}

/* Make every bucket the batch touched even again: readers may look. */
static void publish_buckets(header_t *h) {
    const undo_t *undo = undo_of(h);
    for (uint64_t i = 0; i < h->undo_count; i++) {
        if ((undo[i].what & UNDO_KIND) != UNDO_BUCKET) continue;
        bucket_t *b = &buckets_of(h)[undo[i].what & ~UNDO_KIND];
        uint64_t seq = LOAD(&b->seq);
        if (seq & 1) __atomic_store_n(&b->seq, seq + 1, __ATOMIC_RELEASE);
    }
}

static void finish(header_t *h) {
    ORDER();
    h->undo_count = 0;
    h->pending_block = h->pending_entry = 0;
    ORDER();
    STORE(&h->state, IDLE);
}

carmp_status carmp_table_commit(void *table) {
    header_t *h = table;
    if (h->state != OPEN) return CARMP_EINVAL;
    free_pending(h);
    ORDER();
    STORE(&h->state, COMMITTED); /* from here a dead writer's batch is finished, not undone */
    ORDER();
    publish_buckets(h);
    const undo_t *undo = undo_of(h);
    for (uint64_t i = 0; i < h->undo_count; i++)
        if ((undo[i].what & UNDO_KIND) == UNDO_RETIRE)
            entry_free(h, &entries_of(h)[undo[i].what & ~UNDO_KIND]);
    STORE(&h->commits, h->commits + 1);
    finish(h);
    return CARMP_OK;
}

static uint64_t log_skip_padding(const header_t *h, uint64_t pos) {
    uint64_t phys = pos % h->log_bytes;
    return *half_at(h, h->log_at + phys) == 0 ? pos + (h->log_bytes - phys) : pos;
}

/* Put the ring back as it was at begin, except that records evicted to make room stay
 * evicted (their bytes may hold this batch's records now). A writer killed inside an
 * eviction may have moved the first position but not the first index, so the index is
 * read back from the first record that survives. */
static void restore_log(header_t *h) {
    uint64_t first = h->saved_log[0], first_pos = h->saved_log[1];
    uint64_t next = h->saved_log[2], next_pos = h->saved_log[3], dropped = h->saved_log[4];
    uint64_t evicted_to = h->log_first_pos;
    STORE(&h->log_next, next);
    STORE(&h->log_next_pos, next_pos);
    if (!(h->batch_flags & LOG_TRUNCATED) && evicted_to != first_pos) {
        uint64_t survivor = evicted_to < next_pos ? log_skip_padding(h, evicted_to) : next_pos;
        uint64_t cursor = survivor;
        carmp_transition t;
        if (survivor < next_pos && carmp_table_log_next(h, &cursor, &t) == 1 && t.index >= first &&
            t.index < next) {
            first_pos = survivor;
        } else {
            t.index = next;
            first_pos = next_pos;
        }
        dropped += t.index - first;
        first = t.index;
    }
    STORE(&h->log_first, first);
    STORE(&h->log_first_pos, first_pos);
    STORE(&h->log_dropped, dropped);
}

static int cmp_u64_pair(const void *a, const void *b) {
    uint64_t x = ((const uint64_t *)a)[0], y = ((const uint64_t *)b)[0];
    return x < y ? -1 : x > y;
}

/* Rebuild the allocator, the free entry list and the counters from what the chains
 * reach. -1 when the chains are corrupt, -2 when out of memory. */
static int rebuild(header_t *h) {
    entry_t *entries = entries_of(h);
    uint64_t arena_end = h->arena_at + h->arena_bytes;
    unsigned char *reached = calloc(h->entry_count / 8 + 1, 1);
    uint64_t *blocks = malloc(2 * sizeof(uint64_t) * (h->max_keys + 1));
    int rc = -2;
    if (!reached || !blocks) goto out;
    rc = -1;
    uint64_t keys = 0, used = 0;
    for (uint64_t i = 0; i <= h->bucket_mask; i++) {
        for (uint64_t link = buckets_of(h)[i].head; link; link = entries[link - 1].next) {
            uint64_t idx = link - 1;
            if (idx >= h->entry_count || reached[idx / 8] & (1u << idx % 8) || keys >= h->max_keys)
                goto out;
            reached[idx / 8] |= (unsigned char)(1u << idx % 8);
            uint64_t block = entries[idx].block;
            if (block < h->arena_at || block > arena_end - MIN_BLOCK || block % 16) goto out;
            uint64_t size = LOAD(word_at(h, block)) & ~USED;
            if (size < MIN_BLOCK || size % 16 || size > arena_end - block) goto out;
            blocks[2 * keys] = block;
            blocks[2 * keys + 1] = size;
            keys++;
            used += size;
        }
    }
    qsort(blocks, keys, 2 * sizeof(uint64_t), cmp_u64_pair);
    memset(h->class_bits, 0, sizeof h->class_bits);
    memset(h->class_head, 0, sizeof h->class_head);
    uint64_t at = h->arena_at;
    for (uint64_t k = 0; k <= keys; k++) {
        uint64_t start = k < keys ? blocks[2 * k] : arena_end;
        if (start < at) goto out; /* two entries share bytes */
        if (start - at >= MIN_BLOCK)
            class_insert(h, at, start - at);
        else if (start > at)
            goto out; /* a sliver no block could have left */
        if (k == keys) break;
        mark_used(h, start, blocks[2 * k + 1]);
        at = start + blocks[2 * k + 1];
    }
    h->free_entry = 0;
    for (uint64_t i = h->entry_count; i-- > 0;) {
        if (reached[i / 8] & (1u << i % 8)) continue;
        STORE(&entries[i].block, 0);
        STORE(&entries[i].next, h->free_entry);
        h->free_entry = i + 1;
    }
    STORE(&h->keys, keys);
    STORE(&h->bytes_used, used);
    rc = 0;
out:
    free(reached);
    free(blocks);
    return rc;
}

/* Undo (before the commit mark) or finish (after it) the batch in progress. */
static carmp_status settle(header_t *h) {
    undo_t *undo = undo_of(h);
    uint64_t count = h->undo_count <= h->undo_capacity ? h->undo_count : 0;
    if (h->state == OPEN) {
        for (uint64_t i = 0; i < count; i++) { /* readers of these buckets must wait */
            if ((undo[i].what & UNDO_KIND) != UNDO_BUCKET) continue;
            bucket_t *b = &buckets_of(h)[(undo[i].what & ~UNDO_KIND) & h->bucket_mask];
            if (!(b->seq & 1)) STORE(&b->seq, b->seq + 1);
        }
        ORDER();
        for (uint64_t i = count; i-- > 0;) {
            uint64_t kind = undo[i].what & UNDO_KIND, idx = undo[i].what & ~UNDO_KIND;
            if (kind == UNDO_BUCKET)
                STORE(&buckets_of(h)[idx & h->bucket_mask].head, undo[i].old);
            else if (kind == UNDO_ENTRY && idx < h->entry_count)
                STORE(&entries_of(h)[idx].next, undo[i].old);
        }
        restore_log(h);
    }
    h->undo_count = count;
    int rc = rebuild(h);
    publish_buckets(h);
    finish(h);
    if (rc == -2) return CARMP_ERRNO;
    return rc < 0 ? CARMP_EINVAL : CARMP_OK;
}

carmp_status carmp_table_abort(void *table) {
    header_t *h = table;
    if (h->state != OPEN) return CARMP_EINVAL;
    return settle(h);
}

carmp_status carmp_table_recover(void *table, int *repaired) {
    header_t *h = table;
    *repaired = h->state != IDLE;
    if (!*repaired) return CARMP_OK;
    STORE(&h->recoveries, h->recoveries + 1);
    return settle(h);
}

/* ---- whole-table reads ------------------------------------------------------------------- */

int carmp_table_next(const void *table, uint64_t *cursor, carmp_table_item *item) {
    const header_t *h = table;
    const entry_t *entries = entries_of(h);
    for (; *cursor < h->entry_count; (*cursor)++) {
        const entry_t *e = &entries[*cursor];
        uint64_t block = e->block, key_len, value_len;
        if (!block) continue;
        (*cursor)++;
        if (!block_lengths(h, block, &key_len, &value_len)) return -1;
        item->key = bytes_at(h, block + 16);
        item->key_len = key_len;
        item->value = bytes_at(h, block + 16 + key_len);
        item->value_len = value_len;
        item->version = e->version;
        item->expires_ns = e->expires_ns;
        return 1;
    }
    return 0;
}

void carmp_table_stats(const void *table, carmp_table_statistics *s) {
    const header_t *h = table;
    s->keys = LOAD(&h->keys);
    s->max_keys = h->max_keys;
    s->bytes_used = LOAD(&h->bytes_used);
    s->arena_bytes = h->arena_bytes;
    s->log_first = LOAD(&h->log_first);
    s->log_next = LOAD(&h->log_next);
    s->log_dropped = LOAD(&h->log_dropped);
    s->log_bytes = h->log_bytes;
    s->commits = LOAD(&h->commits);
    s->recoveries = LOAD(&h->recoveries);
}

carmp_status carmp_table_init(void *table, size_t size, const carmp_table_config *config) {
    header_t *h = table;
    header_t g;
    if (layout(config, &g) < 0 || g.total_size > size) return CARMP_EINVAL;
    /* only the index must start zeroed: the undo area, arena and transition ring are read
     * only where the header's counts and block tags say something was written (a fresh
     * segment's pages then stay untouched until used) */
    memset(table, 0, (size_t)g.undo_at);
    *h = g;
    h->magic = TABLE_MAGIC;
    h->layout = TABLE_LAYOUT;
    class_insert(h, h->arena_at, h->arena_bytes);
    entry_t *entries = entries_of(h);
    for (uint64_t i = h->entry_count; i-- > 0;) {
        entries[i].next = h->free_entry;
        h->free_entry = i + 1;
    }
    return CARMP_OK;
}

/* ---- audit --------------------------------------------------------------------------- */

int carmp_table_check(const void *table) {
    const header_t *h = table;
    const entry_t *entries = entries_of(h);
    if (h->state != IDLE || h->undo_count) return -1;
    uint64_t keys = 0, used = 0, used_blocks = 0, free_blocks = 0;
    for (uint64_t i = 0; i <= h->bucket_mask; i++) {
        const bucket_t *b = &buckets_of(h)[i];
        if (b->seq & 1) return -2;
        for (uint64_t link = b->head; link; link = entries[link - 1].next) {
            if (link > h->entry_count || ++keys > h->max_keys) return -3;
            const entry_t *e = &entries[link - 1];
            if ((e->hash & h->bucket_mask) != i || !e->block || !e->version) return -4;
            uint64_t tag = *word_at(h, e->block), size = tag & ~USED;
            uint32_t klen = *half_at(h, e->block + 8), vlen = *half_at(h, e->block + 12);
            if (!(tag & USED) || BLOCK_OVERHEAD + (uint64_t)klen + vlen > size) return -5;
            if (carmp_hash64(bytes_at(h, e->block + 16), klen, h->seed) != e->hash) return -6;
        }
    }
    uint64_t live = 0;
    for (uint64_t i = 0; i < h->entry_count; i++) live += entries[i].block != 0;
    if (keys != h->keys || live != keys) return -7;
    uint64_t end = h->arena_at + h->arena_bytes, at = h->arena_at;
    int previous_free = 0;
    while (at < end) { /* the blocks tile the arena; no two free ones touch */
        uint64_t tag = *word_at(h, at), size = tag & ~USED;
        if (size < MIN_BLOCK || size % 16 || size > end - at || *word_at(h, at + size - 8) != tag)
            return -8;
        if (tag & USED) {
            used += size;
            used_blocks++;
            previous_free = 0;
        } else {
            if (previous_free) return -9;
            free_blocks++;
            previous_free = 1;
        }
        at += size;
    }
    if (used != h->bytes_used || used_blocks != keys) return -10;
    uint64_t listed = 0;
    for (unsigned c = 0; c < CLASSES; c++) {
        int bit = (h->class_bits[c / 64] >> (c % 64)) & 1;
        if (bit != (h->class_head[c] != 0)) return -11;
        uint64_t prev = 0;
        for (uint64_t off = h->class_head[c]; off; off = *word_at(h, off + 8)) {
            uint64_t tag = *word_at(h, off);
            if (tag & USED || size_class(tag) != c || *word_at(h, off + 16) != prev) return -12;
            if (++listed > free_blocks) return -12;
            prev = off;
        }
    }
    if (listed != free_blocks) return -13;
    uint64_t spare = 0;
    for (uint64_t link = h->free_entry; link; link = entries[link - 1].next)
        if (link > h->entry_count || entries[link - 1].block || ++spare > h->entry_count)
            return -14;
    if (spare != h->entry_count - keys) return -14;
    uint64_t cursor = h->log_first_pos, seen = 0;
    carmp_transition t;
    int rc;
    while ((rc = carmp_table_log_next(table, &cursor, &t)) == 1)
        if (t.index != h->log_first + seen++) return -15;
    if (rc < 0 || seen != h->log_next - h->log_first) return -15;
    return 0;
}
