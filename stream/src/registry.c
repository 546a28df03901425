/*
 * registry.c - Confluent Schema Registry client on libcurl (ch/registry.h).
 *
 * Design notes
 * - Fetches run on one curl multi handle driven by the caller's loop through the
 *   socket and timer hooks (curl_multi_socket_action); a finished transfer is read
 *   with curl_multi_info_read right after the action that finished it, and reported
 *   through the done hook, so results never arrive from inside ch_registry_fetch().
 * - One transfer per id at most (-EALREADY): the caller may have many partitions
 *   waiting for the same schema, the registry is asked once.
 * - Answers are capped at MAX_BODY bytes (a schema is at most 1 MiB elsewhere too)
 *   and parsed with jansson; HTTP status and the registry's error_code decide the
 *   outcome: 404 (40403) no such schema, 401/403 credentials, anything else retriable.
 * - Credentials go to libcurl only (CURLOPT_USERNAME/PASSWORD); messages built here
 *   name the URL and status, never them.
 * - Registration (start-up) uses its own easy handle and blocks: nothing is flowing
 *   yet, and the daemon cannot frame its outputs without the ids.
 */
#include "ch/registry.h"
#include "errbuf.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_BODY ((size_t)1 << 21)
#define MAX_URL 2048

typedef struct request {
    struct request *next;
    ch_registry_t *reg;
    CURL *easy;
    int32_t id;
    char *body;
    size_t len, cap;
    bool too_big;
    char curl_err[CURL_ERROR_SIZE];
} request_t;

struct ch_registry {
    ch_registry_opts_t o; /* strings point into the copies below */
    char *url, *username, *password, *ca_file, *cert_file, *key_file;
    char *shown; /* url as messages show it: a password in it replaced by *** */
    ch_registry_hooks_t h;
    CURLM *multi;
    struct curl_slist *headers;
    request_t *reqs; /* in flight */
    size_t n_reqs;
};

static size_t on_body(char *data, size_t size, size_t n, void *userp) {
    request_t *q = userp;
    size_t len = size * n;
    if (q->len + len > MAX_BODY) {
        q->too_big = true;
        return 0; /* aborts the transfer */
    }
    if (q->len + len + 1 > q->cap) {
        size_t cap = q->cap ? q->cap : 4096;
        while (cap < q->len + len + 1) {
            cap *= 2;
        }
        char *nb = realloc(q->body, cap);
        if (!nb) {
            return 0;
        }
        q->body = nb;
        q->cap = cap;
    }
    memcpy(q->body + q->len, data, len);
    q->len += len;
    q->body[q->len] = '\0';
    return len;
}

/* The options every request shares. */
static int setup(ch_registry_t *r, CURL *e, request_t *q, const char *url) {
    CURLcode c = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (c == CURLE_OK) {                                                                           \
        c = curl_easy_setopt(e, opt, val);                                                         \
    }
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_TIMEOUT_MS, r->o.timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, r->o.timeout_ms);
    SET(CURLOPT_HTTPHEADER, r->headers);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, q);
    SET(CURLOPT_PRIVATE, q);
    SET(CURLOPT_ERRORBUFFER, q->curl_err);
    if (r->username) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERNAME, r->username);
        SET(CURLOPT_PASSWORD, r->password ? r->password : "");
    }
    if (r->ca_file) {
        SET(CURLOPT_CAINFO, r->ca_file);
    }
    if (r->cert_file) {
        SET(CURLOPT_SSLCERT, r->cert_file);
    }
    if (r->key_file) {
        SET(CURLOPT_SSLKEY, r->key_file);
    }
#undef SET
    return c == CURLE_OK ? 0 : -EIO;
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp) {
    (void)e;
    (void)socketp;
    ch_registry_t *r = userp;
    bool rd = what == CURL_POLL_IN || what == CURL_POLL_INOUT;
    bool wr = what == CURL_POLL_OUT || what == CURL_POLL_INOUT;
    r->h.watch(r->h.opaque, (int)s, rd, wr); /* CURL_POLL_REMOVE: neither */
    return 0;
}

static int on_timer(CURLM *m, long timeout_ms, void *userp) {
    (void)m;
    ch_registry_t *r = userp;
    r->h.timer(r->h.opaque, timeout_ms);
    return 0;
}

static char *dup_opt(const char *s, bool *oom) {
    if (!s || !*s) {
        return NULL;
    }
    char *d = strdup(s);
    *oom |= !d;
    return d;
}

static bool readable(const char *path) { return !path || access(path, R_OK) == 0; }

void ch_registry_redact_url(const char *url, char *out, size_t len) {
    if (len == 0) {
        return;
    }
    const char *auth = strstr(url, "://");
    auth = auth ? auth + 3 : url;
    size_t host = strcspn(auth, "/?#"); /* the authority: [userinfo@]host[:port] */
    const char *at = NULL; /* the last '@' of the authority ends the userinfo */
    for (size_t i = 0; i < host; i++) {
        at = auth[i] == '@' ? auth + i : at;
    }
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (!colon) {
        snprintf(out, len, "%s", url);
        return;
    }
    snprintf(out, len, "%.*s***%s", (int)(colon + 1 - url), url, at);
}

int ch_registry_new(const ch_registry_opts_t *o, const ch_registry_hooks_t *h,
                    ch_registry_t **ret_registry, char *errbuf, size_t errlen) {
    if (!o->url || (strncmp(o->url, "http://", 7) != 0 && strncmp(o->url, "https://", 8) != 0)) {
        char shown[MAX_URL];
        ch_registry_redact_url(o->url ? o->url : "", shown, sizeof(shown));
        return fail(errbuf, errlen, -EINVAL, "schema registry URL '%s' is not http:// or https://",
                    shown);
    }
    if (strlen(o->url) > MAX_URL / 2 || o->timeout_ms <= 0) {
        return fail(errbuf, errlen, -EINVAL, "schema registry URL too long or timeout not > 0");
    }
    const char *files[] = {o->ca_file, o->cert_file, o->key_file};
    for (size_t i = 0; i < 3; i++) {
        if (files[i] && *files[i] && !readable(files[i])) {
            return fail(errbuf, errlen, -EINVAL, "%s: %s", files[i], strerror(errno));
        }
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        return fail(errbuf, errlen, -EIO, "libcurl initialisation failed");
    }
    ch_registry_t *r = calloc(1, sizeof(*r));
    if (!r) {
        return -ENOMEM;
    }
    bool oom = false;
    r->url = dup_opt(o->url, &oom);
    r->shown = malloc(strlen(o->url) + 4);
    oom = oom || !r->shown;
    r->username = dup_opt(o->username, &oom);
    r->password = dup_opt(o->password, &oom);
    r->ca_file = dup_opt(o->ca_file, &oom);
    r->cert_file = dup_opt(o->cert_file, &oom);
    r->key_file = dup_opt(o->key_file, &oom);
    r->o.timeout_ms = o->timeout_ms;
    r->h = *h;
    if (oom) {
        ch_registry_free(r);
        return -ENOMEM;
    }
    for (size_t n = strlen(r->url); n > 0 && r->url[n - 1] == '/'; n--) {
        r->url[n - 1] = '\0';
    }
    ch_registry_redact_url(r->url, r->shown, strlen(o->url) + 4);
    r->headers = curl_slist_append(NULL, "Accept: application/vnd.schemaregistry.v1+json, "
                                         "application/vnd.schemaregistry+json, application/json");
    struct curl_slist *ct =
        r->headers ? curl_slist_append(r->headers, "Content-Type: "
                                                   "application/vnd.schemaregistry.v1+json")
                   : NULL;
    if (!ct || !(r->multi = curl_multi_init())) {
        ch_registry_free(r);
        return -ENOMEM;
    }
    r->headers = ct;
    curl_multi_setopt(r->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(r->multi, CURLMOPT_SOCKETDATA, r);
    curl_multi_setopt(r->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(r->multi, CURLMOPT_TIMERDATA, r);
    *ret_registry = r;
    return 0;
}

static void request_free(request_t *q) {
    if (q->easy) {
        curl_easy_cleanup(q->easy);
    }
    free(q->body);
    free(q);
}

/* Unlink q from the in-flight list (it stays allocated). */
static void unlink_request(ch_registry_t *r, request_t *q) {
    for (request_t **pp = &r->reqs; *pp; pp = &(*pp)->next) {
        if (*pp == q) {
            *pp = q->next;
            r->n_reqs--;
            break;
        }
    }
    curl_multi_remove_handle(r->multi, q->easy);
}

ch_registry_t *ch_registry_free(ch_registry_t *r) {
    if (!r) {
        return NULL;
    }
    while (r->reqs) {
        request_t *q = r->reqs;
        unlink_request(r, q);
        request_free(q);
    }
    if (r->multi) {
        curl_multi_cleanup(r->multi);
    }
    curl_slist_free_all(r->headers);
    free(r->url);
    free(r->shown);
    free(r->username);
    if (r->password) {
        explicit_bzero(r->password, strlen(r->password));
    }
    free(r->password);
    free(r->ca_file);
    free(r->cert_file);
    free(r->key_file);
    free(r);
    return NULL;
}

size_t ch_registry_in_flight(const ch_registry_t *r) { return r->n_reqs; }

int ch_registry_fetch(ch_registry_t *r, int32_t id) {
    for (request_t *q = r->reqs; q; q = q->next) {
        if (q->id == id) {
            return -EALREADY;
        }
    }
    request_t *q = calloc(1, sizeof(*q));
    if (!q || !(q->easy = curl_easy_init())) {
        free(q);
        return -ENOMEM;
    }
    q->reg = r;
    q->id = id;
    char url[MAX_URL];
    snprintf(url, sizeof(url), "%s/schemas/ids/%d", r->url, (int)id);
    if (setup(r, q->easy, q, url) < 0 || curl_multi_add_handle(r->multi, q->easy) != CURLM_OK) {
        request_free(q);
        return -EIO;
    }
    q->next = r->reqs;
    r->reqs = q;
    r->n_reqs++;
    return 0;
}

/* The registry's own explanation in an error answer, if any. */
static void error_message(const char *body, size_t len, char *out, size_t outlen) {
    out[0] = '\0';
    json_t *j = body ? json_loadb(body, len, 0, NULL) : NULL;
    const char *m = j ? json_string_value(json_object_get(j, "message")) : NULL;
    if (m) {
        snprintf(out, outlen, ": %.200s", m);
    }
    json_decref(j);
}

/* Turn a finished transfer into an outcome: err and message; on success *ret_json is
 * the parsed answer (the caller decrefs). */
static int outcome(request_t *q, CURLcode cc, long status, json_t **ret_json, char *msg,
                   size_t msglen, const char *what) {
    char detail[256];
    *ret_json = NULL;
    if (cc != CURLE_OK) {
        snprintf(msg, msglen, "%s: %s", what,
                 q->too_big       ? "answer larger than 2 MiB"
                 : q->curl_err[0] ? q->curl_err
                                  : curl_easy_strerror(cc));
        return q->too_big ? -EBADMSG : -EIO;
    }
    if (status == 401 || status == 403) {
        error_message(q->body, q->len, detail, sizeof(detail));
        snprintf(msg, msglen,
                 "%s: HTTP %ld%s (the registry refused the credentials: check "
                 "schema.registry.username and schema.registry.password_file)",
                 what, status, detail);
        return -EACCES;
    }
    if (status == 404) {
        error_message(q->body, q->len, detail, sizeof(detail));
        snprintf(msg, msglen, "%s: HTTP 404%s", what, detail);
        return -ENOENT;
    }
    if (status == 409 || status == 422) {
        error_message(q->body, q->len, detail, sizeof(detail));
        snprintf(msg, msglen, "%s: HTTP %ld%s", what, status, detail);
        return -EINVAL;
    }
    if (status != 200) {
        error_message(q->body, q->len, detail, sizeof(detail));
        snprintf(msg, msglen, "%s: HTTP %ld%s", what, status, detail);
        return -EIO;
    }
    json_t *j = q->body ? json_loadb(q->body, q->len, 0, NULL) : NULL;
    if (!j || !json_is_object(j)) {
        json_decref(j);
        snprintf(msg, msglen, "%s: the answer is not a JSON object", what);
        return -EBADMSG;
    }
    *ret_json = j;
    return 0;
}

static void report(ch_registry_t *r, request_t *q, CURLcode cc) {
    long status = 0;
    curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
    char what[MAX_URL + 32], msg[MAX_URL + 512];
    snprintf(what, sizeof(what), "GET %s/schemas/ids/%d", r->shown, (int)q->id);
    json_t *j = NULL;
    ch_registry_result_t res = {.id = q->id, .http_status = status, .message = msg};
    res.err = outcome(q, cc, status, &j, msg, sizeof(msg), what);
    if (res.err == 0) {
        const char *type = json_string_value(json_object_get(j, "schemaType"));
        json_t *s = json_object_get(j, "schema");
        if (type && strcmp(type, "AVRO") != 0) {
            snprintf(msg, sizeof(msg), "schema id %d is a %.32s schema; cohortd reads Avro",
                     (int)q->id, type);
            res.err = -EPROTO;
        } else if (!json_is_string(s)) {
            snprintf(msg, sizeof(msg), "%s: the answer has no \"schema\" string", what);
            res.err = -EBADMSG;
        } else {
            res.schema = json_string_value(s);
            res.schema_len = json_string_length(s);
            res.message = NULL;
        }
    }
    r->h.done(r->h.opaque, &res);
    json_decref(j);
}

static void collect(ch_registry_t *r) {
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(r->multi, &left))) {
        if (m->msg != CURLMSG_DONE) {
            continue;
        }
        request_t *q = NULL;
        CURLcode cc = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
        /* unlinked first: the done hook may fetch the same id again */
        unlink_request(r, q);
        report(r, q, cc);
        request_free(q);
    }
}

void ch_registry_socket(ch_registry_t *r, int fd, bool readable_, bool writable) {
    int running = 0;
    int mask = (readable_ ? CURL_CSELECT_IN : 0) | (writable ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(r->multi, (curl_socket_t)fd, mask, &running);
    collect(r);
}

void ch_registry_timeout(ch_registry_t *r) {
    int running = 0;
    curl_multi_socket_action(r->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    collect(r);
}

int ch_registry_register(ch_registry_t *r, const char *subject, const char *schema, size_t len,
                         int32_t *ret_id, char *errbuf, size_t errlen) {
    request_t q = {.reg = r, .id = -1};
    char url[MAX_URL], what[MAX_URL + 32], msg[MAX_URL + 512];
    json_t *req = json_pack("{s:s%}", "schema", schema, len);
    char *post = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    CURL *e = post ? curl_easy_init() : NULL;
    char *esc = e ? curl_easy_escape(e, subject, 0) : NULL;
    if (!esc) {
        if (e) {
            curl_easy_cleanup(e);
        }
        free(post);
        return -ENOMEM;
    }
    snprintf(url, sizeof(url), "%s/subjects/%s/versions", r->url, esc);
    snprintf(what, sizeof(what), "POST %s/subjects/%s/versions", r->shown, esc);
    curl_free(esc);
    q.easy = e;
    int err = setup(r, e, &q, url);
    if (err == 0 && curl_easy_setopt(e, CURLOPT_POSTFIELDS, post) != CURLE_OK) {
        err = -EIO;
    }
    if (err < 0) {
        err = fail(errbuf, errlen, err, "%s: libcurl refused an option", what);
    } else {
        CURLcode cc = curl_easy_perform(e);
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        json_t *j = NULL;
        err = outcome(&q, cc, status, &j, msg, sizeof(msg), what);
        json_t *id = j ? json_object_get(j, "id") : NULL;
        if (err == 0 && (!json_is_integer(id) || json_integer_value(id) < 0 ||
                         json_integer_value(id) > INT32_MAX)) {
            snprintf(msg, sizeof(msg), "%s: the answer has no schema \"id\"", what);
            err = -EBADMSG;
        }
        if (err == 0) {
            *ret_id = (int32_t)json_integer_value(id);
        } else {
            fail(errbuf, errlen, err, "%s", msg);
        }
        json_decref(j);
    }
    curl_easy_cleanup(e);
    free(q.body);
    free(post);
    return err;
}
