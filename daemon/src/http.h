/*
 * http.h - a minimal HTTP/1.1 server on the daemon's libev loop, for health,
 * metrics and state inspection. GET, HEAD and POST (without a body), one request per
 * connection.
 */
#ifndef CH_HTTP_H
#define CH_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ch/codec.h"

struct ev_loop;

typedef struct ch_http ch_http_t;

/* A streamed answer's next part: append it to out (emptied before the call), on the loop
 * thread when the previous part has gone to the socket. @returns 1 (more to come), 0 (that
 * was the last), < 0 (give up: the connection is closed). */
typedef int(ch_http_more_fn)(void *ctx, ch_buf_t *out);
/* A streamed answer is over (all sent, or its client gone, or cut): free ctx. */
typedef void(ch_http_end_fn)(void *ctx);

/* An answer: status, content type and body. */
typedef struct ch_http_reply {
    int status;
    const char *content_type;
    ch_buf_t *body; /* filled by the handler (emptied before the call) */
    const char *allow; /* with 405: the Allow header's methods (NULL: "GET, HEAD") */
    /* streamed: body is the first part, more() gives the rest (no Content-Length; the
     * end of the body is the end of the connection); end(ctx) is always called */
    ch_http_more_fn *more;
    ch_http_end_fn *end;
    void *ctx;
} ch_http_reply_t;

/** A parsed request line (views into the head). */
typedef struct ch_http_request {
    bool head;  /* HEAD */
    bool post;  /* POST; neither: GET */
    char *path; /* percent-decoded, starts with '/', without the query */
    size_t path_len;
    const char *host; /* the Host header's value (NULL: none) */
    size_t host_len;
    const char *origin; /* the Origin header's value (NULL: none) */
    size_t origin_len;
    bool cross_site; /* Sec-Fetch-Site: cross-site or same-site (a browser says so) */
} ch_http_request_t;

/*
 * Serves one request (its path without the query string, already percent-decoded;
 * path_len bytes, may contain NUL). Runs on the loop thread.
 */
typedef void(ch_http_handler_fn)(void *opaque, const ch_http_request_t *req,
                                 ch_http_reply_t *reply);

/**
 * @brief Split "HOST:PORT" or "[V6]:PORT" (port 0..65535) into host and port text.
 * @returns 0, -EINVAL (not of that form, or a part does not fit its buffer).
 */
int ch_http_split_address(const char *address, char *host, size_t hlen, char *port,
                          size_t plen);

/**
 * @brief Listen on "HOST:PORT" ("[v6]:PORT" for IPv6; port 0 picks a free port).
 * @param max_conns connections served at once; a further one takes the slot of the
 *        oldest still waiting for its request (or is answered 503 if none is).
 * @returns 0, -EINVAL (unparsable address; errbuf says why), -EADDRINUSE, -EACCES,
 *          -EIO (other socket errors), -ENOMEM.
 */
int ch_http_new(struct ev_loop *loop, const char *address, size_t max_conns,
                ch_http_handler_fn *handler, void *opaque, ch_http_t **ret_http, char *errbuf,
                size_t errlen);

/** @brief Host names (comma-separated) accepted in Host and Origin besides IP literals and
 *  localhost (http.allowed_hosts); copied. @returns 0, -ENOMEM. */
int ch_http_allow_hosts(ch_http_t *h, const char *names);

/** @brief Close the listener and every connection. Accepts NULL. @returns NULL. */
ch_http_t *ch_http_free(ch_http_t *h);

/** @brief The address actually bound, "HOST:PORT". */
const char *ch_http_address(const ch_http_t *h);

/**
 * @brief Parse the request line of a complete head in[0..end), decoding the path in
 *        place, and find its Host, Origin and Sec-Fetch-Site headers.
 * @returns 0, or the HTTP status to answer (400, 405) with *why its text.
 */
int ch_http_parse(char *in, size_t end, ch_http_request_t *ret, const char **why);

/**
 * @brief Whether a Host (host[:port]) names this server: an IP literal (v4, or [v6]),
 *        localhost, or one of names (comma-separated host names, may be NULL). A browser
 *        sends the name it resolved: refusing other names defeats DNS rebinding.
 */
bool ch_http_host_allowed(const char *host, size_t len, const char *names);

/**
 * @brief Whether a request may be served: its Host is allowed (ch_http_host_allowed;
 *        HTTP/1.1 requires one), and a POST comes from no browser page of another site
 *        (no Origin, or an Origin whose host is allowed; not Sec-Fetch-Site cross-site).
 * @returns 0, or the HTTP status to answer (400, 403, 421) with *why its text.
 */
int ch_http_check(const ch_http_request_t *req, const char *names, const char **why);

/** @brief Where the head in in[0..len) ends (just past the first newline of its blank
 *  line), scanning from from; -1 while incomplete. */
long ch_http_head_end(const char *in, size_t len, size_t from);

/** @brief Requests answered so far. */
uint64_t ch_http_requests(const ch_http_t *h);

/** @brief Connections closed before their request arrived, to give their slot to a
 *  newer one. */
uint64_t ch_http_evicted(const ch_http_t *h);

#endif
