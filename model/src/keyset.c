/*
 * keyset.c - a set of byte-string keys with an int64 value each (ch/keyset.h).
 *
 * Design notes
 * - Keys live back to back in one arena; an entry is the key's place in it, its length
 *   and its value, in insertion order (what ch_keyset_next walks). The index is open
 *   addressing with linear probing over entry numbers + 1 (0: empty), at most half
 *   full, so a probe always ends.
 * - The hash is SipHash-1-3 under a key drawn at creation, as the user table's.
 * - Invariant: every entry is in the index exactly once, at or after its home slot
 *   with no empty slot in between (nothing is ever removed but by clearing all).
 */
#include "ch/keyset.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "siphash.h"

typedef struct entry {
    size_t at; /* offset of the key in the arena */
    uint32_t len;
    int64_t value;
} entry_t;

struct ch_keyset {
    uint64_t k0, k1;
    unsigned char *arena;
    size_t arena_len, arena_cap;
    entry_t *ent;
    size_t n, ent_cap;
    uint32_t *idx;
    size_t idx_cap; /* a power of two, >= 2 x ent_cap */
};

#define MIN_ENTRIES 64

int ch_keyset_new(ch_keyset_t **ret_set) {
    ch_keyset_t *s = calloc(1, sizeof(*s));
    if (!s) {
        return -ENOMEM;
    }
    uint64_t seed[2] = {0x9e3779b97f4a7c15ULL, 0xbf58476d1ce4e5b9ULL};
    if (getrandom(seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
        seed[0] ^= (uint64_t)(uintptr_t)s;
    }
    s->k0 = seed[0];
    s->k1 = seed[1];
    *ret_set = s;
    return 0;
}

ch_keyset_t *ch_keyset_free(ch_keyset_t *s) {
    if (s) {
        free(s->arena);
        free(s->ent);
        free(s->idx);
        free(s);
    }
    return NULL;
}

static size_t home(const ch_keyset_t *s, const void *key, size_t len) {
    return (size_t)siphash13(s->k0, s->k1, key, len) & (s->idx_cap - 1);
}

/* The index slot holding key, or the empty slot where it belongs. */
static size_t find(const ch_keyset_t *s, const void *key, size_t len) {
    size_t i = home(s, key, len);
    for (; s->idx[i]; i = (i + 1) & (s->idx_cap - 1)) {
        const entry_t *e = &s->ent[s->idx[i] - 1];
        if (e->len == len && memcmp(s->arena + e->at, key, len) == 0) {
            break;
        }
    }
    return i;
}

static int grow_entries(ch_keyset_t *s) {
    size_t cap = s->ent_cap ? 2 * s->ent_cap : MIN_ENTRIES;
    if (cap > UINT32_MAX / 2) {
        return -ENOMEM;
    }
    uint32_t *ni = calloc(2 * cap, sizeof(*ni));
    entry_t *ne = ni ? realloc(s->ent, cap * sizeof(*ne)) : NULL;
    if (!ne) {
        free(ni);
        return -ENOMEM;
    }
    s->ent = ne;
    s->ent_cap = cap;
    free(s->idx);
    s->idx = ni;
    s->idx_cap = 2 * cap;
    for (size_t k = 0; k < s->n; k++) {
        s->idx[find(s, s->arena + s->ent[k].at, s->ent[k].len)] = (uint32_t)(k + 1);
    }
    return 0;
}

int ch_keyset_put(ch_keyset_t *s, const void *key, size_t len, int64_t value) {
    if (len > CH_KEYSET_KEY_MAX) {
        return -EINVAL;
    }
    if (s->n > 0) {
        size_t i = find(s, key, len);
        if (s->idx[i]) {
            s->ent[s->idx[i] - 1].value = value;
            return 0;
        }
    }
    if (s->n == s->ent_cap && grow_entries(s) < 0) {
        return -ENOMEM;
    }
    if (s->arena_len + len > s->arena_cap) {
        size_t cap = s->arena_cap ? s->arena_cap : 4096;
        while (cap < s->arena_len + len) {
            cap *= 2;
        }
        unsigned char *na = realloc(s->arena, cap);
        if (!na) {
            return -ENOMEM;
        }
        s->arena = na;
        s->arena_cap = cap;
    }
    if (len > 0) {
        memcpy(s->arena + s->arena_len, key, len);
    }
    s->ent[s->n] = (entry_t){s->arena_len, (uint32_t)len, value};
    s->arena_len += len;
    s->idx[find(s, key, len)] = (uint32_t)++s->n;
    return 1;
}

bool ch_keyset_get(const ch_keyset_t *s, const void *key, size_t len, int64_t *ret_value) {
    if (s->n == 0 || len > CH_KEYSET_KEY_MAX) {
        return false;
    }
    size_t i = find(s, key, len);
    if (!s->idx[i]) {
        return false;
    }
    if (ret_value) {
        *ret_value = s->ent[s->idx[i] - 1].value;
    }
    return true;
}

size_t ch_keyset_count(const ch_keyset_t *s) { return s->n; }

bool ch_keyset_next(const ch_keyset_t *s, size_t *cursor, const void **ret_key, size_t *ret_len,
                    int64_t *ret_value) {
    if (*cursor >= s->n) {
        return false;
    }
    const entry_t *e = &s->ent[(*cursor)++];
    *ret_key = s->arena + e->at;
    *ret_len = e->len;
    if (ret_value) {
        *ret_value = e->value;
    }
    return true;
}

void ch_keyset_clear(ch_keyset_t *s) {
    if (s->ent_cap > MIN_ENTRIES) { /* a large restore's memory goes back */
        free(s->arena);
        free(s->ent);
        free(s->idx);
        s->arena = NULL;
        s->ent = NULL;
        s->idx = NULL;
        s->arena_cap = s->ent_cap = s->idx_cap = 0;
    } else if (s->idx) {
        memset(s->idx, 0, s->idx_cap * sizeof(*s->idx));
    }
    s->n = 0;
    s->arena_len = 0;
}
