/*
 * config.c - table-driven configuration (one table: parsing, defaults, help).
 *
 * Design notes
 * - Every scalar key is one row of `keys`: name, type, offsetof the field,
 *   default (as text, parsed by the same code as user input), range, help.
 *   --help-config and --check-config print from the same table.
 * - Three open families: kafka.<prop> (both clients), kafka.consumer.<prop>
 *   and kafka.producer.<prop> go verbatim to librdkafka, in order;
 *   feature.<name> declares a feature, in output order.
 * - Relative paths are relative to the config file's directory (or the
 *   working directory when there is no file), so a config and its schemas
 *   move together.
 */
#include "config.h"

#include "ch/registry.h"
#include "errbuf.h"
#include "http.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ch/features.h"
#include "ch/users.h"
#include "ch/mapping.h"

typedef enum key_type {
    K_STR,
    K_PATH,
    K_INT,           /* long */
    K_DURATION,      /* double, milliseconds */
    K_DURATION_AUTO, /* a duration, or auto (stored as NAN) */
    K_ENUM,          /* an enum type, stored as its value */
    K_FLOAT,         /* double */
    K_SIZE,          /* size_t (an integer) */
    K_U64,           /* uint64_t (an integer) */
    K_FLAG,          /* bool, chosen by name (choices map to 1 and 0) */
    K_OPTSTR,        /* a string that may be empty (empty: the feature is off) */
} key_type_t;

typedef struct key_def {
    const char *name;
    key_type_t type;
    size_t off;
    const char *dflt;
    double min, max;
    const char *const *choices; /* K_ENUM: NULL-terminated; the value is the index */
    const int *choice_values;   /* K_ENUM: stored value per choice (NULL: index) */
    const char *help;
} key_def_t;

static const char *const framings[] = {"confluent", "plain", NULL};
static const char *const policies[] = {"every", "change", NULL};
const char *const ch_config_model_kinds[] = {"classifier", "autoencoder", NULL};
static const char *const guarantees[] = {"at_least_once", "exactly_once", NULL};
static const char *const levels[] = {"err", "warning", "notice", "info", "debug", NULL};
static const int level_values[] = {3, 4, 5, 6, 7};
static const char *const formats[] = {"avro", "json", NULL};
static const char *const transforms[] = {"log1p", "none", NULL};
static const char *const clocks[] = {"wall", "stream", NULL};
static const int clock_values[] = {0, 1};
static const int transform_values[] = {1, 0};
static const char *const switches[] = {"off", "on", NULL};
static const char *const ts_units[] = {"auto", "ms", "us", "s", "iso8601", NULL};
static const int ts_unit_values[] = {CH_TS_AUTO, CH_TS_MS, CH_TS_US, CH_TS_S, CH_TS_ISO8601};
static const int switch_values[] = {0, 1};

/* An enum field is written as an int: every enum here must have an int's size. */
_Static_assert(sizeof(ch_framing_t) == sizeof(int), "enum size");
_Static_assert(sizeof(ch_emit_policy_t) == sizeof(int), "enum size");
_Static_assert(sizeof(ch_output_format_t) == sizeof(int), "enum size");
_Static_assert(sizeof(ch_log_level_t) == sizeof(int), "enum size");
_Static_assert(sizeof(ch_guarantee_t) == sizeof(int), "enum size");
_Static_assert(sizeof(ch_ts_unit_t) == sizeof(int), "enum size");

#define OFF(f) offsetof(ch_config_t, f)
static const key_def_t keys[] = {
    {"input.topic", K_STR, OFF(input_topic), "events", 0, 0, NULL, NULL,
     "Kafka topic of user events (Avro), keyed by user_id."},
    {"input.format", K_ENUM, OFF(input_format), "avro", 0, 0, formats, NULL,
     "avro (framed as input.framing says) or json: one JSON object per message, its fields "
     "where input.map.* says (by default those of user_event.avsc); malformed JSON is bad "
     "input (decode_error)."},
    {"input.framing", K_ENUM, OFF(input_framing), "confluent", 0, 0, framings, NULL,
     "confluent: magic byte 0 + 4-byte schema id + Avro; plain: Avro with input.writer_schema."},
    {"schema.dir", K_PATH, OFF(schema_dir), "schemas", 0, 0, NULL, NULL,
     "Directory of .avsc files with an 'ids' file mapping schema ids to files."},
    {"input.schema", K_PATH, OFF(input_schema), "", 0, 0, NULL, NULL,
     "Reader schema for events (default: <schema.dir>/user_event.avsc)."},
    {"input.writer_schema", K_PATH, OFF(input_writer_schema), "", 0, 0, NULL, NULL,
     "Writer schema for plain framing (default: the reader schema)."},
    {"schema.registry.url", K_OPTSTR, OFF(registry_url), "", 0, 0, NULL, NULL,
     "Confluent Schema Registry (http:// or https://). Input in Confluent framing whose "
     "schema id schema.dir/ids does not list is held (its partition only) while the writer "
     "schema is fetched from GET /schemas/ids/<id>, then cached; an unreachable registry is "
     "retried with backoff, nothing is skipped. Empty: schema.dir alone."},
    {"schema.registry.username", K_OPTSTR, OFF(registry_username), "", 0, 0, NULL, NULL,
     "HTTP basic authentication user for the registry; empty: none."},
    {"schema.registry.password_file", K_PATH, OFF(registry_password_file), "", 0, 0, NULL, NULL,
     "File holding the registry password (its first line; readable by the daemon's user "
     "only). Never logged."},
    {"schema.registry.ca_file", K_PATH, OFF(registry_ca_file), "", 0, 0, NULL, NULL,
     "CA certificates (PEM) that verify an https registry; empty: the system's."},
    {"schema.registry.cert_file", K_PATH, OFF(registry_cert_file), "", 0, 0, NULL, NULL,
     "Client certificate (PEM) for mutual TLS with the registry; empty: none."},
    {"schema.registry.key_file", K_PATH, OFF(registry_key_file), "", 0, 0, NULL, NULL,
     "Private key (PEM) of schema.registry.cert_file."},
    {"schema.registry.timeout", K_DURATION, OFF(registry_timeout_ms), "10s", 100, 600000, NULL,
     NULL, "Longest a registry request may take (connect included)."},
    {"schema.registry.retry_max", K_DURATION, OFF(registry_retry_max_ms), "30s", 100, 3600000, NULL,
     NULL,
     "A failed fetch is retried after 0.5 s, doubling up to this (while its partition waits)."},
    {"schema.registry.register_outputs", K_FLAG, OFF(registry_register_outputs), "on", 0, 0,
     switches, switch_values,
     "With schema.registry.url and output.framing = confluent (Avro outputs): at start, "
     "register the output schemas under <topic>-value (profile and risk topics) and frame "
     "outputs with the ids the registry returns; off: the ids of schema.dir/ids."},
    {"input.event_id_max_bytes", K_INT, OFF(input_event_id_max_bytes), "128", 1, 4096, NULL, NULL,
     "Longest event_id accepted (it is copied into every output); longer ids are bad input "
     "(event_id_too_long)."},
    {"input.max_future", K_DURATION, OFF(input_max_future_ms), "1d", 0, INFINITY, NULL, NULL,
     "Events stamped further than this past the wall clock are bad input (ts_in_future); "
     "0: no limit."},
    {"input.max_abs", K_FLOAT, OFF(input_max_abs), "1e15", 1, 1e300, NULL, NULL,
     "Every number a feature reads (amount, numeric fields, attrs.<key>) must lie within "
     "-this..this, unless input.range.<field> gives its own range; beyond it the event is "
     "bad input (out_of_range). Keeps every value, and the decayed sums and squares of "
     "values, far inside what the float32 vectors and the segments can hold."},
    {"input.max_age", K_DURATION, OFF(input_max_age_ms), "0", 0, INFINITY, NULL, NULL,
     "Events stamped further than this before the wall clock are bad input (ts_too_old), "
     "e.g. 1970 timestamps of a broken producer; 0: no limit (a replay of old history "
     "needs none)."},
    {"input.max_skew", K_DURATION, OFF(input_max_skew_ms), "1h", 0, INFINITY, NULL, NULL,
     "Timestamp alignment (0: off): a partition's records wait while another partition that "
     "still has records on the broker is more than this behind, by record timestamp, so a "
     "backlog is processed in about the order it happened (as live traffic is)."},
    {"input.start_at", K_OPTSTR, OFF(input_start_at), "", 0, 0, NULL, NULL,
     "Where a partition the group has no committed offset for starts: at its first record "
     "stamped (Kafka record timestamp) at or after this time, ISO-8601 "
     "(2026-11-01T00:00:00Z) or milliseconds since 1970, found with offsetsForTimes; where "
     "the broker cannot say (no such record yet, or a broker without timestamp lookups) it "
     "starts at the beginning and skips the records stamped earlier until the first that "
     "is not (counted: cohortd_input_before_start_total). Partitions with a committed "
     "offset resume there as always. Empty: auto.offset.reset decides."},
    {"input.align_idle", K_DURATION, OFF(input_align_idle_ms), "5s", 1, INFINITY, NULL, NULL,
     "A partition that delivers nothing for this long (wall clock) stops holding the others "
     "back under input.max_skew."},
    {"input.map.user_id", K_STR, OFF(input_map[CH_ROLE_USER_ID]), "user_id", 0, 0, NULL, NULL,
     "Where the user id sits in the events: a field name or dotted path into nested records "
     "or objects (customer.id). A string, or an integer (read as its decimal text)."},
    {"input.map.ts", K_STR, OFF(input_map[CH_ROLE_TS]), "ts", 0, 0, NULL, NULL,
     "The event time's field (path): a number in input.map.ts_unit, or an ISO-8601 string."},
    {"input.map.ts_unit", K_ENUM, OFF(input_ts_unit), "auto", 0, 0, ts_units, ts_unit_values,
     "Unit of a numeric event time: ms, us or s since 1970, or iso8601 (strings only). auto: "
     "the Avro logical type (timestamp-millis or -micros), else ms. A string holding a "
     "number is read in the unit; other strings are ISO-8601 (2019-10-01T00:00:00Z, "
     "2019-10-01 00:00:00 UTC, ...; no zone means UTC)."},
    {"input.map.event_id", K_OPTSTR, OFF(input_map[CH_ROLE_EVENT_ID]), "event_id", 0, 0, NULL, NULL,
     "The event id's field (path), copied into the outputs; empty: the events have none "
     "(outputs carry null)."},
    {"input.map.type", K_OPTSTR, OFF(input_map[CH_ROLE_TYPE]), "type", 0, 0, NULL, NULL,
     "The event type's field (path; a string, enum or integer), which type= filters test; "
     "empty: none; \"quoted\": every event's type (\"payment\")."},
    {"input.map.amount", K_OPTSTR, OFF(input_map[CH_ROLE_AMOUNT]), "amount", 0, 0, NULL, NULL,
     "The numeric field features call amount (path); empty: none. Other numeric fields are "
     "read by their own name or path in a feature, e.g. sum(quantity)."},
    {"input.map.item", K_OPTSTR, OFF(input_map[CH_ROLE_ITEM]), "item", 0, 0, NULL, NULL,
     "The item's field (path; a string or integer); empty: none; \"quoted\": every event's "
     "item."},
    {"input.map.category", K_OPTSTR, OFF(input_map[CH_ROLE_CATEGORY]), "category", 0, 0, NULL, NULL,
     "The category's field (path; a string or integer); empty: none; \"quoted\": every "
     "event's category."},
    {"input.map.attrs", K_OPTSTR, OFF(input_map[CH_ROLE_ATTRS]), "attrs", 0, 0, NULL, NULL,
     "A map (Avro) or object (JSON) of numbers that features read as attrs.<key>; empty: none. "
     "A role left at its own name may be absent from the events' schema; a path set here "
     "must be in it (checked against the reader schema at start)."},
    {"output.profile_topic", K_STR, OFF(profile_topic), "profiles", 0, 0, NULL, NULL,
     "Topic for profile updates (profile_update.avsc), keyed by user_id."},
    {"output.dlq_topic", K_STR, OFF(dlq_topic), "cohortd-dlq", 0, 0, NULL, NULL,
     "Dead-letter topic: bad input forwarded unchanged, with cohortd.error.* headers."},
    {"output.framing", K_ENUM, OFF(output_framing), "confluent", 0, 0, framings, NULL,
     "Framing of outputs; confluent uses the id of profile_update.avsc in schema.dir/ids."},
    {"output.format", K_ENUM, OFF(output_format), "avro", 0, 0, formats, NULL,
     "avro: outputs encoded per the schemas (framed per output.framing); json: one JSON "
     "object per message with the same fields, for watching with kcat (dead letters stay "
     "the original bytes)."},
    {"features.half_life", K_DURATION, OFF(features_half_life_ms), "1h", 1, INFINITY, NULL, NULL,
     "Half-life of features declared without half_life=."},
    {"emit.policy", K_ENUM, OFF(emit_policy), "every", 0, 0, policies, NULL,
     "every: one profile update per event; change: on a user's first event, on segment "
     "change, and at most once per emit.heartbeat of the user's stream time otherwise."},
    {"emit.heartbeat", K_DURATION, OFF(emit_heartbeat_ms), "1h", 0, INFINITY, NULL, NULL,
     "With emit.policy = change: the longest a user goes without an update while active."},
    {"model.path", K_PATH, OFF(model_path), "", 0, 0, NULL, NULL,
     "ONNX risk model (tools/export_onnx.py); input [N, number of features]. Empty: no "
     "risk scoring and no risk updates."},
    {"model.kind", K_ENUM, OFF(model_kind), "classifier", 0, 0, ch_config_model_kinds, NULL,
     "classifier: the score is the probability of the positive class (the last column of the "
     "model's output); autoencoder: the model reconstructs its input, and the score is the "
     "percentile (0..1) of the reconstruction error among the training rows' (no labels "
     "needed; tools/export_onnx.py writes both kinds). A model of the other kind does not "
     "load."},
    {"model.challenger_path", K_PATH, OFF(model_challenger_path), "", 0, 0, NULL, NULL,
     "Champion and challenger: a second ONNX model (of model.kind) scored on the same "
     "vectors; its score and alert go into each risk update (field challenger, schema "
     "risk_update_v2.avsc) and, with evaluation.labels_topic, its live figures into /metrics "
     "next to the champion's (model=\"challenger\"). It never alerts, explains or drives "
     "anything. Empty: none."},
    {"model.watch", K_DURATION, OFF(model_watch_ms), "2s", 0, INFINITY, NULL, NULL,
     "How often to check model.path for a new file (reloaded between batches, like "
     "SIGHUP); 0 disables the watch."},
    {"output.risk_topic", K_STR, OFF(risk_topic), "risk", 0, 0, NULL, NULL,
     "Topic for risk updates (risk_update.avsc), keyed by user_id; used when model.path "
     "is set."},
    {"risk.threshold", K_FLOAT, OFF(risk_threshold), "0.5", 0, 1, NULL, NULL,
     "alert = score >= risk.threshold."},
    {"risk.reasons", K_INT, OFF(risk_reasons), "3", 0, 64, NULL, NULL,
     "Reason codes per alert: the features with the largest contributions (gradient x "
     "input of the logit; w_i x_i for a logistic regression; Shapley values for a tree "
     "ensemble)."},
    {"risk.emit", K_ENUM, OFF(risk_emit), "every", 0, 0, policies, NULL,
     "every: one risk update per event; change: only when the alert flag flips, the score "
     "moves by more than risk.delta, or emit.heartbeat of stream time has passed."},
    {"risk.delta", K_FLOAT, OFF(risk_delta), "0.05", 0, 1, NULL, NULL,
     "With risk.emit = change: the score change that triggers an update."},
    {"evaluation.labels_topic", K_OPTSTR, OFF(eval_labels_topic), "", 0, 0, NULL, NULL,
     "Live evaluation of the risk model: the topic of labels (JSON objects: event_id, label "
     "0/1 or false/true, ts in ms, optional: the record's timestamp) joined to the scores "
     "cohortd gave those events; every instance reads all of it from its end. Empty: off."},
    {"evaluation.score_ttl", K_DURATION, OFF(eval_score_ttl_ms), "7d", 1000, 31536000000.0, NULL,
     NULL,
     "How long, in event time behind the newest score, a score waits for its label; later "
     "labels are counted as unknown."},
    {"evaluation.max_scores", K_SIZE, OFF(eval_max_scores), "1000000", 1, 100000000, NULL, NULL,
     "Scores held at most waiting for labels (32 to 40 bytes each with the index); the "
     "oldest leave first."},
    {"evaluation.window", K_DURATION, OFF(eval_window_ms), "7d", 1000, 31536000000.0, NULL, NULL,
     "The live figures cover the labelled events whose label time is within this much of the "
     "newest label's."},
    {"evaluation.window_max", K_SIZE, OFF(eval_window_max), "200000", 10, 10000000, NULL, NULL,
     "... and at most this many of them (the newest)."},
    {"evaluation.metrics_topic", K_OPTSTR, OFF(eval_metrics_topic), "", 0, 0, NULL, NULL,
     "Where the live figures go as a JSON record every evaluation.interval (keyed by the "
     "instance). Empty: /metrics only."},
    {"evaluation.interval", K_DURATION, OFF(eval_interval_ms), "1m", 1000, 86400000, NULL, NULL,
     "Wall time between two records on evaluation.metrics_topic."},
    {"drift.window", K_SIZE, OFF(drift_window), "10000", 100, 10000000, NULL, NULL,
     "Feature drift: each feature's PSI (population stability index) is computed over the "
     "last this many scored vectors against the training distribution stored in the model "
     "(tools/export_onnx.py drift_data); d bytes a vector."},
    {"drift.warn", K_FLOAT, OFF(drift_warn), "0.25", 0, 100, NULL, NULL,
     "A feature whose PSI rises above this (checked every tenth of drift.window once the "
     "window is full) is logged as a warning, and again at notice level when it is back "
     "below (0.1: a small shift; 0.25: a major one, by the usual rule of thumb)."},
    {"segments.k", K_SIZE, OFF(segments.k), "16", 0, 1024, NULL, NULL,
     "Online segments (mini-batch K-Means clusters); 0 disables segmentation."},
    {"segments.warmup", K_SIZE, OFF(segments.warmup), "10000", 1, 10000000, NULL, NULL,
     "Events seen before the segments are seeded; then, once the table holds segments.k "
     "users, every user's current vector is fitted (as by a refresh) and every user gets a "
     "segment. Segments are null until then."},
    {"segments.half_life", K_DURATION, OFF(segments.half_life_ms), "1d", 1, INFINITY, NULL, NULL,
     "Decay of centroid weights by stream time: how fast segments follow drift."},
    {"segments.stats_half_life", K_DURATION, OFF(segments.stats_half_life_ms), "7d", 1, INFINITY,
     NULL, NULL, "Decay of the running mean/std of the z-score transform."},
    {"segments.dead_ratio", K_FLOAT, OFF(segments.dead_ratio), "0.01", 0, 0.49, NULL, NULL,
     "A segment whose weight falls below this share of the largest is re-seeded (its "
     "segment_generation increases)."},
    {"segments.hysteresis", K_FLOAT, OFF(segments.hysteresis), "0.05", 0, 0.99, NULL, NULL,
     "A user changes segment only if the new centroid is closer by this fraction."},
    {"segments.refresh", K_DURATION, OFF(segments.refresh_ms), "1h", 0, INFINITY, NULL, NULL,
     "Every this much time (segments.refresh_clock) the segments are refreshed on the whole "
     "population: every user's vector read at the current stream time, Lloyd from the live "
     "centroids and 10 k-means++ seedings run to convergence, the best kept (ids matched to "
     "the old ones), and a profile update for each user whose segment changed. 0: only on "
     "request (POST /segments/refresh)."},
    {"segments.refresh_clock", K_FLAG, OFF(segments_refresh_stream), "wall", 0, 0, clocks,
     clock_values,
     "What segments.refresh counts: wall (real time) or stream (event time: a replay "
     "refreshes as often as live traffic would have)."},
    {"segments.topic", K_OPTSTR, OFF(segments_topic), "", 0, 0, NULL, NULL,
     "Topic for segment updates (segment_update.avsc), keyed by segment id (make it "
     "compacted): each segment's generation, users, centroid, its members' mean features "
     "and trending items and categories, after every pass over the population and when a "
     "segment's generation changes. Empty: not published."},
    {"segments.sync_topic", K_OPTSTR, OFF(segments_sync_topic), "", 0, 0, NULL, NULL,
     "One set of segments across the instances of the consumer group: the topic (one "
     "partition, compacted) through which the coordinator (the owner of input partition 0) "
     "runs each seeding and refresh with every instance's statistics and publishes "
     "versioned centroids that every instance applies (README: One set of segments across "
     "instances). Empty: each instance keeps its own segments."},
    {"segments.sync_timeout", K_DURATION, OFF(segments_sync_timeout_ms), "30s", 100, 3600000, NULL,
     NULL,
     "How long the coordinator waits for the statistics of every input partition in one "
     "step of a shared refresh before giving it up (it is tried again after as long)."},
    {"segments.sync_sample", K_SIZE, OFF(segments_sync_sample), "65536", 100, 10000000, NULL, NULL,
     "Shared segments: about this many users' vectors, drawn evenly from every instance, "
     "make the sample the coordinator fits k-means++ candidates on (as one instance fits "
     "on at most 65,536 of its users) before Lloyd steps on every user; each sampled user "
     "costs about 12 bytes a feature on the sync topic per refresh."},
    {"segments.trending", K_SIZE, OFF(segments_trending), "10", 0, 100, NULL, NULL,
     "Trending items and categories per segment in segment updates (the heaviest by decayed "
     "count of the segment's events); 0: none."},
    {"segments.trending_half_life", K_DURATION, OFF(segments_trending_hl_ms), "1h", 1, INFINITY,
     NULL, NULL, "Decay of the trending counts, by event time."},
    {"segments.trending_slots", K_SIZE, OFF(segments_trending_slots), "64", 1, 4096, NULL, NULL,
     "Values a segment's trending sketch holds (Space-Saving): counts are exact while a "
     "segment has seen at most this many distinct values in its recent events, upper bounds "
     "beyond; 2 x 64 x (48 + 64) bytes a segment at the default."},
    {"segments.transform", K_FLAG, OFF(segments.log1p), "log1p", 0, 0, transforms, transform_values,
     "Feature transform before the z-score: log1p (signed) or none."},
    {"segments.seed", K_U64, OFF(segments.seed), "1", 0, 2147483647, NULL, NULL,
     "Seed of k-means++ and re-seeding (runs are reproducible)."},
    {"segments.state_file", K_PATH, OFF(segments_state_file), "", 0, 0, NULL, NULL,
     "Where centroids and transform statistics are saved at shutdown (and every "
     "log.stats_interval) and restored at start, so segment ids survive restarts. "
     "Empty: not saved."},
    {"batch.max_events", K_INT, OFF(batch_max_events), "1000", 1, 65536, NULL, NULL,
     "Most events taken from Kafka per loop iteration (the batch size)."},
    {"batch.max_inflight", K_INT, OFF(batch_max_inflight), "32", 1, 4096, NULL, NULL,
     "Most batches whose outputs await broker acknowledgement; consumption pauses beyond."},
    {"state.max_users", K_INT, OFF(state_max_users), "10000000", 1, 4294967294.0, NULL, NULL,
     "User cap. A new user beyond it evicts the least recently active of a sample."},
    {"state.key_max_bytes", K_INT, OFF(state_key_max_bytes), "64", 1, 4096, NULL, NULL,
     "Longest user_id kept; longer ids are bad input (user_id_too_long)."},
    {"state.idle_evict", K_DURATION_AUTO, OFF(state_idle_evict_ms), "auto", 0, INFINITY, NULL, NULL,
     "Forget users idle this long in stream time (0: never). auto: 20 times the longest "
     "feature half-life (their weight has fallen below 1e-6 by then); never if a feature "
     "does not decay, or is a since_last or since_prev (the gap since a user's last event "
     "is true however long they were away; state.max_users caps the table). A shorter "
     "value forgets users whose features still carry weight: --check-config warns when it "
     "is below the longest half-life, or when a since_last or since_prev would read its "
     "default for a forgotten user."},
    {"state.changelog", K_OPTSTR, OFF(state_changelog), "", 0, 0, NULL, NULL,
     "Topic that records every user's state (empty: none), from which a partition gained "
     "is restored before it is processed. It must exist with the input's partition count "
     "(cleanup.policy=compact); cohortd refuses to start otherwise."},
    {"state.changelog_watch", K_FLAG, OFF(state_changelog_watch), "on", 0, 0, switches,
     switch_values,
     "With state.changelog: after a partition is restored, keep reading its changelog and "
     "rewrite any user a record lands for that reflects an older input offset than the "
     "user's state (an instance paused past its session timeout delivering writes late), so "
     "the changelog's last record of every user is its newest state, also after "
     "compaction. Costs reading back what this instance writes; off: only restores skip "
     "such records."},
    {"commit.interval", K_DURATION, OFF(commit_interval_ms), "100ms", 1, 60000, NULL, NULL,
     "With state.changelog: a user changed many times within this interval is written once; "
     "offsets are committed only after the changelog records of their events are acknowledged."},
    {"processing.guarantee", K_ENUM, OFF(processing_guarantee), "at_least_once", 0, 0, guarantees,
     NULL,
     "at_least_once: after a crash, outputs since the last commit may appear twice. "
     "exactly_once (needs state.changelog): outputs, dead letters, changelog records and "
     "input offsets commit in one Kafka transaction per commit.interval; consumers of the "
     "outputs must read with isolation.level=read_committed. The producer's "
     "kafka.producer.transactional.id defaults to cohortd-<group.id>-<host name>: give "
     "each instance its own, stable across its restarts."},
    {"state.dir", K_PATH, OFF(state_dir), "", 0, 0, NULL, NULL,
     "Directory of local snapshots, one file per input partition (needs state.changelog; "
     "created if missing). A partition gained loads its snapshot and replays only the "
     "changelog after it; a damaged or stale snapshot is ignored with a log line. It also "
     "holds seeds (cohortd featurize --state-out): a partition the group has no committed "
     "offset for starts from its seed. Empty: none (restore reads the whole changelog)."},
    {"state.snapshot_interval", K_DURATION, OFF(state_snapshot_interval_ms), "5m", 0, INFINITY,
     NULL, NULL,
     "With state.dir: how often snapshots are written while running (in budgeted steps on "
     "the loop), besides at shutdown; 0: at shutdown only."},
    {"privacy.pseudonymize", K_FLAG, OFF(privacy_pseudonymize), "off", 0, 0, switches,
     switch_values,
     "on: user ids are replaced, in state, changelog, snapshots and outputs (keys and "
     "user_id), by HMAC-SHA-256(privacy.key_file, user id) in base64url (43 characters); "
     "only the key holder can link them to users (cohort-pseudonym). Dead letters keep the "
     "original bytes."},
    {"privacy.drop_fields", K_OPTSTR, OFF(privacy_drop_fields), "", 0, 0, NULL, NULL,
     "Input fields kept out of dead letters, comma-separated, of: " CH_DROP_FIELDS
     " (user_id drops the Kafka key too). With any, a dead letter carries the decoded "
     "event as JSON without them (header cohortd.redacted), or, when the record could not "
     "be decoded, none of its bytes; its size and SHA-256 stay in headers. Empty: the "
     "original bytes."},
    {"privacy.key_file", K_PATH, OFF(privacy_key_file), "", 0, 0, NULL, NULL,
     "The pseudonym key: a file of at least 32 bytes (e.g. head -c 32 /dev/urandom) readable "
     "by the daemon's user only (cohortd refuses it otherwise); never logged."},
    {"http.listen", K_STR, OFF(http_listen), "127.0.0.1:9180", 0, 0, NULL, NULL,
     "HOST:PORT of the HTTP endpoint (/healthz, /readyz, /metrics, /users/<id>), served "
     "from the event loop; off disables it. Keep it on loopback or a private network: it "
     "has no authentication."},
    {"http.allowed_hosts", K_OPTSTR, OFF(http_allowed_hosts), "", 0, 0, NULL, NULL,
     "Host names (comma-separated) the HTTP endpoint answers to, besides IP addresses, "
     "localhost and the name in http.listen: a request whose Host header names anything "
     "else is refused (421), which defeats DNS rebinding; a POST from a browser page of "
     "another origin is refused (403)."},
    {"http.max_connections", K_INT, OFF(http_max_connections), "64", 1, 4096, NULL, NULL,
     "Concurrent HTTP connections served. A further one takes the slot of the oldest "
     "connection still waiting for its request (each has 2 s to send it), so slow or idle "
     "clients cannot starve the probes; if every slot is answering, it is answered 503."},
    {"log.level", K_ENUM, OFF(log_level), "info", 0, 0, levels, level_values,
     "Least severe level logged."},
    {"log.stats_interval", K_DURATION, OFF(log_stats_interval_ms), "10s", 0, INFINITY, NULL, NULL,
     "Interval of the progress line (events/s in and out, users, bad input); 0: off."},
    {"log.bad_input_per_min", K_INT, OFF(log_bad_input_per_min), "10", 0, 1000000, NULL, NULL,
     "Bad-input log lines per minute; the rest are counted, not logged."},
    {"shutdown.timeout", K_DURATION, OFF(shutdown_timeout_ms), "30s", 0, INFINITY, NULL, NULL,
     "The whole budget from SIGTERM to exit: outputs acknowledged, the final commit, "
     "leaving the group, freeing the Kafka clients, whatever the broker does. What is not "
     "done by then is given up; the last log line says what was not committed, and then "
     "the exit status is 1. 0: do not wait."},
};
#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

static char *trim(char *s) {
    while (isspace((unsigned char)*s)) {
        s++;
    }
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1])) {
        *--e = '\0';
    }
    return s;
}

static size_t edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) {
        return SIZE_MAX;
    }
    size_t row[65];
    for (size_t j = 0; j <= lb; j++) {
        row[j] = j;
    }
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best) {
                best = row[j] + 1;
            }
            if (row[j - 1] + 1 < best) {
                best = row[j - 1] + 1;
            }
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static const char *suggest(const char *name) {
    const char *best = NULL;
    size_t best_d = 4;
    for (size_t i = 0; i < N_KEYS; i++) {
        size_t d = edit_distance(name, keys[i].name);
        if (d < best_d) {
            best_d = d;
            best = keys[i].name;
        }
    }
    return best;
}

static int set_scalar(ch_config_t *cfg, const key_def_t *k, const char *value, char *errbuf,
                      size_t errlen) {
    void *field = (char *)cfg + k->off;
    switch (k->type) {
    case K_STR:
    case K_OPTSTR:
    case K_PATH:
        if (strlen(value) >= CH_CONF_STR) {
            return fail(errbuf, errlen, -EINVAL, "%s: value longer than %d bytes", k->name,
                        CH_CONF_STR - 1);
        }
        if (k->type == K_STR && !*value) {
            return fail(errbuf, errlen, -EINVAL, "%s: must not be empty", k->name);
        }
        if (k->type == K_PATH && *value && value[0] != '/' && cfg->base_dir[0]) {
            if ((size_t)snprintf(field, CH_CONF_STR, "%s/%s", cfg->base_dir, value) >=
                CH_CONF_STR) {
                return fail(errbuf, errlen, -EINVAL, "%s: path too long", k->name);
            }
        } else {
            snprintf(field, CH_CONF_STR, "%s", value);
        }
        return 0;
    case K_INT:
    case K_SIZE:
    case K_U64: {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < k->min || v > k->max) {
            return fail(errbuf, errlen, -EINVAL, "%s: expected an integer in %.0f..%.0f, got '%s'",
                        k->name, k->min, k->max, value);
        }
        if (k->type == K_SIZE) {
            *(size_t *)field = (size_t)v;
        } else if (k->type == K_U64) {
            *(uint64_t *)field = (uint64_t)v;
        } else {
            *(long *)field = (long)v;
        }
        return 0;
    }
    case K_FLOAT: {
        char *end = NULL;
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end || !(v >= k->min && v <= k->max)) {
            return fail(errbuf, errlen, -EINVAL, "%s: expected a number in %g..%g, got '%s'",
                        k->name, k->min, k->max, value);
        }
        *(double *)field = v;
        return 0;
    }
    case K_DURATION_AUTO:
        if (strcmp(value, "auto") == 0) {
            *(double *)field = NAN;
            return 0;
        }
        /* fall through */
    case K_DURATION: {
        double ms;
        if (ch_duration_parse(value, &ms) < 0 || ms < k->min || ms > k->max) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: expected a duration such as 500ms, 30s, 15m, 1h, 7d%s%s, got '%s'",
                        k->name, k->min > 0 ? " (> 0)" : " or 0",
                        k->type == K_DURATION_AUTO ? " or auto" : "", value);
        }
        *(double *)field = ms;
        return 0;
    }
    case K_ENUM:
    case K_FLAG:
        for (int i = 0; k->choices[i]; i++) {
            if (strcmp(value, k->choices[i]) == 0) {
                int v = k->choice_values ? k->choice_values[i] : i;
                if (k->type == K_FLAG) {
                    *(bool *)field = v != 0;
                } else {
                    *(int *)field = v;
                }
                return 0;
            }
        }
        {
            char list[256] = "";
            for (int i = 0; k->choices[i]; i++) {
                strncat(list, i ? ", " : "", sizeof(list) - strlen(list) - 1);
                strncat(list, k->choices[i], sizeof(list) - strlen(list) - 1);
            }
            return fail(errbuf, errlen, -EINVAL, "%s: expected one of %s, got '%s'", k->name,
                        list, value);
        }
    }
    return -EINVAL;
}

int ch_config_start_at(const ch_config_t *cfg, int64_t *ret_ms) {
    *ret_ms = -1;
    return cfg->input_start_at[0] ? ch_config_parse_time(cfg->input_start_at, ret_ms) : 0;
}

int ch_config_parse_time(const char *s, int64_t *ret_ms) {
    if (!s[0]) {
        return -EINVAL;
    }
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*end && !errno && v >= 0) {
        *ret_ms = v;
        return 0;
    }
    int64_t ms;
    if (ch_iso8601_parse(s, strlen(s), &ms) < 0 || ms < 0) {
        return -EINVAL;
    }
    *ret_ms = ms;
    return 0;
}

int ch_config_parse_range(const char *s, double *ret_lo, double *ret_hi) {
    /* split at "..": strtod alone would read "0." of "0..5" as a number */
    const char *dots = strstr(s, "..");
    char left[64];
    if (!dots || dots == s || (size_t)(dots - s) >= sizeof(left)) {
        return -EINVAL;
    }
    memcpy(left, s, (size_t)(dots - s));
    left[dots - s] = '\0';
    char *end;
    errno = 0;
    double lo = strtod(left, &end);
    if (errno || *end) {
        return -EINVAL;
    }
    const char *h = dots + 2;
    double hi = strtod(h, &end);
    if (errno || end == h || *end || !isfinite(lo) || !isfinite(hi) || lo > hi) {
        return -EINVAL;
    }
    *ret_lo = lo;
    *ret_hi = hi;
    return 0;
}

static int add_pair(ch_conf_pair_t **arr, size_t *n, const char *key, const char *value,
                    ch_kafka_scope_t scope, const char *where, bool replace) {
    if (replace) {
        for (size_t i = 0; i < *n; i++) {
            if ((*arr)[i].scope == scope && strcmp((*arr)[i].key, key) == 0) {
                char *v = strdup(value);
                if (!v) {
                    return -ENOMEM;
                }
                free((*arr)[i].value);
                (*arr)[i].value = v;
                snprintf((*arr)[i].where, sizeof((*arr)[i].where), "%s", where);
                return 0;
            }
        }
    }
    ch_conf_pair_t *na = realloc(*arr, (*n + 1) * sizeof(**arr));
    if (!na) {
        return -ENOMEM;
    }
    *arr = na;
    ch_conf_pair_t *p = &na[*n];
    p->key = strdup(key);
    p->value = strdup(value);
    p->scope = scope;
    snprintf(p->where, sizeof(p->where), "%s", where);
    if (!p->key || !p->value) {
        free(p->key);
        free(p->value);
        return -ENOMEM;
    }
    (*n)++;
    return 0;
}

/* Applies one key = value from `where`. */
static int apply(ch_config_t *cfg, const char *key, const char *value, const char *where,
                 char *errbuf, size_t errlen) {
    char why[600];
    int r;
    if (strncmp(key, "kafka.", 6) == 0) {
        const char *prop = key + 6;
        ch_kafka_scope_t scope = CH_KAFKA_BOTH;
        if (strncmp(prop, "consumer.", 9) == 0) {
            scope = CH_KAFKA_CONSUMER;
            prop += 9;
        } else if (strncmp(prop, "producer.", 9) == 0) {
            scope = CH_KAFKA_PRODUCER;
            prop += 9;
        }
        if (!*prop) {
            return fail(errbuf, errlen, -EINVAL, "%s: '%s' names no librdkafka property", where,
                        key);
        }
        r = add_pair(&cfg->kafka, &cfg->n_kafka, prop, value, scope, where, true);
        return r < 0 ? fail(errbuf, errlen, r, "%s: out of memory", where) : 0;
    }
    if (strncmp(key, "feature.", 8) == 0) {
        const char *name = key + 8;
        for (size_t i = 0; i < cfg->n_features; i++) {
            if (strcmp(cfg->features[i].key, name) == 0 && strcmp(where, "--set") != 0 &&
                strcmp(cfg->features[i].where, "--set") != 0) {
                return fail(errbuf, errlen, -EINVAL, "%s: feature '%s' already declared at %s",
                            where, name, cfg->features[i].where);
            }
        }
        r = add_pair(&cfg->features, &cfg->n_features, name, value, CH_KAFKA_BOTH, where, true);
        return r < 0 ? fail(errbuf, errlen, r, "%s: out of memory", where) : 0;
    }
    if (strncmp(key, "input.range.", 12) == 0) {
        const char *name = key + 12;
        double lo, hi;
        if (!*name) {
            return fail(errbuf, errlen, -EINVAL, "%s: '%s' names no field", where, key);
        }
        if (ch_config_parse_range(value, &lo, &hi) < 0) {
            return fail(errbuf, errlen, -EINVAL,
                        "%s: %s = '%s': expected LOW..HIGH, two finite numbers with LOW <= HIGH "
                        "(e.g. 0..100000)",
                        where, key, value);
        }
        r = add_pair(&cfg->ranges, &cfg->n_ranges, name, value, CH_KAFKA_BOTH, where, true);
        return r < 0 ? fail(errbuf, errlen, r, "%s: out of memory", where) : 0;
    }
    if (strncmp(key, "tags.", 5) == 0) {
        const char *name = key + 5;
        for (size_t i = 0; i < cfg->n_tags; i++) {
            if (strcmp(cfg->tags[i].key, name) == 0 && strcmp(where, "--set") != 0 &&
                strcmp(cfg->tags[i].where, "--set") != 0) {
                return fail(errbuf, errlen, -EINVAL, "%s: tag '%s' already declared at %s", where,
                            name, cfg->tags[i].where);
            }
        }
        r = add_pair(&cfg->tags, &cfg->n_tags, name, value, CH_KAFKA_BOTH, where, true);
        return r < 0 ? fail(errbuf, errlen, r, "%s: out of memory", where) : 0;
    }
    for (size_t i = 0; i < N_KEYS; i++) {
        if (strcmp(keys[i].name, key) == 0) {
            r = set_scalar(cfg, &keys[i], value, why, sizeof(why));
            return r < 0 ? fail(errbuf, errlen, r, "%s: %s", where, why) : 0;
        }
    }
    const char *s = suggest(key);
    if (s) {
        return fail(errbuf, errlen, -EINVAL, "%s: unknown key '%s' (did you mean '%s'?)", where,
                    key, s);
    }
    return fail(errbuf, errlen, -EINVAL,
                "%s: unknown key '%s' (see cohortd --help-config; librdkafka settings are "
                "kafka.<property>)",
                where, key);
}

int ch_config_init(ch_config_t *cfg) {
    memset(cfg, 0, sizeof(*cfg));
    /* options without a key (e.g. Lloyd passes) keep the segmenter's defaults */
    ch_kmeans_opts_default(&cfg->segments, 16, 1);
    for (size_t i = 0; i < N_KEYS; i++) {
        int r = set_scalar(cfg, &keys[i], keys[i].dflt, NULL, 0);
        assert(r == 0 && "every default parses");
        (void)r;
    }
    return 0;
}

static void free_pairs(ch_conf_pair_t **arr, size_t *n) {
    for (size_t i = 0; i < *n; i++) {
        free((*arr)[i].key);
        free((*arr)[i].value);
    }
    free(*arr);
    *arr = NULL;
    *n = 0;
}

void ch_config_done(ch_config_t *cfg) {
    free_pairs(&cfg->kafka, &cfg->n_kafka);
    free_pairs(&cfg->features, &cfg->n_features);
    free_pairs(&cfg->tags, &cfg->n_tags);
    free_pairs(&cfg->ranges, &cfg->n_ranges);
}

int ch_config_load(ch_config_t *cfg, const char *path, char *errbuf, size_t errlen) {
    FILE *f = fopen(path, "re");
    if (!f) {
        return fail(errbuf, errlen, errno == ENOENT ? -ENOENT : -EIO, "%s: %s", path,
                    strerror(errno));
    }
    snprintf(cfg->path, sizeof(cfg->path), "%s", path);
    snprintf(cfg->base_dir, sizeof(cfg->base_dir), "%s", path);
    char *slash = strrchr(cfg->base_dir, '/');
    if (slash) {
        *slash = '\0';
    } else {
        snprintf(cfg->base_dir, sizeof(cfg->base_dir), ".");
    }
    /* Path defaults are relative to the config file: re-apply them now. */
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].type == K_PATH) {
            set_scalar(cfg, &keys[i], keys[i].dflt, NULL, 0);
        }
    }
    char line[4096];
    int lineno = 0, r = 0;
    while (r == 0 && fgets(line, sizeof(line), f)) {
        lineno++;
        char where[CH_CONF_STR];
        snprintf(where, sizeof(where), "%s:%d", path, lineno);
        if (!strchr(line, '\n') && !feof(f)) {
            r = fail(errbuf, errlen, -EINVAL, "%s: line longer than %zu bytes", where,
                     sizeof(line) - 2);
            break;
        }
        char *s = trim(line);
        if (!*s || *s == '#') {
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq) {
            r = fail(errbuf, errlen, -EINVAL, "%s: expected 'key = value'", where);
            break;
        }
        *eq = '\0';
        char *key = trim(s), *value = trim(eq + 1);
        if (!*key) {
            r = fail(errbuf, errlen, -EINVAL, "%s: missing key before '='", where);
            break;
        }
        r = apply(cfg, key, value, where, errbuf, errlen);
    }
    fclose(f);
    return r;
}

int ch_config_set(ch_config_t *cfg, const char *assignment, char *errbuf, size_t errlen) {
    const char *eq = strchr(assignment, '=');
    if (!eq || eq == assignment) {
        return fail(errbuf, errlen, -EINVAL, "--set: expected key=value, got '%s'", assignment);
    }
    char key[CH_CONF_STR];
    size_t klen = (size_t)(eq - assignment);
    if (klen >= sizeof(key)) {
        return fail(errbuf, errlen, -EINVAL, "--set: key too long");
    }
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    char value[4096];
    snprintf(value, sizeof(value), "%s", eq + 1);
    return apply(cfg, trim(key), trim(value), "--set", errbuf, errlen);
}

const char *ch_config_kafka_get(const ch_config_t *cfg, const char *key, ch_kafka_scope_t scope) {
    const char *v = NULL;
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        if ((cfg->kafka[i].scope == CH_KAFKA_BOTH || cfg->kafka[i].scope == scope) &&
            strcmp(cfg->kafka[i].key, key) == 0) {
            v = cfg->kafka[i].value;
        }
    }
    return v;
}

int ch_config_validate(const ch_config_t *cfg, char *errbuf, size_t errlen) {
    if (!ch_config_kafka_get(cfg, "bootstrap.servers", CH_KAFKA_CONSUMER)) {
        return fail(errbuf, errlen, -EINVAL,
                    "kafka.bootstrap.servers is required (e.g. kafka.bootstrap.servers = "
                    "broker1:9092,broker2:9092)");
    }
    const char *store = ch_config_kafka_get(cfg, "enable.auto.offset.store", CH_KAFKA_CONSUMER);
    if (store && strcmp(store, "false") != 0) {
        return fail(errbuf, errlen, -EINVAL,
                    "kafka.enable.auto.offset.store must stay false: cohortd stores an offset "
                    "only after the outputs of that event are acknowledged");
    }
    return ch_config_validate_offline(cfg, errbuf, errlen);
}

int ch_config_validate_offline(const ch_config_t *cfg, char *errbuf, size_t errlen) {
    int64_t start_at;
    if (ch_config_start_at(cfg, &start_at) < 0) {
        return fail(errbuf, errlen, -EINVAL,
                    "input.start_at: '%s' is neither an ISO-8601 time (2026-11-01T00:00:00Z) "
                    "nor milliseconds since 1970",
                    cfg->input_start_at);
    }
    if (cfg->n_features == 0) {
        return fail(errbuf, errlen, -EINVAL,
                    "no features declared (add lines such as 'feature.n_events_1h = count "
                    "half_life=1h')");
    }
    if (strcmp(cfg->input_topic, cfg->profile_topic) == 0 ||
        strcmp(cfg->input_topic, cfg->dlq_topic) == 0 ||
        (cfg->model_path[0] && strcmp(cfg->input_topic, cfg->risk_topic) == 0)) {
        return fail(errbuf, errlen, -EINVAL, "input.topic must differ from the output topics");
    }
    if (cfg->state_changelog[0] &&
        (strcmp(cfg->state_changelog, cfg->input_topic) == 0 ||
         strcmp(cfg->state_changelog, cfg->profile_topic) == 0 ||
         strcmp(cfg->state_changelog, cfg->dlq_topic) == 0 ||
         (cfg->model_path[0] && strcmp(cfg->state_changelog, cfg->risk_topic) == 0))) {
        return fail(errbuf, errlen, -EINVAL,
                    "state.changelog must differ from the input and output topics");
    }
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        if (strcmp(cfg->kafka[i].key, "transactional.id") == 0 &&
            cfg->processing_guarantee != CH_EXACTLY_ONCE) {
            return fail(errbuf, errlen, -EINVAL,
                        "kafka.producer.transactional.id is set but processing.guarantee is "
                        "at_least_once (outputs are not sent in transactions): set "
                        "processing.guarantee = exactly_once, or remove it");
        }
    }
    if (cfg->processing_guarantee == CH_EXACTLY_ONCE && !cfg->state_changelog[0]) {
        return fail(errbuf, errlen, -EINVAL,
                    "processing.guarantee = exactly_once needs state.changelog (state must "
                    "commit with the outputs it produced)");
    }
    if (ch_config_drop_mask(cfg, errbuf, errlen) < 0) {
        return -EINVAL;
    }
    if (cfg->privacy_pseudonymize && !cfg->privacy_key_file[0]) {
        return fail(errbuf, errlen, -EINVAL,
                    "privacy.pseudonymize = on needs privacy.key_file (a file of at least 32 "
                    "random bytes, mode 600)");
    }
    if (cfg->privacy_pseudonymize && cfg->state_key_max_bytes < 43) {
        return fail(errbuf, errlen, -EINVAL,
                    "privacy.pseudonymize = on keys users by 43-character pseudonyms: "
                    "state.key_max_bytes (%ld) must be at least 43",
                    cfg->state_key_max_bytes);
    }
    if (cfg->registry_url[0] && strncmp(cfg->registry_url, "http://", 7) != 0 &&
        strncmp(cfg->registry_url, "https://", 8) != 0) {
        char shown[CH_CONF_STR];
        ch_registry_redact_url(cfg->registry_url, shown, sizeof(shown));
        return fail(errbuf, errlen, -EINVAL,
                    "schema.registry.url = %s: expected an http:// or https:// URL", shown);
    }
    if (!cfg->registry_url[0] &&
        (cfg->registry_username[0] || cfg->registry_password_file[0] || cfg->registry_ca_file[0] ||
         cfg->registry_cert_file[0] || cfg->registry_key_file[0])) {
        return fail(errbuf, errlen, -EINVAL,
                    "schema.registry.* options are set but schema.registry.url is empty");
    }
    if (!cfg->registry_username[0] != !cfg->registry_password_file[0]) {
        return fail(errbuf, errlen, -EINVAL,
                    "schema.registry.username and schema.registry.password_file go together");
    }
    if (!cfg->registry_cert_file[0] != !cfg->registry_key_file[0]) {
        return fail(errbuf, errlen, -EINVAL,
                    "schema.registry.cert_file and schema.registry.key_file go together");
    }
    if (cfg->state_dir[0] && !cfg->state_changelog[0]) {
        return fail(errbuf, errlen, -EINVAL,
                    "state.dir needs state.changelog (a snapshot is completed by the changelog "
                    "written after it)");
    }
    if (cfg->segments.k > 0 && cfg->segments.warmup < cfg->segments.k) {
        return fail(errbuf, errlen, -EINVAL,
                    "segments.warmup (%zu) must be at least segments.k (%zu)",
                    cfg->segments.warmup, cfg->segments.k);
    }
    if (cfg->segments_sync_topic[0] && cfg->segments.k == 0) {
        return fail(errbuf, errlen, -EINVAL, "segments.sync_topic needs segments (segments.k > 0)");
    }
    const char *others[] = {cfg->input_topic,   cfg->segments_topic, cfg->state_changelog,
                            cfg->profile_topic, cfg->risk_topic,     cfg->dlq_topic};
    for (size_t i = 0; cfg->segments_sync_topic[0] && i < 6; i++) {
        if (!strcmp(cfg->segments_sync_topic, others[i])) {
            return fail(errbuf, errlen, -EINVAL,
                        "segments.sync_topic (%s) must be a topic of its own",
                        cfg->segments_sync_topic);
        }
    }
    if (cfg->model_challenger_path[0] && !cfg->model_path[0]) {
        return fail(errbuf, errlen, -EINVAL, "model.challenger_path needs a champion (model.path)");
    }
    if ((cfg->eval_labels_topic[0] || cfg->eval_metrics_topic[0]) && !cfg->model_path[0]) {
        return fail(errbuf, errlen, -EINVAL,
                    "evaluation.labels_topic and evaluation.metrics_topic need a risk model "
                    "(model.path)");
    }
    if (cfg->eval_metrics_topic[0] && !cfg->eval_labels_topic[0]) {
        return fail(errbuf, errlen, -EINVAL,
                    "evaluation.metrics_topic needs evaluation.labels_topic");
    }
    const char *own[] = {cfg->input_topic,        cfg->segments_topic, cfg->state_changelog,
                         cfg->profile_topic,      cfg->risk_topic,     cfg->dlq_topic,
                         cfg->segments_sync_topic};
    for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
        if (cfg->eval_labels_topic[0] && !strcmp(cfg->eval_labels_topic, own[i])) {
            return fail(errbuf, errlen, -EINVAL,
                        "evaluation.labels_topic (%s) must be a topic of its own",
                        cfg->eval_labels_topic);
        }
        if (cfg->eval_metrics_topic[0] && !strcmp(cfg->eval_metrics_topic, own[i])) {
            return fail(errbuf, errlen, -EINVAL,
                        "evaluation.metrics_topic (%s) must be a topic of its own",
                        cfg->eval_metrics_topic);
        }
    }
    if (cfg->eval_labels_topic[0] && !strcmp(cfg->eval_labels_topic, cfg->eval_metrics_topic)) {
        return fail(errbuf, errlen, -EINVAL,
                    "evaluation.labels_topic and evaluation.metrics_topic must differ");
    }
    char host[64], port[16];
    if (strcmp(cfg->http_listen, "off") != 0) {
        if (ch_http_split_address(cfg->http_listen, host, sizeof(host), port, sizeof(port)) < 0) {
            return fail(errbuf, errlen, -EINVAL,
                        "http.listen: expected HOST:PORT (e.g. 127.0.0.1:9180, [::1]:9180) or "
                        "off, got '%s'",
                        cfg->http_listen);
        }
    }
    if (cfg->input_writer_schema[0] && cfg->input_framing != CH_FRAMING_PLAIN) {
        return fail(errbuf, errlen, -EINVAL,
                    "input.writer_schema applies to input.framing = plain only (Confluent "
                    "framing names the writer schema in each message)");
    }
    return 0;
}

bool ch_config_is_secret(const char *key) {
    static const char *const needles[] = {"password", "secret", "sasl.oauthbearer.config",
                                          "ssl.key.pem", "ssl_key", "ssl.keystore"};
    for (size_t i = 0; i < sizeof(needles) / sizeof(needles[0]); i++) {
        if (strstr(key, needles[i])) {
            return true;
        }
    }
    return false;
}

static void format_ms(double ms, char *buf, size_t len) {
    if (isnan(ms)) {
        snprintf(buf, len, "auto");
    } else if (isinf(ms)) {
        snprintf(buf, len, "inf");
    } else if (ms != 0 && fmod(ms, 86400000.0) == 0) {
        snprintf(buf, len, "%.0fd", ms / 86400000.0);
    } else if (ms != 0 && fmod(ms, 3600000.0) == 0) {
        snprintf(buf, len, "%.0fh", ms / 3600000.0);
    } else if (ms != 0 && fmod(ms, 1000.0) == 0) {
        snprintf(buf, len, "%.0fs", ms / 1000.0);
    } else {
        snprintf(buf, len, "%.17gms", ms);
    }
}

static void format_value(const ch_config_t *cfg, const key_def_t *k, char *buf, size_t len) {
    const void *field = (const char *)cfg + k->off;
    switch (k->type) {
    case K_STR:
    case K_OPTSTR:
    case K_PATH:
        if (strcmp(k->name, "schema.registry.url") == 0) { /* a password in it is masked */
            ch_registry_redact_url((const char *)field, buf, len);
            return;
        }
        snprintf(buf, len, "%s", (const char *)field);
        return;
    case K_INT:
        snprintf(buf, len, "%ld", *(const long *)field);
        return;
    case K_SIZE:
        snprintf(buf, len, "%zu", *(const size_t *)field);
        return;
    case K_U64:
        snprintf(buf, len, "%llu", (unsigned long long)*(const uint64_t *)field);
        return;
    case K_FLOAT:
        snprintf(buf, len, "%g", *(const double *)field);
        return;
    case K_DURATION_AUTO:
    case K_DURATION:
        format_ms(*(const double *)field, buf, len);
        return;
    case K_ENUM:
    case K_FLAG: {
        int v = k->type == K_FLAG ? (*(const bool *)field ? 1 : 0) : *(const int *)field;
        for (int i = 0; k->choices[i]; i++) {
            if ((k->choice_values ? k->choice_values[i] : i) == v) {
                snprintf(buf, len, "%s", k->choices[i]);
                return;
            }
        }
        snprintf(buf, len, "?");
        return;
    }
    }
}

void ch_config_print(const ch_config_t *cfg, FILE *out) {
    char buf[CH_CONF_STR + 32];
    fprintf(out, "# effective cohortd settings%s%s\n", cfg->path[0] ? " from " : "", cfg->path);
    for (size_t i = 0; i < N_KEYS; i++) {
        format_value(cfg, &keys[i], buf, sizeof(buf));
        fprintf(out, "%s = %s\n", keys[i].name, buf);
    }
    static const char *const scopes[] = {"kafka.", "kafka.consumer.", "kafka.producer."};
    for (size_t i = 0; i < cfg->n_kafka; i++) {
        const ch_conf_pair_t *p = &cfg->kafka[i];
        fprintf(out, "%s%s = %s\n", scopes[p->scope], p->key,
                ch_config_is_secret(p->key) ? "********" : p->value);
    }
}

int ch_config_drop_mask(const ch_config_t *cfg, char *errbuf, size_t errlen) {
    static const char *const names[] = {"key",    "event_id", "user_id",  "ts",   "type",
                                        "amount", "item",     "category", "attrs"};
    int mask = 0;
    const char *s = cfg->privacy_drop_fields;
    while (*s) {
        size_t n = strcspn(s, ",");
        const char *w = s;
        size_t wn = n;
        while (wn && isspace((unsigned char)*w)) {
            w++, wn--;
        }
        while (wn && isspace((unsigned char)w[wn - 1])) {
            wn--;
        }
        int bit = -1;
        for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++) {
            if (strlen(names[i]) == wn && memcmp(names[i], w, wn) == 0) {
                bit = i;
            }
        }
        if (wn && bit < 0) {
            return fail(errbuf, errlen, -EINVAL,
                        "privacy.drop_fields: unknown field '%.*s' (fields: " CH_DROP_FIELDS ")",
                        (int)wn, w);
        }
        mask |= bit >= 0 ? 1 << bit : 0;
        s += n + (s[n] == ',');
    }
    return mask & CH_DROP_USER_ID ? mask | CH_DROP_KEY : mask;
}

int ch_config_check_state(const ch_config_t *cfg, const ch_features_t *fs, size_t extra_bytes,
                          char *errbuf, size_t errlen) {
    size_t len = ch_features_state_len(fs), big = 0, big_len = 0;
    const char *big_kind = "feature";
    for (size_t i = 0; i < ch_features_count(fs); i++) {
        if (ch_features_state_width(fs, i) > big_len) {
            big_len = ch_features_state_width(fs, i);
            big = i;
        }
    }
    char name[96];
    snprintf(name, sizeof(name), "feature.%s", ch_features_count(fs) ? ch_features_name(fs, big) : "");
    for (size_t i = 0; i < ch_features_tag_count(fs); i++) {
        if (ch_features_tag_state_len(fs, i) > big_len) {
            big_len = ch_features_tag_state_len(fs, i);
            snprintf(name, sizeof(name), "tags.%s", ch_features_tag_name(fs, i));
            big_kind = "tag";
        }
    }
    if (len > CH_USERS_STATE_MAX) {
        snprintf(errbuf, errlen,
                 "the features need %zu doubles (%zu KiB) of state per user, more than %d (%d "
                 "KiB); the largest %s is %s with %zu (a distinct() takes 2 + 6k, a tag 10 per "
                 "slot): lower its k or slots, or declare fewer",
                 len, len * 8 / 1024, CH_USERS_STATE_MAX, CH_USERS_STATE_MAX * 8 / 1024,
                 big_kind, name, big_len);
        return -E2BIG;
    }
    uint64_t rec = 16 + 8 * (uint64_t)len + extra_bytes + (uint64_t)cfg->state_key_max_bytes;
    uint64_t table = rec * (uint64_t)cfg->state_max_users;
    if (table > CH_CONFIG_TABLE_MAX) {
        snprintf(errbuf, errlen,
                 "state.max_users = %ld users of %llu bytes each (%zu doubles of state; the "
                 "largest %s is %s with %zu) need %llu GiB of address space, more than %llu "
                 "GiB: lower state.max_users, or that %s's k or slots",
                 cfg->state_max_users, (unsigned long long)rec, len, big_kind, name, big_len,
                 (unsigned long long)(table >> 30),
                 (unsigned long long)(CH_CONFIG_TABLE_MAX >> 30), big_kind);
        return -E2BIG;
    }
    return 0;
}

/* The first feature that remembers a time for ever (since_last, since_prev), or NULL. */
static const char *timeless_feature(const ch_features_t *fs) {
    for (size_t i = 0; i < ch_features_count(fs); i++) {
        ch_feat_kind_t k = ch_features_kind(fs, i);
        if (k == CH_FEAT_SINCE_LAST || k == CH_FEAT_SINCE_PREV) {
            return ch_features_name(fs, i);
        }
    }
    return NULL;
}

double ch_config_idle_evict_ms(const ch_config_t *cfg, const ch_features_t *fs, char *ret_warning,
                               size_t len) {
    double hl = ch_features_longest_half_life(fs), set = cfg->state_idle_evict_ms;
    const char *timeless = timeless_feature(fs);
    if (ret_warning && len) {
        ret_warning[0] = '\0';
    }
    if (isnan(set)) {
        /* a since_last or since_prev reads the true gap however long a user was away:
         * forgetting the user would turn it into the default */
        return isfinite(hl) && !timeless ? 20 * hl : 0;
    }
    if (set > 0 && isfinite(set) && set >= hl && timeless && ret_warning) {
        char a[32];
        format_ms(set, a, sizeof(a));
        snprintf(ret_warning, len,
                 "state.idle_evict = %s forgets users idle that long, and feature.%s then reads "
                 "its default for them instead of the time since their last event (auto never "
                 "forgets them; state.max_users caps the table)",
                 a, timeless);
    }
    if (set > 0 && isfinite(set) && set < hl && ret_warning) {
        char a[32], b[32];
        format_ms(set, a, sizeof(a));
        format_ms(hl, b, sizeof(b));
        snprintf(ret_warning, len,
                 "state.idle_evict = %s is shorter than the longest feature half-life (%s): a "
                 "user idle that long is forgotten while their features keep half or more of "
                 "their weight (auto keeps them until it is below 1e-6)",
                 a, b);
    }
    return isfinite(set) ? set : 0;
}

/* The range column of --help-config: "" when the type says it all. */
static void format_range(const key_def_t *k, char *range, size_t len) {
    range[0] = '\0';
    if (k->type == K_INT || k->type == K_SIZE || k->type == K_U64) {
        snprintf(range, len, "%.0f..%.0f", k->min, k->max);
    } else if (k->type == K_FLOAT) {
        snprintf(range, len, "%g..%g", k->min, k->max);
    } else if (k->type == K_DURATION) {
        snprintf(range, len, "%s", k->min > 0 ? "> 0" : ">= 0 (0: off)");
    } else if (k->type == K_DURATION_AUTO) {
        snprintf(range, len, ">= 0 (0: off), auto");
    } else if (k->type == K_ENUM || k->type == K_FLAG) {
        size_t n = 0;
        for (int c = 0; k->choices[c] && n < len; c++) {
            n += (size_t)snprintf(range + n, len - n, "%s%s", c ? ", " : "", k->choices[c]);
        }
    }
}

static const char *const type_names[] = {"string",   "path", "integer", "duration",
                                         "duration", "enum", "number",  "integer",
                                         "integer",  "enum", "string"};

static const char families_help[] =
    "feature.<name> (feature spec, repeatable, output order)\n"
    "    <kind>[(<field>)] [type|item|category|<text field>(=|!=)a|b ...]\n"
    "    [half_life=<duration>|inf] [default=<number>]\n"
    "    kinds: count, sum(f), mean(f), std(f), max(f) (decayed), since_last (seconds),\n"
    "    since_prev (seconds between the two latest matching events),\n"
    "    ratio(<feature>, <feature>), share (decayed share of the filtered events in\n"
    "    all events), distinct(item|category|type|<text field>) [window=<duration>] [k=<n>]\n"
    "    (values seen in the window, default features.half_life: exact below 3k (k = 32),\n"
    "    beyond an estimate with relative standard error 1/sqrt(k - 2); 8 (2 + 6k) bytes a\n"
    "    user);\n"
    "    fields: amount, attrs.<key>, or any numeric field of the events by name or\n"
    "    dotted path (sum(quantity), max(price.unit)); a text field: any string, enum or\n"
    "    integer field by name or path (channel=web, distinct(invoice_no)), up to 5.\n"
    "    Filters must all hold; != passes events without the field.\n"
    "tags.<name> (interest tag, repeatable)\n"
    "    top(item|category|type|<text field>, N) [filters] [half_life=<duration>|inf]\n"
    "    [slots=M]: the user's N heaviest values under decay, in profile updates (field\n"
    "    tags, schema profile_update_v2.avsc); M slots (default 4N, at most 64) of 64-byte "
    "values,\n"
    "    8 x 10 x M bytes a user; exact while a user has had at most M values.\n"
    "input.range.<field> = LOW..HIGH (repeatable)\n"
    "    The values a feature's field (amount, a numeric field's name or path,\n"
    "    attrs.<key>) may take, instead of -input.max_abs..input.max_abs; an event\n"
    "    beyond it is bad input (out_of_range). The field must be read by a feature.\n"
    "kafka.<property>, kafka.consumer.<property>, kafka.producer.<property>\n"
    "    Passed verbatim to librdkafka (both clients, consumer only, producer only),\n"
    "    e.g. kafka.bootstrap.servers, kafka.group.id, kafka.security.protocol,\n"
    "    kafka.sasl.mechanisms, kafka.sasl.username, kafka.sasl.password.\n"
    "    Defaults set by cohortd: group.id=cohortd, auto.offset.reset=earliest,\n"
    "    partition.assignment.strategy=cooperative-sticky, enable.idempotence=true,\n"
    "    partitioner=murmur2_random (Java-client compatible). Secrets are never printed.\n"
    "Durations: a number with ms, s, m, h, d or w (e.g. 500ms, 30s, 7d); inf where allowed.\n"
    "Relative paths are relative to the config file's directory.\n";

void ch_config_print_help(FILE *out, bool markdown) {
    char range[128];
    if (markdown) {
        fprintf(out, "| key | type | default | range | meaning |\n|---|---|---|---|---|\n");
    } else {
        fprintf(out, "cohortd configuration keys (file: 'key = value' lines, '#' comments;\n"
                     "command line: --set key=value, applied after the file).\n\n");
    }
    for (size_t i = 0; i < N_KEYS; i++) {
        const key_def_t *k = &keys[i];
        format_range(k, range, sizeof(range));
        if (markdown) {
            fprintf(out, "| `%s` | %s | `%s` | %s | %s |\n", k->name, type_names[k->type],
                    k->dflt, range, k->help);
        } else {
            bool number = k->type == K_INT || k->type == K_SIZE || k->type == K_U64 ||
                          k->type == K_FLOAT;
            const char *pre = !range[0]                                  ? ""
                              : k->type == K_ENUM || k->type == K_FLAG ? ", one of "
                              : number                                 ? ", range "
                                                                       : ", ";
            fprintf(out, "%s (%s, default '%s'%s%s)\n    %s\n", k->name, type_names[k->type],
                    k->dflt, pre, range, k->help);
        }
    }
    if (markdown) {
        fprintf(out, "\n```\n%s```\n", families_help);
    } else {
        fputs(families_help, out);
    }
}

int ch_config_features(const ch_config_t *cfg, ch_features_t **ret_fs, char *errbuf,
                       size_t errlen) {
    ch_features_t *fs = NULL;
    int r = ch_features_new(cfg->features_half_life_ms, &fs);
    if (r < 0) {
        return fail(errbuf, errlen, r, "features: %s", strerror(-r));
    }
    for (size_t i = 0; i < cfg->n_features; i++) {
        char why[256];
        r = ch_features_add(fs, cfg->features[i].key, cfg->features[i].value, why, sizeof(why));
        if (r < 0) {
            ch_features_free(fs);
            return fail(errbuf, errlen, -EINVAL, "%s: feature.%s: %s", cfg->features[i].where,
                        cfg->features[i].key, why);
        }
    }
    for (size_t i = 0; i < cfg->n_tags; i++) {
        char why[256];
        r = ch_features_add_tag(fs, cfg->tags[i].key, cfg->tags[i].value, why, sizeof(why));
        if (r < 0) {
            ch_features_free(fs);
            return fail(errbuf, errlen, -EINVAL, "%s: tags.%s: %s", cfg->tags[i].where,
                        cfg->tags[i].key, why);
        }
    }
    if ((r = ch_features_seal(fs)) < 0) {
        ch_features_free(fs);
        return fail(errbuf, errlen, r, "features: %s", strerror(-r));
    }
    *ret_fs = fs;
    return 0;
}
