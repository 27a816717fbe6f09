/* C unit tests of channels and bells; run under ASan/UBSan by `make native-test`. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../carmp_native.h"
#include "check.h"

static void test_init_validates_capacity(void) {
    void *ch = shared_pages(carmp_channel_size(4096));
    CHECK(carmp_channel_init(ch, 100) == CARMP_EINVAL);
    CHECK(carmp_channel_init(ch, 32) == CARMP_EINVAL);
    CHECK(carmp_channel_init(ch, 4096) == CARMP_OK);
    CHECK(carmp_channel_max_message(ch) == 2048 - 8);
    munmap(ch, carmp_channel_size(4096));
    passed++;
}

static void test_send_peek_advance(void) {
    void *ch = shared_pages(carmp_channel_size(256));
    uint32_t tag;
    const void *payload;
    uint64_t length;
    CHECK(carmp_channel_init(ch, 256) == CARMP_OK);
    CHECK(carmp_channel_peek(ch, &tag, &payload, &length) == CARMP_EMPTY);
    CHECK(!carmp_channel_readable(ch));
    CHECK(carmp_channel_send(ch, 7, "hello", 5) == CARMP_OK);
    CHECK(carmp_channel_send(ch, 8, "", 0) == CARMP_OK);
    CHECK(carmp_channel_readable(ch) && carmp_channel_used(ch) == 16 + 8);
    CHECK(carmp_channel_peek(ch, &tag, &payload, &length) == CARMP_OK);
    CHECK(tag == 7 && length == 5 && memcmp(payload, "hello", 5) == 0);
    carmp_channel_advance(ch, length);
    CHECK(carmp_channel_peek(ch, &tag, &payload, &length) == CARMP_OK && tag == 8 && length == 0);
    carmp_channel_advance(ch, length);
    CHECK(carmp_channel_peek(ch, &tag, &payload, &length) == CARMP_EMPTY);
    CHECK(carmp_channel_send(ch, 1, payload, carmp_channel_max_message(ch) + 1) == CARMP_EINVAL);
    munmap(ch, carmp_channel_size(256));
    passed++;
}

static void test_full_then_room_again(void) {
    void *ch = shared_pages(carmp_channel_size(256));
    char buf[100] = {0};
    uint32_t tag;
    const void *payload;
    uint64_t length;
    CHECK(carmp_channel_init(ch, 256) == CARMP_OK);
    CHECK(carmp_channel_send(ch, 1, buf, 100) == CARMP_OK); /* 112 bytes */
    CHECK(carmp_channel_send(ch, 2, buf, 100) == CARMP_OK); /* 224 */
    CHECK(carmp_channel_send(ch, 3, buf, 100) == CARMP_FULL);
    CHECK(carmp_channel_peek(ch, &tag, &payload, &length) == CARMP_OK && tag == 1);
    carmp_channel_advance(ch, length);
    /* 32 bytes left at the end: the next record wraps behind a marker */
    CHECK(carmp_channel_send(ch, 3, buf, 100) == CARMP_OK);
    CHECK(carmp_channel_peek(ch, &tag, &payload, &length) == CARMP_OK && tag == 2);
    carmp_channel_advance(ch, length);
    CHECK(carmp_channel_peek(ch, &tag, &payload, &length) == CARMP_OK && tag == 3);
    CHECK((const char *)payload == (const char *)ch + CARMP_CHANNEL_HEADER + 8);
    carmp_channel_advance(ch, length);
    CHECK(carmp_channel_used(ch) == 0);
    munmap(ch, carmp_channel_size(256));
    passed++;
}

static void test_random_traffic_matches_a_model(void) {
    enum { CAP = 1024, ROUNDS = 200000 };
    void *ch = shared_pages(carmp_channel_size(CAP));
    unsigned char msg[600];
    uint32_t queue_tags[CAP], queue_lengths[CAP]; /* at most CAP/8 records fit */
    unsigned head = 0, tail = 0, next_tag = 0, expect_tag = 0;
    unsigned seed = 12345;
    CHECK(carmp_channel_init(ch, CAP) == CARMP_OK);
    for (int round = 0; round < ROUNDS; round++) {
        seed = seed * 1103515245u + 12345u;
        if ((seed >> 16) % 2) {
            uint32_t length = (seed >> 8) % (uint32_t)carmp_channel_max_message(ch);
            memset(msg, (int)(next_tag & 0xff), length);
            carmp_status st = carmp_channel_send(ch, next_tag, msg, length);
            if (st == CARMP_OK) {
                queue_tags[tail % CAP] = next_tag++;
                queue_lengths[tail % CAP] = length;
                tail++;
            } else {
                CHECK(st == CARMP_FULL && tail != head);
            }
        } else {
            uint32_t tag;
            const void *payload;
            uint64_t length;
            carmp_status st = carmp_channel_peek(ch, &tag, &payload, &length);
            if (head == tail) {
                CHECK(st == CARMP_EMPTY);
                continue;
            }
            CHECK(st == CARMP_OK && tag == queue_tags[head % CAP] && tag == expect_tag++);
            CHECK(length == queue_lengths[head % CAP]);
            for (uint64_t i = 0; i < length; i++)
                CHECK(((const unsigned char *)payload)[i] == (tag & 0xff));
            carmp_channel_advance(ch, length);
            head++;
        }
    }
    munmap(ch, carmp_channel_size(CAP));
    passed++;
}

static void test_corrupt_record_is_reported(void) {
    void *ch = shared_pages(carmp_channel_size(256));
    uint32_t tag;
    const void *payload;
    uint64_t length;
    CHECK(carmp_channel_init(ch, 256) == CARMP_OK);
    CHECK(carmp_channel_send(ch, 1, "abc", 3) == CARMP_OK);
    uint32_t bogus = 5000;
    memcpy((char *)ch + CARMP_CHANNEL_HEADER, &bogus, 4);
    CHECK(carmp_channel_peek(ch, &tag, &payload, &length) == CARMP_CORRUPT);
    munmap(ch, carmp_channel_size(256));
    passed++;
}

/* ring() with nobody asleep changes nothing; announce() always moves the seq, so a
 * sleeper that read the seq before checking its flags returns at once. */
static void test_announce_moves_the_seq_with_no_sleepers(void) {
    carmp_bell bell = {0, 0};
    uint32_t before = carmp_bell_seq(&bell);
    CHECK(carmp_bell_ring(&bell) == 0);
    CHECK(carmp_bell_seq(&bell) == before);
    CHECK(carmp_bell_announce(&bell) == 0);
    CHECK(carmp_bell_seq(&bell) == before + 1);
    uint32_t seq = carmp_bell_prepare(&bell);
    CHECK(seq == before + 1);
    CHECK(carmp_bell_sleep(&bell, before, 1000000000LL) == CARMP_OK); /* moved: no sleep */
    carmp_bell_cancel(&bell);
    CHECK(bell.sleepers == 0);
    passed++;
}

/* A producer process and a consumer process, both sleeping on bells when they must. */
static void test_two_processes_with_bells(void) {
    enum { CAP = 4096, MESSAGES = 200000 };
    char *mem = shared_pages(2 * sizeof(carmp_bell) + carmp_channel_size(CAP));
    carmp_bell *readable = (carmp_bell *)mem, *writable = readable + 1;
    void *ch = mem + 64;
    CHECK(carmp_channel_init(ch, CAP) == CARMP_OK);
    pid_t producer = fork();
    if (producer == 0) {
        for (uint32_t i = 0; i < MESSAGES; i++) {
            uint64_t value = (uint64_t)i * 2654435761u;
            while (carmp_channel_send(ch, i, &value, sizeof value) == CARMP_FULL) {
                uint32_t seq = carmp_bell_prepare(writable);
                if (carmp_channel_send(ch, i, &value, sizeof value) == CARMP_OK) {
                    carmp_bell_cancel(writable);
                    break;
                }
                carmp_bell_sleep(writable, seq, 1000000000LL);
                carmp_bell_cancel(writable);
            }
            carmp_bell_ring(readable);
        }
        _exit(0);
    }
    uint32_t expected = 0;
    int bad = 0;
    while (expected < MESSAGES) {
        uint32_t tag;
        const void *payload;
        uint64_t length;
        carmp_status st = carmp_channel_peek(ch, &tag, &payload, &length);
        if (st == CARMP_EMPTY) {
            uint32_t seq = carmp_bell_prepare(readable);
            if (!carmp_channel_readable(ch)) carmp_bell_sleep(readable, seq, 1000000000LL);
            carmp_bell_cancel(readable);
            continue;
        }
        uint64_t value;
        memcpy(&value, payload, sizeof value);
        bad |= st != CARMP_OK || tag != expected || value != (uint64_t)expected * 2654435761u;
        carmp_channel_advance(ch, length);
        carmp_bell_ring(writable);
        expected++;
    }
    int status = 0;
    waitpid(producer, &status, 0);
    CHECK(!bad && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    munmap(mem, 2 * sizeof(carmp_bell) + carmp_channel_size(CAP));
    passed++;
}

int main(void) {
    test_init_validates_capacity();
    test_send_peek_advance();
    test_full_then_room_again();
    test_random_traffic_matches_a_model();
    test_corrupt_record_is_reported();
    test_announce_moves_the_seq_with_no_sleepers();
    test_two_processes_with_bells();
    return report("channel");
}
