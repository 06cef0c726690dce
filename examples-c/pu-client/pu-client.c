/* pu-client: a pool user. Reads lines from stdin, sends each to a pool
 * element of the pool (an echo server, see ../pe-echo) and prints the
 * answer with the PE's identifier. When the PE fails, it asks for the next
 * one (reporting the failed one) and goes on.
 *
 *   pu-client tcp://127.0.0.1:3863 echo
 *   pu-client tcp://127.0.0.1:3863,tcp://127.0.0.1:3864 echo
 */
#define _POSIX_C_SOURCE 200809L
#include <rserpool.h>

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Adds every registrar of a comma-separated list of URLs. */
static int add_registrars(rserpool_config *cfg, const char *list) {
    char buf[1024], *save = NULL, *url;
    int rc = RSERPOOL_ERR_INVALID_ARGUMENT;
    if (strlen(list) >= sizeof buf) return rc;
    strcpy(buf, list);
    for (url = strtok_r(buf, ",", &save); url != NULL; url = strtok_r(NULL, ",", &save))
        if ((rc = rserpool_config_add_registrar(cfg, url)) != RSERPOOL_OK) return rc;
    return rc;
}

/* Connects to the first address of `pe` that answers; -1 if none does. */
static int connect_pe(const rserpool_server_info *pe) {
    for (uint32_t i = 0; i < pe->addr_count; i++) {
        const rserpool_addr *a = &pe->addrs[i];
        int fd = socket(a->sa.ss_family, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, (const struct sockaddr *)&a->sa, a->sa_len) == 0) return fd;
        if (fd >= 0) close(fd);
    }
    return -1;
}

/* Sends `line` and reads the echo (one read: lines are short). */
static int exchange(int fd, const char *line, char *reply, size_t cap) {
    size_t len = strlen(line);
    ssize_t n;
    if (write(fd, line, len) != (ssize_t)len) return -1;
    n = read(fd, reply, cap - 1);
    if (n <= 0) return -1;
    reply[n] = '\0';
    return 0;
}

int main(int argc, char **argv) {
    rserpool_config *cfg = NULL;
    rserpool_context *ctx = NULL;
    rserpool_server_info pe;
    const uint8_t *pool;
    size_t pool_len;
    char line[1024], reply[1024];
    int fd = -1, rc, have_pe = 0;

    if (argc != 3) {
        fprintf(stderr, "usage: %s REGISTRAR_URL[,URL...] POOL_HANDLE < lines\n", argv[0]);
        return 2;
    }
    pool = (const uint8_t *)argv[2];
    pool_len = strlen(argv[2]);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    if ((rc = rserpool_config_new(&cfg)) != RSERPOOL_OK ||
        (rc = add_registrars(cfg, argv[1])) != RSERPOOL_OK ||
        (rc = rserpool_context_new(cfg, &ctx)) != RSERPOOL_OK) {
        fprintf(stderr, "pu-client: %s\n", rserpool_strerror(rc));
        rserpool_config_free(cfg);
        return 1;
    }
    rserpool_config_free(cfg);

    while (fgets(line, sizeof line, stdin) != NULL) {
        int tries = 0;
        for (;;) {
            if (fd < 0) {
                /* The first time: GET_PRIMARY_SERVER; after a failure:
                 * GET_NEXT_SERVER, which reports the failed PE. */
                rc = have_pe ? rserpool_get_next_server(ctx, pool, pool_len, pe.pe_id, &pe)
                             : rserpool_get_primary_server(ctx, pool, pool_len, &pe);
                if (rc != RSERPOOL_OK) {
                    fprintf(stderr, "pu-client: no server: %s\n", rserpool_strerror(rc));
                    rserpool_context_free(ctx);
                    return 1;
                }
                have_pe = 1;
                fd = connect_pe(&pe);
            }
            if (fd >= 0 && exchange(fd, line, reply, sizeof reply) == 0) break;
            fprintf(stderr, "pu-client: PE %u failed, trying the next one\n", (unsigned)pe.pe_id);
            if (fd >= 0) close(fd);
            fd = -1;
            if (++tries > 10) {
                rserpool_context_free(ctx);
                return 1;
            }
        }
        printf("[PE %u] %s", (unsigned)pe.pe_id, reply);
    }
    if (fd >= 0) close(fd);
    rserpool_context_free(ctx);
    return 0;
}
