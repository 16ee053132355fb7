/* Many SSE clients in one process (epoll), for the bench: each does what bench/sse.py's SseClient
 * does, at a fraction of its CPU, so the instrument stops eating the cores it measures.
 *
 * For each stream: an HTTP/1.1 GET, its status, the chunked body decoded, complete SSE frames
 * (up to a blank line) scanned for lines ({"seq":N, counted in order: gaps, duplicates), the
 * t=<monotonic> stamp each line carries turned into a delay from CLOCK_MONOTONIC at the read
 * (Python's time.monotonic on Linux), the first line's time, `event: done` as the end. A stream
 * ended without done (the server cut it, or could not finish its catch-up read) is resumed as a
 * browser's EventSource does: after the last `retry` the server sent, with Last-Event-ID, at most
 * --max-resumes times. Opening a stream retries a 404 (the job's row not projected yet) or a 503
 * (NATS busy) every 20 ms for --open-seconds, as bench/sse.py's open_stream does.
 *
 * Input (stdin, or --list FILE): one stream a line, tab-separated:
 *     HOST \t PORT \t PATH \t OPTIONS [\t Header-Name: value]...
 * OPTIONS: "-", or a comma-separated set of "resume", "no-resume", "delays", "no-delays" (over
 * the defaults given by --resume / --no-delays). An empty line ends the list; stdin then stays
 * open, and its end (or SIGTERM, SIGINT) stops every stream still open ("closed"). Headers go
 * in the list, not in argv: an Authorization token is not for `ps` to show.
 *
 * Output (stdout): "failed INDEX STATUS" for a stream that could not be opened, then "ready" once
 * every stream has its 200 answer (or failed); at the end one JSON object with each stream's
 * summary and this process's CPU time (getrusage). Each stream's delays (seconds, float64, native
 * byte order) go to --delays FILE, stream after stream, as many as its summary's "delays".
 *
 * bench/nativetools.py compiles it with the machine's cc; bench/sseclients.py runs it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* A frame, a response head or a chunk-size line may be long, never this long: past it the
 * stream ends as "error" rather than the process taking the machine's memory. */
#define MAX_BUFFER ((size_t)1 << 30)
#define MAX_HEAD ((size_t)1 << 20)
#define MAX_SIZE_LINE ((size_t)4096)
#define READ_SIZE ((size_t)256 * 1024) /* what asyncio reads at once */
#define REOPEN_MS 20

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (extra > MAX_BUFFER || b->len > MAX_BUFFER - extra) return -1;
    size_t need = b->len + extra;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_append(buf_t *b, const char *data, size_t len) {
    if (buf_reserve(b, len) != 0) return -1;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

static void buf_consume(buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static void buf_free(buf_t *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

enum phase { NOT_STARTED, CONNECTING, HEAD, BODY, WAITING, ENDED };
enum chunk_state { CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, CHUNK_END };

typedef struct {
    int index;
    char *host, *port, *path, *headers; /* headers: "Name: value\r\n"... */
    int resume, record;
    int fd;
    enum phase phase;
    int opened;   /* had its first 200: from then on a refused reconnect is a resume */
    int gated;    /* holds one of the --connecting slots */
    int64_t open_deadline_ns, wake_at_ns;
    buf_t out;
    size_t out_sent;
    buf_t in;   /* bytes read, not yet decoded: the head, then the (chunked) body */
    buf_t body; /* decoded body not yet split into frames */
    size_t body_searched; /* body bytes already searched for a frame's end */
    int chunked;
    enum chunk_state chunk;
    size_t chunk_left;
    int status;
    long long lines, next_seq, gaps, duplicates;
    int resumes;
    long long retry_ms;
    int has_first;
    double first_line_at;
    buf_t last_id;
    int has_last_id;
    const char *ended;
    char error[160];
    double *delays;
    size_t delays_len, delays_cap;
} conn_t;

static conn_t *conns;
static size_t nconns;
static int epfd;
static size_t connecting_limit = 50, in_gate, next_to_start, resolved, ended_count;
static int max_resumes = 20;
static double open_seconds = 30.0;
static size_t waiting;
static int ready_said;
static int stopping; /* stdin's end or a signal: no stream starts any more */
static char read_buf[READ_SIZE];

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* As Python's time.monotonic() turns its nanoseconds into a float. */
static double seconds_of(int64_t ns) { return (double)ns / 1e9; }

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("sseclients: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void say(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static void start_next(void);

static void release_gate(conn_t *c) {
    if (c->gated) {
        c->gated = 0;
        in_gate--;
    }
}

static void close_fd(conn_t *c) {
    if (c->fd >= 0) {
        close(c->fd); /* also leaves the epoll set: the fd is never duplicated */
        c->fd = -1;
    }
}

static void mark_resolved(void) {
    resolved++;
    if (resolved == nconns && !ready_said) {
        ready_said = 1;
        say("ready\n");
    }
}

static void finish(conn_t *c, const char *how) {
    if (c->phase == ENDED) return;
    if (c->phase == WAITING) waiting--;
    close_fd(c);
    if (c->ended == NULL) c->ended = how;
    c->phase = ENDED;
    ended_count++;
    if (!c->opened) {
        /* Never got its 200: the scenario waits for no more of it. */
        if (strcmp(how, "closed") != 0 || c->status != 0) say("failed %d %d\n", c->index, c->status);
        release_gate(c);
        mark_resolved();
        start_next();
    }
}

static void fail(conn_t *c, const char *how, const char *fmt, ...) {
    if (c->error[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->error, sizeof c->error, fmt, ap);
        va_end(ap);
    }
    finish(c, how);
}

static void wait_then(conn_t *c, int64_t ms) {
    close_fd(c);
    c->phase = WAITING;
    c->wake_at_ns = now_ns() + ms * 1000000LL;
    waiting++;
}

/* The connection ended (the server closed it, or the body's end): resume like a browser. */
static void lost(conn_t *c, int is_error, const char *why) {
    close_fd(c);
    if (c->phase == ENDED) return;
    if (!c->opened) {
        fail(c, "error", "%s before the response's head", why);
        return;
    }
    if (c->resume && c->resumes < max_resumes) {
        c->resumes++;
        wait_then(c, c->retry_ms);
        return;
    }
    fail(c, is_error ? "error" : "closed", "%s", why);
}

static int build_request(conn_t *c) {
    c->out.len = 0;
    c->out_sent = 0;
    int ok = buf_append(&c->out, "GET ", 4) == 0 &&
             buf_append(&c->out, c->path, strlen(c->path)) == 0 &&
             buf_append(&c->out, " HTTP/1.1\r\nHost: ", 17) == 0 &&
             buf_append(&c->out, c->host, strlen(c->host)) == 0 &&
             buf_append(&c->out, ":", 1) == 0 &&
             buf_append(&c->out, c->port, strlen(c->port)) == 0 &&
             buf_append(&c->out, "\r\nAccept: text/event-stream\r\n", 29) == 0 &&
             buf_append(&c->out, c->headers, strlen(c->headers)) == 0;
    if (ok && c->has_last_id) {
        ok = buf_append(&c->out, "Last-Event-ID: ", 15) == 0 &&
             buf_append(&c->out, c->last_id.data, c->last_id.len) == 0 &&
             buf_append(&c->out, "\r\n", 2) == 0;
    }
    return ok && buf_append(&c->out, "\r\n", 2) == 0 ? 0 : -1;
}

static void connect_now(conn_t *c) {
    struct addrinfo hints, *found = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->in.len = 0;
    c->body.len = 0;
    c->body_searched = 0;
    c->chunked = 0;
    c->chunk = CHUNK_SIZE;
    c->chunk_left = 0;
    int rc = getaddrinfo(c->host, c->port, &hints, &found);
    if (rc != 0) {
        lost(c, 1, gai_strerror(rc));
        return;
    }
    int fd = -1, err = 0;
    for (struct addrinfo *a = found; a != NULL; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as asyncio does */
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS) break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(found);
    if (fd < 0) {
        lost(c, 1, strerror(err));
        return;
    }
    if (build_request(c) != 0) {
        close(fd);
        fail(c, "error", "out of memory");
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = (uint64_t)c->index};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    c->fd = fd;
    c->phase = CONNECTING;
}

static void start_next(void) {
    while (!stopping && in_gate < connecting_limit && next_to_start < nconns) {
        conn_t *c = &conns[next_to_start++];
        c->gated = 1;
        in_gate++;
        c->open_deadline_ns = now_ns() + (int64_t)(open_seconds * 1e9);
        connect_now(c);
    }
}

static void on_writable(conn_t *c) {
    if (c->phase == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            lost(c, 1, strerror(err));
            return;
        }
        c->phase = HEAD;
    }
    while (c->out_sent < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out_sent, c->out.len - c->out_sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            lost(c, 1, strerror(errno));
            return;
        }
        c->out_sent += (size_t)n;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)c->index};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
}

/* --- the SSE frames */

static int starts_with(const char *line, size_t len, const char *prefix) {
    size_t n = strlen(prefix);
    return len >= n && memcmp(line, prefix, n) == 0;
}

static int record_delay(conn_t *c, double delay) {
    if (c->delays_len == c->delays_cap) {
        size_t cap = c->delays_cap ? c->delays_cap * 2 : 1024;
        if (cap > MAX_BUFFER / sizeof(double)) return -1;
        double *d = realloc(c->delays, cap * sizeof(double));
        if (d == NULL) return -1;
        c->delays = d;
        c->delays_cap = cap;
    }
    c->delays[c->delays_len++] = delay;
    return 0;
}

static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* Every t=<digits>.<digits> of a data line (bench/sse.py's STAMP_RE), as now minus it. */
static int stamps(conn_t *c, const char *p, const char *end, double now) {
    static const char mark[] = "t=";
    while (p < end && (p = memmem(p, (size_t)(end - p), mark, 2)) != NULL) {
        const char *s = p + 2, *q = s;
        while (q < end && is_digit(*q)) q++;
        if (q == s || q >= end || *q != '.' || q + 1 >= end || !is_digit(q[1])) {
            p += 1;
            continue;
        }
        q++;
        while (q < end && is_digit(*q)) q++;
        /* strtod on a bounded copy: the text after the digits (an "e5") is not the stamp's */
        size_t len = (size_t)(q - s);
        char small[64], *copy = len < sizeof small ? small : malloc(len + 1);
        if (copy == NULL) return -1;
        memcpy(copy, s, len);
        copy[len] = '\0';
        double t = strtod(copy, NULL);
        if (copy != small) free(copy);
        if (record_delay(c, now - t) != 0) return -1;
        p = q;
    }
    return 0;
}

/* Every {"seq":N of a data line: in order, or a gap, or a duplicate. */
static void sequence(conn_t *c, const char *p, const char *end, int *any) {
    static const char mark[] = "{\"seq\":";
    const size_t n = sizeof mark - 1;
    while (p < end && (p = memmem(p, (size_t)(end - p), mark, n)) != NULL) {
        p += n;
        c->lines++;
        *any = 1;
        if (p >= end || !is_digit(*p)) continue; /* counted, as bench/sse.py does; no number */
        long long seq = 0;
        while (p < end && is_digit(*p)) {
            if (seq > (LLONG_MAX - 9) / 10) break;
            seq = seq * 10 + (*p++ - '0');
        }
        if (seq == c->next_seq) {
            c->next_seq++;
        } else if (seq > c->next_seq) {
            c->gaps += seq - c->next_seq;
            c->next_seq = seq + 1;
        } else {
            c->duplicates++;
        }
    }
}

/* Complete frames (they end with a blank line). Fields are read at a line's start only: JSON
 * data never holds a raw line break, so a line's text cannot pass for a field. */
static int scan(conn_t *c, const char *frames, size_t len, double now) {
    const char *p = frames, *end = frames + len;
    int any_line = 0, done = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL) eol = end;
        size_t n = (size_t)(eol - p);
        if (starts_with(p, n, "data: ")) {
            int any = 0;
            sequence(c, p + 6, eol, &any);
            if (any) any_line = 1;
            if (any && c->record && stamps(c, p + 6, eol, now) != 0) return -1;
        } else if (starts_with(p, n, "id: ")) {
            c->last_id.len = 0;
            if (buf_append(&c->last_id, p + 4, n - 4) != 0) return -1;
            c->has_last_id = 1;
        } else if (starts_with(p, n, "retry: ")) {
            /* The latest retry counts, as in a browser's EventSource. */
            long long ms = 0;
            const char *q = p + 7;
            while (q < eol && is_digit(*q) && ms < 3600000) ms = ms * 10 + (*q++ - '0');
            if (q == eol && eol > p + 7) c->retry_ms = ms;
        } else if (n == 11 && memcmp(p, "event: done", 11) == 0) {
            done = 1;
        }
        p = eol + 1;
    }
    if (any_line && !c->has_first) {
        c->has_first = 1;
        c->first_line_at = now;
    }
    if (done) finish(c, "done");
    return 0;
}

/* Frames of the decoded body up to its last blank line; the rest waits for more. */
static int frames_ready(conn_t *c, double now) {
    size_t from = c->body_searched > 0 ? c->body_searched - 1 : 0;
    c->body_searched = c->body.len;
    if (c->body.len < 2 || c->body.len - from < 2) return 0;
    const char *base = c->body.data;
    size_t at = c->body.len;
    while (at > from + 1) {
        const char *nl = memrchr(base + from + 1, '\n', at - from - 1);
        if (nl == NULL) return 0;
        if (nl[-1] == '\n') {
            size_t end = (size_t)(nl - base) + 1;
            if (scan(c, base, end, now) != 0) return -1;
            buf_consume(&c->body, end);
            c->body_searched = c->body.len;
            return 0;
        }
        at = (size_t)(nl - base);
    }
    return 0;
}

/* Chunked transfer coding, decoded as the bytes come (a size line or a chunk split anywhere). */
static int dechunk(conn_t *c) {
    buf_t *in = &c->in;
    size_t pos = 0;
    while (pos < in->len && c->chunk != CHUNK_END) {
        if (c->chunk == CHUNK_SIZE) {
            char *eol = memmem(in->data + pos, in->len - pos, "\r\n", 2);
            if (eol == NULL) {
                if (in->len - pos > MAX_SIZE_LINE) return -1;
                break;
            }
            size_t size = 0, digits = 0;
            for (char *q = in->data + pos; q < eol && *q != ';'; q++, digits++) {
                int v = is_digit(*q) ? *q - '0'
                        : (*q >= 'a' && *q <= 'f') ? *q - 'a' + 10
                        : (*q >= 'A' && *q <= 'F') ? *q - 'A' + 10
                                                   : -1;
                if (v < 0 || size > (MAX_BUFFER >> 4)) return -1;
                size = size * 16 + (size_t)v;
            }
            if (digits == 0) return -1;
            pos = (size_t)(eol - in->data) + 2;
            c->chunk_left = size;
            c->chunk = size == 0 ? CHUNK_END : CHUNK_DATA;
        } else if (c->chunk == CHUNK_DATA) {
            size_t n = in->len - pos < c->chunk_left ? in->len - pos : c->chunk_left;
            if (buf_append(&c->body, in->data + pos, n) != 0) return -1;
            pos += n;
            c->chunk_left -= n;
            if (c->chunk_left == 0) c->chunk = CHUNK_CRLF;
        } else {
            if (in->len - pos < 2) break;
            if (memcmp(in->data + pos, "\r\n", 2) != 0) return -1;
            pos += 2;
            c->chunk = CHUNK_SIZE;
        }
    }
    buf_consume(in, pos);
    return 0;
}

static int header_is(const char *line, size_t len, const char *name, const char *value) {
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':') return 0;
    for (size_t i = n + 1; i + strlen(value) <= len; i++) {
        if (strncasecmp(line + i, value, strlen(value)) == 0) return 1;
    }
    return 0;
}

/* The response's head is in: its status decides what comes next. Returns 1 to read the body. */
static int on_head(conn_t *c, size_t head_len) {
    const char *head = c->in.data, *sp = memchr(head, ' ', head_len);
    int status = 0;
    if (sp != NULL) {
        for (const char *q = sp + 1; q < head + head_len && is_digit(*q) && status < 1000; q++)
            status = status * 10 + (*q - '0');
    }
    c->status = status;
    if (status == 0) {
        fail(c, "error", "no HTTP status in the response's head");
        return 0;
    }
    for (const char *line = head; line < head + head_len;) {
        const char *eol = memmem(line, (size_t)(head + head_len - line), "\r\n", 2);
        if (eol == NULL) eol = head + head_len;
        if (header_is(line, (size_t)(eol - line), "Transfer-Encoding", "chunked")) c->chunked = 1;
        line = eol + 2;
    }
    buf_consume(&c->in, head_len + 4);
    if (status == 200) {
        c->phase = BODY;
        if (!c->opened) {
            c->opened = 1;
            release_gate(c);
            mark_resolved();
            start_next();
        }
        return 1;
    }
    if (c->opened) {
        lost(c, 0, "a resume was refused"); /* 503 while NATS is busy: try again */
    } else if ((status == 404 || status == 503) && now_ns() < c->open_deadline_ns) {
        wait_then(c, REOPEN_MS); /* the job's row not projected yet, or NATS busy */
    } else {
        finish(c, "status");
    }
    return 0;
}

static void on_readable(conn_t *c) {
    ssize_t n;
    do {
        n = recv(c->fd, read_buf, sizeof read_buf, 0);
    } while (n < 0 && errno == EINTR);
    double now = seconds_of(now_ns());
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        lost(c, 1, strerror(errno));
        return;
    }
    if (n == 0) {
        lost(c, 0, "the server closed the connection");
        return;
    }
    size_t before = c->in.len;
    if (buf_append(&c->in, read_buf, (size_t)n) != 0) {
        fail(c, "error", "more than %zu bytes buffered", MAX_BUFFER);
        return;
    }
    if (c->phase == HEAD) {
        size_t from = before >= 3 ? before - 3 : 0;
        char *end = memmem(c->in.data + from, c->in.len - from, "\r\n\r\n", 4);
        if (end == NULL) {
            if (c->in.len > MAX_HEAD) fail(c, "error", "a response head over %zu bytes", MAX_HEAD);
            return;
        }
        if (!on_head(c, (size_t)(end - c->in.data))) return;
    }
    if (c->chunked) {
        if (dechunk(c) != 0) {
            fail(c, "error", "broken chunked encoding");
            return;
        }
    } else {
        if (buf_append(&c->body, c->in.data, c->in.len) != 0) {
            fail(c, "error", "more than %zu bytes buffered", MAX_BUFFER);
            return;
        }
        c->in.len = 0;
    }
    if (frames_ready(c, now) != 0) {
        fail(c, "error", "out of memory");
        return;
    }
    /* The response's end without done: as the connection's end (a browser does not wait for
     * the server to close a kept-alive connection). */
    if (c->phase == BODY && c->chunk == CHUNK_END) lost(c, 0, "the response ended");
}

static void wake_due(void) {
    int64_t now = now_ns();
    for (size_t i = 0; i < nconns && waiting > 0; i++) {
        conn_t *c = &conns[i];
        if (c->phase == WAITING && c->wake_at_ns <= now) {
            waiting--;
            connect_now(c);
        }
    }
}

static int next_timeout_ms(void) {
    if (waiting == 0) return -1;
    int64_t now = now_ns(), soonest = INT64_MAX;
    for (size_t i = 0; i < nconns; i++)
        if (conns[i].phase == WAITING && conns[i].wake_at_ns < soonest)
            soonest = conns[i].wake_at_ns;
    if (soonest <= now) return 0;
    int64_t ms = (soonest - now + 999999) / 1000000;
    return ms > 60000 ? 60000 : (int)ms;
}

static void stop_all(void) {
    stopping = 1;
    for (size_t i = 0; i < nconns; i++) finish(&conns[i], "closed");
}

/* --- input and output */

static char *dup_range(const char *s, size_t len) {
    char *out = malloc(len + 1);
    if (out == NULL) die("out of memory");
    memcpy(out, s, len);
    out[len] = '\0';
    return out;
}

static void parse_options(conn_t *c, const char *text, size_t line_no) {
    if (strcmp(text, "-") == 0 || text[0] == '\0') return;
    char *copy = dup_range(text, strlen(text)), *save = NULL;
    for (char *opt = strtok_r(copy, ",", &save); opt != NULL; opt = strtok_r(NULL, ",", &save)) {
        if (strcmp(opt, "resume") == 0) c->resume = 1;
        else if (strcmp(opt, "no-resume") == 0) c->resume = 0;
        else if (strcmp(opt, "delays") == 0) c->record = 1;
        else if (strcmp(opt, "no-delays") == 0) c->record = 0;
        else die("line %zu: unknown option %s", line_no, opt);
    }
    free(copy);
}

/* Returns 1 when the list ended with an empty line (stdin stays open as the stop signal). */
static int read_list(FILE *in, int resume, int record) {
    char *line = NULL;
    size_t cap = 0, allocated = 0, line_no = 0;
    ssize_t len;
    int ended_by_blank = 0;
    while ((len = getline(&line, &cap, in)) >= 0) {
        line_no++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        if (len == 0) {
            ended_by_blank = 1;
            break;
        }
        if (strlen(line) != (size_t)len) die("line %zu: a NUL byte", line_no);
        char *fields[4];
        char *p = line;
        for (int f = 0; f < 4; f++) {
            fields[f] = p;
            char *tab = p ? strchr(p, '\t') : NULL;
            if (p == NULL) die("line %zu: HOST, PORT, PATH and OPTIONS, tab-separated", line_no);
            if (tab) *tab = '\0';
            p = tab ? tab + 1 : NULL;
        }
        char *end;
        long port = strtol(fields[1], &end, 10);
        if (*fields[1] == '\0' || *end != '\0' || port < 1 || port > 65535)
            die("line %zu: port %s is not 1-65535", line_no, fields[1]);
        if (fields[2][0] != '/') die("line %zu: the path must start with /", line_no);
        if (fields[0][0] == '\0') die("line %zu: no host", line_no);
        if (nconns == allocated) {
            allocated = allocated ? allocated * 2 : 64;
            conns = realloc(conns, allocated * sizeof *conns);
            if (conns == NULL) die("out of memory");
        }
        conn_t *c = &conns[nconns];
        memset(c, 0, sizeof *c);
        c->index = (int)nconns;
        c->fd = -1;
        c->host = dup_range(fields[0], strlen(fields[0]));
        c->port = dup_range(fields[1], strlen(fields[1]));
        c->path = dup_range(fields[2], strlen(fields[2]));
        c->resume = resume;
        c->record = record;
        c->next_seq = 1;
        c->retry_ms = 3000;
        parse_options(c, fields[3], line_no);
        buf_t headers = {0};
        while (p != NULL) {
            char *tab = strchr(p, '\t');
            size_t n = tab ? (size_t)(tab - p) : strlen(p);
            const char *colon = memchr(p, ':', n);
            if (colon == NULL || colon == p) die("line %zu: a header is Name: value", line_no);
            if (buf_append(&headers, p, n) != 0 || buf_append(&headers, "\r\n", 2) != 0)
                die("out of memory");
            p = tab ? tab + 1 : NULL;
        }
        if (buf_append(&headers, "", 1) != 0) die("out of memory");
        c->headers = headers.data;
        nconns++;
    }
    free(line);
    return ended_by_blank;
}

static void json_string(FILE *out, const char *s, size_t len) {
    fputc('"', out);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch >= 0x7f) fprintf(out, "\\u%04x", ch);
        else fputc(ch, out);
    }
    fputc('"', out);
}

static void report(const char *delays_path) {
    if (delays_path != NULL) {
        FILE *f = fopen(delays_path, "wb");
        if (f == NULL) die("%s: %s", delays_path, strerror(errno));
        for (size_t i = 0; i < nconns; i++)
            if (conns[i].delays_len &&
                fwrite(conns[i].delays, sizeof(double), conns[i].delays_len, f) !=
                    conns[i].delays_len)
                die("%s: %s", delays_path, strerror(errno));
        if (fclose(f) != 0) die("%s: %s", delays_path, strerror(errno));
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"clients\":[");
    for (size_t i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        printf("%s{\"index\":%d,\"status\":%d,\"ended\":\"%s\",\"lines\":%lld,\"next_seq\":%lld,"
               "\"gaps\":%lld,\"duplicates\":%lld,\"resumes\":%d,\"record_delays\":%s,"
               "\"delays\":%zu,\"first_line_at\":",
               i ? "," : "", c->index, c->status, c->ended ? c->ended : "closed", c->lines,
               c->next_seq, c->gaps, c->duplicates, c->resumes, c->record ? "true" : "false",
               c->delays_len);
        if (c->has_first) printf("%.9f", c->first_line_at);
        else printf("null");
        printf(",\"last_id\":");
        if (c->has_last_id) json_string(stdout, c->last_id.data, c->last_id.len);
        else printf("null");
        printf(",\"error\":");
        json_string(stdout, c->error, strlen(c->error));
        printf("}");
    }
    printf("],\"cpu_user_s\":%.6f,\"cpu_system_s\":%.6f,\"max_rss_kib\":%ld}\n",
           (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, ru.ru_maxrss);
    fflush(stdout);
}

static const char *arg_value(int argc, char **argv, int *i, const char *name) {
    /* "--name value" or "--name=value", as argparse takes them. */
    size_t n = strlen(name);
    if (strcmp(argv[*i], name) == 0) {
        if (*i + 1 >= argc) die("%s needs a value", name);
        return argv[++*i];
    }
    if (strncmp(argv[*i], name, n) == 0 && argv[*i][n] == '=') return argv[*i] + n + 1;
    return NULL;
}

static double number(const char *name, const char *text, double low) {
    char *end;
    double v = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || !(v >= low)) die("%s: not a number >= %g: %s", name, low, text);
    return v;
}

int main(int argc, char **argv) {
    const char *list_path = NULL, *delays_path = NULL, *v;
    int resume = 0, record = 1;
    for (int i = 1; i < argc; i++) {
        if ((v = arg_value(argc, argv, &i, "--list")) != NULL) list_path = v;
        else if ((v = arg_value(argc, argv, &i, "--delays")) != NULL) delays_path = v;
        else if ((v = arg_value(argc, argv, &i, "--connecting")) != NULL)
            connecting_limit = (size_t)number("--connecting", v, 1);
        else if ((v = arg_value(argc, argv, &i, "--max-resumes")) != NULL)
            max_resumes = (int)number("--max-resumes", v, 0);
        else if ((v = arg_value(argc, argv, &i, "--open-seconds")) != NULL)
            open_seconds = number("--open-seconds", v, 0);
        else if (strcmp(argv[i], "--resume") == 0) resume = 1;
        else if (strcmp(argv[i], "--no-delays") == 0) record = 0;
        else {
            fprintf(stderr,
                    "usage: sseclients [--list FILE] [--delays FILE] [--connecting N] "
                    "[--max-resumes N] [--open-seconds S] [--resume] [--no-delays]\n");
            return 2;
        }
    }
    int watch_stdin = 0;
    if (list_path != NULL) {
        FILE *f = fopen(list_path, "r");
        if (f == NULL) die("%s: %s", list_path, strerror(errno));
        read_list(f, resume, record);
        fclose(f);
    } else {
        watch_stdin = read_list(stdin, resume, record);
    }
    signal(SIGPIPE, SIG_IGN);
    /* One descriptor a stream: the soft limit (often 1,024) would refuse streams the hard
     * limit allows. */
    struct rlimit files;
    if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
        files.rlim_cur = files.rlim_max;
        setrlimit(RLIMIT_NOFILE, &files);
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1: %s", strerror(errno));
    sigset_t stops;
    sigemptyset(&stops);
    sigaddset(&stops, SIGTERM);
    sigaddset(&stops, SIGINT);
    sigprocmask(SIG_BLOCK, &stops, NULL);
    int sfd = signalfd(-1, &stops, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) die("signalfd: %s", strerror(errno));
    const uint64_t stdin_key = UINT64_MAX, signal_key = UINT64_MAX - 1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = signal_key};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, sfd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    if (watch_stdin) {
        ev.data.u64 = stdin_key;
        /* stdin may be a file (no epoll there): then it gives no stop signal */
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &ev) != 0) watch_stdin = 0;
    }
    if (nconns == 0) say("ready\n");
    start_next();
    struct epoll_event events[256];
    while (ended_count < nconns) {
        int n = epoll_wait(epfd, events, 256, next_timeout_ms());
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait: %s", strerror(errno));
        }
        for (int e = 0; e < n; e++) {
            uint64_t key = events[e].data.u64;
            if (key == signal_key) {
                stop_all();
                break;
            }
            if (key == stdin_key) {
                char drain[512];
                ssize_t got = read(STDIN_FILENO, drain, sizeof drain);
                if (got <= 0 && !(got < 0 && errno == EINTR)) {
                    epoll_ctl(epfd, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
                    stop_all();
                    break;
                }
                continue;
            }
            conn_t *c = &conns[key];
            if (c->fd < 0) continue; /* ended by an earlier event of this round */
            if (c->phase == CONNECTING || (events[e].events & EPOLLOUT)) {
                on_writable(c);
            } else if (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                on_readable(c);
            }
        }
        if (waiting > 0) wake_due();
    }
    report(delays_path);
    for (size_t i = 0; i < nconns; i++) {
        buf_free(&conns[i].out);
        buf_free(&conns[i].in);
        buf_free(&conns[i].body);
        buf_free(&conns[i].last_id);
        free(conns[i].delays);
        free(conns[i].host);
        free(conns[i].port);
        free(conns[i].path);
        free(conns[i].headers);
    }
    free(conns);
    return 0;
}
