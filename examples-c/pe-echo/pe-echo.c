/* pe-echo: a pool element. An echo server over plain TCP that registers
 * itself under a pool handle, reports its load (connected clients) and
 * deregisters on SIGINT or SIGTERM.
 *
 *   pe-echo tcp://127.0.0.1:3863 echo [PORT]
 *   pe-echo tcp://127.0.0.1:3863,tcp://127.0.0.1:3864 echo
 *
 * With several registrars the library hunts among them when its home
 * registrar fails, and re-registers the PE at the new one.
 */
#define _POSIX_C_SOURCE 200809L
#include <rserpool.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 16

static volatile sig_atomic_t stop = 0;
static void on_signal(int sig) { (void)sig; stop = 1; }

/* Adds every registrar of a comma-separated list of URLs. */
static int add_registrars(rserpool_config *cfg, const char *list) {
    char buf[1024], *save = NULL, *url;
    int rc = RSERPOOL_ERR_INVALID_ARGUMENT;
    if (strlen(list) >= sizeof buf) return rc;
    strcpy(buf, list);
    for (url = strtok_r(buf, ",", &save); url != NULL; url = strtok_r(NULL, ",", &save))
        if ((rc = rserpool_config_add_registrar(cfg, url)) != RSERPOOL_OK) return rc;
    return rc;
}

static int fail(const char *what, int rc) {
    fprintf(stderr, "pe-echo: %s: %s\n", what, rserpool_strerror(rc));
    return 1;
}

int main(int argc, char **argv) {
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    struct pollfd fds[1 + MAX_CLIENTS];
    int nfds = 1, rc, one = 1;
    rserpool_config *cfg = NULL;
    rserpool_context *ctx = NULL;
    rserpool_pe_params params;
    const char *addrs[] = {"127.0.0.1"};
    uint32_t pe_id = 0;
    struct sigaction sa;

    if (argc < 3) {
        fprintf(stderr, "usage: %s REGISTRAR_URL[,URL...] POOL_HANDLE [PORT]\n", argv[0]);
        return 2;
    }

    /* 1. An ordinary TCP listener (port 0: the kernel picks one). */
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons((uint16_t)(argc > 3 ? atoi(argv[3]) : 0));
    fds[0].fd = socket(AF_INET, SOCK_STREAM, 0);
    fds[0].events = POLLIN;
    setsockopt(fds[0].fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fds[0].fd, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(fds[0].fd, 16) != 0 ||
        getsockname(fds[0].fd, (struct sockaddr *)&sin, &len) != 0) {
        perror("pe-echo: listen");
        return 1;
    }

    /* 2. An ASAP endpoint that knows the registrars. */
    if ((rc = rserpool_config_new(&cfg)) != RSERPOOL_OK) return fail("config", rc);
    if ((rc = add_registrars(cfg, argv[1])) != RSERPOOL_OK) {
        rserpool_config_free(cfg);
        return fail(argv[1], rc);
    }
    rc = rserpool_context_new(cfg, &ctx);
    rserpool_config_free(cfg);
    if (rc != RSERPOOL_OK) return fail("context", rc);

    /* 3. Register: TCP 127.0.0.1:port, Least Used, idle. */
    rserpool_pe_params_init(&params);
    params.port = ntohs(sin.sin_port);
    params.addrs = addrs;
    params.addr_count = 1;
    params.policy.policy_type = RSERPOOL_POLICY_LEAST_USED;
    params.policy.load = 0;
    params.reg_life = 30; /* seconds; refreshed by the library */
    rc = rserpool_register_pe(ctx, (const uint8_t *)argv[2], strlen(argv[2]), &params, &pe_id);
    if (rc != RSERPOOL_OK) {
        rserpool_context_free(ctx);
        return fail("register", rc);
    }
    printf("pe-echo: PE %u registered in pool %s on 127.0.0.1:%u\n", (unsigned)pe_id, argv[2],
           (unsigned)params.port);
    fflush(stdout);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* 4. Echo until a signal. */
    while (!stop) {
        if (poll(fds, (nfds_t)nfds, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if ((fds[0].revents & POLLIN) && nfds < 1 + MAX_CLIENTS) {
            fds[nfds].fd = accept(fds[0].fd, NULL, NULL);
            fds[nfds].events = POLLIN;
            if (fds[nfds].fd >= 0) {
                nfds++;
                /* Load: the share of client slots in use. */
                rserpool_update_load(ctx, pe_id, (uint32_t)((nfds - 1) * (0xffffffffu / MAX_CLIENTS)));
            }
        }
        for (int i = 1; i < nfds; i++) {
            char buf[4096];
            ssize_t n;
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            n = read(fds[i].fd, buf, sizeof buf);
            if (n > 0 && write(fds[i].fd, buf, (size_t)n) == n) continue;
            close(fds[i].fd);
            fds[i--] = fds[--nfds];
            rserpool_update_load(ctx, pe_id, (uint32_t)((nfds - 1) * (0xffffffffu / MAX_CLIENTS)));
        }
    }

    /* 5. Leave the pool, then free (free would deregister too). */
    rc = rserpool_deregister(ctx, pe_id);
    printf("pe-echo: PE %u deregistered: %s\n", (unsigned)pe_id, rserpool_strerror(rc));
    rserpool_context_free(ctx);
    for (int i = 0; i < nfds; i++) close(fds[i].fd);
    return rc == RSERPOOL_OK ? 0 : 1;
}
