/* Starting and killing a `rserpool registrar` process from a C test.
 * The test must define _POSIX_C_SOURCE 200809L before any include. */
#ifndef RSERPOOL_REGISTRAR_UTIL_H
#define RSERPOOL_REGISTRAR_UTIL_H

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

typedef struct test_registrar {
    pid_t pid;
    FILE *out;
    unsigned port;
    char url[64];
} test_registrar;

/* Starts `$RSERPOOL_BIN registrar --asap tcp://127.0.0.1:PORT` (PORT 0 =
 * ephemeral) and waits for its "listening asap" line. Returns 0 on success. */
static inline int registrar_start(test_registrar *r, unsigned port) {
    const char *bin = getenv("RSERPOOL_BIN");
    char listen[64];
    int fds[2];
    if (bin == NULL) {
        fprintf(stderr, "RSERPOOL_BIN is not set\n");
        return -1;
    }
    snprintf(listen, sizeof listen, "tcp://127.0.0.1:%u", port);
    if (pipe(fds) != 0) return -1;
    r->pid = fork();
    if (r->pid < 0) return -1;
    if (r->pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(fds[1], 1);
        if (null >= 0) dup2(null, 2);
        close(fds[0]);
        close(fds[1]);
        execl(bin, "rserpool", "registrar", "--asap", listen, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    r->out = fdopen(fds[0], "r");
    if (r->out == NULL) return -1;
    for (;;) {
        char line[256];
        if (fgets(line, sizeof line, r->out) == NULL) {
            fprintf(stderr, "registrar did not start\n");
            return -1;
        }
        if (strncmp(line, "listening asap tcp://127.0.0.1:", 31) == 0) {
            r->port = (unsigned)strtoul(line + 31, NULL, 10);
            snprintf(r->url, sizeof r->url, "tcp://127.0.0.1:%u", r->port);
            return 0;
        }
    }
}

/* Kills the registrar (SIGKILL: no goodbye to anyone) and reaps it. */
static inline void registrar_kill(test_registrar *r) {
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
    if (r->out != NULL) {
        fclose(r->out);
        r->out = NULL;
    }
}

/* Seconds on a monotonic clock. */
static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void sleep_ms(long ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
}

#endif
