/*
 * ch/users.h - the per-user state table.
 *
 * Open addressing (linear probing, backward-shift deletion) over fixed-size
 * records in one slab reserved up front (no per-user malloc). A record holds a
 * small header, the feature state and the user id.
 *
 * @locality Not thread-safe. Record pointers stay valid until the record is
 *           evicted (the slab never moves).
 */
#ifndef CH_USERS_H
#define CH_USERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The record header is the contract: callers read and write these fields. */
typedef struct ch_user {
    int64_t t_ref_ms;     /* the user's stream time; INT64_MIN when fresh */
    int64_t last_emit_ms; /* stream time of the last profile update; INT64_MIN none */
    int64_t last_risk_ms; /* stream time of the last risk update; INT64_MIN none */
    int32_t partition;    /* input partition the user was last seen on */
    uint16_t key_len;     /* 0 = free record */
    int16_t segment;      /* current segment, -1 none */
    uint32_t seg_gen;     /* generation of that segment */
    float last_score;     /* last published risk score, NaN none */
    double state[]; /* ch_users_new(state_len) doubles, then key_max bytes of key */
} ch_user_t;

typedef struct ch_users ch_users_t;

/**
 * @brief Create a table.
 * @param max_users hard cap; inserting beyond it evicts the least recently active of
 *        a small random sample (approximated LRU, by stream time).
 * @param key_max_bytes longest user id accepted (1..4096).
 * @param state_len doubles of state per user.
 * @param ret_users set on success.
 * @returns 0, -EINVAL (a size out of range), -ENOMEM (address space reservation failed).
 */
int ch_users_new(size_t max_users, size_t key_max_bytes, size_t state_len,
                 ch_users_t **ret_users);

/** @brief Free the table. Accepts NULL. @returns NULL. */
ch_users_t *ch_users_free(ch_users_t *u);

/** @brief Find a user. @returns the record or NULL. */
ch_user_t *ch_users_find(ch_users_t *u, const char *key, size_t key_len);

/**
 * @brief Find or insert a user.
 * @param ret_user the record; a new record has t_ref_ms = last_emit_ms = INT64_MIN,
 *        partition -1 and zeroed state, which the caller initialises.
 * @returns 0 found, 1 created, -E2BIG (key longer than key_max_bytes), -EINVAL (empty
 *          key), -ENOMEM (index growth failed).
 */
int ch_users_upsert(ch_users_t *u, const char *key, size_t key_len, ch_user_t **ret_user);

/** @brief The user id stored in a record (not NUL-terminated; rec->key_len bytes). */
const char *ch_users_key(const ch_users_t *u, const ch_user_t *rec);

/** @brief Remove one user. @returns 0, -ENOENT. */
int ch_users_remove(ch_users_t *u, const char *key, size_t key_len);

/**
 * @brief Evict users whose stream time is older than before_ms, scanning at most
 *        budget records from a rotating cursor (call it from a timer).
 * @returns the number evicted.
 */
size_t ch_users_evict_idle(ch_users_t *u, int64_t before_ms, size_t budget);

/** @brief Evict every user last seen on an input partition. @returns the number evicted. */
size_t ch_users_evict_partition(ch_users_t *u, int32_t partition);

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

#endif
