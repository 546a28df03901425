/*
 * ch/registry.h - a Confluent Schema Registry client: writer schemas fetched by id
 * without blocking the caller's loop, and output schemas registered at start-up.
 *
 * REST endpoints used (the registry's documented API, v1 content type):
 *   GET  /schemas/ids/{id}               -> {"schema": "<Avro JSON>"}
 *   POST /subjects/{subject}/versions    {"schema": "<Avro JSON>"} -> {"id": N}
 * HTTP(S) is libcurl's, through its multi interface: the caller's loop watches the
 * sockets and the one timer the hooks ask for and hands their events back, so a fetch
 * never blocks it (the Kafka-style "bring your own loop" shape, without libev here).
 *
 * @locality Not thread-safe: one loop thread calls everything; hooks and results are
 *           called from ch_registry_fetch(), ch_registry_socket() and
 *           ch_registry_timeout() only.
 */
#ifndef CH_REGISTRY_H
#define CH_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ch_registry ch_registry_t;

typedef struct ch_registry_opts {
    const char *url;      /* http:// or https://host[:port][/prefix] */
    const char *username; /* NULL or "": no authentication; else HTTP basic */
    const char *password;
    const char *ca_file;   /* NULL or "": the system's CAs */
    const char *cert_file; /* client certificate (PEM) for mutual TLS; NULL or "": none */
    const char *key_file;  /* its private key (PEM) */
    long timeout_ms;       /* per request, > 0 */
} ch_registry_opts_t;

/* The outcome of a fetch. */
typedef struct ch_registry_result {
    int32_t id;
    int err;            /* 0; -ENOENT: the registry has no schema of that id; -EPROTO: not
                           an Avro schema; -EACCES: credentials refused (HTTP 401/403);
                           -EBADMSG: an answer that is not the registry's; -EIO: no answer
                           (unreachable, timeout, TLS) or another HTTP status */
    long http_status;   /* 0: no HTTP answer */
    const char *schema; /* err 0: the schema's JSON, schema_len bytes, valid during the call */
    size_t schema_len;
    const char *message; /* err != 0: why, for a log line (never holds credentials) */
} ch_registry_result_t;

typedef struct ch_registry_hooks {
    /* Watch fd for readability and/or writability (both false: stop watching it). */
    void (*watch)(void *opaque, int fd, bool read, bool write);
    /* Call ch_registry_timeout() in timeout_ms (0: soon, from the loop; -1: cancel). */
    void (*timer)(void *opaque, long timeout_ms);
    /* A fetch finished. */
    void (*done)(void *opaque, const ch_registry_result_t *r);
    void *opaque;
} ch_registry_hooks_t;

/**
 * @brief Create a client.
 * @returns 0, -EINVAL (a URL that is not http(s), a missing file; errbuf says which),
 *          -ENOMEM, -EIO (libcurl could not start).
 */
int ch_registry_new(const ch_registry_opts_t *o, const ch_registry_hooks_t *h,
                    ch_registry_t **ret_registry, char *errbuf, size_t errlen);

/**
 * @brief url with the password of its userinfo (scheme://user:password@host...)
 *        replaced by ***, for every place a URL is shown; other URLs are copied.
 * @remark out is always terminated (cut to len - 1 bytes).
 */
void ch_registry_redact_url(const char *url, char *out, size_t len);

/** @brief Free, abandoning fetches in flight (no result is reported). Accepts NULL.
 *  @returns NULL. */
ch_registry_t *ch_registry_free(ch_registry_t *r);

/**
 * @brief Start fetching the schema registered under id; its result comes through the
 *        done hook later, never from within this call.
 * @returns 0, -EALREADY (a fetch of id is in flight), -ENOMEM, -EIO.
 */
int ch_registry_fetch(ch_registry_t *r, int32_t id);

/** @brief A watched fd is ready (as the watch hook asked). */
void ch_registry_socket(ch_registry_t *r, int fd, bool readable, bool writable);

/** @brief The timer the timer hook asked for has expired. */
void ch_registry_timeout(ch_registry_t *r);

/** @brief Fetches in flight. */
size_t ch_registry_in_flight(const ch_registry_t *r);

/**
 * @brief Register a schema under subject (e.g. "<topic>-value"), or find it registered,
 *        and learn its id. Blocks up to the request timeout: for start-up.
 * @returns 0 and *ret_id; -EACCES, -EIO, -EBADMSG as for a fetch; -EINVAL (the registry
 *          refused the schema: incompatible or invalid); errbuf says why.
 */
int ch_registry_register(ch_registry_t *r, const char *subject, const char *schema, size_t len,
                         int32_t *ret_id, char *errbuf, size_t errlen);

#endif
