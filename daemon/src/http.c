/*
 * http.c - minimal HTTP/1.1 server on the libev loop.
 *
 * Design notes
 * - Scope: health probes, Prometheus scrapes and curl. GET and HEAD, and POST for
 *   the few actions the handler offers (a body is not read), one request per
 *   connection ("Connection: close"), request head at most 8 KiB.
 *   Anything else gets a precise 4xx/5xx, never a crash or a hang.
 * - Probes first: slow or idle clients cannot starve /healthz and /readyz. A
 *   connection must deliver its whole request head within HEAD_TIMEOUT_S (a probe
 *   sends it at once) and lives at most CONN_TIMEOUT_S. At max_conns, a new
 *   connection takes the slot of the oldest one still waiting for its request
 *   head, which is closed: a prober, whose request follows its connect at once,
 *   is served, and a flood of slow or idle clients only evicts itself (measured in
 *   tests/integration/test_probes.py). Next in line are connections already answered
 *   (lingering until their client closes), then those whose client has not taken its
 *   answer for STALLED_S: clients that send a request and never read cannot hold the
 *   slots either. Only when every slot is busy answering, recently, is a
 *   new connection answered 503 and closed like any answer (write side shut, input
 *   drained for at most LINGER_S), with up to REFUSALS_MAX such refusals
 *   lingering; past that it is refused with a best-effort 503 and closed at once.
 * - After the answer, the write side is shut and what the client still sends is
 *   read and discarded until it closes (at most LINGER_S): closing with unread
 *   input would reset the connection and could destroy the answer in flight.
 * - The handler runs on the loop thread between batches, so it may read the
 *   pipeline's state without locks. The reply is built whole, then written as
 *   the socket accepts it.
 */
#include "http.h"
#include "errbuf.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEAD_MAX 8192
#define HEAD_TIMEOUT_S 2.0 /* to receive the whole request head */
#define CONN_TIMEOUT_S 10.0
#define LINGER_S 2.0
#define REFUSALS_MAX 64 /* 503s closing at once beyond max_conns (~8 KiB each) */
#define STALLED_S 1.0   /* an answer its client has not taken for this long may be cut */

typedef struct conn conn_t;

struct ch_http {
    struct ev_loop *loop;
    int fd;
    ev_io accept_io;
    ch_http_handler_fn *handler;
    void *opaque;
    size_t max_conns, n_conns;
    conn_t *conns, *oldest; /* doubly linked, newest first */
    uint64_t evicted;
    ch_buf_t body;
    uint64_t requests;
    char address[128];
    char *allowed; /* http.allowed_hosts; NULL: IP literals and localhost only */
};

struct conn {
    ev_io io;
    ev_timer timer;
    ch_http_t *srv;
    int fd;
    size_t in_len;
    ch_buf_t out;
    size_t out_off;
    bool answering; /* the request head is in (or it is refused): answering or lingering */
    bool lingering; /* answered; draining input until the client closes */
    double answered_s; /* ev_now when the answer started, or its last part (answering) */
    ch_http_more_fn *more; /* a streamed answer's parts to come; NULL: none */
    ch_http_end_fn *end;
    void *ctx;
    conn_t *prev, *next;
    char in[HEAD_MAX];
};

/* A streamed answer is over: its producer frees what it holds. */
static void stream_end(conn_t *c) {
    ch_http_end_fn *end = c->end;
    c->more = NULL;
    c->end = NULL;
    if (end) {
        end(c->ctx);
    }
}

static void conn_close(conn_t *c) {
    ch_http_t *h = c->srv;
    stream_end(c);
    ev_io_stop(h->loop, &c->io);
    ev_timer_stop(h->loop, &c->timer);
    close(c->fd);
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        h->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    } else {
        h->oldest = c->prev;
    }
    h->n_conns--;
    ch_buf_done(&c->out);
    free(c);
}

static const char *status_text(int status) {
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 202:
        return "Accepted";
    case 403:
        return "Forbidden";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 421:
        return "Misdirected Request";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents);

/* Read and drop what the client sent, at most `reads` times 4 KiB, never blocking.
 * Returns the last recv() result: 0 the client closed, < 0 (errno) none left or an
 * error, > 0 the limit was reached. */
static ssize_t drain(int fd, size_t reads) {
    char sink[4096];
    ssize_t n = 1;
    for (size_t i = 0; i < reads && (n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0; i++) {
    }
    return n;
}

/* Writes what the socket takes; closes when done or on error. */
static void conn_flush(conn_t *c) {
    ch_http_t *h = c->srv;
    for (;;) {
        while (c->out_off < c->out.len) {
            ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.len - c->out_off,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                c->out_off += (size_t)n;
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                return; /* wait for EV_WRITE */
            }
            conn_close(c); /* the client is gone: a stream ends with it */
            return;
        }
        if (!c->more) {
            break;
        }
        /* one part per writable socket and loop iteration: batches run in between */
        c->out.len = c->out_off = 0;
        int r = c->more(c->ctx, &c->out);
        if (r < 0) {
            conn_close(c);
            return;
        }
        if (r == 0) {
            stream_end(c);
        }
        c->answered_s = ev_now(h->loop); /* progress: neither stalled nor timed out */
        ev_timer_stop(h->loop, &c->timer);
        ev_timer_set(&c->timer, CONN_TIMEOUT_S - HEAD_TIMEOUT_S, 0);
        ev_timer_start(h->loop, &c->timer);
        if (c->more) {
            return; /* EV_WRITE sends this part and asks for the next */
        }
    }
    shutdown(c->fd, SHUT_WR);
    c->lingering = true;
    ev_io_stop(h->loop, &c->io);
    ev_io_set(&c->io, c->fd, EV_READ);
    ev_io_start(h->loop, &c->io);
    ev_timer_stop(h->loop, &c->timer);
    ev_timer_set(&c->timer, LINGER_S, 0);
    ev_timer_start(h->loop, &c->timer);
}

static void conn_reply(conn_t *c, int status, const char *ctype, const void *body, size_t len,
                       bool head_only, const char *allow) {
    ch_http_t *h = c->srv;
    c->out.len = 0;
    char clen[48] = "";
    if (!c->more) { /* streamed: the body ends with the connection */
        snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", len);
    }
    int r = ch_buf_printf(&c->out,
                          "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s"
                          "Cache-Control: no-store\r\nConnection: close\r\n%s%s%s\r\n",
                          status, status_text(status), ctype, clen, status == 405 ? "Allow: " : "",
                          status == 405 ? (allow ? allow : "GET, HEAD") : "",
                          status == 405 ? "\r\n" : "");
    if (r == 0 && !head_only && len) {
        r = ch_buf_append(&c->out, body, len);
    }
    if (r < 0) {
        conn_close(c);
        return;
    }
    h->requests++;
    c->answering = true;
    c->answered_s = ev_now(h->loop);
    ev_timer_stop(h->loop, &c->timer); /* the rest of CONN_TIMEOUT_S to answer */
    ev_timer_set(&c->timer, CONN_TIMEOUT_S - HEAD_TIMEOUT_S, 0);
    ev_timer_start(h->loop, &c->timer);
    c->out_off = 0;
    ev_io_stop(h->loop, &c->io);
    ev_io_set(&c->io, c->fd, EV_WRITE);
    ev_io_start(h->loop, &c->io);
    conn_flush(c);
}

static void reply_text(conn_t *c, int status, const char *text, bool head_only) {
    conn_reply(c, status, "text/plain; charset=utf-8", text, strlen(text), head_only, NULL);
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

/* Decodes %XX in place. @returns the new length, or -1 on a bad escape. */
static long percent_decode(char *s, size_t n) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                return -1;
            }
            int a = hexval(s[i + 1]), b = hexval(s[i + 2]);
            if (a < 0 || b < 0) {
                return -1;
            }
            s[o++] = (char)(a * 16 + b);
            i += 2;
        } else {
            s[o++] = s[i];
        }
    }
    return (long)o;
}

/* The value of the first header called name (lower case) in the head in[0..end),
 * trimmed; NULL if none. */
static const char *header(const char *in, size_t end, const char *name, size_t *ret_len) {
    size_t nl = strlen(name);
    const char *line = memchr(in, '\n', end);
    while (line && (size_t)(line + 1 - in) < end) {
        line++;
        size_t rest = end - (size_t)(line - in);
        const char *eol = memchr(line, '\n', rest);
        size_t llen = eol ? (size_t)(eol - line) : rest;
        if (llen > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
            const char *v = line + nl + 1;
            size_t vl = llen - nl - 1;
            while (vl && (*v == ' ' || *v == '\t')) {
                v++;
                vl--;
            }
            while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t' || v[vl - 1] == '\r')) {
                vl--;
            }
            *ret_len = vl;
            return v;
        }
        line = eol;
    }
    *ret_len = 0;
    return NULL;
}

int ch_http_parse(char *in, size_t end, ch_http_request_t *ret, const char **why) {
    char *line = in;
    char *eol = memchr(line, '\n', end);
    size_t llen = eol ? (size_t)(eol - line) : end;
    if (llen && line[llen - 1] == '\r') {
        llen--;
    }
    char *sp1 = memchr(line, ' ', llen);
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', llen - (size_t)(sp1 + 1 - line)) : NULL;
    if (!sp1 || !sp2 || sp2 == sp1 + 1 || (size_t)(line + llen - (sp2 + 1)) < 7 ||
        strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        *why = "malformed request line\n";
        return 400;
    }
    size_t mlen = (size_t)(sp1 - line);
    ret->head = mlen == 4 && memcmp(line, "HEAD", 4) == 0;
    ret->post = mlen == 4 && memcmp(line, "POST", 4) == 0;
    if (!ret->head && !ret->post && !(mlen == 3 && memcmp(line, "GET", 3) == 0)) {
        *why = "only GET, HEAD and POST are served\n";
        return 405;
    }
    char *path = sp1 + 1;
    size_t plen = (size_t)(sp2 - path);
    char *q = memchr(path, '?', plen);
    if (q) {
        plen = (size_t)(q - path);
    }
    if (plen == 0 || path[0] != '/') {
        *why = "the request target must be an absolute path\n";
        return 400;
    }
    long dlen = percent_decode(path, plen);
    if (dlen < 0) {
        *why = "bad percent-encoding in the path\n";
        return 400;
    }
    ret->path = path;
    ret->path_len = (size_t)dlen;
    ret->host = header(in, end, "host", &ret->host_len);
    ret->origin = header(in, end, "origin", &ret->origin_len);
    size_t sl = 0;
    const char *site = header(in, end, "sec-fetch-site", &sl);
    ret->cross_site = site && ((sl == 10 && strncasecmp(site, "cross-site", 10) == 0) ||
                               (sl == 9 && strncasecmp(site, "same-site", 9) == 0));
    return 0;
}

/* Whether s[0..n) is an address of family (AF_INET, AF_INET6). */
static bool is_ip(int family, const char *s, size_t n) {
    char buf[INET6_ADDRSTRLEN];
    unsigned char a[sizeof(struct in6_addr)];
    if (n == 0 || n >= sizeof(buf)) {
        return false;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(family, buf, a) == 1;
}

bool ch_http_host_allowed(const char *host, size_t len, const char *names) {
    if (!host || len == 0) {
        return false;
    }
    size_t n = len; /* the name without its port */
    if (host[0] == '[') {
        const char *close_br = memchr(host, ']', len);
        return close_br && is_ip(AF_INET6, host + 1, (size_t)(close_br - host - 1)) &&
               (close_br + 1 == host + len || close_br[1] == ':');
    }
    const char *colon = memchr(host, ':', len);
    if (colon) {
        n = (size_t)(colon - host);
    }
    if (n && host[n - 1] == '.') {
        n--; /* a fully qualified name's final dot */
    }
    if (is_ip(AF_INET, host, n) || (n == 9 && strncasecmp(host, "localhost", 9) == 0)) {
        return true;
    }
    for (const char *p = names; p && *p;) {
        size_t m = strcspn(p, ",");
        const char *q = p;
        while (m && *q == ' ') {
            q++;
            m--;
        }
        size_t k = m;
        while (k && q[k - 1] == ' ') {
            k--;
        }
        if (k && k == n && strncasecmp(q, host, n) == 0) {
            return true;
        }
        p += strcspn(p, ",");
        p += *p == ',';
    }
    return false;
}

int ch_http_check(const ch_http_request_t *req, const char *names, const char **why) {
    if (!req->host) {
        *why = "a Host header is required\n";
        return 400;
    }
    if (!ch_http_host_allowed(req->host, req->host_len, names)) {
        *why = "this server does not answer to that Host (an IP address, localhost, or a "
               "name in http.allowed_hosts)\n";
        return 421;
    }
    if (req->post) {
        const char *o = req->origin;
        size_t ol = req->origin_len;
        const char *scheme = o ? memmem(o, ol, "://", 3) : NULL;
        if (o && !(ol == 4 && memcmp(o, "null", 4) == 0) && scheme) {
            const char *oh = scheme + 3;
            size_t ohl = ol - (size_t)(oh - o);
            if (!ch_http_host_allowed(oh, ohl, names)) {
                *why = "cross-origin requests may not change state\n";
                return 403;
            }
        } else if (o) {
            *why = "cross-origin requests may not change state\n";
            return 403;
        }
        if (req->cross_site) {
            *why = "cross-site requests may not change state\n";
            return 403;
        }
    }
    return 0;
}

long ch_http_head_end(const char *in, size_t len, size_t from) {
    for (size_t i = from; i + 1 < len; i++) {
        if (in[i] == '\n' &&
            (in[i + 1] == '\n' || (in[i + 1] == '\r' && i + 2 < len && in[i + 2] == '\n'))) {
            return (long)(i + 1);
        }
    }
    return -1;
}

/* The head is complete in c->in[0..end): parse the request line and answer. */
static void conn_serve(conn_t *c, size_t end) {
    ch_http_t *h = c->srv;
    ch_http_request_t req;
    const char *why = NULL;
    int status = ch_http_parse(c->in, end, &req, &why);
    status = status ? status : ch_http_check(&req, h->allowed, &why);
    if (status) {
        reply_text(c, status, why, false);
        return;
    }
    h->body.len = 0;
    ch_http_reply_t rep = {404, "text/plain; charset=utf-8", &h->body, NULL, NULL, NULL, NULL};
    h->handler(h->opaque, &req, &rep);
    c->more = rep.more;
    c->end = rep.end;
    c->ctx = rep.ctx;
    if (req.head) {
        stream_end(c); /* HEAD: the status line and headers only */
    }
    conn_reply(c, rep.status, rep.content_type, h->body.data, h->body.len, req.head, rep.allow);
}

static void on_conn_io(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    conn_t *c = (conn_t *)((char *)w - offsetof(conn_t, io));
    if (revents & EV_WRITE) {
        conn_flush(c);
        return;
    }
    if (c->lingering) {
        ssize_t n = drain(c->fd, SIZE_MAX);
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            conn_close(c);
        }
        return;
    }
    for (;;) {
        if (c->in_len == sizeof(c->in)) {
            reply_text(c, 431, "request head larger than 8 KiB\n", false);
            return;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, MSG_DONTWAIT);
        if (n == 0) {
            conn_close(c); /* closed before a full request */
            return;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                return;
            }
            conn_close(c);
            return;
        }
        size_t from = c->in_len >= 3 ? c->in_len - 3 : 0;
        c->in_len += (size_t)n;
        long end = ch_http_head_end(c->in, c->in_len, from);
        if (end >= 0) {
            conn_serve(c, (size_t)end);
            return;
        }
    }
}

static void on_conn_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    conn_t *c = (conn_t *)((char *)w - offsetof(conn_t, timer));
    conn_close(c);
}

/* Past every budget: a best-effort 503, with what has arrived read first (closing
 * with unread input resets the connection), then closed at once. */
static void refuse_now(int fd) {
    static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: "
                               "0\r\nConnection: close\r\n\r\n";
    drain(fd, 16);
    ssize_t sent = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)sent;
    shutdown(fd, SHUT_WR);
    close(fd);
}

/* At capacity: close a connection so the new one gets its slot: the oldest still waiting
 * for its request head; else the oldest already answered (its answer is with the kernel;
 * it only waits for its client to close); else the oldest whose answer its client has
 * not taken for STALLED_S (a client that sends requests and never reads).
 * @returns false if every connection is answering, and recently. */
static bool evict_waiting(ch_http_t *h) {
    double now = ev_now(h->loop);
    for (int pass = 0; pass < 3; pass++) {
        for (conn_t *c = h->oldest; c; c = c->prev) {
            bool go = pass == 0   ? !c->answering
                      : pass == 1 ? c->lingering
                                  : c->answering && now - c->answered_s >= STALLED_S;
            if (go) {
                conn_close(c);
                h->evicted++;
                return true;
            }
        }
    }
    return false;
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    ch_http_t *h = w->data;
    /* A quarter of the slots per loop iteration at most: a connection accepted here
     * has its request read in the next iteration before newer ones could evict it. */
    size_t batch = h->max_conns / 4 < 1 ? 1 : h->max_conns / 4 > 64 ? 64 : h->max_conns / 4;
    for (size_t i = 0; i < batch; i++) {
        int fd = accept4(h->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return; /* EAGAIN, or a transient error (EMFILE, ECONNABORTED): retry later */
        }
        bool busy = h->n_conns >= h->max_conns && !evict_waiting(h);
        conn_t *c = h->n_conns < h->max_conns + REFUSALS_MAX ? malloc(sizeof(*c)) : NULL;
        if (!c) {
            refuse_now(fd);
            continue;
        }
        c->srv = h;
        c->fd = fd;
        c->in_len = 0;
        c->out_off = 0;
        c->answering = false;
        c->answered_s = 0;
        c->more = NULL;
        c->end = NULL;
        c->ctx = NULL;
        c->lingering = false;
        ch_buf_init(&c->out);
        c->prev = NULL;
        c->next = h->conns;
        if (h->conns) {
            h->conns->prev = c;
        } else {
            h->oldest = c;
        }
        h->conns = c;
        h->n_conns++;
        ev_io_init(&c->io, on_conn_io, fd, EV_READ);
        ev_timer_init(&c->timer, on_conn_timeout, HEAD_TIMEOUT_S, 0);
        ev_io_start(loop, &c->io);
        ev_timer_start(loop, &c->timer);
        if (busy) {
            reply_text(c, 503, "too many connections\n", false);
        } else {
            ev_feed_event(loop, &c->io, EV_READ); /* a prober's request is usually here
                                                    already: read it in this iteration */
        }
    }
}

int ch_http_split_address(const char *address, char *host, size_t hlen, char *port,
                          size_t plen) {
    const char *colon;
    const char *h0 = address;
    size_t hn;
    if (address[0] == '[') {
        const char *close_br = strchr(address, ']');
        if (!close_br || close_br[1] != ':') {
            return -EINVAL;
        }
        h0 = address + 1;
        hn = (size_t)(close_br - h0);
        colon = close_br + 1;
    } else {
        colon = strrchr(address, ':');
        if (!colon || strchr(address, ':') != colon) {
            return -EINVAL;
        }
        hn = (size_t)(colon - address);
    }
    if (hn == 0 || hn >= hlen || strlen(colon + 1) == 0 || strlen(colon + 1) >= plen) {
        return -EINVAL;
    }
    memcpy(host, h0, hn);
    host[hn] = '\0';
    snprintf(port, plen, "%s", colon + 1);
    char *end = NULL;
    long p = strtol(port, &end, 10);
    return *end || p < 0 || p > 65535 ? -EINVAL : 0;
}

int ch_http_new(struct ev_loop *loop, const char *address, size_t max_conns,
                ch_http_handler_fn *handler, void *opaque, ch_http_t **ret_http, char *errbuf,
                size_t errlen) {
    char host[64], port[16];
    if (ch_http_split_address(address, host, sizeof(host), port, sizeof(port)) < 0) {
        return fail(errbuf, errlen, -EINVAL,
                    "http.listen: expected HOST:PORT (e.g. 127.0.0.1:9180, [::1]:9180) or off, "
                    "got '%s'",
                    address);
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int gr = getaddrinfo(host, port, &hints, &ai);
    if (gr != 0) {
        return fail(errbuf, errlen, -EINVAL, "http.listen: %s: %s", address, gai_strerror(gr));
    }
    ch_http_t *h = calloc(1, sizeof(*h));
    if (!h) {
        freeaddrinfo(ai);
        return -ENOMEM;
    }
    h->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1, r = 0;
    if (h->fd < 0 || setsockopt(h->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        bind(h->fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(h->fd, 1024) < 0) {
        int e = errno;
        r = fail(errbuf, errlen, e == EADDRINUSE || e == EACCES ? -e : -EIO,
                 "http.listen: cannot listen on %s: %s", address, strerror(e));
    }
    freeaddrinfo(ai);
    if (r < 0) {
        if (h->fd >= 0) {
            close(h->fd);
        }
        free(h);
        return r;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char numhost[64] = "?", numport[16] = "?";
    if (getsockname(h->fd, (struct sockaddr *)&ss, &sl) == 0) {
        getnameinfo((struct sockaddr *)&ss, sl, numhost, sizeof(numhost), numport,
                    sizeof(numport), NI_NUMERICHOST | NI_NUMERICSERV);
    }
    snprintf(h->address, sizeof(h->address), ss.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s",
             numhost, numport);
    h->loop = loop;
    h->handler = handler;
    h->opaque = opaque;
    h->max_conns = max_conns;
    ch_buf_init(&h->body);
    ev_io_init(&h->accept_io, on_accept, h->fd, EV_READ);
    h->accept_io.data = h;
    ev_io_start(loop, &h->accept_io);
    *ret_http = h;
    return 0;
}

ch_http_t *ch_http_free(ch_http_t *h) {
    if (!h) {
        return NULL;
    }
    while (h->conns) {
        conn_close(h->conns);
    }
    ev_io_stop(h->loop, &h->accept_io);
    close(h->fd);
    ch_buf_done(&h->body);
    free(h->allowed);
    free(h);
    return NULL;
}

int ch_http_allow_hosts(ch_http_t *h, const char *names) {
    char *copy = names && *names ? strdup(names) : NULL;
    if (names && *names && !copy) {
        return -ENOMEM;
    }
    free(h->allowed);
    h->allowed = copy;
    return 0;
}

const char *ch_http_address(const ch_http_t *h) {
    return h->address;
}

uint64_t ch_http_requests(const ch_http_t *h) {
    return h->requests;
}

uint64_t ch_http_evicted(const ch_http_t *h) { return h->evicted; }
