/*
 * topk.c - decayed Space-Saving over strings (ch/topk.h).
 *
 * Design notes
 * - Forward decay (Cormode et al. 2009): a slot holds sum of w 2^((t_i - L)/h) for a
 *   landmark L, so an occurrence never touches the other slots; reading at T scales by
 *   2^(-(T - L)/h). When (t - L)/h passes RENORM every slot is scaled down and L moves
 *   to t (doubles hold 2^1023; RENORM leaves a wide margin).
 * - Lookup is a scan of the slots' 64-bit hashes (FNV-1a), then a byte compare: O(slots)
 *   an occurrence, meant for tens to hundreds of slots (cohortd uses 64 per segment).
 */
#include "ch/topk.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define RENORM 400.0 /* half-lives past the landmark before rescaling */

typedef struct slot {
    uint64_t hash;
    double w, err; /* forward-decayed */
    uint16_t len;
    bool used;
} slot_t;

struct ch_topk {
    size_t n_slots, max_len, used;
    double h;
    int64_t landmark;
    bool started;
    double total;
    slot_t *slots;
    char *text; /* n_slots x max_len */
    size_t *order;
};

int ch_topk_new(size_t slots, size_t max_len, double half_life_ms, ch_topk_t **ret) {
    if (slots == 0 || slots > 65536 || max_len == 0 || max_len > 4096 || !(half_life_ms > 0)) {
        return -EINVAL;
    }
    ch_topk_t *t = calloc(1, sizeof(*t));
    if (!t) {
        return -ENOMEM;
    }
    t->n_slots = slots;
    t->max_len = max_len;
    t->h = half_life_ms;
    t->slots = calloc(slots, sizeof(slot_t));
    t->text = malloc(slots * max_len);
    t->order = malloc(slots * sizeof(size_t));
    if (!t->slots || !t->text || !t->order) {
        ch_topk_free(t);
        return -ENOMEM;
    }
    *ret = t;
    return 0;
}

ch_topk_t *ch_topk_free(ch_topk_t *t) {
    if (t) {
        free(t->slots);
        free(t->text);
        free(t->order);
        free(t);
    }
    return NULL;
}

void ch_topk_clear(ch_topk_t *t) {
    memset(t->slots, 0, t->n_slots * sizeof(slot_t));
    t->used = 0;
    t->total = 0;
    t->started = false;
}

static uint64_t fnv1a(const char *s, size_t len) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    }
    return h;
}

static void rescale(ch_topk_t *t, int64_t to) {
    double f = exp2(-(double)(to - t->landmark) / t->h);
    for (size_t i = 0; i < t->n_slots; i++) {
        t->slots[i].w *= f;
        t->slots[i].err *= f;
    }
    t->total *= f;
    t->landmark = to;
}

void ch_topk_add(ch_topk_t *t, const char *s, size_t len, int64_t ts_ms, double w) {
    if (len == 0 || !(w > 0)) {
        return;
    }
    len = len < t->max_len ? len : t->max_len;
    if (!t->started) {
        t->landmark = ts_ms;
        t->started = true;
    } else if ((double)(ts_ms - t->landmark) / t->h > RENORM) {
        rescale(t, ts_ms);
    }
    double g = w * exp2((double)(ts_ms - t->landmark) / t->h);
    t->total += g;
    uint64_t hash = fnv1a(s, len);
    size_t lightest = 0, free_slot = t->n_slots;
    for (size_t i = 0; i < t->n_slots; i++) {
        slot_t *sl = &t->slots[i];
        if (!sl->used) {
            free_slot = free_slot < t->n_slots ? free_slot : i;
            continue;
        }
        if (sl->hash == hash && sl->len == len && memcmp(t->text + i * t->max_len, s, len) == 0) {
            sl->w += g;
            return;
        }
        if (!t->slots[lightest].used || sl->w < t->slots[lightest].w) {
            lightest = i;
        }
    }
    size_t i = free_slot < t->n_slots ? free_slot : lightest;
    slot_t *sl = &t->slots[i];
    double base = free_slot < t->n_slots ? 0 : sl->w; /* Space-Saving: take over its weight */
    *sl = (slot_t){.hash = hash, .w = base + g, .err = base, .len = (uint16_t)len, .used = true};
    memcpy(t->text + i * t->max_len, s, len);
    t->used += free_slot < t->n_slots;
}

static bool before(const ch_topk_t *t, size_t a, size_t b) {
    const slot_t *x = &t->slots[a], *y = &t->slots[b];
    if (x->w != y->w) {
        return x->w > y->w;
    }
    if (x->err != y->err) {
        return x->err < y->err;
    }
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(t->text + a * t->max_len, t->text + b * t->max_len, n);
    return c != 0 ? c < 0 : x->len < y->len;
}

size_t ch_topk_top(ch_topk_t *t, int64_t now_ms, size_t n, ch_topk_item_t *ret) {
    size_t m = 0;
    for (size_t i = 0; i < t->n_slots; i++) {
        if (t->slots[i].used) {
            t->order[m++] = i;
        }
    }
    n = n < m ? n : m;
    for (size_t r = 0; r < n; r++) { /* selection: n is small */
        size_t best = r;
        for (size_t q = r + 1; q < m; q++) {
            best = before(t, t->order[q], t->order[best]) ? q : best;
        }
        size_t tmp = t->order[r];
        t->order[r] = t->order[best];
        t->order[best] = tmp;
    }
    double f = t->started ? exp2(-(double)(now_ms - t->landmark) / t->h) : 0;
    for (size_t r = 0; r < n; r++) {
        size_t i = t->order[r];
        ret[r] = (ch_topk_item_t){.value = t->text + i * t->max_len,
                                  .len = t->slots[i].len,
                                  .weight = t->slots[i].w * f,
                                  .error = t->slots[i].err * f};
    }
    return n;
}

double ch_topk_total(const ch_topk_t *t, int64_t now_ms) {
    return t->started ? t->total * exp2(-(double)(now_ms - t->landmark) / t->h) : 0;
}
