/*
 * Feature engine tests. Every expected value is worked out by hand in the
 * comment beside it from the definition in README "Features".
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ch/features.h"
#include "../ch_test.h"

#define H 3600000LL /* one hour in ms */

typedef struct fixture {
    ch_features_t *fs;
    double state[64];
    int64_t t_ref;
    double out[32];
} fixture_t;

static void make(fixture_t *fx, const char *const *decls) {
    memset(fx, 0, sizeof(*fx));
    assert_int_equal(ch_features_new(H, &fx->fs), 0);
    char err[256];
    for (size_t i = 0; decls[i]; i += 2) {
        int r = ch_features_add(fx->fs, decls[i], decls[i + 1], err, sizeof(err));
        if (r < 0) {
            fail_msg("%s: %s", decls[i], err);
        }
    }
    assert_int_equal(ch_features_seal(fx->fs), 0);
    assert_true(ch_features_state_len(fx->fs) <= 64);
    ch_features_state_init(fx->fs, fx->state);
    fx->t_ref = INT64_MIN;
}

static void feed(fixture_t *fx, int64_t ts, const char *type, const double *amount) {
    double values[1] = {amount ? *amount : 0};
    ch_obs_t obs = {
        .ts_ms = ts,
        .present_mask = amount ? 1 : 0,
        .values = values,
    };
    ch_features_obs_text(fx->fs, &obs, CH_TEXT_TYPE, type, strlen(type));
    ch_features_update(fx->fs, fx->state, &fx->t_ref, &obs);
}

static void read_all(fixture_t *fx) {
    ch_features_read(fx->fs, fx->state, fx->t_ref, fx->out);
}

static const char *const basic[] = {
    "n",      "count",
    "s",      "sum(amount)",
    "m",      "mean(amount) default=-1",
    "sd",     "std(amount) default=-2",
    "mx",     "max(amount) default=-3",
    NULL,
};

static void test_decay_in_order(void **st) {
    (void)st;
    fixture_t fx;
    make(&fx, basic);
    double a = 10, b = 20;
    feed(&fx, 0, "payment", &a);
    feed(&fx, H, "payment", &b);
    read_all(&fx);
    /* weights at q = 1h with h = 1h: 0.5 for the first event, 1 for the second */
    assert_double_equal(fx.out[0], 1.5, 1e-12);                     /* count */
    assert_double_equal(fx.out[1], 25.0, 1e-12);                    /* 10*.5 + 20 */
    assert_double_equal(fx.out[2], 50.0 / 3.0, 1e-12);              /* 25 / 1.5 */
    assert_double_equal(fx.out[3], sqrt(200.0 / 9.0), 1e-12);       /* see below */
    /* var = (0.5*(10-50/3)^2 + 1*(20-50/3)^2)/1.5 = (200/9 + 100/9)/1.5 = 200/9 */
    assert_double_equal(fx.out[4], 20.0, 1e-12); /* max(10*.5, 20) */
    ch_features_free(fx.fs);
}

static void test_late_event_is_order_independent(void **st) {
    (void)st;
    fixture_t fx;
    make(&fx, basic);
    double a = 10, b = 20;
    feed(&fx, H, "payment", &b); /* newest first */
    feed(&fx, 0, "payment", &a); /* late by one half-life: weight 0.5 */
    read_all(&fx);
    assert_int_equal(fx.t_ref, H);
    assert_double_equal(fx.out[0], 1.5, 1e-12);
    assert_double_equal(fx.out[1], 25.0, 1e-12);
    assert_double_equal(fx.out[2], 50.0 / 3.0, 1e-12);
    assert_double_equal(fx.out[3], sqrt(200.0 / 9.0), 1e-12);
    assert_double_equal(fx.out[4], 20.0, 1e-12);
    ch_features_free(fx.fs);
}

static void test_decayed_max(void **st) {
    (void)st;
    fixture_t fx;
    make(&fx, basic);
    double a = 10, b = 4;
    feed(&fx, 0, "x", &a);
    feed(&fx, H, "x", &b);
    read_all(&fx);
    assert_double_equal(fx.out[4], 5.0, 1e-12); /* max(10 * 0.5, 4) */
    ch_features_free(fx.fs);

    make(&fx, basic);
    feed(&fx, H, "x", &b);
    feed(&fx, 0, "x", &a); /* late */
    read_all(&fx);
    assert_double_equal(fx.out[4], 5.0, 1e-12);
    ch_features_free(fx.fs);
}

static void test_undefined_values_get_defaults(void **st) {
    (void)st;
    fixture_t fx;
    make(&fx, basic);
    feed(&fx, 0, "view", NULL); /* no amount: only the plain count moves */
    read_all(&fx);
    assert_double_equal(fx.out[0], 1.0, 0);
    assert_double_equal(fx.out[1], 0.0, 0);
    assert_double_equal(fx.out[2], -1.0, 0);
    assert_double_equal(fx.out[3], -2.0, 0);
    assert_double_equal(fx.out[4], -3.0, 0);
    ch_features_free(fx.fs);
}

static void test_constant_values_have_zero_std(void **st) {
    (void)st;
    fixture_t fx;
    make(&fx, basic);
    double a = 0.1;
    for (int i = 0; i < 1000; i++) {
        feed(&fx, (int64_t)((i * 7919) % 1000) * 60000, "p", &a); /* shuffled times */
    }
    read_all(&fx);
    assert_true(fx.out[3] == 0.0);
    assert_double_equal(fx.out[2], 0.1, 1e-15);
    ch_features_free(fx.fs);
}

static void test_type_filters(void **st) {
    (void)st;
    static const char *const decls[] = {
        "vc", "count type=view|cart half_life=inf",
        "p",  "count type=purchase half_life=inf",
        "ps", "sum(amount) type=purchase half_life=inf",
        NULL,
    };
    fixture_t fx;
    make(&fx, decls);
    double a = 7, b = 100;
    feed(&fx, 0, "view", NULL);
    feed(&fx, 1, "cart", &b);
    feed(&fx, 2, "purchase", &a);
    feed(&fx, 3, "login", NULL);
    feed(&fx, 4, "purchase", &a);
    read_all(&fx);
    assert_double_equal(fx.out[0], 2.0, 0);
    assert_double_equal(fx.out[1], 2.0, 0);
    assert_double_equal(fx.out[2], 14.0, 0);
    ch_features_free(fx.fs);
}

static void test_since_last(void **st) {
    (void)st;
    static const char *const decls[] = {
        "sl", "since_last type=login default=99",
        NULL,
    };
    fixture_t fx;
    make(&fx, decls);
    feed(&fx, 1000, "view", NULL);
    read_all(&fx);
    assert_double_equal(fx.out[0], 99.0, 0); /* no login yet */
    feed(&fx, 1000, "login", NULL);
    feed(&fx, 61000, "view", NULL);
    read_all(&fx);
    assert_double_equal(fx.out[0], 60.0, 0);
    feed(&fx, 500, "login", NULL); /* a late, older login changes nothing */
    read_all(&fx);
    assert_double_equal(fx.out[0], 60.0, 0);
    feed(&fx, 31000, "login", NULL); /* a late but newer login does */
    read_all(&fx);
    assert_double_equal(fx.out[0], 30.0, 0);
    ch_features_free(fx.fs);
}

/* since_prev: the gap between the two latest matching events, at the match and after
 * it (other events leave it); late events count where their time puts them. */
static void test_since_prev(void **st) {
    (void)st;
    static const char *const decls[] = {
        "sp", "since_prev type=payment default=-1",
        "sl", "since_last type=payment default=-1",
        NULL,
    };
    fixture_t fx;
    make(&fx, decls);
    feed(&fx, 1000, "payment", NULL);
    read_all(&fx);
    assert_double_equal(fx.out[0], -1.0, 0); /* one match: no previous */
    feed(&fx, 61000, "payment", NULL);
    read_all(&fx);
    assert_double_equal(fx.out[0], 60.0, 0);
    assert_double_equal(fx.out[1], 0.0, 0); /* since_last is 0 at the match itself */
    feed(&fx, 121000, "view", NULL); /* another kind of event changes nothing */
    read_all(&fx);
    assert_double_equal(fx.out[0], 60.0, 0);
    assert_double_equal(fx.out[1], 60.0, 0);
    feed(&fx, 500, "payment", NULL); /* late and older than both: nothing */
    read_all(&fx);
    assert_double_equal(fx.out[0], 60.0, 0);
    feed(&fx, 41000, "payment", NULL); /* late, between the two: the gap is from it */
    read_all(&fx);
    assert_double_equal(fx.out[0], 20.0, 0);
    feed(&fx, 61000, "payment", NULL); /* at the same time as the latest: a gap of 0 */
    read_all(&fx);
    assert_double_equal(fx.out[0], 0.0, 0);
    feed(&fx, 181000, "payment", NULL);
    read_all(&fx);
    assert_double_equal(fx.out[0], 120.0, 0);
    ch_features_free(fx.fs);
    ch_features_t *fs = NULL;
    char err[256] = "";
    assert_int_equal(ch_features_new(H, &fs), 0);
    assert_int_equal(ch_features_add(fs, "x", "since_prev half_life=1h", err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "since_prev does not decay"));
    assert_int_equal(ch_features_add(fs, "x", "since_prev(amount)", err, sizeof(err)), -EINVAL);
    ch_features_free(fs);
}

/* Reading at a later time equals the state an event matching no feature would leave at
 * that time (decay alone), and does not change the state. */
static void test_read_at_a_later_time(void **st) {
    (void)st;
    static const char *const decls[] = {
        "n",  "count type=payment",
        "s",  "sum(amount) type=payment half_life=3h",
        "m",  "mean(amount) type=payment",
        "sd", "std(amount) type=payment",
        "mx", "max(amount) type=payment half_life=30m",
        "sl", "since_last type=payment",
        "r",  "ratio(s, n)",
        NULL,
    };
    fixture_t fx;
    make(&fx, decls);
    double a = 10, b = 30;
    feed(&fx, 0, "payment", &a);
    feed(&fx, 600000, "payment", &b);
    double at[32], again[32];
    int64_t later = 600000 + 2 * H + 12345;
    ch_features_read_at(fx.fs, fx.state, fx.t_ref, later, at);
    ch_features_read_at(fx.fs, fx.state, fx.t_ref, later, again);
    assert_memory_equal(at, again, 7 * sizeof(double)); /* the state is unchanged */
    ch_features_read_at(fx.fs, fx.state, fx.t_ref, fx.t_ref - 5, again); /* earlier: at t_ref */
    read_all(&fx);
    assert_memory_equal(fx.out, again, 7 * sizeof(double));
    assert_double_equal(at[0], fx.out[0] * exp2(-(double)(later - 600000) / H), 1e-12);
    feed(&fx, later, "view", NULL); /* matches none of them */
    read_all(&fx);
    for (int i = 0; i < 7; i++) {
        assert_double_equal(at[i], fx.out[i], 1e-12 * (1 + fabs(fx.out[i])));
    }
    assert_double_equal(at[5], (double)(later - 600000) / 1000.0, 0);
    ch_features_free(fx.fs);
}

static void test_ratio(void **st) {
    (void)st;
    static const char *const decls[] = {
        "c",  "count type=cart half_life=inf",
        "v",  "count type=view half_life=inf",
        "cv", "ratio(c, v) default=-1",
        NULL,
    };
    fixture_t fx;
    make(&fx, decls);
    feed(&fx, 0, "cart", NULL);
    read_all(&fx);
    assert_double_equal(fx.out[2], -1.0, 0); /* no views: undefined */
    feed(&fx, 1, "view", NULL);
    feed(&fx, 2, "view", NULL);
    feed(&fx, 3, "view", NULL);
    feed(&fx, 4, "view", NULL);
    read_all(&fx);
    assert_double_equal(fx.out[2], 0.25, 0);
    ch_features_free(fx.fs);
}

static void test_per_feature_half_life(void **st) {
    (void)st;
    static const char *const decls[] = {
        "fast", "count half_life=30m",
        "slow", "count half_life=2h",
        NULL,
    };
    fixture_t fx;
    make(&fx, decls);
    feed(&fx, 0, "a", NULL);
    feed(&fx, 2 * H, "a", NULL);
    read_all(&fx);
    assert_double_equal(fx.out[0], 1.0 + 1.0 / 16.0, 1e-12); /* 4 half-lives */
    assert_double_equal(fx.out[1], 1.5, 1e-12);              /* 1 half-life */
    ch_features_free(fx.fs);
}

static void expect_error(const char *name, const char *spec, const char *needle) {
    ch_features_t *fs = NULL;
    assert_int_equal(ch_features_new(H, &fs), 0);
    char err[256] = "";
    assert_int_equal(ch_features_add(fs, "n", "count", err, sizeof(err)), 0);
    int r = ch_features_add(fs, name, spec, err, sizeof(err));
    assert_int_equal(r, -EINVAL);
    if (!strstr(err, needle)) {
        fail_msg("error for '%s' was '%s', expected it to mention '%s'", spec, err, needle);
    }
    assert_int_equal(ch_features_count(fs), 1);
    ch_features_free(fs);
}

static void test_spec_errors(void **st) {
    (void)st;
    expect_error("x", "median(amount)", "unknown feature kind");
    expect_error("x", "sum", "needs a field");
    expect_error("x", "sum(2price)", "bad field '2price'");
    expect_error("x", "sum(price..unit)", "bad field 'price..unit'");
    expect_error("x", "count half_life=soon", "bad half_life");
    expect_error("x", "count 9colour=red", "does not apply here");
    expect_error("x", "count slots=3", "does not apply here");
    expect_error("x", "ratio(n, y)", "'y' is not a feature");
    expect_error("n", "count", "declared twice");
    expect_error("bad name", "count", "bad feature name");
    expect_error("x", "mean(amount) default=nan", "bad default");
    expect_error("x", "sum(amount", "missing ')'");
}

static void test_canonical_spec(void **st) {
    (void)st;
    ch_features_t *fs = NULL;
    assert_int_equal(ch_features_new(H, &fs), 0);
    assert_int_equal(ch_features_add(fs, "a", " mean( attrs.lat )  type=view,cart half_life=90m",
                                     NULL, 0),
                     0);
    assert_string_equal(ch_features_spec(fs, 0),
                        "mean(attrs.lat) type=view|cart half_life=90m default=0");
    assert_int_equal(ch_features_field_count(fs), 1);
    assert_string_equal(ch_features_field_name(fs, 0), "attrs.lat");
    ch_features_free(fs);
}

static void test_duration_parse(void **st) {
    (void)st;
    double ms = 0;
    assert_int_equal(ch_duration_parse("250ms", &ms), 0);
    assert_double_equal(ms, 250, 0);
    assert_int_equal(ch_duration_parse("1.5h", &ms), 0);
    assert_double_equal(ms, 5400000, 0);
    assert_int_equal(ch_duration_parse("7d", &ms), 0);
    assert_double_equal(ms, 604800000, 0);
    assert_int_equal(ch_duration_parse("42", &ms), 0);
    assert_double_equal(ms, 42, 0);
    assert_int_equal(ch_duration_parse("inf", &ms), 0);
    assert_true(isinf(ms));
    assert_int_equal(ch_duration_parse("3 days", &ms), -EINVAL);
    assert_int_equal(ch_duration_parse("-1s", &ms), -EINVAL);
    assert_int_equal(ch_duration_parse("", &ms), -EINVAL);
}

/* ---------------------------------------------------------------- categorical */

typedef struct cat {
    ch_features_t *fs;
    double *state;
    int64_t t_ref;
    double out[8];
} cat_t;

static void cat_make(cat_t *c, const char *const *decls) {
    memset(c, 0, sizeof(*c));
    assert_int_equal(ch_features_new(H, &c->fs), 0);
    char err[256];
    for (size_t i = 0; decls[i]; i += 2) {
        if (ch_features_add(c->fs, decls[i], decls[i + 1], err, sizeof(err)) < 0) {
            fail_msg("%s: %s", decls[i], err);
        }
    }
    assert_int_equal(ch_features_seal(c->fs), 0);
    c->state = calloc(ch_features_state_len(c->fs), sizeof(double));
    assert_non_null(c->state);
    ch_features_state_init(c->fs, c->state);
    c->t_ref = INT64_MIN;
}

static void cat_done(cat_t *c) {
    free(c->state);
    ch_features_free(c->fs);
}

static void cat_feed(cat_t *c, int64_t ts, const char *type, const char *item,
                     const char *category) {
    ch_obs_t obs = {.ts_ms = ts};
    ch_features_obs_text(c->fs, &obs, CH_TEXT_TYPE, type, type ? strlen(type) : 0);
    ch_features_obs_text(c->fs, &obs, CH_TEXT_ITEM, item, item ? strlen(item) : 0);
    ch_features_obs_text(c->fs, &obs, CH_TEXT_CATEGORY, category, category ? strlen(category) : 0);
    ch_features_update(c->fs, c->state, &c->t_ref, &obs);
    ch_features_read(c->fs, c->state, c->t_ref, c->out);
}

/* Text fields by name or path (beyond type, item, category): filters, distinct() and
 * tags read them like the roles; the set lists them for the event mapping. */
static void test_text_fields_by_path(void **st) {
    (void)st;
    static const char *const decls[] = {
        "web",      "count channel=web half_life=inf",
        "not_de",   "share customer.country!=DE half_life=inf",
        "invoices", "distinct(invoice_no) window=inf k=8",
        NULL,
    };
    cat_t c;
    cat_make(&c, decls);
    assert_int_equal(ch_features_text_count(c.fs), 3);
    assert_string_equal(ch_features_text_path(c.fs, 0), "channel");
    assert_string_equal(ch_features_text_path(c.fs, 1), "customer.country");
    assert_string_equal(ch_features_text_path(c.fs, 2), "invoice_no");
    assert_string_equal(ch_features_spec(c.fs, 1),
                        "share customer.country!=DE half_life=inf default=0");
    static const char *const evs[][3] = {
        {"web", "UK", "i1"}, {"store", "DE", "i1"}, {NULL, "DE", "i2"}, {"web", NULL, "i3"}};
    for (size_t i = 0; i < 4; i++) {
        ch_obs_t obs = {.ts_ms = (int64_t)i};
        for (int j = 0; j < 3; j++) {
            const char *v = evs[i][j];
            ch_features_obs_text(c.fs, &obs, (ch_text_field_t)(CH_TEXT_FIELD0 + j), v,
                                 v ? strlen(v) : 0);
        }
        ch_features_update(c.fs, c.state, &c.t_ref, &obs);
    }
    ch_features_read(c.fs, c.state, c.t_ref, c.out);
    assert_double_equal(c.out[0], 2, 0);   /* web twice */
    assert_double_equal(c.out[1], 0.5, 0); /* UK and none of 4 are not DE */
    assert_double_equal(c.out[2], 3, 0);   /* i1, i2, i3 */
    cat_done(&c);
}

static void test_text_filters_and_share(void **st) {
    (void)st;
    static const char *const decls[] = {
        "groc",  "count category=grocery|gas half_life=inf",
        "other", "count category!=grocery|gas half_life=inf",
        "both",  "count type=buy item=sku1 half_life=inf",
        "share", "share category=grocery half_life=1h default=-1",
        NULL,
    };
    cat_t c;
    cat_make(&c, decls);
    assert_string_equal(ch_features_spec(c.fs, 1),
                        "count category!=grocery|gas half_life=inf default=0");
    cat_feed(&c, 0, "buy", "sku1", "grocery"); /* groc 1, other 0, both 1, share 1/1 */
    assert_double_equal(c.out[0], 1, 0);
    assert_double_equal(c.out[1], 0, 0);
    assert_double_equal(c.out[2], 1, 0);
    assert_double_equal(c.out[3], 1, 0);
    cat_feed(&c, 0, "view", "sku1", NULL); /* no category: "other" (negated) counts it */
    assert_double_equal(c.out[1], 1, 0);
    assert_double_equal(c.out[2], 1, 0);
    assert_double_equal(c.out[3], 0.5, 1e-15);
    /* one hour later, a travel event: the old two weigh 1/2 each, grocery 0.5 of 2.0 */
    cat_feed(&c, H, "buy", "sku2", "travel");
    assert_double_equal(c.out[0], 1, 0);
    assert_double_equal(c.out[1], 2, 0);
    assert_double_equal(c.out[3], 0.5 / 2.0, 1e-15);
    cat_done(&c);

    static const char *const none[] = {"s", "share", NULL};
    ch_features_t *fs = NULL;
    char err[256];
    assert_int_equal(ch_features_new(H, &fs), 0);
    assert_int_equal(ch_features_add(fs, none[0], none[1], err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "share needs a filter"));
    assert_int_equal(ch_features_add(fs, "d", "distinct(2amount)", err, sizeof(err)), -EINVAL);
    assert_int_equal(ch_features_add(fs, "d", "distinct(item) half_life=1h", err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(ch_features_add(fs, "d", "count item=a item=b", err, sizeof(err)), -EINVAL);
    /* since_last takes half_life= (ignored), as configurations written before have it */
    assert_int_equal(ch_features_add(fs, "sl", "since_last half_life=1h", err, sizeof(err)), 0);
    ch_features_free(fs);
}

/* Quoted filter values: spaces, | , quotes and backslashes, UTF-8; the canonical spec
 * quotes (and escapes) exactly the values that need it and reads back to itself. */
static void test_quoted_filter_values(void **st) {
    (void)st;
    static const char *const decls[] = {
        "uk",     "count category=\"United Kingdom\" half_life=inf",
        "not_uk", "count category!=\"United Kingdom\"|\"Isle of Man\" half_life=inf",
        "odd",    "count category=\"a|b, \\\"c\\\"\"|Zürich,\"back\\\\slash\" half_life=inf",
        NULL,
    };
    cat_t c;
    cat_make(&c, decls);
    assert_string_equal(ch_features_spec(c.fs, 0),
                        "count category=\"United Kingdom\" half_life=inf default=0");
    assert_string_equal(ch_features_spec(c.fs, 2),
                        "count category=\"a|b, \\\"c\\\"\"|\"Zürich\"|\"back\\\\slash\" half_life=inf "
                        "default=0");
    cat_feed(&c, 0, "buy", "sku1", "United Kingdom");
    cat_feed(&c, 0, "buy", "sku1", "United");       /* not a prefix match */
    cat_feed(&c, 0, "buy", "sku1", "a|b, \"c\"");  /* the quoted value, as data */
    cat_feed(&c, 0, "buy", "sku1", "Zürich");
    cat_feed(&c, 0, "buy", "sku1", "back\\slash");
    cat_feed(&c, 0, "buy", "sku1", "Isle of Man");
    assert_double_equal(c.out[0], 1, 0);
    assert_double_equal(c.out[1], 4, 0); /* all but United Kingdom and Isle of Man */
    assert_double_equal(c.out[2], 3, 0);
    /* the canonical spec declares the same feature */
    char spec[256];
    snprintf(spec, sizeof(spec), "%s", ch_features_spec(c.fs, 2));
    ch_features_t *fs = NULL;
    assert_int_equal(ch_features_new(H, &fs), 0);
    assert_int_equal(ch_features_add(fs, "odd", spec, NULL, 0), 0);
    assert_string_equal(ch_features_spec(fs, 0), spec);
    char err[256];
    assert_int_equal(ch_features_add(fs, "e1", "count category=\"open", err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "unterminated quote"));
    assert_int_equal(ch_features_add(fs, "e2", "count category=a\"b\"", err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "inside an unquoted value"));
    assert_int_equal(ch_features_add(fs, "e3", "count category=\"a\"b", err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "after a quoted value"));
    assert_int_equal(ch_features_add(fs, "e4", "count category=\"\"", err, sizeof(err)),
                     -EINVAL);
    assert_int_equal(ch_features_add(fs, "e5", "count category=\"tab\there\"", err, sizeof(err)),
                     -EINVAL);
    ch_features_free(fs);
    cat_done(&c);
}

/* distinct(): exact while the window's values fit the 3k pairs (whatever the arrival
 * order), and within the sketch's error when they do not. */
static void test_distinct_exact_in_any_order(void **st) {
    (void)st;
    static const char *const decls[] = {"d8", "distinct(item) window=1h k=8", "d32",
                                        "distinct(item) window=20m k=32", NULL};
    enum { N = 400, V = 40 };
    int64_t ts[N];
    char items[N][16];
    unsigned seed = 7;
    for (int i = 0; i < N; i++) { /* 40 values over 3 hours */
        seed = seed * 1103515245u + 12345u;
        ts[i] = (int64_t)(seed >> 8) % (3 * H);
        seed = seed * 1103515245u + 12345u;
        snprintf(items[i], sizeof(items[i]), "v%u", (seed >> 8) % V);
    }
    int64_t q = INT64_MIN;
    for (int i = 0; i < N; i++) {
        q = ts[i] > q ? ts[i] : q;
    }
    bool in[V] = {false}, in_1h[V] = {false};
    int exact = 0, exact_1h = 0; /* values seen in (q - 20m, q] and (q - 1h, q] */
    for (int i = 0; i < N; i++) {
        int v = atoi(items[i] + 1);
        if (q - ts[i] < H / 3 && !in[v]) {
            in[v] = true;
            exact++;
        }
        if (q - ts[i] < H && !in_1h[v]) {
            in_1h[v] = true;
            exact_1h++;
        }
    }
    assert_true(exact > 8 && exact < 32);
    assert_true(exact_1h > 24); /* more than the 3k = 24 pairs of d8: estimated */
    int order[N];
    for (int i = 0; i < N; i++) {
        order[i] = i;
    }
    cat_t c;
    for (int round = 0; round < 6; round++) {
        cat_make(&c, decls);
        for (int i = 0; i < N; i++) {
            cat_feed(&c, ts[order[i]], NULL, items[order[i]], NULL);
        }
        assert_double_equal(c.out[1], exact, 0); /* in every order */
        assert_true(fabs(c.out[0] / exact_1h - 1) < 4 / sqrt(6.0));
        cat_done(&c);
        for (int i = N - 1; i > 0; i--) { /* another order */
            seed = seed * 1103515245u + 12345u;
            int j = (int)((seed >> 8) % (unsigned)(i + 1));
            int t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
    }
    /* 20 values with k = 8: beyond k, but within the 24 pairs: exact */
    static const char *const fits[] = {"d", "distinct(item) window=inf k=8", NULL};
    cat_make(&c, fits);
    for (int i = 0; i < 60; i++) {
        char v[16];
        snprintf(v, sizeof(v), "y%d", i % 20);
        cat_feed(&c, i, NULL, v, NULL);
    }
    assert_double_equal(c.out[0], 20, 0);
    cat_done(&c);
    /* a value a minute for 100 minutes: a 10-minute window holds the last 10 */
    static const char *const small[] = {"d", "distinct(item) window=10m k=16", NULL};
    cat_make(&c, small);
    for (int i = 0; i < 100; i++) {
        char v[16];
        snprintf(v, sizeof(v), "x%d", i);
        cat_feed(&c, (int64_t)i * 60000, NULL, v, NULL);
    }
    assert_double_equal(c.out[0], 10, 0);
    cat_done(&c);
}

/* Beyond k: the KMV estimate, relative standard error about 1 / sqrt(k - 2). */
static void test_distinct_estimate(void **st) {
    (void)st;
    static const char *const decls[] = {"d", "distinct(item) window=inf k=256", NULL};
    double sum_abs = 0;
    enum { TRIALS = 20, N = 10000 };
    for (int trial = 0; trial < TRIALS; trial++) {
        cat_t c;
        cat_make(&c, decls);
        for (int i = 0; i < N; i++) {
            char v[32];
            snprintf(v, sizeof(v), "t%d-%d", trial, i);
            cat_feed(&c, i, NULL, v, NULL);
            if (i % 3 == 0) {
                cat_feed(&c, i, NULL, v, NULL); /* repeats change nothing */
            }
        }
        double rel = c.out[0] / N - 1;
        assert_true(fabs(rel) < 5 / sqrt(254.0)); /* 5 sigma */
        sum_abs += fabs(rel);
        cat_done(&c);
    }
    /* the mean absolute error of an unbiased estimate is about 0.8 sigma = 5% */
    assert_true(sum_abs / TRIALS < 0.08);
}

/* The largest documented k starts (6,146 doubles of state) and stays within its
 * documented error, 1/sqrt(k - 2) = 3.1% relative standard error. */
static void test_distinct_largest_k(void **st) {
    (void)st;
    static const char *const decls[] = {"d", "distinct(item) window=inf k=1024", NULL};
    enum { TRIALS = 4, N = 20000 };
    double sigma = 1 / sqrt(1022.0), sum_abs = 0;
    for (int trial = 0; trial < TRIALS; trial++) {
        cat_t c;
        cat_make(&c, decls);
        assert_int_equal(ch_features_state_len(c.fs), 2 + 6 * 1024);
        for (int i = 0; i < N; i++) {
            char v[32];
            snprintf(v, sizeof(v), "k%d-%d", trial, i);
            cat_feed(&c, i, NULL, v, NULL);
            if (i == 3 * 1024 - 1) { /* every value still held: exact */
                assert_double_equal(c.out[0], 3 * 1024, 0);
            }
        }
        double rel = c.out[0] / N - 1;
        assert_true(fabs(rel) < 5 * sigma);
        sum_abs += fabs(rel);
        cat_done(&c);
    }
    assert_true(sum_abs / TRIALS < 2 * sigma); /* about 0.8 sigma expected */
}

/* Tags: the heaviest values under decay, ties by bytes; Space-Saving past the slots. */
static void test_tags(void **st) {
    (void)st;
    static const char *const decls[] = {"n", "count", NULL};
    cat_t c;
    memset(&c, 0, sizeof(c));
    assert_int_equal(ch_features_new(H, &c.fs), 0);
    char err[256];
    assert_int_equal(ch_features_add(c.fs, decls[0], decls[1], err, sizeof(err)), 0);
    assert_int_equal(ch_features_add_tag(c.fs, "cats", "top( category , 2) type!=refund slots=3",
                                         err, sizeof(err)),
                     0);
    assert_int_equal(ch_features_add_tag(c.fs, "x", "top(a..b, 2)", err, sizeof(err)), -EINVAL);
    assert_int_equal(ch_features_add_tag(c.fs, "x", "top(item, 2) slots=1", err, sizeof(err)),
                     -EINVAL);
    assert_string_equal(ch_features_tag_spec(c.fs, 0),
                        "top(category, 2) type!=refund half_life=1h slots=3");
    assert_int_equal(ch_features_seal(c.fs), 0);
    c.state = calloc(ch_features_state_len(c.fs), sizeof(double));
    ch_features_state_init(c.fs, c.state);
    c.t_ref = INT64_MIN;
    const char *vals[CH_TAG_TOP_MAX];
    size_t lens[CH_TAG_TOP_MAX];
    double w[CH_TAG_TOP_MAX];
    cat_feed(&c, 0, "buy", NULL, "books");
    cat_feed(&c, 0, "buy", NULL, "games");
    cat_feed(&c, 0, "refund", NULL, "toys"); /* filtered out */
    assert_int_equal(ch_features_tag_read(c.fs, c.state, 0, vals, lens, w), 2);
    assert_memory_equal(vals[0], "books", 5); /* a tie: by bytes */
    assert_memory_equal(vals[1], "games", 5);
    cat_feed(&c, H, "buy", NULL, "games"); /* books 0.5, games 1.5 */
    assert_int_equal(ch_features_tag_read(c.fs, c.state, 0, vals, lens, w), 2);
    assert_memory_equal(vals[0], "games", 5);
    assert_double_equal(w[0], 1.5, 1e-12);
    assert_double_equal(w[1], 0.5, 1e-12);
    cat_feed(&c, H, "buy", NULL, "music"); /* the third slot */
    cat_feed(&c, H, "buy", NULL, "films"); /* no slot left: takes books' (0.5) + 1 */
    assert_int_equal(ch_features_tag_read(c.fs, c.state, 0, vals, lens, w), 2);
    assert_memory_equal(vals[0], "films", 5);
    assert_double_equal(w[0], 1.5, 1e-12);
    assert_memory_equal(vals[1], "games", 5); /* 1.5 too: "films" < "games" */
    cat_done(&c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decay_in_order),
        cmocka_unit_test(test_late_event_is_order_independent),
        cmocka_unit_test(test_decayed_max),
        cmocka_unit_test(test_undefined_values_get_defaults),
        cmocka_unit_test(test_constant_values_have_zero_std),
        cmocka_unit_test(test_type_filters),
        cmocka_unit_test(test_since_last),
        cmocka_unit_test(test_since_prev),
        cmocka_unit_test(test_quoted_filter_values),
        cmocka_unit_test(test_read_at_a_later_time),
        cmocka_unit_test(test_ratio),
        cmocka_unit_test(test_per_feature_half_life),
        cmocka_unit_test(test_spec_errors),
        cmocka_unit_test(test_canonical_spec),
        cmocka_unit_test(test_duration_parse),
        cmocka_unit_test(test_text_fields_by_path),
        cmocka_unit_test(test_text_filters_and_share),
        cmocka_unit_test(test_distinct_exact_in_any_order),
        cmocka_unit_test(test_distinct_estimate),
        cmocka_unit_test(test_distinct_largest_k),
        cmocka_unit_test(test_tags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
