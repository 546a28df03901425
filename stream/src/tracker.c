/*
 * tracker.c - the ring of batches whose outputs await acknowledgement.
 *
 * Design notes
 * - A fixed ring of max_batches slots, allocated once; a slot's partition list
 *   grows geometrically and is kept across reuse, so the steady state allocates
 *   nothing.
 * - Invariants: slots [head, head + count) are in flight, oldest first; only the
 *   oldest may be released, and only when sealed, with nothing outstanding and not
 *   failed; a batch's outstanding count is sent minus acknowledged (never below
 *   zero); a failed batch is never released, so nothing after it is either.
 * - Revoking a partition removes it from every batch in flight: an offset of a
 *   partition that moved to another consumer is never stored by this one.
 */
#include "ch/tracker.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>

typedef struct part_off {
    int32_t partition;
    int64_t next_offset;
} part_off_t;

struct ch_tracked {
    size_t outstanding;
    bool sealed;
    bool failed;
    part_off_t *parts;
    size_t n_parts, cap_parts;
};

struct ch_tracker {
    ch_tracked_t *ring;
    size_t cap, head, count;
};

int ch_tracker_new(size_t max_batches, ch_tracker_t **ret_tracker) {
    if (max_batches < 1 || max_batches > 65536) {
        return -EINVAL;
    }
    ch_tracker_t *t = calloc(1, sizeof(*t));
    if (!t) {
        return -ENOMEM;
    }
    t->ring = calloc(max_batches, sizeof(*t->ring));
    if (!t->ring) {
        free(t);
        return -ENOMEM;
    }
    t->cap = max_batches;
    *ret_tracker = t;
    return 0;
}

ch_tracker_t *ch_tracker_free(ch_tracker_t *t) {
    if (!t) {
        return NULL;
    }
    for (size_t i = 0; t->ring && i < t->cap; i++) {
        free(t->ring[i].parts);
    }
    free(t->ring);
    free(t);
    return NULL;
}

static ch_tracked_t *at(const ch_tracker_t *t, size_t i) {
    return &t->ring[(t->head + i) % t->cap];
}

size_t ch_tracker_inflight(const ch_tracker_t *t) { return t->count; }

bool ch_tracker_has_room(const ch_tracker_t *t) { return t->count < t->cap; }

ch_tracked_t *ch_tracker_open(ch_tracker_t *t) {
    if (t->count == t->cap) {
        return NULL;
    }
    ch_tracked_t *b = at(t, t->count++);
    b->outstanding = 0;
    b->sealed = false;
    b->failed = false;
    b->n_parts = 0;
    return b;
}

size_t ch_tracker_slot(const ch_tracker_t *t, const ch_tracked_t *b) {
    assert(b >= t->ring && b < t->ring + t->cap);
    return (size_t)(b - t->ring);
}

int ch_tracker_consumed(ch_tracked_t *b, int32_t partition, int64_t offset) {
    for (size_t i = 0; i < b->n_parts; i++) {
        if (b->parts[i].partition == partition) {
            if (offset + 1 > b->parts[i].next_offset) {
                b->parts[i].next_offset = offset + 1;
            }
            return 0;
        }
    }
    if (b->n_parts == b->cap_parts) {
        size_t cap = b->cap_parts ? b->cap_parts * 2 : 16;
        part_off_t *np = realloc(b->parts, cap * sizeof(*np));
        if (!np) {
            return -ENOMEM;
        }
        b->parts = np;
        b->cap_parts = cap;
    }
    b->parts[b->n_parts++] = (part_off_t){partition, offset + 1};
    return 0;
}

int ch_tracker_merge(ch_tracked_t *from, ch_tracked_t *into) {
    if (from == into) {
        return 0;
    }
    for (size_t i = 0; i < from->n_parts; i++) { /* offset + 1 is next_offset */
        if (ch_tracker_consumed(into, from->parts[i].partition, from->parts[i].next_offset - 1) <
            0) {
            return -ENOMEM;
        }
    }
    from->n_parts = 0;
    return 0;
}

static bool complete(const ch_tracked_t *b) {
    return b->sealed && b->outstanding == 0 && !b->failed;
}

void ch_tracker_sent(ch_tracked_t *b) {
    assert(!b->sealed);
    b->outstanding++;
}

bool ch_tracker_acked(ch_tracked_t *b, bool ok) {
    assert(b->outstanding > 0);
    b->outstanding--;
    if (!ok) {
        b->failed = true;
    }
    return complete(b);
}

void ch_tracker_fail(ch_tracked_t *b) { b->failed = true; }

bool ch_tracker_seal(ch_tracked_t *b) {
    b->sealed = true;
    return complete(b);
}

bool ch_tracker_frozen(const ch_tracker_t *t) {
    for (size_t i = 0; i < t->count; i++) {
        if (at(t, i)->failed) {
            return true;
        }
    }
    return false;
}

size_t ch_tracker_advance(ch_tracker_t *t, ch_tracker_store_fn *store, void *opaque) {
    size_t released = 0;
    while (t->count && complete(at(t, 0))) {
        const ch_tracked_t *b = at(t, 0);
        for (size_t i = 0; i < b->n_parts; i++) {
            store(opaque, b->parts[i].partition, b->parts[i].next_offset);
        }
        t->head = (t->head + 1) % t->cap;
        t->count--;
        released++;
    }
    return released;
}

size_t ch_tracker_revoke(ch_tracker_t *t, int32_t partition) {
    size_t touched = 0;
    for (size_t i = 0; i < t->count; i++) {
        ch_tracked_t *b = at(t, i);
        for (size_t j = 0; j < b->n_parts; j++) {
            if (b->parts[j].partition == partition) {
                b->parts[j] = b->parts[--b->n_parts];
                touched++;
                break;
            }
        }
    }
    return touched;
}
