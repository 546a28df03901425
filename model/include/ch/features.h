/*
 * ch/features.h - time-decayed per-user feature aggregates.
 *
 * A feature set is compiled once from declarations such as
 *     mean(amount) type=payment half_life=7d default=0
 * and then applied to per-user state arrays owned by the caller (the user table).
 * Every aggregate is exact for any arrival order (README "Features").
 *
 * @locality Not thread-safe; a feature set is immutable after ch_features_seal().
 */
#ifndef CH_FEATURES_H
#define CH_FEATURES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CH_FEATURES_MAX 256        /* declared features per set */
#define CH_FEATURES_MAX_FIELDS 64  /* distinct numeric fields referenced */
#define CH_FEATURES_MAX_VALUES 64  /* distinct values per text field in filters */
#define CH_FEATURE_NAME_MAX 64
#define CH_DISTINCT_K_DEFAULT 32 /* distinct(): exact up to k values in the window */
#define CH_DISTINCT_K_MAX 1024
#define CH_TAGS_MAX 16      /* tags.<name> per set */
#define CH_TAG_TOP_MAX 16   /* top(field, N): N at most */
#define CH_TAG_SLOTS_MAX 64 /* values a tag keeps per user */
#define CH_TAG_VALUE_MAX 64 /* bytes kept of a value (longer ones are cut) */

typedef enum ch_feat_kind {
    CH_FEAT_COUNT,
    CH_FEAT_SUM,
    CH_FEAT_MEAN,
    CH_FEAT_STD,
    CH_FEAT_MAX,
    CH_FEAT_SINCE_LAST,
    CH_FEAT_RATIO,
    CH_FEAT_SHARE,
    CH_FEAT_DISTINCT,
    CH_FEAT_SINCE_PREV,
} ch_feat_kind_t;

#define CH_FEATURES_MAX_TEXTS 5 /* text fields read by name (beyond type, item, category) */

/* The text fields of an event that filters (type=, item=, category=, <path>=),
 * distinct() and tags read: the three roles, then the fields named by path in the
 * declarations (CH_TEXT_FIELD0 + j, j < ch_features_text_count()). */
typedef enum ch_text_field {
    CH_TEXT_TYPE,
    CH_TEXT_ITEM,
    CH_TEXT_CATEGORY,
    CH_TEXT_FIELD0,
    CH_TEXT_N = CH_TEXT_FIELD0 + CH_FEATURES_MAX_TEXTS,
} ch_text_field_t;

/*
 * One observation as the feature engine sees it: plain values, no strings.
 * values[i] is the numeric field i of ch_features_field_name(); it is read only
 * when bit i of present_mask is set. The text fields are set by ch_features_obs_text().
 */
typedef struct ch_obs {
    int64_t ts_ms;
    uint64_t value_mask[CH_TEXT_N]; /* filter values equal to the event's text field */
    uint64_t text_hash[CH_TEXT_N];  /* 52-bit hash of the value (distinct()) */
    unsigned text_present;          /* bit k: the event has text field k */
    const char *text[CH_TEXT_N];    /* the values (tags keep them) */
    size_t text_len[CH_TEXT_N];
    uint64_t present_mask;
    const double *values;
} ch_obs_t;

typedef struct ch_features ch_features_t;

/**
 * @brief Create an empty feature set.
 * @param default_half_life_ms half-life used by declarations without half_life=
 *        (INFINITY: no decay).
 * @param ret_fs set on success.
 * @returns 0, -EINVAL (half-life not > 0), -ENOMEM.
 */
int ch_features_new(double default_half_life_ms, ch_features_t **ret_fs);

/** @brief Free a feature set. Accepts NULL. @returns NULL. */
ch_features_t *ch_features_free(ch_features_t *fs);

/**
 * @brief Declare one feature, appended in output order.
 * @param name feature name: [A-Za-z0-9_.-], at most CH_FEATURE_NAME_MAX-1 bytes, unique.
 * @param spec e.g. "count type=view|cart half_life=1h", "std(amount) half_life=7d",
 *        "since_last type=login default=1e9", "ratio(n_cart, n_view) default=0",
 *        "share category=grocery|gas", "count category!=travel",
 *        "distinct(item) window=1h k=64". Filters: type=, item=, category= (!= negates;
 *        values joined by |); all of a feature's filters must hold.
 *        Fields are "amount", "attrs.<key>", or the name or dotted path of a numeric
 *        field of the events ("quantity", "price.unit": the caller maps them).
 *        Ratio operands must be declared earlier.
 * @param errbuf, errlen receive the reason on failure (may be NULL).
 * @returns 0, -EINVAL (bad syntax, unknown operand, duplicate name), -E2BIG (a cap
 *          above was reached), -EBUSY (set already sealed).
 */
int ch_features_add(ch_features_t *fs, const char *name, const char *spec, char *errbuf,
                    size_t errlen);

/**
 * @brief Declare an interest tag: a user's heaviest values of a text field.
 * @param spec "top(<item|category|type>, N) [filters] [half_life=<duration>|inf]
 *        [slots=M]": the N values of largest decayed count (Space-Saving over M slots,
 *        default 4N, at most CH_TAG_SLOTS_MAX: exact while a user has at most M values).
 * @returns 0, -EINVAL, -E2BIG, -EBUSY (sealed).
 */
int ch_features_add_tag(ch_features_t *fs, const char *name, const char *spec, char *errbuf,
                        size_t errlen);

/** @brief Number of declared tags. */
size_t ch_features_tag_count(const ch_features_t *fs);
/** @brief Name of tag i. */
const char *ch_features_tag_name(const ch_features_t *fs, size_t i);
/** @brief Canonical spec of tag i. */
const char *ch_features_tag_spec(const ch_features_t *fs, size_t i);

/**
 * @brief A user's values of tag i, heaviest first (equal weights: by bytes), at most N.
 * @param vals, lens, weights at least CH_TAG_TOP_MAX entries; vals point into state
 *        (not NUL-terminated). weights may be NULL.
 * @returns the count (values of weight 0 never appear).
 */
size_t ch_features_tag_read(const ch_features_t *fs, const double *state, size_t i,
                            const char **vals, size_t *lens, double *weights);

/**
 * @brief Freeze the set and compute the per-user state layout.
 * @returns 0, -EINVAL (no feature declared).
 */
int ch_features_seal(ch_features_t *fs);

/** @brief Number of declared features (the output width d). */
size_t ch_features_count(const ch_features_t *fs);
/** @brief Name of feature i (i < count). */
const char *ch_features_name(const ch_features_t *fs, size_t i);
/** @brief Kind of feature i. */
ch_feat_kind_t ch_features_kind(const ch_features_t *fs, size_t i);
/** @brief Canonical spec of feature i, as --check-config prints it. Borrowed. */
const char *ch_features_spec(const ch_features_t *fs, size_t i);
/** @brief Doubles of per-user state the set needs (valid after seal). */
size_t ch_features_state_len(const ch_features_t *fs);
/** @brief Doubles of per-user state feature i takes (tag i: ch_features_tag_state_len). */
size_t ch_features_state_width(const ch_features_t *fs, size_t i);
size_t ch_features_tag_state_len(const ch_features_t *fs, size_t i);
/** @brief The longest half-life of the decayed features (count, sum, mean, std, max);
 *  INFINITY if one does not decay; 0 if none is decayed. */
double ch_features_longest_half_life(const ch_features_t *fs);
/** @brief Number of distinct numeric fields referenced. */
size_t ch_features_field_count(const ch_features_t *fs);
/** @brief Name of field i: "amount", "attrs.<key>" or a field path. */
const char *ch_features_field_name(const ch_features_t *fs, size_t i);

/** @brief Number of text fields read by name (filters, distinct() or tags on a field
 *  other than type, item and category). */
size_t ch_features_text_count(const ch_features_t *fs);
/** @brief The name or dotted path of text field CH_TEXT_FIELD0 + j. */
const char *ch_features_text_path(const ch_features_t *fs, size_t j);

/**
 * @brief Set text field k of an observation from the event's value (NULL: the event
 *        has none): which filter values it equals, and its hash if a distinct() reads it.
 */
void ch_features_obs_text(const ch_features_t *fs, ch_obs_t *obs, ch_text_field_t k, const char *s,
                          size_t len);

/** @brief Initialise a fresh user state of ch_features_state_len() doubles. */
void ch_features_state_init(const ch_features_t *fs, double *state);

/**
 * @brief Fold one observation into a user's state.
 * @param state the user's state (ch_features_state_len() doubles).
 * @param t_ref_ms in/out: the user's reference time (= stream time); INT64_MIN for a
 *        fresh state. Advanced to obs->ts_ms when the event is newer.
 * @remark Late events (ts < t_ref) are weighted by 2^(-(t_ref - ts)/h), so the result
 *         does not depend on arrival order. The caller rejects non-finite values.
 */
void ch_features_update(const ch_features_t *fs, double *state, int64_t *t_ref_ms,
                        const ch_obs_t *obs);

/**
 * @brief Read every feature at the user's stream time t_ref_ms.
 * @param out d values in declared order; undefined values are the feature's default.
 */
void ch_features_read(const ch_features_t *fs, const double *state, int64_t t_ref_ms,
                      double *out);

/**
 * @brief Read every feature as it will be at at_ms >= t_ref_ms if no event comes
 *        before (counts, sums and maxima decayed, since_last and distinct() windows at
 *        at_ms; means, std and shares do not change by decay alone). The state is not
 *        changed. An at_ms before t_ref_ms reads at t_ref_ms.
 */
void ch_features_read_at(const ch_features_t *fs, const double *state, int64_t t_ref_ms,
                         int64_t at_ms, double *out);

/**
 * @brief Parse a duration: "<number><unit>" with unit ms, s, m, h, d or w, or "inf".
 *        A bare number means milliseconds.
 * @returns 0 and *ret_ms, or -EINVAL.
 */
int ch_duration_parse(const char *s, double *ret_ms);

#endif
