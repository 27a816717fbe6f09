/* Robust cross-process lock: a process-shared, robust, error-checking pthread mutex.
 * A dead owner never blocks anyone: the kernel's robust futex list hands the lock to
 * the next acquirer with EOWNERDEAD, which we turn into CARMP_OWNERDEAD after marking
 * the mutex consistent again. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "carmp_native.h"

typedef struct {
    pthread_mutex_t mutex;
    uint64_t owner_pid; /* diagnostics only: who holds it now, 0 when free */
} carmp_lock_t;

_Static_assert(sizeof(carmp_lock_t) <= CARMP_LOCK_SIZE, "carmp_lock_t outgrew CARMP_LOCK_SIZE");

size_t carmp_lock_size(void) { return CARMP_LOCK_SIZE; }

carmp_status carmp_lock_init(void *mem) {
    carmp_lock_t *lock = mem;
    pthread_mutexattr_t attr;
    int rc;
    memset(lock, 0, sizeof(*lock));
    if ((rc = pthread_mutexattr_init(&attr)) != 0) goto fail;
    if ((rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)) != 0) goto fail_attr;
    if ((rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)) != 0) goto fail_attr;
    if ((rc = pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK)) != 0) goto fail_attr;
    rc = pthread_mutex_init(&lock->mutex, &attr);
fail_attr:
    pthread_mutexattr_destroy(&attr);
fail:
    if (rc != 0) {
        errno = rc;
        return CARMP_ERRNO;
    }
    return CARMP_OK;
}

static carmp_status acquired(carmp_lock_t *lock, int rc) {
    switch (rc) {
    case 0:
        __atomic_store_n(&lock->owner_pid, (uint64_t)getpid(), __ATOMIC_SEQ_CST);
        return CARMP_OK;
    case EOWNERDEAD:
        if (pthread_mutex_consistent(&lock->mutex) != 0) return CARMP_NOTRECOVERABLE;
        __atomic_store_n(&lock->owner_pid, (uint64_t)getpid(), __ATOMIC_SEQ_CST);
        return CARMP_OWNERDEAD;
    case EBUSY:
        return CARMP_BUSY;
    case ETIMEDOUT:
        return CARMP_TIMEOUT;
    case EDEADLK:
        return CARMP_RELOCK;
    case ENOTRECOVERABLE:
        return CARMP_NOTRECOVERABLE;
    default:
        errno = rc;
        return CARMP_ERRNO;
    }
}

carmp_status carmp_lock_try(void *mem) {
    carmp_lock_t *lock = mem;
    return acquired(lock, pthread_mutex_trylock(&lock->mutex));
}

carmp_status carmp_lock_timed(void *mem, int64_t timeout_ns) {
    carmp_lock_t *lock = mem;
    struct timespec deadline;
    int rc;
    if (timeout_ns < 0) return acquired(lock, pthread_mutex_lock(&lock->mutex));
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ns / 1000000000;
    deadline.tv_nsec += timeout_ns % 1000000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000;
    }
    do {
        rc = pthread_mutex_clocklock(&lock->mutex, CLOCK_MONOTONIC, &deadline);
    } while (rc == EINTR);
    return acquired(lock, rc);
}

carmp_status carmp_lock_release(void *mem) {
    carmp_lock_t *lock = mem;
    uint64_t previous = __atomic_exchange_n(&lock->owner_pid, 0, __ATOMIC_SEQ_CST);
    int rc = pthread_mutex_unlock(&lock->mutex);
    if (rc == 0) return CARMP_OK;
    __atomic_store_n(&lock->owner_pid, previous, __ATOMIC_SEQ_CST);
    if (rc == EPERM) return CARMP_NOT_OWNER;
    errno = rc;
    return CARMP_ERRNO;
}

uint64_t carmp_lock_owner_pid(const void *mem) {
    const carmp_lock_t *lock = mem;
    return __atomic_load_n(&lock->owner_pid, __ATOMIC_SEQ_CST);
}

carmp_status carmp_lock_destroy(void *mem) {
    carmp_lock_t *lock = mem;
    int rc = pthread_mutex_destroy(&lock->mutex);
    if (rc == 0) return CARMP_OK;
    if (rc == EBUSY) return CARMP_BUSY;
    errno = rc;
    return CARMP_ERRNO;
}
