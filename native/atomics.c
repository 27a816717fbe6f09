/* Atomic operations on 64-bit words in shared memory (sequentially consistent). */
#include "carmp_native.h"

uint64_t carmp_load(const uint64_t *word) {
    return __atomic_load_n(word, __ATOMIC_SEQ_CST);
}

void carmp_store(uint64_t *word, uint64_t value) {
    __atomic_store_n(word, value, __ATOMIC_SEQ_CST);
}

uint64_t carmp_fetch_add(uint64_t *word, uint64_t delta) {
    return __atomic_fetch_add(word, delta, __ATOMIC_SEQ_CST);
}

int carmp_cas(uint64_t *word, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(word, expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}

carmp_status carmp_add_bounded(uint64_t *word, uint64_t delta, uint64_t limit, uint64_t *old) {
    uint64_t current = __atomic_load_n(word, __ATOMIC_SEQ_CST);
    for (;;) {
        /* current + delta > limit, written so that it cannot overflow */
        if (current > limit || delta > limit - current) {
            *old = current;
            return CARMP_FULL;
        }
        if (__atomic_compare_exchange_n(word, &current, current + delta, 1, __ATOMIC_SEQ_CST,
                                        __ATOMIC_SEQ_CST)) {
            *old = current;
            return CARMP_OK;
        }
    }
}

int carmp_first_reached(const uint64_t *counters, const uint64_t *limits, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (__atomic_load_n(&counters[i], __ATOMIC_SEQ_CST) >=
            __atomic_load_n(&limits[i], __ATOMIC_SEQ_CST)) {
            return (int)i;
        }
    }
    return -1;
}
