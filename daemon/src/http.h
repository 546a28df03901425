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

/* An answer: status, content type and body. */
typedef struct ch_http_reply {
    int status;
    const char *content_type;
    ch_buf_t *body; /* filled by the handler (emptied before the call) */
    const char *allow; /* with 405: the Allow header's methods (NULL: "GET, HEAD") */
} ch_http_reply_t;

/** A parsed request line (views into the head). */
typedef struct ch_http_request {
    bool head;  /* HEAD */
    bool post;  /* POST; neither: GET */
    char *path; /* percent-decoded, starts with '/', without the query */
    size_t path_len;
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

/** @brief Close the listener and every connection. Accepts NULL. @returns NULL. */
ch_http_t *ch_http_free(ch_http_t *h);

/** @brief The address actually bound, "HOST:PORT". */
const char *ch_http_address(const ch_http_t *h);

/**
 * @brief Parse the request line of a complete head in[0..end), decoding the path in
 *        place.
 * @returns 0, or the HTTP status to answer (400, 405) with *why its text.
 */
int ch_http_parse(char *in, size_t end, ch_http_request_t *ret, const char **why);

/** @brief Where the head in in[0..len) ends (just past the first newline of its blank
 *  line), scanning from from; -1 while incomplete. */
long ch_http_head_end(const char *in, size_t len, size_t from);

/** @brief Requests answered so far. */
uint64_t ch_http_requests(const ch_http_t *h);

/** @brief Connections closed before their request arrived, to give their slot to a
 *  newer one. */
uint64_t ch_http_evicted(const ch_http_t *h);

#endif
