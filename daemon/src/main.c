/*
 * main.c - cohortd: command line, the libev loop, signals, progress.
 *
 * Design notes
 * - One loop, one thread of ours. The consumer and producer each expose a
 *   pipe fd that librdkafka writes to when work arrives. A readable consumer
 *   fd starts an ev_idle watcher that drains one budgeted batch per loop
 *   iteration, so timers and signals stay responsive under load; the idle
 *   watcher stops itself when a drain comes back short.
 * - Backpressure: when batch.max_inflight batches await acknowledgement the
 *   drain returns -EAGAIN; the idle watcher stops and the producer's fd
 *   (delivery reports) restarts it.
 * - A 100 ms safety timer drains and polls as well, so a lost wake-up could
 *   at worst delay work, never stall it.
 * - SIGTERM/SIGINT: stop consuming, flush outputs, commit, exit 0 (1 if an
 *   output could not be delivered).
 * - HTTP (http.listen) is served from the same loop, between batches: probes
 *   and scrapes see consistent state without locks, and a stuck loop shows up
 *   as failing probes.
 * - systemd (when NOTIFY_SOCKET is set): READY=1 once the consumer is
 *   subscribed and the model loaded, STATUS= every few seconds, RELOADING=1 /
 *   READY=1 around a SIGHUP reload, STOPPING=1 on a stop signal, and WATCHDOG=1
 *   from a loop timer at half of WatchdogSec, so a loop that stops turning is
 *   killed and restarted by systemd. SIGHUP, or a change of model.path seen by an
 *   ev_stat watch, reloads the model between batches (the loop never runs a callback
 *   in the middle of a batch: a drain is one synchronous call).
 */
#include <errno.h>
#include <ev.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "ch/features.h"
#include "ch/json.h"
#include "ch/kafka.h"
#include "ch/onnx.h"
#include "config.h"
#include "events.h"
#include "featurize.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "pipeline.h"
#include "pseudonym.h"
#include "scorer.h"
#include "userrec.h"

typedef struct daemon_ctx {
    struct ev_loop *loop;
    ch_pipeline_t *pipe;
    const ch_config_t *cfg;
    ev_io consumer_io, producer_io, reader_io, sync_io, eval_io;
    ev_idle drain_idle, restore_idle;
    ev_timer safety, stats, housekeeping, watchdog, status;
    ev_signal sigterm, sigint, sighup;
    ev_stat model_watch;
    ev_timer reg_timer;      /* the schema registry client's timer */
    struct reg_io **reg_ios; /* and its sockets (each watcher allocated once: libev holds it) */
    size_t n_reg_ios;
    double last_save_s;
    double stop_s; /* when the stop began (ch_now_s clock), 0 before */
    int exit_code;
    ch_http_t *http;
    double start_time_s; /* Unix time */
    bool notify;         /* NOTIFY_SOCKET is set */
    double last_status_s;
    ch_pipeline_stats_t last_status;
    /* progress */
    double last_stats_s;
    ch_pipeline_stats_t last;
} daemon_ctx_t;

/* A socket of the schema registry client (schema.registry.url), watched as it asks. */
typedef struct reg_io {
    ev_io io;
    daemon_ctx_t *d;
    bool on;
} reg_io_t;

static void on_reg_io(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    reg_io_t *r = (reg_io_t *)w;
    ch_pipeline_registry_socket(r->d->pipe, w->fd, revents & EV_READ, revents & EV_WRITE);
}

static void reg_watch(void *opaque, int fd, bool rd, bool wr) {
    daemon_ctx_t *d = opaque;
    reg_io_t *r = NULL, *spare = NULL;
    for (size_t i = 0; i < d->n_reg_ios; i++) {
        if (d->reg_ios[i]->on && d->reg_ios[i]->io.fd == fd) {
            r = d->reg_ios[i];
        } else if (!d->reg_ios[i]->on && !spare) {
            spare = d->reg_ios[i];
        }
    }
    if (r) {
        ev_io_stop(d->loop, &r->io);
        r->on = false;
    }
    if (!rd && !wr) {
        return;
    }
    if (!r && !(r = spare)) {
        reg_io_t **na = realloc(d->reg_ios, (d->n_reg_ios + 1) * sizeof(*na));
        if (!na || !(r = calloc(1, sizeof(*r)))) {
            if (na) {
                d->reg_ios = na;
            }
            ch_log(CH_LOG_ERR, "schema registry: out of memory watching a socket");
            return; /* the request times out on curl's timer and is retried */
        }
        d->reg_ios = na;
        d->reg_ios[d->n_reg_ios++] = r;
    }
    r->d = d;
    r->on = true;
    ev_io_init(&r->io, on_reg_io, fd, (rd ? EV_READ : 0) | (wr ? EV_WRITE : 0));
    ev_io_start(d->loop, &r->io);
}

static void on_reg_timer(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    ch_pipeline_registry_timeout(d->pipe);
}

static void reg_timer(void *opaque, long ms) {
    daemon_ctx_t *d = opaque;
    ev_timer_stop(d->loop, &d->reg_timer);
    if (ms >= 0) {
        ev_timer_set(&d->reg_timer, (double)ms / 1000.0, 0.0);
        ev_timer_start(d->loop, &d->reg_timer);
    }
}

static void reg_free(daemon_ctx_t *d) {
    for (size_t i = 0; i < d->n_reg_ios; i++) {
        if (d->reg_ios[i]->on) {
            ev_io_stop(d->loop, &d->reg_ios[i]->io);
        }
        free(d->reg_ios[i]);
    }
    free(d->reg_ios);
    d->reg_ios = NULL;
    d->n_reg_ios = 0;
    ev_timer_stop(d->loop, &d->reg_timer);
}

static void stop_loop(daemon_ctx_t *d, int code) {
    d->exit_code = code;
    if (d->stop_s == 0) {
        d->stop_s = ch_now_s(); /* shutdown.timeout counts from here */
    }
    ev_break(d->loop, EVBREAK_ALL);
}

/* The stop's backstop. shutdown.timeout is the budget from SIGTERM to exit: every
 * blocking step of the stop is bounded by it, but freeing librdkafka's handles is not
 * (rd_kafka_destroy waits for its threads, which may wait on a broker that vanished).
 * This thread watches that last part: if the deadline passes, it logs the stop's
 * verdict (what was and was not committed, known by then) and ends the process with
 * its exit status. */
typedef struct reaper {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
    double deadline_s; /* ch_now_s() clock (CLOCK_MONOTONIC) */
    char verdict[768];
    int code;
} reaper_t;

static void *reap(void *arg) {
    reaper_t *r = arg;
    struct timespec ts = {.tv_sec = (time_t)r->deadline_s,
                          .tv_nsec = (long)((r->deadline_s - floor(r->deadline_s)) * 1e9)};
    pthread_mutex_lock(&r->mu);
    while (!r->done) {
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT && !r->done) {
            ch_log(r->code ? CH_LOG_ERR : CH_LOG_NOTICE,
                   "%s; shutdown.timeout reached while freeing the Kafka clients: exiting now",
                   r->verdict);
            _exit(r->code); /* no destructors: another thread may be inside librdkafka */
        }
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static bool reaper_start(reaper_t *r, double deadline_s, const char *verdict, int code) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    r->deadline_s = deadline_s;
    r->code = code;
    snprintf(r->verdict, sizeof(r->verdict), "%s", verdict);
    return pthread_create(&r->thread, NULL, reap, r) == 0;
}

static void reaper_stop(reaper_t *r) {
    pthread_mutex_lock(&r->mu);
    r->done = true;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

static void drain_once(daemon_ctx_t *d) {
    int n = ch_pipeline_drain(d->pipe);
    if (ch_pipeline_failed(d->pipe)) {
        ch_log(CH_LOG_ERR, "stopping after a failure; uncommitted events will be reprocessed");
        stop_loop(d, 1);
        return;
    }
    if (n == -EAGAIN || n < d->cfg->batch_max_events) {
        ev_idle_stop(d->loop, &d->drain_idle); /* caught up, or waiting for acks */
    } else {
        ev_idle_start(d->loop, &d->drain_idle);
    }
}

static void on_drain_idle(struct ev_loop *loop, ev_idle *w, int revents) {
    (void)loop;
    (void)revents;
    drain_once(w->data);
}

/* One budget of background work (restoring, writing a snapshot) per loop iteration
 * while there is more. */
static void background_once(daemon_ctx_t *d) {
    if (ch_pipeline_background(d->pipe)) {
        ev_idle_start(d->loop, &d->restore_idle);
    } else {
        ev_idle_stop(d->loop, &d->restore_idle);
    }
}

static void on_restore_idle(struct ev_loop *loop, ev_idle *w, int revents) {
    (void)loop;
    (void)revents;
    background_once(w->data);
}

static void on_reader_io(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    background_once(w->data);
}

static void on_consumer_io(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    drain_once(w->data);
}

static void on_producer_io(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    ch_pipeline_poll_producer(d->pipe);
    if (ch_pipeline_failed(d->pipe)) {
        stop_loop(d, 1);
        return;
    }
    ev_idle_start(d->loop, &d->drain_idle); /* acks may have freed ring slots */
    ev_idle_start(d->loop, &d->restore_idle); /* background work may wait for one too */
}

static void on_safety(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    ch_pipeline_poll_producer(d->pipe);
    drain_once(d);
    if (ch_pipeline_reader_fd(d->pipe) >= 0 || ch_pipeline_sync_fd(d->pipe) >= 0) {
        background_once(d); /* belt and braces, as for the consumer */
    }
}

static void on_housekeeping(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    ch_pipeline_tick(d->pipe);
    background_once(d); /* starts a snapshot when one is due */
    double now = ch_now_s();
    if (now - d->last_save_s >= 60) { /* bounded loss of segment state on a crash */
        ch_pipeline_save_segments(d->pipe);
        d->last_save_s = now;
    }
}

/* A stats snapshot, with events in and messages out per second since *last (which
 * becomes this snapshot). */
static void take_rates(daemon_ctx_t *d, ch_pipeline_stats_t *s, ch_pipeline_stats_t *last,
                       double *last_s, double *ret_in, double *ret_out) {
    ch_pipeline_stats(d->pipe, s);
    double now = ch_now_s(), dt = now - *last_s;
    uint64_t out = s->profiles_acked + s->risk_acked + s->dlq_acked;
    uint64_t last_out = last->profiles_acked + last->risk_acked + last->dlq_acked;
    *ret_in = dt > 0 ? (double)(s->consumed - last->consumed) / dt : 0;
    *ret_out = dt > 0 ? (double)(out - last_out) / dt : 0;
    *last = *s;
    *last_s = now;
}

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)w;
    (void)revents;
    sd_notify(0, "WATCHDOG=1");
}

static void on_status(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    ch_pipeline_stats_t s;
    double in, out;
    take_rates(d, &s, &d->last_status, &d->last_status_s, &in, &out);
    sd_notifyf(0,
               "STATUS=in %.0f ev/s, out %.0f msg/s, %zu users, %zu partitions, %llu bad, "
               "%llu alerts",
               in, out, s.users, s.assigned_partitions, (unsigned long long)s.bad_total,
               (unsigned long long)s.alerts);
}

static void on_stats(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    ch_pipeline_stats_t s;
    double in, out;
    take_rates(d, &s, &d->last, &d->last_stats_s, &in, &out);
    ch_log(CH_LOG_INFO,
           "in %.0f ev/s, out %.0f msg/s | total in %llu, profiles %llu, risk %llu (alerts "
           "%llu), bad %llu | users %zu | segments %s | partitions %zu | in flight %zu batch(es)",
           in, out, (unsigned long long)s.consumed, (unsigned long long)s.profiles_acked,
           (unsigned long long)s.risk_acked, (unsigned long long)s.alerts,
           (unsigned long long)s.bad_total, s.users,
           d->cfg->segments.k == 0 ? "off" : s.segments_ready ? "online" : "warming up",
           s.assigned_partitions, s.inflight_batches);
}

static void on_stop_signal(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    ch_log(CH_LOG_NOTICE, "%s: stopping (flush outputs, commit, leave the group)",
           strsignal(w->signum));
    sd_notify(0, "STOPPING=1\nSTATUS=stopping: flushing outputs and committing offsets");
    stop_loop(d, 0);
}

static void on_sighup(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    ch_log(CH_LOG_NOTICE, "SIGHUP: reloading the model");
    sd_notify(0, "RELOADING=1");
    ch_pipeline_reload_model(d->pipe);
    sd_notify(0, "READY=1");
}

static void on_model_change(struct ev_loop *loop, ev_stat *w, int revents) {
    (void)loop;
    (void)revents;
    daemon_ctx_t *d = w->data;
    if (w->attr.st_nlink == 0) {
        ch_log(CH_LOG_WARNING, "model file %s disappeared; keeping version %s", w->path,
               ch_pipeline_model_version(d->pipe) ? ch_pipeline_model_version(d->pipe) : "-");
        return;
    }
    ch_log(CH_LOG_NOTICE, "model file %s changed: reloading", w->path);
    ch_pipeline_reload_model(d->pipe);
}

/* ---------------------------------------------------------------- HTTP routes */

/* GET /segments/export, streamed: EXPORT_STEP users per part, a part per loop iteration
 * while the client reads; abandoned with its client. */
#define EXPORT_STEP 2048
typedef struct export_stream {
    ch_pipeline_t *pipe;
    ch_export_t *e;
} export_stream_t;

static int export_more(void *ctx, ch_buf_t *out) {
    export_stream_t *x = ctx;
    return ch_pipeline_export_step(x->pipe, x->e, out, EXPORT_STEP);
}

static void export_end(void *ctx) {
    export_stream_t *x = ctx;
    ch_pipeline_export_end(x->pipe, x->e);
    free(x);
}

static void export_route(daemon_ctx_t *d, ch_http_reply_t *rep) {
    ch_buf_t *b = rep->body;
    export_stream_t *x = malloc(sizeof(*x));
    int r = x ? ch_pipeline_export_begin(d->pipe, b, &x->e) : -ENOMEM;
    if (r < 0) {
        free(x);
        b->len = 0;
        rep->status = r == -ENOENT ? 404 : r == -EBUSY ? 503 : 500;
        rep->content_type = "application/json";
        ch_buf_printf(b, "{\"error\":\"%s\"}\n",
                      r == -ENOENT  ? "segments are off (segments.k = 0)"
                      : r == -EBUSY ? "too many exports at once; try again"
                                    : "out of memory");
        return;
    }
    x->pipe = d->pipe;
    rep->status = 200;
    rep->content_type = "application/x-ndjson";
    rep->more = export_more;
    rep->end = export_end;
    rep->ctx = x;
}

static void segments_route(daemon_ctx_t *d, const ch_http_request_t *req, ch_http_reply_t *rep) {
    ch_buf_t *b = rep->body;
    const char *path = req->path + 9; /* after "/segments" */
    size_t len = req->path_len - 9;
    bool refresh = len == 8 && memcmp(path, "/refresh", 8) == 0;
    bool export = len == 7 && memcmp(path, "/export", 7) == 0;
    if (!refresh && !export && len) {
        rep->status = 404;
        ch_buf_printf(b, "not found (see /)\n");
    } else if (refresh != req->post) {
        rep->status = 405;
        rep->allow = refresh ? "POST" : "GET, HEAD";
        ch_buf_printf(b, "%s\n", refresh ? "POST to ask for a refresh" : "GET or HEAD");
    } else if (refresh) {
        int r = ch_pipeline_segments_refresh(d->pipe);
        rep->status = r == 0 ? 202 : r == -ENOENT ? 404 : 503;
        ch_buf_printf(b, "%s\n",
                      r == 0         ? "refresh requested (see GET /segments)"
                      : r == -ENOENT ? "segments are off (segments.k = 0)"
                                     : "segments are not seeded yet");
        if (r == 0) {
            background_once(d);
        }
    } else if (export) {
        export_route(d, rep);
    } else {
        int r = ch_pipeline_segments_json(d->pipe, b);
        rep->status = r == 0 ? 200 : r == -ENOENT ? 404 : 500;
        rep->content_type = "application/json";
        if (r < 0) {
            b->len = 0;
            ch_buf_printf(b, "{\"error\":\"%s\"}\n",
                          r == -ENOENT ? "segments are off (segments.k = 0)" : "out of memory");
        }
    }
}

static void http_handler(void *opaque, const ch_http_request_t *req, ch_http_reply_t *rep) {
    daemon_ctx_t *d = opaque;
    ch_buf_t *b = rep->body;
    const char *path = req->path;
    size_t len = req->path_len;
    char why[256];
#define IS(lit) (len == sizeof(lit) - 1 && memcmp(path, lit, len) == 0)
    if (len >= 9 && memcmp(path, "/segments", 9) == 0 && (len == 9 || path[9] == '/')) {
        segments_route(d, req, rep);
    } else if (req->post) {
        rep->status = 405;
        ch_buf_printf(b, "only GET and HEAD are served here\n");
    } else if (IS("/healthz")) {
        rep->status = 200;
        ch_buf_printf(b, "ok\n");
    } else if (IS("/readyz")) {
        bool ready = ch_pipeline_ready(d->pipe, why, sizeof(why));
        rep->status = ready ? 200 : 503;
        ch_buf_printf(b, "%s\n", ready ? "ready" : why);
    } else if (IS("/metrics")) {
        ch_metrics_ctx_t mc = {d->start_time_s, ch_http_requests(d->http),
                               ch_http_evicted(d->http)};
        rep->status = ch_metrics_render(d->pipe, d->cfg, &mc, b) == 0 ? 200 : 500;
        rep->content_type = "text/plain; version=0.0.4; charset=utf-8";
    } else if (len > 7 && memcmp(path, "/users/", 7) == 0) {
        int r = ch_pipeline_user_json(d->pipe, path + 7, len - 7, b);
        rep->content_type = "application/json";
        rep->status = r == 0 ? 200 : r == -ENOENT ? 404 : 500;
        if (r < 0) {
            b->len = 0;
            ch_buf_printf(b, "{\"error\":\"%s\",\"user_id\":",
                          r == -ENOENT ? "unknown user (never seen, or evicted)" : "internal");
            ch_json_string(b, path + 7, len - 7);
            ch_buf_printf(b, "}\n");
        } else {
            ch_buf_printf(b, "\n");
        }
    } else if (IS("/")) {
        rep->status = 200;
        ch_buf_printf(b,
                      "cohortd %s\n/healthz  process alive\n/readyz   ready to serve "
                      "(503 with the reason otherwise)\n/metrics  Prometheus metrics\n"
                      "/users/<user_id>  a user's features, segment and risk (JSON)\n"
                      "/segments  the segments and the last pass over the population (JSON)\n"
                      "/segments/export  that, then every user's vector and segment "
                      "(JSON Lines)\n"
                      "POST /segments/refresh  refresh the segments on the population now\n",
                      CH_VERSION);
    } else {
        rep->status = 404;
        ch_buf_printf(b, "not found (see /)\n");
    }
#undef IS
}

static void usage(FILE *f) {
    fprintf(f,
            "Usage: cohortd --config FILE [--set key=value]... [--check-config [--quiet]]\n"
            "       cohortd featurize --config FILE [OPTIONS] INPUT...  (see featurize --help)\n"
            "       cohortd --help | --help-config | --version\n\n"
            "Streaming real-time user scoring: consumes user events (Avro) from Kafka, keeps\n"
            "time-decayed feature vectors per user, scores them with an ONNX model and online\n"
            "K-Means segments, and publishes profile and risk updates to Kafka.\n\n"
            "  -c, --config FILE    configuration file (key = value lines)\n"
            "  -s, --set KEY=VALUE  override one setting (repeatable; after the file)\n"
            "      --check-config   validate (loads the model too), print the effective settings\n"
            "                       and features (secrets masked), exit 0 or 2\n"
            "  -q, --quiet          with --check-config: print nothing, only the exit status\n"
            "      --help-config[=markdown]\n"
            "                       every setting with type, default, range and meaning\n"
            "  -h, --help           this help\n"
            "  -V, --version        print the version\n\n"
            "Signals: SIGTERM/SIGINT stop gracefully (flush, commit, exit 0); SIGHUP reloads.\n"
            "HTTP (http.listen, default 127.0.0.1:9180): /healthz /readyz /metrics /users/<id> "
            "/segments.\n"
            "Exit status: 0 clean stop, 1 runtime failure, 2 usage or configuration error.\n");
}

static int check_features(const ch_config_t *cfg, bool print, char *errbuf, size_t errlen) {
    ch_features_t *fs = NULL;
    int r = ch_config_features(cfg, &fs, errbuf, errlen);
    if (r == 0) {
        r = ch_config_check_state(cfg, fs, sizeof(ch_userrec_t), errbuf, errlen);
    }
    if (r == 0 && print) {
        printf("# features (output order; profile_update.features[i])\n");
        for (size_t i = 0; i < ch_features_count(fs); i++) {
            printf("feature.%s = %s    # [%zu]\n", ch_features_name(fs, i),
                   ch_features_spec(fs, i), i);
        }
        for (size_t i = 0; i < ch_features_tag_count(fs); i++) {
            printf("tags.%s = %s\n", ch_features_tag_name(fs, i), ch_features_tag_spec(fs, i));
        }
        char warning[512], eff[32] = "never";
        double ms = ch_config_idle_evict_ms(cfg, fs, warning, sizeof(warning));
        if (ms >= 86400000.0) {
            snprintf(eff, sizeof(eff), "%.4gd", ms / 86400000.0);
        } else if (ms > 0) {
            snprintf(eff, sizeof(eff), "%.4gh", ms / 3600000.0);
        }
        printf("# state.idle_evict in effect: %s\n", eff);
        if (warning[0]) {
            fprintf(stderr, "cohortd: warning: %s\n", warning);
        }
    }
    if (r == 0) { /* the mapping must fit the reader schema */
        ch_schemas_t *schemas = NULL;
        ch_events_t *events = NULL;
        ch_mapping_t map;
        if ((r = ch_schemas_load(cfg->schema_dir, &schemas, errbuf, errlen)) == 0 &&
            (r = ch_events_new(cfg, schemas, fs, &events, errbuf, errlen)) == 0 && print &&
            (r = ch_events_mapping(cfg, fs, &map, errbuf, errlen)) == 0) {
            printf("# input fields:");
            for (int k = 0; k < CH_ROLE_N; k++) {
                printf(" %s=%s", ch_role_name((ch_role_t)k), map.path[k][0] ? map.path[k] : "-");
            }
            for (size_t j = 0; j < map.n_fields; j++) {
                printf(" %s", map.fields[j]);
            }
            for (size_t j = 0; j < map.n_texts; j++) {
                printf(" %s (text)", map.texts[j]);
            }
            printf("\n");
        }
        ch_events_free(events);
        ch_schemas_free(schemas);
    }
    if (r == 0 && cfg->model_path[0]) { /* the model must fit these features */
        size_t d = ch_features_count(fs);
        const char **names = calloc(d ? d : 1, sizeof(*names));
        ch_onnx_t *m = NULL;
        r = names ? 0 : -ENOMEM;
        for (size_t i = 0; names && i < d; i++) {
            names[i] = ch_features_name(fs, i);
        }
        const char *paths[2] = {cfg->model_path, cfg->model_challenger_path};
        for (int k = 0; r == 0 && k < 2 && paths[k][0]; k++) { /* champion, challenger */
            if ((r = ch_onnx_load(paths[k], d, names, 1, &m, errbuf, errlen)) == 0 &&
                (r = ch_scorer_check_kind(cfg, m, errbuf, errlen)) == 0 && print) {
                printf("# %s: %s, version %s, %zu nodes, %s, reasons: %s\n",
                       k ? "challenger" : "model", paths[k], ch_onnx_version(m), ch_onnx_nodes(m),
                       ch_onnx_kind(m), ch_onnx_reasons(m));
            }
            m = ch_onnx_free(m);
        }
        free(names);
    }
    if (r == 0 && cfg->privacy_pseudonymize) { /* the key must be usable (never printed) */
        ch_pseudonym_t *ps = NULL;
        r = ch_pseudonym_new(cfg->privacy_key_file, &ps, errbuf, errlen);
        ch_pseudonym_free(ps);
        if (r == 0 && print) {
            printf("# privacy: user ids pseudonymized with the key in %s\n", cfg->privacy_key_file);
        }
    }
    ch_features_free(fs);
    return r;
}

int main(int argc, char **argv) {
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"set", required_argument, NULL, 's'},
                                         {"check-config", no_argument, NULL, 'k'},
                                         {"help-config", optional_argument, NULL, 'H'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {NULL, 0, NULL, 0}};
    if (argc > 1 && strcmp(argv[1], "featurize") == 0) {
        return ch_featurize_main(argc - 1, argv + 1);
    }
    const char *config_path = NULL;
    bool check_only = false, quiet = false;
    char **sets = calloc((size_t)argc + 1, sizeof(*sets));
    size_t n_sets = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, "c:s:qhV", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 's':
            sets[n_sets++] = optarg;
            break;
        case 'k':
            check_only = true;
            break;
        case 'H':
            if (optarg && strcmp(optarg, "markdown") != 0 && strcmp(optarg, "text") != 0) {
                fprintf(stderr, "cohortd: --help-config takes text or markdown, got '%s'\n",
                        optarg);
                free(sets);
                return 2;
            }
            ch_config_print_help(stdout, optarg && strcmp(optarg, "markdown") == 0);
            free(sets);
            return 0;
        case 'q':
            quiet = true;
            break;
        case 'h':
            usage(stdout);
            free(sets);
            return 0;
        case 'V':
            printf("cohortd %s (librdkafka %s, libev %d.%d)\n", CH_VERSION, ch_kafka_version(),
                   ev_version_major(), ev_version_minor());
            free(sets);
            return 0;
        default:
            usage(stderr);
            free(sets);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cohortd: unexpected argument '%s' (see --help)\n", argv[optind]);
        free(sets);
        return 2;
    }

    ch_config_t cfg;
    ch_config_init(&cfg);
    char err[1024] = "";
    int r = 0;
    if (config_path) {
        r = ch_config_load(&cfg, config_path, err, sizeof(err));
    }
    for (size_t i = 0; r == 0 && i < n_sets; i++) {
        r = ch_config_set(&cfg, sets[i], err, sizeof(err));
    }
    free(sets);
    if (r == 0) {
        r = ch_config_validate(&cfg, err, sizeof(err));
    }
    if (r == 0) {
        r = check_features(&cfg, check_only && !quiet, err, sizeof(err));
    }
    if (r < 0) {
        fprintf(stderr, "cohortd: %s\n", err);
        ch_config_done(&cfg);
        return 2;
    }
    if (check_only) {
        if (!quiet) {
            ch_config_print(&cfg, stdout);
            printf("# configuration OK\n");
        }
        ch_config_done(&cfg);
        return 0;
    }
    ch_log_set_level(cfg.log_level);

    /* A stop signal during start-up (topic checks, broker round trips) waits until the
     * loop's handlers exist, then stops cleanly; librdkafka's threads, created from
     * here on, inherit the mask and never take these signals. */
    sigset_t stop_signals, before;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop_signals, &before);

    daemon_ctx_t d = {.cfg = &cfg};
    r = ch_pipeline_new(&cfg, &d.pipe, err, sizeof(err));
    if (r < 0) {
        ch_log(CH_LOG_ERR, "%s", err[0] ? err : strerror(-r));
        ch_config_done(&cfg);
        return r == -EINVAL || r == -ENOENT || r == -EPROTO ? 2 : 1;
    }
    ch_log(CH_LOG_NOTICE, "cohortd %s: %s -> %s (dead letters: %s), %zu features, group %s",
           CH_VERSION, cfg.input_topic, cfg.profile_topic, cfg.dlq_topic, cfg.n_features,
           ch_config_kafka_get(&cfg, "group.id", CH_KAFKA_CONSUMER)
               ? ch_config_kafka_get(&cfg, "group.id", CH_KAFKA_CONSUMER)
               : "cohortd");

    d.loop = ev_default_loop(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
    ev_io_init(&d.consumer_io, on_consumer_io, ch_pipeline_consumer_fd(d.pipe), EV_READ);
    ev_io_init(&d.producer_io, on_producer_io, ch_pipeline_producer_fd(d.pipe), EV_READ);
    ev_idle_init(&d.drain_idle, on_drain_idle);
    ev_idle_init(&d.restore_idle, on_restore_idle);
    d.reader_io.data = d.restore_idle.data = d.sync_io.data = d.eval_io.data = &d;
    if (ch_pipeline_sync_fd(d.pipe) >= 0) { /* the same work as the changelog reader's */
        ev_io_init(&d.sync_io, on_reader_io, ch_pipeline_sync_fd(d.pipe), EV_READ);
        ev_io_start(d.loop, &d.sync_io);
    }
    if (ch_pipeline_reader_fd(d.pipe) >= 0) {
        ev_io_init(&d.reader_io, on_reader_io, ch_pipeline_reader_fd(d.pipe), EV_READ);
        ev_io_start(d.loop, &d.reader_io);
    }
    if (ch_pipeline_eval_fd(d.pipe) >= 0) {
        ev_io_init(&d.eval_io, on_reader_io, ch_pipeline_eval_fd(d.pipe), EV_READ);
        ev_io_start(d.loop, &d.eval_io);
    }
    ev_timer_init(&d.reg_timer, on_reg_timer, 0.0, 0.0);
    d.reg_timer.data = &d;
    ch_pipeline_loop_t reg_loop = {reg_watch, reg_timer, &d};
    ch_pipeline_registry_loop(d.pipe, &reg_loop);
    ev_timer_init(&d.safety, on_safety, 0.1, 0.1);
    ev_timer_init(&d.housekeeping, on_housekeeping, 1.0, 1.0);
    ev_signal_init(&d.sigterm, on_stop_signal, SIGTERM);
    ev_signal_init(&d.sigint, on_stop_signal, SIGINT);
    ev_signal_init(&d.sighup, on_sighup, SIGHUP);
    d.consumer_io.data = d.producer_io.data = d.drain_idle.data = &d;
    d.safety.data = d.housekeeping.data = d.stats.data = &d;
    d.sigterm.data = d.sigint.data = d.sighup.data = &d;
    ev_io_start(d.loop, &d.consumer_io);
    ev_io_start(d.loop, &d.producer_io);
    ev_timer_start(d.loop, &d.safety);
    ev_timer_start(d.loop, &d.housekeeping);
    if (cfg.log_stats_interval_ms > 0 && isfinite(cfg.log_stats_interval_ms)) {
        double iv = cfg.log_stats_interval_ms / 1000.0;
        ev_timer_init(&d.stats, on_stats, iv, iv);
        ev_timer_start(d.loop, &d.stats);
    }
    ev_signal_start(d.loop, &d.sigterm);
    ev_signal_start(d.loop, &d.sigint);
    ev_signal_start(d.loop, &d.sighup);
    pthread_sigmask(SIG_SETMASK, &before, NULL); /* pending ones are delivered now */
    if (cfg.model_path[0] && cfg.model_watch_ms > 0 && isfinite(cfg.model_watch_ms)) {
        ev_stat_init(&d.model_watch, on_model_change, cfg.model_path,
                     cfg.model_watch_ms / 1000.0);
        d.model_watch.data = &d;
        ev_stat_start(d.loop, &d.model_watch);
    }
    signal(SIGPIPE, SIG_IGN);
    d.last_save_s = ch_now_s();
    d.last_stats_s = d.last_status_s = ch_now_s();
    d.start_time_s = ch_wall_ms() / 1000.0;

    if (strcmp(cfg.http_listen, "off") != 0) {
        r = ch_http_new(d.loop, cfg.http_listen, (size_t)cfg.http_max_connections, http_handler,
                        &d, &d.http, err, sizeof(err));
        char names[2 * CH_CONF_STR + 2], port[16];
        if (r == 0 && ch_http_split_address(cfg.http_listen, names, CH_CONF_STR, port,
                                            sizeof(port)) == 0) {
            /* the name it listens on is one it answers to */
            snprintf(names + strlen(names), sizeof(names) - strlen(names), ",%s",
                     cfg.http_allowed_hosts);
            if ((r = ch_http_allow_hosts(d.http, names)) < 0) {
                snprintf(err, sizeof(err), "http: out of memory");
                d.http = ch_http_free(d.http);
            }
        }
        if (r < 0) {
            ch_log(CH_LOG_ERR, "%s", err);
            d.pipe = ch_pipeline_free(d.pipe);
            reg_free(&d);
            ev_loop_destroy(d.loop);
            ch_config_done(&cfg);
            return r == -EINVAL ? 2 : 1;
        }
        ch_log(CH_LOG_INFO, "http: serving /healthz /readyz /metrics /users/<id> /segments on %s",
               ch_http_address(d.http));
    }
    uint64_t wd_usec = 0;
    if (sd_watchdog_enabled(0, &wd_usec) > 0 && wd_usec > 0) {
        double iv = (double)wd_usec / 2e6;
        ev_timer_init(&d.watchdog, on_watchdog, iv, iv);
        ev_timer_start(d.loop, &d.watchdog);
        ch_log(CH_LOG_INFO, "systemd watchdog: pinging every %.3f s", iv);
    }
    d.notify = getenv("NOTIFY_SOCKET") != NULL;
    if (d.notify) {
        ev_timer_init(&d.status, on_status, 5.0, 5.0);
        d.status.data = &d;
        ev_timer_start(d.loop, &d.status);
    }
    sd_notifyf(0, "READY=1\nSTATUS=subscribed to %s; waiting for partitions",
               cfg.input_topic);

    ev_run(d.loop, 0);

    if (d.stop_s == 0) {
        d.stop_s = ch_now_s();
    }
    double deadline = d.stop_s + fmin(cfg.shutdown_timeout_ms, 1e9) / 1000.0;
    d.http = ch_http_free(d.http);
    ch_pipeline_stop_t st;
    r = ch_pipeline_shutdown(d.pipe, deadline, &st); /* each blocking step ends by deadline */
    ch_pipeline_save_segments(d.pipe); /* local and short: before the watchdog can cut it */
    ch_pipeline_stats_t s;
    ch_pipeline_stats(d.pipe, &s);
    if (d.exit_code == 0 && r < 0) {
        d.exit_code = 1;
    }
    char verdict[768], what[256];
    if (st.uncommitted_parts) {
        snprintf(what, sizeof(what),
                 "; NOT committed: the offsets of %zu partition(s) (%lld event(s) whose outputs "
                 "were acknowledged): they will be reprocessed on restart",
                 st.uncommitted_parts, (long long)st.uncommitted_records);
    } else if (d.exit_code == 0) {
        snprintf(what, sizeof(what), "; offsets committed");
    } else {
        snprintf(what, sizeof(what), "; acknowledged events committed%s",
                 st.unacked ? ", those of unacknowledged outputs not" : "");
    }
    snprintf(verdict, sizeof(verdict),
             "stopped: %llu consumed, %llu profiles, %llu risk updates (%llu alerts), %llu dead "
             "letters, %llu delivery failures%s (exit %d)",
             (unsigned long long)s.consumed, (unsigned long long)s.profiles_acked,
             (unsigned long long)s.risk_acked, (unsigned long long)s.alerts,
             (unsigned long long)s.dlq_acked, (unsigned long long)s.delivery_failures, what,
             d.exit_code);
    reaper_t reaper = {.done = false};
    bool reaping =
        isfinite(cfg.shutdown_timeout_ms) && reaper_start(&reaper, deadline, verdict, d.exit_code);
    d.pipe = ch_pipeline_free(d.pipe); /* the registry client first stops watching */
    reg_free(&d);
    if (reaping) {
        reaper_stop(&reaper);
    }
    ch_log(d.exit_code ? CH_LOG_ERR : CH_LOG_NOTICE, "%s", verdict);
    ev_loop_destroy(d.loop);
    ch_config_done(&cfg);
    return d.exit_code;
}
