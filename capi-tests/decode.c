/* rserpool_decode_json: success, size query, small buffer, malformed input,
 * bad arguments. Vectors from the digest's section 13. */
#include <rserpool.h>

#include "test_util.h"

/* Vector 3: ASAP_HANDLE_RESOLUTION for "abc" (Length 11, wire 12). */
static const uint8_t hr_abc[] = {0x05, 0x00, 0x00, 0x0b, 0x00, 0x09,
                                 0x00, 0x07, 0x61, 0x62, 0x63, 0x00};
/* Vector 13: ENRP_INIT_TAKEOVER of 0xDEADBEEF by 0xCAFEBABE. */
static const uint8_t init_takeover[] = {0x07, 0x00, 0x00, 0x10, 0xca, 0xfe, 0xba, 0xbe,
                                        0x00, 0x00, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef};

int main(void) {
    char json[1024];
    size_t len = 0, off = 12345;

    /* ASAP, into a large buffer. */
    CHECK_EQ_INT(rserpool_decode_json(hr_abc, sizeof hr_abc, RSERPOOL_PPID_ASAP, json,
                                      sizeof json, &len, &off),
                 RSERPOOL_OK);
    CHECK_EQ_INT(len, strlen(json));
    CHECK(strstr(json, "\"type\":\"ASAP_HANDLE_RESOLUTION\"") != NULL);
    CHECK(strstr(json, "\"pool_handle\":\"abc\"") != NULL);
    CHECK_EQ_INT(off, 12345); /* untouched on success */

    /* ENRP. */
    CHECK_EQ_INT(rserpool_decode_json(init_takeover, sizeof init_takeover, RSERPOOL_PPID_ENRP,
                                      json, sizeof json, &len, NULL),
                 RSERPOOL_OK);
    CHECK(strstr(json, "ENRP_INIT_TAKEOVER") != NULL);
    CHECK(strstr(json, "3735928559") != NULL); /* 0xDEADBEEF, the target */

    /* Size query, then a buffer one byte too small, then exactly right. */
    {
        size_t need = 0, full = 0;
        CHECK_EQ_INT(rserpool_decode_json(hr_abc, sizeof hr_abc, RSERPOOL_PPID_ASAP, NULL, 0,
                                          &need, NULL),
                     RSERPOOL_ERR_BUFFER_TOO_SMALL);
        CHECK(need > 10 && need < sizeof json);
        CHECK_EQ_INT(rserpool_decode_json(hr_abc, sizeof hr_abc, RSERPOOL_PPID_ASAP, json,
                                          need - 1, &full, NULL),
                     RSERPOOL_ERR_BUFFER_TOO_SMALL);
        CHECK_EQ_INT(full, need);
        CHECK_EQ_INT(rserpool_decode_json(hr_abc, sizeof hr_abc, RSERPOOL_PPID_ASAP, json, need,
                                          &full, NULL),
                     RSERPOOL_OK);
        CHECK_EQ_INT(full + 1, need);
    }

    /* Malformed: the pool handle's Length (2) is below 4, at byte 4. */
    {
        uint8_t bad[sizeof hr_abc];
        memcpy(bad, hr_abc, sizeof bad);
        bad[7] = 0x02;
        len = 777;
        CHECK_EQ_INT(rserpool_decode_json(bad, sizeof bad, RSERPOOL_PPID_ASAP, json, sizeof json,
                                          &len, &off),
                     RSERPOOL_ERR_MALFORMED);
        CHECK_EQ_INT(off, 4);
        CHECK_EQ_INT(len, 777); /* untouched on failure */
        /* Truncated at every length: always an error, never a crash. */
        for (size_t n = 0; n < sizeof hr_abc - 1; n++) {
            CHECK_EQ_INT(rserpool_decode_json(hr_abc, n, RSERPOOL_PPID_ASAP, json, sizeof json,
                                              &len, NULL),
                         RSERPOOL_ERR_MALFORMED);
        }
    }

    /* Bad arguments. */
    CHECK_EQ_INT(rserpool_decode_json(NULL, 4, RSERPOOL_PPID_ASAP, json, sizeof json, &len, NULL),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_decode_json(hr_abc, sizeof hr_abc, RSERPOOL_PPID_ASAP, NULL, 10, &len,
                                      NULL),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_decode_json(hr_abc, sizeof hr_abc, RSERPOOL_PPID_ASAP, json,
                                      sizeof json, NULL, NULL),
                 RSERPOOL_ERR_NULL_POINTER);
    CHECK_EQ_INT(rserpool_decode_json(hr_abc, sizeof hr_abc, 13, json, sizeof json, &len, NULL),
                 RSERPOOL_ERR_INVALID_ARGUMENT);

    TEST_DONE("decode");
}
