/* C unit tests of the native core; run under ASan/UBSan by `make native-test`. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../carmp_native.h"
#include "check.h"

static void test_atomics(void) {
    uint64_t w = 5, expected = 5;
    CHECK(carmp_load(&w) == 5);
    carmp_store(&w, 7);
    CHECK(carmp_fetch_add(&w, 3) == 7 && w == 10);
    CHECK(carmp_fetch_add(&w, (uint64_t)-4) == 10 && w == 6);
    expected = 1;
    CHECK(carmp_cas(&w, &expected, 9) == 0 && expected == 6);
    CHECK(carmp_cas(&w, &expected, 9) == 1 && w == 9);
    passed++;
}

static void test_add_bounded(void) {
    uint64_t w = 8, old = 0;
    CHECK(carmp_add_bounded(&w, 2, 10, &old) == CARMP_OK && old == 8 && w == 10);
    CHECK(carmp_add_bounded(&w, 1, 10, &old) == CARMP_FULL && old == 10 && w == 10);
    CHECK(carmp_add_bounded(&w, UINT64_MAX, UINT64_MAX, &old) == CARMP_FULL && w == 10);
    w = 0;
    CHECK(carmp_add_bounded(&w, UINT64_MAX, UINT64_MAX, &old) == CARMP_OK && w == UINT64_MAX);
    passed++;
}

static void test_first_reached(void) {
    uint64_t counters[3] = {1, 5, 9}, limits[3] = {2, 5, 100};
    CHECK(carmp_first_reached(counters, limits, 3) == 1);
    CHECK(carmp_first_reached(counters, limits, 1) == -1);
    CHECK(carmp_first_reached(counters, limits, 0) == -1);
    passed++;
}

static void test_crc32c(void) {
    const char *check = "123456789";
    CHECK(carmp_crc32c(0, check, 9) == 0xE3069283u);
    /* incremental equals one-shot */
    CHECK(carmp_crc32c(carmp_crc32c(0, check, 4), check + 4, 5) == 0xE3069283u);
    CHECK(carmp_crc32c(0, "", 0) == 0);
    unsigned char zeros[32] = {0};
    CHECK(carmp_crc32c(0, zeros, 32) == 0x8A9136AAu);
    passed++;
}

static void test_hash64(void) {
    CHECK(carmp_hash64("abc", 3, 0) == carmp_hash64("abc", 3, 0));
    CHECK(carmp_hash64("abc", 3, 0) != carmp_hash64("abd", 3, 0));
    CHECK(carmp_hash64("abc", 3, 0) != carmp_hash64("abc", 3, 1));
    CHECK(carmp_hash64("", 0, 0) != carmp_hash64("\0", 1, 0));
    CHECK(carmp_hash64("abcdefgh", 8, 0) != carmp_hash64("abcdefgh\0", 9, 0));
    /* low bits spread: 4096 sequential keys into 4096 buckets leave few empty */
    static unsigned char seen[4096];
    int used = 0;
    char key[32];
    for (int i = 0; i < 4096; i++) {
        int n = snprintf(key, sizeof key, "key-%d", i);
        uint64_t h = carmp_hash64(key, (size_t)n, 0) & 4095u;
        if (!seen[h]++) used++;
    }
    CHECK(used > 2400); /* a uniform hash fills ~63% */
    passed++;
}

static void test_lock_basics(void) {
    void *lock = shared_pages(4096);
    CHECK(carmp_lock_size() == CARMP_LOCK_SIZE);
    CHECK(carmp_lock_init(lock) == CARMP_OK);
    CHECK(carmp_lock_owner_pid(lock) == 0);
    CHECK(carmp_lock_try(lock) == CARMP_OK);
    CHECK(carmp_lock_owner_pid(lock) == (uint64_t)getpid());
    CHECK(carmp_lock_try(lock) == CARMP_RELOCK);
    CHECK(carmp_lock_release(lock) == CARMP_OK);
    CHECK(carmp_lock_release(lock) == CARMP_NOT_OWNER);
    CHECK(carmp_lock_timed(lock, 1000000) == CARMP_OK);
    CHECK(carmp_lock_release(lock) == CARMP_OK);
    CHECK(carmp_lock_destroy(lock) == CARMP_OK);
    munmap(lock, 4096);
    passed++;
}

static void test_lock_timeout_against_other_process(void) {
    void *lock = shared_pages(4096);
    int ready[2];
    CHECK(carmp_lock_init(lock) == CARMP_OK && pipe(ready) == 0);
    pid_t child = fork();
    if (child == 0) {
        carmp_lock_try(lock);
        (void)!write(ready[1], "x", 1);
        pause();
        _exit(0);
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1);
    CHECK(carmp_lock_try(lock) == CARMP_BUSY);
    CHECK(carmp_lock_timed(lock, 20000000) == CARMP_TIMEOUT);
    CHECK(carmp_lock_owner_pid(lock) == (uint64_t)child);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    /* the dead owner's lock comes back as OWNERDEAD, then behaves normally */
    CHECK(carmp_lock_timed(lock, 1000000000) == CARMP_OWNERDEAD);
    CHECK(carmp_lock_release(lock) == CARMP_OK);
    CHECK(carmp_lock_try(lock) == CARMP_OK);
    CHECK(carmp_lock_release(lock) == CARMP_OK);
    close(ready[0]);
    close(ready[1]);
    munmap(lock, 4096);
    passed++;
}

static void test_lock_owner_exit_without_unlock(void) {
    void *lock = shared_pages(4096);
    CHECK(carmp_lock_init(lock) == CARMP_OK);
    pid_t child = fork();
    if (child == 0) _exit(carmp_lock_try(lock) == CARMP_OK ? 0 : 1);
    int status = 0;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(carmp_lock_try(lock) == CARMP_OWNERDEAD);
    CHECK(carmp_lock_release(lock) == CARMP_OK);
    munmap(lock, 4096);
    passed++;
}

static void test_lock_mutual_exclusion(void) {
    enum { PROCS = 4, ROUNDS = 20000 };
    char *mem = shared_pages(4096);
    uint64_t *counter = (uint64_t *)(mem + CARMP_LOCK_SIZE);
    CHECK(carmp_lock_init(mem) == CARMP_OK);
    for (int p = 0; p < PROCS; p++) {
        if (fork() == 0) {
            for (int i = 0; i < ROUNDS; i++) {
                if (carmp_lock_timed(mem, -1) != CARMP_OK) _exit(1);
                uint64_t v = *(volatile uint64_t *)counter; /* plain read-modify-write */
                *(volatile uint64_t *)counter = v + 1;
                carmp_lock_release(mem);
            }
            _exit(0);
        }
    }
    int ok = 1, status;
    for (int p = 0; p < PROCS; p++) {
        wait(&status);
        ok &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
    }
    CHECK(ok);
    CHECK(*counter == (uint64_t)PROCS * ROUNDS);
    munmap(mem, 4096);
    passed++;
}

static void test_fetch_add_across_processes(void) {
    enum { PROCS = 4, ROUNDS = 50000 };
    uint64_t *counter = shared_pages(4096);
    for (int p = 0; p < PROCS; p++) {
        if (fork() == 0) {
            for (int i = 0; i < ROUNDS; i++) carmp_fetch_add(counter, 1);
            _exit(0);
        }
    }
    for (int p = 0; p < PROCS; p++) wait(NULL);
    CHECK(*counter == (uint64_t)PROCS * ROUNDS);
    munmap(counter, 4096);
    passed++;
}

static void test_wait_and_wake(void) {
    uint32_t *word = shared_pages(4096);
    *word = 0;
    CHECK(carmp_wait(word, 1, -1) == CARMP_OK);       /* differs: returns at once */
    CHECK(carmp_wait(word, 0, 1000000) == CARMP_TIMEOUT);
    CHECK(carmp_wake(word, -1) == 0);                  /* nobody sleeps */
    pid_t child = fork();
    if (child == 0) {
        /* sleep until the parent bumps the word; a bounded wait keeps a bug from hanging */
        while (__atomic_load_n(word, __ATOMIC_SEQ_CST) == 0) {
            if (carmp_wait(word, 0, 5000000000LL) == CARMP_TIMEOUT) _exit(1);
        }
        _exit(0);
    }
    usleep(20000);
    __atomic_store_n(word, 1, __ATOMIC_SEQ_CST);
    carmp_wake(word, -1);
    int status = 0;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    munmap(word, 4096);
    passed++;
}

int main(void) {
    test_atomics();
    test_add_bounded();
    test_first_reached();
    test_crc32c();
    test_hash64();
    test_lock_basics();
    test_lock_timeout_against_other_process();
    test_lock_owner_exit_without_unlock();
    test_lock_mutual_exclusion();
    test_fetch_add_across_processes();
    test_wait_and_wake();
    return report("native");
}
