/* rserpool_version, rserpool_version_number and rserpool_strerror. */
#include <rserpool.h>

#include "test_util.h"

int main(void) {
    const char *v = rserpool_version();
    CHECK(v != NULL);
    CHECK(strlen(v) >= 5);
    /* The header and the library agree on the version. */
    CHECK_EQ_INT(rserpool_version_number(), RSERPOOL_VERSION_NUMBER);
    {
        char buf[32];
        snprintf(buf, sizeof buf, "%u.%u.%u", RSERPOOL_VERSION_NUMBER / 10000,
                 (RSERPOOL_VERSION_NUMBER / 100) % 100, RSERPOOL_VERSION_NUMBER % 100);
        CHECK(strcmp(buf, v) == 0);
    }

    CHECK_EQ_INT(RSERPOOL_OK, 0);
    CHECK_EQ_INT(RSERPOOL_ERR_OK, 0);
    CHECK(strcmp(rserpool_strerror(RSERPOOL_OK), "success") == 0);
    CHECK(strcmp(rserpool_strerror(RSERPOOL_ERR_NULL_POINTER),
                 "a required pointer argument is NULL") == 0);
    CHECK(strcmp(rserpool_strerror(RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE),
                 "unknown pool handle") == 0);
    /* Unknown codes still get a string, never NULL. */
    CHECK(strcmp(rserpool_strerror(-12345), "unknown error code") == 0);
    CHECK(strcmp(rserpool_strerror(42), "unknown error code") == 0);
    /* Protocol causes map to -100 - cause. */
    CHECK_EQ_INT(RSERPOOL_ERR_PROTOCOL_INVALID_VALUES, -103);
    CHECK_EQ_INT(RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE, -109);

    TEST_DONE("version");
}
