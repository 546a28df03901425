/*
 * align.c - per-partition buffers released in timestamp order within a skew.
 *
 * Design notes
 * - Partitions are indexed by id (dense arrays grown on demand): Kafka partition
 *   ids are small and a consumer owns a few of them.
 * - A buffer is a ring of {item, ts, offset}; a partition's records leave in the
 *   order they came (offset order), so commit tracking downstream is unchanged.
 * - pop() releases in rounds: compute the floor, release every partition's head
 *   records up to floor + skew, repeat while that made progress (releasing the
 *   floor's records may raise it). A round starts at a rotating partition so a
 *   budget cut does not always favour low ids.
 * - Pausing only bounds memory, and each pause costs a fetch round trip on resume
 *   (the client drops what it prefetched and fetches again from the last record
 *   handed over). So a partition is paused only once it buffers pause_len records
 *   reaching beyond 2 x skew of the floor, and resumed while it still has
 *   pause_len / 2 left (or its end is within the skew), early enough for the next
 *   fetch to arrive before its buffer runs dry.
 */
#include "ch/align.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct item {
    void *p;
    int64_t ts, offset;
} item_t;

typedef struct part {
    bool assigned, paused, more, held;
    item_t *q;
    size_t cap, head, len;
    int64_t last_ts;  /* largest timestamp pushed, INT64_MIN none */
    int64_t next_off; /* last pushed + 1, else the start offset, -1 unknown */
    double last_s;    /* last push, assignment or resume */
} part_t;

struct ch_align {
    ch_align_opts_t o;
    part_t *parts;
    size_t n_parts;
    size_t held, paused, rr;
    uint64_t forced, pauses;
    double now_s;
};

int ch_align_new(const ch_align_opts_t *o, ch_align_t **ret_align) {
    if (!o || o->max_skew_ms < 0 || !(o->idle_s > 0) || o->max_held == 0 || o->pause_len < 2) {
        return -EINVAL;
    }
    ch_align_t *a = calloc(1, sizeof(*a));
    if (!a) {
        return -ENOMEM;
    }
    a->o = *o;
    *ret_align = a;
    return 0;
}

static void drop_all(part_t *p, void (*drop)(void *item)) {
    for (size_t i = 0; i < p->len; i++) {
        void *it = p->q[(p->head + i) % p->cap].p;
        if (drop) {
            drop(it);
        }
    }
    free(p->q);
}

ch_align_t *ch_align_free(ch_align_t *a, void (*drop)(void *item)) {
    if (a) {
        for (size_t i = 0; i < a->n_parts; i++) {
            drop_all(&a->parts[i], drop);
        }
        free(a->parts);
        free(a);
    }
    return NULL;
}

static part_t *part_at(ch_align_t *a, int32_t partition) {
    if (partition < 0) {
        return NULL;
    }
    size_t id = (size_t)partition;
    if (id >= a->n_parts) {
        size_t cap = id + 16;
        part_t *np = realloc(a->parts, cap * sizeof(*np));
        if (!np) {
            return NULL;
        }
        memset(np + a->n_parts, 0, (cap - a->n_parts) * sizeof(*np));
        a->parts = np;
        a->n_parts = cap;
    }
    return &a->parts[id];
}

static void reset(part_t *p, int64_t start_offset, double now_s) {
    p->assigned = true;
    p->paused = false;
    p->more = true;
    p->last_ts = INT64_MIN;
    p->next_off = start_offset >= 0 ? start_offset : -1;
    p->last_s = now_s;
}

int ch_align_assign(ch_align_t *a, int32_t partition, int64_t start_offset, double now_s) {
    part_t *p = part_at(a, partition);
    if (!p) {
        return partition < 0 ? -EINVAL : -ENOMEM;
    }
    if (!p->assigned) {
        reset(p, start_offset, now_s);
    }
    return 0;
}

bool ch_align_revoke(ch_align_t *a, int32_t partition, void (*drop)(void *item)) {
    if (partition < 0 || (size_t)partition >= a->n_parts || !a->parts[partition].assigned) {
        return false;
    }
    part_t *p = &a->parts[partition];
    bool was_paused = p->paused;
    a->held -= p->len;
    a->paused -= was_paused;
    drop_all(p, drop);
    memset(p, 0, sizeof(*p));
    return was_paused;
}

/* Room for need items in p's ring (doubling; the items move to its start). */
static int grow(part_t *p, size_t need) {
    if (need <= p->cap) {
        return 0;
    }
    size_t cap = p->cap ? p->cap : 64;
    while (cap < need) {
        cap *= 2;
    }
    item_t *nq = malloc(cap * sizeof(*nq));
    if (!nq) {
        return -ENOMEM;
    }
    for (size_t i = 0; i < p->len; i++) {
        nq[i] = p->q[(p->head + i) % p->cap];
    }
    free(p->q);
    p->q = nq;
    p->cap = cap;
    p->head = 0;
    return 0;
}

int ch_align_push(ch_align_t *a, int32_t partition, int64_t offset, int64_t ts_ms, void *item,
                  double now_s) {
    part_t *p = part_at(a, partition);
    if (!p) {
        return partition < 0 ? -EINVAL : -ENOMEM;
    }
    if (!p->assigned) {
        reset(p, -1, now_s);
    }
    if (grow(p, p->len + 1) < 0) {
        return -ENOMEM;
    }
    p->q[(p->head + p->len) % p->cap] = (item_t){item, ts_ms, offset};
    p->len++;
    a->held++;
    if (ts_ms >= 0 && ts_ms > p->last_ts) {
        p->last_ts = ts_ms;
    }
    if (offset >= 0 && offset + 1 > p->next_off) {
        p->next_off = offset + 1;
    }
    p->last_s = now_s;
    return 0;
}

int ch_align_unpop(ch_align_t *a, int32_t partition, void *const *items, const int64_t *offsets,
                   const int64_t *ts_ms, size_t n) {
    part_t *p = part_at(a, partition);
    if (!p) {
        return partition < 0 ? -EINVAL : -ENOMEM;
    }
    if (!p->assigned) {
        reset(p, -1, a->now_s);
    }
    if (grow(p, p->len + n) < 0) {
        return -ENOMEM;
    }
    p->head = (p->head + p->cap - n % p->cap) % p->cap;
    for (size_t i = 0; i < n; i++) {
        p->q[(p->head + i) % p->cap] = (item_t){items[i], ts_ms[i], offsets[i]};
    }
    p->len += n;
    a->held += n;
    return 0;
}

void ch_align_refresh(ch_align_t *a, int64_t (*high_watermark)(void *opaque, int32_t partition),
                      void *opaque) {
    for (size_t i = 0; i < a->n_parts; i++) {
        part_t *p = &a->parts[i];
        if (p->assigned) {
            int64_t hi = high_watermark(opaque, (int32_t)i);
            p->more = hi < 0 || p->next_off < 0 || p->next_off < hi;
        }
    }
}

static int64_t head_ts(const part_t *p) { return p->q[p->head].ts; }

/* The floor: INT64_MAX when nothing constrains (nothing buffered, nobody holding),
 * INT64_MIN when a holding partition has not delivered any timestamp yet. */
static int64_t floor_ts(const ch_align_t *a) {
    int64_t f = INT64_MAX;
    for (size_t i = 0; i < a->n_parts; i++) {
        const part_t *p = &a->parts[i];
        if (!p->assigned || p->held) {
            continue; /* a held partition holds nobody back */
        }
        int64_t v;
        if (p->len > 0) {
            if (head_ts(p) < 0) {
                continue; /* released at once; says nothing about the clock */
            }
            v = head_ts(p);
        } else if (p->more && a->now_s - p->last_s < a->o.idle_s) {
            v = p->last_ts;
        } else {
            continue;
        }
        f = v < f ? v : f;
    }
    return f;
}

static int64_t add_sat(int64_t x, int64_t d) {
    if (x == INT64_MIN || x == INT64_MAX) {
        return x;
    }
    return x > INT64_MAX - d ? INT64_MAX : x + d;
}

static size_t release(ch_align_t *a, part_t *p, int64_t limit, void **out, size_t max) {
    size_t n = 0;
    if (p->held) {
        return 0;
    }
    while (p->len > 0 && n < max && (head_ts(p) < 0 || head_ts(p) <= limit)) {
        out[n++] = p->q[p->head].p;
        p->head = (p->head + 1) % p->cap;
        p->len--;
    }
    a->held -= n;
    return n;
}

size_t ch_align_pop(ch_align_t *a, void **out, size_t max, double now_s) {
    a->now_s = now_s;
    size_t n = 0;
    while (n < max && a->held > 0) {
        int64_t limit = a->o.max_skew_ms ? add_sat(floor_ts(a), a->o.max_skew_ms) : INT64_MAX;
        size_t got = 0;
        for (size_t k = 0; k < a->n_parts && n + got < max; k++) {
            part_t *p = &a->parts[(a->rr + k) % a->n_parts];
            got += release(a, p, limit, out + n + got, max - n - got);
        }
        n += got;
        if (got == 0) {
            break;
        }
    }
    if (n == 0 && a->held >= a->o.max_held) {
        part_t *oldest = NULL;
        for (size_t i = 0; i < a->n_parts; i++) {
            part_t *p = &a->parts[i];
            if (!p->held && p->len > 0 && (!oldest || head_ts(p) < head_ts(oldest))) {
                oldest = p;
            }
        }
        if (oldest) {
            n = release(a, oldest, add_sat(head_ts(oldest), a->o.max_skew_ms), out, max);
            a->forced += n;
        }
    }
    if (a->n_parts) {
        a->rr = (a->rr + 1) % a->n_parts;
    }
    return n;
}

size_t ch_align_changes(ch_align_t *a, ch_align_change_t *out, size_t cap) {
    int64_t f = floor_ts(a);
    bool finite = a->o.max_skew_ms > 0 && f != INT64_MIN && f != INT64_MAX;
    size_t n = 0;
    for (size_t i = 0; i < a->n_parts && n < cap; i++) {
        part_t *p = &a->parts[i];
        if (!p->assigned) {
            continue;
        }
        if (!p->paused && p->len >= a->o.pause_len &&
            (p->held || (finite && p->last_ts > add_sat(f, 2 * a->o.max_skew_ms)))) {
            p->paused = true;
            a->paused++;
            a->pauses++;
            out[n++] = (ch_align_change_t){(int32_t)i, true};
        } else if (p->paused && !p->held &&
                   (p->len < a->o.pause_len / 2 ||
                    (finite && p->last_ts <= add_sat(f, a->o.max_skew_ms)))) {
            p->paused = false;
            p->last_s = a->now_s; /* the fetch starts again: it may hold the floor */
            a->paused--;
            out[n++] = (ch_align_change_t){(int32_t)i, false};
        }
    }
    return n;
}

void ch_align_hold(ch_align_t *a, int32_t partition, bool hold, double now_s) {
    part_t *p = part_at(a, partition);
    if (p && p->assigned) {
        p->held = hold;
        p->last_s = now_s; /* released: it may hold the floor again from now on */
    }
}

bool ch_align_paused(const ch_align_t *a, int32_t partition) {
    return partition >= 0 && (size_t)partition < a->n_parts && a->parts[partition].paused;
}

int64_t ch_align_next(const ch_align_t *a, int32_t partition) {
    if (partition < 0 || (size_t)partition >= a->n_parts) {
        return -1;
    }
    const part_t *p = &a->parts[partition];
    return p->assigned && p->len > 0 ? p->q[p->head].offset : -1;
}

void ch_align_stats(const ch_align_t *a, ch_align_stats_t *ret) {
    *ret = (ch_align_stats_t){a->held, a->paused, a->forced, a->pauses};
}
