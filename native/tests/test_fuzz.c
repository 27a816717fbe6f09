/* Fuzz the native readers of shared memory (ROBUSTNESS R13) under ASan/UBSan, which
 * `make native-test` builds this with: a valid table, channel and ring get random bytes
 * scribbled over them, then every read the Python side makes of an attached segment runs
 * on them. The structures live on the heap, so the sanitizers see any read outside them;
 * every loop is bounded, so a reader that would go around forever fails the CHECK instead.
 * Fixed seeds: a failure reproduces; FUZZ_ROUNDS=n runs longer by hand. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../carmp_native.h"
#include "check.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int rounds(void) {
    const char *text = getenv("FUZZ_ROUNDS");
    return text ? atoi(text) : 400;
}

/* Zeroed heap memory, 64-byte aligned, with the sanitizers' guard zones around it. */
static void *heap(size_t size) {
    void *mem = aligned_alloc(64, (size + 63) / 64 * 64);
    if (mem == NULL) {
        perror("aligned_alloc");
        exit(2);
    }
    return memset(mem, 0, (size + 63) / 64 * 64);
}

/* Overwrite random bytes in [0, span) of mem: a few single bytes, or a random run. */
static void scribble(unsigned char *mem, size_t span) {
    if (next_random() % 4 == 0) {
        size_t at = next_random() % span, run = 1 + next_random() % 64;
        for (size_t i = at; i < span && i < at + run; i++) mem[i] = (unsigned char)next_random();
        return;
    }
    for (int n = 1 + (int)(next_random() % 8); n > 0; n--) {
        size_t at = next_random() % span;
        if (next_random() % 2)
            mem[at] ^= (unsigned char)(1u << (next_random() % 8));
        else
            mem[at] = (unsigned char)next_random();
    }
}

/* Where to scribble: the first bytes (headers, geometry, the first slots) a third of the
 * time, else anywhere. */
static size_t span_of(size_t size, size_t header) {
    return next_random() % 3 == 0 && header < size ? header : size;
}

/* ---- the state table ------------------------------------------------------------------ */

enum { TABLE_KEYS = 24 };

static void table_key(int i, char *key) { snprintf(key, 16, "key-%d", i); }

static void *filled_table(size_t *size) {
    carmp_table_config config = {32, 4096, 2048, 64, 512, 777};
    *size = carmp_table_size(&config);
    void *table = heap(*size);
    if (carmp_table_init(table, *size, &config) != CARMP_OK) {
        fprintf(stderr, "filled_table: init failed\n");
        exit(2);
    }
    carmp_table_change change;
    char key[16], value[64];
    for (int i = 0; i < TABLE_KEYS; i++) {
        table_key(i % 16, key);
        int length = snprintf(value, sizeof value, "{\"value\": %d, \"pad\": \"%.*s\"}", i, i,
                              "xxxxxxxxxxxxxxxxxxxxxxxxx");
        carmp_table_begin(table, 1000 + (uint64_t)i);
        carmp_table_put(table, key, strlen(key), value, (size_t)length, 0, "fuzz", 4, 0, &change);
        if (i % 5 == 4) carmp_table_remove(table, key, strlen(key), "rm", 2, 0, &change);
        carmp_table_commit(table);
    }
    return table;
}

/* What StateStore does with an attached table: attach, get, iterate, read the log
 * (carmp_table_check is left out: it audits tables in tests, assuming they are sane). */
static void read_table(void *table, size_t size) {
    carmp_table_config config;
    if (carmp_table_attach(table, size, &config) != CARMP_OK) return;
    char key[16], buf[512];
    carmp_table_value value;
    for (int i = 0; i < 20; i++) {
        table_key(i, key);
        carmp_status st = carmp_table_get(table, key, strlen(key), buf, sizeof buf, &value);
        CHECK(st == CARMP_OK || st == CARMP_BUSY || st == CARMP_EINVAL);
    }
    carmp_table_item item;
    uint64_t cursor = 0;
    int items = 0;
    while (carmp_table_next(table, &cursor, &item) == 1) CHECK(++items <= 1 << 20);
    uint64_t first, next;
    carmp_table_log_bounds(table, &first, &next);
    carmp_transition transition;
    if (carmp_table_log_seek(table, first, &cursor) == CARMP_OK) {
        int read = 0;
        while (carmp_table_log_next(table, &cursor, &transition) == 1) CHECK(++read <= 1 << 20);
    }
    carmp_table_statistics stats;
    carmp_table_stats(table, &stats);
}

static void test_scribbled_tables_are_read_safely(void) {
    for (int round = 0; round < rounds(); round++) {
        size_t size;
        void *table = filled_table(&size);
        scribble(table, span_of(size, 512));
        read_table(table, size);
        int repaired;
        if (carmp_table_attach(table, size, &(carmp_table_config){0}) == CARMP_OK)
            carmp_table_recover(table, &repaired); /* what the next lock holder runs */
        free(table);
        if (failed) return;
    }
    passed++;
}

/* ---- channels (the farm's task and result queues, the mailbox's queues) ------------------ */

enum { CHANNEL_CAPACITY = 1024 };

static void test_scribbled_channels_are_read_safely(void) {
    size_t size = carmp_channel_size(CHANNEL_CAPACITY);
    for (int round = 0; round < rounds(); round++) {
        void *channel = heap(size);
        CHECK(carmp_channel_init(channel, CHANNEL_CAPACITY) == CARMP_OK);
        char message[200];
        memset(message, 'm', sizeof message);
        for (int i = 0; i < 12; i++) {
            uint32_t tag;
            const void *payload;
            uint64_t length;
            if (carmp_channel_send(channel, (uint32_t)i, message, (uint64_t)(i * 17 % 200)) ==
                CARMP_FULL) { /* make room as a consumer would */
                CHECK(carmp_channel_peek(channel, &tag, &payload, &length) == CARMP_OK);
                carmp_channel_advance(channel, length);
            }
        }
        scribble(channel, span_of(size, CARMP_CHANNEL_HEADER));
        /* the binding checks the capacity word against its region before every access */
        uint64_t capacity = ((uint64_t *)channel)[16];
        int usable = capacity && !(capacity & (capacity - 1)) && capacity <= CHANNEL_CAPACITY;
        for (int steps = 0; usable && steps < 64; steps++) {
            uint32_t tag;
            const void *payload;
            uint64_t length;
            carmp_status st = carmp_channel_peek(channel, &tag, &payload, &length);
            if (st != CARMP_OK) {
                CHECK(st == CARMP_EMPTY || st == CARMP_CORRUPT || st == CARMP_EINVAL);
                break;
            }
            /* the record must lie inside the channel: read all of it, as the binding does */
            const char *bytes = payload;
            CHECK(bytes >= (const char *)channel && bytes + length <= (const char *)channel + size);
            volatile char sink = 0;
            for (uint64_t i = 0; i < length; i++) sink ^= bytes[i];
            carmp_channel_advance(channel, length);
        }
        carmp_channel_readable(channel);
        carmp_channel_used(channel);
        free(channel);
        if (failed) return;
    }
    passed++;
}

/* ---- the event ring's attach (its reads are fuzzed in test_ring.c) ----------------------- */

static void test_scribbled_ring_headers_attach_safely(void) {
    size_t size = carmp_ring_size(4096, 64, 4);
    for (int round = 0; round < rounds(); round++) {
        void *mem = heap(size);
        carmp_ring ring;
        CHECK(carmp_ring_init(&ring, mem, size, 4096, 64, 4, 1024, 0) == CARMP_OK);
        uint64_t seq;
        for (int i = 0; i < 30; i++)
            carmp_ring_append(&ring, "an event of some size", 21, (uint32_t)getpid(), 0, 0, &seq);
        scribble(mem, CARMP_RING_HEADER_SIZE);
        carmp_ring attached;
        if (carmp_ring_attach(&attached, mem, size) == CARMP_OK) {
            CHECK(carmp_ring_size(attached.capacity, attached.slots, attached.readers) <= size);
            char buf[1024];
            carmp_ring_record rec;
            uint64_t next = attached.first_seq, resume;
            for (int steps = 0; steps < 200; steps++) {
                carmp_ring_outcome o = carmp_ring_read(&attached, next, buf, sizeof buf, &rec, &resume);
                if (o == CARMP_RING_EMPTY || o == CARMP_RING_PENDING) break;
                next = o == CARMP_RING_LOST ? resume : next + 1;
            }
            carmp_ring_stats stats;
            carmp_ring_stats_of(&attached, &stats);
        }
        free(mem);
        if (failed) return;
    }
    passed++;
}

int main(void) {
    test_scribbled_tables_are_read_safely();
    test_scribbled_channels_are_read_safely();
    test_scribbled_ring_headers_attach_safely();
    return report("fuzz");
}
