/*
 * users.c - open-addressing user table over a fixed-record slab.
 *
 * Design notes
 * - The slab is one anonymous mapping of max_users records, reserved with
 *   MAP_NORESERVE: pages are committed only when first used, records never
 *   move, and there is no malloc per user. Freed records go on a free list
 *   threaded through t_ref_ms.
 * - The index is a power-of-two array of 8-byte slots {tag, record+1}; tag is
 *   the low 32 bits of the key's SipHash, and its low bits are the home slot,
 *   so growth rehashes without touching keys. Load stays <= 3/4; deletion
 *   shifts later entries back (no tombstones).
 * - The slab and the index ask for transparent huge pages (madvise): a lookup touches
 *   one slot and one record at random, so with 4 KiB pages a table of a million
 *   users misses the TLB on nearly every event.
 * - Keys are hashed with SipHash-1-3 under a per-process random key, so user
 *   ids chosen by an attacker cannot degrade the table into long probe chains.
 * - A record is {header, state_len doubles, the caller's extra area, key}. The
 *   extra area is the caller's (SQLite's szExtra): the daemon keeps its emit and
 *   partition fields there, so this table knows nothing of Kafka or outputs.
 * - Invariant: key_len == 0 exactly for free records; count == live records ==
 *   occupied slots == hwm - free records; every live key is found by lookup at its
 *   own record (ch_users_check()).
 */
#include "ch/users.h"
#include "siphash.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

#include "errbuf.h"

typedef struct slot {
    uint32_t tag;
    uint32_t rec1; /* record index + 1; 0 = empty */
} slot_t;

struct ch_users {
    size_t max_users, key_max, state_len, extra_len, rec_size;
    unsigned char *slab;
    size_t slab_bytes;
    size_t hwm;      /* records ever handed out */
    int64_t free_head; /* -1 = none */
    size_t count;
    slot_t *slots;
    size_t cap; /* power of two */
    size_t cursor;
    uint64_t rng;
    uint64_t cap_evictions;
    uint64_t k0, k1;
    ch_users_evict_fn *on_evict;
    void *evict_opaque;
};

static uint64_t next_rand(ch_users_t *u) {
    /* xorshift64* */
    u->rng ^= u->rng >> 12;
    u->rng ^= u->rng << 25;
    u->rng ^= u->rng >> 27;
    return u->rng * 0x2545F4914F6CDD1DULL;
}

static ch_user_t *rec_at(const ch_users_t *u, size_t i) {
    return (ch_user_t *)(u->slab + i * u->rec_size);
}

static size_t rec_index(const ch_users_t *u, const ch_user_t *rec) {
    return (size_t)((const unsigned char *)rec - u->slab) / u->rec_size;
}

void *ch_users_extra(const ch_users_t *u, const ch_user_t *rec) {
    return (void *)(rec->state + u->state_len);
}

const char *ch_users_key(const ch_users_t *u, const ch_user_t *rec) {
    return (const char *)(rec->state + u->state_len) + u->extra_len;
}

/* Ask for transparent huge pages over the 2 MiB-aligned part of [p, p + len); a hint
 * only (the kernel may have THP off, or only for madvised ranges). */
static void hint_huge(void *p, size_t len) {
#ifdef MADV_HUGEPAGE
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t hi = ((uintptr_t)p + len) & ~(huge - 1);
    if (hi > lo) {
        (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
#else
    (void)p;
    (void)len;
#endif
}

int ch_users_new(size_t max_users, size_t key_max_bytes, size_t state_len, size_t extra_bytes,
                 ch_users_t **ret_users) {
    if (max_users == 0 || max_users > UINT32_MAX - 1 || key_max_bytes == 0 ||
        key_max_bytes > 4096 || state_len > CH_USERS_STATE_MAX || extra_bytes > 4096) {
        return -EINVAL;
    }
    ch_users_t *u = calloc(1, sizeof(*u));
    if (!u) {
        return -ENOMEM;
    }
    u->max_users = max_users;
    u->key_max = key_max_bytes;
    u->state_len = state_len;
    u->extra_len = (extra_bytes + 7) & ~(size_t)7;
    u->rec_size =
        (sizeof(ch_user_t) + state_len * sizeof(double) + u->extra_len + key_max_bytes + 7) &
        ~(size_t)7;
    u->slab_bytes = max_users * u->rec_size;
    u->slab = mmap(NULL, u->slab_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (u->slab == MAP_FAILED) {
        u->slab = NULL;
        return ch_users_free(u), -ENOMEM;
    }
    hint_huge(u->slab, u->slab_bytes);
    u->cap = 1024;
    u->slots = calloc(u->cap, sizeof(slot_t));
    if (!u->slots) {
        return ch_users_free(u), -ENOMEM;
    }
    u->free_head = -1;
    uint64_t seed[3] = {0x9e3779b97f4a7c15ULL, 0xbf58476d1ce4e5b9ULL, 0x94d049bb133111ebULL};
    if (getrandom(seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
        seed[0] ^= (uint64_t)(uintptr_t)u;
    }
    u->k0 = seed[0];
    u->k1 = seed[1];
    u->rng = seed[2] | 1;
    *ret_users = u;
    return 0;
}

ch_users_t *ch_users_free(ch_users_t *u) {
    if (!u) {
        return NULL;
    }
    if (u->slab) {
        munmap(u->slab, u->slab_bytes);
    }
    free(u->slots);
    free(u);
    return NULL;
}

static uint32_t key_tag(const ch_users_t *u, const char *key, size_t len) {
    return (uint32_t)siphash13(u->k0, u->k1, (const unsigned char *)key, len);
}

/* Returns the slot holding key, or the empty slot where it would go. */
static size_t probe(const ch_users_t *u, const char *key, size_t len, uint32_t tag) {
    size_t mask = u->cap - 1;
    for (size_t i = tag & mask;; i = (i + 1) & mask) {
        const slot_t *s = &u->slots[i];
        if (s->rec1 == 0) {
            return i;
        }
        if (s->tag == tag) {
            const ch_user_t *rec = rec_at(u, s->rec1 - 1);
            if (rec->key_len == len && memcmp(ch_users_key(u, rec), key, len) == 0) {
                return i;
            }
        }
    }
}

ch_user_t *ch_users_find(ch_users_t *u, const char *key, size_t key_len) {
    if (key_len == 0 || key_len > u->key_max) {
        return NULL;
    }
    size_t i = probe(u, key, key_len, key_tag(u, key, key_len));
    return u->slots[i].rec1 ? rec_at(u, u->slots[i].rec1 - 1) : NULL;
}

static int grow(ch_users_t *u) {
    size_t ncap = u->cap * 2;
    slot_t *ns = calloc(ncap, sizeof(slot_t));
    if (!ns) {
        return -ENOMEM;
    }
    hint_huge(ns, ncap * sizeof(slot_t));
    for (size_t i = 0; i < u->cap; i++) {
        if (u->slots[i].rec1) {
            size_t j = u->slots[i].tag & (ncap - 1);
            while (ns[j].rec1) {
                j = (j + 1) & (ncap - 1);
            }
            ns[j] = u->slots[i];
        }
    }
    free(u->slots);
    u->slots = ns;
    u->cap = ncap;
    return 0;
}

static void delete_slot(ch_users_t *u, size_t i) {
    size_t mask = u->cap - 1;
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (u->slots[j].rec1 == 0) {
            break;
        }
        size_t home = u->slots[j].tag & mask;
        /* Move j back into the hole at i unless its home lies cyclically in (i, j]. */
        bool home_in_gap = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (!home_in_gap) {
            u->slots[i] = u->slots[j];
            i = j;
        }
    }
    u->slots[i].rec1 = 0;
    u->slots[i].tag = 0;
}

static void free_record(ch_users_t *u, ch_user_t *rec) {
    rec->key_len = 0;
    rec->t_ref_ms = u->free_head;
    u->free_head = (int64_t)rec_index(u, rec);
    u->count--;
}

static void evict_record(ch_users_t *u, ch_user_t *rec) {
    if (u->on_evict) {
        u->on_evict(u->evict_opaque, rec);
    }
    const char *key = ch_users_key(u, rec);
    size_t i = probe(u, key, rec->key_len, key_tag(u, key, rec->key_len));
    delete_slot(u, i);
    free_record(u, rec);
}

/* Approximated LRU: the stalest of a few random live records. */
static void evict_one_sampled(ch_users_t *u) {
    ch_user_t *victim = NULL;
    for (int n = 0; n < 5; n++) {
        size_t i = (size_t)(next_rand(u) % u->hwm);
        for (size_t k = 0; k < u->hwm; k++) {
            ch_user_t *rec = rec_at(u, (i + k) % u->hwm);
            if (rec->key_len) {
                if (!victim || rec->t_ref_ms < victim->t_ref_ms) {
                    victim = rec;
                }
                break;
            }
        }
    }
    if (victim) {
        evict_record(u, victim);
        u->cap_evictions++;
    }
}

int ch_users_upsert(ch_users_t *u, const char *key, size_t key_len, ch_user_t **ret_user) {
    if (key_len == 0) {
        return -EINVAL;
    }
    if (key_len > u->key_max) {
        return -E2BIG;
    }
    uint32_t tag = key_tag(u, key, key_len);
    size_t i = probe(u, key, key_len, tag);
    if (u->slots[i].rec1) {
        *ret_user = rec_at(u, u->slots[i].rec1 - 1);
        return 0;
    }
    if (u->count >= u->max_users) {
        evict_one_sampled(u);
    }
    if ((u->count + 1) * 4 > u->cap * 3) {
        if (grow(u) < 0) {
            return -ENOMEM;
        }
    }
    i = probe(u, key, key_len, tag); /* the table may have changed */
    size_t r;
    if (u->free_head >= 0) {
        r = (size_t)u->free_head;
        u->free_head = rec_at(u, r)->t_ref_ms;
    } else {
        r = u->hwm++;
    }
    ch_user_t *rec = rec_at(u, r);
    memset(rec, 0, u->rec_size);
    rec->t_ref_ms = INT64_MIN;
    rec->segment = -1;
    rec->key_len = (uint16_t)key_len;
    memcpy((char *)ch_users_key(u, rec), key, key_len);
    u->slots[i].tag = tag;
    u->slots[i].rec1 = (uint32_t)(r + 1);
    u->count++;
    *ret_user = rec;
    return 1;
}

int ch_users_remove(ch_users_t *u, const char *key, size_t key_len) {
    ch_user_t *rec = ch_users_find(u, key, key_len);
    if (!rec) {
        return -ENOENT;
    }
    evict_record(u, rec);
    return 0;
}

size_t ch_users_evict_idle(ch_users_t *u, int64_t before_ms, size_t budget) {
    size_t evicted = 0;
    for (size_t n = 0; n < budget && u->hwm; n++) {
        if (u->cursor >= u->hwm) {
            u->cursor = 0;
        }
        ch_user_t *rec = rec_at(u, u->cursor++);
        if (rec->key_len && rec->t_ref_ms < before_ms) {
            evict_record(u, rec);
            evicted++;
        }
    }
    return evicted;
}

size_t ch_users_evict_if(ch_users_t *u, ch_users_pred_fn *pred, void *opaque) {
    size_t evicted = 0;
    for (size_t r = 0; r < u->hwm; r++) {
        ch_user_t *rec = rec_at(u, r);
        if (rec->key_len && pred(opaque, rec)) {
            evict_record(u, rec);
            evicted++;
        }
    }
    return evicted;
}

ch_user_t *ch_users_next(const ch_users_t *u, size_t *cursor) {
    while (*cursor < u->hwm) {
        ch_user_t *rec = rec_at(u, (*cursor)++);
        if (rec->key_len) {
            return rec;
        }
    }
    return NULL;
}

void ch_users_set_evict_hook(ch_users_t *u, ch_users_evict_fn *fn, void *opaque) {
    u->on_evict = fn;
    u->evict_opaque = opaque;
}

size_t ch_users_count(const ch_users_t *u) {
    return u->count;
}

uint64_t ch_users_cap_evictions(const ch_users_t *u) {
    return u->cap_evictions;
}

size_t ch_users_memory_bytes(const ch_users_t *u) {
    return u->hwm * u->rec_size + u->cap * sizeof(slot_t);
}

bool ch_users_check(const ch_users_t *u, char *why, size_t len) {
    size_t live = 0, occupied = 0, free_recs = 0;
    for (size_t r = 0; r < u->hwm; r++) {
        const ch_user_t *rec = rec_at(u, r);
        if (!rec->key_len) {
            continue;
        }
        live++;
        if (rec->key_len > u->key_max) {
            fail(why, len, 0, "record %zu has a key of %u bytes > %zu", r,
                          (unsigned)rec->key_len, u->key_max);
            return false;
        }
        const char *key = ch_users_key(u, rec);
        size_t i = probe(u, key, rec->key_len, key_tag(u, key, rec->key_len));
        if (u->slots[i].rec1 != r + 1) {
            fail(why, len, 0, "record %zu is not found by a lookup of its key", r);
            return false;
        }
    }
    for (size_t i = 0; i < u->cap; i++) {
        if (u->slots[i].rec1 == 0) {
            continue;
        }
        occupied++;
        if (u->slots[i].rec1 > u->hwm || rec_at(u, u->slots[i].rec1 - 1)->key_len == 0) {
            fail(why, len, 0, "index slot %zu points at a free record", i);
            return false;
        }
    }
    for (int64_t f = u->free_head; f >= 0 && free_recs <= u->hwm;
         f = rec_at(u, (size_t)f)->t_ref_ms) {
        if ((size_t)f >= u->hwm || rec_at(u, (size_t)f)->key_len) {
            fail(why, len, 0, "free list holds record %lld, which is live or unissued",
                          (long long)f);
            return false;
        }
        free_recs++;
    }
    if (live != u->count || occupied != u->count || u->hwm - free_recs != u->count) {
        fail(why, len, 0, "count %zu, live records %zu, occupied slots %zu, issued minus free %zu",
             u->count, live, occupied, u->hwm - free_recs);
        return false;
    }
    return true;
}
