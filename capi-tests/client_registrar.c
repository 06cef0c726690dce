#define _POSIX_C_SOURCE 200809L
/* Pool elements and pool users through a real `rserpool registrar` process:
 * register, resolve, load updates, get_next_server moving away from a failed
 * PE, unknown pool, registrar refusals, deregistering twice, concurrent
 * callers, and a registrar killed and restarted on the same port (the PE
 * re-registers and the PU resolves again on their own). */
#include <rserpool.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>

#include "test_util.h"
#include "registrar_util.h"

static const uint8_t POOL[] = "capi-echo";
#define POOL_LEN (sizeof POOL - 1)
/* Generous: valgrind and a loaded 2-core machine. */
#define DEADLINE_S 60.0

static rserpool_context *context(const char *url) {
    rserpool_config *cfg = NULL;
    rserpool_context *ctx = NULL;
    CHECK_EQ_INT(rserpool_config_new(&cfg), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, url), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T5_SERVER_HUNT, 100), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_RETRAN_MAX, 300), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T1_REQUEST, 2000), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T2_REGISTRATION, 2000),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T3_DEREGISTRATION, 2000),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_STALE_CACHE, 100), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_context_new(cfg, &ctx), RSERPOOL_OK);
    rserpool_config_free(cfg);
    return ctx;
}

static uint32_t register_pe(rserpool_context *ctx, uint16_t port, uint32_t load, int expect) {
    const char *lo[] = {"127.0.0.1"};
    rserpool_pe_params p;
    uint32_t id = 0;
    rserpool_pe_params_init(&p);
    p.port = port;
    p.addrs = lo;
    p.addr_count = 1;
    p.policy.policy_type = RSERPOOL_POLICY_LEAST_USED;
    p.policy.load = load;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id), expect);
    if (expect == RSERPOOL_OK) CHECK(id != 0);
    return id;
}

/* Polls get_primary_server until it names `want` (0: any PE). */
static int wait_for_pe(rserpool_context *ctx, uint32_t want, rserpool_server_info *info) {
    double end = now_s() + DEADLINE_S;
    int rc;
    do {
        rc = rserpool_get_primary_server(ctx, POOL, POOL_LEN, info);
        if (rc == RSERPOOL_OK && (want == 0 || info->pe_id == want)) return 1;
        sleep_ms(50);
    } while (now_s() < end);
    fprintf(stderr, "wait_for_pe(%u): last result %d (%s)\n", (unsigned)want, rc,
            rserpool_strerror(rc));
    return 0;
}

struct worker {
    rserpool_context *ctx;
    int ok;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    for (int i = 0; i < 20; i++) {
        rserpool_server_info info;
        if (rserpool_get_primary_server(w->ctx, POOL, POOL_LEN, &info) == RSERPOOL_OK) w->ok++;
    }
    return NULL;
}

int main(void) {
    test_registrar reg;
    rserpool_context *pe, *pu;
    rserpool_server_info info;
    uint32_t a, b, status = 0;
    unsigned port;

    if (registrar_start(&reg, 0) != 0) return 1;
    port = reg.port;
    pe = context(reg.url);
    pu = context(reg.url);

    /* Two PEs in one pool, Least Used: the idle one is chosen first. */
    a = register_pe(pe, 7001, 0x10000000u, RSERPOOL_OK);
    b = register_pe(pe, 7002, 0x80000000u, RSERPOOL_OK);
    CHECK(a != b);
    CHECK_EQ_INT(rserpool_pe_status(pe, a, &status), RSERPOOL_OK);
    CHECK_EQ_INT(status, RSERPOOL_PE_REGISTERED);

    memset(&info, 0, sizeof info);
    CHECK_EQ_INT(rserpool_get_primary_server(pu, POOL, POOL_LEN, &info), RSERPOOL_OK);
    CHECK_EQ_INT(info.pe_id, a);
    CHECK_EQ_INT(info.protocol, RSERPOOL_TRANSPORT_TCP);
    CHECK_EQ_INT(info.port, 7001);
    CHECK_EQ_INT(info.addr_count, 1);
    CHECK_EQ_INT(info.addr_total, 1);
    CHECK_EQ_INT(info.policy.policy_type, RSERPOOL_POLICY_LEAST_USED);
    CHECK_EQ_INT(info.policy.load, 0x10000000u);
    CHECK(strcmp(info.addrs[0].text, "127.0.0.1") == 0);
    CHECK_EQ_INT(info.addrs[0].sa_len, sizeof(struct sockaddr_in));
    {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&info.addrs[0].sa;
        CHECK_EQ_INT(sin->sin_family, AF_INET);
        CHECK_EQ_INT(ntohs(sin->sin_port), 7001);
        CHECK_EQ_INT(ntohl(sin->sin_addr.s_addr), 0x7f000001);
    }

    /* The load changes: the other PE becomes the least used. */
    CHECK_EQ_INT(rserpool_update_load(pe, a, 0xf0000000u), RSERPOOL_OK);
    CHECK(wait_for_pe(pu, b, &info));
    CHECK_EQ_INT(rserpool_update_load(pe, a, 0), RSERPOOL_OK);
    CHECK(wait_for_pe(pu, a, &info));
    {
        rserpool_policy rr = {RSERPOOL_POLICY_ROUND_ROBIN, 0, 0, 0, 0};
        rserpool_policy lu = {RSERPOOL_POLICY_LEAST_USED, 0, 0, 0x100, 0};
        CHECK_EQ_INT(rserpool_update_policy(pe, a, &rr), RSERPOOL_ERR_INVALID_ARGUMENT);
        CHECK_EQ_INT(rserpool_update_policy(pe, a, &lu), RSERPOOL_OK);
    }

    /* get_next_server moves away from the failed PE and skips it after. */
    CHECK(wait_for_pe(pu, a, &info));
    CHECK_EQ_INT(rserpool_get_next_server(pu, POOL, POOL_LEN, a, &info), RSERPOOL_OK);
    CHECK_EQ_INT(info.pe_id, b);
    CHECK_EQ_INT(rserpool_get_primary_server(pu, POOL, POOL_LEN, &info), RSERPOOL_OK);
    CHECK_EQ_INT(info.pe_id, b);
    /* Both failed: nothing usable. */
    CHECK_EQ_INT(rserpool_get_next_server(pu, POOL, POOL_LEN, b, &info),
                 RSERPOOL_ERR_NO_USABLE_ELEMENT);
    CHECK_EQ_INT(rserpool_report_failure(pu, POOL, POOL_LEN, b), RSERPOOL_OK);

    /* Unknown pool; the registrar's refusals. */
    {
        static const uint8_t nope[] = "no-such-pool";
        CHECK_EQ_INT(rserpool_get_primary_server(pu, nope, sizeof nope - 1, &info),
                     RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE);
    }
    {
        const char *lo[] = {"127.0.0.1"};
        rserpool_pe_params p;
        uint32_t id = 0;
        rserpool_pe_params_init(&p);
        p.port = 7003;
        p.addrs = lo;
        p.addr_count = 1; /* Round Robin into a Least Used pool */
        CHECK_EQ_INT(rserpool_register_pe(pe, POOL, POOL_LEN, &p, &id),
                     RSERPOOL_ERR_PROTOCOL_INCONSISTENT_POLICY);
        p.policy.policy_type = RSERPOOL_POLICY_LEAST_USED;
        p.pe_id = a; /* a fixed id already used in this context */
        CHECK_EQ_INT(rserpool_register_pe(pe, POOL, POOL_LEN, &p, &id),
                     RSERPOOL_ERR_INVALID_ARGUMENT);
    }

    /* Concurrent callers on one context. */
    {
        struct worker w[4];
        pthread_t t[4];
        rserpool_context *pu2 = context(reg.url);
        for (int i = 0; i < 4; i++) {
            w[i].ctx = pu2;
            w[i].ok = 0;
            CHECK_EQ_INT(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(t[i], NULL);
            CHECK_EQ_INT(w[i].ok, 20);
        }
        CHECK_EQ_INT(rserpool_context_free(pu2), RSERPOOL_OK);
    }

    /* The registrar dies and comes back on the same port: the PE re-registers
     * and pool users resolve again, without the application doing anything. */
    registrar_kill(&reg);
    if (registrar_start(&reg, port) != 0) return 1;
    CHECK_EQ_INT(reg.port, port);
    {
        rserpool_context *fresh = context(reg.url);
        CHECK(wait_for_pe(fresh, 0, &info)); /* only after a re-registration */
        CHECK_EQ_INT(rserpool_context_free(fresh), RSERPOOL_OK);
    }
    {
        double end = now_s() + DEADLINE_S;
        do {
            CHECK_EQ_INT(rserpool_pe_status(pe, b, &status), RSERPOOL_OK);
            if (status == RSERPOOL_PE_REGISTERED) break;
            sleep_ms(50);
        } while (now_s() < end);
        CHECK_EQ_INT(status, RSERPOOL_PE_REGISTERED);
    }
    /* The old pool user: its incidents are over once fresh answers list the
     * PEs again; wait until it gets any PE from the new registrar. */
    CHECK(wait_for_pe(pu, 0, &info));

    /* Deregistering twice. */
    CHECK_EQ_INT(rserpool_deregister(pe, a), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_deregister(pe, a), RSERPOOL_ERR_UNKNOWN_PE);
    CHECK_EQ_INT(rserpool_update_load(pe, a, 1), RSERPOOL_ERR_UNKNOWN_PE);
    CHECK_EQ_INT(rserpool_pe_status(pe, a, &status), RSERPOOL_ERR_UNKNOWN_PE);

    /* Freeing the PE context deregisters b: the pool disappears. */
    CHECK_EQ_INT(rserpool_context_free(pe), RSERPOOL_OK);
    {
        double end = now_s() + DEADLINE_S;
        int rc;
        do {
            rc = rserpool_get_primary_server(pu, POOL, POOL_LEN, &info);
            if (rc == RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE) break;
            sleep_ms(50);
        } while (now_s() < end);
        CHECK_EQ_INT(rc, RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE);
    }
    CHECK_EQ_INT(rserpool_context_free(pu), RSERPOOL_OK);
    registrar_kill(&reg);
    TEST_DONE("client_registrar");
}
