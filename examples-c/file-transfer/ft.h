/* ft.h: the file-transfer protocol of draft-ietf-rserpool-applic §3.4, as
 * fileserver and fileclient speak it over an enhanced-mode session. Every
 * message has payload protocol identifier FT_PPID; integers are in network
 * byte order.
 *
 *   request  (client -> server): type 1, 3 zero bytes, generation u32,
 *            offset u64, name length u16, 2 zero bytes, name
 *   chunk    (server -> client): type 2, 3 zero bytes, generation u32,
 *            offset u64, length u32, total length u64, `length` bytes
 *   error    (server -> client): type 3, 3 zero bytes, generation u32,
 *            code u32, text
 *
 * One request gets chunks from `offset` to the end of the file, in order.
 * A new request on a session replaces the one being served, unless its
 * generation is lower: after a fail-over the client sends a request with a
 * higher generation from the bytes it has (its fail-over callback), and a
 * request of the old generation that the session re-sends to the new
 * server afterwards (the dead one never acknowledged it) is ignored. */
#ifndef FT_H
#define FT_H

#include <stdint.h>
#include <string.h>

#define FT_PPID 0x46540001u
#define FT_REQUEST 1
#define FT_CHUNK 2
#define FT_ERROR 3
#define FT_REQUEST_HDR 20
#define FT_CHUNK_HDR 28
#define FT_ERROR_HDR 12
#define FT_MAX_NAME 255
/* Error codes. */
#define FT_ERR_NOT_FOUND 1
#define FT_ERR_BAD_REQUEST 2

static inline void ft_put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void ft_put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}
static inline void ft_put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}
static inline uint16_t ft_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t ft_get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v = v << 8 | p[i];
    return v;
}
static inline uint64_t ft_get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | p[i];
    return v;
}

/* Writes a request into `buf` (FT_REQUEST_HDR + FT_MAX_NAME bytes); its
 * length, or 0 if the name is too long. */
static inline size_t ft_request(uint8_t *buf, uint32_t gen, uint64_t offset, const char *name) {
    size_t n = strlen(name);
    if (n == 0 || n > FT_MAX_NAME) return 0;
    memset(buf, 0, 4);
    buf[0] = FT_REQUEST;
    ft_put32(buf + 4, gen);
    ft_put64(buf + 8, offset);
    ft_put16(buf + 16, (uint16_t)n);
    buf[18] = buf[19] = 0;
    memcpy(buf + FT_REQUEST_HDR, name, n);
    return FT_REQUEST_HDR + n;
}

#endif
