/*
 * cohort-replay - replay the real datasets of ../shared/data as user events.
 *
 * Mappings (../shared/data/README.md):
 *   sparkov: user_id=cc_num, ts=unix_time*1000, type=payment, amount=amt,
 *            item=merchant, category=category, event_id=trans_num,
 *            attrs={lat, long, merch_lat, merch_long}. The is_fraud label is
 *            NOT sent (it would leak the label into the features).
 *   rees46:  user_id=user_id, ts=event_time, type=event_type, amount=price,
 *            item=product_id, category=category_code (null when empty),
 *            event_id="rees46-<data line number>".
 * Event time is preserved; --speed paces the replay by event time (e.g. 3600 =
 * one hour of event time per second), --rate caps events per second.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tool_common.h"
#include "tool_csv.h"

#define MAX_COLS 16

static void usage(FILE *f) {
    fprintf(f,
            "Usage: cohort-replay --brokers HOST:PORT --dataset sparkov|rees46 [OPTIONS]\n"
            "Replay a real dataset from ../shared/data as Avro user events, keyed by user_id.\n\n"
            "  -b, --brokers LIST    Kafka bootstrap servers (required)\n"
            "  -d, --dataset NAME    sparkov (card transactions) or rees46 (clickstream)\n"
            "  -f, --file PATH       the CSV (default ../shared/data/<dataset sample>)\n"
            "  -t, --topic NAME      topic (default events)\n"
            "  -x, --speed X         pace by event time, X times real time (default 0: no pacing)\n"
            "  -r, --rate N          at most N events/s (default 0: no cap)\n"
            "  -n, --limit N         stop after N events (default 0: the whole file)\n"
            "      --skip N          start after the first N data rows (event ids keep their\n"
            "                        row numbers, so a replay in parts equals one in one go)\n"
            "      --framing F       confluent (default) or plain\n"
            "      --schema-id N     Confluent schema id (default 1 = user_event.avsc)\n"
            "  -q, --quiet           no progress lines\n"
            "  -h, --help            this help\n");
}

static const char *default_file(const char *dataset) {
    return strcmp(dataset, "sparkov") == 0 ? "../shared/data/sparkov-transactions-sample.csv"
                                           : "../shared/data/rees46-2019-oct-sample.csv";
}

/* Any number strtod accepts, as before the helper moved to tool_common. */
static int parse_double(const char *s, double *ret) {
    return tool_parse_number(s, -INFINITY, INFINITY, ret);
}

/* "2019-10-01 00:00:00 UTC" -> ms since the epoch */
static int parse_rees_time(const char *s, int64_t *ret_ms) {
    struct tm tm = {0};
    const char *end = strptime(s, "%Y-%m-%d %H:%M:%S", &tm);
    if (!end || (strcmp(end, " UTC") != 0 && *end)) {
        return -EINVAL;
    }
    *ret_ms = (int64_t)timegm(&tm) * 1000;
    return 0;
}

int main(int argc, char **argv) {
    const char *brokers = NULL, *dataset = NULL, *file = NULL, *topic = "events";
    const char *framing = "confluent";
    double speed = 0, rate = 0, limit = 0, skip = 0, schema_id = 1;
    bool quiet = false;
    static const struct option opts[] = {{"brokers", required_argument, NULL, 'b'},
                                         {"dataset", required_argument, NULL, 'd'},
                                         {"file", required_argument, NULL, 'f'},
                                         {"topic", required_argument, NULL, 't'},
                                         {"speed", required_argument, NULL, 'x'},
                                         {"rate", required_argument, NULL, 'r'},
                                         {"limit", required_argument, NULL, 'n'},
                                         {"framing", required_argument, NULL, 'F'},
                                         {"schema-id", required_argument, NULL, 'S'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"skip", required_argument, NULL, 'K'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "b:d:f:t:x:r:n:qh", opts, NULL)) != -1) {
        double *num = NULL;
        switch (opt) {
        case 'b':
            brokers = optarg;
            break;
        case 'd':
            dataset = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'F':
            framing = optarg;
            break;
        case 'q':
            quiet = true;
            break;
        case 'x':
            num = &speed;
            break;
        case 'r':
            num = &rate;
            break;
        case 'n':
            num = &limit;
            break;
        case 'S':
            num = &schema_id;
            break;
        case 'K':
            num = &skip;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (num && (parse_double(optarg, num) < 0 || *num < 0)) {
            fprintf(stderr, "cohort-replay: -%c takes a number >= 0, got '%s'\n", opt, optarg);
            return 2;
        }
    }
    if (!brokers || !dataset ||
        (strcmp(dataset, "sparkov") != 0 && strcmp(dataset, "rees46") != 0)) {
        fprintf(stderr, "cohort-replay: --brokers and --dataset sparkov|rees46 are required\n");
        usage(stderr);
        return 2;
    }
    bool sparkov = strcmp(dataset, "sparkov") == 0;
    if (!file) {
        file = default_file(dataset);
    }
    FILE *in = fopen(file, "re");
    if (!in) {
        fprintf(stderr, "cohort-replay: %s: %s\n", file, strerror(errno));
        return 1;
    }
    tool_out_t o;
    if (tool_out_open(&o, "cohort-replay", brokers, topic, framing, (int32_t)schema_id, rate,
                      quiet) < 0) {
        fclose(in);
        return 1;
    }
    char line[8192];
    char *cols[MAX_COLS];
    int lineno = 0, rc = 0;
    int64_t first_ts = INT64_MIN;
    double t0 = tool_now_s();
    uint64_t n = 0;
    while (!tool_stop && fgets(line, sizeof(line), in)) {
        lineno++;
        if (lineno == 1 || (double)(lineno - 1) <= skip) {
            continue; /* the header, or a row skipped */
        }
        int nc = tool_csv_split(line, cols, MAX_COLS);
        ch_event_view_t ev = {0};
        ch_attr_t attrs[4];
        char event_id[64];
        bool ok;
        if (sparkov) {
            /* unix_time,cc_num,trans_num,merchant,category,amt,lat,long,merch_lat,merch_long,is_fraud */
            double t, amt;
            ok = nc == 11 && parse_double(cols[0], &t) == 0 && parse_double(cols[5], &amt) == 0;
            static const char *const names[4] = {"lat", "long", "merch_lat", "merch_long"};
            for (int k = 0; ok && k < 4; k++) {
                attrs[k].key = names[k];
                attrs[k].key_len = strlen(names[k]);
                ok = parse_double(cols[6 + k], &attrs[k].value) == 0;
            }
            if (ok) {
                ev = (ch_event_view_t){.event_id = cols[2],
                                       .event_id_len = strlen(cols[2]),
                                       .user_id = cols[1],
                                       .user_id_len = strlen(cols[1]),
                                       .ts_ms = (int64_t)t * 1000,
                                       .type = "payment",
                                       .type_len = 7,
                                       .has_amount = true,
                                       .amount = amt,
                                       .item = cols[3],
                                       .item_len = strlen(cols[3]),
                                       .category = cols[4],
                                       .category_len = strlen(cols[4]),
                                       .attrs = attrs,
                                       .n_attrs = 4};
            }
        } else {
            /* event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session */
            double price;
            int64_t ts;
            ok = nc == 9 && parse_rees_time(cols[0], &ts) == 0 &&
                 parse_double(cols[6], &price) == 0 && cols[7][0];
            if (ok) {
                snprintf(event_id, sizeof(event_id), "rees46-%d", lineno - 1);
                ev = (ch_event_view_t){.event_id = event_id,
                                       .event_id_len = strlen(event_id),
                                       .user_id = cols[7],
                                       .user_id_len = strlen(cols[7]),
                                       .ts_ms = ts,
                                       .type = cols[1],
                                       .type_len = strlen(cols[1]),
                                       .has_amount = true,
                                       .amount = price,
                                       .item = cols[2],
                                       .item_len = strlen(cols[2]),
                                       .category = cols[4][0] ? cols[4] : NULL,
                                       .category_len = strlen(cols[4])};
            }
        }
        if (!ok) {
            fprintf(stderr, "cohort-replay: %s:%d: cannot parse this %s row; stopping\n", file,
                    lineno, dataset);
            rc = 1;
            break;
        }
        if (speed > 0) {
            if (first_ts == INT64_MIN) {
                first_ts = ev.ts_ms;
            }
            double due = t0 + (double)(ev.ts_ms - first_ts) / 1000.0 / speed;
            double now;
            while (!tool_stop && (now = tool_now_s()) < due) {
                double wait = due - now;
                usleep((useconds_t)((wait > 0.05 ? 0.05 : wait) * 1e6));
            }
        }
        if (tool_out_event(&o, &ev) < 0) {
            rc = 1;
            break;
        }
        if (limit > 0 && (double)++n >= limit) {
            break;
        }
    }
    fclose(in);
    if (tool_out_close(&o) < 0) {
        rc = 1;
    }
    return rc;
}
