#define _POSIX_C_SOURCE 200809L
/* The file-transfer example of draft-ietf-rserpool-applic §3.4
 * (examples-c/file-transfer) under fire: a `rserpool registrar` process,
 * three fileserver processes of pool "files", and fileclient fetching a
 * random 8 MiB file. Whenever a server starts serving the client's request
 * it is killed with SIGKILL a moment later (and a new one started in its
 * place), again and again. The client's session fails over each time and
 * its fail-over callback asks the next server for the rest. The received
 * file must be byte-identical, with at least three fail-overs and no byte
 * received twice.
 *
 * tests/capi.rs builds the example first and passes its programs in
 * RSERPOOL_FILESERVER and RSERPOOL_FILECLIENT. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test_util.h"
#include "registrar_util.h"

#define NSERVERS 3
#define FILE_SIZE (8u << 20)
#define WANT_KILLS 6
#define MIN_FAILOVERS 3
#define DEADLINE_S 180.0

struct proc {
    pid_t pid;
    int out;        /* stdout, non-blocking; -1 once at EOF */
    int err;        /* stderr for the client, else -1 */
    char buf[4096]; /* partial line */
    size_t len;
};

static const char *server_bin, *client_bin;
static char dir[64], src_path[128], dst_path[128];

/* Runs argv with stdout (and stderr if `err`) on pipes. */
static int spawn(struct proc *p, char *const argv[], int err) {
    int out[2], e[2] = {-1, -1};
    memset(p, 0, sizeof *p);
    p->err = -1;
    if (pipe(out) != 0 || (err && pipe(e) != 0)) return 0;
    p->pid = fork();
    if (p->pid < 0) return 0;
    if (p->pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(out[1], 1);
        dup2(err ? e[1] : null, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(out[1]);
    p->out = out[0];
    fcntl(p->out, F_SETFL, O_NONBLOCK);
    fcntl(p->out, F_SETFD, FD_CLOEXEC);
    if (err) {
        close(e[1]);
        p->err = e[0];
        fcntl(p->err, F_SETFL, O_NONBLOCK);
        fcntl(p->err, F_SETFD, FD_CLOEXEC);
    }
    return 1;
}

static int start_server(struct proc *p, const char *url) {
    char *argv[] = {(char *)server_bin, (char *)"-d", (char *)"3", (char *)"-c", (char *)"8192",
                    (char *)url, dir, NULL};
    return spawn(p, argv, 0);
}

static void stop(struct proc *p) {
    if (p->pid > 0) {
        kill(p->pid, SIGKILL);
        waitpid(p->pid, NULL, 0);
        p->pid = 0;
    }
    if (p->out >= 0) close(p->out);
    if (p->err >= 0) close(p->err);
    p->out = p->err = -1;
}

/* Reads what `fd` has and hands every complete line to `line`; closes it
 * at EOF. */
static void read_lines(int *fd, struct proc *p, void (*line)(struct proc *, const char *)) {
    for (;;) {
        ssize_t n = read(*fd, p->buf + p->len, sizeof p->buf - 1 - p->len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0 || errno != EAGAIN) {
                close(*fd);
                *fd = -1;
            }
            return;
        }
        p->len += (size_t)n;
        p->buf[p->len] = 0;
        for (char *nl; (nl = strchr(p->buf, '\n')) != NULL;) {
            *nl = 0;
            line(p, p->buf);
            p->len -= (size_t)(nl + 1 - p->buf);
            memmove(p->buf, nl + 1, p->len + 1);
        }
        if (p->len == sizeof p->buf - 1) p->len = 0; /* an absurd line: drop it */
    }
}

/* What the lines said. */
static int serving = -1;       /* the server that took the latest request */
static double serving_since;
static struct proc servers[NSERVERS];
static int failover_lines, requests, client_ok_line;
static unsigned long long client_bytes, client_dups;
static unsigned client_failovers;

static void server_line(struct proc *p, const char *line) {
    unsigned id, gen;
    unsigned long long off, total;
    char name[256];
    if (sscanf(line, "fileserver: PE %u request %255s from %llu of %llu (generation %u)", &id,
               name, &off, &total, &gen) == 5) {
        serving = (int)(p - servers);
        serving_since = now_s();
        requests++;
        printf("  %s\n", line);
    }
}

static void client_line(struct proc *p, const char *line) {
    double secs;
    char name[256];
    (void)p;
    printf("  %s\n", line);
    if (strncmp(line, "fileclient: failover from PE ", 29) == 0) failover_lines++;
    if (sscanf(line,
               "fileclient: received %llu bytes of %255s in %lf s, %u failover(s), %llu "
               "duplicate",
               &client_bytes, name, &secs, &client_failovers, &client_dups) == 5)
        client_ok_line = 1;
}

static int write_random_file(const char *path) {
    static uint8_t block[65536];
    uint64_t x = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull ^ (uint64_t)time(NULL);
    FILE *f = fopen(path, "wb");
    if (f == NULL) return 0;
    for (size_t done = 0; done < FILE_SIZE; done += sizeof block) {
        for (size_t i = 0; i < sizeof block; i += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(block + i, &x, 8);
        }
        if (fwrite(block, 1, sizeof block, f) != sizeof block) {
            fclose(f);
            return 0;
        }
    }
    return fclose(f) == 0;
}

/* Byte-identical? */
static int same_files(const char *a, const char *b) {
    static uint8_t x[65536], y[65536];
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa != NULL && fb != NULL;
    while (same) {
        size_t na = fread(x, 1, sizeof x, fa), nb = fread(y, 1, sizeof y, fb);
        if (na != nb || memcmp(x, y, na) != 0) same = 0;
        if (na == 0) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

int main(void) {
    test_registrar reg;
    struct proc client;
    int kills = 0, status = -1, client_done = 0;
    double kill_after, deadline;

    server_bin = getenv("RSERPOOL_FILESERVER");
    client_bin = getenv("RSERPOOL_FILECLIENT");
    if (server_bin == NULL || client_bin == NULL) {
        fprintf(stderr, "RSERPOOL_FILESERVER and RSERPOOL_FILECLIENT must name the programs of "
                        "examples-c/file-transfer (tests/capi.rs sets them)\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    srand((unsigned)getpid());
    snprintf(dir, sizeof dir, "/tmp/rserpool-ft-XXXXXX");
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(src_path, sizeof src_path, "%s/data.bin", dir);
    snprintf(dst_path, sizeof dst_path, "%s/received.bin", dir);
    CHECK(write_random_file(src_path));
    if (registrar_start(&reg, 0) != 0) return 1;

    for (int i = 0; i < NSERVERS; i++) CHECK(start_server(&servers[i], reg.url));
    {
        char *argv[] = {(char *)client_bin, reg.url, (char *)"data.bin", dst_path, NULL};
        CHECK(spawn(&client, argv, 1));
    }

    kill_after = 0.15 + (rand() % 250) / 1000.0;
    deadline = now_s() + DEADLINE_S;
    while (!client_done && now_s() < deadline) {
        struct pollfd p[NSERVERS + 2];
        int np = 0;
        for (int i = 0; i < NSERVERS; i++) {
            p[np].fd = servers[i].out;
            p[np++].events = POLLIN;
        }
        p[np].fd = client.out;
        p[np++].events = POLLIN;
        p[np].fd = client.err;
        p[np++].events = POLLIN;
        poll(p, (nfds_t)np, 10);
        for (int i = 0; i < NSERVERS; i++)
            if (servers[i].out >= 0) read_lines(&servers[i].out, &servers[i], server_line);
        if (client.out >= 0) read_lines(&client.out, &client, client_line);
        if (client.err >= 0) read_lines(&client.err, &client, client_line);

        /* Kill the server that is serving, mid-transfer, and replace it. */
        if (serving >= 0 && kills < WANT_KILLS && now_s() - serving_since >= kill_after &&
            waitpid(client.pid, &status, WNOHANG) == 0) {
            printf("  -- SIGKILL to the serving fileserver (pid %d)\n", (int)servers[serving].pid);
            stop(&servers[serving]);
            CHECK(start_server(&servers[serving], reg.url));
            serving = -1;
            kills++;
            kill_after = 0.15 + (rand() % 250) / 1000.0;
        }
        if (waitpid(client.pid, &status, WNOHANG) == client.pid) {
            client.pid = 0;
            client_done = 1;
            /* What it still had to say. */
            while (client.out >= 0) read_lines(&client.out, &client, client_line);
            while (client.err >= 0) read_lines(&client.err, &client, client_line);
        }
    }
    if (!client_done) fprintf(stderr, "fileclient did not finish within %.0f s\n", DEADLINE_S);

    CHECK(client_done);
    CHECK(client_done && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(same_files(src_path, dst_path));
    CHECK(client_ok_line);
    CHECK_EQ_INT(client_bytes, FILE_SIZE);
    CHECK_EQ_INT(client_dups, 0);
    CHECK(kills >= MIN_FAILOVERS);
    CHECK(failover_lines >= MIN_FAILOVERS);
    CHECK_EQ_INT(client_failovers, failover_lines);
    /* One request per server that served: the first and one per fail-over. */
    CHECK_EQ_INT(requests, failover_lines + 1);
    printf("file_transfer: %d kills, %d fail-overs, %u bytes identical\n", kills, failover_lines,
           FILE_SIZE);

    stop(&client);
    for (int i = 0; i < NSERVERS; i++) stop(&servers[i]);
    registrar_kill(&reg);
    unlink(src_path);
    unlink(dst_path);
    rmdir(dir);
    TEST_DONE("file_transfer");
}
