/*
 * ch/topk.h - the heaviest values of a stream of strings, by exponentially decayed
 * count, in bounded memory (Space-Saving, Metwally et al. 2005, on decayed weights).
 *
 * A value's weight at time T is the sum of 2^(-(T - t_i)/h) over its occurrences t_i
 * (late occurrences count with their own time). With at most `slots` distinct values
 * seen, every weight is exact; beyond, a value that is not held takes the lightest
 * slot and starts from that slot's weight, so a reported weight overestimates its
 * exact one by at most the error it reports, which is at most the total weight /
 * slots. Values are copied (at most max_len bytes; longer ones are cut).
 *
 * @locality Not thread-safe. No allocation after ch_topk_new().
 */
#ifndef CH_TOPK_H
#define CH_TOPK_H

#include <stddef.h>
#include <stdint.h>

typedef struct ch_topk ch_topk_t;

/** One reported value: a view into the sketch, valid until its next change. */
typedef struct ch_topk_item {
    const char *value;
    size_t len;
    double weight; /* decayed count at the time asked, an upper bound of the exact one */
    double error;  /* weight - error is a lower bound of the exact one */
} ch_topk_item_t;

/**
 * @brief A sketch of `slots` values of up to max_len bytes, decayed with half_life_ms.
 * @returns 0, -EINVAL (slots 0 or > 65536, max_len 0 or > 4096, half-life <= 0),
 *          -ENOMEM.
 */
int ch_topk_new(size_t slots, size_t max_len, double half_life_ms, ch_topk_t **ret);

/** @brief Free. Accepts NULL. @returns NULL. */
ch_topk_t *ch_topk_free(ch_topk_t *t);

/** @brief Forget every value. */
void ch_topk_clear(ch_topk_t *t);

/** @brief One occurrence of value s (len bytes, len 0 ignored) at ts_ms, weight w > 0. */
void ch_topk_add(ch_topk_t *t, const char *s, size_t len, int64_t ts_ms, double w);

/**
 * @brief The n heaviest values at now_ms, heaviest first (ties: the lower error first,
 *        then bytewise).
 * @returns how many were written (at most n, at most the values held).
 */
size_t ch_topk_top(ch_topk_t *t, int64_t now_ms, size_t n, ch_topk_item_t *ret);

/** @brief Total decayed weight added, at now_ms. */
double ch_topk_total(const ch_topk_t *t, int64_t now_ms);

#endif
