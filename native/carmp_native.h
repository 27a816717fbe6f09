/*
 * carmp native core: a flat C API over caller-owned memory.
 *
 * No Python.h here. Every function works on memory the caller owns (usually a
 * mapped shared-memory segment) and reports through carmp_status codes, so the
 * core can be tested from plain C and bound to Python in one thin module.
 *
 * Words are 64-bit, naturally aligned; the caller checks bounds and alignment.
 */
#ifndef CARMP_NATIVE_H
#define CARMP_NATIVE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum carmp_status {
    CARMP_OK = 0,
    CARMP_OWNERDEAD = 1,       /* lock acquired; its previous owner died holding it */
    CARMP_TIMEOUT = 2,         /* the deadline passed first */
    CARMP_BUSY = 3,            /* try-lock: somebody else holds it */
    CARMP_FULL = 4,            /* bounded add: the limit would be exceeded */
    CARMP_NOT_OWNER = 5,       /* unlock by a thread that does not hold the lock */
    CARMP_RELOCK = 6,          /* the calling thread already holds the lock */
    CARMP_INTERRUPTED = 7,     /* a signal arrived; the caller decides whether to retry */
    CARMP_EMPTY = 8,           /* nothing to read */
    CARMP_CORRUPT = -4,        /* shared data fails a consistency check */
    CARMP_NOTRECOVERABLE = -1, /* the lock was abandoned without recovery */
    CARMP_EINVAL = -2,         /* bad argument */
    CARMP_ERRNO = -3           /* system error; errno says which */
} carmp_status;

/* ---- atomics on 64-bit words (sequentially consistent) ---------------- */
uint64_t carmp_load(const uint64_t *word);
void carmp_store(uint64_t *word, uint64_t value);
uint64_t carmp_fetch_add(uint64_t *word, uint64_t delta);   /* returns old; wraps mod 2^64 */
/* Swap in `desired` if the word equals *expected; otherwise *expected gets the current value. */
int carmp_cas(uint64_t *word, uint64_t *expected, uint64_t desired); /* 1 swapped, 0 not */
/* Add `delta` unless the result would exceed `limit`: CARMP_OK or CARMP_FULL; *old gets the prior value. */
carmp_status carmp_add_bounded(uint64_t *word, uint64_t delta, uint64_t limit, uint64_t *old);
/* Index of the first i < n with counters[i] >= limits[i], or -1. */
int carmp_first_reached(const uint64_t *counters, const uint64_t *limits, size_t n);

/* ---- robust cross-process lock ----------------------------------------
 * Lives inside shared memory. If its owner dies, the next acquirer gets
 * CARMP_OWNERDEAD (the lock is then held and consistent again; the caller
 * repairs the guarded data). Timeouts are relative, in nanoseconds; < 0 waits
 * forever. Layout: a process-shared robust pthread mutex, then the owner pid. */
#define CARMP_LOCK_SIZE 64
size_t carmp_lock_size(void);
carmp_status carmp_lock_init(void *lock);
carmp_status carmp_lock_try(void *lock);
carmp_status carmp_lock_timed(void *lock, int64_t timeout_ns);
carmp_status carmp_lock_release(void *lock);
uint64_t carmp_lock_owner_pid(const void *lock);   /* 0 when free */
carmp_status carmp_lock_destroy(void *lock);

/* ---- sleeping until a word changes (futex) ------------------------------
 * carmp_wait sleeps while *word == expected, at most timeout_ns (< 0: no limit):
 * CARMP_OK when woken or the word differs, CARMP_TIMEOUT, CARMP_INTERRUPTED.
 * carmp_wake wakes up to `count` sleepers (< 0: all) and returns how many woke.
 * Waiters and wakers must agree on the address; use the low half of a 64-bit word
 * (little-endian) to keep 8-byte alignment. */
carmp_status carmp_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);
int carmp_wake(uint32_t *word, int count);

/* ---- SPSC message channels and bells (channel.c) ---------------------------
 * A channel carries [tag, bytes] messages from one producer to one consumer through
 * caller-owned memory of carmp_channel_size(capacity) bytes (capacity: a power of
 * two >= 64). send() returns CARMP_FULL when there is no room and CARMP_EINVAL for a
 * message over carmp_channel_max_message(); peek() returns CARMP_EMPTY, or points
 * into the channel until advance() releases the record. Nothing here sleeps: a bell
 * is how a side waits. Sleeper protocol: seq = prepare(); re-check the condition;
 * sleep(seq) unless it holds; cancel(). Wakers change the data, then ring().
 * A change the sleeper's condition cannot see (a flag in one process's memory) is
 * announced instead: announce() always moves the seq, so a sleeper that read
 * carmp_bell_seq() before checking its flags sleeps through nothing. */
#define CARMP_CHANNEL_HEADER 256
typedef struct {
    uint64_t seq;      /* futex word: its low 32 bits (little-endian) */
    uint64_t sleepers; /* how many prepared to sleep; ring() skips the syscall at 0 */
} carmp_bell;
size_t carmp_channel_size(uint64_t capacity);
carmp_status carmp_channel_init(void *channel, uint64_t capacity);
uint64_t carmp_channel_max_message(const void *channel);
carmp_status carmp_channel_send(void *channel, uint32_t tag, const void *payload, uint64_t length);
carmp_status carmp_channel_peek(void *channel, uint32_t *tag, const void **payload, uint64_t *length);
void carmp_channel_advance(void *channel, uint64_t length);
int carmp_channel_readable(const void *channel);
uint64_t carmp_channel_used(const void *channel);
uint32_t carmp_bell_prepare(carmp_bell *bell);
carmp_status carmp_bell_sleep(carmp_bell *bell, uint32_t seq, int64_t timeout_ns);
void carmp_bell_cancel(carmp_bell *bell);
int carmp_bell_ring(carmp_bell *bell);
uint32_t carmp_bell_seq(const carmp_bell *bell);
int carmp_bell_announce(carmp_bell *bell);

/* ---- orphan prevention (watchdog.c) ------------------------------------------
 * carmp_watchdog_start: a detached, signal-free thread SIGKILLs the calling process
 * when process `pid` exits (at once if it is already gone).
 * carmp_set_parent_death_signal: prctl(PR_SET_PDEATHSIG) for the calling thread's parent. */
carmp_status carmp_watchdog_start(int32_t pid);
carmp_status carmp_set_parent_death_signal(int signal_number);
/* Ignore SIGINT process-wide (nestable) while child processes start, whichever thread
 * starts them: a child created meanwhile (fork, or fork + exec) begins with SIGINT ignored. */
carmp_status carmp_sigint_ignore(void);
carmp_status carmp_sigint_restore(void);

/* ---- checksums and hashing -------------------------------------------- */
uint32_t carmp_crc32c(uint32_t crc, const void *data, size_t n);  /* pass 0 to start */
uint64_t carmp_hash64(const void *data, size_t n, uint64_t seed);
int carmp_crc32c_hardware(void);  /* 1 when SSE4.2 crc32 instructions are used */

/* ==== shared hash table (table.c) ===================================================
 * Byte keys -> byte values in caller-owned memory that many processes map at once.
 * Readers take no lock: every bucket has a sequence word, odd while a writer changes
 * its chain; a read copies the value, then checks that the word did not move.
 * Writers hold one external lock (the caller's robust lock) and write in batches:
 * begin, then put/remove/clear/truncate_log, then commit (or abort). A batch logs every
 * link it changes; if its writer dies, carmp_table_recover() (run by the next holder of
 * the lock) undoes an uncommitted batch or finishes a committed one, so readers see all
 * of a batch or none of it. Values live in an arena whose freed blocks are merged and
 * reused. Every logged change appends a transition (key, old, new, action, time) to a
 * bounded ring that drops its oldest records when full. */

typedef struct carmp_table_config {
    uint64_t max_keys;         /* keys held at once (1 .. 2^30) */
    uint64_t arena_bytes;      /* value arena, a multiple of 16 (>= 64) */
    uint64_t log_bytes;        /* transition ring, a multiple of 8 (>= 64) */
    uint64_t max_key_bytes;    /* 1 .. 2^20 */
    uint64_t max_value_bytes;  /* 0 .. 2^31 */
    uint64_t seed;             /* hash seed, fixed at init */
} carmp_table_config;

/* Bytes a table with this config occupies (a multiple of 64), or 0 if the config is invalid. */
size_t carmp_table_size(const carmp_table_config *config);
/* Lay out an empty table in `size` zeroed bytes (64-byte aligned). */
carmp_status carmp_table_init(void *table, size_t size, const carmp_table_config *config);
/* Check an existing table's header against `size` bytes and fill *config: CARMP_OK or CARMP_EINVAL. */
carmp_status carmp_table_attach(const void *table, size_t size, carmp_table_config *config);

typedef struct carmp_table_value {
    uint64_t version;    /* > 0; 0 when the key is absent */
    uint64_t expires_ns; /* wall-clock deadline of the last write's TTL; 0: none */
    size_t length;       /* value bytes; copied only when length <= capacity */
} carmp_table_value;

/* Lock-free read. CARMP_OK (value->version 0: absent, as is any key over max_key_bytes);
 * CARMP_BUSY when a writer held the key's bucket for the whole bounded spin (take the
 * lock, which also recovers a dead writer, and read again); CARMP_EINVAL: corrupt chain. */
carmp_status carmp_table_get(const void *table, const void *key, size_t key_len, void *buf,
                             size_t capacity, carmp_table_value *value);

/* ---- writes: the caller holds the table's lock ---- */
enum { CARMP_TABLE_FULL_KEYS = 1, CARMP_TABLE_FULL_BYTES = 2 };
#define CARMP_TABLE_UNLOGGED 1u /* put/remove flag: append no transition */

typedef struct carmp_table_change {
    uint64_t old_version;  /* 0: the key was absent */
    uint64_t new_version;  /* 0: the key is gone */
    const void *old_value; /* NULL when absent; valid until the next write call */
    size_t old_length;
    int full;              /* with CARMP_FULL: CARMP_TABLE_FULL_KEYS or _BYTES */
} carmp_table_change;

/* Open a batch; its transitions carry `timestamp_ns`. CARMP_EINVAL if one is open. */
carmp_status carmp_table_begin(void *table, uint64_t timestamp_ns);
/* Insert or replace. CARMP_FULL (see change->full) changes nothing; CARMP_EINVAL for
 * sizes over the limits, no open batch, or a logged change after truncate_log. */
carmp_status carmp_table_put(void *table, const void *key, size_t key_len, const void *value,
                             size_t value_len, uint64_t expires_ns, const void *action,
                             size_t action_len, unsigned flags, carmp_table_change *change);
/* Remove if present (change->old_version 0 when it was absent: nothing logged). */
carmp_status carmp_table_remove(void *table, const void *key, size_t key_len, const void *action,
                                size_t action_len, unsigned flags, carmp_table_change *change);
/* Remove every key, logging nothing. */
carmp_status carmp_table_clear(void *table);
/* Keep only the first `count` transitions (count <= the number recorded); the batch may
 * then append no more. */
carmp_status carmp_table_truncate_log(void *table, uint64_t count);
carmp_status carmp_table_commit(void *table);
/* Undo the open batch. */
carmp_status carmp_table_abort(void *table);
/* After taking the lock from a dead writer: undo its uncommitted batch or finish its
 * committed one; *repaired = 1 when there was one. CARMP_EINVAL: the table is corrupt. */
carmp_status carmp_table_recover(void *table, int *repaired);

/* ---- whole-table reads: the caller holds the lock ---- */
typedef struct carmp_table_item {
    const void *key, *value;
    size_t key_len, value_len;
    uint64_t version, expires_ns;
} carmp_table_item;
/* Iterate the keys: *cursor starts at 0; 1 with an item, 0 at the end, -1 at an entry
 * whose block lies outside the arena (corruption; the cursor moves past it). */
int carmp_table_next(const void *table, uint64_t *cursor, carmp_table_item *item);

#define CARMP_TRANSITION_ABSENT UINT32_MAX /* old_length/new_length of an absent value */
typedef struct carmp_transition {
    uint64_t index, timestamp_ns, version; /* version after it; 0 for a removal */
    const void *key, *action, *old_value, *new_value;
    uint32_t key_len, action_len, old_length, new_length;
} carmp_transition;
/* Transitions [*first, *next) are retained; *next is the number ever recorded. */
void carmp_table_log_bounds(const void *table, uint64_t *first, uint64_t *next);
/* A cursor at transition `index` (first <= index <= next): CARMP_OK or CARMP_EINVAL. */
carmp_status carmp_table_log_seek(const void *table, uint64_t index, uint64_t *cursor);
/* Read at *cursor and advance: 1 with a transition, 0 at the end, -1 corrupt (bad CRC). */
int carmp_table_log_next(const void *table, uint64_t *cursor, carmp_transition *transition);

typedef struct carmp_table_stats {
    uint64_t keys, max_keys, bytes_used, arena_bytes;
    uint64_t log_first, log_next, log_dropped, log_bytes;
    uint64_t commits, recoveries;
} carmp_table_statistics;
void carmp_table_stats(const void *table, carmp_table_statistics *stats); /* lock-free, approximate */
/* Every structural invariant, for tests and audits (lock held): 0, or the negative
 * number of the first one broken. */
int carmp_table_check(const void *table);

/* ==== event ring (native/ring.c) ===========================================
 * A multi-writer, multi-reader ring of variable-length records in caller-owned
 * (usually shared) memory. Writers reserve a (sequence number, byte position)
 * pair with one 16-byte compare-and-swap, so sequence numbers are global and
 * gap-free and positions grow with them; then they claim the record's
 * descriptor, copy the payload and commit it with a CRC32C. Readers find
 * record `seq` through descriptor seq % slots, copy it out and validate it
 * afterwards (descriptor unchanged, bytes not lapped, CRC), so a writer that
 * overwrites a slow reader's record is detected, never trusted.
 *
 * A reservation whose writer died (or stalled past the caller's bound) is a
 * hole; carmp_ring_resolve abandons it so readers move on and report it.
 * Optional backpressure: writers wait while a registered reader still needs
 * the space (carmp_ring_register / advance). Readers and blocked writers sleep
 * on futexes; a sleeper count spares writers a syscall when nobody sleeps.
 *
 * Memory (from the 64-byte aligned start the caller gives, CARMP_RING_* sizes):
 *   header 256 | descriptors 32 * slots | reader slots 64 * readers | data capacity
 * capacity and slots are powers of two; max_record <= capacity / 4.
 * The handle (carmp_ring) keeps the geometry in process memory, so bytes
 * scribbled over the shared header can mislead readers but never send them
 * outside the ring. */

#define CARMP_RING_HEADER_SIZE 256
#define CARMP_RING_DESCRIPTOR_SIZE 32
#define CARMP_RING_READER_SIZE 64
#define CARMP_RING_MAX_SLOTS (1ULL << 28)
#define CARMP_RING_MAX_CAPACITY (1ULL << 40)
#define CARMP_RING_MAX_READERS 1024

typedef struct carmp_ring {
    char *base;          /* the ring's first byte */
    uint64_t capacity;   /* data bytes, a power of two */
    uint64_t slots;      /* descriptors, a power of two */
    uint64_t first_seq;  /* the sequence number of the first record */
    uint32_t readers;    /* reader cursor slots */
    uint32_t max_record; /* largest payload in bytes */
} carmp_ring;

/* What a read found at one sequence number. */
typedef enum carmp_ring_outcome {
    CARMP_RING_RECORD = 0,    /* a committed record, copied and verified */
    CARMP_RING_ABANDONED = 1, /* a hole: its writer died or stalled; skip it */
    CARMP_RING_CORRUPT = 2,   /* a committed record that fails validation; skip it */
    CARMP_RING_EMPTY = 3,     /* not reserved yet: the reader is caught up */
    CARMP_RING_PENDING = 4,   /* reserved, not committed yet */
    CARMP_RING_LOST = 5       /* overwritten: resume at *resume */
} carmp_ring_outcome;

typedef struct carmp_ring_record {
    uint64_t seq;
    uint64_t timestamp_ns; /* the writer's, given at commit; 0 for a hole never claimed */
    uint64_t pos;          /* byte position (grows forever; ring offset = pos % capacity) */
    uint32_t pid;          /* the writer; 0 if it never claimed the record */
    uint32_t len;          /* payload bytes */
} carmp_ring_record;

typedef struct carmp_ring_reservation {
    uint64_t seq;
    uint64_t pos;
    uint32_t len;
    uint32_t pid;
} carmp_ring_reservation;

typedef struct carmp_ring_stats {
    uint64_t next_seq;           /* the next sequence number a writer gets */
    uint64_t next_pos;           /* bytes reserved so far, padding included */
    uint64_t oldest_seq;         /* the oldest record still readable */
    uint64_t abandoned;          /* holes abandoned */
    uint64_t full_waits;         /* reserves with timeout 0 that found no room (an append
                                    that then waits counts once: it tries without waiting first) */
    uint64_t readers_registered; /* reader cursors writers wait for */
    uint64_t readers_reaped;     /* cursors of dead readers freed by writers */
} carmp_ring_stats;

/* Bytes a ring of this geometry needs; 0 when the geometry is invalid. */
size_t carmp_ring_size(uint64_t capacity, uint64_t slots, uint32_t readers);
/* Lay out a new ring in `mem` (`mem_size` bytes, 64-byte aligned) and fill the handle. */
carmp_status carmp_ring_init(carmp_ring *ring, void *mem, size_t mem_size, uint64_t capacity,
                             uint64_t slots, uint32_t readers, uint32_t max_record,
                             uint64_t first_seq);
/* Fill the handle from an initialised ring after checking its header against mem_size. */
carmp_status carmp_ring_attach(carmp_ring *ring, void *mem, size_t mem_size);

/* Writers, in four steps (a writer may die after any of them):
 * reserve: take the next sequence number and payload bytes. CARMP_OK, CARMP_EINVAL (len 0
 *   or over max_record, pid 0), CARMP_FULL (a registered reader still needs the room and
 *   timeout_ns == 0; counted in full_waits), CARMP_TIMEOUT, CARMP_INTERRUPTED (a signal);
 *   timeout_ns < 0 waits for room without limit.
 * claim: mark the descriptor as being written by res->pid.
 * copy the payload to carmp_ring_payload().
 * commit: store length and CRC and publish; timestamp_ns 0 = now.
 * claim and commit return CARMP_TIMEOUT when readers abandoned the record first (its
 * writer looked dead or stalled): the record is lost as a hole; append it again. */
carmp_status carmp_ring_reserve(const carmp_ring *ring, uint32_t len, uint32_t pid,
                                int64_t timeout_ns, carmp_ring_reservation *out);
carmp_status carmp_ring_claim(const carmp_ring *ring, const carmp_ring_reservation *res);
void *carmp_ring_payload(const carmp_ring *ring, const carmp_ring_reservation *res);
carmp_status carmp_ring_commit(const carmp_ring *ring, const carmp_ring_reservation *res,
                               uint64_t timestamp_ns);
/* All four steps; *seq gets the sequence number once reserved. */
carmp_status carmp_ring_append(const carmp_ring *ring, const void *payload, uint32_t len,
                               uint32_t pid, uint64_t timestamp_ns, int64_t timeout_ns,
                               uint64_t *seq);

/* Readers. read copies record `seq` into buf (buf_size >= max_record) and fills *rec;
 * on CARMP_RING_LOST *resume is the oldest readable sequence number (> seq). */
carmp_ring_outcome carmp_ring_read(const carmp_ring *ring, uint64_t seq, void *buf,
                                   uint32_t buf_size, carmp_ring_record *rec, uint64_t *resume);
/* Abandon a pending `seq` when its writer is dead, or when the caller has seen it
 * pending for its whole bound: every sequence number below `stale_below` was reserved
 * at least that long ago. A hole never claimed is also abandoned when a later record
 * was claimed more than hole_timeout_ns ago; the run of unclaimed holes up to the
 * next claimed record goes with it. Returns how many records it abandoned. */
uint64_t carmp_ring_resolve(const carmp_ring *ring, uint64_t seq, uint64_t hole_timeout_ns,
                            uint64_t stale_below);
/* Wait until `seq` is no longer empty or pending: CARMP_OK, CARMP_TIMEOUT,
 * CARMP_INTERRUPTED. Polls for up to 30 us first (yielding the CPU after 2 us), since a
 * streaming writer commits sooner than a futex round trip; then sleeps until a commit
 * or an abandon wakes it. */
carmp_status carmp_ring_wait(const carmp_ring *ring, uint64_t seq, int64_t timeout_ns);
/* Wake every sleeper (readers and blocked writers), e.g. before closing. */
void carmp_ring_wake_all(const carmp_ring *ring);

/* Backpressure: writers wait (reserve's timeout) while a registered reader has not
 * advanced past the records its space holds. Cursors of dead processes are freed. */
carmp_status carmp_ring_register(const carmp_ring *ring, uint32_t pid, uint64_t start_seq,
                                 uint32_t *slot); /* CARMP_FULL when every slot is taken */
/* Publish a cursor: every record below next_seq is read, and no unread record starts
 * below byte next_pos (the end of the last record read; smaller values are ignored). */
void carmp_ring_advance(const carmp_ring *ring, uint32_t slot, uint64_t next_seq,
                        uint64_t next_pos);
void carmp_ring_unregister(const carmp_ring *ring, uint32_t slot);

/* The next sequence number a writer gets (cheap: no search for the oldest). */
uint64_t carmp_ring_next_seq(const carmp_ring *ring);
void carmp_ring_stats_of(const carmp_ring *ring, carmp_ring_stats *out);

#ifdef __cplusplus
}
#endif
#endif
