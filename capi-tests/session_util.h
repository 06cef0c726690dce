/* Helpers of the enhanced-mode session tests: a context with short timers,
 * and an echo pool element serving all its sessions from one poll() loop.
 * The test must define _POSIX_C_SOURCE 200809L before any include. */
#ifndef RSERPOOL_SESSION_UTIL_H
#define RSERPOOL_SESSION_UTIL_H

#include <rserpool.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"

/* The PPID of the tests' application messages. */
#define PPID_TEST 4242u
/* How long a test waits for anything (valgrind, a loaded 2-core machine). */
#define WAIT_MS 30000

/* With heartbeats every `hb_ms` (0: the default, 30 s), `missed` in a row
 * unanswered closing a connection. */
static inline rserpool_context *session_context_hb(const char *registrar_url, uint32_t hb_ms,
                                                   uint32_t missed) {
    rserpool_config *cfg = NULL;
    rserpool_context *ctx = NULL;
    CHECK_EQ_INT(rserpool_config_new(&cfg), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, registrar_url), RSERPOOL_OK);
    if (hb_ms) CHECK_EQ_INT(rserpool_config_set_heartbeat(cfg, hb_ms, missed), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T5_SERVER_HUNT, 200), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T1_REQUEST, 2000), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T2_REGISTRATION, 2000),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T3_DEREGISTRATION, 2000),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_STALE_CACHE, 0), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_SHUTDOWN, 1000), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_context_new(cfg, &ctx), RSERPOOL_OK);
    rserpool_config_free(cfg);
    return ctx;
}

static inline rserpool_context *session_context(const char *registrar_url) {
    return session_context_hb(registrar_url, 0, 0);
}

/* Starts an embedded registrar on an ephemeral loopback port; its URL goes to
 * `url` (`cap` bytes). NULL (with a message) if it cannot start. */
static inline rserpool_registrar *session_registrar(char *url, size_t cap) {
    const char *asap[] = {"tcp://127.0.0.1:0"};
    rserpool_registrar_params rp;
    rserpool_registrar *reg = NULL;
    size_t len = 0;
    rserpool_registrar_params_init(&rp);
    rp.asap_urls = asap;
    rp.asap_count = 1;
    if (rserpool_registrar_start(&rp, &reg) != RSERPOOL_OK) {
        fprintf(stderr, "cannot start the registrar\n");
        return NULL;
    }
    CHECK_EQ_INT(rserpool_registrar_local_url(reg, 0, url, cap, &len), RSERPOOL_OK);
    return reg;
}

/* Listens on an ephemeral loopback port as a PE of `pool`. */
static inline rserpool_pe_server *session_listen(rserpool_context *ctx, const char *pool) {
    rserpool_pe_listen_params p;
    rserpool_pe_server *srv = NULL;
    CHECK_EQ_INT(rserpool_pe_listen_params_init(&p), RSERPOOL_OK);
    p.pool_handle = (const uint8_t *)pool;
    p.handle_len = strlen(pool);
    p.listen_url = "tcp://127.0.0.1:0";
    CHECK_EQ_INT(rserpool_pe_listen(ctx, &p, &srv), RSERPOOL_OK);
    return srv;
}

/* The next notification other than CONNECTED, FAILOVER and ACKED (which
 * are skipped); RSERPOOL_OK or the error. */
static inline int session_next(rserpool_session *s, rserpool_notification *n, uint8_t *buf,
                               size_t cap) {
    for (;;) {
        int rc = rserpool_recv(s, n, buf, cap, WAIT_MS);
        if (rc != RSERPOOL_OK) return rc;
        if (n->kind != RSERPOOL_NOTIFY_CONNECTED && n->kind != RSERPOOL_NOTIFY_FAILOVER &&
            n->kind != RSERPOOL_NOTIFY_ACKED)
            return RSERPOOL_OK;
    }
}

/* Expects the next DATA message to be the NUL-terminated `want`. */
static inline int session_expect(rserpool_session *s, const char *want) {
    uint8_t buf[2048];
    rserpool_notification n;
    int rc = session_next(s, &n, buf, sizeof buf - 1);
    if (rc != RSERPOOL_OK) {
        fprintf(stderr, "expected \"%s\", got error %d (%s)\n", want, rc, rserpool_strerror(rc));
        return 0;
    }
    buf[n.len < sizeof buf ? n.len : sizeof buf - 1] = 0;
    if (n.kind != RSERPOOL_NOTIFY_DATA || n.len != strlen(want) || memcmp(buf, want, n.len) != 0) {
        fprintf(stderr, "expected \"%s\", got kind %u \"%s\"\n", want, (unsigned)n.kind,
                n.kind == RSERPOOL_NOTIFY_DATA ? (char *)buf : "");
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------ echo PE */

/* An echo pool element: every message comes back unchanged, except
 *  - "cookie:X": the PE sends cookie X, then echoes the message;
 *  - "stall:ID" with ID this PE's identifier: the PE stops reading that
 *    session (nothing it got is acknowledged from then on);
 *  - "whoami": answered with "pe:ID".
 * A cookie echo is answered with the message "cookie-echo:X". Serves until
 * `stop_fd` is readable (-1: forever). */
#define ECHO_MAX_SESSIONS 32

static inline void echo_handle(rserpool_session *s, uint32_t my_id, int *stalled, int *closed) {
    uint8_t buf[70000];
    char out[128];
    rserpool_notification n;
    for (;;) {
        int rc = rserpool_recv(s, &n, buf, sizeof buf, 0);
        if (rc == RSERPOOL_ERR_WOULD_BLOCK) return;
        if (rc != RSERPOOL_OK) {
            *closed = 1;
            return;
        }
        switch (n.kind) {
        case RSERPOOL_NOTIFY_DATA:
            if (n.len > 7 && memcmp(buf, "cookie:", 7) == 0)
                CHECK_EQ_INT(rserpool_send_cookie(s, buf + 7, n.len - 7), RSERPOOL_OK);
            if (n.len > 6 && memcmp(buf, "stall:", 6) == 0) {
                char idtext[16];
                size_t l = n.len - 6 < sizeof idtext - 1 ? n.len - 6 : sizeof idtext - 1;
                memcpy(idtext, buf + 6, l);
                idtext[l] = 0;
                if ((uint32_t)strtoul(idtext, NULL, 10) == my_id) {
                    *stalled = 1;
                    return;
                }
            }
            if (n.len == 6 && memcmp(buf, "whoami", 6) == 0) {
                int l = snprintf(out, sizeof out, "pe:%u", (unsigned)my_id);
                CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)out, (size_t)l, n.ppid,
                                                0, NULL, NULL),
                             RSERPOOL_OK);
                break;
            }
            CHECK_EQ_INT(rserpool_data_send(s, NULL, buf, n.len, n.ppid, 0, NULL, NULL),
                         RSERPOOL_OK);
            break;
        case RSERPOOL_NOTIFY_COOKIE_ECHO: {
            int l = snprintf(out, sizeof out, "cookie-echo:%.*s", (int)(n.len < 64 ? n.len : 64),
                             (const char *)buf);
            CHECK_EQ_INT(rserpool_data_send(s, NULL, (const uint8_t *)out, (size_t)l, PPID_TEST,
                                            0, NULL, NULL),
                         RSERPOOL_OK);
            break;
        }
        case RSERPOOL_NOTIFY_CLOSED:
            *closed = 1;
            return;
        default:
            break;
        }
    }
}

static inline void echo_serve(rserpool_pe_server *srv, int stop_fd) {
    rserpool_session *sess[ECHO_MAX_SESSIONS];
    int stalled[ECHO_MAX_SESSIONS];
    size_t count = 0;
    uint32_t my_id = 0;
    int sfd = -1;
    CHECK_EQ_INT(rserpool_pe_server_pe_id(srv, &my_id), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_pe_server_fd(srv, &sfd), RSERPOOL_OK);
    for (;;) {
        struct pollfd p[ECHO_MAX_SESSIONS + 2];
        size_t np = 0, first;
        p[np].fd = sfd;
        p[np].events = POLLIN;
        np++;
        p[np].fd = stop_fd;
        p[np].events = POLLIN;
        np++;
        first = np;
        for (size_t i = 0; i < count; i++) {
            int fd = -1;
            CHECK_EQ_INT(rserpool_session_fd(sess[i], &fd), RSERPOOL_OK);
            p[np].fd = stalled[i] ? -1 : fd;
            p[np].events = POLLIN;
            np++;
        }
        size_t polled = count;
        if (poll(p, (nfds_t)np, -1) < 0) continue;
        if (p[1].revents) break;
        if (p[0].revents & POLLIN) {
            rserpool_session *s = NULL;
            int rc = rserpool_pe_accept(srv, 0, &s);
            if (rc == RSERPOOL_OK) {
                if (count < ECHO_MAX_SESSIONS) {
                    stalled[count] = 0;
                    sess[count++] = s;
                } else {
                    rserpool_session_close(s);
                }
            } else {
                CHECK_EQ_INT(rc, RSERPOOL_ERR_WOULD_BLOCK);
            }
        }
        for (size_t i = 0; i < polled; i++) {
            int closed = 0;
            if (!(p[first + i].revents & POLLIN)) continue;
            echo_handle(sess[i], my_id, &stalled[i], &closed);
            if (closed) {
                CHECK_EQ_INT(rserpool_session_close(sess[i]), RSERPOOL_OK);
                sess[i] = NULL;
            }
        }
        /* Compact, keeping the poll slots in step next round. */
        {
            size_t j = 0;
            for (size_t i = 0; i < count; i++)
                if (sess[i] != NULL) {
                    stalled[j] = stalled[i];
                    sess[j++] = sess[i];
                }
            count = j;
        }
    }
    for (size_t i = 0; i < count; i++) rserpool_session_close(sess[i]);
}

#endif
