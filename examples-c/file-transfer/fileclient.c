/* fileclient: the pool user of the file-transfer example of
 * draft-ietf-rserpool-applic §3.4 (protocol in ft.h). It opens an
 * enhanced-mode session to pool "files", asks for a file from offset 0 and
 * writes the chunks to a local file as they come, through a data
 * indication callback. When the server fails, the session fails over to
 * another one by itself, and the fail-over callback, which runs before
 * anything else goes to the new server, re-issues the request from the
 * number of bytes already received. Both callbacks run on the library's
 * thread, one at a time, so the byte count the fail-over callback reads is
 * exactly what the data callback wrote.
 *
 *   fileclient [-p POOL] REGISTRAR_URL NAME OUTPUT
 *
 * Prints every fail-over on stderr and a summary on stdout; exits 0 once
 * the whole file is written. */
#define _POSIX_C_SOURCE 200809L
#include <rserpool.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ft.h"

struct transfer {
    pthread_mutex_t mu;
    const char *name;
    FILE *out;
    uint32_t gen;       /* generation of the latest request */
    uint64_t received;  /* bytes written, all in order */
    uint64_t total;     /* the file's length, once a chunk said it */
    int have_total;
    uint64_t duplicates; /* bytes received twice (dropped) */
    unsigned failovers;
    int done, failed;
};

/* Sends the request for the rest of the file (lock held). */
static int request_rest(rserpool_session *s, struct transfer *t) {
    uint8_t m[FT_REQUEST_HDR + FT_MAX_NAME];
    size_t n = ft_request(m, ++t->gen, t->received, t->name);
    int rc = rserpool_data_send(s, NULL, m, n, FT_PPID, 0, NULL, NULL);
    if (rc != RSERPOOL_OK) {
        fprintf(stderr, "fileclient: sending the request: %s\n", rserpool_strerror(rc));
        t->failed = 1;
    }
    return rc;
}

static void on_data(rserpool_session *s, uint32_t ppid, uint16_t stream, const uint8_t *m,
                    size_t len, void *user) {
    struct transfer *t = user;
    (void)s, (void)stream;
    if (ppid != FT_PPID || len < 4) return;
    pthread_mutex_lock(&t->mu);
    if (m[0] == FT_ERROR && len >= FT_ERROR_HDR) {
        fprintf(stderr, "fileclient: the server refused (%u): %.*s\n", (unsigned)ft_get32(m + 8),
                (int)(len - FT_ERROR_HDR), (const char *)m + FT_ERROR_HDR);
        t->failed = 1;
    } else if (m[0] == FT_CHUNK && len >= FT_CHUNK_HDR && !t->done) {
        uint64_t offset = ft_get64(m + 8), total = ft_get64(m + 20);
        uint32_t length = ft_get32(m + 16);
        if (len != FT_CHUNK_HDR + (size_t)length || (t->have_total && total != t->total) ||
            offset > t->received) {
            fprintf(stderr, "fileclient: bad chunk at %llu (have %llu)\n",
                    (unsigned long long)offset, (unsigned long long)t->received);
            t->failed = 1;
        } else {
            /* Bytes before `received` arrived already: drop them. */
            uint64_t skip = t->received - offset;
            if (skip > length) skip = length;
            t->duplicates += skip;
            t->total = total;
            t->have_total = 1;
            if (fwrite(m + FT_CHUNK_HDR + skip, 1, length - skip, t->out) != length - skip) {
                perror("fileclient: writing");
                t->failed = 1;
            }
            t->received += length - skip;
            if (t->received == t->total) t->done = 1;
        }
    }
    pthread_mutex_unlock(&t->mu);
}

static void on_failover(rserpool_session *s, uint32_t from, uint32_t to, const uint64_t *resent,
                        size_t count, void *user) {
    struct transfer *t = user;
    (void)resent;
    pthread_mutex_lock(&t->mu);
    t->failovers++;
    fprintf(stderr,
            "fileclient: failover from PE %u to PE %u, resuming at offset %llu (%zu message(s) "
            "re-sent)\n",
            (unsigned)from, (unsigned)to, (unsigned long long)t->received, count);
    if (t->gen > 0 && !t->done) request_rest(s, t);
    pthread_mutex_unlock(&t->mu);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *pool = "files";
    rserpool_config *cfg = NULL;
    rserpool_context *ctx = NULL;
    rserpool_session *s = NULL;
    struct transfer t;
    double start;
    int opt, rc, ok = 0;

    while ((opt = getopt(argc, argv, "p:")) != -1) {
        if (opt != 'p') goto usage;
        pool = optarg;
    }
    if (argc - optind != 3) {
    usage:
        fprintf(stderr, "usage: %s [-p POOL] REGISTRAR_URL NAME OUTPUT\n", argv[0]);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    memset(&t, 0, sizeof t);
    pthread_mutex_init(&t.mu, NULL);
    t.name = argv[optind + 1];
    if (strlen(t.name) == 0 || strlen(t.name) > FT_MAX_NAME) goto usage;
    t.out = fopen(argv[optind + 2], "wb");
    if (t.out == NULL) {
        perror(argv[optind + 2]);
        return 1;
    }
    start = now_s();
    if ((rc = rserpool_config_new(&cfg)) != RSERPOOL_OK ||
        (rc = rserpool_config_add_registrar(cfg, argv[optind])) != RSERPOOL_OK ||
        (rc = rserpool_context_new(cfg, &ctx)) != RSERPOOL_OK ||
        (rc = rserpool_session_open(ctx, (const uint8_t *)pool, strlen(pool), NULL, &s)) !=
            RSERPOOL_OK) {
        fprintf(stderr, "fileclient: %s\n", rserpool_strerror(rc));
        goto out;
    }
    rserpool_set_data_indication(s, on_data, &t);
    rserpool_set_failover_callback(s, on_failover, &t);
    pthread_mutex_lock(&t.mu);
    request_rest(s, &t);
    pthread_mutex_unlock(&t.mu);

    /* The callbacks do the work; this thread watches for the end. */
    for (;;) {
        rserpool_notification n;
        uint64_t seqs[64];
        int done, failed;
        rc = rserpool_recv(s, &n, (uint8_t *)seqs, sizeof seqs, 100);
        pthread_mutex_lock(&t.mu);
        if (rc == RSERPOOL_OK && n.kind == RSERPOOL_NOTIFY_CONNECTED) {
            fprintf(stderr, "fileclient: connected to PE %u\n", (unsigned)n.pe_id);
        } else if (rc == RSERPOOL_OK && n.kind == RSERPOOL_NOTIFY_FAILOVER) {
            /* A fail-over before the callback was installed. */
            t.failovers++;
            if (!t.done) request_rest(s, &t);
        } else if (rc == RSERPOOL_OK && n.kind == RSERPOOL_NOTIFY_FAILED) {
            fprintf(stderr, "fileclient: the session gave up: %s\n", rserpool_strerror(n.error));
            t.failed = 1;
        } else if (rc != RSERPOOL_OK && rc != RSERPOOL_ERR_TIMEOUT &&
                   rc != RSERPOOL_ERR_BUFFER_TOO_SMALL) {
            fprintf(stderr, "fileclient: %s\n", rserpool_strerror(rc));
            t.failed = 1;
        }
        done = t.done;
        failed = t.failed;
        pthread_mutex_unlock(&t.mu);
        if (done || failed) break;
    }
    /* From here on no callback runs: the lock is not needed any more. */
    rserpool_session_close(s);
    s = NULL;
    if (t.done) {
        printf("fileclient: received %llu bytes of %s in %.2f s, %u failover(s), %llu duplicate "
               "byte(s)\n",
               (unsigned long long)t.received, t.name, now_s() - start, t.failovers,
               (unsigned long long)t.duplicates);
        ok = 1;
    }
out:
    rserpool_session_close(s);
    rserpool_context_free(ctx);
    rserpool_config_free(cfg);
    if (fclose(t.out) != 0) {
        perror("fileclient: closing the output");
        ok = 0;
    }
    pthread_mutex_destroy(&t.mu);
    return ok ? 0 : 1;
}
