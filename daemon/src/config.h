/*
 * config.h - cohortd's configuration: one key = value file plus --set overrides.
 */
#ifndef CH_CONFIG_H
#define CH_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ch/codec.h"
#include "ch/features.h"
#include "ch/kafka_settings.h"
#include "ch/kmeans.h"
#include "log.h"

#define CH_CONF_STR 512

typedef enum ch_emit_policy {
    CH_EMIT_EVERY,
    CH_EMIT_CHANGE,
} ch_emit_policy_t;

typedef enum ch_guarantee {
    CH_AT_LEAST_ONCE,
    CH_EXACTLY_ONCE,
} ch_guarantee_t;

typedef enum ch_output_format {
    CH_FORMAT_AVRO,
    CH_FORMAT_JSON,
} ch_output_format_t;

typedef struct ch_conf_pair {
    char *key;   /* for kafka: the librdkafka property; for features: the name */
    char *value;
    ch_kafka_scope_t scope; /* kafka pairs: which client; features: CH_KAFKA_BOTH */
    char where[CH_CONF_STR]; /* "file:line" or "--set" */
} ch_conf_pair_t;

typedef struct ch_config {
    char path[CH_CONF_STR]; /* the config file, "" if none */
    char base_dir[CH_CONF_STR];

    char input_topic[CH_CONF_STR];
    ch_framing_t input_framing;
    ch_output_format_t input_format; /* avro (input.framing) or json */
    char schema_dir[CH_CONF_STR];
    char input_schema[CH_CONF_STR];
    char input_writer_schema[CH_CONF_STR];
    char registry_url[CH_CONF_STR]; /* schema.registry.url: "" none */
    char registry_username[CH_CONF_STR];
    char registry_password_file[CH_CONF_STR];
    char registry_ca_file[CH_CONF_STR];
    char registry_cert_file[CH_CONF_STR];
    char registry_key_file[CH_CONF_STR];
    double registry_timeout_ms;
    double registry_retry_max_ms;
    bool registry_register_outputs;
    long input_event_id_max_bytes;
    double input_max_future_ms;
    double input_max_age_ms; /* 0: no limit */
    double input_max_abs; /* |value| bound of every number a feature reads */
    double input_max_skew_ms;   /* 0: no timestamp alignment */
    double input_align_idle_ms;
    char input_start_at[CH_CONF_STR]; /* "": off; ch_config_start_at() reads it */
    char input_map[CH_ROLE_N][CH_CONF_STR]; /* input.map.<role>: a dotted path, "" none */
    ch_ts_unit_t input_ts_unit;

    char profile_topic[CH_CONF_STR];
    char dlq_topic[CH_CONF_STR];
    ch_framing_t output_framing;
    ch_output_format_t output_format;

    double features_half_life_ms;
    ch_emit_policy_t emit_policy;
    double emit_heartbeat_ms;

    char model_path[CH_CONF_STR];
    int model_kind; /* 0 classifier, 1 autoencoder (ch_config_model_kinds) */
    char model_challenger_path[CH_CONF_STR]; /* a second model scored alongside; "" none */
    double model_watch_ms;
    char risk_topic[CH_CONF_STR];
    double risk_threshold;
    long risk_reasons;
    ch_emit_policy_t risk_emit;
    double risk_delta;

    /* evaluation.*: live quality of the risk model from delayed labels; "" off */
    char eval_labels_topic[CH_CONF_STR];
    char eval_metrics_topic[CH_CONF_STR];
    double eval_score_ttl_ms; /* event time a score waits for its label */
    size_t eval_max_scores;   /* scores held at most */
    double eval_window_ms;    /* label time the figures cover */
    size_t eval_window_max;   /* labelled pairs the figures cover at most */
    double eval_interval_ms;  /* between records on the metrics topic */

    size_t drift_window; /* scored vectors the PSI covers */
    double drift_warn;   /* a feature's PSI above this logs a warning */

    /* segments.*: the key table writes the K-Means options directly; k = 0 turns
     * segments off; dim and max_batch follow from the features and batch.max_events */
    ch_kmeans_opts_t segments;
    char segments_state_file[CH_CONF_STR];
    bool segments_refresh_stream;     /* segments.refresh counts stream time, not wall time */
    char segments_topic[CH_CONF_STR]; /* segment updates; "" none */
    char segments_sync_topic[CH_CONF_STR]; /* one set of segments across instances; "" off */
    double segments_sync_timeout_ms;
    size_t segments_sync_sample;      /* users in the coordinator's sample */
    size_t segments_trending;         /* trending values per segment update */
    double segments_trending_hl_ms;
    size_t segments_trending_slots;

    long batch_max_events;
    long batch_max_inflight;

    long state_max_users;
    long state_key_max_bytes;
    double state_idle_evict_ms;
    char state_changelog[CH_CONF_STR]; /* "": no changelog */
    bool state_changelog_watch;        /* read the tail back and rewrite stale users */
    double commit_interval_ms; /* changelog write-combining interval */
    ch_guarantee_t processing_guarantee;
    char state_dir[CH_CONF_STR]; /* "": no local snapshots */
    double state_snapshot_interval_ms; /* 0: at shutdown only */

    bool privacy_pseudonymize;
    char privacy_key_file[CH_CONF_STR];
    char privacy_drop_fields[CH_CONF_STR]; /* comma-separated; "": dead letters unchanged */

    char http_listen[CH_CONF_STR]; /* host:port, "off" */
    long http_max_connections;
    char http_allowed_hosts[CH_CONF_STR]; /* comma-separated; "": IPs, localhost only */

    ch_log_level_t log_level;
    double log_stats_interval_ms;
    long log_bad_input_per_min;
    double shutdown_timeout_ms;

    ch_conf_pair_t *kafka;
    size_t n_kafka;
    ch_conf_pair_t *features;
    size_t n_features;
    ch_conf_pair_t *tags; /* tags.<name> = top(...): key the name */
    size_t n_tags;
    ch_conf_pair_t *ranges; /* input.range.<field> = LOW..HIGH: key the field */
    size_t n_ranges;
} ch_config_t;

/**
 * @brief Parse LOW..HIGH (two finite numbers, LOW <= HIGH).
 * @returns 0, -EINVAL.
 */
int ch_config_parse_range(const char *s, double *ret_lo, double *ret_hi);

/**
 * @brief input.start_at as milliseconds since 1970 (UTC): -1 when it is empty (off).
 * @returns 0, -EINVAL (neither ISO-8601 nor an integer of milliseconds since 1970).
 */
int ch_config_start_at(const ch_config_t *cfg, int64_t *ret_ms);

/** @brief A point in time: milliseconds since 1970, or ISO-8601 (input.start_at's syntax).
 *  @returns 0, -EINVAL. */
int ch_config_parse_time(const char *s, int64_t *ret_ms);

/** @brief Set every key to its default. */
int ch_config_init(ch_config_t *cfg);
/** @brief Free what the config owns. */
void ch_config_done(ch_config_t *cfg);

/**
 * @brief Read a config file. Relative paths in it are relative to its directory.
 * @returns 0, -ENOENT, -EINVAL (errbuf: "file:line: reason").
 */
int ch_config_load(ch_config_t *cfg, const char *path, char *errbuf, size_t errlen);

/**
 * @brief Apply one "key=value" override (after the file).
 * @returns 0, -EINVAL (errbuf says why).
 */
int ch_config_set(ch_config_t *cfg, const char *assignment, char *errbuf, size_t errlen);

/**
 * @brief Cross-key checks after all sources are read.
 * @returns 0, -EINVAL (errbuf says why).
 */
int ch_config_validate(const ch_config_t *cfg, char *errbuf, size_t errlen);

/** @brief ch_config_validate() without the Kafka settings: what a mode that reads files
 *  (cohortd featurize) needs. @returns 0, -EINVAL. */
int ch_config_validate_offline(const ch_config_t *cfg, char *errbuf, size_t errlen);

/** @brief Look up a kafka.* property as finally set. @returns the value or NULL. */
const char *ch_config_kafka_get(const ch_config_t *cfg, const char *key, ch_kafka_scope_t scope);

/**
 * @brief The declared feature.* lines as a sealed feature set (the one builder that
 *        --check-config and the pipeline share).
 * @returns 0, -EINVAL (errbuf: "file:line: feature.NAME: reason"), -ENOMEM.
 */
int ch_config_features(const ch_config_t *cfg, ch_features_t **ret_fs, char *errbuf,
                       size_t errlen);

/**
 * @brief Whether the features' per-user state fits the user table: at most
 *        CH_USERS_STATE_MAX doubles a user, and state.max_users records of it (with the
 *        key and the daemon's own fields) within CH_CONFIG_TABLE_MAX bytes of address
 *        space (reserved, not allocated: only users present take memory).
 * @returns 0; -E2BIG (errbuf names the largest feature and what to lower).
 */
int ch_config_check_state(const ch_config_t *cfg, const ch_features_t *fs, size_t extra_bytes,
                          char *errbuf, size_t errlen);

#define CH_CONFIG_TABLE_MAX (UINT64_C(1) << 45) /* 32 TiB: a quarter of x86-64 user space */

/**
 * @brief state.idle_evict in effect for these features: as set, or for auto 20 times
 *        the longest feature half-life (0, never, if a feature does not decay).
 * @param ret_warning set to a warning (empty if none) when a set value is shorter than
 *        the longest half-life: users would be forgotten while their features still
 *        carry weight.
 * @returns milliseconds; 0: never.
 */
double ch_config_idle_evict_ms(const ch_config_t *cfg, const ch_features_t *fs, char *ret_warning,
                               size_t len);

/* The fields privacy.drop_fields may name (bits of ch_config_drop_mask()). */
#define CH_DROP_FIELDS "key, event_id, user_id, ts, type, amount, item, category, attrs"
enum {
    CH_DROP_KEY = 1 << 0,
    CH_DROP_EVENT_ID = 1 << 1,
    CH_DROP_USER_ID = 1 << 2,
    CH_DROP_TS = 1 << 3,
    CH_DROP_TYPE = 1 << 4,
    CH_DROP_AMOUNT = 1 << 5,
    CH_DROP_ITEM = 1 << 6,
    CH_DROP_CATEGORY = 1 << 7,
    CH_DROP_ATTRS = 1 << 8,
};

/**
 * @brief privacy.drop_fields as a mask of CH_DROP_*; user_id implies key (the input is
 *        keyed by user id).
 * @returns the mask (0: none), -EINVAL (an unknown name: errbuf names it).
 */
int ch_config_drop_mask(const ch_config_t *cfg, char *errbuf, size_t errlen);

/** @brief Print the effective settings, secrets masked. */
void ch_config_print(const ch_config_t *cfg, FILE *out);

/** @brief Print every key with type, default, range and help (as text, or as a
 *         Markdown table for the README). */
void ch_config_print_help(FILE *out, bool markdown);

/** @brief Whether a librdkafka property holds a secret (never printed or logged). */
bool ch_config_is_secret(const char *key);

/* model.kind's names, by value. */
extern const char *const ch_config_model_kinds[];

#endif
