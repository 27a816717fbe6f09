/*
 * Single-producer single-consumer message channel over caller-owned memory, and
 * bells: futex doorbells that let a consumer sleep until any of its channels has
 * data (or a producer until space frees up) without a syscall per message.
 *
 * Channel layout (bytes; the producer owns `tail`, the consumer owns `head`, each on
 * its own cache line so the two sides do not false-share):
 *   0    u64 head       bytes consumed, monotonic
 *   64   u64 tail       bytes published, monotonic
 *   128  u64 capacity   data bytes, a power of two
 *   136  u64 sent       messages published
 *   144  u64 received   messages consumed
 *   256  data[capacity]
 * A record is [u32 length][u32 tag][payload, padded to 8 bytes] and never straddles
 * the end of the data: a record that would is preceded by a wrap marker (length
 * CARMP_WRAP) that sends the reader back to offset 0.
 */
#include <string.h>

#include "carmp_native.h"

#define CH_HEAD 0
#define CH_TAIL 64
#define CH_CAPACITY 128
#define CH_SENT 136
#define CH_RECEIVED 144
#define CARMP_WRAP 0xFFFFFFFFu
#define RECORD_HEADER 8

static inline uint64_t *word(void *ch, size_t offset) { return (uint64_t *)((char *)ch + offset); }
static inline char *data(void *ch) { return (char *)ch + CARMP_CHANNEL_HEADER; }
static inline uint64_t align8(uint64_t n) { return (n + 7) & ~(uint64_t)7; }

size_t carmp_channel_size(uint64_t capacity) { return CARMP_CHANNEL_HEADER + capacity; }

uint64_t carmp_channel_max_message(const void *ch) {
    return __atomic_load_n((const uint64_t *)((const char *)ch + CH_CAPACITY), __ATOMIC_RELAXED) / 2 -
           RECORD_HEADER;
}

carmp_status carmp_channel_init(void *ch, uint64_t capacity) {
    if (capacity < 64 || (capacity & (capacity - 1)) != 0 || capacity > ((uint64_t)1 << 40))
        return CARMP_EINVAL;
    memset(ch, 0, CARMP_CHANNEL_HEADER);
    *word(ch, CH_CAPACITY) = capacity;
    return CARMP_OK;
}

carmp_status carmp_channel_send(void *ch, uint32_t tag, const void *payload, uint64_t length) {
    uint64_t capacity = *word(ch, CH_CAPACITY);
    if (length > carmp_channel_max_message(ch)) return CARMP_EINVAL;
    uint64_t need = RECORD_HEADER + align8(length);
    uint64_t tail = __atomic_load_n(word(ch, CH_TAIL), __ATOMIC_RELAXED);
    uint64_t head = __atomic_load_n(word(ch, CH_HEAD), __ATOMIC_ACQUIRE);
    uint64_t offset = tail & (capacity - 1);
    uint64_t skip = capacity - offset < need ? capacity - offset : 0;
    if (tail - head + skip + need > capacity) return CARMP_FULL;
    if (skip) {
        uint32_t marker[2] = {CARMP_WRAP, 0};
        memcpy(data(ch) + offset, marker, sizeof marker);
        offset = 0;
    }
    uint32_t header[2] = {(uint32_t)length, tag};
    memcpy(data(ch) + offset, header, sizeof header);
    if (length) memcpy(data(ch) + offset + RECORD_HEADER, payload, length);
    __atomic_fetch_add(word(ch, CH_SENT), 1, __ATOMIC_RELAXED);
    __atomic_store_n(word(ch, CH_TAIL), tail + skip + need, __ATOMIC_SEQ_CST);
    return CARMP_OK;
}

carmp_status carmp_channel_peek(void *ch, uint32_t *tag, const void **payload, uint64_t *length) {
    uint64_t capacity = *word(ch, CH_CAPACITY);
    uint64_t head = __atomic_load_n(word(ch, CH_HEAD), __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(word(ch, CH_TAIL), __ATOMIC_ACQUIRE);
    /* records are 8-byte aligned and never hold more than the data area: other positions
     * are scribbles, and following them would read past the data or go round forever */
    if (head % 8 || tail - head > capacity) return head == tail ? CARMP_EMPTY : CARMP_CORRUPT;
    for (;;) {
        if (head == tail) return CARMP_EMPTY;
        uint64_t offset = head & (capacity - 1);
        uint32_t header[2];
        memcpy(header, data(ch) + offset, sizeof header);
        if (header[0] == CARMP_WRAP) {
            if (offset == 0) return CARMP_CORRUPT; /* every record fits at the start */
            head += capacity - offset;
            __atomic_store_n(word(ch, CH_HEAD), head, __ATOMIC_RELEASE);
            continue;
        }
        uint64_t need = RECORD_HEADER + align8(header[0]);
        if (header[0] > capacity / 2 || need > tail - head || offset + need > capacity)
            return CARMP_CORRUPT;
        *length = header[0];
        *tag = header[1];
        *payload = data(ch) + offset + RECORD_HEADER;
        return CARMP_OK;
    }
}

void carmp_channel_advance(void *ch, uint64_t length) {
    uint64_t head = __atomic_load_n(word(ch, CH_HEAD), __ATOMIC_RELAXED);
    __atomic_fetch_add(word(ch, CH_RECEIVED), 1, __ATOMIC_RELAXED);
    __atomic_store_n(word(ch, CH_HEAD), head + RECORD_HEADER + align8(length), __ATOMIC_SEQ_CST);
}

int carmp_channel_readable(const void *ch) {
    const char *base = ch;
    return __atomic_load_n((const uint64_t *)(base + CH_TAIL), __ATOMIC_SEQ_CST) !=
           __atomic_load_n((const uint64_t *)(base + CH_HEAD), __ATOMIC_SEQ_CST);
}

uint64_t carmp_channel_used(const void *ch) {
    const char *base = ch;
    return __atomic_load_n((const uint64_t *)(base + CH_TAIL), __ATOMIC_SEQ_CST) -
           __atomic_load_n((const uint64_t *)(base + CH_HEAD), __ATOMIC_SEQ_CST);
}

/* ---- bells ------------------------------------------------------------------- */

uint32_t carmp_bell_prepare(carmp_bell *bell) {
    __atomic_fetch_add(&bell->sleepers, 1, __ATOMIC_SEQ_CST);
    return (uint32_t)__atomic_load_n(&bell->seq, __ATOMIC_SEQ_CST);
}

carmp_status carmp_bell_sleep(carmp_bell *bell, uint32_t seq, int64_t timeout_ns) {
    return carmp_wait((uint32_t *)&bell->seq, seq, timeout_ns);
}

void carmp_bell_cancel(carmp_bell *bell) { __atomic_fetch_sub(&bell->sleepers, 1, __ATOMIC_SEQ_CST); }

int carmp_bell_ring(carmp_bell *bell) {
    if (__atomic_load_n(&bell->sleepers, __ATOMIC_SEQ_CST) == 0) return 0;
    __atomic_fetch_add(&bell->seq, 1, __ATOMIC_SEQ_CST);
    return carmp_wake((uint32_t *)&bell->seq, -1);
}

uint32_t carmp_bell_seq(const carmp_bell *bell) {
    return (uint32_t)__atomic_load_n(&bell->seq, __ATOMIC_SEQ_CST);
}

int carmp_bell_announce(carmp_bell *bell) {
    __atomic_fetch_add(&bell->seq, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&bell->sleepers, __ATOMIC_SEQ_CST) == 0) return 0;
    return carmp_wake((uint32_t *)&bell->seq, -1);
}
