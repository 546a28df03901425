/*
 * ch/users.h - the per-user state table.
 *
 * Open addressing (linear probing, backward-shift deletion) over fixed-size
 * records in one slab reserved up front (no per-user malloc). A record holds a
 * small header, the feature state, a caller-sized extra area the table never
 * interprets (the caller keeps its own per-user fields there, as SQLite's page
 * cache does with szExtra) and the user id.
 *
 * @locality Not thread-safe. Record pointers stay valid until the record is
 *           evicted (the slab never moves).
 */
#ifndef CH_USERS_H
#define CH_USERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The record header is the contract: callers read and write these fields. They are
 * model/'s: the features' clock and the K-Means membership (ch_kmeans_update()'s
 * prev and prev_gen). */
typedef struct ch_user {
    int64_t t_ref_ms; /* the user's stream time; INT64_MIN when fresh; idle eviction
                         and the cap's LRU go by it */
    uint16_t key_len; /* 0 = free record */
    int16_t segment;  /* current segment, -1 none */
    uint32_t seg_gen; /* generation of that segment */
    double state[];   /* ch_users_new(state_len) doubles, then the extra area (8-byte
                         aligned), then key_max bytes of key */
} ch_user_t;

typedef struct ch_users ch_users_t;

/* The most doubles of state a user may have: 512 KiB (a changelog record says its state
 * length in 16 bits). */
#define CH_USERS_STATE_MAX 65535

/**
 * @brief Create a table.
 * @param max_users hard cap; inserting beyond it evicts the least recently active of
 *        a small random sample (approximated LRU, by stream time).
 * @param key_max_bytes longest user id accepted (1..4096).
 * @param state_len doubles of state per user (0..CH_USERS_STATE_MAX).
 * @param extra_bytes the caller's area per record (0..4096), zeroed on insert.
 * @param ret_users set on success.
 * @returns 0, -EINVAL (a size out of range), -ENOMEM (address space reservation failed).
 */
int ch_users_new(size_t max_users, size_t key_max_bytes, size_t state_len, size_t extra_bytes,
                 ch_users_t **ret_users);

/** @brief Free the table. Accepts NULL. @returns NULL. */
ch_users_t *ch_users_free(ch_users_t *u);

/** @brief Find a user. @returns the record or NULL. */
ch_user_t *ch_users_find(ch_users_t *u, const char *key, size_t key_len);

/**
 * @brief Find or insert a user.
 * @param ret_user the record; a new record has t_ref_ms = INT64_MIN, segment -1, and
 *        zeroed state and extra area, which the caller initialises.
 * @returns 0 found, 1 created, -E2BIG (key longer than key_max_bytes), -EINVAL (empty
 *          key), -ENOMEM (index growth failed).
 */
int ch_users_upsert(ch_users_t *u, const char *key, size_t key_len, ch_user_t **ret_user);

/** @brief The user id stored in a record (not NUL-terminated; rec->key_len bytes). */
const char *ch_users_key(const ch_users_t *u, const ch_user_t *rec);

/** @brief The caller's extra area of a record (extra_bytes, 8-byte aligned). */
void *ch_users_extra(const ch_users_t *u, const ch_user_t *rec);

/**
 * @brief Iterate over the live records in slab order: start with *cursor = 0.
 * @returns the next record, or NULL at the end. Evicting the returned record (and
 *          only it) during the iteration is allowed.
 */
ch_user_t *ch_users_next(const ch_users_t *u, size_t *cursor);

/** @brief Remove one user. @returns 0, -ENOENT. */
int ch_users_remove(ch_users_t *u, const char *key, size_t key_len);

/**
 * @brief Evict users whose stream time is older than before_ms, scanning at most
 *        budget records from a rotating cursor (call it from a timer).
 * @returns the number evicted.
 */
size_t ch_users_evict_idle(ch_users_t *u, int64_t before_ms, size_t budget);

/* Whether to evict a record (ch_users_evict_if()). */
typedef bool(ch_users_pred_fn)(void *opaque, const ch_user_t *rec);

/**
 * @brief Scan every record and evict those for which pred says so (for example, the
 *        users of a revoked partition, known from the caller's extra area).
 * @returns the number evicted.
 * @remark pred must not call back into the table.
 */
size_t ch_users_evict_if(ch_users_t *u, ch_users_pred_fn *pred, void *opaque);

/* Called with a record just before it is evicted or removed (for any reason). */
typedef void(ch_users_evict_fn)(void *opaque, const ch_user_t *rec);

/**
 * @brief Observe evictions (e.g. to keep per-segment user counts). fn NULL: none.
 * @remark fn must not call back into the table.
 */
void ch_users_set_evict_hook(ch_users_t *u, ch_users_evict_fn *fn, void *opaque);

/** @brief Users currently held. */
size_t ch_users_count(const ch_users_t *u);
/** @brief Users evicted so far because the cap was reached. */
uint64_t ch_users_cap_evictions(const ch_users_t *u);
/** @brief Bytes of memory in use (records touched plus index). */
size_t ch_users_memory_bytes(const ch_users_t *u);

/**
 * @brief Check the invariants: count == live records == occupied index slots ==
 *        records handed out minus free ones, and every stored key is found by lookup
 *        at its own record. O(records): for tests and debug builds.
 * @returns true if they hold; otherwise false with the first violation in why.
 */
bool ch_users_check(const ch_users_t *u, char *why, size_t len);

#endif
