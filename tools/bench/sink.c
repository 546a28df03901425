/*
 * cohort-bench-sink - end-to-end latency of an output topic, for tools/bench.
 *
 * cohort-gen --stamp writes the send time into each event id (t<unix us>-<i>).
 * Both cohortd (risk updates carry the event id) and cohort-passthrough (its
 * records start with the event) pass it through; this consumer reads it back from
 * every output record and records now - sent in an HDR-style histogram.
 *
 * Design notes
 * - Histogram: log-linear buckets, exact below 128 us and 64 sub-buckets per
 *   power of two above, so any recorded value is known to within 1/64 (1.6%),
 *   with a fixed 4,096-slot array and O(1) recording.
 *   Percentiles report the bucket's highest equivalent value, as HdrHistogram.
 * - Records are Confluent-framed Avro. --format event: the event id is the first
 *   field (user_event, and cohort-passthrough's copies of it); --format risk: the
 *   second, a ["null","string"] union after user_id (risk_update). A record without
 *   a stamp is counted as unstamped, never guessed at.
 * - It prints "ready" on stdout once partitions are assigned (start the load
 *   after that), then one JSON object when --duration has passed.
 */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ch/kafka.h"
#include "tool_common.h"

#define SUB_BITS 7
#define HALF (1 << (SUB_BITS - 1))
#define N_SLOTS 4096

typedef struct hist {
    uint64_t counts[N_SLOTS];
    uint64_t total;
    int64_t min, max;
    double sum;
} hist_t;

static size_t slot_of(int64_t v) {
    uint64_t x = (uint64_t)v;
    int m = 63 - __builtin_clzll(x | ((1u << SUB_BITS) - 1)) - (SUB_BITS - 1);
    size_t idx = (size_t)m * HALF + (size_t)(x >> m);
    return idx < N_SLOTS ? idx : N_SLOTS - 1;
}

/* Lowest and highest value that map to a slot. */
static void slot_range(size_t idx, int64_t *lo, int64_t *hi) {
    size_t m = idx < (size_t)(2 * HALF) ? 0 : idx / HALF - 1;
    uint64_t sub = idx - m * HALF;
    *lo = (int64_t)(sub << m);
    *hi = (int64_t)(((sub + 1) << m) - 1);
}

static void hist_record(hist_t *h, int64_t v) {
    if (v < 0) {
        v = 0; /* clocks of one host: only scheduling jitter can make this negative */
    }
    h->counts[slot_of(v)]++;
    if (h->total == 0 || v < h->min) {
        h->min = v;
    }
    if (v > h->max) {
        h->max = v;
    }
    h->total++;
    h->sum += (double)v;
}

static int64_t hist_quantile(const hist_t *h, double q) {
    if (h->total == 0) {
        return 0;
    }
    uint64_t want = (uint64_t)ceil(q * (double)h->total);
    want = want < 1 ? 1 : want;
    uint64_t acc = 0;
    for (size_t i = 0; i < N_SLOTS; i++) {
        acc += h->counts[i];
        if (acc >= want) {
            int64_t lo, hi;
            slot_range(i, &lo, &hi);
            return hi < h->max ? hi : h->max;
        }
    }
    return h->max;
}

static volatile sig_atomic_t stop_flag;
static bool assigned;

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void on_assign(void *opaque, const int32_t *partitions, size_t n) {
    (void)opaque;
    (void)partitions;
    if (n > 0 && !assigned) {
        assigned = true;
        printf("ready\n");
        fflush(stdout);
    }
}

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Avro long (zigzag varint). @returns bytes read, 0 on malformed input. */
static size_t read_long(const unsigned char *p, size_t len, int64_t *out) {
    uint64_t v = 0;
    for (size_t i = 0; i < len && i < 10; i++) {
        v |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1);
            return i + 1;
        }
    }
    return 0;
}

/* The send time stamped into the event id. @returns 0 or -1 (no stamp). */
static int read_stamp(const unsigned char *p, size_t len, bool risk, int64_t *sent_us) {
    if (len < 5 || p[0] != 0) {
        return -1;
    }
    size_t off = 5;
    for (int f = 0;; f++) {
        int64_t slen;
        size_t n;
        if (risk && f == 1) { /* the union branch: 1 = string */
            int64_t branch;
            if ((n = read_long(p + off, len - off, &branch)) == 0 || branch != 1) {
                return -1;
            }
            off += n;
        }
        n = read_long(p + off, len - off, &slen);
        if (n == 0 || slen < 0 || (uint64_t)slen > len - off - n) {
            return -1;
        }
        off += n;
        if (f == (risk ? 1 : 0)) {
            const unsigned char *s = p + off;
            if (slen < 2 || s[0] != 't') {
                return -1;
            }
            int64_t v = 0;
            int64_t i = 1;
            for (; i < slen && s[i] >= '0' && s[i] <= '9' && i < 18; i++) {
                v = v * 10 + (s[i] - '0');
            }
            if (i == 1 || i >= slen || s[i] != '-') {
                return -1;
            }
            *sent_us = v;
            return 0;
        }
        off += (size_t)slen;
    }
}

static void usage(FILE *f) {
    fprintf(f,
            "Usage: cohort-bench-sink --brokers HOST:PORT --topic T [OPTIONS]\n"
            "Measure end-to-end latency from cohort-gen --stamp send times to arrival here.\n\n"
            "  -b, --brokers LIST    Kafka bootstrap servers (required)\n"
            "  -t, --topic NAME      output topic to read (required)\n"
            "  -f, --format F        risk (default: risk_update records) or event (user_event\n"
            "                        records, as cohort-passthrough copies them)\n"
            "  -d, --duration S      seconds to measure after the first stamped record\n"
            "                        (default 10)\n"
            "  -w, --warmup S        ignore records sent in the first S seconds (default 2)\n"
            "  -T, --timeout S       give up if no stamped record arrives in S s (default 60)\n"
            "  -X KEY=VALUE          librdkafka consumer setting (e.g. fetch.wait.max.ms=5)\n"
            "  -h, --help            this help\n"
            "Prints \"ready\" once partitions are assigned, then one JSON object (microseconds).\n");
}

int main(int argc, char **argv) {
    const char *brokers = NULL, *topic = NULL;
    double duration = 10, warmup = 2, timeout = 60;
    bool risk = true;
    const char *keys[40], *vals[40];
    size_t n = 0;
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'},  {"topic", required_argument, NULL, 't'},
        {"format", required_argument, NULL, 'f'},   {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},   {"timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    char group[64];
    snprintf(group, sizeof(group), "cohort-bench-sink-%ld", (long)now_us());
    keys[n] = "group.id", vals[n++] = group;
    keys[n] = "auto.offset.reset", vals[n++] = "latest";
    keys[n] = "enable.auto.commit", vals[n++] = "false";
    keys[n] = "enable.partition.eof", vals[n++] = "false";
    int opt;
    while ((opt = getopt_long(argc, argv, "b:t:f:d:w:T:X:h", opts, NULL)) != -1) {
        int r = 0;
        switch (opt) {
        case 'b':
            brokers = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'f':
            if (strcmp(optarg, "risk") != 0 && strcmp(optarg, "event") != 0) {
                fprintf(stderr, "cohort-bench-sink: --format takes risk or event\n");
                return 2;
            }
            risk = strcmp(optarg, "risk") == 0;
            break;
        case 'T':
            r = tool_parse_number(optarg, 1, 86400, &timeout);
            break;
        case 'd':
            r = tool_parse_number(optarg, 0.1, 86400, &duration);
            break;
        case 'w':
            r = tool_parse_number(optarg, 0, 86400, &warmup);
            break;
        case 'X': {
            char *eq = strchr(optarg, '=');
            if (!eq || n + 1 >= sizeof(keys) / sizeof(keys[0])) {
                fprintf(stderr, "cohort-bench-sink: -X takes KEY=VALUE, got '%s'\n", optarg);
                return 2;
            }
            *eq = '\0';
            keys[n] = optarg, vals[n++] = eq + 1;
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
            fprintf(stderr, "cohort-bench-sink: bad value '%s' (see --help)\n", optarg);
            return 2;
        }
    }
    if (!brokers || !topic) {
        fprintf(stderr, "cohort-bench-sink: --brokers and --topic are required\n");
        usage(stderr);
        return 2;
    }
    keys[n] = "bootstrap.servers", vals[n++] = brokers;
    ch_kafka_conf_t kc = {.keys = keys, .values = vals, .n = n};
    ch_rebalance_hooks_t hooks = {.on_assign = on_assign};
    ch_consumer_t *c = NULL;
    char err[512];
    if (ch_consumer_new(&kc, topic, &hooks, &c, err, sizeof(err)) < 0) {
        fprintf(stderr, "cohort-bench-sink: %s\n", err);
        return 1;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    static hist_t h;
    static ch_msg_t msgs[1000];
    uint64_t records = 0, unstamped = 0, warm = 0;
    int64_t first_sent = -1;
    double t_first = 0, t_start = tool_now_s();
    int rc = 0;
    while (!stop_flag) {
        int got = ch_consumer_drain(c, msgs, 1000);
        int64_t now = now_us();
        for (int i = 0; i < got; i++) {
            if (msgs[i].err) {
                continue;
            }
            records++;
            int64_t sent;
            if (read_stamp(msgs[i].value, msgs[i].value_len, risk, &sent) < 0) {
                unstamped++;
                continue;
            }
            if (first_sent < 0) {
                first_sent = sent;
                t_first = tool_now_s();
            }
            if ((double)(sent - first_sent) < warmup * 1e6) {
                warm++;
                continue;
            }
            hist_record(&h, now - sent);
        }
        if (first_sent >= 0 && tool_now_s() - t_first >= warmup + duration) {
            break;
        }
        if (first_sent < 0 && tool_now_s() - t_start >= timeout) {
            fprintf(stderr, "cohort-bench-sink: no stamped record in %.0f s (%" PRIu64
                            " records read)\n", timeout, records);
            rc = 1;
            break;
        }
        if (got < 1000) {
            struct pollfd pfd = {ch_consumer_fd(c), POLLIN, 0};
            poll(&pfd, 1, 50);
        }
    }
    ch_consumer_close(c, 5000, err, sizeof(err));
    ch_consumer_free(c);
    printf("{\"unit\": \"us\", \"records\": %" PRIu64 ", \"unstamped\": %" PRIu64
           ", \"warmup_records\": %" PRIu64 ", \"count\": %" PRIu64 ", \"min\": %" PRId64
           ", \"mean\": %.1f, \"p50\": %" PRId64 ", \"p90\": %" PRId64 ", \"p99\": %" PRId64
           ", \"p999\": %" PRId64 ", \"max\": %" PRId64 ", \"buckets\": [",
           records, unstamped, warm, h.total, h.min, h.total ? h.sum / (double)h.total : 0.0,
           hist_quantile(&h, 0.5), hist_quantile(&h, 0.9), hist_quantile(&h, 0.99),
           hist_quantile(&h, 0.999), h.max);
    bool first = true;
    for (size_t i = 0; i < N_SLOTS; i++) {
        if (h.counts[i]) {
            int64_t lo, hi;
            slot_range(i, &lo, &hi);
            printf("%s[%" PRId64 ", %" PRIu64 "]", first ? "" : ", ", hi, h.counts[i]);
            first = false;
        }
    }
    printf("]}\n");
    return rc;
}
