#define _POSIX_C_SOURCE 200809L
/* Configuration, context and pool element / pool user calls without a
 * registrar: NULL and invalid arguments, freed and forged handles, double
 * free, an sctp:// registrar, and no registrar reachable (short timers). */
#include <rserpool.h>

#include "test_util.h"
#include "registrar_util.h"

static const uint8_t POOL[] = "echo";
#define POOL_LEN (sizeof POOL - 1)

static void config_errors(void) {
    rserpool_config *cfg = NULL;
    CHECK_EQ_INT(rserpool_config_new(NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_config_new(&cfg), RSERPOOL_OK);
    CHECK(cfg != NULL);

    CHECK_EQ_INT(rserpool_config_add_registrar(NULL, "tcp://127.0.0.1:3863"),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, "127.0.0.1:3863"),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, "tcp://127.0.0.1:0"),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, "tcp://0.0.0.0:3863"),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, "tcp://[::1]:3863"), RSERPOOL_OK);

    CHECK_EQ_INT(rserpool_config_set_announce(cfg, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_config_set_announce(cfg, "10.0.0.1:3863"),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_set_announce(cfg, "239.0.0.50"), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_set_announce(cfg, "239.0.0.50:3863"), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_announce(cfg, "off"), RSERPOOL_OK);

    CHECK_EQ_INT(rserpool_config_set_timer(NULL, RSERPOOL_TIMER_T1_REQUEST, 100),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, 6, 100), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, 999, 100), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T2_REGISTRATION, 0),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    {
        uint32_t timers[] = {RSERPOOL_TIMER_T1_REQUEST,         RSERPOOL_TIMER_T2_REGISTRATION,
                             RSERPOOL_TIMER_T3_DEREGISTRATION,  RSERPOOL_TIMER_T4_REREGISTRATION,
                             RSERPOOL_TIMER_T5_SERVER_HUNT,     RSERPOOL_TIMER_T7_OUTDATE,
                             RSERPOOL_TIMER_STALE_CACHE,        RSERPOOL_TIMER_RETRAN_MAX,
                             RSERPOOL_TIMER_UNREACHABLE_HOLDOFF, RSERPOOL_TIMER_SHUTDOWN};
        for (size_t i = 0; i < sizeof timers / sizeof timers[0]; i++)
            CHECK_EQ_INT(rserpool_config_set_timer(cfg, timers[i], 1500), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T4_REREGISTRATION, 0),
                     RSERPOOL_OK);
    }
    CHECK_EQ_INT(rserpool_config_set_attempts(cfg, 0, 1), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_set_attempts(cfg, 2, 1000), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_set_attempts(cfg, 1, 0), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_reglife_unit(cfg, 7), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_set_reglife_unit(cfg, RSERPOOL_REGLIFE_MILLISECONDS),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_profile(cfg, 9), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_config_set_profile(cfg, RSERPOOL_PROFILE_RSPLIB), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_profile(cfg, RSERPOOL_PROFILE_RFC), RSERPOOL_OK);

    /* Free: NULL is fine, twice is caught, the dead handle is refused. */
    CHECK_EQ_INT(rserpool_config_free(NULL), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_free(cfg), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_free(cfg), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, "tcp://127.0.0.1:3863"),
                 RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T1_REQUEST, 100),
                 RSERPOOL_ERR_INVALID_HANDLE);
    {
        rserpool_context *ctx = NULL;
        CHECK_EQ_INT(rserpool_context_new(cfg, &ctx), RSERPOOL_ERR_INVALID_HANDLE);
        CHECK(ctx == NULL); /* outputs untouched on failure */
    }
    /* A made-up handle, and a real address of the wrong kind. */
    {
        int local = 0;
        CHECK_EQ_INT(rserpool_config_free((rserpool_config *)&local),
                     RSERPOOL_ERR_INVALID_HANDLE);
        CHECK_EQ_INT(rserpool_config_set_profile((rserpool_config *)(uintptr_t)0x1235,
                                                 RSERPOOL_PROFILE_RFC),
                     RSERPOOL_ERR_INVALID_HANDLE);
    }
}

/* A context whose only registrar is a closed port, with short timers. */
static rserpool_context *unreachable_context(void) {
    rserpool_config *cfg = NULL;
    rserpool_context *ctx = NULL;
    CHECK_EQ_INT(rserpool_config_new(&cfg), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_add_registrar(cfg, "tcp://127.0.0.1:1"), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T1_REQUEST, 200), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T2_REGISTRATION, 200),
                 RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_set_timer(cfg, RSERPOOL_TIMER_T5_SERVER_HUNT, 100), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_context_new(NULL, &ctx), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_context_new(cfg, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_context_new(cfg, &ctx), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_config_free(cfg), RSERPOOL_OK); /* the context keeps a copy */
    return ctx;
}

static void pe_pu_argument_errors(rserpool_context *ctx) {
    const char *lo[] = {"127.0.0.1"};
    const char *two[] = {"127.0.0.1", "127.0.0.2"};
    const char *any[] = {"0.0.0.0"};
    const char *junk[] = {"not-an-address"};
    const char *nul[] = {NULL};
    rserpool_pe_params p;
    rserpool_policy pol = {RSERPOOL_POLICY_LEAST_USED, 0, 0, 0, 0};
    rserpool_server_info info;
    uint32_t id = 4242, status = 77;

    CHECK_EQ_INT(rserpool_pe_params_init(NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_pe_params_init(&p), RSERPOOL_OK);
    CHECK_EQ_INT(p.protocol, RSERPOOL_TRANSPORT_TCP);
    CHECK_EQ_INT(p.policy.policy_type, RSERPOOL_POLICY_ROUND_ROBIN);
    CHECK_EQ_INT(p.reg_life, 60);
    CHECK_EQ_INT(p.pe_id, 0);

    /* No address, port 0. */
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    p.addrs = lo;
    p.addr_count = 1;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    p.port = 7;
    /* NULL everywhere it matters. */
    CHECK_EQ_INT(rserpool_register_pe(NULL, POOL, POOL_LEN, &p, &id), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_register_pe(ctx, NULL, POOL_LEN, &p, &id), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, NULL, &id),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, NULL), RSERPOOL_ERR_NULL_POINTER);
    p.addrs = NULL;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id), RSERPOOL_ERR_NULL_POINTER);
    p.addrs = nul;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id), RSERPOOL_ERR_NULL_POINTER);
    /* Bad values. */
    p.addrs = any;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    p.addrs = junk;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    p.addrs = two;
    p.addr_count = 2; /* TCP takes exactly one */
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    p.addrs = lo;
    p.addr_count = 1;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, 0, &p, &id), RSERPOOL_ERR_INVALID_ARGUMENT);
    p.protocol = 99;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    p.protocol = RSERPOOL_TRANSPORT_TCP;
    p.policy.policy_type = 0x12345;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    p.policy.policy_type = RSERPOOL_POLICY_ROUND_ROBIN;
    p.reg_life = 0;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    p.reg_life = -2;
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(id, 4242); /* never written on failure */

    /* Unknown PEs. */
    CHECK_EQ_INT(rserpool_update_load(ctx, 1, 5), RSERPOOL_ERR_UNKNOWN_PE);
    CHECK_EQ_INT(rserpool_update_load(NULL, 1, 5), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_update_policy(ctx, 1, &pol), RSERPOOL_ERR_UNKNOWN_PE);
    CHECK_EQ_INT(rserpool_update_policy(ctx, 1, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_deregister(ctx, 1), RSERPOOL_ERR_UNKNOWN_PE);
    CHECK_EQ_INT(rserpool_deregister(NULL, 1), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_pe_status(ctx, 1, &status), RSERPOOL_ERR_UNKNOWN_PE);
    CHECK_EQ_INT(rserpool_pe_status(ctx, 1, NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(status, 77);

    /* Pool user arguments. */
    CHECK_EQ_INT(rserpool_get_primary_server(NULL, POOL, POOL_LEN, &info),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_get_primary_server(ctx, NULL, POOL_LEN, &info),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_get_primary_server(ctx, POOL, POOL_LEN, NULL),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_get_primary_server(ctx, POOL, 0, &info), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_get_next_server(ctx, POOL, 0, 1, &info), RSERPOOL_ERR_INVALID_ARGUMENT);
    CHECK_EQ_INT(rserpool_get_next_server(ctx, POOL, POOL_LEN, 1, NULL),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_report_failure(ctx, NULL, 1, 1), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_report_failure(ctx, POOL, 0, 1), RSERPOOL_ERR_INVALID_ARGUMENT);
}

static void no_registrar(rserpool_context *ctx) {
    const char *lo[] = {"127.0.0.1"};
    rserpool_pe_params p;
    rserpool_server_info info;
    uint32_t id = 4242;
    double t0 = now_s();
    rserpool_pe_params_init(&p);
    p.port = 7;
    p.addrs = lo;
    p.addr_count = 1;
    /* MAX-REG-ATTEMPT (2) x T2 (200 ms), then the verdict. */
    CHECK_EQ_INT(rserpool_register_pe(ctx, POOL, POOL_LEN, &p, &id), RSERPOOL_ERR_NO_REGISTRAR);
    CHECK_EQ_INT(id, 4242);
    CHECK_EQ_INT(rserpool_get_primary_server(ctx, POOL, POOL_LEN, &info),
                 RSERPOOL_ERR_NO_REGISTRAR);
    CHECK_EQ_INT(rserpool_get_next_server(ctx, POOL, POOL_LEN, 99, &info),
                 RSERPOOL_ERR_NO_REGISTRAR);
    /* Queued for a registrar that may come: not an error. */
    CHECK_EQ_INT(rserpool_report_failure(ctx, POOL, POOL_LEN, 99), RSERPOOL_OK);
    CHECK(now_s() - t0 < 30.0);
}

int main(void) {
    rserpool_context *ctx;

    config_errors();

    /* An sctp:// registrar: accepted by the configuration, refused clearly by
     * a runtime without SCTP. */
    {
        rserpool_config *cfg = NULL;
        rserpool_context *c = NULL;
        CHECK_EQ_INT(rserpool_config_new(&cfg), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_config_add_registrar(cfg, "sctp://127.0.0.1,127.0.0.2:3863"),
                     RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_context_new(cfg, &c), RSERPOOL_ERR_NO_SCTP);
        CHECK(c == NULL);
        rserpool_config_free(cfg);
    }

    ctx = unreachable_context();
    pe_pu_argument_errors(ctx);
    no_registrar(ctx);

    /* Free: NULL is fine, twice is caught, the dead handle is refused. */
    CHECK_EQ_INT(rserpool_context_free(NULL), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_context_free(ctx), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_context_free(ctx), RSERPOOL_ERR_INVALID_HANDLE);
    {
        rserpool_server_info info;
        CHECK_EQ_INT(rserpool_get_primary_server(ctx, POOL, POOL_LEN, &info),
                     RSERPOOL_ERR_INVALID_HANDLE);
        CHECK_EQ_INT(rserpool_deregister(ctx, 1), RSERPOOL_ERR_INVALID_HANDLE);
        CHECK_EQ_INT(rserpool_update_load(ctx, 1, 1), RSERPOOL_ERR_INVALID_HANDLE);
        CHECK_EQ_INT(rserpool_report_failure(ctx, POOL, POOL_LEN, 1), RSERPOOL_ERR_INVALID_HANDLE);
    }

    CHECK_EQ_INT(rserpool_server_info_size(), sizeof(rserpool_server_info));
    CHECK(strcmp(rserpool_strerror(RSERPOOL_ERR_UNKNOWN_PE), "unknown error code") != 0);
    CHECK(strcmp(rserpool_strerror(RSERPOOL_ERR_NO_USABLE_ELEMENT), "unknown error code") != 0);

    TEST_DONE("client_args");
}
