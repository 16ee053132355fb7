/* The paced tool of bench/tools/paced.py in C: prints --rate lines per second for --seconds,
 * after --delay seconds; each line carries CLOCK_MONOTONIC (what Python's time.monotonic()
 * reads on Linux) at the moment it was written, so a reader can compute the delay.
 *
 * Why C: the Python tool spends about 80 us of CPU per line (sleep, f-string, write, flush);
 * 100 of them at 200 lines/s took most of the bench machine's two cores away from the system
 * being measured. This one writes each line with one write(2), as the Python tool's flush did,
 * and sleeps to an absolute due time, so being late never shifts the schedule after it.
 *
 * bench/nativetools.py compiles it with the machine's cc into a cache directory. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double arg_value(int argc, char **argv, int *i, const char *name) {
    /* "--name value" or "--name=value", as argparse takes them. */
    size_t n = strlen(name);
    const char *text = NULL;
    if (strcmp(argv[*i], name) == 0 && *i + 1 < argc) {
        text = argv[++*i];
    } else if (strncmp(argv[*i], name, n) == 0 && argv[*i][n] == '=') {
        text = argv[*i] + n + 1;
    }
    if (text == NULL) return -1.0;
    char *end;
    double value = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || value < 0) {
        fprintf(stderr, "paced: %s: not a number >= 0: %s\n", name, text);
        exit(2);
    }
    return value;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double due) {
    struct timespec ts;
    ts.tv_sec = (time_t)due;
    ts.tv_nsec = (long)((due - (double)ts.tv_sec) * 1e9);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static int write_all(const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(STDOUT_FILENO, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    double rate = 100.0, seconds = 30.0, delay = 0.0;
    for (int i = 1; i < argc; i++) {
        double v;
        if ((v = arg_value(argc, argv, &i, "--rate")) >= 0) {
            rate = v;
        } else if ((v = arg_value(argc, argv, &i, "--seconds")) >= 0) {
            seconds = v;
        } else if ((v = arg_value(argc, argv, &i, "--delay")) >= 0) {
            delay = v;
        } else {
            fprintf(stderr, "usage: paced [--rate R] [--seconds S] [--delay D]\n");
            return 2;
        }
    }
    if (rate <= 0) {
        fprintf(stderr, "paced: --rate must be above 0\n");
        return 2;
    }
    if (delay > 0) sleep_until(now() + delay);
    long count = (long)(rate * seconds);
    double start = now();
    char line[96];
    for (long i = 1; i <= count; i++) {
        double due = start + (double)(i - 1) / rate;
        if (due > now()) sleep_until(due);
        int len = snprintf(line, sizeof line, "INFO t=%.6f line %ld\n", now(), i);
        if (write_all(line, (size_t)len) != 0) return 1; /* the reader went away */
    }
    return 0;
}
