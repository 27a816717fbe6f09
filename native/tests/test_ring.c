/* C unit tests of the event ring (native/ring.c); run under ASan/UBSan by `make native-test`. */
#define _GNU_SOURCE
#include <errno.h>
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

#define SECOND 1000000000LL

typedef struct {
    void *mem;
    size_t size;
    carmp_ring ring;
} test_ring;

static int new_ring(test_ring *t, uint64_t capacity, uint64_t slots, uint32_t readers,
                    uint32_t max_record, uint64_t first_seq) {
    t->size = carmp_ring_size(capacity, slots, readers);
    t->mem = mmap(NULL, t->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (t->mem == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return carmp_ring_init(&t->ring, t->mem, t->size, capacity, slots, readers, max_record,
                           first_seq) == CARMP_OK;
}

static void free_ring(test_ring *t) { munmap(t->mem, t->size); }

static uint32_t me(void) { return (uint32_t)getpid(); }

static int append_text(const carmp_ring *ring, const char *text, uint64_t *seq) {
    return carmp_ring_append(ring, text, (uint32_t)strlen(text), me(), 0, 0, seq) == CARMP_OK;
}

/* Reads seq and checks it holds `text`. */
static int holds(const carmp_ring *ring, uint64_t seq, const char *text) {
    char buf[4096];
    carmp_ring_record rec;
    uint64_t resume;
    if (carmp_ring_read(ring, seq, buf, sizeof buf, &rec, &resume) != CARMP_RING_RECORD) return 0;
    return rec.seq == seq && rec.len == strlen(text) && memcmp(buf, text, rec.len) == 0 &&
           rec.pid != 0 && rec.timestamp_ns != 0;
}

static carmp_ring_outcome outcome_at(const carmp_ring *ring, uint64_t seq, uint64_t *resume) {
    char buf[4096];
    carmp_ring_record rec;
    return carmp_ring_read(ring, seq, buf, sizeof buf, &rec, resume);
}

/* ---- geometry ----------------------------------------------------------------------- */

static void test_geometry_is_validated(void) {
    CHECK(carmp_ring_size(4096, 64, 4) == CARMP_RING_HEADER_SIZE + 64 * 32 + 4 * 64 + 4096);
    CHECK(carmp_ring_size(4000, 64, 4) == 0);           /* capacity not a power of two */
    CHECK(carmp_ring_size(4096, 48, 4) == 0);           /* slots not a power of two */
    CHECK(carmp_ring_size(32, 64, 4) == 0);             /* too small */
    CHECK(carmp_ring_size(4096, 64, CARMP_RING_MAX_READERS + 1) == 0);
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 4, 1024, 0));
    carmp_ring other;
    CHECK(carmp_ring_init(&other, t.mem, t.size, 4096, 64, 4, 1025, 0) == CARMP_EINVAL); /* > cap/4 */
    CHECK(carmp_ring_init(&other, t.mem, t.size - 1, 4096, 64, 4, 1024, 0) == CARMP_EINVAL);
    CHECK(carmp_ring_init(&other, (char *)t.mem + 8, t.size - 8, 1024, 8, 0, 64, 0) == CARMP_EINVAL);
    CHECK(carmp_ring_attach(&other, t.mem, t.size) == CARMP_OK);
    CHECK(other.capacity == 4096 && other.slots == 64 && other.readers == 4 &&
          other.max_record == 1024 && other.first_seq == 0);
    CHECK(carmp_ring_attach(&other, t.mem, t.size - 1) == CARMP_EINVAL); /* smaller than it says */
    ((unsigned char *)t.mem)[0] ^= 1;                                   /* bad magic */
    CHECK(carmp_ring_attach(&other, t.mem, t.size) == CARMP_EINVAL);
    free_ring(&t);
    passed++;
}

/* ---- writing and reading -------------------------------------------------------------- */

static void test_append_then_read_in_order(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 512, 100));
    uint64_t seq, resume;
    CHECK(outcome_at(&t.ring, 100, &resume) == CARMP_RING_EMPTY);
    CHECK(append_text(&t.ring, "first", &seq) && seq == 100);
    CHECK(append_text(&t.ring, "second record", &seq) && seq == 101);
    CHECK(holds(&t.ring, 100, "first"));
    CHECK(holds(&t.ring, 101, "second record"));
    CHECK(outcome_at(&t.ring, 102, &resume) == CARMP_RING_EMPTY);
    /* below the first sequence number: lost, resume at the first */
    CHECK(outcome_at(&t.ring, 7, &resume) == CARMP_RING_LOST && resume == 100);
    carmp_ring_stats stats;
    carmp_ring_stats_of(&t.ring, &stats);
    CHECK(stats.next_seq == 102 && stats.oldest_seq == 100 && stats.next_pos == 8 + 16);
    free_ring(&t);
    passed++;
}

static void test_explicit_timestamp_is_kept(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 512, 0));
    uint64_t seq;
    CHECK(carmp_ring_append(&t.ring, "x", 1, me(), 1234567, 0, &seq) == CARMP_OK);
    char buf[16];
    carmp_ring_record rec;
    uint64_t resume;
    CHECK(carmp_ring_read(&t.ring, seq, buf, sizeof buf, &rec, &resume) == CARMP_RING_RECORD);
    CHECK(rec.timestamp_ns == 1234567);
    free_ring(&t);
    passed++;
}

static void test_bad_lengths_are_refused(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 100, 0));
    char big[101] = {0};
    uint64_t seq;
    CHECK(carmp_ring_append(&t.ring, big, 101, me(), 0, 0, &seq) == CARMP_EINVAL);
    CHECK(carmp_ring_append(&t.ring, big, 0, me(), 0, 0, &seq) == CARMP_EINVAL);
    CHECK(carmp_ring_append(&t.ring, big, 1, 0, 0, 0, &seq) == CARMP_EINVAL); /* pid 0 */
    CHECK(carmp_ring_append(&t.ring, big, 100, me(), 0, 0, &seq) == CARMP_OK && seq == 0);
    carmp_ring_stats stats;
    carmp_ring_stats_of(&t.ring, &stats);
    CHECK(stats.next_seq == 1); /* refusals reserve nothing */
    free_ring(&t);
    passed++;
}

static void test_each_step_of_a_write_is_visible(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 512, 0));
    carmp_ring_reservation res;
    uint64_t resume;
    CHECK(carmp_ring_reserve(&t.ring, 5, me(), 0, &res) == CARMP_OK && res.seq == 0);
    CHECK(outcome_at(&t.ring, 0, &resume) == CARMP_RING_PENDING); /* reserved, not claimed */
    CHECK(carmp_ring_claim(&t.ring, &res) == CARMP_OK);
    CHECK(outcome_at(&t.ring, 0, &resume) == CARMP_RING_PENDING); /* being written */
    CHECK(carmp_ring_wait(&t.ring, 0, 1000000) == CARMP_TIMEOUT);
    memcpy(carmp_ring_payload(&t.ring, &res), "hello", 5);
    CHECK(carmp_ring_commit(&t.ring, &res, 0) == CARMP_OK);
    CHECK(carmp_ring_wait(&t.ring, 0, 1000000) == CARMP_OK);
    CHECK(holds(&t.ring, 0, "hello"));
    free_ring(&t);
    passed++;
}

/* ---- wrapping ------------------------------------------------------------------------- */

static void test_wrapping_loses_exactly_the_overwritten(void) {
    test_ring t;
    CHECK(new_ring(&t, 1024, 256, 0, 200, 0)); /* the bytes run out before the descriptors */
    char text[64];
    uint64_t seq;
    for (int i = 0; i < 500; i++) {
        int n = snprintf(text, sizeof text, "record %d %.*s", i, i % 37, "abcdefghijklmnopqrstuvwxyz0123456789");
        CHECK(carmp_ring_append(&t.ring, text, (uint32_t)n, me(), 0, 0, &seq) == CARMP_OK);
        CHECK(seq == (uint64_t)i);
    }
    /* A reader from 0 loses a prefix, then reads every later record up to the end. */
    uint64_t next = 0, lost = 0, read = 0, resume;
    char buf[256];
    carmp_ring_record rec;
    for (;;) {
        carmp_ring_outcome o = carmp_ring_read(&t.ring, next, buf, sizeof buf, &rec, &resume);
        if (o == CARMP_RING_EMPTY) break;
        if (o == CARMP_RING_LOST) {
            CHECK(resume > next);
            lost += resume - next;
            next = resume;
            continue;
        }
        CHECK(o == CARMP_RING_RECORD);
        int n = snprintf(text, sizeof text, "record %d %.*s", (int)next, (int)(next % 37), "abcdefghijklmnopqrstuvwxyz0123456789");
        CHECK(rec.len == (uint32_t)n && memcmp(buf, text, rec.len) == 0);
        CHECK((rec.pos & 1023) + rec.len <= 1024); /* never split across the end */
        read++;
        next++;
    }
    CHECK(next == 500 && lost + read == 500 && read > 0 && lost > 0);
    carmp_ring_stats stats;
    carmp_ring_stats_of(&t.ring, &stats);
    CHECK(stats.oldest_seq == lost); /* the oldest readable is where the reader resumed */
    free_ring(&t);
    passed++;
}

static void test_descriptor_reuse_is_lost_too(void) {
    test_ring t;
    CHECK(new_ring(&t, 65536, 4, 0, 64, 0)); /* few descriptors, plenty of bytes */
    uint64_t seq, resume;
    for (int i = 0; i < 10; i++) CHECK(append_text(&t.ring, "r", &seq));
    CHECK(outcome_at(&t.ring, 5, &resume) == CARMP_RING_LOST && resume == 6);
    CHECK(holds(&t.ring, 6, "r") && holds(&t.ring, 9, "r"));
    free_ring(&t);
    passed++;
}

/* ---- holes ------------------------------------------------------------------------------ */

static void test_unclaimed_hole_is_abandoned_by_age_or_by_caller(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 512, 0));
    carmp_ring_reservation dead;
    uint64_t seq, resume;
    CHECK(carmp_ring_reserve(&t.ring, 8, me(), 0, &dead) == CARMP_OK); /* writer "dies" here */
    CHECK(carmp_ring_resolve(&t.ring, 0, SECOND, 0) == 0);             /* frontier: unknown age */
    CHECK(append_text(&t.ring, "later", &seq) && seq == 1);
    CHECK(carmp_ring_resolve(&t.ring, 0, SECOND, 0) == 0);             /* later claim is young */
    CHECK(outcome_at(&t.ring, 0, &resume) == CARMP_RING_PENDING);
    CHECK(carmp_ring_resolve(&t.ring, 0, 0, 0) == 1);                   /* older than a 0 bound */
    CHECK(outcome_at(&t.ring, 0, &resume) == CARMP_RING_ABANDONED);
    CHECK(holds(&t.ring, 1, "later"));
    /* the stalled writer learns it was too late */
    CHECK(carmp_ring_claim(&t.ring, &dead) == CARMP_TIMEOUT);
    /* the caller's own clock: everything below stale_below is old */
    carmp_ring_reservation a, b;
    CHECK(carmp_ring_reserve(&t.ring, 8, me(), 0, &a) == CARMP_OK && a.seq == 2);
    CHECK(carmp_ring_reserve(&t.ring, 8, me(), 0, &b) == CARMP_OK && b.seq == 3);
    CHECK(carmp_ring_resolve(&t.ring, 2, SECOND, 3) == 1); /* only 2: 3 was reserved later */
    CHECK(outcome_at(&t.ring, 2, &resume) == CARMP_RING_ABANDONED);
    CHECK(outcome_at(&t.ring, 3, &resume) == CARMP_RING_PENDING);
    carmp_ring_stats stats;
    carmp_ring_stats_of(&t.ring, &stats);
    CHECK(stats.abandoned == 2);
    free_ring(&t);
    passed++;
}

static void test_claimed_hole_of_a_dead_writer_is_abandoned(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 512, 0));
    pid_t child = fork();
    if (child == 0) {
        carmp_ring_reservation res;
        carmp_ring_reserve(&t.ring, 16, me(), 0, &res);
        carmp_ring_claim(&t.ring, &res);
        memcpy(carmp_ring_payload(&t.ring, &res), "half wri", 8);
        _exit(0); /* never commits */
    }
    int status;
    waitpid(child, &status, 0);
    uint64_t resume;
    CHECK(outcome_at(&t.ring, 0, &resume) == CARMP_RING_PENDING);
    CHECK(carmp_ring_resolve(&t.ring, 0, 3600 * SECOND, 0) == 1); /* dead pid: no waiting */
    char buf[64];
    carmp_ring_record rec;
    CHECK(carmp_ring_read(&t.ring, 0, buf, sizeof buf, &rec, &resume) == CARMP_RING_ABANDONED);
    CHECK(rec.pid == (uint32_t)child && rec.timestamp_ns != 0);
    free_ring(&t);
    passed++;
}

static void test_live_writer_is_not_abandoned_unless_stale(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 512, 0));
    carmp_ring_reservation res;
    CHECK(carmp_ring_reserve(&t.ring, 4, me(), 0, &res) == CARMP_OK);
    CHECK(carmp_ring_claim(&t.ring, &res) == CARMP_OK);
    CHECK(carmp_ring_resolve(&t.ring, 0, 0, 0) == 0); /* alive, and the caller saw no stall */
    CHECK(carmp_ring_resolve(&t.ring, 0, 0, 1) == 1); /* stalled past the caller's bound */
    memcpy(carmp_ring_payload(&t.ring, &res), "late", 4);
    CHECK(carmp_ring_commit(&t.ring, &res, 0) == CARMP_TIMEOUT);
    uint64_t resume;
    CHECK(outcome_at(&t.ring, 0, &resume) == CARMP_RING_ABANDONED);
    free_ring(&t);
    passed++;
}

/* ---- corruption never crashes or hangs ---------------------------------------------- */

static void test_flipped_payload_byte_is_corrupt(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 512, 0));
    uint64_t seq, resume;
    CHECK(append_text(&t.ring, "precious", &seq));
    char *data = (char *)t.mem + CARMP_RING_HEADER_SIZE + 64 * CARMP_RING_DESCRIPTOR_SIZE;
    data[3] ^= 0x20;
    CHECK(outcome_at(&t.ring, 0, &resume) == CARMP_RING_CORRUPT);
    free_ring(&t);
    passed++;
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Random bytes anywhere in the ring: every read still ends in a defined outcome, and a
 * reader that follows resume/next reaches the end in bounded steps. */
static void test_random_bytes_never_crash_or_hang_readers(void) {
    for (int round = 0; round < 300; round++) {
        test_ring t;
        CHECK(new_ring(&t, 2048, 32, 2, 256, 0));
        uint64_t seq;
        for (int i = 0; i < 60; i++) CHECK(append_text(&t.ring, "a record of modest size", &seq));
        unsigned char *bytes = t.mem;
        int scribbles = 1 + (int)(next_random() % 40);
        for (int i = 0; i < scribbles; i++) {
            size_t at = next_random() % t.size;
            if (round % 3 == 0) at = next_random() % (CARMP_RING_HEADER_SIZE + 32 * CARMP_RING_DESCRIPTOR_SIZE);
            bytes[at] = (unsigned char)next_random();
        }
        char buf[256];
        carmp_ring_record rec;
        uint64_t next = next_random() % 80, resume;
        for (int steps = 0; steps < 10000; steps++) {
            carmp_ring_outcome o = carmp_ring_read(&t.ring, next, buf, sizeof buf, &rec, &resume);
            CHECK(o <= CARMP_RING_LOST);
            if (o == CARMP_RING_EMPTY) break;
            if (o == CARMP_RING_PENDING) {
                carmp_ring_resolve(&t.ring, next, 0, next + 1);
                if (outcome_at(&t.ring, next, &resume) == CARMP_RING_PENDING) break; /* claimed by a live pid */
                continue;
            }
            if (o == CARMP_RING_LOST) {
                CHECK(resume > next);
                next = resume;
                if (next > (1ULL << 40)) break; /* a scribbled frontier far away */
                continue;
            }
            if (o == CARMP_RING_RECORD) CHECK(rec.len <= 256);
            next++;
        }
        /* writers keep working over the scribbled ring without crashing */
        for (int i = 0; i < 20; i++) carmp_ring_append(&t.ring, "after", 5, me(), 0, 0, &seq);
        carmp_ring_stats stats;
        carmp_ring_stats_of(&t.ring, &stats);
        free_ring(&t);
    }
    passed++;
}

/* ---- processes ---------------------------------------------------------------------------- */

enum { WRITERS = 4, PER_WRITER = 20000 };

static void test_concurrent_writers_get_gap_free_ordered_seqs(void) {
    test_ring t;
    CHECK(new_ring(&t, 1 << 22, 1 << 17, 0, 64, 0));
    for (int w = 0; w < WRITERS; w++) {
        if (fork() == 0) {
            char text[32];
            uint64_t seq;
            for (int i = 0; i < PER_WRITER; i++) {
                int n = snprintf(text, sizeof text, "%d:%d", w, i);
                if (carmp_ring_append(&t.ring, text, (uint32_t)n, me(), 0, 0, &seq) != CARMP_OK) _exit(1);
            }
            _exit(0);
        }
    }
    int ok = 1, status;
    for (int w = 0; w < WRITERS; w++) {
        wait(&status);
        ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    CHECK(ok);
    int expect[WRITERS] = {0};
    char buf[64];
    carmp_ring_record rec;
    uint64_t resume;
    for (uint64_t seq = 0; seq < WRITERS * PER_WRITER; seq++) {
        CHECK(carmp_ring_read(&t.ring, seq, buf, sizeof buf - 1, &rec, &resume) == CARMP_RING_RECORD);
        buf[rec.len] = '\0';
        int w, i;
        CHECK(sscanf(buf, "%d:%d", &w, &i) == 2 && w >= 0 && w < WRITERS);
        CHECK(i == expect[w]); /* each writer's records in its own order */
        expect[w]++;
    }
    CHECK(outcome_at(&t.ring, WRITERS * PER_WRITER, &resume) == CARMP_RING_EMPTY);
    free_ring(&t);
    passed++;
}

/* A reader racing writers over a small ring accounts for every record exactly once:
 * read intact, or lost in a counted gap. */
static void test_racing_reader_accounts_for_every_record(void) {
    test_ring t;
    CHECK(new_ring(&t, 8192, 64, 0, 64, 0));
    for (int w = 0; w < 2; w++) {
        if (fork() == 0) {
            char text[32];
            uint64_t seq;
            for (int i = 0; i < PER_WRITER; i++) {
                int n = snprintf(text, sizeof text, "%d:%d", w, i);
                carmp_ring_append(&t.ring, text, (uint32_t)n, me(), 0, 0, &seq);
            }
            _exit(0);
        }
    }
    uint64_t next = 0, lost = 0, read = 0, resume;
    char buf[64];
    carmp_ring_record rec;
    while (next < 2 * PER_WRITER) {
        carmp_ring_outcome o = carmp_ring_read(&t.ring, next, buf, sizeof buf - 1, &rec, &resume);
        if (o == CARMP_RING_EMPTY || o == CARMP_RING_PENDING) {
            carmp_ring_wait(&t.ring, next, 10000000);
            continue;
        }
        if (o == CARMP_RING_LOST) {
            CHECK(resume > next);
            lost += resume - next;
            next = resume;
            continue;
        }
        CHECK(o == CARMP_RING_RECORD);
        buf[rec.len] = '\0';
        int w, i;
        CHECK(sscanf(buf, "%d:%d", &w, &i) == 2 && (w == 0 || w == 1) && i < PER_WRITER);
        read++;
        next++;
    }
    int status;
    wait(&status);
    wait(&status);
    CHECK(lost + read == 2 * PER_WRITER);
    free_ring(&t);
    passed++;
}

static void test_sigkill_at_random_points_leaves_no_stuck_record(void) {
    test_ring t;
    CHECK(new_ring(&t, 1 << 16, 1 << 10, 0, 64, 0));
    for (int round = 0; round < 200; round++) {
        pid_t child = fork();
        if (child == 0) {
            uint64_t seq;
            for (;;) carmp_ring_append(&t.ring, "doomed writer", 13, me(), 0, 0, &seq);
        }
        struct timespec pause = {0, (long)(next_random() % 300000)};
        nanosleep(&pause, NULL);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
    /* every reservation is now a record or a hole a reader can skip at once */
    carmp_ring_stats stats;
    carmp_ring_stats_of(&t.ring, &stats);
    char buf[64];
    carmp_ring_record rec;
    uint64_t resume, holes = 0;
    for (uint64_t seq = stats.oldest_seq; seq < stats.next_seq; seq++) {
        carmp_ring_outcome o = carmp_ring_read(&t.ring, seq, buf, sizeof buf, &rec, &resume);
        if (o == CARMP_RING_PENDING) {
            /* dead writers: a claimed hole goes at once; an unclaimed one on our word
             * that everything below next_seq is old (all writers are gone) */
            CHECK(carmp_ring_resolve(&t.ring, seq, SECOND, stats.next_seq) >= 1);
            o = carmp_ring_read(&t.ring, seq, buf, sizeof buf, &rec, &resume);
        }
        CHECK(o == CARMP_RING_RECORD || o == CARMP_RING_ABANDONED);
        if (o == CARMP_RING_RECORD) CHECK(rec.len == 13 && memcmp(buf, "doomed writer", 13) == 0);
        holes += o == CARMP_RING_ABANDONED;
    }
    CHECK(holes <= 200); /* at most one append in flight per killed writer */
    uint64_t seq;
    CHECK(append_text(&t.ring, "survivor", &seq) && holds(&t.ring, seq, "survivor"));
    free_ring(&t);
    passed++;
}

static void test_reader_sleeps_until_a_commit_wakes_it(void) {
    test_ring t;
    CHECK(new_ring(&t, 4096, 64, 0, 512, 0));
    pid_t child = fork();
    if (child == 0) {
        uint64_t resume;
        while (outcome_at(&t.ring, 0, &resume) != CARMP_RING_RECORD)
            if (carmp_ring_wait(&t.ring, 0, 5 * SECOND) == CARMP_TIMEOUT) _exit(1);
        _exit(0);
    }
    usleep(20000);
    uint64_t seq;
    CHECK(append_text(&t.ring, "wake up", &seq));
    int status;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    free_ring(&t);
    passed++;
}

/* ---- backpressure ------------------------------------------------------------------------- */

static void test_backpressure_waits_for_a_registered_reader(void) {
    test_ring t;
    CHECK(new_ring(&t, 1024, 16, 2, 100, 0));
    uint32_t slot;
    CHECK(carmp_ring_register(&t.ring, me(), 0, &slot) == CARMP_OK);
    uint64_t seq, appended = 0;
    while (carmp_ring_append(&t.ring, "0123456789abcdef0123456789abcdef", 32, me(), 0, 0, &seq) == CARMP_OK)
        appended++;
    CHECK(appended == 16); /* 16 descriptors before the first unread one would be reused */
    CHECK(carmp_ring_append(&t.ring, "x", 1, me(), 0, 0, &seq) == CARMP_FULL);
    CHECK(carmp_ring_append(&t.ring, "x", 1, me(), 0, 5000000, &seq) == CARMP_TIMEOUT);
    carmp_ring_stats stats;
    carmp_ring_stats_of(&t.ring, &stats);
    CHECK(stats.full_waits == 2 && stats.readers_registered == 1); /* the timeout-0 tries */
    /* nothing was overwritten */
    CHECK(holds(&t.ring, 0, "0123456789abcdef0123456789abcdef"));
    /* a writer in another process blocks until the reader advances */
    pid_t child = fork();
    if (child == 0)
        _exit(carmp_ring_append(&t.ring, "unblocked", 9, me(), 0, 10 * SECOND, &seq) == CARMP_OK ? 0 : 1);
    usleep(20000);
    carmp_ring_advance(&t.ring, slot, 4, 4 * 32);
    int status;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(holds(&t.ring, 16, "unblocked"));
    carmp_ring_unregister(&t.ring, slot);
    CHECK(carmp_ring_append(&t.ring, "free again", 10, me(), 0, 0, &seq) == CARMP_OK);
    free_ring(&t);
    passed++;
}

static void test_dead_reader_is_reaped(void) {
    test_ring t;
    CHECK(new_ring(&t, 1024, 16, 1, 100, 0));
    pid_t child = fork();
    if (child == 0) {
        uint32_t slot;
        _exit(carmp_ring_register(&t.ring, me(), 0, &slot) == CARMP_OK ? 0 : 1);
    }
    int status;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    uint32_t slot;
    CHECK(carmp_ring_register(&t.ring, me(), 0, &slot) == CARMP_FULL); /* the one slot is held */
    uint64_t seq;
    for (int i = 0; i < 16; i++) CHECK(append_text(&t.ring, "fill", &seq));
    CHECK(carmp_ring_append(&t.ring, "x", 1, me(), 0, 0, &seq) == CARMP_FULL);
    CHECK(carmp_ring_append(&t.ring, "x", 1, me(), 0, SECOND, &seq) == CARMP_OK); /* reaped */
    carmp_ring_stats stats;
    carmp_ring_stats_of(&t.ring, &stats);
    CHECK(stats.readers_reaped == 1 && stats.readers_registered == 0);
    CHECK(carmp_ring_register(&t.ring, me(), seq, &slot) == CARMP_OK);
    free_ring(&t);
    passed++;
}

int main(void) {
    test_geometry_is_validated();
    test_append_then_read_in_order();
    test_explicit_timestamp_is_kept();
    test_bad_lengths_are_refused();
    test_each_step_of_a_write_is_visible();
    test_wrapping_loses_exactly_the_overwritten();
    test_descriptor_reuse_is_lost_too();
    test_unclaimed_hole_is_abandoned_by_age_or_by_caller();
    test_claimed_hole_of_a_dead_writer_is_abandoned();
    test_live_writer_is_not_abandoned_unless_stale();
    test_flipped_payload_byte_is_corrupt();
    test_random_bytes_never_crash_or_hang_readers();
    test_concurrent_writers_get_gap_free_ordered_seqs();
    test_racing_reader_accounts_for_every_record();
    test_sigkill_at_random_points_leaves_no_stuck_record();
    test_reader_sleeps_until_a_commit_wakes_it();
    test_backpressure_waits_for_a_registered_reader();
    test_dead_reader_is_reaped();
    return report("ring");
}
