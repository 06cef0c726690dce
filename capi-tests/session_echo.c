#define _POSIX_C_SOURCE 200809L
/* Enhanced-mode sessions in one process: an embedded registrar, an echo pool
 * element on a thread of its own (rserpool_pe_listen / rserpool_pe_accept,
 * every session in one poll() loop), and pool user sessions: echo with
 * sequence numbers, poll() on the session descriptor, a message too large
 * for the buffer staying queued, cookies, sending to a PE identifier, a
 * session to a transport address, the data indication callback (and what
 * may be called inside it), and every error path: NULL pointers, stale
 * handles, PPID 11, bad flags and parameters, unknown pool, closed
 * sessions, a blocking accept woken by close, the context freed under a
 * session. */
#include <rserpool.h>

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include "test_util.h"
#include "registrar_util.h"
#include "session_util.h"

static int readable(int fd, int ms) {
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

struct pe_thread {
    rserpool_pe_server *srv;
    int stop[2];
};

static void *pe_main(void *arg) {
    struct pe_thread *t = arg;
    echo_serve(t->srv, t->stop[0]);
    return NULL;
}

/* ------------------------------------------------------------ callbacks */

struct indication {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int count;
    int in_order;
    int pongs;
    int deadlock_seen;
    int connected_seen;
    int would_block_seen;
    int ctx_free_refused;
    rserpool_context *ctx;
};

static void on_data(rserpool_session *s, uint32_t ppid, uint16_t stream, const uint8_t *data,
                    size_t len, void *user) {
    struct indication *ind = user;
    rserpool_notification n;
    (void)stream;
    pthread_mutex_lock(&ind->mu);
    if (ind->count == 0) {
        /* Waiting calls are refused on the context's thread; polling works:
         * the application has not received anything yet, so the queue holds
         * exactly the CONNECTED that came before this first message. */
        ind->deadlock_seen = rserpool_recv(s, &n, NULL, 0, 1000) == RSERPOOL_ERR_WOULD_DEADLOCK;
        ind->connected_seen = rserpool_recv(s, &n, NULL, 0, 0) == RSERPOOL_OK &&
                              n.kind == RSERPOOL_NOTIFY_CONNECTED;
        ind->would_block_seen = rserpool_recv(s, &n, NULL, 0, 0) == RSERPOOL_ERR_WOULD_BLOCK;
        ind->ctx_free_refused = rserpool_context_free(ind->ctx) == RSERPOOL_ERR_WOULD_DEADLOCK;
    }
    if (len == 4 && memcmp(data, "ping", 4) == 0) {
        /* Sending from the callback works. */
        CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)"pong", 4, ppid, 0, NULL, NULL),
                     RSERPOOL_OK);
    } else if (len == 4 && memcmp(data, "pong", 4) == 0) {
        ind->pongs++;
    } else {
        char want[32];
        int l = snprintf(want, sizeof want, "cb-%d", ind->count);
        if (ppid != PPID_TEST || len != (size_t)l || memcmp(data, want, len) != 0)
            ind->in_order = 0;
        ind->count++;
    }
    pthread_cond_broadcast(&ind->cv);
    pthread_mutex_unlock(&ind->mu);
}

static void on_failover(rserpool_session *s, uint32_t from, uint32_t to, const uint64_t *resent,
                        size_t count, void *user) {
    (void)s, (void)from, (void)to, (void)resent, (void)count;
    (*(int *)user)++;
}

/* Waits until `*v >= want` under the indication's lock. */
static int wait_count(struct indication *ind, int *v, int want) {
    struct timespec ts;
    int ok;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&ind->mu);
    while (*v < want)
        if (pthread_cond_timedwait(&ind->cv, &ind->mu, &ts) != 0) break;
    ok = *v >= want;
    pthread_mutex_unlock(&ind->mu);
    return ok;
}

/* ------------------------------------------------------------ blocked accept */

struct acceptor {
    rserpool_pe_server *srv;
    int rc;
};

static void *accept_main(void *arg) {
    struct acceptor *a = arg;
    rserpool_session *s = NULL;
    a->rc = rserpool_pe_accept(a->srv, -1, &s);
    if (a->rc == RSERPOOL_OK) rserpool_session_close(s);
    return NULL;
}

/* ------------------------------------------------------------ the test */

static void echo_session(rserpool_context *pu, uint32_t pe_id) {
    static uint8_t big[RSERPOOL_MAX_MESSAGE_LEN + 1];
    uint8_t buf[2048];
    rserpool_session *s = NULL;
    rserpool_notification n;
    rserpool_session_status info;
    int fd = -1, fd2 = -1;
    size_t len = 0;

    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"echo", 4, NULL, &s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_CONNECTED);
    CHECK_EQ_INT(n.pe_id, pe_id);

    /* 50 messages: sequence numbers 0..49, addressed to the PE. */
    for (int i = 0; i < 50; i++) {
        char m[32];
        uint32_t pe = 0;
        uint64_t seq = 99;
        int l = snprintf(m, sizeof m, "m%d", i);
        CHECK_EQ_INT(
            rserpool_data_send(s, NULL, (const uint8_t *)m, (size_t)l, PPID_TEST, 0, &pe, &seq),
            RSERPOOL_OK);
        CHECK_EQ_INT(seq, i);
        CHECK_EQ_INT(pe, pe_id);
    }
    /* ... back in order, each announced by the descriptor. */
    CHECK_EQ_INT(rserpool_session_fd(s, &fd), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_session_fd(s, &fd2), RSERPOOL_OK);
    CHECK_EQ_INT(fd, fd2);
    for (int i = 0; i < 50;) {
        int rc;
        CHECK(readable(fd, WAIT_MS));
        while ((rc = rserpool_recv(s, &n, buf, sizeof buf, 0)) == RSERPOOL_OK) {
            char m[32];
            int l = snprintf(m, sizeof m, "m%d", i);
            CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_DATA);
            CHECK_EQ_INT(n.ppid, PPID_TEST);
            CHECK(n.len == (size_t)l && memcmp(buf, m, n.len) == 0);
            i++;
        }
        CHECK_EQ_INT(rc, RSERPOOL_ERR_WOULD_BLOCK);
        if (rc != RSERPOOL_ERR_WOULD_BLOCK) break;
    }
    CHECK(!readable(fd, 0));
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, 0), RSERPOOL_ERR_WOULD_BLOCK);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, 50), RSERPOOL_ERR_TIMEOUT);

    /* A message larger than the buffer stays queued, the descriptor stays
     * readable, and the call says how much is needed. */
    memset(big, 'x', 1000);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, big, 1000, PPID_TEST, 0, NULL, NULL), RSERPOOL_OK);
    CHECK(readable(fd, WAIT_MS));
    memset(&n, 0, sizeof n);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, 10, WAIT_MS), RSERPOOL_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_DATA);
    CHECK_EQ_INT(n.len, 1000);
    CHECK(readable(fd, 0));
    CHECK_EQ_INT(rserpool_recv(s, &n, NULL, 0, 0), RSERPOOL_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(n.len, 1000);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, 0), RSERPOOL_OK);
    CHECK_EQ_INT(n.len, 1000);
    CHECK(memcmp(buf, big, 1000) == 0);
    CHECK(!readable(fd, 0));

    /* An empty message (buf may be NULL then). */
    CHECK_EQ_INT(rserpool_data_send(s, NULL, NULL, 0, PPID_TEST, 0, NULL, NULL), RSERPOOL_OK);
    CHECK_EQ_INT(session_next(s, &n, NULL, 0), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_DATA);
    CHECK_EQ_INT(n.len, 0);

    /* A cookie from the PE: kept by the session. */
    CHECK_EQ_INT(rserpool_session_cookie(s, NULL, 0, &len), RSERPOOL_OK);
    CHECK_EQ_INT(len, 0);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)"cookie:state-1", 14, PPID_TEST, 0,
                                    NULL, NULL),
                 RSERPOOL_OK);
    CHECK(session_expect(s, "cookie:state-1"));
    CHECK_EQ_INT(rserpool_session_cookie(s, buf, 3, &len), RSERPOOL_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(len, 7);
    CHECK_EQ_INT(rserpool_session_cookie(s, buf, sizeof buf, &len), RSERPOOL_OK);
    CHECK(len == 7 && memcmp(buf, "state-1", 7) == 0);

    /* To the PE by its identifier (the one it is on: no move). */
    {
        rserpool_dest d = {RSERPOOL_DEST_PE, pe_id};
        rserpool_dest unknown = {RSERPOOL_DEST_PE, 0x7777};
        rserpool_dest bad = {7, 0};
        rserpool_dest pool = {RSERPOOL_DEST_POOL, 0};
        uint32_t pe = 0;
        CHECK_EQ_INT(
            rserpool_data_send(s, &d, (const uint8_t *)"to-pe", 5, PPID_TEST, 0, &pe, NULL),
            RSERPOOL_OK);
        CHECK_EQ_INT(pe, pe_id);
        CHECK(session_expect(s, "to-pe"));
        CHECK_EQ_INT(rserpool_data_send(s, &pool, (const uint8_t *)"to-pool", 7, PPID_TEST,
                                        RSERPOOL_SEND_FAILOVER | RSERPOOL_SEND_UNORDERED, NULL,
                                        NULL),
                     RSERPOOL_OK);
        CHECK(session_expect(s, "to-pool"));
        CHECK_EQ_INT(rserpool_data_send(s, &unknown, buf, 1, PPID_TEST, 0, NULL, NULL),
                     RSERPOOL_ERR_UNKNOWN_PE);
        CHECK_EQ_INT(rserpool_data_send(s, &bad, buf, 1, PPID_TEST, 0, NULL, NULL),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
    }

    CHECK_EQ_INT(rserpool_session_get_status(s, &info), RSERPOOL_OK);
    CHECK_EQ_INT(info.state, RSERPOOL_STATE_UP);
    CHECK_EQ_INT(info.pe_id, pe_id);
    CHECK(info.sent >= 55);
    CHECK_EQ_INT(info.failovers, 0);
    CHECK_EQ_INT(info.cookies, 1);

    /* Error paths on a live session. */
    CHECK_EQ_INT(rserpool_data_send(s, NULL, buf, 1, 11, 0, NULL, NULL),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, big, sizeof big, PPID_TEST, 0, NULL, NULL),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, buf, 1, PPID_TEST, 0x4, NULL, NULL),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, buf, 1, PPID_TEST,
                                    RSERPOOL_SEND_FAILOVER | RSERPOOL_SEND_NO_FAILOVER, NULL, NULL),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, NULL, 5, PPID_TEST, 0, NULL, NULL),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_data_send(NULL, NULL, buf, 1, PPID_TEST, 0, NULL, NULL),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_recv(s, NULL, buf, sizeof buf, 0), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_recv(s, &n, NULL, 10, 0), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_recv(NULL, &n, buf, sizeof buf, 0), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_fd(s, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_cookie(s, buf, sizeof buf, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_get_status(s, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_failover_now(s), RSERPOOL_ERR_INVALID_STATE);
    /* Pool element calls on a pool user session. */
    CHECK_EQ_INT(rserpool_send_cookie(s, buf, 1), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_session_ack(s), RSERPOOL_ERR_INVALID_ARGUMENT);

    /* Close; the handle is dead from then on. */
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, buf, 1, PPID_TEST, 0, NULL, NULL),
                 RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, 0), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_session_fd(s, &fd), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_session_cookie(s, buf, sizeof buf, &len), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_session_get_status(s, &info), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_session_failover_now(s), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_set_data_indication(s, on_data, NULL), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_set_failover_callback(s, NULL, NULL), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_send_cookie(s, buf, 1), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_session_ack(s), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_session_close(NULL), RSERPOOL_OK);
    /* A made-up handle. */
    CHECK_EQ_INT(rserpool_session_close((rserpool_session *)(uintptr_t)0x1234),
                 RSERPOOL_ERR_INVALID_HANDLE);
}

static void indication_session(rserpool_context *pu) {
    struct indication ind;
    rserpool_session_params p;
    rserpool_session *s = NULL;
    rserpool_notification n;
    uint8_t buf[256];
    int failovers = 0, fd = -1;

    memset(&ind, 0, sizeof ind);
    pthread_mutex_init(&ind.mu, NULL);
    pthread_cond_init(&ind.cv, NULL);
    ind.in_order = 1;
    ind.ctx = pu;

    CHECK_EQ_INT(rserpool_session_params_init(&p), RSERPOOL_OK);
    p.nonblock = 1;
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"echo", 4, &p, &s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_set_data_indication(s, on_data, &ind), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_set_failover_callback(s, on_failover, &failovers), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_session_fd(s, &fd), RSERPOOL_OK);
    /* Sent while connecting: they wait, then go out in order. */
    for (int i = 0; i < 20; i++) {
        char m[32];
        int l = snprintf(m, sizeof m, "cb-%d", i);
        CHECK_EQ_INT(
            rserpool_data_send(s, NULL, (const uint8_t *)m, (size_t)l, PPID_TEST, 0, NULL, NULL),
            RSERPOOL_OK);
    }
    /* No receive here before the callback has run: CONNECTED is queued
     * before the first message reaches the callback, and the callback's own
     * non-blocking receive takes it (were this thread waiting for it too,
     * whichever came first would get it). */
    CHECK(wait_count(&ind, &ind.count, 20));
    CHECK(ind.in_order);
    CHECK(ind.deadlock_seen);
    CHECK(ind.connected_seen);
    CHECK(ind.would_block_seen);
    CHECK(ind.ctx_free_refused);
    /* The callback answers "ping" with "pong" from inside. */
    CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)"ping", 4, PPID_TEST, 0, NULL, NULL),
                 RSERPOOL_OK);
    CHECK(wait_count(&ind, &ind.pongs, 1));
    /* The data went to the callback, not to the queue. */
    CHECK(!readable(fd, 0));
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, 0), RSERPOOL_ERR_WOULD_BLOCK);
    /* Removed: messages are queued again. */
    CHECK_EQ_INT(rserpool_set_data_indication(s, NULL, NULL), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)"queued", 6, PPID_TEST, 0, NULL,
                                    NULL),
                 RSERPOOL_OK);
    CHECK(session_expect(s, "queued"));
    CHECK_EQ_INT(failovers, 0);
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
    pthread_cond_destroy(&ind.cv);
    pthread_mutex_destroy(&ind.mu);
}

static void addr_session(rserpool_context *pu, rserpool_pe_server *srv) {
    char url[128];
    size_t len = 0;
    rserpool_session *s = NULL;
    rserpool_notification n;
    uint8_t buf[64];
    rserpool_session_params p;

    CHECK_EQ_INT(rserpool_pe_server_local_url(srv, url, 4, &len), RSERPOOL_ERR_BUFFER_TOO_SMALL);
    CHECK(len > 4);
    CHECK_EQ_INT(rserpool_pe_server_local_url(srv, url, sizeof url, &len), RSERPOOL_OK);
    CHECK(strncmp(url, "tcp://127.0.0.1:", 16) == 0 && strlen(url) == len);
    CHECK_EQ_INT(rserpool_session_open_addr(pu, url, NULL, &s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_CONNECTED);
    CHECK_EQ_INT(n.pe_id, 0);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)"direct", 6, PPID_TEST, 0, NULL,
                                    NULL),
                 RSERPOOL_OK);
    CHECK(session_expect(s, "direct"));
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);

    rserpool_session_params_init(&p);
    p.failover_pool = (const uint8_t *)"echo";
    p.failover_pool_len = 4;
    CHECK_EQ_INT(rserpool_session_open_addr(pu, url, &p, &s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);

    CHECK_EQ_INT(rserpool_session_open_addr(pu, "no url", NULL, &s), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_session_open_addr(pu, "tcp://0.0.0.0:1", NULL, &s),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_session_open_addr(pu, NULL, NULL, &s), RSERPOOL_ERR_NULL_POINTER);
    p.failover_pool_len = 0;
    CHECK_EQ_INT(rserpool_session_open_addr(pu, url, &p, &s), RSERPOOL_ERR_INVALID_ARGUMENT);
}

static void open_errors(rserpool_context *pu) {
    rserpool_session_params p;
    rserpool_session *s = NULL;
    rserpool_notification n;
    uint8_t buf[64];

    CHECK_EQ_INT(rserpool_session_params_init(NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_open(NULL, (const uint8_t *)"echo", 4, NULL, &s),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_open(pu, NULL, 4, NULL, &s), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"echo", 4, NULL, NULL),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"echo", 0, NULL, &s),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_session_open((rserpool_context *)(uintptr_t)0x99, (const uint8_t *)"e",
                                       1, NULL, &s),
                 RSERPOOL_ERR_INVALID_HANDLE);
    rserpool_session_params_init(&p);
    p.max_attempts = 0;
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"echo", 4, &p, &s),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    rserpool_session_params_init(&p);
    p.auto_failover = 2;
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"echo", 4, &p, &s),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    rserpool_session_params_init(&p);
    p.connect_timeout_ms = 0;
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"echo", 4, &p, &s),
                 RSERPOOL_ERR_INVALID_ARGUMENT);

    /* A pool nobody registered: a blocking open gives the registrar's
     * answer; a non-blocking one tells it as FAILED, then CLOSED. */
    rserpool_session_params_init(&p);
    p.max_attempts = 2;
    p.retry_interval_ms = 50;
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"nobody", 6, &p, &s),
                 RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE);
    p.nonblock = 1;
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"nobody", 6, &p, &s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_FAILED);
    CHECK_EQ_INT(n.error, RSERPOOL_ERR_NO_USABLE_ELEMENT);
    CHECK_EQ_INT(n.count, 2);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_CLOSED);
    CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS), RSERPOOL_ERR_CLOSED);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, buf, 1, PPID_TEST, 0, NULL, NULL),
                 RSERPOOL_ERR_CLOSED);
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
}

static void server_errors(rserpool_context *ctx) {
    rserpool_pe_listen_params p;
    rserpool_pe_server *srv = NULL;
    rserpool_session *s = NULL;
    struct acceptor a;
    pthread_t t;
    uint32_t id = 0;
    int fd = -1;
    char url[8];
    size_t len;

    CHECK_EQ_INT(rserpool_pe_listen_params_init(NULL), RSERPOOL_ERR_NULL_POINTER);
    rserpool_pe_listen_params_init(&p);
    CHECK_EQ_INT(rserpool_pe_listen(ctx, &p, &srv), RSERPOOL_ERR_NULL_POINTER);
    p.pool_handle = (const uint8_t *)"echo-2";
    p.handle_len = 6;
    p.listen_url = "udp://127.0.0.1:0";
    CHECK_EQ_INT(rserpool_pe_listen(ctx, &p, &srv), RSERPOOL_ERR_INVALID_ARGUMENT);
    p.listen_url = "tcp://0.0.0.0:0";
    CHECK_EQ_INT(rserpool_pe_listen(ctx, &p, &srv), RSERPOOL_ERR_INVALID_ARGUMENT);
    p.listen_url = "tcp://127.0.0.1:0";
    p.reg_life = 0;
    CHECK_EQ_INT(rserpool_pe_listen(ctx, &p, &srv), RSERPOOL_ERR_INVALID_ARGUMENT);
    p.reg_life = 60;
    p.policy.policy_type = 0x77;
    CHECK_EQ_INT(rserpool_pe_listen(ctx, &p, &srv), RSERPOOL_ERR_INVALID_ARGUMENT);
    p.policy.policy_type = RSERPOOL_POLICY_ROUND_ROBIN;
    CHECK_EQ_INT(rserpool_pe_listen(ctx, &p, &srv), RSERPOOL_OK);

    CHECK_EQ_INT(rserpool_pe_server_pe_id(srv, &id), RSERPOOL_OK);
    CHECK(id != 0);
    CHECK_EQ_INT(rserpool_pe_server_fd(srv, &fd), RSERPOOL_OK);
    CHECK(!readable(fd, 0));
    CHECK_EQ_INT(rserpool_pe_accept(srv, 0, &s), RSERPOOL_ERR_WOULD_BLOCK);
    CHECK_EQ_INT(rserpool_pe_accept(srv, 50, &s), RSERPOOL_ERR_TIMEOUT);
    CHECK_EQ_INT(rserpool_pe_accept(srv, 0, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_pe_server_local_url(srv, url, sizeof url, NULL),
                 RSERPOOL_ERR_NULL_POINTER);

    /* A blocking accept on another thread ends when the server closes. */
    a.srv = srv;
    a.rc = 1;
    pthread_create(&t, NULL, accept_main, &a);
    sleep_ms(200);
    CHECK_EQ_INT(rserpool_pe_server_close(srv), RSERPOOL_OK);
    pthread_join(t, NULL);
    CHECK(a.rc == RSERPOOL_ERR_CLOSED || a.rc == RSERPOOL_ERR_INVALID_HANDLE);

    CHECK_EQ_INT(rserpool_pe_server_close(srv), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_pe_server_close(NULL), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_pe_accept(srv, 0, &s), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_pe_server_fd(srv, &fd), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_pe_server_pe_id(srv, &id), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_pe_server_local_url(srv, url, sizeof url, &len),
                 RSERPOOL_ERR_INVALID_HANDLE);
    /* The PE is gone from the pool. */
    {
        rserpool_server_info info;
        CHECK_EQ_INT(rserpool_get_primary_server(ctx, (const uint8_t *)"echo-2", 6, &info),
                     RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE);
    }
}

int main(void) {
    rserpool_registrar *reg = NULL;
    char url[128];
    struct pe_thread pt;
    pthread_t tid;
    uint32_t pe_id = 0;
    rserpool_context *pe_ctx, *pu;

    CHECK(strcmp(rserpool_strerror(RSERPOOL_ERR_CLOSED), "the session is closed") == 0);
    CHECK(rserpool_strerror(RSERPOOL_ERR_WOULD_DEADLOCK) != NULL);
    CHECK_EQ_INT(rserpool_notification_size(), sizeof(rserpool_notification));
    CHECK_EQ_INT(rserpool_session_params_size(), sizeof(rserpool_session_params));
    {
        rserpool_config *cfg = NULL;
        CHECK_EQ_INT(rserpool_config_set_heartbeat(NULL, 100, 3), RSERPOOL_ERR_NULL_POINTER);
        CHECK_EQ_INT(rserpool_config_new(&cfg), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_config_set_heartbeat(cfg, 100, 0), RSERPOOL_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(rserpool_config_set_heartbeat(cfg, 0, 3), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_config_free(cfg), RSERPOOL_OK);
    }

    reg = session_registrar(url, sizeof url);
    if (reg == NULL) return 1;

    pe_ctx = session_context(url);
    pu = session_context(url);
    pt.srv = session_listen(pe_ctx, "echo");
    CHECK_EQ_INT(rserpool_pe_server_pe_id(pt.srv, &pe_id), RSERPOOL_OK);
    CHECK(pipe(pt.stop) == 0);
    pthread_create(&tid, NULL, pe_main, &pt);

    echo_session(pu, pe_id);
    indication_session(pu);
    addr_session(pu, pt.srv);
    open_errors(pu);
    server_errors(pe_ctx);

    /* The context freed under an open session: it ends, the handle stays. */
    {
        rserpool_session *s = NULL;
        rserpool_notification n;
        uint8_t buf[16];
        CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"echo", 4, NULL, &s), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_context_free(pu), RSERPOOL_OK);
        for (;;) {
            int rc = rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS);
            CHECK_EQ_INT(rc, RSERPOOL_OK);
            if (rc != RSERPOOL_OK || n.kind == RSERPOOL_NOTIFY_CLOSED) break;
        }
        CHECK_EQ_INT(rserpool_recv(s, &n, buf, sizeof buf, 0), RSERPOOL_ERR_CLOSED);
        CHECK_EQ_INT(rserpool_data_send(s, NULL, buf, 1, PPID_TEST, 0, NULL, NULL),
                     RSERPOOL_ERR_CLOSED);
        CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
    }

    CHECK(write(pt.stop[1], "x", 1) == 1);
    pthread_join(tid, NULL);
    close(pt.stop[0]);
    close(pt.stop[1]);
    CHECK_EQ_INT(rserpool_pe_server_close(pt.srv), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_context_free(pe_ctx), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_registrar_stop(reg), RSERPOOL_OK);
    TEST_DONE("session_echo");
}
