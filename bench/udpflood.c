/*
 * udpflood: a tiny UDP sender for bench/datapath.sh.
 *
 *   udpflood HOST PORT SECONDS   send 16-byte UDP datagrams to HOST:PORT as fast as one
 *                                socket can for SECONDS; prints the datagrams handed to the
 *                                kernel and the rate ("123456 packets 41152 pkt/s")
 *
 * Meant for a port the receiver's policy denies: every datagram is a drop, and every
 * drop is a datapath event. Send errors (ENOBUFS, ECONNREFUSED from an earlier ICMP)
 * are not counted and do not stop the run.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: udpflood HOST PORT SECONDS\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) {
        fprintf(stderr, "udpflood: HOST must be an IPv4 address: %s\n", argv[1]);
        return 2;
    }
    double secs = atof(argv[3]);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    char buf[16] = "fathom-bench-udp";
    long sent = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 64; i++)
            if (sendto(fd, buf, sizeof buf, 0, (struct sockaddr *)&a, sizeof a) == (ssize_t)sizeof buf)
                sent++;
        t = now();
    } while (t - t0 < secs);
    close(fd);
    printf("%ld packets %.0f pkt/s\n", sent, sent / (t - t0));
    return 0;
}
