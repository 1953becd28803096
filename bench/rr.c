/*
 * rr: a tiny TCP request/response tool for bench/pod_network.sh.
 *
 *   rr server PORT              accept connections one after another; answer every
 *                               1-byte request with 1 byte; close when the client
 *                               closes (RR) or right after answering (CRR: the server
 *                               closes first, so TIME_WAIT lands on the server and the
 *                               client's ephemeral ports do not run out)
 *   rr rr  HOST PORT SECONDS    1-byte ping-pong on one connection; prints the mean
 *                               microseconds per transaction ("12.345 us")
 *   rr crr HOST PORT SECONDS    connect, 1-byte request, 1-byte response, close; prints
 *                               connections per second ("16234 conn/s")
 *
 * The first byte of a connection tells the server the mode: 'r' (keep going) or 'c'
 * (answer once, then close). TCP_NODELAY on both sides.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int read1(int fd, char *c) {
    for (;;) {
        ssize_t n = read(fd, c, 1);
        if (n == 1) return 1;
        if (n == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

static int write1(int fd, char c) {
    for (;;) {
        ssize_t n = write(fd, &c, 1);
        if (n == 1) return 1;
        if (n < 0 && errno != EINTR) return -1;
    }
}

static __attribute__((noreturn)) void server(int port) {
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(ls, 1024) < 0) die("listen");
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) { if (errno == EINTR) continue; die("accept"); }
        nodelay(fd);
        char c;
        while (read1(fd, &c) == 1) {
            if (write1(fd, c) != 1) break;
            if (c == 'c') break;          /* CRR: answer once, close first */
        }
        close(fd);
    }
}

static struct sockaddr_in resolve(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "rr: HOST must be an IPv4 address: %s\n", host);
        exit(2);
    }
    return a;
}

static int dial(const struct sockaddr_in *a) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (const struct sockaddr *)a, sizeof *a) < 0) die("connect");
    nodelay(fd);
    return fd;
}

static int rr(const char *host, int port, double secs) {
    struct sockaddr_in a = resolve(host, port);
    int fd = dial(&a);
    char c;
    for (int i = 0; i < 2000; i++)          /* warm-up */
        if (write1(fd, 'r') != 1 || read1(fd, &c) != 1) die("rr warm-up");
    long n = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 256; i++, n++)
            if (write1(fd, 'r') != 1 || read1(fd, &c) != 1) die("rr");
        t = now();
    } while (t - t0 < secs);
    close(fd);
    printf("%.3f us\n", (t - t0) * 1e6 / n);
    return 0;
}

static int crr(const char *host, int port, double secs) {
    struct sockaddr_in a = resolve(host, port);
    char c;
    long n = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 32; i++, n++) {
            int fd = dial(&a);
            if (write1(fd, 'c') != 1 || read1(fd, &c) != 1) die("crr");
            if (read1(fd, &c) != 0) { fprintf(stderr, "crr: expected close\n"); exit(1); }
            close(fd);
        }
        t = now();
    } while (t - t0 < secs);
    printf("%.0f conn/s\n", n / (t - t0));
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "server")) server(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "rr")) return rr(argv[2], atoi(argv[3]), atof(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "crr")) return crr(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: rr server PORT | rr rr HOST PORT SECONDS | rr crr HOST PORT SECONDS\n");
    return 2;
}
