/*
 * segsync.c - one set of segments across the instances of a consumer group
 * (segments.sync_topic).
 *
 * Design notes
 * - Every instance produces to and reads partition 0 of the sync topic, from its
 *   beginning, and acts on its records in log order. All instances read the same order,
 *   so they all make the same choices. A record is one text line (the header) and a
 *   body:
 *     round <token> <step> <pass_ms> <rate>       body: the step's model (none at step -1)
 *     sample <token> <instance> <chunk> <chunks> <rows> <n_parts>
 *                                                 body: partitions; rows of raw vectors
 *     stats <token> <step> <instance> <rows> <changed> <inertia> <n_parts>
 *                                                 body: partitions; counts; sums
 *     version <version> <token> <users> <inertia> body: the model every instance applies
 *     ask <instance> <version>                    a refresh request (POST /segments/refresh)
 *   keyed round, sample:<instance>:<chunk>, stats:<instance>, version, ask: a compacted
 *   topic keeps the latest of each, and the latest version is all a new instance needs.
 * - The coordinator is the instance that owns input partition 0 (the group gives each
 *   partition one owner; a new one takes over when it leaves). A seeding or refresh is
 *   a round. Step -1 asks for a sample: every instance (the coordinator too) reads its
 *   users' vectors at the round's stream time, once per round, and sends those of the
 *   users whose key hashes under the round's rate (about segments.sync_sample in all,
 *   the rate estimated from the coordinator's share). The coordinator fits the sample
 *   as one instance fits its population (segments.c's pass on a copy of the live model:
 *   Lloyd from the live centroids and 40 k-means++ seedings, ids matched to the old
 *   ones), after taking the transform statistics from the sample (ch_kmeans_restat: the
 *   population as it is now). Steps 0, 1, ... are Lloyd on everyone's users: each step's round
 * record carries the centroids, and every instance answers with, per centroid, the sum of its
 * users' transformed vectors nearest it and their count, plus the partitions those users came from.
 * When the answers (of the sample, or of a step) cover every input partition exactly once, the
 * coordinator goes on: it fits the sample, or moves each centroid to its members' mean; once no
 * user changed centroid (or after MAX_STEPS) it publishes the result as the next version.
 * - Every instance applies a version newer than its own (number in the log, not a
 *   clock) and reassigns every user to the nearest centroid: the same vector gets the
 *   same segment on every instance. Between versions nothing moves the shared
 *   centroids or the transform (ch_kmeans_follow); events are assigned with hysteresis.
 * - Failures: a round the coordinator cannot complete (an instance died or partitions
 *   moved, so some partition's statistics are missing or come twice) is given up after
 *   segments.sync_timeout and tried again as long after; the live version stays. If the
 *   coordinator dies mid-round, nothing is published: its partitions, partition 0
 *   among them, go to the others after its session times out, and the new owner of
 *   partition 0, seeing a round without its version, starts a new refresh at once
 *   (when the others have restored its partitions, their users are in it). Two
 *   coordinators at once (a zombie) may both publish version N + 1: everyone applies
 *   the first in the log and ignores the other. The newest version is applied only
 *   once this instance has read the topic to its end at start-up.
 * - Before the first version an instance assigns no segments (its events' profile
 *   updates have segment null) and learns the transform as in warm-up; the coordinator
 *   seeds once its warm-up is over and it holds segments.k users.
 */
#include "segsync.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pipeline_int.h"

#define MAGIC "cohortd-segments-sync 1 "
#define MAX_STEPS 50       /* Lloyd steps of a shared round */
#define SLICE_S 0.01       /* wall time a call may take */
#define TOKEN_LEN 160      /* instance/sequence */
#define READ_BUDGET 64     /* records read per call */
#define ROWS_PER_CALL 8192 /* rows accumulated between clock checks */
#define PARTS_TIMEOUT_MS 5000
#define CHUNK_BYTES 600000 /* of a sample record's rows */
#define NONE (-2)          /* member step: none (-1 is the sample) */

/* This instance's part of the round in progress. */
typedef struct member {
    char token[TOKEN_LEN]; /* "" none */
    uint64_t epoch;        /* the pipeline's rebalances when its gathering started */
    bool gathered;
    size_t cursor; /* gathering: user-table position */
    float *x;      /* n x dim raw vectors at the round's stream time */
    int32_t *near; /* n: nearest centroid at the previous step */
    uint8_t *pick; /* n: in the sample (by a hash of the user's key) */
    size_t n, cap;
    int32_t *parts; /* the input partitions its users came from */
    size_t n_parts;
    int step;     /* the step being computed (NONE: none) */
    int answered; /* the last step answered (NONE: none) */
    size_t pos;   /* rows of the step accumulated */
    ch_kmeans_t *km;
    ch_kmeans_sums_t acc;
} member_t;

/* The coordinator's round. */
typedef struct coord {
    bool on, published;
    char token[TOKEN_LEN];
    int step;
    int64_t pass_ms;
    double step_s, t0; /* this step's round record sent; the round's start */
    size_t parts;      /* input partitions */
    uint8_t *covered;  /* parts: answered in this step */
    size_t n_covered;
    bool twice; /* a partition answered twice */
    double *sums;
    uint64_t *counts;
    float *c;  /* k x dim: the next centroids */
    double *w; /* k */
    double inertia;
    uint64_t rows, changed;
    unsigned seq;
    double retry_s; /* no new round before */
    double rate;    /* of users in the sample */
    float *sample;  /* the sample's rows, n_sample x dim */
    size_t n_sample, cap_sample;
    bool fitting; /* the fit on the sample runs (segments.c) */
} coord_t;

struct ch_segsync {
    ch_producer_t *prod;
    ch_reader_t *reader;
    char instance[128];
    size_t k, dim;
    bool caught_up;
    bool coordinating;
    /* the newest version read */
    uint64_t seen_version, bad_version;
    char *vbuf;
    size_t vlen;
    uint64_t v_users;
    double v_inertia;
    /* the newest round read */
    char round_token[TOKEN_LEN];
    int round_step; /* -1: the sample */
    int64_t round_ms;
    double round_rate;
    char *rbuf;
    size_t rlen;
    bool round_open;  /* no version of it read */
    bool round_fresh; /* written recently enough to answer */
    double round_s;   /* when its latest step was read */
    bool asked;       /* a refresh request newer than the live version */
    member_t me;
    coord_t co;
    ch_segsync_status_t st;
    ch_buf_t out;
    ch_ratelimit_t rl;
};

static void on_sent(void *opaque, void *msg_opaque, int32_t partition, int64_t offset, int err,
                    const char *errstr) {
    ch_segsync_t *y = opaque;
    (void)msg_opaque;
    (void)partition;
    (void)offset;
    uint64_t quiet = 0;
    if (err && ch_ratelimit_allow(&y->rl, &quiet)) {
        ch_log(CH_LOG_WARNING, "segments sync: a record was not written: %s (%llu more quiet)",
               errstr ? errstr : "unknown error", (unsigned long long)quiet);
    }
}

int ch_segsync_new(ch_pipeline_t *p, ch_segsync_t **ret_sync, char *errbuf, size_t errlen) {
    const ch_config_t *cfg = p->cfg;
    ch_segsync_t *y = calloc(1, sizeof(*y));
    if (!y) {
        return -ENOMEM;
    }
    y->k = cfg->segments.k;
    y->dim = p->n_feats;
    y->me.step = y->me.answered = NONE;
    ch_buf_init(&y->out);
    ch_ratelimit_init(&y->rl, 10);
    char host[64] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(y->instance, sizeof(y->instance), "%s-%ld-%llx", host, (long)getpid(),
             (unsigned long long)(ch_now_s() * 1e6));
    size_t kd = y->k * y->dim;
    y->co.sums = calloc(kd, sizeof(double));
    y->co.counts = calloc(y->k, sizeof(uint64_t));
    y->co.c = calloc(kd, sizeof(float));
    y->co.w = calloc(y->k, sizeof(double));
    y->me.acc.sums = calloc(kd, sizeof(double));
    y->me.acc.counts = calloc(y->k, sizeof(uint64_t));
    char why[512];
    int n_parts = ch_consumer_partition_count(p->clients.consumer, cfg->segments_sync_topic,
                                              PARTS_TIMEOUT_MS, why, sizeof(why));
    if (n_parts < 0) {
        if (n_parts == -ENOENT) {
            snprintf(errbuf, errlen,
                     "segments.sync_topic: topic %s does not exist. Create it, e.g. "
                     "kafka-topics.sh --create --topic %s --partitions 1 --config "
                     "cleanup.policy=compact",
                     cfg->segments_sync_topic, cfg->segments_sync_topic);
        } else {
            snprintf(errbuf, errlen, "segments.sync_topic %s: %s", cfg->segments_sync_topic, why);
        }
        ch_segsync_free(y);
        return n_parts == -ENOENT ? -ENOENT : -EIO;
    }
    ch_kmeans_opts_t o = cfg->segments;
    o.dim = y->dim;
    o.max_batch = (size_t)cfg->batch_max_events;
    o.seed_by_caller = true;
    int r = ch_kmeans_new(&o, &y->me.km, why, sizeof(why));
    if (r == 0 && (!y->co.sums || !y->co.counts || !y->co.c || !y->co.w || !y->me.acc.sums ||
                   !y->me.acc.counts)) {
        r = -ENOMEM;
    }
    r = r ? r
          : ch_clients_side(&p->clients, cfg, cfg->segments_sync_topic, on_sent, y, &y->prod,
                            &y->reader, errbuf, errlen);
    if (r == 0 && (r = ch_reader_start(y->reader, 0, CH_READ_BEGINNING, why, sizeof(why))) < 0) {
        snprintf(errbuf, errlen, "segments.sync_topic %s: %s", cfg->segments_sync_topic, why);
    }
    /* a stats record: about 25 bytes a number */
    size_t need = 25 * (kd + y->k) + 4096;
    if (r == 0 && need > ch_producer_max_message(y->prod)) {
        snprintf(errbuf, errlen,
                 "segments.sync_topic: statistics of %zu segments x %zu features need about "
                 "%zu bytes a record, more than the producer's message.max.bytes (%zu)",
                 y->k, y->dim, need, ch_producer_max_message(y->prod));
        r = -EINVAL;
    }
    if (r < 0) {
        ch_segsync_free(y);
        return r;
    }
    ch_log(CH_LOG_INFO, "segments shared through %s as %s", cfg->segments_sync_topic, y->instance);
    *ret_sync = y;
    return 0;
}

static void member_clear(member_t *me) {
    free(me->x);
    free(me->near);
    free(me->pick);
    free(me->parts);
    me->x = NULL;
    me->near = NULL;
    me->pick = NULL;
    me->parts = NULL;
    me->n = me->cap = me->n_parts = 0;
    me->token[0] = '\0';
    me->gathered = false;
    me->step = me->answered = NONE;
}

ch_segsync_t *ch_segsync_free(ch_segsync_t *y) {
    if (!y) {
        return NULL;
    }
    if (y->prod && ch_producer_flush(y->prod, 1000) < 0) {
        ch_producer_purge(y->prod);
    }
    y->prod = ch_producer_free(y->prod);
    y->reader = ch_reader_free(y->reader);
    member_clear(&y->me);
    ch_kmeans_free(y->me.km);
    free(y->me.acc.sums);
    free(y->me.acc.counts);
    free(y->co.sums);
    free(y->co.counts);
    free(y->co.c);
    free(y->co.w);
    free(y->co.covered);
    free(y->co.sample);
    free(y->vbuf);
    free(y->rbuf);
    ch_buf_done(&y->out);
    free(y);
    return NULL;
}

int ch_segsync_fd(const ch_segsync_t *y) { return ch_reader_fd(y->reader); }

bool ch_segsync_coordinating(const ch_segsync_t *y) { return y->coordinating; }

void ch_segsync_status(const ch_segsync_t *y, ch_segsync_status_t *ret) {
    *ret = y->st;
    ret->coordinating = y->coordinating;
    ret->round_open = y->round_open;
    ret->iteration = y->round_open ? y->round_step : -1;
}

/* ---- writing ------------------------------------------------------------ */

static int sync_send(ch_segsync_t *y, const ch_pipeline_t *p, const char *key) {
    char err[256];
    int r = ch_producer_send(y->prod, p->cfg->segments_sync_topic, 0, key, strlen(key), y->out.data,
                             y->out.len, NULL, 0, NULL, 0, err, sizeof(err));
    if (r < 0) {
        ch_log(CH_LOG_WARNING, "segments sync: cannot send a %s record: %s", key,
               r == -EIO ? err : strerror(-r));
    }
    return r;
}

/* A record whose body is model km. */
static int send_model(ch_segsync_t *y, const ch_pipeline_t *p, const char *key,
                      const ch_kmeans_t *km) {
    char *blob = NULL;
    size_t len = 0;
    int r = ch_kmeans_write(km, &blob, &len);
    r = r ? r : ch_buf_append(&y->out, blob, len);
    free(blob);
    return r ? r : sync_send(y, p, key);
}

/* ---- reading ------------------------------------------------------------ */

static bool copy_body(char **buf, size_t *len, const char *body, size_t n) {
    char *b = malloc(n + 1);
    if (!b) {
        return false;
    }
    memcpy(b, body, n);
    b[n] = '\0';
    free(*buf);
    *buf = b;
    *len = n;
    return true;
}

static void on_version(ch_segsync_t *y, const char *h, const char *body, size_t n) {
    unsigned long long v, users;
    double inertia;
    char token[TOKEN_LEN];
    if (sscanf(h, "version %llu %159s %llu %lg", &v, token, &users, &inertia) != 4) {
        return;
    }
    if (!strcmp(token, y->round_token)) {
        y->round_open = false;
    }
    if (!strcmp(token, y->me.token)) {
        member_clear(&y->me); /* the round is over */
    }
    if (y->co.on && !strcmp(token, y->co.token)) {
        y->co.on = false;
        y->st.rounds_done++;
    }
    if (v > y->seen_version && copy_body(&y->vbuf, &y->vlen, body, n)) {
        y->seen_version = v;
        y->v_users = users;
        y->v_inertia = inertia;
    }
}

static void on_round(ch_segsync_t *y, const ch_pipeline_t *p, const char *h, const char *body,
                     size_t n, int64_t ts_ms) {
    int step;
    long long ms;
    double rate;
    char token[TOKEN_LEN];
    if (sscanf(h, "round %159s %d %lld %lg", token, &step, &ms, &rate) != 4 || step < -1 ||
        !(rate >= 0 && rate <= 1)) {
        return;
    }
    if (!strcmp(token, y->round_token) && step <= y->round_step) {
        return; /* a step already read (written twice) */
    }
    if (!copy_body(&y->rbuf, &y->rlen, body, n)) {
        return;
    }
    snprintf(y->round_token, sizeof(y->round_token), "%s", token);
    y->round_step = step;
    y->round_ms = ms;
    y->round_rate = rate;
    y->round_open = true;
    y->round_s = ch_now_s();
    /* a round nobody carried on for two timeouts is not worth answering */
    y->round_fresh =
        ts_ms <= 0 || ch_now_s() * 1000.0 - (double)ts_ms < 2 * p->cfg->segments_sync_timeout_ms;
}

/* Numbers of a stats body: count of them into ret. */
static const char *numbers(const char *s, size_t count, double *ret_d, uint64_t *ret_u,
                           int32_t *ret_i) {
    for (size_t i = 0; s && i < count; i++) {
        char *end;
        if (ret_d) {
            ret_d[i] = strtod(s, &end);
        } else {
            unsigned long long v = strtoull(s, &end, 10);
            if (ret_u) {
                ret_u[i] = v;
            } else {
                ret_i[i] = v > INT32_MAX ? -1 : (int32_t)v;
            }
        }
        s = end == s ? NULL : end;
    }
    return s;
}

/* An instance answered the step for these partitions. */
static void cover(coord_t *co, const int32_t *parts, size_t n_parts) {
    for (size_t i = 0; i < n_parts; i++) {
        if (co->covered[parts[i]]) {
            co->twice = true;
        } else {
            co->covered[parts[i]] = 1;
            co->n_covered++;
        }
    }
}

static bool parts_ok(const coord_t *co, const int32_t *parts, size_t n_parts) {
    for (size_t i = 0; i < n_parts; i++) {
        if (parts[i] < 0 || (size_t)parts[i] >= co->parts) {
            return false;
        }
    }
    return true;
}

/* sample <token> <instance> <chunk> <chunks> <rows> <n_parts>; body: partitions, rows. */
static void on_sample(ch_segsync_t *y, const char *h, const char *body) {
    coord_t *co = &y->co;
    size_t chunk, chunks, rows, n_parts, d = y->dim;
    char token[TOKEN_LEN], who[128];
    if (!co->on || co->step != -1 || co->fitting ||
        sscanf(h, "sample %159s %127s %zu %zu %zu %zu", token, who, &chunk, &chunks, &rows,
               &n_parts) != 6 ||
        strcmp(token, co->token) || chunk >= chunks || n_parts > co->parts || rows > CHUNK_BYTES) {
        return;
    }
    if (co->n_sample + rows > co->cap_sample) {
        size_t cap = co->cap_sample ? co->cap_sample : 4096;
        while (cap < co->n_sample + rows) {
            cap *= 2;
        }
        float *x = realloc(co->sample, cap * d * sizeof(float));
        if (!x) {
            co->twice = true; /* dropped: no memory */
            return;
        }
        co->sample = x;
        co->cap_sample = cap;
    }
    int32_t *parts = malloc((n_parts + 1) * sizeof(int32_t));
    double *v = malloc((rows * d + 1) * sizeof(double));
    const char *s = parts && v ? numbers(body, n_parts, NULL, NULL, parts) : NULL;
    s = numbers(s, rows * d, v, NULL, NULL);
    bool ok = s != NULL && parts_ok(co, parts, n_parts);
    for (size_t i = 0; ok && i < rows * d; i++) {
        ok = isfinite(v[i]);
    }
    if (!ok) {
        ch_log(CH_LOG_WARNING, "segments sync: a damaged sample from %s ignored", who);
    } else {
        for (size_t i = 0; i < rows * d; i++) {
            co->sample[co->n_sample * d + i] = (float)v[i];
        }
        co->n_sample += rows;
        if (chunk + 1 == chunks) {
            cover(co, parts, n_parts);
        }
    }
    free(parts);
    free(v);
}

static void on_stats(ch_segsync_t *y, const char *h, const char *body) {
    coord_t *co = &y->co;
    unsigned long long rows, changed;
    size_t n_parts;
    int step;
    double inertia;
    char token[TOKEN_LEN], who[128];
    if (!co->on || co->published ||
        sscanf(h, "stats %159s %d %127s %llu %llu %lg %zu", token, &step, who, &rows, &changed,
               &inertia, &n_parts) != 7 ||
        strcmp(token, co->token) || step != co->step || n_parts > co->parts) {
        return;
    }
    size_t kd = y->k * y->dim;
    int32_t *parts = malloc((n_parts + 1) * sizeof(int32_t));
    uint64_t *counts = malloc(y->k * sizeof(uint64_t));
    double *sums = malloc(kd * sizeof(double));
    const char *s = parts && counts && sums ? numbers(body, n_parts, NULL, NULL, parts) : NULL;
    s = numbers(s, y->k, NULL, counts, NULL);
    s = numbers(s, kd, sums, NULL, NULL);
    bool ok = s != NULL && isfinite(inertia) && parts_ok(co, parts, n_parts);
    for (size_t i = 0; ok && i < kd; i++) {
        ok = isfinite(sums[i]);
    }
    if (!ok) {
        ch_log(CH_LOG_WARNING, "segments sync: damaged statistics from %s ignored", who);
    } else {
        cover(co, parts, n_parts);
    }
    for (size_t j = 0; ok && j < y->k; j++) {
        co->counts[j] += counts[j];
    }
    for (size_t i = 0; ok && i < kd; i++) {
        co->sums[i] += sums[i];
    }
    if (ok) {
        co->inertia += inertia;
        co->rows += rows;
        co->changed += changed;
    }
    free(parts);
    free(counts);
    free(sums);
}

static void on_ask(ch_segsync_t *y, const ch_pipeline_t *p, const char *h) {
    unsigned long long v;
    char who[128];
    if (sscanf(h, "ask %127s %llu", who, &v) == 2 && v >= ch_segments_version(p->segs)) {
        y->asked = true; /* no version since it was asked */
        if (y->coordinating) {
            ch_log(CH_LOG_INFO, "segments: %s asked for a refresh", who);
        }
    }
}

static void on_record(ch_segsync_t *y, const ch_pipeline_t *p, const ch_msg_t *m) {
    const char *v = m->value;
    const char *nl = v ? memchr(v, '\n', m->value_len) : NULL;
    size_t magic = strlen(MAGIC);
    char h[512];
    if (!nl || (size_t)(nl - v) >= sizeof(h) || (size_t)(nl - v) < magic ||
        memcmp(v, MAGIC, magic)) {
        uint64_t quiet = 0;
        if (ch_ratelimit_allow(&y->rl, &quiet)) {
            ch_log(CH_LOG_WARNING,
                   "segments sync: record at offset %lld of %s is not cohortd's; ignored",
                   (long long)m->offset, p->cfg->segments_sync_topic);
        }
        return;
    }
    memcpy(h, v + magic, (size_t)(nl - v) - magic);
    h[nl - v - (ptrdiff_t)magic] = '\0';
    const char *body = nl + 1;
    size_t n = m->value_len - (size_t)(nl + 1 - v);
    if (!strncmp(h, "version ", 8)) {
        on_version(y, h, body, n);
    } else if (!strncmp(h, "round ", 6)) {
        on_round(y, p, h, body, n, m->timestamp_ms);
    } else if (!strncmp(h, "stats ", 6) || !strncmp(h, "sample ", 7)) {
        char *b = NULL; /* strtod needs the end marked */
        size_t len = 0;
        if (copy_body(&b, &len, body, n)) {
            if (h[1] == 't') {
                on_stats(y, h, b);
            } else {
                on_sample(y, h, b);
            }
            free(b);
        }
    } else if (!strncmp(h, "ask ", 4)) {
        on_ask(y, p, h);
    }
}

/* ---- the coordinator ------------------------------------------------------ */

static void round_drop(ch_segsync_t *y, ch_pipeline_t *p, double retry_in_s, const char *why) {
    coord_t *co = &y->co;
    if (co->fitting) {
        ch_segments_drop(p->segs);
    }
    co->on = false;
    co->fitting = false;
    co->n_sample = 0;
    co->retry_s = ch_now_s() + retry_in_s;
    y->st.rounds_dropped++;
    ch_log(CH_LOG_WARNING,
           "segments: shared round %s given up at step %d: %s; the live version "
           "stays%s",
           co->token, co->step, why, retry_in_s > 0 ? ", trying again later" : "");
}

static int send_step(ch_segsync_t *y, ch_pipeline_t *p) {
    coord_t *co = &y->co;
    memset(co->covered, 0, co->parts);
    memset(co->sums, 0, y->k * y->dim * sizeof(double));
    memset(co->counts, 0, y->k * sizeof(uint64_t));
    co->n_covered = 0;
    co->twice = false;
    co->inertia = 0;
    co->rows = co->changed = 0;
    co->step_s = ch_now_s();
    y->out.len = 0;
    int r = ch_buf_printf(&y->out, MAGIC "round %s %d %lld %.17g\n", co->token, co->step,
                          (long long)co->pass_ms, co->rate);
    if (co->step < 0) { /* the sample: no model yet */
        return r ? r : sync_send(y, p, "round");
    }
    return r ? r : send_model(y, p, "round", ch_segments_master(p->segs));
}

static void round_begin(ch_segsync_t *y, ch_pipeline_t *p) {
    coord_t *co = &y->co;
    char err[256];
    int parts = ch_consumer_partition_count(p->clients.consumer, p->cfg->input_topic,
                                            PARTS_TIMEOUT_MS, err, sizeof(err));
    if (parts <= 0) {
        ch_log(CH_LOG_WARNING, "segments: no shared round: partitions of %s unknown (%s)",
               p->cfg->input_topic, parts == -EIO ? err : strerror(-parts));
        co->retry_s = ch_now_s() + 1;
        return;
    }
    uint8_t *cov = realloc(co->covered, (size_t)parts);
    if (!cov) {
        co->retry_s = ch_now_s() + 1;
        return;
    }
    co->covered = cov;
    co->parts = (size_t)parts;
    /* the share of users in the sample: this instance holds about its share of the
     * partitions' users */
    size_t mine = 0;
    for (size_t i = 0; i < p->n_assigned_cap; i++) {
        mine += p->assigned[i];
    }
    double est = (double)ch_users_count(p->users) * (double)parts / (double)(mine ? mine : 1);
    snprintf(co->token, sizeof(co->token), "%s/%u", y->instance, ++co->seq);
    co->step = -1;
    double want = (double)p->cfg->segments_sync_sample;
    co->rate = est > want ? want / est : 1.0;
    ch_log(CH_LOG_INFO,
           "segments: shared round %s starts: %zu users here on %zu of %d partitions, so "
           "about %.0f in all; sampling %.3g of them",
           co->token, ch_users_count(p->users), mine, parts, est, co->rate);
    co->n_sample = 0;
    co->fitting = false;
    co->pass_ms = p->st.stream_time_ms;
    co->t0 = ch_now_s();
    co->on = true;
    co->published = false;
    if (send_step(y, p) < 0) {
        round_drop(y, p, 1, "its first step could not be sent");
    }
}

/* Every partition answered the step: move each centroid to its members' mean, then the
 * next step or the version. */
static void fold(ch_segsync_t *y, ch_pipeline_t *p) {
    coord_t *co = &y->co;
    ch_kmeans_t *master = ch_segments_master(p->segs);
    size_t d = y->dim;
    for (size_t j = 0; j < y->k; j++) {
        const float *old = ch_kmeans_centroid(master, j, NULL, NULL);
        for (size_t t = 0; t < d; t++) {
            co->c[j * d + t] = co->counts[j] ? (float)(co->sums[j * d + t] / (double)co->counts[j])
                                             : old[t]; /* no member anywhere: stays */
        }
        co->w[j] = (double)co->counts[j];
    }
    if (ch_kmeans_set_centroids(master, co->c, co->w) < 0) {
        round_drop(y, p, p->cfg->segments_sync_timeout_ms / 1000.0, "a centroid is not finite");
        return;
    }
    bool done = (co->step > 0 && co->changed == 0) || co->step + 1 >= MAX_STEPS;
    ch_log(CH_LOG_DEBUG, "segments: shared round %s step %d: %llu users, inertia %.6g, %llu moved",
           co->token, co->step, (unsigned long long)co->rows, co->inertia,
           (unsigned long long)co->changed);
    if (!done) {
        co->step++;
        if (send_step(y, p) < 0) {
            round_drop(y, p, 1, "a step could not be sent");
        }
        return;
    }
    uint64_t v = y->seen_version + 1;
    y->out.len = 0;
    int r = ch_buf_printf(&y->out, MAGIC "version %llu %s %llu %.17g\n", (unsigned long long)v,
                          co->token, (unsigned long long)co->rows, co->inertia);
    if (r || send_model(y, p, "version", master) < 0) {
        round_drop(y, p, 1, "the version could not be sent");
        return;
    }
    co->published = true;
    co->step_s = ch_now_s(); /* until it is read back */
    ch_log(CH_LOG_INFO,
           "segments: shared round %s over after %d Lloyd steps on %llu users of %zu "
           "partitions (inertia per user %.4g, %.2f s): publishing version %llu",
           co->token, co->step + 1, (unsigned long long)co->rows, co->parts,
           co->rows ? co->inertia / (double)co->rows : 0.0, ch_now_s() - co->t0,
           (unsigned long long)v);
}

/* The sample is complete: the coordinator's fit on it (segments.c) starts. */
static void fit_sample(ch_segsync_t *y, ch_pipeline_t *p, double now) {
    coord_t *co = &y->co;
    int r = ch_segments_fit_rows(p->segs, co->sample, co->n_sample, co->pass_ms, now);
    if (r < 0) {
        char why[128];
        snprintf(why, sizeof(why), "the fit on a sample of %zu users could not start (%s)",
                 co->n_sample, r == -EINVAL ? "fewer than segments.k" : strerror(-r));
        round_drop(y, p, p->cfg->segments_sync_timeout_ms / 1000.0, why);
        return;
    }
    ch_log(CH_LOG_INFO,
           "segments: shared round %s: fitting a sample of %zu users (%.3g of each "
           "instance's) from %zu partitions",
           co->token, co->n_sample, co->rate, co->parts);
    co->fitting = true;
    co->n_sample = 0;
}

static bool coordinate(ch_segsync_t *y, ch_pipeline_t *p) {
    coord_t *co = &y->co;
    double now = ch_now_s(), timeout_s = p->cfg->segments_sync_timeout_ms / 1000.0;
    if (co->on && co->fitting) {
        ch_seg_step_t r =
            ch_segments_step(p->segs, p->users, p->fs, p->st.stream_time_ms, now, SLICE_S);
        if (r == CH_SEG_BUSY) {
            return true;
        }
        co->fitting = false;
        if (r != CH_SEG_FITTED) {
            round_drop(y, p, timeout_s, "the fit on the sample failed");
            return false;
        }
        co->step = 0; /* Lloyd steps on everyone's users, from the fit */
        if (send_step(y, p) < 0) {
            round_drop(y, p, 1, "a step could not be sent");
        }
        return false;
    }
    if (co->on) {
        if (co->twice) {
            round_drop(y, p, 1, "a partition's users came twice (partitions moved)");
        } else if (!co->published && co->n_covered == co->parts) {
            if (co->step < 0) {
                fit_sample(y, p, now);
            } else {
                fold(y, p);
            }
            return co->on;
        } else if (now - co->step_s > timeout_s) {
            char why[160];
            snprintf(why, sizeof(why),
                     co->published ? "its version was not read back within segments.sync_timeout"
                                   : "answers for %zu of %zu partitions within "
                                     "segments.sync_timeout",
                     co->n_covered, co->parts);
            round_drop(y, p, timeout_s, why);
        }
        return false;
    }
    if (now < co->retry_s || p->rs.active > 0 || y->seen_version > ch_segments_version(p->segs)) {
        return false; /* after a dropped round; its users are not all here yet; or a version
                       * read is not applied yet */
    }
    if (y->asked && ch_segments_request_refresh(p->segs) == 0) {
        y->asked = false;
    }
    if (!ch_segments_due(p->segs, p->users, p->st.stream_time_ms, now)) {
        return false;
    }
    round_begin(y, p);
    return true;
}

static void set_role(ch_segsync_t *y, ch_pipeline_t *p) {
    bool want = ch_rebalance_owns(p, 0);
    if (want == y->coordinating) {
        return;
    }
    y->coordinating = want;
    ch_segments_coordinate(p->segs, want);
    if (!want) {
        if (y->co.on) {
            round_drop(y, p, 0, "this instance no longer owns input partition 0");
        }
        ch_log(CH_LOG_INFO, "segments: no longer the coordinator (input partition 0 moved)");
        return;
    }
    bool takeover = y->round_open;
    ch_log(CH_LOG_INFO, "segments: coordinating (owner of input partition 0)%s",
           takeover ? "; a round left unfinished is started again" : "");
    if (takeover && ch_segments_request_refresh(p->segs) < 0) {
        y->co.retry_s = 0; /* not seeded yet: seeding starts when its conditions hold */
    }
}

/* ---- every instance's statistics ----------------------------------------- */

static bool member_begin(ch_segsync_t *y, ch_pipeline_t *p) {
    member_t *me = &y->me;
    member_clear(me);
    size_t n_parts = 0;
    for (size_t i = 0; i < p->n_assigned_cap; i++) {
        n_parts += p->assigned[i];
    }
    if (!n_parts) {
        return false;
    }
    me->parts = malloc(n_parts * sizeof(int32_t));
    if (!me->parts) {
        return false;
    }
    for (size_t i = 0; i < p->n_assigned_cap; i++) {
        if (p->assigned[i]) {
            me->parts[me->n_parts++] = (int32_t)i;
        }
    }
    snprintf(me->token, sizeof(me->token), "%s", y->round_token);
    me->epoch = p->rebalances;
    me->cursor = 0;
    return true;
}

/* Whether a user is in the sample of a round at this rate: FNV-1a of its key, so the
 * same users are drawn wherever they are. */
static uint8_t in_sample(const char *key, size_t len, double rate) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (uint8_t)key[i]) * 0x100000001b3ULL;
    }
    return (double)(h >> 11) * 0x1p-53 < rate;
}

static bool gather(ch_segsync_t *y, ch_pipeline_t *p, double until) {
    member_t *me = &y->me;
    size_t d = y->dim;
    ch_user_t *u = NULL;
    do {
        if (!(u = ch_users_next(p->users, &me->cursor))) {
            break;
        }
        if (me->n == me->cap) {
            size_t cap = me->cap ? 2 * me->cap : 1024;
            float *x = realloc(me->x, cap * d * sizeof(float));
            uint8_t *pk = x ? realloc(me->pick, cap) : NULL;
            me->x = x ? x : me->x;
            me->pick = pk ? pk : me->pick;
            if (!pk) {
                ch_log(CH_LOG_WARNING, "segments: no memory for a shared round's vectors");
                member_clear(me);
                return false;
            }
            me->cap = cap;
        }
        me->pick[me->n] = in_sample(ch_users_key(p->users, u), u->key_len, y->round_rate);
        ch_user_vector(p, u, y->round_ms, me->x + me->n * d);
        me->n++;
    } while ((me->n & 63) || ch_now_s() < until);
    if (u) {
        return true;
    }
    me->near = malloc((me->n ? me->n : 1) * sizeof(int32_t));
    if (!me->near) {
        member_clear(me);
        return false;
    }
    for (size_t i = 0; i < me->n; i++) {
        me->near[i] = -1;
    }
    me->gathered = true;
    return true;
}

static void answer(ch_segsync_t *y, ch_pipeline_t *p) {
    member_t *me = &y->me;
    size_t kd = y->k * y->dim;
    y->out.len = 0;
    int r = ch_buf_printf(&y->out, MAGIC "stats %s %d %s %llu %llu %.17g %zu\n", me->token,
                          me->step, y->instance, (unsigned long long)me->acc.rows,
                          (unsigned long long)me->acc.changed, me->acc.inertia, me->n_parts);
    for (size_t i = 0; !r && i < me->n_parts; i++) {
        r = ch_buf_printf(&y->out, "%d ", (int)me->parts[i]);
    }
    r = r ? r : ch_buf_append(&y->out, "\n", 1);
    for (size_t j = 0; !r && j < y->k; j++) {
        r = ch_buf_printf(&y->out, "%llu ", (unsigned long long)me->acc.counts[j]);
    }
    r = r ? r : ch_buf_append(&y->out, "\n", 1);
    for (size_t i = 0; !r && i < kd; i++) {
        r = ch_buf_printf(&y->out, "%.17g ", me->acc.sums[i]);
    }
    r = r ? r : ch_buf_append(&y->out, "\n", 1);
    char key[160];
    snprintf(key, sizeof(key), "stats:%s", y->instance);
    if (!r && sync_send(y, p, key) == 0) {
        y->st.stats_sent++;
    }
    me->answered = me->step; /* not sent: the coordinator gives the round up and retries */
}

/* The sampled users' vectors, in records of at most CHUNK_BYTES of rows. */
static void answer_sample(ch_segsync_t *y, ch_pipeline_t *p) {
    member_t *me = &y->me;
    size_t d = y->dim, m = 0;
    for (size_t i = 0; i < me->n; i++) {
        m += me->pick[i];
    }
    size_t per = CHUNK_BYTES / (d * 16) ? CHUNK_BYTES / (d * 16) : 1;
    size_t chunks = m ? (m + per - 1) / per : 1, row = 0;
    int r = 0;
    for (size_t c = 0; !r && c < chunks; c++) {
        size_t rows = m - c * per < per ? m - c * per : per;
        y->out.len = 0;
        r = ch_buf_printf(&y->out, MAGIC "sample %s %s %zu %zu %zu %zu\n", me->token, y->instance,
                          c, chunks, rows, me->n_parts);
        for (size_t i = 0; !r && i < me->n_parts; i++) {
            r = ch_buf_printf(&y->out, "%d ", (int)me->parts[i]);
        }
        r = r ? r : ch_buf_append(&y->out, "\n", 1);
        for (size_t taken = 0; !r && taken < rows; row++) {
            if (!me->pick[row]) {
                continue;
            }
            for (size_t f = 0; !r && f < d; f++) {
                r = ch_buf_printf(&y->out, "%.9g ", me->x[row * d + f]);
            }
            r = r ? r : ch_buf_append(&y->out, "\n", 1);
            taken++;
        }
        char key[192];
        snprintf(key, sizeof(key), "sample:%s:%zu", y->instance, c);
        r = r ? r : sync_send(y, p, key);
    }
    if (!r) {
        y->st.stats_sent++;
    }
    me->answered = -1; /* not sent: the coordinator gives the round up and retries */
}

/* This instance's answer to the open round's current step, in slices. */
static bool contribute(ch_segsync_t *y, ch_pipeline_t *p) {
    member_t *me = &y->me;
    bool stale = ch_now_s() - y->round_s > 2 * p->cfg->segments_sync_timeout_ms / 1000.0;
    if (me->x && (!y->round_open || stale)) {
        member_clear(me); /* a round given up: its vectors are not needed */
    }
    if (!y->round_open || !y->round_fresh || stale || p->rs.active > 0) {
        return false; /* nothing to answer, or users still restoring */
    }
    if (strcmp(me->token, y->round_token) || me->epoch != p->rebalances) {
        if (!member_begin(y, p)) {
            return false; /* no partitions: nothing to say */
        }
    }
    double until = ch_now_s() + SLICE_S;
    if (!me->gathered && (!gather(y, p, until) || !me->gathered)) {
        return me->x != NULL; /* more to gather, or given up */
    }
    if (me->answered >= y->round_step) {
        return false;
    }
    if (y->round_step < 0) {
        answer_sample(y, p);
        return false;
    }
    char why[256];
    if (me->step != y->round_step) {
        if (ch_kmeans_read(me->km, y->rbuf, y->rlen, why, sizeof(why)) < 0) {
            ch_log(CH_LOG_WARNING, "segments: shared round %s: %s", y->round_token, why);
            me->answered = y->round_step;
            return false;
        }
        me->step = y->round_step;
        me->pos = 0;
        memset(me->acc.sums, 0, y->k * y->dim * sizeof(double));
        memset(me->acc.counts, 0, y->k * sizeof(uint64_t));
        me->acc.inertia = 0;
        me->acc.rows = me->acc.changed = 0;
    }
    while (me->pos < me->n && ch_now_s() < until) {
        size_t m = me->n - me->pos < ROWS_PER_CALL ? me->n - me->pos : ROWS_PER_CALL;
        ch_kmeans_accumulate(me->km, me->x + me->pos * y->dim, m, me->near + me->pos, &me->acc);
        me->pos += m;
    }
    if (me->pos < me->n) {
        return true;
    }
    answer(y, p);
    return false;
}

/* ---- the loop's side ---------------------------------------------------- */

bool ch_segsync_work(ch_pipeline_t *p) {
    ch_segsync_t *y = p->sync;
    if (!y || p->stopping) {
        return false;
    }
    ch_producer_poll(y->prod);
    ch_msg_t msgs[READ_BUDGET];
    int n = ch_reader_drain(y->reader, msgs, READ_BUDGET);
    for (int i = 0; i < n; i++) {
        if (msgs[i].eof) {
            if (!y->caught_up) {
                ch_log(CH_LOG_INFO, "segments: read %s to its end: version %llu is the newest",
                       p->cfg->segments_sync_topic, (unsigned long long)y->seen_version);
            }
            y->caught_up = true;
        } else if (!msgs[i].err) {
            on_record(y, p, &msgs[i]);
        }
    }
    bool more = n == READ_BUDGET;
    if (!y->caught_up) {
        return more;
    }
    set_role(y, p);
    if (y->coordinating) {
        more = coordinate(y, p) || more;
    }
    more = contribute(y, p) || more;
    return more ||
           (y->seen_version > ch_segments_version(p->segs) && y->seen_version != y->bad_version);
}

bool ch_segsync_apply(ch_pipeline_t *p) {
    ch_segsync_t *y = p->sync;
    if (!y || !y->caught_up || y->seen_version <= ch_segments_version(p->segs) ||
        y->seen_version == y->bad_version) {
        return false;
    }
    char why[256];
    double now = ch_now_s();
    if (ch_segments_apply(p->segs, y->vbuf, y->vlen, y->seen_version, now, why, sizeof(why)) < 0) {
        ch_log(CH_LOG_ERR, "segments: version %llu cannot be applied: %s",
               (unsigned long long)y->seen_version, why);
        y->bad_version = y->seen_version;
        return false;
    }
    ch_segments_shared_fit(p->segs, (size_t)y->v_users, y->v_inertia);
    y->st.version = y->seen_version;
    y->asked = false;
    ch_log(CH_LOG_INFO,
           "segments: version %llu applied (fitted on %llu users of every instance, inertia "
           "per user %.4g); reassigning this instance's users",
           (unsigned long long)y->seen_version, (unsigned long long)y->v_users,
           y->v_users ? y->v_inertia / (double)y->v_users : 0.0);
    return true;
}

int ch_segsync_ask(ch_pipeline_t *p) {
    ch_segsync_t *y = p->sync;
    if (!ch_segments_ready(p->segs)) {
        return -EAGAIN;
    }
    if (y->coordinating) {
        return ch_segments_request_refresh(p->segs);
    }
    y->out.len = 0;
    int r = ch_buf_printf(&y->out, MAGIC "ask %s %llu\n", y->instance,
                          (unsigned long long)ch_segments_version(p->segs));
    return r ? r : sync_send(y, p, "ask") < 0 ? -EIO : 0;
}
