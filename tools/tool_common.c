/*
 * tool_common.c - producer plumbing for the event tools.
 *
 * Design notes
 * - Messages are keyed by user_id and partitioned with murmur2 (the Java
 *   client's partitioner), like cohortd's own outputs, so a user's events
 *   land in one partition in order.
 * - Pacing sleeps in small steps against a start time, so the long-run rate
 *   is exact and bursts stay small.
 */
#include "tool_common.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ch/kafka.h"

volatile int tool_stop = 0;

static void on_signal(int sig) {
    (void)sig;
    tool_stop = 1;
}

double tool_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void on_delivery(void *opaque, void *msg_opaque, int32_t partition, int64_t offset, int err,
                        const char *errstr) {
    (void)partition;
    (void)offset;
    tool_out_t *o = opaque;
    (void)msg_opaque;
    if (err) {
        if (o->failed++ < 5) {
            fprintf(stderr, "%s: delivery failed: %s\n", o->name, errstr);
        }
    } else {
        o->delivered++;
    }
}

int tool_out_open(tool_out_t *o, const char *name, const char *brokers, const char *topic,
                  const char *framing, int32_t schema_id, double rate, bool quiet) {
    memset(o, 0, sizeof(*o));
    o->name = name;
    o->topic = topic;
    o->schema_id = schema_id;
    o->rate = rate;
    o->quiet = quiet;
    if (strcmp(framing, "confluent") == 0) {
        o->framing = CH_FRAMING_CONFLUENT;
    } else if (strcmp(framing, "plain") == 0) {
        o->framing = CH_FRAMING_PLAIN;
    } else {
        fprintf(stderr, "%s: --framing takes confluent or plain, got '%s'\n", name, framing);
        return -EINVAL;
    }
    static const char *const keys[] = {"bootstrap.servers", "enable.idempotence", "partitioner",
                                       "linger.ms", "queue.buffering.max.messages"};
    const char *const vals[] = {brokers, "true", "murmur2_random", "5", "500000"};
    ch_kafka_conf_t kc = {.keys = keys, .values = vals, .n = 5};
    char err[512];
    int r = ch_producer_new(&kc, on_delivery, o, &o->producer, err, sizeof(err));
    if (r < 0) {
        fprintf(stderr, "%s: %s\n", name, err);
        return r;
    }
    ch_buf_init(&o->buf);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    o->start_s = o->last_progress_s = tool_now_s();
    return 0;
}

static void pace_and_report(tool_out_t *o) {
    if (o->rate > 0) {
        double due = o->start_s + (double)o->sent / o->rate;
        double now;
        while ((now = tool_now_s()) < due && !tool_stop) {
            double wait = due - now;
            struct timespec ts = {0, (long)((wait > 0.005 ? 0.005 : wait) * 1e9)};
            nanosleep(&ts, NULL);
            ch_producer_poll(o->producer);
        }
    }
    double now = tool_now_s();
    if (!o->quiet && now - o->last_progress_s >= 1.0) {
        double rate = (double)(o->sent - o->last_progress_sent) / (now - o->last_progress_s);
        if (o->total > 0) {
            char bar[21];
            size_t filled = (size_t)(20 * o->sent / o->total);
            for (size_t i = 0; i < 20; i++) {
                bar[i] = i < filled ? '#' : '.';
            }
            bar[20] = '\0';
            fprintf(stderr, "%s: [%s] %3.0f%% %llu of %llu events (%.0f ev/s, about %.0f s left)\n",
                    o->name, bar, 100.0 * (double)o->sent / (double)o->total,
                    (unsigned long long)o->sent, (unsigned long long)o->total, rate,
                    rate > 0 ? (double)(o->total - o->sent) / rate : 0.0);
        } else {
            fprintf(stderr, "%s: %llu events sent (%.0f ev/s), %llu acknowledged\n", o->name,
                    (unsigned long long)o->sent, rate, (unsigned long long)o->delivered);
        }
        o->last_progress_s = now;
        o->last_progress_sent = o->sent;
    }
}

int tool_out_raw(tool_out_t *o, const char *key, size_t key_len, const void *value, size_t len,
                 int64_t ts_ms) {
    char err[512];
    for (;;) {
        int r = ch_producer_send(o->producer, o->topic, -1, key, key_len, value, len, NULL, 0, NULL,
                                 ts_ms, err, sizeof(err));
        if (r == -ENOBUFS) {
            ch_producer_flush(o->producer, 100);
            continue;
        }
        if (r < 0) {
            fprintf(stderr, "%s: %s\n", o->name, err);
            return r;
        }
        break;
    }
    o->sent++;
    if ((o->sent & 1023) == 0) {
        ch_producer_poll(o->producer);
    }
    pace_and_report(o);
    return 0;
}

int tool_out_event(tool_out_t *o, const ch_event_view_t *ev) {
    int r = ch_encode_event(&o->buf, o->framing, o->schema_id, ev);
    if (r < 0) {
        fprintf(stderr, "%s: cannot encode an event: %s\n", o->name, strerror(-r));
        return r;
    }
    return tool_out_raw(o, ev->user_id, ev->user_id_len, o->buf.data, o->buf.len, ev->ts_ms);
}

int tool_out_close(tool_out_t *o) {
    int r = ch_producer_flush(o->producer, 60000);
    double dt = tool_now_s() - o->start_s;
    if (!o->quiet || o->failed || r < 0) {
        fprintf(stderr, "%s: done: %llu sent, %llu acknowledged, %llu failed in %.1f s (%.0f ev/s)\n",
                o->name, (unsigned long long)o->sent, (unsigned long long)o->delivered,
                (unsigned long long)o->failed, dt, dt > 0 ? (double)o->sent / dt : 0.0);
    }
    bool ok = r == 0 && o->failed == 0 && o->delivered == o->sent;
    o->producer = ch_producer_free(o->producer);
    ch_buf_done(&o->buf);
    return ok ? 0 : -EIO;
}
