/*
 * cohort-passthrough - the Kafka I/O ceiling that tools/bench compares cohortd with.
 *
 * It does what cohortd does on the Kafka side and nothing else: a group consumer
 * on the events topic, one idempotent producer, for every event one record to the
 * profile topic and one to the risk topic (keyed by the event's key), and offsets
 * stored only once every output of a batch and of all older batches is
 * acknowledged (at-least-once, as in cohortd). No decoding, no state, no scoring.
 *
 * Design notes
 * - Same client layer (stream/'s ch_consumer and ch_producer), same batching
 *   (budgeted drains of --batch events, up to --inflight unacknowledged batches)
 *   and the same librdkafka defaults as cohortd (see the tables below); -X passes
 *   further settings to both clients, as cohortd's kafka.* keys do.
 * - Output records are the event's bytes, zero-padded (or cut) to --profile-bytes
 *   and --risk-bytes when given, so the ceiling moves as many bytes as cohortd.
 *   The event's id stays readable at the start, for cohort-bench-sink.
 * - With --events N it exits once N events are consumed and all their outputs
 *   acknowledged, and prints one JSON line of counters and CPU time.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "ch/kafka.h"
#include "tool_args.h"

/* cohortd's own defaults (daemon/src/pipeline.c), so both sides run the same clients. */
static const char *const consumer_defaults[][2] = {
    {"group.id", "cohort-passthrough"},
    {"auto.offset.reset", "earliest"},
    {"enable.auto.commit", "true"},
    {"auto.commit.interval.ms", "1000"},
    {"enable.auto.offset.store", "false"},
    {"partition.assignment.strategy", "cooperative-sticky"},
    {"enable.partition.eof", "false"},
};
static const char *const producer_defaults[][2] = {
    {"enable.idempotence", "true"},
    {"partitioner", "murmur2_random"},
    {"linger.ms", "5"},
};
#define N_CONSUMER_DEFAULTS (sizeof(consumer_defaults) / sizeof(consumer_defaults[0]))
#define N_PRODUCER_DEFAULTS (sizeof(producer_defaults) / sizeof(producer_defaults[0]))
#define MAX_SETTINGS 64

typedef struct part_off {
    int32_t partition;
    int64_t next_offset;
} part_off_t;

typedef struct batch {
    size_t outstanding;
    bool sealed, failed;
    part_off_t *parts;
    size_t n_parts, cap_parts;
} batch_t;

typedef struct pt {
    ch_consumer_t *consumer;
    ch_producer_t *producer;
    batch_t *ring;
    size_t ring_cap, ring_head, ring_count;
    uint64_t consumed, produced, acked, failed;
} pt_t;

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static batch_t *ring_at(pt_t *p, size_t i) {
    return &p->ring[(p->ring_head + i) % p->ring_cap];
}

static int track_offset(batch_t *b, int32_t partition, int64_t offset) {
    for (size_t i = 0; i < b->n_parts; i++) {
        if (b->parts[i].partition == partition) {
            if (offset + 1 > b->parts[i].next_offset) {
                b->parts[i].next_offset = offset + 1;
            }
            return 0;
        }
    }
    if (b->n_parts == b->cap_parts) {
        size_t cap = b->cap_parts ? b->cap_parts * 2 : 16;
        part_off_t *np = realloc(b->parts, cap * sizeof(*np));
        if (!np) {
            return -ENOMEM;
        }
        b->parts = np;
        b->cap_parts = cap;
    }
    b->parts[b->n_parts++] = (part_off_t){partition, offset + 1};
    return 0;
}

static void on_delivery(void *opaque, void *msg_opaque, int err, const char *errstr) {
    pt_t *p = opaque;
    batch_t *b = msg_opaque;
    b->outstanding--;
    if (err) {
        if (p->failed++ < 5) {
            fprintf(stderr, "cohort-passthrough: delivery failed: %s\n", errstr);
        }
        b->failed = true;
        stop_flag = 1;
    } else {
        p->acked++;
    }
}

/* Store the offsets of the oldest batches whose outputs are all acknowledged. */
static void advance(pt_t *p) {
    while (p->ring_count) {
        batch_t *b = ring_at(p, 0);
        if (!b->sealed || b->outstanding || b->failed) {
            return;
        }
        for (size_t i = 0; i < b->n_parts; i++) {
            char err[256];
            (void)ch_consumer_store(p->consumer, b->parts[i].partition, b->parts[i].next_offset,
                                    err, sizeof(err)); /* revoked: the new owner redoes it */
        }
        p->ring_head = (p->ring_head + 1) % p->ring_cap;
        p->ring_count--;
    }
}

static int send_one(pt_t *p, batch_t *b, const char *topic, const ch_msg_t *m, size_t want,
                    unsigned char *pad) {
    const void *value = m->value;
    size_t len = m->value_len;
    if (want > 0) {
        size_t n = len < want ? len : want;
        memcpy(pad, m->value, n);
        memset(pad + n, 0, want - n);
        value = pad;
        len = want;
    }
    char err[256];
    for (;;) {
        int r = ch_producer_send(p->producer, topic, m->key, m->key_len, value, len, NULL, 0, b,
                                 err, sizeof(err));
        if (r == -ENOBUFS) { /* local queue full: serve acknowledgements, then retry */
            ch_producer_flush(p->producer, 10);
            advance(p);
            continue;
        }
        if (r < 0) {
            fprintf(stderr, "cohort-passthrough: %s\n", err);
            return r;
        }
        b->outstanding++;
        p->produced++;
        return 0;
    }
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void usage(FILE *f) {
    fprintf(f,
            "Usage: cohort-passthrough --brokers HOST:PORT [OPTIONS]\n"
            "Consume events and produce one profile and one risk record per event, with\n"
            "cohortd's Kafka settings and offset discipline but no processing: the Kafka\n"
            "I/O ceiling for tools/bench.\n\n"
            "  -b, --brokers LIST       Kafka bootstrap servers (required)\n"
            "  -t, --topic NAME         input topic (default events)\n"
            "  -g, --group ID           consumer group (default cohort-passthrough)\n"
            "      --profile-topic T    (default profiles)\n"
            "      --risk-topic T       (default risk)\n"
            "      --profile-bytes N    size of each profile record (default 0: the event's)\n"
            "      --risk-bytes N       size of each risk record (default 0: the event's)\n"
            "      --batch N            events per drain (default 1000, as batch.max_events)\n"
            "      --inflight N         unacknowledged batches (default 32, as batch.max_inflight)\n"
            "  -n, --events N           exit once N events are processed (default 0: on signal)\n"
            "  -X KEY=VALUE             librdkafka setting for both clients; consumer.KEY or\n"
            "                           producer.KEY for one (as cohortd's kafka.* keys)\n"
            "  -h, --help               this help\n"
            "On exit prints one JSON line: events, outputs, acknowledged, cpu_seconds.\n");
}

typedef struct settings {
    const char *keys[MAX_SETTINGS], *vals[MAX_SETTINGS];
    size_t n;
} settings_t;

static int add_setting(settings_t *s, const char *k, const char *v) {
    if (s->n == MAX_SETTINGS) {
        return -E2BIG;
    }
    s->keys[s->n] = k;
    s->vals[s->n] = v;
    s->n++;
    return 0;
}

int main(int argc, char **argv) {
    const char *brokers = NULL, *topic = "events", *group = NULL;
    const char *profile_topic = "profiles", *risk_topic = "risk";
    double profile_bytes = 0, risk_bytes = 0, batch = 1000, inflight = 32, events = 0;
    char *extra[MAX_SETTINGS];
    size_t n_extra = 0;
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},      {"topic", required_argument, NULL, 't'},
        {"group", required_argument, NULL, 'g'},        {"profile-topic", required_argument, NULL, 'P'},
        {"risk-topic", required_argument, NULL, 'R'},   {"profile-bytes", required_argument, NULL, 'p'},
        {"risk-bytes", required_argument, NULL, 'r'},   {"batch", required_argument, NULL, 'B'},
        {"inflight", required_argument, NULL, 'I'},     {"events", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},               {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "b:t:g:n:X:h", opts, NULL)) != -1) {
        int r = 0;
        switch (opt) {
        case 'b':
            brokers = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'g':
            group = optarg;
            break;
        case 'P':
            profile_topic = optarg;
            break;
        case 'R':
            risk_topic = optarg;
            break;
        case 'p':
            r = tool_parse_number(optarg, 0, 1 << 20, &profile_bytes);
            break;
        case 'r':
            r = tool_parse_number(optarg, 0, 1 << 20, &risk_bytes);
            break;
        case 'B':
            r = tool_parse_number(optarg, 1, 65536, &batch);
            break;
        case 'I':
            r = tool_parse_number(optarg, 1, 4096, &inflight);
            break;
        case 'n':
            r = tool_parse_number(optarg, 0, 1e15, &events);
            break;
        case 'X':
            if (!strchr(optarg, '=') || n_extra == MAX_SETTINGS) {
                fprintf(stderr, "cohort-passthrough: -X takes KEY=VALUE, got '%s'\n", optarg);
                return 2;
            }
            extra[n_extra++] = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (r < 0) {
            fprintf(stderr, "cohort-passthrough: bad value '%s' (see --help)\n", optarg);
            return 2;
        }
    }
    if (!brokers) {
        fprintf(stderr, "cohort-passthrough: --brokers is required\n");
        usage(stderr);
        return 2;
    }

    settings_t cs = {0}, ps = {0};
    add_setting(&cs, "bootstrap.servers", brokers);
    add_setting(&ps, "bootstrap.servers", brokers);
    for (size_t i = 0; i < N_CONSUMER_DEFAULTS; i++) {
        add_setting(&cs, consumer_defaults[i][0], consumer_defaults[i][1]);
    }
    for (size_t i = 0; i < N_PRODUCER_DEFAULTS; i++) {
        add_setting(&ps, producer_defaults[i][0], producer_defaults[i][1]);
    }
    if (group) {
        add_setting(&cs, "group.id", group);
    }
    for (size_t i = 0; i < n_extra; i++) {
        char *eq = strchr(extra[i], '=');
        *eq = '\0';
        const char *k = extra[i], *v = eq + 1;
        int r = 0;
        if (strncmp(k, "consumer.", 9) == 0) {
            r = add_setting(&cs, k + 9, v);
        } else if (strncmp(k, "producer.", 9) == 0) {
            r = add_setting(&ps, k + 9, v);
        } else {
            r = add_setting(&cs, k, v) < 0 ? -E2BIG : add_setting(&ps, k, v);
        }
        if (r < 0) {
            fprintf(stderr, "cohort-passthrough: too many -X settings\n");
            return 2;
        }
    }

    pt_t p = {.ring_cap = (size_t)inflight};
    p.ring = calloc(p.ring_cap, sizeof(*p.ring));
    ch_msg_t *msgs = calloc((size_t)batch, sizeof(*msgs));
    size_t pad_len = (size_t)(profile_bytes > risk_bytes ? profile_bytes : risk_bytes);
    unsigned char *pad = malloc(pad_len ? pad_len : 1);
    if (!p.ring || !msgs || !pad) {
        fprintf(stderr, "cohort-passthrough: out of memory\n");
        return 1;
    }
    char err[512];
    ch_kafka_conf_t pkc = {.keys = ps.keys, .values = ps.vals, .n = ps.n};
    if (ch_producer_new(&pkc, on_delivery, &p, &p.producer, err, sizeof(err)) < 0) {
        fprintf(stderr, "cohort-passthrough: %s\n", err);
        return 1;
    }
    ch_kafka_conf_t ckc = {.keys = cs.keys, .values = cs.vals, .n = cs.n};
    if (ch_consumer_new(&ckc, topic, NULL, &p.consumer, err, sizeof(err)) < 0) {
        fprintf(stderr, "cohort-passthrough: %s\n", err);
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    int rc = 0;
    while (!stop_flag) {
        int n = 0;
        if (p.ring_count < p.ring_cap) {
            n = ch_consumer_drain(p.consumer, msgs, (size_t)batch);
        }
        if (n > 0) {
            batch_t *b = ring_at(&p, p.ring_count++);
            b->outstanding = 0;
            b->sealed = b->failed = false;
            b->n_parts = 0;
            for (int i = 0; i < n && rc == 0; i++) {
                const ch_msg_t *m = &msgs[i];
                if (m->err) {
                    fprintf(stderr, "cohort-passthrough: kafka: %s\n",
                            m->errstr ? m->errstr : "error");
                    rc = m->err_fatal ? 1 : 0;
                    continue;
                }
                p.consumed++;
                if (track_offset(b, m->partition, m->offset) < 0 ||
                    send_one(&p, b, profile_topic, m, (size_t)profile_bytes, pad) < 0 ||
                    send_one(&p, b, risk_topic, m, (size_t)risk_bytes, pad) < 0) {
                    rc = 1;
                }
            }
            b->sealed = true;
            if (rc) {
                break;
            }
        }
        ch_producer_poll(p.producer);
        advance(&p);
        if (events > 0 && (double)p.consumed >= events && p.ring_count == 0) {
            break;
        }
        if (n < (int)batch) {
            struct pollfd fds[2] = {{ch_consumer_fd(p.consumer), POLLIN, 0},
                                    {ch_producer_fd(p.producer), POLLIN, 0}};
            poll(fds, 2, 100);
        }
    }
    if (ch_producer_flush(p.producer, 30000) < 0) {
        rc = 1;
    }
    advance(&p);
    if (ch_consumer_close(p.consumer, 10000, err, sizeof(err)) < 0) {
        fprintf(stderr, "cohort-passthrough: close: %s\n", err);
    }
    printf("{\"events\": %" PRIu64 ", \"outputs\": %" PRIu64 ", \"acknowledged\": %" PRIu64
           ", \"failed\": %" PRIu64 ", \"cpu_seconds\": %.3f}\n",
           p.consumed, p.produced, p.acked, p.failed, cpu_seconds());
    if (p.failed) {
        rc = 1;
    }
    ch_consumer_free(p.consumer);
    ch_producer_free(p.producer);
    for (size_t i = 0; i < p.ring_cap; i++) {
        free(p.ring[i].parts);
    }
    free(p.ring);
    free(msgs);
    free(pad);
    return rc;
}
