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
#include "ch/align.h"
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
#define PULL_CHUNK 4096
#define ALIGN_MAX_HELD 262144 /* records buffered by the aligner before it gives way */
#define ALIGN_PAUSE_LEN 16384 /* a partition ahead is paused with this many buffered */


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
    int64_t *expect;     /* per partition (n_start): the offset the next record should have */
    bool *from_commit;   /* per partition (n_start): start is the group's committed offset */
    size_t n_start;
    /* records the broker deleted before they were consumed (a jump past the log start) */
    uint64_t jumps, skipped;
    ch_consumer_skip_t skips[16]; /* not yet taken by ch_consumer_take_skips */
    size_t n_skips;
    /* timestamp alignment (NULL: off): records pulled from the queue wait here */
    ch_align_t *align;
    rd_kafka_message_t **pull;  /* PULL_CHUNK */
    rd_kafka_message_t **errq;  /* error events pulled, handed out first */
    size_t n_errq, cap_errq;
    bool align_failed; /* out of memory buffering: every drain reports a fatal error */
    /* per partition: the highest offset stored for commit and the highest the broker
     * confirmed committed (-1: none), so a stop can say what was left uncommitted */
    int64_t *stored, *committed;
    size_t n_ledger;
    /* input.start_at (-1: off): a partition without a committed offset starts at the
     * first record stamped at or after it; before[p]: records stamped before it are
     * still being skipped (the broker could not say where that first record is) */
    int64_t start_at_ms;
    bool *before;
    size_t n_before;
};

/* Make room in the commit ledger for partition. */
static int ledger_grow(ch_consumer_t *c, int32_t partition) {
    if (partition < 0) {
        return -EINVAL;
    }
    if ((size_t)partition < c->n_ledger) {
        return 0;
    }
    size_t n = (size_t)partition + 16;
    int64_t *s = realloc(c->stored, n * sizeof(*s));
    if (s) {
        c->stored = s;
    }
    int64_t *k = s ? realloc(c->committed, n * sizeof(*k)) : NULL;
    if (!k) {
        return -ENOMEM;
    }
    c->committed = k;
    for (size_t i = c->n_ledger; i < n; i++) {
        c->stored[i] = c->committed[i] = -1;
    }
    c->n_ledger = n;
    return 0;
}

/* Offsets the broker confirmed committed (of a commit result). */
static void ledger_committed(ch_consumer_t *c, const rd_kafka_topic_partition_list_t *l) {
    for (int i = 0; l && i < l->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &l->elems[i];
        if (!e->err && e->offset >= 0 && strcmp(e->topic, c->topic) == 0 &&
            ledger_grow(c, e->partition) == 0 && e->offset > c->committed[e->partition]) {
            c->committed[e->partition] = e->offset;
        }
    }
}

static void offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *offsets, void *opaque) {
    (void)rk;
    (void)err; /* per partition below */
    ledger_committed(((handle_ctx_t *)opaque)->owner, offsets);
}

static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void destroy_msg(void *m) {
    rd_kafka_message_destroy(m);
}

/* Pause or resume one partition of the subscribed topic, as the aligner asks. It pauses
 * only partitions it has records of: pausing one before the application received any
 * record leaves nothing to resume from, and librdkafka 2.0.2 then resumes where its
 * fetcher was, past records it dropped at the pause (measured: the first 46 records of
 * a partition lost). */
static void set_paused(ch_consumer_t *c, int32_t partition, bool pause) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, c->topic, partition);
    rd_kafka_resp_err_t re =
        pause ? rd_kafka_pause_partitions(c->rk, l) : rd_kafka_resume_partitions(c->rk, l);
    if (re || l->elems[0].err) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s %s[%d]: %s", pause ? "pause" : "resume", c->topic,
                 partition, rd_kafka_err2str(re ? re : l->elems[0].err));
        log_trampoline(c->rk, 4, "ALIGN", msg);
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* Remember where partition starts (-1 unknown). @returns 0, -ENOMEM. */
static int store_start(ch_consumer_t *c, int32_t partition, int64_t start, bool from_commit) {
    if ((size_t)partition >= c->n_start) {
        size_t cap = (size_t)partition + 64;
        int64_t *ns = realloc(c->start, cap * sizeof(*ns));
        if (!ns) {
            return -ENOMEM;
        }
        c->start = ns;
        int64_t *ne = realloc(c->expect, cap * sizeof(*ne));
        if (!ne) {
            return -ENOMEM;
        }
        c->expect = ne;
        bool *nf = realloc(c->from_commit, cap * sizeof(*nf));
        if (!nf) {
            return -ENOMEM;
        }
        c->from_commit = nf;
        for (size_t j = c->n_start; j < cap; j++) {
            ns[j] = ne[j] = -1;
            nf[j] = false;
        }
        c->n_start = cap;
    }
    c->start[partition] = start;
    c->expect[partition] = start;
    c->from_commit[partition] = from_commit && start >= 0;
    return 0;
}

/* A record handed out: if it lies past the offset expected, and the broker's log now
 * starts past that offset too, the records between were deleted before they could be
 * consumed (retention, a size limit): counted, and kept for the caller to report. */
static void check_jump(ch_consumer_t *c, const rd_kafka_message_t *m) {
    int32_t p = m->partition;
    if (m->err || p < 0 || (size_t)p >= c->n_start) {
        return;
    }
    int64_t want = c->expect[p];
    c->expect[p] = m->offset + 1;
    int64_t lo = -1, hi = -1;
    if (want < 0 || m->offset <= want ||
        rd_kafka_get_watermark_offsets(c->rk, c->topic, p, &lo, &hi) != 0 || lo <= want) {
        return; /* no gap, or one the log still spans (control records, compaction) */
    }
    int64_t to = lo < m->offset ? lo : m->offset;
    c->jumps++;
    c->skipped += (uint64_t)(to - want);
    if (c->n_skips < sizeof(c->skips) / sizeof(c->skips[0])) {
        c->skips[c->n_skips++] = (ch_consumer_skip_t){p, want, to, m->offset};
    }
}

size_t ch_consumer_take_skips(ch_consumer_t *c, ch_consumer_skip_t *out, size_t max,
                              uint64_t *ret_jumps, uint64_t *ret_skipped) {
    size_t n = c->n_skips < max ? c->n_skips : max;
    memcpy(out, c->skips, n * sizeof(*out));
    memmove(c->skips, c->skips + n, (c->n_skips - n) * sizeof(*out));
    c->n_skips -= n;
    *ret_jumps = c->jumps;
    *ret_skipped = c->skipped;
    return n;
}

/* Mark partition's records stamped before input.start_at as to be skipped (on, true)
 * or not. @returns 0, -ENOMEM. */
static int set_before(ch_consumer_t *c, int32_t partition, bool on) {
    if (partition < 0) {
        return -EINVAL;
    }
    if ((size_t)partition >= c->n_before) {
        if (!on) {
            return 0;
        }
        size_t cap = (size_t)partition + 64;
        bool *nb = realloc(c->before, cap * sizeof(*nb));
        if (!nb) {
            return -ENOMEM;
        }
        memset(nb + c->n_before, 0, (cap - c->n_before) * sizeof(*nb));
        c->before = nb;
        c->n_before = cap;
    }
    c->before[partition] = on;
    return 0;
}

/* input.start_at, before the assignment: a partition of parts the group has no
 * committed offset for starts at the first record stamped at or after it
 * (offsetsForTimes). Where the broker cannot say (-1: no such record yet, or a broker
 * that does not answer timestamp lookups, like the embedded one), it starts at the
 * beginning and skips records stamped earlier until the first that is not
 * (ch_consumer_before_start). Partitions with a committed offset are left alone.
 * l: parts with the group's committed offsets (re: the lookup's error). */
static void place_start_at(ch_consumer_t *c, rd_kafka_topic_partition_list_t *parts,
                           const rd_kafka_topic_partition_list_t *l, rd_kafka_resp_err_t re) {
    rd_kafka_topic_partition_list_t *q = rd_kafka_topic_partition_list_new(parts->cnt);
    char msg[320];
    for (int i = 0; i < l->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &l->elems[i];
        if (strcmp(e->topic, c->topic) != 0 || e->partition < 0) {
            continue;
        }
        if (re || e->err) {
            snprintf(msg, sizeof(msg),
                     "input.start_at: the committed offset of %s[%d] could not be looked up "
                     "(%s); it starts where the group's committed offset or auto.offset.reset "
                     "puts it",
                     c->topic, e->partition, rd_kafka_err2str(re ? re : e->err));
            log_trampoline(c->rk, 4, "START_AT", msg);
        } else if (e->offset < 0) {
            rd_kafka_topic_partition_list_add(q, e->topic, e->partition)->offset =
                c->start_at_ms;
        }
    }
    rd_kafka_resp_err_t qe =
        q->cnt > 0 ? rd_kafka_offsets_for_times(c->rk, q, 2000) : RD_KAFKA_RESP_ERR_NO_ERROR;
    for (int i = 0; i < q->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &q->elems[i];
        rd_kafka_topic_partition_t *to =
            rd_kafka_topic_partition_list_find(parts, e->topic, e->partition);
        if (!to) {
            continue;
        }
        if (!qe && !e->err && e->offset >= 0) {
            to->offset = e->offset;
            set_before(c, e->partition, false);
        } else {
            to->offset = RD_KAFKA_OFFSET_BEGINNING;
            if (set_before(c, e->partition, true) < 0) {
                log_trampoline(c->rk, 3, "START_AT", "out of memory: input.start_at not applied");
            }
        }
    }
    rd_kafka_topic_partition_list_destroy(q);
}

/* Where each newly assigned partition starts: its committed offset, or where
 * auto.offset.reset (or input.start_at: the offset the assignment names) puts a group
 * without one. Lag is measured from here until a
 * message is consumed. l: parts (in the same order) with the group's committed offsets,
 * looked up once per assignment (re: the lookup's error); a partition whose lookup
 * failed is -1 (ch_consumer_lookup_start asks again). */
static void record_start(ch_consumer_t *c, const rd_kafka_topic_partition_list_t *parts,
                         const rd_kafka_topic_partition_list_t *l, rd_kafka_resp_err_t re) {
    for (int i = 0; i < l->cnt && i < parts->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &l->elems[i];
        if (strcmp(e->topic, c->topic) != 0 || e->partition < 0) {
            continue;
        }
        int64_t start = re || e->err ? -1 : e->offset;
        bool from_commit = start >= 0;
        int64_t lo = -1, hi = -1;
        int64_t placed = parts->elems[i].offset; /* what the assignment named, if anything */
        if (!re && !e->err && start < 0 && placed >= 0) {
            start = placed;
        } else if (!re && !e->err && start < 0 &&
                   rd_kafka_query_watermark_offsets(c->rk, c->topic, e->partition, &lo, &hi,
                                                    2000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            start = c->reset_latest && placed != RD_KAFKA_OFFSET_BEGINNING ? hi : lo;
        }
        if (store_start(c, e->partition, start, from_commit) < 0) {
            break;
        }
    }
}

int ch_consumer_cluster_id(ch_consumer_t *c, int timeout_ms, char *buf, size_t len) {
    char *id = rd_kafka_clusterid(c->rk, timeout_ms);
    if (!id || !*id || strlen(id) >= len) {
        if (id) {
            rd_kafka_mem_free(c->rk, id);
        }
        return -EIO;
    }
    snprintf(buf, len, "%s", id);
    rd_kafka_mem_free(c->rk, id);
    return 0;
}

int ch_consumer_lookup_start(ch_consumer_t *c, int32_t partition, int timeout_ms,
                             int64_t *ret_offset, char *errbuf, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_t *e = rd_kafka_topic_partition_list_add(l, c->topic, partition);
    rd_kafka_resp_err_t re = rd_kafka_committed(c->rk, l, timeout_ms);
    re = re ? re : e->err;
    int64_t start = re ? -1 : e->offset, lo = -1, hi = -1;
    bool from_commit = start >= 0;
    rd_kafka_topic_partition_list_destroy(l);
    if (!re && start < 0) {
        re = rd_kafka_query_watermark_offsets(c->rk, c->topic, partition, &lo, &hi, timeout_ms);
        start = c->reset_latest ? hi : lo;
    }
    if (re || start < 0) {
        return fail(errbuf, errlen, -EAGAIN, "committed offset of %s[%d]: %s", c->topic,
                    partition, re ? rd_kafka_err2str(re) : "none");
    }
    if (store_start(c, partition, start, from_commit) < 0) {
        return -ENOMEM;
    }
    *ret_offset = start;
    return 0;
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
        /* the group's committed offsets, asked once (a bounded round trip) for both */
        rd_kafka_topic_partition_list_t *com = rd_kafka_topic_partition_list_copy(parts);
        rd_kafka_resp_err_t cre = rd_kafka_committed(c->rk, com, 2000);
        if (c->start_at_ms >= 0) {
            place_start_at(c, parts, com, cre);
        }
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
            rd_kafka_topic_partition_list_destroy(com);
            return;
        }
        c->n_assigned = cooperative ? c->n_assigned + (size_t)parts->cnt : (size_t)parts->cnt;
        record_start(c, parts, com, cre);
        rd_kafka_topic_partition_list_destroy(com);
        for (int i = 0; c->align && i < parts->cnt; i++) {
            int32_t p = parts->elems[i].partition;
            if (strcmp(parts->elems[i].topic, c->topic) == 0 &&
                ch_align_assign(c->align, p,
                                p >= 0 && (size_t)p < c->n_start ? c->start[p] : -1,
                                mono_s()) < 0) {
                log_trampoline(rk, 3, "ALIGN", "out of memory: partition not aligned");
            }
        }
        call_hook(c, parts, false, false);
    } else {
        bool lost = err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS || rd_kafka_assignment_lost(rk);
        call_hook(c, parts, true, lost);
        for (int i = 0; i < parts->cnt; i++) {
            if (strcmp(parts->elems[i].topic, c->topic) == 0) {
                set_before(c, parts->elems[i].partition, false); /* placed again if regained */
            }
        }
        for (int i = 0; !c->closed && i < parts->cnt; i++) {
            /* what was not committed is the next owner's to reprocess from the last
             * commit (a rebalance, not a stop): the ledger no longer answers for it */
            int32_t p = parts->elems[i].partition;
            if (strcmp(parts->elems[i].topic, c->topic) == 0 && p >= 0 &&
                (size_t)p < c->n_ledger) {
                c->stored[p] = c->committed[p] = -1;
                if ((size_t)p < c->n_start) {
                    c->expect[p] = -1; /* the next owner's to read */
                }
            }
        }
        for (int i = 0; c->align && i < parts->cnt; i++) {
            /* records buffered and not handed out go unprocessed: the next owner
             * reads them from the committed offset */
            if (strcmp(parts->elems[i].topic, c->topic) == 0 &&
                ch_align_revoke(c->align, parts->elems[i].partition, destroy_msg)) {
                set_paused(c, parts->elems[i].partition, false);
            }
        }
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
    c->start_at_ms = -1;
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
    rd_kafka_conf_set_offset_commit_cb(kc, offset_commit_cb);
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

static void destroy_all(rd_kafka_message_t **held, size_t *n) {
    for (size_t i = 0; i < *n; i++) {
        if (held[i]) { /* NULL: given back (ch_consumer_unread) */
            rd_kafka_message_destroy(held[i]);
        }
    }
    *n = 0;
}

static void release_held(ch_consumer_t *c) {
    destroy_all(c->held, &c->n_held);
}

/* The borrowed view of a message; an end-of-partition event (readers only) is not an
 * error. */
static void to_msg(const rd_kafka_message_t *m, ch_msg_t *o) {
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
    o->raw = m;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        o->eof = true;
    } else if (m->err) {
        o->err = -EIO;
        o->errstr = rd_kafka_message_errstr(m);
        o->err_fatal = m->err == RD_KAFKA_RESP_ERR__FATAL;
    }
}

int ch_msg_header(const ch_msg_t *m, const char *name, const void **value, size_t *value_len) {
    rd_kafka_headers_t *h = NULL;
    if (!m->raw || rd_kafka_message_headers(m->raw, &h) != RD_KAFKA_RESP_ERR_NO_ERROR ||
        rd_kafka_header_get_last(h, name, value, value_len) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        return -ENOENT;
    }
    return 0;
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
        double end = mono_s() + timeout_ms / 1000.0;
        while (!rd_kafka_consumer_closed(c->rk)) {
            double left = (end - mono_s()) * 1000.0;
            rd_kafka_event_t *ev = rd_kafka_queue_poll(q, left <= 0    ? 0
                                                          : left < 100 ? (int)left
                                                                       : 100);
            if (ev) {
                if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
                    rebalance_cb(c->rk, rd_kafka_event_error(ev),
                                 rd_kafka_event_topic_partition_list(ev), &c->ctx);
                } else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_OFFSET_COMMIT) {
                    ledger_committed(c, rd_kafka_event_topic_partition_list(ev));
                }
                rd_kafka_event_destroy(ev);
            }
            if (!rd_kafka_consumer_closed(c->rk) && mono_s() >= end) {
                c->close_timed_out = true;
                r = fail(errbuf, errlen, -ETIMEDOUT,
                         "consumer close did not finish within %d ms (broker unreachable?)",
                         timeout_ms);
                break;
            }
        }
    }
    rd_kafka_queue_destroy(q);
    for (size_t i = 0; i < c->n_errq; i++) {
        rd_kafka_message_destroy(c->errq[i]);
    }
    c->n_errq = 0;
    c->align = ch_align_free(c->align, destroy_msg); /* messages go before the handle */
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
    free(c->pull);
    free(c->errq);
    free(c->topic);
    free(c->start);
    free(c->expect);
    free(c->from_commit);
    free(c->stored);
    free(c->before);
    free(c->committed);
    free(c);
    return NULL;
}

int ch_consumer_fd(const ch_consumer_t *c) {
    return c->pipe[0];
}

static int64_t high_watermark(void *opaque, int32_t partition) {
    ch_consumer_t *c = opaque;
    int64_t lo = -1, hi = -1;
    if (rd_kafka_get_watermark_offsets(c->rk, c->topic, partition, &lo, &hi)) {
        return -1;
    }
    return hi;
}

static int push_err(ch_consumer_t *c, rd_kafka_message_t *m) {
    if (c->n_errq == c->cap_errq) {
        size_t cap = c->cap_errq ? 2 * c->cap_errq : 16;
        rd_kafka_message_t **nq = realloc(c->errq, cap * sizeof(*nq));
        if (!nq) {
            return -ENOMEM;
        }
        c->errq = nq;
        c->cap_errq = cap;
    }
    c->errq[c->n_errq++] = m;
    return 0;
}

/* Pull everything the queue has (up to the aligner's cap) into the aligner, then
 * hand out pending error events and the records the aligner releases. */
static size_t drain_aligned(ch_consumer_t *c, size_t budget) {
    double now = mono_s();
    ch_align_stats_t st;
    for (ch_align_stats(c->align, &st); st.held < ALIGN_MAX_HELD; ch_align_stats(c->align, &st)) {
        ssize_t got = rd_kafka_consume_batch_queue(c->queue, 0, c->pull, PULL_CHUNK);
        if (got <= 0 || c->closed || !c->align) {
            break;
        }
        for (ssize_t i = 0; i < got; i++) {
            rd_kafka_message_t *m = c->pull[i];
            rd_kafka_timestamp_type_t tt;
            int64_t ts = m->err ? -1 : rd_kafka_message_timestamp(m, &tt);
            int r = m->err || !m->rkt ? push_err(c, m)
                                      : ch_align_push(c->align, m->partition, m->offset, ts, m,
                                                      now);
            if (r < 0) {
                /* Cannot keep it, and handing it over out of its partition's order
                 * could commit past records still buffered: fail (drain reports a
                 * fatal error; nothing after the last commit is acknowledged). */
                rd_kafka_message_destroy(m);
                c->align_failed = true;
            }
        }
        if (got < PULL_CHUNK) {
            break;
        }
    }
    size_t n = c->n_held, k = 0;
    while (k < c->n_errq && n < budget) {
        c->held[n++] = c->errq[k++];
    }
    if (k > 0) {
        memmove(c->errq, c->errq + k, (c->n_errq - k) * sizeof(*c->errq));
        c->n_errq -= k;
    }
    ch_align_refresh(c->align, high_watermark, c);
    n += ch_align_pop(c->align, (void **)(c->held + n), budget - n, now);
    ch_align_change_t ch[64];
    size_t m;
    while ((m = ch_align_changes(c->align, ch, 64)) > 0) {
        for (size_t i = 0; i < m; i++) {
            set_paused(c, ch[i].partition, ch[i].pause);
        }
    }
    return n;
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
    ssize_t n = 0;
    if (c->align && !c->align_failed) {
        n = (ssize_t)drain_aligned(c, budget);
    }
    if (c->align_failed) {
        c->n_held = (size_t)n; /* nothing may be processed past the failure */
        release_held(c);
        out[0] = (ch_msg_t){.topic = c->topic, .partition = -1, .offset = -1,
                            .timestamp_ms = -1, .err = -ENOMEM, .err_fatal = true,
                            .errstr = "out of memory buffering records for timestamp alignment"};
        return 1;
    }
    if (!c->align) {
        n = rd_kafka_consume_batch_queue(c->queue, 0, c->held, budget);
    }
    if (n < 0) {
        return 0;
    }
    c->n_held = (size_t)n;
    for (ssize_t i = 0; i < n; i++) {
        to_msg(c->held[i], &out[i]);
        check_jump(c, c->held[i]);
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
    if (ledger_grow(c, partition) == 0 && next_offset > c->stored[partition]) {
        c->stored[partition] = next_offset;
    }
    return 0;
}

int ch_consumer_commit(ch_consumer_t *c, int timeout_ms, char *errbuf, size_t errlen) {
    rd_kafka_queue_t *q = rd_kafka_queue_new(c->rk);
    rd_kafka_resp_err_t re = rd_kafka_commit_queue(c->rk, NULL, q, NULL, NULL);
    int r = 0;
    if (re) {
        r = re == RD_KAFKA_RESP_ERR__NO_OFFSET
                ? 0
                : fail(errbuf, errlen, -EIO, "commit: %s", rd_kafka_err2str(re));
    } else {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms > 0 ? timeout_ms : 0);
        if (!ev) {
            r = fail(errbuf, errlen, -ETIMEDOUT, "commit: no answer within %d ms", timeout_ms);
        } else {
            re = rd_kafka_event_error(ev);
            ledger_committed(c, rd_kafka_event_topic_partition_list(ev));
            if (re && re != RD_KAFKA_RESP_ERR__NO_OFFSET) {
                r = fail(errbuf, errlen, -EIO, "commit: %s", rd_kafka_err2str(re));
            }
            rd_kafka_event_destroy(ev);
        }
    }
    rd_kafka_queue_destroy(q);
    return r;
}

void ch_consumer_mark_committed(ch_consumer_t *c, int32_t partition, int64_t next_offset) {
    if (ledger_grow(c, partition) == 0 && next_offset > c->committed[partition]) {
        c->committed[partition] = next_offset;
    }
}

size_t ch_consumer_uncommitted(const ch_consumer_t *c, int64_t *ret_records) {
    size_t parts = 0;
    int64_t records = 0;
    for (size_t i = 0; i < c->n_ledger; i++) {
        if (c->stored[i] > c->committed[i]) {
            /* never committed here: count from where consumption began */
            int64_t base = c->committed[i] >= 0 ? c->committed[i]
                           : i < c->n_start     ? c->start[i]
                                                : -1;
            parts++;
            records += base >= 0 ? c->stored[i] - base : 0;
        }
    }
    if (ret_records) {
        *ret_records = records;
    }
    return parts;
}

size_t ch_consumer_assigned(const ch_consumer_t *c) {
    return c->n_assigned;
}

int ch_consumer_partition_count(ch_consumer_t *c, const char *topic, int timeout_ms,
                                char *errbuf, size_t errlen) {
    /* All topics: a request naming the topic would have a broker with
     * auto.create.topics.enable (and the embedded one) create it. */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t re = rd_kafka_metadata(c->rk, 1, NULL, &md, timeout_ms);
    if (re == RD_KAFKA_RESP_ERR__TIMED_OUT) {
        return fail(errbuf, errlen, -ETIMEDOUT, "metadata: no answer within %d ms", timeout_ms);
    }
    if (re) {
        return fail(errbuf, errlen, -EIO, "metadata: %s", rd_kafka_err2str(re));
    }
    int r = fail(errbuf, errlen, -ENOENT, "topic %s does not exist", topic);
    for (int i = 0; i < md->topic_cnt; i++) {
        const rd_kafka_metadata_topic_t *t = &md->topics[i];
        if (strcmp(t->topic, topic) != 0) {
            continue;
        }
        if (t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || (!t->err && !t->partition_cnt)) {
            break;
        }
        r = t->err ? fail(errbuf, errlen, -EIO, "metadata of %s: %s", topic,
                          rd_kafka_err2str(t->err))
                   : t->partition_cnt;
        break;
    }
    rd_kafka_metadata_destroy(md);
    return r;
}

void ch_consumer_start_at(ch_consumer_t *c, int64_t ts_ms) { c->start_at_ms = ts_ms; }

bool ch_consumer_before_start(ch_consumer_t *c, const ch_msg_t *m) {
    int32_t p = m->partition;
    if (p < 0 || (size_t)p >= c->n_before || !c->before[p]) {
        return false;
    }
    if (m->timestamp_ms >= 0 && m->timestamp_ms < c->start_at_ms) {
        return true;
    }
    c->before[p] = false; /* the first record at or after it: from here on, everything */
    return false;
}

int64_t ch_consumer_start_offset(const ch_consumer_t *c, int32_t partition) {
    return partition >= 0 && (size_t)partition < c->n_start ? c->start[partition] : -1;
}

bool ch_consumer_start_committed(const ch_consumer_t *c, int32_t partition) {
    return partition >= 0 && (size_t)partition < c->n_start && c->from_commit[partition];
}

int ch_consumer_hold(ch_consumer_t *c, int32_t partition, bool hold) {
    if (!c->align) {
        return -ENOTSUP;
    }
    if (partition < 0) {
        return -EINVAL;
    }
    ch_align_hold(c->align, partition, hold, mono_s());
    if (!hold) {
        /* records may wait: wake the caller's loop for a drain */
        if (write(c->pipe[1], "1", 1) < 0 && errno != EAGAIN) {
            return -errno;
        }
    }
    return 0;
}

int ch_consumer_unread(ch_consumer_t *c, int32_t partition, int64_t from) {
    if (!c->align) {
        return -ENOTSUP;
    }
    size_t n = 0;
    for (size_t i = 0; i < c->n_held; i++) {
        const rd_kafka_message_t *m = c->held[i];
        n += m && !m->err && m->rkt && m->partition == partition && m->offset >= from;
    }
    void **items = malloc((n ? n : 1) * sizeof(*items));
    int64_t *offs = malloc((n ? n : 1) * sizeof(*offs)), *ts = malloc((n ? n : 1) * sizeof(*ts));
    int r = items && offs && ts ? 0 : -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; r == 0 && i < c->n_held; i++) {
        rd_kafka_message_t *m = c->held[i];
        if (m && !m->err && m->rkt && m->partition == partition && m->offset >= from) {
            rd_kafka_timestamp_type_t tt;
            items[k] = m;
            offs[k] = m->offset;
            ts[k++] = rd_kafka_message_timestamp(m, &tt);
        }
    }
    if (r == 0 && n > 0) {
        r = ch_align_unpop(c->align, partition, items, offs, ts, n);
    }
    if (r == 0) {
        for (size_t i = 0; i < c->n_held; i++) {
            const rd_kafka_message_t *m = c->held[i];
            if (m && !m->err && m->rkt && m->partition == partition && m->offset >= from) {
                c->held[i] = NULL; /* the aligner has it now */
            }
        }
        ch_align_hold(c->align, partition, true, mono_s());
    }
    free(items);
    free(offs);
    free(ts);
    return r < 0 ? r : (int)n;
}

int ch_consumer_align(ch_consumer_t *c, int64_t max_skew_ms, double idle_s) {
    if (c->align || c->n_assigned || c->closed) {
        return -EBUSY;
    }
    ch_align_opts_t o = {.max_skew_ms = max_skew_ms, .idle_s = idle_s,
                         .max_held = ALIGN_MAX_HELD, .pause_len = ALIGN_PAUSE_LEN};
    c->pull = c->pull ? c->pull : calloc(PULL_CHUNK, sizeof(*c->pull));
    if (!c->pull) {
        return -ENOMEM;
    }
    return ch_align_new(&o, &c->align);
}

bool ch_consumer_align_stats(const ch_consumer_t *c, ch_consumer_align_stats_t *ret) {
    *ret = (ch_consumer_align_stats_t){0};
    if (!c->align) {
        return false;
    }
    ch_align_stats_t st;
    ch_align_stats(c->align, &st);
    *ret = (ch_consumer_align_stats_t){st.held, st.paused, st.forced, st.pauses};
    return true;
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
            int64_t held = c->align ? ch_align_next(c->align, e->partition) : -1;
            int64_t next = held >= 0        ? held
                           : e->offset >= 0 ? e->offset
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
    const rd_kafka_message_t *reported; /* inside dr_msg_cb */
    size_t max_message;
};

/* Errors caused by the record itself, which no retry can cure. */
static bool record_refused(rd_kafka_resp_err_t e) {
    return e == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE || e == RD_KAFKA_RESP_ERR_INVALID_RECORD ||
           e == RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP;
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    ch_producer_t *p = ((handle_ctx_t *)opaque)->owner;
    if (p->on_delivery) {
        int err = !m->err ? 0 : record_refused(m->err) ? -EMSGSIZE : -EIO;
        p->reported = m;
        p->on_delivery(p->opaque, m->_private, m->partition, m->err ? -1 : m->offset, err,
                       m->err ? rd_kafka_err2str(m->err) : NULL);
        p->reported = NULL;
    }
}

int ch_producer_reported(const ch_producer_t *p, ch_msg_t *ret) {
    const rd_kafka_message_t *m = p->reported;
    if (!m) {
        return -ENOENT;
    }
    *ret = (ch_msg_t){.topic = rd_kafka_topic_name(m->rkt),
                      .partition = m->partition,
                      .offset = -1,
                      .key = m->key,
                      .key_len = m->key_len,
                      .value = m->payload,
                      .value_len = m->len,
                      .timestamp_ms = -1,
                      .raw = m};
    return 0;
}

size_t ch_producer_max_message(const ch_producer_t *p) { return p->max_message; }

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
    char v[32];
    size_t vlen = sizeof(v);
    p->max_message = 1000000; /* librdkafka's default */
    if (rd_kafka_conf_get(rd_kafka_conf(p->rk), "message.max.bytes", v, &vlen) ==
        RD_KAFKA_CONF_OK) {
        p->max_message = (size_t)strtoull(v, NULL, 10);
    }
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

int ch_producer_send(ch_producer_t *p, const char *topic, int32_t partition, const void *key,
                     size_t key_len,
                     const void *value, size_t value_len, const ch_header_t *headers,
                     size_t n_headers, void *msg_opaque, int64_t timestamp_ms, char *errbuf,
                     size_t errlen) {
    rd_kafka_headers_t *hdrs = NULL;
    if (n_headers) {
        hdrs = rd_kafka_headers_new(n_headers);
        for (size_t i = 0; i < n_headers; i++) {
            rd_kafka_header_add(hdrs, headers[i].name, -1, headers[i].value,
                                (ssize_t)headers[i].value_len);
        }
    }
    rd_kafka_resp_err_t re = rd_kafka_producev(
        p->rk, RD_KAFKA_V_TOPIC(topic),
        RD_KAFKA_V_PARTITION(partition >= 0 ? partition : RD_KAFKA_PARTITION_UA),
        RD_KAFKA_V_KEY(key, key_len),
        RD_KAFKA_V_VALUE((void *)value, value_len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(msg_opaque), RD_KAFKA_V_HEADERS(hdrs),
        RD_KAFKA_V_TIMESTAMP(timestamp_ms > 0 ? timestamp_ms : 0), RD_KAFKA_V_END);
    if (re) {
        if (hdrs) {
            rd_kafka_headers_destroy(hdrs); /* ownership moves only on success */
        }
        if (re == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            return -ENOBUFS;
        }
        return fail(errbuf, errlen, re == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ? -EMSGSIZE : -EIO,
                    "produce to %s: %s", topic, rd_kafka_err2str(re));
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

void ch_producer_purge(ch_producer_t *p) {
    rd_kafka_purge(p->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT |
                              RD_KAFKA_PURGE_F_NON_BLOCKING);
}

size_t ch_producer_outstanding(const ch_producer_t *p) {
    return (size_t)rd_kafka_outq_len(p->rk);
}

/* ---------------------------------------------------------------- reader */

struct ch_reader {
    handle_ctx_t ctx;
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue;
    int pipe[2];
    char *topic;
    rd_kafka_message_t **held;
    size_t n_held;
};

/* ------------------------------------------------------------ transactions */

static int txn_error(rd_kafka_error_t *e, const char *what, char *errbuf, size_t errlen) {
    if (!e) {
        return 0;
    }
    int rc = rd_kafka_error_is_fatal(e)             ? -EPERM
             : rd_kafka_error_txn_requires_abort(e) ? -ECANCELED
             : rd_kafka_error_is_retriable(e)       ? -ETIMEDOUT
                                                    : -ECANCELED;
    fail(errbuf, errlen, rc, "%s: %s", what, rd_kafka_error_string(e));
    rd_kafka_error_destroy(e);
    return rc;
}

int ch_producer_txn_init(ch_producer_t *p, int timeout_ms, char *errbuf, size_t errlen) {
    return txn_error(rd_kafka_init_transactions(p->rk, timeout_ms), "init transactions", errbuf,
                     errlen);
}

int ch_producer_txn_begin(ch_producer_t *p, char *errbuf, size_t errlen) {
    return txn_error(rd_kafka_begin_transaction(p->rk), "begin transaction", errbuf, errlen);
}

int ch_producer_txn_commit(ch_producer_t *p, ch_consumer_t *c, const ch_next_offset_t *offsets,
                           size_t n, int timeout_ms, char *errbuf, size_t errlen) {
    if (n > 0) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
        for (size_t i = 0; i < n; i++) {
            rd_kafka_topic_partition_list_add(l, c->topic, offsets[i].partition)->offset =
                offsets[i].next;
        }
        rd_kafka_consumer_group_metadata_t *md = rd_kafka_consumer_group_metadata(c->rk);
        rd_kafka_error_t *e = rd_kafka_send_offsets_to_transaction(p->rk, l, md, timeout_ms);
        rd_kafka_consumer_group_metadata_destroy(md);
        rd_kafka_topic_partition_list_destroy(l);
        int rc = txn_error(e, "send offsets to transaction", errbuf, errlen);
        if (rc < 0) {
            return rc;
        }
    }
    return txn_error(rd_kafka_commit_transaction(p->rk, timeout_ms), "commit transaction", errbuf,
                     errlen);
}

int ch_producer_txn_abort(ch_producer_t *p, int timeout_ms, char *errbuf, size_t errlen) {
    return txn_error(rd_kafka_abort_transaction(p->rk, timeout_ms), "abort transaction", errbuf,
                     errlen);
}

int ch_reader_new(const ch_kafka_conf_t *conf, const char *topic, ch_reader_t **ret_reader,
                  char *errbuf, size_t errlen) {
    ch_reader_t *r = calloc(1, sizeof(*r));
    if (!r) {
        return -ENOMEM;
    }
    r->pipe[0] = r->pipe[1] = -1;
    r->ctx.owner = r;
    r->topic = strdup(topic);
    r->held = calloc(MAX_BATCH, sizeof(*r->held));
    if (!r->topic || !r->held) {
        ch_reader_free(r);
        return -ENOMEM;
    }
    int rc = make_pipe(r->pipe);
    if (rc < 0) {
        ch_reader_free(r);
        return fail(errbuf, errlen, -EIO, "pipe: %s", strerror(-rc));
    }
    rd_kafka_conf_t *kc = build_conf(conf, &r->ctx, errbuf, errlen);
    if (!kc) {
        ch_reader_free(r);
        return -EINVAL;
    }
    /* assigned partitions only, never a group member, never committing */
    static const char *const fixed[][2] = {{"enable.auto.commit", "false"},
                                           {"enable.auto.offset.store", "false"},
                                           {"enable.partition.eof", "true"},
                                           {"auto.offset.reset", "earliest"}};
    char err[512];
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (rd_kafka_conf_set(kc, fixed[i][0], fixed[i][1], err, sizeof(err)) !=
            RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(kc);
            ch_reader_free(r);
            return fail(errbuf, errlen, -EINVAL, "reader %s: %s", fixed[i][0], err);
        }
    }
    r->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    if (!r->rk) {
        rd_kafka_conf_destroy(kc);
        ch_reader_free(r);
        return fail(errbuf, errlen, -EINVAL, "kafka reader: %s", err);
    }
    rd_kafka_poll_set_consumer(r->rk);
    r->queue = rd_kafka_queue_get_consumer(r->rk);
    rd_kafka_queue_io_event_enable(r->queue, r->pipe[1], "1", 1);
    *ret_reader = r;
    return 0;
}

static void reader_release(ch_reader_t *r) {
    destroy_all(r->held, &r->n_held);
}

ch_reader_t *ch_reader_free(ch_reader_t *r) {
    if (!r) {
        return NULL;
    }
    reader_release(r);
    if (r->rk) {
        if (r->queue) {
            rd_kafka_queue_io_event_enable(r->queue, -1, NULL, 0);
            rd_kafka_queue_destroy(r->queue);
        }
        rd_kafka_destroy_flags(r->rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    }
    close_pipe(r->pipe);
    free(r->held);
    free(r->topic);
    free(r);
    return NULL;
}

int ch_reader_fd(const ch_reader_t *r) {
    return r->pipe[0];
}

static int reader_assign(ch_reader_t *r, int32_t partition, bool add, int64_t from,
                         char *errbuf, size_t errlen) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, r->topic, partition)->offset =
        from == CH_READ_BEGINNING ? RD_KAFKA_OFFSET_BEGINNING : from;
    rd_kafka_error_t *e =
        add ? rd_kafka_incremental_assign(r->rk, l) : rd_kafka_incremental_unassign(r->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
        int rc = fail(errbuf, errlen, -EIO, "%s %s[%d]: %s", add ? "read" : "stop reading",
                      r->topic, partition, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        return rc;
    }
    return 0;
}

int ch_reader_start(ch_reader_t *r, int32_t partition, int64_t from, char *errbuf,
                    size_t errlen) {
    return reader_assign(r, partition, true, from, errbuf, errlen);
}

int ch_reader_stop(ch_reader_t *r, int32_t partition, char *errbuf, size_t errlen) {
    return reader_assign(r, partition, false, CH_READ_BEGINNING, errbuf, errlen);
}

int ch_reader_log_bounds(ch_reader_t *r, int32_t partition, int timeout_ms, int64_t *ret_start,
                         int64_t *ret_end, char *errbuf, size_t errlen) {
    int64_t lo = -1, hi = -1;
    rd_kafka_resp_err_t e =
        rd_kafka_query_watermark_offsets(r->rk, r->topic, partition, &lo, &hi, timeout_ms);
    if (e) {
        return fail(errbuf, errlen, -EIO, "log start and end of %s[%d]: %s", r->topic,
                    partition, rd_kafka_err2str(e));
    }
    *ret_start = lo;
    *ret_end = hi;
    return 0;
}

int ch_reader_drain(ch_reader_t *r, ch_msg_t *out, size_t budget) {
    reader_release(r);
    empty_pipe(r->pipe[0]);
    if (budget > MAX_BATCH) {
        budget = MAX_BATCH;
    }
    ssize_t n = rd_kafka_consume_batch_queue(r->queue, 0, r->held, budget);
    if (n < 0) {
        return 0;
    }
    r->n_held = (size_t)n;
    for (ssize_t i = 0; i < n; i++) {
        to_msg(r->held[i], &out[i]);
    }
    return (int)n;
}
