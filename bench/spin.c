/*
 * spin: keeps one CPU busy for BUSY_MS out of every PERIOD_MS, until killed.
 * For bench/cpu_coupling.sh: what work on another vCPU costs the one under test.
 *
 *   spin BUSY_MS PERIOD_MS
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: spin BUSY_MS PERIOD_MS\n");
        return 2;
    }
    double busy = atof(argv[1]) / 1000, period = atof(argv[2]) / 1000;
    if (busy <= 0 || period <= busy) {
        fprintf(stderr, "spin: need 0 < BUSY_MS < PERIOD_MS\n");
        return 2;
    }
    for (;;) {
        double start = now();
        while (now() - start < busy)
            ;
        usleep((useconds_t)((period - busy) * 1e6));
    }
}
