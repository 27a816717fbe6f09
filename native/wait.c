/* Sleeping until a shared word changes: Linux futexes on the low 32 bits of a word.
 * Shared (not process-private) futexes, so a waker in one process reaches sleepers
 * in every process that maps the segment. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "carmp_native.h"

carmp_status carmp_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns) {
    struct timespec relative, *timeout = NULL;
    if (timeout_ns >= 0) {
        relative.tv_sec = timeout_ns / 1000000000;
        relative.tv_nsec = timeout_ns % 1000000000;
        timeout = &relative;
    }
    if (__atomic_load_n(word, __ATOMIC_SEQ_CST) != expected) return CARMP_OK;
    long rc = syscall(SYS_futex, word, FUTEX_WAIT, expected, timeout, NULL, 0);
    if (rc == 0) return CARMP_OK;
    switch (errno) {
    case EAGAIN: /* the word already changed */
        return CARMP_OK;
    case ETIMEDOUT:
        return CARMP_TIMEOUT;
    case EINTR:
        return CARMP_INTERRUPTED;
    default:
        return CARMP_ERRNO;
    }
}

int carmp_wake(uint32_t *word, int count) {
    long rc = syscall(SYS_futex, word, FUTEX_WAKE, count < 0 ? INT_MAX : count, NULL, NULL, 0);
    return rc < 0 ? -1 : (int)rc;
}
