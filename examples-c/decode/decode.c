/* decode: print an ASAP or ENRP message given as hex as JSON.
 *
 *   ./decode [--enrp] HEX...
 *   ./decode 0500000b 00090007 61626300
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rserpool.h>

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int main(int argc, char **argv) {
    uint32_t ppid = RSERPOOL_PPID_ASAP;
    uint8_t msg[65536];
    size_t n = 0;
    int hi = -1;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--enrp") == 0) {
            ppid = RSERPOOL_PPID_ENRP;
            continue;
        }
        for (const char *p = argv[i]; *p; p++) {
            int v = hexval((unsigned char)*p);
            if (v < 0 || n == sizeof msg) {
                fprintf(stderr, "decode: bad hex in '%s'\n", argv[i]);
                return 2;
            }
            if (hi < 0) {
                hi = v;
            } else {
                msg[n++] = (uint8_t)(hi << 4 | v);
                hi = -1;
            }
        }
    }
    if (hi >= 0 || n == 0) {
        fprintf(stderr, "usage: %s [--enrp] HEX...\n", argv[0]);
        return 2;
    }

    /* Ask for the size first, then decode into a buffer of exactly that size. */
    size_t need = 0, off = 0;
    int rc = rserpool_decode_json(msg, n, ppid, NULL, 0, &need, &off);
    if (rc == RSERPOOL_ERR_MALFORMED) {
        fprintf(stderr, "decode: malformed message at byte %zu\n", off);
        return 1;
    }
    if (rc != RSERPOOL_ERR_BUFFER_TOO_SMALL) {
        fprintf(stderr, "decode: %s\n", rserpool_strerror(rc));
        return 1;
    }
    char *json = malloc(need);
    if (json == NULL) return 1;
    size_t len = 0;
    rc = rserpool_decode_json(msg, n, ppid, json, need, &len, NULL);
    if (rc != RSERPOOL_OK) {
        fprintf(stderr, "decode: %s\n", rserpool_strerror(rc));
        free(json);
        return 1;
    }
    printf("%s\n", json);
    free(json);
    return 0;
}
