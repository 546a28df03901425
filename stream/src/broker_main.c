/*
 * cohort-broker - an embedded Kafka-protocol broker for demos and tests.
 *
 * Built on librdkafka's mock cluster: real Kafka protocol on 127.0.0.1
 * (consumer groups, idempotent and transactional producers), usable by any
 * Kafka client. Limits that production Kafka does not have: it keeps only the
 * last 5 MiB (or 100,000 batches) per partition, does not compact, and has
 * no CreateTopics API, so topics are created here, up front.
 *
 * Prints the bootstrap servers as its first stdout line, then serves until
 * SIGINT or SIGTERM and exits 0. With --control it also reads fault commands from
 * stdin, one per line, and answers each with one stdout line ("ok" or "error: ..."):
 * what the integration tests use to take brokers down, delay them, make requests
 * fail with chosen error codes, and move leaders and coordinators.
 */
#include <errno.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/signalfd.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f, "Usage: cohort-broker [OPTIONS]\n"
               "Run an embedded Kafka-protocol broker (librdkafka mock cluster) on 127.0.0.1.\n"
               "Prints the bootstrap servers as the first line on stdout, then serves until\n"
               "SIGINT/SIGTERM.\n\n"
               "  -b, --brokers N        number of brokers (default 1)\n"
               "  -p, --partitions P     partitions per topic (default 4)\n"
               "  -t, --topics a,b:N,... topics to create, b with N partitions (default\n"
               "                         events,profiles,risk,cohortd-dlq)\n"
               "  -c, --control          read fault commands from stdin (below), answering\n"
               "                         each with one line: ok, or error: <why>\n"
               "  -h, --help             this help\n\n"
               "Fault commands (BROKER: an id from 1, or all; ERR: a Kafka error name such as\n"
               "NOT_ENOUGH_REPLICAS or _TRANSPORT, or its number; API: a request name such as\n"
               "Produce, OffsetCommit, JoinGroup, or its key):\n"
               "  down BROKER | up BROKER          refuse / accept connections again\n"
               "  rtt BROKER MS                    delay every response by MS\n"
               "  errors API ERR[*N]...            the next requests of API (any broker) fail\n"
               "  broker-errors BROKER API ERR[@MS]...  same on one broker, each delayed MS\n"
               "  clear API                        forget pending errors of API\n"
               "  leader TOPIC PARTITION BROKER    move a partition's leadership\n"
               "  coordinator group|transaction ID BROKER  move a coordinator\n\n"
               "Limits: keeps only the last 5 MiB per partition, no compaction, no\n"
               "CreateTopics API (create topics here). Stream tests; do not backfill.\n");
}

static int parse_int(const char *s, int lo, int hi, int *ret) {
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        return -EINVAL;
    }
    *ret = (int)v;
    return 0;
}

static const struct {
    const char *name;
    int16_t key;
} apis[] = {{"Produce", 0},          {"Fetch", 1},
            {"ListOffsets", 2},      {"Metadata", 3},
            {"OffsetCommit", 8},     {"OffsetFetch", 9},
            {"FindCoordinator", 10}, {"JoinGroup", 11},
            {"Heartbeat", 12},       {"LeaveGroup", 13},
            {"SyncGroup", 14},       {"ApiVersions", 18},
            {"InitProducerId", 22},  {"AddPartitionsToTxn", 24},
            {"AddOffsetsToTxn", 25}, {"EndTxn", 26},
            {"TxnOffsetCommit", 28}};

static int parse_api(const char *s, int16_t *ret) {
    for (size_t i = 0; i < sizeof(apis) / sizeof(apis[0]); i++) {
        if (strcasecmp(s, apis[i].name) == 0) {
            *ret = apis[i].key;
            return 0;
        }
    }
    int v;
    if (parse_int(s, 0, 100, &v) < 0) {
        return -EINVAL;
    }
    *ret = (int16_t)v;
    return 0;
}

static int parse_err(const char *s, rd_kafka_resp_err_t *ret) {
    const struct rd_kafka_err_desc *d = NULL;
    size_t n = 0;
    rd_kafka_get_err_descs(&d, &n);
    for (size_t i = 0; i < n; i++) {
        if (d[i].name && strcasecmp(s, d[i].name) == 0) {
            *ret = d[i].code;
            return 0;
        }
    }
    int v;
    if (parse_int(s, -200, 200, &v) < 0) {
        return -EINVAL;
    }
    *ret = (rd_kafka_resp_err_t)v;
    return 0;
}

static int parse_broker(const char *s, int brokers, int32_t *ret) {
    int v;
    if (strcmp(s, "all") == 0) {
        *ret = -1;
        return 0;
    }
    if (parse_int(s, 1, brokers, &v) < 0) {
        return -EINVAL;
    }
    *ret = v;
    return 0;
}

/* Run one fault command; the answer goes to out. */
static void command(rd_kafka_mock_cluster_t *mc, int brokers, char *line, char *out, size_t len) {
    char *w[40];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(line, " \t\r\n", &save); t && n < 40;
         t = strtok_r(NULL, " \t\r\n", &save)) {
        w[n++] = t;
    }
    int32_t b = 0;
    int16_t api = 0;
    int ms = 0;
    rd_kafka_resp_err_t e = 0, errs[1];
    snprintf(out, len, "ok");
    if (n == 0) {
        snprintf(out, len, "error: empty command");
    } else if ((strcmp(w[0], "down") == 0 || strcmp(w[0], "up") == 0) && n == 2 &&
               parse_broker(w[1], brokers, &b) == 0) {
        e = w[0][0] == 'd' ? rd_kafka_mock_broker_set_down(mc, b)
                           : rd_kafka_mock_broker_set_up(mc, b);
    } else if (strcmp(w[0], "rtt") == 0 && n == 3 && parse_broker(w[1], brokers, &b) == 0 &&
               parse_int(w[2], 0, 3600000, &ms) == 0) {
        e = rd_kafka_mock_broker_set_rtt(mc, b, ms);
    } else if (strcmp(w[0], "errors") == 0 && n >= 3 && parse_api(w[1], &api) == 0) {
        for (int i = 2; i < n; i++) { /* ERR or ERR*N (N times) */
            char *star = strchr(w[i], '*');
            int times = 1;
            if (star) {
                *star = '\0';
            }
            if (parse_err(w[i], &errs[0]) < 0 ||
                (star && parse_int(star + 1, 1, 100000, &times) < 0)) {
                snprintf(out, len, "error: bad error '%s'", w[i]);
                return;
            }
            for (int k = 0; k < times; k++) {
                rd_kafka_mock_push_request_errors_array(mc, api, 1, errs);
            }
        }
    } else if (strcmp(w[0], "broker-errors") == 0 && n >= 4 &&
               parse_broker(w[1], brokers, &b) == 0 && b > 0 && parse_api(w[2], &api) == 0) {
        for (int i = 3; i < n && !e; i++) {
            char *at = strchr(w[i], '@');
            ms = 0;
            if (at) {
                *at = '\0';
            }
            if (parse_err(w[i], &errs[0]) < 0 || (at && parse_int(at + 1, 0, 3600000, &ms) < 0)) {
                snprintf(out, len, "error: bad error '%s'", w[i]);
                return;
            }
            e = rd_kafka_mock_broker_push_request_error_rtts(mc, b, api, 1, errs[0], ms);
        }
    } else if (strcmp(w[0], "clear") == 0 && n == 2 && parse_api(w[1], &api) == 0) {
        rd_kafka_mock_clear_request_errors(mc, api);
    } else if (strcmp(w[0], "leader") == 0 && n == 4 && parse_int(w[2], 0, 100000, &ms) == 0 &&
               parse_broker(w[3], brokers, &b) == 0 && b > 0) {
        e = rd_kafka_mock_partition_set_leader(mc, w[1], ms, b);
    } else if (strcmp(w[0], "coordinator") == 0 && n == 4 &&
               (strcmp(w[1], "group") == 0 || strcmp(w[1], "transaction") == 0) &&
               parse_broker(w[3], brokers, &b) == 0 && b > 0) {
        e = rd_kafka_mock_coordinator_set(mc, w[1], w[2], b);
    } else {
        snprintf(out, len, "error: unknown or malformed command '%s' (see --help)", w[0]);
        return;
    }
    if (e) {
        snprintf(out, len, "error: %s", rd_kafka_err2str(e));
    }
}

/* Serve until SIGINT/SIGTERM, running fault commands from stdin if control. */
static int serve(rd_kafka_mock_cluster_t *mc, int brokers, const sigset_t *stop, bool control) {
    int sfd = signalfd(-1, stop, SFD_CLOEXEC);
    if (sfd < 0) {
        fprintf(stderr, "cohort-broker: signalfd: %s\n", strerror(errno));
        return 1;
    }
    char line[4096];
    size_t have = 0;
    bool in_open = control;
    for (;;) {
        struct pollfd fds[2] = {{sfd, POLLIN, 0}, {STDIN_FILENO, POLLIN, 0}};
        if (poll(fds, in_open ? 2 : 1, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            fprintf(stderr, "cohort-broker: poll: %s\n", strerror(errno));
            close(sfd);
            return 1;
        }
        if (fds[0].revents) {
            struct signalfd_siginfo si;
            if (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                fprintf(stderr, "cohort-broker: %s, stopping\n", strsignal((int)si.ssi_signo));
                close(sfd);
                return 0;
            }
        }
        if (in_open && fds[1].revents) {
            ssize_t r = read(STDIN_FILENO, line + have, sizeof(line) - 1 - have);
            if (r <= 0) {
                in_open = false; /* stdin closed: serve on, without commands */
                continue;
            }
            have += (size_t)r;
            char *nl;
            while ((nl = memchr(line, '\n', have)) != NULL) {
                *nl = '\0';
                char out[512];
                command(mc, brokers, line, out, sizeof(out));
                printf("%s\n", out);
                fflush(stdout);
                have -= (size_t)(nl + 1 - line);
                memmove(line, nl + 1, have);
            }
            if (have == sizeof(line) - 1) {
                printf("error: command longer than %zu bytes\n", sizeof(line) - 2);
                fflush(stdout);
                have = 0;
            }
        }
    }
}

int main(int argc, char **argv) {
    int brokers = 1, partitions = 4;
    bool control = false;
    const char *topics = "events,profiles,risk,cohortd-dlq";
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'}, {"partitions", required_argument, NULL, 'p'},
        {"topics", required_argument, NULL, 't'},  {"control", no_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "b:p:t:ch", opts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            if (parse_int(optarg, 1, 16, &brokers) < 0) {
                fprintf(stderr, "cohort-broker: --brokers takes 1..16, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'p':
            if (parse_int(optarg, 1, 1000, &partitions) < 0) {
                fprintf(stderr, "cohort-broker: --partitions takes 1..1000, got '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 't':
            topics = optarg;
            break;
        case 'c':
            control = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cohort-broker: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    /* Block the stop signals before librdkafka starts threads, then wait for them. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);

    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", NULL, 0);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "cohort-broker: %s\n", err);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "cohort-broker: could not start the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    int rc = 0;
    char *list = strdup(topics);
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        int n = partitions; /* name:N gives one topic its own partition count */
        char *colon = strchr(t, ':');
        if (colon) {
            *colon = '\0';
            n = atoi(colon + 1);
        }
        rd_kafka_resp_err_t re = n > 0 ? rd_kafka_mock_topic_create(mc, t, n, 1)
                                       : RD_KAFKA_RESP_ERR__INVALID_ARG;
        if (re) {
            fprintf(stderr, "cohort-broker: create topic %s: %s\n", t, rd_kafka_err2str(re));
            rc = 1;
        }
    }
    free(list);
    if (rc == 0) {
        printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
        fflush(stdout);
        fprintf(stderr, "cohort-broker: %d broker(s), topics %s with %d partitions; Ctrl-C stops\n",
                brokers, topics, partitions);
        rc = serve(mc, brokers, &stop, control);
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
