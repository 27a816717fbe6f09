/* Orphan prevention for workers: a detached thread that SIGKILLs its own process as
 * soon as a given process (the supervisor) exits, even while Python is stuck in C code
 * holding the GIL. It waits on a pidfd (Linux >= 5.3) and falls back to polling. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "carmp_native.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define POLL_INTERVAL_NS 100000000L

struct watch {
    pid_t pid;
    int pidfd; /* -1: poll with kill(pid, 0) */
};

static void *watch_process(void *arg) {
    struct watch watch = *(struct watch *)arg;
    free(arg);
    if (watch.pidfd >= 0) {
        struct pollfd fd = {.fd = watch.pidfd, .events = POLLIN};
        while (poll(&fd, 1, -1) < 0 && errno == EINTR) {
        }
    } else {
        struct timespec interval = {0, POLL_INTERVAL_NS};
        while (kill(watch.pid, 0) == 0 || errno == EPERM) nanosleep(&interval, NULL);
    }
    kill(getpid(), SIGKILL);
    return NULL;
}

carmp_status carmp_watchdog_start(int32_t pid) {
    if (pid <= 0) return CARMP_EINVAL;
    struct watch *watch = malloc(sizeof *watch);
    if (watch == NULL) return CARMP_ERRNO;
    watch->pid = pid;
    watch->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (watch->pidfd < 0 && errno == ESRCH) {
        free(watch);
        kill(getpid(), SIGKILL); /* the watched process is already gone */
        return CARMP_OK;
    }
    /* the thread takes no signals: they stay with the process's other threads */
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, watch_process, watch);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    if (rc != 0) {
        if (watch->pidfd >= 0) close(watch->pidfd);
        free(watch);
        errno = rc;
        return CARMP_ERRNO;
    }
    return CARMP_OK;
}

/* Nested ignoring of SIGINT: the first carmp_sigint_ignore saves the disposition, the
 * matching last carmp_sigint_restore puts it back. Callers serialise (the GIL does). */
static struct sigaction saved_sigint;
static int sigint_ignores;

carmp_status carmp_sigint_ignore(void) {
    if (sigint_ignores++ > 0) return CARMP_OK;
    struct sigaction ignore;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    if (sigaction(SIGINT, &ignore, &saved_sigint) != 0) {
        sigint_ignores--;
        return CARMP_ERRNO;
    }
    return CARMP_OK;
}

carmp_status carmp_sigint_restore(void) {
    if (sigint_ignores == 0) return CARMP_EINVAL;
    if (--sigint_ignores > 0) return CARMP_OK;
    return sigaction(SIGINT, &saved_sigint, NULL) == 0 ? CARMP_OK : CARMP_ERRNO;
}

carmp_status carmp_set_parent_death_signal(int signal_number) {
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)signal_number, 0, 0, 0) != 0) return CARMP_ERRNO;
    return CARMP_OK;
}
