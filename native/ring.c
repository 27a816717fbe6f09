/* The event ring: a multi-writer, multi-reader ring of variable-length records in
 * caller-owned shared memory. The contract is in the "event ring" section of
 * carmp_native.h; this file is the mechanism.
 *
 * Writing a record takes four steps, and a writer may die after any of them:
 *   reserve  one 16-byte CAS takes (next_seq, next_pos): a sequence number and the
 *            bytes for the payload, so positions grow with sequence numbers;
 *   claim    the record's descriptor (slot seq % slots) gets its position, then a CAS
 *            marks it WRITING with the writer's pid;
 *   copy     the payload goes into the data area;
 *   commit   length and CRC32C are stored and a CAS marks the descriptor COMMITTED.
 * Readers read a descriptor, copy the bytes, then check that neither the descriptor
 * nor the bytes were reused meanwhile (the frontier has not lapped them) and that the
 * CRC matches. A reservation that never commits is a hole: carmp_ring_resolve marks
 * it ABANDONED (CAS) once its writer is dead or has stalled past the caller's bound,
 * and a writer that finds its record abandoned gets CARMP_TIMEOUT and appends again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "carmp_native.h"

#define RING_MAGIC 0x474E52504D524143ULL /* "CARMPRNG" little-endian */
#define RING_VERSION 1
#define NO_CURSOR UINT64_MAX
#define RING_SPIN_NS 2000   /* a reader polls this long before yielding the CPU ... */
#define RING_POLL_NS 30000  /* ... and this long in all before it sleeps on the futex */

/* Descriptor status word: low 32 bits of the record's sequence number, a state, the
 * writer's pid. One CAS changes the three together. */
#define PID_BITS 29
#define PID_MASK ((1u << PID_BITS) - 1)
enum { STATE_FREE = 0, STATE_WRITING = 1, STATE_COMMITTED = 2, STATE_ABANDONED = 3 };

typedef struct ring_header {
    /* 0: geometry, written once by init (the handle keeps its own copy) */
    uint64_t magic, version, capacity, slots, readers, max_record, first_seq, reserved0;
    /* 64: the frontier, one 16-byte unit for the CAS: next sequence number, next byte */
    uint64_t next_seq, next_pos, pad1[6];
    /* 128: readers asleep waiting for commits; commits bump the futex word when any are */
    uint64_t read_sleepers, commit_futex, pad2[6];
    /* 192: backpressure (writers asleep, their futex, the cached slowest cursor), counters */
    uint64_t write_sleepers, space_futex, readers_registered, bound_seq, bound_pos;
    uint64_t abandoned, full_waits, readers_reaped;
} ring_header;

typedef struct ring_descriptor {
    uint64_t status;       /* seq low 32 bits << 32 | state << PID_BITS | pid */
    uint64_t pos;          /* byte position of the payload, stored before the claim */
    uint64_t len_crc;      /* payload length | CRC32C << 32, stored before the commit */
    uint64_t timestamp_ns; /* claim time while writing; the event's time once committed */
} ring_descriptor;

typedef struct ring_reader {
    uint64_t owner_pid; /* 0 = free */
    uint64_t next_seq;  /* the next record it will read; NO_CURSOR until published */
    uint64_t next_pos;  /* no unread record starts below this byte */
    uint64_t pad[5];
} ring_reader;

typedef struct frontier {
    uint64_t seq, pos;
} frontier;

typedef struct __attribute__((aligned(16))) pair16 {
    uint64_t word[2];
} pair16;

_Static_assert(sizeof(ring_header) == CARMP_RING_HEADER_SIZE, "ring header size");
_Static_assert(sizeof(ring_descriptor) == CARMP_RING_DESCRIPTOR_SIZE, "descriptor size");
_Static_assert(sizeof(ring_reader) == CARMP_RING_READER_SIZE, "reader slot size");
_Static_assert(offsetof(ring_header, next_seq) % 16 == 0, "the frontier must be 16-aligned");
_Static_assert(offsetof(ring_header, next_pos) == offsetof(ring_header, next_seq) + 8,
               "the frontier is one 16-byte unit");

/* ---- small helpers ------------------------------------------------------------ */

static inline uint64_t load(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}
static inline uint64_t load_relaxed(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_RELAXED);
}
static inline void store(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}
static inline void store_relaxed(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_RELAXED);
}
static inline int cas(uint64_t *word, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(word, expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
/* The futex is the low half of a 64-bit word (little-endian). */
static inline uint32_t *futex_of(uint64_t *word) { return (uint32_t *)word; }

static uint64_t clock_ns(clockid_t clock) {
    struct timespec now;
    clock_gettime(clock, &now);
    return (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
}

static inline uint64_t make_status(uint64_t seq, unsigned state, uint32_t pid) {
    return ((seq & 0xffffffffULL) << 32) | ((uint64_t)state << PID_BITS) | (pid & PID_MASK);
}
static inline unsigned status_state(uint64_t status) { return (status >> PID_BITS) & 7u; }
static inline uint32_t status_pid(uint64_t status) { return (uint32_t)(status & PID_MASK); }
/* > 0: the descriptor holds a later record than seq; 0: seq's; < 0: an earlier one. */
static inline int32_t status_lap(uint64_t status, uint64_t seq) {
    return (int32_t)((uint32_t)(status >> 32) - (uint32_t)seq);
}
/* Claimed by its writer: the descriptor's position is seq's. */
static inline int claimed(uint64_t status, uint64_t seq) {
    return status_lap(status, seq) == 0 && status_pid(status) != 0;
}

static inline int power_of_two(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }
static inline uint64_t aligned8(uint64_t n) { return (n + 7) & ~7ULL; }

static inline ring_header *header_of(const carmp_ring *r) { return (ring_header *)r->base; }
static inline ring_descriptor *descriptor_of(const carmp_ring *r, uint64_t seq) {
    return (ring_descriptor *)(r->base + CARMP_RING_HEADER_SIZE) + (seq & (r->slots - 1));
}
static inline ring_reader *reader_of(const carmp_ring *r, uint32_t slot) {
    return (ring_reader *)(r->base + CARMP_RING_HEADER_SIZE +
                           r->slots * CARMP_RING_DESCRIPTOR_SIZE) + slot;
}
static inline char *data_of(const carmp_ring *r) {
    return r->base + CARMP_RING_HEADER_SIZE + r->slots * CARMP_RING_DESCRIPTOR_SIZE +
           (uint64_t)r->readers * CARMP_RING_READER_SIZE;
}

/* Alive, and not a zombie: a killed process stays a zombie until its parent reaps it. */
static int pid_alive(uint64_t pid) {
    if (pid == 0 || pid > PID_MASK) return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return 0;
    char path[32], stat[512];
    snprintf(path, sizeof path, "/proc/%u/stat", (unsigned)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno != ENOENT;
    ssize_t n = read(fd, stat, sizeof stat - 1);
    close(fd);
    if (n <= 0) return 1;
    stat[n] = '\0';
    const char *paren = strrchr(stat, ')'); /* the command name may hold ')' too */
    if (paren == NULL || paren[1] != ' ') return 1;
    return paren[2] != 'Z' && paren[2] != 'X';
}

/* ---- the frontier: (next_seq, next_pos) read and swapped as one unit -------------- */

static inline int frontier_cas(ring_header *h, frontier *expected, frontier desired) {
#if defined(__x86_64__)
    unsigned char swapped;
    __asm__ __volatile__("lock cmpxchg16b %1\n\tsete %0"
                         : "=q"(swapped), "+m"(*(volatile pair16 *)&h->next_seq),
                           "+a"(expected->seq), "+d"(expected->pos)
                         : "b"(desired.seq), "c"(desired.pos)
                         : "memory", "cc");
    return swapped;
#elif defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16)
    unsigned __int128 old = ((unsigned __int128)expected->pos << 64) | expected->seq;
    unsigned __int128 new = ((unsigned __int128)desired.pos << 64) | desired.seq;
    unsigned __int128 seen = __sync_val_compare_and_swap((unsigned __int128 *)&h->next_seq, old, new);
    expected->seq = (uint64_t)seen;
    expected->pos = (uint64_t)(seen >> 64);
    return seen == old;
#else
#error "carmp's event ring needs a lock-free 16-byte compare-and-swap (x86-64, or GCC's __sync on 16 bytes)"
#endif
}

/* A consistent snapshot: every swap increments next_seq, so an unchanged next_seq
 * around the read of next_pos means no swap came between. */
static frontier frontier_load(const ring_header *h) {
    for (;;) {
        uint64_t seq = load(&h->next_seq);
        uint64_t pos = load(&h->next_pos);
        if (load(&h->next_seq) == seq) return (frontier){seq, pos};
    }
}

/* ---- geometry ---------------------------------------------------------------------- */

size_t carmp_ring_size(uint64_t capacity, uint64_t slots, uint32_t readers) {
    if (!power_of_two(capacity) || capacity < 64 || capacity > CARMP_RING_MAX_CAPACITY ||
        !power_of_two(slots) || slots < 2 || slots > CARMP_RING_MAX_SLOTS ||
        readers > CARMP_RING_MAX_READERS)
        return 0;
    return CARMP_RING_HEADER_SIZE + slots * CARMP_RING_DESCRIPTOR_SIZE +
           (uint64_t)readers * CARMP_RING_READER_SIZE + capacity;
}

static int geometry_ok(uint64_t capacity, uint64_t slots, uint64_t readers, uint64_t max_record,
                       uint64_t first_seq, size_t mem_size) {
    if (readers > CARMP_RING_MAX_READERS) return 0;
    size_t need = carmp_ring_size(capacity, slots, (uint32_t)readers);
    return need != 0 && need <= mem_size && max_record >= 1 && max_record <= capacity / 4 &&
           max_record <= UINT32_MAX && first_seq < (1ULL << 62);
}

static void fill_handle(carmp_ring *ring, void *mem, uint64_t capacity, uint64_t slots,
                        uint64_t readers, uint64_t max_record, uint64_t first_seq) {
    ring->base = mem;
    ring->capacity = capacity;
    ring->slots = slots;
    ring->readers = (uint32_t)readers;
    ring->max_record = (uint32_t)max_record;
    ring->first_seq = first_seq;
}

carmp_status carmp_ring_init(carmp_ring *ring, void *mem, size_t mem_size, uint64_t capacity,
                             uint64_t slots, uint32_t readers, uint32_t max_record,
                             uint64_t first_seq) {
    if (mem == NULL || (uintptr_t)mem % 64 != 0 ||
        !geometry_ok(capacity, slots, readers, max_record, first_seq, mem_size))
        return CARMP_EINVAL;
    memset(mem, 0, carmp_ring_size(capacity, slots, readers));
    fill_handle(ring, mem, capacity, slots, readers, max_record, first_seq);
    ring_header *h = header_of(ring);
    *h = (ring_header){.magic = RING_MAGIC, .version = RING_VERSION, .capacity = capacity,
                       .slots = slots, .readers = readers, .max_record = max_record,
                       .first_seq = first_seq, .next_seq = first_seq};
    /* Each descriptor starts out holding the record one lap before the first that will
     * use it, so it reads as "not claimed yet". */
    for (uint64_t i = 0; i < slots; i++) {
        uint64_t first_user = first_seq + ((i - first_seq) & (slots - 1));
        descriptor_of(ring, first_user)->status = make_status(first_user - slots, STATE_FREE, 0);
    }
    for (uint32_t i = 0; i < readers; i++) reader_of(ring, i)->next_seq = NO_CURSOR;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return CARMP_OK;
}

carmp_status carmp_ring_attach(carmp_ring *ring, void *mem, size_t mem_size) {
    if (mem == NULL || (uintptr_t)mem % 64 != 0 || mem_size < CARMP_RING_HEADER_SIZE)
        return CARMP_EINVAL;
    const ring_header *h = mem;
    if (load(&h->magic) != RING_MAGIC || load(&h->version) != RING_VERSION) return CARMP_EINVAL;
    uint64_t capacity = load(&h->capacity), slots = load(&h->slots), readers = load(&h->readers),
             max_record = load(&h->max_record), first_seq = load(&h->first_seq);
    if (!geometry_ok(capacity, slots, readers, max_record, first_seq, mem_size))
        return CARMP_EINVAL;
    fill_handle(ring, mem, capacity, slots, readers, max_record, first_seq);
    return CARMP_OK;
}

/* ---- where records start --------------------------------------------------------- */

/* The byte position of record seq if its writer claimed it, else of the first claimed
 * record after it, else the frontier's; for a record whose descriptor was reused, the
 * oldest position the data area can still hold. Positions grow with seq. */
static uint64_t position_from(const carmp_ring *r, uint64_t seq, frontier cur) {
    if (seq < cur.seq && cur.seq - seq > r->slots)
        return cur.pos > r->capacity ? cur.pos - r->capacity : 0;
    for (uint64_t s = seq; s < cur.seq; s++) {
        ring_descriptor *d = descriptor_of(r, s);
        if (claimed(load(&d->status), s)) return load_relaxed(&d->pos);
    }
    return cur.pos;
}

/* The oldest sequence number whose descriptor and bytes are both still in the ring. */
static uint64_t oldest_readable(const carmp_ring *r, frontier cur) {
    uint64_t lo = r->first_seq;
    if (cur.seq > lo && cur.seq - lo > r->slots) lo = cur.seq - r->slots;
    if (cur.pos <= r->capacity || cur.seq <= lo) return lo;
    uint64_t limit = cur.pos - r->capacity, hi = cur.seq;
    while (lo < hi) { /* the first record starting at or after limit */
        uint64_t mid = lo + (hi - lo) / 2;
        if (position_from(r, mid, cur) >= limit)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

/* ---- backpressure bookkeeping -------------------------------------------------------- */

/* The slowest registered cursor and the lowest byte an unread record may start at;
 * returns 0 when no reader is registered. Caches them for the writers' fast check. */
static int refresh_bound(const carmp_ring *r, frontier cur, uint64_t *bound_seq,
                         uint64_t *bound_pos) {
    ring_header *h = header_of(r);
    uint64_t slowest = NO_CURSOR, lowest = cur.pos;
    for (uint32_t i = 0; i < r->readers; i++) {
        ring_reader *rd = reader_of(r, i);
        if (load(&rd->owner_pid) == 0) continue;
        uint64_t next = load(&rd->next_seq);
        if (next == NO_CURSOR) continue;
        uint64_t pos = load(&rd->next_pos);
        if (next < slowest) slowest = next;
        if (next < cur.seq && pos < lowest) lowest = pos;
    }
    if (slowest == NO_CURSOR) return 0;
    *bound_seq = slowest;
    *bound_pos = lowest;
    store(&h->bound_seq, slowest);
    store(&h->bound_pos, lowest);
    return 1;
}

/* Room for record `seq` ending at byte `end`: its descriptor slot and its bytes hold
 * nothing a registered reader still needs. */
static int room_within(const carmp_ring *r, uint64_t seq, uint64_t end, uint64_t bound_seq,
                       uint64_t bound_pos) {
    return seq < bound_seq + r->slots && end <= bound_pos + r->capacity;
}

static int has_room(const carmp_ring *r, frontier cur, uint64_t end) {
    ring_header *h = header_of(r);
    if (load_relaxed(&h->readers_registered) == 0) return 1;
    uint64_t bound_seq = load_relaxed(&h->bound_seq), bound_pos = load_relaxed(&h->bound_pos);
    if (room_within(r, cur.seq, end, bound_seq, bound_pos)) return 1;
    if (!refresh_bound(r, cur, &bound_seq, &bound_pos)) return 1;
    return room_within(r, cur.seq, end, bound_seq, bound_pos);
}

static void release_reader(const carmp_ring *r, ring_reader *rd, uint64_t owner) {
    ring_header *h = header_of(r);
    store(&rd->next_seq, NO_CURSOR);
    if (cas(&rd->owner_pid, &owner, 0)) __atomic_fetch_sub(&h->readers_registered, 1, __ATOMIC_SEQ_CST);
}

/* Free the cursors of readers whose process is gone, so they hold nobody up. */
static void reap_dead_readers(const carmp_ring *r) {
    ring_header *h = header_of(r);
    for (uint32_t i = 0; i < r->readers; i++) {
        ring_reader *rd = reader_of(r, i);
        uint64_t owner = load(&rd->owner_pid);
        if (owner == 0 || pid_alive(owner)) continue;
        release_reader(r, rd, owner);
        __atomic_fetch_add(&h->readers_reaped, 1, __ATOMIC_SEQ_CST);
    }
}

static void wake_word(uint64_t *futex, const uint64_t *sleepers) {
    if (load(sleepers) == 0) return;
    __atomic_fetch_add(futex, 1, __ATOMIC_SEQ_CST);
    carmp_wake(futex_of(futex), -1);
}

/* ---- writers ---------------------------------------------------------------------- */

static carmp_status try_reserve(const carmp_ring *r, uint32_t len, carmp_ring_reservation *out) {
    ring_header *h = header_of(r);
    uint64_t size = aligned8(len);
    frontier cur = {load_relaxed(&h->next_seq), load_relaxed(&h->next_pos)};
    for (;;) {
        uint64_t start = cur.pos, offset = start & (r->capacity - 1);
        if (offset + size > r->capacity) start += r->capacity - offset; /* never split a record */
        uint64_t end = start + size;
        if (!has_room(r, cur, end)) return CARMP_FULL;
        if (frontier_cas(h, &cur, (frontier){cur.seq + 1, end})) {
            out->seq = cur.seq;
            out->pos = start;
            out->len = len;
            return CARMP_OK;
        }
    }
}

static carmp_status wait_for_room(const carmp_ring *r, uint32_t len, int64_t timeout_ns,
                                  carmp_ring_reservation *out) {
    ring_header *h = header_of(r);
    uint64_t start = clock_ns(CLOCK_MONOTONIC);
    reap_dead_readers(r);
    for (;;) {
        /* Count ourselves as asleep before the last try: a reader that advances after
         * it sees us and bumps the futex word, so the wait below returns at once. */
        __atomic_fetch_add(&h->write_sleepers, 1, __ATOMIC_SEQ_CST);
        uint32_t seen = __atomic_load_n(futex_of(&h->space_futex), __ATOMIC_SEQ_CST);
        carmp_status st = try_reserve(r, len, out);
        if (st == CARMP_FULL) {
            int64_t left = -1;
            if (timeout_ns >= 0) left = timeout_ns - (int64_t)(clock_ns(CLOCK_MONOTONIC) - start);
            if (timeout_ns >= 0 && left <= 0) {
                st = CARMP_TIMEOUT;
            } else {
                carmp_status slept = carmp_wait(futex_of(&h->space_futex), seen, left);
                if (slept != CARMP_OK && slept != CARMP_TIMEOUT) st = slept;
            }
        }
        __atomic_fetch_sub(&h->write_sleepers, 1, __ATOMIC_SEQ_CST);
        if (st != CARMP_FULL) return st;
    }
}

carmp_status carmp_ring_reserve(const carmp_ring *ring, uint32_t len, uint32_t pid,
                                int64_t timeout_ns, carmp_ring_reservation *out) {
    if (len == 0 || len > ring->max_record || pid == 0 || pid > PID_MASK) return CARMP_EINVAL;
    out->pid = pid;
    carmp_status st = try_reserve(ring, len, out);
    if (st == CARMP_FULL) {
        if (timeout_ns == 0) {
            __atomic_fetch_add(&header_of(ring)->full_waits, 1, __ATOMIC_SEQ_CST);
            return CARMP_FULL;
        }
        st = wait_for_room(ring, len, timeout_ns, out);
    }
    return st;
}

carmp_status carmp_ring_claim(const carmp_ring *ring, const carmp_ring_reservation *res) {
    ring_descriptor *d = descriptor_of(ring, res->seq);
    uint64_t seen = load(&d->status);
    /* Already ours-and-abandoned, or a later lap owns the slot: the claim is too late. */
    if (status_lap(seen, res->seq) >= 0) return CARMP_TIMEOUT;
    store_relaxed(&d->pos, res->pos);
    store_relaxed(&d->timestamp_ns, clock_ns(CLOCK_REALTIME));
    uint64_t mine = make_status(res->seq, STATE_WRITING, res->pid);
    while (!cas(&d->status, &seen, mine))
        if (status_lap(seen, res->seq) >= 0) return CARMP_TIMEOUT;
    return CARMP_OK;
}

void *carmp_ring_payload(const carmp_ring *ring, const carmp_ring_reservation *res) {
    return data_of(ring) + (res->pos & (ring->capacity - 1));
}

static uint32_t record_crc(uint64_t seq, uint64_t timestamp_ns, uint64_t pos, uint32_t pid,
                           uint32_t len, const void *payload) {
    uint64_t meta[4] = {seq, timestamp_ns, pos, ((uint64_t)pid << 32) | len};
    return carmp_crc32c(carmp_crc32c(0, meta, sizeof meta), payload, len);
}

carmp_status carmp_ring_commit(const carmp_ring *ring, const carmp_ring_reservation *res,
                               uint64_t timestamp_ns) {
    ring_header *h = header_of(ring);
    ring_descriptor *d = descriptor_of(ring, res->seq);
    if (timestamp_ns == 0) timestamp_ns = clock_ns(CLOCK_REALTIME);
    uint32_t crc = record_crc(res->seq, timestamp_ns, res->pos, res->pid, res->len,
                              carmp_ring_payload(ring, res));
    store_relaxed(&d->len_crc, ((uint64_t)crc << 32) | res->len);
    store_relaxed(&d->timestamp_ns, timestamp_ns);
    uint64_t writing = make_status(res->seq, STATE_WRITING, res->pid);
    if (!cas(&d->status, &writing, make_status(res->seq, STATE_COMMITTED, res->pid)))
        return CARMP_TIMEOUT; /* readers abandoned it: the caller appends again */
    wake_word(&h->commit_futex, &h->read_sleepers);
    return CARMP_OK;
}

carmp_status carmp_ring_append(const carmp_ring *ring, const void *payload, uint32_t len,
                               uint32_t pid, uint64_t timestamp_ns, int64_t timeout_ns,
                               uint64_t *seq) {
    carmp_ring_reservation res;
    carmp_status st = carmp_ring_reserve(ring, len, pid, timeout_ns, &res);
    if (st != CARMP_OK) return st;
    *seq = res.seq;
    if ((st = carmp_ring_claim(ring, &res)) != CARMP_OK) return st;
    memcpy(carmp_ring_payload(ring, &res), payload, len);
    return carmp_ring_commit(ring, &res, timestamp_ns);
}

/* ---- readers ------------------------------------------------------------------------ */

static carmp_ring_outcome lost(const carmp_ring *r, uint64_t seq, frontier cur, uint64_t *resume) {
    uint64_t oldest = oldest_readable(r, cur);
    if (oldest <= seq) return CARMP_RING_CORRUPT; /* the ring contradicts itself here: skip it */
    *resume = oldest;
    return CARMP_RING_LOST;
}

carmp_ring_outcome carmp_ring_read(const carmp_ring *ring, uint64_t seq, void *buf,
                                   uint32_t buf_size, carmp_ring_record *rec, uint64_t *resume) {
    const ring_header *h = header_of(ring);
    memset(rec, 0, sizeof *rec);
    rec->seq = seq;
    *resume = seq;
    frontier cur = frontier_load(h);
    if (seq < ring->first_seq || (seq < cur.seq && cur.seq - seq > ring->slots))
        return lost(ring, seq, cur, resume);
    if (seq >= cur.seq) return CARMP_RING_EMPTY;
    ring_descriptor *d = descriptor_of(ring, seq);
    uint64_t status = load(&d->status);
    int32_t lap = status_lap(status, seq);
    if (lap > 0) return lost(ring, seq, cur, resume);
    if (lap < 0) return CARMP_RING_PENDING; /* reserved, not claimed yet */
    rec->pid = status_pid(status);
    switch (status_state(status)) {
    case STATE_WRITING:
        return CARMP_RING_PENDING;
    case STATE_ABANDONED:
        rec->timestamp_ns = rec->pid ? load_relaxed(&d->timestamp_ns) : 0;
        return CARMP_RING_ABANDONED;
    case STATE_COMMITTED:
        break;
    default:
        return CARMP_RING_CORRUPT;
    }
    uint64_t pos = load_relaxed(&d->pos), len_crc = load_relaxed(&d->len_crc);
    uint64_t timestamp_ns = load_relaxed(&d->timestamp_ns);
    uint32_t len = (uint32_t)len_crc, crc = (uint32_t)(len_crc >> 32);
    int fits = len != 0 && len <= ring->max_record && len <= buf_size &&
               (pos & (ring->capacity - 1)) + len <= ring->capacity;
    if (fits) memcpy(buf, data_of(ring) + (pos & (ring->capacity - 1)), len);
    /* Validate after the copy: a writer reuses the descriptor only after moving the
     * frontier past it, and overwrites the bytes only after reserving past them. */
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    uint64_t again = load(&d->status);
    frontier after = frontier_load(h);
    if (again != status || after.seq - seq > ring->slots) return lost(ring, seq, after, resume);
    if (pos > after.pos || after.pos - pos < len) return CARMP_RING_CORRUPT; /* not a real position */
    if (after.pos - pos > ring->capacity) return lost(ring, seq, after, resume);
    if (!fits || record_crc(seq, timestamp_ns, pos, rec->pid, len, buf) != crc)
        return CARMP_RING_CORRUPT;
    rec->timestamp_ns = timestamp_ns;
    rec->pos = pos;
    rec->len = len;
    return CARMP_RING_RECORD;
}

static uint64_t abandon_unclaimed(const carmp_ring *r, uint64_t from, uint64_t until) {
    uint64_t count = 0;
    for (uint64_t seq = from; seq < until; seq++) {
        ring_descriptor *d = descriptor_of(r, seq);
        uint64_t seen = load(&d->status);
        while (status_lap(seen, seq) < 0) {
            if (cas(&d->status, &seen, make_status(seq, STATE_ABANDONED, 0))) {
                count++;
                break;
            }
        }
    }
    return count;
}

uint64_t carmp_ring_resolve(const carmp_ring *ring, uint64_t seq, uint64_t hole_timeout_ns,
                            uint64_t stale_below) {
    ring_header *h = header_of(ring);
    frontier cur = frontier_load(h);
    if (seq < ring->first_seq || seq >= cur.seq || cur.seq - seq > ring->slots) return 0;
    ring_descriptor *d = descriptor_of(ring, seq);
    uint64_t status = load(&d->status), count = 0;
    int32_t lap = status_lap(status, seq);
    if (lap > 0) return 0;
    if (lap == 0) {
        if (status_state(status) != STATE_WRITING) return 0;
        if (seq >= stale_below && pid_alive(status_pid(status))) return 0;
        count = cas(&d->status, &status, make_status(seq, STATE_ABANDONED, status_pid(status)));
    } else {
        /* Never claimed: its writer died between reserving and claiming, or is about
         * to claim. Records reserve in order, so a later record claimed long ago (or
         * the caller's own clock, via stale_below) proves the whole run is old. */
        uint64_t next_claim = seq + 1, old_until = stale_below;
        for (; next_claim < cur.seq; next_claim++) {
            ring_descriptor *later = descriptor_of(ring, next_claim);
            if (!claimed(load(&later->status), next_claim)) continue;
            int64_t age = (int64_t)(clock_ns(CLOCK_REALTIME) - load_relaxed(&later->timestamp_ns));
            if (age > (int64_t)hole_timeout_ns) old_until = next_claim;
            break;
        }
        if (old_until > next_claim) old_until = next_claim;
        count = abandon_unclaimed(ring, seq, old_until);
    }
    if (count) {
        __atomic_fetch_add(&h->abandoned, count, __ATOMIC_SEQ_CST);
        wake_word(&h->commit_futex, &h->read_sleepers);
    }
    return count;
}

/* Worth waking for: committed, abandoned, lapped, or unreadable; not empty or in flight. */
static int settled(const carmp_ring *r, uint64_t seq) {
    frontier cur = frontier_load(header_of(r));
    if (seq >= cur.seq) return 0;
    if (seq < r->first_seq || cur.seq - seq > r->slots) return 1;
    uint64_t status = load(&descriptor_of(r, seq)->status);
    int32_t lap = status_lap(status, seq);
    if (lap != 0) return lap > 0;
    return status_state(status) != STATE_WRITING;
}

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* While writers stream, the next commit is microseconds away: polling that long is far
 * cheaper than a futex sleep and wake-up. Spin briefly, then yield the CPU (a writer may
 * share it), and only then sleep. */
static int settles_soon(const carmp_ring *r, uint64_t seq, int64_t timeout_ns) {
    uint64_t start = clock_ns(CLOCK_MONOTONIC);
    int64_t budget = timeout_ns >= 0 && timeout_ns < RING_POLL_NS ? timeout_ns : RING_POLL_NS;
    for (unsigned i = 0;; i++) {
        if (settled(r, seq)) return 1;
        if (i % 16 == 15) {
            int64_t spent = (int64_t)(clock_ns(CLOCK_MONOTONIC) - start);
            if (spent >= budget) return 0;
            if (spent >= RING_SPIN_NS) sched_yield();
        }
        cpu_relax();
    }
}

carmp_status carmp_ring_wait(const carmp_ring *ring, uint64_t seq, int64_t timeout_ns) {
    ring_header *h = header_of(ring);
    if (settles_soon(ring, seq, timeout_ns)) return CARMP_OK;
    /* Count ourselves first: a commit after the check below then bumps the word. */
    __atomic_fetch_add(&h->read_sleepers, 1, __ATOMIC_SEQ_CST);
    uint32_t seen = __atomic_load_n(futex_of(&h->commit_futex), __ATOMIC_SEQ_CST);
    carmp_status st = settled(ring, seq) ? CARMP_OK : carmp_wait(futex_of(&h->commit_futex), seen, timeout_ns);
    __atomic_fetch_sub(&h->read_sleepers, 1, __ATOMIC_SEQ_CST);
    return st;
}

void carmp_ring_wake_all(const carmp_ring *ring) {
    ring_header *h = header_of(ring);
    __atomic_fetch_add(&h->commit_futex, 1, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&h->space_futex, 1, __ATOMIC_SEQ_CST);
    carmp_wake(futex_of(&h->commit_futex), -1);
    carmp_wake(futex_of(&h->space_futex), -1);
}

/* ---- registered readers --------------------------------------------------------------- */

carmp_status carmp_ring_register(const carmp_ring *ring, uint32_t pid, uint64_t start_seq,
                                 uint32_t *slot) {
    if (pid == 0 || pid > PID_MASK) return CARMP_EINVAL;
    ring_header *h = header_of(ring);
    frontier cur = frontier_load(h);
    uint64_t start_pos = cur.pos;
    if (start_seq < cur.seq) {
        ring_descriptor *d = descriptor_of(ring, start_seq);
        int known = start_seq >= ring->first_seq && cur.seq - start_seq <= ring->slots &&
                    claimed(load(&d->status), start_seq);
        start_pos = known ? load_relaxed(&d->pos)
                          : (cur.pos > ring->capacity ? cur.pos - ring->capacity : 0);
    }
    for (uint32_t i = 0; i < ring->readers; i++) {
        ring_reader *rd = reader_of(ring, i);
        uint64_t free_slot = 0;
        if (!cas(&rd->owner_pid, &free_slot, pid)) continue;
        store(&rd->next_pos, start_pos); /* before next_seq: writers read them in that order */
        store(&rd->next_seq, start_seq);
        __atomic_fetch_add(&h->readers_registered, 1, __ATOMIC_SEQ_CST);
        store(&h->bound_seq, 0); /* the cached bound may be past us: make writers recompute */
        store(&h->bound_pos, 0);
        *slot = i;
        return CARMP_OK;
    }
    return CARMP_FULL;
}

void carmp_ring_advance(const carmp_ring *ring, uint32_t slot, uint64_t next_seq,
                        uint64_t next_pos) {
    if (slot >= ring->readers) return;
    ring_header *h = header_of(ring);
    ring_reader *rd = reader_of(ring, slot);
    if (next_pos > load_relaxed(&rd->next_pos)) store(&rd->next_pos, next_pos);
    store(&rd->next_seq, next_seq);
    wake_word(&h->space_futex, &h->write_sleepers);
}

void carmp_ring_unregister(const carmp_ring *ring, uint32_t slot) {
    if (slot >= ring->readers) return;
    ring_header *h = header_of(ring);
    ring_reader *rd = reader_of(ring, slot);
    uint64_t owner = load(&rd->owner_pid);
    if (owner != 0) release_reader(ring, rd, owner);
    wake_word(&h->space_futex, &h->write_sleepers);
}

uint64_t carmp_ring_next_seq(const carmp_ring *ring) {
    return frontier_load(header_of(ring)).seq;
}

void carmp_ring_stats_of(const carmp_ring *ring, carmp_ring_stats *out) {
    const ring_header *h = header_of(ring);
    frontier cur = frontier_load(h);
    out->next_seq = cur.seq;
    out->next_pos = cur.pos;
    out->oldest_seq = oldest_readable(ring, cur);
    out->abandoned = load(&h->abandoned);
    out->full_waits = load(&h->full_waits);
    out->readers_registered = load(&h->readers_registered);
    out->readers_reaped = load(&h->readers_reaped);
}
