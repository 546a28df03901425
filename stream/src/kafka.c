/*
 * kafka.c - librdkafka consumer/producer behind a pollable fd.
 *
 * Design notes
 * - Wake-up: rd_kafka_queue_io_event_enable() writes a byte to a non-blocking
 *   pipe when a queue becomes non-empty. The caller polls the read end; drain
 *   and poll empty the pipe first and then serve the queue without blocking,
 *   so a wake-up is never lost: anything enqueued after the pipe was emptied
 *   writes a new byte.
 * - The consumer's main queue is forwarded to its consumer queue
 *   (rd_kafka_poll_set_consumer), so rebalances, errors and logs are all
 *   served by drain() on the loop thread.
 * - Rebalances support both protocols: eager (assign/unassign) and
 *   cooperative (incremental). The revoke hook runs before partitions are
 *   given up so the caller can flush outputs and commit their offsets.
 * - Messages handed out by drain() are owned here and destroyed at the next
 *   drain (or close), so the caller sees borrowed views.
 */
#include "ch/kafka.h"
#include "errbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 65536


const char *ch_kafka_version(void) {
    return rd_kafka_version_str();
}

/* The opaque of every rd_kafka_t handle. */
typedef struct handle_ctx {
    void (*log)(void *opaque, int level, const char *facility, const char *msg);
    void (*error)(void *opaque, bool fatal, const char *reason);
    void *log_opaque;
    void *owner; /* the ch_consumer_t or ch_producer_t */
} handle_ctx_t;

static void log_trampoline(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    const handle_ctx_t *hc = rd_kafka_opaque(rk);
    if (hc && hc->log) {
        hc->log(hc->log_opaque, level, fac, buf);
    }
}

/* Client-level errors (all brokers down, authentication, fatal idempotence errors).
 * Served from poll/drain on the caller's thread. */
static void error_trampoline(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    const handle_ctx_t *hc = opaque;
    bool fatal = err == RD_KAFKA_RESP_ERR__FATAL;
    char buf[512];
    if (fatal) {
        char why[256];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
        snprintf(buf, sizeof(buf), "fatal: %s: %s", rd_kafka_err2name(orig), why);
    } else {
        snprintf(buf, sizeof(buf), "%s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
    }
    if (hc && hc->error) {
        hc->error(hc->log_opaque, fatal, buf);
    } else if (hc && hc->log) {
        hc->log(hc->log_opaque, 3, "ERROR", buf);
    }
}

static rd_kafka_conf_t *build_conf(const ch_kafka_conf_t *in, handle_ctx_t *hc, char *errbuf,
                                   size_t errlen) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    for (size_t i = 0; i < in->n; i++) {
        if (rd_kafka_conf_set(conf, in->keys[i], in->values[i], err, sizeof(err)) !=
            RD_KAFKA_CONF_OK) {
            fail(errbuf, errlen, 0, "kafka.%s: %s", in->keys[i], err);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    hc->log = in->log;
    hc->error = in->error;
    hc->log_opaque = in->log_opaque;
    rd_kafka_conf_set_opaque(conf, hc);
    rd_kafka_conf_set_log_cb(conf, log_trampoline);
    rd_kafka_conf_set_error_cb(conf, error_trampoline);
    return conf;
}

static int make_pipe(int fds[2]) {
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        fds[0] = fds[1] = -1;
        return -errno;
    }
    return 0;
}

static void close_pipe(int fds[2]) {
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
            fds[i] = -1;
        }
    }
}

static void empty_pipe(int fd) {
    char buf[256];
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
}

/* ---------------------------------------------------------------- consumer */

struct ch_consumer {
    handle_ctx_t ctx;
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue;
    int pipe[2];
    char *topic;
    ch_rebalance_hooks_t hooks;
    rd_kafka_message_t **held;
    size_t n_held;
    size_t n_assigned;
    bool closed;
    bool close_timed_out;
    bool reset_latest;   /* auto.offset.reset = latest/end/largest */
    int64_t *start;      /* per partition: where consumption began on assignment, -1 unknown */
    size_t n_start;
};

/* Where each newly assigned partition starts: its committed offset, or where
 * auto.offset.reset puts a group without one. Lag is measured from here until a
 * message is consumed. Two bounded broker round trips, on assignment only. */
static void record_start(ch_consumer_t *c, const rd_kafka_topic_partition_list_t *parts) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_copy(parts);
    rd_kafka_resp_err_t re = rd_kafka_committed(c->rk, l, 2000);
    for (int i = 0; i < l->cnt; i++) {
        rd_kafka_topic_partition_t *e = &l->elems[i];
        if (strcmp(e->topic, c->topic) != 0 || e->partition < 0) {
            continue;
        }
        if ((size_t)e->partition >= c->n_start) {
            size_t cap = (size_t)e->partition + 64;
            int64_t *ns = realloc(c->start, cap * sizeof(*ns));
            if (!ns) {
                break;
            }
            for (size_t j = c->n_start; j < cap; j++) {
                ns[j] = -1;
            }
            c->start = ns;
            c->n_start = cap;
        }
        int64_t start = re || e->err ? -1 : e->offset;
        int64_t lo = -1, hi = -1;
        if (!re && !e->err && start < 0 &&
            rd_kafka_query_watermark_offsets(c->rk, c->topic, e->partition, &lo, &hi, 2000) ==
                RD_KAFKA_RESP_ERR_NO_ERROR) {
            start = c->reset_latest ? hi : lo;
        }
        c->start[e->partition] = start;
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void call_hook(ch_consumer_t *c, const rd_kafka_topic_partition_list_t *parts,
                      bool revoke, bool lost) {
    int32_t stack[256];
    int32_t *ps = stack;
    if (parts->cnt > 256) {
        ps = malloc((size_t)parts->cnt * sizeof(*ps));
        if (!ps) {
            return;
        }
    }
    size_t n = 0;
    for (int i = 0; i < parts->cnt; i++) {
        if (strcmp(parts->elems[i].topic, c->topic) == 0) {
            ps[n++] = parts->elems[i].partition;
        }
    }
    if (revoke && c->hooks.on_revoke) {
        c->hooks.on_revoke(c->hooks.opaque, ps, n, lost);
    } else if (!revoke && c->hooks.on_assign) {
        c->hooks.on_assign(c->hooks.opaque, ps, n);
    }
    if (ps != stack) {
        free(ps);
    }
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
    handle_ctx_t *hc = opaque;
    ch_consumer_t *c = hc->owner;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    char msg[256];
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_error_t *e = NULL;
        rd_kafka_resp_err_t re = RD_KAFKA_RESP_ERR_NO_ERROR;
        if (cooperative) {
            e = rd_kafka_incremental_assign(rk, parts);
        } else {
            re = rd_kafka_assign(rk, parts);
        }
        if (e || re) {
            snprintf(msg, sizeof(msg), "assign failed: %s",
                     e ? rd_kafka_error_string(e) : rd_kafka_err2str(re));
            log_trampoline(rk, 3, "REBALANCE", msg);
            if (e) {
                rd_kafka_error_destroy(e);
            }
            return;
        }
        c->n_assigned = cooperative ? c->n_assigned + (size_t)parts->cnt : (size_t)parts->cnt;
        record_start(c, parts);
        call_hook(c, parts, false, false);
    } else {
        bool lost = err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS || rd_kafka_assignment_lost(rk);
        call_hook(c, parts, true, lost);
        if (cooperative) {
            rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
            if (e) {
                rd_kafka_error_destroy(e);
            }
            c->n_assigned -= (size_t)parts->cnt < c->n_assigned ? (size_t)parts->cnt
                                                                 : c->n_assigned;
        } else {
            rd_kafka_assign(rk, NULL);
            c->n_assigned = 0;
        }
    }
}

int ch_consumer_new(const ch_kafka_conf_t *conf, const char *topic,
                    const ch_rebalance_hooks_t *hooks, ch_consumer_t **ret_consumer,
                    char *errbuf, size_t errlen) {
    ch_consumer_t *c = calloc(1, sizeof(*c));
    if (!c) {
        return -ENOMEM;
    }
    c->pipe[0] = c->pipe[1] = -1;
    c->ctx.owner = c;
    if (hooks) {
        c->hooks = *hooks;
    }
    c->topic = strdup(topic);
    c->held = calloc(MAX_BATCH, sizeof(*c->held));
    if (!c->topic || !c->held) {
        ch_consumer_free(c);
        return -ENOMEM;
    }
    int r = make_pipe(c->pipe);
    if (r < 0) {
        ch_consumer_free(c);
        return fail(errbuf, errlen, -EIO, "pipe: %s", strerror(-r));
    }
    rd_kafka_conf_t *kc = build_conf(conf, &c->ctx, errbuf, errlen);
    if (!kc) {
        ch_consumer_free(c);
        return -EINVAL;
    }
    rd_kafka_conf_set_rebalance_cb(kc, rebalance_cb);
    char reset[32] = "";
    size_t reset_len = sizeof(reset);
    if (rd_kafka_conf_get(kc, "auto.offset.reset", reset, &reset_len) == RD_KAFKA_CONF_OK) {
        c->reset_latest = strcmp(reset, "latest") == 0 || strcmp(reset, "end") == 0 ||
                          strcmp(reset, "largest") == 0;
    }
    char err[512];
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    if (!c->rk) {
        rd_kafka_conf_destroy(kc);
        ch_consumer_free(c);
        return fail(errbuf, errlen, -EINVAL, "kafka consumer: %s", err);
    }
    rd_kafka_poll_set_consumer(c->rk);
    c->queue = rd_kafka_queue_get_consumer(c->rk);
    rd_kafka_queue_io_event_enable(c->queue, c->pipe[1], "1", 1);

    rd_kafka_topic_partition_list_t *sub = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(sub, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t re = rd_kafka_subscribe(c->rk, sub);
    rd_kafka_topic_partition_list_destroy(sub);
    if (re) {
        ch_consumer_free(c);
        return fail(errbuf, errlen, -EIO, "subscribe to %s: %s", topic, rd_kafka_err2str(re));
    }
    *ret_consumer = c;
    return 0;
}

static void release_held(ch_consumer_t *c) {
    for (size_t i = 0; i < c->n_held; i++) {
        rd_kafka_message_destroy(c->held[i]);
    }
    c->n_held = 0;
}

int ch_consumer_close(ch_consumer_t *c, int timeout_ms, char *errbuf, size_t errlen) {
    if (!c || !c->rk || c->closed) {
        return 0;
    }
    release_held(c);
    c->closed = true;
    /* Close asynchronously and serve the close queue (rebalance hooks run from here)
     * until done or the deadline: with no reachable broker a blocking close could
     * wait for session.timeout.ms or longer. */
    rd_kafka_queue_t *q = rd_kafka_queue_new(c->rk);
    rd_kafka_error_t *e = rd_kafka_consumer_close_queue(c->rk, q);
    int r = 0;
    if (e) {
        r = fail(errbuf, errlen, -EIO, "consumer close: %s", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    } else {
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        while (!rd_kafka_consumer_closed(c->rk)) {
            rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);
            if (ev) {
                if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
                    rebalance_cb(c->rk, rd_kafka_event_error(ev),
                                 rd_kafka_event_topic_partition_list(ev), &c->ctx);
                }
                rd_kafka_event_destroy(ev);
            }
            clock_gettime(CLOCK_MONOTONIC, &now);
            double ms = (double)(now.tv_sec - t0.tv_sec) * 1e3 +
                        (double)(now.tv_nsec - t0.tv_nsec) / 1e6;
            if (ms > timeout_ms) {
                c->close_timed_out = true;
                r = fail(errbuf, errlen, -ETIMEDOUT,
                         "consumer close did not finish within %d ms (broker unreachable?); "
                         "uncommitted events will be reprocessed",
                         timeout_ms);
                break;
            }
        }
    }
    rd_kafka_queue_destroy(q);
    return r;
}

ch_consumer_t *ch_consumer_free(ch_consumer_t *c) {
    if (!c) {
        return NULL;
    }
    if (c->rk) {
        ch_consumer_close(c, 10000, NULL, 0);
        if (c->queue) {
            rd_kafka_queue_io_event_enable(c->queue, -1, NULL, 0);
            rd_kafka_queue_destroy(c->queue);
        }
        rd_kafka_destroy_flags(c->rk, c->close_timed_out ? RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE : 0);
    }
    close_pipe(c->pipe);
    free(c->held);
    free(c->topic);
    free(c->start);
    free(c);
    return NULL;
}

int ch_consumer_fd(const ch_consumer_t *c) {
    return c->pipe[0];
}

int ch_consumer_drain(ch_consumer_t *c, ch_msg_t *out, size_t budget) {
    release_held(c);
    if (c->closed) {
        return 0;
    }
    empty_pipe(c->pipe[0]);
    if (budget > MAX_BATCH) {
        budget = MAX_BATCH;
    }
    ssize_t n = rd_kafka_consume_batch_queue(c->queue, 0, c->held, budget);
    if (n < 0) {
        return 0;
    }
    c->n_held = (size_t)n;
    for (ssize_t i = 0; i < n; i++) {
        const rd_kafka_message_t *m = c->held[i];
        ch_msg_t *o = &out[i];
        memset(o, 0, sizeof(*o));
        o->topic = m->rkt ? rd_kafka_topic_name(m->rkt) : "";
        o->partition = m->partition;
        o->offset = m->offset;
        o->key = m->key;
        o->key_len = m->key_len;
        o->value = m->payload;
        o->value_len = m->len;
        rd_kafka_timestamp_type_t tt;
        o->timestamp_ms = rd_kafka_message_timestamp(m, &tt);
        if (m->err) {
            o->err = -EIO;
            o->errstr = rd_kafka_message_errstr(m);
            o->err_fatal = m->err == RD_KAFKA_RESP_ERR__FATAL;
        }
    }
    return (int)n;
}

int ch_consumer_store(ch_consumer_t *c, int32_t partition, int64_t next_offset, char *errbuf,
                      size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, c->topic, partition)->offset = next_offset;
    rd_kafka_resp_err_t re = rd_kafka_offsets_store(c->rk, l);
    if (!re && l->elems[0].err) {
        re = l->elems[0].err;
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (re) {
        return fail(errbuf, errlen, -EIO, "store offset %s[%d]@%lld: %s", c->topic, partition,
                    (long long)next_offset, rd_kafka_err2str(re));
    }
    return 0;
}

int ch_consumer_commit_sync(ch_consumer_t *c, char *errbuf, size_t errlen) {
    rd_kafka_resp_err_t re = rd_kafka_commit(c->rk, NULL, 0);
    if (re && re != RD_KAFKA_RESP_ERR__NO_OFFSET) {
        return fail(errbuf, errlen, -EIO, "commit: %s", rd_kafka_err2str(re));
    }
    return 0;
}

size_t ch_consumer_assigned(const ch_consumer_t *c) {
    return c->n_assigned;
}

int ch_consumer_lag(ch_consumer_t *c, ch_partition_lag_t *out, size_t cap) {
    if (c->closed) {
        return 0;
    }
    rd_kafka_topic_partition_list_t *l = NULL;
    rd_kafka_resp_err_t re = rd_kafka_assignment(c->rk, &l);
    if (re) {
        return -EIO;
    }
    rd_kafka_position(c->rk, l); /* last consumed + 1, or OFFSET_INVALID */
    size_t n = 0;
    for (int i = 0; i < l->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &l->elems[i];
        if (strcmp(e->topic, c->topic) != 0) {
            continue;
        }
        if (n < cap) {
            int64_t lo = -1, hi = -1;
            if (rd_kafka_get_watermark_offsets(c->rk, e->topic, e->partition, &lo, &hi) ||
                hi < 0) {
                hi = -1;
            }
            int64_t next = e->offset >= 0 ? e->offset
                           : e->partition >= 0 && (size_t)e->partition < c->n_start
                               ? c->start[e->partition]
                               : -1;
            out[n] = (ch_partition_lag_t){e->partition, next, hi,
                                          next >= 0 && hi >= 0 ? (hi > next ? hi - next : 0) : -1};
        }
        n++;
    }
    rd_kafka_topic_partition_list_destroy(l);
    return (int)n;
}

/* ---------------------------------------------------------------- producer */

struct ch_producer {
    handle_ctx_t ctx;
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue;
    int pipe[2];
    ch_delivery_fn *on_delivery;
    void *opaque;
};

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    ch_producer_t *p = ((handle_ctx_t *)opaque)->owner;
    if (p->on_delivery) {
        p->on_delivery(p->opaque, m->_private, m->err ? -EIO : 0,
                       m->err ? rd_kafka_err2str(m->err) : NULL);
    }
}

int ch_producer_new(const ch_kafka_conf_t *conf, ch_delivery_fn *on_delivery, void *opaque,
                    ch_producer_t **ret_producer, char *errbuf, size_t errlen) {
    ch_producer_t *p = calloc(1, sizeof(*p));
    if (!p) {
        return -ENOMEM;
    }
    p->pipe[0] = p->pipe[1] = -1;
    p->ctx.owner = p;
    p->on_delivery = on_delivery;
    p->opaque = opaque;
    int r = make_pipe(p->pipe);
    if (r < 0) {
        ch_producer_free(p);
        return fail(errbuf, errlen, -EIO, "pipe: %s", strerror(-r));
    }
    rd_kafka_conf_t *kc = build_conf(conf, &p->ctx, errbuf, errlen);
    if (!kc) {
        ch_producer_free(p);
        return -EINVAL;
    }
    rd_kafka_conf_set_dr_msg_cb(kc, dr_msg_cb);
    char err[512];
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
    if (!p->rk) {
        rd_kafka_conf_destroy(kc);
        ch_producer_free(p);
        return fail(errbuf, errlen, -EINVAL, "kafka producer: %s", err);
    }
    p->queue = rd_kafka_queue_get_main(p->rk);
    rd_kafka_queue_io_event_enable(p->queue, p->pipe[1], "1", 1);
    *ret_producer = p;
    return 0;
}

ch_producer_t *ch_producer_free(ch_producer_t *p) {
    if (!p) {
        return NULL;
    }
    if (p->rk) {
        rd_kafka_flush(p->rk, 10000);
        if (p->queue) {
            rd_kafka_queue_io_event_enable(p->queue, -1, NULL, 0);
            rd_kafka_queue_destroy(p->queue);
        }
        rd_kafka_destroy(p->rk);
    }
    close_pipe(p->pipe);
    free(p);
    return NULL;
}

int ch_producer_fd(const ch_producer_t *p) {
    return p->pipe[0];
}

int ch_producer_send(ch_producer_t *p, const char *topic, const void *key, size_t key_len,
                     const void *value, size_t value_len, const ch_header_t *headers,
                     size_t n_headers, void *msg_opaque, char *errbuf, size_t errlen) {
    rd_kafka_headers_t *hdrs = NULL;
    if (n_headers) {
        hdrs = rd_kafka_headers_new(n_headers);
        for (size_t i = 0; i < n_headers; i++) {
            rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value,
                                (ssize_t)headers[i].value_len);
        }
    }
    rd_kafka_resp_err_t re = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key_len),
        RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(msg_opaque), RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
    if (re) {
        if (hdrs) {
            rd_kafka_headers_destroy(hdrs); /* ownership moves only on success */
        }
        if (re == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            return -ENOBUFS;
        }
        return fail(errbuf, errlen, -EIO, "produce to %s: %s", topic, rd_kafka_err2str(re));
    }
    return 0;
}

int ch_producer_poll(ch_producer_t *p) {
    empty_pipe(p->pipe[0]);
    return rd_kafka_poll(p->rk, 0);
}

int ch_producer_flush(ch_producer_t *p, int timeout_ms) {
    empty_pipe(p->pipe[0]);
    return rd_kafka_flush(p->rk, timeout_ms) ? -ETIMEDOUT : 0;
}

size_t ch_producer_outstanding(const ch_producer_t *p) {
    return (size_t)rd_kafka_outq_len(p->rk);
}
