/* What every native test binary shares: pass/fail counting, CHECK, shared pages. */
#ifndef CARMP_TESTS_CHECK_H
#define CARMP_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

static int passed, failed;

/* Fail the calling test (a void function) with the condition's text and location. */
#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,     \
                    __func__, #cond);                                                 \
            failed++;                                                                 \
            return;                                                                   \
        }                                                                             \
    } while (0)

/* Anonymous memory that forked children share, as a segment would be shared. */
static inline void *shared_pages(size_t n) {
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p;
}

/* The closing line the test runner reads: "<suite>: N passed, M failed". */
static inline int report(const char *suite) {
    printf("%s: %d passed, %d failed\n", suite, passed, failed);
    return failed ? 1 : 0;
}

#endif
