/*
 * schemafetch.c - writer schemas from a Confluent Schema Registry (schema.registry.*):
 * a record naming an id the decoder does not know holds its partition while the
 * schema is fetched; the outputs' schemas are registered at start.
 *
 * Design notes
 * - Invariant: a partition waits for at most one id, and none of its records from
 *   the first one naming that id on has been processed (they went back to the
 *   consumer with ch_consumer_unread, before the batch counted them consumed), so
 *   offsets committed never pass a record that waits and nothing is dropped.
 * - Other partitions flow on: the fetch runs on the loop (ch/registry.h), the batch
 *   path only checks the record's id against the decoder (no allocation).
 * - One fetch per id, whatever the number of partitions waiting for it. A failed
 *   fetch (no answer, an HTTP error, credentials refused) is retried after 0.5 s,
 *   doubling up to schema.registry.retry_max; the registry counts as down from the
 *   first failure to the next answer, which /readyz and /metrics show.
 * - An answer that the schema does not exist (404) or is not Avro is final: the
 *   decoder learns the id as failing with that reason, and its records become
 *   schema_error dead letters (with the registry's answer as the reason).
 * - The fetched schemas are cached for the process's life (the decoder's programs);
 *   a schema id's content never changes in a registry.
 */
#include "pipeline_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIRST_RETRY_S 0.5
#define PASSWORD_MAX 1024

static ch_schemafetch_id_t *pending(ch_schemafetch_t *sf, int32_t id) {
    for (size_t i = 0; i < sf->n_pending; i++) {
        if (sf->pending[i].id == id) {
            return &sf->pending[i];
        }
    }
    return NULL;
}

static void drop_pending(ch_schemafetch_t *sf, ch_schemafetch_id_t *e) {
    *e = sf->pending[--sf->n_pending];
}

/* Release every partition waiting for id. */
static void release(ch_pipeline_t *p, int32_t id) {
    ch_schemafetch_t *sf = &p->sf;
    for (size_t part = 0; part < sf->n_waiting; part++) {
        if (sf->waiting[part] == id) {
            sf->waiting[part] = -1;
            sf->partitions_waiting--;
            ch_consumer_hold(p->clients.consumer, (int32_t)part, false);
        }
    }
}

static void start(ch_pipeline_t *p, ch_schemafetch_id_t *e) {
    ch_schemafetch_t *sf = &p->sf;
    if (!sf->hooked) {
        return; /* the loop is not wired yet: ch_schemafetch_tick starts it */
    }
    int r = ch_registry_fetch(sf->reg, e->id);
    if (r == 0 || r == -EALREADY) {
        e->in_flight = true;
        sf->requests++;
    } else {
        e->next_try_s = ch_now_s() + e->backoff_s; /* out of memory: later */
    }
}

static void on_done(void *opaque, const ch_registry_result_t *res) {
    ch_pipeline_t *p = opaque;
    ch_schemafetch_t *sf = &p->sf;
    ch_schemafetch_id_t *e = pending(sf, res->id);
    if (!e) {
        return;
    }
    e->in_flight = false;
    uint64_t suppressed = 0;
    bool final = res->err == 0 || res->err == -ENOENT || res->err == -EPROTO;
    if (!final) {
        sf->failures++;
        e->failures++;
        if (sf->up || e->failures == 1) {
            ch_log(CH_LOG_WARNING,
                   "schema registry: %s; %zu partition(s) of %s held, retrying in %.1f s",
                   res->message, sf->partitions_waiting, p->cfg->input_topic, e->backoff_s);
        } else if (ch_ratelimit_allow(&sf->rl, &suppressed)) {
            ch_log(CH_LOG_WARNING, "schema registry: still failing (%u attempts for id %d): %s",
                   e->failures, (int)e->id, res->message);
        }
        sf->up = false;
        snprintf(sf->last_error, sizeof(sf->last_error), "%s", res->message);
        e->next_try_s = ch_now_s() + e->backoff_s;
        e->backoff_s *= 2;
        double cap = p->cfg->registry_retry_max_ms / 1000.0;
        e->backoff_s = e->backoff_s > cap ? cap : e->backoff_s;
        return;
    }
    if (!sf->up) {
        ch_log(CH_LOG_NOTICE, "schema registry: answering again (schema id %d)", (int)res->id);
    }
    sf->up = true;
    sf->last_error[0] = '\0';
    char why[512];
    int r;
    if (res->err == 0) {
        sf->fetched++;
        r = ch_events_add_schema(p->events, res->id, res->schema, res->schema_len, NULL, why,
                                 sizeof(why));
        if (r == 0) {
            ch_log(CH_LOG_INFO, "schema registry: learned writer schema id %d", (int)res->id);
        } else {
            ch_log(CH_LOG_ERR, "schema registry: schema id %d: %s; its records are dead letters",
                   (int)res->id, r == -EINVAL ? why : strerror(-r));
        }
    } else {
        sf->not_found++;
        snprintf(why, sizeof(why), "schema id %d: %s", (int)res->id, res->message);
        r = ch_events_add_schema(p->events, res->id, NULL, 0, why, NULL, 0);
        ch_log(CH_LOG_ERR, "schema registry: %s; its records are dead letters (schema_error)",
               res->message);
    }
    if (r == -ENOMEM || r == -E2BIG) {
        /* not learned: its records would wait again at once; stop rather than spin */
        ch_log(CH_LOG_ERR, "schema registry: cannot keep schema id %d (%s); stopping", (int)res->id,
               r == -E2BIG ? "too many schemas" : strerror(-r));
        p->failed = true;
    }
    int32_t id = res->id;
    drop_pending(sf, e);
    release(p, id);
}

/* The registry password: the first line of the file, which only its owner may read. */
static int read_password(const char *path, char *out, size_t cap, char *errbuf, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(errbuf, errlen, "schema.registry.password_file: cannot open %s: %s", path,
                 strerror(errno));
        return -EINVAL;
    }
    struct stat st;
    int r = 0;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(errbuf, errlen, "schema.registry.password_file: %s is not a regular file", path);
        r = -EINVAL;
    } else if (st.st_mode & 077) {
        snprintf(errbuf, errlen,
                 "schema.registry.password_file: %s is accessible by group or others (mode "
                 "%03o): chmod 600 it",
                 path, (unsigned)(st.st_mode & 0777));
        r = -EINVAL;
    } else {
        ssize_t n = read(fd, out, cap - 1);
        if (n < 0) {
            snprintf(errbuf, errlen, "schema.registry.password_file: %s: %s", path,
                     strerror(errno));
            r = -EINVAL;
        } else {
            out[n] = '\0';
            out[strcspn(out, "\r\n")] = '\0';
        }
    }
    close(fd);
    return r;
}

static void hook_watch(void *opaque, int fd, bool rd, bool wr) {
    ch_pipeline_t *p = opaque;
    p->sf.loop.watch(p->sf.loop.opaque, fd, rd, wr);
}

static void hook_timer(void *opaque, long ms) {
    ch_pipeline_t *p = opaque;
    p->sf.loop.timer(p->sf.loop.opaque, ms);
}

/* Read an output schema from schema.dir and register it under <topic>-value. */
static int register_output(ch_pipeline_t *p, const char *file, const char *topic, int32_t *ret_id,
                           char *errbuf, size_t errlen) {
    char path[CH_CONF_STR + 64], subject[CH_CONF_STR + 8], why[1024];
    snprintf(path, sizeof(path), "%s/%s", p->cfg->schema_dir, file);
    snprintf(subject, sizeof(subject), "%s-value", topic);
    FILE *f = fopen(path, "re");
    if (!f) {
        snprintf(errbuf, errlen, "%s: %s", path, strerror(errno));
        return -ENOENT;
    }
    ch_buf_t b;
    ch_buf_init(&b);
    char chunk[4096];
    size_t n;
    int r = 0;
    while (r == 0 && (n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        r = ch_buf_append(&b, chunk, n);
    }
    fclose(f);
    if (r == 0) {
        r = ch_registry_register(p->sf.reg, subject, (const char *)b.data, b.len, ret_id, why,
                                 sizeof(why));
        if (r < 0) {
            snprintf(errbuf, errlen, "schema registry: registering %s as %s: %s", file, subject,
                     why);
            /* refused (credentials, schema): a setting to fix, exit 2; else try later */
            r = r == -EINVAL || r == -EACCES ? -EINVAL : -EIO;
        } else {
            ch_log(CH_LOG_INFO, "schema registry: %s is schema id %d (subject %s)", file,
                   (int)*ret_id, subject);
        }
    }
    ch_buf_done(&b);
    return r;
}

bool ch_schemafetch_registers_outputs(const ch_config_t *cfg) {
    return cfg->registry_url[0] && cfg->registry_register_outputs &&
           cfg->output_framing == CH_FRAMING_CONFLUENT && cfg->output_format == CH_FORMAT_AVRO;
}

int ch_schemafetch_init(ch_pipeline_t *p, const char *profile_schema, char *errbuf, size_t errlen) {
    ch_schemafetch_t *sf = &p->sf;
    const ch_config_t *cfg = p->cfg;
    sf->up = true;
    ch_ratelimit_init(&sf->rl, 2);
    if (!cfg->registry_url[0]) {
        return 0;
    }
    char password[PASSWORD_MAX] = "";
    int r = 0;
    if (cfg->registry_password_file[0]) {
        r = read_password(cfg->registry_password_file, password, sizeof(password), errbuf, errlen);
    }
    if (r == 0) {
        ch_registry_opts_t o = {.url = cfg->registry_url,
                                .username = cfg->registry_username,
                                .password = password,
                                .ca_file = cfg->registry_ca_file,
                                .cert_file = cfg->registry_cert_file,
                                .key_file = cfg->registry_key_file,
                                .timeout_ms = (long)cfg->registry_timeout_ms};
        ch_registry_hooks_t h = {hook_watch, hook_timer, on_done, p};
        r = ch_registry_new(&o, &h, &sf->reg, errbuf, errlen);
    }
    explicit_bzero(password, sizeof(password));
    if (r < 0) {
        return r;
    }
    if (ch_schemafetch_registers_outputs(cfg)) {
        r = register_output(p, profile_schema, cfg->profile_topic, &p->profile_schema_id, errbuf,
                            errlen);
        if (r == 0 && cfg->model_path[0]) {
            r = register_output(p, ch_pipeline_risk_schema(cfg), cfg->risk_topic,
                                &p->risk_schema_id, errbuf, errlen);
        }
        if (r == 0 && cfg->segments.k > 0 && cfg->segments_topic[0]) {
            r = register_output(p, "segment_update.avsc", cfg->segments_topic,
                                &p->segment_schema_id, errbuf, errlen);
        }
    }
    return r;
}

void ch_schemafetch_done(ch_pipeline_t *p) {
    p->sf.reg = ch_registry_free(p->sf.reg);
    free(p->sf.waiting);
    p->sf.waiting = NULL;
}

void ch_schemafetch_hook(ch_pipeline_t *p, const ch_schemafetch_loop_t *loop) {
    if (p->sf.reg) {
        p->sf.loop = *loop;
        p->sf.hooked = true;
    }
}

bool ch_schemafetch_waits(ch_pipeline_t *p, const ch_msg_t *m) {
    ch_schemafetch_t *sf = &p->sf;
    if (!sf->reg) {
        return false;
    }
    size_t part = (size_t)m->partition;
    if (part < sf->n_waiting && sf->waiting[part] >= 0) {
        return true; /* after the record that waits: given back with it */
    }
    int32_t id;
    if (!ch_events_unknown_id(p->events, m, &id)) {
        return false;
    }
    if (part >= sf->n_waiting) {
        size_t cap = part + 16;
        int32_t *nw = realloc(sf->waiting, cap * sizeof(*nw));
        if (!nw) {
            return false; /* decoded as unknown: a dead letter, not a loss */
        }
        for (size_t i = sf->n_waiting; i < cap; i++) {
            nw[i] = -1;
        }
        sf->waiting = nw;
        sf->n_waiting = cap;
    }
    ch_schemafetch_id_t *e = pending(sf, id);
    if (!e) {
        if (sf->n_pending == CH_SCHEMAFETCH_MAX_PENDING) {
            return false; /* too many unknown ids at once: dead letters */
        }
        e = &sf->pending[sf->n_pending++];
        *e = (ch_schemafetch_id_t){.id = id, .backoff_s = FIRST_RETRY_S};
        start(p, e);
    }
    int r = ch_consumer_unread(p->clients.consumer, m->partition, m->offset);
    if (r < 0) {
        ch_log(CH_LOG_ERR, "schema registry: cannot hold %s[%d] (%s); stopping",
               p->cfg->input_topic, m->partition, strerror(-r));
        p->failed = true;
        return true;
    }
    sf->waiting[part] = id;
    sf->partitions_waiting++;
    sf->holds++;
    ch_log(CH_LOG_INFO,
           "schema registry: %s[%d]@%lld names unknown schema id %d; partition held "
           "while it is fetched",
           p->cfg->input_topic, m->partition, (long long)m->offset, (int)id);
    return true;
}

void ch_schemafetch_revoked(ch_pipeline_t *p, int32_t partition) {
    ch_schemafetch_t *sf = &p->sf;
    if (partition >= 0 && (size_t)partition < sf->n_waiting && sf->waiting[partition] >= 0) {
        sf->waiting[partition] = -1; /* the consumer dropped what it held back */
        sf->partitions_waiting--;
    }
}

void ch_schemafetch_tick(ch_pipeline_t *p) {
    ch_schemafetch_t *sf = &p->sf;
    double now = ch_now_s();
    for (size_t i = 0; i < sf->n_pending; i++) {
        ch_schemafetch_id_t *e = &sf->pending[i];
        if (!e->in_flight && now >= e->next_try_s) {
            start(p, e);
        }
    }
}

bool ch_schemafetch_ready(const ch_pipeline_t *p, char *why, size_t len) {
    const ch_schemafetch_t *sf = &p->sf;
    if (sf->up || sf->partitions_waiting == 0) {
        return true;
    }
    snprintf(why, len, "schema registry unreachable (%s); %zu partition(s) held", sf->last_error,
             sf->partitions_waiting);
    return false;
}
