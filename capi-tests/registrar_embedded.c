/* rserpool_registrar_*: a registrar embedded in the application's own process,
 * used by a context of the same process; argument and handle errors. */
#include <rserpool.h>

#include "test_util.h"

int main(void) {
    rserpool_registrar_params rp;
    rserpool_registrar *reg = NULL;
    char url[128];
    size_t len = 0;

    /* Argument errors. */
    CHECK_EQ_INT(rserpool_registrar_params_init(NULL), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_registrar_params_init(&rp), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_registrar_start(NULL, &reg), RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_registrar_start(&rp, NULL), RSERPOOL_ERR_NULL_POINTER);
    {
        const char *bad[] = {"udp://127.0.0.1:1"};
        rp.asap_urls = bad;
        rp.asap_count = 1;
        CHECK_EQ_INT(rserpool_registrar_start(&rp, &reg), RSERPOOL_ERR_INVALID_ARGUMENT);
        rp.asap_count = 2; /* more than the array holds is the caller's bug; */
        rp.asap_urls = NULL; /* a NULL array is caught */
        CHECK_EQ_INT(rserpool_registrar_start(&rp, &reg), RSERPOOL_ERR_NULL_POINTER);
    }
    {
        const char *asap[] = {"tcp://127.0.0.1:0"};
        const char *peer[] = {"tcp://0.0.0.0:9901"}; /* no concrete address */
        rserpool_registrar_params_init(&rp);
        rp.asap_urls = asap;
        rp.asap_count = 1;
        rp.peer_urls = peer;
        rp.peer_count = 1;
        CHECK_EQ_INT(rserpool_registrar_start(&rp, &reg), RSERPOOL_ERR_INVALID_ARGUMENT);
        rserpool_registrar_params_init(&rp);
        rp.asap_urls = asap;
        rp.asap_count = 1;
        rp.profile = 7;
        CHECK_EQ_INT(rserpool_registrar_start(&rp, &reg), RSERPOOL_ERR_INVALID_ARGUMENT);
    }
    CHECK(reg == NULL); /* outputs untouched on failure */

    /* A real registrar on an ephemeral loopback port. */
    {
        const char *asap[] = {"tcp://127.0.0.1:0"};
        rserpool_registrar_params_init(&rp);
        rp.asap_urls = asap;
        rp.asap_count = 1;
        rp.server_id = 0x5eed;
        CHECK_EQ_INT(rserpool_registrar_start(&rp, &reg), RSERPOOL_OK);
        CHECK(reg != NULL);
    }
    CHECK_EQ_INT(rserpool_registrar_local_url(reg, 0, url, 5, &len), RSERPOOL_ERR_BUFFER_TOO_SMALL);
    CHECK(len > 5 && len < sizeof url);
    CHECK_EQ_INT(rserpool_registrar_local_url(reg, 0, url, sizeof url, &len), RSERPOOL_OK);
    CHECK(strncmp(url, "tcp://127.0.0.1:", 16) == 0);
    CHECK_EQ_INT(len, strlen(url));
    CHECK_EQ_INT(rserpool_registrar_local_url(reg, 1, url, sizeof url, &len),
                 RSERPOOL_ERR_INVALID_ARGUMENT);
    {
        uint32_t sid = 0;
        size_t n = 99;
        CHECK_EQ_INT(rserpool_registrar_info(reg, &sid, &n), RSERPOOL_OK);
        CHECK_EQ_INT(sid, 0x5eed);
        CHECK_EQ_INT(n, 0);
    }

    /* A context of the same process registers a PE there and resolves it. */
    {
        rserpool_config *cfg = NULL;
        rserpool_context *ctx = NULL;
        rserpool_pe_params p;
        rserpool_server_info info;
        const char *addrs[] = {"127.0.0.1"};
        uint32_t id = 0;
        size_t n = 0;
        CHECK_EQ_INT(rserpool_config_new(&cfg), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_config_add_registrar(cfg, url), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_context_new(cfg, &ctx), RSERPOOL_OK);
        rserpool_config_free(cfg);
        rserpool_pe_params_init(&p);
        p.port = 7001;
        p.addrs = addrs;
        p.addr_count = 1;
        CHECK_EQ_INT(rserpool_register_pe(ctx, (const uint8_t *)"Embedded", 8, &p, &id), RSERPOOL_OK);
        CHECK_EQ_INT(rserpool_get_primary_server(ctx, (const uint8_t *)"Embedded", 8, &info),
                     RSERPOOL_OK);
        CHECK_EQ_INT(info.pe_id, id);
        CHECK_EQ_INT(info.port, 7001);
        CHECK_EQ_INT(rserpool_registrar_info(reg, NULL, &n), RSERPOOL_OK);
        CHECK_EQ_INT(n, 1);
        CHECK_EQ_INT(rserpool_context_free(ctx), RSERPOOL_OK);
    }

    /* Stop: once; afterwards the handle is invalid, never dereferenced. */
    CHECK_EQ_INT(rserpool_registrar_stop(reg), RSERPOOL_OK);
    CHECK_EQ_INT(rserpool_registrar_stop(reg), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_registrar_info(reg, NULL, NULL), RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_registrar_local_url(reg, 0, url, sizeof url, &len),
                 RSERPOOL_ERR_INVALID_HANDLE);
    CHECK_EQ_INT(rserpool_registrar_stop(NULL), RSERPOOL_OK);

    /* SCTP: a clear error where the kernel has none, a registrar where it has. */
    {
        const char *asap[] = {"sctp://127.0.0.1:0"};
        rserpool_registrar_params_init(&rp);
        rp.asap_urls = asap;
        rp.asap_count = 1;
        reg = NULL;
        int rc = rserpool_registrar_start(&rp, &reg);
        CHECK(rc == RSERPOOL_ERR_NO_SCTP || rc == RSERPOOL_OK);
        if (rc == RSERPOOL_OK) CHECK_EQ_INT(rserpool_registrar_stop(reg), RSERPOOL_OK);
    }

    TEST_DONE("registrar_embedded");
}
