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
 * sleep(seq) unless it holds; cancel(). Wakers change the data, then ring(). */
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

/* ---- orphan prevention (watchdog.c) ------------------------------------------
 * carmp_watchdog_start: a detached, signal-free thread SIGKILLs the calling process
 * when process `pid` exits (at once if it is already gone).
 * carmp_set_parent_death_signal: prctl(PR_SET_PDEATHSIG) for the calling thread's parent. */
carmp_status carmp_watchdog_start(int32_t pid);
carmp_status carmp_set_parent_death_signal(int signal_number);

/* ---- checksums and hashing -------------------------------------------- */
uint32_t carmp_crc32c(uint32_t crc, const void *data, size_t n);  /* pass 0 to start */
uint64_t carmp_hash64(const void *data, size_t n, uint64_t seed);
int carmp_crc32c_hardware(void);  /* 1 when SSE4.2 crc32 instructions are used */

#ifdef __cplusplus
}
#endif
#endif
