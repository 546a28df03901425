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
 *   (budgeted drains of --batch events, up to --inflight unacknowledged batches),
 *   the same delivery tracker (ch/tracker.h) and the same librdkafka settings
 *   (ch/kafka_settings.h: cohortd's defaults, then -X as cohortd's kafka.* keys),
 *   so the ceiling cannot drift from what it mirrors.
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
#include "ch/kafka_settings.h"
#include "ch/tracker.h"
#include "tool_args.h"

#define MAX_SETTINGS 64

typedef struct pt {
    ch_consumer_t *consumer;
    ch_producer_t *producer;
    ch_tracker_t *tracker;
    uint64_t consumed, produced, acked, failed;
} pt_t;

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void on_delivery(void *opaque, void *msg_opaque, int32_t partition, int64_t offset, int err,
                        const char *errstr) {
    (void)partition;
    (void)offset;
    pt_t *p = opaque;
    ch_tracker_acked(msg_opaque, !err);
    if (err) {
        if (p->failed++ < 5) {
            fprintf(stderr, "cohort-passthrough: delivery failed: %s\n", errstr);
        }
        stop_flag = 1;
    } else {
        p->acked++;
    }
}

static void store(void *opaque, int32_t partition, int64_t next_offset) {
    pt_t *p = opaque;
    char err[256];
    (void)ch_consumer_store(p->consumer, partition, next_offset, err,
                            sizeof(err)); /* revoked: the new owner redoes it */
}

/* Store the offsets of the oldest batches whose outputs are all acknowledged. */
static void advance(pt_t *p) {
    ch_tracker_advance(p->tracker, store, p);
}

static int send_one(pt_t *p, ch_tracked_t *b, const char *topic, const ch_msg_t *m, size_t want,
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
        int r = ch_producer_send(p->producer, topic, -1, m->key, m->key_len, value, len, NULL, 0, b,
                                 0, err, sizeof(err));
        if (r == -ENOBUFS) { /* local queue full: serve acknowledgements, then retry */
            ch_producer_flush(p->producer, 10);
            advance(p);
            continue;
        }
        if (r < 0) {
            fprintf(stderr, "cohort-passthrough: %s\n", err);
            return r;
        }
        ch_tracker_sent(b);
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

int main(int argc, char **argv) {
    const char *brokers = NULL, *topic = "events", *group = NULL;
    const char *profile_topic = "profiles", *risk_topic = "risk";
    double profile_bytes = 0, risk_bytes = 0, batch = 1000, inflight = 32, events = 0;
    ch_kafka_setting_t user[MAX_SETTINGS];
    size_t n_user = 0;
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
        case 'X': {
            char *eq = strchr(optarg, '=');
            if (!eq || n_user + 2 >= MAX_SETTINGS) {
                fprintf(stderr, "cohort-passthrough: -X takes KEY=VALUE (at most %d), got '%s'\n",
                        MAX_SETTINGS - 2, optarg);
                return 2;
            }
            *eq = '\0';
            ch_kafka_setting_t *st = &user[n_user++];
            *st = (ch_kafka_setting_t){optarg, eq + 1, CH_KAFKA_BOTH};
            if (strncmp(optarg, "consumer.", 9) == 0) {
                *st = (ch_kafka_setting_t){optarg + 9, eq + 1, CH_KAFKA_CONSUMER};
            } else if (strncmp(optarg, "producer.", 9) == 0) {
                *st = (ch_kafka_setting_t){optarg + 9, eq + 1, CH_KAFKA_PRODUCER};
            }
            break;
        }
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

    /* brokers and the group first, so that -X can still override them */
    memmove(user + 2, user, n_user * sizeof(*user));
    user[0] = (ch_kafka_setting_t){"bootstrap.servers", brokers, CH_KAFKA_BOTH};
    user[1] = (ch_kafka_setting_t){"group.id", group ? group : "cohort-passthrough",
                                   CH_KAFKA_CONSUMER};
    n_user += 2;

    pt_t p = {0};
    ch_msg_t *msgs = calloc((size_t)batch, sizeof(*msgs));
    size_t pad_len = (size_t)(profile_bytes > risk_bytes ? profile_bytes : risk_bytes);
    unsigned char *pad = malloc(pad_len ? pad_len : 1);
    if (ch_tracker_new((size_t)inflight, &p.tracker) < 0 || !msgs || !pad) {
        fprintf(stderr, "cohort-passthrough: out of memory\n");
        return 1;
    }
    char err[512];
    const char **keys = NULL, **vals = NULL;
    size_t n_conf = 0;
    if (ch_kafka_settings_build(CH_KAFKA_PRODUCER, user, n_user, &keys, &vals, &n_conf) < 0) {
        fprintf(stderr, "cohort-passthrough: out of memory\n");
        return 1;
    }
    ch_kafka_conf_t pkc = {.keys = keys, .values = vals, .n = n_conf};
    int made = ch_producer_new(&pkc, on_delivery, &p, &p.producer, err, sizeof(err));
    free(keys);
    free(vals);
    if (made < 0) {
        fprintf(stderr, "cohort-passthrough: %s\n", err);
        return 1;
    }
    if (ch_kafka_settings_build(CH_KAFKA_CONSUMER, user, n_user, &keys, &vals, &n_conf) < 0) {
        fprintf(stderr, "cohort-passthrough: out of memory\n");
        return 1;
    }
    ch_kafka_conf_t ckc = {.keys = keys, .values = vals, .n = n_conf};
    made = ch_consumer_new(&ckc, topic, NULL, &p.consumer, err, sizeof(err));
    free(keys);
    free(vals);
    if (made < 0) {
        fprintf(stderr, "cohort-passthrough: %s\n", err);
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    int rc = 0;
    while (!stop_flag) {
        int n = 0;
        if (ch_tracker_has_room(p.tracker)) {
            n = ch_consumer_drain(p.consumer, msgs, (size_t)batch);
        }
        if (n > 0) {
            ch_tracked_t *b = ch_tracker_open(p.tracker);
            for (int i = 0; i < n && rc == 0; i++) {
                const ch_msg_t *m = &msgs[i];
                if (m->err) {
                    fprintf(stderr, "cohort-passthrough: kafka: %s\n",
                            m->errstr ? m->errstr : "error");
                    rc = m->err_fatal ? 1 : 0;
                    continue;
                }
                p.consumed++;
                if (ch_tracker_consumed(b, m->partition, m->offset) < 0 ||
                    send_one(&p, b, profile_topic, m, (size_t)profile_bytes, pad) < 0 ||
                    send_one(&p, b, risk_topic, m, (size_t)risk_bytes, pad) < 0) {
                    rc = 1;
                }
            }
            ch_tracker_seal(b);
            if (rc) {
                break;
            }
        }
        ch_producer_poll(p.producer);
        advance(&p);
        if (events > 0 && (double)p.consumed >= events && ch_tracker_inflight(p.tracker) == 0) {
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
    ch_tracker_free(p.tracker);
    free(msgs);
    free(pad);
    return rc;
}
