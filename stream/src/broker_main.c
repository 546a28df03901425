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
 * SIGINT or SIGTERM and exits 0.
 */
#include <errno.h>
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "Usage: cohort-broker [OPTIONS]\n"
            "Run an embedded Kafka-protocol broker (librdkafka mock cluster) on 127.0.0.1.\n"
            "Prints the bootstrap servers as the first line on stdout, then serves until\n"
            "SIGINT/SIGTERM.\n\n"
            "  -b, --brokers N        number of brokers (default 1)\n"
            "  -p, --partitions P     partitions per topic (default 4)\n"
            "  -t, --topics a,b:N,... topics to create, b with N partitions (default\n"
            "                         events,profiles,risk,cohortd-dlq)\n"
            "  -h, --help             this help\n\n"
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

int main(int argc, char **argv) {
    int brokers = 1, partitions = 4;
    const char *topics = "events,profiles,risk,cohortd-dlq";
    static const struct option opts[] = {{"brokers", required_argument, NULL, 'b'},
                                         {"partitions", required_argument, NULL, 'p'},
                                         {"topics", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "b:p:t:h", opts, NULL)) != -1) {
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
        int sig = 0;
        sigwait(&stop, &sig);
        fprintf(stderr, "cohort-broker: %s, stopping\n", strsignal(sig));
    }
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
