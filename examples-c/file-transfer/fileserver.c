/* fileserver: a pool element of the file-transfer example of
 * draft-ietf-rserpool-applic §3.4 (protocol in ft.h). It listens on an
 * enhanced-mode session server, registers in pool "files", and serves the
 * files of one directory: each request (name, offset) is answered with
 * chunks (offset, length, total length) from the offset to the end. One
 * poll() loop serves every session; chunks go out one per session every
 * DELAY milliseconds, so a transfer takes a while and can be interrupted.
 *
 *   fileserver [-p POOL] [-l LISTEN_URL] [-d DELAY_MS] [-c CHUNK] REGISTRAR_URL DIRECTORY
 *
 * Prints "fileserver: PE <id> serving <dir>" once registered and one line
 * per request; SIGINT or SIGTERM deregisters and exits. */
#define _POSIX_C_SOURCE 200809L
#include <rserpool.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ft.h"

#define MAX_SESSIONS 64

struct transfer {
    rserpool_session *s;
    int fd;         /* the file being served, -1 if none */
    uint32_t gen;   /* generation of the request being served */
    uint64_t offset, total;
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static uint32_t pe_id;
static const char *dir;
static size_t chunk = 16384;
static uint8_t buf[RSERPOOL_MAX_MESSAGE_LEN];

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void send_error(struct transfer *t, uint32_t gen, uint32_t code, const char *text) {
    uint8_t m[FT_ERROR_HDR + 128];
    size_t n = strlen(text) < 128 ? strlen(text) : 128;
    memset(m, 0, 4);
    m[0] = FT_ERROR;
    ft_put32(m + 4, gen);
    ft_put32(m + 8, code);
    memcpy(m + FT_ERROR_HDR, text, n);
    rserpool_data_send(t->s, NULL, m, FT_ERROR_HDR + n, FT_PPID, 0, NULL, NULL);
}

static void stop_transfer(struct transfer *t) {
    if (t->fd >= 0) close(t->fd);
    t->fd = -1;
}

static void handle_request(struct transfer *t, const uint8_t *m, size_t len) {
    char name[FT_MAX_NAME + 1], path[4096];
    uint32_t gen;
    uint64_t offset;
    size_t nlen;
    struct stat st;
    int fd;

    if (len < FT_REQUEST_HDR || m[0] != FT_REQUEST) return;
    gen = ft_get32(m + 4);
    offset = ft_get64(m + 8);
    nlen = ft_get16(m + 16);
    if (gen < t->gen) {
        printf("fileserver: PE %u ignores a request of generation %u (serving %u)\n",
               (unsigned)pe_id, (unsigned)gen, (unsigned)t->gen);
        return;
    }
    t->gen = gen;
    stop_transfer(t);
    if (nlen == 0 || nlen > FT_MAX_NAME || len != FT_REQUEST_HDR + nlen) {
        send_error(t, gen, FT_ERR_BAD_REQUEST, "malformed request");
        return;
    }
    memcpy(name, m + FT_REQUEST_HDR, nlen);
    name[nlen] = 0;
    /* A plain file name of the directory: no path, no NUL. */
    if (strlen(name) != nlen || strchr(name, '/') != NULL || name[0] == '.') {
        send_error(t, gen, FT_ERR_BAD_REQUEST, "bad file name");
        return;
    }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
        offset > (uint64_t)st.st_size) {
        if (fd >= 0) close(fd);
        send_error(t, gen, FT_ERR_NOT_FOUND, "no such file, or offset past its end");
        return;
    }
    t->fd = fd;
    t->offset = offset;
    t->total = (uint64_t)st.st_size;
    printf("fileserver: PE %u request %s from %llu of %llu (generation %u)\n", (unsigned)pe_id,
           name, (unsigned long long)offset, (unsigned long long)t->total, (unsigned)gen);
}

/* Sends the next chunk of `t` (an empty one for an empty file). */
static void send_chunk(struct transfer *t) {
    uint64_t left = t->total - t->offset;
    size_t want = left < chunk ? (size_t)left : chunk;
    ssize_t n = want ? pread(t->fd, buf + FT_CHUNK_HDR, want, (off_t)t->offset) : 0;
    int rc;
    if (n < 0 || (size_t)n != want) {
        send_error(t, t->gen, FT_ERR_NOT_FOUND, "read error");
        stop_transfer(t);
        return;
    }
    memset(buf, 0, 4);
    buf[0] = FT_CHUNK;
    ft_put32(buf + 4, t->gen);
    ft_put64(buf + 8, t->offset);
    ft_put32(buf + 16, (uint32_t)n);
    ft_put64(buf + 20, t->total);
    rc = rserpool_data_send(t->s, NULL, buf, FT_CHUNK_HDR + (size_t)n, FT_PPID, 0, NULL, NULL);
    if (rc == RSERPOOL_ERR_WOULD_BLOCK) return; /* try again next round */
    if (rc != RSERPOOL_OK) {
        stop_transfer(t);
        return;
    }
    t->offset += (uint64_t)n;
    if (t->offset == t->total) stop_transfer(t);
}

/* Reads everything waiting on a session; 0 once it is closed. */
static int serve_session(struct transfer *t) {
    rserpool_notification n;
    for (;;) {
        int rc = rserpool_recv(t->s, &n, buf, sizeof buf, 0);
        if (rc == RSERPOOL_ERR_WOULD_BLOCK) return 1;
        if (rc != RSERPOOL_OK) return 0;
        if (n.kind == RSERPOOL_NOTIFY_CLOSED) return 0;
        if (n.kind == RSERPOOL_NOTIFY_DATA && n.ppid == FT_PPID) handle_request(t, buf, n.len);
    }
}

int main(int argc, char **argv) {
    const char *pool = "files", *listen = "tcp://127.0.0.1:0";
    long delay = 2;
    rserpool_config *cfg = NULL;
    rserpool_context *ctx = NULL;
    rserpool_pe_server *srv = NULL;
    rserpool_pe_listen_params lp;
    struct transfer tr[MAX_SESSIONS];
    size_t count = 0;
    struct sigaction sa;
    double next = 0;
    int opt, rc, sfd = -1;

    while ((opt = getopt(argc, argv, "p:l:d:c:")) != -1) {
        switch (opt) {
        case 'p': pool = optarg; break;
        case 'l': listen = optarg; break;
        case 'd': delay = atol(optarg); break;
        case 'c': chunk = (size_t)atol(optarg); break;
        default: goto usage;
        }
    }
    if (argc - optind != 2 || chunk == 0 || chunk > sizeof buf - FT_CHUNK_HDR || delay < 0) {
    usage:
        fprintf(stderr,
                "usage: %s [-p POOL] [-l LISTEN_URL] [-d DELAY_MS] [-c CHUNK] REGISTRAR_URL "
                "DIRECTORY\n",
                argv[0]);
        return 2;
    }
    dir = argv[optind + 1];
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    rserpool_pe_listen_params_init(&lp);
    lp.pool_handle = (const uint8_t *)pool;
    lp.handle_len = strlen(pool);
    lp.listen_url = listen;
    if ((rc = rserpool_config_new(&cfg)) != RSERPOOL_OK ||
        (rc = rserpool_config_add_registrar(cfg, argv[optind])) != RSERPOOL_OK ||
        (rc = rserpool_context_new(cfg, &ctx)) != RSERPOOL_OK ||
        (rc = rserpool_pe_listen(ctx, &lp, &srv)) != RSERPOOL_OK) {
        fprintf(stderr, "fileserver: %s\n", rserpool_strerror(rc));
        rserpool_config_free(cfg);
        rserpool_context_free(ctx);
        return 1;
    }
    rserpool_config_free(cfg);
    rserpool_pe_server_pe_id(srv, &pe_id);
    rserpool_pe_server_fd(srv, &sfd);
    printf("fileserver: PE %u serving %s\n", (unsigned)pe_id, dir);

    while (!stop) {
        struct pollfd p[MAX_SESSIONS + 1];
        size_t polled = count;
        int timeout = -1, active = 0;
        p[0].fd = sfd;
        p[0].events = POLLIN;
        for (size_t i = 0; i < count; i++) {
            rserpool_session_fd(tr[i].s, &p[i + 1].fd);
            p[i + 1].events = POLLIN;
            p[i + 1].revents = 0;
            active |= tr[i].fd >= 0;
        }
        if (active) {
            double d = next - now_ms();
            timeout = d > 0 ? (int)d + 1 : 0;
        }
        if (poll(p, (nfds_t)(count + 1), timeout) < 0) {
            if (errno == EINTR) continue;
            perror("fileserver: poll");
            break;
        }
        if (p[0].revents & POLLIN) {
            rserpool_session *s = NULL;
            if (rserpool_pe_accept(srv, 0, &s) == RSERPOOL_OK) {
                if (count < MAX_SESSIONS) {
                    tr[count].s = s;
                    tr[count].fd = -1;
                    tr[count].gen = 0;
                    tr[count].offset = tr[count].total = 0;
                    count++;
                } else {
                    rserpool_session_close(s);
                }
            }
        }
        for (size_t i = 0; i < polled; i++) {
            if ((p[i + 1].revents & POLLIN) && !serve_session(&tr[i])) {
                stop_transfer(&tr[i]);
                rserpool_session_close(tr[i].s);
                tr[i].s = NULL;
            }
        }
        {
            size_t j = 0;
            for (size_t i = 0; i < count; i++)
                if (tr[i].s != NULL) tr[j++] = tr[i];
            count = j;
        }
        if (now_ms() >= next) {
            for (size_t i = 0; i < count; i++)
                if (tr[i].fd >= 0) send_chunk(&tr[i]);
            next = now_ms() + (double)delay;
        }
    }

    for (size_t i = 0; i < count; i++) {
        stop_transfer(&tr[i]);
        rserpool_session_close(tr[i].s);
    }
    rc = rserpool_pe_server_close(srv);
    printf("fileserver: PE %u deregistered: %s\n", (unsigned)pe_id, rserpool_strerror(rc));
    rserpool_context_free(ctx);
    return 0;
}
