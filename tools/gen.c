/*
 * cohort-gen - synthetic user events with planted behaviour groups.
 *
 * Each user belongs to one of --groups behaviour groups, or (with probability
 * --anomalous) to an anomalous, fraud-like minority. A group fixes the mix of
 * event types, the amount distribution (log-normal) and how active its users
 * are. Output is a pure function of the options (seeded xorshift), so a run can
 * be reproduced exactly; --labels writes user_id,group for evaluation.
 *
 * Event time: with --step-ms, event i is stamped start + i*step (deterministic);
 * otherwise with the wall clock.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tool_common.h"

static const char *const types[] = {"view", "cart", "purchase", "login", "payment", "refund"};
#define N_TYPES 6

typedef struct group {
    double mix[N_TYPES]; /* probabilities of each type */
    double mu, sigma;    /* log-normal amount */
    double activity;     /* relative event rate of its users */
} group_t;

/* Four archetypes; further groups are seeded perturbations of them. */
static const group_t archetypes[4] = {
    {{0.90, 0.08, 0.02, 0, 0, 0}, 3.0, 0.5, 1.0},     /* browsers */
    {{0.45, 0.25, 0.30, 0, 0, 0}, 4.2, 0.4, 0.6},     /* buyers */
    {{0, 0, 0, 0.15, 0.80, 0.05}, 3.5, 0.6, 0.8},     /* card payers */
    {{0.10, 0, 0, 0.40, 0.50, 0}, 2.3, 0.1, 0.3},     /* subscribers */
};
static const group_t anomalous = {{0, 0, 0, 0.20, 0.70, 0.10}, 6.0, 0.8, 3.0};

static uint64_t rng_state;

static uint64_t rnd(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static double unif(void) {
    return (double)(rnd() >> 11) * 0x1.0p-53;
}

static double gauss(void) {
    double u = unif(), v = unif();
    return sqrt(-2.0 * log(u > 0 ? u : 1e-300)) * cos(2 * M_PI * v);
}

static void usage(FILE *f) {
    fprintf(f,
            "Usage: cohort-gen --brokers HOST:PORT [OPTIONS]\n"
            "Produce synthetic user events with planted behaviour groups (Avro, keyed by user).\n\n"
            "  -b, --brokers LIST    Kafka bootstrap servers (required)\n"
            "  -t, --topic NAME      topic (default events)\n"
            "  -u, --users N         distinct users (default 10000)\n"
            "  -n, --events N        events to send (default 0: until Ctrl-C)\n"
            "  -r, --rate N          events/s (default 0: as fast as possible)\n"
            "  -s, --seed N          random seed (default 1)\n"
            "  -g, --groups N        behaviour groups (default 4)\n"
            "  -a, --anomalous P     share of anomalous users (default 0.02)\n"
            "      --step-ms MS      event-time step per event (default: wall clock)\n"
            "      --start-ts MS     event time of the first event with --step-ms\n"
            "                        (default 1767225600000 = 2026-01-01)\n"
            "      --bad-every N     make every Nth message malformed (default 0: never)\n"
            "      --labels FILE     write user_id,group (-1 = anomalous) for every user\n"
            "      --drift-at N      from event N on, every group drifts: its event mix moves\n"
            "                        halfway to the next group's and its amounts scale by e\n"
            "                        (even groups) or 1/e (odd); users keep their group\n"
            "      --framing F       confluent (default) or plain\n"
            "      --cover           the first --users events visit every user once, in order\n"
            "                        (so N users exist after N events), then users are drawn\n"
            "      --user-base N     user ids start at uN (default 0), to extend a population\n"
            "      --stamp           event ids carry the send time: t<unix microseconds>-<i>\n"
            "                        (cohort-bench-sink measures end-to-end latency from it)\n"
            "  -q, --quiet           no progress lines\n"
            "  -h, --help            this help\n");
}

int main(int argc, char **argv) {
    const char *brokers = NULL, *topic = "events", *labels = NULL, *framing = "confluent";
    double users = 10000, events = 0, rate = 0, seed = 1, groups = 4, anomalous_share = 0.02;
    double step_ms = -1, start_ts = 1767225600000.0, bad_every = 0, drift_at = -1;
    double user_base = 0;
    bool quiet = false, cover = false, stamp = false;
    static const struct option opts[] = {
        {"brokers", required_argument, NULL, 'b'}, {"topic", required_argument, NULL, 't'},
        {"users", required_argument, NULL, 'u'},   {"events", required_argument, NULL, 'n'},
        {"rate", required_argument, NULL, 'r'},    {"seed", required_argument, NULL, 's'},
        {"groups", required_argument, NULL, 'g'},  {"anomalous", required_argument, NULL, 'a'},
        {"step-ms", required_argument, NULL, 'S'}, {"start-ts", required_argument, NULL, 'T'},
        {"bad-every", required_argument, NULL, 'B'}, {"labels", required_argument, NULL, 'L'},
        {"drift-at", required_argument, NULL, 'D'},
        {"framing", required_argument, NULL, 'F'}, {"quiet", no_argument, NULL, 'q'},
        {"cover", no_argument, NULL, 'C'},         {"user-base", required_argument, NULL, 'U'},
        {"stamp", no_argument, NULL, 'M'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "b:t:u:n:r:s:g:a:qh", opts, NULL)) != -1) {
        int r = 0;
        switch (opt) {
        case 'b':
            brokers = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'L':
            labels = optarg;
            break;
        case 'F':
            framing = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'C':
            cover = true;
            break;
        case 'M':
            stamp = true;
            break;
        case 'U':
            r = tool_parse_number(optarg, 0, 1e15, &user_base);
            break;
        case 'u':
            r = tool_parse_number(optarg, 1, 1e9, &users);
            break;
        case 'n':
            r = tool_parse_number(optarg, 0, 1e15, &events);
            break;
        case 'r':
            r = tool_parse_number(optarg, 0, 1e9, &rate);
            break;
        case 's':
            r = tool_parse_number(optarg, 0, 1e18, &seed);
            break;
        case 'g':
            r = tool_parse_number(optarg, 1, 64, &groups);
            break;
        case 'a':
            r = tool_parse_number(optarg, 0, 1, &anomalous_share);
            break;
        case 'S':
            r = tool_parse_number(optarg, 0, 1e12, &step_ms);
            break;
        case 'T':
            r = tool_parse_number(optarg, 0, 1e15, &start_ts);
            break;
        case 'D':
            r = tool_parse_number(optarg, 0, 1e15, &drift_at);
            break;
        case 'B':
            r = tool_parse_number(optarg, 0, 1e15, &bad_every);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (r < 0) {
            fprintf(stderr, "cohort-gen: bad value '%s' for -%c (see --help)\n", optarg, opt);
            return 2;
        }
    }
    if (!brokers) {
        fprintf(stderr, "cohort-gen: --brokers is required\n");
        usage(stderr);
        return 2;
    }
    rng_state = (uint64_t)seed * 0x9E3779B97F4A7C15ULL + 0x2545F4914F6CDD1DULL;
    size_t n_users = (size_t)users, n_groups = (size_t)groups;

    group_t *gs = calloc(n_groups, sizeof(*gs));
    int *user_group = calloc(n_users, sizeof(*user_group));
    double *cum = calloc(n_users, sizeof(*cum));
    if (!gs || !user_group || !cum) {
        fprintf(stderr, "cohort-gen: out of memory for %zu users\n", n_users);
        return 1;
    }
    for (size_t g = 0; g < n_groups; g++) {
        gs[g] = archetypes[g % 4];
        if (g >= 4) { /* a perturbed copy: shift amounts and activity */
            gs[g].mu += 0.8 * gauss();
            gs[g].activity *= exp(0.5 * gauss());
        }
    }
    double total = 0;
    for (size_t u = 0; u < n_users; u++) {
        user_group[u] = unif() < anomalous_share ? -1 : (int)(rnd() % n_groups);
        total += user_group[u] < 0 ? anomalous.activity : gs[user_group[u]].activity;
        cum[u] = total;
    }
    if (labels) {
        FILE *lf = fopen(labels, "we");
        if (!lf) {
            fprintf(stderr, "cohort-gen: %s: %s\n", labels, strerror(errno));
            return 1;
        }
        fprintf(lf, "user_id,group\n");
        for (size_t u = 0; u < n_users; u++) {
            fprintf(lf, "u%llu,%d\n", (unsigned long long)user_base + u, user_group[u]);
        }
        fclose(lf);
    }

    tool_out_t o;
    if (tool_out_open(&o, "cohort-gen", brokers, topic, framing, 1, rate, quiet) < 0) {
        return 1;
    }
    int rc = 0;
    char uid[32], eid[48];
    for (uint64_t i = 0; !tool_stop && (events == 0 || (double)i < events); i++) {
        /* pick a user in proportion to activity (or the next one while covering) */
        double x = unif() * total;
        size_t lo = 0, hi = n_users - 1;
        if (cover && i < n_users) {
            lo = hi = (size_t)i;
        }
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (cum[mid] < x) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if (drift_at >= 0 && (double)i == drift_at) {
            group_t first = gs[0];
            for (size_t k = 0; k < n_groups; k++) {
                const group_t *next = k + 1 < n_groups ? &gs[k + 1] : &first;
                for (int t = 0; t < N_TYPES; t++) {
                    gs[k].mix[t] = 0.5 * (gs[k].mix[t] + next->mix[t]);
                }
                gs[k].mu += k % 2 ? -1.0 : 1.0;
            }
            if (!quiet) {
                fprintf(stderr, "cohort-gen: drift at event %llu\n", (unsigned long long)i);
            }
        }
        const group_t *g = user_group[lo] < 0 ? &anomalous : &gs[user_group[lo]];
        double t = unif(), acc = 0;
        int ti = N_TYPES - 1;
        for (int k = 0; k < N_TYPES; k++) {
            acc += g->mix[k];
            if (t < acc) {
                ti = k;
                break;
            }
        }
        double amount = exp(g->mu + g->sigma * gauss());
        bool has_amount = ti != 0 && ti != 3; /* views and logins carry no amount */
        int64_t ts;
        if (step_ms >= 0) {
            ts = (int64_t)start_ts + (int64_t)((double)i * step_ms);
        } else {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            ts = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
        }
        int ul = snprintf(uid, sizeof(uid), "u%llu", (unsigned long long)user_base + lo);
        int el;
        if (stamp) {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            el = snprintf(eid, sizeof(eid), "t%lld-%llu",
                          (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000,
                          (unsigned long long)i);
        } else {
            el = snprintf(eid, sizeof(eid), "gen-%llu-%llu", (unsigned long long)seed,
                          (unsigned long long)i);
        }
        if (bad_every > 0 && (i + 1) % (uint64_t)bad_every == 0) {
            unsigned char junk[24];
            for (size_t k = 0; k < sizeof(junk); k++) {
                junk[k] = (unsigned char)rnd();
            }
            junk[0] = 0; /* Confluent-looking header, garbage body */
            if (tool_out_raw(&o, uid, (size_t)ul, junk, sizeof(junk), ts) < 0) {
                rc = 1;
                break;
            }
            continue;
        }
        ch_event_view_t ev = {.event_id = eid,
                              .event_id_len = (size_t)el,
                              .user_id = uid,
                              .user_id_len = (size_t)ul,
                              .ts_ms = ts,
                              .type = types[ti],
                              .type_len = strlen(types[ti]),
                              .has_amount = has_amount,
                              .amount = round(amount * 100) / 100};
        if (tool_out_event(&o, &ev) < 0) {
            rc = 1;
            break;
        }
    }
    if (tool_out_close(&o) < 0) {
        rc = 1;
    }
    free(gs);
    free(user_group);
    free(cum);
    return rc;
}
