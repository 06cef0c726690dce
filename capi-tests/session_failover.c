#define _POSIX_C_SOURCE 200809L
/* Fail-over of enhanced-mode sessions when the serving pool element's
 * process is killed with SIGKILL. The pool elements are this program run
 * again as children ("session_failover pe URL POOL": an echo PE, see
 * session_util.h); the registrar is embedded in the parent.
 *
 * 1. Automatic fail-over with a fail-over callback: the PE has handed out a
 *    cookie and stalls with three messages unacknowledged; it is killed;
 *    the callback runs once with the failed and the new PE and the three
 *    re-sent sequence numbers, and sends a resume message from inside; the
 *    new PE gets the cookie echo first, then the resume message, then the
 *    three messages again, in order.
 * 2. Without automatic fail-over: RSERPOOL_NOTIFY_PEER_FAILED, messages sent
 *    meanwhile wait, rserpool_session_failover_now, then
 *    RSERPOOL_NOTIFY_FAILOVER with the re-sent sequence numbers in the
 *    buffer (too small a buffer first: it stays queued).
 * 3. A send with RSERPOOL_SEND_NO_FAILOVER on an automatic session: the
 *    failure is reported instead.
 * 4. A PE that hangs (SIGSTOP) without closing anything: the TCP mapping
 *    heartbeats (rserpool_config_set_heartbeat) find it out and the
 *    session fails over. */
#include <rserpool.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"
#include "registrar_util.h"
#include "session_util.h"

#define POOL "fo"

struct child {
    pid_t pid;
    FILE *out;
    uint32_t pe_id;
};

static int pe_child(const char *url, const char *pool) {
    rserpool_context *ctx = session_context(url);
    rserpool_pe_server *srv = session_listen(ctx, pool);
    uint32_t id = 0;
    if (srv == NULL || rserpool_pe_server_pe_id(srv, &id) != RSERPOOL_OK) return 1;
    printf("pe %u\n", (unsigned)id);
    fflush(stdout);
    echo_serve(srv, -1);
    return 0;
}

/* Starts a PE child and reads its identifier. */
static int child_start(struct child *c, const char *self, const char *url) {
    char *args[] = {(char *)self, (char *)"pe", (char *)url, (char *)POOL, NULL};
    char line[64];
    int fds[2];
    if (pipe(fds) != 0) return 0;
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    c->pid = fork();
    if (c->pid < 0) return 0;
    if (c->pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execv(self, args);
        _exit(127);
    }
    close(fds[1]);
    c->out = fdopen(fds[0], "r");
    if (c->out == NULL || fgets(line, sizeof line, c->out) == NULL ||
        sscanf(line, "pe %u", &c->pe_id) != 1) {
        fprintf(stderr, "a PE child did not start\n");
        return 0;
    }
    return 1;
}

static void child_kill(struct child *c) {
    if (c->pid > 0) {
        kill(c->pid, SIGKILL);
        waitpid(c->pid, NULL, 0);
        c->pid = 0;
    }
    if (c->out != NULL) {
        fclose(c->out);
        c->out = NULL;
    }
}

static void send_text(rserpool_session *s, const char *m, uint32_t flags, uint64_t want_seq) {
    uint64_t seq = 999;
    CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)m, strlen(m), PPID_TEST, flags,
                                    NULL, &seq),
                 RSERPOOL_OK);
    CHECK_EQ_INT(seq, want_seq);
}

/* Waits until `buffered` messages are sent and unacknowledged. */
static int wait_unacked(rserpool_session *s, size_t buffered, uint64_t sent) {
    double end = now_s() + WAIT_MS / 1000.0;
    rserpool_session_status st;
    do {
        CHECK_EQ_INT(rserpool_session_get_status(s, &st), RSERPOOL_OK);
        if (st.buffered == buffered && st.sent >= sent) return 1;
        sleep_ms(10);
    } while (now_s() < end);
    fprintf(stderr, "buffered %zu sent %llu, wanted %zu and %llu\n", st.buffered,
            (unsigned long long)st.sent, buffered, (unsigned long long)sent);
    return 0;
}

/* ------------------------------------------------------------ phase 1 */

struct fo {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    uint32_t from, to;
    uint64_t resent[16];
    size_t count;
    int send_rc;
    uint64_t resume_seq;
};

static void on_failover(rserpool_session *s, uint32_t from, uint32_t to, const uint64_t *resent,
                        size_t count, void *user) {
    struct fo *f = user;
    pthread_mutex_lock(&f->mu);
    f->calls++;
    f->from = from;
    f->to = to;
    f->count = count;
    for (size_t i = 0; i < count && i < 16; i++) f->resent[i] = resent[i];
    /* The resume message goes out before the re-sent ones. */
    f->send_rc = rserpool_data_send(s, NULL, (const uint8_t *)"resume", 6, PPID_TEST, 0, NULL,
                                    &f->resume_seq);
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static void with_callback(rserpool_context *pu, const char *self, const char *url,
                          struct child *a, struct child *b) {
    struct fo f;
    rserpool_session *s = NULL;
    rserpool_notification n;
    rserpool_session_status st;
    uint8_t buf[256];
    char stall[32];
    const char *want[] = {"resume", stall, "m1", "m2"};
    struct timespec ts;

    memset(&f, 0, sizeof f);
    pthread_mutex_init(&f.mu, NULL);
    pthread_cond_init(&f.cv, NULL);

    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)POOL, strlen(POOL), NULL, &s),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_set_failover_callback(s, on_failover, &f), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_CONNECTED);
    CHECK_EQ_INT(n.pe_id, a->pe_id);

    send_text(s, "cookie:state-A", 0, 0);
    CHECK(session_expect(s, "cookie:state-A"));
    CHECK(child_start(b, self, url));

    /* A stalls on the first: all three stay unacknowledged. */
    snprintf(stall, sizeof stall, "stall:%u", (unsigned)a->pe_id);
    send_text(s, stall, 0, 1);
    send_text(s, "m1", 0, 2);
    send_text(s, "m2", 0, 3);
    CHECK(wait_unacked(s, 3, 4));
    sleep_ms(100);
    child_kill(a);

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&f.mu);
    while (f.calls == 0)
        if (pthread_cond_timedwait(&f.cv, &f.mu, &ts) != 0) break;
    CHECK_EQ_INT(f.calls, 1);
    CHECK_EQ_INT(f.from, a->pe_id);
    CHECK_EQ_INT(f.to, b->pe_id);
    CHECK_EQ_INT(f.count, 3);
    CHECK(f.resent[0] == 1 && f.resent[1] == 2 && f.resent[2] == 3);
    CHECK_EQ_INT(f.send_rc, RSERPOOL_OK);
    CHECK_EQ_INT(f.resume_seq, 4);
    pthread_mutex_unlock(&f.mu);

    /* B: the cookie echo first, then the resume message, then the three
     * messages A never acknowledged, in order; no FAILOVER notification
     * (the callback took it). */
    CHECK(session_expect(s, "cookie-echo:state-A"));
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int rc = rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS);
        CHECK_EQ_INT(rc, RSERPOOL_OK);
        if (rc != RSERPOOL_OK) break;
        CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_DATA);
        CHECK(n.len == strlen(want[i]) && memcmp(buf, want[i], n.len) == 0);
    }
    CHECK_EQ_INT(rserpool_session_get_status(s, &st), RSERPOOL_OK);
    CHECK_EQ_INT(st.failovers, 1);
    CHECK_EQ_INT(st.resent, 3);
    CHECK_EQ_INT(st.pe_id, b->pe_id);
    CHECK_EQ_INT(st.state, RSERPOOL_STATE_UP);
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
    pthread_cond_destroy(&f.cv);
    pthread_mutex_destroy(&f.mu);
}

/* ------------------------------------------------------------ phase 2 */

static void without_auto(rserpool_context *pu, struct child **pes, size_t npes) {
    rserpool_session_params p;
    rserpool_session *s = NULL;
    rserpool_notification n;
    uint8_t buf[256];
    uint64_t seqs[4];
    char stall[32];
    struct child *x = NULL;
    uint32_t other = 0;

    rserpool_session_params_init(&p);
    p.auto_failover = 0;
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)POOL, strlen(POOL), &p, &s),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_CONNECTED);
    for (size_t i = 0; i < npes; i++) {
        if (pes[i]->pe_id == n.pe_id)
            x = pes[i];
        else
            other = pes[i]->pe_id;
    }
    CHECK(x != NULL);
    if (x == NULL) return;

    snprintf(stall, sizeof stall, "stall:%u", (unsigned)x->pe_id);
    send_text(s, stall, 0, 0);
    send_text(s, "n1", 0, 1);
    CHECK(wait_unacked(s, 2, 2));
    sleep_ms(100);
    child_kill(x);

    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_PEER_FAILED);
    CHECK_EQ_INT(n.pe_id, x->pe_id);
    /* Waits with the others until the application decides. */
    send_text(s, "n2", 0, 2);
    sleep_ms(100);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, 0), RSERPOOL_ERR_WOULD_BLOCK);
    CHECK_EQ_INT(rserpool_session_failover_now(s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_session_failover_now(s), RSERPOOL_ERR_INVALID_STATE);

    /* The re-sent sequence numbers come in the buffer. */
    memset(&n, 0, sizeof n);
    CHECK_EQ_INT(rserpool_recv(s, &n, (uint8_t *)seqs, 8, WAIT_MS), RSERPOOL_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_FAILOVER);
    CHECK_EQ_INT(n.len, 16);
    CHECK_EQ_INT(rserpool_recv(s, &n, (uint8_t *)seqs, sizeof seqs, 0), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_FAILOVER);
    CHECK_EQ_INT(n.from_pe_id, x->pe_id);
    CHECK_EQ_INT(n.pe_id, other);
    CHECK_EQ_INT(n.count, 2);
    CHECK_EQ_INT(n.len, 16);
    CHECK(seqs[0] == 0 && seqs[1] == 1);
    CHECK(session_expect(s, stall));
    CHECK(session_expect(s, "n1"));
    CHECK(session_expect(s, "n2"));
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
}

/* ------------------------------------------------------------ phase 3 */

static void no_failover_send(rserpool_context *pu, struct child *y, struct child *d,
                             const char *self, const char *url) {
    rserpool_session *s = NULL;
    rserpool_notification n;
    uint8_t buf[256];
    char stall[32];

    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)POOL, strlen(POOL), NULL, &s),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_CONNECTED);
    CHECK_EQ_INT(n.pe_id, y->pe_id);
    CHECK(child_start(d, self, url));
    snprintf(stall, sizeof stall, "stall:%u", (unsigned)y->pe_id);
    send_text(s, stall, RSERPOOL_SEND_NO_FAILOVER, 0);
    CHECK(wait_unacked(s, 1, 1));
    child_kill(y);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_PEER_FAILED);
    CHECK_EQ_INT(n.pe_id, y->pe_id);
    /* Closing a session that waits after a failure ends it at once. */
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
}

/* ------------------------------------------------------------ phase 4 */

static void hung_pe(rserpool_context *pu, struct child *d, struct child *e, const char *self,
                    const char *url) {
    rserpool_session *s = NULL;
    rserpool_notification n;
    uint8_t buf[256];
    char want[32];
    int failovers = 0;

    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)POOL, strlen(POOL), NULL, &s),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_CONNECTED);
    CHECK_EQ_INT(n.pe_id, d->pe_id);
    CHECK(child_start(e, self, url));
    send_text(s, "before", 0, 0);
    CHECK(session_expect(s, "before"));
    kill(d->pid, SIGSTOP);
    send_text(s, "while-hung", 0, 1);
    /* Nothing closes the connection: the heartbeats must notice. */
    for (;;) {
        int rc = rserpool_recv(s, &n, buf, sizeof buf - 1, WAIT_MS);
        CHECK_EQ_INT(rc, RSERPOOL_OK);
        if (rc != RSERPOOL_OK) break;
        if (n.kind == RSERPOOL_NOTIFY_FAILOVER) {
            failovers++;
            CHECK_EQ_INT(n.from_pe_id, d->pe_id);
            CHECK_EQ_INT(n.pe_id, e->pe_id);
            continue;
        }
        buf[n.len] = 0;
        snprintf(want, sizeof want, "while-hung");
        CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_DATA);
        CHECK(strcmp((char *)buf, want) == 0);
        break;
    }
    CHECK_EQ_INT(failovers, 1);
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
    child_kill(d); /* SIGKILL ends a stopped process too */
}

int main(int argc, char **argv) {
    rserpool_registrar *reg = NULL;
    struct child a = {0, NULL, 0}, b = {0, NULL, 0}, c = {0, NULL, 0}, d = {0, NULL, 0},
                 e = {0, NULL, 0};
    struct child *live[2];
    char url[128];
    rserpool_context *pu;

    if (argc == 4 && strcmp(argv[1], "pe") == 0) return pe_child(argv[2], argv[3]);
    signal(SIGPIPE, SIG_IGN);

    reg = session_registrar(url, sizeof url);
    if (reg == NULL) return 1;
    pu = session_context_hb(url, 200, 5);

    if (child_start(&a, argv[0], url)) {
        with_callback(pu, argv[0], url, &a, &b);
        if (b.pid > 0 && child_start(&c, argv[0], url)) {
            live[0] = &b;
            live[1] = &c;
            without_auto(pu, live, 2);
            {
                struct child *y = b.pid > 0 ? &b : &c;
                no_failover_send(pu, y, &d, argv[0], url);
            }
            if (d.pid > 0) hung_pe(pu, &d, &e, argv[0], url);
        }
    }

    child_kill(&a);
    child_kill(&b);
    child_kill(&c);
    child_kill(&d);
    child_kill(&e);
    CHECK_EQ_INT(rserpool_context_free(pu), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_registrar_stop(reg), RSERPOOL_OK);
    TEST_DONE("session_failover");
}
