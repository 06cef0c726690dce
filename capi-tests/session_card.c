#define _POSIX_C_SOURCE 200809L
/* Business cards and streams through the C API, in one process: an embedded
 * registrar, three pool elements of pool "card" (each on a context of its
 * own) and a pool user that is itself a PE of pool "pu-pool".
 *  - The serving PE hands the pool user a business card naming one other PE
 *    (rserpool_send_business_card with rserpool_pe_server_info); the pool
 *    user reads it back (rserpool_session_business_card); when the serving
 *    PE's context goes away, the session fails over to exactly that PE.
 *  - The pool user sends its own card (it is a PE of "pu-pool"); the new PE
 *    gets RSERPOOL_NOTIFY_BUSINESS_CARD and reads the card's PE back.
 *  - A message on stream 7 arrives on stream 7; the reply on stream 3 too.
 *  - Error paths: NULL pointers, bad entries, too many PEs, no card yet, a
 *    pool buffer too small, a stream with other unknown flag bits. */
#include <rserpool.h>

#include <time.h>
#include <unistd.h>

#include "test_util.h"
#include "session_util.h"

#define NPE 3

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The server among `srv` that accepts the session (waits up to WAIT_MS);
 * its index, or -1. */
static int accept_any(rserpool_pe_server **srv, int n, rserpool_session **out) {
    for (int waited = 0; waited < WAIT_MS; waited += 10) {
        for (int i = 0; i < n; i++) {
            if (srv[i] == NULL) continue;
            if (rserpool_pe_accept(srv[i], 0, out) == RSERPOOL_OK) return i;
        }
        sleep_ms(10);
    }
    return -1;
}

/* Receives on a PE session until a DATA message comes (other notifications
 * are recorded in `card_seen`); returns its stream, or -1. */
static int pe_data(rserpool_session *s, uint8_t *buf, size_t cap, size_t *len, int *card_seen,
                   uint32_t *card_pe) {
    rserpool_notification n;
    for (;;) {
        int rc = rserpool_recv(s, &n, buf, cap, WAIT_MS);
        if (rc != RSERPOOL_OK) {
            fprintf(stderr, "PE receive: %s\n", rserpool_strerror(rc));
            return -1;
        }
        if (n.kind == RSERPOOL_NOTIFY_BUSINESS_CARD) {
            *card_seen = 1;
            *card_pe = n.pe_id;
            CHECK_EQ_INT(n.count, 1);
            CHECK(n.len == 7 && memcmp(buf, "pu-pool", 7) == 0);
            continue;
        }
        if (n.kind == RSERPOOL_NOTIFY_DATA) {
            *len = n.len;
            return n.stream;
        }
    }
}

int main(void) {
    rserpool_registrar *reg = NULL;
    char url[128];
    size_t len = 0, count = 0;
    rserpool_context *ctx[NPE], *pu;
    rserpool_pe_server *srv[NPE], *own;
    rserpool_server_info info[NPE], own_info, got[4];
    uint32_t ids[NPE];
    rserpool_session *s = NULL, *pe_s = NULL, *pe_s2 = NULL;
    rserpool_session_status st;
    rserpool_notification n;
    uint8_t buf[256], pool_buf[16];
    int x, y, card_seen = 0;
    uint32_t card_pe = 0;

    reg = session_registrar(url, sizeof url);
    if (reg == NULL) return 1;

    for (int i = 0; i < NPE; i++) {
        ctx[i] = session_context(url);
        srv[i] = session_listen(ctx[i], "card");
        CHECK_EQ_INT(rserpool_pe_server_info(srv[i], &info[i]), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_pe_server_pe_id(srv[i], &ids[i]), RSERPOOL_OK);
        CHECK_EQ_INT(info[i].pe_id, ids[i]);
        CHECK_EQ_INT(info[i].protocol, RSERPOOL_TRANSPORT_TCP);
        CHECK_EQ_INT(info[i].addr_count, 1);
        CHECK(strcmp(info[i].addrs[0].text, "127.0.0.1") == 0);
        CHECK(info[i].port != 0);
        CHECK_EQ_INT(info[i].transport_use, RSERPOOL_TRANSPORT_USE_DATA_PLUS_CONTROL);
        CHECK_EQ_INT(info[i].policy.policy_type, RSERPOOL_POLICY_ROUND_ROBIN);
    }
    CHECK_EQ_INT(rserpool_pe_server_info(NULL, &own_info), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_pe_server_info(srv[0], NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_pe_server_info((rserpool_pe_server *)(uintptr_t)0x99, &own_info),
                 RSERPOOL_ERR_INVALID_HANDLE);

    pu = session_context(url);
    own = session_listen(pu, "pu-pool");
    CHECK_EQ_INT(rserpool_pe_server_info(own, &own_info), RSERPOOL_OK);

    /* ---------------------------------------------- the PE's card */
    CHECK_EQ_INT(rserpool_session_open(pu, (const uint8_t *)"card", 4, NULL, &s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_session_business_card(s, pool_buf, sizeof pool_buf, &len, got, 4,
                                                &count),
                 RSERPOOL_ERR_WOULD_BLOCK);
    x = accept_any(srv, NPE, &pe_s);
    CHECK(x >= 0);
    if (x < 0) TEST_DONE("session_card");
    CHECK_EQ_INT(rserpool_session_business_card(pe_s, pool_buf, sizeof pool_buf, &len, got, 4,
                                                &count),
                 RSERPOOL_ERR_WOULD_BLOCK);
    CHECK_EQ_INT(rserpool_session_get_status(s, &st), RSERPOOL_OK);
    CHECK_EQ_INT(st.pe_id, ids[x]);
    y = (x + 1) % NPE;

    /* Bad cards are refused. */
    {
        rserpool_server_info bad = info[y];
        CHECK_EQ_INT(rserpool_send_business_card(NULL, (const uint8_t *)"card", 4, &bad, 1),
                     RSERPOOL_ERR_NULL_POINTER);
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, NULL, 1),
                     RSERPOOL_ERR_NULL_POINTER);
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, NULL, 4, &bad, 1),
                     RSERPOOL_ERR_NULL_POINTER);
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, NULL, 0, &bad, 1),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, &bad, 5000),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
        bad.port = 0;
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, &bad, 1),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
        bad = info[y];
        bad.addr_count = 0;
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, &bad, 1),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
        bad = info[y];
        bad.addrs[0].sa.ss_family = 12345;
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, &bad, 1),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
        bad = info[y];
        bad.protocol = 99;
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, &bad, 1),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
        bad = info[y];
        bad.policy.policy_type = 0x77;
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, &bad, 1),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
        bad = info[y];
        bad.addr_count = RSERPOOL_MAX_ADDRS + 1;
        CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, &bad, 1),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
    }

    /* The serving PE names PE y; a message behind the card proves it came. */
    CHECK_EQ_INT(rserpool_send_business_card(pe_s, (const uint8_t *)"card", 4, &info[y], 1),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_data_send(pe_s, NULL, (const uint8_t *)"after-card", 10, PPID_TEST, 0,
                                    NULL, NULL),
                 RSERPOOL_OK);
    CHECK(session_expect(s, "after-card"));
    CHECK_EQ_INT(rserpool_session_business_card(s, pool_buf, 2, &len, got, 4, &count),
                 RSERPOOL_ERR_BUFFER_TOO_SMALL);
    CHECK_EQ_INT(len, 4);
    CHECK_EQ_INT(rserpool_session_business_card(s, NULL, 4, &len, got, 4, &count),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_business_card(s, pool_buf, sizeof pool_buf, NULL, got, 4,
                                                &count),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_session_business_card(s, pool_buf, sizeof pool_buf, &len, NULL, 0,
                                                &count),
                 RSERPOOL_OK);
    CHECK_EQ_INT(count, 1);
    memset(got, 0, sizeof got);
    CHECK_EQ_INT(rserpool_session_business_card(s, pool_buf, sizeof pool_buf, &len, got, 4,
                                                &count),
                 RSERPOOL_OK);
    CHECK(len == 4 && memcmp(pool_buf, "card", 4) == 0);
    CHECK_EQ_INT(count, 1);
    CHECK_EQ_INT(got[0].pe_id, ids[y]);
    CHECK_EQ_INT(got[0].port, info[y].port);
    CHECK_EQ_INT(got[0].protocol, RSERPOOL_TRANSPORT_TCP);
    CHECK(strcmp(got[0].addrs[0].text, "127.0.0.1") == 0);

    /* Streams, PU -> PE and back. */
    CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)"s7", 2, PPID_TEST,
                                    7u << RSERPOOL_SEND_STREAM_SHIFT, NULL, NULL),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)"bad", 3, PPID_TEST,
                                    (7u << RSERPOOL_SEND_STREAM_SHIFT) | 0x0100, NULL, NULL),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(pe_data(pe_s, buf, sizeof buf, &len, &card_seen, &card_pe), 7);
    CHECK(len == 2 && memcmp(buf, "s7", 2) == 0);
    CHECK_EQ_INT(rserpool_data_send(pe_s, NULL, (const uint8_t *)"s3", 2, PPID_TEST,
                                    3u << RSERPOOL_SEND_STREAM_SHIFT, NULL, NULL),
                 RSERPOOL_OK);
    CHECK_EQ_INT(session_next(s, &n, buf, sizeof buf), RSERPOOL_OK);
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_DATA);
    CHECK_EQ_INT(n.stream, 3);

    /* ---------------------------------------------- fail-over by the card */
    CHECK_EQ_INT(rserpool_session_close(pe_s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_pe_server_close(srv[x]), RSERPOOL_OK);
    srv[x] = NULL;
    CHECK_EQ_INT(rserpool_context_free(ctx[x]), RSERPOOL_OK);
    ctx[x] = NULL;
    for (;;) {
        int rc = rserpool_recv(s, &n, buf, sizeof buf, WAIT_MS);
        CHECK_EQ_INT(rc, RSERPOOL_OK);
        if (rc != RSERPOOL_OK || n.kind == RSERPOOL_NOTIFY_FAILOVER) break;
    }
    CHECK_EQ_INT(n.kind, RSERPOOL_NOTIFY_FAILOVER);
    CHECK_EQ_INT(n.from_pe_id, ids[x]);
    CHECK_EQ_INT(n.pe_id, ids[y]);
    CHECK_EQ_INT(accept_any(srv, NPE, &pe_s2), y);

    /* ---------------------------------------------- the pool user's card */
    CHECK_EQ_INT(rserpool_send_business_card(s, (const uint8_t *)"pu-pool", 7, &own_info, 1),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)"hello", 5, PPID_TEST, 0, NULL,
                                    NULL),
                 RSERPOOL_OK);
    CHECK_EQ_INT(pe_data(pe_s2, buf, sizeof buf, &len, &card_seen, &card_pe), 0);
    CHECK(len == 5 && memcmp(buf, "hello", 5) == 0);
    CHECK(card_seen);
    CHECK_EQ_INT(card_pe, own_info.pe_id);
    memset(got, 0, sizeof got);
    CHECK_EQ_INT(rserpool_session_business_card(pe_s2, pool_buf, sizeof pool_buf, &len, got, 4,
                                                &count),
                 RSERPOOL_OK);
    CHECK(len == 7 && memcmp(pool_buf, "pu-pool", 7) == 0);
    CHECK_EQ_INT(count, 1);
    CHECK_EQ_INT(got[0].pe_id, own_info.pe_id);
    CHECK_EQ_INT(got[0].port, own_info.port);
    /* Stopping the card: NULL pool and no PEs. */
    CHECK_EQ_INT(rserpool_send_business_card(s, NULL, 0, NULL, 0), RSERPOOL_OK);

    CHECK_EQ_INT(rserpool_session_close(pe_s2), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_session_close(s), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_send_business_card(s, NULL, 0, NULL, 0), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_pe_server_close(own), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_context_free(pu), RSERPOOL_OK);
    for (int i = 0; i < NPE; i++) {
        if (srv[i]) CHECK_EQ_INT(rserpool_pe_server_close(srv[i]), RSERPOOL_OK);
        if (ctx[i]) CHECK_EQ_INT(rserpool_context_free(ctx[i]), RSERPOOL_OK);
    }
    rserpool_registrar_stop(reg);
    TEST_DONE("session_card");
}
