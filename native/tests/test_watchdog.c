/* C tests of the orphan watchdog; run under ASan/UBSan by `make native-test`. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../carmp_native.h"
#include "check.h"

/* A "supervisor" child forks a "worker" grandchild that watches it; killing the
 * supervisor must take the worker down too. The worker reports its pid through a pipe. */
static void test_worker_dies_with_its_supervisor(void) {
    int report[2];
    CHECK(pipe(report) == 0);
    pid_t supervisor = fork();
    if (supervisor == 0) {
        pid_t me = getpid();
        pid_t worker = fork();
        if (worker == 0) {
            if (carmp_watchdog_start(me) != CARMP_OK) _exit(1);
            pid_t self = getpid();
            (void)!write(report[1], &self, sizeof self);
            for (;;) pause();
        }
        for (;;) pause();
    }
    pid_t worker;
    CHECK(read(report[0], &worker, sizeof worker) == sizeof worker);
    CHECK(kill(worker, 0) == 0);
    kill(supervisor, SIGKILL);
    waitpid(supervisor, NULL, 0);
    int gone = 0;
    for (int i = 0; i < 200 && !gone; i++) { /* bounded: 10 s */
        gone = kill(worker, 0) != 0;
        if (!gone) usleep(50000);
    }
    CHECK(gone);
    close(report[0]);
    close(report[1]);
    passed++;
}

static void test_bad_pid_is_refused(void) {
    CHECK(carmp_watchdog_start(0) == CARMP_EINVAL);
    CHECK(carmp_watchdog_start(-5) == CARMP_EINVAL);
    passed++;
}

static void test_sigint_ignore_nests_and_restores(void) {
    struct sigaction now;
    CHECK(carmp_sigint_restore() == CARMP_EINVAL); /* nothing to undo */
    CHECK(carmp_sigint_ignore() == CARMP_OK);
    CHECK(carmp_sigint_ignore() == CARMP_OK);
    raise(SIGINT); /* ignored: we are still here */
    CHECK(carmp_sigint_restore() == CARMP_OK);
    sigaction(SIGINT, NULL, &now);
    CHECK(now.sa_handler == SIG_IGN); /* the outer ignore still holds */
    CHECK(carmp_sigint_restore() == CARMP_OK);
    sigaction(SIGINT, NULL, &now);
    CHECK(now.sa_handler == SIG_DFL);
    passed++;
}

int main(void) {
    test_bad_pid_is_refused();
    test_sigint_ignore_nests_and_restores();
    test_worker_dies_with_its_supervisor();
    return report("watchdog");
}
