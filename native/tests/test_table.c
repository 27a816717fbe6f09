/* C unit tests of the shared hash table (table.c); run under ASan/UBSan by `make native-test`. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../carmp_native.h"
#include "check.h"

typedef struct {
    void *mem;
    size_t size;
} table_t;

static table_t make_table(uint64_t max_keys, uint64_t arena, uint64_t log) {
    carmp_table_config config = {max_keys, arena, log, 64, 4096, 12345};
    table_t t = {NULL, carmp_table_size(&config)};
    t.mem = mmap(NULL, t.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (t.mem == MAP_FAILED || carmp_table_init(t.mem, t.size, &config) != CARMP_OK) {
        perror("make_table");
        exit(2);
    }
    return t;
}

static void drop_table(table_t t) { munmap(t.mem, t.size); }

static carmp_status put1(void *t, const char *key, const char *value, const char *action) {
    carmp_table_change change;
    carmp_status st = carmp_table_begin(t, 1000);
    if (st != CARMP_OK) return st;
    st = carmp_table_put(t, key, strlen(key), value, strlen(value), 0, action, strlen(action), 0,
                         &change);
    if (st != CARMP_OK) {
        carmp_table_abort(t);
        return st;
    }
    return carmp_table_commit(t);
}

static int remove1(void *t, const char *key) {
    carmp_table_change change;
    carmp_table_begin(t, 2000);
    carmp_table_remove(t, key, strlen(key), "rm", 2, 0, &change);
    carmp_table_commit(t);
    return change.old_version != 0;
}

/* The value of `key`, NUL-terminated in buf, or NULL when absent. */
static const char *get1(void *t, const char *key, char *buf, size_t cap, uint64_t *version) {
    carmp_table_value v;
    if (carmp_table_get(t, key, strlen(key), buf, cap - 1, &v) != CARMP_OK || !v.version)
        return NULL;
    if (version) *version = v.version;
    buf[v.length] = 0;
    return buf;
}

static void test_config_and_attach(void) {
    carmp_table_config bad[] = {
        {0, 1024, 1024, 64, 64, 0},       {16, 1000, 1024, 64, 64, 0},
        {16, 1024, 1001, 64, 64, 0},      {16, 1024, 1024, 0, 64, 0},
        {1ULL << 31, 1024, 1024, 64, 64, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) CHECK(carmp_table_size(&bad[i]) == 0);
    table_t t = make_table(16, 4096, 1024);
    CHECK(t.size % 64 == 0);
    carmp_table_config seen;
    CHECK(carmp_table_attach(t.mem, t.size, &seen) == CARMP_OK);
    CHECK(seen.max_keys == 16 && seen.arena_bytes == 4096 && seen.seed == 12345);
    CHECK(carmp_table_attach(t.mem, t.size - 64, &seen) == CARMP_EINVAL);
    ((uint64_t *)t.mem)[3] ^= 1; /* a geometry word no longer matches */
    CHECK(carmp_table_attach(t.mem, t.size, &seen) == CARMP_EINVAL);
    memset(t.mem, 0, 64);
    CHECK(carmp_table_attach(t.mem, t.size, &seen) == CARMP_EINVAL);
    drop_table(t);
    passed++;
}

static void test_put_get_remove(void) {
    table_t t = make_table(64, 1 << 14, 4096);
    char buf[128];
    uint64_t v1 = 0, v2 = 0;
    CHECK(get1(t.mem, "a", buf, sizeof buf, NULL) == NULL);
    CHECK(put1(t.mem, "a", "1", "x") == CARMP_OK);
    CHECK(get1(t.mem, "a", buf, sizeof buf, &v1) && strcmp(buf, "1") == 0 && v1 > 0);
    CHECK(put1(t.mem, "a", "22", "x") == CARMP_OK);
    CHECK(get1(t.mem, "a", buf, sizeof buf, &v2) && strcmp(buf, "22") == 0 && v2 > v1);
    CHECK(put1(t.mem, "", "empty key", "x") == CARMP_OK);
    CHECK(get1(t.mem, "", buf, sizeof buf, NULL) && strcmp(buf, "empty key") == 0);
    /* a value longer than the buffer reports its length and copies nothing */
    carmp_table_value v;
    CHECK(carmp_table_get(t.mem, "a", 1, buf, 1, &v) == CARMP_OK && v.length == 2);
    /* a key longer than the limit is simply absent */
    char long_key[100];
    memset(long_key, 'k', sizeof long_key);
    CHECK(carmp_table_get(t.mem, long_key, sizeof long_key, buf, 10, &v) == CARMP_OK && !v.version);
    CHECK(remove1(t.mem, "a") == 1 && remove1(t.mem, "a") == 0);
    CHECK(get1(t.mem, "a", buf, sizeof buf, NULL) == NULL);
    carmp_table_statistics s;
    carmp_table_stats(t.mem, &s);
    CHECK(s.keys == 1 && s.commits == 5);
    CHECK(carmp_table_check(t.mem) == 0);
    drop_table(t);
    passed++;
}

static void test_limits_and_misuse(void) {
    table_t t = make_table(2, 256, 1024);
    carmp_table_change c;
    char big[5000];
    memset(big, 'v', sizeof big);
    /* no open batch */
    CHECK(carmp_table_put(t.mem, "a", 1, "1", 1, 0, "", 0, 0, &c) == CARMP_EINVAL);
    CHECK(carmp_table_commit(t.mem) == CARMP_EINVAL && carmp_table_abort(t.mem) == CARMP_EINVAL);
    CHECK(carmp_table_begin(t.mem, 1) == CARMP_OK && carmp_table_begin(t.mem, 1) == CARMP_EINVAL);
    CHECK(carmp_table_put(t.mem, "a", 1, big, sizeof big, 0, "", 0, 0, &c) == CARMP_EINVAL);
    CHECK(carmp_table_put(t.mem, big, 65, "1", 1, 0, "", 0, 0, &c) == CARMP_EINVAL);
    CHECK(carmp_table_put(t.mem, "a", 1, "1", 1, 0, "", 0, 0, &c) == CARMP_OK);
    CHECK(carmp_table_put(t.mem, "b", 1, "2", 1, 0, "", 0, 0, &c) == CARMP_OK);
    CHECK(carmp_table_put(t.mem, "c", 1, "3", 1, 0, "", 0, 0, &c) == CARMP_FULL);
    CHECK(c.full == CARMP_TABLE_FULL_KEYS);
    CHECK(carmp_table_put(t.mem, "a", 1, "9", 1, 0, "", 0, 0, &c) == CARMP_OK); /* replace: ok */
    CHECK(carmp_table_put(t.mem, "b", 1, big, 300, 0, "", 0, 0, &c) == CARMP_FULL);
    CHECK(c.full == CARMP_TABLE_FULL_BYTES);
    CHECK(carmp_table_commit(t.mem) == CARMP_OK);
    char buf[16];
    CHECK(get1(t.mem, "a", buf, sizeof buf, NULL) && strcmp(buf, "9") == 0);
    CHECK(get1(t.mem, "b", buf, sizeof buf, NULL) && strcmp(buf, "2") == 0);
    CHECK(carmp_table_check(t.mem) == 0);
    drop_table(t);
    passed++;
}

static void test_transitions(void) {
    table_t t = make_table(16, 4096, 4096);
    carmp_table_change c;
    CHECK(put1(t.mem, "k", "old", "a1") == CARMP_OK);
    CHECK(put1(t.mem, "k", "new", "a2") == CARMP_OK);
    CHECK(remove1(t.mem, "k") == 1);
    carmp_table_begin(t.mem, 7);
    CHECK(carmp_table_put(t.mem, "q", 1, "z", 1, 0, "", 0, CARMP_TABLE_UNLOGGED, &c) == CARMP_OK);
    carmp_table_commit(t.mem);
    uint64_t first, next, cursor;
    carmp_table_log_bounds(t.mem, &first, &next);
    CHECK(first == 0 && next == 3);
    carmp_transition r;
    CHECK(carmp_table_log_seek(t.mem, 1, &cursor) == CARMP_OK);
    CHECK(carmp_table_log_next(t.mem, &cursor, &r) == 1);
    CHECK(r.index == 1 && r.timestamp_ns == 1000 && r.key_len == 1 && memcmp(r.key, "k", 1) == 0);
    CHECK(r.old_length == 3 && memcmp(r.old_value, "old", 3) == 0);
    CHECK(r.new_length == 3 && memcmp(r.new_value, "new", 3) == 0);
    CHECK(r.action_len == 2 && memcmp(r.action, "a2", 2) == 0);
    CHECK(carmp_table_log_next(t.mem, &cursor, &r) == 1);
    CHECK(r.index == 2 && r.new_value == NULL && r.version == 0 && r.timestamp_ns == 2000);
    CHECK(carmp_table_log_next(t.mem, &cursor, &r) == 0);
    CHECK(carmp_table_log_seek(t.mem, 0, &cursor) == CARMP_OK);
    CHECK(carmp_table_log_next(t.mem, &cursor, &r) == 1 && r.old_value == NULL);
    CHECK(carmp_table_log_seek(t.mem, 4, &cursor) == CARMP_EINVAL);
    /* a flipped byte is caught by the CRC */
    char *raw = (char *)r.key;
    raw[0] ^= 0x20;
    CHECK(carmp_table_log_seek(t.mem, 0, &cursor) == CARMP_OK);
    CHECK(carmp_table_log_next(t.mem, &cursor, &r) == -1);
    CHECK(carmp_table_check(t.mem) == -15);
    raw[0] ^= 0x20;
    CHECK(carmp_table_check(t.mem) == 0);
    drop_table(t);
    passed++;
}

static void test_ring_drops_oldest(void) {
    table_t t = make_table(8, 4096, 512);
    char value[64];
    for (int i = 0; i < 200; i++) {
        snprintf(value, sizeof value, "value-%d-%.*s", i, i % 40, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        CHECK(put1(t.mem, i % 2 ? "odd" : "even", value, "act") == CARMP_OK);
        CHECK(carmp_table_check(t.mem) == 0);
    }
    carmp_table_statistics s;
    carmp_table_stats(t.mem, &s);
    CHECK(s.log_next == 200 && s.log_first > 150 && s.log_dropped == s.log_first);
    uint64_t cursor;
    carmp_transition r;
    CHECK(carmp_table_log_seek(t.mem, s.log_first, &cursor) == CARMP_OK);
    for (uint64_t i = s.log_first; i < 200; i++)
        CHECK(carmp_table_log_next(t.mem, &cursor, &r) == 1 && r.index == i);
    /* a record larger than the whole ring is counted, as dropped, and empties the ring */
    char big[1000];
    memset(big, 'b', sizeof big - 1);
    big[sizeof big - 1] = 0;
    CHECK(put1(t.mem, "big", big, "act") == CARMP_OK);
    carmp_table_stats(t.mem, &s);
    CHECK(s.log_next == 201 && s.log_first == 201 && s.log_dropped == 201);
    CHECK(put1(t.mem, "after", "1", "act") == CARMP_OK);
    carmp_table_stats(t.mem, &s);
    CHECK(s.log_first == 201 && s.log_next == 202);
    CHECK(carmp_table_check(t.mem) == 0);
    drop_table(t);
    passed++;
}

static void test_abort_restores_map_and_log(void) {
    table_t t = make_table(16, 4096, 1024);
    char buf[64];
    carmp_table_change c;
    CHECK(put1(t.mem, "a", "1", "x") == CARMP_OK && put1(t.mem, "b", "2", "x") == CARMP_OK);
    carmp_table_begin(t.mem, 5);
    CHECK(carmp_table_put(t.mem, "a", 1, "10", 2, 0, "y", 1, 0, &c) == CARMP_OK);
    CHECK(carmp_table_put(t.mem, "a", 1, "11", 2, 0, "y", 1, 0, &c) == CARMP_OK);
    CHECK(c.old_length == 2 && memcmp(c.old_value, "10", 2) == 0);
    CHECK(carmp_table_remove(t.mem, "b", 1, "y", 1, 0, &c) == CARMP_OK && c.old_version);
    CHECK(carmp_table_put(t.mem, "c", 1, "3", 1, 0, "y", 1, 0, &c) == CARMP_OK);
    CHECK(carmp_table_remove(t.mem, "c", 1, "y", 1, 0, &c) == CARMP_OK && c.old_version);
    CHECK(carmp_table_put(t.mem, "d", 1, "4", 1, 0, "y", 1, 0, &c) == CARMP_OK);
    CHECK(carmp_table_abort(t.mem) == CARMP_OK);
    CHECK(get1(t.mem, "a", buf, sizeof buf, NULL) && strcmp(buf, "1") == 0);
    CHECK(get1(t.mem, "b", buf, sizeof buf, NULL) && strcmp(buf, "2") == 0);
    CHECK(!get1(t.mem, "c", buf, sizeof buf, NULL) && !get1(t.mem, "d", buf, sizeof buf, NULL));
    uint64_t first, next;
    carmp_table_log_bounds(t.mem, &first, &next);
    CHECK(first == 0 && next == 2);
    CHECK(carmp_table_check(t.mem) == 0);
    drop_table(t);
    passed++;
}

static void test_clear_and_truncate_restore_a_snapshot(void) {
    table_t t = make_table(4, 4096, 1024);
    char buf[64];
    for (int i = 0; i < 4; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        CHECK(put1(t.mem, key, "old", "x") == CARMP_OK);
    }
    /* a full table can be replaced whole in one batch: retired entries wait in the spare half */
    carmp_table_change c;
    carmp_table_begin(t.mem, 9);
    CHECK(carmp_table_clear(t.mem) == CARMP_OK);
    for (int i = 0; i < 4; i++) {
        char key[16];
        snprintf(key, sizeof key, "n%d", i);
        CHECK(carmp_table_put(t.mem, key, 2, "new", 3, 0, "", 0, CARMP_TABLE_UNLOGGED, &c) == CARMP_OK);
    }
    CHECK(carmp_table_put(t.mem, "n0", 2, "again", 5, 0, "", 0, CARMP_TABLE_UNLOGGED, &c) == CARMP_OK);
    CHECK(carmp_table_truncate_log(t.mem, 2) == CARMP_OK);
    CHECK(carmp_table_put(t.mem, "n1", 2, "x", 1, 0, "", 0, 0, &c) == CARMP_EINVAL);
    CHECK(carmp_table_commit(t.mem) == CARMP_OK);
    CHECK(!get1(t.mem, "k0", buf, sizeof buf, NULL));
    CHECK(get1(t.mem, "n0", buf, sizeof buf, NULL) && strcmp(buf, "again") == 0);
    uint64_t first, next;
    carmp_table_log_bounds(t.mem, &first, &next);
    CHECK(first == 0 && next == 2);
    CHECK(carmp_table_check(t.mem) == 0);
    CHECK(put1(t.mem, "n1", "y", "x") == CARMP_OK);
    carmp_table_log_bounds(t.mem, &first, &next);
    CHECK(next == 3);
    carmp_table_begin(t.mem, 9);
    CHECK(carmp_table_truncate_log(t.mem, 4) == CARMP_EINVAL);
    CHECK(carmp_table_truncate_log(t.mem, 0) == CARMP_OK);
    CHECK(carmp_table_commit(t.mem) == CARMP_OK);
    carmp_table_log_bounds(t.mem, &first, &next);
    CHECK(first == 0 && next == 0);
    uint64_t cursor = 0;
    int items = 0;
    carmp_table_item item;
    while (carmp_table_next(t.mem, &cursor, &item) == 1) items++;
    CHECK(items == 4);
    CHECK(carmp_table_check(t.mem) == 0);
    drop_table(t);
    passed++;
}

/* Random puts and removes against a plain model; space is reused, never leaked. */
static void test_churn_matches_a_model(void) {
    enum { KEYS = 64 };
    table_t t = make_table(KEYS, 1 << 13, 2048);
    static char model[KEYS][200];
    static int present[KEYS];
    char key[16], value[200], buf[256];
    unsigned seed = 7;
    for (int round = 0; round < 20000; round++) {
        int k = rand_r(&seed) % KEYS;
        snprintf(key, sizeof key, "key%d", k);
        if (rand_r(&seed) % 3 == 0) {
            CHECK(remove1(t.mem, key) == present[k]);
            present[k] = 0;
        } else {
            int n = rand_r(&seed) % 150;
            memset(value, 'a' + round % 26, (size_t)n);
            value[n] = 0;
            carmp_status st = put1(t.mem, key, value, "churn");
            CHECK(st == CARMP_OK || st == CARMP_FULL);
            if (st == CARMP_OK) {
                strcpy(model[k], value);
                present[k] = 1;
            }
        }
        if (round % 997 == 0) CHECK(carmp_table_check(t.mem) == 0);
    }
    for (int k = 0; k < KEYS; k++) {
        snprintf(key, sizeof key, "key%d", k);
        const char *got = get1(t.mem, key, buf, sizeof buf, NULL);
        CHECK(present[k] ? got && strcmp(got, model[k]) == 0 : got == NULL);
        remove1(t.mem, key);
    }
    carmp_table_statistics s;
    carmp_table_stats(t.mem, &s);
    CHECK(s.keys == 0 && s.bytes_used == 0);
    CHECK(carmp_table_check(t.mem) == 0);
    /* the whole arena is one free block again: the largest value fits */
    memset(value, 'z', 190);
    value[190] = 0;
    CHECK(put1(t.mem, "whole", value, "x") == CARMP_OK);
    drop_table(t);
    passed++;
}

/* A copy of memory taken mid-batch is what a killed writer leaves: recovery undoes it. */
static void test_recover_an_image_of_an_open_batch(void) {
    table_t t = make_table(8, 4096, 1024);
    table_t image = make_table(8, 4096, 1024);
    char buf[64];
    carmp_table_change c;
    CHECK(put1(t.mem, "a", "1", "x") == CARMP_OK && put1(t.mem, "b", "2", "x") == CARMP_OK);
    const char *ops[] = {"a", "b", "c", "a"};
    for (int stop = 0; stop <= 4; stop++) {
        carmp_table_begin(t.mem, 3);
        for (int i = 0; i < stop; i++) {
            if (i == 1)
                carmp_table_remove(t.mem, ops[i], 1, "y", 1, 0, &c);
            else
                carmp_table_put(t.mem, ops[i], 1, "new", 3, 0, "y", 1, 0, &c);
        }
        memcpy(image.mem, t.mem, t.size); /* the writer dies here */
        carmp_table_abort(t.mem);
        int repaired = 0;
        CHECK(carmp_table_recover(image.mem, &repaired) == CARMP_OK && repaired == 1);
        CHECK(carmp_table_check(image.mem) == 0);
        CHECK(get1(image.mem, "a", buf, sizeof buf, NULL) && strcmp(buf, "1") == 0);
        CHECK(get1(image.mem, "b", buf, sizeof buf, NULL) && strcmp(buf, "2") == 0);
        CHECK(!get1(image.mem, "c", buf, sizeof buf, NULL));
        carmp_table_statistics s;
        carmp_table_stats(image.mem, &s);
        CHECK(s.recoveries == 1 && s.log_next == 2);
        CHECK(carmp_table_recover(image.mem, &repaired) == CARMP_OK && repaired == 0);
    }
    drop_table(t);
    drop_table(image);
    passed++;
}

/* ---- processes ---------------------------------------------------------------------- */

enum { HAMMER_KEYS = 32 };

/* Values check themselves: "<key index>:<generation>:" then generation-dependent filler. */
static size_t make_value(char *out, int key, unsigned gen) {
    int n = snprintf(out, 64, "%d:%u:", key, gen);
    size_t fill = gen % 300;
    memset(out + n, 'a' + (int)((gen + (unsigned)key) % 26), fill);
    return (size_t)n + fill;
}

static int value_is_whole(const char *value, size_t length, int key) {
    char expected[512];
    int k;
    unsigned gen;
    if (sscanf(value, "%d:%u:", &k, &gen) != 2 || k != key) return 0;
    size_t n = make_value(expected, key, gen);
    return n == length && memcmp(expected, value, n) == 0;
}

/* Writes batches of random keys forever (under the lock), until killed. */
static void write_forever(void *t, void *lock, unsigned seed) {
    char key[16], value[512];
    carmp_table_change c;
    for (unsigned gen = seed;; gen++) {
        carmp_status st = carmp_lock_timed(lock, -1);
        if (st == CARMP_OWNERDEAD) {
            int repaired;
            carmp_table_recover(t, &repaired);
        }
        carmp_table_begin(t, gen);
        int ops = 1 + (int)(gen % 4);
        for (int i = 0; i < ops; i++) {
            int k = rand_r(&seed) % HAMMER_KEYS;
            snprintf(key, sizeof key, "k%d", k);
            if (rand_r(&seed) % 5 == 0)
                carmp_table_remove(t, key, strlen(key), "w", 1, 0, &c);
            else
                carmp_table_put(t, key, strlen(key), value, make_value(value, k, gen), 0, "w", 1,
                                0, &c);
        }
        carmp_table_commit(t);
        carmp_lock_release(lock);
    }
}

/* Reads every key over and over; exits 1 on a torn or foreign value. */
static void read_until(void *t, volatile uint64_t *stop) {
    char key[16], value[512];
    while (!*stop) {
        for (int k = 0; k < HAMMER_KEYS; k++) {
            snprintf(key, sizeof key, "k%d", k);
            carmp_table_value v;
            carmp_status st = carmp_table_get(t, key, strlen(key), value, sizeof value, &v);
            if (st == CARMP_BUSY) continue; /* a dead writer: the parent recovers it */
            if (st != CARMP_OK || (v.version && !value_is_whole(value, v.length, k))) _exit(1);
        }
    }
    _exit(0);
}

static void random_pause(unsigned *seed) {
    struct timespec pause = {0, 100000 + rand_r(seed) % 2000000};
    nanosleep(&pause, NULL);
}

/* One kill-and-recover round: 1 when the kill landed inside a batch, -1 on a broken table. */
static int kill_a_writer(void *t, void *lock, int round, unsigned *seed) {
    pid_t writer = fork();
    if (writer == 0) write_forever(t, lock, (unsigned)round * 7919u);
    random_pause(seed);
    kill(writer, SIGKILL);
    waitpid(writer, NULL, 0);
    carmp_status st = carmp_lock_timed(lock, 1000000000);
    if (st != CARMP_OK && st != CARMP_OWNERDEAD) return -1;
    int repaired = 0;
    if (st == CARMP_OWNERDEAD && carmp_table_recover(t, &repaired) != CARMP_OK) repaired = -1;
    int rc = carmp_table_check(t);
    carmp_lock_release(lock);
    if (rc != 0) fprintf(stderr, "round %d: check %d\n", round, rc);
    return rc != 0 ? -1 : repaired;
}

/* SIGKILL writers at random moments, many times, while a reader hammers: every kill is
 * recovered, the table stays whole, and the reader never sees a torn value. */
static void test_sigkill_writers_under_readers(void) {
    enum { ROUNDS = 150 };
    table_t t = make_table(HAMMER_KEYS, 1 << 15, 4096);
    char *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    void *lock = shared;
    volatile uint64_t *stop = (uint64_t *)(shared + 128);
    CHECK(carmp_lock_init(lock) == CARMP_OK);
    pid_t reader = fork();
    if (reader == 0) read_until(t.mem, stop);
    unsigned seed = 99;
    int mid_batch = 0, broken = 0;
    for (int round = 0; round < ROUNDS && !broken; round++) {
        int landed = kill_a_writer(t.mem, lock, round, &seed);
        broken = landed < 0;
        mid_batch += landed > 0;
    }
    *stop = 1; /* the reader stops whatever happened above */
    int status = 0;
    waitpid(reader, &status, 0);
    munmap(shared, 4096);
    drop_table(t);
    CHECK(!broken);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    printf("table: %d of %d kills landed inside a batch\n", mid_batch, ROUNDS);
    CHECK(mid_batch > 0);
    passed++;
}

int main(void) {
    test_config_and_attach();
    test_put_get_remove();
    test_limits_and_misuse();
    test_transitions();
    test_ring_drops_oldest();
    test_abort_restores_map_and_log();
    test_clear_and_truncate_restore_a_snapshot();
    test_churn_matches_a_model();
    test_recover_an_image_of_an_open_batch();
    test_sigkill_writers_under_readers();
    return report("table");
}
