/*
 * scorestore.c - a FIFO ring of (hash, time, scores) with a linear-probing index.
 *
 * Design notes
 * - Entries enter in arrival order, which is event order closely enough that the
 *   ring's oldest entry is the first to expire; an entry taken or replaced stays in
 *   the ring as a hole (hash 0 is never stored: it marks a hole) until it is oldest.
 * - The index holds ring positions + 1 (0: empty slot) at twice the capacity,
 *   rounded up to a power of two; deletion shifts the following run back (no
 *   tombstones), so probes stay short under constant churn.
 */
#include "ch/scorestore.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "siphash.h"

typedef struct entry {
    uint64_t h; /* 0: a hole */
    int64_t ts;
    float score[CH_SCORESTORE_MODELS];
} entry_t;

struct ch_scorestore {
    entry_t *ring;
    size_t cap, head, used; /* head: the oldest; used: ring positions in use, holes too */
    uint32_t *index;
    size_t mask;
    uint64_t k0, k1;
    int64_t ttl_ms, newest;
    ch_scorestore_stats_t st;
};

int ch_scorestore_new(size_t capacity, int64_t ttl_ms, ch_scorestore_t **ret) {
    if (capacity == 0 || capacity > ((size_t)1 << 30) || ttl_ms <= 0) {
        return -EINVAL;
    }
    ch_scorestore_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    size_t slots = 1;
    while (slots < 2 * capacity) {
        slots <<= 1;
    }
    s->ring = calloc(capacity, sizeof(entry_t));
    s->index = calloc(slots, sizeof(uint32_t));
    if (!s->ring || !s->index) {
        ch_scorestore_free(s);
        return -ENOMEM;
    }
    uint64_t key[2] = {0x6c6162656c73ULL, 0x73636f726573ULL};
    if (getrandom(key, sizeof(key), GRND_NONBLOCK) != (ssize_t)sizeof(key)) {
        key[0] ^= (uint64_t)(uintptr_t)s; /* no entropy yet: still a per-process key */
    }
    s->k0 = key[0];
    s->k1 = key[1];
    s->cap = capacity;
    s->mask = slots - 1;
    s->ttl_ms = ttl_ms;
    s->newest = INT64_MIN;
    *ret = s;
    return 0;
}

ch_scorestore_t *ch_scorestore_free(ch_scorestore_t *s) {
    if (s) {
        free(s->ring);
        free(s->index);
        free(s);
    }
    return NULL;
}

static uint64_t hash_of(const ch_scorestore_t *s, const void *id, size_t len) {
    uint64_t h = siphash13(s->k0, s->k1, id, len);
    return h ? h : 1;
}

/* The index slot holding h, or the empty slot where it would go. */
static size_t find(const ch_scorestore_t *s, uint64_t h) {
    size_t i = (size_t)h & s->mask;
    while (s->index[i] && s->ring[s->index[i] - 1].h != h) {
        i = (i + 1) & s->mask;
    }
    return i;
}

static void unindex(ch_scorestore_t *s, size_t i) {
    s->index[i] = 0;
    for (size_t j = (i + 1) & s->mask; s->index[j]; j = (j + 1) & s->mask) {
        size_t home = (size_t)s->ring[s->index[j] - 1].h & s->mask;
        /* move j back to i unless its home lies cyclically in (i, j] */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            s->index[i] = s->index[j];
            s->index[j] = 0;
            i = j;
        }
    }
}

/* Drop the oldest ring position (live or hole). */
static void pop_oldest(ch_scorestore_t *s) {
    entry_t *e = &s->ring[s->head];
    if (e->h) {
        unindex(s, find(s, e->h));
        e->h = 0;
    }
    s->head = (s->head + 1) % s->cap;
    s->used--;
}

void ch_scorestore_put(ch_scorestore_t *s, const void *id, size_t len, int64_t ts_ms,
                       const float *scores) {
    if (ts_ms > s->newest) {
        s->newest = ts_ms;
    }
    while (s->used && (!s->ring[s->head].h || s->ring[s->head].ts < s->newest - s->ttl_ms)) {
        s->st.expired += s->ring[s->head].h != 0;
        pop_oldest(s);
    }
    if (s->used == s->cap) {
        s->st.evicted += s->ring[s->head].h != 0;
        pop_oldest(s);
    }
    uint64_t h = hash_of(s, id, len);
    size_t i = find(s, h);
    if (s->index[i]) { /* the same id again: the new score replaces it */
        s->ring[s->index[i] - 1].h = 0;
        unindex(s, i);
        s->st.replaced++;
        i = find(s, h);
    }
    size_t at = (s->head + s->used) % s->cap;
    s->ring[at] = (entry_t){.h = h, .ts = ts_ms};
    memcpy(s->ring[at].score, scores, sizeof(s->ring[at].score));
    s->used++;
    s->index[i] = (uint32_t)(at + 1);
    s->st.put++;
}

int ch_scorestore_take(ch_scorestore_t *s, const void *id, size_t len, float *ret_scores,
                       int64_t *ret_ts_ms) {
    uint64_t h = hash_of(s, id, len);
    size_t i = find(s, h);
    if (!s->index[i]) {
        return -ENOENT;
    }
    entry_t *e = &s->ring[s->index[i] - 1];
    if (e->ts < s->newest - s->ttl_ms) { /* expired, not yet swept */
        return -ENOENT;
    }
    memcpy(ret_scores, e->score, sizeof(e->score));
    *ret_ts_ms = e->ts;
    e->h = 0;
    unindex(s, i);
    s->st.taken++;
    return 0;
}

int64_t ch_scorestore_newest(const ch_scorestore_t *s) { return s->newest; }

void ch_scorestore_stats(const ch_scorestore_t *s, ch_scorestore_stats_t *ret) {
    *ret = s->st;
    ret->held = (size_t)(s->st.put - s->st.taken - s->st.expired - s->st.evicted - s->st.replaced);
}
